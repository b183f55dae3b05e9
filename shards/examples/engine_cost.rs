//! A fixed, deterministic run of one shard's per-message path, for counting
//! instructions with callgrind (repeatable on a noisy machine, unlike time):
//!
//! ```sh
//! cargo build --release -p corebus-shards --example engine_cost
//! valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.out \
//!     target/release/examples/engine_cost 1024 200000
//! ```
//!
//! It encodes `MESSAGES` acknowledged 128-byte publishes spread round-robin
//! over `TOPICS` topics (one subscriber connection per topic), then decodes
//! each frame from the byte stream, hands it to the engine and drains the
//! outboxes every 256 publishes, as a connection task would. Divide the
//! total instruction count (minus a run with 0 messages, the set-up) by
//! `MESSAGES` for instructions per message: decode, permission check,
//! routing, sequencing, the replay ring, fan-out and the outboxes. No
//! sockets and no cross-shard hops.

use bytes::{Bytes, BytesMut};
use corebus_net::{
    check, decode_with, Check, Frame, Hello, KeyCache, Publish, Subscribe, TopicKey,
};
use corebus_shards::outbox::OutFrame;
use corebus_shards::{ConnId, EngineConfig, Shard};

fn main() {
    let mut args = std::env::args().skip(1);
    let topics: usize = args.next().map_or(1024, |a| a.parse().expect("TOPICS"));
    let messages: usize = args
        .next()
        .map_or(200_000, |a| a.parse().expect("MESSAGES"));
    let mut shard = Shard::new(0, 1, EngineConfig::default(), 1);
    let hello = |shard: &mut Shard| {
        let conn = shard.open_conn();
        shard.handle_frame(
            conn,
            Frame::Hello(Hello {
                version: corebus_net::PROTOCOL_VERSION,
                client_name: "cost".into(),
                credentials: Bytes::new(),
            }),
        );
        conn
    };
    let keys: Vec<TopicKey> = (0..topics)
        .map(|i| TopicKey::from_strs("bench", &format!("topic-{i:05}")).expect("valid"))
        .collect();
    let subscribers: Vec<ConnId> = keys
        .iter()
        .enumerate()
        .map(|(index, key)| {
            let conn = hello(&mut shard);
            shard.handle_frame(
                conn,
                Frame::Subscribe(Subscribe {
                    request_id: index as u32,
                    sub_id: 1,
                    resume: None,
                    topic: key.clone(),
                }),
            );
            conn
        })
        .collect();
    let publisher = hello(&mut shard);
    let mut frames: Vec<OutFrame> = Vec::new();
    let drain = |shard: &mut Shard, frames: &mut Vec<OutFrame>| {
        let mut count = 0;
        for conn in subscribers.iter().chain([&publisher]) {
            if let Some(outbox) = shard.outbox_mut(*conn) {
                outbox.drain_into(frames);
                count += frames.len();
                frames.clear();
            }
        }
        count
    };
    drain(&mut shard, &mut frames);

    let payload = Bytes::from(vec![b'x'; 128]);
    let mut stream = BytesMut::new();
    for i in 0..messages {
        Frame::Publish(Publish {
            request_id: i as u32,
            ack: true,
            topic: keys[i % topics].clone(),
            payload: payload.clone(),
        })
        .encode(&mut stream);
    }
    let mut stream = stream.freeze();
    let mut out = 0;
    // As a connection's reader decodes (here every frame names another topic).
    let mut keys = KeyCache::default();
    for i in 0..messages {
        let Ok(Check::Complete { len }) = check(&stream, u32::MAX) else {
            panic!("encoded frames are complete");
        };
        let frame = decode_with(stream.split_to(len), &mut keys).expect("encoded frames decode");
        shard.handle_frame(publisher, frame);
        if i % 256 == 255 {
            out += drain(&mut shard, &mut frames);
        }
    }
    out += drain(&mut shard, &mut frames);
    // Each publish gives one MESSAGE and one PUB_ACK.
    assert_eq!(out, 2 * messages);
    println!("{messages} publishes over {topics} topics: {out} frames out");
}
