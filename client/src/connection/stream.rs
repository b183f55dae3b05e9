//! The byte stream under a connection, plain TCP or TLS over TCP, and its
//! split into the reader task's half and the writer's half.
//!
//! An enum rather than a boxed trait object, so that the plaintext path keeps
//! tokio's lock-free `into_split` halves and static dispatch.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::Error;

/// Why a connection attempt failed.
pub(super) enum AttemptError {
    /// The server answered, but not with a usable `WELCOME`: an `ERROR`,
    /// another protocol version, another frame, undecodable bytes. Trying
    /// again would get the same answer.
    Refused(Error),
    /// Connecting, reading or writing failed, or timed out: worth retrying.
    Failed(Error),
}

impl AttemptError {
    pub(super) fn into_error(self) -> Error {
        match self {
            AttemptError::Refused(err) | AttemptError::Failed(err) => err,
        }
    }
}

/// Smallest amount of free buffer space the reader asks the socket to fill.
pub(super) const READ_CHUNK: usize = 64 * 1024;

/// A connected stream, before the split.
pub(super) enum Stream {
    Plain(TcpStream),
    /// Boxed: the TLS state is over a kilobyte, most of it buffers.
    Tls(Box<TlsStream<TcpStream>>),
}

/// The half of a [`Stream`] the reader task reads from.
pub(super) enum ReadHalf {
    Plain(OwnedReadHalf),
    Tls(tokio::io::ReadHalf<Box<TlsStream<TcpStream>>>),
}

/// The half of a [`Stream`] the writer writes to.
pub(super) enum WriteHalf {
    Plain(OwnedWriteHalf),
    Tls(tokio::io::WriteHalf<Box<TlsStream<TcpStream>>>),
}

impl Stream {
    /// Splits the stream for the reader task and the writer.
    pub(super) fn split(self) -> (ReadHalf, WriteHalf) {
        match self {
            Stream::Plain(tcp) => {
                let (rd, wr) = tcp.into_split();
                (ReadHalf::Plain(rd), WriteHalf::Plain(wr))
            }
            Stream::Tls(tls) => {
                // One rustls state machine serves both directions, so the
                // halves share it behind tokio's split lock, which is held
                // only for the length of one poll: a read waiting for bytes
                // does not block a write.
                let (rd, wr) = tokio::io::split(tls);
                (ReadHalf::Tls(rd), WriteHalf::Tls(wr))
            }
        }
    }
}

/// Forwards a poll to whichever variant `$self` holds.
macro_rules! delegate {
    ($self:ident, $ty:ident, |$io:ident| $call:expr) => {
        match $self.get_mut() {
            $ty::Plain($io) => $call,
            $ty::Tls($io) => $call,
        }
    };
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        delegate!(self, Stream, |io| Pin::new(io).poll_read(cx, buf))
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, Stream, |io| Pin::new(io).poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, Stream, |io| Pin::new(io).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, Stream, |io| Pin::new(io).poll_shutdown(cx))
    }
}

impl AsyncRead for ReadHalf {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        delegate!(self, ReadHalf, |io| Pin::new(io).poll_read(cx, buf))
    }
}

impl AsyncWrite for WriteHalf {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        delegate!(self, WriteHalf, |io| Pin::new(io).poll_write(cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, WriteHalf, |io| Pin::new(io).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        delegate!(self, WriteHalf, |io| Pin::new(io).poll_shutdown(cx))
    }
}
