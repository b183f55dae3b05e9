//! Messages between shards.
//!
//! Shards share nothing; everything one shard asks of another travels as a
//! [`ShardMsg`] over a bounded single-producer queue of glommio's channel mesh.
//! Messages go in [`MeshBatch`]es: a shard collects everything for one peer
//! during a turn of its loop and sends it as one queue item, so a busy shard
//! pays one queue operation (and at most one wake-up) per batch, not per message.
//!
//! Ordering contract: each (from, to) queue is FIFO, and the engine relies on
//! it. An owner sends a shard `InterestAckMsg` before any `DeliverMsg` that
//! follows it, which is what makes a subscription's start point exact.

use std::time::Instant;

use bytes::Bytes;
use corebus_net::{Epoch, ResumePoint, Seq, TopicKey};

use crate::local_ref::LocalRef;
use crate::routing::ShardId;
use crate::topic::ResumePlan;
use crate::ConnId;

/// A batch of messages from one shard to another, in send order.
pub type MeshBatch = Vec<ShardMsg>;

/// Where a publish acknowledgement must go: a connection on the sending shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckTo {
    /// The publishing connection.
    pub conn: ConnId,
    /// Its request id.
    pub request_id: u32,
}

/// A subscription that wants to resume: answered by the owner with a plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResumeReq {
    /// The subscribing connection (on the requesting shard).
    pub conn: ConnId,
    /// Its subscription id.
    pub sub_id: u32,
    /// Its request id.
    pub request_id: u32,
    /// Where it wants to continue.
    pub point: ResumePoint,
}

/// The owner's answer to a [`ResumeReq`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumeReply {
    /// The request answered.
    pub req: ResumeReq,
    /// Start point, gap report and replay.
    pub plan: ResumePlan,
}

/// Another node asks for a topic's state (`HANDOFF_REQUEST` on its link),
/// to take the topic over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handoff {
    /// The topic.
    pub topic: TopicKey,
    /// The asking node (its client address): the topic's owner from now on.
    pub to: std::net::SocketAddr,
    /// The link's connection, on the shard that sent this.
    pub conn: ConnId,
    /// The request's id and subscription id, echoed in the answer.
    pub request_id: u32,
    /// See `request_id`.
    pub sub_id: u32,
    /// Where the asking node's copy of the topic is (epoch 0, seq 1: it has
    /// none).
    pub point: ResumePoint,
}

/// The topic's shard's answer to a [`Handoff`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandoffReply {
    /// The request answered.
    pub request: Handoff,
    /// What to answer.
    pub answer: HandoffAnswer,
    /// The topic's retained message, which goes with its state.
    pub retained: Option<RetainedMessage>,
}

/// What a node answers a `HANDOFF_REQUEST` with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandoffAnswer {
    /// The topic's epoch and what to send from its ring: the state is the
    /// asking node's from now on.
    State(Epoch, ResumePlan),
    /// This node holds no state of the topic (none, or only a copy of
    /// another node's): the asking node starts it.
    NoState,
    /// This node holds the topic's state but does not see the asking node
    /// as its owner yet: ask again (the member lists are converging).
    NotYet,
}

