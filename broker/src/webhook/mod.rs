//! Webhooks: signed HTTP POSTs of a topic's messages to stateless consumers.
//!
//! The owner shard of a topic hands each sequenced message of a topic some
//! webhook wants to [`Webhooks::offer`], which only tries to put it on a
//! bounded queue: publishing never waits for HTTP. One delivery thread
//! (`corebus-webhooks`, a single-threaded tokio runtime) routes messages to a
//! task per webhook, each with its own bounded queue, one request in flight
//! and retries with exponential backoff, so a slow or dead endpoint delays
//! only its own webhook. An endpoint that answers 410 Gone disables its
//! webhook until `enable`. Requests are signed with HMAC-SHA256 over the
//! timestamp and the body ([`sign`]). What cannot be delivered is dropped,
//! counted per webhook and reason, and logged once per burst.
//!
//! See `docs/webhooks.md`.

mod config;
mod deliver;
pub mod hook;
pub mod http;
pub mod network;
pub mod registry;
mod retry_after;
pub mod store;
pub mod url;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use corebus_net::{PayloadFormat, TopicKey};
use corebus_shards::auth::unix_now_ms;
use corebus_shards::{CommandAnswer, WebhookCommandError, WebhookMessage, WebhookSink};
use hmac::{Hmac, Mac};
use sha2::Sha256;
use tokio::sync::Notify;
use tracing::warn;

pub use config::from_table;
pub use hook::{Hook, Source};
pub use registry::{Registry, RegistryPolicy};

/// The signature header's name.
pub const SIGNATURE_HEADER: &str = "Corebus-Signature";

/// Delivery limits.
#[derive(Debug, Clone)]
pub struct DeliverySettings {
    /// Messages waiting per webhook; more are dropped (`queue_full`).
    pub queue: usize,
    /// Longest one request may take, connecting included.
    pub timeout: Duration,
    /// Retries after the first attempt of a message.
    pub retries: u32,
    /// Delay before the first retry; doubled for each next one.
    pub backoff: Duration,
    /// Longest delay between retries.
    pub max_backoff: Duration,
    /// Verifies https destinations.
    pub tls: Arc<rustls::ClientConfig>,
}

/// Why a message was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The shards' hand-off queue to the delivery thread was full.
    Handoff,
    /// The webhook's queue was full.
    QueueFull,
    /// The endpoint answered 3xx or 4xx other than 408, 410 and 429 (not
    /// retried; redirects are not followed).
    Rejected,
    /// Every retry failed (timeouts, connection errors, 408, 429, 5xx).
    RetriesExhausted,
    /// The destination is not in the allow-list (it was, when it was stored).
    NotAllowed,
    /// The webhook is disabled: its endpoint answered 410 Gone (that
    /// message included), and it has not been enabled since.
    Disabled,
}

impl DropReason {
    /// Every reason, in metrics order.
    pub const ALL: [DropReason; 6] = [
        DropReason::Handoff,
        DropReason::QueueFull,
        DropReason::Rejected,
        DropReason::RetriesExhausted,
        DropReason::NotAllowed,
        DropReason::Disabled,
    ];

    /// The metrics label.
    pub fn name(self) -> &'static str {
        match self {
            DropReason::Handoff => "handoff_full",
            DropReason::QueueFull => "queue_full",
            DropReason::Rejected => "rejected",
            DropReason::RetriesExhausted => "retries_exhausted",
            DropReason::NotAllowed => "not_allowed",
            DropReason::Disabled => "disabled",
        }
    }
}

/// One webhook's counters.
#[derive(Debug, Default)]
pub struct HookStats {
    /// Messages delivered (a 2xx answer).
    pub delivered: AtomicU64,
    /// Requests sent, retries included.
    pub requests: AtomicU64,
    /// Retries.
    pub retries: AtomicU64,
    /// Messages waiting in the webhook's queue.
    pub queued: AtomicU64,
    /// Times an endpoint's 410 Gone disabled the webhook.
    pub disables: AtomicU64,
    dropped: [AtomicU64; DropReason::ALL.len()],
    burst: Mutex<Option<Burst>>,
    /// The latest drop: when (Unix ms), why, and the detail logged.
    last_drop: Mutex<Option<(u64, DropReason, String)>>,
}

