//! What one benchmark run does: the command-line options and the plan they
//! resolve to, with each scenario's defaults filled in and checked.

use std::time::Duration;

use clap::{Args, ValueEnum};

use crate::payload::{PayloadKind, HEADER_LEN};
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
    /// No broker: the harness's own loopback TCP relay (see [`crate::relay`]),
    /// pair scenario only. The baseline for what one hop through the kernel's
    /// loopback costs without any broker logic.
    Raw,
}

impl Target {
    /// Where the broker listens when `--url` is not given.
    pub fn default_url(self) -> &'static str {
        match self {
            Target::Corebus => "127.0.0.1:7400",
            Target::Nats => "nats://127.0.0.1:4222",
            Target::Redis => "redis://127.0.0.1:6379",
            // Where the harness's own relay listens: any free loopback port.
            Target::Raw => "127.0.0.1:0",
        }
    }

    /// The name used in reports.
    pub fn name(self) -> &'static str {
        match self {
            Target::Corebus => "corebus",
            Target::Nats => "nats",
            Target::Redis => "redis",
            Target::Raw => "raw",
        }
    }
}

/// How subscriber connections reach the broker. Publishers always use the
/// native protocol.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// The broker's own protocol over TCP, through its client library.
    #[default]
    Native,
    /// The broker's WebSocket listener (`--ws-url`), as a browser would
    /// reach it: corebus's `corebus.v1` subprotocol (native frames in binary
    /// messages) or NATS's text protocol over WebSocket. corebus and NATS
    /// only.
    Websocket,
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
    /// sends to every topic in turn. With more topics than subscribers, each
    /// subscriber connection holds several subscriptions (see
    /// [`Plan::subscription`]).
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
    /// For `raw`, where the harness's own relay listens (`127.0.0.1:0`: any
    /// free port).
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
    /// Publisher connections [pair, fanout: 1; many: 16; latency: 1;
    /// connections: 1].
    #[arg(long)]
    pub publishers: Option<usize>,
    /// Subscriber connections [pair: 1; fanout: 64; many: 64; latency: 16;
    /// connections: 1000].
    #[arg(long)]
    pub subscribers: Option<usize>,
    /// Topics [many: 1024; connections: one per subscriber; others: 1].
    /// With at most as many topics as subscribers, subscriber i reads topic
    /// i mod topics; with more, subscriber i reads every topic t with
    /// t mod subscribers = i.
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
    /// Broker process id, for its resident memory (connections scenario) and
    /// its CPU time per delivered message (the other scenarios).
    #[arg(long)]
    pub broker_pid: Option<u32>,
    /// Shards the broker was started with (corebus `--shards`). Only
    /// recorded in the report, so that a summary can tell a scaling run
    /// (`--shards 1`) from the main one.
    #[arg(long)]
    pub broker_shards: Option<usize>,
    /// corebus only: publish with the ack flag and check every
    /// acknowledgement (up to 4096 awaited at once). Without it, corebus
    /// publishes fire-and-forget, as the NATS driver does.
    #[arg(long)]
    pub acks: bool,
    /// corebus only: connect wherever the broker's listeners put a
    /// connection. Without it, a corebus connection that uses one topic (a
    /// pair or fanout publisher, a pair, fanout or latency subscriber) asks
    /// for the shard that owns it (`ClientConfig::topic_affinity`).
    #[arg(long)]
    pub no_affinity: bool,
    /// corebus only, `pair`, `fanout` and `many`: load with the lean
    /// generator (see the `lean` module), which speaks the wire protocol
    /// itself and checks delivery by sequence numbers only, so that the
    /// harness takes little of the machine's CPU. Throughput and CPU only,
    /// no latency; for measuring how the broker scales with its shards.
    #[arg(long)]
    pub lean: bool,
    /// How subscriber connections reach the broker: `native`, or
    /// `websocket` (corebus and NATS: the broker's WebSocket listener at
    /// `--ws-url`). Publishers always connect natively to `--url`.
    #[arg(long, value_enum, default_value_t = Transport::Native)]
    pub subscribers_over: Transport,
    /// The broker's WebSocket URL (loopback only), for `--subscribers-over
    /// websocket`: `ws://127.0.0.1:7401/v1/ws` for a corebus started with
    /// `--ws-listen 127.0.0.1:7401`, `ws://127.0.0.1:4223` for a nats-server
    /// whose configuration has `websocket { listen: "127.0.0.1:4223",
    /// no_tls: true }`.
    #[arg(long)]
    pub ws_url: Option<String>,
    /// Native subscribers spread over these addresses, comma-separated
    /// (subscriber connection i connects to the (i mod n)-th): the nodes of
    /// a cluster, corebus or NATS. Publishers connect to `--url`. Empty:
    /// every subscriber connects to `--url`.
    #[arg(long, value_delimiter = ',')]
    pub subscriber_urls: Vec<String>,
    /// corebus clusters (with `--subscriber-urls`): the publishers connect
    /// to the node that owns the first topic (`owner`), or to another of the
    /// subscriber addresses (`other`), rather than to `--url`; the run is
    /// labelled accordingly. The routing tier's cost is the difference.
    #[arg(long, value_enum)]
    pub publisher_on: Option<PublisherOn>,
    /// A few words on the run's set-up that its workload label carries
    /// (say, "publisher on the owner node"): runs with different variants
    /// are rows of their own in a summary.
    #[arg(long)]
    pub variant: Option<String>,
    /// What the payloads carry after their header: `filler` (one byte
    /// repeated) or `json` (rows of JSON that compress as real data does).
    #[arg(long, value_enum, default_value_t = PayloadKind::Filler)]
    pub payload: PayloadKind,
    /// corebus native publishers only: compress every payload with zstd
    /// (`Compression::zstd()`: level 3, from 1 KiB); the subscribers
    /// decompress. Use with `--payload json` and a large `--size`.
    #[arg(long)]
    pub compress: bool,
    /// corebus only: before the run, one more client holds this many
    /// pattern subscriptions that match none of the run's topics
    /// (`idle-N/*`, `*/idle-N`, `idle/N/>`, in turn), so that every publish
    /// is matched against them: what patterns cost a broker that does not
    /// deliver to them.
    #[arg(long, default_value_t = 0)]
    pub idle_patterns: usize,
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
    /// Broker pid for memory and CPU readings.
    pub broker_pid: Option<u32>,
    /// The broker's shard count, as told (reported only).
    pub broker_shards: Option<usize>,
    /// corebus publishes ask for acknowledgements.
    pub acks: bool,
    /// corebus connections with one topic ask for its owner shard.
    pub affinity: bool,
    /// Load with the lean generator.
    pub lean: bool,
    /// The subscribers' WebSocket URL, when they connect over WebSocket
    /// (`--subscribers-over websocket`); `None`: native subscribers.
    pub ws_url: Option<String>,
    /// The addresses subscriber connections spread over (`--subscriber-urls`);
    /// empty: `url`.
    pub subscriber_urls: Vec<String>,
    /// The run's `--variant` (or what `--publisher-on` says).
    pub variant: Option<String>,
    /// Where the publishers connect in a corebus cluster.
    pub publisher_on: Option<PublisherOn>,
    /// What the payloads carry after their header.
    pub payload: PayloadKind,
    /// corebus publishers compress their payloads (zstd).
    pub compress: bool,
    /// Pattern subscriptions held beside the run (corebus).
    pub idle_patterns: usize,
}

