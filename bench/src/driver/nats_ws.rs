//! NATS subscribers over nats-server's WebSocket listener (configured with
//! `websocket { listen: "127.0.0.1:PORT", no_tls: true }`), as a browser
//! connects: the NATS text protocol (`CONNECT`, `SUB`, `PING`/`PONG` out;
//! `INFO`, `MSG`, `PING`/`PONG`, `+OK`, `-ERR` in) carried in WebSocket
//! messages.
//!
//! nats-server frames its output as it flushes it, so a message may hold
//! many operations and an operation may continue in the next message: the
//! messages' bytes are one stream, and [`NatsReader`] cuts operations out of
//! it (copying only an operation that spans two messages). The parser is
//! written here, small and only as wide as a subscriber needs: async-nats's
//! own WebSocket transport would put a different WebSocket library and the
//! client's per-subscription channels under NATS than under corebus, whose
//! WebSocket subscriber is as thin as this one over the same library.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::{Buf, Bytes, BytesMut};

use super::ws::{self, Ws, SETUP_TIMEOUT};
use super::{failed, Endpoint, Incidents, Received, NAMESPACE};
use crate::options::Target;
use crate::payload::Header;
use crate::BenchError;

const TARGET: Target = Target::Nats;
/// Longest control line accepted (nats-server's own limit is 4096 bytes).
pub const MAX_CONTROL_LINE: usize = 4096;
/// Largest `MSG` payload accepted (nats-server's default `max_payload` is
/// 1 MiB; a server configured for more would need this raised).
pub const MAX_PAYLOAD: usize = 64 << 20;

/// One operation from the server, as a subscriber sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NatsOp {
    /// `MSG <subject> <sid> [reply-to] <#bytes>`, then the payload.
    Msg {
        /// The subscription id the client gave in `SUB`.
        sid: u64,
        /// The message's bytes.
        payload: Bytes,
    },
    /// `PING`: the server wants a `PONG`.
    Ping,
    /// `PONG`: the answer to a `PING` of ours.
    Pong,
    /// `+OK` (verbose mode only).
    Ok,
    /// `INFO {...}`: the server's description of itself.
    Info,
    /// `-ERR '...'`: the server reports an error (and usually closes).
    Err(String),
}

/// Cuts NATS operations out of the bytes of consecutive WebSocket messages.
#[derive(Debug, Default)]
pub struct NatsReader {
    /// Bytes received and not yet consumed: whole operations, and at the end
    /// possibly the start of one.
    pending: Bytes,
}

impl NatsReader {
    /// Appends the bytes of the next message. Zero-copy when everything
    /// before has been consumed, which is usual.
    pub fn feed(&mut self, data: Bytes) {
        if self.pending.is_empty() {
            self.pending = data;
        } else {
            let mut joined = BytesMut::with_capacity(self.pending.len() + data.len());
            joined.extend_from_slice(&self.pending);
            joined.extend_from_slice(&data);
            self.pending = joined.freeze();
        }
    }

    /// The next whole operation, `Ok(None)` when more bytes are needed.
    pub fn next_op(&mut self) -> Result<Option<NatsOp>, String> {
        let bytes = &self.pending;
        let search = &bytes[..bytes.len().min(MAX_CONTROL_LINE + 2)];
        let Some(newline) = search.iter().position(|byte| *byte == b'\n') else {
            if bytes.len() > MAX_CONTROL_LINE {
                return Err(format!(
                    "no end of line within {MAX_CONTROL_LINE} bytes: {:?}",
                    String::from_utf8_lossy(&bytes[..64])
                ));
            }
            return Ok(None);
        };
        if newline == 0 || bytes[newline - 1] != b'\r' {
            return Err(format!(
                "a control line that does not end in CR LF: {:?}",
                String::from_utf8_lossy(&bytes[..newline])
            ));
        }
        let line = &bytes[..newline - 1];
        let after_line = newline + 1;
        let (name, args) = match line.iter().position(|byte| *byte == b' ' || *byte == b'\t') {
            Some(space) => (&line[..space], &line[space + 1..]),
            None => (line, &line[line.len()..]),
        };
        let op = if name.eq_ignore_ascii_case(b"MSG") {
            let (sid, size) = msg_args(args)?;
            let end = after_line + size;
            if bytes.len() < end + 2 {
                return Ok(None);
            }
            if &bytes[end..end + 2] != b"\r\n" {
                return Err(format!(
                    "a MSG payload of {size} bytes not followed by CR LF"
                ));
            }
            let payload = self.pending.slice(after_line..end);
            self.pending.advance(end + 2);
            return Ok(Some(NatsOp::Msg { sid, payload }));
        } else if name.eq_ignore_ascii_case(b"PING") {
            NatsOp::Ping
        } else if name.eq_ignore_ascii_case(b"PONG") {
            NatsOp::Pong
        } else if name.eq_ignore_ascii_case(b"+OK") {
            NatsOp::Ok
        } else if name.eq_ignore_ascii_case(b"INFO") {
            NatsOp::Info
        } else if name.eq_ignore_ascii_case(b"-ERR") {
            let text = String::from_utf8_lossy(args);
            NatsOp::Err(text.trim().trim_matches('\'').to_owned())
        } else {
            return Err(format!(
                "an operation a subscriber does not expect: {:?}",
                String::from_utf8_lossy(line)
            ));
        };
        self.pending.advance(after_line);
        Ok(Some(op))
    }
}

