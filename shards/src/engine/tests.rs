//! Engine tests: several shards driven by hand, with the mesh simulated as FIFO
//! queues, so ordering arguments are checked without sockets or executors.

use std::collections::VecDeque;
use std::task::Waker;

use bytes::Bytes;
use corebus_net::{ErrorCode, Frame, Hello, Publish, Subscribe, TopicKey, Unsubscribe};

use super::*;
use crate::mesh::MeshBatch;
use crate::outbox::OutFrame;
use crate::routing;

struct Cluster {
    shards: Vec<Shard>,
    /// (from, to) → batches in flight, FIFO like the real mesh queues.
    queues: Vec<Vec<VecDeque<MeshBatch>>>,
}

impl Cluster {
    fn new(count: usize, config: EngineConfig) -> Cluster {
        Cluster {
            shards: (0..count)
                .map(|id| Shard::new(id as ShardId, count, config.clone(), 7))
                .collect(),
            queues: (0..count)
                .map(|_| (0..count).map(|_| VecDeque::new()).collect())
                .collect(),
        }
    }

    /// Moves collected batches into the simulated queues (what sender tasks do).
    fn collect(&mut self) {
        let count = self.shards.len();
        for from in 0..count {
            for to in 0..count {
                if from == to {
                    continue;
                }
                if let Some(batch) = self.shards[from].take_mesh_batch(to as ShardId, Waker::noop())
                {
                    self.queues[from][to].push_back(batch);
                }
            }
        }
    }

    /// Delivers everything until no queue holds anything.
    fn pump(&mut self) {
        loop {
            self.collect();
            let mut moved = false;
            for from in 0..self.shards.len() {
                for to in 0..self.shards.len() {
                    while let Some(batch) = self.queues[from][to].pop_front() {
                        moved = true;
                        for msg in batch {
                            self.shards[to].handle_mesh(from as ShardId, msg);
                        }
                    }
                }
            }
            if !moved {
                return;
            }
        }
    }

    fn connect(&mut self, shard: usize) -> (usize, ConnId) {
        let conn = self.shards[shard].open_conn();
        let flow = self.shards[shard].handle_frame(
            conn,
            Frame::Hello(Hello {
                version: corebus_net::PROTOCOL_VERSION,
                client_name: "test".into(),
                credentials: bytes::Bytes::new(),
            }),
        );
        assert_eq!(flow, Flow::Continue);
        let frames = self.take(shard, conn);
        assert!(matches!(frames[..], [OutFrame::Welcome { .. }]));
        (shard, conn)
    }

    fn send(&mut self, (shard, conn): (usize, ConnId), frame: Frame) -> Flow {
        self.shards[shard].handle_frame(conn, frame)
    }

    fn take(&mut self, shard: usize, conn: ConnId) -> Vec<OutFrame> {
        let mut frames = Vec::new();
        if let Some(outbox) = self.shards[shard].outbox_mut(conn) {
            outbox.drain_into(&mut frames);
        }
        frames
    }

    fn take_conn(&mut self, (shard, conn): (usize, ConnId)) -> Vec<OutFrame> {
        self.take(shard, conn)
    }
}

fn topic(name: &str) -> TopicKey {
    TopicKey::from_strs("test", name).expect("valid")
}

/// A topic owned by `owner` in a cluster of `count`.
fn topic_owned_by(owner: ShardId, count: usize) -> TopicKey {
    (0..)
        .map(|i| topic(&format!("t{i}")))
        .find(|t| routing::owner(t, count) == owner)
        .expect("some topic hashes to every shard")
}

fn publish(topic: &TopicKey, request_id: u32, payload: &str) -> Frame {
    Frame::Publish(Publish {
        request_id,
        ack: true,
        topic: topic.clone(),
        payload: Bytes::copy_from_slice(payload.as_bytes()),
    })
}

fn subscribe(topic: &TopicKey, request_id: u32, sub_id: u32) -> Frame {
    Frame::Subscribe(Subscribe {
        request_id,
        sub_id,
        resume: None,
        topic: topic.clone(),
    })
}

fn resume(topic: &TopicKey, request_id: u32, sub_id: u32, epoch: u64, next_seq: u64) -> Frame {
    Frame::Subscribe(Subscribe {
        request_id,
        sub_id,
        resume: Some(corebus_net::ResumePoint { epoch, next_seq }),
        topic: topic.clone(),
    })
}

fn sub_ok(frames: &[OutFrame], want_sub: u32) -> Option<(u64, u64)> {
    frames.iter().find_map(|f| match f {
        OutFrame::SubOk {
            sub_id,
            epoch,
            start_after,
            ..
        } if *sub_id == want_sub => Some((*epoch, *start_after)),
        _ => None,
    })
}

fn gaps(frames: &[OutFrame]) -> Vec<(u32, u64, u64)> {
    frames
        .iter()
        .filter_map(|f| match f {
            OutFrame::Discontinuity {
                sub_id,
                last_seq,
                next_seq,
                ..
            } => Some((*sub_id, *last_seq, *next_seq)),
            _ => None,
        })
        .collect()
}

fn messages(frames: &[OutFrame]) -> Vec<(u32, u64)> {
    frames
        .iter()
        .filter_map(|f| match f {
            OutFrame::Message { sub_id, seq, .. } => Some((*sub_id, *seq)),
            _ => None,
        })
        .collect()
}

fn sub_ok_start(frames: &[OutFrame], want_sub: u32) -> Option<u64> {
    frames.iter().find_map(|f| match f {
        OutFrame::SubOk {
            sub_id,
            start_after,
            ..
        } if *sub_id == want_sub => Some(*start_after),
        _ => None,
    })
}

