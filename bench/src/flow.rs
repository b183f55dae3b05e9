//! Per-topic flow control: publishers stay at most a window of messages
//! ahead of the topic's slowest subscriber.
//!
//! Without it a fire-and-forget publisher outruns its subscribers and every
//! broker eventually protects itself (corebus and NATS disconnect slow
//! consumers, Redis drops pub/sub clients past its output-buffer limit), so
//! a run would measure how fast each broker discards. With it, the harness
//! measures the throughput a broker sustains with every message delivered,
//! the same way for every broker. The latency scenario runs open loop and
//! uses these counters only for progress.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// Longest a blocked publisher sleeps before looking again, in case a wake-up
/// raced with it going to sleep.
const RECHECK: Duration = Duration::from_millis(20);

/// Delivery progress of one topic, shared by its publishers and subscribers.
#[derive(Debug)]
pub struct TopicFlow {
    window: u64,
    /// Messages published to the topic, all publishers together.
    published: AtomicU64,
    /// Per subscriber of the topic: messages it has received.
    received: Box<[AtomicU64]>,
    /// Lowest received count a blocked publisher waits for; `u64::MAX` when
    /// no publisher waits.
    wake_at: AtomicU64,
    wake: Notify,
}

impl TopicFlow {
    /// A topic with `subscribers` subscribers and a window of `window`
    /// messages (`u64::MAX`: no limit).
    pub fn new(subscribers: usize, window: u64) -> TopicFlow {
        TopicFlow {
            window: window.max(1),
            published: AtomicU64::new(0),
            received: (0..subscribers).map(|_| AtomicU64::new(0)).collect(),
            wake_at: AtomicU64::new(u64::MAX),
            wake: Notify::new(),
        }
    }

    /// Messages published so far.
    pub fn published(&self) -> u64 {
        self.published.load(Ordering::Relaxed)
    }

    /// Messages received so far, all subscribers together.
    pub fn received(&self) -> u64 {
        self.received
            .iter()
            .map(|count| count.load(Ordering::Relaxed))
            .sum()
    }

    /// The received count of the slowest subscriber (`u64::MAX` without
    /// subscribers: nobody to wait for).
    fn slowest(&self) -> u64 {
        self.received
            .iter()
            .map(|count| count.load(Ordering::SeqCst))
            .min()
            .unwrap_or(u64::MAX)
    }

    /// Counts one published message; returns the topic's new total.
    pub fn note_published(&self) -> u64 {
        self.published.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Subscriber `slot` has received `count` messages in all.
    pub fn note_received(&self, slot: usize, count: u64) {
        self.received[slot].store(count, Ordering::SeqCst);
        let wake_at = self.wake_at.load(Ordering::SeqCst);
        if count >= wake_at
            && self
                .wake_at
                .compare_exchange(wake_at, u64::MAX, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
        {
            self.wake.notify_waiters();
        }
    }

    /// Waits until a publisher that has `published` messages of this topic
    /// out may send more, or until `deadline`. Returns the total up to which
    /// it may then publish without asking again.
    ///
    /// A blocked publisher resumes only when half the window is free again,
    /// so it wakes once per half window instead of once per message.
    pub async fn room(&self, published: u64, deadline: Instant) -> u64 {
        let resume_at = published.saturating_sub(self.window / 2);
        loop {
            let slowest = self.slowest();
            if slowest >= resume_at || Instant::now() >= deadline {
                return slowest.saturating_add(self.window);
            }
            let notified = self.wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            self.wake_at.fetch_min(resume_at, Ordering::SeqCst);
            // A subscriber may have passed the mark before `wake_at` was set.
            if self.slowest() >= resume_at {
                continue;
            }
            let until = deadline.min(Instant::now() + RECHECK);
            let _ = tokio::time::timeout_at(until, notified).await;
        }
    }

    /// The total up to which a publisher may send before calling
    /// [`TopicFlow::room`] for the first time.
    pub fn initial_limit(&self) -> u64 {
        self.window
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn publisher_waits_for_the_slowest_subscriber() {
        let flow = Arc::new(TopicFlow::new(2, 10));
        for _ in 0..10 {
            flow.note_published();
        }
        flow.note_received(0, 10);
        let waiter = {
            let flow = flow.clone();
            tokio::spawn(async move {
                flow.room(10, Instant::now() + Duration::from_secs(10))
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished(), "subscriber 1 has received nothing");
        flow.note_received(1, 4);
        assert!(!waiter.is_finished());
        flow.note_received(1, 5);
        let limit = waiter.await.expect("waiter task");
        assert_eq!(limit, 15);
    }

    #[tokio::test]
    async fn no_subscribers_means_no_limit() {
        let flow = TopicFlow::new(0, 10);
        let limit = flow
            .room(1_000, Instant::now() + Duration::from_secs(1))
            .await;
        assert_eq!(limit, u64::MAX);
    }
}