/// The sid and payload size of `MSG <subject> <sid> [reply-to] <#bytes>`.
fn msg_args(args: &[u8]) -> Result<(u64, usize), String> {
    let mut fields = args
        .split(|byte| *byte == b' ' || *byte == b'\t')
        .filter(|field| !field.is_empty());
    let bad = || format!("a malformed MSG line: {:?}", String::from_utf8_lossy(args));
    let (Some(_subject), Some(sid), Some(third)) = (fields.next(), fields.next(), fields.next())
    else {
        return Err(bad());
    };
    let size = match (fields.next(), fields.next()) {
        (None, _) => third,
        (Some(size), None) => size,
        (Some(_), Some(_)) => return Err(bad()),
    };
    let sid = decimal(sid).ok_or_else(bad)?;
    let size = decimal(size).ok_or_else(bad)? as usize;
    if size > MAX_PAYLOAD {
        return Err(format!("a MSG of {size} bytes, over {MAX_PAYLOAD}"));
    }
    Ok((sid, size))
}

/// An unsigned decimal number of at most 18 digits.
fn decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 18 {
        return None;
    }
    digits.iter().try_fold(0u64, |value, byte| {
        byte.is_ascii_digit()
            .then(|| value * 10 + u64::from(byte - b'0'))
    })
}

/// The subject of a benchmark topic, as the native NATS driver names it.
fn subject(topic: &str) -> String {
    format!("{NAMESPACE}.{topic}")
}

/// One WebSocket with one subscription per topic; subscription `i` has sid
/// `i + 1`.
pub struct NatsWsSubscriber {
    ws: Ws,
    reader: NatsReader,
    /// A `PONG` is owed (sent first on the next call if a call was cancelled
    /// while sending it).
    pong_owed: bool,
    incidents: Arc<Incidents>,
}

impl NatsWsSubscriber {
    pub(super) async fn connect(
        url: &str,
        endpoint: &Endpoint,
        topics: &[&str],
    ) -> Result<Self, BenchError> {
        let ws = ws::open(TARGET, url, None).await?;
        let mut subscriber = NatsWsSubscriber {
            ws,
            reader: NatsReader::default(),
            pong_owed: false,
            incidents: endpoint.incidents.clone(),
        };
        tokio::time::timeout(SETUP_TIMEOUT, subscriber.set_up(topics))
            .await
            .map_err(|_| failed(TARGET, "subscribe", "no answer in time"))??;
        Ok(subscriber)
    }

    /// `CONNECT`, a `SUB` per topic and a `PING` in one message; the `PONG`
    /// proves the server has processed the subscriptions, so later publishes
    /// reach them.
    async fn set_up(&mut self, topics: &[&str]) -> Result<(), BenchError> {
        let mut out = String::from(concat!(
            r#"CONNECT {"verbose":false,"pedantic":false,"tls_required":false,"#,
            r#""name":"corebus-bench ws","lang":"rust","version":"0.1.0","protocol":1,"#,
            r#""echo":false,"headers":false,"no_responders":false}"#,
            "\r\n"
        ));
        for (index, topic) in topics.iter().enumerate() {
            out += &format!("SUB {} {}\r\n", subject(topic), index + 1);
        }
        out += "PING\r\n";
        ws::send(&mut self.ws, TARGET, Bytes::from(out)).await?;
        loop {
            match self.next_op("subscribe").await? {
                NatsOp::Pong => return Ok(()),
                NatsOp::Info | NatsOp::Ok => {}
                NatsOp::Ping => self.pong().await?,
                NatsOp::Err(why) => return Err(failed(TARGET, "subscribe", why)),
                NatsOp::Msg { sid, .. } => {
                    return Err(failed(
                        TARGET,
                        "subscribe",
                        format!("a MSG for sid {sid} before any publish"),
                    ))
                }
            }
        }
    }

    /// The next operation, reading a message when the bytes so far hold
    /// none. Cancel-safe.
    async fn next_op(&mut self, action: &'static str) -> Result<NatsOp, BenchError> {
        loop {
            if let Some(op) = self
                .reader
                .next_op()
                .map_err(|why| failed(TARGET, action, why))?
            {
                return Ok(op);
            }
            let data = ws::next_data(&mut self.ws, true).await.map_err(|why| {
                self.incidents.disconnects.fetch_add(1, Ordering::Relaxed);
                failed(TARGET, action, why)
            })?;
            self.reader.feed(data);
        }
    }

