//! HS256 JSON Web Tokens (RFC 7519): signatures and their checks by the
//! `jsonwebtoken` crate (ring's HMAC-SHA256, compared in constant time),
//! with corebus's own rules on top.
//!
//! The signature is checked before the payload is parsed, so an attacker's
//! JSON never reaches the claims parser unless it was signed with one of our
//! secrets. Only `HS256` is accepted: a token naming any other algorithm
//! (`none` included) is refused before any MAC is computed. corebus also
//! refuses what the crate lets through: a header with `crit` extensions
//! (RFC 7515 §4.1.11), duplicate keys anywhere in the header or the payload
//! (two `exp` claims must not mean whichever one a reader keeps), and tokens
//! longer than [`MAX_TOKEN_LEN`]. Expiry and the claims are the caller's
//! (`auth.rs`).

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Validation};

/// The only header corebus writes.
const HEADER_JSON: &str = r#"{"alg":"HS256","typ":"JWT"}"#;

/// Longest token accepted, in bytes; bounds the work an unauthenticated
/// client can ask for (a HELLO can carry up to `max_frame` bytes).
pub const MAX_TOKEN_LEN: usize = 8 << 10;

/// Why a compact JWT was refused before its claims were looked at.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    /// Not three base64url parts, bad base64url, not JSON...
    #[error("malformed token: {0}")]
    Malformed(String),
    /// The header names another algorithm than HS256.
    #[error("unsupported token algorithm {0:?}: only HS256 is accepted")]
    Algorithm(String),
    /// No secret produced this signature.
    #[error("bad token signature")]
    BadSignature,
}

/// Signs `payload_json` with `secret`: `header.payload.signature`. The
/// payload's text is signed as given.
pub fn encode(payload_json: &str, secret: &[u8]) -> String {
    let mut token = base64url_encode(HEADER_JSON.as_bytes());
    token.push('.');
    token.push_str(&base64url_encode(payload_json.as_bytes()));
    let signature = jsonwebtoken::crypto::sign(
        token.as_bytes(),
        &EncodingKey::from_secret(secret),
        Algorithm::HS256,
    )
    .expect("HMAC signing takes any key and cannot fail");
    token.push('.');
    token.push_str(&signature);
    token
}

/// Checks `token`'s form, algorithm and signature against each of `secrets`
/// in turn and returns its payload as JSON. The payload is not interpreted:
/// expiry and claims are the caller's.
pub fn verify<'s>(
    token: &[u8],
    secrets: impl IntoIterator<Item = &'s [u8]>,
) -> Result<serde_json::Map<String, serde_json::Value>, JwtError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(JwtError::Malformed(format!(
            "{} bytes, more than the {MAX_TOKEN_LEN} accepted",
            token.len()
        )));
    }
    let token = std::str::from_utf8(token)
        .map_err(|_| JwtError::Malformed("the token is not text".into()))?;
    let mut parts = token.split('.');
    let (Some(header_part), Some(_payload), Some(_signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Malformed(
            "expected three dot-separated parts".into(),
        ));
    };
    // The header by our rules first: jsonwebtoken reads it into a struct,
    // which lets `crit` and duplicate keys through.
    let header = json_object(header_part.as_bytes(), "header")?;
    match header.get("alg") {
        Some(serde_json::Value::String(alg)) if alg == "HS256" => {}
        Some(serde_json::Value::String(alg)) => return Err(JwtError::Algorithm(alg.clone())),
        _ => return Err(JwtError::Malformed("the header has no `alg`".into())),
    }
    // RFC 7515 §4.1.11: extensions the recipient does not understand must be
    // refused, and corebus understands none.
    if header.contains_key("crit") {
        return Err(JwtError::Malformed(
            "the header has `crit` extensions".into(),
        ));
    }
    let mut validation = Validation::new(Algorithm::HS256);
    // Expiry and the other claims are the caller's, with its own clock.
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    // Every secret is tried, so that the time taken does not say which one
    // matched; the signature is checked before the payload is parsed.
    let mut outcome = Err(JwtError::BadSignature);
    for secret in secrets {
        let decoded =
            jsonwebtoken::decode::<Strict>(token, &DecodingKey::from_secret(secret), &validation);
        let signed = match decoded {
            Ok(data) => match data.claims {
                Strict(serde_json::Value::Object(object)) => Ok(object),
                Strict(_) => Err(JwtError::Malformed("payload: not a JSON object".into())),
            },
            Err(err) => Err(refusal(&err)),
        };
        if matches!(outcome, Err(JwtError::BadSignature)) {
            outcome = signed;
        }
    }
    outcome
}

