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
//! - **Retained messages.** A retained `PUBLISH` (or will) sets its body's
//!   retain bit; the topic's owner shard keeps it (`engine/retained.rs`). A
//!   `SUBSCRIBE` asks for them, as its retain handling says, with a native
//!   `FETCH_RETAINED` per native subscription, under a subscription id of
//!   its own whose `TOPIC_MESSAGE`s go out with the retain flag set; its
//!   `REPLAY_END` ends it.
//!
//! - **Sessions.** A session that outlives its connection (3.1.1
//!   `clean_session` 0, 5.0 session expiry) stays subscribed while its
//!   client is away and queues what arrives; a new connection with its
//!   client id takes it over, on any shard (`session.rs`).
//!
//! - **Shared subscriptions.** `$share/{group}/{filter}` becomes a native
//!   `SUBSCRIBE_SHARED` for each native topic of the filter
//!   (`engine/shared.rs`): each message goes to one member of the group.

mod codes;
pub(crate) mod homes;
mod inbound;
mod names;
mod outbound;
mod props;
mod session;

pub(crate) use homes::Claim;
pub use session::SessionLimits;
pub(crate) use session::Wanted;

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use corebus_mqtt::{
    self as mqtt, AckKind, ConnAck, Connect, DecodeError, Disconnect, MqttStr, Packet, Properties,
    QoS, Version,
};
use corebus_net::{Body, Frame, Hello, PayloadFormat, Publish, TopicKey, PROTOCOL_VERSION};
use rustc_hash::{FxHashMap, FxHashSet};

use session::ClientIds;
use tracing::debug;

use crate::framing::Input;

use codes::{reason, v3};
use inbound::native_topic;
use outbound::Delivery;

/// What every connection of one MQTT listener shares, on every shard.
#[derive(Debug)]
pub struct MqttSettings {
    /// The namespace every MQTT topic lives in (unless `tenants`).
    namespace: String,
    /// Multi-tenant mode: an MQTT topic name's first level is the
    /// namespace, and the rest the topic.
    tenants: bool,
    /// The `receive_maximum` a 5.0 `CONNACK` announces: QoS 1 and 2
    /// publishes a client may have unacknowledged (the engine's
    /// `max_in_flight_per_conn`, at most 65,535).
    receive_maximum: u16,
    /// Bytes of QoS 1 and 2 deliveries one connection may hold while its
    /// client's receive maximum is reached (the engine's outbox bound).
    waiting_limit: usize,
    /// The longest keep-alive a 5.0 client may have, in seconds (0: any,
    /// and none).
    max_keep_alive: u16,
    /// How long sessions outlive their connections, and what they hold.
    sessions: SessionLimits,
    /// Which connection holds each client id, and the sessions' filters.
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
            tenants: false,
            receive_maximum,
            waiting_limit,
            max_keep_alive: 0,
            sessions: SessionLimits::default(),
            clients: ClientIds::default(),
        }
    }
}

impl MqttSettings {
    /// These settings in multi-tenant mode (`tenants`): an MQTT topic
    /// name's first level is its namespace, and a name or filter without
    /// a second level is refused.
    pub fn with_tenants(mut self, tenants: bool) -> MqttSettings {
        self.tenants = tenants;
        self
    }

