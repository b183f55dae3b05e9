//! Topic handlers: publish and fan-out on the owner, subscribe, resume,
//! unsubscribe and the interest protocol between shards.

use std::sync::atomic::Ordering;
use std::time::Instant;

use bytes::Bytes;
use corebus_net::{Body, Epoch, ErrorCode, Publish, Seq, Subscribe, TopicKey, Unsubscribe};

use super::delivery::{push_message, Delivery};
use super::{push_mesh, ActiveTopic, ConnId, LocalTopic, Shard, SubState};
use crate::auth::{unix_now_ms, Action};
use crate::local_ref::LocalRef;
use crate::mesh::{AckTo, ResumeReply, ResumeReq, ShardMsg};
use crate::outbox::OutFrame;
use crate::ring::COPY_MAX;
use crate::routing::{self, ShardId};
use crate::topic::ResumePlan;
use crate::webhooks::WebhookMessage;

/// Every how many sequence numbers a message's delivery latency is measured.
const LATENCY_SAMPLE_EVERY: u64 = 64;

impl Shard {
    // ----- publish -----------------------------------------------------

    pub(super) fn handle_publish(&mut self, conn: ConnId, publish: Publish) {
        self.stats.publishes_received += 1;
        if !self.permitted(conn, publish.request_id, Action::Publish, &publish.topic) {
            return;
        }
        if self.refused_for_peer(conn, publish.request_id, &publish.topic) {
            return;
        }
        if publish.ack {
            let max = self.config.max_in_flight_per_conn;
            let Some(state) = self.conns.get_mut(&conn) else {
                return;
            };
            // A peer node's in-flight publishes are bounded by its clients'.
            let peer = state.is_peer();
            if state.in_flight >= max && !peer {
                // Refused, not dropped silently: the client is told which one.
                return self.send_error(
                    conn,
                    publish.request_id,
                    ErrorCode::TooManyInFlight,
                    format!("{max} publishes already await their acknowledgement; not published"),
                );
            }
            state.in_flight += 1;
        }
        let owner = routing::owner(&publish.topic, self.shard_count);
        let ack_to = publish.ack.then_some(AckTo {
            conn,
            request_id: publish.request_id,
        });
        // The payload and the topic are slices of the publisher's read buffer
        // (up to 128 KiB), which they keep alive. A large payload is copied
        // here, once, into a buffer of its own size, which the ring, every
        // shard's fan-out, the outboxes and the webhook queue then share:
        // whatever keeps it counts what it holds. Copied here rather than by
        // the owner, and with the topic compacted when it crosses to another
        // shard, nothing in flight holds the read buffer, which the reader
        // then reuses instead of allocating another (with two shards, a
        // stalled subscriber's 60 KiB messages otherwise cost about 10% more
        // memory than they count, in allocator fragmentation). A small
        // payload is copied by each keeper that holds it for long: the ring,
        // the webhook queue, a queue that fell behind.
        let body = publish.body.into_bytes();
        let (topic, payload) = if body.len() > COPY_MAX {
            let topic = if owner == self.id {
                publish.topic
            } else {
                publish.topic.compact()
            };
            (topic, Bytes::copy_from_slice(&body))
        } else {
            (publish.topic, body)
        };
        if owner == self.id {
            if self.nodes.is_some() {
                return self.publish_on_topic_shard(self.id, topic, payload, ack_to);
            }
            let seq = self.sequence_and_fan_out(topic, payload);
            if let Some(ack_to) = ack_to {
                self.acknowledge(ack_to, seq);
            }
        } else {
            self.push_mesh(
                owner,
                ShardMsg::PublishMsg {
                    topic,
                    payload,
                    ack_to,
                },
            );
        }
    }

    /// Publishes an MQTT client's will for `conn`, whose connection ended
    /// without a clean `DISCONNECT`: under the connection's grant, as a
    /// publish without acknowledgement. Nothing for a connection that never
    /// authenticated or whose grant has expired.
    pub fn publish_will(&mut self, conn: ConnId, will: Publish) {
        let expired = self
            .expires_at_ms(conn)
            .is_some_and(|expires| expires <= unix_now_ms());
        if !self.is_handshaken(conn) || expired {
            return;
        }
        self.stats.wills_published += 1;
        self.handle_publish(conn, will);
    }

