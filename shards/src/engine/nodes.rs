//! The cluster on a topic's shard: which node owns the topic, publishes
//! forwarded to that node, mirrors fed by one subscription per topic per
//! node, and what happens to both when the member list changes.
//!
//! Only a topic's shard (`routing::owner` inside this node) does any of
//! this; the other shards of the node send it publishes and interests over
//! the mesh exactly as when the node owns every topic, so the cluster costs
//! the fast path nothing when there is none (`nodes` is `None`) and one
//! owner computation per publish on the topic's shard when there is.
//!
//! Ordering: a link is one TCP connection, so everything a shard sends to a
//! node, and everything it gets back, stays in order; the owner's stream of
//! a topic reaches the mirror in sequence, and the mirror hands it to the
//! interested shards over their FIFO mesh queues, as an owner does.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use corebus_net::{
    encode_handoff_request, encode_publish_body, encode_subscribe, Discontinuity, Epoch, ErrorCode,
    Frame, ResumePoint, Seq, TopicKey,
};
use tracing::{debug, info};

use super::{ConnId, Shard};
use crate::cluster::{NodeMap, Placement};
use crate::local_ref::LocalRef;
use crate::mesh::{AckTo, Handoff, HandoffAnswer, HandoffReply, ResumeReq, ShardMsg};
use crate::outbox::{OutFrame, PushError};
use crate::ring::COPY_MAX;
use crate::routing::ShardId;
use crate::topic::OwnedTopic;
use crate::upstream::{Forwarded, PeerLink, Upstream};

/// Encoded bytes a link may hold for its writer; readers of the shard pause
/// above it (as for the mesh backlog), and a publish that finds a link this
/// full while it is down is refused.
pub const LINK_HIGH_WATER: usize = 4 << 20;
/// Encoded bytes a link holds at most: a publish that would go past it is
/// refused with `owner_unavailable`.
const LINK_MAX: usize = 4 * LINK_HIGH_WATER;
/// For this long after a topic is taken over with its state, its webhook
/// messages name the node it came from (`WebhookMessage::moved_from`).
pub const MOVE_HOLD_MS: u64 = 30_000;

/// How long a node that owns a topic waits for its state from the node it
/// takes it over from before it starts a new epoch instead.
pub(super) const PULL_TIMEOUT_MS: u64 = 2_000;
/// Publishes a topic being taken over holds until its state is here, at
/// most (count and payload bytes); more are refused with `owner_unavailable`.
pub(super) const PARKED_MAX: usize = 4_096;
const PARKED_MAX_BYTES: usize = 4 << 20;

/// The shard's view of the cluster.
#[derive(Debug)]
pub(crate) struct Nodes {
    map: Arc<dyn NodeMap>,
    /// The members the topics were last placed on.
    pub(super) placement: Placement,
    /// Engine time the member list last changed: a topic this node gets
    /// without state is asked of its previous owner for as long as that
    /// node may keep it (the idle eviction delay), and no longer.
    changed_ms: u64,
    links: rustc_hash::FxHashMap<SocketAddr, PeerLink>,
    /// Links made by the engine whose tasks the runtime has to start.
    starts: Vec<SocketAddr>,
    starter: Option<std::task::Waker>,
}

impl Shard {
    /// The shard as a member of a cluster: topics another node owns are
    /// forwarded and mirrored over links to it.
    pub fn with_nodes(mut self, map: Arc<dyn NodeMap>) -> Shard {
        self.nodes = Some(Nodes {
            placement: map.placement(),
            changed_ms: self.now_ms,
            map,
            links: Default::default(),
            starts: Vec::new(),
            starter: None,
        });
        self
    }

    /// Whether this shard's node is a member of a cluster.
    pub fn in_cluster(&self) -> bool {
        self.nodes.is_some()
    }

    /// Topics whose state this node still holds for another node to take
    /// (a draining node waits for them to be taken, up to its deadline).
    pub fn handoffs_pending(&self) -> usize {
        self.owned
            .values()
            .filter(|owned| owned.upstream.as_ref().is_some_and(|up| up.authoritative))
            .count()
    }

    /// The node that owns `topic`, `None` for this one. Places every topic
    /// again first when the member list changed.
    pub(super) fn node_route(&mut self, topic: &TopicKey) -> Option<SocketAddr> {
        self.refresh_placement();
        self.nodes.as_ref()?.placement.owner(topic)
    }

    /// Places every topic again if the member list changed since they
    /// were last placed: from then on, a topic's entry agrees with the
    /// placement (a local one is this node's).
    pub(super) fn refresh_placement(&mut self) {
        if self
            .nodes
            .as_ref()
            .is_some_and(|nodes| nodes.map.version() != nodes.placement.version)
        {
            self.reconcile();
        }
    }

    /// Whether `conn` is another node of the cluster.
    pub(super) fn is_peer(&self, conn: ConnId) -> bool {
        self.peer_of(conn).is_some()
    }

    /// The client address of the node `conn` is a link from, if it is one.
    pub(super) fn peer_of(&self, conn: ConnId) -> Option<SocketAddr> {
        self.conns
            .get(&conn)
            .and_then(|state| state.grant.as_ref())
            .and_then(|grant| grant.peer)
    }

    /// The node `conn` is a link from; for any other connection, `None`,
    /// and its request is refused with `forbidden` (only another node of
    /// the cluster may `what`).
    pub(super) fn peer_only(
        &mut self,
        conn: ConnId,
        request_id: u32,
        what: &str,
    ) -> Option<SocketAddr> {
        let peer = self.peer_of(conn);
        if peer.is_none() {
            self.stats.forbidden += 1;
            self.send_error(
                conn,
                request_id,
                ErrorCode::Forbidden,
                format!("only another node of the cluster may {what}"),
            );
        }
        peer
    }

