//! What the control plane's log agrees on, and how an entry changes it.
//!
//! Every node applies the same entries in the same order to a
//! [`ControlState`], so every node holds the same run-time webhooks. An
//! entry carries everything that depends on a clock or on randomness
//! (secrets, ids, times) as values chosen by the node that proposed it:
//! applying it is a pure function of the state and the entry.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// The version of the entries this build writes. An entry of a later
/// version, met during a rolling upgrade, is applied as a no-op with an
/// error logged and answered (see `docs/cluster.md`).
pub const ENTRY_VERSION: u32 = 1;

/// How many request ids are remembered for retries (the oldest go first).
pub const REMEMBERED_REQUESTS: usize = 4096;

/// One entry of the log: a versioned command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// [`ENTRY_VERSION`] when written.
    pub v: u32,
    /// The command; kept as JSON so that a node meeting a command of a
    /// later version can still read the entry (and skip it).
    pub command: Value,
}

impl Entry {
    /// The entry of `op`.
    pub fn of(op: &Op) -> Entry {
        Entry {
            v: ENTRY_VERSION,
            command: serde_json::to_value(op).unwrap_or(Value::Null),
        }
    }
}

impl std::fmt::Display for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let op = self.command.get("op").and_then(Value::as_str);
        write!(f, "v{} {}", self.v, op.unwrap_or("?"))
    }
}

/// The answer to an entry: the JSON result, or why it had no effect.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Answer(pub Result<Value, String>);

/// The commands of version 1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// Adds a run-time webhook, given in its stored form (secret included).
    WebhookAdd { request_id: String, hook: Value },
    /// Removes one.
    WebhookRemove { request_id: String, id: String },
    /// Makes `secret` the signing secret; the current one signs too until
    /// `at_ms + grace_ms`.
    WebhookRotate {
        request_id: String,
        id: String,
        secret: String,
        at_ms: u64,
        grace_ms: u64,
    },
    /// Clears a webhook's disabled state.
    WebhookEnable { id: String },
    /// Disables a webhook (its endpoint answered 410 Gone at `at_ms`).
    WebhookDisable {
        id: String,
        at_ms: u64,
        detail: String,
    },
    /// The first entry of a new cluster's log: the bootstrapping node's own
    /// run-time webhooks.
    Import { hooks: Vec<Value> },
}

/// The agreed state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ControlState {
    /// Run-time webhooks in their stored form, by id.
    pub webhooks: BTreeMap<String, Value>,
    /// Requests already carried out: request id to (op, webhook id), so a
    /// retried command is answered, not done twice.
    pub requests: VecDeque<(String, String, String)>,
}

impl ControlState {
    /// Applies one entry and returns its answer.
    pub fn apply(&mut self, entry: &Entry) -> Answer {
        if entry.v > ENTRY_VERSION {
            return Answer(Err(format!(
                "this node reads control-plane entries up to version {ENTRY_VERSION}, \
                 not {}: upgrade it",
                entry.v
            )));
        }
        let op: Op = match serde_json::from_value(entry.command.clone()) {
            Ok(op) => op,
            Err(err) => return Answer(Err(format!("an entry this node cannot read: {err}"))),
        };
        Answer(self.apply_op(op))
    }

