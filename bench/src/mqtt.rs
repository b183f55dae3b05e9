//! `corebus-bench mqtt`: the same MQTT 3.1.1 load against any MQTT broker
//! (corebus's MQTT listener, Mosquitto, nats-server's MQTT listener), with
//! the harness's own client (the `corebus-mqtt` codec over tokio), so the
//! three differ only in the broker. MQTT 3.1.1 because nats-server speaks
//! no 5.0; QoS 0 or 1 because it has no QoS 2.
//!
//! Shapes as the native scenarios': `pair` (1 -> 1, one topic), `fanout`
//! (1 -> N subscribers of one topic), `many` (P publishers -> S
//! subscribers over T topics, each topic read by one subscriber, every
//! publisher sending to every topic in turn), flat out under a window of
//! messages in flight (sent and not yet delivered), and `latency`: the same
//! shapes at a fixed total rate, latency measured from the intended send
//! time. Every delivery is counted (per subscriber, against what its
//! topics were sent); the run reports delivered msg/s, losses, and latency
//! percentiles, as one JSON line.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use corebus_mqtt::{
    self as mqtt, Ack, AckKind, Connect, MqttStr, Packet, Properties, QoS, Version,
};
use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

/// Options of one MQTT run.
#[derive(Debug, Clone, clap::Args)]
pub struct MqttOptions {
    /// The broker, host:port.
    #[arg(long, default_value = "127.0.0.1:1883")]
    pub url: String,
    /// What the report calls the broker.
    #[arg(long, default_value = "mqtt")]
    pub label: String,
    /// pair, fanout, many or latency.
    #[arg(long, default_value = "pair")]
    pub scenario: String,
    /// Publisher connections.
    #[arg(long, default_value_t = 1)]
    pub publishers: usize,
    /// Subscriber connections.
    #[arg(long, default_value_t = 1)]
    pub subscribers: usize,
    /// Topics (`many` and `latency`; `pair` and `fanout` use one).
    #[arg(long, default_value_t = 1)]
    pub topics: usize,
    /// Payload bytes (at least 16: a sequence number and a send time).
    #[arg(long, default_value_t = 128)]
    pub size: usize,
    /// QoS of publishes and subscriptions: 0 or 1.
    #[arg(long, default_value_t = 0)]
    pub qos: u8,
    /// Seconds of publishing.
    #[arg(long, default_value_t = 5)]
    pub duration: u64,
    /// `latency`: messages per second, all publishers together.
    #[arg(long, default_value_t = 2000)]
    pub rate: u64,
    /// Messages in flight (sent, not yet delivered to every subscriber),
    /// all publishers together, for the flat-out shapes.
    #[arg(long, default_value_t = 20_000)]
    pub window: u64,
}

/// QoS 1 publishes a publisher may have unanswered: what brokers accept
/// by default (nats-server's MQTT `max_ack_pending` is 1,024; corebus
/// closes a client past its `max_in_flight`, 16,384).
const MAX_UNACKED: u64 = 1000;

/// What the subscribers saw, shared.
#[derive(Default)]
struct Seen {
    /// Deliveries (one per subscriber a message reached).
    delivered: AtomicU64,
    latency: Mutex<Option<Histogram<u64>>>,
}

