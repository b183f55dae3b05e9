//! Reloading without a restart (SIGHUP): API keys, token secrets, the TLS
//! certificate, the webhook allow-list and limits change while connections
//! stay up; a reload that fails validation changes nothing and says why.

use crate::common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::receiver::{Receiver, Reply};
use common::{scrape, TempFile, BIN};
use corebus::auth::key_hash_hex;
use corebus_client::{
    Client, ClientConfig, Credentials, Error, TlsOptions, TlsRoots, WebhookMatch, WebhookSpec,
};
use corebus_net::ErrorCode;
use corebus_tests::{test_certs, TestCerts};
use serde_json::json;

const FIRST_KEY: &str = "cbk_reload_first";
const SECOND_KEY: &str = "cbk_reload_second";
const FIRST_SECRET: &str = "first-token-secret-0123456789abcdef0123";
const SECOND_SECRET: &str = "second-token-secret-0123456789abcdef012";
const WAIT: Duration = Duration::from_secs(10);

/// A `corebus serve` child whose log (at info) is kept, killed on drop.
struct Broker {
    child: Child,
    addr: String,
    metrics: String,
    log: Arc<Mutex<Vec<String>>>,
}

impl Broker {
    /// `serve --config config` with `args`, on loopback port 0.
    fn start(config: &TempFile, args: &[&str]) -> Broker {
        let metrics = format!("127.0.0.1:{}", common::free_port());
        let mut child = Command::new(BIN)
            .args([
                "serve",
                "--config",
                config.path(),
                "--listen",
                "127.0.0.1:0",
            ])
            .args([
                "--log-level",
                "info",
                "--shards",
                "2",
                "--metrics",
                &metrics,
            ])
            .args(args)
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("serve starts");
        let log = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().expect("stderr piped");
        std::thread::spawn({
            let log = log.clone();
            move || {
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    log.lock().expect("log").push(line);
                }
            }
        });
        let addr = common::read_address(&mut child);
        Broker {
            child,
            addr,
            metrics,
            log,
        }
    }

    /// Sends SIGHUP and returns the log line that ends the reload: applied
    /// or refused.
    fn reload(&self) -> String {
        let outcome = |line: &String| {
            line.contains("configuration reloaded") || line.contains("configuration reload refused")
        };
        let before = self
            .log
            .lock()
            .expect("log")
            .iter()
            .filter(|l| outcome(l))
            .count();
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGHUP) };
        let started = Instant::now();
        loop {
            if let Some(line) = self
                .log
                .lock()
                .expect("log")
                .iter()
                .filter(|l| outcome(l))
                .nth(before)
            {
                return line.clone();
            }
            assert!(started.elapsed() < WAIT, "no reload outcome logged");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Every line logged so far.
    fn log(&self) -> String {
        self.log.lock().expect("log").join("\n")
    }

    /// The value of metric sample `name`.
    fn metric(&self, name: &str) -> f64 {
        common::sample(&scrape(&self.metrics, "/metrics"), name)
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A super-user key named `name`.
fn key(name: &str, key: &str) -> String {
    format!(
        "[[keys]]\nname = \"{name}\"\nsha256 = \"{}\"\nsuperuser = true\n",
        key_hash_hex(key)
    )
}

fn rewrite(file: &TempFile, contents: &str) {
    std::fs::write(file.path(), contents).expect("rewrites the configuration");
}

fn config_with(credentials: &str, tls: Option<&TestCerts>) -> ClientConfig {
    ClientConfig {
        credentials: Some(Credentials::new(credentials)),
        reconnect: false,
        connect_timeout: Duration::from_secs(5),
        request_timeout: Duration::from_secs(5),
        tls: tls.map(|ca| TlsOptions {
            roots: TlsRoots::CaFile(ca.cert_pem.clone()),
            server_name: None,
        }),
        ..ClientConfig::default()
    }
}

async fn connect(addr: &str, credentials: &str) -> Result<Client, Error> {
    Client::connect_with(addr, config_with(credentials, None)).await
}

fn token(secret: &str) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    let claims = json!({ "exp": now + 300, "sub": "reader",
        "perm": [{ "ns": "app", "topic": "t", "sub": true }] });
    corebus::jwt::encode(&claims.to_string(), secret.as_bytes())
}

/// Asserts that the handshake was refused with `code`.
fn refused_with(result: Result<Client, Error>, code: ErrorCode, what: &str) {
    match result {
        Err(Error::Handshake(reason)) => {
            assert!(reason.contains(code.name()), "{what}: {reason}")
        }
        Err(other) => panic!("{what}: refused otherwise: {other}"),
        Ok(_) => panic!("{what}: accepted"),
    }
}

fn refused(result: Result<Client, Error>, what: &str) {
    refused_with(result, ErrorCode::Unauthorized, what);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_token_secrets_and_limits_change_while_connections_stay_up() {
    let config = TempFile::new(
        "keys.toml",
        &format!(
            "token_secret = \"{FIRST_SECRET}\"\nmax_subscriptions = 1\n{}",
            key("first", FIRST_KEY)
        ),
    );
    let broker = Broker::start(&config, &[]);
    let addr = broker.addr.as_str();
    let old = connect(addr, FIRST_KEY).await.expect("the first key works");
    let mut held = old.subscribe("app", "t").await.expect("subscribed");
    let over = old
        .subscribe("app", "u")
        .await
        .expect_err("one subscription only");
    assert!(
        matches!(
            over,
            Error::Server {
                code: Some(ErrorCode::TooManySubscriptions),
                ..
            }
        ),
        "{over}"
    );
    connect(addr, &token(FIRST_SECRET))
        .await
        .expect("the first secret's token works");

    // The first key and secret go, the second come; the limit rises.
    rewrite(
        &config,
        &format!(
            "token_secret = \"{SECOND_SECRET}\"\nmax_subscriptions = 3\n{}",
            key("second", SECOND_KEY)
        ),
    );
    let line = broker.reload();
    assert!(line.contains("configuration reloaded"), "{line}");
    assert!(
        line.contains("max_subscriptions"),
        "names what changed: {line}"
    );

    refused(connect(addr, FIRST_KEY).await, "the removed key");
    refused(
        connect(addr, &token(FIRST_SECRET)).await,
        "the old secret's token",
    );
    connect(addr, &token(SECOND_SECRET))
        .await
        .expect("the new secret's token works");
    let new = connect(addr, SECOND_KEY)
        .await
        .expect("the added key works");
    // The connection opened with the removed key stays up, keeps what it
    // was granted, and is held to the new limit at once.
    let _more = old
        .subscribe("app", "u")
        .await
        .expect("the raised limit applies");
    new.publish("app", "t", "after the reload")
        .await
        .expect("published");
    let message = tokio::time::timeout(WAIT, held.next_message())
        .await
        .expect("in time")
        .expect("open")
        .expect("no gap");
    assert_eq!(&message.payload[..], b"after the reload");
    assert_eq!(
        broker.metric("corebus_config_reloads_total{result=\"applied\"}"),
        1.0
    );
    assert_eq!(broker.metric("corebus_config_last_reload_ok"), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_fails_validation_changes_nothing_and_says_why() {
    let good = format!("max_connections = 100\n{}", key("first", FIRST_KEY));
    let config = TempFile::new("refused.toml", &good);
    let broker = Broker::start(&config, &[]);
    let addr = broker.addr.as_str();
    let _first = connect(addr, FIRST_KEY).await.expect("the first key works");

    // Each of these is refused whole: the second key is not taken from a
    // file that also has a bad value, and so on.
    let second = key("second", SECOND_KEY);
    let bad = [
        (format!("max_connections = -3\n{second}"), "max_connections"),
        (format!("{second}[[keys]]\nname = \"x\"\n"), "keys"),
        (
            format!("max_connections = 100\ntoken_secret = \"short\"\n{second}"),
            "token_secret",
        ),
        // Turning authentication off needs a restart.
        ("max_connections = 100\n".to_string(), "restart"),
    ];
    for (number, (text, reason)) in bad.iter().enumerate() {
        rewrite(&config, text);
        let line = broker.reload();
        assert!(
            line.contains("configuration reload refused"),
            "{text}: {line}"
        );
        assert!(
            line.contains(reason),
            "{text}: the reason names {reason}: {line}"
        );
        refused(
            connect(addr, SECOND_KEY).await,
            "a key from a refused reload",
        );
        connect(addr, FIRST_KEY)
            .await
            .expect("the running key still works");
        assert_eq!(
            broker.metric("corebus_config_reloads_total{result=\"refused\"}"),
            (number + 1) as f64
        );
        assert_eq!(broker.metric("corebus_config_last_reload_ok"), 0.0);
    }

    // A setting that needs a restart is named and keeps its value; the
    // rest of the file is applied.
    rewrite(
        &config,
        &format!(
            "max_connections = 100\nshutdown_deadline = \"3s\"\n{}{second}",
            key("first", FIRST_KEY)
        ),
    );
    let line = broker.reload();
    assert!(line.contains("configuration reloaded"), "{line}");
    let log = broker.log();
    assert!(
        log.lines()
            .any(|l| l.contains("need a restart") && l.contains("shutdown_deadline")),
        "{log}"
    );
    connect(addr, SECOND_KEY)
        .await
        .expect("the added key works");
    assert_eq!(broker.metric("corebus_config_last_reload_ok"), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lowered_connection_limit_refuses_new_connections_and_keeps_the_open_ones() {
    let config = TempFile::new("limits.toml", "max_connections = 10\n");
    let broker = Broker::start(&config, &[]);
    let addr = broker.addr.as_str();
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(Client::connect(addr).await.expect("connects"));
    }
    rewrite(&config, "max_connections = 3\n");
    let line = broker.reload();
    assert!(line.contains("configuration reloaded"), "{line}");
    let no_retry = ClientConfig {
        reconnect: false,
        ..ClientConfig::default()
    };
    let over = Client::connect_with(addr, no_retry).await;
    refused_with(over, ErrorCode::TooManyConnections, "a fourth connection");
    for client in &open {
        client
            .publish("app", "t", "still here")
            .await
            .expect("open ones work");
    }
    rewrite(&config, "max_connections = 4\n");
    broker.reload();
    Client::connect(addr).await.expect("room for one more");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_certificate_serves_new_handshakes_and_established_ones_keep_theirs() {
    let (first, second) = (test_certs(), test_certs());
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("reload-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("creates");
    let (cert, key_file) = (dir.join("cert.pem"), dir.join("key.pem"));
    let install = |certs: &TestCerts, key_of: &TestCerts| {
        std::fs::copy(&certs.cert_pem, &cert).expect("copies the certificate");
        std::fs::copy(&key_of.key_pem, &key_file).expect("copies the key");
    };
    install(&first, &first);
    let config = TempFile::new(
        "tls.toml",
        &format!(
            "tls_cert = \"{}\"\ntls_key = \"{}\"\n{}",
            cert.display(),
            key_file.display(),
            key("first", FIRST_KEY)
        ),
    );
    let broker = Broker::start(&config, &[]);
    let addr = broker.addr.as_str();
    let old = Client::connect_with(addr, config_with(FIRST_KEY, Some(&first)))
        .await
        .expect("the first certificate is served");
    let mut held = old.subscribe("app", "t").await.expect("subscribed");

    // A certificate whose key is not its own is refused; the first stays.
    install(&second, &first);
    let line = broker.reload();
    assert!(line.contains("configuration reload refused"), "{line}");
    Client::connect_with(addr, config_with(FIRST_KEY, Some(&first)))
        .await
        .expect("still the first certificate");

    install(&second, &second);
    let line = broker.reload();
    assert!(line.contains("configuration reloaded"), "{line}");
    let failed = Client::connect_with(addr, config_with(FIRST_KEY, Some(&first))).await;
    assert!(
        failed.is_err(),
        "a client that trusts only the first certificate must fail the new handshake"
    );
    let new = Client::connect_with(addr, config_with(FIRST_KEY, Some(&second)))
        .await
        .expect("the second certificate is served");
    new.publish("app", "t", "over the new certificate")
        .await
        .expect("published");
    let message = tokio::time::timeout(WAIT, held.next_message())
        .await
        .expect("in time")
        .expect("the established connection is still up")
        .expect("no gap");
    assert_eq!(&message.payload[..], b"over the new certificate");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhook_allow_list_changes_for_commands_and_deliveries() {
    let receiver = Receiver::start(|_, _| Reply::Status(200)).await;
    let data = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("reload-webhooks-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    let base = format!("data_dir = \"{}\"\n", data.display());
    let config = TempFile::new("webhooks.toml", &base);
    let broker = Broker::start(&config, &[]);
    let client = Client::connect(broker.addr.as_str())
        .await
        .expect("connects");
    let spec = WebhookSpec::new(&receiver.url, "app", "hooked", WebhookMatch::Exact)
        .with_secret("whsec_reload-test-secret");
    let refused = client
        .add_webhook(&spec)
        .await
        .expect_err("loopback is refused");
    assert!(
        refused.to_string().contains("webhook_allow_networks"),
        "{refused}"
    );

    rewrite(
        &config,
        &format!("{base}webhook_allow_networks = \"127.0.0.0/8\"\n"),
    );
    assert!(broker.reload().contains("configuration reloaded"));
    let hook = client
        .add_webhook(&spec)
        .await
        .expect("allowed after the reload");
    client
        .publish("app", "hooked", "one")
        .await
        .expect("published");
    receiver
        .wait_for("the first delivery", |requests| requests.len() == 1)
        .await;

    // Taken away again: the webhook stays, its deliveries are refused.
    rewrite(&config, &base);
    assert!(broker.reload().contains("configuration reloaded"));
    client
        .publish("app", "hooked", "two")
        .await
        .expect("published");
    let not_allowed = format!(
        "corebus_webhook_dropped_total{{webhook=\"{}\",reason=\"not_allowed\"}}",
        hook.id
    );
    let started = Instant::now();
    while broker.metric(&not_allowed) < 1.0 {
        assert!(
            started.elapsed() < WAIT,
            "the second message was not refused"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(receiver.requests().len(), 1, "nothing more was delivered");
    let _ = std::fs::remove_dir_all(&data);
}
