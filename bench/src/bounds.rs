//! Memory bounds under hostile and slow peers (`corebus-bench bounds`),
//! corebus only: what the broker's resident memory does while peers try to
//! make it hold more than its limits say. `bench/bounds.sh` runs both
//! scenarios against a fresh broker each and records the figures quoted in
//! docs/security.md.
//!
//! - `prefix`: many connections that each send only a first-frame length
//!   prefix and nothing more, while a normal client publishes and receives.
//! - `stalled`: per topic, one subscriber that never reads and one that
//!   does, with publishers writing as fast as the healthy subscribers take
//!   messages; every healthy subscriber must receive every message in order.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use corebus_net::{
    check, decode, Check, Frame, Subscribe, TopicKey, DEFAULT_MAX_FRAME, MESSAGE_HEADER_LEN,
};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{sleep, timeout, Instant};

use crate::driver::NAMESPACE;
use crate::lean::{connect, pong, read_frame, Prepared};
use crate::options::Target;
use crate::sys::{ensure_open_files, resident_kib};
use crate::BenchError;

/// How often the broker's memory is sampled.
const SAMPLE: Duration = Duration::from_millis(200);
/// How long the broker is left to settle before a reading.
const SETTLE: Duration = Duration::from_millis(1000);
/// Bytes of deliveries to healthy subscribers that publishers may run ahead
/// by, all together: messages on their way to a healthy subscriber are
/// memory the broker holds too, and must stay inside the fixed overhead.
const WINDOW_BYTES: u64 = 4 << 20;
/// Limit on the healthy subscribers' catching up after publishing stops.
const DRAIN: Duration = Duration::from_secs(30);
/// Fixed overhead allowed over the stalled connections' outbox bounds.
const STALLED_OVERHEAD_KIB: u64 = 16 << 10;

/// The `prefix` scenario's result.
#[derive(Debug, Serialize)]
pub struct PrefixReport {
    /// Connections opened.
    pub connections: usize,
    /// Length each announced.
    pub announced: u32,
    /// How many the broker closed within the settling time.
    pub closed_by_broker: usize,
    /// Broker RSS growth at its highest sample, KiB.
    pub rss_growth_kib: u64,
    /// Whether the normal client published and received meanwhile.
    pub client_served: bool,
}

/// The `stalled` scenario's result.
#[derive(Debug, Serialize)]
pub struct StalledReport {
    /// Topics, each with one stalled and one healthy subscriber.
    pub topics: usize,
    /// Payload bytes per message.
    pub payload: usize,
    /// Seconds of publishing.
    pub seconds: f64,
    /// Messages published.
    pub published: u64,
    /// Messages the healthy subscribers received, in order.
    pub received_by_healthy: u64,
    /// Broker RSS growth at its highest sample, KiB.
    pub rss_growth_kib: u64,
    /// The bound: stalled connections × outbox limit × 1.1 + 16 MiB, KiB.
    pub bound_kib: u64,
}

impl StalledReport {
    /// Whether the run met the bound and lost nothing for the healthy.
    pub fn met(&self) -> bool {
        self.rss_growth_kib <= self.bound_kib && self.received_by_healthy == self.published
    }
}

/// Samples the broker's RSS until told to stop; returns the highest reading.
fn sample_rss(pid: u32, stop: Arc<AtomicU64>) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let mut highest = 0;
        while stop.load(Ordering::Relaxed) == 0 {
            if let Ok(kib) = resident_kib(pid) {
                highest = highest.max(kib);
            }
            sleep(SAMPLE).await;
        }
        highest
    })
}

/// Runs `prefix`: `connections` sockets each send only a length prefix of
/// `announced`, while one normal client publishes a message to itself.
pub async fn prefix(
    url: &str,
    pid: u32,
    connections: usize,
    announced: u32,
) -> Result<PrefixReport, BenchError> {
    ensure_open_files(connections as u64 + 64)?;
    let before = resident_kib(pid)?;
    let stop = Arc::new(AtomicU64::new(0));
    let sampler = sample_rss(pid, stop.clone());
    let mut sockets = Vec::with_capacity(connections);
    for _ in 0..connections {
        let mut stream = TcpStream::connect(url)
            .await
            .map_err(|err| failed("connect", err))?;
        stream
            .write_all(&announced.to_be_bytes())
            .await
            .map_err(|err| failed("send a prefix", err))?;
        sockets.push(stream);
    }
    let client_served = timeout(Duration::from_secs(10), round_trip(url))
        .await
        .is_ok_and(|served| served.is_ok());
    sleep(SETTLE).await;
    // A socket the broker closed reads end of stream (after any error frame).
    let mut closed_by_broker = 0;
    for stream in &mut sockets {
        let mut buf = [0u8; 256];
        loop {
            match timeout(Duration::from_millis(2), stream.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => {
                    closed_by_broker += 1;
                    break;
                }
                Ok(Ok(_)) => continue,
                Err(_) => break,
            }
        }
    }
    stop.store(1, Ordering::Relaxed);
    let highest = sampler
        .await
        .map_err(|err| BenchError::Task(err.to_string()))?;
    Ok(PrefixReport {
        connections,
        announced,
        closed_by_broker,
        rss_growth_kib: highest.saturating_sub(before),
        client_served,
    })
}

