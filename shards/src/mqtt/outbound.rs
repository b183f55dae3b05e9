//! What an MQTT client receives: each batch of the engine's native frames
//! becomes MQTT packets (the `CONNACK`, acknowledgements, and deliveries at
//! their QoS, within the client's receive maximum, with subscription
//! identifiers and topic aliases).

use bytes::{Bytes, BytesMut};
use corebus_mqtt::{
    self as mqtt, Ack, AckKind, ConnAck, Disconnect, MqttStr, Packet, Properties, QoS, Version,
};
use corebus_net::{Epoch, ErrorFrame, Frame, PayloadFormat, Seq};
use rustc_hash::FxHashMap;
use tracing::{debug, warn};

use super::codes::{
    ack_for, connect_code, disconnect_code, encode_ack, reason, reason_text, request_code, v3,
};
use super::props::set_properties;
use super::{MqttConn, Phase, Request, NATIVE_OVERHEAD, SHARE_FROM};
use crate::auth::unix_now_ms;
use crate::framing::{frames_of, Wrapped};

/// Where a delivery at QoS 1 or 2 is in its exchange with the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outbound {
    /// QoS 1: waiting for `PUBACK`.
    Ack,
    /// QoS 2: waiting for `PUBREC`.
    Received,
    /// QoS 2: `PUBREL` sent, waiting for `PUBCOMP`.
    Complete,
}

/// A message for the client: rendered at once, or waiting for a free
/// packet id slot.
#[derive(Debug)]
pub(super) struct Delivery {
    pub(super) topic: MqttStr,
    pub(super) body: corebus_net::Body,
    pub(super) qos: QoS,
    /// The `PUBLISH`'s retain flag.
    pub(super) retain: bool,
    /// The subscription identifiers of the filters it matched (5.0).
    pub(super) ids: Vec<u32>,
    /// Its place in its topic's stream.
    pub(super) epoch: Epoch,
    pub(super) seq: Seq,
}

impl Delivery {
    /// A delivery of `body` to `topic` at `qos`, message `seq` of `epoch`.
    #[cfg(test)]
    pub(super) fn new_for_test(
        topic: &str,
        body: corebus_net::Body,
        qos: QoS,
        epoch: Epoch,
        seq: Seq,
    ) -> Delivery {
        Delivery {
            topic: MqttStr::new(topic).expect("an MQTT string"),
            body,
            qos,
            retain: false,
            ids: Vec::new(),
            epoch,
            seq,
        }
    }

    /// This delivery with a body of its own, for keeping: a body read from
    /// a batch is a slice of a larger buffer (a run of the outbox, or a
    /// publisher's read buffer), which a kept delivery would keep alive
    /// whole while the bounds count only the body.
    pub(super) fn owned(mut self) -> Delivery {
        let copy = Bytes::copy_from_slice(self.body.as_bytes());
        if let Ok(body) = corebus_net::Body::parse(copy, "MESSAGE") {
            self.body = body;
        }
        self
    }

    /// Bytes it holds, as queues count them.
    pub(super) fn len(&self) -> usize {
        self.topic.len() + self.body.len()
    }

    /// Its MQTT topic name.
    pub(super) fn topic(&self) -> &str {
        self.topic.as_str()
    }

    /// Its topic's epoch and its sequence number there.
    pub(super) fn position(&self) -> (Epoch, Seq) {
        (self.epoch, self.seq)
    }
}

/// A delivery at QoS 1 or 2 sent and not yet acknowledged: kept to be sent
/// again on a new connection to its session.
#[derive(Debug)]
pub(super) struct InFlight {
    pub(super) state: Outbound,
    pub(super) delivery: Delivery,
    /// Deliveries sent before it on the connection.
    pub(super) order: u64,
}

/// A message as one or more of the connection's subscriptions got it: one
/// copy per message, whatever the number of overlapping filters.
#[derive(Debug)]
pub(super) struct Matched {
    topic: MqttStr,
    epoch: Epoch,
    seq: Seq,
    body: corebus_net::Body,
    /// The highest QoS granted to the filters it matched.
    granted: QoS,
    ids: Vec<u32>,
    /// Goes out with the retain flag: a retained message a subscription
    /// fetched, or a live one to a `retain_as_published` filter.
    retain: bool,
    /// A fetched retained message: the packet id of its `SUBSCRIBE`.
    hold_for: Option<u16>,
}

