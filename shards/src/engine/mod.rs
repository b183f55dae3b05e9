//! The per-shard engine: owner-side topic state, subscriber-side tables and the
//! connections a shard serves, as one synchronous state machine.
//!
//! Nothing here does I/O or awaits. Connection tasks feed it decoded frames,
//! mesh tasks feed it [`ShardMsg`]s, and it answers by pushing frames into
//! connection [`Outbox`]es and messages into per-peer mesh batches. That keeps
//! every ordering argument in one file, and lets tests drive several shards by
//! hand without sockets or executors (see `tests` below).
//!
//! It does log, through `tracing`, what an operator must see about a
//! connection (a refused handshake, a refused connection), within a budget
//! per shard ([`LogLimit`]); it runs inside the connection task's span
//! (`conn.rs`), which adds the peer's address and the connection's id.
//!
//! A `Shard` is `!Send` on purpose: it lives on one executor, and only that
//! executor's tasks mutate it, through `Rc<RefCell<Shard>>`, never across an
//! `.await`.

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::task::Waker;

use corebus_net::{Epoch, Seq, TopicKey};
use rustc_hash::FxHashMap;

use self::local::LocalTopics;
use crate::auth::{Authenticator, Grant, OpenAccess};
use crate::cluster::{ClusterControl, NoCluster};
use crate::local_ref::LocalRef;
use crate::log_limit::LogLimit;
use crate::mesh::{MeshBatch, ShardMsg};
use crate::metrics::{LatencyHistogram, ShardMetrics};
use crate::outbox::Outbox;
use crate::patterns::PatternTrie;
use crate::routing::{mix64, ShardId};
use crate::stats::ShardStats;
use crate::topic::{OwnedTopic, RingLimits};
use crate::webhooks::{NoWebhooks, WebhookSink};

/// Warnings of one kind (refused credentials, refused connections) a shard
/// logs per second at most; the rest are counted, and the count reported by
/// the next line of that kind, or by the maintenance tick once a flood stops.
const WARNINGS_PER_SECOND: u32 = 10;

/// A connection's id, unique within its shard for the life of the process
/// (and, counted from a random start, most likely across restarts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

/// What happens to a connection whose outbound queue is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlowConsumerPolicy {
    /// Messages that do not fit are dropped; once the queue drains, each
    /// affected subscription gets a `DISCONTINUITY` with the exact range lost.
    Drop,
    /// The connection is closed with a fatal `slow_consumer` error.
    Disconnect,
}

