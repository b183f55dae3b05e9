//! The webhooks a broker delivers to: those of the configuration file and
//! those added at run time (persisted in the data directory), their signing
//! secrets, and the `WEBHOOK_REQUEST` commands that change them.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use anyhow::{anyhow, bail};
use corebus_net::TopicKey;
use corebus_shards::auth::{unix_now_ms, TopicPattern};
use corebus_shards::WebhookCommandError;
use serde_json::{json, Map, Value};
use tracing::{info, warn};

use super::network::NetworkPolicy;
use super::store::Store;
use super::url::{AllowList, Destination};
use super::HookStats;
use crate::auth::random_bytes;
use crate::permissions::{pattern_parts, topic_pattern};

/// Secrets shorter than this are refused.
pub const MIN_SECRET_LEN: usize = 24;
/// Longest webhook id.
const MAX_ID_LEN: usize = 64;

/// Where a webhook was defined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A `[[webhooks]]` table of the configuration file (changed there only).
    Config,
    /// Added over the protocol or with `corebus webhook add`; persisted.
    Runtime,
}

impl Source {
    fn name(self) -> &'static str {
        match self {
            Source::Config => "config",
            Source::Runtime => "runtime",
        }
    }
}

/// A webhook's signing secrets. `Debug` shows none of them.
#[derive(Clone, PartialEq, Eq)]
pub struct Secrets {
    /// Signs every request.
    pub current: String,
    /// After a rotation: also signs every request until the Unix time in
    /// milliseconds, so receivers can switch over without rejecting any.
    pub previous: Option<(String, u64)>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secrets")
            .field("current", &"<redacted>")
            .field("previous_expires_ms", &self.previous.as_ref().map(|p| p.1))
            .finish()
    }
}

impl Secrets {
    /// The secrets that sign a request at `now_ms`, current first.
    pub fn signing(&self, now_ms: u64) -> Vec<String> {
        let mut out = vec![self.current.clone()];
        if let Some((previous, until)) = &self.previous {
            if now_ms < *until {
                out.push(previous.clone());
            }
        }
        out
    }
}

/// Why and since when a webhook delivers nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disabled {
    /// When, in Unix milliseconds.
    pub at_ms: u64,
    /// What happened (the endpoint that answered 410 Gone).
    pub detail: String,
}

impl Disabled {
    fn to_json(&self) -> Value {
        json!({ "at_ms": self.at_ms.to_string(), "detail": self.detail })
    }

    fn from_json(value: &Value) -> Result<Option<Disabled>, String> {
        if value.is_null() {
            return Ok(None);
        }
        let at_ms = value["at_ms"]
            .as_str()
            .and_then(|text| text.parse().ok())
            .ok_or("\"disabled.at_ms\" is not a decimal string")?;
        let detail = value["detail"]
            .as_str()
            .ok_or("\"disabled.detail\" is not a string")?
            .to_string();
        Ok(Some(Disabled { at_ms, detail }))
    }
}

/// One webhook.
#[derive(Debug)]
pub struct Hook {
    /// Unique id.
    pub id: String,
    /// Where to POST.
    pub destination: Destination,
    /// The namespace (exact).
    pub namespace: String,
    /// The topics of the namespace.
    pub topic: TopicPattern,
    /// Where it was defined.
    pub source: Source,
    /// Its signing secrets (rotated in place).
    pub secrets: Mutex<Secrets>,
    /// Set by the delivery thread when the endpoint answers 410 Gone,
    /// cleared by the `enable` command (both under the registry's edit lock).
    disabled: Mutex<Option<Disabled>>,
    /// Delivery counters.
    pub stats: HookStats,
}

impl Hook {
    /// A webhook with fresh counters.
    pub fn new(
        id: String,
        destination: Destination,
        namespace: String,
        topic: TopicPattern,
        source: Source,
        secrets: Secrets,
    ) -> Hook {
        Hook {
            id,
            destination,
            namespace,
            topic,
            source,
            secrets: Mutex::new(secrets),
            disabled: Mutex::new(None),
            stats: HookStats::default(),
        }
    }

