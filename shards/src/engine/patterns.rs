//! Pattern subscriptions (`orders/*`, `orders/>`): live-only subscriptions
//! to every topic whose name matches.
//!
//! A pattern has no owner. The shard of a connection that subscribes to one
//! registers the pattern's interest with every shard, itself included, and
//! answers `SUB_OK` once all of them acknowledged: from then on, whichever
//! shard sequences a matching message sends it here (once per shard and
//! pattern, however many local subscribers it has), with its topic, and it
//! reaches each subscriber as a `TOPIC_MESSAGE` carrying that topic's own
//! epoch and sequence number. Each shard matches the topics it sequences
//! against a trie of the registered patterns ([`crate::patterns`]).
//!
//! Live only: a pattern subscription does not resume (a gap is visible per
//! topic, in its sequence numbers), and a message dropped by the
//! slow-consumer `drop` policy is counted, not reported with a
//! `DISCONTINUITY` (which names one topic's sequence).
//!
//! In a cluster, every node sequences the topics it owns, so a pattern's
//! entry with client subscribers also subscribes to the pattern on this
//! shard's link to every other member: those nodes match what they own and
//! send it over the link as `TOPIC_MESSAGE`s, which go to this entry's
//! client subscriptions only (a link's subscription to the same pattern
//! here gets this node's own topics, never what came from a third node).
//! This node's mirrors of other nodes' topics are not matched here: their
//! owners do that.

use std::net::SocketAddr;

use bytes::Bytes;
use corebus_net::{Epoch, Seq, TopicKey, TopicMessage};

use super::{ConnId, Shard, SlowConsumerPolicy};
use crate::local_ref::LocalRef;
use crate::mesh::{PatternDelivery, ShardMsg};
use crate::outbox::{OutFrame, PushError};
use crate::routing::ShardId;

/// Subscriber-side state of one pattern with local subscribers.
#[derive(Debug)]
pub(crate) struct LocalPattern {
    /// The pattern (the table's key, kept here for its entry's release).
    pattern: TopicKey,
    /// Cluster: the pattern's subscriptions on this shard's links to the
    /// other members, as (node, subscription id on that link).
    remote: Vec<(std::net::SocketAddr, u32)>,
    /// Shards that have not yet acknowledged the pattern's interest.
    acks_pending: usize,
    /// Subscriptions waiting for those acknowledgements:
    /// (conn, sub id, request id).
    waiting: Vec<(ConnId, u32, u32)>,
    /// Subscriptions receiving the pattern's messages: (conn, sub id).
    subscribers: Vec<(ConnId, u32)>,
}

impl Shard {
    /// Why a pattern subscription cannot be made here, if it cannot.
    pub(super) fn pattern_refusal(&self, resume: bool) -> Option<String> {
        resume.then(|| {
            "a pattern subscription is live only: it cannot resume (subscribe without a resume \
             point)"
                .into()
        })
    }

    /// Subscriber side: a connection subscribes to a pattern (admitted and
    /// permitted already).
    pub(super) fn subscribe_pattern(
        &mut self,
        conn: ConnId,
        request_id: u32,
        sub_id: u32,
        pattern: TopicKey,
    ) {
        let (handle, key, is_new) = match self.local_patterns.handle(&pattern) {
            Some(handle) => {
                let key = self.local_patterns.key(&pattern).cloned();
                (handle, key.unwrap_or_else(|| pattern.compact()), false)
            }
            None => {
                let key = pattern.compact();
                let entry = LocalPattern {
                    pattern: key.clone(),
                    remote: Vec::new(),
                    acks_pending: self.shard_count,
                    waiting: Vec::new(),
                    subscribers: Vec::new(),
                };
                (self.local_patterns.insert(key.clone(), entry), key, true)
            }
        };
        if let Some(state) = self.conns.get_mut(&conn) {
            state.subscriptions.insert(
                sub_id,
                super::SubState {
                    topic: key.clone(),
                    resume_request: None,
                    lost: None,
                    group: None,
                },
            );
        }
        if !self.is_peer(conn) {
            self.subscribe_pattern_remotely(handle);
        }
        let Some(entry) = self.local_patterns.by_handle_mut(handle) else {
            return;
        };
        if entry.acks_pending == 0 {
            entry.subscribers.push((conn, sub_id));
            return self.pattern_sub_ok(conn, request_id, sub_id);
        }
        entry.waiting.push((conn, sub_id, request_id));
        if is_new {
            for shard in 0..self.shard_count as ShardId {
                if shard == self.id {
                    self.take_pattern_interest(self.id, &key, handle);
                } else {
                    self.push_mesh(
                        shard,
                        ShardMsg::PatternInterestMsg {
                            pattern: key.clone(),
                            handle,
                        },
                    );
                }
            }
        }
    }

