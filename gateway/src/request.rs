//! The HTTP request that opens a browser connection: a WebSocket upgrade on
//! [`WS_PATH`] (or, for MQTT over WebSocket, [`MQTT_PATH`]) or an event
//! stream on [`SSE_PATH`], and what the broker answers.
//!
//! The request head is parsed by tungstenite (httparse under it), and a
//! WebSocket upgrade is validated and answered by tungstenite's own server
//! handshake functions; this file adds corebus's rules: the paths, the
//! `Origin` allow-list, the `corebus.v1` and `mqtt` subprotocols, and the
//! parameters of an event stream.

use corebus_net::{ResumePoint, TopicKey};
use http::header::{HeaderMap, HeaderValue};
use http::StatusCode;
use tungstenite::error::{Error as WsError, ProtocolError};
use tungstenite::handshake::machine::TryParse;
use tungstenite::handshake::server::{create_response, write_response, Request};

use crate::websocket::SUBPROTOCOL;
use crate::Origins;

/// The path of the WebSocket transport.
pub const WS_PATH: &str = "/v1/ws";
/// The path of MQTT over WebSocket (subprotocol [`MQTT_SUBPROTOCOL`]), when
/// the broker speaks MQTT.
pub const MQTT_PATH: &str = "/mqtt";
/// The WebSocket subprotocol of MQTT (MQTT 5.0 section 6, 3.1.1 section 6).
pub const MQTT_SUBPROTOCOL: &str = "mqtt";
/// The path of the Server-Sent Events transport.
pub const SSE_PATH: &str = "/v1/sse";
/// The longest request head the broker reads (request line and headers); a
/// longer one is refused with 431 and costs no more memory than this.
pub const MAX_REQUEST_HEAD: usize = 8 * 1024;
/// What an event stream asks the browser to wait before reconnecting.
const SSE_RETRY_MS: u32 = 1000;

/// What to do with the bytes a browser connection sent first.
#[derive(Debug)]
pub enum Accept {
    /// The request head is not complete yet: read more.
    Incomplete,
    /// A valid WebSocket upgrade: send `response` (101), then speak WebSocket
    /// from byte `consumed` of the input on.
    WebSocket {
        /// The 101 response.
        response: Vec<u8>,
        /// Bytes of the input the request took.
        consumed: usize,
        /// The messages carry MQTT packets ([`MQTT_PATH`]), not corebus
        /// frames.
        mqtt: bool,
    },
    /// A valid event-stream request: send `response` (200 and the stream's
    /// first field), then the events of `request`'s subscription.
    Sse {
        /// What to subscribe to, with which credentials.
        request: SseRequest,
        /// The 200 response head and the stream's first bytes.
        response: Vec<u8>,
    },
    /// Answer `response()` and close.
    Refused(Refusal),
}

/// A refused request: an HTTP status and a reason for the person reading it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The HTTP status.
    pub status: u16,
    /// Why, in a sentence (the response's text body).
    pub reason: String,
}

impl Refusal {
    fn new(status: StatusCode, reason: impl Into<String>) -> Refusal {
        Refusal {
            status: status.as_u16(),
            reason: reason.into(),
        }
    }

    /// The complete HTTP response: status, a plain-text body with the reason,
    /// and `Connection: close`.
    pub fn response(&self) -> Vec<u8> {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::BAD_REQUEST);
        let body = format!("{}\n", self.reason);
        let mut builder = http::Response::builder()
            .status(status)
            .header("Content-Type", "text/plain; charset=utf-8")
            .header("Content-Length", body.len())
            .header("Connection", "close");
        if status == StatusCode::METHOD_NOT_ALLOWED {
            builder = builder.header("Allow", "GET");
        }
        if status == StatusCode::UPGRADE_REQUIRED {
            builder = builder
                .header("Upgrade", "websocket")
                .header("Sec-WebSocket-Version", "13");
        }
        let mut out = Vec::with_capacity(160 + body.len());
        if let Ok(response) = builder.body(()) {
            // Writing into a Vec fails only on a header that is not text,
            // and every header above is.
            let _ = write_response(&mut out, &response);
        }
        out.extend_from_slice(body.as_bytes());
        out
    }
}