/// What a failed decode means: [`JwtError::BadSignature`] when the
/// signature did not match (another secret may still).
fn refusal(err: &jsonwebtoken::errors::Error) -> JwtError {
    use jsonwebtoken::errors::ErrorKind;
    match err.kind() {
        ErrorKind::InvalidSignature => JwtError::BadSignature,
        ErrorKind::Json(err) => JwtError::Malformed(format!("payload: {err}")),
        ErrorKind::Base64(err) => JwtError::Malformed(format!("base64url: {err}")),
        ErrorKind::Utf8(err) => JwtError::Malformed(format!("not UTF-8: {err}")),
        other => JwtError::Malformed(format!("{other:?}")),
    }
}

fn json_object(
    part: &[u8],
    what: &str,
) -> Result<serde_json::Map<String, serde_json::Value>, JwtError> {
    let bytes = base64url_decode(part)
        .map_err(|reason| JwtError::Malformed(format!("{what}: {reason}")))?;
    match serde_json::from_slice::<Strict>(&bytes) {
        Ok(Strict(serde_json::Value::Object(object))) => Ok(object),
        Ok(_) => Err(JwtError::Malformed(format!("{what}: not a JSON object"))),
        Err(err) => Err(JwtError::Malformed(format!("{what}: {err}"))),
    }
}

/// A JSON value in which no object names a key twice. serde_json keeps the
/// last of duplicates; RFC 7519 §4 lets a parser refuse them, and corebus
/// does: two `exp` claims must not mean whichever one a reader happens to
/// keep.
struct Strict(serde_json::Value);

impl<'de> serde::Deserialize<'de> for Strict {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(StrictVisitor)
    }
}

struct StrictVisitor;

