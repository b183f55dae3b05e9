//! Managing the broker's webhooks: the typed API on [`Client`], and the JSON
//! commands and results that `WEBHOOK_REQUEST` and `WEBHOOK_REPLY` carry.
//!
//! JSON is built and read as `serde_json::Value`, so every string is escaped
//! by serde_json. Reading a result is strict about the fields this client
//! needs and ignores any others, so that a broker may add fields.

use std::fmt;

use corebus_net::ErrorCode;
use serde_json::{json, Value};

mod reply;

use reply::{parse_list, parse_one};

use crate::command::with_reason;
use crate::connection::CommandKind;
use crate::{Client, Error};

/// How a webhook's topic selects the topics whose messages it receives.
///
/// ```
/// use corebus_client::{WebhookMatch, WebhookSpec};
///
/// // orders/eu, orders/us, ...: every topic under orders/.
/// let all = WebhookSpec::new("https://hooks.example/o", "shop", "orders/", WebhookMatch::Prefix);
/// // Only orders/eu.
/// let one = WebhookSpec::new("https://hooks.example/o", "shop", "orders/eu", WebhookMatch::Exact);
/// assert_ne!(all.match_kind, one.match_kind);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WebhookMatch {
    /// Only the topic named exactly (`"match":"exact"` on the wire).
    Exact,
    /// Every topic whose name starts with the webhook's topic, such as
    /// `"orders/"` for `orders/eu` and `orders/us` (`"match":"prefix"`).
    Prefix,
}

impl WebhookMatch {
    /// The name on the wire: `"exact"` or `"prefix"`.
    ///
    /// ```
    /// use corebus_client::WebhookMatch;
    /// assert_eq!(WebhookMatch::Exact.as_str(), "exact");
    /// assert_eq!(WebhookMatch::Prefix.as_str(), "prefix");
    /// ```
    pub fn as_str(self) -> &'static str {
        match self {
            WebhookMatch::Exact => "exact",
            WebhookMatch::Prefix => "prefix",
        }
    }

    fn parse(text: &str) -> Option<WebhookMatch> {
        match text {
            "exact" => Some(WebhookMatch::Exact),
            "prefix" => Some(WebhookMatch::Prefix),
            _ => None,
        }
    }
}

/// Where a webhook was defined.
///
/// ```
/// use corebus_client::{Webhook, WebhookSource};
///
/// // Webhooks from the configuration file cannot be removed at run time.
/// fn removable(webhook: &Webhook) -> bool {
///     webhook.source == WebhookSource::Runtime
/// }
/// # let _ = removable;
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WebhookSource {
    /// In the broker's configuration (`"source":"config"`).
    Config,
    /// At run time, with [`Client::add_webhook`] (`"source":"runtime"`).
    Runtime,
}

impl WebhookSource {
    /// The name on the wire: `"config"` or `"runtime"`.
    ///
    /// ```
    /// use corebus_client::WebhookSource;
    /// assert_eq!(WebhookSource::Config.as_str(), "config");
    /// assert_eq!(WebhookSource::Runtime.as_str(), "runtime");
    /// ```
    pub fn as_str(self) -> &'static str {
        match self {
            WebhookSource::Config => "config",
            WebhookSource::Runtime => "runtime",
        }
    }

    fn parse(text: &str) -> Option<WebhookSource> {
        match text {
            "config" => Some(WebhookSource::Config),
            "runtime" => Some(WebhookSource::Runtime),
            _ => None,
        }
    }
}

