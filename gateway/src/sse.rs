//! A subscription as Server-Sent Events (the `text/event-stream` format of
//! the HTML standard), for pages that cannot use WebSockets.
//!
//! | Frame           | Event                                                        |
//! |-----------------|--------------------------------------------------------------|
//! | `SUB_OK`        | `event: subscribed`, `id: EPOCH:START_AFTER`, JSON data      |
//! | `MESSAGE`       | unnamed (`message`), `id: EPOCH:SEQ`, the payload as text    |
//! |                 | or, when it is not UTF-8 or holds a CR, `event: binary` with |
//! |                 | the payload in base64; a zstd-compressed payload as          |
//! |                 | `event: zstd`, the compressed bytes in base64                |
//! | `TOPIC_MESSAGE` | `event: topic-message` (a pattern's item), JSON data: topic, |
//! |                 | epoch, seq and `payload` (UTF-8), `payload_base64` or        |
//! |                 | `payload_zstd` (base64); no `id`: patterns are live only     |
//! | `DISCONTINUITY` | `event: discontinuity`, `id: EPOCH:NEXT_SEQ-1`, JSON data    |
//! | `ERROR`         | `event: broker-error`, JSON data                             |
//! | `GOAWAY`        | `event: goaway`, JSON data                                   |
//! | `PING`          | a comment line, `: ping`                                     |
//!
//! Every event that moves the stream's position carries an `id`, so the
//! browser's automatic reconnect sends `Last-Event-ID` and resumes right
//! after the last event it received. Epochs are 64-bit: in JSON they are
//! strings, since JavaScript numbers hold 53 bits.

use corebus_net::{Discontinuity, ErrorFrame, Frame, GoAway, Message, PayloadFormat, SubOk};
use data_encoding::BASE64;
use serde_json::json;

/// What the stream does after an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum After {
    /// Goes on.
    Continue,
    /// Ends: the subscription was refused or the connection failed.
    Close,
}

/// The request id of the one `SUBSCRIBE` an event stream sends.
pub const SUBSCRIBE_REQUEST_ID: u32 = 1;
/// Its subscription id.
pub const SUB_ID: u32 = 1;

/// Appends the event for `frame` to `out`; frames without an event (the
/// handshake's `WELCOME`) append nothing.
pub fn render(frame: &Frame, out: &mut Vec<u8>) -> After {
    match frame {
        Frame::SubOk(SubOk {
            epoch, start_after, ..
        }) => {
            let data = json!({"epoch": epoch.to_string(), "start_after": start_after});
            // Epoch 0: a pattern subscription, which has no position to
            // resume from, so no `id` (a reconnect subscribes live again).
            let id = (*epoch != 0).then_some((*epoch, *start_after));
            event(out, Some("subscribed"), id, &data.to_string());
        }
        Frame::TopicMessage(message) => {
            // A pattern's item: its topic, that topic's epoch and sequence
            // number, and the payload, in one JSON object; no `id` (live
            // only).
            let payload = message.body.payload();
            let mut data = json!({
                "topic": message.topic,
                "epoch": message.epoch.to_string(),
                "seq": message.seq,
            });
            match (message.body.format(), std::str::from_utf8(&payload)) {
                (PayloadFormat::Plain, Ok(text)) => data["payload"] = json!(text),
                (PayloadFormat::Plain, Err(_)) => {
                    data["payload_base64"] = json!(BASE64.encode(&payload))
                }
                (PayloadFormat::Zstd, _) => data["payload_zstd"] = json!(BASE64.encode(&payload)),
            }
            event(out, Some("topic-message"), None, &data.to_string());
        }
        Frame::Message(Message {
            epoch, seq, body, ..
        }) => {
            let payload = body.payload();
            let position = Some((*epoch, *seq));
            match (body.format(), std::str::from_utf8(&payload)) {
                (PayloadFormat::Plain, Ok(text)) if !text.contains('\r') => {
                    event(out, None, position, text)
                }
                // The broker forwards a compressed payload as it is: the
                // page decompresses it (the TypeScript client's decoder).
                (PayloadFormat::Zstd, _) => {
                    event(out, Some("zstd"), position, &BASE64.encode(&payload))
                }
                (PayloadFormat::Plain, _) => {
                    event(out, Some("binary"), position, &BASE64.encode(&payload))
                }
            }
        }
        Frame::Discontinuity(Discontinuity {
            epoch,
            last_seq,
            next_seq,
            ..
        }) => {
            let data = json!({
                "epoch": epoch.to_string(),
                "last_seq": last_seq,
                "next_seq": next_seq,
            });
            // The position is now just before `next_seq`: a reconnect from
            // here does not report the same gap again.
            let position = (*epoch, next_seq.saturating_sub(1));
            event(
                out,
                Some("discontinuity"),
                Some(position),
                &data.to_string(),
            );
        }
        Frame::Error(error) => {
            render_error(error, out);
            if error.fatal || error.request_id == SUBSCRIBE_REQUEST_ID {
                return After::Close;
            }
        }
        Frame::GoAway(GoAway { drain_ms, message }) => {
            let data = json!({"drain_ms": drain_ms, "message": message});
            event(out, Some("goaway"), None, &data.to_string());
        }
        Frame::Ping(_) => out.extend_from_slice(b": ping\n\n"),
        _ => {}
    }
    After::Continue
}

