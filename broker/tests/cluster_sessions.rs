//! MQTT sessions in a cluster: a client id's home is the node the
//! documented hash gives it (as a topic named by the id in the empty
//! namespace), one connection holds an id cluster-wide, and a persistent
//! session follows its client to any node, with what it queued and what
//! its client had not acknowledged.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use corebus_mqtt::{
    self as mqtt, Ack, AckKind, ConnAck, Connect, MqttStr, Packet, Properties, QoS, RetainHandling,
    Subscribe, Subscription, Version,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::cluster::{
    await_alive, documented_owner, free_port, node_ids, node_with_args, runtime, three_nodes_with,
    SECRET,
};
use crate::common::{free_port_on, TempFile};

const WAIT: Duration = Duration::from_secs(10);
/// The session expiry the clients ask for.
const EXPIRY: u32 = 300;

/// A raw MQTT 5.0 client.
struct Mqtt {
    stream: TcpStream,
    input: BytesMut,
}

impl Mqtt {
    /// Connects to node `n` (127.0.0.n) as `id`; its `CONNACK`.
    async fn connect(n: usize, port: u16, id: &str, clean_start: bool) -> (Mqtt, ConnAck) {
        let stream = TcpStream::connect(("127.0.0.".to_string() + &n.to_string(), port))
            .await
            .expect("connects");
        let mut client = Mqtt {
            stream,
            input: BytesMut::new(),
        };
        client
            .send(&Packet::Connect(Box::new(Connect {
                version: Version::V5,
                client_id: MqttStr::new(id).expect("an id"),
                clean_start,
                keep_alive: 0,
                username: None,
                password: None,
                will: None,
                properties: Properties {
                    session_expiry: Some(EXPIRY),
                    ..Properties::default()
                },
            })))
            .await;
        match client.next().await {
            Some(Packet::ConnAck(ack)) => (client, ack),
            other => panic!("a CONNACK, not {other:?}"),
        }
    }

    async fn send(&mut self, packet: &Packet) {
        let mut out = BytesMut::new();
        packet.encode(Version::V5, &mut out);
        self.stream.write_all(&out).await.expect("sent");
    }

    /// The next packet, `None` once the server closed the connection.
    async fn next(&mut self) -> Option<Packet> {
        timeout(WAIT, async {
            loop {
                if let mqtt::Check::Complete { len } =
                    mqtt::check(&self.input, usize::MAX).expect("well-formed")
                {
                    let packet = self.input.split_to(len).freeze();
                    return Some(mqtt::decode(packet, Version::V5).expect("decodes"));
                }
                match self.stream.read_buf(&mut self.input).await {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => {}
                }
            }
        })
        .await
        .expect("a packet or the close within the deadline")
    }

    async fn subscribe(&mut self, filter: &str) {
        self.send(&Packet::Subscribe(Subscribe {
            packet_id: 1,
            properties: Properties::default(),
            filters: vec![Subscription {
                filter: MqttStr::new(filter).expect("a filter"),
                qos: QoS::AtLeastOnce,
                no_local: false,
                retain_as_published: false,
                retain_handling: RetainHandling::OnSubscribe,
            }],
        }))
        .await;
        match self.next().await {
            Some(Packet::SubAck(ack)) => assert_eq!(ack.codes, vec![1], "granted QoS 1"),
            other => panic!("a SUBACK, not {other:?}"),
        }
    }

    /// Publishes at QoS 1 and waits for its `PUBACK`.
    async fn publish(&mut self, packet_id: u16, topic: &str, payload: &str) {
        self.send(&Packet::Publish(mqtt::Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: MqttStr::new(topic).expect("a topic"),
            packet_id: Some(packet_id),
            properties: Properties::default(),
            payload: Bytes::copy_from_slice(payload.as_bytes()),
        }))
        .await;
        match self.next().await {
            Some(Packet::Ack(ack)) if ack.kind == AckKind::PubAck => {
                assert_eq!((ack.packet_id, ack.reason), (packet_id, 0));
            }
            other => panic!("a PUBACK, not {other:?}"),
        }
    }

    /// The next message: (payload, dup, packet id), not acknowledged.
    async fn message(&mut self) -> (String, bool, u16) {
        match self.next().await {
            Some(Packet::Publish(publish)) => (
                String::from_utf8_lossy(&publish.payload).into_owned(),
                publish.dup,
                publish.packet_id.expect("QoS 1"),
            ),
            other => panic!("a PUBLISH, not {other:?}"),
        }
    }

    async fn acknowledge(&mut self, packet_id: u16) {
        self.send(&Packet::Ack(Ack {
            kind: AckKind::PubAck,
            packet_id,
            reason: 0,
            properties: Properties::default(),
        }))
        .await;
    }
}

/// A client id, with `prefix`, whose home is node `home` (an index into
/// `ids`) by the documented hash.
fn id_at_home(home: usize, ids: &[String], prefix: &str) -> String {
    (0..)
        .map(|i| format!("{prefix}-{i}"))
        .find(|id| documented_owner("", id, ids) == home)
        .expect("some id lands on every node")
}

