//! `corebus serve`: start the shards and run until SIGINT or SIGTERM.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use corebus_shards::{EngineConfig, ServerConfig};
use tracing::info;
use tracing_subscriber::EnvFilter;

use crate::cli::ServeArgs;

static SIGNALLED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    SIGNALLED.store(true, Ordering::Release);
}

/// The shard configuration these arguments ask for.
pub fn server_config(args: &ServeArgs) -> ServerConfig {
    ServerConfig {
        listen: args.listen,
        shards: args.shards.map(usize::from),
        engine: EngineConfig {
            max_frame: args.max_frame,
            max_subscriptions_per_conn: args.max_subscriptions,
            outbox_limit_bytes: args.outbox_limit,
        },
    }
}

/// Runs the broker until a signal asks it to stop.
pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&args.log_level))
        .with_context(|| format!("invalid --log-level {:?}", args.log_level))?;
    tracing_subscriber::fmt().with_env_filter(filter).init();
    // SAFETY: installing a handler that only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    let server = corebus_shards::start(server_config(&args))?;
    println!(
        "corebus listening on {} with {} shards",
        server.local_addr(),
        server.shard_count()
    );
    while !SIGNALLED.load(Ordering::Acquire) {
        std::thread::sleep(Duration::from_millis(50));
    }
    info!("signal received, stopping");
    server.stop();
    Ok(())
}
