//! The engine's side of webhooks: which sequenced messages leave the shard
//! for HTTP delivery, and where webhook commands go.
//!
//! The engine knows nothing about URLs, signatures or retries. On the owner
//! shard, right after a message is sequenced, it asks a [`WebhookSink`]
//! whether the topic is wanted (cached per topic until the sink's
//! [`generation`](WebhookSink::generation) changes) and, if so, hands over a
//! [`WebhookMessage`] with [`offer`](WebhookSink::offer), which must not
//! block: the broker's implementation puts it on a bounded queue drained by
//! a delivery thread, and counts what does not fit. `WEBHOOK_REQUEST`
//! commands from super-user connections go to [`WebhookSink::command`].

use std::fmt::Debug;

use bytes::Bytes;
use corebus_net::{Epoch, Seq, TopicKey};

/// One sequenced message on its way to webhooks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookMessage {
    /// Its topic.
    pub topic: TopicKey,
    /// The topic's epoch.
    pub epoch: Epoch,
    /// Its sequence number in that epoch.
    pub seq: Seq,
    /// When the owner sequenced it, Unix milliseconds.
    pub published_ms: u64,
    /// The body, as published.
    pub payload: Bytes,
}

/// Why a webhook command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookCommandError {
    /// The command is malformed or names something that does not exist
    /// (answered with `invalid_request`).
    #[error("{0}")]
    Invalid(String),
    /// This broker takes no webhook commands at all, whoever asks: it has no
    /// authentication and listens beyond loopback (`forbidden`).
    #[error("{0}")]
    Refused(String),
    /// The broker failed to carry it out, e.g. to persist it (`internal`).
    #[error("{0}")]
    Internal(String),
}

/// Where sequenced messages and webhook commands go. Shared by all shards.
pub trait WebhookSink: Debug + Send + Sync {
    /// Changes whenever the set of webhooks changes; 0 means there has never
    /// been one, and lets the engine skip everything else.
    fn generation(&self) -> u64;

    /// Whether messages of `topic` go to at least one webhook.
    fn wants(&self, topic: &TopicKey) -> bool;

    /// Hands over one message of a wanted topic. Must not block.
    fn offer(&self, message: WebhookMessage);

    /// Carries out a `WEBHOOK_REQUEST` command (a JSON object) from a
    /// super-user connection and returns the JSON result.
    fn command(&self, command: &str) -> Result<String, WebhookCommandError>;
}

/// No webhooks: nothing is wanted and commands are refused.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoWebhooks;

impl WebhookSink for NoWebhooks {
    fn generation(&self) -> u64 {
        0
    }

    fn wants(&self, _topic: &TopicKey) -> bool {
        false
    }

    fn offer(&self, _message: WebhookMessage) {}

    fn command(&self, _command: &str) -> Result<String, WebhookCommandError> {
        Err(WebhookCommandError::Invalid(
            "this broker does not run webhooks".into(),
        ))
    }
}
