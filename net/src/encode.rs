//! Encoding frames into a caller's buffer.
//!
//! [`Frame::encode`] handles every frame. The hot paths have allocation-free
//! helpers: [`encode_publish`] and [`encode_subscribe`] take borrowed names, and
//! [`encode_message_header`] writes only a `MESSAGE` header so the payload can
//! follow as its own (shared) buffer in a vectored write.

use bytes::{BufMut, BytesMut};

use crate::frame::*;
use crate::{Epoch, Headers, Seq, FORMAT_HEADERS, HELLO_MAGIC, LENGTH_PREFIX};

/// Bytes in a `MESSAGE` frame before its body (format byte and payload):
/// length prefix, opcode, subscription id, epoch and sequence number.
pub const MESSAGE_HEADER_LEN: usize = LENGTH_PREFIX + 1 + 4 + 8 + 8;

/// Writes the length prefix for a frame of `body_len` bytes after the opcode,
/// then the opcode.
fn header(dst: &mut BytesMut, opcode: Opcode, body_len: usize) {
    // Callers keep frames under the u32 range: names are bounded and payloads
    // are bounded by the frame-size limit, far below 4 GiB.
    dst.reserve(LENGTH_PREFIX + 1 + body_len);
    dst.put_u32((1 + body_len) as u32);
    dst.put_u8(opcode as u8);
}

/// Writes the header of a `MESSAGE` frame whose body (`body_len` bytes: the
/// format byte and the payload, see [`Body`]) the caller sends right after it.
pub fn encode_message_header(
    dst: &mut BytesMut,
    sub_id: u32,
    epoch: Epoch,
    seq: Seq,
    body_len: usize,
) {
    header(dst, Opcode::Message, 4 + 8 + 8 + body_len);
    dst.put_u32(sub_id);
    dst.put_u64(epoch);
    dst.put_u64(seq);
}

/// Writes a whole `TOPIC_MESSAGE` frame: a delivery to a pattern
/// subscription, with the concrete topic and the body (format byte first)
/// as the broker keeps it.
pub fn encode_topic_message(
    dst: &mut BytesMut,
    sub_id: u32,
    epoch: Epoch,
    seq: Seq,
    topic: &[u8],
    body: &[u8],
) {
    header(
        dst,
        Opcode::TopicMessage,
        4 + 8 + 8 + 2 + topic.len() + body.len(),
    );
    dst.put_u32(sub_id);
    dst.put_u64(epoch);
    dst.put_u64(seq);
    dst.put_u16(topic.len() as u16);
    dst.put_slice(topic);
    dst.put_slice(body);
}

/// Writes a whole `PUBLISH` frame from borrowed parts.
///
/// The names are not validated here: the server validates them and answers an
/// invalid one with an `ERROR` frame. Their lengths must fit their prefixes
/// (255 and 65535 bytes); callers check that first with
/// [`crate::validate_namespace`] and [`crate::validate_topic`].
pub fn encode_publish(
    dst: &mut BytesMut,
    request_id: u32,
    ack: bool,
    namespace: &[u8],
    topic: &[u8],
    format: PayloadFormat,
    payload: &[u8],
) {
    encode_publish_as(
        dst,
        request_id,
        ack,
        namespace,
        topic,
        format.byte(),
        &Headers::default(),
        payload,
    );
}

/// [`encode_publish`] with the format byte given whole (a format and a
/// delivery QoS, [`PayloadFormat::byte_with_qos`]) and the message's
/// headers (protocol version 2; none when they are empty).
#[allow(clippy::too_many_arguments)] // one per field of the frame
pub fn encode_publish_as(
    dst: &mut BytesMut,
    request_id: u32,
    ack: bool,
    namespace: &[u8],
    topic: &[u8],
    format_byte: u8,
    headers: &Headers,
    payload: &[u8],
) {
    if headers.is_empty() {
        publish_head(dst, request_id, ack, namespace, topic, 1 + payload.len());
        dst.put_u8(format_byte);
    } else {
        let mut block = BytesMut::with_capacity(2 + headers.encoded_len());
        headers.encode(&mut block);
        let body_len = 1 + block.len() + payload.len();
        publish_head(dst, request_id, ack, namespace, topic, body_len);
        dst.put_u8(format_byte | FORMAT_HEADERS);
        dst.put_slice(&block);
    }
    dst.put_slice(payload);
}

