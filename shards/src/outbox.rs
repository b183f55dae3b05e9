//! A connection's outbound queue.
//!
//! The engine pushes typed items; the connection's writer task drains them in
//! batches and encodes them into one vectored write. The queue is bounded in
//! bytes: a `MESSAGE` that would pass the bound is refused (the engine then
//! drops it and reports a discontinuity, or closes the connection, by
//! policy). Control frames (acks, errors, discontinuities) are small and must
//! not be lost, so they may use up to twice the bound; past that the
//! connection is closed. Either way one connection that does not read can
//! never make the broker's memory grow without limit.

use std::cell::Cell;
use std::collections::VecDeque;
use std::task::Waker;

use bytes::Bytes;
use corebus_net::{Epoch, ErrorFrame, Seq, MESSAGE_HEADER_LEN};

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
    /// `UNSUB_OK`.
    UnsubOk {
        /// The unsubscribe's request id.
        request_id: u32,
        /// Subscription id.
        sub_id: u32,
    },
    /// `WELCOME`.
    Welcome {
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
}

impl OutFrame {
    /// Bytes this frame occupies on the wire (what the queue bound counts).
    pub fn wire_len(&self) -> usize {
        match self {
            OutFrame::Message { payload, .. } => MESSAGE_HEADER_LEN + payload.len(),
            OutFrame::PubAck { .. } => 17,
            OutFrame::SubOk { .. } => 29,
            OutFrame::Discontinuity { .. } => 33,
            OutFrame::UnsubOk { .. } => 13,
            OutFrame::Welcome { .. } => 15,
            OutFrame::Ping(_) | OutFrame::Pong(_) => 13,
            OutFrame::Error(error) => 14 + error.message.len(),
            OutFrame::GoAway { message, .. } => 11 + message.len(),
            OutFrame::Token { token, .. } => 11 + token.len(),
            OutFrame::WebhookReply { result, .. } => 9 + result.len(),
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

/// The outbound queue of one connection. Owned by the shard's engine; only the
/// shard's own tasks touch it.
#[derive(Debug)]
pub struct Outbox {
    frames: VecDeque<OutFrame>,
    queued_bytes: usize,
    limit_bytes: usize,
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
            limit_bytes,
            closing: false,
            kicked: false,
            writer: None,
            woken: false,
        }
    }

    /// Queues a frame and wakes the writer. `MESSAGE`s must fit the bound;
    /// control frames may use up to twice the bound.
    pub fn push(&mut self, frame: OutFrame) -> Result<(), PushError> {
        if self.closing {
            return Err(PushError::Closing);
        }
        let len = frame.wire_len();
        let limit = match frame {
            OutFrame::Message { .. } => self.limit_bytes,
            _ => self.limit_bytes.saturating_mul(2),
        };
        // An empty queue takes any one frame, so a single frame larger than the
        // bound (at most one maximum-size message) can still be delivered.
        if !self.frames.is_empty() && self.queued_bytes + len > limit {
            return Err(PushError::Full);
        }
        self.queued_bytes += len;
        self.frames.push_back(frame);
        self.wake();
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
        if let Some(frame) = last {
            self.queued_bytes = frame.wire_len();
            self.frames.push_back(frame);
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

    /// The bound on queued `MESSAGE` bytes.
    pub fn limit_bytes(&self) -> usize {
        self.limit_bytes
    }

    /// Number of frames queued.
    pub fn len(&self) -> usize {
        self.frames.len()
    }

    /// True when nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    /// Moves every queued frame into `into`: [`Outbox::drain_some`] without
    /// a size limit.
    pub fn drain_into(&mut self, into: &mut Vec<OutFrame>) {
        self.drain_some(into, usize::MAX);
    }

    /// Moves the oldest queued frames into `into`, up to `max_bytes` of wire
    /// bytes (at least one frame, however large); the rest stay queued and
    /// count against the bound.
    pub fn drain_some(&mut self, into: &mut Vec<OutFrame>, max_bytes: usize) {
        let mut taken = 0;
        while let Some(frame) = self.frames.front() {
            let len = frame.wire_len();
            if taken > 0 && taken + len > max_bytes {
                break;
            }
            taken += len;
            if let Some(frame) = self.frames.pop_front() {
                into.push(frame);
            }
        }
        self.queued_bytes = self.queued_bytes.saturating_sub(taken);
    }

    /// Wakes the writer for transport work that is not a frame (TLS
    /// handshake records produced by the reader's input).
    pub fn kick(&mut self) {
        self.kicked = true;
        self.wake();
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

    fn message(len: usize) -> OutFrame {
        OutFrame::Message {
            sub_id: 1,
            epoch: 1,
            seq: 1,
            payload: Bytes::from(vec![0; len]),
        }
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
        let mut outbox = Outbox::new(10_000);
        for len in [100, 100, 100, 5000] {
            outbox.push(message(len)).expect("room");
        }
        let frame = 100 + MESSAGE_HEADER_LEN;
        let mut batch = Vec::new();
        outbox.drain_some(&mut batch, 2 * frame + 1);
        assert_eq!(batch, vec![message(100), message(100)]);
        assert_eq!(outbox.queued_bytes(), frame + 5000 + MESSAGE_HEADER_LEN);
        // At least one frame, however large.
        batch.clear();
        outbox.drain_some(&mut batch, 1);
        assert_eq!(batch, vec![message(100)]);
        batch.clear();
        outbox.drain_some(&mut batch, 1);
        assert_eq!(batch, vec![message(5000)]);
        assert_eq!(outbox.queued_bytes(), 0);
        assert!(outbox.is_empty());
    }
}
