//! What the shards ask of the cluster: answers to `CLUSTER_REQUEST`
//! commands. The broker implements it over the membership thread's member
//! list; the shards only pass commands through (and, later, read owners).

use std::fmt::Debug;

/// Why a cluster command failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClusterCommandError {
    /// The command is malformed or unknown (`invalid_request`).
    #[error("{0}")]
    Invalid(String),
    /// The broker could not answer (`internal`).
    #[error("{0}")]
    Internal(String),
}

/// Answers cluster commands. Implementations must not block: they read a
/// snapshot of the member list.
pub trait ClusterControl: Debug + Send + Sync {
    /// Carries out a `CLUSTER_REQUEST` command (a JSON object) from a
    /// super-user connection on a node of `shard_count` shards, and returns
    /// the JSON result.
    fn command(&self, command: &str, shard_count: usize) -> Result<String, ClusterCommandError>;
}

/// No cluster control: every command is refused.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoCluster;

impl ClusterControl for NoCluster {
    fn command(&self, _command: &str, _shard_count: usize) -> Result<String, ClusterCommandError> {
        Err(ClusterCommandError::Invalid(
            "this broker answers no cluster commands".into(),
        ))
    }
}
