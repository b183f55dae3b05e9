//! Two-phase decoding: [`check`] the length prefix, then [`decode`] one frame.

use bytes::{Buf, Bytes};

use crate::frame::*;
use crate::name::{NameError, TopicKey};
use crate::{FrameError, HELLO_MAGIC, LENGTH_PREFIX};

/// What [`check`] found at the start of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// The buffer does not yet hold a whole frame; at least `need` bytes in
    /// total are required before checking again.
    Incomplete {
        /// Total bytes (from the buffer's start) needed for the next step.
        need: usize,
    },
    /// A whole frame of `len` bytes (length prefix included) is there.
    Complete {
        /// Bytes to split off and hand to [`decode`].
        len: usize,
    },
}

/// Looks at the length prefix at the start of `buf` without allocating.
///
/// `max_frame` bounds the length field (opcode plus body); a larger value is an
/// error before any buffer is grown to hold it.
pub fn check(buf: &[u8], max_frame: u32) -> Result<Check, FrameError> {
    let Some(prefix) = buf.first_chunk::<LENGTH_PREFIX>() else {
        return Ok(Check::Incomplete {
            need: LENGTH_PREFIX,
        });
    };
    let len = u32::from_be_bytes(*prefix);
    if len == 0 {
        return Err(FrameError::Empty);
    }
    if len > max_frame {
        return Err(FrameError::TooLarge {
            len,
            max: max_frame,
        });
    }
    let total = LENGTH_PREFIX + len as usize;
    if buf.len() < total {
        Ok(Check::Incomplete { need: total })
    } else {
        Ok(Check::Complete { len: total })
    }
}

/// Decodes one whole frame (length prefix included), as delimited by [`check`].
///
/// Payloads and names are slices of `frame`: nothing is copied.
pub fn decode(frame: Bytes) -> Result<Frame, FrameError> {
    decode_frame(frame, None, false)
}

/// [`decode`] as a server reads a client's stream of frames.
///
/// A frame only servers send is refused as [`FrameError::WrongDirection`]
/// from its opcode alone, before its body is read: a client that sends one
/// is told so, whatever the body holds (`docs/protocol.md`, section 7.14).
/// `cache` remembers the last topic names decoded, so a run of frames for
/// one topic (the usual publisher) checks and hashes its names once. Keep
/// one cache per connection.
pub fn decode_from_client(frame: Bytes, cache: &mut KeyCache) -> Result<Frame, FrameError> {
    decode_frame(frame, Some(cache), true)
}

