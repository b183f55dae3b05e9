//! Sessions that outlive their connection: queued while the client is
//! away (wildcards included), resumed on either shard with what was not
//! acknowledged sent again, taken over from a live connection, expired,
//! bounded; and a will's delay.

use super::*;

use corebus_net::routing::shard_of_source_port;
use corebus_shards::SessionLimits;

impl Mqtt {
    /// A TCP connection from a source port the broker steers to `shard`.
    async fn open_on(broker: &Broker, version: Version, shard: u16, start: u16) -> Mqtt {
        let shards = broker.shards() as u16;
        let ports = (start..60_000).filter(|&port| shard_of_source_port(port, shards) == shard);
        for port in ports.take(200) {
            let Ok(socket) = tokio::net::TcpSocket::new_v4() else {
                continue;
            };
            let _ = socket.set_reuseaddr(true);
            if socket.bind(([127, 0, 0, 1], port).into()).is_err() {
                continue;
            }
            if let Ok(stream) = socket.connect(broker.mqtt_addr()).await {
                return Mqtt {
                    stream,
                    version,
                    input: BytesMut::new(),
                };
            }
        }
        panic!("no free source port for shard {shard}");
    }

    /// Connects `id` on `shard` with `connect`'s settings; the `CONNACK`.
    async fn connect_on(
        broker: &Broker,
        shard: u16,
        start: u16,
        connect: &Packet,
    ) -> (Mqtt, ConnAck) {
        let Packet::Connect(inner) = connect else {
            panic!("a CONNECT");
        };
        let mut client = Mqtt::open_on(broker, inner.version, shard, start).await;
        client.send(connect).await;
        match client.next().await {
            Some(Packet::ConnAck(ack)) => (client, ack),
            other => panic!("a CONNACK, not {other:?}"),
        }
    }

    /// A clean `DISCONNECT` (5.0: with `session_expiry` when given), and
    /// the close that follows.
    async fn disconnect(mut self, session_expiry: Option<u32>) {
        self.send(&Packet::Disconnect(mqtt::Disconnect {
            reason: 0,
            properties: Properties {
                session_expiry,
                ..Properties::default()
            },
        }))
        .await;
        assert!(self.next().await.is_none(), "closed after DISCONNECT");
    }

    /// The next packet, a `PUBREL` too (which [`Mqtt::next`] answers).
    async fn next_raw(&mut self) -> Option<Packet> {
        timeout(WAIT, self.read_packet())
            .await
            .expect("a packet or the close within the deadline")
    }

    /// A `PUBREL` for `packet_id`, not answered.
    async fn expect_release(&mut self, packet_id: u16) {
        match self.next_raw().await {
            Some(Packet::Ack(got)) => {
                assert_eq!((got.kind, got.packet_id), (AckKind::PubRel, packet_id));
            }
            other => panic!("PUBREL for {packet_id}, not {other:?}"),
        }
    }

    /// The next `PUBLISH`, not acknowledged.
    async fn publish_packet(&mut self) -> mqtt::Publish {
        match self.next().await {
            Some(Packet::Publish(publish)) => publish,
            other => panic!("a PUBLISH, not {other:?}"),
        }
    }
}

