//! One shard's socket sends, gathered and handed to the kernel together.
//!
//! A published message with sixteen local subscribers wakes sixteen writer
//! tasks; each used to make its own `sendmsg` call. Each of those calls can
//! wake a reader on this core, and the kernel may switch to that reader on the
//! way back from the call, so the rest of the fan-out waited behind the first
//! reader's turn, and so on down the list. Now a writer that finds other
//! writers woken and about to run ([`crate::outbox::writers_woken`]) only
//! queues its send ([`SendBatch::send`]); a flusher task, woken by the first
//! of them and so run after the writers woken with it, hands every queued send
//! to the kernel in one `io_uring_enter`: one system call, one return to user
//! space, and the whole fan-out has left before anything else runs on this
//! core. A writer alone (one connection's stream) sends at once, as before.
//!
//! Every send is non-blocking (`MSG_DONTWAIT`): io_uring completes it at
//! once, with the bytes taken or `EAGAIN`, never parking it. So a flush is
//! synchronous: when it returns, every send it submitted has its result, and
//! no buffer is in the kernel's hands across an `await`. A writer whose future
//! is dropped before the flush simply leaves the queue.
//!
//! Without io_uring (the ring cannot be created, or the kernel refuses a
//! submission), or for a single queued send, the flusher calls `sendmsg`
//! itself: the same results, one call per send.

use std::cell::RefCell;
use std::future::{poll_fn, Future};
use std::io;
use std::os::fd::RawFd;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use io_uring::{opcode, types, IoUring};
use tracing::warn;

use crate::outbox::writers_woken;

/// Submission queue entries: the most sends one `io_uring_enter` carries. More
/// queued sends leave in several calls of one flush.
const RING_ENTRIES: u32 = 256;
/// The most segments one send carries (the kernel's `UIO_MAXIOV` is 1024).
pub const MAX_IOVECS: usize = 1024;
/// Flags of every send: never block, never raise SIGPIPE.
const SEND_FLAGS: libc::c_int = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;

/// How a shard's sends went out, since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SendStats {
    /// Sends made at once, one `sendmsg` each: a writer alone in its turn, a
    /// flush of one send, or no ring.
    pub at_once: u64,
    /// Sends that left in a shared io_uring submission.
    pub gathered: u64,
    /// io_uring submissions that carried gathered sends.
    pub submissions: u64,
}

/// A shard's queue of sends and the ring that submits them.
pub struct SendBatch {
    inner: RefCell<Inner>,
}

struct Inner {
    /// `None` when io_uring is unavailable: sends go out one call each.
    ring: Option<IoUring>,
    /// Send slots; a slot is reused once its writer took the result.
    slots: Vec<Slot>,
    free: Vec<usize>,
    /// Slots waiting for the flusher, in the order they were queued.
    queued: Vec<usize>,
    flusher: Option<Waker>,
    /// Message headers of the sends in flight in one submission.
    headers: Vec<libc::msghdr>,
    /// The iovecs of a send made at once.
    scratch: Vec<libc::iovec>,
    stats: SendStats,
}

#[derive(Default)]
struct Slot {
    fd: RawFd,
    /// Points into the writer's segments, which its pending future borrows.
    iovecs: Vec<libc::iovec>,
    state: SlotState,
    writer: Option<Waker>,
}

#[derive(Default)]
enum SlotState {
    #[default]
    Free,
    Queued,
    Done(io::Result<usize>),
}

impl SendBatch {
    /// A batch with its own small io_uring, or without one (plain `sendmsg`)
    /// when the kernel will not create it.
    pub fn new() -> SendBatch {
        let ring = match IoUring::builder().setup_submit_all().build(RING_ENTRIES) {
            Ok(ring) => Some(ring),
            Err(err) => {
                warn!(%err, "cannot create the send ring; sending with one call per connection");
                None
            }
        };
        SendBatch::with_ring(ring)
    }

    /// A batch that sends with one `sendmsg` per connection.
    pub fn without_ring() -> SendBatch {
        SendBatch::with_ring(None)
    }

    fn with_ring(ring: Option<IoUring>) -> SendBatch {
        SendBatch {
            inner: RefCell::new(Inner {
                ring,
                slots: Vec::new(),
                free: Vec::new(),
                queued: Vec::new(),
                flusher: None,
                headers: Vec::with_capacity(RING_ENTRIES as usize),
                scratch: Vec::new(),
                stats: SendStats::default(),
            }),
        }
    }

