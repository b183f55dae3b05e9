//! The bytes of foca's messages: a fixed binary layout of our own, so the
//! gossip needs no serialisation framework (foca lets the caller choose).
//!
//! ```text
//! identity  = addr generation client flags
//! addr      = family:u8 (4 | 6) ip:4|16 bytes port:u16
//! generation= started_ms:u64 bump:u32
//! flags     = u8 (bit 0: leaving; others must be 0)
//! header    = src:identity src_incarnation:u16 dst:identity message
//! message   = tag:u8 [probe:u8] [identity]   (see `Tag`)
//! member    = identity incarnation:u16 state:u8 (0 alive, 1 suspect, 2 down)
//! ```
//! Integers are big-endian. Every datagram is sealed by [`crate::envelope`]
//! before it leaves, so these bytes only ever come from a holder of the
//! cluster secret; decoding still checks every length and tag.

use std::net::SocketAddr;

use bytes::{Buf, BufMut};
use corebus_net::{get_socket_addr, put_socket_addr, socket_addr_len, AddrError};
use foca::{Header, Member, Message, State};

use crate::identity::{Generation, NodeIdentity};

/// Why gossip bytes did not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// Fewer bytes than the layout needs.
    #[error("truncated {what}: {need} more bytes needed, {have} left")]
    Truncated {
        /// What was being read.
        what: &'static str,
        /// Bytes it needs.
        need: usize,
        /// Bytes left.
        have: usize,
    },
    /// A tag, family or flag byte outside the layout.
    #[error("unknown {what} {value}")]
    Unknown {
        /// Which field.
        what: &'static str,
        /// Its value.
        value: u8,
    },
    /// Not enough room to encode into.
    #[error("no room to encode {what}")]
    NoRoom {
        /// What was being written.
        what: &'static str,
    },
}

/// foca's [`foca::Codec`] for [`NodeIdentity`].
#[derive(Debug, Clone, Copy, Default)]
pub struct GossipCodec;

const LEAVING: u8 = 0x01;

fn identity_len(id: &NodeIdentity) -> usize {
    socket_addr_len(&id.addr) + 8 + 4 + socket_addr_len(&id.client) + 1
}

fn put_identity(buf: &mut impl BufMut, id: &NodeIdentity) {
    put_socket_addr(buf, &id.addr);
    buf.put_u64(id.generation.started_ms);
    buf.put_u32(id.generation.bump);
    put_socket_addr(buf, &id.client);
    buf.put_u8(if id.leaving { LEAVING } else { 0 });
}

fn need(buf: &impl Buf, what: &'static str, need: usize) -> Result<(), CodecError> {
    let have = buf.remaining();
    if have < need {
        return Err(CodecError::Truncated { what, need, have });
    }
    Ok(())
}

fn get_addr(buf: &mut impl Buf) -> Result<SocketAddr, CodecError> {
    get_socket_addr(buf).map_err(|err| match err {
        AddrError::Short { what, need, have } => CodecError::Truncated { what, need, have },
        AddrError::Family(value) => CodecError::Unknown {
            what: "address family",
            value,
        },
    })
}

fn get_identity(buf: &mut impl Buf) -> Result<NodeIdentity, CodecError> {
    let addr = get_addr(buf)?;
    need(buf, "generation", 12)?;
    let generation = Generation {
        started_ms: buf.get_u64(),
        bump: buf.get_u32(),
    };
    let client = get_addr(buf)?;
    need(buf, "flags", 1)?;
    let flags = buf.get_u8();
    if flags & !LEAVING != 0 {
        return Err(CodecError::Unknown {
            what: "identity flags",
            value: flags,
        });
    }
    Ok(NodeIdentity {
        addr,
        generation,
        client,
        leaving: flags & LEAVING != 0,
    })
}

/// The message tags.
mod tag {
    pub const PING: u8 = 1;
    pub const ACK: u8 = 2;
    pub const PING_REQ: u8 = 3;
    pub const INDIRECT_PING: u8 = 4;
    pub const INDIRECT_ACK: u8 = 5;
    pub const FORWARDED_ACK: u8 = 6;
    pub const ANNOUNCE: u8 = 7;
    pub const FEED: u8 = 8;
    pub const GOSSIP: u8 = 9;
    pub const BROADCAST: u8 = 10;
    pub const TURN_UNDEAD: u8 = 11;
}

fn put_probe_of(buf: &mut impl BufMut, tag: u8, probe: u8, id: &NodeIdentity) {
    buf.put_u8(tag);
    buf.put_u8(probe);
    put_identity(buf, id);
}

