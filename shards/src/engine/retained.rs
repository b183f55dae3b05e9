//! Retained messages: the last message published with the retain bit
//! (format bit 4, MQTT's retained publish) to each topic, kept by the
//! topic's owner shard apart from the topic's state, so that it outlives
//! the topic's eviction; and `FETCH_RETAINED`, which asks the owners for
//! the ones of a topic or pattern: in a cluster, the owner node (on the
//! asking shard's link to it), or every node for a pattern.
//!
//! Bounded per shard in count and bytes (`EngineConfig::retained_messages`
//! and `retained_bytes`, shared equally): a retained publish that would
//! take the shard past either is published but not kept, counted and
//! logged. An empty payload clears the topic's retained message.

use std::net::SocketAddr;

use bytes::{Bytes, BytesMut};
use corebus_net::{encode_topic_message, Body, Epoch, ErrorCode, Frame, Seq, Subscribe, TopicKey};
use rustc_hash::FxHashMap;
use tracing::{debug, warn};

use super::{ConnId, Shard};
use crate::auth::Action;
use crate::mesh::{RetainedMessage, RetainedQuery, RetainedReply, ShardMsg};
use crate::outbox::OutFrame;
use crate::ring::COPY_MAX;
use crate::routing::{self, ShardId};
use crate::upstream::{LinkFetch, PeerLink};

/// What one kept message costs beyond its body: its key and table slot
/// (an estimate, as `TOPIC_OVERHEAD` is).
const ENTRY_OVERHEAD: usize = 128;

/// Most `FETCH_RETAINED` requests one connection may have unanswered.
pub(super) const MAX_FETCHES_PER_CONN: u16 = 64;

/// Most bytes (as [`RetainedStore`] counts them) of retained messages that
/// one shard gathers at once from one other node's answers; past it, the
/// rest of an answer is left out, counted and logged.
pub(crate) const LINK_FETCH_BYTES: usize = 16 << 20;

/// One shard's retained messages.
#[derive(Debug, Default)]
pub(crate) struct RetainedStore {
    by_topic: FxHashMap<TopicKey, RetainedMessage>,
    /// Bytes held, as the bound counts them.
    bytes: usize,
}

impl RetainedStore {
    /// Messages kept.
    pub(crate) fn len(&self) -> usize {
        self.by_topic.len()
    }

    /// Bytes kept, as the bound counts them.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    fn cost(message: &RetainedMessage) -> usize {
        ENTRY_OVERHEAD + message.topic.wire_bytes().len() + message.body.len()
    }
}

/// Whether a kept message's expiry (its expires-at header) has passed.
fn expired(message: &RetainedMessage, now_ms: u64) -> bool {
    // Headers are read only for a body that has them (format bit 3).
    message
        .body
        .first()
        .is_some_and(|format| format & corebus_net::FORMAT_HEADERS != 0)
        && Body::parse(message.body.clone(), "PUBLISH")
            .ok()
            .and_then(|body| body.headers().expires_at_ms)
            .is_some_and(|at| at <= now_ms)
}

/// A `FETCH_RETAINED` waiting for its owners' answers.
#[derive(Debug)]
pub(super) struct Fetch {
    remaining: usize,
    found: Vec<RetainedMessage>,
}

