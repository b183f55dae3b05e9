//! The browser transports against a real broker: WebSocket (binary messages
//! carrying native frames, subprotocol corebus.v1) and Server-Sent Events,
//! on the web listener. The browser itself is driven by the TypeScript
//! client's tests (clients/typescript); these check the wire.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use corebus_client::Client;
use corebus_net::{check, decode, Check, Frame, Hello, ResumePoint, Subscribe, TopicKey};
use corebus_shards::{EngineConfig, Origins, ServerConfig, WebConfig};
use corebus_tests::Broker;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

const WAIT: Duration = Duration::from_secs(10);

fn web_broker(shards: usize, origins: &[&str], engine: EngineConfig) -> Broker {
    Broker::start_config(ServerConfig {
        shards: Some(shards),
        engine,
        web: Some(WebConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            origins: Origins::new(origins).expect("valid origins"),
        }),
        ..ServerConfig::default()
    })
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Opens a WebSocket on the broker's web listener.
async fn ws_open(
    addr: SocketAddr,
    subprotocol: Option<&str>,
    origin: Option<&str>,
) -> Result<Ws, WsError> {
    let mut request = format!("ws://{addr}/v1/ws")
        .into_client_request()
        .expect("request");
    if let Some(protocol) = subprotocol {
        let value = HeaderValue::from_str(protocol).expect("header");
        request
            .headers_mut()
            .insert("Sec-WebSocket-Protocol", value);
    }
    if let Some(origin) = origin {
        let value = HeaderValue::from_str(origin).expect("header");
        request.headers_mut().insert("Origin", value);
    }
    let (ws, response) = tokio_tungstenite::connect_async(request).await?;
    assert_eq!(
        response
            .headers()
            .get("Sec-WebSocket-Protocol")
            .map(|v| v.as_bytes()),
        subprotocol.map(str::as_bytes)
    );
    Ok(ws)
}

/// A WebSocket speaking corebus: frames out in binary messages, frames in
/// from however the broker packed them.
struct WsConn {
    ws: Ws,
    buf: BytesMut,
    messages: usize,
}

impl WsConn {
    async fn open(addr: SocketAddr) -> WsConn {
        let ws = ws_open(addr, Some("corebus.v1"), None)
            .await
            .expect("the upgrade succeeds");
        WsConn {
            ws,
            buf: BytesMut::new(),
            messages: 0,
        }
    }

    /// Sends `frames` together in one binary message.
    async fn send(&mut self, frames: &[Frame]) {
        let mut out = BytesMut::new();
        for frame in frames {
            frame.encode(&mut out);
        }
        self.ws
            .send(Message::Binary(out.freeze()))
            .await
            .expect("send");
    }

    async fn next_frame(&mut self) -> Frame {
        loop {
            if let Check::Complete { len } = check(&self.buf, u32::MAX).expect("a valid frame") {
                return decode(self.buf.split_to(len).freeze()).expect("decodes");
            }
            let message = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("a message in time")
                .expect("the socket is open")
                .expect("no error");
            match message {
                Message::Binary(bytes) => {
                    self.messages += 1;
                    self.buf.extend_from_slice(&bytes);
                }
                other => panic!("unexpected WebSocket message {other:?}"),
            }
        }
    }

    async fn hello(&mut self) {
        self.send(&[Frame::Hello(Hello {
            version: 1,
            client_name: "ws-test".into(),
            credentials: Default::default(),
        })])
        .await;
        assert!(matches!(self.next_frame().await, Frame::Welcome(_)));
    }
}

fn subscribe(request_id: u32, sub_id: u32, resume: Option<ResumePoint>) -> Frame {
    Frame::Subscribe(Subscribe {
        request_id,
        sub_id,
        resume,
        topic: TopicKey::new(b"app", b"news").expect("name"),
    })
}

#[tokio::test]
async fn a_websocket_subscriber_gets_every_message_in_order_with_consecutive_sequences() {
    let broker = web_broker(2, &[], EngineConfig::default());
    let mut ws = WsConn::open(broker.web_addr()).await;
    ws.hello().await;
    // Two frames in one message: a ping and the subscription.
    ws.send(&[Frame::Ping(77), subscribe(1, 9, None)]).await;
    assert_eq!(ws.next_frame().await, Frame::Pong(77));
    let Frame::SubOk(ok) = ws.next_frame().await else {
        panic!("no SUB_OK");
    };
    let publisher = Client::connect(broker.addr()).await.expect("connects");
    for i in 0..1000u32 {
        publisher
            .publish_unacked("app", "news", i.to_be_bytes().to_vec())
            .await
            .expect("publish");
    }
    for i in 0..1000u32 {
        match ws.next_frame().await {
            Frame::Message(message) => {
                assert_eq!(message.sub_id, 9);
                assert_eq!(message.epoch, ok.epoch);
                assert_eq!(message.seq, ok.start_after + 1 + u64::from(i));
                assert_eq!(&message.body.payload()[..], i.to_be_bytes());
            }
            other => panic!("message {i}: {other:?}"),
        }
    }
    assert!(
        ws.messages < 1000,
        "deliveries are batched into messages ({} messages)",
        ws.messages
    );
}

