//! Compressed payloads through a real broker: the publisher compresses, the
//! shards and the replay ring carry the body (format byte and payload)
//! untouched, every subscriber reads what was published, and a payload
//! that cannot be read is one typed error, not the end of a stream.

use std::time::Duration;

use corebus_client::{
    decompress, Client, ClientConfig, Compression, DecompressError, Error, ResumeFrom,
};
use corebus_net::{Body, ErrorCode, Frame, PayloadFormat, Publish, Subscribe, TopicKey};
use corebus_tests::{topic_owned_by, Broker, RawConn};
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(30);

/// `len` bytes of JSON-like rows: what compression is for.
fn rows(len: usize, salt: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 64);
    let mut n = salt;
    while out.len() < len {
        n = n.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        let price = 10_000 + (n >> 40) % 500;
        out.extend_from_slice(
            format!(
                r#"{{"id":{},"px":{}.{:02},"side":"buy"}},"#,
                n >> 48,
                price / 100,
                price % 100
            )
            .as_bytes(),
        );
    }
    out.truncate(len);
    out
}

async fn next_message(sub: &mut corebus_client::Subscription) -> corebus_client::Message {
    timeout(WAIT, sub.next_message())
        .await
        .expect("a message within the deadline")
        .expect("the stream is open")
        .expect("a message, not an error")
}

/// The next `MESSAGE` on a raw connection, answering nothing else.
async fn raw_message(raw: &mut RawConn) -> corebus_net::Message {
    loop {
        match timeout(WAIT, raw.recv())
            .await
            .expect("within the deadline")
        {
            Some(Frame::Message(message)) => return message,
            Some(Frame::SubOk(_)) => continue,
            other => panic!("expected MESSAGE, got {other:?}"),
        }
    }
}

async fn raw_subscribe(raw: &mut RawConn, topic: &str, sub_id: u32) {
    raw.send(&Frame::Subscribe(Subscribe {
        request_id: sub_id,
        sub_id,
        resume: None,
        topic: TopicKey::from_strs("test", topic).expect("valid"),
    }))
    .await;
    assert!(matches!(
        timeout(WAIT, raw.recv()).await.expect("within the deadline"),
        Some(Frame::SubOk(ok)) if ok.sub_id == sub_id
    ));
}

/// Publisher, owner and subscribers on different shards: the compressed
/// body crosses the mesh as it was sent, the Rust subscriber gets the
/// original bytes, and a small payload goes (and arrives) plain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compressed_payload_crosses_the_shards_untouched_and_arrives_as_published() {
    let broker = Broker::start(4);
    let topic = topic_owned_by(3, broker.shards(), "zstd-cross");
    let subscriber = broker.client_on(1).await;
    let mut sub = subscriber
        .subscribe("test", &topic)
        .await
        .expect("subscribes");
    let mut raw = broker.raw_on(0).await;
    raw_subscribe(&mut raw, &topic, 5).await;
    let publisher = broker.client_on(2).await.compressing(Compression::zstd());

    let big = rows(16 << 10, 1);
    let small = rows(500, 2);
    assert_eq!(
        publisher
            .publish("test", &topic, big.clone())
            .await
            .expect("acked"),
        1
    );
    publisher
        .publish_unacked("test", &topic, &big)
        .await
        .expect("queued");
    assert_eq!(
        publisher
            .publish("test", &topic, small.clone())
            .await
            .expect("acked"),
        3
    );

    for seq in 1..=2 {
        let message = next_message(&mut sub).await;
        assert_eq!(message.seq, seq);
        assert!(message.was_compressed());
        assert_eq!(message.payload, big, "message {seq} arrives as published");
        let on_wire = raw_message(&mut raw).await;
        assert_eq!(on_wire.body.format(), PayloadFormat::Zstd);
        let carried = on_wire.body.payload();
        assert!(
            carried.len() * 4 < big.len(),
            "the broker carried {} bytes for {}",
            carried.len(),
            big.len()
        );
        assert_eq!(decompress(&carried, big.len()).expect("valid zstd"), big);
    }
    let message = next_message(&mut sub).await;
    assert!(!message.was_compressed(), "under the 1 KiB threshold");
    assert_eq!(message.payload, small);
    let on_wire = raw_message(&mut raw).await;
    assert_eq!(on_wire.body.format(), PayloadFormat::Plain);
    assert_eq!(on_wire.body.payload(), small);
}

/// The replay ring keeps bodies whole: a resumed subscription gets the
/// compressed messages back compressed (a small body copied into the
/// ring's buffer and a large one kept shared), and reads them as
/// published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_messages_keep_their_format() {
    let broker = Broker::start(2);
    let client = Client::connect_with(
        broker.addr(),
        ClientConfig {
            compression: Compression::zstd(),
            ..ClientConfig::default()
        },
    )
    .await
    .expect("connects");
    // About 3 KiB and 40 KiB compressed: either side of the ring's
    // 4 KiB copy limit.
    let payloads = [rows(16 << 10, 3), plain_ish(96 << 10), b"plain".to_vec()];
    for payload in &payloads {
        client
            .publish("test", "zstd-replay", payload.clone())
            .await
            .expect("acked");
    }
    let mut sub = client
        .subscribe_from("test", "zstd-replay", ResumeFrom::Seq(1))
        .await
        .expect("subscribes");
    for (seq, payload) in (1..).zip(&payloads) {
        let message = next_message(&mut sub).await;
        assert_eq!(message.seq, seq);
        assert_eq!(&message.payload[..], &payload[..], "replayed message {seq}");
        assert_eq!(message.was_compressed(), seq < 3);
    }
}