/// The most [`MqttConn::wrap_frames`] reserves for a batch's packets at once.
const RESERVE_MAX: usize = 256 * 1024;

/// Messages sent whose positions a session keeps for the connection that
/// takes it over: more than a takeover's overlap holds.
const RECENT: usize = 256;

/// A topic name, hashed.
pub(super) fn topic_hash(topic: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = rustc_hash::FxHasher::default();
    topic.hash(&mut hasher);
    hasher.finish()
}

/// A topic alias for one `PUBLISH` to the client.
#[derive(Debug, Clone, Copy)]
struct Alias {
    number: u16,
    /// The client has it already: the topic name is left out.
    known: bool,
}

impl MqttConn {
    /// Turns a batch of native frames into MQTT packets, with any pending
    /// bytes of ours first.
    pub(crate) fn wrap(&mut self, segments: &mut Vec<Bytes>) -> Wrapped {
        let frames = if self.phase == Phase::Done {
            Vec::new()
        } else {
            frames_of(segments)
        };
        segments.clear();
        self.wrap_frames(frames, segments)
    }

    /// [`MqttConn::wrap`] for frames not encoded first (a connection's own
    /// writer: `framing::frames_of_batch`); `segments` comes empty.
    pub(crate) fn wrap_frames(&mut self, frames: Vec<Frame>, segments: &mut Vec<Bytes>) -> Wrapped {
        let mut out = std::mem::take(&mut self.pending);
        if self.phase == Phase::Done {
            // Ended (by either side): after its last words (a DISCONNECT, a
            // refusing CONNACK) the server sends nothing more.
            if !out.is_empty() {
                segments.push(out.freeze());
            }
            return Wrapped {
                end: true,
                ..Wrapped::default()
            };
        }
        let mut wrapped = Wrapped::default();
        // Room for the batch at once, not doubled a dozen times as it fills
        // (a topic name is rarely longer than the guess; more grows it). A
        // payload from SHARE_FROM on goes out as a segment of its own.
        out.reserve(
            frames
                .iter()
                .map(|frame| match frame {
                    Frame::Message(message) => message.body.len().min(SHARE_FROM) + 64,
                    Frame::TopicMessage(message) => {
                        message.body.len().min(SHARE_FROM) + message.topic.len() + 16
                    }
                    _ => 8,
                })
                .sum::<usize>()
                .min(RESERVE_MAX),
        );
        self.send_waiting(&mut out, segments);
        // The copies overlapping filters get of one message come one after
        // another: they go out as one PUBLISH, at the highest QoS granted,
        // with every filter's subscription identifier (MQTT-3.3.4-2/-4).
        let mut matched: Vec<Matched> = Vec::with_capacity(frames.len());
        // Where each message of `matched` is, by (epoch, seq): one lookup per
        // message, not a scan of the batch.
        let mut seen: FxHashMap<(Epoch, Seq), usize> = FxHashMap::default();
        // Copies of one message come only to more than one subscription.
        let may_overlap = self.subs.len() > 1;
        for frame in frames {
            let one = match frame {
                Frame::Message(message) => self.matched(
                    message.sub_id,
                    None,
                    message.epoch,
                    message.seq,
                    message.body,
                ),
                Frame::TopicMessage(message) => self.matched(
                    message.sub_id,
                    Some(message.topic),
                    message.epoch,
                    message.seq,
                    message.body,
                ),
                frame => {
                    seen.clear();
                    self.deliver_matched(&mut matched, &mut out, segments);
                    if !self.render(frame, &mut out) {
                        wrapped.end = true;
                        break;
                    }
                    if let Some(rare) = self.rare.as_mut().filter(|rare| !rare.held.is_empty()) {
                        // Those whose SUBACK went out now follow it.
                        let acks = &self.acks;
                        let (ready, held): (Vec<_>, Vec<_>) = std::mem::take(&mut rare.held)
                            .into_iter()
                            .partition(|(packet_id, _)| !acks.contains_key(packet_id));
                        rare.held = held;
                        matched.extend(ready.into_iter().map(|(_, one)| one));
                    }
                    continue;
                }
            };
            let Some(one) = one else { continue };
            if let Some(packet_id) = one.hold_for.filter(|id| self.acks.contains_key(id)) {
                // Fetched for a SUBSCRIBE whose SUBACK waits for more.
                self.rare().held.push((packet_id, one));
                continue;
            }
            let earlier = seen
                .get(&(one.epoch, one.seq))
                .map(|at| &mut matched[*at])
                .filter(|earlier| earlier.topic == one.topic && earlier.retain == one.retain);
            match earlier {
                Some(earlier) => {
                    earlier.granted = earlier.granted.max(one.granted);
                    earlier.ids.extend(one.ids);
                }
                None => {
                    if may_overlap {
                        seen.insert((one.epoch, one.seq), matched.len());
                    }
                    matched.push(one);
                }
            }
        }
        self.deliver_matched(&mut matched, &mut out, segments);
        if self.phase == Phase::Resuming {
            // Nothing goes out before the CONNACK.
            self.rare().held_output.extend_from_slice(&out);
        } else if !out.is_empty() {
            segments.push(out.freeze());
        }
        wrapped
    }

