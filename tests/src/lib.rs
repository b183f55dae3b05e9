//! Helpers for the black-box tests in `tests/tests/`: start a real broker
//! in-process on a loopback port, connect clients to a chosen shard, speak
//! raw protocol for the hostile-input tests, and put a [`Proxy`] that cuts
//! connections between a client and the broker; for the TLS tests, make a
//! throwaway certificate with the `openssl` command and a rustls server
//! configuration from it.
//!
//! Must not depend on: shard internals beyond the public start-up API and the
//! routing function (used to pick topics owned by a given shard).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::BytesMut;
use corebus_client::{Client, Event, Subscription};
use corebus_net::{check, decode, Check, Frame, Hello, TopicKey, PROTOCOL_VERSION};
use corebus_shards::{EngineConfig, Server, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// A broker running in this process; stopped when dropped.
pub struct Broker {
    server: Option<Server>,
    addr: SocketAddr,
    web_addr: Option<SocketAddr>,
    mqtt_addr: Option<SocketAddr>,
    shards: usize,
}

impl Broker {
    /// Starts `shards` shards on 127.0.0.1 with an OS-chosen port.
    pub fn start(shards: usize) -> Broker {
        Broker::start_with(shards, EngineConfig::default())
    }

    /// Starts a broker with custom engine limits.
    pub fn start_with(shards: usize, engine: EngineConfig) -> Broker {
        Broker::start_config(ServerConfig {
            shards: Some(shards),
            engine,
            ..ServerConfig::default()
        })
    }

    /// Starts a broker from a full configuration; the listen addresses
    /// (the web and MQTT listeners' too, when there are) are always 127.0.0.1 with
    /// an OS-chosen port.
    pub fn start_config(config: ServerConfig) -> Broker {
        let shards = config.shards.unwrap_or(1);
        let any_port = SocketAddr::from(([127, 0, 0, 1], 0));
        let web = config.web.map(|web| corebus_shards::WebConfig {
            listen: any_port,
            ..web
        });
        let mqtt = config.mqtt.map(|mqtt| corebus_shards::MqttConfig {
            listen: any_port,
            ..mqtt
        });
        let server = corebus_shards::start(ServerConfig {
            listen: any_port,
            web,
            mqtt,
            ..config
        })
        .expect("broker starts");
        let addr = server.local_addr();
        let web_addr = server.web_addr();
        let mqtt_addr = server.mqtt_addr();
        Broker {
            server: Some(server),
            addr,
            web_addr,
            mqtt_addr,
            shards,
        }
    }

    /// The address browsers connect to.
    pub fn web_addr(&self) -> SocketAddr {
        self.web_addr
            .expect("the broker was started with a web listener")
    }

    /// The address MQTT clients connect to.
    pub fn mqtt_addr(&self) -> SocketAddr {
        self.mqtt_addr
            .expect("the broker was started with an MQTT listener")
    }

    /// The address to connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Number of shards.
    pub fn shards(&self) -> usize {
        self.shards
    }

    /// Every shard's counters and gauges as of its last maintenance tick.
    pub fn metrics(&self) -> Vec<corebus_shards::ShardMetrics> {
        self.server
            .as_ref()
            .map(|server| server.metrics().snapshot())
            .unwrap_or_default()
    }

    /// Connects a client whose connection lives on `shard`, reconnecting
    /// until the kernel's SO_REUSEPORT spread puts one there.
    pub async fn client_on(&self, shard: u16) -> Client {
        for _ in 0..500 {
            let client = Client::connect(self.addr).await.expect("connects");
            if client.shard() == shard {
                return client;
            }
            drop(client);
        }
        panic!("no connection landed on shard {shard} in 500 tries");
    }

    /// A raw protocol connection, handshaken, on `shard`.
    pub async fn raw_on(&self, shard: u16) -> RawConn {
        for _ in 0..500 {
            let mut raw = RawConn::connect(self.addr).await;
            if raw.hello().await.shard == shard {
                return raw;
            }
        }
        panic!("no raw connection landed on shard {shard} in 500 tries");
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.stop();
        }
    }
}

/// How long [`next_event`] waits.
pub const EVENT_WAIT: Duration = Duration::from_secs(10);

/// The subscription's next item, which must come within [`EVENT_WAIT`] and
/// be neither the end of the stream nor an error.
pub async fn next_event(sub: &mut Subscription) -> Event {
    tokio::time::timeout(EVENT_WAIT, sub.next_event())
        .await
        .expect("an item within the deadline")
        .expect("the subscription is open")
        .expect("no error")
}

