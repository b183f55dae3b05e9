//! The `corebus` binary end to end: every black-box test of the broker crate.
//!
//! One test binary for the whole directory: each file is a module, so a
//! fresh build links once instead of once per file (docs/testing.md).

mod common;

mod auth;
mod browser;
mod cli;
mod cli_pubsub;
mod cluster;
mod cluster_mqtt;
mod cluster_sessions;
mod logging;
mod mqtt_interop;
mod ops;
mod promises;
mod reload;
mod shutdown;
mod slow_consumer;
mod tls_cli;
mod web;
mod webhooks;
