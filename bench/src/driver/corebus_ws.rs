//! corebus subscribers over the broker's WebSocket listener, as a browser
//! connects: subprotocol `corebus.v1`, every binary message one or more
//! whole native frames (docs/protocol.md, section 10.1), encoded and decoded
//! with `corebus-net`.
//!
//! The broker packs a whole write batch into one message (hundreds of
//! `MESSAGE` frames), so the subscriber keeps what is left of the last
//! message and hands out one frame per call. A frame cut by the end of a
//! message breaks the subprotocol's promise and fails the run, as any frame
//! that does not decode.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use corebus_net::{check, decode, encode_subscribe, Check, Frame, Hello, PROTOCOL_VERSION};

use super::ws::{self, Ws, SETUP_TIMEOUT};
use super::{failed, Endpoint, Incidents, Received, NAMESPACE};
use crate::options::Target;
use crate::payload::Header;
use crate::BenchError;

const TARGET: Target = Target::Corebus;
/// The subprotocol corebus's WebSocket listener speaks.
pub const SUBPROTOCOL: &str = "corebus.v1";
/// Largest frame accepted from the broker: as large as a WebSocket message
/// may be, since a message holds whole frames.
const MAX_INBOUND_FRAME: u32 = 16 << 20;

/// Cuts the first whole frame off `message` (what is left of a binary
/// message); `Ok(None)` when nothing is left. A message must end on a frame
/// boundary: a partial frame or a broken length prefix is an error.
pub fn split_frame(message: &mut Bytes) -> Result<Option<Bytes>, String> {
    if message.is_empty() {
        return Ok(None);
    }
    match check(message, MAX_INBOUND_FRAME) {
        Ok(Check::Complete { len }) => Ok(Some(message.split_to(len))),
        Ok(Check::Incomplete { need }) => Err(format!(
            "a WebSocket message ends inside a frame ({} of its {need} bytes)",
            message.len()
        )),
        Err(err) => Err(format!("a frame that does not check: {err}")),
    }
}

/// One WebSocket with one subscription per topic; subscription `i` has
/// `sub_id` `i`.
pub struct CorebusWsSubscriber {
    ws: Ws,
    /// What is left of the last binary message: whole frames.
    pending: Bytes,
    /// Per subscription: its epoch and start point (from `SUB_OK`).
    subscriptions: Vec<(u64, u64)>,
    /// The nonce of a `PING` whose `PONG` is not yet sent (sent first on the
    /// next call if a call was cancelled while sending it).
    pong_owed: Option<u64>,
    incidents: Arc<Incidents>,
}

impl CorebusWsSubscriber {
    pub(super) async fn connect(
        url: &str,
        endpoint: &Endpoint,
        topics: &[&str],
    ) -> Result<Self, BenchError> {
        let ws = ws::open(TARGET, url, Some(SUBPROTOCOL)).await?;
        let mut subscriber = CorebusWsSubscriber {
            ws,
            pending: Bytes::new(),
            subscriptions: Vec::with_capacity(topics.len()),
            pong_owed: None,
            incidents: endpoint.incidents.clone(),
        };
        tokio::time::timeout(SETUP_TIMEOUT, subscriber.set_up(topics))
            .await
            .map_err(|_| failed(TARGET, "subscribe", "no answer in time"))??;
        Ok(subscriber)
    }

    /// `HELLO`, then every `SUBSCRIBE` once `WELCOME` came, each in as few
    /// messages as the broker's frame limit allows; returns when every
    /// subscription is confirmed.
    async fn set_up(&mut self, topics: &[&str]) -> Result<(), BenchError> {
        let mut out = BytesMut::new();
        Frame::Hello(Hello {
            version: PROTOCOL_VERSION,
            client_name: "corebus-bench ws".into(),
            credentials: Bytes::new(),
        })
        .encode(&mut out);
        ws::send(&mut self.ws, TARGET, out.split().freeze()).await?;
        let max_message = match self.set_up_frame("connect").await? {
            Frame::Welcome(welcome) => welcome.max_frame as usize + 4,
            other => return Err(unexpected("connect", &other)),
        };
        for (sub_id, topic) in topics.iter().enumerate() {
            let before = out.len();
            encode_subscribe(
                &mut out,
                sub_id as u32,
                sub_id as u32,
                None,
                NAMESPACE.as_bytes(),
                topic.as_bytes(),
            );
            if out.len() > max_message && before > 0 {
                let rest = out.split_off(before);
                ws::send(&mut self.ws, TARGET, out.split().freeze()).await?;
                out = rest;
            }
        }
        ws::send(&mut self.ws, TARGET, out.freeze()).await?;
        let mut confirmed: Vec<Option<(u64, u64)>> = vec![None; topics.len()];
        let mut missing = topics.len();
        while missing > 0 {
            match self.set_up_frame("subscribe").await? {
                Frame::SubOk(ok) => {
                    let slot = confirmed.get_mut(ok.sub_id as usize).ok_or_else(|| {
                        failed(
                            TARGET,
                            "subscribe",
                            format!("SUB_OK for unknown id {}", ok.sub_id),
                        )
                    })?;
                    if slot.replace((ok.epoch, ok.start_after)).is_none() {
                        missing -= 1;
                    }
                }
                other => return Err(unexpected("subscribe", &other)),
            }
        }
        self.subscriptions = confirmed.into_iter().flatten().collect();
        Ok(())
    }

