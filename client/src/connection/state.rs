//! What the client knows, behind its mutex: the link's status, requests
//! awaiting answers, every subscription's route and position, and the frames
//! waiting for the writer.

use std::collections::HashMap;

use rustc_hash::FxHashMap;
use std::io;
use std::mem;

use bytes::BytesMut;
use corebus_net::Frame;
use corebus_net::{
    encode_subscribe, Epoch, FrameError, ResumePoint, Seq, SubOk, Unsubscribe, Welcome,
};
use tokio::sync::{broadcast, oneshot, OwnedSemaphorePermit};
use tokio::time::Instant;

use crate::events::EVENT_BUFFER;
use crate::message::TopicName;
use crate::{ConnectionEvent, Discontinuity, Error, UnackedFailures};

/// What `SUB_OK` said about a new subscription.
pub(crate) struct Started {
    pub(crate) sub_id: u32,
    pub(crate) epoch: u64,
    pub(crate) start_after: u64,
}

/// Request ids with this bit set belong to publishes sent without the ack
/// flag; the others to requests that wait for an answer. The split is the
/// client's own: the server echoes ids without looking at them.
pub(crate) const UNACKED_IDS: u32 = 0x8000_0000;

/// Why the client is over.
#[derive(Debug, Clone)]
pub(crate) enum Terminal {
    /// [`Client::close`](crate::Client::close) ran, or every handle was dropped.
    Closed,
    /// The connection failed and is not reconnected; the text says why.
    Lost(String),
    /// The server sent something that does not decode.
    Protocol(FrameError),
}

impl Terminal {
    /// The error for a request that was pending (or a subscription that was
    /// active) when the client ended.
    pub(crate) fn pending_error(&self) -> Error {
        match self {
            Terminal::Closed => Error::Closed,
            Terminal::Lost(reason) => Error::ConnectionLost(reason.clone()),
            Terminal::Protocol(err) => Error::Protocol(err.clone()),
        }
    }

    /// The error for a call made after the client ended.
    pub(crate) fn later_error(&self) -> Error {
        match self {
            Terminal::Closed => Error::Closed,
            Terminal::Lost(reason) => Error::ConnectionLost(reason.clone()),
            Terminal::Protocol(err) => Error::ConnectionLost(format!("protocol error: {err}")),
        }
    }
}

/// Why one connection ended.
#[derive(Debug)]
pub(crate) enum Ended {
    /// Lost (end of stream, I/O error, heartbeat timeout, fatal `ERROR`):
    /// reconnecting may help.
    Lost(String),
    /// The server broke the protocol: reconnecting would not help.
    Fatal(Terminal),
    /// The client was closed; the result of the final flush.
    Closed(io::Result<()>),
}

/// A protocol violation by the server; it ends the client.
pub(crate) fn protocol_violation(what: String) -> Ended {
    Ended::Fatal(Terminal::Lost(format!("protocol error: {what}")))
}

/// Whether the client has a connection.
pub(crate) enum Link {
    /// Connected and handshaken.
    Up,
    /// Lost; the session task is reconnecting.
    Down {
        /// Why the last connection was lost.
        reason: String,
    },
}

/// An outstanding request, keyed by request id.
pub(crate) enum Pending {
    Publish {
        answer: oneshot::Sender<Result<u64, Error>>,
        /// Released when the answer (or the connection's end) arrives.
        _permit: OwnedSemaphorePermit,
    },
    /// A caller's subscribe, waiting in `subscribe`/`subscribe_from`.
    Subscribe {
        answer: oneshot::Sender<Result<Started, Error>>,
        sub_id: u32,
    },
    /// The client's own resubscribe after a reconnection.
    Resubscribe { sub_id: u32 },
    Unsubscribe {
        /// `None` for the fire-and-forget unsubscribe of a dropped subscription.
        answer: Option<oneshot::Sender<Result<(), Error>>>,
        sub_id: u32,
    },
    /// A `WEBHOOK_REQUEST` or `CLUSTER_REQUEST`, answered with its reply's
    /// result text.
    Command {
        kind: CommandKind,
        answer: oneshot::Sender<Result<String, Error>>,
    },
}

