//! Which runs measure the same workload: their row labels (with the
//! variants a run may be: acknowledged publishes, no shard affinity, the
//! lean generator, WebSocket subscribers, a cluster), grouping runs by
//! workload and broker, and the run that stands for several rounds. The
//! layer under the summary's tables (`summary`) and the goal checks
//! (`targets`), which both read runs this way.

use std::collections::BTreeMap;

use crate::options::{Scenario, Target, Transport};
use crate::report::{human, Report};

/// What [`workload_label`] appends for corebus runs with acknowledged
/// publishes (`--acks`).
pub const ACKED_SUFFIX: &str = ", corebus publishes acked";

/// What [`workload_label`] appends for corebus runs without shard affinity
/// (`--no-affinity`).
pub const NO_AFFINITY_SUFFIX: &str = ", corebus without shard affinity";

/// What [`workload_label`] appends for runs of the lean generator
/// (`--lean`, corebus only). They have rows of their own with no other
/// broker's cells: the other brokers are never loaded that way.
pub const LEAN_SUFFIX: &str = ", lean generator";

/// What [`workload_label`] appends for runs whose subscribers connected over
/// WebSocket (`--subscribers-over websocket`; corebus and NATS). They are
/// workloads of their own, compared broker with broker like the native ones.
pub const WEBSOCKET_SUFFIX: &str = ", WebSocket subscribers";

/// Whether a run's subscribers connected over WebSocket.
pub fn is_websocket(report: &Report) -> bool {
    report.subscribers_over == Some(Transport::Websocket)
}

/// Whether a run belongs to a variant.
type IsVariant = fn(&Report) -> bool;

/// The corebus variants shown for reference only, each with what it appends
/// to its rows' labels and how to tell its runs.
const REFERENCE_VARIANTS: [(&str, IsVariant); 2] = [
    (ACKED_SUFFIX, |report| report.acks == Some(true)),
    (NO_AFFINITY_SUFFIX, |report| report.affinity == Some(false)),
];

/// Row label for a run's workload (the same for every broker), with
/// [`ACKED_SUFFIX`] for a corebus run with `--acks` and
/// [`NO_AFFINITY_SUFFIX`] for one with `--no-affinity`, [`LEAN_SUFFIX`]
/// for the lean generator's, and [`WEBSOCKET_SUFFIX`] (first) for runs with
/// WebSocket subscribers.
pub fn workload_label(report: &Report) -> String {
    let mut label = base_label(report);
    if is_websocket(report) {
        label += WEBSOCKET_SUFFIX;
    }
    if let Some(nodes) = report.nodes {
        label += &format!(", {nodes}-node cluster");
    }
    if let Some(variant) = &report.variant {
        label += &format!(", {variant}");
    }
    for (suffix, applies) in REFERENCE_VARIANTS {
        if applies(report) {
            label += suffix;
        }
    }
    if report.lean == Some(true) {
        label += LEAN_SUFFIX;
    }
    label
}