impl Shard {
    /// Owner side: `body` (just sequenced as `seq` of `epoch`) asked to be
    /// retained: it replaces the topic's retained message, or clears it
    /// when its payload is empty.
    pub(super) fn retain_message(
        &mut self,
        topic: &TopicKey,
        epoch: Epoch,
        seq: Seq,
        body: &Bytes,
    ) {
        let empty =
            Body::parse(body.clone(), "PUBLISH").map_or(true, |body| body.payload().is_empty());
        let store = &mut self.retained_messages;
        if let Some(old) = store.by_topic.remove(topic) {
            store.bytes -= RetainedStore::cost(&old);
        }
        if empty {
            return;
        }
        let message = RetainedMessage {
            topic: topic.compact(),
            epoch,
            seq,
            // A small body is a slice of the publisher's read buffer: a
            // copy keeps only its own bytes.
            body: if body.len() > COPY_MAX {
                body.clone()
            } else {
                Bytes::copy_from_slice(body)
            },
        };
        let cost = RetainedStore::cost(&message);
        let shards = self.shard_count.max(1);
        let (max_messages, max_bytes) = (
            self.config.retained_messages / shards,
            self.config.retained_bytes / shards,
        );
        if store.by_topic.len() >= max_messages || store.bytes + cost > max_bytes {
            self.stats.retained_refused += 1;
            if let Some(suppressed) = self.retained_log.admit(self.now_ms) {
                warn!(
                    topic = %topic,
                    kept = store.by_topic.len(),
                    bytes = store.bytes,
                    suppressed,
                    "retained message not kept: the shard holds its share of \
                     retained_messages or retained_bytes"
                );
            }
            return;
        }
        store.bytes += cost;
        store.by_topic.insert(message.topic.clone(), message);
    }

    /// Takes `topic`'s retained message out of the store (its state goes
    /// to another node).
    pub(super) fn take_retained(&mut self, topic: &TopicKey) -> Option<RetainedMessage> {
        let store = &mut self.retained_messages;
        let message = store.by_topic.remove(topic)?;
        store.bytes -= RetainedStore::cost(&message);
        Some(message)
    }

    /// `FETCH_RETAINED`: asks the owner of the topic, or every shard for a
    /// pattern, for the retained messages that match.
    pub(super) fn handle_fetch_retained(&mut self, conn: ConnId, request: Subscribe) {
        let Subscribe {
            request_id,
            sub_id,
            topic,
            ..
        } = request;
        if !self.permitted(conn, request_id, Action::Subscribe, &topic) {
            return;
        }
        // A link carries the fetches of many clients of its node (each at
        // most MAX_FETCHES_PER_CONN), and one refused would hide messages:
        // it may have as many as the count holds.
        let most = if self.is_peer(conn) {
            u16::MAX
        } else {
            MAX_FETCHES_PER_CONN
        };
        let pending = self.fetches_per_conn.entry(conn).or_default();
        if *pending >= most || self.fetches.contains_key(&(conn, sub_id)) {
            return self.send_error(
                conn,
                request_id,
                ErrorCode::InvalidRequest,
                format!(
                    "at most {MAX_FETCHES_PER_CONN} retained fetches at once, each with its \
                     own subscription id"
                ),
            );
        }
        *pending += 1;
        let from_peer = self.is_peer(conn);
        let (owners, nodes) = self.retained_sources(from_peer, &topic);
        self.fetches.insert(
            (conn, sub_id),
            Fetch {
                remaining: owners.len() + nodes.len(),
                found: Vec::new(),
            },
        );
        for node in nodes {
            self.fetch_on_link(node, self.id, conn, sub_id, &topic);
        }
        for owner in owners {
            let query = RetainedQuery {
                conn,
                sub_id,
                topic: topic.compact(),
                from_peer,
            };
            if owner == self.id {
                self.answer_retained_query(self.id, query);
            } else {
                self.push_mesh(owner, ShardMsg::RetainedQueryMsg(Box::new(query)));
            }
        }
    }

    /// Where to ask for the retained messages of `topic`: this node's shard
    /// that owns it (which asks the owner node in turn, when another node
    /// owns it: [`Shard::answer_retained_query`]), or, for a pattern, every
    /// shard of this node and, in a cluster, every other node. A peer's
    /// fetch is answered from this node's shards only: a node never passes
    /// on what another node asked of it.
    fn retained_sources(
        &mut self,
        from_peer: bool,
        topic: &TopicKey,
    ) -> (Vec<ShardId>, Vec<SocketAddr>) {
        if !topic.is_pattern() {
            return (vec![routing::owner(topic, self.shard_count)], Vec::new());
        }
        let shards = (0..self.shard_count as ShardId).collect();
        self.refresh_placement();
        let others = match self.nodes.as_ref() {
            Some(nodes) if !from_peer => {
                nodes.placement.clients.iter().flatten().copied().collect()
            }
            _ => Vec::new(),
        };
        (shards, others)
    }

