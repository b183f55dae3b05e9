//! Keys, tokens and their checks: hashes, signatures, time claims and their leeway, lifetimes, sizes, permissions.

use super::*;
use corebus_net::TopicKey;
use corebus_shards::auth::Action;

const NOW_MS: u64 = 1_700_000_000_000;
const NOW: u64 = NOW_MS / 1000;

fn secret(text: &str) -> Secret {
    Secret::new(text.repeat(32).into_bytes()).expect("long enough")
}

fn broker() -> BrokerAuth {
    let key = ApiKey {
        name: "orders".into(),
        sha256: Sha256::digest(b"cbk_orders").into(),
        permissions: Arc::new(Permissions {
            superuser: false,
            rules: vec![make_rule("orders".into(), "eu/".into(), true, true, false).expect("valid")],
            denied: Vec::new(),
        }),
    };
    BrokerAuth::new(
        vec![key],
        Some(TokenSecrets {
            current: secret("n"),
            previous: Some(secret("o")),
        }),
        Duration::from_secs(3600),
    )
}

fn sign(claims: Value, with: &Secret) -> String {
    jwt::encode(&claims.to_string(), with.bytes())
}

fn perm() -> Value {
    json!([{ "ns": "notifications", "topic": "user-123", "sub": true }])
}

fn topic(ns: &str, topic: &str) -> TopicKey {
    TopicKey::from_strs(ns, topic).expect("valid")
}

#[test]
fn open_means_neither_keys_nor_a_token_secret_and_secrets_never_print() {
    let broker = broker();
    assert!(!broker.is_open(), "keys and a secret");
    let keys_only = BrokerAuth {
        secrets: None,
        ..broker.clone()
    };
    assert!(!keys_only.is_open(), "keys alone");
    let secret_only = BrokerAuth {
        keys: Vec::new(),
        ..broker
    };
    assert!(!secret_only.is_open(), "a token secret alone");
    assert!(BrokerAuth::new(Vec::new(), None, Duration::from_secs(60)).is_open());
    let shown = format!("{:?}", secret("n"));
    assert_eq!(shown, "Secret(<redacted>)");
}

#[test]
fn constant_time_eq_compares_every_byte() {
    let zero = [0u8; 32];
    assert!(constant_time_eq(&zero, &zero));
    for index in 0..32 {
        let mut other = zero;
        other[index] = 0x80;
        assert!(!constant_time_eq(&zero, &other), "{index}");
    }
}

#[test]
fn keys_are_found_by_hash_and_unknown_keys_refused() {
    let auth = broker();
    let grant = auth.authenticate(b"cbk_orders", NOW_MS).expect("known");
    assert_eq!(grant.identity, "key:orders");
    assert_eq!(grant.expires_at_ms, None);
    assert!(grant
        .permissions
        .allows(Action::Publish, &topic("orders", "eu/1")));
    assert!(matches!(
        auth.authenticate(b"cbk_order", NOW_MS),
        Err(AuthError::Invalid(_))
    ));
    assert_eq!(
        auth.authenticate(b"", NOW_MS).err(),
        Some(AuthError::Missing)
    );
}

#[test]
fn a_valid_token_grants_its_permissions_until_exp() {
    let auth = broker();
    let token = sign(
        json!({ "exp": NOW + 60, "sub": "u1", "perm": perm() }),
        &secret("n"),
    );
    let grant = auth.authenticate(token.as_bytes(), NOW_MS).expect("valid");
    assert_eq!(grant.identity, "token:u1");
    assert_eq!(grant.expires_at_ms, Some((NOW + 60) * 1000));
    let allowed = topic("notifications", "user-123");
    assert!(grant.permissions.allows(Action::Subscribe, &allowed));
    assert!(!grant.permissions.allows(Action::Publish, &allowed));
    assert!(!grant.permissions.superuser);
}

#[test]
fn the_previous_secret_verifies_but_unknown_ones_do_not() {
    let auth = broker();
    let old = sign(json!({ "exp": NOW + 60, "perm": perm() }), &secret("o"));
    assert!(auth.authenticate(old.as_bytes(), NOW_MS).is_ok());
    let foreign = sign(json!({ "exp": NOW + 60, "perm": perm() }), &secret("x"));
    assert!(matches!(
        auth.authenticate(foreign.as_bytes(), NOW_MS),
        Err(AuthError::Invalid(reason)) if reason.contains("signature")
    ));
}

