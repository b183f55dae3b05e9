//! `corebus serve`: start the shards and run until SIGINT or SIGTERM.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{bail, Context};
use corebus_shards::{EngineConfig, RingLimits, ServerConfig, SlowConsumerPolicy};
use tracing::info;
use tracing_subscriber::EnvFilter;

use crate::cli::{ServeArgs, SlowConsumer};

static SIGNALLED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    SIGNALLED.store(true, Ordering::Release);
}

/// The shard configuration these arguments ask for, or why they are
/// inconsistent.
pub fn server_config(args: &ServeArgs) -> anyhow::Result<ServerConfig> {
    if args.heartbeat_timeout <= args.heartbeat_interval {
        bail!(
            "--heartbeat-timeout ({:?}) must be longer than --heartbeat-interval ({:?})",
            args.heartbeat_timeout,
            args.heartbeat_interval
        );
    }
    if args.outbox_limit < args.max_frame as usize {
        bail!(
            "--outbox-limit ({}) must be at least --max-frame ({}), or no maximum-size \
             message could ever be queued behind another",
            args.outbox_limit,
            args.max_frame
        );
    }
    Ok(ServerConfig {
        listen: args.listen,
        shards: args.shards.map(usize::from),
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
        },
    })
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
    let config = server_config(&args)?;
    let server = corebus_shards::start(config)?;
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
