//! Shared subscriptions: `$share/{group}/{filter}` over MQTT and
//! `SUBSCRIBE_SHARED` natively; each message reaches one member of a group,
//! members on both shards take turns, a member that leaves gets no more,
//! and ordinary subscribers still get everything.

use super::*;

use corebus_net::{Frame, SubscribeShared, TopicKey};
use corebus_tests::RawConn;

/// The payloads of the `TOPIC_MESSAGE`s `raw` receives within 500 ms.
async fn drain_raw(raw: &mut RawConn) -> Vec<String> {
    let mut got = Vec::new();
    while let Ok(Some(frame)) = timeout(Duration::from_millis(500), raw.recv()).await {
        if let Frame::TopicMessage(message) = frame {
            got.push(String::from_utf8_lossy(message.body.payload().as_ref()).into_owned());
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_message_reaches_one_member_of_a_shared_subscription() {
    let broker = mqtt_broker(2);
    // Two MQTT members (one per version) and a native one, on shard 1.
    let mut members = Vec::new();
    for (n, version) in [Version::V5, Version::V311].into_iter().enumerate() {
        let connect = connect_packet(version, &format!("member{n}"), |_| {});
        let (mut member, _) = Mqtt::connect_as(&broker, version, &connect).await;
        let ack = member
            .subscribe(1, &[("$share/g/jobs/#", QoS::AtLeastOnce)])
            .await;
        assert_eq!(ack.codes, [1], "granted");
        members.push(member);
    }
    let mut native = broker.raw_on(1).await;
    native
        .send(&Frame::SubscribeShared(SubscribeShared {
            request_id: 1,
            sub_id: 7,
            group: "g".into(),
            topic: TopicKey::new(b"mqtt", b"jobs/>").expect("a pattern"),
        }))
        .await;
    assert!(matches!(native.recv().await, Some(Frame::SubOk(ok)) if ok.sub_id == 7));
    // Another group, and an ordinary subscriber: they get every message.
    let (mut other, _) = Mqtt::connect(&broker, Version::V5, "other").await;
    other
        .subscribe(1, &[("$share/h/jobs/+", QoS::AtLeastOnce)])
        .await;
    let (mut plain, _) = Mqtt::connect(&broker, Version::V5, "plain").await;
    plain.subscribe(1, &[("jobs/#", QoS::AtLeastOnce)]).await;
    let (mut publisher, _) = Mqtt::connect(&broker, Version::V5, "publisher").await;
    let sent: Vec<String> = (0..60).map(|n| format!("job{n:02}")).collect();
    for (n, payload) in sent.iter().enumerate() {
        // Topics owned by both shards.
        let topic = format!("jobs/{}", n % 4);
        publisher
            .publish_confirmed(&topic, payload, QoS::AtLeastOnce, 1)
            .await;
    }
    // Deliveries from the other shard may still be on their way when a
    // member's own shard answers its ping: they are given time to land.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut shares = Vec::new();
    for member in &mut members {
        shares.push(member.messages_until_pong().await);
    }
    shares.push(drain_raw(&mut native).await);
    let mut all: Vec<String> = shares.iter().flatten().cloned().collect();
    all.sort();
    assert_eq!(all, sent, "each message to exactly one member of g");
    for share in &shares {
        assert!(
            share.len() >= 10,
            "the members take turns: {:?}",
            shares.iter().map(Vec::len).collect::<Vec<_>>()
        );
    }
    let mut h = other.messages_until_pong().await;
    h.sort();
    assert_eq!(h, sent, "the only member of h gets all");
    let mut everything = plain.messages_until_pong().await;
    everything.sort();
    assert_eq!(everything, sent, "an ordinary subscriber gets all");
    // One leaves (unsubscribes), the native one closes: the last one gets
    // the rest.
    let leaving = &mut members[1];
    leaving
        .send(&Packet::Unsubscribe(mqtt::Unsubscribe {
            packet_id: 2,
            properties: Properties::default(),
            filters: vec![MqttStr::new("$share/g/jobs/#").expect("a filter")],
        }))
        .await;
    assert!(matches!(leaving.next().await, Some(Packet::UnsubAck(_))));
    drop(native);
    tokio::time::sleep(Duration::from_millis(200)).await;
    for n in 0..10 {
        let topic = format!("jobs/{}", n % 4);
        publisher
            .publish_confirmed(&topic, "late", QoS::AtLeastOnce, 1)
            .await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(members[0].messages_until_pong().await.len(), 10);
    assert!(members[1].messages_until_pong().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_share_is_refused_and_a_shared_subscription_gets_no_retained_messages() {
    let broker = mqtt_broker(2);
    let (mut client, connack) = Mqtt::connect(&broker, Version::V5, "c").await;
    assert_ne!(
        connack.properties.shared_available,
        Some(0),
        "the CONNACK does not say shared subscriptions are unavailable"
    );
    let ack = client
        .subscribe(
            1,
            &[
                ("$share//t", QoS::AtMostOnce),
                ("$share/g", QoS::AtMostOnce),
            ],
        )
        .await;
    assert_eq!(ack.codes, [0x8F, 0x8F], "filter invalid");
    client
        .publish_confirmed("kept", "retained?", QoS::AtLeastOnce, 1)
        .await;
    client
        .send(&Packet::Publish(mqtt::Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: true,
            topic: MqttStr::new("kept").expect("a topic"),
            packet_id: Some(2),
            properties: Properties::default(),
            payload: Bytes::from_static(b"retained"),
        }))
        .await;
    client.expect_ack(AckKind::PubAck, 2, 0).await;
    let ack = client
        .subscribe(3, &[("$share/g/kept", QoS::AtLeastOnce)])
        .await;
    assert_eq!(ack.codes, [1]);
    assert!(
        client.messages_until_pong().await.is_empty(),
        "no retained message"
    );
}
