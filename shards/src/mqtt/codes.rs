//! The codes MQTT answers with: 5.0 reason codes, 3.1.1 return codes, and
//! which one an engine error becomes.

use bytes::BytesMut;
use corebus_mqtt::{Ack, AckKind, Packet, Properties, QoS, Version};
use corebus_net::ErrorCode;

/// MQTT 5.0 reason codes used here.
pub(super) mod reason {
    pub const UNSPECIFIED: u8 = 0x80;
    pub const PROTOCOL_ERROR: u8 = 0x82;
    pub const IMPLEMENTATION_SPECIFIC: u8 = 0x83;
    pub const BAD_CREDENTIALS: u8 = 0x86;
    pub const NOT_AUTHORIZED: u8 = 0x87;
    pub const SERVER_UNAVAILABLE: u8 = 0x88;
    pub const SERVER_BUSY: u8 = 0x89;
    pub const SERVER_SHUTTING_DOWN: u8 = 0x8B;
    pub const BAD_AUTH_METHOD: u8 = 0x8C;
    pub const KEEP_ALIVE_TIMEOUT: u8 = 0x8D;
    pub const SESSION_TAKEN_OVER: u8 = 0x8E;
    pub const FILTER_INVALID: u8 = 0x8F;
    pub const TOPIC_INVALID: u8 = 0x90;
    pub const PACKET_ID_NOT_FOUND: u8 = 0x92;
    pub const RECEIVE_MAXIMUM_EXCEEDED: u8 = 0x93;
    pub const TOPIC_ALIAS_INVALID: u8 = 0x94;
    pub const PACKET_TOO_LARGE: u8 = 0x95;
    pub const QUOTA_EXCEEDED: u8 = 0x97;
    pub const SHARED_NOT_SUPPORTED: u8 = 0x9E;
    pub const MAX_CONNECT_TIME: u8 = 0xA0;
    pub const NO_SUBSCRIPTION: u8 = 0x11;
}

/// 3.1.1 `CONNACK` return codes.
pub(super) mod v3 {
    pub const BAD_VERSION: u8 = 0x01;
    pub const ID_REJECTED: u8 = 0x02;
    pub const UNAVAILABLE: u8 = 0x03;
    pub const BAD_CREDENTIALS: u8 = 0x04;
    pub const NOT_AUTHORIZED: u8 = 0x05;
    /// The `SUBACK` code of a refused filter.
    pub const SUB_FAILURE: u8 = 0x80;
}

/// An engine error's text as a 5.0 reason string: cut, at a character's
/// start, to the 65,535 bytes an MQTT string holds (the native `ERROR`
/// clips it the same way).
pub(super) fn reason_text(text: &str) -> Option<corebus_mqtt::MqttStr> {
    corebus_mqtt::MqttStr::new(&text[..text.floor_char_boundary(usize::from(u16::MAX))])
}

pub(super) fn ack_for(qos: QoS) -> AckKind {
    if qos == QoS::ExactlyOnce {
        AckKind::PubRec
    } else {
        AckKind::PubAck
    }
}

pub(super) fn encode_ack(
    version: Version,
    kind: AckKind,
    packet_id: u16,
    reason: u8,
    out: &mut BytesMut,
) {
    Packet::Ack(Ack {
        kind,
        packet_id,
        reason,
        properties: Properties::default(),
    })
    .encode(version, out);
}

/// The `CONNACK` code for an engine refusal of the `HELLO`.
pub(super) fn connect_code(code: Option<ErrorCode>, v5: bool) -> u8 {
    let (v3, v5code) = match code {
        Some(ErrorCode::Unauthorized | ErrorCode::TokenExpired) => {
            (v3::BAD_CREDENTIALS, reason::BAD_CREDENTIALS)
        }
        Some(ErrorCode::Forbidden) => (v3::NOT_AUTHORIZED, reason::NOT_AUTHORIZED),
        Some(ErrorCode::TooManyConnections) => (v3::UNAVAILABLE, reason::SERVER_BUSY),
        Some(ErrorCode::ShuttingDown) => (v3::UNAVAILABLE, reason::SERVER_UNAVAILABLE),
        _ => (v3::UNAVAILABLE, reason::UNSPECIFIED),
    };
    if v5 {
        v5code
    } else {
        v3
    }
}

/// The 5.0 reason code for a refused request.
pub(super) fn request_code(code: Option<ErrorCode>, v5: bool) -> u8 {
    if !v5 {
        return v3::SUB_FAILURE;
    }
    match code {
        Some(ErrorCode::Forbidden | ErrorCode::Unauthorized) => reason::NOT_AUTHORIZED,
        Some(ErrorCode::InvalidName) => reason::TOPIC_INVALID,
        Some(ErrorCode::TooManySubscriptions | ErrorCode::TooManyInFlight) => {
            reason::QUOTA_EXCEEDED
        }
        Some(ErrorCode::OwnerUnavailable | ErrorCode::Unavailable) => reason::SERVER_BUSY,
        _ => reason::IMPLEMENTATION_SPECIFIC,
    }
}

/// The 5.0 `DISCONNECT` reason for an engine error that ends a connection.
pub(super) fn disconnect_code(code: Option<ErrorCode>) -> u8 {
    match code {
        Some(ErrorCode::IdleTimeout) => reason::KEEP_ALIVE_TIMEOUT,
        Some(ErrorCode::TokenExpired) => reason::MAX_CONNECT_TIME,
        Some(ErrorCode::SlowConsumer) => reason::QUOTA_EXCEEDED,
        Some(ErrorCode::ShuttingDown) => reason::SERVER_SHUTTING_DOWN,
        Some(ErrorCode::FrameTooLarge) => reason::PACKET_TOO_LARGE,
        Some(ErrorCode::Forbidden | ErrorCode::Unauthorized) => reason::NOT_AUTHORIZED,
        Some(ErrorCode::TakenOver) => reason::SESSION_TAKEN_OVER,
        _ => reason::UNSPECIFIED,
    }
}
