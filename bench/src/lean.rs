//! The lean load generator (`--lean`): corebus only, `pair`, `fanout` and
//! `many`, delivered throughput and CPU only.
//!
//! The main harness drives every broker through its own client library and
//! stamps, checks and times each message. That costs about as much CPU per
//! message as the corebus broker spends, so on a machine whose cores the
//! harness shares with the broker it cannot show how the broker scales with
//! its shards (target 5): with two shards on two cores the harness takes the
//! second core. This generator speaks the wire protocol itself with
//! `corebus-net`'s codec: a publisher writes a prepared buffer of `PUBLISH`
//! frames (fire-and-forget) for its topics in turn, and a subscriber walks
//! the frames it reads only as far as each `MESSAGE`'s header.
//!
//! Delivery is still checked, through the broker's sequence numbers: every
//! subscription must receive its topic's messages in order, without a gap or
//! a repeat, from the start point its `SUB_OK` named, and in the end as many
//! as were published to the topic. Payloads carry no harness header, so there
//! is no latency figure. Flow control bounds the deliveries in flight over
//! the whole run (what the publishers sent and the subscribers have not yet
//! read), below every subscriber's outbound limit at the broker.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use corebus_net::{
    check, decode, encode_publish, encode_subscribe, Check, Frame, Hello, Opcode, PayloadFormat,
    DEFAULT_MAX_FRAME, MESSAGE_HEADER_LEN, PROTOCOL_VERSION,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{watch, Notify};
use tokio::time::{timeout, timeout_at, Instant};

use crate::driver::NAMESPACE;
use crate::load::{topic_names, DRAIN_LIMIT, FINISH_TIMEOUT, IDLE};
use crate::options::{Plan, Target};
use crate::report::Report;
use crate::sys::CpuMark;
use crate::BenchError;

/// Deliveries that may be in flight over the whole run at most (unless one
/// write of a publisher makes more, for a shape with huge fan-out). At the
/// defaults this is the main harness's per-topic window summed over the
/// `many` scenario's subscriptions: 64 Ki deliveries, about 9 MiB of 128-byte
/// messages spread over every subscriber.
const MAX_IN_FLIGHT: u64 = 65_536;
/// A publisher writes at least this many frames at a time.
const WRITE_FRAMES: usize = 256;
/// Bytes a subscriber asks for per read.
const READ_BYTES: usize = 256 << 10;
/// Limit on each step of a connection's set-up.
const SETUP_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a waiting subscriber or publisher looks at the clock.
const POLL: Duration = Duration::from_millis(100);

/// What publishers and subscribers share while the run lasts.
#[derive(Default)]
struct Shared {
    /// Messages the publishers have written.
    sent: AtomicU64,
    /// Deliveries the subscribers have read.
    delivered: AtomicU64,
    /// Woken after each subscriber read, for publishers held by the window.
    progress: Notify,
}

