//! Cluster membership end to end: `corebus serve` processes on 127.0.0.1,
//! .2 and .3 gossip through one seed, with a cluster secret; each node's
//! metrics endpoint lists the members. A `kill -9` is noticed, a SIGTERM is
//! known at once, and a node with another secret never joins.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{read_address, sample, scrape, sigterm_and_wait, TempFile, BIN};

const SECRET: &str = "cluster-test-secret-0123456789abcdef0123";

/// A port free on 127.0.0.1-3, for UDP (gossip) and TCP (metrics) alike.
fn free_port() -> u16 {
    for _ in 0..100 {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("binds");
        let port = probe.local_addr().expect("address").port();
        let free = (1..=3).all(|n| {
            let ip = [127, 0, 0, n];
            UdpSocket::bind(SocketAddr::from((ip, port))).is_ok()
                && (n == 1 || std::net::TcpListener::bind(SocketAddr::from((ip, port))).is_ok())
        });
        if free {
            return port;
        }
    }
    panic!("no port free on 127.0.0.1-3");
}

struct Node {
    child: Child,
    metrics: String,
    /// Where its clients connect.
    addr: String,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn node(n: u8, cluster_port: u16, metrics_port: u16, secret: &TempFile) -> Node {
    let ip = format!("127.0.0.{n}");
    let metrics = format!("{ip}:{metrics_port}");
    let mut child = Command::new(BIN)
        .args([
            "serve",
            "--log-level",
            "warn",
            "--listen",
            &format!("{ip}:0"),
        ])
        .args(["--cluster-listen", &format!("{ip}:{cluster_port}")])
        .args(["--seed", &format!("127.0.0.1:{cluster_port}")])
        .args(["--cluster-secret-file", secret.path()])
        .args(["--metrics", &metrics])
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .spawn()
        .expect("corebus serve starts");
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
fn await_alive(node: &Node, expected: f64, within: Duration) -> Duration {
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
fn documented_owner(ns: &str, topic: &str, ids: &[String]) -> usize {
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
    let ids: Vec<String> = (1..=3)
        .map(|n| format!("127.0.0.{n}:{cluster_port}"))
        .collect();
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
