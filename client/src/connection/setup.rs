//! Opening a connection: resolving the broker's addresses once, connecting
//! (from a source port that leads to the topic's shard, with topic affinity),
//! the TLS handshake, and `HELLO`/`WELCOME`.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use corebus_net::{
    check, decode, Check, ErrorCode, Frame, Hello, Welcome, DEFAULT_MAX_FRAME, PROTOCOL_VERSION,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{lookup_host, TcpSocket, TcpStream};
use tokio::time::{timeout_at, Instant};

use super::backoff::{Backoff, SplitMix64};
use super::stream::{AttemptError, Stream, READ_CHUNK};
use super::tls::Tls;
use crate::error::code_text;
use crate::{ClientConfig, Error, ServerAddr, TlsError};

/// Where and how to connect, fixed by the first connect and reused by every
/// reconnection.
pub(super) struct Dialer {
    /// The addresses the first connect resolved.
    addrs: Vec<SocketAddr>,
    /// `Some` when the client speaks TLS.
    tls: Option<Tls>,
}

/// A handshaken connection: the stream, the server's `WELCOME`, and any bytes
/// read past it.
pub(super) struct Opened {
    /// The broker's address.
    pub(super) server: String,
    pub(super) stream: Stream,
    pub(super) welcome: Welcome,
    pub(super) leftover: BytesMut,
}

impl Dialer {
    /// Resolves `addr` and sets up TLS if configured, within `deadline`.
    pub(super) async fn new(
        addr: impl ServerAddr,
        config: &ClientConfig,
        deadline: Instant,
    ) -> Result<Dialer, Error> {
        let host = addr.host();
        let addrs = resolve(addr, deadline, config.connect_timeout).await?;
        let tls = match &config.tls {
            Some(options) => Some(Tls::new(options, host, &addrs).await?),
            None => None,
        };
        Ok(Dialer { addrs, tls })
    }
}

/// Resolves `addr` once; reconnections reuse the addresses.
async fn resolve(
    addr: impl ServerAddr,
    deadline: Instant,
    limit: Duration,
) -> Result<Vec<SocketAddr>, Error> {
    let unresolved = "the given address (it did not resolve)".to_string();
    match timeout_at(deadline, lookup_host(addr)).await {
        Err(_) => Err(Error::Connect {
            addr: unresolved,
            source: io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no connection within {limit:?}"),
            ),
        }),
        Ok(Err(source)) => Err(Error::Connect {
            addr: unresolved,
            source,
        }),
        Ok(Ok(addrs)) => Ok(addrs.collect()),
    }
}

/// Source ports tried for [`ClientConfig::topic_affinity`] after the first
/// connection landed on another shard (more than one only for ports in use).
const AFFINITY_TRIES: usize = 3;
/// The range source ports for affinity are drawn from: Linux's default
/// ephemeral range.
const AFFINITY_PORTS: std::ops::Range<u32> = 32768..61000;

/// Connects to the first address that accepts and performs the handshakes
/// (TLS, if configured, then `HELLO`/`WELCOME`), each connection within
/// `connect_timeout`; with [`ClientConfig::topic_affinity`], then moves to the
/// topic's owner shard if it can.
pub(super) async fn attempt(
    dialer: &Dialer,
    config: &ClientConfig,
) -> Result<Opened, AttemptError> {
    let first = attempt_from(dialer, config, None).await?;
    let Some(affinity) = &config.topic_affinity else {
        return Ok(first);
    };
    let count = first.welcome.shard_count;
    let owner = affinity.owner(count);
    if count <= 1 || first.welcome.shard == owner {
        return Ok(first);
    }
    let mut random = SplitMix64::new(Backoff::seed());
    for _ in 0..AFFINITY_TRIES {
        let port = port_leading_to(owner, count, random.next());
        match attempt_from(dialer, config, Some(port)).await {
            Ok(opened) if opened.welcome.shard == owner => return Ok(opened),
            // The broker does not steer by source port (or its shard count
            // changed): nothing to gain from more tries.
            Ok(_) | Err(AttemptError::Refused(_)) => break,
            // Most likely the port is in use: try another.
            Err(AttemptError::Failed(_)) => {}
        }
    }
    Ok(first)
}