#[test]
fn publisher_and_subscriber_on_different_shards_through_a_third_owner() {
    let mut cluster = Cluster::new(3, EngineConfig::default());
    let t = topic_owned_by(2, 3);
    let subscriber = cluster.connect(1);
    let publisher = cluster.connect(0);
    cluster.send(subscriber, subscribe(&t, 1, 10));
    cluster.pump();
    assert_eq!(sub_ok_start(&cluster.take_conn(subscriber), 10), Some(0));
    for i in 1..=100 {
        cluster.send(publisher, publish(&t, i, "x"));
    }
    cluster.pump();
    let acks: Vec<u64> = cluster
        .take_conn(publisher)
        .iter()
        .filter_map(|f| match f {
            OutFrame::PubAck { seq, .. } => Some(*seq),
            _ => None,
        })
        .collect();
    assert_eq!(acks, (1..=100).collect::<Vec<_>>());
    let got = messages(&cluster.take_conn(subscriber));
    assert_eq!(got, (1..=100).map(|seq| (10, seq)).collect::<Vec<_>>());
}

#[test]
fn start_point_is_exact_while_publishes_are_in_flight() {
    let count = 2;
    let t = topic_owned_by(0, count);
    let mut cluster = Cluster::new(count, EngineConfig::default());
    let publisher = cluster.connect(1);
    let subscriber = cluster.connect(1);
    for i in 1..=5 {
        cluster.send(publisher, publish(&t, i, "early"));
    }
    // Subscribe while the five publishes are still queued towards the owner,
    // then publish more: the start point splits the stream exactly.
    cluster.send(subscriber, subscribe(&t, 1, 7));
    for i in 6..=10 {
        cluster.send(publisher, publish(&t, i, "late"));
    }
    cluster.pump();
    let frames = cluster.take_conn(subscriber);
    let start = sub_ok_start(&frames, 7).expect("SUB_OK");
    let got: Vec<u64> = messages(&frames).into_iter().map(|(_, seq)| seq).collect();
    assert_eq!(got, ((start + 1)..=10).collect::<Vec<_>>());
    // The same shard's mesh queue to the owner is FIFO: the five early
    // publishes reached the owner before the interest did.
    assert_eq!(start, 5);
}

#[test]
fn second_local_subscriber_starts_where_the_shard_is() {
    let count = 2;
    let t = topic_owned_by(1, count);
    let mut cluster = Cluster::new(count, EngineConfig::default());
    let publisher = cluster.connect(1);
    let first = cluster.connect(0);
    let second = cluster.connect(0);
    cluster.send(first, subscribe(&t, 1, 1));
    cluster.pump();
    for i in 1..=3 {
        cluster.send(publisher, publish(&t, i, "a"));
    }
    cluster.pump();
    cluster.send(second, subscribe(&t, 1, 2));
    for i in 4..=6 {
        cluster.send(publisher, publish(&t, i, "b"));
    }
    cluster.pump();
    let frames = cluster.take_conn(second);
    assert_eq!(sub_ok_start(&frames, 2), Some(3));
    assert_eq!(messages(&frames), vec![(2, 4), (2, 5), (2, 6)]);
    assert_eq!(messages(&cluster.take_conn(first)).len(), 6);
}

#[test]
fn unsubscribe_stops_delivery_and_withdraws_interest_from_the_owner() {
    let count = 2;
    let t = topic_owned_by(0, count);
    let mut cluster = Cluster::new(count, EngineConfig::default());
    let publisher = cluster.connect(0);
    let subscriber = cluster.connect(1);
    cluster.send(subscriber, subscribe(&t, 1, 3));
    cluster.pump();
    cluster.send(publisher, publish(&t, 1, "one"));
    cluster.pump();
    cluster.send(
        subscriber,
        Frame::Unsubscribe(Unsubscribe {
            request_id: 2,
            sub_id: 3,
        }),
    );
    let frames = cluster.take_conn(subscriber);
    assert!(matches!(
        frames.last(),
        Some(OutFrame::UnsubOk { sub_id: 3, .. })
    ));
    cluster.pump();
    cluster.send(publisher, publish(&t, 2, "two"));
    // The owner no longer sends anything to shard 1 for this topic.
    cluster.collect();
    assert!(cluster.queues[0][1].is_empty());
    cluster.pump();
    assert!(messages(&cluster.take_conn(subscriber)).is_empty());
}

#[test]
fn closing_the_last_subscriber_connection_withdraws_interest() {
    let count = 2;
    let t = topic_owned_by(0, count);
    let mut cluster = Cluster::new(count, EngineConfig::default());
    let publisher = cluster.connect(0);
    let subscriber = cluster.connect(1);
    cluster.send(subscriber, subscribe(&t, 1, 3));
    cluster.pump();
    cluster.shards[1].close_conn(subscriber.1);
    cluster.pump();
    cluster.send(publisher, publish(&t, 1, "nobody"));
    cluster.collect();
    assert!(cluster.queues[0][1].is_empty());
}

#[test]
fn resubscribing_while_a_drop_is_in_flight_neither_loses_nor_repeats() {
    let count = 2;
    let t = topic_owned_by(0, count);
    let mut cluster = Cluster::new(count, EngineConfig::default());
    let publisher = cluster.connect(0);
    let subscriber = cluster.connect(1);
    cluster.send(subscriber, subscribe(&t, 1, 1));
    cluster.pump();
    cluster.send(publisher, publish(&t, 1, "a"));
    cluster.collect(); // DeliverMsg seq 1 in flight to shard 1
    cluster.send(
        subscriber,
        Frame::Unsubscribe(Unsubscribe {
            request_id: 2,
            sub_id: 1,
        }),
    );
    cluster.send(subscriber, subscribe(&t, 3, 2));
    cluster.send(publisher, publish(&t, 2, "b"));
    cluster.pump();
    let frames = cluster.take_conn(subscriber);
    let start = sub_ok_start(&frames, 2).expect("SUB_OK");
    let second: Vec<u64> = messages(&frames)
        .into_iter()
        .filter(|(sub, _)| *sub == 2)
        .map(|(_, seq)| seq)
        .collect();
    assert_eq!(second, ((start + 1)..=2).collect::<Vec<_>>());
    assert!(messages(&frames)
        .iter()
        .all(|(sub, seq)| *sub == 2 || *seq == 1));
}

