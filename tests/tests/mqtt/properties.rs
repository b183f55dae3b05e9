//! Message properties and headers: what an MQTT 5.0 publisher sets reaches
//! native subscribers as headers and MQTT 5.0 subscribers as properties,
//! and the reverse; expiry; version 1 native clients get messages without
//! headers.

use corebus_client::Headers;
use corebus_net::{Frame, Hello, Subscribe as NativeSubscribe, TopicKey};
use corebus_tests::RawConn;

use super::*;

/// Every property a `PUBLISH` may carry to subscribers.
fn all_properties(expiry_secs: u32) -> Properties {
    Properties {
        user: vec![
            (MqttStr::new("k").unwrap(), MqttStr::new("v1").unwrap()),
            (MqttStr::new("k").unwrap(), MqttStr::new("v2").unwrap()),
        ],
        content_type: MqttStr::new("text/plain"),
        response_topic: MqttStr::new("replies/9"),
        correlation_data: Some(Bytes::from_static(b"\x00req")),
        payload_format: Some(1),
        message_expiry: Some(expiry_secs),
        ..Properties::default()
    }
}

/// The next `PUBLISH`, whole.
async fn next_publish(client: &mut Mqtt) -> mqtt::Publish {
    match client.next().await {
        Some(Packet::Publish(publish)) => publish,
        other => panic!("a PUBLISH, not {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn properties_reach_native_subscribers_as_headers_and_come_back_as_properties() {
    let broker = mqtt_broker(2);
    let native = Client::connect(broker.addr()).await.expect("connects");
    let mut native_sub = native.subscribe("mqtt", "req").await.expect("subscribes");
    let (mut v5, _) = Mqtt::connect(&broker, Version::V5, "five").await;
    v5.subscribe(1, &[("reply", QoS::AtMostOnce)]).await;
    let (mut v3, _) = Mqtt::connect(&broker, Version::V311, "three").await;
    v3.subscribe(1, &[("reply", QoS::AtMostOnce)]).await;

    // MQTT 5.0 to native.
    let before = corebus_shards::auth::unix_now_ms();
    v5.send(&Packet::Publish(mqtt::Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain: false,
        topic: MqttStr::new("req").unwrap(),
        packet_id: Some(5),
        properties: all_properties(60),
        payload: Bytes::from_static(b"question"),
    }))
    .await;
    v5.expect_ack(AckKind::PubAck, 5, 0).await;
    let message = timeout(WAIT, native_sub.next_message())
        .await
        .expect("in time")
        .expect("open")
        .expect("a message");
    assert_eq!(&message.payload[..], b"question");
    let headers = message.headers().expect("headers").clone();
    let expires = headers.expires_at_ms.expect("an expiry");
    assert!(
        (before + 60_000..=corebus_shards::auth::unix_now_ms() + 60_000).contains(&expires),
        "60 s after the publish: {expires}"
    );
    assert_eq!(
        headers,
        Headers {
            user: vec![("k".into(), "v1".into()), ("k".into(), "v2".into())],
            content_type: Some("text/plain".into()),
            response_topic: Some("replies/9".into()),
            correlation_data: Some(Bytes::from_static(b"\x00req")),
            utf8_payload: true,
            expires_at_ms: Some(expires),
            origin: None,
        }
    );

    // Native to MQTT: 5.0 gets the properties, the expiry as the interval
    // left; 3.1.1 the payload.
    let reply = Headers {
        expires_at_ms: Some(corebus_shards::auth::unix_now_ms() + 30_000),
        ..headers
    };
    native
        .publish_with_headers("mqtt", "reply", &reply, "answer")
        .await
        .expect("published");
    let got = next_publish(&mut v5).await;
    assert_eq!(&got.payload[..], b"answer");
    let left = got.properties.message_expiry.expect("an expiry");
    assert!((29..=30).contains(&left), "about 30 s left: {left}");
    let mut want = all_properties(left);
    want.subscription_ids = got.properties.subscription_ids.clone();
    assert_eq!(got.properties, want);
    let got = next_publish(&mut v3).await;
    assert_eq!(&got.payload[..], b"answer");
    assert!(got.properties.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_message_is_not_delivered_over_mqtt() {
    let broker = mqtt_broker(1);
    let native = Client::connect(broker.addr()).await.expect("connects");
    for version in [Version::V311, Version::V5] {
        let (mut sub, _) = Mqtt::connect(&broker, version, "sub").await;
        sub.subscribe(1, &[("t", QoS::AtMostOnce)]).await;
        let expired = Headers {
            expires_at_ms: Some(corebus_shards::auth::unix_now_ms() - 1),
            ..Headers::default()
        };
        native
            .publish_with_headers("mqtt", "t", &expired, "stale")
            .await
            .expect("published");
        native
            .publish("mqtt", "t", "fresh")
            .await
            .expect("published");
        assert_eq!(
            sub.message().await,
            ("t".to_owned(), "fresh".to_owned()),
            "{version:?}: the expired one was left out"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_1_client_gets_messages_without_their_headers() {
    let broker = mqtt_broker(2);
    let mut old = RawConn::connect(broker.addr()).await;
    old.send(&Frame::Hello(Hello {
        version: 1,
        client_name: "old".into(),
        credentials: Bytes::new(),
    }))
    .await;
    match old.recv().await {
        Some(Frame::Welcome(welcome)) => assert_eq!(welcome.version, 1, "answered in version 1"),
        other => panic!("WELCOME, not {other:?}"),
    }
    old.send(&Frame::Subscribe(NativeSubscribe {
        request_id: 1,
        sub_id: 1,
        resume: None,
        topic: TopicKey::new(b"mqtt", b"t").expect("valid"),
    }))
    .await;
    assert!(matches!(old.recv().await, Some(Frame::SubOk(_))));
    let (mut publisher, _) = Mqtt::connect(&broker, Version::V5, "pub").await;
    publisher
        .send(&Packet::Publish(mqtt::Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: MqttStr::new("t").unwrap(),
            packet_id: Some(1),
            properties: all_properties(60),
            payload: Bytes::from_static(b"body"),
        }))
        .await;
    publisher.expect_ack(AckKind::PubAck, 1, 0).await;
    match old.recv().await {
        Some(Frame::Message(message)) => {
            assert!(!message.body.has_headers(), "no headers block");
            assert_eq!(message.body.qos(), 1);
            assert_eq!(&message.body.payload()[..], b"body");
        }
        other => panic!("MESSAGE, not {other:?}"),
    }
    // A version 2 client gets them.
    let mut new = RawConn::connect(broker.addr()).await;
    assert_eq!(new.hello().await.version, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_no_local_filter_does_not_get_its_own_connections_publishes() {
    let broker = mqtt_broker(2);
    let no_local = Packet::Subscribe(Subscribe {
        packet_id: 1,
        properties: Properties::default(),
        filters: vec![Subscription {
            filter: MqttStr::new("n/t").expect("a filter"),
            qos: QoS::AtLeastOnce,
            no_local: true,
            retain_as_published: false,
            retain_handling: RetainHandling::OnSubscribe,
        }],
    });
    let (mut a, _) = Mqtt::connect(&broker, Version::V5, "a").await;
    let (mut b, _) = Mqtt::connect(&broker, Version::V5, "b").await;
    for client in [&mut a, &mut b] {
        client.send(&no_local).await;
        assert!(matches!(client.next().await, Some(Packet::SubAck(_))));
    }
    a.publish_confirmed("n/t", "from a", QoS::AtLeastOnce, 5)
        .await;
    assert_eq!(b.message().await, ("n/t".to_owned(), "from a".to_owned()));
    b.publish_confirmed("n/t", "from b", QoS::AtLeastOnce, 6)
        .await;
    assert_eq!(a.message().await, ("n/t".to_owned(), "from b".to_owned()));
    // Nothing else: its own did not come back.
    a.ping().await;
    b.ping().await;
}
