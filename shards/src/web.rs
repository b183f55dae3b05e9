//! A browser connection on its shard: the state the reader and the writer of
//! one web-listener connection share, between the socket (or TLS) and the
//! engine.
//!
//! The connection is served by `conn.rs` like any other; this state only
//! changes what crosses the socket:
//! - first the HTTP request, which [`corebus_gateway::accept`] answers (the
//!   answer waits in `pending` for the writer);
//! - then, for a WebSocket, the bytes of the binary messages become the
//!   reader's frame buffer, and every batch the writer sends becomes one
//!   binary message (header, then the native frames' own buffers);
//! - or, for an event stream, the reader encodes the `HELLO` and `SUBSCRIBE`
//!   the request implies into its frame buffer, the engine answers them as
//!   it would a native client, and the writer renders each frame as an event.
//!
//! Only the writer writes to the socket, so `pending` (an HTTP answer, a pong,
//! a close) always goes out between two messages, never inside one.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use corebus_gateway::sse::{self, After};
use corebus_gateway::{accept, Accept, Feed, Origins, Refusal, WsError, WsSession};
use corebus_net::{ErrorCode, Frame, Hello, Subscribe, PROTOCOL_VERSION};

use crate::framing::{frames_of, Input, Wrapped};
use crate::mqtt::{MqttConn, MqttSettings};

/// What became of a web connection's request, once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Opened {
    /// A WebSocket session (101).
    WebSocket,
    /// An event stream (200).
    EventStream,
    /// Refused with an HTTP status.
    Refused,
}

/// A web connection's state, shared by its reader and writer.
#[derive(Debug)]
pub(crate) struct WebConn {
    phase: Phase,
    /// Set when the request is decided, taken by [`WebConn::take_opened`].
    opened: Option<Opened>,
    origins: Arc<Origins>,
    tls: bool,
    /// The MQTT front door's settings, when the broker speaks MQTT: then
    /// `/mqtt` opens MQTT over WebSocket.
    mqtt: Option<Arc<MqttSettings>>,
    /// Request bytes until the head is complete.
    head: Vec<u8>,
    /// Bytes the writer sends before anything else.
    pending: Vec<u8>,
}

#[derive(Debug)]
enum Phase {
    /// Reading the HTTP request.
    Request,
    /// After a 101: binary messages both ways.
    WebSocket(Box<WsSession>),
    /// After a 101 on `/mqtt`: binary messages carrying MQTT packets both
    /// ways, translated by an [`MqttConn`] as on the MQTT listener.
    MqttWebSocket(Box<WsSession>, Box<MqttConn>),
    /// After a 200: events out; anything the browser sends is ignored.
    EventStream,
    /// Refused (the answer is in `pending`), or the session ended.
    Done,
}

impl WebConn {
    pub(crate) fn new(
        origins: Arc<Origins>,
        tls: bool,
        mqtt: Option<Arc<MqttSettings>>,
    ) -> WebConn {
        WebConn {
            phase: Phase::Request,
            opened: None,
            origins,
            tls,
            mqtt,
            head: Vec::new(),
            pending: Vec::new(),
        }
    }

    /// Whether the writer has bytes of ours to send.
    pub(crate) fn has_pending(&self) -> bool {
        !self.pending.is_empty()
            || match &self.phase {
                Phase::WebSocket(session) => session.has_output(),
                Phase::MqttWebSocket(session, mqtt) => session.has_output() || mqtt.has_pending(),
                _ => false,
            }
    }

    /// The MQTT connection inside an MQTT-over-WebSocket session.
    pub(crate) fn mqtt_mut(&mut self) -> Option<&mut MqttConn> {
        match &mut self.phase {
            Phase::MqttWebSocket(_, mqtt) => Some(mqtt),
            _ => None,
        }
    }

    /// What the request became, the first time it is asked after it was
    /// decided.
    pub(crate) fn take_opened(&mut self) -> Option<Opened> {
        self.opened.take()
    }

    /// Whether the connection is an event stream.
    pub(crate) fn is_event_stream(&self) -> bool {
        matches!(self.phase, Phase::EventStream)
    }

