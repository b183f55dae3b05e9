//! A topic's replay ring: the payloads of its latest messages, oldest first.
//!
//! Small payloads are copied back to back into one circular byte buffer,
//! and each message costs the ring only its length (4 bytes). Nothing in it
//! is refcounted: keeping a message, and dropping it when it ages out, touch
//! no shared count and no per-message allocation. (The first version kept a
//! refcounted slice per message in a queue of 40-byte entries: every message
//! took two atomic operations on a chunk's count, one of them on a line
//! cold since the message was kept a thousand messages before, and read a
//! cold entry to drop it.) A replay, which is rare, copies its messages out.
//!
//! Payloads over [`COPY_MAX`] are kept as they are handed in, shared: the
//! owner copies such a payload out of the publisher's read buffer into one
//! of its exact size before anything keeps it (see the engine's
//! `handle_publish`), so the ring holds what it counts.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};

/// Payloads up to this size are copied into the ring's byte buffer; a larger
/// one is kept as handed in (a buffer of its own size).
pub const COPY_MAX: usize = 4096;

/// `lens` entry of a payload kept shared, in `large`.
const LARGE: u32 = u32::MAX;

/// Room the byte buffer starts with once it holds anything.
const MIN_CAPACITY: usize = 512;

/// The payloads of a run of consecutive messages, oldest first.
#[derive(Debug, Default)]
pub struct PayloadRing {
    /// Per message: its payload's length in `bytes`, or [`LARGE`].
    lens: VecDeque<u32>,
    /// The large payloads, oldest first.
    large: VecDeque<Bytes>,
    /// The small payloads, back to back.
    bytes: ByteRing,
    /// Payload bytes held, small and large.
    payload_bytes: usize,
}

impl PayloadRing {
    /// Messages held.
    pub fn len(&self) -> usize {
        self.lens.len()
    }

    /// Whether no message is held.
    pub fn is_empty(&self) -> bool {
        self.lens.is_empty()
    }

    /// Payload bytes held.
    pub fn payload_bytes(&self) -> usize {
        self.payload_bytes
    }

    /// Room for messages in the length queue (it grows, and never past the
    /// most messages the ring is allowed).
    pub fn entry_capacity(&self) -> usize {
        self.lens.capacity()
    }

    /// Keeps `payload` as the newest message.
    pub fn push(&mut self, payload: &Bytes) {
        if payload.len() <= COPY_MAX {
            self.bytes.push(payload);
            self.lens.push_back(payload.len() as u32);
        } else {
            self.large.push_back(payload.clone());
            self.lens.push_back(LARGE);
        }
        self.payload_bytes += payload.len();
    }

    /// Drops the oldest message; false when there is none.
    pub fn pop_oldest(&mut self) -> bool {
        let Some(len) = self.lens.pop_front() else {
            return false;
        };
        let len = if len == LARGE {
            self.large.pop_front().map_or(0, |payload| payload.len())
        } else {
            self.bytes.pop(len as usize);
            len as usize
        };
        self.payload_bytes -= len;
        if self.lens.is_empty() {
            self.let_go();
        }
        true
    }

    /// Drops every message.
    pub fn clear(&mut self) {
        self.lens.clear();
        self.let_go();
    }

    /// With no message left: nothing to keep room for, except the queue of
    /// lengths, which stays at most the ring's message bound.
    fn let_go(&mut self) {
        *self = PayloadRing {
            lens: std::mem::take(&mut self.lens),
            ..PayloadRing::default()
        };
    }

    /// The newest `count` payloads (all of them if fewer), oldest first:
    /// the small ones copied out, in one allocation.
    pub fn newest(&self, count: usize) -> Vec<Bytes> {
        let skip = self.lens.len().saturating_sub(count);
        let mut offset = 0;
        let mut large = 0;
        for &len in self.lens.iter().take(skip) {
            if len == LARGE {
                large += 1;
            } else {
                offset += len as usize;
            }
        }
        // The small payloads after the skipped ones: the rest of the bytes.
        let mut copies = BytesMut::with_capacity(self.bytes.len - offset);
        let mut out = Vec::with_capacity(self.lens.len() - skip);
        for &len in self.lens.iter().skip(skip) {
            if len == LARGE {
                out.push(self.large[large].clone());
                large += 1;
            } else {
                let (first, second) = self.bytes.range(offset, len as usize);
                copies.extend_from_slice(first);
                copies.extend_from_slice(second);
                out.push(copies.split().freeze());
                offset += len as usize;
            }
        }
        out
    }
}

/// A circular byte buffer that grows by half again when full.
#[derive(Debug, Default)]
struct ByteRing {
    buf: Vec<u8>,
    /// Where the oldest byte is.
    head: usize,
    /// Bytes held.
    len: usize,
}

impl ByteRing {
    /// Appends `data` at the end.
    fn push(&mut self, data: &[u8]) {
        if self.buf.len() - self.len < data.len() {
            self.grow(self.len + data.len());
        }
        let capacity = self.buf.len();
        let tail = (self.head + self.len) % capacity.max(1);
        let first = data.len().min(capacity - tail);
        self.buf[tail..tail + first].copy_from_slice(&data[..first]);
        self.buf[..data.len() - first].copy_from_slice(&data[first..]);
        self.len += data.len();
    }

    /// Drops `count` bytes from the front.
    fn pop(&mut self, count: usize) {
        debug_assert!(count <= self.len, "popping more than held");
        let count = count.min(self.len);
        self.len -= count;
        self.head = if self.len == 0 {
            0
        } else {
            (self.head + count) % self.buf.len()
        };
    }

