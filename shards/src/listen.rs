//! The shards' listening sockets and their accept loops.

use std::future::poll_fn;
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::task::Poll;
use std::time::{Duration, Instant};

use glommio::net::TcpListener;
use tracing::warn;

use crate::log_limit::LogLimit;
use crate::readiness::Readiness;
use crate::routing::ShardId;
use crate::socket::Stream;

/// How long the accept loop waits after a failed accept.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// `accept failed` lines a shard logs per second at most (each carries the
/// count of those not logged since the previous one).
const ACCEPT_ERRORS_LOGGED_PER_SECOND: u32 = 1;

/// Hands every connection of `listener` to `accepted` until `stopped`
/// resolves, then closes the listener and returns what `stopped` returned.
/// `accepted`'s flag says that the connection was taken at the process's
/// open-file limit and is to be refused.
///
/// At the open-file limit an accept fails (EMFILE) and the connection would
/// wait in the backlog, unanswered, until something closed. So the loop
/// keeps one descriptor aside (`/dev/null`, opened again whenever it can
/// be): when an accept fails for want of a descriptor, it closes that one,
/// takes the waiting connection with it and passes it on flagged, and the
/// connection is refused with a typed `too_many_connections` error (when a
/// descriptor turns out to be free by then, it is served). Only when the
/// reserve itself could not be opened again does a connection wait.
///
/// The accept loop is a task of its own, woken only by its socket. glommio's
/// `accept` keeps a clone of the waker from every poll until a connection
/// arrives, so an accept polled beside the runtime's stop check (which wakes
/// its task every `STOP_POLL`) piled up wakers of one task: after 32,767
/// polls, about eleven minutes without a new connection on a shard, the
/// task's 16-bit reference count overflowed and glommio panicked, killing the
/// shard.
///
/// With the shard's readiness ring the loop accepts by itself (non-blocking
/// `accept4`, waiting on the ring) and hands on [`Stream::Own`]s; without
/// it, glommio accepts.
pub(crate) async fn accept_until<T>(
    id: ShardId,
    listener: Listener,
    readiness: Rc<Readiness>,
    mut accepted: impl FnMut(Stream, bool) + 'static,
    stopped: impl std::future::Future<Output = T>,
) -> T {
    let mut acceptor = Acceptor::new(listener, &readiness);
    let accept = glommio::spawn_local(async move {
        let clock = Instant::now();
        let mut log = LogLimit::new(ACCEPT_ERRORS_LOGGED_PER_SECOND, 1000);
        let mut reserve = spare_descriptor();
        // The reserve was given up for the next connection.
        let mut refuse_next = false;
        loop {
            if reserve.is_none() && !refuse_next {
                reserve = spare_descriptor();
            }
            let result = acceptor.accept().await;
            let now_ms = clock.elapsed().as_millis() as u64;
            match result {
                Ok(stream) => {
                    if let Some(suppressed) = log.overdue(now_ms) {
                        warn!(
                            shard = id,
                            suppressed, "accepting again; accept failures not logged"
                        );
                    }
                    let at_limit = std::mem::take(&mut refuse_next) && {
                        reserve = spare_descriptor();
                        reserve.is_none()
                    };
                    accepted(stream, at_limit)
                }
                Err(err) if out_of_descriptors(&err) && reserve.is_some() => {
                    reserve = None;
                    refuse_next = true;
                }
                Err(err) => {
                    // EMFILE, ENFILE, ENOBUFS, ENOMEM: the connection waits
                    // in the backlog until something is freed; retrying at
                    // once would spin, and log, as fast as accept fails.
                    if let Some(suppressed) = log.admit(now_ms) {
                        let backoff_ms = ACCEPT_BACKOFF.as_millis() as u64;
                        warn!(shard = id, %err, suppressed, backoff_ms, "accept failed");
                    }
                    glommio::timer::sleep(ACCEPT_BACKOFF).await;
                }
            }
        }
    });
    let state = stopped.await;
    // The accept loop never ends by itself; the listener closes with it.
    accept.cancel().await;
    state
}

/// A shard's listener and how it waits for connections.
struct Acceptor {
    listener: Listener,
    /// The readiness ring and the listener's token there; `None`: glommio
    /// accepts.
    ring: Option<(Rc<Readiness>, u64)>,
}

impl Drop for Acceptor {
    fn drop(&mut self) {
        // Armed, the listener would stay open (and in its port's group)
        // after its descriptor closes.
        if let Some((readiness, token)) = &self.ring {
            readiness.forget(*token);
        }
    }
}

impl Acceptor {
    fn new(listener: Listener, readiness: &Rc<Readiness>) -> Acceptor {
        let fd = listener.fd;
        // A blocking listener would block the shard in `accept4`.
        // SAFETY: fcntl(2) on a descriptor the listener owns.
        let non_blocking = unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFL);
            flags >= 0 && libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) == 0
        };
        let ring =
            (non_blocking && readiness.uses_ring()).then(|| (readiness.clone(), readiness.token()));
        Acceptor { listener, ring }
    }

    /// The next connection.
    async fn accept(&mut self) -> std::io::Result<Stream> {
        if let Some((readiness, token)) = &self.ring {
            let fd = self.listener.fd;
            let got = poll_fn(|cx| loop {
                // SAFETY: accept4(2) on our listener, without the peer's
                // address; the new descriptor is checked before use.
                let conn = unsafe {
                    libc::accept4(
                        fd,
                        std::ptr::null_mut(),
                        std::ptr::null_mut(),
                        libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                    )
                };
                if conn >= 0 {
                    // SAFETY: a fresh descriptor that nothing else owns.
                    let stream = unsafe { std::net::TcpStream::from_raw_fd(conn) };
                    return Poll::Ready(Some(Ok(Stream::Own(stream))));
                }
                let err = std::io::Error::last_os_error();
                match err.kind() {
                    std::io::ErrorKind::Interrupted | std::io::ErrorKind::ConnectionAborted => {}
                    std::io::ErrorKind::WouldBlock => {
                        return if readiness.wait(*token, fd, cx.waker()) {
                            Poll::Pending
                        } else {
                            Poll::Ready(None)
                        };
                    }
                    _ => return Poll::Ready(Some(Err(err))),
                }
            })
            .await;
            match got {
                Some(result) => return result,
                None => {
                    // The ring failed: glommio accepts from now on.
                    readiness.forget(*token);
                    self.ring = None;
                    // SAFETY: fcntl(2) on the listener's descriptor.
                    unsafe {
                        let flags = libc::fcntl(fd, libc::F_GETFL);
                        libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK);
                    }
                }
            }
        }
        self.listener
            .glommio
            .accept()
            .await
            .map(Stream::Glommio)
            .map_err(std::io::Error::from)
    }
}