    /// A peer's request for a topic this node does not own is refused (the
    /// peer retries once the members agree): a node never forwards what a
    /// node forwarded to it, so no request goes round in circles. True when
    /// refused.
    pub(super) fn refused_for_peer(
        &mut self,
        conn: ConnId,
        request_id: u32,
        topic: &TopicKey,
    ) -> bool {
        // A pattern has no owner: every node serves a peer's pattern with
        // the topics it owns.
        if self.nodes.is_none()
            || !self.is_peer(conn)
            || topic.is_pattern()
            || self.node_route(topic).is_none()
        {
            return false;
        }
        self.stats.cluster_refusals += 1;
        self.send_error(
            conn,
            request_id,
            ErrorCode::OwnerUnavailable,
            format!("this node does not own {topic} (the cluster's members are changing)"),
        );
        true
    }

    // ----- publishes ---------------------------------------------------

    /// A publish on the topic's shard, from a connection of shard `from`:
    /// sequenced here when this node owns the topic, forwarded otherwise.
    pub(super) fn publish_on_topic_shard(
        &mut self,
        from: ShardId,
        topic: TopicKey,
        payload: Bytes,
        ack_to: Option<AckTo>,
    ) {
        let origin = Forwarded { from, ack_to };
        self.refresh_placement();
        // A topic's own entry decides: being taken over, handed over to
        // another node, mirrored, or (placed just now) this node's. Only a
        // topic without one costs an owner computation.
        let route = match self.owned.get(&topic).map(|t| t.upstream.as_deref()) {
            Some(Some(up)) if up.pulling => return self.park(&topic, payload, origin),
            Some(Some(up)) => Some(up.node),
            Some(None) => None,
            None => self.nodes.as_ref().and_then(|n| n.placement.owner(&topic)),
        };
        match route {
            None => {
                if !self.owned.contains_key(&topic) && self.start_pull(&topic) {
                    return self.park(&topic, payload, origin);
                }
                let seq = self.sequence_and_fan_out(topic, payload);
                if ack_to.is_some() {
                    self.settle(origin, Ok(seq));
                }
            }
            Some(node) => self.forward_publish(node, &topic, &payload, origin),
        }
    }

    /// Holds a publish of a topic whose state is on its way here.
    fn park(&mut self, topic: &TopicKey, payload: Bytes, origin: Forwarded) {
        let Some(up) = self.owned.get_mut(topic).and_then(|t| t.upstream.as_mut()) else {
            return;
        };
        if up.parked.len() >= PARKED_MAX || up.parked_bytes + payload.len() > PARKED_MAX_BYTES {
            let reason = format!(
                "{topic} is being handed over to this node and {PARKED_MAX} publishes (or \
                 {PARKED_MAX_BYTES} bytes) already wait; not published"
            );
            return self.settle(origin, Err(reason));
        }
        // A small payload is a slice of its read buffer: copied, as the
        // ring copies it, so that waiting does not pin the buffer.
        let payload = if payload.len() <= COPY_MAX {
            Bytes::copy_from_slice(&payload)
        } else {
            payload
        };
        up.parked_bytes += payload.len();
        up.parked.push((payload, origin));
    }

    fn forward_publish(
        &mut self,
        node: SocketAddr,
        topic: &TopicKey,
        payload: &[u8],
        origin: Forwarded,
    ) {
        let link = self.link(node);
        if !link.up && link.out.len() >= LINK_HIGH_WATER {
            let reason =
                format!("the owner of {topic}, node {node}, cannot be reached; not published");
            return self.settle(origin, Err(reason));
        }
        if link.out.len() >= LINK_MAX {
            // Readers on this shard pause above the high-water mark; this
            // bounds what the other shards' publishes add meanwhile.
            let reason =
                format!("the link to {node}, the owner of {topic}, is backed up; not published");
            return self.settle(origin, Err(reason));
        }
        let request_id = link.request_id();
        link.acks.insert(request_id, origin);
        // Always acknowledged on the link, so that a publish the owner
        // refuses is known (and counted) even when its client did not ask.
        encode_publish_body(
            &mut link.out,
            request_id,
            true,
            topic.namespace_bytes(),
            topic.topic_bytes(),
            payload,
        );
        link.kick();
        self.stats.publishes_forwarded += 1;
    }

    /// Answers a publish: to its connection here, or to its shard.
    fn settle(&mut self, origin: Forwarded, result: Result<Seq, String>) {
        let Some(ack_to) = origin.ack_to else {
            if result.is_err() {
                self.stats.forwarded_publishes_failed += 1;
            }
            return;
        };
        match result {
            Ok(seq) if origin.from == self.id => self.acknowledge(ack_to, seq),
            Ok(seq) => self.push_mesh(origin.from, ShardMsg::PubAckMsg { ack_to, seq }),
            Err(reason) => {
                self.stats.forwarded_publishes_failed += 1;
                if origin.from == self.id {
                    self.publish_failed(ack_to, &reason);
                } else {
                    let reason = reason.into_boxed_str();
                    self.push_mesh(origin.from, ShardMsg::PubFailedMsg { ack_to, reason });
                }
            }
        }
    }

    /// Tells a publishing connection its publish was not acknowledged.
    pub(super) fn publish_failed(&mut self, ack_to: AckTo, reason: &str) {
        if let Some(state) = self.conns.get_mut(&ack_to.conn) {
            state.in_flight = state.in_flight.saturating_sub(1);
        }
        self.send_error(
            ack_to.conn,
            ack_to.request_id,
            ErrorCode::OwnerUnavailable,
            reason.to_string(),
        );
    }

    // ----- interests ---------------------------------------------------

