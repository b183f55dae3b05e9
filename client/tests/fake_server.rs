//! The client against a scripted fake server built from `corebus-net`.

use crate::common;

use std::time::Duration;

use bytes::BytesMut;
use common::*;
use corebus_client::{Client, ClientConfig, Error, Event};
use corebus_net::{
    Discontinuity, ErrorCode, ErrorFrame, Frame, PubAck, SubOk, UnsubOk, Welcome,
    DEFAULT_MAX_FRAME, PROTOCOL_VERSION,
};
use tokio::io::AsyncWriteExt;

#[tokio::test]
async fn handshake_reports_welcome() {
    let (listener, addr) = listen().await;
    let config = ClientConfig {
        client_name: "tester".into(),
        ..ClientConfig::default()
    };
    let server = async {
        let (mut peer, hello) = accept(&listener).await;
        peer.send(welcome(4096)).await;
        (peer, hello)
    };
    let (client, (_peer, hello)) =
        within(async { tokio::join!(Client::connect_with(addr, config), server) }).await;
    let client = client.expect("connects");
    assert_eq!(hello.version, PROTOCOL_VERSION);
    assert_eq!(hello.client_name, "tester");
    assert_eq!(client.shard(), 3);
    assert_eq!(client.shard_count(), 4);
    assert_eq!(client.max_frame(), 4096);
}

#[tokio::test]
async fn handshake_refused_by_server() {
    let (listener, addr) = listen().await;
    let server = async {
        let (mut peer, _) = accept(&listener).await;
        peer.send(Frame::Error(ErrorFrame::new(
            0,
            ErrorCode::UnsupportedVersion,
            true,
            "version 1 unsupported",
        )))
        .await;
        peer
    };
    let (result, _peer) = within(async { tokio::join!(Client::connect(addr), server) }).await;
    let err = result.expect_err("handshake fails");
    assert!(matches!(err, Error::Handshake(_)), "{err:?}");
    assert!(err.to_string().contains("unsupported_version"), "{err}");
}

#[tokio::test]
async fn handshake_rejects_other_version_and_early_close() {
    let (listener, addr) = listen().await;
    let server = async {
        let (mut peer, _) = accept(&listener).await;
        peer.send(Frame::Welcome(Welcome {
            version: 3,
            max_frame: DEFAULT_MAX_FRAME,
            shard: 0,
            shard_count: 1,
        }))
        .await;
        peer
    };
    let (result, _peer) = within(async { tokio::join!(Client::connect(addr), server) }).await;
    assert!(matches!(result, Err(Error::Handshake(_))), "{result:?}");

    let server = async {
        let (peer, _) = accept(&listener).await;
        drop(peer);
    };
    let (result, ()) = within(async { tokio::join!(Client::connect(addr), server) }).await;
    assert!(matches!(result, Err(Error::Handshake(_))), "{result:?}");
}

#[tokio::test]
async fn connect_refused() {
    let (listener, addr) = listen().await;
    drop(listener);
    let err = within(Client::connect(addr))
        .await
        .expect_err("nothing listens");
    assert!(matches!(err, Error::Connect { .. }), "{err:?}");
    assert!(
        err.to_string()
            .starts_with(&format!("cannot connect to {addr}: ")),
        "{err}"
    );
}

#[tokio::test]
async fn publish_returns_acked_seq() {
    let (client, mut peer) = pair().await;
    let server = async {
        let publish = peer.expect_publish().await;
        assert!(publish.ack);
        assert_ne!(publish.request_id, 0);
        assert_eq!(publish.topic.namespace(), "app");
        assert_eq!(publish.topic.topic(), "news");
        assert_eq!(&publish.body.payload()[..], b"hi");
        peer.ack(publish.request_id, 42).await;
    };
    let (seq, ()) =
        within(async { tokio::join!(client.publish("app", "news", "hi"), server) }).await;
    assert_eq!(seq.expect("acked"), 42);
}

