//! MQTT's retained messages and shared subscriptions in a cluster: spoken
//! natively (`FETCH_RETAINED`, retained publishes, `SUBSCRIBE_SHARED`: what
//! the MQTT front door turns its packets into), and through the front door
//! with Mosquitto's tools; each works from any node, whichever node owns
//! the topic.

use std::net::SocketAddr;
use std::time::Duration;

use corebus_net::{Body, Frame, Publish, Subscribe, TopicKey};
use corebus_tests::{RawConn, Received};

use crate::cluster::{
    await_alive, connect, documented_owner, free_port, node, node_ids, runtime, three_nodes,
    three_nodes_with, topic_owned_by, SECRET,
};
use crate::common::{free_port_on, TempFile};
use crate::mqtt_interop::{run, tool};

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
            retain(
                &mut publisher,
                owner as u32 + 1,
                topic,
                &format!("last of {owner}"),
            )
            .await;
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

/// Publishes "probe" to each of `topics` until every one of `members` has
/// had one (the groups' shares on the other nodes are joined a moment
/// after `SUB_OK`); at most 20 s.
async fn until_every_member_hears(
    publisher: &corebus_client::Client,
    topics: &[String],
    members: &mut [corebus_client::Subscription],
) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut heard = vec![false; members.len()];
    while heard.contains(&false) {
        assert!(
            std::time::Instant::now() < deadline,
            "members that never heard a probe: {heard:?}"
        );
        for topic in topics {
            publisher
                .publish("cl", topic, "probe")
                .await
                .expect("acknowledged");
        }
        for (member, heard) in members.iter_mut().zip(&mut heard) {
            // Bounded: a broker passing messages round would loop here.
            for _ in 0..100 {
                match tokio::time::timeout(Duration::from_millis(200), member.next_event()).await {
                    Ok(Some(Ok(corebus_client::Event::Message(_)))) => *heard = true,
                    _ => break,
                }
            }
        }
    }
}

/// Publishes `count` numbered messages round the topics, then gathers
/// what the members get (probes left aside) until nothing more comes:
/// each number exactly once over the group, and every member some.
async fn expect_each_once(
    publisher: &corebus_client::Client,
    topics: &[String],
    members: &mut [corebus_client::Subscription],
    count: usize,
) {
    for n in 0..count {
        let topic = &topics[n % topics.len()];
        publisher
            .publish("cl", topic, format!("{n}"))
            .await
            .expect("acknowledged");
    }
    let mut got = Vec::new();
    let mut per_member = vec![0; members.len()];
    for (member, mine) in members.iter_mut().zip(&mut per_member) {
        while let Ok(Some(Ok(event))) =
            tokio::time::timeout(Duration::from_millis(1500), member.next_event()).await
        {
            match event {
                corebus_client::Event::Message(message) if message.payload == "probe" => {}
                corebus_client::Event::Message(message) => {
                    got.push(
                        String::from_utf8_lossy(&message.payload)
                            .parse::<usize>()
                            .expect("a number"),
                    );
                    *mine += 1;
                }
                other => panic!("a message, not {other:?}"),
            }
        }
    }
    got.sort_unstable();
    assert_eq!(
        got,
        (0..count).collect::<Vec<_>>(),
        "each once over the group"
    );
    assert!(
        per_member.iter().all(|mine| *mine > 0),
        "every member has its turns: {per_member:?}"
    );
}

/// Publishes `payload` to `topic` as its retained message, acknowledged.
async fn retain(conn: &mut RawConn, request_id: u32, topic: &str, payload: &str) {
    conn.send(&Frame::Publish(Publish {
        request_id,
        ack: true,
        topic: key(topic),
        body: Body::plain(payload.as_bytes()).retained_if(true),
    }))
    .await;
    match conn.next_within(WAIT).await {
        Received::Frame(Frame::PubAck(_)) => {}
        other => panic!("a PUB_ACK for {topic}: {other:?}"),
    }
}

