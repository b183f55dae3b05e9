//! MQTT sessions that outlive their connection, as the engine sees them
//! (see `crate::mqtt::session`): a detached connection keeps its
//! subscriptions and sends no heartbeat; a new connection asks the old one
//! for its session, which the old one's task sends over when it ends.
//!
//! In a cluster the old connection may be on another node, and a client
//! id's registry entry lives on its *home* node (`crate::mqtt::homes`):
//! what crosses nodes goes as `SESSION_REQUEST`s on this shard's link to
//! the node, and a claim's answer comes back as a `SESSION_REPLY`.

use std::net::SocketAddr;

use bytes::Bytes;
use corebus_net::{ErrorCode, Frame, SessionFrame};
use rustc_hash::FxHashMap;
use tracing::{debug, warn};

use super::{ConnId, Liveness, Shard};
use crate::mesh::{Holder, Parcel, ShardMsg};
use crate::mqtt::homes::wire::{self as homes, Order};
use crate::routing::ShardId;

/// What came for an MQTT connection from elsewhere, for its writer.
#[derive(Debug)]
pub enum Arrival {
    /// The session it asked for (`None`: there was none).
    Session(Option<Parcel>),
    /// The answer of its client id's home node to its claim (`None`: the
    /// link to the home broke first, or the home refused the claim or
    /// answered what this node cannot read; the connection is refused).
    Claimed(Option<Parcel>),
}

/// Sessions arriving in parts from other nodes, by (link connection, shard
/// and connection they go to).
/// The bytes gathered, counted, and the parts (`None`: dropped, the rest
/// of it is ignored).
pub(super) type Gathering = FxHashMap<(ConnId, ShardId, ConnId), (usize, Option<Vec<Bytes>>)>;

impl Shard {
    /// `conn`'s socket ended and its session lives on: no keep-alive or
    /// heartbeat applies to it any more (its grant's expiry still does).
    pub fn detach_conn(&mut self, conn: ConnId) {
        if let Some(state) = self.conns.get_mut(&conn) {
            state.liveness = Liveness::KeepAlive(None);
            self.stats.sessions_detached += 1;
        }
    }

    /// Counts messages a detached session had no room for.
    pub fn note_session_drops(&mut self, dropped: u64) {
        self.stats.session_messages_dropped += dropped;
    }

    /// Whether the broker is shutting down (detached sessions end).
    pub fn is_draining(&self) -> bool {
        self.draining
    }

    /// The node whose registry holds `client_id` (its home), when that is
    /// another node of the cluster; `None` for this node, or outside one.
    pub fn client_home(&mut self, client_id: &str) -> Option<SocketAddr> {
        self.refresh_placement();
        let nodes = self.nodes.as_ref()?;
        crate::mqtt::homes::home(&nodes.placement, client_id)
    }

    /// Another connection took the client id of `holder` over: it is closed
    /// with `taken_over`, on whichever shard and node it is.
    pub fn take_over(&mut self, holder: Holder) {
        match holder.node {
            Some(node) => self.to_node(node, homes::take_over(holder)),
            None if holder.shard == self.id => self.close_taken_over(holder.conn),
            None => self.push_mesh(holder.shard, ShardMsg::TakeOverMsg { conn: holder.conn }),
        }
    }

    /// `to` takes over the session of `from`: `from` is closed with
    /// `taken_over`, and its task sends the session to `to` as it ends.
    pub fn want_session(&mut self, from: Holder, to: Holder) {
        match from.node {
            Some(node) => {
                self.to_node(node, homes::want(from, to));
                if let Some(link) = self.link_mut(node) {
                    // Until the session comes: if the link breaks first, the
                    // connection gets none rather than waiting for ever.
                    link.wants.push(to.conn);
                }
            }
            None if from.shard == self.id => self.give_session(from.conn, to),
            None => self.push_mesh(
                from.shard,
                ShardMsg::SessionWantedMsg {
                    conn: from.conn,
                    to: Box::new(to),
                },
            ),
        }
    }

    /// `conn`'s session is wanted by `to`: `conn`'s input ends now, and its
    /// task (or, detached, its hold) sends the session as it ends, with
    /// what its outbox still holds.
    pub(super) fn give_session(&mut self, conn: ConnId, to: Holder) {
        let Some(state) = self.conns.get_mut(&conn) else {
            // Gone (expired, or ended) meanwhile: no session.
            return self.send_session(to, None);
        };
        let earlier = state.handover.replace(Box::new(to));
        state.outbox.kick();
        super::conns::cut_input(state);
        if let Some(earlier) = earlier {
            // Asked twice (a third connection came): the earlier one gets
            // nothing.
            self.send_session(*earlier, None);
        }
    }

    /// Whether another connection asked for `conn`'s session.
    pub fn has_handover(&self, conn: ConnId) -> bool {
        self.conns
            .get(&conn)
            .is_some_and(|state| state.handover.is_some())
    }