    /// Sends a `PUB_ACK` and frees its in-flight slot.
    pub(super) fn acknowledge(&mut self, ack_to: AckTo, seq: Seq) {
        if let Some(state) = self.conns.get_mut(&ack_to.conn) {
            state.in_flight = state.in_flight.saturating_sub(1);
        }
        self.send(
            ack_to.conn,
            OutFrame::PubAck {
                request_id: ack_to.request_id,
                seq,
            },
        );
    }

    /// Owner side: assigns the next sequence number, keeps the payload for
    /// replay, and sends the message once to each interested shard.
    pub(super) fn sequence_and_fan_out(&mut self, topic: TopicKey, payload: Bytes) -> Seq {
        let (ring, now_ms) = (self.config.ring, self.now_ms);
        // One lookup for a known topic; a new one is created, then looked up.
        let Some(owned) = self.owned.get_mut(&topic) else {
            self.owned_topic(&topic);
            return self.sequence_and_fan_out(topic, payload);
        };
        self.stats.messages_sequenced += 1;
        // A payload over COPY_MAX is a buffer of its own size already
        // (`handle_publish`).
        let before = owned.ring_retained();
        let seq = owned.append(&payload, ring, now_ms);
        let retain = payload
            .first()
            .is_some_and(|format| format & corebus_net::FORMAT_RETAIN != 0)
            .then(|| owned.epoch());
        // Field-level borrows again: `retained` is not part of `self.owned`.
        self.retained = self.retained + owned.ring_retained() - before;
        let generation = self.webhooks.generation();
        if generation != 0 {
            if owned.webhooks_generation != generation {
                owned.webhooks_wanted = self.webhooks.wants(&topic);
                owned.webhooks_generation = generation;
            }
            // A small body is copied: a slice would keep the whole read
            // buffer it arrived in alive while the webhook queue holds it
            // (a large one is a copy already). Its format byte was checked
            // as the frame was decoded.
            let body = || {
                let kept = if payload.len() <= COPY_MAX {
                    Bytes::copy_from_slice(&payload)
                } else {
                    payload.clone()
                };
                Body::parse(kept, "PUBLISH").ok()
            };
            if let Some(body) = owned.webhooks_wanted.then(body).flatten() {
                self.webhooks.offer(WebhookMessage {
                    topic: topic.clone(),
                    epoch: owned.epoch(),
                    seq,
                    published_ms: unix_now_ms(),
                    body,
                    moved_from: owned
                        .moved_from
                        .as_deref()
                        .filter(|(_, until)| now_ms < *until)
                        .map(|(node, _)| *node),
                });
            }
        }
        // Field-level borrows: `owned` borrows `self.owned` only.
        let here = fan_out(
            &mut self.mesh_out,
            &mut self.mesh_senders,
            self.id,
            &owned.interested,
            seq,
            &payload,
        );
        // With no pattern subscribed to anywhere, this is one comparison.
        let matching = (!self.patterns.is_empty()).then(|| (owned.key().clone(), owned.epoch()));
        if let Some((handle, sequenced_at)) = here {
            self.deliver_local(handle, seq, &payload, sequenced_at);
        }
        if let Some((key, epoch)) = matching {
            self.fan_out_patterns(&key, epoch, seq, &payload);
        }
        if !self.shared.is_empty() {
            if let Some(owned) = self.owned.get(&topic) {
                let (key, epoch) = (owned.key().clone(), owned.epoch());
                self.fan_out_shared(&key, epoch, seq, &payload);
            }
        }
        if let Some(epoch) = retain {
            self.retain_message(&topic, epoch, seq, &payload);
        }
        self.check_topic_memory();
        seq
    }

    /// Sends message `seq` of `topic` once to each interested shard.
    pub(super) fn fan_out(&mut self, topic: &TopicKey, seq: Seq, payload: &Bytes) {
        let Some(owned) = self.owned.get(topic) else {
            return;
        };
        let here = fan_out(
            &mut self.mesh_out,
            &mut self.mesh_senders,
            self.id,
            &owned.interested,
            seq,
            payload,
        );
        if let Some((handle, sequenced_at)) = here {
            self.deliver_local(handle, seq, payload, sequenced_at);
        }
    }

