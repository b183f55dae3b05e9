//! Credentials of the links between nodes: what a node says in the `HELLO`
//! of its connection to another node's client listener, so that the other
//! node serves it as a peer (the owner of what it asks for) and nobody else.
//!
//! ```text
//! cbpeer1.<node>.<unix ms>.<tag>
//! key = HMAC-SHA256(cluster secret, "corebus/link/v1")
//! tag = hex of the first 16 bytes of HMAC-SHA256(key, "cbpeer1.<node>.<unix ms>")
//! ```
//!
//! `<node>` is the sender's advertised client address: the receiving node
//! hands topics over to that address. A credential is accepted within
//! [`REPLAY_WINDOW_MS`] of its time, so the clocks of the nodes must agree
//! that closely; on a network where others can read the links' traffic (no
//! TLS), a copied credential works for that long.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::envelope::{WeakSecret, MIN_SECRET_LEN, REPLAY_WINDOW_MS};

type HmacSha256 = Hmac<Sha256>;

const PREFIX: &str = "cbpeer1.";
const TAG_LEN: usize = 16;

/// The key that signs and checks link credentials.
#[derive(Clone)]
pub struct LinkKey {
    mac: HmacSha256,
}

impl std::fmt::Debug for LinkKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LinkKey(..)")
    }
}

impl LinkKey {
    /// The key of the cluster whose secret is `secret`.
    pub fn new(secret: &[u8]) -> Result<LinkKey, WeakSecret> {
        if secret.len() < MIN_SECRET_LEN {
            return Err(WeakSecret { len: secret.len() });
        }
        let mut kdf = HmacSha256::new_from_slice(secret).expect("HMAC takes any key length");
        kdf.update(b"corebus/link/v1");
        let key = kdf.finalize().into_bytes();
        Ok(LinkKey {
            mac: HmacSha256::new_from_slice(&key).expect("HMAC takes any key length"),
        })
    }

    fn tag(&self, signed: &str) -> String {
        let mut mac = self.mac.clone();
        mac.update(signed.as_bytes());
        data_encoding::HEXLOWER.encode(&mac.finalize().into_bytes()[..TAG_LEN])
    }

    /// A fingerprint of `bytes` under the cluster secret: nodes compare
    /// their configurations by it without showing them (32 hex digits; a
    /// domain of its own, so it is never valid credentials).
    pub fn fingerprint(&self, bytes: &[u8]) -> String {
        let mut mac = self.mac.clone();
        mac.update(b"cbconfig1.");
        mac.update(bytes);
        data_encoding::HEXLOWER.encode(&mac.finalize().into_bytes()[..TAG_LEN])
    }

    /// The credentials of node `node` at `now_ms` (Unix milliseconds).
    pub fn credentials(&self, node: &str, now_ms: u64) -> String {
        let signed = format!("{PREFIX}{node}.{now_ms}");
        let tag = self.tag(&signed);
        format!("{signed}.{tag}")
    }

    /// The node named by `credentials`, if they are this cluster's and
    /// were made within the replay window of `now_ms`.
    pub fn verify(&self, credentials: &[u8], now_ms: u64) -> Result<String, String> {
        let text = std::str::from_utf8(credentials)
            .map_err(|_| "link credentials are not text".to_string())?;
        let rest = text
            .strip_prefix(PREFIX)
            .ok_or_else(|| "not link credentials".to_string())?;
        let (signed_rest, tag) = rest
            .rsplit_once('.')
            .ok_or_else(|| "malformed link credentials".to_string())?;
        let (node, sent) = signed_rest
            .rsplit_once('.')
            .ok_or_else(|| "malformed link credentials".to_string())?;
        let sent_ms: u64 = sent
            .parse()
            .map_err(|_| "malformed link credentials".to_string())?;
        let expected = self.tag(&format!("{PREFIX}{signed_rest}"));
        // Compared in constant time (the length is no secret).
        let same: bool = subtle::ConstantTimeEq::ct_eq(expected.as_bytes(), tag.as_bytes()).into();
        if !same {
            return Err("link credentials of another cluster secret, or forged".into());
        }
        let skew = now_ms.abs_diff(sent_ms);
        if skew > REPLAY_WINDOW_MS {
            return Err(format!(
                "link credentials {skew} ms away from this node's clock (at most {REPLAY_WINDOW_MS})"
            ));
        }
        Ok(node.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"cluster-secret-0123456789abcdef-0123";
    const NOW: u64 = 1_800_000_000_000;

    #[test]
    fn credentials_verify_with_the_same_secret_only_and_only_in_time() {
        let key = LinkKey::new(SECRET).expect("long enough");
        let credentials = key.credentials("127.0.0.2:7500", NOW);
        assert!(credentials.starts_with("cbpeer1.127.0.0.2:7500."));
        assert_eq!(
            key.verify(credentials.as_bytes(), NOW + 1_000),
            Ok("127.0.0.2:7500".to_string())
        );
        let other = LinkKey::new(b"another-secret-0123456789abcdef-0123").expect("long enough");
        assert!(other.verify(credentials.as_bytes(), NOW).is_err());
        let stale = key.verify(credentials.as_bytes(), NOW + REPLAY_WINDOW_MS + 1);
        assert!(stale.unwrap_err().contains("ms away"));
        // Another node name under the same tag does not verify.
        let forged = credentials.replace("127.0.0.2", "127.0.0.3");
        assert!(key.verify(forged.as_bytes(), NOW).is_err());
        for bad in ["", "cbpeer1.", "cbpeer1.x.y.z", "key:abc", "cbpeer1.n.12"] {
            assert!(key.verify(bad.as_bytes(), NOW).is_err(), "{bad:?}");
        }
        assert!(key.verify(&[0xff, 0xfe], NOW).is_err());
    }

    #[test]
    fn a_short_secret_is_refused() {
        assert!(LinkKey::new(b"short").is_err());
    }
}
