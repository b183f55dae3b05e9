//! What an MQTT client sends after its `CONNECT`: publishes, subscribes and
//! unsubscribes become native frames, and answers that need nothing from
//! the engine wait behind a native `PING` (see the module above).

use std::borrow::Cow;

use bytes::BytesMut;
use corebus_mqtt::{
    self as mqtt, AckKind, MqttStr, Packet, Properties, QoS, RetainHandling, SubAck, UnsubAck,
    Version,
};
use corebus_net::{
    encode_publish_as, encode_subscribe, is_pattern, validate_topic, Frame, Headers, PayloadFormat,
    Subscribe as NativeSubscribe, SubscribeShared, TopicKey, Unsubscribe, FORMAT_RETAIN,
};
use tracing::debug;

use super::codes::{ack_for, encode_ack, reason, v3};
use super::props::headers_of;
use super::{names, AckWait, Fetching, MqttConn, MqttSettings, Request, Sub};

use crate::framing::Input;

/// Topic aliases a 5.0 client may use in its publishes (the `CONNACK`'s
/// `topic_alias_maximum`; Mosquitto's default too).
pub(super) const CLIENT_ALIASES: u16 = 10;

/// A retained fetch a `SUBSCRIBE` asks for: one native topic or pattern of
/// a filter, with the filter's options.
struct Fetch {
    namespace: String,
    native: String,
    granted: QoS,
    wildcard_first: bool,
    prefix: Option<Box<str>>,
}

impl MqttConn {
    pub(super) fn on_publish(
        &mut self,
        mut publish: mqtt::Publish,
        frames: &mut BytesMut,
    ) -> Input {
        let v5 = self.version == Version::V5;
        if let Some(alias) = publish.properties.topic_alias {
            // 5.0 topic aliases, up to the maximum the CONNACK gave.
            if alias == 0 || alias > CLIENT_ALIASES {
                self.disconnect(reason::TOPIC_ALIAS_INVALID);
                return Input::End;
            }
            if publish.topic.as_str().is_empty() {
                let known = self
                    .rare
                    .as_ref()
                    .and_then(|rare| rare.client_aliases.get(&alias));
                match known {
                    Some(topic) => publish.topic = topic.clone(),
                    None => {
                        // An alias never set (MQTT-3.3.2-7 in spirit).
                        self.disconnect(reason::PROTOCOL_ERROR);
                        return Input::End;
                    }
                }
            } else if let Some(copy) = MqttStr::new(publish.topic.as_str()) {
                // A copy: the packet's bytes are a slice of the read buffer.
                self.rare().client_aliases.insert(alias, copy);
            }
        }
        let settings = self.settings.clone();
        let split = native_topic(&settings, publish.topic.as_str());
        let packet_id = publish.packet_id.unwrap_or(0);
        let Some((namespace, topic)) = split else {
            debug!(topic = ?publish.topic, "MQTT PUBLISH to a topic name refused");
            return match publish.qos {
                QoS::AtLeastOnce | QoS::ExactlyOnce if v5 => {
                    let kind = ack_for(publish.qos);
                    self.answer_ack(frames, kind, packet_id, reason::TOPIC_INVALID);
                    Input::More
                }
                _ => {
                    self.disconnect(reason::TOPIC_INVALID);
                    Input::End
                }
            };
        };
        let request_id = match publish.qos {
            QoS::AtMostOnce => 0,
            QoS::ExactlyOnce
                if self
                    .rare
                    .as_ref()
                    .is_some_and(|rare| rare.unreleased.contains(&packet_id)) =>
            {
                // Sent again before its PUBREL: received already.
                self.answer_ack(frames, AckKind::PubRec, packet_id, 0);
                return Input::More;
            }
            qos => {
                // QoS 1 and 2 publishes not yet answered with PUBACK or
                // PUBCOMP: at most the receive maximum the CONNACK gave.
                let unreleased = self.rare.as_ref().map_or(0, |rare| rare.unreleased.len());
                if self.unanswered_at_least_once + unreleased
                    >= usize::from(self.settings.receive_maximum.max(1))
                {
                    debug!("MQTT client exceeded its receive maximum; closing");
                    self.disconnect(reason::RECEIVE_MAXIMUM_EXCEEDED);
                    return Input::End;
                }
                if qos == QoS::ExactlyOnce {
                    self.rare().unreleased.insert(packet_id);
                } else {
                    self.unanswered_at_least_once += 1;
                }
                self.request(Request::Publish { packet_id, qos })
            }
        };
        // The QoS travels in the body's format byte: subscribers get the
        // message at the lower of it and their own.
        encode_publish_as(
            frames,
            request_id,
            request_id != 0,
            namespace.as_bytes(),
            topic.as_bytes(),
            PayloadFormat::Plain.byte_with_qos(publish.qos.bits())
                | if publish.retain { FORMAT_RETAIN } else { 0 },
            &Headers {
                origin: self.origin,
                ..headers_of(&publish.properties, crate::auth::unix_now_ms)
            },
            &publish.payload,
        );
        Input::More
    }

