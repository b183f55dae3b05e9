//! The I/O of one shard's link to another node: connect to the node's
//! client listener, say `HELLO` with the cluster's link credentials, then
//! write what the engine encodes for the node and hand the engine every
//! frame the node sends back, until the connection breaks; then again, with
//! a growing pause, for as long as the node is a member.

use std::cell::RefCell;
use std::future::poll_fn;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::task::Poll;
use std::time::Duration;

use bytes::BytesMut;
use corebus_net::{check, decode, Check, Frame, Hello, PROTOCOL_VERSION};
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use tracing::debug;

use crate::conn::dup_stream;
use crate::engine::Shard;

/// How long connecting, and then the handshake, may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// First pause before connecting again, doubled up to the next one.
const RETRY_MIN: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(1);
/// Bytes asked of the kernel per read.
const READ_CHUNK: usize = 64 * 1024;

/// Runs the link from this shard to `node` while the node is a member.
pub(crate) async fn run_link(shard: Rc<RefCell<Shard>>, node: SocketAddr, max_frame: u32) {
    let mut pause = RETRY_MIN;
    loop {
        if !shard.borrow().link_wanted(node) {
            shard.borrow_mut().link_ended(node);
            return;
        }
        let (reason, was_up) = match serve(&shard, node, max_frame).await {
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

/// One connection of the link, from connect to break. The error says
/// whether the handshake had succeeded.
async fn serve(
    shard: &Rc<RefCell<Shard>>,
    node: SocketAddr,
    max_frame: u32,
) -> Result<(), (io::Error, bool)> {
    let down = |err| (err, false);
    let mut stream = TcpStream::connect_timeout(node, CONNECT_TIMEOUT)
        .await
        .map_err(|err| down(io::Error::other(err.to_string())))?;
    stream.set_nodelay(true).map_err(|err| down(err.into()))?;
    let mut hello = BytesMut::new();
    Frame::Hello(Hello {
        version: PROTOCOL_VERSION,
        client_name: format!("corebus node link (shard {})", shard.borrow().id()),
        credentials: shard.borrow().peer_credentials().into(),
    })
    .encode(&mut hello);
    stream.write_all(&hello).await.map_err(down)?;
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    let welcome = futures_lite::future::or(read_frame(&mut stream, &mut buf, max_frame), async {
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
    shard.borrow_mut().link_up(node);
    let up = |err| (err, true);
    let mut writer = dup_stream(&stream).map_err(up)?;
    let writes = async {
        loop {
            let out = poll_fn(
                |cx| match shard.borrow_mut().take_link_out(node, cx.waker()) {
                    Ok(Some(out)) => Poll::Ready(Ok(out)),
                    Ok(None) => Poll::Pending,
                    Err(_) => Poll::Ready(Err(io::Error::other("the node left the cluster"))),
                },
            )
            .await?;
            writer.write_all(&out).await?;
        }
    };
    let reads = async {
        loop {
            let frame = read_frame(&mut stream, &mut buf, max_frame).await?;
            let mut shard = shard.borrow_mut();
            shard.handle_link_frame(node, frame);
            // Every other whole frame already read, in the same turn.
            while let Ok(Check::Complete { len }) = check(&buf, max_frame) {
                match decode(buf.split_to(len).freeze()) {
                    Ok(frame) => shard.handle_link_frame(node, frame),
                    Err(err) => return Err(io::Error::other(err.to_string())),
                }
            }
        }
    };
    futures_lite::future::or(reads, writes).await.map_err(up)
}

/// Reads until `buf` starts with a whole frame, and decodes it.
async fn read_frame(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    max_frame: u32,
) -> io::Result<Frame> {
    loop {
        match check(buf, max_frame) {
            Ok(Check::Complete { len }) => {
                return decode(buf.split_to(len).freeze())
                    .map_err(|err| io::Error::other(err.to_string()))
            }
            Ok(Check::Incomplete { .. }) => {}
            Err(err) => return Err(io::Error::other(err.to_string())),
        }
        let start = buf.len();
        buf.resize(start + READ_CHUNK, 0);
        let read = stream.read(&mut buf[start..]).await;
        let got = *read.as_ref().unwrap_or(&0);
        buf.truncate(start + got);
        if read? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the node closed the link",
            ));
        }
    }
}
