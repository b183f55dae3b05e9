//! A connection's writer: drains its outbox into the socket with vectored
//! writes, and runs only while there is something to write.
//!
//! An idle connection has no writer task. Its writer parks: what it needs
//! ([`WriterParts`]) waits in the outbox's waker slot, inside a waker that
//! starts the task again when the engine queues a frame or kicks the
//! writer. A task of its own would hold half a KiB per idle connection;
//! the parked parts hold a few pointers. Only the waking costs a spawn,
//! once per burst after a quiet spell.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::io;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::task::{Poll, Waker};

use bytes::{Bytes, BytesMut};
use corebus_net::encode_message_header;
use futures_lite::AsyncWriteExt;
use glommio::task::JoinHandle;
use tracing::{debug, Span};

use super::parked::{self, Resume, Running, WRITERS};
use super::{
    flush_tls, sessions, spares, write_tls, Edge, Tls, CLOSE_FLUSH_TIMEOUT, WRITE_BATCH_BYTES,
};
use crate::engine::{ConnId, Shard};
use crate::framing::{frames_of_batch, Wrapped};
use crate::mqtt::MqttConn;
use crate::outbox::{OutFrame, ENCODE_BELOW};
use crate::sends::SendBatch;
use crate::socket::SharedSocket;

/// What a connection's writer works with, kept while it is parked.
pub(super) struct WriterParts {
    pub(super) shard: Rc<RefCell<Shard>>,
    pub(super) conn: ConnId,
    pub(super) stream: SharedSocket,
    pub(super) tls: Option<Tls>,
    pub(super) edge: Option<Edge>,
    pub(super) sends: Rc<SendBatch>,
    /// The connection's log span, for every task the writer runs in.
    pub(super) span: Span,
    pub(super) slot: Rc<WriterSlot>,
}

/// The connection's writer task while one runs, for the end of the
/// connection to wait on ([`finish_writer`]). A handle keeps its task's
/// memory, so the slot lets go of it as the task ends (parked or done).
#[derive(Default)]
pub(super) struct WriterSlot {
    running: Cell<Option<JoinHandle<()>>>,
    /// [`finish_writer`], waiting for the task to end.
    waiting: Cell<Option<Waker>>,
}

impl WriterSlot {
    fn ended(&self) {
        // Dropped, a handle detaches (it cancels nothing).
        drop(self.running.take());
        if let Some(waiting) = self.waiting.take() {
            waiting.wake();
        }
    }
}

/// Parks a connection's writer that has not started yet, or found nothing
/// to write: its parts wait in the outbox, and the next frame or kick
/// starts it. Without the outbox (the connection is gone) they are dropped.
pub(super) fn park(parts: WriterParts) {
    let shard = parts.shard.clone();
    let mut engine = shard.borrow_mut();
    if let Some(outbox) = engine.outbox_mut(parts.conn) {
        outbox.set_writer(&parked::waker(parts));
    }
}

/// Starts the writer's task for `parts`, in its slot.
fn start(parts: WriterParts) {
    let slot = parts.slot.clone();
    let span = parts.span.clone();
    slot.running
        .set(Some(parked::spawn_resumed(run_writer(parts), span)));
}

impl Resume for WriterParts {
    fn resume(self) {
        start(self);
    }
}

/// Waits for a connection's writer to flush what is queued (a fatal error,
/// say); but a peer that does not read could keep it waiting on a full
/// socket for ever, and the connection with it. Past the deadline the
/// writer is cancelled, which closes the socket.
pub(super) async fn finish_writer(slot: &WriterSlot) {
    let flushed = futures_lite::future::or(
        // A writer that parked was started again by the kick that ends it.
        poll_fn(|cx| {
            let running = slot.running.take();
            if running.is_none() {
                return Poll::Ready(true);
            }
            slot.running.set(running);
            slot.waiting.set(Some(cx.waker().clone()));
            Poll::Pending
        }),
        async {
            glommio::timer::sleep(CLOSE_FLUSH_TIMEOUT).await;
            false
        },
    )
    .await;
    if !flushed {
        if let Some(writer) = slot.running.take() {
            writer.cancel();
        }
        debug!("the peer read nothing for {CLOSE_FLUSH_TIMEOUT:?} after the close; dropped");
    }
}

/// Runs a connection's writer until the connection ends, or until it
/// finds nothing to write and parks.
async fn run_writer(mut parts: WriterParts) {
    let _running = Running::new(&WRITERS);
    let ended = write_loop(&mut parts).await;
    parts.slot.ended();
    if ended == Writer::Idle {
        park(parts);
    }
}

/// How a writer's loop stopped.
#[derive(Debug, PartialEq, Eq)]
enum Writer {
    /// Nothing to write, and nothing held: it may park.
    Idle,
    /// The connection's output is over.
    Done,
}