/// Whether `label` is a workload that corebus ran only as a reference
/// variant (say, without shard affinity): its row then holds the other
/// brokers' runs alone, and they are compared in the variant's row.
pub fn corebus_ran_only_as_variant(
    label: &str,
    rows: &[(String, BTreeMap<&'static str, &Report>)],
) -> bool {
    let has_corebus =
        |cells: &BTreeMap<&'static str, &Report>| cells.contains_key(Target::Corebus.name());
    let plain = rows.iter().find(|(other, _)| other == label);
    !plain.is_some_and(|(_, cells)| has_corebus(cells))
        && REFERENCE_VARIANTS.iter().any(|(suffix, _)| {
            rows.iter()
                .any(|(other, cells)| *other == format!("{label}{suffix}") && has_corebus(cells))
        })
}

/// Whether a corebus run is one of the variants shown for reference only
/// (acknowledged publishes, no shard affinity).
pub fn is_reference_variant(report: &Report) -> bool {
    REFERENCE_VARIANTS
        .iter()
        .any(|(_, applies)| applies(report))
}

fn base_label(report: &Report) -> String {
    let size = if report.size >= 1024 && report.size.trailing_zeros() >= 10 {
        format!("{} KiB", report.size / 1024)
    } else {
        format!("{} B", report.size)
    };
    match report.scenario {
        Scenario::Pair => format!("pair, {size}"),
        Scenario::Fanout => format!("fanout 1→{}, {size}", report.subscribers),
        Scenario::Many => format!(
            "many {}→{} over {} topics, {size}",
            report.publishers, report.subscribers, report.topics
        ),
        Scenario::Latency => format!(
            "latency at {} msg/s, {}→{}{}, {size}",
            report
                .rate
                .map_or_else(|| "?".to_owned(), |rate| human(rate as f64)),
            report.publishers,
            report.subscribers,
            if report.topics > 1 {
                format!(" over {} topics", report.topics)
            } else {
                String::new()
            }
        ),
        Scenario::Connections => format!("{} idle connections", report.subscribers),
    }
}

/// The workloads in first-seen order, each with its report per broker (and
/// the raw baseline's, under `raw`).
///
/// Where one broker ran a workload more than once, only its runs with the
/// most `broker_shards` count (the suite's main corebus runs, not the
/// one-shard scaling runs), and of those [`representative`] stands for the
/// workload: the median run of the rounds. A workload of corebus runs
/// with acknowledged publishes has a row of its own, where the other
/// brokers' cells are their runs of the same workload (which publish as
/// they always do).
pub fn by_workload(runs: &[Report]) -> Vec<(String, BTreeMap<&'static str, &Report>)> {
    let mut groups: Vec<(String, BTreeMap<&'static str, Vec<&Report>>)> = Vec::new();
    for run in runs {
        let label = workload_label(run);
        let index = match groups.iter().position(|(existing, _)| *existing == label) {
            Some(index) => index,
            None => {
                groups.push((label, BTreeMap::new()));
                groups.len() - 1
            }
        };
        let group = groups[index].1.entry(run.target.name()).or_default();
        match group.first() {
            Some(kept) if kept.broker_shards > run.broker_shards => {}
            Some(kept) if kept.broker_shards < run.broker_shards => *group = vec![run],
            _ => group.push(run),
        }
    }
    let mut rows: Vec<(String, BTreeMap<&'static str, &Report>)> = groups
        .into_iter()
        .map(|(label, group)| {
            let cells = group
                .into_iter()
                .filter_map(|(name, runs)| Some((name, representative(&runs)?)))
                .collect();
            (label, cells)
        })
        .collect();
    let plain: Vec<(String, BTreeMap<&'static str, &Report>)> = rows.clone();
    for (label, cells) in &mut rows {
        let Some(base) = REFERENCE_VARIANTS
            .iter()
            .find_map(|(suffix, _)| label.strip_suffix(suffix))
        else {
            continue;
        };
        if let Some((_, others)) = plain.iter().find(|(other, _)| other == base) {
            for (name, run) in others {
                if *name != Target::Corebus.name() {
                    cells.entry(name).or_insert(run);
                }
            }
        }
    }
    rows
}

/// The run that stands for several rounds of one workload on one broker:
/// a failed run if there is one (a failure in any round must show, and is
/// not judged), otherwise the median by the workload's main measure
/// (delivered messages per second; p99 latency for `latency`; memory per
/// connection for `connections`), the lower middle one for an even count.
pub fn representative<'a>(runs: &[&'a Report]) -> Option<&'a Report> {
    if let Some(failed) = runs.iter().rev().find(|run| run.failure().is_some()) {
        return Some(failed);
    }
    let measure = |run: &Report| match run.scenario {
        Scenario::Latency => run.latency_us.p99,
        Scenario::Connections => run
            .connections
            .as_ref()
            .and_then(|connections| connections.rss_per_connection_bytes)
            .unwrap_or(f64::NAN),
        Scenario::Pair | Scenario::Fanout | Scenario::Many => run.delivered_per_sec,
    };
    let mut sorted = runs.to_vec();
    sorted.sort_by(|a, b| measure(a).total_cmp(&measure(b)));
    sorted.get(sorted.len().saturating_sub(1) / 2).copied()
}

/// The most runs of one workload on one broker with one shard count: the
/// suite's rounds.
pub fn rounds(runs: &[Report]) -> usize {
    let mut counts: BTreeMap<(String, &'static str, Option<usize>), usize> = BTreeMap::new();
    for run in runs {
        *counts
            .entry((workload_label(run), run.target.name(), run.broker_shards))
            .or_default() += 1;
    }
    counts.values().copied().max().unwrap_or(0)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::options::RunOptions;

    /// A finished run of `scenario` on `target` that delivered everything
    /// at `per_sec` messages per second.
    pub(crate) fn report(target: Target, scenario: Scenario, per_sec: f64) -> Report {
        let plan = RunOptions::new(target, scenario).plan().expect("valid");
        let mut report = Report::for_plan(&plan);
        report.delivered = 100;
        report.expected = 100;
        report.delivered_per_sec = per_sec;
        report.latency_us.p50 = per_sec / 1000.0;
        if scenario == Scenario::Latency {
            report.rate = Some(plan.rate);
        }
        report
    }

    #[test]
    fn a_failed_round_stands_for_its_workload() {
        let good = report(Target::Corebus, Scenario::Pair, 900_000.0);
        let mut failed = report(Target::Corebus, Scenario::Pair, 950_000.0);
        failed.lost = 3;
        let third = report(Target::Corebus, Scenario::Pair, 800_000.0);
        let chosen = representative(&[&good, &failed, &third]).expect("runs");
        assert_eq!(chosen.lost, 3);
        // Latency: the median by p99, whatever the throughput.
        let mut a = report(Target::Nats, Scenario::Latency, 10_000.0);
        a.latency_us.p99 = 30.0;
        let mut b = a.clone();
        b.latency_us.p99 = 10.0;
        let mut c = a.clone();
        c.latency_us.p99 = 20.0;
        let chosen = representative(&[&a, &b, &c]).expect("runs");
        assert_eq!(chosen.latency_us.p99, 20.0);
        // Two rounds: the lower middle one.
        assert_eq!(
            representative(&[&a, &b]).expect("runs").latency_us.p99,
            10.0
        );
        assert!(representative(&[]).is_none());
    }
}
