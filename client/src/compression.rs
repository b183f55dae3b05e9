//! Payload compression: zstd, chosen by the publisher, undone by each
//! subscriber.
//!
//! The broker forwards a compressed payload untouched (its format byte says
//! what it is, `docs/protocol.md` section 6.3), so the cost of compressing
//! is paid once, by the publisher, and every subscriber, native or browser,
//! reads the same topic. A subscriber decompresses into at most
//! [`ClientConfig::max_decompressed`](crate::ClientConfig::max_decompressed)
//! bytes: a payload that claims or yields more is a typed error, never an
//! allocation the publisher chose.

use std::io::Read;

/// Whether, and how, a client compresses the payloads it publishes.
///
/// Set for a whole client with
/// [`ClientConfig::compression`](crate::ClientConfig::compression), or for
/// some publishes with [`Client::compressing`](crate::Client::compressing).
/// Payloads shorter than the threshold go as they are (small payloads
/// compress badly and cost more time than they save), and so does any
/// payload that zstd does not make smaller.
///
/// ```
/// use corebus_client::Compression;
/// let compression = Compression::zstd().level(6).min_size(4096);
/// assert_eq!(compression, Compression::Zstd { level: 6, min_size: 4096 });
/// assert_eq!(Compression::default(), Compression::Off);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Compression {
    /// Publish payloads as they are (the default).
    #[default]
    Off,
    /// Compress each payload of at least `min_size` bytes with zstd at
    /// `level` (1 to 22; 3 is zstd's default and a good trade for JSON).
    Zstd {
        /// zstd's compression level.
        level: i32,
        /// Payloads shorter than this go uncompressed.
        min_size: usize,
    },
}

/// The level [`Compression::zstd`] uses: zstd's own default.
pub const DEFAULT_ZSTD_LEVEL: i32 = 3;

/// The threshold [`Compression::zstd`] uses: 1 KiB.
pub const DEFAULT_MIN_SIZE: usize = 1024;

impl Compression {
    /// zstd at level 3 for payloads of 1 KiB and more.
    ///
    /// ```
    /// use corebus_client::Compression;
    /// assert_eq!(
    ///     Compression::zstd(),
    ///     Compression::Zstd { level: 3, min_size: 1024 }
    /// );
    /// ```
    pub fn zstd() -> Compression {
        Compression::Zstd {
            level: DEFAULT_ZSTD_LEVEL,
            min_size: DEFAULT_MIN_SIZE,
        }
    }

    /// The same with another zstd level (no change to [`Compression::Off`]).
    ///
    /// ```
    /// use corebus_client::Compression;
    /// assert_eq!(Compression::zstd().level(19), Compression::Zstd { level: 19, min_size: 1024 });
    /// assert_eq!(Compression::Off.level(19), Compression::Off);
    /// ```
    pub fn level(self, level: i32) -> Compression {
        match self {
            Compression::Off => Compression::Off,
            Compression::Zstd { min_size, .. } => Compression::Zstd { level, min_size },
        }
    }

    /// The same with another threshold: 0 compresses every payload (no
    /// change to [`Compression::Off`]).
    ///
    /// ```
    /// use corebus_client::Compression;
    /// assert_eq!(Compression::zstd().min_size(0), Compression::Zstd { level: 3, min_size: 0 });
    /// ```
    pub fn min_size(self, min_size: usize) -> Compression {
        match self {
            Compression::Off => Compression::Off,
            Compression::Zstd { level, .. } => Compression::Zstd { level, min_size },
        }
    }

    /// The payload compressed as this setting says, or `None` when it goes
    /// as it is (off, under the threshold, or not made smaller).
    pub(crate) fn apply(self, payload: &[u8]) -> Option<Vec<u8>> {
        let Compression::Zstd { level, min_size } = self else {
            return None;
        };
        if payload.len() < min_size {
            return None;
        }
        // One frame with its content size in the header: what a subscriber
        // sizes its buffer by (`decompress`).
        let compressed = zstd::bulk::compress(payload, level).ok()?;
        (compressed.len() < payload.len()).then_some(compressed)
    }
}

/// Why a compressed payload could not be read.
///
/// ```
/// use corebus_client::{decompress, DecompressError};
/// // Not zstd at all.
/// assert!(matches!(decompress(b"plain text", 1024), Err(DecompressError::Corrupt(_))));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecompressError {
    /// The payload would decompress to more than the limit allows. `claimed`
    /// is the size its frame header announced, when it announced one.
    #[error("the payload decompresses to more than the limit of {limit} bytes{}", claimed.map(|c| format!(" (its header says {c})")).unwrap_or_default())]
    TooLarge {
        /// The limit in force.
        limit: usize,
        /// The size the frame header announced, if any.
        claimed: Option<u64>,
    },
    /// The payload is not a valid zstd frame.
    #[error("the payload is not valid zstd: {0}")]
    Corrupt(String),
}

