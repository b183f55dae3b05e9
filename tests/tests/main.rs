//! Black-box tests of the shards against an in-process broker on loopback.
//!
//! One test binary for the whole directory: each file is a module, so a
//! fresh build links once instead of once per file (docs/testing.md).

mod affinity;
mod compression;
mod delivery;
mod guarantees;
mod hostile;
mod layering;
mod memory;
mod mqtt;
mod reconnect;
mod sends;
mod tls;
mod web;
mod wildcards;
