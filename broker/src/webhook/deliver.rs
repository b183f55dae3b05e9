//! The delivery thread: routes handed-over messages to one task per webhook
//! and runs those tasks (one request in flight each, in sequence order).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use corebus_net::TopicKey;
use corebus_shards::auth::unix_now_ms;
use corebus_shards::WebhookMessage;
use tokio::sync::{mpsc, Notify};
use tracing::{debug, error, warn};

use super::http::{Answer, Connection, PostError};
use super::{body, sign, DeliverySettings, DropReason, Hook, Registry, SIGNATURE_HEADER};

struct Worker {
    hook: Arc<Hook>,
    queue: mpsc::Sender<WebhookMessage>,
}

/// Messages offered and not yet delivered or dropped (each webhook's copy
/// counts once): in all, and per topic, for a node that took a topic over
/// and waits for this one's last deliveries of it.
#[derive(Debug, Default)]
pub struct Pending {
    total: AtomicU64,
    topics: std::sync::Mutex<HashMap<TopicKey, u64>>,
}

impl Pending {
    /// `n` more of `topic`.
    pub fn add(&self, topic: &TopicKey, n: u64) {
        if n == 0 {
            return;
        }
        self.total.fetch_add(n, Ordering::AcqRel);
        let mut topics = self.topics.lock().unwrap_or_else(|e| e.into_inner());
        *topics.entry(topic.clone()).or_default() += n;
    }

    /// `n` fewer of `topic`.
    pub fn sub(&self, topic: &TopicKey, n: u64) {
        if n == 0 {
            return;
        }
        self.total.fetch_sub(n, Ordering::AcqRel);
        let mut topics = self.topics.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = topics.get_mut(topic) {
            *count = count.saturating_sub(n);
            if *count == 0 {
                topics.remove(topic);
            }
        }
    }

    /// In all.
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Acquire)
    }

    /// Of `topic`.
    pub fn of(&self, topic: &TopicKey) -> u64 {
        let topics = self.topics.lock().unwrap_or_else(|e| e.into_inner());
        topics.get(topic).copied().unwrap_or(0)
    }
}

/// Asks the node whose client address is given how many webhook messages
/// of a topic it still holds; `None` when it cannot be asked (gone).
pub struct AskPending(pub Box<AskFn>);

/// What [`AskPending`] calls.
pub type AskFn = dyn Fn(
        std::net::SocketAddr,
        TopicKey,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Option<u64>> + Send>>
    + Send
    + Sync;

impl std::fmt::Debug for AskPending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AskPending")
    }
}

/// How long a moved topic's messages wait at most for the node it came
/// from (that node's `shutdown_deadline` and then some).
const HOLD_MAX: Duration = Duration::from_secs(30);
/// How often the node a topic came from is asked.
const HOLD_POLL: Duration = Duration::from_millis(50);

/// Starts the `corebus-webhooks` thread.
pub(super) fn spawn(
    registry: Arc<Registry>,
    intake: flume::Receiver<WebhookMessage>,
    changed: Arc<Notify>,
    settings: DeliverySettings,
    pending: Arc<Pending>,
    ask: Arc<std::sync::OnceLock<AskPending>>,
) -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("corebus-webhooks".into())
        .spawn(move || {
            runtime.block_on(dispatch(registry, intake, changed, settings, pending, ask))
        })?;
    Ok(())
}