/// The two requests that carry a JSON command and get a JSON result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CommandKind {
    /// `WEBHOOK_REQUEST` / `WEBHOOK_REPLY`.
    Webhook,
    /// `CLUSTER_REQUEST` / `CLUSTER_REPLY`.
    Cluster,
}

impl CommandKind {
    /// The request frame's name.
    pub(crate) fn request_name(self) -> &'static str {
        match self {
            CommandKind::Webhook => "WEBHOOK_REQUEST",
            CommandKind::Cluster => "CLUSTER_REQUEST",
        }
    }

    /// The reply frame's name.
    pub(crate) fn reply_name(self) -> &'static str {
        match self {
            CommandKind::Webhook => "WEBHOOK_REPLY",
            CommandKind::Cluster => "CLUSTER_REPLY",
        }
    }
}

impl Pending {
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Pending::Publish { .. } => "PUBLISH",
            Pending::Subscribe { .. } | Pending::Resubscribe { .. } => "SUBSCRIBE",
            Pending::Unsubscribe { .. } => "UNSUBSCRIBE",
            Pending::Command { kind, .. } => kind.request_name(),
        }
    }

    /// The subscription a subscribe or unsubscribe concerns.
    pub(crate) fn sub_id(&self) -> Option<u32> {
        match self {
            Pending::Publish { .. } | Pending::Command { .. } => None,
            Pending::Subscribe { sub_id, .. }
            | Pending::Resubscribe { sub_id }
            | Pending::Unsubscribe { sub_id, .. } => Some(*sub_id),
        }
    }

    pub(crate) fn fail(self, error: Error) {
        // A send fails only when the caller stopped waiting: nothing to do.
        match self {
            Pending::Publish { answer, .. } => {
                let _ = answer.send(Err(error));
            }
            Pending::Subscribe { answer, .. } => {
                let _ = answer.send(Err(error));
            }
            Pending::Resubscribe { .. } => {}
            Pending::Unsubscribe { answer, .. } => {
                if let Some(answer) = answer {
                    let _ = answer.send(Err(error));
                }
            }
            Pending::Command { answer, .. } => {
                let _ = answer.send(Err(error));
            }
        }
    }
}

/// Where a subscription stands on the wire: what the next frame for it must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cursor {
    /// `SUBSCRIBE` sent with this resume point (if any); `SUB_OK` not seen.
    Subscribing { resume: Option<ResumePoint> },
    /// `SUB_OK` said the resume point `point` could not be honoured: a
    /// `DISCONTINUITY` from `point` to (`epoch`, `next_seq`) must come before
    /// any `MESSAGE`.
    AwaitingGap {
        point: ResumePoint,
        epoch: Epoch,
        next_seq: Seq,
    },
    /// The next `MESSAGE` must carry `epoch` and `next_seq`.
    Flowing { epoch: Epoch, next_seq: Seq },
    /// A pattern subscription: `TOPIC_MESSAGE`s only, each with its own
    /// topic's sequence. It resumes live.
    Pattern,
}

impl Cursor {
    /// Where to resume after a reconnection: right after the last item the
    /// subscription received (or the point it still waits to hear about).
    fn resume_point(self) -> Option<ResumePoint> {
        match self {
            Cursor::Subscribing { resume } => resume,
            Cursor::AwaitingGap { point, .. } => Some(point),
            Cursor::Flowing { epoch, next_seq } => Some(ResumePoint { epoch, next_seq }),
            Cursor::Pattern => None,
        }
    }

    /// The cursor after `SUB_OK` for a subscribe sent with `resume`.
    ///
    /// With a point of the same epoch (or epoch 0) the broker either replays
    /// from it exactly (`start_after + 1 == next_seq`) or, when the point is
    /// past its last message, starts after that (`start_after + 1 <
    /// next_seq`); in both cases nothing is lost. Otherwise a
    /// `DISCONTINUITY` follows.
    pub(crate) fn after_sub_ok(resume: Option<ResumePoint>, ok: &SubOk) -> Cursor {
        let next_seq = ok.start_after.saturating_add(1);
        match resume {
            Some(point)
                if !(point.epoch == 0 || point.epoch == ok.epoch) || next_seq > point.next_seq =>
            {
                Cursor::AwaitingGap {
                    point,
                    epoch: ok.epoch,
                    next_seq,
                }
            }
            _ => Cursor::Flowing {
                epoch: ok.epoch,
                next_seq,
            },
        }
    }
}

