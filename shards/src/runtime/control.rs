//! What the outside world and the shards share about a running broker: the
//! stop flag (running, draining, stopping), reloaded limits, and why a start
//! failed. The layer under both the shard threads (`shard`) and the handles
//! that drive them (`Server`, `ShutdownHandle`).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU8};

use crate::engine::EngineConfig;
use crate::host::HostError;
use crate::routing::ShardId;

/// Why the broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// `--shards 0`, or more shards than shard ids.
    #[error("invalid shard count {count}: it must be between 1 and {max}")]
    InvalidShardCount {
        /// The count asked for.
        count: usize,
        /// The largest allowed.
        max: usize,
    },
    /// The listen address is taken or not ours to bind.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The host does not give io_uring what it needs.
    #[error(transparent)]
    Host(#[from] HostError),
    /// A shard executor failed to start.
    #[error("shard {shard} failed to start: {reason}")]
    Shard {
        /// Which shard.
        shard: ShardId,
        /// glommio's explanation.
        reason: String,
    },
}

pub(super) const RUNNING: u8 = 0;
pub(super) const DRAINING: u8 = 1;
pub(super) const STOPPING: u8 = 2;

/// How the outside world tells the shards to stop.
#[derive(Debug, Default)]
pub(super) struct Control {
    pub(super) state: AtomicU8,
    pub(super) drain_ms: AtomicU32,
    /// Limits a reload set ([`Server::set_limits`]), numbered; each shard
    /// takes them on its tick and says which number it took.
    pub(super) limits: std::sync::Mutex<Option<(u64, EngineConfig)>>,
    pub(super) limits_taken: std::sync::Mutex<Vec<u64>>,
}

impl Control {
    /// The limits numbered after `seen`, if a reload set some.
    pub(super) fn limits_after(&self, seen: u64) -> Option<(u64, EngineConfig)> {
        let limits = self.limits.lock().unwrap_or_else(|e| e.into_inner());
        limits
            .as_ref()
            .filter(|(number, _)| *number > seen)
            .cloned()
    }

    /// Shard `id` has taken the limits numbered `number`.
    pub(super) fn took_limits(&self, id: ShardId, number: u64) {
        let mut taken = self.limits_taken.lock().unwrap_or_else(|e| e.into_inner());
        let index = usize::from(id);
        if taken.len() <= index {
            taken.resize(index + 1, 0);
        }
        taken[index] = number;
    }
}