#[tokio::test]
async fn pipelined_publishes_in_order() {
    let (client, mut peer) = pair().await;
    const N: u32 = 200;
    let mut pending = Vec::new();
    for i in 0..N {
        pending.push(
            client
                .start_publish("app", "news", i.to_be_bytes().to_vec())
                .await
                .expect("queued"),
        );
    }
    let mut ids = Vec::new();
    for i in 0..N {
        let publish = peer.expect_publish().await;
        assert_eq!(
            &publish.body.payload()[..],
            &i.to_be_bytes(),
            "wire order is call order"
        );
        ids.push(publish.request_id);
    }
    // Answer in reverse: each ack still reaches its own publish.
    for (i, id) in ids.iter().enumerate().rev() {
        peer.ack(*id, 1000 + i as u64).await;
    }
    for (i, ack) in pending.into_iter().enumerate() {
        assert_eq!(within(ack).await.expect("acked"), 1000 + i as u64);
    }
}

#[tokio::test]
async fn in_flight_publishes_are_bounded() {
    let config = ClientConfig {
        max_in_flight: 2,
        ..ClientConfig::default()
    };
    let (client, mut peer) = connected(config, DEFAULT_MAX_FRAME).await;
    let first = client.start_publish("a", "t", "1").await.expect("room");
    let second = client.start_publish("a", "t", "2").await.expect("room");
    let blocked = tokio::time::timeout(
        Duration::from_millis(100),
        client.start_publish("a", "t", "3"),
    )
    .await;
    assert!(blocked.is_err(), "a third publish waits for room");

    let third = tokio::spawn({
        let client = client.clone();
        async move {
            client
                .start_publish("a", "t", "3")
                .await
                .expect("room")
                .await
        }
    });
    let p1 = peer.expect_publish().await;
    let p2 = peer.expect_publish().await;
    peer.ack(p1.request_id, 1).await;
    assert_eq!(within(first).await.expect("acked"), 1);
    let p3 = peer.expect_publish().await;
    assert_eq!(&p3.body.payload()[..], b"3");
    peer.ack(p2.request_id, 2).await;
    peer.ack(p3.request_id, 3).await;
    assert_eq!(within(second).await.expect("acked"), 2);
    assert_eq!(within(third).await.expect("joins").expect("acked"), 3);
}

#[tokio::test]
async fn server_error_maps_to_error_server() {
    let (client, mut peer) = pair().await;
    let server = async {
        let publish = peer.expect_publish().await;
        peer.send(Frame::Error(ErrorFrame::new(
            publish.request_id,
            ErrorCode::InvalidName,
            false,
            "topic name is empty",
        )))
        .await;
        let publish = peer.expect_publish().await;
        peer.send(Frame::Error(ErrorFrame {
            request_id: publish.request_id,
            code: 999,
            fatal: false,
            message: "from the future".into(),
        }))
        .await;
        let publish = peer.expect_publish().await;
        peer.ack(publish.request_id, 7).await;
    };
    let client_side = async {
        let err = client.publish("a", "t", "x").await.expect_err("refused");
        match &err {
            Error::Server {
                code,
                raw_code,
                message,
            } => {
                assert_eq!(*code, Some(ErrorCode::InvalidName));
                assert_eq!(*raw_code, 6);
                assert_eq!(message, "topic name is empty");
            }
            other => panic!("expected Error::Server, got {other:?}"),
        }
        assert_eq!(
            err.to_string(),
            "server refused request: invalid_name (6): topic name is empty"
        );
        let err = client.publish("a", "t", "x").await.expect_err("refused");
        assert!(
            matches!(
                err,
                Error::Server {
                    code: None,
                    raw_code: 999,
                    ..
                }
            ),
            "{err:?}"
        );
        // A non-fatal error leaves the connection usable.
        assert_eq!(client.publish("a", "t", "x").await.expect("acked"), 7);
    };
    within(async { tokio::join!(client_side, server) }).await;
}

#[tokio::test]
async fn subscription_streams_messages_in_order() {
    let (client, mut peer) = pair().await;
    let server = async {
        let subscribe = peer.expect_subscribe().await;
        assert_eq!(subscribe.topic.namespace(), "app");
        assert_eq!(subscribe.topic.topic(), "news");
        assert_ne!(subscribe.sub_id, 0);
        peer.send(Frame::SubOk(SubOk {
            request_id: subscribe.request_id,
            sub_id: subscribe.sub_id,
            epoch: EPOCH,
            start_after: 10,
        }))
        .await;
        subscribe.sub_id
    };
    let (sub, sub_id) =
        within(async { tokio::join!(client.subscribe("app", "news"), server) }).await;
    let mut sub = sub.expect("subscribed");
    assert_eq!(sub.id(), sub_id);
    assert_eq!(sub.start_after(), 10);
    assert_eq!((sub.epoch(), sub.last_seq()), (EPOCH, 10));
    assert_eq!(sub.namespace(), "app");
    assert_eq!(sub.topic(), "news");

    for seq in 11..=20 {
        // Frames for an unknown subscription are ignored.
        peer.message(sub_id + 1000, 1, b"stray").await;
        peer.message(sub_id, seq, b"payload").await;
    }
    for seq in 11..=20 {
        let message = if seq % 2 == 0 {
            stream_next(&mut sub).await
        } else {
            within(sub.next_message()).await
        };
        let message = message.expect("open").expect("no error");
        assert_eq!((message.epoch, message.seq), (EPOCH, seq));
        assert_eq!(&message.payload[..], b"payload");
        assert_eq!(sub.last_seq(), seq);
    }
}