    /// Subscriber side: hands one sequenced message to every local subscriber
    /// of the topic whose table entry `handle` names.
    pub(super) fn deliver_local(
        &mut self,
        handle: LocalRef,
        seq: Seq,
        payload: &Bytes,
        sequenced_at: Option<Instant>,
    ) {
        let Some(local) = self.local.by_handle_mut(handle) else {
            return; // No local subscribers any more.
        };
        let Some(active) = local.active.as_mut() else {
            // Interest not yet acknowledged: this message is before any local
            // subscription's start point.
            return;
        };
        debug_assert_eq!(seq, active.last_seq + 1, "owner->shard queue must be FIFO");
        active.last_seq = seq;
        let epoch = active.epoch;
        let mut slow = Vec::new();
        for (conn, sub_id) in &local.subscribers {
            let Some(state) = self.conns.get_mut(conn) else {
                continue;
            };
            match push_message(
                state,
                *sub_id,
                epoch,
                seq,
                payload,
                self.config.slow_consumer,
            ) {
                Delivery::Queued => self.stats.messages_delivered += 1,
                Delivery::Dropped => self.stats.messages_dropped += 1,
                Delivery::Slow => slow.push(*conn),
                Delivery::Closing => {}
            }
        }
        for conn in slow {
            self.close_slow_consumer(conn);
        }
        if let Some(sequenced_at) = sequenced_at {
            self.delivery_latency
                .record(sequenced_at.elapsed().as_micros() as u64);
        }
    }

    // ----- subscribe ---------------------------------------------------

    /// Whether `sub_id` cannot name a new subscription of `conn` (a live one
    /// has it: answered `duplicate_subscription`; or the connection is
    /// gone).
    pub(super) fn sub_id_taken(&mut self, conn: ConnId, request_id: u32, sub_id: u32) -> bool {
        let Some(state) = self.conns.get(&conn) else {
            return true;
        };
        if !state.subscriptions.contains_key(&sub_id) {
            return false;
        }
        self.send_error(
            conn,
            request_id,
            ErrorCode::DuplicateSubscription,
            format!("subscription id {sub_id} is already in use on this connection"),
        );
        true
    }

    pub(super) fn handle_subscribe(&mut self, conn: ConnId, subscribe: Subscribe) {
        let Subscribe {
            request_id,
            sub_id,
            resume,
            topic,
        } = subscribe;
        if !self.permitted(conn, request_id, Action::Subscribe, &topic)
            || self.refused_for_peer(conn, request_id, &topic)
        {
            return;
        }
        if self.sub_id_taken(conn, request_id, sub_id) {
            return;
        }
        let pattern = topic.is_pattern();
        if pattern {
            if let Some(reason) = self.pattern_refusal(resume.is_some()) {
                return self.send_error(conn, request_id, ErrorCode::InvalidRequest, reason);
            }
        }
        if let Err(reason) = self.admit_subscription(conn, &topic) {
            self.stats.subscriptions_refused += 1;
            return self.send_error(conn, request_id, ErrorCode::TooManySubscriptions, reason);
        }
        self.stats.subscribes += 1;
        if pattern {
            return self.subscribe_pattern(conn, request_id, sub_id, topic);
        }
        let owner = routing::owner(&topic, self.shard_count);
        let (handle, is_new) = match self.local.handle(&topic) {
            Some(handle) => (handle, false),
            // A compact copy, so the table does not pin the subscriber's
            // read buffer.
            None => (
                self.local.insert(topic.compact(), LocalTopic::default()),
                true,
            ),
        };
        let key = self
            .local
            .key(&topic)
            .cloned()
            .unwrap_or_else(|| topic.compact());
        if let Some(state) = self.conns.get_mut(&conn) {
            state.subscriptions.insert(
                sub_id,
                SubState {
                    topic: key,
                    resume_request: resume.map(|_| request_id),
                    lost: None,
                    group: None,
                },
            );
        }
        let Some(local) = self.local.by_handle_mut(handle) else {
            return; // Unreachable: the handle was just taken or made.
        };
        if let Some(point) = resume {
            // The owner holds the ring: every resume asks it, whether or not
            // this shard is already registered.
            local.resumes_in_flight += 1;
            let req = ResumeReq {
                conn,
                sub_id,
                request_id,
                point,
            };
            self.request_interest(owner, topic, handle, Some(req));
            return;
        }
        match local.active {
            Some(active) => {
                // Already registered with the owner: every message after
                // `last_seq` is still to arrive here, in order.
                local.subscribers.push((conn, sub_id));
                self.send(
                    conn,
                    OutFrame::SubOk {
                        request_id,
                        sub_id,
                        epoch: active.epoch,
                        start_after: active.last_seq,
                    },
                );
            }
            None => {
                local.waiting.push((conn, sub_id, request_id));
                if is_new {
                    self.request_interest(owner, topic, handle, None);
                }
            }
        }
    }

