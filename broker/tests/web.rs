//! The browser listener of the `corebus` binary with authentication: tokens
//! minted as a web back end would (HS256 with the shared secret) open an
//! event stream for their own topic only, an expired one opens nothing, and
//! the origin allow-list is the flags' union. The WebSocket side is driven
//! from a real browser by clients/typescript's tests.

use crate::common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{Serve, TempFile};
use corebus_client::{Client, ClientConfig, Credentials};
use serde_json::{json, Value};

const SECRET: &str = "web-test-secret-0123456789abcdef0123";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// A subscribe-only token for notifications/user-ID.
fn user_token(id: u32, exp: u64) -> String {
    let claims = json!({
        "sub": format!("user-{id}"),
        "exp": exp,
        "perm": [{"ns": "notifications", "topic": format!("user-{id}"), "sub": true}],
    });
    corebus::jwt::encode(&claims.to_string(), SECRET.as_bytes())
}

/// Opens an event stream and reads until the server closes it or `until`
/// appears; returns what came.
fn stream(addr: &str, path_and_query: &str, headers: &str, until: &str) -> String {
    let mut socket = TcpStream::connect(addr).expect("connects");
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        socket,
        "GET {path_and_query} HTTP/1.1\r\nHost: {addr}\r\n{headers}\r\n"
    )
    .expect("writes");
    let mut text = String::new();
    let mut buf = [0; 4096];
    while !text.contains(until) {
        match socket.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => text.push_str(std::str::from_utf8(&buf[..n]).expect("UTF-8")),
            Err(err) => panic!("read: {err}; got {text:?}"),
        }
    }
    text
}

/// The data of the first `broker-error` event.
fn broker_error(text: &str) -> Value {
    let data = text
        .split("event: broker-error\ndata: ")
        .nth(1)
        .and_then(|rest| rest.split('\n').next())
        .unwrap_or_else(|| panic!("no broker-error event in {text:?}"));
    serde_json::from_str(data).expect("JSON")
}

#[test]
fn tokens_open_event_streams_for_their_own_topic_only() {
    let admin_hash = corebus::auth::key_hash_hex("cbk_web_admin");
    let keys = TempFile::new(
        "web-keys.toml",
        &format!(
            "token_secret = \"{SECRET}\"\ntoken_max_lifetime = \"1h\"\n[[keys]]\nname = \"admin\"\nsha256 = \"{admin_hash}\"\nsuperuser = true\n"
        ),
    );
    let serve = Serve::start_web(&["--config", keys.path()]);
    let web = serve.web_addr.clone();

    // Another user's topic: the stream opens, says why, and ends.
    let query = format!(
        "/v1/sse?ns=notifications&topic=user-2&token={}",
        user_token(1, now() + 600)
    );
    let text = stream(&web, &query, "", "\u{0}");
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    let error = broker_error(&text);
    assert_eq!(error["code"], "forbidden", "{error}");
    assert!(
        error["message"]
            .as_str()
            .unwrap_or_default()
            .contains("user-2"),
        "{error}"
    );

    // An expired token: refused at the handshake, fatally.
    let query = format!(
        "/v1/sse?ns=notifications&topic=user-1&token={}",
        user_token(1, now() - 5)
    );
    let error = broker_error(&stream(&web, &query, "", "\u{0}"));
    assert_eq!(error["fatal"], true, "{error}");
    assert!(
        error["code"] == "token_expired" || error["code"] == "unauthorized",
        "{error}"
    );

    // The user's own topic, with the token in the Authorization header:
    // subscribed, then what the back end publishes.
    let token = user_token(1, now() + 600);
    let handle = std::thread::spawn({
        let web = web.clone();
        move || {
            stream(
                &web,
                "/v1/sse?ns=notifications&topic=user-1",
                &format!("Authorization: Bearer {token}\r\n"),
                "data: your report is ready\n",
            )
        }
    });
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let config = ClientConfig {
            credentials: Some(Credentials::new("cbk_web_admin")),
            ..ClientConfig::default()
        };
        let client = Client::connect_with(serve.addr.as_str(), config)
            .await
            .expect("connects");
        // Publish until the stream has subscribed (it is live-only).
        for _ in 0..100 {
            if handle.is_finished() {
                break;
            }
            client
                .publish("notifications", "user-1", "your report is ready")
                .await
                .expect("publish");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let text = handle.join().expect("stream thread");
    assert!(text.contains("event: subscribed\n"), "{text}");
    assert!(text.contains("data: your report is ready\n"), "{text}");
}

#[test]
fn the_origin_allow_list_is_every_flag_value_together() {
    let serve = Serve::start_web(&[
        "--ws-allowed-origin",
        "http://a.test, http://b.test",
        "--ws-allowed-origin=https://c.test",
    ]);
    let web = &serve.web_addr;
    for (origin, status) in [
        ("http://a.test", "200"),
        ("http://b.test", "200"),
        ("https://c.test", "200"),
        ("http://c.test", "403"),
        ("https://d.test", "403"),
    ] {
        let text = stream(
            web,
            "/v1/sse?ns=app&topic=t",
            &format!("Origin: {origin}\r\n"),
            "\r\n\r\n",
        );
        assert!(
            text.starts_with(&format!("HTTP/1.1 {status} ")),
            "{origin}: {text}"
        );
    }
    let bad = std::process::Command::new(common::BIN)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--ws-allowed-origin",
            "app.test",
        ])
        .output()
        .expect("runs");
    assert!(!bad.status.success());
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        stderr.contains("it must start with http:// or https://"),
        "{stderr}"
    );
}