/// A `CONNECT` for a session that outlives its connection: 3.1.1 clean
/// session 0, or 5.0 clean start 0 and `expiry` seconds.
fn persistent(version: Version, id: &str, clean: bool, expiry: u32) -> Packet {
    connect_packet(version, id, |connect| {
        connect.clean_start = clean;
        if version == Version::V5 {
            connect.properties.session_expiry = Some(expiry);
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_queues_while_its_client_is_away_and_resumes_on_either_shard() {
    let broker = mqtt_broker(2);
    let (mut publisher, _) = Mqtt::connect(&broker, Version::V5, "publisher").await;
    for (round, version) in [Version::V311, Version::V5].into_iter().enumerate() {
        let id = format!("away{round}");
        let topic = format!("away/{round}/t");
        let start = 20_000 + round as u16 * 4_000;
        let (mut client, connack) = Mqtt::connect_on(
            &broker,
            0,
            start,
            &persistent(version, &id, version == Version::V5, 60),
        )
        .await;
        assert!(!connack.session_present);
        let filters = [
            (topic.as_str(), QoS::ExactlyOnce),
            ("away/+/w", QoS::AtLeastOnce),
        ];
        client.subscribe(1, &filters).await;
        client.disconnect(None).await;
        // While it is away: each QoS to its exact filter, and one to its
        // wildcard filter.
        for (n, qos) in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]
            .into_iter()
            .enumerate()
        {
            let payload = format!("m{n}");
            publisher
                .publish_confirmed(&topic, &payload, qos, 10 + n as u16)
                .await;
        }
        let wild = format!("away/{round}/w");
        publisher
            .publish_confirmed(&wild, "w", QoS::ExactlyOnce, 20)
            .await;
        // Back, on the other shard: the session is there, and what came
        // meanwhile arrives in order, at the lower QoS, once.
        let (mut client, connack) = Mqtt::connect_on(
            &broker,
            1,
            start + 2_000,
            &persistent(version, &id, false, 60),
        )
        .await;
        assert!(connack.session_present, "{version:?}: the session lived on");
        let mut got = Vec::new();
        for _ in 0..4 {
            got.push(client.message_qos().await);
        }
        let expect = |payload: &str, qos| (topic.clone(), payload.to_owned(), qos);
        assert_eq!(
            got,
            vec![
                expect("m0", QoS::AtMostOnce),
                expect("m1", QoS::AtLeastOnce),
                expect("m2", QoS::ExactlyOnce),
                (wild.clone(), "w".into(), QoS::AtLeastOnce),
            ],
            "{version:?}"
        );
        // Still subscribed, without a new SUBSCRIBE: live messages follow.
        publisher
            .publish_confirmed(&topic, "live", QoS::AtLeastOnce, 30)
            .await;
        assert_eq!(client.message().await, (topic.clone(), "live".into()));
        client.ping().await;
        // A clean start ends the session: nothing queued, no subscriptions.
        client.disconnect(None).await;
        publisher
            .publish_confirmed(&topic, "lost", QoS::AtLeastOnce, 31)
            .await;
        let (mut client, connack) = Mqtt::connect_on(
            &broker,
            0,
            start + 3_000,
            &persistent(version, &id, true, 0),
        )
        .await;
        assert!(!connack.session_present);
        publisher
            .publish_confirmed(&topic, "after", QoS::AtLeastOnce, 32)
            .await;
        client.ping().await;
        client.disconnect(None).await;
    }
    let detached: u64 = broker
        .metrics()
        .iter()
        .map(|m| m.stats.sessions_detached)
        .sum();
    let deadline = std::time::Instant::now() + WAIT;
    let mut counted = detached;
    while counted < 4 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        counted = broker
            .metrics()
            .iter()
            .map(|m| m.stats.sessions_detached)
            .sum();
    }
    assert_eq!(counted, 4, "two persistent disconnects per version");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deliveries_not_acknowledged_are_sent_again_with_dup_on_resume() {
    let broker = mqtt_broker(2);
    let (mut publisher, _) = Mqtt::connect(&broker, Version::V311, "pub").await;
    for (round, version) in [Version::V311, Version::V5].into_iter().enumerate() {
        let id = format!("unacked{round}");
        let topic = format!("unacked/{round}");
        let start = 30_000 + round as u16 * 4_000;
        let (mut client, _) = Mqtt::connect_on(
            &broker,
            1,
            start,
            &persistent(version, &id, version == Version::V5, 60),
        )
        .await;
        client
            .subscribe(1, &[(topic.as_str(), QoS::ExactlyOnce)])
            .await;
        publisher
            .publish_confirmed(&topic, "one", QoS::AtLeastOnce, 1)
            .await;
        publisher
            .publish_confirmed(&topic, "two", QoS::ExactlyOnce, 2)
            .await;
        publisher
            .publish_confirmed(&topic, "three", QoS::ExactlyOnce, 3)
            .await;
        let first = client.publish_packet().await;
        let second = client.publish_packet().await;
        let third = client.publish_packet().await;
        assert!(!first.dup && !second.dup && !third.dup);
        // The third is received (PUBREC): the broker is at its PUBREL.
        let third_id = third.packet_id.expect("QoS 2");
        client.send(&ack(AckKind::PubRec, third_id)).await;
        client.expect_release(third_id).await;
        drop(client);
        let (mut client, connack) = Mqtt::connect_on(
            &broker,
            0,
            start + 2_000,
            &persistent(version, &id, false, 60),
        )
        .await;
        assert!(connack.session_present);
        for sent in [first, second] {
            let again = client.publish_packet().await;
            assert!(again.dup, "{version:?}: sent again with DUP");
            assert_eq!(
                (again.packet_id, again.qos, again.payload),
                (sent.packet_id, sent.qos, sent.payload)
            );
        }
        // The exchange at its PUBREL goes on from there.
        client.expect_release(third_id).await;
        client.send(&ack(AckKind::PubComp, third_id)).await;
        client.ping().await;
        client.disconnect(Some(0)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_connection_is_taken_over_with_its_session_and_nothing_is_lost() {
    const COUNT: u16 = 1_000;
    let broker = mqtt_broker(2);
    let connect = persistent(Version::V5, "live", true, 60);
    let (mut old, _) = Mqtt::connect_on(&broker, 0, 40_000, &connect).await;
    old.subscribe(1, &[("live/#", QoS::AtLeastOnce)]).await;
    // Messages keep coming while the session changes connection; the old
    // client acknowledges none of them.
    let (mut publisher, _) = Mqtt::connect(&broker, Version::V5, "pub").await;
    // In bursts of 20 (each acknowledged before the next), so that some
    // reach both connections while the new one subscribes.
    let publishing = tokio::spawn(async move {
        for burst in 0..(COUNT / 20) {
            for n in burst * 20..(burst + 1) * 20 {
                let payload = format!("m{n:04}");
                publisher
                    .publish("live/a", &payload, QoS::AtLeastOnce, n + 1)
                    .await;
            }
            for n in burst * 20..(burst + 1) * 20 {
                publisher.expect_ack(AckKind::PubAck, n + 1, 0).await;
            }
        }
        publisher
    });
    let mut first = Vec::new();
    while first.len() < 20 {
        first.push(old.publish_packet().await);
    }
    let connect = persistent(Version::V5, "live", false, 60);
    let (mut new, connack) = Mqtt::connect_on(&broker, 1, 42_000, &connect).await;
    assert!(connack.session_present);
    loop {
        match old.next_raw().await {
            Some(Packet::Publish(_)) => {}
            Some(Packet::Disconnect(disconnect)) => {
                assert_eq!(disconnect.reason, 0x8E);
                break;
            }
            other => panic!("DISCONNECT taken over, not {other:?}"),
        }
    }
    assert!(old.next_raw().await.is_none());
    let _publisher = publishing.await.expect("published");
    // Every message once, in order: the old connection's again (DUP), then
    // the rest, none twice though both connections got some.
    let mut got = Vec::new();
    while got.len() < usize::from(COUNT) {
        let publish = new.publish_packet().await;
        let payload = String::from_utf8_lossy(&publish.payload).into_owned();
        if got.len() < 20 {
            assert!(publish.dup, "{payload} was sent to the old connection");
        }
        new.send(&ack(AckKind::PubAck, publish.packet_id.expect("QoS 1")))
            .await;
        got.push(payload);
    }
    let expect: Vec<String> = (0..COUNT).map(|n| format!("m{n:04}")).collect();
    assert_eq!(got, expect);
    new.ping().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_expire_and_a_disconnect_may_change_their_expiry() {
    let broker = mqtt_broker(2);
    // Expiry 0: the session ends with its connection.
    let (client, _) =
        Mqtt::connect_as(&broker, Version::V5, &persistent(Version::V5, "e", true, 0)).await;
    client.disconnect(None).await;
    let (client, connack) = Mqtt::connect_as(
        &broker,
        Version::V5,
        &persistent(Version::V5, "e", false, 1),
    )
    .await;
    assert!(!connack.session_present, "expiry 0 ended it");
    // Expiry 1 s: gone 2 s later.
    client.disconnect(None).await;
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    let (client, connack) = Mqtt::connect_as(
        &broker,
        Version::V5,
        &persistent(Version::V5, "e", false, 1),
    )
    .await;
    assert!(!connack.session_present, "expired after 1 s");
    // A DISCONNECT lengthens it to 30 s: still there 2 s later...
    client.disconnect(Some(30)).await;
    tokio::time::sleep(Duration::from_millis(2_000)).await;
    let (client, connack) = Mqtt::connect_as(
        &broker,
        Version::V5,
        &persistent(Version::V5, "e", false, 1),
    )
    .await;
    assert!(connack.session_present, "the DISCONNECT's expiry holds");
    // ...and one with 0 ends it at once.
    client.disconnect(Some(0)).await;
    let (_client, connack) = Mqtt::connect_as(
        &broker,
        Version::V5,
        &persistent(Version::V5, "e", false, 1),
    )
    .await;
    assert!(!connack.session_present, "ended by the DISCONNECT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_will_waits_for_its_delay_and_a_resumed_session_cancels_it() {
    let broker = mqtt_broker(2);
    let (mut watcher, _) = Mqtt::connect(&broker, Version::V5, "watcher").await;
    watcher.subscribe(1, &[("will/+", QoS::AtMostOnce)]).await;
    let with_delay = |id: &str, clean: bool| {
        connect_packet(Version::V5, id, |connect| {
            connect.clean_start = clean;
            connect.properties.session_expiry = Some(60);
            let mut will = will_of(id);
            will.properties.will_delay = Some(1);
            connect.will = Some(will);
        })
    };
    // Lost: the will comes after its delay, not before.
    let (client, _) = Mqtt::connect_as(&broker, Version::V5, &with_delay("late", true)).await;
    let lost = std::time::Instant::now();
    drop(client);
    assert_eq!(
        watcher.message().await,
        ("will/late".into(), "gone late".into())
    );
    let waited = lost.elapsed();
    assert!(
        waited >= Duration::from_millis(900),
        "published after its 1 s delay, not {waited:?}"
    );
    // Lost and back within the delay: no will.
    let (client, _) = Mqtt::connect_as(&broker, Version::V5, &with_delay("back", true)).await;
    drop(client);
    let (client, connack) =
        Mqtt::connect_as(&broker, Version::V5, &with_delay("back", false)).await;
    assert!(connack.session_present);
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    client.disconnect(Some(0)).await;
    // The watcher's next message is a marker, not the cancelled will.
    let (mut marker, _) = Mqtt::connect(&broker, Version::V5, "marker").await;
    marker
        .publish_confirmed("will/marker", "marker", QoS::AtLeastOnce, 1)
        .await;
    assert_eq!(
        watcher.message().await,
        ("will/marker".into(), "marker".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_sessions_without_a_connection_hold_is_bounded_and_drops_are_counted() {
    let broker = Broker::start_config(ServerConfig {
        shards: Some(1),
        mqtt: Some(MqttConfig {
            sessions: SessionLimits {
                max_detached: 2,
                queue_messages: 3,
                queue_bytes: 80,
                ..SessionLimits::default()
            },
            ..mqtt_config()
        }),
        ..ServerConfig::default()
    });
    let (mut publisher, _) = Mqtt::connect(&broker, Version::V5, "pub").await;
    for id in ["a", "b", "c"] {
        let (mut client, _) = Mqtt::connect_as(
            &broker,
            Version::V311,
            &persistent(Version::V311, id, false, 0),
        )
        .await;
        client
            .subscribe(1, &[(&format!("bound/{id}"), QoS::AtLeastOnce)])
            .await;
        client.disconnect(None).await;
    }
    // "a" may queue 3 of its 5 (the count); "b" what fits in the bytes
    // left (all sessions together hold 80: a message is 7 bytes of topic
    // and at least 9 of body).
    for id in ["a", "b"] {
        for n in 0..5 {
            let payload = format!("{id}-{n:06}");
            let topic = format!("bound/{id}");
            publisher
                .publish_confirmed(&topic, &payload, QoS::AtLeastOnce, 1)
                .await;
        }
    }
    let mut queued = Vec::new();
    for id in ["a", "b"] {
        let connect = persistent(Version::V311, id, false, 0);
        let (mut client, connack) = Mqtt::connect_as(&broker, Version::V311, &connect).await;
        assert!(connack.session_present);
        // Queued messages come right after the CONNACK, before any answer.
        queued.push(client.messages_until_pong().await);
    }
    let expect = |id: &str, count: usize| -> Vec<String> {
        (0..count).map(|n| format!("{id}-{n:06}")).collect()
    };
    assert_eq!(queued[0], expect("a", 3), "the first 3: the count bound");
    let from_b = queued[1].len();
    assert!(
        (1..5).contains(&from_b) && queued[1] == expect("b", from_b),
        "the first ones that fit the bytes left: {:?}",
        queued[1]
    );
    let drops = || -> u64 {
        broker
            .metrics()
            .iter()
            .map(|m| m.stats.session_messages_dropped)
            .sum()
    };
    let dropped = (2 + 5 - from_b) as u64;
    let deadline = std::time::Instant::now() + WAIT;
    while drops() < dropped && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(drops(), dropped, "every message not queued is counted");
    // "c" came third, past the 2 sessions kept: it ended with its
    // connection.
    let connect = persistent(Version::V311, "c", false, 0);
    let (_client, connack) = Mqtt::connect_as(&broker, Version::V311, &connect).await;
    assert!(
        !connack.session_present,
        "only 2 sessions without a connection are kept"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacknowledged_deliveries_kept_for_a_resume_are_bounded_in_bytes() {
    // Kept to be sent again, deliveries a client does not acknowledge hold
    // at most `outbox_limit` bytes however large its receive maximum; the
    // next ones wait (as many bytes again) or are dropped.
    let limit = 64 * 1024;
    let broker = mqtt_broker_with(
        1,
        ServerConfig {
            engine: EngineConfig {
                outbox_limit_bytes: limit,
                ..EngineConfig::default()
            },
            ..ServerConfig::default()
        },
    );
    let (mut publisher, _) = Mqtt::connect(&broker, Version::V5, "pub").await;
    let connect = persistent(Version::V311, "hoarder", false, 0);
    let (mut client, _) = Mqtt::connect_as(&broker, Version::V311, &connect).await;
    client.subscribe(1, &[("hoard", QoS::AtLeastOnce)]).await;
    let payload = "x".repeat(4_000);
    for n in 0..40u16 {
        publisher
            .publish_confirmed("hoard", &payload, QoS::AtLeastOnce, n + 1)
            .await;
    }
    client.send(&Packet::PingReq).await;
    let mut unacked = Vec::new();
    loop {
        match client.next().await {
            Some(Packet::PingResp) => break,
            Some(Packet::Publish(publish)) => unacked.push(publish.packet_id.expect("QoS 1")),
            other => panic!("a PUBLISH or PINGRESP, not {other:?}"),
        }
    }
    let most = limit / 4_000 + 1;
    assert!(
        (most - 2..=most).contains(&unacked.len()),
        "{} deliveries unacknowledged: about {limit} bytes' worth",
        unacked.len()
    );
    // Acknowledged, they make room for the ones that waited.
    for packet_id in unacked {
        client.send(&ack(AckKind::PubAck, packet_id)).await;
    }
    assert_eq!(client.message().await, ("hoard".into(), payload));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_outlives_a_connection_closed_for_its_keep_alive() {
    let broker = mqtt_broker(2);
    let connect = connect_packet(Version::V5, "silent", |connect| {
        connect.keep_alive = 1;
        connect.properties.session_expiry = Some(60);
    });
    let (mut client, _) = Mqtt::connect_as(&broker, Version::V5, &connect).await;
    client.subscribe(1, &[("quiet/#", QoS::AtLeastOnce)]).await;
    // Silent past 1.5 s: told (0x8D) and closed, its session kept.
    match client.next_raw().await {
        Some(Packet::Disconnect(disconnect)) => assert_eq!(disconnect.reason, 0x8D),
        other => panic!("DISCONNECT keep-alive timeout, not {other:?}"),
    }
    assert!(client.next_raw().await.is_none());
    let (mut publisher, _) = Mqtt::connect(&broker, Version::V5, "pub").await;
    publisher
        .publish_confirmed("quiet/a", "meanwhile", QoS::AtLeastOnce, 1)
        .await;
    let connect = persistent(Version::V5, "silent", false, 60);
    let (mut client, connack) = Mqtt::connect_as(&broker, Version::V5, &connect).await;
    assert!(connack.session_present);
    assert_eq!(
        client.message().await,
        ("quiet/a".into(), "meanwhile".into())
    );
}
