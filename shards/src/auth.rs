//! Authentication and authorization as the engine sees them.
//!
//! The engine does not know about keys, tokens or configuration files: at the
//! handshake it hands the client's credentials to an [`Authenticator`] (the
//! broker's implementation checks API keys and signed tokens) and keeps the
//! resulting [`Grant`] with the connection. Every publish and subscribe is then
//! checked against the grant's [`Permissions`], and a grant that expires closes
//! its connection.

use std::sync::Arc;

use corebus_net::TopicKey;

/// What a request wants to do with a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Publish to it.
    Publish,
    /// Subscribe to it.
    Subscribe,
}

impl Action {
    /// `publish` or `subscribe`, for error texts.
    pub fn name(self) -> &'static str {
        match self {
            Action::Publish => "publish",
            Action::Subscribe => "subscribe",
        }
    }
}

/// Which topics of a namespace a rule covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicPattern {
    /// Exactly this topic.
    Exact(String),
    /// Every topic starting with this prefix (the empty prefix: all topics).
    Prefix(String),
}

impl TopicPattern {
    /// True when `topic` is covered.
    pub fn matches(&self, topic: &str) -> bool {
        self.matches_bytes(topic.as_bytes())
    }

    fn matches_bytes(&self, topic: &[u8]) -> bool {
        match self {
            TopicPattern::Exact(exact) => exact.as_bytes() == topic,
            TopicPattern::Prefix(prefix) => topic.starts_with(prefix.as_bytes()),
        }
    }
}

impl Rule {
    /// Whether the rule covers `action` on `topic`; for a `pattern`, on
    /// every topic it can match: a prefix rule whose prefix the pattern's
    /// literal part (what comes before its first wildcard) starts with.
    fn applies(&self, action: Action, topic: &TopicKey, pattern: bool) -> bool {
        let action_ok = match action {
            Action::Publish => self.publish,
            Action::Subscribe => self.subscribe,
        };
        // Byte comparisons: names are validated UTF-8 already.
        action_ok
            && self.namespace.as_bytes() == topic.namespace_bytes()
            && match (&self.topic, pattern) {
                (rule_topic, false) => rule_topic.matches_bytes(topic.topic_bytes()),
                (TopicPattern::Prefix(prefix), true) => {
                    corebus_net::literal_prefix(topic.topic_bytes()).starts_with(prefix.as_bytes())
                }
                (TopicPattern::Exact(_), true) => false,
            }
    }
}

/// One permission: actions on topics of one namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// The namespace (exact).
    pub namespace: String,
    /// The topics.
    pub topic: TopicPattern,
    /// May publish.
    pub publish: bool,
    /// May subscribe.
    pub subscribe: bool,
}

/// Everything a connection may do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Permissions {
    /// May do anything, including minting tokens.
    pub superuser: bool,
    /// Fine-grained rules (ignored for a super-user).
    pub rules: Vec<Rule>,
    /// Rules that take away what `rules` give (the anonymous rule set's
    /// `deny`): a topic one of them covers is refused, whatever `rules`
    /// say. Ignored for a super-user.
    pub denied: Vec<Rule>,
}

impl Permissions {
    /// Unrestricted (a super-user; also what an open broker grants).
    pub fn all() -> Permissions {
        Permissions {
            superuser: true,
            rules: Vec::new(),
            denied: Vec::new(),
        }
    }

    /// True when some rule allows `action` on `topic`. A pattern
    /// (`orders/*`) is allowed when one rule covers every topic it can
    /// match: a prefix rule whose prefix the pattern's literal part (what
    /// comes before its first wildcard) starts with. So a pattern never
    /// reaches beyond what the rules name: `*` and `>` match whole segments
    /// after that literal part, and an exact-topic rule covers no pattern.
    ///
    /// A denial refuses a topic it covers, and a pattern when it covers
    /// every topic the pattern can match (the pattern's literal part starts
    /// with a denied prefix); a pattern that matches denied topics and
    /// others is allowed, and [`Permissions::may_receive`] then keeps the
    /// denied ones from its subscriber.
    pub fn allows(&self, action: Action, topic: &TopicKey) -> bool {
        if self.superuser {
            return true;
        }
        let pattern = topic.is_pattern();
        !self
            .denied
            .iter()
            .any(|rule| rule.applies(action, topic, pattern))
            && self
                .rules
                .iter()
                .any(|rule| rule.applies(action, topic, pattern))
    }

