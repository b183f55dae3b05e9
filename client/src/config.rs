//! Client settings.

use std::path::PathBuf;
use std::time::Duration;

/// Settings for [`Client::connect_with`](crate::Client::connect_with).
///
/// Start from [`ClientConfig::default`] and change the fields you need:
///
/// ```
/// use std::time::Duration;
/// use corebus_client::ClientConfig;
/// let config = ClientConfig {
///     client_name: "orders-service".into(),
///     max_in_flight: 256,
///     reconnect_max_delay: Duration::from_secs(1),
///     ..ClientConfig::default()
/// };
/// # assert_eq!(config.subscription_buffer, 65536);
/// # assert!(config.reconnect);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// Name sent in `HELLO`, shown in the broker's logs. Cut to 255 bytes.
    pub client_name: String,
    /// An API key or a token, sent in `HELLO` (and only there) on every
    /// connect and reconnect. `None` for a broker without authentication.
    pub credentials: Option<Credentials>,
    /// Most publishes that may await their `PUB_ACK` at once on this
    /// connection; [`Client::start_publish`](crate::Client::start_publish)
    /// waits for room beyond it. Default 4096; 0 counts as 1.
    pub max_in_flight: usize,
    /// Bytes of encoded frames queued for the socket beyond which
    /// [`Client::publish_unacked`](crate::Client::publish_unacked) waits for
    /// the connection's writer to take them (acknowledged publishes are
    /// bounded by [`max_in_flight`](Self::max_in_flight) instead). Up to about
    /// twice this much may be buffered: one batch being written, one filling;
    /// and the two buffers, up to twice this size each, are kept for reuse.
    /// Default 4 MiB; 0 counts as 1.
    pub send_buffer: usize,
    /// Messages buffered per subscription before the connection's reader waits
    /// for the subscriber to catch up. Default 65536; 0 counts as 1.
    pub subscription_buffer: usize,
    /// Limit on resolving, connecting and the handshake together; it applies
    /// to the first connection and to each reconnection attempt. Default 5 s.
    pub connect_timeout: Duration,
    /// Limit on waiting for the answer to a subscribe, unsubscribe, ping or
    /// webhook request, and on waiting for a reconnection before a call fails. Default 10 s.
    /// After a reconnection, the resubscriptions too: a connection on which
    /// any is still unanswered after this long is dropped and replaced, as a
    /// lost one is. Publish acknowledgements have no timeout.
    pub request_timeout: Duration,
    /// Reconnect when the connection is lost (end of stream, I/O error,
    /// heartbeat timeout, fatal `ERROR` from the server) and resume every
    /// subscription where it stopped. Default `true`. With `false`, a lost
    /// connection ends the client: pending and later calls fail with
    /// [`Error::ConnectionLost`](crate::Error::ConnectionLost) and
    /// subscriptions end with it.
    pub reconnect: bool,
    /// Delay before the first reconnection attempt; it doubles after each
    /// failed attempt up to [`reconnect_max_delay`](Self::reconnect_max_delay).
    /// Each delay is drawn at random between half of it and all of it, so that
    /// many clients cut off at once do not return at once. Default 50 ms.
    pub reconnect_initial_delay: Duration,
    /// Longest delay between reconnection attempts. Default 5 s.
    pub reconnect_max_delay: Duration,
    /// Failed reconnection attempts in a row after which the client gives up
    /// and ends as with `reconnect: false`; `None` (the default) retries
    /// forever, until [`Client::close`](crate::Client::close). A handshake the
    /// server refuses (an `ERROR` instead of `WELCOME`, another protocol
    /// version), or a TLS handshake that rustls rejects (a certificate not
    /// trusted or not valid for the name, a peer not speaking TLS), ends the
    /// client at once.
    pub reconnect_max_attempts: Option<u32>,
    /// The client sends `PING` when it has heard nothing from the server for
    /// this long. Default 15 s (at least 1 ms is used).
    pub heartbeat_interval: Duration,
    /// The connection counts as dead, and is dropped (then reconnected), when
    /// nothing was heard from the server for this long. Default 45 s. Time
    /// the client itself spends not reading, because a subscriber's buffer is
    /// full, does not count.
    pub heartbeat_timeout: Duration,
    /// Speak TLS to the broker (on every connect and reconnect, each with a
    /// full handshake); `None` (the default) for plaintext TCP. The broker's
    /// port must be configured the same way: neither side falls back to the
    /// other.
    pub tls: Option<TlsOptions>,
    /// Land this connection on the broker shard that owns this topic, so
    /// that its publishes and deliveries skip the hop between shards. For a
    /// connection that uses one topic (or mostly one). `None` (the default):
    /// wherever the broker's listeners put it.
    ///
    /// The broker steers a new connection by its source port (half the port,
    /// modulo its shard count). The client learns the shard count from the first
    /// `WELCOME`; if it landed elsewhere, it connects again from a source
    /// port that leads to the owner (a few tries, for ports in use) and keeps
    /// the first connection that lands there, or else the first one it got:
    /// affinity never fails a connect. Reconnections do the same. Each of
    /// these connections has its own [`connect_timeout`](Self::connect_timeout).
    /// [`Client::shard`](crate::Client::shard) tells where it landed.
    pub topic_affinity: Option<TopicAffinity>,
    /// Whether this client compresses the payloads it publishes (zstd, from
    /// a size threshold on); [`Compression::Off`](crate::Compression::Off) by
    /// default. [`Client::compressing`](crate::Client::compressing) sets it
    /// for some publishes only. Subscribers need no setting: every corebus
    /// client decompresses what it receives.
    pub compression: crate::Compression,
    /// Most bytes a received compressed payload may decompress to; one that
    /// claims or yields more is reported as
    /// [`Error::Decompress`](crate::Error::Decompress) instead of allocated.
    /// Default 16 MiB (16 times the broker's default frame limit).
    pub max_decompressed: usize,
    /// The local address to connect from (every connect and reconnect);
    /// `None` (the default) lets the system choose. Each local address
    /// offers about 28,000 source ports (Linux's default ephemeral range),
    /// so a host that opens more connections than that to one broker
    /// spreads them over several addresses (on loopback: any of
    /// 127.0.0.0/8). On Linux the port is chosen at connect, for the
    /// address and the broker together (`IP_BIND_ADDRESS_NO_PORT`), so
    /// these connections take no ports from other clients of the host. An
    /// address of the other family than the broker's is an error at
    /// connect.
    pub local_address: Option<std::net::IpAddr>,
}

