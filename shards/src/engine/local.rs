//! The subscriber side's table of topics with local subscribers.
//!
//! Keyed by topic like any map, but every entry also sits in a numbered slot,
//! and its [`LocalRef`] (slot and generation) goes to the owner with the
//! interest request. The owner addresses its deliveries by that handle, so a
//! `DeliverMsg` carries no topic key: the subscriber shard finds the entry by
//! index, without hashing or comparing the name, and no refcount of the
//! owner's copy of the key is bumped on one core and dropped on another for
//! every message.
//!
//! A removed entry's slot gets a new generation before it is reused, so a
//! delivery still in flight for the old entry finds nothing, exactly as a
//! lookup by name found nothing once the entry was gone.

use corebus_net::TopicKey;
use rustc_hash::FxHashMap;

use crate::local_ref::LocalRef;

/// Entries of type `E` by topic (or pattern), each in a numbered slot.
#[derive(Debug)]
pub(super) struct LocalTopics<E> {
    index: FxHashMap<TopicKey, u32>,
    slots: Vec<Slot<E>>,
    /// Slots with no entry, reused before the table grows.
    free: Vec<u32>,
}

impl<E> Default for LocalTopics<E> {
    fn default() -> Self {
        LocalTopics {
            index: FxHashMap::default(),
            slots: Vec::new(),
            free: Vec::new(),
        }
    }
}

#[derive(Debug)]
struct Slot<E> {
    generation: u32,
    entry: Option<E>,
}

impl<E> LocalTopics<E> {
    pub(super) fn len(&self) -> usize {
        self.index.len()
    }

    /// The handle of `topic`'s entry, if it has one.
    pub(super) fn handle(&self, topic: &TopicKey) -> Option<LocalRef> {
        let slot = *self.index.get(topic)?;
        Some(LocalRef {
            slot,
            generation: self.slots[slot as usize].generation,
        })
    }

    /// The table's own copy of `topic`'s key, if it has an entry.
    pub(super) fn key(&self, topic: &TopicKey) -> Option<&TopicKey> {
        self.index.get_key_value(topic).map(|(key, _)| key)
    }

    pub(super) fn get(&self, topic: &TopicKey) -> Option<&E> {
        let slot = *self.index.get(topic)?;
        self.slots[slot as usize].entry.as_ref()
    }

    pub(super) fn get_mut(&mut self, topic: &TopicKey) -> Option<&mut E> {
        let slot = *self.index.get(topic)?;
        self.slots[slot as usize].entry.as_mut()
    }

    /// The handles of every entry.
    pub(super) fn handles(&self) -> Vec<LocalRef> {
        self.index
            .values()
            .map(|&slot| LocalRef {
                slot,
                generation: self.slots[slot as usize].generation,
            })
            .collect()
    }

    /// Every entry.
    pub(super) fn values_mut(&mut self) -> impl Iterator<Item = &mut E> {
        self.slots.iter_mut().filter_map(|slot| slot.entry.as_mut())
    }

    /// The entry `handle` names, unless it was removed since.
    pub(super) fn by_handle(&self, handle: LocalRef) -> Option<&E> {
        let slot = self.slots.get(handle.slot as usize)?;
        (slot.generation == handle.generation)
            .then_some(slot.entry.as_ref())
            .flatten()
    }

    /// The entry `handle` names, unless it was removed since.
    pub(super) fn by_handle_mut(&mut self, handle: LocalRef) -> Option<&mut E> {
        let slot = self.slots.get_mut(handle.slot as usize)?;
        if slot.generation != handle.generation {
            return None;
        }
        slot.entry.as_mut()
    }

