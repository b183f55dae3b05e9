//! The broker's [`Authenticator`]: API keys known by their SHA-256 hash, and
//! HS256 tokens (JWTs) signed with the configured secret.
//!
//! Credentials with two dots are a token (base64url has no dots, so a key
//! never does); anything else is looked up as a key. What a connection may
//! do afterwards is the engine's business: it checks every publish and
//! subscribe against the [`Grant`] returned here.

use std::sync::Arc;
use std::time::Duration;

use corebus_shards::auth::{AuthError, Rule};
use corebus_shards::{Authenticator, Grant, Permissions};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use crate::jwt;
pub use crate::permissions::make_rule;
use crate::permissions::{parse_perm, rule_json};

/// A token's `iat` or `nbf` may be this far ahead of our clock (the minting
/// host's clock may run a little fast). `exp` gets no leeway.
pub const CLOCK_LEEWAY_SECS: u64 = 5;

/// Shortest signing secret accepted: HS256 wants 256 bits of key.
pub const MIN_SECRET_LEN: usize = 32;

/// Prefix of generated keys, so that a leaked one is recognisable.
pub const KEY_PREFIX: &str = "cbk_";

/// A token signing secret. Its `Debug` output is redacted.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl Secret {
    /// Wraps a secret of at least [`MIN_SECRET_LEN`] bytes.
    pub fn new(bytes: Vec<u8>) -> Result<Secret, String> {
        if bytes.len() < MIN_SECRET_LEN {
            return Err(format!(
                "the secret is {} bytes long; at least {MIN_SECRET_LEN} are required \
                 (e.g. `corebus key generate` output)",
                bytes.len()
            ));
        }
        Ok(Secret(bytes))
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// The secret tokens are signed with, and the one before it, still accepted
/// for verification while a rotation is under way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenSecrets {
    /// Signs and verifies.
    pub current: Secret,
    /// Verifies only.
    pub previous: Option<Secret>,
}

/// One configured API key.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey {
    /// Its name, for logs and errors.
    pub name: String,
    /// SHA-256 of the key text.
    pub sha256: [u8; 32],
    /// What it may do.
    pub permissions: Arc<Permissions>,
}

impl std::fmt::Debug for ApiKey {
    // The hash is not the key, but there is no reason to spread it either.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKey")
            .field("name", &self.name)
            .field("permissions", &self.permissions)
            .finish_non_exhaustive()
    }
}

/// Keys and tokens, as configured.
#[derive(Debug, Clone)]
pub struct BrokerAuth {
    keys: Vec<ApiKey>,
    secrets: Option<TokenSecrets>,
    max_lifetime_secs: u64,
}

impl BrokerAuth {
    /// An authenticator for these keys and secrets; tokens may live at most
    /// `max_lifetime`.
    pub fn new(
        keys: Vec<ApiKey>,
        secrets: Option<TokenSecrets>,
        max_lifetime: Duration,
    ) -> BrokerAuth {
        BrokerAuth {
            keys,
            secrets,
            max_lifetime_secs: max_lifetime.as_secs(),
        }
    }

    /// True with neither keys nor a token secret: nobody could authenticate,
    /// so the broker either runs open or not at all.
    pub fn is_open(&self) -> bool {
        self.keys.is_empty() && self.secrets.is_none()
    }

