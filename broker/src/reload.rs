//! Reloading the configuration without a restart: SIGHUP (what the systemd
//! unit's `ExecReload=` sends) makes `serve` read its file, the secret
//! files it names and the environment again, and apply what a running
//! broker can change. Connections stay up.
//!
//! Everything is checked before anything changes: a reload that fails (a
//! file that does not parse, a certificate that does not match its key, a
//! key file that went missing) changes nothing and says why in the log.
//! What can change ([`RELOADABLE`]): the API keys and token secrets, the TLS
//! certificate and key (new handshakes present the new ones, established
//! connections keep theirs), the webhook allow-list and rotation grace, and
//! the connection and subscription limits (a lowered one refuses what comes
//! next and takes nothing away). Any other setting that changed is named in
//! a warning and keeps its value until a restart.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::bail;
use clap::ArgMatches;
use corebus_shards::auth::{AuthError, Grant};
use corebus_shards::tls::ServerCert;
use corebus_shards::{Authenticator, Server};
use tracing::{info, warn};

use crate::config::{self, Resolved};
use crate::webhook::{RegistryPolicy, Webhooks};

/// The settings a reload applies; a change to any other one needs a
/// restart. The API keys and token secrets (`[[keys]]`, `token_secret*`)
/// are reloaded too.
pub const RELOADABLE: &[&str] = &[
    "tls_cert",
    "tls_key",
    "token_max_lifetime",
    "webhook_allow_hosts",
    "webhook_allow_networks",
    "webhook_rotation_grace",
    "max_connections",
    "max_connections_per_shard",
    "max_handshaking",
    "max_handshaking_per_source",
    "max_subscriptions",
    "max_subscription_bytes",
    "max_subscriptions_total",
    "max_in_flight",
    "outbox_limit",
    "slow_consumer",
    "topic_memory",
];

/// How long a reload waits for every shard to take new limits.
const LIMITS_WAIT: Duration = Duration::from_secs(2);

/// An authenticator whose credentials a reload replaces: connections that
/// authenticated before keep what they were granted, new handshakes are
/// checked against the current ones.
#[derive(Debug)]
pub struct SwappableAuth {
    current: RwLock<Arc<dyn Authenticator>>,
}

impl SwappableAuth {
    /// Checks credentials with `auth` until [`SwappableAuth::set`].
    pub fn new(auth: Arc<dyn Authenticator>) -> SwappableAuth {
        SwappableAuth {
            current: RwLock::new(auth),
        }
    }

    /// Checks new handshakes with `auth` from now on.
    pub fn set(&self, auth: Arc<dyn Authenticator>) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = auth;
    }

    fn current(&self) -> Arc<dyn Authenticator> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl Authenticator for SwappableAuth {
    fn authenticate(&self, credentials: &[u8], now_ms: u64) -> Result<Grant, AuthError> {
        self.current().authenticate(credentials, now_ms)
    }

    fn mint(&self, claims_json: &str, ttl_secs: u32, now_ms: u64) -> Result<String, AuthError> {
        self.current().mint(claims_json, ttl_secs, now_ms)
    }
}

/// Reloads so far, for the metrics endpoint.
#[derive(Debug, Default)]
pub struct ReloadStats {
    /// Reloads applied.
    pub succeeded: AtomicU64,
    /// Reloads refused (nothing changed).
    pub failed: AtomicU64,
    /// 1 when the last reload was applied (or none was asked for), 0 when
    /// it was refused: the running configuration is not the file's.
    pub last_ok: AtomicU64,
}

/// Called with each configuration a reload applies.
type OnReload = Box<dyn Fn(&Resolved) + Send>;

/// What a running broker can change, and what it runs with now.
pub struct Reloader {
    /// The configuration file, when `serve` was given one.
    file: Option<PathBuf>,
    /// The flags and environment `serve` started with: they still win over
    /// the file.
    matches: ArgMatches,
    /// The configuration in force.
    current: Resolved,
    auth: Arc<SwappableAuth>,
    cert: Option<Arc<ServerCert>>,
    webhooks: Arc<Webhooks>,
    /// Refreshes the configuration fingerprint the cluster compares.
    fingerprint: Option<OnReload>,
    stats: Arc<ReloadStats>,
}

impl Reloader {
    /// A reloader for a broker started with `current` (read from `file`
    /// under `matches`), whose handshakes `auth` checks, whose TLS
    /// certificate is `cert`, and whose webhooks are `webhooks`.
    pub fn new(
        file: Option<PathBuf>,
        matches: ArgMatches,
        current: Resolved,
        auth: Arc<SwappableAuth>,
        cert: Option<Arc<ServerCert>>,
        webhooks: Arc<Webhooks>,
    ) -> Reloader {
        let stats = Arc::new(ReloadStats::default());
        stats.last_ok.store(1, Ordering::Relaxed);
        Reloader {
            file,
            matches,
            current,
            auth,
            cert,
            webhooks,
            fingerprint: None,
            stats,
        }
    }

    /// Calls `refresh` with each configuration a reload applies (a cluster
    /// member's fingerprint of it).
    pub fn on_reload(&mut self, refresh: impl Fn(&Resolved) + Send + 'static) {
        self.fingerprint = Some(Box::new(refresh));
    }

