//! Decoding errors and the numeric error codes carried by `ERROR` frames.

use crate::name::NameError;

/// Why a byte sequence is not a valid frame.
///
/// [`FrameError::breaks_framing`] tells whether the stream can still be read
/// (the length prefix was sound, only the body was wrong) or must be closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The length prefix announces more than the configured limit.
    #[error("frame length {len} exceeds the limit of {max} bytes")]
    TooLarge {
        /// Announced length (opcode and body).
        len: u32,
        /// The limit in force.
        max: u32,
    },
    /// The length prefix is zero, so there is not even an opcode.
    #[error("frame length is zero; a frame needs at least an opcode")]
    Empty,
    /// The opcode byte names no frame this protocol version knows.
    #[error("unknown opcode 0x{opcode:02x}")]
    UnknownOpcode {
        /// The offending opcode byte.
        opcode: u8,
    },
    /// A field runs past the end of the frame.
    #[error(
        "{frame} frame truncated at byte {offset}: field `{field}` needs {need} bytes, {have} left"
    )]
    Truncated {
        /// Frame kind being decoded.
        frame: &'static str,
        /// Field being read.
        field: &'static str,
        /// Offset of the field inside the frame body.
        offset: usize,
        /// Bytes the field needs.
        need: usize,
        /// Bytes left in the frame.
        have: usize,
    },
    /// A fixed-size frame carries bytes after its last field.
    #[error("{frame} frame has {extra} unexpected trailing bytes")]
    TrailingBytes {
        /// Frame kind being decoded.
        frame: &'static str,
        /// Number of bytes after the last field.
        extra: usize,
    },
    /// A flags byte has bits set that this version does not define.
    #[error("{frame} frame has unknown flag bits 0x{flags:02x}")]
    UnknownFlags {
        /// Frame kind being decoded.
        frame: &'static str,
        /// The offending flags byte.
        flags: u8,
    },
    /// `HELLO` does not start with the magic bytes `CBUS`.
    #[error("HELLO does not start with the magic bytes \"CBUS\" (got {got:02x?})")]
    BadMagic {
        /// The four bytes found instead.
        got: [u8; 4],
    },
    /// A text field is not valid UTF-8 (client or server name, error text).
    #[error("{frame} frame field `{field}` is not valid UTF-8")]
    NotUtf8 {
        /// Frame kind being decoded.
        frame: &'static str,
        /// Field being read.
        field: &'static str,
    },
    /// A client sent a frame that only servers send. Reported from the
    /// opcode alone: the body is not read.
    #[error("{frame} (opcode 0x{opcode:02x}) is sent by servers, not clients")]
    WrongDirection {
        /// Frame kind the opcode names.
        frame: &'static str,
        /// The opcode byte.
        opcode: u8,
    },
    /// A body's headers block (protocol version 2) is not well formed.
    #[error("{frame} frame has a malformed headers block: {reason}")]
    BadHeaders {
        /// Frame kind being decoded.
        frame: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A namespace or topic name breaks the naming rules.
    #[error("request {request_id}: {source}")]
    InvalidName {
        /// The request that carried the name.
        request_id: u32,
        /// Which rule was broken.
        #[source]
        source: NameError,
    },
}

impl FrameError {
    /// True when the byte stream cannot be resynchronised after this error, so
    /// the connection must be closed. Errors inside a well-delimited frame leave
    /// the stream readable.
    pub fn breaks_framing(&self) -> bool {
        matches!(self, FrameError::TooLarge { .. } | FrameError::Empty)
    }

    /// The request this error answers, when the frame got far enough to name one.
    pub fn request_id(&self) -> Option<u32> {
        match self {
            FrameError::InvalidName { request_id, .. } => Some(*request_id),
            _ => None,
        }
    }

    /// The wire error code that reports this error to the peer.
    pub fn code(&self) -> ErrorCode {
        match self {
            FrameError::TooLarge { .. } => ErrorCode::FrameTooLarge,
            FrameError::UnknownOpcode { .. } => ErrorCode::UnknownOpcode,
            FrameError::InvalidName { .. } => ErrorCode::InvalidName,
            FrameError::BadMagic { .. } => ErrorCode::HandshakeRequired,
            FrameError::WrongDirection { .. } => ErrorCode::WrongDirection,
            FrameError::Empty
            | FrameError::Truncated { .. }
            | FrameError::TrailingBytes { .. }
            | FrameError::UnknownFlags { .. }
            | FrameError::BadHeaders { .. }
            | FrameError::NotUtf8 { .. } => ErrorCode::MalformedFrame,
        }
    }
}

