//! The reader task: decodes frames, answers requests, routes messages and
//! discontinuities, and checks that every subscription's stream stays exact.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::BytesMut;
use corebus_net::{
    check, decode, Check, ErrorFrame, Frame, PubAck, SubOk, UnsubOk, DEFAULT_MAX_FRAME,
};
use tokio::io::AsyncReadExt;

use super::state::{protocol_violation, CommandKind, UNACKED_IDS};
use super::stream::{ReadHalf, READ_CHUNK};
use super::{Cursor, Ended, Pending, Shared, Started, State, Terminal};
use crate::error::code_text;
use crate::queue::{Sender, TrySendError};
use crate::{Discontinuity, Error, Event, Message};

/// Headroom over the server's `max_frame` for inbound frames: a `MESSAGE`
/// spends more bytes of its length on headers than the `PUBLISH` that carried
/// its payload when names are short (see the protocol's client checklist).
const INBOUND_SLACK: u32 = 64;

/// One frame that advances a subscription, checked against its cursor.
enum Step {
    Message(corebus_net::Message),
    Gap(corebus_net::Discontinuity),
    /// A message for a pattern subscription, with its topic.
    TopicMessage(corebus_net::TopicMessage),
}

/// The client's report of a `DISCONTINUITY` frame.
fn discontinuity(gap: &corebus_net::Discontinuity) -> Discontinuity {
    Discontinuity {
        epoch: gap.epoch,
        last_seq: gap.last_seq,
        next_seq: gap.next_seq,
    }
}

impl Step {
    fn sub_id(&self) -> u32 {
        match self {
            Step::Message(message) => message.sub_id,
            Step::Gap(gap) => gap.sub_id,
            Step::TopicMessage(message) => message.sub_id,
        }
    }

    /// The cursor after this step, or why the step breaks the stream.
    fn advance(&self, cursor: Cursor) -> Result<Cursor, String> {
        let sub_id = self.sub_id();
        match (self, cursor) {
            // A pattern's messages come from many topics, each with its own
            // sequence; nothing else comes for a pattern.
            (Step::TopicMessage(_), Cursor::Pattern) => Ok(Cursor::Pattern),
            (Step::TopicMessage(_), _) | (_, Cursor::Pattern) => Err(format!(
                "{} for subscription {sub_id}, which is {}",
                self.name(),
                if cursor == Cursor::Pattern {
                    "a pattern subscription"
                } else {
                    "not a pattern subscription (or before its SUB_OK)"
                }
            )),
            (_, Cursor::Subscribing { .. }) => Err(format!(
                "{} for subscription {sub_id} before its SUB_OK",
                self.name()
            )),
            (Step::Message(message), Cursor::Flowing { epoch, next_seq })
                if message.epoch == epoch && message.seq == next_seq =>
            {
                Ok(Cursor::Flowing {
                    epoch,
                    next_seq: next_seq.wrapping_add(1),
                })
            }
            (Step::Message(message), Cursor::Flowing { epoch, next_seq }) => Err(format!(
                "sequence gap on subscription {sub_id}: expected seq {next_seq} of epoch \
                 {epoch:#x}, got seq {} of epoch {:#x}",
                message.seq, message.epoch
            )),
            (Step::Message(message), Cursor::AwaitingGap { next_seq, .. }) => Err(format!(
                "sequence gap on subscription {sub_id}: got seq {} before the DISCONTINUITY \
                 that its SUB_OK (next seq {next_seq}) announced",
                message.seq
            )),
            (
                Step::Gap(gap),
                Cursor::AwaitingGap {
                    point,
                    epoch,
                    next_seq,
                },
            ) if gap.epoch == epoch
                && gap.next_seq == next_seq
                && gap.last_seq == point.next_seq.wrapping_sub(1) =>
            {
                Ok(Cursor::Flowing { epoch, next_seq })
            }
            // Messages dropped for a slow consumer (or, in principle, a new
            // epoch): the report starts where the subscription is and must
            // not go back.
            (Step::Gap(gap), Cursor::Flowing { epoch, next_seq })
                if gap.last_seq == next_seq.wrapping_sub(1)
                    && (gap.epoch != epoch || gap.next_seq >= next_seq) =>
            {
                Ok(Cursor::Flowing {
                    epoch: gap.epoch,
                    next_seq: gap.next_seq,
                })
            }
            (Step::Gap(gap), cursor) => Err(format!(
                "DISCONTINUITY on subscription {sub_id} (epoch {:#x}, last seq {}, next seq {}) \
                 does not fit the subscription's position {cursor:?}",
                gap.epoch, gap.last_seq, gap.next_seq
            )),
        }
    }