/// Where a subscription's items go, and where it stands.
pub(crate) struct Route {
    /// `None` once `UNSUBSCRIBE` was sent: messages until `UNSUB_OK` are dropped.
    pub(crate) tx: Option<crate::queue::Sender>,
    /// The namespace and topic, which every message of it carries.
    pub(crate) name: std::sync::Arc<crate::message::TopicName>,
    /// Advanced only once an item is in the subscription's channel, so that a
    /// resume point never skips an item the application has not got.
    pub(crate) cursor: Cursor,
    /// A shared subscription's group (`SUBSCRIBE_SHARED`).
    pub(crate) group: Option<std::sync::Arc<str>>,
}

/// Queues the `SUBSCRIBE` (or `SUBSCRIBE_SHARED`) of `route`.
fn encode_route(
    out: &mut BytesMut,
    request_id: u32,
    sub_id: u32,
    resume: Option<ResumePoint>,
    route: &Route,
) {
    let (namespace, topic) = (route.name.namespace.as_bytes(), route.name.topic.as_bytes());
    match &route.group {
        None => encode_subscribe(out, request_id, sub_id, resume, namespace, topic),
        Some(group) => {
            // The names were checked when the subscription was made.
            if let Ok(topic) = corebus_net::TopicKey::new(namespace, topic) {
                corebus_net::Frame::SubscribeShared(corebus_net::SubscribeShared {
                    request_id,
                    sub_id,
                    group: group.to_string(),
                    topic,
                })
                .encode(out);
            }
        }
    }
}

/// Everything behind the state mutex.
pub(crate) struct State {
    pub(crate) terminal: Option<Terminal>,
    pub(crate) link: Link,
    /// The current connection's `WELCOME` (the last one while reconnecting).
    pub(crate) welcome: Welcome,
    /// `close()` is under way: no new requests, no reconnection.
    pub(crate) closing: bool,
    /// The writer shuts the socket down after its next flush.
    pub(crate) shutdown: bool,
    /// The writer was notified about `out` and has not swapped it since:
    /// further appends need not notify it again.
    pub(crate) writer_notified: bool,
    /// Encoded frames waiting for the writer; only frames for the current
    /// connection (emptied when it is lost).
    pub(crate) out: BytesMut,
    /// A call waits for `out` to drain below its limit: the writer notifies
    /// `link_change` when it takes the buffer.
    pub(crate) room_wanted: bool,
    /// Request ids of acknowledged requests, below [`UNACKED_IDS`].
    pub(crate) next_request: u32,
    /// Request ids of unacknowledged publishes, from [`UNACKED_IDS`] up.
    pub(crate) next_unacked: u32,
    /// Unacknowledged publishes the server refused, not yet taken.
    pub(crate) unacked_failures: UnackedFailures,
    pub(crate) next_sub: u32,
    pub(crate) next_nonce: u64,
    /// Request id → what waits for its answer. Fx hashing: ids are
    /// sequential integers from this process, not attacker-chosen, and this
    /// map sees an insert and a remove per publish.
    pub(crate) pending: FxHashMap<u32, Pending>,
    pub(crate) pings: HashMap<u64, oneshot::Sender<()>>,
    pub(crate) routes: HashMap<u32, Route>,
    /// Why a subscription ended on its own (its resubscription was refused);
    /// taken by the subscription when its stream ends.
    pub(crate) ended: HashMap<u32, Error>,
    /// When the current connection's resubscriptions were queued, until
    /// they are all answered.
    pub(crate) resubscribed_at: Option<Instant>,
    /// Resubscriptions of the current connection not answered yet.
    pub(crate) resubscribing: usize,
    /// Resubscriptions of the current connection: queued, and refused.
    resubscribed: usize,
    resubscribe_refused: usize,
    /// Where [`ConnectionEvent`]s go; sent under this lock, so that they come
    /// in the order of the changes they report.
    pub(crate) events: broadcast::Sender<ConnectionEvent>,
}