    /// The socket of `conn`'s reader, or `None` once the reader ended.
    pub fn set_socket(&mut self, conn: ConnId, fd: Option<std::os::fd::RawFd>) {
        if let Some(state) = self.conns.get_mut(&conn) {
            state.socket = fd;
        }
    }

    /// Where `conn`'s session goes as it ends, if another connection
    /// asked for it.
    pub fn take_handover(&mut self, conn: ConnId) -> Option<Holder> {
        self.conns
            .get_mut(&conn)?
            .handover
            .take()
            .map(|holder| *holder)
    }

    /// Sends a session (or `None`: there is none) to the connection `to`;
    /// to another node, encoded, in parts.
    pub fn send_session(&mut self, to: Holder, session: Option<Parcel>) {
        match to.node {
            Some(node) => {
                let encoded = session.map(|parcel| homes::encode_session(&parcel));
                let part = homes::PART.min(self.session_body_max());
                for part in homes::session_parts(to, encoded, part) {
                    self.to_node(node, part);
                }
            }
            None if to.shard == self.id => self.receive_session(to.conn, session),
            None => self.push_mesh(
                to.shard,
                ShardMsg::SessionMsg {
                    conn: to.conn,
                    session,
                },
            ),
        }
    }

    /// The session `conn` asked for arrived: its writer picks it up.
    pub(super) fn receive_session(&mut self, conn: ConnId, session: Option<Parcel>) {
        self.forget_wants(conn);
        self.arrive(conn, Arrival::Session(session));
    }

    /// `conn` waits for no session from another node any more.
    pub(super) fn forget_wants(&mut self, conn: ConnId) {
        for link in self.links_mut() {
            if !link.wants.is_empty() {
                link.wants.retain(|waiting| *waiting != conn);
            }
        }
    }

    /// The longest body a `SESSION_REQUEST` of this node's may have: what
    /// its own frame limit takes (the nodes of a cluster share it).
    pub fn session_body_max(&self) -> usize {
        (self.config.max_frame as usize).saturating_sub(64)
    }

    fn arrive(&mut self, conn: ConnId, arrival: Arrival) {
        if let Some(state) = self.conns.get_mut(&conn) {
            state.arrived = Some(Box::new(arrival));
            state.outbox.kick();
        }
    }

    /// What came for `conn` (a session, or its claim's answer), once.
    pub fn take_arrival(&mut self, conn: ConnId) -> Option<Arrival> {
        self.conns
            .get_mut(&conn)?
            .arrived
            .take()
            .map(|arrival| *arrival)
    }

    // ----- across nodes ------------------------------------------------

    /// `conn` claims its client id at the id's home `node` (`claim`: the
    /// encoded request); the answer arrives as [`Arrival::Claimed`].
    pub fn claim_at_home(&mut self, node: SocketAddr, conn: ConnId, claim: (u8, Bytes)) {
        if self.nodes.is_none() {
            return self.arrive(conn, Arrival::Claimed(None));
        }
        let link = self.link(node);
        let request_id = link.request_id();
        link.claims.insert(request_id, conn);
        send_request(link, request_id, claim);
    }

    /// Tells `node` something about a session that needs no answer.
    pub fn to_node(&mut self, node: SocketAddr, request: (u8, Bytes)) {
        if self.nodes.is_some() {
            send_request(self.link(node), 0, request);
        }
    }

    /// A `SESSION_REPLY` on the link to `node`: a claim's answer.
    pub(super) fn session_reply(&mut self, node: SocketAddr, reply: SessionFrame) {
        let Some(conn) = self
            .link_mut(node)
            .and_then(|link| link.claims.remove(&reply.request_id))
        else {
            return;
        };
        match homes::decode_claimed(node, reply.kind, reply.body) {
            Ok((previous, claimed)) if !self.conns.contains_key(&conn) => {
                // Gone before the answer: the connection it took the id from
                // is closed all the same (it is no longer the holder).
                if let Some(previous) = previous {
                    self.take_over(previous);
                }
                drop(claimed);
            }
            Ok((_, claimed)) => self.arrive(conn, Arrival::Claimed(Some(claimed))),
            Err(err) => {
                warn!(%node, %err, "a node's answer to a client id claim is not understood");
                self.arrive(conn, Arrival::Claimed(None));
            }
        }
    }

    /// The link to `node` broke: the claims it carried get no answer.
    pub(super) fn fail_claims(&mut self, claims: Vec<ConnId>) {
        for conn in claims {
            self.arrive(conn, Arrival::Claimed(None));
        }
    }

    /// The link to a node broke: the connections waiting for a session
    /// from it get none (they keep the session's subscriptions).
    pub(super) fn fail_wants(&mut self, wants: Vec<ConnId>) {
        for conn in wants {
            self.receive_session(conn, None);
        }
    }

