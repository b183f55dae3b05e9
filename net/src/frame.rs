//! The frames of protocol version 1. `docs/protocol.md` is their byte-exact
//! specification; the field order here follows it.

use bytes::{BufMut, Bytes, BytesMut};

use crate::headers::{check_headers, strip_headers, FORMAT_HEADERS};
use crate::{ErrorCode, FrameError, Headers, Seq, TopicKey};

/// Bit 0 of `PUBLISH`'s flags: the client wants a `PUB_ACK`.
pub const PUBLISH_FLAG_ACK: u8 = 0x01;

/// Bit 0 of a body's format byte: the payload is one zstd frame.
pub const FORMAT_ZSTD: u8 = 0x01;

/// Bits 1 and 2 of a body's format byte: the delivery QoS the publisher
/// asked for, as MQTT counts it (0 at most once, 1 at least once, 2 exactly
/// once; 3 is undefined). An MQTT subscriber gets the message at the lower of
/// this and its subscription's QoS; native clients ignore it.
pub const FORMAT_QOS_MASK: u8 = 0b0110;

/// Bit 4 of a body's format byte (version 2): the publisher asks the
/// topic's owner to keep the message as the topic's retained message (an
/// empty payload clears it), what MQTT calls a retained publish.
pub const FORMAT_RETAIN: u8 = 0x10;

/// Whether a format byte sets only defined bits (zstd, a QoS of 0 to 2,
/// headers and retain).
pub fn format_byte_is_valid(byte: u8) -> bool {
    byte & !(FORMAT_ZSTD | FORMAT_QOS_MASK | FORMAT_HEADERS | FORMAT_RETAIN) == 0
        && byte & FORMAT_QOS_MASK != FORMAT_QOS_MASK
}

/// How a message's payload is encoded: the format byte that opens the body
/// of every `PUBLISH` and `MESSAGE` (`docs/protocol.md`, section 6.3). The
/// broker carries it with the payload and never looks further.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PayloadFormat {
    /// The payload is the publisher's bytes as they are.
    Plain,
    /// The payload is one zstd frame (RFC 8878); the subscriber decompresses.
    Zstd,
}

impl PayloadFormat {
    /// The format byte for this format.
    pub fn byte(self) -> u8 {
        match self {
            PayloadFormat::Plain => 0,
            PayloadFormat::Zstd => FORMAT_ZSTD,
        }
    }

    /// The format byte for this format and a publisher's delivery QoS (0 to
    /// 2; more counts as 2).
    pub fn byte_with_qos(self, qos: u8) -> u8 {
        self.byte() | (qos.min(2) << 1)
    }

    /// The format a format byte names (its bit 0; the QoS bits do not
    /// change it); `None` for one with undefined bits.
    pub fn from_byte(byte: u8) -> Option<PayloadFormat> {
        if !format_byte_is_valid(byte) {
            return None;
        }
        Some(if byte & FORMAT_ZSTD != 0 {
            PayloadFormat::Zstd
        } else {
            PayloadFormat::Plain
        })
    }
}

/// A message's body as `PUBLISH` and `MESSAGE` carry it: the format byte,
/// then the payload. The broker keeps and forwards bodies whole, so a
/// message's format travels with it through the replay ring, the shards and
/// the links between nodes without a field of its own.
///
/// A `Body` always holds a known format byte: [`Body::parse`] checks it.
#[derive(Clone, PartialEq, Eq)]
pub struct Body(Bytes);

impl Body {
    /// A body of `format` around `payload` (copied after the format byte).
    pub fn new(format: PayloadFormat, payload: &[u8]) -> Body {
        Body::with_qos(format, 0, payload)
    }

    /// A plain body around `payload`.
    pub fn plain(payload: &[u8]) -> Body {
        Body::new(PayloadFormat::Plain, payload)
    }

