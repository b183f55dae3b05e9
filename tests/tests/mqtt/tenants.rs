//! Multi-tenant mode (`mqtt_tenants`): an MQTT topic name's first level is
//! its namespace.

use super::*;

fn tenants_broker() -> Broker {
    Broker::start_config(ServerConfig {
        shards: Some(2),
        mqtt: Some(MqttConfig {
            namespace: "unused".into(),
            tenants: true,
            ..mqtt_config()
        }),
        ..ServerConfig::default()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_level_is_the_namespace_and_names_without_one_are_refused() {
    let broker = tenants_broker();
    let native = Client::connect(broker.addr()).await.expect("connects");
    let mut acme_native = native
        .subscribe("acme", "sensors/t")
        .await
        .expect("subscribes");
    let (mut acme, _) = Mqtt::connect(&broker, Version::V5, "acme-sub").await;
    let codes = acme
        .subscribe(
            1,
            &[
                ("acme/sensors/+", QoS::AtLeastOnce),
                ("globex/#", QoS::AtLeastOnce),
                ("+/sensors/t", QoS::AtLeastOnce),
                ("#", QoS::AtLeastOnce),
                ("acme", QoS::AtLeastOnce),
            ],
        )
        .await
        .codes;
    assert_eq!(
        codes,
        [1, 1, 0x8F, 0x8F, 0x8F],
        "no wildcard or nothing after the namespace"
    );
    let (mut publisher, _) = Mqtt::connect(&broker, Version::V5, "acme-pub").await;
    publisher
        .publish_confirmed("acme/sensors/t", "from mqtt", QoS::AtLeastOnce, 1)
        .await;
    let message = timeout(WAIT, acme_native.next_message())
        .await
        .expect("in time")
        .expect("open")
        .expect("a message");
    assert_eq!(
        (message.namespace(), message.topic(), &message.payload[..]),
        ("acme", "sensors/t", &b"from mqtt"[..])
    );
    native
        .publish("acme", "sensors/u", "from native")
        .await
        .expect("published");
    native
        .publish("globex", "x/y", "other tenant")
        .await
        .expect("published");
    let mut got = vec![
        acme.message().await,
        acme.message().await,
        acme.message().await,
    ];
    got.sort();
    assert_eq!(
        got,
        [
            ("acme/sensors/t".to_owned(), "from mqtt".to_owned()),
            ("acme/sensors/u".to_owned(), "from native".to_owned()),
            ("globex/x/y".to_owned(), "other tenant".to_owned()),
        ]
    );
    // A name without a second level: PUBACK 0x90.
    publisher.publish("acme", "x", QoS::AtLeastOnce, 2).await;
    publisher.expect_ack(AckKind::PubAck, 2, 0x90).await;
    // Retained messages keep their namespace.
    publisher
        .send(&Packet::Publish(mqtt::Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: true,
            topic: MqttStr::new("acme/state").expect("a topic"),
            packet_id: Some(3),
            properties: Properties::default(),
            payload: Bytes::from_static(b"on"),
        }))
        .await;
    publisher.expect_ack(AckKind::PubAck, 3, 0).await;
    let (mut late, _) = Mqtt::connect(&broker, Version::V311, "late").await;
    late.subscribe(1, &[("acme/#", QoS::AtMostOnce)]).await;
    assert_eq!(
        late.message().await,
        ("acme/state".to_owned(), "on".to_owned())
    );
}