fn decode_frame(
    frame: Bytes,
    cache: Option<&mut KeyCache>,
    from_client: bool,
) -> Result<Frame, FrameError> {
    let mut reader = Reader {
        frame: "frame",
        buf: frame,
        offset: 0,
        cache,
    };
    let len = reader.u32("length")? as usize;
    if reader.remaining() != len {
        // `check` guarantees this for frames it delimited; anything else is a
        // caller handing in a mis-cut buffer, reported as a malformed frame.
        return Err(FrameError::Truncated {
            frame: "frame",
            field: "body",
            offset: LENGTH_PREFIX,
            need: len,
            have: reader.remaining(),
        });
    }
    if len == 0 {
        return Err(FrameError::Empty);
    }
    let opcode_byte = reader.u8("opcode")?;
    let opcode = Opcode::from_u8(opcode_byte).ok_or(FrameError::UnknownOpcode {
        opcode: opcode_byte,
    })?;
    reader.frame = frame_name(opcode);
    if from_client && opcode.is_server_frame() {
        return Err(FrameError::WrongDirection {
            frame: reader.frame,
            opcode: opcode_byte,
        });
    }
    let frame = match opcode {
        Opcode::Hello => {
            let magic = reader.array::<4>("magic")?;
            if magic != HELLO_MAGIC {
                return Err(FrameError::BadMagic { got: magic });
            }
            let version = reader.u16("version")?;
            let client_name = reader.text8("client_name")?;
            let credentials_len = reader.u16("credentials")? as usize;
            let credentials = reader.slice("credentials", credentials_len)?;
            reader.finish()?;
            Frame::Hello(Hello {
                version,
                client_name,
                credentials,
            })
        }
        Opcode::Welcome => {
            let welcome = Welcome {
                version: reader.u16("version")?,
                max_frame: reader.u32("max_frame")?,
                shard: reader.u16("shard")?,
                shard_count: reader.u16("shard_count")?,
            };
            reader.finish()?;
            Frame::Welcome(welcome)
        }
        Opcode::Publish => {
            let request_id = reader.u32("request_id")?;
            let flags = reader.u8("flags")?;
            if flags & !PUBLISH_FLAG_ACK != 0 {
                return Err(FrameError::UnknownFlags {
                    frame: "PUBLISH",
                    flags,
                });
            }
            let topic = reader.topic_key(request_id)?;
            if topic.is_pattern() {
                return Err(FrameError::InvalidName {
                    request_id,
                    source: NameError::Wildcard {
                        reason: "a message is published to one topic: `*` and `>` are \
                                 wildcards, not topic segments",
                    },
                });
            }
            let body = Body::parse(reader.rest(), "PUBLISH")?;
            Frame::Publish(Publish {
                request_id,
                ack: flags & PUBLISH_FLAG_ACK != 0,
                topic,
                body,
            })
        }
        Opcode::PubAck => {
            let ack = PubAck {
                request_id: reader.u32("request_id")?,
                seq: reader.u64("seq")?,
            };
            reader.finish()?;
            Frame::PubAck(ack)
        }
        Opcode::Subscribe | Opcode::HandoffRequest | Opcode::FetchRetained => {
            let request_id = reader.u32("request_id")?;
            let sub_id = reader.u32("sub_id")?;
            let epoch = reader.u64("resume_epoch")?;
            let next_seq = reader.u64("resume_seq")?;
            let topic = reader.topic_key(request_id)?;
            reader.finish()?;
            // Sequence numbers start at 1, so 0 means "no resume point".
            let resume = (next_seq != 0).then_some(ResumePoint { epoch, next_seq });
            let subscribe = Subscribe {
                request_id,
                sub_id,
                resume,
                topic,
            };
            match opcode {
                Opcode::HandoffRequest => Frame::HandoffRequest(subscribe),
                Opcode::FetchRetained => Frame::FetchRetained(subscribe),
                _ => Frame::Subscribe(subscribe),
            }
        }
        Opcode::SubscribeShared => {
            let request_id = reader.u32("request_id")?;
            let sub_id = reader.u32("sub_id")?;
            let group = reader.text8("group")?;
            let topic = reader.topic_key(request_id)?;
            reader.finish()?;
            Frame::SubscribeShared(SubscribeShared {
                request_id,
                sub_id,
                group,
                topic,
            })
        }
        Opcode::SubOk => {
            let ok = SubOk {
                request_id: reader.u32("request_id")?,
                sub_id: reader.u32("sub_id")?,
                epoch: reader.u64("epoch")?,
                start_after: reader.u64("start_after")?,
            };
            reader.finish()?;
            Frame::SubOk(ok)
        }
        Opcode::Unsubscribe => {
            let unsub = Unsubscribe {
                request_id: reader.u32("request_id")?,
                sub_id: reader.u32("sub_id")?,
            };
            reader.finish()?;
            Frame::Unsubscribe(unsub)
        }
        Opcode::UnsubOk => {
            let ok = UnsubOk {
                request_id: reader.u32("request_id")?,
                sub_id: reader.u32("sub_id")?,
            };
            reader.finish()?;
            Frame::UnsubOk(ok)
        }
        Opcode::Message => {
            let sub_id = reader.u32("sub_id")?;
            let epoch = reader.u64("epoch")?;
            let seq = reader.u64("seq")?;
            Frame::Message(Message {
                sub_id,
                epoch,
                seq,
                body: Body::parse(reader.rest(), "MESSAGE")?,
            })
        }
        Opcode::Discontinuity => {
            let gap = Discontinuity {
                sub_id: reader.u32("sub_id")?,
                epoch: reader.u64("epoch")?,
                last_seq: reader.u64("last_seq")?,
                next_seq: reader.u64("next_seq")?,
            };
            reader.finish()?;
            Frame::Discontinuity(gap)
        }
        Opcode::TopicMessage => {
            let sub_id = reader.u32("sub_id")?;
            let epoch = reader.u64("epoch")?;
            let seq = reader.u64("seq")?;
            let topic = reader.text16("topic")?;
            Frame::TopicMessage(TopicMessage {
                sub_id,
                epoch,
                seq,
                topic,
                body: Body::parse(reader.rest(), "TOPIC_MESSAGE")?,
            })
        }
        Opcode::ReplayEnd => {
            let end = ReplayEnd {
                sub_id: reader.u32("sub_id")?,
                last_seq: reader.u64("last_seq")?,
            };
            reader.finish()?;
            Frame::ReplayEnd(end)
        }
        Opcode::Ping => {
            let nonce = reader.u64("nonce")?;
            reader.finish()?;
            Frame::Ping(nonce)
        }
        Opcode::Pong => {
            let nonce = reader.u64("nonce")?;
            reader.finish()?;
            Frame::Pong(nonce)
        }
        Opcode::TokenRequest => {
            let request_id = reader.u32("request_id")?;
            let ttl_secs = reader.u32("ttl_secs")?;
            let claims = reader.text16("claims")?;
            reader.finish()?;
            Frame::TokenRequest(TokenRequest {
                request_id,
                ttl_secs,
                claims,
            })
        }
        Opcode::Token => {
            let request_id = reader.u32("request_id")?;
            let token = reader.text16("token")?;
            reader.finish()?;
            Frame::Token(Token { request_id, token })
        }
        Opcode::WebhookRequest => {
            let request_id = reader.u32("request_id")?;
            let command = reader.text_rest("command")?;
            Frame::WebhookRequest(WebhookRequest {
                request_id,
                command,
            })
        }
        Opcode::WebhookReply => {
            let request_id = reader.u32("request_id")?;
            let result = reader.text_rest("result")?;
            Frame::WebhookReply(WebhookReply { request_id, result })
        }
        Opcode::ClusterRequest => {
            let request_id = reader.u32("request_id")?;
            let command = reader.text_rest("command")?;
            Frame::ClusterRequest(ClusterRequest {
                request_id,
                command,
            })
        }
        Opcode::SessionRequest | Opcode::SessionReply => {
            let session = SessionFrame {
                request_id: reader.u32("request_id")?,
                kind: reader.u8("kind")?,
                body: reader.rest(),
            };
            match opcode {
                Opcode::SessionRequest => Frame::SessionRequest(session),
                _ => Frame::SessionReply(session),
            }
        }
        Opcode::ClusterReply => {
            let request_id = reader.u32("request_id")?;
            let result = reader.text_rest("result")?;
            Frame::ClusterReply(ClusterReply { request_id, result })
        }
        Opcode::GoAway => {
            let drain_ms = reader.u32("drain_ms")?;
            let message = reader.text16("message")?;
            reader.finish()?;
            Frame::GoAway(GoAway { drain_ms, message })
        }
        Opcode::Error => {
            let request_id = reader.u32("request_id")?;
            let code = reader.u16("code")?;
            let flags = reader.u8("flags")?;
            if flags & !1 != 0 {
                return Err(FrameError::UnknownFlags {
                    frame: "ERROR",
                    flags,
                });
            }
            let message = reader.text16("message")?;
            reader.finish()?;
            Frame::Error(ErrorFrame {
                request_id,
                code,
                fatal: flags & 1 != 0,
                message,
            })
        }
    };
    Ok(frame)
}