    /// Asks `node` on this shard's link to it for the retained messages of
    /// `topic`, for fetch `sub_id` of `conn` on shard `reply_to`: now if the
    /// link is up, else once it is ([`Shard::ask_waiting_fetches`]); a link
    /// that fails first answers it with nothing ([`Shard::end_link_fetches`]).
    fn fetch_on_link(
        &mut self,
        node: SocketAddr,
        reply_to: ShardId,
        conn: ConnId,
        sub_id: u32,
        topic: &TopicKey,
    ) {
        let link = self.link(node);
        let link_sub = link.new_fetch(LinkFetch {
            reply_to,
            conn,
            sub_id,
            topic: topic.compact(),
            found: Vec::new(),
            bytes: 0,
            left_out: 0,
            request_id: None,
        });
        if link.up {
            ask_fetch(link, link_sub);
        }
    }

    /// Cluster: the link to `node` came up; the fetches that waited for it
    /// are asked.
    pub(super) fn ask_waiting_fetches(&mut self, node: SocketAddr) {
        let Some(link) = self.link_mut(node) else {
            return;
        };
        let waiting: Vec<u32> = link
            .fetches
            .iter()
            .filter(|(_, fetch)| fetch.request_id.is_none())
            .map(|(sub_id, _)| *sub_id)
            .collect();
        for link_sub in waiting {
            ask_fetch(link, link_sub);
        }
    }

    /// Cluster: a frame from `node` on this shard's link to it that answers
    /// a retained fetch is taken (`None`); any other is given back.
    pub(super) fn fetch_answer(&mut self, node: SocketAddr, frame: Frame) -> Option<Frame> {
        let link = self.link_mut(node)?;
        let done = match &frame {
            Frame::TopicMessage(message) => {
                let Some(fetch) = link.fetches.get_mut(&message.sub_id) else {
                    return Some(frame);
                };
                let Frame::TopicMessage(message) = frame else {
                    return None;
                };
                let body = message.body.into_bytes();
                let cost = ENTRY_OVERHEAD + message.topic.len() + body.len();
                if link.fetch_bytes + cost > LINK_FETCH_BYTES {
                    // Past the bound of what this shard's answers from the
                    // node may hold at once: left out, counted at the end.
                    fetch.left_out += 1;
                    return None;
                }
                match TopicKey::new(fetch.topic.namespace_bytes(), message.topic.as_bytes()) {
                    Ok(topic) => {
                        link.fetch_bytes += cost;
                        fetch.bytes += cost;
                        fetch.found.push(RetainedMessage {
                            topic,
                            epoch: message.epoch,
                            seq: message.seq,
                            // Its own bytes, not a slice of the link's read
                            // buffer, which it would keep alive.
                            body: if body.len() > COPY_MAX {
                                body
                            } else {
                                Bytes::copy_from_slice(&body)
                            },
                        });
                    }
                    Err(err) => debug!(%node, %err, "retained fetch: a topic name refused"),
                }
                return None;
            }
            Frame::ReplayEnd(end) if link.fetches.contains_key(&end.sub_id) => end.sub_id,
            Frame::Error(error) => {
                let sub_id = link.sub_requests.get(&error.request_id).copied();
                match sub_id.filter(|sub_id| link.fetches.contains_key(sub_id)) {
                    Some(sub_id) => {
                        debug!(%node, reason = %error.message, "retained fetch refused");
                        sub_id
                    }
                    None => return Some(frame),
                }
            }
            _ => return Some(frame),
        };
        let fetch = link.fetches.remove(&done)?;
        link.fetch_bytes -= fetch.bytes;
        if let Some(request_id) = fetch.request_id {
            link.sub_requests.remove(&request_id);
        }
        self.end_link_fetches(vec![fetch]);
        None
    }

