//! The membership thread on real UDP sockets: three nodes on 127.0.0.1-3
//! find each other through one seed, a node that stops is declared down, and
//! a node that leaves is known to be gone at once.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use corebus_cluster::{
    Generation, GossipKeys, MemberState, Membership, MembershipConfig, NodeIdentity, Timing,
};

const SECRET: &[u8] = b"udp-test-cluster-secret-0123456789abcdef";

/// A UDP port free on 127.0.0.1, .2 and .3 alike.
fn free_port() -> u16 {
    for _ in 0..100 {
        let probe = UdpSocket::bind("127.0.0.1:0").expect("binds");
        let port = probe.local_addr().expect("address").port();
        let others =
            (2..=3).all(|n| UdpSocket::bind(SocketAddr::from(([127, 0, 0, n], port))).is_ok());
        if others {
            return port;
        }
    }
    panic!("no port free on 127.0.0.1-3");
}

fn start(n: u8, port: u16, seed: SocketAddr) -> Membership {
    let started_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    Membership::start(MembershipConfig {
        me: NodeIdentity {
            addr: SocketAddr::from(([127, 0, 0, n], port)),
            generation: Generation {
                started_ms,
                bump: 0,
            },
            client: SocketAddr::from(([127, 0, 0, n], 7400)),
            leaving: false,
        },
        seeds: vec![seed],
        keys: GossipKeys::new(SECRET, None).unwrap(),
        timing: Timing::default(),
    })
    .expect("starts")
}

/// Waits until `done` holds for the node's view, at most `within`; returns
/// how long it took.
fn wait(
    node: &Membership,
    within: Duration,
    done: impl Fn(&corebus_cluster::MemberView) -> bool,
) -> Duration {
    let start = Instant::now();
    loop {
        let view = node.view().snapshot();
        if done(&view) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "not within {within:?}; last view {view:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn three_nodes_meet_then_notice_a_stop_and_a_leave() {
    let port = free_port();
    let seed = SocketAddr::from(([127, 0, 0, 1], port));
    let one = start(1, port, seed);
    let two = start(2, port, seed);
    let three = start(3, port, seed);
    for node in [&one, &two, &three] {
        wait(node, Duration::from_secs(5), |view| {
            view.count(MemberState::Alive) == 3
        });
    }
    // Node 3 stops without a word (its thread ends; its socket closes).
    drop(three);
    let noticed = wait(&one, Duration::from_secs(6), |view| {
        view.count(MemberState::Alive) == 2
    });
    wait(&two, Duration::from_secs(6), |view| {
        view.count(MemberState::Alive) == 2
    });
    eprintln!("a stopped node was declared down after {noticed:?}");
    // Node 2 leaves: node 1 knows at once, before any probe could fail.
    let leaving = Instant::now();
    two.leave(); // returns after its last datagrams (300 ms of linger)
    wait(&one, Duration::from_millis(500), |view| {
        view.count(MemberState::Alive) == 1
    });
    let left = leaving.elapsed();
    eprintln!("a leave was known {left:?} after it began");
    assert!(left < Duration::from_secs(1), "{left:?}");
    assert!(
        one.view().refused_datagrams() == 0,
        "nothing refused among holders of the secret"
    );
}

#[test]
fn a_node_with_another_secret_is_refused() {
    let port = free_port();
    let seed = SocketAddr::from(([127, 0, 0, 1], port));
    let one = start(1, port, seed);
    let started_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let outsider = Membership::start(MembershipConfig {
        me: NodeIdentity {
            addr: SocketAddr::from(([127, 0, 0, 2], port)),
            generation: Generation {
                started_ms,
                bump: 0,
            },
            client: SocketAddr::from(([127, 0, 0, 2], 7400)),
            leaving: false,
        },
        seeds: vec![seed],
        keys: GossipKeys::new(b"some-other-cluster-secret-0123456789ab", None).unwrap(),
        timing: Timing::default(),
    })
    .expect("starts");
    wait(&one, Duration::from_secs(5), |_| {
        one.view().refused_datagrams() > 0
    });
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        one.view().snapshot().members.len(),
        1,
        "the outsider is not a member"
    );
    assert_eq!(outsider.view().snapshot().members.len(), 1);
}
