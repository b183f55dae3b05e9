//! Delivery checks and latency for one subscriber.
//!
//! Every message's header says which publisher sent it and that publisher's
//! running count for the topic; a subscriber that saw every message sees each
//! publisher's counts as 0, 1, 2, ... For corebus the broker's sequence
//! numbers are checked as well: they must follow the subscription's start
//! point with no gap.

use hdrhistogram::Histogram;

use crate::driver::Received;

/// Highest latency recorded exactly (60 s, in nanoseconds); larger values
/// are clamped to it.
const MAX_LATENCY_NS: u64 = 60_000_000_000;

/// A new latency histogram: 1 ns to 60 s, three significant digits.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_NS, 3)
        .unwrap_or_else(|_| unreachable!("1 ns to 60 s at 3 digits are valid bounds"))
}

/// What one subscriber received.
#[derive(Debug, Clone)]
pub struct Tracker {
    topic: u32,
    /// Per publisher: the next counter expected.
    next: Vec<u64>,
    /// Per publisher: messages received in order or after a gap (each counter
    /// at most once).
    unique: Vec<u64>,
    /// Messages whose counter went backwards: duplicates or reordering.
    pub out_of_order: u64,
    /// Messages for another topic, or without a valid header.
    pub foreign: u64,
    /// corebus: the last sequence number received.
    last_seq: Option<u64>,
    /// corebus: distinct sequence numbers received (each one above every
    /// earlier one). The topic's last sequence number minus the start point,
    /// minus this, is what the subscriber missed.
    pub seq_distinct: u64,
}

impl Tracker {
    /// A tracker for a subscriber of topic `topic` with `publishers`
    /// possible senders, starting after sequence number `start_after`
    /// (corebus).
    pub fn new(topic: usize, publishers: usize, start_after: Option<u64>) -> Tracker {
        Tracker {
            topic: topic as u32,
            next: vec![0; publishers],
            unique: vec![0; publishers],
            out_of_order: 0,
            foreign: 0,
            last_seq: start_after,
            seq_distinct: 0,
        }
    }

    /// Records one message received at `now_ns` on the run's clock; its
    /// latency (receive time minus intended send time, in nanoseconds) goes
    /// to `latency`, which the caller shares between the subscriptions of a
    /// connection: one histogram per subscription would spread each
    /// message's count over as many histograms as there are topics (1024 in
    /// `many`), and the harness's caches with them.
    pub fn record(&mut self, message: &Received, now_ns: u64, latency: &mut Histogram<u64>) {
        if let (Some(seq), Some(last)) = (message.seq, self.last_seq) {
            if seq > last {
                self.seq_distinct += 1;
                self.last_seq = Some(seq);
            } else {
                self.out_of_order += 1;
            }
        }
        let Some(header) = message.header else {
            self.foreign += 1;
            return;
        };
        let publisher = header.publisher as usize;
        if header.topic != self.topic || publisher >= self.next.len() {
            self.foreign += 1;
            return;
        }
        let next = &mut self.next[publisher];
        if header.counter >= *next {
            *next = header.counter + 1;
            self.unique[publisher] += 1;
        } else {
            self.out_of_order += 1;
        }
        latency.saturating_record(now_ns.saturating_sub(header.sent_ns).max(1));
    }

    /// Distinct messages received.
    pub fn delivered(&self) -> u64 {
        self.unique.iter().sum()
    }

    /// Messages missing, given how many each publisher sent to this topic.
    pub fn lost(&self, sent_by_publisher: &[u64]) -> u64 {
        sent_by_publisher
            .iter()
            .zip(&self.unique)
            .map(|(sent, got)| sent.saturating_sub(*got))
            .sum()
    }

    /// corebus: sequence numbers in `(start_after, last_seq]` not received.
    pub fn seq_lost(&self, last_seq: u64, start_after: u64) -> u64 {
        last_seq
            .saturating_sub(start_after)
            .saturating_sub(self.seq_distinct)
    }

    /// Messages received beyond what was sent (a broken broker or harness).
    pub fn phantom(&self, sent_by_publisher: &[u64]) -> u64 {
        sent_by_publisher
            .iter()
            .zip(&self.unique)
            .map(|(sent, got)| got.saturating_sub(*sent))
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payload::Header;

    fn message(publisher: u32, counter: u64, seq: Option<u64>) -> Received {
        Received {
            subscription: 0,
            seq,
            header: Some(Header {
                publisher,
                topic: 0,
                counter,
                sent_ns: 10,
            }),
            len: 24,
        }
    }

    #[test]
    fn counts_gaps_per_publisher() {
        let mut latency = latency_histogram();
        let mut tracker = Tracker::new(0, 2, None);
        for counter in [0, 1, 3, 4] {
            tracker.record(&message(0, counter, None), 100, &mut latency);
        }
        for counter in 0..3 {
            tracker.record(&message(1, counter, None), 100, &mut latency);
        }
        assert_eq!(tracker.delivered(), 7);
        assert_eq!(tracker.lost(&[5, 3]), 1);
        assert_eq!(tracker.lost(&[6, 3]), 2);
        assert_eq!(tracker.out_of_order, 0);
        assert_eq!(latency.len(), 7);
        assert_eq!(latency.max(), 90);
    }

    #[test]
    fn duplicates_and_foreign_messages_are_flagged() {
        let mut latency = latency_histogram();
        let mut tracker = Tracker::new(0, 1, None);
        tracker.record(&message(0, 0, None), 20, &mut latency);
        tracker.record(&message(0, 0, None), 20, &mut latency);
        tracker.record(&message(5, 0, None), 20, &mut latency);
        let no_header = Received {
            subscription: 0,
            seq: None,
            header: None,
            len: 3,
        };
        tracker.record(&no_header, 20, &mut latency);
        assert_eq!(tracker.delivered(), 1);
        assert_eq!(tracker.out_of_order, 1);
        assert_eq!(tracker.foreign, 2);
        assert_eq!(tracker.phantom(&[0]), 1);
    }

    #[test]
    fn corebus_sequence_numbers() {
        let mut latency = latency_histogram();
        let mut tracker = Tracker::new(0, 1, Some(10));
        tracker.record(&message(0, 0, Some(11)), 20, &mut latency);
        tracker.record(&message(0, 1, Some(12)), 20, &mut latency);
        tracker.record(&message(0, 3, Some(14)), 20, &mut latency);
        tracker.record(&message(0, 3, Some(14)), 20, &mut latency);
        assert_eq!(tracker.seq_distinct, 3);
        assert_eq!(tracker.out_of_order, 2);
        assert_eq!(tracker.seq_lost(14, 10), 1);
    }
}
