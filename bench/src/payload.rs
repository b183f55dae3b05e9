//! The bytes every benchmark message carries, the same for every broker.
//!
//! Each payload starts with a fixed header that lets a subscriber check
//! delivery and measure latency without asking the broker anything: who sent
//! the message, to which topic, that sender's running count of messages to
//! that topic, and when the message was meant to leave. The rest of the
//! payload is filler up to `--size`.

use bytes::{BufMut, Bytes, BytesMut};

/// Bytes taken by [`Header`] at the start of every payload; the smallest
/// `--size` the harness accepts.
pub const HEADER_LEN: usize = 24;

/// What a benchmark payload says about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Index of the publisher that sent it.
    pub publisher: u32,
    /// Index of the topic it was sent to.
    pub topic: u32,
    /// The publisher's count of earlier messages to this topic (from 0).
    pub counter: u64,
    /// Intended send time, in nanoseconds since the run's clock base. In the
    /// open-loop latency scenario this is the scheduled time, not the time the
    /// send happened, so a stalled sender cannot hide its own delay.
    pub sent_ns: u64,
}

impl Header {
    /// Reads the header from the start of `payload`; `None` when the payload
    /// is too short to be a benchmark message.
    pub fn parse(payload: &[u8]) -> Option<Header> {
        let bytes: &[u8; HEADER_LEN] = payload.first_chunk()?;
        let word = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap_or([0; 8]));
        Some(Header {
            publisher: u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]),
            topic: u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]),
            counter: word(8),
            sent_ns: word(16),
        })
    }
}

/// Builds payloads of one size out of a reused buffer, so the hot loop does
/// not allocate once the buffer's earlier payloads have been sent and freed.
#[derive(Debug)]
pub struct PayloadWriter {
    size: usize,
    buffer: BytesMut,
}

/// Payloads built per buffer allocation.
const PAYLOADS_PER_CHUNK: usize = 64;

impl PayloadWriter {
    /// A writer of `size`-byte payloads; `size` must be at least
    /// [`HEADER_LEN`] (checked when options are resolved).
    pub fn new(size: usize) -> PayloadWriter {
        let size = size.max(HEADER_LEN);
        PayloadWriter {
            size,
            buffer: BytesMut::with_capacity(size * PAYLOADS_PER_CHUNK),
        }
    }

    /// One payload with `header` followed by filler.
    pub fn write(&mut self, header: &Header) -> Bytes {
        if self.buffer.capacity() < self.size {
            self.buffer.reserve(self.size * PAYLOADS_PER_CHUNK);
        }
        self.buffer.put_u32_le(header.publisher);
        self.buffer.put_u32_le(header.topic);
        self.buffer.put_u64_le(header.counter);
        self.buffer.put_u64_le(header.sent_ns);
        self.buffer.put_bytes(b'x', self.size - HEADER_LEN);
        self.buffer.split().freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_at_every_size() {
        let header = Header {
            publisher: 7,
            topic: 3,
            counter: u64::MAX - 1,
            sent_ns: 123_456_789,
        };
        for size in [HEADER_LEN, HEADER_LEN + 1, 128, 16 * 1024] {
            let mut writer = PayloadWriter::new(size);
            for _ in 0..200 {
                let payload = writer.write(&header);
                assert_eq!(payload.len(), size);
                assert_eq!(Header::parse(&payload), Some(header));
            }
        }
    }

    #[test]
    fn short_payload_has_no_header() {
        assert_eq!(Header::parse(&[0; HEADER_LEN - 1]), None);
    }
}
