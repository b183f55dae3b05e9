//! Rendezvous (highest-random-weight) hashing: which member of `0..count`
//! owns a key. The contract is specified in `corebus_shards::routing` and
//! `docs/architecture.md`; it lives here, beside the key hash, so that
//! clients can tell which shard owns a topic, and its golden values are
//! pinned here (and printed in `docs/protocol.md` for other
//! implementations to check against).

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

/// The member key of a cluster node, for [`owner_node`]: the key hash
/// ([`crate::key_hash`]) of an empty namespace and the node id as the topic,
/// which is FNV-1a 64 over a zero byte then the node id's bytes. A node id is
/// its cluster address as text (`10.0.0.1:7500`, `[fd00::1]:7500`).
pub fn node_key(node_id: &str) -> u64 {
    crate::key_hash(b"", node_id.as_bytes())
}

/// Which of `nodes` (their [`node_key`]s) owns a key whose hash is
/// `key_hash`: the highest [`score`], the lowest node key on a tie; `None`
/// when there is no node. Every node computes the same owner from the same
/// member list, and a join or a leave moves only the keys of that node.
pub fn owner_node(key_hash: u64, nodes: &[u64]) -> Option<usize> {
    nodes
        .iter()
        .enumerate()
        .max_by(|(_, a), (_, b)| {
            score(key_hash, **a)
                .cmp(&score(key_hash, **b))
                .then_with(|| b.cmp(a))
        })
        .map(|(index, _)| index)
}

