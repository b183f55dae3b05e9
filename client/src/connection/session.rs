//! The session task: runs one connection at a time (its reader task, its
//! writer and its heartbeat) and, when a connection is lost, reconnects with
//! backoff and resumes every subscription.

use std::io;
use std::mem;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use corebus_net::Frame;
use tokio::io::AsyncWriteExt;
use tokio::time::{sleep, sleep_until, timeout, Instant};

use super::backoff::Backoff;
use super::reader::run_reader;
use super::setup::{attempt, Dialer, Opened};
use super::stream::{AttemptError, WriteHalf, READ_CHUNK};
use super::{Ended, Shared, Terminal};
use crate::ConnectionEvent;

/// Runs connections until the client ends; returns the result of the final
/// flush when it ends by `close()`.
pub(super) async fn run_session(
    shared: Arc<Shared>,
    dialer: Dialer,
    mut opened: Opened,
) -> io::Result<()> {
    let config = &shared.config;
    let mut backoff = Backoff::new(
        config.reconnect_initial_delay,
        config.reconnect_max_delay,
        Backoff::seed(),
    );
    loop {
        let reason = match run_connection(&shared, opened).await {
            Ended::Closed(result) => {
                shared.fail(Terminal::Closed);
                return result;
            }
            Ended::Fatal(terminal) => {
                shared.fail(terminal);
                return Ok(());
            }
            Ended::Lost(reason) => reason,
        };
        // Everything queued for or waiting on the lost connection fails now;
        // in-flight publishes may or may not have been sequenced.
        let dropped = {
            let mut st = shared.lock();
            let dropped = st.link_down(reason.clone());
            st.emit(ConnectionEvent::Disconnected {
                reason: reason.clone(),
                reconnecting: config.reconnect,
            });
            dropped
        };
        dropped.fail(&reason);
        // Calls waiting for the writer to drain now wait for the reconnection
        // instead, within the request timeout.
        shared.link_change.notify_waiters();
        if !config.reconnect {
            shared.fail(Terminal::Lost(reason));
            return Ok(());
        }
        let attempts = match reconnect(&shared, &dialer, &mut backoff, &reason).await {
            Some((next, attempts)) => {
                opened = next;
                attempts
            }
            None => return Ok(()),
        };
        {
            let mut st = shared.lock();
            if st.terminal.is_some() || st.closing || st.shutdown {
                drop(st);
                shared.fail(Terminal::Closed);
                return Ok(());
            }
            st.link_up(opened.welcome.clone(), opened.server.clone(), attempts);
        }
        shared.link_change.notify_waiters();
        shared.wake_writer();
    }
}

/// Whether the client stopped wanting a connection; ends it if so.
fn stopping(shared: &Shared) -> bool {
    let st = shared.lock();
    if st.terminal.is_some() {
        return true;
    }
    if st.closing || st.shutdown {
        drop(st);
        shared.fail(Terminal::Closed);
        return true;
    }
    false
}

/// Tries to connect again until it works (returns the connection and how
/// many attempts it took), the client is closed, the server refuses the
/// handshake or the attempts run out (the client then ends).
async fn reconnect(
    shared: &Shared,
    dialer: &Dialer,
    backoff: &mut Backoff,
    lost: &str,
) -> Option<(Opened, u32)> {
    let mut failures = 0u32;
    loop {
        if stopping(shared) {
            return None;
        }
        tokio::select! {
            () = sleep(backoff.next_delay()) => {}
            () = shared.session_wake.notified() => continue,
        }
        if stopping(shared) {
            return None;
        }
        let result = tokio::select! {
            result = attempt(dialer, &shared.config) => result,
            () = shared.session_wake.notified() => continue,
        };
        match result {
            Ok(opened) => {
                backoff.reset();
                return Some((opened, failures + 1));
            }
            Err(failed) => {
                failures += 1;
                let (refused, err) = match failed {
                    AttemptError::Refused(err) => (true, err),
                    AttemptError::Failed(err) => (false, err),
                };
                shared.lock().emit(ConnectionEvent::ReconnectFailed {
                    attempt: failures,
                    error: err.to_string(),
                });
                if refused {
                    shared.fail(Terminal::Lost(format!(
                        "{lost}; reconnecting failed: {err}"
                    )));
                    return None;
                }
                if shared
                    .config
                    .reconnect_max_attempts
                    .is_some_and(|max| failures >= max)
                {
                    shared.fail(Terminal::Lost(format!(
                        "{lost}; gave up reconnecting after {failures} attempts, the last: {err}"
                    )));
                    return None;
                }
            }
        }
    }
}

/// Runs one connection until it ends; returns why.
async fn run_connection(shared: &Arc<Shared>, opened: Opened) -> Ended {
    let (rd, mut wr) = opened.stream.split();
    shared.heard_now();
    let mut reader = tokio::spawn(run_reader(shared.clone(), rd, opened.leftover));
    let mut reader_done = false;
    let ended = tokio::select! {
        biased;
        written = write_loop(shared, &mut wr) => match written {
            Ok(()) => Ended::Closed(Ok(())),
            Err(err) if shared.lock().shutdown => Ended::Closed(Err(err)),
            Err(err) => Ended::Lost(format!("write failed: {err}")),
        },
        ended = &mut reader => {
            reader_done = true;
            ended.unwrap_or_else(|join| Ended::Lost(format!("the reader task failed: {join}")))
        }
        reason = heartbeat(shared) => Ended::Lost(reason),
    };
    if !reader_done {
        // Wait until the reader is really gone, so that nothing it does can
        // interleave with the reconnection's bookkeeping.
        reader.abort();
        let _ = reader.await;
    }
    ended
}