/// Limits and policies the engine enforces.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Largest frame length field accepted (announced in `WELCOME`).
    pub max_frame: u32,
    /// Largest frame length field accepted before the handshake succeeds
    /// (the `HELLO`): a peer that has proved nothing cannot make the broker
    /// hold `max_frame` bytes.
    pub max_hello_frame: u32,
    /// Most subscriptions one connection may hold at once.
    pub max_subscriptions_per_conn: usize,
    /// Most bytes of namespace and topic names one connection's
    /// subscriptions may name, all together.
    pub max_subscription_bytes_per_conn: usize,
    /// Most subscriptions all connections of the broker may hold at once.
    pub max_subscriptions: usize,
    /// Subscriptions held on all shards: one count, shared by every clone of
    /// this configuration (the runtime hands each shard a clone).
    pub subscriptions_held: Arc<AtomicUsize>,
    /// Bound on a connection's queued outbound `MESSAGE` bytes.
    pub outbox_limit_bytes: usize,
    /// The same bound for a link from another node of the cluster, which
    /// carries all that node's subscriptions to this node's topics at once.
    pub link_outbox_limit_bytes: usize,
    /// What to do when that bound is reached.
    pub slow_consumer: SlowConsumerPolicy,
    /// Bounds of each topic's replay ring.
    pub ring: RingLimits,
    /// Topic state with no subscribers and no publishes for this long is
    /// evicted (its next use starts a new epoch).
    pub topic_idle_evict_ms: u64,
    /// Memory the topic states and replay rings of all shards together may
    /// hold (as [`OwnedTopic::retained`] counts it); each shard gets an equal
    /// part. A shard over its part evicts the least recently active topics
    /// that nobody subscribes to, then shortens the replay rings, until it
    /// holds 80% of its part (see `engine/memory.rs`).
    pub topic_memory_bytes: usize,
    /// A connection silent for this long is sent a `PING`.
    pub heartbeat_interval_ms: u64,
    /// A connection silent for this long is closed (`idle_timeout`).
    pub heartbeat_timeout_ms: u64,
    /// A connection without a valid `HELLO` this long after it opened is
    /// closed (`handshake_timeout`).
    pub handshake_timeout_ms: u64,
    /// Most publishes awaiting their `PUB_ACK` on one connection.
    pub max_in_flight_per_conn: u32,
    /// Most connections one shard holds.
    pub max_connections_per_shard: usize,
    /// Most retained messages all shards together keep (each shard an
    /// equal part; see `engine/retained.rs`).
    pub retained_messages: usize,
    /// Most bytes of retained messages all shards together keep.
    pub retained_bytes: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            max_frame: corebus_net::DEFAULT_MAX_FRAME,
            max_hello_frame: corebus_net::DEFAULT_MAX_HELLO_FRAME,
            max_subscriptions_per_conn: 10_000,
            max_subscription_bytes_per_conn: 1 << 20,
            max_subscriptions: 1_000_000,
            subscriptions_held: Arc::default(),
            outbox_limit_bytes: 8 << 20,
            link_outbox_limit_bytes: 64 << 20,
            slow_consumer: SlowConsumerPolicy::Drop,
            ring: RingLimits::default(),
            topic_idle_evict_ms: 300_000,
            topic_memory_bytes: 1 << 30,
            heartbeat_interval_ms: 15_000,
            heartbeat_timeout_ms: 45_000,
            handshake_timeout_ms: 5_000,
            max_in_flight_per_conn: 16_384,
            max_connections_per_shard: 100_000,
            retained_messages: 100_000,
            retained_bytes: 256 << 20,
        }
    }
}

/// What the connection task should do after the engine handled its input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Keep reading.
    Continue,
    /// Stop reading: the connection is closing (its outbox says how).
    Close,
}

/// Subscriber-side state of a topic with local subscribers (or requests for
/// them in flight).
///
/// An entry exists from the first local subscribe until the last local
/// subscriber is gone *and* no interest request is in flight. It is never
/// removed while `active` is `None`: the owner's answer to that request is
/// still coming, and a new entry must not mistake it for the answer to a
/// newer request.
#[derive(Debug, Default)]
pub(crate) struct LocalTopic {
    /// `None` until the owner answered the first interest request.
    active: Option<ActiveTopic>,
    /// Live subscriptions waiting for activation: (conn, sub id, request id).
    waiting: Vec<(ConnId, u32, u32)>,
    /// Subscriptions receiving this shard's deliveries: (conn, sub id).
    subscribers: smallvec::SmallVec<[(ConnId, u32); 2]>,
    /// Resume requests sent to the owner and not yet answered.
    resumes_in_flight: u32,
}

#[derive(Debug, Clone, Copy)]
struct ActiveTopic {
    epoch: Epoch,
    /// Sequence number of the last message received (or the start point).
    last_seq: Seq,
}

/// Messages a subscription lost to a full outbound queue, not yet reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Lost {
    epoch: Epoch,
    first: Seq,
    last: Seq,
}

#[derive(Debug)]
struct SubState {
    /// The local table's key (one copy of the name for every subscription
    /// to the topic on this shard, none of a read buffer).
    topic: TopicKey,
    /// The resume request this subscription waits for, if any.
    resume_request: Option<u32>,
    lost: Option<Lost>,
    /// A shared subscription's group (`topic` is its topic or pattern).
    group: Option<Box<str>>,
}

