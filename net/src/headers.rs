//! A message's optional headers (protocol version 2): what MQTT 5.0 calls a
//! message's properties, for every client. They travel inside the body,
//! between the format byte and the payload, so the broker keeps and
//! forwards them with the message without reading them (docs/protocol.md,
//! section 6.3).

use bytes::{BufMut, Bytes, BytesMut};

use crate::encode::clip;
use crate::{FrameError, FORMAT_RETAIN};

/// Bit 3 of a body's format byte: a headers block follows the format byte
/// (protocol version 2).
pub const FORMAT_HEADERS: u8 = 0x08;

/// Most bytes a headers block may hold (its entries; the block's own length
/// field is a `u16`).
pub const MAX_HEADERS_LEN: usize = u16::MAX as usize;

const KIND_USER: u8 = 1;
const KIND_CONTENT_TYPE: u8 = 2;
const KIND_RESPONSE_TOPIC: u8 = 3;
const KIND_CORRELATION_DATA: u8 = 4;
const KIND_UTF8_PAYLOAD: u8 = 5;
const KIND_EXPIRES_AT: u8 = 6;
const KIND_ORIGIN: u8 = 7;

/// A message's headers: the publisher's name-value pairs and a few that
/// every client understands. MQTT 5.0 properties map onto them one for one
/// (docs/mqtt.md), so what an MQTT publisher sets reaches native and browser
/// subscribers, and the reverse.
///
/// ```
/// use corebus_net::{Body, Headers, PayloadFormat};
///
/// let headers = Headers {
///     content_type: Some("application/json".into()),
///     user: vec![("trace".into(), "4bf92f".into())],
///     ..Headers::default()
/// };
/// let body = Body::with_headers(PayloadFormat::Plain, 0, &headers, b"{}");
/// assert_eq!(body.headers(), headers);
/// assert_eq!(&body.payload()[..], b"{}");
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers {
    /// The publisher's name-value pairs, in its order; a name may repeat.
    pub user: Vec<(String, String)>,
    /// What the payload is (a MIME type, by convention).
    pub content_type: Option<String>,
    /// Where a reply should go (request/response).
    pub response_topic: Option<String>,
    /// What a reply should carry so the requester can match it.
    pub correlation_data: Option<Bytes>,
    /// The publisher says the payload is UTF-8 text.
    pub utf8_payload: bool,
    /// When the message expires (Unix milliseconds): a broker does not
    /// deliver it later from a queue or as a retained message.
    pub expires_at_ms: Option<u64>,
    /// An opaque id of the connection that published the message, set by
    /// the broker's MQTT front door for a client with a `no_local`
    /// subscription (so that it does not get its own messages back);
    /// other clients may ignore it.
    pub origin: Option<u64>,
}

impl Headers {
    /// True when no header is set (a body then needs no headers block).
    pub fn is_empty(&self) -> bool {
        *self == Headers::default()
    }

    /// The block's length: the bytes [`Headers::encode`] writes after the
    /// block's own length field.
    pub fn encoded_len(&self) -> usize {
        let entry = |len: usize| 3 + len;
        self.user
            .iter()
            .map(|(name, value)| entry(2 + name.len() + value.len()))
            .sum::<usize>()
            + self.content_type.as_ref().map_or(0, |s| entry(s.len()))
            + self.response_topic.as_ref().map_or(0, |s| entry(s.len()))
            + self.correlation_data.as_ref().map_or(0, |d| entry(d.len()))
            + if self.utf8_payload { entry(0) } else { 0 }
            + self.expires_at_ms.map_or(0, |_| entry(8))
            + self.origin.map_or(0, |_| entry(8))
    }

    /// Writes the block: its `u16` length, then one entry per header (kind,
    /// `u16` length, value). A value longer than a block holds (65,532
    /// bytes) is cut, at a character boundary for text, and an entry that
    /// would take the block past [`MAX_HEADERS_LEN`] is left out: callers
    /// that must not lose any check [`Headers::encoded_len`] first.
    pub fn encode(&self, dst: &mut BytesMut) {
        fn entry(dst: &mut BytesMut, end: usize, kind: u8, parts: &[&[u8]]) {
            let len: usize = parts.iter().map(|part| part.len()).sum();
            if dst.len() + 3 + len > end {
                return;
            }
            dst.put_u8(kind);
            dst.put_u16(len as u16);
            for part in parts {
                dst.put_slice(part);
            }
        }
        // An entry of any one value fits an empty block.
        const MAX_VALUE: usize = MAX_HEADERS_LEN - 3;
        dst.reserve(2 + self.encoded_len().min(MAX_HEADERS_LEN));
        let start = dst.len();
        dst.put_u16(0);
        let end = start + 2 + MAX_HEADERS_LEN;
        for (name, value) in &self.user {
            let name = clip(name, MAX_VALUE - 2);
            let value = clip(value, MAX_VALUE - 2 - name.len());
            let name_len = (name.len() as u16).to_be_bytes();
            let parts: [&[u8]; 3] = [&name_len, name.as_bytes(), value.as_bytes()];
            entry(dst, end, KIND_USER, &parts);
        }
        if let Some(content_type) = &self.content_type {
            let value = clip(content_type, MAX_VALUE).as_bytes();
            entry(dst, end, KIND_CONTENT_TYPE, &[value]);
        }
        if let Some(topic) = &self.response_topic {
            entry(
                dst,
                end,
                KIND_RESPONSE_TOPIC,
                &[clip(topic, MAX_VALUE).as_bytes()],
            );
        }
        if let Some(data) = &self.correlation_data {
            let value = &data[..data.len().min(MAX_VALUE)];
            entry(dst, end, KIND_CORRELATION_DATA, &[value]);
        }
        if self.utf8_payload {
            entry(dst, end, KIND_UTF8_PAYLOAD, &[]);
        }
        if let Some(at) = self.expires_at_ms {
            entry(dst, end, KIND_EXPIRES_AT, &[&at.to_be_bytes()]);
        }
        if let Some(origin) = self.origin {
            entry(dst, end, KIND_ORIGIN, &[&origin.to_be_bytes()]);
        }
        let len = (dst.len() - start - 2) as u16;
        dst[start..start + 2].copy_from_slice(&len.to_be_bytes());
    }