/// A topic in namespace `test` owned by `owner` when the broker has `shards`.
pub fn topic_owned_by(owner: u16, shards: usize, prefix: &str) -> String {
    (0..)
        .map(|i| format!("{prefix}-{i}"))
        .find(|name| {
            let key = TopicKey::from_strs("test", name).expect("valid name");
            corebus_shards::routing::owner(&key, shards) == owner
        })
        .expect("some name hashes to every shard")
}

/// A socket speaking raw frames, for tests that must see the wire.
pub struct RawConn {
    stream: TcpStream,
    buf: BytesMut,
}

impl RawConn {
    /// Connects without a handshake.
    pub async fn connect(addr: SocketAddr) -> RawConn {
        let stream = TcpStream::connect(addr).await.expect("connects");
        stream.set_nodelay(true).expect("nodelay");
        RawConn {
            stream,
            buf: BytesMut::new(),
        }
    }

    /// Connects from local port `port` without a handshake; `Err` when the
    /// port cannot be had (in use, say).
    pub async fn connect_from(addr: SocketAddr, port: u16) -> std::io::Result<RawConn> {
        RawConn::connect_bound(addr, SocketAddr::from(([127, 0, 0, 1], port))).await
    }

    /// Connects from the local address `local` (another loopback address,
    /// 127.0.0.2 say, is another source) without a handshake.
    pub async fn connect_bound(addr: SocketAddr, local: SocketAddr) -> std::io::Result<RawConn> {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.set_reuseaddr(true)?;
        socket.bind(local)?;
        let stream = socket.connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(RawConn {
            stream,
            buf: BytesMut::new(),
        })
    }

    /// The connection's own address: the peer the broker sees.
    pub fn local_addr(&self) -> SocketAddr {
        self.stream
            .local_addr()
            .expect("a connected socket has an address")
    }

    /// Sends `HELLO` (no credentials) and returns the `WELCOME`.
    pub async fn hello(&mut self) -> corebus_net::Welcome {
        self.send(&Frame::Hello(Hello {
            version: PROTOCOL_VERSION,
            client_name: "raw".into(),
            credentials: bytes::Bytes::new(),
        }))
        .await;
        match self.recv().await {
            Some(Frame::Welcome(welcome)) => welcome,
            other => panic!("expected WELCOME, got {other:?}"),
        }
    }

    /// Writes one frame.
    pub async fn send(&mut self, frame: &Frame) {
        let mut out = BytesMut::new();
        frame.encode(&mut out);
        self.send_bytes(&out).await;
    }

    /// Writes arbitrary bytes. A write error (the broker already closed) is
    /// ignored: tests then check what was received.
    pub async fn send_bytes(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes).await;
    }

    /// The next thing the broker did: a frame, a close, a reset, or nothing
    /// for `wait`.
    pub async fn next_within(&mut self, wait: Duration) -> Received {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Check::Complete { len } = check(&self.buf, 16 << 20).expect("server framing") {
                return Received::Frame(
                    decode(self.buf.split_to(len).freeze()).expect("server frame"),
                );
            }
            let mut chunk = [0u8; 4096];
            let read = tokio::time::timeout_at(deadline, self.stream.read(&mut chunk));
            match read.await {
                Err(_) => return Received::TimedOut,
                Ok(Ok(0)) if self.buf.is_empty() => return Received::Closed,
                Ok(Ok(0)) => panic!("the broker closed in the middle of a frame: {:?}", self.buf),
                Ok(Err(err)) if err.kind() == std::io::ErrorKind::ConnectionReset => {
                    return Received::Reset
                }
                Ok(Err(err)) => panic!("reading from the broker: {err}"),
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// The next frame, or `None` once the broker closed (or reset) the
    /// connection. Silence for 10 s fails the test: it is neither.
    pub async fn recv(&mut self) -> Option<Frame> {
        match self.next_within(Duration::from_secs(10)).await {
            Received::Frame(frame) => Some(frame),
            Received::Closed | Received::Reset => None,
            Received::TimedOut => panic!("no frame and no close from the broker within 10 s"),
        }
    }

    /// Asserts that the broker closes the connection (cleanly or with a
    /// reset) within `wait`, sending no frame first; a timeout fails.
    pub async fn expect_closed_within(&mut self, wait: Duration) {
        match self.next_within(wait).await {
            Received::Closed | Received::Reset => {}
            Received::Frame(frame) => panic!("expected a close, got {frame:?}"),
            Received::TimedOut => panic!("the broker left the connection open for {wait:?}"),
        }
    }

    /// Reads and discards everything until the broker closes (cleanly or
    /// with a reset), whole frames or not; returns the bytes read. Fails if
    /// the connection stays open past `wait`.
    pub async fn drain_until_closed(&mut self, wait: Duration) -> usize {
        let mut total = std::mem::take(&mut self.buf).len();
        self.read_until_closed(wait, |bytes| total += bytes.len())
            .await;
        total
    }

    /// Every byte the broker sends until it closes (cleanly or with a
    /// reset), frames or not (a TLS alert, say). Fails if the connection
    /// stays open past `wait`.
    pub async fn drain_bytes_until_closed(&mut self, wait: Duration) -> Vec<u8> {
        let mut all = std::mem::take(&mut self.buf).to_vec();
        self.read_until_closed(wait, |bytes| all.extend_from_slice(bytes))
            .await;
        all
    }

    async fn read_until_closed(&mut self, wait: Duration, mut take: impl FnMut(&[u8])) {
        let deadline = tokio::time::Instant::now() + wait;
        let mut chunk = vec![0u8; 64 << 10];
        loop {
            match tokio::time::timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Err(_) => panic!("the broker left the connection open for {wait:?}"),
                Ok(Ok(0)) => return,
                Ok(Ok(n)) => take(&chunk[..n]),
                Ok(Err(err)) if err.kind() == std::io::ErrorKind::ConnectionReset => return,
                Ok(Err(err)) => panic!("reading from the broker: {err}"),
            }
        }
    }

    /// [`RawConn::expect_closed_within`] 10 s.
    pub async fn expect_closed(&mut self) {
        self.expect_closed_within(Duration::from_secs(10)).await;
    }
}