    /// The next frame during set-up, with `PING`s answered on the way.
    async fn set_up_frame(&mut self, action: &'static str) -> Result<Frame, BenchError> {
        loop {
            match self.next_frame(action).await? {
                Frame::Ping(nonce) => self.pong(nonce).await?,
                frame => return Ok(frame),
            }
        }
    }

    /// The next frame, reading a message when the last one is used up.
    /// Cancel-safe: a frame is taken only when it is returned.
    async fn next_frame(&mut self, action: &'static str) -> Result<Frame, BenchError> {
        loop {
            match split_frame(&mut self.pending) {
                Ok(Some(frame)) => {
                    return decode(frame).map_err(|err| failed(TARGET, action, err));
                }
                Ok(None) => {}
                Err(why) => return Err(failed(TARGET, action, why)),
            }
            self.pending = ws::next_data(&mut self.ws, false).await.map_err(|why| {
                self.incidents.disconnects.fetch_add(1, Ordering::Relaxed);
                failed(TARGET, action, why)
            })?;
        }
    }

    async fn pong(&mut self, nonce: u64) -> Result<(), BenchError> {
        self.pong_owed = Some(nonce);
        let mut out = BytesMut::new();
        Frame::Pong(nonce).encode(&mut out);
        ws::send(&mut self.ws, TARGET, out.freeze()).await?;
        self.pong_owed = None;
        Ok(())
    }

    pub(super) fn start_after(&self, subscription: usize) -> u64 {
        self.subscriptions
            .get(subscription)
            .map_or(0, |(_, start_after)| *start_after)
    }

    /// The next message of any subscription. Cancel-safe.
    pub(super) async fn next(&mut self) -> Result<Option<Received>, BenchError> {
        if let Some(nonce) = self.pong_owed {
            self.pong(nonce).await?;
        }
        loop {
            match self.next_frame("receive").await? {
                Frame::Message(message) => {
                    let subscription = message.sub_id as usize;
                    if let Some((epoch, _)) = self.subscriptions.get(subscription) {
                        if message.epoch != *epoch {
                            return Err(failed(
                                TARGET,
                                "receive",
                                format!(
                                    "subscription {subscription} of epoch {epoch:x} got a \
                                     MESSAGE of epoch {:x}",
                                    message.epoch
                                ),
                            ));
                        }
                    }
                    return Ok(Some(Received {
                        subscription,
                        seq: Some(message.seq),
                        header: Header::parse(&message.body.payload()),
                        len: message.body.payload().len(),
                    }));
                }
                Frame::Ping(nonce) => self.pong(nonce).await?,
                // A gap is the broker reporting loss: the run fails, as
                // with the native client.
                other => return Err(unexpected("receive", &other)),
            }
        }
    }
}

fn unexpected(action: &'static str, frame: &Frame) -> BenchError {
    failed(TARGET, action, format!("unexpected {frame:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use corebus_net::encode_message_header;

    fn message_frame(sub_id: u32, seq: u64, payload: &[u8]) -> Vec<u8> {
        let mut out = BytesMut::new();
        encode_message_header(&mut out, sub_id, 7, seq, 1 + payload.len());
        out.extend_from_slice(&[corebus_net::PayloadFormat::Plain.byte()]);
        out.extend_from_slice(payload);
        out.to_vec()
    }

    #[test]
    fn a_message_of_several_frames_yields_each_whole() {
        let mut wire = Vec::new();
        for seq in 1..=300 {
            wire.extend(message_frame(3, seq, &[seq as u8; 128]));
        }
        let mut ping = BytesMut::new();
        Frame::Ping(42).encode(&mut ping);
        wire.extend_from_slice(&ping);
        let mut message = Bytes::from(wire);
        for seq in 1..=300 {
            let frame = split_frame(&mut message).expect("whole").expect("a frame");
            match decode(frame).expect("decodes") {
                Frame::Message(m) => {
                    assert_eq!((m.sub_id, m.epoch, m.seq), (3, 7, seq));
                    assert_eq!(&m.body.payload()[..], &[seq as u8; 128]);
                }
                other => panic!("{other:?}"),
            }
        }
        let frame = split_frame(&mut message).expect("whole").expect("a frame");
        assert_eq!(decode(frame).expect("decodes"), Frame::Ping(42));
        assert_eq!(split_frame(&mut message), Ok(None), "used up");
        assert_eq!(split_frame(&mut Bytes::new()), Ok(None), "an empty message");
    }

    #[test]
    fn a_frame_is_split_off_without_copying() {
        let mut message = Bytes::from(message_frame(0, 1, b"payload"));
        let start = message.as_ptr();
        let frame = split_frame(&mut message).expect("whole").expect("a frame");
        assert_eq!(frame.as_ptr(), start);
    }

    #[test]
    fn a_message_that_ends_inside_a_frame_fails() {
        let mut wire = message_frame(0, 1, b"whole");
        let second = message_frame(0, 2, b"cut short");
        // Every cut of the second frame, from its first byte on.
        for cut in 1..second.len() {
            let mut bytes = wire.clone();
            bytes.extend_from_slice(&second[..cut]);
            let mut message = Bytes::from(bytes);
            assert!(split_frame(&mut message).expect("first whole").is_some());
            let err = split_frame(&mut message).expect_err("a partial frame");
            assert!(err.contains("ends inside a frame"), "{err}");
        }
        // A zero length prefix breaks framing.
        wire.clear();
        wire.extend_from_slice(&[0, 0, 0, 0, 0x85]);
        let err = split_frame(&mut Bytes::from(wire)).expect_err("broken prefix");
        assert!(err.contains("does not check"), "{err}");
    }
}
