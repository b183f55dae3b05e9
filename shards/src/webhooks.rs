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

use corebus_net::{Body, Epoch, Seq, TopicKey};

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
    /// The body, format byte and payload, as published.
    pub body: Body,
    /// For a while after the topic was taken over from another node with
    /// its state (a planned move): that node's client address. Its
    /// webhooks deliver what it sequenced; these wait for that.
    pub moved_from: Option<std::net::SocketAddr>,
}

/// Why a webhook or cluster command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
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
    /// The cluster's control plane cannot agree on it now (no leader, or
    /// this node is cut off from a majority): it had no effect
    /// (`unavailable`).
    #[error("{0}")]
    Unavailable(String),
}

/// Why a webhook command was refused.
pub type WebhookCommandError = CommandError;

/// The result of a webhook or cluster command: its JSON, or why not.
pub type CommandResult = Result<String, CommandError>;

/// The answer to a webhook or cluster command: at once, or later from
/// another thread (a cluster's control plane), without the shard waiting
/// for it.
#[derive(Debug)]
pub enum CommandAnswer {
    /// Carried out already.
    Now(CommandResult),
    /// Sent when it has been carried out.
    Later(flume::Receiver<CommandResult>),
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
    /// super-user connection: the JSON result, now or later. Must not
    /// block for long (a disk write at most).
    fn command(&self, command: &str) -> CommandAnswer;
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

    fn command(&self, _command: &str) -> CommandAnswer {
        CommandAnswer::Now(Err(WebhookCommandError::Invalid(
            "this broker does not run webhooks".into(),
        )))
    }
}