#[test]
fn a_delivery_in_flight_for_a_released_entry_does_not_reach_the_topic_now_in_its_slot() {
    // Deliveries name the subscriber shard's table entry, not the topic:
    // topic A's entry is released while one is in flight, and topic B (owned
    // by the subscriber's own shard, so active at once) takes the same slot.
    let count = 2;
    let a = topic_owned_by(0, count);
    let b = topic_owned_by(1, count);
    let mut cluster = Cluster::new(count, EngineConfig::default());
    let publisher = cluster.connect(0);
    let subscriber = cluster.connect(1);
    cluster.send(subscriber, subscribe(&a, 1, 1));
    cluster.pump();
    cluster.send(publisher, publish(&a, 1, "for a"));
    cluster.collect(); // DeliverMsg for A in flight to shard 1
    cluster.send(
        subscriber,
        Frame::Unsubscribe(Unsubscribe {
            request_id: 2,
            sub_id: 1,
        }),
    );
    cluster.send(subscriber, subscribe(&b, 3, 2));
    cluster.pump();
    let frames = cluster.take_conn(subscriber);
    assert_eq!(sub_ok_start(&frames, 2), Some(0));
    assert!(
        messages(&frames).iter().all(|(sub, _)| *sub != 2),
        "A's message reached B's subscriber: {frames:?}"
    );
    cluster.send(publisher, publish(&b, 2, "for b"));
    cluster.pump();
    assert_eq!(messages(&cluster.take_conn(subscriber)), vec![(2, 1)]);
}

#[test]
fn owner_local_subscriber_gets_messages_synchronously() {
    let mut cluster = Cluster::new(1, EngineConfig::default());
    let t = topic("solo");
    let publisher = cluster.connect(0);
    let subscriber = cluster.connect(0);
    cluster.send(subscriber, subscribe(&t, 1, 1));
    assert_eq!(sub_ok_start(&cluster.take_conn(subscriber), 1), Some(0));
    cluster.send(publisher, publish(&t, 1, "now"));
    assert_eq!(messages(&cluster.take_conn(subscriber)), vec![(1, 1)]);
}

#[test]
fn request_errors_are_typed_and_keep_the_connection() {
    let mut cluster = Cluster::new(1, EngineConfig::default());
    let t = topic("errs");
    let client = cluster.connect(0);
    cluster.send(client, subscribe(&t, 1, 5));
    assert_eq!(cluster.send(client, subscribe(&t, 2, 5)), Flow::Continue);
    let unsubscribe = Frame::Unsubscribe(Unsubscribe {
        request_id: 3,
        sub_id: 99,
    });
    assert_eq!(cluster.send(client, unsubscribe), Flow::Continue);
    let codes: Vec<(u32, Option<ErrorCode>)> = cluster
        .take_conn(client)
        .iter()
        .filter_map(|f| match f {
            OutFrame::Error(e) => Some((e.request_id, e.code())),
            _ => None,
        })
        .collect();
    assert_eq!(
        codes,
        vec![
            (2, Some(ErrorCode::DuplicateSubscription)),
            (3, Some(ErrorCode::UnknownSubscription))
        ]
    );
}

#[test]
fn subscription_limit_is_enforced() {
    let config = EngineConfig {
        max_subscriptions_per_conn: 2,
        ..EngineConfig::default()
    };
    let mut cluster = Cluster::new(1, config);
    let client = cluster.connect(0);
    for sub in 1..=3 {
        cluster.send(client, subscribe(&topic(&format!("s{sub}")), sub, sub));
    }
    let frames = cluster.take_conn(client);
    assert!(matches!(
        frames.last(),
        Some(OutFrame::Error(e)) if e.code() == Some(ErrorCode::TooManySubscriptions) && e.request_id == 3
    ));
}

#[test]
fn handshake_is_required_and_versioned() {
    let mut cluster = Cluster::new(1, EngineConfig::default());
    let conn = cluster.shards[0].open_conn();
    assert_eq!(
        cluster.shards[0].handle_frame(conn, Frame::Ping(1)),
        Flow::Close
    );
    let frames = cluster.take(0, conn);
    assert!(
        matches!(&frames[..], [OutFrame::Error(e)] if e.fatal && e.code() == Some(ErrorCode::HandshakeRequired))
    );

    let conn = cluster.shards[0].open_conn();
    let hello = Frame::Hello(Hello {
        version: 99,
        client_name: String::new(),
        credentials: bytes::Bytes::new(),
    });
    assert_eq!(cluster.shards[0].handle_frame(conn, hello), Flow::Close);
    let frames = cluster.take(0, conn);
    assert!(
        matches!(&frames[..], [OutFrame::Error(e)] if e.fatal && e.code() == Some(ErrorCode::UnsupportedVersion))
    );
}

#[test]
fn decode_errors_after_handshake_keep_the_connection_unless_framing_broke() {
    let mut cluster = Cluster::new(1, EngineConfig::default());
    let (shard, conn) = cluster.connect(0);
    let unknown = corebus_net::FrameError::UnknownOpcode { opcode: 0x7e };
    assert_eq!(
        cluster.shards[shard].handle_decode_error(conn, &unknown),
        Flow::Continue
    );
    let too_large = corebus_net::FrameError::TooLarge {
        len: 1 << 30,
        max: 1 << 20,
    };
    assert_eq!(
        cluster.shards[shard].handle_decode_error(conn, &too_large),
        Flow::Close
    );
    let frames = cluster.take(shard, conn);
    assert!(
        matches!(&frames[..], [OutFrame::Error(e)] if e.fatal && e.code() == Some(ErrorCode::FrameTooLarge))
    );
}

