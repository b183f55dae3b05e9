//! Codec tests: round trips, every byte split of every frame, hostile bytes.

use bytes::{Bytes, BytesMut};
use corebus_net::*;
use proptest::prelude::*;

fn topic(ns: &str, name: &str) -> TopicKey {
    TopicKey::from_strs(ns, name).expect("valid test names")
}

/// One of every frame, with awkward values (zero, max, empty, non-ASCII).
fn sample_frames() -> Vec<Frame> {
    vec![
        Frame::Hello(Hello {
            version: PROTOCOL_VERSION,
            client_name: "cli-é".into(),
            credentials: Bytes::from_static(b"cbk_secret"),
        }),
        Frame::Hello(Hello {
            version: u16::MAX,
            client_name: String::new(),
            credentials: Bytes::new(),
        }),
        Frame::TokenRequest(TokenRequest {
            request_id: 3,
            ttl_secs: 1800,
            claims: r#"{"sub":"user-123"}"#.into(),
        }),
        Frame::Token(Token {
            request_id: 3,
            token: "aaa.bbb.ccc".into(),
        }),
        Frame::WebhookRequest(WebhookRequest {
            request_id: 4,
            command: r#"{"op":"remove","id":"wh-é"}"#.into(),
        }),
        Frame::WebhookReply(WebhookReply {
            request_id: u32::MAX,
            result: String::new(),
        }),
        Frame::ClusterRequest(ClusterRequest {
            request_id: 8,
            command: r#"{"op":"owner","ns":"app","topic":"é"}"#.into(),
        }),
        Frame::ClusterReply(ClusterReply {
            request_id: 8,
            result: "{}".into(),
        }),
        Frame::SessionRequest(SessionFrame {
            request_id: 0,
            kind: 3,
            body: Bytes::from_static(b"\x00\x01session"),
        }),
        Frame::SessionReply(SessionFrame {
            request_id: 12,
            kind: 2,
            body: Bytes::new(),
        }),
        Frame::HandoffRequest(Subscribe {
            request_id: 9,
            sub_id: 3,
            resume: Some(ResumePoint {
                epoch: 5,
                next_seq: 12,
            }),
            topic: topic("ns", "moved"),
        }),
        Frame::ReplayEnd(ReplayEnd {
            sub_id: 3,
            last_seq: 40,
        }),
        Frame::TopicMessage(TopicMessage {
            sub_id: 4,
            epoch: 9,
            seq: 2,
            topic: "orders/eu".into(),
            body: Body::new(PayloadFormat::Zstd, b"x"),
        }),
        Frame::Welcome(Welcome {
            version: 1,
            max_frame: DEFAULT_MAX_FRAME,
            shard: 3,
            shard_count: 4,
        }),
        Frame::Publish(Publish {
            request_id: 7,
            ack: true,
            topic: topic("orders", "eu/created"),
            body: Body::plain(b"hello"),
        }),
        Frame::Publish(Publish {
            request_id: u32::MAX,
            ack: false,
            topic: topic("n", "t"),
            body: Body::new(PayloadFormat::Zstd, b""),
        }),
        Frame::PubAck(PubAck {
            request_id: 7,
            seq: u64::MAX,
        }),
        Frame::Subscribe(Subscribe {
            request_id: 1,
            sub_id: 42,
            resume: None,
            topic: topic("ns", "トピック"),
        }),
        Frame::Subscribe(Subscribe {
            request_id: 1,
            sub_id: 43,
            resume: Some(ResumePoint {
                epoch: u64::MAX,
                next_seq: 1,
            }),
            topic: topic("ns", "t"),
        }),
        Frame::SubOk(SubOk {
            request_id: 1,
            sub_id: 42,
            epoch: 9,
            start_after: 0,
        }),
        Frame::Unsubscribe(Unsubscribe {
            request_id: 2,
            sub_id: 42,
        }),
        Frame::UnsubOk(UnsubOk {
            request_id: 2,
            sub_id: 42,
        }),
        Frame::Message(Message {
            sub_id: 42,
            epoch: 9,
            seq: 1,
            body: Body::plain(&[0u8, 255, 10, 13]),
        }),
        Frame::Discontinuity(Discontinuity {
            sub_id: 42,
            epoch: 9,
            last_seq: 3,
            next_seq: 10,
        }),
        Frame::Ping(0),
        Frame::Pong(u64::MAX),
        Frame::GoAway(GoAway {
            drain_ms: 10_000,
            message: "shutting down".into(),
        }),
        Frame::Error(ErrorFrame::new(
            9,
            ErrorCode::InvalidName,
            false,
            "topic name is empty",
        )),
        Frame::Error(ErrorFrame::new(0, ErrorCode::FrameTooLarge, true, "")),
    ]
}

