//! MQTT sessions in a cluster. A client id has a *home*: the node that
//! rendezvous hashing gives it over the members (as a topic named by the
//! client id in the empty namespace would be placed: see [`home`]). The
//! home's registry (`session::ClientIds`) says which connection holds the
//! id, on whichever node, and keeps a persistent session's filters, so
//! that one connection holds a client id cluster-wide and a session can be
//! taken over from any node.
//!
//! What the nodes tell each other goes in `SESSION_REQUEST` frames on the
//! sender's link (their `kind` byte is one of the constants below; the
//! layouts are this module's, for nodes of one version), and a claim's
//! answer in a `SESSION_REPLY`:
//!
//! - [`CLAIM`]: a connection takes a client id (the connection, whether
//!   its session persists, the id, its filters); answered [`CLAIMED`]: the
//!   connection that held it, if another, and its filters if its session
//!   persists. The answering node names that connection relative to the
//!   asker: on the asking node, on the answering node, or on a third one
//!   (with its client address).
//! - [`SAVE`] and [`RELEASE`]: the holder's filters changed, or it ended.
//! - [`TAKE_OVER`]: close this connection of yours (another took its id).
//! - [`WANT`]: send this connection's session to mine.
//! - [`SESSION`]: a session, in parts (each under every node's frame
//!   limit), for a connection of the receiver.

pub(crate) mod wire;

#[cfg(test)]
mod tests;

use std::net::SocketAddr;

use bytes::BytesMut;
use corebus_mqtt::{self as mqtt, ConnAck, Packet, Properties};
use tracing::warn;

pub(crate) use super::session::ToHome;
use super::session::{Claimed, Record};
use super::{Holder, MqttConn, Phase};
use crate::cluster::Placement;
use crate::mesh::Parcel;

/// The home of `client_id` among `placement`'s members, when it is another
/// node: the member that owns the key (empty namespace, client id).
pub(crate) fn home(placement: &Placement, client_id: &str) -> Option<SocketAddr> {
    let hash = corebus_net::key_hash(b"", client_id.as_bytes());
    let index = corebus_net::routing::owner_node(hash, &placement.keys)?;
    placement.clients[index]
}

/// A connection whose client id's home is another node.
#[derive(Debug)]
pub(super) struct Remote {
    home: SocketAddr,
    /// Waiting for the home's answer to the claim (the `CONNACK` waits).
    claiming: bool,
    /// The home could not be asked: the connection was refused.
    refused: bool,
    /// What to tell the home next (updates of the entry, its release).
    pub(super) to_home: Vec<ToHome>,
}

/// How a connection takes its client id.
#[derive(Debug)]
pub(crate) enum Claim {
    /// In this node's registry: the connection that held it, to be closed,
    /// if any (see [`MqttConn::claim_client_id`]).
    Here(Option<Holder>),
    /// At the id's home, another node: this request goes there, and its
    /// answer to [`MqttConn::claimed`].
    AtHome(SocketAddr, ToHome),
}

impl MqttConn {
    /// The handshake of `holder` succeeded: it takes its client id over,
    /// here, or, when `home` is another node, there ([`Claim::AtHome`]).
    /// Here, it returns the connection that held it, to be closed; or,
    /// when this connection resumes that one's session, `None`: the native
    /// frames of its subscriptions are appended to `frames`, and the
    /// session is asked for once they are answered
    /// ([`MqttConn::take_wanted`]).
    pub(crate) fn claim_client_id(
        &mut self,
        holder: Holder,
        home: Option<SocketAddr>,
        frames: &mut BytesMut,
    ) -> Claim {
        self.holder = Some(holder);
        let persistent = self.session_persists();
        let record = Record {
            holder,
            persistent,
            filters: self.saved_filters(),
        };
        if let Some(home) = home {
            self.remote = Some(Box::new(Remote {
                home,
                claiming: true,
                refused: false,
                to_home: Vec::new(),
            }));
            return Claim::AtHome(home, ToHome::Claim(record));
        }
        let claimed = self.settings.clients.claim(&self.client_id, record);
        Claim::Here(self.take_claimed(claimed, frames))
    }

    fn take_claimed(&mut self, claimed: Option<Claimed>, frames: &mut BytesMut) -> Option<Holder> {
        let claimed = claimed?;
        match claimed.filters {
            Some(filters) if !self.clean_start => {
                self.resume_from = Some(claimed.previous);
                self.restore(filters, frames);
                None
            }
            _ => Some(claimed.previous),
        }
    }