    /// A pattern subscription starts with nothing behind it: no epoch, no
    /// position (each `TOPIC_MESSAGE` carries its topic's).
    fn pattern_sub_ok(&mut self, conn: ConnId, request_id: u32, sub_id: u32) {
        self.send(
            conn,
            OutFrame::SubOk {
                request_id,
                sub_id,
                epoch: 0,
                start_after: 0,
            },
        );
    }

    /// Owner side (every shard): `from`'s table entry `handle` wants the
    /// messages of the topics that match `pattern`.
    pub(super) fn take_pattern_interest(
        &mut self,
        from: ShardId,
        pattern: &TopicKey,
        handle: LocalRef,
    ) {
        // One registration per shard and pattern: a newer entry replaces an
        // older one (the older was dropped, and its drop came first).
        self.patterns.remove_if(
            pattern.namespace_bytes(),
            pattern.topic_bytes(),
            |(shard, _)| *shard == from,
        );
        self.patterns.insert(
            pattern.namespace_bytes(),
            pattern.topic_bytes(),
            (from, handle),
        );
        if from == self.id {
            self.pattern_interest_acked(handle);
        } else {
            self.push_mesh(from, ShardMsg::PatternAckMsg { handle });
        }
    }

    /// Subscriber side: one more shard registered the pattern; once all
    /// have, the waiting subscriptions start.
    pub(super) fn pattern_interest_acked(&mut self, handle: LocalRef) {
        let Some(entry) = self.local_patterns.by_handle_mut(handle) else {
            return;
        };
        entry.acks_pending = entry.acks_pending.saturating_sub(1);
        if entry.acks_pending > 0 {
            return;
        }
        let waiting = std::mem::take(&mut entry.waiting);
        for (conn, sub_id, request_id) in waiting {
            if self.still_subscribed(conn, sub_id, None) {
                if let Some(entry) = self.local_patterns.by_handle_mut(handle) {
                    entry.subscribers.push((conn, sub_id));
                }
                self.pattern_sub_ok(conn, request_id, sub_id);
            }
        }
        self.release_pattern_if_unused(handle);
    }

    /// Subscriber side: a subscription of `pattern` ended.
    pub(super) fn remove_pattern_subscriber(
        &mut self,
        pattern: &TopicKey,
        conn: ConnId,
        sub_id: u32,
    ) {
        let Some(handle) = self.local_patterns.handle(pattern) else {
            return;
        };
        if let Some(entry) = self.local_patterns.by_handle_mut(handle) {
            entry.subscribers.retain(|entry| *entry != (conn, sub_id));
            entry.waiting.retain(|(c, s, _)| (*c, *s) != (conn, sub_id));
        }
        self.release_pattern_if_unused(handle);
    }

    /// Drops a pattern's entry, and its interest on every shard, once no
    /// local subscription uses it and no acknowledgement is outstanding.
    fn release_pattern_if_unused(&mut self, handle: LocalRef) {
        let Some(pattern) = self
            .local_patterns
            .by_handle_mut(handle)
            .filter(|entry| {
                entry.acks_pending == 0 && entry.subscribers.is_empty() && entry.waiting.is_empty()
            })
            .map(|entry| entry.pattern.clone())
        else {
            return;
        };
        if let Some(entry) = self.local_patterns.remove(&pattern) {
            self.unsubscribe_pattern_remotely(&entry.remote);
        }
        for shard in 0..self.shard_count as ShardId {
            if shard == self.id {
                self.drop_pattern_interest(self.id, &pattern);
            } else {
                self.push_mesh(
                    shard,
                    ShardMsg::DropPatternInterestMsg {
                        pattern: pattern.clone(),
                    },
                );
            }
        }
    }

    /// Owner side (every shard): `from` has no subscriber of `pattern` left.
    pub(super) fn drop_pattern_interest(&mut self, from: ShardId, pattern: &TopicKey) {
        self.patterns.remove_if(
            pattern.namespace_bytes(),
            pattern.topic_bytes(),
            |(shard, _)| *shard == from,
        );
    }

    /// Owner side: message `seq` of `topic` (just sequenced) to every shard
    /// with a pattern that matches it.
    pub(super) fn fan_out_patterns(
        &mut self,
        topic: &TopicKey,
        epoch: Epoch,
        seq: Seq,
        payload: &Bytes,
    ) {
        let mut targets = Vec::new();
        self.patterns.matches(
            topic.namespace_bytes(),
            topic.topic_bytes(),
            &mut |target| targets.push(target),
        );
        for (shard, handle) in targets {
            let delivery = PatternDelivery {
                handle,
                topic: topic.clone(),
                epoch,
                seq,
                payload: payload.clone(),
            };
            if shard == self.id {
                self.deliver_pattern(&delivery, false);
            } else {
                self.push_mesh(shard, ShardMsg::PatternDeliverMsg(Box::new(delivery)));
            }
        }
    }

