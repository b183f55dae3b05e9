//! `corebus serve`: resolve the configuration, check the host, start the
//! shards and run until SIGINT or SIGTERM.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::ArgMatches;
use corebus_shards::{
    Authenticator, EngineConfig, OpenAccess, Origins, RingLimits, ServerConfig, SlowConsumerPolicy,
    WebConfig,
};
use tracing::{debug, error, info, warn};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

use corebus_cluster::{
    Generation, GossipKeys, LinkKey, Membership, MembershipConfig, NodeIdentity, Timing,
};

use crate::auth_config::AuthSettings;
use crate::cli::{LogFormat, ServeArgs, ServeCommand, SlowConsumer};
use crate::cluster::ClusterCommands;
use crate::config::{self, Origin, Resolved};
use crate::reload::{Reloader, SwappableAuth};
use crate::webhook::store::Store;
use crate::webhook::{self, DeliverySettings, Hook, Registry, RegistryPolicy, Webhooks};

/// SIGINT or SIGTERM arrived: stop.
static SIGNALLED: AtomicBool = AtomicBool::new(false);
/// SIGHUP arrived since the main loop last looked: reload.
static RELOAD: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(signal: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    match signal {
        libc::SIGHUP => RELOAD.store(true, Ordering::Release),
        _ => SIGNALLED.store(true, Ordering::Release),
    }
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
            max_hello_frame: args.max_hello_frame,
            max_subscriptions_per_conn: args.max_subscriptions,
            max_subscription_bytes_per_conn: args.max_subscription_bytes,
            max_subscriptions: args.max_subscriptions_total,
            outbox_limit_bytes: args.outbox_limit,
            link_outbox_limit_bytes: args.cluster_link_outbox_limit,
            slow_consumer: match args.slow_consumer {
                SlowConsumer::Drop => SlowConsumerPolicy::Drop,
                SlowConsumer::Disconnect => SlowConsumerPolicy::Disconnect,
            },
            ring: RingLimits {
                max_messages: args.ring_messages,
                max_bytes: args.ring_bytes,
            },
            topic_idle_evict_ms: args.topic_idle_evict.as_millis() as u64,
            topic_memory_bytes: usize::try_from(args.topic_memory).unwrap_or(usize::MAX),
            heartbeat_interval_ms: args.heartbeat_interval.as_millis() as u64,
            heartbeat_timeout_ms: args.heartbeat_timeout.as_millis() as u64,
            handshake_timeout_ms: args.handshake_timeout.as_millis() as u64,
            max_in_flight_per_conn: args.max_in_flight,
            max_connections_per_shard: args.max_connections_per_shard as usize,
            ..EngineConfig::default()
        },
        max_connections: args.max_connections as usize,
        max_handshaking: args.max_handshaking as usize,
        max_handshaking_per_source: args.max_handshaking_per_source as usize,
        web: args.ws_listen.0.map(|listen| WebConfig {
            listen,
            origins: web_origins(args),
        }),
        ..ServerConfig::default()
    })
}

/// The origins `ws_allowed_origin` lists (each value was checked when parsed).
fn web_origins(args: &ServeArgs) -> Origins {
    let all: Vec<&String> = args
        .ws_allowed_origin
        .iter()
        .flat_map(|origins| &origins.0)
        .collect();
    Origins::new(&all).unwrap_or_default()
}

/// The addresses clients reach the broker on: the native listener and,
/// when there is one, the browser listener.
fn client_listeners(args: &ServeArgs) -> impl Iterator<Item = std::net::SocketAddr> {
    std::iter::once(args.listen).chain(args.ws_listen.0)
}

/// The authenticator for these settings, enforcing the secure default:
/// without keys or a token secret the broker runs open, and then only on a
/// loopback address unless `insecure_no_auth` says otherwise.
pub fn authenticator(
    args: &ServeArgs,
    auth: &AuthSettings,
) -> anyhow::Result<Arc<dyn Authenticator>> {
    if !auth.is_open() {
        if args.insecure_no_auth {
            warn!("insecure_no_auth is set but keys or a token secret are configured: every connection must still authenticate");
        }
        return Ok(Arc::new(auth.authenticator(args.token_max_lifetime)));
    }
    let beyond_loopback = client_listeners(args).find(|addr| !addr.ip().is_loopback());
    if let (Some(addr), false) = (beyond_loopback, args.insecure_no_auth) {
        bail!(
            "refusing to listen on {addr} without authentication: configure [[keys]] or \
             token_secret (see docs/security.md), or start with --insecure-no-auth to let \
             anyone who reaches the port publish and subscribe to everything"
        );
    }
    warn!(listen = %args.listen, "running without authentication: every client may publish and subscribe to everything");
    Ok(Arc::new(OpenAccess))
}