    /// The handshake succeeded: a WebSocket message may now be as long as a
    /// frame of `max_frame` bytes (frames in one message together, too).
    pub(crate) fn handshaken(&mut self, max_frame: u32) {
        match &mut self.phase {
            Phase::WebSocket(session) => session.set_max_message(max_frame as usize + 4),
            Phase::MqttWebSocket(session, mqtt) => {
                session.set_max_message(max_frame as usize + 4);
                mqtt.handshaken(max_frame);
            }
            _ => {}
        }
    }

    /// Feeds bytes from the socket (after TLS); frames for the engine are
    /// appended to `frames`. `pre_handshake_limit` bounds the first message.
    pub(crate) fn feed(
        &mut self,
        input: &[u8],
        frames: &mut BytesMut,
        pre_handshake_limit: u32,
    ) -> Result<Input, WsError> {
        match &mut self.phase {
            Phase::Request => {
                self.head.extend_from_slice(input);
                match accept(&self.head, &self.origins, self.tls, self.mqtt.is_some()) {
                    Accept::Incomplete => Ok(Input::More),
                    Accept::Refused(refusal) => {
                        self.refuse(&refusal);
                        Ok(Input::End)
                    }
                    Accept::WebSocket {
                        response,
                        consumed,
                        mqtt,
                    } => {
                        self.opened = Some(Opened::WebSocket);
                        self.pending = response;
                        let rest = self.head.split_off(consumed);
                        self.head = Vec::new();
                        let session = Box::new(WsSession::new(pre_handshake_limit as usize + 4));
                        self.phase = match self.mqtt.clone().filter(|_| mqtt) {
                            Some(settings) => {
                                Phase::MqttWebSocket(session, Box::new(MqttConn::new(settings)))
                            }
                            None => Phase::WebSocket(session),
                        };
                        self.feed(&rest, frames, pre_handshake_limit)
                    }
                    Accept::Sse { request, response } => {
                        self.opened = Some(Opened::EventStream);
                        self.pending = response;
                        self.head = Vec::new();
                        self.phase = Phase::EventStream;
                        Frame::Hello(Hello {
                            version: PROTOCOL_VERSION,
                            client_name: "event-stream".into(),
                            credentials: Bytes::from(request.credentials),
                        })
                        .encode(frames);
                        Frame::Subscribe(Subscribe {
                            request_id: sse::SUBSCRIBE_REQUEST_ID,
                            sub_id: sse::SUB_ID,
                            resume: request.resume,
                            topic: request.topic,
                        })
                        .encode(frames);
                        Ok(Input::More)
                    }
                }
            }
            Phase::WebSocket(session) => match session.feed(input, frames)? {
                Feed::Open => Ok(Input::More),
                Feed::Closed => Ok(Input::End),
            },
            Phase::MqttWebSocket(session, mqtt) => {
                let mut packets = BytesMut::new();
                let fed = session.feed(input, &mut packets)?;
                let input = mqtt.feed(&packets, frames, pre_handshake_limit);
                Ok(if fed == Feed::Closed {
                    Input::End
                } else {
                    input
                })
            }
            // An event stream is one-way; a browser sends nothing after its
            // request, and whatever comes is not kept.
            Phase::EventStream => Ok(Input::More),
            Phase::Done => Ok(Input::End),
        }
    }

    fn refuse(&mut self, refusal: &Refusal) {
        self.opened = Some(Opened::Refused);
        self.pending = refusal.response();
        self.head = Vec::new();
        self.phase = Phase::Done;
    }

