//! Discontinuities, resuming, reconnection and heartbeats, against the
//! scripted fake server.

use crate::common;

use std::time::Duration;

use common::*;
use corebus_client::{ClientConfig, Discontinuity, Error, Event, ResumeFrom};
use corebus_net::{ErrorCode, ErrorFrame, Frame, ResumePoint, DEFAULT_MAX_FRAME};
use tokio::net::TcpListener;

/// Reconnects quickly, so the tests stay short.
pub(crate) fn fast() -> ClientConfig {
    ClientConfig {
        reconnect_initial_delay: Duration::from_millis(5),
        reconnect_max_delay: Duration::from_millis(20),
        ..ClientConfig::default()
    }
}

fn gap(epoch: u64, last_seq: u64, next_seq: u64) -> Event {
    Event::Discontinuity(Discontinuity {
        epoch,
        last_seq,
        next_seq,
    })
}

async fn next_seq(sub: &mut corebus_client::Subscription) -> (u64, u64) {
    match next_item(sub).await {
        Some(Ok(Event::Message(message))) => (message.epoch, message.seq),
        other => panic!("expected a message, got {other:?}"),
    }
}

#[tokio::test]
async fn discontinuity_is_an_item_and_the_stream_goes_on() {
    let (client, mut peer) = pair().await;
    let (sub, sub_id) =
        within(async { tokio::join!(client.subscribe("a", "t"), peer.accept_subscribe(0)) }).await;
    let mut sub = sub.expect("subscribed");
    peer.message(sub_id, 1, b"1").await;
    peer.discontinuity(sub_id, EPOCH, 1, 5).await;
    peer.message(sub_id, 5, b"5").await;
    peer.discontinuity(sub_id, EPOCH, 5, 9).await;
    peer.message(sub_id, 9, b"9").await;

    assert_eq!(next_seq(&mut sub).await, (EPOCH, 1));
    assert_eq!(
        next_item(&mut sub).await.expect("item").expect("ok"),
        gap(EPOCH, 1, 5)
    );
    assert_eq!((sub.epoch(), sub.last_seq()), (EPOCH, 4));
    assert_eq!(next_seq(&mut sub).await, (EPOCH, 5));
    // next_message reports it as a non-terminal error.
    match within(sub.next_message()).await {
        Some(Err(Error::Discontinuity(d))) => assert_eq!((d.last_seq, d.next_seq), (5, 9)),
        other => panic!("expected a discontinuity, got {other:?}"),
    }
    let message = within(sub.next_message()).await.expect("open").expect("ok");
    assert_eq!(message.seq, 9);
    assert_eq!(sub.last_seq(), 9);
}

#[tokio::test]
async fn discontinuity_that_does_not_fit_is_a_protocol_error() {
    let (client, mut peer) = pair().await;
    let (sub, sub_id) =
        within(async { tokio::join!(client.subscribe("a", "t"), peer.accept_subscribe(2)) }).await;
    let mut sub = sub.expect("subscribed");
    // The subscription is at seq 2; a report starting at 4 hides seq 3.
    peer.discontinuity(sub_id, EPOCH, 4, 8).await;
    match within(sub.next_message()).await {
        Some(Err(Error::ConnectionLost(reason))) => {
            assert!(reason.contains("DISCONTINUITY"), "{reason}")
        }
        other => panic!("expected a protocol error, got {other:?}"),
    }
    assert!(within(sub.next_message()).await.is_none());
    assert!(
        peer.recv().await.is_none(),
        "the client closed the connection"
    );
}

