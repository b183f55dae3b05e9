//! The MQTT listener, spoken to with the project's own MQTT codec as the
//! client (the interoperability tests with Paho, Mosquitto's tools and
//! MQTT.js are in `scripts/mqtt-interop`): both versions, every QoS
//! exchange, MQTT's topic names and wildcards, native and MQTT clients in
//! both directions with the owner's sequence, refusals with their codes,
//! keep-alive, and a broken client that takes down only itself.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use corebus_client::Client;
use corebus_mqtt::{
    self as mqtt, Ack, AckKind, ConnAck, Connect, MqttStr, Packet, Properties, QoS, RetainHandling,
    SubAck, Subscribe, Subscription, Version,
};
use corebus_shards::auth::AuthError;
use corebus_shards::{Authenticator, EngineConfig, Grant, MqttConfig, Permissions, ServerConfig};
use corebus_tests::Broker;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(10);

fn mqtt_broker(shards: usize) -> Broker {
    mqtt_broker_with(shards, ServerConfig::default())
}

fn mqtt_broker_with(shards: usize, config: ServerConfig) -> Broker {
    Broker::start_config(ServerConfig {
        shards: Some(shards),
        mqtt: Some(MqttConfig {
            listen: ([127, 0, 0, 1], 0).into(),
            namespace: "mqtt".into(),
        }),
        ..config
    })
}

/// A bare MQTT client: packets out, packets in, nothing hidden.
struct Mqtt {
    stream: TcpStream,
    version: Version,
    input: BytesMut,
}

impl Mqtt {
    /// Connects and sends `CONNECT`; the `CONNACK` is returned.
    async fn connect(broker: &Broker, version: Version, id: &str) -> (Mqtt, ConnAck) {
        Mqtt::connect_with(broker, version, id, None, 0).await
    }

    async fn connect_with(
        broker: &Broker,
        version: Version,
        id: &str,
        password: Option<&str>,
        keep_alive: u16,
    ) -> (Mqtt, ConnAck) {
        let mut client = Mqtt::open(broker, version).await;
        client
            .send(&Packet::Connect(Box::new(Connect {
                version,
                client_id: MqttStr::new(id).expect("an id"),
                clean_start: true,
                keep_alive,
                username: password.map(|_| MqttStr::new("user").expect("a name")),
                password: password.map(|p| Bytes::copy_from_slice(p.as_bytes())),
                will: None,
                properties: Properties::default(),
            })))
            .await;
        match client.next().await {
            Some(Packet::ConnAck(ack)) => (client, ack),
            other => panic!("a CONNACK, not {other:?}"),
        }
    }

    /// A TCP connection to the MQTT listener, nothing sent.
    async fn open(broker: &Broker, version: Version) -> Mqtt {
        let stream = TcpStream::connect(broker.mqtt_addr())
            .await
            .expect("connects");
        Mqtt {
            stream,
            version,
            input: BytesMut::new(),
        }
    }

    async fn send(&mut self, packet: &Packet) {
        let mut out = BytesMut::new();
        packet.encode(self.version, &mut out);
        self.stream.write_all(&out).await.expect("sent");
    }

    /// The next packet, or `None` once the broker closed the connection.
    /// A `PUBREL` (of a QoS 2 delivery) is answered with `PUBCOMP` on the
    /// way, not returned.
    async fn next(&mut self) -> Option<Packet> {
        loop {
            let packet = timeout(WAIT, self.read_packet())
                .await
                .expect("a packet or the close within the deadline");
            match packet {
                Some(Packet::Ack(release)) if release.kind == AckKind::PubRel => {
                    self.send(&ack(AckKind::PubComp, release.packet_id)).await
                }
                other => return other,
            }
        }
    }