    /// A body of `format` around `payload` whose publisher asked for
    /// delivery at `qos` (0 to 2, as MQTT counts; see [`FORMAT_QOS_MASK`]).
    pub fn with_qos(format: PayloadFormat, qos: u8, payload: &[u8]) -> Body {
        let mut bytes = Vec::with_capacity(1 + payload.len());
        bytes.push(format.byte_with_qos(qos));
        bytes.extend_from_slice(payload);
        Body(Bytes::from(bytes))
    }

    /// A body of `format` with `headers` (none when they are empty, which
    /// is the version 1 layout) around `payload`, whose publisher asked for
    /// delivery at `qos`.
    pub fn with_headers(format: PayloadFormat, qos: u8, headers: &Headers, payload: &[u8]) -> Body {
        if headers.is_empty() {
            return Body::with_qos(format, qos, payload);
        }
        let mut bytes = BytesMut::with_capacity(3 + headers.encoded_len() + payload.len());
        bytes.put_u8(format.byte_with_qos(qos) | FORMAT_HEADERS);
        headers.encode(&mut bytes);
        bytes.put_slice(payload);
        Body(bytes.freeze())
    }

    /// This body with the retain bit set when `retain` is (a copy then),
    /// else as it is.
    pub fn retained_if(self, retain: bool) -> Body {
        if !retain || self.retain() {
            return self;
        }
        let mut bytes = self.0.to_vec();
        bytes[0] |= FORMAT_RETAIN;
        Body(Bytes::from(bytes))
    }

    /// Whether the publisher asked for the message to be retained.
    pub fn retain(&self) -> bool {
        self.0[0] & FORMAT_RETAIN != 0
    }

    /// Whether the body carries a headers block.
    pub fn has_headers(&self) -> bool {
        self.0[0] & FORMAT_HEADERS != 0
    }

    /// The message's headers (empty when the body has none).
    pub fn headers(&self) -> Headers {
        if !self.has_headers() {
            return Headers::default();
        }
        let len = usize::from(u16::from_be_bytes([self.0[1], self.0[2]]));
        // `parse` and `with_headers` admit well-formed blocks only.
        Headers::decode(&self.0.slice(3..3 + len)).unwrap_or_default()
    }

    /// The same message without its headers, for a connection that speaks
    /// protocol version 1 (a copy when there were some).
    pub fn without_headers(&self) -> Body {
        strip_headers(&self.0).map_or_else(|| self.clone(), Body)
    }

    /// The delivery QoS the publisher asked for (0 to 2; 0 for a native
    /// publisher).
    pub fn qos(&self) -> u8 {
        (self.0[0] & FORMAT_QOS_MASK) >> 1
    }

    /// Checks the format byte at the start of `bytes` (a body as a frame
    /// carried it). `frame` names the frame in the error.
    pub fn parse(bytes: Bytes, frame: &'static str) -> Result<Body, FrameError> {
        match bytes.first() {
            None => Err(FrameError::Truncated {
                frame,
                field: "format",
                offset: 0,
                need: 1,
                have: 0,
            }),
            Some(&byte) if PayloadFormat::from_byte(byte).is_none() => {
                Err(FrameError::UnknownFlags { frame, flags: byte })
            }
            Some(_) => {
                check_headers(&bytes, frame)?;
                Ok(Body(bytes))
            }
        }
    }

    /// How the payload is encoded.
    pub fn format(&self) -> PayloadFormat {
        // `parse` and `new` admit known format bytes only.
        PayloadFormat::from_byte(self.0[0]).unwrap_or(PayloadFormat::Plain)
    }

    /// The payload: the bytes after the format byte and the headers (a
    /// slice, not a copy).
    pub fn payload(&self) -> Bytes {
        // `parse` and `with_headers` admit well-formed blocks only.
        let start = if self.has_headers() {
            3 + usize::from(u16::from_be_bytes([self.0[1], self.0[2]]))
        } else {
            1
        };
        self.0.slice(start..)
    }

    /// The whole body, format byte first.
    pub fn as_bytes(&self) -> &Bytes {
        &self.0
    }