/// Where the publishers of a corebus cluster run connect (`--publisher-on`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PublisherOn {
    /// The node that owns the first topic.
    Owner,
    /// Another node than that one.
    Other,
}

impl PublisherOn {
    /// The words a run's label carries.
    pub fn variant(self) -> &'static str {
        match self {
            PublisherOn::Owner => "publisher on the owner node",
            PublisherOn::Other => "publisher on another node",
        }
    }
}

impl Plan {
    /// The address subscriber connection `index` connects to, when they
    /// spread over several.
    pub fn subscriber_url(&self, index: usize) -> &str {
        match self.subscriber_urls.len() {
            0 => &self.url,
            count => &self.subscriber_urls[index % count],
        }
    }
}

/// Publishers never send more than this many messages each, so every load
/// loop is bounded in count as well as in time.
pub const MAX_MESSAGES_PER_PUBLISHER: u64 = 1 << 32;
/// Longest run accepted.
const MAX_DURATION_S: f64 = 3600.0;
/// Bytes of payload a topic may have in flight under flow control.
const WINDOW_BYTES: u64 = 2 << 20;

impl RunOptions {
    /// The label a run with non-default payloads carries, so that a
    /// summary keeps it apart from the filler runs.
    fn payload_variant(&self) -> Option<String> {
        if self.idle_patterns > 0 {
            return Some(format!("{} idle patterns", self.idle_patterns));
        }
        match (self.payload, self.compress) {
            (PayloadKind::Filler, false) => None,
            (PayloadKind::Filler, true) => Some("zstd-compressed filler".into()),
            (PayloadKind::Json, false) => Some("JSON".into()),
            (PayloadKind::Json, true) => Some("JSON, zstd-compressed".into()),
        }
    }

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
            broker_shards: None,
            acks: false,
            no_affinity: false,
            lean: false,
            subscribers_over: Transport::Native,
            ws_url: None,
            subscriber_urls: Vec::new(),
            variant: None,
            publisher_on: None,
            payload: PayloadKind::Filler,
            compress: false,
            idle_patterns: 0,
            json: false,
        }
    }

    /// Fills in the scenario's defaults and checks the result.
    pub fn plan(&self) -> Result<Plan, BenchError> {
        let invalid = |reason: String| Err(BenchError::Options(reason));
        let (publishers, subscribers, topics) = match self.scenario {
            Scenario::Pair => (1, 1, 1),
            Scenario::Fanout => (1, 64, 1),
            Scenario::Many => (16, 64, 1024),
            Scenario::Latency => (1, 16, 1),
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
        let one_to_one = (publishers, subscribers, topics) == (1, 1, 1);
        if self.target == Target::Raw
            && !(self.scenario == Scenario::Pair
                || self.scenario == Scenario::Latency && one_to_one)
        {
            return invalid(
                "the raw baseline relays one publisher to one subscriber: pair, or latency with \
                 --publishers 1 --subscribers 1 --topics 1"
                    .into(),
            );
        }
        if self.no_affinity && self.target != Target::Corebus {
            return invalid(format!(
                "--no-affinity is for corebus only: the {} driver has no shards to choose",
                self.target.name()
            ));
        }
        if self.acks && self.target != Target::Corebus {
            return invalid(format!(
                "--acks is for corebus only: the {} driver publishes as its client library does",
                self.target.name()
            ));
        }
        if self.lean
            && (self.target != Target::Corebus
                || !matches!(
                    self.scenario,
                    Scenario::Pair | Scenario::Fanout | Scenario::Many
                )
                || self.acks)
        {
            return invalid(
                "--lean speaks corebus's protocol with fire-and-forget publishes: \
                 corebus target, pair, fanout or many scenario, without --acks"
                    .into(),
            );
        }
        let ws_url = match self.subscribers_over {
            Transport::Native => {
                if self.ws_url.is_some() {
                    return invalid(
                        "--ws-url is for --subscribers-over websocket (native subscribers use --url)"
                            .into(),
                    );
                }
                None
            }
            Transport::Websocket => {
                if !matches!(self.target, Target::Corebus | Target::Nats) || self.lean {
                    return invalid(format!(
                        "--subscribers-over websocket is for corebus and NATS (not {}{}): \
                         the brokers with a WebSocket listener, loaded through the main harness",
                        self.target.name(),
                        if self.lean { " with --lean" } else { "" }
                    ));
                }
                let Some(url) = &self.ws_url else {
                    return invalid(
                        "--subscribers-over websocket needs --ws-url (the broker's WebSocket \
                         listener, e.g. ws://127.0.0.1:7401/v1/ws)"
                            .into(),
                    );
                };
                if !url.starts_with("ws://") {
                    return invalid(format!(
                        "--ws-url {url}: a plain ws:// URL is expected (no TLS on loopback)"
                    ));
                }
                Some(url.clone())
            }
        };
        if !self.subscriber_urls.is_empty()
            && (!matches!(self.target, Target::Corebus | Target::Nats)
                || self.lean
                || self.ws_url.is_some()
                || self.scenario == Scenario::Connections)
        {
            return invalid(
                "--subscriber-urls spreads native subscribers over the nodes of a corebus or \
                 NATS cluster (pair, fanout, many or latency, without --lean or WebSocket)"
                    .into(),
            );
        }
        if self.publisher_on.is_some()
            && (self.target != Target::Corebus || self.subscriber_urls.len() < 2)
        {
            return invalid(
                "--publisher-on is for a corebus cluster: --subscriber-urls with its nodes".into(),
            );
        }
        if self.scenario == Scenario::Connections && topics > subscribers {
            return invalid(
                "the connections scenario holds one subscription per connection: \
                 --topics must not exceed --subscribers"
                    .into(),
            );
        }
        if self.idle_patterns > 0 && self.target != Target::Corebus {
            return invalid("--idle-patterns is for corebus".into());
        }
        if self.compress && (self.target != Target::Corebus || self.lean) {
            return invalid(
                "--compress is for corebus publishers through the client (not --lean)".into(),
            );
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
        // The window bounds bytes in flight per subscriber connection, so a
        // connection holding k subscriptions gets 1/k of it per topic: the
        // many scenario's 16 topics per connection must not queue 16 windows
        // at one subscriber (Redis cuts pub/sub clients off at 32 MiB).
        let per_connection = topics.div_ceil(subscribers).max(1) as u64;
        let window = self
            .window
            .unwrap_or_else(|| (WINDOW_BYTES / self.size as u64 / per_connection).clamp(64, 16384))
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
            broker_shards: self.broker_shards,
            acks: self.acks,
            affinity: !self.no_affinity,
            lean: self.lean,
            ws_url,
            subscriber_urls: self.subscriber_urls.clone(),
            variant: self
                .publisher_on
                .map(|place| place.variant().to_owned())
                .or_else(|| self.variant.clone())
                .or_else(|| self.payload_variant()),
            publisher_on: self.publisher_on,
            payload: self.payload,
            compress: self.compress,
            idle_patterns: self.idle_patterns,
        })
    }
}