/// Per-connection state.
#[derive(Debug)]
struct ConnState {
    outbox: Outbox,
    handshaken: bool,
    /// The protocol version of its `HELLO` (a version 1 connection gets
    /// messages without their headers).
    version: u16,
    /// Who the connection is and what it may do; `None` before `HELLO`.
    grant: Option<Grant>,
    /// Engine time the connection opened (for the handshake deadline).
    opened_ms: u64,
    /// Publishes with an ack requested and not yet acknowledged.
    in_flight: u32,
    subscriptions: FxHashMap<u32, SubState>,
    /// Bytes of namespace and topic the subscriptions name, all together.
    subscription_bytes: usize,
    /// Subscription ids with a `lost` range to report.
    lossy: Vec<u32>,
    /// Engine time of the last bytes received.
    last_input_ms: u64,
    ping_outstanding: bool,
    /// How the engine learns the peer is alive.
    liveness: Liveness,
    /// The connection's socket while its reader runs: shut for reading to
    /// end the connection now (a lapsed keep-alive, a session taken over).
    socket: Option<std::os::fd::RawFd>,
    /// An MQTT connection whose session another connection asked for: it
    /// goes there when this one ends.
    /// (Boxed, as the next: rare, and every connection would carry them.)
    handover: Option<Box<crate::mesh::Holder>>,
    /// What came for this MQTT connection from elsewhere: the session it
    /// asked for, or its claim's answer.
    arrived: Option<Box<sessions::Arrival>>,
}

/// How a connection shows it is alive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Liveness {
    /// It answers the engine's heartbeat `PING`s (native clients, links,
    /// WebSockets).
    Heartbeat,
    /// It sends packets of its own (an MQTT client's keep-alive): no
    /// heartbeat, and closed after this many ms without input (`None`:
    /// never).
    KeepAlive(Option<u64>),
}

impl ConnState {
    /// Queues a `TOPIC_MESSAGE` for subscription `sub_id`: encoded whole,
    /// with a copy of the body, so the frame holds no reference to the
    /// publisher's read buffer.
    fn push_topic_message(
        &mut self,
        sub_id: u32,
        epoch: Epoch,
        seq: Seq,
        topic: &TopicKey,
        payload: &bytes::Bytes,
    ) -> Result<(), crate::outbox::PushError> {
        let mut frame = bytes::BytesMut::new();
        let stripped = self.body_for_version(payload);
        corebus_net::encode_topic_message(
            &mut frame,
            sub_id,
            epoch,
            seq,
            topic.topic_bytes(),
            stripped.as_ref().unwrap_or(payload),
        );
        self.outbox
            .push(crate::outbox::OutFrame::Encoded(frame.freeze()))
    }

    /// `body` as this connection must get it, when that is not as it is
    /// (see [`delivery::body_for_version`]).
    fn body_for_version(&self, body: &[u8]) -> Option<bytes::Bytes> {
        delivery::body_for_version(self.version, body)
    }

    /// Whether the connection is a link from another node of the cluster.
    fn is_peer(&self) -> bool {
        self.grant
            .as_ref()
            .is_some_and(|grant| grant.peer.is_some())
    }
}

