//! Sessions that outlive their connection: MQTT 3.1.1's `clean_session` 0
//! and 5.0's session expiry.
//!
//! A session lives in its connection's [`MqttConn`] and engine connection.
//! When the socket ends and the session is to outlive it, the connection
//! is *detached* (`crate::sessions`): it keeps its engine connection, and
//! so its subscriptions (wildcards included, and with them its topics),
//! and what arrives for it is queued, up to `queue_messages` per session
//! and `queue_bytes` over all detached sessions (past either, dropped,
//! counted and logged: MQTT has no gap notice).
//!
//! A connection that comes with the same client id and `clean_start` 0
//! takes the session over, on whichever shard it landed:
//!
//! 1. It subscribes to the session's filters first (the registry below
//!    keeps them, as the client gave them), so that from then on every
//!    message reaches it too; its `CONNACK` and deliveries wait.
//! 2. Once the engine answered those subscriptions, it asks the session's
//!    shard for the session (`ShardMsg::SessionWantedMsg`). The old
//!    connection closes (with `taken over`, if its client was still there)
//!    and sends its [`Session`] over: deliveries not yet acknowledged and
//!    the ones queued, the QoS 2 packet ids not yet released.
//! 3. The new connection sends its `CONNACK` (`session_present` 1), sends
//!    the unacknowledged deliveries again (`DUP`), then the queued ones,
//!    then its own, less those the old one had already (a message has one
//!    sequence number per topic, so the copies are known).
//!
//! Sessions live in memory: a broker restart ends them.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};

use bytes::{Bytes, BytesMut};
use corebus_mqtt::{self as mqtt, AckKind, ConnAck, MqttStr, Packet, Properties};
use corebus_net::{Epoch, Seq};
use rustc_hash::{FxHashMap, FxHashSet};
use tracing::{debug, warn};

use super::codes::encode_ack;
use super::outbound::{topic_hash, Delivery, InFlight, Outbound};
use super::{Holder, MqttConn, Phase};
use crate::mesh::Parcel;

/// How long sessions outlive their connections and what they may hold
/// meanwhile, for a whole MQTT listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionLimits {
    /// The longest a session outlives its connection, in seconds: a client
    /// asking for longer (5.0), or for a 3.1.1 persistent session, gets
    /// this. 0: no session outlives its connection.
    pub expiry_max_secs: u32,
    /// Sessions without a connection kept at once, broker-wide; a session
    /// past it ends with its connection (logged).
    pub max_detached: usize,
    /// Messages one session without a connection queues.
    pub queue_messages: usize,
    /// Bytes (topic names and bodies) all sessions without a connection
    /// queue together.
    pub queue_bytes: usize,
}

impl Default for SessionLimits {
    fn default() -> SessionLimits {
        SessionLimits {
            expiry_max_secs: 2 * 3600,
            max_detached: 10_000,
            queue_messages: 1_000,
            queue_bytes: 64 << 20,
        }
    }
}

/// What a session's connection hands to the one that takes it over.
#[derive(Debug)]
pub(crate) struct Session {
    /// Deliveries sent and not yet acknowledged, in the order sent.
    pub(super) in_flight: Vec<(u16, InFlight)>,
    /// Deliveries queued for the client, in order.
    pub(super) waiting: VecDeque<Delivery>,
    /// QoS 2 publishes of the client's received and not yet released.
    pub(super) unreleased: FxHashSet<u16>,
    /// The origin its `no_local` filters know its publishes by.
    pub(super) origin: Option<u64>,
    pub(super) next_packet_id: u16,
    /// The last messages sent to the client (topic hash, epoch, seq).
    pub(super) recent: Vec<(u64, Epoch, Seq)>,
}

/// One filter of a session, as its client subscribed to it.
#[derive(Debug, Clone)]
pub(super) struct Saved {
    pub(super) subscription: mqtt::Subscription,
    pub(super) identifier: Option<u32>,
}