/// One subscription of a run: which connection holds it, which topic it
/// reads, and its index among that topic's subscriptions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubscriptionSlot {
    /// Subscriber connection.
    pub connection: usize,
    /// Topic index.
    pub topic: usize,
    /// Index among the topic's subscriptions (flow-control slot).
    pub slot: usize,
}

impl Plan {
    /// How the subscribers connect.
    pub fn subscribers_over(&self) -> Transport {
        if self.ws_url.is_some() {
            Transport::Websocket
        } else {
            Transport::Native
        }
    }

    /// Subscriptions in all: one per subscriber connection, or one per topic
    /// when there are more topics than connections.
    pub fn subscriptions(&self) -> usize {
        self.subscribers.max(self.topics)
    }

    /// Subscription `index` (below [`Plan::subscriptions`]) is held by
    /// connection `index mod subscribers` and reads topic `index mod topics`.
    ///
    /// With at most as many topics as subscribers, connection i reads topic
    /// i mod topics (several connections may share a topic). With more
    /// topics, every topic has exactly one subscription and connection i
    /// holds topics i, i + subscribers, i + 2 subscribers, ... (16 pub / 64
    /// sub / 1024 topics: 16 topics per connection).
    pub fn subscription(&self, index: usize) -> SubscriptionSlot {
        SubscriptionSlot {
            connection: index % self.subscribers,
            topic: index % self.topics,
            slot: index / self.topics,
        }
    }

