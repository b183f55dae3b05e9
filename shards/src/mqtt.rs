//! An MQTT connection on its shard: MQTT 3.1.1 and 5.0 packets in, native
//! frames to the engine, and the engine's frames back out as MQTT packets
//! (see [`crate::edge`] for where this sits).
//!
//! The engine serves an MQTT client exactly as it serves a native one: the
//! `CONNECT` becomes a `HELLO` whose credentials are the password (an API
//! key or a token), so authentication, permissions, limits and the
//! owner's sequencing are the native ones. What MQTT adds is kept here:
//!
//! - **Topics.** Every MQTT topic lives in one namespace (the listener's
//!   `namespace`), under its MQTT name unchanged. A filter with `+` or `#`
//!   becomes a pattern subscription (`+` is `*`, `#` is `>`); `a/#` also
//!   matches `a`, so it is two native subscriptions (`a` and `a/>`), and a
//!   filter whose first level is a wildcard does not receive topics that
//!   start with `$` (MQTT-4.7.2-1). A topic level that is exactly `*` or
//!   `>` has a native meaning and is refused for now (reason 0x90 / 0x8F).
//! - **Acknowledgements.** A QoS 1 `PUBACK` (and a QoS 2 `PUBREC`) is sent
//!   when the engine's `PUB_ACK` comes: the owner shard has sequenced the
//!   message, what the native acknowledgement means. QoS 2's `PUBREL` is
//!   answered with `PUBCOMP`; a `PUBLISH` repeated before its `PUBREL` is
//!   not published again.
//! - **Order.** An answer that needs nothing from the engine (`PINGRESP`,
//!   `PUBCOMP`, a `SUBACK` for a filter already held) still goes out after
//!   the answers to the packets before it: it rides on a native `PING`,
//!   and is sent when the engine's `PONG` comes back.
//!
//! - **Will.** A connection that ends without a clean `DISCONNECT` (a
//!   lost socket, a missed keep-alive, a protocol error; 5.0's reason 0x04)
//!   has its will published by the engine under the connection's grant.
//!
//! - **Deliveries.** The QoS a message was published with travels in its
//!   body's format byte (bits 1 and 2; native publishers leave 0), and a
//!   subscriber gets it at the lower of that and the QoS its filter was
//!   granted (what it asked for). QoS 1 and 2 deliveries take packet ids,
//!   at most the client's `receive_maximum` at a time; the others wait, in
//!   order, up to the outbox bound, past which they are dropped and logged.
//!
//! No session outlives its connection and no message is retained yet; the 5.0
//! `CONNACK` says so where 5.0 has a property for it (session expiry 0;
//! retain, shared subscriptions, subscription identifiers: not available),
//! and a 5.0 client that asks for them anyway is answered with the reason
//! code the specification gives.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::{Bytes, BytesMut};
use corebus_mqtt::{
    self as mqtt, Ack, AckKind, ConnAck, Connect, DecodeError, Disconnect, MqttStr, Packet,
    Properties, QoS, SubAck, UnsubAck, Version,
};
use corebus_net::{
    encode_publish_as, encode_subscribe, is_pattern, validate_topic, Body, ErrorCode, ErrorFrame,
    Frame, Hello, PayloadFormat, Publish, TopicKey, Unsubscribe, PROTOCOL_VERSION,
};
use rustc_hash::{FxHashMap, FxHashSet};
use tracing::{debug, warn};

use crate::engine::ConnId;
use crate::framing::{frames_of, Input, Wrapped};
use crate::routing::ShardId;

/// What every connection of one MQTT listener shares, on every shard.
#[derive(Debug)]
pub struct MqttSettings {
    /// The namespace every MQTT topic lives in.
    namespace: String,
    /// The `receive_maximum` a 5.0 `CONNACK` announces: QoS 1 and 2
    /// publishes a client may have unacknowledged (the engine's
    /// `max_in_flight_per_conn`, at most 65,535).
    receive_maximum: u16,
    /// Bytes of QoS 1 and 2 deliveries one connection may hold while its
    /// client's receive maximum is reached (the engine's outbox bound).
    waiting_limit: usize,
    /// Which connection holds each client id.
    clients: ClientIds,
}

impl MqttSettings {
    /// Settings for a listener whose topics live in `namespace`; clients
    /// may have `receive_maximum` QoS 1 and 2 publishes unacknowledged, and
    /// a connection holds at most `waiting_limit` bytes of deliveries its
    /// client is not ready for.
    pub fn new(namespace: String, receive_maximum: u16, waiting_limit: usize) -> MqttSettings {
        MqttSettings {
            namespace,
            receive_maximum,
            waiting_limit,
            clients: ClientIds::default(),
        }
    }
}

/// A connection, broker-wide: its shard and its id there.
pub(crate) type Holder = (ShardId, ConnId);

/// Which connection holds each MQTT client id: one at a time, broker-wide
/// (MQTT-3.1.4-2 in 3.1.1, MQTT-3.1.4-3 in 5.0). Touched once when a
/// connection's handshake succeeds and once when it ends.
#[derive(Debug, Default)]
struct ClientIds {
    held: Mutex<FxHashMap<String, Holder>>,
}

impl ClientIds {
    /// `holder` takes `id`; the connection that held it, if another.
    fn claim(&self, id: &str, holder: Holder) -> Option<Holder> {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        held.insert(id.to_owned(), holder)
            .filter(|previous| *previous != holder)
    }

    /// `holder` ends: `id` is free, unless another connection took it.
    fn release(&self, id: &str, holder: Holder) {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        if held.get(id) == Some(&holder) {
            held.remove(id);
        }
    }
}

/// Bytes a native frame adds to an MQTT packet's (namespace, opcode, ids):
/// an MQTT packet may be this much shorter than the engine's frame limit.
const NATIVE_OVERHEAD: u32 = 256;

/// The 5.0 `DISCONNECT` reason that asks for the will to be published.
const DISCONNECT_WITH_WILL: u8 = 0x04;

/// Answers to pings, `PUBREL`s and repeated filters a connection may have
/// waiting besides one per publish it may have unanswered.
const DEFERRED_SLACK: usize = 1024;