/// A client id's holder, and the session that outlives it, if any.
#[derive(Debug)]
pub(crate) struct Record {
    pub(super) holder: Holder,
    /// The session outlives its connection (it may be detached now).
    pub(super) persistent: bool,
    pub(super) filters: Vec<Saved>,
}

/// What a connection finds when it takes a client id.
#[derive(Debug)]
pub(crate) struct Claimed {
    /// The connection (or detached session) that held it.
    pub(crate) previous: Holder,
    /// That session's filters, when it outlives its connection.
    pub(super) filters: Option<Vec<Saved>>,
}

/// What a connection tells its client id's home, another node (encoded by
/// `homes::wire::encode`).
#[derive(Debug)]
pub(crate) enum ToHome {
    /// It takes the id.
    Claim(Record),
    /// Its entry changed.
    Save(Record),
    /// It ended.
    Release(Holder),
}

/// The registry's entries, and where the ones that moved went.
#[derive(Debug, Default)]
struct Registry {
    held: FxHashMap<String, Record>,
    /// Ids whose entries went to another home at the last member change:
    /// what their holders here still tell this node is passed on.
    moved: FxHashMap<String, SocketAddr>,
    /// Requests passed on, for the engine to send.
    forwards: Vec<(SocketAddr, String, ToHome)>,
}

/// Which connection holds each MQTT client id, broker-wide (MQTT-3.1.4-2
/// in 3.1.1, MQTT-3.1.4-3 in 5.0), with the filters of sessions that
/// outlive their connection; and what detached sessions hold.
#[derive(Debug, Default)]
pub(super) struct ClientIds {
    registry: Mutex<Registry>,
    /// Sessions without a connection.
    detached: AtomicUsize,
    /// Bytes they queue.
    queued: AtomicUsize,
}

impl ClientIds {
    fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `holder` takes `id`; what held it, if another connection.
    pub(super) fn claim(&self, id: &str, record: Record) -> Option<Claimed> {
        let holder = record.holder;
        let mut registry = self.lock();
        registry.moved.remove(id);
        let previous = registry.held.insert(id.to_owned(), record)?;
        (previous.holder != holder).then(|| Claimed {
            previous: previous.holder,
            filters: previous.persistent.then_some(previous.filters),
        })
    }

    /// Records `holder`'s filters and whether its session persists, if it
    /// still holds `id`.
    pub(super) fn save(&self, id: &str, holder: Holder, persistent: bool, filters: Vec<Saved>) {
        let mut registry = self.lock();
        if let Some(record) = registry.held.get_mut(id) {
            if record.holder == holder {
                record.persistent = persistent;
                record.filters = filters;
            }
        } else if let Some(home) = registry.moved.get(id).copied() {
            let record = Record {
                holder,
                persistent,
                filters,
            };
            registry
                .forwards
                .push((home, id.to_owned(), ToHome::Save(record)));
        }
    }

    /// `id`'s entry, sent by its former home: kept unless `id` has one here
    /// already (a claim made here since is newer).
    pub(super) fn adopt(&self, id: &str, record: Record) {
        let mut registry = self.lock();
        registry.moved.remove(id);
        registry.held.entry(id.to_owned()).or_insert(record);
    }

    /// What holders here told this node for ids whose entries moved away,
    /// to be sent to their homes.
    pub(super) fn take_forwards(&self) -> Vec<(SocketAddr, String, ToHome)> {
        std::mem::take(&mut self.lock().forwards)
    }

    /// Takes out the entries whose home (`home_of`) is another node now:
    /// (that node, the entry's id, the entry).
    pub(super) fn moved_away(
        &self,
        home_of: impl Fn(&str) -> Option<std::net::SocketAddr>,
    ) -> Vec<(std::net::SocketAddr, String, Record)> {
        let mut registry = self.lock();
        let ids: Vec<(String, std::net::SocketAddr)> = registry
            .held
            .keys()
            .filter_map(|id| home_of(id).map(|home| (id.clone(), home)))
            .collect();
        // Only the last change's: a holder from before two changes is rare.
        registry.moved.clear();
        ids.into_iter()
            .filter_map(|(id, home)| {
                let record = registry.held.remove(&id)?;
                registry.moved.insert(id.clone(), home);
                Some((home, id, record))
            })
            .collect()
    }

