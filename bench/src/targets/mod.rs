//! The performance issue's targets, checked against one comparison run: the
//! table at the top of `bench/results/<kind>.md`.
//!
//! Targets (128-byte payloads unless stated, every broker on the same cores):
//!
//! 1. `pair`, `fanout` and `many` delivered msg/s: at least 2× NATS and
//!    more than Redis.
//! 2. `latency` p99 and p99.9: at most NATS's.
//! 3. `connections`: broker memory per idle connection at most NATS's.
//! 4. Large messages (`pair` at the raw baseline's size, 16 KiB in the
//!    suite): corebus's delivered bytes/s at least 50% of the raw loopback
//!    relay's ([`crate::relay`]) on the same machine in the same run.
//! 5. `many` with 2 shards at least 1.6× `many` with 1 shard.
//! 6. Subscribers over WebSocket (`bench/compare_ws.sh`: one native
//!    publisher, 1,000 WebSocket subscribers on 100 topics, 128 B), against
//!    NATS's WebSocket listener: delivered msg/s at least 2× NATS's, and
//!    p99 latency at a fixed rate at most 0.5× NATS's. Memory per idle
//!    WebSocket connection is shown for reference (and next to the native
//!    figure in the table that follows).
//!
//! 7. A three-node cluster (`bench/compare_cluster.sh`: publisher on node 1,
//!    subscribers spread over the three nodes), against a three-node NATS
//!    cluster with the same CPUs: delivered msg/s at least 2× NATS's, p99
//!    latency at a fixed rate at most 0.5× NATS's, and publishing through a
//!    routing node at most 1.5× the p99 of publishing to the topic's owner.
//!
//! Redis has no target for latency and memory; its ratios are shown for
//! reference. A comparison with a run that did not deliver everything is
//! not judged.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::options::{Scenario, Target};
use crate::report::{human, Report};
use crate::workloads::by_workload;

/// Payload size of the small-message targets (1 to 3).
pub const SMALL_SIZE: usize = 128;
/// corebus ÷ NATS throughput goal.
pub const THROUGHPUT_VS_NATS: f64 = 2.0;
/// Fraction of the raw loopback relay's bytes/s goal.
pub const RAW_FRACTION: f64 = 0.5;
/// 2-shard ÷ 1-shard `many` throughput goal.
pub const SCALING: f64 = 1.6;
/// corebus ÷ NATS p99 latency goal with WebSocket subscribers.
pub const WEBSOCKET_P99_VS_NATS: f64 = 0.5;
/// corebus ÷ NATS p99 latency goal in a cluster.
pub const CLUSTER_P99_VS_NATS: f64 = 0.5;
/// corebus p99 through a routing node ÷ to the owner, goal.
pub const ROUTING_P99: f64 = 1.5;

/// How to read a compared value from a report.
type Metric = fn(&Report) -> Option<f64>;

/// What a ratio must be.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Goal {
    /// At least this.
    AtLeast(f64),
    /// More than this.
    Above(f64),
    /// At most this.
    AtMost(f64),
    /// No target: shown for reference.
    Reference,
}

impl Goal {
    fn describe(self, percent: bool) -> String {
        let number = |value: f64| {
            if percent {
                format!("{:.0}%", value * 100.0)
            } else {
                format!("{value}×")
            }
        };
        match self {
            Goal::AtLeast(value) => format!("≥ {}", number(value)),
            Goal::Above(value) => format!("> {}", number(value)),
            Goal::AtMost(value) => format!("≤ {}", number(value)),
            Goal::Reference => "none (reference)".into(),
        }
    }

    fn met(self, ratio: f64) -> Option<bool> {
        match self {
            Goal::AtLeast(value) => Some(ratio >= value),
            Goal::Above(value) => Some(ratio > value),
            Goal::AtMost(value) => Some(ratio <= value),
            Goal::Reference => None,
        }
    }
}

