//! The goal checks on made-up runs: each goal met, missed, and not judged.

use super::*;
use crate::options::RunOptions;

fn run(target: Target, scenario: Scenario, size: usize, per_sec: f64) -> Report {
    let mut options = RunOptions::new(target, scenario);
    options.size = size;
    let plan = options.plan().expect("valid");
    let mut report = Report::for_plan(&plan);
    report.delivered = 100;
    report.expected = 100;
    report.delivered_per_sec = per_sec;
    report.delivered_mb_per_sec = per_sec * size as f64 / 1e6;
    report
}

fn with_shards(mut report: Report, shards: usize) -> Report {
    report.broker_shards = Some(shards);
    report
}

fn table(runs: &[Report]) -> String {
    let mut out = String::new();
    markdown(&mut out, runs);
    out
}

#[test]
fn throughput_needs_twice_nats_and_more_than_redis() {
    let text = table(&[
        run(Target::Corebus, Scenario::Pair, 128, 2_000_000.0),
        run(Target::Nats, Scenario::Pair, 128, 1_000_000.0),
        run(Target::Redis, Scenario::Pair, 128, 2_500_000.0),
    ]);
    assert!(
        text.contains("| 1 | pair, 128 B: delivered msg/s | 2.00M msg/s | NATS 1.00M msg/s | 2.00× | ≥ 2× | **met** |"),
        "{text}"
    );
    assert!(
        text.contains("| Redis 2.50M msg/s | 0.80× | > 1× | not met |"),
        "{text}"
    );
    assert!(text.contains("1 of 2 judged goals met"), "{text}");
}

#[test]
fn acked_runs_are_shown_against_the_same_references_but_not_judged() {
    let mut acked = run(Target::Corebus, Scenario::Many, 128, 300_000.0);
    acked.acks = Some(true);
    let text = table(&[
        run(Target::Corebus, Scenario::Many, 128, 900_000.0),
        acked,
        run(Target::Nats, Scenario::Many, 128, 400_000.0),
        run(Target::Redis, Scenario::Many, 128, 250_000.0),
    ]);
    assert!(
        text.contains("| 1 | many 16→64 over 1024 topics, 128 B: delivered msg/s | 900.0k msg/s | NATS 400.0k msg/s | 2.25× | ≥ 2× | **met** |"),
        "{text}"
    );
    assert!(
        text.contains("| 1 | many 16→64 over 1024 topics, 128 B, corebus publishes acked: delivered msg/s | 300.0k msg/s | NATS 400.0k msg/s | 0.75× | none (reference) | – |"),
        "{text}"
    );
    assert!(
        text.contains("corebus publishes acked: delivered msg/s | 300.0k msg/s | Redis 250.0k msg/s | 1.20× | none (reference) | – |"),
        "{text}"
    );
    assert!(text.contains("2 of 2 judged goals met"), "{text}");
}

#[test]
fn runs_without_affinity_are_references_for_throughput_and_latency() {
    let mut scattered = run(Target::Corebus, Scenario::Pair, 128, 800_000.0);
    scattered.affinity = Some(false);
    let mut slow_tail = run(Target::Corebus, Scenario::Latency, 128, 10_000.0);
    slow_tail.affinity = Some(false);
    slow_tail.latency_us.p99 = 9_000.0;
    slow_tail.latency_us.p999 = 9_500.0;
    let mut nats_tail = run(Target::Nats, Scenario::Latency, 128, 10_000.0);
    nats_tail.latency_us.p99 = 5_000.0;
    nats_tail.latency_us.p999 = 6_000.0;
    let text = table(&[
        run(Target::Corebus, Scenario::Pair, 128, 1_200_000.0),
        scattered,
        run(Target::Nats, Scenario::Pair, 128, 500_000.0),
        run(Target::Redis, Scenario::Pair, 128, 300_000.0),
        slow_tail,
        nats_tail,
    ]);
    assert!(
        text.contains("| 1 | pair, 128 B, corebus without shard affinity: delivered msg/s | 800.0k msg/s | NATS 500.0k msg/s | 1.60× | none (reference) | – |"),
        "{text}"
    );
    assert!(
        text.contains("corebus without shard affinity: p99 | 9000 µs | NATS 5000 µs | 1.80× | none (reference) | – |"),
        "{text}"
    );
    assert!(text.contains("2 of 2 judged goals met"), "{text}");
}