/// One shard's state. See the module docs for who may mutate it.
#[derive(Debug)]
pub struct Shard {
    id: ShardId,
    shard_count: usize,
    config: EngineConfig,
    owned: FxHashMap<TopicKey, OwnedTopic>,
    /// Sum of `retained()` over `owned`, kept up to date as topics are made,
    /// appended to, trimmed and evicted.
    retained: usize,
    /// This shard's part of `config.topic_memory_bytes`.
    memory_budget: usize,
    local: LocalTopics<LocalTopic>,
    /// Owner side: the pattern subscriptions of every shard (a pattern has
    /// no single owner), as (shard, its table entry).
    patterns: PatternTrie<(ShardId, LocalRef)>,
    /// Subscriber side: the patterns this shard's connections subscribe to.
    local_patterns: LocalTopics<LocalPattern>,
    /// Every group's shared subscriptions, as this shard knows them.
    shared: Vec<shared::SharedGroup>,
    /// Boxed: a connection's state is a few hundred bytes, and a table
    /// that doubles as it grows would hold up to twice that per connection
    /// inline.
    conns: FxHashMap<ConnId, Box<ConnState>>,
    next_conn: u64,
    /// Per peer: messages collected during this turn, sent as one batch.
    mesh_out: Vec<MeshBatch>,
    /// Per peer: the mesh sender task to wake when its batch becomes non-empty.
    mesh_senders: Vec<Option<Waker>>,
    /// Coarse clock in milliseconds, advanced by the runtime's maintenance tick.
    now_ms: u64,
    /// State of the epoch generator.
    rng: u64,
    stats: ShardStats,
    delivery_latency: LatencyHistogram,
    auth: Arc<dyn Authenticator>,
    webhooks: Arc<dyn WebhookSink>,
    /// Answers `CLUSTER_REQUEST`s.
    cluster: Arc<dyn ClusterControl>,
    /// Budget of `authentication failed` warnings.
    auth_failure_log: LogLimit,
    /// Budget of `connection refused` warnings.
    refusal_log: LogLimit,
    /// Budget of `TLS handshake failed` warnings.
    tls_failure_log: LogLimit,
    /// Owner side: the retained messages of this shard's topics.
    retained_messages: retained::RetainedStore,
    /// Budget of `retained message not kept` warnings.
    retained_log: LogLimit,
    /// Subscriber side: `FETCH_RETAINED`s waiting for their owners, by
    /// (connection, subscription id), and how many each connection has.
    fetches: FxHashMap<(ConnId, u32), retained::Fetch>,
    fetches_per_conn: FxHashMap<ConnId, u16>,
    /// The cluster, when this node is a member of one.
    nodes: Option<nodes::Nodes>,
    /// Shutting down: new clients are refused (links from other nodes are
    /// still served while they take the topics over).
    draining: bool,
    /// Webhook commands answered later (by a cluster's control plane),
    /// for the runtime to wait on.
    command_waits: CommandWaits,
    /// The MQTT listener's settings and client id registry, which this
    /// node keeps for the client ids whose home it is.
    mqtt: Option<Arc<crate::mqtt::MqttSettings>>,
    /// MQTT sessions arriving from other nodes in parts.
    session_parts: sessions::Gathering,
}

/// Webhook commands whose answers come later, and the runtime's task to
/// wake when there is a new one.
#[derive(Debug, Default)]
struct CommandWaits {
    new: Vec<CommandWait>,
    waker: Option<Waker>,
}

/// A command whose answer comes later: where it goes, and where it comes
/// from.
#[derive(Debug)]
pub struct CommandWait {
    /// The connection that asked.
    pub conn: ConnId,
    /// Its request id.
    pub request_id: u32,
    /// A `CLUSTER_REQUEST` (answered with `CLUSTER_REPLY`), or a
    /// `WEBHOOK_REQUEST`.
    pub cluster: bool,
    /// The answer, when it comes.
    pub answer: flume::Receiver<crate::webhooks::CommandResult>,
}

