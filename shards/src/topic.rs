//! Owner-side state of one topic: its epoch, sequence counter, replay ring and
//! interested shards. Pure data and arithmetic, no I/O.

use bytes::Bytes;
use corebus_net::{Epoch, ResumePoint, Seq, TopicKey};

use crate::local_ref::LocalRef;
use crate::ring::PayloadRing;
use crate::routing::ShardId;

/// What one topic's state costs beyond its name and ring, as the memory
/// budget counts it: the table entry with its hash-map slot, the ring's
/// buffer headers and the interested shards (an estimate: the allocator's
/// own overhead is not counted).
pub const TOPIC_OVERHEAD: usize = 512;

/// What one ring entry costs beyond its payload: its length in the ring's
/// queue of lengths.
pub const RING_ENTRY_OVERHEAD: usize = std::mem::size_of::<u32>();

/// Bounds of each topic's replay ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingLimits {
    /// Most messages kept.
    pub max_messages: usize,
    /// Most payload bytes kept.
    pub max_bytes: usize,
}

impl Default for RingLimits {
    fn default() -> Self {
        RingLimits {
            max_messages: 1024,
            max_bytes: 1 << 20,
        }
    }
}

/// What a resuming subscriber gets, computed by the owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumePlan {
    /// The subscription's start point: the replay and then the live stream
    /// continue from `start_after + 1`.
    pub start_after: Seq,
    /// `(last_seq, next_seq)` for a `DISCONTINUITY` sent before the replay,
    /// when the resume point could not be honoured.
    pub gap: Option<(Seq, Seq)>,
    /// Messages to replay, in order.
    pub replay: Vec<(Seq, Bytes)>,
}

/// Owner-side state of a topic. Mutated only by the owning shard's engine.
#[derive(Debug)]
pub struct OwnedTopic {
    /// The topic (a compact copy: see [`TopicKey::compact`]).
    key: TopicKey,
    epoch: Epoch,
    last_seq: Seq,
    /// The payloads of messages `last_seq - ring.len() + 1 ..= last_seq`.
    ring: PayloadRing,
    /// Shards with at least one subscriber or resume in flight, this one
    /// included, each with the handle of its table entry for the topic. A
    /// handful at most, so a small vector beats a set.
    pub interested: smallvec::SmallVec<[(ShardId, LocalRef); 2]>,
    /// Coarse time (engine milliseconds) of the last publish or subscribe.
    pub last_active_ms: u64,
    /// The webhook generation `webhooks_wanted` was computed for (0: never).
    pub webhooks_generation: u64,
    /// Whether a webhook wants this topic's messages.
    pub webhooks_wanted: bool,
    /// Set when another node of the cluster owns the topic: this state is
    /// then a mirror of the owner's (its epoch, sequence numbers and ring,
    /// fed by one subscription over the link to that node), which this
    /// shard fans out to the node's interested shards as if it owned it.
    pub upstream: Option<Box<crate::upstream::Upstream>>,
    /// Taken over from another node with its state: that node (its client
    /// address) and until when (engine ms) the topic's webhook messages
    /// say so, so that they wait for the node's last deliveries.
    pub moved_from: Option<Box<(std::net::SocketAddr, u64)>>,
}

impl OwnedTopic {
    /// A fresh incarnation: no messages yet, sequence numbers start at 1.
    pub fn new(key: TopicKey, epoch: Epoch, now_ms: u64) -> OwnedTopic {
        OwnedTopic {
            key,
            epoch,
            last_seq: 0,
            ring: PayloadRing::default(),
            interested: smallvec::SmallVec::new(),
            last_active_ms: now_ms,
            webhooks_generation: 0,
            webhooks_wanted: false,
            upstream: None,
            moved_from: None,
        }
    }

    /// Starts over at `last_seq` of `epoch` with an empty ring: a mirror
    /// whose owner changed or lost messages, or a topic that changes hands.
    pub fn restart(&mut self, epoch: Epoch, last_seq: Seq) {
        self.epoch = epoch;
        self.last_seq = last_seq;
        self.ring.clear();
    }