/// Runs one MQTT benchmark and prints its report (a JSON line).
pub async fn run(options: MqttOptions) -> anyhow::Result<bool> {
    let qos = match options.qos {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        other => anyhow::bail!("--qos {other}: 0 or 1 (NATS has no QoS 2)"),
    };
    anyhow::ensure!(options.size >= 16, "--size is at least 16 bytes");
    let latency_run = options.scenario == "latency";
    let (publishers, subscribers, topics) = match options.scenario.as_str() {
        "pair" => (1, 1, 1),
        "fanout" => (1, options.subscribers.max(1), 1),
        "many" | "latency" => (
            options.publishers.max(1),
            options.subscribers.max(1),
            options.topics.max(options.subscribers).max(1),
        ),
        other => anyhow::bail!("--scenario {other}: pair, fanout, many or latency"),
    };
    let names: Vec<String> = (0..topics).map(|t| format!("bench/t{t}")).collect();
    // Who reads each topic: `fanout` every subscriber; otherwise subscriber
    // t mod S, so each topic has one reader.
    let readers_per_topic = if options.scenario == "fanout" {
        subscribers as u64
    } else {
        1
    };
    let seen = Arc::new(Seen {
        delivered: AtomicU64::new(0),
        latency: Mutex::new(Some(Histogram::new_with_bounds(1, 60_000_000, 3)?)),
    });
    let epoch = Instant::now();
    let measuring = Arc::new(AtomicBool::new(false));
    let mut readers = Vec::new();
    for s in 0..subscribers {
        let mine: Vec<String> = if options.scenario == "fanout" {
            names.clone()
        } else {
            names
                .iter()
                .enumerate()
                .filter(|(t, _)| t % subscribers == s)
                .map(|(_, name)| name.clone())
                .collect()
        };
        let conn = Conn::connect(&options.url, &format!("bench-sub-{s}")).await?;
        let (read, write) = conn.subscribe(&mine, qos).await?;
        let seen = seen.clone();
        let measuring = measuring.clone();
        readers.push(tokio::spawn(read_loop(read, write, seen, epoch, measuring)));
    }
    let sent = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for p in 0..publishers {
        let conn = Conn::connect(&options.url, &format!("bench-pub-{p}")).await?;
        let plan = Plan {
            topics: names
                .iter()
                .map(|name| MqttStr::new(name).expect("a topic"))
                .collect(),
            qos,
            size: options.size,
            epoch,
            interval: latency_run
                .then(|| Duration::from_secs_f64(publishers as f64 / options.rate.max(1) as f64)),
            window: options.window,
            readers_per_topic,
        };
        if plan.interval.is_some() {
            // Open loop on a thread of its own, paced with precise sleeps
            // (tokio's timer would make sends late by up to a millisecond).
            let stream = conn.stream.into_std()?;
            let (sent, stop) = (sent.clone(), stop.clone());
            writers.push(tokio::task::spawn_blocking(move || {
                paced_loop(stream, plan, sent, stop)
            }));
        } else {
            writers.push(tokio::spawn(publish_loop(
                conn,
                plan,
                sent.clone(),
                seen.clone(),
                stop.clone(),
            )));
        }
    }
    // One second of warm-up, then the measured part.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (start_delivered, start) = (seen.delivered.load(Ordering::Relaxed), Instant::now());
    measuring.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(options.duration)).await;
    let delivered_in_window = seen.delivered.load(Ordering::Relaxed) - start_delivered;
    let elapsed = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.await??;
    }
    let expected = sent.load(Ordering::Relaxed) * readers_per_topic;
    // Drain: what was sent arrives within a few seconds or is lost.
    let deadline = Instant::now() + Duration::from_secs(10);
    while seen.delivered.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let delivered = seen.delivered.load(Ordering::Relaxed);
    // The readers merge their last measurements once idle.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for reader in readers {
        reader.abort();
    }
    let histogram = seen
        .latency
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .take()
        .unwrap_or_else(|| Histogram::new(3).expect("a histogram"));
    let us = |q: f64| histogram.value_at_quantile(q) as f64;
    let report = serde_json::json!({
        "broker": options.label,
        "scenario": options.scenario,
        "qos": options.qos,
        "publishers": publishers,
        "subscribers": subscribers,
        "topics": topics,
        "size": options.size,
        "delivered_per_sec": delivered_in_window as f64 / elapsed,
        "sent": sent.load(Ordering::Relaxed),
        "expected": expected,
        "delivered": delivered,
        "lost": expected.saturating_sub(delivered),
        "latency_us": { "p50": us(0.5), "p99": us(0.99), "p999": us(0.999), "max": histogram.max() as f64 },
    });
    println!("{report}");
    Ok(delivered >= expected)
}

/// What a publisher sends.
struct Plan {
    topics: Vec<MqttStr>,
    qos: QoS,
    size: usize,
    epoch: Instant,
    /// `latency`: one message per interval (see [`paced_loop`]); else
    /// flat out (see [`publish_loop`]).
    interval: Option<Duration>,
    window: u64,
    readers_per_topic: u64,
}

impl Plan {
    /// Appends message `n` to topic number `topic`, stamped with `at`
    /// (the send time, or the intended one), taking a packet id at QoS 1.
    fn encode(&self, out: &mut BytesMut, topic: usize, n: u64, at: Instant, packet_id: &mut u16) {
        let mut payload = BytesMut::with_capacity(self.size);
        payload.put_u64(n);
        payload.put_u64(at.duration_since(self.epoch).as_nanos() as u64);
        payload.resize(self.size, b'x');
        let id = (self.qos == QoS::AtLeastOnce).then(|| {
            *packet_id = packet_id.wrapping_add(1).max(1);
            *packet_id
        });
        Packet::Publish(mqtt::Publish {
            dup: false,
            qos: self.qos,
            retain: false,
            topic: self.topics[topic].clone(),
            packet_id: id,
            properties: Properties::default(),
            payload: payload.freeze(),
        })
        .encode(Version::V311, out);
    }
}