    async fn read_packet(&mut self) -> Option<Packet> {
        loop {
            if let mqtt::Check::Complete { len } =
                mqtt::check(&self.input, usize::MAX).expect("well-formed")
            {
                let packet = self.input.split_to(len).freeze();
                return Some(mqtt::decode(packet, self.version).expect("decodes"));
            }
            match self.stream.read_buf(&mut self.input).await {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    async fn subscribe(&mut self, packet_id: u16, filters: &[(&str, QoS)]) -> SubAck {
        let filters = filters
            .iter()
            .map(|(filter, qos)| Subscription {
                filter: MqttStr::new(filter).expect("a filter"),
                qos: *qos,
                no_local: false,
                retain_as_published: false,
                retain_handling: RetainHandling::OnSubscribe,
            })
            .collect();
        self.send(&Packet::Subscribe(Subscribe {
            packet_id,
            properties: Properties::default(),
            filters,
        }))
        .await;
        match self.next().await {
            Some(Packet::SubAck(ack)) => ack,
            other => panic!("a SUBACK, not {other:?}"),
        }
    }

    async fn publish(&mut self, topic: &str, payload: &str, qos: QoS, packet_id: u16) {
        self.send(&Packet::Publish(mqtt::Publish {
            dup: false,
            qos,
            retain: false,
            topic: MqttStr::new(topic).expect("a topic"),
            packet_id: (qos != QoS::AtMostOnce).then_some(packet_id),
            properties: Properties::default(),
            payload: Bytes::copy_from_slice(payload.as_bytes()),
        }))
        .await;
    }

    /// Publishes with `qos` and completes its exchange: `PUBACK`, or
    /// `PUBREC`, `PUBREL`, `PUBCOMP`.
    async fn publish_confirmed(&mut self, topic: &str, payload: &str, qos: QoS, packet_id: u16) {
        self.publish(topic, payload, qos, packet_id).await;
        match qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => self.expect_ack(AckKind::PubAck, packet_id, 0).await,
            QoS::ExactlyOnce => {
                self.expect_ack(AckKind::PubRec, packet_id, 0).await;
                self.send(&ack(AckKind::PubRel, packet_id)).await;
                self.expect_ack(AckKind::PubComp, packet_id, 0).await;
            }
        }
    }

    async fn expect_ack(&mut self, kind: AckKind, packet_id: u16, reason: u8) {
        match self.next().await {
            Some(Packet::Ack(got)) => {
                assert_eq!(
                    (got.kind, got.packet_id, got.reason),
                    (kind, packet_id, reason)
                );
            }
            other => panic!("{kind:?} for {packet_id}, not {other:?}"),
        }
    }

    /// The next `PUBLISH`, as (topic, payload), acknowledged as its QoS
    /// asks (`PUBACK`, or `PUBREC` and later `PUBCOMP`).
    async fn message(&mut self) -> (String, String) {
        let (topic, payload, _) = self.message_qos().await;
        (topic, payload)
    }

    /// [`Mqtt::message`] with the QoS it came at.
    async fn message_qos(&mut self) -> (String, String, QoS) {
        match self.next().await {
            Some(Packet::Publish(publish)) => {
                match (publish.qos, publish.packet_id) {
                    (QoS::AtMostOnce, None) => {}
                    (QoS::AtLeastOnce, Some(id)) => self.send(&ack(AckKind::PubAck, id)).await,
                    (QoS::ExactlyOnce, Some(id)) => self.send(&ack(AckKind::PubRec, id)).await,
                    other => panic!("a packet id exactly at QoS 1 and 2: {other:?}"),
                }
                (
                    publish.topic.as_str().to_owned(),
                    String::from_utf8_lossy(&publish.payload).into_owned(),
                    publish.qos,
                )
            }
            other => panic!("a PUBLISH, not {other:?}"),
        }
    }

    /// A `PINGREQ` answered: everything sent before it was handled.
    async fn ping(&mut self) {
        self.send(&Packet::PingReq).await;
        match self.next().await {
            Some(Packet::PingResp) => {}
            other => panic!("PINGRESP, not {other:?}"),
        }
    }
}

fn ack(kind: AckKind, packet_id: u16) -> Packet {
    Packet::Ack(Ack {
        kind,
        packet_id,
        reason: 0,
        properties: Properties::default(),
    })
}

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
                ("$share/group/t", QoS::AtMostOnce),
                ("ok/+", QoS::AtMostOnce),
                ("star/*", QoS::AtMostOnce),
            ],
        )
        .await
        .codes;
    assert_eq!(codes, [0x8F, 0x9E, 0, 0x8F]);
    // A name the native side cannot hold (a control character, a level
    // that is a native wildcard): PUBACK 0x90 at QoS 1.
    v5.publish("bad/\u{1}", "x", QoS::AtLeastOnce, 9).await;
    v5.expect_ack(AckKind::PubAck, 9, 0x90).await;
    v5.publish("bad/>", "x", QoS::ExactlyOnce, 10).await;
    v5.expect_ack(AckKind::PubRec, 10, 0x90).await;
    // 3.1.1 has only one failure code.
    let (mut v3, _) = Mqtt::connect(&broker, Version::V311, "codes3").await;
    let codes = v3
        .subscribe(2, &[("a/#/b", QoS::AtMostOnce), ("fine", QoS::AtMostOnce)])
        .await
        .codes;
    assert_eq!(codes, [0x80, 0]);
    // A retained publish on 5.0, which the CONNACK said is not available.
    v5.send(&Packet::Publish(mqtt::Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: true,
        topic: MqttStr::new("t").expect("a topic"),
        packet_id: None,
        properties: Properties::default(),
        payload: Bytes::new(),
    }))
    .await;
    match v5.next().await {
        Some(Packet::Disconnect(disconnect)) => assert_eq!(disconnect.reason, 0x9A),
        other => panic!("DISCONNECT 0x9A, not {other:?}"),
    }
    assert!(v5.next().await.is_none(), "then the connection closes");
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
        .send(&Packet::Connect(Box::new(Connect {
            version: Version::V5,
            client_id: MqttStr::new("twice").expect("an id"),
            clean_start: true,
            keep_alive: 0,
            username: None,
            password: None,
            will: None,
            properties: Properties::default(),
        })))
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
        Packet::Connect(Box::new(Connect {
            version: Version::V311,
            client_id: MqttStr::new("quick").expect("an id"),
            clean_start: true,
            keep_alive: 0,
            username: None,
            password: None,
            will: None,
            properties: Properties::default(),
        })),
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