    /// Subscriptions of topic `topic`.
    pub fn subscriptions_of(&self, topic: usize) -> usize {
        (topic..self.subscriptions()).step_by(self.topics).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(scenario: Scenario, publishers: usize, subscribers: usize, topics: usize) -> Plan {
        let mut options = RunOptions::new(Target::Corebus, scenario);
        options.publishers = Some(publishers);
        options.subscribers = Some(subscribers);
        options.topics = Some(topics);
        options.plan().expect("valid")
    }

    #[test]
    fn more_topics_than_subscribers_spreads_topics_over_connections() {
        let plan = plan(Scenario::Many, 16, 64, 1024);
        assert_eq!(plan.subscriptions(), 1024);
        let mut per_connection = vec![0; 64];
        for index in 0..plan.subscriptions() {
            let slot = plan.subscription(index);
            assert_eq!(slot.topic, index, "every topic has one subscription");
            assert_eq!(slot.slot, 0);
            assert_eq!(slot.connection, index % 64);
            per_connection[slot.connection] += 1;
        }
        assert!(per_connection.iter().all(|count| *count == 16));
        assert!((0..1024).all(|topic| plan.subscriptions_of(topic) == 1));
        // 2 MiB of 128-byte payloads per connection, over its 16 topics.
        assert_eq!(plan.window, 1024);
    }

    #[test]
    fn fewer_topics_than_subscribers_shares_topics() {
        let plan = plan(Scenario::Many, 2, 6, 4);
        assert_eq!(plan.subscriptions(), 6);
        let slots: Vec<(usize, usize, usize)> = (0..6)
            .map(|index| {
                let slot = plan.subscription(index);
                (slot.connection, slot.topic, slot.slot)
            })
            .collect();
        assert_eq!(
            slots,
            [
                (0, 0, 0),
                (1, 1, 0),
                (2, 2, 0),
                (3, 3, 0),
                (4, 0, 1),
                (5, 1, 1)
            ]
        );
        assert_eq!(plan.subscriptions_of(0), 2);
        assert_eq!(plan.subscriptions_of(3), 1);
        assert_eq!(plan.window, 16384);
    }

    #[test]
    fn raw_is_one_publisher_to_one_subscriber() {
        let mut options = RunOptions::new(Target::Raw, Scenario::Fanout);
        assert!(options.plan().is_err());
        options.scenario = Scenario::Pair;
        assert_eq!(options.plan().expect("valid").url, "127.0.0.1:0");
        options.scenario = Scenario::Latency;
        options.rate = 1000;
        assert!(options.plan().is_err(), "latency's default is 1 -> 16");
        options.subscribers = Some(1);
        assert!(options.plan().is_ok());
    }

    #[test]
    fn acks_are_for_corebus_only() {
        let mut options = RunOptions::new(Target::Nats, Scenario::Pair);
        options.acks = true;
        let err = options.plan().expect_err("refused");
        assert!(
            err.to_string().contains("--acks is for corebus only"),
            "{err}"
        );
        options.target = Target::Corebus;
        assert!(options.plan().expect("valid").acks);
    }

    #[test]
    fn compression_is_for_corebus_clients_and_labels_the_run() {
        let mut options = RunOptions::new(Target::Nats, Scenario::Fanout);
        options.compress = true;
        assert!(options.plan().is_err(), "NATS publishers do not compress");
        options.target = Target::Corebus;
        options.lean = true;
        assert!(
            options.plan().is_err(),
            "the lean generator does not compress"
        );
        options.lean = false;
        options.payload = PayloadKind::Json;
        let plan = options.plan().expect("valid");
        assert!(plan.compress);
        assert_eq!(plan.variant.as_deref(), Some("JSON, zstd-compressed"));
        options.compress = false;
        assert_eq!(
            options.plan().expect("valid").variant.as_deref(),
            Some("JSON")
        );
        options.payload = PayloadKind::Filler;
        assert_eq!(options.plan().expect("valid").variant, None);
    }

    #[test]
    fn subscribers_spread_over_the_nodes_of_a_cluster_in_turn() {
        let mut options = RunOptions::new(Target::Corebus, Scenario::Many);
        options.url = Some("127.0.0.1:7400".into());
        let plan = options.plan().expect("valid");
        assert_eq!(plan.subscriber_url(5), "127.0.0.1:7400", "one broker");
        options.subscriber_urls = vec!["127.0.0.1:7400".into(), "127.0.0.2:7400".into()];
        let plan = options.plan().expect("valid");
        let urls: Vec<&str> = (0..4).map(|i| plan.subscriber_url(i)).collect();
        assert_eq!(
            urls,
            [
                "127.0.0.1:7400",
                "127.0.0.2:7400",
                "127.0.0.1:7400",
                "127.0.0.2:7400"
            ]
        );
        for refused in [Target::Redis, Target::Raw] {
            let mut other = options.clone();
            other.target = refused;
            assert!(other.plan().is_err(), "{refused:?}");
        }
        let mut lean = options.clone();
        lean.lean = true;
        assert!(lean.plan().is_err(), "not with the lean generator");
    }

    #[test]
    fn websocket_subscribers_need_a_ws_url_and_a_broker_with_a_listener() {
        let mut options = RunOptions::new(Target::Nats, Scenario::Many);
        options.subscribers_over = Transport::Websocket;
        let err = options.plan().expect_err("no --ws-url");
        assert!(err.to_string().contains("needs --ws-url"), "{err}");
        options.ws_url = Some("ws://127.0.0.1:4223".into());
        let plan = options.plan().expect("valid");
        assert_eq!(plan.subscribers_over(), Transport::Websocket);
        assert_eq!(plan.url, "nats://127.0.0.1:4222", "publishers stay native");
        options.target = Target::Redis;
        assert!(options.plan().is_err(), "Redis has no WebSocket listener");
        options.target = Target::Corebus;
        options.lean = true;
        assert!(options.plan().is_err(), "the lean generator is native only");
        options.lean = false;
        options.ws_url = Some("wss://127.0.0.1:7401/v1/ws".into());
        assert!(options.plan().is_err(), "plain ws:// only");
        let mut native = RunOptions::new(Target::Corebus, Scenario::Pair);
        native.ws_url = Some("ws://127.0.0.1:7401/v1/ws".into());
        assert!(
            native.plan().is_err(),
            "--ws-url without websocket subscribers"
        );
        native.ws_url = None;
        assert_eq!(
            native.plan().expect("valid").subscribers_over(),
            Transport::Native
        );
    }
}