    /// The home's answer to this connection's claim (`None`: the home could
    /// not be asked, and the connection is refused as unavailable). As
    /// [`MqttConn::claim_client_id`]: `Ok` with the connection to close,
    /// if any, and the frames of a session's subscriptions in `frames`.
    pub(crate) fn claimed(
        &mut self,
        answer: Option<Parcel>,
        frames: &mut BytesMut,
    ) -> Result<Option<Holder>, ()> {
        if let Some(remote) = self.remote.as_mut() {
            remote.claiming = false;
            remote.refused = answer.is_none();
        }
        let Some(parcel) = answer else {
            self.refuse_unavailable();
            return Err(());
        };
        let claimed = parcel.take::<Option<Claimed>>().flatten();
        let previous = self.take_claimed(claimed, frames);
        if self.phase == Phase::Resuming && self.resume_from.is_none() && self.wanted.is_none() {
            // The CONNACK waited for the answer only.
            self.phase = Phase::Open;
            let mut out = BytesMut::new();
            self.encode_connack(false, &mut out);
            if let Some(rare) = self.rare.as_mut() {
                out.extend_from_slice(&std::mem::take(&mut rare.held_output));
            }
            self.pending.extend_from_slice(&out);
        }
        Ok(previous)
    }

    /// The client id's home did not answer: the client is told the server
    /// is unavailable (it may try again), and the connection ends.
    fn refuse_unavailable(&mut self) {
        warn!(
            client = %self.client_id,
            "MQTT connection refused: its client id's home node did not answer"
        );
        self.accepted = false;
        if matches!(self.phase, Phase::Connecting | Phase::Resuming) {
            let code = match self.version {
                mqtt::Version::V5 => super::codes::reason::SERVER_UNAVAILABLE,
                _ => super::codes::v3::UNAVAILABLE,
            };
            self.pending.clear();
            Packet::ConnAck(ConnAck {
                session_present: false,
                code,
                properties: Properties::default(),
            })
            .encode(self.version, &mut self.pending);
        }
        self.phase = Phase::Done;
    }

    /// The client id (once the `CONNECT` came).
    pub(crate) fn client_id(&self) -> &str {
        &self.client_id
    }

    /// What this connection has to tell its client id's home node, when
    /// that is another node.
    pub(crate) fn take_home_requests(&mut self) -> Option<(SocketAddr, Vec<ToHome>)> {
        let remote = self.remote.as_mut()?;
        if remote.to_home.is_empty() {
            return None;
        }
        Some((remote.home, std::mem::take(&mut remote.to_home)))
    }

    /// Whether the connection was refused because its client id's home
    /// could not be asked (a session without its client ends then too).
    pub(crate) fn is_refused(&self) -> bool {
        self.remote.as_ref().is_some_and(|remote| remote.refused)
    }

    /// Whether the `CONNACK` waits for the home's answer to the claim.
    pub(super) fn is_claiming(&self) -> bool {
        self.remote.as_ref().is_some_and(|remote| remote.claiming)
    }

    /// Applies what was kept for the client id's home to this node's
    /// registry: the home is here now.
    pub(crate) fn apply_here(&mut self, requests: Vec<ToHome>) {
        for request in requests {
            match request {
                ToHome::Save(record) => self.settings.clients.save(
                    &self.client_id,
                    record.holder,
                    record.persistent,
                    record.filters,
                ),
                ToHome::Release(holder) => self.settings.clients.release(&self.client_id, holder),
                // A claim is not kept: it goes out at once.
                ToHome::Claim(_) => {}
            }
        }
    }

    /// Keeps `record` for the client id's home when that is another node;
    /// otherwise gives it back, to be saved here.
    pub(super) fn save_at_home(&mut self, record: Record) -> Option<Record> {
        match self.remote.as_mut() {
            Some(remote) => {
                // Each carries the whole entry: only the last counts.
                remote
                    .to_home
                    .retain(|request| !matches!(request, ToHome::Save(_)));
                remote.to_home.push(ToHome::Save(record));
                None
            }
            None => Some(record),
        }
    }

    /// Keeps the release of `holder` for the client id's home when that is
    /// another node; otherwise gives it back, to be released here.
    pub(super) fn release_at_home(&mut self, holder: Holder) -> Option<Holder> {
        match self.remote.as_mut() {
            Some(remote) => {
                remote.to_home.push(ToHome::Release(holder));
                None
            }
            None => Some(holder),
        }
    }
}