/// Connects `id` with a will to `will/{id}` saying "gone {id}".
async fn connect_with_will(broker: &Broker, version: Version, id: &str, keep_alive: u16) -> Mqtt {
    let mut client = Mqtt::open(broker, version).await;
    client
        .send(&Packet::Connect(Box::new(Connect {
            version,
            client_id: MqttStr::new(id).expect("an id"),
            clean_start: true,
            keep_alive,
            username: None,
            password: None,
            will: Some(mqtt::LastWill {
                topic: MqttStr::new(&format!("will/{id}")).expect("a topic"),
                payload: Bytes::from(format!("gone {id}")),
                qos: QoS::AtLeastOnce,
                retain: false,
                properties: Properties::default(),
            }),
            properties: Properties::default(),
        })))
        .await;
    match client.next().await {
        Some(Packet::ConnAck(ack)) => assert_eq!(ack.code, 0),
        other => panic!("a CONNACK, not {other:?}"),
    }
    client
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

/// MQTT packets over a WebSocket on the browser listener's `/mqtt`.
struct MqttWs {
    ws: tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>,
    version: Version,
    input: BytesMut,
}

impl MqttWs {
    async fn open(broker: &Broker, version: Version) -> MqttWs {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut request = format!("ws://{}/mqtt", broker.web_addr())
            .into_client_request()
            .expect("request");
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            tokio_tungstenite::tungstenite::http::HeaderValue::from_static("mqtt"),
        );
        let (ws, response) = tokio_tungstenite::connect_async(request)
            .await
            .expect("upgraded");
        assert_eq!(
            response
                .headers()
                .get("Sec-WebSocket-Protocol")
                .map(|v| v.as_bytes()),
            Some(&b"mqtt"[..])
        );
        MqttWs {
            ws,
            version,
            input: BytesMut::new(),
        }
    }

    /// Sends `packets` encoded back to back, cut into messages at `cuts`
    /// (a packet may span messages, and a message hold several).
    async fn send(&mut self, packets: &[Packet], cuts: &[usize]) {
        use futures_util::SinkExt;
        let mut wire = BytesMut::new();
        for packet in packets {
            packet.encode(self.version, &mut wire);
        }
        let mut wire = wire.freeze();
        for cut in cuts {
            let part = wire.split_to((*cut).min(wire.len()));
            self.ws
                .send(tokio_tungstenite::tungstenite::Message::binary(part))
                .await
                .expect("sent");
        }
        if !wire.is_empty() {
            self.ws
                .send(tokio_tungstenite::tungstenite::Message::binary(wire))
                .await
                .expect("sent");
        }
    }

    /// The next packet; `None` when the WebSocket closed.
    async fn next(&mut self) -> Option<Packet> {
        use futures_util::StreamExt;
        loop {
            if let mqtt::Check::Complete { len } =
                mqtt::check(&self.input, usize::MAX).expect("well-formed")
            {
                let packet = self.input.split_to(len).freeze();
                return Some(mqtt::decode(packet, self.version).expect("decodes"));
            }
            match timeout(WAIT, self.ws.next()).await.expect("in time") {
                Some(Ok(tokio_tungstenite::tungstenite::Message::Binary(data))) => {
                    self.input.extend_from_slice(&data)
                }
                Some(Ok(tokio_tungstenite::tungstenite::Message::Close(_)))
                | None
                | Some(Err(_)) => return None,
                Some(Ok(_)) => {}
            }
        }
    }
}