/// Payloads at least this long go out as their own segment, shared with
/// the other subscribers, instead of being copied after their header.
const SHARE_FROM: usize = 512;

/// MQTT 5.0 reason codes used here.
mod reason {
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
    pub const RETAIN_NOT_SUPPORTED: u8 = 0x9A;
    pub const SHARED_NOT_SUPPORTED: u8 = 0x9E;
    pub const MAX_CONNECT_TIME: u8 = 0xA0;
    pub const NO_SUBSCRIPTION: u8 = 0x11;
}

/// 3.1.1 `CONNACK` return codes.
mod v3 {
    pub const BAD_VERSION: u8 = 0x01;
    pub const ID_REJECTED: u8 = 0x02;
    pub const UNAVAILABLE: u8 = 0x03;
    pub const BAD_CREDENTIALS: u8 = 0x04;
    pub const NOT_AUTHORIZED: u8 = 0x05;
    /// The `SUBACK` code of a refused filter.
    pub const SUB_FAILURE: u8 = 0x80;
}

/// An MQTT connection's state, shared by its reader and writer.
#[derive(Debug)]
pub(crate) struct MqttConn {
    settings: Arc<MqttSettings>,
    phase: Phase,
    version: Version,
    /// Bytes of a packet not yet whole (nothing while the client is idle).
    input: BytesMut,
    /// Longest packet accepted: the pre-handshake bound until `WELCOME`.
    max_packet: usize,
    /// Longest packet the client accepts (5.0 `maximum_packet_size`).
    client_max_packet: usize,
    /// MQTT bytes the writer sends before the next batch.
    pending: BytesMut,
    /// The keep-alive of the `CONNECT`, until the reader takes it.
    keep_alive: Option<Option<u64>>,
    /// The client id this server chose, for the `CONNACK`.
    assigned_id: Option<String>,
    /// The client id, once the `CONNECT` came.
    client_id: String,
    /// This connection, once it holds its client id.
    holder: Option<Holder>,
    next_request: u32,
    /// Native requests waiting for their answer, by request id.
    requests: FxHashMap<u32, Request>,
    next_sub: u32,
    /// Native subscriptions, by subscription id.
    subs: FxHashMap<u32, Sub>,
    /// The native subscriptions behind each MQTT filter the client holds.
    filters: FxHashMap<String, Vec<u32>>,
    /// `SUBACK`s and `UNSUBACK`s being assembled, by packet id.
    acks: FxHashMap<u16, AckWait>,
    /// Answers that wait for the engine's `PONG` of the same nonce.
    deferred: VecDeque<(u64, Bytes)>,
    next_marker: u64,
    /// QoS 2 packet ids received and not yet released by `PUBREL`.
    unreleased: FxHashSet<u16>,
    /// QoS 1 publishes received and not yet answered with `PUBACK`.
    unanswered_at_least_once: usize,
    /// The will, as the publish it becomes, until a clean `DISCONNECT`.
    will: Option<Publish>,
    /// Deliveries at QoS 1 and 2 the client has not finished acknowledging,
    /// by packet id.
    outbound: FxHashMap<u16, Outbound>,
    next_packet_id: u16,
    /// How many of those the client takes at once (5.0 `receive_maximum`).
    client_receive_max: usize,
    /// Deliveries that wait for the client to acknowledge earlier ones, in
    /// order, and their bytes (at most the settings' `waiting_limit`).
    waiting: VecDeque<Delivery>,
    waiting_bytes: usize,
    /// Deliveries dropped because `waiting` was full, since it last was not.
    dropped: u64,
    /// Topic aliases the client accepts from the server (5.0
    /// `topic_alias_maximum`), and the ones given, by topic.
    client_alias_max: u16,
    aliases: FxHashMap<String, u16>,
    /// A 5.0 client asked for its session to outlive the connection, which
    /// the `CONNACK` overrides with 0.
    asked_session_expiry: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for `CONNECT`.
    Connect,
    /// `HELLO` sent; the engine's answer becomes the `CONNACK`.
    Connecting,
    /// `CONNACK` sent.
    Open,
    /// Closed or refused.
    Done,
}

/// What a native request's answer completes.
#[derive(Debug, Clone, Copy)]
enum Request {
    Publish {
        packet_id: u16,
        qos: QoS,
    },
    /// `parent`: the `a` of `a/#`, whose refusal leaves the filter's
    /// grant alone (a client may be allowed `a/...` but not `a`).
    Subscribe {
        packet_id: u16,
        index: usize,
        sub_id: u32,
        parent: bool,
    },
    Unsubscribe {
        packet_id: u16,
    },
}

/// Where a delivery at QoS 1 or 2 is in its exchange with the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outbound {
    /// QoS 1: waiting for `PUBACK`.
    Ack,
    /// QoS 2: waiting for `PUBREC`.
    Received,
    /// QoS 2: `PUBREL` sent, waiting for `PUBCOMP`.
    Complete,
}

/// A message for the client: rendered at once, or waiting for a free
/// packet id slot.
#[derive(Debug)]
struct Delivery {
    topic: String,
    body: corebus_net::Body,
    qos: QoS,
    /// The subscription identifiers of the filters it matched (5.0).
    ids: Vec<u32>,
}

/// A message as one or more of the connection's subscriptions got it: one
/// copy per message, whatever the number of overlapping filters.
#[derive(Debug)]
struct Matched {
    topic: String,
    epoch: corebus_net::Epoch,
    seq: corebus_net::Seq,
    body: corebus_net::Body,
    /// The highest QoS granted to the filters it matched.
    granted: QoS,
    ids: Vec<u32>,
}

/// A topic alias for one `PUBLISH` to the client.
#[derive(Debug, Clone, Copy)]
struct Alias {
    number: u16,
    /// The client has it already: the topic name is left out.
    known: bool,
}

/// One native subscription of an MQTT filter.
#[derive(Debug)]
struct Sub {
    /// The QoS granted to its filter.
    qos: QoS,
    /// The filter's subscription identifier (5.0), sent with its messages.
    identifier: Option<u32>,
    /// The topic, for a subscription to one topic (its `MESSAGE`s carry no
    /// topic); `None` for a pattern.
    topic: Option<String>,
    /// The filter starts with a wildcard: `$` topics are not its.
    wildcard_first: bool,
}