fn render_error(error: &ErrorFrame, out: &mut Vec<u8>) {
    let code = match error.code() {
        Some(code) => code.name().to_owned(),
        None => error.code.to_string(),
    };
    let data = json!({
        "code": code,
        "message": error.message,
        "fatal": error.fatal,
    });
    event(out, Some("broker-error"), None, &data.to_string());
}

/// One event; `data` holds no CR, and each of its lines becomes a `data:`
/// field (the browser joins them with LF again).
fn event(out: &mut Vec<u8>, name: Option<&str>, id: Option<(u64, u64)>, data: &str) {
    if let Some(name) = name {
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(name.as_bytes());
        out.push(b'\n');
    }
    if let Some((epoch, seq)) = id {
        out.extend_from_slice(format!("id: {epoch}:{seq}\n").as_bytes());
    }
    for line in data.split('\n') {
        // An empty payload is still one `data:` field: the browser
        // dispatches an event with empty data, where no field would
        // dispatch nothing.
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(line.as_bytes());
        out.push(b'\n');
    }
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;
    use corebus_net::{Body, ErrorCode};

    fn rendered(frame: Frame) -> (String, After) {
        let mut out = Vec::new();
        let after = render(&frame, &mut out);
        (String::from_utf8(out).expect("events are UTF-8"), after)
    }

    fn message(payload: &'static [u8]) -> Frame {
        Frame::Message(Message {
            sub_id: SUB_ID,
            epoch: 18_446_744_073_709_551_000,
            seq: 42,
            body: Body::plain(payload),
        })
    }

    #[test]
    fn a_text_payload_is_the_data_of_an_unnamed_event_with_its_position() {
        let (text, after) = rendered(message(b"hello\nworld"));
        assert_eq!(
            text,
            "id: 18446744073709551000:42\ndata: hello\ndata: world\n\n"
        );
        assert_eq!(after, After::Continue);
        let (text, _) = rendered(message(b""));
        assert_eq!(text, "id: 18446744073709551000:42\ndata: \n\n");
        let (text, _) = rendered(message(b" leading space"));
        assert_eq!(
            text,
            "id: 18446744073709551000:42\ndata:  leading space\n\n"
        );
    }

    #[test]
    fn a_payload_that_text_would_alter_travels_in_base64() {
        let (text, _) = rendered(message(b"a\r\nb"));
        assert_eq!(
            text,
            "event: binary\nid: 18446744073709551000:42\ndata: YQ0KYg==\n\n"
        );
        let (text, _) = rendered(message(&[0xff, 0x00]));
        assert_eq!(
            text,
            "event: binary\nid: 18446744073709551000:42\ndata: /wA=\n\n"
        );
    }

    /// A pattern's item names its topic in JSON, and neither it nor the
    /// pattern's `subscribed` event carries an `id`.
    #[test]
    fn a_pattern_item_is_a_topic_message_event_without_an_id() {
        let (text, _) = rendered(Frame::SubOk(SubOk {
            request_id: SUBSCRIBE_REQUEST_ID,
            sub_id: SUB_ID,
            epoch: 0,
            start_after: 0,
        }));
        assert_eq!(
            text,
            "event: subscribed\ndata: {\"epoch\":\"0\",\"start_after\":0}\n\n"
        );
        let item = |body| {
            rendered(Frame::TopicMessage(corebus_net::TopicMessage {
                sub_id: SUB_ID,
                epoch: 18_446_744_073_709_551_000,
                seq: 3,
                topic: "orders/eu".into(),
                body,
            }))
            .0
        };
        assert_eq!(
            item(Body::plain(b"hi")),
            "event: topic-message\ndata: {\"epoch\":\"18446744073709551000\",\"payload\":\"hi\",\"seq\":3,\"topic\":\"orders/eu\"}\n\n"
        );
        assert!(item(Body::plain(&[0xff])).contains("\"payload_base64\":\"/w==\""));
        assert!(item(Body::new(PayloadFormat::Zstd, b"hi")).contains("\"payload_zstd\":\"aGk=\""));
    }

    /// The gateway never decompresses: a zstd payload, even one whose bytes
    /// happen to be text, is named as such and travels in base64.
    #[test]
    fn a_compressed_payload_is_a_zstd_event_in_base64() {
        let (text, after) = rendered(Frame::Message(Message {
            sub_id: SUB_ID,
            epoch: 7,
            seq: 3,
            body: Body::new(PayloadFormat::Zstd, b"hi"),
        }));
        assert_eq!(text, "event: zstd\nid: 7:3\ndata: aGk=\n\n");
        assert_eq!(after, After::Continue);
    }

    #[test]
    fn subscribed_and_discontinuity_events_move_the_position() {
        let (text, _) = rendered(Frame::SubOk(SubOk {
            request_id: SUBSCRIBE_REQUEST_ID,
            sub_id: SUB_ID,
            epoch: 7,
            start_after: 3,
        }));
        assert_eq!(
            text,
            "event: subscribed\nid: 7:3\ndata: {\"epoch\":\"7\",\"start_after\":3}\n\n"
        );
        let (text, _) = rendered(Frame::Discontinuity(Discontinuity {
            sub_id: SUB_ID,
            epoch: 9,
            last_seq: 4,
            next_seq: 10,
        }));
        assert_eq!(
            text,
            "event: discontinuity\nid: 9:9\ndata: {\"epoch\":\"9\",\"last_seq\":4,\"next_seq\":10}\n\n"
        );
    }

    #[test]
    fn a_refused_subscription_or_a_fatal_error_ends_the_stream() {
        let forbidden = ErrorFrame::new(
            SUBSCRIBE_REQUEST_ID,
            ErrorCode::Forbidden,
            false,
            "may not \"read\" t",
        );
        let (text, after) = rendered(Frame::Error(forbidden));
        assert_eq!(
            text,
            "event: broker-error\ndata: {\"code\":\"forbidden\",\"fatal\":false,\"message\":\"may not \\\"read\\\" t\"}\n\n"
        );
        assert_eq!(after, After::Close);
        let fatal = ErrorFrame::new(0, ErrorCode::Unauthorized, true, "bad token");
        assert_eq!(rendered(Frame::Error(fatal)).1, After::Close);
        let other = ErrorFrame::new(0, ErrorCode::Internal, false, "note");
        assert_eq!(rendered(Frame::Error(other)).1, After::Continue);
    }

    #[test]
    fn pings_are_comments_and_the_handshake_is_silent() {
        assert_eq!(rendered(Frame::Ping(5)).0, ": ping\n\n");
        let welcome = Frame::Welcome(corebus_net::Welcome {
            version: 1,
            max_frame: 1 << 20,
            shard: 0,
            shard_count: 1,
        });
        assert_eq!(rendered(welcome).0, "");
    }
}
