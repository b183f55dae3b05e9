//! The cluster's control plane: run-time state that every node must agree
//! on (today the run-time webhooks), kept in a replicated log by openraft.
//!
//! It runs off the shards, on one thread (`corebus-control`, a
//! single-threaded tokio runtime) of a cluster member only. A webhook
//! command a shard receives is handed to it and answered later: it is
//! proposed to the leader (forwarded when this node is not the leader),
//! answered once a majority of the voters holds it, applied on every node
//! in the same order, and then once every member that is up has applied it
//! (or, after [`APPLY_WAIT`], with the list of those that lag).
//!
//! Voters follow the gossip membership: the leader adds each member it
//! does not know as a learner and promotes learners while there are fewer
//! than [`MAX_VOTERS`] voters. Failure detection never removes a voter; a
//! planned leave keeps its seat too. A node started without seeds, with an
//! empty log, founds the log and imports its own `webhooks.json` into it.
//!
//! See `docs/cluster.md`, "Control plane".

mod rpc;
pub mod state;
mod store;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use corebus_cluster::{ClusterView, LinkKey, MemberState};
use corebus_net::TopicKey;
use corebus_shards::auth::unix_now_ms;
use corebus_shards::WebhookCommandError;
use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, ChangeMembers, Config, ServerState, SnapshotPolicy};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use tracing::{info, warn};

use crate::webhook::hook;
use crate::webhook::registry::Registry;
use rpc::{Network, PeerClient, Peers};
use state::{Answer, Entry, Op};
use store::{LogStore, StateMachine};

openraft::declare_raft_types!(
    /// The control plane's types for openraft.
    pub TypeConfig:
        D = Entry,
        R = Answer,
        SnapshotData = std::io::Cursor<Vec<u8>>,
);

type Raft = openraft::Raft<TypeConfig>;

/// At most this many voters; further members are learners.
pub const MAX_VOTERS: usize = 5;
/// How long an answer waits for the members that are up to apply it.
pub const APPLY_WAIT: Duration = Duration::from_secs(5);
/// How often the leader compares the voters with the gossip members.
const MEMBERSHIP_EVERY: Duration = Duration::from_millis(300);
/// How long a node with seeds and an empty log watches the members before
/// it may found the log.
const FOUNDING_SETTLE: Duration = Duration::from_secs(2);

/// Timing of the control plane.
#[derive(Debug, Clone, Copy)]
pub struct ControlTiming {
    /// The leader's heartbeat.
    pub heartbeat: Duration,
    /// A follower that hears no leader for a random time in
    /// `[election, 2 * election)` starts an election.
    pub election: Duration,
}

impl Default for ControlTiming {
    /// Slow enough for a loaded 2-core machine, where a busy broker can
    /// keep this thread waiting for tens of milliseconds.
    fn default() -> ControlTiming {
        ControlTiming {
            heartbeat: Duration::from_millis(250),
            election: Duration::from_millis(1500),
        }
    }
}

/// What the control plane starts from.
pub struct ControlConfig {
    /// This node's cluster address: gossip on UDP, the control plane on TCP.
    pub addr: SocketAddr,
    /// Where the log lives (`data_dir/control`).
    pub dir: std::path::PathBuf,
    /// The gossip members.
    pub view: Arc<ClusterView>,
    /// Signs and checks the nodes' credentials.
    pub key: LinkKey,
    /// The client listener's TLS, which the control plane speaks too.
    pub server_tls: Option<Arc<rustls::ServerConfig>>,
    /// Verifies the other nodes (with `server_tls`).
    pub client_tls: Option<Arc<rustls::ClientConfig>>,
    /// With an empty log: found it at once (a node started with no seed
    /// but itself). Otherwise a node with an empty log founds it only when
    /// no member it sees has one and its address is the lowest of those up.
    pub bootstrap: bool,
    /// What the founding node imports (its own `webhooks.json`).
    pub import: Vec<Value>,
    /// Heartbeat and election timeouts.
    pub timing: ControlTiming,
    /// The webhooks that applied state goes to.
    pub webhooks: Arc<crate::webhook::Webhooks>,
    /// This node's security-relevant configuration, fingerprinted with the
    /// cluster secret ([`config_fingerprint`]); `None` without a cluster
    /// secret (nothing to compare with).
    pub fingerprint: Option<String>,
}

/// The raft node id of the node at cluster address `addr`: 64 bits of
/// its SHA-256, the same on every node.
pub fn node_id(addr: SocketAddr) -> u64 {
    let digest = Sha256::digest(addr.to_string().as_bytes());
    u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"))
}

/// The control plane of one node.
pub struct Plane {
    id: u64,
    addr: SocketAddr,
    raft: Raft,
    machine: StateMachine,
    peers: Arc<Peers>,
    view: Arc<ClusterView>,
    registry: Arc<Registry>,
    /// This node's webhooks: what it still holds of a topic that moved.
    webhooks: Arc<crate::webhook::Webhooks>,
    timing: ControlTiming,
    /// Replaced when a reload changes the configuration.
    fingerprint: std::sync::Mutex<Option<String>>,
    /// What the other nodes said last (refreshed every second).
    reports: std::sync::Mutex<BTreeMap<SocketAddr, Report>>,
    /// The differing configurations already warned about.
    warned: std::sync::Mutex<BTreeSet<(SocketAddr, String)>>,
    /// Kept-alive connections to the other nodes, for this node's own
    /// questions (openraft keeps its own).
    pool: std::sync::Mutex<BTreeMap<SocketAddr, Vec<PeerClient>>>,
}