#[tokio::test]
async fn subscribe_from_sends_the_point_and_reports_what_is_gone() {
    let (client, mut peer) = pair().await;
    let server = async {
        let subscribe = peer.expect_subscribe().await;
        assert_eq!(
            subscribe.resume,
            Some(ResumePoint {
                epoch: 0,
                next_seq: 3
            })
        );
        // The ring starts at 10: seq 3..=9 are gone.
        peer.sub_ok(&subscribe, EPOCH, 9).await;
        peer.discontinuity(subscribe.sub_id, EPOCH, 2, 10).await;
        peer.message(subscribe.sub_id, 10, b"10").await;
        subscribe.sub_id
    };
    let (sub, _) =
        within(async { tokio::join!(client.subscribe_from("a", "t", ResumeFrom::Seq(3)), server) })
            .await;
    let mut sub = sub.expect("subscribed");
    assert_eq!(sub.start_after(), 9);
    assert_eq!(
        next_item(&mut sub).await.expect("item").expect("ok"),
        gap(EPOCH, 2, 10)
    );
    assert_eq!(next_seq(&mut sub).await, (EPOCH, 10));

    // Inside the ring: exact replay, no report.
    let server = async {
        let subscribe = peer.expect_subscribe().await;
        assert_eq!(
            subscribe.resume,
            Some(ResumePoint {
                epoch: EPOCH,
                next_seq: 7
            })
        );
        peer.sub_ok(&subscribe, EPOCH, 6).await;
        peer.message(subscribe.sub_id, 7, b"7").await;
    };
    let point = ResumeFrom::Point {
        epoch: EPOCH,
        next_seq: 7,
    };
    let (sub, ()) =
        within(async { tokio::join!(client.subscribe_from("a", "t", point), server) }).await;
    let mut sub = sub.expect("subscribed");
    assert_eq!(next_seq(&mut sub).await, (EPOCH, 7));
}

#[tokio::test]
async fn message_before_the_announced_discontinuity_is_a_protocol_error() {
    let (client, mut peer) = pair().await;
    let server = async {
        let subscribe = peer.expect_subscribe().await;
        peer.sub_ok(&subscribe, EPOCH, 9).await;
        peer.message(subscribe.sub_id, 10, b"10").await;
    };
    let (sub, ()) =
        within(async { tokio::join!(client.subscribe_from("a", "t", ResumeFrom::Seq(3)), server) })
            .await;
    let mut sub = sub.expect("subscribed");
    match within(sub.next_message()).await {
        Some(Err(Error::ConnectionLost(reason))) => assert!(reason.contains("gap"), "{reason}"),
        other => panic!("expected a protocol error, got {other:?}"),
    }
}

/// Accepts the client's next reconnection attempt and closes it before
/// `WELCOME`. Returns once the client has shown that it noticed the lost
/// connection and is reconnecting; the failed attempt sends it back to its
/// backoff.
pub(crate) async fn refuse_one_attempt(listener: &TcpListener) {
    let (attempt, _) = accept(listener).await;
    drop(attempt);
}

/// Subscribes on a fresh connection and delivers seq 1..=3.
pub(crate) async fn subscribed_with_three(
    listener: &TcpListener,
    config: ClientConfig,
) -> (
    corebus_client::Client,
    Peer,
    corebus_client::Subscription,
    u32,
) {
    let (client, mut peer) = connected_on(listener, config, DEFAULT_MAX_FRAME).await;
    let (sub, sub_id) =
        within(async { tokio::join!(client.subscribe("a", "t"), peer.accept_subscribe(0)) }).await;
    let mut sub = sub.expect("subscribed");
    for seq in 1..=3 {
        peer.message(sub_id, seq, b"m").await;
    }
    for seq in 1..=3 {
        assert_eq!(next_seq(&mut sub).await, (EPOCH, seq));
    }
    (client, peer, sub, sub_id)
}

#[tokio::test]
async fn reconnect_resumes_subscriptions_exactly() {
    let (listener, _) = listen().await;
    let (client, mut peer, mut sub, sub_id) = subscribed_with_three(&listener, fast()).await;
    let pending = client
        .start_publish("a", "t", "in flight")
        .await
        .expect("queued");
    peer.expect_publish().await;
    // Seq 4 is on the wire when the connection drops; the client got it.
    peer.message(sub_id, 4, b"m").await;
    drop(peer);

    let err = within(pending).await.expect_err("the connection dropped");
    assert!(matches!(err, Error::ConnectionLost(_)), "{err:?}");
    // A publish made during the outage waits for the new connection.
    let later = tokio::spawn({
        let client = client.clone();
        async move { client.publish("a", "t", "after").await }
    });

    let mut peer = accept_welcomed(&listener, 1).await;
    let subscribe = peer.expect_subscribe().await;
    assert_eq!(subscribe.sub_id, sub_id, "same subscription id");
    assert_eq!(
        subscribe.resume,
        Some(ResumePoint {
            epoch: EPOCH,
            next_seq: 5
        })
    );
    peer.sub_ok(&subscribe, EPOCH, 4).await;
    for seq in 5..=6 {
        peer.message(sub_id, seq, b"m").await;
    }
    let publish = peer.expect_publish().await;
    assert_eq!(&publish.body.payload()[..], b"after");
    peer.ack(publish.request_id, 7).await;
    assert_eq!(within(later).await.expect("joins").expect("acked"), 7);

    for seq in 4..=6 {
        assert_eq!(
            next_seq(&mut sub).await,
            (EPOCH, seq),
            "no gap, no duplicate"
        );
    }
    assert_eq!(client.shard(), 1, "the new connection's shard");
}

