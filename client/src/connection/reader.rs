//! The reader task: decodes frames, answers requests, routes messages.

use std::sync::Arc;

use bytes::BytesMut;
use corebus_net::{
    check, decode, Check, ErrorFrame, Frame, PubAck, SubOk, UnsubOk, DEFAULT_MAX_FRAME,
};
use tokio::io::AsyncReadExt;
use tokio::net::tcp::OwnedReadHalf;
use tokio::sync::mpsc;

use super::{protocol_violation, Pending, Shared, Terminal, READ_CHUNK};
use crate::error::code_text;
use crate::{Error, Message};

/// Headroom over the server's `max_frame` for inbound frames: a `MESSAGE`
/// spends more bytes of its length on headers than the `PUBLISH` that carried
/// its payload when names are short (see the protocol's client checklist).
const INBOUND_SLACK: u32 = 64;

impl Shared {
    fn answer_publish(&self, ack: PubAck) -> Result<(), Terminal> {
        let mut st = self.lock();
        match st.pending.remove(&ack.request_id) {
            None => Ok(()),
            Some(Pending::Publish { answer, .. }) => {
                let _ = answer.send(Ok(ack.seq));
                Ok(())
            }
            Some(other) => {
                let name = other.name();
                st.pending.insert(ack.request_id, other);
                Err(protocol_violation(format!(
                    "PUB_ACK answers request {}, a {name}",
                    ack.request_id
                )))
            }
        }
    }

    fn answer_subscribe(&self, ok: SubOk) -> Result<(), Terminal> {
        let mut st = self.lock();
        match st.pending.remove(&ok.request_id) {
            None => Ok(()),
            Some(Pending::Subscribe { answer, sub_id }) if sub_id == ok.sub_id => {
                if let Some(route) = st.routes.get_mut(&sub_id) {
                    route.next_seq = Some(ok.start_after.wrapping_add(1));
                }
                if answer.send(Ok(ok.start_after)).is_err() {
                    // The caller gave up (timeout or cancellation): end the
                    // subscription on the server too.
                    st.unsubscribe(sub_id, None);
                    drop(st);
                    self.wake_writer();
                }
                Ok(())
            }
            Some(other) => {
                let name = other.name();
                st.pending.insert(ok.request_id, other);
                Err(protocol_violation(format!(
                    "SUB_OK (sub {}) answers request {}, a {name} with another subscription",
                    ok.sub_id, ok.request_id
                )))
            }
        }
    }

    fn answer_unsubscribe(&self, ok: UnsubOk) -> Result<(), Terminal> {
        let mut st = self.lock();
        match st.pending.remove(&ok.request_id) {
            None => Ok(()),
            Some(Pending::Unsubscribe { answer, sub_id }) if sub_id == ok.sub_id => {
                st.routes.remove(&sub_id);
                if let Some(answer) = answer {
                    let _ = answer.send(Ok(()));
                }
                Ok(())
            }
            Some(other) => {
                let name = other.name();
                st.pending.insert(ok.request_id, other);
                Err(protocol_violation(format!(
                    "UNSUB_OK (sub {}) answers request {}, a {name} with another subscription",
                    ok.sub_id, ok.request_id
                )))
            }
        }
    }

    fn answer_error(&self, frame: ErrorFrame) -> Result<(), Terminal> {
        let request = if frame.request_id == 0 {
            None
        } else {
            let mut st = self.lock();
            let request = st.pending.remove(&frame.request_id);
            if let Some(Pending::Subscribe { sub_id, .. } | Pending::Unsubscribe { sub_id, .. }) =
                &request
            {
                st.routes.remove(sub_id);
            }
            request
        };
        if let Some(request) = request {
            request.fail(Error::from_frame(&frame));
        }
        if frame.fatal {
            return Err(Terminal::Lost(format!(
                "the server closed the connection: {}: {}",
                code_text(frame.code(), frame.code),
                frame.message
            )));
        }
        // A non-fatal error for request 0 (or an unknown request) cannot be
        // tied to any call; the connection stays usable.
        Ok(())
    }

    fn answer_ping(&self, nonce: u64) {
        let mut st = self.lock();
        if st.terminal.is_none() {
            Frame::Pong(nonce).encode(&mut st.out);
            drop(st);
            self.wake_writer();
        }
    }