/// Idle connections kept per node.
const POOLED_PER_NODE: usize = 2;

/// What a node last said about itself, or why it did not.
#[derive(Debug, Clone)]
struct Report {
    status: Result<Status, String>,
}

/// How often every node asks the others for their status.
const REPORTS_EVERY: Duration = Duration::from_secs(1);

/// Why this node did not commit an entry itself.
#[derive(Debug)]
enum Refusal {
    /// It does not lead; the leader, if known.
    NotLeader(Option<BasicNode>),
    /// It leads without a majority, or the entry was not committed in time.
    NoQuorum(String),
    /// openraft failed otherwise.
    Failed(String),
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::NotLeader(Some(leader)) => write!(f, "not the leader ({} is)", leader.addr),
            Refusal::NotLeader(None) => f.write_str("not the leader, and none is known"),
            Refusal::NoQuorum(why) | Refusal::Failed(why) => f.write_str(why),
        }
    }
}

/// The `unavailable` answer: the control plane cannot agree now.
fn no_quorum(why: impl std::fmt::Display) -> WebhookCommandError {
    WebhookCommandError::Unavailable(format!("no quorum: {why}"))
}

/// Where a forwarded write went.
#[derive(Debug, Serialize, Deserialize)]
struct WriteReply {
    /// The answer and the entry's index, once committed and applied on the
    /// leader.
    done: Option<(Answer, u64)>,
    /// Why not.
    error: Option<String>,
}

/// A node's state as `/control/status` tells it.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Status {
    id: u64,
    initialized: bool,
    applied: u64,
    leader: Option<u64>,
    state: String,
    /// Its configuration's fingerprint, when it has a cluster secret.
    config: Option<String>,
}

/// The handle the rest of the broker keeps.
#[derive(Clone)]
pub struct ControlHandle {
    plane: Arc<Plane>,
    runtime: tokio::runtime::Handle,
}

impl std::fmt::Debug for ControlHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlHandle")
            .field("node", &self.plane.addr)
            .finish()
    }
}

impl ControlHandle {
    /// Carries out a webhook command on the control thread; `done` gets
    /// the answer.
    pub fn command(&self, text: String, done: flume::Sender<Result<String, WebhookCommandError>>) {
        let plane = self.plane.clone();
        self.runtime.spawn(async move {
            let _ = done.send(plane.command(&text).await);
        });
    }

    /// Replaces this node's configuration fingerprint (a reload changed the
    /// configuration), when it has one.
    pub fn set_fingerprint(&self, fingerprint: String) {
        let mut mine = self
            .plane
            .fingerprint
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if mine.is_some() {
            *mine = Some(fingerprint);
        }
    }

    /// Removes `node` from the control plane (its seat, if it votes), on
    /// the control thread; `done` gets the answer.
    pub fn remove(
        &self,
        node: SocketAddr,
        done: flume::Sender<Result<String, WebhookCommandError>>,
    ) {
        let plane = self.plane.clone();
        self.runtime.spawn(async move {
            let _ = done.send(plane.remove(node).await);
        });
    }

    /// The agreed run-time webhooks, secrets included, in the format of
    /// `webhooks.json`: what `corebus cluster snapshot` saves, and what a
    /// founding node imports to rebuild a cluster from it.
    pub fn snapshot(&self) -> Value {
        let state = self.plane.machine.state();
        json!({
            "version": crate::webhook::store::FORMAT_VERSION,
            "applied": self.plane.machine.applied().load(Ordering::Acquire),
            "webhooks": state.webhooks.values().collect::<Vec<_>>(),
        })
    }

    /// How many webhook messages of `topic` the member whose client
    /// address is `client` still holds (a topic that moved from it); `None`
    /// when it is gone or does not answer. Runs on the caller's runtime.
    pub async fn webhooks_pending_at(&self, client: SocketAddr, topic: &TopicKey) -> Option<u64> {
        let node = self
            .plane
            .view
            .snapshot()
            .members
            .iter()
            .find(|member| member.node.client == client && member.state != MemberState::Down)
            .map(|member| member.node.addr)?;
        let question = json!({ "ns": topic.namespace(), "topic": topic.topic() });
        self.plane
            .ask::<_, u64>(
                node,
                "/control/webhooks_pending",
                &question,
                Duration::from_secs(1),
            )
            .await
            .ok()
    }

    /// Disables a webhook for the whole cluster (its endpoint answered 410).
    pub fn disable(&self, id: String, at_ms: u64, detail: String) {
        let plane = self.plane.clone();
        self.runtime.spawn(async move {
            let op = Op::WebhookDisable { id, at_ms, detail };
            if let Err(err) = plane.write(Entry::of(&op)).await {
                warn!(%err, "could not record a webhook's 410 in the control plane");
            }
        });
    }

