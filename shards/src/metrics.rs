//! Shard metrics as seen from outside the shard threads.
//!
//! Counters live in each shard's [`ShardStats`] as
//! plain integers (no atomics on the hot path). On every maintenance tick a
//! shard copies them, with its gauges, into its own slot of a
//! [`MetricsHandle`]; a reader (the `/metrics` endpoint) takes the slots'
//! locks only to copy them. Figures are therefore up to one tick old (at most
//! one second).

use std::sync::{Arc, Mutex, PoisonError};

use crate::routing::ShardId;
use crate::sends::SendStats;
use crate::stats::ShardStats;

/// Upper bounds (microseconds) of the latency histogram's buckets; a last,
/// implicit bucket counts everything above.
pub const LATENCY_BUCKETS_US: [u64; 16] = [
    5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000,
    1_000_000,
];

/// A fixed-bucket latency histogram (cumulative form is produced on export).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LatencyHistogram {
    /// Per-bucket counts (not cumulative); the last entry is the overflow.
    pub counts: [u64; LATENCY_BUCKETS_US.len() + 1],
    /// Sum of all observations in microseconds.
    pub sum_us: u64,
    /// Number of observations.
    pub count: u64,
}

impl LatencyHistogram {
    /// Records one observation.
    pub fn record(&mut self, micros: u64) {
        let bucket = LATENCY_BUCKETS_US
            .iter()
            .position(|bound| micros <= *bound)
            .unwrap_or(LATENCY_BUCKETS_US.len());
        self.counts[bucket] += 1;
        self.sum_us = self.sum_us.saturating_add(micros);
        self.count += 1;
    }

    /// Adds another histogram's observations (for totals over shards).
    pub fn merge(&mut self, other: &LatencyHistogram) {
        for (mine, theirs) in self.counts.iter_mut().zip(other.counts.iter()) {
            *mine += theirs;
        }
        self.sum_us = self.sum_us.saturating_add(other.sum_us);
        self.count += other.count;
    }
}

/// One shard's counters and gauges at its last tick.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShardMetrics {
    /// Which shard.
    pub shard: ShardId,
    /// Counters since start.
    pub stats: ShardStats,
    /// Open connections.
    pub connections: u64,
    /// Connections open here whose handshake has not succeeded yet.
    pub handshaking: u64,
    /// Subscriptions held by this shard's connections.
    pub subscriptions: u64,
    /// Topics whose owner-side state this shard holds.
    pub owned_topics: u64,
    /// Memory those topics' states and replay rings hold, as the
    /// `topic_memory` budget counts it.
    pub topic_memory: u64,
    /// Retained messages this shard keeps for its topics.
    pub retained_messages: u64,
    /// Bytes they hold, as the `retained_bytes` bound counts them.
    pub retained_bytes: u64,
    /// Topics with local subscribers here.
    pub local_topics: u64,
    /// Patterns with local subscribers here.
    pub local_patterns: u64,
    /// Pattern registrations this shard matches every publish against
    /// (one per pattern per shard with subscribers of it, in the broker).
    pub patterns_matched: u64,
    /// Messages waiting to be handed to the cross-shard queues.
    pub mesh_backlog: u64,
    /// Connections whose writer task runs: they have output to send. An
    /// idle connection's writer is parked and holds no task.
    pub writers_running: u64,
    /// Connections whose reader task runs: mid-handshake, mid-frame or
    /// just read. An idle connection's reader is parked and holds no task.
    pub readers_running: u64,
    /// Time from a message being sequenced by its owner to its being queued
    /// for this shard's subscribers, measured for one sequence number in 64.
    pub delivery_latency: LatencyHistogram,
    /// How this shard's socket sends went out.
    pub sends: SendStats,
    /// Upstream subscriptions (mirrors of topics other nodes own) this
    /// shard holds, per owner node (its client address).
    pub upstream: Vec<(std::net::SocketAddr, u64)>,
    /// Maintenance ticks the shard has run: it advances while the shard's
    /// executor turns (what a watchdog checks).
    pub ticks: u64,
}

/// Shared, cloneable access to every shard's latest metrics.
#[derive(Debug, Clone)]
pub struct MetricsHandle {
    slots: Arc<Vec<Mutex<ShardMetrics>>>,
}

impl MetricsHandle {
    /// Empty slots for `shards` shards.
    pub fn new(shards: usize) -> MetricsHandle {
        MetricsHandle {
            slots: Arc::new(
                (0..shards)
                    .map(|shard| {
                        Mutex::new(ShardMetrics {
                            shard: shard as ShardId,
                            ..ShardMetrics::default()
                        })
                    })
                    .collect(),
            ),
        }
    }

    /// Stores a shard's latest figures.
    pub fn publish(&self, metrics: ShardMetrics) {
        if let Some(slot) = self.slots.get(metrics.shard as usize) {
            // A panicked reader cannot leave a copy half-written: take the data.
            *slot.lock().unwrap_or_else(PoisonError::into_inner) = metrics;
        }
    }

    /// Every shard's latest figures, in shard order.
    pub fn snapshot(&self) -> Vec<ShardMetrics> {
        self.slots
            .iter()
            .map(|slot| slot.lock().unwrap_or_else(PoisonError::into_inner).clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_by_upper_bound() {
        let mut histogram = LatencyHistogram::default();
        for micros in [0, 5, 6, 999, 1_000, 5_000_000] {
            histogram.record(micros);
        }
        assert_eq!(histogram.counts[0], 2); // 0 and 5
        assert_eq!(histogram.counts[1], 1); // 6
        assert_eq!(histogram.counts[7], 2); // 999 and 1000
        assert_eq!(histogram.counts[LATENCY_BUCKETS_US.len()], 1);
        assert_eq!(histogram.count, 6);
        let mut total = LatencyHistogram::default();
        total.merge(&histogram);
        total.merge(&histogram);
        assert_eq!(total.count, 12);
    }
}
