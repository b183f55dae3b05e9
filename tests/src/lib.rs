//! Helpers for the black-box tests in `tests/tests/`: start a real broker
//! in-process on a loopback port, connect clients to a chosen shard, and speak
//! raw protocol for the hostile-input tests.
//!
//! Must not depend on: shard internals beyond the public start-up API and the
//! routing function (used to pick topics owned by a given shard).

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use corebus_client::Client;
use corebus_net::{check, decode, Check, Frame, Hello, TopicKey, PROTOCOL_VERSION};
use corebus_shards::{EngineConfig, Server, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A broker running in this process; stopped when dropped.
pub struct Broker {
    server: Option<Server>,
    addr: SocketAddr,
    shards: usize,
}

impl Broker {
    /// Starts `shards` shards on 127.0.0.1 with an OS-chosen port.
    pub fn start(shards: usize) -> Broker {
        Broker::start_with(shards, EngineConfig::default())
    }

    /// Starts a broker with custom engine limits.
    pub fn start_with(shards: usize, engine: EngineConfig) -> Broker {
        let server = corebus_shards::start(ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            shards: Some(shards),
            engine,
        })
        .expect("broker starts");
        let addr = server.local_addr();
        Broker {
            server: Some(server),
            addr,
            shards,
        }
    }

    /// The address to connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Number of shards.
    pub fn shards(&self) -> usize {
        self.shards
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
            raw.send(&Frame::Hello(Hello {
                version: PROTOCOL_VERSION,
                client_name: "raw".into(),
            }))
            .await;
            match raw.recv().await {
                Some(Frame::Welcome(welcome)) if welcome.shard == shard => return raw,
                Some(Frame::Welcome(_)) => continue,
                other => panic!("expected WELCOME, got {other:?}"),
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

    /// The next frame, or `None` at end of stream (or after 10 s of silence).
    pub async fn recv(&mut self) -> Option<Frame> {
        loop {
            if let Check::Complete { len } = check(&self.buf, 16 << 20).expect("server framing") {
                return Some(decode(self.buf.split_to(len).freeze()).expect("server frame"));
            }
            let mut chunk = [0u8; 4096];
            let read = tokio::time::timeout(Duration::from_secs(10), self.stream.read(&mut chunk));
            match read.await {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return None,
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }
}