#[test]
fn a_topic_that_changed_owner_takes_its_retained_message_along() {
    let secret = TempFile::new("cluster-secret-retained-move", SECRET);
    let (cluster_port, metrics_port) = (free_port(), free_port());
    let ids = node_ids(cluster_port);
    // The first node's while there are two, the third's once it joins.
    let topic = (0..)
        .map(|i| format!("moved/t-{i}"))
        .find(|topic| {
            documented_owner("cl", topic, &ids[..2]) == 0
                && documented_owner("cl", topic, &ids) == 2
        })
        .expect("some name moves to the third node");
    let first = node(1, cluster_port, metrics_port, &secret);
    let second = node(2, cluster_port, metrics_port, &secret);
    for node in [&first, &second] {
        await_alive(node, 2.0, Duration::from_secs(10));
    }
    let runtime = runtime();
    runtime.block_on(async {
        let mut publisher = raw(&second.addr).await;
        retain(&mut publisher, 1, &topic, "before the join").await;
        let mut reader = raw(&second.addr).await;
        assert_eq!(
            fetch(&mut reader, 1, &topic).await,
            vec![(topic.clone(), "before the join".to_owned())]
        );
    });
    let third = node(3, cluster_port, metrics_port, &secret);
    for node in [&first, &second, &third] {
        await_alive(node, 3.0, Duration::from_secs(10));
    }
    runtime.block_on(async {
        // The third node owns the topic now: the fetch by name takes the
        // topic's state over from the first node, retained message
        // included; then a pattern finds it once, on the third node only.
        let mut reader = raw(&second.addr).await;
        let before = vec![(topic.clone(), "before the join".to_owned())];
        assert_eq!(fetch(&mut reader, 1, &topic).await, before);
        assert_eq!(fetch(&mut reader, 2, "moved/*").await, before, "once");
        let mut publisher = raw(&first.addr).await;
        retain(&mut publisher, 1, &topic, "after the join").await;
        let now = vec![(topic.clone(), "after the join".to_owned())];
        assert_eq!(fetch(&mut reader, 3, &topic).await, now);
        assert_eq!(
            fetch(&mut reader, 4, "moved/*").await,
            now,
            "once, the new one"
        );
    });
}

#[test]
fn a_shared_subscription_gets_each_message_once_whichever_nodes_its_members_are_on() {
    let secret = TempFile::new("cluster-secret-shared", SECRET);
    let (nodes, ids) = three_nodes(&secret);
    runtime().block_on(async {
        let publisher = connect(&nodes[0].addr).await;
        // A topic the first node owns, with members on the two others
        // only: before, nobody got anything.
        let topic = vec![topic_owned_by(0, &ids, "work/t")];
        let (mut clients, mut members) = (Vec::new(), Vec::new());
        for node in &nodes[1..] {
            let client = connect(&node.addr).await;
            members.push(
                client
                    .subscribe_shared("cl", "g", &topic[0])
                    .await
                    .expect("joins"),
            );
            clients.push(client);
        }
        until_every_member_hears(&publisher, &topic, &mut members).await;
        expect_each_once(&publisher, &topic, &mut members, 40).await;

        // A pattern over topics of every node, members on two nodes.
        let topics: Vec<String> = (0..3)
            .map(|owner| topic_owned_by(owner, &ids, "jobs/t"))
            .collect();
        let mut members = Vec::new();
        for node in &nodes[..2] {
            let client = connect(&node.addr).await;
            members.push(
                client
                    .subscribe_shared("cl", "p", "jobs/*")
                    .await
                    .expect("joins"),
            );
            clients.push(client);
        }
        until_every_member_hears(&publisher, &topics, &mut members).await;
        expect_each_once(&publisher, &topics, &mut members, 60).await;
    });
}

#[test]
fn a_groups_share_follows_its_topic_to_a_new_owner() {
    let secret = TempFile::new("cluster-secret-shared-move", SECRET);
    let (mut nodes, ids) = three_nodes_with(&secret, |_| vec!["--shards".into(), "1".into()]);
    // Owned by the third node while it lives, then by the first; the
    // group's members are on the second. One shard per node: the second
    // node's link to the first is up before the move (a publish to a topic
    // the first owns), so only the member list's change can move the share.
    let topic = (0..)
        .map(|i| format!("moving/t-{i}"))
        .find(|topic| {
            documented_owner("cl", topic, &ids) == 2
                && documented_owner("cl", topic, &ids[..2]) == 0
        })
        .expect("some name moves from the third node to the first");
    let firsts = topic_owned_by(0, &ids, "firsts/t");
    let topics = [topic.clone()];
    let runtime = runtime();
    let (publisher, _clients, mut members) = runtime.block_on(async {
        let publisher = connect(&nodes[1].addr).await;
        let (mut clients, mut members) = (Vec::new(), Vec::new());
        for _ in 0..2 {
            let client = connect(&nodes[1].addr).await;
            members.push(
                client
                    .subscribe_shared("cl", "m", &topic)
                    .await
                    .expect("joins"),
            );
            clients.push(client);
        }
        until_every_member_hears(&publisher, &topics, &mut members).await;
        expect_each_once(&publisher, &topics, &mut members, 20).await;
        publisher
            .publish("cl", &firsts, "link up")
            .await
            .expect("acknowledged by the first node");
        (publisher, clients, members)
    });
    drop(nodes.remove(2));
    for node in &nodes {
        await_alive(node, 2.0, Duration::from_secs(20));
    }
    runtime.block_on(async {
        until_every_member_hears(&publisher, &topics, &mut members).await;
        expect_each_once(&publisher, &topics, &mut members, 20).await;
    });
}

