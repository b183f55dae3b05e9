//! A fixed, deterministic run of the engine's per-message path, for counting
//! instructions with callgrind (repeatable on a noisy machine, unlike time):
//!
//! ```sh
//! cargo build --release -p corebus-shards --example engine_cost
//! valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.out \
//!     target/release/examples/engine_cost 1024 200000 [SHARDS]
//! ```
//!
//! It encodes `MESSAGES` acknowledged 128-byte publishes spread round-robin
//! over `TOPICS` topics (one subscriber connection per topic), then decodes
//! each frame from the byte stream, hands it to the engine and drains the
//! outboxes every 256 publishes, as a connection task would. Divide the
//! total instruction count (minus a run with 0 messages, the set-up) by
//! `MESSAGES` for instructions per message: decode, permission check,
//! routing, sequencing, the replay ring, fan-out and the outboxes. No
//! sockets.
//!
//! With `SHARDS` (default 1) above 1, the publisher is on shard 0 and the
//! subscribers on the last shard, and the mesh batches are handed over by
//! hand every 256 publishes as the mesh tasks would: a message whose topic
//! shard 0 owns crosses to the subscribers' shard as a delivery, any other
//! as a publish (then its acknowledgement comes back). With 2 shards every
//! message makes exactly one hop, so the difference from a 1-shard run is
//! what a hop costs in instructions (not the cache traffic between cores,
//! which a single-threaded run cannot show).

use std::task::Waker;

use bytes::{Bytes, BytesMut};
use corebus_net::{
    check, decode_from_client, Body, Check, Frame, Hello, KeyCache, Publish, Subscribe, TopicKey,
};
use corebus_shards::outbox::OutFrame;
use corebus_shards::{ConnId, EngineConfig, Shard, ShardId};

fn main() {
    let mut args = std::env::args().skip(1);
    let topics: usize = args.next().map_or(1024, |a| a.parse().expect("TOPICS"));
    let messages: usize = args
        .next()
        .map_or(200_000, |a| a.parse().expect("MESSAGES"));
    let shard_count: usize = args.next().map_or(1, |a| a.parse().expect("SHARDS"));
    assert!(shard_count >= 1, "SHARDS must be at least 1");
    let mut shards: Vec<Shard> = (0..shard_count)
        .map(|id| Shard::new(id as ShardId, shard_count, EngineConfig::default(), 1))
        .collect();
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
            let shard = &mut shards[shard_count - 1];
            let conn = hello(shard);
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
    let publisher = hello(&mut shards[0]);
    let mut frames: Vec<OutFrame> = Vec::new();
    // Hands every collected mesh batch to its peer until none is left, then
    // empties every outbox; returns the frames taken.
    let drain = |shards: &mut [Shard], frames: &mut Vec<OutFrame>| {
        pump(shards);
        let mut count = 0;
        let (first, last) = (0, shards.len() - 1);
        for (shard, conns) in [(first, &[publisher][..]), (last, &subscribers[..])] {
            for conn in conns {
                if let Some(outbox) = shards[shard].outbox_mut(*conn) {
                    outbox.drain_some(frames, usize::MAX);
                    count += frames.iter().map(frames_in).sum::<usize>();
                    frames.clear();
                }
            }
        }
        count
    };
    drain(&mut shards, &mut frames);

    let body = Body::plain(&[b'x'; 128]);
    let mut stream = BytesMut::new();
    for i in 0..messages {
        Frame::Publish(Publish {
            request_id: i as u32,
            ack: true,
            topic: keys[i % topics].clone(),
            body: body.clone(),
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
        let frame =
            decode_from_client(stream.split_to(len), &mut keys).expect("encoded frames decode");
        shards[0].handle_frame(publisher, frame);
        if i % 256 == 255 {
            out += drain(&mut shards, &mut frames);
        }
    }
    out += drain(&mut shards, &mut frames);
    // Each publish gives one MESSAGE and one PUB_ACK.
    assert_eq!(out, 2 * messages);
    println!("{messages} publishes over {topics} topics on {shard_count} shards: {out} frames out");
}

/// What the mesh tasks do, by hand: every batch a shard collected goes to
/// its peer, until no shard has anything for another.
fn pump(shards: &mut [Shard]) {
    loop {
        let mut moved = false;
        for from in 0..shards.len() {
            for to in 0..shards.len() {
                if from == to {
                    continue;
                }
                if let Some(batch) = shards[from].take_mesh_batch(to as ShardId, Waker::noop()) {
                    moved = true;
                    for msg in batch {
                        shards[to].handle_mesh(from as ShardId, msg);
                    }
                }
            }
        }
        if !moved {
            return;
        }
    }
}

/// Frames in one drained item: a run of encoded messages holds several.
fn frames_in(item: &OutFrame) -> usize {
    let OutFrame::Encoded(run) = item else {
        return 1;
    };
    let mut rest = &run[..];
    let mut count = 0;
    while let Ok(Check::Complete { len }) = check(rest, u32::MAX) {
        rest = &rest[len..];
        count += 1;
    }
    count
}