    /// An interest request on the topic's shard, from shard `shard`:
    /// registered at once when the node owns the topic or its mirror is
    /// known, kept until the mirror is otherwise.
    pub(super) fn take_interest(
        &mut self,
        topic: TopicKey,
        shard: ShardId,
        handle: LocalRef,
        resume: Option<ResumeReq>,
    ) {
        let route = self.node_route(&topic);
        if !self.owned.contains_key(&topic) {
            if let Some(node) = route {
                // First interest here in a topic another node owns: a
                // mirror, which answers it once it knows the owner's state.
                let mut mirror = self.new_mirror(&topic, node);
                if let Some(up) = mirror.upstream.as_mut() {
                    up.waiting.push((shard, handle, resume));
                }
                self.retained += mirror.retained();
                self.owned.insert(topic.compact(), mirror);
                return self.subscribe_upstream(&topic);
            }
            self.start_pull(&topic);
        }
        if let Some(up) = self.owned.get_mut(&topic).and_then(|t| t.upstream.as_mut()) {
            // While the state is on its way, a copy here is not what the
            // new owner will serve: answered from the state once it is here
            // (the node it comes from subscribes too, and must not take an
            // answer from the copy for the hand-over).
            if !up.known || up.pulling {
                up.waiting.push((shard, handle, resume));
                self.subscribe_upstream(&topic);
                return;
            }
        }
        let (epoch, start_after, reply) = self.register_interest(&topic, shard, handle, resume);
        // A known copy kept without a subscription (the state this node
        // handed over) follows the owner from now on.
        self.subscribe_upstream(&topic);
        if shard == self.id {
            self.handle_interest_ack(topic, epoch, start_after, reply);
        } else {
            self.push_mesh(
                shard,
                ShardMsg::InterestAckMsg {
                    topic,
                    epoch,
                    start_after,
                    resume: reply.map(Box::new),
                },
            );
        }
    }

    /// This node owns `topic` and holds no state of it: if the member list
    /// changed lately, the state may be on the node that owned it before,
    /// and is asked of it (requests wait meanwhile). False when there is no
    /// one to ask, and the topic starts here.
    pub(super) fn start_pull(&mut self, topic: &TopicKey) -> bool {
        let Some(nodes) = self.nodes.as_ref() else {
            return false;
        };
        if self.now_ms.saturating_sub(nodes.changed_ms) >= self.config.topic_idle_evict_ms {
            return false;
        }
        let Some(source) = nodes.placement.handoff_source(topic) else {
            return false;
        };
        let mut entry = self.new_mirror(topic, source);
        if let Some(up) = entry.upstream.as_mut() {
            up.pulling = true;
            up.deadline_ms = self.now_ms + PULL_TIMEOUT_MS;
        }
        self.retained += entry.retained();
        self.owned.insert(topic.compact(), entry);
        self.subscribe_upstream(topic);
        true
    }

    /// The state of a topic this node takes over arrived (`got`), or will
    /// not: the topic is this node's from now on, with the state it got or
    /// a new epoch; what waited is served.
    fn finish_pull(&mut self, topic: &TopicKey, got: bool) {
        let Some(up) = self.owned.get_mut(topic).and_then(|t| t.upstream.take()) else {
            return;
        };
        let up = *up;
        if up.sub_id != 0 {
            if let Some(link) = self.link_mut(up.node) {
                link.subs.remove(&up.sub_id);
            }
        }
        if got {
            self.stats.topics_taken_over += 1;
            debug!(%topic, from = %up.node, "topic taken over with its state");
            if let Some(owned) = self.owned.get_mut(topic) {
                let until = self.now_ms.saturating_add(MOVE_HOLD_MS);
                owned.moved_from = Some(Box::new((up.node, until)));
            }
        } else {
            // A new epoch (what a partial copy held is dropped, and the
            // shards interested in it, if any, are told).
            let epoch = self.new_epoch();
            self.restart_topic(topic, epoch, 0);
        }
        for (shard, handle, resume) in up.waiting {
            self.take_interest(topic.clone(), shard, handle, resume);
        }
        for (payload, origin) in up.parked {
            self.publish_on_topic_shard(origin.from, topic.clone(), payload, origin.ack_to);
        }
        for (from, query) in up.fetches {
            self.answer_retained_query(from, query);
        }
    }

    fn new_mirror(&mut self, topic: &TopicKey, node: SocketAddr) -> OwnedTopic {
        let mut mirror = OwnedTopic::new(topic.compact(), 0, self.now_ms);
        mirror.upstream = Some(Box::new(Upstream::fresh(node)));
        mirror
    }

    /// A mirror without subscribers is dropped, and its subscription on the
    /// owner with it: the owner sends nothing this node does not need.
    pub(super) fn drop_mirror_if_unused(&mut self, topic: &TopicKey) {
        // Kept until this node agrees where the topic went, so that nothing
        // published here meanwhile starts the topic over here.
        let placement = self.nodes.as_ref().map(|nodes| &nodes.placement);
        let unused = self.owned.get(topic).is_some_and(|owned| {
            owned.interested.is_empty()
                && owned.upstream.as_ref().is_some_and(|up| {
                    !up.needed() && placement.is_some_and(|p| p.owner(topic) == Some(up.node))
                })
        });
        if unused {
            self.unsubscribe_upstream(topic);
            if let Some(owned) = self.owned.remove(topic) {
                self.retained -= owned.retained();
            }
        }
    }

    /// Subscribes the mirror of `topic` on its owner's link, from where the
    /// mirror is (the whole replay ring when it knows nothing yet). Waits
    /// for the link when it is down: [`Shard::link_up`] subscribes then.
    fn subscribe_upstream(&mut self, topic: &TopicKey) {
        let Some(owned) = self.owned.get(topic) else {
            return;
        };
        let Some(upstream) = owned.upstream.as_ref() else {
            return;
        };
        // The topic's state, kept for its new owner, asks too: that is what
        // makes the new owner take it over.
        if upstream.sub_id != 0 || (!upstream.needed() && owned.interested.is_empty()) {
            return; // Asked already, or nobody here needs it.
        }
        let (node, pulling) = (upstream.node, upstream.pulling);
        let resume = if upstream.known {
            ResumePoint {
                epoch: owned.epoch(),
                next_seq: owned.last_seq() + 1,
            }
        } else {
            ResumePoint {
                epoch: 0,
                next_seq: 1,
            }
        };
        let Some(sub_id) = self.subscribe_on_link(node, topic, Some(resume), pulling) else {
            return;
        };
        if let Some(upstream) = self.owned.get_mut(topic).and_then(|t| t.upstream.as_mut()) {
            upstream.sub_id = sub_id;
            upstream.replaying = true;
        }
    }