fn encoded(frame: &Frame) -> Bytes {
    let mut buf = BytesMut::new();
    frame.encode(&mut buf);
    buf.freeze()
}

/// Feeds `bytes` to check/decode as a server would, in chunks cut at `splits`.
fn decode_stream(bytes: &[u8], splits: &[usize]) -> Vec<Frame> {
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    let mut cut = 0;
    for &end in splits.iter().chain(std::iter::once(&bytes.len())) {
        buf.extend_from_slice(&bytes[cut..end]);
        cut = end;
        loop {
            match check(&buf, DEFAULT_MAX_FRAME).expect("valid stream") {
                Check::Incomplete { need } => {
                    assert!(need > buf.len(), "Incomplete must ask for more bytes");
                    break;
                }
                Check::Complete { len } => {
                    frames.push(decode(buf.split_to(len).freeze()).expect("decodes"));
                }
            }
        }
    }
    assert!(buf.is_empty(), "no bytes left over");
    frames
}

#[test]
fn every_frame_round_trips() {
    for frame in sample_frames() {
        let bytes = encoded(&frame);
        assert_eq!(
            check(&bytes, DEFAULT_MAX_FRAME),
            Ok(Check::Complete { len: bytes.len() })
        );
        assert_eq!(decode(bytes).expect("decodes"), frame);
    }
}

#[test]
fn every_byte_split_of_every_frame_decodes() {
    for frame in sample_frames() {
        let bytes = encoded(&frame);
        for split in 0..=bytes.len() {
            assert_eq!(
                decode_stream(&bytes, &[split]),
                vec![frame.clone()],
                "split at {split}"
            );
        }
        // One byte at a time, as nats-server's parser tests do.
        let every: Vec<usize> = (1..bytes.len()).collect();
        assert_eq!(decode_stream(&bytes, &every), vec![frame.clone()]);
    }
}

/// A HELLO printed with `{:?}` (in a log line, a panic) shows the client's
/// name and how long its credentials are, never the credentials.
#[test]
fn a_printed_hello_hides_its_credentials() {
    let hello = Frame::Hello(Hello {
        version: PROTOCOL_VERSION,
        client_name: "billing".into(),
        credentials: Bytes::from_static(b"cbk_secret_key"),
    });
    let printed = format!("{hello:?}");
    assert!(!printed.contains("secret"), "{printed}");
    assert!(printed.contains("billing"), "{printed}");
    assert!(printed.contains("14 bytes"), "{printed}");
}

#[test]
fn back_to_back_frames_decode_in_order() {
    let frames = sample_frames();
    let mut all = BytesMut::new();
    for frame in &frames {
        frame.encode(&mut all);
    }
    for split in (0..all.len()).step_by(7) {
        assert_eq!(decode_stream(&all, &[split]), frames);
    }
}

#[test]
fn message_header_matches_full_encoding() {
    let body = Body::new(PayloadFormat::Zstd, b"shared payload");
    let mut split = BytesMut::new();
    encode_message_header(&mut split, 5, 77, 99, body.len());
    assert_eq!(split.len(), MESSAGE_HEADER_LEN);
    split.extend_from_slice(body.as_bytes());
    let whole = encoded(&Frame::Message(Message {
        sub_id: 5,
        epoch: 77,
        seq: 99,
        body,
    }));
    assert_eq!(split.freeze(), whole);
}

