//! How a subscriber shard names its table entry of one topic to the topic's
//! owner: the lowest layer of the cross-shard addressing, under the owner's
//! topic state (`topic`), the mesh messages (`mesh`) and the upstream
//! subscriptions of a cluster (`upstream`).

/// A subscriber shard's handle for its table entry of one topic: the slot
/// and that slot's generation. Sent to the owner with an interest request;
/// the owner addresses that shard's deliveries of the topic with it, so they
/// carry no topic key and need no lookup by name. A handle whose entry was
/// removed names nothing, even after its slot is reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalRef {
    /// Index of the entry in the subscriber shard's table.
    pub slot: u32,
    /// The slot's generation when the entry was made.
    pub generation: u32,
}
