//! Namespace and topic names, and the key that identifies a topic.

use bytes::Bytes;

use crate::{MAX_NAMESPACE_LEN, MAX_TOPIC_LEN};

/// Why a namespace or topic name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The name is empty.
    #[error("{kind} name is empty")]
    Empty {
        /// `namespace` or `topic`.
        kind: &'static str,
    },
    /// The name is longer than its limit.
    #[error("{kind} name is {len} bytes long; the limit is {max}")]
    TooLong {
        /// `namespace` or `topic`.
        kind: &'static str,
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The name is not valid UTF-8.
    #[error("{kind} name is not valid UTF-8 (at byte {offset})")]
    NotUtf8 {
        /// `namespace` or `topic`.
        kind: &'static str,
        /// Offset of the first invalid byte.
        offset: usize,
    },
    /// A wildcard segment (`*` or `>`) where it is not allowed: `>` before
    /// the last segment of a pattern, or any wildcard in the topic of a
    /// publish (a message goes to one topic).
    #[error("{reason}")]
    Wildcard {
        /// What is wrong, for the error text.
        reason: &'static str,
    },
    /// The name contains an ASCII control character.
    #[error("{kind} name contains control character 0x{byte:02x} at byte {offset}")]
    ControlCharacter {
        /// `namespace` or `topic`.
        kind: &'static str,
        /// The character.
        byte: u8,
        /// Its offset.
        offset: usize,
    },
}

fn validate(kind: &'static str, name: &[u8], max: usize) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty { kind });
    }
    if name.len() > max {
        return Err(NameError::TooLong {
            kind,
            len: name.len(),
            max,
        });
    }
    // Printable ASCII, the usual case, is valid as it is: one pass over the
    // bytes instead of two.
    if name.iter().all(|b| (0x20..0x7f).contains(b)) {
        return Ok(());
    }
    // Control characters are refused so that names are always safe to print in
    // logs, metrics labels and the CLI's line-oriented output.
    if let Some(offset) = name.iter().position(|b| *b < 0x20 || *b == 0x7f) {
        return Err(NameError::ControlCharacter {
            kind,
            byte: name[offset],
            offset,
        });
    }
    std::str::from_utf8(name).map_err(|err| NameError::NotUtf8 {
        kind,
        offset: err.valid_up_to(),
    })?;
    Ok(())
}

/// Checks a namespace: 1 to [`MAX_NAMESPACE_LEN`] bytes of UTF-8, no ASCII
/// control characters (0x00-0x1f, 0x7f).
pub fn validate_namespace(name: &[u8]) -> Result<(), NameError> {
    validate("namespace", name, MAX_NAMESPACE_LEN)
}

/// Checks a topic: 1 to [`MAX_TOPIC_LEN`] bytes of UTF-8, no ASCII control
/// characters (0x00-0x1f, 0x7f). A topic may be a pattern (see
/// [`is_pattern`]); then `>` may only be its last segment.
pub fn validate_topic(name: &[u8]) -> Result<(), NameError> {
    validate("topic", name, MAX_TOPIC_LEN)?;
    if is_pattern(name) {
        let mut segments = name.split(|b| *b == b'/').peekable();
        while let Some(segment) = segments.next() {
            if segment == b">" && segments.peek().is_some() {
                return Err(NameError::Wildcard {
                    reason: "`>` may only be the last segment of a pattern",
                });
            }
        }
    }
    Ok(())
}

/// True when a topic name is a pattern: one of its `/`-separated segments
/// is exactly `*` (any one segment) or `>` (one or more trailing
/// segments). `*` and `>` inside a longer segment are ordinary characters.
pub fn is_pattern(topic: &[u8]) -> bool {
    // Most names hold neither character: one pass, then the segments only
    // for the rest.
    topic.iter().any(|b| *b == b'*' || *b == b'>')
        && topic
            .split(|b| *b == b'/')
            .any(|segment| segment == b"*" || segment == b">")
}

/// Whether `topic` (a concrete name) matches `pattern` (see [`is_pattern`];
/// a concrete pattern matches itself only).
pub fn pattern_matches(pattern: &[u8], topic: &[u8]) -> bool {
    let mut topic = topic.split(|b| *b == b'/');
    for want in pattern.split(|b| *b == b'/') {
        match (want, topic.next()) {
            (b">", Some(_)) => return true,
            (b"*", Some(_)) => {}
            (want, Some(have)) if want == have => {}
            _ => return false,
        }
    }
    topic.next().is_none()
}