fn frame_name(opcode: Opcode) -> &'static str {
    match opcode {
        Opcode::Hello => "HELLO",
        Opcode::Publish => "PUBLISH",
        Opcode::Subscribe => "SUBSCRIBE",
        Opcode::Unsubscribe => "UNSUBSCRIBE",
        Opcode::Ping => "PING",
        Opcode::Pong => "PONG",
        Opcode::Welcome => "WELCOME",
        Opcode::PubAck => "PUB_ACK",
        Opcode::SubOk => "SUB_OK",
        Opcode::UnsubOk => "UNSUB_OK",
        Opcode::Message => "MESSAGE",
        Opcode::Discontinuity => "DISCONTINUITY",
        Opcode::GoAway => "GOAWAY",
        Opcode::TokenRequest => "TOKEN_REQUEST",
        Opcode::Token => "TOKEN",
        Opcode::WebhookRequest => "WEBHOOK_REQUEST",
        Opcode::WebhookReply => "WEBHOOK_REPLY",
        Opcode::ClusterRequest => "CLUSTER_REQUEST",
        Opcode::HandoffRequest => "HANDOFF_REQUEST",
        Opcode::FetchRetained => "FETCH_RETAINED",
        Opcode::SubscribeShared => "SUBSCRIBE_SHARED",
        Opcode::SessionRequest => "SESSION_REQUEST",
        Opcode::SessionReply => "SESSION_REPLY",
        Opcode::ClusterReply => "CLUSTER_REPLY",
        Opcode::ReplayEnd => "REPLAY_END",
        Opcode::TopicMessage => "TOPIC_MESSAGE",
        Opcode::Error => "ERROR",
    }
}

/// The names of the last topic a connection's frames named, as they were on
/// the wire, with their hash: checked once, reused while they repeat.
///
/// Holds a copy of at most [`KeyCache::MAX`] bytes (longer names are not
/// cached), never a slice of a read buffer, which it would keep alive.
#[derive(Debug, Clone)]
pub struct KeyCache {
    raw: [u8; KeyCache::MAX],
    /// Bytes of `raw` in use; 0 when empty.
    len: usize,
    ns_len: usize,
    hash: u64,
}

impl Default for KeyCache {
    fn default() -> Self {
        KeyCache {
            raw: [0; KeyCache::MAX],
            len: 0,
            ns_len: 0,
            hash: 0,
        }
    }
}