/// The topic a connection should sit next to; see
/// [`ClientConfig::topic_affinity`].
///
/// ```
/// use corebus_client::{ClientConfig, TopicAffinity};
/// let config = ClientConfig {
///     topic_affinity: Some(TopicAffinity::new("prices", "eur.usd")),
///     ..ClientConfig::default()
/// };
/// # assert_eq!(config.topic_affinity.unwrap().topic, "eur.usd");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicAffinity {
    /// The topic's namespace.
    pub namespace: String,
    /// The topic.
    pub topic: String,
}

impl TopicAffinity {
    /// The topic `topic` of namespace `namespace`.
    ///
    /// ```
    /// let affinity = corebus_client::TopicAffinity::new("prices", "eur.usd");
    /// assert_eq!((affinity.namespace.as_str(), affinity.topic.as_str()), ("prices", "eur.usd"));
    /// ```
    pub fn new(namespace: impl Into<String>, topic: impl Into<String>) -> TopicAffinity {
        TopicAffinity {
            namespace: namespace.into(),
            topic: topic.into(),
        }
    }

    /// The shard that owns the topic in a broker of `shard_count` shards (the
    /// broker's rendezvous hash).
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
    /// use corebus_client::{Client, ClientConfig, TopicAffinity};
    ///
    /// let affinity = TopicAffinity::new("prices", "eur.usd");
    /// assert_eq!(affinity.owner(1), 0);
    /// assert!(affinity.owner(8) < 8);
    /// let config = ClientConfig { topic_affinity: Some(affinity.clone()), ..ClientConfig::default() };
    /// let client = Client::connect_with(addr, config).await?;
    /// assert_eq!(client.shard(), affinity.owner(client.shard_count()));
    /// # broker.stop();
    /// # Ok(())
    /// # }
    /// ```
    pub fn owner(&self, shard_count: u16) -> u16 {
        let hash = corebus_net::key_hash(self.namespace.as_bytes(), self.topic.as_bytes());
        corebus_net::routing::owner_of_hash(hash, u64::from(shard_count.max(1))) as u16
    }
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            client_name: "corebus-client".into(),
            credentials: None,
            max_in_flight: 4096,
            send_buffer: 4 * 1024 * 1024,
            subscription_buffer: 65536,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            reconnect: true,
            reconnect_initial_delay: Duration::from_millis(50),
            reconnect_max_delay: Duration::from_secs(5),
            reconnect_max_attempts: None,
            heartbeat_interval: Duration::from_secs(15),
            heartbeat_timeout: Duration::from_secs(45),
            tls: None,
            topic_affinity: None,
            compression: crate::Compression::Off,
            max_decompressed: 16 << 20,
            local_address: None,
        }
    }
}

