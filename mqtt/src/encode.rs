//! From packets to bytes.

use bytes::{BufMut, BytesMut};

use crate::packet::{AckKind, Packet, Publish, RetainHandling, Version};
use crate::props::Properties;

/// A variable byte integer (at most [`MAX_REMAINING_LENGTH`]).
///
/// [`MAX_REMAINING_LENGTH`]: crate::MAX_REMAINING_LENGTH
pub(crate) fn put_varint(out: &mut BytesMut, mut value: u32) {
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.put_u8(byte);
            return;
        }
        out.put_u8(byte | 0x80);
    }
}

/// Two length bytes and `bytes` (at most 65,535 of them: the types that
/// reach here hold no more).
pub(crate) fn put_binary(out: &mut BytesMut, bytes: &[u8]) {
    out.put_u16(bytes.len() as u16);
    out.extend_from_slice(bytes);
}

pub(crate) fn put_str(out: &mut BytesMut, bytes: &[u8]) {
    put_binary(out, bytes);
}

/// The fixed header: first byte and remaining length.
fn put_header(out: &mut BytesMut, first: u8, remaining: usize) {
    out.put_u8(first);
    put_varint(out, remaining as u32);
}

fn put_props(out: &mut BytesMut, version: Version, props: &Properties) {
    if version == Version::V5 {
        props.write(out);
    }
}

/// Writes `publish` up to its payload: fixed header (its remaining length
/// counts the payload), topic, packet id, properties. The caller sends
/// `publish.payload` after it, as a segment of its own.
pub fn encode_publish_head(out: &mut BytesMut, version: Version, publish: &Publish) {
    let mut head = BytesMut::new();
    put_str(&mut head, publish.topic.as_bytes());
    if let Some(id) = publish.packet_id {
        head.put_u16(id);
    }
    put_props(&mut head, version, &publish.properties);
    let first = (3 << 4)
        | (u8::from(publish.dup) << 3)
        | (publish.qos.bits() << 1)
        | u8::from(publish.retain);
    put_header(out, first, head.len() + publish.payload.len());
    out.extend_from_slice(&head);
}

impl Packet {
    /// Appends this packet as `version` writes it to `out`. Fields the
    /// version lacks (3.1.1: properties, reason codes) are left out.
    pub fn encode(&self, version: Version, out: &mut BytesMut) {
        let v5 = version == Version::V5;
        let mut body = BytesMut::new();
        let first = match self {
            Packet::Connect(connect) => {
                put_str(&mut body, b"MQTT");
                body.put_u8(connect.version.level());
                let mut flags = 0u8;
                if connect.username.is_some() {
                    flags |= 0x80;
                }
                if connect.password.is_some() {
                    flags |= 0x40;
                }
                if let Some(will) = &connect.will {
                    flags |= 0x04 | (will.qos.bits() << 3) | (u8::from(will.retain) << 5);
                }
                if connect.clean_start {
                    flags |= 0x02;
                }
                body.put_u8(flags);
                body.put_u16(connect.keep_alive);
                put_props(&mut body, connect.version, &connect.properties);
                put_str(&mut body, connect.client_id.as_bytes());
                if let Some(will) = &connect.will {
                    put_props(&mut body, connect.version, &will.properties);
                    put_str(&mut body, will.topic.as_bytes());
                    put_binary(&mut body, &will.payload);
                }
                if let Some(username) = &connect.username {
                    put_str(&mut body, username.as_bytes());
                }
                if let Some(password) = &connect.password {
                    put_binary(&mut body, password);
                }
                1 << 4
            }
            Packet::ConnAck(ack) => {
                body.put_u8(u8::from(ack.session_present));
                body.put_u8(ack.code);
                put_props(&mut body, version, &ack.properties);
                2 << 4
            }
            Packet::Publish(publish) => {
                encode_publish_head(out, version, publish);
                out.extend_from_slice(&publish.payload);
                return;
            }
            Packet::Ack(ack) => {
                body.put_u16(ack.packet_id);
                if v5 && (ack.reason != 0 || !ack.properties.is_empty()) {
                    body.put_u8(ack.reason);
                    if !ack.properties.is_empty() {
                        ack.properties.write(&mut body);
                    }
                }
                ack.kind.first_byte()
            }
            Packet::Subscribe(subscribe) => {
                body.put_u16(subscribe.packet_id);
                put_props(&mut body, version, &subscribe.properties);
                for sub in &subscribe.filters {
                    put_str(&mut body, sub.filter.as_bytes());
                    let mut options = sub.qos.bits();
                    if v5 {
                        options |= u8::from(sub.no_local) << 2;
                        options |= u8::from(sub.retain_as_published) << 3;
                        options |= match sub.retain_handling {
                            RetainHandling::OnSubscribe => 0,
                            RetainHandling::OnNewSubscribe => 1,
                            RetainHandling::Never => 2,
                        } << 4;
                    }
                    body.put_u8(options);
                }
                (8 << 4) | 0b0010
            }
            Packet::SubAck(ack) => {
                body.put_u16(ack.packet_id);
                put_props(&mut body, version, &ack.properties);
                body.extend_from_slice(&ack.codes);
                9 << 4
            }
            Packet::Unsubscribe(unsubscribe) => {
                body.put_u16(unsubscribe.packet_id);
                put_props(&mut body, version, &unsubscribe.properties);
                for filter in &unsubscribe.filters {
                    put_str(&mut body, filter.as_bytes());
                }
                (10 << 4) | 0b0010
            }
            Packet::UnsubAck(ack) => {
                body.put_u16(ack.packet_id);
                if v5 {
                    ack.properties.write(&mut body);
                    body.extend_from_slice(&ack.codes);
                }
                11 << 4
            }
            Packet::PingReq => 12 << 4,
            Packet::PingResp => 13 << 4,
            Packet::Disconnect(disconnect) | Packet::Auth(disconnect) => {
                if v5 && (disconnect.reason != 0 || !disconnect.properties.is_empty()) {
                    body.put_u8(disconnect.reason);
                    if !disconnect.properties.is_empty() {
                        disconnect.properties.write(&mut body);
                    }
                }
                if matches!(self, Packet::Auth(_)) {
                    15 << 4
                } else {
                    14 << 4
                }
            }
        };
        put_header(out, first, body.len());
        out.extend_from_slice(&body);
    }
}

impl AckKind {
    /// All four, for tests and tables.
    pub const ALL: [AckKind; 4] = [
        AckKind::PubAck,
        AckKind::PubRec,
        AckKind::PubRel,
        AckKind::PubComp,
    ];
}