/// One request or notification between shards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShardMsg {
    /// To the shard of an MQTT connection: another connection took its
    /// client id over; close it with `taken_over`.
    TakeOverMsg {
        /// The connection.
        conn: ConnId,
    },
    /// To the shard of an MQTT connection (or detached session): the
    /// connection `to` takes its session over; it closes with
    /// `taken_over` and sends the session there as it ends.
    SessionWantedMsg {
        /// The connection holding the session.
        conn: ConnId,
        /// The connection taking it over (boxed: rare, and it may be on
        /// another node).
        to: Box<Holder>,
    },
    /// To every shard: a member joins a group's shared subscription (group,
    /// topic or pattern, member; boxed: rare).
    JoinGroupMsg(Box<(Box<str>, TopicKey, SharedMember)>),
    /// To every shard: a member leaves its group.
    LeaveGroupMsg(Box<(Box<str>, TopicKey, SharedMember)>),
    /// From a topic's owner to a member's shard: a message for that one
    /// member of a group.
    SharedDeliverMsg(Box<SharedDelivery>),
    /// To the connection that asked for a session: the session (boxed: it
    /// is rare and large), or `None` when there was none.
    SessionMsg {
        /// The connection that asked.
        conn: ConnId,
        /// What it takes over.
        session: Option<Parcel>,
    },
    /// To a topic's owner: sequence and fan out this payload.
    PublishMsg {
        /// The topic.
        topic: TopicKey,
        /// The payload, shared with the frame it arrived in.
        payload: Bytes,
        /// Where to send the sequence number, if the client asked for it.
        ack_to: Option<AckTo>,
    },
    /// From the topic's shard back to the publishing shard: the node that
    /// owns the topic did not acknowledge the publish.
    PubFailedMsg {
        /// Who asked.
        ack_to: AckTo,
        /// Why (the text of the `ERROR` the client gets).
        reason: Box<str>,
    },
    /// From the owner back to the publishing shard.
    PubAckMsg {
        /// Who asked.
        ack_to: AckTo,
        /// The sequence number assigned.
        seq: Seq,
    },
    /// To a topic's owner: the sending shard now has subscribers of the topic
    /// (idempotent), and possibly one that wants to resume.
    InterestMsg {
        /// The topic.
        topic: TopicKey,
        /// The sender's table entry for it: where the deliveries go.
        handle: LocalRef,
        /// A resuming subscription's request.
        resume: Option<ResumeReq>,
    },
    /// From the owner: the sender of `InterestMsg` receives every message
    /// after `start_after`, starting with the next `DeliverMsg` for the topic.
    InterestAckMsg {
        /// The topic.
        topic: TopicKey,
        /// The topic's current epoch.
        epoch: Epoch,
        /// Last sequence number assigned before the interest was registered.
        start_after: Seq,
        /// The answer to the resume request, if there was one (boxed: it is
        /// rare and large, and every message of a batch is as large as the
        /// largest kind).
        resume: Option<Box<ResumeReply>>,
    },
    /// To a topic's owner: the sending shard has no subscribers left.
    DropInterestMsg {
        /// The topic.
        topic: TopicKey,
    },
    /// To a topic's shard: hand the topic over to another node.
    HandoffMsg(Box<Handoff>),
    /// From a topic's shard: what to answer the node that asked.
    HandoffReplyMsg(Box<HandoffReply>),
    /// From the owner to an interested shard: the topic's stream starts over
    /// (another node took the topic over, or the link to its owner lost
    /// messages): its next message is `next_seq` of `epoch`. Every local
    /// subscriber is told with a `DISCONTINUITY`.
    RestartMsg {
        /// The receiving shard's entry for the topic.
        handle: LocalRef,
        /// The epoch from now on.
        epoch: Epoch,
        /// The sequence number of the next message.
        next_seq: Seq,
    },
    /// To every shard (its own included): the sending shard's connections
    /// subscribe to `pattern`, whose matching messages go to its pattern
    /// table entry `handle`. Answered with `PatternAckMsg`.
    PatternInterestMsg {
        /// The pattern.
        pattern: TopicKey,
        /// The sender's table entry for it.
        handle: LocalRef,
    },
    /// The answer to `PatternInterestMsg`: every message this shard
    /// sequences from now on that matches goes to `handle`.
    PatternAckMsg {
        /// The asking shard's table entry.
        handle: LocalRef,
    },
    /// To every shard: the sender has no subscriber of `pattern` left.
    DropPatternInterestMsg {
        /// The pattern.
        pattern: TopicKey,
    },
    /// From a topic's owner to a shard with a matching pattern subscription:
    /// one sequenced message with its topic (boxed: it is larger than the
    /// per-message kinds, and rarer).
    PatternDeliverMsg(Box<PatternDelivery>),
    /// To a topic's owner, or every shard for a pattern: the retained
    /// messages a `FETCH_RETAINED` asks for. Answered with `RetainedMsg`.
    RetainedQueryMsg(Box<RetainedQuery>),
    /// The answer to `RetainedQueryMsg`.
    RetainedMsg(Box<RetainedReply>),
    /// From the owner to an interested shard: one sequenced message, sent once
    /// per shard however many local subscribers it has.
    DeliverMsg {
        /// The receiving shard's entry for the topic, from its `InterestMsg`.
        handle: LocalRef,
        /// Its sequence number.
        seq: Seq,
        /// The shared payload.
        payload: Bytes,
        /// When the owner sequenced it, for the one message in 64 whose
        /// delivery latency is measured.
        sequenced_at: Option<Instant>,
    },
}