/// The descriptor the accept loop keeps aside for the open-file limit.
fn spare_descriptor() -> Option<OwnedFd> {
    // std opens files with O_CLOEXEC.
    std::fs::File::open("/dev/null").ok().map(OwnedFd::from)
}

/// Whether an accept failed for want of a descriptor (the process's or the
/// system's limit).
fn out_of_descriptors(err: &std::io::Error) -> bool {
    matches!(err.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// A shard's listening socket: glommio's listener, and its descriptor
/// (which glommio's type does not give out) for accepting without it.
pub(crate) struct Listener {
    glommio: TcpListener,
    fd: RawFd,
}

impl Listener {
    /// The address it listens on.
    pub(crate) fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.glommio.local_addr().map_err(std::io::Error::from)
    }
}

/// A listening socket with SO_REUSEPORT (every shard binds the same address)
/// and SO_REUSEADDR. glommio's own `bind` sets only the former, which makes a
/// restarted broker fail with "address in use" while connections of the
/// previous run linger in TIME_WAIT. With `steer: Some(shards)`, the group
/// (complete by then) hands each new connection to the listener whose index
/// is half the client's source port modulo `shards` (see `steer`).
pub(crate) fn bind_listener(addr: SocketAddr, steer: Option<usize>) -> std::io::Result<Listener> {
    use socket2::{Domain, Protocol, Socket, Type};
    use std::os::fd::{AsRawFd, IntoRawFd};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    if let Some(shards) = steer {
        if let Err(err) = crate::steer::by_source_port(socket.as_raw_fd(), shards) {
            // Not fatal: the kernel's hash spreads connections instead, and
            // clients asking for a shard land where the hash puts them.
            warn!(%err, "cannot steer connections by source port; clients cannot choose their shard");
        }
    }
    let fd = socket.into_raw_fd();
    // SAFETY: the descriptor is a bound, listening TCP socket that we own;
    // the listener takes it over and closes it when dropped.
    let glommio = unsafe { TcpListener::from_raw_fd(fd) };
    Ok(Listener { glommio, fd })
}

/// Pending connections per shard listener (the kernel caps it at
/// net.core.somaxconn; `corebus doctor` checks that).
pub const LISTEN_BACKLOG: i32 = 4096;

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::rc::Rc;

    use glommio::LocalExecutorBuilder;

    /// A shard whose listener sees no connection for a long time: the stop
    /// check keeps waking, and the accept must not keep a waker per wake-up
    /// (before the fix, 32,767 wake-ups panicked inside glommio).
    #[test]
    fn a_listener_idle_through_many_stop_checks_still_accepts_then_closes() {
        idle_listener_accepts_then_closes(true);
    }

    #[test]
    fn without_the_readiness_ring_glommio_accepts_the_same() {
        idle_listener_accepts_then_closes(false);
    }

    fn idle_listener_accepts_then_closes(ring: bool) {
        LocalExecutorBuilder::default()
            .spawn(move || async move {
                let readiness = Rc::new(if ring {
                    Readiness::new()
                } else {
                    Readiness::without_ring()
                });
                assert_eq!(readiness.uses_ring(), ring);
                glommio::spawn_local(readiness.clone().run()).detach();
                let listener =
                    bind_listener("127.0.0.1:0".parse().expect("address"), None).expect("bind");
                let addr = listener.local_addr().expect("address");
                let accepted = Rc::new(Cell::new(0));
                let on_accept = {
                    let accepted = accepted.clone();
                    move |stream: Stream, _at_limit| {
                        assert_eq!(matches!(stream, Stream::Own(_)), ring);
                        accepted.set(accepted.get() + 1);
                    }
                };
                let checks = Cell::new(0u32);
                let stopped = async {
                    loop {
                        let count = checks.get() + 1;
                        checks.set(count);
                        if count == 20_000 {
                            // The kernel completes the handshake; the accept
                            // loop takes it on its next turn.
                            let _client = std::net::TcpStream::connect(addr).expect("connect");
                            while accepted.get() == 0 {
                                futures_lite::future::yield_now().await;
                            }
                        }
                        if count == 40_000 {
                            return count;
                        }
                        futures_lite::future::yield_now().await;
                    }
                };
                assert_eq!(
                    accept_until(0, listener, readiness.clone(), on_accept, stopped).await,
                    40_000
                );
                assert_eq!(readiness.armed(), 0, "the listener was disarmed");
                assert_eq!(accepted.get(), 1);
                assert!(
                    std::net::TcpStream::connect(addr).is_err(),
                    "the listener is closed once the accept loop stops"
                );
            })
            .expect("executor")
            .join()
            .expect("the executor ran to its end");
    }
}
