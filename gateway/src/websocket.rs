//! One WebSocket session after the upgrade: binary messages in, native frames
//! out, and the control frames the protocol asks for.
//!
//! tungstenite's [`WebSocketContext`] does the reading side (unmasking,
//! reassembling fragments, size limits, answering pings and closes) over a
//! stream that is only the bytes the caller hands in; the replies it writes
//! collect in [`WsSession::take_output`]. Data going to the browser never
//! passes through it: [`data_header`] formats (with tungstenite's
//! `FrameHeader`) the header of one binary message, and the frames that follow
//! it are the very buffers the native writer would send, so a large payload
//! shared by many subscribers is still not copied per connection.
//!
//! The caller keeps the order on the wire: whatever `take_output` holds goes
//! out before the next data message, never in the middle of one.

use std::io::{self, Read, Write};

use bytes::{BufMut, BytesMut};
use tungstenite::error::{CapacityError, Error};
use tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tungstenite::protocol::frame::{CloseFrame, FrameHeader};
use tungstenite::protocol::{Message, Role, WebSocketConfig, WebSocketContext};

/// The WebSocket subprotocol of corebus: binary messages that carry whole
/// native frames.
pub const SUBPROTOCOL: &str = "corebus.v1";
/// The longest header of a data message.
pub const MAX_DATA_HEADER: usize = 10;
/// What tungstenite reads ahead in one go. Small, because it is allocated
/// for every connection up front and a browser sends little.
const READ_BUFFER: usize = 2 * 1024;

/// Why a WebSocket session ended badly.
#[derive(Debug, thiserror::Error)]
pub enum WsError {
    /// A text message: corebus frames travel in binary messages only.
    #[error("a text message arrived; corebus.v1 carries binary messages only")]
    TextMessage,
    /// A message above the current limit.
    #[error("a message of {size} bytes is over the limit of {max} bytes")]
    TooLong {
        /// Its size, as announced.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// A breach of RFC 6455 (an unmasked frame, a bad opcode, ...).
    #[error("WebSocket protocol error: {0}")]
    Protocol(String),
}

/// Input handed to tungstenite, and the bytes it writes back.
struct Io<'a> {
    input: &'a [u8],
    output: &'a mut Vec<u8>,
}

impl Read for Io<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.input.is_empty() {
            // All that arrived is consumed: tungstenite stops here and keeps
            // a partial frame for the next call.
            return Err(io::ErrorKind::WouldBlock.into());
        }
        self.input.read(buf)
    }
}

impl Write for Io<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.output.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// What [`WsSession::feed`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Feed {
    /// The session goes on.
    Open,
    /// The peer closed the session (its close is answered in the output).
    Closed,
}

/// The server side of one WebSocket session.
#[derive(Debug)]
pub struct WsSession {
    context: WebSocketContext,
    output: Vec<u8>,
}

impl WsSession {
    /// A session whose incoming messages may be at most `max_message` bytes.
    pub fn new(max_message: usize) -> WsSession {
        let config = WebSocketConfig::default()
            .read_buffer_size(READ_BUFFER)
            .write_buffer_size(0)
            .max_message_size(Some(max_message))
            .max_frame_size(Some(max_message));
        WsSession {
            context: WebSocketContext::new(Role::Server, Some(config)),
            output: Vec::new(),
        }
    }

    /// Changes the limit on incoming messages (it grows after the handshake).
    ///
    /// tungstenite reserves room for a frame by its announced length, so this
    /// limit is also what one frame can make the session hold.
    pub fn set_max_message(&mut self, max_message: usize) {
        self.context.set_config(|config| {
            config.max_message_size = Some(max_message);
            config.max_frame_size = Some(max_message);
        });
    }

