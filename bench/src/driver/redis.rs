//! Redis pub/sub through the redis crate (tokio).
//!
//! Publishers pipeline `PUBLISH` commands over one connection, in order. Subscribers use the crate's async
//! pub/sub connection, which buffers without limit in the client, so nothing
//! is dropped client-side; the server's own output-buffer limit for pub/sub
//! clients still applies, and disconnects it causes show up as lost messages.

use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use redis::aio::{MultiplexedConnection, PubSubStream};
use redis::AsyncConnectionConfig;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::{failed, PublisherDone, Received, NAMESPACE};
use crate::options::Target;
use crate::payload::Header;
use crate::BenchError;

const TARGET: Target = Target::Redis;

fn channel(topic: &str) -> String {
    format!("{NAMESPACE}.{topic}")
}

fn open(url: &str) -> Result<redis::Client, BenchError> {
    redis::Client::open(url).map_err(|err| failed(TARGET, "connect", err))
}

/// Commands sent to the server in one pipeline at most.
const MAX_BATCH: usize = 1024;
/// Messages queued for the pipelining task before `publish` waits.
const QUEUE: usize = 1 << 16;

/// Pipelined `PUBLISH` commands, in order.
///
/// A background task takes whatever messages are queued (up to
/// [`MAX_BATCH`]), sends them as one pipeline, waits for the replies and
/// repeats: one pipeline in flight at a time. Several concurrent command
/// futures on one multiplexed connection would be faster to write but may
/// reach the socket out of order (they race for the connection's internal
/// queue), which would show up here as reordered messages.
pub struct RedisPublisher {
    queue: mpsc::Sender<(usize, Bytes)>,
    task: JoinHandle<Result<(), BenchError>>,
}

impl RedisPublisher {
    pub(super) async fn connect(url: &str, topics: &[String]) -> Result<Self, BenchError> {
        // The default 500 ms reply timeout would fail a large pipeline that
        // waits behind others under load; the run has its own time limits.
        let config = AsyncConnectionConfig::new()
            .set_response_timeout(None)
            .set_connection_timeout(Some(Duration::from_secs(10)));
        let connection = open(url)?
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|err| failed(TARGET, "connect", err))?;
        let channels = topics.iter().map(|topic| channel(topic)).collect();
        let (queue, messages) = mpsc::channel(QUEUE);
        let task = tokio::spawn(send_pipelines(connection, channels, messages));
        Ok(RedisPublisher { queue, task })
    }

    pub(super) async fn publish(&mut self, topic: usize, payload: Bytes) -> Result<(), BenchError> {
        if self.queue.send((topic, payload)).await.is_err() {
            // The task ended early: only an error ends it before `finish`.
            return Err(self
                .task_result()
                .await
                .err()
                .unwrap_or_else(|| failed(TARGET, "publish", "the pipelining task ended")));
        }
        Ok(())
    }

    async fn task_result(&mut self) -> Result<(), BenchError> {
        (&mut self.task)
            .await
            .map_err(|err| BenchError::Task(err.to_string()))?
    }

    pub(super) async fn finish(self) -> Result<PublisherDone, BenchError> {
        let RedisPublisher { queue, task } = self;
        // Closing the queue lets the task send what is left and end.
        drop(queue);
        task.await
            .map_err(|err| BenchError::Task(err.to_string()))??;
        Ok(PublisherDone { max_seq: None })
    }
}

async fn send_pipelines(
    mut connection: MultiplexedConnection,
    channels: Vec<String>,
    mut messages: mpsc::Receiver<(usize, Bytes)>,
) -> Result<(), BenchError> {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    loop {
        if messages.recv_many(&mut batch, MAX_BATCH).await == 0 {
            return Ok(());
        }
        let mut pipeline = redis::pipe();
        for (topic, payload) in batch.drain(..) {
            pipeline
                .cmd("PUBLISH")
                .arg(&channels[topic])
                .arg(&payload[..])
                .ignore();
        }
        pipeline
            .query_async::<()>(&mut connection)
            .await
            .map_err(|err| failed(TARGET, "publish", err))?;
    }
}

/// One pub/sub connection with one channel per topic.
pub struct RedisSubscriber {
    messages: PubSubStream,
    /// The subscribed channels; a message's index is its channel's position.
    channels: Vec<String>,
}

impl RedisSubscriber {
    pub(super) async fn connect(url: &str, topics: &[&str]) -> Result<Self, BenchError> {
        let mut pubsub = open(url)?
            .get_async_pubsub()
            .await
            .map_err(|err| failed(TARGET, "connect", err))?;
        let channels: Vec<String> = topics.iter().map(|topic| channel(topic)).collect();
        for name in &channels {
            // Returns after the server's subscribe confirmation.
            pubsub
                .subscribe(name)
                .await
                .map_err(|err| failed(TARGET, "subscribe", err))?;
        }
        Ok(RedisSubscriber {
            messages: pubsub.into_on_message(),
            channels,
        })
    }

    pub(super) async fn next(&mut self) -> Option<Received> {
        let message = self.messages.next().await?;
        let payload = message.get_payload_bytes();
        // A linear search: a connection holds at most a few dozen channels,
        // and with one channel this is a single comparison.
        let subscription = self
            .channels
            .iter()
            .position(|name| name.as_str() == message.get_channel_name());
        Some(Received {
            subscription: subscription.unwrap_or(0),
            seq: None,
            // A message on a channel this connection did not subscribe to
            // counts as foreign (no header), never as a delivery.
            header: subscription.and_then(|_| Header::parse(payload)),
            len: payload.len(),
        })
    }
}
