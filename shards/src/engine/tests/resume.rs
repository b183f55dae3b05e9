//! Resuming: replay from the ring, gaps reported exactly once.

use super::*;

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