#[derive(Debug)]
struct Burst {
    since: Instant,
    count: u64,
}

/// How long a burst of drops is summed up before it is logged again.
const BURST_LOG_EVERY: Duration = Duration::from_secs(60);

impl HookStats {
    /// The counters as `webhook list` shows them: delivered, requests,
    /// retries, queued, drops by reason, and the latest drop (its time as a
    /// decimal string of Unix ms, like every 64-bit epoch value of the JSON
    /// output).
    pub fn to_json(&self) -> serde_json::Value {
        let read = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let dropped: serde_json::Map<String, serde_json::Value> = DropReason::ALL
            .iter()
            .filter(|reason| **reason != DropReason::Handoff)
            .map(|reason| (reason.name().to_string(), self.dropped(*reason).into()))
            .collect();
        let last = self.last_drop.lock().unwrap_or_else(|e| e.into_inner());
        serde_json::json!({
            "delivered": read(&self.delivered),
            "requests": read(&self.requests),
            "retries": read(&self.retries),
            "queued": read(&self.queued),
            "dropped": dropped,
            "last_drop": last.as_ref().map(|(at_ms, reason, detail)| serde_json::json!({
                "at_ms": at_ms.to_string(),
                "reason": reason.name(),
                "detail": detail,
            })),
        })
    }

    /// Messages dropped for `reason`.
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.dropped[reason as usize].load(Ordering::Relaxed)
    }

    /// Counts one dropped message and logs the first of a burst (and a
    /// summary every minute while it lasts).
    pub fn drop_one(&self, id: &str, reason: DropReason, detail: &str) {
        self.dropped[reason as usize].fetch_add(1, Ordering::Relaxed);
        *self.last_drop.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((unix_now_ms(), reason, detail.to_string()));
        let mut burst = self.burst.lock().unwrap_or_else(|e| e.into_inner());
        match burst.as_mut() {
            None => {
                warn!(webhook = id, reason = reason.name(), detail, "webhook dropping messages; further drops are counted (corebus_webhook_dropped_total) until a delivery succeeds");
                *burst = Some(Burst {
                    since: Instant::now(),
                    count: 1,
                });
            }
            Some(open) => {
                open.count += 1;
                if open.since.elapsed() >= BURST_LOG_EVERY {
                    warn!(
                        webhook = id,
                        reason = reason.name(),
                        detail,
                        dropped = open.count,
                        "webhook still dropping messages"
                    );
                    open.since = Instant::now();
                    open.count = 0;
                }
            }
        }
    }

    /// Counts one delivery; ends a burst of drops with a summary.
    pub fn delivered_one(&self, id: &str) {
        self.delivered.fetch_add(1, Ordering::Relaxed);
        let mut burst = self.burst.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(ended) = burst.take() {
            warn!(
                webhook = id,
                dropped = ended.count,
                "webhook delivering again after dropping messages"
            );
        }
    }
}

/// A cluster's control plane as the webhooks use it (implemented by
/// `control::ControlHandle`, which this module does not know): it carries
/// out the commands on every node, records a 410's disable of a run-time
/// webhook, and asks another node what it still holds of a topic.
pub trait Agreement: std::fmt::Debug + Send + Sync + 'static {
    /// Carries out a webhook command; its result goes to `done`.
    fn command(&self, command: String, done: flume::Sender<Result<String, WebhookCommandError>>);

    /// Records that run-time webhook `id` was disabled at `at_ms` (Unix
    /// milliseconds) because of `detail`.
    fn disable(&self, id: String, at_ms: u64, detail: String);

    /// How many webhook messages of `topic` the node whose client address
    /// is `node` still holds; `None` when it cannot be asked (gone).
    fn pending_at(
        &self,
        node: std::net::SocketAddr,
        topic: TopicKey,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Option<u64>> + Send>>;
}

