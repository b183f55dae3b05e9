//! Promises of docs/ proved against the `corebus serve` binary, flags and
//! all: the slow-consumer `disconnect` policy, the connection limit, GOAWAY
//! at shutdown, and a `--print-config` that shows no secret.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use corebus_client::Client;
use corebus_net::{ErrorCode, Frame, Hello, Subscribe, TopicKey, PROTOCOL_VERSION};
use corebus_tests::{RawConn, Received};

use crate::common;

use common::{Serve, TempFile};

const BIN: &str = env!("CARGO_BIN_EXE_corebus");

/// A raw connection that has said HELLO.
async fn raw_welcomed(addr: &str) -> RawConn {
    let mut raw = RawConn::connect(addr.parse().expect("a socket address")).await;
    raw.hello().await;
    raw
}

/// A raw connection that has sent HELLO as `name`, its answer not read.
async fn raw_hello_sent(addr: &str, name: &str) -> RawConn {
    let mut raw = RawConn::connect(addr.parse().expect("a socket address")).await;
    raw.send(&Frame::Hello(Hello {
        version: PROTOCOL_VERSION,
        client_name: name.into(),
        credentials: Bytes::new(),
    }))
    .await;
    raw
}

/// The next frame that is not a MESSAGE (or DISCONTINUITY), failing after
/// `wait` of silence.
async fn next_control(raw: &mut RawConn, wait: Duration) -> Option<Frame> {
    loop {
        match raw.next_within(wait).await {
            Received::Frame(Frame::Message(_) | Frame::Discontinuity(_)) => continue,
            Received::Frame(frame) => return Some(frame),
            Received::Closed | Received::Reset => return None,
            Received::TimedOut => panic!("nothing from the broker for {wait:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_disconnect_policy_closes_only_the_slow_subscriber() {
    let serve = Serve::start(&[
        "--shards",
        "2",
        "--slow-consumer",
        "disconnect",
        "--outbox-limit",
        "1048576",
    ]);
    let topic = TopicKey::from_strs("app", "firehose").expect("valid");
    // The slow one subscribes, then stops reading.
    let mut slow = raw_welcomed(&serve.addr).await;
    slow.send(&Frame::Subscribe(Subscribe {
        request_id: 1,
        sub_id: 1,
        resume: None,
        topic: topic.clone(),
    }))
    .await;
    assert!(matches!(slow.recv().await, Some(Frame::SubOk(_))));
    let healthy = Client::connect(serve.addr.as_str())
        .await
        .expect("connects");
    let mut sub = healthy
        .subscribe("app", "firehose")
        .await
        .expect("subscribes");
    let publisher = Client::connect(serve.addr.as_str())
        .await
        .expect("connects");
    // 64 MiB: far more than the slow one's 1 MiB bound and what the kernel's
    // socket buffers hold on its behalf.
    const COUNT: u64 = 4096;
    let payload = Bytes::from(vec![7u8; 16 << 10]);
    // The publisher stays at most 32 messages (512 KiB) ahead of the healthy
    // subscriber, so that only the slow one can pass the 1 MiB bound.
    let received = Arc::new(AtomicU64::new(0));
    let progress = received.clone();
    let reader = tokio::spawn(async move {
        for seq in 1..=COUNT {
            let message = sub.next_message().await.expect("open").expect("message");
            assert_eq!(message.seq, seq, "the healthy subscriber misses nothing");
            progress.store(seq, Ordering::Release);
        }
    });
    for published in 0..COUNT {
        while published >= received.load(Ordering::Acquire) + 32 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        publisher
            .publish("app", "firehose", payload.clone())
            .await
            .expect("acked");
    }
    tokio::time::timeout(Duration::from_secs(30), reader)
        .await
        .expect("the healthy subscriber received everything in time")
        .expect("reader");
    // The slow one finds, after what was queued for it, the documented error.
    match next_control(&mut slow, Duration::from_secs(10)).await {
        Some(Frame::Error(error)) => {
            assert_eq!(error.code(), Some(ErrorCode::SlowConsumer));
            assert!(error.fatal);
            assert!(error.message.contains("1048576"), "{}", error.message);
        }
        other => panic!("expected a fatal slow_consumer error, got {other:?}"),
    }
    slow.expect_closed().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_past_the_limit_is_refused_and_a_freed_slot_is_reused() {
    let serve = Serve::start(&["--shards", "2", "--max-connections", "3"]);
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(raw_welcomed(&serve.addr).await);
    }
    let mut over = raw_hello_sent(&serve.addr, "fourth").await;
    match over.recv().await {
        Some(Frame::Error(error)) => {
            assert_eq!(error.code(), Some(ErrorCode::TooManyConnections));
            assert!(error.fatal);
            assert!(error.message.contains("maximum of 3"), "{}", error.message);
        }
        other => panic!("expected too_many_connections, got {other:?}"),
    }
    over.expect_closed().await;
    // The three keep working.
    for (n, raw) in held.iter_mut().enumerate() {
        raw.send(&Frame::Ping(n as u64)).await;
        assert!(matches!(raw.recv().await, Some(Frame::Pong(nonce)) if nonce == n as u64));
    }
    // Once one leaves, its slot is free again (as soon as the broker has seen
    // the close: retried until then).
    drop(held.pop());
    let started = Instant::now();
    loop {
        let mut next = raw_hello_sent(&serve.addr, "again").await;
        match next.recv().await {
            Some(Frame::Welcome(_)) => break,
            Some(Frame::Error(error)) if error.code() == Some(ErrorCode::TooManyConnections) => {
                assert!(
                    started.elapsed() < Duration::from_secs(5),
                    "the slot was never freed"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => panic!("expected WELCOME or a refusal, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_sends_goaway_with_its_fields_before_closing() {
    let mut serve = Serve::start(&["--shards", "2", "--shutdown-deadline", "4s"]);
    let mut raw = raw_welcomed(&serve.addr).await;
    let stopping = tokio::task::spawn_blocking(move || {
        let (status, _) = serve.terminate(Duration::from_secs(10));
        status
    });
    match raw.recv().await {
        Some(Frame::GoAway(goaway)) => {
            assert_eq!(goaway.drain_ms, 4000, "the shutdown deadline");
            assert!(!goaway.message.is_empty());
        }
        other => panic!("expected GOAWAY, got {other:?}"),
    }
    // The client leaves; the broker then exits 0.
    drop(raw);
    let status = stopping.await.expect("joined");
    assert!(status.success(), "{status:?}");
}

#[test]
fn print_config_shows_where_secrets_come_from_never_their_value() {
    let token_secret = "tok-secret-".repeat(4);
    let previous = "old-secret-".repeat(4);
    let webhook_secret = "whsec_print_config_must_not_show_this";
    let key = TempFile::new(
        "print-key.pem",
        "-----BEGIN PRIVATE KEY-----\nTLS-KEY-BYTES\n",
    );
    let cert = TempFile::new("print-cert.pem", "not used by --print-config\n");
    let config = TempFile::new(
        "print.toml",
        &format!(
            "token_secret = \"{token_secret}\"\n\
             token_secret_previous = \"{previous}\"\n\
             tls_cert = \"{}\"\ntls_key = \"{}\"\n\
             [[webhooks]]\nid = \"hook\"\nurl = \"https://hooks.example.com/in\"\n\
             namespace = \"app\"\ntopic = \"t\"\nsecret = \"{webhook_secret}\"\n",
            cert.path(),
            key.path()
        ),
    );
    let out = std::process::Command::new(BIN)
        .args(["serve", "--config", config.path(), "--print-config"])
        .env("COREBUS_TOKEN_SECRET_PREVIOUS", "env-secret-".repeat(4))
        .output()
        .expect("runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("token_secret"),
        "the origin is shown:\n{text}"
    );
    for secret in [
        token_secret.as_str(),
        previous.as_str(),
        "env-secret-",
        webhook_secret,
        "TLS-KEY-BYTES",
    ] {
        assert!(!text.contains(secret), "{secret:?} printed:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_broker_beyond_loopback_refuses_webhook_commands() {
    let serve = Serve::start(&[
        "--shards",
        "1",
        "--listen",
        "0.0.0.0:0",
        "--insecure-no-auth",
    ]);
    let port = serve.addr.rsplit_once(':').expect("host:port").1;
    let client = Client::connect(format!("127.0.0.1:{port}"))
        .await
        .expect("connects");
    let spec = corebus_client::WebhookSpec::new(
        "https://hooks.example.com/in",
        "app",
        "t",
        corebus_client::WebhookMatch::Exact,
    );
    for refused in [
        client.add_webhook(&spec).await.map(|_| ()),
        client.list_webhooks().await.map(|_| ()),
    ] {
        match refused {
            Err(err) => {
                assert_eq!(err.server_code(), Some(ErrorCode::Forbidden), "{err}");
                assert!(err.to_string().contains("without authentication"), "{err}");
            }
            Ok(()) => panic!("a webhook command was carried out on an open public broker"),
        }
    }
    // Publishing still works: only webhook commands are refused.
    client.publish("app", "t", "x").await.expect("acked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_sends_pings_and_never_reads_is_bounded_then_closed() {
    let serve = Serve::start(&["--shards", "1", "--outbox-limit", "1048576"]);
    let mut greedy = raw_welcomed(&serve.addr).await;
    let bystander = Client::connect(serve.addr.as_str())
        .await
        .expect("connects");
    // 4 million PINGs (52 MB) and not one PONG read: the PONGs may take twice
    // the 1 MiB bound, then the connection is closed as a slow consumer.
    let mut pings = bytes::BytesMut::new();
    for nonce in 0..100_000u64 {
        Frame::Ping(nonce).encode(&mut pings);
    }
    for _ in 0..40 {
        greedy.send_bytes(&pings).await;
    }
    // The sends above end once the broker closes the socket: it stops
    // reading when the PONGs fill their bound, and a peer that reads nothing
    // cannot be handed the error either, so the socket is closed 5 s later
    // (the writer cut off mid-frame, perhaps). What was in flight arrives,
    // then the close.
    let answered = greedy.drain_until_closed(Duration::from_secs(15)).await;
    assert!(answered > 0, "some PONGs were sent");
    assert!(
        answered < 4_000_000 * 13,
        "closed before answering everything: {answered} bytes"
    );
    // Nobody else noticed.
    bystander.publish("app", "calm", "x").await.expect("acked");
}