    /// Whether sends go through io_uring.
    pub fn uses_ring(&self) -> bool {
        self.inner.borrow().ring.is_some()
    }

    /// How the sends went out so far.
    pub fn stats(&self) -> SendStats {
        self.inner.borrow().stats
    }

    /// Sends up to [`MAX_IOVECS`] of `segments`, in order, on `fd`: at the
    /// next flush when other writers are woken or sends are queued, else at
    /// once. Resolves to the bytes the kernel took (possibly fewer than
    /// offered) or the error, `WouldBlock` when the socket buffer is full.
    pub fn send<'a>(&'a self, fd: RawFd, segments: &'a [Bytes]) -> Send<'a> {
        Send {
            batch: self,
            fd,
            segments,
            slot: None,
        }
    }

    /// The flusher: runs for the shard's life, flushing whenever sends are
    /// queued. Spawn it once per batch, on the batch's executor.
    pub async fn run_flusher(self: Rc<Self>) {
        loop {
            poll_fn(|cx| {
                let mut inner = self.inner.borrow_mut();
                if inner.queued.is_empty() {
                    inner.flusher = Some(cx.waker().clone());
                    Poll::Pending
                } else {
                    Poll::Ready(())
                }
            })
            .await;
            self.flush();
        }
    }

    /// Sends everything queued and wakes the writers with their results.
    pub fn flush(&self) {
        let mut inner = self.inner.borrow_mut();
        let mut queued = std::mem::take(&mut inner.queued);
        let mut rest: &[usize] = &queued;
        while !rest.is_empty() {
            let take = rest.len().min(RING_ENTRIES as usize);
            let (now, later) = rest.split_at(take);
            inner.submit(now);
            rest = later;
        }
        for &index in &queued {
            if let Some(writer) = inner.slots[index].writer.take() {
                writer.wake();
            }
        }
        // Nothing queues while the flush holds the batch: keep the
        // allocation for the next one.
        queued.clear();
        inner.queued = queued;
    }
}

impl Default for SendBatch {
    fn default() -> Self {
        SendBatch::new()
    }
}

impl Inner {
    fn enqueue(&mut self, fd: RawFd, segments: &[Bytes], writer: &Waker) -> usize {
        let index = match self.free.pop() {
            Some(index) => index,
            None => {
                self.slots.push(Slot::default());
                self.slots.len() - 1
            }
        };
        let slot = &mut self.slots[index];
        slot.fd = fd;
        fill_iovecs(&mut slot.iovecs, segments);
        slot.state = SlotState::Queued;
        slot.writer = Some(writer.clone());
        self.queued.push(index);
        if let Some(flusher) = self.flusher.take() {
            flusher.wake();
        }
        index
    }

    fn release(&mut self, index: usize) {
        let slot = &mut self.slots[index];
        if matches!(slot.state, SlotState::Queued) {
            self.queued.retain(|&queued| queued != index);
        }
        slot.state = SlotState::Free;
        slot.writer = None;
        slot.iovecs.clear();
        self.free.push(index);
    }

    /// Sends `indices` (at most [`RING_ENTRIES`]) and records their results.
    fn submit(&mut self, indices: &[usize]) {
        if indices.len() > 1 && self.ring.is_some() {
            match self.submit_ring(indices) {
                Ok(()) => {
                    self.stats.gathered += indices.len() as u64;
                    self.stats.submissions += 1;
                    return;
                }
                Err(err) => {
                    // Nothing of this submission reached the kernel (see
                    // submit_ring); carry on without the ring.
                    warn!(%err, "the send ring failed; sending with one call per connection");
                    self.ring = None;
                }
            }
        }
        for &index in indices {
            let slot = &mut self.slots[index];
            slot.state = SlotState::Done(send_direct(slot.fd, &slot.iovecs));
        }
        self.stats.at_once += indices.len() as u64;
    }

