//! The connection: handshake, shared state, and the reader and writer tasks.
//!
//! Callers encode frames straight into [`State::out`] under the state mutex
//! (never held across an await) and wake the writer task, which swaps the
//! buffer out and writes it in one go, so concurrent frames coalesce into few
//! writes. The reader task decodes frames and resolves pending requests or
//! routes messages to subscriptions.

use std::collections::HashMap;
use std::io;
use std::mem;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::BytesMut;
use corebus_net::{
    encode_publish, encode_subscribe, validate_namespace, validate_topic, Frame, FrameError,
    Unsubscribe, Welcome,
};
use tokio::sync::{mpsc, oneshot, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::timeout;

use crate::{Error, Message};

mod reader;
mod setup;

pub(crate) use setup::connect;

/// Smallest amount of free buffer space the reader asks the socket to fill.
const READ_CHUNK: usize = 64 * 1024;

/// A write buffer larger than this is not kept for reuse after a flush.
const KEEP_WRITE_BUFFER: usize = 4 * 1024 * 1024;

/// Why the connection is over.
#[derive(Debug, Clone)]
pub(crate) enum Terminal {
    /// [`Client::close`](crate::Client::close) ran, or every handle was dropped.
    Closed,
    /// The connection failed; the text says why.
    Lost(String),
    /// The server sent something that does not decode.
    Protocol(FrameError),
}

impl Terminal {
    /// The error for a request that was pending (or a subscription that was
    /// active) when the connection ended.
    pub(crate) fn pending_error(&self) -> Error {
        match self {
            Terminal::Closed => Error::Closed,
            Terminal::Lost(reason) => Error::ConnectionLost(reason.clone()),
            Terminal::Protocol(err) => Error::Protocol(err.clone()),
        }
    }

    /// The error for a call made after the connection ended.
    pub(crate) fn later_error(&self) -> Error {
        match self {
            Terminal::Closed => Error::Closed,
            Terminal::Lost(reason) => Error::ConnectionLost(reason.clone()),
            Terminal::Protocol(err) => Error::ConnectionLost(format!("protocol error: {err}")),
        }
    }
}

fn protocol_violation(what: String) -> Terminal {
    Terminal::Lost(format!("protocol error: {what}"))
}

/// An outstanding request, keyed by request id.
enum Pending {
    Publish {
        answer: oneshot::Sender<Result<u64, Error>>,
        /// Released when the answer (or the connection's end) arrives.
        _permit: OwnedSemaphorePermit,
    },
    Subscribe {
        answer: oneshot::Sender<Result<u64, Error>>,
        sub_id: u32,
    },
    Unsubscribe {
        /// `None` for the fire-and-forget unsubscribe of a dropped subscription.
        answer: Option<oneshot::Sender<Result<(), Error>>>,
        sub_id: u32,
    },
}

impl Pending {
    fn name(&self) -> &'static str {
        match self {
            Pending::Publish { .. } => "PUBLISH",
            Pending::Subscribe { .. } => "SUBSCRIBE",
            Pending::Unsubscribe { .. } => "UNSUBSCRIBE",
        }
    }

    fn fail(self, error: Error) {
        // A send fails only when the caller stopped waiting: nothing to do.
        match self {
            Pending::Publish { answer, .. } | Pending::Subscribe { answer, .. } => {
                let _ = answer.send(Err(error));
            }
            Pending::Unsubscribe { answer, .. } => {
                if let Some(answer) = answer {
                    let _ = answer.send(Err(error));
                }
            }
        }
    }
}

/// Where a subscription's messages go.
struct Route {
    /// `None` once `UNSUBSCRIBE` was sent: messages until `UNSUB_OK` are dropped.
    tx: Option<mpsc::Sender<Message>>,
    /// The sequence number the next `MESSAGE` must carry; `None` before `SUB_OK`.
    next_seq: Option<u64>,
}

/// Everything behind the state mutex.
struct State {
    terminal: Option<Terminal>,
    /// `close()` is under way: no new requests.
    closing: bool,
    /// The writer shuts the socket down after its next flush.
    shutdown: bool,
    /// Encoded frames waiting for the writer.
    out: BytesMut,
    next_request: u32,
    next_sub: u32,
    next_nonce: u64,
    pending: HashMap<u32, Pending>,
    pings: HashMap<u64, oneshot::Sender<()>>,
    routes: HashMap<u32, Route>,
}

