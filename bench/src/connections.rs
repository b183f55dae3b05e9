//! The connections scenario: many idle subscriber connections, then one
//! message to each.
//!
//! It measures what a broker pays to hold connections (resident memory of
//! the broker process, read from /proc before and after they are opened) and
//! how long it takes to wake all of them. Subscriber `i` reads topic
//! `i mod topics`; the publisher sends one message to every topic, so every
//! connection expects exactly one message.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::time::Instant;

use crate::driver::{Endpoint, Publisher, Subscriber};
use crate::load::{topic_names, CONNECT_CONCURRENCY, FINISH_TIMEOUT};
use crate::options::Plan;
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
                    let subscriber = Subscriber::connect(endpoint, &[topic.as_str()]).await?;
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
    report.connections = Some(ConnectionsReport {
        connect_s,
        rss_before_kib: rss_before,
        rss_after_kib: rss_after,
        rss_per_connection_bytes,
        deliver_all_ms: report.duration_s * 1e3,
    });
    report.compute_rates();
    Ok(report)
}
