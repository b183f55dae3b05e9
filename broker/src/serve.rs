//! `corebus serve`: resolve the configuration, check the host, start the
//! shards and run until SIGINT or SIGTERM.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::ArgMatches;
use tracing::{debug, error, info, warn};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

use corebus_cluster::{Generation, GossipKeys, Membership, MembershipConfig, NodeIdentity, Timing};

use crate::cli::{LogFormat, ServeArgs, ServeCommand};
use crate::cluster::ClusterCommands;
use crate::config::{self, Origin, Resolved};
use crate::reload::{Reloader, SwappableAuth};
use crate::webhook::store::Store;
use crate::webhook::{Hook, Webhooks};

/// SIGINT or SIGTERM arrived: stop.
use crate::parts::{authenticator, cluster_keys, server_config, start_webhooks, tls_config};
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
        webhooks.agree_through(Arc::new(control));
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
    if let Some(mqtt) = server.mqtt_addr() {
        if let Err(err) = crate::stdio::line(format_args!("corebus mqtt on {mqtt}")) {
            warn!("cannot print the MQTT listener's address: {err:#}");
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
