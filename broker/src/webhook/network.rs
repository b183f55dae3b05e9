//! Which addresses a webhook may connect to.
//!
//! A webhook is a request the broker makes on a client's behalf: left open,
//! it reaches whatever the broker's host can reach, the cloud metadata
//! service at 169.254.169.254 and the services on loopback included (server-
//! side request forgery). So by default an address in a special-purpose range
//! is refused, and an operator names the networks that are allowed anyway
//! (`webhook_allow_networks`). A host name is checked where it matters: at
//! connect time, against every address it resolves to then, and the
//! connection goes only to an address that passed (a name that resolved to a
//! public address at registration and to 127.0.0.1 later is still refused).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ipnet::IpNet;

use super::url::Destination;

/// Networks webhooks may reach although they are special-purpose ranges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetworkPolicy {
    allowed: Vec<IpNet>,
}

/// Why an address is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// 127.0.0.0/8, ::1.
    Loopback,
    /// 10/8, 172.16/12, 192.168/16 (RFC 1918).
    Private,
    /// 100.64/10 (RFC 6598, carrier-grade NAT).
    SharedAddressSpace,
    /// fc00::/7.
    UniqueLocal,
    /// 169.254/16 (the cloud metadata service's range), fe80::/10.
    LinkLocal,
    /// 0.0.0.0/8, ::.
    Unspecified,
    /// 224/4, 255.255.255.255, ff00::/8.
    Multicast,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Refused::Loopback => "loopback",
            Refused::Private => "private (RFC 1918)",
            Refused::SharedAddressSpace => "shared address space (100.64.0.0/10)",
            Refused::UniqueLocal => "unique-local (fc00::/7)",
            Refused::LinkLocal => "link-local",
            Refused::Unspecified => "unspecified",
            Refused::Multicast => "multicast or broadcast",
        })
    }
}

/// The special-purpose range `ip` is in, if any. An IPv4 address mapped into
/// IPv6 (`::ffff:a.b.c.d`) is judged as the IPv4 address.
pub fn special_range(ip: IpAddr) -> Option<Refused> {
    match ip {
        IpAddr::V4(v4) => special_v4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => special_v4(v4),
            None => special_v6(v6),
        },
    }
}

fn special_v4(ip: Ipv4Addr) -> Option<Refused> {
    let [a, b, ..] = ip.octets();
    if ip.is_loopback() {
        Some(Refused::Loopback)
    } else if ip.is_private() {
        Some(Refused::Private)
    } else if a == 100 && (64..128).contains(&b) {
        Some(Refused::SharedAddressSpace)
    } else if ip.is_link_local() {
        Some(Refused::LinkLocal)
    } else if a == 0 {
        Some(Refused::Unspecified)
    } else if ip.is_multicast() || ip.is_broadcast() {
        Some(Refused::Multicast)
    } else {
        None
    }
}

fn special_v6(ip: Ipv6Addr) -> Option<Refused> {
    let first = ip.segments()[0];
    if ip.is_loopback() {
        Some(Refused::Loopback)
    } else if ip.is_unspecified() {
        Some(Refused::Unspecified)
    } else if first & 0xfe00 == 0xfc00 {
        Some(Refused::UniqueLocal)
    } else if first & 0xffc0 == 0xfe80 {
        Some(Refused::LinkLocal)
    } else if ip.is_multicast() {
        Some(Refused::Multicast)
    } else {
        None
    }
}

impl NetworkPolicy {
    /// Parses a comma-separated list of networks (`10.1.0.0/16`, `::1/128`)
    /// and single addresses (`127.0.0.1`). Empty: no special-purpose range
    /// is allowed.
    pub fn parse(text: &str) -> Result<NetworkPolicy, String> {
        let mut allowed = Vec::new();
        for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let net = match entry.parse::<IpNet>() {
                Ok(net) => net,
                Err(_) => entry.parse::<IpAddr>().map(IpNet::from).map_err(|_| {
                    format!("{entry:?} is not a network (10.0.0.0/8, fd00::/8) or an IP address")
                })?,
            };
            allowed.push(net.trunc());
        }
        Ok(NetworkPolicy { allowed })
    }

    /// Whether `ip` may be connected to: not in a special-purpose range, or
    /// in a network the operator allowed.
    pub fn permits(&self, ip: IpAddr) -> Result<(), Refused> {
        let Some(range) = special_range(ip) else {
            return Ok(());
        };
        let mapped = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4),
            IpAddr::V4(_) => None,
        };
        let allowed = |ip: IpAddr| self.allowed.iter().any(|net| net.contains(&ip));
        if allowed(ip) || mapped.is_some_and(allowed) {
            Ok(())
        } else {
            Err(range)
        }
    }

    /// Checks a destination whose host is an IP address (at registration,
    /// so that an obviously refused one is refused at once); a host name is
    /// checked when connecting.
    pub fn check_literal(&self, destination: &Destination) -> Result<(), String> {
        match destination.host.parse::<IpAddr>() {
            Ok(ip) => self
                .permits(ip)
                .map_err(|range| refusal(destination, ip, range)),
            Err(_) => Ok(()),
        }
    }

    /// Resolves `destination` now and keeps the addresses it may connect
    /// to; an error names what was refused when none is left.
    pub async fn resolve(&self, destination: &Destination) -> Result<Vec<SocketAddr>, Resolved> {
        let found: Vec<SocketAddr> =
            tokio::net::lookup_host((destination.host.as_str(), destination.port))
                .await
                .map_err(Resolved::Failed)?
                .collect();
        let mut first_refusal = None;
        let permitted: Vec<SocketAddr> = found
            .iter()
            .copied()
            .filter(|addr| match self.permits(addr.ip()) {
                Ok(()) => true,
                Err(range) => {
                    first_refusal.get_or_insert((addr.ip(), range));
                    false
                }
            })
            .collect();
        match (permitted.is_empty(), first_refusal) {
            (false, _) => Ok(permitted),
            (true, Some((ip, range))) => Err(Resolved::Refused(refusal(destination, ip, range))),
            (true, None) => Err(Resolved::Failed(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{} resolves to no address", destination.host),
            ))),
        }
    }
}