    /// Whether a pattern subscription may be handed the message of
    /// `topic`: false for a topic a denial covers (the pattern was
    /// allowed for the others it matches). One comparison without denials.
    pub fn may_receive(&self, topic: &TopicKey) -> bool {
        self.denied.is_empty() || self.superuser || self.allows(Action::Subscribe, topic)
    }
}

/// The outcome of a successful authentication.
#[derive(Debug, Clone)]
pub struct Grant {
    /// Who this is (key name or token subject), for logs.
    pub identity: String,
    /// What the connection may do.
    pub permissions: Arc<Permissions>,
    /// When the grant ends (Unix milliseconds); the connection is closed then.
    pub expires_at_ms: Option<u64>,
    /// Set when the connection is another node of the cluster (its link
    /// credentials checked by [`crate::cluster::NodeMap::verify_peer`]):
    /// that node's client address. It is served as the owner of the topics
    /// it names, without the per-connection bounds a client has (the node
    /// that forwards enforces those on its clients).
    pub peer: Option<std::net::SocketAddr>,
}

/// Why credentials were refused (the text goes to the client).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No credentials, and the broker requires them.
    #[error("this broker requires credentials (an API key or a token) in HELLO")]
    Missing,
    /// Unknown key, bad signature, malformed token...
    #[error("invalid credentials: {0}")]
    Invalid(String),
    /// The token's `exp` has passed.
    #[error("the token expired at {expired_at_unix} (Unix seconds)")]
    Expired {
        /// Its expiry.
        expired_at_unix: u64,
    },
    /// The token's `nbf` is in the future.
    #[error("the token is not valid before {not_before_unix} (Unix seconds)")]
    NotYetValid {
        /// Its start.
        not_before_unix: u64,
    },
    /// A token request the broker cannot satisfy.
    #[error("cannot mint a token: {0}")]
    CannotMint(String),
}

/// Turns handshake credentials into a grant, and mints tokens. Implemented by
/// the broker; shared by every shard, so it must be `Send + Sync`.
/// `Debug` is required so shard state can be printed; implementations must
/// not print secrets.
pub trait Authenticator: std::fmt::Debug + Send + Sync + 'static {
    /// Checks `credentials` (empty when the client sent none) at `now_ms`
    /// (Unix milliseconds).
    fn authenticate(&self, credentials: &[u8], now_ms: u64) -> Result<Grant, AuthError>;

    /// Mints a token for the claims a super-user asked for.
    fn mint(&self, claims_json: &str, ttl_secs: u32, now_ms: u64) -> Result<String, AuthError> {
        let _ = (claims_json, ttl_secs, now_ms);
        Err(AuthError::CannotMint(
            "this broker has no token signing secret".into(),
        ))
    }
}

/// No authentication: every connection may do everything (development only;
/// the broker refuses to run this way on a non-loopback address).
#[derive(Debug, Default)]
pub struct OpenAccess;

impl Authenticator for OpenAccess {
    fn authenticate(&self, _credentials: &[u8], _now_ms: u64) -> Result<Grant, AuthError> {
        Ok(Grant {
            identity: "anonymous".into(),
            permissions: Arc::new(Permissions::all()),
            expires_at_ms: None,
            peer: None,
        })
    }
}