#[test]
fn time_claims_are_enforced() {
    let auth = broker();
    let check = |claims: Value| auth.authenticate(sign(claims, &secret("n")).as_bytes(), NOW_MS);
    assert_eq!(
        check(json!({ "exp": NOW, "perm": perm() })).err(),
        Some(AuthError::Expired {
            expired_at_unix: NOW
        })
    );
    assert!(matches!(
        check(json!({ "perm": perm() })),
        Err(AuthError::Invalid(reason)) if reason.contains("exp")
    ));
    assert!(matches!(
        check(json!({ "exp": "soon", "perm": perm() })),
        Err(AuthError::Invalid(_))
    ));
    // A negative date is no date (not the Unix epoch, which has expired).
    assert!(matches!(
        check(json!({ "exp": -1.5, "perm": perm() })),
        Err(AuthError::Invalid(reason)) if reason.contains("not a date")
    ));
    assert_eq!(
        check(json!({ "exp": NOW + 60, "nbf": NOW + 30, "perm": perm() })).err(),
        Some(AuthError::NotYetValid {
            not_before_unix: NOW + 30
        })
    );
    assert!(check(json!({ "exp": NOW + 60, "nbf": NOW + 2, "perm": perm() })).is_ok());
    assert!(matches!(
        check(json!({ "exp": NOW + 3601, "perm": perm() })),
        Err(AuthError::Invalid(reason)) if reason.contains("token_max_lifetime")
    ));
    // Issued long ago for too long: refused even though little is left.
    assert!(matches!(
        check(json!({ "exp": NOW + 10, "iat": NOW - 7200, "perm": perm() })),
        Err(AuthError::Invalid(reason)) if reason.contains("lifetime")
    ));
    assert!(matches!(
        check(json!({ "exp": NOW + 100, "iat": NOW + 50, "perm": perm() })),
        Err(AuthError::Invalid(reason)) if reason.contains("future")
    ));
    assert!(check(json!({ "exp": NOW as f64 + 60.5, "iat": NOW, "perm": perm() })).is_ok());
    // The leeway's edges: a clock up to CLOCK_LEEWAY_SECS fast is
    // forgiven, one second more is not.
    let edge = NOW + CLOCK_LEEWAY_SECS;
    assert!(check(json!({ "exp": NOW + 60, "nbf": edge, "perm": perm() })).is_ok());
    assert_eq!(
        check(json!({ "exp": NOW + 60, "nbf": edge + 1, "perm": perm() })).err(),
        Some(AuthError::NotYetValid {
            not_before_unix: edge + 1
        })
    );
    assert!(check(json!({ "exp": NOW + 60, "iat": edge, "perm": perm() })).is_ok());
    assert!(matches!(
        check(json!({ "exp": NOW + 60, "iat": edge + 1, "perm": perm() })),
        Err(AuthError::Invalid(reason)) if reason.contains("future")
    ));
}

#[test]
fn a_token_of_exactly_the_hello_limit_is_minted_and_one_byte_more_is_not() {
    let auth = broker();
    // Subjects one character longer each time lengthen the token by one
    // or two characters (base64url); two lengths of the rule's topic
    // shift where the steps fall, so some subject lands exactly on the
    // limit.
    let mut exact = false;
    let mut over = false;
    for topic in ["eu/", "eu/x"] {
        let rules = [make_rule("orders".into(), topic.into(), true, true, false).expect("valid")];
        for length in 1..jwt::MAX_TOKEN_LEN {
            let subject = "s".repeat(length);
            match auth.mint_token(Some(&subject), &rules, 60, NOW_MS) {
                Ok(token) => {
                    assert!(token.len() <= jwt::MAX_TOKEN_LEN, "{}", token.len());
                    exact |= token.len() == jwt::MAX_TOKEN_LEN;
                }
                Err(AuthError::CannotMint(reason)) => {
                    assert!(reason.contains("HELLO"), "{reason}");
                    over = true;
                    break;
                }
                Err(other) => panic!("{other:?}"),
            }
        }
    }
    assert!(exact, "a token of exactly {} bytes", jwt::MAX_TOKEN_LEN);
    assert!(over, "longer ones are refused");
}