    /// The whole body, format byte first.
    pub fn into_bytes(self) -> Bytes {
        self.0
    }

    /// Bytes in the body: the payload's and the format byte.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Never true: a body holds at least its format byte.
    pub fn is_empty(&self) -> bool {
        false
    }
}

impl std::fmt::Debug for Body {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Body")
            .field("format", &self.format())
            .field("payload", &self.payload())
            .finish()
    }
}

/// The opcode byte that follows every length prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Opcode {
    /// Client → server: opens the connection.
    Hello = 0x01,
    /// Client → server: publish one message.
    Publish = 0x02,
    /// Client → server: start a subscription.
    Subscribe = 0x03,
    /// Client → server: end a subscription.
    Unsubscribe = 0x04,
    /// Either direction: liveness probe.
    Ping = 0x05,
    /// Either direction: answer to `PING`.
    Pong = 0x06,
    /// Client → server: mint a scoped token (super-user credentials only).
    TokenRequest = 0x07,
    /// Client → server: manage webhooks (super-user credentials only).
    WebhookRequest = 0x08,
    /// Client → server: ask about the cluster (super-user credentials only).
    ClusterRequest = 0x09,
    /// Node → node: hand a topic's state over (links between the nodes of
    /// a cluster only).
    HandoffRequest = 0x0a,
    /// Client → server: the retained messages of a topic or pattern
    /// (version 2), answered with `TOPIC_MESSAGE`s and a `REPLAY_END`.
    FetchRetained = 0x0b,
    /// Client → server: join a shared subscription (version 2): each
    /// message of the topic or pattern goes to one member of the group.
    SubscribeShared = 0x0c,
    /// Node → node: a request about an MQTT session, whose home is a node
    /// (links between the nodes of a cluster only).
    SessionRequest = 0x0d,
    /// Server → client: the handshake succeeded.
    Welcome = 0x81,
    /// Server → client: a publish was sequenced.
    PubAck = 0x82,
    /// Server → client: a subscription is active.
    SubOk = 0x83,
    /// Server → client: a subscription ended.
    UnsubOk = 0x84,
    /// Server → client: a message for a subscription.
    Message = 0x85,
    /// Server → client: messages of a subscription were lost.
    Discontinuity = 0x86,
    /// Server → client: the server is shutting down; reconnect elsewhere.
    GoAway = 0x87,
    /// Server → client: a minted token.
    Token = 0x88,
    /// Server → client: the answer to a `WEBHOOK_REQUEST`.
    WebhookReply = 0x89,
    /// Server → client: the answer to a `CLUSTER_REQUEST`.
    ClusterReply = 0x8a,
    /// Server → peer node: the replay that followed a `SUB_OK` ends here
    /// (sent on links between the nodes of a cluster only).
    ReplayEnd = 0x8b,
    /// Server → client: a message for a pattern subscription, with its
    /// topic.
    TopicMessage = 0x8c,
    /// Node → node: the answer to a `SESSION_REQUEST` (links between the
    /// nodes of a cluster only).
    SessionReply = 0x8d,
    /// Server → client: a request (or the connection) failed.
    Error = 0x8f,
}

impl Opcode {
    /// Maps an opcode byte to a known opcode.
    pub fn from_u8(byte: u8) -> Option<Opcode> {
        Some(match byte {
            0x01 => Opcode::Hello,
            0x02 => Opcode::Publish,
            0x03 => Opcode::Subscribe,
            0x04 => Opcode::Unsubscribe,
            0x05 => Opcode::Ping,
            0x06 => Opcode::Pong,
            0x07 => Opcode::TokenRequest,
            0x08 => Opcode::WebhookRequest,
            0x09 => Opcode::ClusterRequest,
            0x0a => Opcode::HandoffRequest,
            0x0b => Opcode::FetchRetained,
            0x0c => Opcode::SubscribeShared,
            0x0d => Opcode::SessionRequest,
            0x81 => Opcode::Welcome,
            0x82 => Opcode::PubAck,
            0x83 => Opcode::SubOk,
            0x84 => Opcode::UnsubOk,
            0x85 => Opcode::Message,
            0x86 => Opcode::Discontinuity,
            0x87 => Opcode::GoAway,
            0x88 => Opcode::Token,
            0x89 => Opcode::WebhookReply,
            0x8a => Opcode::ClusterReply,
            0x8b => Opcode::ReplayEnd,
            0x8c => Opcode::TopicMessage,
            0x8d => Opcode::SessionReply,
            0x8f => Opcode::Error,
            _ => return None,
        })
    }

