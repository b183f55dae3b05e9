//! Topic ownership by rendezvous (highest-random-weight) hashing.
//!
//! The function is part of corebus's contract, not an implementation detail: the
//! same (namespace, topic) must map to the same owner in every process, version
//! and machine, because it will also choose the owning node of a cluster. It is
//! specified here and in `docs/architecture.md`, and pinned by golden tests.
//!
//! 1. **Key hash.** FNV-1a 64 (offset basis `0xcbf29ce484222325`, prime
//!    `0x100000001b3`) over the bytes `len(namespace) as u8 ‖ namespace ‖ topic`.
//!    The length byte makes ("ab","c") and ("a","bc") different keys; namespaces
//!    are at most 128 bytes, so it always fits.
//! 2. **Score.** For a member with 64-bit id `m` (a shard's index, later a node
//!    id): `score = mix(key_hash ^ mix(m + 0x9e3779b97f4a7c15))`, where `mix` is
//!    the SplitMix64 finalizer:
//!    `z ^= z >> 30; z *= 0xbf58476d1ce4e5b9; z ^= z >> 27; z *= 0x94d049bb133111eb; z ^= z >> 31`
//!    (wrapping multiplication).
//! 3. **Owner.** The member with the highest score; on a tie, the lowest id.
//!
//! FNV-1a alone mixes poorly, which is why every score goes through the
//! finalizer; the balance test below checks the result.

use corebus_net::TopicKey;

/// Index of a shard within one broker process.
pub type ShardId = u16;

/// The stable 64-bit hash of a (namespace, topic) pair (step 1 above; kept
/// with the key itself, see [`TopicKey::stable_hash`]).
pub use corebus_net::key_hash;
/// Steps 2 and 3 above (in `corebus-net`, so that clients can compute them).
pub use corebus_net::routing::{mix64, owner_of_hash, score};

/// The shard that owns `topic` in a broker of `shard_count` shards.
pub fn owner(topic: &TopicKey, shard_count: usize) -> ShardId {
    owner_of_hash(topic.stable_hash(), shard_count as u64) as ShardId
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_values_never_change() {
        // corebus's pinned values (the FNV-1a reference vectors are checked
        // in corebus-net, next to the key hash). If any of these change,
        // topics move between shards and, later, nodes.
        assert_eq!(mix64(0), 0);
        assert_eq!(mix64(1), 0x5692161d100b05e5);
        assert_eq!(key_hash(b"app", b"news"), GOLDEN_KEY_HASH);
        let key = TopicKey::from_strs("app", "news").expect("valid");
        assert_eq!(
            key.stable_hash(),
            GOLDEN_KEY_HASH,
            "the key carries the same hash"
        );
        assert_eq!(score(GOLDEN_KEY_HASH, 0), GOLDEN_SCORE_0);
        let owners: Vec<u64> = [
            ("app", "news"),
            ("app", "weather"),
            ("orders", "eu/created"),
            ("n", "t"),
        ]
        .iter()
        .map(|(ns, topic)| owner_of_hash(key_hash(ns.as_bytes(), topic.as_bytes()), 8))
        .collect();
        assert_eq!(owners, GOLDEN_OWNERS_OF_8);
    }

    const GOLDEN_KEY_HASH: u64 = 0x65d6_39a0_951c_10ea;
    const GOLDEN_SCORE_0: u64 = 0xfebc_6257_1b46_ef96;
    const GOLDEN_OWNERS_OF_8: [u64; 4] = [7, 1, 2, 7];

    #[test]
    fn length_prefix_separates_namespace_from_topic() {
        assert_ne!(key_hash(b"ab", b"c"), key_hash(b"a", b"bc"));
    }

    /// A small deterministic generator, so the tests need no RNG crate.
    fn keys(count: usize) -> impl Iterator<Item = u64> {
        (0..count as u64).map(|i| {
            let ns = format!("ns-{}", mix64(i) % 97);
            let topic = format!("topic-{:x}", mix64(i ^ 0xdead_beef));
            key_hash(ns.as_bytes(), topic.as_bytes())
        })
    }

    #[test]
    fn balance_over_eight_shards_is_within_five_percent() {
        let mut counts = [0usize; 8];
        for hash in keys(100_000) {
            counts[owner_of_hash(hash, 8) as usize] += 1;
        }
        let fair = 100_000.0 / 8.0;
        for (shard, count) in counts.iter().enumerate() {
            let deviation = (*count as f64 - fair).abs() / fair;
            assert!(
                deviation < 0.05,
                "shard {shard} has {count} keys, {:.1}% off fair share",
                deviation * 100.0
            );
        }
    }

    #[test]
    fn growing_by_one_moves_about_one_share_and_only_to_the_new_member() {
        for shards in 1..=9u64 {
            let total = 50_000;
            let mut moved = 0;
            for hash in keys(total) {
                let before = owner_of_hash(hash, shards);
                let after = owner_of_hash(hash, shards + 1);
                if before != after {
                    assert_eq!(after, shards, "a key moved between old members");
                    moved += 1;
                }
            }
            let expected = total as f64 / (shards + 1) as f64;
            let ratio = moved as f64 / expected;
            assert!(
                (0.9..1.1).contains(&ratio),
                "{shards}->{}: moved {moved}, expected about {expected:.0}",
                shards + 1
            );
        }
    }

    #[test]
    fn single_shard_owns_everything() {
        for hash in keys(1000) {
            assert_eq!(owner_of_hash(hash, 1), 0);
        }
    }
}
