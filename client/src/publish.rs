//! Publishing: acknowledged one at a time or pipelined, and
//! fire-and-forget with refusals counted.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use corebus_net::{Headers, PayloadFormat};
use tokio::sync::oneshot;

use crate::{Client, Error, Handle};

/// Publishes made with [`Client::publish_unacked`] that the broker refused,
/// from [`Client::take_unacked_failures`].
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), corebus_client::Error> {
/// # let broker = corebus_shards::start(corebus_shards::ServerConfig {
/// #     listen: "127.0.0.1:0".parse().expect("an address"),
/// #     shards: Some(1),
/// #     ..Default::default()
/// # }).expect("the broker starts");
/// # let addr = broker.local_addr();
/// let client = corebus_client::Client::connect(addr).await?;
/// client.publish_unacked("app", "ticks", "1").await?;
/// // A round trip: everything sent before it has been answered.
/// client.ping().await?;
/// let failures = client.take_unacked_failures();
/// assert_eq!(failures.count, 0);
/// assert!(failures.last.is_none());
/// # broker.stop();
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Default)]
pub struct UnackedFailures {
    /// How many were refused.
    pub count: u64,
    /// The most recent refusal: an [`Error::Server`] whose code says why
    /// (`forbidden`, `invalid_name`, …) and whose message names the topic.
    pub last: Option<Error>,
}

impl Client {
    /// Publishes one message and waits for its acknowledgement; returns the
    /// sequence number the broker gave it.
    ///
    /// For many messages, [`Client::start_publish`] keeps several in flight.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), corebus_client::Error> {
    /// # let broker = corebus_shards::start(corebus_shards::ServerConfig {
    /// #     listen: "127.0.0.1:0".parse().expect("an address"),
    /// #     shards: Some(1),
    /// #     ..Default::default()
    /// # }).expect("the broker starts");
    /// # let addr = broker.local_addr();
    /// let client = corebus_client::Client::connect(addr).await?;
    /// let first = client.publish("app", "news", "hello").await?;
    /// let second = client.publish("app", "news", b"bytes too".to_vec()).await?;
    /// assert_eq!((first, second), (1, 2));
    /// # broker.stop();
    /// # Ok(())
    /// # }
    /// ```
    pub async fn publish(
        &self,
        namespace: &str,
        topic: &str,
        payload: impl Into<Bytes>,
    ) -> Result<u64, Error> {
        self.start_publish(namespace, topic, payload).await?.await
    }

    /// Queues one publish and returns a future for its acknowledgement.
    ///
    /// This is the pipelining API: frames go on the wire in call order, and
    /// any number of publishes can await their acks at once, up to
    /// [`ClientConfig::max_in_flight`]; beyond that, this waits for room.
    /// Publishes to one topic from one connection are sequenced in call order.
    ///
    /// Names and payload size are checked here, before anything is sent. The
    /// returned [`PendingPublish`] may be dropped: the publish still happens.
    ///
    /// While the client reconnects, this waits for the new connection (up to
    /// [`ClientConfig::request_timeout`]). A publish whose connection is lost
    /// before its acknowledgement fails with [`Error::ConnectionLost`] and is
    /// not sent again: it may or may not have been sequenced.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), corebus_client::Error> {
    /// # let broker = corebus_shards::start(corebus_shards::ServerConfig {
    /// #     listen: "127.0.0.1:0".parse().expect("an address"),
    /// #     shards: Some(1),
    /// #     ..Default::default()
    /// # }).expect("the broker starts");
    /// # let addr = broker.local_addr();
    /// let client = corebus_client::Client::connect(addr).await?;
    /// let mut acks = Vec::new();
    /// for i in 0..1000u32 {
    ///     acks.push(client.start_publish("app", "ticks", i.to_string()).await?);
    /// }
    /// // Sequenced in call order.
    /// for (i, ack) in acks.into_iter().enumerate() {
    ///     assert_eq!(ack.await?, i as u64 + 1);
    /// }
    /// # broker.stop();
    /// # Ok(())
    /// # }
    /// ```
    pub async fn start_publish(
        &self,
        namespace: &str,
        topic: &str,
        payload: impl Into<Bytes>,
    ) -> Result<PendingPublish, Error> {
        self.start_publish_with_headers(namespace, topic, &Headers::default(), payload)
            .await
    }