#[test]
fn resume_replays_exactly_the_missing_messages_across_shards() {
    let count = 2;
    let t = topic_owned_by(0, count);
    let mut cluster = Cluster::new(count, EngineConfig::default());
    let publisher = cluster.connect(0);
    let first = cluster.connect(1);
    cluster.send(first, subscribe(&t, 1, 1));
    cluster.pump();
    let (epoch, start) = sub_ok(&cluster.take_conn(first), 1).expect("SUB_OK");
    assert_eq!(start, 0);
    for i in 1..=10 {
        cluster.send(publisher, publish(&t, i, "m"));
    }
    cluster.pump();
    assert_eq!(messages(&cluster.take_conn(first)).len(), 10);
    // The client saw up to 4, lost its connection, and resumes at 5 on a new
    // connection while more is being published.
    cluster.shards[1].close_conn(first.1);
    let second = cluster.connect(1);
    cluster.send(second, resume(&t, 2, 1, epoch, 5));
    cluster.send(publisher, publish(&t, 11, "m"));
    cluster.pump();
    let frames = cluster.take_conn(second);
    assert_eq!(sub_ok(&frames, 1), Some((epoch, 4)));
    assert!(gaps(&frames).is_empty());
    let seqs: Vec<u64> = messages(&frames).into_iter().map(|(_, seq)| seq).collect();
    assert_eq!(seqs, (5..=11).collect::<Vec<_>>());
}

#[test]
fn resume_before_the_ring_gets_one_exact_discontinuity() {
    let config = EngineConfig {
        ring: crate::RingLimits {
            max_messages: 3,
            max_bytes: 1 << 20,
        },
        ..EngineConfig::default()
    };
    let mut cluster = Cluster::new(2, config);
    let t = topic_owned_by(1, 2);
    let publisher = cluster.connect(1);
    for i in 1..=10 {
        cluster.send(publisher, publish(&t, i, "m"));
    }
    let late = cluster.connect(0);
    cluster.send(late, resume(&t, 1, 9, 0, 2));
    cluster.pump();
    let frames = cluster.take_conn(late);
    assert_eq!(gaps(&frames), vec![(9, 1, 8)]);
    assert_eq!(messages(&frames), vec![(9, 8), (9, 9), (9, 10)]);
    // Discontinuity first, then the replay.
    assert!(matches!(frames[1], OutFrame::Discontinuity { .. }));
}

#[test]
fn resume_from_one_after_publishes_without_subscribers_replays_them_all() {
    let mut cluster = Cluster::new(2, EngineConfig::default());
    let t = topic_owned_by(0, 2);
    let publisher = cluster.connect(1);
    for i in 1..=10 {
        cluster.send(publisher, publish(&t, i, "m"));
    }
    cluster.pump();
    let reader = cluster.connect(1);
    cluster.send(reader, resume(&t, 1, 1, 0, 1));
    cluster.pump();
    let frames = cluster.take_conn(reader);
    assert!(gaps(&frames).is_empty());
    let seqs: Vec<u64> = messages(&frames).into_iter().map(|(_, seq)| seq).collect();
    assert_eq!(seqs, (1..=10).collect::<Vec<_>>());
}

#[test]
fn idle_topics_are_evicted_and_come_back_with_a_new_epoch() {
    let config = EngineConfig {
        topic_idle_evict_ms: 1000,
        ..EngineConfig::default()
    };
    let mut cluster = Cluster::new(1, config);
    let t = topic("ephemeral");
    let client = cluster.connect(0);
    cluster.send(client, subscribe(&t, 1, 1));
    let (old_epoch, _) = sub_ok(&cluster.take_conn(client), 1).expect("SUB_OK");
    cluster.send(client, publish(&t, 2, "a"));
    // Subscribed topics are never evicted, however idle.
    cluster.shards[0].tick(10_000);
    assert_eq!(cluster.shards[0].owned_topic_count(), 1);
    cluster.send(
        client,
        Frame::Unsubscribe(Unsubscribe {
            request_id: 3,
            sub_id: 1,
        }),
    );
    cluster.shards[0].tick(10_500);
    assert_eq!(
        cluster.shards[0].owned_topic_count(),
        1,
        "not idle long enough"
    );
    cluster.shards[0].tick(11_000);
    assert_eq!(cluster.shards[0].owned_topic_count(), 0);
    assert_eq!(cluster.shards[0].stats().topics_evicted, 1);
    cluster.take_conn(client);
    cluster.send(client, resume(&t, 4, 2, old_epoch, 2));
    let frames = cluster.take_conn(client);
    let (new_epoch, start) = sub_ok(&frames, 2).expect("SUB_OK");
    assert_ne!(new_epoch, old_epoch);
    assert_eq!(start, 0);
    assert_eq!(gaps(&frames), vec![(2, 1, 1)]);
}

#[test]
fn topic_memory_stays_within_budget_evicting_the_least_recently_active_unsubscribed_topics() {
    let budget = 256 << 10;
    let config = EngineConfig {
        topic_memory_bytes: budget,
        ..EngineConfig::default()
    };
    let mut cluster = Cluster::new(1, config);
    let client = cluster.connect(0);
    let watched = topic("watched");
    cluster.send(client, subscribe(&watched, 1, 1));
    cluster.send(client, publish(&watched, 2, "kept"));
    let payload = "x".repeat(100);
    // A client naming a new topic with every publish, a millisecond apart.
    for i in 0..5_000u32 {
        cluster.shards[0].tick(u64::from(i));
        cluster.send(
            client,
            publish(&topic(&format!("once-{i}")), 10 + i, &payload),
        );
        let held = cluster.shards[0].metrics().topic_memory as usize;
        assert!(
            held <= budget,
            "{held} bytes held after publish {i}, over {budget}"
        );
        cluster.take_conn(client);
    }
    let shard = &cluster.shards[0];
    let evicted = shard.stats().topics_evicted_for_memory;
    assert!(evicted > 3_000, "only {evicted} topics evicted");
    assert_eq!(shard.owned_topic_count() as u64, 5_001 - evicted);
    assert!(
        shard.owned.contains_key(&watched),
        "a subscribed topic stays"
    );
    assert!(
        shard.owned.contains_key(&topic("once-4999")),
        "the newest stays"
    );
    assert!(
        !shard.owned.contains_key(&topic("once-0")),
        "the oldest goes"
    );
    // Least recently active first: what is left is the newest run of names.
    let oldest_left = (0..5_000)
        .find(|i| shard.owned.contains_key(&topic(&format!("once-{i}"))))
        .expect("some are left");
    assert!((oldest_left..5_000).all(|i| shard.owned.contains_key(&topic(&format!("once-{i}")))));
    // The count kept is the sum the topics report.
    let sum: usize = shard.owned.values().map(|t| t.retained()).sum();
    assert_eq!(shard.metrics().topic_memory as usize, sum);
    // An evicted topic comes back as a new incarnation, like an idle one.
    cluster.send(client, subscribe(&topic("once-0"), 20_000, 2));
    assert_eq!(sub_ok_start(&cluster.take_conn(client), 2), Some(0));
}

