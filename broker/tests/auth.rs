//! Authentication and authorization end to end: a `corebus serve` child
//! configured with API keys and a token secret, spoken to through the client
//! crate, raw frames, and the `corebus` CLI.

use crate::common;

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use common::TempFile;
use corebus::auth::key_hash_hex;
use corebus_client::{Client, ClientConfig, Credentials, Error, Event};
use corebus_net::{
    Body, ErrorCode, Frame, Hello, Publish, TokenRequest, TopicKey, PROTOCOL_VERSION,
};
use corebus_tests::RawConn;
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_corebus");
const SECRET: &str = "current-test-secret-0123456789abcdef";
const OLD_SECRET: &str = "previous-test-secret-0123456789abcdef";
const OTHER_SECRET: &str = "someone-elses-secret-0123456789abcdef";
const ADMIN_KEY: &str = "cbk_test_admin";
const PUB_KEY: &str = "cbk_test_publisher";
const SUB_KEY: &str = "cbk_test_subscriber";

/// Keys: a super-user; a publisher of exactly orders/eu/1; a subscriber of
/// every orders topic under `eu/`. Tokens live at most an hour.
fn config_text() -> String {
    format!(
        "token_secret = \"{SECRET}\"\n\
         token_secret_previous = \"{OLD_SECRET}\"\n\
         token_max_lifetime = \"1h\"\n\
         [[keys]]\nname = \"admin\"\nsha256 = \"{}\"\nsuperuser = true\n\
         [[keys]]\nname = \"publisher\"\nsha256 = \"{}\"\n\
         permissions = [ {{ ns = \"orders\", topic = \"eu/1\", publish = true }} ]\n\
         [[keys]]\nname = \"subscriber\"\nsha256 = \"{}\"\n\
         permissions = [ {{ ns = \"orders\", topic = \"eu/\", prefix = true, subscribe = true }} ]\n",
        key_hash_hex(ADMIN_KEY),
        key_hash_hex(PUB_KEY),
        key_hash_hex(SUB_KEY),
    )
}

/// `corebus ARGS` without the test's own COREBUS_* or RUST_LOG.
fn corebus(args: &[&str]) -> Command {
    let mut command = Command::new(BIN);
    command.args(args).env_remove("RUST_LOG");
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("COREBUS_") {
            command.env_remove(name);
        }
    }
    command
}

/// A `corebus serve` child, killed on drop.
struct Broker {
    child: Child,
    addr: String,
    stderr: Option<std::process::ChildStderr>,
    config: TempFile,
}

impl Broker {
    fn start(name: &str) -> Broker {
        let config = TempFile::new(name, &config_text());
        let command = corebus(&[
            "serve",
            "--config",
            config.path(),
            "--listen",
            "127.0.0.1:0",
        ]);
        Broker::spawn(command, Some(config)).expect("the broker starts")
    }

