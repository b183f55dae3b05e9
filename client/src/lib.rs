//! The native Rust client for the corebus publish/subscribe broker, on tokio.
//!
//! Role: speak the corebus wire protocol (`docs/protocol.md`) over one TCP
//! connection per [`Client`], plaintext or TLS, for applications, the
//! broker's CLI and the integration tests. All encoding and decoding goes through the sans-I/O codec
//! in `corebus-net`; this crate adds the connection: the handshake, request ids
//! and their answers, pipelined publishes, subscription streams, and `PING`/
//! `PONG`.
//!
//! Must not depend on: any broker crate (`corebus`, `corebus-shards`) or
//! glommio. It runs on any tokio runtime (current-thread or multi-thread) and
//! needs only `corebus-net`, `bytes`, `futures-core`, `thiserror`, tokio,
//! `serde_json` (for the webhook commands), `zstd` (payload compression), and for TLS `rustls` (with the `ring` provider), `tokio-rustls` and
//! `rustls-native-certs`.
//!
//! Design: a background reader task decodes frames (payloads are slices of
//! its read buffer, never copied) and resolves requests or routes messages; a
//! session task writes whatever callers encoded into a shared buffer, so
//! concurrent and pipelined frames coalesce into few writes, sends heartbeats,
//! and replaces the connection when it is lost.
//!
//! # Delivery: exactly once and in order, or an exact report of the loss
//!
//! Every topic's history on the broker is an *epoch* (a random id of one
//! incarnation of its state) with sequence numbers 1, 2, 3… A
//! [`Subscription`] yields [`Event`]s: every [`Message`] after its start point
//! exactly once and in order, and, where messages were lost, one
//! [`Discontinuity`] saying exactly which (`last_seq + 1 ..= next_seq - 1`, or
//! that the epoch changed). The client checks each message against the one
//! before; a gap the broker did not report is a protocol violation and ends
//! the client. [`Subscription::next_message`] turns a discontinuity into a
//! non-terminal `Err(`[`Error::Discontinuity`]`)`.
//!
//! # Reconnection and resume
//!
//! With [`ClientConfig::reconnect`] on (the default), a lost connection (end
//! of stream, I/O error, heartbeat timeout, a fatal `ERROR` from the server)
//! is replaced: the client reconnects to the address it first resolved, with
//! exponential backoff and jitter ([`ClientConfig::reconnect_initial_delay`],
//! [`ClientConfig::reconnect_max_delay`],
//! [`ClientConfig::reconnect_max_attempts`]), redoes the handshake (after a
//! fresh TLS handshake, with TLS on) and
//! resubscribes every live subscription under its id, from the message after
//! the last one it received. The broker replays the messages of the outage
//! from its replay buffer, so the stream goes on with no duplicate and no
//! gap; if the outage outlasted the buffer (or the topic's epoch changed), the
//! stream carries one [`Discontinuity`] and then goes on. [`Client::shard`]
//! may differ afterwards. A new connection whose server leaves a
//! resubscription unanswered for [`ClientConfig::request_timeout`] is treated
//! as lost and replaced in turn, so no subscription waits on it for ever.
//!
//! What the application sees of an outage (and
//! [`Client::connection_events`] reports as it happens: the loss, each failed
//! attempt, the new connection, the resumed subscriptions and any gap):
//!
//! - Publishes awaiting their acknowledgement fail with
//!   [`Error::ConnectionLost`]; the broker may or may not have sequenced them,
//!   and the caller decides whether to publish again. Fire-and-forget
//!   publishes ([`Client::publish_unacked`]) still queued for the lost
//!   connection are dropped without an error; subscribers see the gap.
//! - Subscribes and unsubscribes waiting for their answer fail with
//!   [`Error::ConnectionLost`] (an unsubscribe succeeds: the subscription is
//!   gone with the connection); pings and webhook requests fail the same way.
//! - Calls made while the client reconnects wait for the new connection, up
//!   to [`ClientConfig::request_timeout`], then fail with
//!   [`Error::ConnectionLost`].
//! - The client ends for good (every call and stream then fails with
//!   [`Error::ConnectionLost`]) when reconnecting is off, the attempts run out,
//!   or the server refuses the new handshake; and with [`Error::Closed`] after
//!   [`Client::close`], which also stops reconnecting.
//!
//! # Publishing: acknowledged or fire-and-forget
//!
//! [`Client::publish`] and [`Client::start_publish`] ask the broker for an
//! acknowledgement carrying the message's sequence number (at most
//! [`ClientConfig::max_in_flight`] awaited at once). [`Client::publish_unacked`]
//! asks for none: about twice the throughput, the contract of a NATS core
//! publish, with refusals counted by [`Client::take_unacked_failures`] and
//! memory bounded by [`ClientConfig::send_buffer`]. Both keep call order on
//! the wire, so publishes to one topic from one client are sequenced in call
//! order whichever way they were sent.
//!
//! # Compression
//!
//! A publisher may compress its payloads with zstd: for the whole client
//! with [`ClientConfig::compression`], or for some publishes with
//! [`Client::compressing`]. [`Compression::zstd`] compresses payloads of
//! 1 KiB and more (level 3) and sends any payload zstd does not shrink as it
//! is. The broker forwards compressed payloads untouched, so the cost is the
//! publisher's, once, and every subscriber decompresses: a [`Message`]'s
//! payload is always what was published ([`Message::was_compressed`] says how
//! it travelled). A subscriber decompresses into at most
//! [`ClientConfig::max_decompressed`] bytes (16 MiB): a payload that claims
//! or yields more, or is not valid zstd, is one [`Error::Decompress`] in the
//! stream, which goes on with the next message.
//!
//! # TLS
//!
//! With [`ClientConfig::tls`] set, every connection (the first and each
//! reconnection) starts with a TLS handshake (TLS 1.3 or 1.2, rustls on the
//! `ring` provider) before `HELLO`. The broker's certificate is verified
//! against [`TlsOptions::roots`] (the platform's trust store, or a PEM CA
//! file) and for [`TlsOptions::server_name`], by default the host part of
//! the address given to [`Client::connect_with`] (an IP address then needs
//! an IP subject alternative name in the certificate). Set-up problems (an
//! unreadable or empty CA file, an invalid name) and failed handshakes are
//! [`Error::Tls`], with the detail in [`TlsError`].
//!
//! ```no_run
//! use corebus_client::{Client, ClientConfig, Error, TlsOptions, TlsRoots};
//!
//! # async fn run() -> Result<(), Error> {
//! let config = ClientConfig {
//!     tls: Some(TlsOptions {
//!         roots: TlsRoots::CaFile("/etc/corebus/ca.pem".into()),
//!         ..TlsOptions::default()
//!     }),
//!     ..ClientConfig::default()
//! };
//! // Verifies that the broker's certificate is valid for "bus.internal".
//! let client = Client::connect_with("bus.internal:7400", config).await?;
//! # client.close().await
//! # }
//! ```
//!
//! Heartbeats: the client sends `PING` when it has heard nothing for
//! [`ClientConfig::heartbeat_interval`] and drops the connection (then
//! reconnects) after [`ClientConfig::heartbeat_timeout`] of silence. It
//! answers the broker's `PING`s, which keeps the broker from closing an idle
//! connection.
//!
//! # Webhooks
//!
//! A client whose [`ClientConfig::credentials`] are a super-user's API key
//! can manage the broker's webhooks (HTTP callbacks for a topic's, or a topic
//! prefix's, messages): [`Client::add_webhook`] with a [`WebhookSpec`],
//! [`Client::list_webhooks`], [`Client::remove_webhook`] and
//! [`Client::rotate_webhook_secret`], each answered with [`Webhook`]s
//! ([`WebhookMatch`], [`WebhookSource`]). Other credentials get
//! [`Error::Server`] with [`ErrorCode::Forbidden`]; a command the broker
//! refuses for its content gets [`ErrorCode::InvalidRequest`]. Secrets are
//! redacted from `Debug` output.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), corebus_client::Error> {
//! # let data = std::env::temp_dir().join(format!("corebus-doc-{}", std::process::id()));
//! # let broker = corebus::embedded::Embedded::start(&[
//! #     "--listen", "127.0.0.1:0", "--shards", "1", "--data-dir", data.to_str().expect("UTF-8"),
//! # ]).expect("the broker starts");
//! # // The broker runs without authentication, on loopback: every client is a super-user.
//! # let client = corebus_client::Client::connect(broker.local_addr()).await?;
//! use corebus_client::{WebhookMatch, WebhookSpec};
//!
//! let spec = WebhookSpec::new("https://hooks.example/orders", "shop", "orders/", WebhookMatch::Prefix);
//! let added = client.add_webhook(&spec).await?;
//! // A new secret; the old one keeps signing until `previous_secret_expires_ms`.
//! let rotated = client.rotate_webhook_secret(&added.id, None).await?;
//! println!("old secret valid until {:?}", rotated.previous_secret_expires_ms);
//! for webhook in client.list_webhooks().await? {
//!     println!("{} -> {} ({:?})", webhook.topic, webhook.url, webhook.source);
//! }
//! client.remove_webhook(&added.id).await?;
//! # broker.stop();
//! # let _ = std::fs::remove_dir_all(&data);
//! # Ok(())
//! # }
//! ```
//!
//! # Example
//!
//! ```
//! use corebus_client::{Client, Error, Event};
//! use futures_util::StreamExt;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Error> {
//! # let broker = corebus_shards::start(corebus_shards::ServerConfig {
//! #     listen: "127.0.0.1:0".parse().expect("an address"),
//! #     shards: Some(1),
//! #     ..Default::default()
//! # }).expect("the broker starts");
//! # let addr = broker.local_addr().to_string();
//! let client = Client::builder().server(addr.as_str()).connect().await?;
//! let mut subscription = client.subscribe("app", "news").await?;
//!
//! // One publish, waiting for its sequence number.
//! let seq = client.publish("app", "news", "hello").await?;
//! assert_eq!(seq, 1);
//!
//! // Many publishes in flight at once; acks are awaited afterwards.
//! let mut pending = Vec::new();
//! for i in 0..100u32 {
//!     pending.push(client.start_publish("app", "news", i.to_be_bytes().to_vec()).await?);
//! }
//! for ack in pending {
//!     ack.await?;
//! }
//!
//! // A subscription is a Stream of events: messages, and discontinuities
//! // where any were lost.
//! let mut received = 0;
//! while let Some(event) = subscription.next().await {
//!     match event? {
//!         Event::Message(message) => {
//!             received += 1;
//!             assert_eq!(message.seq, received);
//!             if message.seq == 101 {
//!                 break;
//!             }
//!         }
//!         Event::Discontinuity(gap) => println!("lost: {gap}"),
//!     }
//! }
//! subscription.unsubscribe().await?;
//! client.close().await?;
//! # broker.stop();
//! # Ok(())
//! # }
//! ```
//!
//! # What the client does not do
//!
//! - Request/reply and message headers: corebus moves byte payloads on
//!   topics; put a reply topic or headers in the payload if you need them.
//! - Wildcard subscriptions and payload compression (not in the protocol
//!   yet).
//! - Queue groups or load balancing between subscribers: every live
//!   subscriber of a topic gets every message.
//! - Persistence beyond the broker's replay buffer: a subscriber that comes
//!   back after the buffer has moved on gets a [`Discontinuity`], not the
//!   messages.
//! - Resolving the servers again on reconnect: the addresses resolved when
//!   the client connected are the ones it reconnects to.

