//! What one benchmark run does: the command-line options and the plan they
//! resolve to, with each scenario's defaults filled in and checked.

use std::time::Duration;

use clap::{Args, ValueEnum};

use crate::payload::HEADER_LEN;
use crate::BenchError;

/// The broker under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// corebus, through the corebus-client crate.
    Corebus,
    /// NATS core pub/sub, through the async-nats crate.
    Nats,
    /// Redis pub/sub, through the redis crate.
    Redis,
}

impl Target {
    /// Where the broker listens when `--url` is not given.
    pub fn default_url(self) -> &'static str {
        match self {
            Target::Corebus => "127.0.0.1:7400",
            Target::Nats => "nats://127.0.0.1:4222",
            Target::Redis => "redis://127.0.0.1:6379",
        }
    }

    /// The name used in reports.
    pub fn name(self) -> &'static str {
        match self {
            Target::Corebus => "corebus",
            Target::Nats => "nats",
            Target::Redis => "redis",
        }
    }
}

/// The workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    /// One publisher, one subscriber, one topic, as fast as possible.
    Pair,
    /// One publisher, many subscribers of one topic.
    Fanout,
    /// Many publishers and subscribers over many topics; every publisher
    /// sends to every topic in turn.
    Many,
    /// Publishers at a fixed open-loop rate; latency from intended send time.
    Latency,
    /// Many idle subscriber connections, then one message to each.
    Connections,
}

impl Scenario {
    /// The name used in reports.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Pair => "pair",
            Scenario::Fanout => "fanout",
            Scenario::Many => "many",
            Scenario::Latency => "latency",
            Scenario::Connections => "connections",
        }
    }
}

/// Options of one run (`corebus-bench --target ... --scenario ...`).
#[derive(Debug, Clone, Args)]
pub struct RunOptions {
    /// Broker to load.
    #[arg(long, value_enum, default_value_t = Target::Corebus)]
    pub target: Target,
    /// Broker address (loopback only): `127.0.0.1:7400` for corebus,
    /// `nats://127.0.0.1:4222`, `redis://127.0.0.1:6379`; default per target.
    #[arg(long)]
    pub url: Option<String>,
    /// Workload to run.
    #[arg(long, value_enum, default_value_t = Scenario::Pair)]
    pub scenario: Scenario,
    /// Payload size in bytes (at least 24: the harness's header).
    #[arg(long, default_value_t = 128)]
    pub size: usize,
    /// Seconds of publishing (the drain afterwards is not counted here).
    #[arg(long, default_value_t = 5.0)]
    pub duration: f64,
    /// Publisher connections [pair, fanout: 1; many: 4; latency: 1;
    /// connections: 1].
    #[arg(long)]
    pub publishers: Option<usize>,
    /// Subscriber connections [pair: 1; fanout: 16; many: 4; latency: 1;
    /// connections: 1000].
    #[arg(long)]
    pub subscribers: Option<usize>,
    /// Topics [many: 4; connections: one per subscriber; others: 1].
    /// Subscriber i reads topic i mod topics.
    #[arg(long)]
    pub topics: Option<usize>,
    /// Messages per second over all publishers (latency scenario only).
    #[arg(long, default_value_t = 10_000)]
    pub rate: u64,
    /// Most messages each publisher sends, whatever the duration.
    #[arg(long)]
    pub messages: Option<u64>,
    /// Most messages a topic's publishers may be ahead of its slowest
    /// subscriber [default: 2 MiB worth of payloads, 64 to 16384]. Keeps every
    /// broker below its slow-consumer limits so throughput is sustainable.
    #[arg(long)]
    pub window: Option<u64>,
    /// Broker process id, for resident memory (connections scenario).
    #[arg(long)]
    pub broker_pid: Option<u32>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// A run's options with every default resolved and checked.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Broker under test.
    pub target: Target,
    /// Its address.
    pub url: String,
    /// Workload.
    pub scenario: Scenario,
    /// Payload bytes.
    pub size: usize,
    /// Publishing time limit.
    pub duration: Duration,
    /// Publisher connections.
    pub publishers: usize,
    /// Subscriber connections.
    pub subscribers: usize,
    /// Topics.
    pub topics: usize,
    /// Total messages per second (latency scenario).
    pub rate: u64,
    /// Per-publisher message limit.
    pub messages: u64,
    /// Flow-control window in messages per topic.
    pub window: u64,
    /// Broker pid for memory readings.
    pub broker_pid: Option<u32>,
}