    /// True for frames that only a server sends.
    pub fn is_server_frame(self) -> bool {
        (self as u8) & 0x80 != 0
    }
}

/// `HELLO`: the client's first frame.
///
/// Its `Debug` output shows the credentials' length only, so a logged frame
/// never leaks the key or token.
#[derive(Clone, PartialEq, Eq)]
pub struct Hello {
    /// Protocol version the client speaks.
    pub version: u16,
    /// Free-form client name for logs (may be empty).
    pub client_name: String,
    /// An API key or a token (JWT); empty when the client has none.
    /// Credentials travel in the handshake only.
    pub credentials: Bytes,
}

impl std::fmt::Debug for Hello {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hello")
            .field("version", &self.version)
            .field("client_name", &self.client_name)
            .field(
                "credentials",
                &format_args!("<{} bytes redacted>", self.credentials.len()),
            )
            .finish()
    }
}

/// `WELCOME`: the server accepted the handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Welcome {
    /// Protocol version the server will speak on this connection.
    pub version: u16,
    /// Largest length field the server accepts.
    pub max_frame: u32,
    /// The shard that owns this connection.
    pub shard: u16,
    /// How many shards the broker runs.
    pub shard_count: u16,
}

/// `PUBLISH`: one message for a topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    /// Client-chosen id echoed in `PUB_ACK` or `ERROR`.
    pub request_id: u32,
    /// Whether a `PUB_ACK` is wanted.
    pub ack: bool,
    /// Target topic.
    pub topic: TopicKey,
    /// The format byte and the payload, opaque to the broker.
    pub body: Body,
}

/// `PUB_ACK`: the sequence number assigned to a publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PubAck {
    /// The publish's request id.
    pub request_id: u32,
    /// The topic sequence number it was given.
    pub seq: Seq,
}

/// Epoch of a topic: a random, non-zero id of one incarnation of the topic's
/// state on its owner. Sequence numbers restart at 1 in a new epoch.
pub type Epoch = u64;

/// Where a resumed subscription wants to continue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResumePoint {
    /// The epoch the client's history belongs to; 0 means "whatever the
    /// current epoch is" (as `corebus sub --from` uses).
    pub epoch: Epoch,
    /// The first sequence number the client wants (its last one plus 1).
    /// Never 0.
    pub next_seq: Seq,
}

/// `SUBSCRIBE`: start receiving a topic under a client-chosen id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    /// Client-chosen id echoed in `SUB_OK` or `ERROR`.
    pub request_id: u32,
    /// Client-chosen subscription id, unique among the connection's live ones.
    pub sub_id: u32,
    /// Replay from this point first; `None` for live messages only.
    pub resume: Option<ResumePoint>,
    /// Topic to receive.
    pub topic: TopicKey,
}

/// `SUBSCRIBE_SHARED`: join a group's shared subscription to a topic or
/// pattern (version 2). Each message goes to one member of the group (the
/// connections of the broker that joined the same group, namespace and
/// topic); messages come as `TOPIC_MESSAGE`s, with their topic's sequence
/// numbers, of which a member sees only its share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscribeShared {
    /// Client-chosen id echoed in `SUB_OK` or `ERROR`.
    pub request_id: u32,
    /// Client-chosen subscription id, unique among the connection's live ones.
    pub sub_id: u32,
    /// The group: 1 to 255 bytes of UTF-8, without `/`, `+`, `#`, `*`, `>`
    /// or control characters.
    pub group: String,
    /// The topic or pattern.
    pub topic: TopicKey,
}

