//! The MQTT codec against hand-made packets from the specifications, every
//! split point of a stream, and generated packets of both versions.

use bytes::{Bytes, BytesMut};
use corebus_mqtt::{
    check, decode, decode_connect, Ack, AckKind, Check, ConnAck, Connect, DecodeError, Disconnect,
    LastWill, MqttStr, Packet, Properties, Publish, QoS, RetainHandling, SubAck, Subscribe,
    Subscription, UnsubAck, Unsubscribe, Version,
};
use proptest::prelude::*;

fn s(text: &str) -> MqttStr {
    MqttStr::new(text).expect("an MQTT string")
}

fn bytes(hex: &[u8]) -> Bytes {
    Bytes::copy_from_slice(hex)
}

fn encoded(packet: &Packet, version: Version) -> Bytes {
    let mut out = BytesMut::new();
    packet.encode(version, &mut out);
    out.freeze()
}

#[test]
fn a_minimal_311_connect_from_the_specification() {
    // Protocol name "MQTT", level 4, clean session, keep-alive 60, empty id.
    let wire = [
        0x10, 0x0c, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x3c, 0x00, 0x00,
    ];
    assert_eq!(check(&wire, 1024), Ok(Check::Complete { len: 14 }));
    let connect = decode_connect(bytes(&wire)).expect("a CONNECT");
    assert_eq!(connect.version, Version::V311);
    assert!(connect.clean_start);
    assert_eq!(connect.keep_alive, 60);
    assert!(connect.client_id.is_empty());
    assert_eq!(
        encoded(&Packet::Connect(Box::new(connect)), Version::V311),
        bytes(&wire)
    );
}