#[test]
fn worked_examples_from_protocol_doc() {
    // These bytes are the hex examples printed in docs/protocol.md; a change
    // here is a wire-format change and needs a protocol version bump.
    let cases: Vec<(Frame, &str)> = vec![
        (
            Frame::SubscribeShared(corebus_net::SubscribeShared {
                request_id: 5,
                sub_id: 9,
                group: "g".into(),
                topic: TopicKey::new(b"a", b"*").expect("valid"),
            }),
            "00000010 0c 00000005 00000009 01 67 01 61 0001 2a",
        ),
        (
            Frame::FetchRetained(Subscribe {
                request_id: 5,
                sub_id: 9,
                resume: None,
                topic: TopicKey::new(b"a", b"*").expect("valid"),
            }),
            "0000001e 0b 00000005 00000009 0000000000000000 0000000000000000 01 61 0001 2a",
        ),
        (
            Frame::Publish(Publish {
                request_id: 1,
                ack: false,
                topic: TopicKey::new(b"a", b"b").expect("valid"),
                body: Body::with_headers(
                    PayloadFormat::Plain,
                    0,
                    &corebus_net::Headers {
                        content_type: Some("a/b".into()),
                        ..Default::default()
                    },
                    b"hi",
                ),
            }),
            "00000016 02 00000001 00 01 61 0001 62 08 0006 02 0003 612f62 6869",
        ),
        (
            Frame::Hello(Hello {
                version: 2,
                client_name: "cli".into(),
                credentials: Bytes::new(),
            }),
            "0000000d 01 43425553 0002 03 636c69 0000",
        ),
        (
            Frame::Hello(Hello {
                version: 2,
                client_name: "cli".into(),
                credentials: Bytes::from_static(b"key"),
            }),
            "00000010 01 43425553 0002 03 636c69 0003 6b6579",
        ),
        (
            Frame::TokenRequest(TokenRequest {
                request_id: 5,
                ttl_secs: 60,
                claims: "{}".into(),
            }),
            "0000000d 07 00000005 0000003c 0002 7b7d",
        ),
        (
            Frame::Token(Token {
                request_id: 5,
                token: "t.k.n".into(),
            }),
            "0000000c 88 00000005 0005 742e6b2e6e",
        ),
        (
            Frame::WebhookRequest(WebhookRequest {
                request_id: 6,
                command: r#"{"op":"list"}"#.into(),
            }),
            "00000012 08 00000006 7b226f70223a226c697374227d",
        ),
        (
            Frame::WebhookReply(WebhookReply {
                request_id: 6,
                result: r#"{"webhooks":[]}"#.into(),
            }),
            "00000014 89 00000006 7b22776562686f6f6b73223a5b5d7d",
        ),
        (
            Frame::ClusterRequest(ClusterRequest {
                request_id: 7,
                command: r#"{"op":"status"}"#.into(),
            }),
            "00000014 09 00000007 7b226f70223a22737461747573227d",
        ),
        (
            Frame::ClusterReply(ClusterReply {
                request_id: 7,
                result: r#"{"members":[]}"#.into(),
            }),
            "00000013 8a 00000007 7b226d656d62657273223a5b5d7d",
        ),
        (
            Frame::SessionRequest(SessionFrame {
                request_id: 3,
                kind: 1,
                body: Bytes::from_static(b"id"),
            }),
            "00000008 0d 00000003 01 6964",
        ),
        (
            Frame::SessionReply(SessionFrame {
                request_id: 3,
                kind: 2,
                body: Bytes::new(),
            }),
            "00000006 8d 00000003 02",
        ),
        (
            Frame::HandoffRequest(Subscribe {
                request_id: 2,
                sub_id: 7,
                resume: Some(ResumePoint {
                    epoch: 9,
                    next_seq: 1,
                }),
                topic: topic("app", "news"),
            }),
            "00000023 0a 00000002 00000007 0000000000000009 0000000000000001 03 617070 0004 6e657773",
        ),
        (
            Frame::ReplayEnd(ReplayEnd {
                sub_id: 7,
                last_seq: 300,
            }),
            "0000000d 8b 00000007 000000000000012c",
        ),
        (
            Frame::TopicMessage(TopicMessage {
                sub_id: 9,
                epoch: 0x0123_4567_89ab_cdef,
                seq: 6,
                topic: "news".into(),
                body: Body::plain(b"hi"),
            }),
            "0000001e 8c 00000009 0123456789abcdef 0000000000000006 0004 6e657773 00 6869",
        ),
        (
            Frame::Welcome(Welcome {
                version: 2,
                max_frame: 1 << 20,
                shard: 1,
                shard_count: 2,
            }),
            "0000000b 81 0002 00100000 0001 0002",
        ),
        (
            Frame::Publish(Publish {
                request_id: 1,
                ack: true,
                topic: topic("app", "news"),
                body: Body::plain(b"hi"),
            }),
            "00000013 02 00000001 01 03 617070 0004 6e657773 00 6869",
        ),
        (
            Frame::PubAck(PubAck {
                request_id: 1,
                seq: 5,
            }),
            "0000000d 82 00000001 0000000000000005",
        ),
        (
            Frame::Subscribe(Subscribe {
                request_id: 2,
                sub_id: 7,
                resume: None,
                topic: topic("app", "news"),
            }),
            "00000023 03 00000002 00000007 0000000000000000 0000000000000000 03 617070 0004 6e657773",
        ),
        (
            Frame::Subscribe(Subscribe {
                request_id: 4,
                sub_id: 8,
                resume: Some(ResumePoint {
                    epoch: 0x0123_4567_89ab_cdef,
                    next_seq: 3,
                }),
                topic: topic("app", "news"),
            }),
            "00000023 03 00000004 00000008 0123456789abcdef 0000000000000003 03 617070 0004 6e657773",
        ),
        (
            Frame::SubOk(SubOk {
                request_id: 2,
                sub_id: 7,
                epoch: 0x0123_4567_89ab_cdef,
                start_after: 5,
            }),
            "00000019 83 00000002 00000007 0123456789abcdef 0000000000000005",
        ),
        (
            Frame::Unsubscribe(Unsubscribe {
                request_id: 3,
                sub_id: 7,
            }),
            "00000009 04 00000003 00000007",
        ),
        (
            Frame::UnsubOk(UnsubOk {
                request_id: 3,
                sub_id: 7,
            }),
            "00000009 84 00000003 00000007",
        ),
        (
            Frame::Message(Message {
                sub_id: 7,
                epoch: 0x0123_4567_89ab_cdef,
                seq: 6,
                body: Body::plain(b"hi"),
            }),
            "00000018 85 00000007 0123456789abcdef 0000000000000006 00 6869",
        ),
        (
            Frame::Discontinuity(Discontinuity {
                sub_id: 7,
                epoch: 0x0123_4567_89ab_cdef,
                last_seq: 2,
                next_seq: 6,
            }),
            "0000001d 86 00000007 0123456789abcdef 0000000000000002 0000000000000006",
        ),
        (Frame::Ping(42), "00000009 05 000000000000002a"),
        (
            Frame::GoAway(GoAway {
                drain_ms: 10_000,
                message: "bye".into(),
            }),
            "0000000a 87 00002710 0003 627965",
        ),
        (Frame::Pong(42), "00000009 06 000000000000002a"),
        (
            Frame::Error(ErrorFrame::new(4, ErrorCode::InvalidName, false, "bad")),
            "0000000d 8f 00000004 0006 00 0003 626164",
        ),
    ];
    for (frame, hex) in cases {
        let hex: String = hex.split_whitespace().collect();
        let bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
            .collect();
        assert_eq!(&encoded(&frame)[..], &bytes[..], "{frame:?}");
        assert_eq!(decode(Bytes::from(bytes)).expect("decodes"), frame);
    }
}

