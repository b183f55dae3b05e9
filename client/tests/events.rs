//! The connection's event stream (`Client::connection_events`) through a
//! loss, failed attempts, a reconnection with a gap and a refusal, and the
//! client's end, against the scripted fake server.

use crate::common;
use crate::resume::{fast, refuse_one_attempt, subscribed_with_three};

use common::*;
use corebus_client::{ClientConfig, ConnectionEvent, ConnectionEvents, Discontinuity};
use corebus_net::{ErrorCode, ErrorFrame, Frame};

async fn next_event(events: &mut ConnectionEvents) -> Option<ConnectionEvent> {
    within(events.next()).await
}

#[tokio::test]
async fn a_loss_is_reported_through_to_the_resumed_subscriptions_and_their_gaps() {
    let (listener, addr) = listen().await;
    let (client, peer, _kept, kept_id) = subscribed_with_three(&listener, fast()).await;
    let (refused, refused_id) = within(async {
        let mut peer = peer;
        let (sub, sub_id) = tokio::join!(client.subscribe("a", "u"), peer.accept_subscribe(0));
        (sub.expect("subscribed"), (sub_id, peer))
    })
    .await;
    let (refused_id, peer) = refused_id;
    let mut events = client.connection_events();
    drop(peer);

    match next_event(&mut events).await {
        Some(ConnectionEvent::Disconnected {
            reason,
            reconnecting: true,
        }) => assert!(reason.contains("closed"), "{reason}"),
        other => panic!("expected Disconnected, got {other:?}"),
    }
    refuse_one_attempt(&listener).await;
    match next_event(&mut events).await {
        Some(ConnectionEvent::ReconnectFailed { attempt: 1, error }) => {
            assert!(error.contains("before WELCOME"), "{error}")
        }
        other => panic!("expected the first attempt's failure, got {other:?}"),
    }

    let mut peer = accept_welcomed(&listener, 0).await;
    assert_eq!(
        next_event(&mut events).await,
        Some(ConnectionEvent::Reconnected {
            server: addr.to_string(),
            attempts: 2
        })
    );
    // Both resubscriptions arrive, in either order: one resumes with a gap
    // (seq 4..=6 fell out of the ring), the other is refused.
    for _ in 0..2 {
        let subscribe = peer.expect_subscribe().await;
        if subscribe.sub_id == kept_id {
            peer.sub_ok(&subscribe, EPOCH, 6).await;
            peer.discontinuity(kept_id, EPOCH, 3, 7).await;
        } else {
            assert_eq!(subscribe.sub_id, refused_id);
            peer.send(Frame::Error(ErrorFrame::new(
                subscribe.request_id,
                ErrorCode::Forbidden,
                false,
                "not any more",
            )))
            .await;
        }
    }
    let mut seen = vec![
        next_event(&mut events).await.expect("an event"),
        next_event(&mut events).await.expect("an event"),
    ];
    seen.sort_by_key(|event| matches!(event, ConnectionEvent::Resumed { .. }));
    assert_eq!(
        seen,
        [
            ConnectionEvent::Discontinuity {
                namespace: "a".into(),
                topic: "t".into(),
                gap: Discontinuity {
                    epoch: EPOCH,
                    last_seq: 3,
                    next_seq: 7
                }
            },
            ConnectionEvent::Resumed {
                subscriptions: 1,
                refused: 1
            }
        ]
    );
    drop(refused);
    client.close().await.expect("closes");
    assert_eq!(
        next_event(&mut events).await,
        Some(ConnectionEvent::Ended {
            reason: "the client is closed".into()
        })
    );
    assert_eq!(next_event(&mut events).await, None, "the stream is over");
    assert_eq!(
        within(client_events_after_end(&listener)).await,
        None,
        "a stream asked for after the end is over at once"
    );
}

/// A client that ended before its stream was asked for.
async fn client_events_after_end(listener: &tokio::net::TcpListener) -> Option<ConnectionEvent> {
    let (client, _peer) = connected_on(listener, fast(), corebus_net::DEFAULT_MAX_FRAME).await;
    client.clone().close().await.expect("closes");
    client.connection_events().next().await
}

#[tokio::test]
async fn a_client_that_gives_up_reports_each_attempt_then_its_end() {
    let (listener, _) = listen().await;
    let config = ClientConfig {
        reconnect_max_attempts: Some(2),
        ..fast()
    };
    let (client, peer, _sub, _) = subscribed_with_three(&listener, config).await;
    let mut events = client.connection_events();
    drop(listener);
    drop(peer);
    assert!(matches!(
        next_event(&mut events).await,
        Some(ConnectionEvent::Disconnected {
            reconnecting: true,
            ..
        })
    ));
    for attempt in 1..=2 {
        match next_event(&mut events).await {
            Some(ConnectionEvent::ReconnectFailed { attempt: n, error }) if n == attempt => {
                assert!(error.contains("refused"), "{error}")
            }
            other => panic!("expected attempt {attempt}'s failure, got {other:?}"),
        }
    }
    match next_event(&mut events).await {
        Some(ConnectionEvent::Ended { reason }) => {
            assert!(
                reason.contains("gave up reconnecting after 2 attempts"),
                "{reason}"
            )
        }
        other => panic!("expected Ended, got {other:?}"),
    }
    assert_eq!(next_event(&mut events).await, None);
}

#[tokio::test]
async fn without_reconnection_a_loss_ends_the_client() {
    let (listener, _) = listen().await;
    let config = ClientConfig {
        reconnect: false,
        ..fast()
    };
    let (client, peer) = connected_on(&listener, config, corebus_net::DEFAULT_MAX_FRAME).await;
    let mut events = client.connection_events();
    let mut second = client.connection_events();
    drop(peer);
    for events in [&mut events, &mut second] {
        assert!(matches!(
            next_event(events).await,
            Some(ConnectionEvent::Disconnected {
                reconnecting: false,
                ..
            })
        ));
        assert!(matches!(
            next_event(events).await,
            Some(ConnectionEvent::Ended { .. })
        ));
    }
}
