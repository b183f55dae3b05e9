//! The arguments of the commands that speak to a broker as a client: where
//! to connect and with which credentials (`ServerArg`), and `pub` and `sub`.

use std::path::PathBuf;

use clap::{ArgGroup, Args};

use super::DEFAULT_ADDR;

/// Where `pub` and `sub` connect, and with which credentials.
#[derive(Debug, Args)]
pub struct ServerArg {
    /// Broker address (HOST:PORT), or several, comma-separated (the nodes
    /// of a cluster): each connection, and each reconnection, takes the
    /// first that answers.
    #[arg(long, short = 's', env = "COREBUS_SERVER", default_value = DEFAULT_ADDR)]
    pub server: String,
    /// A token to authenticate with (sent in the handshake only). Without
    /// --token, --key or --key-file: the environment's COREBUS_TOKEN, then
    /// COREBUS_KEY_FILE, then COREBUS_CREDENTIALS (a key or a token); prefer
    /// those, since arguments are visible in `ps`.
    #[arg(long, value_name = "TOKEN", conflicts_with_all = ["key", "key_file"])]
    pub token: Option<String>,
    /// An API key to authenticate with (see --token).
    #[arg(long, value_name = "KEY", conflicts_with = "key_file")]
    pub key: Option<String>,
    /// A file holding the API key to authenticate with (its first line).
    #[arg(long, value_name = "FILE")]
    pub key_file: Option<std::path::PathBuf>,
    /// Connect with TLS, verifying the broker against the system's roots.
    #[arg(long)]
    pub tls: bool,
    /// Connect with TLS, verifying the broker against the CA certificates
    /// in this PEM file (implies --tls).
    #[arg(long, value_name = "FILE")]
    pub ca: Option<std::path::PathBuf>,
}

/// `corebus pub`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("body").required(true).args(["message", "stdin", "file"])))]
// clap puts a required group first in the usage line, which read as if the
// message came before the namespace and topic.
#[command(
    override_usage = "corebus pub [OPTIONS] <NAMESPACE> <TOPIC> <MESSAGE|--stdin|--file <PATH>>"
)]
pub struct PubArgs {
    /// Namespace.
    pub namespace: String,
    /// Topic.
    pub topic: String,
    /// The message (or --stdin, or --file). With --count, `{{n}}` in it
    /// becomes each message's number (1, 2, ...).
    pub message: Option<String>,
    /// Publish each line of standard input as one message, in order: its
    /// bytes as read (any bytes, not only UTF-8), without the line's LF or
    /// CRLF. If reading fails, what was read before is still published and
    /// counted.
    #[arg(long)]
    pub stdin: bool,
    /// With --stdin: all of standard input is one message, bytes as read.
    #[arg(long, requires = "stdin")]
    pub raw: bool,
    /// Publish this file's bytes as one message.
    #[arg(long, value_name = "PATH")]
    pub file: Option<PathBuf>,
    /// Publish the message (or the file, or raw standard input) this many
    /// times, pipelined; prints the last sequence number.
    #[arg(long, short = 'n', default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub count: u64,
    /// Print one JSON object per message published: {"ns", "topic", "seq"}
    /// (seq a decimal string), instead of the sequence number or summary.
    #[arg(long, short = 'j')]
    pub json: bool,
    /// Compress each message with zstd (level 3) when it is 1 KiB or more
    /// and zstd makes it smaller; smaller messages go as they are.
    /// Subscribers read it as published: every corebus client decompresses.
    #[arg(long)]
    pub compress: bool,
    /// A header of every message published, NAME=VALUE (repeatable, in
    /// order; a name may repeat): what MQTT 5.0 calls a user property.
    #[arg(long = "header", short = 'H', value_name = "NAME=VALUE", value_parser = parse_header)]
    pub headers: Vec<(String, String)>,
    /// The messages' content type header (a MIME type, by convention).
    #[arg(long, value_name = "TYPE")]
    pub content_type: Option<String>,
    /// Broker to connect to.
    #[command(flatten)]
    pub server: ServerArg,
}

/// `--header NAME=VALUE`: the name is what comes before the first `=`.
fn parse_header(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_owned(), value.to_owned())),
        _ => Err(format!("expected NAME=VALUE, got {text:?}")),
    }
}

/// `corebus sub`.
#[derive(Debug, Args)]
pub struct SubArgs {
    /// Namespace.
    pub namespace: String,
    /// Topic, or a pattern: `orders/*` (any one segment in place of `*`),
    /// `orders/>` (one or more trailing segments). A pattern is live only
    /// (no --from), and each message shows its own topic (-v, --json).
    pub topic: String,
    /// Exit after this many messages.
    #[arg(long, short = 'n')]
    pub count: Option<u64>,
    /// Start with the messages from this sequence number of the topic's
    /// current epoch, as far as the broker's replay buffer still holds them
    /// (a discontinuity is printed for what it does not).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub from: Option<u64>,
    /// Print each message as a JSON object with ns, topic, seq and payload
    /// (or payload_base64 when the payload is not UTF-8); seq, and the
    /// epoch and sequence numbers of a discontinuity, are decimal strings.
    #[arg(long, short = 'j')]
    pub json: bool,
    /// Print each message as `[NS/TOPIC #SEQ] PAYLOAD` instead of the
    /// payload alone.
    #[arg(long, short = 'v', conflicts_with = "json")]
    pub verbose: bool,
    /// After a lost connection, try this many times to connect again (with
    /// growing delays, up to 5 s apart) before giving up with an error;
    /// `forever` never gives up, 0 exits at the first loss. Each loss,
    /// failed attempt and reconnection is reported on stderr, and the
    /// subscription resumes where it was (what the broker no longer holds
    /// is reported as missed).
    #[arg(long, value_name = "N", default_value = "10", value_parser = parse_retry)]
    pub retry: Retry,
    /// Broker to connect to.
    #[command(flatten)]
    pub server: ServerArg,
}

/// How many times `corebus sub` tries to reconnect (`--retry`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// At most this many attempts after each loss (0: none).
    Times(u32),
    /// Until it works.
    Forever,
}

/// Parses `--retry`: a count, or `forever`.
pub fn parse_retry(text: &str) -> Result<Retry, String> {
    match text.trim() {
        "forever" => Ok(Retry::Forever),
        count => count.parse().map(Retry::Times).map_err(|_| {
            format!("{text:?} is not a number of attempts (0, 1, 2, ...) or `forever`")
        }),
    }
}
