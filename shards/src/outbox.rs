//! A connection's outbound queue.
//!
//! The engine pushes typed items; the connection's writer task drains them in
//! batches and encodes them into one vectored write. Small `MESSAGE`s are
//! encoded as they are queued, into runs of whole frames the writer sends as
//! they are: a message then costs the outbox a copy of its payload and no
//! reference to it (two atomic refcount operations per delivery fewer).
//!
//! The queue is bounded in bytes: a `MESSAGE` that would pass the bound is
//! refused (the engine then drops it and reports a discontinuity, or closes
//! the connection, by policy). Control frames (acks, errors, discontinuities) are small and must
//! not be lost, so they may use up to twice the bound; past that the
//! connection is closed. Either way one connection that does not read can
//! never make the broker's memory grow without limit.

use std::cell::Cell;
use std::collections::VecDeque;
use std::task::Waker;

use bytes::{Bytes, BytesMut};
use corebus_net::{
    encode_message_header, Body, ClusterReply, Discontinuity, Epoch, ErrorFrame, Frame, GoAway,
    Message, PubAck, ReplayEnd, Seq, SubOk, Token, UnsubOk, WebhookReply, Welcome,
    MESSAGE_HEADER_LEN,
};

use crate::ring::COPY_MAX;

/// `MESSAGE` payloads shorter than this are copied into the outbox's
/// encoded runs when queued; longer ones are queued as shared slices and
/// leave as segments of their own in a vectored write (a copy would cost
/// more than the reference).
pub const ENCODE_BELOW: usize = 512;

/// Most payloads of up to [`COPY_MAX`] bytes an outbox holds by reference.
/// Such a payload is a slice of the publisher's whole read buffer (up to
/// 64 KiB, or twice a large frame) and keeps all of it alive, however little
/// of it is this message: behind a subscriber that stopped reading,
/// references would hold many times the bytes the bound counts. So only the
/// first few queued are shared (a subscriber that keeps up rarely has more
/// waiting); later ones are copied into the queue's encoded runs, and what
/// the bound counts is what the queue holds, give or take these few buffers
/// (four read buffers of up to 128 KiB each: 6% of the default 8 MiB bound).
///
/// A payload over [`COPY_MAX`] is always shared: the topic's owner copied it
/// out of the read buffer into one of its exact size before fanning it out,
/// so the reference holds what the bound counts, and stalled subscribers of
/// one topic share one copy.
pub const SHARED_MAX: usize = 4;

/// Longest run of encoded messages handed to the writer as one item (a run
/// of larger copied messages may be longer: see `encode_into_run`).
const RUN_MAX: usize = 64 * 1024;

/// Room a run starts with when it follows a full run (a burst): a whole
/// run's, so that it is never reallocated and holds at most one frame of
/// slack. Any other run starts with room for its first frame and grows, so a
/// quiet connection's message costs little.
const RUN_ROOM: usize = RUN_MAX + MESSAGE_HEADER_LEN + ENCODE_BELOW;

// A burst run has room for at least sixteen of the largest frames copied
// into runs (payloads of up to COPY_MAX; larger ones are shared), so what it
// leaves unused is at most a sixteenth.
const _: () = assert!(RUN_ROOM >= 16 * (MESSAGE_HEADER_LEN + COPY_MAX));

thread_local! {
    /// Writers of this thread's (this shard's) outboxes that were woken and
    /// have not looked at their queue yet. A writer that finds others about
    /// to run queues its send so that they all leave in one submission
    /// ([`crate::sends`]); alone, it sends at once.
    static WRITERS_WOKEN: Cell<usize> = const { Cell::new(0) };
}

/// How many writers of this thread's outboxes were woken and have not yet
/// taken their turn ([`Outbox::take_woken`]).
pub fn writers_woken() -> usize {
    WRITERS_WOKEN.with(Cell::get)
}

/// One frame waiting to be written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutFrame {
    /// `MESSAGE`: the payload is shared with every other subscriber.
    Message {
        /// Subscription id.
        sub_id: u32,
        /// Topic epoch.
        epoch: Epoch,
        /// Topic sequence number.
        seq: Seq,
        /// Shared payload.
        payload: Bytes,
    },
    /// `PUB_ACK`.
    PubAck {
        /// The publish's request id.
        request_id: u32,
        /// Assigned sequence number.
        seq: Seq,
    },
    /// `SUB_OK`.
    SubOk {
        /// The subscribe's request id.
        request_id: u32,
        /// Subscription id.
        sub_id: u32,
        /// Topic epoch.
        epoch: Epoch,
        /// Start point.
        start_after: Seq,
    },
    /// `DISCONTINUITY`.
    Discontinuity {
        /// Subscription id.
        sub_id: u32,
        /// Epoch of `next_seq`.
        epoch: Epoch,
        /// Last sequence number the subscription had.
        last_seq: Seq,
        /// Next sequence number it gets.
        next_seq: Seq,
    },
    /// `REPLAY_END` (to another node of the cluster only).
    ReplayEnd {
        /// Subscription id.
        sub_id: u32,
        /// Last sequence number replayed.
        last_seq: Seq,
    },
    /// `UNSUB_OK`.
    UnsubOk {
        /// The unsubscribe's request id.
        request_id: u32,
        /// Subscription id.
        sub_id: u32,
    },
    /// `WELCOME`.
    Welcome {
        /// The protocol version the connection speaks.
        version: u16,
        /// Frame-size limit.
        max_frame: u32,
        /// This shard.
        shard: u16,
        /// Shard count.
        shard_count: u16,
    },
    /// `PING` (heartbeat on an idle connection).
    Ping(u64),
    /// `PONG`.
    Pong(u64),
    /// `ERROR`.
    Error(ErrorFrame),
    /// `TOKEN`.
    Token {
        /// The request's id.
        request_id: u32,
        /// The minted token.
        token: String,
    },
    /// `CLUSTER_REPLY`.
    ClusterReply {
        /// The request's id.
        request_id: u32,
        /// The JSON result.
        result: String,
    },
    /// `WEBHOOK_REPLY`.
    WebhookReply {
        /// The request's id.
        request_id: u32,
        /// The JSON result.
        result: String,
    },
    /// `GOAWAY`.
    GoAway {
        /// Time until the server closes.
        drain_ms: u32,
        /// Why.
        message: String,
    },
    /// Whole `MESSAGE` frames, encoded when they were queued (what
    /// [`Outbox::drain_some`] hands out for a run of small messages).
    Encoded(Bytes),
}

