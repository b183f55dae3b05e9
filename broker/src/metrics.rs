//! The `--metrics ADDR` endpoint: Prometheus text on `/metrics`, liveness on
//! `/healthz`, served by one plain thread off the shard cores.
//!
//! Each shard publishes its counters once per maintenance tick (at most one
//! second apart); this thread only copies them, so scraping costs the shards
//! nothing beyond that copy.

use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use corebus_shards::metrics::LATENCY_BUCKETS_US;
use corebus_shards::{MetricsHandle, ShardMetrics};
use tracing::{debug, warn};

use crate::webhook::Webhooks;

/// Largest request head read before giving up on a client.
const MAX_REQUEST: usize = 8 * 1024;

/// Binds `addr` and serves metrics from a background thread; returns the
/// bound address (useful with port 0).
/// `webhooks`' counters are appended to the shards' when given.
pub fn spawn(
    addr: SocketAddr,
    metrics: MetricsHandle,
    webhooks: Option<Arc<Webhooks>>,
) -> io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let local = listener.local_addr()?;
    std::thread::Builder::new()
        .name("corebus-metrics".into())
        .spawn(move || {
            for stream in listener.incoming() {
                match stream {
                    Ok(stream) => {
                        if let Err(err) = serve_one(stream, &metrics, webhooks.as_deref()) {
                            debug!(%err, "metrics request failed");
                        }
                    }
                    Err(err) => {
                        warn!(%err, "metrics accept failed");
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
            }
        })?;
    Ok(local)
}

fn serve_one(
    mut stream: TcpStream,
    metrics: &MetricsHandle,
    webhooks: Option<&Webhooks>,
) -> io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.set_write_timeout(Some(Duration::from_secs(2)))?;
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let read = stream.read(&mut chunk)?;
        if read == 0 {
            break;
        }
        head.extend_from_slice(&chunk[..read]);
        if head.len() > MAX_REQUEST {
            return respond(
                &mut stream,
                "431 Request Header Fields Too Large",
                "text/plain",
                "too large\n",
            );
        }
    }
    let line = head.split(|b| *b == b'\r').next().unwrap_or_default();
    let mut parts = std::str::from_utf8(line).unwrap_or("").split(' ');
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    match (method, path) {
        ("GET", "/metrics") => {
            let mut body = render(&metrics.snapshot());
            if let Some(webhooks) = webhooks {
                webhooks.render_metrics(&mut body);
            }
            respond(&mut stream, "200 OK", "text/plain; version=0.0.4", &body)
        }
        ("GET", "/healthz") => respond(&mut stream, "200 OK", "text/plain", "ok\n"),
        ("GET", _) => respond(
            &mut stream,
            "404 Not Found",
            "text/plain",
            "try /metrics or /healthz\n",
        ),
        _ => respond(
            &mut stream,
            "405 Method Not Allowed",
            "text/plain",
            "GET only\n",
        ),
    }
}

fn respond(stream: &mut TcpStream, status: &str, content_type: &str, body: &str) -> io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body.as_bytes())
}

/// One metric family: name, help, type, and how to read it from a shard.
struct Family {
    name: &'static str,
    help: &'static str,
    kind: &'static str,
    value: fn(&ShardMetrics) -> u64,
}