    /// Subscribes to `topic` (a mirror's topic, or a pattern) on the link
    /// to `node` from `resume` (`None`: live), or with `handoff` asks for
    /// its state, if the link is up; returns the subscription's id on the
    /// link.
    pub(super) fn subscribe_on_link(
        &mut self,
        node: SocketAddr,
        topic: &TopicKey,
        resume: Option<ResumePoint>,
        handoff: bool,
    ) -> Option<u32> {
        let link = self.link(node);
        if !link.up {
            return None;
        }
        let sub_id = link.new_sub(topic.clone());
        let request_id = link.request_id();
        link.sub_requests.insert(request_id, sub_id);
        let encode = if handoff {
            encode_handoff_request
        } else {
            encode_subscribe
        };
        encode(
            &mut link.out,
            request_id,
            sub_id,
            resume,
            topic.namespace_bytes(),
            topic.topic_bytes(),
        );
        link.kick();
        Some(sub_id)
    }

    /// Ends subscription `sub_id` on the link to `node`; whatever still
    /// arrives for it is ignored, and an unanswered request for it gets no
    /// answer now.
    pub(super) fn unsubscribe_on_link(&mut self, node: SocketAddr, sub_id: u32) {
        let Some(link) = self.link_mut(node) else {
            return;
        };
        link.subs.remove(&sub_id);
        if link.shared.remove(&sub_id).is_some() && link.up {
            link.shares_ended.insert(sub_id);
        }
        link.sub_requests.retain(|_, sub| *sub != sub_id);
        if link.up {
            let request_id = link.request_id();
            corebus_net::Frame::Unsubscribe(corebus_net::Unsubscribe { request_id, sub_id })
                .encode(&mut link.out);
            link.kick();
        }
    }

    /// Ends the mirror's subscription on its link, if it has one; whatever
    /// still arrives for it is ignored.
    fn unsubscribe_upstream(&mut self, topic: &TopicKey) {
        let Some(upstream) = self.owned.get_mut(topic).and_then(|t| t.upstream.as_mut()) else {
            return;
        };
        let (node, sub_id) = (upstream.node, std::mem::take(&mut upstream.sub_id));
        if sub_id != 0 {
            self.unsubscribe_on_link(node, sub_id);
        }
    }

    // ----- the owner's stream, on a mirror -----------------------------

    /// One frame from `node` on this shard's link to it.
    pub fn handle_link_frame(&mut self, node: SocketAddr, frame: Frame) {
        let Some(frame) = self
            .fetch_answer(node, frame)
            .and_then(|frame| self.shared_answer(node, frame))
        else {
            return;
        };
        let Some(link) = self.link_mut(node) else {
            return;
        };
        match frame {
            Frame::PubAck(ack) => {
                if let Some(origin) = link.acks.remove(&ack.request_id) {
                    self.settle(origin, Ok(ack.seq));
                }
            }
            Frame::Error(error) => {
                if let Some(origin) = link.acks.remove(&error.request_id) {
                    self.settle(origin, Err(error.message));
                } else if let Some(conn) = link.claims.remove(&error.request_id) {
                    // Refused by the home (another version?): no answer.
                    info!(%node, reason = %error.message, "a client id claim was refused");
                    self.fail_claims(vec![conn]);
                } else if let Some(sub_id) = link.sub_requests.remove(&error.request_id) {
                    let Some(topic) = link.subs.remove(&sub_id) else {
                        return;
                    };
                    debug!(%node, %topic, reason = %error.message, "upstream request refused");
                    let Some(up) = self.owned.get_mut(&topic).and_then(|t| t.upstream.as_mut())
                    else {
                        return;
                    };
                    if up.sub_id != sub_id {
                        return;
                    }
                    // Refused for now (the other node does not see the
                    // members as this one does yet): asked again on the
                    // tick, a pull until its deadline.
                    up.sub_id = 0;
                }
            }
            Frame::SubOk(ok) => {
                link.sub_requests.remove(&ok.request_id);
                if let Some(topic) = self.mirror_of(node, ok.sub_id) {
                    self.mirror_sub_ok(&topic, ok.epoch, ok.start_after);
                }
            }
            Frame::Message(message) => {
                if let Some(topic) = self.mirror_of(node, message.sub_id) {
                    self.mirror_message(
                        &topic,
                        message.epoch,
                        message.seq,
                        message.body.into_bytes(),
                    );
                }
            }
            Frame::Discontinuity(gap) => {
                if let Some(topic) = self.mirror_of(node, gap.sub_id) {
                    self.mirror_gap(&topic, gap);
                }
            }
            Frame::TopicMessage(message) => match link.subs.get(&message.sub_id).cloned() {
                Some(pattern) if pattern.is_pattern() => {
                    self.remote_pattern_message(&pattern, message);
                }
                Some(_) => self.handed_retained(node, message),
                None => {}
            },
            Frame::ReplayEnd(end) => {
                if let Some(topic) = self.mirror_of(node, end.sub_id) {
                    self.mirror_replay_end(&topic);
                }
            }
            Frame::Ping(nonce) => {
                Frame::Pong(nonce).encode(&mut link.out);
                link.kick();
            }
            Frame::SessionReply(reply) => self.session_reply(node, reply),
            // UNSUB_OK (the subscription was forgotten when it was ended),
            // PONG, GOAWAY (the link closes next) and the rest need nothing.
            _ => {}
        }
    }

    /// A topic's retained message, sent with its state by the node this one
    /// takes it over from: kept here, its owner now.
    fn handed_retained(&mut self, node: SocketAddr, message: corebus_net::TopicMessage) {
        let Some(topic) = self.mirror_of(node, message.sub_id) else {
            return;
        };
        let pulling = self
            .owned
            .get(&topic)
            .and_then(|owned| owned.upstream.as_ref())
            .is_some_and(|up| up.pulling);
        if pulling && message.body.retain() {
            let body = message.body.into_bytes();
            self.retain_message(&topic, message.epoch, message.seq, &body);
        }
    }

    /// The mirror that subscription `sub_id` on `node`'s link feeds.
    fn mirror_of(&self, node: SocketAddr, sub_id: u32) -> Option<TopicKey> {
        let link = self.nodes.as_ref()?.links.get(&node)?;
        let topic = link.subs.get(&sub_id)?;
        let owned = self.owned.get(topic)?;
        (owned.upstream.as_ref()?.sub_id == sub_id).then(|| owned.key().clone())
    }

