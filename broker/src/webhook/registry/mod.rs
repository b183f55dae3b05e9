//! The webhooks a broker delivers to: those of the configuration file and
//! those added at run time (persisted in the data directory), their signing
//! secrets, and the `WEBHOOK_REQUEST` commands that change them.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use anyhow::{anyhow, bail};
use corebus_shards::auth::unix_now_ms;
use corebus_shards::WebhookCommandError;
use serde_json::{json, Map, Value};
use tracing::{info, warn};

use super::hook::{
    check_id, check_secret, from_stored, generate_id, generate_secret, Disabled, Hook, Secrets,
    Source,
};
use super::network::NetworkPolicy;
use super::store::Store;
use super::url::{AllowList, Destination};
use crate::permissions::{pattern_parts, topic_pattern};

/// What the registry checks and how long rotated secrets live.
#[derive(Debug, Clone)]
pub struct RegistryPolicy {
    /// Hosts webhooks may post to.
    pub allow: AllowList,
    /// Special-purpose networks webhooks may reach all the same.
    pub networks: NetworkPolicy,
    /// How long a rotated-out secret keeps signing.
    pub rotation_grace: Duration,
}

impl RegistryPolicy {
    /// [`RegistryPolicy::rotation_grace`] in milliseconds.
    pub fn rotation_grace_ms(&self) -> u64 {
        u64::try_from(self.rotation_grace.as_millis()).unwrap_or(u64::MAX)
    }
}

/// Why a webhook cannot be rotated again yet: its previous secret still
/// signs until `until` (Unix ms). A second rotation would stop the oldest
/// secret signing at once, before receivers had their grace period.
pub fn still_signing(id: &str, until: u64) -> String {
    format!(
        "webhook {id:?}: the previous secret still signs until {until} (Unix ms); \
         rotate again after that, or remove and re-add the webhook to drop \
         both secrets now"
    )
}

/// The fields of an `add` command.
const ADD_FIELDS: &[&str] = &["op", "url", "namespace", "topic", "match", "secret", "id"];

/// The set of webhooks, shared by the shards (which read it) and the
/// delivery thread.
#[derive(Debug)]
pub struct Registry {
    hooks: RwLock<Arc<Vec<Arc<Hook>>>>,
    generation: AtomicU64,
    /// Serializes commands: read, change, persist, publish.
    edit: Mutex<()>,
    store: Option<Store>,
    /// Replaced by a reload ([`Registry::set_policy`]).
    policy: RwLock<Arc<RegistryPolicy>>,
    /// In a cluster: records a 410's disable in the control plane.
    agreed_disable: OnceLock<DisableHook>,
}

/// Records a runtime webhook's disable (id, Unix ms, detail) elsewhere.
pub struct DisableHook(pub Box<dyn Fn(String, u64, String) + Send + Sync>);

impl std::fmt::Debug for DisableHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DisableHook")
    }
}

impl Registry {
    /// A registry of `config` webhooks plus what `store` holds (checked
    /// against the policy; a stored webhook outside the allow-list is kept,
    /// and refused at delivery time, so that it is not lost).
    pub fn new(
        config: Vec<Arc<Hook>>,
        store: Option<Store>,
        policy: RegistryPolicy,
    ) -> anyhow::Result<Registry> {
        let mut hooks = config;
        for hook in &hooks {
            policy
                .allow
                .check(&hook.destination)
                .and_then(|()| policy.networks.check_literal(&hook.destination))
                .map_err(|reason| anyhow!("webhook {:?}: {reason}", hook.id))?;
        }
        if let Some(store) = &store {
            for stored in store.load()? {
                if hooks.iter().any(|hook| hook.id == stored.id) {
                    bail!(
                        "webhook id {:?} is both in the configuration file and in {}",
                        stored.id,
                        store.path().display()
                    );
                }
                hooks.push(Arc::new(stored));
            }
        }
        let generation = u64::from(!hooks.is_empty());
        Ok(Registry {
            hooks: RwLock::new(Arc::new(hooks)),
            generation: AtomicU64::new(generation),
            edit: Mutex::new(()),
            store,
            policy: RwLock::new(Arc::new(policy)),
            agreed_disable: OnceLock::new(),
        })
    }

