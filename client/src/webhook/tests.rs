//! Reading the broker's webhook replies: every field, and the malformed ones refused.

use super::*;

fn runtime_hook(extra: Value) -> Value {
    let mut hook = json!({
        "id": "wh-1",
        "url": "https://hooks.example/a",
        "namespace": "shop",
        "topic": "orders/",
        "match": "prefix",
        "source": "runtime",
    });
    if let (Some(hook), Value::Object(extra)) = (hook.as_object_mut(), extra) {
        hook.extend(extra);
    }
    hook
}

#[test]
fn parses_a_webhook_with_and_without_secret() {
    let result = json!({ "webhook": runtime_hook(json!({
        "secret": "k\"ey",
        "previous_secret_expires_ms": 1_700_000_000_000u64,
        "future_field": [1, 2],
    })) })
    .to_string();
    let hook = parse_one(&result, "webhook", true).expect("parses");
    assert_eq!(
        hook,
        Webhook {
            id: "wh-1".into(),
            url: "https://hooks.example/a".into(),
            namespace: "shop".into(),
            topic: "orders/".into(),
            match_kind: WebhookMatch::Prefix,
            source: WebhookSource::Runtime,
            secret: Some("k\"ey".into()),
            previous_secret_expires_ms: Some(1_700_000_000_000),
            delivery: None,
            disabled: None,
        }
    );

    let result = json!({ "removed": runtime_hook(json!({})) }).to_string();
    let hook = parse_one(&result, "removed", false).expect("parses");
    assert_eq!(hook.secret, None);
    assert_eq!(hook.previous_secret_expires_ms, None);
    let err = parse_one(&result.replace("removed", "webhook"), "webhook", true)
        .expect_err("add and rotate must reveal the secret");
    assert_eq!(err, "field `webhook.secret` is missing");
}

#[test]
fn parses_a_list() {
    let result = json!({ "webhooks": [
        runtime_hook(json!({})),
        runtime_hook(json!({ "id": "wh-2", "match": "exact", "source": "config" })),
    ] })
    .to_string();
    let hooks = parse_list(&result).expect("parses");
    assert_eq!(hooks.len(), 2);
    assert_eq!(hooks[1].id, "wh-2");
    assert_eq!(hooks[1].match_kind, WebhookMatch::Exact);
    assert_eq!(hooks[1].source, WebhookSource::Config);
    assert_eq!(parse_list(r#"{"webhooks":[]}"#), Ok(Vec::new()));
    assert_eq!(hooks[0].disabled, None);
    let result = json!({ "webhooks": [runtime_hook(json!({
        "disabled": { "at_ms": "9007199254740993", "detail": "answered 410 Gone" },
    }))] })
    .to_string();
    let disabled = parse_list(&result).expect("parses")[0].disabled.clone();
    assert_eq!(
        disabled,
        Some(WebhookDisabled {
            at_ms: 9_007_199_254_740_993,
            detail: "answered 410 Gone".into(),
        })
    );
}

#[test]
fn malformed_results_name_the_field() {
    let not_json = parse_list("{\"webhooks\": [").expect_err("truncated");
    assert!(
        not_json.starts_with("the result is not JSON: "),
        "{not_json}"
    );
    let cases = [
        ("[]", "the result is not a JSON object"),
        ("{}", "field `webhooks` is missing"),
        (r#"{"webhooks":{}}"#, "field `webhooks` is not an array"),
        (
            r#"{"webhooks":[1]}"#,
            "field `webhooks[0]` is not an object",
        ),
    ];
    for (result, reason) in cases {
        assert_eq!(parse_list(result).expect_err(result), reason);
    }
    let bad = [
        (json!({ "id": 7 }), "field `webhooks[0].id` is not a string"),
        (json!({ "url": null }), "field `webhooks[0].url` is missing"),
        (
            json!({ "match": "fuzzy" }),
            "field `webhooks[0].match` is \"fuzzy\", not \"exact\" or \"prefix\"",
        ),
        (
            json!({ "source": "api" }),
            "field `webhooks[0].source` is \"api\", not \"config\" or \"runtime\"",
        ),
        (
            json!({ "previous_secret_expires_ms": -1 }),
            "field `webhooks[0].previous_secret_expires_ms` is not an unsigned integer",
        ),
        (
            json!({ "disabled": { "at_ms": 5, "detail": "x" } }),
            "field `webhooks[0].disabled`: `at_ms` is not a decimal string",
        ),
    ];
    for (extra, reason) in bad {
        let result = json!({ "webhooks": [runtime_hook(extra)] }).to_string();
        assert_eq!(parse_list(&result).expect_err(&result), reason);
    }
}

#[test]
fn debug_redacts_secrets() {
    let spec =
        WebhookSpec::new("https://h/x", "ns", "t", WebhookMatch::Exact).with_secret("hunter2");
    let shown = format!("{spec:?}");
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(shown.contains("secret: Some(<redacted>)"), "{shown}");

    let result = json!({ "webhook": runtime_hook(json!({ "secret": "hunter2" })) });
    let hook = parse_one(&result.to_string(), "webhook", true).expect("parses");
    let shown = format!("{hook:?}");
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(shown.contains("secret: Some(<redacted>)"), "{shown}");
    let shown = format!(
        "{:?}",
        Webhook {
            secret: None,
            ..hook
        }
    );
    assert!(shown.contains("secret: None"), "{shown}");
}
