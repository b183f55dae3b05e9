//! Every gossip datagram, sealed with the cluster secret.
//!
//! ```text
//! version:u8 (1) key_id:u8 sent_ms:u64 | foca bytes | tag: 16 bytes
//! tag = the first 16 bytes of HMAC-SHA256(key, everything before it)
//! key = HMAC-SHA256(cluster secret, "corebus/gossip/v1")
//! ```
//! A datagram whose tag does not verify (checked in constant time), whose
//! key is unknown, or that was sent more than [`REPLAY_WINDOW_MS`] from now
//! is dropped before foca sees it: a peer without the secret can neither
//! join nor report anyone down, and a recorded datagram replays for 30 s at
//! most (and within them foca's incarnations order it away). The contents
//! are authenticated, not hidden: addresses and liveness only.
//!
//! Two keys may be live, so the secret can be rotated one node at a time:
//! a node seals with its current key and opens with either.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Envelope version.
const VERSION: u8 = 1;
/// Bytes before the payload.
pub const HEADER_LEN: usize = 1 + 1 + 8;
/// Bytes of the tag after it.
pub const TAG_LEN: usize = 16;
/// Everything the envelope adds to a payload.
pub const OVERHEAD: usize = HEADER_LEN + TAG_LEN;
/// How far a datagram's send time may be from the receiver's clock.
pub const REPLAY_WINDOW_MS: u64 = 30_000;
/// The shortest cluster secret accepted.
pub const MIN_SECRET_LEN: usize = 32;

type HmacSha256 = Hmac<Sha256>;

/// Why a datagram was dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// Shorter than an empty envelope.
    #[error("a datagram of {len} bytes is too short to be sealed")]
    Short {
        /// Its length.
        len: usize,
    },
    /// Another envelope version.
    #[error("envelope version {0} is not known")]
    Version(u8),
    /// Sealed with a key this node does not have (another cluster, or a
    /// secret rotated away).
    #[error("sealed with an unknown key (id {0}): another cluster secret")]
    UnknownKey(u8),
    /// The tag does not verify: forged, corrupted, or another secret.
    #[error("the tag does not verify: another cluster secret or a forged datagram")]
    BadTag,
    /// Sent too long ago (or too far ahead): a replay, or a clock off by more
    /// than the window.
    #[error("sent {skew_ms} ms from now, beyond the {REPLAY_WINDOW_MS} ms window")]
    Stale {
        /// How far from now it claims to have been sent.
        skew_ms: u64,
    },
}

/// A cluster secret that is too short.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the cluster secret has {len} bytes; at least {MIN_SECRET_LEN} are needed (`corebus key generate` prints one)")]
pub struct WeakSecret {
    /// Its length.
    pub len: usize,
}

#[derive(Clone)]
struct Key {
    id: u8,
    mac: HmacSha256,
}

impl Key {
    fn derive(secret: &[u8]) -> Result<Key, WeakSecret> {
        if secret.len() < MIN_SECRET_LEN {
            return Err(WeakSecret { len: secret.len() });
        }
        let mut kdf = HmacSha256::new_from_slice(secret).expect("HMAC takes any key length");
        kdf.update(b"corebus/gossip/v1");
        let key = kdf.finalize().into_bytes();
        let mut id = HmacSha256::new_from_slice(&key).expect("HMAC takes any key length");
        id.update(b"key id");
        Ok(Key {
            id: id.finalize().into_bytes()[0],
            mac: HmacSha256::new_from_slice(&key).expect("HMAC takes any key length"),
        })
    }
}

/// The keys of this node: the one it seals with, and a previous one it still
/// opens with during a rotation.
#[derive(Clone)]
pub struct GossipKeys {
    current: Key,
    previous: Option<Key>,
}

impl std::fmt::Debug for GossipKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GossipKeys")
            .field("current_id", &self.current.id)
            .field("previous_id", &self.previous.as_ref().map(|key| key.id))
            .finish()
    }
}

impl GossipKeys {
    /// Keys from the cluster secret and, during a rotation, the previous one.
    pub fn new(secret: &[u8], previous: Option<&[u8]>) -> Result<GossipKeys, WeakSecret> {
        Ok(GossipKeys {
            current: Key::derive(secret)?,
            previous: previous.map(Key::derive).transpose()?,
        })
    }