/// The part of a pattern before its first wildcard segment (the whole name
/// for a concrete topic): every topic the pattern matches starts with it.
pub fn literal_prefix(pattern: &[u8]) -> &[u8] {
    let mut at = 0;
    for segment in pattern.split(|b| *b == b'/') {
        if segment == b"*" || segment == b">" {
            return &pattern[..at];
        }
        at += segment.len() + 1;
    }
    pattern
}

/// A topic's identity: (namespace, topic), both validated.
///
/// The key is one refcounted slice holding both names as a frame carries
/// them, `namespace ‖ u16 topic length ‖ topic` (usually a slice of that
/// frame), so cloning a key is one refcount increment and never copies the
/// names, and comparing two keys is one comparison of bytes.
///
/// The key's stable hash ([`TopicKey::stable_hash`]) is computed once, when
/// the key is built: it routes the topic to its owner and is what `Hash`
/// feeds to hash maps, so a message's topic is hashed once on its whole path
/// through a broker.
#[derive(Clone)]
pub struct TopicKey {
    /// `namespace ‖ topic length (u16, big-endian) ‖ topic`.
    raw: Bytes,
    /// Length of the namespace at the start of `raw`.
    ns_len: u8,
    hash: u64,
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

fn fnv1a(mut hash: u64, bytes: &[u8]) -> u64 {
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(FNV_PRIME);
    }
    hash
}

/// The stable 64-bit hash of a (namespace, topic) pair: FNV-1a 64 over
/// `len(namespace) as u8 ‖ namespace ‖ topic` (the routing key hash that
/// `docs/architecture.md` specifies; it must never change).
pub fn key_hash(namespace: &[u8], topic: &[u8]) -> u64 {
    // Namespaces are validated to at most 128 bytes; saturate rather than wrap
    // so even an unvalidated caller cannot alias two keys through the prefix.
    let len = u8::try_from(namespace.len()).unwrap_or(u8::MAX);
    fnv1a(fnv1a(fnv1a(FNV_OFFSET, &[len]), namespace), topic)
}

impl PartialEq for TopicKey {
    fn eq(&self, other: &TopicKey) -> bool {
        // Equal `raw` with equal namespace lengths is equal names.
        self.hash == other.hash && self.ns_len == other.ns_len && self.raw == other.raw
    }
}

impl Eq for TopicKey {}

impl std::hash::Hash for TopicKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

impl PartialOrd for TopicKey {
    fn partial_cmp(&self, other: &TopicKey) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for TopicKey {
    /// By namespace, then topic (the hash plays no part).
    fn cmp(&self, other: &TopicKey) -> std::cmp::Ordering {
        (self.namespace_bytes(), self.topic_bytes())
            .cmp(&(other.namespace_bytes(), other.topic_bytes()))
    }
}

impl TopicKey {
    /// Builds a key from names that pass [`validate_namespace`] and
    /// [`validate_topic`], copying them into one allocation.
    pub fn new(namespace: &[u8], topic: &[u8]) -> Result<TopicKey, NameError> {
        validate_namespace(namespace)?;
        validate_topic(topic)?;
        let mut raw = Vec::with_capacity(namespace.len() + 2 + topic.len());
        raw.extend_from_slice(namespace);
        raw.extend_from_slice(&(topic.len() as u16).to_be_bytes());
        raw.extend_from_slice(topic);
        Ok(TopicKey {
            ns_len: namespace.len() as u8,
            hash: key_hash(namespace, topic),
            raw: Bytes::from(raw),
        })
    }

    /// Builds a key from `raw` as a frame carries it after the namespace's
    /// length byte: `namespace` (`ns_len` bytes), the topic's length as a
    /// big-endian `u16`, then the topic (the rest of `raw`). No copy: the
    /// key is `raw` itself.
    pub fn from_wire(raw: Bytes, ns_len: usize) -> Result<TopicKey, NameError> {
        let namespace = raw.get(..ns_len).unwrap_or_default();
        validate_namespace(namespace)?;
        let topic = raw.get(ns_len + 2..).unwrap_or_default();
        let declared = raw
            .get(ns_len..ns_len + 2)
            .map(|len| u16::from_be_bytes([len[0], len[1]]) as usize);
        // The decoder cut `raw` by the declared length; anything else is a
        // caller's bug, refused as an empty topic would be.
        if declared != Some(topic.len()) {
            return Err(NameError::Empty { kind: "topic" });
        }
        validate_topic(topic)?;
        let hash = key_hash(namespace, topic);
        Ok(TopicKey {
            ns_len: ns_len as u8,
            hash,
            raw,
        })
    }