/// A secret that authenticates a client: an API key or a signed token.
///
/// Its `Debug` output is redacted, so a logged [`ClientConfig`] never leaks it.
///
/// ```
/// use corebus_client::{ClientConfig, Credentials};
///
/// let config = ClientConfig {
///     credentials: Some(Credentials::new("cbk_live_0123456789abcdef")),
///     ..ClientConfig::default()
/// };
/// assert!(!format!("{config:?}").contains("cbk_live"), "redacted");
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials(String);

impl Credentials {
    /// Wraps an API key or a token.
    ///
    /// ```
    /// let key = std::env::var("COREBUS_KEY").unwrap_or_else(|_| "cbk_example".into());
    /// let credentials = corebus_client::Credentials::new(key);
    /// assert_eq!(format!("{credentials:?}"), "Credentials(<redacted>)");
    /// ```
    pub fn new(secret: impl Into<String>) -> Credentials {
        Credentials(secret.into())
    }

    /// The secret itself.
    ///
    /// ```
    /// let credentials = corebus_client::Credentials::new("cbk_example");
    /// assert_eq!(credentials.expose(), "cbk_example");
    /// ```
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credentials(<redacted>)")
    }
}

/// How the client speaks TLS to the broker: which certificates it trusts and
/// which name the broker's certificate must carry.
///
/// The client offers TLS 1.3 and TLS 1.2 (nothing older), with rustls's
/// default cipher suites on the `ring` provider, and verifies the broker's
/// certificate chain and name; there is no way to turn verification off.
///
/// ```
/// use corebus_client::{ClientConfig, TlsOptions, TlsRoots};
/// // Trust a private CA, and check the broker's certificate for "bus.internal"
/// // whatever address the client dials.
/// let config = ClientConfig {
///     tls: Some(TlsOptions {
///         roots: TlsRoots::CaFile("/etc/corebus/ca.pem".into()),
///         server_name: Some("bus.internal".into()),
///     }),
///     ..ClientConfig::default()
/// };
/// # assert!(config.tls.is_some());
/// // The platform's trust store, and the host part of the connect address.
/// let public = ClientConfig {
///     tls: Some(TlsOptions::default()),
///     ..ClientConfig::default()
/// };
/// # assert_eq!(public.tls, Some(TlsOptions { roots: TlsRoots::System, server_name: None }));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TlsOptions {
    /// The certificates that may vouch for the broker's certificate.
    /// Default: [`TlsRoots::System`].
    pub roots: TlsRoots,
    /// The name the broker's certificate must be valid for (and the SNI name
    /// sent). `None` (the default) takes the host part of the address given
    /// to [`Client::connect_with`](crate::Client::connect_with): a DNS name
    /// as it is, an IP address as an IP address (which the certificate must
    /// then list as an IP subject alternative name). For a list of socket
    /// addresses, which has no host part, the first address's IP is used.
    /// A name that is an IP address (`"10.0.0.7"`, `"::1"`) is also taken as
    /// one.
    pub server_name: Option<String>,
}

/// The trust anchors a TLS client checks the broker's certificate against.
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
/// use corebus_client::{Client, ClientConfig, Error, TlsError, TlsOptions, TlsRoots};
///
/// let config = ClientConfig {
///     tls: Some(TlsOptions {
///         roots: TlsRoots::CaFile("/nonexistent/ca.pem".into()),
///         ..TlsOptions::default()
///     }),
///     ..ClientConfig::default()
/// };
/// // The CA file is read when the client connects.
/// let refused = Client::connect_with(addr, config).await;
/// assert!(matches!(refused, Err(Error::Tls(TlsError::CaFileUnreadable { .. }))));
/// # broker.stop();
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum TlsRoots {
    /// The platform's trust store (on Linux, the OpenSSL locations, which
    /// `SSL_CERT_FILE` and `SSL_CERT_DIR` override), loaded when the client
    /// connects. Certificates in it that do not parse are skipped; connecting
    /// fails with [`TlsError::NoSystemRoots`](crate::TlsError::NoSystemRoots)
    /// if none is usable.
    #[default]
    System,
    /// The certificates in one PEM file (one or several `CERTIFICATE`
    /// blocks; other blocks are ignored), read when the client connects:
    /// typically a private CA, or the broker's self-signed certificate.
    CaFile(PathBuf),
}