#[tokio::test]
async fn small_subscription_buffer_applies_backpressure_without_loss() {
    let config = ClientConfig {
        subscription_buffer: 1,
        ..ClientConfig::default()
    };
    let (client, mut peer) = connected(config, DEFAULT_MAX_FRAME).await;
    let (sub, sub_id) =
        within(async { tokio::join!(client.subscribe("a", "t"), peer.accept_subscribe(0)) }).await;
    let mut sub = sub.expect("subscribed");
    for seq in 1..=50 {
        peer.message(sub_id, seq, b"m").await;
    }
    for seq in 1..=50 {
        let message = within(sub.next_message()).await.expect("open").expect("ok");
        assert_eq!(message.seq, seq);
    }
}

#[tokio::test]
async fn a_read_of_interleaved_messages_reaches_each_subscription_whole_and_in_order() {
    // One write holds runs of messages for two subscriptions, a gap, a
    // dropped subscription's messages and a PUB_ACK; the reader hands them
    // over in runs, and each queue holds 2 items, so it blocks in the middle
    // of a run again and again and must keep the rest.
    let config = ClientConfig {
        subscription_buffer: 2,
        ..ClientConfig::default()
    };
    let (client, mut peer) = connected(config, DEFAULT_MAX_FRAME).await;
    let (a, a_id) =
        within(async { tokio::join!(client.subscribe("a", "t1"), peer.accept_subscribe(0)) }).await;
    let (b, b_id) =
        within(async { tokio::join!(client.subscribe("a", "t2"), peer.accept_subscribe(0)) }).await;
    let (gone, gone_id) =
        within(async { tokio::join!(client.subscribe("a", "t3"), peer.accept_subscribe(0)) }).await;
    let (mut a, mut b) = (a.expect("subscribed"), b.expect("subscribed"));
    drop(gone.expect("subscribed"));
    assert!(matches!(peer.expect().await, Frame::Unsubscribe(_)));
    let pending = client.start_publish("a", "t1", "x");
    let publish = within(async { tokio::join!(pending, peer.expect_publish()) }).await;
    let (pending, publish) = (publish.0.expect("queued"), publish.1);

    let mut out = BytesMut::new();
    let message = |sub_id, seq| {
        Frame::Message(corebus_net::Message {
            sub_id,
            epoch: EPOCH,
            seq,
            body: corebus_net::Body::plain(format!("{sub_id}:{seq}").as_bytes()),
        })
    };
    let (mut next_a, mut next_b) = (1, 1);
    for round in 0..20u64 {
        for _ in 0..(round % 4 + 1) {
            message(a_id, next_a).encode(&mut out);
            next_a += 1;
        }
        message(gone_id, round + 1).encode(&mut out);
        for _ in 0..(round % 3 + 1) {
            message(b_id, next_b).encode(&mut out);
            next_b += 1;
        }
    }
    // b skips ahead, announced by a DISCONTINUITY, then goes on.
    Frame::Discontinuity(Discontinuity {
        sub_id: b_id,
        epoch: EPOCH,
        last_seq: next_b - 1,
        next_seq: next_b + 10,
    })
    .encode(&mut out);
    next_b += 10;
    message(b_id, next_b).encode(&mut out);
    Frame::PubAck(PubAck {
        request_id: publish.request_id,
        seq: 77,
    })
    .encode(&mut out);
    within(peer.stream.write_all(&out)).await.expect("writes");

    // Both are read at once: a full queue stops the reader for the whole
    // connection.
    let read_a = async {
        for seq in 1..next_a {
            let message = a.next_message().await.expect("open").expect("ok");
            assert_eq!(message.seq, seq);
            assert_eq!(&message.payload[..], format!("{a_id}:{seq}").as_bytes());
        }
    };
    let read_b = async {
        let mut seq = 1;
        while seq <= next_b {
            match b.next_event().await.expect("open").expect("ok") {
                Event::Message(message) => {
                    assert_eq!(message.seq, seq);
                    assert_eq!(&message.payload[..], format!("{b_id}:{seq}").as_bytes());
                    seq += 1;
                }
                Event::Discontinuity(gap) => {
                    assert_eq!(gap.next_seq, seq + 10, "the gap comes where it was sent");
                    seq = gap.next_seq;
                }
            }
        }
    };
    within(async { tokio::join!(read_a, read_b) }).await;
    assert_eq!(within(pending).await.expect("acked"), 77);
}