/// Runs `plan` (`pair`, `fanout` or `many` against corebus) with the lean
/// generator.
pub async fn run(plan: &Plan) -> Result<Report, BenchError> {
    let topics = topic_names(plan.topics);
    let mut held: Vec<Vec<usize>> = vec![Vec::new(); plan.subscribers];
    for index in 0..plan.subscriptions() {
        let slot = plan.subscription(index);
        held[slot.connection].push(slot.topic);
    }
    let mut subscribers = Vec::with_capacity(plan.subscribers);
    for topics_held in held {
        subscribers.push(Subscriber::connect(&plan.url, &topics, topics_held, plan.size).await?);
    }
    let mut publishers = Vec::with_capacity(plan.publishers);
    for index in 0..plan.publishers {
        let (stream, _) = connect(&plan.url).await?;
        // Publishers start spread over the topics.
        let first = index * plan.topics / plan.publishers;
        publishers.push((stream, Prepared::new(&topics, first, plan.size)));
    }
    // Deliveries per message on average, as a fraction subscriptions/topics.
    let fan = (plan.subscriptions() as u64, plan.topics as u64);
    // At least one write's deliveries, or a publisher would never start.
    let per_write = (WRITE_FRAMES.div_ceil(plan.topics) * plan.subscriptions()) as u64;
    let window = (plan.window.saturating_mul(plan.subscribers as u64))
        .min(MAX_IN_FLIGHT)
        .max(per_write);

    let shared = Arc::new(Shared::default());
    let (expected_tx, expected_rx) = watch::channel::<Option<Arc<Vec<u64>>>>(None);
    let cpu_before = CpuMark::now(plan.broker_pid);
    let started = Instant::now();
    let end = started + plan.duration;
    let deadline = end + FINISH_TIMEOUT + DRAIN_LIMIT;
    let subscriber_tasks: Vec<_> = subscribers
        .into_iter()
        .map(|subscriber| {
            tokio::spawn(subscriber.receive(shared.clone(), expected_rx.clone(), deadline))
        })
        .collect();
    let publisher_tasks: Vec<_> = publishers
        .into_iter()
        .map(|(stream, prepared)| {
            let shared = shared.clone();
            let limit = plan.messages;
            tokio::spawn(async move {
                publish(stream, prepared, &shared, end, limit, window, fan).await
            })
        })
        .collect();

    let mut per_topic = vec![0u64; plan.topics];
    let mut first_error = None;
    for (index, task) in publisher_tasks.into_iter().enumerate() {
        match task.await {
            Ok(Ok(sent)) => {
                let first = index * plan.topics / plan.publishers;
                for (topic, count) in per_topic.iter_mut().enumerate() {
                    *count += sent_to(topic, first, plan.topics, sent);
                }
            }
            Ok(Err(err)) => {
                first_error.get_or_insert(err);
            }
            Err(err) => {
                first_error.get_or_insert(BenchError::Task(err.to_string()));
            }
        }
    }
    if let Some(err) = first_error {
        // Without totals the subscribers would read until the deadline.
        for task in &subscriber_tasks {
            task.abort();
        }
        return Err(err);
    }
    let per_topic = Arc::new(per_topic);
    // Subscribers stop only on their totals, idleness or the deadline.
    let _ = expected_tx.send(Some(per_topic.clone()));

    let mut report = Report::for_plan(plan);
    let mut last = started;
    let mut gaps = 0;
    for task in subscriber_tasks {
        let outcome = task
            .await
            .map_err(|err| BenchError::Task(err.to_string()))??;
        for (topic, received) in outcome.received {
            report.expected += per_topic[topic];
            report.delivered += received;
            report.lost += per_topic[topic].saturating_sub(received);
        }
        gaps += outcome.gaps;
        report.disorder += outcome.disorder;
        last = last.max(outcome.last);
    }
    // A gap the broker skipped and a message that never came are the same
    // loss, seen from two sides: count the larger.
    report.lost = report.lost.max(gaps);
    let cpu_after = CpuMark::now(plan.broker_pid);
    (report.broker_cpu_us_per_msg, report.harness_cpu_us_per_msg) =
        cpu_before.per_message(&cpu_after, report.delivered);
    report.published = per_topic.iter().sum();
    report.duration_s = last.duration_since(started).as_secs_f64();
    report.window = Some(window);
    report.lean = Some(true);
    // Its connections go wherever the listeners put them: affinity is not
    // a setting of this generator.
    report.affinity = None;
    report.compute_rates();
    Ok(report)
}

/// Of `sent` messages written to topics `first, first + 1, …` (mod
/// `topics`), how many went to `topic`.
fn sent_to(topic: usize, first: usize, topics: usize, sent: u64) -> u64 {
    let topics = topics as u64;
    let offset = (topic as u64 + topics - first as u64 % topics) % topics;
    sent / topics + u64::from(offset < sent % topics)
}

/// A publisher's frames, prepared once: whole rounds over the topics from
/// its first one, at least [`WRITE_FRAMES`] frames.
pub(crate) struct Prepared {
    pub(crate) bytes: Bytes,
    /// End offset of each frame in `bytes`.
    pub(crate) ends: Vec<usize>,
}