fn put_message(buf: &mut impl BufMut, message: &Message<NodeIdentity>) {
    match message {
        Message::Ping(probe) => {
            buf.put_u8(tag::PING);
            buf.put_u8(*probe);
        }
        Message::Ack(probe) => {
            buf.put_u8(tag::ACK);
            buf.put_u8(*probe);
        }
        Message::PingReq {
            target,
            probe_number,
        } => put_probe_of(buf, tag::PING_REQ, *probe_number, target),
        Message::IndirectPing {
            origin,
            probe_number,
        } => put_probe_of(buf, tag::INDIRECT_PING, *probe_number, origin),
        Message::IndirectAck {
            target,
            probe_number,
        } => put_probe_of(buf, tag::INDIRECT_ACK, *probe_number, target),
        Message::ForwardedAck {
            origin,
            probe_number,
        } => put_probe_of(buf, tag::FORWARDED_ACK, *probe_number, origin),
        Message::Announce => buf.put_u8(tag::ANNOUNCE),
        Message::Feed => buf.put_u8(tag::FEED),
        Message::Gossip => buf.put_u8(tag::GOSSIP),
        Message::Broadcast => buf.put_u8(tag::BROADCAST),
        Message::TurnUndead => buf.put_u8(tag::TURN_UNDEAD),
    }
}

fn message_len(message: &Message<NodeIdentity>) -> usize {
    match message {
        Message::Ping(_) | Message::Ack(_) => 2,
        Message::PingReq { target: id, .. }
        | Message::IndirectPing { origin: id, .. }
        | Message::IndirectAck { target: id, .. }
        | Message::ForwardedAck { origin: id, .. } => 2 + identity_len(id),
        _ => 1,
    }
}

fn get_message(buf: &mut impl Buf) -> Result<Message<NodeIdentity>, CodecError> {
    need(buf, "message tag", 1)?;
    let tag = buf.get_u8();
    Ok(match tag {
        tag::PING => Message::Ping(probe(buf)?),
        tag::ACK => Message::Ack(probe(buf)?),
        tag::PING_REQ => {
            let probe_number = probe(buf)?;
            Message::PingReq {
                target: get_identity(buf)?,
                probe_number,
            }
        }
        tag::INDIRECT_PING => {
            let probe_number = probe(buf)?;
            Message::IndirectPing {
                origin: get_identity(buf)?,
                probe_number,
            }
        }
        tag::INDIRECT_ACK => {
            let probe_number = probe(buf)?;
            Message::IndirectAck {
                target: get_identity(buf)?,
                probe_number,
            }
        }
        tag::FORWARDED_ACK => {
            let probe_number = probe(buf)?;
            Message::ForwardedAck {
                origin: get_identity(buf)?,
                probe_number,
            }
        }
        tag::ANNOUNCE => Message::Announce,
        tag::FEED => Message::Feed,
        tag::GOSSIP => Message::Gossip,
        tag::BROADCAST => Message::Broadcast,
        tag::TURN_UNDEAD => Message::TurnUndead,
        value => {
            return Err(CodecError::Unknown {
                what: "message tag",
                value,
            })
        }
    })
}

fn probe(buf: &mut impl Buf) -> Result<u8, CodecError> {
    need(buf, "probe number", 1)?;
    Ok(buf.get_u8())
}

fn state_byte(state: State) -> u8 {
    match state {
        State::Alive => 0,
        State::Suspect => 1,
        State::Down => 2,
    }
}

impl foca::Codec<NodeIdentity> for GossipCodec {
    type Error = CodecError;

    fn encode_header(
        &mut self,
        header: &Header<NodeIdentity>,
        mut buf: impl BufMut,
    ) -> Result<(), CodecError> {
        let len = identity_len(&header.src)
            + 2
            + identity_len(&header.dst)
            + message_len(&header.message);
        if buf.remaining_mut() < len {
            return Err(CodecError::NoRoom { what: "header" });
        }
        put_identity(&mut buf, &header.src);
        buf.put_u16(header.src_incarnation);
        put_identity(&mut buf, &header.dst);
        put_message(&mut buf, &header.message);
        Ok(())
    }

    fn decode_header(&mut self, mut buf: impl Buf) -> Result<Header<NodeIdentity>, CodecError> {
        let src = get_identity(&mut buf)?;
        need(&buf, "incarnation", 2)?;
        let src_incarnation = buf.get_u16();
        let dst = get_identity(&mut buf)?;
        let message = get_message(&mut buf)?;
        Ok(Header {
            src,
            src_incarnation,
            dst,
            message,
        })
    }