async fn dispatch(
    registry: Arc<Registry>,
    intake: flume::Receiver<WebhookMessage>,
    changed: Arc<Notify>,
    settings: DeliverySettings,
    pending: Arc<Pending>,
    ask: Arc<std::sync::OnceLock<AskPending>>,
) {
    let settings = Arc::new(settings);
    let mut workers: HashMap<String, Worker> = HashMap::new();
    let mut seen = u64::MAX;
    // Topics taken over from another node: their messages wait here until
    // that node has delivered what it sequenced of them (order per topic
    // across the move), then go out in order.
    let mut held: HashMap<TopicKey, VecDeque<WebhookMessage>> = HashMap::new();
    let mut released: HashMap<TopicKey, std::time::Instant> = HashMap::new();
    let (release, mut releases) = mpsc::unbounded_channel::<TopicKey>();
    loop {
        let message = tokio::select! {
            message = intake.recv_async() => match message {
                Ok(message) => Some(message),
                Err(_) => return, // The broker is gone.
            },
            () = changed.notified() => None,
            Some(topic) = releases.recv() => {
                released.insert(topic.clone(), std::time::Instant::now());
                released.retain(|_, at| at.elapsed() < 2 * HOLD_MAX);
                for message in held.remove(&topic).unwrap_or_default() {
                    route(&workers, &pending, message);
                }
                None
            }
        };
        // After every wake-up, before routing: a message offered because a
        // webhook now wants its topic finds that webhook's worker.
        if registry.generation() != seen {
            seen = registry.generation();
            sync_workers(&registry, &mut workers, &settings, &pending);
        }
        let Some(message) = message else {
            continue;
        };
        if let Some(from) = message.moved_from {
            if !released.contains_key(&message.topic) {
                let waiting = held.entry(message.topic.clone()).or_default();
                if waiting.is_empty() {
                    tokio::spawn(await_previous_owner(
                        from,
                        message.topic.clone(),
                        ask.clone(),
                        release.clone(),
                    ));
                }
                if waiting.len() < settings.queue.max(1) {
                    waiting.push_back(message);
                } else {
                    for worker in workers.values().filter(|w| w.hook.matches(&message.topic)) {
                        worker.hook.stats.drop_one(
                            &worker.hook.id,
                            DropReason::QueueFull,
                            "the webhook's queue is full (webhook_queue) while its topic \
                             waits for the node it moved from",
                        );
                    }
                    pending.sub(&message.topic, 1);
                }
                continue;
            }
        }
        route(&workers, &pending, message);
    }
}

/// Puts `message` on the queue of each webhook that wants it.
fn route(workers: &HashMap<String, Worker>, pending: &Pending, message: WebhookMessage) {
    let mut routed = 0;
    for worker in workers.values().filter(|w| w.hook.matches(&message.topic)) {
        let stats = &worker.hook.stats;
        match worker.queue.try_send(message.clone()) {
            Ok(()) => {
                stats.queued.fetch_add(1, Ordering::Relaxed);
                routed += 1;
            }
            Err(_) => stats.drop_one(
                &worker.hook.id,
                DropReason::QueueFull,
                "the webhook's queue is full (webhook_queue)",
            ),
        }
    }
    // Routed: the copies in the workers' queues count now.
    pending.add(&message.topic, routed);
    pending.sub(&message.topic, 1);
}

/// Asks the node `topic` moved from until it holds none of its webhook
/// messages (or is gone, or [`HOLD_MAX`] passed), then releases the topic.
async fn await_previous_owner(
    from: std::net::SocketAddr,
    topic: TopicKey,
    ask: Arc<std::sync::OnceLock<AskPending>>,
    release: mpsc::UnboundedSender<TopicKey>,
) {
    let started = std::time::Instant::now();
    loop {
        let left = match ask.get() {
            Some(ask) => (ask.0)(from, topic.clone()).await,
            None => None,
        };
        if left.is_none_or(|left| left == 0) {
            break;
        }
        if started.elapsed() >= HOLD_MAX {
            warn!(%topic, node = %from, "the node a topic moved from still holds some of its \
                webhook messages; delivering the new owner's now (their order may mix)");
            break;
        }
        tokio::time::sleep(HOLD_POLL).await;
    }
    let _ = release.send(topic);
}