#[test]
fn length_limit_is_enforced_from_the_prefix_alone() {
    // Only the four prefix bytes are present: the limit is known before any
    // body arrives, so no buffer is grown for it.
    let prefix = (DEFAULT_MAX_FRAME + 1).to_be_bytes();
    assert_eq!(
        check(&prefix, DEFAULT_MAX_FRAME),
        Err(FrameError::TooLarge {
            len: DEFAULT_MAX_FRAME + 1,
            max: DEFAULT_MAX_FRAME
        })
    );
    assert!(check(&prefix, DEFAULT_MAX_FRAME)
        .unwrap_err()
        .breaks_framing());
    // A frame of exactly the limit is accepted, whole or not.
    let exact = DEFAULT_MAX_FRAME.to_be_bytes();
    assert_eq!(
        check(&exact, DEFAULT_MAX_FRAME),
        Ok(Check::Incomplete {
            need: 4 + DEFAULT_MAX_FRAME as usize
        })
    );
    let mut whole = 16u32.to_be_bytes().to_vec();
    whole.extend_from_slice(&[1; 16]);
    assert_eq!(check(&whole, 16), Ok(Check::Complete { len: 20 }));
    assert!(check(&whole, 15).is_err(), "one byte over the limit");
    assert_eq!(check(&[0, 0, 0, 0], 16), Err(FrameError::Empty));
    assert_eq!(check(&[0, 0], 16), Ok(Check::Incomplete { need: 4 }));
    assert_eq!(
        check(&[0, 0, 0, 3, 1], 16),
        Ok(Check::Incomplete { need: 7 })
    );
}

