//! The `--metrics ADDR` endpoint: `/metrics` (OpenMetrics text, encoded by
//! the `prometheus-client` crate) and `/healthz`, served by hyper on a
//! small tokio runtime of its own, on one thread off the shard cores.
//!
//! Each shard publishes its counters once per maintenance tick (at most one
//! second apart); a scrape only copies them, so it costs the shards nothing
//! beyond that copy. Every connection is its own task: a client that opens a
//! connection and sends nothing holds a connection slot until the header
//! deadline, and nobody else waits for it. At most [`MAX_CONNECTIONS`] are
//! served at once; a connection beyond them is closed at once.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use corebus_shards::metrics::{LatencyHistogram, LATENCY_BUCKETS_US};
use corebus_shards::{MetricsHandle, ShardMetrics};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};
use tokio::net::TcpListener;
use tracing::warn;

use corebus_cluster::{ClusterView, MemberState, MemberView};

use crate::webhook::Webhooks;

mod webhooks;

/// Most connections served at once (a scraper and a health checker need one
/// each; room is left for many of both).
pub const MAX_CONNECTIONS: usize = 512;
/// A request's head must arrive within this long of the connection opening
/// (or of the previous response, on a kept-alive connection).
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest a connection is kept, however busy.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);
/// The OpenMetrics text format's media type.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// What the endpoint reports: the shards' figures, and the webhooks' and the
/// cluster's when there are some.
#[derive(Debug, Clone)]
pub struct Sources {
    /// Every shard's counters and gauges.
    pub shards: MetricsHandle,
    /// The webhooks' counters.
    pub webhooks: Option<Arc<Webhooks>>,
    /// The cluster's member list.
    pub cluster: Option<Arc<ClusterView>>,
    /// Configuration reloads.
    pub reloads: Option<Arc<crate::reload::ReloadStats>>,
}

/// Binds `addr` and serves metrics from a background thread; returns the
/// bound address (useful with port 0).
pub fn spawn(addr: SocketAddr, sources: Sources) -> io::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind(addr)?;
    listener.set_nonblocking(true)?;
    let local = listener.local_addr()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()?;
    std::thread::Builder::new()
        .name("corebus-metrics".into())
        .spawn(move || runtime.block_on(serve(listener, sources)))?;
    Ok(local)
}

async fn serve(listener: std::net::TcpListener, sources: Sources) {
    let listener = match TcpListener::from_std(listener) {
        Ok(listener) => listener,
        Err(err) => {
            warn!(%err, "metrics endpoint: cannot use its listener; not serving");
            return;
        }
    };
    let limits = crate::http_server::Limits {
        name: "metrics endpoint",
        connections: MAX_CONNECTIONS,
        header_timeout: HEADER_TIMEOUT,
        lifetime: Some(CONNECTION_LIFETIME),
    };
    crate::http_server::serve(listener, limits, None, move |_, request| {
        let response = respond(&request, &sources);
        async move { response }
    })
    .await;
}

fn respond(request: &Request<Incoming>, sources: &Sources) -> Response<Full<Bytes>> {
    let text = |status: StatusCode, body: &'static str| {
        let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
        *response.status_mut() = status;
        response.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        response
    };
    if request.method() != Method::GET {
        let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n");
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET"));
        return response;
    }
    match request.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/metrics" => {
            let cluster = sources.cluster.as_ref().map(|view| ClusterFigures {
                members: view.snapshot(),
                refused: view.refused_datagrams(),
            });
            let body = render(
                &sources.shards.snapshot(),
                sources.webhooks.as_deref(),
                cluster,
                sources.reloads.as_deref(),
            );
            let mut response = Response::new(Full::new(Bytes::from(body)));
            response
                .headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static(OPENMETRICS));
            response
        }
        _ => text(StatusCode::NOT_FOUND, "try /metrics or /healthz\n"),
    }
}

/// One metric family: name, help, type, and how to read it from a shard.
/// A counter's name has no `_total`: the encoder adds it.
struct Family {
    name: &'static str,
    help: &'static str,
    kind: MetricType,
    value: fn(&ShardMetrics) -> u64,
}

