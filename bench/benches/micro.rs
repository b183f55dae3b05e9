//! Micro-benchmarks of corebus's hot paths, without sockets:
//!
//! - `codec`: encode and decode of `PUBLISH` and `MESSAGE` frames;
//! - `routing`: the rendezvous owner of a topic for several shard counts;
//! - `fanout`: one shard handing a publish to N subscribers' outboxes and the
//!   writer draining them (the owner-to-subscriber step, engine only).
//!
//! `cargo bench -p corebus-bench --features micro --bench micro`

use std::hint::black_box;

use bytes::BytesMut;
use corebus_net::{
    check, decode, Body, Check, Frame, Hello, Message, Publish, Subscribe, TopicKey,
};
use corebus_shards::outbox::OutFrame;
use corebus_shards::{routing, ConnId, EngineConfig, Shard};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

fn topic() -> TopicKey {
    TopicKey::from_strs("bench", "orders.eu-west.created").expect("a valid topic name")
}

fn codec(c: &mut Criterion) {
    let mut group = c.benchmark_group("codec");
    for size in [16usize, 128, 4096] {
        let publish = Frame::Publish(Publish {
            request_id: 7,
            ack: true,
            topic: topic(),
            body: Body::plain(&vec![b'x'; size]),
        });
        let message = Frame::Message(Message {
            sub_id: 3,
            epoch: 0x5eed,
            seq: 1_000_000,
            body: Body::plain(&vec![b'x'; size]),
        });
        group.throughput(Throughput::Elements(1));
        for (name, frame) in [("publish", &publish), ("message", &message)] {
            let mut buffer = BytesMut::with_capacity(size + 128);
            group.bench_with_input(
                BenchmarkId::new(format!("encode_{name}"), size),
                frame,
                |b, frame| {
                    b.iter(|| {
                        buffer.clear();
                        frame.encode(&mut buffer);
                        black_box(buffer.len())
                    })
                },
            );
            let mut encoded = BytesMut::new();
            frame.encode(&mut encoded);
            let encoded = encoded.freeze();
            group.bench_with_input(
                BenchmarkId::new(format!("decode_{name}"), size),
                &encoded,
                |b, encoded| {
                    b.iter(|| {
                        let Ok(Check::Complete { len }) = check(encoded, u32::MAX) else {
                            unreachable!("a whole frame was encoded");
                        };
                        black_box(decode(encoded.slice(..len)).is_ok())
                    })
                },
            );
        }
    }
    group.finish();
}

fn routing_owner(c: &mut Criterion) {
    let topics: Vec<TopicKey> = (0..1024)
        .map(|i| TopicKey::from_strs("bench", &format!("tenant-{i}.events")).expect("valid"))
        .collect();
    let mut group = c.benchmark_group("routing");
    group.throughput(Throughput::Elements(topics.len() as u64));
    for shards in [2usize, 8, 64] {
        group.bench_with_input(BenchmarkId::new("owner", shards), &shards, |b, &shards| {
            b.iter(|| {
                topics
                    .iter()
                    .map(|topic| u64::from(routing::owner(topic, shards)))
                    .sum::<u64>()
            })
        });
    }
    group.finish();
}

/// One shard with `subscribers` connections subscribed to one topic, and a
/// publishing connection.
fn fanout_shard(subscribers: usize) -> (Shard, ConnId, Vec<ConnId>) {
    let mut shard = Shard::new(0, 1, EngineConfig::default(), 1);
    let handshake = |shard: &mut Shard| {
        let conn = shard.open_conn();
        shard.handle_frame(
            conn,
            Frame::Hello(Hello {
                version: corebus_net::PROTOCOL_VERSION,
                client_name: "bench".into(),
                credentials: bytes::Bytes::new(),
            }),
        );
        conn
    };
    let publisher = handshake(&mut shard);
    let mut conns = Vec::with_capacity(subscribers);
    for index in 0..subscribers {
        let conn = handshake(&mut shard);
        shard.handle_frame(
            conn,
            Frame::Subscribe(Subscribe {
                request_id: index as u32,
                sub_id: 1,
                resume: None,
                topic: topic(),
            }),
        );
        conns.push(conn);
    }
    let mut frames = Vec::new();
    for conn in conns.iter().chain([&publisher]) {
        if let Some(outbox) = shard.outbox_mut(*conn) {
            outbox.drain_some(&mut frames, usize::MAX);
        }
    }
    (shard, publisher, conns)
}

fn fanout(c: &mut Criterion) {
    let mut group = c.benchmark_group("fanout");
    for subscribers in [1usize, 16, 256, 1024] {
        let (mut shard, publisher, conns) = fanout_shard(subscribers);
        let body = Body::plain(&[b'x'; 128]);
        let key = topic();
        let mut frames: Vec<OutFrame> = Vec::with_capacity(subscribers);
        group.throughput(Throughput::Elements(subscribers as u64));
        group.bench_function(BenchmarkId::new("publish_and_drain", subscribers), |b| {
            b.iter(|| {
                shard.handle_frame(
                    publisher,
                    Frame::Publish(Publish {
                        request_id: 0,
                        ack: false,
                        topic: key.clone(),
                        body: body.clone(),
                    }),
                );
                frames.clear();
                for conn in &conns {
                    if let Some(outbox) = shard.outbox_mut(*conn) {
                        outbox.drain_some(&mut frames, usize::MAX);
                    }
                }
                assert_eq!(
                    frames.len(),
                    subscribers,
                    "every subscriber gets the message"
                );
                black_box(frames.len())
            })
        });
    }
    group.finish();
}

criterion_group!(benches, codec, routing_owner, fanout);
criterion_main!(benches);