    /// [`Client::publish`] with headers: name-value pairs and the
    /// well-known fields of [`Headers`] travel with the message to every
    /// subscriber (protocol version 2; MQTT 5.0 subscribers get them as
    /// properties). Headers count toward the frame-size limit with the
    /// payload; they are never compressed.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), corebus_client::Error> {
    /// # let broker = corebus_shards::start(corebus_shards::ServerConfig {
    /// #     listen: "127.0.0.1:0".parse().expect("an address"),
    /// #     shards: Some(1),
    /// #     ..Default::default()
    /// # }).expect("the broker starts");
    /// # let addr = broker.local_addr();
    /// use corebus_client::Headers;
    ///
    /// let client = corebus_client::Client::connect(addr).await?;
    /// let mut requests = client.subscribe("app", "requests").await?;
    /// let headers = Headers {
    ///     response_topic: Some("replies/7".into()),
    ///     correlation_data: Some(bytes::Bytes::from_static(b"req-1")),
    ///     user: vec![("tenant".into(), "acme".into())],
    ///     ..Headers::default()
    /// };
    /// client.publish_with_headers("app", "requests", &headers, "ping").await?;
    /// let request = requests.next_message().await.expect("open")?;
    /// assert_eq!(request.headers(), Some(&headers));
    /// # broker.stop();
    /// # Ok(())
    /// # }
    /// ```
    pub async fn publish_with_headers(
        &self,
        namespace: &str,
        topic: &str,
        headers: &Headers,
        payload: impl Into<Bytes>,
    ) -> Result<u64, Error> {
        self.start_publish_with_headers(namespace, topic, headers, payload)
            .await?
            .await
    }