    fn encode_member(
        &mut self,
        member: &Member<NodeIdentity>,
        mut buf: impl BufMut,
    ) -> Result<(), CodecError> {
        if buf.remaining_mut() < identity_len(member.id()) + 3 {
            return Err(CodecError::NoRoom { what: "member" });
        }
        put_identity(&mut buf, member.id());
        buf.put_u16(member.incarnation());
        buf.put_u8(state_byte(member.state()));
        Ok(())
    }

    fn decode_member(&mut self, mut buf: impl Buf) -> Result<Member<NodeIdentity>, CodecError> {
        let id = get_identity(&mut buf)?;
        need(&buf, "member state", 3)?;
        let incarnation = buf.get_u16();
        let state = match buf.get_u8() {
            0 => State::Alive,
            1 => State::Suspect,
            2 => State::Down,
            value => {
                return Err(CodecError::Unknown {
                    what: "member state",
                    value,
                })
            }
        };
        Ok(Member::new(id, incarnation, state))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use foca::Codec;

    fn node(last: u8, leaving: bool) -> NodeIdentity {
        NodeIdentity {
            addr: SocketAddr::from(([127, 0, 0, last], 7500)),
            generation: Generation {
                started_ms: 1_765_000_000_000 + u64::from(last),
                bump: u32::from(last),
            },
            client: "[::1]:7400".parse().unwrap(),
            leaving,
        }
    }

    fn every_message() -> Vec<Message<NodeIdentity>> {
        vec![
            Message::Ping(1),
            Message::Ack(2),
            Message::PingReq {
                target: node(3, false),
                probe_number: 3,
            },
            Message::IndirectPing {
                origin: node(4, true),
                probe_number: 4,
            },
            Message::IndirectAck {
                target: node(5, false),
                probe_number: 5,
            },
            Message::ForwardedAck {
                origin: node(6, false),
                probe_number: 6,
            },
            Message::Announce,
            Message::Feed,
            Message::Gossip,
            Message::Broadcast,
            Message::TurnUndead,
        ]
    }

    #[test]
    fn every_header_round_trips_and_every_shorter_input_is_truncated() {
        for message in every_message() {
            let header = Header {
                src: node(1, false),
                src_incarnation: 513,
                dst: node(2, true),
                message,
            };
            let mut bytes = Vec::new();
            GossipCodec.encode_header(&header, &mut bytes).unwrap();
            let mut slice = &bytes[..];
            assert_eq!(GossipCodec.decode_header(&mut slice).unwrap(), header);
            assert!(slice.is_empty(), "the whole header is read");
            for end in 0..bytes.len() {
                let err = GossipCodec.decode_header(&bytes[..end]).unwrap_err();
                assert!(matches!(err, CodecError::Truncated { .. }), "{end}: {err}");
            }
        }
    }

    #[test]
    fn members_round_trip_in_every_state() {
        for state in [State::Alive, State::Suspect, State::Down] {
            let member = Member::new(node(9, false), 7, state);
            let mut bytes = Vec::new();
            GossipCodec.encode_member(&member, &mut bytes).unwrap();
            assert_eq!(GossipCodec.decode_member(&bytes[..]).unwrap(), member);
        }
    }

    #[test]
    fn unknown_tags_families_states_and_flags_are_refused() {
        let mut bytes = Vec::new();
        GossipCodec
            .encode_member(&Member::alive(node(1, false)), &mut bytes)
            .unwrap();
        let last = bytes.len() - 1;
        let mut bad_state = bytes.clone();
        bad_state[last] = 3;
        assert_eq!(
            GossipCodec.decode_member(&bad_state[..]).unwrap_err(),
            CodecError::Unknown {
                what: "member state",
                value: 3
            }
        );
        let mut bad_family = bytes.clone();
        bad_family[0] = 5;
        assert!(matches!(
            GossipCodec.decode_member(&bad_family[..]),
            Err(CodecError::Unknown {
                what: "address family",
                value: 5
            })
        ));
        let flags_at = identity_len(&node(1, false)) - 1;
        let mut bad_flags = bytes;
        bad_flags[flags_at] = 0x80;
        assert!(matches!(
            GossipCodec.decode_member(&bad_flags[..]),
            Err(CodecError::Unknown {
                what: "identity flags",
                ..
            })
        ));
    }

    #[test]
    fn a_member_that_does_not_fit_leaves_the_buffer_untouched() {
        let mut room = [0u8; 10];
        let mut buf = &mut room[..];
        let err = GossipCodec
            .encode_member(&Member::alive(node(1, false)), &mut buf)
            .unwrap_err();
        assert_eq!(err, CodecError::NoRoom { what: "member" });
        assert_eq!(room, [0; 10]);
    }
}
