//! The raw baseline's "broker": a trivial loopback TCP relay inside the
//! harness, for measuring what one hop through the kernel's loopback costs
//! with no broker logic at all.
//!
//! It accepts one subscriber connection, then one publisher connection, and
//! from then on a dedicated thread copies whatever bytes the publisher sends
//! to the subscriber with blocking `read` and `write_all` through a
//! [`RELAY_BUFFER`] buffer: no parsing, no framing, no queueing, no
//! acknowledgements. The publisher and subscriber ([`crate::driver`]'s `raw`
//! driver) frame each payload with a 4-byte length, so the bytes crossing the
//! two sockets are the payloads plus 4 bytes each. A broker does the same two
//! socket hops (publisher → broker → subscriber) plus all of its own work, so
//! corebus's delivered bytes/s divided by this relay's, at the same payload
//! size and on the same machine, is the fraction of the loopback's capacity
//! that corebus delivers.
//!
//! The wire protocol is one byte from each client saying what it is
//! ([`ROLE_SUBSCRIBER`] or [`ROLE_PUBLISHER`]); the relay answers a subscriber
//! with [`READY`] once it holds it, so the harness can start publishing as it
//! does after a broker confirms a subscription.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use crate::BenchError;

/// First byte of a subscriber connection.
pub const ROLE_SUBSCRIBER: u8 = b'S';
/// First byte of a publisher connection.
pub const ROLE_PUBLISHER: u8 = b'P';
/// The relay's answer to a subscriber it now holds.
pub const READY: u8 = b'+';
/// Bytes moved per `read`/`write_all` pair: large enough that a 16 KiB
/// payload stream costs few system calls, as a broker's batched writes do.
pub const RELAY_BUFFER: usize = 256 * 1024;
/// The relay gives up on clients that have not both arrived by then.
const ACCEPT_LIMIT: Duration = Duration::from_secs(60);

/// A relay listening on loopback; dropping it stops accepting (a copy that
/// has started ends when the publisher closes or the subscriber goes away).
#[derive(Debug)]
pub struct Relay {
    addr: SocketAddr,
    accepting: JoinHandle<()>,
}

impl Relay {
    /// Listens on `addr` (a loopback address, checked by the caller; port 0
    /// for any free port) and waits for one subscriber and one publisher.
    pub async fn start(addr: SocketAddr) -> Result<Relay, BenchError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|err| relay_failed("listen", err))?;
        let addr = listener
            .local_addr()
            .map_err(|err| relay_failed("listen", err))?;
        let accepting = tokio::spawn(async move {
            match tokio::time::timeout(ACCEPT_LIMIT, accept_pair(listener)).await {
                Ok(Ok(())) => {}
                Ok(Err(err)) => eprintln!("raw relay: {err}"),
                Err(_) => eprintln!(
                    "raw relay: no subscriber and publisher within {} s",
                    ACCEPT_LIMIT.as_secs()
                ),
            }
        });
        Ok(Relay { addr, accepting })
    }

    /// Where the relay listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

fn relay_failed(action: &'static str, err: impl std::fmt::Display) -> BenchError {
    BenchError::Broker {
        target: "raw",
        action,
        reason: err.to_string(),
    }
}

/// Takes one subscriber, then one publisher, and starts the copy thread.
async fn accept_pair(listener: TcpListener) -> Result<(), BenchError> {
    let mut subscriber: Option<TcpStream> = None;
    loop {
        let (mut stream, _) = listener
            .accept()
            .await
            .map_err(|err| relay_failed("accept", err))?;
        stream
            .set_nodelay(true)
            .map_err(|err| relay_failed("accept", err))?;
        let mut role = [0u8; 1];
        stream
            .read_exact(&mut role)
            .await
            .map_err(|err| relay_failed("accept", err))?;
        match role[0] {
            ROLE_SUBSCRIBER => {
                if subscriber.is_some() {
                    return Err(relay_failed("accept", "a second subscriber"));
                }
                stream
                    .write_all(&[READY])
                    .await
                    .map_err(|err| relay_failed("accept", err))?;
                subscriber = Some(stream);
            }
            ROLE_PUBLISHER => {
                let Some(subscriber) = subscriber.take() else {
                    return Err(relay_failed(
                        "accept",
                        "a publisher arrived before the subscriber",
                    ));
                };
                let from = blocking(stream)?;
                let to = blocking(subscriber)?;
                std::thread::Builder::new()
                    .name("raw-relay".into())
                    .spawn(move || copy_bytes(from, to))
                    .map_err(|err| relay_failed("start the relay thread", err))?;
                return Ok(());
            }
            other => {
                return Err(relay_failed(
                    "accept",
                    format!(
                        "unexpected first byte {other:#04x} (one subscriber, then one publisher)"
                    ),
                ))
            }
        }
    }
}

fn blocking(stream: TcpStream) -> Result<std::net::TcpStream, BenchError> {
    let stream = stream
        .into_std()
        .map_err(|err| relay_failed("accept", err))?;
    stream
        .set_nonblocking(false)
        .map_err(|err| relay_failed("accept", err))?;
    Ok(stream)
}

/// Copies until the publisher closes its side (or either socket fails),
/// then closes the subscriber's, so the subscriber sees the end.
fn copy_bytes(mut from: std::net::TcpStream, mut to: std::net::TcpStream) {
    let mut buffer = vec![0u8; RELAY_BUFFER];
    loop {
        let read = match from.read(&mut buffer) {
            Ok(0) => break,
            Ok(read) => read,
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
            // The harness has gone away; there is no one to report to.
            Err(_) => break,
        };
        if to.write_all(&buffer[..read]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}