#[test]
fn over_budget_with_every_topic_subscribed_the_rings_shrink_and_a_resume_reports_the_gap() {
    let budget = 64 << 10;
    let config = EngineConfig {
        topic_memory_bytes: budget,
        ..EngineConfig::default()
    };
    let mut cluster = Cluster::new(1, config);
    let client = cluster.connect(0);
    let topics: Vec<TopicKey> = (0..4).map(|i| topic(&format!("busy-{i}"))).collect();
    for (i, t) in topics.iter().enumerate() {
        cluster.send(client, subscribe(t, i as u32, i as u32));
    }
    let payload = "y".repeat(100);
    let mut request = 100;
    let mut live: Vec<(u32, u64)> = Vec::new();
    for _ in 0..1_000 {
        for t in &topics {
            request += 1;
            cluster.send(client, publish(t, request, &payload));
        }
        let held = cluster.shards[0].metrics().topic_memory as usize;
        assert!(held <= budget, "{held} bytes held, over {budget}");
        live.extend(messages(&cluster.take_conn(client)));
    }
    // Live subscribers lose nothing: the rings only serve resumes.
    for sub in 0..4 {
        let seqs: Vec<u64> = live
            .iter()
            .filter(|(s, _)| *s == sub)
            .map(|(_, q)| *q)
            .collect();
        assert_eq!(seqs, (1..=1_000).collect::<Vec<_>>(), "subscription {sub}");
    }
    let shard = &cluster.shards[0];
    assert_eq!(
        shard.owned_topic_count(),
        4,
        "subscribed topics are never evicted"
    );
    assert_eq!(shard.stats().topics_evicted_for_memory, 0);
    assert!(shard.stats().replay_messages_trimmed > 0);
    let ring = &shard.owned[&topics[0]];
    let (epoch, first) = (ring.epoch(), ring.first_retained());
    assert!(first > 1 && ring.ring_len() > 0, "trimmed, not emptied");
    // A resume from the start: the gap up to what the ring holds, then it.
    cluster.send(client, resume(&topics[0], 9_000, 50, epoch, 1));
    let frames = cluster.take_conn(client);
    assert_eq!(gaps(&frames), vec![(50, 0, first)]);
    let replayed: Vec<u64> = messages(&frames)
        .into_iter()
        .filter(|(sub, _)| *sub == 50)
        .map(|(_, seq)| seq)
        .collect();
    assert_eq!(replayed, (first..=1_000).collect::<Vec<_>>());
}

#[test]
fn drop_policy_reports_the_exact_lost_range_once_drained() {
    let config = EngineConfig {
        outbox_limit_bytes: 1000,
        ..EngineConfig::default()
    };
    let mut cluster = Cluster::new(1, config);
    let t = topic("firehose");
    let publisher = cluster.connect(0);
    let slow = cluster.connect(0);
    let healthy = cluster.connect(0);
    cluster.send(slow, subscribe(&t, 1, 5));
    cluster.send(healthy, subscribe(&t, 1, 6));
    cluster.take_conn(slow);
    cluster.take_conn(healthy);
    let payload = "x".repeat(75); // 100 bytes on the wire with its header
    let mut healthy_got = Vec::new();
    for i in 1..=30 {
        cluster.send(publisher, publish(&t, i, &payload));
        cluster.take_conn(publisher);
        healthy_got.extend(messages(&cluster.take_conn(healthy)));
    }
    assert_eq!(healthy_got.len(), 30, "other subscribers are unaffected");
    // The slow one holds 10 (1000 bytes); 11..=30 were dropped.
    let frames = cluster.take_conn(slow);
    assert_eq!(messages(&frames).len(), 10);
    assert_eq!(cluster.shards[0].stats().messages_dropped, 20);
    cluster.shards[0].conn_drained(slow.1, 0);
    cluster.send(publisher, publish(&t, 31, &payload));
    let frames = cluster.take_conn(slow);
    assert_eq!(gaps(&frames), vec![(5, 10, 31)]);
    assert_eq!(messages(&frames), vec![(5, 31)]);
}

#[test]
fn a_lossy_subscription_resumes_with_a_discontinuity_before_its_next_message() {
    let config = EngineConfig {
        outbox_limit_bytes: 1000,
        ..EngineConfig::default()
    };
    let mut cluster = Cluster::new(1, config);
    let t = topic("burst");
    let publisher = cluster.connect(0);
    let slow = cluster.connect(0);
    cluster.send(slow, subscribe(&t, 1, 5));
    cluster.take_conn(slow);
    let payload = "x".repeat(75);
    for i in 1..=15 {
        cluster.send(publisher, publish(&t, i, &payload));
    }
    // The client reads everything queued; the next delivery finds room.
    assert_eq!(messages(&cluster.take_conn(slow)).len(), 10);
    cluster.send(publisher, publish(&t, 16, &payload));
    let frames = cluster.take_conn(slow);
    assert_eq!(gaps(&frames), vec![(5, 10, 16)]);
    assert!(matches!(
        frames[..],
        [
            OutFrame::Discontinuity { .. },
            OutFrame::Message { seq: 16, .. }
        ]
    ));
}

#[test]
fn disconnect_policy_closes_the_slow_consumer() {
    let config = EngineConfig {
        outbox_limit_bytes: 1000,
        slow_consumer: crate::SlowConsumerPolicy::Disconnect,
        ..EngineConfig::default()
    };
    let mut cluster = Cluster::new(1, config);
    let t = topic("strict");
    let publisher = cluster.connect(0);
    let slow = cluster.connect(0);
    cluster.send(slow, subscribe(&t, 1, 5));
    cluster.take_conn(slow);
    for i in 1..=20 {
        cluster.send(publisher, publish(&t, i, &"x".repeat(75)));
    }
    let frames = cluster.take_conn(slow);
    assert!(
        matches!(&frames[..], [OutFrame::Error(e)] if e.fatal && e.code() == Some(ErrorCode::SlowConsumer))
    );
}