/// A `mosquitto_sub` that runs until killed, its lines gathered as they
/// come.
struct Listening {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Listening {
    fn start(mut command: std::process::Command) -> Listening {
        let mut child = command
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("mosquitto_sub starts");
        let stdout = child.stdout.take().expect("piped");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Listening { child, lines }
    }

    /// The lines that came within `wait` of each other.
    fn lines_within(&self, wait: Duration) -> Vec<String> {
        let mut got = Vec::new();
        while let Ok(line) = self.lines.recv_timeout(wait) {
            got.push(line);
        }
        got
    }
}

impl Drop for Listening {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn mosquitto_tools_find_retained_messages_and_share_a_group_across_the_nodes() {
    let secret = TempFile::new("cluster-secret-mosquitto", SECRET);
    let mqtt_port = free_port_on(3).to_string();
    let (nodes, ids) = three_nodes_with(&secret, |n| {
        vec!["--mqtt-listen".into(), format!("127.0.0.{n}:{mqtt_port}")]
    });
    let owned = |owner: usize, prefix: &str| {
        (0..)
            .map(|i| format!("{prefix}{i}"))
            .find(|topic| documented_owner("mqtt", topic, &ids) == owner)
            .expect("some name lands on every node")
    };
    let mqtt = |n: usize, name: &str| {
        let mut command = tool(name);
        command.args([
            "-h",
            &format!("127.0.0.{n}"),
            "-p",
            &mqtt_port,
            "-V",
            "mqttv5",
        ]);
        command
    };
    // Retained through the second node, on topics the first and the third
    // own; found by a subscription on the third, by name and by wildcard.
    let kept = [owned(0, "kept/a"), owned(2, "kept/b")];
    for topic in &kept {
        let mut publish = mqtt(2, "mosquitto_pub");
        publish.args([
            "-t",
            topic,
            "-q",
            "1",
            "-r",
            "-m",
            &format!("last on {topic}"),
        ]);
        run(publish);
    }
    let mut by_name = mqtt(3, "mosquitto_sub");
    by_name.args(["-t", &kept[0], "-v", "-C", "1", "-W", "10"]);
    assert_eq!(run(by_name), format!("{0} last on {0}\n", kept[0]));
    let mut by_wildcard = mqtt(3, "mosquitto_sub");
    by_wildcard.args(["-t", "kept/#", "-v", "-C", "2", "-W", "10"]);
    let mut lines: Vec<String> = run(by_wildcard).lines().map(str::to_owned).collect();
    lines.sort();
    let expected: Vec<String> = kept.iter().map(|t| format!("{t} last on {t}")).collect();
    assert_eq!(lines, expected);

    // A group with a member on the first node and one on the second, over
    // topics of all three; published natively through the third.
    let members: Vec<Listening> = (1..=2)
        .map(|n| {
            let mut sub = mqtt(n, "mosquitto_sub");
            sub.args(["-t", "$share/g/jobs/+", "-q", "1", "-v", "-W", "60"]);
            Listening::start(sub)
        })
        .collect();
    let topics: Vec<String> = (0..3).map(|owner| owned(owner, "jobs/")).collect();
    runtime().block_on(async {
        let publisher = connect(&nodes[2].addr).await;
        // Probes until both members have had one (their nodes' shares are
        // joined a moment after SUBACK).
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let mut heard = [false; 2];
        while heard.contains(&false) {
            assert!(
                std::time::Instant::now() < deadline,
                "never heard: {heard:?}"
            );
            for topic in &topics {
                publisher
                    .publish("mqtt", topic, "probe")
                    .await
                    .expect("acknowledged");
            }
            for (member, heard) in members.iter().zip(&mut heard) {
                *heard |= !member.lines_within(Duration::from_millis(300)).is_empty();
            }
        }
        for n in 0..30 {
            let topic = &topics[n % 3];
            publisher
                .publish("mqtt", topic, format!("job {n}"))
                .await
                .expect("acknowledged");
        }
    });
    let mut jobs = Vec::new();
    for (which, member) in members.iter().enumerate() {
        let mine: Vec<usize> = member
            .lines_within(Duration::from_millis(1500))
            .iter()
            .filter_map(|line| line.split_once(" job ")?.1.parse().ok())
            .collect();
        assert!(!mine.is_empty(), "member {which} had its turns");
        jobs.extend(mine);
    }
    jobs.sort_unstable();
    assert_eq!(
        jobs,
        (0..30).collect::<Vec<_>>(),
        "each job once over the group"
    );
}
