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
    read_address(&mut child);
    Node { child, metrics }
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
