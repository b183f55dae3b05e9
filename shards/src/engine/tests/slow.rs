//! Slow consumers under the drop and disconnect policies.

use super::*;

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
    let payload = "x".repeat(74); // 100 bytes on the wire with its header
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
    let payload = "x".repeat(74); // 100 bytes on the wire
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
