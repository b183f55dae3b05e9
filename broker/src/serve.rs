//! `corebus serve`: resolve the configuration, check the host, start the
//! shards and run until SIGINT or SIGTERM.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::ArgMatches;
use corebus_shards::{EngineConfig, RingLimits, ServerConfig, SlowConsumerPolicy};
use tracing::{debug, info};
use tracing_subscriber::EnvFilter;

use crate::cli::{LogFormat, ServeArgs, ServeCommand, SlowConsumer};
use crate::config::{self, Origin, Resolved};

static SIGNALLED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    SIGNALLED.store(true, Ordering::Release);
}

/// The shard configuration these settings ask for, or why they are
/// inconsistent.
pub fn server_config(args: &ServeArgs) -> anyhow::Result<ServerConfig> {
    if let Err(conflict) = config::check_consistency(args) {
        bail!("{conflict}");
    }
    Ok(ServerConfig {
        listen: args.listen,
        shards: args.shards.count(),
        engine: EngineConfig {
            max_frame: args.max_frame,
            max_subscriptions_per_conn: args.max_subscriptions,
            outbox_limit_bytes: args.outbox_limit,
            slow_consumer: match args.slow_consumer {
                SlowConsumer::Drop => SlowConsumerPolicy::Drop,
                SlowConsumer::Disconnect => SlowConsumerPolicy::Disconnect,
            },
            ring: RingLimits {
                max_messages: args.ring_messages,
                max_bytes: args.ring_bytes,
            },
            topic_idle_evict_ms: args.topic_idle_evict.as_millis() as u64,
            heartbeat_interval_ms: args.heartbeat_interval.as_millis() as u64,
            heartbeat_timeout_ms: args.heartbeat_timeout.as_millis() as u64,
            ..EngineConfig::default()
        },
        ..ServerConfig::default()
    })
}

/// `corebus serve`: `matches` are the `serve` subcommand's, which say
/// whether each setting came from a flag, the environment or a default.
pub fn main(command: ServeCommand, matches: &ArgMatches) -> anyhow::Result<()> {
    let resolved = config::resolve(command.file.config.as_deref(), command.settings, matches)?;
    if command.print_config {
        print!("{}", resolved.to_file());
        return Ok(());
    }
    run(resolved)
}

/// Installs the global log subscriber on stderr: `level` unless RUST_LOG is
/// set, in `format`.
pub fn init_logging(level: &str, format: LogFormat) -> anyhow::Result<()> {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .with_context(|| format!("invalid log_level {level:?}"))?;
    // Colours only for a person at a terminal, not for journald or files.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    Ok(())
}

/// Runs the broker until a signal asks it to stop.
pub fn run(resolved: Resolved) -> anyhow::Result<()> {
    let args = &resolved.args;
    init_logging(&args.log_level, args.log_format)?;
    for setting in &resolved.settings {
        if setting.origin != Origin::Default {
            debug!(key = %setting.key, value = %setting.value, origin = %setting.origin, "setting");
        }
    }
    let config = server_config(args)?;
    crate::doctor::preflight(args.shards)?;
    // SAFETY: installing a handler that only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    let server = corebus_shards::start(config)?;
    if let Some(addr) = args.metrics.0 {
        let bound = crate::metrics::spawn(addr, server.metrics())
            .with_context(|| format!("cannot serve metrics on {addr}"))?;
        info!(addr = %bound, "metrics on /metrics, health on /healthz");
    }
    println!(
        "corebus listening on {} with {} shards",
        server.local_addr(),
        server.shard_count()
    );
    while !SIGNALLED.load(Ordering::Acquire) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let deadline = args.shutdown_deadline;
    info!(?deadline, "signal received: sending GOAWAY and draining");
    server.shutdown(deadline);
    info!("stopped");
    Ok(())
}
