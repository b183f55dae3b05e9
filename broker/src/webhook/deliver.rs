//! The delivery thread: routes handed-over messages to one task per webhook
//! and runs those tasks (one request in flight each, in sequence order).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use corebus_shards::auth::unix_now_ms;
use corebus_shards::WebhookMessage;
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;
use tracing::{debug, error, warn};

use super::http::{Answer, Connection, PostError};
use super::network::NetworkPolicy;
use super::{body, sign, DeliverySettings, DropReason, Hook, Registry, SIGNATURE_HEADER};

struct Worker {
    hook: Arc<Hook>,
    queue: mpsc::Sender<WebhookMessage>,
    task: JoinHandle<()>,
}

/// Starts the `corebus-webhooks` thread.
pub(super) fn spawn(
    registry: Arc<Registry>,
    intake: flume::Receiver<WebhookMessage>,
    changed: Arc<Notify>,
    settings: DeliverySettings,
    outstanding: Arc<AtomicU64>,
) -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("corebus-webhooks".into())
        .spawn(move || {
            runtime.block_on(dispatch(registry, intake, changed, settings, outstanding))
        })?;
    Ok(())
}

async fn dispatch(
    registry: Arc<Registry>,
    intake: flume::Receiver<WebhookMessage>,
    changed: Arc<Notify>,
    settings: DeliverySettings,
    outstanding: Arc<AtomicU64>,
) {
    let settings = Arc::new(settings);
    let mut workers: HashMap<String, Worker> = HashMap::new();
    let mut seen = u64::MAX;
    loop {
        let message = tokio::select! {
            message = intake.recv_async() => match message {
                Ok(message) => Some(message),
                Err(_) => return, // The broker is gone.
            },
            () = changed.notified() => None,
        };
        // After every wake-up, before routing: a message offered because a
        // webhook now wants its topic finds that webhook's worker.
        if registry.generation() != seen {
            seen = registry.generation();
            sync_workers(&registry, &mut workers, &settings, &outstanding);
        }
        let Some(message) = message else {
            continue;
        };
        for worker in workers.values().filter(|w| w.hook.matches(&message.topic)) {
            let stats = &worker.hook.stats;
            match worker.queue.try_send(message.clone()) {
                Ok(()) => {
                    stats.queued.fetch_add(1, Ordering::Relaxed);
                    outstanding.fetch_add(1, Ordering::AcqRel);
                }
                Err(_) => stats.drop_one(
                    &worker.hook.id,
                    DropReason::QueueFull,
                    "the webhook's queue is full (webhook_queue)",
                ),
            }
        }
        // Routed: the copies in the workers' queues count now.
        outstanding.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Starts a task for each new webhook and stops those of removed ones.
fn sync_workers(
    registry: &Arc<Registry>,
    workers: &mut HashMap<String, Worker>,
    settings: &Arc<DeliverySettings>,
    outstanding: &Arc<AtomicU64>,
) {
    let hooks = registry.snapshot();
    workers.retain(|id, worker| {
        let keep = hooks.iter().any(|hook| Arc::ptr_eq(hook, &worker.hook));
        if !keep {
            debug!(webhook = %id, "webhook removed: its queued messages are discarded");
            // Nothing runs on this thread between here and the abort: the
            // queue holds exactly these (the one in flight counts itself).
            let queued = worker.queue.max_capacity() - worker.queue.capacity();
            outstanding.fetch_sub(queued as u64, Ordering::AcqRel);
            worker.task.abort();
        }
        keep
    });
    for hook in hooks.iter() {
        if workers.contains_key(&hook.id) {
            continue;
        }
        let (queue, receiver) = mpsc::channel(settings.queue.max(1));
        let task = tokio::spawn(run_worker(
            registry.clone(),
            hook.clone(),
            receiver,
            settings.clone(),
            registry.policy().allow.clone(),
            registry.policy().networks.clone(),
            outstanding.clone(),
        ));
        workers.insert(
            hook.id.clone(),
            Worker {
                hook: hook.clone(),
                queue,
                task,
            },
        );
    }
}

async fn run_worker(
    registry: Arc<Registry>,
    hook: Arc<Hook>,
    mut queue: mpsc::Receiver<WebhookMessage>,
    settings: Arc<DeliverySettings>,
    allow: super::url::AllowList,
    networks: NetworkPolicy,
    outstanding: Arc<AtomicU64>,
) {
    let mut connection = Connection::new(settings.tls.clone(), networks);
    while let Some(message) = queue.recv().await {
        hook.stats.queued.fetch_sub(1, Ordering::Relaxed);
        // Done with it however this turn ends, an abort included.
        let _done = Outstanding(&outstanding);
        if let Some(disabled) = hook.disabled() {
            hook.stats
                .drop_one(&hook.id, DropReason::Disabled, &disabled.detail);
            continue;
        }
        if let Err(reason) = allow.check(&hook.destination) {
            hook.stats
                .drop_one(&hook.id, DropReason::NotAllowed, &reason);
            continue;
        }
        if let Some(Gone(detail)) = deliver(&hook, &mut connection, &settings, &message).await {
            disable(&registry, &hook, detail).await;
        }
    }
}

/// One message a worker holds, counted in the outstanding ones until it
/// is dropped.
struct Outstanding<'a>(&'a AtomicU64);

impl Drop for Outstanding<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
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
