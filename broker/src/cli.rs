//! Command-line arguments.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::builder::BoolishValueParser;
use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};

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

/// Every `serve` setting. Each field is a flag (`--max-frame`), an
/// environment variable (`COREBUS_MAX_FRAME`) and a configuration file key
/// (`max_frame`); `crate::config` layers them, so a new setting needs only a
/// field here with its `env`.
#[derive(Debug, Clone, PartialEq, Args)]
pub struct ServeArgs {
    /// Address every shard listens on.
    #[arg(long, env = "COREBUS_LISTEN", default_value = DEFAULT_ADDR)]
    pub listen: SocketAddr,
    /// Run without authentication on a non-loopback address when no keys
    /// and no token secret are configured (otherwise refused). Anyone who
    /// can reach the port may then publish and subscribe to everything.
    #[arg(long, env = "COREBUS_INSECURE_NO_AUTH", default_value = "false",
          num_args = 0..=1, default_missing_value = "true", require_equals = true,
          value_parser = BoolishValueParser::new())]
    pub insecure_no_auth: bool,
    /// Start even when a file holding a secret (token secret files, the TLS
    /// key, webhook secret files, or this configuration file when it holds a
    /// secret inline) is accessible to its group or others; without it the
    /// broker refuses, naming the `chmod 600` that fixes it.
    #[arg(long, env = "COREBUS_INSECURE_SECRET_FILE_PERMISSIONS", default_value = "false",
          num_args = 0..=1, default_missing_value = "true", require_equals = true,
          value_parser = BoolishValueParser::new())]
    pub insecure_secret_file_permissions: bool,
    /// Longest lifetime a token may have (exp minus iat, or minus the time
    /// it is presented when it has no iat); longer tokens are refused.
    #[arg(long, env = "COREBUS_TOKEN_MAX_LIFETIME", default_value = "24h", value_parser = parse_duration)]
    pub token_max_lifetime: Duration,
    /// A connection that has not completed its handshake (HELLO, with valid
    /// credentials) within this long is closed (handshake_timeout).
    #[arg(long, env = "COREBUS_HANDSHAKE_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub handshake_timeout: Duration,
    /// Most connections the whole broker holds; more are refused
    /// (too_many_connections).
    #[arg(long, env = "COREBUS_MAX_CONNECTIONS", default_value_t = 100_000,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,
    /// Most connections one shard holds.
    #[arg(long, env = "COREBUS_MAX_CONNECTIONS_PER_SHARD", default_value_t = 100_000,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections_per_shard: u32,
    /// Most connections the whole broker holds that have not finished their
    /// handshake (apart from max_connections); a new socket over it is
    /// closed at once, unanswered, and counted (handshakes_shed_total).
    #[arg(long, env = "COREBUS_MAX_HANDSHAKING", default_value_t = 4_096,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_handshaking: u32,
    /// Most connections from one source address that have not finished
    /// their handshake; 0 for no cap per address (clients behind one NAT
    /// share an address).
    #[arg(long, env = "COREBUS_MAX_HANDSHAKING_PER_SOURCE", default_value_t = 0)]
    pub max_handshaking_per_source: u32,
    /// Most publishes one connection may have awaiting their acknowledgement
    /// (too_many_in_flight beyond it).
    #[arg(long, env = "COREBUS_MAX_IN_FLIGHT", default_value_t = 16_384,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub max_in_flight: u32,
    /// Number of shards, or `auto` for one per CPU the process may run on.
    #[arg(long, env = "COREBUS_SHARDS", default_value = "auto", value_parser = parse_shards)]
    pub shards: Shards,
    /// Largest frame length accepted, in bytes.
    #[arg(long, env = "COREBUS_MAX_FRAME", default_value_t = corebus_net::DEFAULT_MAX_FRAME,
          value_parser = bytes_in::<u32>(64, 64 << 20))]
    pub max_frame: u32,
    /// Largest frame length accepted before a connection's HELLO succeeds, in
    /// bytes, and never more than max_frame. At least 8704: a HELLO with the
    /// longest token accepted (8 KiB) and the longest client name.
    #[arg(long, env = "COREBUS_MAX_HELLO_FRAME", default_value_t = corebus_net::DEFAULT_MAX_HELLO_FRAME,
          value_parser = bytes_in::<u32>(MIN_HELLO_FRAME as u64, 64 << 20))]
    pub max_hello_frame: u32,
    /// Most subscriptions one connection may hold.
    #[arg(long, env = "COREBUS_MAX_SUBSCRIPTIONS", default_value_t = 10_000)]
    pub max_subscriptions: usize,
    /// Most bytes of namespace and topic names one connection's
    /// subscriptions may name, all together.
    #[arg(long, env = "COREBUS_MAX_SUBSCRIPTION_BYTES", default_value_t = 1 << 20,
          value_parser = bytes_in::<usize>(0, u64::MAX))]
    pub max_subscription_bytes: usize,
    /// Most subscriptions all connections together may hold.
    #[arg(
        long,
        env = "COREBUS_MAX_SUBSCRIPTIONS_TOTAL",
        default_value_t = 1_000_000
    )]
    pub max_subscriptions_total: usize,
    /// Bound on one connection's queued outbound message bytes.
    #[arg(long, env = "COREBUS_OUTBOX_LIMIT", default_value_t = 8 << 20,
          value_parser = bytes_in::<usize>(0, u64::MAX))]
    pub outbox_limit: usize,
    /// The same bound for a link from another node of the cluster (it
    /// carries all of that node's subscriptions to this node's topics).
    #[arg(long, env = "COREBUS_CLUSTER_LINK_OUTBOX_LIMIT", default_value_t = 64 << 20,
          value_parser = bytes_in::<usize>(0, u64::MAX))]
    pub cluster_link_outbox_limit: usize,
    /// What happens to a connection whose outbound queue is full: `drop`
    /// messages and report each loss with a discontinuity, or `disconnect`.
    #[arg(long, env = "COREBUS_SLOW_CONSUMER", value_enum, default_value_t = SlowConsumer::Drop)]
    pub slow_consumer: SlowConsumer,
    /// Messages kept per topic for replay on resume.
    #[arg(long, env = "COREBUS_RING_MESSAGES", default_value_t = 1024)]
    pub ring_messages: usize,
    /// Payload bytes kept per topic for replay on resume.
    #[arg(long, env = "COREBUS_RING_BYTES", default_value_t = 1 << 20,
          value_parser = bytes_in::<usize>(0, u64::MAX))]
    pub ring_bytes: usize,
    /// Memory for topic states and replay rings, all shards together (each
    /// shard gets an equal part). Over it, a shard evicts the least recently
    /// active topics nobody subscribes to, then shortens replay rings; a
    /// resume across either gets a gap report. At least 16 MiB.
    #[arg(long, env = "COREBUS_TOPIC_MEMORY", default_value_t = 1 << 30,
          value_parser = bytes_in::<u64>(MIN_TOPIC_MEMORY, u64::MAX))]
    pub topic_memory: u64,
    /// Topic state with no subscribers and no publishes for this long is
    /// evicted; its next use starts a new epoch (e.g. 300s, 10m).
    #[arg(long, env = "COREBUS_TOPIC_IDLE_EVICT", default_value = "300s", value_parser = parse_duration)]
    pub topic_idle_evict: Duration,
    /// A connection silent for this long is sent a PING.
    #[arg(long, env = "COREBUS_HEARTBEAT_INTERVAL", default_value = "15s", value_parser = parse_duration)]
    pub heartbeat_interval: Duration,
    /// A connection silent for this long is closed (idle_timeout); must be
    /// longer than the heartbeat interval.
    #[arg(long, env = "COREBUS_HEARTBEAT_TIMEOUT", default_value = "45s", value_parser = parse_duration)]
    pub heartbeat_timeout: Duration,
    /// Log filter (error, warn, info, debug, trace, or a tracing directive
    /// such as `info,corebus_shards=debug`); RUST_LOG wins when set.
    #[arg(long, env = "COREBUS_LOG_LEVEL", default_value = "info", value_parser = parse_log_filter)]
    pub log_level: String,
    /// Log line format on stderr: `text` for people, `json` (one object per
    /// line) for log collectors.
    #[arg(long, env = "COREBUS_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Address of the Prometheus endpoint (`/metrics`, `/healthz`), or `off`.
    #[arg(long, env = "COREBUS_METRICS", default_value = "off", value_parser = parse_optional_addr)]
    pub metrics: OptionalAddr,
    /// Address of the listener for browsers, or `off`: WebSocket on /v1/ws
    /// and Server-Sent Events on /v1/sse, served by the shards with the
    /// same TLS, authentication and limits as the native listener (see
    /// docs/browser.md).
    #[arg(long, env = "COREBUS_WS_LISTEN", default_value = "off", value_parser = parse_optional_addr)]
    pub ws_listen: OptionalAddr,
    /// Web pages that may connect to the browser listener, besides pages
    /// of its own origin and clients that send no Origin (native programs):
    /// exact origins such as https://app.example.com, comma-separated; the
    /// flag may be repeated. Empty: no other page.
    #[arg(long, env = "COREBUS_WS_ALLOWED_ORIGIN", default_value = "",
          action = clap::ArgAction::Append, value_parser = parse_origins)]
    pub ws_allowed_origin: Vec<AllowedOrigins>,
    /// Address this node gossips on with the other members of its cluster
    /// (UDP), which is also its node id; `off` runs it alone. See
    /// docs/cluster.md.
    #[arg(long, env = "COREBUS_CLUSTER_LISTEN", default_value = "off", value_parser = parse_optional_addr)]
    pub cluster_listen: OptionalAddr,
    /// Cluster members to join through, comma-separated; the flag may be
    /// repeated. Every node may list the same seeds, itself included.
    #[arg(long, env = "COREBUS_SEED", default_value = "",
          action = clap::ArgAction::Append, value_parser = parse_seeds)]
    pub seed: Vec<Seeds>,
    /// The address the other nodes of the cluster connect to for this
    /// node's links: its client listener, or a proxy or NAT in front of it;
    /// `off`: the address --listen bound.
    #[arg(long, env = "COREBUS_CLUSTER_ADVERTISE", default_value = "off", value_parser = parse_optional_addr)]
    pub cluster_advertise: OptionalAddr,
    /// PEM certificates (a private CA) that the other nodes' client
    /// certificates chain to, besides the system's roots: with TLS on
    /// (--tls-cert), the links between nodes speak TLS and check that the
    /// certificate names the node's IP address.
    #[arg(long, env = "COREBUS_CLUSTER_TLS_CA_FILE", default_value = "", value_parser = parse_optional_path)]
    pub cluster_tls_ca_file: OptionalPath,
    /// How often the control plane's leader (run-time webhooks, agreed by
    /// every node) sends its heartbeat to the other nodes.
    #[arg(long, env = "COREBUS_CLUSTER_CONTROL_HEARTBEAT", default_value = "250ms", value_parser = parse_duration)]
    pub cluster_control_heartbeat: Duration,
    /// A control-plane follower that hears no leader for between this and
    /// twice this starts an election; at least 3 heartbeats.
    #[arg(long, env = "COREBUS_CLUSTER_CONTROL_ELECTION_TIMEOUT", default_value = "1500ms", value_parser = parse_duration)]
    pub cluster_control_election_timeout: Duration,
    /// Refuse to start as a cluster member when a member that is up has
    /// another security-relevant configuration (API keys, token secrets,
    /// webhook allow-list, limits, configured webhooks), compared by a
    /// fingerprint under the cluster secret; `false`: a warning only.
    #[arg(long, env = "COREBUS_CLUSTER_REQUIRE_SAME_CONFIG", default_value = "false",
          num_args = 0..=1, default_missing_value = "true", require_equals = true,
          value_parser = BoolishValueParser::new())]
    pub cluster_require_same_config: bool,
    /// A file holding the cluster secret (at least 32 bytes, owner-only):
    /// every gossip datagram is authenticated with it, so a node without it
    /// cannot join. Required unless cluster_listen is a loopback address.
    #[arg(long, env = "COREBUS_CLUSTER_SECRET_FILE", default_value = "", value_parser = parse_optional_path)]
    pub cluster_secret_file: OptionalPath,
    /// PEM certificate chain for TLS on client connections (with
    /// --tls-key); empty for plaintext.
    #[arg(long, env = "COREBUS_TLS_CERT", default_value = "", value_parser = parse_optional_path)]
    pub tls_cert: OptionalPath,
    /// PEM private key matching --tls-cert.
    #[arg(long, env = "COREBUS_TLS_KEY", default_value = "", value_parser = parse_optional_path)]
    pub tls_key: OptionalPath,
    /// On SIGTERM or SIGINT: how long clients get to drain after GOAWAY
    /// before the broker exits anyway.
    #[arg(long, env = "COREBUS_SHUTDOWN_DEADLINE", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_deadline: Duration,
    /// Directory for state the broker writes: webhooks added at run time
    /// (webhooks.json, owner-only) and a cluster member's control log.
    /// Created when first needed. `auto`: systemd's state directory
    /// ($STATE_DIRECTORY: /var/lib/corebus with the shipped unit), else the
    /// user's ($XDG_STATE_HOME/corebus or ~/.local/state/corebus).
    #[arg(long, env = "COREBUS_DATA_DIR", default_value = "auto", value_parser = parse_data_dir)]
    pub data_dir: PathBuf,
    /// Hosts webhooks may post to, comma-separated: names, IP addresses, or
    /// `*.domain` for any subdomain. Empty: any host. Registrations outside
    /// the list are refused.
    #[arg(long, env = "COREBUS_WEBHOOK_ALLOW_HOSTS", default_value = "",
          value_parser = crate::webhook::url::AllowList::parse)]
    pub webhook_allow_hosts: crate::webhook::url::AllowList,
    /// Networks webhooks may reach although they are special-purpose
    /// ranges, comma-separated (`127.0.0.1/32, 10.20.0.0/16, fd00::/8`).
    /// Empty: webhooks may not reach loopback, private (RFC 1918), shared
    /// (100.64/10), unique-local, link-local (the cloud metadata service),
    /// unspecified or multicast addresses; a host name is checked against
    /// what it resolves to at each connection.
    #[arg(long, env = "COREBUS_WEBHOOK_ALLOW_NETWORKS", default_value = "",
          value_parser = crate::webhook::network::NetworkPolicy::parse)]
    pub webhook_allow_networks: crate::webhook::network::NetworkPolicy,
    /// Messages waiting per webhook; more are dropped and counted.
    #[arg(long, env = "COREBUS_WEBHOOK_QUEUE", default_value_t = 1024,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub webhook_queue: u32,
    /// Longest one webhook request may take (connect, send, response head).
    #[arg(long, env = "COREBUS_WEBHOOK_TIMEOUT", default_value = "10s", value_parser = parse_positive_duration)]
    pub webhook_timeout: Duration,
    /// Retries of a message after its first attempt failed (timeout,
    /// connection error, 5xx); then it is dropped. 3xx/4xx are never retried.
    #[arg(long, env = "COREBUS_WEBHOOK_RETRIES", default_value_t = 8)]
    pub webhook_retries: u32,
    /// Delay before the first retry; doubled for each next one.
    #[arg(long, env = "COREBUS_WEBHOOK_BACKOFF", default_value = "500ms", value_parser = parse_duration)]
    pub webhook_backoff: Duration,
    /// Longest delay between two retries.
    #[arg(long, env = "COREBUS_WEBHOOK_MAX_BACKOFF", default_value = "60s", value_parser = parse_duration)]
    pub webhook_max_backoff: Duration,
    /// After a secret rotation, how long the previous secret keeps signing
    /// requests alongside the new one.
    #[arg(long, env = "COREBUS_WEBHOOK_ROTATION_GRACE", default_value = "24h", value_parser = parse_duration)]
    pub webhook_rotation_grace: Duration,
    /// PEM file of CA certificates trusted for https webhooks besides the
    /// system's; empty for the system's only.
    #[arg(long, env = "COREBUS_WEBHOOK_CA", default_value = "", value_parser = parse_optional_path)]
    pub webhook_ca: OptionalPath,
}

