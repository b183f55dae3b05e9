//! A budget for log lines a peer can cause: at most a few per window, and a
//! count of those held back, so that a flood of failed handshakes or accept
//! errors costs the log a handful of lines, not one per event, and the log
//! still says how many there were.
//!
//! Pure: the caller passes the time (milliseconds of any monotonic clock),
//! so the budget is tested without waiting.

/// At most `burst` lines per `window_ms`. Not shared: each shard (and each
/// accept loop) keeps its own, so a budget is "per shard".
#[derive(Debug, Clone)]
pub struct LogLimit {
    burst: u32,
    window_ms: u64,
    window_start_ms: u64,
    logged: u32,
    /// Events held back since the last line that reported them.
    suppressed: u64,
}

impl LogLimit {
    /// A budget of `burst` lines every `window_ms`.
    pub const fn new(burst: u32, window_ms: u64) -> LogLimit {
        LogLimit {
            burst,
            window_ms,
            window_start_ms: 0,
            logged: 0,
            suppressed: 0,
        }
    }

    /// One event at `now_ms`. `Some(held_back)`: log it, and say that
    /// `held_back` like it since the last line were not logged (0 mostly).
    /// `None`: the budget is spent; the event is counted instead.
    pub fn admit(&mut self, now_ms: u64) -> Option<u64> {
        if self.take_slot(now_ms) {
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        }
    }

    /// For a summary line once a flood has stopped: `Some(held_back)` when
    /// events were held back and the budget has room for one more line now
    /// (which this takes). Without it, a count would wait for the next event,
    /// which may never come.
    pub fn overdue(&mut self, now_ms: u64) -> Option<u64> {
        if self.suppressed > 0 && self.take_slot(now_ms) {
            Some(std::mem::take(&mut self.suppressed))
        } else {
            None
        }
    }

    fn take_slot(&mut self, now_ms: u64) -> bool {
        if now_ms.saturating_sub(self.window_start_ms) >= self.window_ms {
            self.window_start_ms = now_ms;
            self.logged = 0;
        }
        let room = self.logged < self.burst;
        if room {
            self.logged += 1;
        }
        room
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_logs_the_burst_per_window_and_counts_the_rest() {
        let mut limit = LogLimit::new(3, 1000);
        // 100 events within one window: three lines, 97 held back.
        let verdicts: Vec<Option<u64>> = (0..100).map(|i| limit.admit(i * 5)).collect();
        assert_eq!(&verdicts[..3], &[Some(0), Some(0), Some(0)]);
        assert!(verdicts[3..].iter().all(Option::is_none));
        // The next window's first line carries the count, then it starts over.
        assert_eq!(limit.admit(1000), Some(97));
        assert_eq!(limit.admit(1001), Some(0));
        assert_eq!(limit.admit(1002), Some(0));
        assert_eq!(limit.admit(1999), None);
        assert_eq!(limit.admit(2000), Some(1));
    }

    #[test]
    fn every_event_is_either_logged_or_counted_in_a_later_line() {
        let mut limit = LogLimit::new(2, 100);
        let mut lines = 0;
        let mut reported = 0;
        for now in 0..1_000 {
            if let Some(held_back) = limit.admit(now) {
                lines += 1;
                reported += held_back;
            }
        }
        // Two lines per 100 ms window, ten windows.
        assert_eq!(lines, 20);
        reported += limit
            .overdue(1_000)
            .expect("the last window held some back");
        assert_eq!(lines + reported, 1_000);
        assert_eq!(limit.overdue(1_000), None, "reported once");
    }

    #[test]
    fn a_summary_waits_for_room_in_the_budget_and_for_something_to_report() {
        let mut limit = LogLimit::new(1, 1000);
        assert_eq!(limit.overdue(0), None, "nothing held back");
        assert_eq!(limit.admit(0), Some(0));
        assert_eq!(limit.admit(10), None);
        assert_eq!(limit.overdue(500), None, "the window's one line is spent");
        assert_eq!(limit.overdue(1000), Some(1));
        assert_eq!(
            limit.admit(1001),
            None,
            "the summary used the new window's line"
        );
    }

    #[test]
    fn a_clock_that_starts_late_or_steps_back_does_not_stall_the_budget() {
        let mut limit = LogLimit::new(1, 1000);
        assert_eq!(limit.admit(5_000_000), Some(0));
        assert_eq!(
            limit.admit(4_000_000),
            None,
            "a step back stays in the window"
        );
        assert_eq!(limit.admit(5_001_000), Some(1));
    }
}