    fn apply_op(&mut self, op: Op) -> Result<Value, String> {
        match op {
            Op::WebhookAdd { request_id, hook } => {
                if let Some(answer) = self.retried(&request_id, "add") {
                    return answer;
                }
                let id = hook
                    .get("id")
                    .and_then(Value::as_str)
                    .ok_or("the webhook has no id")?
                    .to_string();
                if self.webhooks.contains_key(&id) {
                    return Err(format!("a webhook {id:?} already exists"));
                }
                self.webhooks.insert(id.clone(), hook);
                self.remember(request_id, "add", &id);
                Ok(json!({ "id": id }))
            }
            Op::WebhookRemove { request_id, id } => {
                if let Some(answer) = self.retried(&request_id, "remove") {
                    return answer;
                }
                let removed = self
                    .webhooks
                    .remove(&id)
                    .ok_or_else(|| format!("no webhook {id:?}"))?;
                self.remember(request_id, "remove", &id);
                Ok(json!({ "removed": removed }))
            }
            Op::WebhookRotate {
                request_id,
                id,
                secret,
                at_ms,
                grace_ms,
            } => {
                if let Some(answer) = self.retried(&request_id, "rotate") {
                    return answer;
                }
                let hook = self
                    .webhooks
                    .get_mut(&id)
                    .and_then(Value::as_object_mut)
                    .ok_or_else(|| format!("no webhook {id:?}"))?;
                let still_signing = hook
                    .get("previous_secret_expires_ms")
                    .and_then(Value::as_u64)
                    .filter(|until| at_ms < *until);
                if let Some(until) = still_signing {
                    return Err(crate::webhook::registry::still_signing(&id, until));
                }
                let current = hook.get("secret").cloned().unwrap_or(Value::Null);
                hook.insert("previous_secret".into(), current);
                hook.insert(
                    "previous_secret_expires_ms".into(),
                    json!(at_ms.saturating_add(grace_ms)),
                );
                hook.insert("secret".into(), json!(secret));
                self.remember(request_id, "rotate", &id);
                Ok(json!({ "id": id }))
            }
            Op::WebhookEnable { id } => {
                let hook = self
                    .webhooks
                    .get_mut(&id)
                    .and_then(Value::as_object_mut)
                    .ok_or_else(|| format!("no webhook {id:?}"))?;
                hook.insert("disabled".into(), Value::Null);
                Ok(json!({ "id": id }))
            }
            Op::WebhookDisable { id, at_ms, detail } => {
                let hook = self
                    .webhooks
                    .get_mut(&id)
                    .and_then(Value::as_object_mut)
                    .ok_or_else(|| format!("no webhook {id:?}"))?;
                // The stored form's: Unix ms as a decimal string.
                hook.insert(
                    "disabled".into(),
                    json!({ "at_ms": at_ms.to_string(), "detail": detail }),
                );
                Ok(json!({ "id": id }))
            }
            Op::Import { hooks } => {
                let mut imported = 0;
                for hook in hooks {
                    let Some(id) = hook.get("id").and_then(Value::as_str) else {
                        continue;
                    };
                    if !self.webhooks.contains_key(id) {
                        self.webhooks.insert(id.to_string(), hook);
                        imported += 1;
                    }
                }
                Ok(json!({ "imported": imported }))
            }
        }
    }

    /// The answer to a request carried out before: the webhook as it is
    /// now (for an add or a rotate, with the secret it signs with).
    fn retried(&self, request_id: &str, op: &str) -> Option<Result<Value, String>> {
        let (_, done, id) = self.requests.iter().find(|(r, ..)| r == request_id)?;
        Some(if done != op {
            Err(format!(
                "request id {request_id:?} was used by a {done} command already"
            ))
        } else if op == "remove" {
            Ok(json!({ "removed": { "id": id }, "retried": true }))
        } else if self.webhooks.contains_key(id) {
            Ok(json!({ "id": id, "retried": true }))
        } else {
            Err(format!(
                "request {request_id:?} did {op} webhook {id:?}, which has been removed since"
            ))
        })
    }

    fn remember(&mut self, request_id: String, op: &str, id: &str) {
        if request_id.is_empty() {
            return;
        }
        if self.requests.len() >= REMEMBERED_REQUESTS {
            self.requests.pop_front();
        }
        self.requests
            .push_back((request_id, op.to_string(), id.to_string()));
    }