    /// Cluster: these fetches asked on a link are over (answered, or the
    /// link is down): each is answered with what had arrived, and what was
    /// left out is counted.
    pub(super) fn end_link_fetches(&mut self, fetches: Vec<LinkFetch>) {
        for fetch in fetches {
            if fetch.left_out > 0 {
                self.stats.messages_dropped += fetch.left_out;
                if let Some(suppressed) = self.retained_log.admit(self.now_ms) {
                    warn!(
                        left_out = fetch.left_out,
                        suppressed,
                        "retained messages from another node left out of a fetch: this shard \
                         already holds its bound of answers from that node"
                    );
                }
            }
            self.reply_retained(fetch.reply_to, fetch.conn, fetch.sub_id, fetch.found);
        }
    }

    /// Owner side (the topic's shard, or every shard for a pattern): answers
    /// shard `from`'s query from this shard's store; or, in a cluster, for a
    /// topic another node owns, asks that node over this shard's link, the
    /// way this shard's publishes of the topic go, so a publish the client
    /// sent before its fetch is answered first.
    pub(super) fn answer_retained_query(&mut self, from: ShardId, query: RetainedQuery) {
        if !query.from_peer && !query.topic.is_pattern() {
            if let Some(node) = self.node_route(&query.topic) {
                return self.fetch_on_link(node, from, query.conn, query.sub_id, &query.topic);
            }
        }
        if !query.topic.is_pattern() && self.node_route(&query.topic).is_none() {
            // This node owns the topic: if it took it over lately, its
            // retained message may still be on the node it comes from, and
            // comes with its state (`start_pull`); the fetch waits for it.
            if !self.owned.contains_key(&query.topic) {
                self.start_pull(&query.topic);
            }
            let pulling = self
                .owned
                .get_mut(&query.topic)
                .and_then(|owned| owned.upstream.as_mut())
                .filter(|up| up.pulling);
            if let Some(up) = pulling {
                up.fetches.push((from, query));
                return;
            }
        }
        let found = self.retained_matching(&query.topic);
        self.reply_retained(from, query.conn, query.sub_id, found);
    }

    /// Sends what was found for fetch `sub_id` of `conn` to its shard.
    fn reply_retained(
        &mut self,
        to: ShardId,
        conn: ConnId,
        sub_id: u32,
        found: Vec<RetainedMessage>,
    ) {
        if to == self.id {
            self.retained_found(conn, sub_id, found);
        } else {
            let reply = RetainedReply {
                conn,
                sub_id,
                found,
            };
            self.push_mesh(to, ShardMsg::RetainedMsg(Box::new(reply)));
        }
    }

    /// This shard's retained messages of `topic`, or of the topics a
    /// pattern matches, of the topics this node owns. Those whose expiry
    /// (an MQTT message expiry, the expires-at header) has passed are
    /// dropped from the store instead.
    fn retained_matching(&mut self, topic: &TopicKey) -> Vec<RetainedMessage> {
        let store = &mut self.retained_messages;
        let found: Vec<RetainedMessage> = if topic.is_pattern() {
            store
                .by_topic
                .values()
                .filter(|message| {
                    message.topic.namespace_bytes() == topic.namespace_bytes()
                        && corebus_net::pattern_matches(
                            topic.topic_bytes(),
                            message.topic.topic_bytes(),
                        )
                })
                .cloned()
                .collect()
        } else {
            store.by_topic.get(topic).cloned().into_iter().collect()
        };
        let now_ms = crate::auth::unix_now_ms();
        let (live, expired): (Vec<_>, Vec<_>) = found
            .into_iter()
            .partition(|message| !expired(message, now_ms));
        for message in expired {
            if let Some(old) = store.by_topic.remove(&message.topic) {
                store.bytes -= RetainedStore::cost(&old);
            }
        }
        if self.nodes.is_none() {
            return live;
        }
        // In a cluster, what this node owns now only: a topic that moved to
        // another node left its retained message here, and the new owner's
        // (a later one, or none since it was cleared) is the one that counts.
        live.into_iter()
            .filter(|message| self.node_route(&message.topic).is_none())
            .collect()
    }

