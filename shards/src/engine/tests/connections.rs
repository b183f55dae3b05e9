//! Connections: the handshake, typed request errors, limits, heartbeats and
//! draining.

use super::*;

#[test]
fn request_errors_are_typed_and_keep_the_connection() {
    let mut cluster = Cluster::new(1, EngineConfig::default());
    let t = topic("errs");
    let client = cluster.connect(0);
    cluster.send(client, subscribe(&t, 1, 5));
    assert_eq!(cluster.send(client, subscribe(&t, 2, 5)), Flow::Continue);
    let unsubscribe = Frame::Unsubscribe(Unsubscribe {
        request_id: 3,
        sub_id: 99,
    });
    assert_eq!(cluster.send(client, unsubscribe), Flow::Continue);
    let codes: Vec<(u32, Option<ErrorCode>)> = cluster
        .take_conn(client)
        .iter()
        .filter_map(|f| match f {
            OutFrame::Error(e) => Some((e.request_id, e.code())),
            _ => None,
        })
        .collect();
    assert_eq!(
        codes,
        vec![
            (2, Some(ErrorCode::DuplicateSubscription)),
            (3, Some(ErrorCode::UnknownSubscription))
        ]
    );
}

#[test]
fn subscription_limit_is_enforced() {
    let config = EngineConfig {
        max_subscriptions_per_conn: 2,
        ..EngineConfig::default()
    };
    let mut cluster = Cluster::new(1, config);
    let client = cluster.connect(0);
    for sub in 1..=3 {
        cluster.send(client, subscribe(&topic(&format!("s{sub}")), sub, sub));
    }
    let frames = cluster.take_conn(client);
    assert!(matches!(
        frames.last(),
        Some(OutFrame::Error(e)) if e.code() == Some(ErrorCode::TooManySubscriptions) && e.request_id == 3
    ));
}

/// The error answering request `request_id`, if any.
fn error_for(frames: &[OutFrame], request_id: u32) -> Option<ErrorCode> {
    frames.iter().find_map(|frame| match frame {
        OutFrame::Error(e) if e.request_id == request_id => e.code(),
        _ => None,
    })
}

#[test]
fn subscription_names_are_bounded_per_connection() {
    // Each name below is 4 + 2 + 96 wire bytes ("test", a u16, the topic).
    let config = EngineConfig {
        max_subscription_bytes_per_conn: 3 * 102,
        ..EngineConfig::default()
    };
    let mut cluster = Cluster::new(1, config);
    let client = cluster.connect(0);
    let name = |n: u32| topic(&format!("{n:0>96}"));
    for sub in 1..=4 {
        cluster.send(client, subscribe(&name(sub), sub, sub));
    }
    let frames = cluster.take_conn(client);
    assert_eq!(error_for(&frames, 3), None, "three names fit exactly");
    assert_eq!(error_for(&frames, 4), Some(ErrorCode::TooManySubscriptions));
    // A short name still fits under a count limit; the bytes are what is full.
    cluster.send(client, subscribe(&topic("x"), 5, 5));
    assert_eq!(
        error_for(&cluster.take_conn(client), 5),
        Some(ErrorCode::TooManySubscriptions)
    );
    // Unsubscribing gives the bytes back.
    cluster.send(
        client,
        Frame::Unsubscribe(Unsubscribe {
            request_id: 6,
            sub_id: 1,
        }),
    );
    cluster.send(client, subscribe(&name(7), 7, 7));
    assert_eq!(error_for(&cluster.take_conn(client), 7), None);
    // Another connection has bytes of its own.
    let other = cluster.connect(0);
    cluster.send(other, subscribe(&name(1), 1, 1));
    assert_eq!(error_for(&cluster.take_conn(other), 1), None);
}