    fn mirror_sub_ok(&mut self, topic: &TopicKey, epoch: Epoch, start_after: Seq) {
        let Some(owned) = self.owned.get_mut(topic) else {
            return;
        };
        let Some(upstream) = owned.upstream.as_mut() else {
            return;
        };
        if upstream.pulling && epoch == 0 {
            // The node asked holds no state of the topic: it starts here.
            return self.finish_pull(topic, false);
        }
        upstream.replaying = true;
        if upstream.authoritative {
            debug!(%topic, owner = %upstream.node, epoch, start_after, "the new owner answered");
        }
        // Whoever answers owns the topic now, with its own state.
        upstream.authoritative = false;
        upstream.answered_by = Some(upstream.node);
        if !upstream.known {
            let before = owned.ring_retained();
            owned.restart(epoch, start_after);
            self.retained -= before;
        } else if epoch != owned.epoch() || start_after != owned.last_seq() {
            // The owner could not continue where the mirror was: another
            // owner, or its ring had moved on.
            self.restart_topic(topic, epoch, start_after);
        }
    }

    fn mirror_message(&mut self, topic: &TopicKey, epoch: Epoch, seq: Seq, payload: Bytes) {
        let Some(owned) = self.owned.get(topic) else {
            return;
        };
        if epoch != owned.epoch() || seq != owned.last_seq() + 1 {
            // Not what the owner's stream promised: start over from here,
            // saying so, rather than hand on a broken stream.
            self.restart_topic(topic, epoch, seq.saturating_sub(1));
        }
        // A large payload is copied out of the link's read buffer, as a
        // client's is (`handle_publish`), so nothing kept pins the buffer.
        let payload = if payload.len() > COPY_MAX {
            Bytes::copy_from_slice(&payload)
        } else {
            payload
        };
        let (ring, now_ms) = (self.config.ring, self.now_ms);
        let Some(owned) = self.owned.get_mut(topic) else {
            return;
        };
        let before = owned.ring_retained();
        if !owned.append_copy(seq, &payload, ring, now_ms) {
            return;
        }
        self.retained = self.retained + owned.ring_retained() - before;
        self.stats.messages_mirrored += 1;
        self.fan_out(topic, seq, &payload);
        self.check_topic_memory();
    }

    fn mirror_gap(&mut self, topic: &TopicKey, gap: Discontinuity) {
        let replaying = self
            .owned
            .get(topic)
            .and_then(|t| t.upstream.as_ref())
            .is_some_and(|up| up.replaying);
        // During a replay the gap is the one the SUB_OK already showed.
        if !replaying {
            self.restart_topic(topic, gap.epoch, gap.next_seq.saturating_sub(1));
        }
    }

    fn mirror_replay_end(&mut self, topic: &TopicKey) {
        let Some(upstream) = self.owned.get_mut(topic).and_then(|t| t.upstream.as_mut()) else {
            return;
        };
        upstream.replaying = false;
        if upstream.pulling {
            return self.finish_pull(topic, true);
        }
        if !upstream.known {
            upstream.known = true;
            let waiting = std::mem::take(&mut upstream.waiting);
            for (shard, handle, resume) in waiting {
                self.take_interest(topic.clone(), shard, handle, resume);
            }
        }
    }

    /// The topic's stream starts over at `last_seq` of `epoch`: its ring is
    /// emptied and every interested shard told, which tells each local
    /// subscriber with a `DISCONTINUITY`.
    fn restart_topic(&mut self, topic: &TopicKey, epoch: Epoch, last_seq: Seq) {
        let Some(owned) = self.owned.get_mut(topic) else {
            return;
        };
        let before = owned.ring_retained();
        owned.restart(epoch, last_seq);
        self.retained -= before;
        self.stats.topic_restarts += 1;
        let interested = owned.interested.clone();
        let next_seq = last_seq + 1;
        for (shard, handle) in interested {
            if shard == self.id {
                self.restart_local(handle, epoch, next_seq);
            } else {
                self.push_mesh(
                    shard,
                    ShardMsg::RestartMsg {
                        handle,
                        epoch,
                        next_seq,
                    },
                );
            }
        }
    }

    /// Subscriber side of [`ShardMsg::RestartMsg`]: each local subscriber
    /// gets its pending loss report, if it has one, then a `DISCONTINUITY`
    /// from where it is to `next_seq` of `epoch`.
    pub(super) fn restart_local(&mut self, handle: LocalRef, epoch: Epoch, next_seq: Seq) {
        let Some(local) = self.local.by_handle_mut(handle) else {
            return;
        };
        let Some(active) = local.active.as_mut() else {
            return;
        };
        let last_seq = active.last_seq;
        active.epoch = epoch;
        active.last_seq = next_seq - 1;
        let subscribers = local.subscribers.clone();
        let mut slow = Vec::new();
        for (conn, sub_id) in subscribers {
            let Some(state) = self.conns.get_mut(&conn) else {
                continue;
            };
            let mut frames = Vec::with_capacity(2);
            if let Some(lost) = state
                .subscriptions
                .get_mut(&sub_id)
                .and_then(|sub| sub.lost.take())
            {
                state.lossy.retain(|id| *id != sub_id);
                frames.push(OutFrame::Discontinuity {
                    sub_id,
                    epoch: lost.epoch,
                    last_seq: lost.first - 1,
                    next_seq: lost.last + 1,
                });
            }
            frames.push(OutFrame::Discontinuity {
                sub_id,
                epoch,
                last_seq,
                next_seq,
            });
            for frame in frames {
                if state.outbox.push(frame) == Err(PushError::Full) {
                    slow.push(conn);
                    break;
                }
            }
        }
        for conn in slow {
            self.close_slow_consumer(conn);
        }
    }

    // ----- the member list changes -------------------------------------