#[test]
fn a_50_connect_with_a_will_user_and_password() {
    let connect = Connect {
        version: Version::V5,
        client_id: s("sensor-1"),
        clean_start: false,
        keep_alive: 30,
        username: Some(s("cbk_key")),
        password: Some(bytes(b"secret")),
        will: Some(LastWill {
            topic: s("status/sensor-1"),
            payload: bytes(b"gone"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: Properties {
                will_delay: Some(5),
                ..Properties::default()
            },
        }),
        properties: Properties {
            session_expiry: Some(3600),
            receive_maximum: Some(10),
            ..Properties::default()
        },
    };
    let wire = encoded(&Packet::Connect(Box::new(connect.clone())), Version::V5);
    // Flags: user, password, will retain, will QoS 1, will.
    let header = 1 + wire[1..].iter().position(|b| b & 0x80 == 0).unwrap() + 1;
    assert_eq!(wire[header + 6], 0x05, "level 5");
    assert_eq!(wire[header + 7], 0x80 | 0x40 | 0x20 | 0x08 | 0x04);
    assert_eq!(decode_connect(wire), Ok(connect));
}

#[test]
fn fixed_examples_of_each_small_packet() {
    // PUBLISH QoS 0 "a/b" "hi" (3.1.1).
    let publish = decode(
        bytes(&[0x30, 0x07, 0, 3, b'a', b'/', b'b', b'h', b'i']),
        Version::V311,
    );
    match publish {
        Ok(Packet::Publish(p)) => {
            assert_eq!(
                (p.topic.as_str(), &p.payload[..], p.qos),
                ("a/b", &b"hi"[..], QoS::AtMostOnce)
            );
            assert_eq!(p.packet_id, None);
        }
        other => panic!("{other:?}"),
    }
    // 5.0 PUBACK in its short form: reason 0, no properties.
    assert_eq!(
        decode(bytes(&[0x40, 0x02, 0x00, 0x07]), Version::V5),
        Ok(Packet::Ack(Ack {
            kind: AckKind::PubAck,
            packet_id: 7,
            reason: 0,
            properties: Properties::default()
        }))
    );
    // 5.0 PUBREC with a reason and no properties.
    assert_eq!(
        decode(bytes(&[0x50, 0x03, 0x00, 0x07, 0x10]), Version::V5),
        Ok(Packet::Ack(Ack {
            kind: AckKind::PubRec,
            packet_id: 7,
            reason: 0x10,
            properties: Properties::default()
        }))
    );
    assert_eq!(
        decode(bytes(&[0xc0, 0x00]), Version::V311),
        Ok(Packet::PingReq)
    );
    assert_eq!(
        decode(bytes(&[0xe0, 0x00]), Version::V5),
        Ok(Packet::Disconnect(Disconnect {
            reason: 0,
            properties: Properties::default()
        }))
    );
    // A 5.0 DISCONNECT with reason 0x04 (disconnect with will message).
    assert_eq!(
        decode(bytes(&[0xe0, 0x01, 0x04]), Version::V5),
        Ok(Packet::Disconnect(Disconnect {
            reason: 0x04,
            properties: Properties::default()
        }))
    );
}

#[test]
fn a_packet_announcing_more_than_allowed_is_refused_from_its_header() {
    // 268,435,455 bytes announced, five bytes sent.
    let wire = [0x30, 0xff, 0xff, 0xff, 0x7f];
    assert_eq!(
        check(&wire, 64 * 1024),
        Err(DecodeError::TooLarge {
            len: 268_435_455 + 5,
            max: 64 * 1024
        })
    );
    // A CONNECT of 256 MB, announced in its first bytes: refused before any
    // byte of it beyond the header arrives.
    assert!(matches!(
        check(&[0x10, 0x80, 0x80, 0x80, 0x01], 4096),
        Err(DecodeError::TooLarge { .. })
    ));
    assert_eq!(check(&[0x30], 16), Ok(Check::Incomplete { len: None }));
    assert_eq!(
        check(&[0x30, 0x05, 0, 1], 16),
        Ok(Check::Incomplete { len: Some(7) })
    );
}

#[test]
fn remaining_lengths_over_four_bytes_or_not_minimal_are_malformed() {
    assert_eq!(
        check(&[0x30, 0x80, 0x80, 0x80, 0x80, 0x01], usize::MAX),
        Err(DecodeError::BadLength)
    );
    assert_eq!(
        check(&[0x30, 0x80, 0x00], usize::MAX),
        Err(DecodeError::BadLength)
    );
    assert_eq!(DecodeError::BadLength.reason(), 0x81);
}

#[test]
fn protocol_violations_are_typed_with_their_reason_codes() {
    let v5 = |wire: &[u8]| decode(bytes(wire), Version::V5);
    // A second CONNECT.
    let connect = [
        0x10, 0x0c, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x3c, 0x00, 0x00,
    ];
    assert_eq!(v5(&connect), Err(DecodeError::Protocol("a second CONNECT")));
    // SUBSCRIBE without its required flags 0010.
    assert_eq!(
        v5(&[0x80, 0x06, 0x00, 0x01, 0x00, 0x00, 0x01, b'a']),
        Err(DecodeError::BadFlags { kind: 8, flags: 0 })
    );
    // PUBLISH with QoS 3.
    assert!(matches!(
        v5(&[0x36, 0x03, 0x00, 0x01, b'a']),
        Err(DecodeError::BadFlags { kind: 3, .. })
    ));
    // A wildcard in a PUBLISH topic (3.1.1: no properties).
    assert_eq!(
        decode(bytes(&[0x30, 0x03, 0x00, 0x01, b'#']), Version::V311),
        Err(DecodeError::Protocol("a PUBLISH topic with a wildcard"))
    );
    // Packet id 0 on a QoS 1 PUBLISH.
    assert_eq!(
        decode(
            bytes(&[0x32, 0x05, 0x00, 0x01, b'a', 0x00, 0x00]),
            Version::V311
        ),
        Err(DecodeError::Protocol("a packet identifier of 0"))
    );
    // A SUBSCRIBE with no filter.
    assert_eq!(
        v5(&[0x82, 0x03, 0x00, 0x01, 0x00]),
        Err(DecodeError::Protocol("a SUBSCRIBE without a topic filter"))
    );
    // Retain handling 3.
    assert_eq!(
        v5(&[0x82, 0x07, 0x00, 0x01, 0x00, 0x00, 0x01, b'a', 0x30]),
        Err(DecodeError::Protocol("a retain handling of 3"))
    );
    // AUTH on a 3.1.1 connection.
    assert_eq!(
        decode(bytes(&[0xf0, 0x00]), Version::V311),
        Err(DecodeError::ReservedType(15))
    );
    // A topic alias (PUBLISH only) in a DISCONNECT's properties.
    let err = v5(&[0xe0, 0x05, 0x00, 0x03, 0x23, 0x00, 0x01]).expect_err("refused");
    assert_eq!(err.reason(), 0x81, "{err}");
    // A property twice.
    let err =
        v5(&[0xe0, 0x0c, 0x00, 0x0a, 0x11, 0, 0, 0, 1, 0x11, 0, 0, 0, 2]).expect_err("refused");
    assert_eq!(err, DecodeError::Protocol("a property appears twice"));
    // A string holding U+0000.
    assert!(matches!(
        decode(
            bytes(&[0x30, 0x05, 0x00, 0x03, b'a', 0x00, b'b']),
            Version::V311
        ),
        Err(DecodeError::Malformed(_))
    ));
    // Bytes left over after a PINGREQ's empty body.
    assert!(matches!(
        v5(&[0xc0, 0x01, 0x00]),
        Err(DecodeError::Malformed(_))
    ));
}

#[test]
fn connects_that_are_refused() {
    // MQTT 3.1 ("MQIsdp", level 3): unsupported, reason 0x84.
    let mut wire = vec![0x10, 0x0e, 0x00, 0x06];
    wire.extend_from_slice(b"MQIsdp");
    wire.extend_from_slice(&[0x03, 0x02, 0x00, 0x3c, 0x00, 0x00]);
    let err = decode_connect(bytes(&wire)).expect_err("refused");
    assert_eq!(err.reason(), 0x84);
    // 3.1.1: a password flag without the user name flag.
    let wire = [
        0x10, 0x0c, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x42, 0x00, 0x3c, 0x00, 0x00,
    ];
    assert!(matches!(
        decode_connect(bytes(&wire)),
        Err(DecodeError::Malformed(_))
    ));
    // The reserved flag.
    let wire = [
        0x10, 0x0c, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x03, 0x00, 0x3c, 0x00, 0x00,
    ];
    assert!(matches!(
        decode_connect(bytes(&wire)),
        Err(DecodeError::Malformed(_))
    ));
    // Will QoS without a will.
    let wire = [
        0x10, 0x0c, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x0a, 0x00, 0x3c, 0x00, 0x00,
    ];
    assert!(matches!(
        decode_connect(bytes(&wire)),
        Err(DecodeError::Malformed(_))
    ));
    // The first packet is not a CONNECT.
    assert_eq!(
        decode_connect(bytes(&[0xc0, 0x00])),
        Err(DecodeError::Protocol("the first packet is not CONNECT"))
    );
}

// --- generated packets ---------------------------------------------------

fn text() -> impl Strategy<Value = MqttStr> {
    "[a-z/$ é\u{1F600}]{0,12}".prop_map(|text| s(&text))
}

fn topic() -> impl Strategy<Value = MqttStr> {
    "[a-z/$é]{1,12}".prop_map(|text| s(&text))
}

fn payload() -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(any::<u8>(), 0..64).prop_map(Bytes::from)
}