#[tokio::test]
async fn dropping_a_subscription_unsubscribes() {
    let (client, mut peer) = pair().await;
    let (sub, sub_id) =
        within(async { tokio::join!(client.subscribe("a", "t"), peer.accept_subscribe(0)) }).await;
    drop(sub.expect("subscribed"));
    let unsubscribe = match peer.expect().await {
        Frame::Unsubscribe(unsubscribe) => unsubscribe,
        other => panic!("expected UNSUBSCRIBE, got {other:?}"),
    };
    assert_eq!(unsubscribe.sub_id, sub_id);
    // A message racing the UNSUBSCRIBE is dropped silently.
    peer.message(sub_id, 1, b"late").await;
    peer.send(Frame::UnsubOk(UnsubOk {
        request_id: unsubscribe.request_id,
        sub_id,
    }))
    .await;
    // The connection is still fine.
    let server = async {
        let publish = peer.expect_publish().await;
        peer.ack(publish.request_id, 5).await;
    };
    let (seq, ()) = within(async { tokio::join!(client.publish("a", "t", "x"), server) }).await;
    assert_eq!(seq.expect("acked"), 5);
}

#[tokio::test]
async fn unsubscribe_waits_for_unsub_ok() {
    let (client, mut peer) = pair().await;
    let (sub, sub_id) =
        within(async { tokio::join!(client.subscribe("a", "t"), peer.accept_subscribe(3)) }).await;
    let sub = sub.expect("subscribed");
    let server = async {
        let unsubscribe = match peer.expect().await {
            Frame::Unsubscribe(unsubscribe) => unsubscribe,
            other => panic!("expected UNSUBSCRIBE, got {other:?}"),
        };
        assert_eq!(unsubscribe.sub_id, sub_id);
        peer.message(sub_id, 4, b"in between").await;
        peer.send(Frame::UnsubOk(UnsubOk {
            request_id: unsubscribe.request_id,
            sub_id,
        }))
        .await;
    };
    let (result, ()) = within(async { tokio::join!(sub.unsubscribe(), server) }).await;
    result.expect("unsubscribed");

    // Unsubscribing an unknown id is answered with an ERROR.
    let (sub, sub_id) =
        within(async { tokio::join!(client.subscribe("a", "t"), peer.accept_subscribe(3)) }).await;
    let sub = sub.expect("subscribed");
    let server = async {
        let unsubscribe = match peer.expect().await {
            Frame::Unsubscribe(unsubscribe) => unsubscribe,
            other => panic!("expected UNSUBSCRIBE, got {other:?}"),
        };
        assert_eq!(unsubscribe.sub_id, sub_id);
        peer.send(Frame::Error(ErrorFrame::new(
            unsubscribe.request_id,
            ErrorCode::UnknownSubscription,
            false,
            "no such subscription",
        )))
        .await;
    };
    let (result, ()) = within(async { tokio::join!(sub.unsubscribe(), server) }).await;
    assert_eq!(
        result.expect_err("refused").server_code(),
        Some(ErrorCode::UnknownSubscription)
    );
}

#[tokio::test]
async fn subscribe_error_maps_to_error_server() {
    let (client, mut peer) = pair().await;
    let server = async {
        let subscribe = peer.expect_subscribe().await;
        peer.send(Frame::Error(ErrorFrame::new(
            subscribe.request_id,
            ErrorCode::TooManySubscriptions,
            false,
            "limit reached",
        )))
        .await;
    };
    let (result, ()) = within(async { tokio::join!(client.subscribe("a", "t"), server) }).await;
    let err = result.expect_err("refused");
    assert_eq!(err.server_code(), Some(ErrorCode::TooManySubscriptions));
}

