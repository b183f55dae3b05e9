//! Delays between reconnection attempts: exponential, capped, with jitter.

use std::time::Duration;

/// SplitMix64: a tiny, good-enough generator for jitter and source ports
/// (not for anything that needs unpredictability).
pub(super) struct SplitMix64(u64);

impl SplitMix64 {
    pub(super) fn new(seed: u64) -> SplitMix64 {
        SplitMix64(seed)
    }

    pub(super) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        corebus_net::routing::mix64(self.0)
    }
}

/// The delay before each reconnection attempt: the `n`-th failed attempt in
/// a row doubles it, up to `max`; each delay is drawn uniformly between half
/// of it and all of it.
pub(super) struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
    rng: SplitMix64,
}

impl Backoff {
    pub(super) fn new(initial: Duration, max: Duration, seed: u64) -> Backoff {
        Backoff {
            initial,
            max: max.max(initial),
            attempt: 0,
            rng: SplitMix64::new(seed),
        }
    }

    /// A seed that differs between processes and clients.
    pub(super) fn seed() -> u64 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_nanos() as u64);
        let local = 0u8;
        now ^ (u64::from(std::process::id()) << 32) ^ (&local as *const u8 as u64)
    }

    /// The delay before the next attempt.
    pub(super) fn next_delay(&mut self) -> Duration {
        let factor = 1u32 << self.attempt.min(20);
        let base = self.initial.saturating_mul(factor).min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let half = base / 2;
        let spread = (base - half).as_nanos() as u64;
        let jitter = if spread == 0 {
            0
        } else {
            self.rng.next() % (spread + 1)
        };
        half + Duration::from_nanos(jitter)
    }

    /// A connection succeeded: the next loss starts from the initial delay.
    pub(super) fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_with_jitter_up_to_the_cap() {
        let initial = Duration::from_millis(50);
        let max = Duration::from_secs(5);
        let mut backoff = Backoff::new(initial, max, 7);
        let mut seen = Vec::new();
        for attempt in 0..12u32 {
            let base = initial.saturating_mul(1 << attempt).min(max);
            let delay = backoff.next_delay();
            assert!(delay >= base / 2 && delay <= base, "{attempt}: {delay:?}");
            seen.push(delay);
        }
        assert!(seen[11] >= max / 2);
        backoff.reset();
        assert!(backoff.next_delay() <= initial);
    }

    #[test]
    fn jitter_differs_between_seeds() {
        let delays = |seed| {
            let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(1), seed);
            (0..4).map(|_| backoff.next_delay()).collect::<Vec<_>>()
        };
        assert_ne!(delays(1), delays(2));
    }
}