/// What a [`RawConn`] saw next.
#[derive(Debug)]
pub enum Received {
    /// A whole frame.
    Frame(Frame),
    /// End of stream, between frames.
    Closed,
    /// The broker reset the connection.
    Reset,
    /// Nothing within the wait.
    TimedOut,
}

/// A TCP proxy on 127.0.0.1 in front of the broker, for reconnection tests
/// and faults between the nodes of a cluster: it can cut every connection
/// through it at once, refuse new ones (it accepts and closes them at once,
/// before any byte), stall them (bytes wait in the proxy) and delay them
/// (each chunk waits a while before it goes on).
///
/// Must be created and used inside a tokio runtime; dropping it stops it and
/// cuts its connections.
pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<ProxyShared>,
    acceptor: JoinHandle<()>,
}

struct ProxyShared {
    upstream: SocketAddr,
    refusing: AtomicBool,
    stalled: AtomicBool,
    delay_ms: AtomicUsize,
    accepted: AtomicUsize,
    refused: AtomicUsize,
    /// One task per proxied connection; aborting it closes both sockets.
    links: Mutex<Vec<JoinHandle<()>>>,
}

impl ProxyShared {
    fn links(&self) -> std::sync::MutexGuard<'_, Vec<JoinHandle<()>>> {
        self.links.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Proxy {
    /// Starts a proxy to `upstream` on an OS-chosen loopback port.
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("proxy binds");
        let addr = listener.local_addr().expect("proxy address");
        let shared = Arc::new(ProxyShared {
            upstream,
            refusing: AtomicBool::new(false),
            stalled: AtomicBool::new(false),
            delay_ms: AtomicUsize::new(0),
            accepted: AtomicUsize::new(0),
            refused: AtomicUsize::new(0),
            links: Mutex::new(Vec::new()),
        });
        let acceptor = tokio::spawn(accept_loop(listener, shared.clone()));
        Proxy {
            addr,
            shared,
            acceptor,
        }
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Closes every connection through the proxy, both sides, at once;
    /// returns how many were open.
    pub fn cut(&self) -> usize {
        let links = std::mem::take(&mut *self.shared.links());
        let open = links.iter().filter(|link| !link.is_finished()).count();
        for link in links {
            link.abort();
        }
        open
    }

    /// While `true`, new connections are closed as soon as they are accepted.
    pub fn refuse(&self, refusing: bool) {
        self.shared.refusing.store(refusing, Ordering::SeqCst);
    }

    /// While `true`, bytes through the proxy wait in it, in both directions
    /// (the connections stay open).
    pub fn stall(&self, stalled: bool) {
        self.shared.stalled.store(stalled, Ordering::SeqCst);
    }

    /// Every chunk of bytes waits this long in the proxy before it goes on
    /// (0: none), in both directions, in order.
    pub fn delay(&self, delay: Duration) {
        self.shared
            .delay_ms
            .store(delay.as_millis() as usize, Ordering::SeqCst);
    }

    /// Connections proxied to the broker so far (refused ones not counted).
    pub fn accepted(&self) -> usize {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Connections refused so far (see [`Proxy::refuse`]).
    pub fn refused(&self) -> usize {
        self.shared.refused.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.acceptor.abort();
        self.cut();
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<ProxyShared>) {
    while let Ok((client, _)) = listener.accept().await {
        if shared.refusing.load(Ordering::SeqCst) {
            drop(client);
            shared.refused.fetch_add(1, Ordering::SeqCst);
            continue;
        }
        shared.accepted.fetch_add(1, Ordering::SeqCst);
        let upstream = shared.upstream;
        let faults = shared.clone();
        let link = tokio::spawn(async move {
            let Ok(broker) = TcpStream::connect(upstream).await else {
                return;
            };
            let _ = client.set_nodelay(true);
            let _ = broker.set_nodelay(true);
            let (client_read, client_write) = client.into_split();
            let (broker_read, broker_write) = broker.into_split();
            // Either direction ending ends both (the task drops the sockets).
            tokio::select! {
                _ = pump(client_read, broker_write, &faults) => {}
                _ = pump(broker_read, client_write, &faults) => {}
            }
        });
        let mut links = shared.links();
        links.retain(|link| !link.is_finished());
        links.push(link);
    }
}

/// Copies `from` to `to` until either ends, through the proxy's faults.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    faults: &ProxyShared,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let read = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(read) => read,
        };
        while faults.stalled.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let delay = faults.delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay as u64)).await;
        }
        if to.write_all(&buf[..read]).await.is_err() {
            return;
        }
    }
}

