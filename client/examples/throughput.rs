//! A quick one-publisher, one-subscriber throughput check against a running
//! broker (the benchmark harness is the real measuring tool):
//!
//! ```sh
//! cargo run --release -p corebus-client --example throughput -- 127.0.0.1:7400 1000000 128
//! ```
//!
//! Arguments: broker address, message count, payload size. Publishes are
//! pipelined with acknowledgements; the clock runs from the first publish to
//! the last message received, and every sequence number is checked.

use std::time::Instant;

use corebus_client::Client;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:7400".into());
    let count: u64 = args.next().map_or(Ok(1_000_000), |a| a.parse())?;
    let size: usize = args.next().map_or(Ok(128), |a| a.parse())?;
    let topic = format!("throughput-{}", std::process::id());

    let subscriber = Client::connect(&addr).await?;
    let publisher = Client::connect(&addr).await?;
    let mut sub = subscriber.subscribe("bench", &topic).await?;
    let start_after = sub.start_after();
    let payload = bytes::Bytes::from(vec![b'x'; size]);

    let started = Instant::now();
    let producer = tokio::spawn({
        let publisher = publisher.clone();
        let topic = topic.clone();
        async move {
            let mut acks = std::collections::VecDeque::new();
            for _ in 0..count {
                acks.push_back(
                    publisher
                        .start_publish("bench", &topic, payload.clone())
                        .await?,
                );
                if acks.len() > 8192 {
                    if let Some(ack) = acks.pop_front() {
                        ack.await?;
                    }
                }
            }
            for ack in acks {
                ack.await?;
            }
            Ok::<_, corebus_client::Error>(started.elapsed())
        }
    });
    let mut expected = start_after + 1;
    while expected <= start_after + count {
        let message = sub.next_message().await.ok_or("subscription ended")??;
        if message.seq != expected {
            return Err(format!("expected seq {expected}, got {}", message.seq).into());
        }
        expected += 1;
    }
    let received = started.elapsed();
    let published = producer.await??;
    let secs = received.as_secs_f64();
    println!(
        "{count} messages of {size} bytes: published in {:.3}s, received in {secs:.3}s: {:.0} msg/s, {:.1} MB/s delivered, no gaps",
        published.as_secs_f64(),
        count as f64 / secs,
        (count as f64 * size as f64) / secs / 1e6
    );
    Ok(())
}
