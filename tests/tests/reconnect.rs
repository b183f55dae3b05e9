//! The client's reconnection and resume against a real broker, through a
//! proxy that cuts the subscriber's connection: every message exactly once
//! and in order while outages stay inside the broker's replay ring, and one
//! exact discontinuity when an outage outlasts it.

use std::time::Duration;

use corebus_client::{Client, ClientConfig, Discontinuity, Event};
use corebus_shards::{EngineConfig, RingLimits};
use corebus_tests::{next_event, topic_owned_by, Broker, Proxy};
use tokio::time::{sleep, timeout, Instant};

/// Upper bound on any single wait in these tests.
const WAIT: Duration = Duration::from_secs(10);

/// SplitMix64, seeded: the cut points are the same on every run.
struct Rng(u64);

impl Rng {
    fn below(&mut self, bound: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)) % bound
    }
}

fn broker_with_ring(max_messages: usize) -> Broker {
    Broker::start_with(
        2,
        EngineConfig {
            ring: RingLimits {
                max_messages,
                max_bytes: 64 << 20,
            },
            ..EngineConfig::default()
        },
    )
}

/// A subscriber client that comes back quickly after a cut.
async fn subscriber(proxy: &Proxy) -> Client {
    let config = ClientConfig {
        client_name: "reconnect-test".into(),
        reconnect_initial_delay: Duration::from_millis(5),
        reconnect_max_delay: Duration::from_millis(50),
        ..ClientConfig::default()
    };
    Client::connect_with(proxy.addr(), config)
        .await
        .expect("connects through the proxy")
}

/// Checks that the next message is `seq` carrying counter `seq`.
fn check_message(event: Event, epoch: u64, seq: u64) {
    match event {
        Event::Message(message) => {
            assert_eq!(
                (message.epoch, message.seq),
                (epoch, seq),
                "gap or duplicate"
            );
            assert_eq!(
                &message.payload[..],
                &seq.to_be_bytes(),
                "payload of seq {seq}"
            );
        }
        Event::Discontinuity(gap) => panic!("unexpected {gap:?} while expecting seq {seq}"),
    }
}

