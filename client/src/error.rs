//! The client's error type.

use std::path::PathBuf;

use corebus_net::{ErrorCode, ErrorFrame, FrameError, NameError};

use crate::Discontinuity;

/// Everything that can go wrong in a client call.
///
/// [`Error::Closed`] and, once the client has stopped reconnecting,
/// [`Error::ConnectionLost`] describe the client as a whole and are returned by
/// every later call on any clone of the [`Client`](crate::Client). While the
/// client reconnects, `ConnectionLost` concerns only the calls that were in
/// flight (or that waited longer than the request timeout for the new
/// connection). The others concern one call only and leave the connection
/// usable.
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
/// use corebus_client::Error;
///
/// let client = corebus_client::Client::connect(addr).await?;
/// // Checked locally: nothing is sent.
/// match client.publish("app", "", "x").await {
///     Err(Error::InvalidName(reason)) => eprintln!("bad topic: {reason}"),
///     other => panic!("expected InvalidName, got {other:?}"),
/// }
/// client.clone().close().await?;
/// // Every later call on any clone says why the client is over.
/// assert!(matches!(client.ping().await, Err(Error::Closed)));
/// # broker.stop();
/// # Ok(())
/// # }
/// ```
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The TCP connection could not be opened (or the address did not resolve).
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// The address (or addresses) tried.
        addr: String,
        /// Why the connection failed.
        source: std::io::Error,
    },
    /// An I/O error outside of connecting (setting socket options, the final
    /// flush in [`Client::close`](crate::Client::close)).
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// The server answered this request with a (non-fatal) `ERROR` frame.
    #[error("server refused request: {}: {message}", code_text(*.code, *.raw_code))]
    Server {
        /// The typed error code, or `None` for a code this client does not know.
        code: Option<ErrorCode>,
        /// The code as sent on the wire.
        raw_code: u16,
        /// The server's explanation.
        message: String,
    },
    /// The handshake failed: no `WELCOME`, an unsupported protocol version, or
    /// an `ERROR` from the server instead of `WELCOME`.
    #[error("handshake failed: {0}")]
    Handshake(String),
    /// TLS could not be set up from
    /// [`ClientConfig::tls`](crate::ClientConfig::tls), or the TLS handshake
    /// failed (see [`TlsError`]).
    #[error("TLS: {0}")]
    Tls(#[from] TlsError),
    /// A namespace or topic name breaks the naming rules; checked locally, so
    /// nothing was sent.
    #[error("invalid name: {0}")]
    InvalidName(NameError),
    /// The payload does not fit in one frame of the server's `max_frame`;
    /// checked locally, so nothing was sent.
    #[error(
        "payload of {len} bytes is too large: at most {max} bytes fit in one frame for this topic"
    )]
    PayloadTooLarge {
        /// The payload's length.
        len: usize,
        /// The largest payload that fits for this namespace and topic.
        max: usize,
    },
    /// A publish's headers are longer than a message's headers block
    /// holds; nothing was sent.
    #[error("headers of {len} bytes are too large: a message's headers hold at most {max} bytes")]
    HeadersTooLarge {
        /// The headers' encoded length.
        len: usize,
        /// The most a headers block holds.
        max: usize,
    },
    /// The server sent bytes that do not decode as a frame; the connection was
    /// closed.
    #[error("protocol error: {0}")]
    Protocol(FrameError),
    /// The connection closed or failed while the request was pending (or
    /// before the call); the text says why.
    ///
    /// For a publish, the broker may or may not have sequenced the message:
    /// it was on its way when the connection dropped. Publishing it again may
    /// publish it twice; the caller decides.
    #[error("connection lost: {0}")]
    ConnectionLost(String),
    /// Not a failure of the call: messages of the subscription were lost (see
    /// [`Discontinuity`]). Only
    /// [`Subscription::next_message`](crate::Subscription::next_message)
    /// returns it, and the subscription goes on afterwards.
    #[error("{0}")]
    Discontinuity(Discontinuity),
    /// A message arrived compressed and could not be decompressed: not valid
    /// zstd, or larger than
    /// [`ClientConfig::max_decompressed`](crate::ClientConfig::max_decompressed)
    /// once decompressed. The message is skipped (its sequence number is the
    /// subscription's position from now on) and the subscription goes on, as
    /// after a [`Discontinuity`].
    #[error("message {seq} of epoch {epoch:x} cannot be read: {source}")]
    Decompress {
        /// The message's epoch.
        epoch: u64,
        /// Its sequence number.
        seq: u64,
        /// What is wrong with it.
        source: crate::DecompressError,
    },
    /// The server's answer to a request could not be understood: the result
    /// of a `WEBHOOK_REPLY` that is not valid JSON, or not the object the
    /// command calls for (a missing field, a field of the wrong type, an
    /// unknown `match` or `source`). The broker may well have carried the
    /// command out; the connection stays usable. The reply itself is not kept,
    /// since it may hold a webhook's secret.
    #[error("malformed reply to {request}: {reason}")]
    MalformedReply {
        /// The request answered, e.g. `webhook add`.
        request: &'static str,
        /// What is wrong with the reply (field names, never secret values).
        reason: String,
    },
    /// The server did not answer within
    /// [`ClientConfig::request_timeout`](crate::ClientConfig::request_timeout).
    #[error("timed out waiting for the server")]
    Timeout,
    /// The client was closed with [`Client::close`](crate::Client::close) (or
    /// every handle to it was dropped).
    #[error("the client is closed")]
    Closed,
}