#[tokio::test]
async fn connection_drop_fails_pending_and_ends_subscriptions() {
    let config = ClientConfig {
        reconnect: false,
        ..ClientConfig::default()
    };
    let (client, mut peer) = connected(config, DEFAULT_MAX_FRAME).await;
    let (sub, sub_id) =
        within(async { tokio::join!(client.subscribe("a", "t"), peer.accept_subscribe(0)) }).await;
    let mut sub = sub.expect("subscribed");
    let pending = client.start_publish("a", "t", "x").await.expect("queued");
    peer.expect_publish().await;
    peer.message(sub_id, 1, b"before").await;
    drop(peer);

    let err = within(pending).await.expect_err("the connection dropped");
    assert!(matches!(err, Error::ConnectionLost(_)), "{err:?}");

    let first = stream_next(&mut sub)
        .await
        .expect("item")
        .expect("buffered message");
    assert_eq!(first.seq, 1);
    let end = stream_next(&mut sub).await.expect("an error item");
    assert!(matches!(end, Err(Error::ConnectionLost(_))), "{end:?}");
    assert!(stream_next(&mut sub).await.is_none());

    let later = within(client.publish("a", "t", "y")).await;
    assert!(matches!(later, Err(Error::ConnectionLost(_))), "{later:?}");
    let later = within(client.subscribe("a", "t")).await;
    assert!(matches!(later, Err(Error::ConnectionLost(_))), "{later:?}");
}

#[tokio::test]
async fn fatal_error_reports_its_reason() {
    let (client, mut peer) = pair().await;
    let pending = client.start_publish("a", "t", "x").await.expect("queued");
    peer.expect_publish().await;
    peer.send(Frame::Error(ErrorFrame::new(
        0,
        ErrorCode::ShuttingDown,
        true,
        "broker stopping",
    )))
    .await;
    let err = within(pending).await.expect_err("fatal");
    match &err {
        Error::ConnectionLost(reason) => {
            assert!(reason.contains("shutting_down"), "{reason}");
            assert!(reason.contains("broker stopping"), "{reason}");
        }
        other => panic!("expected ConnectionLost, got {other:?}"),
    }
}

#[tokio::test]
async fn sequence_gap_ends_the_connection() {
    let (client, mut peer) = pair().await;
    let (sub, sub_id) =
        within(async { tokio::join!(client.subscribe("a", "t"), peer.accept_subscribe(5)) }).await;
    let mut sub = sub.expect("subscribed");
    peer.message(sub_id, 6, b"ok").await;
    peer.message(sub_id, 8, b"gap").await;
    assert_eq!(
        within(sub.next_message())
            .await
            .expect("item")
            .expect("ok")
            .seq,
        6
    );
    match within(sub.next_message()).await {
        Some(Err(Error::ConnectionLost(reason))) => assert!(reason.contains("gap"), "{reason}"),
        other => panic!("expected a gap error, got {other:?}"),
    }
    assert!(within(sub.next_message()).await.is_none());
    // The client closed the connection.
    assert!(peer.recv().await.is_none());
}

#[tokio::test]
async fn undecodable_frame_is_a_protocol_error() {
    let (client, mut peer) = pair().await;
    let pending = client.start_publish("a", "t", "x").await.expect("queued");
    peer.expect_publish().await;
    // Length 1, opcode 0x77: unknown.
    within(peer.stream.write_all(&[0, 0, 0, 1, 0x77]))
        .await
        .expect("writes");
    let err = within(pending).await.expect_err("protocol error");
    assert!(matches!(err, Error::Protocol(_)), "{err:?}");
    let later = within(client.publish("a", "t", "y")).await;
    assert!(matches!(later, Err(Error::ConnectionLost(_))), "{later:?}");
}