/// `SUB_OK`: the subscription is live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubOk {
    /// The subscribe's request id.
    pub request_id: u32,
    /// The subscription id.
    pub sub_id: u32,
    /// The topic's current epoch.
    pub epoch: Epoch,
    /// The subscription receives every message of `epoch` with a sequence
    /// number greater than this one (replayed first, when resuming), and none
    /// at or below it. A `DISCONTINUITY` may follow when a resume point could
    /// not be honoured.
    pub start_after: Seq,
}

/// `UNSUBSCRIBE`: stop a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unsubscribe {
    /// Client-chosen id echoed in `UNSUB_OK` or `ERROR`.
    pub request_id: u32,
    /// The subscription to end.
    pub sub_id: u32,
}

/// `UNSUB_OK`: the subscription has ended; no message for it follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnsubOk {
    /// The unsubscribe's request id.
    pub request_id: u32,
    /// The subscription id, now free for reuse.
    pub sub_id: u32,
}

/// `MESSAGE`: one message delivered to a subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The subscription it is for.
    pub sub_id: u32,
    /// The topic's epoch.
    pub epoch: Epoch,
    /// Its topic sequence number.
    pub seq: Seq,
    /// The body, format byte and payload, as published.
    pub body: Body,
}

/// `DISCONTINUITY`: messages of a subscription were lost (a resume point the
/// replay buffer no longer covers, another epoch, or messages dropped because
/// the connection's outbound queue was full). The next `MESSAGE` of the
/// subscription carries `next_seq`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Discontinuity {
    /// The subscription it is for.
    pub sub_id: u32,
    /// The epoch `next_seq` belongs to.
    pub epoch: Epoch,
    /// The last sequence number the subscription received (or, on a resume,
    /// the one before its resume point), possibly of an older epoch.
    pub last_seq: Seq,
    /// The first sequence number it will receive next, in `epoch`.
    pub next_seq: Seq,
}

/// `REPLAY_END`: sent to a peer node only (a connection authenticated as a
/// member of the cluster), after the messages replayed for a resuming
/// subscription and before its live ones, so that the peer knows where the
/// owner's replay ring ended when it subscribed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplayEnd {
    /// The subscription it is for.
    pub sub_id: u32,
    /// The last sequence number replayed (the `SUB_OK`'s `start_after` when
    /// nothing was).
    pub last_seq: Seq,
}

/// `TOPIC_MESSAGE`: one message delivered to a pattern subscription (a
/// `SUBSCRIBE` whose topic is a pattern), with the concrete topic it was
/// published to and that topic's own epoch and sequence number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicMessage {
    /// The subscription it is for.
    pub sub_id: u32,
    /// The topic's epoch.
    pub epoch: Epoch,
    /// Its sequence number in that topic.
    pub seq: Seq,
    /// The topic it was published to (in the subscription's namespace).
    pub topic: String,
    /// The body, format byte and payload, as published.
    pub body: Body,
}

/// `TOKEN_REQUEST`: asks the server to mint a short-lived scoped token.
/// Only a connection authenticated with a super-user key may.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRequest {
    /// Client-chosen id echoed in `TOKEN` or `ERROR`.
    pub request_id: u32,
    /// Lifetime in seconds (capped by the server's maximum).
    pub ttl_secs: u32,
    /// The token's subject and permissions as a JSON object (see
    /// `docs/security.md`).
    pub claims: String,
}

/// `TOKEN`: a minted token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    /// The request's id.
    pub request_id: u32,
    /// The token (a JWT).
    pub token: String,
}