    /// The control plane's view for `cluster status`: its leader and
    /// voters, and what each node said last (its applied index, and
    /// whether its configuration matches this node's).
    pub fn status(&self) -> Value {
        let plane = &self.plane;
        let metrics = plane.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        let name = |id: &u64| {
            membership
                .get_node(id)
                .map_or_else(|| id.to_string(), |node| node.addr.clone())
        };
        let mut nodes = vec![json!({
            "node": plane.addr.to_string(),
            "applied": plane.machine.applied().load(Ordering::Acquire),
            "config": if plane.fingerprint().is_some() { "same" } else { "unknown" },
        })];
        for (addr, report) in plane
            .reports
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            nodes.push(match &report.status {
                Ok(status) => json!({
                    "node": addr.to_string(),
                    "applied": status.applied,
                    "config": plane.compare(status.config.as_deref()),
                }),
                Err(err) => json!({
                    "node": addr.to_string(),
                    "applied": null,
                    "config": "unknown",
                    "error": err,
                }),
            });
        }
        json!({
            "leader": metrics.current_leader.as_ref().map(name),
            "term": metrics.current_term,
            "voters": voters.iter().map(name).collect::<Vec<_>>(),
            "learners": membership.learner_ids().map(|id| name(&id)).collect::<Vec<_>>(),
            "config_comparison": if plane.fingerprint().is_some() {
                "available".to_string()
            } else {
                "unavailable: the cluster has no secret (cluster_secret_file)".to_string()
            },
            "nodes": nodes,
        })
    }

    /// The nodes up whose configuration differs from this node's, once
    /// each has answered (or `wait` has passed).
    pub fn config_mismatches(&self, wait: Duration) -> Vec<SocketAddr> {
        let plane = self.plane.clone();
        self.runtime.block_on(async move {
            let deadline = Instant::now() + wait;
            loop {
                plane.refresh_reports().await;
                let others = plane.others_up();
                let reports = plane
                    .reports
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .clone();
                let answered = others
                    .iter()
                    .all(|addr| reports.get(addr).is_some_and(|r| r.status.is_ok()));
                if answered || Instant::now() >= deadline {
                    return reports
                        .iter()
                        .filter_map(|(addr, report)| {
                            let status = report.status.as_ref().ok()?;
                            (plane.compare(status.config.as_deref()) == "differs").then_some(*addr)
                        })
                        .collect();
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    }
}

impl crate::webhook::Agreement for ControlHandle {
    fn command(&self, command: String, done: flume::Sender<Result<String, WebhookCommandError>>) {
        ControlHandle::command(self, command, done);
    }

    fn disable(&self, id: String, at_ms: u64, detail: String) {
        ControlHandle::disable(self, id, at_ms, detail);
    }

    fn pending_at(
        &self,
        node: SocketAddr,
        topic: TopicKey,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Option<u64>> + Send>> {
        let control = self.clone();
        Box::pin(async move { control.webhooks_pending_at(node, &topic).await })
    }
}

/// Starts the control plane's thread; fails when its address cannot be
/// bound or its log cannot be read.
pub fn start(config: ControlConfig) -> anyhow::Result<ControlHandle> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("corebus-control".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(err) => {
                    let _ = ready_tx.send(Err(anyhow::anyhow!(err)));
                    return;
                }
            };
            runtime.block_on(async move {
                match run(config).await {
                    Ok((plane, listener, tls)) => {
                        let handle = ControlHandle {
                            plane: plane.clone(),
                            runtime: tokio::runtime::Handle::current(),
                        };
                        let _ = ready_tx.send(Ok(handle));
                        tokio::spawn(follow_members(plane.clone()));
                        tokio::spawn({
                            let plane = plane.clone();
                            async move {
                                loop {
                                    plane.refresh_reports().await;
                                    tokio::time::sleep(REPORTS_EVERY).await;
                                }
                            }
                        });
                        rpc::serve(listener, tls, plane).await;
                    }
                    Err(err) => {
                        let _ = ready_tx.send(Err(err));
                    }
                }
            });
        })?;
    ready_rx
        .recv()
        .map_err(|_| anyhow::anyhow!("the control-plane thread stopped while starting"))?
}

async fn run(
    config: ControlConfig,
) -> anyhow::Result<(
    Arc<Plane>,
    tokio::net::TcpListener,
    Option<Arc<rustls::ServerConfig>>,
)> {
    use anyhow::Context as _;
    let ControlConfig {
        addr,
        dir,
        view,
        key,
        server_tls,
        client_tls,
        bootstrap,
        import,
        timing,
        webhooks,
        fingerprint,
    } = config;
    let registry = webhooks.registry().clone();
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| {
        format!("cannot serve the control plane on TCP {addr} (cluster_listen)")
    })?;
    let log = LogStore::open(&dir)
        .with_context(|| format!("cannot read the control plane's log in {}", dir.display()))?;
    // Only a node that never took part may found a log.
    let founding = log.is_empty().then_some(bootstrap);
    let on_apply: store::OnApply = {
        let webhooks = webhooks.clone();
        Arc::new(move |state: &state::ControlState| {
            webhooks.registry().set_agreed(&state.webhooks);
            webhooks.notify_changed();
        })
    };
    let machine = StateMachine::open(&dir, on_apply).with_context(|| {
        format!(
            "cannot read the control plane's snapshot in {} (under data_dir)",
            dir.display()
        )
    })?;
    let millis = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    let raft_config = Config {
        cluster_name: "corebus".into(),
        heartbeat_interval: millis(timing.heartbeat),
        election_timeout_min: millis(timing.election),
        election_timeout_max: millis(timing.election) * 2,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(store::SNAPSHOT_EVERY),
        max_in_snapshot_log_to_keep: 0,
        ..Default::default()
    }
    .validate()
    .context("control-plane timing")?;
    let peers = Arc::new(Peers {
        key,
        me: addr,
        tls: client_tls,
    });
    let id = node_id(addr);
    let raft = Raft::new(
        id,
        Arc::new(raft_config),
        Network {
            peers: peers.clone(),
        },
        log,
        machine.clone(),
    )
    .await
    .context("starting the control plane")?;
    let plane = Arc::new(Plane {
        id,
        addr,
        raft,
        machine,
        peers,
        view,
        registry,
        webhooks,
        timing,
        fingerprint: std::sync::Mutex::new(fingerprint),
        reports: std::sync::Mutex::new(BTreeMap::new()),
        warned: std::sync::Mutex::new(BTreeSet::new()),
        pool: std::sync::Mutex::new(BTreeMap::new()),
    });
    tokio::spawn(found_or_join(plane.clone(), founding, import));
    Ok((plane, listener, server_tls))
}