/// One comparison: corebus against a reference run.
struct Comparison<'a> {
    target: u8,
    measure: String,
    corebus: Option<&'a Report>,
    /// What corebus is compared with, as the table names it.
    reference_name: String,
    reference: Option<&'a Report>,
    value: Metric,
    format: fn(f64) -> String,
    /// Show the ratio as a percentage.
    percent: bool,
    goal: Goal,
    /// Set when the comparison cannot be judged against its goal as is.
    not_applicable: Option<String>,
}

impl Comparison<'_> {
    fn row(&self) -> (String, Option<bool>) {
        let corebus = self.corebus.and_then(self.value);
        let reference = self.reference.and_then(self.value);
        let show = |value: Option<f64>| value.map_or_else(|| "–".into(), self.format);
        let ratio = match (corebus, reference) {
            (Some(corebus), Some(reference)) if reference > 0.0 => Some(corebus / reference),
            _ => None,
        };
        let failed = [self.corebus, self.reference]
            .into_iter()
            .flatten()
            .any(|run| run.failure().is_some());
        let met = ratio.and_then(|ratio| self.goal.met(ratio));
        let (verdict, counted) = match (ratio, &self.not_applicable) {
            _ if failed => ("not judged: a run lost messages".to_owned(), None),
            (None, _) => ("no data".to_owned(), None),
            (Some(_), Some(why)) => (format!("n/a: {why}"), None),
            (Some(_), None) => match met {
                Some(true) => ("**met**".to_owned(), Some(true)),
                Some(false) => ("not met".to_owned(), Some(false)),
                None => ("–".to_owned(), None),
            },
        };
        let ratio = ratio.map_or_else(
            || "–".into(),
            |ratio| {
                if self.percent {
                    format!("{:.0}%", ratio * 100.0)
                } else {
                    format!("{ratio:.2}×")
                }
            },
        );
        let line = format!(
            "| {} | {} | {} | {} {} | {ratio} | {} | {verdict} |",
            self.target,
            self.measure,
            show(corebus),
            self.reference_name,
            show(reference),
            self.goal.describe(self.percent),
        );
        (line, counted)
    }
}

fn msgs(value: f64) -> String {
    format!("{} msg/s", human(value))
}

fn micros(value: f64) -> String {
    format!("{value:.0} µs")
}

/// Microseconds to two decimals: CPU time per message.
pub(crate) fn cpu_micros(value: f64) -> String {
    format!("{value:.2} µs")
}

fn kib(value: f64) -> String {
    format!("{:.1} KiB", value / 1024.0)
}

fn megabytes(value: f64) -> String {
    format!("{value:.1} MB/s")
}

type Cells<'a> = BTreeMap<&'static str, &'a Report>;

fn cell<'a>(cells: &Cells<'a>, target: Target) -> Option<&'a Report> {
    cells.get(target.name()).copied()
}

