//! The packets of MQTT 3.1.1 and 5.0, as one set of types: fields that only
//! 5.0 has (properties, reason codes) are empty or zero on a 3.1.1
//! connection.

use bytes::Bytes;

use crate::props::Properties;

/// The protocol version a connection speaks, chosen by its `CONNECT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Version {
    /// MQTT 3.1.1, protocol level 4.
    V311,
    /// MQTT 5.0, protocol level 5.
    V5,
}

impl Version {
    /// The protocol level byte of `CONNECT`.
    pub fn level(self) -> u8 {
        match self {
            Version::V311 => 4,
            Version::V5 => 5,
        }
    }
}

/// A delivery guarantee.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum QoS {
    /// 0: at most once.
    AtMostOnce,
    /// 1: at least once (`PUBACK`).
    AtLeastOnce,
    /// 2: exactly once (`PUBREC`, `PUBREL`, `PUBCOMP`).
    ExactlyOnce,
}

impl QoS {
    /// The QoS of bits `value` (0-2); `None` for 3.
    pub fn from_bits(value: u8) -> Option<QoS> {
        match value {
            0 => Some(QoS::AtMostOnce),
            1 => Some(QoS::AtLeastOnce),
            2 => Some(QoS::ExactlyOnce),
            _ => None,
        }
    }

    /// 0, 1 or 2.
    pub fn bits(self) -> u8 {
        self as u8
    }
}

/// An MQTT UTF-8 string: valid UTF-8 without U+0000 (MQTT-1.5.4-1 and -2),
/// at most 65,535 bytes, kept as a slice of the bytes it was read from.
/// The default is the empty string.
#[derive(Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MqttStr(Bytes);

impl MqttStr {
    /// Checks `bytes`; `None` if they are not an MQTT string.
    pub fn from_bytes(bytes: Bytes) -> Option<MqttStr> {
        (bytes.len() <= usize::from(u16::MAX)
            && !bytes.contains(&0)
            && std::str::from_utf8(&bytes).is_ok())
        .then_some(MqttStr(bytes))
    }

    /// A copy of `text`; `None` if it holds U+0000 or is over 65,535 bytes.
    pub fn new(text: &str) -> Option<MqttStr> {
        MqttStr::from_bytes(Bytes::copy_from_slice(text.as_bytes()))
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        // Checked to be UTF-8 when made, and the bytes cannot change.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// The bytes, as on the wire (without the length).
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The bytes, shared.
    pub fn to_bytes(&self) -> Bytes {
        self.0.clone()
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether it is the empty string.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for MqttStr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

/// A client's will: published for it if it goes without a `DISCONNECT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastWill {
    /// Where.
    pub topic: MqttStr,
    /// What.
    pub payload: Bytes,
    /// With which QoS.
    pub qos: QoS,
    /// Whether it is retained.
    pub retain: bool,
    /// Will properties (5.0): delay, expiry, content type and the others
    /// of a `PUBLISH`.
    pub properties: Properties,
}

/// `CONNECT`: the first packet of every connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    /// Chosen by the protocol level.
    pub version: Version,
    /// The client identifier (may be empty: the server assigns one).
    pub client_id: MqttStr,
    /// Clean session (3.1.1) or clean start (5.0).
    pub clean_start: bool,
    /// Seconds; 0 turns keep-alive off.
    pub keep_alive: u16,
    /// User name, if given.
    pub username: Option<MqttStr>,
    /// Password, if given (binary data).
    pub password: Option<Bytes>,
    /// The will, if any.
    pub will: Option<LastWill>,
    /// Connect properties (5.0).
    pub properties: Properties,
}

/// `CONNACK`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnAck {
    /// Whether the server had a session for the client.
    pub session_present: bool,
    /// The return code (3.1.1: 0-5) or reason code (5.0).
    pub code: u8,
    /// Connack properties (5.0).
    pub properties: Properties,
}

/// `PUBLISH`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    /// A redelivery of a QoS 1 or 2 message.
    pub dup: bool,
    /// Its QoS.
    pub qos: QoS,
    /// Whether the server is to retain it.
    pub retain: bool,
    /// The topic name (empty in 5.0 when a topic alias stands for it).
    pub topic: MqttStr,
    /// Present exactly when QoS is 1 or 2; never 0.
    pub packet_id: Option<u16>,
    /// Publish properties (5.0).
    pub properties: Properties,
    /// The payload, a slice of the packet's bytes.
    pub payload: Bytes,
}