    /// Places every topic of this shard again after the member list changed:
    /// a topic that moved away becomes a mirror of its new owner, a mirror
    /// whose owner left becomes this node's (a new epoch) or follows the
    /// next owner. Subscribers see one `DISCONTINUITY` where the epoch
    /// changes.
    fn reconcile(&mut self) {
        let now_ms = self.now_ms;
        let Some(nodes) = self.nodes.as_mut() else {
            return;
        };
        nodes.placement = nodes.map.placement();
        nodes.changed_ms = now_ms;
        let placement = nodes.placement.clone();
        let keys: Vec<TopicKey> = self.owned.keys().cloned().collect();
        let mut moved = 0usize;
        for topic in keys {
            let owner = placement.owner(&topic);
            let Some(owned) = self.owned.get(&topic) else {
                continue;
            };
            let up = owned.upstream.as_ref();
            let current = up.map(|up| up.node);
            let pulling = up.is_some_and(|up| up.pulling);
            let authoritative = up.is_some_and(|up| up.authoritative);
            // A pull goes on while this node owns the topic; when the
            // source owns it again, this node follows it instead.
            if (owner == current && !pulling) || (pulling && owner.is_none()) {
                continue;
            }
            moved += 1;
            debug!(%topic, ?current, ?owner, pulling, authoritative, "topic placed again");
            match (current, owner) {
                (None, Some(node)) => {
                    // Another node owns it now. This state stays the topic's
                    // until that node takes it (`hand_over`); meanwhile
                    // publishes here go there, and subscribers here follow
                    // it from where they are (it answers once it has taken
                    // the state over: no gap).
                    let mut upstream = Upstream::fresh(node);
                    upstream.known = true;
                    upstream.authoritative = true;
                    if let Some(owned) = self.owned.get_mut(&topic) {
                        owned.upstream = Some(Box::new(upstream));
                    }
                    self.subscribe_upstream(&topic);
                }
                (Some(_), None) if authoritative => {
                    // Handed to nobody in the end: this node's again.
                    self.unsubscribe_upstream(&topic);
                    if let Some(owned) = self.owned.get_mut(&topic) {
                        owned.upstream = None;
                    }
                }
                (Some(from), None) if placement.has(from) => {
                    // The owner until now is still there: take the state over
                    // from it, from where this copy is.
                    self.unsubscribe_upstream(&topic);
                    if let Some(up) = self.owned.get_mut(&topic).and_then(|t| t.upstream.as_mut()) {
                        up.pulling = true;
                        up.deadline_ms = now_ms + PULL_TIMEOUT_MS;
                    }
                    self.subscribe_upstream(&topic);
                }
                (Some(_), None) => {
                    // The owner died with the state: a new epoch starts here.
                    self.unsubscribe_upstream(&topic);
                    self.finish_pull(&topic, false);
                }
                (Some(_), Some(node)) => {
                    self.unsubscribe_upstream(&topic);
                    let parked = match self.owned.get_mut(&topic).and_then(|t| t.upstream.as_mut())
                    {
                        Some(up) => {
                            up.node = node;
                            up.pulling = false;
                            up.parked_bytes = 0;
                            std::mem::take(&mut up.parked)
                        }
                        None => Vec::new(),
                    };
                    self.subscribe_upstream(&topic);
                    for (payload, origin) in parked {
                        self.forward_publish(node, &topic, &payload, origin);
                    }
                }
                (None, None) => {}
            }
        }
        // Links to nodes that left: what waits on them fails now, not when
        // TCP gives up on a silent peer, and their tasks end.
        let gone: Vec<SocketAddr> = self
            .nodes
            .as_ref()
            .map(|nodes| {
                nodes
                    .links
                    .keys()
                    .filter(|node| !placement.has(**node))
                    .copied()
                    .collect()
            })
            .unwrap_or_default();
        for node in gone {
            self.link_down(node, "the node left the cluster");
            if let Some(link) = self.link_mut(node) {
                link.closing = true;
                if let Some(waker) = link.writer.take() {
                    waker.wake();
                }
            }
        }
        if moved > 0 {
            info!(
                shard = self.id,
                topics = moved,
                "members changed: topics placed again"
            );
        }
        // A new member is asked for the patterns' matches too, and the
        // groups' shares follow their topics' owners.
        self.resubscribe_patterns();
        self.share_remotely();
        if self.id == 0 {
            // Once per node: the client ids whose home moved go there.
            self.move_client_ids();
        }
    }

    // ----- handing a topic over ----------------------------------------

    /// A `HANDOFF_REQUEST` from another node, on this shard's end of its
    /// link: the topic's shard answers it.
    pub(super) fn handle_handoff_request(&mut self, conn: ConnId, request: corebus_net::Subscribe) {
        let Some(to) = self.peer_only(conn, request.request_id, "ask for a topic's state") else {
            return;
        };
        let handoff = Handoff {
            to,
            conn,
            request_id: request.request_id,
            sub_id: request.sub_id,
            point: request.resume.unwrap_or(ResumePoint {
                epoch: 0,
                next_seq: 1,
            }),
            topic: request.topic.compact(),
        };
        let shard = crate::routing::owner(&handoff.topic, self.shard_count);
        if shard == self.id {
            self.hand_over(self.id, handoff);
        } else {
            self.push_mesh(shard, ShardMsg::HandoffMsg(Box::new(handoff)));
        }
    }

    /// On the topic's shard: hands the topic's state to the node that asked,
    /// if this node holds it (it owns the topic, or owned it until the
    /// member list changed), and from then on forwards the topic there.
    pub(super) fn hand_over(&mut self, from: ShardId, request: Handoff) {
        let route = self.node_route(&request.topic);
        // Nothing here: definitive when this node is where the asking node
        // should ask; otherwise the asking node knows too few members yet.
        let nothing = match self
            .nodes
            .as_ref()
            .and_then(|nodes| nodes.placement.source_for(&request.topic, request.to))
        {
            Some(Some(_)) => HandoffAnswer::NotYet,
            _ => HandoffAnswer::NoState,
        };
        let answer = match self.owned.get(&request.topic) {
            None => nothing,
            Some(owned) => match owned.upstream.as_ref() {
                // Still this node's, as far as it knows.
                None => HandoffAnswer::NotYet,
                // A copy: of the asking node's own state, which it lost, or
                // of a node gone with it, there is none to be had; of a
                // third node's, the state is there, and the asking node
                // sees too few members to know it yet.
                Some(up) if !up.authoritative => match up.answered_by {
                    Some(from) if from != request.to && self.member(from) => HandoffAnswer::NotYet,
                    _ => nothing,
                },
                Some(up) if up.node != request.to || route != Some(request.to) => {
                    HandoffAnswer::NotYet
                }
                Some(_) => HandoffAnswer::State(owned.epoch(), owned.resume(request.point)),
            },
        };
        let mut retained = None;
        if matches!(answer, HandoffAnswer::State(..)) {
            // The retained message goes with the state; this node, which no
            // longer owns the topic, keeps none.
            retained = self.take_retained(&request.topic);
            if let Some(up) = self
                .owned
                .get_mut(&request.topic)
                .and_then(|t| t.upstream.as_mut())
            {
                // A copy from now on; its subscription to the new owner, if
                // it has one, stays.
                up.authoritative = false;
            }
            self.stats.topics_handed_over += 1;
            debug!(topic = %request.topic, to = %request.to, "topic handed over");
            // Subscribers here follow the new owner.
            self.subscribe_upstream(&request.topic);
        }
        let reply = HandoffReply {
            request,
            answer,
            retained,
        };
        if from == self.id {
            self.handoff_reply(reply);
        } else {
            self.push_mesh(from, ShardMsg::HandoffReplyMsg(Box::new(reply)));
        }
    }

