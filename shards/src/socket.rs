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

use std::cell::RefCell;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_lite::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;

/// A connection's socket, read by one task and written by another; a clone
/// is another handle to the same socket, which closes when the last handle
/// is dropped.
#[derive(Debug, Clone)]
pub(crate) struct SharedSocket(Rc<RefCell<TcpStream>>);

impl SharedSocket {
    pub(crate) fn new(stream: TcpStream) -> SharedSocket {
        SharedSocket(Rc::new(RefCell::new(stream)))
    }

    /// Bounds how long a write may wait for room (`None`: for ever).
    pub(crate) fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.0
            .borrow()
            .set_write_timeout(timeout)
            .map_err(io::Error::from)
    }
}

impl AsRawFd for SharedSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.0.borrow().as_raw_fd()
    }
}

// Each poll borrows the stream for that call only: the reader's and the
// writer's polls never overlap (one thread, and neither calls the other),
// and neither holds the borrow while it waits.
impl AsyncRead for SharedSocket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_read(cx, buf)
    }
}

impl AsyncWrite for SharedSocket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_flush(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0.borrow_mut()).poll_close(cx)
    }
}
