//! Hostile input against one server connection, as the connection's reader
//! feeds the engine: bounded property tests that run in CI (the fuzz targets
//! under `fuzz/` explore the same paths without bounds).

use bytes::{Bytes, BytesMut};
use corebus_net::{Frame, Hello, PROTOCOL_VERSION};
use proptest::prelude::*;

use super::{EngineConfig, Flow, Shard};
use crate::fuzzing::feed;

fn hello() -> Vec<u8> {
    let mut out = BytesMut::new();
    Frame::Hello(Hello {
        version: PROTOCOL_VERSION,
        client_name: "fuzz".into(),
        credentials: Bytes::new(),
    })
    .encode(&mut out);
    out.to_vec()
}

/// Frames with a sound length prefix and a random body, so the fuzzing gets
/// past framing into every frame decoder and handler.
fn framed(opcode: u8, body: &[u8]) -> Vec<u8> {
    let mut out = ((body.len() + 1) as u32).to_be_bytes().to_vec();
    out.push(opcode);
    out.extend_from_slice(body);
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic_the_engine(
        input in proptest::collection::vec(any::<u8>(), 0..2048),
        split in 1usize..64,
        after_hello in any::<bool>(),
    ) {
        let mut shard = Shard::new(0, 2, EngineConfig::default(), 1);
        let mut stream = if after_hello { hello() } else { Vec::new() };
        stream.extend_from_slice(&input);
        feed(&mut shard, &stream, split);
        // Whatever happened, the engine still serves a fresh, well-behaved
        // connection on the same shard.
        prop_assert_eq!(feed(&mut shard, &hello(), 3), Flow::Continue);
    }

    #[test]
    fn random_bodies_behind_sound_prefixes_never_panic(
        frames in proptest::collection::vec(
            (prop_oneof![Just(0x02u8), Just(0x03), Just(0x04), Just(0x05), Just(0x07), any::<u8>()],
             proptest::collection::vec(any::<u8>(), 0..80)),
            1..24,
        ),
    ) {
        let mut shard = Shard::new(1, 2, EngineConfig::default(), 2);
        let mut stream = hello();
        for (opcode, body) in &frames {
            stream.extend(framed(*opcode, body));
        }
        // Bodies inside sound prefixes never break framing: the connection
        // survives every one of them.
        prop_assert_eq!(feed(&mut shard, &stream, 7), Flow::Continue);
        prop_assert_eq!(shard.stats().handshake_failures, 0);
    }
}