impl Plane {
    async fn import(&self, hooks: Vec<Value>) {
        if hooks.is_empty() {
            return;
        }
        let count = hooks.len();
        // The founder is the only voter: it leads as soon as it has voted.
        let deadline = Instant::now() + APPLY_WAIT;
        while Instant::now() < deadline {
            match self
                .write(Entry::of(&Op::Import {
                    hooks: hooks.clone(),
                }))
                .await
            {
                Ok((Answer(Ok(_)), _)) => {
                    info!(
                        count,
                        "imported this node's webhooks.json into the control plane"
                    );
                    return;
                }
                Ok((Answer(Err(err)), _)) => {
                    warn!(%err, "importing webhooks.json");
                    return;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        warn!("could not import webhooks.json: no control-plane leader");
    }

    fn status(&self) -> Status {
        let metrics = self.raft.metrics().borrow().clone();
        Status {
            id: self.id,
            initialized: metrics
                .membership_config
                .membership()
                .voter_ids()
                .next()
                .is_some(),
            applied: self.machine.applied().load(Ordering::Acquire),
            leader: metrics.current_leader,
            state: format!("{:?}", metrics.state),
            config: self.fingerprint(),
        }
    }

    /// A connection to `addr`: a kept-alive one, or a new one.
    fn client(&self, addr: SocketAddr) -> PeerClient {
        let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        pool.get_mut(&addr)
            .and_then(Vec::pop)
            .unwrap_or_else(|| PeerClient::new(addr, self.peers.clone()))
    }

    /// Keeps `client` for the next question to its node.
    fn give_back(&self, client: PeerClient) {
        let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        let idle = pool.entry(client.addr()).or_default();
        if idle.len() < POOLED_PER_NODE {
            idle.push(client);
        }
    }

    /// A JSON question to the node at `addr`, on a kept-alive connection.
    async fn ask<Q: Serialize, A: for<'de> Deserialize<'de>>(
        &self,
        addr: SocketAddr,
        path: &str,
        question: &Q,
        timeout: Duration,
    ) -> Result<A, rpc::CallError> {
        let mut client = self.client(addr);
        let answer = client.call_json(path, question, timeout).await;
        self.give_back(client);
        answer
    }

    /// Whether gossip counts the node at `addr` as alive (not suspect, not
    /// down).
    fn reachable(&self, addr: SocketAddr) -> bool {
        self.view
            .snapshot()
            .members
            .iter()
            .any(|member| member.node.addr == addr && member.state == MemberState::Alive)
    }

    /// This node's configuration fingerprint, if it has a cluster secret.
    fn fingerprint(&self) -> Option<String> {
        self.fingerprint
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// `same`, `differs` or `unknown` (no secret here or there).
    fn compare(&self, theirs: Option<&str>) -> &'static str {
        match (self.fingerprint().as_deref(), theirs) {
            (Some(mine), Some(theirs)) if mine == theirs => "same",
            (Some(_), Some(_)) => "differs",
            _ => "unknown",
        }
    }

    /// Asks every other member up for its status.
    async fn refresh_reports(&self) {
        let others = self.others_up();
        let mut fresh = BTreeMap::new();
        for addr in others {
            let status = self
                .ask::<_, Status>(addr, "/control/status", &(), Duration::from_secs(1))
                .await
                .map_err(|err| err.to_string());
            if let Ok(status) = &status {
                if self.compare(status.config.as_deref()) == "differs" {
                    let seen = (addr, status.config.clone().unwrap_or_default());
                    let new = self
                        .warned
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(seen);
                    if new {
                        warn!(node = %addr, "this node's security-relevant configuration (API keys, token secrets, webhook allow-list, limits, configured webhooks) differs from that node's (see `corebus cluster status`)");
                    }
                }
            }
            fresh.insert(addr, Report { status });
        }
        *self.reports.lock().unwrap_or_else(|e| e.into_inner()) = fresh;
    }

    /// Whether this node, as leader, has lost touch with a majority.
    fn leader_without_quorum(&self) -> bool {
        let metrics = self.raft.metrics().borrow().clone();
        metrics.state == ServerState::Leader
            && metrics
                .millis_since_quorum_ack
                .is_some_and(|ms| ms > 2 * self.timing.election.as_millis() as u64)
    }

    /// Proposes `entry` and returns its answer and index once it is
    /// committed and applied on the leader (forwarded to it from a
    /// follower).
    async fn write(&self, entry: Entry) -> Result<(Answer, u64), WebhookCommandError> {
        match self.commit_here(entry.clone()).await {
            Ok(done) => Ok(done),
            Err(Refusal::NotLeader(Some(leader))) => {
                let reply: WriteReply = self.ask_leader(&leader, "/control/write", &entry).await?;
                match (reply.done, reply.error) {
                    (Some(done), _) => Ok(done),
                    (None, error) => Err(no_quorum(error.unwrap_or_default())),
                }
            }
            Err(Refusal::NotLeader(None)) => Err(no_quorum("no control-plane leader is known")),
            Err(Refusal::NoQuorum(why)) => Err(no_quorum(why)),
            Err(Refusal::Failed(err)) => Err(WebhookCommandError::Internal(format!(
                "control plane: {err}"
            ))),
        }
    }

    /// Commits `entry` if this node leads; says why not otherwise.
    async fn commit_here(&self, entry: Entry) -> Result<(Answer, u64), Refusal> {
        if self.leader_without_quorum() {
            return Err(Refusal::NoQuorum(
                "this node leads the control plane but hears no majority of its voters".into(),
            ));
        }
        let wait = self.commit_wait();
        match tokio::time::timeout(wait, self.raft.client_write(entry)).await {
            Ok(Ok(response)) => Ok((response.data, response.log_id.index)),
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward)))) => {
                Err(Refusal::NotLeader(forward.leader_node))
            }
            Ok(Err(err)) => Err(Refusal::Failed(err.to_string())),
            Err(_) => Err(Refusal::NoQuorum(format!(
                "the command was not committed within {wait:?}"
            ))),
        }
    }

    /// How long a change may take to be committed.
    fn commit_wait(&self) -> Duration {
        self.timing.election * 3
    }

    /// Asks the leader `leader` to carry out what this node cannot: fails
    /// at once when gossip already knows it cannot be reached.
    async fn ask_leader<Q: Serialize, A: for<'de> Deserialize<'de>>(
        &self,
        leader: &BasicNode,
        path: &str,
        question: &Q,
    ) -> Result<A, WebhookCommandError> {
        let addr: SocketAddr = leader.addr.parse().map_err(|_| {
            WebhookCommandError::Internal(format!("leader address {:?}", leader.addr))
        })?;
        if !self.reachable(addr) {
            return Err(no_quorum(format!(
                "the control-plane leader {addr} cannot be reached from this node"
            )));
        }
        self.ask(addr, path, question, self.commit_wait())
            .await
            .map_err(|err| no_quorum(format!("the leader did not answer: {err}")))
    }

    /// Removes `node` from the voters and learners: done by the leader
    /// (forwarded to it from another node). A node gossip sees up is
    /// refused: the leader would add it back.
    async fn remove(&self, node: SocketAddr) -> Result<String, WebhookCommandError> {
        if self.view.snapshot().members.iter().any(|member| {
            member.node.addr == node && member.state != MemberState::Down && !member.node.leaving
        }) {
            return Err(WebhookCommandError::Invalid(format!(
                "node {node} is up: stop it for good first (a member that is up is added \
                 back to the control plane)"
            )));
        }
        let metrics = self.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership().clone();
        let id = node_id(node);
        if membership.get_node(&id).is_none() {
            return Err(WebhookCommandError::Invalid(format!(
                "node {node} is not in the control plane"
            )));
        }
        if metrics.state != ServerState::Leader {
            let leader = metrics
                .current_leader
                .and_then(|leader| membership.get_node(&leader).cloned())
                .ok_or_else(|| no_quorum("no control-plane leader is known"))?;
            let reply: Result<String, String> =
                self.ask_leader(&leader, "/control/remove", &node).await?;
            return reply.map_err(WebhookCommandError::Invalid);
        }
        let removing = BTreeSet::from([id]);
        let change = if membership.voter_ids().any(|voter| voter == id) {
            ChangeMembers::RemoveVoters(removing)
        } else {
            ChangeMembers::RemoveNodes(removing)
        };
        let changed = tokio::time::timeout(
            self.commit_wait(),
            self.raft.change_membership(change, false),
        )
        .await;
        match changed {
            Ok(Ok(_)) => {
                info!(%node, "removed from the control plane");
                Ok(json!({ "removed": node.to_string() }).to_string())
            }
            Ok(Err(err)) => Err(WebhookCommandError::Invalid(format!(
                "cannot remove {node}: {err}"
            ))),
            Err(_) => Err(no_quorum("the change was not committed in time")),
        }
    }

    /// A write forwarded by another node: done here if this node leads.
    async fn write_here(&self, entry: Entry) -> WriteReply {
        match self.commit_here(entry).await {
            Ok(done) => WriteReply {
                done: Some(done),
                error: None,
            },
            Err(refusal) => WriteReply {
                done: None,
                error: Some(refusal.to_string()),
            },
        }
    }

    /// The members that are up (by gossip), whether the control plane has
    /// added them yet or not: until it has, they lag.
    fn members_up(&self) -> Vec<SocketAddr> {
        self.view
            .snapshot()
            .members
            .iter()
            .filter(|member| member.state != MemberState::Down)
            .map(|member| member.node.addr)
            .collect()
    }

    /// The members that are up, this node left out.
    fn others_up(&self) -> Vec<SocketAddr> {
        let mut others = self.members_up();
        others.retain(|addr| *addr != self.addr);
        others
    }

    /// Waits until every member that is up has applied `index`; returns
    /// those that had not within [`APPLY_WAIT`].
    async fn wait_applied(&self, index: u64) -> Vec<SocketAddr> {
        let deadline = Instant::now() + APPLY_WAIT;
        let mut waiting: Vec<SocketAddr> = self.members_up();
        // Followers apply an entry a round trip or two after the leader
        // does: ask again soon, then less often.
        let mut pause = Duration::from_millis(1);
        loop {
            let mut still = Vec::new();
            for addr in waiting {
                let applied = if addr == self.addr {
                    self.machine.applied().load(Ordering::Acquire)
                } else {
                    let left = deadline.saturating_duration_since(Instant::now());
                    match self
                        .ask::<_, Status>(addr, "/control/status", &(), left)
                        .await
                    {
                        Ok(status) => status.applied,
                        Err(_) => 0,
                    }
                };
                if applied < index {
                    still.push(addr);
                }
            }
            if still.is_empty() || Instant::now() >= deadline {
                return still;
            }
            waiting = still;
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(25));
        }
    }

    /// Carries out one webhook command (see `docs/webhooks.md`).
    async fn command(&self, text: &str) -> Result<String, WebhookCommandError> {
        let invalid = WebhookCommandError::Invalid;
        let command: Map<String, Value> = match serde_json::from_str(text) {
            Ok(Value::Object(object)) => object,
            Ok(_) => return Err(invalid("the command must be a JSON object".into())),
            Err(err) => return Err(invalid(format!("the command is not JSON: {err}"))),
        };
        let op_name = command.get("op").and_then(Value::as_str).unwrap_or("");
        let configured = command
            .get("id")
            .and_then(Value::as_str)
            .is_some_and(|id| self.registry.is_configured(id));
        if op_name == "list" {
            return self.list(text).await;
        }
        // A configured webhook is this node's own: enabling it is too.
        if op_name.is_empty() || (op_name == "enable" && configured) {
            return self.registry.command(text);
        }
        if self.peers.tls.is_none() {
            return Err(WebhookCommandError::Refused(
                "run-time webhook commands are refused in a cluster whose peer links run \
                 without TLS: the secrets would cross the network in the clear; set tls_cert, \
                 tls_key and cluster_tls_ca_file on every node (see docs/cluster.md)"
                    .into(),
            ));
        }
        let before = self.registry.snapshot();
        let op = prepare(&self.registry, command)?;
        let (answer, index) = self.write(Entry::of(&op)).await?;
        let value = answer.0.map_err(invalid)?;
        let lagging = self.wait_applied(index).await;
        let hook_now = |id: &str| {
            self.registry
                .snapshot()
                .iter()
                .find(|hook| hook.id == id)
                .cloned()
        };
        let mut result = match &op {
            Op::WebhookAdd { hook, .. } => {
                let id = value["id"].as_str().unwrap_or_default();
                match hook_now(id) {
                    Some(hook) => json!({ "webhook": hook.to_json(true) }),
                    // This node lags: answer from what was agreed.
                    None => json!({ "webhook": hook::from_stored(hook)
                        .map(|hook| hook.to_json(true))
                        .unwrap_or(Value::Null) }),
                }
            }
            Op::WebhookRemove { id, .. } => {
                let removed = before.iter().find(|hook| &hook.id == id);
                json!({ "removed": removed.map_or(json!({ "id": id }), |hook| hook.to_json(false)) })
            }
            Op::WebhookRotate { id, .. } => {
                json!({ "webhook": hook_now(id).map(|hook| hook.to_json(true)) })
            }
            Op::WebhookEnable { id } => {
                json!({ "webhook": hook_now(id).map(|hook| hook.to_json(false)) })
            }
            Op::WebhookDisable { .. } | Op::Import { .. } => value,
        };
        if !lagging.is_empty() {
            result["lagging"] = json!(lagging.iter().map(|a| a.to_string()).collect::<Vec<_>>());
        }
        Ok(result.to_string())
    }
}

