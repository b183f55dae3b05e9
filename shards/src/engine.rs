//! The per-shard engine: owner-side topic state, subscriber-side tables and the
//! connections a shard serves, as one synchronous state machine.
//!
//! Nothing here does I/O or awaits. Connection tasks feed it decoded frames,
//! mesh tasks feed it [`ShardMsg`]s, and it answers by pushing frames into
//! connection [`Outbox`]es and messages into per-peer mesh batches. That keeps
//! every ordering argument in one file, and lets tests drive several shards by
//! hand without sockets or executors (see `tests` below).
//!
//! A `Shard` is `!Send` on purpose: it lives on one executor, and only that
//! executor's tasks mutate it, through `Rc<RefCell<Shard>>`, never across an
//! `.await`.

use std::task::Waker;

use bytes::Bytes;
use corebus_net::{
    ErrorCode, ErrorFrame, Frame, FrameError, Publish, Seq, Subscribe, TopicKey, Unsubscribe,
    PROTOCOL_VERSION,
};
use rustc_hash::FxHashMap;

use crate::mesh::{AckTo, MeshBatch, ShardMsg};
use crate::outbox::{OutFrame, Outbox, PushError};
use crate::routing::{self, ShardId};
use crate::stats::ShardStats;

/// A connection's id, unique within its shard for the life of the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

/// Limits the engine enforces per connection.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Largest frame length field accepted (announced in `WELCOME`).
    pub max_frame: u32,
    /// Most subscriptions one connection may hold at once.
    pub max_subscriptions_per_conn: usize,
    /// Bound on a connection's queued outbound bytes.
    pub outbox_limit_bytes: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            max_frame: corebus_net::DEFAULT_MAX_FRAME,
            max_subscriptions_per_conn: 10_000,
            outbox_limit_bytes: 8 << 20,
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

/// Owner-side state of a topic this shard owns.
#[derive(Debug, Default)]
struct OwnedTopic {
    /// Last sequence number assigned (0: none yet).
    last_seq: Seq,
    /// Shards with at least one subscriber, this one included. A handful at
    /// most, so a small vector beats a set.
    interested: Vec<ShardId>,
}

/// Subscriber-side state of a topic with local subscribers.
#[derive(Debug)]
enum LocalTopic {
    /// Interest sent to the owner, answer not yet back. Messages that arrive
    /// now predate the start point and are ignored.
    Pending {
        /// (connection, subscription id, request id) waiting for `SUB_OK`.
        waiting: Vec<(ConnId, u32, u32)>,
    },
    /// Registered with the owner; every `DeliverMsg` is for these subscribers.
    Active {
        /// Sequence number of the last message received (or the start point).
        last_seq: Seq,
        /// (connection, subscription id).
        subscribers: Vec<(ConnId, u32)>,
    },
}

/// Per-connection state.
#[derive(Debug)]
struct ConnState {
    outbox: Outbox,
    handshaken: bool,
    /// Subscription id → topic.
    subscriptions: FxHashMap<u32, TopicKey>,
}

/// One shard's state. See the module docs for who may mutate it.
#[derive(Debug)]
pub struct Shard {
    id: ShardId,
    shard_count: usize,
    config: EngineConfig,
    owned: FxHashMap<TopicKey, OwnedTopic>,
    local: FxHashMap<TopicKey, LocalTopic>,
    conns: FxHashMap<ConnId, ConnState>,
    next_conn: u64,
    /// Per peer: messages collected during this turn, sent as one batch.
    mesh_out: Vec<MeshBatch>,
    /// Per peer: the mesh sender task to wake when its batch becomes non-empty.
    mesh_senders: Vec<Option<Waker>>,
    stats: ShardStats,
}