/// Starts a task for each new webhook and stops those of removed ones.
fn sync_workers(
    registry: &Arc<Registry>,
    workers: &mut HashMap<String, Worker>,
    settings: &Arc<DeliverySettings>,
    pending: &Arc<Pending>,
) {
    let hooks = registry.snapshot();
    workers.retain(|id, worker| {
        let keep = hooks.iter().any(|hook| Arc::ptr_eq(hook, &worker.hook));
        if !keep {
            // Its queue closes with the sender: the worker drops what is
            // left (each counted out of the pending ones) and ends.
            debug!(webhook = %id, "webhook removed: its queued messages are discarded");
        }
        keep
    });
    for hook in hooks.iter() {
        if workers.contains_key(&hook.id) {
            continue;
        }
        let (queue, receiver) = mpsc::channel(settings.queue.max(1));
        tokio::spawn(run_worker(
            registry.clone(),
            hook.clone(),
            receiver,
            settings.clone(),
            pending.clone(),
        ));
        workers.insert(
            hook.id.clone(),
            Worker {
                hook: hook.clone(),
                queue,
            },
        );
    }
}

async fn run_worker(
    registry: Arc<Registry>,
    hook: Arc<Hook>,
    mut queue: mpsc::Receiver<WebhookMessage>,
    settings: Arc<DeliverySettings>,
    pending: Arc<Pending>,
) {
    let mut policy = registry.policy();
    let mut connection = Connection::new(settings.tls.clone(), policy.networks.clone());
    while let Some(message) = queue.recv().await {
        hook.stats.queued.fetch_sub(1, Ordering::Relaxed);
        // Done with it however this turn ends.
        let _done = Done(&pending, &message.topic);
        if !registry.snapshot().iter().any(|h| Arc::ptr_eq(h, &hook)) {
            continue; // Removed: what it had queued is discarded.
        }
        if let Some(disabled) = hook.disabled() {
            hook.stats
                .drop_one(&hook.id, DropReason::Disabled, &disabled.detail);
            continue;
        }
        let now = registry.policy();
        if !Arc::ptr_eq(&now, &policy) {
            // A reload changed the allow-list: a new connection, checked
            // against the networks it allows now.
            connection = Connection::new(settings.tls.clone(), now.networks.clone());
            policy = now;
        }
        if let Err(reason) = policy.allow.check(&hook.destination) {
            hook.stats
                .drop_one(&hook.id, DropReason::NotAllowed, &reason);
            continue;
        }
        if let Some(Gone(detail)) = deliver(&hook, &mut connection, &settings, &message).await {
            disable(&registry, &hook, detail).await;
        }
    }
}

/// One message a worker holds, counted in the pending ones until it is
/// dropped.
struct Done<'a>(&'a Pending, &'a TopicKey);

impl Drop for Done<'_> {
    fn drop(&mut self) {
        self.0.sub(self.1, 1);
    }
}

/// The endpoint answered 410 Gone: the webhook is to be disabled.
struct Gone(String);

/// Disables `hook`, storing that off this thread's runtime (a write and two
/// fsyncs would hold up every other webhook's deliveries).
async fn disable(registry: &Arc<Registry>, hook: &Arc<Hook>, detail: String) {
    warn!(webhook = %hook.id, %detail, "webhook disabled: its endpoint answered 410 Gone; \
        its messages are dropped (reason disabled) until `corebus webhook enable`");
    hook.stats.drop_one(&hook.id, DropReason::Disabled, &detail);
    let (registry, stored) = (registry.clone(), hook.clone());
    let outcome = tokio::task::spawn_blocking(move || registry.disable(&stored, detail)).await;
    match outcome {
        Ok(Ok(())) => {}
        Ok(Err(err)) => {
            error!(webhook = %hook.id, %err, "webhook disabled, but not stored: a restart enables it again");
        }
        Err(err) => error!(webhook = %hook.id, %err, "disabling the webhook failed"),
    }
}