    /// Feeds bytes read from the socket: the payload of every complete binary
    /// message is appended to `frames`; pings and closes are answered in the
    /// output. On an error, a close frame saying why is in the output.
    pub fn feed(&mut self, input: &[u8], frames: &mut BytesMut) -> Result<Feed, WsError> {
        let mut io = Io {
            input,
            output: &mut self.output,
        };
        let outcome = loop {
            match self.context.read(&mut io) {
                Ok(Message::Binary(payload)) => frames.put(payload),
                Ok(Message::Text(_)) => break Err(WsError::TextMessage),
                Ok(Message::Close(_)) => break Ok(Feed::Closed),
                Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => {}
                Err(Error::Io(err)) if err.kind() == io::ErrorKind::WouldBlock => {
                    break Ok(Feed::Open)
                }
                Err(Error::ConnectionClosed | Error::AlreadyClosed) => break Ok(Feed::Closed),
                Err(Error::Capacity(CapacityError::MessageTooLong { size, max_size })) => {
                    break Err(WsError::TooLong {
                        size,
                        max: max_size,
                    })
                }
                Err(err) => break Err(WsError::Protocol(err.to_string())),
            }
        };
        // A pong or the answer to a close may still sit in tungstenite's
        // queue; after a close it reports the session closed, which is known.
        let _ = self.context.flush(&mut io);
        if let Err(err) = &outcome {
            let code = match err {
                WsError::TextMessage => CloseCode::Unsupported,
                WsError::TooLong { .. } => CloseCode::Size,
                WsError::Protocol(_) => CloseCode::Protocol,
            };
            self.close_with(code, &err.to_string());
        }
        outcome
    }

    /// Queues a normal close (code 1000) with a short reason.
    pub fn close(&mut self, reason: &str) {
        self.close_with(CloseCode::Normal, reason);
    }

    fn close_with(&mut self, code: CloseCode, reason: &str) {
        // A close reason is at most 123 bytes; cut at a character boundary.
        let mut end = reason.len().min(123);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        let mut io = Io {
            input: &[],
            output: &mut self.output,
        };
        let frame = CloseFrame {
            code,
            reason: reason[..end].to_owned().into(),
        };
        // Fails only when a close was already sent, which is then enough.
        let _ = self.context.close(&mut io, Some(frame));
    }

    /// Whether control frames wait to be sent.
    pub fn has_output(&self) -> bool {
        !self.output.is_empty()
    }

    /// The control frames to send before any further data message.
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.output)
    }

    /// Whether the session may still send data (no close sent or received).
    pub fn can_send(&self) -> bool {
        self.context.can_write()
    }
}