/// `WEBHOOK_REQUEST`: adds, lists, removes or re-keys webhooks. Only a
/// connection authenticated with a super-user key may.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookRequest {
    /// Client-chosen id echoed in `WEBHOOK_REPLY` or `ERROR`.
    pub request_id: u32,
    /// The command as a JSON object (see `docs/webhooks.md`).
    pub command: String,
}

/// `WEBHOOK_REPLY`: what a `WEBHOOK_REQUEST` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookReply {
    /// The request's id.
    pub request_id: u32,
    /// The result as a JSON object (see `docs/webhooks.md`).
    pub result: String,
}

/// `CLUSTER_REQUEST`: asks about the cluster (its members, a topic's owner).
/// Only a connection authenticated with a super-user key may.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterRequest {
    /// Client-chosen id echoed in `CLUSTER_REPLY` or `ERROR`.
    pub request_id: u32,
    /// The command as a JSON object (see `docs/cluster.md`).
    pub command: String,
}

/// `CLUSTER_REPLY`: the answer to a `CLUSTER_REQUEST`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterReply {
    /// The request's id.
    pub request_id: u32,
    /// The result as a JSON object (see `docs/cluster.md`).
    pub result: String,
}

/// `SESSION_REQUEST` and `SESSION_REPLY`: what the nodes of a cluster tell
/// each other about MQTT sessions (which connection holds a client id, and
/// a session that moves to a connection on another node). The body's
/// layout is the broker's own, chosen by `kind`; nodes of one cluster run
/// the same version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionFrame {
    /// The request's id, echoed by its reply; 0 when none is wanted.
    pub request_id: u32,
    /// What the body says.
    pub kind: u8,
    /// The rest of the frame.
    pub body: Bytes,
}

/// `GOAWAY`: the server is shutting down. It accepts no new requests on this
/// connection, flushes what is queued, and closes within `drain_ms`; a client
/// should reconnect (and resume) at once instead of waiting for a timeout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GoAway {
    /// Milliseconds until the server closes the connection at the latest.
    pub drain_ms: u32,
    /// Human-readable reason.
    pub message: String,
}

/// `ERROR`: a request failed, or the connection is being closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorFrame {
    /// The failed request's id, or 0 when the error concerns the connection.
    pub request_id: u32,
    /// The raw wire code; see [`ErrorFrame::code`].
    pub code: u16,
    /// True when the server closes the connection after this frame.
    pub fatal: bool,
    /// Human-readable explanation.
    pub message: String,
}

impl ErrorFrame {
    /// Builds an error frame.
    pub fn new(request_id: u32, code: ErrorCode, fatal: bool, message: impl Into<String>) -> Self {
        ErrorFrame {
            request_id,
            code: code as u16,
            fatal,
            message: message.into(),
        }
    }

    /// The typed code, or `None` for a code this version does not know.
    pub fn code(&self) -> Option<ErrorCode> {
        ErrorCode::from_u16(self.code)
    }
}

