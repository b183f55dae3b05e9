//! Client settings.

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
    /// Messages buffered per subscription before the connection's reader waits
    /// for the subscriber to catch up. Default 65536; 0 counts as 1.
    pub subscription_buffer: usize,
    /// Limit on resolving, connecting and the handshake together; it applies
    /// to the first connection and to each reconnection attempt. Default 5 s.
    pub connect_timeout: Duration,
    /// Limit on waiting for the answer to a subscribe, unsubscribe or ping,
    /// and on waiting for a reconnection before a call fails. Default 10 s.
    /// Publish acknowledgements have no timeout.
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
    /// version) ends the client at once.
    pub reconnect_max_attempts: Option<u32>,
    /// The client sends `PING` when it has heard nothing from the server for
    /// this long. Default 15 s (at least 1 ms is used).
    pub heartbeat_interval: Duration,
    /// The connection counts as dead, and is dropped (then reconnected), when
    /// nothing was heard from the server for this long. Default 45 s. Time
    /// the client itself spends not reading, because a subscriber's buffer is
    /// full, does not count.
    pub heartbeat_timeout: Duration,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            client_name: "corebus-client".into(),
            credentials: None,
            max_in_flight: 4096,
            subscription_buffer: 65536,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            reconnect: true,
            reconnect_initial_delay: Duration::from_millis(50),
            reconnect_max_delay: Duration::from_secs(5),
            reconnect_max_attempts: None,
            heartbeat_interval: Duration::from_secs(15),
            heartbeat_timeout: Duration::from_secs(45),
        }
    }
}

/// A secret that authenticates a client: an API key or a signed token.
///
/// Its `Debug` output is redacted, so a logged [`ClientConfig`] never leaks it.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials(String);

impl Credentials {
    /// Wraps an API key or a token.
    pub fn new(secret: impl Into<String>) -> Credentials {
        Credentials(secret.into())
    }

    /// The secret itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credentials(<redacted>)")
    }
}
