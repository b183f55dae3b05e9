//! Retained messages: kept by the topic's owner shard, sent to new
//! subscriptions by topic and by wildcard after the `SUBACK`, cleared by an
//! empty payload, under 5.0's retain handling and `retain_as_published`,
//! from wills too, and bounded.

use super::*;

/// Subscribes to one filter with its retain options; returns the codes.
async fn subscribe_with(
    client: &mut Mqtt,
    packet_id: u16,
    filter: &str,
    retain_as_published: bool,
    retain_handling: RetainHandling,
) -> Vec<u8> {
    client
        .send(&Packet::Subscribe(Subscribe {
            packet_id,
            properties: Properties::default(),
            filters: vec![Subscription {
                filter: MqttStr::new(filter).expect("a filter"),
                qos: QoS::ExactlyOnce,
                no_local: false,
                retain_as_published,
                retain_handling,
            }],
        }))
        .await;
    match client.next().await {
        Some(Packet::SubAck(ack)) => ack.codes,
        other => panic!("the SUBACK first, not {other:?}"),
    }
}

async fn publish_retained(client: &mut Mqtt, topic: &str, payload: &str, qos: QoS, id: u16) {
    client
        .send(&Packet::Publish(mqtt::Publish {
            dup: false,
            qos,
            retain: true,
            topic: MqttStr::new(topic).expect("a topic"),
            packet_id: (qos != QoS::AtMostOnce).then_some(id),
            properties: Properties::default(),
            payload: Bytes::copy_from_slice(payload.as_bytes()),
        }))
        .await;
    match qos {
        QoS::AtMostOnce => client.ping().await,
        QoS::AtLeastOnce => client.expect_ack(AckKind::PubAck, id, 0).await,
        QoS::ExactlyOnce => {
            client.expect_ack(AckKind::PubRec, id, 0).await;
            client.send(&ack(AckKind::PubRel, id)).await;
            client.expect_ack(AckKind::PubComp, id, 0).await;
        }
    }
}

/// A `PUBLISH` acknowledged as its QoS asks, as (topic, payload, retain).
async fn taken(client: &mut Mqtt, publish: mqtt::Publish) -> (String, String, bool) {
    match (publish.qos, publish.packet_id) {
        (QoS::AtLeastOnce, Some(id)) => client.send(&ack(AckKind::PubAck, id)).await,
        (QoS::ExactlyOnce, Some(id)) => client.send(&ack(AckKind::PubRec, id)).await,
        _ => {}
    }
    (
        publish.topic.as_str().to_owned(),
        String::from_utf8_lossy(&publish.payload).into_owned(),
        publish.retain,
    )
}

/// The `PUBLISH`es that come before a `PINGRESP`, as (topic, payload,
/// retain), sorted; each acknowledged as its QoS asks.
async fn publishes_until_ping(client: &mut Mqtt) -> Vec<(String, String, bool)> {
    client.send(&Packet::PingReq).await;
    let mut got = Vec::new();
    loop {
        match client.next().await {
            Some(Packet::PingResp) => break,
            Some(Packet::Publish(publish)) => got.push(taken(client, publish).await),
            other => panic!("a PUBLISH or PINGRESP, not {other:?}"),
        }
    }
    got.sort();
    got
}

/// The next `count` `PUBLISH`es, as [`publishes_until_ping`] gives them
/// (deliveries from other shards may come after a `PINGRESP`).
async fn publishes(client: &mut Mqtt, count: usize) -> Vec<(String, String, bool)> {
    let mut got = Vec::new();
    while got.len() < count {
        match client.next().await {
            Some(Packet::Publish(publish)) => got.push(taken(client, publish).await),
            other => panic!("a PUBLISH, not {other:?}"),
        }
    }
    got.sort();
    got
}