/// One message for the subscribers of a pattern on one shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PatternDelivery {
    /// The receiving shard's pattern table entry.
    pub handle: LocalRef,
    /// The topic the message was published to.
    pub topic: TopicKey,
    /// The topic's epoch.
    pub epoch: Epoch,
    /// Its sequence number in the topic.
    pub seq: Seq,
    /// The body, shared.
    pub payload: Bytes,
}

/// A member of a shared subscription's group: a subscription of a
/// connection on a shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SharedMember {
    /// The connection's shard.
    pub shard: ShardId,
    /// The connection.
    pub conn: ConnId,
    /// Its subscription.
    pub sub_id: u32,
    /// The connection is a link from another node, which joined for the
    /// members it has: a message that came from another node is never
    /// given to one (it would go round).
    pub peer: bool,
}

/// A message for one member of a group, from the shard that sequenced it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedDelivery {
    /// The member's connection and subscription on the receiving shard.
    pub conn: ConnId,
    /// See `conn`.
    pub sub_id: u32,
    /// The topic.
    pub topic: TopicKey,
    /// The topic's epoch and the message's sequence number.
    pub epoch: Epoch,
    /// See `epoch`.
    pub seq: Seq,
    /// The body, shared.
    pub payload: Bytes,
}

/// A connection, cluster-wide: its node (`None`: this one), its shard and
/// its id there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Holder {
    /// The node's client address; `None` for this node.
    pub node: Option<std::net::SocketAddr>,
    /// The connection's shard on its node.
    pub shard: ShardId,
    /// The connection on that shard.
    pub conn: ConnId,
}

impl Holder {
    /// A connection of this node.
    pub fn local(shard: ShardId, conn: ConnId) -> Holder {
        Holder {
            node: None,
            shard,
            conn,
        }
    }
}

/// Something one connection hands to another across shards that the
/// engine only carries (an MQTT session): sent once, taken once.
#[derive(Clone)]
pub struct Parcel(std::sync::Arc<std::sync::Mutex<Option<Box<dyn std::any::Any + Send>>>>);

impl Parcel {
    /// Wraps `content`.
    pub fn new<T: Send + 'static>(content: T) -> Parcel {
        Parcel(std::sync::Arc::new(std::sync::Mutex::new(Some(Box::new(
            content,
        )))))
    }

    /// The content, if it is a `T` and was not taken yet.
    pub fn take<T: 'static>(&self) -> Option<T> {
        let mut slot = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match slot.take()?.downcast::<T>() {
            Ok(content) => Some(*content),
            Err(other) => {
                *slot = Some(other);
                None
            }
        }
    }
}

impl std::fmt::Debug for Parcel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Parcel")
    }
}

impl PartialEq for Parcel {
    fn eq(&self, other: &Parcel) -> bool {
        std::sync::Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for Parcel {}

// Every message of a batch takes the size of the largest kind, and a busy
// shard's batches hold tens of thousands of them: rare large fields are boxed
// so that the per-message kinds (publish, deliver) set the size.
#[cfg(target_pointer_width = "64")]
const _: () = assert!(std::mem::size_of::<ShardMsg>() <= 104);
const _: () = assert!(std::mem::size_of::<LocalRef>() == 8);

/// A retained message as the owner keeps it and sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetainedMessage {
    /// Its topic.
    pub topic: TopicKey,
    /// The topic's epoch when it was published.
    pub epoch: Epoch,
    /// Its sequence number in that epoch.
    pub seq: Seq,
    /// The body as published (format byte first).
    pub body: Bytes,
}

/// To a topic's owner, or to every shard for a pattern: the retained
/// messages that match `topic`, for `FETCH_RETAINED` `sub_id` of `conn`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetainedQuery {
    /// The asking connection, on the asking shard.
    pub conn: ConnId,
    /// The fetch's subscription id.
    pub sub_id: u32,
    /// The topic or pattern.
    pub topic: TopicKey,
    /// The asking connection is another node's link: answered from this
    /// node's store only.
    pub from_peer: bool,
}

/// The answer to a [`RetainedQuery`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetainedReply {
    /// The asking connection.
    pub conn: ConnId,
    /// The fetch's subscription id.
    pub sub_id: u32,
    /// What the answering shard keeps that matches.
    pub found: Vec<RetainedMessage>,
}
