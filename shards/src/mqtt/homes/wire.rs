//! The layouts of what the nodes tell each other about MQTT sessions
//! (see `homes`): the bodies of `SESSION_REQUEST` and `SESSION_REPLY`
//! frames, whose `kind` byte is one of the constants below, for nodes of
//! one version. All integers are big-endian; a string is a u16 length and
//! its bytes.

use std::net::SocketAddr;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use corebus_mqtt::{self as mqtt, MqttStr, QoS};
use corebus_net::{Body, Epoch, Seq};
use tracing::warn;

use super::ToHome;
use crate::mesh::{Holder, Parcel};
use crate::mqtt::outbound::{Delivery, InFlight, Outbound};
use crate::mqtt::session::{Claimed, Record, Saved, Session};
use crate::mqtt::MqttSettings;
use crate::ConnId;

/// `SESSION_REQUEST`: a connection claims a client id at its home.
pub(crate) const CLAIM: u8 = 1;
/// `SESSION_REPLY`: what held the claimed id.
pub(crate) const CLAIMED: u8 = 2;
/// `SESSION_REQUEST`: the holder's filters, or whether its session
/// persists, changed.
pub(crate) const SAVE: u8 = 3;
/// `SESSION_REQUEST`: the holder ended; the id is free.
pub(crate) const RELEASE: u8 = 4;
/// `SESSION_REQUEST`: close a connection whose id another one took.
pub(crate) const TAKE_OVER: u8 = 5;
/// `SESSION_REQUEST`: send a connection's session to another.
pub(crate) const WANT: u8 = 6;
/// `SESSION_REQUEST`: a part of a session for one of the receiver's
/// connections.
pub(crate) const SESSION: u8 = 7;
/// `SESSION_REQUEST`: the receiver is the home of a client id now; the
/// entry the sender kept (kept unless the receiver has one already).
pub(crate) const ADOPT: u8 = 8;

/// The layout version a session's encoding starts with.
const SESSION_VERSION: u8 = 1;

/// The bytes of one [`SESSION`] part, at most (besides its header; less
/// when the frame limit is smaller).
pub(crate) const PART: usize = 128 * 1024;
/// The most a session may hold to cross nodes: a node gathering one drops
/// it past this (and a node sending one sends none instead).
pub(crate) const GATHER_MAX: usize = 256 << 20;

/// A node's session request or answer that this node cannot read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PeerError(&'static str);

impl std::fmt::Display for PeerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "malformed: {}", self.0)
    }
}

/// What the engine does with another node's `SESSION_REQUEST`.
#[derive(Debug)]
pub(crate) enum Order {
    Nothing,
    /// Answer with a `SESSION_REPLY` of this kind and body.
    Reply(u8, Bytes),
    /// Close this connection (its id was taken).
    TakeOver(Holder),
    /// Send `from`'s session to `to`.
    Want {
        from: Holder,
        to: Holder,
    },
    /// Hand this session to `to`.
    Session {
        to: Holder,
        session: Option<Parcel>,
    },
}

// ----- what this node sends --------------------------------------------

/// The request for a connection's client id `id` to its home, in at most
/// about `max_body` bytes: filters past it are left out of the home's copy
/// (logged), so that the request fits the home's frame limit.
pub(crate) fn encode(request: &ToHome, id: &str, max_body: usize) -> (u8, Bytes) {
    let mut out = BytesMut::new();
    let kind = match request {
        ToHome::Claim(record) | ToHome::Save(record) => {
            put_local(&mut out, record.holder);
            out.put_u8(u8::from(record.persistent));
            put_str(&mut out, id);
            let room = max_body.saturating_sub(out.len());
            let kept = put_filters(&mut out, &record.filters, room);
            if kept < record.filters.len() {
                warn!(
                    client = %id,
                    filters = record.filters.len(),
                    kept,
                    "an MQTT session has more filters than its client id's home node takes                      in one request: the rest are not restored if the session moves"
                );
            }
            match request {
                ToHome::Claim(_) => CLAIM,
                _ => SAVE,
            }
        }
        ToHome::Release(holder) => {
            put_local(&mut out, *holder);
            put_str(&mut out, id);
            RELEASE
        }
    };
    (kind, out.freeze())
}