impl Plane {
    /// `list`: the agreed webhooks (the same on every node), each with the
    /// delivery counters of every member that answered within a second
    /// added up (a topic's owner delivers it), and the members that did not
    /// answer.
    async fn list(&self, text: &str) -> Result<String, WebhookCommandError> {
        let local = self.registry.command(text)?;
        let mut merged: Value = serde_json::from_str(&local)
            .map_err(|err| WebhookCommandError::Internal(err.to_string()))?;
        let others = self.others_up();
        let asks: Vec<_> = others
            .iter()
            .map(|addr| {
                let mut client = self.client(*addr);
                let text = text.to_string();
                tokio::spawn(async move {
                    let path = "/control/webhooks";
                    let answer = client
                        .call_json::<_, Value>(path, &text, Duration::from_secs(1))
                        .await;
                    (client, answer)
                })
            })
            .collect();
        let mut unanswered = Vec::new();
        for (addr, ask) in others.iter().zip(asks) {
            match ask.await {
                Ok((client, answer)) => {
                    self.give_back(client);
                    match answer {
                        Ok(theirs) => add_deliveries(&mut merged, &theirs),
                        Err(_) => unanswered.push(addr.to_string()),
                    }
                }
                Err(_) => unanswered.push(addr.to_string()),
            }
        }
        if !unanswered.is_empty() {
            merged["unanswered"] = json!(unanswered);
        }
        Ok(merged.to_string())
    }