    /// Reads a block's entries (`block` is what follows its length field):
    /// unknown kinds are skipped, so a later version may add some.
    pub fn decode(block: &Bytes) -> Result<Headers, &'static str> {
        let mut headers = Headers::default();
        let mut at = 0;
        while at < block.len() {
            if block.len() - at < 3 {
                return Err("a header entry is cut short");
            }
            let kind = block[at];
            let len = usize::from(u16::from_be_bytes([block[at + 1], block[at + 2]]));
            let start = at + 3;
            if block.len() - start < len {
                return Err("a header value runs past the block");
            }
            let value = block.slice(start..start + len);
            at = start + len;
            let text = |bytes: &[u8]| {
                std::str::from_utf8(bytes)
                    .map(str::to_owned)
                    .map_err(|_| "a text header is not UTF-8")
            };
            match kind {
                KIND_USER => {
                    if value.len() < 2 {
                        return Err("a user header has no name length");
                    }
                    let name_len = usize::from(u16::from_be_bytes([value[0], value[1]]));
                    if value.len() - 2 < name_len {
                        return Err("a user header's name runs past its entry");
                    }
                    let name = text(&value[2..2 + name_len])?;
                    headers.user.push((name, text(&value[2 + name_len..])?));
                }
                KIND_CONTENT_TYPE => headers.content_type = Some(text(&value)?),
                KIND_RESPONSE_TOPIC => headers.response_topic = Some(text(&value)?),
                KIND_CORRELATION_DATA => headers.correlation_data = Some(value),
                KIND_UTF8_PAYLOAD => headers.utf8_payload = true,
                KIND_EXPIRES_AT => {
                    let bytes: [u8; 8] = value[..]
                        .try_into()
                        .map_err(|_| "the expiry header is not 8 bytes")?;
                    headers.expires_at_ms = Some(u64::from_be_bytes(bytes));
                }
                KIND_ORIGIN => {
                    let bytes: [u8; 8] = value[..]
                        .try_into()
                        .map_err(|_| "the origin header is not 8 bytes")?;
                    headers.origin = Some(u64::from_be_bytes(bytes));
                }
                _ => {}
            }
        }
        Ok(headers)
    }
}

/// `body` (a body as [`crate::Body`] holds it) without its headers block
/// and retain bit: `None` when it has neither. What a broker sends a
/// version 1 connection.
pub fn strip_headers(body: &[u8]) -> Option<Bytes> {
    let format = *body.first()?;
    if format & (FORMAT_HEADERS | FORMAT_RETAIN) == 0 {
        return None;
    }
    let start = if format & FORMAT_HEADERS == 0 || body.len() < 3 {
        1
    } else {
        (3 + usize::from(u16::from_be_bytes([body[1], body[2]]))).min(body.len())
    };
    let mut bytes = Vec::with_capacity(1 + body.len() - start);
    // Version 1 defines neither bit.
    bytes.push(format & !(FORMAT_HEADERS | FORMAT_RETAIN));
    bytes.extend_from_slice(&body[start..]);
    Some(Bytes::from(bytes))
}

