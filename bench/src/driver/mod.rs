//! The thin per-broker layer: connect, publish, subscribe, receive.
//!
//! Everything above this module (pacing, flow control, delivery checks,
//! latency, reports) is shared, so the brokers differ only in what their own
//! client libraries do. Each driver uses its client the way an application
//! that wants throughput would: corebus and NATS publish fire-and-forget
//! (corebus with `--acks`: pipelined publishes, every acknowledgement
//! checked), NATS flushes at the end, Redis sends `PUBLISH` commands in
//! pipelines, one pipeline in flight.
//! None of them may drop a message silently: client-side buffers are made
//! large enough, and anything a client reports dropping is counted.
//!
//! `raw` is no broker: it speaks length-prefixed frames to the harness's own
//! loopback relay ([`crate::relay`]), the baseline for large messages.
//!
//! Subscribers may instead connect over WebSocket (`--subscribers-over
//! websocket`, corebus and NATS), as browsers would: [`corebus_ws`] speaks
//! corebus's `corebus.v1` subprotocol (native frames in binary messages),
//! [`nats_ws`] NATS's text protocol over nats-server's WebSocket listener.
//! Neither client library speaks WebSocket the same way, so both are thin
//! clients of their own over the same WebSocket library (tokio-tungstenite),
//! which keeps the two on equal footing. Publishers stay native.
//!
//! A subscriber connection may hold several subscriptions (the many
//! scenario with more topics than subscribers); every message says which one
//! it came from, so delivery is checked per subscription.

#[cfg(not(feature = "peers"))]
mod absent;
pub(crate) mod corebus;
pub mod corebus_ws;
#[cfg(feature = "peers")]
mod nats;
pub mod nats_ws;
mod raw;
#[cfg(feature = "peers")]
mod redis;
mod ws;

#[cfg(not(feature = "peers"))]
use absent::{nats, redis};

use std::future::poll_fn;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::Poll;

use bytes::Bytes;
use futures_util::Stream;

use crate::options::Target;
use crate::payload::Header;
use crate::BenchError;

/// Namespace (corebus) or subject/channel prefix (NATS, Redis) of every
/// benchmark topic.
pub const NAMESPACE: &str = "bench";

/// Publishes a corebus publisher may have awaiting their acknowledgement
/// before it waits for the oldest.
const MAX_IN_FLIGHT: usize = 4096;

/// Where the broker is.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// Which broker.
    pub target: Target,
    /// Its URL (already checked to be loopback).
    pub url: String,
    /// corebus publishers ask for acknowledgements (`--acks`).
    pub acks: bool,
    /// corebus connections with one topic ask for the shard that owns it.
    pub affinity: bool,
    /// corebus publishers compress their payloads (`--compress`).
    pub compress: bool,
    /// Subscribers connect over WebSocket to this URL (`None`: natively, to
    /// `url`).
    pub ws_url: Option<String>,
    /// Problems client libraries report out of band (NATS slow-consumer and
    /// disconnect events), shared by every connection of the run.
    pub incidents: Arc<Incidents>,
}

/// Counts of what client libraries report outside of call results.
#[derive(Debug, Default)]
pub struct Incidents {
    /// Messages a client dropped because its buffer was full.
    pub client_drops: AtomicU64,
    /// Connections that were lost (and possibly re-established) mid-run.
    pub disconnects: AtomicU64,
}

impl Incidents {
    /// (client drops, disconnects) so far.
    pub fn snapshot(&self) -> (u64, u64) {
        (
            self.client_drops.load(Ordering::Relaxed),
            self.disconnects.load(Ordering::Relaxed),
        )
    }
}

/// One message as a subscriber saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Received {
    /// Which of the connection's subscriptions it came from (the index into
    /// the topics given to [`Subscriber::connect`]).
    pub subscription: usize,
    /// The broker's sequence number (corebus only).
    pub seq: Option<u64>,
    /// The benchmark header, or `None` if the payload was not one of ours.
    pub header: Option<Header>,
    /// Payload length.
    pub len: usize,
}

