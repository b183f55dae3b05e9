//! The bytes every benchmark message carries, the same for every broker.
//!
//! Each payload starts with a fixed header that lets a subscriber check
//! delivery and measure latency without asking the broker anything: who sent
//! the message, to which topic, that sender's running count of messages to
//! that topic, and when the message was meant to leave. The rest of the
//! payload is filler up to `--size`: one repeated byte, or (`--payload
//! json`) rows of JSON with varying numbers, which compress about as real
//! order books and dashboards do.

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

/// What follows the header (`--payload`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum PayloadKind {
    /// One repeated byte: what the broker's costs are measured with.
    #[default]
    Filler,
    /// JSON rows (`{"id":…,"px":…,"qty":…,"side":…}`) with numbers that vary
    /// from row to row and message to message: zstd shrinks them about 4 to
    /// 6 times, as it does real market data or dashboard state.
    Json,
}

/// Distinct JSON fillers a writer cycles through, so that consecutive
/// messages differ (each is compressed on its own, as real ones are).
const JSON_FILLERS: usize = 16;

/// Builds payloads of one size out of a reused buffer, so the hot loop does
/// not allocate once the buffer's earlier payloads have been sent and freed.
#[derive(Debug)]
pub struct PayloadWriter {
    size: usize,
    buffer: BytesMut,
    /// The JSON fillers (`--payload json`), made once; empty for filler.
    json: Vec<Vec<u8>>,
    written: usize,
}

/// Payloads built per buffer allocation.
const PAYLOADS_PER_CHUNK: usize = 64;

impl PayloadWriter {
    /// A writer of `size`-byte payloads; `size` must be at least
    /// [`HEADER_LEN`] (checked when options are resolved).
    pub fn new(size: usize) -> PayloadWriter {
        PayloadWriter::of(size, PayloadKind::Filler)
    }

    /// A writer of `size`-byte payloads of `kind`.
    pub fn of(size: usize, kind: PayloadKind) -> PayloadWriter {
        let size = size.max(HEADER_LEN);
        let json = match kind {
            PayloadKind::Filler => Vec::new(),
            PayloadKind::Json => (0..JSON_FILLERS as u64)
                .map(|seed| json_rows(size - HEADER_LEN, seed))
                .collect(),
        };
        PayloadWriter {
            size,
            buffer: BytesMut::with_capacity(size * PAYLOADS_PER_CHUNK),
            json,
            written: 0,
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
        if self.json.is_empty() {
            self.buffer.put_bytes(b'x', self.size - HEADER_LEN);
        } else {
            self.buffer
                .put_slice(&self.json[self.written % self.json.len()]);
        }
        self.written += 1;
        self.buffer.split().freeze()
    }
}

/// `len` bytes of JSON rows whose numbers follow a generator seeded with
/// `seed`.
fn json_rows(len: usize, seed: u64) -> Vec<u8> {
    use std::io::Write;
    let mut out = Vec::with_capacity(len + 96);
    let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    while out.len() < len {
        let (a, b, c) = (next(), next(), next());
        let side = if a & 1 == 0 { "buy" } else { "sell" };
        let _ = write!(
            out,
            r#"{{"id":{},"px":{}.{:02},"qty":{},"side":"{side}"}},"#,
            100_000 + a % 900_000,
            100 + b % 20,
            b % 100,
            1 + c % 500
        );
    }
    out.truncate(len);
    out
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

    /// JSON payloads carry the header too, vary from one message to the
    /// next, and compress the way real JSON does (neither like filler nor
    /// like noise).
    #[test]
    fn json_payloads_vary_and_compress_like_json() {
        let header = Header {
            publisher: 1,
            topic: 2,
            counter: 3,
            sent_ns: 4,
        };
        let mut writer = PayloadWriter::of(16 * 1024, PayloadKind::Json);
        let first = writer.write(&header);
        let second = writer.write(&header);
        assert_eq!(
            (first.len(), Header::parse(&first)),
            (16 * 1024, Some(header))
        );
        assert_ne!(first, second);
        assert!(std::str::from_utf8(&first[HEADER_LEN..]).is_ok());
        let compressed = zstd::bulk::compress(&first, 3).expect("compresses").len();
        let ratio = first.len() as f64 / compressed as f64;
        assert!((2.5..10.0).contains(&ratio), "compression ratio {ratio:.1}");
    }

    #[test]
    fn short_payload_has_no_header() {
        assert_eq!(Header::parse(&[0; HEADER_LEN - 1]), None);
    }
}