    /// The discontinuity this step reports, if it is one.
    fn gap(&self) -> Option<Discontinuity> {
        match self {
            Step::Message(_) | Step::TopicMessage(_) => None,
            Step::Gap(gap) => Some(discontinuity(gap)),
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Step::Message(_) => "MESSAGE",
            Step::Gap(_) => "DISCONTINUITY",
            Step::TopicMessage(_) => "TOPIC_MESSAGE",
        }
    }

    fn into_event(self, name: &std::sync::Arc<crate::message::TopicName>) -> Event {
        match self {
            Step::Message(message) => Event::Message(Message {
                epoch: message.epoch,
                seq: message.seq,
                payload: message.body.payload(),
                name: name.clone(),
                format: message.body.format(),
                headers: headers_of(&message.body),
            }),
            Step::Gap(gap) => Event::Discontinuity(discontinuity(&gap)),
            Step::TopicMessage(message) => Event::Message(Message {
                epoch: message.epoch,
                seq: message.seq,
                payload: message.body.payload(),
                name: std::sync::Arc::new(crate::message::TopicName {
                    namespace: name.namespace.clone(),
                    topic: message.topic.into(),
                }),
                format: message.body.format(),
                headers: headers_of(&message.body),
            }),
        }
    }
}

impl Shared {
    fn answer_publish(&self, ack: PubAck) -> Result<(), Ended> {
        let mut st = self.lock();
        match st.pending.remove(&ack.request_id) {
            None => Ok(()),
            Some(Pending::Publish { answer, .. }) => {
                let _ = answer.send(Ok(ack.seq));
                Ok(())
            }
            Some(other) => Err(wrong_answer(&mut st, ack.request_id, other, |name| {
                format!("PUB_ACK answers request {}, a {name}", ack.request_id)
            })),
        }
    }

    fn answer_subscribe(&self, ok: SubOk) -> Result<(), Ended> {
        let mut st = self.lock();
        let request = st.pending.remove(&ok.request_id);
        if request.is_none() {
            return Ok(());
        }
        let request = request.filter(|request| {
            matches!(request, Pending::Subscribe { sub_id, .. } | Pending::Resubscribe { sub_id }
                if *sub_id == ok.sub_id)
        });
        let Some(request) = request else {
            return Err(protocol_violation(format!(
                "SUB_OK (sub {}) answers request {}, not a SUBSCRIBE for that subscription",
                ok.sub_id, ok.request_id
            )));
        };
        if matches!(request, Pending::Resubscribe { .. }) {
            st.resubscription_answered(false);
        }
        let Some(route) = st.routes.get_mut(&ok.sub_id) else {
            return Ok(());
        };
        let Cursor::Subscribing { resume } = route.cursor else {
            return Err(protocol_violation(format!(
                "second SUB_OK for subscription {}",
                ok.sub_id
            )));
        };
        let cursor =
            if corebus_net::is_pattern(route.name.topic.as_bytes()) || route.group.is_some() {
                Cursor::Pattern
            } else {
                Cursor::after_sub_ok(resume, &ok)
            };
        if let (Pending::Resubscribe { .. }, Some(point), Cursor::Flowing { next_seq, .. }) =
            (&request, resume, cursor)
        {
            // Resuming right after messages this client received, the broker
            // cannot be behind them in the same epoch; if it were, they would
            // come again as duplicates.
            if next_seq < point.next_seq {
                return Err(protocol_violation(format!(
                    "SUB_OK resumes subscription {} after seq {}, but it already received \
                     seq {} of epoch {:#x}",
                    ok.sub_id,
                    ok.start_after,
                    point.next_seq - 1,
                    ok.epoch
                )));
            }
        }
        route.cursor = cursor;
        if let Pending::Subscribe { answer, sub_id } = request {
            let started = Started {
                sub_id,
                epoch: ok.epoch,
                start_after: ok.start_after,
            };
            if answer.send(Ok(started)).is_err() {
                // The caller gave up (timeout or cancellation): end the
                // subscription on the server too.
                st.unsubscribe(sub_id, None);
                drop(st);
                self.wake_writer();
            }
        }
        Ok(())
    }