impl OutFrame {
    /// The native frame this item stands for, as its client decodes it;
    /// `Err` with the bytes of a run encoded when it was queued
    /// ([`OutFrame::Encoded`]). A `MESSAGE` whose body the broker cannot
    /// read back (a bug, not input) is an empty run: it is skipped, as
    /// [`crate::framing::frames_of`] skips it.
    pub fn into_frame(self) -> Result<Frame, Bytes> {
        Ok(match self {
            OutFrame::Message {
                sub_id,
                epoch,
                seq,
                payload,
            } => match Body::parse(payload, "MESSAGE") {
                Ok(body) => Frame::Message(Message {
                    sub_id,
                    epoch,
                    seq,
                    body,
                }),
                Err(_) => return Err(Bytes::new()),
            },
            OutFrame::Encoded(run) => return Err(run),
            OutFrame::PubAck { request_id, seq } => Frame::PubAck(PubAck { request_id, seq }),
            OutFrame::SubOk {
                request_id,
                sub_id,
                epoch,
                start_after,
            } => Frame::SubOk(SubOk {
                request_id,
                sub_id,
                epoch,
                start_after,
            }),
            OutFrame::Discontinuity {
                sub_id,
                epoch,
                last_seq,
                next_seq,
            } => Frame::Discontinuity(Discontinuity {
                sub_id,
                epoch,
                last_seq,
                next_seq,
            }),
            OutFrame::ReplayEnd { sub_id, last_seq } => {
                Frame::ReplayEnd(ReplayEnd { sub_id, last_seq })
            }
            OutFrame::UnsubOk { request_id, sub_id } => {
                Frame::UnsubOk(UnsubOk { request_id, sub_id })
            }
            OutFrame::Welcome {
                version,
                max_frame,
                shard,
                shard_count,
            } => Frame::Welcome(Welcome {
                version,
                max_frame,
                shard,
                shard_count,
            }),
            OutFrame::Ping(nonce) => Frame::Ping(nonce),
            OutFrame::Pong(nonce) => Frame::Pong(nonce),
            OutFrame::Error(error) => Frame::Error(error),
            OutFrame::Token { request_id, token } => Frame::Token(Token { request_id, token }),
            OutFrame::WebhookReply { request_id, result } => {
                Frame::WebhookReply(WebhookReply { request_id, result })
            }
            OutFrame::ClusterReply { request_id, result } => {
                Frame::ClusterReply(ClusterReply { request_id, result })
            }
            OutFrame::GoAway { drain_ms, message } => Frame::GoAway(GoAway { drain_ms, message }),
        })
    }

    /// Bytes this frame occupies on the wire (what the queue bound counts).
    pub fn wire_len(&self) -> usize {
        match self {
            OutFrame::Message { payload, .. } => MESSAGE_HEADER_LEN + payload.len(),
            OutFrame::PubAck { .. } => 17,
            OutFrame::SubOk { .. } => 29,
            OutFrame::Discontinuity { .. } => 33,
            OutFrame::UnsubOk { .. } => 13,
            OutFrame::ReplayEnd { .. } => 17,
            OutFrame::Welcome { .. } => 15,
            OutFrame::Ping(_) | OutFrame::Pong(_) => 13,
            OutFrame::Error(error) => 14 + error.message.len(),
            OutFrame::GoAway { message, .. } => 11 + message.len(),
            OutFrame::Token { token, .. } => 11 + token.len(),
            OutFrame::WebhookReply { result, .. } | OutFrame::ClusterReply { result, .. } => {
                9 + result.len()
            }
            OutFrame::Encoded(frames) => frames.len(),
        }
    }
}

/// Why a push was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushError {
    /// The frame does not fit under the byte bound.
    Full,
    /// The connection is closing; nothing more is queued.
    Closing,
}

/// One item of an outbox's queue.
#[derive(Debug)]
enum Queued {
    Frame(OutFrame),
    /// A `MESSAGE` whose payload is a reference into a buffer it shares
    /// (counted in [`Outbox::shared`]).
    Shared(OutFrame),
    /// Whole `MESSAGE` frames, encoded, in a buffer of the run's own: an
    /// outbox holds at most about two runs' room (130 KiB) beyond what is
    /// queued, and a run leaves for the writer without a shared refcount.
    Run(BytesMut),
}