#[tokio::test]
async fn a_websocket_resumes_from_its_last_sequence_on_a_new_connection() {
    let broker = web_broker(1, &[], EngineConfig::default());
    let publisher = Client::connect(broker.addr()).await.expect("connects");
    let mut first = WsConn::open(broker.web_addr()).await;
    first.hello().await;
    first.send(&[subscribe(1, 1, None)]).await;
    let Frame::SubOk(ok) = first.next_frame().await else {
        panic!("no SUB_OK");
    };
    for i in 0..10u8 {
        publisher
            .publish("app", "news", vec![i])
            .await
            .expect("publish");
    }
    let mut last = 0;
    for _ in 0..4 {
        if let Frame::Message(message) = first.next_frame().await {
            last = message.seq;
        }
    }
    drop(first);
    let mut second = WsConn::open(broker.web_addr()).await;
    second.hello().await;
    let resume = ResumePoint {
        epoch: ok.epoch,
        next_seq: last + 1,
    };
    second.send(&[subscribe(1, 1, Some(resume))]).await;
    assert!(matches!(second.next_frame().await, Frame::SubOk(_)));
    for expected in last + 1..=ok.start_after + 10 {
        match second.next_frame().await {
            Frame::Message(message) => assert_eq!(message.seq, expected),
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test]
async fn foreign_origins_and_other_subprotocols_are_refused_before_the_upgrade() {
    let broker = web_broker(1, &["http://app.test"], EngineConfig::default());
    let status = |result: Result<Ws, WsError>| match result {
        Err(WsError::Http(response)) => response.status().as_u16(),
        Err(other) => panic!("{other}"),
        Ok(_) => 101,
    };
    let addr = broker.web_addr();
    assert_eq!(
        status(ws_open(addr, Some("corebus.v1"), Some("http://evil.test")).await),
        403
    );
    assert_eq!(status(ws_open(addr, None, None).await), 400);
    assert_eq!(
        status(ws_open(addr, Some("corebus.v1"), Some("http://app.test")).await),
        101
    );
    let same_origin = format!("http://{addr}");
    assert_eq!(
        status(ws_open(addr, Some("corebus.v1"), Some(&same_origin)).await),
        101
    );
    // The native listener still speaks only the native protocol.
    let mut ws = WsConn::open(addr).await;
    ws.hello().await;
}

/// A raw HTTP exchange: sends `request`, reads until `done` holds for what
/// arrived or the server closes.
async fn http(addr: SocketAddr, request: &str, done: impl Fn(&str) -> bool) -> String {
    let mut stream = TcpStream::connect(addr).await.expect("connects");
    stream.write_all(request.as_bytes()).await.expect("request");
    let mut text = String::new();
    let mut buf = vec![0; 64 * 1024];
    while !done(&text) {
        let read = tokio::time::timeout(WAIT, stream.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("no more bytes in time; got {text:?}"))
            .expect("read");
        if read == 0 {
            break;
        }
        text.push_str(std::str::from_utf8(&buf[..read]).expect("text"));
    }
    text
}

/// The events of a stream: each as (event name, id, data).
fn events(text: &str) -> Vec<(String, String, String)> {
    let body = text.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    body.split("\n\n")
        .filter(|block| {
            !block.is_empty() && !block.starts_with(':') && !block.starts_with("retry:")
        })
        .map(|block| {
            let (mut name, mut id, mut data) = ("message".to_owned(), String::new(), Vec::new());
            for line in block.lines() {
                let (field, value) = line.split_once(": ").unwrap_or((line, ""));
                match field {
                    "event" => name = value.to_owned(),
                    "id" => id = value.to_owned(),
                    "data" => data.push(value),
                    _ => {}
                }
            }
            (name, id, data.join("\n"))
        })
        .collect()
}

fn sse_request(query: &str, headers: &str) -> String {
    format!("GET /v1/sse?{query} HTTP/1.1\r\nHost: bus\r\n{headers}\r\n")
}

#[tokio::test]
async fn an_event_stream_delivers_items_and_resumes_after_its_last_event_id() {
    let broker = web_broker(2, &[], EngineConfig::default());
    let publisher = Client::connect(broker.addr()).await.expect("connects");
    for text in ["one", "two\nlines", "three", "four", "five"] {
        publisher
            .publish("app", "news", text)
            .await
            .expect("publish");
    }
    let addr = broker.web_addr();
    // Six events: subscribed, then the five items from seq 1.
    let text = http(addr, &sse_request("ns=app&topic=news&from=1", ""), |text| {
        events(text).len() >= 6
    })
    .await;
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    let got = events(&text);
    assert_eq!(got[0].0, "subscribed");
    let epoch = got[0].1.split_once(':').expect("EPOCH:SEQ").0.to_owned();
    let items: Vec<_> = got[1..]
        .iter()
        .map(|(name, id, data)| (name.as_str(), id.clone(), data.as_str()))
        .collect();
    assert_eq!(
        items,
        [
            ("message", format!("{epoch}:1"), "one"),
            ("message", format!("{epoch}:2"), "two\nlines"),
            ("message", format!("{epoch}:3"), "three"),
            ("message", format!("{epoch}:4"), "four"),
            ("message", format!("{epoch}:5"), "five"),
        ]
    );
    // The browser reconnects with the last id it saw: the stream goes on
    // after it, then live.
    let resumed = tokio::spawn(async move {
        http(
            addr,
            &sse_request(
                "ns=app&topic=news",
                &format!("Last-Event-ID: {epoch}:3\r\n"),
            ),
            |text| events(text).len() >= 4,
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    publisher
        .publish("app", "news", vec![0xff, 0x00])
        .await
        .expect("publish");
    let got = events(&resumed.await.expect("task"));
    let names: Vec<&str> = got.iter().map(|(name, ..)| name.as_str()).collect();
    assert_eq!(names, ["subscribed", "message", "message", "binary"]);
    assert_eq!(got[1].2, "four");
    assert_eq!(got[2].2, "five");
    assert_eq!(got[3].2, "/wA=", "a payload that is not text, in base64");
}

/// A pattern over an event stream: its items as `topic-message` events
/// naming their topics, with no `id` (a pattern is live only).
#[tokio::test]
async fn an_event_stream_of_a_pattern_names_each_items_topic() {
    let broker = web_broker(2, &[], EngineConfig::default());
    let publisher = Client::connect(broker.addr()).await.expect("connects");
    let addr = broker.web_addr();
    let stream = tokio::spawn(async move {
        http(addr, &sse_request("ns=app&topic=orders%2F*", ""), |text| {
            events(text).len() >= 3
        })
        .await
    });
    // The stream is subscribed once its first event is out; publish until
    // both items have come (a publish before the subscription is not seen).
    let deadline = std::time::Instant::now() + WAIT;
    while !stream.is_finished() {
        assert!(std::time::Instant::now() < deadline, "no events in time");
        publisher
            .publish("app", "orders/eu", "one")
            .await
            .expect("publish");
        publisher
            .publish("app", "invoices/eu", "not matched")
            .await
            .expect("publish");
        publisher
            .publish("app", "orders/us", "two")
            .await
            .expect("publish");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let got = events(&stream.await.expect("task"));
    assert_eq!(got[0].0, "subscribed");
    assert_eq!(got[0].1, "", "no id: nothing to resume");
    for (name, id, data) in &got[1..3] {
        assert_eq!((name.as_str(), id.as_str()), ("topic-message", ""));
        let item: serde_json::Value = serde_json::from_str(data).expect("JSON");
        let topic = item["topic"].as_str().expect("a topic");
        assert!(topic == "orders/eu" || topic == "orders/us", "{data}");
        assert_eq!(
            item["payload"],
            if topic == "orders/eu" { "one" } else { "two" }
        );
    }
}

#[tokio::test]
async fn an_event_stream_with_a_bad_request_gets_a_status_and_the_reason() {
    let broker = web_broker(1, &[], EngineConfig::default());
    let addr = broker.web_addr();
    let closed = |_: &str| false;
    let text = http(addr, &sse_request("topic=news", ""), closed).await;
    assert!(text.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{text}");
    assert!(text.ends_with("the ns parameter is missing\n"), "{text}");
    let text = http(
        addr,
        &sse_request("ns=app&topic=news", "Origin: http://evil.test\r\n"),
        closed,
    )
    .await;
    assert!(text.starts_with("HTTP/1.1 403 Forbidden\r\n"), "{text}");
    let text = http(addr, "GET /other HTTP/1.1\r\nHost: bus\r\n\r\n", closed).await;
    assert!(text.starts_with("HTTP/1.1 404 Not Found\r\n"), "{text}");
    let _ws = WsConn::open(addr).await;
    // Counted once the next maintenance tick publishes them.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let stats = broker.metrics().into_iter().fold((0, 0, 0), |sum, shard| {
            let stats = shard.stats;
            (
                sum.0 + stats.web_requests_refused,
                sum.1 + stats.websockets_opened,
                sum.2 + stats.event_streams_opened,
            )
        });
        if stats == (3, 1, 0) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "counters: {stats:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_web_connection_that_sends_no_request_is_answered_408_at_the_handshake_deadline() {
    let broker = web_broker(
        1,
        &[],
        EngineConfig {
            handshake_timeout_ms: 300,
            ..EngineConfig::default()
        },
    );
    let text = http(broker.web_addr(), "GET /v1/ws HTTP/1.1\r\n", |_| false).await;
    assert!(
        text.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
        "{text}"
    );
    assert!(text.contains("no valid HELLO within 300 ms"), "{text}");
}

#[tokio::test]
async fn a_websocket_that_says_nothing_after_the_upgrade_is_closed_at_the_deadline() {
    let broker = web_broker(
        1,
        &[],
        EngineConfig {
            handshake_timeout_ms: 300,
            ..EngineConfig::default()
        },
    );
    let mut ws = WsConn::open(broker.web_addr()).await;
    match ws.next_frame().await {
        Frame::Error(error) => {
            assert!(error.fatal);
            assert_eq!(error.code(), Some(corebus_net::ErrorCode::HandshakeTimeout));
        }
        other => panic!("{other:?}"),
    }
    // Then a close frame, and the end.
    let close = tokio::time::timeout(WAIT, ws.ws.next())
        .await
        .expect("in time");
    assert!(
        matches!(close, Some(Ok(Message::Close(_))) | None),
        "{close:?}"
    );
}

#[tokio::test]
async fn both_transports_work_over_tls() {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};

    let certs = corebus_tests::test_certs();
    let broker = Broker::start_config(ServerConfig {
        shards: Some(1),
        tls: Some(corebus_tests::server_tls_config(&certs)),
        web: Some(WebConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            origins: Origins::default(),
        }),
        ..ServerConfig::default()
    });
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&certs.cert_pem).expect("reads the CA") {
        roots.add(cert.expect("a certificate")).expect("adds it");
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let tls = || async {
        let tcp = TcpStream::connect(broker.web_addr())
            .await
            .expect("connects");
        let name = ServerName::try_from("localhost").expect("name");
        connector.connect(name, tcp).await.expect("TLS handshake")
    };

    // A WebSocket over TLS: the handshake and a subscription.
    let request = format!("wss://localhost:{}/v1/ws", broker.web_addr().port())
        .into_client_request()
        .map(|mut request| {
            request.headers_mut().insert(
                "Sec-WebSocket-Protocol",
                HeaderValue::from_static("corebus.v1"),
            );
            request
        })
        .expect("request");
    let (mut ws, _) = tokio_tungstenite::client_async(request, tls().await)
        .await
        .expect("upgrade over TLS");
    let mut out = BytesMut::new();
    Frame::Hello(Hello {
        version: 1,
        client_name: "wss".into(),
        credentials: Default::default(),
    })
    .encode(&mut out);
    subscribe(1, 1, None).encode(&mut out);
    ws.send(Message::Binary(out.freeze())).await.expect("send");
    let mut frames = BytesMut::new();
    let mut seen = Vec::new();
    while !seen.iter().any(|frame| matches!(frame, Frame::SubOk(_))) {
        let Some(Ok(Message::Binary(bytes))) = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("in time")
        else {
            panic!("no binary message");
        };
        frames.extend_from_slice(&bytes);
        while let Ok(Check::Complete { len }) = check(&frames, u32::MAX) {
            seen.push(decode(frames.split_to(len).freeze()).expect("decodes"));
        }
    }
    assert!(matches!(seen[0], Frame::Welcome(_)), "{seen:?}");

    // An event stream over TLS.
    let mut stream = tls().await;
    stream
        .write_all(sse_request("ns=app&topic=news", "").as_bytes())
        .await
        .expect("request");
    let mut text = String::new();
    let mut buf = vec![0; 4096];
    while !text.contains("event: subscribed") {
        let read = tokio::time::timeout(WAIT, stream.read(&mut buf))
            .await
            .expect("in time")
            .expect("read");
        assert!(read > 0, "closed early: {text:?}");
        text.push_str(std::str::from_utf8(&buf[..read]).expect("text"));
    }
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
}