    /// `holder` ends: `id` is free, unless another connection took it.
    pub(super) fn release(&self, id: &str, holder: Holder) {
        let mut registry = self.lock();
        match registry.held.get(id) {
            Some(record) if record.holder == holder => {
                registry.held.remove(id);
            }
            Some(_) => {}
            None => {
                if let Some(home) = registry.moved.get(id).copied() {
                    registry
                        .forwards
                        .push((home, id.to_owned(), ToHome::Release(holder)));
                }
            }
        }
    }
}

/// What the old connection is asked for, once the new one's subscriptions
/// are in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Wanted {
    /// The connection holding the session.
    pub(crate) from: Holder,
}

impl MqttConn {
    /// Subscribes to a session's filters again, without their retained
    /// messages; their native answers complete the `SUBSCRIBE` of packet
    /// id 0 (no client uses 0), which sends no `SUBACK` but asks for the
    /// session.
    pub(super) fn restore(&mut self, filters: Vec<Saved>, frames: &mut BytesMut) {
        if filters.is_empty() {
            self.wanted = self.resume_from.take().map(|from| Wanted { from });
            return;
        }
        let identifiers: Vec<(MqttStr, Option<u32>)> = filters
            .iter()
            .map(|saved| (saved.subscription.filter.clone(), saved.identifier))
            .collect();
        let subscribe = mqtt::Subscribe {
            packet_id: 0,
            properties: Properties::default(),
            filters: filters
                .into_iter()
                .map(|saved| mqtt::Subscription {
                    retain_handling: mqtt::RetainHandling::Never,
                    ..saved.subscription
                })
                .collect(),
        };
        self.on_subscribe(subscribe, frames);
        for (filter, identifier) in identifiers {
            for id in self.filters.get(filter.as_str()).into_iter().flatten() {
                if let Some(sub) = self.subs.get_mut(id) {
                    sub.identifier = identifier;
                }
            }
        }
    }

    /// The restored subscriptions are answered: the session is asked for.
    pub(super) fn restored(&mut self) {
        self.wanted = self.resume_from.take().map(|from| Wanted { from });
    }

    /// The old connection to ask for the session, once (see
    /// [`MqttConn::claim_client_id`]).
    pub(crate) fn take_wanted(&mut self) -> Option<Wanted> {
        self.wanted.take()
    }

    /// The connection whose session this one was still to ask for, as it
    /// ends before it could.
    pub(crate) fn abandon_resume(&mut self) -> Option<Holder> {
        let wanted = self.wanted.take().map(|wanted| wanted.from);
        wanted.or(self.resume_from.take())
    }

    /// Whether the `CONNACK` waits for an old connection's session.
    pub(super) fn is_resuming(&self) -> bool {
        self.resume_from.is_some()
            || self.wanted.is_some()
            || self.phase == Phase::Resuming
            || self.is_claiming()
    }

    /// The filters the client holds, as it subscribed to them.
    pub(super) fn saved_filters(&self) -> Vec<Saved> {
        self.filters
            .iter()
            .filter_map(|(text, ids)| {
                let sub = self.subs.get(ids.first()?)?;
                Some(Saved {
                    subscription: mqtt::Subscription {
                        filter: MqttStr::new(text)?,
                        qos: sub.qos,
                        no_local: sub.no_local,
                        retain_as_published: sub.retain_as_published,
                        retain_handling: mqtt::RetainHandling::Never,
                    },
                    identifier: sub.identifier,
                })
            })
            .collect()
    }

    /// The client's filters changed: the registry's copy follows them if
    /// the session outlives the connection (a connection whose session
    /// does not takes no lock for it).
    pub(super) fn filters_changed(&mut self) {
        if self.session_persists() {
            self.save_filters();
        }
    }

