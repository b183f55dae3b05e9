//! Webhooks end to end: a `corebus serve` child posting to HTTP servers on
//! loopback (the tests' own, and the Python and Node.js receivers of
//! docs/examples), every signature checked by the receiver.

use crate::common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream as StdStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use common::receiver::{assert_signed, now_secs, Received, Receiver, Reply, WAIT};
use common::{free_port, Serve, TempFile, BIN};
use corebus_client::{Client, Error, WebhookMatch, WebhookSpec};
use corebus_net::ErrorCode;
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

const SECRET: &str = "whsec_test-secret-for-the-webhook-tests";

fn data_dir(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("webhooks-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Lets webhooks post to this test's receivers on loopback (refused by
/// default).
const LOOPBACK_RECEIVERS: [&str; 2] = ["--webhook-allow-networks", "127.0.0.0/8"];

/// `corebus serve --data-dir DIR` with `args` (receivers on loopback
/// allowed), and a client connected to it.
async fn start(dir: &Path, args: &[&str]) -> (Serve, Client) {
    let dir = dir.to_str().expect("UTF-8 temporary path");
    let serve = Serve::start(&[&["--data-dir", dir], &LOOPBACK_RECEIVERS[..], args].concat());
    let client = Client::connect(serve.addr.as_str())
        .await
        .expect("connects");
    (serve, client)
}

fn spec(url: &str, topic: &str, kind: WebhookMatch) -> WebhookSpec {
    WebhookSpec::new(url, "app", topic, kind).with_secret(SECRET)
}

/// A free loopback port (bound, then released).
fn scrape(port: u16) -> String {
    let mut stream = StdStream::connect(("127.0.0.1", port)).expect("metrics endpoint");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .expect("writes");
    let mut text = String::new();
    stream.read_to_string(&mut text).expect("reads");
    text
}

/// The value of the sample `name` (with its labels, as scraped) in `text`.
fn sample(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|value| value.parse().ok())
}

/// Scrapes until `done` holds for the text; fails after [`WAIT`].
async fn wait_for_metrics(port: u16, what: &str, done: impl Fn(&str) -> bool) -> String {
    let started = Instant::now();
    loop {
        let text = scrape(port);
        if done(&text) {
            return text;
        }
        assert!(
            started.elapsed() < WAIT,
            "{what}: not within {WAIT:?}; the metrics:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_posts_arrive_in_topic_order_and_verify() {
    let receiver = Receiver::start(|_, _| Reply::Status(204)).await;
    let dir = data_dir("signed");
    let metrics_port = free_port();
    let metrics = format!("127.0.0.1:{metrics_port}");
    let serve = Serve::start(&[
        "--shards",
        "2",
        "--data-dir",
        dir.to_str().expect("UTF-8"),
        "--metrics",
        &metrics,
        LOOPBACK_RECEIVERS[0],
        LOOPBACK_RECEIVERS[1],
    ]);
    let client = Client::connect(serve.addr.as_str())
        .await
        .expect("connects");
    let hook = client
        .add_webhook(&spec(&receiver.url, "orders/", WebhookMatch::Prefix))
        .await
        .expect("added");
    assert_eq!(hook.secret.as_deref(), Some(SECRET));
    let topics = ["orders/eu", "orders/us", "orders/asia"];
    let per_topic = 100u64;
    for i in 0..per_topic {
        for topic in topics {
            client
                .publish("app", topic, format!("{topic} #{i}"))
                .await
                .expect("published");
        }
        client
            .publish("app", "invoices", "not for the webhook")
            .await
            .expect("published");
    }
    client
        .publish("app", "orders/bin", vec![0xffu8, 0x00, 0x10])
        .await
        .expect("published");
    let total = topics.len() * per_topic as usize + 1;
    // The fence: a webhook posts its messages one at a time in the order they
    // were published (a retry before the next message), so once this last
    // one arrived everything published before it has been posted.
    client
        .publish("app", "orders/fence", "fence")
        .await
        .expect("published");
    let requests = receiver
        .wait_for("every message posted, then the fence", |r| {
            r.iter().any(|q| q.topic() == "orders/fence")
        })
        .await;
    let (fence, requests) = requests.split_last().expect("the fence");
    assert_eq!(fence.topic(), "orders/fence", "nothing after the fence");
    // Nothing more arrived: no duplicate, nothing from `invoices`.
    assert_eq!(requests.len(), total);

    let mut next: HashMap<String, u64> = HashMap::new();
    for request in requests {
        assert_signed(request, &[SECRET]);
        let body = request.json();
        assert_eq!(body["webhook"], hook.id.as_str());
        assert_eq!(body["namespace"], "app");
        assert!(body["epoch"]
            .as_str()
            .expect("epoch is a string")
            .parse::<u64>()
            .is_ok());
        let published_ms = body["published_ms"].as_u64().expect("published_ms");
        assert!(now_secs().abs_diff(published_ms / 1000) < 60);
        assert_eq!(request.headers["content-type"], "application/json");
        // The unsigned headers carry nothing the signed body does not
        // (docs/webhooks.md: a receiver relies on the body's values).
        assert_eq!(request.headers["corebus-webhook"], body["webhook"]);
        assert_eq!(
            request.headers["corebus-delivery"],
            format!(
                "{}-{}",
                body["epoch"].as_str().expect("epoch"),
                request.seq()
            )
        );
        let topic = request.topic();
        let expected = next.entry(topic.clone()).or_insert(1);
        assert_eq!(request.seq(), *expected, "{topic} out of order");
        *expected += 1;
        if topic == "orders/bin" {
            assert_eq!(
                (body["encoding"].as_str(), body["payload"].as_str()),
                (Some("base64"), Some("/wAQ"))
            );
        } else {
            assert_eq!(body["encoding"], "utf8");
            assert_eq!(body["payload"], format!("{topic} #{}", request.seq() - 1));
        }
    }
    assert_eq!(next.len(), topics.len() + 1);
    // Counted once the receiver has answered, which follows its log entry;
    // the fence was delivered too.
    let posted = total as u64 + 1;
    let delivered = format!("corebus_webhook_delivered_total{{webhook=\"{}\"}}", hook.id);
    let text = wait_for_metrics(metrics_port, "every delivery counted", |text| {
        sample(text, &delivered).is_some_and(|count| count >= posted)
    })
    .await;
    assert_eq!(sample(&text, &delivered), Some(posted), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_broker_delivers_what_its_webhooks_hold_before_it_exits() {
    // 200 ms an answer: five messages are still queued at the SIGTERM.
    let receiver = Receiver::start(|_, _| Reply::Slowly(Duration::from_millis(200))).await;
    let dir = data_dir("drain");
    let (mut serve, client) = start(&dir, &[]).await;
    client
        .add_webhook(&spec(&receiver.url, "orders", WebhookMatch::Exact))
        .await
        .expect("added");
    for i in 0..5u8 {
        client
            .publish("app", "orders", vec![i])
            .await
            .expect("acknowledged");
    }
    let (status, took) = serve.terminate(Duration::from_secs(10));
    assert!(status.success(), "{status}");
    let seqs: Vec<u64> = receiver.requests().iter().map(Received::seq).collect();
    assert_eq!(seqs, vec![1, 2, 3, 4, 5], "all delivered before the exit");
    assert!(
        took >= Duration::from_millis(600),
        "it waited for them: {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_retried_in_order_and_refusals_are_not() {
    // Requests 0 and 1 fail (503, then a hang past the timeout); seq 3 is
    // redirected and seq 4 refused with 400, neither retried.
    let receiver = Receiver::start(|index, request| match (index, request.seq()) {
        (0, _) => Reply::Status(503),
        (1, _) => Reply::Hang,
        (_, 3) => Reply::Status(302),
        (_, 4) => Reply::Status(400),
        _ => Reply::Status(200),
    })
    .await;
    let dir = data_dir("retries");
    let (_serve, client) = start(
        &dir,
        &["--webhook-backoff", "20ms", "--webhook-timeout", "500ms"],
    )
    .await;
    client
        .add_webhook(&spec(&receiver.url, "t", WebhookMatch::Exact))
        .await
        .expect("added");
    for i in 1..=20 {
        client
            .publish("app", "t", format!("m{i}"))
            .await
            .expect("published");
    }
    let requests = receiver
        .wait_for("20 messages settled", |r| {
            r.iter().any(|q| q.seq() == 20 && q.status.is_some())
        })
        .await;
    // The fence: seq 21 is posted after every retry of the others, so once
    // it arrived none of them can still come.
    client.publish("app", "t", "m21").await.expect("published");
    receiver
        .wait_for("the fence, seq 21", |r| r.iter().any(|q| q.seq() == 21))
        .await;
    let with_fence = receiver.requests();
    let (fence, settled) = with_fence.split_last().expect("the fence");
    assert_eq!(fence.seq(), 21, "nothing after the fence");
    assert_eq!(
        settled.len(),
        requests.len(),
        "nothing after the last message"
    );
    let seqs: Vec<u64> = settled.iter().map(Received::seq).collect();
    // seq 1 three times (503, hang, 200), then each other one once, in order.
    let mut expected = vec![1, 1, 1];
    expected.extend(2..=20);
    assert_eq!(seqs, expected);
    let accepted: Vec<u64> = requests
        .iter()
        .filter(|r| r.status.is_some_and(|s| (200..300).contains(&s)))
        .map(Received::seq)
        .collect();
    let mut each_once: Vec<u64> = (1..=20).collect();
    each_once.retain(|seq| *seq != 3 && *seq != 4);
    assert_eq!(
        accepted, each_once,
        "every message accepted exactly once, in order"
    );
    for request in &requests {
        assert_signed(request, &[SECRET]);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_endpoint_does_not_hold_up_publishing() {
    // The endpoint never answers, and the broker would wait 60 s for it.
    // How much it costs in throughput is the bench's to say
    // (bench/webhook_hang.sh); this checks that publishing never waits for
    // it and that what the webhook cannot take is counted.
    let hanging = Receiver::start(|_, _| Reply::Hang).await;
    let dir = data_dir("hanging");
    let metrics_port = free_port();
    let metrics = format!("127.0.0.1:{metrics_port}");
    let (_serve, client) = start(
        &dir,
        &[
            "--webhook-queue",
            "64",
            "--webhook-timeout",
            "60s",
            "--metrics",
            &metrics,
        ],
    )
    .await;
    let hook = client
        .add_webhook(&spec(&hanging.url, "hooked/", WebhookMatch::Prefix))
        .await
        .expect("added");
    let mut hooked = client
        .subscribe("app", "hooked/x")
        .await
        .expect("subscribed");
    let mut plain = client.subscribe("app", "plain").await.expect("subscribed");
    // Far more than the webhook's queue (64) and the delivery thread's
    // hand-off (1024) hold, alternating with a topic no webhook wants.
    const COUNT: u64 = 2_000;
    // A sixth of the webhook timeout: a publish that waited for the hanging
    // request would take all of it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut acks = Vec::new();
    for i in 0..COUNT {
        for topic in ["hooked/x", "plain"] {
            let ack = client
                .start_publish("app", topic, format!("{topic} {i}"))
                .await
                .expect("queued");
            acks.push((topic, i + 1, ack));
            if i == 0 && topic == "hooked/x" {
                // The endpoint holds the first request before the rest come,
                // so the queue behind it fills exactly; otherwise the thread
                // may route all of them before the worker takes its first.
                hanging
                    .wait_for("the first request", |requests| !requests.is_empty())
                    .await;
            }
        }
    }
    for (topic, seq, ack) in acks {
        let acked = tokio::time::timeout_at(deadline, ack)
            .await
            .unwrap_or_else(|_| panic!("{topic} seq {seq} not acknowledged within 10 s"))
            .expect("acknowledged");
        assert_eq!(acked, seq, "{topic}");
    }
    for (topic, sub) in [("hooked/x", &mut hooked), ("plain", &mut plain)] {
        for seq in 1..=COUNT {
            let message = tokio::time::timeout_at(deadline, sub.next_message())
                .await
                .unwrap_or_else(|_| panic!("{topic} seq {seq} not delivered within 10 s"))
                .expect("open")
                .expect("no error, no gap");
            assert_eq!(message.seq, seq, "{topic}");
        }
    }
    // The endpoint holds one request, 64 messages wait behind it, and each
    // of the others was dropped and counted: none is lost silently.
    let id = &hook.id;
    let queued = format!("corebus_webhook_queued{{webhook=\"{id}\"}}");
    let requests = format!("corebus_webhook_requests_total{{webhook=\"{id}\"}}");
    let dropped = |reason: &str| {
        format!("corebus_webhook_dropped_total{{webhook=\"{id}\",reason=\"{reason}\"}}")
    };
    let (queue_full, handoff_full) = (dropped("queue_full"), dropped("handoff_full"));
    let accounted = |text: &str| {
        let value = |name: &str| sample(text, name).unwrap_or_default();
        value(&requests) + value(&queued) + value(&queue_full) + value(&handoff_full)
    };
    let text = wait_for_metrics(metrics_port, "every hooked message accounted for", |text| {
        accounted(text) >= COUNT
    })
    .await;
    assert_eq!(accounted(&text), COUNT, "{text}");
    assert_eq!(sample(&text, &requests), Some(1), "{text}");
    assert_eq!(sample(&text, &queued), Some(64), "{text}");
    assert!(
        sample(&text, &queue_full).is_some_and(|count| count > 0),
        "{text}"
    );
    assert_eq!(hanging.requests().len(), 1);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_and_rotations_survive_a_restart() {
    let receiver = Receiver::start(|_, _| Reply::Status(200)).await;
    let dir = data_dir("restart");
    let (mut first, client) = start(&dir, &[]).await;
    let hook = client
        .add_webhook(&spec(&receiver.url, "t", WebhookMatch::Exact))
        .await
        .expect("added");
    let rotated = client
        .rotate_webhook_secret(&hook.id, None)
        .await
        .expect("rotated");
    let new_secret = rotated.secret.clone().expect("a new secret");
    assert_ne!(new_secret, SECRET);
    assert!(rotated.previous_secret_expires_ms.is_some());
    drop(client);
    let (status, _) = first.terminate(Duration::from_secs(10));
    assert!(status.success());
    let file = dir.join("webhooks.json");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&file).expect("stored").permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "the file holds secrets");

    let (second, client) = start(&dir, &[]).await;
    let listed = client.list_webhooks().await.expect("listed");
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (listed[0].id.as_str(), listed[0].url.as_str()),
        (hook.id.as_str(), receiver.url.as_str())
    );
    assert_eq!(listed[0].secret, None, "list shows no secret");
    client
        .publish("app", "t", "after restart")
        .await
        .expect("published");
    let requests = receiver
        .wait_for("the message after restart", |r| !r.is_empty())
        .await;
    // Within the rotation grace both the new and the old secret sign.
    assert_signed(&requests[0], &[&new_secret, SECRET]);
    client.remove_webhook(&hook.id).await.expect("removed");
    drop(client);
    drop(second);
    let (_third, client) = start(&dir, &[]).await;
    assert!(client.list_webhooks().await.expect("listed").is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destinations_outside_the_allow_list_are_refused() {
    let dir = data_dir("allow");
    let dir_arg = dir.to_str().expect("UTF-8").to_string();
    let (serve, client) = start(&dir, &["--webhook-allow-hosts", "127.0.0.1,*.example.com"]).await;
    for url in [
        "http://localhost:9/hook",
        "https://example.com/hook",
        "http://10.0.0.1/",
    ] {
        match client
            .add_webhook(&spec(url, "t", WebhookMatch::Exact))
            .await
        {
            Err(err @ Error::Server { .. }) => {
                assert_eq!(err.server_code(), Some(ErrorCode::InvalidRequest), "{url}");
                assert!(err.to_string().contains("webhook_allow_hosts"), "{err}");
            }
            other => panic!("{url}: {other:?}"),
        }
    }
    for url in ["http://127.0.0.1:9/hook", "https://hooks.example.com/in"] {
        client
            .add_webhook(&spec(url, "t", WebhookMatch::Exact))
            .await
            .expect(url);
    }
    assert_eq!(client.list_webhooks().await.expect("listed").len(), 2);
    drop(serve);

    // A configured webhook outside the list stops the broker at start-up.
    let config = TempFile::new(
        "allow.toml",
        &format!(
            "webhook_allow_hosts = \"127.0.0.1\"\ndata_dir = \"{dir_arg}\"\n\
             [[webhooks]]\nid = \"outside\"\nurl = \"https://evil.example.org/\"\n\
             namespace = \"app\"\ntopic = \"t\"\nsecret = \"{SECRET}\"\n"
        ),
    );
    let output = Command::new(BIN)
        .args(["config", "check", config.path()])
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("\"outside\"") && stderr.contains("webhook_allow_hosts"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_that_always_fails_gets_its_retries_then_the_next_message() {
    let receiver = Receiver::start(|_, _| Reply::Status(503)).await;
    let dir = data_dir("exhausted");
    let metrics_port = free_port();
    let metrics = format!("127.0.0.1:{metrics_port}");
    let (serve, client) = start(
        &dir,
        &[
            "--webhook-retries",
            "2",
            "--webhook-backoff",
            "100ms",
            "--webhook-timeout",
            "2s",
            "--metrics",
            &metrics,
        ],
    )
    .await;
    let hook = client
        .add_webhook(&spec(&receiver.url, "t", WebhookMatch::Exact))
        .await
        .expect("added");
    client.publish("app", "t", "m1").await.expect("published");
    client.publish("app", "t", "m2").await.expect("published");
    let requests = receiver
        .wait_for("both messages tried three times", |r| r.len() >= 6)
        .await;
    let seqs: Vec<u64> = requests.iter().map(Received::seq).collect();
    assert_eq!(seqs, [1, 1, 1, 2, 2, 2], "each tried 1 + 2 times, in order");
    // The documented backoff: 100 ms, then 200 ms, each shortened by at most
    // a quarter; the next message goes at once.
    for (first, retry, least) in [(0, 1, 75), (1, 2, 150), (3, 4, 75), (4, 5, 150)] {
        assert!(
            gap(&requests, first, retry) >= Duration::from_millis(least),
            "retry {retry} came {:?} after the try before",
            gap(&requests, first, retry)
        );
    }
    assert!(
        gap(&requests, 2, 3) < Duration::from_millis(75),
        "the next message is not held back"
    );
    // Visible: the metric, and `webhook list` with the last drop's reason.
    let dropped = format!(
        "corebus_webhook_dropped_total{{webhook=\"{}\",reason=\"retries_exhausted\"}} 2",
        hook.id
    );
    wait_for_metrics(metrics_port, &dropped, |text| text.contains(&dropped)).await;
    let listed = client.list_webhooks().await.expect("listed");
    let delivery = listed[0]
        .delivery
        .clone()
        .expect("the broker reports delivery");
    assert_eq!(
        (delivery.delivered, delivery.requests, delivery.retries),
        (0, 6, 4)
    );
    assert!(delivery
        .dropped
        .contains(&("retries_exhausted".to_string(), 2)));
    let last = delivery.last_drop.expect("a last drop");
    assert_eq!(last.reason, "retries_exhausted");
    assert!(
        last.detail.contains("503") && last.detail.contains("gave up after 2 retries"),
        "{}",
        last.detail
    );
    // The CLI shows it too.
    let out = Command::new(BIN)
        .args(["webhook", "list", "--server", serve.addr.as_str()])
        .output()
        .expect("runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("delivered 0, dropped 2 (last: retries_exhausted:"),
        "{text}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn special_purpose_addresses_are_refused_unless_allowed() {
    // No webhook_allow_networks: loopback, private and link-local addresses
    // are refused, a literal one at registration, a name at delivery time.
    let receiver = Receiver::start(|_, _| Reply::Status(204)).await;
    let port = receiver
        .url
        .rsplit_once(':')
        .and_then(|(_, rest)| rest.split('/').next())
        .expect("receiver port")
        .to_string();
    let dir = data_dir("ssrf");
    let metrics_port = free_port();
    let metrics = format!("127.0.0.1:{metrics_port}");
    let serve = Serve::start(&[
        "--data-dir",
        dir.to_str().expect("UTF-8"),
        "--metrics",
        &metrics,
    ]);
    let client = Client::connect(serve.addr.as_str())
        .await
        .expect("connects");
    for url in [
        "http://169.254.169.254/latest/meta-data/".to_string(),
        receiver.url.clone(),
        "http://10.1.2.3/hook".into(),
        "http://[::1]:9/hook".into(),
        "http://[::ffff:127.0.0.1]:9/hook".into(),
    ] {
        match client
            .add_webhook(&spec(&url, "t", WebhookMatch::Exact))
            .await
        {
            Err(err @ Error::Server { .. }) => {
                assert_eq!(err.server_code(), Some(ErrorCode::InvalidRequest), "{url}");
                assert!(err.to_string().contains("webhook_allow_networks"), "{err}");
            }
            other => panic!("{url}: {other:?}"),
        }
    }
    // A name is accepted, and judged by what it resolves to when the broker
    // connects: localhost is loopback, so the message is dropped unsent.
    let named = format!("http://localhost:{port}/hook");
    let hook = client
        .add_webhook(&spec(&named, "named", WebhookMatch::Exact))
        .await
        .expect("a host name is checked at delivery");
    client.publish("app", "named", "x").await.expect("acked");
    let dropped = format!(
        "corebus_webhook_dropped_total{{webhook=\"{}\",reason=\"not_allowed\"}} 1",
        hook.id
    );
    wait_for_metrics(metrics_port, &dropped, |text| text.contains(&dropped)).await;
    assert!(
        receiver.requests().is_empty(),
        "nothing reached the receiver"
    );
    drop(client);
    drop(serve);

    // Allowed by the operator, the same name is delivered to.
    let (_serve, client) = start(&dir, &[]).await;
    client.publish("app", "named", "y").await.expect("acked");
    let got = receiver
        .wait_for("delivery to an allowed network", |r| !r.is_empty())
        .await;
    assert_eq!(got[0].json()["payload"], "y");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A child process killed when dropped, so a failing test leaves no receiver
/// behind (holding the test harness's output pipe open).
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A receiver from docs/examples, started with `program`; returns the child
/// and its URL.
fn start_example(
    program: &str,
    script: &str,
) -> (Killed, BufReader<std::process::ChildStdout>, String) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../docs/examples")
        .join(script);
    let mut child = Command::new(program)
        .arg(&path)
        .env("WEBHOOK_SECRET", SECRET)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|err| panic!("{program} {script} does not start ({err}); the webhook examples are tested with {program}"));
    let mut stdout = BufReader::new(child.stdout.take().expect("piped"));
    let mut line = String::new();
    stdout.read_line(&mut line).expect("reads");
    let port = line
        .trim()
        .strip_prefix("listening ")
        .unwrap_or_else(|| panic!("{script} printed {line:?}"));
    (
        Killed(child),
        stdout,
        format!("http://127.0.0.1:{port}/hook"),
    )
}

/// The text between the `verify` markers of an example.
fn verify_block(script: &str, comment: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../docs/examples")
        .join(script);
    let text = std::fs::read_to_string(path).expect("example exists");
    let start = format!("{comment} --- verify (docs/webhooks.md) ---\n");
    let end = format!("{comment} --- end verify ---");
    let from = text.find(&start).expect("start marker") + start.len();
    let to = text.find(&end).expect("end marker");
    text[from..to].trim_end().to_string()
}

/// A POST with a signature made with the wrong secret; returns the status.
fn post_forged(url: &str) -> u16 {
    let addr: SocketAddr = url
        .trim_start_matches("http://")
        .trim_end_matches("/hook")
        .parse()
        .expect("address");
    let body = br#"{"seq":1}"#;
    let t = now_secs();
    let mut mac =
        Hmac::<Sha256>::new_from_slice(b"whsec_not-the-right-secret-at-all").expect("key");
    mac.update(format!("{t}.").as_bytes());
    mac.update(body);
    let v1: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let mut stream = StdStream::connect(addr).expect("connects");
    write!(
        stream,
        "POST /hook HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\nCorebus-Signature: t={t},v1={v1}\r\n\r\n",
        body.len()
    )
    .expect("writes");
    stream.write_all(body).expect("writes");
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_python_and_node_receivers_verify_deliveries() {
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/webhooks.md"))
            .expect("docs/webhooks.md");
    for (script, comment) in [("webhook_receiver.py", "#"), ("webhook_receiver.js", "//")] {
        let block = verify_block(script, comment);
        assert!(
            doc.contains(&block),
            "docs/webhooks.md does not show the verify code of {script} verbatim"
        );
    }
    let (_python, python_out, python_url) = start_example("python3", "webhook_receiver.py");
    let (_node, node_out, node_url) = start_example("node", "webhook_receiver.js");
    let dir = data_dir("examples");
    let (_serve, client) = start(&dir, &[]).await;
    client
        .add_webhook(&spec(&python_url, "py", WebhookMatch::Exact))
        .await
        .expect("added");
    client
        .add_webhook(&spec(&node_url, "js", WebhookMatch::Exact))
        .await
        .expect("added");
    for i in 1..=5 {
        client
            .publish("app", "py", format!("to python {i}"))
            .await
            .expect("published");
        client
            .publish("app", "js", format!("to node {i} ✓"))
            .await
            .expect("published");
    }
    for (name, url, mut out, topic, text) in [
        ("python", &python_url, python_out, "py", "to python"),
        ("node", &node_url, node_out, "js", "to node"),
    ] {
        for seq in 1..=5u64 {
            let mut line = String::new();
            out.read_line(&mut line).expect("reads");
            let event: Value =
                serde_json::from_str(&line).unwrap_or_else(|_| panic!("{name} printed {line:?}"));
            assert_eq!(event["verified"], true, "{name}: {line}");
            assert_eq!(
                (event["seq"].as_u64(), event["topic"].as_str()),
                (Some(seq), Some(topic)),
                "{name}"
            );
            assert!(event["payload"]
                .as_str()
                .expect("payload")
                .starts_with(text));
        }
        // The same code refuses a request signed with another secret.
        assert_eq!(post_forged(url), 401, "{name} accepted a forged signature");
        let mut line = String::new();
        out.read_line(&mut line).expect("reads");
        assert!(
            line.contains("\"verified\": false") || line.contains("\"verified\":false"),
            "{name}: {line}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The time of the gap between requests `a` and `b`.
fn gap(requests: &[Received], a: usize, b: usize) -> Duration {
    requests[b].at.duration_since(requests[a].at)
}

fn payload(request: &Received) -> String {
    request.json()["payload"]
        .as_str()
        .expect("text payload")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_408_and_a_429_are_retried_and_retry_after_is_honoured_up_to_max_backoff() {
    // Each message's first request is refused: 408; 429 with Retry-After 1 s;
    // 429 with an HTTP date 10 s ahead and one of 3600 s, both longer than
    // webhook_max_backoff (1.5 s). The second request of each is accepted.
    let receiver = Receiver::start(|index, _| match index {
        0 => Reply::Status(408),
        2 => Reply::WithHeader(429, "Retry-After", "1".into()),
        4 => Reply::WithHeader(
            429,
            "Retry-After",
            httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(10)),
        ),
        6 => Reply::WithHeader(429, "Retry-After", "3600".into()),
        _ => Reply::Status(200),
    })
    .await;
    let dir = data_dir("throttled");
    let (_serve, client) = start(
        &dir,
        &[
            "--webhook-backoff",
            "20ms",
            "--webhook-max-backoff",
            "1500ms",
        ],
    )
    .await;
    client
        .add_webhook(&spec(&receiver.url, "t", WebhookMatch::Exact))
        .await
        .expect("added");
    for i in 1..=4 {
        client
            .publish("app", "t", format!("m{i}"))
            .await
            .expect("published");
    }
    let requests = receiver
        .wait_for("four messages accepted", |r| r.len() >= 8)
        .await;
    let seqs: Vec<u64> = requests.iter().map(Received::seq).collect();
    assert_eq!(
        seqs,
        [1, 1, 2, 2, 3, 3, 4, 4],
        "each retried once, in order"
    );
    // Retry-After is waited for exactly (no jitter), at most max_backoff;
    // without it the retry would come after 20 ms less jitter.
    let after_one = gap(&requests, 2, 3);
    assert!(
        after_one >= Duration::from_millis(950) && after_one < Duration::from_millis(1450),
        "Retry-After: 1 waited {after_one:?}"
    );
    for (first, retry) in [(4, 5), (6, 7)] {
        let waited = gap(&requests, first, retry);
        assert!(
            waited >= Duration::from_millis(1450) && waited < Duration::from_secs(5),
            "a Retry-After beyond webhook_max_backoff waited {waited:?}"
        );
    }
    let listed = client.list_webhooks().await.expect("listed");
    let delivery = listed[0].delivery.clone().expect("delivery state");
    assert_eq!(
        (delivery.delivered, delivery.requests, delivery.retries),
        (4, 8, 4),
        "each 408 and 429 counts as a retry"
    );
    assert!(delivery.last_drop.is_none(), "{delivery:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Lists until the webhook's `disabled` state is `want`; fails after [`WAIT`].
async fn wait_for_disabled(client: &Client, want: bool) -> corebus_client::Webhook {
    let started = Instant::now();
    loop {
        let hook = client.list_webhooks().await.expect("listed").remove(0);
        if hook.disabled.is_some() == want {
            return hook;
        }
        assert!(started.elapsed() < WAIT, "disabled is not {want}: {hook:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Publishes `payload` and waits until the receiver has it.
async fn publish_and_receive(client: &Client, receiver: &Receiver, payload: &str) {
    client
        .publish("app", "t", payload.to_string())
        .await
        .expect("published");
    receiver
        .wait_for(payload, |r| r.iter().any(|q| self::payload(q) == payload))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_410_disables_the_webhook_across_restarts_until_enabled() {
    let receiver = Receiver::start(|_, request| {
        if payload(request).starts_with("gone") {
            Reply::Status(410)
        } else {
            Reply::Status(200)
        }
    })
    .await;
    let dir = data_dir("gone");
    let metrics_port = free_port();
    let metrics = format!("127.0.0.1:{metrics_port}");
    let (mut first, client) = start(&dir, &["--metrics", &metrics]).await;
    let hook = client
        .add_webhook(&spec(&receiver.url, "t", WebhookMatch::Exact))
        .await
        .expect("added");
    publish_and_receive(&client, &receiver, "before").await;
    client
        .publish("app", "t", "gone 1")
        .await
        .expect("published");
    let disabled = wait_for_disabled(&client, true).await;
    let detail = disabled.disabled.expect("disabled").detail;
    assert!(detail.contains("410"), "{detail}");
    // Later messages are dropped and counted, never posted. The fence: all
    // three counted (with the one answered 410) before requests are counted.
    for i in 1..=2 {
        client
            .publish("app", "t", format!("while disabled {i}"))
            .await
            .expect("published");
    }
    let id = &hook.id;
    let dropped = format!("corebus_webhook_dropped_total{{webhook=\"{id}\",reason=\"disabled\"}}");
    let text = wait_for_metrics(metrics_port, "three disabled drops", |text| {
        sample(text, &dropped) == Some(3)
    })
    .await;
    let gauge = format!("corebus_webhook_disabled{{webhook=\"{id}\"}}");
    let disables = format!("corebus_webhook_disables_total{{webhook=\"{id}\"}}");
    assert_eq!(sample(&text, &gauge), Some(1), "{text}");
    assert_eq!(sample(&text, &disables), Some(1), "{text}");
    assert_eq!(
        receiver.requests().len(),
        2,
        "nothing posted while disabled"
    );
    let out = Command::new(BIN)
        .args(["webhook", "list", "--server", first.addr.as_str()])
        .output()
        .expect("runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(" DISABLED since ") && text.contains("dropped 3"),
        "{text}"
    );
    drop(client);
    let (status, _) = first.terminate(Duration::from_secs(10));
    assert!(status.success());

    // Still disabled after a restart.
    let (second, client) = start(&dir, &["--metrics", &metrics]).await;
    let listed = client.list_webhooks().await.expect("listed").remove(0);
    assert_eq!(
        listed.disabled.as_ref().map(|d| d.detail.as_str()),
        Some(detail.as_str())
    );
    client
        .publish("app", "t", "after restart")
        .await
        .expect("published");
    wait_for_metrics(metrics_port, "a disabled drop after the restart", |text| {
        sample(text, &dropped) == Some(1)
    })
    .await;
    assert_eq!(
        receiver.requests().len(),
        2,
        "nothing posted while disabled"
    );
    // The CLI enables it; the next message is posted.
    let out = Command::new(BIN)
        .args(["webhook", "enable", id, "--server", second.addr.as_str()])
        .output()
        .expect("runs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.starts_with(&format!("enabled {id} ")), "{text}");
    assert!(client.list_webhooks().await.expect("listed")[0]
        .disabled
        .is_none());
    publish_and_receive(&client, &receiver, "enabled by the CLI").await;
    // Gone again, and enabled again by the client call.
    client
        .publish("app", "t", "gone 2")
        .await
        .expect("published");
    wait_for_disabled(&client, true).await;
    let enabled = client.enable_webhook(id).await.expect("enabled");
    assert!(enabled.disabled.is_none(), "{enabled:?}");
    publish_and_receive(&client, &receiver, "enabled by the client").await;
    let text = scrape(metrics_port);
    assert_eq!(sample(&text, &gauge), Some(0), "{text}");
    assert_eq!(sample(&text, &disables), Some(1), "{text}");
    // The enabled state is what is stored.
    drop(client);
    drop(second);
    let (_third, client) = start(&dir, &[]).await;
    assert!(client.list_webhooks().await.expect("listed")[0]
        .disabled
        .is_none());
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_webhook_disabled_by_410_is_enabled_by_a_restart() {
    let receiver = Receiver::start(|_, request| {
        if payload(request) == "gone" {
            Reply::Status(410)
        } else {
            Reply::Status(200)
        }
    })
    .await;
    let dir = data_dir("gone-config");
    let config = TempFile::new(
        "gone-config.toml",
        &format!(
            "[[webhooks]]\nid = \"configured\"\nurl = \"{}\"\nnamespace = \"app\"\n\
             topic = \"t\"\nsecret = \"{SECRET}\"\n",
            receiver.url
        ),
    );
    let (mut first, client) = start(&dir, &["--config", config.path()]).await;
    client.publish("app", "t", "gone").await.expect("published");
    let hook = wait_for_disabled(&client, true).await;
    assert_eq!(hook.id, "configured");
    drop(client);
    let (status, _) = first.terminate(Duration::from_secs(10));
    assert!(status.success());

    let (_second, client) = start(&dir, &["--config", config.path()]).await;
    let hook = client.list_webhooks().await.expect("listed").remove(0);
    assert!(hook.disabled.is_none(), "{hook:?}");
    publish_and_receive(&client, &receiver, "after the restart").await;
    let _ = std::fs::remove_dir_all(&dir);
}