    /// Signs a token granting `rules` to `subject` for `ttl_secs` from
    /// `now_ms`. Refuses a lifetime above the maximum, no rules, and a broker
    /// without a secret.
    pub fn mint_token(
        &self,
        subject: Option<&str>,
        rules: &[Rule],
        ttl_secs: u64,
        now_ms: u64,
    ) -> Result<String, AuthError> {
        let Some(secrets) = &self.secrets else {
            return Err(AuthError::CannotMint(
                "no token_secret is configured".into(),
            ));
        };
        if rules.is_empty() {
            return Err(AuthError::CannotMint(
                "the token would grant nothing: give at least one permission".into(),
            ));
        }
        if ttl_secs == 0 || ttl_secs > self.max_lifetime_secs {
            return Err(AuthError::CannotMint(format!(
                "a lifetime of {ttl_secs} s is not between 1 s and token_max_lifetime ({} s)",
                self.max_lifetime_secs
            )));
        }
        let issued_at = now_ms / 1000;
        let mut claims = Map::new();
        claims.insert("iat".into(), json!(issued_at));
        claims.insert("exp".into(), json!(issued_at + ttl_secs));
        if let Some(subject) = subject {
            claims.insert("sub".into(), json!(subject));
        }
        claims.insert("perm".into(), rules.iter().map(rule_json).collect());
        let token = jwt::encode(&Value::Object(claims).to_string(), secrets.current.bytes());
        // Never hand out a token that HELLO would then refuse.
        if token.len() > jwt::MAX_TOKEN_LEN {
            return Err(AuthError::CannotMint(format!(
                "the token would be {} bytes, more than the {} a HELLO may carry: \
                 grant fewer permissions, or shorter names and patterns",
                token.len(),
                jwt::MAX_TOKEN_LEN
            )));
        }
        Ok(token)
    }

    fn authenticate_key(&self, key: &[u8]) -> Result<Grant, AuthError> {
        let digest: [u8; 32] = Sha256::digest(key).into();
        // Every key is compared, in constant time, whatever matched before:
        // the time taken says nothing about which key (if any) was close.
        let mut found = None;
        for candidate in &self.keys {
            if constant_time_eq(&digest, &candidate.sha256) {
                found = Some(candidate);
            }
        }
        let key = found.ok_or_else(|| AuthError::Invalid("unknown API key".into()))?;
        Ok(Grant {
            identity: format!("key:{}", key.name),
            permissions: key.permissions.clone(),
            expires_at_ms: None,
            peer: None,
        })
    }

    fn authenticate_token(&self, token: &[u8], now_ms: u64) -> Result<Grant, AuthError> {
        let Some(secrets) = &self.secrets else {
            return Err(AuthError::Invalid(
                "this broker accepts no tokens (no token_secret is configured)".into(),
            ));
        };
        let candidates = std::iter::once(secrets.current.bytes())
            .chain(secrets.previous.as_ref().map(Secret::bytes));
        let payload =
            jwt::verify(token, candidates).map_err(|err| AuthError::Invalid(err.to_string()))?;
        let now = now_ms / 1000;
        let expires = numeric_date(&payload, "exp")?
            .ok_or_else(|| AuthError::Invalid("the token has no `exp` claim".into()))?;
        if now_ms >= expires.saturating_mul(1000) {
            return Err(AuthError::Expired {
                expired_at_unix: expires,
            });
        }
        if let Some(not_before) = numeric_date(&payload, "nbf")? {
            if not_before > now + CLOCK_LEEWAY_SECS {
                return Err(AuthError::NotYetValid {
                    not_before_unix: not_before,
                });
            }
        }
        let issued_at = numeric_date(&payload, "iat")?;
        if let Some(issued_at) = issued_at {
            if issued_at > now + CLOCK_LEEWAY_SECS {
                return Err(AuthError::Invalid(format!(
                    "the token is issued in the future (iat {issued_at}, now {now})"
                )));
            }
        }
        let lifetime = expires.saturating_sub(issued_at.unwrap_or(now));
        if lifetime > self.max_lifetime_secs {
            return Err(AuthError::Invalid(format!(
                "the token's lifetime of {lifetime} s exceeds token_max_lifetime ({} s)",
                self.max_lifetime_secs
            )));
        }
        let subject = match payload.get("sub") {
            None => None,
            Some(Value::String(subject)) => Some(subject.as_str()),
            Some(_) => return Err(AuthError::Invalid("`sub` is not a string".into())),
        };
        let rules = match payload.get("perm") {
            None => Vec::new(),
            Some(perm) => parse_perm(perm).map_err(AuthError::Invalid)?,
        };
        Ok(Grant {
            identity: format!("token:{}", subject.unwrap_or("-")),
            permissions: Arc::new(Permissions {
                superuser: false,
                rules,
            }),
            expires_at_ms: Some(expires.saturating_mul(1000)),
            peer: None,
        })
    }
}