/// Decompresses one zstd frame into at most `limit` bytes.
///
/// A frame that announces its size (as every frame this client writes
/// does) is refused before anything is allocated when that size is over
/// the limit, and decompressed into a buffer of exactly that size
/// otherwise; a frame that does not announce it is read in a stream and
/// stopped at the limit. Either way a hostile payload costs at most `limit`
/// bytes.
///
/// ```
/// use corebus_client::{decompress, DecompressError};
/// let json = br#"{"bids":[[100.5,2],[100.4,7]],"asks":[[100.6,1]]}"#.repeat(40);
/// let compressed = zstd::bulk::compress(&json, 3).expect("compresses");
/// assert_eq!(decompress(&compressed, 1 << 20)?, json);
/// assert!(matches!(
///     decompress(&compressed, 100),
///     Err(DecompressError::TooLarge { limit: 100, claimed: Some(_) })
/// ));
/// # Ok::<(), DecompressError>(())
/// ```
pub fn decompress(payload: &[u8], limit: usize) -> Result<Vec<u8>, DecompressError> {
    let corrupt = |err: &dyn std::fmt::Display| DecompressError::Corrupt(err.to_string());
    match zstd::zstd_safe::get_frame_content_size(payload) {
        Ok(Some(claimed)) => {
            if claimed > limit as u64 {
                return Err(DecompressError::TooLarge {
                    limit,
                    claimed: Some(claimed),
                });
            }
            let mut out = Vec::with_capacity(claimed as usize);
            let mut decompressor = zstd::bulk::Decompressor::new().map_err(|e| corrupt(&e))?;
            // Fails, rather than grows, when the frame holds more than it
            // announced.
            decompressor
                .decompress_to_buffer(payload, &mut out)
                .map_err(|e| corrupt(&e))?;
            if out.len() as u64 != claimed {
                return Err(DecompressError::Corrupt(format!(
                    "the frame announced {claimed} bytes and held {}",
                    out.len()
                )));
            }
            Ok(out)
        }
        Ok(None) => {
            let decoder = zstd::stream::read::Decoder::new(payload).map_err(|e| corrupt(&e))?;
            let mut out = Vec::new();
            decoder
                .take(limit as u64 + 1)
                .read_to_end(&mut out)
                .map_err(|e| corrupt(&e))?;
            if out.len() > limit {
                return Err(DecompressError::TooLarge {
                    limit,
                    claimed: None,
                });
            }
            Ok(out)
        }
        Err(_) => Err(DecompressError::Corrupt(
            "no zstd frame header (bad magic number or a truncated header)".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(len: usize) -> Vec<u8> {
        let row = br#"{"id":12345,"price":100.25,"side":"buy","venue":"XPAR"},"#;
        row.iter().copied().cycle().take(len).collect()
    }

    #[test]
    fn a_payload_under_the_threshold_or_not_made_smaller_goes_as_it_is() {
        let zstd = Compression::zstd();
        assert_eq!(zstd.apply(&json(1023)), None);
        let compressed = zstd
            .apply(&json(1024))
            .expect("compressed at the threshold");
        assert!(compressed.len() < 1024);
        assert_eq!(
            decompress(&compressed, 1024).expect("reads back"),
            json(1024)
        );
        // Random bytes do not compress: sent plain, not larger.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let noise: Vec<u8> = (0..4096)
            .map(|_| {
                // xorshift64: bytes zstd finds no pattern in.
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 56) as u8
            })
            .collect();
        assert_eq!(zstd.min_size(0).apply(&noise), None);
        assert_eq!(Compression::Off.apply(&json(1 << 20)), None);
    }

    #[test]
    fn a_claimed_size_over_the_limit_is_refused_before_allocating() {
        let big = json(1 << 20);
        let compressed = zstd::bulk::compress(&big, 3).expect("compresses");
        assert_eq!(
            decompress(&compressed, (1 << 20) - 1),
            Err(DecompressError::TooLarge {
                limit: (1 << 20) - 1,
                claimed: Some(1 << 20)
            })
        );
        assert_eq!(decompress(&compressed, 1 << 20).expect("at the limit"), big);
    }

    /// A frame without its size (a streaming encoder's) is stopped at the
    /// limit, not read to its end.
    #[test]
    fn a_frame_without_its_size_is_stopped_at_the_limit() {
        let big = json(256 << 10);
        let mut encoder = zstd::stream::write::Encoder::new(Vec::new(), 3).expect("encoder");
        std::io::Write::write_all(&mut encoder, &big).expect("written");
        let unsized_frame = encoder.finish().expect("finished");
        assert!(matches!(
            zstd::zstd_safe::get_frame_content_size(&unsized_frame),
            Ok(None)
        ));
        assert_eq!(
            decompress(&unsized_frame, 100 << 10),
            Err(DecompressError::TooLarge {
                limit: 100 << 10,
                claimed: None
            })
        );
        assert_eq!(decompress(&unsized_frame, 256 << 10).expect("fits"), big);
    }

    /// A header that understates its content fails instead of growing the
    /// buffer; garbage and truncation are `Corrupt`.
    #[test]
    fn lies_and_garbage_are_corrupt() {
        let small = json(2000);
        let honest = zstd::bulk::compress(&small, 3).expect("compresses");
        let mut liar = honest.clone();
        // The header's size field follows the magic number and the frame
        // header descriptor (and no window byte, for a single-segment
        // frame); for 256 to 65791 bytes it holds 2 bytes: size - 256.
        let at = 4 + 1;
        assert_eq!(
            u16::from_le_bytes([liar[at], liar[at + 1]]),
            2000 - 256,
            "the size field"
        );
        liar[at..at + 2].copy_from_slice(&(1000u16 - 256).to_le_bytes());
        assert!(matches!(
            zstd::zstd_safe::get_frame_content_size(&liar),
            Ok(Some(1000))
        ));
        assert!(matches!(
            decompress(&liar, 1 << 20),
            Err(DecompressError::Corrupt(_))
        ));
        assert!(matches!(
            decompress(&honest[..honest.len() - 3], 1 << 20),
            Err(DecompressError::Corrupt(_))
        ));
        assert!(matches!(
            decompress(b"", 10),
            Err(DecompressError::Corrupt(_))
        ));
    }
}
