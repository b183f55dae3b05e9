//! MQTT 5.0 message properties and corebus message headers, one for one:
//! what an MQTT publisher sets reaches every subscriber, and what a native
//! publisher sets reaches MQTT 5.0 subscribers as properties.

use corebus_mqtt::{MqttStr, Properties};
use corebus_net::Headers;

/// The headers a `PUBLISH` (or a will) with `props` gives its message.
/// `now_unix_ms` is asked only when the message has an expiry interval,
/// which becomes an absolute time.
pub(super) fn headers_of(props: &Properties, now_unix_ms: impl FnOnce() -> u64) -> Headers {
    let text = |value: &Option<MqttStr>| value.as_ref().map(|s| s.as_str().to_owned());
    Headers {
        user: props
            .user
            .iter()
            .map(|(name, value)| (name.as_str().to_owned(), value.as_str().to_owned()))
            .collect(),
        content_type: text(&props.content_type),
        response_topic: text(&props.response_topic),
        correlation_data: props.correlation_data.clone(),
        utf8_payload: props.payload_format == Some(1),
        expires_at_ms: props
            .message_expiry
            .map(|secs| now_unix_ms().saturating_add(u64::from(secs) * 1000)),
        origin: None,
    }
}

/// Sets the properties a message's `headers` give a 5.0 delivery made at
/// `now_unix_ms`: the expiry becomes the interval left, rounded up. `false`
/// when the message has expired and must not be delivered
/// (MQTT-3.3.2-5). A header MQTT cannot carry (a text with U+0000) is left
/// out.
pub(super) fn set_properties(headers: &Headers, props: &mut Properties, now_unix_ms: u64) -> bool {
    if let Some(at) = headers.expires_at_ms {
        let Some(left) = at.checked_sub(now_unix_ms).filter(|left| *left > 0) else {
            return false;
        };
        props.message_expiry = Some(u32::try_from(left.div_ceil(1000)).unwrap_or(u32::MAX));
    }
    props.user = headers
        .user
        .iter()
        .filter_map(|(name, value)| Some((MqttStr::new(name)?, MqttStr::new(value)?)))
        .collect();
    props.content_type = headers.content_type.as_deref().and_then(MqttStr::new);
    props.response_topic = headers.response_topic.as_deref().and_then(MqttStr::new);
    props.correlation_data.clone_from(&headers.correlation_data);
    props.payload_format = headers.utf8_payload.then_some(1);
    true
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    #[test]
    fn properties_become_headers_and_come_back() {
        let props = Properties {
            user: vec![
                (MqttStr::new("k").unwrap(), MqttStr::new("v1").unwrap()),
                (MqttStr::new("k").unwrap(), MqttStr::new("v2").unwrap()),
            ],
            content_type: MqttStr::new("text/plain"),
            response_topic: MqttStr::new("reply/here"),
            correlation_data: Some(Bytes::from_static(b"\x00\x01")),
            payload_format: Some(1),
            message_expiry: Some(10),
            ..Properties::default()
        };
        let headers = headers_of(&props, || 1_000_000);
        assert_eq!(headers.expires_at_ms, Some(1_010_000));
        assert!(headers.utf8_payload);
        let mut back = Properties::default();
        assert!(set_properties(&headers, &mut back, 1_003_500));
        // 6.5 s left: rounded up.
        assert_eq!(back.message_expiry, Some(7));
        back.message_expiry = props.message_expiry;
        assert_eq!(back, props);
    }

    #[test]
    fn an_expired_message_is_not_delivered() {
        let headers = Headers {
            expires_at_ms: Some(5_000),
            ..Headers::default()
        };
        let mut props = Properties::default();
        assert!(!set_properties(&headers, &mut props, 5_000));
        assert!(set_properties(&headers, &mut props, 4_999));
        assert_eq!(props.message_expiry, Some(1));
    }

    #[test]
    fn no_expiry_asks_no_clock() {
        let headers = headers_of(&Properties::default(), || panic!("not asked"));
        assert!(headers.is_empty());
    }
}
