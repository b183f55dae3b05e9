//! MQTT 5.0 properties: one struct for every packet, and the rules of which
//! property each packet may carry.

use bytes::{BufMut, Bytes, BytesMut};

use crate::decode::Reader;
use crate::encode::{put_binary, put_str, put_varint};
use crate::error::DecodeError;
use crate::packet::MqttStr;

/// The properties of a packet (MQTT 5.0, section 2.2.2). Each is `None`
/// (or empty) when absent; a packet carries only the ones its type allows,
/// each at most once, except user properties (any number, in order) and a
/// `PUBLISH`'s subscription identifiers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Properties {
    /// 0x01: 0 bytes, 1 UTF-8 text.
    pub payload_format: Option<u8>,
    /// 0x02: seconds.
    pub message_expiry: Option<u32>,
    /// 0x03.
    pub content_type: Option<MqttStr>,
    /// 0x08.
    pub response_topic: Option<MqttStr>,
    /// 0x09.
    pub correlation_data: Option<Bytes>,
    /// 0x0B: 1 to 268,435,455; several on a `PUBLISH` the server sends.
    pub subscription_ids: Vec<u32>,
    /// 0x11: seconds.
    pub session_expiry: Option<u32>,
    /// 0x12.
    pub assigned_client_id: Option<MqttStr>,
    /// 0x13: seconds.
    pub server_keep_alive: Option<u16>,
    /// 0x15.
    pub auth_method: Option<MqttStr>,
    /// 0x16.
    pub auth_data: Option<Bytes>,
    /// 0x17: 0 or 1.
    pub request_problem_info: Option<u8>,
    /// 0x18: seconds.
    pub will_delay: Option<u32>,
    /// 0x19: 0 or 1.
    pub request_response_info: Option<u8>,
    /// 0x1A.
    pub response_info: Option<MqttStr>,
    /// 0x1C.
    pub server_reference: Option<MqttStr>,
    /// 0x1F.
    pub reason_string: Option<MqttStr>,
    /// 0x21: never 0.
    pub receive_maximum: Option<u16>,
    /// 0x22.
    pub topic_alias_maximum: Option<u16>,
    /// 0x23: never 0.
    pub topic_alias: Option<u16>,
    /// 0x24: 0 or 1.
    pub maximum_qos: Option<u8>,
    /// 0x25: 0 or 1.
    pub retain_available: Option<u8>,
    /// 0x26: name and value pairs, in order.
    pub user: Vec<(MqttStr, MqttStr)>,
    /// 0x27: bytes, never 0.
    pub maximum_packet_size: Option<u32>,
    /// 0x28: 0 or 1.
    pub wildcard_available: Option<u8>,
    /// 0x29: 0 or 1.
    pub subscription_ids_available: Option<u8>,
    /// 0x2A: 0 or 1.
    pub shared_available: Option<u8>,
}

/// Which packet the properties belong to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Place {
    Connect,
    Will,
    ConnAck,
    Publish,
    Ack,
    Subscribe,
    SubAck,
    Unsubscribe,
    UnsubAck,
    Disconnect,
    Auth,
}

/// Whether property `id` may appear in `place` (MQTT 5.0, table 2-4).
fn allowed(id: u8, place: Place) -> bool {
    use Place::*;
    match id {
        0x01 | 0x02 | 0x03 | 0x08 | 0x09 => matches!(place, Publish | Will),
        0x0B => matches!(place, Publish | Subscribe),
        0x11 => matches!(place, Connect | ConnAck | Disconnect),
        0x12 | 0x13 | 0x1A | 0x24 | 0x25 | 0x28 | 0x29 | 0x2A => place == ConnAck,
        0x15 | 0x16 => matches!(place, Connect | ConnAck | Auth),
        0x17 | 0x19 => place == Connect,
        0x18 => place == Will,
        0x1C => matches!(place, ConnAck | Disconnect),
        0x1F => matches!(place, ConnAck | Ack | SubAck | UnsubAck | Disconnect | Auth),
        0x21 | 0x22 | 0x27 => matches!(place, Connect | ConnAck),
        0x23 => place == Publish,
        0x26 => true,
        _ => false,
    }
}

/// Sets `slot` once; a second value is a protocol error (MQTT-2.2.2-2).
fn once<T>(slot: &mut Option<T>, value: T) -> Result<(), DecodeError> {
    if slot.is_some() {
        return Err(DecodeError::Protocol("a property appears twice"));
    }
    *slot = Some(value);
    Ok(())
}

/// A byte property that must be 0 or 1.
fn flag(reader: &mut Reader) -> Result<u8, DecodeError> {
    match reader.u8()? {
        value @ (0 | 1) => Ok(value),
        _ => Err(DecodeError::Protocol(
            "a property that must be 0 or 1 is not",
        )),
    }
}

impl Properties {
    /// Whether no property is set.
    pub fn is_empty(&self) -> bool {
        *self == Properties::default()
    }

