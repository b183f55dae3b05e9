//! A run's results: the JSON object (`--json`) and the readable table.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::options::{Plan, Scenario, Target, Transport};

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencyUs {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest recorded.
    pub max: f64,
}

impl LatencyUs {
    /// Percentiles of a histogram recorded in nanoseconds (all zero when it is
    /// empty).
    pub fn from_ns(histogram: &Histogram<u64>) -> LatencyUs {
        if histogram.is_empty() {
            return LatencyUs::default();
        }
        let at = |quantile: f64| histogram.value_at_quantile(quantile) as f64 / 1000.0;
        LatencyUs {
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
            p999: at(0.999),
            max: histogram.max() as f64 / 1000.0,
        }
    }
}

/// Extra results of the connections scenario.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ConnectionsReport {
    /// Seconds to open and subscribe every connection.
    pub connect_s: f64,
    /// Broker resident memory before the connections, KiB (with --broker-pid).
    pub rss_before_kib: Option<u64>,
    /// Broker resident memory with every connection subscribed, KiB.
    pub rss_after_kib: Option<u64>,
    /// (after - before) / connections, bytes.
    pub rss_per_connection_bytes: Option<f64>,
    /// Milliseconds from the first publish until every connection had its
    /// message.
    pub deliver_all_ms: f64,
    /// Connections opened and subscribed per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connects_per_s: Option<f64>,
    /// Over topics, the time from a topic's publish until its last
    /// subscriber had the message, milliseconds: the median...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic_last_p50_ms: Option<f64>,
    /// ... and the 99th percentile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic_last_p99_ms: Option<f64>,
}

/// The result of one run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Broker.
    pub target: Target,
    /// Workload.
    pub scenario: Scenario,
    /// Publisher connections.
    pub publishers: usize,
    /// Subscriber connections.
    pub subscribers: usize,
    /// Topics.
    pub topics: usize,
    /// Payload bytes.
    pub size: usize,
    /// Seconds from the first publish to the last message received.
    pub duration_s: f64,
    /// Messages published.
    pub published: u64,
    /// Deliveries expected (each message once per subscriber of its topic).
    pub expected: u64,
    /// Distinct deliveries made.
    pub delivered: u64,
    /// Deliveries missing.
    pub lost: u64,
    /// Duplicated, reordered or misrouted deliveries.
    pub disorder: u64,
    /// Messages client libraries reported dropping, and connections lost.
    pub client_incidents: u64,
    /// Deliveries per second.
    pub delivered_per_sec: f64,
    /// Delivered payload megabytes (10^6 bytes) per second.
    pub delivered_mb_per_sec: f64,
    /// Receive time minus (intended) send time, microseconds.
    pub latency_us: LatencyUs,
    /// Target rate in messages per second (latency scenario).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<u64>,
    /// Flow-control window in messages per topic (throughput scenarios).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<u64>,
    /// Connections scenario details.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connections: Option<ConnectionsReport>,
    /// The broker's shard count as given with `--broker-shards` (corebus).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broker_shards: Option<usize>,
    /// corebus only: whether publishes asked for (and the harness checked)
    /// acknowledgements (`--acks`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acks: Option<bool>,
    /// corebus only: whether connections with one topic asked for the shard
    /// that owns it (off with `--no-affinity`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<bool>,
    /// CPU time (user and system) the broker process spent per delivered
    /// message, microseconds, from the first publish to the last delivery
    /// (with `--broker-pid`; throughput and latency scenarios).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broker_cpu_us_per_msg: Option<f64>,
    /// The same for this harness process: its publishers, subscribers and
    /// the broker's client library they use (with `--target raw`, also the
    /// relay, which runs in this process).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub harness_cpu_us_per_msg: Option<f64>,
    /// Whether the load came from the lean generator (`--lean`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lean: Option<bool>,
    /// How the subscribers connected, when not natively (`websocket` with
    /// `--subscribers-over websocket`; absent for native subscribers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscribers_over: Option<Transport>,
    /// The number of nodes the subscribers spread over
    /// (`--subscriber-urls`; absent: one broker).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<usize>,
    /// What the run's `--variant` said about its set-up (a row of its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    /// With `--compress`: the bytes a payload of the run takes compressed,
    /// as the publishers compress it (the mean over a sample), that is what
    /// the broker carries per message instead of `size`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compressed_size: Option<usize>,
}