const FAMILIES: &[Family] = &[
    Family {
        name: "connections",
        help: "Open client connections.",
        kind: MetricType::Gauge,
        value: |m| m.connections,
    },
    Family {
        name: "subscriptions",
        help: "Subscriptions held by client connections.",
        kind: MetricType::Gauge,
        value: |m| m.subscriptions,
    },
    Family {
        name: "topics",
        help: "Live topics (owner-side state held).",
        kind: MetricType::Gauge,
        value: |m| m.owned_topics,
    },
    Family {
        name: "topic_memory_bytes",
        help: "Memory held by topic states and replay rings, as the topic_memory budget counts it.",
        kind: MetricType::Gauge,
        value: |m| m.topic_memory,
    },
    Family {
        name: "subscribed_topics",
        help: "Topics with local subscribers.",
        kind: MetricType::Gauge,
        value: |m| m.local_topics,
    },
    Family {
        name: "subscribed_patterns",
        help: "Patterns (orders/*) with local subscribers.",
        kind: MetricType::Gauge,
        value: |m| m.local_patterns,
    },
    Family {
        name: "pattern_registrations",
        help: "Patterns subscribed to anywhere in the broker that this shard matches its publishes against.",
        kind: MetricType::Gauge,
        value: |m| m.patterns_matched,
    },
    Family {
        name: "mesh_backlog",
        help: "Messages waiting to enter the cross-shard queues.",
        kind: MetricType::Gauge,
        value: |m| m.mesh_backlog,
    },
    Family {
        name: "writers_running",
        help: "Connections whose writer task runs (an idle connection's writer is parked).",
        kind: MetricType::Gauge,
        value: |m| m.writers_running,
    },
    Family {
        name: "readers_running",
        help: "Connections whose reader task runs (an idle connection's reader is parked).",
        kind: MetricType::Gauge,
        value: |m| m.readers_running,
    },
    Family {
        name: "connections_opened",
        help: "Connections accepted.",
        kind: MetricType::Counter,
        value: |m| m.stats.connections_opened,
    },
    Family {
        name: "messages_published",
        help: "PUBLISH frames received.",
        kind: MetricType::Counter,
        value: |m| m.stats.publishes_received,
    },
    Family {
        name: "messages_sequenced",
        help: "Messages sequenced by their owner shard.",
        kind: MetricType::Counter,
        value: |m| m.stats.messages_sequenced,
    },
    Family {
        name: "messages_delivered",
        help: "MESSAGE frames queued for subscribers (live).",
        kind: MetricType::Counter,
        value: |m| m.stats.messages_delivered,
    },
    Family {
        name: "messages_replayed",
        help: "MESSAGE frames replayed on resume.",
        kind: MetricType::Counter,
        value: |m| m.stats.messages_replayed,
    },
    Family {
        name: "messages_dropped",
        help: "Messages dropped for slow consumers (each loss reported by a DISCONTINUITY).",
        kind: MetricType::Counter,
        value: |m| m.stats.messages_dropped,
    },
    Family {
        name: "subscribes",
        help: "SUBSCRIBE requests accepted.",
        kind: MetricType::Counter,
        value: |m| m.stats.subscribes,
    },
    Family {
        name: "bytes_received",
        help: "Bytes read from client sockets.",
        kind: MetricType::Counter,
        value: |m| m.stats.bytes_in,
    },
    Family {
        name: "bytes_sent",
        help: "Bytes written to client sockets.",
        kind: MetricType::Counter,
        value: |m| m.stats.bytes_out,
    },
    Family {
        name: "protocol_errors",
        help: "Frames that failed to decode.",
        kind: MetricType::Counter,
        value: |m| m.stats.protocol_errors,
    },
    Family {
        name: "handshake_failures",
        help: "Connections refused at the handshake.",
        kind: MetricType::Counter,
        value: |m| m.stats.handshake_failures,
    },
    Family {
        name: "handshaking",
        help: "Connections open whose handshake has not succeeded yet.",
        kind: MetricType::Gauge,
        value: |m| m.handshaking,
    },
    Family {
        name: "handshakes_shed",
        help: "New sockets closed at once: the broker held max_handshaking connections mid-handshake.",
        kind: MetricType::Counter,
        value: |m| m.stats.handshakes_shed,
    },
    Family {
        name: "handshakes_shed_per_source",
        help: "New sockets closed at once: their address held max_handshaking_per_source connections mid-handshake.",
        kind: MetricType::Counter,
        value: |m| m.stats.handshakes_shed_per_source,
    },
    Family {
        name: "publishes_forwarded",
        help: "Publishes sent on to the node that owns their topic.",
        kind: MetricType::Counter,
        value: |m| m.stats.publishes_forwarded,
    },
    Family {
        name: "forwarded_publishes_failed",
        help: "Forwarded publishes the owner node did not acknowledge (refused, or the link broke first).",
        kind: MetricType::Counter,
        value: |m| m.stats.forwarded_publishes_failed,
    },
    Family {
        name: "messages_mirrored",
        help: "Messages received from owner nodes for this node's upstream subscriptions.",
        kind: MetricType::Counter,
        value: |m| m.stats.messages_mirrored,
    },
    Family {
        name: "topic_restarts",
        help: "Topics whose stream started over (a new owner node, or a link that lost messages); each subscriber got a DISCONTINUITY.",
        kind: MetricType::Counter,
        value: |m| m.stats.topic_restarts,
    },
        Family {
        name: "topics_taken_over",
        help: "Topics this node took over from another with their state (no discontinuity).",
        kind: MetricType::Counter,
        value: |m| m.stats.topics_taken_over,
    },
    Family {
        name: "topics_handed_over",
        help: "Topics this node handed over to another with their state.",
        kind: MetricType::Counter,
        value: |m| m.stats.topics_handed_over,
    },
    Family {
        name: "cluster_refusals",
        help: "Requests from another node refused because this node did not own the topic (members changing).",
        kind: MetricType::Counter,
        value: |m| m.stats.cluster_refusals,
    },
    Family {
        name: "websockets_opened",
        help: "WebSocket upgrades accepted on the browser listener.",
        kind: MetricType::Counter,
        value: |m| m.stats.websockets_opened,
    },
    Family {
        name: "event_streams_opened",
        help: "Server-Sent Events streams opened on the browser listener.",
        kind: MetricType::Counter,
        value: |m| m.stats.event_streams_opened,
    },
    Family {
        name: "web_requests_refused",
        help: "Requests the browser listener refused with an HTTP status.",
        kind: MetricType::Counter,
        value: |m| m.stats.web_requests_refused,
    },
    Family {
        name: "requests_forbidden",
        help: "Publishes, subscribes and commands refused because the connection's key or token does not allow them.",
        kind: MetricType::Counter,
        value: |m| m.stats.forbidden,
    },
    Family {
        name: "retained_messages",
        help: "Retained messages kept by their topics' owner shards.",
        kind: MetricType::Gauge,
        value: |m| m.retained_messages,
    },
    Family {
        name: "retained_bytes",
        help: "Bytes the retained messages hold, as the retained_bytes bound counts them.",
        kind: MetricType::Gauge,
        value: |m| m.retained_bytes,
    },
    Family {
        name: "retained_refused",
        help: "Retained publishes not kept: the shard held its share of retained_messages or retained_bytes.",
        kind: MetricType::Counter,
        value: |m| m.stats.retained_refused,
    },
    Family {
        name: "mqtt_wills_published",
        help: "Wills of MQTT clients that went without a clean DISCONNECT, published.",
        kind: MetricType::Counter,
        value: |m| m.stats.wills_published,
    },
    Family {
        name: "shared_messages_dropped",
        help: "Messages for a shared subscription's member that had left after the topic's shard chose it.",
        kind: MetricType::Counter,
        value: |m| m.stats.shared_messages_dropped,
    },
    Family {
        name: "mqtt_sessions_detached",
        help: "MQTT sessions that lived on after their connection ended.",
        kind: MetricType::Counter,
        value: |m| m.stats.sessions_detached,
    },
    Family {
        name: "mqtt_session_messages_dropped",
        help: "Messages for MQTT sessions without a connection dropped: mqtt_session_queue or mqtt_session_queue_bytes was reached.",
        kind: MetricType::Counter,
        value: |m| m.stats.session_messages_dropped,
    },
    Family {
        name: "subscriptions_refused",
        help: "SUBSCRIBE requests refused by a subscription limit.",
        kind: MetricType::Counter,
        value: |m| m.stats.subscriptions_refused,
    },
    Family {
        name: "slow_consumer_closes",
        help: "Connections closed for overflowing their outbound bound.",
        kind: MetricType::Counter,
        value: |m| m.stats.slow_consumer_closes,
    },
    Family {
        name: "topics_evicted",
        help: "Idle topic states evicted.",
        kind: MetricType::Counter,
        value: |m| m.stats.topics_evicted,
    },
    Family {
        name: "topics_evicted_for_memory",
        help: "Unsubscribed topic states evicted early to keep topic memory within its budget.",
        kind: MetricType::Counter,
        value: |m| m.stats.topics_evicted_for_memory,
    },
    Family {
        name: "replay_messages_trimmed",
        help: "Messages dropped from replay rings to keep topic memory within its budget.",
        kind: MetricType::Counter,
        value: |m| m.stats.replay_messages_trimmed,
    },
    Family {
        name: "sends_at_once",
        help: "Socket sends made at once, one system call each.",
        kind: MetricType::Counter,
        value: |m| m.sends.at_once,
    },
    Family {
        name: "sends_gathered",
        help: "Socket sends gathered into shared io_uring submissions.",
        kind: MetricType::Counter,
        value: |m| m.sends.gathered,
    },
    Family {
        name: "send_submissions",
        help: "io_uring submissions that carried gathered socket sends.",
        kind: MetricType::Counter,
        value: |m| m.sends.submissions,
    },
];