/// Publishers never send more than this many messages each, so every load
/// loop is bounded in count as well as in time.
pub const MAX_MESSAGES_PER_PUBLISHER: u64 = 1 << 32;
/// Longest run accepted.
const MAX_DURATION_S: f64 = 3600.0;
/// Bytes of payload a topic may have in flight under flow control.
const WINDOW_BYTES: u64 = 2 << 20;

impl RunOptions {
    /// Options for `target` and `scenario` with every other setting at its
    /// default (what the smoke test and callers start from).
    pub fn new(target: Target, scenario: Scenario) -> RunOptions {
        RunOptions {
            target,
            url: None,
            scenario,
            size: 128,
            duration: 5.0,
            publishers: None,
            subscribers: None,
            topics: None,
            rate: 10_000,
            messages: None,
            window: None,
            broker_pid: None,
            json: false,
        }
    }

    /// Fills in the scenario's defaults and checks the result.
    pub fn plan(&self) -> Result<Plan, BenchError> {
        let invalid = |reason: String| Err(BenchError::Options(reason));
        let (publishers, subscribers, topics) = match self.scenario {
            Scenario::Pair => (1, 1, 1),
            Scenario::Fanout => (1, 16, 1),
            Scenario::Many => (4, 4, 4),
            Scenario::Latency => (1, 1, 1),
            Scenario::Connections => {
                let subscribers = self.subscribers.unwrap_or(1000);
                (1, subscribers, subscribers)
            }
        };
        let publishers = self.publishers.unwrap_or(publishers);
        let subscribers = self.subscribers.unwrap_or(subscribers);
        let topics = self.topics.unwrap_or(topics);
        if publishers == 0 || topics == 0 {
            return invalid("--publishers and --topics must be at least 1".into());
        }
        if subscribers == 0 {
            return invalid("--subscribers must be at least 1".into());
        }
        if self.scenario == Scenario::Pair && (publishers, subscribers, topics) != (1, 1, 1) {
            return invalid("the pair scenario is one publisher, one subscriber, one topic; use `many` for more".into());
        }
        if self.size < HEADER_LEN {
            return invalid(format!(
                "--size {} is too small: every payload carries a {HEADER_LEN}-byte header",
                self.size
            ));
        }
        if !(self.duration > 0.0 && self.duration <= MAX_DURATION_S) {
            return invalid(format!(
                "--duration must be between 0 and {MAX_DURATION_S} seconds"
            ));
        }
        if self.scenario == Scenario::Latency && self.rate == 0 {
            return invalid("--rate must be at least 1 message per second".into());
        }
        let messages = self
            .messages
            .unwrap_or(MAX_MESSAGES_PER_PUBLISHER)
            .min(MAX_MESSAGES_PER_PUBLISHER);
        let window = self
            .window
            .unwrap_or_else(|| (WINDOW_BYTES / self.size as u64).clamp(64, 16384))
            .max(1);
        Ok(Plan {
            target: self.target,
            url: self
                .url
                .clone()
                .unwrap_or_else(|| self.target.default_url().to_owned()),
            scenario: self.scenario,
            size: self.size,
            duration: Duration::from_secs_f64(self.duration),
            publishers,
            subscribers,
            topics,
            rate: self.rate,
            messages,
            window,
            broker_pid: self.broker_pid,
        })
    }
}
