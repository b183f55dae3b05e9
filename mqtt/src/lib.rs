//! A sans-I/O codec for MQTT 3.1.1 (protocol level 4) and MQTT 5.0 (level
//! 5), for corebus's MQTT front door.
//!
//! The shape follows `corebus-net`: [`check`] looks at the bytes a reader
//! has so far and says whether a whole packet is there, how long it is, or
//! that it announces more than the caller allows, before anything is
//! allocated for it; [`decode`] turns one whole packet into a [`Packet`]
//! whose payload and strings are slices of the caller's buffer (no copy);
//! [`Packet::encode`] writes one, and [`encode_publish_head`] writes a
//! `PUBLISH` up to its payload so that the payload can go out as a segment
//! of its own. Nothing here does I/O or keeps state between packets: which
//! version a connection speaks is decided by its `CONNECT`
//! ([`decode_connect`]) and passed to every later call.
//!
//! Every malformed input is a typed [`DecodeError`], never a panic, with the
//! MQTT 5.0 reason code a server answers it with ([`DecodeError::reason`]).
//!
//! [`parse_filter`] and [`topic_matches`] give topic filters MQTT's meaning
//! (section 4.7): valid filters, shared subscriptions, `#` matching its
//! parent level, and wildcards that do not reach `$` names.

mod decode;
mod encode;
mod error;
mod filter;
mod packet;
mod props;

pub use decode::{check, decode, decode_connect, Check, MAX_REMAINING_LENGTH};
pub use encode::encode_publish_head;
pub use error::DecodeError;
pub use filter::{parse_filter, topic_matches, valid_topic_name, FilterError, TopicFilter};
pub use packet::{
    Ack, AckKind, ConnAck, Connect, Disconnect, LastWill, MqttStr, Packet, Publish, QoS,
    RetainHandling, SubAck, Subscribe, Subscription, UnsubAck, Unsubscribe, Version,
};
pub use props::Properties;
