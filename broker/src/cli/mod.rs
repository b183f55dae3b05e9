//! Command-line arguments.

use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgGroup, Args, Parser, Subcommand};

mod client_args;
mod settings;

pub use client_args::*;
pub use settings::*;

/// The address `serve` listens on and `pub`/`sub` connect to by default.
pub const DEFAULT_ADDR: &str = "127.0.0.1:7400";

/// Smallest `max_hello_frame`: room for a HELLO carrying the longest token
/// accepted ([`crate::jwt::MAX_TOKEN_LEN`]) and the longest client name.
pub const MIN_HELLO_FRAME: i64 = 8704;

/// corebus: a thread-per-core publish/subscribe broker.
#[derive(Debug, Parser)]
#[command(name = "corebus", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The completion script of `corebus` for `shell`.
pub fn completions(shell: clap_complete::Shell) -> String {
    use clap::CommandFactory;
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "corebus", &mut script);
    String::from_utf8_lossy(&script).into_owned()
}

/// The manual page (roff) of `corebus`, or of `corebus SUBCOMMAND` as
/// corebus-SUBCOMMAND(1).
pub fn man_page(subcommand: Option<&str>) -> anyhow::Result<String> {
    use clap::CommandFactory;
    let mut corebus = Cli::command();
    // Usage lines name the whole command (`corebus serve`).
    corebus.build();
    let page = match subcommand {
        None => corebus,
        Some(name) => {
            let Some(command) = corebus.find_subcommand(name) else {
                let names: Vec<&str> = corebus.get_subcommands().map(|c| c.get_name()).collect();
                anyhow::bail!("no subcommand {name:?} (there are {})", names.join(", "));
            };
            command.clone().name(format!("corebus-{name}"))
        }
    };
    let mut roff = Vec::new();
    clap_mangen::Man::new(page).render(&mut roff)?;
    Ok(String::from_utf8(roff)?)
}

/// Writes corebus.1 and corebus-SUBCOMMAND.1 for each subcommand into
/// `dir`; returns the files written.
pub fn write_man_pages(dir: &std::path::Path) -> anyhow::Result<Vec<PathBuf>> {
    use anyhow::Context;
    use clap::CommandFactory;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let subcommands: Vec<String> = Cli::command()
        .get_subcommands()
        .map(|command| command.get_name().to_string())
        .collect();
    let pages = std::iter::once(None).chain(subcommands.iter().map(|name| Some(name.as_str())));
    let mut written = Vec::new();
    for subcommand in pages {
        let file = match subcommand {
            None => dir.join("corebus.1"),
            Some(name) => dir.join(format!("corebus-{name}.1")),
        };
        std::fs::write(&file, man_page(subcommand)?)
            .with_context(|| format!("cannot write {}", file.display()))?;
        written.push(file);
    }
    Ok(written)
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the broker.
    Serve(ServeCommand),
    /// Publish one message (or each line of stdin) and print its sequence number.
    Pub(PubArgs),
    /// Subscribe to a topic and print one line per message.
    Sub(SubArgs),
    /// Validate a configuration file, or print the commented default one.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Check what the broker needs from this host (kernel, io_uring, limits,
    /// CPUs) and print the fix for each problem.
    Doctor(DoctorCommand),
    /// Create API keys, or hash one for the configuration file.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Mint scoped, short-lived tokens with the configured signing secret.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Add, list, remove, re-key or re-enable webhooks on a running broker (needs a
    /// super-user key: --key or COREBUS_CREDENTIALS).
    #[command(subcommand)]
    Webhook(WebhookCommand),
    /// See a running node's cluster: its members, or which node owns a topic
    /// (needs a super-user key: --key or COREBUS_CREDENTIALS).
    #[command(subcommand)]
    Cluster(ClusterCommand),
    /// Print the completion script for a shell (bash, zsh, fish, elvish,
    /// powershell), generated from these definitions.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff, for `man -l -`) of corebus, or of one
    /// subcommand (corebus-serve(1): every flag and environment variable),
    /// generated from these definitions.
    Man {
        /// The subcommand (serve, pub, sub, ...); none for corebus(1).
        subcommand: Option<String>,
        /// Write every page instead, corebus.1 and corebus-SUBCOMMAND.1 for
        /// each subcommand, into this directory (for packages).
        #[arg(long, value_name = "DIR", conflicts_with = "subcommand")]
        out_dir: Option<PathBuf>,
    },
}

