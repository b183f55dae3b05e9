//! The connection: shared state, requests, and the tasks that keep a
//! connection (and, after a loss, the next one) going.
//!
//! Callers encode frames straight into [`State::out`] under the state mutex
//! (never held across an await) and wake the writer, which swaps the buffer
//! out and writes it in one go, so concurrent frames coalesce into few
//! writes. The reader task decodes frames and resolves pending requests or
//! routes messages to subscriptions. The session task (`session.rs`) runs the
//! writer and the heartbeat, watches the reader, and reconnects when the
//! connection is lost.
//!
//! From the bottom up: `stream` (the byte stream, plain or TLS), `tls`,
//! `setup` (opening a connection: addresses, TCP, TLS, `HELLO`/`WELCOME`),
//! `state` (what the client knows), `reader`, `session`; each imports only
//! the ones before it, and this module ties them together.

use std::io;
use std::mem;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::BytesMut;
use corebus_net::{
    encode_publish, encode_publish_as, validate_namespace, validate_topic, ClusterRequest, Frame,
    Headers, NameError, PayloadFormat, ResumePoint, WebhookRequest, Welcome,
};
use tokio::sync::{oneshot, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::{timeout, timeout_at, Instant};

use crate::{ClientConfig, Error, ServerAddr};

mod backoff;
mod reader;
mod session;
mod setup;
mod state;
mod stream;
mod tls;

use session::run_session;
use setup::{attempt, Dialer};
pub(crate) use state::{CommandKind, Started};
use state::{Cursor, Ended, Pending, Route, State, Terminal};
use stream::{AttemptError, READ_CHUNK};

/// The answer a caller's subscribe waits for.
pub(crate) type SubscribeAnswer = oneshot::Receiver<Result<Started, Error>>;

/// State shared by every handle and the tasks.
pub(crate) struct Shared {
    config: ClientConfig,
    /// Publish permits; `max_in_flight` in total.
    pub(crate) permits: Arc<Semaphore>,
    pub(crate) max_in_flight: u32,
    state: Mutex<State>,
    /// Wakes the writer.
    write_notify: Notify,
    /// Wakes the session while it waits to reconnect (close or drop).
    session_wake: Notify,
    /// Wakes calls waiting for a reconnection (it happened, or the client
    /// ended).
    link_change: Notify,
    session_task: Mutex<Option<JoinHandle<io::Result<()>>>>,
    /// For the heartbeat: when the reader last got bytes, in milliseconds
    /// since `clock_base`.
    last_heard_ms: AtomicU64,
    /// The reader waits for a subscriber to make room; silence from the
    /// socket is then the client's doing.
    stalled: AtomicBool,
    clock_base: Instant,
}

/// Opens a connection, performs the handshake and starts the session task.
pub(crate) async fn connect(
    addr: impl ServerAddr,
    config: ClientConfig,
) -> Result<Arc<Shared>, Error> {
    let deadline = Instant::now() + config.connect_timeout;
    let dialer = Dialer::new(addr, &config, deadline).await?;
    let opened = attempt(&dialer, &config)
        .await
        .map_err(AttemptError::into_error)?;
    let max_in_flight = config
        .max_in_flight
        .clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize)) as u32;
    let shared = Arc::new(Shared {
        permits: Arc::new(Semaphore::new(max_in_flight as usize)),
        max_in_flight,
        state: Mutex::new(State::new(
            opened.welcome.clone(),
            BytesMut::with_capacity(READ_CHUNK),
        )),
        config,
        write_notify: Notify::new(),
        session_wake: Notify::new(),
        link_change: Notify::new(),
        session_task: Mutex::new(None),
        last_heard_ms: AtomicU64::new(0),
        stalled: AtomicBool::new(false),
        clock_base: Instant::now(),
    });
    let session = tokio::spawn(run_session(shared.clone(), dialer, opened));
    *shared
        .session_task
        .lock()
        .unwrap_or_else(PoisonError::into_inner) = Some(session);
    Ok(shared)
}