    /// Keeps the registry's copy of the session's filters current (a new
    /// connection subscribes to them before it takes the session over).
    pub(super) fn save_filters(&mut self) {
        if let Some(holder) = self.holder {
            let persistent = self.session_persists();
            let filters = if persistent {
                self.saved_filters()
            } else {
                Vec::new()
            };
            let record = Record {
                holder,
                persistent,
                filters,
            };
            if let Some(record) = self.save_at_home(record) {
                self.settings.clients.save(
                    &self.client_id,
                    record.holder,
                    record.persistent,
                    record.filters,
                );
            }
        }
    }

    /// Whether the session outlives the connection.
    pub(crate) fn session_persists(&self) -> bool {
        self.expiry_secs > 0
    }

    /// The client's `DISCONNECT` sets a new session expiry (5.0): taken
    /// as given, up to the listener's longest, unless the `CONNECT` asked
    /// for none, which a `DISCONNECT` cannot change (MQTT-3.14.2.2.2).
    pub(super) fn expiry_on_disconnect(&mut self, seconds: Option<u32>) {
        if let Some(seconds) = seconds {
            if self.expiry_secs > 0 || seconds == 0 {
                self.expiry_secs = seconds.min(self.settings.sessions.expiry_max_secs);
                self.save_filters();
            }
        }
    }