    /// Subscriber side: one owner answered; with the last answer, the
    /// messages go to the connection as `TOPIC_MESSAGE`s of `sub_id`,
    /// then `REPLAY_END` with their number.
    pub(super) fn retained_found(
        &mut self,
        conn: ConnId,
        sub_id: u32,
        found: Vec<RetainedMessage>,
    ) {
        let Some(fetch) = self.fetches.get_mut(&(conn, sub_id)) else {
            return;
        };
        fetch.found.extend(found);
        fetch.remaining -= 1;
        if fetch.remaining > 0 {
            return;
        }
        let Some(fetch) = self.fetches.remove(&(conn, sub_id)) else {
            return;
        };
        if let Some(pending) = self.fetches_per_conn.get_mut(&conn) {
            *pending -= 1;
            if *pending == 0 {
                self.fetches_per_conn.remove(&conn);
            }
        }
        let Some(state) = self.conns.get_mut(&conn) else {
            return;
        };
        let mut found = fetch.found;
        if let Some(grant) = &state.grant {
            found.retain(|message| grant.permissions.may_receive(&message.topic));
        }
        // Another node's link also carries that node's live messages: an
        // answer to it takes at most a quarter of its outbox, so that a large
        // one never crowds them out (what is left out is counted, logged).
        let room = if state.is_peer() {
            state.outbox.limit_bytes() / 4
        } else {
            usize::MAX
        };
        let (mut sent, mut cut) = (0u64, 0u64);
        for message in found {
            if state.outbox.queued_bytes() > room {
                cut += 1;
                continue;
            }
            let stripped = state.body_for_version(&message.body);
            let mut frame = BytesMut::new();
            encode_topic_message(
                &mut frame,
                sub_id,
                message.epoch,
                message.seq,
                message.topic.topic_bytes(),
                stripped.as_ref().unwrap_or(&message.body),
            );
            if state
                .outbox
                .push(OutFrame::Encoded(frame.freeze()))
                .is_err()
            {
                // Full: the rest would not fit either.
                self.stats.messages_dropped += 1;
            } else {
                self.stats.messages_delivered += 1;
                sent += 1;
            }
        }
        if cut > 0 {
            self.stats.messages_dropped += cut;
            if let Some(suppressed) = self.retained_log.admit(self.now_ms) {
                warn!(
                    left_out = cut,
                    suppressed,
                    "retained messages left out of an answer to another node: the link \
                     already holds a quarter of its outbox"
                );
            }
        }
        let end = OutFrame::ReplayEnd {
            sub_id,
            last_seq: sent,
        };
        self.send(conn, end);
    }

    /// A connection closed: its fetches are forgotten (answers still on
    /// their way find nothing).
    pub(super) fn forget_fetches(&mut self, conn: ConnId) {
        if self.fetches_per_conn.remove(&conn).is_none() {
            return;
        }
        self.fetches.retain(|(of, _), _| *of != conn);
        // Its fetches on this shard's links (a pattern's) are not asked, or
        // answered, for nothing. (A topic's, asked by the topic's shard, is
        // answered and then finds no fetch.)
        let me = self.id;
        for link in self.links_mut() {
            let ended: Vec<(u32, Option<u32>)> = link
                .fetches
                .iter()
                .filter(|(_, fetch)| fetch.conn == conn && fetch.reply_to == me)
                .map(|(link_sub, fetch)| (*link_sub, fetch.request_id))
                .collect();
            for (link_sub, request_id) in ended {
                if let Some(fetch) = link.fetches.remove(&link_sub) {
                    link.fetch_bytes -= fetch.bytes;
                }
                if let Some(request_id) = request_id {
                    // Its answer, still on its way, is then ignored.
                    link.sub_requests.remove(&request_id);
                }
            }
        }
    }
}

/// Sends the `FETCH_RETAINED` of the link's fetch `link_sub`.
fn ask_fetch(link: &mut PeerLink, link_sub: u32) {
    let request_id = link.request_id();
    let Some(fetch) = link.fetches.get_mut(&link_sub) else {
        return;
    };
    fetch.request_id = Some(request_id);
    Frame::FetchRetained(Subscribe {
        request_id,
        sub_id: link_sub,
        resume: None,
        topic: fetch.topic.clone(),
    })
    .encode(&mut link.out);
    link.sub_requests.insert(request_id, link_sub);
    link.kick();
}