/// Comparisons of targets 1 to 4 and 6, in target order. Comparisons with
/// Redis are left out when no run loaded Redis at all (the WebSocket
/// comparison has none).
fn broker_comparisons<'a>(workloads: &[(String, Cells<'a>)]) -> Vec<Comparison<'a>> {
    let mut by_target: [Vec<Comparison<'a>>; 4] = Default::default();
    let mut websocket = Vec::new();
    let mut cluster = Vec::new();
    let has_redis = workloads
        .iter()
        .any(|(_, cells)| cells.contains_key(Target::Redis.name()));
    for (label, cells) in workloads {
        let Some(any) = cells.values().next() else {
            continue;
        };
        if crate::workloads::corebus_ran_only_as_variant(label, workloads) {
            continue;
        }
        let corebus = cell(cells, Target::Corebus);
        let against = |target: u8,
                       measure: String,
                       reference: Target,
                       value: Metric,
                       format: fn(f64) -> String,
                       goal: Goal| Comparison {
            target,
            measure,
            corebus,
            reference_name: match reference {
                Target::Nats => "NATS".into(),
                Target::Redis => "Redis".into(),
                Target::Raw => "raw loopback relay".into(),
                Target::Corebus => "corebus".into(),
            },
            reference: cell(cells, reference),
            value,
            format,
            percent: reference == Target::Raw,
            goal,
            not_applicable: None,
        };
        if crate::workloads::is_websocket(any) {
            websocket.extend(paired_comparisons(
                6,
                WEBSOCKET_P99_VS_NATS,
                label,
                any.scenario,
                &against,
            ));
            continue;
        }
        if any.nodes.is_some() {
            cluster.extend(paired_comparisons(
                7,
                CLUSTER_P99_VS_NATS,
                label,
                any.scenario,
                &against,
            ));
            continue;
        }
        match any.scenario {
            Scenario::Pair | Scenario::Fanout | Scenario::Many if any.size == SMALL_SIZE => {
                let measure = format!("{label}: delivered msg/s");
                let value: Metric = |run| Some(run.delivered_per_sec);
                // The goals are judged on the main runs: fire-and-forget
                // publishes, as the NATS driver's, and one-topic connections
                // on their topic's shard. Acknowledged publishes and runs
                // without affinity are shown against the same runs for
                // reference.
                let variant = corebus.is_some_and(crate::workloads::is_reference_variant);
                let goal = |goal| if variant { Goal::Reference } else { goal };
                by_target[0].push(against(
                    1,
                    measure.clone(),
                    Target::Nats,
                    value,
                    msgs,
                    goal(Goal::AtLeast(THROUGHPUT_VS_NATS)),
                ));
                by_target[0].push(against(
                    1,
                    measure,
                    Target::Redis,
                    value,
                    msgs,
                    goal(Goal::Above(1.0)),
                ));
            }
            Scenario::Latency if any.size == SMALL_SIZE => {
                let variant = corebus.is_some_and(crate::workloads::is_reference_variant);
                let percentiles: [(&str, Metric); 2] = [
                    ("p99", |run| Some(run.latency_us.p99)),
                    ("p99.9", |run| Some(run.latency_us.p999)),
                ];
                for (name, value) in percentiles {
                    for (reference, goal) in [
                        (Target::Nats, Goal::AtMost(1.0)),
                        (Target::Redis, Goal::Reference),
                    ] {
                        let goal = if variant { Goal::Reference } else { goal };
                        by_target[1].push(against(
                            2,
                            format!("{label}: {name}"),
                            reference,
                            value,
                            micros,
                            goal,
                        ));
                    }
                }
            }
            Scenario::Connections => {
                let value: Metric = |run| {
                    run.connections
                        .as_ref()
                        .and_then(|connections| connections.rss_per_connection_bytes)
                };
                for (reference, goal) in [
                    (Target::Nats, Goal::AtMost(1.0)),
                    (Target::Redis, Goal::Reference),
                ] {
                    by_target[2].push(against(
                        3,
                        format!("{label}: broker memory per connection"),
                        reference,
                        value,
                        kib,
                        goal,
                    ));
                }
            }
            _ => {}
        }
        if any.scenario == Scenario::Pair && cells.contains_key(Target::Raw.name()) {
            by_target[3].push(against(
                4,
                format!("{label}: delivered payload MB/s"),
                Target::Raw,
                |run| Some(run.delivered_mb_per_sec),
                megabytes,
                Goal::AtLeast(RAW_FRACTION),
            ));
        }
    }
    by_target
        .into_iter()
        .flatten()
        .chain(websocket)
        .chain(cluster)
        .filter(|comparison| has_redis || comparison.reference_name != "Redis")
        .collect()
}