/// The retained messages a fresh subscription to `filter` gets (its
/// fetch is answered before the `PINGRESP` the engine sends after it:
/// retried a few times, since the owners answer through the mesh).
async fn retained_for(broker: &Broker, version: Version, filter: &str) -> Vec<(String, String)> {
    let (mut client, _) = Mqtt::connect(broker, version, "reader").await;
    subscribe_with(&mut client, 1, filter, false, RetainHandling::OnSubscribe).await;
    let mut got = Vec::new();
    for _ in 0..20 {
        for (topic, payload, retain) in publishes_until_ping(&mut client).await {
            assert!(retain, "{topic}: a retained message has the retain flag");
            got.push((topic, payload));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    got.sort();
    got
}

fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
    items
        .iter()
        .map(|(topic, payload)| (topic.to_string(), payload.to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_messages_reach_new_subscriptions_by_topic_and_wildcard_and_an_empty_one_clears() {
    let broker = mqtt_broker(2);
    for version in [Version::V311, Version::V5] {
        let (mut publisher, _) = Mqtt::connect(&broker, version, "pub").await;
        // A live subscriber sees the retained publishes without the flag.
        let (mut live, _) = Mqtt::connect(&broker, version, "live").await;
        subscribe_with(&mut live, 1, "r/#", false, RetainHandling::OnSubscribe).await;
        publish_retained(&mut publisher, "r/a", "first a", QoS::AtMostOnce, 1).await;
        publish_retained(&mut publisher, "r/a", "a", QoS::AtLeastOnce, 2).await;
        publish_retained(&mut publisher, "r/b", "b", QoS::ExactlyOnce, 3).await;
        publish_retained(&mut publisher, "r/c/d", "d", QoS::AtLeastOnce, 4).await;
        publish_retained(&mut publisher, "r", "r", QoS::AtMostOnce, 5).await;
        publisher
            .publish_confirmed("r/e", "not retained", QoS::AtLeastOnce, 6)
            .await;
        let seen = publishes(&mut live, 6).await;
        assert!(seen.iter().all(|(_, _, retain)| !retain), "{seen:?}");

        assert_eq!(
            retained_for(&broker, version, "r/+").await,
            pairs(&[("r/a", "a"), ("r/b", "b")]),
            "{version:?}: the last retained of each matching topic"
        );
        assert_eq!(
            retained_for(&broker, version, "r/#").await,
            pairs(&[("r", "r"), ("r/a", "a"), ("r/b", "b"), ("r/c/d", "d")]),
        );
        assert_eq!(
            retained_for(&broker, version, "r/c/d").await,
            pairs(&[("r/c/d", "d")])
        );
        // An empty retained publish clears the topic's.
        publish_retained(&mut publisher, "r/a", "", QoS::AtLeastOnce, 7).await;
        publish_retained(&mut publisher, "r/c/d", "", QoS::AtMostOnce, 8).await;
        publish_retained(&mut publisher, "r", "", QoS::AtMostOnce, 9).await;
        assert_eq!(
            retained_for(&broker, version, "r/#").await,
            pairs(&[("r/b", "b")])
        );
        publish_retained(&mut publisher, "r/b", "", QoS::AtMostOnce, 10).await;
        assert_eq!(retained_for(&broker, version, "#").await, []);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retain_handling_and_retain_as_published_are_honoured() {
    let broker = mqtt_broker(2);
    let (mut publisher, _) = Mqtt::connect(&broker, Version::V5, "pub").await;
    publish_retained(&mut publisher, "h/1", "kept", QoS::AtLeastOnce, 1).await;
    let (mut sub, _) = Mqtt::connect(&broker, Version::V5, "sub").await;
    let retained = |got: Vec<(String, String, bool)>| -> usize {
        got.iter().filter(|(_, _, retain)| *retain).count()
    };
    // 2: never.
    subscribe_with(&mut sub, 1, "h/+", false, RetainHandling::Never).await;
    assert_eq!(retained(publishes_until_ping(&mut sub).await), 0);
    // 1: only for a new subscription, which this is not.
    subscribe_with(&mut sub, 2, "h/+", false, RetainHandling::OnNewSubscribe).await;
    assert_eq!(retained(publishes_until_ping(&mut sub).await), 0);
    // 0: at every subscribe.
    subscribe_with(&mut sub, 3, "h/+", false, RetainHandling::OnSubscribe).await;
    assert_eq!(retained(publishes(&mut sub, 1).await), 1);
    // 1 for a new filter: sent.
    subscribe_with(&mut sub, 4, "h/1", false, RetainHandling::OnNewSubscribe).await;
    assert_eq!(retained(publishes(&mut sub, 1).await), 1);

    // retain_as_published: a live retained publish keeps its flag for the
    // filter that asked, and loses it for the one that did not.
    let (mut keeps, _) = Mqtt::connect(&broker, Version::V5, "keeps").await;
    subscribe_with(&mut keeps, 1, "live/x", true, RetainHandling::Never).await;
    let (mut clears, _) = Mqtt::connect(&broker, Version::V5, "clears").await;
    subscribe_with(&mut clears, 1, "live/x", false, RetainHandling::Never).await;
    publish_retained(&mut publisher, "live/x", "now", QoS::AtLeastOnce, 2).await;
    publisher
        .publish_confirmed("live/x", "plain", QoS::AtLeastOnce, 3)
        .await;
    let flags = |got: Vec<(String, String, bool)>| -> Vec<(String, bool)> {
        got.into_iter()
            .map(|(_, payload, retain)| (payload, retain))
            .collect()
    };
    assert_eq!(
        flags(publishes(&mut keeps, 2).await),
        [("now".to_owned(), true), ("plain".to_owned(), false)]
    );
    assert_eq!(
        flags(publishes(&mut clears, 2).await),
        [("now".to_owned(), false), ("plain".to_owned(), false)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retained_will_is_kept_and_native_subscribers_get_retained_publishes_live() {
    let broker = mqtt_broker(2);
    let native = Client::connect(broker.addr()).await.expect("connects");
    let mut status = native
        .subscribe("mqtt", "status/dev1")
        .await
        .expect("subscribes");
    let connect = connect_packet(Version::V5, "dev1", |connect| {
        let mut will = will_of("dev1");
        will.topic = MqttStr::new("status/dev1").expect("a topic");
        will.retain = true;
        will.payload = Bytes::from_static(b"offline");
        connect.will = Some(will);
    });
    let (device, connack) = Mqtt::connect_as(&broker, Version::V5, &connect).await;
    assert_eq!(connack.code, 0, "a retained will is accepted");
    drop(device); // no DISCONNECT: the will goes out
    let message = timeout(WAIT, status.next_message())
        .await
        .expect("in time")
        .expect("open")
        .expect("a message");
    assert_eq!(&message.payload[..], b"offline");
    assert_eq!(
        retained_for(&broker, Version::V311, "status/+").await,
        pairs(&[("status/dev1", "offline")])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_messages_are_bounded_per_shard_and_a_refusal_is_counted() {
    let broker = mqtt_broker_with(
        1,
        ServerConfig {
            engine: EngineConfig {
                retained_messages: 2,
                ..EngineConfig::default()
            },
            ..ServerConfig::default()
        },
    );
    let (mut publisher, _) = Mqtt::connect(&broker, Version::V5, "pub").await;
    for (i, topic) in ["b/1", "b/2", "b/3"].iter().enumerate() {
        publish_retained(&mut publisher, topic, "v", QoS::AtLeastOnce, i as u16 + 1).await;
    }
    // Replacing a kept one still works at the bound.
    publish_retained(&mut publisher, "b/2", "v2", QoS::AtLeastOnce, 9).await;
    assert_eq!(
        retained_for(&broker, Version::V5, "b/#").await,
        pairs(&[("b/1", "v"), ("b/2", "v2")])
    );
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let metrics = broker.metrics();
        let refused: u64 = metrics.iter().map(|m| m.stats.retained_refused).sum();
        let kept: u64 = metrics.iter().map(|m| m.retained_messages).sum();
        if (refused, kept) == (1, 2) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "refused {refused}, kept {kept}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_retained_message_is_not_sent_and_leaves_the_store() {
    let broker = mqtt_broker(1);
    let (mut publisher, _) = Mqtt::connect(&broker, Version::V5, "pub").await;
    for (topic, expiry) in [("x/short", Some(1)), ("x/long", None)] {
        publisher
            .send(&Packet::Publish(mqtt::Publish {
                dup: false,
                qos: QoS::AtLeastOnce,
                retain: true,
                topic: MqttStr::new(topic).expect("a topic"),
                packet_id: Some(1),
                properties: Properties {
                    message_expiry: expiry,
                    ..Properties::default()
                },
                payload: Bytes::from_static(b"v"),
            }))
            .await;
        publisher.expect_ack(AckKind::PubAck, 1, 0).await;
    }
    assert_eq!(
        retained_for(&broker, Version::V5, "x/+").await,
        pairs(&[("x/long", "v"), ("x/short", "v")])
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        retained_for(&broker, Version::V5, "x/+").await,
        pairs(&[("x/long", "v")]),
        "past its expiry"
    );
    let deadline = tokio::time::Instant::now() + WAIT;
    while broker
        .metrics()
        .iter()
        .map(|m| m.retained_messages)
        .sum::<u64>()
        != 1
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the expired one left the store"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_may_have_at_most_64_retained_fetches_unanswered() {
    use corebus_net::{ErrorCode, Frame, Subscribe as Fetch, TopicKey};
    let broker = mqtt_broker(2);
    let mut raw = corebus_tests::RawConn::connect(broker.addr()).await;
    raw.hello().await;
    // 70 pattern fetches in one write: every shard answers each, the other
    // shard through the mesh, so none is answered while they are read.
    let mut bytes = BytesMut::new();
    for n in 1..=70u32 {
        Frame::FetchRetained(Fetch {
            request_id: n,
            sub_id: n,
            resume: None,
            topic: TopicKey::new(b"mqtt", b"f/*").expect("valid"),
        })
        .encode(&mut bytes);
    }
    raw.send_bytes(&bytes).await;
    let (mut refused, mut ended) = (Vec::new(), 0);
    while ended + refused.len() < 70 {
        match timeout(WAIT, raw.recv()).await.expect("in time") {
            Some(Frame::Error(error)) => {
                assert_eq!(error.code(), Some(ErrorCode::InvalidRequest));
                assert!(!error.fatal);
                refused.push(error.request_id);
            }
            Some(Frame::ReplayEnd(end)) => {
                assert_eq!(end.last_seq, 0, "nothing retained");
                ended += 1;
            }
            other => panic!("ERROR or REPLAY_END, not {other:?}"),
        }
    }
    // The 65th and later, while 64 wait (70 frames are one read of the
    // socket, so no answer frees a slot before they are all handled).
    assert!(!refused.is_empty(), "past 64 unanswered fetches, refused");
    assert!(refused.iter().all(|id| *id > 64), "{refused:?}");
    assert_eq!(ended + refused.len(), 70);
}