async fn publish_loop(
    conn: Conn,
    plan: Plan,
    sent: Arc<AtomicU64>,
    seen: Arc<Seen>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let (mut read, mut write) = conn.stream.into_split();
    // QoS 1: PUBACKs are read (and counted) on their own task.
    let acked = Arc::new(AtomicU64::new(0));
    let ack_reader = (plan.qos == QoS::AtLeastOnce).then(|| {
        let acked = acked.clone();
        tokio::spawn(async move {
            let mut input = BytesMut::with_capacity(64 << 10);
            while let Ok(Some(packet)) = next_packet(&mut read, &mut input).await {
                if let Packet::Ack(ack) = packet {
                    if ack.kind == AckKind::PubAck {
                        acked.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        })
    });
    let mut out = BytesMut::with_capacity(256 << 10);
    let mut own_sent: u64 = 0;
    let mut packet_id: u16 = 0;
    let mut turn = 0usize;
    while !stop.load(Ordering::Relaxed) {
        // Flat out, within the window of messages in flight, and at QoS 1
        // with at most MAX_UNACKED publishes unanswered.
        let expected = sent.load(Ordering::Relaxed) * plan.readers_per_topic;
        let in_flight = expected - seen.delivered.load(Ordering::Relaxed).min(expected);
        let unacked =
            plan.qos == QoS::AtLeastOnce && own_sent - acked.load(Ordering::Relaxed) >= MAX_UNACKED;
        if unacked || in_flight > plan.window * plan.readers_per_topic {
            write.write_all(&out).await?;
            out.clear();
            tokio::task::yield_now().await;
            continue;
        }
        plan.encode(&mut out, turn, own_sent, Instant::now(), &mut packet_id);
        turn = (turn + 1) % plan.topics.len();
        own_sent += 1;
        sent.fetch_add(1, Ordering::Relaxed);
        if out.len() >= 64 << 10 {
            write.write_all(&out).await?;
            out.clear();
        }
    }
    write.write_all(&out).await?;
    if let Some(reader) = ack_reader {
        // Every QoS 1 publish answered (or 10 s).
        let deadline = Instant::now() + Duration::from_secs(10);
        while acked.load(Ordering::Relaxed) < own_sent && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        reader.abort();
    }
    let mut disconnect = BytesMut::new();
    Packet::Disconnect(mqtt::Disconnect {
        reason: 0,
        properties: Properties::default(),
    })
    .encode(Version::V311, &mut disconnect);
    let _ = write.write_all(&disconnect).await;
    Ok(())
}

/// The latency shape's publisher: message `n` is due at `start + n *
/// interval` and carries that time however late it leaves (no coordinated
/// omission); QoS 1 acknowledgements are read on another thread.
fn paced_loop(
    stream: std::net::TcpStream,
    plan: Plan,
    sent: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    use std::io::{Read, Write};
    crate::sys::precise_sleeps();
    stream.set_nonblocking(false)?;
    let interval = plan.interval.unwrap_or(Duration::from_millis(1));
    let mut write = stream.try_clone()?;
    let mut read = stream;
    // Acknowledgements (and anything else) are read and dropped: the
    // window is the rate, not the acks.
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 64 << 10];
        while matches!(read.read(&mut buf), Ok(n) if n > 0) {}
    });
    let start = Instant::now();
    let mut out = BytesMut::with_capacity(4096);
    let mut packet_id: u16 = 0;
    let mut n: u64 = 0;
    while !stop.load(Ordering::Relaxed) {
        let due = start + interval.mul_f64(n as f64);
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        out.clear();
        plan.encode(
            &mut out,
            n as usize % plan.topics.len(),
            n,
            due,
            &mut packet_id,
        );
        write.write_all(&out)?;
        n += 1;
        sent.fetch_add(1, Ordering::Relaxed);
    }
    Ok(())
}

