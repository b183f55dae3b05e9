//! Delivery through a real broker: cross-shard routing, order, fan-out,
//! unsubscribe. Every wait is bounded.

use std::time::Duration;

use corebus_client::Subscription;
use corebus_tests::{topic_owned_by, Broker};
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(60);

/// Receives `count` messages and checks they continue `after` with no gap;
/// returns them.
async fn expect_messages(
    sub: &mut Subscription,
    after: u64,
    count: u64,
) -> Vec<corebus_client::Message> {
    let mut messages = Vec::with_capacity(count as usize);
    for expected in after + 1..=after + count {
        let message = timeout(WAIT, sub.next_message())
            .await
            .expect("message within the deadline")
            .expect("stream still open")
            .expect("no error");
        assert_eq!(message.seq, expected, "gap or duplicate");
        messages.push(message);
    }
    messages
}

/// Receives `count` messages and checks they continue `after` with no gap.
async fn expect_consecutive(sub: &mut Subscription, after: u64, count: u64) -> Vec<bytes::Bytes> {
    let messages = expect_messages(sub, after, count).await;
    messages
        .into_iter()
        .map(|message| message.payload)
        .collect()
}

/// A 4-shard broker with a topic owned by shard 3, subscribed to from shard
/// 1, and a publisher on shard 2: every message crosses two shards.
struct ThreeShards {
    _broker: Broker,
    /// Keeps the subscription's connection open.
    _subscriber: corebus_client::Client,
    topic: String,
    publisher: corebus_client::Client,
    sub: Subscription,
}