    /// Renders one native frame; false when the connection ends after it.
    fn render(&mut self, frame: Frame, out: &mut BytesMut) -> bool {
        let v5 = self.version == Version::V5;
        match frame {
            Frame::Welcome(welcome) if self.phase == Phase::Connecting => {
                let mut properties = Properties::default();
                if v5 {
                    properties.topic_alias_maximum = Some(super::inbound::CLIENT_ALIASES);
                    properties.wildcard_available = Some(1);
                    properties.receive_maximum = Some(self.settings.receive_maximum.max(1));
                    properties.maximum_packet_size =
                        Some(welcome.max_frame.saturating_sub(NATIVE_OVERHEAD));
                    properties.assigned_client_id =
                        self.assigned_id.as_deref().and_then(MqttStr::new);
                    properties.session_expiry = self.told_expiry;
                    properties.server_keep_alive = self.server_keep_alive;
                }
                self.connack_properties = Some(Box::new(properties));
                self.accepted = true;
                if self.is_resuming() {
                    // The CONNACK waits for the session (`resume`).
                    self.phase = Phase::Resuming;
                } else {
                    self.phase = Phase::Open;
                    self.encode_connack(false, out);
                }
            }
            Frame::Error(error) => return self.render_error(error, out),
            Frame::PubAck(ack) => {
                if let Some(Request::Publish { packet_id, qos }) =
                    self.requests.remove(&ack.request_id)
                {
                    self.answered_publish(qos);
                    encode_ack(self.version, ack_for(qos), packet_id, 0, out);
                }
            }
            Frame::SubOk(ok) => self.answered(ok.request_id, None, out),
            Frame::ReplayEnd(end) => {
                // A retained fetch is over.
                if let Some(fetch) = self.subs.get(&end.sub_id).and_then(|sub| sub.fetch) {
                    self.subs.remove(&end.sub_id);
                    self.requests.remove(&fetch.request_id);
                }
            }
            Frame::UnsubOk(ok) => self.answered(ok.request_id, None, out),
            Frame::Pong(nonce) => {
                while self.deferred.front().is_some_and(|(at, _)| *at <= nonce) {
                    if let Some((_, answer)) = self.deferred.pop_front() {
                        out.extend_from_slice(&answer);
                    }
                }
            }
            Frame::GoAway(_) => {
                if v5 {
                    self.disconnect(reason::SERVER_SHUTTING_DOWN);
                    out.extend_from_slice(&std::mem::take(&mut self.pending));
                }
                return false;
            }
            // Heartbeats are MQTT's own (keep-alive), and a gap has no
            // MQTT notice: nothing to send for these.
            _ => {}
        }
        true
    }