/// Writes whatever callers queued, one swap of the buffer per wake-up.
/// Returns `Ok` only after the final flush and shutdown of `close()`.
pub(super) async fn write_loop(shared: &Shared, wr: &mut WriteHalf) -> io::Result<()> {
    let mut spare = BytesMut::with_capacity(READ_CHUNK);
    // A buffer is kept for reuse up to twice `send_buffer`: filling one to
    // the bound doubles it past the bound with the last frame, and one that
    // was let go then would be grown again from nothing, a copy into fresh
    // memory per doubling, for every batch a fast publisher writes.
    let keep = shared.config.send_buffer.saturating_mul(2).max(READ_CHUNK);
    loop {
        shared.write_notify.notified().await;
        let (shutdown, room) = {
            let mut st = shared.lock();
            mem::swap(&mut st.out, &mut spare);
            st.writer_notified = false;
            (st.shutdown, mem::take(&mut st.room_wanted))
        };
        if room {
            shared.link_change.notify_waiters();
        }
        if shutdown {
            // Bounded, so a peer that stopped reading cannot keep this task
            // (and the socket) alive forever after the client is gone.
            let flush = async {
                wr.write_all(&spare).await?;
                wr.shutdown().await
            };
            return match timeout(shared.config.request_timeout, flush).await {
                Ok(result) => result,
                Err(_) => Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the final flush did not finish in time",
                )),
            };
        }
        if !spare.is_empty() {
            wr.write_all(&spare).await?;
            // A TLS stream may return from a write with records still in its
            // buffer; without the flush they would wait for the next write.
            wr.flush().await?;
            spare.clear();
            if spare.capacity() > keep {
                spare = BytesMut::with_capacity(READ_CHUNK);
            }
        }
    }
}

/// Sends `PING` after `heartbeat_interval` of silence from the server;
/// returns once nothing was heard for `heartbeat_timeout`.
async fn heartbeat(shared: &Shared) -> String {
    let interval = shared
        .config
        .heartbeat_interval
        .max(Duration::from_millis(1));
    let limit = shared
        .config
        .heartbeat_timeout
        .max(Duration::from_millis(1));
    // The last-heard time a PING was sent for, so that one silence gets one PING.
    let mut pinged_for = None;
    loop {
        if shared.stalled.load(Ordering::Relaxed) {
            // The reader is not reading: the silence is ours, not the
            // server's, and so are answers to resubscriptions still unread
            // behind the messages; their time starts again after the stall.
            shared.restart_resubscription_clock();
            sleep(interval.min(limit)).await;
            continue;
        }
        // A server that answers PINGs but not the resubscriptions leaves
        // every subscription waiting: a broken connection like a silent one.
        let resubscribed_by = match shared.resubscriptions_due() {
            Ok(by) => by,
            Err(reason) => return reason,
        };
        let heard = shared.last_heard();
        let silent = heard.elapsed();
        if silent >= limit {
            return format!(
                "nothing heard from the server for {silent:?} (heartbeat timeout {limit:?})"
            );
        }
        if silent >= interval && pinged_for != Some(heard) {
            shared.send_heartbeat();
            pinged_for = Some(heard);
        }
        let wake = if pinged_for == Some(heard) {
            heard + limit
        } else {
            heard + interval.min(limit)
        };
        sleep_until(resubscribed_by.map_or(wake, |by| wake.min(by))).await;
    }
}

impl Shared {
    /// When the resubscriptions of the current connection must be answered
    /// by (`None` once none is being watched: found all answered at the
    /// deadline, or there were none), or why the connection must go when the
    /// request timeout passed with some unanswered.
    fn resubscriptions_due(&self) -> Result<Option<Instant>, String> {
        let st = self.lock();
        // Cleared when the last one is answered.
        let Some(at) = st.resubscribed_at else {
            return Ok(None);
        };
        let limit = self.config.request_timeout;
        if at.elapsed() < limit {
            return Ok(Some(at + limit));
        }
        Err(format!(
            "{} resubscription(s) unanswered {limit:?} (the request timeout) after reconnecting",
            st.resubscribing
        ))
    }

    /// Gives the resubscriptions a whole request timeout from now.
    fn restart_resubscription_clock(&self) {
        let mut st = self.lock();
        if st.resubscribed_at.is_some() {
            st.resubscribed_at = Some(Instant::now());
        }
    }

    /// Queues a `PING` nobody waits for: any frame in return counts as heard.
    fn send_heartbeat(&self) {
        let mut st = self.lock();
        if st.terminal.is_some() {
            return;
        }
        let nonce = st.next_nonce;
        st.next_nonce = st.next_nonce.wrapping_add(1);
        Frame::Ping(nonce).encode(&mut st.out);
        drop(st);
        self.wake_writer();
    }
}
