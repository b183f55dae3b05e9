//! One TCP socket shared by the two tasks of a connection: the reader reads
//! it while the writer writes it.
//!
//! glommio's `TcpStream` takes `&mut self` for both directions, but it keeps
//! a separate io_uring readiness source and timeout for each, so a read and
//! a write may be pending at once. [`SharedSocket`] gives both tasks the
//! same stream behind an `Rc<RefCell<..>>` that is borrowed only for the
//! length of one `poll_read` or `poll_write`, never across an await. A
//! connection thus holds one file descriptor, where a `dup` for the writer
//! held two (issue 27: half the connections under the same open-file
//! limit).
//!
//! A connection the shard accepted itself ([`Stream::Own`]) reads and
//! writes with non-blocking system calls and waits on the shard's readiness
//! ring ([`crate::readiness`]): glommio's stream keeps a poll of its reactor
//! pending from the moment it is made, about half a KiB per idle
//! connection. A node's links, and every connection where the ring cannot
//! be created, keep glommio's stream ([`Stream::Glommio`]).

use std::cell::RefCell;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures_lite::{AsyncRead, AsyncWrite, Future};
use glommio::timer::Timer;

use crate::readiness::Readiness;

/// How long a socket waits before it tries again when the readiness ring
/// failed under it (its failure is logged once, by the ring's task).
const RETRY_WITHOUT_RING: Duration = Duration::from_millis(1);

/// A connected TCP stream, as a listener or a link hands it over.
#[derive(Debug)]
pub(crate) enum Stream {
    /// Accepted by the shard from its listener (non-blocking): waits on the
    /// shard's readiness ring.
    Own(std::net::TcpStream),
    /// glommio's: waits through glommio's reactor (a node's links, and
    /// every connection where the ring cannot be created).
    Glommio(glommio::net::TcpStream),
}

impl Stream {
    /// The address of the other end.
    pub(crate) fn peer_addr(&self) -> io::Result<SocketAddr> {
        match self {
            Stream::Own(stream) => stream.peer_addr(),
            Stream::Glommio(stream) => stream.peer_addr().map_err(io::Error::from),
        }
    }

    /// Sends small writes at once (no Nagle delay).
    pub(crate) fn set_nodelay(&self, nodelay: bool) -> io::Result<()> {
        match self {
            Stream::Own(stream) => stream.set_nodelay(nodelay),
            Stream::Glommio(stream) => stream.set_nodelay(nodelay).map_err(io::Error::from),
        }
    }
}

/// A connection's socket, read by one task and written by another; a clone
/// is another handle to the same socket, which closes when the last handle
/// is dropped.
#[derive(Debug, Clone)]
pub(crate) struct SharedSocket(Rc<RefCell<Socket>>);

#[derive(Debug)]
enum Socket {
    Own(Own),
    /// Boxed: glommio's stream is several times the size of an `Own`.
    Glommio(Box<glommio::net::TcpStream>),
}

#[derive(Debug)]
struct Own {
    stream: std::net::TcpStream,
    readiness: Rc<Readiness>,
    /// The socket's name on the readiness ring.
    token: u64,
    /// Timers, rarely needed (boxed: every connection would carry them).
    timers: Option<Box<Timers>>,
}

#[derive(Debug, Default)]
struct Timers {
    /// How long a write may wait for room (`None`: for ever), and the
    /// deadline of the write waiting now.
    write_timeout: Option<Duration>,
    write_deadline: Option<Timer>,
    /// Without the ring, the next try of each direction.
    retry: [Option<Timer>; 2],
}

impl Drop for Own {
    fn drop(&mut self) {
        // Before the stream closes its descriptor (fields drop after this).
        self.readiness.forget(self.token);
    }
}

const READ: usize = 0;
const WRITE: usize = 1;