/// Targets 6 and 7, one workload run with WebSocket subscribers (6) or on
/// three-node clusters (7): corebus against NATS, loaded the same way.
/// Memory per idle connection is shown for reference (WebSocket only: the
/// cluster scenario runs none).
fn paired_comparisons<'a>(
    target: u8,
    p99_goal: f64,
    label: &str,
    scenario: Scenario,
    against: &impl Fn(u8, String, Target, Metric, fn(f64) -> String, Goal) -> Comparison<'a>,
) -> Vec<Comparison<'a>> {
    match scenario {
        Scenario::Pair | Scenario::Fanout | Scenario::Many => vec![against(
            target,
            format!("{label}: delivered msg/s"),
            Target::Nats,
            |run| Some(run.delivered_per_sec),
            msgs,
            Goal::AtLeast(THROUGHPUT_VS_NATS),
        )],
        Scenario::Latency => vec![
            against(
                target,
                format!("{label}: p99"),
                Target::Nats,
                |run| Some(run.latency_us.p99),
                micros,
                Goal::AtMost(p99_goal),
            ),
            against(
                target,
                format!("{label}: p99.9"),
                Target::Nats,
                |run| Some(run.latency_us.p999),
                micros,
                Goal::Reference,
            ),
        ],
        Scenario::Connections => vec![against(
            target,
            format!("{label}: broker memory per connection"),
            Target::Nats,
            |run| {
                run.connections
                    .as_ref()
                    .and_then(|connections| connections.rss_per_connection_bytes)
            },
            kib,
            Goal::Reference,
        )],
    }
}

/// Target 7's routing tier: per cluster latency workload, corebus's p99
/// with the publisher on another node than the topic's owner, against its
/// p99 with the publisher on the owner.
fn routing_comparisons(runs: &[Report]) -> Vec<Comparison<'_>> {
    use crate::options::PublisherOn;
    let corebus = |place: PublisherOn| -> Vec<&Report> {
        runs.iter()
            .filter(|run| {
                run.target == Target::Corebus
                    && run.scenario == Scenario::Latency
                    && run.nodes.is_some()
                    && run.variant.as_deref() == Some(place.variant())
            })
            .collect()
    };
    let (routed, direct) = (corebus(PublisherOn::Other), corebus(PublisherOn::Owner));
    if routed.is_empty() || direct.is_empty() {
        return Vec::new();
    }
    let routed = crate::workloads::representative(&routed);
    let label = routed
        .map(crate::workloads::workload_label)
        .unwrap_or_default();
    vec![Comparison {
        target: 7,
        measure: format!("{label}: p99 ÷ with the publisher on the owner node"),
        corebus: routed,
        reference_name: "corebus, publisher on the owner".into(),
        reference: crate::workloads::representative(&direct),
        value: |run| Some(run.latency_us.p99),
        format: micros,
        percent: false,
        goal: Goal::AtMost(ROUTING_P99),
        not_applicable: None,
    }]
}