    fn answer_unsubscribe(&self, ok: UnsubOk) -> Result<(), Ended> {
        let mut st = self.lock();
        match st.pending.remove(&ok.request_id) {
            None => Ok(()),
            Some(Pending::Unsubscribe { answer, sub_id }) if sub_id == ok.sub_id => {
                st.routes.remove(&sub_id);
                if let Some(answer) = answer {
                    let _ = answer.send(Ok(()));
                }
                Ok(())
            }
            Some(other) => Err(wrong_answer(&mut st, ok.request_id, other, |name| {
                format!(
                    "UNSUB_OK (sub {}) answers request {}, a {name} with another subscription",
                    ok.sub_id, ok.request_id
                )
            })),
        }
    }

    fn answer_command(
        &self,
        kind: CommandKind,
        request_id: u32,
        result: String,
    ) -> Result<(), Ended> {
        let mut st = self.lock();
        match st.pending.remove(&request_id) {
            // The caller gave up (timeout or cancellation) and forgot it.
            None => Ok(()),
            Some(Pending::Command {
                kind: asked,
                answer,
            }) if asked == kind => {
                let _ = answer.send(Ok(result));
                Ok(())
            }
            Some(other) => Err(wrong_answer(&mut st, request_id, other, |name| {
                format!(
                    "{} answers request {request_id}, a {name}",
                    kind.reply_name()
                )
            })),
        }
    }

    fn answer_error(&self, frame: ErrorFrame) -> Result<(), Ended> {
        let request = if frame.request_id == 0 {
            None
        } else if frame.request_id & UNACKED_IDS != 0 {
            // A publish sent without the ack flag was refused: nothing waits
            // for it, so it is counted for `take_unacked_failures`.
            let mut st = self.lock();
            let failures = &mut st.unacked_failures;
            failures.count += 1;
            failures.last = Some(Error::from_frame(&frame));
            None
        } else {
            let mut st = self.lock();
            let request = st.pending.remove(&frame.request_id);
            if let Some(sub_id) = request.as_ref().and_then(Pending::sub_id) {
                // The subscription is gone; a refused resubscription ends its
                // stream with the server's error.
                let route = st.routes.remove(&sub_id);
                if matches!(request, Some(Pending::Resubscribe { .. })) {
                    if route.is_some_and(|route| route.tx.is_some()) {
                        st.ended.insert(sub_id, Error::from_frame(&frame));
                    }
                    st.resubscription_answered(true);
                }
            }
            request
        };
        if let Some(request) = request {
            request.fail(Error::from_frame(&frame));
        }
        if frame.fatal {
            return Err(Ended::Lost(format!(
                "the server closed the connection: {}: {}",
                code_text(frame.code(), frame.code),
                frame.message
            )));
        }
        // A non-fatal error for request 0 (or an unknown request) cannot be
        // tied to any call; the connection stays usable.
        Ok(())
    }

    fn answer_ping(&self, nonce: u64) {
        let mut st = self.lock();
        if st.terminal.is_none() {
            Frame::Pong(nonce).encode(&mut st.out);
            drop(st);
            self.wake_writer();
        }
    }

    fn answer_pong(&self, nonce: u64) {
        if let Some(answer) = self.lock().pings.remove(&nonce) {
            let _ = answer.send(());
        }
    }

