//! Command-line arguments.

use std::net::SocketAddr;

use clap::{Args, Parser, Subcommand};

/// The address `serve` listens on and `pub`/`sub` connect to by default.
pub const DEFAULT_ADDR: &str = "127.0.0.1:7400";

/// corebus: a thread-per-core publish/subscribe broker.
#[derive(Debug, Parser)]
#[command(name = "corebus", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the broker.
    Serve(ServeArgs),
    /// Publish one message (or each line of stdin) and print its sequence number.
    Pub(PubArgs),
    /// Subscribe to a topic and print one line per message.
    Sub(SubArgs),
}

/// `corebus serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address every shard listens on.
    #[arg(long, default_value = DEFAULT_ADDR)]
    pub listen: SocketAddr,
    /// Number of shards (default: one per CPU the process may run on).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    pub shards: Option<u16>,
    /// Largest frame length accepted, in bytes.
    #[arg(long, default_value_t = corebus_net::DEFAULT_MAX_FRAME,
          value_parser = clap::value_parser!(u32).range(64..=(64 << 20)))]
    pub max_frame: u32,
    /// Most subscriptions one connection may hold.
    #[arg(long, default_value_t = 10_000)]
    pub max_subscriptions: usize,
    /// Bound on one connection's queued outbound bytes; a connection that
    /// passes it is closed as a slow consumer.
    #[arg(long, default_value_t = 8 << 20)]
    pub outbox_limit: usize,
    /// Log filter (error, warn, info, debug, trace, or a tracing directive);
    /// RUST_LOG wins when set.
    #[arg(long, default_value = "info")]
    pub log_level: String,
}

/// Where `pub` and `sub` connect.
#[derive(Debug, Args)]
pub struct ServerArg {
    /// Broker address.
    #[arg(long, default_value = DEFAULT_ADDR)]
    pub server: String,
}

/// `corebus pub`.
#[derive(Debug, Args)]
pub struct PubArgs {
    /// Namespace.
    pub namespace: String,
    /// Topic.
    pub topic: String,
    /// The message; omit it with --stdin.
    #[arg(required_unless_present = "stdin", conflicts_with = "stdin")]
    pub message: Option<String>,
    /// Publish each line of standard input as one message, in order.
    #[arg(long)]
    pub stdin: bool,
    /// Broker to connect to.
    #[command(flatten)]
    pub server: ServerArg,
}

/// `corebus sub`.
#[derive(Debug, Args)]
pub struct SubArgs {
    /// Namespace.
    pub namespace: String,
    /// Topic.
    pub topic: String,
    /// Exit after this many messages.
    #[arg(long)]
    pub count: Option<u64>,
    /// Print each message as a JSON object with ns, topic, seq and payload
    /// (or payload_base64 when the payload is not UTF-8).
    #[arg(long)]
    pub json: bool,
    /// Broker to connect to.
    #[command(flatten)]
    pub server: ServerArg,
}