/// An address setting that may be `off` (`--metrics`, `--ws-listen`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionalAddr(pub Option<SocketAddr>);

/// One `--seed` value: addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seeds(pub Vec<SocketAddr>);

/// Parses comma-separated socket addresses; empty for none.
pub fn parse_seeds(text: &str) -> Result<Seeds, String> {
    text.split(',')
        .map(str::trim)
        .filter(|seed| !seed.is_empty())
        .map(|seed| {
            seed.parse()
                .map_err(|_| format!("{seed:?} is not an address like 10.0.0.1:7500"))
        })
        .collect::<Result<_, _>>()
        .map(Seeds)
}

/// One `--ws-allowed-origin` value: origins, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedOrigins(pub Vec<String>);

/// Parses comma-separated origins (`https://host[:port]`); empty for none.
pub fn parse_origins(text: &str) -> Result<AllowedOrigins, String> {
    let origins: Vec<String> = text
        .split(',')
        .map(str::trim)
        .filter(|origin| !origin.is_empty())
        .map(str::to_owned)
        .collect();
    corebus_shards::Origins::new(&origins).map_err(|err| err.to_string())?;
    Ok(AllowedOrigins(origins))
}

/// A file path setting that may be unset (the empty string).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OptionalPath(pub Option<std::path::PathBuf>);