#[test]
fn raw_fraction_and_scaling() {
    let text = table(&[
        with_shards(run(Target::Corebus, Scenario::Pair, 16384, 30_000.0), 2),
        run(Target::Raw, Scenario::Pair, 16384, 50_000.0),
        Report {
            broker_cpu_us_per_msg: Some(0.84),
            ..with_shards(run(Target::Corebus, Scenario::Many, 128, 900_000.0), 2)
        },
        Report {
            broker_cpu_us_per_msg: Some(0.8),
            ..with_shards(run(Target::Corebus, Scenario::Many, 128, 500_000.0), 1)
        },
    ]);
    assert!(
        text.contains("broker CPU per delivered message, 2 shards ÷ 1 shard | 0.84 µs | corebus, 1 shard 0.80 µs | 1.05× | none (reference) | – |"),
        "{text}"
    );
    assert!(
        text.contains("| 4 | pair, 16 KiB: delivered payload MB/s | 491.5 MB/s | raw loopback relay 819.2 MB/s | 60% | ≥ 50% | **met** |"),
        "{text}"
    );
    assert!(
        text.contains("2 shards ÷ 1 shard | 900.0k msg/s | corebus, 1 shard 500.0k msg/s | 1.80× | ≥ 1.6× | **met** |"),
        "{text}"
    );
    // The many row against NATS and Redis uses the 2-shard run.
    assert!(
        text.contains(
            "| 1 | many 16→64 over 1024 topics, 128 B: delivered msg/s | 900.0k msg/s | NATS – |"
        ),
        "{text}"
    );
}

#[test]
fn scaling_is_judged_on_the_lean_runs_when_there_are_any() {
    let many = |per_sec, shards, lean: bool| Report {
        lean: lean.then_some(true),
        ..with_shards(run(Target::Corebus, Scenario::Many, 128, per_sec), shards)
    };
    let text = table(&[
        run(Target::Nats, Scenario::Many, 128, 300_000.0),
        many(1_000_000.0, 2, false),
        many(950_000.0, 1, false),
        many(1_500_000.0, 2, true),
        many(1_000_000.0, 1, true),
    ]);
    // The main harness's runs are shown for reference only...
    assert!(
        text.contains("| 5 | many 16→64 over 1024 topics, 128 B: delivered msg/s, 2 shards ÷ 1 shard | 1.00M msg/s | corebus, 1 shard 950.0k msg/s | 1.05× | none (reference) | – |"),
        "{text}"
    );
    // ...the lean generator's carry the goal...
    assert!(
        text.contains("| 5 | many 16→64 over 1024 topics, 128 B, lean generator: delivered msg/s, 2 shards ÷ 1 shard | 1.50M msg/s | corebus, 1 shard 1.00M msg/s | 1.50× | ≥ 1.6× | not met |"),
        "{text}"
    );
    // ...and are never compared with another broker.
    assert!(
        !text.contains("lean generator: delivered msg/s | "),
        "{text}"
    );
    assert!(
        text.contains("| 1 | many 16→64 over 1024 topics, 128 B: delivered msg/s | 1.00M msg/s | NATS 300.0k msg/s |"),
        "{text}"
    );
}

#[test]
fn scaling_compares_the_median_rounds() {
    let many =
        |per_sec, shards| with_shards(run(Target::Corebus, Scenario::Many, 128, per_sec), shards);
    let text = table(&[
        many(900_000.0, 2),
        many(600_000.0, 1),
        many(1_000_000.0, 2),
        many(400_000.0, 1),
        many(800_000.0, 2),
        many(500_000.0, 1),
    ]);
    assert!(
        text.contains("2 shards ÷ 1 shard | 900.0k msg/s | corebus, 1 shard 500.0k msg/s | 1.80× | ≥ 1.6× | **met** |"),
        "{text}"
    );
}