    /// What this node still holds of a topic's webhook messages, for the
    /// node the topic moved to.
    fn pending_of(&self, question: &Value) -> Result<u64, String> {
        let text = |key: &str| {
            question[key]
                .as_str()
                .ok_or_else(|| format!("`{key}` is missing"))
        };
        let topic = TopicKey::new(text("ns")?.as_bytes(), text("topic")?.as_bytes())
            .map_err(|err| err.to_string())?;
        Ok(self.webhooks.pending_of(&topic))
    }

    /// This node's own `list`, for another node's.
    async fn local_list(&self, text: &str) -> Result<Value, String> {
        let list = self.registry.command(text).map_err(|err| err.to_string())?;
        serde_json::from_str(&list).map_err(|err| err.to_string())
    }
}

/// Adds the delivery counters of `theirs` (another node's `list`) to those
/// of the same webhooks in `merged`; the latest drop wins.
fn add_deliveries(merged: &mut Value, theirs: &Value) {
    let Some(hooks) = merged["webhooks"].as_array_mut() else {
        return;
    };
    let Some(their_hooks) = theirs["webhooks"].as_array() else {
        return;
    };
    for hook in hooks {
        let id = hook["id"].clone();
        let Some(their) = their_hooks.iter().find(|other| other["id"] == id) else {
            continue;
        };
        let (ours, their) = (&mut hook["delivery"], &their["delivery"]);
        for counter in ["delivered", "requests", "retries", "queued"] {
            let sum = ours[counter].as_u64().unwrap_or(0) + their[counter].as_u64().unwrap_or(0);
            ours[counter] = json!(sum);
        }
        if let Some(dropped) = their["dropped"].as_object() {
            for (reason, count) in dropped {
                let sum =
                    ours["dropped"][reason].as_u64().unwrap_or(0) + count.as_u64().unwrap_or(0);
                ours["dropped"][reason] = json!(sum);
            }
        }
        let at = |drop: &Value| {
            drop["at_ms"]
                .as_str()
                .and_then(|at| at.parse::<u64>().ok())
                .unwrap_or(0)
        };
        if !their["last_drop"].is_null() && at(&their["last_drop"]) > at(&ours["last_drop"]) {
            ours["last_drop"] = their["last_drop"].clone();
        }
    }
}

