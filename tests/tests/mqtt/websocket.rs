//! MQTT over WebSocket on the browser listener's `/mqtt`.

use super::*;

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
            &[
                connect_packet(version, "browser", |connect| {
                    connect.will = Some(will_of("browser"));
                }),
                subscribe,
            ],
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