    /// An engine `ERROR`: a refused `CONNECT`, a refused request, or the end
    /// of the connection.
    fn render_error(&mut self, error: ErrorFrame, out: &mut BytesMut) -> bool {
        if self.is_detached() && error.request_id == 0 {
            // The connection's end (a keep-alive, a lost client): its
            // session lives on.
            return true;
        }
        let v5 = self.version == Version::V5;
        let code = error.code();
        match self.phase {
            Phase::Connect | Phase::Done => return false,
            Phase::Connecting => {
                self.phase = Phase::Done;
                let code = connect_code(code, v5);
                let mut properties = Properties::default();
                if v5 {
                    properties.reason_string = reason_text(&error.message);
                }
                Packet::ConnAck(ConnAck {
                    session_present: false,
                    code,
                    properties,
                })
                .encode(self.version, out);
                return false;
            }
            Phase::Open | Phase::Resuming => {}
        }
        let failure = request_code(code, v5);
        match self.requests.get(&error.request_id).copied() {
            Some(Request::Publish { packet_id, qos }) => {
                self.requests.remove(&error.request_id);
                if let Some(rare) = self.rare.as_mut() {
                    rare.unreleased.remove(&packet_id);
                }
                self.answered_publish(qos);
                if !v5 {
                    // 3.1.1 has no negative acknowledgement (MQTT-3.3.5-2):
                    // closing is how the client learns it was refused.
                    debug!(message = %error.message, "MQTT 3.1.1 publish refused; closing");
                    return false;
                }
                encode_ack(self.version, ack_for(qos), packet_id, failure, out);
            }
            Some(Request::Subscribe { sub_id, parent, .. }) => {
                self.drop_sub(sub_id);
                let code = if v5 { failure } else { v3::SUB_FAILURE };
                self.answered(error.request_id, (!parent).then_some(code), out);
            }
            Some(Request::Unsubscribe { .. }) => self.answered(error.request_id, None, out),
            Some(Request::Fetch { sub_id }) => {
                // Refused as the subscription was: nothing to fetch.
                self.requests.remove(&error.request_id);
                self.subs.remove(&sub_id);
            }
            None => debug!(message = %error.message, "engine error on an MQTT connection"),
        }
        if error.fatal {
            if v5 {
                Packet::Disconnect(Disconnect {
                    reason: disconnect_code(code),
                    properties: Properties {
                        reason_string: reason_text(&error.message),
                        ..Properties::default()
                    },
                })
                .encode(self.version, out);
            }
            self.phase = Phase::Done;
            return false;
        }
        true
    }

    /// A QoS 1 publish of the client's was answered (a QoS 2 one counts
    /// until its `PUBREL`).
    fn answered_publish(&mut self, qos: QoS) {
        if qos == QoS::AtLeastOnce {
            self.unanswered_at_least_once = self.unanswered_at_least_once.saturating_sub(1);
        }
    }

    /// A native subscribe or unsubscribe was answered (with a failure code,
    /// or not); the `SUBACK` or `UNSUBACK` goes out with its last answer.
    fn answered(&mut self, request_id: u32, failure: Option<u8>, out: &mut BytesMut) {
        let (packet_id, index) = match self.requests.remove(&request_id) {
            Some(Request::Subscribe {
                packet_id, index, ..
            }) => (packet_id, Some(index)),
            Some(Request::Unsubscribe { packet_id }) => (packet_id, None),
            _ => return,
        };
        let Some(wait) = self.acks.get_mut(&packet_id) else {
            return;
        };
        if let (Some(code), Some(index)) = (failure, index) {
            if let Some(slot) = wait.codes.get_mut(index) {
                *slot = code;
            }
        }
        wait.outstanding -= 1;
        if wait.outstanding == 0 {
            if let Some(wait) = self.acks.remove(&packet_id) {
                if packet_id == 0 {
                    // The subscriptions of a session taken over.
                    self.restored();
                } else {
                    self.encode_ack_wait(packet_id, wait, out);
                }
                self.filters_changed();
            }
        }
    }

    /// Forgets a native subscription the engine refused.
    fn drop_sub(&mut self, sub_id: u32) {
        self.subs.remove(&sub_id);
        self.filters.retain(|_, ids| {
            ids.retain(|id| *id != sub_id);
            !ids.is_empty()
        });
    }