/// Parses a path; the empty string means "not set".
pub fn parse_optional_path(text: &str) -> Result<OptionalPath, String> {
    Ok(OptionalPath(
        (!text.is_empty()).then(|| std::path::PathBuf::from(text)),
    ))
}

/// Parses `off` or a socket address such as `127.0.0.1:9400`.
pub fn parse_optional_addr(text: &str) -> Result<OptionalAddr, String> {
    if text == "off" {
        return Ok(OptionalAddr(None));
    }
    text.parse()
        .map(|addr| OptionalAddr(Some(addr)))
        .map_err(|_| format!("{text:?} is not `off` or an address like 127.0.0.1:9400"))
}

/// `--shards` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shards {
    /// One shard per CPU in the process's affinity mask.
    Auto,
    /// Exactly this many (at least 1).
    Count(u16),
}

impl Shards {
    /// The count to ask `corebus_shards::start` for (`None`: one per CPU).
    pub fn count(self) -> Option<usize> {
        match self {
            Shards::Auto => None,
            Shards::Count(count) => Some(usize::from(count)),
        }
    }
}

/// Parses `auto` or a shard count from 1 to 65535.
pub fn parse_shards(text: &str) -> Result<Shards, String> {
    if text == "auto" {
        return Ok(Shards::Auto);
    }
    match text.parse::<u16>() {
        Ok(count) if count >= 1 => Ok(Shards::Count(count)),
        _ => Err(format!(
            "{text:?} is not `auto` or a shard count from 1 to {}",
            u16::MAX
        )),
    }
}