#[tokio::test]
async fn resume_outside_the_ring_or_epoch_reports_one_discontinuity() {
    let (listener, _) = listen().await;
    let (_client, peer, mut sub, sub_id) = subscribed_with_three(&listener, fast()).await;
    drop(peer);

    // Seq 4..=9 fell out of the broker's ring during the outage.
    let mut peer = accept_welcomed(&listener, 0).await;
    let subscribe = peer.expect_subscribe().await;
    peer.sub_ok(&subscribe, EPOCH, 9).await;
    peer.discontinuity(sub_id, EPOCH, 3, 10).await;
    peer.message(sub_id, 10, b"m").await;
    assert_eq!(
        next_item(&mut sub).await.expect("item").expect("ok"),
        gap(EPOCH, 3, 10)
    );
    assert_eq!(next_seq(&mut sub).await, (EPOCH, 10));
    drop(peer);

    // The broker restarted: a new epoch, its history starts again at 1.
    const NEW: u64 = 0xbeef;
    let mut peer = accept_welcomed(&listener, 0).await;
    let subscribe = peer.expect_subscribe().await;
    assert_eq!(
        subscribe.resume,
        Some(ResumePoint {
            epoch: EPOCH,
            next_seq: 11
        })
    );
    peer.sub_ok(&subscribe, NEW, 0).await;
    peer.discontinuity(sub_id, NEW, 10, 1).await;
    peer.message_in(sub_id, NEW, 1, b"m").await;
    assert_eq!(
        next_item(&mut sub).await.expect("item").expect("ok"),
        gap(NEW, 10, 1)
    );
    assert_eq!(next_seq(&mut sub).await, (NEW, 1));
    assert_eq!((sub.epoch(), sub.last_seq()), (NEW, 1));
}

#[tokio::test]
async fn cut_before_the_announced_discontinuity_resumes_from_the_same_point() {
    let (listener, _) = listen().await;
    let (_client, peer, mut sub, sub_id) = subscribed_with_three(&listener, fast()).await;
    drop(peer);
    let mut peer = accept_welcomed(&listener, 0).await;
    let subscribe = peer.expect_subscribe().await;
    peer.sub_ok(&subscribe, EPOCH, 9).await;
    drop(peer);
    let mut peer = accept_welcomed(&listener, 0).await;
    let subscribe = peer.expect_subscribe().await;
    assert_eq!(subscribe.resume.map(|point| point.next_seq), Some(4));
    peer.sub_ok(&subscribe, EPOCH, 3).await;
    peer.message(sub_id, 4, b"m").await;
    assert_eq!(next_seq(&mut sub).await, (EPOCH, 4));
}

#[tokio::test]
async fn fatal_error_from_the_server_reconnects() {
    let (listener, _) = listen().await;
    let (client, mut peer, mut sub, sub_id) = subscribed_with_three(&listener, fast()).await;
    peer.send(Frame::Error(ErrorFrame::new(
        0,
        ErrorCode::IdleTimeout,
        true,
        "silent for too long",
    )))
    .await;
    let mut peer = accept_welcomed(&listener, 2).await;
    let subscribe = peer.expect_subscribe().await;
    peer.sub_ok(&subscribe, EPOCH, 3).await;
    peer.message(sub_id, 4, b"m").await;
    assert_eq!(next_seq(&mut sub).await, (EPOCH, 4));
    assert_eq!(client.shard(), 2);
}

#[tokio::test]
async fn refused_resubscription_ends_only_that_subscription() {
    let (listener, _) = listen().await;
    let (client, peer, mut sub, _) = subscribed_with_three(&listener, fast()).await;
    drop(peer);
    let mut peer = accept_welcomed(&listener, 0).await;
    let subscribe = peer.expect_subscribe().await;
    peer.send(Frame::Error(ErrorFrame::new(
        subscribe.request_id,
        ErrorCode::TooManySubscriptions,
        false,
        "limit reached",
    )))
    .await;
    let end = next_item(&mut sub).await.expect("an error item");
    assert_eq!(
        end.expect_err("ends").server_code(),
        Some(ErrorCode::TooManySubscriptions)
    );
    assert!(next_item(&mut sub).await.is_none());
    let server = async {
        let publish = peer.expect_publish().await;
        peer.ack(publish.request_id, 1).await;
    };
    let (seq, ()) = within(async { tokio::join!(client.publish("a", "t", "x"), server) }).await;
    assert_eq!(seq.expect("the client is fine"), 1);
}