/// Checks the headers block of a body (not empty) whose format byte
/// announces one.
pub(crate) fn check_headers(body: &Bytes, frame: &'static str) -> Result<(), FrameError> {
    if body[0] & FORMAT_HEADERS == 0 {
        return Ok(());
    }
    if body.len() < 3 {
        return Err(FrameError::Truncated {
            frame,
            field: "headers",
            offset: 1,
            need: 2,
            have: body.len() - 1,
        });
    }
    let len = usize::from(u16::from_be_bytes([body[1], body[2]]));
    if body.len() - 3 < len {
        return Err(FrameError::Truncated {
            frame,
            field: "headers",
            offset: 3,
            need: len,
            have: body.len() - 3,
        });
    }
    Headers::decode(&body.slice(3..3 + len))
        .map_err(|reason| FrameError::BadHeaders { frame, reason })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Body, PayloadFormat};

    fn full() -> Headers {
        Headers {
            user: vec![
                ("a".into(), "1".into()),
                ("a".into(), "2".into()),
                ("ключ".into(), String::new()),
            ],
            content_type: Some("text/plain".into()),
            response_topic: Some("replies/7".into()),
            correlation_data: Some(Bytes::from_static(&[0, 1, 2])),
            utf8_payload: true,
            expires_at_ms: Some(1_700_000_000_123),
            origin: Some(42),
        }
    }

    #[test]
    fn every_header_round_trips_in_order_through_a_body() {
        let headers = full();
        let body = Body::with_headers(PayloadFormat::Zstd, 2, &headers, b"payload");
        let parsed = Body::parse(body.as_bytes().clone(), "MESSAGE").expect("valid");
        assert_eq!(parsed.headers(), headers);
        assert_eq!(&parsed.payload()[..], b"payload");
        assert_eq!(parsed.format(), PayloadFormat::Zstd);
        assert_eq!(parsed.qos(), 2);
        let mut block = BytesMut::new();
        headers.encode(&mut block);
        assert_eq!(block.len(), 2 + headers.encoded_len());
    }

    #[test]
    fn entries_past_the_block_limit_are_left_out_whole() {
        let headers = Headers {
            user: vec![("big".into(), "v".repeat(40_000)); 2],
            content_type: Some("text/plain".into()),
            ..Headers::default()
        };
        assert!(headers.encoded_len() > MAX_HEADERS_LEN);
        let body = Body::with_headers(PayloadFormat::Plain, 0, &headers, b"p");
        let parsed = Body::parse(body.into_bytes(), "PUBLISH").expect("still valid");
        let kept = parsed.headers();
        assert_eq!(kept.user.len(), 1);
        assert_eq!(kept.content_type.as_deref(), Some("text/plain"));
        assert_eq!(&parsed.payload()[..], b"p");
    }

    #[test]
    fn no_headers_means_no_block_and_the_version_1_layout() {
        let body = Body::with_headers(PayloadFormat::Plain, 0, &Headers::default(), b"x");
        assert_eq!(&body.as_bytes()[..], b"\x00x");
        assert_eq!(body.headers(), Headers::default());
        assert_eq!(body.without_headers(), body);
    }

    #[test]
    fn without_headers_keeps_the_format_and_payload() {
        let body = Body::with_headers(PayloadFormat::Zstd, 1, &full(), b"p");
        let bare = body.without_headers();
        assert_eq!(&bare.as_bytes()[..], &[0x01 | 0x02, b'p'][..]);
    }

    #[test]
    fn unknown_kinds_are_skipped() {
        let mut bytes = vec![FORMAT_HEADERS, 0, 9];
        bytes.extend_from_slice(&[0x7f, 0, 1, 0xaa]); // unknown kind
        bytes.extend_from_slice(&[KIND_CONTENT_TYPE, 0, 2, b'a', b'b']);
        bytes.push(b'!');
        let body = Body::parse(Bytes::from(bytes), "PUBLISH").expect("valid");
        assert_eq!(body.headers().content_type.as_deref(), Some("ab"));
        assert_eq!(&body.payload()[..], b"!");
    }

    #[test]
    fn a_broken_block_is_a_typed_error() {
        let cases: &[&[u8]] = &[
            &[FORMAT_HEADERS],                                      // no length
            &[FORMAT_HEADERS, 0, 4, 1],                             // block past the body
            &[FORMAT_HEADERS, 0, 2, 1, 0],                          // entry cut short
            &[FORMAT_HEADERS, 0, 3, KIND_CONTENT_TYPE, 0, 1],       // value past the block
            &[FORMAT_HEADERS, 0, 4, KIND_CONTENT_TYPE, 0, 1, 0xff], // not UTF-8
            &[FORMAT_HEADERS, 0, 4, KIND_EXPIRES_AT, 0, 1, 0],      // expiry not 8 bytes
            &[FORMAT_HEADERS, 0, 4, KIND_USER, 0, 1, 0],            // user without name length
            &[FORMAT_HEADERS, 0, 5, KIND_USER, 0, 2, 0, 9],         // name past its entry
        ];
        for case in cases {
            let err = Body::parse(Bytes::copy_from_slice(case), "PUBLISH").expect_err("refused");
            assert!(
                matches!(
                    err,
                    FrameError::Truncated { .. } | FrameError::BadHeaders { .. }
                ),
                "{case:?}: {err:?}"
            );
        }
    }

    #[test]
    fn over_long_values_are_cut_at_a_character_boundary() {
        let headers = Headers {
            content_type: Some("é".repeat(40_000)),
            ..Headers::default()
        };
        let body = Body::with_headers(PayloadFormat::Plain, 0, &headers, b"");
        let parsed = Body::parse(body.into_bytes(), "PUBLISH").expect("still valid");
        let kept = parsed.headers().content_type.expect("kept");
        assert_eq!(kept.len(), 65_532);
    }
}
