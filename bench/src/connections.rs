//! The connections scenario: many idle subscriber connections, then one
//! message to each.
//!
//! It measures what a broker pays to hold connections (resident memory of
//! the broker process, read from /proc before and after they are opened) and
//! how long it takes to wake all of them. Subscriber `i` reads topic
//! `i mod topics`; the publisher sends one message to every topic, so every
//! connection expects exactly one message.
//!
//! corebus's native connections come from source addresses spread over
//! 127.0.0.0/8 ([`source_address`]): one address has about 28,000 source
//! ports towards one listener, so a machine whose file limit allows
//! 100,000 connections needs several. The other brokers' client libraries
//! cannot bind an address; they reach the count one address allows.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::time::Instant;

use crate::driver::{Endpoint, Publisher, Subscriber};
use crate::load::{topic_names, CONNECT_CONCURRENCY, FINISH_TIMEOUT};
use crate::options::Plan;
use crate::options::Target;
use crate::payload::{Header, PayloadWriter};
use crate::progress::Progress;
use crate::report::{ConnectionsReport, LatencyUs, Report};
use crate::sys::{ensure_open_files, resident_kib, SPARE_FILES};
use crate::tracker::latency_histogram;
use crate::BenchError;

/// How long the broker's memory is left to settle before it is read.
const SETTLE: Duration = Duration::from_millis(500);
/// Limit on delivering every message, beyond `--duration`.
const DELIVERY_LIMIT: Duration = Duration::from_secs(30);

/// Loopback addresses the connections come from, in turn.
const SOURCE_ADDRESSES: usize = 250;

/// The local address subscriber `index` connects from: 127.0.0.2 to
/// 127.0.0.251 in turn for corebus's native driver (on a loopback URL, as
/// every URL of the harness is), the system's choice for the others.
fn source_address(endpoint: &Endpoint, index: usize) -> Option<std::net::IpAddr> {
    (endpoint.target == Target::Corebus && endpoint.ws_url.is_none())
        .then(|| std::net::IpAddr::from([127, 0, 0, 2 + (index % SOURCE_ADDRESSES) as u8]))
}

/// What one idle connection received.
enum Outcome {
    /// Its message, received at this time on the run's clock.
    Delivered { at_ns: u64, header: Header },
    /// Something other than the one expected message, or nothing.
    Failed(String),
}