impl Prepared {
    pub(crate) fn new(topics: &[String], first: usize, size: usize) -> Prepared {
        let payload = vec![0x5a; size];
        let rounds = WRITE_FRAMES.div_ceil(topics.len());
        let mut bytes = BytesMut::new();
        let mut ends = Vec::with_capacity(rounds * topics.len());
        for index in 0..rounds * topics.len() {
            let topic = &topics[(first + index) % topics.len()];
            encode_publish(
                &mut bytes,
                0,
                false,
                NAMESPACE.as_bytes(),
                topic.as_bytes(),
                PayloadFormat::Plain,
                &payload,
            );
            ends.push(bytes.len());
        }
        Prepared {
            bytes: bytes.freeze(),
            ends,
        }
    }
}

/// Writes prepared frames until `end` or `limit` messages, keeping the
/// deliveries in flight under `window`; returns the messages written.
async fn publish(
    mut stream: TcpStream,
    prepared: Prepared,
    shared: &Shared,
    end: Instant,
    limit: u64,
    window: u64,
    (subscriptions, topics): (u64, u64),
) -> Result<u64, BenchError> {
    let frames = prepared.ends.len() as u64;
    let mut sent = 0u64;
    while sent < limit && Instant::now() < end {
        let count = frames.min(limit - sent);
        // Wait while the deliveries in flight would pass the window.
        loop {
            let progress = shared.progress.notified();
            let due = (shared.sent.load(Ordering::Relaxed) + count) * subscriptions / topics;
            if due <= shared.delivered.load(Ordering::Relaxed) + window {
                break;
            }
            if Instant::now() >= end {
                return Ok(sent);
            }
            let _ = timeout(POLL, progress).await;
        }
        let bytes = &prepared.bytes[..prepared.ends[count as usize - 1]];
        timeout_at(end + FINISH_TIMEOUT, stream.write_all(bytes))
            .await
            .map_err(|_| lean_failed("publish", "the broker stopped reading"))?
            .map_err(|err| lean_failed("publish", err))?;
        sent += count;
        shared.sent.fetch_add(count, Ordering::Relaxed);
    }
    Ok(sent)
}

/// One subscription's expectations.
struct Track {
    topic: usize,
    epoch: u64,
    /// The sequence number its next message must carry.
    next: u64,
    received: u64,
}

/// A subscriber connection with every subscription confirmed.
struct Subscriber {
    stream: TcpStream,
    buf: BytesMut,
    tracks: Vec<Track>,
    /// Payload bytes every message must have.
    size: usize,
}

/// What a subscriber saw.
struct Outcome {
    /// (topic, messages received) per subscription.
    received: Vec<(usize, u64)>,
    /// Messages the sequence numbers say were skipped.
    gaps: u64,
    /// Messages repeated, out of order, of another epoch, of no subscription
    /// or of the wrong size.
    disorder: u64,
    /// When it last read a message.
    last: Instant,
}

impl Subscriber {
    async fn connect(
        url: &str,
        names: &[String],
        topics: Vec<usize>,
        size: usize,
    ) -> Result<Subscriber, BenchError> {
        let (mut stream, mut buf) = connect(url).await?;
        let mut out = BytesMut::new();
        for (sub_id, topic) in topics.iter().enumerate() {
            encode_subscribe(
                &mut out,
                sub_id as u32,
                sub_id as u32,
                None,
                NAMESPACE.as_bytes(),
                names[*topic].as_bytes(),
            );
        }
        stream
            .write_all(&out)
            .await
            .map_err(|err| lean_failed("subscribe", err))?;
        let mut tracks: Vec<Option<Track>> = topics.iter().map(|_| None).collect();
        while tracks.iter().any(Option::is_none) {
            match read_frame(&mut stream, &mut buf, "subscribe").await? {
                Frame::SubOk(ok) => {
                    let slot = tracks.get_mut(ok.sub_id as usize).ok_or_else(|| {
                        lean_failed("subscribe", format!("SUB_OK for unknown id {}", ok.sub_id))
                    })?;
                    *slot = Some(Track {
                        topic: topics[ok.sub_id as usize],
                        epoch: ok.epoch,
                        next: ok.start_after + 1,
                        received: 0,
                    });
                }
                Frame::Ping(nonce) => pong(&mut stream, nonce).await?,
                other => return Err(lean_failed("subscribe", format!("unexpected {other:?}"))),
            }
        }
        Ok(Subscriber {
            stream,
            buf,
            tracks: tracks.into_iter().flatten().collect(),
            size,
        })
    }

