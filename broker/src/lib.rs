//! The `corebus` binary's library: command-line parsing, the `serve` command
//! that starts the shard executors, and the `pub`/`sub` commands built on the
//! client crate.
//!
//! Must not depend on: shard internals beyond `corebus_shards::start` and its
//! configuration (the engine is reached only through the runtime), nor on any
//! protocol detail the client crate already hides.

pub mod cli;
pub mod output;
pub mod pubsub;
pub mod serve;