    /// Checks messages and discontinuities against their subscriptions'
    /// cursors and hands them over, in order, taking them from the front of
    /// `steps`. A cursor moves only once its item is in the subscription's
    /// queue: if this task is stopped while waiting for room, the resume
    /// point still names the first item not handed over. Everything that
    /// fits goes under one lock of the state, and a run of items for one
    /// subscription under one lock of its queue.
    async fn deliver_all(&self, steps: &mut VecDeque<Step>) -> Result<(), Ended> {
        loop {
            let blocked = hand_over(&mut self.lock(), steps)?;
            let Some(Blocked {
                sub_id,
                tx,
                event,
                cursor,
            }) = blocked
            else {
                return Ok(());
            };
            // The subscriber is behind: wait for room, which stops reading
            // the socket (and so stalls every other subscription on this
            // connection). What follows the item is still in `steps`.
            self.stalled.store(true, Ordering::Relaxed);
            let fits = tx.room().await;
            self.stalled.store(false, Ordering::Relaxed);
            self.heard_now();
            if !fits {
                continue;
            }
            let mut st = self.lock();
            // Only this task moves cursors while the connection is up, so the
            // route is as it was unless it was removed or is being
            // unsubscribed; and only this task sends, so the room found is
            // still there.
            let gap = match &event {
                Event::Discontinuity(gap) => Some(*gap),
                Event::Message(_) => None,
            };
            let Some(route) = st.routes.get_mut(&sub_id) else {
                continue;
            };
            let Some(tx) = route.tx.as_ref() else {
                continue;
            };
            if tx.try_send(event).is_ok() {
                route.cursor = cursor;
                if let Some(gap) = gap {
                    let name = route.name.clone();
                    st.emit_gap(&name, gap);
                }
            }
        }
    }
}

/// An item whose subscription's queue was full.
struct Blocked {
    sub_id: u32,
    tx: Sender,
    event: Event,
    /// The cursor once it is handed over.
    cursor: Cursor,
}

/// Hands over items from the front of `steps` until they are all gone or
/// one finds its subscription's queue full.
fn hand_over(st: &mut State, steps: &mut VecDeque<Step>) -> Result<Option<Blocked>, Ended> {
    // Discontinuities handed over, reported once the routes are let go.
    let mut gaps = Vec::new();
    let blocked = hand_over_runs(st, steps, &mut gaps);
    for (name, gap) in gaps {
        st.emit_gap(&name, gap);
    }
    blocked
}

/// [`hand_over`]'s work, collecting the discontinuities handed over in `gaps`.
fn hand_over_runs(
    st: &mut State,
    steps: &mut VecDeque<Step>,
    gaps: &mut Vec<(std::sync::Arc<crate::message::TopicName>, Discontinuity)>,
) -> Result<Option<Blocked>, Ended> {
    while let Some(first) = steps.front() {
        let sub_id = first.sub_id();
        let run = steps
            .iter()
            .take_while(|step| step.sub_id() == sub_id)
            .count();
        // Unknown subscriptions (already unsubscribed) are ignored, and while
        // unsubscribing, messages until UNSUB_OK are dropped.
        let Some(route) = st.routes.get_mut(&sub_id) else {
            steps.drain(..run);
            continue;
        };
        let Some(tx) = route.tx.as_ref() else {
            steps.drain(..run);
            continue;
        };
        let mut queue = tx.sending();
        for taken in 1..=run {
            let Some(step) = steps.pop_front() else { break };
            let cursor = step.advance(route.cursor).map_err(protocol_violation)?;
            let gap = step.gap();
            match queue.push(step.into_event(&route.name)) {
                Ok(()) => {
                    route.cursor = cursor;
                    if let Some(gap) = gap {
                        gaps.push((route.name.clone(), gap));
                    }
                }
                // The subscription was dropped (its Drop unsubscribes): the
                // rest of its run goes too.
                Err(TrySendError::Closed) => {
                    steps.drain(..run - taken);
                    break;
                }
                Err(TrySendError::Full(event)) => {
                    drop(queue);
                    return Ok(Some(Blocked {
                        sub_id,
                        tx: tx.clone(),
                        event,
                        cursor,
                    }));
                }
            }
        }
    }
    Ok(None)
}