#[tokio::test]
async fn invalid_names_and_sizes_are_refused_locally() {
    let (client, mut peer) = connected(ClientConfig::default(), 100).await;
    let err = client
        .publish("", "t", "x")
        .await
        .expect_err("empty namespace");
    assert!(matches!(err, Error::InvalidName(_)), "{err:?}");
    let err = client
        .publish("a", "a\nb", "x")
        .await
        .expect_err("control character");
    assert!(matches!(err, Error::InvalidName(_)), "{err:?}");
    let err = client.subscribe("a", "").await.expect_err("empty topic");
    assert!(matches!(err, Error::InvalidName(_)), "{err:?}");
    let too_long = "n".repeat(129);
    let err = client
        .subscribe(&too_long, "t")
        .await
        .expect_err("long namespace");
    assert!(matches!(err, Error::InvalidName(_)), "{err:?}");

    // 100 - (1 + 4 + 1 + 1 + 3 + 2 + 4 + 1) = 83 bytes fit (the last 1:
    // the format byte).
    let err = client
        .start_publish("app", "news", vec![0u8; 84])
        .await
        .expect_err("too large");
    assert!(
        matches!(err, Error::PayloadTooLarge { len: 84, max: 83 }),
        "{err:?}"
    );
    let fits = client
        .start_publish("app", "news", vec![0u8; 83])
        .await
        .expect("fits");

    // Nothing of the refused calls reached the server.
    let publish = peer.expect_publish().await;
    assert_eq!(publish.body.payload().len(), 83);
    peer.ack(publish.request_id, 1).await;
    assert_eq!(within(fits).await.expect("acked"), 1);
}

#[tokio::test]
async fn server_ping_gets_pong() {
    let (_client, mut peer) = pair().await;
    peer.send(Frame::Ping(77)).await;
    assert_eq!(peer.expect().await, Frame::Pong(77));
}

#[tokio::test]
async fn client_ping_measures_round_trip_and_times_out() {
    let config = ClientConfig {
        request_timeout: Duration::from_millis(200),
        ..ClientConfig::default()
    };
    const HOLD: Duration = Duration::from_millis(30);
    let (client, mut peer) = connected(config, DEFAULT_MAX_FRAME).await;
    let server = async {
        match peer.expect().await {
            Frame::Ping(nonce) => {
                tokio::time::sleep(HOLD).await;
                peer.send(Frame::Pong(nonce)).await
            }
            other => panic!("expected PING, got {other:?}"),
        }
    };
    let started = tokio::time::Instant::now();
    let (rtt, ()) = within(async { tokio::join!(client.ping(), server) }).await;
    let rtt = rtt.expect("pong");
    // The server held the PONG for HOLD: the measure covers that and no
    // more than the call took.
    assert!(
        rtt >= HOLD && rtt <= started.elapsed(),
        "rtt {rtt:?}, call {:?}",
        started.elapsed()
    );

    // No answer: Timeout; a late PONG afterwards is ignored.
    let err = within(client.ping()).await.expect_err("no pong");
    assert!(matches!(err, Error::Timeout), "{err:?}");
    let nonce = match peer.expect().await {
        Frame::Ping(nonce) => nonce,
        other => panic!("expected PING, got {other:?}"),
    };
    peer.send(Frame::Pong(nonce)).await;
    let server = async {
        match peer.expect().await {
            Frame::Ping(nonce) => peer.send(Frame::Pong(nonce)).await,
            other => panic!("expected PING, got {other:?}"),
        }
    };
    let (rtt, ()) = within(async { tokio::join!(client.ping(), server) }).await;
    rtt.expect("still usable");
}

#[tokio::test]
async fn close_waits_for_in_flight_publishes() {
    let (client, mut peer) = pair().await;
    let other = client.clone();
    let (sub, _sub_id) =
        within(async { tokio::join!(client.subscribe("a", "t"), peer.accept_subscribe(0)) }).await;
    let mut sub = sub.expect("subscribed");
    let pending = client.start_publish("a", "t", "x").await.expect("queued");
    let closing = tokio::spawn(client.close());

    let publish = peer.expect_publish().await;
    let refused = within(other.publish("a", "t", "late")).await;
    assert!(matches!(refused, Err(Error::Closed)), "{refused:?}");
    // close() has begun (it refused the late publish); a round trip shows
    // the connection still open and served while it waits for the ack.
    peer.send(Frame::Ping(7)).await;
    assert_eq!(
        peer.recv().await,
        Some(Frame::Pong(7)),
        "the connection stays open until the ack"
    );
    assert!(!closing.is_finished(), "close waits for the ack");
    peer.ack(publish.request_id, 9).await;

    within(closing).await.expect("joins").expect("closed");
    assert_eq!(within(pending).await.expect("acked"), 9);
    // The socket was shut down after the flush.
    assert!(peer.recv().await.is_none());
    let later = within(other.publish("a", "t", "y")).await;
    assert!(matches!(later, Err(Error::Closed)), "{later:?}");
    assert!(matches!(
        stream_next(&mut sub).await,
        Some(Err(Error::Closed))
    ));
    assert!(stream_next(&mut sub).await.is_none());
}