    /// Why the webhook is disabled, if it is.
    pub fn disabled(&self) -> Option<Disabled> {
        self.disabled
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn set_disabled(&self, disabled: Option<Disabled>) -> Option<Disabled> {
        std::mem::replace(
            &mut *self.disabled.lock().unwrap_or_else(|e| e.into_inner()),
            disabled,
        )
    }

    /// Whether messages of `topic` go to this webhook.
    pub fn matches(&self, topic: &TopicKey) -> bool {
        topic.namespace() == self.namespace && self.topic.matches(topic.topic())
    }

    fn secrets(&self) -> Secrets {
        self.secrets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The webhook as JSON for `WEBHOOK_REPLY`, with its secret when
    /// `with_secret` (after add and rotate only).
    pub fn to_json(&self, with_secret: bool) -> Value {
        let (topic, prefix) = pattern_parts(&self.topic);
        let mut object = Map::new();
        object.insert("id".into(), json!(self.id));
        object.insert("url".into(), json!(self.destination.text));
        object.insert("namespace".into(), json!(self.namespace));
        object.insert("topic".into(), json!(topic));
        object.insert(
            "match".into(),
            json!(if prefix { "prefix" } else { "exact" }),
        );
        object.insert("source".into(), json!(self.source.name()));
        object.insert(
            "disabled".into(),
            self.disabled().map_or(Value::Null, |d| d.to_json()),
        );
        object.insert("delivery".into(), self.stats.to_json());
        let secrets = self.secrets();
        if with_secret {
            object.insert("secret".into(), json!(secrets.current));
        }
        match secrets.previous {
            // A configured secret_previous signs until it leaves the file.
            Some((_, u64::MAX)) => {
                object.insert("previous_secret_expires_ms".into(), Value::Null);
            }
            Some((_, until)) => {
                object.insert("previous_secret_expires_ms".into(), json!(until));
            }
            None => {}
        }
        Value::Object(object)
    }

    /// The persisted form, with its secrets.
    pub fn to_stored(&self) -> Value {
        let secrets = self.secrets();
        self.to_stored_with(&secrets)
    }

    /// The persisted form (runtime webhooks only), with `secrets`.
    pub fn to_stored_with(&self, secrets: &Secrets) -> Value {
        let mut value = self.to_json(false);
        if let Value::Object(object) = &mut value {
            object.insert("secret".into(), json!(secrets.current));
            object.remove("previous_secret_expires_ms");
            if let Some((previous, until)) = &secrets.previous {
                object.insert("previous_secret".into(), json!(previous));
                object.insert("previous_secret_expires_ms".into(), json!(until));
            }
        }
        value
    }
}

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

/// Ids are 1 to 64 letters, digits, `-`, `_` or `.`.
pub fn check_id(id: &str) -> Result<(), String> {
    if id.is_empty()
        || id.len() > MAX_ID_LEN
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(format!(
            "webhook id {id:?} must be 1 to {MAX_ID_LEN} letters, digits, '-', '_' or '.'"
        ));
    }
    Ok(())
}

/// Secrets are at least [`MIN_SECRET_LEN`] printable ASCII characters.
pub fn check_secret(secret: &str) -> Result<(), String> {
    if secret.len() < MIN_SECRET_LEN || !secret.chars().all(|c| c.is_ascii_graphic()) {
        return Err(format!(
            "a webhook secret must be at least {MIN_SECRET_LEN} printable ASCII characters \
             without spaces (leave it out and the broker generates one)"
        ));
    }
    Ok(())
}

/// A new signing secret: `whsec_` and 32 random bytes, base64url.
pub fn generate_secret() -> std::io::Result<String> {
    Ok(format!(
        "whsec_{}",
        crate::jwt::base64url_encode(&random_bytes::<32>()?)
    ))
}

/// A fresh webhook id (`wh-` and 12 hex digits), also used for request ids.
pub fn generate_id() -> std::io::Result<String> {
    let bytes = random_bytes::<6>()?;
    Ok(format!("wh-{}", data_encoding::HEXLOWER.encode(&bytes)))
}

/// A runtime webhook read back from the data directory.
pub fn from_stored(value: &Value) -> Result<Hook, String> {
    let object = value.as_object().ok_or("not a JSON object")?;
    let text = |field: &str| {
        object
            .get(field)
            .and_then(Value::as_str)
            .map(str::to_string)
            .ok_or_else(|| format!("{field:?} is missing or not a string"))
    };
    let id = text("id")?;
    check_id(&id)?;
    let destination = Destination::parse(&text("url")?)?;
    let namespace = text("namespace")?;
    corebus_net::validate_namespace(namespace.as_bytes())
        .map_err(|err| format!("namespace: {err}"))?;
    let prefix = text("match")? == "prefix";
    let topic = topic_pattern(text("topic")?, prefix)?;
    let current = text("secret")?;
    let previous = match (
        text("previous_secret"),
        object.get("previous_secret_expires_ms"),
    ) {
        (Ok(secret), Some(until)) => Some((secret, until.as_u64().unwrap_or(0))),
        _ => None,
    };
    let secrets = Secrets { current, previous };
    let disabled = Disabled::from_json(object.get("disabled").unwrap_or(&Value::Null))?;
    let hook = Hook::new(id, destination, namespace, topic, Source::Runtime, secrets);
    hook.set_disabled(disabled);
    Ok(hook)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn registry(dir: &Path, allow: &str) -> Registry {
        Registry::new(
            Vec::new(),
            Some(Store::new(dir.to_path_buf())),
            RegistryPolicy {
                allow: AllowList::parse(allow).expect("valid"),
                networks: NetworkPolicy::parse("127.0.0.0/8").expect("valid"),
                rotation_grace: Duration::from_secs(60),
            },
        )
        .expect("registry")
    }

    fn temp_dir(name: &str) -> std::path::PathBuf {
        let dir =
            std::env::temp_dir().join(format!("corebus-registry-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    fn reply(registry: &Registry, command: Value) -> Result<Value, WebhookCommandError> {
        registry
            .command(&command.to_string())
            .map(|text| serde_json::from_str(&text).expect("replies are JSON"))
    }

    #[test]
    fn commands_add_list_rotate_remove_and_persist() {
        let dir = temp_dir("cycle");
        let first = registry(&dir, "");
        assert_eq!(first.generation(), 0);
        let added = reply(
            &first,
            json!({"op":"add","url":"http://127.0.0.1:9/hook","namespace":"app","topic":"orders/","match":"prefix"}),
        )
        .expect("added");
        let id = added["webhook"]["id"].as_str().expect("id").to_string();
        let secret = added["webhook"]["secret"]
            .as_str()
            .expect("secret")
            .to_string();
        assert!(secret.starts_with("whsec_") && secret.len() > 40);
        assert_eq!(first.generation(), 1);
        let listed = reply(&first, json!({"op":"list"})).expect("listed");
        assert_eq!(listed["webhooks"][0]["id"], json!(id));
        assert!(
            listed["webhooks"][0].get("secret").is_none(),
            "list shows no secret"
        );

        let rotated = reply(&first, json!({"op":"rotate","id":id})).expect("rotated");
        let new_secret = rotated["webhook"]["secret"].as_str().expect("secret");
        assert_ne!(new_secret, secret);
        // A second rotation within the grace would cut the first secret off.
        match reply(&first, json!({"op":"rotate","id":id})) {
            Err(WebhookCommandError::Invalid(reason)) => {
                assert!(reason.contains("previous secret still signs"), "{reason}")
            }
            other => panic!("second rotation: {other:?}"),
        }
        let hook = first.snapshot()[0].clone();
        let now = unix_now_ms();
        assert_eq!(
            hook.secrets().signing(now),
            vec![new_secret.to_string(), secret.clone()]
        );
        assert_eq!(
            hook.secrets().signing(now + 61_000),
            vec![new_secret.to_string()]
        );

        // A second registry over the same directory sees the same webhook.
        let second = registry(&dir, "");
        let again = second.snapshot();
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].secrets().current, new_secret);
        assert!(again[0].matches(&TopicKey::from_strs("app", "orders/1").expect("valid")));
        assert!(!again[0].matches(&TopicKey::from_strs("app", "other").expect("valid")));

        reply(&second, json!({"op":"remove","id":id})).expect("removed");
        assert!(registry(&dir, "").snapshot().is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_rotation_that_cannot_be_stored_changes_nothing() {
        let dir = temp_dir("unwritable");
        let registry = registry(&dir, "");
        let added = reply(
            &registry,
            json!({"op":"add","url":"http://127.0.0.1:9/","namespace":"a","topic":"t"}),
        )
        .expect("added");
        let id = added["webhook"]["id"].as_str().expect("id");
        let secret = added["webhook"]["secret"].as_str().expect("secret");
        // The data directory becomes a file: the next write fails.
        std::fs::remove_dir_all(&dir).expect("removes");
        std::fs::write(&dir, b"not a directory").expect("writes");
        let refused = reply(&registry, json!({"op":"rotate","id":id}));
        assert!(
            matches!(refused, Err(WebhookCommandError::Internal(_))),
            "{refused:?}"
        );
        let hook = registry.snapshot()[0].clone();
        assert_eq!(
            hook.secrets().signing(unix_now_ms()),
            vec![secret.to_string()]
        );
        let _ = std::fs::remove_file(&dir);
    }

    #[test]
    fn bad_commands_are_refused_with_reasons() {
        let dir = temp_dir("refusals");
        let registry = registry(&dir, "hooks.example.com");
        let refused = |command: Value, expect: &str| match reply(&registry, command.clone()) {
            Err(WebhookCommandError::Invalid(reason)) => {
                assert!(reason.contains(expect), "{command}: {reason}")
            }
            other => panic!("{command}: {other:?}"),
        };
        refused(
            json!({"op":"add","url":"http://evil.org/","namespace":"a","topic":"t"}),
            "not in webhook_allow_hosts",
        );
        refused(
            json!({"op":"add","url":"ftp://hooks.example.com/","namespace":"a","topic":"t"}),
            "not an http",
        );
        refused(
            json!({"op":"add","url":"https://hooks.example.com/","namespace":"a","topic":"t","secret":"short"}),
            "at least",
        );
        refused(
            json!({"op":"add","url":"https://hooks.example.com/","namespace":"a","topic":"t","bogus":1}),
            "unknown field",
        );
        refused(json!({"op":"remove","id":"nope"}), "no webhook");
        refused(json!({"op":"fly"}), "unknown op");
        refused(json!(["list"]), "JSON object");
        assert!(matches!(
            registry.command("{"),
            Err(WebhookCommandError::Invalid(_))
        ));
        assert!(registry.snapshot().is_empty());
        assert_eq!(registry.generation(), 0, "refusals change nothing");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