/// A webhook to add with [`Client::add_webhook`].
///
/// Its `Debug` output redacts the secret.
///
/// ```
/// use corebus_client::{WebhookMatch, WebhookSpec};
/// let spec = WebhookSpec::new("https://hooks.example/orders", "shop", "orders/", WebhookMatch::Prefix)
///     .with_secret("s3cr3t");
/// assert!(!format!("{spec:?}").contains("s3cr3t"));
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookSpec {
    /// Where the broker POSTs the messages (it must be on the broker's
    /// allow-list, or the broker refuses with `invalid_request`).
    pub url: String,
    /// The namespace of the topics.
    pub namespace: String,
    /// The topic, or with [`WebhookMatch::Prefix`] the topic prefix.
    pub topic: String,
    /// How [`topic`](Self::topic) selects topics.
    pub match_kind: WebhookMatch,
    /// The secret that signs the broker's requests; `None` lets the broker
    /// generate one (returned in [`Webhook::secret`]).
    pub secret: Option<String>,
    /// Makes the add idempotent in a cluster: an add retried with the same
    /// request id is answered as the first one was, not done twice. `None`:
    /// [`Client::add_webhook`] makes one for its own retries.
    pub request_id: Option<String>,
}

impl WebhookSpec {
    /// A webhook without a secret of its own: the broker generates one.
    ///
    /// ```
    /// use corebus_client::{WebhookMatch, WebhookSpec};
    /// let spec = WebhookSpec::new("https://hooks.example/orders", "shop", "orders", WebhookMatch::Exact);
    /// assert_eq!((spec.secret, spec.request_id), (None, None));
    /// ```
    pub fn new(
        url: impl Into<String>,
        namespace: impl Into<String>,
        topic: impl Into<String>,
        match_kind: WebhookMatch,
    ) -> WebhookSpec {
        WebhookSpec {
            url: url.into(),
            namespace: namespace.into(),
            topic: topic.into(),
            match_kind,
            secret: None,
            request_id: None,
        }
    }

    /// Sets the request id that makes the add idempotent (1 to 64 letters,
    /// digits, `-`, `_` or `.`): a program that lost the answer (its
    /// connection broke) adds again with the same id and gets the first
    /// answer, secret included.
    ///
    /// ```
    /// use corebus_client::{WebhookMatch, WebhookSpec};
    /// let spec = WebhookSpec::new("https://hooks.example/o", "shop", "orders", WebhookMatch::Exact)
    ///     .with_request_id("deploy-42-orders-hook");
    /// assert_eq!(spec.request_id.as_deref(), Some("deploy-42-orders-hook"));
    /// ```
    pub fn with_request_id(mut self, request_id: impl Into<String>) -> WebhookSpec {
        self.request_id = Some(request_id.into());
        self
    }

    /// Sets the secret that signs the broker's requests.
    ///
    /// ```
    /// use corebus_client::{WebhookMatch, WebhookSpec};
    /// let spec = WebhookSpec::new("https://hooks.example/orders", "shop", "orders", WebhookMatch::Exact)
    ///     .with_secret("a shared secret the receiver knows");
    /// assert!(spec.secret.is_some());
    /// ```
    pub fn with_secret(mut self, secret: impl Into<String>) -> WebhookSpec {
        self.secret = Some(secret.into());
        self
    }
}

impl fmt::Debug for WebhookSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookSpec")
            .field("url", &self.url)
            .field("namespace", &self.namespace)
            .field("topic", &self.topic)
            .field("match_kind", &self.match_kind)
            .field("secret", &Redacted(&self.secret))
            .field("request_id", &self.request_id)
            .finish()
    }
}