#[test]
fn a_persistent_session_follows_its_client_to_any_node_and_one_connection_holds_its_id() {
    let secret = TempFile::new("cluster-secret-sessions", SECRET);
    let port = free_port_on(3);
    let (_nodes, ids) = three_nodes_with(&secret, |n| {
        vec!["--mqtt-listen".into(), format!("127.0.0.{n}:{port}")]
    });
    // Its home is the third node: the first two ask it over their links.
    let id = id_at_home(2, &ids, "roamer");
    runtime().block_on(async {
        let (mut first, ack) = Mqtt::connect(1, port, &id, true).await;
        assert_eq!((ack.code, ack.session_present), (0, false));
        first.subscribe("roam/#").await;
        // Gone without a word: the session stays on the first node.
        drop(first);

        let (mut publisher, _) = Mqtt::connect(2, port, "roam-publisher", true).await;
        for (packet_id, text) in [(1, "one"), (2, "two"), (3, "three")] {
            publisher.publish(packet_id, "roam/x", text).await;
        }

        // Back through the second node: the session comes from the first,
        // with what it queued, in order.
        let (mut second, ack) = Mqtt::connect(2, port, &id, false).await;
        assert_eq!((ack.code, ack.session_present), (0, true), "{ack:?}");
        let mut unacknowledged = 0;
        for expected in ["one", "two", "three"] {
            let (text, dup, packet_id) = second.message().await;
            assert_eq!((text.as_str(), dup), (expected, false));
            if expected == "three" {
                unacknowledged = packet_id;
            } else {
                second.acknowledge(packet_id).await;
            }
        }
        publisher.publish(4, "roam/y", "four").await;
        assert_eq!(second.message().await.0, "four", "live messages follow");

        // Taken over on the home itself, while the second is connected: the
        // second is told and closed; the third gets "three" again (never
        // acknowledged), with its packet id, then what comes next.
        let (mut third, ack) = Mqtt::connect(3, port, &id, false).await;
        assert_eq!((ack.code, ack.session_present), (0, true), "{ack:?}");
        loop {
            match second.next().await {
                // "four" was not acknowledged either: it may come again.
                Some(Packet::Publish(_)) => {}
                Some(Packet::Disconnect(disconnect)) => {
                    assert_eq!(disconnect.reason, 0x8e, "session taken over");
                }
                None => break,
                other => panic!("the second connection's end, not {other:?}"),
            }
        }
        let (text, dup, packet_id) = third.message().await;
        assert_eq!(
            (text.as_str(), dup, packet_id),
            ("three", true, unacknowledged)
        );
        third.acknowledge(packet_id).await;
        let (text, dup, packet_id) = third.message().await;
        assert_eq!((text.as_str(), dup), ("four", true));
        third.acknowledge(packet_id).await;
        publisher.publish(5, "roam/z", "five").await;
        assert_eq!(third.message().await.0, "five");
    });
}

#[test]
fn a_second_connection_with_the_same_id_on_another_node_closes_the_first() {
    let secret = TempFile::new("cluster-secret-takeover", SECRET);
    let port = free_port_on(3);
    let (_nodes, ids) = three_nodes_with(&secret, |n| {
        vec!["--mqtt-listen".into(), format!("127.0.0.{n}:{port}")]
    });
    runtime().block_on(async {
        // Homes on each node; the connections on the two others.
        for home in 0..3 {
            let id = id_at_home(home, &ids, "single");
            let (at, then) = ((home + 1) % 3 + 1, (home + 2) % 3 + 1);
            let (mut first, ack) = Mqtt::connect(at, port, &id, true).await;
            assert_eq!(ack.code, 0);
            let (_second, ack) = Mqtt::connect(then, port, &id, true).await;
            assert_eq!((ack.code, ack.session_present), (0, false), "a clean start");
            match first.next().await {
                Some(Packet::Disconnect(disconnect)) => assert_eq!(disconnect.reason, 0x8e),
                other => panic!("home {home}: the first is taken over, not {other:?}"),
            }
            assert!(first.next().await.is_none(), "and closed");
        }
    });
}

#[test]
fn a_client_id_whose_home_moves_when_a_node_joins_is_still_held_once() {
    let secret = TempFile::new("cluster-secret-home-moves", SECRET);
    let (cluster_port, metrics_port) = (free_port(), free_port());
    let ids = node_ids(cluster_port);
    let port = free_port_on(3);
    // Its home is the first node while there are two, the third's after.
    let id = (0..)
        .map(|i| format!("mover-{i}"))
        .find(|id| documented_owner("", id, &ids[..2]) == 0 && documented_owner("", id, &ids) == 2)
        .expect("some id moves to the third node");
    let mqtt_node = |n: u8| {
        let listen = format!("127.0.0.{n}:{port}");
        node_with_args(
            n,
            cluster_port,
            metrics_port,
            &secret,
            &[
                "--listen",
                &format!("127.0.0.{n}:0"),
                "--cluster-advertise",
                "off",
                "--mqtt-listen",
                &listen,
            ],
        )
    };
    let (first_node, second_node) = (mqtt_node(1), mqtt_node(2));
    for node in [&first_node, &second_node] {
        await_alive(node, 2.0, WAIT);
    }
    let runtime = runtime();
    let mut first = runtime.block_on(async {
        // On the second node; claimed at the first.
        let (first, ack) = Mqtt::connect(2, port, &id, true).await;
        assert_eq!(ack.code, 0);
        first
    });
    let third_node = mqtt_node(3);
    for node in [&first_node, &second_node, &third_node] {
        await_alive(node, 3.0, WAIT);
    }
    // The nodes place the ids again on their next maintenance tick.
    std::thread::sleep(Duration::from_millis(500));
    runtime.block_on(async {
        // Through the first node, claimed at the third: it knows the holder.
        let (_second, ack) = Mqtt::connect(1, port, &id, true).await;
        assert_eq!(ack.code, 0);
        match first.next().await {
            Some(Packet::Disconnect(disconnect)) => assert_eq!(disconnect.reason, 0x8e),
            other => panic!("the first is taken over, not {other:?}"),
        }
    });
}
