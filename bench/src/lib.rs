//! corebus-bench: load corebus, NATS and Redis pub/sub with the same
//! workloads, from the same code, and report delivered throughput, latency
//! and memory side by side.
//!
//! Role: the benchmark harness behind `corebus-bench` and `bench/compare.sh`
//! (issue 5). The load logic ([`load`], [`connections`]) is shared; only the
//! thin [`driver`] layer differs per broker. Every run checks delivery
//! ([`tracker`]): each payload carries its publisher's running counter (and
//! corebus adds its sequence numbers), so losses, duplicates and reordering
//! are counted, never assumed away. Load goes to loopback addresses only, and
//! every loop is bounded in count and time.
//!
//! `--target raw` is the baseline without a broker: the harness relays the
//! pair scenario through its own loopback TCP relay ([`relay`]), which
//! measures what the kernel's loopback costs for the same two socket hops.
//!
//! Must not depend on: corebus broker internals. It speaks to corebus only
//! through `corebus-client`, as any application would; the in-process broker
//! of the smoke test and the micro-benchmarks are dev-dependencies.
//!
//! # Example
//!
//! ```no_run
//! use corebus_bench::{RunOptions, Scenario, Target};
//!
//! # async fn run() -> Result<(), corebus_bench::BenchError> {
//! let mut options = RunOptions::new(Target::Corebus, Scenario::Fanout);
//! options.url = Some("127.0.0.1:7400".into());
//! options.duration = 2.0;
//! let report = corebus_bench::run(&options).await?;
//! println!("{}", report.table());
//! assert!(report.failure().is_none());
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

pub mod bounds;
pub mod connections;
pub mod driver;
pub mod flow;
pub mod lean;
pub mod load;
pub mod mqtt;
pub mod options;
pub mod payload;
pub mod progress;
pub mod relay;
pub mod report;
pub mod summary;
pub mod svg;
pub mod sys;
pub mod targets;
pub mod tracker;
pub mod workloads;

use std::sync::Arc;
use std::time::Duration;

pub use options::{Plan, RunOptions, Scenario, Target, Transport};
pub use report::Report;

use driver::{Endpoint, Incidents};

/// Everything that can stop a benchmark run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The options do not describe a run.
    #[error("invalid options: {0}")]
    Options(String),
    /// The URL is not (only) a loopback address.
    #[error("refusing {url}: the harness only loads loopback addresses ({reason})")]
    NotLoopback {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A client library call failed.
    #[error("{target}: {action} failed: {reason}")]
    Broker {
        /// Which broker.
        target: &'static str,
        /// What the harness was doing.
        action: &'static str,
        /// The client library's error.
        reason: String,
    },
    /// Publishers' last answers did not arrive in time.
    #[error("publishers were still waiting for the broker {0:?} after publishing stopped")]
    FinishTimeout(Duration),
    /// The broker's memory could not be read.
    #[error("cannot read the memory of process {pid}: {reason}")]
    Memory {
        /// The `--broker-pid`.
        pid: u32,
        /// Why.
        reason: String,
    },
    /// Too few file descriptors for the connections asked for.
    #[error(
        "need {needed} open files but the limit is {current} ({reason}); raise it with \
         `ulimit -n {needed}` (as root, or after raising the hard limit) before running"
    )]
    OpenFiles {
        /// Descriptors needed.
        needed: u64,
        /// The soft limit.
        current: u64,
        /// Why it could not be raised.
        reason: String,
    },
    /// A harness task panicked or was cancelled.
    #[error("a benchmark task failed: {0}")]
    Task(String),
    /// Reading or writing result files.
    #[error("{path}: {source}")]
    File {
        /// The file.
        path: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A results file that does not parse.
    #[error("{path}: not a benchmark result: {reason}")]
    BadResults {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
}

/// Runs one benchmark as `corebus-bench` does: resolves the options, checks
/// that the broker is on loopback, runs the scenario and returns its report
/// (whose [`Report::failure`] says whether delivery was complete).
///
/// Must be called inside a multi-threaded tokio runtime (the latency
/// scenario paces its publishers on blocking threads).
pub async fn run(options: &RunOptions) -> Result<Report, BenchError> {
    let plan = options.plan()?;
    let addrs = sys::loopback_addrs(&plan.url).await?;
    if let Some(ws_url) = &plan.ws_url {
        sys::loopback_addrs(ws_url).await?;
    }
    for url in &plan.subscriber_urls {
        sys::loopback_addrs(url).await?;
    }
    // The raw baseline's relay lives as long as the run. `addrs` is never
    // empty: `loopback_addrs` refuses a URL that resolves to nothing.
    let baseline_relay = match plan.target {
        Target::Raw => Some(relay::Relay::start(addrs[0]).await?),
        Target::Corebus | Target::Nats | Target::Redis => None,
    };
    let endpoint = Endpoint {
        target: plan.target,
        url: baseline_relay
            .as_ref()
            .map_or_else(|| plan.url.clone(), |relay| relay.addr().to_string()),
        acks: plan.acks,
        affinity: plan.affinity,
        compress: plan.compress,
        ws_url: plan.ws_url.clone(),
        incidents: Arc::new(Incidents::default()),
    };
    let _idle_patterns = match plan.idle_patterns {
        0 => Vec::new(),
        count => driver::corebus::hold_idle_patterns(&endpoint.url, count).await?,
    };
    if plan.lean {
        return lean::run(&plan).await;
    }
    match plan.scenario {
        Scenario::Connections => connections::run(&plan, &endpoint).await,
        Scenario::Pair | Scenario::Fanout | Scenario::Many | Scenario::Latency => {
            load::run(&plan, &endpoint).await
        }
    }
}