    /// A message one subscription got: its topic (from the frame, or the
    /// subscription's own), the QoS granted and the identifier; `None` for
    /// a subscription gone, or a `$` topic under a leading wildcard.
    fn matched(
        &self,
        sub_id: u32,
        topic: Option<String>,
        epoch: Epoch,
        seq: Seq,
        body: corebus_net::Body,
    ) -> Option<Matched> {
        let sub = self.subs.get(&sub_id)?;
        if sub.no_local
            && body.has_headers()
            && self.origin.is_some()
            && body.headers().origin == self.origin
        {
            return None; // Its own publish (5.0 no_local).
        }
        let topic = match topic {
            Some(topic) if sub.wildcard_first && topic.starts_with('$') => return None,
            Some(topic) => {
                let name = super::names::unescape(&topic);
                super::names::owned_str(match (&sub.prefix, name) {
                    (Some(prefix), name) => format!("{prefix}{name}"),
                    (None, std::borrow::Cow::Owned(name)) => name,
                    (None, std::borrow::Cow::Borrowed(_)) => topic,
                })?
            }
            None => sub.topic.clone()?,
        };
        Some(Matched {
            topic,
            epoch,
            seq,
            retain: sub.fetch.is_some() || (sub.retain_as_published && body.retain()),
            hold_for: sub.fetch.map(|fetch| fetch.packet_id),
            body,
            granted: sub.qos,
            ids: sub.identifier.into_iter().collect(),
        })
    }

    /// Sends (or queues) the messages gathered so far, in order.
    fn deliver_matched(
        &mut self,
        matched: &mut Vec<Matched>,
        out: &mut BytesMut,
        segments: &mut Vec<Bytes>,
    ) {
        for one in matched.drain(..) {
            let qos =
                QoS::from_bits(one.body.qos().min(one.granted.bits())).unwrap_or(QoS::AtMostOnce);
            let delivery = Delivery {
                topic: one.topic,
                body: one.body,
                qos,
                retain: one.retain,
                ids: one.ids,
                epoch: one.epoch,
                seq: one.seq,
            };
            self.deliver(delivery, out, segments);
        }
    }

    /// Sends a delivery now, or once the client has room for it (after the
    /// ones that already wait). The one place a delivery fresh from a batch
    /// comes in: what is kept (in flight at QoS 1 or 2, waiting, queued for
    /// a detached session) gets a body of its own here, once.
    fn deliver(&mut self, delivery: Delivery, out: &mut BytesMut, segments: &mut Vec<Bytes>) {
        if self.is_detached() {
            return self.queue_detached(delivery);
        }
        if self.waiting.is_empty()
            && !self.holds_deliveries()
            && (delivery.qos == QoS::AtMostOnce || self.has_room())
        {
            let delivery = match delivery.qos {
                QoS::AtMostOnce => delivery,
                _ => delivery.owned(),
            };
            return self.publish_as(delivery, None, false, out, segments);
        }
        let len = delivery.len();
        if self.waiting_bytes + len > self.settings.waiting_limit {
            if self.dropped == 0 {
                warn!(
                    client = %self.client_id,
                    limit = self.settings.waiting_limit,
                    "MQTT client acknowledges too slowly: deliveries dropped until it catches up"
                );
            }
            self.dropped += 1;
            return;
        }
        self.waiting_bytes += len;
        self.waiting.push_back(delivery.owned());
    }

    /// Sends the deliveries that waited, as far as the client has room.
    pub(super) fn send_waiting(&mut self, out: &mut BytesMut, segments: &mut Vec<Bytes>) {
        if self.holds_deliveries() {
            return;
        }
        while self
            .waiting
            .front()
            .is_some_and(|next| next.qos == QoS::AtMostOnce || self.has_room())
        {
            let Some(next) = self.waiting.pop_front() else {
                break;
            };
            self.waiting_bytes -= next.len();
            self.publish_as(next, None, false, out, segments);
        }
        if self.waiting.is_empty() && self.dropped > 0 {
            warn!(client = %self.client_id, dropped = self.dropped, "MQTT client caught up");
            self.dropped = 0;
        }
    }

