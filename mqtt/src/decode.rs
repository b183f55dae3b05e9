//! From bytes to packets: [`check`] before anything is allocated, then
//! [`decode_connect`] for a connection's first packet and [`decode`] for
//! every later one.

use bytes::{Buf, Bytes};

use crate::error::DecodeError;
use crate::packet::{
    Ack, AckKind, ConnAck, Connect, Disconnect, LastWill, MqttStr, Packet, Publish, QoS,
    RetainHandling, SubAck, Subscribe, Subscription, UnsubAck, Unsubscribe, Version,
};
use crate::props::{Place, Properties};

/// The largest remaining length four bytes can encode (MQTT-1.5.5).
pub const MAX_REMAINING_LENGTH: usize = 268_435_455;

/// What the bytes at the start of a buffer hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// One whole packet of `len` bytes (fixed header included).
    Complete {
        /// The packet's length.
        len: usize,
    },
    /// Not a whole packet yet.
    Incomplete {
        /// The whole packet's length, once the fixed header is complete.
        len: Option<usize>,
    },
}

/// Looks at the start of `buf`: one whole packet, not yet, or a packet
/// longer than `max_packet` bytes (refused before its bytes are read, so a
/// peer that announces 256 MB makes the reader hold nothing more).
pub fn check(buf: &[u8], max_packet: usize) -> Result<Check, DecodeError> {
    let mut value = 0usize;
    for i in 0..4 {
        let Some(&byte) = buf.get(1 + i) else {
            return Ok(Check::Incomplete { len: None });
        };
        // The minimum number of bytes (MQTT-1.5.5-1): no trailing zero group.
        if i > 0 && byte == 0 {
            return Err(DecodeError::BadLength);
        }
        value |= usize::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            let len = 2 + i + value;
            if len > max_packet {
                return Err(DecodeError::TooLarge {
                    len,
                    max: max_packet,
                });
            }
            return Ok(if buf.len() >= len {
                Check::Complete { len }
            } else {
                Check::Incomplete { len: Some(len) }
            });
        }
    }
    Err(DecodeError::BadLength)
}

/// Splits a whole packet into its first byte and its body.
fn split(mut packet: Bytes) -> Result<(u8, Bytes), DecodeError> {
    let len = match check(&packet, usize::MAX)? {
        Check::Complete { len } => len,
        Check::Incomplete { .. } => return Err(DecodeError::Malformed("a packet cut short")),
    };
    if len != packet.len() {
        return Err(DecodeError::Malformed("bytes after the packet"));
    }
    let first = packet[0];
    let header = 1
        + packet[1..]
            .iter()
            .position(|byte| byte & 0x80 == 0)
            .unwrap_or(0)
        + 1;
    packet.advance(header);
    Ok((first, packet))
}

/// A connection's first packet, which must be `CONNECT`; it says which
/// version the connection speaks.
pub fn decode_connect(packet: Bytes) -> Result<Connect, DecodeError> {
    let (first, body) = split(packet)?;
    if first >> 4 != 1 {
        return Err(DecodeError::Protocol("the first packet is not CONNECT"));
    }
    if first & 0x0f != 0 {
        return Err(DecodeError::BadFlags {
            kind: 1,
            flags: first & 0x0f,
        });
    }
    let mut reader = Reader::new(body);
    let name = reader.string()?;
    let level = reader.u8()?;
    let version = match (name.as_str(), level) {
        ("MQTT", 4) => Version::V311,
        ("MQTT", 5) => Version::V5,
        _ => {
            return Err(DecodeError::UnsupportedProtocol {
                name: name.as_str().to_owned(),
                level,
            })
        }
    };
    let flags = reader.u8()?;
    if flags & 0x01 != 0 {
        return Err(DecodeError::Malformed("the reserved connect flag is set"));
    }
    let (has_user, has_password) = (flags & 0x80 != 0, flags & 0x40 != 0);
    let will_retain = flags & 0x20 != 0;
    let will_qos =
        QoS::from_bits((flags >> 3) & 0x03).ok_or(DecodeError::Malformed("a will QoS of 3"))?;
    let has_will = flags & 0x04 != 0;
    if !has_will && (will_retain || will_qos != QoS::AtMostOnce) {
        return Err(DecodeError::Malformed("will QoS or retain without a will"));
    }
    if version == Version::V311 && has_password && !has_user {
        return Err(DecodeError::Malformed("a password without a user name"));
    }
    let keep_alive = reader.u16()?;
    let properties = match version {
        Version::V5 => Properties::read(&mut reader, Place::Connect)?,
        Version::V311 => Properties::default(),
    };
    let client_id = reader.string()?;
    let will = if has_will {
        let properties = match version {
            Version::V5 => Properties::read(&mut reader, Place::Will)?,
            Version::V311 => Properties::default(),
        };
        Some(LastWill {
            topic: reader.string()?,
            payload: reader.binary()?,
            qos: will_qos,
            retain: will_retain,
            properties,
        })
    } else {
        None
    };
    let username = has_user.then(|| reader.string()).transpose()?;
    let password = has_password.then(|| reader.binary()).transpose()?;
    reader.end()?;
    Ok(Connect {
        version,
        client_id,
        clean_start: flags & 0x02 != 0,
        keep_alive,
        username,
        password,
        will,
        properties,
    })
}