/// Where a run that would take a `len`-byte frame ends.
fn run_end(run: &BytesMut, len: usize) -> usize {
    if len < MESSAGE_HEADER_LEN + ENCODE_BELOW {
        RUN_MAX
    } else {
        run.capacity().max(RUN_MAX)
    }
}

impl Queued {
    fn wire_len(&self) -> usize {
        match self {
            Queued::Frame(frame) | Queued::Shared(frame) => frame.wire_len(),
            Queued::Run(run) => run.len(),
        }
    }
}

/// Room for queued frames an outbox keeps once it is empty: a queue that
/// never grew past it is freed (see [`Outbox::drain_some`]).
const IDLE_QUEUE_KEPT: usize = 8;

/// The outbound queue of one connection. Owned by the shard's engine; only the
/// shard's own tasks touch it.
#[derive(Debug)]
pub struct Outbox {
    frames: VecDeque<Queued>,
    queued_bytes: usize,
    /// Wire bytes the writer took with its last [`Outbox::drain_some`] and
    /// has not sent yet: still memory this connection holds, so the bound
    /// counts them until [`Outbox::batch_sent`].
    in_writer: usize,
    limit_bytes: usize,
    /// Queued payloads held by reference ([`SHARED_MAX`] at most).
    shared: usize,
    /// Set once the connection must close after what is queued is written.
    closing: bool,
    /// The writer has transport work (TLS records) even with no frames.
    kicked: bool,
    writer: Option<Waker>,
    /// The writer was woken and has not taken its turn yet (counted in
    /// [`writers_woken`]).
    woken: bool,
}

impl Outbox {
    /// An empty queue holding at most `limit_bytes` of frames.
    pub fn new(limit_bytes: usize) -> Outbox {
        Outbox {
            frames: VecDeque::new(),
            queued_bytes: 0,
            in_writer: 0,
            limit_bytes,
            shared: 0,
            closing: false,
            kicked: false,
            writer: None,
            woken: false,
        }
    }

    /// Queues a frame and wakes the writer. `MESSAGE`s must fit the bound;
    /// control frames may use up to twice the bound.
    pub fn push(&mut self, frame: OutFrame) -> Result<(), PushError> {
        let limit = match &frame {
            OutFrame::Message {
                sub_id,
                epoch,
                seq,
                payload,
            } => return self.push_message(*sub_id, *epoch, *seq, payload),
            OutFrame::Encoded(_) => self.limit_bytes,
            _ => self.limit_bytes.saturating_mul(2),
        };
        self.admit(frame.wire_len(), limit)?;
        self.frames.push_back(Queued::Frame(frame));
        self.wake();
        Ok(())
    }

    /// Queues a `MESSAGE` (under the bound) and wakes the writer: a small
    /// payload is copied, encoded, into the current run; a larger one is
    /// queued as a reference while fewer than [`SHARED_MAX`] are, and
    /// otherwise copied into a run; one over [`COPY_MAX`] (a buffer of its
    /// own size) is always queued as a reference.
    pub fn push_message(
        &mut self,
        sub_id: u32,
        epoch: Epoch,
        seq: Seq,
        payload: &Bytes,
    ) -> Result<(), PushError> {
        let len = MESSAGE_HEADER_LEN + payload.len();
        self.admit(len, self.limit_bytes)?;
        if payload.len() < ENCODE_BELOW {
            self.encode_into_run(sub_id, epoch, seq, payload);
        } else if payload.len() > COPY_MAX {
            self.frames.push_back(Queued::Frame(OutFrame::Message {
                sub_id,
                epoch,
                seq,
                payload: payload.clone(),
            }));
        } else if self.shared < SHARED_MAX {
            self.shared += 1;
            self.frames.push_back(Queued::Shared(OutFrame::Message {
                sub_id,
                epoch,
                seq,
                payload: payload.clone(),
            }));
        } else {
            // Behind: this message waits for the ones before it, and must not
            // keep the publisher's read buffer alive while it does. Copied
            // into a run, it costs no queue entry and no allocation of its own
            // (each of which would add about a sixth to a 600-byte message).
            self.encode_into_run(sub_id, epoch, seq, payload);
        }
        self.wake();
        Ok(())
    }

    /// Encodes a `MESSAGE` at the end of the last run, or of a new one. A run
    /// that follows a full run (a burst) starts with room for at least
    /// sixteen such frames and fills without being reallocated, so what it
    /// leaves unused is at most one frame: a sixteenth of it for copied
    /// messages of 4 KiB and more.
    fn encode_into_run(&mut self, sub_id: u32, epoch: Epoch, seq: Seq, payload: &[u8]) {
        let len = MESSAGE_HEADER_LEN + payload.len();
        let room = match self.frames.back() {
            // A run of small frames ends at RUN_MAX, leaving its room's last
            // frame of slack; copied larger ones fill what room a run has.
            Some(Queued::Run(run)) if run.len() + len <= run_end(run, len) => None,
            Some(Queued::Run(_)) => Some(RUN_ROOM),
            _ => Some(len),
        };
        if let Some(room) = room {
            self.frames
                .push_back(Queued::Run(BytesMut::with_capacity(room)));
        }
        if let Some(Queued::Run(run)) = self.frames.back_mut() {
            encode_message_header(run, sub_id, epoch, seq, payload.len());
            run.extend_from_slice(payload);
        }
    }