    /// The namespace and native topic of an MQTT topic name or filter:
    /// the listener's namespace and the name, or, in multi-tenant mode,
    /// its first level (no wildcard) and the rest (not empty). `None` when
    /// it has no such parts.
    pub(crate) fn split<'a>(&'a self, name: &'a str) -> Option<(&'a str, &'a str)> {
        if !self.tenants {
            return Some((&self.namespace, name));
        }
        let (namespace, rest) = name.split_once('/')?;
        (!rest.is_empty()
            && !namespace.is_empty()
            && !namespace.contains(['+', '#'])
            && corebus_net::validate_namespace(namespace.as_bytes()).is_ok())
        .then_some((namespace, rest))
    }

    /// These settings with sessions outliving their connections within
    /// `limits`.
    pub fn with_sessions(mut self, limits: SessionLimits) -> MqttSettings {
        self.sessions = limits;
        self
    }

    /// These settings with 5.0 clients' keep-alive capped at `seconds` (0:
    /// no cap): a client asking for more, or for none, is told the cap in
    /// `server_keep_alive`.
    pub fn with_max_keep_alive(mut self, seconds: u16) -> MqttSettings {
        self.max_keep_alive = seconds;
        self
    }

    /// What connections here told this node's registry for client ids whose
    /// entries moved to another home, as the requests for those homes.
    pub(crate) fn client_id_forwards(
        &self,
        max_body: usize,
    ) -> Vec<(std::net::SocketAddr, (u8, Bytes))> {
        self.clients
            .take_forwards()
            .into_iter()
            .map(|(home, id, request)| (home, homes::wire::encode(&request, &id, max_body)))
            .collect()
    }

    /// Takes the client ids whose home (`home_of`) is another node now out
    /// of this node's registry, as the requests that give them to it.
    pub(crate) fn moved_client_ids(
        &self,
        home_of: impl Fn(&str) -> Option<std::net::SocketAddr>,
    ) -> Vec<(std::net::SocketAddr, (u8, Bytes))> {
        self.clients
            .moved_away(home_of)
            .into_iter()
            .map(|(home, id, record)| (home, homes::wire::adopt(&id, record, home)))
            .collect()
    }
}

pub(crate) use crate::mesh::Holder;

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
    /// QoS 1 publishes received and not yet answered with `PUBACK`.
    unanswered_at_least_once: usize,
    /// The will, as the publish it becomes, until a clean `DISCONNECT`
    /// (boxed: most connections have none).
    will: Option<Box<Publish>>,
    /// Set once the client subscribes with `no_local`: its publishes then
    /// carry this connection's id (a random number) in their origin header,
    /// by which its `no_local` filters know them.
    origin: Option<u64>,
    /// Deliveries at QoS 1 and 2 the client has not finished acknowledging,
    /// by packet id.
    outbound: FxHashMap<u16, outbound::InFlight>,
    /// Bytes those hold (they are kept to be sent again on a new
    /// connection to the session): at most the settings' `waiting_limit`
    /// is sent and unacknowledged at a time.
    outbound_bytes: usize,
    /// Counts deliveries sent, for their order.
    sent: u64,
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
    /// The keep-alive the server chose for a 5.0 client, for the `CONNACK`.
    server_keep_alive: Option<u16>,
    /// The `CONNECT` asked for a new session.
    clean_start: bool,
    /// How long the session outlives the connection, in seconds (0: it
    /// ends with it).
    expiry_secs: u32,
    /// The `CONNECT` was accepted (the session exists).
    accepted: bool,
    /// The session expiry a 5.0 `CONNACK` tells, when not the one asked.
    told_expiry: Option<u32>,
    /// How long after the connection is lost its will is published.
    will_delay_secs: u32,
    /// When the connection was lost without a clean `DISCONNECT` (Unix ms).
    lost_at: Option<u64>,
    /// When the connection was detached, its session living on (Unix ms).
    detached_at: Option<u64>,
    /// Bytes queued while detached, counted against the listener's limit.
    charged: usize,
    /// Messages dropped while detached, not yet counted by the engine.
    session_drops: u64,
    /// Another connection takes the session over: deliveries are queued
    /// for it, as when detached.
    handing_over: bool,
    /// The reader reads what the client still sends after the protocol
    /// ended it, while the writer sends the last words.
    lingering: bool,
    /// The session this connection takes over, until its subscriptions
    /// are in place; then the request for it, until the writer sends it.
    resume_from: Option<Holder>,
    wanted: Option<Wanted>,
    /// When the client id's home is another node (boxed: most are not).
    remote: Option<Box<homes::Remote>>,
    /// (Boxed: 400 bytes that every connection would carry for its life.)
    connack_properties: Option<Box<Properties>>,
    /// What most connections never use, made on first use ([`Rare`]).
    rare: Option<Box<Rare>>,
}