    /// The client acknowledged (part of) a delivery at QoS 1 or 2.
    pub(super) fn on_delivery_ack(&mut self, ack: &Ack) {
        let state = self.outbound.get(&ack.packet_id).map(|entry| entry.state);
        match (ack.kind, state) {
            (AckKind::PubAck, Some(Outbound::Ack))
            | (AckKind::PubComp, Some(Outbound::Complete)) => {
                self.untrack(ack.packet_id);
            }
            (AckKind::PubRec, Some(Outbound::Received)) if ack.reason >= 0x80 => {
                // Refused by the client: the exchange ends here.
                self.untrack(ack.packet_id);
            }
            (AckKind::PubRec, Some(Outbound::Received | Outbound::Complete)) => {
                if let Some(entry) = self.outbound.get_mut(&ack.packet_id) {
                    entry.state = Outbound::Complete;
                }
                encode_ack(
                    self.version,
                    AckKind::PubRel,
                    ack.packet_id,
                    0,
                    &mut self.pending,
                );
            }
            (AckKind::PubRec, _) => {
                encode_ack(
                    self.version,
                    AckKind::PubRel,
                    ack.packet_id,
                    reason::PACKET_ID_NOT_FOUND,
                    &mut self.pending,
                );
            }
            // An acknowledgement of nothing this connection sent: ignored.
            _ => {}
        }
    }

    /// The alias for `topic` in a `PUBLISH` to the client, when it takes
    /// aliases: the one it was given (`known`: the topic can be left out),
    /// or a new one while fewer than its maximum are given.
    fn topic_alias(&mut self, topic: &str) -> Option<Alias> {
        if self.client_alias_max == 0 {
            return None;
        }
        let aliases = &mut self.rare.get_or_insert_with(Box::default).aliases;
        if let Some(&number) = aliases.get(topic) {
            return Some(Alias {
                number,
                known: true,
            });
        }
        let next = u16::try_from(aliases.len() + 1).ok()?;
        if next > self.client_alias_max {
            return None;
        }
        aliases.insert(topic.to_owned(), next);
        Some(Alias {
            number: next,
            known: false,
        })
    }

    /// Keeps a delivery sent at QoS 1 or 2 until its exchange completes.
    pub(super) fn track(&mut self, packet_id: u16, entry: InFlight) {
        self.outbound_bytes += entry.delivery.len();
        if let Some(old) = self.outbound.insert(packet_id, entry) {
            self.outbound_bytes -= old.delivery.len();
        }
    }

    /// A delivery's exchange completed.
    pub(super) fn untrack(&mut self, packet_id: u16) {
        if let Some(old) = self.outbound.remove(&packet_id) {
            self.outbound_bytes -= old.delivery.len();
        }
    }

    /// A packet id no delivery in progress holds.
    fn free_packet_id(&mut self) -> u16 {
        loop {
            self.next_packet_id = self.next_packet_id.wrapping_add(1).max(1);
            if !self.outbound.contains_key(&self.next_packet_id) {
                return self.next_packet_id;
            }
        }
    }

