//! Interest between shards: where deliveries start, and what happens when
//! subscribers come and go while messages and requests are in flight.

use super::*;

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