/// A publishing connection to one broker.
pub enum Publisher {
    /// See [`corebus::CorebusPublisher`].
    Corebus(corebus::CorebusPublisher),
    /// See [`nats::NatsPublisher`].
    Nats(nats::NatsPublisher),
    /// See [`redis::RedisPublisher`].
    Redis(redis::RedisPublisher),
    /// See [`raw::RawPublisher`].
    Raw(raw::RawPublisher),
}

/// What a publisher knows once every publish is answered.
#[derive(Debug, Clone, Default)]
pub struct PublisherDone {
    /// Per topic: the highest sequence number the broker assigned to this
    /// publisher's messages (corebus only; `None` elsewhere).
    pub max_seq: Option<Vec<u64>>,
}

impl Publisher {
    /// Connects a publisher that will send to `topics` (names without the
    /// namespace; publishes name them by index).
    pub async fn connect(endpoint: &Endpoint, topics: &[String]) -> Result<Publisher, BenchError> {
        Ok(match endpoint.target {
            Target::Corebus => {
                Publisher::Corebus(corebus::CorebusPublisher::connect(endpoint, topics).await?)
            }
            Target::Nats => Publisher::Nats(nats::NatsPublisher::connect(endpoint, topics).await?),
            Target::Redis => {
                Publisher::Redis(redis::RedisPublisher::connect(&endpoint.url, topics).await?)
            }
            Target::Raw => Publisher::Raw(raw::RawPublisher::connect(&endpoint.url).await?),
        })
    }

    /// Sends one message to topic number `topic`. Returns once the message is
    /// handed to the client library; the broker's answer, where there is one,
    /// is checked later (at the latest in [`Publisher::finish`]).
    pub async fn publish(&mut self, topic: usize, payload: Bytes) -> Result<(), BenchError> {
        match self {
            Publisher::Corebus(publisher) => publisher.publish(topic, payload).await,
            Publisher::Nats(publisher) => publisher.publish(topic, payload).await,
            Publisher::Redis(publisher) => publisher.publish(topic, payload).await,
            Publisher::Raw(publisher) => publisher.publish(payload).await,
        }
    }

    /// Waits until every message sent is answered (or flushed to the broker,
    /// for NATS) and closes the connection.
    pub async fn finish(self) -> Result<PublisherDone, BenchError> {
        match self {
            Publisher::Corebus(publisher) => publisher.finish().await,
            Publisher::Nats(publisher) => publisher.finish().await,
            Publisher::Redis(publisher) => publisher.finish().await,
            Publisher::Raw(publisher) => publisher.finish().await,
        }
    }
}

/// A subscribing connection with one or more subscriptions.
pub enum Subscriber {
    /// See [`corebus::CorebusSubscriber`].
    Corebus(corebus::CorebusSubscriber),
    /// See [`nats::NatsSubscriber`].
    Nats(nats::NatsSubscriber),
    /// See [`redis::RedisSubscriber`].
    Redis(redis::RedisSubscriber),
    /// See [`raw::RawSubscriber`].
    Raw(raw::RawSubscriber),
    /// See [`corebus_ws::CorebusWsSubscriber`].
    CorebusWs(corebus_ws::CorebusWsSubscriber),
    /// See [`nats_ws::NatsWsSubscriber`].
    NatsWs(nats_ws::NatsWsSubscriber),
}

impl Subscriber {
    /// Opens a connection and subscribes to each of `topics` (at least
    /// one); returns once the broker has confirmed every subscription, so
    /// anything published afterwards is delivered to them.
    pub async fn connect(endpoint: &Endpoint, topics: &[&str]) -> Result<Subscriber, BenchError> {
        Subscriber::connect_from(endpoint, topics, None).await
    }