    /// Reads a property length and the properties of `place`.
    pub(crate) fn read(reader: &mut Reader, place: Place) -> Result<Properties, DecodeError> {
        let len = reader.varint()? as usize;
        let mut reader = reader.sub(len)?;
        let mut props = Properties::default();
        while !reader.is_empty() {
            let id = reader.varint()?;
            let id = u8::try_from(id).map_err(|_| DecodeError::Malformed("an unknown property"))?;
            if !allowed(id, place) {
                return Err(DecodeError::Malformed(
                    "a property this packet may not carry",
                ));
            }
            match id {
                0x01 => once(&mut props.payload_format, flag(&mut reader)?)?,
                0x02 => once(&mut props.message_expiry, reader.u32()?)?,
                0x03 => once(&mut props.content_type, reader.string()?)?,
                0x08 => once(&mut props.response_topic, reader.string()?)?,
                0x09 => once(&mut props.correlation_data, reader.binary()?)?,
                0x0B => {
                    let value = reader.varint()?;
                    if value == 0 {
                        return Err(DecodeError::Protocol("a subscription identifier of 0"));
                    }
                    if place == Place::Subscribe && !props.subscription_ids.is_empty() {
                        return Err(DecodeError::Protocol("a property appears twice"));
                    }
                    props.subscription_ids.push(value);
                }
                0x11 => once(&mut props.session_expiry, reader.u32()?)?,
                0x12 => once(&mut props.assigned_client_id, reader.string()?)?,
                0x13 => once(&mut props.server_keep_alive, reader.u16()?)?,
                0x15 => once(&mut props.auth_method, reader.string()?)?,
                0x16 => once(&mut props.auth_data, reader.binary()?)?,
                0x17 => once(&mut props.request_problem_info, flag(&mut reader)?)?,
                0x18 => once(&mut props.will_delay, reader.u32()?)?,
                0x19 => once(&mut props.request_response_info, flag(&mut reader)?)?,
                0x1A => once(&mut props.response_info, reader.string()?)?,
                0x1C => once(&mut props.server_reference, reader.string()?)?,
                0x1F => once(&mut props.reason_string, reader.string()?)?,
                0x21 => {
                    let value = reader.u16()?;
                    if value == 0 {
                        return Err(DecodeError::Protocol("a receive maximum of 0"));
                    }
                    once(&mut props.receive_maximum, value)?
                }
                0x22 => once(&mut props.topic_alias_maximum, reader.u16()?)?,
                0x23 => {
                    let value = reader.u16()?;
                    if value == 0 {
                        return Err(DecodeError::Protocol("a topic alias of 0"));
                    }
                    once(&mut props.topic_alias, value)?
                }
                0x24 => once(&mut props.maximum_qos, flag(&mut reader)?)?,
                0x25 => once(&mut props.retain_available, flag(&mut reader)?)?,
                0x26 => {
                    let name = reader.string()?;
                    let value = reader.string()?;
                    props.user.push((name, value));
                }
                0x27 => {
                    let value = reader.u32()?;
                    if value == 0 {
                        return Err(DecodeError::Protocol("a maximum packet size of 0"));
                    }
                    once(&mut props.maximum_packet_size, value)?
                }
                0x28 => once(&mut props.wildcard_available, flag(&mut reader)?)?,
                0x29 => once(&mut props.subscription_ids_available, flag(&mut reader)?)?,
                0x2A => once(&mut props.shared_available, flag(&mut reader)?)?,
                _ => return Err(DecodeError::Malformed("an unknown property")),
            }
        }
        Ok(props)
    }

    /// Writes the property length and the properties.
    pub(crate) fn write(&self, out: &mut BytesMut) {
        let mut body = BytesMut::new();
        let byte = |body: &mut BytesMut, id: u8, value: Option<u8>| {
            if let Some(value) = value {
                body.put_u8(id);
                body.put_u8(value);
            }
        };
        let text = |body: &mut BytesMut, id: u8, value: &Option<MqttStr>| {
            if let Some(value) = value {
                body.put_u8(id);
                put_str(body, value.as_bytes());
            }
        };
        let binary = |body: &mut BytesMut, id: u8, value: &Option<Bytes>| {
            if let Some(value) = value {
                body.put_u8(id);
                put_binary(body, value);
            }
        };
        let int = |body: &mut BytesMut, id: u8, value: Option<u32>| {
            if let Some(value) = value {
                body.put_u8(id);
                body.put_u32(value);
            }
        };
        let short = |body: &mut BytesMut, id: u8, value: Option<u16>| {
            if let Some(value) = value {
                body.put_u8(id);
                body.put_u16(value);
            }
        };
        byte(&mut body, 0x01, self.payload_format);
        int(&mut body, 0x02, self.message_expiry);
        text(&mut body, 0x03, &self.content_type);
        text(&mut body, 0x08, &self.response_topic);
        binary(&mut body, 0x09, &self.correlation_data);
        for id in &self.subscription_ids {
            body.put_u8(0x0B);
            put_varint(&mut body, *id);
        }
        int(&mut body, 0x11, self.session_expiry);
        text(&mut body, 0x12, &self.assigned_client_id);
        short(&mut body, 0x13, self.server_keep_alive);
        text(&mut body, 0x15, &self.auth_method);
        binary(&mut body, 0x16, &self.auth_data);
        byte(&mut body, 0x17, self.request_problem_info);
        int(&mut body, 0x18, self.will_delay);
        byte(&mut body, 0x19, self.request_response_info);
        text(&mut body, 0x1A, &self.response_info);
        text(&mut body, 0x1C, &self.server_reference);
        text(&mut body, 0x1F, &self.reason_string);
        short(&mut body, 0x21, self.receive_maximum);
        short(&mut body, 0x22, self.topic_alias_maximum);
        short(&mut body, 0x23, self.topic_alias);
        byte(&mut body, 0x24, self.maximum_qos);
        byte(&mut body, 0x25, self.retain_available);
        for (name, value) in &self.user {
            body.put_u8(0x26);
            put_str(&mut body, name.as_bytes());
            put_str(&mut body, value.as_bytes());
        }
        int(&mut body, 0x27, self.maximum_packet_size);
        byte(&mut body, 0x28, self.wildcard_available);
        byte(&mut body, 0x29, self.subscription_ids_available);
        byte(&mut body, 0x2A, self.shared_available);
        put_varint(out, body.len() as u32);
        out.extend_from_slice(&body);
    }
}