/// The mean compressed size of a sample of the run's payloads, compressed
/// as `Compression::zstd()` does (level 3; a payload it does not shrink
/// counts whole).
fn compressed_size(plan: &Plan) -> usize {
    const SAMPLE: usize = 32;
    let mut writer = crate::payload::PayloadWriter::of(plan.size, plan.payload);
    let total: usize = (0..SAMPLE as u64)
        .map(|counter| {
            let payload = writer.write(&crate::payload::Header {
                publisher: 0,
                topic: 0,
                counter,
                sent_ns: counter,
            });
            match zstd::bulk::compress(&payload, corebus_client::DEFAULT_ZSTD_LEVEL) {
                Ok(compressed)
                    if compressed.len() < payload.len()
                        && payload.len() >= corebus_client::DEFAULT_MIN_SIZE =>
                {
                    compressed.len()
                }
                _ => payload.len(),
            }
        })
        .sum();
    total / SAMPLE
}

impl Report {
    /// An empty report for `plan`, to be filled in by the scenario.
    pub fn for_plan(plan: &Plan) -> Report {
        Report {
            target: plan.target,
            scenario: plan.scenario,
            publishers: plan.publishers,
            subscribers: plan.subscribers,
            topics: plan.topics,
            size: plan.size,
            duration_s: 0.0,
            published: 0,
            expected: 0,
            delivered: 0,
            lost: 0,
            disorder: 0,
            client_incidents: 0,
            delivered_per_sec: 0.0,
            delivered_mb_per_sec: 0.0,
            latency_us: LatencyUs::default(),
            rate: None,
            window: None,
            connections: None,
            broker_shards: plan.broker_shards,
            acks: (plan.target == Target::Corebus).then_some(plan.acks),
            affinity: (plan.target == Target::Corebus).then_some(plan.affinity),
            broker_cpu_us_per_msg: None,
            harness_cpu_us_per_msg: None,
            lean: None,
            subscribers_over: match plan.subscribers_over() {
                Transport::Native => None,
                transport => Some(transport),
            },
            nodes: (!plan.subscriber_urls.is_empty()).then_some(plan.subscriber_urls.len()),
            variant: plan.variant.clone(),
            compressed_size: plan.compress.then(|| compressed_size(plan)),
        }
    }

    /// Sets the rates from `delivered`, `size` and `duration_s`.
    pub fn compute_rates(&mut self) {
        if self.duration_s > 0.0 {
            self.delivered_per_sec = self.delivered as f64 / self.duration_s;
            self.delivered_mb_per_sec =
                self.delivered as f64 * self.size as f64 / self.duration_s / 1e6;
        }
    }

    /// Why this run must be reported as failed, if it must: any loss,
    /// disorder or client-side drop, or nothing delivered at all.
    pub fn failure(&self) -> Option<String> {
        let mut problems = Vec::new();
        if self.lost > 0 {
            problems.push(format!(
                "{} of {} deliveries lost",
                self.lost, self.expected
            ));
        }
        if self.disorder > 0 {
            problems.push(format!(
                "{} deliveries duplicated, reordered or misrouted",
                self.disorder
            ));
        }
        if self.client_incidents > 0 {
            problems.push(format!(
                "{} client-side drops or disconnects",
                self.client_incidents
            ));
        }
        if self.delivered == 0 {
            problems.push("nothing was delivered".into());
        }
        (!problems.is_empty()).then(|| problems.join("; "))
    }

