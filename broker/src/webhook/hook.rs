//! One webhook: where it posts, which topics it takes, its signing
//! secrets, whether a 410 disabled it, and its JSON forms (what `list`
//! shows, and what `webhooks.json` and the control plane store). The layer
//! under the registry (the set of webhooks and their commands) and the
//! store (the file).

use std::sync::Mutex;

use corebus_net::TopicKey;
use corebus_shards::auth::TopicPattern;
use serde_json::{json, Map, Value};

use super::url::Destination;
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

    pub(super) fn set_disabled(&self, disabled: Option<Disabled>) -> Option<Disabled> {
        std::mem::replace(
            &mut *self.disabled.lock().unwrap_or_else(|e| e.into_inner()),
            disabled,
        )
    }

    /// Whether messages of `topic` go to this webhook.
    pub fn matches(&self, topic: &TopicKey) -> bool {
        topic.namespace() == self.namespace && self.topic.matches(topic.topic())
    }

    pub(super) fn secrets(&self) -> Secrets {
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
