//! One node's membership, without I/O: foca driven by the caller's clock.
//!
//! The caller feeds datagrams ([`Node::handle_datagram`]) and the time
//! ([`Node::handle_due`] at [`Node::next_deadline`]), and sends what
//! [`Node::take_outgoing`] hands it. The UDP thread ([`crate::Membership`])
//! does that with a socket and the system clock; the tests do it with a
//! simulated network and a virtual clock, many nodes in one process.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::SocketAddr;
use std::num::{NonZeroU8, NonZeroUsize};
use std::time::Duration;

use foca::{
    AccumulatingRuntime, Config, Foca, NoCustomBroadcast, OwnedNotification, PeriodicParams, State,
    Timer,
};
use rand::rngs::StdRng;
use rand::SeedableRng;
use tracing::{debug, info, warn};

use crate::codec::GossipCodec;
use crate::envelope::{EnvelopeError, GossipKeys, OVERHEAD};
use crate::identity::NodeIdentity;

/// The largest datagram sent, envelope included: below a 1500-byte MTU.
pub const MAX_DATAGRAM: usize = 1400;
/// How often a node that knows nobody announces itself to its seeds again.
const REANNOUNCE_MS: u64 = 1000;

/// How fast failures are detected. The defaults notice a dead node within
/// about 2 s in a cluster of 3 and 3 s in one of 5 (a probe every 250 ms,
/// suspicion confirmed after 1 s); the price is that a process stalled for
/// over a second is declared down, and rejoins as a new generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// How often each node probes one other.
    pub probe_every: Duration,
    /// How long a probe's answer may take before indirect probes start.
    pub probe_rtt: Duration,
    /// How long a suspect has to refute before it is declared down.
    pub suspect_to_down: Duration,
    /// How often each node gossips to a few others.
    pub gossip_every: Duration,
}

impl Default for Timing {
    fn default() -> Timing {
        Timing {
            probe_every: Duration::from_millis(250),
            probe_rtt: Duration::from_millis(100),
            suspect_to_down: Duration::from_secs(1),
            gossip_every: Duration::from_millis(100),
        }
    }
}

impl Timing {
    fn config(self) -> Config {
        let three = NonZeroUsize::new(3).expect("3 is not 0");
        Config {
            probe_period: self.probe_every,
            probe_rtt: self.probe_rtt,
            num_indirect_probes: three,
            max_transmissions: NonZeroU8::new(8).expect("8 is not 0"),
            suspect_to_down_after: self.suspect_to_down,
            remove_down_after: Some(Duration::from_secs(24 * 3600)),
            max_packet_size: NonZeroUsize::new(MAX_DATAGRAM - OVERHEAD).expect("room left"),
            notify_down_members: true,
            periodic_announce: Some(PeriodicParams {
                frequency: Duration::from_secs(5),
                num_members: NonZeroUsize::new(1).expect("1 is not 0"),
            }),
            periodic_announce_to_down_members: Some(PeriodicParams {
                frequency: Duration::from_secs(1),
                num_members: NonZeroUsize::new(2).expect("2 is not 0"),
            }),
            periodic_gossip: Some(PeriodicParams {
                frequency: self.gossip_every,
                num_members: three,
            }),
        }
    }
}

/// What a node knows of a member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Its identity (this node's own included).
    pub node: NodeIdentity,
    /// Its state as this node sees it.
    pub state: MemberState,
}

impl Member {
    /// Whether topics are placed on it: alive or suspect, and not leaving.
    pub fn places_topics(&self) -> bool {
        self.state != MemberState::Down && !self.node.leaving
    }
}

/// A member's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MemberState {
    /// Answering.
    Alive,
    /// Some member could not reach it; it is still counted as alive until it
    /// refutes or is declared down.
    Suspect,
    /// Declared down (or left).
    Down,
}

impl MemberState {
    /// The name `cluster status` and the metrics use.
    pub fn name(self) -> &'static str {
        match self {
            MemberState::Alive => "alive",
            MemberState::Suspect => "suspect",
            MemberState::Down => "down",
        }
    }
}

/// Why a datagram was not taken.
#[derive(Debug, thiserror::Error)]
pub enum DatagramError {
    /// The envelope did not open (no cluster secret, replay, corruption).
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
    /// foca refused the contents.
    #[error("gossip refused: {0}")]
    Gossip(String),
}

type Swim = Foca<NodeIdentity, GossipCodec, StdRng, NoCustomBroadcast>;

/// One node's membership state machine.
pub struct Node {
    foca: Swim,
    runtime: AccumulatingRuntime<NodeIdentity>,
    /// Timers by due time (ms on the caller's clock), then submission order.
    timers: BinaryHeap<Reverse<(u64, u64, Timer<NodeIdentity>)>>,
    submitted: u64,
    keys: GossipKeys,
    seeds: Vec<SocketAddr>,
    /// foca has no active peer: it announces to the seeds on its own clock.
    idle: bool,
    next_announce_ms: u64,
    changed: bool,
    left: bool,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("identity", self.foca.identity())
            .field("members", &self.foca.num_members())
            .finish()
    }
}

impl Node {
    /// A node that joins through `seeds` (its own address among them is
    /// skipped), with randomness from `seed` (a simulation passes a fixed
    /// one, the thread a random one).
    pub fn new(
        me: NodeIdentity,
        timing: Timing,
        keys: GossipKeys,
        seeds: &[SocketAddr],
        seed: u64,
        now_ms: u64,
    ) -> Node {
        let seeds = seeds
            .iter()
            .copied()
            .filter(|addr| *addr != me.addr)
            .collect();
        let foca = Foca::new(
            me,
            timing.config(),
            StdRng::seed_from_u64(seed),
            GossipCodec,
        );
        let mut node = Node {
            foca,
            runtime: AccumulatingRuntime::new(),
            timers: BinaryHeap::new(),
            submitted: 0,
            keys,
            seeds,
            idle: true,
            next_announce_ms: now_ms,
            changed: true,
            left: false,
        };
        node.handle_due(now_ms);
        node
    }

