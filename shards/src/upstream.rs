//! What a shard keeps for the other nodes of a cluster: one link per node
//! (a connection to that node's client listener, speaking the ordinary
//! protocol as a peer), and, for each topic another node owns and this node
//! has subscribers of, the mirror's [`Upstream`] state. Pure data; the
//! engine (`engine/nodes.rs`) drives it and `link.rs` does the I/O.
//!
//! A link is multiplexed: every publish this shard forwards to the node, and
//! every mirror it holds there, shares it. Frames are encoded into one
//! buffer as they are made, and the link's writer sends whatever collected
//! during a turn in one write, so a busy link costs one system call per
//! turn, not per message.

use std::net::SocketAddr;
use std::task::Waker;

use bytes::{Bytes, BytesMut};
use corebus_net::TopicKey;
use rustc_hash::FxHashMap;

use crate::local_ref::LocalRef;
use crate::mesh::{AckTo, ResumeReq, RetainedMessage, RetainedQuery};
use crate::routing::ShardId;
use crate::ConnId;

/// A mirror's link to the topic's owner node, or, while `pulling`, to the
/// node this one takes the topic over from.
#[derive(Debug)]
pub struct Upstream {
    /// The owner node (its client address); while pulling, the node the
    /// topic's state comes from.
    pub node: SocketAddr,
    /// The request on the link that feeds the mirror; 0 while there is
    /// none (the link is down, or the owner refused and it is retried).
    pub sub_id: u32,
    /// The mirror holds the owner's epoch and sequence (it has received a
    /// replay up to its `REPLAY_END` once): interests are answered from it.
    pub known: bool,
    /// Between a `SUB_OK` and its `REPLAY_END`: a `DISCONTINUITY` here is
    /// the resume gap the `SUB_OK` already told about.
    pub replaying: bool,
    /// This node owns the topic and is taking its state over from `node`
    /// (a `HANDOFF_REQUEST`): publishes wait in `parked` until the state is
    /// here (or `deadline_ms` passes, and the topic starts a new epoch).
    pub pulling: bool,
    /// This node owned the topic until the member list gave it to `node`,
    /// and its state has not been handed over yet: it is the topic's state,
    /// not a copy, and is kept for `node` to take.
    pub authoritative: bool,
    /// Interest requests that came before the mirror was known, answered
    /// at the first `REPLAY_END`.
    pub waiting: Vec<(ShardId, LocalRef, Option<ResumeReq>)>,
    /// Publishes that came while pulling, in order, with their bytes.
    pub parked: Vec<(Bytes, Forwarded)>,
    /// Retained fetches that came while pulling (the topic's retained
    /// message comes with its state), with the shard that asked.
    pub fetches: Vec<(ShardId, RetainedQuery)>,
    /// Payload bytes in `parked`.
    pub parked_bytes: usize,
    /// Engine time a pull gives up at.
    pub deadline_ms: u64,
    /// The node whose `SUB_OK` this copy's state last came from (`node`
    /// may have moved on to a new owner that has not answered yet).
    pub answered_by: Option<SocketAddr>,
}

impl Upstream {
    /// A mirror of `node`'s topic with nothing known yet.
    pub fn fresh(node: SocketAddr) -> Upstream {
        Upstream {
            node,
            sub_id: 0,
            known: false,
            replaying: false,
            pulling: false,
            authoritative: false,
            waiting: Vec::new(),
            parked: Vec::new(),
            fetches: Vec::new(),
            parked_bytes: 0,
            deadline_ms: 0,
            answered_by: None,
        }
    }

    /// Whether the entry is needed although no shard is interested: it is
    /// being pulled, has interests waiting, or is the topic's state.
    pub fn needed(&self) -> bool {
        self.pulling || self.authoritative || !self.waiting.is_empty() || !self.fetches.is_empty()
    }
}

/// The link's node left the cluster: its task closes the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkClosed;

/// Where the answer to a forwarded publish goes.
#[derive(Debug, Clone, Copy)]
pub struct Forwarded {
    /// The shard of the publishing connection.
    pub from: ShardId,
    /// The connection and request, when it asked for an acknowledgement.
    pub ack_to: Option<AckTo>,
}