impl<'de> serde::de::Visitor<'de> for StrictVisitor {
    type Value = Strict;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Strict, E> {
        Ok(Strict(v.into()))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Strict, E> {
        Ok(Strict(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Strict, E> {
        Ok(Strict(v.into()))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Strict, E> {
        Ok(Strict(v.into()))
    }

    fn visit_str<E>(self, v: &str) -> Result<Strict, E> {
        Ok(Strict(v.into()))
    }

    fn visit_string<E>(self, v: String) -> Result<Strict, E> {
        Ok(Strict(v.into()))
    }

    fn visit_unit<E>(self) -> Result<Strict, E> {
        Ok(Strict(serde_json::Value::Null))
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Strict, A::Error> {
        let mut items = Vec::new();
        while let Some(Strict(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Strict(serde_json::Value::Array(items)))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Strict, A::Error> {
        let mut object = serde_json::Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let Strict(value) = map.next_value()?;
            if object.contains_key(&key) {
                return Err(serde::de::Error::custom(format!("duplicate key {key:?}")));
            }
            object.insert(key, value);
        }
        Ok(Strict(serde_json::Value::Object(object)))
    }
}

/// base64url without padding (RFC 4648 §5), as JWTs use it.
pub fn base64url_encode(bytes: &[u8]) -> String {
    data_encoding::BASE64URL_NOPAD.encode(bytes)
}

/// Decodes base64url without padding; refuses padding, other alphabets,
/// impossible lengths and non-zero trailing bits, so every byte string has
/// exactly one accepted encoding.
pub fn base64url_decode(text: &[u8]) -> Result<Vec<u8>, String> {
    data_encoding::BASE64URL_NOPAD
        .decode(text)
        .map_err(|err| err.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use hmac::Mac;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    /// HMAC-SHA256 computed apart from the code under test, for tokens it
    /// would not make.
    fn mac(secret: &[u8], data: &[u8]) -> hmac::Hmac<sha2::Sha256> {
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret).expect("any key length");
        mac.update(data);
        mac
    }

    fn part(json: &str) -> String {
        base64url_encode(json.as_bytes())
    }

    #[test]
    fn base64url_round_trips_and_matches_rfc4648_vectors() {
        let vectors = [
            ("", ""),
            ("f", "Zg"),
            ("fo", "Zm8"),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg"),
            ("fooba", "Zm9vYmE"),
            ("foobar", "Zm9vYmFy"),
        ];
        for (plain, encoded) in vectors {
            assert_eq!(base64url_encode(plain.as_bytes()), encoded);
            assert_eq!(
                base64url_decode(encoded.as_bytes()),
                Ok(plain.as_bytes().to_vec())
            );
        }
        assert_eq!(base64url_encode(&[0xfb, 0xff]), "-_8");
        let all: Vec<u8> = (0..=255).collect();
        for len in 0..all.len() {
            let encoded = base64url_encode(&all[..len]);
            assert_eq!(
                base64url_decode(encoded.as_bytes()),
                Ok(all[..len].to_vec())
            );
        }
    }

    #[test]
    fn base64url_refuses_padding_other_alphabets_and_odd_forms() {
        for bad in ["Zg==", "Zm9+", "Zm9/", "Z", "Zm9vY", "Zh", "Zm9 v"] {
            assert!(base64url_decode(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_token_verifies_with_its_secret_only() {
        let token = encode(r#"{"exp":10}"#, SECRET);
        let payload = verify(token.as_bytes(), [SECRET]).expect("valid");
        assert_eq!(payload.get("exp"), Some(&serde_json::json!(10)));
        let other: &[u8] = b"another secret of enough length!";
        assert_eq!(
            verify(token.as_bytes(), [other]),
            Err(JwtError::BadSignature)
        );
        assert!(
            verify(token.as_bytes(), [other, SECRET]).is_ok(),
            "rotation"
        );
        assert_eq!(
            verify(token.as_bytes(), std::iter::empty::<&[u8]>()),
            Err(JwtError::BadSignature)
        );
    }

    #[test]
    fn a_changed_payload_or_signature_is_refused() {
        let token = encode(r#"{"exp":10,"sub":"alice"}"#, SECRET);
        let parts: Vec<&str> = token.split('.').collect();
        let forged = format!(
            "{}.{}.{}",
            parts[0],
            part(r#"{"exp":99,"sub":"alice"}"#),
            parts[2]
        );
        assert_eq!(
            verify(forged.as_bytes(), [SECRET]),
            Err(JwtError::BadSignature)
        );
        let mut signature = base64url_decode(parts[2].as_bytes()).expect("decodes");
        signature[31] ^= 1;
        let flipped = format!("{}.{}.{}", parts[0], parts[1], base64url_encode(&signature));
        assert_eq!(
            verify(flipped.as_bytes(), [SECRET]),
            Err(JwtError::BadSignature)
        );
        let short = format!(
            "{}.{}.{}",
            parts[0],
            parts[1],
            base64url_encode(&signature[..16])
        );
        assert_eq!(
            verify(short.as_bytes(), [SECRET]),
            Err(JwtError::BadSignature)
        );
    }

    #[test]
    fn other_algorithms_are_refused_before_any_mac() {
        let payload = part(r#"{"exp":10}"#);
        let none = format!("{}.{payload}.", part(r#"{"alg":"none"}"#));
        assert_eq!(
            verify(none.as_bytes(), [SECRET]),
            Err(JwtError::Algorithm("none".into()))
        );
        let rs = format!("{}.{payload}.c2ln", part(r#"{"alg":"RS256"}"#));
        assert_eq!(
            verify(rs.as_bytes(), [SECRET]),
            Err(JwtError::Algorithm("RS256".into()))
        );
        let no_alg = format!("{}.{payload}.c2ln", part(r#"{"typ":"JWT"}"#));
        assert!(matches!(
            verify(no_alg.as_bytes(), [SECRET]),
            Err(JwtError::Malformed(_))
        ));
        let crit = format!("{}.{payload}.c2ln", part(r#"{"alg":"HS256","crit":["x"]}"#));
        assert!(matches!(
            verify(crit.as_bytes(), [SECRET]),
            Err(JwtError::Malformed(_))
        ));
    }

    #[test]
    fn a_token_of_exactly_the_limit_verifies_and_a_longer_one_is_refused() {
        // Padding one character longer lengthens the token by one or two
        // (base64url); two shapes of payload shift where the steps fall, so
        // one lands exactly on the limit.
        let mut exact = false;
        let mut longer = false;
        for field in ["p", "pp"] {
            for pad in MAX_TOKEN_LEN / 2..MAX_TOKEN_LEN {
                let token = encode(&format!(r#"{{"{field}":"{}"}}"#, "x".repeat(pad)), SECRET);
                if token.len() == MAX_TOKEN_LEN {
                    exact = true;
                    assert!(
                        verify(token.as_bytes(), [SECRET]).is_ok(),
                        "exactly the limit"
                    );
                }
                if token.len() > MAX_TOKEN_LEN {
                    longer = true;
                    match verify(token.as_bytes(), [SECRET]) {
                        Err(JwtError::Malformed(reason)) => {
                            assert!(reason.contains("more than"), "{reason}")
                        }
                        other => panic!("{} bytes: {other:?}", token.len()),
                    }
                    break;
                }
            }
        }
        assert!(exact && longer);
    }

    #[test]
    fn malformed_tokens_are_refused_with_a_reason() {
        let header = part(HEADER_JSON);
        // Signed, so that the payload is looked at: it is only after the MAC.
        let signed = |payload: &str| {
            let input = format!("{header}.{payload}");
            let signature = mac(SECRET, input.as_bytes()).finalize().into_bytes();
            format!("{input}.{}", base64url_encode(&signature))
        };
        let cases = [
            "a.b".to_string(),
            "a.b.c.d".to_string(),
            signed("not*base64"),
            signed(&part("{")),
            format!("{}.e30.c2ln", part("not json")),
            format!("{}.e30.c2ln", part("[1,2]")),
            "x".repeat(MAX_TOKEN_LEN + 1),
        ];
        for token in cases {
            assert!(
                matches!(
                    verify(token.as_bytes(), [SECRET]),
                    Err(JwtError::Malformed(_))
                ),
                "{token:.40}"
            );
        }
        // A padded signature is not the one the secret makes (jsonwebtoken
        // compares the signatures' text, in constant time).
        let padded = format!("{header}.e30.c2ln=");
        assert_eq!(
            verify(padded.as_bytes(), [SECRET]),
            Err(JwtError::BadSignature)
        );
        // A signed payload that is not an object is refused too.
        let signed_array = encode("[1]", SECRET);
        assert!(matches!(
            verify(signed_array.as_bytes(), [SECRET]),
            Err(JwtError::Malformed(_))
        ));
    }

    #[test]
    fn duplicate_keys_are_refused_anywhere_in_a_signed_token() {
        for payload in [
            r#"{"exp":1,"perm":[],"exp":99999999999}"#,
            r#"{"exp":99999999999,"perm":[{"ns":"a","ns":"b","topic":"t","pub":true}]}"#,
        ] {
            let token = encode(payload, SECRET);
            match verify(token.as_bytes(), [SECRET]) {
                Err(JwtError::Malformed(reason)) => {
                    assert!(reason.contains("duplicate key"), "{reason}")
                }
                other => panic!("{payload}: {other:?}"),
            }
        }
        let header = part(r#"{"alg":"HS256","alg":"none"}"#);
        let input = format!("{header}.{}", part("{}"));
        let signature = mac(SECRET, input.as_bytes()).finalize().into_bytes();
        let token = format!("{input}.{}", base64url_encode(&signature));
        assert!(matches!(
            verify(token.as_bytes(), [SECRET]),
            Err(JwtError::Malformed(reason)) if reason.contains("duplicate key")
        ));
        // The same values once each are fine, nested and all.
        let fine = encode(
            r#"{"exp":5,"perm":[{"ns":"a","topic":"t"},{"ns":"a"}],"x":[1,2.5,null,true]}"#,
            SECRET,
        );
        let payload = verify(fine.as_bytes(), [SECRET]).expect("valid");
        assert_eq!(payload["perm"][1]["ns"], "a");
        assert_eq!(payload["x"][1], 2.5);
    }

    #[test]
    fn verifies_the_rfc7515_appendix_a1_example() {
        let key = base64url_decode(
            b"AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow",
        )
        .expect("the RFC's key");
        let token = "eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9.\
                     eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ.\
                     dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        let payload = verify(token.as_bytes(), [key.as_slice()]).expect("the RFC's token");
        assert_eq!(payload.get("iss"), Some(&serde_json::json!("joe")));
        assert_eq!(payload.get("exp"), Some(&serde_json::json!(1300819380)));
    }
}