/// OpenMetrics text of every shard and the total, then `webhooks`' counters.
///
/// Totals are `corebus_<name>`; per-shard series are
/// `corebus_shard_<name>{shard="N"}`, in separate families so that summing a
/// family never counts anything twice.
pub fn render(
    shards: &[ShardMetrics],
    webhooks: Option<&Webhooks>,
    cluster: Option<ClusterFigures>,
    reloads: Option<&crate::reload::ReloadStats>,
) -> String {
    let mut registry = Registry::with_prefix("corebus");
    registry.register_collector(Box::new(Shards(shards.to_vec())));
    if let Some(webhooks) = webhooks {
        registry.register_collector(Box::new(webhooks::Counters(webhooks.snapshot_metrics())));
    }
    if let Some(cluster) = cluster {
        registry.register_collector(Box::new(cluster));
    }
    if let Some(reloads) = reloads {
        registry.register_collector(Box::new(Reloads::of(reloads)));
    }
    let mut out = String::with_capacity(16 * 1024);
    if let Err(err) = prometheus_client::encoding::text::encode(&mut out, &registry) {
        // Writing to a String cannot fail; a collector's error would be a bug.
        warn!(%err, "metrics could not be encoded");
    }
    out
}

/// The shards' metrics as of one scrape.
#[derive(Debug)]
struct Shards(Vec<ShardMetrics>);