#![warn(missing_docs)]

mod addr;
mod builder;
mod cluster;
mod command;
mod compression;
mod config;
mod connection;
mod error;
mod events;
mod message;
mod publish;
mod queue;
mod subscription;
mod webhook;

use std::sync::Arc;
use std::time::Duration;

use tokio::time::{timeout, Instant};

pub use addr::ServerAddr;
pub use builder::{ClientBuilder, DEFAULT_SERVER};
pub use cluster::{ClusterMember, ClusterStatus, ControlNode, ControlStatus, TopicOwner};
pub use compression::{
    decompress, Compression, DecompressError, DEFAULT_MIN_SIZE, DEFAULT_ZSTD_LEVEL,
};
pub use config::{ClientConfig, Credentials, TlsOptions, TlsRoots, TopicAffinity};
pub use corebus_net::{ErrorCode, FrameError, Headers, NameError};
pub use error::{Error, TlsError};
pub use events::{ConnectionEvent, ConnectionEvents};
pub use message::{Discontinuity, Event, Message, ResumeFrom};
pub use publish::{PendingPublish, UnackedFailures};
pub use subscription::Subscription;
pub use webhook::{
    Webhook, WebhookDelivery, WebhookDisabled, WebhookDrop, WebhookMatch, WebhookSource,
    WebhookSpec,
};