/// A registry entry of `id` for `to`, its new home.
pub(crate) fn adopt(id: &str, record: Record, to: SocketAddr) -> (u8, Bytes) {
    let mut out = BytesMut::new();
    put_str(&mut out, id);
    out.put_u8(u8::from(record.persistent));
    let filters = record.persistent.then_some(record.filters);
    let claimed = Claimed {
        previous: record.holder,
        filters,
    };
    out.extend_from_slice(&answer(Some(claimed), to));
    (ADOPT, out.freeze())
}

/// Close `holder`, a connection of the node this goes to.
pub(crate) fn take_over(holder: Holder) -> (u8, Bytes) {
    let mut out = BytesMut::new();
    put_local(&mut out, holder);
    (TAKE_OVER, out.freeze())
}

/// Send the session of `from` (a connection of the node this goes to) to
/// `to` (one of this node).
pub(crate) fn want(from: Holder, to: Holder) -> (u8, Bytes) {
    let mut out = BytesMut::new();
    put_local(&mut out, from);
    put_local(&mut out, to);
    (WANT, out.freeze())
}

/// A session (`None`: there is none) for `to`, a connection of the node
/// it goes to, as requests of at most about `part` bytes each.
pub(crate) fn session_parts(to: Holder, encoded: Option<Bytes>, part: usize) -> Vec<(u8, Bytes)> {
    let mut encoded = encoded.unwrap_or_default();
    if encoded.len() > GATHER_MAX {
        warn!(
            bytes = encoded.len(),
            "an MQTT session is larger than another node takes; it ends here"
        );
        encoded = Bytes::new();
    }
    let mut parts = Vec::with_capacity(encoded.len() / part.max(1) + 1);
    loop {
        let chunk = encoded.split_to(encoded.len().min(part.max(1)));
        let last = encoded.is_empty();
        let mut out = BytesMut::with_capacity(11 + chunk.len());
        put_local(&mut out, to);
        out.put_u8(u8::from(last));
        out.put_slice(&chunk);
        parts.push((SESSION, out.freeze()));
        if last {
            return parts;
        }
    }
}

/// A session, as it crosses to another node.
pub(crate) fn encode_session(parcel: &Parcel) -> Bytes {
    let Some(session) = parcel.take::<Session>() else {
        return Bytes::new();
    };
    let mut out = BytesMut::new();
    out.put_u8(SESSION_VERSION);
    out.put_u32(session.in_flight.len() as u32);
    for (packet_id, entry) in &session.in_flight {
        out.put_u16(*packet_id);
        out.put_u8(match entry.state {
            Outbound::Ack => 0,
            Outbound::Received => 1,
            Outbound::Complete => 2,
        });
        out.put_u64(entry.order);
        put_delivery(&mut out, &entry.delivery);
    }
    out.put_u32(session.waiting.len() as u32);
    for delivery in &session.waiting {
        put_delivery(&mut out, delivery);
    }
    out.put_u16(session.unreleased.len() as u16);
    for packet_id in &session.unreleased {
        out.put_u16(*packet_id);
    }
    match session.origin {
        Some(origin) => {
            out.put_u8(1);
            out.put_u64(origin);
        }
        None => out.put_u8(0),
    }
    out.put_u16(session.next_packet_id);
    out.put_u16(session.recent.len() as u16);
    for (topic, epoch, seq) in &session.recent {
        out.put_u64(*topic);
        out.put_u64(*epoch);
        out.put_u64(*seq);
    }
    out.freeze()
}

// ----- what this node receives -----------------------------------------