impl Collector for Shards {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for family in FAMILIES {
            let total: u64 = self.0.iter().map(family.value).sum();
            let metric = encoder.encode_descriptor(family.name, family.help, None, family.kind)?;
            encode_value(family.kind, total, metric)?;
            let per_shard = format!("shard_{}", family.name);
            let help = format!("{} (per shard)", family.help);
            let mut metric = encoder.encode_descriptor(&per_shard, &help, None, family.kind)?;
            for shard in &self.0 {
                let labels = [("shard", shard.shard.to_string())];
                encode_value(
                    family.kind,
                    (family.value)(shard),
                    metric.encode_family(&labels)?,
                )?;
            }
        }
        let mut upstream: std::collections::BTreeMap<SocketAddr, u64> = Default::default();
        for shard in &self.0 {
            for (node, count) in &shard.upstream {
                *upstream.entry(*node).or_default() += count;
            }
        }
        if !upstream.is_empty() {
            let mut metric = encoder.encode_descriptor(
                "upstream_subscriptions",
                "Subscriptions this node holds on another node for topics that node owns (one per topic, however many local subscribers), by owner node.",
                None,
                MetricType::Gauge,
            )?;
            for (node, count) in upstream {
                let labels = [("peer", node.to_string())];
                encode_value(MetricType::Gauge, count, metric.encode_family(&labels)?)?;
            }
        }
        let mut latency = LatencyHistogram::default();
        for shard in &self.0 {
            latency.merge(&shard.delivery_latency);
        }
        let mut buckets: Vec<(f64, u64)> = LATENCY_BUCKETS_US
            .iter()
            .zip(latency.counts.iter())
            .map(|(bound, count)| (*bound as f64 / 1e6, *count))
            .collect();
        let counted: u64 = buckets.iter().map(|(_, count)| count).sum();
        buckets.push((f64::INFINITY, latency.count.saturating_sub(counted)));
        let mut metric = encoder.encode_descriptor(
            "delivery_latency",
            "Time from a message being sequenced by its owner to its being queued for a shard's subscribers (one sequence number in 64).",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        metric.encode_histogram::<NoLabelSet>(
            latency.sum_us as f64 / 1e6,
            latency.count,
            &buckets,
            None,
        )
    }
}