    /// Asks `owner` to deliver `topic` here, to the table entry `handle`.
    pub(super) fn request_interest(
        &mut self,
        owner: ShardId,
        topic: TopicKey,
        handle: LocalRef,
        resume: Option<ResumeReq>,
    ) {
        if owner == self.id {
            self.take_interest(topic, self.id, handle, resume);
        } else {
            self.push_mesh(
                owner,
                ShardMsg::InterestMsg {
                    topic,
                    handle,
                    resume,
                },
            );
        }
    }

    /// Owner side: records `shard`'s interest (deliveries go to its table
    /// entry `handle`) and answers with the epoch, the start point for live
    /// subscribers, and a resume plan when asked.
    pub(super) fn register_interest(
        &mut self,
        topic: &TopicKey,
        shard: ShardId,
        handle: LocalRef,
        resume: Option<ResumeReq>,
    ) -> (Epoch, Seq, Option<ResumeReply>) {
        let now_ms = self.now_ms;
        let owned = self.owned_topic(topic);
        owned.last_active_ms = now_ms;
        // A shard asks again for each resume, with the same entry; its
        // latest request names the entry that now stands for the topic.
        match owned.interested.iter_mut().find(|(s, _)| *s == shard) {
            Some(entry) => entry.1 = handle,
            None => owned.interested.push((shard, handle)),
        }
        let reply = resume.map(|req| ResumeReply {
            plan: owned.resume(req.point),
            req,
        });
        let answer = (owned.epoch(), owned.last_seq(), reply);
        // A new topic state counts too (this one has a subscriber: it stays).
        self.check_topic_memory();
        answer
    }

    /// Subscriber side: the owner answered an interest request.
    pub(super) fn handle_interest_ack(
        &mut self,
        topic: TopicKey,
        epoch: Epoch,
        start_after: Seq,
        reply: Option<ResumeReply>,
    ) {
        let Some(local) = self.local.get_mut(&topic) else {
            return; // Cannot happen: entries outlive their requests.
        };
        let waiting = if local.active.is_none() {
            local.active = Some(ActiveTopic {
                epoch,
                last_seq: start_after,
            });
            std::mem::take(&mut local.waiting)
        } else {
            Vec::new()
        };
        for (conn, sub_id, request_id) in waiting {
            if self.still_subscribed(conn, sub_id, None) {
                self.send(
                    conn,
                    OutFrame::SubOk {
                        request_id,
                        sub_id,
                        epoch,
                        start_after,
                    },
                );
                if let Some(local) = self.local.get_mut(&topic) {
                    local.subscribers.push((conn, sub_id));
                }
            }
        }
        if let Some(reply) = reply {
            if let Some(local) = self.local.get_mut(&topic) {
                local.resumes_in_flight -= 1;
            }
            self.attach_resumed(&topic, epoch, reply);
        }
        self.release_if_unused(&topic);
    }

    /// True when `sub_id` is still a subscription of `conn` (waiting for
    /// `resume_request` when given).
    pub(super) fn still_subscribed(
        &self,
        conn: ConnId,
        sub_id: u32,
        resume_request: Option<u32>,
    ) -> bool {
        self.conns
            .get(&conn)
            .and_then(|state| state.subscriptions.get(&sub_id))
            .is_some_and(|sub| sub.resume_request == resume_request)
    }