/// A webhook as the broker reports it.
///
/// Its `Debug` output redacts the secret.
///
/// ```
/// use corebus_client::{Webhook, WebhookMatch};
///
/// // What a monitoring job might print for each webhook it lists.
/// fn describe(webhook: &Webhook) -> String {
///     let selects = match webhook.match_kind {
///         WebhookMatch::Exact => "topic",
///         WebhookMatch::Prefix => "topics under",
///     };
///     let state = match &webhook.disabled {
///         Some(disabled) => format!("disabled: {}", disabled.detail),
///         None => "enabled".to_string(),
///     };
///     format!("{} -> {} ({selects} {}/{}; {state})",
///         webhook.id, webhook.url, webhook.namespace, webhook.topic)
/// }
/// # let _ = describe;
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Webhook {
    /// The broker's id for it, for [`Client::remove_webhook`] and
    /// [`Client::rotate_webhook_secret`].
    pub id: String,
    /// Where the broker POSTs the messages.
    pub url: String,
    /// The namespace of the topics.
    pub namespace: String,
    /// The topic, or with [`WebhookMatch::Prefix`] the topic prefix.
    pub topic: String,
    /// How [`topic`](Self::topic) selects topics.
    pub match_kind: WebhookMatch,
    /// Where it was defined.
    pub source: WebhookSource,
    /// The secret that signs the broker's requests. The broker reveals it
    /// only in answer to [`Client::add_webhook`] and
    /// [`Client::rotate_webhook_secret`] (where it is always `Some`);
    /// `None` elsewhere.
    pub secret: Option<String>,
    /// Until when (Unix time in milliseconds) the secret replaced by the last
    /// rotation still signs requests alongside the new one; `None` when no
    /// previous secret is in use.
    pub previous_secret_expires_ms: Option<u64>,
    /// How delivery has gone since the broker started; `None` from a broker
    /// that does not report it.
    pub delivery: Option<WebhookDelivery>,
    /// `Some` while the webhook is disabled (its endpoint answered 410 Gone)
    /// and delivers nothing, until [`Client::enable_webhook`].
    pub disabled: Option<WebhookDisabled>,
}

/// Why and since when a webhook is disabled.
///
/// ```
/// use corebus_client::WebhookDisabled;
///
/// let disabled = WebhookDisabled {
///     at_ms: 1_795_435_033_123,
///     detail: "http://hooks.example.com:80 answered 410 Gone".into(),
/// };
/// assert!(disabled.detail.contains("410"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookDisabled {
    /// Since when, in Unix milliseconds.
    pub at_ms: u64,
    /// What the broker logged when it disabled the webhook.
    pub detail: String,
}

/// A webhook's delivery counters since the broker started, as
/// [`Client::list_webhooks`] reports them.
///
/// ```
/// use corebus_client::WebhookDelivery;
///
/// let delivery = WebhookDelivery::default();
/// let lost: u64 = delivery.dropped.iter().map(|(_, count)| count).sum();
/// assert_eq!((delivery.delivered, lost), (0, 0));
/// assert!(delivery.last_drop.is_none());
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WebhookDelivery {
    /// Messages delivered (answered 2xx).
    pub delivered: u64,
    /// Requests sent, retries included.
    pub requests: u64,
    /// Requests that were retries.
    pub retries: u64,
    /// Messages waiting in the webhook's queue.
    pub queued: u64,
    /// Messages dropped, per reason (`queue_full`, `rejected`,
    /// `retries_exhausted`, `not_allowed`, `disabled`), in the broker's order.
    pub dropped: Vec<(String, u64)>,
    /// The latest message dropped, if any.
    pub last_drop: Option<WebhookDrop>,
}

/// Why and when a webhook last dropped a message.
///
/// ```
/// use corebus_client::WebhookDrop;
///
/// let drop = WebhookDrop {
///     at_ms: 1_795_435_033_123,
///     reason: "retries_exhausted".into(),
///     detail: "http://hooks.example.com answered 503; gave up after 3 retries".into(),
/// };
/// assert_eq!(drop.reason, "retries_exhausted");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookDrop {
    /// When, in Unix milliseconds.
    pub at_ms: u64,
    /// Why: the reason's name, as in the `reason` label of
    /// `corebus_webhook_dropped_total`.
    pub reason: String,
    /// What the broker logged.
    pub detail: String,
}