    /// [`Client::start_publish`] with headers (see
    /// [`Client::publish_with_headers`]).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), corebus_client::Error> {
    /// # let broker = corebus_shards::start(corebus_shards::ServerConfig {
    /// #     listen: "127.0.0.1:0".parse().expect("an address"),
    /// #     shards: Some(1),
    /// #     ..Default::default()
    /// # }).expect("the broker starts");
    /// # let addr = broker.local_addr();
    /// use corebus_client::Headers;
    ///
    /// let client = corebus_client::Client::connect(addr).await?;
    /// let json = Headers {
    ///     content_type: Some("application/json".into()),
    ///     ..Headers::default()
    /// };
    /// let ack = client
    ///     .start_publish_with_headers("app", "events", &json, r#"{"n":1}"#)
    ///     .await?;
    /// assert_eq!(ack.await?, 1);
    /// # broker.stop();
    /// # Ok(())
    /// # }
    /// ```
    pub async fn start_publish_with_headers(
        &self,
        namespace: &str,
        topic: &str,
        headers: &Headers,
        payload: impl Into<Bytes>,
    ) -> Result<PendingPublish, Error> {
        let payload: Bytes = payload.into();
        let (format, payload) = match self.compression.apply(&payload) {
            Some(compressed) => (PayloadFormat::Zstd, Bytes::from(compressed)),
            None => (PayloadFormat::Plain, payload),
        };
        let shared = self.shared();
        shared.check_publish(namespace, topic, headers, payload.len())?;
        shared.usable()?;
        let permit = shared
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Error::Closed)?;
        let answer = shared
            .enqueue_publish(permit, namespace, topic, format, headers, &payload)
            .await?;
        Ok(PendingPublish {
            answer,
            handle: self.handle.clone(),
        })
    }

    /// Publishes one message without asking for an acknowledgement: the
    /// cheapest way to publish, for a stream where an occasional message lost
    /// with a connection is acceptable (the same contract as a NATS core
    /// publish).
    ///
    /// Returns once the frame is queued for the socket, in call order with
    /// every other request of this client; publishes to one topic from one
    /// connection are sequenced in that order. Nothing confirms that the
    /// broker sequenced the message, and there is no in-flight limit: instead
    /// this waits while more than [`ClientConfig::send_buffer`] bytes are
    /// queued for the socket, so a publisher cannot outrun the connection by
    /// more than that.
    ///
    /// Names and payload size are checked here, before anything is queued.
    /// A publish the broker refuses (not permitted, say) is not reported to
    /// this call, which has returned by then; the refusal is counted and can
    /// be read with [`Client::take_unacked_failures`]. Publishes queued but
    /// not yet written when the connection is lost are lost with it, without
    /// an error; subscribers see the loss as a gap in sequence numbers. While
    /// the client reconnects, this waits for the new connection (up to
    /// [`ClientConfig::request_timeout`]).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), corebus_client::Error> {
    /// # let broker = corebus_shards::start(corebus_shards::ServerConfig {
    /// #     listen: "127.0.0.1:0".parse().expect("an address"),
    /// #     shards: Some(1),
    /// #     ..Default::default()
    /// # }).expect("the broker starts");
    /// # let addr = broker.local_addr();
    /// let client = corebus_client::Client::connect(addr).await?;
    /// let mut sub = client.subscribe("app", "ticks").await?;
    /// for i in 0..100u32 {
    ///     client.publish_unacked("app", "ticks", i.to_string()).await?;
    /// }
    /// let hundredth = loop {
    ///     let message = sub.next_message().await.expect("open")?;
    ///     if message.seq == 100 {
    ///         break message;
    ///     }
    /// };
    /// assert_eq!(&hundredth.payload[..], b"99");
    /// # broker.stop();
    /// # Ok(())
    /// # }
    /// ```
    pub async fn publish_unacked(
        &self,
        namespace: &str,
        topic: &str,
        payload: impl AsRef<[u8]>,
    ) -> Result<(), Error> {
        let compressed = self.compression.apply(payload.as_ref());
        let (format, payload) = match &compressed {
            Some(compressed) => (PayloadFormat::Zstd, &compressed[..]),
            None => (PayloadFormat::Plain, payload.as_ref()),
        };
        let shared = self.shared();
        shared.check_publish(namespace, topic, &Headers::default(), payload.len())?;
        shared
            .enqueue_unacked(namespace, topic, format, payload)
            .await
    }

    /// Takes the tally of [`Client::publish_unacked`] calls the broker
    /// refused since the last call (or since the client connected), and the
    /// most recent refusal, then starts a new tally.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), corebus_client::Error> {
    /// # let broker = corebus_shards::start(corebus_shards::ServerConfig {
    /// #     listen: "127.0.0.1:0".parse().expect("an address"),
    /// #     shards: Some(1),
    /// #     ..Default::default()
    /// # }).expect("the broker starts");
    /// # let addr = broker.local_addr();
    /// let client = corebus_client::Client::connect(addr).await?;
    /// client.publish_unacked("app", "ticks", "1").await?;
    /// client.ping().await?; // answered after everything sent before it
    /// assert_eq!(client.take_unacked_failures().count, 0);
    /// # broker.stop();
    /// # Ok(())
    /// # }
    /// ```
    pub fn take_unacked_failures(&self) -> UnackedFailures {
        self.shared().take_unacked_failures()
    }
}

/// The acknowledgement of a publish queued by [`Client::start_publish`].
///
/// Resolves to the message's sequence number, or to the error that answered
/// the publish. `'static`, `Send` and `Unpin`: it can be stored, moved to
/// another task, or dropped (the publish is not cancelled).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), corebus_client::Error> {
/// # let broker = corebus_shards::start(corebus_shards::ServerConfig {
/// #     listen: "127.0.0.1:0".parse().expect("an address"),
/// #     shards: Some(1),
/// #     ..Default::default()
/// # }).expect("the broker starts");
/// # let addr = broker.local_addr();
/// let client = corebus_client::Client::connect(addr).await?;
/// let pending = client.start_publish("app", "news", "hello").await?;
/// // Send it to another task, or await it here.
/// let seq = tokio::spawn(pending).await.expect("the task ran")?;
/// assert_eq!(seq, 1);
/// # broker.stop();
/// # Ok(())
/// # }
/// ```
#[must_use = "the publish is sent either way; await this to learn its sequence number or error"]
pub struct PendingPublish {
    answer: oneshot::Receiver<Result<u64, Error>>,
    handle: Arc<Handle>,
}

impl Future for PendingPublish {
    type Output = Result<u64, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match Pin::new(&mut self.answer).poll(cx) {
            Poll::Ready(Ok(result)) => Poll::Ready(result),
            Poll::Ready(Err(_)) => Poll::Ready(Err(self.handle.shared.current_error())),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl std::fmt::Debug for PendingPublish {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PendingPublish").finish_non_exhaustive()
    }
}