    pub(super) fn on_subscribe(
        &mut self,
        subscribe: mqtt::Subscribe,
        frames: &mut BytesMut,
    ) -> Input {
        let v5 = self.version == Version::V5;
        // At most one per SUBSCRIBE (the codec checks), for all its filters.
        let identifier = subscribe.properties.subscription_ids.first().copied();
        let packet_id = subscribe.packet_id;
        let mut wait = AckWait {
            unsubscribe: false,
            codes: Vec::with_capacity(subscribe.filters.len()),
            outstanding: 0,
        };
        let mut fetches = Vec::new();
        let settings = self.settings.clone();
        for (index, filter) in subscribe.filters.iter().enumerate() {
            let text = filter.filter.as_str();
            // A shared subscription: `$share/{group}/{filter}`.
            let (share, body) = match text.strip_prefix("$share/") {
                None => (None, text),
                Some(rest) => match rest.split_once('/') {
                    Some((group, body)) if !group.is_empty() && !group.contains(['+', '#']) => {
                        (Some(group), body)
                    }
                    _ => {
                        wait.codes.push(if v5 {
                            reason::FILTER_INVALID
                        } else {
                            v3::SUB_FAILURE
                        });
                        continue;
                    }
                },
            };
            let Some((namespace, rest)) = settings.split(body) else {
                // Multi-tenant mode: no namespace level, or a wildcard in it.
                wait.codes.push(if v5 {
                    reason::FILTER_INVALID
                } else {
                    v3::SUB_FAILURE
                });
                continue;
            };
            let prefix = settings
                .tenants
                .then(|| format!("{namespace}/").into_boxed_str());
            let natives = match native_filter(rest) {
                Ok(natives) => natives,
                Err(code) => {
                    wait.codes.push(if v5 { code } else { v3::SUB_FAILURE });
                    continue;
                }
            };
            let granted = filter.qos;
            wait.codes.push(granted.bits());
            if filter.no_local && self.origin.is_none() {
                self.origin = Some(super::random_u64());
            }
            let wildcard_first = body.starts_with(['+', '#']);
            let existing = self.filters.get(text);
            // A shared subscription gets no retained messages (MQTT 5.0,
            // 4.8.2).
            let fetch = share.is_none()
                && match filter.retain_handling {
                    RetainHandling::OnSubscribe => true,
                    RetainHandling::OnNewSubscribe => existing.is_none(),
                    RetainHandling::Never => false,
                };
            if let Some(ids) = existing {
                // Subscribing again replaces the subscription: the same
                // one, with the options asked for now.
                for id in ids {
                    if let Some(sub) = self.subs.get_mut(id) {
                        sub.qos = granted;
                        sub.identifier = identifier;
                        sub.retain_as_published = filter.retain_as_published;
                        sub.no_local = filter.no_local;
                    }
                }
            } else {
                let mut ids = Vec::with_capacity(natives.len());
                for (n, native) in natives.iter().enumerate() {
                    self.next_sub = self.next_sub.wrapping_add(1);
                    let sub_id = self.next_sub;
                    let request_id = self.request(Request::Subscribe {
                        packet_id,
                        index,
                        sub_id,
                        parent: n > 0,
                    });
                    let topic = match share {
                        None => {
                            encode_subscribe(
                                frames,
                                request_id,
                                sub_id,
                                None,
                                namespace.as_bytes(),
                                native.as_bytes(),
                            );
                            names::exact_name(native, prefix.as_deref())
                        }
                        Some(group) => {
                            // Its messages come with their topics.
                            if let Ok(topic) =
                                TopicKey::new(namespace.as_bytes(), native.as_bytes())
                            {
                                Frame::SubscribeShared(SubscribeShared {
                                    request_id,
                                    sub_id,
                                    group: group.to_owned(),
                                    topic,
                                })
                                .encode(frames);
                            }
                            None
                        }
                    };
                    self.subs.insert(
                        sub_id,
                        Sub {
                            qos: granted,
                            identifier,
                            topic: topic.and_then(names::owned_str),
                            wildcard_first,
                            prefix: prefix.clone(),
                            retain_as_published: filter.retain_as_published,
                            no_local: filter.no_local,
                            fetch: None,
                        },
                    );
                    ids.push(sub_id);
                    wait.outstanding += 1;
                }
                self.filters.insert(text.to_owned(), ids);
            }
            if fetch {
                fetches.extend(natives.into_iter().map(|native| Fetch {
                    namespace: namespace.to_owned(),
                    native,
                    granted,
                    wildcard_first,
                    prefix: prefix.clone(),
                }));
            }
        }
        self.finish_or_wait(frames, packet_id, wait);
        // After the SUBSCRIBE's requests (and the marker of a SUBACK that
        // waits for nothing): what they fetch is held until the SUBACK is
        // out, then follows it.
        for fetch in fetches {
            self.fetch_retained(frames, packet_id, fetch, identifier);
        }
        Input::More
    }