/// Posts one message until it is accepted, refused or out of retries;
/// `Some(Gone)` when the endpoint answered 410 (the caller disables the
/// webhook and counts the message).
async fn deliver(
    hook: &Hook,
    connection: &mut Connection,
    settings: &DeliverySettings,
    message: &WebhookMessage,
) -> Option<Gone> {
    let body = Bytes::from(body(&hook.id, message));
    let delivery = format!("{}-{}", message.epoch, message.seq);
    let mut attempt = 0u32;
    loop {
        let now_ms = unix_now_ms();
        let secrets = hook
            .secrets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .signing(now_ms);
        let headers = [
            (SIGNATURE_HEADER, sign(&secrets, now_ms / 1000, &body)),
            ("Corebus-Webhook", hook.id.clone()),
            ("Corebus-Delivery", delivery.clone()),
        ];
        hook.stats.requests.fetch_add(1, Ordering::Relaxed);
        if attempt > 0 {
            hook.stats.retries.fetch_add(1, Ordering::Relaxed);
        }
        let outcome = tokio::time::timeout(
            settings.timeout,
            connection.post(&hook.destination, &headers, &body),
        )
        .await;
        let origin = hook.destination.origin();
        // A 429's Retry-After replaces the backoff of this retry.
        let mut asked = None;
        let failure = match outcome {
            Ok(Ok(Answer { status, .. })) if (200..300).contains(&status) => {
                hook.stats.delivered_one(&hook.id);
                return None;
            }
            Ok(Ok(Answer { status: 410, .. })) => {
                return Some(Gone(format!("{origin} answered 410 Gone")));
            }
            Ok(Ok(Answer {
                status: 429,
                retry_after,
            })) => {
                asked = retry_after
                    .as_deref()
                    .and_then(|value| super::retry_after::parse(value, SystemTime::now()));
                format!("{origin} answered 429")
            }
            // Request Timeout: the receiver gave up waiting for this request;
            // senders people know retry it, and so do we.
            Ok(Ok(Answer { status: 408, .. })) => format!("{origin} answered 408"),
            Ok(Ok(Answer { status, .. })) if status < 500 => {
                let detail = format!(
                    "{origin} answered {status}; 3xx and 4xx other than 408, 410 and 429 are \
                     not retried (redirects are not followed)"
                );
                hook.stats.drop_one(&hook.id, DropReason::Rejected, &detail);
                return None;
            }
            Ok(Ok(Answer { status, .. })) => format!("{origin} answered {status}"),
            Ok(Err(PostError::Refused(reason))) => {
                hook.stats
                    .drop_one(&hook.id, DropReason::NotAllowed, &reason);
                return None;
            }
            Ok(Err(PostError::Failed(reason))) => reason,
            Err(_) => {
                connection.reset();
                format!(
                    "{origin}: no answer within {:?} (webhook_timeout)",
                    settings.timeout
                )
            }
        };
        if attempt >= settings.retries {
            let detail = format!("{failure}; gave up after {} retries", settings.retries);
            hook.stats
                .drop_one(&hook.id, DropReason::RetriesExhausted, &detail);
            return None;
        }
        // Without jitter: the receiver named the time it can take more.
        let delay = asked.map_or_else(
            || backoff(settings, attempt),
            |asked| asked.min(settings.max_backoff),
        );
        if attempt == 0 {
            warn!(webhook = %hook.id, seq = message.seq, %failure, retry_in = ?delay, "webhook delivery failed; retrying");
        } else {
            debug!(webhook = %hook.id, seq = message.seq, %failure, retry_in = ?delay, "webhook retry failed");
        }
        tokio::time::sleep(delay).await;
        attempt += 1;
    }
}

/// `backoff × 2^attempt`, at most `max_backoff`, with up to 25% jitter
/// taken off so that many webhooks failing together spread out.
fn backoff(settings: &DeliverySettings, attempt: u32) -> Duration {
    let base = settings
        .backoff
        .saturating_mul(1u32 << attempt.min(20))
        .min(settings.max_backoff);
    let jitter = (unix_now_ms().wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 40) % 1000;
    base - base.mul_f64(jitter as f64 / 4000.0)
}