/// A normal client's life: subscribe, publish, receive its own message.
async fn round_trip(url: &str) -> Result<(), BenchError> {
    let (mut stream, mut buf) = connect(url).await?;
    subscribe(&mut stream, &mut buf, "bounds-probe").await?;
    let mut out = BytesMut::new();
    corebus_net::encode_publish(
        &mut out,
        2,
        true,
        NAMESPACE.as_bytes(),
        b"bounds-probe",
        corebus_net::PayloadFormat::Plain,
        b"probe",
    );
    stream
        .write_all(&out)
        .await
        .map_err(|err| failed("publish", err))?;
    let mut got_ack = false;
    let mut got_message = false;
    while !(got_ack && got_message) {
        match read_frame(&mut stream, &mut buf, "publish").await? {
            Frame::PubAck(_) => got_ack = true,
            Frame::Message(message) if &message.body.payload()[..] == b"probe" => {
                got_message = true
            }
            Frame::Ping(nonce) => pong(&mut stream, nonce).await?,
            other => return Err(failed("publish", format!("unexpected {other:?}"))),
        }
    }
    Ok(())
}

/// Runs `stalled` for `duration` with `payload`-byte messages over `topics`
/// topics; `outbox_limit` is the broker's, for the bound.
pub async fn stalled(
    url: &str,
    pid: u32,
    topics: usize,
    publishers: usize,
    payload: usize,
    duration: Duration,
    outbox_limit: u64,
) -> Result<StalledReport, BenchError> {
    ensure_open_files(2 * topics as u64 + publishers as u64 + 64)?;
    let names: Vec<String> = (0..topics).map(|topic| format!("bounds-{topic}")).collect();
    let mut stalled = Vec::with_capacity(topics);
    for name in &names {
        let (mut stream, mut buf) = connect(url).await?;
        subscribe(&mut stream, &mut buf, name).await?;
        // The kernel's buffers would otherwise take a few MiB before the
        // broker's outbox sees anything queue up.
        shrink_receive_buffer(&stream);
        stalled.push(stream);
    }
    let delivered = Arc::new(AtomicU64::new(0));
    let mut healthy = Vec::with_capacity(topics);
    for name in &names {
        let (mut stream, mut buf) = connect(url).await?;
        subscribe(&mut stream, &mut buf, name).await?;
        healthy.push(tokio::spawn(read_in_order(
            stream,
            buf,
            payload,
            delivered.clone(),
        )));
    }
    sleep(SETTLE).await;
    let before = resident_kib(pid)?;
    let stop = Arc::new(AtomicU64::new(0));
    let sampler = sample_rss(pid, stop.clone());
    let published = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let end = started + duration;
    let window = (WINDOW_BYTES / (MESSAGE_HEADER_LEN + 1 + payload) as u64).max(1);
    let mut writers = Vec::with_capacity(publishers);
    for publisher in 0..publishers {
        let (stream, _) = connect(url).await?;
        let prepared = Prepared::new(&names, publisher * topics / publishers, payload);
        writers.push(tokio::spawn(publish_until(
            stream,
            prepared,
            end,
            published.clone(),
            delivered.clone(),
            window,
            (window / publishers as u64).max(1),
        )));
    }
    for writer in writers {
        writer
            .await
            .map_err(|err| BenchError::Task(err.to_string()))??;
    }
    let seconds = started.elapsed().as_secs_f64();
    let total = published.load(Ordering::Relaxed);
    let drain_end = Instant::now() + DRAIN;
    while delivered.load(Ordering::Relaxed) < total && Instant::now() < drain_end {
        sleep(SAMPLE).await;
    }
    stop.store(1, Ordering::Relaxed);
    let highest = sampler
        .await
        .map_err(|err| BenchError::Task(err.to_string()))?;
    for reader in healthy {
        reader.abort();
        if let Ok(Err(err)) = reader.await {
            return Err(err);
        }
    }
    drop(stalled);
    let bound_kib = (topics as u64 * outbox_limit / 1024) * 11 / 10 + STALLED_OVERHEAD_KIB;
    Ok(StalledReport {
        topics,
        payload,
        seconds,
        published: total,
        received_by_healthy: delivered.load(Ordering::Relaxed),
        rss_growth_kib: highest.saturating_sub(before),
        bound_kib,
    })
}