async fn write_loop(parts: &mut WriterParts) -> Writer {
    let WriterParts {
        shard,
        conn,
        stream,
        tls,
        edge,
        sends,
        ..
    } = parts;
    let (shard, conn, tls, edge, sends) = (&*shard, *conn, &*tls, &*edge, &**sends);
    // Lent while there is something to write (`spares`): an idle
    // connection's writer holds neither.
    let mut batch = Vec::new();
    let mut segments: Vec<Bytes> = Vec::new();
    // Grows with the batches it encodes; an idle connection holds almost nothing.
    let mut head = BytesMut::new();
    // The MQTT session lives on without this socket: the writer stops.
    let mut detached = false;
    loop {
        if !detached
            && shard
                .borrow_mut()
                .outbox_mut(conn)
                .is_some_and(|outbox| outbox.is_idle())
        {
            // Between bursts: the batch and segments went back to the
            // spares, and the encode buffer holds nothing written.
            return Writer::Idle;
        }
        let Some(closing) = next_batch(shard, conn, &mut batch).await else {
            break;
        };
        if closing {
            // The peer may not be reading at all; bound the final flush.
            let _ = stream.set_write_timeout(Some(CLOSE_FLUSH_TIMEOUT));
        }
        // An MQTT connection reads the batch's frames as they are: encoded
        // for it, they would be decoded again (and copied twice).
        let reads_frames = edge
            .as_ref()
            .is_some_and(|edge| edge.borrow().reads_frames());
        let frames = reads_frames.then(|| frames_of_batch(&mut batch));
        if segments.capacity() == 0 {
            segments = spares::take_segments();
        }
        for frame in batch.drain(..) {
            encode_out_frame(frame, &mut head, &mut segments);
        }
        spares::give_batch(std::mem::take(&mut batch));
        if !head.is_empty() {
            segments.push(head.split().freeze());
        }
        let wrapped = match &edge {
            Some(edge) => {
                if let Some(mqtt) = edge.borrow_mut().mqtt_mut() {
                    if mqtt.is_detached() {
                        detached = true;
                    } else {
                        sessions::take_arrival(&mut shard.borrow_mut(), conn, mqtt);
                    }
                }
                let wrapped = match frames {
                    Some(frames) => edge.borrow_mut().wrap_frames(frames, &mut segments),
                    None => edge.borrow_mut().wrap(&mut segments),
                };
                if let Some(opened) = edge.borrow_mut().take_opened() {
                    shard.borrow_mut().note_web(opened);
                }
                if let Some(mqtt) = edge.borrow_mut().mqtt_mut() {
                    sessions::ask_for_session(&mut shard.borrow_mut(), conn, mqtt);
                }
                wrapped
            }
            None => Wrapped::default(),
        };
        // Detached: what the batch held is queued for the session (`wrap`),
        // and only a handover's last words (5.0: `DISCONNECT` 0x8E) go out.
        let written = match write_segments(stream, tls.as_ref(), sends, &mut segments).await {
            Ok(written) => written,
            Err(err) => {
                debug!(%err, "connection write failed");
                break;
            }
        };
        if segments.is_empty() {
            spares::give_segments(std::mem::take(&mut segments));
        }
        let mut engine = shard.borrow_mut();
        engine.conn_drained(conn, written);
        if wrapped.pinged {
            // Written, not answered: see `watch_unacknowledged`.
            engine.note_input(conn, 0);
        }
        drop(engine);
        if wrapped.end || detached {
            break;
        }
    }
    // An MQTT session that outlives the connection keeps its outbox.
    let persists = detached
        || edge.as_ref().is_some_and(|edge| {
            edge.borrow_mut()
                .mqtt_mut()
                .is_some_and(|mqtt| mqtt.session_persists())
        });
    // Detached meanwhile (the reader ended while this writer was writing):
    // only a handover's last words go out.
    let detached = detached
        || edge.as_ref().is_some_and(|edge| {
            edge.borrow_mut()
                .mqtt_mut()
                .is_some_and(|mqtt| mqtt.is_detached())
        });
    if detached {
        let last = edge
            .as_ref()
            .and_then(|edge| edge.borrow_mut().mqtt_mut().map(MqttConn::take_last_words))
            .filter(|last| !last.is_empty());
        if let Some(last) = last {
            let _ = stream.set_write_timeout(Some(CLOSE_FLUSH_TIMEOUT));
            let mut last = vec![last];
            let _ = write_segments(stream, tls.as_ref(), sends, &mut last).await;
        }
    }
    if let Some(edge) = edge.as_ref().filter(|_| !detached) {
        // A WebSocket close frame, bounded like the TLS close below.
        let _ = stream.set_write_timeout(Some(CLOSE_FLUSH_TIMEOUT));
        let last = edge.borrow_mut().close();
        if !last.is_empty() {
            let mut last = vec![Bytes::from(last)];
            let _ = write_segments(stream, tls.as_ref(), sends, &mut last).await;
        }
    }
    if let Some(tls) = tls {
        // A clean TLS close (or the alert for a failed handshake), bounded
        // by the write timeout when the peer does not read.
        let _ = stream.set_write_timeout(Some(CLOSE_FLUSH_TIMEOUT));
        tls.borrow_mut().send_close_notify();
        let _ = flush_tls(stream, tls).await;
    }
    // Unblocks the reader if it is still waiting for input, unless it
    // lingers (then it ends on the peer's close, or its deadline).
    let lingering = edge.as_ref().is_some_and(|edge| {
        edge.borrow_mut()
            .mqtt_mut()
            .is_some_and(|mqtt| mqtt.is_lingering())
    });
    let how = if lingering {
        libc::SHUT_WR
    } else {
        libc::SHUT_RDWR
    };
    // SAFETY: shutdown(2) on a descriptor we own; it does not touch memory.
    unsafe { libc::shutdown(stream.as_raw_fd(), how) };
    let mut shard = shard.borrow_mut();
    if let Some(outbox) = shard.outbox_mut(conn).filter(|_| !persists) {
        // The writer is gone: refuse further frames instead of queueing them.
        outbox.close_with(None);
    }
    Writer::Done
}