/// One webhook's counters at one instant, for a metrics scrape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookFigures {
    /// The webhook's id.
    pub id: String,
    /// Messages delivered (2xx).
    pub delivered: u64,
    /// HTTP requests sent, retries included.
    pub requests: u64,
    /// Requests that were retries.
    pub retries: u64,
    /// Messages waiting in its queue.
    pub queued: u64,
    /// Whether a 410 Gone disabled it.
    pub disabled: bool,
    /// Times a 410 Gone disabled it.
    pub disables: u64,
    /// Messages dropped, in the order of [`DropReason::ALL`].
    pub dropped: [u64; DropReason::ALL.len()],
}

/// Every webhook's counters at one instant, for a metrics scrape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsSnapshot {
    /// Per webhook.
    pub hooks: Vec<HookFigures>,
    /// Hand-off drops of topics that no current webhook matches.
    pub handoff_dropped: u64,
}

/// The broker's webhooks: what the shards see as their [`WebhookSink`].
#[derive(Debug)]
pub struct Webhooks {
    registry: Arc<Registry>,
    /// To the delivery thread: a flume channel, as every hand-off from the
    /// shards to a thread of the broker's (`try_send` never blocks a shard).
    intake: flume::Sender<WebhookMessage>,
    changed: Arc<Notify>,
    /// Drops at the hand-off for topics no current webhook matches any more.
    handoff: HookStats,
    /// Why commands are refused on this broker, if they are.
    commands_refused: Option<String>,
    /// In a cluster: the control plane that carries the commands out.
    control: OnceLock<Arc<dyn Agreement>>,
    /// Messages offered and not yet delivered or dropped (each webhook's
    /// copy counts once), in all and per topic.
    pending: Arc<deliver::Pending>,
    /// In a cluster: asks another node how many of a topic's messages it
    /// still holds (for a topic taken over from it).
    ask: Arc<OnceLock<deliver::AskPending>>,
}

impl Webhooks {
    /// Starts the delivery thread for `registry`. With `refuse_commands`,
    /// every `WEBHOOK_REQUEST` is refused with that reason (`forbidden`): for
    /// a broker where every client counts as a super-user (no
    /// authentication, and not on loopback).
    pub fn start(
        registry: Registry,
        settings: DeliverySettings,
        refuse_commands: Option<String>,
    ) -> std::io::Result<Arc<Webhooks>> {
        let registry = Arc::new(registry);
        let changed = Arc::new(Notify::new());
        let (intake, receiver) = flume::bounded(settings.queue.saturating_mul(4).max(1024));
        let pending = Arc::new(deliver::Pending::default());
        let ask = Arc::new(OnceLock::new());
        deliver::spawn(
            registry.clone(),
            receiver,
            changed.clone(),
            settings,
            pending.clone(),
            ask.clone(),
        )?;
        Ok(Arc::new(Webhooks {
            registry,
            intake,
            changed,
            handoff: HookStats::default(),
            commands_refused: refuse_commands,
            control: OnceLock::new(),
            pending,
            ask,
        }))
    }

