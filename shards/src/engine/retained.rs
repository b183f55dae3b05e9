//! Retained messages: the last message published with the retain bit
//! (format bit 4, MQTT's retained publish) to each topic, kept by the
//! topic's owner shard apart from the topic's state, so that it outlives
//! the topic's eviction; and `FETCH_RETAINED`, which asks the owners for
//! the ones of a topic or pattern.
//!
//! Bounded per shard in count and bytes (`EngineConfig::retained_messages`
//! and `retained_bytes`, shared equally): a retained publish that would
//! take the shard past either is published but not kept, counted and
//! logged. An empty payload clears the topic's retained message.

use bytes::{Bytes, BytesMut};
use corebus_net::{encode_topic_message, Body, Epoch, ErrorCode, Seq, Subscribe, TopicKey};
use rustc_hash::FxHashMap;
use tracing::warn;

use super::{ConnId, Shard};
use crate::auth::Action;
use crate::mesh::{RetainedMessage, RetainedQuery, RetainedReply, ShardMsg};
use crate::outbox::OutFrame;
use crate::ring::COPY_MAX;
use crate::routing::{self, ShardId};

/// What one kept message costs beyond its body: its key and table slot
/// (an estimate, as `TOPIC_OVERHEAD` is).
const ENTRY_OVERHEAD: usize = 128;

/// Most `FETCH_RETAINED` requests one connection may have unanswered.
pub(super) const MAX_FETCHES_PER_CONN: u16 = 64;

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
        let pending = self.fetches_per_conn.entry(conn).or_default();
        if *pending >= MAX_FETCHES_PER_CONN || self.fetches.contains_key(&(conn, sub_id)) {
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
        let owners: Vec<ShardId> = if topic.is_pattern() {
            (0..self.shard_count as ShardId).collect()
        } else {
            vec![routing::owner(&topic, self.shard_count)]
        };
        self.fetches.insert(
            (conn, sub_id),
            Fetch {
                remaining: owners.len(),
                found: Vec::new(),
            },
        );
        for owner in owners {
            if owner == self.id {
                let found = self.retained_matching(&topic);
                self.retained_found(conn, sub_id, found);
            } else {
                let query = RetainedQuery {
                    conn,
                    sub_id,
                    topic: topic.compact(),
                };
                self.push_mesh(owner, ShardMsg::RetainedQueryMsg(Box::new(query)));
            }
        }
    }

    /// Owner side: answers another shard's query.
    pub(super) fn answer_retained_query(&mut self, from: ShardId, query: RetainedQuery) {
        let found = self.retained_matching(&query.topic);
        let reply = RetainedReply {
            conn: query.conn,
            sub_id: query.sub_id,
            found,
        };
        self.push_mesh(from, ShardMsg::RetainedMsg(Box::new(reply)));
    }

    /// This shard's retained messages of `topic`, or of the topics a
    /// pattern matches. Those whose expiry (an MQTT message expiry, the
    /// expires-at header) has passed are dropped from the store instead.
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
        live
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
        let count = found.len() as u64;
        for message in found {
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
            }
        }
        let end = OutFrame::ReplayEnd {
            sub_id,
            last_seq: count,
        };
        self.send(conn, end);
    }

    /// A connection closed: its fetches are forgotten (answers still on
    /// their way find nothing).
    pub(super) fn forget_fetches(&mut self, conn: ConnId) {
        if self.fetches_per_conn.remove(&conn).is_some() {
            self.fetches.retain(|(of, _), _| *of != conn);
        }
    }
}
