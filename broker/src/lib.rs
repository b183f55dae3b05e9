//! The `corebus` binary's library: command-line parsing, configuration
//! layering (flags, environment, file), the host checks of `doctor`, the
//! `serve` command that starts the shard executors, and the `pub`/`sub`
//! commands built on the client crate; API keys and tokens (`auth`, `jwt`,
//! `auth_config`, `permissions`) and the `key` / `token` commands; `stdio`
//! is how every command prints.
//!
//! Must not depend on: shard internals beyond `corebus_shards::start`, its
//! configuration and the runtime's host requirements (the engine is reached
//! only through the runtime), nor on any protocol detail the client crate
//! already hides.

pub mod auth;
pub mod auth_cmd;
pub mod auth_config;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod config_text;
pub mod control;
pub mod doctor;
pub mod embedded;
pub mod http_server;
pub mod jwt;
pub mod metrics;
pub mod output;
pub mod parts;
pub mod permissions;
pub mod pubsub;
pub mod reload;
pub mod serve;
pub mod stdio;
pub mod webhook;
pub mod webhook_cmd;