/// An event-stream request, checked: the topic, the credentials and the
/// resume point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseRequest {
    /// The topic to subscribe to.
    pub topic: TopicKey,
    /// The credentials (`Authorization: Bearer`, else the `token` parameter);
    /// empty when there are none.
    pub credentials: Vec<u8>,
    /// Where to resume: from `Last-Event-ID` (`EPOCH:SEQ`, the last event
    /// received), else from the `from` parameter (a first sequence number in
    /// the current epoch); `None` for live messages only.
    pub resume: Option<ResumePoint>,
}

/// Reads the request head at the start of `input` and decides.
///
/// `tls` says whether the connection is TLS (for the same-origin check).
///
/// `mqtt`: the broker speaks MQTT, so [`MQTT_PATH`] is served too.
pub fn accept(input: &[u8], origins: &Origins, tls: bool, mqtt: bool) -> Accept {
    let (consumed, request) = match Request::try_parse(input) {
        Ok(Some(parsed)) => parsed,
        Ok(None) if input.len() >= MAX_REQUEST_HEAD => {
            return Accept::Refused(Refusal::new(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                format!("the request head is longer than {MAX_REQUEST_HEAD} bytes"),
            ))
        }
        Ok(None) => return Accept::Incomplete,
        Err(WsError::Protocol(ProtocolError::WrongHttpMethod)) => {
            return Accept::Refused(Refusal::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "only GET opens a connection",
            ))
        }
        Err(err) => {
            return Accept::Refused(Refusal::new(
                StatusCode::BAD_REQUEST,
                format!("not an HTTP/1.1 request: {err}"),
            ))
        }
    };
    if consumed > MAX_REQUEST_HEAD {
        return Accept::Refused(Refusal::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            format!("the request head is longer than {MAX_REQUEST_HEAD} bytes"),
        ));
    }
    let headers = request.headers();
    let origin = header_str(headers, "Origin");
    if !origins.admits(origin, header_str(headers, "Host"), tls) {
        return Accept::Refused(Refusal::new(
            StatusCode::FORBIDDEN,
            format!(
                "origin {} is not allowed to connect (see ws_allowed_origins)",
                origin.unwrap_or_default()
            ),
        ));
    }
    match request.uri().path() {
        WS_PATH => upgrade(&request, consumed, false),
        MQTT_PATH if mqtt => upgrade(&request, consumed, true),
        SSE_PATH => match event_stream(&request) {
            Ok(sse) => Accept::Sse {
                request: sse,
                response: sse_response(origin),
            },
            Err(refusal) => Accept::Refused(refusal),
        },
        path => Accept::Refused(Refusal::new(
            StatusCode::NOT_FOUND,
            format!(
                "no such path {path}: use {WS_PATH} (WebSocket) or {SSE_PATH} (Server-Sent \
                 Events){}",
                if mqtt {
                    format!(", or {MQTT_PATH} (MQTT over WebSocket)")
                } else {
                    String::new()
                }
            ),
        )),
    }
}

fn header_str<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|value| value.to_str().ok())
}

fn upgrade(request: &Request, consumed: usize, mqtt: bool) -> Accept {
    let subprotocol = if mqtt { MQTT_SUBPROTOCOL } else { SUBPROTOCOL };
    let version = header_str(request.headers(), "Sec-WebSocket-Version");
    if version.is_some() && version != Some("13") {
        return Accept::Refused(Refusal::new(
            StatusCode::UPGRADE_REQUIRED,
            "only WebSocket version 13 is supported",
        ));
    }
    let offers_ours = request
        .headers()
        .get_all("Sec-WebSocket-Protocol")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|protocol| protocol.trim() == subprotocol);
    let mut response = match create_response(request) {
        Ok(response) => response,
        Err(err) => {
            return Accept::Refused(Refusal::new(
                StatusCode::BAD_REQUEST,
                format!("not a WebSocket upgrade: {err}"),
            ))
        }
    };
    if !offers_ours {
        return Accept::Refused(Refusal::new(
            StatusCode::BAD_REQUEST,
            format!("the WebSocket subprotocol must be {subprotocol} (new WebSocket(url, \"{subprotocol}\"))"),
        ));
    }
    response.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static(subprotocol),
    );
    let mut out = Vec::with_capacity(192);
    if let Err(err) = write_response(&mut out, &response) {
        return Accept::Refused(Refusal::new(
            StatusCode::BAD_REQUEST,
            format!("cannot answer the upgrade: {err}"),
        ));
    }
    Accept::WebSocket {
        response: out,
        consumed,
        mqtt,
    }
}