/// One decoded frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// See [`Hello`].
    Hello(Hello),
    /// See [`Welcome`].
    Welcome(Welcome),
    /// See [`Publish`].
    Publish(Publish),
    /// See [`PubAck`].
    PubAck(PubAck),
    /// See [`Subscribe`].
    Subscribe(Subscribe),
    /// See [`SubOk`].
    SubOk(SubOk),
    /// See [`Unsubscribe`].
    Unsubscribe(Unsubscribe),
    /// See [`UnsubOk`].
    UnsubOk(UnsubOk),
    /// See [`Message`].
    Message(Message),
    /// See [`Discontinuity`].
    Discontinuity(Discontinuity),
    /// See [`GoAway`].
    GoAway(GoAway),
    /// See [`TokenRequest`].
    TokenRequest(TokenRequest),
    /// See [`Token`].
    Token(Token),
    /// See [`WebhookRequest`].
    WebhookRequest(WebhookRequest),
    /// See [`WebhookReply`].
    WebhookReply(WebhookReply),
    /// See [`ClusterRequest`].
    ClusterRequest(ClusterRequest),
    /// See [`ClusterReply`].
    ClusterReply(ClusterReply),
    /// See [`ReplayEnd`].
    ReplayEnd(ReplayEnd),
    /// See [`TopicMessage`].
    TopicMessage(TopicMessage),
    /// `HANDOFF_REQUEST`: from one node of a cluster to another (a
    /// connection authenticated as a member only), with the body of a
    /// `SUBSCRIBE`. The receiver answers from its state of the topic as a
    /// resuming subscription is answered (`SUB_OK`, the replay, then
    /// `REPLAY_END`), or with an `ERROR` when it holds none, and from then
    /// on forwards the topic to the sender, which owns it: no subscription
    /// is made.
    HandoffRequest(Subscribe),
    /// `FETCH_RETAINED`: the layout of `SUBSCRIBE`, without a resume point
    /// (version 2).
    FetchRetained(Subscribe),
    /// See [`SubscribeShared`].
    SubscribeShared(SubscribeShared),
    /// `SESSION_REQUEST`: see [`SessionFrame`].
    SessionRequest(SessionFrame),
    /// `SESSION_REPLY`: see [`SessionFrame`].
    SessionReply(SessionFrame),
    /// `PING` with its nonce.
    Ping(u64),
    /// `PONG` echoing a `PING`'s nonce.
    Pong(u64),
    /// See [`ErrorFrame`].
    Error(ErrorFrame),
}

impl Frame {
    /// The frame's opcode.
    pub fn opcode(&self) -> Opcode {
        match self {
            Frame::Hello(_) => Opcode::Hello,
            Frame::Welcome(_) => Opcode::Welcome,
            Frame::Publish(_) => Opcode::Publish,
            Frame::PubAck(_) => Opcode::PubAck,
            Frame::Subscribe(_) => Opcode::Subscribe,
            Frame::SubOk(_) => Opcode::SubOk,
            Frame::Unsubscribe(_) => Opcode::Unsubscribe,
            Frame::UnsubOk(_) => Opcode::UnsubOk,
            Frame::Message(_) => Opcode::Message,
            Frame::Discontinuity(_) => Opcode::Discontinuity,
            Frame::GoAway(_) => Opcode::GoAway,
            Frame::TokenRequest(_) => Opcode::TokenRequest,
            Frame::Token(_) => Opcode::Token,
            Frame::WebhookRequest(_) => Opcode::WebhookRequest,
            Frame::WebhookReply(_) => Opcode::WebhookReply,
            Frame::ClusterRequest(_) => Opcode::ClusterRequest,
            Frame::ClusterReply(_) => Opcode::ClusterReply,
            Frame::ReplayEnd(_) => Opcode::ReplayEnd,
            Frame::TopicMessage(_) => Opcode::TopicMessage,
            Frame::HandoffRequest(_) => Opcode::HandoffRequest,
            Frame::FetchRetained(_) => Opcode::FetchRetained,
            Frame::SubscribeShared(_) => Opcode::SubscribeShared,
            Frame::SessionRequest(_) => Opcode::SessionRequest,
            Frame::SessionReply(_) => Opcode::SessionReply,
            Frame::Ping(_) => Opcode::Ping,
            Frame::Pong(_) => Opcode::Pong,
            Frame::Error(_) => Opcode::Error,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_server_opcodes_are_server_frames() {
        for byte in 0x01..=0x0du8 {
            let opcode = Opcode::from_u8(byte).expect("a client or either-way opcode");
            assert!(!opcode.is_server_frame(), "{opcode:?}");
        }
        for byte in (0x81..=0x8du8).chain([0x8f]) {
            let opcode = Opcode::from_u8(byte).expect("a server opcode");
            assert!(opcode.is_server_frame(), "{opcode:?}");
        }
        for byte in [0x00, 0x0e, 0x7f, 0x80, 0x8e, 0x90, 0xff] {
            assert_eq!(Opcode::from_u8(byte), None, "{byte:#04x} is not an opcode");
        }
    }
}