    /// On the link's shard: sends the asking node the topic's state as a
    /// resuming subscription gets it (`SUB_OK`, the replay, `REPLAY_END`),
    /// or an error when this node held none. No subscription is made.
    pub(super) fn handoff_reply(&mut self, reply: HandoffReply) {
        let HandoffReply {
            request,
            answer,
            retained,
        } = reply;
        let (epoch, plan) = match answer {
            HandoffAnswer::State(epoch, plan) => (epoch, plan),
            // Epoch 0 is no topic's: "nothing here", definitively.
            HandoffAnswer::NoState => (
                0,
                crate::topic::ResumePlan {
                    start_after: 0,
                    gap: None,
                    replay: Vec::new(),
                },
            ),
            HandoffAnswer::NotYet => {
                let text = format!(
                    "this node does not see {} as the owner of {} yet; ask again",
                    request.to, request.topic
                );
                return self.send_error(
                    request.conn,
                    request.request_id,
                    ErrorCode::OwnerUnavailable,
                    text,
                );
            }
        };
        let last_seq = plan.start_after + plan.replay.len() as Seq;
        self.send(
            request.conn,
            OutFrame::SubOk {
                request_id: request.request_id,
                sub_id: request.sub_id,
                epoch,
                start_after: plan.start_after,
            },
        );
        let version = self
            .conns
            .get(&request.conn)
            .map_or(corebus_net::PROTOCOL_VERSION, |state| state.version);
        for (seq, payload) in plan.replay {
            let payload = super::delivery::body_for_version(version, &payload).unwrap_or(payload);
            self.send(
                request.conn,
                OutFrame::Message {
                    sub_id: request.sub_id,
                    epoch,
                    seq,
                    payload,
                },
            );
        }
        if let Some(message) = retained {
            // Before the REPLAY_END, as a TOPIC_MESSAGE of the handoff: the
            // new owner keeps it as the topic's retained message.
            let mut frame = bytes::BytesMut::new();
            corebus_net::encode_topic_message(
                &mut frame,
                request.sub_id,
                message.epoch,
                message.seq,
                message.topic.topic_bytes(),
                &message.body,
            );
            self.send(request.conn, OutFrame::Encoded(frame.freeze()));
        }
        self.send(
            request.conn,
            OutFrame::ReplayEnd {
                sub_id: request.sub_id,
                last_seq,
            },
        );
    }

    // ----- links -------------------------------------------------------

    /// The link to `node`, made (and its task asked for) on first use.
    pub(super) fn link(&mut self, node: SocketAddr) -> &mut PeerLink {
        let nodes = self.nodes.as_mut().expect("links exist in a cluster only");
        if !nodes.links.contains_key(&node) {
            nodes.starts.push(node);
            if let Some(waker) = nodes.starter.take() {
                waker.wake();
            }
        }
        nodes.links.entry(node).or_default()
    }

    /// This shard's links (none outside a cluster).
    pub(super) fn links_mut(&mut self) -> impl Iterator<Item = &mut PeerLink> {
        self.nodes
            .as_mut()
            .into_iter()
            .flat_map(|nodes| nodes.links.values_mut())
    }

    /// The link to `node`, if there is one.
    pub(super) fn link_mut(&mut self, node: SocketAddr) -> Option<&mut PeerLink> {
        self.nodes.as_mut()?.links.get_mut(&node)
    }

    /// Links whose tasks the runtime must start, or `waker` registered to
    /// be woken when there are some.
    pub fn take_link_starts(&mut self, waker: &std::task::Waker) -> Vec<SocketAddr> {
        let Some(nodes) = self.nodes.as_mut() else {
            return Vec::new();
        };
        if nodes.starts.is_empty() {
            nodes.starter = Some(waker.clone());
        }
        std::mem::take(&mut nodes.starts)
    }

    /// Whether the link to `node` should (re)connect: while it is a member.
    pub fn link_wanted(&self, node: SocketAddr) -> bool {
        self.nodes.as_ref().is_some_and(|nodes| {
            nodes.placement.has(node) && nodes.links.get(&node).is_none_or(|link| !link.closing)
        })
    }

    /// Whether `node` (a client address) is a member, leaving or not.
    fn member(&self, node: SocketAddr) -> bool {
        self.nodes
            .as_ref()
            .is_some_and(|nodes| nodes.placement.has(node))
    }

    /// What the link to another node sends in its `HELLO`.
    pub fn peer_credentials(&self) -> Vec<u8> {
        self.nodes
            .as_ref()
            .map(|nodes| nodes.map.peer_credentials(crate::auth::unix_now_ms()))
            .unwrap_or_default()
    }

    /// Checks another node's link credentials.
    pub(super) fn verify_peer(&self, credentials: &[u8]) -> Result<String, String> {
        match &self.nodes {
            Some(nodes) => nodes
                .map
                .verify_peer(credentials, crate::auth::unix_now_ms()),
            None => Err("this broker is not a member of a cluster".into()),
        }
    }