/// [`encode_publish`] with a whole body (format byte first) as the broker
/// keeps it: what a node forwards to a topic's owner.
pub fn encode_publish_body(
    dst: &mut BytesMut,
    request_id: u32,
    ack: bool,
    namespace: &[u8],
    topic: &[u8],
    body: &[u8],
) {
    publish_head(dst, request_id, ack, namespace, topic, body.len());
    dst.put_slice(body);
}

/// A `PUBLISH` frame up to its body, for a body of `body_len` bytes.
fn publish_head(
    dst: &mut BytesMut,
    request_id: u32,
    ack: bool,
    namespace: &[u8],
    topic: &[u8],
    body_len: usize,
) {
    header(
        dst,
        Opcode::Publish,
        4 + 1 + 1 + namespace.len() + 2 + topic.len() + body_len,
    );
    dst.put_u32(request_id);
    dst.put_u8(if ack { PUBLISH_FLAG_ACK } else { 0 });
    put_names(dst, namespace, topic);
}

/// Writes a whole `SUBSCRIBE` frame from borrowed parts (see [`encode_publish`]
/// about name lengths).
pub fn encode_subscribe(
    dst: &mut BytesMut,
    request_id: u32,
    sub_id: u32,
    resume: Option<ResumePoint>,
    namespace: &[u8],
    topic: &[u8],
) {
    subscribe_body(
        dst,
        Opcode::Subscribe,
        request_id,
        sub_id,
        resume,
        namespace,
        topic,
    );
}

/// Writes a whole `HANDOFF_REQUEST` frame (a node's, to another node of its
/// cluster): the body of a `SUBSCRIBE` under its own opcode.
pub fn encode_handoff_request(
    dst: &mut BytesMut,
    request_id: u32,
    sub_id: u32,
    resume: Option<ResumePoint>,
    namespace: &[u8],
    topic: &[u8],
) {
    subscribe_body(
        dst,
        Opcode::HandoffRequest,
        request_id,
        sub_id,
        resume,
        namespace,
        topic,
    );
}

fn subscribe_body(
    dst: &mut BytesMut,
    opcode: Opcode,
    request_id: u32,
    sub_id: u32,
    resume: Option<ResumePoint>,
    namespace: &[u8],
    topic: &[u8],
) {
    header(
        dst,
        opcode,
        4 + 4 + 8 + 8 + 1 + namespace.len() + 2 + topic.len(),
    );
    dst.put_u32(request_id);
    dst.put_u32(sub_id);
    let resume = resume.unwrap_or(ResumePoint {
        epoch: 0,
        next_seq: 0,
    });
    dst.put_u64(resume.epoch);
    dst.put_u64(resume.next_seq);
    put_names(dst, namespace, topic);
}

fn put_names(dst: &mut BytesMut, namespace: &[u8], topic: &[u8]) {
    dst.put_u8(namespace.len() as u8);
    dst.put_slice(namespace);
    dst.put_u16(topic.len() as u16);
    dst.put_slice(topic);
}