/// Runs the connections scenario.
pub async fn run(plan: &Plan, endpoint: &Endpoint) -> Result<Report, BenchError> {
    ensure_open_files(plan.subscribers as u64 + SPARE_FILES)?;
    let rss_before = plan.broker_pid.map(resident_kib).transpose()?;
    if plan.broker_pid.is_none() {
        eprintln!("no --broker-pid: broker memory per connection is not measured");
    }
    let topics = topic_names(plan.topics);

    let opened = Arc::new(AtomicU64::new(0));
    let progress = Progress::start(plan, {
        let opened = opened.clone();
        move || (opened.load(Ordering::Relaxed), 0)
    });
    let connect_started = Instant::now();
    let connected: Vec<Result<(usize, Subscriber), BenchError>> =
        futures_util::stream::iter(0..plan.subscribers)
            .map(|index| {
                let topic = &topics[index % plan.topics];
                let opened = &opened;
                async move {
                    let local = source_address(endpoint, index);
                    let subscriber =
                        Subscriber::connect_from(endpoint, &[topic.as_str()], local).await?;
                    opened.fetch_add(1, Ordering::Relaxed);
                    Ok((index, subscriber))
                }
            })
            .buffer_unordered(CONNECT_CONCURRENCY)
            .collect()
            .await;
    progress.stop();
    let subscribers = connected.into_iter().collect::<Result<Vec<_>, _>>()?;
    let connect_s = connect_started.elapsed().as_secs_f64();
    tokio::time::sleep(SETTLE).await;
    let rss_after = plan.broker_pid.map(resident_kib).transpose()?;

    let mut publisher = Publisher::connect(endpoint, &topics).await?;
    let base = std::time::Instant::now();
    let deadline = Instant::now() + plan.duration + DELIVERY_LIMIT;
    let mut waiting = Vec::with_capacity(subscribers.len());
    for (index, mut subscriber) in subscribers {
        let topic = index % plan.topics;
        waiting.push(tokio::spawn(async move {
            let outcome = match tokio::time::timeout_at(deadline, subscriber.next()).await {
                Err(_) => Outcome::Failed("no message before the time limit".into()),
                Ok(Err(err)) => Outcome::Failed(err.to_string()),
                Ok(Ok(None)) => Outcome::Failed("the subscription ended".into()),
                Ok(Ok(Some(message))) => {
                    let at_ns = base.elapsed().as_nanos() as u64;
                    match message.header {
                        Some(header) if header.topic as usize == topic && header.counter == 0 => {
                            Outcome::Delivered { at_ns, header }
                        }
                        _ => Outcome::Failed("a message that was not its own".into()),
                    }
                }
            };
            // The subscriber (and its connection) lives until the message
            // arrived, so idle connections stay open for the whole wait.
            drop(subscriber);
            outcome
        }));
    }

    let publish_started_ns = base.elapsed().as_nanos() as u64;
    let mut writer = PayloadWriter::new(plan.size);
    for topic in 0..plan.topics {
        let header = Header {
            publisher: 0,
            topic: topic as u32,
            counter: 0,
            sent_ns: base.elapsed().as_nanos() as u64,
        };
        publisher.publish(topic, writer.write(&header)).await?;
    }
    tokio::time::timeout(FINISH_TIMEOUT, publisher.finish())
        .await
        .map_err(|_| BenchError::FinishTimeout(FINISH_TIMEOUT))??;

    let mut report = Report::for_plan(plan);
    let mut latency = latency_histogram();
    let mut last_ns = publish_started_ns;
    // Per topic: when its last subscriber had the message, and when it was
    // published.
    let mut topic_last: Vec<Option<(u64, u64)>> = vec![None; plan.topics];
    let mut failures = Vec::new();
    for task in waiting {
        match task
            .await
            .map_err(|err| BenchError::Task(err.to_string()))?
        {
            Outcome::Delivered { at_ns, header } => {
                report.delivered += 1;
                last_ns = last_ns.max(at_ns);
                latency.saturating_record(at_ns.saturating_sub(header.sent_ns).max(1));
                let last = &mut topic_last[header.topic as usize];
                let (seen, _) = last.get_or_insert((at_ns, header.sent_ns));
                *seen = (*seen).max(at_ns);
            }
            Outcome::Failed(reason) => failures.push(reason),
        }
    }
    if let Some(reason) = failures.first() {
        eprintln!(
            "{} of {} connections got no message of their own; the first: {reason}",
            failures.len(),
            plan.subscribers
        );
    }
    let (drops, disconnects) = endpoint.incidents.snapshot();
    report.client_incidents = drops + disconnects;
    report.published = plan.topics as u64;
    report.expected = plan.subscribers as u64;
    report.lost = report.expected - report.delivered;
    report.duration_s = (last_ns - publish_started_ns) as f64 / 1e9;
    report.latency_us = LatencyUs::from_ns(&latency);
    let rss_per_connection_bytes = match (rss_before, rss_after) {
        (Some(before), Some(after)) => {
            Some((after as f64 - before as f64) * 1024.0 / plan.subscribers as f64)
        }
        _ => None,
    };
    // From each topic's publish until its last subscriber had it.
    let mut topic_times = latency_histogram();
    for (at, sent) in topic_last.iter().flatten() {
        topic_times.saturating_record(at.saturating_sub(*sent).max(1));
    }
    let topic_us = (!topic_times.is_empty()).then(|| LatencyUs::from_ns(&topic_times));
    report.connections = Some(ConnectionsReport {
        connect_s,
        connects_per_s: Some(plan.subscribers as f64 / connect_s),
        topic_last_p50_ms: topic_us.map(|us| us.p50 / 1e3),
        topic_last_p99_ms: topic_us.map(|us| us.p99 / 1e3),
        rss_before_kib: rss_before,
        rss_after_kib: rss_after,
        rss_per_connection_bytes,
        deliver_all_ms: report.duration_s * 1e3,
    });
    report.compute_rates();
    Ok(report)
}