impl Shard {
    /// A shard `id` of `shard_count`; `seed` makes its topic epochs random.
    pub fn new(id: ShardId, shard_count: usize, config: EngineConfig, seed: u64) -> Shard {
        let memory_budget = config.topic_memory_bytes / shard_count.max(1);
        Shard {
            id,
            shard_count,
            config,
            owned: FxHashMap::default(),
            retained: 0,
            memory_budget,
            local: LocalTopics::default(),
            patterns: PatternTrie::default(),
            local_patterns: LocalTopics::default(),
            shared: Vec::new(),
            conns: FxHashMap::default(),
            // From a random point: another node may name a connection of
            // this process (an MQTT client id's holder), and must not find
            // a new one after a restart under an old one's id.
            next_conn: mix64(seed ^ 0xc0ff_ee00 ^ u64::from(id)) >> 16,
            mesh_out: (0..shard_count).map(|_| Vec::new()).collect(),
            mesh_senders: (0..shard_count).map(|_| None).collect(),
            now_ms: 0,
            rng: mix64(seed ^ u64::from(id)),
            stats: ShardStats::default(),
            delivery_latency: LatencyHistogram::default(),
            auth: Arc::new(OpenAccess),
            webhooks: Arc::new(NoWebhooks),
            cluster: Arc::new(NoCluster),
            auth_failure_log: LogLimit::new(WARNINGS_PER_SECOND, 1000),
            refusal_log: LogLimit::new(WARNINGS_PER_SECOND, 1000),
            tls_failure_log: LogLimit::new(WARNINGS_PER_SECOND, 1000),
            retained_messages: retained::RetainedStore::default(),
            retained_log: LogLimit::new(WARNINGS_PER_SECOND, 1000),
            fetches: FxHashMap::default(),
            fetches_per_conn: FxHashMap::default(),
            nodes: None,
            draining: false,
            command_waits: CommandWaits::default(),
            mqtt: None,
            session_parts: sessions::Gathering::default(),
        }
    }

    /// The shard with the MQTT listener's settings, whose registry of
    /// client ids it answers other nodes from.
    pub fn with_mqtt(mut self, settings: Arc<crate::mqtt::MqttSettings>) -> Shard {
        self.mqtt = Some(settings);
        self
    }

    /// Uses `auth` to check credentials at the handshake (the default lets
    /// everyone do everything).
    pub fn with_authenticator(mut self, auth: Arc<dyn Authenticator>) -> Shard {
        self.auth = auth;
        self
    }

    /// The shard with a source of answers to cluster commands.
    pub fn with_cluster(mut self, cluster: Arc<dyn ClusterControl>) -> Shard {
        self.cluster = cluster;
        self
    }

    /// Hands sequenced messages of topics with webhooks to `webhooks`, and
    /// `WEBHOOK_REQUEST` commands too (the default has no webhooks).
    pub fn with_webhooks(mut self, webhooks: Arc<dyn WebhookSink>) -> Shard {
        self.webhooks = webhooks;
        self
    }

    /// This shard's id.
    pub fn id(&self) -> ShardId {
        self.id
    }

    /// Counters since start.
    pub fn stats(&self) -> &ShardStats {
        &self.stats
    }

    /// Number of connections open on this shard.
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// `Some(max_connections_per_shard)` when this shard holds more
    /// connections than that (the newest one included).
    pub fn over_connection_limit(&self) -> Option<usize> {
        let max = self.config.max_connections_per_shard;
        (self.conns.len() > max).then_some(max)
    }

    /// Takes from `new` the limits a running broker may change (a reload):
    /// the subscription caps, `max_in_flight_per_conn`, the slow-consumer
    /// policy, `max_connections_per_shard`, `topic_memory_bytes` (this
    /// shard's part of it is enforced from its next tick), and
    /// `outbox_limit_bytes`, which connections opened from now on get.
    /// Nothing held is taken away: a lowered cap refuses what comes next.
    /// The rest of `new` (frame sizes, timers, replay rings, link limits)
    /// is for a restart and is ignored here.
    pub fn set_limits(&mut self, new: &EngineConfig) {
        let config = &mut self.config;
        config.max_subscriptions_per_conn = new.max_subscriptions_per_conn;
        config.max_subscription_bytes_per_conn = new.max_subscription_bytes_per_conn;
        config.max_subscriptions = new.max_subscriptions;
        config.max_in_flight_per_conn = new.max_in_flight_per_conn;
        config.slow_consumer = new.slow_consumer;
        config.max_connections_per_shard = new.max_connections_per_shard;
        config.outbox_limit_bytes = new.outbox_limit_bytes;
        config.topic_memory_bytes = new.topic_memory_bytes;
        self.memory_budget = new.topic_memory_bytes / self.shard_count.max(1);
    }