#[tokio::test]
async fn dropping_the_last_handle_closes_the_connection() {
    let (client, mut peer) = pair().await;
    let clone = client.clone();
    drop(client);
    peer.send(Frame::Ping(1)).await;
    assert_eq!(peer.expect().await, Frame::Pong(1), "a clone keeps it open");
    drop(clone);
    assert!(peer.recv().await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishers_share_one_connection() {
    let (client, mut peer) = pair().await;
    const TASKS: u32 = 4;
    const EACH: u32 = 100;
    let server = tokio::spawn(async move {
        for seq in 1..=u64::from(TASKS * EACH) {
            let publish = peer.expect_publish().await;
            peer.ack(publish.request_id, seq).await;
        }
        peer
    });
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut last = 0;
            for i in 0..EACH {
                let seq = client
                    .publish("a", &format!("t{t}"), i.to_be_bytes().to_vec())
                    .await
                    .expect("acked");
                assert!(seq > last);
                last = seq;
            }
        }));
    }
    for task in tasks {
        within(task).await.expect("publisher ok");
    }
    within(server).await.expect("server ok");
}

#[tokio::test]
async fn late_sub_ok_after_timeout_unsubscribes() {
    let config = ClientConfig {
        request_timeout: Duration::from_millis(100),
        ..ClientConfig::default()
    };
    let (client, mut peer) = connected(config, DEFAULT_MAX_FRAME).await;
    let (result, subscribe) =
        within(async { tokio::join!(client.subscribe("a", "t"), peer.expect_subscribe()) }).await;
    assert!(matches!(result, Err(Error::Timeout)), "{result:?}");
    peer.send(Frame::SubOk(SubOk {
        request_id: subscribe.request_id,
        sub_id: subscribe.sub_id,
        epoch: EPOCH,
        start_after: 0,
    }))
    .await;
    peer.message(subscribe.sub_id, 1, b"nobody listens").await;
    match peer.expect().await {
        Frame::Unsubscribe(unsubscribe) => assert_eq!(unsubscribe.sub_id, subscribe.sub_id),
        other => panic!("expected UNSUBSCRIBE, got {other:?}"),
    }
}

#[tokio::test]
async fn unacked_publishes_go_in_call_order_and_refusals_are_counted() {
    let (client, mut peer) = pair().await;
    client
        .publish_unacked("app", "news", b"first")
        .await
        .expect("queued");
    let acked = client
        .start_publish("app", "news", "second")
        .await
        .expect("queued");
    client
        .publish_unacked("app", "news", b"third")
        .await
        .expect("queued");
    let first = peer.expect_publish().await;
    let second = peer.expect_publish().await;
    let third = peer.expect_publish().await;
    assert_eq!(
        [
            &first.body.payload()[..],
            &second.body.payload()[..],
            &third.body.payload()[..]
        ],
        [&b"first"[..], b"second", b"third"],
        "wire order is call order, acked or not"
    );
    assert!(!first.ack && second.ack && !third.ack);
    assert_ne!(first.request_id, third.request_id);
    for id in [first.request_id, second.request_id, third.request_id] {
        assert_ne!(id, 0, "request id 0 is reserved");
    }
    assert_eq!(client.take_unacked_failures().count, 0);

    // The broker refuses the third: counted, with the server's error; the
    // acknowledged publish in between is unaffected.
    peer.send(Frame::Error(ErrorFrame::new(
        third.request_id,
        ErrorCode::Forbidden,
        false,
        "publish to app/news is not permitted",
    )))
    .await;
    peer.ack(second.request_id, 2).await;
    assert_eq!(within(acked).await.expect("acked"), 2);
    let failures = client.take_unacked_failures();
    assert_eq!(failures.count, 1);
    let last = failures.last.expect("the refusal");
    assert_eq!(last.server_code(), Some(ErrorCode::Forbidden));
    assert!(last.to_string().contains("app/news"), "{last}");
    // Taking starts a new tally.
    assert_eq!(client.take_unacked_failures().count, 0);
    // Names and sizes are still checked locally.
    assert!(matches!(
        client.publish_unacked("app", "", b"x").await,
        Err(Error::InvalidName(_))
    ));
    assert!(matches!(
        client
            .publish_unacked("app", "news", vec![0u8; DEFAULT_MAX_FRAME as usize])
            .await,
        Err(Error::PayloadTooLarge { .. })
    ));
}