    /// Appends `payload` sealed, as sent at `now_ms` (Unix ms), to `out`.
    pub fn seal(&self, payload: &[u8], now_ms: u64, out: &mut Vec<u8>) {
        let start = out.len();
        out.push(VERSION);
        out.push(self.current.id);
        out.extend_from_slice(&now_ms.to_be_bytes());
        out.extend_from_slice(payload);
        let mut mac = self.current.mac.clone();
        mac.update(&out[start..]);
        out.extend_from_slice(&mac.finalize().into_bytes()[..TAG_LEN]);
    }

    /// The payload of a sealed datagram received at `now_ms`.
    pub fn open<'d>(&self, datagram: &'d [u8], now_ms: u64) -> Result<&'d [u8], EnvelopeError> {
        if datagram.len() < OVERHEAD {
            return Err(EnvelopeError::Short {
                len: datagram.len(),
            });
        }
        if datagram[0] != VERSION {
            return Err(EnvelopeError::Version(datagram[0]));
        }
        let key_id = datagram[1];
        let key = [Some(&self.current), self.previous.as_ref()]
            .into_iter()
            .flatten()
            .find(|key| key.id == key_id)
            .ok_or(EnvelopeError::UnknownKey(key_id))?;
        let (sealed, tag) = datagram.split_at(datagram.len() - TAG_LEN);
        let mut mac = key.mac.clone();
        mac.update(sealed);
        mac.verify_truncated_left(tag)
            .map_err(|_| EnvelopeError::BadTag)?;
        let sent_ms = u64::from_be_bytes(sealed[2..HEADER_LEN].try_into().expect("8 bytes"));
        let skew_ms = now_ms.abs_diff(sent_ms);
        if skew_ms > REPLAY_WINDOW_MS {
            return Err(EnvelopeError::Stale { skew_ms });
        }
        Ok(&sealed[HEADER_LEN..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"cluster-secret-0123456789abcdef-0123";
    const OTHER: &[u8] = b"another-cluster-0123456789abcdef-012";
    const NOW: u64 = 1_765_000_000_000;

    fn sealed(keys: &GossipKeys, payload: &[u8], at: u64) -> Vec<u8> {
        let mut out = Vec::new();
        keys.seal(payload, at, &mut out);
        out
    }

    #[test]
    fn a_sealed_datagram_opens_to_its_payload_within_the_window() {
        let keys = GossipKeys::new(SECRET, None).unwrap();
        let datagram = sealed(&keys, b"gossip", NOW);
        assert_eq!(datagram.len(), 6 + OVERHEAD);
        assert_eq!(keys.open(&datagram, NOW + 29_000), Ok(&b"gossip"[..]));
        assert_eq!(keys.open(&datagram, NOW - 29_000), Ok(&b"gossip"[..]));
        assert_eq!(
            keys.open(&datagram, NOW + 31_000),
            Err(EnvelopeError::Stale { skew_ms: 31_000 })
        );
    }

    #[test]
    fn another_secret_or_any_changed_byte_is_refused() {
        let keys = GossipKeys::new(SECRET, None).unwrap();
        let theirs = GossipKeys::new(OTHER, None).unwrap();
        let datagram = sealed(&theirs, b"let me in", NOW);
        assert!(matches!(
            keys.open(&datagram, NOW),
            Err(EnvelopeError::UnknownKey(_) | EnvelopeError::BadTag)
        ));
        let mine = sealed(&keys, b"gossip", NOW);
        for at in 0..mine.len() {
            let mut flipped = mine.clone();
            flipped[at] ^= 0x01;
            assert!(keys.open(&flipped, NOW).is_err(), "byte {at} flipped");
        }
        assert_eq!(
            keys.open(&mine[..OVERHEAD - 1], NOW),
            Err(EnvelopeError::Short { len: OVERHEAD - 1 })
        );
    }

    #[test]
    fn during_a_rotation_both_secrets_open_and_the_new_one_seals() {
        let old = GossipKeys::new(OTHER, None).unwrap();
        let rotating = GossipKeys::new(SECRET, Some(OTHER)).unwrap();
        let new = GossipKeys::new(SECRET, None).unwrap();
        assert!(rotating.open(&sealed(&old, b"a", NOW), NOW).is_ok());
        assert!(rotating.open(&sealed(&new, b"b", NOW), NOW).is_ok());
        assert!(new.open(&sealed(&rotating, b"c", NOW), NOW).is_ok());
        assert!(old.open(&sealed(&rotating, b"d", NOW), NOW).is_err());
    }

    #[test]
    fn a_short_secret_is_refused() {
        assert_eq!(
            GossipKeys::new(b"short", None).unwrap_err(),
            WeakSecret { len: 5 }
        );
    }
}
