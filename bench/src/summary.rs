//! `corebus-bench summarize`: turns the reports of a comparison run (one
//! JSON object per line, as `--json` prints them) into the results file, a
//! Markdown table with ratios corebus/NATS and corebus/Redis, and an SVG
//! picture.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use crate::options::{Scenario, Target};
use crate::report::{human, ConnectionsReport, Report};
use crate::workloads::{
    by_workload, corebus_ran_only_as_variant, rounds, workload_label, NO_AFFINITY_SUFFIX,
    WEBSOCKET_SUFFIX,
};
use crate::BenchError;

/// The brokers in table order.
pub const TARGETS: [Target; 3] = [Target::Corebus, Target::Nats, Target::Redis];

/// A comparison run as written to `bench/results/<kind>.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    /// When the summary was made (UTC, RFC 3339).
    pub generated: String,
    /// The machine and software versions.
    pub machine: BTreeMap<String, String>,
    /// Every run's report.
    pub runs: Vec<Report>,
}

/// Reads reports, one JSON object per line (blank lines skipped).
pub fn read_reports(path: &str) -> Result<Vec<Report>, BenchError> {
    let text = std::fs::read_to_string(path).map_err(|source| BenchError::File {
        path: path.to_owned(),
        source,
    })?;
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(number, line)| {
            serde_json::from_str(line).map_err(|err| BenchError::BadResults {
                path: path.to_owned(),
                reason: format!("line {}: {err}", number + 1),
            })
        })
        .collect()
}

/// What this machine is: CPU model, CPU count, memory, kernel.
pub fn machine_facts() -> BTreeMap<String, String> {
    let mut facts = BTreeMap::new();
    if let Ok(cpuinfo) = std::fs::read_to_string("/proc/cpuinfo") {
        if let Some(model) = cpuinfo
            .lines()
            .find(|line| line.starts_with("model name"))
            .and_then(|line| line.split_once(':'))
        {
            facts.insert("cpu".into(), model.1.trim().to_owned());
        }
    }
    if let Ok(cpus) = std::thread::available_parallelism() {
        facts.insert("cpus".into(), cpus.to_string());
    }
    if let Ok(meminfo) = std::fs::read_to_string("/proc/meminfo") {
        if let Some(total) = meminfo.lines().find(|line| line.starts_with("MemTotal:")) {
            let kib: u64 = total
                .split_whitespace()
                .nth(1)
                .and_then(|kib| kib.parse().ok())
                .unwrap_or(0);
            facts.insert(
                "memory".into(),
                format!("{:.1} GiB", kib as f64 / 1048576.0),
            );
        }
    }
    if let Ok(kernel) = std::fs::read_to_string("/proc/sys/kernel/osrelease") {
        facts.insert("kernel".into(), kernel.trim().to_owned());
    }
    facts
}

fn ratio(corebus: Option<f64>, other: Option<f64>) -> String {
    match (corebus, other) {
        (Some(corebus), Some(other)) if other > 0.0 => format!("{:.2}×", corebus / other),
        _ => "–".into(),
    }
}

fn cell(value: Option<f64>, format: impl Fn(f64) -> String) -> String {
    value.map_or_else(|| "–".into(), format)
}

/// One table row: a label and the value per broker (in [`TARGETS`] order).
pub type Row = (String, [Option<f64>; 3]);

