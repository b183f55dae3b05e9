//! The I/O of one shard's link to another node: connect to the node's
//! client listener (over TLS when this node's clients use TLS), say `HELLO`
//! with the cluster's link credentials, then write what the engine encodes
//! for the node and hand the engine every frame the node sends back, until
//! the connection breaks; then again, with a growing pause, for as long as
//! the node is a member.

use std::cell::{Cell, RefCell};
use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::Duration;

use bytes::BytesMut;
use corebus_net::{check, decode, Check, Frame, Hello, PROTOCOL_VERSION};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use tracing::debug;

use crate::conn::{feed_tls, flush_tls, Tls};
use crate::engine::Shard;
use crate::socket::SharedSocket;

/// How long connecting, and then the handshake, may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// First pause before connecting again, doubled up to the next one.
const RETRY_MIN: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(1);
/// Bytes asked of the kernel per read.
const READ_CHUNK: usize = 64 * 1024;

/// Runs the link from this shard to `node` while the node is a member.
/// With `tls`, the link speaks TLS, and the node's certificate must name
/// its IP address.
pub(crate) async fn run_link(
    shard: Rc<RefCell<Shard>>,
    node: SocketAddr,
    max_frame: u32,
    tls: Option<Arc<rustls::ClientConfig>>,
) {
    let mut pause = RETRY_MIN;
    loop {
        if !shard.borrow().link_wanted(node) {
            shard.borrow_mut().link_ended(node);
            return;
        }
        let (reason, was_up) = match serve(&shard, node, max_frame, tls.as_ref()).await {
            Ok(()) => ("the node closed the link".to_string(), true),
            Err((err, was_up)) => (err.to_string(), was_up),
        };
        debug!(%node, %reason, "link down");
        shard.borrow_mut().link_down(node, &reason);
        if was_up {
            pause = RETRY_MIN;
        }
        glommio::timer::sleep(pause).await;
        pause = (pause * 2).min(RETRY_MAX);
    }
}

/// The reading end of a link: whole frames out of the socket's bytes,
/// deciphered first with TLS.
struct LinkReader {
    stream: SharedSocket,
    tls: Option<Tls>,
    /// Plaintext not yet decoded.
    buf: BytesMut,
    cipher: Vec<u8>,
    /// During the handshake the reader writes what TLS has to say back
    /// itself; afterwards it asks the writer to (`kick`).
    flush_itself: bool,
    kick: Rc<Kick>,
}

/// The reader's request that the writer send what TLS has to say.
#[derive(Default)]
struct Kick {
    pending: Cell<bool>,
    writer: RefCell<Option<Waker>>,
}

impl LinkReader {
    /// The next whole frame.
    async fn next_frame(&mut self, max_frame: u32) -> io::Result<Frame> {
        loop {
            match check(&self.buf, max_frame) {
                Ok(Check::Complete { len }) => {
                    return decode(self.buf.split_to(len).freeze())
                        .map_err(|err| io::Error::other(err.to_string()))
                }
                Ok(Check::Incomplete { .. }) => {}
                Err(err) => return Err(io::Error::other(err.to_string())),
            }
            self.read_more().await?;
        }
    }

    /// A whole frame already read, if there is one.
    fn buffered_frame(&mut self, max_frame: u32) -> io::Result<Option<Frame>> {
        match check(&self.buf, max_frame) {
            Ok(Check::Complete { len }) => decode(self.buf.split_to(len).freeze())
                .map(Some)
                .map_err(|err| io::Error::other(err.to_string())),
            Ok(Check::Incomplete { .. }) => Ok(None),
            Err(err) => Err(io::Error::other(err.to_string())),
        }
    }

    async fn read_more(&mut self) -> io::Result<()> {
        let closed = || io::Error::new(io::ErrorKind::UnexpectedEof, "the node closed the link");
        // One chunk, zeroed once, that every read reuses; only what came is
        // copied on.
        if self.cipher.len() < READ_CHUNK {
            self.cipher.resize(READ_CHUNK, 0);
        }
        let read = self.stream.read(&mut self.cipher).await?;
        if read == 0 {
            return Err(closed());
        }
        let Some(tls) = &self.tls else {
            self.buf.extend_from_slice(&self.cipher[..read]);
            return Ok(());
        };
        let peer_closed = feed_tls(tls, &self.cipher[..read], &mut self.buf)?;
        if tls.borrow().wants_write() {
            if self.flush_itself {
                flush_tls(&mut self.stream, tls).await?;
            } else {
                self.kick.pending.set(true);
                if let Some(waker) = self.kick.writer.borrow_mut().take() {
                    waker.wake();
                }
            }
        }
        if peer_closed {
            return Err(closed());
        }
        Ok(())
    }
}