/// The parts of an MQTT connection's state that most connections never use:
/// kept apart and made on first use, so that an idle connection does not
/// carry their room (about 180 bytes).
#[derive(Debug, Default)]
struct Rare {
    /// QoS 2 packet ids received and not yet released by `PUBREL`.
    unreleased: FxHashSet<u16>,
    /// Retained messages fetched for a `SUBSCRIBE` whose `SUBACK` has not
    /// gone out yet, by its packet id: they follow it.
    held: Vec<(u16, outbound::Matched)>,
    /// Topic aliases the client set in its publishes, by number (at most
    /// `inbound::CLIENT_ALIASES`).
    client_aliases: FxHashMap<u16, MqttStr>,
    /// The topic aliases given to the client, by topic.
    aliases: FxHashMap<String, u16>,
    /// The topic (hashed), epoch and sequence number of the last messages
    /// sent to the client, while the session outlives the connection: a
    /// connection taking it over leaves out its own copies of them.
    recent: VecDeque<(u64, corebus_net::Epoch, corebus_net::Seq)>,
    /// Answers rendered while the `CONNACK` waits for the session, and
    /// the `CONNACK`'s properties.
    held_output: BytesMut,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for `CONNECT`.
    Connect,
    /// `HELLO` sent; the engine's answer becomes the `CONNACK`.
    Connecting,
    /// Accepted; the `CONNACK` waits for the session this connection
    /// takes over.
    Resuming,
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
    /// A `FETCH_RETAINED` under the fetch's own subscription id.
    Fetch {
        sub_id: u32,
    },
}

/// One native subscription of an MQTT filter.
#[derive(Debug)]
struct Sub {
    /// The QoS granted to its filter.
    qos: QoS,
    /// The filter's subscription identifier (5.0), sent with its messages.
    identifier: Option<u32>,
    /// The topic, for a subscription to one topic (its `MESSAGE`s carry no
    /// topic); `None` for a pattern, and for a topic whose name is no MQTT
    /// string (U+0000, over 65,535 bytes), whose messages are not
    /// delivered. Checked once, and shared by every delivery (a copy per
    /// message cost a tenth of a fan-out's time).
    topic: Option<MqttStr>,
    /// The filter starts with a wildcard: `$` topics are not its.
    wildcard_first: bool,
    /// Multi-tenant mode: the namespace and its `/`, which the MQTT name
    /// of a pattern's message starts with.
    prefix: Option<Box<str>>,
    /// Live messages keep the retain flag they were published with (5.0
    /// `retain_as_published`); otherwise it is cleared.
    retain_as_published: bool,
    /// The connection's own publishes are not delivered to it (5.0
    /// `no_local`).
    no_local: bool,
    /// Not a subscription: the fetch of a filter's retained messages,
    /// whose deliveries carry the retain flag, until its `REPLAY_END`.
    fetch: Option<Fetching>,
}

/// A retained fetch's native request, and the `SUBSCRIBE` it belongs to:
/// its deliveries wait for that `SUBACK`.
#[derive(Debug, Clone, Copy)]
struct Fetching {
    request_id: u32,
    packet_id: u16,
}

#[derive(Debug)]
struct AckWait {
    unsubscribe: bool,
    codes: Vec<u8>,
    outstanding: usize,
}