    /// The link's handshake succeeded: the mirrors of `node`'s topics
    /// subscribe (again), from where each is.
    pub fn link_up(&mut self, node: SocketAddr) {
        let link = self.link(node);
        link.up = true;
        link.kick();
        let mirrors: Vec<TopicKey> = self
            .owned
            .iter()
            .filter(|(_, t)| {
                t.upstream
                    .as_ref()
                    .is_some_and(|up| up.node == node && up.sub_id == 0)
            })
            .map(|(key, _)| key.clone())
            .collect();
        for topic in mirrors {
            self.subscribe_upstream(&topic);
        }
        self.resubscribe_patterns();
        self.ask_waiting_fetches(node);
        self.share_remotely();
    }

    /// The link to `node` broke (or never came up): its unanswered
    /// publishes fail, and its mirrors wait to subscribe again.
    pub fn link_down(&mut self, node: SocketAddr, reason: &str) {
        let Some(link) = self.link_mut(node) else {
            return;
        };
        let was_up = std::mem::take(&mut link.up);
        link.out.clear();
        link.subs.clear();
        link.shared.clear();
        link.shares_ended.clear();
        link.sub_requests.clear();
        let fetches = link.fetches.drain().map(|(_, fetch)| fetch).collect();
        let claims = link.claims.drain().map(|(_, conn)| conn).collect();
        let wants = std::mem::take(&mut link.wants);
        link.fetch_bytes = 0;
        // Failed in the order they were sent, as the answers would have come.
        let mut acks: Vec<(u32, Forwarded)> = link.acks.drain().collect();
        acks.sort_by_key(|(request_id, _)| link.age_order(*request_id));
        let acks: Vec<Forwarded> = acks.into_iter().map(|(_, origin)| origin).collect();
        if was_up {
            info!(shard = self.id, %node, %reason, "link to node lost");
        }
        for origin in acks {
            let reason = format!(
                "the link to the owner node {node} broke before it acknowledged this publish \
                 ({reason}); it may or may not have been published"
            );
            self.settle(origin, Err(reason));
        }
        for owned in self.owned.values_mut() {
            if let Some(up) = owned.upstream.as_mut().filter(|up| up.node == node) {
                up.sub_id = 0;
            }
        }
        self.forget_remote_patterns(node);
        self.end_link_fetches(fetches);
        self.forget_remote_shares(node);
        self.fail_claims(claims);
        self.fail_wants(wants);
    }

    /// The link to `node` ended for good (the node left).
    pub fn link_ended(&mut self, node: SocketAddr) {
        self.link_down(node, "the node left the cluster");
        if let Some(nodes) = self.nodes.as_mut() {
            nodes.links.remove(&node);
        }
    }

    /// Encoded frames for the link's writer, or `waker` registered to be
    /// woken when there are some.
    pub fn take_link_out(
        &mut self,
        node: SocketAddr,
        waker: &std::task::Waker,
    ) -> Result<Option<bytes::BytesMut>, crate::upstream::LinkClosed> {
        let Some(link) = self.link_mut(node) else {
            return Err(crate::upstream::LinkClosed);
        };
        if link.closing {
            return Err(crate::upstream::LinkClosed);
        }
        if !link.up || link.out.is_empty() {
            link.writer = Some(waker.clone());
            return Ok(None);
        }
        Ok(Some(link.out.split()))
    }

    /// Whether some link holds more than [`LINK_HIGH_WATER`] bytes for its
    /// writer (readers pause, as for the mesh).
    pub fn links_backlogged(&self) -> bool {
        self.nodes.as_ref().is_some_and(|nodes| {
            nodes
                .links
                .values()
                .any(|link| link.out.len() > LINK_HIGH_WATER)
        })
    }

    /// Whether `conn`'s reader should pause for the links: some link is
    /// backlogged and `conn` is a client, not another node.
    pub fn waits_for_links(&self, conn: ConnId) -> bool {
        self.links_backlogged() && !self.is_peer(conn)
    }

    /// Maintenance: place topics again if the members changed, and ask
    /// again for the mirrors' subscriptions an owner refused.
    pub(super) fn tick_nodes(&mut self) {
        self.refresh_placement();
        self.forward_client_ids();
        let now_ms = self.now_ms;
        let Some(nodes) = self.nodes.as_ref() else {
            return;
        };
        let mut retry = Vec::new();
        let mut expired = Vec::new();
        let mut unused = Vec::new();
        for (key, owned) in &self.owned {
            let Some(up) = owned.upstream.as_ref() else {
                continue;
            };
            if up.pulling && now_ms >= up.deadline_ms {
                expired.push(key.clone());
            } else if up.sub_id == 0 {
                retry.push(key.clone());
            }
            // A copy nobody here needs, kept only until this node agrees
            // where the topic went (so that nothing published here in
            // between started the topic over here).
            if owned.interested.is_empty()
                && !up.needed()
                && nodes.placement.owner(key) == Some(up.node)
            {
                unused.push(key.clone());
            }
        }
        for topic in expired {
            debug!(%topic, "no state of the topic came in time: a new epoch");
            self.finish_pull(&topic, false);
        }
        for topic in retry {
            // A pull asks again where the state now seems to be: a node that
            // started with few members known learns of more.
            let source = self
                .nodes
                .as_ref()
                .and_then(|nodes| nodes.placement.handoff_source(&topic));
            if let Some(up) = self.owned.get_mut(&topic).and_then(|t| t.upstream.as_mut()) {
                if let (true, Some(source)) = (up.pulling, source) {
                    up.node = source;
                }
            }
            self.subscribe_upstream(&topic);
        }
        for topic in unused {
            self.drop_mirror_if_unused(&topic);
        }
    }

    /// Upstream subscriptions (mirrors) this shard holds, per owner node.
    pub fn upstream_subscriptions(&self) -> Vec<(SocketAddr, u64)> {
        let mut counts: rustc_hash::FxHashMap<SocketAddr, u64> = Default::default();
        for owned in self.owned.values() {
            if let Some(up) = &owned.upstream {
                *counts.entry(up.node).or_default() += 1;
            }
        }
        let mut counts: Vec<_> = counts.into_iter().collect();
        counts.sort();
        counts
    }
}
