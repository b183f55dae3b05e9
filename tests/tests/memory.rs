//! The topic memory budget end to end: a client naming a new topic with
//! every publish cannot grow the broker past its budget, and subscribers of
//! other topics lose nothing meanwhile.

use std::time::{Duration, Instant};

use corebus_client::{Client, Event};
use corebus_shards::EngineConfig;
use corebus_tests::{next_event, Broker};

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_one_off_topics_stays_within_the_topic_memory_budget() {
    let budget = 4 << 20;
    let broker = Broker::start_with(
        2,
        EngineConfig {
            topic_memory_bytes: budget,
            heartbeat_interval_ms: 200,
            ..EngineConfig::default()
        },
    );
    let subscriber = Client::connect(broker.addr()).await.expect("connects");
    let mut steady = subscriber
        .subscribe("test", "steady")
        .await
        .expect("subscribes");
    let publisher = Client::connect(broker.addr()).await.expect("connects");
    let payload = vec![7u8; 200];
    // About 25 MB of topic state and rings without a budget.
    let (rounds, per_round) = (30u64, 1_000u64);
    for round in 0..rounds {
        let mut acks = Vec::with_capacity(per_round as usize + 1);
        for i in 0..per_round {
            let topic = format!("once-{round}-{i}");
            acks.push(
                publisher
                    .start_publish("test", &topic, payload.clone())
                    .await
                    .expect("queued"),
            );
        }
        let seq = publisher
            .publish("test", "steady", round.to_be_bytes().to_vec())
            .await
            .expect("acknowledged");
        assert_eq!(seq, round + 1);
        for ack in acks {
            ack.await.expect("acknowledged");
        }
    }
    // The subscriber of another topic got every message, in order, no gap.
    for round in 0..rounds {
        let event = next_event(&mut steady).await;
        match event {
            Event::Message(message) => assert_eq!(message.seq, round + 1),
            other => panic!("expected message {}, got {other:?}", round + 1),
        }
    }
    // Each shard holds at most its half of the budget once its metrics
    // catch up (they are published on the maintenance tick).
    let deadline = Instant::now() + WAIT;
    loop {
        let metrics = broker.metrics();
        let evicted: u64 = metrics
            .iter()
            .map(|m| m.stats.topics_evicted_for_memory)
            .sum();
        let sequenced: u64 = metrics.iter().map(|m| m.stats.messages_sequenced).sum();
        if sequenced == rounds * (per_round + 1) {
            for shard in &metrics {
                assert!(
                    shard.topic_memory as usize <= budget / 2,
                    "shard {} holds {} bytes, over {}",
                    shard.shard,
                    shard.topic_memory,
                    budget / 2
                );
            }
            assert!(evicted > 10_000, "only {evicted} topics evicted");
            let live: u64 = metrics.iter().map(|m| m.owned_topics).sum();
            assert!(live < 10_000, "{live} topic states still held");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "metrics never caught up: {metrics:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