/// `corebus cluster`.
#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// List the members the node knows, with their state and client
    /// address, and the control plane: its leader, voters, each node's
    /// applied index and whether its configuration matches.
    Status {
        /// Print one JSON object: {"node", "members": [{"node", "client",
        /// "state", "leaving"}], "control"} (the control plane, or null).
        #[arg(long, short = 'j')]
        json: bool,
        /// Node to ask.
        #[command(flatten)]
        server: ServerArg,
    },
    /// Save the control plane's agreed run-time webhooks (secrets
    /// included) to a file readable by its owner only, in the format of
    /// webhooks.json: the backup to rebuild a cluster from (see
    /// docs/cluster.md).
    Snapshot {
        /// The file to write (it must not exist).
        #[arg(long)]
        out: std::path::PathBuf,
        /// Node to ask.
        #[command(flatten)]
        server: ServerArg,
    },
    /// Remove a node gone for good from the control plane (its vote goes
    /// with it); a node that is up is refused.
    Remove {
        /// Its node id: its cluster address, as `cluster status` lists it.
        node: String,
        /// Node to ask.
        #[command(flatten)]
        server: ServerArg,
    },
    /// Name the node (and, if it is the node asked, the shard) that owns a
    /// topic.
    Owner {
        /// Namespace.
        namespace: String,
        /// Topic.
        topic: String,
        /// Node to ask.
        #[command(flatten)]
        server: ServerArg,
    },
}

/// `corebus webhook`.
#[derive(Debug, Subcommand)]
pub enum WebhookCommand {
    /// Register a webhook; prints its id and its signing secret (shown once).
    Add(WebhookAddArgs),
    /// List the webhooks (without secrets).
    List {
        /// Print one JSON object per webhook (previous_secret_expires_ms as
        /// a decimal string).
        #[arg(long, short = 'j')]
        json: bool,
        /// Broker to connect to.
        #[command(flatten)]
        server: ServerArg,
    },
    /// Remove a webhook added at run time; its queued messages are discarded.
    Remove {
        /// The webhook's id.
        id: String,
        /// Broker to connect to.
        #[command(flatten)]
        server: ServerArg,
    },
    /// Enable a webhook that its endpoint's 410 Gone disabled; it delivers
    /// again from the next message on.
    Enable {
        /// The webhook's id.
        id: String,
        /// Broker to connect to.
        #[command(flatten)]
        server: ServerArg,
    },
    /// Give a webhook a new signing secret (printed); the previous one keeps
    /// signing alongside it for the broker's webhook_rotation_grace.
    Rotate {
        /// The webhook's id.
        id: String,
        /// Read the new secret from standard input instead of having the
        /// broker generate one.
        #[arg(long)]
        secret_stdin: bool,
        /// Broker to connect to.
        #[command(flatten)]
        server: ServerArg,
    },
}

/// `corebus webhook add`.
#[derive(Debug, Args)]
pub struct WebhookAddArgs {
    /// Destination, an http:// or https:// URL.
    #[arg(long)]
    pub url: String,
    /// Namespace whose messages it receives.
    #[arg(long)]
    pub ns: String,
    /// Topic (a prefix with --prefix; with --prefix, the empty topic means
    /// every topic of the namespace).
    #[arg(long)]
    pub topic: String,
    /// Receive every topic starting with --topic.
    #[arg(long)]
    pub prefix: bool,
    /// Read the signing secret from standard input instead of having the
    /// broker generate one.
    #[arg(long)]
    pub secret_stdin: bool,
    /// Broker to connect to.
    #[command(flatten)]
    pub server: ServerArg,
}

/// `corebus key`.
#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Print a new random API key, then the `sha256 = "..."` line that goes
    /// into its [[keys]] table. Only the hash belongs in the configuration.
    Generate,
    /// Print the SHA-256 of KEY (read from standard input when omitted, so
    /// that it stays out of the shell history).
    Hash {
        /// The key.
        key: Option<String>,
    },
}

/// `corebus token`.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Print a signed token (JWT) granting one permission for --ttl.
    Mint(MintArgs),
}

/// `corebus token mint`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("action").required(true).multiple(true).args(["publish", "subscribe"])))]
pub struct MintArgs {
    /// The configuration file holding token_secret (or token_secret_file);
    /// COREBUS_TOKEN_SECRET or COREBUS_TOKEN_SECRET_FILE win over it.
    #[command(flatten)]
    pub file: ConfigFileArg,
    /// Namespace the token is for.
    #[arg(long)]
    pub ns: String,
    /// Topic the token is for (a prefix with --prefix; with --prefix, the
    /// empty topic means every topic of the namespace).
    #[arg(long)]
    pub topic: String,
    /// Grant every topic starting with --topic.
    #[arg(long)]
    pub prefix: bool,
    /// Allow publishing.
    #[arg(long)]
    pub publish: bool,
    /// Allow subscribing.
    #[arg(long)]
    pub subscribe: bool,
    /// Lifetime, e.g. 30m; at most the configured token_max_lifetime.
    #[arg(long, value_parser = parse_duration)]
    pub ttl: Duration,
    /// The token's subject (`sub`), shown in the broker's logs and errors.
    #[arg(long, value_name = "IDENTITY")]
    pub sub: Option<String>,
}