/// Appends the header of one final, unmasked binary message of `len` bytes
/// (a server never masks).
pub fn data_header(len: usize, out: &mut BytesMut) {
    let header = FrameHeader {
        opcode: OpCode::Data(Data::Binary),
        ..FrameHeader::default()
    };
    // Formatting into memory cannot fail.
    let _ = header.format(len as u64, &mut out.writer());
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client frame: masked, as RFC 6455 requires of clients.
    fn client_frame(opcode: u8, payload: &[u8], fin: bool) -> Vec<u8> {
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        let mut out = vec![if fin { 0x80 } else { 0 } | opcode];
        match payload.len() {
            len if len < 126 => out.push(0x80 | len as u8),
            len if len <= 0xffff => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(len as u16).to_be_bytes());
            }
            len => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(
            payload
                .iter()
                .enumerate()
                .map(|(i, byte)| byte ^ mask[i % 4]),
        );
        out
    }

    #[test]
    fn binary_messages_in_any_split_yield_their_bytes_in_order() {
        let mut wire = client_frame(0x2, b"first frame bytes", true);
        // A fragmented message: binary start, continuation, final.
        wire.extend(client_frame(0x2, b"sec", false));
        wire.extend(client_frame(0x0, b"ond", true));
        for split in 0..=wire.len() {
            let mut session = WsSession::new(1024);
            let mut frames = BytesMut::new();
            for part in [&wire[..split], &wire[split..]] {
                assert_eq!(session.feed(part, &mut frames).unwrap(), Feed::Open);
            }
            assert_eq!(&frames[..], b"first frame bytessecond", "split at {split}");
            assert!(!session.has_output());
        }
    }

    #[test]
    fn a_ping_is_answered_and_a_close_is_echoed() {
        let mut session = WsSession::new(1024);
        let mut frames = BytesMut::new();
        let wire = client_frame(0x9, b"hi", true);
        assert_eq!(session.feed(&wire, &mut frames).unwrap(), Feed::Open);
        assert_eq!(
            session.take_output(),
            [0x8a, 2, b'h', b'i'],
            "pong, unmasked"
        );
        let close = client_frame(0x8, &[0x03, 0xe8], true);
        assert_eq!(session.feed(&close, &mut frames).unwrap(), Feed::Closed);
        assert_eq!(session.take_output(), [0x88, 2, 0x03, 0xe8]);
        assert!(!session.can_send());
    }

    #[test]
    fn text_oversized_and_unmasked_messages_fail_with_a_close_that_says_why() {
        let cases: [(Vec<u8>, u16, &str); 3] = [
            (client_frame(0x1, b"text", true), 1003, "text message"),
            (
                client_frame(0x2, &[0; 2000], true),
                1009,
                "over the limit of 1024",
            ),
            (vec![0x82, 0x01, 0x00], 1002, "protocol error"),
        ];
        for (wire, code, why) in cases {
            let mut session = WsSession::new(1024);
            let err = session.feed(&wire, &mut BytesMut::new()).unwrap_err();
            assert!(err.to_string().contains(why), "{err}");
            let output = session.take_output();
            assert_eq!(output[0], 0x88, "a close frame");
            assert_eq!(u16::from_be_bytes([output[2], output[3]]), code);
            assert!(!session.can_send());
        }
    }

    #[test]
    fn an_announced_length_over_the_limit_is_refused_before_anything_is_held() {
        let mut session = WsSession::new(16 * 1024);
        // A masked binary frame announcing 2^40 bytes, and no more.
        let mut wire = vec![0x82, 0x80 | 127];
        wire.extend_from_slice(&(1u64 << 40).to_be_bytes());
        wire.extend_from_slice(&[1, 2, 3, 4]);
        let err = session.feed(&wire, &mut BytesMut::new()).unwrap_err();
        assert!(
            matches!(err, WsError::TooLong { size, max } if size == 1 << 40 && max == 16 * 1024),
            "{err}"
        );
    }

    #[test]
    fn the_limit_grows_when_asked() {
        let mut session = WsSession::new(16);
        let wire = client_frame(0x2, &[7; 100], true);
        assert!(session.feed(&wire, &mut BytesMut::new()).is_err());
        let mut session = WsSession::new(16);
        session.set_max_message(200);
        let mut frames = BytesMut::new();
        session.feed(&wire, &mut frames).unwrap();
        assert_eq!(frames.len(), 100);
    }

    #[test]
    fn data_headers_use_the_shortest_length_form() {
        for (len, expected) in [
            (0usize, vec![0x82, 0]),
            (125, vec![0x82, 125]),
            (126, vec![0x82, 126, 0, 126]),
            (65_535, vec![0x82, 126, 0xff, 0xff]),
            (65_536, vec![0x82, 127, 0, 0, 0, 0, 0, 1, 0, 0]),
        ] {
            let mut out = BytesMut::new();
            data_header(len, &mut out);
            assert_eq!(&out[..], &expected[..], "{len}");
            assert!(out.len() <= MAX_DATA_HEADER);
        }
    }

    #[test]
    fn a_server_close_is_a_normal_close_with_the_reason_cut_to_fit() {
        let mut session = WsSession::new(64);
        session.close(&"é".repeat(100));
        let output = session.take_output();
        assert_eq!(output[0], 0x88);
        let len = output[1] as usize;
        assert!(len <= 125, "{len}");
        assert_eq!(u16::from_be_bytes([output[2], output[3]]), 1000);
        assert!(std::str::from_utf8(&output[4..2 + len]).is_ok());
    }
}