async fn subscribe(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    name: &str,
) -> Result<(), BenchError> {
    let topic = TopicKey::new(NAMESPACE.as_bytes(), name.as_bytes())
        .map_err(|err| failed("subscribe", err))?;
    let mut out = BytesMut::new();
    Frame::Subscribe(Subscribe {
        request_id: 1,
        sub_id: 1,
        resume: None,
        topic,
    })
    .encode(&mut out);
    stream
        .write_all(&out)
        .await
        .map_err(|err| failed("subscribe", err))?;
    match read_frame(stream, buf, "subscribe").await? {
        Frame::SubOk(ok) if ok.start_after == 0 => Ok(()),
        other => Err(failed(
            "subscribe",
            format!("expected SUB_OK after 0, got {other:?}"),
        )),
    }
}

fn shrink_receive_buffer(stream: &TcpStream) {
    let size: libc::c_int = 4096;
    // SAFETY: setsockopt on a socket this process owns, with a pointer to a
    // c_int that outlives the call and its exact size.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// Writes the prepared frames until `end`, never more than `window`
/// messages ahead of the healthy subscribers.
async fn publish_until(
    mut stream: TcpStream,
    prepared: Prepared,
    end: Instant,
    published: Arc<AtomicU64>,
    delivered: Arc<AtomicU64>,
    window: u64,
    per_write: u64,
) -> Result<(), BenchError> {
    let frames = (prepared.ends.len() as u64).min(per_write);
    let bytes = prepared.bytes.slice(..prepared.ends[frames as usize - 1]);
    while Instant::now() < end {
        while published.load(Ordering::Relaxed) + frames
            > delivered.load(Ordering::Relaxed) + window
        {
            if Instant::now() >= end {
                return Ok(());
            }
            sleep(Duration::from_micros(200)).await;
        }
        timeout(DRAIN, stream.write_all(&bytes))
            .await
            .map_err(|_| failed("publish", "the broker stopped reading"))?
            .map_err(|err| failed("publish", err))?;
        published.fetch_add(frames, Ordering::Relaxed);
    }
    Ok(())
}

/// Reads a healthy subscription: every `MESSAGE` in sequence from 1, of the
/// right size; anything else (a discontinuity above all) fails the run.
async fn read_in_order(
    mut stream: TcpStream,
    mut buf: BytesMut,
    payload: usize,
    delivered: Arc<AtomicU64>,
) -> Result<(), BenchError> {
    let mut next_seq = 1u64;
    loop {
        loop {
            match check(&buf, DEFAULT_MAX_FRAME) {
                Ok(Check::Complete { len }) => {
                    // MESSAGE: length, opcode, sub_id, epoch, seq, format
                    // byte, payload.
                    if buf[4] == 0x85 && len == MESSAGE_HEADER_LEN + 1 + payload {
                        let seq = u64::from_be_bytes(buf[17..25].try_into().expect("8 bytes"));
                        if seq != next_seq {
                            return Err(failed(
                                "receive",
                                format!("a healthy subscriber got seq {seq}, expected {next_seq}"),
                            ));
                        }
                        next_seq += 1;
                        delivered.fetch_add(1, Ordering::Relaxed);
                        buf.advance(len);
                        continue;
                    }
                    match decode(buf.split_to(len).freeze()) {
                        Ok(Frame::Ping(nonce)) => pong(&mut stream, nonce).await?,
                        other => {
                            return Err(failed(
                                "receive",
                                format!("a healthy subscriber got {other:?}"),
                            ))
                        }
                    }
                }
                Ok(Check::Incomplete { .. }) => break,
                Err(err) => return Err(failed("receive", err)),
            }
        }
        buf.reserve(256 << 10);
        let read = stream
            .read_buf(&mut buf)
            .await
            .map_err(|err| failed("receive", err))?;
        if read == 0 {
            return Err(failed("receive", "the broker closed a healthy subscriber"));
        }
    }
}

fn failed(action: &'static str, reason: impl std::fmt::Display) -> BenchError {
    crate::driver::failed(Target::Corebus, action, reason)
}