/// One whole packet (as [`check`] measured it) of a connection that speaks
/// `version`. A `CONNECT` here is a protocol error: only the first packet
/// may be one ([`decode_connect`]).
pub fn decode(packet: Bytes, version: Version) -> Result<Packet, DecodeError> {
    let (first, body) = split(packet)?;
    let (kind, flags) = (first >> 4, first & 0x0f);
    let v5 = version == Version::V5;
    let required = match kind {
        3 => flags,
        6 | 8 | 10 => 0b0010,
        _ => 0,
    };
    if flags != required {
        return Err(DecodeError::BadFlags { kind, flags });
    }
    let mut reader = Reader::new(body);
    let packet = match kind {
        1 => return Err(DecodeError::Protocol("a second CONNECT")),
        2 => {
            let ack_flags = reader.u8()?;
            if ack_flags & 0xfe != 0 {
                return Err(DecodeError::Malformed("reserved CONNACK flags are set"));
            }
            let code = reader.u8()?;
            let properties = read_props(&mut reader, v5, Place::ConnAck)?;
            Packet::ConnAck(ConnAck {
                session_present: ack_flags & 1 != 0,
                code,
                properties,
            })
        }
        3 => Packet::Publish(publish(&mut reader, flags, version)?),
        4..=7 => {
            let kind = AckKind::from_type(kind).ok_or(DecodeError::ReservedType(kind))?;
            let packet_id = packet_id(&mut reader)?;
            let (reason, properties) = if v5 {
                reason_and_props(&mut reader, Place::Ack)?
            } else {
                (0, Properties::default())
            };
            Packet::Ack(Ack {
                kind,
                packet_id,
                reason,
                properties,
            })
        }
        8 => {
            let packet_id = packet_id(&mut reader)?;
            let properties = read_props(&mut reader, v5, Place::Subscribe)?;
            let mut filters = Vec::new();
            while !reader.is_empty() {
                let filter = reader.string()?;
                filters.push(subscription(filter, reader.u8()?, version)?);
            }
            if filters.is_empty() {
                return Err(DecodeError::Protocol("a SUBSCRIBE without a topic filter"));
            }
            Packet::Subscribe(Subscribe {
                packet_id,
                properties,
                filters,
            })
        }
        9 => {
            let packet_id = packet_id(&mut reader)?;
            let properties = read_props(&mut reader, v5, Place::SubAck)?;
            Packet::SubAck(SubAck {
                packet_id,
                properties,
                codes: reader.rest().to_vec(),
            })
        }
        10 => {
            let packet_id = packet_id(&mut reader)?;
            let properties = read_props(&mut reader, v5, Place::Unsubscribe)?;
            let mut filters = Vec::new();
            while !reader.is_empty() {
                filters.push(reader.string()?);
            }
            if filters.is_empty() {
                return Err(DecodeError::Protocol(
                    "an UNSUBSCRIBE without a topic filter",
                ));
            }
            Packet::Unsubscribe(Unsubscribe {
                packet_id,
                properties,
                filters,
            })
        }
        11 => {
            let packet_id = packet_id(&mut reader)?;
            let properties = read_props(&mut reader, v5, Place::UnsubAck)?;
            let codes = if v5 {
                reader.rest().to_vec()
            } else {
                Vec::new()
            };
            Packet::UnsubAck(UnsubAck {
                packet_id,
                properties,
                codes,
            })
        }
        12 => Packet::PingReq,
        13 => Packet::PingResp,
        14 => {
            let (reason, properties) = if v5 {
                reason_and_props(&mut reader, Place::Disconnect)?
            } else {
                (0, Properties::default())
            };
            Packet::Disconnect(Disconnect { reason, properties })
        }
        15 if v5 => {
            let (reason, properties) = reason_and_props(&mut reader, Place::Auth)?;
            Packet::Auth(Disconnect { reason, properties })
        }
        _ => return Err(DecodeError::ReservedType(kind)),
    };
    reader.end()?;
    Ok(packet)
}

fn read_props(reader: &mut Reader, v5: bool, place: Place) -> Result<Properties, DecodeError> {
    if v5 {
        Properties::read(reader, place)
    } else {
        Ok(Properties::default())
    }
}

/// A packet identifier, which is never 0 (MQTT-2.2.1-3).
fn packet_id(reader: &mut Reader) -> Result<u16, DecodeError> {
    match reader.u16()? {
        0 => Err(DecodeError::Protocol("a packet identifier of 0")),
        id => Ok(id),
    }
}