/// Numeric error codes carried by `ERROR` frames (a `u16` on the wire).
///
/// Codes are stable: a code keeps its number and meaning in every protocol
/// version. A receiver must accept codes it does not know ([`ErrorCode::from_u16`]
/// returns `None` for them) and treat them as generic failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum ErrorCode {
    /// The frame body does not parse (truncated field, bad flags, bad UTF-8).
    MalformedFrame = 1,
    /// The opcode is not defined in this protocol version.
    UnknownOpcode = 2,
    /// The length prefix exceeds the server's frame-size limit. Fatal.
    FrameTooLarge = 3,
    /// The client asked for a protocol version the server does not speak. Fatal.
    UnsupportedVersion = 4,
    /// The first frame was not a valid `HELLO`, or `HELLO` came twice. Fatal.
    HandshakeRequired = 5,
    /// A namespace or topic breaks the naming rules.
    InvalidName = 6,
    /// `SUBSCRIBE` reused a subscription id still active on this connection.
    DuplicateSubscription = 7,
    /// `UNSUBSCRIBE` named a subscription id not active on this connection.
    UnknownSubscription = 8,
    /// The connection holds the maximum number of subscriptions.
    TooManySubscriptions = 9,
    /// The connection's outbound queue overflowed its bound. Fatal.
    SlowConsumer = 10,
    /// The broker is shutting down. Fatal.
    ShuttingDown = 11,
    /// The broker failed internally; the request had no effect.
    Internal = 12,
    /// A frame only a server may send (or only a client) came the wrong way.
    WrongDirection = 13,
    /// Nothing was heard from the peer within the heartbeat timeout. Fatal.
    IdleTimeout = 14,
    /// Missing, unknown or invalid credentials at the handshake. Fatal.
    Unauthorized = 15,
    /// The credentials do not permit this request. The connection stays.
    Forbidden = 16,
    /// The connection's token expired. Fatal.
    TokenExpired = 17,
    /// The broker (or this shard) holds its maximum of connections. Fatal.
    TooManyConnections = 18,
    /// Too many publishes await their acknowledgement on this connection.
    TooManyInFlight = 19,
    /// No valid `HELLO` within the handshake deadline. Fatal.
    HandshakeTimeout = 20,
    /// A request was well-formed but refused for its content (a webhook
    /// command naming an unknown webhook, a URL outside the allow-list).
    /// The connection stays.
    InvalidRequest = 21,
    /// The node that owns the topic could not be reached, or the nodes of a
    /// cluster disagree for a moment about who owns it (a member joined or
    /// left): the request had no effect, except a publish whose link to the
    /// owner broke before its acknowledgement (the message says which). The
    /// connection stays; retry.
    OwnerUnavailable = 22,
    /// A cluster's control plane cannot carry out the command now: it has
    /// no leader, or this node is cut off from a majority of its voters.
    /// The command had no effect; the connection stays; retry (with the
    /// same request id).
    Unavailable = 23,
    /// Another connection took over this connection's client identity (an
    /// MQTT client id, which one connection holds at a time); fatal.
    TakenOver = 24,
}

impl ErrorCode {
    /// Every defined code, in numeric order.
    pub const ALL: [ErrorCode; 24] = [
        ErrorCode::MalformedFrame,
        ErrorCode::UnknownOpcode,
        ErrorCode::FrameTooLarge,
        ErrorCode::UnsupportedVersion,
        ErrorCode::HandshakeRequired,
        ErrorCode::InvalidName,
        ErrorCode::DuplicateSubscription,
        ErrorCode::UnknownSubscription,
        ErrorCode::TooManySubscriptions,
        ErrorCode::SlowConsumer,
        ErrorCode::ShuttingDown,
        ErrorCode::Internal,
        ErrorCode::WrongDirection,
        ErrorCode::IdleTimeout,
        ErrorCode::Unauthorized,
        ErrorCode::Forbidden,
        ErrorCode::TokenExpired,
        ErrorCode::TooManyConnections,
        ErrorCode::TooManyInFlight,
        ErrorCode::HandshakeTimeout,
        ErrorCode::InvalidRequest,
        ErrorCode::OwnerUnavailable,
        ErrorCode::Unavailable,
        ErrorCode::TakenOver,
    ];

    /// Maps a wire value to a known code.
    pub fn from_u16(value: u16) -> Option<ErrorCode> {
        ErrorCode::ALL
            .into_iter()
            .find(|code| *code as u16 == value)
    }

    /// A short stable name, as used in logs and by the CLI.
    pub fn name(self) -> &'static str {
        match self {
            ErrorCode::MalformedFrame => "malformed_frame",
            ErrorCode::UnknownOpcode => "unknown_opcode",
            ErrorCode::FrameTooLarge => "frame_too_large",
            ErrorCode::UnsupportedVersion => "unsupported_version",
            ErrorCode::HandshakeRequired => "handshake_required",
            ErrorCode::InvalidName => "invalid_name",
            ErrorCode::DuplicateSubscription => "duplicate_subscription",
            ErrorCode::UnknownSubscription => "unknown_subscription",
            ErrorCode::TooManySubscriptions => "too_many_subscriptions",
            ErrorCode::SlowConsumer => "slow_consumer",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::Internal => "internal",
            ErrorCode::WrongDirection => "wrong_direction",
            ErrorCode::IdleTimeout => "idle_timeout",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::TokenExpired => "token_expired",
            ErrorCode::TooManyConnections => "too_many_connections",
            ErrorCode::TooManyInFlight => "too_many_in_flight",
            ErrorCode::HandshakeTimeout => "handshake_timeout",
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::OwnerUnavailable => "owner_unavailable",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::TakenOver => "taken_over",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.name(), *self as u16)
    }
}
