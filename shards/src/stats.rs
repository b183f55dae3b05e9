//! Shard-local counters: plain integers, bumped by the owning shard only.

/// Counters of one shard since start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShardStats {
    /// Connections accepted.
    pub connections_opened: u64,
    /// `PUBLISH` frames received on this shard's connections.
    pub publishes_received: u64,
    /// Messages given a sequence number by this shard as owner.
    pub messages_sequenced: u64,
    /// `MESSAGE` frames queued for this shard's subscribers.
    pub messages_delivered: u64,
    /// `SUBSCRIBE` requests accepted.
    pub subscribes: u64,
    /// Frames that failed to decode.
    pub protocol_errors: u64,
    /// Connections refused at the handshake (no or bad `HELLO`, or bad
    /// credentials).
    pub handshake_failures: u64,
    /// Connections refused because their credentials were missing, unknown,
    /// invalid or expired.
    pub auth_failures: u64,
    /// New sockets closed at once because the broker held its maximum of
    /// connections mid-handshake (`max_handshaking`).
    pub handshakes_shed: u64,
    /// New sockets closed at once because their source address held its
    /// maximum of connections mid-handshake (`max_handshaking_per_source`).
    pub handshakes_shed_per_source: u64,
    /// `SUBSCRIBE` requests refused by a subscription limit
    /// (`too_many_subscriptions`).
    pub subscriptions_refused: u64,
    /// Requests refused by authorization (`forbidden`).
    pub forbidden: u64,
    /// Retained publishes not kept: the shard held its share of
    /// `retained_messages` or `retained_bytes`.
    pub retained_refused: u64,
    /// Connections closed for a handshake deadline, an expired token or
    /// silence.
    pub timeouts_and_expiries: u64,
    /// Bytes read from client sockets.
    pub bytes_in: u64,
    /// Bytes written to client sockets.
    pub bytes_out: u64,
    /// `MESSAGE` frames replayed from a topic's ring on resume.
    pub messages_replayed: u64,
    /// Messages not queued because a connection's outbound queue was full
    /// (`drop` policy); each loss is reported with a `DISCONTINUITY`.
    pub messages_dropped: u64,
    /// Connections closed because their outbound queue overflowed.
    pub slow_consumer_closes: u64,
    /// Idle topic states evicted.
    pub topics_evicted: u64,
    /// Topic states nobody subscribed to, evicted early because the shard's
    /// topic memory was over its budget.
    pub topics_evicted_for_memory: u64,
    /// Messages dropped from replay rings because the shard's topic memory
    /// was over its budget (a resume from before them gets a gap report).
    pub replay_messages_trimmed: u64,
    /// WebSocket upgrades accepted on the browser listener.
    pub websockets_opened: u64,
    /// Server-Sent Events streams opened on the browser listener.
    pub event_streams_opened: u64,
    /// Requests the browser listener refused with an HTTP status (origin,
    /// path, malformed request, deadline, limits).
    pub web_requests_refused: u64,
    /// Wills of MQTT clients whose connection ended without a clean
    /// `DISCONNECT`, published (the publish may still be refused by the
    /// connection's permissions).
    pub wills_published: u64,
    /// Messages for a shared subscription's member that had left after the
    /// owner chose it (lost).
    pub shared_messages_dropped: u64,
    /// MQTT sessions that lived on after their connection ended.
    pub sessions_detached: u64,
    /// Messages for MQTT sessions without a connection dropped: the
    /// session's queue (`mqtt_session_queue`) or all of them together
    /// (`mqtt_session_queue_bytes`) was full.
    pub session_messages_dropped: u64,
    /// Publishes sent on to the node that owns their topic.
    pub publishes_forwarded: u64,
    /// Forwarded publishes the owner node did not acknowledge (refused, or
    /// the link broke first); their clients got `owner_unavailable` when
    /// they asked for an acknowledgement.
    pub forwarded_publishes_failed: u64,
    /// Messages received from owner nodes for this node's mirrors.
    pub messages_mirrored: u64,
    /// Topics whose stream started over (a new owner, or a link that lost
    /// messages): each of their subscribers got a `DISCONTINUITY`.
    pub topic_restarts: u64,
    /// Requests from another node refused because this node does not own
    /// the topic (the members were changing).
    pub cluster_refusals: u64,
    /// Topics this node took over from another with their state (epoch,
    /// sequence numbers and replay ring): no discontinuity.
    pub topics_taken_over: u64,
    /// Topics this node handed over to another with their state.
    pub topics_handed_over: u64,
}
