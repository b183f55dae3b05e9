//! The raw baseline: plain TCP to the harness's own relay
//! ([`crate::relay`]), no broker.
//!
//! Each payload goes on the wire as a 4-byte little-endian length and the
//! payload. The publisher queues payloads for a writer task that takes
//! whatever is queued, frames it into one buffer and writes it with one
//! `write_all` (the batching every broker client here does in some form);
//! the subscriber reads into a large buffer and cuts frames out of it.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::{failed, PublisherDone, Received};
use crate::options::Target;
use crate::payload::Header;
use crate::relay::{READY, RELAY_BUFFER, ROLE_PUBLISHER, ROLE_SUBSCRIBER};
use crate::BenchError;

const TARGET: Target = Target::Raw;
/// Bytes of the length in front of every payload.
const LEN_PREFIX: usize = 4;
/// Largest frame accepted: anything longer is a corrupted stream.
const MAX_FRAME: usize = 64 << 20;
/// Payloads framed into one write at most.
const MAX_BATCH: usize = 1024;
/// Payloads queued for the writer task before `publish` waits.
const QUEUE: usize = 1 << 16;

async fn connect(url: &str, role: u8) -> Result<TcpStream, BenchError> {
    let mut stream = TcpStream::connect(url)
        .await
        .map_err(|err| failed(TARGET, "connect", err))?;
    stream
        .set_nodelay(true)
        .map_err(|err| failed(TARGET, "connect", err))?;
    stream
        .write_all(&[role])
        .await
        .map_err(|err| failed(TARGET, "connect", err))?;
    Ok(stream)
}

/// Frames payloads and writes them in batches from a background task.
pub struct RawPublisher {
    queue: mpsc::Sender<Bytes>,
    task: JoinHandle<Result<(), BenchError>>,
}

impl RawPublisher {
    pub(super) async fn connect(url: &str) -> Result<Self, BenchError> {
        let stream = connect(url, ROLE_PUBLISHER).await?;
        let (queue, payloads) = mpsc::channel(QUEUE);
        let task = tokio::spawn(write_frames(stream, payloads));
        Ok(RawPublisher { queue, task })
    }

    /// Queues one payload; the relay has a single topic, so no topic is
    /// named.
    pub(super) async fn publish(&mut self, payload: Bytes) -> Result<(), BenchError> {
        if self.queue.send(payload).await.is_err() {
            // Only an error ends the writer before `finish`.
            return Err(match (&mut self.task).await {
                Ok(Err(err)) => err,
                Ok(Ok(())) => failed(TARGET, "publish", "the writer task ended"),
                Err(err) => BenchError::Task(err.to_string()),
            });
        }
        Ok(())
    }

    /// Writes what is queued, then closes the connection (the relay passes
    /// the end on to the subscriber).
    pub(super) async fn finish(self) -> Result<PublisherDone, BenchError> {
        let RawPublisher { queue, task } = self;
        drop(queue);
        task.await
            .map_err(|err| BenchError::Task(err.to_string()))??;
        Ok(PublisherDone { max_seq: None })
    }
}

async fn write_frames(
    mut stream: TcpStream,
    mut payloads: mpsc::Receiver<Bytes>,
) -> Result<(), BenchError> {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut buffer = BytesMut::new();
    loop {
        if payloads.recv_many(&mut batch, MAX_BATCH).await == 0 {
            return stream
                .shutdown()
                .await
                .map_err(|err| failed(TARGET, "close", err));
        }
        buffer.clear();
        for payload in batch.drain(..) {
            let len = u32::try_from(payload.len())
                .map_err(|_| failed(TARGET, "publish", "a payload of 4 GiB or more"))?;
            buffer.put_u32_le(len);
            buffer.put_slice(&payload);
        }
        stream
            .write_all(&buffer)
            .await
            .map_err(|err| failed(TARGET, "publish", err))?;
    }
}

/// Reads length-prefixed frames from the relay.
pub struct RawSubscriber {
    stream: TcpStream,
    buffer: BytesMut,
}

impl RawSubscriber {
    pub(super) async fn connect(url: &str) -> Result<Self, BenchError> {
        let mut stream = connect(url, ROLE_SUBSCRIBER).await?;
        let mut answer = [0u8; 1];
        stream
            .read_exact(&mut answer)
            .await
            .map_err(|err| failed(TARGET, "subscribe", err))?;
        if answer[0] != READY {
            return Err(failed(
                TARGET,
                "subscribe",
                format!("the relay answered {:#04x}", answer[0]),
            ));
        }
        Ok(RawSubscriber {
            stream,
            buffer: BytesMut::with_capacity(RELAY_BUFFER),
        })
    }

    /// The next frame; `Ok(None)` once the relay closed the stream.
    /// Cancel-safe: `read_buf` reads nothing when cancelled, and frames are
    /// cut out of the buffer only when whole.
    pub(super) async fn next(&mut self) -> Result<Option<Received>, BenchError> {
        loop {
            if let Some(received) = self.take_frame()? {
                return Ok(Some(received));
            }
            if self.buffer.capacity() - self.buffer.len() < RELAY_BUFFER / 2 {
                self.buffer.reserve(RELAY_BUFFER);
            }
            let read = self
                .stream
                .read_buf(&mut self.buffer)
                .await
                .map_err(|err| failed(TARGET, "receive", err))?;
            if read == 0 {
                if self.buffer.is_empty() {
                    return Ok(None);
                }
                return Err(failed(
                    TARGET,
                    "receive",
                    format!(
                        "the stream ended inside a frame ({} bytes left)",
                        self.buffer.len()
                    ),
                ));
            }
        }
    }

    fn take_frame(&mut self) -> Result<Option<Received>, BenchError> {
        let Some(prefix) = self.buffer.first_chunk::<LEN_PREFIX>() else {
            return Ok(None);
        };
        let len = u32::from_le_bytes(*prefix) as usize;
        if len > MAX_FRAME {
            return Err(failed(
                TARGET,
                "receive",
                format!("a frame of {len} bytes: the stream is corrupted"),
            ));
        }
        let Some(frame) = self.buffer.get(LEN_PREFIX..LEN_PREFIX + len) else {
            return Ok(None);
        };
        let header = Header::parse(frame);
        self.buffer.advance(LEN_PREFIX + len);
        Ok(Some(Received {
            subscription: 0,
            seq: None,
            header,
            len,
        }))
    }
}