/// The next frames of `conn`'s outbox, moved to `batch`: `Some(closing)`
/// once there are some (or the writer was kicked), `None` once the outbox
/// is closing and empty, or gone.
pub(crate) async fn next_batch(
    shard: &Rc<RefCell<Shard>>,
    conn: ConnId,
    batch: &mut Vec<OutFrame>,
) -> Option<bool> {
    poll_fn(|cx| {
        let mut shard = shard.borrow_mut();
        let Some(outbox) = shard.outbox_mut(conn) else {
            return Poll::Ready(None);
        };
        outbox.take_woken();
        let kicked = outbox.take_kick();
        if !outbox.is_empty() || kicked {
            if batch.capacity() == 0 {
                *batch = spares::take_batch();
            }
            outbox.drain_some(batch, WRITE_BATCH_BYTES);
            Poll::Ready(Some(outbox.is_closing()))
        } else if outbox.is_closing() {
            Poll::Ready(None)
        } else {
            outbox.set_writer(cx.waker());
            Poll::Pending
        }
    })
    .await
}

/// Writes every segment, through TLS when the connection has it; returns
/// the (plaintext) bytes written.
async fn write_segments(
    stream: &mut SharedSocket,
    tls: Option<&Tls>,
    sends: &SendBatch,
    segments: &mut Vec<Bytes>,
) -> io::Result<usize> {
    match tls {
        Some(tls) => write_tls(stream, tls, segments).await,
        None => write_all_vectored(stream, sends, segments).await,
    }
}

pub(crate) fn encode_out_frame(frame: OutFrame, head: &mut BytesMut, segments: &mut Vec<Bytes>) {
    match frame {
        OutFrame::Message {
            sub_id,
            epoch,
            seq,
            payload,
        } => {
            // Large payloads (the outbox encodes small ones into runs) go out
            // as their own iovec, shared with every other subscriber; a short
            // one is copied next to its header, because an iovec entry costs
            // more than copying a few hundred bytes.
            encode_message_header(head, sub_id, epoch, seq, payload.len());
            if payload.len() >= ENCODE_BELOW {
                segments.push(head.split().freeze());
                segments.push(payload);
            } else {
                head.extend_from_slice(&payload);
            }
        }
        OutFrame::Encoded(frames) => {
            if !head.is_empty() {
                segments.push(head.split().freeze());
            }
            segments.push(frames);
        }
        other => {
            if let Ok(frame) = other.into_frame() {
                frame.encode(head);
            }
        }
    }
}

/// Writes every segment, in order, then clears `segments`; returns the bytes
/// written.
async fn write_all_vectored(
    stream: &mut SharedSocket,
    sends: &SendBatch,
    segments: &mut Vec<Bytes>,
) -> io::Result<usize> {
    let fd = stream.as_raw_fd();
    // An empty segment would never be written past.
    segments.retain(|segment| !segment.is_empty());
    let total = segments.iter().map(Bytes::len).sum();
    let mut first = 0;
    while first < segments.len() {
        match sends.send(fd, &segments[first..]).await {
            Ok(mut written) => {
                while written > 0 {
                    let segment = &mut segments[first];
                    if written >= segment.len() {
                        written -= segment.len();
                        first += 1;
                    } else {
                        let _ = segment.split_to(written);
                        written = 0;
                    }
                }
            }
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                // Kernel buffer full: let glommio park us until it drains.
                let written = stream.write(&segments[first]).await?;
                if written == 0 {
                    return Err(io::ErrorKind::WriteZero.into());
                }
                let segment = &mut segments[first];
                if written >= segment.len() {
                    first += 1;
                } else {
                    let _ = segment.split_to(written);
                }
            }
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
    segments.clear();
    Ok(total)
}