    /// Reads until every subscription has its topic's total (known once the
    /// publishers are done), the connection stays idle for [`IDLE`] after
    /// that, or `deadline`.
    async fn receive(
        mut self,
        shared: Arc<Shared>,
        expected: watch::Receiver<Option<Arc<Vec<u64>>>>,
        deadline: Instant,
    ) -> Result<Outcome, BenchError> {
        let mut gaps = 0u64;
        let mut disorder = 0u64;
        let mut last = Instant::now();
        loop {
            let totals = expected.borrow().clone();
            if let Some(totals) = &totals {
                let complete = self
                    .tracks
                    .iter()
                    .all(|track| track.received >= totals[track.topic]);
                if complete || last.elapsed() >= IDLE {
                    break;
                }
            }
            if Instant::now() >= deadline {
                break;
            }
            self.buf.reserve(READ_BYTES);
            let read = match timeout(POLL, self.stream.read_buf(&mut self.buf)).await {
                Err(_) => continue,
                Ok(Err(err)) => return Err(lean_failed("receive", err)),
                Ok(Ok(0)) => {
                    return Err(lean_failed("receive", "the broker closed the connection"))
                }
                Ok(Ok(_)) => self.walk(&mut gaps, &mut disorder).await?,
            };
            if read > 0 {
                last = Instant::now();
                shared.delivered.fetch_add(read, Ordering::Relaxed);
                shared.progress.notify_waiters();
            }
        }
        Ok(Outcome {
            received: self
                .tracks
                .iter()
                .map(|track| (track.topic, track.received))
                .collect(),
            gaps,
            disorder,
            last,
        })
    }

    /// Checks and drops every whole frame in the buffer; returns the
    /// messages among them.
    async fn walk(&mut self, gaps: &mut u64, disorder: &mut u64) -> Result<u64, BenchError> {
        let mut messages = 0;
        loop {
            let len = match check(&self.buf, DEFAULT_MAX_FRAME) {
                Ok(Check::Complete { len }) => len,
                Ok(Check::Incomplete { .. }) => return Ok(messages),
                Err(err) => return Err(lean_failed("receive", err)),
            };
            if self.buf[4] == Opcode::Message as u8 && len >= MESSAGE_HEADER_LEN {
                let mut header = &self.buf[5..MESSAGE_HEADER_LEN];
                let (sub_id, epoch, seq) = (header.get_u32(), header.get_u64(), header.get_u64());
                // The body: the format byte and the payload.
                let whole = len - MESSAGE_HEADER_LEN == 1 + self.size;
                match self.tracks.get_mut(sub_id as usize) {
                    Some(track) if whole && track.epoch == epoch && seq >= track.next => {
                        *gaps += seq - track.next;
                        track.next = seq + 1;
                        track.received += 1;
                        messages += 1;
                    }
                    _ => *disorder += 1,
                }
                self.buf.advance(len);
                continue;
            }
            let frame = decode(self.buf.split_to(len).freeze())
                .map_err(|err| lean_failed("receive", err))?;
            match frame {
                Frame::Ping(nonce) => pong(&mut self.stream, nonce).await?,
                Frame::Discontinuity(lost) => {
                    *gaps += lost.next_seq.saturating_sub(lost.last_seq + 1);
                }
                other => return Err(lean_failed("receive", format!("unexpected {other:?}"))),
            }
        }
    }
}