/// An answer that does not fit the request it names: the request goes back
/// to wait (it fails with the client's end, which this violation causes),
/// and `what` describes the violation given the request's frame name.
fn wrong_answer(
    st: &mut State,
    request_id: u32,
    request: Pending,
    what: impl FnOnce(&'static str) -> String,
) -> Ended {
    let name = request.name();
    st.pending.insert(request_id, request);
    protocol_violation(what(name))
}

/// Reads and dispatches frames until the connection ends; returns why.
pub(super) async fn run_reader(shared: Arc<Shared>, mut rd: ReadHalf, mut buf: BytesMut) -> Ended {
    let limit = shared
        .welcome()
        .max_frame
        .max(DEFAULT_MAX_FRAME)
        .saturating_add(INBOUND_SLACK);
    // Messages and discontinuities decoded from what was read, handed over
    // together before anything else is dispatched or read.
    let mut steps = VecDeque::new();
    loop {
        match check(&buf, limit) {
            Err(err) => return Ended::Fatal(Terminal::Protocol(err)),
            Ok(Check::Complete { len }) => {
                // Payloads are slices of this buffer: no copy.
                let frame = match decode(buf.split_to(len).freeze()) {
                    Ok(frame) => frame,
                    Err(err) => return Ended::Fatal(Terminal::Protocol(err)),
                };
                let other = match frame {
                    Frame::Message(message) => {
                        steps.push_back(Step::Message(message));
                        continue;
                    }
                    Frame::Discontinuity(gap) => {
                        steps.push_back(Step::Gap(gap));
                        continue;
                    }
                    Frame::TopicMessage(message) => {
                        steps.push_back(Step::TopicMessage(message));
                        continue;
                    }
                    other => other,
                };
                if let Err(ended) = shared.deliver_all(&mut steps).await {
                    return ended;
                }
                if let Err(ended) = dispatch(&shared, other).await {
                    return ended;
                }
            }
            Ok(Check::Incomplete { need }) => {
                if let Err(ended) = shared.deliver_all(&mut steps).await {
                    return ended;
                }
                let want = need.saturating_sub(buf.len()).max(READ_CHUNK);
                if buf.capacity() - buf.len() < want {
                    buf.reserve(want);
                }
                match rd.read_buf(&mut buf).await {
                    Ok(0) if buf.is_empty() => {
                        return Ended::Lost("the server closed the connection".into())
                    }
                    Ok(0) => {
                        return Ended::Lost(
                            "the server closed the connection in the middle of a frame".into(),
                        )
                    }
                    Ok(_) => shared.heard_now(),
                    Err(err) => return Ended::Lost(format!("read failed: {err}")),
                }
            }
        }
    }
}

/// Dispatches a frame other than `MESSAGE` and `DISCONTINUITY` (which
/// [`Shared::deliver_all`] hands over).
async fn dispatch(shared: &Shared, frame: Frame) -> Result<(), Ended> {
    match frame {
        Frame::Message(message) => {
            shared
                .deliver_all(&mut VecDeque::from([Step::Message(message)]))
                .await
        }
        Frame::Discontinuity(gap) => {
            shared
                .deliver_all(&mut VecDeque::from([Step::Gap(gap)]))
                .await
        }
        Frame::TopicMessage(message) => {
            shared
                .deliver_all(&mut VecDeque::from([Step::TopicMessage(message)]))
                .await
        }
        Frame::PubAck(ack) => shared.answer_publish(ack),
        Frame::SubOk(ok) => shared.answer_subscribe(ok),
        Frame::UnsubOk(ok) => shared.answer_unsubscribe(ok),
        Frame::WebhookReply(reply) => {
            shared.answer_command(CommandKind::Webhook, reply.request_id, reply.result)
        }
        Frame::ClusterReply(reply) => {
            shared.answer_command(CommandKind::Cluster, reply.request_id, reply.result)
        }
        Frame::Error(err) => shared.answer_error(err),
        Frame::Ping(nonce) => {
            shared.answer_ping(nonce);
            Ok(())
        }
        Frame::Pong(nonce) => {
            shared.answer_pong(nonce);
            Ok(())
        }
        // The server flushed everything before this frame and closes next:
        // reconnect now (and resume) instead of waiting for the close.
        Frame::GoAway(go_away) => Err(Ended::Lost(format!(
            "the server is going away: {}",
            go_away.message
        ))),
        other => Err(protocol_violation(format!(
            "the server sent a {:?} frame",
            other.opcode()
        ))),
    }
}

/// A message's headers, when its body has any.
fn headers_of(body: &corebus_net::Body) -> Option<Box<corebus_net::Headers>> {
    body.has_headers().then(|| Box::new(body.headers()))
}
