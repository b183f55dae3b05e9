//! Command-line arguments.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

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
    /// Bound on one connection's queued outbound message bytes.
    #[arg(long, default_value_t = 8 << 20)]
    pub outbox_limit: usize,
    /// What happens to a connection whose outbound queue is full: `drop`
    /// messages and report each loss with a discontinuity, or `disconnect`.
    #[arg(long, value_enum, default_value_t = SlowConsumer::Drop)]
    pub slow_consumer: SlowConsumer,
    /// Messages kept per topic for replay on resume.
    #[arg(long, default_value_t = 1024)]
    pub ring_messages: usize,
    /// Payload bytes kept per topic for replay on resume.
    #[arg(long, default_value_t = 1 << 20)]
    pub ring_bytes: usize,
    /// Topic state with no subscribers and no publishes for this long is
    /// evicted; its next use starts a new epoch (e.g. 300s, 10m).
    #[arg(long, default_value = "300s", value_parser = parse_duration)]
    pub topic_idle_evict: Duration,
    /// A connection silent for this long is sent a PING.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    pub heartbeat_interval: Duration,
    /// A connection silent for this long is closed (idle_timeout).
    #[arg(long, default_value = "45s", value_parser = parse_duration)]
    pub heartbeat_timeout: Duration,
    /// Log filter (error, warn, info, debug, trace, or a tracing directive);
    /// RUST_LOG wins when set.
    #[arg(long, default_value = "info")]
    pub log_level: String,
}

/// `--slow-consumer` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SlowConsumer {
    /// Drop what does not fit; report the exact loss with a discontinuity.
    Drop,
    /// Close the connection with a `slow_consumer` error.
    Disconnect,
}

/// Parses `250ms`, `15s`, `10m`, `2h` (a bare number means seconds).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 250ms, 15s, 10m or 2h"))?;
    let millis = match unit {
        "ms" => Some(value),
        "" | "s" => value.checked_mul(1000),
        "m" => value.checked_mul(60_000),
        "h" => value.checked_mul(3_600_000),
        _ => return Err(format!("unknown unit {unit:?} in {text:?}; use ms, s, m or h")),
    };
    millis
        .map(Duration::from_millis)
        .ok_or_else(|| format!("{text:?} is too long"))
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
    /// Start with the messages from this sequence number of the topic's
    /// current epoch, as far as the broker's replay buffer still holds them
    /// (a discontinuity is printed for what it does not).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub from: Option<u64>,
    /// Print each message as a JSON object with ns, topic, seq and payload
    /// (or payload_base64 when the payload is not UTF-8).
    #[arg(long)]
    pub json: bool,
    /// Broker to connect to.
    #[command(flatten)]
    pub server: ServerArg,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units_and_refuse_garbage() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("15"), Ok(Duration::from_secs(15)));
        assert_eq!(parse_duration("15s"), Ok(Duration::from_secs(15)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("99999999999999999999h").is_err());
    }
}