    /// Spawns `serve` (with one shard, warnings only); `Err(stderr)` when it
    /// exits instead of listening.
    fn spawn(mut command: Command, config: Option<TempFile>) -> Result<Broker, String> {
        let mut child = command
            .args(["--shards", "1", "--log-level", "warn"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("corebus serve starts");
        let stdout = child.stdout.take().expect("piped");
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).expect("reads");
        if line.is_empty() {
            let mut stderr = String::new();
            if let Some(mut pipe) = child.stderr.take() {
                let _ = pipe.read_to_string(&mut stderr);
            }
            let _ = child.wait();
            return Err(stderr);
        }
        // "corebus listening on 127.0.0.1:PORT with N shards"
        let addr = line
            .split_whitespace()
            .nth(3)
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .to_string();
        let stderr = child.stderr.take();
        Ok(Broker {
            child,
            addr,
            stderr,
            config: config.unwrap_or_else(|| TempFile::new("unused", "")),
        })
    }

    /// Stops the broker and returns what it logged.
    fn stop(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let mut text = String::new();
        if let Some(mut stderr) = self.stderr.take() {
            let _ = stderr.read_to_string(&mut text);
        }
        text
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}

fn token(claims: Value, secret: &str) -> String {
    corebus::jwt::encode(&claims.to_string(), secret.as_bytes())
}

async fn connect(addr: &str, credentials: &str) -> Result<Client, Error> {
    let config = ClientConfig {
        credentials: Some(Credentials::new(credentials)),
        reconnect: false,
        connect_timeout: Duration::from_secs(5),
        request_timeout: Duration::from_secs(5),
        ..ClientConfig::default()
    };
    Client::connect_with(addr, config).await
}

#[derive(Debug, Clone, Copy)]
enum Op {
    Publish,
    Subscribe,
}

/// Runs each (op, ns, topic, allowed) in order on one connection; a denied
/// one must be answered `forbidden` naming it, and the connection must keep
/// working (every list ends with an allowed case and a ping).
async fn check_matrix(client: &Client, cases: &[(Op, &str, &str, bool)]) {
    for (op, ns, topic, allowed) in cases.iter().copied() {
        let result = match op {
            Op::Publish => client.publish(ns, topic, "m").await.map(drop),
            Op::Subscribe => match client.subscribe(ns, topic).await {
                Ok(subscription) => subscription.unsubscribe().await,
                Err(err) => Err(err),
            },
        };
        match (allowed, result) {
            (true, Ok(())) => {}
            (
                false,
                Err(Error::Server {
                    code: Some(ErrorCode::Forbidden),
                    message,
                    ..
                }),
            ) => {
                let action = match op {
                    Op::Publish => "publish",
                    Op::Subscribe => "subscribe",
                };
                assert!(
                    message.contains(&format!("may not {action} on {ns}/{topic}")),
                    "{message}"
                );
            }
            (allowed, result) => panic!("{op:?} {ns}/{topic}: allowed {allowed}, got {result:?}"),
        }
    }
    client.ping().await.expect("the connection is still usable");
}

#[tokio::test]
async fn the_permission_matrix_holds_for_tokens_and_keys() {
    let broker = Broker::start("matrix.toml");
    let addr = broker.addr.as_str();
    use Op::{Publish as P, Subscribe as S};

    // A publish-only token on a prefix.
    let publisher = token(
        json!({ "exp": now() + 300, "sub": "svc",
                "perm": [{ "ns": "orders", "topic": "eu/", "prefix": true, "pub": true }] }),
        SECRET,
    );
    let client = connect(addr, &publisher).await.expect("token accepted");
    check_matrix(
        &client,
        &[
            (P, "orders", "eu/1", true),
            (P, "orders", "us/1", false),
            (P, "orders", "eu/2/x", true),
            (P, "orders", "eu", false),
            (P, "payments", "eu/1", false),
            (S, "orders", "eu/1", false),
            (P, "orders", "eu/", true),
        ],
    )
    .await;

    // A subscribe-only token on one exact topic.
    let reader = token(
        json!({ "exp": now() + 300, "sub": "user-123",
                "perm": [{ "ns": "notifications", "topic": "user-123", "sub": true }] }),
        SECRET,
    );
    let reader = connect(addr, &reader).await.expect("token accepted");
    check_matrix(
        &reader,
        &[
            (S, "notifications", "user-123", true),
            (P, "notifications", "user-123", false),
            (S, "notifications", "user-1234", false),
            (S, "notifications", "user-12", false),
            (S, "other", "user-123", false),
            (S, "notifications", "user-123", true),
        ],
    )
    .await;

    // A publish-only key on one exact topic.
    let key_publisher = connect(addr, PUB_KEY).await.expect("key accepted");
    check_matrix(
        &key_publisher,
        &[
            (P, "orders", "eu/1", true),
            (P, "orders", "eu/2", false),
            (S, "orders", "eu/1", false),
            (P, "other", "eu/1", false),
            (P, "orders", "eu/1", true),
        ],
    )
    .await;

    // A subscribe-only key on a prefix, which also receives what the
    // publish-only token sends.
    let key_reader = connect(addr, SUB_KEY).await.expect("key accepted");
    check_matrix(
        &key_reader,
        &[
            (S, "orders", "eu/1", true),
            (P, "orders", "eu/1", false),
            (S, "orders", "us/1", false),
            (S, "other", "eu/1", false),
            // Patterns inside the prefix, and none that reaches beyond it.
            (S, "orders", "eu/*", true),
            (S, "orders", "eu/>", true),
            (S, "orders", "eu/*/created", true),
            (S, "orders", "*", false),
            (S, "orders", ">", false),
            (S, "orders", "*/1", false),
            (S, "other", "eu/*", false),
            (S, "orders", "eu/9", true),
        ],
    )
    .await;
    // A token on one exact topic covers no pattern, not even one that
    // would match only that topic's neighbours.
    let exact = token(
        json!({ "exp": now() + 300, "sub": "user-123",
                "perm": [{ "ns": "notifications", "topic": "user-123", "sub": true }] }),
        SECRET,
    );
    let exact = connect(addr, &exact).await.expect("token accepted");
    check_matrix(
        &exact,
        &[
            (S, "notifications", "*", false),
            (S, "notifications", ">", false),
            (S, "notifications", "user-123", true),
        ],
    )
    .await;
    let mut subscription = key_reader
        .subscribe("orders", "eu/7")
        .await
        .expect("allowed");
    client
        .publish("orders", "eu/7", "hello")
        .await
        .expect("allowed");
    let event = tokio::time::timeout(Duration::from_secs(5), subscription.next_event()).await;
    match event {
        Ok(Some(Ok(Event::Message(message)))) => assert_eq!(&message.payload[..], b"hello"),
        other => panic!("expected the message, got {other:?}"),
    }

    // A super-user key may do anything.
    let admin = connect(addr, ADMIN_KEY).await.expect("key accepted");
    check_matrix(
        &admin,
        &[(P, "any", "thing", true), (S, "any", "thing", true)],
    )
    .await;
}

/// Opens a raw connection and sends `HELLO` with `credentials`; returns the
/// connection and the broker's answer.
async fn raw_hello(addr: &str, credentials: &str) -> (RawConn, Frame) {
    let mut raw = RawConn::connect(addr.parse().expect("a socket address")).await;
    raw.send(&Frame::Hello(Hello {
        version: PROTOCOL_VERSION,
        client_name: "auth-test".into(),
        credentials: Bytes::copy_from_slice(credentials.as_bytes()),
    }))
    .await;
    let answer = raw.recv().await.expect("an answer to HELLO");
    (raw, answer)
}

/// Asserts `frame` is a fatal error with `code`, and returns its text.
fn fatal(frame: &Frame, code: ErrorCode) -> String {
    match frame {
        Frame::Error(error) if error.code() == Some(code) && error.fatal => error.message.clone(),
        other => panic!("expected a fatal {code:?}, got {other:?}"),
    }
}

#[tokio::test]
async fn bad_credentials_are_refused_at_the_handshake() {
    let broker = Broker::start("refusals.toml");
    let addr = broker.addr.as_str();
    let perm = json!([{ "ns": "a", "topic": "b", "sub": true }]);
    let now = now();
    let valid = token(json!({ "exp": now + 60, "perm": perm }), SECRET);
    let parts: Vec<&str> = valid.split('.').collect();
    let forged_payload = corebus::jwt::base64url_encode(
        json!({ "exp": now + 60, "perm": [{ "ns": "a", "topic": "b", "pub": true }] })
            .to_string()
            .as_bytes(),
    );
    let none_header = corebus::jwt::base64url_encode(br#"{"alg":"none","typ":"JWT"}"#);
    let cases = [
        (
            "no credentials",
            String::new(),
            ErrorCode::Unauthorized,
            "requires credentials",
        ),
        (
            "unknown key",
            "cbk_nobody".into(),
            ErrorCode::Unauthorized,
            "unknown API key",
        ),
        (
            "expired",
            token(json!({ "exp": now - 10, "perm": perm }), SECRET),
            ErrorCode::TokenExpired,
            "expired",
        ),
        (
            "not yet valid",
            token(
                json!({ "exp": now + 600, "nbf": now + 300, "perm": perm }),
                SECRET,
            ),
            ErrorCode::Unauthorized,
            "not valid before",
        ),
        (
            "tampered",
            format!("{}.{forged_payload}.{}", parts[0], parts[2]),
            ErrorCode::Unauthorized,
            "bad token signature",
        ),
        (
            "wrongly signed",
            token(json!({ "exp": now + 60, "perm": perm }), OTHER_SECRET),
            ErrorCode::Unauthorized,
            "bad token signature",
        ),
        (
            "alg none",
            format!("{none_header}.{}.", parts[1]),
            ErrorCode::Unauthorized,
            "only HS256",
        ),
        (
            "over the maximum lifetime",
            token(json!({ "exp": now + 7200, "perm": perm }), SECRET),
            ErrorCode::Unauthorized,
            "token_max_lifetime",
        ),
        (
            "no exp",
            token(json!({ "perm": perm }), SECRET),
            ErrorCode::Unauthorized,
            "`exp`",
        ),
        (
            "malformed",
            "a.b.c".into(),
            ErrorCode::Unauthorized,
            "malformed",
        ),
    ];
    for (what, credentials, code, text) in cases {
        let (mut raw, answer) = raw_hello(addr, &credentials).await;
        let message = fatal(&answer, code);
        assert!(message.contains(text), "{what}: {message}");
        raw.expect_closed().await;
    }
    // The same token, correctly signed, and one signed with the previous
    // secret (a rotation in progress), are accepted.
    for credentials in [
        valid,
        token(json!({ "exp": now + 60, "perm": perm }), OLD_SECRET),
    ] {
        let (_raw, answer) = raw_hello(addr, &credentials).await;
        assert!(matches!(answer, Frame::Welcome(_)), "{answer:?}");
    }
}

#[tokio::test]
async fn a_token_expiring_on_a_live_connection_closes_it() {
    let broker = Broker::start("expiry.toml");
    let out = corebus(&[
        "token",
        "mint",
        "--config",
        broker.config.path(),
        "--ns",
        "a",
        "--topic",
        "b",
        "--subscribe",
        "--ttl",
        "2s",
    ])
    .output()
    .expect("runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let minted = String::from_utf8(out.stdout).expect("UTF-8");
    let started = Instant::now();
    let (mut raw, answer) = raw_hello(&broker.addr, minted.trim()).await;
    assert!(matches!(answer, Frame::Welcome(_)), "{answer:?}");
    let closing = raw.recv().await.expect("an error before the end");
    let message = fatal(&closing, ErrorCode::TokenExpired);
    assert!(message.contains("expired"), "{message}");
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_secs(5), "closed after {elapsed:?}");
    raw.expect_closed().await;
}

/// Unix time in milliseconds.
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as u64
}

#[tokio::test]
async fn a_token_is_refused_from_the_instant_it_expires() {
    let broker = Broker::start("instant.toml");
    // Expires at the start of the second after next: 1 to 2 s from now.
    let exp = now() + 2;
    let expires_ms = exp * 1000;
    let perm = json!([{ "ns": "a", "topic": "b", "pub": true }]);
    let credentials = token(json!({ "exp": exp, "perm": perm }), SECRET);
    let (mut raw, answer) = raw_hello(&broker.addr, &credentials).await;
    assert!(matches!(answer, Frame::Welcome(_)), "{answer:?}");
    // Publish every 20 ms until refused: every publish acknowledged left
    // before the instant of expiry (allowing 25 ms for the clocks of two
    // processes read at slightly different moments), and the refusal comes
    // soon after it, not at the next one-second tick.
    let topic = TopicKey::from_strs("a", "b").expect("valid");
    let mut request_id = 0;
    let refused_at = loop {
        request_id += 1;
        let sent_ms = now_ms();
        raw.send(&Frame::Publish(Publish {
            request_id,
            ack: true,
            topic: topic.clone(),
            body: Body::plain(b"x"),
        }))
        .await;
        match raw.recv().await {
            Some(Frame::PubAck(ack)) => {
                assert_eq!(ack.request_id, request_id);
                assert!(
                    sent_ms < expires_ms + 25,
                    "a publish sent {} ms after the token expired was acknowledged",
                    sent_ms - expires_ms
                );
            }
            Some(frame) => {
                let message = fatal(&frame, ErrorCode::TokenExpired);
                assert!(message.contains("expired"), "{message}");
                break now_ms();
            }
            None => panic!("closed without a token_expired error"),
        }
        assert!(now_ms() < expires_ms + 5_000, "never refused");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        refused_at < expires_ms + 250,
        "refused {} ms after expiry",
        refused_at.saturating_sub(expires_ms)
    );
    raw.expect_closed().await;

    // An idle connection is closed at the instant too, by its own timer.
    let exp = now() + 2;
    let credentials = token(json!({ "exp": exp, "perm": perm }), SECRET);
    let (mut idle, answer) = raw_hello(&broker.addr, &credentials).await;
    assert!(matches!(answer, Frame::Welcome(_)), "{answer:?}");
    let closing = idle.recv().await.expect("an error before the end");
    let closed_at = now_ms();
    fatal(&closing, ErrorCode::TokenExpired);
    assert!(
        closed_at >= exp * 1000 && closed_at < exp * 1000 + 250,
        "closed {} ms from expiry",
        closed_at as i64 - (exp * 1000) as i64
    );
    idle.expect_closed().await;
}

#[tokio::test]
async fn a_superuser_key_mints_tokens_over_the_protocol() {
    let broker = Broker::start("mint.toml");
    let claims = json!({ "sub": "user-123",
        "perm": [{ "ns": "notifications", "topic": "user-123", "sub": true }] });
    let (mut admin, answer) = raw_hello(&broker.addr, ADMIN_KEY).await;
    assert!(matches!(answer, Frame::Welcome(_)), "{answer:?}");
    admin
        .send(&Frame::TokenRequest(TokenRequest {
            request_id: 7,
            ttl_secs: 600,
            claims: claims.to_string(),
        }))
        .await;
    let minted = match admin.recv().await {
        Some(Frame::Token(token)) if token.request_id == 7 => token.token,
        other => panic!("expected TOKEN, got {other:?}"),
    };
    // Claims the broker cannot honour are refused, and the connection stays.
    admin
        .send(&Frame::TokenRequest(TokenRequest {
            request_id: 8,
            ttl_secs: 600,
            claims: r#"{"perm":[],"exp":1}"#.into(),
        }))
        .await;
    match admin.recv().await {
        Some(Frame::Error(error)) => {
            assert_eq!(
                (error.request_id, error.code(), error.fatal),
                (8, Some(ErrorCode::Forbidden), false)
            );
        }
        other => panic!("expected ERROR, got {other:?}"),
    }
    admin.send(&Frame::Ping(5)).await;
    assert_eq!(admin.recv().await, Some(Frame::Pong(5)));

    let reader = connect(&broker.addr, &minted)
        .await
        .expect("the minted token works");
    check_matrix(
        &reader,
        &[
            (Op::Publish, "notifications", "user-123", false),
            (Op::Subscribe, "notifications", "user-123", true),
        ],
    )
    .await;

    let (mut publisher, answer) = raw_hello(&broker.addr, PUB_KEY).await;
    assert!(matches!(answer, Frame::Welcome(_)), "{answer:?}");
    publisher
        .send(&Frame::TokenRequest(TokenRequest {
            request_id: 9,
            ttl_secs: 60,
            claims: claims.to_string(),
        }))
        .await;
    match publisher.recv().await {
        Some(Frame::Error(error)) => {
            assert_eq!(
                (error.request_id, error.code(), error.fatal),
                (9, Some(ErrorCode::Forbidden), false)
            );
            assert!(error.message.contains("super-user"), "{}", error.message);
        }
        other => panic!("expected ERROR, got {other:?}"),
    }
    publisher.send(&Frame::Ping(6)).await;
    assert_eq!(publisher.recv().await, Some(Frame::Pong(6)));
}

fn run(mut command: Command) -> (bool, String, String) {
    let out = command.stdin(Stdio::null()).output().expect("runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_cli_mints_tokens_and_reports_a_refused_publish_in_one_line() {
    let broker = Broker::start("cli.toml");
    let config = broker.config.path();
    let mint = |action: &str| {
        let (ok, out, err) = run(corebus(&[
            "token", "mint", "--config", config, "--ns", "orders", "--topic", "eu/1", action,
            "--ttl", "30m", "--sub", "cli",
        ]));
        assert!(ok, "{err}");
        out.trim().to_string()
    };
    let reader = mint("--subscribe");
    let (ok, out, err) = run(corebus(&[
        "pub",
        "orders",
        "eu/1",
        "hello",
        "--server",
        &broker.addr,
        "--token",
        &reader,
    ]));
    assert!(!ok, "a publish with a subscribe-only token fails: {out}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(err.contains("forbidden"), "{err}");
    assert!(err.contains("may not publish on orders/eu/1"), "{err}");

    // A publish token from the environment works.
    let writer = mint("--publish");
    let mut command = corebus(&["pub", "orders", "eu/1", "hello", "--server", &broker.addr]);
    command.env("COREBUS_CREDENTIALS", &writer);
    let (ok, out, err) = run(command);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "1");

    // Without credentials the handshake is refused, in one line too.
    let (ok, _, err) = run(corebus(&[
        "pub",
        "orders",
        "eu/1",
        "x",
        "--server",
        &broker.addr,
    ]));
    assert!(!ok);
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(
        err.contains("unauthorized") && !err.contains("is a broker running"),
        "{err}"
    );

    // Keys work from the CLI, and the lifetime cap is enforced at minting.
    let (ok, out, err) = run(corebus(&[
        "pub",
        "orders",
        "eu/1",
        "again",
        "--server",
        &broker.addr,
        "--key",
        PUB_KEY,
    ]));
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "2");
    let (ok, _, err) = run(corebus(&[
        "token",
        "mint",
        "--config",
        config,
        "--ns",
        "a",
        "--topic",
        "b",
        "--publish",
        "--ttl",
        "2h",
    ]));
    assert!(!ok && err.contains("token_max_lifetime"), "{err}");
    let (ok, _, err) = run(corebus(&[
        "token",
        "mint",
        "--ns",
        "a",
        "--topic",
        "b",
        "--publish",
        "--ttl",
        "1m",
    ]));
    assert!(!ok && err.contains("no token signing secret"), "{err}");
}

#[test]
fn generated_keys_hash_to_what_the_configuration_expects() {
    let (ok, out, err) = run(corebus(&["key", "generate"]));
    assert!(ok, "{err}");
    let mut lines = out.lines();
    let key = lines.next().expect("the key");
    let line = lines.next().expect("the sha256 line");
    assert!(key.starts_with("cbk_") && key.len() > 40, "{key}");
    assert_eq!(line, format!("sha256 = \"{}\"", key_hash_hex(key)));
    let (ok, out, _) = run(corebus(&["key", "hash", key]));
    assert!(ok);
    assert_eq!(out.trim(), key_hash_hex(key));
}

#[test]
fn serve_refuses_a_public_address_without_authentication() {
    let refused = Broker::spawn(corebus(&["serve", "--listen", "0.0.0.0:0"]), None);
    let err = refused.err().expect("refused");
    assert!(
        err.contains("refusing to listen on 0.0.0.0:0 without authentication"),
        "{err}"
    );
    assert!(err.contains("--insecure-no-auth"), "{err}");
    // The browser listener is a way in too.
    let refused = Broker::spawn(
        corebus(&[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--ws-listen",
            "0.0.0.0:0",
        ]),
        None,
    );
    let err = refused.err().expect("refused");
    assert!(
        err.contains("refusing to listen on 0.0.0.0:0 without authentication"),
        "{err}"
    );

    let open = Broker::spawn(
        corebus(&["serve", "--listen", "0.0.0.0:0", "--insecure-no-auth"]),
        None,
    )
    .expect("starts with --insecure-no-auth");
    let log = open.stop();
    assert!(log.contains("running without authentication"), "{log}");

    let mut from_env = corebus(&["serve", "--listen", "0.0.0.0:0"]);
    from_env.env("COREBUS_INSECURE_NO_AUTH", "true");
    Broker::spawn(from_env, None).expect("starts with COREBUS_INSECURE_NO_AUTH");

    // On loopback it starts, with the warning.
    let loopback = Broker::spawn(corebus(&["serve", "--listen", "127.0.0.1:0"]), None)
        .expect("starts on loopback");
    let log = loopback.stop();
    assert!(log.contains("running without authentication"), "{log}");

    // With keys configured, a public address needs no flag.
    let config = TempFile::new("public.toml", &config_text());
    Broker::spawn(
        corebus(&["serve", "--listen", "0.0.0.0:0", "--config", config.path()]),
        None,
    )
    .expect("starts with authentication");
}

#[test]
fn a_secret_file_others_may_read_stops_the_broker_with_the_chmod_that_fixes_it() {
    // The configuration file holds the token secret inline.
    let shared = TempFile::with_mode("shared.toml", &config_text(), 0o644);
    let refused = Broker::spawn(corebus(&["serve", "--config", shared.path()]), None);
    let err = refused.err().expect("refused");
    assert!(
        err.contains(&format!("chmod 600 {}", shared.path())),
        "{err}"
    );
    assert!(err.contains("mode 644"), "{err}");
    assert!(err.contains("insecure_secret_file_permissions"), "{err}");
    // A secret file named by the environment is checked too.
    let secret = TempFile::with_mode("secret.txt", &"s".repeat(40), 0o640);
    let mut by_env = corebus(&["serve"]);
    by_env.env("COREBUS_TOKEN_SECRET_FILE", secret.path());
    let err = Broker::spawn(by_env, None).err().expect("refused");
    assert!(
        err.contains(&format!("chmod 600 {}", secret.path())),
        "{err}"
    );
    // Private files start; so do shared ones with the explicit override. On
    // port 0: the default port may be taken by anything else on the machine.
    let private = TempFile::new("private.toml", &config_text());
    Broker::spawn(
        corebus(&[
            "serve",
            "--config",
            private.path(),
            "--listen",
            "127.0.0.1:0",
        ]),
        None,
    )
    .expect("a private file starts");
    Broker::spawn(
        corebus(&[
            "serve",
            "--config",
            shared.path(),
            "--insecure-secret-file-permissions",
            "--listen",
            "127.0.0.1:0",
        ]),
        None,
    )
    .expect("starts with the override");
}

/// The Python example of docs/security.md, run as written: the token it
/// prints must be accepted. Without `python3` on the PATH this fails: an
/// example that is never run is not known to work.
#[tokio::test]
async fn the_documented_python_example_mints_an_accepted_token() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/security.md"))
        .expect("docs/security.md exists");
    let after_marker = doc
        .split("<!-- tested: python-mint -->")
        .nth(1)
        .expect("the marker before the Python example");
    let code = after_marker
        .split("```python\n")
        .nth(1)
        .and_then(|rest| rest.split("\n```").next())
        .expect("a ```python block after the marker");
    let broker = Broker::start("python.toml");
    let out = Command::new("python3")
        .args(["-c", code])
        .env("COREBUS_TOKEN_SECRET", SECRET)
        .output()
        .unwrap_or_else(|err| {
            panic!(
                "this test runs the Python example of docs/security.md and needs \
                 `python3` on the PATH (README, Requirements): {err}"
            )
        });
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let minted = String::from_utf8(out.stdout).expect("UTF-8");
    let client = connect(&broker.addr, minted.trim())
        .await
        .expect("the Python token works");
    check_matrix(
        &client,
        &[
            (Op::Subscribe, "notifications", "user-123", true),
            (Op::Publish, "notifications", "user-123", false),
            (Op::Subscribe, "notifications", "user-123", true),
        ],
    )
    .await;
}

/// COREBUS_TOKEN_SECRET overrides the file's `token_secret`, and an empty
/// variable counts as unset (the file's `token_secret_previous` stays).
#[tokio::test]
async fn the_token_secret_comes_from_the_environment_and_an_empty_variable_is_unset() {
    let config = TempFile::new("env-secret.toml", &config_text());
    let mut command = corebus(&[
        "serve",
        "--config",
        config.path(),
        "--listen",
        "127.0.0.1:0",
    ]);
    command
        .env("COREBUS_TOKEN_SECRET", OTHER_SECRET)
        .env("COREBUS_TOKEN_SECRET_PREVIOUS", "");
    let broker = Broker::spawn(command, Some(config)).expect("the broker starts");
    let claims = || {
        json!({
            "exp": now() + 60,
            "perm": [{ "ns": "orders", "topic": "eu/1", "sub": true }],
        })
    };
    connect(&broker.addr, &token(claims(), OTHER_SECRET))
        .await
        .expect("signed with the environment's secret");
    connect(&broker.addr, &token(claims(), OLD_SECRET))
        .await
        .expect("signed with the file's previous secret, which the empty variable left");
    let overridden = connect(&broker.addr, &token(claims(), SECRET)).await;
    assert!(
        matches!(overridden, Err(Error::Handshake(ref reason)) if reason.contains("unauthorized")),
        "the file's token_secret is overridden: {overridden:?}"
    );
}