/// Carries out another node's request (`peer`: its client address) on
/// this node's registry of client ids.
pub(crate) fn on_request(
    settings: Option<&MqttSettings>,
    peer: SocketAddr,
    kind: u8,
    body: Bytes,
) -> Result<Order, PeerError> {
    let mut body = Reader(body);
    let order = match kind {
        CLAIM | SAVE => {
            let holder = body.holder_at(Some(peer))?;
            let persistent = body.u8()? != 0;
            let id = body.string()?;
            let filters = body.filters()?;
            body.finish()?;
            let Some(settings) = settings else {
                warn!(
                    %peer,
                    "another node counts on this one for MQTT client ids, but this node has no \
                     MQTT listener: every node of a cluster should run one"
                );
                return Ok(match kind {
                    CLAIM => Order::Reply(CLAIMED, answer(None, peer)),
                    _ => Order::Nothing,
                });
            };
            if kind == SAVE {
                settings.clients.save(&id, holder, persistent, filters);
                return Ok(Order::Nothing);
            }
            let record = Record {
                holder,
                persistent,
                filters,
            };
            let claimed = settings.clients.claim(&id, record);
            Order::Reply(CLAIMED, answer(claimed, peer))
        }
        RELEASE => {
            let holder = body.holder_at(Some(peer))?;
            let id = body.string()?;
            body.finish()?;
            if let Some(settings) = settings {
                settings.clients.release(&id, holder);
            }
            Order::Nothing
        }
        TAKE_OVER => {
            let holder = body.holder_at(None)?;
            body.finish()?;
            Order::TakeOver(holder)
        }
        WANT => {
            let from = body.holder_at(None)?;
            let to = body.holder_at(Some(peer))?;
            body.finish()?;
            Order::Want { from, to }
        }
        ADOPT => {
            let id = body.string()?;
            let persistent = body.u8()? != 0;
            let (holder, filters) = body.relative_holder(peer)?;
            body.finish()?;
            let (Some(holder), Some(settings)) = (holder, settings) else {
                return Ok(Order::Nothing);
            };
            let record = Record {
                holder,
                persistent,
                filters: filters.unwrap_or_default(),
            };
            settings.clients.adopt(&id, record);
            Order::Nothing
        }
        _ => return Err(PeerError("an unknown kind of SESSION_REQUEST")),
    };
    Ok(order)
}

/// The [`CLAIMED`] answer to `peer`: the previous holder, named relative
/// to it, and the filters of its session if that persists.
fn answer(claimed: Option<Claimed>, peer: SocketAddr) -> Bytes {
    let mut out = BytesMut::new();
    match claimed {
        None => out.put_u8(0),
        Some(claimed) => {
            let previous = claimed.previous;
            match previous.node {
                Some(node) if node == peer => out.put_u8(1),
                None => out.put_u8(2),
                Some(node) => {
                    out.put_u8(3);
                    corebus_net::put_socket_addr(&mut out, &node);
                }
            }
            put_local(&mut out, previous);
            match &claimed.filters {
                Some(filters) => {
                    out.put_u8(1);
                    // What the home took: it fit one request.
                    put_filters(&mut out, filters, usize::MAX);
                }
                None => out.put_u8(0),
            }
        }
    }
    out.freeze()
}

/// The home `node`'s answer to a claim: the connection that held the id,
/// named as this node sees it, and the whole answer (an `Option<Claimed>`)
/// in a parcel.
pub(crate) fn decode_claimed(
    node: SocketAddr,
    kind: u8,
    body: Bytes,
) -> Result<(Option<Holder>, Parcel), PeerError> {
    if kind != CLAIMED {
        return Err(PeerError("a SESSION_REPLY that is not CLAIMED"));
    }
    let mut body = Reader(body);
    let (previous, filters) = body.relative_holder(node)?;
    body.finish()?;
    let claimed = previous.map(|previous| Claimed { previous, filters });
    Ok((previous, Parcel::new(claimed)))
}

/// One part of a session: the connection it is for, whether it is the
/// last, and its bytes.
pub(crate) fn decode_part(body: Bytes) -> Result<(Holder, bool, Bytes), PeerError> {
    let mut body = Reader(body);
    let to = body.holder_at(None)?;
    let last = body.u8()? != 0;
    Ok((to, last, body.0))
}