fn event_stream(request: &Request) -> Result<SseRequest, Refusal> {
    let bad = |reason: String| Refusal::new(StatusCode::BAD_REQUEST, reason);
    let mut namespace = None;
    let mut topic = None;
    let mut token = None;
    let mut from = None;
    for pair in request.uri().query().unwrap_or_default().split('&') {
        if pair.is_empty() {
            continue;
        }
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        let value = query_value(value)
            .ok_or_else(|| bad(format!("parameter {name} is not percent-encoded UTF-8")))?;
        let slot = match name {
            "ns" => &mut namespace,
            "topic" => &mut topic,
            "token" => &mut token,
            "from" => &mut from,
            _ => continue,
        };
        if slot.replace(value).is_some() {
            return Err(bad(format!("parameter {name} is given twice")));
        }
    }
    let namespace = namespace.ok_or_else(|| bad("the ns parameter is missing".into()))?;
    let topic = topic.ok_or_else(|| bad("the topic parameter is missing".into()))?;
    let topic = TopicKey::new(namespace.as_bytes(), topic.as_bytes())
        .map_err(|err| bad(format!("invalid topic: {err}")))?;
    let bearer = header_str(request.headers(), "Authorization").and_then(|value| {
        let (scheme, token) = value.trim().split_once(' ')?;
        scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim().to_owned())
    });
    let credentials = bearer.or(token).unwrap_or_default().into_bytes();
    let last_event = request.headers().get("Last-Event-ID");
    let resume = match (last_event, from) {
        (Some(id), _) => {
            let id = id.to_str().unwrap_or_default();
            let (epoch, seq) = id
                .split_once(':')
                .and_then(|(epoch, seq)| {
                    Some((epoch.parse::<u64>().ok()?, seq.parse::<u64>().ok()?))
                })
                .ok_or_else(|| bad(format!("Last-Event-ID {id:?} is not EPOCH:SEQ")))?;
            // The last event received; the stream continues after it.
            Some(ResumePoint {
                epoch,
                next_seq: seq.saturating_add(1),
            })
        }
        (None, Some(from)) => {
            let next_seq = from
                .parse::<u64>()
                .ok()
                .filter(|seq| *seq > 0)
                .ok_or_else(|| bad(format!("from={from} is not a sequence number above 0")))?;
            Some(ResumePoint { epoch: 0, next_seq })
        }
        (None, None) => None,
    };
    Ok(SseRequest {
        topic,
        credentials,
        resume,
    })
}

/// A query value, percent-decoded, with `+` as a space; `None` when it does
/// not decode to UTF-8 (a name is never guessed at).
fn query_value(raw: &str) -> Option<String> {
    let spaced = raw.replace('+', " ");
    let bytes: Vec<u8> = percent_encoding::percent_decode_str(&spaced).collect();
    String::from_utf8(bytes).ok()
}

