//! Pattern subscriptions through a real broker on four shards: every
//! matching topic, whichever shard owns it, reaches each pattern once per
//! message, with its concrete topic and that topic's own sequence; other
//! topics do not; a publish to a pattern and a resumed pattern are refused.

use std::collections::BTreeMap;
use std::time::Duration;

use corebus_client::{Client, Error, ErrorCode, NameError, ResumeFrom, Subscription};
use corebus_net::{Frame, PayloadFormat};
use corebus_tests::Broker;
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(30);

/// `count` messages from `sub`: (topic, seq, payload) in arrival order.
async fn take(sub: &mut Subscription, count: usize) -> Vec<(String, u64, String)> {
    let mut got = Vec::with_capacity(count);
    for _ in 0..count {
        let message = timeout(WAIT, sub.next_message())
            .await
            .expect("a message within the deadline")
            .expect("the stream is open")
            .expect("a message");
        assert_eq!(message.namespace(), "test");
        got.push((
            message.topic().to_owned(),
            message.seq,
            String::from_utf8_lossy(&message.payload).into_owned(),
        ));
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn patterns_receive_every_matching_topic_from_every_shard_in_each_topics_order() {
    let broker = Broker::start(4);
    let one_segment_client = broker.client_on(1).await;
    let trailing_client = broker.client_on(3).await;
    let mut one_segment = one_segment_client
        .subscribe("test", "orders/*")
        .await
        .expect("subscribes");
    let mut trailing = trailing_client
        .subscribe("test", "orders/>")
        .await
        .expect("subscribes");
    assert_eq!(one_segment.topic(), "orders/*");
    let publisher = Client::connect(broker.addr()).await.expect("connects");
    // Twelve topics, spread over the four shards by their hash, five
    // messages each, interleaved; and topics neither pattern matches.
    let topics: Vec<String> = (0..12).map(|i| format!("orders/t{i}")).collect();
    for round in 1..=5 {
        for topic in &topics {
            publisher
                .publish_unacked("test", topic, format!("{topic} #{round}"))
                .await
                .expect("queued");
        }
        publisher
            .publish_unacked("test", "orders/t0/deeper", format!("deep #{round}"))
            .await
            .expect("queued");
        publisher
            .publish_unacked("test", "invoices/t0", "no")
            .await
            .expect("queued");
    }
    publisher.ping().await.expect("everything sent was read");

    let mut per_topic: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for (topic, seq, payload) in take(&mut one_segment, 60).await {
        assert_eq!(
            payload,
            format!("{topic} #{seq}"),
            "each topic's own sequence"
        );
        per_topic.entry(topic).or_default().push(seq);
    }
    assert_eq!(per_topic.len(), 12);
    assert!(
        per_topic.values().all(|seqs| *seqs == vec![1, 2, 3, 4, 5]),
        "in order, once each: {per_topic:?}"
    );
    // The trailing wildcard also takes the deeper topic.
    let deep: Vec<_> = take(&mut trailing, 65)
        .await
        .into_iter()
        .filter(|(topic, _, _)| topic == "orders/t0/deeper")
        .map(|(_, seq, _)| seq)
        .collect();
    assert_eq!(deep, vec![1, 2, 3, 4, 5]);
    // Nothing else is on its way: a fresh message is the next item.
    publisher
        .publish("test", "orders/last", "last")
        .await
        .expect("acked");
    assert_eq!(take(&mut one_segment, 1).await[0].0, "orders/last");
    assert_eq!(take(&mut trailing, 1).await[0].0, "orders/last");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pattern_is_subscribed_to_never_published_to_and_does_not_resume() {
    let broker = Broker::start(2);
    let client = Client::connect(broker.addr()).await.expect("connects");
    // Refused by the client before anything is sent, and by the broker
    // when a client sends it anyway.
    assert!(matches!(
        client.publish("test", "orders/*", "x").await,
        Err(Error::InvalidName(NameError::Wildcard { .. }))
    ));
    let mut raw = broker.raw_on(0).await;
    let mut frame = bytes::BytesMut::new();
    corebus_net::encode_publish(
        &mut frame,
        4,
        true,
        b"test",
        b"orders/>",
        PayloadFormat::Plain,
        b"x",
    );
    raw.send_bytes(&frame).await;
    match timeout(WAIT, raw.recv()).await.expect("an answer") {
        Some(Frame::Error(error)) => {
            assert_eq!(
                (error.request_id, error.code()),
                (4, Some(ErrorCode::InvalidName))
            );
            assert!(!error.fatal);
        }
        other => panic!("expected ERROR invalid_name, got {other:?}"),
    }
    match client
        .subscribe_from("test", "orders/*", ResumeFrom::Seq(1))
        .await
    {
        Err(Error::Server { code, .. }) => assert_eq!(code, Some(ErrorCode::InvalidRequest)),
        other => panic!("a resumed pattern: {other:?}"),
    }
    assert!(matches!(
        client.subscribe("test", "orders/>/x").await,
        Err(Error::InvalidName(NameError::Wildcard { .. }))
    ));
    // `*` inside a segment is an ordinary character, published and
    // subscribed to as any other.
    let mut literal = client
        .subscribe("test", "orders/eu*")
        .await
        .expect("subscribes");
    client
        .publish("test", "orders/eu*", "star")
        .await
        .expect("acked");
    assert_eq!(take(&mut literal, 1).await[0].2, "star");
}