#[test]
fn resume_survives_the_last_live_subscriber_leaving_meanwhile() {
    let count = 2;
    let t = topic_owned_by(0, count);
    let mut cluster = Cluster::new(count, EngineConfig::default());
    let publisher = cluster.connect(0);
    let live = cluster.connect(1);
    cluster.send(live, subscribe(&t, 1, 1));
    cluster.pump();
    cluster.send(publisher, publish(&t, 1, "a"));
    cluster.pump();
    let resumer = cluster.connect(1);
    cluster.send(resumer, resume(&t, 1, 2, 0, 1));
    // The only live subscriber leaves before the owner answers the resume.
    cluster.shards[1].close_conn(live.1);
    cluster.pump();
    cluster.send(publisher, publish(&t, 2, "b"));
    cluster.pump();
    let frames = cluster.take_conn(resumer);
    let seqs: Vec<u64> = messages(&frames).into_iter().map(|(_, seq)| seq).collect();
    assert_eq!(seqs, vec![1, 2], "replay, then live delivery still flows");
}

#[test]
fn silent_connections_get_a_ping_then_are_closed() {
    let config = EngineConfig {
        heartbeat_interval_ms: 100,
        heartbeat_timeout_ms: 300,
        ..EngineConfig::default()
    };
    let mut cluster = Cluster::new(1, config);
    let client = cluster.connect(0);
    cluster.shards[0].tick(150);
    assert!(matches!(cluster.take_conn(client)[..], [OutFrame::Ping(_)]));
    cluster.shards[0].tick(200);
    assert!(cluster.take_conn(client).is_empty(), "one ping per silence");
    // Input at (coarse) time 200 resets the silence.
    cluster.shards[0].note_input(client.1, 1);
    cluster.shards[0].tick(250);
    assert!(
        cluster.take_conn(client).is_empty(),
        "input resets the clock"
    );
    cluster.shards[0].tick(400);
    assert!(matches!(cluster.take_conn(client)[..], [OutFrame::Ping(_)]));
    cluster.shards[0].tick(500);
    let frames = cluster.take_conn(client);
    assert!(
        matches!(&frames[..], [OutFrame::Error(e)] if e.fatal && e.code() == Some(ErrorCode::IdleTimeout))
    );
}

#[test]
fn drain_says_goaway_and_stops_queueing() {
    let mut cluster = Cluster::new(1, EngineConfig::default());
    let t = topic("bye");
    let publisher = cluster.connect(0);
    let subscriber = cluster.connect(0);
    cluster.send(subscriber, subscribe(&t, 1, 1));
    cluster.send(publisher, publish(&t, 1, "before"));
    cluster.shards[0].begin_drain(10_000);
    let frames = cluster.take_conn(subscriber);
    assert!(matches!(
        frames.last(),
        Some(OutFrame::GoAway {
            drain_ms: 10_000,
            ..
        })
    ));
    assert_eq!(
        messages(&frames),
        vec![(1, 1)],
        "what was queued is still flushed"
    );
    assert!(cluster.shards[0]
        .outbox_mut(subscriber.1)
        .expect("open")
        .is_closing());
    assert_eq!(
        cluster.send(publisher, publish(&t, 2, "after")),
        Flow::Close
    );
    let metrics = cluster.shards[0].metrics();
    assert_eq!(
        metrics.subscriptions, 0,
        "drained connections hold no subscriptions"
    );
    assert_eq!(metrics.connections, 2, "until their writers close them");
}

mod auth {
    use std::sync::Arc;

    use super::*;
    use crate::auth::{AuthError, Authenticator, Grant, Permissions, Rule, TopicPattern};

    /// Credentials are looked up by name: "pub-only", "sub-only", "prefix",
    /// "root", "expiring" (expires at Unix ms 1), anything else is refused.
    #[derive(Debug)]
    struct TestAuth;

    fn rule(topic: TopicPattern, publish: bool, subscribe: bool) -> Rule {
        Rule {
            namespace: "test".into(),
            topic,
            publish,
            subscribe,
        }
    }

    impl Authenticator for TestAuth {
        fn authenticate(&self, credentials: &[u8], _now_ms: u64) -> Result<Grant, AuthError> {
            let exact = |p, s| rule(TopicPattern::Exact("t".into()), p, s);
            let (permissions, expires_at_ms) = match credentials {
                b"pub-only" => (
                    Permissions {
                        superuser: false,
                        rules: vec![exact(true, false)],
                    },
                    None,
                ),
                b"sub-only" => (
                    Permissions {
                        superuser: false,
                        rules: vec![exact(false, true)],
                    },
                    None,
                ),
                b"prefix" => (
                    Permissions {
                        superuser: false,
                        rules: vec![rule(TopicPattern::Prefix("user-".into()), true, true)],
                    },
                    None,
                ),
                b"root" => (Permissions::all(), None),
                b"expiring" => (Permissions::all(), Some(1)),
                b"" => return Err(AuthError::Missing),
                _ => return Err(AuthError::Invalid("unknown key".into())),
            };
            Ok(Grant {
                identity: String::from_utf8_lossy(credentials).into_owned(),
                permissions: Arc::new(permissions),
                expires_at_ms,
            })
        }

        fn mint(&self, claims: &str, ttl_secs: u32, _now_ms: u64) -> Result<String, AuthError> {
            Ok(format!("token({claims},{ttl_secs})"))
        }
    }

    fn shard(config: EngineConfig) -> Shard {
        Shard::new(0, 1, config, 3).with_authenticator(Arc::new(TestAuth))
    }