    /// Hands a resumed subscription its start point, gap report and replay,
    /// then adds it to the live subscribers.
    pub(super) fn attach_resumed(&mut self, topic: &TopicKey, epoch: Epoch, reply: ResumeReply) {
        let ResumeReply { req, plan } = reply;
        if !self.still_subscribed(req.conn, req.sub_id, Some(req.request_id)) {
            return; // Unsubscribed, or the connection closed, meanwhile.
        }
        let Some(state) = self.conns.get_mut(&req.conn) else {
            return;
        };
        if let Some(sub) = state.subscriptions.get_mut(&req.sub_id) {
            sub.resume_request = None;
        }
        let ResumePlan {
            start_after,
            gap,
            replay,
        } = plan;
        let mut slow = state
            .outbox
            .push(OutFrame::SubOk {
                request_id: req.request_id,
                sub_id: req.sub_id,
                epoch,
                start_after,
            })
            .is_err();
        if let Some((last_seq, next_seq)) = gap {
            slow |= state
                .outbox
                .push(OutFrame::Discontinuity {
                    sub_id: req.sub_id,
                    epoch,
                    last_seq,
                    next_seq,
                })
                .is_err();
        }
        let replayed_to = start_after + replay.len() as Seq;
        for (seq, payload) in replay {
            match push_message(
                state,
                req.sub_id,
                epoch,
                seq,
                &payload,
                self.config.slow_consumer,
            ) {
                Delivery::Queued => self.stats.messages_replayed += 1,
                Delivery::Dropped => self.stats.messages_dropped += 1,
                Delivery::Slow => slow = true,
                Delivery::Closing => {}
            }
        }
        if state.is_peer() {
            // A node mirroring the topic learns where the replay ends.
            slow |= state
                .outbox
                .push(OutFrame::ReplayEnd {
                    sub_id: req.sub_id,
                    last_seq: replayed_to,
                })
                .is_err();
        }
        if slow {
            self.close_slow_consumer(req.conn);
            return;
        }
        if let Some(local) = self.local.get_mut(topic) {
            local.subscribers.push((req.conn, req.sub_id));
        }
    }

    /// Counts one more subscription of `conn` to `topic` if every bound
    /// allows it: the connection's count and name bytes, and the broker's
    /// count (shared by all shards). The reason names the bound otherwise.
    pub(super) fn admit_subscription(
        &mut self,
        conn: ConnId,
        topic: &TopicKey,
    ) -> Result<(), String> {
        let config = &self.config;
        let Some(state) = self.conns.get_mut(&conn) else {
            return Err("the connection is closing".into());
        };
        // A peer node's subscriptions stand for its clients', which that
        // node bounds; only the broker-wide count applies.
        let peer = state.is_peer();
        if !peer && state.subscriptions.len() >= config.max_subscriptions_per_conn {
            let max = config.max_subscriptions_per_conn;
            return Err(format!("a connection may hold at most {max} subscriptions"));
        }
        let bytes = topic.wire_bytes().len();
        if !peer && state.subscription_bytes + bytes > config.max_subscription_bytes_per_conn {
            let max = config.max_subscription_bytes_per_conn;
            return Err(format!(
                "a connection's subscriptions may name at most {max} bytes of namespace and topic"
            ));
        }
        let held = config.subscriptions_held.fetch_add(1, Ordering::Relaxed);
        if held >= config.max_subscriptions {
            config.subscriptions_held.fetch_sub(1, Ordering::Relaxed);
            let max = config.max_subscriptions;
            return Err(format!(
                "the broker holds its maximum of {max} subscriptions"
            ));
        }
        state.subscription_bytes += bytes;
        Ok(())
    }

    /// Uncounts `count` subscriptions from the broker's total.
    pub(super) fn release_subscriptions(&self, count: usize) {
        if count > 0 {
            let before = self
                .config
                .subscriptions_held
                .fetch_sub(count, Ordering::Relaxed);
            debug_assert!(before >= count, "subscription count underflow");
        }
    }

