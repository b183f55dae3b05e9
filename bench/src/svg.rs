//! The comparison picture, written by hand as SVG: grouped horizontal bars,
//! one group per workload (or percentile), one bar per broker, each group
//! scaled to its own largest value so that small and large workloads stay
//! readable side by side. Values are printed next to the bars.

use std::fmt::Write as _;

use crate::options::Scenario;
use crate::report::human;
use crate::summary::{rows_of, Row, Summary, PERCENTILES, TARGETS};
use crate::workloads::{by_workload, corebus_ran_only_as_variant};

const WIDTH: f64 = 960.0;
const BAR_X: f64 = 110.0;
const BAR_MAX: f64 = 640.0;
const BAR_HEIGHT: f64 = 16.0;
const BAR_GAP: f64 = 4.0;
const GROUP_GAP: f64 = 14.0;
const COLORS: [&str; 3] = ["#2b6cb0", "#2f855a", "#c05621"];

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// One panel: a title, then per group a label and one bar per broker
/// `shown` (the brokers the run loaded).
fn panel(
    out: &mut String,
    y: &mut f64,
    title: &str,
    groups: &[Row],
    shown: [bool; 3],
    format: &dyn Fn(f64) -> String,
) {
    if groups.is_empty() {
        return;
    }
    *y += 28.0;
    let _ = writeln!(
        out,
        r#"<text x="20" y="{y}" font-size="17" font-weight="bold">{}</text>"#,
        escape(title)
    );
    *y += 8.0;
    for (label, values) in groups {
        *y += 20.0;
        let _ = writeln!(
            out,
            r#"<text x="20" y="{y}" font-size="13" font-weight="bold">{}</text>"#,
            escape(label)
        );
        *y += 6.0;
        let largest = values.iter().flatten().copied().fold(0.0, f64::max);
        for (index, value) in values.iter().enumerate() {
            if !shown[index] {
                continue;
            }
            let top = *y;
            let text_y = top + BAR_HEIGHT - 4.0;
            let _ = writeln!(
                out,
                r#"<text x="{}" y="{text_y}" font-size="12" text-anchor="end">{}</text>"#,
                BAR_X - 8.0,
                TARGETS[index].name()
            );
            match value {
                Some(value) => {
                    let length = if largest > 0.0 {
                        (value / largest * BAR_MAX).max(1.0)
                    } else {
                        1.0
                    };
                    let _ = writeln!(
                        out,
                        r#"<rect x="{BAR_X}" y="{top}" width="{length:.1}" height="{BAR_HEIGHT}" fill="{}"/>"#,
                        COLORS[index]
                    );
                    let _ = writeln!(
                        out,
                        r#"<text x="{:.1}" y="{text_y}" font-size="12">{}</text>"#,
                        BAR_X + length + 6.0,
                        escape(&format(*value))
                    );
                }
                None => {
                    let _ = writeln!(
                        out,
                        r##"<text x="{BAR_X}" y="{text_y}" font-size="12" fill="#888">no result</text>"##
                    );
                }
            }
            *y += BAR_HEIGHT + BAR_GAP;
        }
        *y += GROUP_GAP - BAR_GAP;
    }
}

/// The picture for a comparison run.
pub fn render(summary: &Summary) -> String {
    let mut workloads = by_workload(&summary.runs);
    // A workload corebus ran only as a reference variant is drawn in the
    // variant's group, with the other brokers' runs.
    let all = workloads.clone();
    workloads.retain(|(label, _)| !corebus_ran_only_as_variant(label, &all));
    let shown = TARGETS.map(|target| summary.runs.iter().any(|run| run.target == target));
    let throughput = rows_of(&workloads, |r| {
        matches!(
            r.scenario,
            Scenario::Pair | Scenario::Fanout | Scenario::Many
        )
        .then_some(r.delivered_per_sec)
    });
    let mut latency = Vec::new();
    for (name, pick) in PERCENTILES {
        for (label, values) in rows_of(&workloads, |r| {
            (r.scenario == Scenario::Latency).then(|| pick(r))
        }) {
            latency.push((format!("{label}: {name}"), values));
        }
    }
    let memory = rows_of(&workloads, |r| {
        r.connections
            .as_ref()
            .and_then(|c| c.rss_per_connection_bytes)
    });

    let mut body = String::new();
    let mut y = 10.0;
    panel(
        &mut body,
        &mut y,
        "Delivered messages per second (higher is better)",
        &throughput,
        shown,
        &|value| format!("{} msg/s", human(value)),
    );
    panel(
        &mut body,
        &mut y,
        "Latency from intended send time, µs (lower is better)",
        &latency,
        shown,
        &|value| format!("{value:.0} µs"),
    );
    panel(
        &mut body,
        &mut y,
        "Broker memory per idle connection (lower is better)",
        &memory,
        shown,
        &|value| format!("{:.1} KiB", value / 1024.0),
    );
    y += 10.0;
    let mut lines = vec![summary.generated.clone()];
    for (key, value) in &summary.machine {
        let fact = format!("{key}: {value}");
        match lines.last_mut() {
            Some(line) if line.len() + fact.len() < 120 => {
                line.push_str(" · ");
                line.push_str(&fact);
            }
            _ => lines.push(fact),
        }
    }
    for line in lines {
        y += 15.0;
        let _ = writeln!(
            body,
            r##"<text x="20" y="{y}" font-size="11" fill="#555">{}</text>"##,
            escape(&line)
        );
    }
    let height = y + 16.0;
    format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="Helvetica, Arial, sans-serif">
<rect width="100%" height="100%" fill="white"/>
{body}</svg>
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::options::{RunOptions, Target};
    use crate::report::Report;
    use std::collections::BTreeMap;

    #[test]
    fn renders_bars_for_every_broker_the_run_loaded() {
        let run = |target, scenario| {
            let plan = RunOptions::new(target, scenario).plan().expect("valid");
            let mut report = Report::for_plan(&plan);
            report.delivered_per_sec = 1000.0;
            report
        };
        let summary = |runs| Summary {
            generated: "today".into(),
            machine: BTreeMap::new(),
            runs,
        };
        let svg = render(&summary(vec![
            run(Target::Corebus, Scenario::Fanout),
            run(Target::Nats, Scenario::Fanout),
            run(Target::Redis, Scenario::Pair),
        ]));
        assert!(svg.starts_with("<svg"));
        assert_eq!(svg.matches("<rect x=").count(), 3);
        assert_eq!(svg.matches("no result").count(), 3, "{svg}");
        assert!(svg.contains("fanout 1→64, 128 B"));
        // Without a Redis run at all, no Redis bars or gaps.
        let svg = render(&summary(vec![
            run(Target::Corebus, Scenario::Fanout),
            run(Target::Nats, Scenario::Fanout),
        ]));
        assert_eq!(svg.matches("<rect x=").count(), 2);
        assert!(
            !svg.contains(">redis<") && !svg.contains("no result"),
            "{svg}"
        );
    }
}