async fn read_loop(
    mut read: OwnedReadHalf,
    mut write: OwnedWriteHalf,
    seen: Arc<Seen>,
    epoch: Instant,
    measuring: Arc<AtomicBool>,
) -> anyhow::Result<()> {
    let mut input = BytesMut::with_capacity(256 << 10);
    let mut acks = BytesMut::new();
    let mut local = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    let mut count = 0u64;
    loop {
        // Idle for a tenth of a second: what was measured is merged, so the
        // report has it (reading is cancel-safe: bytes stay in `input`).
        let packet = match tokio::time::timeout(
            Duration::from_millis(100),
            next_packet(&mut read, &mut input),
        )
        .await
        {
            Err(_) => {
                merge(&seen, &mut local);
                continue;
            }
            Ok(packet) => match packet? {
                Some(packet) => packet,
                None => return Ok(()),
            },
        };
        if let Packet::Publish(publish) = packet {
            if let Some(id) = publish.packet_id {
                Packet::Ack(Ack {
                    kind: AckKind::PubAck,
                    packet_id: id,
                    reason: 0,
                    properties: Properties::default(),
                })
                .encode(Version::V311, &mut acks);
            }
            if publish.payload.len() >= 16 && measuring.load(Ordering::Relaxed) {
                let sent_ns = u64::from_be_bytes(publish.payload[8..16].try_into()?);
                let now_ns = epoch.elapsed().as_nanos() as u64;
                // Microseconds, up to a minute.
                let _ = local.record((now_ns.saturating_sub(sent_ns) / 1000).max(1));
            }
            seen.delivered.fetch_add(1, Ordering::Relaxed);
            count += 1;
            if count.is_multiple_of(1024) {
                merge(&seen, &mut local);
            }
        }
        // Acknowledge what a read brought in one write.
        if !acks.is_empty() && input.is_empty() {
            write.write_all(&acks).await?;
            acks.clear();
            merge(&seen, &mut local);
        }
    }
}

fn merge(seen: &Seen, local: &mut Histogram<u64>) {
    if local.is_empty() {
        return;
    }
    if let Ok(mut shared) = seen.latency.lock() {
        if let Some(shared) = shared.as_mut() {
            let _ = shared.add(&*local);
        }
    }
    local.reset();
}

/// The next packet from `read`, `None` at its end.
async fn next_packet(
    read: &mut OwnedReadHalf,
    input: &mut BytesMut,
) -> anyhow::Result<Option<Packet>> {
    loop {
        if let mqtt::Check::Complete { len } = mqtt::check(input, usize::MAX)? {
            let packet: Bytes = input.split_to(len).freeze();
            return Ok(Some(mqtt::decode(packet, Version::V311)?));
        }
        if input.capacity() - input.len() < 16 << 10 {
            input.reserve(64 << 10);
        }
        if read.read_buf(input).await? == 0 {
            return Ok(None);
        }
    }
}

/// A connected, accepted MQTT 3.1.1 connection.
struct Conn {
    stream: TcpStream,
}

impl Conn {
    async fn connect(url: &str, id: &str) -> anyhow::Result<Conn> {
        let mut stream = TcpStream::connect(url).await?;
        stream.set_nodelay(true)?;
        let mut out = BytesMut::new();
        Packet::Connect(Box::new(Connect {
            version: Version::V311,
            client_id: MqttStr::new(id).expect("an id"),
            clean_start: true,
            keep_alive: 0,
            username: None,
            password: None,
            will: None,
            properties: Properties::default(),
        }))
        .encode(Version::V311, &mut out);
        stream.write_all(&out).await?;
        let (mut read, write) = stream.into_split();
        let mut input = BytesMut::new();
        match next_packet(&mut read, &mut input).await? {
            Some(Packet::ConnAck(ack)) if ack.code == 0 => {}
            other => anyhow::bail!("{url}: no accepting CONNACK: {other:?}"),
        }
        Ok(Conn {
            stream: read.reunite(write)?,
        })
    }

    /// Subscribes to every topic and waits for the `SUBACK`s.
    async fn subscribe(
        self,
        topics: &[String],
        qos: QoS,
    ) -> anyhow::Result<(OwnedReadHalf, OwnedWriteHalf)> {
        let (mut read, mut write) = self.stream.into_split();
        let mut out = BytesMut::new();
        for (chunk, ids) in topics.chunks(64).zip(1u16..) {
            Packet::Subscribe(mqtt::Subscribe {
                packet_id: ids,
                properties: Properties::default(),
                filters: chunk
                    .iter()
                    .map(|topic| mqtt::Subscription {
                        filter: MqttStr::new(topic).expect("a filter"),
                        qos,
                        no_local: false,
                        retain_as_published: false,
                        retain_handling: mqtt::RetainHandling::OnSubscribe,
                    })
                    .collect(),
            })
            .encode(Version::V311, &mut out);
        }
        write.write_all(&out).await?;
        let mut input = BytesMut::new();
        let mut acked = 0;
        while acked < topics.len().div_ceil(64) {
            match next_packet(&mut read, &mut input).await? {
                Some(Packet::SubAck(ack)) if ack.codes.iter().all(|code| *code < 0x80) => {
                    acked += 1
                }
                other => anyhow::bail!("a SUBACK granting every topic, not {other:?}"),
            }
        }
        Ok((read, write))
    }
}
