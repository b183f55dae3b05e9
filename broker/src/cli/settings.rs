//! Every `serve` setting (`ServeArgs`): a flag, an environment variable and
//! a configuration file key each, with the parsers of their values (sizes
//! with units, durations, shard counts, optional addresses and paths).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::builder::BoolishValueParser;
use clap::{Args, ValueEnum};

use super::{DEFAULT_ADDR, MIN_HELLO_FRAME};

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
    /// Pin each shard's thread to one CPU of the process's affinity mask
    /// (when it has at least as many CPUs as there are shards). Best on a
    /// machine of the broker's own; set it to false where other busy
    /// processes share the CPUs (several nodes on one host, a load
    /// generator, applications), so that the kernel can move a shard off a
    /// CPU they are using.
    #[arg(long, env = "COREBUS_PIN_SHARDS", default_value = "true",
          num_args = 0..=1, default_missing_value = "true", require_equals = true,
          value_parser = BoolishValueParser::new())]
    pub pin_shards: bool,
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
    /// Retained messages kept, all shards together (each shard keeps an
    /// equal part for the topics it owns): a retained publish past it is
    /// published but not kept, counted in `retained_refused_total`.
    #[arg(long, env = "COREBUS_RETAINED_MESSAGES", default_value_t = 100_000)]
    pub retained_messages: usize,
    /// Bytes of retained messages kept, all shards together, as
    /// `retained_messages` is.
    #[arg(long, env = "COREBUS_RETAINED_BYTES", default_value_t = 256 << 20,
          value_parser = bytes_in::<usize>(0, u64::MAX))]
    pub retained_bytes: usize,
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
    /// Address of the MQTT listener, or `off`: MQTT 3.1.1 and 5.0 clients
    /// (1883 is the convention), served by the shards with the same TLS,
    /// authentication (the password is an API key or a token) and limits
    /// as the native listener (see docs/mqtt.md).
    #[arg(long, env = "COREBUS_MQTT_LISTEN", default_value = "off", value_parser = parse_optional_addr)]
    pub mqtt_listen: OptionalAddr,
    /// The namespace every MQTT topic lives in: an MQTT topic name is the
    /// corebus topic of that name in it.
    #[arg(long, env = "COREBUS_MQTT_NAMESPACE", default_value = "mqtt", value_parser = parse_namespace)]
    pub mqtt_namespace: String,
    /// Multi-tenant MQTT: the first level of an MQTT topic name is its
    /// namespace and the rest its topic (`acme/sensors/t` is `acme` /
    /// `sensors/t`), so keys and tokens scoped to a namespace separate the
    /// tenants; a name or filter without a second level, or with a
    /// wildcard in the first, is refused. `mqtt_namespace` is then unused.
    #[arg(long, env = "COREBUS_MQTT_TENANTS", default_value = "false",
          num_args = 0..=1, default_missing_value = "true", require_equals = true,
          value_parser = BoolishValueParser::new())]
    pub mqtt_tenants: bool,
    /// The longest keep-alive an MQTT 5.0 client may have (at most 65535s):
    /// one asking for more, or for none, is told this one in the CONNACK
    /// (server keep-alive) and closed after one and a half times it without
    /// a packet. 0s: no cap. MQTT 3.1.1 clients keep theirs.
    #[arg(long, env = "COREBUS_MQTT_MAX_KEEP_ALIVE", default_value = "0s", value_parser = parse_keep_alive)]
    pub mqtt_max_keep_alive: Duration,
    /// The longest an MQTT session outlives its connection (whole seconds):
    /// a 5.0 client asking for longer is told this in the CONNACK, and a
    /// 3.1.1 persistent session (clean session 0) gets it. 0s: sessions end
    /// with their connections. Sessions live in memory: a restart ends them.
    #[arg(long, env = "COREBUS_MQTT_SESSION_EXPIRY_MAX", default_value = "2h", value_parser = parse_session_expiry)]
    pub mqtt_session_expiry_max: Duration,
    /// MQTT sessions without a connection kept at once, broker-wide; a
    /// session past it ends with its connection (logged).
    #[arg(long, env = "COREBUS_MQTT_MAX_SESSIONS", default_value_t = 10_000)]
    pub mqtt_max_sessions: usize,
    /// Messages one MQTT session queues while its client is away (QoS 0, 1
    /// and 2); past it they are dropped, counted and logged.
    #[arg(long, env = "COREBUS_MQTT_SESSION_QUEUE", default_value_t = 1_000)]
    pub mqtt_session_queue: usize,
    /// Bytes (topic names and payloads) all MQTT sessions without a
    /// connection queue together; past it, messages for them are dropped,
    /// counted and logged.
    #[arg(long, env = "COREBUS_MQTT_SESSION_QUEUE_BYTES", default_value_t = 64 << 20,
          value_parser = bytes_in::<usize>(0, u64::MAX))]
    pub mqtt_session_queue_bytes: usize,
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

/// A namespace name, checked by the rules every namespace follows.
pub fn parse_namespace(text: &str) -> Result<String, String> {
    corebus_net::validate_namespace(text.as_bytes())
        .map(|()| text.to_owned())
        .map_err(|err| err.to_string())
}

/// An MQTT keep-alive cap: a duration of whole seconds up to 65,535 (the
/// largest keep-alive MQTT can say).
pub fn parse_session_expiry(text: &str) -> Result<Duration, String> {
    let duration = parse_duration(text)?;
    if duration.as_secs() >= u64::from(u32::MAX) || duration.subsec_nanos() != 0 {
        return Err(format!(
            "{text} is not a session expiry: whole seconds, under 4294967295s"
        ));
    }
    Ok(duration)
}

/// Parses a keep-alive: a duration of whole seconds, at most 65535.
pub fn parse_keep_alive(text: &str) -> Result<Duration, String> {
    let duration = parse_duration(text)?;
    if duration.as_secs() > u64::from(u16::MAX) || duration.subsec_nanos() != 0 {
        return Err(format!(
            "{text} is not a keep-alive: whole seconds, at most 65535s"
        ));
    }
    Ok(duration)
}