    /// A key from `raw` laid out as for [`TopicKey::from_wire`], known to be
    /// valid with hash `hash` (bytes equal to a key built before).
    pub(crate) fn prevalidated(raw: Bytes, ns_len: usize, hash: u64) -> TopicKey {
        TopicKey {
            raw,
            ns_len: ns_len as u8,
            hash,
        }
    }

    /// `namespace ‖ u16 topic length ‖ topic`, as on the wire.
    pub fn wire_bytes(&self) -> &[u8] {
        &self.raw
    }

    /// The same key in one allocation of its own. Keys decoded from a frame
    /// are slices of the connection's read buffer: a key kept for long (in
    /// a topic table) would keep that whole buffer alive, and every clone
    /// sent to another core would touch the buffer's shared refcount.
    pub fn compact(&self) -> TopicKey {
        TopicKey {
            raw: Bytes::copy_from_slice(&self.raw),
            ns_len: self.ns_len,
            hash: self.hash,
        }
    }

    /// The stable hash of this (namespace, topic), see [`key_hash`].
    pub fn stable_hash(&self) -> u64 {
        self.hash
    }

    /// Builds a key from string slices, copying them.
    pub fn from_strs(namespace: &str, topic: &str) -> Result<TopicKey, NameError> {
        TopicKey::new(namespace.as_bytes(), topic.as_bytes())
    }

    /// The namespace as bytes (valid UTF-8).
    pub fn namespace_bytes(&self) -> &[u8] {
        &self.raw[..usize::from(self.ns_len)]
    }

    /// The topic as bytes (valid UTF-8).
    pub fn topic_bytes(&self) -> &[u8] {
        &self.raw[usize::from(self.ns_len) + 2..]
    }

    /// The namespace.
    pub fn namespace(&self) -> &str {
        // Validated in `new`, the only constructor; a failure here is a bug.
        std::str::from_utf8(self.namespace_bytes()).unwrap_or("<invalid>")
    }

    /// The topic.
    pub fn topic(&self) -> &str {
        std::str::from_utf8(self.topic_bytes()).unwrap_or("<invalid>")
    }

    /// Whether the topic is a pattern ([`is_pattern`]).
    pub fn is_pattern(&self) -> bool {
        is_pattern(self.topic_bytes())
    }
}

impl std::fmt::Debug for TopicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace(), self.topic())
    }
}

