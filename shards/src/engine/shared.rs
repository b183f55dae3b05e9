//! Shared subscriptions (`SUBSCRIBE_SHARED`, MQTT's `$share/group/filter`):
//! each message of a topic or pattern goes to one member of a group.
//!
//! Every shard keeps a copy of every group's members (joins and leaves go
//! to all shards), and the shard that sequences a message, the topic's
//! owner, picks the member: the next one in turn among those of its copy
//! of the group. One shard decides for each message, so it reaches exactly
//! one member; a member that left before the message reached it loses it
//! (counted in `shared_messages_dropped`). Groups are per node: in a
//! cluster, messages sequenced on another node do not reach them.

use bytes::Bytes;
use corebus_net::{pattern_matches, Epoch, ErrorCode, Seq, SubscribeShared, TopicKey};

use super::{ConnId, Shard, SubState};
use crate::auth::Action;
use crate::mesh::{ShardMsg, SharedDelivery, SharedMember};
use crate::outbox::{OutFrame, PushError};
use crate::routing::ShardId;

/// A member of a group: a subscription of a connection on a shard.
pub type Member = SharedMember;

/// One group's shared subscription to a topic or pattern, as one shard
/// knows it.
#[derive(Debug)]
pub(super) struct SharedGroup {
    group: Box<str>,
    topic: TopicKey,
    members: Vec<Member>,
    /// The member whose turn is next.
    next: usize,
}

/// Whether `group` may name a group: 1 to 255 bytes, no level separator,
/// wildcard or control character.
fn valid_group(group: &str) -> bool {
    (1..=255).contains(&group.len())
        && !group
            .chars()
            .any(|c| matches!(c, '/' | '+' | '#' | '*' | '>') || c.is_control())
}

impl Shard {
    /// A connection joins a group's shared subscription.
    pub(super) fn handle_subscribe_shared(&mut self, conn: ConnId, request: SubscribeShared) {
        let SubscribeShared {
            request_id,
            sub_id,
            group,
            topic,
        } = request;
        if !valid_group(&group) {
            return self.send_error(
                conn,
                request_id,
                ErrorCode::InvalidRequest,
                format!("{group:?} is not a group name: 1 to 255 bytes, no / + # * > or control characters"),
            );
        }
        if !self.permitted(conn, request_id, Action::Subscribe, &topic) {
            return;
        }
        if self.sub_id_taken(conn, request_id, sub_id) {
            return;
        }
        if let Err(reason) = self.admit_subscription(conn, &topic) {
            self.stats.subscriptions_refused += 1;
            return self.send_error(conn, request_id, ErrorCode::TooManySubscriptions, reason);
        }
        self.stats.subscribes += 1;
        let topic = topic.compact();
        let group: Box<str> = group.into();
        if let Some(state) = self.conns.get_mut(&conn) {
            state.subscriptions.insert(
                sub_id,
                SubState {
                    topic: topic.clone(),
                    resume_request: None,
                    lost: None,
                    group: Some(group.clone()),
                },
            );
        }
        let member = (self.id, conn, sub_id);
        for shard in 0..self.shard_count as ShardId {
            let (group, topic) = (group.clone(), topic.clone());
            if shard == self.id {
                self.join_group(group, topic, member);
            } else {
                self.push_mesh(
                    shard,
                    ShardMsg::JoinGroupMsg(Box::new((group, topic, member))),
                );
            }
        }
        // Joins travel in order with this shard's publishes: a publish of
        // this connection's after the `SUB_OK` finds it a member.
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

    /// A member leaves its group (unsubscribed, or its connection closed).
    pub(super) fn leave_shared(
        &mut self,
        group: Box<str>,
        topic: TopicKey,
        conn: ConnId,
        sub_id: u32,
    ) {
        let member = (self.id, conn, sub_id);
        for shard in 0..self.shard_count as ShardId {
            let (group, topic) = (group.clone(), topic.clone());
            if shard == self.id {
                self.leave_group(&group, &topic, member);
            } else {
                self.push_mesh(
                    shard,
                    ShardMsg::LeaveGroupMsg(Box::new((group, topic, member))),
                );
            }
        }
    }

    /// This shard's copy of a group gains `member`.
    pub(super) fn join_group(&mut self, group: Box<str>, topic: TopicKey, member: Member) {
        match self
            .shared
            .iter_mut()
            .find(|entry| entry.group == group && entry.topic == topic)
        {
            Some(entry) => entry.members.push(member),
            None => self.shared.push(SharedGroup {
                group,
                topic,
                members: vec![member],
                next: 0,
            }),
        }
    }

    /// This shard's copy of a group loses `member`; a group without members
    /// is forgotten.
    pub(super) fn leave_group(&mut self, group: &str, topic: &TopicKey, member: Member) {
        for entry in &mut self.shared {
            if &*entry.group == group && entry.topic == *topic {
                entry.members.retain(|m| *m != member);
            }
        }
        self.shared.retain(|entry| !entry.members.is_empty());
    }

    /// Owner side: message `seq` of `topic` (just sequenced) to one member
    /// of each group whose topic or pattern it matches.
    pub(super) fn fan_out_shared(
        &mut self,
        topic: &TopicKey,
        epoch: Epoch,
        seq: Seq,
        payload: &Bytes,
    ) {
        let mut chosen = Vec::new();
        for entry in &mut self.shared {
            let matches = entry.topic.namespace_bytes() == topic.namespace_bytes()
                && if entry.topic.is_pattern() {
                    pattern_matches(entry.topic.topic_bytes(), topic.topic_bytes())
                } else {
                    entry.topic.topic_bytes() == topic.topic_bytes()
                };
            if matches {
                let member = entry.members[entry.next % entry.members.len()];
                entry.next = entry.next.wrapping_add(1);
                chosen.push(member);
            }
        }
        for (shard, conn, sub_id) in chosen {
            let delivery = SharedDelivery {
                conn,
                sub_id,
                topic: topic.clone(),
                epoch,
                seq,
                payload: payload.clone(),
            };
            if shard == self.id {
                self.deliver_shared(&delivery);
            } else {
                self.push_mesh(shard, ShardMsg::SharedDeliverMsg(Box::new(delivery)));
            }
        }
    }

    /// Member side: a message for one member of a group.
    pub(super) fn deliver_shared(&mut self, delivery: &SharedDelivery) {
        let Some(state) = self.conns.get_mut(&delivery.conn) else {
            self.stats.shared_messages_dropped += 1;
            return;
        };
        let member = state
            .subscriptions
            .get(&delivery.sub_id)
            .is_some_and(|sub| sub.group.is_some());
        if !member {
            // Left after the owner chose it.
            self.stats.shared_messages_dropped += 1;
            return;
        }
        if let Some(grant) = &state.grant {
            if !grant.permissions.may_receive(&delivery.topic) {
                return;
            }
        }
        let pushed = state.push_topic_message(
            delivery.sub_id,
            delivery.epoch,
            delivery.seq,
            &delivery.topic,
            &delivery.payload,
        );
        match pushed {
            Ok(()) => self.stats.messages_delivered += 1,
            Err(PushError::Closing) => {}
            // As for a pattern's messages: a slow consumer is closed (and
            // counted as such), or the message dropped and counted.
            Err(PushError::Full)
                if self.config.slow_consumer == super::SlowConsumerPolicy::Disconnect =>
            {
                self.close_slow_consumer(delivery.conn)
            }
            Err(PushError::Full) => self.stats.messages_dropped += 1,
        }
    }
}
