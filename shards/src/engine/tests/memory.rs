//! Topic state over time: idle eviction and the topic memory budget.

use super::*;

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
fn nothing_kept_holds_the_read_buffer_a_large_payload_arrived_in() {
    // A payload is a slice of its publisher's read buffer. Whatever keeps a
    // large one (the ring, a queue on this shard or another) must hold a copy
    // of its own size, or it keeps the whole buffer alive while counting
    // only the slice.
    let mut cluster = Cluster::new(2, EngineConfig::default());
    let t = topic_owned_by(0, 2);
    let here = cluster.connect(0);
    let there = cluster.connect(1);
    cluster.send(here, subscribe(&t, 1, 1));
    cluster.send(there, subscribe(&t, 1, 1));
    cluster.pump();
    cluster.take_conn(here);
    cluster.take_conn(there);
    let mut read_buffer = vec![9u8; 64 << 10];
    read_buffer[100] = PayloadFormat::Plain.byte();
    let read_buffer = Bytes::from(read_buffer);
    let inside = |bytes: &Bytes| read_buffer.as_ptr_range().contains(&bytes.as_ptr());
    let large = read_buffer.slice(100..100 + crate::ring::COPY_MAX + 1);
    cluster.send(
        here,
        Frame::Publish(Publish {
            request_id: 2,
            ack: false,
            topic: t.clone(),
            body: Body::parse(large.clone(), "PUBLISH").expect("a plain body"),
        }),
    );
    cluster.pump();
    for conn in [here, there] {
        let delivered: Vec<Bytes> = cluster
            .take_conn(conn)
            .into_iter()
            .filter_map(|frame| match frame {
                OutFrame::Message { payload, .. } => Some(payload),
                _ => None,
            })
            .collect();
        assert_eq!(delivered, vec![large.clone()], "delivered once, intact");
        assert!(!inside(&delivered[0]), "a copy, not the read buffer");
    }
    let plan = cluster.shards[0].owned[&t].resume(corebus_net::ResumePoint {
        epoch: 0,
        next_seq: 1,
    });
    assert_eq!(plan.replay, vec![(1, large.clone())]);
    assert!(!inside(&plan.replay[0].1), "the ring keeps a copy");
}