async fn three_shards(prefix: &str) -> ThreeShards {
    let broker = Broker::start(4);
    let topic = topic_owned_by(3, broker.shards(), prefix);
    let subscriber = broker.client_on(1).await;
    let publisher = broker.client_on(2).await;
    let sub = subscriber
        .subscribe("test", &topic)
        .await
        .expect("subscribes");
    ThreeShards {
        _broker: broker,
        _subscriber: subscriber,
        topic,
        publisher,
        sub,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publisher_subscriber_and_owner_on_three_different_shards() {
    // Bound whole: the broker and the subscriber's client must outlive the test.
    let setup = three_shards("cross").await;
    let (topic, publisher, mut sub) = (&setup.topic, &setup.publisher, setup.sub);
    assert_eq!(sub.start_after(), 0);
    for i in 1..=500u64 {
        let seq = publisher
            .publish("test", topic, format!("m{i}"))
            .await
            .expect("publishes");
        assert_eq!(
            seq, i,
            "per-topic sequence numbers start at 1 and are consecutive"
        );
    }
    let payloads = expect_consecutive(&mut sub, 0, 500).await;
    for (i, payload) in payloads.iter().enumerate() {
        assert_eq!(&payload[..], format!("m{}", i + 1).as_bytes());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_thousand_messages_in_order_without_loss() {
    let broker = Broker::start(2);
    let topic = topic_owned_by(0, broker.shards(), "bulk");
    let subscriber = broker.client_on(1).await;
    let publisher = broker.client_on(0).await;
    let mut sub = subscriber
        .subscribe("test", &topic)
        .await
        .expect("subscribes");
    let start = sub.start_after();
    const COUNT: u64 = 100_000;
    let producer = tokio::spawn(async move {
        let mut acks = std::collections::VecDeque::new();
        for i in 0..COUNT {
            let ack = publisher
                .start_publish("test", &topic, i.to_be_bytes().to_vec())
                .await
                .expect("queued");
            acks.push_back(ack);
            if acks.len() >= 2048 {
                acks.pop_front().expect("non-empty").await.expect("acked");
            }
        }
        let mut last = 0;
        for ack in acks {
            last = ack.await.expect("acked");
        }
        last
    });
    let payloads = expect_consecutive(&mut sub, start, COUNT).await;
    for (i, payload) in payloads.iter().enumerate() {
        assert_eq!(
            &payload[..],
            &(i as u64).to_be_bytes(),
            "payload {i} intact"
        );
    }
    let last = timeout(WAIT, producer)
        .await
        .expect("producer finishes")
        .expect("no panic");
    assert_eq!(last, start + COUNT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_reaches_subscribers_on_every_shard() {
    let broker = Broker::start(4);
    let topic = topic_owned_by(2, broker.shards(), "fan");
    let mut subs = Vec::new();
    let mut clients = Vec::new();
    for shard in 0..4u16 {
        for _ in 0..4 {
            let client = broker.client_on(shard).await;
            subs.push(client.subscribe("test", &topic).await.expect("subscribes"));
            clients.push(client);
        }
    }
    let publisher = broker.client_on(0).await;
    for i in 0..1000u32 {
        // The ack is not needed: the final publish below is acked after these.
        let _unawaited = publisher
            .start_publish("test", &topic, i.to_be_bytes().to_vec())
            .await
            .expect("queued");
    }
    let last = publisher
        .publish("test", &topic, "end")
        .await
        .expect("acked");
    assert_eq!(last, 1001);
    for sub in &mut subs {
        let after = sub.start_after();
        assert_eq!(after, 0, "all subscribed before the first publish");
        let payloads = expect_consecutive(sub, after, 1001).await;
        assert_eq!(&payloads[1000][..], b"end");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_topics_keep_independent_sequences() {
    let broker = Broker::start(2);
    let publisher = broker.client_on(0).await;
    let subscriber = broker.client_on(1).await;
    let mut subs = Vec::new();
    for t in 0..20 {
        subs.push(
            subscriber
                .subscribe("test", &format!("topic-{t}"))
                .await
                .expect("subscribes"),
        );
    }
    for round in 0..50 {
        for t in 0..20 {
            let _unawaited = publisher
                .start_publish("test", &format!("topic-{t}"), format!("{t}:{round}"))
                .await
                .expect("queued");
        }
    }
    for (t, sub) in subs.iter_mut().enumerate() {
        let messages = expect_messages(sub, 0, 50).await;
        for (round, message) in messages.iter().enumerate() {
            assert_eq!(&message.payload[..], format!("{t}:{round}").as_bytes());
            // Each message names its own topic, on one connection of twenty.
            assert_eq!(message.namespace(), "test");
            assert_eq!(message.topic(), format!("topic-{t}"));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_subscriber_starts_exactly_after_its_start_point() {
    let broker = Broker::start(2);
    let topic = topic_owned_by(1, broker.shards(), "late");
    let publisher = broker.client_on(0).await;
    for _ in 0..10 {
        publisher
            .publish("test", &topic, "before")
            .await
            .expect("acked");
    }
    let subscriber = broker.client_on(0).await;
    let mut sub = subscriber
        .subscribe("test", &topic)
        .await
        .expect("subscribes");
    assert_eq!(
        sub.start_after(),
        10,
        "nothing before the start point is delivered"
    );
    publisher
        .publish("test", &topic, "after")
        .await
        .expect("acked");
    let payloads = expect_consecutive(&mut sub, 10, 1).await;
    assert_eq!(&payloads[0][..], b"after");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacked_publishes_are_sequenced_in_order_across_shards() {
    // Bound whole: the broker and the subscriber's client must outlive the test.
    let setup = three_shards("unacked").await;
    let (topic, publisher, mut sub) = (&setup.topic, &setup.publisher, setup.sub);
    for i in 1..=2000u64 {
        publisher
            .publish_unacked("test", topic, format!("m{i}"))
            .await
            .expect("queued");
    }
    // An acknowledged publish after them is sequenced after all of them.
    let seq = publisher
        .publish("test", topic, "acked")
        .await
        .expect("publishes");
    assert_eq!(seq, 2001);
    let payloads = expect_consecutive(&mut sub, 0, 2001).await;
    for (i, payload) in payloads[..2000].iter().enumerate() {
        assert_eq!(&payload[..], format!("m{}", i + 1).as_bytes());
    }
    assert_eq!(publisher.take_unacked_failures().count, 0);
}

/// `Client::builder()`: a server that does not answer is skipped for the
/// next one, and an address that does not resolve is an error naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_builder_tries_its_servers_in_turn() {
    let broker = Broker::start(1);
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a port")
        .to_string();
    let client = corebus_client::Client::builder()
        .server(dead.as_str())
        .server(broker.addr().to_string())
        .name("builder-test")
        .connect()
        .await
        .expect("the second server answers");
    let mut sub = client.subscribe("test", "built").await.expect("subscribes");
    client
        .publish("test", "built", "hi")
        .await
        .expect("published");
    let message = expect_messages(&mut sub, 0, 1).await.remove(0);
    assert_eq!((message.namespace(), message.topic()), ("test", "built"));

    let err = corebus_client::Client::builder()
        .server("no-such-host.invalid:7400")
        .connect()
        .await
        .expect_err("does not resolve");
    assert!(
        err.to_string().contains("no-such-host.invalid:7400"),
        "{err}"
    );
}
