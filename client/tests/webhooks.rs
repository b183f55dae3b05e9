//! Webhook management against a scripted fake server: the exact JSON
//! commands sent, the replies parsed, refusals, malformed replies, timeouts
//! and lost connections.

use crate::common;

use std::time::{Duration, Instant};

use common::*;
use corebus_client::{
    ClientConfig, Error, ErrorCode, Webhook, WebhookMatch, WebhookSource, WebhookSpec,
};
use corebus_net::{ErrorFrame, Frame, WebhookReply, DEFAULT_MAX_FRAME};
use serde_json::{json, Value};

/// The next frame, which must be a `WEBHOOK_REQUEST`: its id and its command.
async fn expect_webhook(peer: &mut Peer) -> (u32, Value) {
    match peer.expect().await {
        Frame::WebhookRequest(request) => {
            let command = serde_json::from_str(&request.command).expect("the command is JSON");
            (request.request_id, command)
        }
        other => panic!("expected WEBHOOK_REQUEST, got {other:?}"),
    }
}

async fn reply(peer: &mut Peer, request_id: u32, result: &str) {
    peer.send(Frame::WebhookReply(WebhookReply {
        request_id,
        result: result.into(),
    }))
    .await;
}

/// Expects `command` and answers it with `result`. A command that changes
/// the webhooks carries a request id (for retries in a cluster): the one
/// `command` names, or one the client made.
async fn answer(peer: &mut Peer, mut command: Value, result: Value) {
    let (request_id, mut received) = expect_webhook(peer).await;
    let sent = received
        .as_object_mut()
        .and_then(|object| object.remove("request_id"));
    let expected = command
        .as_object_mut()
        .and_then(|object| object.remove("request_id"));
    match (expected, command["op"].as_str()) {
        (Some(expected), _) => assert_eq!(sent, Some(expected)),
        (None, Some("add" | "remove" | "rotate")) => assert!(
            sent.as_ref()
                .and_then(Value::as_str)
                .is_some_and(|id| id.starts_with("rq-") && id.len() <= 64),
            "a made request id, not {sent:?}"
        ),
        (None, _) => assert_eq!(sent, None),
    }
    assert_eq!(received, command);
    reply(peer, request_id, &result.to_string()).await;
}

fn hook(id: &str, source: &str) -> Value {
    json!({
        "id": id,
        "url": "https://hooks.example/orders?a=1&b=\"2\"",
        "namespace": "shop",
        "topic": "orders/",
        "match": "prefix",
        "source": source,
    })
}

fn with(mut value: Value, key: &str, field: Value) -> Value {
    value[key] = field;
    value
}