    /// The report as a small aligned table.
    pub fn table(&self) -> String {
        let mut rows: Vec<(&str, String)> = vec![
            ("target", self.target.name().into()),
            ("scenario", self.scenario.name().into()),
            (
                "shape",
                format!(
                    "{} pub, {} sub, {} topics, {} B payloads",
                    self.publishers, self.subscribers, self.topics, self.size
                ),
            ),
            ("duration", format!("{:.2} s", self.duration_s)),
            ("published", self.published.to_string()),
            (
                "delivered",
                format!("{} of {} expected", self.delivered, self.expected),
            ),
            ("lost", self.lost.to_string()),
            (
                "throughput",
                format!(
                    "{} msg/s, {:.1} MB/s delivered",
                    human(self.delivered_per_sec),
                    self.delivered_mb_per_sec
                ),
            ),
            (
                "latency (us)",
                if self.lean == Some(true) {
                    "not measured (lean generator)".into()
                } else {
                    format!(
                        "p50 {:.1}  p90 {:.1}  p99 {:.1}  p99.9 {:.1}  max {:.1}",
                        self.latency_us.p50,
                        self.latency_us.p90,
                        self.latency_us.p99,
                        self.latency_us.p999,
                        self.latency_us.max
                    )
                },
            ),
        ];
        let cpu = [
            ("broker", self.broker_cpu_us_per_msg),
            ("harness", self.harness_cpu_us_per_msg),
        ]
        .into_iter()
        .filter_map(|(who, us)| Some(format!("{who} {:.3} us", us?)))
        .collect::<Vec<_>>();
        if !cpu.is_empty() {
            rows.push(("CPU per message", cpu.join(", ")));
        }
        if let Some(bytes) = self.compressed_size {
            rows.push((
                "compressed payload",
                format!("{bytes} bytes of {} (zstd level 3)", self.size),
            ));
        }
        if let Some(rate) = self.rate {
            rows.push(("rate", format!("{rate} msg/s, open loop")));
        }
        if let Some(shards) = self.broker_shards {
            rows.push(("broker shards", shards.to_string()));
        }
        if let Some(acks) = self.acks {
            let how = if acks {
                "acknowledged, every ack checked"
            } else {
                "fire-and-forget"
            };
            rows.push(("publishes", how.to_owned()));
        }
        if self.lean == Some(true) {
            rows.push((
                "load",
                "lean generator: wire protocol, checked by sequence numbers".into(),
            ));
        } else if let Some(affinity) = self.affinity {
            let how = match (affinity, self.subscribers_over) {
                (true, Some(Transport::Websocket)) => {
                    "one-topic native connections on the topic's shard, WebSocket ones \
                     where the listener puts them"
                }
                (true, _) => "one-topic connections on the topic's shard",
                (false, _) => "where the listeners put them",
            };
            rows.push(("connections", how.to_owned()));
        }
        if self.subscribers_over == Some(Transport::Websocket) {
            rows.push((
                "subscribers",
                "over WebSocket (publishers native)".to_owned(),
            ));
        }
        if let Some(nodes) = self.nodes {
            rows.push((
                "cluster",
                format!("subscribers spread over {nodes} nodes, publishers on the first"),
            ));
        }
        if let Some(variant) = &self.variant {
            rows.push(("variant", variant.clone()));
        }
        if let Some(window) = self.window {
            let unit = if self.lean == Some(true) {
                "deliveries in flight over the whole run"
            } else {
                "messages per topic"
            };
            rows.push(("window", format!("{window} {unit}")));
        }
        if let Some(connections) = &self.connections {
            rows.push(("connect", format!("{:.2} s", connections.connect_s)));
            if let (Some(before), Some(after), Some(per)) = (
                connections.rss_before_kib,
                connections.rss_after_kib,
                connections.rss_per_connection_bytes,
            ) {
                rows.push((
                    "broker memory",
                    format!("{before} KiB -> {after} KiB, {per:.0} B per connection"),
                ));
            }
            rows.push((
                "deliver all",
                format!("{:.1} ms", connections.deliver_all_ms),
            ));
        }
        if self.disorder > 0 || self.client_incidents > 0 {
            rows.push((
                "problems",
                format!(
                    "{} disorder, {} client incidents",
                    self.disorder, self.client_incidents
                ),
            ));
        }
        let width = rows.iter().map(|(name, _)| name.len()).max().unwrap_or(0);
        rows.iter()
            .map(|(name, value)| format!("{name:<width$}  {value}\n"))
            .collect()
    }
}

/// 1234567.0 → "1.23M", 12345.0 → "12.3k".
pub fn human(value: f64) -> String {
    if value >= 1e6 {
        format!("{:.2}M", value / 1e6)
    } else if value >= 1e3 {
        format!("{:.1}k", value / 1e3)
    } else {
        format!("{value:.0}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_has_the_documented_fields() {
        let plan = crate::RunOptions::new(Target::Nats, Scenario::Pair)
            .plan()
            .expect("defaults are valid");
        let mut report = Report::for_plan(&plan);
        report.delivered = 10;
        report.duration_s = 2.0;
        report.compute_rates();
        let value = serde_json::to_value(&report).expect("serializes");
        for field in [
            "target",
            "scenario",
            "publishers",
            "subscribers",
            "topics",
            "size",
            "duration_s",
            "published",
            "delivered",
            "lost",
            "delivered_per_sec",
            "delivered_mb_per_sec",
        ] {
            assert!(value.get(field).is_some(), "missing {field}");
        }
        for field in ["p50", "p90", "p99", "p999", "max"] {
            assert!(value["latency_us"].get(field).is_some(), "missing {field}");
        }
        assert_eq!(value["target"], "nats");
        assert_eq!(value["delivered_per_sec"], 5.0);
        let back: Report = serde_json::from_value(value).expect("parses back");
        assert_eq!(back, report);
        assert!(report.failure().is_none());
    }

    #[test]
    fn loss_is_a_failure() {
        let plan = crate::RunOptions::new(Target::Corebus, Scenario::Pair)
            .plan()
            .expect("defaults are valid");
        let mut report = Report::for_plan(&plan);
        report.delivered = 9;
        report.expected = 10;
        report.lost = 1;
        let failure = report.failure().expect("a loss fails");
        assert!(failure.contains("1 of 10 deliveries lost"), "{failure}");
    }
}