    /// Takes every connection's writer waker, unwoken, for the shard to
    /// drop once it stops and no longer holds the engine: a parked writer
    /// lives inside its waker and holds its socket (and the shard).
    pub fn take_writers(&mut self) -> Vec<std::task::Waker> {
        self.conns
            .values_mut()
            .filter_map(|state| state.outbox.take_writer())
            .collect()
    }

    /// Number of connections open on this shard that are clients, not
    /// links from other nodes of the cluster (a drain waits for these).
    pub fn client_connection_count(&self) -> usize {
        self.conns.values().filter(|state| !state.is_peer()).count()
    }

    /// Counters and gauges for the metrics endpoint; the runtime adds its
    /// send counts (`sends`) and its tick count, which the engine does not
    /// see.
    pub fn metrics(&self) -> ShardMetrics {
        ShardMetrics {
            shard: self.id,
            stats: self.stats.clone(),
            connections: self.conns.len() as u64,
            handshaking: self.conns.values().filter(|conn| !conn.handshaken).count() as u64,
            subscriptions: self
                .conns
                .values()
                .map(|conn| conn.subscriptions.len() as u64)
                .sum(),
            owned_topics: self.owned.len() as u64,
            topic_memory: self.retained as u64,
            retained_messages: self.retained_messages.len() as u64,
            retained_bytes: self.retained_messages.bytes() as u64,
            local_topics: self.local.len() as u64,
            local_patterns: self.local_patterns.len() as u64,
            patterns_matched: self.patterns.len() as u64,
            mesh_backlog: self.mesh_out.iter().map(|batch| batch.len() as u64).sum(),
            delivery_latency: self.delivery_latency.clone(),
            // Filled in by the shard's tick (the connections' tasks).
            writers_running: 0,
            readers_running: 0,
            sends: Default::default(),
            upstream: self.upstream_subscriptions(),
            ticks: 0,
        }
    }

    /// Number of topics whose owner-side state this shard holds.
    pub fn owned_topic_count(&self) -> usize {
        self.owned.len()
    }

    fn new_epoch(&mut self) -> Epoch {
        loop {
            self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let epoch = mix64(self.rng);
            if epoch != 0 {
                return epoch;
            }
        }
    }

    fn owned_topic(&mut self, topic: &TopicKey) -> &mut OwnedTopic {
        if !self.owned.contains_key(topic) {
            let epoch = self.new_epoch();
            let key = topic.compact();
            let state = OwnedTopic::new(key.clone(), epoch, self.now_ms);
            self.retained += state.retained();
            self.owned.insert(key, state);
        }
        self.owned
            .get_mut(topic)
            .expect("inserted just above when missing")
    }

    // ----- mesh --------------------------------------------------------