#[derive(Debug)]
struct AckWait {
    unsubscribe: bool,
    codes: Vec<u8>,
    outstanding: usize,
}

impl MqttConn {
    /// A connection of a listener with these settings, before its
    /// `CONNECT`.
    pub(crate) fn new(settings: Arc<MqttSettings>) -> MqttConn {
        MqttConn {
            settings,
            phase: Phase::Connect,
            version: Version::V311,
            input: BytesMut::new(),
            max_packet: 0,
            client_max_packet: usize::MAX,
            pending: BytesMut::new(),
            keep_alive: None,
            assigned_id: None,
            client_id: String::new(),
            holder: None,
            next_request: 0,
            requests: FxHashMap::default(),
            next_sub: 0,
            subs: FxHashMap::default(),
            filters: FxHashMap::default(),
            acks: FxHashMap::default(),
            deferred: VecDeque::new(),
            next_marker: 0,
            unreleased: FxHashSet::default(),
            unanswered_at_least_once: 0,
            will: None,
            outbound: FxHashMap::default(),
            next_packet_id: 0,
            client_receive_max: usize::from(u16::MAX),
            waiting: VecDeque::new(),
            waiting_bytes: 0,
            dropped: 0,
            client_alias_max: 0,
            aliases: FxHashMap::default(),
            asked_session_expiry: false,
        }
    }

    /// The handshake of `holder` succeeded: it takes its client id
    /// over; returns the connection that held it, which is to be closed.
    pub(crate) fn claim_client_id(&mut self, holder: Holder) -> Option<Holder> {
        self.holder = Some(holder);
        self.settings.clients.claim(&self.client_id, holder)
    }

    /// The will, when the connection ends without a clean `DISCONNECT`
    /// (5.0: or with reason 0x04, "disconnect with will message"): the
    /// engine publishes it under the connection's grant.
    pub(crate) fn take_will(&mut self) -> Option<Publish> {
        self.will.take()
    }

    /// Whether the writer has bytes of ours to send: answers, or waiting
    /// deliveries the client now has room for.
    pub(crate) fn has_pending(&self) -> bool {
        !self.pending.is_empty() || (!self.waiting.is_empty() && self.has_room())
    }

    /// Whether the client takes another delivery at QoS 1 or 2.
    fn has_room(&self) -> bool {
        self.outbound.len() < self.client_receive_max
    }

    /// The keep-alive of the `CONNECT`, once: `Some(None)` when the client
    /// turned it off, else how long the connection may be silent (one and
    /// a half times the keep-alive, MQTT-3.1.2-24).
    pub(crate) fn take_keep_alive(&mut self) -> Option<Option<u64>> {
        self.keep_alive.take()
    }

    /// The engine accepted the `HELLO`: packets may now be as long as the
    /// frame limit allows.
    pub(crate) fn handshaken(&mut self, max_frame: u32) {
        self.max_packet = max_frame.saturating_sub(NATIVE_OVERHEAD) as usize;
    }

    /// Feeds bytes from the socket; the native frames they mean are
    /// appended to `frames`. Anything wrong ends the connection, with the
    /// `DISCONNECT` (5.0) or `CONNACK` the specification asks for waiting
    /// for the writer.
    pub(crate) fn feed(
        &mut self,
        bytes: &[u8],
        frames: &mut BytesMut,
        pre_handshake_limit: u32,
    ) -> Input {
        if self.phase == Phase::Done {
            return Input::End;
        }
        if self.max_packet == 0 {
            self.max_packet = pre_handshake_limit as usize;
        }
        self.input.extend_from_slice(bytes);
        loop {
            let len = match mqtt::check(&self.input, self.max_packet) {
                Ok(mqtt::Check::Complete { len }) => len,
                Ok(mqtt::Check::Incomplete { .. }) => break,
                Err(err) => return self.refuse_input(&err),
            };
            let packet = self.input.split_to(len).freeze();
            let mut input = if self.phase == Phase::Connect {
                self.on_connect(packet, frames)
            } else {
                match mqtt::decode(packet, self.version) {
                    Ok(packet) => self.on_packet(packet, frames),
                    Err(err) => self.refuse_input(&err),
                }
            };
            if self.deferred.len() > self.max_deferred() {
                // Pings and acknowledgements sent faster than their answers
                // are read: what the connection would hold for them is
                // bounded, and no real client comes near it.
                debug!(
                    answers = self.deferred.len(),
                    "MQTT client does not read its answers; closing"
                );
                self.disconnect(reason::QUOTA_EXCEEDED);
                input = Input::End;
            }
            if input == Input::End {
                self.phase = Phase::Done;
                self.input = BytesMut::new();
                return Input::End;
            }
        }
        if self.input.is_empty() {
            // An idle connection holds no input buffer.
            self.input = BytesMut::new();
        }
        Input::More
    }

    /// Bytes that are no packet, or a packet against the protocol: 5.0
    /// says why in a `DISCONNECT` (or the `CONNACK`, before one was sent).
    fn refuse_input(&mut self, err: &DecodeError) -> Input {
        debug!(%err, "MQTT input refused; closing");
        match self.phase {
            Phase::Connect | Phase::Connecting => {
                if self.version == Version::V5 && self.phase == Phase::Connecting {
                    self.answer_connect(err.reason(), Properties::default());
                }
            }
            _ => self.disconnect(err.reason()),
        }
        Input::End
    }