/// What [`State::link_down`] took out that must be failed outside the lock.
pub(crate) struct Dropped {
    pending: Vec<Pending>,
    pings: HashMap<u64, oneshot::Sender<()>>,
    unsubscribed: Vec<Pending>,
}

impl Dropped {
    /// Fails the requests with `reason`; unsubscribes succeed (the server
    /// forgot the subscriptions with the connection).
    pub(crate) fn fail(self, reason: &str) {
        for request in self.pending {
            request.fail(Error::ConnectionLost(reason.to_owned()));
        }
        for request in self.unsubscribed {
            if let Pending::Unsubscribe {
                answer: Some(answer),
                ..
            } = request
            {
                let _ = answer.send(Ok(()));
            }
        }
        drop(self.pings);
    }
}

impl State {
    pub(crate) fn new(welcome: Welcome, out: BytesMut) -> State {
        State {
            terminal: None,
            link: Link::Up,
            welcome,
            closing: false,
            shutdown: false,
            writer_notified: false,
            out,
            room_wanted: false,
            next_request: 1,
            next_unacked: UNACKED_IDS,
            unacked_failures: UnackedFailures::default(),
            next_sub: 1,
            next_nonce: 1,
            pending: FxHashMap::default(),
            pings: HashMap::new(),
            routes: HashMap::new(),
            ended: HashMap::new(),
            resubscribed_at: None,
            resubscribing: 0,
            resubscribed: 0,
            resubscribe_refused: 0,
            events: broadcast::Sender::new(EVENT_BUFFER),
        }
    }

    /// Tells whoever watches the connection ([`crate::Client::connection_events`]).
    pub(crate) fn emit(&self, event: ConnectionEvent) {
        // No watcher: nothing to keep.
        let _ = self.events.send(event);
    }

    /// Reports a discontinuity handed to a subscription; builds the event
    /// only when someone watches.
    pub(crate) fn emit_gap(&self, name: &TopicName, gap: Discontinuity) {
        if self.events.receiver_count() > 0 {
            self.emit(ConnectionEvent::Discontinuity {
                namespace: name.namespace.to_string(),
                topic: name.topic.to_string(),
                gap,
            });
        }
    }

    /// A resubscription of the current connection was answered (refused,
    /// or accepted); after the last, the subscriptions count as resumed.
    pub(crate) fn resubscription_answered(&mut self, refused: bool) {
        if self.resubscribing == 0 {
            return;
        }
        self.resubscribing -= 1;
        self.resubscribe_refused += usize::from(refused);
        if self.resubscribing == 0 {
            self.resubscribed_at = None;
            self.emit_resumed();
        }
    }

    fn emit_resumed(&self) {
        self.emit(ConnectionEvent::Resumed {
            subscriptions: self.resubscribed - self.resubscribe_refused,
            refused: self.resubscribe_refused,
        });
    }

    /// `Ok(None)` when a request can be queued now, `Ok(Some(reason))` while
    /// reconnecting, or why no request can be made any more.
    pub(crate) fn availability(&self) -> Result<Option<&str>, Error> {
        if let Some(terminal) = &self.terminal {
            return Err(terminal.later_error());
        }
        if self.closing {
            return Err(Error::Closed);
        }
        match &self.link {
            Link::Up => Ok(None),
            Link::Down { reason } => Ok(Some(reason)),
        }
    }

    /// A request id that is not 0, not outstanding, and below
    /// [`UNACKED_IDS`].
    pub(crate) fn alloc_request(&mut self) -> u32 {
        loop {
            let id = self.next_request;
            self.next_request = self.next_request.wrapping_add(1) & !UNACKED_IDS;
            if id != 0 && !self.pending.contains_key(&id) {
                return id;
            }
        }
    }

    /// The request id of an unacknowledged publish: nothing waits for its
    /// answer, so only the range tells an `ERROR` for it apart.
    pub(crate) fn alloc_unacked(&mut self) -> u32 {
        let id = self.next_unacked;
        self.next_unacked = id.wrapping_add(1) | UNACKED_IDS;
        id
    }

    /// A subscription id that is not 0 and not in use (or being unsubscribed,
    /// or holding an end error not yet taken).
    pub(crate) fn alloc_sub(&mut self) -> u32 {
        loop {
            let id = self.next_sub;
            self.next_sub = self.next_sub.wrapping_add(1);
            if id != 0 && !self.routes.contains_key(&id) && !self.ended.contains_key(&id) {
                return id;
            }
        }
    }