/// Turns a command into the entry that carries it out: what it adds is
/// checked here, and every random or timed value is chosen here.
fn prepare(registry: &Registry, command: Map<String, Value>) -> Result<Op, WebhookCommandError> {
    let invalid = WebhookCommandError::Invalid;
    let request_id = match command.get("request_id") {
        None => {
            hook::generate_id().map_err(|err| WebhookCommandError::Internal(err.to_string()))?
        }
        Some(Value::String(id)) => {
            hook::check_id(id).map_err(|_| {
                invalid("\"request_id\" must be 1 to 64 letters, digits, '-', '_' or '.'".into())
            })?;
            id.clone()
        }
        Some(_) => return Err(invalid("\"request_id\" must be a string".into())),
    };
    let mut command = command;
    command.remove("request_id");
    let op = command
        .get("op")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    match op.as_str() {
        "add" => {
            let hook = registry.prepare_add(&command)?;
            Ok(Op::WebhookAdd {
                request_id,
                hook: hook.to_stored(),
            })
        }
        "remove" => {
            let id = registry.prepare_runtime(&command, "remove")?;
            Ok(Op::WebhookRemove { request_id, id })
        }
        "rotate" => {
            let (id, secret) = registry.prepare_rotate(&command)?;
            Ok(Op::WebhookRotate {
                request_id,
                id,
                secret,
                at_ms: unix_now_ms(),
                grace_ms: registry.policy().rotation_grace_ms(),
            })
        }
        "enable" => {
            let id = registry.prepare_enable(&command)?;
            Ok(Op::WebhookEnable { id })
        }
        other => Err(invalid(format!(
            "unknown op {other:?}: use add, list, remove, rotate or enable"
        ))),
    }
}

/// The settings that must be the same on every node for the cluster to
/// behave as one: who may connect and what they may do, and the limits a
/// client meets.
const SHARED_SETTINGS: &[&str] = &[
    "insecure_no_auth",
    "token_max_lifetime",
    "max_connections",
    "max_connections_per_shard",
    "max_handshaking",
    "max_handshaking_per_source",
    "max_in_flight",
    "max_frame",
    "max_hello_frame",
    "max_subscriptions",
    "max_subscription_bytes",
    "max_subscriptions_total",
    "outbox_limit",
    "slow_consumer",
    "ring_messages",
    "ring_bytes",
    "ws_allowed_origin",
    "webhook_allow_hosts",
    "webhook_allow_networks",
    "webhook_queue",
    "webhook_retries",
    "webhook_rotation_grace",
];

/// The fingerprint of this node's security-relevant configuration (API
/// keys, token secrets, the webhook allow-list, limits, configured
/// webhooks) under the cluster secret: equal on two nodes when those are.
pub fn config_fingerprint(resolved: &crate::config::Resolved, key: &LinkKey) -> String {
    let hex = |bytes: &[u8]| data_encoding::HEXLOWER.encode(bytes);
    let mut keys: Vec<Value> = resolved
        .auth
        .keys
        .iter()
        .map(|api| json!([api.name, hex(&api.sha256), format!("{:?}", api.permissions)]))
        .collect();
    keys.sort_by_key(|k| k.to_string());
    let secret =
        |s: &Option<crate::auth_config::SourcedSecret>| s.as_ref().map(|s| hex(s.secret.bytes()));
    let settings: BTreeMap<&str, &str> = resolved
        .settings
        .iter()
        .filter(|setting| SHARED_SETTINGS.contains(&setting.key.as_str()))
        .map(|setting| (setting.key.as_str(), setting.value.as_str()))
        .collect();
    let webhooks = resolved.configured_webhooks();
    let canonical = json!({
        "keys": keys,
        "token_secret": secret(&resolved.auth.token_secret),
        "token_secret_previous": secret(&resolved.auth.token_secret_previous),
        "settings": settings,
        "webhooks": webhooks,
    });
    key.fingerprint(canonical.to_string().as_bytes())
}