    pub(super) fn handle_unsubscribe(&mut self, conn: ConnId, unsubscribe: Unsubscribe) {
        let Unsubscribe { request_id, sub_id } = unsubscribe;
        let removed = self.conns.get_mut(&conn).and_then(|state| {
            state.lossy.retain(|id| *id != sub_id);
            state.subscriptions.remove(&sub_id)
        });
        let Some(sub) = removed else {
            return self.send_error(
                conn,
                request_id,
                ErrorCode::UnknownSubscription,
                format!("no active subscription with id {sub_id}"),
            );
        };
        if let Some(state) = self.conns.get_mut(&conn) {
            state.subscription_bytes -= sub.topic.wire_bytes().len();
        }
        self.release_subscriptions(1);
        match sub.group {
            Some(group) => self.leave_shared(group, sub.topic, conn, sub_id),
            None => self.remove_subscriber(&sub.topic, conn, sub_id),
        }
        // Queued after every MESSAGE already queued for this subscription, and
        // the table no longer lists it: nothing for it follows UNSUB_OK.
        self.send(conn, OutFrame::UnsubOk { request_id, sub_id });
    }

    pub(super) fn remove_subscriber(&mut self, topic: &TopicKey, conn: ConnId, sub_id: u32) {
        if topic.is_pattern() {
            return self.remove_pattern_subscriber(topic, conn, sub_id);
        }
        if let Some(local) = self.local.get_mut(topic) {
            local.subscribers.retain(|entry| *entry != (conn, sub_id));
            local.waiting.retain(|(c, s, _)| (*c, *s) != (conn, sub_id));
        }
        self.release_if_unused(topic);
    }

    /// Drops a topic's local entry, and this shard's interest on the owner,
    /// once nothing here uses it and no answer from the owner is outstanding.
    pub(super) fn release_if_unused(&mut self, topic: &TopicKey) {
        let unused = self.local.get(topic).is_some_and(|local| {
            local.active.is_some()
                && local.subscribers.is_empty()
                && local.waiting.is_empty()
                && local.resumes_in_flight == 0
        });
        if !unused {
            return;
        }
        self.local.remove(topic);
        let owner = routing::owner(topic, self.shard_count);
        if owner == self.id {
            self.unregister_interest(topic, self.id);
        } else {
            self.push_mesh(
                owner,
                ShardMsg::DropInterestMsg {
                    topic: topic.clone(),
                },
            );
        }
    }

    pub(super) fn unregister_interest(&mut self, topic: &TopicKey, shard: ShardId) {
        let now_ms = self.now_ms;
        if let Some(owned) = self.owned.get_mut(topic) {
            owned.interested.retain(|(s, _)| *s != shard);
            // Idle time counts from the moment the last subscriber left.
            owned.last_active_ms = now_ms;
            if owned.upstream.is_some() {
                self.drop_mirror_if_unused(topic);
            }
        }
    }
}

/// Sends message `seq` once to each interested shard but this one (`id`);
/// returns this shard's handle, if it is interested, with the time the
/// message's latency is measured from (one sequence number in
/// [`LATENCY_SAMPLE_EVERY`]).
fn fan_out(
    mesh_out: &mut [crate::mesh::MeshBatch],
    mesh_senders: &mut [Option<std::task::Waker>],
    id: ShardId,
    interested: &[(ShardId, LocalRef)],
    seq: Seq,
    payload: &Bytes,
) -> Option<(LocalRef, Option<Instant>)> {
    // Reading the clock costs as much as a tenth of a small message's
    // whole path; one message in LATENCY_SAMPLE_EVERY is timed.
    let sequenced_at = seq.is_multiple_of(LATENCY_SAMPLE_EVERY).then(Instant::now);
    let mut deliver_here = None;
    for &(shard, handle) in interested {
        if shard == id {
            deliver_here = Some(handle);
        } else {
            push_mesh(
                mesh_out,
                mesh_senders,
                shard,
                ShardMsg::DeliverMsg {
                    handle,
                    seq,
                    payload: payload.clone(),
                    sequenced_at,
                },
            );
        }
    }
    deliver_here.map(|handle| (handle, sequenced_at))
}