/// Checks the names against the naming rules.
pub(crate) fn check_names(namespace: &str, topic: &str) -> Result<(), Error> {
    validate_namespace(namespace.as_bytes()).map_err(Error::InvalidName)?;
    validate_topic(topic.as_bytes()).map_err(Error::InvalidName)
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // No code path panics while holding the lock, and the state stays
        // consistent between statements, so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn wake_writer(&self) {
        self.write_notify.notify_one();
    }

    pub(crate) fn request_timeout(&self) -> Duration {
        self.config.request_timeout
    }

    /// [`ClientConfig::max_decompressed`].
    pub(crate) fn max_decompressed(&self) -> usize {
        self.config.max_decompressed
    }

    /// The current (or, while reconnecting, the last) `WELCOME`.
    pub(crate) fn welcome(&self) -> Welcome {
        self.lock().welcome.clone()
    }

    fn heard_now(&self) {
        let ms = self.clock_base.elapsed().as_millis() as u64;
        self.last_heard_ms.store(ms, Ordering::Relaxed);
    }

    fn last_heard(&self) -> Instant {
        self.clock_base + Duration::from_millis(self.last_heard_ms.load(Ordering::Relaxed))
    }

    /// Runs `queue` under the lock once the client is connected and fewer
    /// than `room` bytes wait for the writer, waiting up to the request
    /// timeout for a reconnection (and, for room, as long as the writer
    /// takes); then wakes the writer.
    async fn when_up<T>(
        &self,
        room: usize,
        queue: impl FnOnce(&mut State) -> T,
    ) -> Result<T, Error> {
        // Fast path, taken by every request while connected with room: no
        // waiter is registered.
        {
            let st = self.lock();
            if st.availability()?.is_none() && st.out.len() < room {
                return Ok(self.queue_now(st, queue));
            }
        }
        let mut deadline = None;
        let mut queue = Some(queue);
        loop {
            let changed = self.link_change.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let reconnecting = {
                let mut st = self.lock();
                match st.availability()? {
                    None if st.out.len() < room => {
                        let queue = queue
                            .take()
                            .expect("taken once: the loop returns right after");
                        return Ok(self.queue_now(st, queue));
                    }
                    None => {
                        st.room_wanted = true;
                        None
                    }
                    Some(reason) => Some(reason.to_owned()),
                }
            };
            match reconnecting {
                // The writer is working through the buffer: no time limit.
                None => {
                    deadline = None;
                    changed.await;
                }
                Some(reason) => {
                    let deadline = *deadline
                        .get_or_insert_with(|| Instant::now() + self.config.request_timeout);
                    if timeout_at(deadline, changed).await.is_err() {
                        return Err(Error::ConnectionLost(format!(
                            "not reconnected within {:?}; the connection was lost: {reason}",
                            self.config.request_timeout
                        )));
                    }
                }
            }
        }
    }

    /// Runs `queue` under the held lock, then wakes the writer unless it was
    /// notified already since it last took the buffer.
    fn queue_now<T>(
        &self,
        mut st: MutexGuard<'_, State>,
        queue: impl FnOnce(&mut State) -> T,
    ) -> T {
        let value = queue(&mut st);
        let notify = !std::mem::replace(&mut st.writer_notified, true);
        drop(st);
        if notify {
            self.wake_writer();
        }
        value
    }

    /// The connection's events from now on.
    pub(crate) fn connection_events(&self) -> crate::ConnectionEvents {
        let st = self.lock();
        crate::ConnectionEvents::new(&st.events, st.terminal.is_some())
    }

    /// Fails fast when the client is over or closing.
    pub(crate) fn usable(&self) -> Result<(), Error> {
        self.lock().availability().map(|_| ())
    }

    /// The error to report when an answer channel closed without an answer.
    pub(crate) fn current_error(&self) -> Error {
        let st = self.lock();
        match (&st.terminal, &st.link) {
            (Some(terminal), _) => terminal.pending_error(),
            (None, state::Link::Down { reason }) => Error::ConnectionLost(reason.clone()),
            (None, state::Link::Up) => Error::ConnectionLost("the connection task ended".into()),
        }
    }

    /// Why a subscription's stream ended: its own end error, or the client's.
    pub(crate) fn subscription_end(&self, sub_id: u32) -> Option<Error> {
        let mut st = self.lock();
        if let Some(error) = st.ended.remove(&sub_id) {
            return Some(error);
        }
        st.terminal.as_ref().map(Terminal::pending_error)
    }

    /// Validates a publish locally: names, and payload size against `max_frame`.
    pub(crate) fn check_publish(
        &self,
        namespace: &str,
        topic: &str,
        headers: &Headers,
        len: usize,
    ) -> Result<(), Error> {
        check_names(namespace, topic)?;
        if corebus_net::is_pattern(topic.as_bytes()) {
            return Err(Error::InvalidName(NameError::Wildcard {
                reason: "a message is published to one topic: `*` and `>` are wildcards, not \
                         topic segments",
            }));
        }
        // Length field: opcode, request id, flags, u8-prefixed namespace,
        // u16-prefixed topic, format byte, payload.
        let overhead = 1 + 4 + 1 + 1 + namespace.len() + 2 + topic.len() + 1;
        if headers.encoded_len() > corebus_net::MAX_HEADERS_LEN {
            return Err(Error::HeadersTooLarge {
                len: headers.encoded_len(),
                max: corebus_net::MAX_HEADERS_LEN,
            });
        }
        let overhead = overhead
            + if headers.is_empty() {
                0
            } else {
                2 + headers.encoded_len()
            };
        let max = (self.lock().welcome.max_frame as usize).saturating_sub(overhead);
        if len > max {
            return Err(Error::PayloadTooLarge { len, max });
        }
        Ok(())
    }

    /// Queues a `PUBLISH` with the ack flag (once connected); the receiver
    /// gets its answer.
    pub(crate) async fn enqueue_publish(
        &self,
        permit: OwnedSemaphorePermit,
        namespace: &str,
        topic: &str,
        format: PayloadFormat,
        headers: &Headers,
        payload: &[u8],
    ) -> Result<oneshot::Receiver<Result<u64, Error>>, Error> {
        let (answer, rx) = oneshot::channel();
        self.when_up(usize::MAX, |st| {
            let request_id = st.alloc_request();
            encode_publish_as(
                &mut st.out,
                request_id,
                true,
                namespace.as_bytes(),
                topic.as_bytes(),
                format.byte(),
                headers,
                payload,
            );
            st.pending.insert(
                request_id,
                Pending::Publish {
                    answer,
                    _permit: permit,
                },
            );
        })
        .await?;
        Ok(rx)
    }

    /// Queues a `PUBLISH` without the ack flag (once connected, and once
    /// fewer than [`ClientConfig::send_buffer`] bytes wait for the socket).
    pub(crate) async fn enqueue_unacked(
        &self,
        namespace: &str,
        topic: &str,
        format: PayloadFormat,
        payload: &[u8],
    ) -> Result<(), Error> {
        self.when_up(self.config.send_buffer.max(1), |st| {
            let request_id = st.alloc_unacked();
            encode_publish(
                &mut st.out,
                request_id,
                false,
                namespace.as_bytes(),
                topic.as_bytes(),
                format,
                payload,
            );
        })
        .await
    }

    /// Takes the count (and the last) of unacknowledged publishes the server
    /// refused since the last call.
    pub(crate) fn take_unacked_failures(&self) -> crate::UnackedFailures {
        mem::take(&mut self.lock().unacked_failures)
    }

    /// Registers a subscription route and queues its `SUBSCRIBE` (once
    /// connected).
    pub(crate) async fn enqueue_subscribe(
        &self,
        namespace: &str,
        topic: &str,
        resume: Option<ResumePoint>,
        group: Option<&str>,
    ) -> Result<(crate::queue::Receiver, SubscribeAnswer), Error> {
        let (answer, answer_rx) = oneshot::channel();
        let (tx, events) = crate::queue::channel(self.config.subscription_buffer);
        self.when_up(usize::MAX, |st| {
            let sub_id = st.alloc_sub();
            let route = Route {
                tx: Some(tx),
                name: std::sync::Arc::new(crate::message::TopicName {
                    namespace: namespace.into(),
                    topic: topic.into(),
                }),
                cursor: Cursor::Subscribing { resume },
                group: group.map(std::sync::Arc::from),
            };
            st.subscribe(sub_id, route, resume, Pending::Subscribe { answer, sub_id });
        })
        .await?;
        Ok((events, answer_rx))
    }

    /// Queues an `UNSUBSCRIBE`; with `wait`, returns a receiver for its answer.
    pub(crate) fn enqueue_unsubscribe(
        &self,
        sub_id: u32,
        wait: bool,
    ) -> Result<Option<oneshot::Receiver<Result<(), Error>>>, Error> {
        let mut st = self.lock();
        st.ended.remove(&sub_id);
        if let Some(terminal) = &st.terminal {
            return Err(terminal.later_error());
        }
        if !st.routes.contains_key(&sub_id) {
            // Already ended on its own (its resubscription was refused).
            return Ok(None);
        }
        let (answer, rx) = if wait {
            let (answer, rx) = oneshot::channel();
            (Some(answer), Some(rx))
        } else {
            (None, None)
        };
        st.unsubscribe(sub_id, answer);
        drop(st);
        self.wake_writer();
        Ok(rx)
    }

    /// Queues a `PING` (once connected); returns its nonce and a receiver for
    /// the `PONG`.
    pub(crate) async fn enqueue_ping(&self) -> Result<(u64, oneshot::Receiver<()>), Error> {
        let (answer, rx) = oneshot::channel();
        self.when_up(usize::MAX, |st| {
            let nonce = st.next_nonce;
            st.next_nonce = st.next_nonce.wrapping_add(1);
            st.pings.insert(nonce, answer);
            Frame::Ping(nonce).encode(&mut st.out);
            nonce
        })
        .await
        .map(|nonce| (nonce, rx))
    }

    /// Forgets a ping that timed out.
    pub(crate) fn forget_ping(&self, nonce: u64) {
        self.lock().pings.remove(&nonce);
    }

    /// Queues a `WEBHOOK_REQUEST` or `CLUSTER_REQUEST` carrying `command`
    /// (once connected); returns its request id and a receiver for the
    /// reply's result text.
    pub(crate) async fn enqueue_command(
        &self,
        kind: CommandKind,
        command: String,
    ) -> Result<(u32, oneshot::Receiver<Result<String, Error>>), Error> {
        let (answer, rx) = oneshot::channel();
        self.when_up(usize::MAX, |st| {
            let request_id = st.alloc_request();
            let frame = match kind {
                CommandKind::Webhook => Frame::WebhookRequest(WebhookRequest {
                    request_id,
                    command,
                }),
                CommandKind::Cluster => Frame::ClusterRequest(ClusterRequest {
                    request_id,
                    command,
                }),
            };
            frame.encode(&mut st.out);
            st.pending
                .insert(request_id, Pending::Command { kind, answer });
            request_id
        })
        .await
        .map(|request_id| (request_id, rx))
    }

    /// Forgets a command nobody waits for any more (it timed out or the call
    /// was dropped), so that a late reply finds no one and the entry does not
    /// linger. Only a command entry is removed: the id is not reused for
    /// anything else while this one is outstanding.
    pub(crate) fn forget_command(&self, request_id: u32) {
        let mut st = self.lock();
        if let Some(Pending::Command { .. }) = st.pending.get(&request_id) {
            st.pending.remove(&request_id);
        }
    }

    /// Waits for a request's answer, bounded by the request timeout.
    pub(crate) async fn await_answer<T>(
        &self,
        rx: oneshot::Receiver<Result<T, Error>>,
    ) -> Result<T, Error> {
        match timeout(self.config.request_timeout, rx).await {
            Err(_) => Err(Error::Timeout),
            Ok(Err(_)) => Err(self.current_error()),
            Ok(Ok(result)) => result,
        }
    }

    /// Ends the client: fails every pending request and ends every
    /// subscription with `terminal`. Only the first call has an effect.
    pub(crate) fn fail(&self, terminal: Terminal) {
        let (pending, pings, routes) = {
            let mut st = self.lock();
            if st.terminal.is_some() {
                return;
            }
            st.terminal = Some(terminal.clone());
            st.emit(crate::ConnectionEvent::Ended {
                reason: terminal.pending_error().to_string(),
            });
            (
                mem::take(&mut st.pending),
                mem::take(&mut st.pings),
                mem::take(&mut st.routes),
            )
        };
        for (_, request) in pending {
            request.fail(terminal.pending_error());
        }
        // Dropping the senders ends the streams; each subscription then reports
        // the terminal error once.
        drop(pings);
        drop(routes);
        self.link_change.notify_waiters();
        self.session_wake.notify_one();
    }

    /// Starts `close()`: refuses new requests.
    pub(crate) fn begin_close(&self) -> bool {
        let mut st = self.lock();
        if st.terminal.is_some() {
            return false;
        }
        st.closing = true;
        drop(st);
        self.link_change.notify_waiters();
        true
    }

    /// Flushes everything, shuts the socket down and ends the client.
    pub(crate) async fn finish_close(&self) -> Result<(), Error> {
        self.lock().shutdown = true;
        self.wake_writer();
        self.session_wake.notify_one();
        let session = self
            .session_task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let flushed = match session {
            Some(task) => match task.await {
                Ok(result) => result.map_err(Error::Io),
                Err(join) => Err(Error::Io(io::Error::other(join))),
            },
            None => Ok(()),
        };
        self.fail(Terminal::Closed);
        flushed
    }

    /// Called when the last handle is dropped: flush, shut down, end.
    pub(crate) fn release(&self) {
        self.lock().shutdown = true;
        self.wake_writer();
        self.fail(Terminal::Closed);
    }
}