    /// One submission of `indices`, waiting for every completion. Fails only
    /// when the kernel took none of the entries.
    fn submit_ring(&mut self, indices: &[usize]) -> io::Result<()> {
        let Inner {
            ring,
            slots,
            headers,
            ..
        } = self;
        let Some(ring) = ring.as_mut() else {
            return Err(io::ErrorKind::Unsupported.into());
        };
        // Every header is in place before the first entry points at one, and
        // `headers` is not touched again until every completion is in.
        headers.clear();
        for &index in indices {
            let iovecs = &slots[index].iovecs;
            // SAFETY: an all-zero msghdr is valid (no address, no control data).
            let mut header: libc::msghdr = unsafe { std::mem::zeroed() };
            header.msg_iov = iovecs.as_ptr() as *mut libc::iovec;
            header.msg_iovlen = iovecs.len() as _;
            headers.push(header);
        }
        {
            let mut submission = ring.submission();
            for (position, &index) in indices.iter().enumerate() {
                let entry = opcode::SendMsg::new(types::Fd(slots[index].fd), &headers[position])
                    .flags(SEND_FLAGS as u32)
                    .build()
                    .user_data(index as u64);
                // SAFETY: the header, its iovecs and the bytes they point at
                // stay alive and unmoved until this entry's completion is
                // reaped below, before this function returns: the iovecs
                // belong to a queued slot whose writer's future (which
                // borrows the segments) is pending, and the flush runs to
                // its end without yielding.
                if unsafe { submission.push(&entry) }.is_err() {
                    // Cannot happen: at most RING_ENTRIES per submission and
                    // the queue is empty between submissions.
                    return Err(io::Error::other("send ring full"));
                }
            }
        }
        let mut outstanding = indices.len();
        let mut submitted_any = false;
        while outstanding > 0 {
            // Non-blocking sends complete during submission; wait only if
            // the kernel ever deferred one.
            let wait = usize::from(submitted_any);
            match ring.submit_and_wait(wait) {
                Ok(_) => submitted_any = true,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) if !submitted_any => {
                    // The entries stay unsubmitted in the queue; the ring is
                    // dropped by the caller, so they never run.
                    return Err(err);
                }
                Err(err) => {
                    // Entries are in the kernel: their completions must be
                    // waited for, whatever the error on the way.
                    warn!(%err, "waiting for send completions");
                    continue;
                }
            }
            for completion in ring.completion() {
                let index = completion.user_data() as usize;
                let result = completion.result();
                slots[index].state = SlotState::Done(if result < 0 {
                    Err(io::Error::from_raw_os_error(-result))
                } else {
                    Ok(result as usize)
                });
                outstanding -= 1;
            }
        }
        Ok(())
    }
}

/// Points `iovecs` at up to [`MAX_IOVECS`] of `segments`.
fn fill_iovecs(iovecs: &mut Vec<libc::iovec>, segments: &[Bytes]) {
    iovecs.clear();
    iovecs.extend(
        segments[..segments.len().min(MAX_IOVECS)]
            .iter()
            .map(|segment| libc::iovec {
                iov_base: segment.as_ptr() as *mut libc::c_void,
                iov_len: segment.len(),
            }),
    );
}

/// One non-blocking `sendmsg` of `iovecs` on `fd`.
pub(crate) fn send_direct(fd: RawFd, iovecs: &[libc::iovec]) -> io::Result<usize> {
    // SAFETY: a zeroed msghdr is valid; we then point it at `iovecs`, which
    // outlives the call and describes live, immutable buffers.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iovecs.as_ptr() as *mut libc::iovec;
    msg.msg_iovlen = iovecs.len() as _;
    // SAFETY: `msg` is fully initialised and the buffers are valid for reads.
    let sent = unsafe { libc::sendmsg(fd, &msg, SEND_FLAGS) };
    if sent < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(sent as usize)
    }
}

/// A queued send; see [`SendBatch::send`].
pub struct Send<'a> {
    batch: &'a SendBatch,
    fd: RawFd,
    segments: &'a [Bytes],
    slot: Option<usize>,
}