/// 5.0's optional tail of acks, `DISCONNECT` and `AUTH`: no byte left means
/// reason 0 and no properties; one byte, a reason without properties.
fn reason_and_props(reader: &mut Reader, place: Place) -> Result<(u8, Properties), DecodeError> {
    if reader.is_empty() {
        return Ok((0, Properties::default()));
    }
    let reason = reader.u8()?;
    if reader.is_empty() {
        return Ok((reason, Properties::default()));
    }
    Ok((reason, Properties::read(reader, place)?))
}

fn publish(reader: &mut Reader, flags: u8, version: Version) -> Result<Publish, DecodeError> {
    let qos =
        QoS::from_bits((flags >> 1) & 0x03).ok_or(DecodeError::BadFlags { kind: 3, flags })?;
    let dup = flags & 0x08 != 0;
    if dup && qos == QoS::AtMostOnce {
        return Err(DecodeError::Malformed("DUP set on a QoS 0 PUBLISH"));
    }
    let topic = reader.string()?;
    if topic
        .as_bytes()
        .iter()
        .any(|byte| matches!(byte, b'+' | b'#'))
    {
        return Err(DecodeError::Protocol("a PUBLISH topic with a wildcard"));
    }
    let packet_id = if qos == QoS::AtMostOnce {
        None
    } else {
        Some(packet_id(reader)?)
    };
    let properties = read_props(reader, version == Version::V5, Place::Publish)?;
    // A client's PUBLISH carries no subscription identifier (MQTT-3.3.4-6)
    // and a server's may carry several: which side sent it is the caller's
    // to judge.
    if topic.is_empty() && properties.topic_alias.is_none() {
        return Err(DecodeError::Protocol("a PUBLISH without a topic"));
    }
    Ok(Publish {
        dup,
        qos,
        retain: flags & 0x01 != 0,
        topic,
        packet_id,
        properties,
        payload: reader.rest(),
    })
}

fn subscription(
    filter: MqttStr,
    options: u8,
    version: Version,
) -> Result<Subscription, DecodeError> {
    let reserved = match version {
        Version::V311 => 0xfc,
        Version::V5 => 0xc0,
    };
    if options & reserved != 0 {
        return Err(DecodeError::Malformed(
            "reserved subscription option bits are set",
        ));
    }
    let qos = QoS::from_bits(options & 0x03).ok_or(DecodeError::Malformed("a QoS of 3"))?;
    let retain_handling = match (options >> 4) & 0x03 {
        0 => RetainHandling::OnSubscribe,
        1 => RetainHandling::OnNewSubscribe,
        2 => RetainHandling::Never,
        _ => return Err(DecodeError::Protocol("a retain handling of 3")),
    };
    Ok(Subscription {
        filter,
        qos,
        no_local: options & 0x04 != 0,
        retain_as_published: options & 0x08 != 0,
        retain_handling,
    })
}

/// Reads the fields of a packet body in order; every read past the end is
/// `Malformed`.
pub(crate) struct Reader {
    buf: Bytes,
}

const CUT: DecodeError = DecodeError::Malformed("a field runs past the end of the packet");

impl Reader {
    pub(crate) fn new(buf: Bytes) -> Reader {
        Reader { buf }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    fn take(&mut self, len: usize) -> Result<Bytes, DecodeError> {
        if self.buf.len() < len {
            return Err(CUT);
        }
        Ok(self.buf.split_to(len))
    }

    /// The next `len` bytes, as a reader of their own.
    pub(crate) fn sub(&mut self, len: usize) -> Result<Reader, DecodeError> {
        Ok(Reader::new(self.take(len)?))
    }

    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    pub(crate) fn u16(&mut self) -> Result<u16, DecodeError> {
        let bytes = self.take(2)?;
        Ok(u16::from_be_bytes([bytes[0], bytes[1]]))
    }

    pub(crate) fn u32(&mut self) -> Result<u32, DecodeError> {
        let bytes = self.take(4)?;
        Ok(u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }

    /// A variable byte integer (MQTT-1.5.5): at most four bytes, minimal.
    pub(crate) fn varint(&mut self) -> Result<u32, DecodeError> {
        let mut value = 0u32;
        for i in 0..4 {
            let byte = self.u8()?;
            if i > 0 && byte == 0 {
                return Err(DecodeError::Malformed(
                    "a variable byte integer not minimal",
                ));
            }
            value |= u32::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(DecodeError::Malformed(
            "a variable byte integer over four bytes",
        ))
    }

    /// Two length bytes and that many bytes.
    pub(crate) fn binary(&mut self) -> Result<Bytes, DecodeError> {
        let len = self.u16()?;
        self.take(usize::from(len))
    }

    /// A UTF-8 string.
    pub(crate) fn string(&mut self) -> Result<MqttStr, DecodeError> {
        let bytes = self.binary()?;
        MqttStr::from_bytes(bytes).ok_or(DecodeError::Malformed(
            "a string that is not UTF-8, or holds U+0000",
        ))
    }

    /// Everything left.
    pub(crate) fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.buf)
    }

    /// Nothing may be left.
    pub(crate) fn end(&self) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::Malformed(
                "bytes left over at the end of the packet",
            ))
        }
    }
}
