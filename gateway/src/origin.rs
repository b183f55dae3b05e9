//! Which web pages may open a connection: the `Origin` allow-list.
//!
//! A browser names the page that opens a WebSocket or an `EventSource` in the
//! `Origin` header, and the page cannot change it; a token alone would let any
//! site that obtained one (or a user's own page, reused elsewhere) connect.
//! The broker admits a request when it has no `Origin` (not a browser: the
//! native tools, `curl`), when its origin is the broker's own (same-origin:
//! a page the broker's address served), or when the origin is on the list.
//! Comparisons are exact after ASCII lower-casing, as browsers serialise
//! origins in lower case: no wildcards, no prefixes.

/// A configured origin that is not `http[s]://host[:port]`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("allowed origin {origin:?}: {reason} (write it as a browser sends it, e.g. https://app.example.com or http://localhost:8080)")]
pub struct OriginError {
    /// The value as configured.
    pub origin: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// The origins a browser connection may come from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Origins {
    allowed: Vec<String>,
}

impl Origins {
    /// An allow-list of exact origins, each `http://` or `https://` followed
    /// by a host and an optional port, with no path.
    pub fn new<S: AsRef<str>>(allowed: &[S]) -> Result<Origins, OriginError> {
        let mut list = Vec::with_capacity(allowed.len());
        for origin in allowed {
            let origin = origin.as_ref();
            let error = |reason| OriginError {
                origin: origin.to_owned(),
                reason,
            };
            let rest = origin
                .strip_prefix("https://")
                .or_else(|| origin.strip_prefix("http://"))
                .ok_or_else(|| error("it must start with http:// or https://"))?;
            if rest.is_empty() {
                return Err(error("it has no host"));
            }
            if rest.contains('/') {
                return Err(error("an origin has no path, not even a trailing /"));
            }
            if rest.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(error("it contains spaces or control characters"));
            }
            list.push(origin.to_ascii_lowercase());
        }
        Ok(Origins { allowed: list })
    }

    /// The configured origins, lower-cased.
    pub fn allowed(&self) -> &[String] {
        &self.allowed
    }

    /// Whether a request with this `Origin` (if any), sent to this `Host`,
    /// over TLS or not, may open a connection.
    pub fn admits(&self, origin: Option<&str>, host: Option<&str>, tls: bool) -> bool {
        let Some(origin) = origin else {
            return true;
        };
        let origin = origin.trim();
        if self
            .allowed
            .iter()
            .any(|allowed| allowed.eq_ignore_ascii_case(origin))
        {
            return true;
        }
        // Same-origin: the page came from this very address and scheme.
        let scheme = if tls { "https://" } else { "http://" };
        match (origin.get(..scheme.len()), host) {
            (Some(prefix), Some(host)) if prefix.eq_ignore_ascii_case(scheme) => {
                origin[scheme.len()..].eq_ignore_ascii_case(host.trim())
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listed_origins_are_admitted_exactly_and_others_refused() {
        let origins = Origins::new(&["https://App.example.com", "http://localhost:8080"]).unwrap();
        assert!(origins.admits(Some("https://app.example.com"), Some("bus:443"), true));
        assert!(origins.admits(Some("http://localhost:8080"), Some("bus"), false));
        for refused in [
            "https://app.example.com.evil.net",
            "https://evil.example.com",
            "http://app.example.com",
            "http://localhost:8081",
            "null",
            "",
        ] {
            assert!(
                !origins.admits(Some(refused), Some("bus:7401"), false),
                "{refused}"
            );
        }
    }

    #[test]
    fn no_origin_is_a_non_browser_client_and_same_origin_needs_the_same_scheme() {
        let none = Origins::default();
        assert!(none.admits(None, None, false));
        assert!(none.admits(Some("http://127.0.0.1:7401"), Some("127.0.0.1:7401"), false));
        assert!(!none.admits(
            Some("https://127.0.0.1:7401"),
            Some("127.0.0.1:7401"),
            false
        ));
        assert!(none.admits(Some("https://bus.example"), Some("bus.example"), true));
        assert!(!none.admits(Some("http://127.0.0.1:7402"), Some("127.0.0.1:7401"), false));
        assert!(!none.admits(Some("http://127.0.0.1:7401"), None, false));
    }

    #[test]
    fn malformed_origins_are_refused_with_the_reason() {
        for (origin, reason) in [
            ("app.example.com", "it must start with http:// or https://"),
            ("https://", "it has no host"),
            (
                "https://app.example.com/",
                "an origin has no path, not even a trailing /",
            ),
            (
                "https://app example",
                "it contains spaces or control characters",
            ),
        ] {
            let err = Origins::new(&[origin]).unwrap_err();
            assert_eq!(err.reason, reason, "{origin}");
            assert!(err.to_string().contains(origin));
        }
    }
}
