//! Connecting, the handshake, and the writer task.

use std::collections::HashMap;
use std::io;
use std::mem;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::BytesMut;
use corebus_net::{
    check, decode, Check, Frame, Hello, Welcome, DEFAULT_MAX_FRAME, PROTOCOL_VERSION,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{lookup_host, TcpStream, ToSocketAddrs};
use tokio::sync::{Notify, Semaphore};
use tokio::time::{timeout, timeout_at, Instant};

use super::reader::run_reader;
use super::{Shared, State, Terminal, KEEP_WRITE_BUFFER, READ_CHUNK};
use crate::error::code_text;
use crate::{ClientConfig, Error};

/// Opens a connection and performs the handshake.
pub(crate) async fn connect(
    addr: impl ToSocketAddrs,
    config: ClientConfig,
) -> Result<Arc<Shared>, Error> {
    let deadline = Instant::now() + config.connect_timeout;
    let (stream, peer) = open(addr, deadline, config.connect_timeout).await?;
    stream.set_nodelay(true)?;
    let (welcome, leftover, stream) =
        match timeout_at(deadline, handshake(stream, &config.client_name)).await {
            Ok(result) => result?,
            Err(_) => {
                return Err(Error::Handshake(format!(
                    "no WELCOME from {peer} within {:?}",
                    config.connect_timeout
                )))
            }
        };
    let max_in_flight = config
        .max_in_flight
        .clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize)) as u32;
    let shared = Arc::new(Shared {
        welcome,
        request_timeout: config.request_timeout,
        subscription_buffer: config.subscription_buffer.max(1),
        permits: Arc::new(Semaphore::new(max_in_flight as usize)),
        max_in_flight,
        state: Mutex::new(State {
            terminal: None,
            closing: false,
            shutdown: false,
            out: BytesMut::with_capacity(READ_CHUNK),
            next_request: 1,
            next_sub: 1,
            next_nonce: 1,
            pending: HashMap::new(),
            pings: HashMap::new(),
            routes: HashMap::new(),
        }),
        write_notify: Notify::new(),
        writer_stop: Notify::new(),
        reader_stop: Notify::new(),
        writer_task: Mutex::new(None),
    });
    let (rd, wr) = stream.into_split();
    tokio::spawn(run_reader(shared.clone(), rd, leftover));
    let writer = tokio::spawn(run_writer(shared.clone(), wr));
    *shared
        .writer_task
        .lock()
        .unwrap_or_else(PoisonError::into_inner) = Some(writer);
    Ok(shared)
}

/// Resolves `addr` and connects to the first address that accepts.
async fn open(
    addr: impl ToSocketAddrs,
    deadline: Instant,
    limit: Duration,
) -> Result<(TcpStream, String), Error> {
    let timed_out = |addr: String| Error::Connect {
        addr,
        source: io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no connection within {limit:?}"),
        ),
    };
    let unresolved = "the given address (it did not resolve)".to_string();
    let addrs: Vec<_> = match timeout_at(deadline, lookup_host(addr)).await {
        Err(_) => return Err(timed_out(unresolved)),
        Ok(Err(source)) => {
            return Err(Error::Connect {
                addr: unresolved,
                source,
            })
        }
        Ok(Ok(addrs)) => addrs.collect(),
    };
    let tried = addrs
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    let mut last_error = io::Error::new(io::ErrorKind::InvalidInput, "no address to connect to");
    for peer in addrs {
        match timeout_at(deadline, TcpStream::connect(peer)).await {
            Err(_) => return Err(timed_out(tried)),
            Ok(Ok(stream)) => return Ok((stream, peer.to_string())),
            Ok(Err(err)) => last_error = err,
        }
    }
    Err(Error::Connect {
        addr: tried,
        source: last_error,
    })
}

/// Sends `HELLO` and waits for `WELCOME`; returns it with any bytes read past it.
async fn handshake(
    mut stream: TcpStream,
    client_name: &str,
) -> Result<(Welcome, BytesMut, TcpStream), Error> {
    let mut out = BytesMut::new();
    Frame::Hello(Hello {
        version: PROTOCOL_VERSION,
        client_name: client_name.to_owned(),
    })
    .encode(&mut out);
    stream.write_all(&out).await?;
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    loop {
        match check(&buf, DEFAULT_MAX_FRAME).map_err(Error::Protocol)? {
            Check::Complete { len } => {
                let frame = decode(buf.split_to(len).freeze()).map_err(Error::Protocol)?;
                return match frame {
                    Frame::Welcome(welcome) if welcome.version == PROTOCOL_VERSION => {
                        Ok((welcome, buf, stream))
                    }
                    Frame::Welcome(welcome) => Err(Error::Handshake(format!(
                        "the server speaks protocol version {}, this client speaks {PROTOCOL_VERSION}",
                        welcome.version
                    ))),
                    Frame::Error(err) => Err(Error::Handshake(format!(
                        "the server refused the connection: {}: {}",
                        code_text(err.code(), err.code),
                        err.message
                    ))),
                    other => Err(Error::Handshake(format!(
                        "expected WELCOME, got {:?}",
                        other.opcode()
                    ))),
                };
            }
            Check::Incomplete { .. } => {
                if stream.read_buf(&mut buf).await? == 0 {
                    return Err(Error::Handshake(
                        "the server closed the connection before WELCOME".into(),
                    ));
                }
            }
        }
    }
}

async fn run_writer(shared: Arc<Shared>, mut wr: OwnedWriteHalf) -> io::Result<()> {
    let result = tokio::select! {
        result = write_loop(&shared, &mut wr) => result,
        _ = shared.writer_stop.notified() => return Ok(()),
    };
    if let Err(err) = &result {
        shared.fail(Terminal::Lost(format!("write failed: {err}")), false);
    }
    result
}

/// Writes whatever callers queued, one swap of the buffer per wake-up.
async fn write_loop(shared: &Shared, wr: &mut OwnedWriteHalf) -> io::Result<()> {
    let mut spare = BytesMut::with_capacity(READ_CHUNK);
    loop {
        shared.write_notify.notified().await;
        let shutdown = {
            let mut st = shared.lock();
            mem::swap(&mut st.out, &mut spare);
            st.shutdown
        };
        if shutdown {
            // Bounded, so a peer that stopped reading cannot keep this task
            // (and the socket) alive forever after the client is gone.
            let flush = async {
                wr.write_all(&spare).await?;
                wr.shutdown().await
            };
            return match timeout(shared.request_timeout, flush).await {
                Ok(result) => result,
                Err(_) => Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the final flush did not finish in time",
                )),
            };
        }
        if !spare.is_empty() {
            wr.write_all(&spare).await?;
            spare.clear();
            if spare.capacity() > KEEP_WRITE_BUFFER {
                spare = BytesMut::with_capacity(READ_CHUNK);
            }
        }
    }
}