impl State {
    fn usable(&self) -> Result<(), Error> {
        if let Some(terminal) = &self.terminal {
            return Err(terminal.later_error());
        }
        if self.closing {
            return Err(Error::Closed);
        }
        Ok(())
    }

    /// A request id that is not 0 and not outstanding.
    fn alloc_request(&mut self) -> u32 {
        loop {
            let id = self.next_request;
            self.next_request = self.next_request.wrapping_add(1);
            if id != 0 && !self.pending.contains_key(&id) {
                return id;
            }
        }
    }

    /// A subscription id that is not 0 and not in use (or being unsubscribed).
    fn alloc_sub(&mut self) -> u32 {
        loop {
            let id = self.next_sub;
            self.next_sub = self.next_sub.wrapping_add(1);
            if id != 0 && !self.routes.contains_key(&id) {
                return id;
            }
        }
    }

    /// Stops routing `sub_id` and queues an `UNSUBSCRIBE` for it.
    fn unsubscribe(&mut self, sub_id: u32, answer: Option<oneshot::Sender<Result<(), Error>>>) {
        if let Some(route) = self.routes.get_mut(&sub_id) {
            route.tx = None;
        }
        let request_id = self.alloc_request();
        Frame::Unsubscribe(Unsubscribe { request_id, sub_id }).encode(&mut self.out);
        self.pending
            .insert(request_id, Pending::Unsubscribe { answer, sub_id });
    }
}

/// State shared by every handle and the two tasks.
pub(crate) struct Shared {
    pub(crate) welcome: Welcome,
    pub(crate) request_timeout: Duration,
    subscription_buffer: usize,
    /// Publish permits; `max_in_flight` in total.
    pub(crate) permits: Arc<Semaphore>,
    pub(crate) max_in_flight: u32,
    state: Mutex<State>,
    write_notify: Notify,
    writer_stop: Notify,
    reader_stop: Notify,
    writer_task: Mutex<Option<JoinHandle<io::Result<()>>>>,
}