/// A self-signed certificate (EC P-256, valid one day, for `localhost` and
/// `127.0.0.1`, not a CA) and its key, as PEM files in a directory of their own under
/// the temp dir; the directory is removed when this is dropped.
pub struct TestCerts {
    /// The directory holding both files.
    pub dir: std::path::PathBuf,
    /// The certificate, `cert.pem`: the broker's chain, and the client's CA
    /// file.
    pub cert_pem: std::path::PathBuf,
    /// The private key, `key.pem` (PKCS#8, unencrypted).
    pub key_pem: std::path::PathBuf,
}

impl Drop for TestCerts {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Makes a fresh [`TestCerts`] with the `openssl` command line.
///
/// Panics, saying so, when `openssl` is not installed or fails: the TLS
/// tests need it and must not pass silently without it.
pub fn test_certs() -> TestCerts {
    test_certs_naming("DNS:localhost,IP:127.0.0.1")
}

/// [`test_certs`] for a certificate that names `127.0.0.1` to `127.0.0.n`
/// (and `localhost`): one certificate for the nodes of a test cluster.
pub fn test_certs_for_nodes(n: u8) -> TestCerts {
    let ips: Vec<String> = (1..=n).map(|i| format!("127.0.0.{i}")).collect();
    test_certs_for_ips(&ips)
}

/// [`test_certs`] for a certificate that names each of `ips` (and
/// `localhost`).
pub fn test_certs_for_ips(ips: &[String]) -> TestCerts {
    let names: Vec<String> = ips.iter().map(|ip| format!("IP:{ip}")).collect();
    test_certs_naming(&format!("DNS:localhost,{}", names.join(",")))
}

/// A fresh self-signed certificate whose subjectAltName is `names`.
fn test_certs_naming(names: &str) -> TestCerts {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|since| since.subsec_nanos())
        .unwrap_or_default();
    let dir = std::env::temp_dir().join(format!(
        "corebus-tls-test-{}-{}-{nanos}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).expect("creates the certificate directory");
    let certs = TestCerts {
        cert_pem: dir.join("cert.pem"),
        key_pem: dir.join("key.pem"),
        dir,
    };
    let output = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            &format!("subjectAltName={names}"),
            // `req -x509` marks the certificate as a CA by default, and
            // webpki refuses a CA certificate as a server's own
            // (`CaUsedAsEndEntity`), even where it is also the trust anchor.
            "-addext",
            "basicConstraints=critical,CA:FALSE",
            "-keyout",
        ])
        .arg(&certs.key_pem)
        .arg("-out")
        .arg(&certs.cert_pem)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap_or_else(|err| {
            panic!(
                "the TLS tests need the `openssl` command line tool to make a test \
                 certificate, and running it failed: {err}"
            )
        });
    assert!(
        output.status.success(),
        "`openssl req` failed to make a test certificate ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    certs
}

/// A broker-side TLS configuration serving `certs`: rustls on the `ring`
/// provider, TLS 1.3 and 1.2, no client certificates.
pub fn server_tls_config(certs: &TestCerts) -> Arc<rustls::ServerConfig> {
    // The broker's own loader, so tests exercise what `serve --tls-cert` uses.
    corebus_shards::tls::server_config_from_pem(&certs.cert_pem, &certs.key_pem)
        .expect("the test certificate and key load")
        .0
}