impl Future for Send<'_> {
    type Output = io::Result<usize>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let mut inner = this.batch.inner.borrow_mut();
        let Some(index) = this.slot else {
            if inner.queued.is_empty() && writers_woken() == 0 {
                // No other writer will send this turn: nothing to gather.
                let Inner { scratch, stats, .. } = &mut *inner;
                fill_iovecs(scratch, this.segments);
                stats.at_once += 1;
                return Poll::Ready(send_direct(this.fd, scratch));
            }
            this.slot = Some(inner.enqueue(this.fd, this.segments, cx.waker()));
            return Poll::Pending;
        };
        let slot = &mut inner.slots[index];
        match std::mem::take(&mut slot.state) {
            SlotState::Done(result) => {
                inner.release(index);
                this.slot = None;
                Poll::Ready(result)
            }
            state => {
                slot.state = state;
                slot.writer = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

impl Drop for Send<'_> {
    fn drop(&mut self) {
        if let Some(index) = self.slot.take() {
            self.batch.inner.borrow_mut().release(index);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::{OutFrame, Outbox};
    use crate::wakes::counting_waker;
    use std::io::Read;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;

    fn poll_once<F: Future + Unpin>(future: &mut F, waker: &Waker) -> Poll<F::Output> {
        Pin::new(future).poll(&mut Context::from_waker(waker))
    }

    /// `count` outboxes whose parked writers a frame has just woken, as the
    /// engine's fan-out of one message does.
    fn woken_writers(count: usize) -> Vec<Outbox> {
        let (_, waker) = counting_waker();
        (0..count)
            .map(|_| {
                let mut outbox = Outbox::new(1 << 20);
                outbox.set_writer(&waker);
                outbox.push(OutFrame::Ping(7)).expect("room");
                outbox
            })
            .collect()
    }

    /// Connected pairs: we send on the first, read the second.
    fn pairs(count: usize) -> Vec<(UnixStream, UnixStream)> {
        (0..count)
            .map(|_| {
                let (ours, theirs) = UnixStream::pair().expect("socket pair");
                theirs.set_nonblocking(true).expect("non-blocking");
                (ours, theirs)
            })
            .collect()
    }

    fn read_all(stream: &mut UnixStream) -> Vec<u8> {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
                Err(err) => panic!("read: {err}"),
            }
        }
        got
    }

    /// The sends of writers woken together wait for one flush, then each
    /// arrives whole and in its segments' order, and every writer is woken
    /// with its byte count.
    fn many_writers_one_flush(batch: &SendBatch) {
        let mut sockets = pairs(300);
        let mut outboxes = woken_writers(sockets.len());
        assert_eq!(writers_woken(), sockets.len());
        let segments: Vec<Vec<Bytes>> = (0..sockets.len())
            .map(|i| {
                vec![
                    Bytes::from(format!("head-{i}|")),
                    Bytes::from(vec![b'x'; i % 7]),
                    Bytes::from_static(b"|tail"),
                ]
            })
            .collect();
        let (woken, waker) = counting_waker();
        let mut sends: Vec<Send<'_>> = sockets
            .iter()
            .zip(&segments)
            .map(|((ours, _), segments)| batch.send(ours.as_raw_fd(), segments))
            .collect();
        for (send, outbox) in sends.iter_mut().zip(&mut outboxes) {
            // The writer runs: it is no longer waiting to, then sends.
            outbox.take_woken();
            assert!(
                poll_once(send, &waker).is_pending(),
                "nothing leaves before the flush"
            );
        }
        assert_eq!(writers_woken(), 0);
        for (_, theirs) in &mut sockets {
            assert!(read_all(theirs).is_empty());
        }
        let before = batch.stats();
        batch.flush();
        let after = batch.stats();
        if batch.uses_ring() {
            // 300 sends: two submissions of at most RING_ENTRIES.
            assert_eq!(after.gathered - before.gathered, sockets.len() as u64);
            assert_eq!(after.submissions - before.submissions, 2);
        } else {
            assert_eq!(after.at_once - before.at_once, sockets.len() as u64);
        }
        assert_eq!(woken.count(), sockets.len());
        for (i, send) in sends.iter_mut().enumerate() {
            let expected: usize = segments[i].iter().map(Bytes::len).sum();
            match poll_once(send, &waker) {
                Poll::Ready(Ok(sent)) => assert_eq!(sent, expected),
                other => panic!("send {i}: {other:?}"),
            }
        }
        drop(sends);
        for (i, (_, theirs)) in sockets.iter_mut().enumerate() {
            let expected: Vec<u8> = segments[i].iter().flat_map(|s| s.to_vec()).collect();
            assert_eq!(read_all(theirs), expected, "socket {i}");
        }
    }

    #[test]
    fn sends_of_writers_woken_together_leave_in_one_flush() {
        let batch = SendBatch::new();
        assert!(
            batch.uses_ring(),
            "io_uring is available where corebus runs"
        );
        many_writers_one_flush(&batch);
        // The slots are reused, and a second round behaves the same.
        many_writers_one_flush(&batch);
    }

    #[test]
    fn without_a_ring_the_results_are_the_same() {
        let batch = SendBatch::without_ring();
        assert!(!batch.uses_ring());
        many_writers_one_flush(&batch);
    }

    #[test]
    fn a_writer_alone_sends_at_once() {
        let batch = SendBatch::new();
        let (ours, mut theirs) = UnixStream::pair().expect("pair");
        theirs.set_nonblocking(true).expect("non-blocking");
        let segments = vec![Bytes::from_static(b"now")];
        let (_, waker) = counting_waker();
        let mut send = batch.send(ours.as_raw_fd(), &segments);
        assert!(matches!(poll_once(&mut send, &waker), Poll::Ready(Ok(3))));
        assert_eq!(read_all(&mut theirs), b"now");
        assert_eq!(
            batch.stats(),
            SendStats {
                at_once: 1,
                ..SendStats::default()
            }
        );
    }

    #[test]
    fn a_full_socket_answers_would_block_and_a_closed_one_its_error() {
        let batch = SendBatch::new();
        let (ours_full, _theirs_full) = UnixStream::pair().expect("pair");
        let (ours_closed, theirs_closed) = UnixStream::pair().expect("pair");
        drop(theirs_closed);
        let big = vec![Bytes::from(vec![0u8; 1 << 20])];
        let (_, waker) = counting_waker();
        // Fill the first socket's buffer.
        loop {
            match poll_once(&mut batch.send(ours_full.as_raw_fd(), &big), &waker) {
                Poll::Ready(Ok(_)) => continue,
                Poll::Ready(Err(err)) => {
                    assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
                    break;
                }
                Poll::Pending => panic!("a writer alone sends at once"),
            }
        }
        let mut outboxes = woken_writers(2);
        let small = vec![Bytes::from_static(b"x")];
        let mut full = batch.send(ours_full.as_raw_fd(), &small);
        let mut closed = batch.send(ours_closed.as_raw_fd(), &small);
        outboxes[0].take_woken();
        assert!(poll_once(&mut full, &waker).is_pending());
        outboxes[1].take_woken();
        assert!(poll_once(&mut closed, &waker).is_pending());
        batch.flush();
        match poll_once(&mut full, &waker) {
            Poll::Ready(Err(err)) => assert_eq!(err.kind(), io::ErrorKind::WouldBlock),
            other => panic!("full socket: {other:?}"),
        }
        match poll_once(&mut closed, &waker) {
            Poll::Ready(Err(err)) => assert_eq!(err.kind(), io::ErrorKind::BrokenPipe),
            other => panic!("closed socket: {other:?}"),
        }
    }

    #[test]
    fn a_dropped_send_never_leaves() {
        let batch = SendBatch::new();
        let mut sockets = pairs(2);
        let _outboxes = woken_writers(1);
        let gone = vec![Bytes::from_static(b"gone")];
        let kept = vec![Bytes::from_static(b"kept")];
        let (_, waker) = counting_waker();
        let mut dropped = batch.send(sockets[0].0.as_raw_fd(), &gone);
        let mut sent = batch.send(sockets[1].0.as_raw_fd(), &kept);
        assert!(poll_once(&mut dropped, &waker).is_pending());
        assert!(poll_once(&mut sent, &waker).is_pending());
        drop(dropped);
        batch.flush();
        assert!(matches!(poll_once(&mut sent, &waker), Poll::Ready(Ok(4))));
        assert!(
            read_all(&mut sockets[0].1).is_empty(),
            "the dropped send left"
        );
        assert_eq!(read_all(&mut sockets[1].1), b"kept");
    }

    #[test]
    fn a_closed_outbox_no_longer_counts_as_woken() {
        let outboxes = woken_writers(3);
        assert_eq!(writers_woken(), 3);
        drop(outboxes);
        assert_eq!(writers_woken(), 0);
    }
}
