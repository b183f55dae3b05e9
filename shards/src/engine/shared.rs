//! Shared subscriptions (`SUBSCRIBE_SHARED`, MQTT's `$share/group/filter`):
//! each message of a topic or pattern goes to one member of a group.
//!
//! Every shard keeps a copy of every group's members (joins and leaves go
//! to all shards), and the shard that sequences a message, the topic's
//! owner, picks the member: the next one in turn among those of its copy
//! of the group. One shard decides for each message, so it reaches exactly
//! one member; a member that left before the message reached it loses it
//! (counted in `shared_messages_dropped`).
//!
//! In a cluster, a node with members of a group joins the group on each
//! other node that owns what the group subscribes to (the topic's owner;
//! every node for a pattern) as one member: its link, subscribed with
//! `SUBSCRIBE_SHARED` by one shard of the node (the one the topic or
//! pattern hashes to). When that node picks the link, the message comes
//! over it and this node gives it to one of its own members in turn, never
//! to a link, so nothing goes round. Each message still reaches one member
//! of the group. In the owner's turns another node's share counts as one
//! member, whatever the number of members behind it, and those take turns
//! among what it gets.

use std::net::SocketAddr;

use bytes::Bytes;
use corebus_net::{pattern_matches, Epoch, ErrorCode, Frame, Seq, SubscribeShared, TopicKey};
use tracing::{debug, warn};