    fn hello(credentials: &'static [u8]) -> Frame {
        Frame::Hello(Hello {
            version: corebus_net::PROTOCOL_VERSION,
            client_name: String::new(),
            credentials: Bytes::from_static(credentials),
        })
    }

    fn take(shard: &mut Shard, conn: ConnId) -> Vec<OutFrame> {
        let mut frames = Vec::new();
        if let Some(outbox) = shard.outbox_mut(conn) {
            outbox.drain_into(&mut frames);
        }
        frames
    }

    fn login(shard: &mut Shard, credentials: &'static [u8]) -> ConnId {
        let conn = shard.open_conn();
        assert_eq!(shard.handle_frame(conn, hello(credentials)), Flow::Continue);
        assert!(matches!(take(shard, conn)[..], [OutFrame::Welcome { .. }]));
        conn
    }

    fn error_codes(frames: &[OutFrame]) -> Vec<(u32, Option<ErrorCode>, bool)> {
        frames
            .iter()
            .filter_map(|f| match f {
                OutFrame::Error(e) => Some((e.request_id, e.code(), e.fatal)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn missing_or_unknown_credentials_close_the_connection() {
        let mut shard = shard(EngineConfig::default());
        for credentials in [&b""[..], b"wrong"] {
            let conn = shard.open_conn();
            let frame = Frame::Hello(Hello {
                version: corebus_net::PROTOCOL_VERSION,
                client_name: String::new(),
                credentials: Bytes::copy_from_slice(credentials),
            });
            assert_eq!(shard.handle_frame(conn, frame), Flow::Close);
            assert_eq!(
                error_codes(&take(&mut shard, conn)),
                vec![(0, Some(ErrorCode::Unauthorized), true)]
            );
        }
        assert_eq!(shard.stats().auth_failures, 2);
    }

    #[test]
    fn permission_matrix_is_enforced_and_denials_keep_the_connection() {
        let mut shard = shard(EngineConfig::default());
        let t = TopicKey::from_strs("test", "t").expect("valid");
        let other_topic = TopicKey::from_strs("test", "u").expect("valid");
        let other_ns = TopicKey::from_strs("prod", "t").expect("valid");
        let user = TopicKey::from_strs("test", "user-9").expect("valid");
        // (credentials, topic, may publish, may subscribe)
        let matrix = [
            (&b"pub-only"[..], &t, true, false),
            (b"pub-only", &other_topic, false, false),
            (b"pub-only", &other_ns, false, false),
            (b"sub-only", &t, false, true),
            (b"sub-only", &other_ns, false, false),
            (b"prefix", &user, true, true),
            (b"prefix", &t, false, false),
            (b"root", &other_ns, true, true),
        ];
        for (credentials, topic, may_publish, may_subscribe) in matrix {
            let conn = shard.open_conn();
            let frame = Frame::Hello(Hello {
                version: corebus_net::PROTOCOL_VERSION,
                client_name: String::new(),
                credentials: Bytes::copy_from_slice(credentials),
            });
            shard.handle_frame(conn, frame);
            take(&mut shard, conn);
            assert_eq!(
                shard.handle_frame(conn, publish(topic, 1, "x")),
                Flow::Continue
            );
            assert_eq!(
                shard.handle_frame(conn, subscribe(topic, 2, 1)),
                Flow::Continue
            );
            let frames = take(&mut shard, conn);
            let denied: Vec<u32> = error_codes(&frames)
                .into_iter()
                .map(|(request, code, fatal)| {
                    assert_eq!((code, fatal), (Some(ErrorCode::Forbidden), false));
                    request
                })
                .collect();
            let who = String::from_utf8_lossy(credentials);
            assert_eq!(denied.contains(&1), !may_publish, "{who} publish {topic}");
            assert_eq!(
                denied.contains(&2),
                !may_subscribe,
                "{who} subscribe {topic}"
            );
            let acked = frames.iter().any(|f| matches!(f, OutFrame::PubAck { .. }));
            assert_eq!(acked, may_publish, "{who} publish {topic} acked");
            shard.close_conn(conn);
        }
    }

    #[test]
    fn only_superusers_mint_tokens() {
        let mut shard = shard(EngineConfig::default());
        let request = || {
            Frame::TokenRequest(corebus_net::TokenRequest {
                request_id: 4,
                ttl_secs: 60,
                claims: "{}".into(),
            })
        };
        let root = login(&mut shard, b"root");
        shard.handle_frame(root, request());
        assert!(matches!(
            &take(&mut shard, root)[..],
            [OutFrame::Token { request_id: 4, token }] if token == "token({},60)"
        ));
        let plain = login(&mut shard, b"sub-only");
        shard.handle_frame(plain, request());
        assert_eq!(
            error_codes(&take(&mut shard, plain)),
            vec![(4, Some(ErrorCode::Forbidden), false)]
        );
        let webhook = Frame::WebhookRequest(corebus_net::WebhookRequest {
            request_id: 5,
            command: r#"{"op":"list"}"#.into(),
        });
        shard.handle_frame(plain, webhook);
        assert_eq!(
            error_codes(&take(&mut shard, plain)),
            vec![(5, Some(ErrorCode::Forbidden), false)]
        );
    }

    #[test]
    fn an_expired_grant_closes_a_live_connection() {
        let mut shard = shard(EngineConfig::default());
        let conn = login(&mut shard, b"expiring");
        shard.tick(1);
        assert_eq!(
            error_codes(&take(&mut shard, conn)),
            vec![(0, Some(ErrorCode::TokenExpired), true)]
        );
    }

    #[test]
    fn connections_without_hello_are_closed_at_the_handshake_deadline() {
        let config = EngineConfig {
            handshake_timeout_ms: 100,
            ..EngineConfig::default()
        };
        let mut shard = shard(config);
        let lurker = shard.open_conn();
        let member = login(&mut shard, b"root");
        shard.tick(50);
        assert!(take(&mut shard, lurker).is_empty());
        shard.tick(100);
        assert_eq!(
            error_codes(&take(&mut shard, lurker)),
            vec![(0, Some(ErrorCode::HandshakeTimeout), true)]
        );
        assert!(
            take(&mut shard, member).is_empty(),
            "authenticated connections stay"
        );
    }

    #[test]
    fn in_flight_publishes_are_bounded_per_connection() {
        let config = EngineConfig {
            max_in_flight_per_conn: 2,
            ..EngineConfig::default()
        };
        // Two shards, so acks wait for the owner's answer over the mesh.
        let mut cluster = Cluster::new(2, config);
        let t = topic_owned_by(1, 2);
        let publisher = cluster.connect(0);
        for request in 1..=3 {
            cluster.send(publisher, publish(&t, request, "x"));
        }
        let frames = cluster.take_conn(publisher);
        assert_eq!(
            error_codes(&frames),
            vec![(3, Some(ErrorCode::TooManyInFlight), false)]
        );
        cluster.pump();
        let acks = cluster
            .take_conn(publisher)
            .iter()
            .filter(|f| matches!(f, OutFrame::PubAck { .. }))
            .count();
        assert_eq!(acks, 2);
        cluster.send(publisher, publish(&t, 4, "x"));
        cluster.pump();
        assert!(matches!(
            cluster.take_conn(publisher)[..],
            [OutFrame::PubAck {
                request_id: 4,
                seq: 3
            }]
        ));
    }
}

mod webhooks {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Mutex;

    use super::*;
    use crate::webhooks::{WebhookCommandError, WebhookMessage, WebhookSink};

    /// Wants topics whose name starts with `wanted`; records what it is offered.
    #[derive(Debug, Default)]
    struct Recorder {
        generation: AtomicU64,
        wanted: Mutex<String>,
        offered: Mutex<Vec<WebhookMessage>>,
    }

    impl Recorder {
        fn want(&self, prefix: &str) {
            *self.wanted.lock().expect("not poisoned") = prefix.into();
            self.generation.fetch_add(1, Ordering::SeqCst);
        }

        fn offered(&self) -> Vec<(String, Seq, String)> {
            self.offered
                .lock()
                .expect("not poisoned")
                .iter()
                .map(|m| {
                    let topic = m.topic.topic().to_owned();
                    let payload = String::from_utf8_lossy(&m.payload).into_owned();
                    (topic, m.seq, payload)
                })
                .collect()
        }
    }

    impl WebhookSink for Recorder {
        fn generation(&self) -> u64 {
            self.generation.load(Ordering::SeqCst)
        }

        fn wants(&self, topic: &TopicKey) -> bool {
            let wanted = self.wanted.lock().expect("not poisoned");
            !wanted.is_empty() && topic.topic().starts_with(wanted.as_str())
        }

        fn offer(&self, message: WebhookMessage) {
            self.offered.lock().expect("not poisoned").push(message);
        }

        fn command(&self, command: &str) -> Result<String, WebhookCommandError> {
            match command {
                "ok" => Ok("{\"done\":true}".into()),
                _ => Err(WebhookCommandError::Invalid(format!(
                    "bad command {command}"
                ))),
            }
        }
    }

    fn cluster(recorder: &Arc<Recorder>) -> Cluster {
        let mut cluster = Cluster::new(2, EngineConfig::default());
        cluster.shards = std::mem::take(&mut cluster.shards)
            .into_iter()
            .map(|shard| shard.with_webhooks(recorder.clone()))
            .collect();
        cluster
    }

    fn named(prefix: &str, owner: ShardId) -> TopicKey {
        (0..)
            .map(|i| topic(&format!("{prefix}{i}")))
            .find(|t| routing::owner(t, 2) == owner)
            .expect("some topic hashes to every shard")
    }

    #[test]
    fn wanted_topics_are_offered_once_per_message_by_their_owner() {
        let recorder = Arc::new(Recorder::default());
        let mut cluster = cluster(&recorder);
        let hooked = named("hook-", 1);
        let other = named("plain-", 1);
        // Subscribers on both shards: the owner must still offer each message once.
        let subs = [cluster.connect(0), cluster.connect(1)];
        for (i, sub) in subs.into_iter().enumerate() {
            cluster.send(sub, subscribe(&hooked, 1, i as u32));
        }
        cluster.pump();
        let publisher = cluster.connect(0);
        cluster.send(publisher, publish(&hooked, 1, "before"));
        cluster.pump();
        assert!(recorder.offered().is_empty(), "nothing is wanted yet");

        recorder.want("hook-");
        for (i, text) in ["a", "b", "c"].into_iter().enumerate() {
            cluster.send(publisher, publish(&hooked, 2 + i as u32, text));
            cluster.send(publisher, publish(&other, 10 + i as u32, text));
        }
        cluster.pump();
        let name = hooked.topic().to_owned();
        assert_eq!(
            recorder.offered(),
            vec![
                (name.clone(), 2, "a".into()),
                (name.clone(), 3, "b".into()),
                (name, 4, "c".into()),
            ]
        );
        let offered = recorder.offered.lock().expect("not poisoned")[0].clone();
        assert!(offered.epoch != 0 && offered.published_ms > 0);

        recorder.want("nothing-");
        cluster.send(publisher, publish(&hooked, 20, "d"));
        cluster.pump();
        assert_eq!(
            recorder.offered().len(),
            3,
            "a new generation is re-evaluated"
        );
    }

    #[test]
    fn commands_go_to_the_sink_and_refusals_are_invalid_requests() {
        let recorder = Arc::new(Recorder::default());
        let mut cluster = cluster(&recorder);
        let admin = cluster.connect(0);
        let request = |request_id, command: &str| {
            Frame::WebhookRequest(corebus_net::WebhookRequest {
                request_id,
                command: command.into(),
            })
        };
        cluster.send(admin, request(1, "ok"));
        cluster.send(admin, request(2, "nonsense"));
        let frames = cluster.take_conn(admin);
        assert!(matches!(
            &frames[..],
            [
                OutFrame::WebhookReply { request_id: 1, result },
                OutFrame::Error(error),
            ] if result == "{\"done\":true}"
                && error.request_id == 2
                && error.code() == Some(ErrorCode::InvalidRequest)
                && !error.fatal
        ));
    }
}
