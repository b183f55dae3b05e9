//! Webhook destinations: the `http`/`https` URLs corebus posts to, and the
//! host allow-list they must pass.

use std::fmt;

/// `http` or `https`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// Plain HTTP.
    Http,
    /// HTTP over TLS.
    Https,
}

/// A parsed destination URL. Only what a POST needs: no user info, no
/// fragment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    /// `http` or `https`.
    pub scheme: Scheme,
    /// Host name or IP address (IPv6 without brackets), lower case.
    pub host: String,
    /// Port (80 / 443 when the URL names none).
    pub port: u16,
    /// Path and query, starting with `/`.
    pub path: String,
    /// The URL as given.
    pub text: String,
}

impl Destination {
    /// Parses an absolute `http://` or `https://` URL with the `url` crate
    /// (the WHATWG URL standard, as browsers parse): the host comes out
    /// normalized (lower case, IDNA, numeric IPv4 forms such as `0x7f.1` as
    /// the address they mean), so the allow-lists judge exactly the host
    /// that is then resolved and connected to.
    pub fn parse(text: &str) -> Result<Destination, String> {
        if text.len() > 2048 {
            return Err("URL is longer than 2048 bytes".into());
        }
        // The standard strips or rewrites these silently; a webhook URL
        // with them is a mistake worth saying.
        if text
            .chars()
            .any(|c| c.is_ascii_control() || c == ' ' || c == '\\')
        {
            return Err(format!(
                "{text:?} contains spaces, backslashes or control characters"
            ));
        }
        let url = url::Url::parse(text).map_err(|err| format!("{text:?} is not a URL: {err}"))?;
        let scheme = match url.scheme() {
            "http" => Scheme::Http,
            "https" => Scheme::Https,
            _ => return Err(format!("{text:?} is not an http:// or https:// URL")),
        };
        // The standard reads `http:///path` as the host `path`, and
        // `http:host` as `http://host`: a webhook URL says `//host`.
        let after_scheme = &text[url.scheme().len()..];
        if !after_scheme.starts_with("://") || after_scheme[3..].starts_with('/') {
            return Err(format!("{text:?} names no host"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(
                "the URL carries user information (user:password@); webhooks are authenticated by their signature"
                    .into(),
            );
        }
        let host = match url.host() {
            Some(url::Host::Domain(name)) => name.to_string(),
            Some(url::Host::Ipv4(address)) => address.to_string(),
            Some(url::Host::Ipv6(address)) => address.to_string(),
            None => return Err(format!("{text:?} names no host")),
        };
        let port = match url.port_or_known_default() {
            Some(port) if port != 0 => port,
            _ => return Err(format!("the port in {text:?} is not a port number")),
        };
        let mut path = url.path().to_string();
        if let Some(query) = url.query() {
            path.push('?');
            path.push_str(query);
        }
        Ok(Destination {
            scheme,
            host,
            port,
            path,
            text: text.to_string(),
        })
    }

    /// `scheme://host[:port]`: what logs and error texts show, since a
    /// receiver's path or query may hold a credential of its own.
    pub fn origin(&self) -> String {
        let scheme = match self.scheme {
            Scheme::Http => "http",
            Scheme::Https => "https",
        };
        format!("{scheme}://{}", self.host_header())
    }

    /// The `Host` header's value.
    pub fn host_header(&self) -> String {
        let default = match self.scheme {
            Scheme::Http => 80,
            Scheme::Https => 443,
        };
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        if self.port == default {
            host
        } else {
            format!("{host}:{}", self.port)
        }
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// What a host name or IP address (IPv6 without brackets) is made of.
fn is_host_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '_')
}

/// The hosts webhooks may post to. Empty: any host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList {
    entries: Vec<String>,
}

impl AllowList {
    /// Parses a comma-separated list of host names, IP addresses and
    /// `*.domain` wildcards (which match any subdomain, not the domain
    /// itself). Empty text allows every host.
    pub fn parse(text: &str) -> Result<AllowList, String> {
        let mut entries = Vec::new();
        for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let host = entry.strip_prefix("*.").unwrap_or(entry);
            let host = host
                .strip_prefix('[')
                .and_then(|h| h.strip_suffix(']'))
                .unwrap_or(host);
            if host.is_empty() || !host.chars().all(is_host_char) {
                return Err(format!(
                    "{entry:?} is not a host name, an IP address or *.domain"
                ));
            }
            let normalized = if entry.starts_with("*.") {
                format!("*.{}", host.to_ascii_lowercase())
            } else {
                host.to_ascii_lowercase()
            };
            entries.push(normalized);
        }
        Ok(AllowList { entries })
    }