    /// Counts `len` more bytes queued if they fit under `limit`.
    fn admit(&mut self, len: usize, limit: usize) -> Result<(), PushError> {
        if self.closing {
            return Err(PushError::Closing);
        }
        // An empty queue takes any one frame, so a single frame larger than the
        // bound (at most one maximum-size message) can still be delivered.
        if !self.frames.is_empty() && self.queued_bytes + self.in_writer + len > limit {
            return Err(PushError::Full);
        }
        self.queued_bytes += len;
        Ok(())
    }

    /// Drops everything queued, queues `last` (typically a fatal `ERROR`) and
    /// marks the queue closing: the writer sends `last`, then closes.
    pub fn close_with(&mut self, last: Option<OutFrame>) {
        if self.closing {
            return;
        }
        self.frames.clear();
        self.queued_bytes = 0;
        self.shared = 0;
        if let Some(frame) = last {
            self.queued_bytes = frame.wire_len();
            self.frames.push_back(Queued::Frame(frame));
        }
        self.closing = true;
        self.wake();
    }

    /// Marks the queue closing after what is already queued (orderly close).
    pub fn finish(&mut self) {
        self.closing = true;
        self.wake();
    }

    /// True once no more frames will be accepted.
    pub fn is_closing(&self) -> bool {
        self.closing
    }

