//! Which of a shard's sockets have bytes to read, from one io_uring of the
//! shard's own.
//!
//! A connection whose socket is empty waits for it to become readable. With
//! glommio's streams every such wait is a poll request of glommio's reactor
//! with its own source, about half a KiB per idle connection (issue 32: an
//! idle connection should cost no more than Mosquitto's 0.7 KiB, all
//! included). Here a socket is armed once, with a multishot `POLL_ADD` on
//! the shard's readiness ring: the kernel keeps that request (its memory is
//! the kernel's, not the broker's) and posts a completion each time bytes
//! arrive, for as long as the socket lives. The shard keeps one waker per
//! waiting socket. A task of the shard ([`Readiness::run`]) waits for the
//! ring's completions through an eventfd the kernel signals with each one,
//! read through glommio, and wakes the sockets' readers.
//!
//! Edge-triggered use: a completion says "bytes arrived", so a reader reads
//! until `EAGAIN` before it waits ([`Readiness::wait`] is called only then,
//! within the same poll as the `EAGAIN`: nothing can arrive unseen between
//! the two on the shard's one thread). A completion for a socket nobody waits
//! on is dropped: its reader has not yet read what it announces.
//!
//! A socket is disarmed (`POLL_REMOVE`) before its descriptor closes: the
//! armed request holds a reference to the socket, which would otherwise stay
//! open in the kernel.
//!
//! Without the ring (the kernel will not create it, or its eventfd fails),
//! [`Readiness::wait`] says so and the socket waits through glommio as
//! before.