/// The keys of a cluster member: the one that authenticates its gossip and
/// the one that signs and checks its links' credentials.
#[derive(Debug, Clone)]
pub struct ClusterKeys {
    /// Gossip datagrams.
    pub gossip: GossipKeys,
    /// Links between nodes.
    pub links: LinkKey,
}

/// The keys that authenticate this node's gossip and links, when it joins a
/// cluster: from `cluster_secret_file`, or (on a loopback address only,
/// where every peer is this host's) a fixed key that only keeps apart
/// clusters that were not meant to meet.
pub fn cluster_keys(args: &ServeArgs, auth: &AuthSettings) -> anyhow::Result<Option<ClusterKeys>> {
    let Some(listen) = args.cluster_listen.0 else {
        return Ok(None);
    };
    if args.cluster_secret_file.0.is_none() && !auth.is_open() {
        // The links' credentials come from the secret: without one, any
        // process of this host could claim to be a node and publish past
        // the clients' credentials.
        bail!(
            "refusing to run a cluster without a cluster secret while clients must \
             authenticate: set cluster_secret_file to a file holding at least 32 random bytes \
             (`corebus key generate` prints some), the same file on every node (see docs/cluster.md)"
        );
    }
    let secret = match &args.cluster_secret_file.0 {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("cluster_secret_file {}", path.display()))?
            .trim()
            .as_bytes()
            .to_vec(),
        None if listen.ip().is_loopback() => {
            warn!(%listen, "cluster without a secret: only nodes of this host can join; set cluster_secret_file beyond loopback");
            LOOPBACK_CLUSTER_KEY.to_vec()
        }
        None => bail!(
            "refusing to gossip on {listen} without a cluster secret: set cluster_secret_file \
             to a file holding at least 32 random bytes (`corebus key generate` prints some), \
             the same file on every node (see docs/cluster.md)"
        ),
    };
    Ok(Some(ClusterKeys {
        gossip: GossipKeys::new(&secret, None).context("cluster_secret_file")?,
        links: LinkKey::new(&secret).context("cluster_secret_file")?,
    }))
}

/// The gossip key of clusters on loopback without a secret (public, so it
/// authenticates nothing: it only makes such gossip a format of its own).
const LOOPBACK_CLUSTER_KEY: &[u8] = b"corebus loopback cluster, no secret configured";

/// How long a node that has seeds waits to hear from a member before it
/// says it is ready.
const JOIN_WAIT: Duration = Duration::from_secs(5);