    /// `len` bytes from `offset` past the oldest, in one or two slices.
    fn range(&self, offset: usize, len: usize) -> (&[u8], &[u8]) {
        debug_assert!(offset + len <= self.len, "reading past what is held");
        if len == 0 {
            return (&[], &[]);
        }
        let capacity = self.buf.len();
        let start = (self.head + offset) % capacity;
        let first = len.min(capacity - start);
        (&self.buf[start..start + first], &self.buf[..len - first])
    }

    /// Moves the contents to the front of a buffer of at least `needed`
    /// bytes, half again as large as the last (so at most a third of it is
    /// ever unused once a ring has reached its bound).
    fn grow(&mut self, needed: usize) {
        let capacity = needed
            .max(self.buf.len() + self.buf.len() / 2)
            .max(MIN_CAPACITY);
        let mut buf = vec![0u8; capacity];
        let (first, second) = self.range(0, self.len);
        buf[..first.len()].copy_from_slice(first);
        buf[first.len()..self.len].copy_from_slice(second);
        self.buf = buf;
        self.head = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(n: usize, len: usize) -> Bytes {
        Bytes::from(vec![n as u8; len])
    }

    #[test]
    fn keeps_payloads_in_order_across_wrap_arounds_and_growth() {
        let mut ring = PayloadRing::default();
        let mut kept = VecDeque::new();
        // Lengths that do not divide the buffer, so messages straddle its end;
        // now and then a large one.
        for n in 0..5000usize {
            let len = if n % 97 == 0 {
                COPY_MAX + 1
            } else {
                (n * 37) % 300
            };
            let message = payload(n, len);
            ring.push(&message);
            kept.push_back(message);
            // Hold between 1 and 40 messages.
            while kept.len() > 1 + n % 40 {
                assert!(ring.pop_oldest());
                kept.pop_front();
            }
            assert_eq!(ring.len(), kept.len());
            assert_eq!(
                ring.payload_bytes(),
                kept.iter().map(Bytes::len).sum::<usize>()
            );
            if n % 13 == 0 {
                let newest = ring.newest(7);
                let want: Vec<Bytes> = kept
                    .iter()
                    .skip(kept.len().saturating_sub(7))
                    .cloned()
                    .collect();
                assert_eq!(newest, want, "after message {n}");
            }
        }
        assert_eq!(ring.newest(usize::MAX), Vec::from(kept));
    }

    #[test]
    fn small_payloads_are_copies_and_large_ones_shared() {
        let frame = Bytes::from(vec![7u8; 3 * COPY_MAX]);
        let inside = |bytes: &Bytes| frame.as_ptr_range().contains(&bytes.as_ptr());
        let mut ring = PayloadRing::default();
        ring.push(&frame.slice(10..138));
        ring.push(&frame.slice(..COPY_MAX + 1));
        let out = ring.newest(2);
        assert!(!inside(&out[0]), "a copy, not a slice of the frame");
        assert!(inside(&out[1]), "large payloads are shared, not copied");
        assert_eq!((out[0].len(), out[1].len()), (128, COPY_MAX + 1));
    }

    #[test]
    fn the_newest_are_counted_from_the_end_past_small_and_large_payloads() {
        let large = |n: usize| payload(n, COPY_MAX + n);
        let mut ring = PayloadRing::default();
        assert!(ring.is_empty());
        for item in [
            payload(1, 1),
            large(1),
            payload(2, 2),
            payload(3, 3),
            large(2),
            payload(4, 4),
        ] {
            ring.push(&item);
        }
        assert!(!ring.is_empty());
        assert_eq!(ring.newest(3), vec![payload(3, 3), large(2), payload(4, 4)]);
        assert_eq!(
            ring.newest(4),
            vec![payload(2, 2), payload(3, 3), large(2), payload(4, 4)]
        );
        assert_eq!(
            ring.newest(5),
            vec![
                large(1),
                payload(2, 2),
                payload(3, 3),
                large(2),
                payload(4, 4)
            ]
        );
    }

    /// The byte buffer grows only when a payload does not fit, and then to
    /// what is needed or half again its size, whichever is more.
    #[test]
    fn the_byte_buffer_grows_only_when_needed_and_by_half_again() {
        let mut bytes = ByteRing::default();
        bytes.push(&[1; 300]);
        assert_eq!(bytes.buf.len(), MIN_CAPACITY);
        bytes.push(&[2; MIN_CAPACITY - 300]);
        assert_eq!(bytes.buf.len(), MIN_CAPACITY, "an exact fit does not grow");
        bytes.push(&[3; 1]);
        assert_eq!(bytes.buf.len(), MIN_CAPACITY + MIN_CAPACITY / 2);
        let held = bytes.len;
        bytes.push(&[4; 4000]);
        assert_eq!(bytes.buf.len(), held + 4000, "what is needed, when more");
    }

    #[test]
    fn emptied_ring_lets_go_of_its_bytes() {
        let mut ring = PayloadRing::default();
        for n in 0..100 {
            ring.push(&payload(n, 200));
        }
        assert!(ring.bytes.buf.len() >= 100 * 200);
        let entries = ring.entry_capacity();
        ring.clear();
        assert!(ring.is_empty());
        assert_eq!(
            ring.entry_capacity(),
            entries,
            "the length queue keeps its room"
        );
        assert_eq!((ring.payload_bytes(), ring.bytes.buf.len()), (0, 0));
        assert!(!ring.pop_oldest());
        ring.push(&payload(1, 3));
        assert_eq!(ring.newest(1), vec![payload(1, 3)]);
    }
}