/// Which acknowledgement of a `PUBLISH` an [`Ack`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AckKind {
    /// QoS 1's answer.
    PubAck,
    /// QoS 2, step 2.
    PubRec,
    /// QoS 2, step 3.
    PubRel,
    /// QoS 2, step 4.
    PubComp,
}

impl AckKind {
    fn packet_type(self) -> u8 {
        match self {
            AckKind::PubAck => 4,
            AckKind::PubRec => 5,
            AckKind::PubRel => 6,
            AckKind::PubComp => 7,
        }
    }

    pub(crate) fn from_type(kind: u8) -> Option<AckKind> {
        match kind {
            4 => Some(AckKind::PubAck),
            5 => Some(AckKind::PubRec),
            6 => Some(AckKind::PubRel),
            7 => Some(AckKind::PubComp),
            _ => None,
        }
    }

    /// The first byte of the fixed header (`PUBREL` carries flags 0010).
    pub(crate) fn first_byte(self) -> u8 {
        let flags = if self == AckKind::PubRel { 0b0010 } else { 0 };
        (self.packet_type() << 4) | flags
    }
}

/// `PUBACK`, `PUBREC`, `PUBREL` or `PUBCOMP`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    /// Which one.
    pub kind: AckKind,
    /// The packet id acknowledged.
    pub packet_id: u16,
    /// Reason code (5.0; 0 is success, and always 0 on 3.1.1).
    pub reason: u8,
    /// Properties (5.0: reason string, user properties).
    pub properties: Properties,
}

/// What a client does with retained messages when it subscribes (5.0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RetainHandling {
    /// 0: send them at every subscribe.
    OnSubscribe,
    /// 1: only when the subscription did not exist.
    OnNewSubscribe,
    /// 2: never.
    Never,
}

/// One topic filter of a `SUBSCRIBE`, with its options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    /// The filter (`+` and `#` wildcards; `$share/group/filter`).
    pub filter: MqttStr,
    /// The most QoS the client wants for it.
    pub qos: QoS,
    /// 5.0: not its own publishes.
    pub no_local: bool,
    /// 5.0: keep the retain flag as published.
    pub retain_as_published: bool,
    /// 5.0: retained messages at subscribe.
    pub retain_handling: RetainHandling,
}

/// `SUBSCRIBE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    /// Never 0.
    pub packet_id: u16,
    /// Subscription identifier, user properties (5.0).
    pub properties: Properties,
    /// At least one.
    pub filters: Vec<Subscription>,
}

/// `SUBACK`: a code per filter, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubAck {
    /// The `SUBSCRIBE`'s id.
    pub packet_id: u16,
    /// Properties (5.0).
    pub properties: Properties,
    /// Granted QoS (0-2) or a failure code (0x80 and up).
    pub codes: Vec<u8>,
}

/// `UNSUBSCRIBE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsubscribe {
    /// Never 0.
    pub packet_id: u16,
    /// User properties (5.0).
    pub properties: Properties,
    /// At least one.
    pub filters: Vec<MqttStr>,
}

/// `UNSUBACK`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsubAck {
    /// The `UNSUBSCRIBE`'s id.
    pub packet_id: u16,
    /// Properties (5.0).
    pub properties: Properties,
    /// A reason code per filter (5.0; none on 3.1.1).
    pub codes: Vec<u8>,
}

/// `DISCONNECT` (and, with the same shape, `AUTH`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disconnect {
    /// Reason code (5.0; 0 is a normal disconnection).
    pub reason: u8,
    /// Properties (5.0).
    pub properties: Properties,
}

/// One MQTT control packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    /// Type 1 (boxed: the largest, and once per connection).
    Connect(Box<Connect>),
    /// Type 2.
    ConnAck(ConnAck),
    /// Type 3.
    Publish(Publish),
    /// Types 4 to 7.
    Ack(Ack),
    /// Type 8.
    Subscribe(Subscribe),
    /// Type 9.
    SubAck(SubAck),
    /// Type 10.
    Unsubscribe(Unsubscribe),
    /// Type 11.
    UnsubAck(UnsubAck),
    /// Type 12.
    PingReq,
    /// Type 13.
    PingResp,
    /// Type 14.
    Disconnect(Disconnect),
    /// Type 15 (5.0 only).
    Auth(Disconnect),
}
