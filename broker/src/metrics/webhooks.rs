//! The webhook families of a scrape, from the counters the webhook module
//! snapshots (it knows nothing of the exposition format).

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::metrics::MetricType;

use super::encode_value;
use crate::webhook::{DropReason, HookFigures, MetricsSnapshot};

/// The per-webhook families: name (a counter's without `_total`), help,
/// type, and which of a webhook's figures.
type Family = (
    &'static str,
    &'static str,
    MetricType,
    fn(&HookFigures) -> u64,
);

const FAMILIES: [Family; 6] = [
    (
        "webhook_delivered",
        "Messages delivered (2xx).",
        MetricType::Counter,
        |hook| hook.delivered,
    ),
    (
        "webhook_requests",
        "HTTP requests sent, retries included.",
        MetricType::Counter,
        |hook| hook.requests,
    ),
    (
        "webhook_retries",
        "Requests that were retries.",
        MetricType::Counter,
        |hook| hook.retries,
    ),
    (
        "webhook_queued",
        "Messages waiting in the webhook's queue.",
        MetricType::Gauge,
        |hook| hook.queued,
    ),
    (
        "webhook_disabled",
        "1 while the webhook is disabled (its endpoint answered 410 Gone).",
        MetricType::Gauge,
        |hook| u64::from(hook.disabled),
    ),
    (
        "webhook_disables",
        "Times a 410 Gone answer disabled the webhook.",
        MetricType::Counter,
        |hook| hook.disables,
    ),
];

/// Every webhook's counters of one scrape (prefixed `corebus_` by the
/// registry).
#[derive(Debug)]
pub(super) struct Counters(pub(super) MetricsSnapshot);

impl Collector for Counters {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let snapshot = &self.0;
        let metric = encoder.encode_descriptor(
            "webhooks",
            "Webhooks registered.",
            None,
            MetricType::Gauge,
        )?;
        encode_value(MetricType::Gauge, snapshot.hooks.len() as u64, metric)?;
        for (name, help, kind, figure) in FAMILIES {
            let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
            for hook in &snapshot.hooks {
                encode_value(
                    kind,
                    figure(hook),
                    metric.encode_family(&[("webhook", hook.id.as_str())])?,
                )?;
            }
        }
        let mut metric = encoder.encode_descriptor(
            "webhook_dropped",
            "Messages dropped, by webhook and reason.",
            None,
            MetricType::Counter,
        )?;
        let labels = [("webhook", "-"), ("reason", DropReason::Handoff.name())];
        encode_value(
            MetricType::Counter,
            snapshot.handoff_dropped,
            metric.encode_family(&labels)?,
        )?;
        for hook in &snapshot.hooks {
            for (reason, count) in DropReason::ALL.iter().zip(&hook.dropped) {
                let labels = [("webhook", hook.id.as_str()), ("reason", reason.name())];
                encode_value(MetricType::Counter, *count, metric.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}