use std::cell::RefCell;
use std::os::fd::{AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::task::Waker;

use io_uring::{cqueue, opcode, types, IoUring};
use rustc_hash::FxHashMap;
use tracing::warn;

/// Submission entries: one arm or disarm at a time is submitted at once, so
/// a few suffice.
const RING_ENTRIES: u32 = 64;
/// Completion entries: a completion per socket that received bytes since the
/// last drain. Past it the kernel keeps the overflow (and the drain flushes
/// it), or ends a socket's multishot request, which is then armed again.
const COMPLETION_ENTRIES: u32 = 8192;
/// The `user_data` of disarm requests, whose own completions are ignored.
/// Socket tokens start at 1.
const DISARM: u64 = 0;
/// Set in the `user_data` of a socket's wait for room to write (its token
/// has the bit clear).
const WRITABLE: u64 = 1 << 63;

/// A shard's readiness ring and the sockets waiting on it.
pub struct Readiness {
    inner: RefCell<Inner>,
}

struct Inner {
    /// `None` when io_uring or the eventfd is unavailable, or the task that
    /// reads the eventfd failed: sockets wait through glommio.
    ring: Option<Ring>,
    /// Armed sockets, by token, with the waker of a reader waiting on one.
    armed: FxHashMap<u64, Option<Waker>>,
    next_token: u64,
}

struct Ring {
    ring: IoUring,
    eventfd: OwnedFd,
}

impl Readiness {
    /// A shard's readiness ring, or the fallback to glommio's polls when the
    /// kernel will not create one. Its task ([`Readiness::run`]) must run on
    /// the shard for waits to end.
    pub fn new() -> Readiness {
        let ring = match Ring::new() {
            Ok(ring) => Some(ring),
            Err(err) => {
                warn!(%err, "cannot create the readiness ring; sockets wait through glommio");
                None
            }
        };
        Readiness {
            inner: RefCell::new(Inner {
                ring,
                ..Readiness::without_ring().inner.into_inner()
            }),
        }
    }

    /// Readiness without a ring: every socket waits through glommio.
    pub fn without_ring() -> Readiness {
        Readiness {
            inner: RefCell::new(Inner {
                ring: None,
                armed: FxHashMap::default(),
                next_token: DISARM + 1,
            }),
        }
    }

    /// A token for a new socket, to name it in [`Readiness::wait`] and
    /// [`Readiness::forget`].
    pub fn token(&self) -> u64 {
        let mut inner = self.inner.borrow_mut();
        let token = inner.next_token;
        inner.next_token += 1;
        token
    }

    /// Whether sockets wait on the ring (not through glommio).
    pub fn uses_ring(&self) -> bool {
        self.inner.borrow().ring.is_some()
    }

    /// Requests armed on the ring: sockets read, and writes waiting.
    pub fn armed(&self) -> usize {
        self.inner.borrow().armed.len()
    }

    /// Makes `waker` the one woken when bytes next arrive on `fd` (named by
    /// `token`), which a read just found empty; arms the socket first if it
    /// is not armed. `false` when there is no ring (or arming failed): the
    /// caller waits some other way.
    pub fn wait(&self, token: u64, fd: RawFd, waker: &Waker) -> bool {
        self.wait_for(token, fd, libc::POLLIN, waker)
    }

    /// Makes `waker` the one woken when `fd` (named by `token`), whose
    /// write just found its buffer full, has room again: a one-shot request,
    /// since a socket with room would otherwise complete one at every
    /// acknowledgement. `false` when there is no ring (or the request
    /// failed).
    pub fn wait_writable(&self, token: u64, fd: RawFd, waker: &Waker) -> bool {
        self.wait_for(token | WRITABLE, fd, libc::POLLOUT, waker)
    }

    /// [`Readiness::wait`] (`POLLIN`, multishot, armed once) and
    /// [`Readiness::wait_writable`] (`POLLOUT`, one-shot).
    fn wait_for(&self, token: u64, fd: RawFd, event: libc::c_short, waker: &Waker) -> bool {
        let mut inner = self.inner.borrow_mut();
        let inner = &mut *inner;
        let Some(ring) = inner.ring.as_mut() else {
            return false;
        };
        if let Some(waiting) = inner.armed.get_mut(&token) {
            match waiting {
                Some(waiting) if waiting.will_wake(waker) => {}
                _ => *waiting = Some(waker.clone()),
            }
            return true;
        }
        let arm = opcode::PollAdd::new(types::Fd(fd), event as u32)
            .multi(event == libc::POLLIN)
            .build()
            .user_data(token);
        if let Err(err) = ring.submit_one(&arm) {
            warn!(%err, "cannot arm a socket on the readiness ring; it waits some other way");
            return false;
        }
        inner.armed.insert(token, Some(waker.clone()));
        true
    }

    /// Lets go of every waker waiting (the shard stops). A parked reader
    /// lives inside its waker and holds its socket open; dropped, it closes
    /// the socket, whose request is then disarmed as any other.
    pub fn release_waiting(&self) {
        let waiting: Vec<Waker> = self
            .inner
            .borrow_mut()
            .armed
            .values_mut()
            .filter_map(Option::take)
            .collect();
        drop(waiting);
    }

    /// Disarms a socket that is about to close: its reader and writer wait
    /// no more.
    pub fn forget(&self, token: u64) {
        let mut inner = self.inner.borrow_mut();
        let inner = &mut *inner;
        for token in [token, token | WRITABLE] {
            if inner.armed.remove(&token).is_none() {
                continue;
            }
            if let Some(ring) = inner.ring.as_mut() {
                let disarm = opcode::PollRemove::new(token).build().user_data(DISARM);
                if let Err(err) = ring.submit_one(&disarm) {
                    // The kernel would keep the socket open; nothing else
                    // can release it.
                    warn!(%err, "cannot disarm a closing socket on the readiness ring");
                }
            }
        }
    }

    /// Wakes the readers of sockets that received bytes; a socket whose
    /// multishot request ended is armed again by its reader's next wait.
    fn drain(&self) {
        let mut woken = Vec::new();
        {
            let mut inner = self.inner.borrow_mut();
            let inner = &mut *inner;
            let Some(ring) = inner.ring.as_mut() else {
                return;
            };
            if ring.ring.submission().cq_overflow() {
                // Completions the ring had no room for wait in the kernel
                // until an enter asks for events, which `submit` does when
                // the ring says it overflowed.
                let _ = ring.ring.submit();
            }
            for entry in ring.ring.completion() {
                let token = entry.user_data();
                if token == DISARM {
                    continue;
                }
                let more = cqueue::more(entry.flags());
                let waker = if more {
                    inner.armed.get_mut(&token).and_then(Option::take)
                } else {
                    inner.armed.remove(&token).flatten()
                };
                woken.extend(waker);
            }
        }
        for waker in woken {
            waker.wake();
        }
    }

    /// The shard's task that waits for the ring's completions and wakes
    /// their readers. If reading the eventfd fails, every waiting reader is
    /// woken and sockets wait through glommio from then on.
    pub async fn run(self: Rc<Readiness>) {
        // glommio's file owns a duplicate of the eventfd and closes it.
        let duplicate = match self.inner.borrow().ring.as_ref() {
            None => return,
            Some(ring) => ring.eventfd.try_clone(),
        };
        let failed = match duplicate {
            Err(err) => err,
            Ok(eventfd) => {
                // SAFETY: a descriptor the file takes over.
                let file = unsafe { glommio::io::BufferedFile::from_raw_fd(eventfd.into_raw_fd()) };
                loop {
                    self.drain();
                    if let Err(err) = file.read_at(0, 8).await {
                        break std::io::Error::from(err);
                    }
                }
            }
        };
        warn!(err = %failed, "the readiness ring's eventfd failed; sockets wait through glommio");
        let (ring, waiting) = {
            let mut inner = self.inner.borrow_mut();
            let waiting: Vec<Waker> = inner.armed.drain().filter_map(|(_, w)| w).collect();
            (inner.ring.take(), waiting)
        };
        // Dropping the ring cancels its armed requests.
        drop(ring);
        for waker in waiting {
            waker.wake();
        }
    }
}

impl std::fmt::Debug for Readiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let inner = self.inner.borrow();
        f.debug_struct("Readiness")
            .field("ring", &inner.ring.is_some())
            .field("armed", &inner.armed.len())
            .finish()
    }
}