#[test]
fn websocket_runs_are_target_6_against_nats_with_their_own_goals() {
    let ws = |mut report: Report| {
        report.subscribers_over = Some(crate::options::Transport::Websocket);
        report
    };
    let latency = |target, p99, p999| {
        let mut report = ws(run(target, Scenario::Latency, 128, 20_000.0));
        report.rate = Some(2_000);
        report.latency_us.p99 = p99;
        report.latency_us.p999 = p999;
        report
    };
    let idle = |target, bytes| {
        let mut report = ws(run(target, Scenario::Connections, 128, 1.0));
        report.connections = Some(crate::report::ConnectionsReport {
            rss_per_connection_bytes: Some(bytes),
            ..Default::default()
        });
        report
    };
    let text = table(&[
        ws(run(Target::Corebus, Scenario::Many, 128, 3_000_000.0)),
        ws(run(Target::Nats, Scenario::Many, 128, 1_200_000.0)),
        latency(Target::Corebus, 600.0, 900.0),
        latency(Target::Nats, 1_000.0, 2_000.0),
        idle(Target::Corebus, 13_312.0),
        idle(Target::Nats, 28_672.0),
    ]);
    assert!(
        text.contains("| 6 | many 16→64 over 1024 topics, 128 B, WebSocket subscribers: delivered msg/s | 3.00M msg/s | NATS 1.20M msg/s | 2.50× | ≥ 2× | **met** |"),
        "{text}"
    );
    assert!(
        text.contains("| 6 | latency at 2.0k msg/s, 1→16, 128 B, WebSocket subscribers: p99 | 600 µs | NATS 1000 µs | 0.60× | ≤ 0.5× | not met |"),
        "{text}"
    );
    assert!(
        text.contains(
            "WebSocket subscribers: p99.9 | 900 µs | NATS 2000 µs | 0.45× | none (reference) | – |"
        ),
        "{text}"
    );
    assert!(
        text.contains("| 6 | 1000 idle connections, WebSocket subscribers: broker memory per connection | 13.0 KiB | NATS 28.0 KiB | 0.46× | none (reference) | – |"),
        "{text}"
    );
    // No Redis runs at all: no rows against Redis, no scaling rows.
    assert!(!text.contains("| Redis"), "{text}");
    assert!(!text.contains("| 5 |"), "{text}");
    assert!(text.contains("1 of 2 judged goals met"), "{text}");
}

#[test]
fn latency_goal_is_against_nats_only_and_failed_runs_are_not_judged() {
    let mut corebus = run(Target::Corebus, Scenario::Latency, 128, 10_000.0);
    corebus.latency_us.p99 = 100.0;
    corebus.rate = Some(10_000);
    let mut nats = corebus.clone();
    nats.target = Target::Nats;
    nats.latency_us.p99 = 200.0;
    let mut redis = nats.clone();
    redis.target = Target::Redis;
    redis.lost = 1;
    let text = table(&[corebus, nats, redis]);
    assert!(
        text.contains("p99 | 100 µs | NATS 200 µs | 0.50× | ≤ 1× | **met** |"),
        "{text}"
    );
    assert!(
        text.contains("| none (reference) | not judged: a run lost messages |"),
        "{text}"
    );
}

#[test]
fn clusters_are_judged_against_nats_and_the_routing_tier_against_the_owner() {
    let node = |mut report: Report, variant: Option<&str>| {
        report.nodes = Some(3);
        report.variant = variant.map(str::to_owned);
        report
    };
    let latency = |target, variant, p99: f64| {
        let mut report = run(target, Scenario::Latency, 128, 2_000.0);
        report.latency_us.p99 = p99;
        report.latency_us.p999 = p99 * 2.0;
        node(report, Some(variant))
    };
    let (owner, other) = ("publisher on the owner node", "publisher on another node");
    let text = table(&[
        node(run(Target::Corebus, Scenario::Many, 128, 4_000_000.0), None),
        node(run(Target::Nats, Scenario::Many, 128, 1_900_000.0), None),
        latency(Target::Corebus, owner, 400.0),
        latency(Target::Nats, owner, 1_000.0),
        latency(Target::Corebus, other, 700.0),
        latency(Target::Nats, other, 1_000.0),
    ]);
    assert!(text.contains("3-node cluster: delivered msg/s | 4.00M msg/s | NATS 1.90M msg/s | 2.11× | ≥ 2× | **met** |"), "{text}");
    assert!(text.contains("3-node cluster, publisher on the owner node: p99 | 400 µs | NATS 1000 µs | 0.40× | ≤ 0.5× | **met** |"), "{text}");
    assert!(text.contains("3-node cluster, publisher on another node: p99 | 700 µs | NATS 1000 µs | 0.70× | ≤ 0.5× | not met |"), "{text}");
    assert!(text.contains("publisher on another node: p99 ÷ with the publisher on the owner node | 700 µs | corebus, publisher on the owner 400 µs | 1.75× | ≤ 1.5× | not met |"), "{text}");
    assert!(text.contains("2 of 4 judged goals met"), "{text}");
}
