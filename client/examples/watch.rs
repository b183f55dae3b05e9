//! Follows one topic like `corebus sub -v`, and says on stderr what happens
//! to the connection (a lost broker, each reconnection attempt, resumed
//! subscriptions, messages lost meanwhile):
//!
//! ```sh
//! cargo run -p corebus-client --example watch -- 127.0.0.1:7400 demo greetings
//! ```
//!
//! Arguments: broker address (or several, comma-separated), namespace,
//! topic. Stop the broker and start it again to see the client reconnect
//! and resume.

use corebus_client::{Client, ConnectionEvent, Event};
use futures_util::StreamExt;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let servers = args.next().unwrap_or_else(|| "127.0.0.1:7400".into());
    let namespace = args.next().unwrap_or_else(|| "demo".into());
    let topic = args.next().unwrap_or_else(|| "greetings".into());

    let mut builder = Client::builder().name("watch-example");
    for server in servers.split(',') {
        builder = builder.server(server.trim());
    }
    let client = builder.connect().await?;

    let mut events = client.connection_events();
    tokio::spawn(async move {
        while let Some(event) = events.next().await {
            match event {
                // The subscription reports its own gaps, in place.
                ConnectionEvent::Discontinuity { .. } => {}
                other => eprintln!("connection: {other}"),
            }
        }
    });

    let mut subscription = client.subscribe(&namespace, &topic).await?;
    eprintln!(
        "following {namespace}/{topic} after seq {}",
        subscription.start_after()
    );
    while let Some(event) = subscription.next().await {
        match event? {
            Event::Message(message) => println!(
                "[{}/{} #{}] {}",
                message.namespace(),
                message.topic(),
                message.seq,
                String::from_utf8_lossy(&message.payload)
            ),
            Event::Discontinuity(gap) => eprintln!("lost: {gap}"),
        }
    }
    Ok(())
}