#[test]
fn subscriptions_are_bounded_broker_wide_across_shards() {
    let config = EngineConfig {
        max_subscriptions: 3,
        ..EngineConfig::default()
    };
    let mut cluster = Cluster::new(2, config);
    let a = cluster.connect(0);
    let b = cluster.connect(1);
    cluster.send(a, subscribe(&topic("a1"), 1, 1));
    cluster.send(a, subscribe(&topic("a2"), 2, 2));
    cluster.send(b, subscribe(&topic("b1"), 1, 1));
    cluster.send(b, subscribe(&topic("b2"), 2, 2));
    cluster.send(a, subscribe(&topic("a3"), 3, 3));
    cluster.pump();
    let (from_a, from_b) = (cluster.take_conn(a), cluster.take_conn(b));
    assert_eq!(error_for(&from_b, 1), None);
    assert_eq!(error_for(&from_b, 2), Some(ErrorCode::TooManySubscriptions));
    assert_eq!(error_for(&from_a, 3), Some(ErrorCode::TooManySubscriptions));
    let refusal = from_a.iter().find_map(|frame| match frame {
        OutFrame::Error(e) if e.request_id == 3 => Some(e.message.clone()),
        _ => None,
    });
    assert!(refusal.is_some_and(|m| m.contains("broker holds its maximum of 3")));
    assert_eq!(
        cluster.shards[0].metrics().subscriptions + cluster.shards[1].metrics().subscriptions,
        3
    );
    // A closed connection gives its subscriptions back to every shard.
    cluster.shards[0].close_conn(a.1);
    cluster.send(b, subscribe(&topic("b3"), 3, 3));
    cluster.send(b, subscribe(&topic("b4"), 4, 4));
    cluster.send(b, subscribe(&topic("b5"), 5, 5));
    let from_b = cluster.take_conn(b);
    assert_eq!(error_for(&from_b, 4), None);
    assert_eq!(error_for(&from_b, 5), Some(ErrorCode::TooManySubscriptions));
}

#[test]
fn a_subscription_keeps_no_part_of_the_frame_it_arrived_in() {
    let mut cluster = Cluster::new(1, EngineConfig::default());
    let client = cluster.connect(0);
    let frame = Bytes::from(b"....test\x00\x05topic....".to_vec());
    let key = TopicKey::from_wire(frame.slice(4..15), 4).expect("valid");
    cluster.send(client, subscribe(&key, 1, 1));
    let state = &cluster.shards[0].conns[&client.1];
    let kept = &state.subscriptions[&1].topic;
    assert_eq!(kept, &key);
    assert!(!frame.as_ptr_range().contains(&kept.wire_bytes().as_ptr()));
}

#[test]
fn handshake_is_required_and_versioned() {
    let mut cluster = Cluster::new(1, EngineConfig::default());
    let conn = cluster.shards[0].open_conn();
    assert_eq!(
        cluster.shards[0].handle_frame(conn, Frame::Ping(1)),
        Flow::Close
    );
    let frames = cluster.take(0, conn);
    assert!(
        matches!(&frames[..], [OutFrame::Error(e)] if e.fatal && e.code() == Some(ErrorCode::HandshakeRequired))
    );

    let conn = cluster.shards[0].open_conn();
    let hello = Frame::Hello(Hello {
        version: 99,
        client_name: String::new(),
        credentials: bytes::Bytes::new(),
    });
    assert_eq!(cluster.shards[0].handle_frame(conn, hello), Flow::Close);
    let frames = cluster.take(0, conn);
    assert!(
        matches!(&frames[..], [OutFrame::Error(e)] if e.fatal && e.code() == Some(ErrorCode::UnsupportedVersion))
    );
}

#[test]
fn decode_errors_after_handshake_keep_the_connection_unless_framing_broke() {
    let mut cluster = Cluster::new(1, EngineConfig::default());
    let (shard, conn) = cluster.connect(0);
    let unknown = corebus_net::FrameError::UnknownOpcode { opcode: 0x7e };
    assert_eq!(
        cluster.shards[shard].handle_decode_error(conn, &unknown),
        Flow::Continue
    );
    let too_large = corebus_net::FrameError::TooLarge {
        len: 1 << 30,
        max: 1 << 20,
    };
    assert_eq!(
        cluster.shards[shard].handle_decode_error(conn, &too_large),
        Flow::Close
    );
    let frames = cluster.take(shard, conn);
    assert!(
        matches!(&frames[..], [OutFrame::Error(e)] if e.fatal && e.code() == Some(ErrorCode::FrameTooLarge))
    );
}

