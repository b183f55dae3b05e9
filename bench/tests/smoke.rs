//! CI smoke test: an in-process corebus broker on a loopback port, and tiny
//! pair, fanout, many and latency runs through `corebus_bench::run`, the same
//! path the `corebus-bench` binary takes, the same shapes with the lean
//! generator (`--lean`), and many, latency and connections runs with
//! subscribers over the broker's WebSocket listener (`--subscribers-over
//! websocket`); and a tiny raw-baseline run through
//! the harness's own loopback relay. Seconds, not minutes; the comparison
//! with NATS and Redis (`bench/compare.sh`) is not part of CI.

use std::net::SocketAddr;

use corebus_bench::{RunOptions, Scenario, Target, Transport};
use corebus_shards::runtime::WebConfig;
use corebus_shards::{Origins, ServerConfig};

fn options(addr: SocketAddr, scenario: Scenario) -> RunOptions {
    let mut options = RunOptions::new(Target::Corebus, scenario);
    options.url = Some(addr.to_string());
    options.duration = 1.0;
    options.messages = Some(20_000);
    options
}

#[test]
fn tiny_runs_against_an_in_process_broker_lose_nothing() {
    let server = corebus_shards::start(ServerConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        shards: Some(2),
        web: Some(WebConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            origins: Origins::default(),
        }),
        ..ServerConfig::default()
    })
    .expect("broker starts (glommio needs `ulimit -l` of at least 512 KiB)");
    let addr = server.local_addr();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");

    let pair = options(addr, Scenario::Pair);
    let mut acked_pair = options(addr, Scenario::Pair);
    acked_pair.acks = true;
    let mut fanout = options(addr, Scenario::Fanout);
    fanout.subscribers = Some(4);
    let mut latency = options(addr, Scenario::Latency);
    latency.subscribers = Some(4);
    latency.duration = 0.5;
    latency.rate = 2_000;

    for options in [pair, acked_pair, fanout, latency] {
        let report = runtime
            .block_on(corebus_bench::run(&options))
            .unwrap_or_else(|err| panic!("{:?} run failed: {err}", options.scenario));
        print!("{}", report.table());
        assert_eq!(report.failure(), None, "{:?}", options.scenario);
        assert_eq!(report.lost, 0);
        assert!(report.published > 0);
        assert_eq!(report.delivered, report.expected);
        assert_eq!(
            report.expected,
            report.published * report.subscribers as u64,
            "one topic: every subscriber gets every message"
        );
        assert!(report.delivered_per_sec > 0.0);
        assert!(report.latency_us.p50 > 0.0);
        assert_eq!(report.acks, Some(options.acks));
    }

    // More topics than subscriber connections: each connection holds
    // several subscriptions and every topic has exactly one.
    let mut many = options(addr, Scenario::Many);
    many.publishers = Some(2);
    many.subscribers = Some(3);
    many.topics = Some(12);
    many.messages = Some(5_000);
    let report = runtime
        .block_on(corebus_bench::run(&many))
        .unwrap_or_else(|err| panic!("many run failed: {err}"));
    print!("{}", report.table());
    assert_eq!(report.failure(), None);
    assert!(report.published > 0);
    assert_eq!(
        report.delivered, report.published,
        "one subscription per topic"
    );

    // The lean generator: the same shapes, checked by sequence numbers.
    let mut lean_many = many.clone();
    lean_many.lean = true;
    let mut lean_fanout = options(addr, Scenario::Fanout);
    lean_fanout.subscribers = Some(4);
    lean_fanout.lean = true;
    for options in [lean_many, lean_fanout] {
        let report = runtime
            .block_on(corebus_bench::run(&options))
            .unwrap_or_else(|err| panic!("lean {:?} run failed: {err}", options.scenario));
        print!("{}", report.table());
        assert_eq!(report.failure(), None, "lean {:?}", options.scenario);
        assert_eq!(report.lean, Some(true));
        assert!(report.published > 0);
        assert_eq!(report.delivered, report.expected);
        assert_eq!(
            report.expected,
            report.published * (report.subscribers.max(report.topics) / report.topics) as u64,
        );
        assert!(report.delivered_per_sec > 0.0);
    }

    // Subscribers over WebSocket, publishers native: several subscribers
    // per topic, as in bench/compare_ws.sh.
    let ws_url = format!("ws://{}/v1/ws", server.web_addr().expect("a web listener"));
    let over_websocket = |scenario| {
        let mut options = options(addr, scenario);
        options.subscribers_over = Transport::Websocket;
        options.ws_url = Some(ws_url.clone());
        options.publishers = Some(1);
        options.subscribers = Some(12);
        options.topics = Some(4);
        options
    };
    let mut ws_latency = over_websocket(Scenario::Latency);
    ws_latency.duration = 0.5;
    ws_latency.rate = 2_000;
    let mut ws_idle = over_websocket(Scenario::Connections);
    ws_idle.topics = Some(12);
    for options in [over_websocket(Scenario::Many), ws_latency, ws_idle] {
        let report = runtime
            .block_on(corebus_bench::run(&options))
            .unwrap_or_else(|err| panic!("WebSocket {:?} run failed: {err}", options.scenario));
        print!("{}", report.table());
        assert_eq!(report.failure(), None, "WebSocket {:?}", options.scenario);
        assert_eq!(report.subscribers_over, Some(Transport::Websocket));
        assert!(report.published > 0);
        assert_eq!(report.delivered, report.expected);
        assert_eq!(
            report.expected,
            report.published * (report.subscribers / report.topics) as u64,
            "every subscriber of a topic gets each of its messages"
        );
    }

    runtime.shutdown_background();
    server.stop();
}

#[test]
fn raw_baseline_relays_every_message_over_loopback() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mut options = RunOptions::new(Target::Raw, Scenario::Pair);
    options.size = 16 * 1024;
    options.duration = 1.0;
    options.messages = Some(5_000);
    let report = runtime
        .block_on(corebus_bench::run(&options))
        .unwrap_or_else(|err| panic!("raw run failed: {err}"));
    print!("{}", report.table());
    assert_eq!(report.failure(), None);
    assert!(report.published > 0);
    assert_eq!(report.delivered, report.published);
    assert!(report.delivered_mb_per_sec > 0.0);
    runtime.shutdown_background();
}

#[test]
fn non_loopback_brokers_are_refused() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mut options = RunOptions::new(Target::Nats, Scenario::Pair);
    options.url = Some("nats://192.0.2.1:4222".into());
    let err = runtime
        .block_on(corebus_bench::run(&options))
        .expect_err("a non-loopback address is refused before any connection");
    assert!(err.to_string().contains("loopback"), "{err}");
}
