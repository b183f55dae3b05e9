//! A scripted fake server built from `corebus-net`, shared by the client's
//! test files.

// Each test file is its own crate and uses only some of these helpers.
#![allow(dead_code)]

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use bytes::BytesMut;
use corebus_client::{Client, ClientConfig, Error, Event, Subscription};
use corebus_net::{
    check, decode, Check, Discontinuity, Frame, Hello, Message, PubAck, Publish, SubOk, Subscribe,
    Welcome, DEFAULT_MAX_FRAME, PROTOCOL_VERSION,
};
use futures_core::Stream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub const LIMIT: Duration = Duration::from_secs(5);

/// The topic epoch the fake server reports.
pub const EPOCH: u64 = 0xfeed;

/// Fails the test instead of hanging.
pub async fn within<F: Future>(fut: F) -> F::Output {
    tokio::time::timeout(LIMIT, fut)
        .await
        .expect("finished within the test deadline")
}

/// The server side of one connection.
pub struct Peer {
    pub stream: TcpStream,
    pub buf: BytesMut,
}

impl Peer {
    /// The next frame, or `None` at end of stream.
    pub async fn recv(&mut self) -> Option<Frame> {
        within(async {
            loop {
                match check(&self.buf, DEFAULT_MAX_FRAME).expect("sane frame") {
                    Check::Complete { len } => {
                        return Some(decode(self.buf.split_to(len).freeze()).expect("decodes"))
                    }
                    Check::Incomplete { .. } => match self.stream.read_buf(&mut self.buf).await {
                        Ok(0) | Err(_) => return None,
                        Ok(_) => {}
                    },
                }
            }
        })
        .await
    }

    pub async fn expect(&mut self) -> Frame {
        self.recv().await.expect("a frame from the client")
    }

    pub async fn send(&mut self, frame: Frame) {
        let mut out = BytesMut::new();
        frame.encode(&mut out);
        within(self.stream.write_all(&out)).await.expect("writes");
    }

    pub async fn expect_publish(&mut self) -> Publish {
        match self.expect().await {
            Frame::Publish(publish) => publish,
            other => panic!("expected PUBLISH, got {other:?}"),
        }
    }

    pub async fn expect_subscribe(&mut self) -> Subscribe {
        match self.expect().await {
            Frame::Subscribe(subscribe) => subscribe,
            other => panic!("expected SUBSCRIBE, got {other:?}"),
        }
    }

    pub async fn ack(&mut self, request_id: u32, seq: u64) {
        self.send(Frame::PubAck(PubAck { request_id, seq })).await;
    }

    pub async fn message(&mut self, sub_id: u32, seq: u64, payload: &'static [u8]) {
        self.message_in(sub_id, EPOCH, seq, payload).await;
    }

    pub async fn message_in(&mut self, sub_id: u32, epoch: u64, seq: u64, payload: &'static [u8]) {
        self.send(Frame::Message(Message {
            sub_id,
            epoch,
            seq,
            body: corebus_net::Body::plain(payload),
        }))
        .await;
    }

    /// A `TOPIC_MESSAGE` for a pattern subscription.
    pub async fn topic_message(&mut self, sub_id: u32, topic: &str, epoch: u64, seq: u64) {
        self.send(Frame::TopicMessage(corebus_net::TopicMessage {
            sub_id,
            epoch,
            seq,
            topic: topic.into(),
            body: corebus_net::Body::plain(format!("{topic}#{seq}").as_bytes()),
        }))
        .await;
    }

    pub async fn discontinuity(&mut self, sub_id: u32, epoch: u64, last_seq: u64, next_seq: u64) {
        self.send(Frame::Discontinuity(Discontinuity {
            sub_id,
            epoch,
            last_seq,
            next_seq,
        }))
        .await;
    }

    pub async fn sub_ok(&mut self, subscribe: &Subscribe, epoch: u64, start_after: u64) {
        self.send(Frame::SubOk(SubOk {
            request_id: subscribe.request_id,
            sub_id: subscribe.sub_id,
            epoch,
            start_after,
        }))
        .await;
    }

    /// Answers the next SUBSCRIBE with `start_after`; returns its sub id.
    pub async fn accept_subscribe(&mut self, start_after: u64) -> u32 {
        let subscribe = self.expect_subscribe().await;
        self.sub_ok(&subscribe, EPOCH, start_after).await;
        subscribe.sub_id
    }
}

pub fn welcome(max_frame: u32) -> Frame {
    welcome_on(3, max_frame)
}

pub fn welcome_on(shard: u16, max_frame: u32) -> Frame {
    Frame::Welcome(Welcome {
        version: PROTOCOL_VERSION,
        max_frame,
        shard,
        shard_count: 4,
    })
}

pub async fn listen() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("binds");
    let addr = listener.local_addr().expect("has an address");
    (listener, addr)
}

/// Accepts one connection and reads its HELLO.
pub async fn accept(listener: &TcpListener) -> (Peer, Hello) {
    let (stream, _) = within(listener.accept()).await.expect("accepts");
    let mut peer = Peer {
        stream,
        buf: BytesMut::new(),
    };
    match peer.expect().await {
        Frame::Hello(hello) => (peer, hello),
        other => panic!("expected HELLO, got {other:?}"),
    }
}

/// Accepts one connection and welcomes it on `shard`.
pub async fn accept_welcomed(listener: &TcpListener, shard: u16) -> Peer {
    let (mut peer, _) = accept(listener).await;
    peer.send(welcome_on(shard, DEFAULT_MAX_FRAME)).await;
    peer
}

/// A client connected to a fake server that sent `WELCOME`; the listener
/// stays open for reconnections.
pub async fn connected_on(
    listener: &TcpListener,
    config: ClientConfig,
    max_frame: u32,
) -> (Client, Peer) {
    let addr = listener.local_addr().expect("has an address");
    let server = async {
        let (mut peer, _) = accept(listener).await;
        peer.send(welcome(max_frame)).await;
        peer
    };
    let (client, peer) =
        within(async { tokio::join!(Client::connect_with(addr, config), server) }).await;
    (client.expect("connects"), peer)
}

/// A client connected to a fake server that sent `WELCOME`.
pub async fn connected(config: ClientConfig, max_frame: u32) -> (Client, Peer) {
    let (listener, _) = listen().await;
    connected_on(&listener, config, max_frame).await
}

pub async fn pair() -> (Client, Peer) {
    connected(ClientConfig::default(), DEFAULT_MAX_FRAME).await
}

/// The next item through the `Stream` trait itself.
pub async fn next_item(sub: &mut Subscription) -> Option<Result<Event, Error>> {
    within(std::future::poll_fn(|cx| Pin::new(&mut *sub).poll_next(cx))).await
}

/// The next item through the `Stream` trait itself, as a message.
pub async fn stream_next(sub: &mut Subscription) -> Option<Result<corebus_client::Message, Error>> {
    next_item(sub).await.map(|event| match event {
        Ok(Event::Message(message)) => Ok(message),
        Ok(other) => panic!("expected a message, got {other:?}"),
        Err(err) => Err(err),
    })
}
