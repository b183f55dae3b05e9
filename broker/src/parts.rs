//! The broker's parts as its settings describe them: the shards'
//! configuration, the authenticator, TLS, the cluster's keys and the
//! webhook registry with its delivery. Assembled into a running broker by
//! `serve` (with signals, reload and the cluster around them) and by
//! `embedded`, and rebuilt by `reload`.

use std::sync::Arc;

use anyhow::{bail, Context};
use corebus_shards::{
    Authenticator, EngineConfig, MqttConfig, OpenAccess, Origins, RingLimits, ServerConfig,
    SessionLimits, SlowConsumerPolicy, WebConfig,
};
use tracing::{info, warn};

use corebus_cluster::{GossipKeys, LinkKey};

use crate::auth_config::AuthSettings;
use crate::cli::{ServeArgs, SlowConsumer};
use crate::config::{self, Resolved};
use crate::webhook::store::Store;
use crate::webhook::{self, DeliverySettings, Registry, RegistryPolicy, Webhooks};

/// SIGINT or SIGTERM arrived: stop.
/// The shard configuration these settings ask for, or why they are
/// inconsistent.
pub fn server_config(args: &ServeArgs) -> anyhow::Result<ServerConfig> {
    if let Err(conflict) = config::check_consistency(args) {
        bail!("{conflict}");
    }
    Ok(ServerConfig {
        listen: args.listen,
        shards: args.shards.count(),
        pin_shards: args.pin_shards,
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
            retained_messages: args.retained_messages,
            retained_bytes: args.retained_bytes,
            ..EngineConfig::default()
        },
        max_connections: args.max_connections as usize,
        max_handshaking: args.max_handshaking as usize,
        max_handshaking_per_source: args.max_handshaking_per_source as usize,
        web: args.ws_listen.0.map(|listen| WebConfig {
            listen,
            origins: web_origins(args),
        }),
        mqtt: args.mqtt_listen.0.map(|listen| MqttConfig {
            listen,
            namespace: args.mqtt_namespace.clone(),
            tenants: args.mqtt_tenants,
            max_keep_alive_secs: u16::try_from(args.mqtt_max_keep_alive.as_secs())
                .unwrap_or(u16::MAX),
            sessions: SessionLimits {
                expiry_max_secs: u32::try_from(args.mqtt_session_expiry_max.as_secs())
                    .unwrap_or(u32::MAX - 1),
                max_detached: args.mqtt_max_sessions,
                queue_messages: args.mqtt_session_queue,
                queue_bytes: args.mqtt_session_queue_bytes,
            },
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
/// when there are, the browser and MQTT listeners.
fn client_listeners(args: &ServeArgs) -> impl Iterator<Item = std::net::SocketAddr> {
    std::iter::once(args.listen)
        .chain(args.ws_listen.0)
        .chain(args.mqtt_listen.0)
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