    /// Registers a route and queues its `SUBSCRIBE`.
    pub(crate) fn subscribe(
        &mut self,
        sub_id: u32,
        route: Route,
        resume: Option<ResumePoint>,
        request: Pending,
    ) {
        let request_id = self.alloc_request();
        encode_route(&mut self.out, request_id, sub_id, resume, &route);
        self.routes.insert(sub_id, route);
        self.pending.insert(request_id, request);
    }

    /// Stops routing `sub_id` and queues an `UNSUBSCRIBE` for it; while
    /// reconnecting, just forgets the route (the server has no such
    /// subscription).
    pub(crate) fn unsubscribe(
        &mut self,
        sub_id: u32,
        answer: Option<oneshot::Sender<Result<(), Error>>>,
    ) {
        if matches!(self.link, Link::Down { .. }) {
            self.routes.remove(&sub_id);
            if let Some(answer) = answer {
                let _ = answer.send(Ok(()));
            }
            return;
        }
        if let Some(route) = self.routes.get_mut(&sub_id) {
            route.tx = None;
        }
        let request_id = self.alloc_request();
        Frame::Unsubscribe(Unsubscribe { request_id, sub_id }).encode(&mut self.out);
        self.pending
            .insert(request_id, Pending::Unsubscribe { answer, sub_id });
    }

    /// The connection was lost and will be replaced: drops what was queued
    /// for it and takes every request that was waiting on it. Subscriptions
    /// still being set up by a caller, or being unsubscribed, are forgotten;
    /// the others keep their routes and cursors to be resumed.
    pub(crate) fn link_down(&mut self, reason: String) -> Dropped {
        self.link = Link::Down { reason };
        // Resubscriptions still unanswered are sent again on the next one.
        self.resubscribing = 0;
        self.resubscribed_at = None;
        self.out.clear();
        // The next connection's writer starts afresh: the first append after
        // it is up must notify it.
        self.writer_notified = false;
        let mut pending = Vec::new();
        let mut unsubscribed = Vec::new();
        for (_, request) in mem::take(&mut self.pending) {
            match request {
                Pending::Subscribe { sub_id, .. } => {
                    self.routes.remove(&sub_id);
                    pending.push(request);
                }
                Pending::Unsubscribe { sub_id, .. } => {
                    self.routes.remove(&sub_id);
                    unsubscribed.push(request);
                }
                Pending::Resubscribe { .. } => {}
                // A webhook command may or may not have been carried out; the
                // caller can list the webhooks to find out.
                Pending::Publish { .. } | Pending::Command { .. } => pending.push(request),
            }
        }
        self.routes.retain(|_, route| route.tx.is_some());
        Dropped {
            pending,
            pings: mem::take(&mut self.pings),
            unsubscribed,
        }
    }

    /// A new connection (to `server`, after `attempts` attempts) is up:
    /// queues a resuming `SUBSCRIBE` for every subscription, under its own
    /// id, ahead of anything else.
    pub(crate) fn link_up(&mut self, welcome: Welcome, server: String, attempts: u32) {
        self.link = Link::Up;
        self.welcome = welcome;
        self.resubscribed_at = (!self.routes.is_empty()).then(Instant::now);
        self.resubscribing = self.routes.len();
        self.resubscribed = self.routes.len();
        self.resubscribe_refused = 0;
        self.emit(ConnectionEvent::Reconnected { server, attempts });
        if self.routes.is_empty() {
            self.emit_resumed();
        }
        let mut resubscribe = Vec::with_capacity(self.routes.len());
        for (sub_id, route) in &mut self.routes {
            let resume = route.cursor.resume_point();
            route.cursor = Cursor::Subscribing { resume };
            resubscribe.push((*sub_id, resume));
        }
        for (sub_id, resume) in resubscribe {
            let request_id = self.alloc_request();
            if let Some(route) = self.routes.get(&sub_id) {
                encode_route(&mut self.out, request_id, sub_id, resume, route);
            }
            self.pending
                .insert(request_id, Pending::Resubscribe { sub_id });
        }
    }
}
