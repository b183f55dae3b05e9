//! Publishes and deliveries: topic names and wildcards, MQTT and native
//! clients both ways, QoS in both directions, the client's receive maximum,
//! subscription identifiers and topic aliases, refusal codes.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_versions_publish_at_every_qos_to_every_mqtt_topic_name_and_wildcard() {
    let broker = mqtt_broker(2);
    for version in [Version::V311, Version::V5] {
        let (mut sub, connack) = Mqtt::connect(&broker, version, "sub").await;
        assert_eq!((connack.code, connack.session_present), (0, false));
        let filters = [
            ("sensors/+/temp", QoS::AtLeastOnce),
            ("alerts/#", QoS::AtMostOnce),
            ("TopicA", QoS::AtMostOnce),
            ("/TopicA", QoS::ExactlyOnce),
            ("a//b", QoS::AtMostOnce),
            ("trailing/", QoS::AtMostOnce),
        ];
        let granted = sub.subscribe(7, &filters).await;
        assert_eq!(granted.packet_id, 7);
        let asked: Vec<u8> = filters.iter().map(|(_, qos)| qos.bits()).collect();
        assert_eq!(granted.codes, asked, "granted the QoS asked");
        let (mut publisher, _) = Mqtt::connect(&broker, version, "pub").await;
        let sends = [
            ("sensors/k1/temp", QoS::AtMostOnce),
            ("sensors/k1/humidity", QoS::AtLeastOnce),
            ("alerts", QoS::AtLeastOnce),
            ("alerts/x/y", QoS::ExactlyOnce),
            ("TopicA", QoS::ExactlyOnce),
            ("topica", QoS::AtMostOnce),
            ("/TopicA", QoS::AtLeastOnce),
            ("a//b", QoS::AtMostOnce),
            ("a/b", QoS::AtMostOnce),
            ("trailing/", QoS::AtLeastOnce),
            ("trailing", QoS::AtMostOnce),
        ];
        for (i, (topic, qos)) in sends.iter().enumerate() {
            publisher
                .publish_confirmed(topic, &format!("m{i}"), *qos, 100 + i as u16)
                .await;
        }
        publisher.ping().await;
        let mut got = Vec::new();
        for _ in 0..7 {
            got.push(sub.message().await);
        }
        got.sort();
        let want: Vec<(String, String)> = [
            ("/TopicA", 6),
            ("TopicA", 4),
            ("a//b", 7),
            ("alerts", 2),
            ("alerts/x/y", 3),
            ("sensors/k1/temp", 0),
            ("trailing/", 9),
        ]
        .iter()
        .map(|(topic, i)| (topic.to_string(), format!("m{i}")))
        .collect();
        assert_eq!(got, want, "{version:?}: what each filter matches, once");
        sub.ping().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_and_native_clients_reach_each_other_with_the_owners_sequence() {
    let broker = mqtt_broker(2);
    let native = Client::connect(broker.addr()).await.expect("connects");
    let mut from_mqtt = native
        .subscribe("mqtt", "room/1")
        .await
        .expect("subscribes");
    let (mut mqtt_client, _) = Mqtt::connect(&broker, Version::V5, "bridge").await;
    assert_eq!(
        mqtt_client
            .subscribe(1, &[("room/+", QoS::AtMostOnce)])
            .await
            .codes,
        [0]
    );
    for i in 0..3 {
        mqtt_client
            .publish(
                "room/1",
                &format!("from mqtt {i}"),
                QoS::AtLeastOnce,
                10 + i,
            )
            .await;
    }
    // Its PUBACKs in order, and its own publishes (no `no_local` asked),
    // in order, interleaved as they come.
    let (mut acks, mut own) = (Vec::new(), Vec::new());
    for _ in 0..6 {
        match mqtt_client.next().await {
            Some(Packet::Ack(ack)) => acks.push((ack.kind, ack.packet_id, ack.reason)),
            Some(Packet::Publish(publish)) => {
                own.push(String::from_utf8_lossy(&publish.payload).into_owned())
            }
            other => panic!("PUBACK or PUBLISH, not {other:?}"),
        }
    }
    assert_eq!(
        acks,
        (10..13)
            .map(|id| (AckKind::PubAck, id, 0))
            .collect::<Vec<_>>()
    );
    assert_eq!(own, ["from mqtt 0", "from mqtt 1", "from mqtt 2"]);
    for i in 0..3u16 {
        let message = timeout(WAIT, from_mqtt.next_message())
            .await
            .expect("in time")
            .expect("open")
            .expect("a message");
        assert_eq!(message.seq, u64::from(i) + 1, "the owner's sequence");
        assert_eq!(&message.payload[..], format!("from mqtt {i}").as_bytes());
    }
    let seq = native
        .publish("mqtt", "room/2", "from native")
        .await
        .expect("published");
    assert_eq!(seq, 1);
    assert_eq!(
        mqtt_client.message().await,
        ("room/2".into(), "from native".into())
    );
    // Another namespace is not MQTT's.
    native
        .publish("other", "room/3", "elsewhere")
        .await
        .expect("published");
    mqtt_client.ping().await;
    native
        .publish("mqtt", "room/3", "after")
        .await
        .expect("published");
    assert_eq!(
        mqtt_client.message().await,
        ("room/3".into(), "after".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leading_wildcards_do_not_reach_dollar_topics_and_overlapping_filters_deliver_once() {
    let broker = mqtt_broker(2);
    let (mut sub, _) = Mqtt::connect(&broker, Version::V311, "dollar").await;
    let codes = sub
        .subscribe(1, &[("#", QoS::AtMostOnce), ("+/status", QoS::AtMostOnce)])
        .await
        .codes;
    assert_eq!(codes, [0, 0]);
    // The same filter again replaces the subscription: still one copy.
    assert_eq!(sub.subscribe(2, &[("#", QoS::AtMostOnce)]).await.codes, [0]);
    let (mut publisher, _) = Mqtt::connect(&broker, Version::V311, "p").await;
    publisher
        .publish_confirmed("$SYS/status", "hidden", QoS::AtLeastOnce, 1)
        .await;
    publisher
        .publish_confirmed("x/status", "seen", QoS::AtLeastOnce, 2)
        .await;
    assert_eq!(sub.message().await, ("x/status".into(), "seen".into()));
    // One copy for the two matching filters (`#` and `+/status`), and never
    // the $ topic: the next packet is the answer to a PINGREQ.
    sub.ping().await;
    assert_eq!(
        sub.subscribe(3, &[("$SYS/#", QoS::AtMostOnce)]).await.codes,
        [0]
    );
    publisher
        .publish_confirmed("$SYS/status", "named", QoS::AtLeastOnce, 3)
        .await;
    assert_eq!(sub.message().await, ("$SYS/status".into(), "named".into()));
    // Unsubscribed, `#` delivers nothing more; `+/status` still does.
    sub.send(&Packet::Unsubscribe(mqtt::Unsubscribe {
        packet_id: 4,
        properties: Properties::default(),
        filters: vec![MqttStr::new("#").expect("a filter")],
    }))
    .await;
    match sub.next().await {
        Some(Packet::UnsubAck(ack)) => assert_eq!(ack.packet_id, 4),
        other => panic!("UNSUBACK, not {other:?}"),
    }
    publisher
        .publish_confirmed("y/status", "once", QoS::AtLeastOnce, 5)
        .await;
    assert_eq!(sub.message().await, ("y/status".into(), "once".into()));
    sub.ping().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_filters_and_topics_get_their_reason_codes() {
    let broker = mqtt_broker(1);
    let (mut v5, _) = Mqtt::connect(&broker, Version::V5, "codes").await;
    let codes = v5
        .subscribe(
            1,
            &[
                ("a/#/b", QoS::AtMostOnce),
                ("$share/group/", QoS::AtMostOnce),
                ("ok/+", QoS::AtMostOnce),
                ("star/*", QoS::AtMostOnce),
            ],
        )
        .await
        .codes;
    assert_eq!(
        codes,
        [0x8F, 0x8F, 0, 0],
        "a shared subscription needs a filter; a literal `*` level is escaped, not refused"
    );
    // A name the native side cannot hold (a control character, longer
    // than a native topic): PUBACK or PUBREC 0x90.
    v5.publish("bad/\u{1}", "x", QoS::AtLeastOnce, 9).await;
    v5.expect_ack(AckKind::PubAck, 9, 0x90).await;
    v5.publish(&"long/".repeat(300), "x", QoS::ExactlyOnce, 10)
        .await;
    v5.expect_ack(AckKind::PubRec, 10, 0x90).await;
    // 3.1.1 has only one failure code.
    let (mut v3, _) = Mqtt::connect(&broker, Version::V311, "codes3").await;
    let codes = v3
        .subscribe(2, &[("a/#/b", QoS::AtMostOnce), ("fine", QoS::AtMostOnce)])
        .await
        .codes;
    assert_eq!(codes, [0x80, 0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_qos2_publish_before_its_release_is_published_once() {
    let broker = mqtt_broker(1);
    let (mut sub, _) = Mqtt::connect(&broker, Version::V5, "s").await;
    sub.subscribe(1, &[("q2", QoS::ExactlyOnce)]).await;
    let (mut publisher, _) = Mqtt::connect(&broker, Version::V5, "p").await;
    publisher.publish("q2", "once", QoS::ExactlyOnce, 5).await;
    publisher.expect_ack(AckKind::PubRec, 5, 0).await;
    // The PUBREC was lost, say: the client sends the PUBLISH again (dup).
    publisher.publish("q2", "once", QoS::ExactlyOnce, 5).await;
    publisher.expect_ack(AckKind::PubRec, 5, 0).await;
    publisher.send(&ack(AckKind::PubRel, 5)).await;
    publisher.expect_ack(AckKind::PubComp, 5, 0).await;
    // A PUBREL for an id never received is answered "not found".
    publisher.send(&ack(AckKind::PubRel, 6)).await;
    publisher.expect_ack(AckKind::PubComp, 6, 0x92).await;
    publisher
        .publish_confirmed("q2", "next", QoS::AtMostOnce, 0)
        .await;
    assert_eq!(sub.message().await, ("q2".into(), "once".into()));
    assert_eq!(
        sub.message().await,
        ("q2".into(), "next".into()),
        "no second copy"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_come_at_the_lower_of_the_publishers_and_the_subscriptions_qos() {
    let broker = mqtt_broker(2);
    for version in [Version::V311, Version::V5] {
        let (mut sub, _) = Mqtt::connect(&broker, version, "qos-sub").await;
        let codes = sub
            .subscribe(1, &[("q/+", QoS::ExactlyOnce), ("one", QoS::AtLeastOnce)])
            .await
            .codes;
        assert_eq!(codes, [2, 1]);
        let (mut publisher, _) = Mqtt::connect(&broker, version, "qos-pub").await;
        let sends = [
            ("q/a", QoS::AtMostOnce),
            ("q/a", QoS::AtLeastOnce),
            ("q/a", QoS::ExactlyOnce),
            ("one", QoS::ExactlyOnce),
            ("one", QoS::AtMostOnce),
        ];
        for (i, (topic, qos)) in sends.iter().enumerate() {
            publisher
                .publish_confirmed(topic, &format!("m{i}"), *qos, 1 + i as u16)
                .await;
        }
        let mut got = Vec::new();
        for _ in 0..sends.len() {
            got.push(sub.message_qos().await);
        }
        got.sort_by(|a, b| a.1.cmp(&b.1));
        let qos: Vec<QoS> = got.iter().map(|(_, _, qos)| *qos).collect();
        assert_eq!(
            qos,
            [
                QoS::AtMostOnce,
                QoS::AtLeastOnce,
                QoS::ExactlyOnce,
                QoS::AtLeastOnce,
                QoS::AtMostOnce
            ],
            "{version:?}: {got:?}"
        );
        // The QoS 2 exchanges completed (the helper answered each PUBREL):
        // the connection is in a clean state.
        sub.ping().await;
        // A native publisher asks for nothing: QoS 0.
        let native = Client::connect(broker.addr()).await.expect("connects");
        native
            .publish("mqtt", "q/n", "native")
            .await
            .expect("published");
        assert_eq!(
            sub.message_qos().await,
            ("q/n".into(), "native".into(), QoS::AtMostOnce)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_gets_no_more_unacknowledged_deliveries_than_its_receive_maximum() {
    let broker = mqtt_broker(1);
    let connect = connect_packet(Version::V5, "slow", |connect| {
        connect.properties.receive_maximum = Some(2);
    });
    let (mut sub, connack) = Mqtt::connect_as(&broker, Version::V5, &connect).await;
    assert_eq!(connack.code, 0);
    sub.subscribe(1, &[("rm", QoS::AtLeastOnce)]).await;
    let (mut publisher, _) = Mqtt::connect(&broker, Version::V5, "fast").await;
    for i in 0..5 {
        publisher
            .publish_confirmed("rm", &format!("m{i}"), QoS::AtLeastOnce, 1 + i)
            .await;
    }
    // Two arrive; the third waits for an acknowledgement.
    let mut ids = Vec::new();
    for i in 0..2 {
        match sub.next().await {
            Some(Packet::Publish(publish)) => {
                assert_eq!(&publish.payload[..], format!("m{i}").as_bytes());
                ids.push(publish.packet_id.expect("QoS 1 has an id"));
            }
            other => panic!("a PUBLISH, not {other:?}"),
        }
    }
    sub.send(&Packet::PingReq).await;
    assert!(
        matches!(sub.next().await, Some(Packet::PingResp)),
        "nothing more before an acknowledgement"
    );
    sub.send(&ack(AckKind::PubAck, ids[0])).await;
    // One slot free: one more; then the rest as they are acknowledged, in
    // order.
    for i in 2..5 {
        match sub.next().await {
            Some(Packet::Publish(publish)) => {
                assert_eq!(&publish.payload[..], format!("m{i}").as_bytes());
                let id = publish.packet_id.expect("an id");
                assert!(!ids.contains(&id) || i > 2, "ids in flight are not reused");
                sub.send(&ack(AckKind::PubAck, id)).await;
            }
            other => panic!("a PUBLISH, not {other:?}"),
        }
    }
    sub.send(&ack(AckKind::PubAck, ids[1])).await;
    sub.ping().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_filters_get_one_copy_with_every_subscription_identifier() {
    let broker = mqtt_broker(2);
    let (mut sub, connack) = Mqtt::connect(&broker, Version::V5, "ids").await;
    assert_eq!(
        connack.properties.subscription_ids_available, None,
        "available (the default)"
    );
    for (packet_id, filter, id, qos) in [
        (1, "TopicA", 2, QoS::AtMostOnce),
        (2, "TopicA/#", 3, QoS::AtLeastOnce),
    ] {
        sub.send(&Packet::Subscribe(Subscribe {
            packet_id,
            properties: Properties {
                subscription_ids: vec![id],
                ..Properties::default()
            },
            filters: vec![Subscription {
                filter: MqttStr::new(filter).expect("a filter"),
                qos,
                no_local: false,
                retain_as_published: false,
                retain_handling: RetainHandling::OnSubscribe,
            }],
        }))
        .await;
        assert!(matches!(sub.next().await, Some(Packet::SubAck(_))));
    }
    let (mut publisher, _) = Mqtt::connect(&broker, Version::V5, "p").await;
    publisher
        .publish_confirmed("TopicA", "both", QoS::AtLeastOnce, 1)
        .await;
    publisher
        .publish_confirmed("TopicA/x", "one", QoS::AtLeastOnce, 2)
        .await;
    let mut got = Vec::new();
    for _ in 0..2 {
        match sub.next().await {
            Some(Packet::Publish(publish)) => {
                if let Some(id) = publish.packet_id {
                    sub.send(&ack(AckKind::PubAck, id)).await;
                }
                let mut ids = publish.properties.subscription_ids.clone();
                ids.sort();
                got.push((publish.topic.as_str().to_owned(), publish.qos, ids));
            }
            other => panic!("a PUBLISH, not {other:?}"),
        }
    }
    got.sort();
    assert_eq!(
        got,
        [
            ("TopicA".to_owned(), QoS::AtLeastOnce, vec![2, 3]),
            ("TopicA/x".to_owned(), QoS::AtLeastOnce, vec![3]),
        ],
        "one copy of TopicA, at the higher QoS, with both identifiers"
    );
    sub.ping().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_takes_topic_aliases_gets_them_up_to_its_maximum() {
    let broker = mqtt_broker(1);
    let connect = connect_packet(Version::V5, "aliased", |connect| {
        connect.properties.topic_alias_maximum = Some(1);
    });
    let (mut sub, connack) = Mqtt::connect_as(&broker, Version::V5, &connect).await;
    assert_eq!(connack.code, 0);
    sub.subscribe(1, &[("al/#", QoS::AtMostOnce)]).await;
    let (mut publisher, _) = Mqtt::connect(&broker, Version::V5, "p").await;
    for (i, topic) in ["al/a", "al/a", "al/b", "al/a"].iter().enumerate() {
        publisher
            .publish_confirmed(topic, &format!("m{i}"), QoS::AtLeastOnce, 1 + i as u16)
            .await;
    }
    let mut got = Vec::new();
    for _ in 0..4 {
        match sub.next().await {
            Some(Packet::Publish(publish)) => got.push((
                publish.topic.as_str().to_owned(),
                publish.properties.topic_alias,
                String::from_utf8_lossy(&publish.payload).into_owned(),
            )),
            other => panic!("a PUBLISH, not {other:?}"),
        }
    }
    assert_eq!(
        got,
        [
            ("al/a".to_owned(), Some(1), "m0".to_owned()),
            (String::new(), Some(1), "m1".to_owned()),
            ("al/b".to_owned(), None, "m2".to_owned()),
            (String::new(), Some(1), "m3".to_owned()),
        ],
        "the alias set with its topic, then alone; none past the maximum"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_may_publish_with_topic_aliases_up_to_the_maximum_the_connack_gave() {
    let broker = mqtt_broker(2);
    let (mut sub, _) = Mqtt::connect(&broker, Version::V5, "sub").await;
    sub.subscribe(1, &[("alias/#", QoS::AtMostOnce)]).await;
    let (mut publisher, connack) = Mqtt::connect(&broker, Version::V5, "pub").await;
    assert_eq!(connack.properties.topic_alias_maximum, Some(10));
    let aliased = |topic: &str, alias: u16, payload: &'static str| {
        Packet::Publish(mqtt::Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: MqttStr::new(topic).expect("a topic"),
            packet_id: None,
            properties: Properties {
                topic_alias: Some(alias),
                ..Properties::default()
            },
            payload: Bytes::from_static(payload.as_bytes()),
        })
    };
    publisher.send(&aliased("alias/one", 3, "set")).await;
    publisher.send(&aliased("", 3, "used")).await;
    publisher.send(&aliased("alias/two", 3, "moved")).await;
    publisher.send(&aliased("", 3, "used again")).await;
    publisher.ping().await;
    // In order per topic; the two topics' owners may be different shards.
    let mut got = Vec::new();
    for _ in 0..4 {
        got.push(sub.message().await);
    }
    let of = |topic: &str| -> Vec<String> {
        got.iter()
            .filter(|(t, _)| t == topic)
            .map(|(_, payload)| payload.clone())
            .collect()
    };
    assert_eq!(of("alias/one"), ["set", "used"]);
    assert_eq!(of("alias/two"), ["moved", "used again"]);
    // An alias never set, and one past the maximum, end the connection.
    for (packet, code) in [
        (aliased("", 4, "unknown"), 0x82),
        (aliased("alias/x", 11, "over"), 0x94),
    ] {
        let (mut client, _) = Mqtt::connect(&broker, Version::V5, "bad").await;
        client.send(&packet).await;
        match client.next().await {
            Some(Packet::Disconnect(disconnect)) => assert_eq!(disconnect.reason, code),
            other => panic!("DISCONNECT {code:#x}, not {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn levels_that_are_native_wildcards_are_escaped_both_ways() {
    let broker = mqtt_broker(2);
    let native = Client::connect(broker.addr()).await.expect("connects");
    let mut escaped = native
        .subscribe("mqtt", "esc/\\*/x")
        .await
        .expect("subscribes");
    let (mut sub, _) = Mqtt::connect(&broker, Version::V5, "sub").await;
    let codes = sub
        .subscribe(
            1,
            &[("esc/+/x", QoS::AtMostOnce), ("lit/*", QoS::AtMostOnce)],
        )
        .await
        .codes;
    assert_eq!(codes, [0, 0]);
    let (mut publisher, _) = Mqtt::connect(&broker, Version::V311, "pub").await;
    publisher
        .publish_confirmed("esc/*/x", "star", QoS::AtLeastOnce, 1)
        .await;
    publisher
        .publish_confirmed("lit/a", "not it", QoS::AtLeastOnce, 2)
        .await;
    publisher
        .publish_confirmed("lit/*", "it", QoS::AtLeastOnce, 3)
        .await;
    let message = timeout(WAIT, escaped.next_message())
        .await
        .expect("in time")
        .expect("open")
        .expect("a message");
    assert_eq!(
        (message.topic(), &message.payload[..]),
        ("esc/\\*/x", &b"star"[..])
    );
    native
        .publish("mqtt", "esc/\\>/x", "from native")
        .await
        .expect("published");
    let mut got = vec![
        sub.message().await,
        sub.message().await,
        sub.message().await,
    ];
    got.sort();
    assert_eq!(
        got,
        [
            ("esc/*/x".to_owned(), "star".to_owned()),
            ("esc/>/x".to_owned(), "from native".to_owned()),
            ("lit/*".to_owned(), "it".to_owned()),
        ],
        "the MQTT names, unescaped; `lit/*` matches only itself"
    );
}
