//! Client settings.

use std::time::Duration;

/// Settings for [`Client::connect_with`](crate::Client::connect_with).
///
/// Start from [`ClientConfig::default`] and change the fields you need:
///
/// ```
/// use corebus_client::ClientConfig;
/// let config = ClientConfig {
///     client_name: "orders-service".into(),
///     max_in_flight: 256,
///     ..ClientConfig::default()
/// };
/// # assert_eq!(config.subscription_buffer, 65536);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// Name sent in `HELLO`, shown in the broker's logs. Cut to 255 bytes.
    pub client_name: String,
    /// Most publishes that may await their `PUB_ACK` at once on this
    /// connection; [`Client::start_publish`](crate::Client::start_publish)
    /// waits for room beyond it. Default 4096; 0 counts as 1.
    pub max_in_flight: usize,
    /// Messages buffered per subscription before the connection's reader waits
    /// for the subscriber to catch up. Default 65536; 0 counts as 1.
    pub subscription_buffer: usize,
    /// Limit on resolving, connecting and the handshake together. Default 5 s.
    pub connect_timeout: Duration,
    /// Limit on waiting for the answer to a subscribe, unsubscribe or ping.
    /// Default 10 s. Publishes have no timeout.
    pub request_timeout: Duration,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            client_name: "corebus-client".into(),
            max_in_flight: 4096,
            subscription_buffer: 65536,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
        }
    }
}