#[tokio::test]
async fn add_list_remove_rotate() {
    let (client, mut peer) = pair().await;
    // Quotes, a backslash, a control character and non-ASCII: the command
    // must still be exactly this string once parsed.
    let secret = "s\"e\\c\nr\u{e9}t";
    let spec = WebhookSpec::new(
        "https://hooks.example/orders?a=1&b=\"2\"",
        "shop",
        "orders/",
        WebhookMatch::Prefix,
    )
    .with_secret(secret);
    let server = async {
        answer(
            &mut peer,
            json!({
                "op": "add",
                "url": "https://hooks.example/orders?a=1&b=\"2\"",
                "namespace": "shop",
                "topic": "orders/",
                "match": "prefix",
                "secret": secret,
            }),
            json!({ "webhook": with(hook("wh-1", "runtime"), "secret", json!(secret)) }),
        )
        .await;
        answer(
            &mut peer,
            json!({
                "op": "add",
                "url": "https://hooks.example/one",
                "namespace": "shop",
                "topic": "orders/eu",
                "match": "exact",
            }),
            json!({ "webhook": {
                "id": "wh-2", "url": "https://hooks.example/one", "namespace": "shop",
                "topic": "orders/eu", "match": "exact", "source": "runtime",
                "secret": "generated",
            } }),
        )
        .await;
        answer(
            &mut peer,
            json!({ "op": "list" }),
            json!({ "webhooks": [
                hook("cfg-1", "config"),
                with(hook("wh-1", "runtime"), "previous_secret_expires_ms", json!(1_800_000_000_000u64)),
            ] }),
        )
        .await;
        answer(
            &mut peer,
            json!({ "op": "rotate", "id": "wh-1", "secret": "n\u{e9}w" }),
            json!({ "webhook": with(
                with(hook("wh-1", "runtime"), "secret", json!("n\u{e9}w")),
                "previous_secret_expires_ms",
                json!(1_800_000_060_000u64),
            ) }),
        )
        .await;
        answer(
            &mut peer,
            json!({ "op": "rotate", "id": "wh-1" }),
            json!({ "webhook": with(hook("wh-1", "runtime"), "secret", json!("fresh")) }),
        )
        .await;
        answer(
            &mut peer,
            json!({ "op": "remove", "id": "wh-\"1\"" }),
            json!({ "removed": hook("wh-\"1\"", "runtime") }),
        )
        .await;
    };
    let client_side = async {
        let added = client.add_webhook(&spec).await.expect("added");
        assert_eq!(
            added,
            Webhook {
                id: "wh-1".into(),
                url: "https://hooks.example/orders?a=1&b=\"2\"".into(),
                namespace: "shop".into(),
                topic: "orders/".into(),
                match_kind: WebhookMatch::Prefix,
                source: WebhookSource::Runtime,
                secret: Some(secret.into()),
                previous_secret_expires_ms: None,
                delivery: None,
                disabled: None,
            }
        );
        assert!(!format!("{added:?}").contains(secret));

        let generated = client
            .add_webhook(&WebhookSpec::new(
                "https://hooks.example/one",
                "shop",
                "orders/eu",
                WebhookMatch::Exact,
            ))
            .await
            .expect("added");
        assert_eq!(generated.match_kind, WebhookMatch::Exact);
        assert_eq!(generated.secret.as_deref(), Some("generated"));

        let listed = client.list_webhooks().await.expect("listed");
        assert_eq!(listed.len(), 2);
        assert_eq!(listed[0].id, "cfg-1");
        assert_eq!(listed[0].source, WebhookSource::Config);
        assert_eq!(listed[0].secret, None);
        assert_eq!(
            listed[1].previous_secret_expires_ms,
            Some(1_800_000_000_000)
        );

        let rotated = client
            .rotate_webhook_secret("wh-1", Some("n\u{e9}w"))
            .await
            .expect("rotated");
        assert_eq!(rotated.secret.as_deref(), Some("n\u{e9}w"));
        assert_eq!(rotated.previous_secret_expires_ms, Some(1_800_000_060_000));
        let rotated = client
            .rotate_webhook_secret("wh-1", None)
            .await
            .expect("rotated");
        assert_eq!(rotated.secret.as_deref(), Some("fresh"));
        assert_eq!(rotated.previous_secret_expires_ms, None);

        let removed = client.remove_webhook("wh-\"1\"").await.expect("removed");
        assert_eq!(removed.id, "wh-\"1\"");
        assert_eq!(removed.secret, None);
    };
    within(async { tokio::join!(client_side, server) }).await;
}

#[tokio::test]
async fn refusals_are_server_errors_with_their_code() {
    let (client, mut peer) = pair().await;
    let server = async {
        let (request_id, _) = expect_webhook(&mut peer).await;
        peer.send(Frame::Error(ErrorFrame::new(
            request_id,
            ErrorCode::InvalidRequest,
            false,
            "no webhook wh-9",
        )))
        .await;
        let (request_id, _) = expect_webhook(&mut peer).await;
        peer.send(Frame::Error(ErrorFrame::new(
            request_id,
            ErrorCode::Forbidden,
            false,
            "super-user only",
        )))
        .await;
        answer(
            &mut peer,
            json!({ "op": "list" }),
            json!({ "webhooks": [] }),
        )
        .await;
    };
    let client_side = async {
        let err = client.remove_webhook("wh-9").await.expect_err("refused");
        match &err {
            Error::Server {
                code,
                raw_code,
                message,
            } => {
                assert_eq!(*code, Some(ErrorCode::InvalidRequest));
                assert_eq!(*raw_code, 21);
                assert_eq!(message, "no webhook wh-9");
            }
            other => panic!("expected Error::Server, got {other:?}"),
        }
        let err = client.list_webhooks().await.expect_err("refused");
        assert_eq!(err.server_code(), Some(ErrorCode::Forbidden), "{err:?}");
        // A refusal leaves the connection usable.
        assert_eq!(client.list_webhooks().await.expect("listed"), Vec::new());
    };
    within(async { tokio::join!(client_side, server) }).await;
}