fn connect_packet(version: Version, id: &str, with_will: bool) -> Packet {
    Packet::Connect(Box::new(Connect {
        version,
        client_id: MqttStr::new(id).expect("an id"),
        clean_start: true,
        keep_alive: 0,
        username: None,
        password: None,
        will: with_will.then(|| mqtt::LastWill {
            topic: MqttStr::new(&format!("will/{id}")).expect("a topic"),
            payload: Bytes::from(format!("gone {id}")),
            qos: QoS::AtMostOnce,
            retain: false,
            properties: Properties::default(),
        }),
        properties: Properties::default(),
    }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_over_websocket_on_the_browser_listener_is_the_same_front_door() {
    let broker = mqtt_broker_with(
        2,
        ServerConfig {
            web: Some(corebus_shards::WebConfig {
                listen: ([127, 0, 0, 1], 0).into(),
                origins: corebus_shards::Origins::default(),
            }),
            ..ServerConfig::default()
        },
    );
    for version in [Version::V311, Version::V5] {
        let mut ws = MqttWs::open(&broker, version).await;
        // CONNECT and SUBSCRIBE in three messages, cut inside both packets.
        let subscribe = Packet::Subscribe(Subscribe {
            packet_id: 3,
            properties: Properties::default(),
            filters: vec![Subscription {
                filter: MqttStr::new("ws/#").expect("a filter"),
                qos: QoS::AtLeastOnce,
                no_local: false,
                retain_as_published: false,
                retain_handling: RetainHandling::OnSubscribe,
            }],
        });
        ws.send(
            &[connect_packet(version, "browser", true), subscribe],
            &[5, 20],
        )
        .await;
        assert!(matches!(ws.next().await, Some(Packet::ConnAck(ack)) if ack.code == 0));
        assert!(matches!(ws.next().await, Some(Packet::SubAck(ack)) if ack.codes == [1]));
        // From an MQTT client over TCP and from a native one.
        let (mut tcp, _) = Mqtt::connect(&broker, Version::V311, "tcp").await;
        tcp.publish_confirmed("ws/a", "over tcp", QoS::AtLeastOnce, 1)
            .await;
        let native = Client::connect(broker.addr()).await.expect("connects");
        native
            .publish("mqtt", "ws", "native")
            .await
            .expect("published");
        let mut got = Vec::new();
        for _ in 0..2 {
            match ws.next().await {
                Some(Packet::Publish(publish)) => got.push((
                    publish.topic.as_str().to_owned(),
                    String::from_utf8_lossy(&publish.payload).into_owned(),
                )),
                other => panic!("a PUBLISH, not {other:?}"),
            }
        }
        got.sort();
        assert_eq!(
            got,
            [
                ("ws".to_owned(), "native".to_owned()),
                ("ws/a".to_owned(), "over tcp".to_owned())
            ]
        );
        // The browser's publish reaches the TCP client, acknowledged.
        tcp.subscribe(2, &[("from/browser", QoS::AtMostOnce)]).await;
        ws.send(
            &[Packet::Publish(mqtt::Publish {
                dup: false,
                qos: QoS::AtLeastOnce,
                retain: false,
                topic: MqttStr::new("from/browser").expect("a topic"),
                packet_id: Some(9),
                properties: Properties::default(),
                payload: Bytes::from_static(b"hi"),
            })],
            &[],
        )
        .await;
        assert!(matches!(ws.next().await, Some(Packet::Ack(ack)) if ack.packet_id == 9));
        assert_eq!(tcp.message().await, ("from/browser".into(), "hi".into()));
        // The WebSocket goes away without DISCONNECT: its will goes out.
        tcp.subscribe(4, &[("will/+", QoS::AtMostOnce)]).await;
        drop(ws);
        assert_eq!(
            tcp.message().await,
            ("will/browser".into(), "gone browser".into())
        );
    }
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
    let mut sub = Mqtt::open(&broker, Version::V5).await;
    sub.send(&Packet::Connect(Box::new(Connect {
        version: Version::V5,
        client_id: MqttStr::new("slow").expect("an id"),
        clean_start: true,
        keep_alive: 0,
        username: None,
        password: None,
        will: None,
        properties: Properties {
            receive_maximum: Some(2),
            ..Properties::default()
        },
    })))
    .await;
    assert!(matches!(sub.next().await, Some(Packet::ConnAck(ack)) if ack.code == 0));
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
    let mut sub = Mqtt::open(&broker, Version::V5).await;
    sub.send(&Packet::Connect(Box::new(Connect {
        version: Version::V5,
        client_id: MqttStr::new("aliased").expect("an id"),
        clean_start: true,
        keep_alive: 0,
        username: None,
        password: None,
        will: None,
        properties: Properties {
            topic_alias_maximum: Some(1),
            ..Properties::default()
        },
    })))
    .await;
    assert!(matches!(sub.next().await, Some(Packet::ConnAck(ack)) if ack.code == 0));
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
async fn a_client_past_the_receive_maximum_is_disconnected_and_holds_no_more() {
    let broker = mqtt_broker_with(
        1,
        ServerConfig {
            engine: EngineConfig {
                max_in_flight_per_conn: 3,
                ..EngineConfig::default()
            },
            ..ServerConfig::default()
        },
    );
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
async fn a_client_that_pings_without_reading_is_closed_before_its_answers_pile_up() {
    // Receive maximum 3: at most 3 + 1,024 answers wait for the client.
    let broker = mqtt_broker_with(
        1,
        ServerConfig {
            engine: EngineConfig {
                max_in_flight_per_conn: 3,
                ..EngineConfig::default()
            },
            ..ServerConfig::default()
        },
    );
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
