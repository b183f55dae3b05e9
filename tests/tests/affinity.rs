//! Shard-aware connections: the broker's listeners steer a connection by its
//! source port, and a client with `topic_affinity` uses that to land on the
//! shard that owns its topic. Every wait is bounded.

use std::time::Duration;

use corebus_client::{Client, ClientConfig, TopicAffinity};
use corebus_net::routing::shard_of_source_port;
use corebus_tests::{topic_owned_by, Broker, RawConn};
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(30);

/// A raw connection from a free port at or after `start` that the broker
/// steers to `shard`.
async fn raw_from_port_leading_to(broker: &Broker, shard: u16, start: u16) -> (u16, RawConn) {
    let shards = broker.shards() as u16;
    let ports = (start..60_000).filter(|&port| shard_of_source_port(port, shards) == shard);
    for port in ports.take(200) {
        if let Ok(raw) = RawConn::connect_from(broker.addr(), port).await {
            return (port, raw);
        }
    }
    panic!("no free source port for shard {shard}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_lands_on_the_shard_its_source_port_names() {
    let broker = Broker::start(4);
    for round in 0..2u16 {
        for shard in 0..4u16 {
            let start = 40_000 + round * 5_000 + shard * 500;
            let (port, mut raw) = raw_from_port_leading_to(&broker, shard, start).await;
            let welcome = timeout(WAIT, raw.hello()).await.expect("WELCOME in time");
            assert_eq!(welcome.shard_count, 4);
            assert_eq!(
                welcome.shard, shard,
                "a connection from port {port} belongs on shard {shard}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordinary_connections_still_spread_over_every_shard() {
    // Clients that choose nothing get the kernel's ephemeral ports (even ones
    // for connect): the steering must not pile them onto some shards.
    let broker = Broker::start(4);
    let mut per_shard = [0usize; 4];
    for _ in 0..64 {
        let mut raw = RawConn::connect(broker.addr()).await;
        let welcome = timeout(WAIT, raw.hello()).await.expect("WELCOME in time");
        per_shard[usize::from(welcome.shard)] += 1;
    }
    assert!(
        per_shard.iter().all(|&count| count >= 4),
        "64 connections over 4 shards: {per_shard:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_with_topic_affinity_sits_on_the_topics_owner_and_works() {
    let broker = Broker::start(4);
    for owner in 0..4u16 {
        let topic = topic_owned_by(owner, 4, &format!("affinity-{owner}"));
        let config = ClientConfig {
            topic_affinity: Some(TopicAffinity::new("test", topic.as_str())),
            ..ClientConfig::default()
        };
        assert_eq!(config.topic_affinity.as_ref().unwrap().owner(4), owner);
        let subscriber = timeout(WAIT, Client::connect_with(broker.addr(), config.clone()))
            .await
            .expect("connects in time")
            .expect("connects");
        let publisher = timeout(WAIT, Client::connect_with(broker.addr(), config))
            .await
            .expect("connects in time")
            .expect("connects");
        assert_eq!(subscriber.shard(), owner);
        assert_eq!(publisher.shard(), owner);

        let mut sub = subscriber
            .subscribe("test", &topic)
            .await
            .expect("subscribes");
        for n in 0..3u8 {
            publisher
                .publish("test", &topic, vec![n])
                .await
                .expect("published");
        }
        for n in 0..3u8 {
            let message = timeout(WAIT, sub.next_message())
                .await
                .expect("message in time")
                .expect("stream open")
                .expect("no error");
            assert_eq!(message.seq, u64::from(n) + 1);
            assert_eq!(&message.payload[..], &[n]);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn affinity_on_a_one_shard_broker_connects_as_usual() {
    let broker = Broker::start(1);
    let config = ClientConfig {
        topic_affinity: Some(TopicAffinity::new("test", "anything")),
        ..ClientConfig::default()
    };
    let client = timeout(WAIT, Client::connect_with(broker.addr(), config))
        .await
        .expect("connects in time")
        .expect("connects");
    assert_eq!(client.shard(), 0);
    assert_eq!(client.shard_count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_connects_from_its_local_address_with_or_without_affinity() {
    // A listener that only records where each connection came from (the
    // client's handshake then times out: no WELCOME comes).
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address").to_string();
    for (local, affinity) in [
        ("127.0.0.9", None),
        ("127.0.0.10", Some(TopicAffinity::new("ns", "t"))),
    ] {
        let config = ClientConfig {
            local_address: Some(local.parse().expect("an address")),
            topic_affinity: affinity,
            connect_timeout: Duration::from_millis(300),
            reconnect: false,
            ..ClientConfig::default()
        };
        let connecting = tokio::spawn({
            let addr = addr.clone();
            async move { Client::connect_with(addr.as_str(), config).await }
        });
        let (_socket, peer) = timeout(WAIT, listener.accept())
            .await
            .expect("a connection in time")
            .expect("accepted");
        assert_eq!(peer.ip().to_string(), local);
        assert!(connecting.await.expect("ran").is_err(), "no WELCOME came");
    }
}