/// `--log-format` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Accepts what `tracing_subscriber::EnvFilter` accepts, so that a bad
/// `log_level` is refused where it was given (flag, environment or file).
fn parse_log_filter(text: &str) -> Result<String, String> {
    tracing_subscriber::EnvFilter::try_new(text)
        .map(|_| text.to_string())
        .map_err(|err| format!("{text:?} is not a log filter: {err}"))
}

/// `--slow-consumer` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SlowConsumer {
    /// Drop what does not fit; report the exact loss with a discontinuity.
    Drop,
    /// Close the connection with a `slow_consumer` error.
    Disconnect,
}

/// Least `topic_memory` accepted: 16 MiB.
pub const MIN_TOPIC_MEMORY: u64 = 16 << 20;

/// Parses `data_dir`: a directory, or `auto` (see [`ServeArgs::data_dir`]),
/// resolved here from the environment.
pub fn parse_data_dir(text: &str) -> Result<PathBuf, String> {
    if text != "auto" {
        return Ok(PathBuf::from(text));
    }
    let var = |name: &str| std::env::var_os(name).filter(|value| !value.is_empty());
    // systemd sets it for StateDirectory= (a colon-separated list).
    if let Some(state) = var("STATE_DIRECTORY") {
        let state = state.to_string_lossy().into_owned();
        if let Some(first) = state.split(':').next().filter(|dir| !dir.is_empty()) {
            return Ok(PathBuf::from(first));
        }
    }
    if let Some(xdg) = var("XDG_STATE_HOME").map(PathBuf::from) {
        if xdg.is_absolute() {
            return Ok(xdg.join("corebus"));
        }
    }
    match var("HOME") {
        Some(home) => Ok(PathBuf::from(home).join(".local/state/corebus")),
        None => Err(
            "data_dir = auto, but there is no $STATE_DIRECTORY, $XDG_STATE_HOME or $HOME: \
             set data_dir"
                .into(),
        ),
    }
}