const FAMILIES: &[Family] = &[
    Family {
        name: "connections",
        help: "Open client connections.",
        kind: "gauge",
        value: |m| m.connections,
    },
    Family {
        name: "subscriptions",
        help: "Subscriptions held by client connections.",
        kind: "gauge",
        value: |m| m.subscriptions,
    },
    Family {
        name: "topics",
        help: "Live topics (owner-side state held).",
        kind: "gauge",
        value: |m| m.owned_topics,
    },
    Family {
        name: "topic_memory_bytes",
        help: "Memory held by topic states and replay rings, as the topic_memory budget counts it.",
        kind: "gauge",
        value: |m| m.topic_memory,
    },
    Family {
        name: "subscribed_topics",
        help: "Topics with local subscribers.",
        kind: "gauge",
        value: |m| m.local_topics,
    },
    Family {
        name: "mesh_backlog",
        help: "Messages waiting to enter the cross-shard queues.",
        kind: "gauge",
        value: |m| m.mesh_backlog,
    },
    Family {
        name: "connections_opened_total",
        help: "Connections accepted.",
        kind: "counter",
        value: |m| m.stats.connections_opened,
    },
    Family {
        name: "messages_published_total",
        help: "PUBLISH frames received.",
        kind: "counter",
        value: |m| m.stats.publishes_received,
    },
    Family {
        name: "messages_sequenced_total",
        help: "Messages sequenced by their owner shard.",
        kind: "counter",
        value: |m| m.stats.messages_sequenced,
    },
    Family {
        name: "messages_delivered_total",
        help: "MESSAGE frames queued for subscribers (live).",
        kind: "counter",
        value: |m| m.stats.messages_delivered,
    },
    Family {
        name: "messages_replayed_total",
        help: "MESSAGE frames replayed on resume.",
        kind: "counter",
        value: |m| m.stats.messages_replayed,
    },
    Family {
        name: "messages_dropped_total",
        help: "Messages dropped for slow consumers (each loss reported by a DISCONTINUITY).",
        kind: "counter",
        value: |m| m.stats.messages_dropped,
    },
    Family {
        name: "subscribes_total",
        help: "SUBSCRIBE requests accepted.",
        kind: "counter",
        value: |m| m.stats.subscribes,
    },
    Family {
        name: "bytes_received_total",
        help: "Bytes read from client sockets.",
        kind: "counter",
        value: |m| m.stats.bytes_in,
    },
    Family {
        name: "bytes_sent_total",
        help: "Bytes written to client sockets.",
        kind: "counter",
        value: |m| m.stats.bytes_out,
    },
    Family {
        name: "protocol_errors_total",
        help: "Frames that failed to decode.",
        kind: "counter",
        value: |m| m.stats.protocol_errors,
    },
    Family {
        name: "handshake_failures_total",
        help: "Connections refused at the handshake.",
        kind: "counter",
        value: |m| m.stats.handshake_failures,
    },
    Family {
        name: "handshaking",
        help: "Connections open whose handshake has not succeeded yet.",
        kind: "gauge",
        value: |m| m.handshaking,
    },
    Family {
        name: "handshakes_shed_total",
        help: "New sockets closed at once: the broker held max_handshaking connections mid-handshake.",
        kind: "counter",
        value: |m| m.stats.handshakes_shed,
    },
    Family {
        name: "handshakes_shed_per_source_total",
        help: "New sockets closed at once: their address held max_handshaking_per_source connections mid-handshake.",
        kind: "counter",
        value: |m| m.stats.handshakes_shed_per_source,
    },
    Family {
        name: "subscriptions_refused_total",
        help: "SUBSCRIBE requests refused by a subscription limit.",
        kind: "counter",
        value: |m| m.stats.subscriptions_refused,
    },
    Family {
        name: "slow_consumer_closes_total",
        help: "Connections closed for overflowing their outbound bound.",
        kind: "counter",
        value: |m| m.stats.slow_consumer_closes,
    },
    Family {
        name: "topics_evicted_total",
        help: "Idle topic states evicted.",
        kind: "counter",
        value: |m| m.stats.topics_evicted,
    },
    Family {
        name: "topics_evicted_for_memory_total",
        help: "Unsubscribed topic states evicted early to keep topic memory within its budget.",
        kind: "counter",
        value: |m| m.stats.topics_evicted_for_memory,
    },
    Family {
        name: "replay_messages_trimmed_total",
        help: "Messages dropped from replay rings to keep topic memory within its budget.",
        kind: "counter",
        value: |m| m.stats.replay_messages_trimmed,
    },
    Family {
        name: "sends_at_once_total",
        help: "Socket sends made at once, one system call each.",
        kind: "counter",
        value: |m| m.sends.at_once,
    },
    Family {
        name: "sends_gathered_total",
        help: "Socket sends gathered into shared io_uring submissions.",
        kind: "counter",
        value: |m| m.sends.gathered,
    },
    Family {
        name: "send_submissions_total",
        help: "io_uring submissions that carried gathered socket sends.",
        kind: "counter",
        value: |m| m.sends.submissions,
    },
];

/// Prometheus text exposition (format 0.0.4) of every shard and the total.
///
/// Totals are `corebus_<name>`; per-shard series are
/// `corebus_shard_<name>{shard="N"}`, in separate families so that summing a
/// family never counts anything twice.
pub fn render(shards: &[ShardMetrics]) -> String {
    let mut out = String::with_capacity(8 * 1024);
    for family in FAMILIES {
        let total: u64 = shards.iter().map(family.value).sum();
        let _ = writeln!(out, "# HELP corebus_{} {}", family.name, family.help);
        let _ = writeln!(out, "# TYPE corebus_{} {}", family.name, family.kind);
        let _ = writeln!(out, "corebus_{} {total}", family.name);
        let _ = writeln!(
            out,
            "# HELP corebus_shard_{} {} (per shard)",
            family.name, family.help
        );
        let _ = writeln!(out, "# TYPE corebus_shard_{} {}", family.name, family.kind);
        for shard in shards {
            let _ = writeln!(
                out,
                "corebus_shard_{}{{shard=\"{}\"}} {}",
                family.name,
                shard.shard,
                (family.value)(shard)
            );
        }
    }
    let mut latency = corebus_shards::metrics::LatencyHistogram::default();
    for shard in shards {
        latency.merge(&shard.delivery_latency);
    }
    let _ = writeln!(out, "# HELP corebus_delivery_latency_seconds Time from a message being sequenced by its owner to its being queued for a shard's subscribers (one sequence number in 64).");
    let _ = writeln!(out, "# TYPE corebus_delivery_latency_seconds histogram");
    let mut cumulative = 0;
    for (bound, count) in LATENCY_BUCKETS_US.iter().zip(latency.counts.iter()) {
        cumulative += count;
        let _ = writeln!(
            out,
            "corebus_delivery_latency_seconds_bucket{{le=\"{}\"}} {cumulative}",
            *bound as f64 / 1e6
        );
    }
    let _ = writeln!(
        out,
        "corebus_delivery_latency_seconds_bucket{{le=\"+Inf\"}} {}",
        latency.count
    );
    let _ = writeln!(
        out,
        "corebus_delivery_latency_seconds_sum {}",
        latency.sum_us as f64 / 1e6
    );
    let _ = writeln!(
        out,
        "corebus_delivery_latency_seconds_count {}",
        latency.count
    );
    out
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
        let text = render(&[one, two]);
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