/// What `docs/protocol.md` (section 7.2) tells clients about the order of
/// answers: a request handled on the connection's own shard is answered at
/// once, one that needs the topic's owner elsewhere once the owner replied,
/// so answers come out of request order; `PUB_ACK`s of one topic keep the
/// order of their publishes; and a `SUBSCRIBE` not yet answered when its
/// subscription is ended by `UNSUBSCRIBE` gets no answer of its own.
#[test]
fn answers_are_matched_by_request_id_not_by_order() {
    let mut cluster = Cluster::new(2, EngineConfig::default());
    let remote = topic_owned_by(1, 2);
    let client = cluster.connect(0);
    cluster.send(client, publish(&remote, 1, "a"));
    cluster.send(client, publish(&remote, 2, "b"));
    cluster.send(client, Frame::Ping(9));
    cluster.send(client, subscribe(&remote, 3, 7));
    cluster.send(client, resume(&remote, 4, 8, 0, 1));
    for (request_id, sub_id) in [(5, 7), (6, 8)] {
        cluster.send(
            client,
            Frame::Unsubscribe(Unsubscribe { request_id, sub_id }),
        );
    }
    assert_eq!(
        cluster.take_conn(client),
        vec![
            OutFrame::Pong(9),
            OutFrame::UnsubOk {
                request_id: 5,
                sub_id: 7
            },
            OutFrame::UnsubOk {
                request_id: 6,
                sub_id: 8
            },
        ],
        "answered at once, ahead of the publishes sent before"
    );
    cluster.pump();
    assert_eq!(
        cluster.take_conn(client),
        vec![
            OutFrame::PubAck {
                request_id: 1,
                seq: 1
            },
            OutFrame::PubAck {
                request_id: 2,
                seq: 2
            },
        ],
        "no SUB_OK for requests 3 and 4 after their UNSUB_OK"
    );
}

#[test]
fn silent_connections_get_a_ping_then_are_closed() {
    let config = EngineConfig {
        heartbeat_interval_ms: 100,
        heartbeat_timeout_ms: 300,
        ..EngineConfig::default()
    };
    let mut cluster = Cluster::new(1, config);
    let client = cluster.connect(0);
    cluster.shards[0].tick(150);
    assert!(matches!(cluster.take_conn(client)[..], [OutFrame::Ping(_)]));
    cluster.shards[0].tick(200);
    assert!(cluster.take_conn(client).is_empty(), "one ping per silence");
    // Input at (coarse) time 200 resets the silence.
    cluster.shards[0].note_input(client.1, 1);
    cluster.shards[0].tick(250);
    assert!(
        cluster.take_conn(client).is_empty(),
        "input resets the clock"
    );
    cluster.shards[0].tick(400);
    assert!(matches!(cluster.take_conn(client)[..], [OutFrame::Ping(_)]));
    cluster.shards[0].tick(500);
    let frames = cluster.take_conn(client);
    assert!(
        matches!(&frames[..], [OutFrame::Error(e)] if e.fatal && e.code() == Some(ErrorCode::IdleTimeout))
    );
}

#[test]
fn drain_says_goaway_and_stops_queueing() {
    let mut cluster = Cluster::new(1, EngineConfig::default());
    let t = topic("bye");
    let publisher = cluster.connect(0);
    let subscriber = cluster.connect(0);
    cluster.send(subscriber, subscribe(&t, 1, 1));
    cluster.send(publisher, publish(&t, 1, "before"));
    cluster.shards[0].begin_drain(10_000);
    let frames = cluster.take_conn(subscriber);
    assert!(matches!(
        frames.last(),
        Some(OutFrame::GoAway {
            drain_ms: 10_000,
            ..
        })
    ));
    assert_eq!(
        messages(&frames),
        vec![(1, 1)],
        "what was queued is still flushed"
    );
    assert!(cluster.shards[0]
        .outbox_mut(subscriber.1)
        .expect("open")
        .is_closing());
    assert_eq!(
        cluster.send(publisher, publish(&t, 2, "after")),
        Flow::Close
    );
    let metrics = cluster.shards[0].metrics();
    assert_eq!(
        metrics.subscriptions, 0,
        "drained connections hold no subscriptions"
    );
    assert_eq!(metrics.connections, 2, "until their writers close them");
}