    /// Subscriber side: one message of a topic that matches the pattern of
    /// table entry `delivery.handle`, to each of its subscriptions, or, for
    /// a message another node sent (`from_node`), to its clients only.
    pub(super) fn deliver_pattern(&mut self, delivery: &PatternDelivery, from_node: bool) {
        let Some(entry) = self.local_patterns.by_handle_mut(delivery.handle) else {
            return; // No local subscribers any more.
        };
        let mut slow = Vec::new();
        for (conn, sub_id) in &entry.subscribers {
            let Some(state) = self.conns.get_mut(conn) else {
                continue;
            };
            if from_node && state.is_peer() {
                continue;
            }
            if let Some(grant) = &state.grant {
                if !grant.permissions.may_receive(&delivery.topic) {
                    continue; // A topic its pattern matches but it may not read.
                }
            }
            let pushed = state.push_topic_message(
                *sub_id,
                delivery.epoch,
                delivery.seq,
                &delivery.topic,
                &delivery.payload,
            );
            match pushed {
                Ok(()) => self.stats.messages_delivered += 1,
                Err(PushError::Closing) => {}
                Err(PushError::Full)
                    if self.config.slow_consumer == SlowConsumerPolicy::Disconnect =>
                {
                    slow.push(*conn)
                }
                Err(PushError::Full) => self.stats.messages_dropped += 1,
            }
        }
        for conn in slow {
            self.close_slow_consumer(conn);
        }
    }

    // ----- across nodes ------------------------------------------------

    /// Cluster: subscribes the pattern of entry `handle` on this shard's
    /// link to every other member it is not subscribed on yet (a link that
    /// is down subscribes when it comes up, [`Shard::resubscribe_patterns`]).
    pub(super) fn subscribe_pattern_remotely(&mut self, handle: LocalRef) {
        // The current member list (placing it again comes back here for
        // every pattern first).
        self.refresh_placement();
        let Some(nodes) = self.nodes.as_ref() else {
            return;
        };
        let members: Vec<SocketAddr> = nodes.placement.clients.iter().flatten().copied().collect();
        let Some(entry) = self.local_patterns.by_handle_mut(handle) else {
            return;
        };
        let pattern = entry.pattern.clone();
        let missing: Vec<SocketAddr> = members
            .into_iter()
            .filter(|node| !entry.remote.iter().any(|(at, _)| at == node))
            .collect();
        for node in missing {
            let Some(sub_id) = self.subscribe_on_link(node, &pattern, None, false) else {
                continue;
            };
            if let Some(entry) = self.local_patterns.by_handle_mut(handle) {
                entry.remote.push((node, sub_id));
            }
        }
    }

    /// Cluster: after a link came up or the members changed, the patterns
    /// with client subscribers subscribe where they are missing.
    pub(super) fn resubscribe_patterns(&mut self) {
        for handle in self.local_patterns.handles() {
            let has_clients = self.local_patterns.by_handle(handle).is_some_and(|entry| {
                entry
                    .subscribers
                    .iter()
                    .map(|(conn, _)| *conn)
                    .chain(entry.waiting.iter().map(|(conn, _, _)| *conn))
                    .any(|conn| !self.is_peer(conn))
            });
            if has_clients {
                self.subscribe_pattern_remotely(handle);
            }
        }
    }

    /// Cluster: the link to `node` is down; the patterns' subscriptions on
    /// it are gone with it.
    pub(super) fn forget_remote_patterns(&mut self, node: SocketAddr) {
        for entry in self.local_patterns.values_mut() {
            entry.remote.retain(|(at, _)| *at != node);
        }
    }

    /// Cluster: ends a released pattern's subscriptions on the links.
    fn unsubscribe_pattern_remotely(&mut self, remote: &[(SocketAddr, u32)]) {
        for &(node, sub_id) in remote {
            self.unsubscribe_on_link(node, sub_id);
        }
    }

    /// Cluster: a `TOPIC_MESSAGE` from another node, for `pattern` (what
    /// its subscription on the link stands for): to the entry's clients.
    pub(super) fn remote_pattern_message(&mut self, pattern: &TopicKey, message: TopicMessage) {
        let Some(handle) = self.local_patterns.handle(pattern) else {
            return;
        };
        let Ok(topic) = TopicKey::new(pattern.namespace_bytes(), message.topic.as_bytes()) else {
            return;
        };
        let delivery = PatternDelivery {
            handle,
            topic,
            epoch: message.epoch,
            seq: message.seq,
            payload: message.body.into_bytes(),
        };
        self.deliver_pattern(&delivery, true);
    }
}
