//! A subscriber that stops reading while a publisher sends hundreds of MiB:
//! the broker's memory stays bounded, the publisher keeps going, a healthy
//! subscriber receives everything, and the stalled one is told exactly what
//! it lost. The broker runs as its own process so its memory can be read from
//! /proc.

use crate::common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use common::Serve;
use corebus_client::Client;
use corebus_net::{check, decode, Check, Frame, Hello, Subscribe, TopicKey, PROTOCOL_VERSION};

const OUTBOX_LIMIT: usize = 4 << 20;
const PAYLOAD: usize = 16 * 1024;
const MESSAGES: u64 = 16 * 1024; // 256 MiB in total
const HEALTHY_WINDOW: u64 = 128;

fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("broker status");
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"))
}

/// Subscribes over a raw socket and then reads nothing until told to.
fn stalled_subscriber(addr: &str, topic: &TopicKey) -> TcpStream {
    let mut stream = TcpStream::connect(addr).expect("connects");
    let mut out = BytesMut::new();
    Frame::Hello(Hello {
        version: PROTOCOL_VERSION,
        client_name: "stalled".into(),
        credentials: bytes::Bytes::new(),
    })
    .encode(&mut out);
    Frame::Subscribe(Subscribe {
        request_id: 1,
        sub_id: 1,
        resume: None,
        topic: topic.clone(),
    })
    .encode(&mut out);
    stream.write_all(&out).expect("writes");
    stream
}

#[test]
fn stalled_subscriber_costs_bounded_memory_and_nothing_else() {
    let outbox_limit = OUTBOX_LIMIT.to_string();
    let broker = Serve::start(&["--shards", "2", "--outbox-limit", &outbox_limit]);
    let (addr, pid) = (broker.addr.clone(), broker.child.id());

    let topic = TopicKey::from_strs("test", "firehose").expect("valid");
    let mut stalled = stalled_subscriber(&addr, &topic);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (published_in, baseline_kib) = runtime.block_on(async {
        let healthy = Client::connect(&addr).await.expect("connects");
        let mut sub = healthy
            .subscribe("test", "firehose")
            .await
            .expect("subscribes");
        let publisher = Client::connect(&addr).await.expect("connects");
        // Let the stalled subscription register before measuring.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let baseline_kib = status_kib(pid, "VmRSS:");
        // The healthy subscriber keeps up by definition: the publisher never
        // runs more than HEALTHY_WINDOW messages (2 MiB, half its bound) ahead
        // of it. The stalled one gets no such courtesy.
        let received = Arc::new(AtomicU64::new(0));
        let reader_progress = received.clone();
        let reader = tokio::spawn(async move {
            for seq in 1..=MESSAGES {
                let message = tokio::time::timeout(Duration::from_secs(60), sub.next_message())
                    .await
                    .expect("healthy subscriber keeps receiving")
                    .expect("open")
                    .expect("no error, no gap");
                assert_eq!(message.seq, seq);
                assert_eq!(message.payload.len(), PAYLOAD);
                reader_progress.store(seq, Ordering::Release);
            }
        });
        let started = Instant::now();
        let payload = Bytes::from(vec![7u8; PAYLOAD]);
        let mut acks = std::collections::VecDeque::new();
        for seq in 1..=MESSAGES {
            let deadline = Instant::now() + Duration::from_secs(60);
            while seq > received.load(Ordering::Acquire) + HEALTHY_WINDOW {
                assert!(
                    Instant::now() < deadline,
                    "healthy subscriber stopped at {seq}"
                );
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
            acks.push_back(
                publisher
                    .start_publish("test", "firehose", payload.clone())
                    .await
                    .expect("queued"),
            );
            if acks.len() > 256 {
                acks.pop_front().expect("non-empty").await.expect("acked");
            }
        }
        for ack in acks {
            ack.await.expect("acked");
        }
        let published_in = started.elapsed();
        tokio::time::timeout(Duration::from_secs(60), reader)
            .await
            .expect("in time")
            .expect("no panic");
        (published_in, baseline_kib)
    });
    let peak_kib = status_kib(pid, "VmHWM:");
    let growth_mib = peak_kib.saturating_sub(baseline_kib) as f64 / 1024.0;
    eprintln!(
        "published {} MiB in {:.2}s while one subscriber stalled; broker RSS {} KiB at start, peak {} KiB (+{growth_mib:.1} MiB) with a {} MiB outbox bound",
        (MESSAGES as usize * PAYLOAD) >> 20,
        published_in.as_secs_f64(),
        baseline_kib,
        peak_kib,
        OUTBOX_LIMIT >> 20
    );
    // The stalled connection holds at most its 4 MiB bound; the rest is the
    // healthy path's buffers and the topic's 1 MiB replay ring (whose 16 KiB
    // payloads are slices of 64 KiB read buffers).
    assert!(growth_mib < 48.0, "broker grew by {growth_mib:.1} MiB");

    // Now the stalled subscriber reads: what it got plus what it was told it
    // lost covers 1..=MESSAGES exactly once.
    stalled
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut buf = BytesMut::new();
    let mut next = 1u64;
    let mut gaps = 0;
    let mut chunk = vec![0u8; 256 * 1024];
    while next <= MESSAGES {
        match check(&buf, 2 << 20).expect("framing") {
            Check::Complete { len } => match decode(buf.split_to(len).freeze()).expect("frame") {
                Frame::Welcome(_) | Frame::SubOk(_) | Frame::Ping(_) => {}
                Frame::Message(message) => {
                    assert_eq!(message.seq, next, "no silent gap, no duplicate");
                    next += 1;
                }
                Frame::Discontinuity(gap) => {
                    assert_eq!(
                        gap.last_seq,
                        next - 1,
                        "the gap starts right after what arrived"
                    );
                    assert!(gap.next_seq > next);
                    next = gap.next_seq;
                    gaps += 1;
                }
                other => panic!("unexpected {other:?}"),
            },
            Check::Incomplete { .. } => {
                let n = stalled
                    .read(&mut chunk)
                    .expect("the stalled subscriber is still connected");
                assert!(n > 0, "connection closed at seq {next}");
                buf.extend_from_slice(&chunk[..n]);
            }
        }
        if next > MESSAGES {
            break;
        }
    }
    assert!(gaps >= 1, "messages were dropped and reported");
}
