//! Broker addresses: what `connect` resolves, and the host part TLS checks
//! the broker's certificate against.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use tokio::net::ToSocketAddrs;

/// An address to connect to: anything tokio resolves ([`ToSocketAddrs`]:
/// `"host:port"` as `&str` or `String`, `(host, port)`, a [`SocketAddr`], a
/// slice of them, or a reference to any of these) that also has a host part,
/// the name a TLS client checks the broker's certificate against by default
/// (see [`TlsOptions::server_name`](crate::TlsOptions::server_name)).
///
/// Implemented for exactly the types tokio's [`ToSocketAddrs`] is; it cannot
/// be implemented outside this crate.
///
/// ```
/// use corebus_client::ServerAddr;
///
/// assert_eq!("bus.internal:7400".host().as_deref(), Some("bus.internal"));
/// assert_eq!("[::1]:7400".host().as_deref(), Some("::1"));
/// assert_eq!(("10.0.0.7", 7400).host().as_deref(), Some("10.0.0.7"));
/// let addr: std::net::SocketAddr = "127.0.0.1:7400".parse().expect("an address");
/// assert_eq!(addr.host().as_deref(), Some("127.0.0.1"));
/// ```
pub trait ServerAddr: ToSocketAddrs + sealed::Sealed {
    /// The host part: the name or IP address before the port (without the
    /// brackets of an IPv6 literal), or `None` for a slice of socket
    /// addresses.
    fn host(&self) -> Option<String>;
}

mod sealed {
    pub trait Sealed {}
}

impl<T: ServerAddr + ?Sized> sealed::Sealed for &T {}
impl<T: ServerAddr + ?Sized> ServerAddr for &T {
    fn host(&self) -> Option<String> {
        (**self).host()
    }
}

impl sealed::Sealed for str {}
impl ServerAddr for str {
    fn host(&self) -> Option<String> {
        // What tokio parses first: an IP literal with a port.
        if let Ok(addr) = self.parse::<SocketAddr>() {
            return Some(addr.ip().to_string());
        }
        let host = self.rsplit_once(':').map_or(self, |(host, _port)| host);
        Some(host.to_owned())
    }
}

impl sealed::Sealed for String {}
impl ServerAddr for String {
    fn host(&self) -> Option<String> {
        self.as_str().host()
    }
}

impl sealed::Sealed for (&str, u16) {}
impl ServerAddr for (&str, u16) {
    fn host(&self) -> Option<String> {
        Some(self.0.to_owned())
    }
}

impl sealed::Sealed for (String, u16) {}
impl ServerAddr for (String, u16) {
    fn host(&self) -> Option<String> {
        Some(self.0.clone())
    }
}

impl sealed::Sealed for &[SocketAddr] {}
impl ServerAddr for &[SocketAddr] {
    fn host(&self) -> Option<String> {
        None
    }
}

/// Socket addresses and `(ip, port)` pairs: the host part is the IP.
macro_rules! ip_host {
    ($($ty:ty => |$addr:ident| $ip:expr;)*) => {$(
        impl sealed::Sealed for $ty {}
        impl ServerAddr for $ty {
            fn host(&self) -> Option<String> {
                let $addr = self;
                Some($ip.to_string())
            }
        }
    )*};
}

ip_host! {
    SocketAddr => |addr| addr.ip();
    SocketAddrV4 => |addr| addr.ip();
    SocketAddrV6 => |addr| addr.ip();
    (IpAddr, u16) => |addr| addr.0;
    (Ipv4Addr, u16) => |addr| addr.0;
    (Ipv6Addr, u16) => |addr| addr.0;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_parts() {
        assert_eq!("localhost:7400".host().as_deref(), Some("localhost"));
        assert_eq!(
            String::from("bus.example.com:7400").host().as_deref(),
            Some("bus.example.com")
        );
        assert_eq!("127.0.0.1:7400".host().as_deref(), Some("127.0.0.1"));
        assert_eq!("[::1]:7400".host().as_deref(), Some("::1"));
        assert_eq!(("bus", 7400).host().as_deref(), Some("bus"));
        assert_eq!((String::from("bus"), 1).host().as_deref(), Some("bus"));
        let addr = SocketAddr::from(([10, 0, 0, 7], 7400));
        assert_eq!(addr.host().as_deref(), Some("10.0.0.7"));
        // What `connect(&addr)` and `connect(&string)` see.
        let by_reference = &addr;
        assert_eq!(
            <&SocketAddr as ServerAddr>::host(&by_reference).as_deref(),
            Some("10.0.0.7")
        );
        let string = String::from("bus:1");
        let by_reference = &string;
        assert_eq!(
            <&String as ServerAddr>::host(&by_reference).as_deref(),
            Some("bus")
        );
        assert_eq!((Ipv6Addr::LOCALHOST, 1).host().as_deref(), Some("::1"));
        let several: &[SocketAddr] = &[addr];
        assert_eq!(several.host(), None);
    }
}