/// The control plane's directory under `data_dir`.
pub fn dir(data_dir: &Path) -> std::path::PathBuf {
    data_dir.join("control")
}

/// With an empty log (`founding` is `Some`): founds it, or waits to be
/// added by the leader of the one another member has. `Some(true)` founds
/// at once; `Some(false)` founds only once no member that is up has a log
/// and this node's address is the lowest of theirs.
async fn found_or_join(plane: Arc<Plane>, founding: Option<bool>, import: Vec<Value>) {
    let Some(alone) = founding else {
        return;
    };
    let started = Instant::now();
    loop {
        if plane.status().initialized {
            // Added by another node's leader.
            if !import.is_empty() {
                warn!(
                    count = import.len(),
                    "this node joined an existing control plane: the run-time webhooks in its \
                     webhooks.json were not imported (the file is kept as it is); add them \
                     again with `corebus webhook add` if they are still wanted"
                );
            }
            return;
        }
        let mut found = alone;
        if !alone && started.elapsed() >= FOUNDING_SETTLE {
            let up: Vec<SocketAddr> = plane
                .view
                .snapshot()
                .members
                .iter()
                .filter(|member| member.state == MemberState::Alive)
                .map(|member| member.node.addr)
                .collect();
            let mut another_has_one = false;
            for addr in up.iter().filter(|addr| **addr != plane.addr) {
                let status = plane
                    .ask::<_, Status>(*addr, "/control/status", &(), Duration::from_secs(1))
                    .await;
                // A member that does not answer may have a log: wait.
                another_has_one |= status.map_or(true, |status| status.initialized);
            }
            found = !another_has_one && up.iter().all(|addr| *addr >= plane.addr);
        }
        if found {
            let node = BasicNode::new(plane.addr.to_string());
            match plane
                .raft
                .initialize(BTreeMap::from([(plane.id, node)]))
                .await
            {
                Ok(()) => {
                    info!(node = %plane.addr, "founded the cluster's control plane");
                    plane.import(import).await;
                }
                Err(err) => warn!(%err, "could not found the control plane"),
            }
            return;
        }
        tokio::time::sleep(MEMBERSHIP_EVERY).await;
    }
}

/// Adds the members gossip knows and the control plane does not, as
/// learners, and promotes learners while there are fewer than
/// [`MAX_VOTERS`] voters. Runs on every node; acts on the leader only.
async fn follow_members(plane: Arc<Plane>) {
    loop {
        tokio::time::sleep(MEMBERSHIP_EVERY).await;
        let metrics = plane.raft.metrics().borrow().clone();
        if metrics.state != ServerState::Leader {
            continue;
        }
        let membership = metrics.membership_config.membership().clone();
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        let view = plane.view.snapshot();
        let up = view
            .members
            .iter()
            .filter(|member| member.state == MemberState::Alive && !member.node.leaving);
        for member in up {
            let id = node_id(member.node.addr);
            if membership.get_node(&id).is_none() {
                let node = BasicNode::new(member.node.addr.to_string());
                match plane.raft.add_learner(id, node, true).await {
                    Ok(_) => info!(node = %member.node.addr, "control plane: added a learner"),
                    Err(err) => {
                        warn!(node = %member.node.addr, %err, "control plane: cannot add a learner");
                        continue;
                    }
                }
            }
            if !voters.contains(&id) && voters.len() < MAX_VOTERS {
                let change = ChangeMembers::AddVoterIds(BTreeSet::from([id]));
                match plane.raft.change_membership(change, false).await {
                    Ok(_) => info!(node = %member.node.addr, "control plane: added a voter"),
                    Err(err) => {
                        warn!(node = %member.node.addr, %err, "control plane: cannot add a voter")
                    }
                }
                // One change at a time: the next round sees the new set.
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_add_up_every_nodes_deliveries_and_keep_the_latest_drop() {
        let delivery = |delivered: u64, dropped: u64, at: &str| {
            json!({ "delivered": delivered, "requests": delivered, "retries": 0, "queued": 1,
                    "dropped": { "rejected": dropped },
                    "last_drop": if at.is_empty() { Value::Null } else {
                        json!({ "at_ms": at, "reason": "rejected", "detail": at }) } })
        };
        let list = |hooks: Vec<(&str, Value)>| {
            json!({ "webhooks": hooks.into_iter()
                .map(|(id, delivery)| json!({ "id": id, "delivery": delivery }))
                .collect::<Vec<_>>() })
        };
        let mut merged = list(vec![
            ("a", delivery(3, 1, "900")),
            ("b", delivery(1, 0, "")),
        ]);
        add_deliveries(&mut merged, &list(vec![("a", delivery(4, 2, "1000"))]));
        add_deliveries(
            &mut merged,
            &list(vec![
                ("a", delivery(5, 0, "20")),
                ("c", delivery(9, 9, "5")),
            ]),
        );
        let a = &merged["webhooks"][0]["delivery"];
        assert_eq!(a["delivered"], json!(12));
        assert_eq!(a["queued"], json!(3));
        assert_eq!(a["dropped"]["rejected"], json!(3));
        // "1000" is later than "900", though not as text.
        assert_eq!(a["last_drop"]["detail"], json!("1000"));
        let b = &merged["webhooks"][1]["delivery"];
        assert_eq!(b["delivered"], json!(1), "no other node had b");
        assert_eq!(
            merged["webhooks"].as_array().unwrap().len(),
            2,
            "c is not agreed here"
        );
    }
}