    /// Asks the engine for the retained messages of one native topic or
    /// pattern of a filter, under a subscription id of their own.
    fn fetch_retained(
        &mut self,
        frames: &mut BytesMut,
        packet_id: u16,
        fetch: Fetch,
        identifier: Option<u32>,
    ) {
        let Fetch {
            namespace,
            native,
            granted,
            wildcard_first,
            prefix,
        } = fetch;
        self.next_sub = self.next_sub.wrapping_add(1);
        let sub_id = self.next_sub;
        let request_id = self.request(Request::Fetch { sub_id });
        let Ok(topic) = TopicKey::new(namespace.as_bytes(), native.as_bytes()) else {
            return;
        };
        Frame::FetchRetained(NativeSubscribe {
            request_id,
            sub_id,
            resume: None,
            topic,
        })
        .encode(frames);
        let topic = names::exact_name(&native, prefix.as_deref()).and_then(names::owned_str);
        self.subs.insert(
            sub_id,
            Sub {
                qos: granted,
                identifier,
                topic,
                wildcard_first,
                prefix,
                retain_as_published: true,
                no_local: false,
                fetch: Some(Fetching {
                    request_id,
                    packet_id,
                }),
            },
        );
    }

    pub(super) fn on_unsubscribe(&mut self, unsubscribe: mqtt::Unsubscribe, frames: &mut BytesMut) {
        let packet_id = unsubscribe.packet_id;
        let mut wait = AckWait {
            unsubscribe: true,
            codes: Vec::with_capacity(unsubscribe.filters.len()),
            outstanding: 0,
        };
        for filter in &unsubscribe.filters {
            let Some(ids) = self.filters.remove(filter.as_str()) else {
                wait.codes.push(reason::NO_SUBSCRIPTION);
                continue;
            };
            wait.codes.push(0);
            for sub_id in ids {
                self.subs.remove(&sub_id);
                let request_id = self.request(Request::Unsubscribe { packet_id });
                Frame::Unsubscribe(Unsubscribe { request_id, sub_id }).encode(frames);
                wait.outstanding += 1;
            }
        }
        self.finish_or_wait(frames, packet_id, wait);
    }