    fn on_connect(&mut self, packet: Bytes, frames: &mut BytesMut) -> Input {
        let connect = match mqtt::decode_connect(packet) {
            Ok(connect) => connect,
            Err(DecodeError::UnsupportedProtocol { name, level }) => {
                debug!(name, level, "MQTT CONNECT for a protocol not spoken here");
                // The one answer every version can read (MQTT-3.1.2-2).
                self.version = Version::V311;
                self.answer_connect(v3::BAD_VERSION, Properties::default());
                return Input::End;
            }
            Err(err) => {
                debug!(%err, "malformed MQTT CONNECT; closing");
                return Input::End;
            }
        };
        self.version = connect.version;
        let v5 = self.version == Version::V5;
        if let Some(refusal) = self.connect_refusal(&connect) {
            self.answer_connect(refusal, Properties::default());
            return Input::End;
        }
        if let Some(will) = &connect.will {
            let topic = will.topic.as_bytes();
            let key = valid_topic(&will.topic)
                .then(|| TopicKey::new(self.settings.namespace.as_bytes(), topic).ok())
                .flatten();
            let Some(topic) = key else {
                debug!(topic = ?will.topic, "MQTT will to a topic name refused");
                if v5 {
                    self.answer_connect(reason::TOPIC_INVALID, Properties::default());
                }
                return Input::End;
            };
            self.will = Some(Publish {
                request_id: 0,
                ack: false,
                topic,
                body: Body::with_qos(PayloadFormat::Plain, will.qos.bits(), &will.payload),
            });
        }
        self.client_id = if connect.client_id.is_empty() {
            let id = format!("corebus-{:016x}", random_u64());
            self.assigned_id = Some(id.clone());
            id
        } else {
            connect.client_id.as_str().to_owned()
        };
        if v5 {
            if let Some(max) = connect.properties.maximum_packet_size {
                self.client_max_packet = max as usize;
            }
            if let Some(max) = connect.properties.receive_maximum {
                self.client_receive_max = usize::from(max);
            }
            self.client_alias_max = connect.properties.topic_alias_maximum.unwrap_or(0);
            self.asked_session_expiry = connect.properties.session_expiry.unwrap_or(0) > 0;
        }
        self.keep_alive =
            Some((connect.keep_alive > 0).then(|| u64::from(connect.keep_alive) * 1500));
        Frame::Hello(Hello {
            version: PROTOCOL_VERSION,
            client_name: format!("mqtt:{}", self.client_id),
            credentials: connect.password.unwrap_or_default(),
        })
        .encode(frames);
        self.phase = Phase::Connecting;
        Input::More
    }

    /// Why a well-formed `CONNECT` is refused before the engine sees it.
    fn connect_refusal(&self, connect: &Connect) -> Option<u8> {
        let v5 = self.version == Version::V5;
        if connect.client_id.is_empty() && !connect.clean_start && !v5 {
            // A 3.1.1 session without a client id (MQTT-3.1.3-8).
            return Some(v3::ID_REJECTED);
        }
        if v5 {
            if connect.properties.auth_method.is_some() {
                return Some(reason::BAD_AUTH_METHOD);
            }
            if connect.will.as_ref().is_some_and(|will| will.retain) {
                return Some(reason::RETAIN_NOT_SUPPORTED);
            }
        }
        None
    }

    fn answer_connect(&mut self, code: u8, properties: Properties) {
        Packet::ConnAck(ConnAck {
            session_present: false,
            code,
            properties,
        })
        .encode(self.version, &mut self.pending);
    }

    /// 5.0: a `DISCONNECT` with `reason` (3.1.1 has none: the connection
    /// just closes).
    fn disconnect(&mut self, reason: u8) {
        if self.version == Version::V5 {
            Packet::Disconnect(Disconnect {
                reason,
                properties: Properties::default(),
            })
            .encode(self.version, &mut self.pending);
        }
    }

    fn on_packet(&mut self, packet: Packet, frames: &mut BytesMut) -> Input {
        match packet {
            Packet::Publish(publish) => return self.on_publish(publish, frames),
            Packet::Ack(ack) if ack.kind == AckKind::PubRel => {
                let known = self.unreleased.remove(&ack.packet_id);
                let code = if known {
                    0
                } else {
                    reason::PACKET_ID_NOT_FOUND
                };
                self.answer_ack(frames, AckKind::PubComp, ack.packet_id, code);
            }
            Packet::Ack(ack) => self.on_delivery_ack(&ack),
            Packet::Subscribe(subscribe) => return self.on_subscribe(subscribe, frames),
            Packet::Unsubscribe(unsubscribe) => self.on_unsubscribe(unsubscribe, frames),
            Packet::PingReq => {
                let mut resp = BytesMut::new();
                Packet::PingResp.encode(self.version, &mut resp);
                self.defer(frames, resp.freeze());
            }
            Packet::Disconnect(disconnect) => {
                if disconnect.reason != DISCONNECT_WITH_WILL {
                    self.will = None;
                }
                return Input::End;
            }
            Packet::Connect(_) => {
                debug!("a second MQTT CONNECT; closing");
                self.disconnect(reason::PROTOCOL_ERROR);
                return Input::End;
            }
            Packet::Auth(_)
            | Packet::ConnAck(_)
            | Packet::SubAck(_)
            | Packet::UnsubAck(_)
            | Packet::PingResp => {
                debug!("an MQTT packet a client does not send; closing");
                self.disconnect(reason::PROTOCOL_ERROR);
                return Input::End;
            }
        }
        Input::More
    }

    fn on_publish(&mut self, publish: mqtt::Publish, frames: &mut BytesMut) -> Input {
        let v5 = self.version == Version::V5;
        if publish.properties.topic_alias.is_some() {
            // The CONNACK allowed none (topic alias maximum 0).
            self.disconnect(reason::TOPIC_ALIAS_INVALID);
            return Input::End;
        }
        if publish.retain && v5 {
            self.disconnect(reason::RETAIN_NOT_SUPPORTED);
            return Input::End;
        }
        let topic = publish.topic.as_bytes();
        let valid = valid_topic(&publish.topic);
        let packet_id = publish.packet_id.unwrap_or(0);
        if !valid {
            debug!(topic = ?publish.topic, "MQTT PUBLISH to a topic name refused");
            return match publish.qos {
                QoS::AtLeastOnce | QoS::ExactlyOnce if v5 => {
                    let kind = ack_for(publish.qos);
                    self.answer_ack(frames, kind, packet_id, reason::TOPIC_INVALID);
                    Input::More
                }
                _ => {
                    self.disconnect(reason::TOPIC_INVALID);
                    Input::End
                }
            };
        }
        let request_id = match publish.qos {
            QoS::AtMostOnce => 0,
            QoS::ExactlyOnce if self.unreleased.contains(&packet_id) => {
                // Sent again before its PUBREL: received already.
                self.answer_ack(frames, AckKind::PubRec, packet_id, 0);
                return Input::More;
            }
            qos => {
                // QoS 1 and 2 publishes not yet answered with PUBACK or
                // PUBCOMP: at most the receive maximum the CONNACK gave.
                if self.unanswered_at_least_once + self.unreleased.len()
                    >= usize::from(self.settings.receive_maximum.max(1))
                {
                    debug!("MQTT client exceeded its receive maximum; closing");
                    self.disconnect(reason::RECEIVE_MAXIMUM_EXCEEDED);
                    return Input::End;
                }
                if qos == QoS::ExactlyOnce {
                    self.unreleased.insert(packet_id);
                } else {
                    self.unanswered_at_least_once += 1;
                }
                self.request(Request::Publish { packet_id, qos })
            }
        };
        // The QoS travels in the body's format byte: subscribers get the
        // message at the lower of it and their own.
        encode_publish_as(
            frames,
            request_id,
            request_id != 0,
            self.settings.namespace.as_bytes(),
            topic,
            PayloadFormat::Plain.byte_with_qos(publish.qos.bits()),
            &publish.payload,
        );
        Input::More
    }

