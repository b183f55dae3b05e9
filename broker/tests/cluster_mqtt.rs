//! What MQTT's retained messages and shared subscriptions need from a
//! cluster, spoken natively (`FETCH_RETAINED`, retained publishes,
//! `SUBSCRIBE_SHARED`: what the MQTT front door turns its packets into):
//! each works from any node, whichever node owns the topic.

use std::net::SocketAddr;
use std::time::Duration;

use corebus_net::{Body, Frame, Publish, Subscribe, TopicKey};
use corebus_tests::{RawConn, Received};

use crate::cluster::{runtime, three_nodes, topic_owned_by, SECRET};
use crate::common::TempFile;

const WAIT: Duration = Duration::from_secs(10);

async fn raw(addr: &str) -> RawConn {
    let addr: SocketAddr = addr.parse().expect("an address");
    let mut conn = RawConn::connect(addr).await;
    conn.hello().await;
    conn
}

fn key(topic: &str) -> TopicKey {
    TopicKey::new(b"cl", topic.as_bytes()).expect("a topic")
}

/// The retained messages a `FETCH_RETAINED` of `topic` finds, as (topic,
/// payload), in the order they came; checks the `REPLAY_END` counts them.
async fn fetch(conn: &mut RawConn, sub_id: u32, topic: &str) -> Vec<(String, String)> {
    conn.send(&Frame::FetchRetained(Subscribe {
        request_id: sub_id,
        sub_id,
        resume: None,
        topic: key(topic),
    }))
    .await;
    let mut found = Vec::new();
    loop {
        match conn.next_within(WAIT).await {
            Received::Frame(Frame::TopicMessage(message)) if message.sub_id == sub_id => {
                let payload = String::from_utf8_lossy(&message.body.payload()).into_owned();
                found.push((message.topic, payload));
            }
            Received::Frame(Frame::ReplayEnd(end)) if end.sub_id == sub_id => {
                assert_eq!(end.last_seq, found.len() as u64, "REPLAY_END counts them");
                return found;
            }
            other => panic!("fetch {sub_id} of {topic}: {other:?}"),
        }
    }
}

#[test]
fn retained_messages_are_found_from_every_node_whichever_owns_them() {
    let secret = TempFile::new("cluster-secret-retained", SECRET);
    let (nodes, ids) = three_nodes(&secret);
    let topics: Vec<String> = (0..3)
        .map(|owner| topic_owned_by(owner, &ids, "kept/t"))
        .collect();
    runtime().block_on(async {
        // Retained on each owner, published through the first node.
        let mut publisher = raw(&nodes[0].addr).await;
        for (owner, topic) in topics.iter().enumerate() {
            publisher
                .send(&Frame::Publish(Publish {
                    request_id: owner as u32 + 1,
                    ack: true,
                    topic: key(topic),
                    body: Body::plain(format!("last of {owner}").as_bytes()).retained_if(true),
                }))
                .await;
            match publisher.next_within(WAIT).await {
                Received::Frame(Frame::PubAck(_)) => {}
                other => panic!("a PUB_ACK for {topic}: {other:?}"),
            }
        }
        for (at, node) in nodes.iter().enumerate() {
            let mut conn = raw(&node.addr).await;
            for (owner, topic) in topics.iter().enumerate() {
                assert_eq!(
                    fetch(&mut conn, owner as u32 + 1, topic).await,
                    vec![(topic.clone(), format!("last of {owner}"))],
                    "from node {at}: {topic}, owned by node {owner}"
                );
            }
            let mut all = fetch(&mut conn, 10, "kept/*").await;
            all.sort();
            let expected: Vec<(String, String)> = topics
                .iter()
                .enumerate()
                .map(|(owner, topic)| (topic.clone(), format!("last of {owner}")))
                .collect();
            let mut expected = expected;
            expected.sort();
            assert_eq!(all, expected, "from node {at}: the pattern finds each once");
        }
    });
}