#[test]
fn malformed_permissions_are_refused() {
    let auth = broker();
    let check = |perm: Value| {
        auth.authenticate(
            sign(json!({ "exp": NOW + 60, "perm": perm }), &secret("n")).as_bytes(),
            NOW_MS,
        )
    };
    for bad in [
        json!({}),
        json!([1]),
        json!([{ "ns": "a", "topic": "b" }]),
        json!([{ "ns": "a", "topic": "b", "pub": "yes" }]),
        json!([{ "ns": "a", "topic": "b", "publish": true }]),
        json!([{ "ns": "", "topic": "b", "pub": true }]),
        json!([{ "ns": "a", "topic": "b\n", "pub": true }]),
        json!([{ "ns": "a", "pub": true }]),
    ] {
        assert!(
            matches!(check(bad.clone()), Err(AuthError::Invalid(_))),
            "{bad}"
        );
    }
    let all_topics = json!([{ "ns": "a", "topic": "", "prefix": true, "sub": true }]);
    assert!(check(all_topics).is_ok());
}

#[test]
fn minting_signs_with_the_current_secret_and_caps_the_lifetime() {
    let auth = broker();
    let claims = json!({ "sub": "u1", "perm": perm() }).to_string();
    let token = auth.mint(&claims, 999_999, NOW_MS).expect("mints");
    let payload = jwt::verify(token.as_bytes(), [secret("n").bytes()]).expect("current");
    assert_eq!(payload.get("exp"), Some(&json!(NOW + 3600)));
    assert_eq!(payload.get("iat"), Some(&json!(NOW)));
    let grant = auth
        .authenticate(token.as_bytes(), NOW_MS)
        .expect("accepted");
    assert_eq!(grant.identity, "token:u1");
    for (claims, ttl) in [
        ("[]", 60),
        ("{", 60),
        (r#"{"perm":[]}"#, 60),
        (
            r#"{"exp":1,"perm":[{"ns":"a","topic":"b","pub":true}]}"#,
            60,
        ),
        (r#"{"perm":[{"ns":"a","topic":"b","pub":true}]}"#, 0),
    ] {
        assert!(
            matches!(
                auth.mint(claims, ttl, NOW_MS),
                Err(AuthError::CannotMint(_))
            ),
            "{claims}"
        );
    }
    // A token HELLO would refuse for its size is never minted.
    let many: Vec<Value> = (0..200)
        .map(|n| json!({ "ns": "tenant", "topic": format!("orders/region-{n}/"), "pub": true, "sub": true }))
        .collect();
    let claims_big = json!({ "sub": "u1", "perm": many }).to_string();
    match auth.mint(&claims_big, 60, NOW_MS) {
        Err(AuthError::CannotMint(reason)) => assert!(reason.contains("HELLO"), "{reason}"),
        other => panic!(
            "a token over {} bytes was minted: {other:?}",
            jwt::MAX_TOKEN_LEN
        ),
    }
    let keys_only = BrokerAuth::new(Vec::new(), None, Duration::from_secs(60));
    assert!(keys_only.is_open());
    assert!(matches!(
        keys_only.mint(&claims, 60, NOW_MS),
        Err(AuthError::CannotMint(_))
    ));
    assert!(matches!(
        keys_only.authenticate(token.as_bytes(), NOW_MS),
        Err(AuthError::Invalid(_))
    ));
}

#[test]
fn debug_output_holds_no_secret() {
    let text = format!("{:?}", broker());
    assert!(!text.contains("nnnn") && !text.contains("oooo"), "{text}");
    assert!(text.contains("orders"));
}

#[test]
fn keys_hash_and_generate() {
    assert_eq!(
        key_hash_hex("test"),
        "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
    );
    let parsed = parse_sha256_hex(&key_hash_hex("test").to_uppercase()).expect("hex");
    assert_eq!(parsed, <[u8; 32]>::from(Sha256::digest(b"test")));
    assert!(parse_sha256_hex("abc").is_err());
    assert!(parse_sha256_hex(&"g".repeat(64)).is_err());
    let first = generate_key().expect("urandom");
    let second = generate_key().expect("urandom");
    assert!(first.starts_with(KEY_PREFIX) && first.len() == KEY_PREFIX.len() + 43);
    assert_ne!(first, second);
    assert!(!first.contains('.'));
}
