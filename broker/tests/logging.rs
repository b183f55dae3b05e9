//! What the broker logs. In this process: the log subscriber also carries
//! records of libraries that log through the `log` crate (glommio's warnings
//! and errors: a panic caught while waking a task, io_uring buffers it could
//! not register), filtered by the same directives; its own test binary, as a
//! process has one global subscriber. Of a `corebus serve` child, logging
//! JSON: what a connection's lines carry, and that a peer cannot flood the
//! log.

use crate::common;

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{read_address, TempFile, BIN};
use corebus::auth::key_hash_hex;
use corebus::cli::LogFormat;
use corebus::serve::init_logging_to;
use corebus_net::{ErrorCode, Frame, Hello, PROTOCOL_VERSION};
use corebus_tests::{RawConn, Received};
use serde_json::Value;

/// Collects what the subscriber writes.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .expect("not poisoned")
            .extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn log_crate_records_reach_the_subscriber_under_the_same_filter() {
    std::env::remove_var("RUST_LOG");
    let captured = Captured::default();
    let writer = captured.clone();
    init_logging_to(
        "info,glommio=warn",
        LogFormat::Json,
        move || writer.clone(),
        false,
    )
    .expect("the first subscriber installs");
    log::warn!(target: "glommio::sys::uring", "registering buffers failed");
    log::info!(target: "glommio::executor", "filtered out by glommio=warn");
    log::error!(target: "other::library", "an error elsewhere");
    tracing::info!("the broker's own record");
    let text = String::from_utf8(captured.0.lock().expect("not poisoned").clone()).expect("UTF-8");
    let records: Vec<serde_json::Value> = text
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|err| panic!("{err}: {line}")))
        .collect();
    let find = |message: &str| {
        records
            .iter()
            .find(|record| record["fields"]["message"] == message)
            .cloned()
    };
    let warning = find("registering buffers failed").unwrap_or_else(|| panic!("forwarded: {text}"));
    assert_eq!(warning["level"], "WARN", "{text}");
    assert_eq!(warning["target"], "glommio::sys::uring", "{text}");
    assert!(find("an error elsewhere").is_some(), "{text}");
    assert!(find("the broker's own record").is_some(), "{text}");
    assert!(find("filtered out by glommio=warn").is_none(), "{text}");
    // A second subscriber is refused, not silently ignored.
    assert!(init_logging_to("info", LogFormat::Text, std::io::sink, false).is_err());
}

const RIGHT_KEY: &str = "cbk_logging_right_key";
const WRONG_KEY: &str = "cbk_logging_wrong_key_5ecret";
/// Shaped like a token, so the broker judges it as one (and refuses it: it
/// has no token secret); its signature part must not reach the log either.
const WRONG_TOKEN: &str = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.dG9rZW4tNWVjcmV0";

/// A `corebus serve` child (one shard, `--log-format json` at `warn`, so a
/// connection's span must exist at that level too) with one API key; a
/// thread collects its log.
struct JsonBroker {
    child: Child,
    addr: SocketAddr,
    log: Arc<Mutex<String>>,
    _config: TempFile,
}

impl JsonBroker {
    fn start(name: &str) -> JsonBroker {
        JsonBroker::start_limited(name, None)
    }

    /// With `open_files`: the process may hold that many descriptors.
    fn start_limited(name: &str, open_files: Option<u64>) -> JsonBroker {
        JsonBroker::start_with(name, open_files, &[])
    }