impl Own {
    /// Waits for `direction` after an `EAGAIN`: on the ring, or without it
    /// (it failed) for [`RETRY_WITHOUT_RING`]. `Ready` means try again now.
    fn wait(&mut self, direction: usize, cx: &mut Context<'_>) -> Poll<()> {
        let fd = self.stream.as_raw_fd();
        let waits = if direction == READ {
            self.readiness.wait(self.token, fd, cx.waker())
        } else {
            self.readiness.wait_writable(self.token, fd, cx.waker())
        };
        if waits {
            return Poll::Pending;
        }
        let timers = self.timers.get_or_insert_with(Box::default);
        let retry = timers.retry[direction].get_or_insert_with(|| Timer::new(RETRY_WITHOUT_RING));
        match Pin::new(retry).poll(cx) {
            Poll::Ready(_) => {
                timers.retry[direction] = None;
                Poll::Ready(())
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl SharedSocket {
    /// A connection's socket: its own streams wait on `readiness` (see
    /// [`crate::readiness`]), glommio's through glommio.
    pub(crate) fn new(stream: Stream, readiness: &Rc<Readiness>) -> SharedSocket {
        match stream {
            Stream::Own(stream) => SharedSocket::own(stream, readiness),
            Stream::Glommio(stream) => SharedSocket::glommio(stream),
        }
    }

    /// A non-blocking stream that waits on `readiness`.
    pub(crate) fn own(stream: std::net::TcpStream, readiness: &Rc<Readiness>) -> SharedSocket {
        SharedSocket(Rc::new(RefCell::new(Socket::Own(Own {
            stream,
            readiness: readiness.clone(),
            token: readiness.token(),
            timers: None,
        }))))
    }

    /// A glommio stream, which waits through glommio.
    pub(crate) fn glommio(stream: glommio::net::TcpStream) -> SharedSocket {
        SharedSocket(Rc::new(RefCell::new(Socket::Glommio(Box::new(stream)))))
    }

    /// Whether the socket waits on the shard's readiness ring (see
    /// [`SharedSocket::wait_readable`]).
    pub(crate) fn waits_on_ring(&self) -> bool {
        match &*self.0.borrow() {
            Socket::Own(own) => own.readiness.uses_ring(),
            Socket::Glommio(_) => false,
        }
    }

    /// Hands the wait for input to `waker`, after a read found the socket
    /// empty; false where the socket does not wait on the readiness ring
    /// (glommio's, or the ring failed), which wakes nobody else then.
    pub(crate) fn wait_readable(&self, waker: &Waker) -> bool {
        match &*self.0.borrow() {
            Socket::Own(own) => own.readiness.wait(own.token, own.stream.as_raw_fd(), waker),
            Socket::Glommio(_) => false,
        }
    }

    /// Bounds how long a write may wait for room (`None`: for ever).
    pub(crate) fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        if timeout == Some(Duration::ZERO) {
            return Err(io::ErrorKind::InvalidInput.into());
        }
        match &mut *self.0.borrow_mut() {
            Socket::Own(own) => {
                if timeout.is_some() || own.timers.is_some() {
                    let timers = own.timers.get_or_insert_with(Box::default);
                    timers.write_timeout = timeout;
                    timers.write_deadline = None;
                }
                Ok(())
            }
            Socket::Glommio(stream) => stream.set_write_timeout(timeout).map_err(io::Error::from),
        }
    }
}

impl AsRawFd for SharedSocket {
    fn as_raw_fd(&self) -> RawFd {
        match &*self.0.borrow() {
            Socket::Own(own) => own.stream.as_raw_fd(),
            Socket::Glommio(stream) => stream.as_raw_fd(),
        }
    }
}

// Each poll borrows the socket for that call only: the reader's and the
// writer's polls never overlap (one thread, and neither calls the other),
// and neither holds the borrow while it waits.
impl AsyncRead for SharedSocket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let mut socket = self.0.borrow_mut();
        let own = match &mut *socket {
            Socket::Glommio(stream) => return Pin::new(stream).poll_read(cx, buf),
            Socket::Own(own) => own,
        };
        let fd = own.stream.as_raw_fd();
        loop {
            // SAFETY: recv(2) into a buffer we own, at most its length.
            let read =
                unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
            if let Ok(read) = usize::try_from(read) {
                return Poll::Ready(Ok(read));
            }
            let err = io::Error::last_os_error();
            match err.kind() {
                io::ErrorKind::Interrupted => {}
                io::ErrorKind::WouldBlock => {
                    if own.wait(READ, cx).is_pending() {
                        return Poll::Pending;
                    }
                }
                _ => return Poll::Ready(Err(err)),
            }
        }
    }
}

impl AsyncWrite for SharedSocket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut socket = self.0.borrow_mut();
        let own = match &mut *socket {
            Socket::Glommio(stream) => return Pin::new(stream).poll_write(cx, buf),
            Socket::Own(own) => own,
        };
        let fd = own.stream.as_raw_fd();
        loop {
            // SAFETY: send(2) from a buffer we borrow, at most its length.
            let sent = unsafe {
                libc::send(
                    fd,
                    buf.as_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                )
            };
            if let Ok(sent) = usize::try_from(sent) {
                if let Some(timers) = &mut own.timers {
                    timers.write_deadline = None;
                }
                return Poll::Ready(Ok(sent));
            }
            let err = io::Error::last_os_error();
            match err.kind() {
                io::ErrorKind::Interrupted => {}
                io::ErrorKind::WouldBlock => {
                    let timed = own.timers.as_mut().and_then(|timers| {
                        let timeout = timers.write_timeout?;
                        Some((timeout, timers))
                    });
                    if let Some((timeout, timers)) = timed {
                        let deadline = timers
                            .write_deadline
                            .get_or_insert_with(|| Timer::new(timeout));
                        if Pin::new(deadline).poll(cx).is_ready() {
                            timers.write_deadline = None;
                            return Poll::Ready(Err(io::Error::new(
                                io::ErrorKind::TimedOut,
                                "no room to write within the write timeout",
                            )));
                        }
                    }
                    if own.wait(WRITE, cx).is_pending() {
                        return Poll::Pending;
                    }
                }
                _ => return Poll::Ready(Err(err)),
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut *self.0.borrow_mut() {
            Socket::Glommio(stream) => Pin::new(stream).poll_flush(cx),
            // Nothing is buffered above the kernel's socket.
            Socket::Own(_) => Poll::Ready(Ok(())),
        }
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut *self.0.borrow_mut() {
            Socket::Glommio(stream) => Pin::new(stream).poll_close(cx),
            Socket::Own(own) => Poll::Ready(
                own.stream
                    .shutdown(std::net::Shutdown::Write)
                    .or_else(|err| {
                        if err.kind() == io::ErrorKind::NotConnected {
                            Ok(())
                        } else {
                            Err(err)
                        }
                    }),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::time::Instant;

    use futures_lite::AsyncWriteExt;
    use glommio::LocalExecutorBuilder;

    use super::*;

    /// A connected pair: ours a shard-accepted socket on `readiness`, the
    /// peer a blocking std stream.
    fn pair(readiness: &Rc<Readiness>) -> (SharedSocket, std::net::TcpStream) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let peer =
            std::net::TcpStream::connect(listener.local_addr().expect("addr")).expect("connect");
        let (ours, _) = listener.accept().expect("accept");
        ours.set_nonblocking(true).expect("non-blocking");
        (SharedSocket::own(ours, readiness), peer)
    }

    #[test]
    fn a_write_to_a_peer_that_reads_nothing_times_out_and_one_that_reads_gets_through() {
        // In a task of its own: the executor's main future is polled at
        // every turn of its loop, woken or not, and would hide a wake that
        // never comes.
        LocalExecutorBuilder::default()
            .spawn(|| async { glommio::spawn_local(write_timeout_and_room()).await })
            .expect("executor")
            .join()
            .expect("the executor ran to its end");
    }

    /// The scenario of the test above.
    async fn write_timeout_and_room() {
        let readiness = Rc::new(Readiness::new());
        assert!(readiness.uses_ring());
        glommio::spawn_local(readiness.clone().run()).detach();
        let (mut ours, mut peer) = pair(&readiness);
        ours.set_write_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        // More than the kernel buffers of both ends hold.
        let chunk = vec![7u8; 1 << 20];
        let started = Instant::now();
        let outcome = futures_lite::future::or(
            async {
                loop {
                    if let Err(err) = ours.write_all(&chunk).await {
                        return Some(err.kind());
                    }
                }
            },
            async {
                glommio::timer::sleep(Duration::from_secs(10)).await;
                None
            },
        )
        .await;
        assert_eq!(outcome, Some(io::ErrorKind::TimedOut), "the write gave up");
        assert!(started.elapsed() < Duration::from_secs(5));
        // A reader makes room: the waiting write is woken and done.
        ours.set_write_timeout(None).expect("no timeout");
        peer.set_nonblocking(true).expect("non-blocking peer");
        let reader = glommio::spawn_local(async move {
            let mut total = 0usize;
            let mut buf = vec![0u8; 1 << 16];
            loop {
                match peer.read(&mut buf) {
                    Ok(0) => return total,
                    Ok(read) => total += read,
                    Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                        glommio::timer::sleep(Duration::from_millis(1)).await;
                    }
                    Err(_) => return total,
                }
            }
        });
        let written = futures_lite::future::or(
            async { Some(ours.write_all(&chunk).await.is_ok()) },
            async {
                glommio::timer::sleep(Duration::from_secs(10)).await;
                None
            },
        )
        .await;
        assert_eq!(written, Some(true), "woken when the peer made room");
        drop(ours);
        // The peer sees the close (a socket left armed would stay
        // open in the kernel).
        let read = futures_lite::future::or(async { Some(reader.await) }, async {
            glommio::timer::sleep(Duration::from_secs(10)).await;
            None
        })
        .await;
        assert!(
            read.is_some_and(|total| total >= chunk.len()),
            "the peer read everything, then the close: {read:?}"
        );
        assert_eq!(readiness.armed(), 0, "a closed socket is disarmed");
    }
}