    /// The current webhooks.
    pub fn snapshot(&self) -> Arc<Vec<Arc<Hook>>> {
        self.hooks.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Changes whenever the set changes; 0 while there has never been one.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The allow-list and rotation policy.
    pub fn policy(&self) -> Arc<RegistryPolicy> {
        self.policy
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Replaces the allow-list and rotation policy (a reload): commands
    /// are checked against it from now on, and deliveries from their next
    /// message. Webhooks outside it are kept and refused at delivery
    /// (`not_allowed`), as at start-up.
    pub fn set_policy(&self, policy: RegistryPolicy) {
        *self.policy.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(policy);
    }

    /// Carries out one JSON command (see `docs/webhooks.md`).
    pub fn command(&self, text: &str) -> Result<String, WebhookCommandError> {
        let invalid = |reason: String| WebhookCommandError::Invalid(reason);
        let mut command: Map<String, Value> = match serde_json::from_str(text) {
            Ok(Value::Object(object)) => object,
            Ok(_) => return Err(invalid("the command must be a JSON object".into())),
            Err(err) => return Err(invalid(format!("the command is not JSON: {err}"))),
        };
        // A request id makes a command idempotent in a cluster (see
        // `control`); one broker carries each command out once anyway.
        match command.remove("request_id") {
            None | Some(Value::String(_)) => {}
            Some(_) => return Err(invalid("\"request_id\" must be a string".into())),
        }
        let _edit = self.edit.lock().unwrap_or_else(|e| e.into_inner());
        let op = command.get("op").and_then(Value::as_str).unwrap_or("");
        let result = match op {
            "list" => {
                only_fields(&command, &["op"])?;
                let hooks = self.snapshot();
                json!({ "webhooks": hooks.iter().map(|h| h.to_json(false)).collect::<Vec<_>>() })
            }
            "add" => {
                only_fields(&command, ADD_FIELDS)?;
                let hook = self.parse_add(&command)?;
                let hook = Arc::new(hook);
                self.publish_change(|hooks| {
                    if hooks.iter().any(|h| h.id == hook.id) {
                        return Err(invalid(format!("a webhook {:?} already exists", hook.id)));
                    }
                    hooks.push(hook.clone());
                    Ok(())
                })?;
                json!({ "webhook": hook.to_json(true) })
            }
            "remove" => {
                let id = self.prepare_runtime(&command, "remove")?;
                let mut removed = None;
                self.publish_change(|hooks| {
                    let index = self.runtime_index(hooks, &id, "remove")?;
                    removed = Some(hooks.remove(index));
                    Ok(())
                })?;
                let removed = removed.expect("set by the change above");
                json!({ "removed": removed.to_json(false) })
            }
            "rotate" => {
                let (id, secret) = self.prepare_rotate(&command)?;
                let hooks = self.snapshot();
                let index = self.runtime_index(&hooks, &id, "rotate")?;
                let hook = &hooks[index];
                let before = hook.secrets();
                let now = unix_now_ms();
                if let Some((_, until)) = before.previous.as_ref().filter(|(_, until)| now < *until)
                {
                    return Err(invalid(still_signing(&id, *until)));
                }
                let rotated = Secrets {
                    current: secret,
                    previous: Some((
                        before.current.clone(),
                        now.saturating_add(self.policy().rotation_grace_ms()),
                    )),
                };
                // On disk first: no request is signed with a secret that a
                // failed write would take back.
                self.persist(&hooks, Some((index, &rotated)))?;
                *hook.secrets.lock().unwrap_or_else(|e| e.into_inner()) = rotated;
                json!({ "webhook": hook.to_json(true) })
            }
            "enable" => {
                only_fields(&command, &["op", "id"])?;
                let id = string_field(&command, "id")?;
                let hooks = self.snapshot();
                let hook = hooks
                    .iter()
                    .find(|hook| hook.id == id)
                    .ok_or_else(|| invalid(format!("no webhook {id:?}")))?;
                // Cleared before it is written: `persist` writes the state
                // the hooks hold. A failed write puts it back, so at most a
                // message that was already waiting goes out meanwhile.
                let before = hook.set_disabled(None);
                if hook.source == Source::Runtime && before.is_some() {
                    if let Err(err) = self.persist(&hooks, None) {
                        hook.set_disabled(before);
                        return Err(err);
                    }
                }
                if let Some(before) = before {
                    info!(webhook = %id, was = %before.detail, "webhook enabled");
                }
                json!({ "webhook": hook.to_json(false) })
            }
            "" => return Err(invalid("the command has no \"op\"".into())),
            other => {
                return Err(invalid(format!(
                    "unknown op {other:?}: use add, list, remove, rotate or enable"
                )))
            }
        };
        Ok(result.to_string())
    }

    fn parse_add(&self, command: &Map<String, Value>) -> Result<Hook, WebhookCommandError> {
        let invalid = WebhookCommandError::Invalid;
        let url = string_field(command, "url")?;
        let destination = Destination::parse(&url).map_err(invalid)?;
        let policy = self.policy();
        policy.allow.check(&destination).map_err(invalid)?;
        policy
            .networks
            .check_literal(&destination)
            .map_err(invalid)?;
        let namespace = string_field(command, "namespace")?;
        corebus_net::validate_namespace(namespace.as_bytes())
            .map_err(|err| invalid(format!("namespace: {err}")))?;
        let topic = match command.get("topic") {
            None => String::new(),
            Some(Value::String(topic)) => topic.clone(),
            Some(_) => return Err(invalid("\"topic\" must be a string".into())),
        };
        let prefix = match command.get("match").map(|m| m.as_str()) {
            None | Some(Some("exact")) => false,
            Some(Some("prefix")) => true,
            _ => return Err(invalid("\"match\" must be \"exact\" or \"prefix\"".into())),
        };
        let topic = topic_pattern(topic, prefix).map_err(invalid)?;
        let id = match command.get("id") {
            None => generate_id().map_err(internal)?,
            Some(Value::String(id)) => {
                check_id(id).map_err(invalid)?;
                id.clone()
            }
            Some(_) => return Err(invalid("\"id\" must be a string".into())),
        };
        let secret = match optional_secret(command)? {
            Some(secret) => secret,
            None => generate_secret().map_err(internal)?,
        };
        let secrets = Secrets {
            current: secret,
            previous: None,
        };
        Ok(Hook::new(
            id,
            destination,
            namespace,
            topic,
            Source::Runtime,
            secrets,
        ))
    }

    fn runtime_index(
        &self,
        hooks: &[Arc<Hook>],
        id: &str,
        what: &str,
    ) -> Result<usize, WebhookCommandError> {
        let index = hooks
            .iter()
            .position(|hook| hook.id == id)
            .ok_or_else(|| WebhookCommandError::Invalid(format!("no webhook {id:?}")))?;
        if hooks[index].source == Source::Config {
            return Err(WebhookCommandError::Invalid(format!(
                "webhook {id:?} is defined in the configuration file; {what} it there"
            )));
        }
        Ok(index)
    }

    /// Disables `hook` (its endpoint answered 410 Gone) and, for a runtime
    /// webhook, stores that. It is disabled in memory even when storing
    /// fails (the error says so): what matters is to stop posting now.
    /// Blocks on the disk; the delivery thread calls it off its runtime.
    pub fn disable(&self, hook: &Arc<Hook>, detail: String) -> Result<(), WebhookCommandError> {
        let _edit = self.edit.lock().unwrap_or_else(|e| e.into_inner());
        let hooks = self.snapshot();
        if !hooks.iter().any(|h| Arc::ptr_eq(h, hook)) {
            return Ok(()); // Removed meanwhile: nothing to keep.
        }
        hook.set_disabled(Some(Disabled {
            at_ms: unix_now_ms(),
            detail,
        }));
        hook.stats.disables.fetch_add(1, Ordering::Relaxed);
        if hook.source == Source::Runtime {
            if let Some(agreed) = self.agreed_disable.get() {
                let disabled = hook.disabled().unwrap_or_else(|| Disabled {
                    at_ms: unix_now_ms(),
                    detail: String::new(),
                });
                (agreed.0)(hook.id.clone(), disabled.at_ms, disabled.detail);
                return Ok(());
            }
            self.persist(&hooks, None)?;
        }
        Ok(())
    }

    /// In a cluster: the run-time webhooks are what the control plane
    /// agreed, and a 410's disable is recorded there through `disable`.
    pub fn agree_through(&self, disable: DisableHook) {
        let _ = self.agreed_disable.set(disable);
    }

    /// Whether `id` is a webhook of the configuration file.
    pub fn is_configured(&self, id: &str) -> bool {
        self.snapshot()
            .iter()
            .any(|hook| hook.id == id && hook.source == Source::Config)
    }

    /// Makes the run-time webhooks those of `agreed` (stored forms by id):
    /// webhooks that stay keep their counters, and take the agreed secrets
    /// and disabled state. A configured webhook wins over an agreed one of
    /// the same id (logged).
    pub fn set_agreed(&self, agreed: &BTreeMap<String, Value>) {
        let _edit = self.edit.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.snapshot();
        let mut hooks: Vec<Arc<Hook>> = current
            .iter()
            .filter(|hook| hook.source == Source::Config)
            .cloned()
            .collect();
        let configured = hooks.len();
        for (id, stored) in agreed {
            if hooks[..configured].iter().any(|hook| &hook.id == id) {
                warn!(webhook = %id, "a run-time webhook has the id of one in this node's configuration file: the configured one is used here");
                continue;
            }
            let fresh = match from_stored(stored) {
                Ok(hook) => hook,
                Err(err) => {
                    warn!(webhook = %id, %err, "an agreed webhook this node cannot use");
                    continue;
                }
            };
            let kept = current.iter().find(|hook| {
                hook.source == Source::Runtime
                    && hook.id == fresh.id
                    && hook.destination.text == fresh.destination.text
                    && hook.namespace == fresh.namespace
                    && pattern_parts(&hook.topic) == pattern_parts(&fresh.topic)
            });
            match kept {
                Some(hook) => {
                    *hook.secrets.lock().unwrap_or_else(|e| e.into_inner()) = fresh.secrets();
                    hook.set_disabled(fresh.disabled());
                    hooks.push(hook.clone());
                }
                None => hooks.push(Arc::new(fresh)),
            }
        }
        let same = hooks.len() == current.len()
            && hooks
                .iter()
                .zip(current.iter())
                .all(|(a, b)| Arc::ptr_eq(a, b));
        if same {
            return;
        }
        let mut published = self.hooks.write().unwrap_or_else(|e| e.into_inner());
        *published = Arc::new(hooks);
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Checks an `add` command and builds its webhook (id and secret
    /// generated when not given), without adding it.
    pub fn prepare_add(&self, command: &Map<String, Value>) -> Result<Hook, WebhookCommandError> {
        only_fields(command, ADD_FIELDS)?;
        let hook = self.parse_add(command)?;
        if self.is_configured(&hook.id) {
            return Err(WebhookCommandError::Invalid(format!(
                "a webhook {:?} already exists (in the configuration file)",
                hook.id
            )));
        }
        Ok(hook)
    }

    /// Checks a command that names a run-time webhook (`remove`) and
    /// returns its id.
    pub fn prepare_runtime(
        &self,
        command: &Map<String, Value>,
        what: &str,
    ) -> Result<String, WebhookCommandError> {
        only_fields(command, &["op", "id"])?;
        let id = string_field(command, "id")?;
        self.runtime_index(&self.snapshot(), &id, what)?;
        Ok(id)
    }

    /// Checks a `rotate` command: the webhook's id and the new secret
    /// (generated when not given).
    pub fn prepare_rotate(
        &self,
        command: &Map<String, Value>,
    ) -> Result<(String, String), WebhookCommandError> {
        only_fields(command, &["op", "id", "secret"])?;
        let id = string_field(command, "id")?;
        self.runtime_index(&self.snapshot(), &id, "rotate")?;
        let secret = optional_secret(command)?
            .map_or_else(generate_secret, Ok)
            .map_err(internal)?;
        Ok((id, secret))
    }

    /// Checks an `enable` command of a run-time webhook; returns its id.
    pub fn prepare_enable(
        &self,
        command: &Map<String, Value>,
    ) -> Result<String, WebhookCommandError> {
        self.prepare_runtime(command, "enable")
    }

    /// Applies `change` to a copy of the set, persists it, then publishes it.
    fn publish_change(
        &self,
        change: impl FnOnce(&mut Vec<Arc<Hook>>) -> Result<(), WebhookCommandError>,
    ) -> Result<(), WebhookCommandError> {
        let mut hooks = (*self.snapshot()).clone();
        change(&mut hooks)?;
        self.persist(&hooks, None)?;
        let mut published = self.hooks.write().unwrap_or_else(|e| e.into_inner());
        *published = Arc::new(hooks);
        // Under the lock: whoever sees the new set also sees the new
        // generation (the delivery thread resyncs on it).
        self.generation.fetch_add(1, Ordering::AcqRel);
        drop(published);
        Ok(())
    }

    /// Writes the runtime webhooks of `hooks`, with `rotated` secrets in
    /// place of the current ones of the webhook at that index, if given.
    fn persist(
        &self,
        hooks: &[Arc<Hook>],
        rotated: Option<(usize, &Secrets)>,
    ) -> Result<(), WebhookCommandError> {
        let Some(store) = &self.store else {
            return Err(WebhookCommandError::Internal(
                "this broker has no data directory to keep webhooks in".into(),
            ));
        };
        let runtime: Vec<Value> = hooks
            .iter()
            .enumerate()
            .filter(|(_, hook)| hook.source == Source::Runtime)
            .map(|(index, hook)| match rotated {
                Some((at, secrets)) if at == index => hook.to_stored_with(secrets),
                _ => hook.to_stored_with(&hook.secrets()),
            })
            .collect();
        store
            .save(&runtime)
            .map_err(|err| WebhookCommandError::Internal(format!("{err:#}")))
    }
}

fn internal(err: std::io::Error) -> WebhookCommandError {
    WebhookCommandError::Internal(format!("reading /dev/urandom: {err}"))
}

fn only_fields(command: &Map<String, Value>, known: &[&str]) -> Result<(), WebhookCommandError> {
    match command.keys().find(|key| !known.contains(&key.as_str())) {
        Some(unknown) => Err(WebhookCommandError::Invalid(format!(
            "unknown field {unknown:?} (this op takes {})",
            known.join(", ")
        ))),
        None => Ok(()),
    }
}

fn string_field(command: &Map<String, Value>, field: &str) -> Result<String, WebhookCommandError> {
    match command.get(field) {
        Some(Value::String(text)) => Ok(text.clone()),
        Some(_) => Err(WebhookCommandError::Invalid(format!(
            "{field:?} must be a string"
        ))),
        None => Err(WebhookCommandError::Invalid(format!(
            "{field:?} is missing"
        ))),
    }
}

fn optional_secret(command: &Map<String, Value>) -> Result<Option<String>, WebhookCommandError> {
    match command.get("secret") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(secret)) => check_secret(secret)
            .map(|()| Some(secret.clone()))
            .map_err(WebhookCommandError::Invalid),
        Some(_) => Err(WebhookCommandError::Invalid(
            "\"secret\" must be a string".into(),
        )),
    }
}

#[cfg(test)]
mod tests;
