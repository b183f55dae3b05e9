//! Many nodes in one process on a virtual clock and a simulated network:
//! joining through a seed, a crash noticed within the promised time, a
//! planned leave noticed at once, a restart told apart by its generation,
//! and a node without the cluster secret kept out. Deterministic: the same
//! seeds give the same run.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use corebus_cluster::{Generation, GossipKeys, MemberState, Node, NodeIdentity, Timing};

const SECRET: &[u8] = b"simulated-cluster-secret-0123456789abc";
const START_MS: u64 = 1_765_000_000_000;
/// One-way latency of the simulated network.
const LATENCY_MS: u64 = 1;

fn addr(n: u8) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, n], 7500))
}

fn identity(n: u8, started_ms: u64) -> NodeIdentity {
    NodeIdentity {
        addr: addr(n),
        generation: Generation {
            started_ms,
            bump: 0,
        },
        client: SocketAddr::from(([127, 0, 0, n], 7400)),
        leaving: false,
    }
}

struct Sim {
    now: u64,
    nodes: BTreeMap<SocketAddr, Node>,
    /// (deliver at, sequence) -> (to, datagram)
    wire: BTreeMap<(u64, u64), (SocketAddr, Vec<u8>)>,
    sent: u64,
    refused: usize,
}

impl Sim {
    fn new() -> Sim {
        Sim {
            now: START_MS,
            nodes: BTreeMap::new(),
            wire: BTreeMap::new(),
            sent: 0,
            refused: 0,
        }
    }

    fn start(&mut self, n: u8, secret: &[u8]) {
        let keys = GossipKeys::new(secret, None).expect("secret");
        let node = Node::new(
            identity(n, self.now),
            Timing::default(),
            keys,
            &[addr(1)],
            u64::from(n),
            self.now,
        );
        self.nodes.insert(addr(n), node);
        self.flush();
    }

    /// A crash: the node sends and receives nothing from now on.
    fn kill(&mut self, n: u8) {
        self.nodes.remove(&addr(n));
    }

    fn flush(&mut self) {
        let mut out = Vec::new();
        for node in self.nodes.values_mut() {
            node.take_outgoing(self.now, &mut out);
        }
        for (to, datagram) in out {
            self.sent += 1;
            self.wire
                .insert((self.now + LATENCY_MS, self.sent), (to, datagram));
        }
    }

    /// Advances the clock to `until`, delivering datagrams and timers in order.
    fn run_until(&mut self, until: u64) {
        loop {
            let next_wire = self.wire.keys().next().map(|(at, _)| *at);
            let next_timer = self.nodes.values().map(Node::next_deadline).min();
            let next = next_wire
                .into_iter()
                .chain(next_timer)
                .min()
                .unwrap_or(u64::MAX);
            if next > until {
                self.now = until;
                return;
            }
            self.now = next;
            while let Some(entry) = self.wire.first_entry() {
                if entry.key().0 > self.now {
                    break;
                }
                let (to, datagram) = entry.remove();
                if let Some(node) = self.nodes.get_mut(&to) {
                    if node.handle_datagram(&datagram, self.now).is_err() {
                        self.refused += 1;
                    }
                }
            }
            for node in self.nodes.values_mut() {
                node.handle_due(self.now);
            }
            self.flush();
        }
    }

    /// How `observer` sees the member at `n`.
    fn state(&self, observer: u8, n: u8) -> Option<(MemberState, NodeIdentity)> {
        self.nodes[&addr(observer)]
            .members()
            .into_iter()
            .find(|member| member.node.addr == addr(n))
            .map(|member| (member.state, member.node))
    }

    fn alive_count(&self, observer: u8) -> usize {
        self.nodes[&addr(observer)]
            .members()
            .iter()
            .filter(|member| member.state != MemberState::Down)
            .count()
    }

    /// Runs in 10 ms steps until `done` holds or `within_ms` pass; returns
    /// how long it took.
    fn until(&mut self, within_ms: u64, done: impl Fn(&Sim) -> bool) -> Option<u64> {
        let start = self.now;
        while self.now - start <= within_ms {
            if done(self) {
                return Some(self.now - start);
            }
            self.run_until(self.now + 10);
        }
        None
    }
}

fn three_nodes() -> Sim {
    let mut sim = Sim::new();
    for n in 1..=3 {
        sim.start(n, SECRET);
    }
    let joined = sim.until(3_000, |sim| (1..=3).all(|n| sim.alive_count(n) == 3));
    assert!(
        joined.is_some(),
        "three nodes did not see each other within 3 s"
    );
    sim
}

#[test]
fn nodes_joining_through_one_seed_all_see_each_other() {
    let sim = three_nodes();
    for observer in 1..=3 {
        for n in 1..=3 {
            let (state, node) = sim.state(observer, n).expect("known");
            assert_eq!(state, MemberState::Alive);
            assert_eq!(node.client, SocketAddr::from(([127, 0, 0, n], 7400)));
        }
    }
}

#[test]
fn a_crashed_node_is_declared_down_by_everyone_within_3_seconds() {
    // Several runs with other probe orders: the bound must hold for each.
    for round in 0..5u64 {
        let mut sim = three_nodes();
        sim.run_until(sim.now + 1_000 + round * 37);
        sim.kill(3);
        let took = sim
            .until(3_000, |sim| {
                (1..=2).all(|n| sim.state(n, 3).map(|(state, _)| state) == Some(MemberState::Down))
            })
            .unwrap_or_else(|| panic!("round {round}: the crash was not noticed within 3 s"));
        assert!(took <= 3_000, "round {round}: {took} ms");
        assert_eq!(sim.alive_count(1), 2);
    }
}

#[test]
fn a_planned_leave_is_known_at_once_and_leaving_first_is_gossiped() {
    let mut sim = three_nodes();
    sim.nodes.get_mut(&addr(3)).unwrap().start_leaving(sim.now);
    sim.flush();
    let marked = sim.until(500, |sim| {
        (1..=2).all(|n| {
            sim.state(n, 3)
                .is_some_and(|(state, node)| state != MemberState::Down && node.leaving)
        })
    });
    assert!(
        marked.is_some(),
        "the others did not learn that node 3 is leaving"
    );
    sim.nodes.get_mut(&addr(3)).unwrap().leave(sim.now);
    sim.flush();
    let gone = sim.until(500, |sim| {
        (1..=2).all(|n| sim.state(n, 3).map(|(state, _)| state) == Some(MemberState::Down))
    });
    assert!(gone.is_some(), "the leave was not known within 500 ms");
}

#[test]
fn a_restarted_node_replaces_its_old_generation() {
    let mut sim = three_nodes();
    let (_, before) = sim.state(1, 3).expect("known");
    sim.kill(3);
    sim.run_until(sim.now + 200);
    sim.start(3, SECRET);
    let renewed = sim.until(3_000, |sim| {
        (1..=2).all(|n| {
            sim.state(n, 3).is_some_and(|(state, node)| {
                state == MemberState::Alive && node.generation > before.generation
            })
        })
    });
    assert!(
        renewed.is_some(),
        "the restart was not seen as a new generation"
    );
    assert_eq!(sim.alive_count(1), 3, "one entry per address");
}

#[test]
fn a_node_without_the_cluster_secret_never_joins() {
    let mut sim = three_nodes();
    sim.start(4, b"not-the-cluster-secret-0123456789abcdef");
    sim.run_until(sim.now + 5_000);
    for n in 1..=3 {
        assert!(sim.state(n, 4).is_none(), "node {n} knows the outsider");
        assert_eq!(sim.alive_count(n), 3);
    }
    assert!(sim.refused > 0, "its datagrams were refused");
}