    /// Bytes currently queued.
    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes
    }

    /// Queued payloads held by reference to a buffer they share.
    pub fn shared_payloads(&self) -> usize {
        self.shared
    }

    /// The bound on queued `MESSAGE` bytes.
    pub fn limit_bytes(&self) -> usize {
        self.limit_bytes
    }

    /// Changes the bound (a connection that turned out to be another
    /// node's link gets that of links).
    pub fn set_limit_bytes(&mut self, limit_bytes: usize) {
        self.limit_bytes = limit_bytes;
    }

    /// Number of items queued: frames, and runs of small messages.
    pub fn len(&self) -> usize {
        self.frames.len()
    }

    /// True when nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Moves every queued frame into `into`, each `MESSAGE` as its own
    /// [`OutFrame::Message`] (runs are decoded again): the queue frame by
    /// frame, for tests, as a writer that sent them all at once.
    #[cfg(test)]
    pub fn drain_into(&mut self, into: &mut Vec<OutFrame>) {
        let mut items = Vec::new();
        self.drain_some(&mut items, usize::MAX);
        self.batch_sent();
        for item in items {
            let OutFrame::Encoded(mut run) = item else {
                into.push(item);
                continue;
            };
            while !run.is_empty() {
                let Ok(corebus_net::Check::Complete { len }) = corebus_net::check(&run, u32::MAX)
                else {
                    panic!("a run holds whole frames only");
                };
                let frame = run.split_to(len);
                match corebus_net::decode(frame.clone()) {
                    Ok(corebus_net::Frame::Message(message)) => into.push(OutFrame::Message {
                        sub_id: message.sub_id,
                        epoch: message.epoch,
                        seq: message.seq,
                        payload: message.body.into_bytes(),
                    }),
                    // A frame encoded whole (a `TOPIC_MESSAGE`) stays so.
                    Ok(corebus_net::Frame::TopicMessage(_)) => {
                        into.push(OutFrame::Encoded(frame));
                    }
                    other => panic!("a run holds message frames only, not {other:?}"),
                }
            }
        }
    }

    /// Moves the oldest queued frames into `into`, up to `max_bytes` of wire
    /// bytes (at least one item, however large: a frame, or a run of small
    /// messages of up to 64 KiB); the rest stay queued and count against the
    /// bound.
    pub fn drain_some(&mut self, into: &mut Vec<OutFrame>, max_bytes: usize) {
        let mut taken = 0;
        while let Some(item) = self.frames.front() {
            let len = item.wire_len();
            if taken > 0 && taken + len > max_bytes {
                break;
            }
            taken += len;
            match self.frames.pop_front() {
                Some(Queued::Frame(frame)) => into.push(frame),
                Some(Queued::Shared(frame)) => {
                    self.shared -= 1;
                    into.push(frame);
                }
                Some(Queued::Run(run)) => into.push(OutFrame::Encoded(run.freeze())),
                None => {}
            }
        }
        debug_assert!(
            taken <= self.queued_bytes,
            "outbox accounting: drained {taken} bytes of {} queued",
            self.queued_bytes
        );
        self.queued_bytes = self.queued_bytes.saturating_sub(taken);
        self.in_writer = taken;
        if self.frames.is_empty() && self.frames.capacity() <= IDLE_QUEUE_KEPT {
            // An idle connection owns no queue: a few frames (the
            // handshake's answer) would otherwise keep their room for the
            // connection's life. A busy queue keeps its larger room.
            self.frames = VecDeque::new();
        }
        debug_assert!(
            !self.frames.is_empty() || (self.queued_bytes == 0 && self.shared == 0),
            "outbox accounting: an empty queue still counts {} bytes, {} shared",
            self.queued_bytes,
            self.shared
        );
    }

    /// The writer sent what it took last: the bound no longer counts it.
    pub fn batch_sent(&mut self) {
        self.in_writer = 0;
    }

    /// Bytes the bound counts: queued, and taken by the writer but not yet
    /// sent.
    pub fn held_bytes(&self) -> usize {
        self.queued_bytes + self.in_writer
    }

    /// Wakes the writer for transport work that is not a frame (TLS
    /// handshake records produced by the reader's input).
    pub fn kick(&mut self) {
        self.kicked = true;
        self.wake();
    }

    /// Nothing for the writer to do: no frame, no kick, not closing.
    pub fn is_idle(&self) -> bool {
        self.is_empty() && !self.kicked && !self.is_closing()
    }

    /// Whether the writer was kicked since it last looked; clears the flag.
    pub fn take_kick(&mut self) -> bool {
        std::mem::take(&mut self.kicked)
    }

    /// Registers the writer to be woken by the next push.
    pub fn set_writer(&mut self, waker: &Waker) {
        match &self.writer {
            Some(current) if current.will_wake(waker) => {}
            _ => self.writer = Some(waker.clone()),
        }
    }

    /// Takes the writer's waker, which is not woken (the shard stops).
    pub fn take_writer(&mut self) -> Option<Waker> {
        self.writer.take()
    }

    /// The writer is running: it no longer counts as woken.
    pub fn take_woken(&mut self) {
        if std::mem::take(&mut self.woken) {
            WRITERS_WOKEN.with(|count| count.set(count.get().saturating_sub(1)));
        }
    }

    fn wake(&mut self) {
        if let Some(waker) = self.writer.take() {
            if !self.woken {
                self.woken = true;
                WRITERS_WOKEN.with(|count| count.set(count.get() + 1));
            }
            waker.wake();
        }
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        self.take_woken();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use corebus_net::PayloadFormat;

    fn message(len: usize) -> OutFrame {
        OutFrame::Message {
            sub_id: 1,
            epoch: 1,
            seq: 1,
            payload: Bytes::from(vec![0; len]),
        }
    }

    /// Behind a subscriber that does not read, the outbox holds what it
    /// counts: payloads past the first few are copies of their own size, not
    /// references that keep the publisher's whole read buffer alive.
    #[test]
    fn a_stalled_queue_holds_copies_not_the_publishers_buffers() {
        const PAYLOAD: usize = 600;
        // Bodies of sevens, each opening with its format byte.
        let mut read_buffer = vec![7u8; 64 * 1024];
        for at in (0..read_buffer.len()).step_by(PAYLOAD) {
            read_buffer[at] = PayloadFormat::Plain.byte();
        }
        let read_buffer = Bytes::from(read_buffer);
        let inside = |payload: &Bytes| {
            let start = read_buffer.as_ptr() as usize;
            let at = payload.as_ptr() as usize;
            (start..start + read_buffer.len()).contains(&at)
        };
        let mut outbox = Outbox::new(1 << 20);
        let count = 100;
        for seq in 0..count {
            let at = seq as usize * PAYLOAD;
            let payload = read_buffer.slice(at..at + PAYLOAD);
            outbox.push_message(1, 1, seq + 1, &payload).expect("room");
        }
        assert_eq!(outbox.shared_payloads(), SHARED_MAX);
        assert_eq!(
            outbox.queued_bytes(),
            count as usize * (MESSAGE_HEADER_LEN + PAYLOAD)
        );
        let mut frames = Vec::new();
        outbox.drain_into(&mut frames);
        assert_eq!(outbox.shared_payloads(), 0);
        let mut shared = 0;
        for (index, frame) in frames.iter().enumerate() {
            let OutFrame::Message { seq, payload, .. } = frame else {
                panic!("a MESSAGE, not {frame:?}");
            };
            assert_eq!(*seq, index as u64 + 1, "queue order");
            assert_eq!(payload.len(), PAYLOAD);
            assert!(
                payload[1..].iter().all(|byte| *byte == 7),
                "the payload's bytes"
            );
            if inside(payload) {
                shared += 1;
            }
        }
        assert_eq!(shared, SHARED_MAX, "only the first payloads are shared");
        // Once drained, the next payloads are shared again.
        let payload = read_buffer.slice(0..PAYLOAD);
        outbox.push_message(1, 1, 101, &payload).expect("room");
        assert_eq!(outbox.shared_payloads(), 1);
        outbox.close_with(None);
        assert_eq!(outbox.shared_payloads(), 0);
    }

    /// What a queue behind a stalled subscriber holds in memory (its runs'
    /// room, its own copies and its entries) stays within a sixteenth, plus one run, of
    /// the bytes the bound counts, for every size of payload it copies.
    #[test]
    fn copies_behind_a_stalled_subscriber_hold_what_the_bound_counts() {
        for size in [600, 1000, 4095, 4096] {
            let source = Bytes::from(vec![3u8; size]);
            let mut outbox = Outbox::new(8 << 20);
            let mut seq = 0;
            while outbox.push_message(1, 1, seq + 1, &source).is_ok() {
                seq += 1;
            }
            let held: usize = outbox
                .frames
                .iter()
                .map(|item| match item {
                    Queued::Run(run) => run.capacity(),
                    Queued::Frame(frame) => frame.wire_len(),
                    // Counted apart: the publisher's buffers.
                    Queued::Shared(_) => 0,
                })
                .sum::<usize>()
                + outbox.frames.capacity() * std::mem::size_of::<Queued>();
            let queued = outbox.queued_bytes();
            assert!(queued <= 8 << 20);
            assert!(
                held <= queued + queued / 16 + RUN_ROOM,
                "{size}-byte payloads: {held} bytes held for {queued} queued"
            );
        }
    }

    /// A payload over COPY_MAX is the owner's copy of its exact size: every
    /// queue shares it, however far behind, and a copy per queue would only
    /// multiply it.
    #[test]
    fn payloads_over_the_copy_size_are_always_shared() {
        let payload = Bytes::from(vec![5u8; COPY_MAX + 1]);
        let mut outbox = Outbox::new(1 << 20);
        for seq in 1..=3 * SHARED_MAX as u64 {
            outbox.push_message(1, 1, seq, &payload).expect("room");
        }
        assert_eq!(outbox.shared_payloads(), 0, "not counted with the slices");
        let mut frames = Vec::new();
        outbox.drain_into(&mut frames);
        assert_eq!(frames.len(), 3 * SHARED_MAX);
        for frame in &frames {
            let OutFrame::Message {
                payload: queued, ..
            } = frame
            else {
                panic!("a MESSAGE, not {frame:?}");
            };
            assert_eq!(queued.as_ptr(), payload.as_ptr(), "the same buffer");
        }
    }

    /// What the writer took and has not sent is still held: a stalled
    /// connection's writer holds a whole batch, and the bound counts it.
    #[test]
    fn the_bound_counts_the_writers_unsent_batch() {
        let mut outbox = Outbox::new(300);
        for _ in 0..2 {
            outbox.push(message(100)).expect("room");
        }
        let mut batch = Vec::new();
        outbox.drain_some(&mut batch, 1 << 20);
        assert_eq!((outbox.queued_bytes(), outbox.held_bytes()), (0, 2 * 125));
        outbox
            .push(message(10))
            .expect("an empty queue takes one frame");
        assert_eq!(
            outbox.push(message(10)),
            Err(PushError::Full),
            "250 in the writer + 35 queued + 35 more is over 300"
        );
        outbox.batch_sent();
        assert_eq!(outbox.held_bytes(), 35);
        outbox
            .push(message(10))
            .expect("room once the batch is sent");
    }

    #[test]
    fn bound_counts_wire_bytes_and_refuses_overflow() {
        let mut outbox = Outbox::new(100);
        assert_eq!(outbox.push(message(50)), Ok(()));
        assert_eq!(outbox.queued_bytes(), 50 + MESSAGE_HEADER_LEN);
        assert_eq!(outbox.push(message(50)), Err(PushError::Full));
        let mut batch = Vec::new();
        outbox.drain_into(&mut batch);
        assert_eq!(batch.len(), 1);
        assert_eq!(outbox.queued_bytes(), 0);
        // An empty queue takes one oversized frame.
        assert_eq!(outbox.push(message(500)), Ok(()));
    }

    #[test]
    fn control_frames_may_use_twice_the_bound() {
        let mut outbox = Outbox::new(100);
        outbox.push(message(70)).expect("room");
        assert_eq!(outbox.push(message(10)), Err(PushError::Full));
        // 95 bytes queued; 8 more 13-byte frames reach 199 of 200.
        for _ in 0..8 {
            outbox
                .push(OutFrame::Pong(1))
                .expect("control frames fit under 2x");
        }
        assert_eq!(outbox.push(OutFrame::Pong(1)), Err(PushError::Full));
    }

    #[test]
    fn close_with_replaces_the_queue() {
        let mut outbox = Outbox::new(1000);
        outbox.push(message(10)).expect("room");
        outbox.close_with(Some(OutFrame::Pong(1)));
        assert!(outbox.is_closing());
        assert_eq!(outbox.push(message(1)), Err(PushError::Closing));
        let mut batch = Vec::new();
        outbox.drain_into(&mut batch);
        assert_eq!(batch, vec![OutFrame::Pong(1)]);
    }

    #[test]
    fn drain_some_takes_the_oldest_frames_up_to_a_size() {
        // Payloads past ENCODE_BELOW stay frames of their own.
        let mut outbox = Outbox::new(10_000);
        for len in [600, 600, 600, 5000] {
            outbox.push(message(len)).expect("room");
        }
        let frame = 600 + MESSAGE_HEADER_LEN;
        let mut batch = Vec::new();
        outbox.drain_some(&mut batch, 2 * frame + 1);
        assert_eq!(batch, vec![message(600), message(600)]);
        assert_eq!(outbox.queued_bytes(), frame + 5000 + MESSAGE_HEADER_LEN);
        // At least one frame, however large.
        batch.clear();
        outbox.drain_some(&mut batch, 1);
        assert_eq!(batch, vec![message(600)]);
        batch.clear();
        outbox.drain_some(&mut batch, 1);
        assert_eq!(batch, vec![message(5000)]);
        assert_eq!(outbox.queued_bytes(), 0);
        assert!(outbox.is_empty());
    }

    #[test]
    fn an_emptied_small_queue_gives_its_room_back_and_a_large_one_keeps_it() {
        let mut outbox = Outbox::new(1 << 20);
        outbox.push(message(600)).expect("room");
        assert!(outbox.frames.capacity() > 0);
        let mut batch = Vec::new();
        outbox.drain_some(&mut batch, usize::MAX);
        assert_eq!(
            outbox.frames.capacity(),
            0,
            "an idle connection owns no queue"
        );
        // A queue that grew past the idle room keeps it for the next burst
        // (control frames: each is an entry of its own).
        for nonce in 0..2 * IDLE_QUEUE_KEPT as u64 {
            outbox.push(OutFrame::Pong(nonce)).expect("room");
        }
        batch.clear();
        outbox.drain_some(&mut batch, usize::MAX);
        assert_eq!(batch.len(), 2 * IDLE_QUEUE_KEPT);
        assert!(outbox.frames.capacity() > IDLE_QUEUE_KEPT);
        // And still works after giving its room back.
        let mut small = Outbox::new(1 << 20);
        small.push(message(600)).expect("room");
        small.drain_some(&mut batch, usize::MAX);
        small.push(message(700)).expect("room");
        batch.clear();
        small.drain_some(&mut batch, usize::MAX);
        assert_eq!(batch, vec![message(700)]);
    }

    /// A 100-byte plain body whose payload bytes are all `seq`.
    fn small_body(seq: Seq) -> Bytes {
        let mut body = vec![seq as u8; 100];
        body[0] = PayloadFormat::Plain.byte();
        Bytes::from(body)
    }

    fn small(seq: Seq) -> OutFrame {
        OutFrame::Message {
            sub_id: 7,
            epoch: 3,
            seq,
            payload: small_body(seq),
        }
    }

    #[test]
    fn small_messages_leave_as_runs_of_encoded_frames_in_queue_order() {
        let mut outbox = Outbox::new(100_000);
        for seq in 1..=3 {
            outbox.push(small(seq)).expect("room");
        }
        outbox.push(OutFrame::Pong(9)).expect("room");
        outbox.push(message(600)).expect("room");
        for seq in 4..=5 {
            outbox.push(small(seq)).expect("room");
        }
        // Two runs, a control frame and a large message between them.
        assert_eq!(outbox.len(), 4);
        let queued = outbox.queued_bytes();
        let mut items = Vec::new();
        outbox.drain_some(&mut items, usize::MAX);
        let encoded = |seqs: std::ops::RangeInclusive<Seq>| {
            let mut run = BytesMut::new();
            for seq in seqs {
                encode_message_header(&mut run, 7, 3, seq, 100);
                run.extend_from_slice(&small_body(seq));
            }
            OutFrame::Encoded(run.freeze())
        };
        assert_eq!(
            items,
            vec![
                encoded(1..=3),
                OutFrame::Pong(9),
                message(600),
                encoded(4..=5)
            ]
        );
        assert_eq!(items.iter().map(OutFrame::wire_len).sum::<usize>(), queued);
        assert_eq!(outbox.queued_bytes(), 0);
        // The test view decodes runs back into their messages.
        for seq in 1..=3 {
            outbox.push(small(seq)).expect("room");
        }
        let mut frames = Vec::new();
        outbox.drain_into(&mut frames);
        assert_eq!(frames, vec![small(1), small(2), small(3)]);
    }

    /// The runs of a burst after its first start with a whole run's room
    /// and are never reallocated (a reallocation would double what they
    /// hold); the last one may have just begun.
    #[test]
    fn a_burst_fills_its_runs_without_reallocating_them() {
        let mut outbox = Outbox::new(4 << 20);
        for seq in 0..10_000 {
            outbox.push(small(seq)).expect("room");
        }
        let capacities: Vec<usize> = outbox
            .frames
            .iter()
            .map(|item| match item {
                Queued::Run(run) => run.capacity(),
                other => panic!("only runs: {other:?}"),
            })
            .collect();
        assert!(capacities.len() > 3, "{capacities:?}");
        for capacity in &capacities[1..capacities.len() - 1] {
            assert_eq!(*capacity, RUN_ROOM, "{capacities:?}");
        }
    }

    /// Payloads of exactly ENCODE_BELOW and of exactly COPY_MAX bytes are
    /// shared while the queue is not behind: the thresholds are "below" and
    /// "over".
    #[test]
    fn payloads_at_the_thresholds_are_shared_not_copied_or_always_referenced() {
        for size in [ENCODE_BELOW, COPY_MAX] {
            let mut outbox = Outbox::new(1 << 20);
            let payload = Bytes::from(vec![1u8; size]);
            outbox.push_message(1, 1, 1, &payload).expect("room");
            assert_eq!(outbox.shared_payloads(), 1, "{size} bytes");
            assert!(
                matches!(outbox.frames.back(), Some(Queued::Shared(_))),
                "{size} bytes"
            );
        }
        let mut outbox = Outbox::new(1 << 20);
        outbox
            .push_message(1, 1, 1, &Bytes::from(vec![1u8; ENCODE_BELOW - 1]))
            .expect("room");
        assert_eq!(outbox.shared_payloads(), 0);
        assert!(matches!(outbox.frames.back(), Some(Queued::Run(_))));
    }

    /// Copied frames of ENCODE_BELOW bytes or more fill the room a burst run
    /// has (RUN_ROOM), not just RUN_MAX as small frames do.
    #[test]
    fn copied_frames_fill_a_burst_runs_whole_room() {
        let payload = Bytes::from(vec![2u8; ENCODE_BELOW]);
        let frame = MESSAGE_HEADER_LEN + ENCODE_BELOW;
        let mut outbox = Outbox::new(4 << 20);
        for seq in 1..=(SHARED_MAX + 3 * (RUN_ROOM / frame)) as Seq {
            outbox.push_message(1, 1, seq, &payload).expect("room");
        }
        let runs: Vec<usize> = outbox
            .frames
            .iter()
            .filter_map(|item| match item {
                Queued::Run(run) => Some(run.len()),
                _ => None,
            })
            .collect();
        // The first run grows from one frame; the next ones are burst runs.
        assert_eq!(runs[1], RUN_ROOM / frame * frame, "{runs:?}");
        assert!(runs[1] > RUN_MAX, "past RUN_MAX: {runs:?}");
    }

    /// An encoded run counts against the bound like the messages in it,
    /// not with the control frames' double allowance.
    #[test]
    fn encoded_runs_are_held_to_the_bound_not_twice_it() {
        let mut outbox = Outbox::new(1000);
        outbox
            .push(OutFrame::Encoded(Bytes::from(vec![0; 600])))
            .expect("room");
        assert_eq!(
            outbox.push(OutFrame::Encoded(Bytes::from(vec![0; 600]))),
            Err(PushError::Full)
        );
    }

    use crate::wakes::{counting_waker, Wakes};

    fn wakes(counter: &Wakes) -> usize {
        counter.count()
    }

    #[test]
    fn a_kick_wakes_the_writer_once_and_is_taken_once() {
        let mut outbox = Outbox::new(1000);
        let (counter, waker) = counting_waker();
        outbox.set_writer(&waker);
        assert!(!outbox.take_kick());
        outbox.kick();
        assert_eq!(wakes(&counter), 1);
        assert!(outbox.take_kick());
        assert!(!outbox.take_kick(), "the flag is cleared");
        outbox.take_woken();
    }

    #[test]
    fn the_latest_writer_is_the_one_woken() {
        let mut outbox = Outbox::new(1000);
        let (first, first_waker) = counting_waker();
        let (second, second_waker) = counting_waker();
        outbox.set_writer(&first_waker);
        outbox.set_writer(&second_waker);
        outbox.push(OutFrame::Ping(1)).expect("room");
        assert_eq!((wakes(&first), wakes(&second)), (0, 1));
        outbox.take_woken();
    }

    #[test]
    fn is_empty_and_the_limit_are_what_was_queued_and_given() {
        let mut outbox = Outbox::new(1234);
        assert_eq!(outbox.limit_bytes(), 1234);
        assert!(outbox.is_empty());
        outbox.push(OutFrame::Ping(1)).expect("room");
        assert!(!outbox.is_empty());
        outbox.drain_into(&mut Vec::new());
        assert!(outbox.is_empty());
    }

    #[test]
    fn a_batch_takes_frames_that_fill_it_exactly() {
        let mut outbox = Outbox::new(1000);
        outbox.push(OutFrame::Ping(1)).expect("room");
        outbox.push(OutFrame::Ping(2)).expect("room");
        outbox.push(OutFrame::Ping(3)).expect("room");
        let ping = OutFrame::Ping(0).wire_len();
        let mut taken = Vec::new();
        outbox.drain_some(&mut taken, 2 * ping);
        assert_eq!(taken, vec![OutFrame::Ping(1), OutFrame::Ping(2)]);
    }

    #[test]
    fn runs_are_bounded_and_hold_little_beyond_what_is_queued() {
        let mut outbox = Outbox::new(4 << 20);
        let frame = 100 + MESSAGE_HEADER_LEN;
        let per_run = RUN_MAX / frame;
        let count = 16 * per_run + 1;
        for seq in 0..count as Seq {
            outbox.push(small(seq)).expect("room");
        }
        // What the runs hold in memory stays within two runs' room (and a
        // frame per run) of what is queued, however much that is: the first
        // run of a burst grows by doubling, the ones after it start with a
        // whole run's room, and the last may have just begun.
        let held: usize = outbox
            .frames
            .iter()
            .map(|item| match item {
                Queued::Run(run) => run.capacity(),
                Queued::Frame(_) | Queued::Shared(_) => 0,
            })
            .sum();
        let runs = outbox.frames.len();
        assert!(
            held <= outbox.queued_bytes()
                + 2 * RUN_ROOM
                + runs * (MESSAGE_HEADER_LEN + ENCODE_BELOW),
            "{held} bytes held for {} queued in {runs} runs",
            outbox.queued_bytes()
        );
        let mut items = Vec::new();
        outbox.drain_some(&mut items, usize::MAX);
        assert_eq!(
            items.len(),
            17,
            "{count} messages of {frame} bytes in 64 KiB runs"
        );
        assert!(items.iter().all(|item| item.wire_len() <= RUN_MAX));
        assert_eq!(
            items.iter().map(OutFrame::wire_len).sum::<usize>(),
            count * frame
        );
        // Closing drops what is queued, runs included.
        outbox.push(small(1)).expect("room");
        outbox.close_with(Some(OutFrame::Pong(1)));
        items.clear();
        outbox.drain_some(&mut items, usize::MAX);
        assert_eq!(items, vec![OutFrame::Pong(1)]);
    }
}