/// Waits until the node knows another member, when it has seeds other than
/// itself (up to [`JOIN_WAIT`]): a node that announced itself before it knew
/// the others would own every topic for a moment, and start topics that
/// already live elsewhere.
fn await_first_member(
    args: &ServeArgs,
    node: std::net::SocketAddr,
    view: &corebus_cluster::ClusterView,
) {
    let has_seeds = args
        .seed
        .iter()
        .flat_map(|seeds| seeds.0.iter())
        .any(|seed| *seed != node);
    if !has_seeds {
        return;
    }
    let start = std::time::Instant::now();
    while view.snapshot().members.len() < 2 {
        if start.elapsed() >= JOIN_WAIT {
            warn!(
                ?JOIN_WAIT,
                "no cluster member answered; serving alone until one does"
            );
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    info!(waited = ?start.elapsed(), "joined the cluster");
}

/// Starts gossiping with the cluster's members, as the node whose clients
/// connect to `client`.
fn start_cluster(
    args: &ServeArgs,
    keys: GossipKeys,
    client: std::net::SocketAddr,
) -> anyhow::Result<Membership> {
    let listen = args.cluster_listen.0.context("cluster_listen is set")?;
    let started_ms = corebus_shards::auth::unix_now_ms();
    let membership = Membership::start(MembershipConfig {
        me: NodeIdentity {
            addr: listen,
            generation: Generation {
                started_ms,
                bump: 0,
            },
            client,
            leaving: false,
        },
        seeds: args
            .seed
            .iter()
            .flat_map(|seeds| seeds.0.iter().copied())
            .collect(),
        keys,
        timing: Timing::default(),
    })
    .with_context(|| format!("cannot gossip on {listen} (cluster_listen)"))?;
    info!(node = %listen, "cluster membership started");
    Ok(membership)
}

/// Starts the cluster's control plane (see `control`), on TCP at the
/// node's cluster address `node`.
fn start_control(
    args: &ServeArgs,
    node: std::net::SocketAddr,
    view: Arc<corebus_cluster::ClusterView>,
    key: corebus_cluster::LinkKey,
    (server_tls, client_tls): (
        Option<Arc<rustls::ServerConfig>>,
        Option<Arc<rustls::ClientConfig>>,
    ),
    webhooks: Arc<Webhooks>,
    fingerprint: Option<String>,
) -> anyhow::Result<crate::control::ControlHandle> {
    let timing = crate::control::ControlTiming {
        heartbeat: args.cluster_control_heartbeat,
        election: args.cluster_control_election_timeout,
    };
    if timing.heartbeat.is_zero() || timing.election < timing.heartbeat * 3 {
        bail!(
            "cluster_control_election_timeout ({:?}) must be at least three \
             cluster_control_heartbeat ({:?}), which must not be 0",
            timing.election,
            timing.heartbeat
        );
    }
    let dir = crate::control::dir(&args.data_dir);
    std::fs::create_dir_all(&dir).with_context(|| {
        format!(
            "cannot keep the control plane's log in {} (under data_dir, which must be \
             writable by the broker on a cluster member)",
            dir.display()
        )
    })?;
    let import = Store::new(args.data_dir.clone())
        .load()
        .context("reading webhooks.json for the control plane")?
        .iter()
        .map(Hook::to_stored)
        .collect();
    let seeds: Vec<std::net::SocketAddr> = args
        .seed
        .iter()
        .flat_map(|seeds| seeds.0.iter().copied())
        .collect();
    crate::control::start(crate::control::ControlConfig {
        addr: node,
        dir,
        view,
        key,
        server_tls,
        client_tls,
        bootstrap: seeds.iter().all(|seed| *seed == node),
        import,
        timing,
        webhooks,
        fingerprint,
    })
}

/// Tells the service manager `state` when it listens (`NOTIFY_SOCKET`);
/// nothing without one. A failure is logged, never fatal.
fn systemd_notify(state: &[sd_notify::NotifyState]) {
    if let Err(err) = sd_notify::notify(state) {
        warn!(%err, "cannot notify the service manager (NOTIFY_SOCKET)");
    }
}

/// Sends the service manager's watchdog a keep-alive every quarter of
/// `interval`, as long as every shard has run its maintenance tick since
/// the last one: a shard whose executor is stuck stops them, and systemd
/// restarts the broker after `WatchdogSec`.
fn start_watchdog(
    interval: Duration,
    metrics: corebus_shards::MetricsHandle,
) -> anyhow::Result<()> {
    let every = (interval / 4).max(Duration::from_millis(50));
    std::thread::Builder::new()
        .name("corebus-watchdog".into())
        .spawn(move || {
            let ticks = |metrics: &corebus_shards::MetricsHandle| -> Vec<u64> {
                metrics.snapshot().iter().map(|shard| shard.ticks).collect()
            };
            let mut last = ticks(&metrics);
            loop {
                std::thread::sleep(every);
                let now = ticks(&metrics);
                let turning = now.iter().zip(&last).all(|(now, then)| now > then);
                if turning {
                    systemd_notify(&[sd_notify::NotifyState::Watchdog]);
                    last = now;
                }
            }
        })
        .context("cannot start the watchdog thread")?;
    info!(
        ?interval,
        "systemd watchdog: keep-alives while every shard turns"
    );
    Ok(())
}

/// How long a joining node waits for the members' configuration
/// fingerprints.
const CONFIG_CHECK_WAIT: Duration = Duration::from_secs(3);

/// The TLS configuration `tls_cert` and `tls_key` ask for (both or
/// neither), and its certificate, which a reload replaces.
pub fn tls_config(
    args: &ServeArgs,
) -> anyhow::Result<
    Option<(
        Arc<rustls::ServerConfig>,
        Arc<corebus_shards::tls::ServerCert>,
    )>,
> {
    match (&args.tls_cert.0, &args.tls_key.0) {
        (None, None) => Ok(None),
        (Some(cert), Some(key)) => {
            let config = corebus_shards::tls::server_config_from_pem(cert, key)?;
            info!(cert = %cert.display(), "TLS enabled for client connections");
            Ok(Some(config))
        }
        _ => bail!("tls_cert and tls_key must be given together (or neither, for plaintext)"),
    }
}

/// The webhook registry (configured plus persisted webhooks) and its
/// delivery thread.
pub fn start_webhooks(resolved: &Resolved) -> anyhow::Result<Arc<Webhooks>> {
    let args = &resolved.args;
    // A cluster member's run-time webhooks are those its control plane
    // agreed; its own webhooks.json is only read for the founding import.
    let store = args
        .cluster_listen
        .0
        .is_none()
        .then(|| Store::new(args.data_dir.clone()));
    let registry = Registry::new(
        resolved.webhooks.clone(),
        store,
        RegistryPolicy {
            allow: args.webhook_allow_hosts.clone(),
            networks: args.webhook_allow_networks.clone(),
            rotation_grace: args.webhook_rotation_grace,
        },
    )?;
    let count = registry.snapshot().len();
    let settings = DeliverySettings {
        queue: args.webhook_queue as usize,
        timeout: args.webhook_timeout,
        retries: args.webhook_retries,
        backoff: args.webhook_backoff,
        max_backoff: args.webhook_max_backoff,
        tls: webhook::client_tls(args.webhook_ca.0.as_deref())?,
    };
    // Everyone is a super-user on an open broker: beyond loopback, nobody
    // may point it at a URL.
    let beyond_loopback = client_listeners(args).any(|addr| !addr.ip().is_loopback());
    let refuse = (resolved.auth.is_open() && beyond_loopback).then(|| {
        "webhook commands are refused on a broker without authentication that listens \
         beyond loopback; configure a super-user key (see docs/security.md)"
            .to_string()
    });
    let webhooks =
        Webhooks::start(registry, settings, refuse).context("cannot start the webhook thread")?;
    if count > 0 {
        info!(count, "webhooks registered");
    }
    Ok(webhooks)
}

/// `corebus serve`: `matches` are the `serve` subcommand's, which say
/// whether each setting came from a flag, the environment or a default.
pub fn main(command: ServeCommand, matches: &ArgMatches) -> anyhow::Result<()> {
    let mut resolved = config::resolve(command.file.config.as_deref(), matches)?;
    resolved.auth.apply_env()?;
    if command.print_config {
        return crate::stdio::print(&crate::config_text::effective_file(&resolved));
    }
    run(resolved, command.file.config.clone(), matches.clone())
}

/// Installs the global log subscriber on stderr: `level` unless RUST_LOG is
/// set, in `format`.
pub fn init_logging(level: &str, format: LogFormat) -> anyhow::Result<()> {
    // Colours only for a person at a terminal, not for journald or files.
    let ansi = std::io::stderr().is_terminal();
    init_logging_to(level, format, std::io::stderr, ansi)
}

/// [`init_logging`] with another writer. Records of the `log` crate
/// (glommio's warnings and errors, among others) are forwarded to the same
/// subscriber and filtered by the same directives, their module the target.
/// Fails if a global subscriber is already installed.
pub fn init_logging_to<W>(
    level: &str,
    format: LogFormat,
    writer: W,
    ansi: bool,
) -> anyhow::Result<()>
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .with_context(|| format!("invalid log_level {level:?}"))?;
    // openraft logs two lines every half second for each node it cannot
    // reach: the control plane reports what matters itself. Shown when
    // the filter names it (`info,openraft=warn`).
    let filter = match level.contains("openraft") || std::env::var_os("RUST_LOG").is_some() {
        true => filter,
        false => filter.add_directive("openraft=off".parse().expect("a valid directive")),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(writer);
    // With the tracing-log feature, try_init also installs the `log`
    // forwarder.
    match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    }
    .map_err(|err| anyhow::anyhow!("cannot install the log subscriber: {err}"))
}

/// Makes any panic end the process, after the usual message and an error
/// log record. A panic is a bug, and the broker cannot vouch for its state
/// after one: a shard whose thread or task panicked stops serving its
/// connections and topics while the other shards run on, and glommio catches
/// panics raised while waking a task and only logs them, leaving that task
/// never to run again (a whole shard, when it is the shard's main task). A
/// broker that exits can be restarted whole by its service manager (the
/// systemd unit in deploy/ restarts on failure); a half-working one cannot.
fn abort_on_panic() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        error!(panic = %info, "a thread panicked: stopping the broker so it can be restarted whole");
        std::process::abort();
    }));
}