    /// Adds an entry for `topic`, which must have none (an existing entry is
    /// kept and its handle returned).
    pub(super) fn insert(&mut self, topic: TopicKey, entry: E) -> LocalRef {
        if let Some(handle) = self.handle(&topic) {
            return handle;
        }
        let slot = match self.free.pop() {
            Some(slot) => {
                self.slots[slot as usize].entry = Some(entry);
                slot
            }
            None => {
                // More than u32::MAX topics with local subscribers cannot
                // exist: each holds a subscription, and those are bounded per
                // connection and connections per process.
                let slot = u32::try_from(self.slots.len()).unwrap_or(u32::MAX);
                self.slots.push(Slot {
                    generation: 0,
                    entry: Some(entry),
                });
                slot
            }
        };
        self.index.insert(topic, slot);
        LocalRef {
            slot,
            generation: self.slots[slot as usize].generation,
        }
    }

    /// Removes `topic`'s entry; its handle stops naming anything.
    pub(super) fn remove(&mut self, topic: &TopicKey) -> Option<E> {
        let slot = self.index.remove(topic)?;
        let cell = &mut self.slots[slot as usize];
        cell.generation = cell.generation.wrapping_add(1);
        let entry = cell.entry.take();
        self.free.push(slot);
        entry
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::LocalTopic;

    fn key(topic: &str) -> TopicKey {
        TopicKey::from_strs("test", topic).expect("valid")
    }

    fn waiting(conn: u64) -> LocalTopic {
        LocalTopic {
            waiting: vec![(crate::ConnId(conn), 1, 1)],
            ..LocalTopic::default()
        }
    }

    #[test]
    fn a_handle_finds_its_entry_until_the_entry_is_removed() {
        let mut table = LocalTopics::<LocalTopic>::default();
        let a = table.insert(key("a"), waiting(1));
        let b = table.insert(key("b"), waiting(2));
        assert_ne!(a, b);
        assert_eq!(table.len(), 2);
        assert_eq!(table.handle(&key("a")), Some(a));
        assert_eq!(
            table.by_handle_mut(b).map(|e| e.waiting[0].0),
            Some(crate::ConnId(2))
        );
        assert!(table.remove(&key("a")).is_some());
        assert!(
            table.by_handle_mut(a).is_none(),
            "a removed entry's handle names nothing"
        );
        assert!(table.get(&key("a")).is_none());
        assert!(table.handle(&key("a")).is_none());
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn a_reused_slot_does_not_answer_to_the_old_handle() {
        let mut table = LocalTopics::<LocalTopic>::default();
        let old = table.insert(key("a"), waiting(1));
        table.remove(&key("a"));
        // The same topic again, and another topic: both may reuse the slot.
        let again = table.insert(key("a"), waiting(3));
        assert_eq!(again.slot, old.slot, "the free slot is reused");
        assert_ne!(again, old);
        assert!(table.by_handle_mut(old).is_none());
        assert_eq!(
            table.by_handle_mut(again).map(|e| e.waiting[0].0),
            Some(crate::ConnId(3))
        );
        table.remove(&key("a"));
        let other = table.insert(key("b"), waiting(4));
        assert!(table.by_handle_mut(again).is_none());
        assert!(table.by_handle_mut(old).is_none());
        assert_eq!(
            table.get_mut(&key("b")).map(|e| e.waiting[0].0),
            Some(crate::ConnId(4))
        );
        assert_eq!(table.handle(&key("b")), Some(other));
    }

    #[test]
    fn inserting_a_present_topic_keeps_its_entry() {
        let mut table = LocalTopics::<LocalTopic>::default();
        let first = table.insert(key("a"), waiting(1));
        let second = table.insert(key("a"), waiting(2));
        assert_eq!(first, second);
        assert_eq!(table.len(), 1);
        assert_eq!(
            table.get(&key("a")).map(|e| e.waiting[0].0),
            Some(crate::ConnId(1))
        );
    }

    #[test]
    fn a_handle_from_another_table_size_is_not_a_panic() {
        let mut table = LocalTopics::<LocalTopic>::default();
        let stray = LocalRef {
            slot: 7,
            generation: 0,
        };
        assert!(table.by_handle_mut(stray).is_none());
    }
}