/// Bytes that zstd shrinks only so far (a small alphabet, no repeats).
fn plain_ish(len: usize) -> Vec<u8> {
    let mut n = 0x2545_f491_4f6c_dd1du64;
    (0..len)
        .map(|_| {
            n ^= n << 13;
            n ^= n >> 7;
            n ^= n << 17;
            b"abcdefgh"[(n >> 61) as usize]
        })
        .collect()
}

/// A hostile publisher's payload that claims 64 MiB: the subscriber gets a
/// typed error for that message instead of the allocation, the message's
/// sequence number is the stream's position, and the next message arrives.
/// The broker neither refuses nor inspects it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decompression_bomb_is_one_typed_error_and_the_stream_goes_on() {
    let broker = Broker::start(2);
    let subscriber = Client::connect(broker.addr()).await.expect("connects");
    let mut sub = subscriber
        .subscribe("test", "zstd-bomb")
        .await
        .expect("subscribes");
    let bomb = zstd::bulk::compress(&vec![0u8; 64 << 20], 3).expect("compresses");
    assert!(bomb.len() < 8 << 10, "{} bytes claim 64 MiB", bomb.len());
    let mut raw = broker.raw_on(0).await;
    let topic = TopicKey::from_strs("test", "zstd-bomb").expect("valid");
    for (request_id, body) in [
        (1, Body::new(PayloadFormat::Zstd, &bomb)),
        (2, Body::new(PayloadFormat::Zstd, b"not zstd at all")),
        (3, Body::plain(b"after")),
    ] {
        raw.send(&Frame::Publish(Publish {
            request_id,
            ack: true,
            topic: topic.clone(),
            body,
        }))
        .await;
        assert!(matches!(
            timeout(WAIT, raw.recv()).await.expect("within the deadline"),
            Some(Frame::PubAck(ack)) if ack.request_id == request_id
        ));
    }
    let first = timeout(WAIT, sub.next_message())
        .await
        .expect("in time")
        .expect("open");
    assert!(
        matches!(
            first,
            Err(Error::Decompress {
                seq: 1,
                source: DecompressError::TooLarge {
                    limit: 16_777_216,
                    claimed: Some(67_108_864)
                },
                ..
            })
        ),
        "{first:?}"
    );
    let second = timeout(WAIT, sub.next_message())
        .await
        .expect("in time")
        .expect("open");
    assert!(
        matches!(
            second,
            Err(Error::Decompress {
                seq: 2,
                source: DecompressError::Corrupt(_),
                ..
            })
        ),
        "{second:?}"
    );
    assert_eq!(
        sub.last_seq(),
        2,
        "the unreadable messages are behind the stream"
    );
    let third = next_message(&mut sub).await;
    assert_eq!((third.seq, &third.payload[..]), (3, &b"after"[..]));
}

/// A format byte with an undefined bit is a malformed frame, refused
/// before anything is published; the connection stays usable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undefined_format_is_refused_and_the_connection_goes_on() {
    let broker = Broker::start(1);
    let mut raw = broker.raw_on(0).await;
    // PUBLISH request 7, ack, "test"/"t", format 0x20 (bit 5), payload "x".
    let mut frame = vec![0, 0, 0, 0, 0x02, 0, 0, 0, 7, 0x01, 4];
    frame.extend_from_slice(b"test");
    frame.extend_from_slice(&[0, 1, b't', 0x20, b'x']);
    let len = (frame.len() - 4) as u32;
    frame[..4].copy_from_slice(&len.to_be_bytes());
    raw.send_bytes(&frame).await;
    match timeout(WAIT, raw.recv())
        .await
        .expect("within the deadline")
    {
        Some(Frame::Error(error)) => {
            assert_eq!(error.code(), Some(ErrorCode::MalformedFrame));
            assert!(!error.fatal);
            assert!(error.message.contains("0x20"), "{}", error.message);
        }
        other => panic!("expected ERROR, got {other:?}"),
    }
    raw.send(&Frame::Publish(Publish {
        request_id: 8,
        ack: true,
        topic: TopicKey::from_strs("test", "t").expect("valid"),
        body: Body::plain(b"x"),
    }))
    .await;
    assert!(
        matches!(
            timeout(WAIT, raw.recv()).await.expect("within the deadline"),
            Some(Frame::PubAck(ack)) if ack.request_id == 8 && ack.seq == 1
        ),
        "the refused publish was not sequenced"
    );
}