/// Runs the broker until a signal asks it to stop; SIGHUP reloads the
/// configuration (`file` under the flags and environment in `matches`).
pub fn run(resolved: Resolved, file: Option<PathBuf>, matches: ArgMatches) -> anyhow::Result<()> {
    let args = &resolved.args;
    init_logging(&args.log_level, args.log_format)?;
    for setting in &resolved.settings {
        if setting.origin != Origin::Default {
            debug!(key = %setting.key, value = %setting.value, origin = %setting.origin, "setting");
        }
    }
    let mut config = server_config(args)?;
    debug!(data_dir = %args.data_dir.display(), "state directory");
    resolved.check_secret_files()?;
    // Credentials and the certificate are replaced by a reload.
    let auth = Arc::new(SwappableAuth::new(authenticator(args, &resolved.auth)?));
    config.auth = auth.clone();
    let tls = tls_config(args)?;
    config.tls = tls.as_ref().map(|(config, _)| config.clone());
    let cluster_keys = cluster_keys(args, &resolved.auth)?;
    if cluster_keys.is_some() && config.tls.is_some() {
        // The other nodes link to the client listener: links speak TLS too.
        config.link_tls = Some(crate::webhook::client_tls_for(
            "cluster_tls_ca_file",
            args.cluster_tls_ca_file.0.as_deref(),
        )?);
    }
    let webhooks = start_webhooks(&resolved)?;
    config.webhooks = webhooks.clone();
    crate::doctor::preflight(args.shards)?;
    abort_on_panic();
    // SAFETY: installing a handler that only stores to an atomic. SIGHUP
    // reloads instead of ending the process.
    unsafe {
        for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::signal(signal, on_signal as *const () as libc::sighandler_t);
        }
    }
    let mut reloader = Reloader::new(
        file,
        matches,
        resolved.clone(),
        auth,
        tls.map(|(_, cert)| cert),
        webhooks.clone(),
    );
    let cluster_commands = Arc::new(ClusterCommands::default());
    config.cluster = cluster_commands.clone();
    if cluster_keys.is_some() {
        config.nodes = Some(cluster_commands.clone());
    }
    // The control plane speaks the client listener's TLS, as the links do.
    let control_tls = (config.tls.clone(), config.link_tls.clone());
    let server = corebus_shards::start(config)?;
    // The other nodes' links come to this address.
    let advertised = args.cluster_advertise.0.unwrap_or(server.local_addr());
    if let Some(keys) = &cluster_keys {
        // Before the membership starts: no link is made before a member is
        // known, and none is answered before this node is one.
        cluster_commands.set_links(keys.links.clone(), advertised);
    }
    let link_key = cluster_keys.as_ref().map(|keys| keys.links.clone());
    // Compared with the other nodes' under the cluster secret; without one
    // there is nothing private to compare with.
    let fingerprint_key = link_key
        .clone()
        .filter(|_| args.cluster_secret_file.0.is_some());
    let fingerprint = fingerprint_key
        .as_ref()
        .map(|key| crate::control::config_fingerprint(&resolved, key));
    let membership = match cluster_keys {
        Some(keys) => Some(start_cluster(args, keys.gossip, advertised)?),
        None => None,
    };
    if let (Some(membership), Some(node)) = (&membership, args.cluster_listen.0) {
        cluster_commands.attach(node, membership.view());
        await_first_member(args, node, &membership.view());
        let control = start_control(
            args,
            node,
            membership.view(),
            link_key.clone().context("a cluster has link keys")?,
            control_tls.clone(),
            webhooks.clone(),
            fingerprint,
        )?;
        let differing = control.config_mismatches(CONFIG_CHECK_WAIT);
        if !differing.is_empty() && args.cluster_require_same_config {
            let nodes: Vec<String> = differing.iter().map(ToString::to_string).collect();
            bail!(
                "refusing to join: the security-relevant configuration (API keys, token \
                 secrets, webhook allow-list, limits, configured webhooks) differs from that of \
                 {} (cluster_require_same_config = true); make the files the same",
                nodes.join(", ")
            );
        }
        cluster_commands.set_control(control.clone());
        if let Some(key) = fingerprint_key {
            let control = control.clone();
            reloader.on_reload(move |resolved| {
                control.set_fingerprint(crate::control::config_fingerprint(resolved, &key));
            });
        }
        webhooks.agree_through(control);
    }
    if let Some(addr) = args.metrics.0 {
        let sources = crate::metrics::Sources {
            shards: server.metrics(),
            webhooks: Some(webhooks.clone()),
            cluster: membership.as_ref().map(Membership::view),
            reloads: Some(reloader.stats()),
        };
        let bound = crate::metrics::spawn(addr, sources)
            .with_context(|| format!("cannot serve metrics on {addr}"))?;
        info!(addr = %bound, "metrics on /metrics, health on /healthz");
    }
    // Scripts and service managers read the address from this line, but
    // the broker serves without it: a closed or failing stdout is logged,
    // never a reason to stop (nor a panic, which would abort it from here on).
    if let Err(err) = crate::stdio::line(format_args!(
        "corebus listening on {} with {} shards",
        server.local_addr(),
        server.shard_count()
    )) {
        warn!("cannot print the listening address: {err:#}");
    }
    if let Some(web) = server.web_addr() {
        if let Err(err) = crate::stdio::line(format_args!("corebus browsers on {web}")) {
            warn!("cannot print the browser listener's address: {err:#}");
        }
    }
    // Every shard listens: ready, for a service manager that asks
    // (Type=notify); and, when it asks for a watchdog, proof of life
    // while every shard's executor turns.
    systemd_notify(&[sd_notify::NotifyState::Ready]);
    if let Some(interval) = sd_notify::watchdog_enabled() {
        start_watchdog(interval, server.metrics())?;
    }
    while !SIGNALLED.load(Ordering::Acquire) {
        if RELOAD.swap(false, Ordering::AcqRel) {
            info!("SIGHUP: reloading the configuration");
            // systemd wants the time with RELOADING=1.
            match sd_notify::NotifyState::monotonic_usec_now() {
                Ok(now) => systemd_notify(&[sd_notify::NotifyState::Reloading, now]),
                Err(err) => warn!(%err, "cannot read the monotonic clock for systemd"),
            }
            reloader.reload(&server);
            systemd_notify(&[sd_notify::NotifyState::Ready]);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    systemd_notify(&[sd_notify::NotifyState::Stopping]);
    if let Some(membership) = &membership {
        // The others learn at once that this node is going, rather than by
        // failed probes, and stop placing topics on it: they take its
        // topics over, with their state, while it drains.
        membership.start_leaving();
        info!("leaving the cluster: handing topics over");
    }
    let deadline = args.shutdown_deadline;
    info!(?deadline, "signal received: sending GOAWAY and draining");
    let draining = std::time::Instant::now();
    server.shutdown(deadline);
    // What this node sequenced goes out before it exits: its webhooks'
    // queues are delivered, within what is left of the deadline.
    let left = deadline.saturating_sub(draining.elapsed());
    if !webhooks.wait_delivered(left) {
        warn!(
            undelivered = webhooks.outstanding(),
            "webhook messages still queued at the shutdown deadline are dropped"
        );
    }
    if let Some(membership) = membership {
        membership.leave();
        info!("left the cluster");
    }
    info!("stopped");
    Ok(())
}