    fn on_subscribe(&mut self, subscribe: mqtt::Subscribe, frames: &mut BytesMut) -> Input {
        let v5 = self.version == Version::V5;
        // At most one per SUBSCRIBE (the codec checks), for all its filters.
        let identifier = subscribe.properties.subscription_ids.first().copied();
        let packet_id = subscribe.packet_id;
        let mut wait = AckWait {
            unsubscribe: false,
            codes: Vec::with_capacity(subscribe.filters.len()),
            outstanding: 0,
        };
        for (index, filter) in subscribe.filters.iter().enumerate() {
            let text = filter.filter.as_str();
            let natives = match native_filter(text) {
                Ok(natives) => natives,
                Err(code) => {
                    wait.codes.push(if v5 { code } else { v3::SUB_FAILURE });
                    continue;
                }
            };
            let granted = filter.qos;
            wait.codes.push(granted.bits());
            if let Some(ids) = self.filters.get(text) {
                // Subscribing again replaces the subscription: the same
                // one, with the QoS asked for now.
                for id in ids {
                    if let Some(sub) = self.subs.get_mut(id) {
                        sub.qos = granted;
                        sub.identifier = identifier;
                    }
                }
                continue;
            }
            let wildcard_first = text.starts_with(['+', '#']);
            let mut ids = Vec::with_capacity(natives.len());
            for (n, native) in natives.into_iter().enumerate() {
                self.next_sub = self.next_sub.wrapping_add(1);
                let sub_id = self.next_sub;
                let request_id = self.request(Request::Subscribe {
                    packet_id,
                    index,
                    sub_id,
                    parent: n > 0,
                });
                encode_subscribe(
                    frames,
                    request_id,
                    sub_id,
                    None,
                    self.settings.namespace.as_bytes(),
                    native.as_bytes(),
                );
                let topic = (!is_pattern(native.as_bytes())).then_some(native);
                self.subs.insert(
                    sub_id,
                    Sub {
                        qos: granted,
                        identifier,
                        topic,
                        wildcard_first,
                    },
                );
                ids.push(sub_id);
                wait.outstanding += 1;
            }
            self.filters.insert(text.to_owned(), ids);
        }
        self.finish_or_wait(frames, packet_id, wait);
        Input::More
    }

    fn on_unsubscribe(&mut self, unsubscribe: mqtt::Unsubscribe, frames: &mut BytesMut) {
        let packet_id = unsubscribe.packet_id;
        let mut wait = AckWait {
            unsubscribe: true,
            codes: Vec::with_capacity(unsubscribe.filters.len()),
            outstanding: 0,
        };
        for filter in &unsubscribe.filters {
            let Some(ids) = self.filters.remove(filter.as_str()) else {
                wait.codes.push(reason::NO_SUBSCRIPTION);
                continue;
            };
            wait.codes.push(0);
            for sub_id in ids {
                self.subs.remove(&sub_id);
                let request_id = self.request(Request::Unsubscribe { packet_id });
                Frame::Unsubscribe(Unsubscribe { request_id, sub_id }).encode(frames);
                wait.outstanding += 1;
            }
        }
        self.finish_or_wait(frames, packet_id, wait);
    }

    /// Sends a `SUBACK` or `UNSUBACK` now (after what came before it) when
    /// it waits for nothing, else when its last native answer comes.
    fn finish_or_wait(&mut self, frames: &mut BytesMut, packet_id: u16, wait: AckWait) {
        if wait.outstanding == 0 {
            let mut out = BytesMut::new();
            self.encode_ack_wait(packet_id, wait, &mut out);
            self.defer(frames, out.freeze());
        } else {
            self.acks.insert(packet_id, wait);
        }
    }

    fn encode_ack_wait(&self, packet_id: u16, wait: AckWait, out: &mut BytesMut) {
        let packet = if wait.unsubscribe {
            Packet::UnsubAck(UnsubAck {
                packet_id,
                properties: Properties::default(),
                codes: wait.codes,
            })
        } else {
            Packet::SubAck(SubAck {
                packet_id,
                properties: Properties::default(),
                codes: wait.codes,
            })
        };
        packet.encode(self.version, out);
    }

    /// A `PUBACK`, `PUBREC` or `PUBCOMP` that waits for nothing from the
    /// engine but must follow the answers before it.
    fn answer_ack(&mut self, frames: &mut BytesMut, kind: AckKind, packet_id: u16, reason: u8) {
        let mut out = BytesMut::new();
        encode_ack(self.version, kind, packet_id, reason, &mut out);
        self.defer(frames, out.freeze());
    }

    /// Most answers the connection holds for the engine's `PONG`s: one per
    /// publish the client may have unanswered, and room for pings.
    fn max_deferred(&self) -> usize {
        usize::from(self.settings.receive_maximum) + DEFERRED_SLACK
    }

    /// Queues `answer` behind a native `PING`: the engine answers frames in
    /// order, so its `PONG` comes after the answers to everything before.
    fn defer(&mut self, frames: &mut BytesMut, answer: Bytes) {
        self.next_marker += 1;
        Frame::Ping(self.next_marker).encode(frames);
        self.deferred.push_back((self.next_marker, answer));
    }

