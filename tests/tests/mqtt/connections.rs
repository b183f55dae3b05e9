//! Connections: credentials and permissions, bad input, keep-alive, wills,
//! client id takeover, and the bounds on what a client can make its
//! connection hold.

use super::*;

#[derive(Debug)]
struct OneKey;

impl Authenticator for OneKey {
    fn authenticate(&self, credentials: &[u8], _now_ms: u64) -> Result<Grant, AuthError> {
        match credentials {
            b"" => Err(AuthError::Missing),
            b"good-key" => Ok(Grant {
                identity: "good".into(),
                permissions: Arc::new(Permissions {
                    superuser: false,
                    rules: vec![corebus_shards::auth::Rule {
                        namespace: "mqtt".into(),
                        topic: corebus_shards::auth::TopicPattern::Prefix("open/".into()),
                        publish: true,
                        subscribe: true,
                    }],
                    denied: Vec::new(),
                }),
                expires_at_ms: None,
                peer: None,
            }),
            _ => Err(AuthError::Invalid("unknown key".into())),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_password_is_the_key_and_permissions_are_the_native_ones() {
    let broker = mqtt_broker_with(
        1,
        ServerConfig {
            auth: Arc::new(OneKey),
            ..ServerConfig::default()
        },
    );
    let (_, refused) = Mqtt::connect(&broker, Version::V311, "anon").await;
    assert_eq!(refused.code, 0x04, "3.1.1: bad user name or password");
    let (mut wrong, refused) =
        Mqtt::connect_with(&broker, Version::V5, "w", Some("bad-key"), 0).await;
    assert_eq!(refused.code, 0x86, "5.0: bad user name or password");
    assert!(
        refused
            .properties
            .reason_string
            .as_ref()
            .is_some_and(|text| text.as_str().contains("unknown key")),
        "{refused:?}"
    );
    assert!(wrong.next().await.is_none(), "closed after the refusal");
    let (mut good, ok) = Mqtt::connect_with(&broker, Version::V5, "g", Some("good-key"), 0).await;
    assert_eq!(ok.code, 0);
    let codes = good
        .subscribe(
            1,
            &[("open/#", QoS::AtMostOnce), ("closed/x", QoS::AtMostOnce)],
        )
        .await
        .codes;
    assert_eq!(codes, [0, 0x87], "not authorized for closed/x");
    good.publish("closed/x", "no", QoS::AtLeastOnce, 2).await;
    good.expect_ack(AckKind::PubAck, 2, 0x87).await;
    let (mut other, _) = Mqtt::connect_with(&broker, Version::V5, "g2", Some("good-key"), 0).await;
    other
        .publish_confirmed("open/x", "yes", QoS::AtLeastOnce, 3)
        .await;
    assert_eq!(good.message().await, ("open/x".into(), "yes".into()));
    // 3.1.1 has no refusal for a publish: the connection closes.
    let (mut old, _) = Mqtt::connect_with(&broker, Version::V311, "o", Some("good-key"), 0).await;
    old.publish("closed/x", "no", QoS::AtLeastOnce, 4).await;
    assert!(old.next().await.is_none(), "closed instead of a PUBACK");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_packet_or_an_oversized_connect_closes_only_its_own_connection() {
    let broker = mqtt_broker(1);
    let (mut sub, _) = Mqtt::connect(&broker, Version::V5, "bystander").await;
    sub.subscribe(1, &[("still/here", QoS::AtMostOnce)]).await;
    // A CONNECT announcing 256 MB: refused from its header.
    let mut huge = Mqtt::open(&broker, Version::V311).await;
    huge.stream
        .write_all(&[0x10, 0xff, 0xff, 0xff, 0x7f, 0, 4, b'M', b'Q'])
        .await
        .expect("sent");
    assert!(huge.next().await.is_none(), "closed");
    // Packet type 0 after a good CONNECT: 5.0 says malformed (0x81).
    let (mut broken, _) = Mqtt::connect(&broker, Version::V5, "broken").await;
    broken.stream.write_all(&[0x00, 0x00]).await.expect("sent");
    match broken.next().await {
        Some(Packet::Disconnect(disconnect)) => assert_eq!(disconnect.reason, 0x81),
        other => panic!("DISCONNECT 0x81, not {other:?}"),
    }
    assert!(broken.next().await.is_none());
    // A second CONNECT is a protocol error.
    let (mut twice, _) = Mqtt::connect(&broker, Version::V5, "twice").await;
    twice
        .send(&connect_packet(Version::V5, "twice", |_| {}))
        .await;
    match twice.next().await {
        Some(Packet::Disconnect(disconnect)) => assert_eq!(disconnect.reason, 0x82),
        other => panic!("DISCONNECT 0x82, not {other:?}"),
    }
    let (mut publisher, _) = Mqtt::connect(&broker, Version::V311, "p").await;
    publisher
        .publish_confirmed("still/here", "fine", QoS::AtLeastOnce, 1)
        .await;
    assert_eq!(sub.message().await, ("still/here".into(), "fine".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_silent_past_its_keep_alive_is_closed_and_a_pinging_one_is_not() {
    let broker = mqtt_broker_with(
        1,
        ServerConfig {
            // Short native heartbeats must not touch MQTT clients, which
            // never answer them.
            engine: EngineConfig {
                heartbeat_interval_ms: 200,
                heartbeat_timeout_ms: 600,
                ..EngineConfig::default()
            },
            ..ServerConfig::default()
        },
    );
    let (mut silent, _) = Mqtt::connect_with(&broker, Version::V5, "silent", None, 1).await;
    let (mut pinging, _) = Mqtt::connect_with(&broker, Version::V5, "pinging", None, 1).await;
    let started = std::time::Instant::now();
    let closed = async {
        match silent.next().await {
            Some(Packet::Disconnect(disconnect)) => assert_eq!(disconnect.reason, 0x8D),
            other => panic!("DISCONNECT 0x8D, not {other:?}"),
        }
        started.elapsed()
    };
    let keep_pinging = async {
        for _ in 0..8 {
            tokio::time::sleep(Duration::from_millis(500)).await;
            pinging.ping().await;
        }
    };
    let (after, ()) = tokio::join!(closed, keep_pinging);
    assert!(
        after >= Duration::from_millis(1400),
        "not before one and a half keep-alives: {after:?}"
    );
    // Off (0): no deadline, and no heartbeat either.
    let (mut off, _) = Mqtt::connect_with(&broker, Version::V311, "off", None, 0).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    off.ping().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_sent_with_its_disconnect_in_one_write_is_delivered() {
    let broker = mqtt_broker(2);
    let (mut sub, _) = Mqtt::connect(&broker, Version::V311, "s").await;
    sub.subscribe(1, &[("last/words", QoS::AtMostOnce)]).await;
    // CONNECT, PUBLISH and DISCONNECT in one segment, then the close: the
    // reader gets them all at once and must still hand the PUBLISH on.
    let mut wire = BytesMut::new();
    for packet in [
        connect_packet(Version::V311, "quick", |_| {}),
        Packet::Publish(mqtt::Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: false,
            topic: MqttStr::new("last/words").expect("a topic"),
            packet_id: None,
            properties: Properties::default(),
            payload: Bytes::from_static(b"bye"),
        }),
        Packet::Disconnect(mqtt::Disconnect {
            reason: 0,
            properties: Properties::default(),
        }),
    ] {
        packet.encode(Version::V311, &mut wire);
    }
    let mut quick = TcpStream::connect(broker.mqtt_addr())
        .await
        .expect("connects");
    quick.write_all(&wire).await.expect("sent");
    drop(quick);
    assert_eq!(sub.message().await, ("last/words".into(), "bye".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_will_is_published_when_a_connection_ends_without_a_clean_disconnect() {
    let broker = mqtt_broker(2);
    let (mut watcher, _) = Mqtt::connect(&broker, Version::V5, "watcher").await;
    watcher.subscribe(1, &[("will/+", QoS::AtMostOnce)]).await;
    // Dropped: the will goes out.
    let dropped = connect_with_will(&broker, Version::V311, "dropped", 0).await;
    drop(dropped);
    assert_eq!(
        watcher.message().await,
        ("will/dropped".into(), "gone dropped".into())
    );
    // A clean DISCONNECT discards it, in either version...
    for (version, id) in [(Version::V311, "clean3"), (Version::V5, "clean5")] {
        let mut clean = connect_with_will(&broker, version, id, 0).await;
        clean
            .send(&Packet::Disconnect(mqtt::Disconnect {
                reason: 0,
                properties: Properties::default(),
            }))
            .await;
        assert!(clean.next().await.is_none());
    }
    // ...except 5.0's "disconnect with will message".
    let mut asks = connect_with_will(&broker, Version::V5, "asks", 0).await;
    asks.send(&Packet::Disconnect(mqtt::Disconnect {
        reason: 0x04,
        properties: Properties::default(),
    }))
    .await;
    assert_eq!(
        watcher.message().await,
        ("will/asks".into(), "gone asks".into())
    );
    // A protocol error ends the connection: the will goes out.
    let mut broken = connect_with_will(&broker, Version::V5, "broken", 0).await;
    broken.stream.write_all(&[0x00, 0x00]).await.expect("sent");
    assert_eq!(
        watcher.message().await,
        ("will/broken".into(), "gone broken".into())
    );
    // And a missed keep-alive (1 s: closed after 1.5 s).
    let _silent = connect_with_will(&broker, Version::V311, "silent", 1).await;
    assert_eq!(
        watcher.message().await,
        ("will/silent".into(), "gone silent".into())
    );
    // The counters (as of each shard's last tick, about every second):
    // four wills, and still four a tick later.
    let wills = || -> u64 {
        broker
            .metrics()
            .iter()
            .map(|m| m.stats.wills_published)
            .sum()
    };
    let deadline = std::time::Instant::now() + WAIT;
    while wills() < 4 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(wills(), 4, "the clean ones published none");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_id_that_connects_again_takes_over_and_the_old_connection_is_closed() {
    let broker = mqtt_broker(2);
    let (mut watcher, _) = Mqtt::connect(&broker, Version::V5, "watcher").await;
    watcher.subscribe(1, &[("will/+", QoS::AtMostOnce)]).await;
    // Several rounds, so that the two connections are on one shard in
    // some and on two in others (the kernel spreads them).
    let mut old = connect_with_will(&broker, Version::V5, "twin", 0).await;
    for round in 0..6 {
        let new = connect_with_will(&broker, Version::V5, "twin", 0).await;
        match old.next().await {
            Some(Packet::Disconnect(disconnect)) => {
                assert_eq!(disconnect.reason, 0x8E, "round {round}: session taken over")
            }
            other => panic!("round {round}: DISCONNECT 0x8E, not {other:?}"),
        }
        assert!(old.next().await.is_none(), "round {round}: then closed");
        // The old connection went without a clean DISCONNECT: its will.
        assert_eq!(
            watcher.message().await,
            ("will/twin".into(), "gone twin".into())
        );
        old = new;
    }
    // The last one holds the id and works.
    old.ping().await;
    // 3.1.1: the old connection is just closed.
    let (mut first, _) = Mqtt::connect(&broker, Version::V311, "twin3").await;
    let (mut second, _) = Mqtt::connect(&broker, Version::V311, "twin3").await;
    assert!(first.next().await.is_none());
    second.ping().await;
    // Another id is not touched.
    watcher.ping().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_past_the_receive_maximum_is_disconnected_and_holds_no_more() {
    let broker = small_receive_maximum_broker();
    for version in [Version::V5, Version::V311] {
        let (mut client, connack) = Mqtt::connect(&broker, version, "greedy").await;
        if version == Version::V5 {
            assert_eq!(connack.properties.receive_maximum, Some(3));
        }
        // QoS 2 publishes never released: each holds a place until PUBREL.
        for id in 1..=3 {
            client.publish("rm/x", "m", QoS::ExactlyOnce, id).await;
            client.expect_ack(AckKind::PubRec, id, 0).await;
        }
        client
            .publish("rm/x", "one too many", QoS::ExactlyOnce, 4)
            .await;
        match client.next().await {
            Some(Packet::Disconnect(disconnect)) if version == Version::V5 => {
                assert_eq!(disconnect.reason, 0x93, "receive maximum exceeded");
                assert!(client.next().await.is_none());
            }
            None if version == Version::V311 => {}
            other => panic!("{version:?}: closed for the fourth, not {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_keeps_sending_after_its_disconnect_still_reads_the_reason() {
    // The broker closes its side after the DISCONNECT and reads what still
    // comes: closing with unread input would reset the connection, and the
    // reset could reach the client before the DISCONNECT does.
    let broker = small_receive_maximum_broker();
    let (mut client, _) = Mqtt::connect(&broker, Version::V5, "eager").await;
    let mut wire = BytesMut::new();
    for id in 1..=4 {
        Packet::Publish(mqtt::Publish {
            dup: false,
            qos: QoS::ExactlyOnce,
            retain: false,
            topic: MqttStr::new("rm/y").expect("a topic"),
            packet_id: Some(id),
            properties: Properties::default(),
            payload: Bytes::from_static(b"m"),
        })
        .encode(Version::V5, &mut wire);
    }
    client.stream.write_all(&wire).await.expect("sent");
    // More after the broker decided, before reading anything.
    tokio::time::sleep(Duration::from_millis(200)).await;
    // (As Paho's test client does: it answers each PUBREC with a PUBREL
    // before it reads on; a write refused by a reset ends it.)
    for n in 0..20 {
        let mut ping = BytesMut::new();
        Packet::PingReq.encode(Version::V5, &mut ping);
        let written = client.stream.write_all(&ping).await;
        assert!(
            written.is_ok(),
            "write {n} after the broker's decision: {written:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    loop {
        match client.next().await {
            Some(Packet::Ack(_)) => {}
            Some(Packet::Disconnect(disconnect)) => {
                assert_eq!(disconnect.reason, 0x93, "receive maximum exceeded");
                break;
            }
            other => panic!("the DISCONNECT, not {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_pings_without_reading_is_closed_before_its_answers_pile_up() {
    // Receive maximum 3: at most 3 + 1,024 answers wait for the client.
    let broker = small_receive_maximum_broker();
    let (mut bystander, _) = Mqtt::connect(&broker, Version::V311, "bystander").await;
    let (mut flood, _) = Mqtt::connect(&broker, Version::V5, "flood").await;
    // 5,000 PINGREQs in one write, nothing read: the answers past the bound
    // close the connection.
    let mut wire = BytesMut::new();
    for _ in 0..5_000 {
        Packet::PingReq.encode(Version::V5, &mut wire);
    }
    flood.stream.write_all(&wire).await.expect("sent");
    let mut pongs = 0;
    let end = loop {
        match flood.next().await {
            Some(Packet::PingResp) => pongs += 1,
            other => break other,
        }
    };
    match end {
        Some(Packet::Disconnect(disconnect)) => assert_eq!(disconnect.reason, 0x97),
        other => panic!("DISCONNECT 0x97 after the answers, not {other:?}"),
    }
    assert!(pongs <= 3 + 1_024 + 1, "{pongs} answers before the close");
    assert!(flood.next().await.is_none());
    bystander.ping().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capped_keep_alive_is_told_to_5_0_clients_and_held_to() {
    let broker = Broker::start_config(ServerConfig {
        shards: Some(1),
        mqtt: Some(MqttConfig {
            max_keep_alive_secs: 1,
            ..mqtt_config()
        }),
        ..ServerConfig::default()
    });
    // 5.0 without a keep-alive: told 1 s, and closed when silent.
    let (mut capped, connack) = Mqtt::connect_with(&broker, Version::V5, "capped", None, 0).await;
    assert_eq!(connack.properties.server_keep_alive, Some(1));
    match capped.next().await {
        Some(Packet::Disconnect(disconnect)) => assert_eq!(disconnect.reason, 0x8D),
        other => panic!("DISCONNECT 0x8D, not {other:?}"),
    }
    // Under the cap: its own, and no server keep-alive in the CONNACK.
    let (_, connack) = Mqtt::connect_with(&broker, Version::V5, "under", None, 1).await;
    assert_eq!(connack.properties.server_keep_alive, None);
    // 3.1.1 cannot be told: it keeps its own (none), and is not closed.
    let (mut old, _) = Mqtt::connect_with(&broker, Version::V311, "old", None, 0).await;
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    old.ping().await;
}