#[test]
fn malformed_bodies_are_typed_errors() {
    let decode_hex = |hex: &str| {
        let hex: String = hex.split_whitespace().collect();
        let bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
            .collect();
        decode(Bytes::from(bytes))
    };
    assert_eq!(
        decode_hex("00000001 7e"),
        Err(FrameError::UnknownOpcode { opcode: 0x7e })
    );
    assert!(matches!(
        decode_hex("00000005 05 00000000"),
        Err(FrameError::Truncated {
            frame: "PING",
            field: "nonce",
            offset: 5,
            need: 8,
            have: 4
        })
    ));
    assert_eq!(
        decode_hex("0000000a 05 000000000000002a 00"),
        Err(FrameError::TrailingBytes {
            frame: "PING",
            extra: 1
        })
    );
    assert_eq!(
        decode_hex("0000000d 01 47455420 0001 03 636c69 0000"),
        Err(FrameError::BadMagic { got: *b"GET " })
    );
    let empty_topic =
        decode_hex("0000001d 03 00000009 00000007 0000000000000000 0000000000000000 01 61 0000");
    assert!(matches!(
        empty_topic,
        Err(FrameError::InvalidName {
            request_id: 9,
            source: NameError::Empty { kind: "topic" }
        })
    ));
    let error = empty_topic.unwrap_err();
    assert_eq!(error.code(), ErrorCode::InvalidName);
    assert_eq!(error.request_id(), Some(9));
    assert!(!error.breaks_framing());
    assert!(matches!(
        decode_hex("0000000c 02 00000001 80 01 61 0001 62 00"),
        Err(FrameError::UnknownFlags { flags: 0x80, .. })
    ));
    // A body needs its format byte, and the format byte a defined value:
    // bit 0 (zstd), a QoS of 0 to 2 in bits 1 and 2, bit 3 (headers), bit 4
    // (retain).
    assert!(matches!(
        decode_hex("0000000b 02 00000001 00 01 61 0001 62"),
        Err(FrameError::Truncated {
            frame: "PUBLISH",
            field: "format",
            need: 1,
            have: 0,
            ..
        })
    ));
    let unknown_format = decode_hex("0000000e 02 00000001 00 01 61 0001 62 20 6869");
    assert!(matches!(
        unknown_format,
        Err(FrameError::UnknownFlags {
            frame: "PUBLISH",
            flags: 0x20
        })
    ));
    // Bit 3 announces a headers block (version 2), which must be whole.
    assert!(matches!(
        decode_hex("0000000e 02 00000001 00 01 61 0001 62 08 0009"),
        Err(FrameError::Truncated {
            field: "headers",
            ..
        })
    ));
    match decode_hex("00000016 02 00000001 00 01 61 0001 62 08 0006 020003 612f62 6869") {
        Ok(Frame::Publish(publish)) => {
            assert_eq!(publish.body.headers().content_type.as_deref(), Some("a/b"));
            assert_eq!(&publish.body.payload()[..], b"hi");
        }
        other => panic!("a body with a content type: {other:?}"),
    }
    assert!(
        matches!(
            decode_hex("0000000e 02 00000001 00 01 61 0001 62 06 6869"),
            Err(FrameError::UnknownFlags { flags: 0x06, .. })
        ),
        "QoS 3 is not defined"
    );
    match decode_hex("0000000e 02 00000001 00 01 61 0001 62 05 6869") {
        Ok(Frame::Publish(publish)) => {
            assert_eq!(publish.body.qos(), 2);
            assert_eq!(publish.body.format(), PayloadFormat::Zstd);
            assert_eq!(&publish.body.payload()[..], b"hi");
        }
        other => panic!("a zstd body asking for QoS 2: {other:?}"),
    }
    assert_eq!(
        unknown_format.unwrap_err().code(),
        ErrorCode::MalformedFrame
    );
    assert!(matches!(
        decode_hex("00000015 85 00000007 0000000000000001 0000000000000001"),
        Err(FrameError::Truncated {
            frame: "MESSAGE",
            field: "format",
            ..
        })
    ));
    assert!(matches!(
        decode_hex("00000016 85 00000007 0000000000000001 0000000000000001 81"),
        Err(FrameError::UnknownFlags {
            frame: "MESSAGE",
            flags: 0x81
        })
    ));
    match decode_hex("00000018 85 00000007 0000000000000001 0000000000000001 01 6869") {
        Ok(Frame::Message(message)) => {
            assert_eq!(message.body.format(), PayloadFormat::Zstd);
            assert_eq!(&message.body.payload()[..], b"hi");
        }
        other => panic!("a zstd MESSAGE decodes: {other:?}"),
    }
}

