//! Gathered sends end to end: a message to many subscribers of one shard
//! leaves in shared io_uring submissions, and every subscriber still gets
//! every message, in order; an idle connection holds no reader or writer task.

use std::time::{Duration, Instant};

use corebus_client::{Client, Event};
use corebus_tests::{next_event, Broker, RawConn};

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_to_many_subscribers_of_a_shard_leaves_in_gathered_sends() {
    let (subscribers, messages) = (8usize, 50u64);
    let broker = Broker::start(1);
    let mut subscriptions = Vec::with_capacity(subscribers);
    for _ in 0..subscribers {
        let client = Client::connect(broker.addr()).await.expect("connects");
        let subscription = client.subscribe("test", "wide").await.expect("subscribes");
        subscriptions.push((client, subscription));
    }
    let publisher = Client::connect(broker.addr()).await.expect("connects");
    // Acknowledged one at a time: each message's fan-out is over (and every
    // writer parked again) before the next one arrives.
    for n in 0..messages {
        let seq = publisher
            .publish("test", "wide", n.to_be_bytes().to_vec())
            .await
            .expect("acknowledged");
        assert_eq!(seq, n + 1);
    }
    for (_, subscription) in &mut subscriptions {
        for n in 0..messages {
            match next_event(subscription).await {
                Event::Message(message) => {
                    assert_eq!(message.seq, n + 1);
                    assert_eq!(message.payload.as_ref(), n.to_be_bytes());
                }
                other => panic!("expected message {}, got {other:?}", n + 1),
            }
        }
    }
    // The counters reach the metrics on the maintenance tick.
    let deadline = Instant::now() + WAIT;
    loop {
        let sends = broker.metrics()[0].sends;
        let deliveries = subscribers as u64 * messages;
        if sends.gathered >= deliveries {
            // Each message's sends (its deliveries and the acknowledgement)
            // left together: one submission per message, several sends each.
            assert!(sends.submissions >= messages, "{sends:?}");
            assert!(sends.submissions <= sends.gathered / 2, "{sends:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{deliveries} deliveries, but only these sends were gathered: {sends:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until no reader or writer task runs on any shard, as a tick after
/// this call reports it; the last figures seen otherwise (readers and
/// writers per shard).
async fn connections_parked(broker: &Broker) -> Result<(), Vec<(u64, u64)>> {
    let ticks_now: Vec<u64> = broker.metrics().iter().map(|shard| shard.ticks).collect();
    let deadline = Instant::now() + WAIT;
    loop {
        let metrics = broker.metrics();
        let fresh = metrics.len() == ticks_now.len()
            && metrics
                .iter()
                .zip(&ticks_now)
                .all(|(shard, &then)| shard.ticks > then);
        let running: Vec<(u64, u64)> = metrics
            .iter()
            .map(|shard| (shard.readers_running, shard.writers_running))
            .collect();
        if fresh && running.iter().all(|&tasks| tasks == (0, 0)) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(running);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An idle connection holds no task: between bursts every reader and
/// writer parks, and the next frame starts them again, for every
/// connection, every time, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_hold_no_task_and_the_next_frame_starts_theirs() {
    let (subscribers, bursts, per_burst) = (12usize, 3u64, 20u64);
    let broker = Broker::start(2);
    let mut subscriptions = Vec::with_capacity(subscribers);
    for _ in 0..subscribers {
        let client = Client::connect(broker.addr()).await.expect("connects");
        let subscription = client
            .subscribe("test", "bursts")
            .await
            .expect("subscribes");
        subscriptions.push((client, subscription));
    }
    let publisher = Client::connect(broker.addr()).await.expect("connects");
    for burst in 0..bursts {
        // Every connection has been quiet since its last frame.
        if let Err(running) = connections_parked(&broker).await {
            panic!("before burst {burst}, (readers, writers) still run per shard: {running:?}");
        }
        for n in 0..per_burst {
            let seq = burst * per_burst + n + 1;
            let acked = publisher
                .publish("test", "bursts", seq.to_be_bytes().to_vec())
                .await
                .expect("acknowledged");
            assert_eq!(acked, seq);
        }
        for (_, subscription) in &mut subscriptions {
            for n in 0..per_burst {
                let seq = burst * per_burst + n + 1;
                match next_event(subscription).await {
                    Event::Message(message) => {
                        assert_eq!(message.seq, seq);
                        assert_eq!(message.payload.as_ref(), seq.to_be_bytes());
                    }
                    other => panic!("burst {burst}: expected message {seq}, got {other:?}"),
                }
            }
        }
    }
    // Subscribing again and leaving: frames in, answers out, then quiet.
    let (client, subscription) = subscriptions.pop().expect("a subscriber");
    drop(subscription);
    client.subscribe("test", "other").await.expect("subscribes");
    if let Err(running) = connections_parked(&broker).await {
        panic!("after the last burst, (readers, writers) still run per shard: {running:?}");
    }
}

/// A broker that stops closes its idle connections too: their parked
/// readers and writers hold the sockets (inside wakers), and stopping lets
/// go of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_broker_closes_its_idle_connections() {
    let broker = Broker::start(2);
    let mut conns = Vec::new();
    for _ in 0..8 {
        let mut raw = RawConn::connect(broker.addr()).await;
        raw.hello().await;
        conns.push(raw);
    }
    if let Err(running) = connections_parked(&broker).await {
        panic!("(readers, writers) still run per shard: {running:?}");
    }
    tokio::task::spawn_blocking(move || drop(broker))
        .await
        .expect("stopped");
    for raw in &mut conns {
        raw.drain_until_closed(Duration::from_secs(5)).await;
    }
}
