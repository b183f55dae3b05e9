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
use std::task::{Context, Poll};
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
    Glommio(glommio::net::TcpStream),
}

#[derive(Debug)]
struct Own {
    stream: std::net::TcpStream,
    readiness: Rc<Readiness>,
    /// The socket's name on the readiness ring.
    token: u64,
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
        let retry = self.retry[direction].get_or_insert_with(|| Timer::new(RETRY_WITHOUT_RING));
        match Pin::new(retry).poll(cx) {
            Poll::Ready(_) => {
                self.retry[direction] = None;
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
            write_timeout: None,
            write_deadline: None,
            retry: [None, None],
        }))))
    }

    /// A glommio stream, which waits through glommio.
    pub(crate) fn glommio(stream: glommio::net::TcpStream) -> SharedSocket {
        SharedSocket(Rc::new(RefCell::new(Socket::Glommio(stream))))
    }

    /// Bounds how long a write may wait for room (`None`: for ever).
    pub(crate) fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        if timeout == Some(Duration::ZERO) {
            return Err(io::ErrorKind::InvalidInput.into());
        }
        match &mut *self.0.borrow_mut() {
            Socket::Own(own) => {
                own.write_timeout = timeout;
                own.write_deadline = None;
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
                own.write_deadline = None;
                return Poll::Ready(Ok(sent));
            }
            let err = io::Error::last_os_error();
            match err.kind() {
                io::ErrorKind::Interrupted => {}
                io::ErrorKind::WouldBlock => {
                    if let Some(timeout) = own.write_timeout {
                        let deadline = own
                            .write_deadline
                            .get_or_insert_with(|| Timer::new(timeout));
                        if Pin::new(deadline).poll(cx).is_ready() {
                            own.write_deadline = None;
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