    /// True when no list is configured.
    pub fn is_open(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether `destination`'s host may be posted to.
    pub fn allows(&self, destination: &Destination) -> bool {
        self.is_open()
            || self
                .entries
                .iter()
                .any(|entry| match entry.strip_prefix("*.") {
                    Some(domain) => destination
                        .host
                        .strip_suffix(domain)
                        .is_some_and(|sub| sub.ends_with('.') && sub.len() > 1),
                    None => *entry == destination.host,
                })
    }

    /// Checks `destination`, with an error naming the list.
    pub fn check(&self, destination: &Destination) -> Result<(), String> {
        if self.allows(destination) {
            Ok(())
        } else {
            Err(format!(
                "host {:?} of {} is not in webhook_allow_hosts ({})",
                destination.host,
                destination.origin(),
                self.entries.join(", ")
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_into_their_parts() {
        let url = Destination::parse("https://Hooks.Example.com/in?x=1#frag").expect("valid");
        assert_eq!(url.scheme, Scheme::Https);
        assert_eq!(url.host, "hooks.example.com");
        assert_eq!((url.port, url.path.as_str()), (443, "/in?x=1"));
        assert_eq!(url.host_header(), "hooks.example.com");
        let url = Destination::parse("http://127.0.0.1:8080").expect("valid");
        assert_eq!((url.port, url.path.as_str()), (8080, "/"));
        assert_eq!(url.host_header(), "127.0.0.1:8080");
        let url = Destination::parse("http://[::1]:9000/hook").expect("valid");
        assert_eq!((url.host.as_str(), url.port), ("::1", 9000));
        assert_eq!(url.host_header(), "[::1]:9000");
        for bad in [
            "ftp://example.com/",
            "example.com/hook",
            "http://user:pw@example.com/",
            "http://example.com:0/",
            "http://example.com:99999/",
            "http:///path",
            "http://exa mple.com/",
            "http://[::1/",
            "http:\\\\example.com/",
            "http://exa\tmple.com/",
            "http:example.com/",
            "http://example.com:80:80/",
        ] {
            assert!(Destination::parse(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn hosts_are_normalized_as_they_will_be_resolved() {
        let host = |url: &str| Destination::parse(url).expect(url).host;
        // What the allow-lists see is what is resolved and connected to.
        assert_eq!(host("http://0x7f.1/"), "127.0.0.1");
        assert_eq!(host("http://2130706433/"), "127.0.0.1");
        assert_eq!(host("http://ex%41mple.com/"), "example.com");
        assert_eq!(host("http://B\u{fc}cher.example/"), "xn--bcher-kva.example");
        assert_eq!(host("http://[0:0::1]/"), "::1");
        let url = Destination::parse("HTTPS://example.com:443/a b").err();
        assert!(url.is_some(), "a space is refused");
        let url = Destination::parse("HTTPS://example.com:443/p?q").expect("valid");
        assert_eq!(
            (url.scheme, url.port, url.path.as_str()),
            (Scheme::Https, 443, "/p?q")
        );
    }

    #[test]
    fn the_allow_list_matches_hosts_and_subdomains_only() {
        let list = AllowList::parse("hooks.example.com, *.internal.net ,127.0.0.1").expect("valid");
        let allows = |url: &str| list.allows(&Destination::parse(url).expect("valid"));
        assert!(allows("https://hooks.example.com/a"));
        assert!(allows("https://HOOKS.example.com/a"));
        assert!(allows("http://a.internal.net/"));
        assert!(allows("http://a.b.internal.net/"));
        assert!(allows("http://127.0.0.1:9/"));
        assert!(!allows("http://internal.net/"));
        assert!(!allows("http://evilinternal.net/"));
        assert!(!allows("http://example.com/"));
        assert!(!allows("http://hooks.example.com.evil.org/"));
        assert!(AllowList::parse("").expect("empty").is_open());
        assert!(AllowList::parse("bad host").is_err());
        assert!(AllowList::parse("*.").is_err());
    }
}
