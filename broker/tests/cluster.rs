//! The cluster end to end: `corebus serve` processes on 127.0.0.1, .2 and
//! .3 gossip through one seed, with a cluster secret; each node's metrics
//! endpoint lists the members. A `kill -9` is noticed, a SIGTERM is known at
//! once, and a node with another secret never joins. On the data path: a
//! publish to any node reaches subscribers on every node, in the owner's
//! order; a node holds one upstream subscription per topic however many
//! local subscribers it has; an owner's death shows as one discontinuity,
//! then delivery goes on from the new owner; a peer without the cluster's
//! link credentials is refused.

use crate::common;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{free_port_on, read_address, sample, scrape, sigterm_and_wait, TempFile, BIN};

pub(crate) const SECRET: &str = "cluster-test-secret-0123456789abcdef0123";

/// A port free on 127.0.0.1-3, for UDP (gossip) and TCP (metrics) alike.
pub(crate) fn free_port() -> u16 {
    free_port_on(3)
}

pub(crate) struct Node {
    child: Child,
    metrics: String,
    /// Where its clients connect.
    pub(crate) addr: String,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) fn node(n: u8, cluster_port: u16, metrics_port: u16, secret: &TempFile) -> Node {
    node_with(n, cluster_port, metrics_port, secret, None, None)
}

/// Node `n`, listening for clients on `listen` (a free port of its address
/// when `None`), and telling the others to link to `advertise` when given.
fn node_with(
    n: u8,
    cluster_port: u16,
    metrics_port: u16,
    secret: &TempFile,
    listen: Option<String>,
    advertise: Option<String>,
) -> Node {
    let ip = format!("127.0.0.{n}");
    let listen = listen.unwrap_or_else(|| format!("{ip}:0"));
    let advertise = advertise.unwrap_or_else(|| "off".into());
    let extra = ["--listen", &listen, "--cluster-advertise", &advertise];
    node_with_args(n, cluster_port, metrics_port, secret, &extra)
}

/// Node `n` with `extra` arguments, which name its `--listen` if they
/// want another than a free port of its address.
pub(crate) fn node_with_args(
    n: u8,
    cluster_port: u16,
    metrics_port: u16,
    secret: &TempFile,
    extra: &[&str],
) -> Node {
    let at = NodeAt {
        ip: format!("127.0.0.{n}"),
        seed_ip: "127.0.0.1".into(),
        netns: None,
    };
    spawn_node(n, &at, cluster_port, metrics_port, secret, extra)
}

/// Node `n`'s own data directory (the control plane's log), kept across a
/// restart of the same node in the same test.
fn data_dir_of(cluster_port: u16, n: u8) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("cluster-{}-{cluster_port}-{n}", std::process::id()))
}

/// Where a node runs: its address, the seed's, and its network namespace.
struct NodeAt {
    ip: String,
    seed_ip: String,
    netns: Option<String>,
}

fn spawn_node(
    n: u8,
    at: &NodeAt,
    cluster_port: u16,
    metrics_port: u16,
    secret: &TempFile,
    extra: &[&str],
) -> Node {
    let ip = &at.ip;
    let metrics = format!("{ip}:{metrics_port}");
    // Its own data directory (the control plane's log), kept across a
    // restart of the same node in the same test.
    let data_dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("cluster-{}-{cluster_port}-{n}", std::process::id()));
    let mut command = match &at.netns {
        None => Command::new(BIN),
        Some(netns) => {
            let mut command = Command::new("ip");
            command.args(["netns", "exec", netns, BIN]);
            command
        }
    };
    let mut child = command
        .args([
            "serve",
            "--log-level",
            // COREBUS_TEST_NODE_LOG=debug (say) to see what the nodes did.
            &std::env::var("COREBUS_TEST_NODE_LOG").unwrap_or_else(|_| "warn".into()),
        ])
        .args(match extra.contains(&"--listen") {
            true => Vec::new(),
            false => vec!["--listen".to_string(), format!("{ip}:0")],
        })
        .args(["--cluster-listen", &format!("{ip}:{cluster_port}")])
        .args(["--seed", &format!("{}:{cluster_port}", at.seed_ip)])
        .args(["--cluster-secret-file", secret.path()])
        .args(["--metrics", &metrics])
        .args(["--data-dir", data_dir.to_str().expect("UTF-8 path")])
        .args(extra)
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("corebus serve starts");
    // The node's log, each line marked with the node.
    if let Some(stderr) = child.stderr.take() {
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                eprintln!("[node {n}] {line}");
            }
        });
    }
    let addr = read_address(&mut child);
    Node {
        child,
        metrics,
        addr,
    }
}

fn alive(node: &Node) -> f64 {
    sample(
        &scrape(&node.metrics, "/metrics"),
        "corebus_cluster_members{state=\"alive\"}",
    )
}

