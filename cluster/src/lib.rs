//! corebus across nodes: who the members are, and which of them are alive.
//!
//! Membership and failure detection are foca's (SWIM with suspicion: direct
//! and indirect probes, gossip, a planned leave, restarts told apart by
//! generation); this crate gives it an identity ([`NodeIdentity`]), a byte
//! layout ([`GossipCodec`]), an envelope that authenticates every datagram
//! with the cluster secret ([`envelope`]), a clock-driven node without I/O
//! ([`Node`]), and the thread that runs it on a UDP socket, off the shard
//! threads, publishing each change as a [`MemberView`] snapshot.
//!
//! Must not depend on: the shards, the broker, any async runtime (the
//! membership thread is a plain thread with a blocking UDP socket).

mod codec;
pub mod envelope;
mod identity;
pub mod links;
mod membership;
mod node;

pub use codec::{CodecError, GossipCodec};
pub use envelope::{GossipKeys, WeakSecret};
pub use identity::{Generation, NodeIdentity};
pub use links::LinkKey;
pub use membership::{ClusterView, MemberView, Membership, MembershipConfig};
pub use node::{DatagramError, Member, MemberState, Node, Timing, MAX_DATAGRAM};