    /// Sends a `SUBACK` or `UNSUBACK` now (after what came before it) when
    /// it waits for nothing, else when its last native answer comes.
    fn finish_or_wait(&mut self, frames: &mut BytesMut, packet_id: u16, wait: AckWait) {
        self.filters_changed();
        if packet_id == 0 && wait.outstanding == 0 {
            // A session's filters, none of them subscribed again.
            self.restored();
        } else if wait.outstanding == 0 {
            let mut out = BytesMut::new();
            self.encode_ack_wait(packet_id, wait, &mut out);
            self.defer(frames, out.freeze());
        } else {
            self.acks.insert(packet_id, wait);
        }
    }

    pub(super) fn encode_ack_wait(&self, packet_id: u16, wait: AckWait, out: &mut BytesMut) {
        let packet = if wait.unsubscribe {
            Packet::UnsubAck(UnsubAck {
                packet_id,
                properties: Properties::default(),
                codes: wait.codes,
            })
        } else {
            Packet::SubAck(SubAck {
                packet_id,
                properties: Properties::default(),
                codes: wait.codes,
            })
        };
        packet.encode(self.version, out);
    }

    /// A `PUBACK`, `PUBREC` or `PUBCOMP` that waits for nothing from the
    /// engine but must follow the answers before it.
    pub(super) fn answer_ack(
        &mut self,
        frames: &mut BytesMut,
        kind: AckKind,
        packet_id: u16,
        reason: u8,
    ) {
        let mut out = BytesMut::new();
        encode_ack(self.version, kind, packet_id, reason, &mut out);
        self.defer(frames, out.freeze());
    }
}

/// The namespace and native topic of an MQTT topic name that can be
/// published to: a valid MQTT name whose native form ([`names::escape`])
/// is a native topic (not too long, no control character); `None`
/// otherwise.
pub(super) fn native_topic<'a>(
    settings: &'a MqttSettings,
    name: &'a str,
) -> Option<(&'a str, Cow<'a, str>)> {
    if !mqtt::valid_topic_name(name) {
        return None;
    }
    let (namespace, topic) = settings.split(name)?;
    let native = names::escape(topic);
    (validate_topic(native.as_bytes()).is_ok() && !is_pattern(native.as_bytes()))
        .then_some((namespace, native))
}

/// The native topics an MQTT filter stands for, or the reason code that
/// refuses it.
fn native_filter(filter: &str) -> Result<Vec<String>, u8> {
    let parsed = mqtt::parse_filter(filter).map_err(|_| reason::FILTER_INVALID)?;
    if parsed.share.is_some() {
        return Err(reason::SHARED_NOT_SUPPORTED);
    }
    let levels: Vec<&str> = parsed.filter.split('/').collect();
    // Wildcards become native ones; a literal `*` or `>` level is escaped.
    let native: Vec<Cow<str>> = levels
        .iter()
        .map(|level| match *level {
            "+" => Cow::Borrowed("*"),
            "#" => Cow::Borrowed(">"),
            other => names::escape_level(other),
        })
        .collect();
    let mut natives = vec![native.join("/")];
    if levels.len() > 1 && levels.last() == Some(&"#") {
        // `a/#` matches `a` too (MQTT-4.7.1-2).
        natives.push(native[..native.len() - 1].join("/"));
    }
    natives.retain(|topic| !topic.is_empty());
    if natives.is_empty()
        || natives
            .iter()
            .any(|topic| validate_topic(topic.as_bytes()).is_err())
    {
        return Err(reason::FILTER_INVALID);
    }
    Ok(natives)
}