impl KeyCache {
    /// Longest `namespace ‖ u16 length ‖ topic` cached.
    pub const MAX: usize = 64;

    fn key(&mut self, raw: Bytes, ns_len: usize) -> Result<TopicKey, crate::NameError> {
        // One comparison of the namespace length and the bytes (an empty
        // cache holds no bytes, which no key's bytes equal).
        if (ns_len, &raw[..]) == (self.ns_len, &self.raw[..self.len]) {
            // The very bytes validated before: only the hash is reused.
            return Ok(TopicKey::prevalidated(raw, ns_len, self.hash));
        }
        let key = TopicKey::from_wire(raw, ns_len)?;
        let bytes = key.wire_bytes();
        if bytes.len() <= KeyCache::MAX {
            self.raw[..bytes.len()].copy_from_slice(bytes);
            self.len = bytes.len();
            self.ns_len = ns_len;
            self.hash = key.stable_hash();
        }
        Ok(key)
    }
}

/// A bounds-checked cursor over one frame.
struct Reader<'c> {
    frame: &'static str,
    buf: Bytes,
    offset: usize,
    /// Names seen before on this stream, if the caller keeps them.
    cache: Option<&'c mut KeyCache>,
}

impl Reader<'_> {
    fn remaining(&self) -> usize {
        self.buf.len() - self.offset
    }

    fn take(&mut self, field: &'static str, need: usize) -> Result<&[u8], FrameError> {
        let have = self.remaining();
        if have < need {
            return Err(FrameError::Truncated {
                frame: self.frame,
                field,
                offset: self.offset,
                need,
                have,
            });
        }
        let start = self.offset;
        self.offset += need;
        Ok(&self.buf[start..self.offset])
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], FrameError> {
        let bytes = self.take(field, N)?;
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        Ok(out)
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, FrameError> {
        Ok(self.array::<1>(field)?[0])
    }

    fn u16(&mut self, field: &'static str) -> Result<u16, FrameError> {
        Ok(u16::from_be_bytes(self.array(field)?))
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, FrameError> {
        Ok(u32::from_be_bytes(self.array(field)?))
    }

    fn u64(&mut self, field: &'static str) -> Result<u64, FrameError> {
        Ok(u64::from_be_bytes(self.array(field)?))
    }

    /// A refcounted slice of the next `len` bytes.
    fn slice(&mut self, field: &'static str, len: usize) -> Result<Bytes, FrameError> {
        let start = self.offset;
        self.take(field, len)?;
        Ok(self.buf.slice(start..self.offset))
    }

    fn text(&mut self, field: &'static str, len: usize) -> Result<String, FrameError> {
        let frame = self.frame;
        let bytes = self.take(field, len)?;
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| FrameError::NotUtf8 { frame, field })
    }

    fn text8(&mut self, field: &'static str) -> Result<String, FrameError> {
        let len = self.u8(field)? as usize;
        self.text(field, len)
    }

    fn text16(&mut self, field: &'static str) -> Result<String, FrameError> {
        let len = self.u16(field)? as usize;
        self.text(field, len)
    }

    /// `namespace` (u8 length) then `topic` (u16 length), validated.
    fn topic_key(&mut self, request_id: u32) -> Result<TopicKey, FrameError> {
        let ns_len = self.u8("namespace")? as usize;
        let start = self.offset;
        self.take("namespace", ns_len)?;
        let topic_len = self.u16("topic")? as usize;
        self.take("topic", topic_len)?;
        // One slice for both names, as the frame lays them out.
        let raw = self.buf.slice(start..self.offset);
        match self.cache.as_deref_mut() {
            Some(cache) => cache.key(raw, ns_len),
            None => TopicKey::from_wire(raw, ns_len),
        }
        .map_err(|source| FrameError::InvalidName { request_id, source })
    }

    /// The rest of the frame; the reader holds nothing afterwards. The frame
    /// buffer itself becomes the result, cut at the front: a slice of it
    /// would raise its shared refcount and dropping the frame lower it again,
    /// two atomic operations per message for nothing.
    fn rest(&mut self) -> Bytes {
        let mut rest = std::mem::take(&mut self.buf);
        rest.advance(self.offset);
        self.offset = 0;
        rest
    }

    /// The rest of the frame as UTF-8 text.
    fn text_rest(&mut self, field: &'static str) -> Result<String, FrameError> {
        let len = self.remaining();
        self.text(field, len)
    }

    fn finish(&self) -> Result<(), FrameError> {
        match self.remaining() {
            0 => Ok(()),
            extra => Err(FrameError::TrailingBytes {
                frame: self.frame,
                extra,
            }),
        }
    }
}