/// A session from its parts (`None`: there was none).
pub(crate) fn decode_session(parts: Vec<Bytes>) -> Result<Option<Parcel>, PeerError> {
    let whole: Bytes = match parts.len() {
        1 => parts.into_iter().next().unwrap_or_default(),
        _ => parts.concat().into(),
    };
    if whole.is_empty() {
        return Ok(None);
    }
    let mut r = Reader(whole);
    if r.u8()? != SESSION_VERSION {
        return Err(PeerError("a session layout this node does not know"));
    }
    let count = r.u32()? as usize;
    let mut in_flight = Vec::with_capacity(count.min(r.0.len() / 8));
    for _ in 0..count {
        let packet_id = r.u16()?;
        let state = match r.u8()? {
            0 => Outbound::Ack,
            1 => Outbound::Received,
            2 => Outbound::Complete,
            _ => return Err(PeerError("a delivery's state")),
        };
        let order = r.u64()?;
        let delivery = r.delivery()?;
        in_flight.push((
            packet_id,
            InFlight {
                state,
                delivery,
                order,
            },
        ));
    }
    let count = r.u32()? as usize;
    let mut waiting = std::collections::VecDeque::with_capacity(count.min(r.0.len() / 8));
    for _ in 0..count {
        waiting.push_back(r.delivery()?);
    }
    let mut unreleased = rustc_hash::FxHashSet::default();
    for _ in 0..r.u16()? {
        unreleased.insert(r.u16()?);
    }
    let origin = match r.u8()? {
        0 => None,
        _ => Some(r.u64()?),
    };
    let next_packet_id = r.u16()?;
    let count = r.u16()?;
    let mut recent = Vec::with_capacity(usize::from(count));
    for _ in 0..count {
        recent.push((r.u64()?, r.u64()?, r.u64()?));
    }
    r.finish()?;
    Ok(Some(Parcel::new(Session {
        in_flight,
        waiting,
        unreleased,
        origin,
        next_packet_id,
        recent,
    })))
}

// ----- layouts ---------------------------------------------------------

/// A connection's shard and id (its node is known from the context).
fn put_local(out: &mut BytesMut, holder: Holder) {
    out.put_u16(holder.shard);
    out.put_u64(holder.conn.0);
}

fn put_str(out: &mut BytesMut, text: &str) {
    // Client ids and filters are MQTT strings: at most 65,535 bytes.
    let len = text.len().min(usize::from(u16::MAX));
    out.put_u16(len as u16);
    out.put_slice(&text.as_bytes()[..len]);
}

/// Puts as many of `filters` as fit in `room` bytes (and a count's u16);
/// how many.
fn put_filters(out: &mut BytesMut, filters: &[Saved], room: usize) -> usize {
    let count_at = out.len();
    out.put_u16(0);
    let mut used = 2;
    let mut kept = 0;
    for saved in filters.iter().take(usize::from(u16::MAX)) {
        let sub = &saved.subscription;
        let len = 2 + sub.filter.as_str().len() + 6;
        if used + len > room {
            break;
        }
        used += len;
        kept += 1;
        put_str(out, sub.filter.as_str());
        out.put_u8(sub.qos.bits());
        out.put_u8(u8::from(sub.no_local) | (u8::from(sub.retain_as_published) << 1));
        out.put_u32(saved.identifier.unwrap_or(0));
    }
    out[count_at..count_at + 2].copy_from_slice(&(kept as u16).to_be_bytes());
    kept
}

fn put_delivery(out: &mut BytesMut, delivery: &Delivery) {
    put_str(out, delivery.topic.as_str());
    let body = delivery.body.as_bytes();
    out.put_u32(body.len() as u32);
    out.put_slice(body);
    out.put_u8(delivery.qos.bits());
    out.put_u8(u8::from(delivery.retain));
    out.put_u16(delivery.ids.len() as u16);
    for id in &delivery.ids {
        out.put_u32(*id);
    }
    out.put_u64(delivery.epoch);
    out.put_u64(delivery.seq);
}

/// Reads the layouts above, every length checked.
struct Reader(Bytes);

impl Reader {
    fn need(&self, len: usize) -> Result<(), PeerError> {
        if self.0.remaining() < len {
            return Err(PeerError("cut short"));
        }
        Ok(())
    }

    fn u8(&mut self) -> Result<u8, PeerError> {
        self.need(1)?;
        Ok(self.0.get_u8())
    }