/// Encodes `value` as a counter or a gauge.
pub fn encode_value(
    kind: MetricType,
    value: u64,
    encoder: prometheus_client::encoding::MetricEncoder,
) -> Result<(), std::fmt::Error> {
    match kind {
        MetricType::Counter => ConstCounter::new(value).encode(encoder),
        _ => ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX)).encode(encoder),
    }
}

/// The cluster's member list and gossip counters as of one scrape.
#[derive(Debug)]
pub struct ClusterFigures {
    /// The member list.
    pub members: Arc<MemberView>,
    /// Gossip datagrams refused so far.
    pub refused: u64,
}

impl Collector for ClusterFigures {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut metric = encoder.encode_descriptor(
            "cluster_members",
            "Members of the cluster this node knows, itself included, by state.",
            None,
            MetricType::Gauge,
        )?;
        for state in [MemberState::Alive, MemberState::Suspect, MemberState::Down] {
            let labels = [("state", state.name())];
            let count = self.members.count(state) as u64;
            encode_value(MetricType::Gauge, count, metric.encode_family(&labels)?)?;
        }
        let mut metric = encoder.encode_descriptor(
            "cluster_member",
            "1 for each member this node knows: its node id (cluster address), client address and state.",
            None,
            MetricType::Gauge,
        )?;
        for member in &self.members.members {
            let labels = [
                ("node", member.node.addr.to_string()),
                ("client", member.node.client.to_string()),
                ("state", member.state.name().to_string()),
                ("leaving", member.node.leaving.to_string()),
            ];
            encode_value(MetricType::Gauge, 1, metric.encode_family(&labels)?)?;
        }
        let metric = encoder.encode_descriptor(
            "cluster_datagrams_refused",
            "Gossip datagrams dropped: another cluster secret, a replay, or bytes that do not decode.",
            None,
            MetricType::Counter,
        )?;
        encode_value(MetricType::Counter, self.refused, metric)
    }
}

/// The configuration reloads as of one scrape.
#[derive(Debug)]
struct Reloads {
    succeeded: u64,
    failed: u64,
    last_ok: u64,
}

impl Reloads {
    fn of(stats: &crate::reload::ReloadStats) -> Reloads {
        let read = |value: &std::sync::atomic::AtomicU64| value.load(Ordering::Relaxed);
        Reloads {
            succeeded: read(&stats.succeeded),
            failed: read(&stats.failed),
            last_ok: read(&stats.last_ok),
        }
    }
}

impl Collector for Reloads {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut metric = encoder.encode_descriptor(
            "config_reloads",
            "Configuration reloads (SIGHUP), applied or refused (a refused one changes nothing).",
            None,
            MetricType::Counter,
        )?;
        for (result, count) in [("applied", self.succeeded), ("refused", self.failed)] {
            let labels = [("result", result)];
            encode_value(MetricType::Counter, count, metric.encode_family(&labels)?)?;
        }
        let metric = encoder.encode_descriptor(
            "config_last_reload_ok",
            "1 unless the last reload was refused (then the file is not what runs).",
            None,
            MetricType::Gauge,
        )?;
        encode_value(MetricType::Gauge, self.last_ok, metric)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_totals_per_shard_series_and_a_cumulative_histogram() {
        let mut one = ShardMetrics {
            shard: 0,
            connections: 2,
            ..Default::default()
        };
        one.stats.messages_delivered = 5;
        one.delivery_latency.record(3);
        one.delivery_latency.record(40);
        let mut two = ShardMetrics {
            shard: 1,
            connections: 1,
            ..Default::default()
        };
        two.stats.messages_delivered = 7;
        two.delivery_latency.record(2_000_000);
        let text = render(&[one, two], None, None, None);
        assert!(text.contains("corebus_connections 3\n"));
        assert!(text.contains("corebus_shard_connections{shard=\"1\"} 1\n"));
        assert!(text.contains("corebus_messages_delivered_total 12\n"));
        assert!(text.contains("corebus_delivery_latency_seconds_bucket{le=\"0.000005\"} 1\n"));
        assert!(text.contains("corebus_delivery_latency_seconds_bucket{le=\"0.00005\"} 2\n"));
        assert!(text.contains("corebus_delivery_latency_seconds_bucket{le=\"+Inf\"} 3\n"));
        assert!(text.contains("corebus_delivery_latency_seconds_count 3\n"));
        // Every sample line is "name[{labels}] number".
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (name, value) = line.rsplit_once(' ').expect("name and value");
            assert!(value.parse::<f64>().is_ok(), "{line}");
            assert!(name.starts_with("corebus_"), "{line}");
        }
    }
}