/// The shard a broker of `shards` shards gives a connection from source port
/// `port`: `(port / 2) mod shards` (its listeners' steering program computes
/// the same). The port is halved because Linux hands `connect()` even
/// ephemeral ports, which `port mod shards` would pile onto even shards.
pub fn shard_of_source_port(port: u16, shards: u16) -> u16 {
    (port / 2) % shards.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key_hash;

    /// (namespace, topic, key hash, scores of members 0, 1 and 2, owner
    /// among 1..=8 members). If any of these change, topics move between
    /// shards and, later, nodes; docs/protocol.md prints the same table.
    /// One golden row: namespace, topic, key hash, scores, owners.
    type Golden = (&'static str, &'static str, u64, [u64; 3], [u64; 8]);

    const GOLDEN: [Golden; 6] = [
        (
            "app",
            "news",
            0x65d6_39a0_951c_10ea,
            [
                0xfebc_6257_1b46_ef96,
                0x7256_5fe7_dec3_7a97,
                0xd9a2_f3ce_f790_3ff4,
            ],
            [0, 0, 0, 0, 0, 0, 0, 7],
        ),
        (
            "app",
            "weather",
            0x792d_4772_5b97_b207,
            [
                0xa9ad_5882_8b66_7bcf,
                0xeaa3_183c_6377_661a,
                0x8903_f8a8_13c0_1ec3,
            ],
            [0, 1, 1, 1, 1, 1, 1, 1],
        ),
        (
            "orders",
            "eu/created",
            0x65be_e8be_aedc_3e2d,
            [
                0x6242_b3d4_3730_a00e,
                0x84ee_6369_cf37_f101,
                0xf33e_5480_74ee_a221,
            ],
            [0, 1, 2, 2, 2, 2, 2, 2],
        ),
        (
            "n",
            "t",
            0xd0ee_8718_6767_0156,
            [
                0x4a3d_557a_59ba_3d8f,
                0x5901_0a90_d909_0a7b,
                0xe10e_2b3f_34d3_c227,
            ],
            [0, 1, 2, 2, 2, 2, 6, 7],
        ),
        (
            "chat",
            "room/42",
            0x7565_32ce_1ec0_afa1,
            [
                0xbbfd_5c9f_a243_da81,
                0x9942_014d_62d5_b2dd,
                0x16e0_fdd1_4666_0770,
            ],
            [0, 0, 0, 0, 0, 0, 6, 7],
        ),
        (
            "",
            "",
            0xaf63_bd4c_8601_b7df,
            [
                0xd610_8917_b7f4_7611,
                0x06ef_c704_c410_4d5b,
                0xc675_43e6_6c70_832b,
            ],
            [0, 0, 0, 0, 4, 4, 4, 4],
        ),
    ];

    #[test]
    fn golden_values_never_change() {
        assert_eq!(mix64(0), 0);
        assert_eq!(mix64(1), 0x5692_161d_100b_05e5);
        for (namespace, topic, hash, scores, owners) in GOLDEN {
            let key = key_hash(namespace.as_bytes(), topic.as_bytes());
            assert_eq!(key, hash, "{namespace}/{topic}");
            for (member, want) in scores.iter().enumerate() {
                assert_eq!(
                    score(key, member as u64),
                    *want,
                    "{namespace}/{topic} {member}"
                );
            }
            for (count, want) in (1..=8).zip(owners) {
                assert_eq!(
                    owner_of_hash(key, count),
                    want,
                    "{namespace}/{topic} of {count}"
                );
            }
        }
    }

    #[test]
    fn the_source_port_picks_the_shard_by_half_the_port() {
        for (port, shards, shard) in [
            (0, 4, 0),
            (1, 4, 0),
            (2, 4, 1),
            (3, 4, 1),
            (7, 4, 3),
            (8, 4, 0),
            (65535, 4, 3),
            (40001, 3, 2),
            (9, 0, 0),
            (9, 1, 0),
        ] {
            assert_eq!(
                shard_of_source_port(port, shards),
                shard,
                "port {port} of {shards}"
            );
        }
    }

    #[test]
    fn the_owner_has_the_highest_score() {
        // Scores of one key never tie: `mix64` is a bijection, so distinct
        // members get distinct scores (the tie rule is for completeness).
        for (namespace, topic, ..) in GOLDEN {
            let key = key_hash(namespace.as_bytes(), topic.as_bytes());
            let best = (0..8).max_by_key(|member| score(key, *member));
            assert_eq!(Some(owner_of_hash(key, 8)), best, "{namespace}/{topic}");
        }
        assert_eq!(owner_of_hash(key_hash(b"n", b"t"), 0), 0, "no member: 0");
    }

    /// Node keys and node owners: if any of these change, topics move
    /// between nodes of a running cluster; docs/cluster.md prints them.
    #[test]
    fn node_golden_values_never_change() {
        let ids = ["10.0.0.1:7500", "10.0.0.2:7500", "10.0.0.3:7500"];
        let nodes: Vec<u64> = ids.iter().map(|id| node_key(id)).collect();
        assert_eq!(nodes, NODE_KEYS);
        for ((namespace, topic, ..), owner) in GOLDEN.iter().zip(NODE_OWNERS) {
            let key = key_hash(namespace.as_bytes(), topic.as_bytes());
            assert_eq!(owner_node(key, &nodes), Some(owner), "{namespace}/{topic}");
        }
        assert_eq!(owner_node(1, &[]), None);
    }

    const NODE_KEYS: [u64; 3] = [
        0xa13f_fab3_5922_f54b,
        0x08cd_cd1a_9bab_c684,
        0x4571_9ba7_aae5_ceb5,
    ];
    const NODE_OWNERS: [usize; 6] = [1, 2, 0, 0, 1, 1];

    #[test]
    fn a_node_joining_takes_about_its_share_of_ten_thousand_topics_and_nothing_else_moves() {
        let mut nodes: Vec<u64> = (1..=3)
            .map(|n| node_key(&format!("10.0.0.{n}:7500")))
            .collect();
        let total = 10_000;
        let before: Vec<u64> = keys(total)
            .map(|hash| nodes[owner_node(hash, &nodes).expect("a node")])
            .collect();
        let joining = node_key("10.0.0.4:7500");
        nodes.push(joining);
        let mut moved = 0;
        for (hash, was) in keys(total).zip(before) {
            let now = nodes[owner_node(hash, &nodes).expect("a node")];
            if now != was {
                assert_eq!(now, joining, "a topic moved between old nodes");
                moved += 1;
            }
        }
        let share = total as f64 / 4.0;
        let ratio = moved as f64 / share;
        assert!(
            (0.7..1.3).contains(&ratio),
            "moved {moved} of {total}, a fair share is {share}"
        );
    }

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
    fn balance_over_eight_members_is_within_five_percent() {
        let mut counts = [0usize; 8];
        for hash in keys(100_000) {
            counts[owner_of_hash(hash, 8) as usize] += 1;
        }
        let fair = 100_000.0 / 8.0;
        for (member, count) in counts.iter().enumerate() {
            let deviation = (*count as f64 - fair).abs() / fair;
            assert!(
                deviation < 0.05,
                "member {member} has {count} keys, {:.1}% off fair share",
                deviation * 100.0
            );
        }
    }

    #[test]
    fn growing_by_one_moves_about_one_share_and_only_to_the_new_member() {
        for members in 1..=9u64 {
            let total = 50_000;
            let mut moved = 0;
            for hash in keys(total) {
                let before = owner_of_hash(hash, members);
                let after = owner_of_hash(hash, members + 1);
                if before != after {
                    assert_eq!(after, members, "a key moved between old members");
                    moved += 1;
                }
            }
            let expected = total as f64 / (members + 1) as f64;
            let ratio = moved as f64 / expected;
            assert!(
                (0.9..1.1).contains(&ratio),
                "{members}->{}: moved {moved}, expected about {expected:.0}",
                members + 1
            );
        }
    }
}