    /// Turns a batch of encoded frames into what goes on the wire for this
    /// connection, with any pending bytes of ours first.
    pub(crate) fn wrap(&mut self, segments: &mut Vec<Bytes>) -> Wrapped {
        let data: usize = segments.iter().map(Bytes::len).sum();
        let mut wrapped = Wrapped::default();
        match &mut self.phase {
            Phase::Request => {
                if data > 0 {
                    // The engine closed the connection before a request
                    // came (its limit, or the handshake deadline): say so
                    // in HTTP.
                    let refusal = refusal_for(&frames_of(segments));
                    self.refuse(&refusal);
                    wrapped.end = true;
                }
                segments.clear();
            }
            Phase::Done => segments.clear(),
            Phase::WebSocket(session) => {
                let control = session.take_output();
                if !control.is_empty() {
                    self.pending.extend_from_slice(&control);
                }
                frame_message(session, segments, data);
            }
            Phase::MqttWebSocket(..) => {
                let frames = frames_of(segments);
                segments.clear();
                return self.wrap_frames(frames, segments);
            }
            Phase::EventStream => {
                let mut events = Vec::new();
                for frame in frames_of(segments) {
                    wrapped.pinged |= matches!(frame, Frame::Ping(_));
                    if sse::render(&frame, &mut events) == After::Close {
                        wrapped.end = true;
                        break;
                    }
                }
                segments.clear();
                if !events.is_empty() {
                    segments.push(Bytes::from(events));
                }
            }
        }
        self.put_pending_first(segments);
        wrapped
    }

    /// Puts our own pending bytes (an HTTP answer, WebSocket control
    /// frames) before the batch's.
    fn put_pending_first(&mut self, segments: &mut Vec<Bytes>) {
        if !self.pending.is_empty() {
            segments.insert(0, Bytes::from(std::mem::take(&mut self.pending)));
        }
    }

    /// Whether its writer hands it frames rather than encoded bytes
    /// ([`WebConn::wrap_frames`]): MQTT over WebSocket.
    pub(crate) fn reads_frames(&self) -> bool {
        matches!(self.phase, Phase::MqttWebSocket(..))
    }

    /// [`WebConn::wrap`] for MQTT over WebSocket, from frames not encoded
    /// first (`framing::frames_of_batch`); `segments` comes empty. In
    /// another phase the frames are encoded for [`WebConn::wrap`].
    pub(crate) fn wrap_frames(&mut self, frames: Vec<Frame>, segments: &mut Vec<Bytes>) -> Wrapped {
        let Phase::MqttWebSocket(session, mqtt) = &mut self.phase else {
            let mut bytes = BytesMut::new();
            for frame in frames {
                frame.encode(&mut bytes);
            }
            segments.push(bytes.freeze());
            return self.wrap(segments);
        };
        let control = session.take_output();
        if !control.is_empty() {
            self.pending.extend_from_slice(&control);
        }
        let wrapped = mqtt.wrap_frames(frames, segments);
        let data = segments.iter().map(Bytes::len).sum();
        frame_message(session, segments, data);
        self.put_pending_first(segments);
        wrapped
    }

    /// The last bytes of a closing connection: a WebSocket close frame.
    pub(crate) fn close(&mut self) -> Vec<u8> {
        let mut out = std::mem::take(&mut self.pending);
        if let Phase::MqttWebSocket(session, mqtt) = &mut self.phase {
            // MQTT's last words (a DISCONNECT), in a message of their own.
            let mut last = vec![Bytes::from(mqtt.close())];
            let data = last[0].len();
            frame_message(session, &mut last, data);
            out.extend(last.iter().flat_map(|segment| segment.iter()));
        }
        if let Phase::WebSocket(session) | Phase::MqttWebSocket(session, _) = &mut self.phase {
            if session.can_send() {
                session.close("closed by the broker");
            }
            out.extend_from_slice(&session.take_output());
        }
        let keep = matches!(&self.phase, Phase::MqttWebSocket(_, mqtt) if mqtt.session_persists());
        if !keep {
            // (An MQTT session that outlives the connection keeps its state.)
            self.phase = Phase::Done;
        }
        out
    }
}

/// Makes `segments` (`data` bytes) one binary message: its header goes
/// first; nothing is sent when there is no data or the session is closing.
fn frame_message(session: &WsSession, segments: &mut Vec<Bytes>, data: usize) {
    if data > 0 && session.can_send() {
        let mut header = BytesMut::with_capacity(corebus_gateway::MAX_DATA_HEADER);
        corebus_gateway::data_header(data, &mut header);
        segments.insert(0, header.freeze());
    } else {
        segments.clear();
    }
}

