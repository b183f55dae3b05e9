//! The MQTT listener, spoken to with the project's own MQTT codec as the
//! client (the interoperability tests with Paho and Mosquitto's tools are
//! `broker/tests/mqtt_interop.rs`, MQTT.js is browser case m1): both
//! versions, every QoS exchange, MQTT's topic names and wildcards, native
//! and MQTT clients in both directions with the owner's sequence, refusals
//! with their codes, keep-alive, wills, takeover, the bounds, and MQTT over
//! WebSocket. This file holds the client the tests share.

mod connections;
mod delivery;
mod properties;
mod retained;
mod sessions;
mod shared;
mod tenants;
mod websocket;

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
        mqtt: Some(mqtt_config()),
        ..config
    })
}

/// The MQTT listener the tests use: any port on loopback, topics in
/// `mqtt`, no keep-alive cap, sessions with their default limits.
fn mqtt_config() -> MqttConfig {
    MqttConfig {
        listen: ([127, 0, 0, 1], 0).into(),
        namespace: "mqtt".into(),
        tenants: false,
        max_keep_alive_secs: 0,
        sessions: corebus_shards::SessionLimits::default(),
    }
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
        let connect = connect_packet(version, id, |connect| {
            connect.keep_alive = keep_alive;
            connect.username = password.map(|_| MqttStr::new("user").expect("a name"));
            connect.password = password.map(|p| Bytes::copy_from_slice(p.as_bytes()));
        });
        Mqtt::connect_as(broker, version, &connect).await
    }

    /// Opens a connection, sends `connect` and returns the `CONNACK`.
    async fn connect_as(broker: &Broker, version: Version, connect: &Packet) -> (Mqtt, ConnAck) {
        let mut client = Mqtt::open(broker, version).await;
        client.send(connect).await;
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

    /// The payloads of the messages that come until a `PINGRESP`
    /// (everything delivered before the ping was answered), acknowledged.
    async fn messages_until_pong(&mut self) -> Vec<String> {
        self.send(&Packet::PingReq).await;
        let mut got = Vec::new();
        loop {
            match self.next().await {
                Some(Packet::PingResp) => return got,
                Some(Packet::Publish(publish)) => {
                    if let Some(packet_id) = publish.packet_id {
                        self.send(&ack(AckKind::PubAck, packet_id)).await;
                    }
                    got.push(String::from_utf8_lossy(&publish.payload).into_owned());
                }
                other => panic!("a PUBLISH or PINGRESP, not {other:?}"),
            }
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

/// A `CONNECT` for `id`: clean start, no keep-alive, credentials, will or
/// properties; `edit` sets what a test needs.
fn connect_packet(version: Version, id: &str, edit: impl FnOnce(&mut Connect)) -> Packet {
    let mut connect = Connect {
        version,
        client_id: MqttStr::new(id).expect("an id"),
        clean_start: true,
        keep_alive: 0,
        username: None,
        password: None,
        will: None,
        properties: Properties::default(),
    };
    edit(&mut connect);
    Packet::Connect(Box::new(connect))
}

/// A will to `will/{id}` saying "gone {id}".
fn will_of(id: &str) -> mqtt::LastWill {
    mqtt::LastWill {
        topic: MqttStr::new(&format!("will/{id}")).expect("a topic"),
        payload: Bytes::from(format!("gone {id}")),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: Properties::default(),
    }
}

/// A broker whose clients may have 3 QoS 1 and 2 publishes unanswered.
fn small_receive_maximum_broker() -> Broker {
    mqtt_broker_with(
        1,
        ServerConfig {
            engine: EngineConfig {
                max_in_flight_per_conn: 3,
                ..EngineConfig::default()
            },
            ..ServerConfig::default()
        },
    )
}

fn ack(kind: AckKind, packet_id: u16) -> Packet {
    Packet::Ack(Ack {
        kind,
        packet_id,
        reason: 0,
        properties: Properties::default(),
    })
}

/// Connects `id` with a will to `will/{id}` saying "gone {id}".
async fn connect_with_will(broker: &Broker, version: Version, id: &str, keep_alive: u16) -> Mqtt {
    let connect = connect_packet(version, id, |connect| {
        connect.keep_alive = keep_alive;
        connect.will = Some(will_of(id));
    });
    let (client, ack) = Mqtt::connect_as(broker, version, &connect).await;
    assert_eq!(ack.code, 0);
    client
}