    /// A `PUBLISH` of a delivery (the client has room for it), under a new
    /// packet id or, sent again (`dup`), its old one. One at QoS 1 or 2 is
    /// kept as it comes, so it must own its body ([`Delivery::owned`]).
    pub(super) fn publish_as(
        &mut self,
        delivery: Delivery,
        packet_id: Option<u16>,
        dup: bool,
        out: &mut BytesMut,
        segments: &mut Vec<Bytes>,
    ) {
        let (body, qos) = (&delivery.body, delivery.qos);
        let payload = body.payload();
        let mut properties = Properties::default();
        let mut topic = delivery.topic.clone();
        if body.has_headers() {
            // 3.1.1 has no properties, but an expired message is not
            // delivered to anyone (MQTT-3.3.2-5).
            let mut unused = Properties::default();
            let target = match self.version {
                Version::V5 => &mut properties,
                _ => &mut unused,
            };
            if !set_properties(&body.headers(), target, unix_now_ms()) {
                return;
            }
        }
        if self.version == Version::V5 {
            if body.format() == PayloadFormat::Zstd {
                // Compressed by a native publisher: the broker does not
                // decompress, so the subscriber is told what it gets.
                properties.content_type = MqttStr::new("application/zstd");
            }
            properties.subscription_ids.clone_from(&delivery.ids);
            if let Some(alias) = self.topic_alias(topic.as_str()) {
                properties.topic_alias = Some(alias.number);
                if alias.known {
                    topic = MqttStr::default();
                }
            }
        }
        let packet_id = match packet_id {
            Some(id) => Some(id),
            None => (qos != QoS::AtMostOnce).then(|| self.free_packet_id()),
        };
        let publish = mqtt::Publish {
            dup,
            qos,
            retain: delivery.retain,
            topic,
            packet_id,
            properties,
            payload,
        };
        let start = out.len();
        mqtt::encode_publish_head(out, self.version, &publish);
        if out.len() - start + publish.payload.len() > self.client_max_packet {
            // Larger than the client accepts: dropped as if delivered
            // (MQTT-3.1.2-25).
            out.truncate(start);
            return;
        }
        if publish.payload.len() >= SHARE_FROM {
            segments.push(out.split().freeze());
            segments.push(publish.payload);
        } else {
            out.extend_from_slice(&publish.payload);
        }
        if self.session_persists() {
            // The last messages sent, for a connection that takes the
            // session over (see `session.rs`).
            let recent = &mut self.rare().recent;
            if recent.len() == RECENT {
                recent.pop_front();
            }
            let (epoch, seq) = delivery.position();
            recent.push_back((topic_hash(delivery.topic()), epoch, seq));
        }
        if let Some(id) = packet_id {
            let state = if qos == QoS::ExactlyOnce {
                Outbound::Received
            } else {
                Outbound::Ack
            };
            self.sent += 1;
            let entry = InFlight {
                state,
                delivery,
                order: self.sent,
            };
            self.track(id, entry);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::mqtt::MqttSettings;

    /// A kept delivery (in flight for a resend, waiting for the client's
    /// room, queued for a detached session) has a body of its own: one
    /// sliced from a large buffer (an outbox run, a publisher's read
    /// buffer) would keep that buffer alive while the bounds count only
    /// the body.
    #[test]
    fn kept_deliveries_do_not_keep_the_buffer_their_body_came_from() {
        let buffer = Bytes::from(vec![0u8; 64 * 1024]);
        let start = buffer.as_ptr() as usize;
        let sliced = || {
            let body = corebus_net::Body::parse(buffer.slice(1000..1200), "MESSAGE")
                .expect("a plain body");
            Delivery::new_for_test("t", body, QoS::AtLeastOnce, 7, 1)
        };
        let inside = |delivery: &Delivery| {
            (start..start + buffer.len()).contains(&(delivery.body.as_bytes().as_ptr() as usize))
        };
        assert!(
            inside(&sliced()),
            "the test's body is a slice of the buffer"
        );
        let settings = Arc::new(MqttSettings::new("mqtt".into(), 100, 1 << 20));
        let mut conn = MqttConn::new(settings);
        conn.phase = Phase::Open;
        conn.accepted = true;
        conn.client_receive_max = 1;
        let (mut out, mut segments) = (BytesMut::new(), Vec::new());
        // In flight: the client's receive maximum (1) is then used up, so
        // the next one waits.
        conn.deliver(sliced(), &mut out, &mut segments);
        conn.deliver(sliced(), &mut out, &mut segments);
        conn.queue_detached(sliced());
        let in_flight: Vec<&Delivery> = conn
            .outbound
            .values()
            .map(|entry| &entry.delivery)
            .collect();
        assert_eq!(in_flight.len(), 1);
        assert_eq!(conn.waiting.len(), 2, "one waiting for room, one queued");
        for kept in in_flight.into_iter().chain(conn.waiting.iter()) {
            assert!(!inside(kept), "a kept delivery holds a copy");
            assert_eq!(kept.body.payload().len(), 199, "the same body");
        }
    }
}