fn qos() -> impl Strategy<Value = QoS> {
    prop_oneof![
        Just(QoS::AtMostOnce),
        Just(QoS::AtLeastOnce),
        Just(QoS::ExactlyOnce)
    ]
}

fn user() -> impl Strategy<Value = Vec<(MqttStr, MqttStr)>> {
    proptest::collection::vec((text(), text()), 0..3)
}

fn publish_props() -> impl Strategy<Value = Properties> {
    (
        proptest::option::of(0u8..=1),
        proptest::option::of(any::<u32>()),
        proptest::option::of(text()),
        proptest::option::of(topic()),
        proptest::option::of(payload()),
        proptest::option::of(1u16..),
        user(),
    )
        .prop_map(
            |(format, expiry, content, response, correlation, alias, user)| Properties {
                payload_format: format,
                message_expiry: expiry,
                content_type: content,
                response_topic: response,
                correlation_data: correlation,
                topic_alias: alias,
                user,
                ..Properties::default()
            },
        )
}

fn reason_props() -> impl Strategy<Value = Properties> {
    (proptest::option::of(text()), user()).prop_map(|(reason, user)| Properties {
        reason_string: reason,
        user,
        ..Properties::default()
    })
}

fn packet() -> impl Strategy<Value = Packet> {
    let publish = (
        any::<bool>(),
        qos(),
        any::<bool>(),
        topic(),
        1u16..,
        publish_props(),
        payload(),
    )
        .prop_map(|(dup, qos, retain, topic, id, properties, payload)| {
            Packet::Publish(Publish {
                dup: dup && qos != QoS::AtMostOnce,
                qos,
                retain,
                topic,
                packet_id: (qos != QoS::AtMostOnce).then_some(id),
                properties,
                payload,
            })
        });
    let ack = (0usize..4, 1u16.., any::<u8>(), reason_props()).prop_map(
        |(kind, id, reason, properties)| {
            Packet::Ack(Ack {
                kind: AckKind::ALL[kind],
                packet_id: id,
                reason,
                properties,
            })
        },
    );
    let subscription = (topic(), qos(), any::<bool>(), any::<bool>(), 0usize..3).prop_map(
        |(filter, qos, no_local, rap, rh)| Subscription {
            filter,
            qos,
            no_local,
            retain_as_published: rap,
            retain_handling: [
                RetainHandling::OnSubscribe,
                RetainHandling::OnNewSubscribe,
                RetainHandling::Never,
            ][rh],
        },
    );
    let subscribe = (
        1u16..,
        proptest::option::of(1u32..=268_435_455),
        user(),
        proptest::collection::vec(subscription, 1..4),
    )
        .prop_map(|(id, sub_id, user, filters)| {
            Packet::Subscribe(Subscribe {
                packet_id: id,
                properties: Properties {
                    subscription_ids: sub_id.into_iter().collect(),
                    user,
                    ..Properties::default()
                },
                filters,
            })
        });
    let suback = (
        1u16..,
        reason_props(),
        proptest::collection::vec(any::<u8>(), 1..4),
    )
        .prop_map(|(id, properties, codes)| {
            Packet::SubAck(SubAck {
                packet_id: id,
                properties,
                codes,
            })
        });
    let unsubscribe = (1u16.., user(), proptest::collection::vec(topic(), 1..4)).prop_map(
        |(id, user, filters)| {
            Packet::Unsubscribe(Unsubscribe {
                packet_id: id,
                properties: Properties {
                    user,
                    ..Properties::default()
                },
                filters,
            })
        },
    );
    let unsuback = (
        1u16..,
        reason_props(),
        proptest::collection::vec(any::<u8>(), 1..4),
    )
        .prop_map(|(id, properties, codes)| {
            Packet::UnsubAck(UnsubAck {
                packet_id: id,
                properties,
                codes,
            })
        });
    let connack = (
        any::<bool>(),
        any::<u8>(),
        proptest::option::of(any::<u16>()),
        proptest::option::of(text()),
    )
        .prop_map(|(present, code, keep_alive, assigned)| {
            Packet::ConnAck(ConnAck {
                session_present: present,
                code,
                properties: Properties {
                    server_keep_alive: keep_alive,
                    assigned_client_id: assigned,
                    ..Properties::default()
                },
            })
        });
    let disconnect = (any::<u8>(), reason_props())
        .prop_map(|(reason, properties)| Packet::Disconnect(Disconnect { reason, properties }));
    prop_oneof![
        publish,
        ack,
        subscribe,
        suback,
        unsubscribe,
        unsuback,
        connack,
        disconnect,
        Just(Packet::PingReq),
        Just(Packet::PingResp),
    ]
}

