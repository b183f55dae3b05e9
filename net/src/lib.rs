//! The corebus wire protocol as a sans-I/O codec.
//!
//! Role: turn bytes into [`Frame`]s and frames into bytes, exactly as
//! `docs/protocol.md` specifies, for both the broker and the client. Decoding is
//! two-phase, in the style of mini-redis: [`check`] looks at the length prefix
//! only (it allocates nothing and enforces the frame-size limit before any
//! buffer is grown), then [`decode`] parses one complete frame out of a
//! refcounted [`bytes::Bytes`], so payloads are sliced, never copied.
//!
//! Must not depend on: any async runtime, any socket or file I/O, or any other
//! corebus crate. It is a pure function of its input.

mod addr;
mod decode;
mod encode;
mod error;
mod frame;
mod headers;
mod name;
pub mod routing;

pub use addr::{get_socket_addr, put_socket_addr, socket_addr_len, AddrError};
pub use decode::{check, decode, decode_from_client, Check, KeyCache};
pub use encode::{
    encode_handoff_request, encode_message_header, encode_publish, encode_publish_as,
    encode_publish_body, encode_subscribe, encode_topic_message, MESSAGE_HEADER_LEN,
};
pub use error::{ErrorCode, FrameError};
pub use frame::{
    format_byte_is_valid, Body, ClusterReply, ClusterRequest, Discontinuity, Epoch, ErrorFrame,
    Frame, GoAway, Hello, Message, Opcode, PayloadFormat, PubAck, Publish, ReplayEnd, ResumePoint,
    SessionFrame, SubOk, Subscribe, SubscribeShared, Token, TokenRequest, TopicMessage, UnsubOk,
    Unsubscribe, WebhookReply, WebhookRequest, Welcome, FORMAT_QOS_MASK, FORMAT_RETAIN,
    FORMAT_ZSTD, PUBLISH_FLAG_ACK,
};
pub use headers::{strip_headers, Headers, FORMAT_HEADERS, MAX_HEADERS_LEN};
pub use name::{
    is_pattern, key_hash, literal_prefix, pattern_matches, validate_namespace, validate_topic,
    NameError, TopicKey,
};

/// The protocol version this crate speaks (sent in [`Hello`] and [`Welcome`]):
/// version 2 adds a message's headers ([`Headers`]) to version 1.
pub const PROTOCOL_VERSION: u16 = 2;

/// The oldest protocol version a broker still serves. A version 1
/// connection gets every message without its headers.
pub const MIN_PROTOCOL_VERSION: u16 = 1;

/// The four magic bytes that open every `HELLO` frame: ASCII `CBUS`.
pub const HELLO_MAGIC: [u8; 4] = *b"CBUS";

/// Size of the length prefix that starts every frame.
pub const LENGTH_PREFIX: usize = 4;

/// Default limit on a frame's length field (opcode and body): 1 MiB.
pub const DEFAULT_MAX_FRAME: u32 = 1 << 20;

/// Default limit on a frame's length field before the handshake succeeds:
/// 16 KiB, room for a `HELLO` with the longest token a broker accepts (8 KiB)
/// and the longest client name. A peer that has proved nothing gets no more.
pub const DEFAULT_MAX_HELLO_FRAME: u32 = 16 << 10;

/// Longest namespace, in bytes of UTF-8.
pub const MAX_NAMESPACE_LEN: usize = 128;

/// Longest topic name, in bytes of UTF-8.
pub const MAX_TOPIC_LEN: usize = 1024;

/// A topic's sequence number: the first message published to a topic is 1.
pub type Seq = u64;

#[cfg(test)]
mod tests {
    use super::*;

    /// The documented defaults (docs/protocol.md, docs/security.md).
    #[test]
    fn the_default_frame_limits_are_the_documented_ones() {
        assert_eq!(DEFAULT_MAX_FRAME, 1_048_576);
        assert_eq!(DEFAULT_MAX_HELLO_FRAME, 16_384);
        assert_eq!((MAX_NAMESPACE_LEN, MAX_TOPIC_LEN), (128, 1024));
    }
}