    fn request(&mut self, request: Request) -> u32 {
        self.next_request = self.next_request.wrapping_add(1).max(1);
        self.requests.insert(self.next_request, request);
        self.next_request
    }

    /// Turns a batch of native frames into MQTT packets, with any pending
    /// bytes of ours first.
    pub(crate) fn wrap(&mut self, segments: &mut Vec<Bytes>) -> Wrapped {
        let frames = frames_of(segments);
        segments.clear();
        let mut out = BytesMut::new();
        out.extend_from_slice(&self.pending);
        self.pending = BytesMut::new();
        let mut wrapped = Wrapped::default();
        if self.phase == Phase::Done {
            // Ended (by either side): after its last words (a DISCONNECT, a
            // refusing CONNACK) the server sends nothing more.
            if !out.is_empty() {
                segments.push(out.freeze());
            }
            wrapped.end = true;
            return wrapped;
        }
        self.send_waiting(&mut out, segments);
        // The copies overlapping filters get of one message come one after
        // another: they go out as one PUBLISH, at the highest QoS granted,
        // with every filter's subscription identifier (MQTT-3.3.4-2/-4).
        let mut matched: Vec<Matched> = Vec::new();
        for frame in frames {
            let one = match frame {
                Frame::Message(message) => self.matched(
                    message.sub_id,
                    None,
                    message.epoch,
                    message.seq,
                    message.body,
                ),
                Frame::TopicMessage(message) => self.matched(
                    message.sub_id,
                    Some(message.topic),
                    message.epoch,
                    message.seq,
                    message.body,
                ),
                frame => {
                    self.deliver_matched(&mut matched, &mut out, segments);
                    if !self.render(frame, &mut out) {
                        wrapped.end = true;
                        break;
                    }
                    continue;
                }
            };
            let Some(one) = one else { continue };
            match matched.iter_mut().find(|seen| {
                (seen.epoch, seen.seq) == (one.epoch, one.seq) && seen.topic == one.topic
            }) {
                Some(seen) => {
                    seen.granted = seen.granted.max(one.granted);
                    seen.ids.extend(one.ids);
                }
                None => matched.push(one),
            }
        }
        self.deliver_matched(&mut matched, &mut out, segments);
        if !out.is_empty() {
            segments.push(out.freeze());
        }
        wrapped
    }

    /// Renders one native frame; false when the connection ends after it.
    fn render(&mut self, frame: Frame, out: &mut BytesMut) -> bool {
        let v5 = self.version == Version::V5;
        match frame {
            Frame::Welcome(welcome) if self.phase == Phase::Connecting => {
                self.phase = Phase::Open;
                let mut properties = Properties::default();
                if v5 {
                    properties.retain_available = Some(0);
                    properties.shared_available = Some(0);
                    properties.wildcard_available = Some(1);
                    properties.receive_maximum = Some(self.settings.receive_maximum.max(1));
                    properties.maximum_packet_size =
                        Some(welcome.max_frame.saturating_sub(NATIVE_OVERHEAD));
                    properties.assigned_client_id =
                        self.assigned_id.as_deref().and_then(MqttStr::new);
                    // No session outlives its connection (yet): say so, and
                    // a will's delay ends with the session, at once.
                    properties.session_expiry = self.asked_session_expiry.then_some(0);
                }
                Packet::ConnAck(ConnAck {
                    session_present: false,
                    code: 0,
                    properties,
                })
                .encode(self.version, out);
            }
            Frame::Error(error) => return self.render_error(error, out),
            Frame::PubAck(ack) => {
                if let Some(Request::Publish { packet_id, qos }) =
                    self.requests.remove(&ack.request_id)
                {
                    self.answered_publish(qos);
                    encode_ack(self.version, ack_for(qos), packet_id, 0, out);
                }
            }
            Frame::SubOk(ok) => self.answered(ok.request_id, None, out),
            Frame::UnsubOk(ok) => self.answered(ok.request_id, None, out),
            Frame::Pong(nonce) => {
                while self.deferred.front().is_some_and(|(at, _)| *at <= nonce) {
                    if let Some((_, answer)) = self.deferred.pop_front() {
                        out.extend_from_slice(&answer);
                    }
                }
            }
            Frame::GoAway(_) => {
                if v5 {
                    self.disconnect(reason::SERVER_SHUTTING_DOWN);
                    out.extend_from_slice(&std::mem::take(&mut self.pending));
                }
                return false;
            }
            // Heartbeats are MQTT's own (keep-alive), and a gap has no
            // MQTT notice: nothing to send for these.
            _ => {}
        }
        true
    }

    /// An engine `ERROR`: a refused `CONNECT`, a refused request, or the end
    /// of the connection.
    fn render_error(&mut self, error: ErrorFrame, out: &mut BytesMut) -> bool {
        let v5 = self.version == Version::V5;
        let code = error.code();
        match self.phase {
            Phase::Connect | Phase::Done => return false,
            Phase::Connecting => {
                self.phase = Phase::Done;
                let code = connect_code(code, v5);
                let mut properties = Properties::default();
                if v5 {
                    properties.reason_string = MqttStr::new(&error.message);
                }
                Packet::ConnAck(ConnAck {
                    session_present: false,
                    code,
                    properties,
                })
                .encode(self.version, out);
                return false;
            }
            Phase::Open => {}
        }
        let failure = request_code(code, v5);
        match self.requests.get(&error.request_id).copied() {
            Some(Request::Publish { packet_id, qos }) => {
                self.requests.remove(&error.request_id);
                self.unreleased.remove(&packet_id);
                self.answered_publish(qos);
                if !v5 {
                    // 3.1.1 has no negative acknowledgement (MQTT-3.3.5-2):
                    // closing is how the client learns it was refused.
                    debug!(message = %error.message, "MQTT 3.1.1 publish refused; closing");
                    return false;
                }
                encode_ack(self.version, ack_for(qos), packet_id, failure, out);
            }
            Some(Request::Subscribe { sub_id, parent, .. }) => {
                self.drop_sub(sub_id);
                let code = if v5 { failure } else { v3::SUB_FAILURE };
                self.answered(error.request_id, (!parent).then_some(code), out);
            }
            Some(Request::Unsubscribe { .. }) => self.answered(error.request_id, None, out),
            None => debug!(message = %error.message, "engine error on an MQTT connection"),
        }
        if error.fatal {
            if v5 {
                Packet::Disconnect(Disconnect {
                    reason: disconnect_code(code),
                    properties: Properties {
                        reason_string: MqttStr::new(&error.message),
                        ..Properties::default()
                    },
                })
                .encode(self.version, out);
            }
            self.phase = Phase::Done;
            return false;
        }
        true
    }

