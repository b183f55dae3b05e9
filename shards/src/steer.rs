//! Shard-aware connections: the listeners' `SO_REUSEPORT` group picks the
//! listener for a new connection by its source port, `(port / 2) mod
//! shards` ([`corebus_net::routing::shard_of_source_port`], which this
//! program must keep computing), so a client can land on a chosen shard
//! (the one owning its topic, say) by binding a source port before
//! connecting. The port is halved
//! because Linux gives `connect()` even ephemeral ports (leaving odd ones to
//! `bind()`): `port mod shards` would send every ordinary client to the
//! even-numbered shards. Ordinary clients still spread evenly (successive
//! connections get successive even ports). Without the program the kernel
//! hashes the connection's addresses instead, which also spreads connections
//! but lets nobody choose.
//!
//! The program is classic BPF, run by the kernel on the connection's first
//! packet with the data pointer past the TCP header; it reads the source
//! port relative to the network header (`SKF_NET_OFF`), for IPv4 (variable
//! header length) and IPv6 (fixed 40 bytes; extension headers are not
//! followed, and such packets fall back to the hash when the index is out of
//! range). An index past the group's size also falls back to the hash.

use std::io;
use std::os::fd::RawFd;

// Classic BPF opcodes (linux/filter.h, linux/bpf_common.h).
const BPF_LD: u16 = 0x00;
const BPF_LDX: u16 = 0x01;
const BPF_ALU: u16 = 0x04;
const BPF_JMP: u16 = 0x05;
const BPF_RET: u16 = 0x06;
const BPF_H: u16 = 0x08;
const BPF_B: u16 = 0x10;
const BPF_ABS: u16 = 0x20;
const BPF_IND: u16 = 0x40;
const BPF_MSH: u16 = 0xa0;
const BPF_RSH: u16 = 0x70;
const BPF_MOD: u16 = 0x90;
const BPF_K: u16 = 0x00;
const BPF_JA: u16 = 0x00;
const BPF_JEQ: u16 = 0x10;
const BPF_A: u16 = 0x10;
/// Offsets from this base address the network header.
const SKF_NET_OFF: i32 = -0x10_0000;

fn insn(code: u16, jt: u8, jf: u8, k: u32) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// The program for a group of `shards` listeners.
fn program(shards: u32) -> Vec<libc::sock_filter> {
    let net = SKF_NET_OFF as u32;
    vec![
        // A = IP version (high nibble of the first byte).
        insn(BPF_LD | BPF_B | BPF_ABS, 0, 0, net),
        insn(BPF_ALU | BPF_RSH | BPF_K, 0, 0, 4),
        // IPv6: to the fixed-offset load.
        insn(BPF_JMP | BPF_JEQ | BPF_K, 3, 0, 6),
        // IPv4: X = header length, A = u16 at X (the TCP source port).
        insn(BPF_LDX | BPF_B | BPF_MSH, 0, 0, net),
        insn(BPF_LD | BPF_H | BPF_IND, 0, 0, net),
        insn(BPF_JMP | BPF_JA, 0, 0, 1),
        // IPv6: the source port right after the 40-byte header.
        insn(BPF_LD | BPF_H | BPF_ABS, 0, 0, net.wrapping_add(40)),
        insn(BPF_ALU | BPF_RSH | BPF_K, 0, 0, 1),
        insn(BPF_ALU | BPF_MOD | BPF_K, 0, 0, shards),
        insn(BPF_RET | BPF_A, 0, 0, 0),
    ]
}

/// Makes the `SO_REUSEPORT` group that `fd` belongs to pick listener
/// `(source port / 2) mod shards` for each new connection.
pub fn by_source_port(fd: RawFd, shards: usize) -> io::Result<()> {
    let shards = u32::try_from(shards.max(1))
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "too many shards"))?;
    let mut filter = program(shards);
    let prog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_mut_ptr(),
    };
    // SAFETY: `prog` points at `filter`, alive for the call; the kernel
    // copies the program and checks it.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ATTACH_REUSEPORT_CBPF,
            std::ptr::addr_of!(prog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