/// A source port in [`AFFINITY_PORTS`] that the broker's listeners steer to
/// `shard` of `count` ([`corebus_net::routing::shard_of_source_port`]), drawn
/// from `random`.
fn port_leading_to(shard: u16, count: u16, random: u64) -> u16 {
    let count = u32::from(count.max(1));
    // Work in halves of the port range: half-port h stands for ports 2h, 2h+1.
    let (start, end) = (AFFINITY_PORTS.start / 2, AFFINITY_PORTS.end / 2);
    let slots = ((end - start) / count).max(1);
    let first = start.div_ceil(count) * count;
    let half = first + (random % u64::from(slots)) as u32 * count + u32::from(shard) % count;
    (half * 2 + (random >> 63) as u32) as u16
}

/// One connection and its handshakes, from `source_port` when given: to
/// the first address, or, when it fails or turns the client away for now
/// (shutting down, full), to the next, and so on; the last failure when
/// all do.
async fn attempt_from(
    dialer: &Dialer,
    config: &ClientConfig,
    source_port: Option<u16>,
) -> Result<Opened, AttemptError> {
    let mut last = None;
    for addr in &dialer.addrs {
        match attempt_one(std::slice::from_ref(addr), dialer, config, source_port).await {
            Err(AttemptError::Failed(err)) => last = Some(AttemptError::Failed(err)),
            done => return done,
        }
    }
    Err(last.unwrap_or_else(|| {
        AttemptError::Failed(Error::Connect {
            addr: String::new(),
            source: io::Error::new(io::ErrorKind::InvalidInput, "no address to connect to"),
        })
    }))
}

/// [`attempt_from`] with one address.
async fn attempt_one(
    addrs: &[SocketAddr],
    dialer: &Dialer,
    config: &ClientConfig,
    source_port: Option<u16>,
) -> Result<Opened, AttemptError> {
    let limit = config.connect_timeout;
    let deadline = Instant::now() + limit;
    let (tcp, peer) = open(addrs, config.local_address, source_port, deadline, limit)
        .await
        .map_err(AttemptError::Failed)?;
    tcp.set_nodelay(true)
        .map_err(|err| AttemptError::Failed(Error::Io(err)))?;
    let stream = match &dialer.tls {
        None => Stream::Plain(tcp),
        Some(tls) => match timeout_at(deadline, tls.handshake(tcp, &peer)).await {
            Ok(result) => result?,
            Err(_) => {
                return Err(AttemptError::Failed(Error::Tls(TlsError::Handshake {
                    peer,
                    source: io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("no TLS handshake within {limit:?}"),
                    ),
                })))
            }
        },
    };
    let credentials = config
        .credentials
        .as_ref()
        .map(|secret| secret.expose().as_bytes())
        .unwrap_or_default();
    match timeout_at(
        deadline,
        handshake(stream, &config.client_name, credentials),
    )
    .await
    {
        Ok(result) => result.map(|(stream, welcome, leftover)| Opened {
            server: peer,
            stream,
            welcome,
            leftover,
        }),
        Err(_) => Err(AttemptError::Failed(Error::Handshake(format!(
            "no WELCOME from {peer} within {limit:?}"
        )))),
    }
}

/// Connects to the first address that accepts, from `local` and
/// `source_port` when given.
async fn open(
    addrs: &[SocketAddr],
    local: Option<std::net::IpAddr>,
    source_port: Option<u16>,
    deadline: Instant,
    limit: Duration,
) -> Result<(TcpStream, String), Error> {
    let tried = addrs
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    let mut last_error = io::Error::new(io::ErrorKind::InvalidInput, "no address to connect to");
    for peer in addrs {
        match timeout_at(deadline, connect_from(*peer, local, source_port)).await {
            Err(_) => {
                return Err(Error::Connect {
                    addr: tried,
                    source: io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("no connection within {limit:?}"),
                    ),
                })
            }
            Ok(Ok(stream)) => return Ok((stream, peer.to_string())),
            Ok(Err(err)) => last_error = err,
        }
    }
    Err(Error::Connect {
        addr: tried,
        source: last_error,
    })
}

/// Connects to `peer`, from the address `local` and `source_port` when
/// given.
async fn connect_from(
    peer: SocketAddr,
    local: Option<std::net::IpAddr>,
    source_port: Option<u16>,
) -> io::Result<TcpStream> {
    if local.is_none() && source_port.is_none() {
        return TcpStream::connect(peer).await;
    }
    let port = source_port.unwrap_or(0);
    let (socket, local) = match peer {
        SocketAddr::V4(_) => (
            TcpSocket::new_v4()?,
            SocketAddr::from((
                local.unwrap_or(std::net::Ipv4Addr::UNSPECIFIED.into()),
                port,
            )),
        ),
        SocketAddr::V6(_) => (
            TcpSocket::new_v6()?,
            SocketAddr::from((
                local.unwrap_or(std::net::Ipv6Addr::UNSPECIFIED.into()),
                port,
            )),
        ),
    };
    // A port in TIME_WAIT from an earlier connection may be bound again.
    socket.set_reuseaddr(true)?;
    if port == 0 {
        bind_address_only(&socket)?;
    }
    socket.bind(local)?;
    socket.connect(peer).await
}

