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
    /// What a client without credentials may do (the `[anonymous]` rule
    /// set); `None`: it is refused.
    anonymous: Option<Arc<Permissions>>,
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
            anonymous: None,
        }
    }

    /// Lets clients without credentials do what `anonymous` allows.
    pub fn with_anonymous(mut self, anonymous: Option<Arc<Permissions>>) -> BrokerAuth {
        self.anonymous = anonymous;
        self
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
                denied: Vec::new(),
            }),
            expires_at_ms: Some(expires.saturating_mul(1000)),
            peer: None,
        })
    }
}

impl Authenticator for BrokerAuth {
    fn authenticate(&self, credentials: &[u8], now_ms: u64) -> Result<Grant, AuthError> {
        if credentials.is_empty() {
            return match &self.anonymous {
                Some(permissions) => Ok(Grant {
                    identity: "anonymous".into(),
                    permissions: permissions.clone(),
                    expires_at_ms: None,
                    peer: None,
                }),
                None => Err(AuthError::Missing),
            };
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
mod tests;