/// The HTTP answer to an engine error that came before the request did.
fn refusal_for(frames: &[Frame]) -> Refusal {
    let error = frames.iter().find_map(|frame| match frame {
        Frame::Error(error) => Some(error),
        _ => None,
    });
    let (status, reason) = match error {
        Some(error) => {
            let status = match error.code() {
                Some(ErrorCode::HandshakeTimeout) => 408,
                Some(ErrorCode::TooManyConnections | ErrorCode::ShuttingDown) => 503,
                _ => 400,
            };
            (status, error.message.clone())
        }
        None => (400, "the broker closed the connection".to_owned()),
    };
    Refusal { status, reason }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origins() -> Arc<Origins> {
        Arc::new(Origins::default())
    }

    #[test]
    fn an_event_stream_request_becomes_hello_and_subscribe_frames() {
        let mut web = WebConn::new(origins(), false, None);
        let mut frames = BytesMut::new();
        let request = b"GET /v1/sse?ns=app&topic=t&token=tok HTTP/1.1\r\nHost: b\r\nLast-Event-ID: 5:9\r\n\r\n";
        assert_eq!(web.feed(request, &mut frames, 16_384).unwrap(), Input::More);
        assert!(web.is_event_stream() && web.has_pending());
        let decoded = frames_of(&[frames.freeze()]);
        match &decoded[..] {
            [Frame::Hello(hello), Frame::Subscribe(subscribe)] => {
                assert_eq!(&hello.credentials[..], b"tok");
                assert_eq!(subscribe.topic.namespace_bytes(), b"app");
                let resume = subscribe.resume.expect("resumes");
                assert_eq!((resume.epoch, resume.next_seq), (5, 10));
            }
            other => panic!("{other:?}"),
        }
        // The 200 goes first, then the events.
        let mut welcome = BytesMut::new();
        Frame::Ping(3).encode(&mut welcome);
        let mut segments = vec![welcome.freeze()];
        let wrapped = web.wrap(&mut segments);
        assert!(wrapped.pinged && !wrapped.end);
        let wire: Vec<u8> = segments.concat();
        let text = String::from_utf8(wire).unwrap();
        assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
        assert!(text.ends_with("retry: 1000\n\n: ping\n\n"), "{text}");
    }

    #[test]
    fn a_websocket_batch_is_one_binary_message_after_the_101() {
        let mut web = WebConn::new(origins(), false, None);
        let request =
            b"GET /v1/ws HTTP/1.1\r\nHost: b\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
            Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
            Sec-WebSocket-Protocol: corebus.v1\r\n\r\n";
        assert_eq!(
            web.feed(request, &mut BytesMut::new(), 16_384).unwrap(),
            Input::More
        );
        let payload = Bytes::from(vec![9u8; 300]);
        let mut segments = vec![Bytes::from_static(b"abc"), payload.clone()];
        web.wrap(&mut segments);
        assert!(segments[0].starts_with(b"HTTP/1.1 101"));
        assert_eq!(&segments[1][..], [0x82, 126, 1, 47], "303 bytes follow");
        assert_eq!(&segments[2][..], b"abc");
        assert!(
            segments[3].as_ptr() == payload.as_ptr(),
            "the payload is sent from its own buffer"
        );
        let close = web.close();
        assert_eq!(&close[..2], [0x88, 22]);
    }

    #[test]
    fn an_engine_refusal_before_the_request_is_answered_in_http() {
        let mut web = WebConn::new(origins(), false, None);
        let mut error = BytesMut::new();
        Frame::Error(corebus_net::ErrorFrame::new(
            0,
            ErrorCode::TooManyConnections,
            true,
            "the broker holds its maximum of 3 connections",
        ))
        .encode(&mut error);
        let mut segments = vec![error.freeze()];
        assert!(web.wrap(&mut segments).end);
        let text = String::from_utf8(segments.concat()).unwrap();
        assert!(text.starts_with("HTTP/1.1 503 "), "{text}");
        assert!(text.ends_with("maximum of 3 connections\n"));
        assert_eq!(
            web.feed(b"GET / HTTP/1.1\r\n\r\n", &mut BytesMut::new(), 100)
                .unwrap(),
            Input::End
        );
    }
}