impl Shard {
    /// A shard `id` of `shard_count`.
    pub fn new(id: ShardId, shard_count: usize, config: EngineConfig) -> Shard {
        Shard {
            id,
            shard_count,
            config,
            owned: FxHashMap::default(),
            local: FxHashMap::default(),
            conns: FxHashMap::default(),
            next_conn: 0,
            mesh_out: (0..shard_count).map(|_| Vec::new()).collect(),
            mesh_senders: (0..shard_count).map(|_| None).collect(),
            stats: ShardStats::default(),
        }
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

    // ----- connections -------------------------------------------------

    /// Registers a new connection.
    pub fn open_conn(&mut self) -> ConnId {
        self.next_conn += 1;
        let id = ConnId(self.next_conn);
        self.conns.insert(
            id,
            ConnState {
                outbox: Outbox::new(self.config.outbox_limit_bytes),
                handshaken: false,
                subscriptions: FxHashMap::default(),
            },
        );
        self.stats.connections_opened += 1;
        id
    }

    /// The connection's outbound queue, while the connection exists.
    pub fn outbox_mut(&mut self, conn: ConnId) -> Option<&mut Outbox> {
        self.conns.get_mut(&conn).map(|state| &mut state.outbox)
    }

    /// Forgets a connection and withdraws all its subscriptions, here and, for
    /// each topic whose last local subscriber it was, on the topic's owner.
    pub fn close_conn(&mut self, conn: ConnId) {
        self.withdraw_subscriptions(conn);
        self.conns.remove(&conn);
    }

    /// The peer stopped sending: withdraw its subscriptions at once and let
    /// the writer flush what is already queued, then close.
    pub fn finish_conn(&mut self, conn: ConnId) {
        self.withdraw_subscriptions(conn);
        if let Some(state) = self.conns.get_mut(&conn) {
            state.outbox.finish();
        }
    }

    fn withdraw_subscriptions(&mut self, conn: ConnId) {
        let Some(state) = self.conns.get_mut(&conn) else {
            return;
        };
        let subscriptions = std::mem::take(&mut state.subscriptions);
        for (sub_id, topic) in subscriptions {
            self.remove_subscriber(&topic, conn, sub_id);
        }
    }

    /// Queues a frame for a connection. A full queue closes the connection as
    /// a slow consumer; the frame is not lost silently, the client is told.
    fn send(&mut self, conn: ConnId, frame: OutFrame) {
        let Some(state) = self.conns.get_mut(&conn) else {
            return; // Closed while the answer was in flight.
        };
        if state.outbox.push(frame) == Err(PushError::Full) {
            self.close_slow_consumer(conn);
        }
    }

    fn close_slow_consumer(&mut self, conn: ConnId) {
        let Some(state) = self.conns.get_mut(&conn) else {
            return;
        };
        let limit = self.config.outbox_limit_bytes;
        state
            .outbox
            .close_with(Some(OutFrame::Error(ErrorFrame::new(
                0,
                ErrorCode::SlowConsumer,
                true,
                format!("outbound queue passed its bound of {limit} bytes; closing"),
            ))));
        self.stats.slow_consumer_closes += 1;
        self.withdraw_subscriptions(conn);
    }

    fn send_error(&mut self, conn: ConnId, request_id: u32, code: ErrorCode, text: String) {
        self.send(
            conn,
            OutFrame::Error(ErrorFrame::new(request_id, code, false, text)),
        );
    }

    fn close_with_error(&mut self, conn: ConnId, code: ErrorCode, text: String) -> Flow {
        if let Some(state) = self.conns.get_mut(&conn) {
            state
                .outbox
                .close_with(Some(OutFrame::Error(ErrorFrame::new(0, code, true, text))));
        }
        self.withdraw_subscriptions(conn);
        Flow::Close
    }

    /// Handles bytes that did not decode. Errors that break framing, and any
    /// error before the handshake, close the connection.
    pub fn handle_decode_error(&mut self, conn: ConnId, error: &FrameError) -> Flow {
        self.stats.protocol_errors += 1;
        let handshaken = self.conns.get(&conn).is_some_and(|state| state.handshaken);
        if error.breaks_framing() || !handshaken {
            let code = if handshaken {
                error.code()
            } else {
                ErrorCode::HandshakeRequired
            };
            return self.close_with_error(conn, code, error.to_string());
        }
        let request_id = error.request_id().unwrap_or(0);
        self.send_error(conn, request_id, error.code(), error.to_string());
        Flow::Continue
    }

    /// Handles one decoded frame from a connection.
    pub fn handle_frame(&mut self, conn: ConnId, frame: Frame) -> Flow {
        let Some(state) = self.conns.get_mut(&conn) else {
            return Flow::Close;
        };
        if state.outbox.is_closing() {
            return Flow::Close;
        }
        if !state.handshaken {
            return self.handle_handshake(conn, frame);
        }
        match frame {
            Frame::Publish(publish) => self.handle_publish(conn, publish),
            Frame::Subscribe(subscribe) => self.handle_subscribe(conn, subscribe),
            Frame::Unsubscribe(unsubscribe) => self.handle_unsubscribe(conn, unsubscribe),
            Frame::Ping(nonce) => self.send(conn, OutFrame::Pong(nonce)),
            Frame::Pong(_) => {}
            Frame::Hello(_) => self.send_error(
                conn,
                0,
                ErrorCode::HandshakeRequired,
                "HELLO was already received on this connection".into(),
            ),
            other => self.send_error(
                conn,
                0,
                ErrorCode::WrongDirection,
                format!(
                    "{:?} frames are sent by servers, not clients",
                    other.opcode()
                ),
            ),
        }
        Flow::Continue
    }

    fn handle_handshake(&mut self, conn: ConnId, frame: Frame) -> Flow {
        let Frame::Hello(hello) = frame else {
            return self.close_with_error(
                conn,
                ErrorCode::HandshakeRequired,
                format!("expected HELLO, got {:?}", frame.opcode()),
            );
        };
        if hello.version != PROTOCOL_VERSION {
            return self.close_with_error(
                conn,
                ErrorCode::UnsupportedVersion,
                format!(
                    "client speaks protocol version {}, this server speaks {PROTOCOL_VERSION}",
                    hello.version
                ),
            );
        }
        if let Some(state) = self.conns.get_mut(&conn) {
            state.handshaken = true;
        }
        let welcome = OutFrame::Welcome {
            max_frame: self.config.max_frame,
            shard: self.id,
            shard_count: self.shard_count as u16,
        };
        self.send(conn, welcome);
        Flow::Continue
    }

    // ----- publish -----------------------------------------------------

    fn handle_publish(&mut self, conn: ConnId, publish: Publish) {
        self.stats.publishes_received += 1;
        let owner = routing::owner(&publish.topic, self.shard_count);
        let ack_to = publish.ack.then_some(AckTo {
            conn,
            request_id: publish.request_id,
        });
        if owner == self.id {
            let seq = self.sequence_and_fan_out(publish.topic, publish.payload);
            if let Some(ack_to) = ack_to {
                self.send(
                    ack_to.conn,
                    OutFrame::PubAck {
                        request_id: ack_to.request_id,
                        seq,
                    },
                );
            }
        } else {
            self.push_mesh(
                owner,
                ShardMsg::PublishMsg {
                    topic: publish.topic,
                    payload: publish.payload,
                    ack_to,
                },
            );
        }
    }

    /// Owner side: assigns the next sequence number and sends the message once
    /// to each interested shard.
    fn sequence_and_fan_out(&mut self, topic: TopicKey, payload: Bytes) -> Seq {
        self.stats.messages_sequenced += 1;
        let owned = match self.owned.get_mut(&topic) {
            Some(owned) => owned,
            None => self.owned.entry(topic.clone()).or_default(),
        };
        owned.last_seq += 1;
        let seq = owned.last_seq;
        let mut deliver_here = false;
        for shard in &owned.interested {
            if *shard == self.id {
                deliver_here = true;
            } else {
                // Field-level borrows: `owned` borrows `self.owned` only.
                push_mesh(
                    &mut self.mesh_out,
                    &mut self.mesh_senders,
                    *shard,
                    ShardMsg::DeliverMsg {
                        topic: topic.clone(),
                        seq,
                        payload: payload.clone(),
                    },
                );
            }
        }
        if deliver_here {
            self.deliver_local(&topic, seq, &payload);
        }
        seq
    }

    /// Subscriber side: hands one sequenced message to every local subscriber.
    fn deliver_local(&mut self, topic: &TopicKey, seq: Seq, payload: &Bytes) {
        let Some(LocalTopic::Active {
            last_seq,
            subscribers,
        }) = self.local.get_mut(topic)
        else {
            // No local subscribers, or interest not yet acknowledged: this
            // message is before any local subscription's start point.
            return;
        };
        debug_assert_eq!(seq, *last_seq + 1, "owner->shard queue must be FIFO");
        *last_seq = seq;
        let mut slow = Vec::new();
        for (conn, sub_id) in subscribers.iter() {
            let Some(state) = self.conns.get_mut(conn) else {
                continue;
            };
            let frame = OutFrame::Message {
                sub_id: *sub_id,
                seq,
                payload: payload.clone(),
            };
            match state.outbox.push(frame) {
                Ok(()) => self.stats.messages_delivered += 1,
                Err(PushError::Full) => slow.push(*conn),
                Err(PushError::Closing) => {}
            }
        }
        for conn in slow {
            self.close_slow_consumer(conn);
        }
    }

    // ----- subscribe ---------------------------------------------------

    fn handle_subscribe(&mut self, conn: ConnId, subscribe: Subscribe) {
        let Subscribe {
            request_id,
            sub_id,
            topic,
        } = subscribe;
        let Some(state) = self.conns.get_mut(&conn) else {
            return;
        };
        if state.subscriptions.contains_key(&sub_id) {
            return self.send_error(
                conn,
                request_id,
                ErrorCode::DuplicateSubscription,
                format!("subscription id {sub_id} is already in use on this connection"),
            );
        }
        if state.subscriptions.len() >= self.config.max_subscriptions_per_conn {
            let max = self.config.max_subscriptions_per_conn;
            return self.send_error(
                conn,
                request_id,
                ErrorCode::TooManySubscriptions,
                format!("a connection may hold at most {max} subscriptions"),
            );
        }
        state.subscriptions.insert(sub_id, topic.clone());
        self.stats.subscribes += 1;
        match self.local.get_mut(&topic) {
            Some(LocalTopic::Active {
                last_seq,
                subscribers,
            }) => {
                // Already registered with the owner: every message after
                // `last_seq` is still to arrive here, in order.
                subscribers.push((conn, sub_id));
                let start_after = *last_seq;
                self.send(
                    conn,
                    OutFrame::SubOk {
                        request_id,
                        sub_id,
                        start_after,
                    },
                );
            }
            Some(LocalTopic::Pending { waiting }) => waiting.push((conn, sub_id, request_id)),
            None => {
                self.local.insert(
                    topic.clone(),
                    LocalTopic::Pending {
                        waiting: vec![(conn, sub_id, request_id)],
                    },
                );
                let owner = routing::owner(&topic, self.shard_count);
                if owner == self.id {
                    let start_after = self.register_interest(topic.clone(), self.id);
                    self.activate(topic, start_after);
                } else {
                    self.push_mesh(owner, ShardMsg::InterestMsg { topic });
                }
            }
        }
    }

    /// Owner side: records `shard`'s interest; returns the start point.
    fn register_interest(&mut self, topic: TopicKey, shard: ShardId) -> Seq {
        let owned = self.owned.entry(topic).or_default();
        if !owned.interested.contains(&shard) {
            owned.interested.push(shard);
        }
        owned.last_seq
    }

    /// Subscriber side: the owner registered this shard's interest; waiting
    /// subscriptions start after `start_after`.
    fn activate(&mut self, topic: TopicKey, start_after: Seq) {
        let Some(LocalTopic::Pending { waiting }) = self.local.remove(&topic) else {
            return;
        };
        let mut subscribers = Vec::with_capacity(waiting.len());
        for (conn, sub_id, request_id) in waiting {
            subscribers.push((conn, sub_id));
            self.send(
                conn,
                OutFrame::SubOk {
                    request_id,
                    sub_id,
                    start_after,
                },
            );
        }
        // `send` may have closed a slow consumer, withdrawing its subscription
        // from a table that was not there yet: drop such entries now.
        subscribers.retain(|(conn, sub_id)| {
            self.conns
                .get(conn)
                .is_some_and(|state| state.subscriptions.contains_key(sub_id))
        });
        if subscribers.is_empty() {
            // Everyone left while the interest was in flight.
            self.drop_interest(topic);
        } else {
            self.local.insert(
                topic,
                LocalTopic::Active {
                    last_seq: start_after,
                    subscribers,
                },
            );
        }
    }

    fn handle_unsubscribe(&mut self, conn: ConnId, unsubscribe: Unsubscribe) {
        let Unsubscribe { request_id, sub_id } = unsubscribe;
        let topic = self
            .conns
            .get_mut(&conn)
            .and_then(|state| state.subscriptions.remove(&sub_id));
        let Some(topic) = topic else {
            return self.send_error(
                conn,
                request_id,
                ErrorCode::UnknownSubscription,
                format!("no active subscription with id {sub_id}"),
            );
        };
        self.remove_subscriber(&topic, conn, sub_id);
        // Queued after every MESSAGE already queued for this subscription, and
        // the table no longer lists it: nothing for it follows UNSUB_OK.
        self.send(conn, OutFrame::UnsubOk { request_id, sub_id });
    }

    fn remove_subscriber(&mut self, topic: &TopicKey, conn: ConnId, sub_id: u32) {
        let now_empty = match self.local.get_mut(topic) {
            Some(LocalTopic::Active { subscribers, .. }) => {
                subscribers.retain(|entry| *entry != (conn, sub_id));
                subscribers.is_empty()
            }
            Some(LocalTopic::Pending { waiting }) => {
                // Stay pending even when empty: the owner's answer is on its
                // way, and `activate` withdraws the interest if nobody is left.
                waiting.retain(|(c, s, _)| (*c, *s) != (conn, sub_id));
                false
            }
            None => false,
        };
        if now_empty {
            self.local.remove(topic);
            self.drop_interest(topic.clone());
        }
    }

    fn drop_interest(&mut self, topic: TopicKey) {
        let owner = routing::owner(&topic, self.shard_count);
        if owner == self.id {
            self.unregister_interest(&topic, self.id);
        } else {
            self.push_mesh(owner, ShardMsg::DropInterestMsg { topic });
        }
    }

    fn unregister_interest(&mut self, topic: &TopicKey, shard: ShardId) {
        if let Some(owned) = self.owned.get_mut(topic) {
            owned.interested.retain(|s| *s != shard);
        }
    }

    // ----- mesh --------------------------------------------------------

    /// Handles one message from shard `from`.
    pub fn handle_mesh(&mut self, from: ShardId, msg: ShardMsg) {
        match msg {
            ShardMsg::PublishMsg {
                topic,
                payload,
                ack_to,
            } => {
                let seq = self.sequence_and_fan_out(topic, payload);
                if let Some(ack_to) = ack_to {
                    self.push_mesh(from, ShardMsg::PubAckMsg { ack_to, seq });
                }
            }
            ShardMsg::PubAckMsg { ack_to, seq } => self.send(
                ack_to.conn,
                OutFrame::PubAck {
                    request_id: ack_to.request_id,
                    seq,
                },
            ),
            ShardMsg::InterestMsg { topic } => {
                let start_after = self.register_interest(topic.clone(), from);
                self.push_mesh(from, ShardMsg::InterestAckMsg { topic, start_after });
            }
            ShardMsg::InterestAckMsg { topic, start_after } => self.activate(topic, start_after),
            ShardMsg::DropInterestMsg { topic } => self.unregister_interest(&topic, from),
            ShardMsg::DeliverMsg {
                topic,
                seq,
                payload,
            } => self.deliver_local(&topic, seq, &payload),
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
            Some(std::mem::take(batch))
        }
    }

    /// Messages collected for `peer` and not yet taken by its sender.
    pub fn mesh_backlog(&self, peer: ShardId) -> usize {
        self.mesh_out[peer as usize].len()
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

#[cfg(test)]
#[path = "engine_tests.rs"]
mod tests;