impl fmt::Debug for Webhook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Webhook")
            .field("id", &self.id)
            .field("url", &self.url)
            .field("namespace", &self.namespace)
            .field("topic", &self.topic)
            .field("match_kind", &self.match_kind)
            .field("source", &self.source)
            .field("secret", &Redacted(&self.secret))
            .field(
                "previous_secret_expires_ms",
                &self.previous_secret_expires_ms,
            )
            .field("delivery", &self.delivery)
            .field("disabled", &self.disabled)
            .finish()
    }
}

/// Shows whether a secret is set, never the secret.
struct Redacted<'a>(&'a Option<String>);

impl fmt::Debug for Redacted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(_) => f.write_str("Some(<redacted>)"),
            None => f.write_str("None"),
        }
    }
}

/// Webhook management. Each call sends one `WEBHOOK_REQUEST` and waits for
/// its answer within [`ClientConfig::request_timeout`](crate::ClientConfig::request_timeout)
/// (after waiting, while the client reconnects, up to the same time for the
/// new connection), like [`Client::ping`].
///
/// Errors common to all of them:
/// - [`Error::Server`] with code [`Forbidden`](crate::ErrorCode::Forbidden)
///   when the client's credentials are not a super-user's, with
///   [`InvalidRequest`](crate::ErrorCode::InvalidRequest) for a command the
///   broker refuses (an unknown id, a URL outside its allow-list), and with
///   [`Internal`](crate::ErrorCode::Internal) when the broker failed;
/// - [`Error::MalformedReply`] when the answer is not what the command calls
///   for;
/// - [`Error::Timeout`], and [`Error::ConnectionLost`] when the connection
///   dropped before the answer. In these two cases the command may or may
///   not have been carried out: [`Client::list_webhooks`] tells.
///
/// The examples run against a broker embedded in the test
/// (`corebus::embedded`), open on loopback, where every client is a
/// super-user.
impl Client {
    /// Adds a webhook; returns it with its id and its secret (the one given,
    /// or the one the broker generated).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), corebus_client::Error> {
    /// # let data = std::env::temp_dir().join(format!("corebus-doc-{}", std::process::id()));
    /// # let broker = corebus::embedded::Embedded::start(&[
    /// #     "--listen", "127.0.0.1:0", "--shards", "1", "--data-dir", data.to_str().expect("UTF-8"),
    /// # ]).expect("the broker starts");
    /// # // The broker runs without authentication, on loopback: every client is a super-user.
    /// # let client = corebus_client::Client::connect(broker.local_addr()).await?;
    /// use corebus_client::{WebhookMatch, WebhookSpec};
    ///
    /// let spec = WebhookSpec::new("https://hooks.example/orders", "shop", "orders/", WebhookMatch::Prefix);
    /// let webhook = client.add_webhook(&spec).await?;
    /// let secret = webhook.secret.as_deref().expect("revealed when added");
    /// println!("added {}; the receiver checks signatures with {secret:?}", webhook.id);
    /// # broker.stop();
    /// # let _ = std::fs::remove_dir_all(&data);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn add_webhook(&self, spec: &WebhookSpec) -> Result<Webhook, Error> {
        let mut command = json!({
            "op": "add",
            "url": spec.url,
            "namespace": spec.namespace,
            "topic": spec.topic,
            "match": spec.match_kind.as_str(),
        });
        if let Some(secret) = &spec.secret {
            command["secret"] = Value::from(secret.as_str());
        }
        command["request_id"] = Value::from(spec.request_id.clone().unwrap_or_else(new_request_id));
        let result = self.changing_webhook_request(&command).await?;
        with_reason("webhook add", parse_one(&result, "webhook", true))
    }

    /// Lists every webhook, from the configuration and added at run time
    /// (without their secrets).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), corebus_client::Error> {
    /// # let data = std::env::temp_dir().join(format!("corebus-doc-{}", std::process::id()));
    /// # let broker = corebus::embedded::Embedded::start(&[
    /// #     "--listen", "127.0.0.1:0", "--shards", "1", "--data-dir", data.to_str().expect("UTF-8"),
    /// # ]).expect("the broker starts");
    /// # // The broker runs without authentication, on loopback: every client is a super-user.
    /// # let client = corebus_client::Client::connect(broker.local_addr()).await?;
    /// # use corebus_client::{WebhookMatch, WebhookSpec};
    /// # client.add_webhook(&WebhookSpec::new("https://hooks.example/o", "shop", "orders", WebhookMatch::Exact)).await?;
    /// for webhook in client.list_webhooks().await? {
    ///     let delivered = webhook.delivery.map_or(0, |delivery| delivery.delivered);
    ///     println!("{} -> {}: {delivered} delivered", webhook.id, webhook.url);
    ///     assert!(webhook.secret.is_none(), "never listed");
    /// }
    /// # broker.stop();
    /// # let _ = std::fs::remove_dir_all(&data);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn list_webhooks(&self) -> Result<Vec<Webhook>, Error> {
        let result = self.webhook_request(&json!({ "op": "list" })).await?;
        with_reason("webhook list", parse_list(&result))
    }

    /// Removes a webhook; returns it as it was (without its secret).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), corebus_client::Error> {
    /// # let data = std::env::temp_dir().join(format!("corebus-doc-{}", std::process::id()));
    /// # let broker = corebus::embedded::Embedded::start(&[
    /// #     "--listen", "127.0.0.1:0", "--shards", "1", "--data-dir", data.to_str().expect("UTF-8"),
    /// # ]).expect("the broker starts");
    /// # // The broker runs without authentication, on loopback: every client is a super-user.
    /// # let client = corebus_client::Client::connect(broker.local_addr()).await?;
    /// use corebus_client::{WebhookMatch, WebhookSource, WebhookSpec};
    ///
    /// # client.add_webhook(&WebhookSpec::new("https://hooks.example/o", "shop", "orders", WebhookMatch::Exact)).await?;
    /// // Remove every run-time webhook of the "shop" namespace.
    /// for webhook in client.list_webhooks().await? {
    ///     if webhook.namespace == "shop" && webhook.source == WebhookSource::Runtime {
    ///         client.remove_webhook(&webhook.id).await?;
    ///     }
    /// }
    /// assert!(client.list_webhooks().await?.is_empty());
    /// # broker.stop();
    /// # let _ = std::fs::remove_dir_all(&data);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn remove_webhook(&self, id: &str) -> Result<Webhook, Error> {
        let command = json!({ "op": "remove", "id": id, "request_id": new_request_id() });
        let result = self.changing_webhook_request(&command).await?;
        with_reason("webhook remove", parse_one(&result, "removed", false))
    }

    /// Gives a webhook a new secret: `secret`, or with `None` one the broker
    /// generates. Returns the webhook with the new secret. The previous
    /// secret keeps signing alongside it until
    /// [`Webhook::previous_secret_expires_ms`], so that the receiver can
    /// switch over without rejecting requests.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), corebus_client::Error> {
    /// # let data = std::env::temp_dir().join(format!("corebus-doc-{}", std::process::id()));
    /// # let broker = corebus::embedded::Embedded::start(&[
    /// #     "--listen", "127.0.0.1:0", "--shards", "1", "--data-dir", data.to_str().expect("UTF-8"),
    /// # ]).expect("the broker starts");
    /// # // The broker runs without authentication, on loopback: every client is a super-user.
    /// # let client = corebus_client::Client::connect(broker.local_addr()).await?;
    /// # use corebus_client::{WebhookMatch, WebhookSpec};
    /// # let added = client.add_webhook(&WebhookSpec::new("https://hooks.example/o", "shop", "orders", WebhookMatch::Exact)).await?;
    /// # let id = added.id.as_str();
    /// let rotated = client.rotate_webhook_secret(id, None).await?;
    /// let new_secret = rotated.secret.expect("revealed on rotation");
    /// assert_ne!(Some(new_secret.clone()), added.secret);
    /// // The old secret keeps signing until then, so the receiver can switch over.
    /// let until = rotated.previous_secret_expires_ms.expect("the old secret still signs");
    /// println!("give the receiver {new_secret:?} before {until} (Unix ms)");
    /// # broker.stop();
    /// # let _ = std::fs::remove_dir_all(&data);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn rotate_webhook_secret(
        &self,
        id: &str,
        secret: Option<&str>,
    ) -> Result<Webhook, Error> {
        let mut command = json!({ "op": "rotate", "id": id, "request_id": new_request_id() });
        if let Some(secret) = secret {
            command["secret"] = Value::from(secret);
        }
        let result = self.changing_webhook_request(&command).await?;
        with_reason("webhook rotate", parse_one(&result, "webhook", true))
    }

    /// Enables a webhook that its endpoint's 410 Gone disabled, so that it
    /// delivers again from the next message on (those published while it
    /// was disabled were dropped). Enabling an enabled webhook changes
    /// nothing. Returns the webhook (without its secret).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), corebus_client::Error> {
    /// # let data = std::env::temp_dir().join(format!("corebus-doc-{}", std::process::id()));
    /// # let broker = corebus::embedded::Embedded::start(&[
    /// #     "--listen", "127.0.0.1:0", "--shards", "1", "--data-dir", data.to_str().expect("UTF-8"),
    /// # ]).expect("the broker starts");
    /// # // The broker runs without authentication, on loopback: every client is a super-user.
    /// # let client = corebus_client::Client::connect(broker.local_addr()).await?;
    /// # use corebus_client::{WebhookMatch, WebhookSpec};
    /// # client.add_webhook(&WebhookSpec::new("https://hooks.example/o", "shop", "orders", WebhookMatch::Exact)).await?;
    /// for webhook in client.list_webhooks().await? {
    ///     if let Some(disabled) = &webhook.disabled {
    ///         println!("{} was disabled: {}", webhook.id, disabled.detail);
    ///     }
    ///     // Enabling an enabled webhook changes nothing.
    ///     let webhook = client.enable_webhook(&webhook.id).await?;
    ///     assert!(webhook.disabled.is_none());
    /// }
    /// # broker.stop();
    /// # let _ = std::fs::remove_dir_all(&data);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn enable_webhook(&self, id: &str) -> Result<Webhook, Error> {
        let result = self
            .webhook_request(&json!({ "op": "enable", "id": id }))
            .await?;
        with_reason("webhook enable", parse_one(&result, "webhook", false))
    }

    /// Sends a command that changes the webhooks, again with the same
    /// request id while a cluster's control plane answers `unavailable` (it
    /// is electing a leader), for up to the request timeout.
    async fn changing_webhook_request(&self, command: &Value) -> Result<String, Error> {
        let started = std::time::Instant::now();
        let patience = self.shared().request_timeout();
        loop {
            match self.webhook_request(command).await {
                Err(Error::Server {
                    code: Some(ErrorCode::Unavailable),
                    ..
                }) if started.elapsed() < patience => {
                    tokio::time::sleep(UNAVAILABLE_RETRY).await;
                }
                other => return other,
            }
        }
    }

    /// Sends one command and returns the reply's result text.
    async fn webhook_request(&self, command: &Value) -> Result<String, Error> {
        self.command_request(CommandKind::Webhook, command).await
    }
}

/// How long a changing webhook command waits before it is sent again after
/// `unavailable`.
const UNAVAILABLE_RETRY: std::time::Duration = std::time::Duration::from_millis(250);

/// A request id unique to this call: the time, the process, a counter and
/// a per-process random key, hashed.
fn new_request_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let count = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos());
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(nanos);
    hasher.write_u32(std::process::id());
    hasher.write_u64(count);
    format!("rq-{:016x}-{count:x}", hasher.finish())
}

#[cfg(test)]
mod tests;
