//! Rendezvous (highest-random-weight) hashing: which member of `0..count`
//! owns a key. The contract and its golden values are specified in
//! `corebus_shards::routing` and `docs/architecture.md`; it lives here, beside
//! the key hash, so that clients can tell which shard owns a topic.

const GOLDEN_GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

/// The SplitMix64 finalizer: a bijective 64-bit mixer.
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The rendezvous score of `member` for a key whose hash is `key_hash`.
pub fn score(key_hash: u64, member: u64) -> u64 {
    mix64(key_hash ^ mix64(member.wrapping_add(GOLDEN_GAMMA)))
}

/// The member among `0..count` with the highest score (lowest id on a tie).
///
/// `count` must be at least 1; with 0 the answer is 0.
pub fn owner_of_hash(key_hash: u64, count: u64) -> u64 {
    let mut best = 0;
    let mut best_score = 0;
    for member in 0..count {
        let member_score = score(key_hash, member);
        if member == 0 || member_score > best_score {
            best = member;
            best_score = member_score;
        }
    }
    best
}

/// The shard a broker of `shards` shards gives a connection from source port
/// `port`: `(port / 2) mod shards` (its listeners' steering program computes
/// the same). The port is halved because Linux hands `connect()` even
/// ephemeral ports, which `port mod shards` would pile onto even shards.
pub fn shard_of_source_port(port: u16, shards: u16) -> u16 {
    (port / 2) % shards.max(1)
}
