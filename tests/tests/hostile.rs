//! Bad input on the wire: typed errors, closed connections, and no effect on
//! other clients of the same shard.

use bytes::Bytes;
use corebus_net::{Body, ErrorCode, Frame, Opcode, Publish, Subscribe, TopicKey, Unsubscribe};
use std::time::Duration;

use corebus_shards::{EngineConfig, ServerConfig, ShardMetrics};
use corebus_tests::{topic_owned_by, Broker, RawConn, Received};
use std::net::SocketAddr;

fn error_of(frame: Option<Frame>) -> (u32, ErrorCode, bool) {
    match frame {
        Some(Frame::Error(error)) => (
            error.request_id,
            error.code().expect("known code"),
            error.fatal,
        ),
        other => panic!("expected ERROR, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_closes_only_the_offender() {
    let broker = Broker::start(2);
    let topic = topic_owned_by(0, 2, "calm");
    let good = broker.client_on(1).await;
    let mut sub = good.subscribe("test", &topic).await.expect("subscribes");
    good.publish("test", &topic, "before").await.expect("acked");

    let mut bad = broker.raw_on(1).await;
    // A length prefix of 0xffffffff: far over the limit, framing is lost.
    bad.send_bytes(&[0xff; 64]).await;
    assert_eq!(
        error_of(bad.recv().await),
        (0, ErrorCode::FrameTooLarge, true)
    );
    bad.expect_closed().await;

    good.publish("test", &topic, "after").await.expect("acked");
    let first = sub.next_message().await.expect("open").expect("ok");
    let second = sub.next_message().await.expect("open").expect("ok");
    assert_eq!(
        (&first.payload[..], &second.payload[..]),
        (&b"before"[..], &b"after"[..])
    );
    assert_eq!(second.seq, first.seq + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_protocol_client_is_refused_at_handshake() {
    let broker = Broker::start(2);
    let mut http = RawConn::connect(broker.addr()).await;
    http.send_bytes(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await;
    // "GET " as a length prefix is about 1.2 GB: refused before any allocation.
    let (_, code, fatal) = error_of(http.recv().await);
    assert!(fatal);
    assert_eq!(code, ErrorCode::HandshakeRequired);
    http.expect_closed().await;

    let mut early = RawConn::connect(broker.addr()).await;
    early.send(&Frame::Ping(1)).await;
    assert_eq!(
        error_of(early.recv().await),
        (0, ErrorCode::HandshakeRequired, true)
    );
    early.expect_closed().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_level_errors_leave_the_connection_usable() {
    let broker = Broker::start(2);
    let mut raw = broker.raw_on(0).await;

    // Invalid name: a topic with a newline (bytes built by hand, since the
    // codec's own constructors refuse it).
    let mut frame = vec![
        0, 0, 0, 0, 0x02, 0, 0, 0, 9, 0x01, 1, b'n', 0, 3, b'a', b'\n', b'b',
    ];
    let len = (frame.len() - 4) as u32;
    frame[..4].copy_from_slice(&len.to_be_bytes());
    raw.send_bytes(&frame).await;
    assert_eq!(
        error_of(raw.recv().await),
        (9, ErrorCode::InvalidName, false)
    );

    // Unknown opcode inside a sound length prefix.
    raw.send_bytes(&[0, 0, 0, 2, 0x7e, 0]).await;
    assert_eq!(
        error_of(raw.recv().await),
        (0, ErrorCode::UnknownOpcode, false)
    );

    // Truncated body.
    raw.send_bytes(&[0, 0, 0, 3, 0x05, 0, 0]).await;
    assert_eq!(
        error_of(raw.recv().await),
        (0, ErrorCode::MalformedFrame, false)
    );

    // An unsolicited PONG is ignored: either side may send PING and PONG.
    raw.send(&Frame::Pong(3)).await;
    raw.send(&Frame::Ping(4)).await;
    assert_eq!(
        raw.recv().await,
        Some(Frame::Pong(4)),
        "PONG from a client is accepted silently"
    );

    // Unknown subscription id.
    raw.send(&Frame::Unsubscribe(Unsubscribe {
        request_id: 5,
        sub_id: 77,
    }))
    .await;
    assert_eq!(
        error_of(raw.recv().await),
        (5, ErrorCode::UnknownSubscription, false)
    );

    // Still fully usable: publish with ack.
    raw.send(&Frame::Publish(Publish {
        request_id: 6,
        ack: true,
        topic: TopicKey::from_strs("test", "still-ok").expect("valid"),
        body: Body::plain(b"x"),
    }))
    .await;
    assert!(
        matches!(raw.recv().await, Some(Frame::PubAck(ack)) if ack.request_id == 6 && ack.seq == 1)
    );
}

/// Every opcode of the codec's table that only servers send, each framed
/// with an empty body and with a body of 40 bytes 0xff (trailing bytes for
/// the fixed-size frames, a text field running past the end for `GOAWAY` and
/// `TOKEN`, bad UTF-8 for `WEBHOOK_REPLY`, reserved flag bits for `ERROR`, a
/// body that parses for `MESSAGE`).
fn server_frames_from_a_client() -> Vec<(Opcode, Vec<u8>)> {
    let opcodes: Vec<Opcode> = (0..=u8::MAX)
        .filter_map(Opcode::from_u8)
        .filter(|opcode| opcode.is_server_frame())
        .collect();
    assert!(opcodes.contains(&Opcode::WebhookReply), "{opcodes:?}");
    let mut frames = Vec::new();
    for opcode in opcodes {
        for body in [&[][..], &[0xff; 40][..]] {
            let mut frame = ((body.len() + 1) as u32).to_be_bytes().to_vec();
            frame.push(opcode as u8);
            frame.extend_from_slice(body);
            frames.push((opcode, frame));
        }
    }
    frames
}

/// A frame only servers send is answered `wrong_direction` whatever its body
/// holds (the direction is checked before the body is parsed), and the
/// connection stays usable; before the handshake it is, like any frame but
/// `HELLO`, a fatal `handshake_required`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_server_opcode_from_a_client_is_wrong_direction() {
    let broker = Broker::start(2);
    let mut raw = broker.raw_on(0).await;
    for (opcode, frame) in server_frames_from_a_client() {
        raw.send_bytes(&frame).await;
        assert_eq!(
            error_of(raw.recv().await),
            (0, ErrorCode::WrongDirection, false),
            "{opcode:?} with {} body bytes",
            frame.len() - 5
        );
    }
    raw.send(&Frame::Ping(7)).await;
    assert_eq!(raw.recv().await, Some(Frame::Pong(7)), "still usable");

    for (opcode, frame) in server_frames_from_a_client() {
        let mut early = RawConn::connect(broker.addr()).await;
        early.send_bytes(&frame).await;
        assert_eq!(
            error_of(early.recv().await),
            (0, ErrorCode::HandshakeRequired, true),
            "{opcode:?} with {} body bytes before HELLO",
            frame.len() - 5
        );
        early.expect_closed().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribe_stops_delivery_on_the_wire() {
    let broker = Broker::start(2);
    let topic = topic_owned_by(0, 2, "unsub");
    let key = TopicKey::from_strs("test", &topic).expect("valid");
    // A control subscriber on the same shard as the raw connection proves the
    // later messages reached that shard.
    let control = broker.client_on(1).await;
    let mut control_sub = control.subscribe("test", &topic).await.expect("subscribes");
    let mut raw = broker.raw_on(1).await;
    raw.send(&Frame::Subscribe(Subscribe {
        request_id: 1,
        sub_id: 4,
        resume: None,
        topic: key.clone(),
    }))
    .await;
    assert!(matches!(raw.recv().await, Some(Frame::SubOk(ok)) if ok.sub_id == 4));

    let publisher = broker.client_on(0).await;
    publisher
        .publish("test", &topic, "seen")
        .await
        .expect("acked");
    assert!(matches!(raw.recv().await, Some(Frame::Message(m)) if m.sub_id == 4 && m.seq == 1));

    raw.send(&Frame::Unsubscribe(Unsubscribe {
        request_id: 2,
        sub_id: 4,
    }))
    .await;
    assert!(matches!(raw.recv().await, Some(Frame::UnsubOk(ok)) if ok.sub_id == 4));

    for _ in 0..5 {
        publisher
            .publish("test", &topic, "unseen")
            .await
            .expect("acked");
    }
    for seq in 1..=6 {
        let message = control_sub.next_message().await.expect("open").expect("ok");
        assert_eq!(message.seq, seq);
    }
    // Everything the shard delivered is queued before this PONG.
    raw.send(&Frame::Ping(9)).await;
    assert_eq!(
        raw.recv().await,
        Some(Frame::Pong(9)),
        "no MESSAGE after UNSUB_OK"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_publish_is_refused_from_its_prefix() {
    let broker = Broker::start_with(
        1,
        corebus_shards::EngineConfig {
            max_frame: 1024,
            ..Default::default()
        },
    );
    let mut raw = broker.raw_on(0).await;
    // Announce 2 KiB but send only the prefix: the broker must not wait for it.
    raw.send_bytes(&2048u32.to_be_bytes()).await;
    assert_eq!(
        error_of(raw.recv().await),
        (0, ErrorCode::FrameTooLarge, true)
    );
    raw.expect_closed().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_silent_connections_are_closed_at_the_handshake_deadline() {
    let broker = Broker::start_with(
        2,
        corebus_shards::EngineConfig {
            handshake_timeout_ms: 300,
            ..Default::default()
        },
    );
    let mut silent = Vec::with_capacity(1000);
    for _ in 0..1000 {
        silent.push(RawConn::connect(broker.addr()).await);
    }
    // Meanwhile an authenticated client works normally, before and after.
    let client = broker.client_on(0).await;
    let mut sub = client.subscribe("test", "busy").await.expect("subscribes");
    client.publish("test", "busy", "one").await.expect("acked");
    let started = tokio::time::Instant::now();
    for conn in &mut silent {
        let (_, code, fatal) = error_of(conn.recv().await);
        assert_eq!((code, fatal), (ErrorCode::HandshakeTimeout, true));
        conn.expect_closed().await;
    }
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    client.publish("test", "busy", "two").await.expect("acked");
    for expected in [&b"one"[..], b"two"] {
        let message = sub.next_message().await.expect("open").expect("message");
        assert_eq!(&message.payload[..], expected);
    }
}

/// A peer that has not said HELLO cannot make the broker wait for, and hold,
/// a frame of `max_frame`: a length prefix above the pre-handshake limit is
/// refused as soon as it arrives, long before the handshake deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unauthenticated_peer_cannot_announce_a_large_frame() {
    let broker = Broker::start_with(
        2,
        corebus_shards::EngineConfig {
            handshake_timeout_ms: 60_000,
            ..Default::default()
        },
    );
    let limit = corebus_net::DEFAULT_MAX_HELLO_FRAME;
    let mut raw = RawConn::connect(broker.addr()).await;
    // One byte over the pre-handshake limit, far under max_frame (1 MiB).
    raw.send_bytes(&(limit + 1).to_be_bytes()).await;
    match raw.next_within(Duration::from_secs(5)).await {
        Received::Frame(Frame::Error(error)) => {
            assert_eq!(error.code(), Some(ErrorCode::HandshakeRequired));
            assert!(error.fatal);
            assert!(
                error.message.contains(&limit.to_string()),
                "the error names the limit: {}",
                error.message
            );
        }
        other => panic!("expected a fatal ERROR at once, got {other:?}"),
    }
    raw.expect_closed().await;

    // Up to the limit, a HELLO still gets through (a long client name and
    // credentials, as a long token would be), and after it the full
    // max_frame applies.
    let mut big_hello = RawConn::connect(broker.addr()).await;
    big_hello
        .send(&Frame::Hello(corebus_net::Hello {
            version: corebus_net::PROTOCOL_VERSION,
            client_name: "x".repeat(200),
            credentials: Bytes::from(vec![b'a'; 12 << 10]),
        }))
        .await;
    assert!(matches!(big_hello.recv().await, Some(Frame::Welcome(_))));
    let body = Body::plain(&[1u8; 64 << 10]);
    big_hello
        .send(&Frame::Publish(Publish {
            request_id: 1,
            ack: true,
            topic: TopicKey::new(b"test", b"after-hello").expect("valid"),
            body,
        }))
        .await;
    assert!(matches!(
        big_hello.recv().await,
        Some(Frame::PubAck(ack)) if ack.request_id == 1
    ));
}

/// Waits until `read` summed over the shards' latest metrics is `want`
/// (fails after 10 s, naming `what`).
async fn await_sum(broker: &Broker, what: &str, want: u64, read: impl Fn(&ShardMetrics) -> u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let now: u64 = broker.metrics().iter().map(&read).sum();
        if now == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: {now}, waited for {want}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The shards' connections mid-handshake, once they are `want` in all.
async fn await_handshaking(broker: &Broker, want: u64) {
    await_sum(broker, "connections mid-handshake", want, |m| m.handshaking).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_mid_handshake_are_capped_in_all_and_per_source() {
    let broker = Broker::start_config(ServerConfig {
        shards: Some(2),
        max_handshaking: 4,
        max_handshaking_per_source: 3,
        engine: EngineConfig {
            handshake_timeout_ms: 60_000,
            ..EngineConfig::default()
        },
        ..ServerConfig::default()
    });
    let from = |ip: [u8; 4]| SocketAddr::from((ip, 0));
    // Three silent sockets from 127.0.0.1 fill its share.
    let mut silent = Vec::new();
    for n in 1..=3 {
        silent.push(RawConn::connect(broker.addr()).await);
        await_handshaking(&broker, n).await;
    }
    let mut over_source = RawConn::connect(broker.addr()).await;
    over_source
        .expect_closed_within(Duration::from_secs(5))
        .await;
    // Another source still gets in, up to the total.
    let other = RawConn::connect_bound(broker.addr(), from([127, 0, 0, 2]))
        .await
        .expect("connects from 127.0.0.2");
    await_handshaking(&broker, 4).await;
    let mut over_total = RawConn::connect_bound(broker.addr(), from([127, 0, 0, 3]))
        .await
        .expect("connects from 127.0.0.3");
    over_total
        .expect_closed_within(Duration::from_secs(5))
        .await;
    // Connections that finished their handshake do not count: one silent
    // socket says HELLO, and a newcomer takes its place.
    silent[0].hello().await;
    await_handshaking(&broker, 3).await;
    let mut newcomer = RawConn::connect_bound(broker.addr(), from([127, 0, 0, 3]))
        .await
        .expect("connects from 127.0.0.3");
    newcomer.hello().await;
    // The welcomed connection is served: it publishes and is acknowledged.
    let topic = TopicKey::from_strs("test", "after-the-cap").expect("valid");
    newcomer
        .send(&Frame::Publish(Publish {
            request_id: 1,
            ack: true,
            topic,
            body: Body::plain(b"x"),
        }))
        .await;
    assert!(matches!(newcomer.recv().await, Some(Frame::PubAck(ack)) if ack.request_id == 1));
    drop(other);
    // Refusals are counted, per cap.
    await_sum(&broker, "sockets shed by the total cap", 1, |m| {
        m.stats.handshakes_shed
    })
    .await;
    await_sum(&broker, "sockets shed by the per-source cap", 1, |m| {
        m.stats.handshakes_shed_per_source
    })
    .await;
}