    /// A mirror's copy of the owner's message `seq`, which must follow the
    /// last one (`false`, and nothing changes, otherwise).
    pub fn append_copy(
        &mut self,
        seq: Seq,
        payload: &Bytes,
        limits: RingLimits,
        now_ms: u64,
    ) -> bool {
        if seq != self.last_seq + 1 {
            return false;
        }
        self.append(payload, limits, now_ms);
        true
    }

    /// The topic.
    pub fn key(&self) -> &TopicKey {
        &self.key
    }

    /// This incarnation's epoch.
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// Last sequence number assigned (0 before the first message).
    pub fn last_seq(&self) -> Seq {
        self.last_seq
    }

    /// The oldest sequence number still in the ring (`last_seq + 1` when empty).
    pub fn first_retained(&self) -> Seq {
        self.last_seq + 1 - self.ring.len() as Seq
    }

    /// Payload bytes held by the ring.
    pub fn ring_bytes(&self) -> usize {
        self.ring.payload_bytes()
    }

    /// Messages held by the ring.
    pub fn ring_len(&self) -> usize {
        self.ring.len()
    }

    /// Memory this topic's state holds, as the shard's budget counts it:
    /// [`TOPIC_OVERHEAD`], the name, and [`Self::ring_retained`].
    pub fn retained(&self) -> usize {
        TOPIC_OVERHEAD + self.key.wire_bytes().len() + self.ring_retained()
    }

    /// Memory the replay ring holds: payload bytes plus
    /// [`RING_ENTRY_OVERHEAD`] per message.
    pub fn ring_retained(&self) -> usize {
        self.ring.payload_bytes() + self.ring.len() * RING_ENTRY_OVERHEAD
    }

    /// Drops the oldest messages of the ring until it holds at most `max`
    /// bytes by [`Self::ring_retained`]; returns how many it dropped. A
    /// resume from before what is left gets a gap report, as for any message
    /// the ring no longer holds.
    pub fn trim_ring(&mut self, max: usize) -> usize {
        let mut dropped = 0;
        while self.ring_retained() > max && self.ring.pop_oldest() {
            dropped += 1;
        }
        dropped
    }

    /// Assigns the next sequence number and keeps the payload for replay
    /// (unless it is larger than the ring may hold); returns the sequence
    /// number.
    pub fn append(&mut self, payload: &Bytes, limits: RingLimits, now_ms: u64) -> Seq {
        self.last_seq += 1;
        self.last_active_ms = now_ms;
        if limits.max_messages > 0 && payload.len() <= limits.max_bytes {
            // Room first, then the message: the ring never holds more than
            // `max_messages` entries, so its buffer stops growing at that
            // size instead of doubling for one entry more.
            while (self.ring.len() >= limits.max_messages
                || self.ring.payload_bytes() + payload.len() > limits.max_bytes)
                && self.ring.pop_oldest()
            {}
            self.ring.push(payload);
            debug_assert!(
                self.ring.len() <= limits.max_messages
                    && self.ring.payload_bytes() <= limits.max_bytes,
                "ring over its bounds: {} messages, {} bytes",
                self.ring.len(),
                self.ring.payload_bytes()
            );
        } else {
            // Too large to keep: the ring must not hold anything older either,
            // or a replay would skip this message silently.
            self.ring.clear();
        }
        self.last_seq
    }

