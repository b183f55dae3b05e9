//! The corebus per-core engine.
//!
//! Role: everything one shard does. [`routing`] picks a topic's owner shard by
//! rendezvous hash; [`engine::Shard`] is the shard's state machine (owner-side
//! sequence numbers and interested shards, subscriber-side tables, connection
//! outboxes); [`mesh`] defines the messages shards exchange; [`runtime`] starts
//! one glommio executor per shard, joins the channel mesh and accepts
//! connections on listeners that share the address with SO_REUSEPORT (the
//! private `listen` module); [`host`] checks what the shards need of the
//! machine; [`conn`] drives one connection's socket; [`log_limit`] keeps
//! what a peer can make the shard log to a few lines a second.
//!
//! Must not depend on: the broker binary (configuration files, CLI, auth), the
//! client crate, or tokio. The wire format comes from `corebus-net` only.

pub mod auth;
pub mod cluster;
pub mod conn;
mod edge;
pub mod engine;
mod framing;
#[doc(hidden)]
pub mod fuzzing;
pub mod host;
mod link;
mod listen;
pub mod local_ref;
pub mod log_limit;
pub mod mesh;
pub mod metrics;
mod mqtt;
pub mod outbox;
pub mod patterns;
pub mod readiness;
pub mod ring;
pub mod routing;
pub mod runtime;
pub mod sends;
mod socket;
pub mod stats;
pub mod steer;
pub mod tls;
pub mod topic;
pub mod upstream;
#[cfg(test)]
mod wakes;
mod web;
pub mod webhooks;

pub use auth::{Authenticator, Grant, OpenAccess, Permissions};
pub use cluster::{ClusterCommandError, ClusterControl, NoCluster, NodeMap, Placement};
pub use corebus_gateway::Origins;
pub use engine::{CommandWait, ConnId, EngineConfig, Flow, Shard, SlowConsumerPolicy};
pub use listen::LISTEN_BACKLOG;
pub use metrics::{MetricsHandle, ShardMetrics};
pub use mqtt::{MqttSettings, SessionLimits};
pub use routing::ShardId;
pub use runtime::{start, MqttConfig, Server, ServerConfig, ShutdownHandle, StartError, WebConfig};
pub use sends::SendStats;
pub use topic::RingLimits;
pub use webhooks::{
    CommandAnswer, CommandError, CommandResult, NoWebhooks, WebhookCommandError, WebhookMessage,
    WebhookSink,
};