    fn answer_pong(&self, nonce: u64) {
        if let Some(answer) = self.lock().pings.remove(&nonce) {
            let _ = answer.send(());
        }
    }

    async fn deliver(&self, message: corebus_net::Message) -> Result<(), Terminal> {
        let sub_id = message.sub_id;
        let item = Message {
            seq: message.seq,
            payload: message.payload,
        };
        let (tx, item) = {
            let mut st = self.lock();
            // Unknown subscriptions (already unsubscribed) are ignored.
            let Some(route) = st.routes.get_mut(&sub_id) else {
                return Ok(());
            };
            let Some(tx) = route.tx.as_ref() else {
                // Unsubscribing: messages until UNSUB_OK are dropped.
                return Ok(());
            };
            let Some(expected) = route.next_seq else {
                return Err(protocol_violation(format!(
                    "MESSAGE for subscription {sub_id} before its SUB_OK"
                )));
            };
            if item.seq != expected {
                return Err(protocol_violation(format!(
                    "sequence gap on subscription {sub_id}: expected seq {expected}, got {}",
                    item.seq
                )));
            }
            route.next_seq = Some(expected.wrapping_add(1));
            match tx.try_send(item) {
                Ok(()) => return Ok(()),
                // The subscription was dropped; its Drop unsubscribes.
                Err(mpsc::error::TrySendError::Closed(_)) => return Ok(()),
                Err(mpsc::error::TrySendError::Full(item)) => (tx.clone(), item),
            }
        };
        // The subscriber is behind: wait for room, which stops reading the
        // socket (and so stalls every other subscription on this connection).
        let _ = tx.send(item).await;
        Ok(())
    }
}

pub(super) async fn run_reader(shared: Arc<Shared>, rd: OwnedReadHalf, buf: BytesMut) {
    let ended = tokio::select! {
        terminal = read_loop(&shared, rd, buf) => Some(terminal),
        _ = shared.reader_stop.notified() => None,
    };
    if let Some(terminal) = ended {
        shared.fail(terminal, true);
    }
}

/// Reads and dispatches frames until the connection ends; returns why.
async fn read_loop(shared: &Shared, mut rd: OwnedReadHalf, mut buf: BytesMut) -> Terminal {
    let limit = shared
        .welcome
        .max_frame
        .max(DEFAULT_MAX_FRAME)
        .saturating_add(INBOUND_SLACK);
    loop {
        match check(&buf, limit) {
            Err(err) => return Terminal::Protocol(err),
            Ok(Check::Complete { len }) => {
                // Payloads are slices of this buffer: no copy.
                let frame = match decode(buf.split_to(len).freeze()) {
                    Ok(frame) => frame,
                    Err(err) => return Terminal::Protocol(err),
                };
                if let Err(terminal) = dispatch(shared, frame).await {
                    return terminal;
                }
            }
            Ok(Check::Incomplete { need }) => {
                let want = need.saturating_sub(buf.len()).max(READ_CHUNK);
                if buf.capacity() - buf.len() < want {
                    buf.reserve(want);
                }
                match rd.read_buf(&mut buf).await {
                    Ok(0) if buf.is_empty() => {
                        return Terminal::Lost("the server closed the connection".into())
                    }
                    Ok(0) => {
                        return Terminal::Lost(
                            "the server closed the connection in the middle of a frame".into(),
                        )
                    }
                    Ok(_) => {}
                    Err(err) => return Terminal::Lost(format!("read failed: {err}")),
                }
            }
        }
    }
}

async fn dispatch(shared: &Shared, frame: Frame) -> Result<(), Terminal> {
    match frame {
        Frame::Message(message) => shared.deliver(message).await,
        Frame::PubAck(ack) => shared.answer_publish(ack),
        Frame::SubOk(ok) => shared.answer_subscribe(ok),
        Frame::UnsubOk(ok) => shared.answer_unsubscribe(ok),
        Frame::Error(err) => shared.answer_error(err),
        Frame::Ping(nonce) => {
            shared.answer_ping(nonce);
            Ok(())
        }
        Frame::Pong(nonce) => {
            shared.answer_pong(nonce);
            Ok(())
        }
        other => Err(protocol_violation(format!(
            "the server sent a {:?} frame",
            other.opcode()
        ))),
    }
}