/// One connection of the link, from connect to break. The error says
/// whether the handshake had succeeded.
async fn serve(
    shard: &Rc<RefCell<Shard>>,
    node: SocketAddr,
    max_frame: u32,
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> Result<(), (io::Error, bool)> {
    let down = |err| (err, false);
    let mut stream = TcpStream::connect_timeout(node, CONNECT_TIMEOUT)
        .await
        .map_err(|err| down(io::Error::other(err.to_string())))?;
    stream.set_nodelay(true).map_err(|err| down(err.into()))?;
    let session: Option<Tls> = match tls {
        None => None,
        Some(config) => {
            let name = rustls::pki_types::ServerName::IpAddress(node.ip().into());
            let client = rustls::ClientConnection::new(config.clone(), name)
                .map_err(|err| down(io::Error::other(err)))?;
            Some(Rc::new(RefCell::new(rustls::Connection::Client(client))))
        }
    };
    let mut hello = BytesMut::new();
    Frame::Hello(Hello {
        version: PROTOCOL_VERSION,
        client_name: format!("corebus node link (shard {})", shard.borrow().id()),
        credentials: shard.borrow().peer_credentials().into(),
    })
    .encode(&mut hello);
    match &session {
        None => stream.write_all(&hello).await.map_err(down)?,
        Some(tls) => {
            // Sent once the handshake is done; the client hello goes now.
            io::Write::write_all(&mut tls.borrow_mut().writer(), &hello).map_err(down)?;
            flush_tls(&mut stream, tls).await.map_err(down)?;
        }
    }
    let kick = Rc::new(Kick::default());
    let mut reader = LinkReader {
        // A link's reader is rarely idle: it waits through glommio.
        stream: SharedSocket::glommio(stream),
        tls: session.clone(),
        buf: BytesMut::with_capacity(READ_CHUNK),
        cipher: Vec::new(),
        flush_itself: true,
        kick: kick.clone(),
    };
    let welcome = futures_lite::future::or(reader.next_frame(max_frame), async {
        glommio::timer::sleep(CONNECT_TIMEOUT).await;
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "no WELCOME in time",
        ))
    })
    .await
    .map_err(down)?;
    match welcome {
        Frame::Welcome(_) => {}
        Frame::Error(error) => {
            return Err(down(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("the node refused the link: {}", error.message),
            )))
        }
        other => {
            return Err(down(io::Error::other(format!(
                "expected WELCOME, got {:?}",
                other.opcode()
            ))))
        }
    }
    reader.flush_itself = false;
    shard.borrow_mut().link_up(node);
    let up = |err| (err, true);
    let mut writer = reader.stream.clone();
    let writes = async {
        loop {
            let out = poll_fn(|cx| {
                if kick.pending.replace(false) {
                    return Poll::Ready(Ok(None));
                }
                match shard.borrow_mut().take_link_out(node, cx.waker()) {
                    Ok(Some(out)) => Poll::Ready(Ok(Some(out))),
                    Ok(None) => {
                        *kick.writer.borrow_mut() = Some(cx.waker().clone());
                        Poll::Pending
                    }
                    Err(_) => Poll::Ready(Err(io::Error::other("the node left the cluster"))),
                }
            })
            .await?;
            match (&session, out) {
                (None, Some(out)) => write_now(&mut writer, &out).await?,
                (Some(tls), out) => {
                    if let Some(out) = out {
                        io::Write::write_all(&mut tls.borrow_mut().writer(), &out)?;
                    }
                    flush_tls(&mut writer, tls).await?;
                }
                (None, None) => {}
            }
        }
    };
    let reads = async {
        loop {
            let frame = reader.next_frame(max_frame).await?;
            let mut shard = shard.borrow_mut();
            shard.handle_link_frame(node, frame);
            // Every other whole frame already read, in the same turn.
            while let Some(frame) = reader.buffered_frame(max_frame)? {
                shard.handle_link_frame(node, frame);
            }
        }
    };
    futures_lite::future::or::<io::Result<()>, _, _>(reads, writes)
        .await
        .map_err(up)
}

/// Writes `bytes` to the link: at once, with a non-blocking send, as far as
/// the socket takes them (the usual case: a link's turn is small), and the
/// rest through glommio, which waits for room.
async fn write_now(writer: &mut SharedSocket, bytes: &[u8]) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let iovec = [libc::iovec {
        iov_base: bytes.as_ptr() as *mut libc::c_void,
        iov_len: bytes.len(),
    }];
    let sent = match crate::sends::send_direct(writer.as_raw_fd(), &iovec) {
        Ok(sent) => sent,
        Err(err) if err.kind() == io::ErrorKind::WouldBlock => 0,
        Err(err) => return Err(err),
    };
    if sent < bytes.len() {
        writer.write_all(&bytes[sent..]).await?;
    }
    Ok(())
}