/// Polls until `node` counts `expected` alive members; returns how long it took.
pub(crate) fn await_alive(node: &Node, expected: f64, within: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let count = alive(node);
        if count == expected {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "{} counts {count} alive members, not {expected}, after {within:?}",
            node.metrics
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls `node`'s metrics until `name` (with its labels) reads `expected`
/// (the shards publish their figures on their maintenance tick).
fn await_sample(node: &Node, name: &str, expected: f64, within: Duration) {
    let start = Instant::now();
    loop {
        let text = scrape(&node.metrics, "/metrics");
        let value = text
            .lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok());
        if value == Some(expected) {
            return;
        }
        assert!(
            start.elapsed() < within,
            "{name} is {value:?}, not {expected}, after {within:?}: {text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `corebus ARGS`, which must succeed; its stdout.
fn corebus(args: &[&str]) -> String {
    let output = Command::new(BIN).args(args).output().expect("runs");
    assert!(
        output.status.success(),
        "corebus {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("UTF-8")
}

/// The owner among `ids` computed from docs/cluster.md's description alone
/// (written out here rather than taken from the net crate): FNV-1a 64 key
/// hashes, SplitMix64 scores, the highest wins.
pub(crate) fn documented_owner(ns: &str, topic: &str, ids: &[String]) -> usize {
    fn fnv(mut hash: u64, bytes: &[u8]) -> u64 {
        for byte in bytes {
            hash = (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3);
        }
        hash
    }
    fn key_hash(ns: &[u8], topic: &[u8]) -> u64 {
        fnv(
            fnv(fnv(0xcbf2_9ce4_8422_2325, &[ns.len() as u8]), ns),
            topic,
        )
    }
    fn mix(mut z: u64) -> u64 {
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    let key = key_hash(ns.as_bytes(), topic.as_bytes());
    let score = |id: &String| {
        let node = key_hash(b"", id.as_bytes());
        (
            mix(key ^ mix(node.wrapping_add(0x9e37_79b9_7f4a_7c15))),
            std::cmp::Reverse(node),
        )
    };
    (0..ids.len())
        .max_by_key(|index| score(&ids[*index]))
        .expect("a node")
}

#[test]
fn three_nodes_gossip_and_notice_a_kill_and_a_leave() {
    let secret = TempFile::new("cluster-secret", SECRET);
    let (cluster_port, metrics_port) = (free_port(), free_port());
    let one = node(1, cluster_port, metrics_port, &secret);
    let mut two = node(2, cluster_port, metrics_port, &secret);
    let mut three = node(3, cluster_port, metrics_port, &secret);
    for node in [&one, &two, &three] {
        await_alive(node, 3.0, Duration::from_secs(10));
    }
    let text = scrape(&one.metrics, "/metrics");
    for n in 1..=3 {
        let member = format!("node=\"127.0.0.{n}:{cluster_port}\"");
        assert!(text.contains(&member), "{member} listed: {text}");
    }
    assert_eq!(
        sample(&text, "corebus_cluster_datagrams_refused_total"),
        0.0
    );

    // `cluster status` lists the three; `cluster owner` names the node the
    // documented hash gives, whichever node is asked.
    let status = corebus(&["cluster", "status", "--json", "--server", &two.addr]);
    let status: serde_json::Value = serde_json::from_str(&status).expect("JSON");
    assert_eq!(status["node"], format!("127.0.0.2:{cluster_port}"));
    let members = status["members"].as_array().expect("a list");
    assert_eq!(members.len(), 3, "{status}");
    assert!(
        members.iter().all(|member| member["state"] == "alive"),
        "{status}"
    );
    let ids = node_ids(cluster_port);
    for (ns, topic) in [
        ("app", "news"),
        ("orders", "eu/created"),
        ("chat", "room/42"),
    ] {
        let expected = &ids[documented_owner(ns, topic, &ids)];
        for asked in [&one.addr, &two.addr] {
            let answer = corebus(&["cluster", "owner", ns, topic, "--server", asked]);
            assert!(
                answer.starts_with(&format!("{ns}/{topic}: node {expected} ")),
                "asked {asked}: {answer}"
            );
        }
    }

    // kill -9: noticed by failed probes.
    three.child.kill().expect("kill -9");
    let noticed = await_alive(&one, 2.0, Duration::from_secs(6));
    await_alive(&two, 2.0, Duration::from_secs(6));
    eprintln!("kill -9 noticed after {noticed:?}");

    // SIGTERM: the node says goodbye before it drains.
    let leaving = Instant::now();
    let (status, _) = sigterm_and_wait(&mut two.child, Duration::from_secs(15));
    assert!(status.success());
    await_alive(&one, 1.0, Duration::from_secs(1));
    eprintln!("SIGTERM known {:?} after the signal", leaving.elapsed());
}

#[test]
fn a_node_with_another_secret_never_joins_and_is_counted() {
    let secret = TempFile::new("cluster-secret-ours", SECRET);
    let theirs = TempFile::new(
        "cluster-secret-theirs",
        "another-cluster-secret-0123456789abcdef",
    );
    let (cluster_port, metrics_port) = (free_port(), free_port());
    let one = node(1, cluster_port, metrics_port, &secret);
    let outsider = node(2, cluster_port, metrics_port, &theirs);
    let start = Instant::now();
    while sample(
        &scrape(&one.metrics, "/metrics"),
        "corebus_cluster_datagrams_refused_total",
    ) == 0.0
    {
        assert!(start.elapsed() < Duration::from_secs(10), "nothing refused");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(alive(&one), 1.0);
    assert_eq!(alive(&outsider), 1.0);
}

#[test]
fn gossip_beyond_loopback_needs_a_secret() {
    let output = Command::new(BIN)
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--cluster-listen",
            "0.0.0.0:0",
        ])
        .args(["--insecure-no-auth"])
        .output()
        .expect("runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("refusing to gossip on 0.0.0.0:0 without a cluster secret"),
        "{stderr}"
    );
}

// ----- the data path ---------------------------------------------------------

/// Three nodes that all see each other alive; their cluster ids, in order.
/// Three nodes, each listening on a free port of its address, with
/// `extra(n)` added to node `n`'s arguments, once each sees all three
/// alive; and their ids.
pub(crate) fn three_nodes_with(
    secret: &TempFile,
    extra: impl Fn(u8) -> Vec<String>,
) -> (Vec<Node>, Vec<String>) {
    let (cluster_port, metrics_port) = (free_port(), free_port());
    let nodes: Vec<Node> = (1..=3)
        .map(|n| {
            let mut args = vec![
                "--listen".to_string(),
                format!("127.0.0.{n}:0"),
                "--cluster-advertise".into(),
                "off".into(),
            ];
            args.extend(extra(n));
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            node_with_args(n, cluster_port, metrics_port, secret, &args)
        })
        .collect();
    for node in &nodes {
        await_alive(node, 3.0, Duration::from_secs(10));
    }
    (nodes, node_ids(cluster_port))
}

pub(crate) fn three_nodes(secret: &TempFile) -> (Vec<Node>, Vec<String>) {
    let (cluster_port, metrics_port) = (free_port(), free_port());
    let nodes: Vec<Node> = (1..=3)
        .map(|n| node(n, cluster_port, metrics_port, secret))
        .collect();
    for node in &nodes {
        await_alive(node, 3.0, Duration::from_secs(10));
    }
    (nodes, node_ids(cluster_port))
}

/// A topic name, with `prefix`, that the documented hash gives to node
/// `owner` (an index into `ids`).
pub(crate) fn topic_owned_by(owner: usize, ids: &[String], prefix: &str) -> String {
    (0..)
        .map(|i| format!("{prefix}-{i}"))
        .find(|topic| documented_owner("cl", topic, ids) == owner)
        .expect("some name lands on every node")
}

pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime")
}

pub(crate) async fn connect(addr: &str) -> corebus_client::Client {
    corebus_client::Client::connect(addr)
        .await
        .unwrap_or_else(|err| panic!("connects to {addr}: {err}"))
}

/// The next event of `sub`, within `wait`.
pub(crate) async fn next(
    sub: &mut corebus_client::Subscription,
    wait: Duration,
) -> corebus_client::Event {
    tokio::time::timeout(wait, sub.next_event())
        .await
        .unwrap_or_else(|_| panic!("no event within {wait:?}"))
        .expect("the subscription goes on")
        .expect("a well-formed stream")
}

/// Publishes payloads `range` (4 bytes each, big-endian) to `topic`, each
/// acknowledged.
async fn publish_numbered(
    publisher: &corebus_client::Client,
    topic: &str,
    range: std::ops::Range<u32>,
) {
    for i in range {
        publisher
            .publish("cl", topic, i.to_be_bytes().to_vec())
            .await
            .expect("acknowledged");
    }
}

/// Reads messages `seqs` from `sub`, in order, nothing else between.
async fn expect_seqs(sub: &mut corebus_client::Subscription, seqs: std::ops::RangeInclusive<u64>) {
    for seq in seqs {
        match next(sub, Duration::from_secs(10)).await {
            corebus_client::Event::Message(message) => assert_eq!(message.seq, seq),
            other => panic!("expected {seq}, got {other:?}"),
        }
    }
}

/// Publishes to `topic` from `publisher` until `stop`: payload i (4 bytes,
/// big-endian) is published until acknowledged, every `pause`; an error
/// while the members change is retried (a publish whose outcome was unknown
/// may then be there twice, under two sequence numbers). Returns how many
/// were acknowledged and how many tries failed.
fn steady_publisher(
    runtime: &tokio::runtime::Runtime,
    publisher: corebus_client::Client,
    topic: String,
    pause: Duration,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<(u32, u32)> {
    runtime.spawn(async move {
        let (mut acknowledged, mut retries) = (0u32, 0u32);
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let payload = acknowledged.to_be_bytes().to_vec();
            match publisher.publish("cl", &topic, payload).await {
                Ok(_) => acknowledged += 1,
                Err(_) => retries += 1,
            }
            tokio::time::sleep(pause).await;
        }
        (acknowledged, retries)
    })
}

/// Reads `sub` until every payload `0..acknowledged` of [`steady_publisher`]
/// arrived: all in `epoch`, in sequence from its start, with no
/// discontinuity. Returns the last sequence number read.
async fn expect_every_acknowledged(
    sub: &mut corebus_client::Subscription,
    epoch: u64,
    acknowledged: u32,
) -> u64 {
    let mut next_seq = sub.start_after() + 1;
    let mut seen = vec![false; acknowledged as usize];
    while seen.iter().any(|seen| !seen) {
        match next(sub, Duration::from_secs(10)).await {
            corebus_client::Event::Message(message) => {
                assert_eq!(
                    (message.epoch, message.seq),
                    (epoch, next_seq),
                    "one epoch, no gap, no repeat"
                );
                next_seq += 1;
                let value = u32::from_be_bytes(message.payload[..].try_into().expect("4 bytes"));
                if let Some(slot) = seen.get_mut(value as usize) {
                    *slot = true;
                }
            }
            corebus_client::Event::Discontinuity(gap) => panic!("a discontinuity: {gap}"),
        }
    }
    next_seq - 1
}

#[test]
fn publishes_on_one_node_reach_subscribers_on_the_others_in_the_owners_order() {
    let secret = TempFile::new("cluster-secret-data", SECRET);
    let (nodes, ids) = three_nodes(&secret);
    runtime().block_on(async {
        let publisher = connect(&nodes[0].addr).await;
        let second = connect(&nodes[1].addr).await;
        let third = connect(&nodes[2].addr).await;
        // One topic owned by each node, so that the publisher's node is
        // the owner, a router to the subscribers' node, and neither.
        for owner in 0..3 {
            let topic = topic_owned_by(owner, &ids, "order");
            let mut subs = vec![
                second.subscribe("cl", &topic).await.expect("subscribes"),
                third.subscribe("cl", &topic).await.expect("subscribes"),
            ];
            let epoch = subs[0].epoch();
            assert_eq!(subs[1].epoch(), epoch, "one owner, one epoch");
            let mut acked = Vec::new();
            for i in 0..200u32 {
                let seq = publisher
                    .publish("cl", &topic, i.to_be_bytes().to_vec())
                    .await
                    .expect("acknowledged by the owner");
                acked.push(seq);
            }
            let first = subs[0].start_after() + 1;
            assert_eq!(
                acked,
                (first..first + 200).collect::<Vec<_>>(),
                "owner's sequence"
            );
            // A compressed body crosses the links (forwarded to the owner,
            // mirrored by the subscribers' node) as it was published.
            let rows = r#"{"id":1,"px":100.25,"side":"buy"},"#.repeat(500);
            let compressed_seq = publisher
                .compressing(corebus_client::Compression::zstd())
                .publish("cl", &topic, rows.clone())
                .await
                .expect("acknowledged by the owner");
            for sub in &mut subs {
                for (i, seq) in acked.iter().enumerate() {
                    match next(sub, Duration::from_secs(5)).await {
                        corebus_client::Event::Message(message) => {
                            assert_eq!((message.epoch, message.seq), (epoch, *seq));
                            assert_eq!(message.payload.as_ref(), (i as u32).to_be_bytes());
                        }
                        other => panic!("owner {owner}: expected message {seq}, got {other:?}"),
                    }
                }
                match next(sub, Duration::from_secs(5)).await {
                    corebus_client::Event::Message(message) => {
                        assert_eq!(message.seq, compressed_seq);
                        assert!(message.was_compressed(), "owner {owner}");
                        assert_eq!(message.payload, rows.as_bytes());
                    }
                    other => {
                        panic!("owner {owner}: expected the compressed message, got {other:?}")
                    }
                }
            }
        }
    });
}

/// A pattern subscribed to on one node gets the matching topics that every
/// node owns, each message once, in each topic's own order: the node asks
/// every other member for the pattern's matches over its links, and what
/// comes in from one node is not passed on to another.
#[test]
fn a_pattern_on_one_node_gets_the_matching_topics_of_every_node_once() {
    let secret = TempFile::new("cluster-secret-patterns", SECRET);
    // One shard per node: every subscription of a node shares its pattern
    // entry, links' and clients' alike, so a message passed on from one
    // member to another would be seen twice.
    let (nodes, ids) = three_nodes_with(&secret, |_| vec!["--shards".into(), "1".into()]);
    runtime().block_on(async {
        let first = connect(&nodes[0].addr).await;
        let second = connect(&nodes[1].addr).await;
        let publisher = connect(&nodes[2].addr).await;
        let mut subs = [
            first.subscribe("cl", "pat/*").await.expect("subscribes"),
            second.subscribe("cl", "pat/*").await.expect("subscribes"),
        ];
        let topics: Vec<String> = (0..3)
            .map(|owner| topic_owned_by(owner, &ids, "pat/t"))
            .collect();
        // The other nodes learn of the pattern over the links, a moment
        // after SUB_OK: probe each topic until both subscribers hear all
        // three owners.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let mut heard: Vec<std::collections::BTreeMap<String, u64>> = vec![Default::default(); 2];
        while heard.iter().any(|topics_heard| topics_heard.len() < 3) {
            assert!(
                std::time::Instant::now() < deadline,
                "not every owner reached both: {heard:?}"
            );
            for topic in &topics {
                publisher
                    .publish("cl", topic, "probe")
                    .await
                    .expect("acknowledged");
            }
            for (sub, topics_heard) in subs.iter_mut().zip(&mut heard) {
                // Bounded: a broker that passed messages round in circles
                // would never leave this loop otherwise.
                for _ in 0..100 {
                    match tokio::time::timeout(Duration::from_millis(200), sub.next_event()).await {
                        Ok(Some(Ok(corebus_client::Event::Message(message)))) => {
                            topics_heard.insert(message.topic().to_owned(), message.seq);
                        }
                        _ => break,
                    }
                }
            }
        }
        // From here on, every message of every topic arrives once, in order,
        // and nothing else does.
        for round in 0..20u32 {
            for topic in &topics {
                publisher
                    .publish("cl", topic, format!("{round}"))
                    .await
                    .expect("acknowledged");
            }
        }
        for (which, (sub, topics_heard)) in subs.iter_mut().zip(&mut heard).enumerate() {
            let mut got: std::collections::BTreeMap<String, Vec<u64>> = Default::default();
            let mut count = 0;
            while count < 60 {
                match next(sub, Duration::from_secs(5)).await {
                    // Probes still on their way.
                    corebus_client::Event::Message(message) if message.payload == "probe" => {}
                    corebus_client::Event::Message(message) => {
                        got.entry(message.topic().to_owned())
                            .or_default()
                            .push(message.seq);
                        count += 1;
                    }
                    other => panic!("subscriber {which}: {other:?}"),
                }
            }
            for topic in &topics {
                let seqs = &got[topic];
                let after = topics_heard[topic];
                assert!(
                    seqs.windows(2).all(|pair| pair[1] == pair[0] + 1) && seqs.len() == 20,
                    "subscriber {which}, {topic} (last probe seen {after}): {seqs:?}"
                );
            }
            assert!(
                tokio::time::timeout(Duration::from_millis(300), sub.next_event())
                    .await
                    .is_err(),
                "subscriber {which}: nothing more, no duplicate"
            );
        }
    });
}

#[test]
fn a_thousand_local_subscribers_hold_one_upstream_subscription() {
    let secret = TempFile::new("cluster-secret-reuse", SECRET);
    let (nodes, ids) = three_nodes(&secret);
    let topic = topic_owned_by(0, &ids, "reuse");
    runtime().block_on(async {
        // 1,000 subscriptions on node 2, over 10 connections.
        let mut clients = Vec::new();
        let mut subs = Vec::new();
        for _ in 0..10 {
            let client = connect(&nodes[1].addr).await;
            for _ in 0..100 {
                subs.push(client.subscribe("cl", &topic).await.expect("subscribes"));
            }
            clients.push(client);
        }
        let upstream = format!(
            "corebus_upstream_subscriptions{{peer=\"{}\"}}",
            nodes[0].addr
        );
        await_sample(&nodes[1], &upstream, 1.0, Duration::from_secs(5));
        // The owner serves one subscription for all of them.
        await_sample(
            &nodes[0],
            "corebus_subscriptions",
            1.0,
            Duration::from_secs(5),
        );
        let publisher = connect(&nodes[2].addr).await;
        for i in 0..10u8 {
            publisher
                .publish("cl", &topic, vec![i])
                .await
                .expect("published");
        }
        for sub in &mut subs {
            for i in 0..10u8 {
                match next(sub, Duration::from_secs(5)).await {
                    corebus_client::Event::Message(message) => {
                        assert_eq!(message.payload.as_ref(), [i]);
                    }
                    other => panic!("expected message {i}, got {other:?}"),
                }
            }
        }
        // The last local subscriber gone, the upstream subscription goes.
        drop(subs);
        for client in clients {
            client.close().await.expect("closes");
        }
        let start = Instant::now();
        while scrape(&nodes[1].metrics, "/metrics").contains(&upstream) {
            assert!(start.elapsed() < Duration::from_secs(5), "upstream kept");
            std::thread::sleep(Duration::from_millis(50));
        }
    });
}

#[test]
fn an_owners_death_is_one_discontinuity_then_the_new_owner_delivers() {
    let secret = TempFile::new("cluster-secret-death", SECRET);
    let (mut nodes, ids) = three_nodes(&secret);
    let topic = topic_owned_by(2, &ids, "death");
    runtime().block_on(async {
        let publisher = connect(&nodes[0].addr).await;
        let subscriber = connect(&nodes[1].addr).await;
        let mut sub = subscriber
            .subscribe("cl", &topic)
            .await
            .expect("subscribes");
        let old_epoch = sub.epoch();
        publish_numbered(&publisher, &topic, 0..50).await;
        expect_seqs(&mut sub, 1..=50).await;
        nodes[2].child.kill().expect("kill -9");
        let killed = Instant::now();
        // Publish until the new owner acknowledges (refusals while the
        // members change are errors the publisher retries).
        let mut first_new_seq = None;
        while first_new_seq.is_none() {
            assert!(
                killed.elapsed() < Duration::from_secs(5),
                "no new owner within 5 s"
            );
            match publisher.publish("cl", &topic, b"after".to_vec()).await {
                Ok(seq) => first_new_seq = Some(seq),
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
        // One discontinuity into the new epoch, from where the subscriber
        // was, then the new owner's messages, the first of them included.
        let gap = match next(&mut sub, Duration::from_secs(5)).await {
            corebus_client::Event::Discontinuity(gap) => gap,
            other => panic!("expected a discontinuity, got {other:?}"),
        };
        let seen = killed.elapsed();
        assert_ne!(gap.epoch, old_epoch, "a new owner, a new epoch");
        assert_eq!(gap.last_seq, 50);
        assert!(
            seen < Duration::from_secs(5),
            "discontinuity after {seen:?}"
        );
        let mut expected = gap.next_seq;
        loop {
            match next(&mut sub, Duration::from_secs(5)).await {
                corebus_client::Event::Message(message) => {
                    assert_eq!(
                        (message.epoch, message.seq),
                        (gap.epoch, expected),
                        "no duplicate, no gap"
                    );
                    if Some(message.seq) == first_new_seq {
                        break;
                    }
                    expected += 1;
                }
                other => panic!("expected messages of the new epoch, got {other:?}"),
            }
        }
        eprintln!(
            "owner killed: discontinuity after {seen:?}, new epoch {:#x}",
            gap.epoch
        );
    });
}

#[test]
fn a_peer_without_the_cluster_secret_is_refused() {
    let secret = TempFile::new("cluster-secret-peer", SECRET);
    let (cluster_port, metrics_port) = (free_port(), free_port());
    let one = node(1, cluster_port, metrics_port, &secret);
    runtime().block_on(async {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .as_millis();
        for credentials in [
            format!("cbpeer1.127.0.0.9:1.{now}.00112233445566778899aabbccddeeff"),
            "cbpeer1.".to_string(),
        ] {
            let config = corebus_client::ClientConfig {
                credentials: Some(corebus_client::Credentials::new(credentials.clone())),
                ..corebus_client::ClientConfig::default()
            };
            match corebus_client::Client::connect_with(one.addr.as_str(), config).await {
                Err(corebus_client::Error::Handshake(reason)) => {
                    assert!(reason.contains("unauthorized"), "{credentials}: {reason}");
                }
                Ok(_) => panic!("{credentials} accepted as a peer"),
                Err(other) => panic!("{credentials}: {other}"),
            }
        }
    });
    await_sample(
        &one,
        "corebus_handshake_failures_total",
        2.0,
        Duration::from_secs(5),
    );
}

/// Starts node `n` listening for clients on `client_port`.
fn fixed_node(
    n: u8,
    client_port: u16,
    cluster_port: u16,
    metrics_port: u16,
    secret: &TempFile,
) -> Node {
    let listen = format!("127.0.0.{n}:{client_port}");
    node_with(n, cluster_port, metrics_port, secret, Some(listen), None)
}

/// Ports of three nodes that restart on the same addresses: clients (each
/// node's IP with this port), gossip and metrics.
struct FixedPorts {
    client: u16,
    cluster: u16,
    metrics: u16,
}

/// Three nodes on fixed ports that all see each other alive.
fn three_fixed_nodes(secret: &TempFile) -> (Vec<Node>, FixedPorts) {
    let ports = FixedPorts {
        client: free_port(),
        cluster: free_port(),
        metrics: free_port(),
    };
    let nodes: Vec<Node> = (1..=3)
        .map(|n| fixed_node(n, ports.client, ports.cluster, ports.metrics, secret))
        .collect();
    for node in &nodes {
        await_alive(node, 3.0, Duration::from_secs(10));
    }
    (nodes, ports)
}

/// The client addresses of the three nodes of `three_fixed_nodes`.
fn client_addrs(ports: &FixedPorts) -> Vec<std::net::SocketAddr> {
    (1..=3)
        .map(|n| {
            format!("127.0.0.{n}:{}", ports.client)
                .parse()
                .expect("an address")
        })
        .collect()
}

#[test]
fn a_rolling_restart_of_every_node_shows_no_discontinuity_and_loses_nothing() {
    let secret = TempFile::new("cluster-secret-rolling", SECRET);
    let (mut nodes, ports) = three_fixed_nodes(&secret);
    let addrs = client_addrs(&ports);
    let runtime = runtime();
    // The subscriber starts on node 1, the publisher on node 3; each goes
    // to the next node that answers when its own goes away.
    let subscriber = runtime.block_on(async {
        corebus_client::Client::connect(&addrs[..])
            .await
            .expect("connects")
    });
    let mut sub = runtime
        .block_on(subscriber.subscribe("cl", "rolling"))
        .expect("subscribes");
    let epoch = sub.epoch();
    let reversed: Vec<_> = addrs.iter().rev().copied().collect();
    let publisher = runtime.block_on(async {
        corebus_client::Client::connect(&reversed[..])
            .await
            .expect("connects")
    });
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let publishing = steady_publisher(
        &runtime,
        publisher,
        "rolling".into(),
        Duration::from_millis(5),
        stop.clone(),
    );
    for n in 0..3 {
        std::thread::sleep(Duration::from_millis(500));
        let (status, took) = sigterm_and_wait(&mut nodes[n].child, Duration::from_secs(20));
        assert!(status.success(), "node {} exits cleanly", n + 1);
        eprintln!("node {} drained and left in {took:?}", n + 1);
        nodes[n] = fixed_node(
            n as u8 + 1,
            ports.client,
            ports.cluster,
            ports.metrics,
            &secret,
        );
        for node in &nodes {
            await_alive(node, 3.0, Duration::from_secs(10));
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (acknowledged, retries) = runtime.block_on(publishing).expect("publisher ran");
    eprintln!("{acknowledged} publishes acknowledged, {retries} retried");
    assert!(acknowledged > 100, "publishing went on: {acknowledged}");
    // Every acknowledged payload arrives, in one epoch, with no gap.
    let last = runtime.block_on(expect_every_acknowledged(&mut sub, epoch, acknowledged));
    eprintln!("rolling restart: {last} messages in epoch {epoch:#x}, no discontinuity");
}

#[test]
fn a_join_takes_over_about_a_third_of_ten_thousand_topics_with_their_state() {
    let secret = TempFile::new("cluster-secret-join", SECRET);
    let (cluster_port, metrics_port) = (free_port(), free_port());
    let one = node(1, cluster_port, metrics_port, &secret);
    let two = node(2, cluster_port, metrics_port, &secret);
    for node in [&one, &two] {
        await_alive(node, 2.0, Duration::from_secs(10));
    }
    const TOPICS: u32 = 10_000;
    let runtime = runtime();
    let client = runtime.block_on(connect(&one.addr));
    runtime.block_on(async {
        for i in 0..TOPICS {
            client
                .publish_unacked("cl", &format!("t{i}"), b"x".to_vec())
                .await
                .expect("queued");
        }
        // Every one of them sequenced (its seq 2 follows its seq 1).
        for i in (0..TOPICS).step_by(997) {
            let seq = client
                .publish("cl", &format!("t{i}"), b"y".to_vec())
                .await
                .expect("acknowledged");
            assert_eq!(seq, 2, "t{i}");
        }
    });
    let three = node(3, cluster_port, metrics_port, &secret);
    for node in [&one, &two, &three] {
        await_alive(node, 3.0, Duration::from_secs(10));
    }
    // The newcomer takes its topics over, each with its sequence: the
    // next publish to a moved topic is its seq 2 (or 3), not a new epoch's 1.
    let taken = |node: &Node| {
        let text = scrape(&node.metrics, "/metrics");
        text.lines()
            .find_map(|line| {
                line.strip_prefix("corebus_topics_taken_over_total ")?
                    .parse::<f64>()
                    .ok()
            })
            .unwrap_or(0.0)
    };
    let start = Instant::now();
    let mut last = -1.0;
    loop {
        let now = taken(&three);
        if now == last && now > 0.0 {
            break;
        }
        last = now;
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "still taking over: {now}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let share = last / f64::from(TOPICS);
    eprintln!("the third node took over {last} of {TOPICS} topics ({share:.3})");
    assert!((share - 1.0 / 3.0).abs() <= 0.3 / 3.0, "share {share}");
    let ids = node_ids(cluster_port);
    let moved: Vec<u32> = (0..TOPICS)
        .filter(|i| documented_owner("cl", &format!("t{i}"), &ids) == 2)
        .collect();
    assert_eq!(
        moved.len() as f64,
        last,
        "exactly the topics the hash gives it"
    );
    runtime.block_on(async {
        for i in moved.iter().step_by(101) {
            let seq = client
                .publish("cl", &format!("t{i}"), b"z".to_vec())
                .await
                .expect("acknowledged by the new owner");
            assert!(seq >= 2, "t{i} kept its sequence: {seq}");
        }
    });
}

#[test]
fn faults_on_the_links_to_an_owner_cost_no_message_and_no_discontinuity() {
    let secret = TempFile::new("cluster-secret-faults", SECRET);
    let (client_port, cluster_port, metrics_port) = (free_port(), free_port(), free_port());
    let runtime = runtime();
    // Node 1's links from the others go through the fault proxy.
    let owner_addr: std::net::SocketAddr = format!("127.0.0.1:{client_port}")
        .parse()
        .expect("an address");
    let proxy = runtime.block_on(corebus_tests::Proxy::start(owner_addr));
    let one = node_with(
        1,
        cluster_port,
        metrics_port,
        &secret,
        Some(owner_addr.to_string()),
        Some(proxy.addr().to_string()),
    );
    let two = node(2, cluster_port, metrics_port, &secret);
    let three = node(3, cluster_port, metrics_port, &secret);
    for node in [&one, &two, &three] {
        await_alive(node, 3.0, Duration::from_secs(10));
    }
    let ids = node_ids(cluster_port);
    let topic = topic_owned_by(0, &ids, "faults");
    let subscriber = runtime.block_on(connect(&two.addr));
    let mut sub = runtime
        .block_on(subscriber.subscribe("cl", &topic))
        .expect("subscribes");
    let epoch = sub.epoch();
    let publisher = runtime.block_on(connect(&three.addr));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let publishing = steady_publisher(
        &runtime,
        publisher,
        topic.clone(),
        Duration::from_millis(2),
        stop.clone(),
    );
    let phase = |what: &str| {
        std::thread::sleep(Duration::from_millis(400));
        eprintln!("{what}");
    };
    phase("steady");
    proxy.delay(Duration::from_millis(30));
    phase("links delayed by 30 ms");
    proxy.delay(Duration::ZERO);
    proxy.stall(true);
    phase("links stalled");
    proxy.stall(false);
    phase("links flowing again");
    let cut = proxy.cut();
    assert!(
        cut >= 2,
        "the other nodes' links went through the proxy: {cut}"
    );
    phase("links cut");
    proxy.refuse(true);
    proxy.cut();
    phase("links cut and refused");
    proxy.refuse(false);
    phase("links allowed again");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (acknowledged, retries) = runtime.block_on(publishing).expect("publisher ran");
    eprintln!("{acknowledged} publishes acknowledged, {retries} retried");
    assert!(acknowledged > 100, "publishing went on: {acknowledged}");
    runtime.block_on(expect_every_acknowledged(&mut sub, epoch, acknowledged));
    drop(proxy);
}

#[test]
fn a_client_whose_node_dies_resumes_on_another_without_loss() {
    let secret = TempFile::new("cluster-secret-failover", SECRET);
    let (mut nodes, ports) = three_fixed_nodes(&secret);
    let ids: Vec<String> = (1..=3)
        .map(|n| format!("127.0.0.{n}:{}", ports.cluster))
        .collect();
    // Owned by node 3; the subscriber starts on node 1, which then dies.
    let topic = topic_owned_by(2, &ids, "failover");
    let addrs = client_addrs(&ports);
    let runtime = runtime();
    runtime.block_on(async {
        let subscriber = corebus_client::Client::connect(&addrs[..])
            .await
            .expect("connects");
        let mut sub = subscriber
            .subscribe("cl", &topic)
            .await
            .expect("subscribes");
        let epoch = sub.epoch();
        let publisher = connect(&nodes[2].addr).await;
        publish_numbered(&publisher, &topic, 0..100).await;
        expect_seqs(&mut sub, 1..=50).await;
        nodes[0]
            .child
            .kill()
            .expect("kill -9 of the subscriber's node");
        // Published while the subscriber has no node: kept in the owner's
        // replay ring, replayed where the subscriber resumes.
        publish_numbered(&publisher, &topic, 100..200).await;
        for seq in 51..=200 {
            match next(&mut sub, Duration::from_secs(10)).await {
                corebus_client::Event::Message(message) => {
                    assert_eq!(
                        (message.epoch, message.seq),
                        (epoch, seq),
                        "no gap, no repeat"
                    );
                }
                other => panic!("expected {seq}, got {other:?}"),
            }
        }
    });
}

#[test]
fn with_tls_on_the_client_listeners_the_links_speak_tls() {
    let secret = TempFile::new("cluster-secret-tls", SECRET);
    let certs = corebus_tests::test_certs_for_nodes(3);
    let (nodes, _, cluster_port) = three_tls_nodes_with(&secret, &certs, |_| Vec::new());
    let topic = topic_owned_by(2, &node_ids(cluster_port), "tls");
    runtime().block_on(async {
        // Owned by node 3: node 2 mirrors it over its link, node 1 forwards.
        let subscriber = tls_client(&nodes[1].addr, &certs).await;
        let mut sub = subscriber
            .subscribe("cl", &topic)
            .await
            .expect("subscribes");
        let publisher = tls_client(&nodes[0].addr, &certs).await;
        for i in 0..20u8 {
            publisher
                .publish("cl", &topic, vec![i])
                .await
                .expect("acknowledged by node 3");
        }
        for i in 0..20u8 {
            match next(&mut sub, Duration::from_secs(5)).await {
                corebus_client::Event::Message(message) => {
                    assert_eq!(message.payload.as_ref(), [i])
                }
                other => panic!("expected message {i}, got {other:?}"),
            }
        }
        // The link went to node 3 over TLS (its listener speaks nothing else).
        let upstream = format!(
            "corebus_upstream_subscriptions{{peer=\"{}\"}}",
            nodes[2].addr
        );
        await_sample(&nodes[1], &upstream, 1.0, Duration::from_secs(5));
    });
}

/// TLS on every node's listeners (the links and the control plane speak
/// it too), as `--tls-cert ... --cluster-tls-ca-file ...` arguments.
fn tls_args(certs: &corebus_tests::TestCerts) -> Vec<String> {
    let cert = certs.cert_pem.to_str().expect("UTF-8 path").to_owned();
    let key = certs.key_pem.to_str().expect("UTF-8 path").to_owned();
    [
        "--tls-cert",
        &cert,
        "--tls-key",
        &key,
        "--cluster-tls-ca-file",
        &cert,
    ]
    .map(str::to_owned)
    .to_vec()
}

async fn tls_client(addr: &str, certs: &corebus_tests::TestCerts) -> corebus_client::Client {
    corebus_client::Client::connect_with(addr, tls_config(&certs.cert_pem, None))
        .await
        .expect("connects over TLS")
}

/// A client of each node, over TLS.
async fn tls_clients(
    nodes: &[Node],
    certs: &corebus_tests::TestCerts,
) -> Vec<corebus_client::Client> {
    let mut clients = Vec::new();
    for node in nodes {
        clients.push(tls_client(&node.addr, certs).await);
    }
    clients
}

/// The node ids of nodes 1 to 3 of a cluster on `cluster_port`.
pub(crate) fn node_ids(cluster_port: u16) -> Vec<String> {
    (1..=3)
        .map(|n| format!("127.0.0.{n}:{cluster_port}"))
        .collect()
}

/// A client's configuration for nodes with TLS, presenting `key` if given.
fn tls_config(ca: &std::path::Path, key: Option<&str>) -> corebus_client::ClientConfig {
    corebus_client::ClientConfig {
        tls: Some(corebus_client::TlsOptions {
            roots: corebus_client::TlsRoots::CaFile(ca.to_path_buf()),
            ..corebus_client::TlsOptions::default()
        }),
        credentials: key.map(corebus_client::Credentials::new),
        ..corebus_client::ClientConfig::default()
    }
}

/// The super-user key of the tests whose nodes listen beyond loopback.
const ADMIN_KEY: &str = "cbk_cluster_test_admin";

/// Adds `spec` on `client`'s node, waiting while the control plane has no
/// leader yet (`unavailable`).
async fn add_when_available(
    client: &corebus_client::Client,
    spec: &corebus_client::WebhookSpec,
) -> corebus_client::Webhook {
    let started = Instant::now();
    loop {
        match client.add_webhook(spec).await {
            Ok(hook) => return hook,
            Err(corebus_client::Error::Server {
                code: Some(corebus_net::ErrorCode::Unavailable),
                ..
            }) if started.elapsed() < Duration::from_secs(15) => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            Err(err) => panic!("webhook add: {err}"),
        }
    }
}

#[test]
fn a_webhook_added_on_one_node_is_delivered_by_every_owner_rotated_and_removed_everywhere() {
    use common::receiver::{assert_signed, Receiver, Reply};
    let secret = TempFile::new("cluster-secret-control", SECRET);
    let certs = corebus_tests::test_certs_for_nodes(3);
    let (nodes, _, cluster_port) = three_tls_nodes_with(&secret, &certs, |_| Vec::new());
    let ids = node_ids(cluster_port);
    runtime().block_on(async {
        let receiver = Receiver::start(|_, _| Reply::Status(200)).await;
        let clients = tls_clients(&nodes, &certs).await;
        let spec = corebus_client::WebhookSpec::new(
            receiver.url.clone(),
            "cl",
            "wh/",
            corebus_client::WebhookMatch::Prefix,
        );
        let hook = add_when_available(&clients[0], &spec).await;
        let signing = hook.secret.clone().expect("add returns the secret");
        // Answered once every member applied it: every node lists it now.
        for client in &clients {
            let listed = client.list_webhooks().await.expect("lists");
            assert!(
                listed.iter().any(|h| h.id == hook.id),
                "{listed:?} lacks {}",
                hook.id
            );
        }
        // 20 topics spread over the three owners, published on node 2.
        let topics: Vec<String> = (0..20).map(|i| format!("wh/{i}")).collect();
        let owners: std::collections::BTreeSet<usize> = topics
            .iter()
            .map(|topic| documented_owner("cl", topic, &ids))
            .collect();
        assert_eq!(owners.len(), 3, "the topics have every node as an owner");
        for round in 1..=5u8 {
            for topic in &topics {
                clients[1]
                    .publish("cl", topic, vec![round])
                    .await
                    .expect("acknowledged");
            }
        }
        let requests = receiver
            .wait_for("100 deliveries", |requests| requests.len() >= 100)
            .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let requests = if receiver.requests().len() > requests.len() {
            receiver.requests()
        } else {
            requests
        };
        assert_eq!(requests.len(), 100, "each message delivered once");
        for topic in &topics {
            let seqs: Vec<u64> = requests
                .iter()
                .filter(|request| &request.topic() == topic)
                .map(|request| request.seq())
                .collect();
            assert_eq!(seqs, vec![1, 2, 3, 4, 5], "{topic}: in order, once each");
        }
        for request in &requests {
            assert_signed(request, &[&signing]);
        }
        // Every owner delivered some: a list on any node adds them up.
        let started = Instant::now();
        loop {
            let listed = clients[0].list_webhooks().await.expect("lists");
            let delivered = listed[0].delivery.as_ref().map_or(0, |d| d.delivered);
            if delivered == 100 {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(2),
                "the list counts {delivered} deliveries"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Rotated on node 3: every owner signs with both secrets now.
        let rotated = clients[2]
            .rotate_webhook_secret(&hook.id, None)
            .await
            .expect("rotated");
        let new_secret = rotated.secret.expect("rotate returns the new secret");
        assert_ne!(new_secret, signing);
        for topic in &topics {
            clients[0]
                .publish("cl", topic, vec![6])
                .await
                .expect("acknowledged");
        }
        let requests = receiver
            .wait_for("120 deliveries", |requests| requests.len() >= 120)
            .await;
        for request in &requests[100..] {
            assert_eq!(request.seq(), 6);
            assert_signed(request, &[&signing, &new_secret]);
        }
        // Removed on node 2: no delivery for what is published after. A
        // second webhook of the same topics, to a receiver of its own,
        // shows when those messages have gone out to the webhooks there are.
        let witness = Receiver::start(|_, _| Reply::Status(200)).await;
        let witness_spec = corebus_client::WebhookSpec::new(
            witness.url.clone(),
            "cl",
            "wh/",
            corebus_client::WebhookMatch::Prefix,
        );
        clients[0]
            .add_webhook(&witness_spec)
            .await
            .expect("the witness is added");
        clients[1].remove_webhook(&hook.id).await.expect("removed");
        for client in &clients {
            let listed = client.list_webhooks().await.expect("lists");
            assert!(listed.iter().all(|h| h.id != hook.id), "{listed:?}");
        }
        for topic in &topics {
            clients[2]
                .publish("cl", topic, vec![9])
                .await
                .expect("acknowledged");
        }
        witness
            .wait_for("the witness's 20", |requests| {
                requests.iter().filter(|r| r.seq() == 7).count() == 20
            })
            .await;
        assert_eq!(receiver.requests().len(), 120, "nothing after the remove");
    });
}

#[test]
fn without_tls_on_the_peer_links_webhook_commands_are_refused() {
    let secret = TempFile::new("cluster-secret-control-plain", SECRET);
    let (nodes, _) = three_nodes(&secret);
    runtime().block_on(async {
        let client = connect(&nodes[1].addr).await;
        match client.add_webhook(&unreachable_spec("t")).await {
            Err(corebus_client::Error::Server {
                code: Some(corebus_net::ErrorCode::Forbidden),
                message,
                ..
            }) => assert!(message.contains("without TLS"), "{message}"),
            other => panic!("expected forbidden, got {other:?}"),
        }
        // Listing is local and still works.
        assert!(client.list_webhooks().await.expect("lists").is_empty());
    });
}

/// Three nodes with TLS, each allowing webhooks to loopback receivers.
fn three_tls_nodes<'a>(
    secret: &'a TempFile,
    certs: &corebus_tests::TestCerts,
) -> (Vec<Node>, impl Fn(u8) -> Node + 'a) {
    let (nodes, start, _) = three_tls_nodes_with(secret, certs, |_| Vec::new());
    (nodes, start)
}

/// [`three_tls_nodes`] with `extra(n)` arguments for node `n`; also gives
/// the cluster port.
fn three_tls_nodes_with<'a>(
    secret: &'a TempFile,
    certs: &corebus_tests::TestCerts,
    extra: impl Fn(u8) -> Vec<String> + 'a,
) -> (Vec<Node>, impl Fn(u8) -> Node + 'a, u16) {
    let (cluster_port, metrics_port) = (free_port(), free_port());
    let mut args = tls_args(certs);
    args.extend(["--webhook-allow-networks", "127.0.0.0/8"].map(str::to_owned));
    let start = move |n: u8| {
        let mut args = args.clone();
        args.extend(extra(n));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        node_with_args(n, cluster_port, metrics_port, secret, &args)
    };
    let nodes: Vec<Node> = (1..=3).map(&start).collect();
    for node in &nodes {
        await_alive(node, 3.0, Duration::from_secs(10));
    }
    (nodes, start, cluster_port)
}

/// The index (0-2) of the node that leads the control plane, as `client`'s
/// node sees it.
async fn control_leader(client: &corebus_client::Client) -> usize {
    let started = Instant::now();
    loop {
        let status = client.cluster_status().await.expect("cluster status");
        if let Some(leader) = status.control.and_then(|control| control.leader) {
            let ip: std::net::IpAddr = leader
                .parse::<SocketAddr>()
                .expect("a node id is an address")
                .ip();
            return usize::from(match ip {
                std::net::IpAddr::V4(ip) => ip.octets()[3],
                std::net::IpAddr::V6(_) => panic!("IPv4 loopback nodes"),
            }) - 1;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "no leader");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn webhook_ids(client: &corebus_client::Client) -> Vec<String> {
    let mut ids: Vec<String> = client
        .list_webhooks()
        .await
        .expect("lists")
        .into_iter()
        .map(|hook| hook.id)
        .collect();
    ids.sort();
    ids
}

/// A webhook of `topic` in namespace `cl` to a port nothing listens on:
/// for the tests of registrations, not of deliveries.
fn unreachable_spec(topic: &str) -> corebus_client::WebhookSpec {
    corebus_client::WebhookSpec::new(
        format!("http://127.0.0.1:9/{topic}"),
        "cl",
        topic,
        corebus_client::WebhookMatch::Exact,
    )
}

/// Waits until `client`'s node lists the webhook ids `expected` (sorted),
/// for at most `within`; returns how long it took.
async fn await_ids(
    client: &corebus_client::Client,
    expected: &[String],
    within: Duration,
) -> Duration {
    let started = Instant::now();
    loop {
        let ids = webhook_ids(client).await;
        if ids == expected {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "{ids:?}, not {expected:?}, after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn an_add_retried_after_the_leader_is_killed_is_there_once_on_every_node() {
    let secret = TempFile::new("cluster-secret-control-kill", SECRET);
    let certs = corebus_tests::test_certs_for_nodes(3);
    let (mut nodes, start) = three_tls_nodes(&secret, &certs);
    runtime().block_on(async {
        let first = tls_client(&nodes[0].addr, &certs).await;
        // The control plane formed: a first add goes through.
        add_when_available(&first, &unreachable_spec("warm")).await;
        let leader = control_leader(&first).await;
        let asker = (leader + 1) % 3;
        let client = tls_client(&nodes[asker].addr, &certs).await;
        let spec = unreachable_spec("orders").with_request_id("deploy-7-orders");
        // The add goes out, and the leader dies under it.
        let pending = {
            let (client, spec) = (client.clone(), spec.clone());
            tokio::spawn(async move { client.add_webhook(&spec).await })
        };
        tokio::time::sleep(Duration::from_millis(5)).await;
        nodes[leader].child.kill().expect("kill -9 the leader");
        let _ = nodes[leader].child.wait();
        // Whatever the first try answered, the same add again.
        let _ = pending.await.expect("the task ends");
        let hook = client
            .add_webhook(&spec)
            .await
            .expect("the retry is answered");
        assert!(hook.secret.is_some(), "the answer carries the secret");
        let again = client.add_webhook(&spec).await.expect("a second retry too");
        assert_eq!(again.id, hook.id, "the same webhook, not another");
        assert_eq!(again.secret, hook.secret, "with the first answer's secret");
        let survivors: Vec<usize> = (0..3).filter(|index| *index != leader).collect();
        for index in &survivors {
            let client = tls_client(&nodes[*index].addr, &certs).await;
            let ids = webhook_ids(&client).await;
            assert_eq!(
                ids.len(),
                2,
                "node {index}: the warm-up and the add once: {ids:?}"
            );
            assert!(ids.contains(&hook.id), "{ids:?}");
        }
        // The killed node comes back and catches up.
        let expected = webhook_ids(&client).await;
        nodes[leader] = start(leader as u8 + 1);
        let restarted = tls_client(&nodes[leader].addr, &certs).await;
        await_ids(&restarted, &expected, Duration::from_secs(5)).await;
    });
}

#[test]
fn a_node_down_during_three_adds_and_a_remove_catches_up_within_5_s() {
    let secret = TempFile::new("cluster-secret-control-down", SECRET);
    let certs = corebus_tests::test_certs_for_nodes(3);
    let (mut nodes, start) = three_tls_nodes(&secret, &certs);
    runtime().block_on(async {
        let client = tls_client(&nodes[0].addr, &certs).await;
        let spec = unreachable_spec;
        add_when_available(&client, &spec("zero")).await;
        nodes[2].child.kill().expect("kill -9 node 3");
        let _ = nodes[2].child.wait();
        let mut added = Vec::new();
        for topic in ["one", "two", "three"] {
            added.push(add_when_available(&client, &spec(topic)).await.id);
        }
        client.remove_webhook(&added[0]).await.expect("removed");
        let expected = webhook_ids(&client).await;
        assert_eq!(expected.len(), 3, "{expected:?}");
        nodes[2] = start(3);
        let restarted = tls_client(&nodes[2].addr, &certs).await;
        let took = await_ids(&restarted, &expected, Duration::from_secs(5)).await;
        eprintln!("node 3 caught up {took:?} after its restart");
    });
}

/// Network namespaces of this test joined by a bridge: node `i` (from 1)
/// runs in namespace `{tag}n{i}` at `{subnet}.{i}`, and its link to the
/// bridge can be cut (its gossip, control plane and peer links alike).
/// Removed when dropped.
struct Netns {
    tag: String,
    subnet: String,
    count: u8,
}

fn ip_command(args: &str) {
    let output = Command::new("ip")
        .args(args.split_whitespace())
        .output()
        .expect("the `ip` command runs");
    assert!(
        output.status.success(),
        "ip {args}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

impl Netns {
    fn create(count: u8) -> Netns {
        let pid = std::process::id();
        let netns = Netns {
            tag: format!("cb{}", pid % 100_000),
            subnet: format!("10.{}.{}", 100 + (pid / 250) % 100, pid % 250),
            count: 0,
        };
        let (tag, subnet) = (&netns.tag, &netns.subnet);
        ip_command(&format!("link add {tag}br type bridge"));
        ip_command(&format!("addr add {subnet}.254/24 dev {tag}br"));
        ip_command(&format!("link set {tag}br up"));
        let mut netns = netns;
        for i in 1..=count {
            let (tag, subnet) = (netns.tag.clone(), netns.subnet.clone());
            ip_command(&format!("netns add {tag}n{i}"));
            netns.count = i;
            ip_command(&format!("link add {tag}v{i} type veth peer name {tag}p{i}"));
            ip_command(&format!("link set {tag}p{i} netns {tag}n{i}"));
            ip_command(&format!("link set {tag}v{i} master {tag}br up"));
            ip_command(&format!(
                "-n {tag}n{i} addr add {subnet}.{i}/24 dev {tag}p{i}"
            ));
            ip_command(&format!("-n {tag}n{i} link set {tag}p{i} up"));
            ip_command(&format!("-n {tag}n{i} link set lo up"));
        }
        netns
    }

    fn ip(&self, i: u8) -> String {
        format!("{}.{i}", self.subnet)
    }

    fn at(&self, i: u8) -> NodeAt {
        NodeAt {
            ip: self.ip(i),
            seed_ip: self.ip(1),
            netns: Some(format!("{}n{i}", self.tag)),
        }
    }

    /// Cuts node `i` off from the others (and the test), or heals it.
    fn cut(&self, i: u8, cut: bool) {
        let state = if cut { "down" } else { "up" };
        ip_command(&format!("link set {}v{i} {state}", self.tag));
    }

    /// Runs `work` on a thread of its own inside node `i`'s namespace:
    /// the sockets it opens are on that node's side of a cut.
    fn inside<T: Send + 'static>(&self, i: u8, work: impl FnOnce() -> T + Send + 'static) -> T {
        let path = format!("/var/run/netns/{}n{i}", self.tag);
        std::thread::spawn(move || {
            use std::os::fd::AsRawFd;
            let file = std::fs::File::open(&path).expect("the namespace's file");
            // SAFETY: setns on a valid descriptor changes this thread's
            // network namespace only.
            let entered = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(entered, 0, "setns: {}", std::io::Error::last_os_error());
            work()
        })
        .join()
        .expect("the thread in the namespace ends")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for i in 1..=self.count {
            let _ = Command::new("ip")
                .args(["netns", "del", &format!("{}n{i}", self.tag)])
                .status();
            // Gone with its namespace, unless something still holds it.
            let _ = Command::new("ip")
                .args(["link", "del", &format!("{}v{i}", self.tag)])
                .stderr(Stdio::null())
                .status();
        }
        let _ = Command::new("ip")
            .args(["link", "del", &format!("{}br", self.tag)])
            .status();
    }
}

#[test]
fn a_cut_off_minority_node_refuses_webhook_commands_and_converges_after_the_heal() {
    let netns = Netns::create(3);
    let ips: Vec<String> = (1..=3).map(|i| netns.ip(i)).collect();
    let certs = corebus_tests::test_certs_for_ips(&ips);
    let secret = TempFile::new("cluster-secret-control-cut", SECRET);
    let (cluster_port, metrics_port) = (free_port(), free_port());
    // Beyond loopback, clients must authenticate: one super-user key.
    let config = TempFile::new(
        "cluster-control-cut.toml",
        &format!(
            "[[keys]]\nname = \"admin\"\nsha256 = \"{}\"\nsuperuser = true\n",
            corebus::auth::key_hash_hex(ADMIN_KEY)
        ),
    );
    let mut args = tls_args(&certs);
    args.extend(
        [
            "--config",
            config.path(),
            "--webhook-allow-networks",
            "127.0.0.0/8",
        ]
        .map(str::to_owned),
    );
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let nodes: Vec<Node> = (1..=3)
        .map(|i| spawn_node(i, &netns.at(i), cluster_port, metrics_port, &secret, &args))
        .collect();
    let admin = |addr: String, ca: std::path::PathBuf| async move {
        corebus_client::Client::connect_with(addr.as_str(), tls_config(&ca, Some(ADMIN_KEY)))
            .await
            .expect("connects with the key")
    };
    for node in &nodes {
        await_alive(node, 3.0, Duration::from_secs(10));
    }
    let spec = unreachable_spec;
    let rt = runtime();
    let (leader, before) = rt.block_on(async {
        let client = admin(nodes[0].addr.clone(), certs.cert_pem.clone()).await;
        add_when_available(&client, &spec("before")).await;
        (control_leader(&client).await, webhook_ids(&client).await)
    });
    // Cut off a node that does not lead: the minority of one.
    let cut = (leader + 1) % 3;
    netns.cut(cut as u8 + 1, true);
    // Long enough for it to give up on the leader and stand for election.
    std::thread::sleep(Duration::from_secs(4));
    let (addr, ca) = (nodes[cut].addr.clone(), certs.cert_pem.clone());
    let (refused, took) = netns.inside(cut as u8 + 1, move || {
        let rt = runtime();
        rt.block_on(async move {
            let config = corebus_client::ClientConfig {
                // The client retries `unavailable` for this long.
                request_timeout: Duration::from_secs(2),
                ..tls_config(&ca, Some(ADMIN_KEY))
            };
            let client = corebus_client::Client::connect_with(addr.as_str(), config)
                .await
                .expect("connects inside the namespace");
            let started = Instant::now();
            let spec = unreachable_spec("minority");
            (client.add_webhook(&spec).await, started.elapsed())
        })
    });
    match refused {
        Err(corebus_client::Error::Server {
            code: Some(corebus_net::ErrorCode::Unavailable),
            message,
            ..
        }) => assert!(message.contains("no quorum"), "{message}"),
        other => panic!("expected unavailable, got {other:?}"),
    }
    // Refused at once each time: the client's 2 s of retries, and no more.
    assert!(
        took < Duration::from_secs(3),
        "refused at once, not after {took:?}"
    );
    // The majority goes on.
    let majority = (0..3).find(|i| *i != cut).expect("a majority node");
    let after = rt.block_on(async {
        let client = admin(nodes[majority].addr.clone(), certs.cert_pem.clone()).await;
        add_when_available(&client, &spec("majority")).await;
        webhook_ids(&client).await
    });
    assert_eq!(after.len(), before.len() + 1);
    netns.cut(cut as u8 + 1, false);
    // Healed: the cut node has exactly the majority's webhooks.
    rt.block_on(async {
        let client = admin(nodes[cut].addr.clone(), certs.cert_pem.clone()).await;
        await_ids(&client, &after, Duration::from_secs(10)).await;
    });
}

#[test]
fn a_snapshot_rebuilds_the_webhooks_of_a_cluster_that_lost_its_control_logs() {
    let secret = TempFile::new("cluster-secret-control-backup", SECRET);
    let certs = corebus_tests::test_certs_for_nodes(3);
    let (mut nodes, start, cluster_port) = three_tls_nodes_with(&secret, &certs, |_| Vec::new());
    let spec = unreachable_spec;
    let rt = runtime();
    let before = rt.block_on(async {
        let client = tls_client(&nodes[1].addr, &certs).await;
        add_when_available(&client, &spec("a")).await;
        add_when_available(&client, &spec("b")).await;
        webhook_ids(&client).await
    });
    let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "control-backup-{}-{cluster_port}.json",
        std::process::id()
    ));
    let _ = std::fs::remove_file(&out);
    let ca = certs.cert_pem.to_str().expect("UTF-8 path");
    let printed = corebus(&[
        "cluster",
        "snapshot",
        "--server",
        &nodes[2].addr,
        "--ca",
        ca,
        "--out",
        out.to_str().expect("UTF-8 path"),
    ]);
    assert!(printed.contains("saved"), "{printed}");
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&out)
        .expect("written")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the backup holds secrets");
    // Every node's log is lost for good.
    for node in &mut nodes {
        node.child.kill().expect("kill -9");
        let _ = node.child.wait();
    }
    for n in 1..=3 {
        let _ = std::fs::remove_dir_all(data_dir_of(cluster_port, n).join("control"));
    }
    // docs/cluster.md: the backup becomes webhooks.json of the nodes, and
    // the node that founds the new log imports it.
    for n in 1..=3 {
        std::fs::copy(&out, data_dir_of(cluster_port, n).join("webhooks.json")).expect("copied");
    }
    let nodes: Vec<Node> = (1..=3).map(&start).collect();
    rt.block_on(async {
        let client = tls_client(&nodes[2].addr, &certs).await;
        await_ids(&client, &before, Duration::from_secs(10)).await;
    });
    let _ = std::fs::remove_file(&out);
}

#[test]
fn cluster_status_shows_the_control_plane_and_configuration_differences_and_remove_frees_a_seat() {
    let secret = TempFile::new("cluster-secret-control-status", SECRET);
    let certs = corebus_tests::test_certs_for_nodes(3);
    // Node 3 lets clients keep more publishes in flight: a difference.
    let differs = |n: u8| match n {
        3 => vec!["--max-in-flight".to_string(), "999".to_string()],
        _ => Vec::new(),
    };
    let (mut nodes, _, cluster_port) = three_tls_nodes_with(&secret, &certs, differs);
    let id = |n: u8| format!("127.0.0.{n}:{cluster_port}");
    let rt = runtime();
    rt.block_on(async {
        let client = tls_client(&nodes[0].addr, &certs).await;
        add_when_available(&client, &unreachable_spec("t")).await;
        let started = Instant::now();
        let control = loop {
            let control = client
                .cluster_status()
                .await
                .expect("status")
                .control
                .expect("a control plane");
            if control.nodes.len() == 3 && control.voters.len() == 3 {
                break control;
            }
            assert!(started.elapsed() < Duration::from_secs(5), "{control:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert!(control.leader.is_some());
        assert_eq!(control.config_comparison, "available");
        let node = |n: u8| {
            control
                .nodes
                .iter()
                .find(|node| node.node == id(n))
                .unwrap_or_else(|| panic!("node {n} in {control:?}"))
                .clone()
        };
        assert_eq!(node(2).config, "same");
        assert_eq!(node(3).config, "differs");
        assert!(node(2).applied.is_some_and(|applied| applied >= 1));
        // A node that is up keeps its seat.
        let refused = client.remove_cluster_node(&id(3)).await.unwrap_err();
        assert!(refused.to_string().contains("is up"), "{refused}");
    });
    nodes[2].child.kill().expect("kill -9 node 3");
    let _ = nodes[2].child.wait();
    // Both survivors know it is down (either may carry out the removal).
    await_alive(&nodes[0], 2.0, Duration::from_secs(10));
    await_alive(&nodes[1], 2.0, Duration::from_secs(10));
    rt.block_on(async {
        let client = tls_client(&nodes[1].addr, &certs).await;
        client
            .remove_cluster_node(&id(3))
            .await
            .expect("a dead node's seat is given up");
        let control = client.cluster_status().await.expect("status").control;
        let control = control.expect("a control plane");
        assert!(!control.voters.contains(&id(3)), "{control:?}");
        assert_eq!(control.voters.len(), 2);
    });
    // A node that insists on the same configuration refuses to join.
    let data_dir = data_dir_of(cluster_port, 3);
    let output = Command::new(BIN)
        .args([
            "serve",
            "--listen",
            "127.0.0.3:0",
            "--cluster-listen",
            &id(3),
        ])
        .args(["--seed", &id(1), "--cluster-secret-file", secret.path()])
        .args(["--data-dir", data_dir.to_str().expect("UTF-8 path")])
        .args([
            "--max-in-flight",
            "999",
            "--cluster-require-same-config=true",
        ])
        .args(tls_args(&certs))
        .env_remove("RUST_LOG")
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "it must not run: {stderr}");
    assert!(stderr.contains("refusing to join"), "{stderr}");
}

#[test]
fn a_410_seen_by_the_owner_disables_the_webhook_on_every_node_until_enabled_on_any() {
    use common::receiver::{Receiver, Reply};
    let secret = TempFile::new("cluster-secret-control-410", SECRET);
    let certs = corebus_tests::test_certs_for_nodes(3);
    let (nodes, _, cluster_port) = three_tls_nodes_with(&secret, &certs, |_| Vec::new());
    let ids = node_ids(cluster_port);
    // Owned by node 3; the webhook is added on node 1 and the publish made
    // on node 2.
    let topic = topic_owned_by(2, &ids, "gone");
    runtime().block_on(async {
        let receiver = Receiver::start(|_, _| Reply::Status(410)).await;
        let clients = tls_clients(&nodes, &certs).await;
        let spec = corebus_client::WebhookSpec::new(
            receiver.url.clone(),
            "cl",
            &topic,
            corebus_client::WebhookMatch::Exact,
        );
        let hook = add_when_available(&clients[0], &spec).await;
        clients[1]
            .publish("cl", &topic, b"x".to_vec())
            .await
            .expect("acknowledged");
        receiver
            .wait_for("the 410", |requests| !requests.is_empty())
            .await;
        // Node 3 saw the 410; every node shows the webhook disabled.
        for client in &clients {
            let started = Instant::now();
            loop {
                let listed = client.list_webhooks().await.expect("lists");
                let found = listed.iter().find(|h| h.id == hook.id).expect("listed");
                if found.disabled.is_some() {
                    break;
                }
                assert!(started.elapsed() < Duration::from_secs(5), "not disabled");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        // Enabled on node 2: enabled everywhere once answered.
        clients[1].enable_webhook(&hook.id).await.expect("enabled");
        for client in &clients {
            let listed = client.list_webhooks().await.expect("lists");
            let found = listed.iter().find(|h| h.id == hook.id).expect("listed");
            assert!(found.disabled.is_none(), "{found:?}");
        }
    });
}

/// A webhook receiver that answers each request after 15 ms, registered
/// for `topic` of namespace `cl` through `node`, and a client of `node` to
/// publish with.
async fn slow_receiver_of(
    node: &Node,
    certs: &corebus_tests::TestCerts,
    topic: &str,
) -> (common::receiver::Receiver, corebus_client::Client) {
    use common::receiver::{Receiver, Reply};
    let receiver = Receiver::start(|_, _| Reply::Slowly(Duration::from_millis(15))).await;
    let client = tls_client(&node.addr, certs).await;
    let spec = corebus_client::WebhookSpec::new(
        receiver.url.clone(),
        "cl",
        topic,
        corebus_client::WebhookMatch::Exact,
    );
    add_when_available(&client, &spec).await;
    (receiver, client)
}

#[test]
fn a_planned_leave_delivers_each_webhook_message_once_and_in_order_across_the_move() {
    let secret = TempFile::new("cluster-secret-control-leave", SECRET);
    let certs = corebus_tests::test_certs_for_nodes(3);
    let (mut nodes, _, cluster_port) = three_tls_nodes_with(&secret, &certs, |_| Vec::new());
    let ids = node_ids(cluster_port);
    let topic = topic_owned_by(2, &ids, "moving");
    let rt = runtime();
    // A receiver slow enough that node 3 still holds messages when it goes
    // (15 ms an answer, a publish every 5 ms or so).
    let (receiver, publisher) = rt.block_on(slow_receiver_of(&nodes[0], &certs, &topic));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let publishing = steady_publisher(
        &rt,
        publisher,
        topic.clone(),
        Duration::from_millis(5),
        stop.clone(),
    );
    std::thread::sleep(Duration::from_millis(500));
    let (status, _) = sigterm_and_wait(&mut nodes[2].child, Duration::from_secs(20));
    assert!(status.success(), "node 3 left cleanly");
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (acknowledged, _) = rt.block_on(publishing).expect("publisher ran");
    assert!(acknowledged > 50, "publishing went on: {acknowledged}");
    // Every sequence number of the one epoch arrives once: none skipped by
    // the move, none sent by both owners.
    rt.block_on(async {
        let started = Instant::now();
        loop {
            let requests = receiver.requests();
            let arrived: Vec<u64> = requests.iter().map(|r| r.seq()).collect();
            let mut seqs = arrived.clone();
            let epochs: std::collections::BTreeSet<String> = requests
                .iter()
                .map(|r| r.json()["epoch"].as_str().expect("epoch").to_string())
                .collect();
            seqs.sort_unstable();
            let last = seqs.last().copied().unwrap_or(0);
            if last >= u64::from(acknowledged) && seqs.len() as u64 == last {
                assert_eq!(epochs.len(), 1, "one epoch across a planned move");
                assert_eq!(seqs, (1..=last).collect::<Vec<_>>(), "each once");
                // The new owner waited for the old one's last deliveries.
                assert_eq!(arrived, seqs, "in order across the move");
                break;
            }
            let mut repeated = seqs.clone();
            repeated.dedup();
            assert_eq!(repeated.len(), seqs.len(), "a message was delivered twice");
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "{} of {last} delivered, {acknowledged} acknowledged",
                seqs.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
}

/// The webhook form of a discontinuity: an owner killed with deliveries
/// still queued on it loses them, and its successor delivers under a new
/// epoch from seq 1, every message of that epoch once.
#[test]
fn an_owner_killed_during_webhook_deliveries_gives_a_new_epoch_with_nothing_missing() {
    let secret = TempFile::new("cluster-secret-control-crash", SECRET);
    let certs = corebus_tests::test_certs_for_nodes(3);
    let (mut nodes, _, cluster_port) = three_tls_nodes_with(&secret, &certs, |_| Vec::new());
    let ids = node_ids(cluster_port);
    let topic = topic_owned_by(2, &ids, "crashing");
    let rt = runtime();
    let (receiver, publisher) = rt.block_on(async {
        let (receiver, client) = slow_receiver_of(&nodes[0], &certs, &topic).await;
        for i in 0..100 {
            client
                .publish("cl", &topic, format!("before {i}").into_bytes())
                .await
                .expect("acknowledged by node 3");
        }
        (receiver, client)
    });
    nodes[2].child.kill().expect("kill -9 the owner");
    let _ = nodes[2].child.wait();
    rt.block_on(async {
        // Published until the new owner acknowledges each: a publish the
        // dead owner could not take is refused, not sequenced.
        for i in 0..50 {
            let payload = format!("after {i}").into_bytes();
            let started = Instant::now();
            while let Err(err) = publisher.publish("cl", &topic, payload.clone()).await {
                assert!(started.elapsed() < Duration::from_secs(10), "{err}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        let after = |r: &common::receiver::Received| {
            r.json()["payload"]
                .as_str()
                .is_some_and(|p| p.starts_with("after"))
        };
        let requests = receiver
            .wait_for("the new owner's 50", |requests| {
                requests.iter().filter(|r| after(r)).count() >= 50
            })
            .await;
        let epoch_of =
            |r: &common::receiver::Received| r.json()["epoch"].as_str().expect("epoch").to_string();
        let old_epoch = epoch_of(&requests[0]);
        let before: Vec<u64> = requests
            .iter()
            .filter(|r| epoch_of(r) == old_epoch)
            .map(|r| r.seq())
            .collect();
        let new: Vec<&common::receiver::Received> = requests
            .iter()
            .filter(|r| epoch_of(r) != old_epoch)
            .collect();
        assert!(!new.is_empty(), "a new epoch");
        let new_epoch = epoch_of(new[0]);
        assert!(
            new.iter().all(|r| epoch_of(r) == new_epoch),
            "two epochs only"
        );
        assert!(
            new.iter().all(|r| after(r)),
            "only the new publishes in the new epoch"
        );
        let seqs: Vec<u64> = new.iter().map(|r| r.seq()).collect();
        assert_eq!(
            seqs,
            (1..=50).collect::<Vec<_>>(),
            "each once, in order, from 1"
        );
        // The old epoch's deliveries are each once and in order, up to
        // where the owner died.
        assert_eq!(before, (1..=before.len() as u64).collect::<Vec<_>>());
        eprintln!(
            "node 3 delivered {} of its 100 before the kill",
            before.len()
        );
    });
}

#[test]
fn the_control_plane_bounds_its_connections_and_reads_no_body_without_credentials() {
    use std::io::{Read as _, Write as _};
    let secret = TempFile::new("cluster-secret-control-bounds", SECRET);
    let (cluster_port, metrics_port) = (free_port(), free_port());
    let _node = node(1, cluster_port, metrics_port, &secret);
    let control = SocketAddr::from(([127, 0, 0, 1], cluster_port));
    // 100 connections that say nothing: 64 are held (until the head's
    // deadline), the rest closed at once.
    let mut silent: Vec<std::net::TcpStream> = (0..100)
        .map(|_| std::net::TcpStream::connect(control).expect("connects"))
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    // Closed: the end of the stream (or a reset); held: nothing to read yet.
    let closed = |stream: &mut std::net::TcpStream, wait: Duration| {
        stream.set_read_timeout(Some(wait)).expect("timeout");
        match stream.read(&mut [0u8; 64]) {
            Ok(read) => read == 0,
            Err(err) => !matches!(
                err.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
        }
    };
    let mut at_once = 0;
    for stream in &mut silent {
        at_once += usize::from(closed(stream, Duration::from_millis(50)));
    }
    assert_eq!(
        at_once, 36,
        "beyond 64 open, a connection is closed at once"
    );
    // The held ones are closed at the head's deadline (5 s).
    let started = Instant::now();
    for stream in &mut silent {
        let left = Duration::from_secs(8).saturating_sub(started.elapsed());
        assert!(
            closed(stream, left.max(Duration::from_millis(1))),
            "a silent connection is closed at the deadline"
        );
    }
    // A request without credentials is refused before its body is read:
    // it announces a gigabyte and sends none of it.
    let mut stream = std::net::TcpStream::connect(control).expect("connects");
    stream
        .write_all(b"POST /raft/append HTTP/1.1\r\nhost: x\r\ncontent-length: 1000000000\r\n\r\n")
        .expect("sends the head");
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let mut answer = [0u8; 64];
    let read = stream.read(&mut answer).expect("answered");
    let answer = String::from_utf8_lossy(&answer[..read]);
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
}

#[test]
fn six_members_make_five_voters_and_a_learner_which_takes_a_removed_voters_seat() {
    let secret = TempFile::new("cluster-secret-control-six", SECRET);
    let (cluster_port, metrics_port) = (free_port_on(6), free_port_on(6));
    // One shard each: six nodes share the machine's cores.
    let mut nodes: Vec<Node> = (1..=6)
        .map(|n| node_with_args(n, cluster_port, metrics_port, &secret, &["--shards", "1"]))
        .collect();
    for node in &nodes {
        await_alive(node, 6.0, Duration::from_secs(15));
    }
    let id = |n: u8| format!("127.0.0.{n}:{cluster_port}");
    let rt = runtime();
    let control = |client: &corebus_client::Client| {
        let client = client.clone();
        async move {
            client
                .cluster_status()
                .await
                .expect("status")
                .control
                .expect("a control plane")
        }
    };
    let client = rt.block_on(connect(&nodes[0].addr));
    let await_seats = |voters: usize, learners: usize| {
        rt.block_on(async {
            let started = Instant::now();
            loop {
                let now = control(&client).await;
                if now.voters.len() == voters && now.learners.len() == learners {
                    return now;
                }
                assert!(
                    started.elapsed() < Duration::from_secs(15),
                    "not {voters} voters and {learners} learners: {now:?}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let seats = await_seats(5, 1);
    // A voter dies: it keeps its seat (failure detection takes none).
    let voter = seats
        .voters
        .iter()
        .map(|node| node.parse::<SocketAddr>().expect("an address"))
        .find(|node| node.ip() != std::net::IpAddr::from([127, 0, 0, 1]))
        .expect("a voter besides node 1");
    let n = match voter.ip() {
        std::net::IpAddr::V4(ip) => ip.octets()[3],
        std::net::IpAddr::V6(_) => unreachable!("IPv4 nodes"),
    };
    nodes[usize::from(n) - 1].child.kill().expect("kill -9");
    let _ = nodes[usize::from(n) - 1].child.wait();
    await_alive(&nodes[0], 5.0, Duration::from_secs(10));
    std::thread::sleep(Duration::from_secs(1));
    let after_death = rt.block_on(control(&client));
    assert!(after_death.voters.contains(&id(n)), "{after_death:?}");
    assert_eq!(after_death.voters.len(), 5);
    // Removed: the learner takes the seat.
    rt.block_on(client.remove_cluster_node(&id(n)))
        .expect("removed");
    let seats = await_seats(5, 0);
    assert!(!seats.voters.contains(&id(n)), "{seats:?}");
}

#[test]
fn a_member_whose_data_dir_cannot_be_written_says_so_and_does_not_start() {
    let secret = TempFile::new("cluster-secret-control-dir", SECRET);
    let cluster_port = free_port();
    // A directory under a regular file cannot be made.
    let output = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(["--cluster-listen", &format!("127.0.0.1:{cluster_port}")])
        .args(["--cluster-secret-file", secret.path()])
        .args(["--data-dir", &format!("{}/below", secret.path())])
        .env_remove("RUST_LOG")
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("cannot keep the control plane's log in") && stderr.contains("data_dir"),
        "{stderr}"
    );
}

#[test]
fn a_node_down_while_the_log_is_compacted_catches_up_from_a_snapshot() {
    let secret = TempFile::new("cluster-secret-control-snap", SECRET);
    let certs = corebus_tests::test_certs_for_nodes(3);
    let (mut nodes, start) = three_tls_nodes(&secret, &certs);
    runtime().block_on(async {
        let client = tls_client(&nodes[0].addr, &certs).await;
        add_when_available(&client, &unreachable_spec("first")).await;
        nodes[2].child.kill().expect("kill -9 node 3");
        let _ = nodes[2].child.wait();
        // More changes than a snapshot's worth (64): the log node 3 would
        // need is compacted away, and it must get a snapshot.
        for i in 0..40 {
            let hook = add_when_available(&client, &unreachable_spec(&format!("t{i}"))).await;
            if i % 2 == 0 {
                client.remove_webhook(&hook.id).await.expect("removed");
            }
        }
        let expected = webhook_ids(&client).await;
        assert_eq!(expected.len(), 21, "{expected:?}");
        nodes[2] = start(3);
        let restarted = tls_client(&nodes[2].addr, &certs).await;
        let took = await_ids(&restarted, &expected, Duration::from_secs(5)).await;
        eprintln!("node 3 caught up from a snapshot {took:?} after its restart");
    });
}

/// Percentile `p` (0-100) of sorted `durations`, nearest rank.
fn percentile(durations: &[Duration], p: f64) -> Duration {
    let rank = ((p / 100.0) * durations.len() as f64).ceil() as usize;
    durations[rank.clamp(1, durations.len()) - 1]
}

/// Not a test of a target (timings on a shared 2-core machine are noise
/// for a test): the figures the control plane's documentation quotes,
/// printed on demand with
/// `cargo nextest run -p corebus --profile checked --run-ignored only control_plane_timings --no-capture`.
/// Three TLS nodes; 100 `webhook add`s answered through the leader's own
/// node and 100 through a follower (forwarded), each timed from the call to
/// its answer (committed and applied on every member); then five times a
/// follower killed, three adds and a remove made without it, and the time
/// from its restart (process start included) until it lists the same
/// webhooks.
#[test]
#[ignore = "prints figures; run by hand"]
fn control_plane_timings() {
    let secret = TempFile::new("cluster-secret-control-timings", SECRET);
    let certs = corebus_tests::test_certs_for_nodes(3);
    let (mut nodes, start) = three_tls_nodes(&secret, &certs);
    runtime().block_on(async {
        let clients = tls_clients(&nodes, &certs).await;
        add_when_available(&clients[0], &unreachable_spec("warm-up")).await;
        let leader = control_leader(&clients[0]).await;
        let follower = (leader + 1) % 3;
        for (label, node) in [("leader's node", leader), ("a follower", follower)] {
            let mut took = Vec::new();
            for i in 0..100 {
                let spec = unreachable_spec(&format!("timed-{node}-{i}"));
                let started = Instant::now();
                clients[node].add_webhook(&spec).await.expect("added");
                took.push(started.elapsed());
            }
            took.sort();
            eprintln!(
                "webhook add through {label}: p50 {:?}, p99 {:?}, max {:?} (100 adds)",
                percentile(&took, 50.0),
                percentile(&took, 99.0),
                took[took.len() - 1]
            );
        }
        let down = (leader + 2) % 3;
        let mut caught_up = Vec::new();
        for round in 0..5 {
            nodes[down].child.kill().expect("kill -9");
            let _ = nodes[down].child.wait();
            let mut added = Vec::new();
            for i in 0..3 {
                let spec = unreachable_spec(&format!("down-{round}-{i}"));
                added.push(add_when_available(&clients[leader], &spec).await.id);
            }
            clients[leader]
                .remove_webhook(&added[0])
                .await
                .expect("removed");
            let expected = webhook_ids(&clients[leader]).await;
            let started = Instant::now();
            nodes[down] = start(u8::try_from(down + 1).expect("three nodes"));
            let restarted = tls_client(&nodes[down].addr, &certs).await;
            await_ids(&restarted, &expected, Duration::from_secs(10)).await;
            caught_up.push(started.elapsed());
        }
        eprintln!("restart to caught up (process start included): {caught_up:?}");
    });
}
