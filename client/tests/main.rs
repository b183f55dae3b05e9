//! The Rust client against a fake server and a real broker.
//!
//! One test binary for the whole directory: each file is a module, so a
//! fresh build links once instead of once per file (docs/testing.md).

mod common;

mod events;
mod fake_server;
mod resume;
mod webhooks;