/// A bind to an address with port 0 chooses the port at connect, from the
/// whole 4-tuple, rather than at bind: otherwise every such connection
/// holds a port of its own for any destination, and ports taken by bind
/// are left out of every later connect's choice (also while in
/// TIME_WAIT), so a host opening many connections from several addresses
/// ran out of ports for the others (Linux's `IP_BIND_ADDRESS_NO_PORT`).
#[cfg(target_os = "linux")]
fn bind_address_only(socket: &TcpSocket) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let on: libc::c_int = 1;
    // SAFETY: setsockopt on a socket we own, with a pointer to a live c_int
    // and its size.
    let result = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(not(target_os = "linux"))]
fn bind_address_only(_socket: &TcpSocket) -> io::Result<()> {
    Ok(())
}

/// Sends `HELLO` and waits for `WELCOME`; returns the stream and the
/// `WELCOME`, with any bytes read past it.
async fn handshake(
    mut stream: Stream,
    client_name: &str,
    credentials: &[u8],
) -> Result<(Stream, Welcome, BytesMut), AttemptError> {
    let failed = |err: io::Error| AttemptError::Failed(Error::Io(err));
    let refused = |text: String| AttemptError::Refused(Error::Handshake(text));
    let mut out = BytesMut::new();
    Frame::Hello(Hello {
        version: PROTOCOL_VERSION,
        client_name: client_name.to_owned(),
        credentials: bytes::Bytes::copy_from_slice(credentials),
    })
    .encode(&mut out);
    stream.write_all(&out).await.map_err(failed)?;
    // TLS may keep records back until flushed; plain TCP flushes for nothing.
    stream.flush().await.map_err(failed)?;
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    loop {
        match check(&buf, DEFAULT_MAX_FRAME)
            .map_err(|err| AttemptError::Refused(Error::Protocol(err)))?
        {
            Check::Complete { len } => {
                let frame = decode(buf.split_to(len).freeze())
                    .map_err(|err| AttemptError::Refused(Error::Protocol(err)))?;
                return match frame {
                    Frame::Welcome(welcome) if welcome.version == PROTOCOL_VERSION => {
                        Ok((stream, welcome, buf))
                    }
                    Frame::Welcome(welcome) => Err(refused(format!(
                        "the server speaks protocol version {}, this client speaks {PROTOCOL_VERSION}",
                        welcome.version
                    ))),
                                        Frame::Error(err) => {
                        let text = format!(
                            "the server refused the connection: {}: {}",
                            code_text(err.code(), err.code),
                            err.message
                        );
                        // A node shutting down, or full, turns clients away
                        // for now: another node (or a later try) takes them.
                        let for_now = matches!(
                            err.code(),
                            Some(ErrorCode::ShuttingDown | ErrorCode::TooManyConnections)
                        );
                        Err(if for_now {
                            AttemptError::Failed(Error::Handshake(text))
                        } else {
                            refused(text)
                        })
                    }
                    other => Err(refused(format!(
                        "expected WELCOME, got {:?}",
                        other.opcode()
                    ))),
                };
            }
            Check::Incomplete { .. } => {
                if stream.read_buf(&mut buf).await.map_err(failed)? == 0 {
                    return Err(AttemptError::Failed(Error::Handshake(
                        "the server closed the connection before WELCOME".into(),
                    )));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn affinity_ports_lead_to_the_shard_and_stay_in_range() {
        for count in [1u16, 2, 3, 4, 7, 16, 64, 256] {
            for shard in [0, count / 2, count - 1] {
                for random in [0u64, 1, 12_345, u64::MAX] {
                    let chosen = port_leading_to(shard, count, random);
                    assert_eq!(
                        corebus_net::routing::shard_of_source_port(chosen, count),
                        shard,
                        "{count} {shard}"
                    );
                    let port = u32::from(chosen);
                    assert!(
                        AFFINITY_PORTS.start <= port
                            && port < AFFINITY_PORTS.end + 2 * u32::from(count),
                        "{port} for {count} shards"
                    );
                }
            }
        }
    }
}
