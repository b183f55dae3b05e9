//! Socket addresses as the nodes of a cluster write them to each other (in
//! membership messages and in the bodies of `SESSION_REQUEST`s): a family
//! byte (4 or 6), the address's octets, then the port as a `u16`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use bytes::{Buf, BufMut};

/// Why [`get_socket_addr`] read no address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddrError {
    /// The buffer ends first: `what` needed `need` bytes, `have` were left.
    Short {
        /// The part that was cut.
        what: &'static str,
        /// Bytes it needs.
        need: usize,
        /// Bytes left.
        have: usize,
    },
    /// The family byte is neither 4 nor 6.
    Family(u8),
}

/// The bytes [`put_socket_addr`] writes for `addr`.
///
/// ```
/// use std::net::SocketAddr;
/// let addr: SocketAddr = "127.0.0.2:7400".parse().unwrap();
/// assert_eq!(corebus_net::socket_addr_len(&addr), 7);
/// ```
pub fn socket_addr_len(addr: &SocketAddr) -> usize {
    match addr {
        SocketAddr::V4(_) => 1 + 4 + 2,
        SocketAddr::V6(_) => 1 + 16 + 2,
    }
}

/// Writes `addr`: family, octets, port.
///
/// ```
/// use std::net::SocketAddr;
/// let addr: SocketAddr = "[::1]:9".parse().unwrap();
/// let mut buf = Vec::new();
/// corebus_net::put_socket_addr(&mut buf, &addr);
/// assert_eq!(corebus_net::get_socket_addr(&mut &buf[..]), Ok(addr));
/// ```
pub fn put_socket_addr(buf: &mut impl BufMut, addr: &SocketAddr) {
    match addr.ip() {
        IpAddr::V4(ip) => {
            buf.put_u8(4);
            buf.put_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            buf.put_u8(6);
            buf.put_slice(&ip.octets());
        }
    }
    buf.put_u16(addr.port());
}

/// Reads an address [`put_socket_addr`] wrote, every length checked.
///
/// ```
/// use corebus_net::{get_socket_addr, AddrError};
/// assert_eq!(get_socket_addr(&mut &[5u8][..]), Err(AddrError::Family(5)));
/// assert!(matches!(get_socket_addr(&mut &[4u8, 127][..]), Err(AddrError::Short { .. })));
/// ```
pub fn get_socket_addr(buf: &mut impl Buf) -> Result<SocketAddr, AddrError> {
    let need = |buf: &mut dyn Buf, what, need| {
        let have = buf.remaining();
        if have < need {
            return Err(AddrError::Short { what, need, have });
        }
        Ok(())
    };
    need(buf, "address", 1)?;
    let ip = match buf.get_u8() {
        4 => {
            need(buf, "IPv4 address", 6)?;
            let mut octets = [0; 4];
            buf.copy_to_slice(&mut octets);
            IpAddr::V4(Ipv4Addr::from(octets))
        }
        6 => {
            need(buf, "IPv6 address", 18)?;
            let mut octets = [0; 16];
            buf.copy_to_slice(&mut octets);
            IpAddr::V6(Ipv6Addr::from(octets))
        }
        family => return Err(AddrError::Family(family)),
    };
    Ok(SocketAddr::new(ip, buf.get_u16()))
}