/// Why TLS failed; carried by [`Error::Tls`].
///
/// A separate enum, against the one-error-enum habit, so that callers can
/// handle every TLS failure with one `Error::Tls(_)` arm and look inside
/// only when they care which.
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
/// use corebus_client::{Client, ClientConfig, Error, TlsError, TlsOptions};
///
/// // This broker does not speak TLS: the handshake fails.
/// let config = ClientConfig { tls: Some(TlsOptions::default()), ..ClientConfig::default() };
/// match Client::connect_with(addr, config).await {
///     Err(Error::Tls(TlsError::Handshake { peer, .. })) => assert_eq!(peer, addr.to_string()),
///     Err(Error::Tls(TlsError::NoSystemRoots { .. })) => {} // a machine without a trust store
///     other => panic!("expected a TLS error, got {other:?}"),
/// }
/// # broker.stop();
/// # Ok(())
/// # }
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// The CA file given as [`TlsRoots::CaFile`](crate::TlsRoots::CaFile)
    /// could not be opened or read.
    #[error("cannot read CA file {}: {source}", path.display())]
    CaFileUnreadable {
        /// The file.
        path: PathBuf,
        /// Why it could not be read.
        source: std::io::Error,
    },
    /// The CA file is not valid PEM, or a certificate in it is not one the
    /// client can use as a trust anchor.
    #[error("CA file {} is not usable: {reason}", path.display())]
    CaFileInvalid {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The CA file holds no `CERTIFICATE` block.
    #[error("CA file {} holds no PEM certificate", path.display())]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// The platform's trust store yielded no usable certificate.
    #[error("no usable certificate in the system trust store: {reason}")]
    NoSystemRoots {
        /// What loading the store reported.
        reason: String,
    },
    /// The server name (given, or taken from the address) is neither a valid
    /// DNS name nor an IP address.
    #[error("{name:?} is not a valid TLS server name")]
    InvalidServerName {
        /// The name.
        name: String,
    },
    /// The TLS handshake with the broker failed: its certificate is not
    /// trusted or not valid for the server name, the two sides share no
    /// protocol version or cipher suite, the peer does not speak TLS, or the
    /// connection broke during the handshake.
    #[error("TLS handshake with {peer} failed: {source}")]
    Handshake {
        /// The address connected to.
        peer: String,
        /// The reason: for a TLS-level failure, an `std::io::Error` of kind
        /// `InvalidData` wrapping rustls's error (`into_inner` and downcast
        /// to `rustls::Error` to inspect it).
        source: std::io::Error,
    },
}

impl Error {
    /// Maps a server `ERROR` frame to [`Error::Server`].
    pub(crate) fn from_frame(frame: &ErrorFrame) -> Error {
        Error::Server {
            code: frame.code(),
            raw_code: frame.code,
            message: frame.message.clone(),
        }
    }

    /// The server's error code, when this is an [`Error::Server`] with a known code.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), corebus_client::Error> {
    /// use corebus_client::{Client, ErrorCode};
    ///
    /// # let broker = corebus_shards::start(corebus_shards::ServerConfig {
    /// #     listen: "127.0.0.1:0".parse().expect("an address"),
    /// #     shards: Some(1),
    /// #     engine: corebus_shards::EngineConfig {
    /// #         max_subscriptions_per_conn: 1,
    /// #         ..Default::default()
    /// #     },
    /// #     ..Default::default()
    /// # }).expect("the broker starts");
    /// // A broker that allows one subscription per connection.
    /// let client = Client::connect(broker.local_addr()).await?;
    /// let _first = client.subscribe("app", "a").await?;
    /// let second = client.subscribe("app", "b").await.expect_err("over the limit");
    /// assert_eq!(second.server_code(), Some(ErrorCode::TooManySubscriptions));
    /// # broker.stop();
    /// # Ok(())
    /// # }
    /// ```
    pub fn server_code(&self) -> Option<ErrorCode> {
        match self {
            Error::Server { code, .. } => *code,
            _ => None,
        }
    }
}

/// `invalid_name (6)`, or `unknown code 99` for codes this version lacks.
pub(crate) fn code_text(code: Option<ErrorCode>, raw: u16) -> String {
    match code {
        Some(code) => code.to_string(),
        None => format!("unknown code {raw}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_error_display() {
        let frame = ErrorFrame::new(3, ErrorCode::InvalidName, false, "topic name is empty");
        assert_eq!(
            Error::from_frame(&frame).to_string(),
            "server refused request: invalid_name (6): topic name is empty"
        );
        let unknown = ErrorFrame {
            request_id: 3,
            code: 999,
            fatal: false,
            message: "new".into(),
        };
        assert_eq!(
            Error::from_frame(&unknown).to_string(),
            "server refused request: unknown code 999: new"
        );
    }

    #[test]
    fn tls_display() {
        let err = Error::from(TlsError::NoCertificate {
            path: "/tmp/ca.pem".into(),
        });
        assert_eq!(
            err.to_string(),
            "TLS: CA file /tmp/ca.pem holds no PEM certificate"
        );
    }

    #[test]
    fn connect_display() {
        let err = Error::Connect {
            addr: "127.0.0.1:7400".into(),
            source: std::io::Error::new(
                std::io::ErrorKind::ConnectionRefused,
                "Connection refused",
            ),
        };
        assert_eq!(
            err.to_string(),
            "cannot connect to 127.0.0.1:7400: Connection refused"
        );
    }
}