/// A pattern may be subscribed to, never published to; `>` ends a pattern.
#[test]
fn patterns_are_for_subscriptions_only() {
    let mut out = BytesMut::new();
    encode_publish(
        &mut out,
        5,
        true,
        b"app",
        b"orders/*",
        PayloadFormat::Plain,
        b"x",
    );
    let err = decode(out.split().freeze()).expect_err("a publish to a pattern");
    assert!(
        matches!(
            err,
            FrameError::InvalidName {
                request_id: 5,
                source: NameError::Wildcard { .. }
            }
        ),
        "{err:?}"
    );
    assert_eq!(err.code(), ErrorCode::InvalidName);
    encode_subscribe(&mut out, 6, 1, None, b"app", b"orders/>");
    match decode(out.split().freeze()) {
        Ok(Frame::Subscribe(sub)) => assert!(sub.topic.is_pattern()),
        other => panic!("a pattern subscription decodes: {other:?}"),
    }
    encode_subscribe(&mut out, 7, 1, None, b"app", b"orders/>/x");
    assert!(matches!(
        decode(out.split().freeze()),
        Err(FrameError::InvalidName {
            request_id: 7,
            source: NameError::Wildcard { .. }
        })
    ));
    // A `*` inside a segment is an ordinary character.
    encode_publish(
        &mut out,
        8,
        true,
        b"app",
        b"orders/eu*",
        PayloadFormat::Plain,
        b"x",
    );
    assert!(decode(out.split().freeze()).is_ok());
}

/// A server reading a client refuses every server-only opcode of the table
/// as `WrongDirection` from the opcode alone, whatever the body (empty,
/// garbage or well-formed); `decode`, which reads anyone's frames as a
/// client does, parses the body.
#[test]
fn a_server_refuses_server_frames_before_their_body() {
    let well_formed = sample_frames();
    let server_opcodes: Vec<Opcode> = (0..=u8::MAX)
        .filter_map(Opcode::from_u8)
        .filter(|opcode| opcode.is_server_frame())
        .collect();
    assert!(!server_opcodes.is_empty());
    for opcode in server_opcodes {
        let sample = well_formed
            .iter()
            .find(|frame| frame.opcode() == opcode)
            .expect("sample_frames has one of every frame");
        let mut garbage = vec![0, 0, 0, 41, opcode as u8];
        garbage.extend_from_slice(&[0xff; 40]);
        for input in [
            Bytes::from(vec![0, 0, 0, 1, opcode as u8]),
            Bytes::from(garbage),
            encoded(sample),
        ] {
            let err = decode_from_client(input.clone(), &mut KeyCache::default())
                .expect_err("a server frame from a client");
            assert!(
                matches!(err, FrameError::WrongDirection { opcode: byte, .. } if byte == opcode as u8),
                "{opcode:?} {input:02x?}: {err:?}"
            );
            assert_eq!(err.code(), ErrorCode::WrongDirection);
            assert!(!err.breaks_framing());
            assert_eq!(err.request_id(), None);
        }
        assert_eq!(decode(encoded(sample)).as_ref(), Ok(sample));
    }
    // Frames a client sends pass, and so do PING and PONG.
    for frame in well_formed.iter().filter(|f| !f.opcode().is_server_frame()) {
        let got = decode_from_client(encoded(frame), &mut KeyCache::default());
        assert_eq!(got.as_ref(), Ok(frame));
    }
}