/// Rows of `metric` per workload, skipping workloads where it applies to no
/// broker.
pub fn rows_of(
    workloads: &[(String, BTreeMap<&'static str, &Report>)],
    metric: impl Fn(&Report) -> Option<f64>,
) -> Vec<Row> {
    workloads
        .iter()
        .map(|(label, cells)| {
            let values = TARGETS.map(|target| cells.get(target.name()).and_then(|r| metric(r)));
            (label.clone(), values)
        })
        .filter(|(_, values)| values.iter().any(Option::is_some))
        .collect()
}

/// A Markdown table: one column per broker and the two ratios.
fn table(out: &mut String, heading: &str, rows: &[Row], format: impl Fn(f64) -> String) {
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "| {heading} | corebus | NATS | Redis | corebus/NATS | corebus/Redis |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|");
    for (label, [corebus, nats, redis]) in rows {
        let _ = writeln!(
            out,
            "| {label} | {} | {} | {} | {} | {} |",
            cell(*corebus, &format),
            cell(*nats, &format),
            cell(*redis, &format),
            ratio(*corebus, *nats),
            ratio(*corebus, *redis),
        );
    }
    out.push('\n');
}

/// A latency percentile's name and how to read it from a report.
pub type Percentile = (&'static str, fn(&Report) -> f64);

/// Latency percentiles with their names, in table order.
pub const PERCENTILES: [Percentile; 5] = [
    ("p50", |report| report.latency_us.p50),
    ("p90", |report| report.latency_us.p90),
    ("p99", |report| report.latency_us.p99),
    ("p99.9", |report| report.latency_us.p999),
    ("max", |report| report.latency_us.max),
];

fn is_throughput(report: &Report) -> bool {
    matches!(
        report.scenario,
        Scenario::Pair | Scenario::Fanout | Scenario::Many
    )
}

/// The Markdown page: machine, throughput, latency, connections, and every
/// run that did not deliver everything.
pub fn markdown(summary: &Summary) -> String {
    let rows = by_workload(&summary.runs);
    let mut out = String::new();
    // The brokers this run loaded (all three in compare.sh's runs).
    let loaded: Vec<&str> = [
        ("corebus", Target::Corebus),
        ("NATS", Target::Nats),
        ("Redis", Target::Redis),
    ]
    .into_iter()
    .filter(|(_, target)| summary.runs.iter().any(|run| run.target == *target))
    .map(|(name, _)| name)
    .collect();
    let title = if loaded.len() > 1 {
        loaded.join(" vs ")
    } else {
        "corebus vs NATS vs Redis".to_owned()
    };
    let _ = writeln!(out, "# {title} ({})\n", summary.generated);
    for (key, value) in &summary.machine {
        let _ = writeln!(out, "- {key}: {value}");
    }
    let rounds = rounds(&summary.runs);
    if rounds > 1 {
        let _ = writeln!(
            out,
            "- rounds: up to {rounds} per workload and broker; every cell below is the median run \
             of its rounds (by delivered msg/s; by p99 for latency), and the last table lists every round"
        );
    }
    out.push('\n');
    crate::targets::markdown(&mut out, &summary.runs);
    websocket_table(&mut out, &rows);
    // A workload corebus ran only as a reference variant shows in the
    // variant's rows, with the other brokers' runs.
    let all = rows.clone();
    let rows: Vec<_> = rows
        .into_iter()
        .filter(|(label, _)| !corebus_ran_only_as_variant(label, &all))
        .collect();
    let _ = writeln!(
        out,
        "Delivered messages per second (higher is better; ratio > 1: corebus faster).\n"
    );
    table(
        &mut out,
        "throughput",
        &rows_of(&rows, |r| is_throughput(r).then_some(r.delivered_per_sec)),
        |value| format!("{} msg/s", human(value)),
    );
    table(
        &mut out,
        "payload throughput",
        &rows_of(&rows, |r| {
            is_throughput(r).then_some(r.delivered_mb_per_sec)
        }),
        |value| format!("{value:.1} MB/s"),
    );
    let cpu_rows = [
        (
            "broker CPU per delivered message",
            rows_of(&rows, |r| r.broker_cpu_us_per_msg),
        ),
        (
            "harness CPU per delivered message",
            rows_of(&rows, |r| r.harness_cpu_us_per_msg),
        ),
    ];
    if cpu_rows.iter().any(|(_, rows)| !rows.is_empty()) {
        let _ = writeln!(
            out,
            "CPU time (user and system) per delivered message, from the first publish to the \
             last delivery (lower is better; ratio < 1: corebus uses less). The harness's is its \
             publishers and subscribers with each broker's client library; on a machine whose \
             cores the harness shares, broker and harness together set the throughput.\n"
        );
        for (heading, rows) in &cpu_rows {
            table(&mut out, heading, rows, crate::targets::cpu_micros);
        }
    }
    let _ = writeln!(
        out,
        "Latency from intended send time, open loop (lower is better; ratio < 1: corebus faster).\n"
    );
    let mut latency_rows = Vec::new();
    for (name, pick) in PERCENTILES {
        for (label, values) in rows_of(&rows, |r| {
            (r.scenario == Scenario::Latency).then(|| pick(r))
        }) {
            latency_rows.push((format!("{label}: {name}"), values));
        }
    }
    table(&mut out, "latency", &latency_rows, |value| {
        format!("{value:.0} µs")
    });
    let _ = writeln!(
        out,
        "Idle connections, then one message to each (lower is better; ratio < 1: corebus leaner or faster).\n"
    );
    table(
        &mut out,
        "broker memory per connection",
        &rows_of(&rows, |r| {
            r.connections
                .as_ref()
                .and_then(|c| c.rss_per_connection_bytes)
        }),
        |value| format!("{:.1} KiB", value / 1024.0),
    );
    table(
        &mut out,
        "time to deliver one message to each",
        &rows_of(&rows, |r| r.connections.as_ref().map(|c| c.deliver_all_ms)),
        |value| format!("{value:.0} ms"),
    );
    for (name, pick) in [
        (
            "a topic's last subscriber served, p50 over topics",
            (|c: &ConnectionsReport| c.topic_last_p50_ms) as fn(&ConnectionsReport) -> Option<f64>,
        ),
        (
            "a topic's last subscriber served, p99 over topics",
            |c: &ConnectionsReport| c.topic_last_p99_ms,
        ),
    ] {
        table(
            &mut out,
            name,
            &rows_of(&rows, |r| r.connections.as_ref().and_then(pick)),
            |value| format!("{value:.1} ms"),
        );
    }
    // Higher is better here: the ratio reads the other way.
    table(
        &mut out,
        "connections opened and subscribed per second (higher is better)",
        &rows_of(&rows, |r| {
            r.connections.as_ref().and_then(|c| c.connects_per_s)
        }),
        |value| format!("{value:.0}/s"),
    );
    if rounds > 1 {
        every_round(&mut out, &summary.runs);
    }
    let failed: Vec<String> = summary
        .runs
        .iter()
        .filter_map(|run| {
            run.failure().map(|why| {
                let shards = run
                    .broker_shards
                    .map_or_else(String::new, |shards| format!(" ({shards} shards)"));
                format!(
                    "- {} {}{shards}: {why}",
                    run.target.name(),
                    workload_label(run)
                )
            })
        })
        .collect();
    if failed.is_empty() {
        let _ = writeln!(out, "Every run delivered every message (checked per publisher counter; corebus also by sequence number).");
    } else {
        let _ = writeln!(out, "Runs that did not deliver everything:\n");
        for line in failed {
            let _ = writeln!(out, "{line}");
        }
    }
    out
}

/// Each WebSocket workload next to the same workload with native
/// subscribers, per broker: delivered msg/s, latency percentiles, memory per
/// idle connection. Nothing when no run had WebSocket subscribers.
fn websocket_table(out: &mut String, rows: &[(String, BTreeMap<&'static str, &Report>)]) {
    type Measure = (&'static str, fn(&Report) -> Option<f64>, fn(f64) -> String);
    let measures: [Measure; 4] = [
        (
            "delivered msg/s",
            |r| is_throughput(r).then_some(r.delivered_per_sec),
            |value| format!("{} msg/s", human(value)),
        ),
        (
            "p50",
            |r| (r.scenario == Scenario::Latency).then_some(r.latency_us.p50),
            |value| format!("{value:.0} µs"),
        ),
        (
            "p99",
            |r| (r.scenario == Scenario::Latency).then_some(r.latency_us.p99),
            |value| format!("{value:.0} µs"),
        ),
        (
            "broker memory per idle connection",
            |r| {
                r.connections
                    .as_ref()
                    .and_then(|connections| connections.rss_per_connection_bytes)
            },
            |value| format!("{:.1} KiB", value / 1024.0),
        ),
    ];
    let brokers = [Target::Corebus, Target::Nats];
    let mut lines = Vec::new();
    for (label, cells) in rows {
        let Some(native_label) = label.strip_suffix(WEBSOCKET_SUFFIX) else {
            continue;
        };
        let row = |label: &str| {
            rows.iter()
                .find(|(other, _)| other == label)
                .map(|(_, cells)| cells)
        };
        // corebus's WebSocket subscribers land on whichever shard accepted
        // them (a browser cannot choose), so its native runs without shard
        // affinity, where there are some, are the like-for-like ones.
        let unplaced = format!("{native_label}{NO_AFFINITY_SUFFIX}");
        let native_of = |target: Target| match target {
            Target::Corebus => row(&unplaced)
                .filter(|cells| cells.contains_key(target.name()))
                .or_else(|| row(native_label)),
            _ => row(native_label),
        };
        for (name, value, format) in measures {
            let pairs = brokers.map(|target| {
                let pick = |cells: Option<&BTreeMap<&'static str, &Report>>| {
                    cells
                        .and_then(|cells| cells.get(target.name()))
                        .and_then(|run| value(run))
                };
                (pick(native_of(target)), pick(Some(cells)))
            });
            if pairs.iter().all(|(_, ws)| ws.is_none()) {
                continue;
            }
            let mut line = format!("| {native_label}: {name} |");
            for (native, ws) in pairs {
                let _ = write!(
                    line,
                    " {} | {} | {} |",
                    cell(native, format),
                    cell(ws, format),
                    ratio(ws, native)
                );
            }
            lines.push(line);
        }
    }
    if lines.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "Subscribers over WebSocket next to native ones (publishers native in both; each \
         cell the median round; ratio WebSocket ÷ native). corebus's native figures are \
         from its runs without shard affinity where there are any: its WebSocket \
         subscribers, like a browser's, land on whichever shard accepted them.\n"
    );
    let _ = writeln!(
        out,
        "| workload | corebus native | corebus WebSocket | WebSocket/native | NATS native | \
         NATS WebSocket | WebSocket/native |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|");
    for line in lines {
        let _ = writeln!(out, "{line}");
    }
    out.push('\n');
}

/// Delivered msg/s of every round of every throughput workload, per broker
/// (and shard count where corebus ran with several), in run order.
fn every_round(out: &mut String, runs: &[Report]) {
    let mut lines: Vec<(String, Vec<String>)> = Vec::new();
    for run in runs.iter().filter(|run| is_throughput(run)) {
        let shards = match (run.target, run.broker_shards) {
            (Target::Corebus, Some(1)) => ", 1 shard".to_owned(),
            (Target::Corebus, Some(shards)) => format!(", {shards} shards"),
            _ => String::new(),
        };
        let key = format!("{} | {}{shards}", workload_label(run), run.target.name());
        let value = human(run.delivered_per_sec);
        match lines.iter_mut().find(|(existing, _)| *existing == key) {
            Some((_, values)) => values.push(value),
            None => lines.push((key, vec![value])),
        }
    }
    if lines.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "Delivered messages per second of every round, in run order (the tables above use each one's median round).\n"
    );
    let _ = writeln!(out, "| workload | broker | delivered msg/s per round |");
    let _ = writeln!(out, "|---|---|---|");
    for (key, values) in lines {
        let _ = writeln!(out, "| {key} | {} |", values.join(", "));
    }
    out.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::options::Transport;
    use crate::workloads::tests::report;

    #[test]
    fn markdown_has_ratios_per_scenario() {
        let summary = Summary {
            generated: "now".into(),
            machine: BTreeMap::from([("cpus".to_owned(), "2".to_owned())]),
            runs: vec![
                Report {
                    broker_cpu_us_per_msg: Some(0.3),
                    harness_cpu_us_per_msg: Some(0.5),
                    ..report(Target::Corebus, Scenario::Pair, 2_000_000.0)
                },
                Report {
                    broker_cpu_us_per_msg: Some(1.2),
                    harness_cpu_us_per_msg: Some(1.25),
                    ..report(Target::Nats, Scenario::Pair, 1_000_000.0)
                },
                report(Target::Redis, Scenario::Pair, 500_000.0),
                report(Target::Corebus, Scenario::Latency, 20_000.0),
                report(Target::Nats, Scenario::Latency, 40_000.0),
            ],
        };
        let text = markdown(&summary);
        assert!(
            text.contains(
                "| pair, 128 B | 2.00M msg/s | 1.00M msg/s | 500.0k msg/s | 2.00× | 4.00× |"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "| latency at 10.0k msg/s, 1→16, 128 B: p50 | 20 µs | 40 µs | – | 0.50× | – |"
            ),
            "{text}"
        );
        assert!(
            text.contains("| pair, 128 B | 0.30 µs | 1.20 µs | – | 0.25× | – |"),
            "{text}"
        );
        assert!(
            text.contains("| pair, 128 B | 0.50 µs | 1.25 µs | – | 0.40× | – |"),
            "{text}"
        );
        assert!(text.contains("Every run delivered every message"));
    }

    #[test]
    fn websocket_workloads_are_shown_next_to_native_ones() {
        let ws = |target, per_sec| Report {
            subscribers_over: Some(Transport::Websocket),
            ..report(target, Scenario::Many, per_sec)
        };
        let idle = |target, over: Option<Transport>, bytes| {
            let mut report = report(target, Scenario::Connections, 1.0);
            report.subscribers_over = over;
            report.connections = Some(crate::report::ConnectionsReport {
                rss_per_connection_bytes: Some(bytes),
                ..Default::default()
            });
            report
        };
        let websocket = Some(Transport::Websocket);
        let text = markdown(&Summary {
            generated: "now".into(),
            machine: BTreeMap::new(),
            runs: vec![
                ws(Target::Corebus, 3_000_000.0),
                ws(Target::Nats, 1_200_000.0),
                report(Target::Corebus, Scenario::Many, 2_000_000.0),
                report(Target::Nats, Scenario::Many, 1_000_000.0),
                idle(Target::Corebus, websocket, 12_288.0),
                idle(Target::Corebus, None, 10_240.0),
                idle(Target::Nats, websocket, 30_720.0),
                idle(Target::Nats, None, 20_480.0),
            ],
        });
        assert!(text.starts_with("# corebus vs NATS (now)"), "{text}");
        assert!(
            text.contains("| many 16→64 over 1024 topics, 128 B: delivered msg/s | 2.00M msg/s | 3.00M msg/s | 1.50× | 1.00M msg/s | 1.20M msg/s | 1.20× |"),
            "{text}"
        );
        assert!(
            text.contains("| 1000 idle connections: broker memory per idle connection | 10.0 KiB | 12.0 KiB | 1.20× | 20.0 KiB | 30.0 KiB | 1.50× |"),
            "{text}"
        );
        assert!(
            text.contains("| many 16→64 over 1024 topics, 128 B, WebSocket subscribers | 3.00M msg/s | 1.20M msg/s | – | 2.50× | – |"),
            "{text}"
        );

        // corebus's native run without shard affinity is the one shown next
        // to its WebSocket run, and the NATS-only native row is not judged.
        let text = markdown(&Summary {
            generated: "now".into(),
            machine: BTreeMap::new(),
            runs: vec![
                ws(Target::Corebus, 3_000_000.0),
                ws(Target::Nats, 1_200_000.0),
                Report {
                    affinity: Some(false),
                    ..report(Target::Corebus, Scenario::Many, 2_500_000.0)
                },
                report(Target::Nats, Scenario::Many, 1_000_000.0),
            ],
        });
        assert!(
            text.contains("| many 16→64 over 1024 topics, 128 B: delivered msg/s | 2.50M msg/s | 3.00M msg/s | 1.20× | 1.00M msg/s | 1.20M msg/s | 1.20× |"),
            "{text}"
        );
        assert!(!text.contains("no data"), "{text}");
        assert!(
            !text.contains("| many 16→64 over 1024 topics, 128 B | – |"),
            "NATS's runs show in the variant's row only: {text}"
        );
        assert!(
            text.contains("| 1 | many 16→64 over 1024 topics, 128 B, corebus without shard affinity: delivered msg/s | 2.50M msg/s | NATS 1.00M msg/s | 2.50× | none (reference) | – |"),
            "{text}"
        );
    }

    #[test]
    fn rounds_are_summarized_by_their_median_and_listed() {
        let runs = vec![
            report(Target::Corebus, Scenario::Many, 900_000.0),
            report(Target::Nats, Scenario::Many, 500_000.0),
            report(Target::Corebus, Scenario::Many, 700_000.0),
            report(Target::Nats, Scenario::Many, 300_000.0),
            report(Target::Corebus, Scenario::Many, 800_000.0),
            report(Target::Nats, Scenario::Many, 400_000.0),
        ];
        assert_eq!(rounds(&runs), 3);
        let rows = by_workload(&runs);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].1["corebus"].delivered_per_sec, 800_000.0);
        assert_eq!(rows[0].1["nats"].delivered_per_sec, 400_000.0);
        let text = markdown(&Summary {
            generated: "now".into(),
            machine: BTreeMap::new(),
            runs,
        });
        assert!(text.contains("- rounds: up to 3 per workload"), "{text}");
        assert!(
            text.contains("| many 16→64 over 1024 topics, 128 B | 800.0k msg/s | 400.0k msg/s | – | 2.00× | – |"),
            "{text}"
        );
        assert!(
            text.contains(
                "| many 16→64 over 1024 topics, 128 B | corebus | 900.0k, 700.0k, 800.0k |"
            ),
            "{text}"
        );
    }
}