#[tokio::test]
async fn unacked_publishes_wait_for_the_socket_beyond_the_send_buffer() {
    let config = ClientConfig {
        send_buffer: 64 * 1024,
        ..ClientConfig::default()
    };
    let (client, mut peer) = connected(config, DEFAULT_MAX_FRAME).await;
    // The peer reads nothing: once the kernel's socket buffers and the
    // client's send buffer are full, a publish must wait instead of queueing
    // without limit. 64 MiB is far more than all of them hold.
    let payload = vec![7u8; 16 * 1024];
    let mut queued = 0usize;
    let blocked = loop {
        assert!(
            queued < 64 << 20,
            "64 MiB queued to a peer that reads nothing: publish_unacked never waited"
        );
        match tokio::time::timeout(
            Duration::from_millis(200),
            client.publish_unacked("a", "t", &payload),
        )
        .await
        {
            Ok(result) => {
                result.expect("queued");
                queued += payload.len();
            }
            Err(_) => break queued,
        }
    };
    assert!(blocked >= 64 * 1024, "waited after only {blocked} bytes");
    // Once the peer reads, publishing goes on, and everything queued arrives
    // in order.
    let more = tokio::spawn({
        let client = client.clone();
        async move { client.publish_unacked("a", "t", b"last").await }
    });
    let mut received = 0usize;
    loop {
        let publish = peer.expect_publish().await;
        assert!(!publish.ack);
        if &publish.body.payload()[..] == b"last" {
            break;
        }
        assert_eq!(publish.body.payload().len(), payload.len());
        received += publish.body.payload().len();
    }
    assert_eq!(
        received, blocked,
        "every queued publish arrived before the last"
    );
    within(more).await.expect("joins").expect("queued");
}

/// A pattern subscription: `TOPIC_MESSAGE`s only, each topic checked on its
/// own (a skipped seq is a discontinuity right before that topic's
/// message); a `MESSAGE` for it breaks the stream.
#[tokio::test]
async fn a_pattern_subscription_checks_each_topic_and_reports_its_jumps() {
    let (client, mut peer) = pair().await;
    let server = async {
        let subscribe = peer.expect_subscribe().await;
        assert_eq!(subscribe.resume, None, "patterns are live only");
        peer.sub_ok(&subscribe, 0, 0).await;
        subscribe.sub_id
    };
    let (sub, sub_id) =
        within(async { tokio::join!(client.subscribe("app", "orders/*"), server) }).await;
    let mut sub = sub.expect("subscribed");
    peer.topic_message(sub_id, "orders/eu", 7, 1).await;
    peer.topic_message(sub_id, "orders/us", 9, 40).await;
    peer.topic_message(sub_id, "orders/eu", 7, 2).await;
    peer.topic_message(sub_id, "orders/eu", 7, 5).await;
    let mut seen = Vec::new();
    for _ in 0..5 {
        match within(next_item(&mut sub)).await {
            Some(Ok(Event::Message(message))) => {
                assert_eq!(
                    &message.payload[..],
                    format!("{}#{}", message.topic(), message.seq).as_bytes()
                );
                seen.push(format!("{} #{}", message.topic(), message.seq));
            }
            Some(Ok(Event::Discontinuity(gap))) => seen.push(format!(
                "gap {}..{} of {}",
                gap.last_seq, gap.next_seq, gap.epoch
            )),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        seen,
        [
            "orders/eu #1",
            "orders/us #40",
            "orders/eu #2",
            "gap 2..5 of 7",
            "orders/eu #5"
        ]
    );
    // A MESSAGE is not what a pattern subscription gets: the stream is
    // broken, and the client says so.
    peer.message(sub_id, 1, b"x").await;
    match within(next_item(&mut sub)).await {
        Some(Err(Error::ConnectionLost(reason))) => {
            assert!(reason.contains("pattern"), "{reason}")
        }
        other => panic!("expected the connection to end, got {other:?}"),
    }
}