/// What a 3.1.1 connection can carry of `packet`: no properties, no
/// reason codes, no 5.0 subscription options.
fn as_311(packet: Packet) -> Packet {
    let none = Properties::default();
    match packet {
        Packet::Publish(p) => Packet::Publish(Publish {
            properties: none,
            ..p
        }),
        Packet::Ack(a) => Packet::Ack(Ack {
            reason: 0,
            properties: none,
            ..a
        }),
        Packet::Subscribe(s) => Packet::Subscribe(Subscribe {
            properties: none,
            filters: s
                .filters
                .into_iter()
                .map(|f| Subscription {
                    no_local: false,
                    retain_as_published: false,
                    retain_handling: RetainHandling::OnSubscribe,
                    ..f
                })
                .collect(),
            ..s
        }),
        Packet::SubAck(a) => Packet::SubAck(SubAck {
            properties: none,
            ..a
        }),
        Packet::Unsubscribe(u) => Packet::Unsubscribe(Unsubscribe {
            properties: none,
            ..u
        }),
        Packet::UnsubAck(a) => Packet::UnsubAck(UnsubAck {
            properties: none,
            codes: Vec::new(),
            ..a
        }),
        Packet::ConnAck(a) => Packet::ConnAck(ConnAck {
            properties: none,
            ..a
        }),
        Packet::Disconnect(_) => Packet::Disconnect(Disconnect {
            reason: 0,
            properties: none,
        }),
        other => other,
    }
}

