//! The shard's budget for topic state: its part of
//! `EngineConfig::topic_memory_bytes`.
//!
//! Topics are virtual, so the number of topic states is whatever clients
//! name: without a bound, a client publishing to ever new names would keep
//! each one's state and replay ring until idle eviction, and could grow the
//! broker until the kernel killed it. Each shard counts what its topics hold
//! ([`OwnedTopic::retained`]) as they are made, appended to and evicted, and
//! once over its budget frees memory down to [`RELIEF_TARGET_PERCENT`] of it:
//!
//! 1. Topics that no shard subscribes to, least recently active first: the
//!    state only serves a later subscriber or a resume, and idle eviction would
//!    drop it anyway. Its next use starts a new epoch, so a resume across it
//!    gets a gap report, as after idle eviction.
//! 2. If that is not enough (every remaining topic has subscribers), the
//!    replay rings, the longest first, down to one common length in bytes. A
//!    resume from before what a ring still holds gets a gap report.
//!
//! Nothing is lost silently either way. The target below the budget means a
//! pass over the topics runs once per fifth of the budget of new state, not
//! on every publish.
//!
//! [`OwnedTopic::retained`]: crate::topic::OwnedTopic::retained

use corebus_net::TopicKey;

use super::Shard;

/// Share of the budget a relief pass frees memory down to.
const RELIEF_TARGET_PERCENT: usize = 80;

impl Shard {
    /// Frees topic memory if the shard holds more than its budget.
    #[inline]
    pub(super) fn check_topic_memory(&mut self) {
        if self.retained > self.memory_budget {
            self.relieve_topic_memory();
        }
    }

    #[cold]
    fn relieve_topic_memory(&mut self) {
        let target = self.memory_budget / 100 * RELIEF_TARGET_PERCENT;
        self.evict_unsubscribed_down_to(target);
        if self.retained > target {
            self.trim_rings_down_to(target);
        }
    }

    /// Step 1: unsubscribed topics, least recently active first.
    fn evict_unsubscribed_down_to(&mut self, target: usize) {
        let mut candidates: Vec<(u64, usize, TopicKey)> = self
            .owned
            .iter()
            .filter(|(_, topic)| topic.interested.is_empty() && topic.upstream.is_none())
            .map(|(key, topic)| (topic.last_active_ms, topic.retained(), key.clone()))
            .collect();
        // Only as many of the oldest as it takes: a partial selection, not a
        // sort, since a flood of one-off names can leave millions here.
        let mut excess = self.retained.saturating_sub(target);
        let mut rest = candidates.as_mut_slice();
        while excess > 0 && !rest.is_empty() {
            let average = rest.iter().map(|(_, size, _)| size).sum::<usize>() / rest.len();
            let count = excess.div_ceil(average.max(1)).clamp(1, rest.len());
            rest.select_nth_unstable_by_key(count - 1, |(active, _, _)| *active);
            let (oldest, newer) = rest.split_at_mut(count);
            for (_, _, key) in oldest.iter() {
                if let Some(topic) = self.owned.remove(key) {
                    let size = topic.retained();
                    self.retained -= size;
                    excess = excess.saturating_sub(size);
                    self.stats.topics_evicted_for_memory += 1;
                }
            }
            rest = newer;
        }
    }

    /// Step 2: every ring down to one length in bytes, as long as it takes
    /// to reach `target` (rings shorter than that are left alone).
    fn trim_rings_down_to(&mut self, target: usize) {
        let mut rings: Vec<usize> = self.owned.values().map(|t| t.ring_retained()).collect();
        let fixed = self.retained - rings.iter().sum::<usize>();
        let cap = water_level(&mut rings, target.saturating_sub(fixed));
        for topic in self.owned.values_mut() {
            let before = topic.ring_retained();
            let dropped = topic.trim_ring(cap);
            self.retained -= before - topic.ring_retained();
            self.stats.replay_messages_trimmed += dropped as u64;
        }
    }
}

/// The largest `cap` with `sum(min(size, cap)) <= budget` (`usize::MAX`
/// when everything fits). Sorts `sizes`.
pub(super) fn water_level(sizes: &mut [usize], budget: usize) -> usize {
    sizes.sort_unstable();
    let mut left = budget;
    for (index, &size) in sizes.iter().enumerate() {
        let remaining = sizes.len() - index;
        match size.checked_mul(remaining) {
            Some(all) if all <= left => left -= size,
            _ => return left / remaining,
        }
    }
    usize::MAX
}

#[cfg(test)]
mod tests {
    use super::water_level;

    #[test]
    fn the_water_level_caps_the_largest_first() {
        assert_eq!(water_level(&mut [], 10), usize::MAX);
        assert_eq!(water_level(&mut [3, 4], 7), usize::MAX, "everything fits");
        // 10 + 10 + 30 under 30: three rings of 10 fill it.
        assert_eq!(water_level(&mut [30, 10, 10], 30), 10);
        // 2 + 40 + 40 under 42: 2 fits whole, the two others get 20 each.
        assert_eq!(water_level(&mut [40, 2, 40], 42), 20);
        assert_eq!(water_level(&mut [5, 5], 0), 0);
        let mut sizes = [1_000, 7, 300, 50, 50];
        let cap = water_level(&mut sizes, 300);
        let kept: usize = sizes.iter().map(|size| (*size).min(cap)).sum();
        assert!(kept <= 300, "{kept} over the budget at cap {cap}");
        assert!(
            sizes.iter().map(|size| (*size).min(cap + 1)).sum::<usize>() > 300,
            "cap {cap} is not the largest"
        );
    }
}
