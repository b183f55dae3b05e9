//! Delivery guarantees on the wire: epochs, resume from the replay ring,
//! eviction, and the slow-consumer `drop` policy's exact loss reports.

use std::time::Duration;

use corebus_net::{Body, Frame, Publish, ResumePoint, Subscribe, TopicKey};
use corebus_shards::{EngineConfig, RingLimits};
use corebus_tests::{topic_owned_by, Broker, RawConn};

fn key(topic: &str) -> TopicKey {
    TopicKey::from_strs("test", topic).expect("valid")
}

async fn publish(raw: &mut RawConn, topic: &TopicKey, request_id: u32, payload: Vec<u8>) -> u64 {
    raw.send(&Frame::Publish(Publish {
        request_id,
        ack: true,
        topic: topic.clone(),
        body: Body::plain(&payload),
    }))
    .await;
    match raw.recv().await {
        Some(Frame::PubAck(ack)) if ack.request_id == request_id => ack.seq,
        other => panic!("expected PUB_ACK, got {other:?}"),
    }
}

async fn subscribe(
    raw: &mut RawConn,
    topic: &TopicKey,
    sub_id: u32,
    resume: Option<ResumePoint>,
) -> (u64, u64) {
    raw.send(&Frame::Subscribe(Subscribe {
        request_id: sub_id,
        sub_id,
        resume,
        topic: topic.clone(),
    }))
    .await;
    match raw.recv().await {
        Some(Frame::SubOk(ok)) if ok.sub_id == sub_id => (ok.epoch, ok.start_after),
        other => panic!("expected SUB_OK, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_across_shards_replays_exactly_then_goes_live() {
    let broker = Broker::start(2);
    let topic = key(&topic_owned_by(0, 2, "resume"));
    let mut publisher = broker.raw_on(0).await;
    let mut first = broker.raw_on(1).await;
    let (epoch, start) = subscribe(&mut first, &topic, 1, None).await;
    assert_ne!(epoch, 0);
    assert_eq!(start, 0);
    for i in 1..=20u32 {
        publish(&mut publisher, &topic, i, i.to_be_bytes().to_vec()).await;
    }
    // Read up to seq 12, then "lose the connection".
    for seq in 1..=12 {
        assert!(
            matches!(first.recv().await, Some(Frame::Message(m)) if m.seq == seq && m.epoch == epoch)
        );
    }
    drop(first);
    let mut second = broker.raw_on(1).await;
    let (again, start) = subscribe(
        &mut second,
        &topic,
        1,
        Some(ResumePoint {
            epoch,
            next_seq: 13,
        }),
    )
    .await;
    assert_eq!((again, start), (epoch, 12));
    publish(&mut publisher, &topic, 21, 21u32.to_be_bytes().to_vec()).await;
    for seq in 13..=21u64 {
        match second.recv().await {
            Some(Frame::Message(m)) => {
                assert_eq!((m.seq, m.epoch), (seq, epoch));
                assert_eq!(&m.body.payload()[..], &(seq as u32).to_be_bytes());
            }
            other => panic!("expected MESSAGE {seq}, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn from_one_replays_history_of_a_topic_nobody_watched() {
    let broker = Broker::start(2);
    let topic = key("history");
    let mut publisher = broker.raw_on(0).await;
    for i in 1..=10 {
        publish(&mut publisher, &topic, i, vec![i as u8]).await;
    }
    let mut reader = broker.raw_on(1).await;
    let (_, start) = subscribe(
        &mut reader,
        &topic,
        1,
        Some(ResumePoint {
            epoch: 0,
            next_seq: 1,
        }),
    )
    .await;
    assert_eq!(start, 0);
    for seq in 1..=10 {
        assert!(matches!(reader.recv().await, Some(Frame::Message(m)) if m.seq == seq));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_older_than_the_ring_gets_one_exact_discontinuity() {
    let engine = EngineConfig {
        ring: RingLimits {
            max_messages: 5,
            max_bytes: 1 << 20,
        },
        ..EngineConfig::default()
    };
    let broker = Broker::start_with(2, engine);
    let topic = key(&topic_owned_by(1, 2, "short-ring"));
    let mut publisher = broker.raw_on(0).await;
    for i in 1..=30 {
        publish(&mut publisher, &topic, i, vec![1]).await;
    }
    let mut reader = broker.raw_on(0).await;
    let (epoch, start) = subscribe(
        &mut reader,
        &topic,
        3,
        Some(ResumePoint {
            epoch: 0,
            next_seq: 4,
        }),
    )
    .await;
    assert_eq!(start, 25);
    match reader.recv().await {
        Some(Frame::Discontinuity(gap)) => {
            assert_eq!(
                (gap.sub_id, gap.epoch, gap.last_seq, gap.next_seq),
                (3, epoch, 3, 26)
            );
        }
        other => panic!("expected DISCONTINUITY, got {other:?}"),
    }
    for seq in 26..=30 {
        assert!(matches!(reader.recv().await, Some(Frame::Message(m)) if m.seq == seq));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evicted_topic_resumes_into_a_new_epoch_with_a_discontinuity() {
    let engine = EngineConfig {
        topic_idle_evict_ms: 100,
        ..EngineConfig::default()
    };
    let broker = Broker::start_with(2, engine);
    let topic = key(&topic_owned_by(0, 2, "evict"));
    let mut client = broker.raw_on(1).await;
    let mut publisher = broker.raw_on(0).await;
    let (old_epoch, _) = subscribe(&mut client, &topic, 1, None).await;
    publish(&mut publisher, &topic, 2, b"a".to_vec()).await;
    assert!(matches!(client.recv().await, Some(Frame::Message(m)) if m.seq == 1));
    client
        .send(&Frame::Unsubscribe(corebus_net::Unsubscribe {
            request_id: 3,
            sub_id: 1,
        }))
        .await;
    assert!(matches!(client.recv().await, Some(Frame::UnsubOk(_))));
    // Idle for several eviction periods: the owner forgets the topic.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let (new_epoch, start) = subscribe(
        &mut client,
        &topic,
        4,
        Some(ResumePoint {
            epoch: old_epoch,
            next_seq: 2,
        }),
    )
    .await;
    assert_ne!(new_epoch, old_epoch, "a recreated topic has a new epoch");
    assert_eq!(start, 0);
    match client.recv().await {
        Some(Frame::Discontinuity(gap)) => {
            assert_eq!((gap.epoch, gap.last_seq, gap.next_seq), (new_epoch, 1, 1));
        }
        other => panic!("expected DISCONTINUITY, got {other:?}"),
    }
    assert_eq!(
        publish(&mut publisher, &topic, 5, b"b".to_vec()).await,
        1,
        "numbering restarted"
    );
    assert!(
        matches!(client.recv().await, Some(Frame::Message(m)) if m.seq == 1 && m.epoch == new_epoch)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_pings_idle_connections_and_closes_silent_ones() {
    let engine = EngineConfig {
        heartbeat_interval_ms: 100,
        heartbeat_timeout_ms: 400,
        ..EngineConfig::default()
    };
    let broker = Broker::start_with(1, engine);
    let mut silent = broker.raw_on(0).await;
    assert!(matches!(silent.recv().await, Some(Frame::Ping(_))));
    match silent.recv().await {
        Some(Frame::Error(e)) => {
            assert!(e.fatal);
            assert_eq!(e.code(), Some(corebus_net::ErrorCode::IdleTimeout));
        }
        other => panic!("expected idle_timeout, got {other:?}"),
    }
    silent.expect_closed().await;

    // A connection that answers pings stays up past the timeout.
    let mut alive = broker.raw_on(0).await;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(1000);
    while tokio::time::Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_millis(200), alive.recv()).await {
            Ok(Some(Frame::Ping(nonce))) => alive.send(&Frame::Pong(nonce)).await,
            Ok(other) => panic!("unexpected {other:?}"),
            Err(_) => {}
        }
    }
    alive.send(&Frame::Ping(77)).await;
    loop {
        match alive.recv().await {
            Some(Frame::Pong(77)) => break,
            Some(Frame::Ping(nonce)) => alive.send(&Frame::Pong(nonce)).await,
            other => panic!("connection should be alive, got {other:?}"),
        }
    }
}