impl Default for Readiness {
    fn default() -> Self {
        Readiness::new()
    }
}

impl Ring {
    fn new() -> std::io::Result<Ring> {
        let ring = IoUring::builder()
            .setup_cqsize(COMPLETION_ENTRIES)
            .build(RING_ENTRIES)?;
        // SAFETY: eventfd(2) with valid flags; the result is checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor that nothing else owns.
        let eventfd = unsafe { OwnedFd::from_raw_fd(fd) };
        ring.submitter().register_eventfd(eventfd.as_raw_fd())?;
        Ok(Ring { ring, eventfd })
    }

    /// Submits one entry at once.
    fn submit_one(&mut self, entry: &io_uring::squeue::Entry) -> std::io::Result<()> {
        // SAFETY: a poll entry refers to no memory of ours.
        if unsafe { self.ring.submission().push(entry) }.is_err() {
            // Full: submit what is queued and try once more.
            self.ring.submit()?;
            // SAFETY: as above.
            unsafe { self.ring.submission().push(entry) }
                .map_err(|_| std::io::Error::other("the readiness ring is full"))?;
        }
        self.ring.submit()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::os::unix::net::UnixStream;
    use std::time::{Duration, Instant};

    use super::*;
    use crate::wakes::{counting_waker, Wakes};

    /// Drains until `count` reaches `want` (the kernel posts completions
    /// asynchronously), for at most two seconds; the count reached.
    fn drain_until(readiness: &Readiness, count: &Wakes, want: usize) -> usize {
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            readiness.drain();
            let now = count.count();
            if now >= want || Instant::now() > deadline {
                return now;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn a_waiting_reader_is_woken_when_bytes_arrive_and_only_then() {
        let readiness = Readiness::new();
        assert!(
            readiness.uses_ring(),
            "io_uring is available where corebus runs"
        );
        let (ours, mut theirs) = UnixStream::pair().expect("pair");
        let token = readiness.token();
        let (count, waker) = counting_waker();
        assert!(readiness.wait(token, ours.as_raw_fd(), &waker));
        assert_eq!(readiness.armed(), 1);
        std::thread::sleep(Duration::from_millis(20));
        readiness.drain();
        assert_eq!(count.count(), 0, "nothing arrived");
        theirs.write_all(b"one").expect("write");
        assert_eq!(drain_until(&readiness, &count, 1), 1, "woken once");
        // Bytes that arrive while nobody waits wake nobody: the reader
        // reads them before it waits again.
        theirs.write_all(b"two").expect("write");
        std::thread::sleep(Duration::from_millis(20));
        readiness.drain();
        assert_eq!(count.count(), 1);
        // The socket stays armed: the next wait needs no new request.
        assert!(readiness.wait(token, ours.as_raw_fd(), &waker));
        assert_eq!(readiness.armed(), 1);
        theirs.write_all(b"three").expect("write");
        assert_eq!(drain_until(&readiness, &count, 2), 2, "woken again");
    }

    #[test]
    fn a_forgotten_socket_closes_and_wakes_nobody() {
        let readiness = Readiness::new();
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let mut theirs = TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (ours, _) = listener.accept().expect("accept");
        let token = readiness.token();
        let (count, waker) = counting_waker();
        assert!(readiness.wait(token, ours.as_raw_fd(), &waker));
        readiness.forget(token);
        assert_eq!(readiness.armed(), 0);
        drop(ours);
        // Armed, the request would hold the socket open in the kernel, and
        // the peer would not see the close.
        theirs
            .set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        let mut byte = [0u8; 1];
        assert_eq!(theirs.read(&mut byte).expect("the close arrives"), 0);
        theirs.write_all(b"late").ok();
        std::thread::sleep(Duration::from_millis(20));
        readiness.drain();
        assert_eq!(count.count(), 0);
    }
}