/// Parses a size: a whole number of bytes (`1048576`), or a number with a
/// unit (`64KiB`, `8MiB`, `1.5GiB`; `kB`, `MB` and `GB` are powers of ten),
/// read by the `bytesize` crate.
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let text = text.trim();
    if let Ok(bytes) = text.parse::<u64>() {
        return Ok(bytes);
    }
    text.parse::<bytesize::ByteSize>()
        .map(|size| size.as_u64())
        .map_err(|_| {
            format!("{text:?} is not a size (bytes, such as 1048576, or 64KiB, 8MiB, 1GiB)")
        })
}

/// A parser of sizes ([`parse_bytes`]) from `min` to `max` bytes, as `T`.
pub fn bytes_in<T: TryFrom<u64>>(
    min: u64,
    max: u64,
) -> impl Fn(&str) -> Result<T, String> + Clone + Send + Sync + 'static {
    move |text| {
        let bytes = parse_bytes(text)?;
        if !(min..=max).contains(&bytes) {
            return Err(match max {
                u64::MAX => format!("{bytes} bytes is below the least accepted, {min}"),
                _ => format!("{bytes} is not in {min}..={max}"),
            });
        }
        T::try_from(bytes).map_err(|_| format!("{bytes} bytes is more than this machine can hold"))
    }
}

/// Like [`parse_duration`], refusing zero.
pub fn parse_positive_duration(text: &str) -> Result<Duration, String> {
    match parse_duration(text)? {
        Duration::ZERO => Err(format!("{text:?}: must be longer than zero")),
        duration => Ok(duration),
    }
}

/// Parses a duration with the `humantime` crate: `250ms`, `15s`, `10m`,
/// `2h`, `1h 30m`, `7days`; a bare number means seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if let Ok(seconds) = text.parse::<u64>() {
        return Ok(Duration::from_secs(seconds));
    }
    humantime::parse_duration(text)
        .map_err(|err| format!("{text:?} is not a duration like 250ms, 15s, 10m or 2h ({err})"))
}

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