#[tokio::test]
async fn heartbeat_pings_then_times_out_and_reconnects() {
    let (listener, _) = listen().await;
    let config = ClientConfig {
        heartbeat_interval: Duration::from_millis(50),
        heartbeat_timeout: Duration::from_millis(300),
        ..fast()
    };
    let (_client, mut peer, mut sub, sub_id) = subscribed_with_three(&listener, config).await;
    // A PING after the interval of silence; it goes unanswered.
    assert!(matches!(peer.expect().await, Frame::Ping(_)));
    let started = tokio::time::Instant::now();
    // Then the client gives up on this connection and opens another.
    let mut next = accept_welcomed(&listener, 0).await;
    assert!(
        started.elapsed() >= Duration::from_millis(150),
        "{:?}",
        started.elapsed()
    );
    assert!(peer.recv().await.is_none(), "the old connection was closed");
    let subscribe = next.expect_subscribe().await;
    next.sub_ok(&subscribe, EPOCH, 3).await;
    next.message(sub_id, 4, b"m").await;
    assert_eq!(next_seq(&mut sub).await, (EPOCH, 4));
    // A server that answers keeps the connection alive past the timeout.
    let deadline = tokio::time::Instant::now() + Duration::from_millis(700);
    while let Ok(frame) = tokio::time::timeout_at(deadline, next.expect()).await {
        match frame {
            Frame::Ping(nonce) => next.send(Frame::Pong(nonce)).await,
            other => panic!("expected PING, got {other:?}"),
        }
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(100), listener.accept())
            .await
            .is_err(),
        "no reconnection while the server answers"
    );
}

#[tokio::test]
async fn unanswered_resubscription_replaces_the_connection() {
    let (listener, _) = listen().await;
    let config = ClientConfig {
        request_timeout: Duration::from_millis(300),
        ..fast()
    };
    let (_client, peer, mut sub, sub_id) = subscribed_with_three(&listener, config).await;
    drop(peer);
    // The broker is back but never answers the resubscription (its
    // heartbeats would not notice: the connection is not silent for long).
    let mut mute = accept_welcomed(&listener, 0).await;
    let subscribe = mute.expect_subscribe().await;
    assert_eq!(subscribe.sub_id, sub_id);
    let started = tokio::time::Instant::now();
    let mut next = accept_welcomed(&listener, 0).await;
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "{:?}",
        started.elapsed()
    );
    assert!(
        mute.recv().await.is_none(),
        "the mute connection was closed"
    );
    let subscribe = next.expect_subscribe().await;
    assert_eq!(
        subscribe.resume,
        Some(ResumePoint {
            epoch: EPOCH,
            next_seq: 4
        })
    );
    next.sub_ok(&subscribe, EPOCH, 3).await;
    next.message(sub_id, 4, b"m").await;
    assert_eq!(next_seq(&mut sub).await, (EPOCH, 4), "the stream goes on");
    // Answered, the new connection stays past the timeout.
    assert!(
        tokio::time::timeout(Duration::from_millis(500), listener.accept())
            .await
            .is_err(),
        "no reconnection once the resubscription is answered"
    );
}

#[tokio::test]
async fn reconnect_gives_up_after_max_attempts() {
    let (listener, _) = listen().await;
    let config = ClientConfig {
        reconnect_max_attempts: Some(3),
        ..fast()
    };
    let (client, peer, mut sub, _) = subscribed_with_three(&listener, config).await;
    drop(listener);
    drop(peer);
    match next_item(&mut sub).await {
        Some(Err(Error::ConnectionLost(reason))) => {
            assert!(
                reason.contains("gave up reconnecting after 3 attempts"),
                "{reason}"
            )
        }
        other => panic!("expected ConnectionLost, got {other:?}"),
    }
    assert!(next_item(&mut sub).await.is_none());
    let later = within(client.publish("a", "t", "x")).await;
    assert!(matches!(later, Err(Error::ConnectionLost(_))), "{later:?}");
}