    fn u16(&mut self) -> Result<u16, PeerError> {
        self.need(2)?;
        Ok(self.0.get_u16())
    }

    fn u32(&mut self) -> Result<u32, PeerError> {
        self.need(4)?;
        Ok(self.0.get_u32())
    }

    fn u64(&mut self) -> Result<u64, PeerError> {
        self.need(8)?;
        Ok(self.0.get_u64())
    }

    fn bytes(&mut self, len: usize) -> Result<Bytes, PeerError> {
        self.need(len)?;
        Ok(self.0.split_to(len))
    }

    fn string(&mut self) -> Result<String, PeerError> {
        let len = usize::from(self.u16()?);
        let bytes = self.bytes(len)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| PeerError("a string that is not UTF-8"))
    }

    fn mqtt_str(&mut self) -> Result<MqttStr, PeerError> {
        let len = usize::from(self.u16()?);
        let bytes = self.bytes(len)?;
        MqttStr::from_bytes(bytes).ok_or(PeerError("an MQTT string"))
    }

    fn qos(&mut self) -> Result<QoS, PeerError> {
        QoS::from_bits(self.u8()?).ok_or(PeerError("a QoS"))
    }

    fn addr(&mut self) -> Result<SocketAddr, PeerError> {
        corebus_net::get_socket_addr(&mut self.0).map_err(|_| PeerError("an address"))
    }

    /// A holder as [`answer`] names it to this node, sent by `sender`, and
    /// the filters of its session if it persists; `None` when there is no
    /// holder.
    fn relative_holder(
        &mut self,
        sender: SocketAddr,
    ) -> Result<(Option<Holder>, Option<Vec<Saved>>), PeerError> {
        let at = match self.u8()? {
            0 => return Ok((None, None)),
            1 => None,
            2 => Some(sender),
            3 => Some(self.addr()?),
            _ => return Err(PeerError("where the holder is")),
        };
        let holder = self.holder_at(at)?;
        let filters = match self.u8()? {
            0 => None,
            _ => Some(self.filters()?),
        };
        Ok((Some(holder), filters))
    }

    /// A connection of node `node` (`None`: this one).
    fn holder_at(&mut self, node: Option<SocketAddr>) -> Result<Holder, PeerError> {
        let shard = self.u16()?;
        let conn = ConnId(self.u64()?);
        Ok(Holder { node, shard, conn })
    }

    fn filters(&mut self) -> Result<Vec<Saved>, PeerError> {
        let count = self.u16()?;
        let mut filters = Vec::with_capacity(usize::from(count).min(self.0.len() / 8));
        for _ in 0..count {
            let filter = self.mqtt_str()?;
            let qos = self.qos()?;
            let flags = self.u8()?;
            let identifier = Some(self.u32()?).filter(|id| *id != 0);
            filters.push(Saved {
                subscription: mqtt::Subscription {
                    filter,
                    qos,
                    no_local: flags & 1 != 0,
                    retain_as_published: flags & 2 != 0,
                    retain_handling: mqtt::RetainHandling::Never,
                },
                identifier,
            });
        }
        Ok(filters)
    }

    fn delivery(&mut self) -> Result<Delivery, PeerError> {
        let topic = self.mqtt_str()?;
        let len = self.u32()? as usize;
        let body = Body::parse(self.bytes(len)?, "SESSION_REQUEST")
            .map_err(|_| PeerError("a message body"))?;
        let qos = self.qos()?;
        let retain = self.u8()? != 0;
        let count = self.u16()?;
        let mut ids = Vec::with_capacity(usize::from(count).min(self.0.len() / 4));
        for _ in 0..count {
            ids.push(self.u32()?);
        }
        let epoch: Epoch = self.u64()?;
        let seq: Seq = self.u64()?;
        Ok(Delivery {
            topic,
            body,
            qos,
            retain,
            ids,
            epoch,
            seq,
        })
    }

    fn finish(&self) -> Result<(), PeerError> {
        if self.0.has_remaining() {
            return Err(PeerError("bytes after the end"));
        }
        Ok(())
    }
}