use super::{ConnId, Shard, SubState};
use crate::auth::Action;
use crate::mesh::{ShardMsg, SharedDelivery, SharedMember};
use crate::outbox::{OutFrame, PushError};
use crate::routing::{self, ShardId};

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
    /// Cluster, on the shard the topic hashes to: the other nodes the group
    /// is joined on for this node's members, with the subscription id on
    /// the link.
    remote: Vec<(SocketAddr, u32)>,
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
        let member = Member {
            shard: self.id,
            conn,
            sub_id,
            peer: self.is_peer(conn),
        };
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
        let member = Member {
            shard: self.id,
            conn,
            sub_id,
            peer: self.is_peer(conn),
        };
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
                group: group.clone(),
                topic: topic.clone(),
                members: vec![member],
                next: 0,
                remote: Vec::new(),
            }),
        }
        if !member.peer {
            self.share_remotely_of(Some((&group, &topic)));
        }
    }

    /// This shard's copy of a group loses `member`; a group without members
    /// is forgotten.
    pub(super) fn leave_group(&mut self, group: &str, topic: &TopicKey, member: Member) {
        let same =
            |m: &Member| (m.shard, m.conn, m.sub_id) == (member.shard, member.conn, member.sub_id);
        for entry in &mut self.shared {
            if &*entry.group == group && entry.topic == *topic {
                entry.members.retain(|m| !same(m));
            }
        }
        // The shares of a group with no member of this node's left end.
        self.share_remotely_of(Some((group, topic)));
        self.shared.retain(|entry| !entry.members.is_empty());
    }

    // ----- across nodes ------------------------------------------------

    /// Cluster: on the shard each group's topic or pattern hashes to, joins
    /// the group on every other node that owns what it subscribes to, and
    /// leaves where that is no longer so; a group with no member on this
    /// node (links aside) joins nowhere. Run when members, links or the
    /// member list change.
    pub(super) fn share_remotely(&mut self) {
        self.share_remotely_of(None);
    }

    /// [`Shard::share_remotely`] for one group (`only`), or for all.
    fn share_remotely_of(&mut self, only: Option<(&str, &TopicKey)>) {
        // Placed on the current member list (placing it again runs this
        // for every group first).
        self.refresh_placement();
        let Some(nodes) = self.nodes.as_ref() else {
            return;
        };
        let placement = &nodes.placement;
        let mut joins = Vec::new();
        let mut leaves = Vec::new();
        for (index, entry) in self.shared.iter_mut().enumerate() {
            let chosen =
                only.is_none_or(|(group, topic)| &*entry.group == group && entry.topic == *topic);
            if !chosen || routing::owner(&entry.topic, self.shard_count) != self.id {
                continue;
            }
            let wanted: Vec<SocketAddr> = if !entry.members.iter().any(|m| !m.peer) {
                Vec::new()
            } else if entry.topic.is_pattern() {
                placement.clients.iter().flatten().copied().collect()
            } else {
                placement.owner(&entry.topic).into_iter().collect()
            };
            entry.remote.retain(|&(node, sub_id)| {
                let keep = wanted.contains(&node);
                if !keep {
                    leaves.push((node, sub_id));
                }
                keep
            });
            for node in wanted {
                if !entry.remote.iter().any(|(at, _)| *at == node) {
                    joins.push((index, node));
                }
            }
        }
        for (node, sub_id) in leaves {
            self.unsubscribe_on_link(node, sub_id);
        }
        for (index, node) in joins {
            let entry = &self.shared[index];
            let (group, topic) = (entry.group.clone(), entry.topic.clone());
            if let Some(sub_id) = self.subscribe_shared_on_link(node, group, &topic) {
                self.shared[index].remote.push((node, sub_id));
            }
        }
    }

    /// Joins `group`'s shared subscription to `topic` on the link to
    /// `node`, if it is up; the subscription's id on the link.
    fn subscribe_shared_on_link(
        &mut self,
        node: SocketAddr,
        group: Box<str>,
        topic: &TopicKey,
    ) -> Option<u32> {
        let link = self.link(node);
        if !link.up {
            return None;
        }
        let sub_id = link.new_shared(group.clone(), topic.clone());
        let request_id = link.request_id();
        link.sub_requests.insert(request_id, sub_id);
        Frame::SubscribeShared(SubscribeShared {
            request_id,
            sub_id,
            group: group.into(),
            topic: topic.clone(),
        })
        .encode(&mut link.out);
        link.kick();
        Some(sub_id)
    }

    /// Cluster: the link to `node` is down; the groups' shares on it are
    /// gone with it (joined again when it comes up).
    pub(super) fn forget_remote_shares(&mut self, node: SocketAddr) {
        for entry in &mut self.shared {
            entry.remote.retain(|(at, _)| *at != node);
        }
    }

    /// Cluster: a frame from `node` on this shard's link to it for one of
    /// this node's shares there is taken (`None`): a message goes to one
    /// of this node's members of the group, a refusal ends the share (it
    /// is asked again when members, links or the member list change). Any
    /// other frame is given back.
    pub(super) fn shared_answer(&mut self, node: SocketAddr, frame: Frame) -> Option<Frame> {
        let link = self.link_mut(node)?;
        match frame {
            Frame::TopicMessage(message) if link.shares_ended.contains(&message.sub_id) => {
                // Given to this node's share just before it ended.
                self.stats.shared_messages_dropped += 1;
                None
            }
            Frame::UnsubOk(ok) if link.shares_ended.remove(&ok.sub_id) => None,
            Frame::TopicMessage(message) => {
                let Some((group, filter)) = link.shared.get(&message.sub_id).cloned() else {
                    return Some(Frame::TopicMessage(message));
                };
                let Ok(topic) = TopicKey::new(filter.namespace_bytes(), message.topic.as_bytes())
                else {
                    debug!(%node, "a group's message with a topic name refused");
                    self.stats.shared_messages_dropped += 1;
                    return None;
                };
                self.give_to_local_member(
                    &group,
                    &filter,
                    topic,
                    message.epoch,
                    message.seq,
                    message.body.into_bytes(),
                );
                None
            }
            Frame::Error(error) => {
                let shared = link
                    .sub_requests
                    .get(&error.request_id)
                    .copied()
                    .filter(|sub_id| link.shared.contains_key(sub_id));
                let Some(sub_id) = shared else {
                    return Some(Frame::Error(error));
                };
                link.sub_requests.remove(&error.request_id);
                link.shared.remove(&sub_id);
                warn!(%node, reason = %error.message, "a group's share on another node refused");
                for entry in &mut self.shared {
                    entry.remote.retain(|share| *share != (node, sub_id));
                }
                None
            }
            other => Some(other),
        }
    }

    /// Cluster: a message another node gave this node's share of `group`
    /// goes to one of this node's members, in turn (never to a link).
    fn give_to_local_member(
        &mut self,
        group: &str,
        filter: &TopicKey,
        topic: TopicKey,
        epoch: Epoch,
        seq: Seq,
        payload: Bytes,
    ) {
        let chosen = self
            .shared
            .iter_mut()
            .find(|entry| &*entry.group == group && entry.topic == *filter)
            .and_then(|entry| {
                let count = entry.members.len();
                let turn = (0..count)
                    .map(|step| (entry.next + step) % count)
                    .find(|&at| !entry.members[at].peer)?;
                entry.next = turn + 1;
                Some(entry.members[turn])
            });
        let Some(member) = chosen else {
            // Its last member here left while the message was on its way.
            self.stats.shared_messages_dropped += 1;
            return;
        };
        self.give_to_member(
            member,
            SharedDelivery {
                conn: member.conn,
                sub_id: member.sub_id,
                topic,
                epoch,
                seq,
                payload,
            },
        );
    }

    /// Hands `delivery` to `member`, on its shard.
    fn give_to_member(&mut self, member: Member, delivery: SharedDelivery) {
        if member.shard == self.id {
            self.deliver_shared(&delivery);
        } else {
            self.push_mesh(member.shard, ShardMsg::SharedDeliverMsg(Box::new(delivery)));
        }
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
        for member in chosen {
            let delivery = SharedDelivery {
                conn: member.conn,
                sub_id: member.sub_id,
                topic: topic.clone(),
                epoch,
                seq,
                payload: payload.clone(),
            };
            self.give_to_member(member, delivery);
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