    /// Handles one message from shard `from`.
    pub fn handle_mesh(&mut self, from: ShardId, msg: ShardMsg) {
        match msg {
            ShardMsg::TakeOverMsg { conn } => self.close_taken_over(conn),
            ShardMsg::SessionWantedMsg { conn, to } => self.give_session(conn, *to),
            ShardMsg::SessionMsg { conn, session } => self.receive_session(conn, session),
            ShardMsg::JoinGroupMsg(join) => {
                let (group, topic, member) = *join;
                self.join_group(group, topic, member);
            }
            ShardMsg::LeaveGroupMsg(leave) => {
                let (group, topic, member) = *leave;
                self.leave_group(&group, &topic, member);
            }
            ShardMsg::SharedDeliverMsg(delivery) => self.deliver_shared(&delivery),
            ShardMsg::PublishMsg {
                topic,
                payload,
                ack_to,
            } => {
                if self.nodes.is_some() {
                    return self.publish_on_topic_shard(from, topic, payload, ack_to);
                }
                let seq = self.sequence_and_fan_out(topic, payload);
                if let Some(ack_to) = ack_to {
                    self.push_mesh(from, ShardMsg::PubAckMsg { ack_to, seq });
                }
            }
            ShardMsg::PubAckMsg { ack_to, seq } => self.acknowledge(ack_to, seq),
            ShardMsg::PubFailedMsg { ack_to, reason } => self.publish_failed(ack_to, &reason),
            ShardMsg::RestartMsg {
                handle,
                epoch,
                next_seq,
            } => self.restart_local(handle, epoch, next_seq),
            ShardMsg::HandoffMsg(request) => self.hand_over(from, *request),
            ShardMsg::HandoffReplyMsg(reply) => self.handoff_reply(*reply),
            ShardMsg::InterestMsg {
                topic,
                handle,
                resume,
            } => self.take_interest(topic, from, handle, resume),
            ShardMsg::InterestAckMsg {
                topic,
                epoch,
                start_after,
                resume,
            } => self.handle_interest_ack(topic, epoch, start_after, resume.map(|reply| *reply)),
            ShardMsg::DropInterestMsg { topic } => self.unregister_interest(&topic, from),
            ShardMsg::DeliverMsg {
                handle,
                seq,
                payload,
                sequenced_at,
            } => self.deliver_local(handle, seq, &payload, sequenced_at),
            ShardMsg::PatternInterestMsg { pattern, handle } => {
                self.take_pattern_interest(from, &pattern, handle)
            }
            ShardMsg::PatternAckMsg { handle } => self.pattern_interest_acked(handle),
            ShardMsg::DropPatternInterestMsg { pattern } => {
                self.drop_pattern_interest(from, &pattern)
            }
            ShardMsg::PatternDeliverMsg(delivery) => self.deliver_pattern(&delivery, false),
            ShardMsg::RetainedQueryMsg(query) => self.answer_retained_query(from, *query),
            ShardMsg::RetainedMsg(reply) => {
                self.retained_found(reply.conn, reply.sub_id, reply.found)
            }
        }
    }

    fn push_mesh(&mut self, to: ShardId, msg: ShardMsg) {
        push_mesh(&mut self.mesh_out, &mut self.mesh_senders, to, msg);
    }

    /// Takes the batch collected for `peer`, or registers `waker` to be woken
    /// when one exists. Used by the peer's mesh sender task.
    pub fn take_mesh_batch(&mut self, peer: ShardId, waker: &Waker) -> Option<MeshBatch> {
        let batch = &mut self.mesh_out[peer as usize];
        if batch.is_empty() {
            self.mesh_senders[peer as usize] = Some(waker.clone());
            None
        } else {
            // The next batch starts with room for as many messages as this
            // one: growing it one doubling at a time would copy it again and
            // again (and, past glibc's mmap threshold, map fresh pages).
            let room = batch.len();
            Some(std::mem::replace(batch, Vec::with_capacity(room)))
        }
    }

    /// Messages collected for `peer` and not yet taken by its sender.
    pub fn mesh_backlog(&self, peer: ShardId) -> usize {
        self.mesh_out[peer as usize].len()
    }

    /// How long a connection may stay silent before it is closed.
    pub fn heartbeat_timeout_ms(&self) -> u64 {
        self.config.heartbeat_timeout_ms
    }

    /// Largest backlog over all peers (connection readers pause above a mark).
    pub fn max_mesh_backlog(&self) -> usize {
        self.mesh_out.iter().map(Vec::len).max().unwrap_or(0)
    }
}

fn push_mesh(
    mesh_out: &mut [MeshBatch],
    senders: &mut [Option<Waker>],
    to: ShardId,
    msg: ShardMsg,
) {
    let batch = &mut mesh_out[to as usize];
    batch.push(msg);
    if batch.len() == 1 {
        // First message of a batch: the sender task may be parked.
        if let Some(waker) = senders[to as usize].take() {
            waker.wake();
        }
    }
}

mod conns;
mod delivery;
mod local;
mod memory;
mod nodes;
mod patterns;
mod retained;
mod sessions;
mod shared;
mod topics;

use patterns::LocalPattern;

pub use crate::mesh::Holder;
pub use nodes::LINK_HIGH_WATER;
pub use sessions::Arrival;

#[cfg(test)]
mod hostile;
#[cfg(test)]
mod tests;
