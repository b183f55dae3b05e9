//! The membership thread: a [`Node`] on a UDP socket and the system clock,
//! off the shard threads, publishing every change of the member list as an
//! immutable [`MemberView`] that anyone may read at any time.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use corebus_net::routing::{node_key, owner_node};
use tracing::{debug, warn};

use crate::envelope::GossipKeys;
use crate::identity::NodeIdentity;
use crate::node::{Member, MemberState, Node, Timing, MAX_DATAGRAM};

/// Longest the thread sleeps on its socket, so that a command (a leave)
/// waits at most this long.
const COMMAND_POLL: Duration = Duration::from_millis(20);
/// How long a leaving node keeps answering after it said goodbye, so that
/// its last datagrams are not its peers' only source.
const LEAVE_LINGER: Duration = Duration::from_millis(300);

/// The member list as of one change.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MemberView {
    /// Bumped at every change.
    pub version: u64,
    /// Every member known, this node included, by cluster address.
    pub members: Vec<Member>,
}

impl MemberView {
    /// How many members are in `state`.
    pub fn count(&self, state: MemberState) -> usize {
        self.members
            .iter()
            .filter(|member| member.state == state)
            .count()
    }

    /// The member that owns a key whose hash is `key_hash`: of the members
    /// alive or suspect and not leaving, the one with the highest rendezvous
    /// score for its node id ([`corebus_net::routing::owner_node`]).
    pub fn owner(&self, key_hash: u64) -> Option<&Member> {
        let candidates: Vec<&Member> = self
            .members
            .iter()
            .filter(|member| member.places_topics())
            .collect();
        let keys: Vec<u64> = candidates
            .iter()
            .map(|member| node_key(&member.node.addr.to_string()))
            .collect();
        owner_node(key_hash, &keys).map(|index| candidates[index])
    }
}

/// The latest [`MemberView`], and counters of the gossip, shared with readers.
#[derive(Debug, Default)]
pub struct ClusterView {
    current: RwLock<Arc<MemberView>>,
    version: AtomicU64,
    refused: AtomicU64,
}