/// Checks the names and that the frame fits the server's limit.
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

    /// Fails fast when the connection is over or closing.
    pub(crate) fn usable(&self) -> Result<(), Error> {
        self.lock().usable()
    }

    /// The error to report when an answer channel closed without an answer.
    pub(crate) fn current_error(&self) -> Error {
        match &self.lock().terminal {
            Some(terminal) => terminal.pending_error(),
            None => Error::ConnectionLost("the connection task ended".into()),
        }
    }

    /// The terminal error, if the connection is over.
    pub(crate) fn terminal_error(&self) -> Option<Error> {
        self.lock().terminal.as_ref().map(Terminal::pending_error)
    }

    /// Validates a publish locally: names, and payload size against `max_frame`.
    pub(crate) fn check_publish(
        &self,
        namespace: &str,
        topic: &str,
        len: usize,
    ) -> Result<(), Error> {
        check_names(namespace, topic)?;
        // Length field: opcode, request id, flags, u8-prefixed namespace,
        // u16-prefixed topic, payload.
        let overhead = 1 + 4 + 1 + 1 + namespace.len() + 2 + topic.len();
        let max = (self.welcome.max_frame as usize).saturating_sub(overhead);
        if len > max {
            return Err(Error::PayloadTooLarge { len, max });
        }
        Ok(())
    }

    /// Queues a `PUBLISH` with the ack flag; the receiver gets its answer.
    pub(crate) fn enqueue_publish(
        &self,
        permit: OwnedSemaphorePermit,
        namespace: &str,
        topic: &str,
        payload: &[u8],
    ) -> Result<oneshot::Receiver<Result<u64, Error>>, Error> {
        let (answer, rx) = oneshot::channel();
        let mut st = self.lock();
        st.usable()?;
        let request_id = st.alloc_request();
        encode_publish(
            &mut st.out,
            request_id,
            true,
            namespace.as_bytes(),
            topic.as_bytes(),
            payload,
        );
        st.pending.insert(
            request_id,
            Pending::Publish {
                answer,
                _permit: permit,
            },
        );
        drop(st);
        self.wake_writer();
        Ok(rx)
    }

    /// Registers a subscription route and queues its `SUBSCRIBE`.
    #[allow(clippy::type_complexity)]
    pub(crate) fn enqueue_subscribe(
        &self,
        namespace: &str,
        topic: &str,
    ) -> Result<
        (
            u32,
            mpsc::Receiver<Message>,
            oneshot::Receiver<Result<u64, Error>>,
        ),
        Error,
    > {
        let (answer, answer_rx) = oneshot::channel();
        let (tx, messages) = mpsc::channel(self.subscription_buffer);
        let mut st = self.lock();
        st.usable()?;
        let sub_id = st.alloc_sub();
        let request_id = st.alloc_request();
        st.routes.insert(
            sub_id,
            Route {
                tx: Some(tx),
                next_seq: None,
            },
        );
        st.pending
            .insert(request_id, Pending::Subscribe { answer, sub_id });
        encode_subscribe(
            &mut st.out,
            request_id,
            sub_id,
            namespace.as_bytes(),
            topic.as_bytes(),
        );
        drop(st);
        self.wake_writer();
        Ok((sub_id, messages, answer_rx))
    }

    /// Queues an `UNSUBSCRIBE`; with `wait`, returns a receiver for its answer.
    pub(crate) fn enqueue_unsubscribe(
        &self,
        sub_id: u32,
        wait: bool,
    ) -> Result<Option<oneshot::Receiver<Result<(), Error>>>, Error> {
        let mut st = self.lock();
        if let Some(terminal) = &st.terminal {
            return Err(terminal.later_error());
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

    /// Queues a `PING`; returns its nonce and a receiver for the `PONG`.
    pub(crate) fn enqueue_ping(&self) -> Result<(u64, oneshot::Receiver<()>), Error> {
        let (answer, rx) = oneshot::channel();
        let mut st = self.lock();
        st.usable()?;
        let nonce = st.next_nonce;
        st.next_nonce = st.next_nonce.wrapping_add(1);
        st.pings.insert(nonce, answer);
        Frame::Ping(nonce).encode(&mut st.out);
        drop(st);
        self.wake_writer();
        Ok((nonce, rx))
    }

    /// Forgets a ping that timed out.
    pub(crate) fn forget_ping(&self, nonce: u64) {
        self.lock().pings.remove(&nonce);
    }

    /// Waits for a request's answer, bounded by the request timeout.
    pub(crate) async fn await_answer<T>(
        &self,
        rx: oneshot::Receiver<Result<T, Error>>,
    ) -> Result<T, Error> {
        match timeout(self.request_timeout, rx).await {
            Err(_) => Err(Error::Timeout),
            Ok(Err(_)) => Err(self.current_error()),
            Ok(Ok(result)) => result,
        }
    }

    /// Ends the connection: fails every pending request and ends every
    /// subscription with `terminal`. Only the first call has an effect.
    pub(crate) fn fail(&self, terminal: Terminal, stop_writer: bool) {
        let (pending, pings, routes) = {
            let mut st = self.lock();
            if st.terminal.is_some() {
                return;
            }
            st.terminal = Some(terminal.clone());
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
        self.reader_stop.notify_one();
        if stop_writer {
            self.writer_stop.notify_one();
        }
    }

    /// Starts `close()`: refuses new requests.
    pub(crate) fn begin_close(&self) -> bool {
        let mut st = self.lock();
        if st.terminal.is_some() {
            return false;
        }
        st.closing = true;
        true
    }

    /// Flushes everything, shuts the socket down and ends the connection.
    pub(crate) async fn finish_close(&self) -> Result<(), Error> {
        self.lock().shutdown = true;
        self.wake_writer();
        let writer = self
            .writer_task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let flushed = match writer {
            Some(task) => match task.await {
                Ok(result) => result.map_err(Error::Io),
                Err(join) => Err(Error::Io(io::Error::other(join))),
            },
            None => Ok(()),
        };
        self.fail(Terminal::Closed, true);
        flushed
    }

    /// Called when the last handle is dropped: flush, shut down, end.
    pub(crate) fn release(&self) {
        self.lock().shutdown = true;
        self.wake_writer();
        self.fail(Terminal::Closed, false);
    }
}