    /// The counters the metrics endpoint shows.
    pub fn stats(&self) -> Arc<ReloadStats> {
        self.stats.clone()
    }

    /// Reads the configuration again and applies it to `server`; logs what
    /// changed, or why nothing did.
    pub fn reload(&mut self, server: &Server) {
        match self.try_reload(server) {
            Ok(()) => {
                self.stats.succeeded.fetch_add(1, Ordering::Relaxed);
                self.stats.last_ok.store(1, Ordering::Relaxed);
            }
            Err(err) => {
                self.stats.failed.fetch_add(1, Ordering::Relaxed);
                self.stats.last_ok.store(0, Ordering::Relaxed);
                warn!(
                    error = crate::stdio::one_line(&err),
                    "configuration reload refused: nothing changed"
                );
            }
        }
    }

    fn try_reload(&mut self, server: &Server) -> anyhow::Result<()> {
        // Everything is read and checked first.
        let mut fresh = config::resolve(self.file.as_deref(), &self.matches)?;
        fresh.auth.apply_env()?;
        fresh.check_secret_files()?;
        let server_config = crate::parts::server_config(&fresh.args)?;
        let args = &fresh.args;
        if fresh.auth.is_open() != self.current.auth.is_open() {
            bail!(
                "the broker started {} authentication and the configuration now asks for it \
                 {}: switching between open access and authentication needs a restart",
                if self.current.auth.is_open() {
                    "without"
                } else {
                    "with"
                },
                if fresh.auth.is_open() { "off" } else { "on" },
            );
        }
        let tls = match (&self.cert, &args.tls_cert.0, &args.tls_key.0) {
            (Some(cert), Some(cert_path), Some(key_path)) => Some((cert, cert_path, key_path)),
            (None, None, None) => None,
            (Some(_), ..) => bail!(
                "the broker serves TLS and the configuration now has no tls_cert and tls_key: \
                 turning TLS off needs a restart"
            ),
            (None, ..) => bail!(
                "the broker serves plaintext and the configuration now has tls_cert or \
                 tls_key: turning TLS on needs a restart"
            ),
        };
        // Then applied, the one step that can still fail first.
        if let Some((cert, cert_path, key_path)) = tls {
            cert.reload(cert_path, key_path)?;
        }
        if !fresh.auth.is_open() {
            self.auth
                .set(Arc::new(fresh.auth.authenticator(args.token_max_lifetime)));
        }
        self.webhooks.registry().set_policy(RegistryPolicy {
            allow: args.webhook_allow_hosts.clone(),
            networks: args.webhook_allow_networks.clone(),
            rotation_grace: args.webhook_rotation_grace,
        });
        if !server.set_limits(&server_config, LIMITS_WAIT) {
            warn!("a shard had not taken the new limits after {LIMITS_WAIT:?}; it takes them on its next tick");
        }
        let needs_restart = restart_only_changes(&self.current, &fresh);
        if !needs_restart.is_empty() {
            warn!(
                settings = needs_restart.join(", "),
                "these settings changed but need a restart; they keep their running values"
            );
        }
        let changed = changed_settings(&self.current, &fresh, true);
        // What runs now: the running values of what needs a restart stay,
        // so that the next reload (and the cluster's comparison) sees them.
        let mut applied = fresh;
        keep_restart_only(&mut applied, &self.current);
        if let Some(refresh) = &self.fingerprint {
            refresh(&applied);
        }
        info!(
            changed = changed.join(", "),
            keys = applied.auth.keys.len(),
            tls = self.cert.is_some(),
            "configuration reloaded (API keys, token secrets and certificate read again)"
        );
        self.current = applied;
        Ok(())
    }
}

/// The settings (and `[[webhooks]]`) that differ between `old` and `new`
/// and that a reload cannot apply.
fn restart_only_changes(old: &Resolved, new: &Resolved) -> Vec<String> {
    let mut changed = changed_settings(old, new, false);
    if old.configured_webhooks() != new.configured_webhooks() {
        changed.push("webhooks ([[webhooks]])".into());
    }
    changed
}

/// The settings whose values differ between `old` and `new`: those a
/// reload applies, or (`reloadable` false) those it cannot.
fn changed_settings(old: &Resolved, new: &Resolved, reloadable: bool) -> Vec<String> {
    new.settings
        .iter()
        .zip(&old.settings)
        .filter(|(new, old)| {
            new.value != old.value && RELOADABLE.contains(&new.key.as_str()) == reloadable
        })
        .map(|(new, _)| new.key.clone())
        .collect()
}

/// Puts `old`'s values back into `applied` for the settings a reload
/// cannot change, so that the next reload compares with what runs.
fn keep_restart_only(applied: &mut Resolved, old: &Resolved) {
    for (setting, was) in applied.settings.iter_mut().zip(&old.settings) {
        if !RELOADABLE.contains(&setting.key.as_str()) {
            *setting = was.clone();
        }
    }
    applied.webhooks = old.webhooks.clone();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reloadable_name_is_a_setting() {
        let command = config::settings_command();
        for key in RELOADABLE {
            assert!(
                config::setting_args(&command).any(|arg| arg.get_id() == *key),
                "{key} is not a setting"
            );
        }
    }
}