/// Target 5: per `many` workload, corebus's main run (the most shards)
/// against its one-shard run.
///
/// The goal ("where the machine has the cores") is judged on the lean
/// generator's runs when there are any: the main harness takes about as much
/// CPU per message as the broker, so on a machine with no cores beyond the
/// shards its runs measure the harness's share of the CPU as much as the
/// broker's scaling, and are then shown for reference.
fn scaling_comparisons(runs: &[Report]) -> Vec<Comparison<'_>> {
    let lean = || runs.iter().filter(|run| run.lean == Some(true));
    let lean_judged = lean().any(|run| run.broker_shards == Some(1))
        && lean().any(|run| run.broker_shards.is_some_and(|shards| shards > 1));
    let mut by_label: Vec<(String, Vec<&Report>)> = Vec::new();
    for run in runs.iter().filter(|run| {
        run.target == Target::Corebus
            && run.scenario == Scenario::Many
            && run.acks != Some(true)
            && !crate::workloads::is_websocket(run)
    }) {
        let label = crate::workloads::workload_label(run);
        match by_label.iter_mut().find(|(existing, _)| *existing == label) {
            Some((_, group)) => group.push(run),
            None => by_label.push((label, vec![run])),
        }
    }
    // A results file with no one-shard run at all (bench/compare_ws.sh, or
    // compare.sh with SHARDS=1) has no scaling rows.
    let any_one_shard = runs.iter().any(|run| run.broker_shards == Some(1));
    by_label
        .into_iter()
        .filter(|_| any_one_shard)
        .flat_map(|(label, group)| {
            let most = group
                .iter()
                .filter_map(|run| run.broker_shards)
                .filter(|shards| *shards > 1)
                .max();
            let with = |shards: Option<usize>| {
                let runs: Vec<&Report> = group
                    .iter()
                    .copied()
                    .filter(|run| shards.is_some() && run.broker_shards == shards)
                    .collect();
                crate::workloads::representative(&runs)
            };
            let (main, one) = (with(most), with(Some(1)));
            let shards = main.and_then(|run| run.broker_shards);
            let shards_name =
                shards.map_or_else(|| "? shards".into(), |shards| format!("{shards} shards"));
            let throughput = Comparison {
                target: 5,
                measure: format!("{label}: delivered msg/s, {shards_name} ÷ 1 shard"),
                corebus: main,
                reference_name: "corebus, 1 shard".into(),
                reference: one,
                value: |run| Some(run.delivered_per_sec),
                format: msgs,
                percent: false,
                goal: if lean_judged && !label.ends_with(crate::workloads::LEAN_SUFFIX) {
                    Goal::Reference
                } else {
                    Goal::AtLeast(SCALING)
                },
                not_applicable: shards
                    .filter(|shards| *shards != 2)
                    .map(|shards| format!("the goal is for 2 shards, this run had {shards}")),
            };
            // What the shards cost each other, whether or not the machine
            // has the cores to show it as throughput: the broker's CPU time
            // per message with the hops between shards against without.
            let cpu = Comparison {
                measure: format!(
                    "{label}: broker CPU per delivered message, {shards_name} ÷ 1 shard"
                ),
                reference_name: throughput.reference_name.clone(),
                value: |run| run.broker_cpu_us_per_msg,
                format: cpu_micros,
                goal: Goal::Reference,
                not_applicable: None,
                ..throughput
            };
            [throughput, cpu]
        })
        .collect()
}

/// Appends the targets table, with a count of targets met, to `out`.
pub fn markdown(out: &mut String, runs: &[Report]) {
    // The lean generator loads corebus only: it has no place against the
    // other brokers, only in target 5.
    let main: Vec<Report> = runs
        .iter()
        .filter(|run| run.lean != Some(true))
        .cloned()
        .collect();
    let workloads = by_workload(&main);
    let mut comparisons = broker_comparisons(&workloads);
    comparisons.extend(scaling_comparisons(runs));
    comparisons.extend(routing_comparisons(runs));
    // In target order; within a target, in workload order.
    comparisons.sort_by_key(|comparison| comparison.target);
    if comparisons.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "Targets of the performance issues: corebus against NATS and Redis, against the \
         raw loopback relay (the same two socket hops with no broker), 2 shards \
         against 1, with subscribers over WebSocket against NATS's WebSocket \
         listener, and three-node clusters against NATS's. Ratios are corebus ÷ the other.\n"
    );
    let _ = writeln!(
        out,
        "| target | measure | corebus | compared with | ratio | goal | verdict |"
    );
    let _ = writeln!(out, "|---|---|---:|---:|---:|---|---|");
    let (mut met, mut judged) = (0, 0);
    for comparison in &comparisons {
        let (line, verdict) = comparison.row();
        let _ = writeln!(out, "{line}");
        if let Some(verdict) = verdict {
            judged += 1;
            met += usize::from(verdict);
        }
    }
    let _ = writeln!(out, "\n{met} of {judged} judged goals met.\n");
}

#[cfg(test)]
mod tests;