    /// What a subscriber resuming at `point` gets.
    ///
    /// - Same epoch (or epoch 0, "current"), point within the ring: exactly the
    ///   messages from the point on.
    /// - Same epoch, point past the last message: nothing was missed.
    /// - Point older than the ring, or another epoch: a gap report, then all
    ///   the ring holds.
    pub fn resume(&self, point: ResumePoint) -> ResumePlan {
        let first = self.first_retained();
        let same_epoch = point.epoch == 0 || point.epoch == self.epoch;
        let want = point.next_seq.max(1);
        if same_epoch && want > self.last_seq {
            return ResumePlan {
                start_after: self.last_seq,
                gap: None,
                replay: Vec::new(),
            };
        }
        let (from, gap) = if same_epoch && want >= first {
            (want, None)
        } else {
            (first, Some((want - 1, first)))
        };
        let replay = (from..)
            .zip(self.ring.newest((self.last_seq + 1 - from) as usize))
            .collect();
        ResumePlan {
            start_after: from - 1,
            gap,
            replay,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topic_with(count: u64, limits: RingLimits) -> OwnedTopic {
        let key = TopicKey::from_strs("test", "ring").expect("valid");
        let mut topic = OwnedTopic::new(key, 42, 0);
        for i in 1..=count {
            topic.append(&Bytes::from(i.to_string()), limits, 0);
        }
        topic
    }

    fn seqs(plan: &ResumePlan) -> Vec<Seq> {
        plan.replay.iter().map(|(seq, _)| *seq).collect()
    }

    const SMALL: RingLimits = RingLimits {
        max_messages: 4,
        max_bytes: 1 << 20,
    };

    #[test]
    fn ring_is_bounded_by_count_and_bytes() {
        let topic = topic_with(10, SMALL);
        assert_eq!(topic.last_seq(), 10);
        assert_eq!(topic.first_retained(), 7);
        assert_eq!(topic.ring_len(), 4);
        assert_eq!(
            topic.ring.entry_capacity(),
            4,
            "the buffer holds max_messages entries, no more"
        );
        let by_bytes = topic_with(
            10,
            RingLimits {
                max_messages: 100,
                max_bytes: 5,
            },
        );
        // "6".."9" are one byte each, "10" two: the newest 5 bytes are 7,8,9,10.
        assert_eq!(by_bytes.first_retained(), 7);
        assert!(by_bytes.ring_bytes() <= 5);
    }

    #[test]
    fn resume_inside_the_ring_replays_exactly_from_the_point() {
        let topic = topic_with(10, SMALL);
        let plan = topic.resume(ResumePoint {
            epoch: 42,
            next_seq: 8,
        });
        assert_eq!(plan.start_after, 7);
        assert_eq!(plan.gap, None);
        assert_eq!(seqs(&plan), vec![8, 9, 10]);
        // Epoch 0 means the current epoch.
        let any = topic.resume(ResumePoint {
            epoch: 0,
            next_seq: 10,
        });
        assert_eq!((any.start_after, seqs(&any)), (9, vec![10]));
    }

    #[test]
    fn resume_past_the_end_misses_nothing() {
        let topic = topic_with(10, SMALL);
        let plan = topic.resume(ResumePoint {
            epoch: 42,
            next_seq: 11,
        });
        assert_eq!(
            plan,
            ResumePlan {
                start_after: 10,
                gap: None,
                replay: vec![]
            }
        );
    }

    #[test]
    fn resume_before_the_ring_reports_the_exact_gap() {
        let topic = topic_with(10, SMALL);
        let plan = topic.resume(ResumePoint {
            epoch: 42,
            next_seq: 3,
        });
        assert_eq!(plan.gap, Some((2, 7)));
        assert_eq!(plan.start_after, 6);
        assert_eq!(seqs(&plan), vec![7, 8, 9, 10]);
    }

    #[test]
    fn resume_in_another_epoch_reports_a_gap_into_this_one() {
        let topic = topic_with(3, SMALL);
        let plan = topic.resume(ResumePoint {
            epoch: 7,
            next_seq: 500,
        });
        assert_eq!(plan.gap, Some((499, 1)));
        assert_eq!(plan.start_after, 0);
        assert_eq!(seqs(&plan), vec![1, 2, 3]);
    }

    #[test]
    fn replay_hands_out_copies_of_small_payloads_and_large_ones_shared() {
        let key = TopicKey::from_strs("test", "copy").expect("valid");
        let mut topic = OwnedTopic::new(key, 1, 0);
        let frame = Bytes::from(vec![7u8; 8192]);
        let inside = |bytes: &Bytes| frame.as_ptr_range().contains(&bytes.as_ptr());
        let small = frame.slice(10..138);
        assert_eq!(topic.append(&small, RingLimits::default(), 0), 1);
        let large = frame.slice(..crate::ring::COPY_MAX + 1);
        assert_eq!(topic.append(&large, RingLimits::default(), 0), 2);
        let plan = topic.resume(ResumePoint {
            epoch: 1,
            next_seq: 1,
        });
        assert_eq!(plan.replay, vec![(1, small.clone()), (2, large.clone())]);
        assert!(
            !inside(&plan.replay[0].1),
            "a copy, not a slice of the frame"
        );
        assert!(
            inside(&plan.replay[1].1),
            "large payloads are shared, not copied"
        );
        let limits = RingLimits {
            max_messages: 10,
            max_bytes: 8,
        };
        assert_eq!(topic.append(&small, limits, 0), 3, "too large to keep");
        assert_eq!(topic.ring_len(), 0);
    }

    #[test]
    fn retained_counts_name_ring_payloads_and_entries() {
        let key = TopicKey::from_strs("test", "mem").expect("valid");
        let name = key.wire_bytes().len();
        let mut topic = OwnedTopic::new(key, 1, 0);
        assert_eq!(topic.retained(), TOPIC_OVERHEAD + name);
        for _ in 0..3 {
            topic.append(&Bytes::from(vec![1u8; 100]), RingLimits::default(), 0);
        }
        assert_eq!(topic.ring_retained(), 3 * (100 + RING_ENTRY_OVERHEAD));
        assert_eq!(
            topic.retained(),
            TOPIC_OVERHEAD + name + 3 * (100 + RING_ENTRY_OVERHEAD)
        );
    }

    #[test]
    fn trimming_drops_the_oldest_messages_and_resume_reports_the_gap() {
        let key = TopicKey::from_strs("test", "trim").expect("valid");
        let mut topic = OwnedTopic::new(key, 42, 0);
        for _ in 0..10 {
            topic.append(&Bytes::from_static(b"8 bytes!"), RingLimits::default(), 0);
        }
        let entry = 8 + RING_ENTRY_OVERHEAD;
        assert_eq!(topic.trim_ring(topic.ring_retained()), 0, "already within");
        assert_eq!(topic.trim_ring(4 * entry + entry / 2), 6);
        assert_eq!((topic.ring_len(), topic.first_retained()), (4, 7));
        let plan = topic.resume(ResumePoint {
            epoch: topic.epoch(),
            next_seq: 3,
        });
        assert_eq!(plan.gap, Some((2, 7)), "messages 3 to 6 were trimmed");
        assert_eq!(seqs(&plan), vec![7, 8, 9, 10]);
        assert_eq!(topic.trim_ring(0), 4);
        assert_eq!((topic.ring_len(), topic.ring_bytes()), (0, 0));
        assert_eq!(topic.first_retained(), 11);
        // Sequence numbers go on where they were.
        let seq = topic.append(&Bytes::from_static(b"next"), RingLimits::default(), 0);
        assert_eq!(seq, 11);
    }

    #[test]
    fn an_unkept_oversized_message_empties_the_ring() {
        let limits = RingLimits {
            max_messages: 10,
            max_bytes: 8,
        };
        let mut topic = topic_with(3, limits);
        topic.append(&Bytes::from(vec![0; 9]), limits, 0);
        assert_eq!(topic.first_retained(), 5);
        let plan = topic.resume(ResumePoint {
            epoch: 42,
            next_seq: 2,
        });
        assert_eq!(plan.gap, Some((1, 5)));
        assert!(plan.replay.is_empty());
    }
}