use connection::Shared;

/// Keeps the connection open while any [`Client`], [`Subscription`] or
/// [`PendingPublish`] refers to it; the last one to go closes it.
pub(crate) struct Handle {
    pub(crate) shared: Arc<Shared>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.shared.release();
    }
}

/// A connection to a corebus broker.
///
/// Cheap to clone (the clones share the connection) and usable from many tasks
/// at once. The connection stays open while any clone, [`Subscription`] or
/// [`PendingPublish`] exists; dropping the last one flushes what was queued
/// and closes it, but only [`Client::close`] waits for in-flight publishes.
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
/// // Clones share the connection; each task gets its own.
/// let publisher = client.clone();
/// let task = tokio::spawn(async move { publisher.publish("app", "news", "from a task").await });
/// assert_eq!(task.await.expect("the task ran")?, 1);
/// client.close().await?;
/// # broker.stop();
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Client {
    handle: Arc<Handle>,
    /// How this handle's publishes are compressed.
    compression: Compression,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("shard", &self.shard())
            .field("shard_count", &self.shard_count())
            .field("max_frame", &self.max_frame())
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Connects to a broker with the default [`ClientConfig`].
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
    /// assert_eq!(client.shard_count(), 1);
    /// # broker.stop();
    /// # Ok(())
    /// # }
    /// ```
    pub async fn connect(addr: impl ServerAddr) -> Result<Client, Error> {
        Client::connect_with(addr, ClientConfig::default()).await
    }

    /// Connects to a broker: resolves `addr`, opens the TCP connection (with
    /// `TCP_NODELAY`), runs the TLS handshake if [`ClientConfig::tls`] is
    /// set, sends `HELLO` and waits for `WELCOME`, all within
    /// [`ClientConfig::connect_timeout`].
    ///
    /// `addr` is anything tokio resolves (`"host:port"`, `(host, port)`, a
    /// `SocketAddr`…; see [`ServerAddr`]); its host part is the default TLS
    /// server name. Reconnections reuse the addresses resolved here.
    ///
    /// Must be called inside a tokio runtime: it spawns the connection's
    /// reader and writer tasks.
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
    /// use std::time::Duration;
    /// use corebus_client::{Client, ClientConfig};
    ///
    /// let config = ClientConfig {
    ///     client_name: "billing".into(),
    ///     request_timeout: Duration::from_secs(2),
    ///     ..ClientConfig::default()
    /// };
    /// let client = Client::connect_with(addr, config).await?;
    /// client.ping().await?;
    /// # broker.stop();
    /// # Ok(())
    /// # }
    /// ```
    pub async fn connect_with(
        addr: impl ServerAddr,
        config: ClientConfig,
    ) -> Result<Client, Error> {
        let compression = config.compression;
        let shared = connection::connect(addr, config).await?;
        Ok(Client {
            handle: Arc::new(Handle { shared }),
            compression,
        })
    }

    /// A handle on the same connection whose publishes are compressed as
    /// `compression` says, whatever the client's
    /// [`ClientConfig::compression`]: for the topics that carry large
    /// payloads, say. Publishes of both handles share one connection and go
    /// out in call order; subscriptions are the connection's, not a
    /// handle's.
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
    /// use corebus_client::{Client, Compression};
    ///
    /// let client = Client::connect(addr).await?;
    /// let mut book = client.subscribe("market", "book").await?;
    /// let compressing = client.compressing(Compression::zstd());
    /// let snapshot = r#"{"bid":100.25,"ask":100.5,"depth":[1,2,3]}"#.repeat(100);
    /// compressing.publish("market", "book", snapshot.clone()).await?;
    /// // The subscriber reads it as published.
    /// let message = book.next_message().await.expect("open")?;
    /// assert_eq!(message.payload, snapshot.as_bytes());
    /// assert!(message.was_compressed());
    /// # broker.stop();
    /// # Ok(())
    /// # }
    /// ```
    pub fn compressing(&self, compression: Compression) -> Client {
        Client {
            handle: self.handle.clone(),
            compression,
        }
    }

    fn shared(&self) -> &Shared {
        &self.handle.shared
    }

    /// The broker shard serving the connection (from `WELCOME`). It may
    /// change when the client reconnects; while it reconnects, the last one.
    /// With [`ClientConfig::topic_affinity`], normally the topic's owner.
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
    /// assert!(client.shard() < client.shard_count());
    /// # broker.stop();
    /// # Ok(())
    /// # }
    /// ```
    pub fn shard(&self) -> u16 {
        self.shared().welcome().shard
    }

    /// How many shards the broker runs (from the latest `WELCOME`).
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
    /// assert_eq!(client.shard_count(), 1); // the broker above runs one shard
    /// # broker.stop();
    /// # Ok(())
    /// # }
    /// ```
    pub fn shard_count(&self) -> u16 {
        self.shared().welcome().shard_count
    }

    /// The largest frame length the broker accepts (from the latest
    /// `WELCOME`).
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
    /// let too_big = vec![0u8; client.max_frame() as usize];
    /// let refused = client.publish("app", "blobs", too_big).await;
    /// assert!(matches!(refused, Err(corebus_client::Error::PayloadTooLarge { .. })));
    /// # broker.stop();
    /// # Ok(())
    /// # }
    /// ```
    pub fn max_frame(&self) -> u32 {
        self.shared().welcome().max_frame
    }

    /// Sends `PING` and waits for the `PONG` (within
    /// [`ClientConfig::request_timeout`]); returns the round-trip time.
    /// While the client reconnects, this waits for the new connection first.
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
    /// let round_trip = client.ping().await?;
    /// assert!(round_trip < std::time::Duration::from_secs(10));
    /// # broker.stop();
    /// # Ok(())
    /// # }
    /// ```
    pub async fn ping(&self) -> Result<Duration, Error> {
        let shared = self.shared();
        let (nonce, answer) = shared.enqueue_ping().await?;
        let started = Instant::now();
        match timeout(shared.request_timeout(), answer).await {
            Ok(Ok(())) => Ok(started.elapsed()),
            Ok(Err(_)) => Err(shared.current_error()),
            Err(_) => {
                shared.forget_ping(nonce);
                Err(Error::Timeout)
            }
        }
    }

    /// What happens to the connection from now on: losses, reconnection
    /// attempts, resumed subscriptions, discontinuities, the client's end
    /// (see [`ConnectionEvent`]). Each call gets its own stream; a stream
    /// that reads too slowly skips events and says so
    /// ([`ConnectionEvent::Lagged`]) rather than holding them. A client
    /// that has ended gives a stream that is over.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), corebus_client::Error> {
    /// # let broker = corebus_shards::start(corebus_shards::ServerConfig {
    /// #     listen: "127.0.0.1:0".parse().expect("an address"),
    /// #     shards: Some(1),
    /// #     ..Default::default()
    /// # }).expect("the broker starts");
    /// use corebus_client::{Client, ConnectionEvent};
    /// use futures_util::StreamExt;
    ///
    /// let client = Client::connect(broker.local_addr()).await?;
    /// let mut events = client.connection_events();
    /// let watcher = tokio::spawn(async move {
    ///     let mut seen = Vec::new();
    ///     while let Some(event) = events.next().await {
    ///         eprintln!("corebus: {event}");
    ///         seen.push(event);
    ///     }
    ///     seen
    /// });
    /// client.close().await?;
    /// let seen = watcher.await.expect("the watcher ran");
    /// assert_eq!(seen, [ConnectionEvent::Ended { reason: "the client is closed".into() }]);
    /// # broker.stop();
    /// # Ok(())
    /// # }
    /// ```
    pub fn connection_events(&self) -> ConnectionEvents {
        self.shared().connection_events()
    }

    /// Closes the connection gracefully: refuses new requests, waits until
    /// every in-flight publish is acknowledged (or failed), flushes what is
    /// queued and shuts the socket down. Other clones then get
    /// [`Error::Closed`], and subscriptions end with it. Called while the
    /// client reconnects, it stops reconnecting.
    ///
    /// There is no time limit on waiting for acknowledgements; wrap the call in
    /// `tokio::time::timeout` for one. Returns `Ok(())` at once if the
    /// connection already ended (the pending calls have seen why), and
    /// [`Error::Io`] if the final flush failed.
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
    /// let ack = client.start_publish("app", "news", "last words").await?;
    /// let other = client.clone();
    /// client.close().await?; // waits for the acknowledgement
    /// assert_eq!(ack.await?, 1);
    /// assert!(matches!(other.ping().await, Err(corebus_client::Error::Closed)));
    /// # broker.stop();
    /// # Ok(())
    /// # }
    /// ```
    pub async fn close(self) -> Result<(), Error> {
        let shared = &self.handle.shared;
        if !shared.begin_close() {
            return Ok(());
        }
        // All permits free = no publish awaiting its ack. The semaphore is never
        // closed, so this only fails if that invariant is broken.
        let all = shared
            .permits
            .acquire_many(shared.max_in_flight)
            .await
            .map_err(|_| Error::Closed)?;
        drop(all);
        shared.finish_close().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}
    fn assert_send_unpin<T: Send + Unpin + 'static>() {}

    #[test]
    fn handles_are_thread_safe() {
        assert_send_sync::<Client>();
        assert_send_unpin::<PendingPublish>();
        assert_send_unpin::<Subscription>();
        assert_send_sync::<Error>();
    }
}
