//! Vectors a shard's writers borrow while they have something to write.
//!
//! A writer takes frames from its outbox into one vector, encodes them at
//! once into the segments of another, and writes those: kept by every
//! connection after its first write, the two held about 0.4 KiB per idle
//! connection. Lent instead, a shard holds a few for all its writers, and
//! a busy one takes them back without allocating.

use std::cell::RefCell;

use bytes::Bytes;

use crate::outbox::OutFrame;

/// Vectors kept per shard and per kind; more are dropped when given back.
const KEPT: usize = 64;

/// A vector that grew past this many items is dropped when given back,
/// not kept for the next writer.
const LARGEST_KEPT: usize = 1024;

struct Spares<T>(Vec<Vec<T>>);

impl<T> Spares<T> {
    fn take(&mut self) -> Vec<T> {
        self.0.pop().unwrap_or_default()
    }

    fn give(&mut self, mut spare: Vec<T>) {
        spare.clear();
        if spare.capacity() > 0 && spare.capacity() <= LARGEST_KEPT && self.0.len() < KEPT {
            self.0.push(spare);
        }
    }
}

thread_local! {
    static BATCHES: RefCell<Spares<OutFrame>> = const { RefCell::new(Spares(Vec::new())) };
    static SEGMENTS: RefCell<Spares<Bytes>> = const { RefCell::new(Spares(Vec::new())) };
}

/// An empty vector for frames taken from an outbox.
pub(super) fn take_batch() -> Vec<OutFrame> {
    BATCHES.with(|spares| spares.borrow_mut().take())
}

/// Gives `batch` back (emptied) for another writer.
pub(super) fn give_batch(batch: Vec<OutFrame>) {
    BATCHES.with(|spares| spares.borrow_mut().give(batch));
}

/// An empty vector for the segments of a write.
pub(super) fn take_segments() -> Vec<Bytes> {
    SEGMENTS.with(|spares| spares.borrow_mut().take())
}

/// Gives `segments` back (emptied) for another writer.
pub(super) fn give_segments(segments: Vec<Bytes>) {
    SEGMENTS.with(|spares| spares.borrow_mut().give(segments));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_given_back_vector_is_lent_again_empty_and_a_grown_one_is_not_kept() {
        let mut spares = Spares::<u32>(Vec::new());
        let mut lent = spares.take();
        assert_eq!(
            lent.capacity(),
            0,
            "nothing kept yet: a new, unallocated vector"
        );
        lent.extend([1, 2, 3]);
        let capacity = lent.capacity();
        spares.give(lent);
        let again = spares.take();
        assert!(again.is_empty());
        assert_eq!(
            again.capacity(),
            capacity,
            "the same allocation, lent again"
        );
        spares.give(Vec::with_capacity(LARGEST_KEPT + 1));
        assert!(
            spares.0.is_empty(),
            "a vector grown past the bound is dropped"
        );
        for _ in 0..KEPT + 5 {
            spares.give(Vec::with_capacity(4));
        }
        assert_eq!(spares.0.len(), KEPT, "at most KEPT are kept");
    }
}