#[tokio::test]
async fn calls_while_reconnecting_wait_then_fail() {
    let (listener, _) = listen().await;
    let config = ClientConfig {
        request_timeout: Duration::from_millis(200),
        ..fast()
    };
    let (client, peer, _sub, _) = subscribed_with_three(&listener, config).await;
    drop(peer);
    refuse_one_attempt(&listener).await;
    drop(listener);
    let started = tokio::time::Instant::now();
    let err = within(client.publish("a", "t", "x"))
        .await
        .expect_err("no connection");
    assert!(started.elapsed() >= Duration::from_millis(150));
    match err {
        Error::ConnectionLost(reason) => assert!(reason.contains("not reconnected"), "{reason}"),
        other => panic!("expected ConnectionLost, got {other:?}"),
    }
    let err = within(client.subscribe("a", "u"))
        .await
        .expect_err("no connection");
    assert!(matches!(err, Error::ConnectionLost(_)), "{err:?}");
}

#[tokio::test]
async fn close_stops_reconnecting() {
    // A real delay, short enough to watch it pass: a client that went on
    // reconnecting after close() would connect within it. (Under a paused
    // clock the runtime, idle while the test watches, would jump past it.)
    const DELAY: Duration = Duration::from_millis(200);
    let (listener, _) = listen().await;
    let config = ClientConfig {
        reconnect_initial_delay: DELAY,
        reconnect_max_delay: DELAY,
        ..ClientConfig::default()
    };
    let (client, peer, mut sub, _) = subscribed_with_three(&listener, config).await;
    drop(peer);
    // Closed while it reconnects: its attempt waits for WELCOME, so no other
    // attempt is under way.
    let (attempt, _) = accept(&listener).await;
    within(client.close()).await.expect("closed at once");
    drop(attempt);
    assert!(matches!(
        next_item(&mut sub).await,
        Some(Err(Error::Closed))
    ));
    assert!(
        tokio::time::timeout(DELAY + Duration::from_secs(1), listener.accept())
            .await
            .is_err(),
        "no reconnection after close"
    );
}

#[tokio::test]
async fn handshake_refused_on_reconnect_ends_the_client() {
    let (listener, _) = listen().await;
    let (_client, peer, mut sub, _) = subscribed_with_three(&listener, fast()).await;
    drop(peer);
    let (mut peer, _) = accept(&listener).await;
    peer.send(Frame::Error(ErrorFrame::new(
        0,
        ErrorCode::UnsupportedVersion,
        true,
        "go away",
    )))
    .await;
    match next_item(&mut sub).await {
        Some(Err(Error::ConnectionLost(reason))) => {
            assert!(reason.contains("unsupported_version"), "{reason}")
        }
        other => panic!("expected ConnectionLost, got {other:?}"),
    }
}

#[tokio::test]
async fn unsubscribe_and_drop_during_an_outage_are_not_resubscribed() {
    let (listener, _) = listen().await;
    let (client, mut peer) = connected_on(&listener, fast(), DEFAULT_MAX_FRAME).await;
    let (kept, kept_id) =
        within(async { tokio::join!(client.subscribe("a", "kept"), peer.accept_subscribe(0)) })
            .await;
    let (gone, _) =
        within(async { tokio::join!(client.subscribe("a", "gone"), peer.accept_subscribe(0)) })
            .await;
    let (dropped, _) =
        within(async { tokio::join!(client.subscribe("a", "dropped"), peer.accept_subscribe(0)) })
            .await;
    let _kept = kept.expect("subscribed");
    drop(peer);
    // The client is reconnecting: the unsubscribe below has no connection.
    refuse_one_attempt(&listener).await;
    within(gone.expect("subscribed").unsubscribe())
        .await
        .expect("nothing to tell the broker");
    drop(dropped.expect("subscribed"));
    let mut peer = accept_welcomed(&listener, 0).await;
    let subscribe = peer.expect_subscribe().await;
    assert_eq!(subscribe.sub_id, kept_id);
    assert_eq!(subscribe.topic.topic(), "kept");
    peer.sub_ok(&subscribe, EPOCH, 0).await;
    peer.send(Frame::Ping(5)).await;
    assert_eq!(peer.expect().await, Frame::Pong(5), "no other SUBSCRIBE");
}
