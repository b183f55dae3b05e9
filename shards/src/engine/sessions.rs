//! MQTT sessions that outlive their connection, as the engine sees them
//! (see `crate::mqtt::session`): a detached connection keeps its
//! subscriptions and sends no heartbeat; a new connection asks the old one
//! for its session, which the old one's task sends over when it ends.

use super::{ConnId, Liveness, Shard};
use crate::mesh::Parcel;
use crate::mesh::ShardMsg;
use crate::routing::ShardId;

/// A connection, broker-wide: its shard and its id there.
type Holder = (ShardId, ConnId);

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

    /// `to` takes over the session of `from`: `from` is closed with
    /// `taken_over`, and its task sends the session to `to` as it ends.
    pub fn want_session(&mut self, from: Holder, to: Holder) {
        let (shard, conn) = from;
        if shard == self.id {
            self.give_session(conn, to);
        } else {
            self.push_mesh(shard, ShardMsg::SessionWantedMsg { conn, to });
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
        let earlier = state.handover.replace(to);
        state.outbox.kick();
        super::conns::cut_input(state);
        if let Some(earlier) = earlier {
            // Asked twice (a third connection came): the earlier one gets
            // nothing.
            self.send_session(earlier, None);
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
        self.conns.get_mut(&conn)?.handover.take()
    }

    /// Sends a session (or `None`: there is none) to the connection `to`.
    pub fn send_session(&mut self, to: Holder, session: Option<Parcel>) {
        let (shard, conn) = to;
        if shard == self.id {
            self.receive_session(conn, session);
        } else {
            self.push_mesh(shard, ShardMsg::SessionMsg { conn, session });
        }
    }

    /// The session `conn` asked for arrived: its writer picks it up.
    pub(super) fn receive_session(&mut self, conn: ConnId, session: Option<Parcel>) {
        if let Some(state) = self.conns.get_mut(&conn) {
            state.arrived = Some(session);
            state.outbox.kick();
        }
    }

    /// The session `conn` asked for, once it arrived (`Some(None)`: there
    /// was none).
    pub fn take_arrived_session(&mut self, conn: ConnId) -> Option<Option<Parcel>> {
        self.conns.get_mut(&conn)?.arrived.take()
    }
}