proptest! {
    #[test]
    fn every_packet_survives_encoding_in_both_versions(packet in packet()) {
        for version in [Version::V5, Version::V311] {
            let expected = match version {
                Version::V5 => packet.clone(),
                Version::V311 => as_311(packet.clone()),
            };
            let wire = encoded(&packet, version);
            prop_assert_eq!(check(&wire, usize::MAX), Ok(Check::Complete { len: wire.len() }));
            prop_assert_eq!(decode(wire, version), Ok(expected));
        }
    }

    #[test]
    fn a_stream_cut_anywhere_yields_the_same_packets(
        packets in proptest::collection::vec(packet(), 1..6),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..6),
    ) {
        let mut stream = BytesMut::new();
        for packet in &packets {
            packet.encode(Version::V5, &mut stream);
        }
        let stream = stream.freeze();
        let mut points: Vec<usize> = cuts.iter().map(|cut| cut.index(stream.len() + 1)).collect();
        points.push(stream.len());
        points.sort_unstable();
        // Bytes arrive in the pieces the cuts make; whole packets are taken
        // as soon as they are there.
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let mut from = 0;
        for point in points {
            buf.extend_from_slice(&stream[from..point]);
            from = point;
            while let Check::Complete { len } = check(&buf, usize::MAX).expect("valid") {
                out.push(decode(buf.split_to(len).freeze(), Version::V5).expect("decodes"));
            }
        }
        prop_assert!(buf.is_empty());
        prop_assert_eq!(out, packets);
    }

    #[test]
    fn arbitrary_bytes_never_panic(wire in proptest::collection::vec(any::<u8>(), 0..96)) {
        let _ = check(&wire, 64);
        if let Ok(Check::Complete { len }) = check(&wire, usize::MAX) {
            let packet = Bytes::copy_from_slice(&wire[..len]);
            let _ = decode(packet.clone(), Version::V5);
            let _ = decode(packet.clone(), Version::V311);
            let _ = decode_connect(packet);
        }
    }

    #[test]
    fn a_truncated_body_is_malformed_not_a_panic(packet in packet(), cut in any::<prop::sample::Index>()) {
        let wire = encoded(&packet, Version::V5);
        // Rewrite the remaining length to a shorter body: the fields run out.
        let header = 1 + wire[1..].iter().position(|b| b & 0x80 == 0).unwrap() + 1;
        let body = &wire[header..];
        let keep = cut.index(body.len() + 1);
        let mut short = BytesMut::new();
        short.extend_from_slice(&[wire[0]]);
        let mut len = BytesMut::new();
        let mut value = keep as u32;
        loop {
            let byte = (value & 0x7f) as u8;
            value >>= 7;
            if value == 0 { len.extend_from_slice(&[byte]); break; }
            len.extend_from_slice(&[byte | 0x80]);
        }
        short.extend_from_slice(&len);
        short.extend_from_slice(&body[..keep]);
        let _ = decode(short.freeze(), Version::V5);
    }
}