    /// A QoS 1 publish of the client's was answered (a QoS 2 one counts
    /// until its `PUBREL`).
    fn answered_publish(&mut self, qos: QoS) {
        if qos == QoS::AtLeastOnce {
            self.unanswered_at_least_once = self.unanswered_at_least_once.saturating_sub(1);
        }
    }

    /// A native subscribe or unsubscribe was answered (with a failure code,
    /// or not); the `SUBACK` or `UNSUBACK` goes out with its last answer.
    fn answered(&mut self, request_id: u32, failure: Option<u8>, out: &mut BytesMut) {
        let (packet_id, index) = match self.requests.remove(&request_id) {
            Some(Request::Subscribe {
                packet_id, index, ..
            }) => (packet_id, Some(index)),
            Some(Request::Unsubscribe { packet_id }) => (packet_id, None),
            _ => return,
        };
        let Some(wait) = self.acks.get_mut(&packet_id) else {
            return;
        };
        if let (Some(code), Some(index)) = (failure, index) {
            if let Some(slot) = wait.codes.get_mut(index) {
                *slot = code;
            }
        }
        wait.outstanding -= 1;
        if wait.outstanding == 0 {
            if let Some(wait) = self.acks.remove(&packet_id) {
                self.encode_ack_wait(packet_id, wait, out);
            }
        }
    }

    /// Forgets a native subscription the engine refused.
    fn drop_sub(&mut self, sub_id: u32) {
        self.subs.remove(&sub_id);
        self.filters.retain(|_, ids| {
            ids.retain(|id| *id != sub_id);
            !ids.is_empty()
        });
    }

    /// A message one subscription got: its topic (from the frame, or the
    /// subscription's own), the QoS granted and the identifier; `None` for
    /// a subscription gone, or a `$` topic under a leading wildcard.
    fn matched(
        &self,
        sub_id: u32,
        topic: Option<String>,
        epoch: corebus_net::Epoch,
        seq: corebus_net::Seq,
        body: corebus_net::Body,
    ) -> Option<Matched> {
        let sub = self.subs.get(&sub_id)?;
        let topic = match topic {
            Some(topic) if sub.wildcard_first && topic.starts_with('$') => return None,
            Some(topic) => topic,
            None => sub.topic.clone()?,
        };
        Some(Matched {
            topic,
            epoch,
            seq,
            body,
            granted: sub.qos,
            ids: sub.identifier.into_iter().collect(),
        })
    }

    /// Sends (or queues) the messages gathered so far, in order.
    fn deliver_matched(
        &mut self,
        matched: &mut Vec<Matched>,
        out: &mut BytesMut,
        segments: &mut Vec<Bytes>,
    ) {
        for one in matched.drain(..) {
            let qos =
                QoS::from_bits(one.body.qos().min(one.granted.bits())).unwrap_or(QoS::AtMostOnce);
            let delivery = Delivery {
                topic: one.topic,
                body: one.body,
                qos,
                ids: one.ids,
            };
            self.deliver(delivery, out, segments);
        }
    }

    /// Sends a delivery now, or once the client has room for it (after the
    /// ones that already wait).
    fn deliver(&mut self, delivery: Delivery, out: &mut BytesMut, segments: &mut Vec<Bytes>) {
        if self.waiting.is_empty() && (delivery.qos == QoS::AtMostOnce || self.has_room()) {
            return self.publish(&delivery, out, segments);
        }
        let (topic, body) = (&delivery.topic, &delivery.body);
        let len = topic.len() + body.len();
        if self.waiting_bytes + len > self.settings.waiting_limit {
            if self.dropped == 0 {
                warn!(
                    client = %self.client_id,
                    limit = self.settings.waiting_limit,
                    "MQTT client acknowledges too slowly: deliveries dropped until it catches up"
                );
            }
            self.dropped += 1;
            return;
        }
        self.waiting_bytes += len;
        self.waiting.push_back(delivery);
    }

    /// Sends the deliveries that waited, as far as the client has room.
    fn send_waiting(&mut self, out: &mut BytesMut, segments: &mut Vec<Bytes>) {
        while self
            .waiting
            .front()
            .is_some_and(|next| next.qos == QoS::AtMostOnce || self.has_room())
        {
            let Some(next) = self.waiting.pop_front() else {
                break;
            };
            self.waiting_bytes -= next.topic.len() + next.body.len();
            self.publish(&next, out, segments);
        }
        if self.waiting.is_empty() && self.dropped > 0 {
            warn!(client = %self.client_id, dropped = self.dropped, "MQTT client caught up");
            self.dropped = 0;
        }
    }

    /// The client acknowledged (part of) a delivery at QoS 1 or 2.
    fn on_delivery_ack(&mut self, ack: &Ack) {
        let state = self.outbound.get(&ack.packet_id).copied();
        match (ack.kind, state) {
            (AckKind::PubAck, Some(Outbound::Ack))
            | (AckKind::PubComp, Some(Outbound::Complete)) => {
                self.outbound.remove(&ack.packet_id);
            }
            (AckKind::PubRec, Some(Outbound::Received)) if ack.reason >= 0x80 => {
                // Refused by the client: the exchange ends here.
                self.outbound.remove(&ack.packet_id);
            }
            (AckKind::PubRec, Some(Outbound::Received | Outbound::Complete)) => {
                self.outbound.insert(ack.packet_id, Outbound::Complete);
                encode_ack(
                    self.version,
                    AckKind::PubRel,
                    ack.packet_id,
                    0,
                    &mut self.pending,
                );
            }
            (AckKind::PubRec, _) => {
                encode_ack(
                    self.version,
                    AckKind::PubRel,
                    ack.packet_id,
                    reason::PACKET_ID_NOT_FOUND,
                    &mut self.pending,
                );
            }
            // An acknowledgement of nothing this connection sent: ignored.
            _ => {}
        }
    }