/// One shard's link to another node.
#[derive(Debug, Default)]
pub struct PeerLink {
    /// Encoded frames for the writer.
    pub out: BytesMut,
    /// The writer task, parked until `out` has something.
    pub writer: Option<Waker>,
    /// The handshake succeeded and the link is usable.
    pub up: bool,
    /// The node left: the link's task closes it and ends.
    pub closing: bool,
    next_request: u32,
    next_sub: u32,
    /// Publishes sent and not yet answered, by request id.
    pub acks: FxHashMap<u32, Forwarded>,
    /// The mirrors' subscriptions on this link, by subscription id.
    pub subs: FxHashMap<u32, TopicKey>,
    /// Subscribe and fetch requests not yet answered: request id to
    /// subscription id.
    pub sub_requests: FxHashMap<u32, u32>,
    /// Retained fetches asked on this link, by their subscription id on it.
    pub fetches: FxHashMap<u32, LinkFetch>,
    /// Bytes their answers hold so far (bounded by
    /// `engine::retained::LINK_FETCH_BYTES`).
    pub fetch_bytes: usize,
    /// This node's groups joined on the other node, by subscription id:
    /// (group, topic or pattern).
    pub shared: FxHashMap<u32, (Box<str>, TopicKey)>,
    /// Shares left and not yet answered `UNSUB_OK`: what still arrives for
    /// them reaches no member, and is counted.
    pub shares_ended: rustc_hash::FxHashSet<u32>,
    /// MQTT client id claims sent to this node, their home, and not yet
    /// answered: request id to the claiming connection.
    pub claims: FxHashMap<u32, ConnId>,
    /// This shard's connections waiting for a session from this node.
    pub wants: Vec<ConnId>,
}

/// A client's `FETCH_RETAINED` asked of another node on a link: what the
/// answer's `TOPIC_MESSAGE`s bring gathers here until its `REPLAY_END`.
#[derive(Debug)]
pub struct LinkFetch {
    /// The shard of the asking connection.
    pub reply_to: crate::routing::ShardId,
    /// The asking connection.
    pub conn: ConnId,
    /// The fetch's subscription id on that connection.
    pub sub_id: u32,
    /// The topic or pattern fetched (its namespace names what arrives).
    pub topic: TopicKey,
    /// The retained messages received so far, and the bytes they count.
    pub found: Vec<RetainedMessage>,
    /// See `found`.
    pub bytes: usize,
    /// Messages of the answer left out: the link's bound was reached.
    pub left_out: u64,
    /// The request's id on the link, once it went out (`None` while the
    /// link is not up yet).
    pub request_id: Option<u32>,
}

impl PeerLink {
    /// A fresh request id (never 0).
    pub fn request_id(&mut self) -> u32 {
        self.next_request = self.next_request.wrapping_add(1).max(1);
        self.next_request
    }

    /// A key that orders outstanding request ids oldest first (ids wrap
    /// around).
    pub fn age_order(&self, request_id: u32) -> u32 {
        request_id.wrapping_sub(self.next_request.wrapping_add(1))
    }

    /// A fresh subscription id for `topic` (never 0, never one in use).
    pub fn new_sub(&mut self, topic: TopicKey) -> u32 {
        let sub_id = self.fresh_sub_id();
        self.subs.insert(sub_id, topic);
        sub_id
    }

    /// A fresh subscription id for a retained fetch (from the same ids as
    /// [`Self::new_sub`]'s).
    pub fn new_fetch(&mut self, fetch: LinkFetch) -> u32 {
        let sub_id = self.fresh_sub_id();
        self.fetches.insert(sub_id, fetch);
        sub_id
    }

    /// A fresh subscription id for this node's share of `group` (from the
    /// same ids as [`Self::new_sub`]'s).
    pub fn new_shared(&mut self, group: Box<str>, topic: TopicKey) -> u32 {
        let sub_id = self.fresh_sub_id();
        self.shared.insert(sub_id, (group, topic));
        sub_id
    }

    fn fresh_sub_id(&mut self) -> u32 {
        loop {
            self.next_sub = self.next_sub.wrapping_add(1).max(1);
            let id = self.next_sub;
            if !self.subs.contains_key(&id)
                && !self.fetches.contains_key(&id)
                && !self.shared.contains_key(&id)
                && !self.shares_ended.contains(&id)
            {
                return id;
            }
        }
    }

    /// Wakes the writer if it is parked and there is something to send.
    pub fn kick(&mut self) {
        if self.up && !self.out.is_empty() {
            if let Some(waker) = self.writer.take() {
                waker.wake();
            }
        }
    }
}