/// Where `serve` and `doctor` read a configuration file from.
#[derive(Debug, Args)]
pub struct ConfigFileArg {
    /// TOML configuration file; its keys are the flags below in snake_case
    /// (a flag wins over its environment variable, which wins over the file).
    #[arg(long, env = "COREBUS_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// `corebus serve`.
#[derive(Debug, Args)]
pub struct ServeCommand {
    /// The configuration file, if any.
    #[command(flatten)]
    pub file: ConfigFileArg,
    /// Print the effective configuration, each value with where it came
    /// from, and exit without starting.
    #[arg(long)]
    pub print_config: bool,
    /// The settings.
    #[command(flatten)]
    pub settings: ServeArgs,
}

/// `corebus doctor`: the same settings as `serve`, since what the host must
/// provide depends on them (the shard count sets the locked memory needed).
#[derive(Debug, Args)]
pub struct DoctorCommand {
    /// Print one JSON object, for monitoring: {"ok": bool, "checks":
    /// [{"name", "status" ("ok", "warn" or "fail"), "detail", "fix" (or
    /// null)}]}; the exit status is the same.
    #[arg(long, short = 'j')]
    pub json: bool,
    /// The configuration file, if any.
    #[command(flatten)]
    pub file: ConfigFileArg,
    /// The settings.
    #[command(flatten)]
    pub settings: ServeArgs,
}

/// `corebus config`.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate FILE over the built-in defaults (flags and environment are
    /// not read): prints "FILE: ok", or one error line and exits 1.
    Check {
        /// The configuration file.
        file: PathBuf,
    },
    /// Print the default configuration file, every key commented.
    Default,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_smallest_hello_frame_holds_the_longest_token_and_name() {
        let hello = corebus_net::Frame::Hello(corebus_net::Hello {
            version: corebus_net::PROTOCOL_VERSION,
            client_name: "n".repeat(255),
            credentials: bytes::Bytes::from(vec![b'a'; crate::jwt::MAX_TOKEN_LEN]),
        });
        let mut wire = bytes::BytesMut::new();
        hello.encode(&mut wire);
        let length_field = wire.len() - 4;
        assert!(length_field as i64 <= MIN_HELLO_FRAME, "{length_field}");
        assert!(
            MIN_HELLO_FRAME - (length_field as i64) < 512,
            "not needlessly large"
        );
    }

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

    #[test]
    fn data_dir_is_a_directory_or_auto() {
        assert_eq!(
            parse_data_dir("/srv/corebus"),
            Ok(PathBuf::from("/srv/corebus"))
        );
        // `auto` reads the environment of this test process: whichever it
        // finds, it is an absolute directory named for corebus.
        let auto = parse_data_dir("auto").expect("HOME is set under cargo");
        assert!(auto.is_absolute(), "{}", auto.display());
    }

    #[test]
    fn durations_read_as_people_write_them() {
        assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1500ms"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("7days"), Ok(Duration::from_secs(7 * 86_400)));
    }

    #[test]
    fn sizes_are_byte_counts_or_numbers_with_a_unit() {
        assert_eq!(parse_bytes("1048576"), Ok(1 << 20));
        assert_eq!(parse_bytes("64KiB"), Ok(64 << 10));
        assert_eq!(parse_bytes("8 MiB"), Ok(8 << 20));
        assert_eq!(parse_bytes("1GiB"), Ok(1 << 30));
        assert_eq!(parse_bytes("1.5KiB"), Ok(1536));
        assert_eq!(parse_bytes("2MB"), Ok(2_000_000));
        for bad in ["", "-5", "lots", "5 parsecs", "1.5.2MiB"] {
            assert!(parse_bytes(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn topic_memory_is_a_size_of_at_least_16_mib() {
        let topic_memory = bytes_in::<u64>(MIN_TOPIC_MEMORY, u64::MAX);
        assert_eq!(topic_memory("1073741824"), Ok(1 << 30));
        assert_eq!(topic_memory("1GiB"), Ok(1 << 30));
        assert_eq!(topic_memory("16MiB"), Ok(MIN_TOPIC_MEMORY));
        let small = topic_memory("16777215").expect_err("below the least");
        assert!(
            small.contains("below the least accepted, 16777216"),
            "{small}"
        );
        assert!(topic_memory("-5").is_err());
        let frame = bytes_in::<u32>(64, 64 << 20);
        assert_eq!(frame("1MiB"), Ok(1 << 20));
        let large = frame("65MiB").expect_err("over the most");
        assert_eq!(large, "68157440 is not in 64..=67108864");
    }
}