impl ClusterView {
    /// The latest member list.
    pub fn snapshot(&self) -> Arc<MemberView> {
        self.current
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Its version: one atomic load, for readers that keep a copy.
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// Datagrams dropped because they did not open (another cluster secret,
    /// a replay) or did not decode.
    pub fn refused_datagrams(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    fn publish(&self, members: Vec<Member>) {
        let mut current = self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let version = current.version + 1;
        *current = Arc::new(MemberView { version, members });
        self.version.store(version, Ordering::Release);
    }
}

/// What the membership thread is started with.
#[derive(Debug, Clone)]
pub struct MembershipConfig {
    /// This node (its cluster address is the socket's).
    pub me: NodeIdentity,
    /// Addresses to join through.
    pub seeds: Vec<SocketAddr>,
    /// The keys that seal and open every datagram.
    pub keys: GossipKeys,
    /// Failure-detection timing.
    pub timing: Timing,
}

/// At most one line a second about refused datagrams, with the count of
/// those not logged.
#[derive(Debug, Default)]
struct LogLimit {
    last: Option<std::time::Instant>,
    suppressed: u64,
}

impl LogLimit {
    fn admit(&mut self) -> Option<u64> {
        let now = std::time::Instant::now();
        if self
            .last
            .is_some_and(|last| now.duration_since(last) < Duration::from_secs(1))
        {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

enum Command {
    StartLeaving(Sender<()>),
    Leave(Sender<()>),
}

/// The running membership thread.
#[derive(Debug)]
pub struct Membership {
    view: Arc<ClusterView>,
    commands: Sender<Command>,
    thread: Option<JoinHandle<()>>,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64)
}

impl Membership {
    /// Binds the cluster address and starts gossiping.
    pub fn start(config: MembershipConfig) -> io::Result<Membership> {
        let socket = UdpSocket::bind(config.me.addr)?;
        let view = Arc::new(ClusterView::default());
        let (commands, received) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("corebus-cluster".into())
            .spawn({
                let view = view.clone();
                move || run(socket, config, &view, &received)
            })?;
        Ok(Membership {
            view,
            commands,
            thread: Some(thread),
        })
    }

    /// The member list, kept current by the thread.
    pub fn view(&self) -> Arc<ClusterView> {
        self.view.clone()
    }

    /// Tells the cluster this node is leaving: it stays a member, alive, but
    /// the others (and this node) place no topic on it any more, so that it
    /// can hand its topics over before it [`Membership::leave`]s.
    pub fn start_leaving(&self) {
        let (done, finished) = mpsc::channel();
        if self.commands.send(Command::StartLeaving(done)).is_ok() {
            let _ = finished.recv_timeout(Duration::from_secs(2));
        }
    }

    /// Tells the cluster this node leaves, then stops the thread.
    pub fn leave(mut self) {
        let (done, finished) = mpsc::channel();
        if self.commands.send(Command::Leave(done)).is_ok() {
            let _ = finished.recv_timeout(Duration::from_secs(2));
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run(
    socket: UdpSocket,
    config: MembershipConfig,
    view: &ClusterView,
    commands: &Receiver<Command>,
) {
    // Randomness for the probe order only (nothing secret): differs per
    // process and per start.
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos() as u64);
    let seed = nanos ^ (u64::from(std::process::id()) << 32);
    let mut node = Node::new(
        config.me,
        config.timing,
        config.keys,
        &config.seeds,
        seed,
        unix_ms(),
    );
    let mut outgoing = Vec::new();
    let mut buf = vec![0u8; MAX_DATAGRAM * 2];
    let mut refusals = LogLimit::default();
    let mut leaving_until: Option<std::time::Instant> = None;
    loop {
        flush(&socket, &mut node, &mut outgoing);
        if node.take_changed() {
            view.publish(node.members());
        }
        if let Some(until) = leaving_until {
            if std::time::Instant::now() >= until {
                return;
            }
        }
        match commands.try_recv() {
            Ok(Command::StartLeaving(done)) => {
                if !node.identity().leaving {
                    node.start_leaving(unix_ms());
                }
                flush(&socket, &mut node, &mut outgoing);
                view.publish(node.members());
                let _ = done.send(());
            }
            Ok(Command::Leave(done)) => {
                let now = unix_ms();
                if !node.identity().leaving {
                    node.start_leaving(now);
                }
                node.leave(now);
                flush(&socket, &mut node, &mut outgoing);
                view.publish(node.members());
                let _ = done.send(());
                leaving_until = Some(std::time::Instant::now() + LEAVE_LINGER);
            }
            Err(TryRecvError::Disconnected) if leaving_until.is_none() => {
                // The broker is gone without a leave (a test dropping it):
                // stop quietly; the others will notice.
                return;
            }
            Err(_) => {}
        }
        let now = unix_ms();
        let wait = node.next_deadline().saturating_sub(now);
        let wait = Duration::from_millis(wait.max(1)).min(COMMAND_POLL);
        if let Err(err) = socket.set_read_timeout(Some(wait)) {
            warn!(%err, "cluster socket: cannot set its timeout");
        }
        match socket.recv_from(&mut buf) {
            Ok((len, from)) => {
                if let Err(err) = node.handle_datagram(&buf[..len], unix_ms()) {
                    view.refused.fetch_add(1, Ordering::Relaxed);
                    if let Some(suppressed) = refusals.admit() {
                        warn!(%from, %err, suppressed, "cluster datagram refused");
                    }
                }
            }
            Err(err)
                if matches!(
                    err.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) => {}
            Err(err) => {
                // ECONNREFUSED from an earlier send to a port nobody holds:
                // that member's probes fail, which is how it is detected.
                debug!(%err, "cluster socket");
            }
        }
        node.handle_due(unix_ms());
    }
}

fn flush(socket: &UdpSocket, node: &mut Node, outgoing: &mut Vec<(SocketAddr, Vec<u8>)>) {
    node.take_outgoing(unix_ms(), outgoing);
    for (to, datagram) in outgoing.drain(..) {
        if let Err(err) = socket.send_to(&datagram, to) {
            debug!(%to, %err, "cluster datagram not sent");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Generation;
    use corebus_net::key_hash;

    fn member(n: u8, state: MemberState, leaving: bool) -> Member {
        Member {
            node: NodeIdentity {
                addr: SocketAddr::from(([10, 0, 0, n], 7500)),
                generation: Generation {
                    started_ms: 1,
                    bump: 0,
                },
                client: SocketAddr::from(([10, 0, 0, n], 7400)),
                leaving,
            },
            state,
        }
    }

    #[test]
    fn owners_are_the_documented_ones_and_skip_down_and_leaving_members() {
        let view = |members| MemberView {
            version: 1,
            members,
        };
        let all = view(vec![
            member(1, MemberState::Alive, false),
            member(2, MemberState::Suspect, false),
            member(3, MemberState::Alive, false),
        ]);
        // docs/cluster.md's table: app/news is owned by 10.0.0.2:7500.
        let news = key_hash(b"app", b"news");
        let owner = all.owner(news).expect("an owner");
        assert_eq!(owner.node.addr, SocketAddr::from(([10, 0, 0, 2], 7500)));
        for gone in [
            member(2, MemberState::Down, false),
            member(2, MemberState::Alive, true),
        ] {
            let without = view(vec![
                member(1, MemberState::Alive, false),
                gone,
                member(3, MemberState::Alive, false),
            ]);
            let owner = without.owner(news).expect("an owner");
            assert_ne!(owner.node.addr.ip(), std::net::IpAddr::from([10, 0, 0, 2]));
        }
        assert!(view(vec![member(1, MemberState::Down, false)])
            .owner(news)
            .is_none());
    }
}