    /// The registry.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// Waits until every message offered so far has been delivered or
    /// dropped, for at most `within`; whether it was.
    pub fn wait_delivered(&self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            if self.pending.total() == 0 {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Messages offered and not yet delivered or dropped.
    pub fn outstanding(&self) -> u64 {
        self.pending.total()
    }

    /// Messages of `topic` offered and not yet delivered or dropped.
    pub fn pending_of(&self, topic: &TopicKey) -> u64 {
        self.pending.of(topic)
    }

    /// Makes the delivery thread look at the registry again (after the
    /// control plane changed it).
    pub fn notify_changed(&self) {
        self.changed.notify_one();
    }

    /// Hands commands to the cluster's control plane from now on, and
    /// records 410 disables there.
    pub fn agree_through(&self, control: Arc<dyn Agreement>) {
        let asking = control.clone();
        let _ = self
            .ask
            .set(deliver::AskPending(Box::new(move |node, topic| {
                asking.pending_at(node, topic)
            })));
        let disable = control.clone();
        self.registry
            .agree_through(registry::DisableHook(Box::new(move |id, at_ms, detail| {
                disable.disable(id, at_ms, detail)
            })));
        let _ = self.control.set(control);
    }

    /// Every webhook's counters now, for a metrics scrape.
    pub fn snapshot_metrics(&self) -> MetricsSnapshot {
        let read = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        MetricsSnapshot {
            hooks: self
                .registry
                .snapshot()
                .iter()
                .map(|hook| {
                    let stats = &hook.stats;
                    HookFigures {
                        id: hook.id.clone(),
                        delivered: read(&stats.delivered),
                        requests: read(&stats.requests),
                        retries: read(&stats.retries),
                        queued: read(&stats.queued),
                        disabled: hook.disabled().is_some(),
                        disables: read(&stats.disables),
                        dropped: DropReason::ALL.map(|reason| stats.dropped(reason)),
                    }
                })
                .collect(),
            handoff_dropped: self.handoff.dropped(DropReason::Handoff),
        }
    }
}

impl WebhookSink for Webhooks {
    fn generation(&self) -> u64 {
        self.registry.generation()
    }

    fn wants(&self, topic: &TopicKey) -> bool {
        self.registry
            .snapshot()
            .iter()
            .any(|hook| hook.matches(topic))
    }

    fn offer(&self, message: WebhookMessage) {
        // Counted before it can be routed (and uncounted) on the other
        // thread.
        self.pending.add(&message.topic, 1);
        let Err(err) = self.intake.try_send(message) else {
            return;
        };
        let (message, detail) = match err {
            flume::TrySendError::Full(message) => {
                (message, "the delivery thread's hand-off queue is full")
            }
            flume::TrySendError::Disconnected(message) => {
                (message, "the delivery thread has stopped")
            }
        };
        self.pending.sub(&message.topic, 1);
        let mut counted = false;
        for hook in self
            .registry
            .snapshot()
            .iter()
            .filter(|h| h.matches(&message.topic))
        {
            hook.stats.drop_one(&hook.id, DropReason::Handoff, detail);
            counted = true;
        }
        if !counted {
            self.handoff.drop_one("-", DropReason::Handoff, detail);
        }
    }

    fn command(&self, command: &str) -> CommandAnswer {
        if let Some(reason) = &self.commands_refused {
            return CommandAnswer::Now(Err(WebhookCommandError::Refused(reason.clone())));
        }
        if let Some(control) = self.control.get() {
            let (done, answer) = flume::bounded(1);
            control.command(command.to_string(), done);
            return CommandAnswer::Later(answer);
        }
        let result = self.registry.command(command);
        if result.is_ok() {
            self.changed.notify_one();
        }
        CommandAnswer::Now(result)
    }
}

/// Most bytes a compressed payload is decompressed to for a webhook; one
/// that would be larger (or is not valid zstd) is delivered compressed.
pub const MAX_DECOMPRESSED: usize = 16 << 20;

/// The body POSTed for one message: a JSON object (see `docs/webhooks.md`).
/// A payload its publisher compressed is delivered decompressed (here, on
/// the delivery thread, never on a shard), so that a receiver needs no zstd.
pub fn body(webhook: &str, message: &WebhookMessage) -> Vec<u8> {
    let text_or_base64 = |payload: &[u8]| match std::str::from_utf8(payload) {
        Ok(text) => ("utf8", text.to_string()),
        Err(_) => ("base64", crate::output::base64(payload)),
    };
    let payload = message.body.payload();
    let (encoding, payload) = match message.body.format() {
        PayloadFormat::Plain => text_or_base64(&payload),
        PayloadFormat::Zstd => match corebus_client::decompress(&payload, MAX_DECOMPRESSED) {
            Ok(plain) => text_or_base64(&plain),
            Err(_) => ("zstd", crate::output::base64(&payload)),
        },
    };
    let mut json = serde_json::json!({
        "webhook": webhook,
        "namespace": message.topic.namespace(),
        "topic": message.topic.topic(),
        "epoch": message.epoch.to_string(),
        "seq": message.seq,
        "published_ms": message.published_ms,
        "encoding": encoding,
        "payload": payload,
    });
    if let Some(headers) = crate::output::headers_json(&message.body.headers()) {
        json["headers"] = headers;
    }
    json.to_string().into_bytes()
}

/// The `Corebus-Signature` value: `t=<unix seconds>` and one
/// `v1=<hex HMAC-SHA256 of "<t>." + body>` per secret.
pub fn sign(secrets: &[String], timestamp: u64, body: &[u8]) -> String {
    let mut header = format!("t={timestamp}");
    for secret in secrets {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        header.push_str(",v1=");
        header.push_str(&data_encoding::HEXLOWER.encode(&mac.finalize().into_bytes()));
    }
    header
}

/// The TLS client configuration for https destinations: the system's roots
/// plus the CA certificates of `extra_ca` (a PEM file), if given.
pub fn client_tls(extra_ca: Option<&std::path::Path>) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    client_tls_for("webhook_ca", extra_ca)
}

/// [`client_tls`] for the setting `setting` (named in its errors): the
/// system's roots, plus the certificates of `extra_ca`.
pub fn client_tls_for(
    setting: &str,
    extra_ca: Option<&std::path::Path>,
) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    use anyhow::Context;
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    if let Some(path) = extra_ca {
        let mut added = 0;
        for cert in CertificateDer::pem_file_iter(path)
            .with_context(|| format!("{setting}: cannot read {}", path.display()))?
        {
            let cert = cert.with_context(|| format!("{setting}: {} is not PEM", path.display()))?;
            roots.add(cert).with_context(|| {
                format!("{setting}: a certificate in {} is unusable", path.display())
            })?;
            added += 1;
        }
        if added == 0 {
            anyhow::bail!("{setting}: {} holds no CERTIFICATE block", path.display());
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .context("TLS versions")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;
    use corebus_net::Body;

    #[test]
    fn signatures_are_hmac_sha256_over_timestamp_dot_body() {
        // Reference value computed independently:
        // python3 -c 'import hmac,hashlib;print(hmac.new(b"whsec_test-secret-0123456789",b"1700000000.{}",hashlib.sha256).hexdigest())'
        let header = sign(
            &["whsec_test-secret-0123456789".into()],
            1_700_000_000,
            b"{}",
        );
        assert_eq!(
            header,
            "t=1700000000,v1=cbc489378d150642b8b776c344f53271a6f3ff9a6f9c6a31822aaa50b2b635c5"
        );
        let two = sign(&["a".repeat(24), "b".repeat(24)], 5, b"x");
        assert_eq!(two.matches(",v1=").count(), 2);
    }

    #[test]
    fn bodies_carry_text_or_base64() {
        let message = |payload: &'static [u8]| WebhookMessage {
            topic: TopicKey::from_strs("app", "orders/1").expect("valid"),
            epoch: u64::MAX,
            seq: 7,
            published_ms: 1_700_000_000_123,
            body: Body::plain(payload),
            moved_from: None,
        };
        let text: serde_json::Value =
            serde_json::from_slice(&body("wh-1", &message(b"hi \"there\""))).expect("JSON");
        assert_eq!(text["encoding"], "utf8");
        assert_eq!(text["payload"], "hi \"there\"");
        assert_eq!(text["epoch"], u64::MAX.to_string());
        assert_eq!(
            (text["seq"].as_u64(), text["topic"].as_str()),
            (Some(7), Some("orders/1"))
        );
        let binary: serde_json::Value =
            serde_json::from_slice(&body("wh-1", &message(&[0xff, 0x00]))).expect("JSON");
        assert_eq!(
            (binary["encoding"].as_str(), binary["payload"].as_str()),
            (Some("base64"), Some("/wA="))
        );
    }

    #[test]
    fn a_messages_headers_are_posted_with_it() {
        let headers = corebus_net::Headers {
            user: vec![
                ("trace".into(), "4bf9".into()),
                ("trace".into(), "2".into()),
            ],
            content_type: Some("text/plain".into()),
            response_topic: Some("replies/1".into()),
            correlation_data: Some(bytes::Bytes::from_static(&[0xff, 1])),
            utf8_payload: true,
            expires_at_ms: Some(1_700_000_060_000),
            ..corebus_net::Headers::default()
        };
        let message = WebhookMessage {
            topic: TopicKey::from_strs("app", "orders/1").expect("valid"),
            epoch: 3,
            seq: 1,
            published_ms: 1_700_000_000_123,
            body: Body::with_headers(corebus_net::PayloadFormat::Plain, 1, &headers, b"hi"),
            moved_from: None,
        };
        let posted: serde_json::Value =
            serde_json::from_slice(&body("wh-1", &message)).expect("JSON");
        assert_eq!(posted["payload"], "hi");
        assert_eq!(
            posted["headers"],
            serde_json::json!({
                "user": [["trace", "4bf9"], ["trace", "2"]],
                "content_type": "text/plain",
                "response_topic": "replies/1",
                "correlation_data_base64": "/wE=",
                "utf8_payload": true,
                "expires_at_ms": "1700000060000",
            })
        );
        let plain = WebhookMessage {
            body: Body::plain(b"hi"),
            ..message
        };
        let posted: serde_json::Value =
            serde_json::from_slice(&body("wh-1", &plain)).expect("JSON");
        assert!(posted.get("headers").is_none(), "none without headers");
    }

    /// A compressed payload reaches the endpoint decompressed; one that
    /// cannot be (not zstd, or over the bound) goes as published, named
    /// `zstd`, rather than not at all.
    #[test]
    fn compressed_payloads_are_delivered_decompressed_within_a_bound() {
        let message = |body: Body| WebhookMessage {
            topic: TopicKey::from_strs("app", "book").expect("valid"),
            epoch: 1,
            seq: 2,
            published_ms: 3,
            body,
            moved_from: None,
        };
        let json = r#"{"bid":100.25,"ask":100.5}"#.repeat(100);
        let compressed = zstd::bulk::compress(json.as_bytes(), 3).expect("compresses");
        let delivered: serde_json::Value = serde_json::from_slice(&body(
            "wh-1",
            &message(Body::new(PayloadFormat::Zstd, &compressed)),
        ))
        .expect("JSON");
        assert_eq!(
            (
                delivered["encoding"].as_str(),
                delivered["payload"].as_str()
            ),
            (Some("utf8"), Some(json.as_str()))
        );

        let garbage: serde_json::Value = serde_json::from_slice(&body(
            "wh-1",
            &message(Body::new(PayloadFormat::Zstd, b"not zstd")),
        ))
        .expect("JSON");
        assert_eq!(
            (garbage["encoding"].as_str(), garbage["payload"].as_str()),
            (Some("zstd"), Some("bm90IHpzdGQ="))
        );

        let bomb = zstd::bulk::compress(&vec![0u8; MAX_DECOMPRESSED + 1], 3).expect("compresses");
        assert!(bomb.len() < 4096, "a tiny payload claims over the bound");
        let refused: serde_json::Value = serde_json::from_slice(&body(
            "wh-1",
            &message(Body::new(PayloadFormat::Zstd, &bomb)),
        ))
        .expect("JSON");
        assert_eq!(refused["encoding"], "zstd");
        assert_eq!(
            refused["payload"].as_str().map(str::len),
            Some(crate::output::base64(&bomb).len())
        );
    }
}