    /// The socket ended: the connection is detached if its session
    /// outlives it and the broker may hold one more (`true`); its
    /// deliveries are queued from now on.
    pub(crate) fn detach(&mut self, now_ms: u64) -> bool {
        if !self.session_persists() || !self.accepted {
            return false;
        }
        let limit = self.settings.sessions.max_detached;
        let admitted = self
            .settings
            .clients
            .detached
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < limit).then_some(n + 1)
            })
            .is_ok();
        if !admitted {
            warn!(
                client = %self.client_id,
                limit,
                "MQTT session ends with its connection: the broker holds its maximum of sessions \
                 without one (mqtt_max_sessions)"
            );
            return false;
        }
        self.detached_at = Some(now_ms);
        // Its client is gone, not its session: what the engine sends is
        // taken in (and deliveries queued) again.
        self.phase = Phase::Open;
        self.pending.clear();
        if let Some(rare) = self.rare.as_mut() {
            rare.held_output.clear();
        }
        self.charge_held();
        true
    }

    /// What the session holds from its connection's life (deliveries in
    /// flight and waiting) counts against the listener's byte limit from
    /// now on; past it, the newest are dropped (and counted).
    fn charge_held(&mut self) {
        let held = self.outbound_bytes + self.waiting_bytes;
        let settings = self.settings.clone();
        let budget = &settings.clients.queued;
        let before = budget.fetch_add(held, Ordering::AcqRel);
        self.charged += held;
        let mut over = (before + held).saturating_sub(settings.sessions.queue_bytes);
        while over > 0 {
            let freed = match self.waiting.pop_back() {
                Some(delivery) => {
                    self.waiting_bytes -= delivery.len();
                    delivery.len()
                }
                None => {
                    let newest = self
                        .outbound
                        .iter()
                        .max_by_key(|(_, entry)| entry.order)
                        .map(|(id, _)| *id);
                    let Some(id) = newest else { break };
                    let len = self.outbound.get(&id).map_or(0, |e| e.delivery.len());
                    self.untrack(id);
                    len
                }
            };
            self.session_drops += 1;
            self.dropped += 1;
            budget.fetch_sub(freed, Ordering::AcqRel);
            self.charged -= freed;
            over = over.saturating_sub(freed);
        }
    }

    /// Another connection takes the session over while this one may still
    /// have its client: from now on deliveries are queued for the session,
    /// and a 5.0 client is told why it is closed (`DISCONNECT` 0x8E).
    pub(crate) fn begin_handover(&mut self) {
        if self.handing_over || self.is_detached() {
            self.handing_over = true;
            return;
        }
        self.handing_over = true;
        self.phase = Phase::Open;
        self.pending.clear();
        if let Some(rare) = self.rare.as_mut() {
            rare.held_output.clear();
        }
        self.disconnect(super::codes::reason::SESSION_TAKEN_OVER);
    }

    /// The bytes still to be written to the client before its socket
    /// closes (a handover's `DISCONNECT`).
    pub(crate) fn take_last_words(&mut self) -> Bytes {
        std::mem::take(&mut self.pending).freeze()
    }

    /// Messages dropped while detached since last asked, to be counted.
    pub(crate) fn take_drops(&mut self) -> u64 {
        std::mem::take(&mut self.session_drops)
    }

    /// Whether the connection is detached: deliveries are queued.
    pub(crate) fn is_detached(&self) -> bool {
        self.detached_at.is_some() || self.handing_over
    }

    /// When the detached session expires (Unix ms).
    pub(crate) fn expires_at_ms(&self) -> Option<u64> {
        self.detached_at
            .map(|at| at.saturating_add(u64::from(self.expiry_secs) * 1000))
    }

    /// The socket ended at `now_ms` without a clean `DISCONNECT`: the will
    /// (if any) is due after its delay.
    pub(crate) fn lost(&mut self, now_ms: u64) {
        if self.will.is_some() {
            self.lost_at = Some(now_ms);
        }
    }

    /// When the will is due (Unix ms), if there is one and its connection
    /// was lost.
    pub(crate) fn will_due_ms(&self) -> Option<u64> {
        let lost = self.lost_at.filter(|_| self.will.is_some())?;
        Some(lost.saturating_add(u64::from(self.will_delay_secs) * 1000))
    }

    /// The will, when it is due at `now_ms`, or at once when `session_over`
    /// (a will's delay ends with its session, MQTT-3.1.2-8).
    pub(crate) fn take_due_will(
        &mut self,
        now_ms: u64,
        session_over: bool,
    ) -> Option<corebus_net::Publish> {
        let due = session_over || self.will_due_ms().is_some_and(|at| at <= now_ms);
        if due && self.lost_at.is_some() {
            self.will.take().map(|will| *will)
        } else {
            None
        }
    }

    /// The session is taken over: a will not yet due is not published
    /// (MQTT-3.1.3-9 in 5.0), and the session's state goes to the new
    /// connection; `None` when it does not outlive this connection.
    pub(crate) fn take_session(&mut self) -> Option<Parcel> {
        self.will = None;
        if !self.session_persists() {
            return None;
        }
        self.uncharge();
        let mut in_flight: Vec<(u16, InFlight)> = self.outbound.drain().collect();
        self.outbound_bytes = 0;
        in_flight.sort_by_key(|(_, entry)| entry.order);
        Some(Parcel::new(Session {
            in_flight,
            waiting: std::mem::take(&mut self.waiting),
            unreleased: self
                .rare
                .as_mut()
                .map(|rare| std::mem::take(&mut rare.unreleased))
                .unwrap_or_default(),
            origin: self.origin,
            next_packet_id: self.next_packet_id,
            recent: self
                .rare
                .as_mut()
                .map(|rare| std::mem::take(&mut rare.recent).into())
                .unwrap_or_default(),
        }))
    }

    /// Gives back what the detached session counted against the
    /// listener's limits.
    pub(super) fn uncharge(&mut self) {
        if self.detached_at.take().is_some() {
            self.settings
                .clients
                .detached
                .fetch_sub(1, Ordering::AcqRel);
        }
        if self.charged > 0 {
            self.settings
                .clients
                .queued
                .fetch_sub(self.charged, Ordering::AcqRel);
            self.charged = 0;
        }
    }

    /// Queues a delivery for a detached session, within its limits.
    pub(super) fn queue_detached(&mut self, delivery: Delivery) {
        let len = delivery.len();
        let limits = self.settings.sessions;
        let budget = &self.settings.clients.queued;
        let room = self.waiting.len() < limits.queue_messages
            && budget
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    (n + len <= limits.queue_bytes).then_some(n + len)
                })
                .is_ok();
        if !room {
            if self.dropped == 0 {
                warn!(
                    client = %self.client_id,
                    queued = self.waiting.len(),
                    "MQTT session without a connection is full: messages for it dropped \
                     (mqtt_session_queue, mqtt_session_queue_bytes)"
                );
            }
            self.dropped += 1;
            self.session_drops += 1;
            return;
        }
        self.charged += len;
        self.waiting_bytes += len;
        self.waiting.push_back(delivery.owned());
    }

    /// The session of the connection this one took over arrived (or
    /// `None`: it had ended meanwhile, and only its subscriptions, taken
    /// over first, are left): the held `CONNACK` goes out, then
    /// the deliveries it had not finished, again, then the ones it queued,
    /// then this connection's own, less copies.
    ///
    /// A connection that lost its own client meanwhile (detached, or
    /// ending) keeps it all for the next one.
    pub(crate) fn resume(&mut self, session: Option<Parcel>) {
        let session = session.and_then(|parcel| parcel.take::<Session>());
        let live = self.phase == Phase::Resuming && !self.is_detached();
        if self.phase == Phase::Resuming {
            self.phase = Phase::Open;
        }
        let mut out = BytesMut::new();
        if live {
            // The session's subscriptions are this connection's now: even if
            // the old connection ended meanwhile, the session is present.
            self.encode_connack(true, &mut out);
            if let Some(rare) = self.rare.as_mut() {
                out.extend_from_slice(&std::mem::take(&mut rare.held_output));
            }
        }
        if let Some(session) = session {
            let Session {
                in_flight,
                waiting,
                unreleased,
                origin,
                next_packet_id,
                recent,
            } = session;
            debug!(
                client = %self.client_id,
                in_flight = in_flight.len(),
                queued = waiting.len(),
                "MQTT session resumed"
            );
            // The last message of each topic the old connection had: this
            // one's copies up to it are dropped.
            let mut last: FxHashMap<u64, (Epoch, Seq)> = FxHashMap::default();
            let positions = in_flight
                .iter()
                .map(|(_, entry)| &entry.delivery)
                .chain(waiting.iter())
                .map(|delivery| {
                    let (epoch, seq) = delivery.position();
                    (topic_hash(delivery.topic()), epoch, seq)
                })
                .chain(recent.iter().copied());
            for (topic, epoch, seq) in positions {
                let entry = last.entry(topic).or_insert((epoch, seq));
                if (epoch, seq) > *entry {
                    *entry = (epoch, seq);
                }
            }
            let own = std::mem::take(&mut self.waiting);
            let own: Vec<Delivery> = own
                .into_iter()
                .filter(|delivery| {
                    let (epoch, seq) = delivery.position();
                    !last.get(&topic_hash(delivery.topic())).is_some_and(
                        |(last_epoch, last_seq)| *last_epoch == epoch && seq <= *last_seq,
                    )
                })
                .collect();
            if !unreleased.is_empty() {
                self.rare().unreleased.extend(unreleased);
            }
            if origin.is_some() {
                self.origin = origin;
            }
            self.next_packet_id = next_packet_id;
            let mut segments = Vec::new();
            // Past the new client's receive maximum, unfinished deliveries
            // wait with the rest (and go out under new packet ids).
            let mut again = Vec::new();
            for (packet_id, entry) in in_flight {
                if !live {
                    self.track(packet_id, entry);
                } else if entry.state == Outbound::Complete || self.has_room() {
                    self.send_again(packet_id, entry, &mut out, &mut segments);
                } else {
                    again.push(entry.delivery);
                }
            }
            self.waiting = again.into_iter().chain(waiting).collect();
            self.waiting.extend(own);
            self.waiting_bytes = self.waiting.iter().map(Delivery::len).sum();
            self.send_waiting(&mut out, &mut segments);
            // Rare: one buffer is simpler than segments.
            for segment in segments {
                self.pending.extend_from_slice(&segment);
            }
        }
        self.pending.extend_from_slice(&out);
    }

    /// Sends an unfinished delivery of the old connection again, with its
    /// packet id: a `PUBLISH` with `DUP`, or the `PUBREL` it was at.
    fn send_again(
        &mut self,
        packet_id: u16,
        entry: InFlight,
        out: &mut BytesMut,
        segments: &mut Vec<Bytes>,
    ) {
        if entry.state == Outbound::Complete {
            encode_ack(self.version, AckKind::PubRel, packet_id, 0, out);
            self.track(packet_id, entry);
            return;
        }
        self.publish_as(entry.delivery, Some(packet_id), true, out, segments);
    }

    /// The `CONNACK` of an accepted `CONNECT`.
    pub(super) fn encode_connack(&mut self, session_present: bool, out: &mut BytesMut) {
        let properties = self
            .connack_properties
            .take()
            .map(|properties| *properties)
            .unwrap_or_default();
        Packet::ConnAck(ConnAck {
            session_present,
            code: 0,
            properties,
        })
        .encode(self.version, out);
    }

    /// Whether deliveries wait instead of going out: the connection is
    /// detached, or its `CONNACK` waits for an old connection's session.
    pub(super) fn holds_deliveries(&self) -> bool {
        self.is_detached() || self.is_resuming()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use corebus_mqtt::{QoS, Version};
    use corebus_net::Body;
    use std::sync::Arc;

    use crate::mqtt::MqttSettings;

    fn delivery(seq: Seq) -> Delivery {
        Delivery::new_for_test(
            "t",
            Body::plain(format!("m{seq}").as_bytes()),
            QoS::AtLeastOnce,
            7,
            seq,
        )
    }

    /// The payloads of the `PUBLISH`es in `bytes`, and whether each had DUP.
    fn publishes(bytes: &[u8]) -> Vec<(String, bool)> {
        let mut input = BytesMut::from(bytes);
        let mut out = Vec::new();
        while let Ok(mqtt::Check::Complete { len }) = mqtt::check(&input, usize::MAX) {
            let packet = input.split_to(len).freeze();
            if let Ok(Packet::Publish(publish)) = mqtt::decode(packet, Version::V311) {
                out.push((
                    String::from_utf8_lossy(&publish.payload).into_owned(),
                    publish.dup,
                ));
            }
        }
        out
    }

    #[test]
    fn a_resumed_session_sends_the_old_connections_messages_then_its_own_without_copies() {
        let settings = Arc::new(MqttSettings::new("mqtt".into(), 100, 1 << 20));
        let mut conn = MqttConn::new(settings);
        conn.phase = Phase::Resuming;
        conn.accepted = true;
        // What this connection got while it waited: 3 and 4 came to the old
        // one too.
        for seq in [3, 4, 5, 6] {
            conn.waiting.push_back(delivery(seq));
        }
        let in_flight = vec![(
            9,
            InFlight {
                state: Outbound::Ack,
                delivery: delivery(2),
                order: 1,
            },
        )];
        let session = Session {
            in_flight,
            waiting: [delivery(3), delivery(4)].into_iter().collect(),
            unreleased: FxHashSet::default(),
            origin: None,
            next_packet_id: 9,
            recent: Vec::new(),
        };
        conn.resume(Some(Parcel::new(session)));
        let sent = publishes(&conn.pending);
        let expect: Vec<(String, bool)> = [
            ("m2", true),
            ("m3", false),
            ("m4", false),
            ("m5", false),
            ("m6", false),
        ]
        .into_iter()
        .map(|(payload, dup)| (payload.to_owned(), dup))
        .collect();
        assert_eq!(sent, expect);
        assert_eq!(conn.phase, Phase::Open);
    }
}