/// Publishes counters `from..=to` (payload = counter, which is also the
/// sequence number on a fresh topic), `batch` at a time with a pause between
/// batches; checks every acknowledgement.
async fn publish_range(
    publisher: &Client,
    topic: &str,
    from: u64,
    to: u64,
    batch: u64,
    pause: Duration,
) {
    let mut next = from;
    while next <= to {
        let end = (next + batch - 1).min(to);
        let mut acks = Vec::new();
        for counter in next..=end {
            acks.push(
                publisher
                    .start_publish("test", topic, counter.to_be_bytes().to_vec())
                    .await
                    .expect("publish queued"),
            );
        }
        for (counter, ack) in (next..=end).zip(acks) {
            let seq = timeout(WAIT, ack)
                .await
                .expect("ack in time")
                .expect("acked");
            assert_eq!(seq, counter, "the publisher is the topic's only writer");
        }
        next = end + 1;
        sleep(pause).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cuts_shorter_than_the_ring_lose_and_repeat_nothing() {
    const TOTAL: u64 = 20_000;
    const CUTS: usize = 10;
    let started = Instant::now();
    // The ring holds everything, so every outage is inside the replay window.
    let broker = broker_with_ring(100_000);
    let proxy = Proxy::start(broker.addr()).await;
    let topic = topic_owned_by(1, broker.shards(), "cuts");
    let client = subscriber(&proxy).await;
    let mut sub = client.subscribe("test", &topic).await.expect("subscribed");
    assert_eq!(sub.start_after(), 0);
    let epoch = sub.epoch();

    let publisher = Client::connect(broker.addr())
        .await
        .expect("publisher connects");
    let publishing = tokio::spawn({
        let topic = topic.clone();
        async move {
            publish_range(&publisher, &topic, 1, TOTAL, 250, Duration::from_millis(5)).await;
            publisher
        }
    });

    let cutter = tokio::spawn(async move {
        let mut rng = Rng(0x5eed_c0de);
        let mut open_at_cut = Vec::new();
        for _ in 0..CUTS {
            sleep(Duration::from_millis(20 + rng.below(60))).await;
            open_at_cut.push(proxy.cut());
        }
        (proxy, open_at_cut)
    });

    for seq in 1..=TOTAL {
        check_message(next_event(&mut sub).await, epoch, seq);
    }
    let (proxy, open_at_cut) = timeout(WAIT, cutter)
        .await
        .expect("cutter ends")
        .expect("cutter ok");
    let publisher = timeout(WAIT, publishing)
        .await
        .expect("publisher ends")
        .expect("publisher ok");
    assert_eq!((sub.epoch(), sub.last_seq()), (epoch, TOTAL));

    // The cuts really cut the subscriber, and it really came back each time.
    let cut_live = open_at_cut.iter().filter(|open| **open > 0).count();
    assert!(
        cut_live >= CUTS / 2,
        "cuts that hit a connection: {open_at_cut:?}"
    );
    assert!(
        proxy.accepted() > cut_live,
        "reconnections: {}",
        proxy.accepted()
    );

    // Still live after the last cut.
    let extra = TOTAL + 1;
    publish_range(&publisher, &topic, extra, extra, 1, Duration::ZERO).await;
    check_message(next_event(&mut sub).await, epoch, extra);
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_longer_than_the_ring_reports_one_exact_discontinuity() {
    const RING: usize = 100;
    let broker = broker_with_ring(RING);
    let proxy = Proxy::start(broker.addr()).await;
    let topic = topic_owned_by(0, broker.shards(), "outage");
    let client = subscriber(&proxy).await;
    let mut sub = client.subscribe("test", &topic).await.expect("subscribed");
    let epoch = sub.epoch();
    let publisher = Client::connect(broker.addr())
        .await
        .expect("publisher connects");

    publish_range(&publisher, &topic, 1, 50, 50, Duration::ZERO).await;
    for seq in 1..=50 {
        check_message(next_event(&mut sub).await, epoch, seq);
    }

    // The outage: the subscriber cannot come back while 250 messages, more
    // than the ring holds, are published.
    proxy.refuse(true);
    assert_eq!(proxy.cut(), 1, "the subscriber's connection");
    let accepted = proxy.accepted();
    publish_range(&publisher, &topic, 51, 300, 50, Duration::ZERO).await;
    // The client has tried to come back and been turned away.
    let deadline = Instant::now() + WAIT;
    while proxy.refused() == 0 {
        assert!(Instant::now() < deadline, "no reconnection attempt");
        sleep(Duration::from_millis(5)).await;
    }
    proxy.refuse(false);

    // Ring = 201..=300: one report of 51..=200, then the ring, then live.
    match next_event(&mut sub).await {
        Event::Discontinuity(gap) => assert_eq!(
            gap,
            Discontinuity {
                epoch,
                last_seq: 50,
                next_seq: 201
            }
        ),
        Event::Message(message) => panic!("expected a discontinuity, got seq {}", message.seq),
    }
    assert_eq!((sub.epoch(), sub.last_seq()), (epoch, 200));
    assert!(proxy.accepted() > accepted, "the client reconnected");
    let live = tokio::spawn({
        let topic = topic.clone();
        async move {
            publish_range(&publisher, &topic, 301, 350, 10, Duration::from_millis(1)).await;
            publisher
        }
    });
    for seq in 201..=350 {
        check_message(next_event(&mut sub).await, epoch, seq);
    }
    let publisher = timeout(WAIT, live)
        .await
        .expect("publisher ends")
        .expect("publisher ok");

    // Nothing else: no second report, no duplicate. The fence: one more
    // message, published after every other, must be the very next event.
    publish_range(&publisher, &topic, 351, 351, 1, Duration::ZERO).await;
    check_message(next_event(&mut sub).await, epoch, 351);
}