/// Why [`NetworkPolicy::resolve`] found nothing to connect to.
#[derive(Debug)]
pub enum Resolved {
    /// The name did not resolve (worth retrying).
    Failed(std::io::Error),
    /// Every address it resolved to is refused (not worth retrying).
    Refused(String),
}

fn refusal(destination: &Destination, ip: IpAddr, range: Refused) -> String {
    format!(
        "{} resolves to {ip}, a {range} address; webhooks may not reach such addresses \
         unless webhook_allow_networks names them",
        destination.origin()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("an address")
    }

    #[test]
    fn special_purpose_ranges_are_refused_by_default() {
        let policy = NetworkPolicy::default();
        for (address, range) in [
            ("127.0.0.1", Refused::Loopback),
            ("127.255.0.9", Refused::Loopback),
            ("::1", Refused::Loopback),
            ("10.1.2.3", Refused::Private),
            ("172.16.0.1", Refused::Private),
            ("172.31.255.255", Refused::Private),
            ("192.168.1.1", Refused::Private),
            ("100.64.0.1", Refused::SharedAddressSpace),
            ("169.254.169.254", Refused::LinkLocal),
            ("fe80::1", Refused::LinkLocal),
            ("fc00::1", Refused::UniqueLocal),
            ("fd12:3456::1", Refused::UniqueLocal),
            ("0.0.0.0", Refused::Unspecified),
            ("::", Refused::Unspecified),
            ("224.0.0.1", Refused::Multicast),
            ("255.255.255.255", Refused::Multicast),
            ("ff02::1", Refused::Multicast),
            ("::ffff:127.0.0.1", Refused::Loopback),
            ("::ffff:169.254.169.254", Refused::LinkLocal),
        ] {
            assert_eq!(policy.permits(ip(address)), Err(range), "{address}");
        }
        for public in [
            "93.184.216.34",
            "172.32.0.1",
            "100.128.0.1",
            "2606:4700::1111",
            "1.1.1.1",
        ] {
            assert_eq!(policy.permits(ip(public)), Ok(()), "{public}");
        }
    }

    #[test]
    fn allowed_networks_open_their_ranges_only() {
        let policy = NetworkPolicy::parse("127.0.0.0/8, 10.1.0.0/16,fd00::5").expect("valid");
        assert_eq!(policy.permits(ip("127.0.0.1")), Ok(()));
        assert_eq!(policy.permits(ip("::ffff:127.0.0.1")), Ok(()));
        assert_eq!(policy.permits(ip("10.1.9.9")), Ok(()));
        assert_eq!(policy.permits(ip("10.2.0.1")), Err(Refused::Private));
        assert_eq!(policy.permits(ip("fd00::5")), Ok(()));
        assert_eq!(policy.permits(ip("fd00::6")), Err(Refused::UniqueLocal));
        assert_eq!(
            policy.permits(ip("169.254.169.254")),
            Err(Refused::LinkLocal)
        );
        assert_eq!(policy.permits(ip("::1")), Err(Refused::Loopback));
        for bad in ["10.0.0.0/33", "localhost", "10.0.0.0/8/8", "*"] {
            assert!(NetworkPolicy::parse(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn a_literal_address_is_checked_at_once_and_a_name_later() {
        let policy = NetworkPolicy::default();
        let metadata = Destination::parse("http://169.254.169.254/latest/meta-data").expect("url");
        let refused = policy.check_literal(&metadata).expect_err("refused");
        assert!(refused.contains("link-local"), "{refused}");
        assert!(refused.contains("webhook_allow_networks"), "{refused}");
        let named = Destination::parse("https://hooks.example.com/in").expect("url");
        assert_eq!(policy.check_literal(&named), Ok(()));
    }

    #[tokio::test]
    async fn a_name_is_judged_by_what_it_resolves_to_when_connecting() {
        let localhost = Destination::parse("http://localhost:9/").expect("url");
        match NetworkPolicy::default().resolve(&localhost).await {
            Err(Resolved::Refused(reason)) => assert!(reason.contains("loopback"), "{reason}"),
            other => panic!("localhost must be refused, got {other:?}"),
        }
        let open = NetworkPolicy::parse("127.0.0.0/8, ::1").expect("valid");
        let addrs = open.resolve(&localhost).await.expect("allowed");
        assert!(!addrs.is_empty() && addrs.iter().all(|a| a.ip().is_loopback() && a.port() == 9));
    }
}