    /// What a snapshot keeps: secrets that stopped signing before `now_ms`
    /// are left out, so that they leave the disk with the log they were in.
    pub fn compacted(&self, now_ms: u64) -> ControlState {
        let mut state = self.clone();
        for hook in state.webhooks.values_mut() {
            let Some(hook) = hook.as_object_mut() else {
                continue;
            };
            let expired = hook
                .get("previous_secret_expires_ms")
                .and_then(Value::as_u64)
                .is_some_and(|until| until <= now_ms);
            if expired {
                hook.remove("previous_secret");
                hook.remove("previous_secret_expires_ms");
            }
        }
        state
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hook(id: &str) -> Value {
        json!({ "id": id, "url": "http://127.0.0.1:9/h", "namespace": "ns", "topic": "t",
                "match": "exact", "secret": "s".repeat(32) })
    }

    fn add(request: &str, id: &str) -> Entry {
        Entry::of(&Op::WebhookAdd {
            request_id: request.into(),
            hook: hook(id),
        })
    }

    #[test]
    fn an_add_retried_with_its_request_id_is_answered_not_done_twice() {
        let mut state = ControlState::default();
        assert_eq!(state.apply(&add("r1", "a")).0, Ok(json!({ "id": "a" })));
        let again = state.apply(&add("r1", "a")).0.expect("a retry is answered");
        assert_eq!(again["retried"], json!(true));
        assert_eq!(state.webhooks.len(), 1);
        // Another request for the same id is a conflict, not a retry.
        let conflict = state.apply(&add("r2", "a")).0.unwrap_err();
        assert!(conflict.contains("already exists"), "{conflict}");
    }

    #[test]
    fn a_rotation_keeps_the_old_secret_signing_for_the_grace_period_only() {
        let mut state = ControlState::default();
        state.apply(&add("r1", "a")).0.unwrap();
        let rotate = |request: &str, at_ms| {
            Entry::of(&Op::WebhookRotate {
                request_id: request.into(),
                id: "a".into(),
                secret: "n".repeat(32),
                at_ms,
                grace_ms: 1000,
            })
        };
        state.apply(&rotate("r2", 5000)).0.unwrap();
        let stored = &state.webhooks["a"];
        assert_eq!(stored["secret"], json!("n".repeat(32)));
        assert_eq!(stored["previous_secret"], json!("s".repeat(32)));
        assert_eq!(stored["previous_secret_expires_ms"], json!(6000));
        let refused = state.apply(&rotate("r3", 5500)).0.unwrap_err();
        assert!(refused.contains("still signs until 6000"), "{refused}");
        // Compaction after the grace period drops the old secret.
        let kept = state.compacted(5999);
        assert!(kept.webhooks["a"].get("previous_secret").is_some());
        let compacted = state.compacted(6000);
        assert!(compacted.webhooks["a"].get("previous_secret").is_none());
        assert!(!serde_json::to_string(&compacted)
            .unwrap()
            .contains(&"s".repeat(32)));
    }

    #[test]
    fn an_entry_of_a_later_version_changes_nothing_and_says_why() {
        let mut state = ControlState::default();
        let mut entry = add("r1", "a");
        entry.v = ENTRY_VERSION + 1;
        let err = state.apply(&entry).0.unwrap_err();
        assert!(err.contains("upgrade"), "{err}");
        let unknown = Entry {
            v: ENTRY_VERSION,
            command: json!({ "op": "revoke_token", "jti": "x" }),
        };
        assert!(state.apply(&unknown).0.is_err());
        assert!(state.webhooks.is_empty());
    }

    #[test]
    fn remove_disable_enable_and_import() {
        let mut state = ControlState::default();
        let import = Entry::of(&Op::Import {
            hooks: vec![hook("a"), hook("b")],
        });
        assert_eq!(state.apply(&import).0, Ok(json!({ "imported": 2 })));
        let disable = Entry::of(&Op::WebhookDisable {
            id: "a".into(),
            at_ms: 7,
            detail: "410".into(),
        });
        state.apply(&disable).0.unwrap();
        assert_eq!(state.webhooks["a"]["disabled"]["at_ms"], json!("7"));
        let disabled = crate::webhook::hook::from_stored(&state.webhooks["a"])
            .expect("the registry reads what the state stores")
            .disabled()
            .expect("disabled");
        assert_eq!((disabled.at_ms, disabled.detail.as_str()), (7, "410"));
        state
            .apply(&Entry::of(&Op::WebhookEnable { id: "a".into() }))
            .0
            .unwrap();
        assert_eq!(state.webhooks["a"]["disabled"], Value::Null);
        let remove = Entry::of(&Op::WebhookRemove {
            request_id: "r9".into(),
            id: "b".into(),
        });
        state.apply(&remove).0.unwrap();
        assert!(!state.webhooks.contains_key("b"));
        assert!(state.apply(&remove).0.unwrap()["retried"] == json!(true));
        // The add that made "a" can no longer be retried once it is gone.
        state.apply(&add("r10", "c")).0.unwrap();
        state
            .apply(&Entry::of(&Op::WebhookRemove {
                request_id: "r11".into(),
                id: "c".into(),
            }))
            .0
            .unwrap();
        let err = state.apply(&add("r10", "c")).0.unwrap_err();
        assert!(err.contains("removed since"), "{err}");
    }
}