#[tokio::test]
async fn malformed_replies_are_typed_errors() {
    let (client, mut peer) = pair().await;
    let spec = WebhookSpec::new("https://h/x", "shop", "t", WebhookMatch::Exact);
    let server = async {
        let (request_id, _) = expect_webhook(&mut peer).await;
        reply(&mut peer, request_id, "{\"webhooks\": [").await;
        let (request_id, _) = expect_webhook(&mut peer).await;
        let fuzzy = with(
            with(hook("wh-1", "runtime"), "match", json!("fuzzy")),
            "secret",
            json!("hunter2"),
        );
        reply(
            &mut peer,
            request_id,
            &json!({ "webhook": fuzzy }).to_string(),
        )
        .await;
        let (request_id, _) = expect_webhook(&mut peer).await;
        // add must reveal the secret.
        reply(
            &mut peer,
            request_id,
            &json!({ "webhook": hook("wh-1", "runtime") }).to_string(),
        )
        .await;
        answer(
            &mut peer,
            json!({ "op": "list" }),
            json!({ "webhooks": [] }),
        )
        .await;
    };
    let client_side = async {
        let err = client.list_webhooks().await.expect_err("not JSON");
        match &err {
            Error::MalformedReply { request, reason } => {
                assert_eq!(*request, "webhook list");
                assert!(reason.starts_with("the result is not JSON"), "{reason}");
            }
            other => panic!("expected Error::MalformedReply, got {other:?}"),
        }
        let err = client.add_webhook(&spec).await.expect_err("bad match");
        assert!(
            matches!(&err, Error::MalformedReply { request: "webhook add", reason }
                if reason.contains("`webhook.match` is \"fuzzy\"")),
            "{err:?}"
        );
        assert!(!format!("{err:?} {err}").contains("hunter2"), "{err:?}");
        let err = client.add_webhook(&spec).await.expect_err("no secret");
        assert_eq!(
            err.to_string(),
            "malformed reply to webhook add: field `webhook.secret` is missing"
        );
        assert_eq!(client.list_webhooks().await.expect("listed"), Vec::new());
    };
    within(async { tokio::join!(client_side, server) }).await;
}

#[tokio::test]
async fn unanswered_request_times_out_and_a_late_reply_is_ignored() {
    let request_timeout = Duration::from_millis(200);
    let config = ClientConfig {
        request_timeout,
        ..ClientConfig::default()
    };
    let (client, mut peer) = connected(config, DEFAULT_MAX_FRAME).await;
    let started = Instant::now();
    let err = within(client.list_webhooks()).await.expect_err("no reply");
    assert!(matches!(err, Error::Timeout), "{err:?}");
    assert!(started.elapsed() >= request_timeout);

    let (late, command) = expect_webhook(&mut peer).await;
    assert_eq!(command, json!({ "op": "list" }));
    reply(
        &mut peer,
        late,
        &json!({ "webhooks": [hook("late", "config")] }).to_string(),
    )
    .await;
    let server = async {
        let (request_id, _) = expect_webhook(&mut peer).await;
        assert_ne!(request_id, late);
        reply(
            &mut peer,
            request_id,
            &json!({ "webhooks": [] }).to_string(),
        )
        .await;
    };
    let (listed, ()) = within(async { tokio::join!(client.list_webhooks(), server) }).await;
    assert_eq!(listed.expect("the late reply went nowhere"), Vec::new());
}

#[tokio::test]
async fn connection_drop_fails_the_request_and_the_next_connection_serves() {
    let (listener, _) = listen().await;
    let config = ClientConfig {
        reconnect_initial_delay: Duration::from_millis(1),
        ..ClientConfig::default()
    };
    let (client, mut peer) = connected_on(&listener, config, DEFAULT_MAX_FRAME).await;
    let server = async {
        expect_webhook(&mut peer).await;
        drop(peer);
    };
    let (result, ()) = within(async { tokio::join!(client.list_webhooks(), server) }).await;
    let err = result.expect_err("the connection dropped");
    assert!(matches!(err, Error::ConnectionLost(_)), "{err:?}");

    let server = async {
        let mut peer = accept_welcomed(&listener, 1).await;
        answer(
            &mut peer,
            json!({ "op": "list" }),
            json!({ "webhooks": [] }),
        )
        .await;
        peer
    };
    let (listed, _peer) = within(async { tokio::join!(client.list_webhooks(), server) }).await;
    assert_eq!(listed.expect("served after reconnecting"), Vec::new());
}

#[tokio::test]
async fn connection_drop_without_reconnect_ends_webhook_calls() {
    let config = ClientConfig {
        reconnect: false,
        ..ClientConfig::default()
    };
    let (client, mut peer) = connected(config, DEFAULT_MAX_FRAME).await;
    let server = async {
        expect_webhook(&mut peer).await;
        drop(peer);
    };
    let (result, ()) = within(async { tokio::join!(client.remove_webhook("wh-1"), server) }).await;
    assert!(
        matches!(result, Err(Error::ConnectionLost(_))),
        "{result:?}"
    );
    let later = within(client.list_webhooks()).await;
    assert!(matches!(later, Err(Error::ConnectionLost(_))), "{later:?}");
}