    /// With `extra` arguments to `serve` as well.
    fn start_with(name: &str, open_files: Option<u64>, extra: &[&str]) -> JsonBroker {
        let config = TempFile::new(
            name,
            &format!(
                "[[keys]]\nname = \"app\"\nsha256 = \"{}\"\nsuperuser = true\n",
                key_hash_hex(RIGHT_KEY)
            ),
        );
        let mut command = Command::new(BIN);
        command
            .args([
                "serve",
                "--config",
                config.path(),
                "--listen",
                "127.0.0.1:0",
            ])
            .args([
                "--shards",
                "1",
                "--log-level",
                "warn",
                "--log-format",
                "json",
            ])
            .args(extra)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("COREBUS_") {
                command.env_remove(name);
            }
        }
        if let Some(limit) = open_files {
            let limit = libc::rlimit {
                rlim_cur: limit,
                rlim_max: limit,
            };
            // SAFETY: setrlimit(2) is async-signal-safe, and the closure
            // touches nothing else of the parent's.
            unsafe {
                command.pre_exec(move || {
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                });
            }
        }
        let mut child = command.spawn().expect("corebus serve starts");
        let stderr = child.stderr.take().expect("piped");
        let log = Arc::new(Mutex::new(String::new()));
        let collected = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { return };
                let mut log = collected.lock().expect("not poisoned");
                log.push_str(&line);
                log.push('\n');
            }
        });
        let addr = read_address(&mut child).parse().expect("a socket address");
        JsonBroker {
            child,
            addr,
            log,
            _config: config,
        }
    }

    fn text(&self) -> String {
        self.log.lock().expect("not poisoned").clone()
    }

    /// Every record logged so far.
    fn records(&self) -> Vec<Value> {
        self.text()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap_or_else(|err| panic!("{err}: {line}")))
            .collect()
    }

    /// The records once `done` holds for them; fails the test with the log
    /// after 10 s.
    fn records_once(&self, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let records = self.records();
            if done(&records) {
                return records;
            }
            assert!(
                Instant::now() < deadline,
                "not logged within 10 s; the log:\n{}",
                self.text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for JsonBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Connects, sends HELLO with `credentials` under `client_name`, and checks
/// the broker refuses it with a fatal `unauthorized` and closes; returns the
/// address the broker saw.
async fn refused_hello(addr: SocketAddr, client_name: &str, credentials: &str) -> SocketAddr {
    let mut raw = RawConn::connect(addr).await;
    raw.send(&Frame::Hello(Hello {
        version: PROTOCOL_VERSION,
        client_name: client_name.into(),
        credentials: Bytes::copy_from_slice(credentials.as_bytes()),
    }))
    .await;
    match raw.recv().await {
        Some(Frame::Error(error)) if error.code() == Some(ErrorCode::Unauthorized) => {
            assert!(error.fatal, "{error:?}")
        }
        other => panic!("expected a fatal unauthorized, got {other:?}"),
    }
    raw.expect_closed().await;
    raw.local_addr()
}

fn message(record: &Value) -> &str {
    record["fields"]["message"].as_str().unwrap_or_default()
}

fn auth_failures(records: &[Value]) -> Vec<&Value> {
    records
        .iter()
        .filter(|record| message(record) == "authentication failed")
        .collect()
}

/// Events of one kind the records account for: one per `line`, plus each
/// such line's count of those not logged, plus the `summary` lines' counts.
fn accounted(records: &[Value], line: &str, summary: &str) -> u64 {
    records
        .iter()
        .map(|record| match message(record) {
            text if text == line => 1 + suppressed(record),
            text if text == summary => suppressed(record),
            _ => 0,
        })
        .sum()
}

/// Authentication failures the records account for.
fn failures_accounted(records: &[Value]) -> u64 {
    accounted(
        records,
        "authentication failed",
        "authentication failures not logged (rate limit)",
    )
}

fn suppressed(record: &Value) -> u64 {
    record["fields"]["suppressed"]
        .as_u64()
        .unwrap_or_else(|| panic!("no suppressed count: {record}"))
}

#[tokio::test]
async fn a_failed_authentication_is_one_warning_naming_peer_connection_and_reason() {
    let broker = JsonBroker::start("one-failure.toml");
    let peer = refused_hello(broker.addr, "billing", WRONG_KEY).await;
    // The fence: a later failure's line is logged after all of the first's.
    refused_hello(broker.addr, "fence", WRONG_TOKEN).await;
    let records = broker.records_once(|records| {
        auth_failures(records)
            .iter()
            .any(|record| record["fields"]["client"] == "\"fence\"")
    });
    let first: Vec<&Value> = auth_failures(&records)
        .into_iter()
        .filter(|record| record["fields"]["client"] == "\"billing\"")
        .collect();
    let text = broker.text();
    assert_eq!(first.len(), 1, "one line per failure:\n{text}");
    let line = first[0];
    assert_eq!(line["level"], "WARN", "{line}");
    assert_eq!(line["span"]["name"], "conn", "{line}");
    assert_eq!(line["span"]["peer"], peer.to_string(), "{line}");
    let id = line["span"]["id"].as_str().unwrap_or_default();
    let (shard, number) = id.split_once(':').unwrap_or_else(|| panic!("{line}"));
    assert_eq!(shard, "0", "{line}");
    assert!(number.parse::<u64>().is_ok(), "{line}");
    assert_eq!(line["fields"]["code"], "unauthorized", "{line}");
    assert_eq!(
        line["fields"]["reason"], "invalid credentials: unknown API key",
        "{line}"
    );
    assert_eq!(line["fields"]["suppressed"], 0, "{line}");
    // Neither secret, nor any part of the token, is anywhere in the log.
    let token_parts = WRONG_TOKEN.split('.');
    for secret in [WRONG_KEY, WRONG_TOKEN].into_iter().chain(token_parts) {
        assert!(!text.contains(secret), "{secret} is in the log:\n{text}");
    }
}

#[tokio::test]
async fn a_flood_of_failed_authentications_is_a_few_lines_and_a_count() {
    const FAILURES: u64 = 100;
    let broker = JsonBroker::start("flood.toml");
    let started = Instant::now();
    for _ in 0..FAILURES {
        refused_hello(broker.addr, "flood", WRONG_KEY).await;
    }
    let seconds = started.elapsed().as_secs();
    // Every failure is a line or counted in one: the counts of a flood that
    // stopped arrive with the shard's next maintenance tick (within 1 s).
    let records = broker.records_once(|records| failures_accounted(records) >= FAILURES);
    let text = broker.text();
    assert_eq!(failures_accounted(&records), FAILURES, "{text}");
    let lines = auth_failures(&records).len() as u64;
    // At most 10 lines a second, in each second the flood touched.
    assert!(
        lines <= 10 * (seconds + 2),
        "{lines} lines in {seconds} s:\n{text}"
    );
    assert!(lines < FAILURES / 2, "{lines} lines:\n{text}");
    assert!(text.contains("\"suppressed\":"), "{text}");
    assert!(!text.contains(WRONG_KEY), "{text}");
}

/// Opens connections that authenticate, holding them, until the broker runs
/// out of descriptors; returns the ones held. The next one, at the limit,
/// was refused with a typed error, which this checked.
async fn fill(broker: &JsonBroker) -> Vec<RawConn> {
    let mut held = Vec::new();
    loop {
        assert!(held.len() < 100, "still accepting after 100 connections");
        let mut raw = RawConn::connect(broker.addr).await;
        raw.send(&Frame::Hello(Hello {
            version: PROTOCOL_VERSION,
            client_name: "fill".into(),
            credentials: Bytes::from_static(RIGHT_KEY.as_bytes()),
        }))
        .await;
        match raw.next_within(Duration::from_secs(2)).await {
            Received::Frame(Frame::Welcome(_)) => held.push(raw),
            Received::Frame(Frame::Error(error)) => {
                assert_at_file_limit(&error);
                raw.expect_closed().await;
                return held;
            }
            other => panic!("after {} connections: {other:?}", held.len()),
        }
    }
}

fn assert_at_file_limit(error: &corebus_net::ErrorFrame) {
    assert_eq!(
        error.code(),
        Some(ErrorCode::TooManyConnections),
        "{error:?}"
    );
    assert!(error.fatal, "{error:?}");
    assert!(error.message.contains("open-file limit"), "{error:?}");
}

/// One descriptor per connection, and one kept aside by each accept loop:
/// at the open-file limit, a new connection is taken with the reserve and
/// refused with a typed error (logged within the shard's budget) instead of
/// waiting unanswered in the listen backlog; once a connection closes, the
/// next one is served. With one open file more or less than the broker
/// needs besides, the limit falls on another descriptor: the test runs
/// both.
#[tokio::test]
async fn a_broker_out_of_descriptors_refuses_with_a_typed_error_then_serves_once_one_closes() {
    for open_files in [64, 65] {
        let broker = JsonBroker::start_limited("descriptors.toml", Some(open_files));
        let mut held = fill(&broker).await;
        // Every further one is refused too, and logged within the
        // shard's budget: each refusal a line or counted in one.
        for _ in 0..30 {
            let mut raw = RawConn::connect(broker.addr).await;
            match raw.next_within(Duration::from_secs(2)).await {
                Received::Frame(Frame::Error(error)) => assert_at_file_limit(&error),
                other => panic!("expected too_many_connections, got {other:?}"),
            }
        }
        let records = broker.records_once(|records| refusals_accounted(records) >= 31);
        let lines: Vec<&Value> = records
            .iter()
            .filter(|record| message(record) == "connection refused")
            .collect();
        let text = broker.text();
        assert_eq!(refusals_accounted(&records), 31, "{text}");
        assert!(lines.len() < 31, "{text}");
        assert_eq!(lines[0]["level"], "WARN", "{text}");
        assert!(lines[0]["span"]["peer"].is_string(), "{text}");
        assert!(lines[0]["span"]["id"].is_string(), "{text}");
        let reason = lines[0]["fields"]["reason"].as_str().unwrap_or_default();
        assert!(reason.contains("Too many open files"), "{text}");
        // A connection closing frees a place: a new one is served (one
        // refused while the broker closed the last refusals is retried, as
        // a client would).
        held.pop();
        let started = Instant::now();
        loop {
            let mut raw = RawConn::connect(broker.addr).await;
            raw.send(&Frame::Hello(Hello {
                version: PROTOCOL_VERSION,
                client_name: "after".into(),
                credentials: Bytes::from_static(RIGHT_KEY.as_bytes()),
            }))
            .await;
            match raw.next_within(Duration::from_secs(2)).await {
                Received::Frame(Frame::Welcome(_)) => break,
                Received::Frame(Frame::Error(error)) => assert_at_file_limit(&error),
                other => panic!("after a place was freed: {other:?}"),
            }
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "no place within 5 s after one closed"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        drop(held);
    }
}

/// Connection refusals the records account for.
fn refusals_accounted(records: &[Value]) -> u64 {
    accounted(
        records,
        "connection refused",
        "connection refusals not logged (rate limit)",
    )
}

/// A TLS 1.1 ClientHello (no extensions, two RSA cipher suites), as a client
/// too old for corebus sends it.
fn tls11_client_hello() -> Vec<u8> {
    let mut body = vec![0x03, 0x02]; // client_version TLS 1.1
    body.extend_from_slice(&[0x42; 32]); // random
    body.push(0); // no session id
    body.extend_from_slice(&[0x00, 0x04, 0x00, 0x2f, 0x00, 0x35]); // cipher suites
    body.extend_from_slice(&[0x01, 0x00]); // null compression only
    let mut handshake = vec![0x01, 0x00, 0x00, body.len() as u8];
    handshake.extend_from_slice(&body);
    let mut record = vec![0x16, 0x03, 0x01, 0x00, handshake.len() as u8];
    record.extend_from_slice(&handshake);
    record
}

#[tokio::test]
async fn failed_tls_handshakes_are_closed_at_once_and_logged_with_the_peer() {
    let certs = corebus_tests::test_certs();
    let (cert, key) = (
        certs.cert_pem.to_str().expect("UTF-8 path"),
        certs.key_pem.to_str().expect("UTF-8 path"),
    );
    let broker = JsonBroker::start_with("tls.toml", None, &["--tls-cert", cert, "--tls-key", key]);
    // A TLS 1.1 client: refused with a fatal alert, and closed well within
    // the 5 s handshake deadline.
    let mut old = RawConn::connect(broker.addr).await;
    let old_peer = old.local_addr();
    old.send_bytes(&tls11_client_hello()).await;
    let started = Instant::now();
    let answer = old.drain_bytes_until_closed(Duration::from_secs(5)).await;
    assert!(started.elapsed() < Duration::from_secs(2), "closed at once");
    assert_eq!(
        answer.get(..1),
        Some(&[0x15u8][..]),
        "an alert record first: {answer:02x?}"
    );
    // A fatal alert: rustls answers handshake_failure (40) when nothing the
    // client offers (version, cipher suites) is acceptable.
    assert_eq!(answer.get(5), Some(&2), "a fatal alert: {answer:02x?}");
    assert!(
        matches!(answer.get(6), Some(40 | 70)),
        "handshake_failure or protocol_version: {answer:02x?}"
    );
    // Plain corebus on the TLS port: closed, and logged too.
    let mut plain = RawConn::connect(broker.addr).await;
    let plain_peer = plain.local_addr();
    plain
        .send(&Frame::Hello(Hello {
            version: PROTOCOL_VERSION,
            client_name: "plain".into(),
            credentials: Bytes::new(),
        }))
        .await;
    plain.drain_bytes_until_closed(Duration::from_secs(5)).await;
    let failures = |records: &[Value]| -> Vec<Value> {
        records
            .iter()
            .filter(|record| message(record) == "TLS handshake failed")
            .cloned()
            .collect()
    };
    let records = broker.records_once(|records| failures(records).len() >= 2);
    let lines = failures(&records);
    let text = broker.text();
    assert_eq!(lines.len(), 2, "one line each:\n{text}");
    for (line, peer) in lines.iter().zip([old_peer, plain_peer]) {
        assert_eq!(line["level"], "WARN", "{line}");
        assert_eq!(line["span"]["peer"], peer.to_string(), "{line}");
        assert!(line["span"]["id"].is_string(), "{line}");
        assert!(
            !line["fields"]["reason"]
                .as_str()
                .unwrap_or_default()
                .is_empty(),
            "{line}"
        );
    }
    let reason = lines[0]["fields"]["reason"].as_str().unwrap_or_default();
    assert!(
        reason.to_lowercase().contains("incompatible") || reason.contains("version"),
        "the reason says what was wrong: {reason}"
    );
}