impl std::fmt::Display for TopicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace(), self.topic())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_equal_and_hash_alike_exactly_when_their_names_are() {
        use std::hash::{BuildHasher, RandomState};
        let hasher = RandomState::new();
        let key = |ns: &str, topic: &str| TopicKey::from_strs(ns, topic).expect("valid");
        assert_eq!(key("app", "news"), key("app", "news"));
        assert_eq!(
            hasher.hash_one(key("app", "news")),
            hasher.hash_one(key("app", "news").compact())
        );
        // The same bytes split differently are different keys.
        assert_ne!(key("ab", "c"), key("a", "bc"));
        assert_ne!(key("app", "news"), key("app", "newt"));
        assert_ne!(key("app", "news"), key("apq", "news"));
        assert_ne!(
            hasher.hash_one(key("app", "news")),
            hasher.hash_one(key("app", "newt"))
        );
    }

    #[test]
    fn keys_with_one_hash_are_still_told_apart_by_their_names() {
        // A 64-bit hash can collide; equality must not rest on it. Forge a
        // collision: other bytes, or the same bytes split otherwise, under
        // the very same hash.
        let key = TopicKey::from_strs("app", "news").expect("valid");
        let hash = key.stable_hash();
        let other = TopicKey::from_strs("app", "newt").expect("valid");
        let forged = TopicKey::prevalidated(other.raw.clone(), 3, hash);
        assert_ne!(key, forged, "other names under one hash");
        let resplit = TopicKey::prevalidated(key.raw.clone(), 2, hash);
        assert_ne!(key, resplit, "the same bytes with another namespace length");
        assert_eq!(key, TopicKey::prevalidated(key.raw.clone(), 3, hash));
    }

    #[test]
    fn compact_keys_own_their_bytes() {
        let frame = Bytes::from_static(b"....orders\x00\x05/eu/1....");
        let key = TopicKey::from_wire(frame.slice(4..17), 6).expect("valid");
        assert_eq!(key, TopicKey::from_strs("orders", "/eu/1").expect("valid"));
        let compact = key.compact();
        assert_eq!(compact, key);
        assert_eq!(compact.stable_hash(), key.stable_hash());
        assert_eq!((compact.namespace(), compact.topic()), ("orders", "/eu/1"));
        let inside = |bytes: &[u8]| frame.as_ptr_range().contains(&bytes.as_ptr());
        assert!(inside(key.namespace_bytes()));
        assert!(!inside(compact.namespace_bytes()) && !inside(compact.topic_bytes()));
    }

    #[test]
    fn the_key_hash_is_fnv1a_64_with_a_length_prefix() {
        assert_eq!(fnv1a(FNV_OFFSET, b""), 0xcbf29ce484222325);
        assert_eq!(fnv1a(FNV_OFFSET, b"a"), 0xaf63dc4c8601ec8c);
        assert_eq!(fnv1a(FNV_OFFSET, b"foobar"), 0x85944171f73967e8);
        assert_ne!(key_hash(b"ab", b"c"), key_hash(b"a", b"bc"));
        let key = TopicKey::from_strs("ab", "c").expect("valid");
        assert_eq!(key.stable_hash(), key_hash(b"ab", b"c"));
        let same = TopicKey::from_strs("ab", "c").expect("valid");
        let other = TopicKey::from_strs("a", "bc").expect("valid");
        assert_eq!(key, same);
        assert_ne!(key, other);
        assert!(other < key, "ordered by namespace, then topic");
    }

    /// The pattern grammar (docs/protocol.md, section 4): `*` one segment,
    /// `>` one or more trailing segments, and only whole segments are
    /// wildcards.
    #[test]
    fn patterns_match_whole_segments() {
        let cases: &[(&str, &str, bool)] = &[
            ("orders/*", "orders/eu", true),
            ("orders/*", "orders/eu/1", false),
            ("orders/*", "orders", false),
            ("orders/*", "orders/", true),
            ("orders/>", "orders/eu", true),
            ("orders/>", "orders/eu/1/x", true),
            ("orders/>", "orders", false),
            ("*/created", "eu/created", true),
            ("*/created", "eu/deleted", false),
            ("*/*/x", "a/b/x", true),
            (">", "anything/at/all", true),
            ("*", "one", true),
            ("*", "one/two", false),
            ("orders/eu*", "orders/eu*", true),
            ("orders/eu*", "orders/eu1", false),
            ("a/b", "a/b", true),
        ];
        for (pattern, topic, expected) in cases {
            assert_eq!(
                pattern_matches(pattern.as_bytes(), topic.as_bytes()),
                *expected,
                "{pattern} against {topic}"
            );
        }
        assert!(is_pattern(b"orders/*") && is_pattern(b">") && is_pattern(b"*/x"));
        assert!(!is_pattern(b"orders/eu*") && !is_pattern(b"a>b/c") && !is_pattern(b"orders"));
        assert_eq!(literal_prefix(b"orders/eu/*"), b"orders/eu/");
        assert_eq!(literal_prefix(b"orders/*/x/>"), b"orders/");
        assert_eq!(literal_prefix(b"*/x"), b"");
        assert_eq!(literal_prefix(b"plain/topic"), b"plain/topic");
        assert!(validate_topic(b"orders/>").is_ok());
        assert!(matches!(
            validate_topic(b"orders/>/x"),
            Err(NameError::Wildcard { .. })
        ));
    }

    #[test]
    fn accepts_ordinary_names() {
        assert!(TopicKey::from_strs("orders", "eu/created.v1").is_ok());
        assert!(TopicKey::from_strs("ünïcode", "トピック").is_ok());
    }

    #[test]
    fn refuses_bad_names() {
        assert_eq!(
            validate_namespace(b""),
            Err(NameError::Empty { kind: "namespace" })
        );
        assert!(matches!(
            validate_topic(&vec![b'a'; MAX_TOPIC_LEN + 1]),
            Err(NameError::TooLong { len, .. }) if len == MAX_TOPIC_LEN + 1
        ));
        assert!(validate_topic(&vec![b'a'; MAX_TOPIC_LEN]).is_ok());
        assert!(matches!(
            validate_topic(b"a\nb"),
            Err(NameError::ControlCharacter {
                byte: b'\n',
                offset: 1,
                ..
            })
        ));
        assert!(matches!(
            validate_namespace(b"ab\xff"),
            Err(NameError::NotUtf8 { offset: 2, .. })
        ));
    }
}