/// The current Unix time in milliseconds.
pub fn unix_now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(ns: &str, topic: &str) -> TopicKey {
        TopicKey::from_strs(ns, topic).expect("valid")
    }

    #[test]
    fn rules_match_namespace_topic_and_action() {
        let permissions = Permissions {
            superuser: false,
            rules: vec![
                Rule {
                    namespace: "notifications".into(),
                    topic: TopicPattern::Exact("user-123".into()),
                    publish: false,
                    subscribe: true,
                },
                Rule {
                    namespace: "orders".into(),
                    topic: TopicPattern::Prefix("eu/".into()),
                    publish: true,
                    subscribe: false,
                },
            ],
            denied: Vec::new(),
        };
        let sub = Action::Subscribe;
        let publish = Action::Publish;
        assert!(permissions.allows(sub, &key("notifications", "user-123")));
        assert!(!permissions.allows(publish, &key("notifications", "user-123")));
        assert!(!permissions.allows(sub, &key("notifications", "user-1234")));
        assert!(!permissions.allows(sub, &key("other", "user-123")));
        assert!(permissions.allows(publish, &key("orders", "eu/created")));
        assert!(!permissions.allows(publish, &key("orders", "us/created")));
        assert!(!permissions.allows(sub, &key("orders", "eu/created")));
        assert!(Permissions::all().allows(publish, &key("any", "thing")));
        assert!(!Permissions::default().allows(sub, &key("any", "thing")));
    }

    /// A pattern is allowed only where every topic it can match is: a
    /// pattern never widens a grant.
    #[test]
    fn a_pattern_stays_inside_the_prefix_it_is_granted() {
        let rule = |topic: TopicPattern| Permissions {
            superuser: false,
            rules: vec![Rule {
                namespace: "orders".into(),
                topic,
                publish: false,
                subscribe: true,
            }],
            denied: Vec::new(),
        };
        let eu = rule(TopicPattern::Prefix("eu/".into()));
        let sub = Action::Subscribe;
        for allowed in ["eu/*", "eu/>", "eu/fr/*", "eu/*/created"] {
            assert!(
                eu.allows(sub, &key("orders", allowed)),
                "{allowed} is inside eu/"
            );
        }
        for refused in ["*", ">", "*/created", "e*/x", "eu", "us/*"] {
            let topic = key("orders", refused);
            assert!(
                !eu.allows(sub, &topic) || !topic.is_pattern(),
                "{refused} reaches beyond eu/"
            );
        }
        // `eu` without its slash would let `*` match `eu-secret/x`'s
        // neighbours: the literal part must start with the prefix.
        let bare = rule(TopicPattern::Prefix("eu".into()));
        assert!(bare.allows(sub, &key("orders", "eu/*")));
        assert!(!bare.allows(sub, &key("orders", "*/x")));
        let exact = rule(TopicPattern::Exact("eu/1".into()));
        assert!(
            !exact.allows(sub, &key("orders", "eu/*")),
            "an exact rule covers no pattern"
        );
        assert!(exact.allows(sub, &key("orders", "eu/1")));
        assert!(!eu.allows(sub, &key("other", "eu/*")), "another namespace");
        // A prefix that ends in what looks like a wildcard is literal text:
        // the pattern `eu/*` (any `eu/…`) is not inside the prefix `eu/*`
        // (topics starting with those four characters).
        let starred = rule(TopicPattern::Prefix("eu/*".into()));
        assert!(!starred.allows(sub, &key("orders", "eu/*")));
        assert!(!starred.allows(sub, &key("orders", "eu/>")));
        assert!(
            starred.allows(sub, &key("orders", "eu/*x")),
            "a concrete topic"
        );
        let all = rule(TopicPattern::Prefix(String::new()));
        assert!(
            all.allows(sub, &key("orders", ">")),
            "the empty prefix covers everything"
        );
    }

    #[test]
    fn a_denial_refuses_what_it_covers_and_hides_it_from_wider_patterns() {
        let rule = |topic: TopicPattern, publish, subscribe| Rule {
            namespace: "mqtt".into(),
            topic,
            publish,
            subscribe,
        };
        let anonymous = Permissions {
            superuser: false,
            rules: vec![rule(TopicPattern::Prefix(String::new()), true, true)],
            denied: vec![
                rule(TopicPattern::Exact("test/nosubscribe".into()), false, true),
                rule(TopicPattern::Prefix("admin/".into()), true, true),
            ],
        };
        let (sub, publish) = (Action::Subscribe, Action::Publish);
        assert!(!anonymous.allows(sub, &key("mqtt", "test/nosubscribe")));
        assert!(
            anonymous.allows(publish, &key("mqtt", "test/nosubscribe")),
            "the denial is for subscribing only"
        );
        assert!(anonymous.allows(sub, &key("mqtt", "test/other")));
        assert!(!anonymous.allows(publish, &key("mqtt", "admin/users")));
        // A pattern all of whose topics are denied is refused; one that
        // matches denied topics and others is allowed, and may not receive
        // the denied ones.
        assert!(!anonymous.allows(sub, &key("mqtt", "admin/*")));
        assert!(anonymous.allows(sub, &key("mqtt", ">")));
        assert!(anonymous.allows(sub, &key("mqtt", "test/*")));
        assert!(!anonymous.may_receive(&key("mqtt", "test/nosubscribe")));
        assert!(!anonymous.may_receive(&key("mqtt", "admin/users")));
        assert!(anonymous.may_receive(&key("mqtt", "test/other")));
        assert!(Permissions::all().may_receive(&key("mqtt", "admin/users")));
    }
}