    /// A `SESSION_REQUEST` from another node's link `conn`.
    pub(super) fn handle_session_request(&mut self, conn: ConnId, request: SessionFrame) {
        let Some(peer) = self.peer_only(conn, request.request_id, "send SESSION_REQUEST") else {
            return;
        };
        let request_id = request.request_id;
        let order = match request.kind {
            homes::SESSION => self.gather_session(conn, request.body),
            _ => homes::on_request(self.mqtt.as_deref(), peer, request.kind, request.body),
        };
        match order {
            Ok(Order::Nothing) => {}
            Ok(Order::Reply(kind, body)) => {
                let frame = Frame::SessionReply(SessionFrame {
                    request_id,
                    kind,
                    body,
                });
                let mut encoded = bytes::BytesMut::new();
                frame.encode(&mut encoded);
                self.send(conn, crate::outbox::OutFrame::Encoded(encoded.freeze()));
            }
            Ok(Order::TakeOver(holder)) => self.take_over(holder),
            Ok(Order::Want { from, to }) => self.want_session(from, to),
            Ok(Order::Session { to, session }) => self.send_session(to, session),
            Err(err) => {
                warn!(%peer, %err, "a node's SESSION_REQUEST is not understood");
                self.send_error(
                    conn,
                    request_id,
                    ErrorCode::InvalidRequest,
                    format!("SESSION_REQUEST: {err}"),
                );
            }
        }
    }

    /// One part of a session another node sends: gathered until its last.
    /// A session that does not arrive whole (too large, or not understood)
    /// reaches its connection as none.
    fn gather_session(&mut self, link: ConnId, part: Bytes) -> Result<Order, homes::PeerError> {
        let (to, last, chunk) = homes::decode_part(part)?;
        let key = (link, to.shard, to.conn);
        // What all the sessions this link is sending hold, each part
        // counted with a header's worth more.
        let on_link: usize = self
            .session_parts
            .iter()
            .filter(|((from, ..), _)| *from == link)
            .map(|(_, gathering)| gathering.0)
            .sum();
        let gathering = self
            .session_parts
            .entry(key)
            .or_insert((0, Some(Vec::new())));
        if let Some(gathered) = &mut gathering.1 {
            let cost = chunk.len() + 64;
            if on_link + cost > homes::GATHER_MAX {
                warn!(
                    bytes = on_link + cost,
                    "sessions from another node are larger than this node takes; one is dropped"
                );
                gathering.1 = None;
            } else {
                gathering.0 += cost;
                gathered.push(chunk);
            }
        }
        if !last {
            return Ok(Order::Nothing);
        }
        let session = match self.session_parts.remove(&key).and_then(|(_, parts)| parts) {
            Some(parts) => homes::decode_session(parts).unwrap_or_else(|err| {
                warn!(%err, "a session from another node is not understood; it is dropped");
                None
            }),
            None => None,
        };
        debug!(conn = to.conn.0, "a session arrived from another node");
        Ok(Order::Session { to, session })
    }

    /// The members changed: the entries of this node's registry of MQTT
    /// client ids whose home is now another node go to that node (which
    /// keeps an entry it has already), so that one connection still holds
    /// each id.
    pub(super) fn move_client_ids(&mut self) {
        let (Some(settings), Some(nodes)) = (self.mqtt.clone(), self.nodes.as_ref()) else {
            return;
        };
        let placement = nodes.placement.clone();
        let moved = settings.moved_client_ids(|id| crate::mqtt::homes::home(&placement, id));
        if moved.is_empty() {
            return;
        }
        debug!(ids = moved.len(), "MQTT client ids sent to their new homes");
        for (home, request) in moved {
            self.to_node(home, request);
        }
    }

    /// Sends what this node's connections told its registry for client ids
    /// whose entries moved to another home (once per node: shard 0).
    pub(super) fn forward_client_ids(&mut self) {
        let Some(settings) = self.mqtt.clone().filter(|_| self.id == 0) else {
            return;
        };
        for (home, request) in settings.client_id_forwards(self.session_body_max()) {
            self.to_node(home, request);
        }
    }

    /// A link from another node closed: the sessions it was sending in
    /// parts are dropped.
    pub(super) fn forget_session_parts(&mut self, link: ConnId) {
        if self.session_parts.is_empty() {
            return;
        }
        let cut: Vec<(ShardId, ConnId)> = self
            .session_parts
            .keys()
            .filter(|(from, ..)| *from == link)
            .map(|(_, shard, conn)| (*shard, *conn))
            .collect();
        self.session_parts.retain(|(from, ..), _| *from != link);
        for (shard, conn) in cut {
            // Its connection waits for it: it gets none.
            self.send_session(Holder::local(shard, conn), None);
        }
    }
}

/// Writes a `SESSION_REQUEST` (`kind`, body) on `link` for its writer.
fn send_request(link: &mut crate::upstream::PeerLink, request_id: u32, request: (u8, Bytes)) {
    let (kind, body) = request;
    Frame::SessionRequest(SessionFrame {
        request_id,
        kind,
        body,
    })
    .encode(&mut link.out);
    link.kick();
}