    async fn pong(&mut self) -> Result<(), BenchError> {
        self.pong_owed = true;
        ws::send(&mut self.ws, TARGET, Bytes::from_static(b"PONG\r\n")).await?;
        self.pong_owed = false;
        Ok(())
    }

    /// The next message of any subscription. Cancel-safe.
    pub(super) async fn next(&mut self) -> Result<Option<Received>, BenchError> {
        if self.pong_owed {
            self.pong().await?;
        }
        loop {
            match self.next_op("receive").await? {
                NatsOp::Msg { sid, payload } => {
                    return Ok(Some(Received {
                        // A sid the harness never gave maps to no
                        // subscription, which the load code reports.
                        subscription: (sid as usize).checked_sub(1).unwrap_or(usize::MAX),
                        seq: None,
                        header: Header::parse(&payload),
                        len: payload.len(),
                    }));
                }
                NatsOp::Ping => self.pong().await?,
                NatsOp::Pong | NatsOp::Ok | NatsOp::Info => {}
                NatsOp::Err(why) => return Err(failed(TARGET, "receive", why)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every operation of `wire`, fed in pieces cut at `cuts`.
    fn ops(wire: &[u8], cuts: &[usize]) -> Result<Vec<NatsOp>, String> {
        let mut reader = NatsReader::default();
        let mut ops = Vec::new();
        let mut start = 0;
        for end in cuts.iter().copied().chain([wire.len()]) {
            reader.feed(Bytes::copy_from_slice(&wire[start..end]));
            start = end;
            while let Some(op) = reader.next_op()? {
                ops.push(op);
            }
        }
        Ok(ops)
    }

    fn msg(sid: u64, payload: &'static [u8]) -> NatsOp {
        NatsOp::Msg {
            sid,
            payload: Bytes::from_static(payload),
        }
    }

    const WIRE: &[u8] = b"INFO {\"server_id\":\"x\",\"max_payload\":1048576}\r\n\
        MSG bench.r1.t0 1 5\r\nhello\r\n\
        PING\r\n\
        MSG bench.r1.t1 12 _INBOX.reply 7\r\na\r\nb\r\nc\r\n\
        msg\tbench.r1.t0  3 0\r\n\r\n\
        +OK\r\nPONG\r\n\
        -ERR 'Slow Consumer Detected'\r\n";

    fn expected() -> Vec<NatsOp> {
        vec![
            NatsOp::Info,
            msg(1, b"hello"),
            NatsOp::Ping,
            msg(12, b"a\r\nb\r\nc"),
            msg(3, b""),
            NatsOp::Ok,
            NatsOp::Pong,
            NatsOp::Err("Slow Consumer Detected".into()),
        ]
    }

    #[test]
    fn operations_in_one_message() {
        assert_eq!(ops(WIRE, &[]), Ok(expected()));
    }

    #[test]
    fn operations_split_across_messages_anywhere() {
        for cut in 0..=WIRE.len() {
            assert_eq!(ops(WIRE, &[cut]), Ok(expected()), "cut at {cut}");
        }
        for first in 0..WIRE.len() {
            let second = (first + 7).min(WIRE.len());
            assert_eq!(
                ops(WIRE, &[first, second]),
                Ok(expected()),
                "cuts {first}, {second}"
            );
        }
        // One byte per message.
        let cuts: Vec<usize> = (1..WIRE.len()).collect();
        assert_eq!(ops(WIRE, &cuts), Ok(expected()));
    }

    #[test]
    fn a_payload_is_a_slice_of_the_message() {
        let wire = Bytes::from_static(b"MSG s 1 3\r\nabc\r\n");
        let mut reader = NatsReader::default();
        reader.feed(wire.clone());
        match reader.next_op() {
            Ok(Some(NatsOp::Msg { payload, .. })) => {
                assert_eq!(payload.as_ptr(), wire[11..].as_ptr(), "not copied");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn malformed_input_is_an_error() {
        for (wire, why) in [
            (&b"MSG s x 3\r\nabc\r\n"[..], "malformed MSG"),
            (b"MSG s 1\r\n", "malformed MSG"),
            (b"MSG s 1 r 3 extra\r\nabc\r\n", "malformed MSG"),
            (b"MSG s 1 -3\r\n", "malformed MSG"),
            (b"MSG s 1 3\r\nabcd\r\n", "not followed by CR LF"),
            (b"PING\n", "does not end in CR LF"),
            (b"HMSG s 1 10 13\r\n", "does not expect"),
            (b"MSG s 1 99999999999\r\n", "over"),
        ] {
            let err = ops(wire, &[]).expect_err("an error");
            assert!(err.contains(why), "{wire:?}: {err}");
        }
        let endless = vec![b'x'; MAX_CONTROL_LINE + 1];
        let err = ops(&endless, &[]).expect_err("no end of line");
        assert!(err.contains("no end of line"), "{err}");
        assert_eq!(
            ops(&endless[..MAX_CONTROL_LINE], &[]),
            Ok(vec![]),
            "may still end"
        );
    }
}