    /// This node's identity (it changes when it rejoins or starts leaving).
    pub fn identity(&self) -> &NodeIdentity {
        self.foca.identity()
    }

    /// Takes one datagram received at `now_ms`.
    pub fn handle_datagram(&mut self, datagram: &[u8], now_ms: u64) -> Result<(), DatagramError> {
        let payload = self.keys.open(datagram, now_ms)?;
        let result = self.foca.handle_data(payload, &mut self.runtime);
        self.collect(now_ms);
        result.map_err(|err| DatagramError::Gossip(err.to_string()))
    }

    /// Runs every timer due by `now_ms`, in order, and announces to the
    /// seeds while the node knows nobody.
    pub fn handle_due(&mut self, now_ms: u64) {
        while let Some(Reverse((due, _, _))) = self.timers.peek() {
            if *due > now_ms {
                break;
            }
            let Some(Reverse((_, _, timer))) = self.timers.pop() else {
                break;
            };
            if let Err(err) = self.foca.handle_timer(timer, &mut self.runtime) {
                debug!(%err, "gossip timer");
            }
            self.collect(now_ms);
        }
        if self.idle && !self.left && now_ms >= self.next_announce_ms {
            for seed in self.seeds.clone() {
                if let Err(err) = self
                    .foca
                    .announce(NodeIdentity::seed(seed), &mut self.runtime)
                {
                    debug!(%err, %seed, "announce");
                }
            }
            self.next_announce_ms = now_ms + REANNOUNCE_MS;
            self.collect(now_ms);
        }
    }

    /// When [`Node::handle_due`] has something to do next.
    pub fn next_deadline(&self) -> u64 {
        let timer = self.timers.peek().map(|Reverse((due, _, _))| *due);
        let announce = (self.idle && !self.left).then_some(self.next_announce_ms);
        timer.into_iter().chain(announce).min().unwrap_or(u64::MAX)
    }

    /// Moves the sealed datagrams to send, with their destinations, to `out`.
    pub fn take_outgoing(&mut self, now_ms: u64, out: &mut Vec<(SocketAddr, Vec<u8>)>) {
        while let Some((to, payload)) = self.runtime.to_send() {
            let mut datagram = Vec::with_capacity(payload.len() + OVERHEAD);
            self.keys.seal(&payload, now_ms, &mut datagram);
            out.push((to.addr, datagram));
        }
    }

    /// Marks this node as leaving (a new identity the others learn at once),
    /// so that they route around it while it hands its work over.
    pub fn start_leaving(&mut self, now_ms: u64) {
        let leaving = self.foca.identity().leaving();
        if let Err(err) = self.foca.change_identity(leaving, &mut self.runtime) {
            warn!(%err, "cannot announce the leave");
        }
        self.collect(now_ms);
    }

    /// Tells the others this node is gone; it sends nothing more after the
    /// datagrams this queues.
    pub fn leave(&mut self, now_ms: u64) {
        if let Err(err) = self.foca.leave_cluster(&mut self.runtime) {
            warn!(%err, "cannot leave the cluster cleanly");
        }
        self.left = true;
        self.collect(now_ms);
    }

    /// Whether the member list changed since the last call.
    pub fn take_changed(&mut self) -> bool {
        std::mem::take(&mut self.changed)
    }

    /// Every member this node knows, itself included, by address.
    pub fn members(&self) -> Vec<Member> {
        let me = Member {
            node: self.foca.identity().clone(),
            state: if self.left {
                MemberState::Down
            } else {
                MemberState::Alive
            },
        };
        let mut members: Vec<Member> = std::iter::once(me)
            .chain(self.foca.iter_membership_state().map(|member| Member {
                node: member.id().clone(),
                state: match member.state() {
                    State::Alive => MemberState::Alive,
                    State::Suspect => MemberState::Suspect,
                    State::Down => MemberState::Down,
                },
            }))
            .collect();
        members.sort_by_key(|member| member.node.addr);
        members
    }

    /// Moves foca's timers and notifications out of its runtime.
    fn collect(&mut self, now_ms: u64) {
        while let Some((after, timer)) = self.runtime.to_schedule() {
            let due = now_ms + after.as_millis() as u64;
            self.submitted += 1;
            self.timers.push(Reverse((due, self.submitted, timer)));
        }
        while let Some(notification) = self.runtime.to_notify() {
            match notification {
                OwnedNotification::MemberUp(node) => {
                    info!(member = %node.addr, client = %node.client, "cluster member up");
                    self.changed = true;
                }
                OwnedNotification::MemberDown(node) => {
                    info!(member = %node.addr, "cluster member down");
                    self.changed = true;
                }
                OwnedNotification::Rename(old, new) => {
                    info!(member = %new.addr, from = ?old.generation, to = ?new.generation, leaving = new.leaving, "cluster member renewed");
                    self.changed = true;
                }
                OwnedNotification::Rejoin(me) => {
                    warn!(generation = ?me.generation, "declared down by the cluster; rejoined as a new generation");
                    self.changed = true;
                }
                OwnedNotification::Idle => self.idle = true,
                OwnedNotification::Active => self.idle = false,
                OwnedNotification::Defunct => self.changed = true,
            }
        }
    }
}