/// Opens a connection and completes the handshake; returns it with what was
/// read past the `WELCOME`.
pub(crate) async fn connect(url: &str) -> Result<(TcpStream, BytesMut), BenchError> {
    let mut stream = timeout(SETUP_TIMEOUT, TcpStream::connect(url))
        .await
        .map_err(|_| lean_failed("connect", "timed out"))?
        .map_err(|err| lean_failed("connect", err))?;
    stream
        .set_nodelay(true)
        .map_err(|err| lean_failed("connect", err))?;
    let mut out = BytesMut::new();
    Frame::Hello(Hello {
        version: PROTOCOL_VERSION,
        client_name: "corebus-bench lean".into(),
        credentials: Bytes::new(),
    })
    .encode(&mut out);
    stream
        .write_all(&out)
        .await
        .map_err(|err| lean_failed("connect", err))?;
    let mut buf = BytesMut::new();
    match read_frame(&mut stream, &mut buf, "connect").await? {
        Frame::Welcome(_) => Ok((stream, buf)),
        other => Err(lean_failed(
            "connect",
            format!("expected WELCOME, got {other:?}"),
        )),
    }
}

/// Reads one whole frame during set-up.
pub(crate) async fn read_frame(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    action: &'static str,
) -> Result<Frame, BenchError> {
    loop {
        match check(buf, DEFAULT_MAX_FRAME) {
            Ok(Check::Complete { len }) => {
                return decode(buf.split_to(len).freeze()).map_err(|err| lean_failed(action, err));
            }
            Ok(Check::Incomplete { .. }) => {}
            Err(err) => return Err(lean_failed(action, err)),
        }
        buf.reserve(4096);
        let read = timeout(SETUP_TIMEOUT, stream.read_buf(buf))
            .await
            .map_err(|_| lean_failed(action, "no answer in time"))?
            .map_err(|err| lean_failed(action, err))?;
        if read == 0 {
            return Err(lean_failed(action, "the broker closed the connection"));
        }
    }
}

pub(crate) async fn pong(stream: &mut TcpStream, nonce: u64) -> Result<(), BenchError> {
    let mut out = BytesMut::new();
    Frame::Pong(nonce).encode(&mut out);
    stream
        .write_all(&out)
        .await
        .map_err(|err| lean_failed("pong", err))
}

/// An error while doing `action` against corebus.
fn lean_failed(action: &'static str, reason: impl std::fmt::Display) -> BenchError {
    crate::driver::failed(Target::Corebus, action, reason)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_per_topic_follow_the_round_robin() {
        // 10 messages over 4 topics from topic 3: 3,0,1,2,3,0,1,2,3,0.
        let counts: Vec<u64> = (0..4).map(|topic| sent_to(topic, 3, 4, 10)).collect();
        assert_eq!(counts, vec![3, 2, 2, 3]);
        assert_eq!(sent_to(0, 0, 1, 7), 7);
        assert_eq!(
            (0..1024).map(|t| sent_to(t, 64, 1024, 5000)).sum::<u64>(),
            5000
        );
    }

    #[test]
    fn prepared_frames_cover_whole_rounds() {
        let names: Vec<String> = (0..3).map(|t| format!("t{t}")).collect();
        let prepared = Prepared::new(&names, 1, 32);
        assert_eq!(prepared.ends.len(), WRITE_FRAMES.div_ceil(3) * 3);
        let mut rest = prepared.bytes.clone();
        let mut seen = Vec::new();
        while !rest.is_empty() {
            let Ok(Check::Complete { len }) = check(&rest, DEFAULT_MAX_FRAME) else {
                panic!("a prepared frame is cut short");
            };
            match decode(rest.split_to(len)) {
                Ok(Frame::Publish(publish)) => {
                    assert!(!publish.ack);
                    assert_eq!(publish.body.payload().len(), 32);
                    seen.push(publish.topic.topic().to_owned());
                }
                other => panic!("not a publish: {other:?}"),
            }
        }
        assert_eq!(&seen[..4], ["t1", "t2", "t0", "t1"]);
    }
}