/// Truncates `text` to at most `max` bytes on a character boundary.
pub(crate) fn clip(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

impl Frame {
    /// Appends the frame's bytes to `dst`.
    ///
    /// Text fields longer than their length prefix allows (a client name over
    /// 255 bytes, an error message over 65535) are cut on a character boundary.
    pub fn encode(&self, dst: &mut BytesMut) {
        match self {
            Frame::Hello(hello) => {
                let name = clip(&hello.client_name, u8::MAX as usize);
                // Credentials longer than the u16 prefix cannot be valid; cut
                // them so the frame stays well-formed and the server refuses them.
                let credentials =
                    &hello.credentials[..hello.credentials.len().min(u16::MAX as usize)];
                header(
                    dst,
                    Opcode::Hello,
                    4 + 2 + 1 + name.len() + 2 + credentials.len(),
                );
                dst.put_slice(&HELLO_MAGIC);
                dst.put_u16(hello.version);
                dst.put_u8(name.len() as u8);
                dst.put_slice(name.as_bytes());
                dst.put_u16(credentials.len() as u16);
                dst.put_slice(credentials);
            }
            Frame::Welcome(welcome) => {
                // version 2, max_frame 4, shard 2, shard_count 2 (a sum a
                // mutation could not tell from 2 + 4 + 2 * 2).
                header(dst, Opcode::Welcome, 10);
                dst.put_u16(welcome.version);
                dst.put_u32(welcome.max_frame);
                dst.put_u16(welcome.shard);
                dst.put_u16(welcome.shard_count);
            }
            Frame::Publish(publish) => encode_publish_body(
                dst,
                publish.request_id,
                publish.ack,
                publish.topic.namespace_bytes(),
                publish.topic.topic_bytes(),
                publish.body.as_bytes(),
            ),
            Frame::PubAck(ack) => {
                header(dst, Opcode::PubAck, 4 + 8);
                dst.put_u32(ack.request_id);
                dst.put_u64(ack.seq);
            }
            Frame::Subscribe(sub) | Frame::HandoffRequest(sub) | Frame::FetchRetained(sub) => {
                subscribe_body(
                    dst,
                    self.opcode(),
                    sub.request_id,
                    sub.sub_id,
                    sub.resume,
                    sub.topic.namespace_bytes(),
                    sub.topic.topic_bytes(),
                )
            }
            Frame::SubscribeShared(sub) => {
                let group = clip(&sub.group, u8::MAX as usize);
                let (namespace, topic) = (sub.topic.namespace_bytes(), sub.topic.topic_bytes());
                header(
                    dst,
                    Opcode::SubscribeShared,
                    4 + 4 + 1 + group.len() + 1 + namespace.len() + 2 + topic.len(),
                );
                dst.put_u32(sub.request_id);
                dst.put_u32(sub.sub_id);
                dst.put_u8(group.len() as u8);
                dst.put_slice(group.as_bytes());
                put_names(dst, namespace, topic);
            }
            Frame::SubOk(ok) => {
                header(dst, Opcode::SubOk, 4 + 4 + 8 + 8);
                dst.put_u32(ok.request_id);
                dst.put_u32(ok.sub_id);
                dst.put_u64(ok.epoch);
                dst.put_u64(ok.start_after);
            }
            Frame::Unsubscribe(unsub) => {
                header(dst, Opcode::Unsubscribe, 4 + 4);
                dst.put_u32(unsub.request_id);
                dst.put_u32(unsub.sub_id);
            }
            Frame::UnsubOk(ok) => {
                header(dst, Opcode::UnsubOk, 4 + 4);
                dst.put_u32(ok.request_id);
                dst.put_u32(ok.sub_id);
            }
            Frame::Message(message) => {
                encode_message_header(
                    dst,
                    message.sub_id,
                    message.epoch,
                    message.seq,
                    message.body.len(),
                );
                dst.put_slice(message.body.as_bytes());
            }
            Frame::Discontinuity(gap) => {
                header(dst, Opcode::Discontinuity, 4 + 8 + 8 + 8);
                dst.put_u32(gap.sub_id);
                dst.put_u64(gap.epoch);
                dst.put_u64(gap.last_seq);
                dst.put_u64(gap.next_seq);
            }
            Frame::TopicMessage(message) => encode_topic_message(
                dst,
                message.sub_id,
                message.epoch,
                message.seq,
                message.topic.as_bytes(),
                message.body.as_bytes(),
            ),
            Frame::ReplayEnd(end) => {
                header(dst, Opcode::ReplayEnd, 4 + 8);
                dst.put_u32(end.sub_id);
                dst.put_u64(end.last_seq);
            }
            Frame::Ping(nonce) => {
                header(dst, Opcode::Ping, 8);
                dst.put_u64(*nonce);
            }
            Frame::Pong(nonce) => {
                header(dst, Opcode::Pong, 8);
                dst.put_u64(*nonce);
            }
            Frame::TokenRequest(request) => {
                let claims = clip(&request.claims, u16::MAX as usize);
                header(dst, Opcode::TokenRequest, 4 + 4 + 2 + claims.len());
                dst.put_u32(request.request_id);
                dst.put_u32(request.ttl_secs);
                dst.put_u16(claims.len() as u16);
                dst.put_slice(claims.as_bytes());
            }
            Frame::Token(token) => {
                let text = clip(&token.token, u16::MAX as usize);
                header(dst, Opcode::Token, 4 + 2 + text.len());
                dst.put_u32(token.request_id);
                dst.put_u16(text.len() as u16);
                dst.put_slice(text.as_bytes());
            }
            Frame::WebhookRequest(request) => {
                header(dst, Opcode::WebhookRequest, 4 + request.command.len());
                dst.put_u32(request.request_id);
                dst.put_slice(request.command.as_bytes());
            }
            Frame::WebhookReply(reply) => {
                header(dst, Opcode::WebhookReply, 4 + reply.result.len());
                dst.put_u32(reply.request_id);
                dst.put_slice(reply.result.as_bytes());
            }
            Frame::ClusterRequest(request) => {
                header(dst, Opcode::ClusterRequest, 4 + request.command.len());
                dst.put_u32(request.request_id);
                dst.put_slice(request.command.as_bytes());
            }
            Frame::SessionRequest(session) | Frame::SessionReply(session) => {
                header(dst, self.opcode(), 4 + 1 + session.body.len());
                dst.put_u32(session.request_id);
                dst.put_u8(session.kind);
                dst.put_slice(&session.body);
            }
            Frame::ClusterReply(reply) => {
                header(dst, Opcode::ClusterReply, 4 + reply.result.len());
                dst.put_u32(reply.request_id);
                dst.put_slice(reply.result.as_bytes());
            }
            Frame::GoAway(go_away) => {
                let text = clip(&go_away.message, u16::MAX as usize);
                header(dst, Opcode::GoAway, 4 + 2 + text.len());
                dst.put_u32(go_away.drain_ms);
                dst.put_u16(text.len() as u16);
                dst.put_slice(text.as_bytes());
            }
            Frame::Error(error) => {
                let text = clip(&error.message, u16::MAX as usize);
                header(dst, Opcode::Error, 4 + 2 + 1 + 2 + text.len());
                dst.put_u32(error.request_id);
                dst.put_u16(error.code);
                dst.put_u8(u8::from(error.fatal));
                dst.put_u16(text.len() as u16);
                dst.put_slice(text.as_bytes());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_keeps_whole_characters_up_to_the_limit() {
        assert_eq!(clip("short", 5), "short", "exactly the limit is kept whole");
        assert_eq!(clip("short", 9), "short");
        assert_eq!(clip("toolong", 3), "too");
        // "é" is two bytes: a cut inside one backs off to its start.
        let accents = "ééé";
        assert_eq!(clip(accents, 6), "ééé");
        assert_eq!(clip(accents, 5), "éé");
        assert_eq!(clip(accents, 4), "éé");
        assert_eq!(clip(accents, 3), "é");
        assert_eq!(clip(accents, 1), "");
        // Four-byte characters back off by up to three bytes.
        assert_eq!(clip("a🦀", 4), "a");
        assert_eq!(clip("a🦀", 5), "a🦀");
    }
}
