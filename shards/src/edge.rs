//! The protocols a shard speaks besides its own: what sits between a
//! connection's socket (after TLS) and the engine when the listener is the
//! browser gateway ([`WebConn`]) or the MQTT front door ([`MqttConn`]).
//!
//! Both work the same way: the reader feeds them the bytes that arrived and
//! they append the native frames those bytes mean to the reader's frame
//! buffer, which the engine handles as it would a native client's; the
//! writer hands them each batch of native frames the engine queued, and
//! they turn it into what this connection's protocol sends. Only the writer
//! writes to the socket, so an answer of their own (an HTTP response, a
//! pong) waits in them for the writer's next batch.

use bytes::{Bytes, BytesMut};
use corebus_gateway::WsError;
use corebus_net::Frame;

use crate::framing::{Input, Wrapped};
use crate::mqtt::MqttConn;
use crate::web::{Opened, WebConn};

/// A connection of the browser gateway or of the MQTT listener.
#[derive(Debug)]
pub(crate) enum EdgeConn {
    /// WebSocket or Server-Sent Events.
    Web(Box<WebConn>),
    /// MQTT 3.1.1 or 5.0.
    Mqtt(Box<MqttConn>),
    // (Both boxed: the connection's `Rc` holds the smaller only, and an
    // MQTT connection would otherwise carry a WebSocket's room.)
}

impl EdgeConn {
    /// Whether the writer has bytes of ours to send.
    pub(crate) fn has_pending(&self) -> bool {
        match self {
            EdgeConn::Web(web) => web.has_pending(),
            EdgeConn::Mqtt(mqtt) => mqtt.has_pending(),
        }
    }

    /// What a web request became, the first time it is asked after it was
    /// decided.
    pub(crate) fn take_opened(&mut self) -> Option<Opened> {
        match self {
            EdgeConn::Web(web) => web.take_opened(),
            EdgeConn::Mqtt(_) => None,
        }
    }

    /// The keep-alive an MQTT client asked for, once its `CONNECT` came:
    /// `Some(None)` for none, `Some(Some(ms))` to close after that long
    /// without a packet.
    pub(crate) fn take_keep_alive(&mut self) -> Option<Option<u64>> {
        self.mqtt_mut().and_then(MqttConn::take_keep_alive)
    }

    /// The MQTT connection: on the MQTT listener, or inside MQTT over
    /// WebSocket on the browser listener.
    pub(crate) fn mqtt_mut(&mut self) -> Option<&mut MqttConn> {
        match self {
            EdgeConn::Web(web) => web.mqtt_mut(),
            EdgeConn::Mqtt(mqtt) => Some(mqtt),
        }
    }

    /// Whether the connection is an event stream.
    pub(crate) fn is_event_stream(&self) -> bool {
        matches!(self, EdgeConn::Web(web) if web.is_event_stream())
    }

    /// The handshake succeeded: input may now be as long as a frame of
    /// `max_frame` bytes.
    pub(crate) fn handshaken(&mut self, max_frame: u32) {
        match self {
            EdgeConn::Web(web) => web.handshaken(max_frame),
            EdgeConn::Mqtt(mqtt) => mqtt.handshaken(max_frame),
        }
    }

    /// Feeds bytes from the socket (after TLS); frames for the engine are
    /// appended to `frames`. `pre_handshake_limit` bounds what may be held
    /// before the handshake.
    pub(crate) fn feed(
        &mut self,
        input: &[u8],
        frames: &mut BytesMut,
        pre_handshake_limit: u32,
    ) -> Result<Input, WsError> {
        match self {
            EdgeConn::Web(web) => web.feed(input, frames, pre_handshake_limit),
            EdgeConn::Mqtt(mqtt) => Ok(mqtt.feed(input, frames, pre_handshake_limit)),
        }
    }

    /// Turns a batch of encoded frames into what goes on the wire.
    pub(crate) fn wrap(&mut self, segments: &mut Vec<Bytes>) -> Wrapped {
        match self {
            EdgeConn::Web(web) => web.wrap(segments),
            EdgeConn::Mqtt(mqtt) => mqtt.wrap(segments),
        }
    }

    /// Whether its writer hands it frames, not encoded bytes
    /// ([`EdgeConn::wrap_frames`]): MQTT, over TCP or WebSocket. Encoded
    /// for it, they would only be decoded again.
    pub(crate) fn reads_frames(&self) -> bool {
        match self {
            EdgeConn::Web(web) => web.reads_frames(),
            EdgeConn::Mqtt(_) => true,
        }
    }

    /// [`EdgeConn::wrap`] for a batch read as frames
    /// (`framing::frames_of_batch`); `segments` comes empty.
    pub(crate) fn wrap_frames(&mut self, frames: Vec<Frame>, segments: &mut Vec<Bytes>) -> Wrapped {
        match self {
            EdgeConn::Web(web) => web.wrap_frames(frames, segments),
            EdgeConn::Mqtt(mqtt) => mqtt.wrap_frames(frames, segments),
        }
    }

    /// The last bytes of a closing connection.
    pub(crate) fn close(&mut self) -> Vec<u8> {
        match self {
            EdgeConn::Web(web) => web.close(),
            EdgeConn::Mqtt(mqtt) => mqtt.close(),
        }
    }
}
