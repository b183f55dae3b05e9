//! What can be wrong with the bytes of a packet.

/// Why bytes are not a valid packet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The remaining length runs over four bytes (MQTT-1.5.5).
    #[error("malformed packet: the remaining length runs over four bytes")]
    BadLength,
    /// The packet announces more bytes than the receiver accepts.
    #[error("packet too large: {len} bytes announced, at most {max} accepted")]
    TooLarge {
        /// The whole packet's length as announced.
        len: usize,
        /// The limit it was checked against.
        max: usize,
    },
    /// Packet type 0, or 15 (`AUTH`) on a 3.1.1 connection.
    #[error("malformed packet: packet type {0} is reserved")]
    ReservedType(u8),
    /// The fixed header's flags are not the ones the type requires
    /// (MQTT-2.2.2-2), or a `PUBLISH` says QoS 3.
    #[error("malformed packet: flags {flags:#06b} are not allowed on packet type {kind}")]
    BadFlags {
        /// The packet type.
        kind: u8,
        /// The low four bits of the first byte.
        flags: u8,
    },
    /// The bytes do not hold what the packet's type requires: a field cut
    /// short, bytes left over, a string that is not UTF-8, a reserved bit
    /// set, a property where it is not allowed or twice.
    #[error("malformed packet: {0}")]
    Malformed(&'static str),
    /// Well formed, but against the protocol (a `SUBSCRIBE` with no filter,
    /// a packet id of 0, a first packet that is not `CONNECT`).
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    /// A `CONNECT` for a protocol name or level this codec does not speak.
    #[error("unsupported protocol: {name:?} level {level}")]
    UnsupportedProtocol {
        /// The protocol name sent.
        name: String,
        /// The protocol level sent.
        level: u8,
    },
}

impl DecodeError {
    /// The MQTT 5.0 reason code a server closes the connection with (in
    /// `CONNACK` or `DISCONNECT`): 0x81 malformed packet, 0x82 protocol
    /// error, 0x84 unsupported protocol version, 0x95 packet too large.
    pub fn reason(&self) -> u8 {
        match self {
            DecodeError::TooLarge { .. } => 0x95,
            DecodeError::Protocol(_) => 0x82,
            DecodeError::UnsupportedProtocol { .. } => 0x84,
            DecodeError::BadLength
            | DecodeError::ReservedType(_)
            | DecodeError::BadFlags { .. }
            | DecodeError::Malformed(_) => 0x81,
        }
    }
}