    /// The alias for `topic` in a `PUBLISH` to the client, when it takes
    /// aliases: the one it was given (`known`: the topic can be left out),
    /// or a new one while fewer than its maximum are given.
    fn topic_alias(&mut self, topic: &str) -> Option<Alias> {
        if let Some(&number) = self.aliases.get(topic) {
            return Some(Alias {
                number,
                known: true,
            });
        }
        let next = u16::try_from(self.aliases.len() + 1).ok()?;
        if next > self.client_alias_max {
            return None;
        }
        self.aliases.insert(topic.to_owned(), next);
        Some(Alias {
            number: next,
            known: false,
        })
    }

    /// A packet id no delivery in progress holds.
    fn free_packet_id(&mut self) -> u16 {
        loop {
            self.next_packet_id = self.next_packet_id.wrapping_add(1).max(1);
            if !self.outbound.contains_key(&self.next_packet_id) {
                return self.next_packet_id;
            }
        }
    }

    /// A `PUBLISH` of a delivery (the client has room for it).
    fn publish(&mut self, delivery: &Delivery, out: &mut BytesMut, segments: &mut Vec<Bytes>) {
        let (body, qos) = (&delivery.body, delivery.qos);
        let payload = body.payload();
        let mut properties = Properties::default();
        let mut topic = delivery.topic.as_str();
        if self.version == Version::V5 {
            if body.format() == PayloadFormat::Zstd {
                // Compressed by a native publisher: the broker does not
                // decompress, so the subscriber is told what it gets.
                properties.content_type = MqttStr::new("application/zstd");
            }
            properties.subscription_ids.clone_from(&delivery.ids);
            if let Some(alias) = self.topic_alias(topic) {
                properties.topic_alias = Some(alias.number);
                if alias.known {
                    topic = "";
                }
            }
        }
        let Some(topic) = MqttStr::new(topic) else {
            return;
        };
        let packet_id = (qos != QoS::AtMostOnce).then(|| self.free_packet_id());
        let publish = mqtt::Publish {
            dup: false,
            qos,
            retain: false,
            topic,
            packet_id,
            properties,
            payload,
        };
        let start = out.len();
        mqtt::encode_publish_head(out, self.version, &publish);
        if out.len() - start + publish.payload.len() > self.client_max_packet {
            // Larger than the client accepts: dropped as if delivered
            // (MQTT-3.1.2-25).
            out.truncate(start);
            return;
        }
        if let Some(id) = packet_id {
            let state = if qos == QoS::ExactlyOnce {
                Outbound::Received
            } else {
                Outbound::Ack
            };
            self.outbound.insert(id, state);
        }
        if publish.payload.len() >= SHARE_FROM {
            segments.push(out.split().freeze());
            segments.push(publish.payload);
        } else {
            out.extend_from_slice(&publish.payload);
        }
    }

    /// The last bytes of a closing connection.
    pub(crate) fn close(&mut self) -> Vec<u8> {
        self.phase = Phase::Done;
        self.release_client_id();
        std::mem::take(&mut self.pending).to_vec()
    }
}

/// Whether an MQTT topic name can be published to: a valid MQTT name that
/// is also a native one (not too long, no control character, no level that
/// is a native wildcard).
fn valid_topic(topic: &MqttStr) -> bool {
    let bytes = topic.as_bytes();
    !bytes.is_empty()
        && mqtt::valid_topic_name(topic.as_str())
        && validate_topic(bytes).is_ok()
        && !is_pattern(bytes)
}

impl MqttConn {
    /// Frees the client id this connection holds, if it still does.
    pub(crate) fn release_client_id(&mut self) {
        if let Some(holder) = self.holder.take() {
            self.settings.clients.release(&self.client_id, holder);
        }
    }
}

impl Drop for MqttConn {
    fn drop(&mut self) {
        self.release_client_id();
    }
}

/// The native topics an MQTT filter stands for, or the reason code that
/// refuses it.
fn native_filter(filter: &str) -> Result<Vec<String>, u8> {
    let parsed = mqtt::parse_filter(filter).map_err(|_| reason::FILTER_INVALID)?;
    if parsed.share.is_some() {
        return Err(reason::SHARED_NOT_SUPPORTED);
    }
    let levels: Vec<&str> = parsed.filter.split('/').collect();
    if levels.iter().any(|level| *level == "*" || *level == ">") {
        // A literal `*` or `>` level would be a native wildcard.
        return Err(reason::FILTER_INVALID);
    }
    let native: Vec<&str> = levels
        .iter()
        .map(|level| match *level {
            "+" => "*",
            "#" => ">",
            other => other,
        })
        .collect();
    let mut natives = vec![native.join("/")];
    if levels.len() > 1 && levels.last() == Some(&"#") {
        // `a/#` matches `a` too (MQTT-4.7.1-2).
        natives.push(native[..native.len() - 1].join("/"));
    }
    natives.retain(|topic| !topic.is_empty());
    if natives.is_empty()
        || natives
            .iter()
            .any(|topic| validate_topic(topic.as_bytes()).is_err())
    {
        return Err(reason::FILTER_INVALID);
    }
    Ok(natives)
}

fn ack_for(qos: QoS) -> AckKind {
    if qos == QoS::ExactlyOnce {
        AckKind::PubRec
    } else {
        AckKind::PubAck
    }
}

fn encode_ack(version: Version, kind: AckKind, packet_id: u16, reason: u8, out: &mut BytesMut) {
    Packet::Ack(Ack {
        kind,
        packet_id,
        reason,
        properties: Properties::default(),
    })
    .encode(version, out);
}

/// The `CONNACK` code for an engine refusal of the `HELLO`.
fn connect_code(code: Option<ErrorCode>, v5: bool) -> u8 {
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
fn request_code(code: Option<ErrorCode>, v5: bool) -> u8 {
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
fn disconnect_code(code: Option<ErrorCode>) -> u8 {
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

fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    let _ = getrandom::fill(&mut bytes);
    u64::from_ne_bytes(bytes)
}