impl MqttConn {
    /// The rarely used parts, made now if they were not.
    fn rare(&mut self) -> &mut Rare {
        self.rare.get_or_insert_with(Box::default)
    }

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
            unanswered_at_least_once: 0,
            will: None,
            origin: None,
            outbound: FxHashMap::default(),
            outbound_bytes: 0,
            sent: 0,
            next_packet_id: 0,
            client_receive_max: usize::from(u16::MAX),
            waiting: VecDeque::new(),
            waiting_bytes: 0,
            dropped: 0,
            client_alias_max: 0,
            server_keep_alive: None,
            clean_start: true,
            expiry_secs: 0,
            accepted: false,
            told_expiry: None,
            will_delay_secs: 0,
            lost_at: None,
            detached_at: None,
            charged: 0,
            session_drops: 0,
            handing_over: false,
            lingering: false,
            resume_from: None,
            remote: None,
            wanted: None,
            connack_properties: None,
            rare: None,
        }
    }

    /// Whether the writer has bytes of ours to send: answers, or waiting
    /// deliveries the client now has room for.
    pub(crate) fn has_pending(&self) -> bool {
        !self.pending.is_empty()
            || self.wanted.is_some()
            || (!self.waiting.is_empty() && self.has_room() && !self.holds_deliveries())
    }

    /// Whether the client takes another delivery at QoS 1 or 2.
    pub(super) fn has_room(&self) -> bool {
        self.outbound.len() < self.client_receive_max
            && self.outbound_bytes < self.settings.waiting_limit
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
            let key =
                native_topic(&self.settings, will.topic.as_str()).and_then(|(namespace, topic)| {
                    TopicKey::new(namespace.as_bytes(), topic.as_bytes()).ok()
                });
            let Some(topic) = key else {
                debug!(topic = ?will.topic, "MQTT will to a topic name refused");
                if v5 {
                    self.answer_connect(reason::TOPIC_INVALID, Properties::default());
                }
                return Input::End;
            };
            self.will = Some(Box::new(Publish {
                request_id: 0,
                ack: false,
                topic,
                body: Body::with_headers(
                    PayloadFormat::Plain,
                    will.qos.bits(),
                    &props::headers_of(&will.properties, crate::auth::unix_now_ms),
                    &will.payload,
                )
                .retained_if(will.retain),
            }));
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
        }
        self.clean_start = connect.clean_start;
        let asked = match self.version {
            Version::V5 => connect.properties.session_expiry.unwrap_or(0),
            _ if connect.clean_start => 0,
            _ => u32::MAX,
        };
        self.expiry_secs = asked.min(self.settings.sessions.expiry_max_secs);
        self.told_expiry = (v5 && self.expiry_secs != asked).then_some(self.expiry_secs);
        self.will_delay_secs = connect
            .will
            .as_ref()
            .and_then(|will| will.properties.will_delay)
            .unwrap_or(0);
        let mut keep_alive = connect.keep_alive;
        let cap = self.settings.max_keep_alive;
        if v5 && cap > 0 && (keep_alive == 0 || keep_alive > cap) {
            // 5.0 lets the server choose (`server_keep_alive` in the
            // CONNACK); 3.1.1 does not, so its clients keep theirs.
            keep_alive = cap;
            self.server_keep_alive = Some(cap);
        }
        self.keep_alive = Some((keep_alive > 0).then(|| u64::from(keep_alive) * 1500));
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
        if v5 && connect.properties.auth_method.is_some() {
            return Some(reason::BAD_AUTH_METHOD);
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
                let known = self
                    .rare
                    .as_mut()
                    .is_some_and(|rare| rare.unreleased.remove(&ack.packet_id));
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
                self.expiry_on_disconnect(disconnect.properties.session_expiry);
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

    /// Whether the reader is to linger (see `conn::linger`): when the
    /// server ended the connection with last words for the client (a
    /// `DISCONNECT` or refusing `CONNACK`); the writer then closes only its
    /// sending side.
    pub(crate) fn linger(&mut self) -> bool {
        self.lingering = !self.pending.is_empty();
        self.lingering
    }

    /// Whether the reader lingers.
    pub(crate) fn is_lingering(&self) -> bool {
        self.lingering
    }

    /// The last bytes of a closing connection.
    /// (The client id stays held: a session may outlive the connection.)
    pub(crate) fn close(&mut self) -> Vec<u8> {
        if self.is_detached() {
            // The session lives on without the connection.
            return Vec::new();
        }
        self.phase = Phase::Done;
        std::mem::take(&mut self.pending).to_vec()
    }
}

impl MqttConn {
    /// Frees the client id this connection holds, if it still does, and
    /// what its detached session counted.
    pub(crate) fn release_client_id(&mut self) {
        self.uncharge();
        if let Some(holder) = self.holder.take() {
            if let Some(holder) = self.release_at_home(holder) {
                self.settings.clients.release(&self.client_id, holder);
            }
        }
    }
}

impl Drop for MqttConn {
    fn drop(&mut self) {
        self.release_client_id();
    }
}

fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    let _ = getrandom::fill(&mut bytes);
    u64::from_ne_bytes(bytes)
}