    /// [`Subscriber::connect`] from the local address `local` (corebus's
    /// native driver only: the other client libraries cannot bind one).
    pub async fn connect_from(
        endpoint: &Endpoint,
        topics: &[&str],
        local: Option<std::net::IpAddr>,
    ) -> Result<Subscriber, BenchError> {
        if local.is_some() && (endpoint.target != Target::Corebus || endpoint.ws_url.is_some()) {
            return Err(BenchError::Options(format!(
                "only corebus's native driver connects from a chosen local address, not {}",
                endpoint.target.name()
            )));
        }
        if topics.is_empty() {
            return Err(BenchError::Options(
                "a subscriber connection needs at least one topic".into(),
            ));
        }
        if let Some(ws_url) = &endpoint.ws_url {
            return Ok(match endpoint.target {
                Target::Corebus => Subscriber::CorebusWs(
                    corebus_ws::CorebusWsSubscriber::connect(ws_url, endpoint, topics).await?,
                ),
                Target::Nats => Subscriber::NatsWs(
                    nats_ws::NatsWsSubscriber::connect(ws_url, endpoint, topics).await?,
                ),
                Target::Redis | Target::Raw => {
                    return Err(BenchError::Options(format!(
                        "{} has no WebSocket listener",
                        endpoint.target.name()
                    )))
                }
            });
        }
        Ok(match endpoint.target {
            Target::Corebus => Subscriber::Corebus(
                corebus::CorebusSubscriber::connect(endpoint, topics, local).await?,
            ),
            Target::Nats => {
                Subscriber::Nats(nats::NatsSubscriber::connect(endpoint, topics).await?)
            }
            Target::Redis => {
                Subscriber::Redis(redis::RedisSubscriber::connect(&endpoint.url, topics).await?)
            }
            Target::Raw => Subscriber::Raw(raw::RawSubscriber::connect(&endpoint.url).await?),
        })
    }

    /// The sequence number after which subscription `subscription` starts
    /// (corebus).
    pub fn start_after(&self, subscription: usize) -> Option<u64> {
        match self {
            Subscriber::Corebus(subscriber) => Some(subscriber.start_after(subscription)),
            Subscriber::CorebusWs(subscriber) => Some(subscriber.start_after(subscription)),
            Subscriber::Nats(_)
            | Subscriber::Redis(_)
            | Subscriber::Raw(_)
            | Subscriber::NatsWs(_) => None,
        }
    }

    /// The next message of any subscription; `Ok(None)` when a subscription
    /// ended. Cancel-safe.
    pub async fn next(&mut self) -> Result<Option<Received>, BenchError> {
        match self {
            Subscriber::Corebus(subscriber) => subscriber.next().await,
            Subscriber::Nats(subscriber) => Ok(subscriber.next().await),
            Subscriber::Redis(subscriber) => Ok(subscriber.next().await),
            Subscriber::Raw(subscriber) => subscriber.next().await,
            Subscriber::CorebusWs(subscriber) => subscriber.next().await,
            Subscriber::NatsWs(subscriber) => subscriber.next().await,
        }
    }
}

/// The next item of any of `streams` (not empty), with the index of the
/// stream it came from; `None` as the item when that stream ended.
///
/// Polls round-robin from `*turn`, so a busy subscription cannot starve the
/// connection's others; with one stream this is a plain `next()`.
/// Cancel-safe: an item is taken only in the poll that returns it.
pub(crate) async fn next_of_any<S: Stream + Unpin>(
    streams: &mut [S],
    turn: &mut usize,
) -> (usize, Option<S::Item>) {
    poll_fn(|cx| {
        let count = streams.len();
        for step in 0..count {
            let index = (*turn + step) % count;
            if let Poll::Ready(item) = Pin::new(&mut streams[index]).poll_next(cx) {
                *turn = (index + 1) % count;
                return Poll::Ready((index, item));
            }
        }
        Poll::Pending
    })
    .await
}

/// A client-library error while doing `action` against `target`.
pub(crate) fn failed(
    target: Target,
    action: &'static str,
    err: impl std::fmt::Display,
) -> BenchError {
    BenchError::Broker {
        target: target.name(),
        action,
        reason: err.to_string(),
    }
}