#[test]
fn error_codes_round_trip_their_numbers() {
    for code in ErrorCode::ALL {
        assert_eq!(ErrorCode::from_u16(code as u16), Some(code));
    }
    assert_eq!(ErrorCode::from_u16(0), None);
    assert_eq!(ErrorCode::from_u16(9999), None);
}

fn arb_name(max: usize) -> impl Strategy<Value = String> {
    proptest::string::string_regex(&format!("[a-zA-Z0-9._/é-]{{1,{max}}}")).expect("regex")
}

fn format() -> impl Strategy<Value = PayloadFormat> {
    prop_oneof![Just(PayloadFormat::Plain), Just(PayloadFormat::Zstd)]
}

fn arb_frame() -> impl Strategy<Value = Frame> {
    let payload = proptest::collection::vec(any::<u8>(), 0..300);
    prop_oneof![
        (
            any::<u32>(),
            any::<bool>(),
            arb_name(20),
            arb_name(40),
            format(),
            payload.clone()
        )
            .prop_map(
                |(request_id, ack, ns, name, format, payload)| Frame::Publish(Publish {
                    request_id,
                    ack,
                    topic: TopicKey::from_strs(&ns, &name).expect("strategy makes valid names"),
                    body: Body::new(format, &payload),
                })
            ),
        (any::<u32>(), any::<u64>(), any::<u64>(), format(), payload).prop_map(
            |(sub_id, epoch, seq, format, payload)| Frame::Message(Message {
                sub_id,
                epoch,
                seq,
                body: Body::new(format, &payload),
            })
        ),
        (
            any::<u32>(),
            any::<u32>(),
            any::<u64>(),
            1..u64::MAX,
            any::<bool>(),
            arb_name(20),
            arb_name(40)
        )
            .prop_map(|(request_id, sub_id, epoch, next_seq, resume, ns, name)| {
                Frame::Subscribe(Subscribe {
                    request_id,
                    sub_id,
                    resume: resume.then_some(ResumePoint { epoch, next_seq }),
                    topic: TopicKey::from_strs(&ns, &name).expect("strategy makes valid names"),
                })
            }),
        (any::<u32>(), any::<u64>(), any::<u64>(), any::<u64>()).prop_map(
            |(sub_id, epoch, last_seq, next_seq)| Frame::Discontinuity(Discontinuity {
                sub_id,
                epoch,
                last_seq,
                next_seq,
            })
        ),
        (any::<u32>(), any::<u16>(), any::<bool>(), ".{0,40}").prop_map(
            |(request_id, code, fatal, message)| Frame::Error(ErrorFrame {
                request_id,
                code,
                fatal,
                message,
            })
        ),
        any::<u64>().prop_map(Frame::Ping),
        (any::<u32>(), ".{0,60}").prop_map(|(request_id, command)| {
            Frame::WebhookRequest(WebhookRequest {
                request_id,
                command,
            })
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_frames_round_trip_at_any_split(
        frames in proptest::collection::vec(arb_frame(), 1..8),
        split_seed in any::<u64>(),
    ) {
        let mut all = BytesMut::new();
        for frame in &frames {
            frame.encode(&mut all);
        }
        let split = (split_seed % (all.len() as u64 + 1)) as usize;
        prop_assert_eq!(decode_stream(&all, &[split]), frames);
    }

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let mut buf = BytesMut::from(&bytes[..]);
        // Walk the stream as a server would until it ends or breaks framing.
        while let Ok(Check::Complete { len }) = check(&buf, 4096) {
            let _ = decode(buf.split_to(len).freeze());
        }
    }

    #[test]
    fn random_bodies_behind_a_valid_prefix_never_panic(
        opcode in any::<u8>(),
        body in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let mut frame = BytesMut::new();
        frame.extend_from_slice(&((body.len() + 1) as u32).to_be_bytes());
        frame.extend_from_slice(&[opcode]);
        frame.extend_from_slice(&body);
        if let Err(error) = decode(frame.freeze()) {
            prop_assert!(!error.breaks_framing());
        }
    }
}

/// Decodes one frame built by `encode_publish` with `cache`.
fn publish_with(cache: &mut KeyCache, ns: &[u8], name: &[u8]) -> Result<Publish, FrameError> {
    let mut out = BytesMut::new();
    encode_publish(
        &mut out,
        9,
        false,
        ns,
        name,
        PayloadFormat::Plain,
        b"payload",
    );
    match decode_from_client(out.freeze(), cache)? {
        Frame::Publish(publish) => Ok(publish),
        other => panic!("expected PUBLISH, got {other:?}"),
    }
}

#[test]
fn key_cache_reuses_names_only_when_the_bytes_repeat() {
    let mut cache = KeyCache::default();
    let long = "t".repeat(KeyCache::MAX);
    for (ns, name) in [
        ("app", "orders"),
        ("app", "orders"), // from the cache
        ("ap", "porders"), // the same letters split otherwise
        ("app", "ordert"),
        ("app", long.as_str()), // too long to cache
        ("app", long.as_str()),
        ("app", "orders"),
    ] {
        let publish = publish_with(&mut cache, ns.as_bytes(), name.as_bytes()).expect("valid");
        let fresh = topic(ns, name);
        assert_eq!(publish.topic, fresh, "{ns}/{name}");
        assert_eq!(publish.topic.stable_hash(), fresh.stable_hash());
        assert_eq!(
            (publish.topic.namespace(), publish.topic.topic()),
            (ns, name)
        );
    }
    // A bad name right after a good one is still refused, by name.
    publish_with(&mut cache, b"app", b"orders").expect("valid");
    let err = publish_with(&mut cache, b"app", b"ord\x01ers").expect_err("refused");
    assert!(
        matches!(err, FrameError::InvalidName { request_id: 9, .. }),
        "{err:?}"
    );
    let err = publish_with(&mut cache, b"", b"orders").expect_err("refused");
    assert!(matches!(err, FrameError::InvalidName { .. }), "{err:?}");
}

/// The error codes' numbers and names are the protocol's (docs/protocol.md,
/// section 7.11): clients in other languages match on them.
#[test]
fn error_codes_have_their_documented_numbers_and_names() {
    let documented = [
        (1, "malformed_frame"),
        (2, "unknown_opcode"),
        (3, "frame_too_large"),
        (4, "unsupported_version"),
        (5, "handshake_required"),
        (6, "invalid_name"),
        (7, "duplicate_subscription"),
        (8, "unknown_subscription"),
        (9, "too_many_subscriptions"),
        (10, "slow_consumer"),
        (11, "shutting_down"),
        (12, "internal"),
        (13, "wrong_direction"),
        (14, "idle_timeout"),
        (15, "unauthorized"),
        (16, "forbidden"),
        (17, "token_expired"),
        (18, "too_many_connections"),
        (19, "too_many_in_flight"),
        (20, "handshake_timeout"),
        (21, "invalid_request"),
        (22, "owner_unavailable"),
        (23, "unavailable"),
        (24, "taken_over"),
    ];
    assert_eq!(ErrorCode::ALL.len(), documented.len());
    for (code, (number, name)) in ErrorCode::ALL.iter().zip(documented) {
        assert_eq!((*code as u16, code.name()), (number, name));
        assert_eq!(code.to_string(), format!("{name} ({number})"));
        assert_eq!(ErrorCode::from_u16(number), Some(*code));
        let frame = ErrorFrame::new(7, *code, false, "why");
        assert_eq!(frame.code(), Some(*code), "{name}");
    }
    let unknown = ErrorFrame {
        code: 999,
        ..ErrorFrame::new(7, ErrorCode::Internal, false, "")
    };
    assert_eq!(unknown.code(), None, "a code from a later version");
}

#[test]
fn names_print_as_namespace_slash_topic_and_keep_their_wire_bytes() {
    let key = TopicKey::from_strs("app", "naïve topic").expect("spaces and non-ASCII are fine");
    assert_eq!(key.to_string(), "app/naïve topic");
    assert_eq!(format!("{key:?}"), "app/naïve topic");
    let mut wire = b"app".to_vec();
    wire.extend_from_slice(&("naïve topic".len() as u16).to_be_bytes());
    wire.extend_from_slice("naïve topic".as_bytes());
    assert_eq!(key.wire_bytes(), &wire[..]);
    assert!(
        validate_topic("tab\tafter ü".as_bytes()).is_err(),
        "a control character"
    );
}