fn sse_response(origin: Option<&str>) -> Vec<u8> {
    let mut builder = http::Response::builder()
        .status(StatusCode::OK)
        .header("Content-Type", "text/event-stream")
        .header("Cache-Control", "no-store")
        // Proxies that buffer responses (nginx) would hold events back.
        .header("X-Accel-Buffering", "no")
        .header("Connection", "close");
    if let Some(origin) = origin.and_then(|origin| HeaderValue::from_str(origin).ok()) {
        // Admitted already: say so to the browser, which otherwise hides a
        // cross-origin stream from the page.
        builder = builder
            .header("Access-Control-Allow-Origin", origin)
            .header("Vary", "Origin");
    }
    let mut out = Vec::with_capacity(256);
    if let Ok(response) = builder.body(()) {
        let _ = write_response(&mut out, &response);
    }
    out.extend_from_slice(format!("retry: {SSE_RETRY_MS}\n\n").as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upgrade_request(extra: &str) -> String {
        format!(
            "GET /v1/ws HTTP/1.1\r\nHost: 127.0.0.1:7401\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
        )
    }

    fn refused(accept: Accept) -> Refusal {
        match accept {
            Accept::Refused(refusal) => refusal,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn mqtt_over_websocket_is_its_own_path_and_subprotocol_when_the_broker_speaks_mqtt() {
        let mqtt_request = |protocol: &str| {
            upgrade_request(&format!("Sec-WebSocket-Protocol: {protocol}\r\n"))
                .replacen("/v1/ws", MQTT_PATH, 1)
        };
        match accept(
            mqtt_request("mqtt").as_bytes(),
            &Origins::default(),
            false,
            true,
        ) {
            Accept::WebSocket { response, mqtt, .. } => {
                assert!(mqtt, "the messages carry MQTT");
                let response = String::from_utf8(response).unwrap();
                assert!(
                    response.contains("sec-websocket-protocol: mqtt\r\n"),
                    "{response}"
                );
            }
            other => panic!("not accepted: {other:?}"),
        }
        let wrong = refused(accept(
            mqtt_request("corebus.v1").as_bytes(),
            &Origins::default(),
            false,
            true,
        ));
        assert_eq!(wrong.status, 400);
        assert!(wrong.reason.contains("must be mqtt"), "{}", wrong.reason);
        // Without MQTT, no such path; and /v1/ws stays corebus's.
        let off = refused(accept(
            mqtt_request("mqtt").as_bytes(),
            &Origins::default(),
            false,
            false,
        ));
        assert_eq!(off.status, 404);
        match accept(
            upgrade_request("Sec-WebSocket-Protocol: corebus.v1\r\n").as_bytes(),
            &Origins::default(),
            false,
            true,
        ) {
            Accept::WebSocket { mqtt, .. } => assert!(!mqtt),
            other => panic!("not accepted: {other:?}"),
        }
    }

    #[test]
    fn an_upgrade_with_our_subprotocol_gets_101_with_the_accept_key() {
        let request = upgrade_request("Sec-WebSocket-Protocol: chat, corebus.v1\r\n");
        let mut input = request.clone().into_bytes();
        input.extend_from_slice(b"\x82\x80"); // the first WebSocket bytes
        let Accept::WebSocket {
            response, consumed, ..
        } = accept(&input, &Origins::default(), false, false)
        else {
            panic!("not accepted");
        };
        assert_eq!(consumed, request.len(), "the WebSocket bytes are left");
        let response = String::from_utf8(response).unwrap();
        assert!(
            response.starts_with("HTTP/1.1 101 Switching Protocols\r\n"),
            "{response}"
        );
        // RFC 6455's own example key and answer.
        assert!(
            response.contains("sec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"),
            "{response}"
        );
        assert!(
            response.contains("sec-websocket-protocol: corebus.v1\r\n"),
            "{response}"
        );
        assert!(response.ends_with("\r\n\r\n"));
    }

    #[test]
    fn every_split_of_the_request_is_incomplete_until_the_last_byte() {
        let input = upgrade_request("Sec-WebSocket-Protocol: corebus.v1\r\n").into_bytes();
        for end in 0..input.len() {
            assert!(
                matches!(
                    accept(&input[..end], &Origins::default(), false, false),
                    Accept::Incomplete
                ),
                "{end}"
            );
        }
        assert!(matches!(
            accept(&input, &Origins::default(), false, false),
            Accept::WebSocket { .. }
        ));
    }

    #[test]
    fn upgrades_without_our_subprotocol_or_from_another_origin_are_refused() {
        let plain = upgrade_request("");
        let refusal = refused(accept(plain.as_bytes(), &Origins::default(), false, false));
        assert_eq!(refusal.status, 400);
        assert!(refusal.reason.contains("corebus.v1"), "{}", refusal.reason);

        let foreign = upgrade_request(
            "Sec-WebSocket-Protocol: corebus.v1\r\nOrigin: https://evil.example\r\n",
        );
        let refusal = refused(accept(
            foreign.as_bytes(),
            &Origins::default(),
            false,
            false,
        ));
        assert_eq!(refusal.status, 403);
        assert!(refusal.reason.contains("https://evil.example"));
        let allowed = Origins::new(&["https://evil.example"]).unwrap();
        assert!(matches!(
            accept(foreign.as_bytes(), &allowed, false, false),
            Accept::WebSocket { .. }
        ));
    }

    #[test]
    fn other_methods_paths_versions_and_oversized_heads_get_their_status() {
        let cases: [(&str, u16); 5] = [
            ("POST /v1/ws HTTP/1.1\r\nHost: a\r\n\r\n", 405),
            ("GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n", 404),
            ("GET /v1/ws HTTP/1.1\r\nHost: a\r\n\r\n", 400),
            ("\x16\x03\x01\x02\x00 hello\r\n\r\n", 400),
            (
                "GET /v1/ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\
                 Sec-WebSocket-Protocol: corebus.v1\r\n\r\n",
                426,
            ),
        ];
        for (request, status) in cases {
            let refusal = refused(accept(
                request.as_bytes(),
                &Origins::default(),
                false,
                false,
            ));
            assert_eq!(refusal.status, status, "{request:?}: {}", refusal.reason);
            let response = String::from_utf8(refusal.response()).unwrap();
            assert!(
                response.starts_with(&format!("HTTP/1.1 {status} ")),
                "{response}"
            );
            assert!(response.ends_with(&format!("{}\n", refusal.reason)));
        }
        let long = format!("GET /v1/ws HTTP/1.1\r\nX: {}", "a".repeat(MAX_REQUEST_HEAD));
        assert_eq!(
            refused(accept(long.as_bytes(), &Origins::default(), false, false)).status,
            431
        );
    }

    fn sse(query: &str, headers: &str) -> Result<SseRequest, Refusal> {
        let request = format!("GET /v1/sse?{query} HTTP/1.1\r\nHost: bus\r\n{headers}\r\n");
        match accept(request.as_bytes(), &Origins::default(), false, false) {
            Accept::Sse { request, response } => {
                let response = String::from_utf8(response).unwrap();
                assert!(response.starts_with("HTTP/1.1 200 OK\r\n"));
                assert!(response.contains("content-type: text/event-stream\r\n"));
                assert!(response.ends_with("\r\n\r\nretry: 1000\n\n"));
                Ok(request)
            }
            Accept::Refused(refusal) => Err(refusal),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_event_stream_names_its_topic_credentials_and_resume_point() {
        let request = sse("ns=app&topic=user-7%2Fnews+feed&token=abc", "").unwrap();
        assert_eq!(
            request.topic,
            TopicKey::new(b"app", b"user-7/news feed").unwrap()
        );
        assert_eq!(request.credentials, b"abc");
        assert_eq!(request.resume, None);

        let request = sse("ns=app&topic=t&token=abc", "Authorization: Bearer xyz\r\n").unwrap();
        assert_eq!(request.credentials, b"xyz", "the header wins");

        let request = sse("ns=app&topic=t&from=5", "").unwrap();
        assert_eq!(
            request.resume,
            Some(ResumePoint {
                epoch: 0,
                next_seq: 5
            })
        );
        let request = sse("ns=app&topic=t&from=5", "Last-Event-ID: 77:41\r\n").unwrap();
        assert_eq!(
            request.resume,
            Some(ResumePoint {
                epoch: 77,
                next_seq: 42
            })
        );
    }

    #[test]
    fn a_bad_event_stream_request_is_refused_with_400_and_why() {
        for (query, headers, why) in [
            ("topic=t", "", "the ns parameter is missing"),
            ("ns=a", "", "the topic parameter is missing"),
            ("ns=a&ns=b&topic=t", "", "parameter ns is given twice"),
            (
                "ns=a&topic=%ff",
                "",
                "parameter topic is not percent-encoded UTF-8",
            ),
            (
                "ns=a&topic=t&from=0",
                "",
                "from=0 is not a sequence number above 0",
            ),
            (
                "ns=a&topic=t",
                "Last-Event-ID: 12\r\n",
                "Last-Event-ID \"12\" is not EPOCH:SEQ",
            ),
            ("ns=&topic=t", "", "invalid topic"),
        ] {
            let refusal = sse(query, headers).unwrap_err();
            assert_eq!(refusal.status, 400, "{query}");
            assert!(refusal.reason.contains(why), "{query}: {}", refusal.reason);
        }
    }

    #[test]
    fn a_cross_origin_stream_that_is_allowed_says_so_to_the_browser() {
        let origins = Origins::new(&["https://app.example"]).unwrap();
        let request =
            "GET /v1/sse?ns=a&topic=t HTTP/1.1\r\nHost: bus\r\nOrigin: https://app.example\r\n\r\n";
        let Accept::Sse { response, .. } = accept(request.as_bytes(), &origins, true, false) else {
            panic!("refused");
        };
        let response = String::from_utf8(response).unwrap();
        assert!(
            response.contains("access-control-allow-origin: https://app.example\r\n"),
            "{response}"
        );
    }
}