impl Authenticator for BrokerAuth {
    fn authenticate(&self, credentials: &[u8], now_ms: u64) -> Result<Grant, AuthError> {
        if credentials.is_empty() {
            return Err(AuthError::Missing);
        }
        if credentials.iter().filter(|byte| **byte == b'.').count() == 2 {
            self.authenticate_token(credentials, now_ms)
        } else {
            self.authenticate_key(credentials)
        }
    }

    fn mint(&self, claims_json: &str, ttl_secs: u32, now_ms: u64) -> Result<String, AuthError> {
        let claims: Map<String, Value> = match serde_json::from_str(claims_json) {
            Ok(Value::Object(claims)) => claims,
            Ok(_) => {
                return Err(AuthError::CannotMint(
                    "the claims are not a JSON object".into(),
                ))
            }
            Err(err) => return Err(AuthError::CannotMint(format!("the claims: {err}"))),
        };
        if let Some(other) = claims.keys().find(|key| *key != "sub" && *key != "perm") {
            return Err(AuthError::CannotMint(format!(
                "unexpected claim `{other}`: only `sub` and `perm` may be requested \
                 (the broker sets iat and exp)"
            )));
        }
        let subject = match claims.get("sub") {
            None => None,
            Some(Value::String(subject)) => Some(subject.as_str()),
            Some(_) => return Err(AuthError::CannotMint("`sub` is not a string".into())),
        };
        let rules = match claims.get("perm") {
            Some(perm) => parse_perm(perm).map_err(AuthError::CannotMint)?,
            None => Vec::new(),
        };
        let ttl_secs = u64::from(ttl_secs).min(self.max_lifetime_secs);
        self.mint_token(subject, &rules, ttl_secs, now_ms)
    }
}

/// Compares two digests without an early exit: the time taken does not
/// depend on where they first differ.
pub fn constant_time_eq(left: &[u8; 32], right: &[u8; 32]) -> bool {
    use subtle::ConstantTimeEq;
    left.ct_eq(right).into()
}

/// A NumericDate claim (RFC 7519 §2: seconds, possibly fractional).
fn numeric_date(claims: &Map<String, Value>, name: &str) -> Result<Option<u64>, AuthError> {
    let Some(value) = claims.get(name) else {
        return Ok(None);
    };
    value
        .as_u64()
        .or_else(|| {
            value
                .as_f64()
                .filter(|seconds| seconds.is_finite() && *seconds >= 0.0)
                .map(|seconds| seconds as u64)
        })
        .map(Some)
        .ok_or_else(|| AuthError::Invalid(format!("`{name}` is not a date in Unix seconds")))
}

/// SHA-256 of a key's text, in lower-case hex: what the configuration holds.
pub fn key_hash_hex(key: &str) -> String {
    data_encoding::HEXLOWER.encode(&Sha256::digest(key.as_bytes()))
}

/// Parses 64 hex digits (either case).
pub fn parse_sha256_hex(text: &str) -> Result<[u8; 32], String> {
    if text.len() != 64 {
        return Err(format!(
            "expected 64 hex digits (a SHA-256), found {} characters",
            text.len()
        ));
    }
    let bytes = data_encoding::HEXLOWER_PERMISSIVE
        .decode(text.as_bytes())
        .map_err(|err| format!("not hex: {err}"))?;
    <[u8; 32]>::try_from(bytes).map_err(|_| "expected 32 bytes".to_string())
}

/// `N` bytes from the kernel's CSPRNG.
pub fn random_bytes<const N: usize>() -> std::io::Result<[u8; N]> {
    let mut random = [0u8; N];
    getrandom::fill(&mut random).map_err(std::io::Error::other)?;
    Ok(random)
}

/// A new random key: `cbk_` and 32 bytes from the kernel's CSPRNG, base64url.
pub fn generate_key() -> std::io::Result<String> {
    Ok(format!(
        "{KEY_PREFIX}{}",
        jwt::base64url_encode(&random_bytes::<32>()?)
    ))
}

#[cfg(test)]
mod tests {
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
                rules: vec![
                    make_rule("orders".into(), "eu/".into(), true, true, false).expect("valid")
                ],
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
        let check =
            |claims: Value| auth.authenticate(sign(claims, &secret("n")).as_bytes(), NOW_MS);
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
            let rules =
                [make_rule("orders".into(), topic.into(), true, true, false).expect("valid")];
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
}
