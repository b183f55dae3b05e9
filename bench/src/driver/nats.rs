//! NATS core pub/sub through async-nats.
//!
//! async-nats drops messages silently when a subscription's buffer is full
//! (it only raises a `SlowConsumer` event), so subscriptions get a buffer far
//! larger than the harness's flow-control window, and every slow-consumer or
//! disconnect event is counted in [`Incidents`](super::Incidents).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_nats::{Client, ConnectOptions, Event, Subject};
use bytes::Bytes;
use futures_util::StreamExt;

use super::{failed, next_of_any, Endpoint, Incidents, PublisherDone, Received, NAMESPACE};
use crate::load::FINISH_TIMEOUT;
use crate::options::Target;
use crate::payload::Header;
use crate::BenchError;

const TARGET: Target = Target::Nats;
/// Messages a subscription may buffer in the client before it drops.
const SUBSCRIPTION_CAPACITY: usize = 1 << 20;
/// Publishes the client may queue for its writer before `publish` waits.
const CLIENT_CAPACITY: usize = 1 << 16;

fn subject(topic: &str) -> Subject {
    Subject::from(format!("{NAMESPACE}.{topic}"))
}

async fn connect(endpoint: &Endpoint) -> Result<Client, BenchError> {
    let incidents: Arc<Incidents> = endpoint.incidents.clone();
    ConnectOptions::new()
        .subscription_capacity(SUBSCRIPTION_CAPACITY)
        .client_capacity(CLIENT_CAPACITY)
        .connection_timeout(Duration::from_secs(10))
        .event_callback(move |event| {
            match event {
                Event::SlowConsumer(_) => {
                    incidents.client_drops.fetch_add(1, Ordering::Relaxed);
                }
                Event::Disconnected => {
                    incidents.disconnects.fetch_add(1, Ordering::Relaxed);
                }
                _ => {}
            }
            async {}
        })
        .connect(endpoint.url.as_str())
        .await
        .map_err(|err| failed(TARGET, "connect", err))
}

/// Returns once the server has read everything this client sent before.
///
/// async-nats's `flush()` is no round trip: it resolves once the socket is
/// flushed, which can be while commands still wait in the client's write
/// buffer (the socket was full and nothing was written since the last
/// flush), and dropping the client then discards them (seen: the last 253 of
/// 1,000 publishes of the connections scenario never reached the server).
/// A message to the connection's own inbox comes back only after the server
/// has read everything sent before it.
async fn round_trip(client: &Client) -> Result<(), BenchError> {
    let inbox = client.new_inbox();
    let mut echo = client
        .subscribe(inbox.clone())
        .await
        .map_err(|err| failed(TARGET, "flush", err))?;
    client
        .publish(inbox, Bytes::new())
        .await
        .map_err(|err| failed(TARGET, "flush", err))?;
    client
        .flush()
        .await
        .map_err(|err| failed(TARGET, "flush", err))?;
    match tokio::time::timeout(FINISH_TIMEOUT, echo.next()).await {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(failed(
            TARGET,
            "flush",
            "the connection closed before the server echoed a message",
        )),
        Err(_) => Err(failed(TARGET, "flush", "no echo from the server in time")),
    }
}

/// Fire-and-forget publishes; `finish` returns once the server has read
/// every one (a message of its own, received back on the same connection).
pub struct NatsPublisher {
    client: Client,
    subjects: Vec<Subject>,
}

impl NatsPublisher {
    pub(super) async fn connect(
        endpoint: &Endpoint,
        topics: &[String],
    ) -> Result<Self, BenchError> {
        Ok(NatsPublisher {
            client: connect(endpoint).await?,
            subjects: topics.iter().map(|topic| subject(topic)).collect(),
        })
    }

    pub(super) async fn publish(&mut self, topic: usize, payload: Bytes) -> Result<(), BenchError> {
        self.client
            .publish(self.subjects[topic].clone(), payload)
            .await
            .map_err(|err| failed(TARGET, "publish", err))
    }

    pub(super) async fn finish(self) -> Result<PublisherDone, BenchError> {
        round_trip(&self.client).await?;
        Ok(PublisherDone { max_seq: None })
    }
}

/// One connection with one subscription per topic.
pub struct NatsSubscriber {
    subscribers: Vec<async_nats::Subscriber>,
    /// The subscription polled first next time (round-robin).
    turn: usize,
    /// Keeps the connection open as long as the subscriptions are read.
    _client: Client,
}

impl NatsSubscriber {
    pub(super) async fn connect(endpoint: &Endpoint, topics: &[&str]) -> Result<Self, BenchError> {
        let client = connect(endpoint).await?;
        let mut subscribers = Vec::with_capacity(topics.len());
        for topic in topics {
            subscribers.push(
                client
                    .subscribe(subject(topic))
                    .await
                    .map_err(|err| failed(TARGET, "subscribe", err))?,
            );
        }
        // SUB is only queued; the round trip proves the server has processed
        // it, so later publishes reach these subscriptions.
        round_trip(&client).await?;
        Ok(NatsSubscriber {
            subscribers,
            turn: 0,
            _client: client,
        })
    }

    pub(super) async fn next(&mut self) -> Option<Received> {
        let (subscription, message) = next_of_any(&mut self.subscribers, &mut self.turn).await;
        let message = message?;
        Some(Received {
            subscription,
            seq: None,
            header: Header::parse(&message.payload),
            len: message.payload.len(),
        })
    }
}
