//! The registry's commands against a data directory: add, list, rotate, remove, persist, and the refusals.

use std::path::Path;

use corebus_net::TopicKey;

use super::*;

fn registry(dir: &Path, allow: &str) -> Registry {
    Registry::new(
        Vec::new(),
        Some(Store::new(dir.to_path_buf())),
        RegistryPolicy {
            allow: AllowList::parse(allow).expect("valid"),
            networks: NetworkPolicy::parse("127.0.0.0/8").expect("valid"),
            rotation_grace: Duration::from_secs(60),
        },
    )
    .expect("registry")
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("corebus-registry-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn reply(registry: &Registry, command: Value) -> Result<Value, WebhookCommandError> {
    registry
        .command(&command.to_string())
        .map(|text| serde_json::from_str(&text).expect("replies are JSON"))
}

#[test]
fn commands_add_list_rotate_remove_and_persist() {
    let dir = temp_dir("cycle");
    let first = registry(&dir, "");
    assert_eq!(first.generation(), 0);
    let added = reply(
        &first,
        json!({"op":"add","url":"http://127.0.0.1:9/hook","namespace":"app","topic":"orders/","match":"prefix"}),
    )
    .expect("added");
    let id = added["webhook"]["id"].as_str().expect("id").to_string();
    let secret = added["webhook"]["secret"]
        .as_str()
        .expect("secret")
        .to_string();
    assert!(secret.starts_with("whsec_") && secret.len() > 40);
    assert_eq!(first.generation(), 1);
    let listed = reply(&first, json!({"op":"list"})).expect("listed");
    assert_eq!(listed["webhooks"][0]["id"], json!(id));
    assert!(
        listed["webhooks"][0].get("secret").is_none(),
        "list shows no secret"
    );

    let rotated = reply(&first, json!({"op":"rotate","id":id})).expect("rotated");
    let new_secret = rotated["webhook"]["secret"].as_str().expect("secret");
    assert_ne!(new_secret, secret);
    // A second rotation within the grace would cut the first secret off.
    match reply(&first, json!({"op":"rotate","id":id})) {
        Err(WebhookCommandError::Invalid(reason)) => {
            assert!(reason.contains("previous secret still signs"), "{reason}")
        }
        other => panic!("second rotation: {other:?}"),
    }
    let hook = first.snapshot()[0].clone();
    let now = unix_now_ms();
    assert_eq!(
        hook.secrets().signing(now),
        vec![new_secret.to_string(), secret.clone()]
    );
    assert_eq!(
        hook.secrets().signing(now + 61_000),
        vec![new_secret.to_string()]
    );

    // A second registry over the same directory sees the same webhook.
    let second = registry(&dir, "");
    let again = second.snapshot();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].secrets().current, new_secret);
    assert!(again[0].matches(&TopicKey::from_strs("app", "orders/1").expect("valid")));
    assert!(!again[0].matches(&TopicKey::from_strs("app", "other").expect("valid")));

    reply(&second, json!({"op":"remove","id":id})).expect("removed");
    assert!(registry(&dir, "").snapshot().is_empty());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_rotation_that_cannot_be_stored_changes_nothing() {
    let dir = temp_dir("unwritable");
    let registry = registry(&dir, "");
    let added = reply(
        &registry,
        json!({"op":"add","url":"http://127.0.0.1:9/","namespace":"a","topic":"t"}),
    )
    .expect("added");
    let id = added["webhook"]["id"].as_str().expect("id");
    let secret = added["webhook"]["secret"].as_str().expect("secret");
    // The data directory becomes a file: the next write fails.
    std::fs::remove_dir_all(&dir).expect("removes");
    std::fs::write(&dir, b"not a directory").expect("writes");
    let refused = reply(&registry, json!({"op":"rotate","id":id}));
    assert!(
        matches!(refused, Err(WebhookCommandError::Internal(_))),
        "{refused:?}"
    );
    let hook = registry.snapshot()[0].clone();
    assert_eq!(
        hook.secrets().signing(unix_now_ms()),
        vec![secret.to_string()]
    );
    let _ = std::fs::remove_file(&dir);
}

#[test]
fn bad_commands_are_refused_with_reasons() {
    let dir = temp_dir("refusals");
    let registry = registry(&dir, "hooks.example.com");
    let refused = |command: Value, expect: &str| match reply(&registry, command.clone()) {
        Err(WebhookCommandError::Invalid(reason)) => {
            assert!(reason.contains(expect), "{command}: {reason}")
        }
        other => panic!("{command}: {other:?}"),
    };
    refused(
        json!({"op":"add","url":"http://evil.org/","namespace":"a","topic":"t"}),
        "not in webhook_allow_hosts",
    );
    refused(
        json!({"op":"add","url":"ftp://hooks.example.com/","namespace":"a","topic":"t"}),
        "not an http",
    );
    refused(
        json!({"op":"add","url":"https://hooks.example.com/","namespace":"a","topic":"t","secret":"short"}),
        "at least",
    );
    refused(
        json!({"op":"add","url":"https://hooks.example.com/","namespace":"a","topic":"t","bogus":1}),
        "unknown field",
    );
    refused(json!({"op":"remove","id":"nope"}), "no webhook");
    refused(json!({"op":"fly"}), "unknown op");
    refused(json!(["list"]), "JSON object");
    assert!(matches!(
        registry.command("{"),
        Err(WebhookCommandError::Invalid(_))
    ));
    assert!(registry.snapshot().is_empty());
    assert_eq!(registry.generation(), 0, "refusals change nothing");
    let _ = std::fs::remove_dir_all(&dir);
}
