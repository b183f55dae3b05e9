//! Start-up and shutdown of the shard executors.
//!
//! One glommio executor per shard, each on its own thread, pinned to one CPU of
//! the process's affinity mask when there are enough CPUs for all shards
//! (more shards than CPUs is allowed, for tests, and then nothing is pinned).
//! Every shard binds its own listener on the same address with SO_REUSEPORT,
//! so the kernel spreads connections over shards and a connection lives on the
//! shard that accepted it.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use glommio::channels::channel_mesh::{MeshBuilder, Senders};
use glommio::{ExecutorJoinHandle, LocalExecutorBuilder, Placement};
use tracing::{debug, info, warn};

use crate::auth::{Authenticator, OpenAccess};
use crate::conn::{ConnLimit, HandshakeGate};
use crate::engine::{EngineConfig, Shard};
use crate::host::{affinity_cpus, preflight, IO_MEMORY};
use corebus_gateway::Origins;

use crate::cluster::{ClusterControl, NoCluster, NodeMap};
use crate::listen::{accept_until, bind_listener};
use crate::mesh::MeshBatch;
use crate::metrics::MetricsHandle;
use crate::routing::ShardId;
use crate::sends::SendBatch;
use crate::webhooks::{NoWebhooks, WebhookSink};

/// Batches each (from, to) mesh queue holds before senders wait.
const MESH_QUEUE_BATCHES: usize = 1024;
/// Longest maintenance period of a cluster member's shards.
const CLUSTER_TICK: Duration = Duration::from_millis(100);
/// How often shards look at the stop flag.
const STOP_POLL: Duration = Duration::from_millis(20);

/// What a broker process runs.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address every shard listens on (port 0 picks a free port).
    pub listen: SocketAddr,
    /// Number of shards; `None` means one per CPU in the affinity mask.
    pub shards: Option<usize>,
    /// Engine limits.
    pub engine: EngineConfig,
    /// Checks credentials at the handshake; [`OpenAccess`] lets everyone in.
    pub auth: Arc<dyn Authenticator>,
    /// Receives messages of topics with webhooks, and webhook commands;
    /// [`NoWebhooks`] has none.
    pub webhooks: Arc<dyn WebhookSink>,
    /// Answers `CLUSTER_REQUEST`s; [`NoCluster`] refuses them.
    pub cluster: Arc<dyn ClusterControl>,
    /// The cluster's member list, when this node is a member of one: topics
    /// other nodes own are forwarded to them and mirrored from them.
    pub nodes: Option<Arc<dyn NodeMap>>,
    /// TLS for the links to the other nodes (whose client listeners speak
    /// TLS, as this node's does); `None` for plain TCP.
    pub link_tls: Option<Arc<rustls::ClientConfig>>,
    /// Most connections the whole broker holds.
    pub max_connections: usize,
    /// Most connections the whole broker holds that have not finished their
    /// handshake; a socket over it is closed at once.
    pub max_handshaking: usize,
    /// Most of those from one source address (0: no cap per address).
    pub max_handshaking_per_source: usize,
    /// TLS for every client connection (see [`crate::tls`]); `None` for
    /// plaintext.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// The listener for browsers (WebSocket and Server-Sent Events), with
    /// the same TLS; `None` for none.
    pub web: Option<WebConfig>,
}

/// The listener for browsers: every shard binds it beside the native one,
/// and its connections live on the shard that accepted them like any other.
#[derive(Debug, Clone)]
pub struct WebConfig {
    /// Address to listen on (port 0 picks a free port).
    pub listen: SocketAddr,
    /// The pages that may connect, besides same-origin ones and clients that
    /// send no `Origin` (see [`corebus_gateway::Origins`]).
    pub origins: Origins,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 7400)),
            shards: None,
            engine: EngineConfig::default(),
            auth: Arc::new(OpenAccess),
            webhooks: Arc::new(NoWebhooks),
            cluster: Arc::new(NoCluster),
            nodes: None,
            link_tls: None,
            max_connections: 100_000,
            max_handshaking: 4_096,
            max_handshaking_per_source: 0,
            tls: None,
            web: None,
        }
    }
}

/// Why the broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// `--shards 0`, or more shards than shard ids.
    #[error("invalid shard count {count}: it must be between 1 and {max}")]
    InvalidShardCount {
        /// The count asked for.
        count: usize,
        /// The largest allowed.
        max: usize,
    },
    /// The listen address is taken or not ours to bind.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The locked-memory limit is below what io_uring needs.
    #[error(
        "the locked-memory limit (ulimit -l) is {current_kib} KiB; corebus needs at least \
         {needed_kib} KiB for io_uring. Raise it with `ulimit -l unlimited` in the shell that \
         starts corebus (root), `LimitMEMLOCK=infinity` in its systemd unit, or a line \
         `<user> - memlock unlimited` in /etc/security/limits.conf"
    )]
    MemlockTooLow {
        /// Current soft limit in KiB.
        current_kib: u64,
        /// What is needed in KiB.
        needed_kib: u64,
    },
    /// io_uring is switched off by sysctl.
    #[error(
        "io_uring is disabled on this kernel (kernel.io_uring_disabled = {value}); enable it \
         with `sysctl -w kernel.io_uring_disabled=0` (and persist it in /etc/sysctl.d/)"
    )]
    IoUringDisabled {
        /// The sysctl's value.
        value: u32,
    },
    /// A shard executor failed to start.
    #[error("shard {shard} failed to start: {reason}")]
    Shard {
        /// Which shard.
        shard: ShardId,
        /// glommio's explanation.
        reason: String,
    },
}

const RUNNING: u8 = 0;
const DRAINING: u8 = 1;
const STOPPING: u8 = 2;

/// How the outside world tells the shards to stop.
#[derive(Debug, Default)]
struct Control {
    state: AtomicU8,
    drain_ms: AtomicU32,
    /// Limits a reload set ([`Server::set_limits`]), numbered; each shard
    /// takes them on its tick and says which number it took.
    limits: std::sync::Mutex<Option<(u64, EngineConfig)>>,
    limits_taken: std::sync::Mutex<Vec<u64>>,
}

impl Control {
    /// The limits numbered after `seen`, if a reload set some.
    fn limits_after(&self, seen: u64) -> Option<(u64, EngineConfig)> {
        let limits = self.limits.lock().unwrap_or_else(|e| e.into_inner());
        limits
            .as_ref()
            .filter(|(number, _)| *number > seen)
            .cloned()
    }

    /// Shard `id` has taken the limits numbered `number`.
    fn took_limits(&self, id: ShardId, number: u64) {
        let mut taken = self.limits_taken.lock().unwrap_or_else(|e| e.into_inner());
        let index = usize::from(id);
        if taken.len() <= index {
            taken.resize(index + 1, 0);
        }
        taken[index] = number;
    }
}

/// A handle that can ask a running broker to shut down, from any thread
/// (a signal-watching thread, for example).
#[derive(Debug, Clone)]
pub struct ShutdownHandle {
    control: Arc<Control>,
}

impl ShutdownHandle {
    /// Graceful shutdown: stop accepting, send `GOAWAY` to every client, flush
    /// what is queued, and stop each shard once its connections are closed or
    /// `deadline` has passed.
    pub fn drain(&self, deadline: Duration) {
        let millis = u32::try_from(deadline.as_millis()).unwrap_or(u32::MAX);
        self.control.drain_ms.store(millis, Ordering::Release);
        let _ = self.control.state.compare_exchange(
            RUNNING,
            DRAINING,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
    }

    /// Immediate stop: connections are dropped.
    pub fn stop_now(&self) {
        self.control.state.store(STOPPING, Ordering::Release);
    }
}

/// A running broker: its shards' threads and the address they listen on.
#[derive(Debug)]
pub struct Server {
    local_addr: SocketAddr,
    web_addr: Option<SocketAddr>,
    shard_count: usize,
    control: Arc<Control>,
    metrics: MetricsHandle,
    handles: Vec<ExecutorJoinHandle<()>>,
    conn_limit: Arc<ConnLimit>,
    handshakes: Arc<HandshakeGate>,
}

impl Server {
    /// The address clients connect to (with the real port when 0 was asked).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The address browsers connect to, when there is a web listener.
    pub fn web_addr(&self) -> Option<SocketAddr> {
        self.web_addr
    }

    /// Number of shards running.
    pub fn shard_count(&self) -> usize {
        self.shard_count
    }

    /// A handle to shut the broker down from another thread.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle {
            control: self.control.clone(),
        }
    }

    /// Every shard's latest counters and gauges.
    pub fn metrics(&self) -> MetricsHandle {
        self.metrics.clone()
    }

    /// Changes the limits a running broker may change (a reload):
    /// `max_connections`, `max_handshaking`, `max_handshaking_per_source`,
    /// and the engine's that [`Shard::set_limits`] names. What is held
    /// stays (a lowered cap refuses what comes next). Returns once every
    /// shard has taken them, or `false` after `wait` if one has not yet
    /// (it takes them on its next tick, within a second).
    ///
    /// [`Shard::set_limits`]: crate::Shard::set_limits
    pub fn set_limits(&self, config: &ServerConfig, wait: Duration) -> bool {
        self.conn_limit.set_max(config.max_connections);
        self.handshakes
            .set_caps(config.max_handshaking, config.max_handshaking_per_source);
        let number = {
            let mut limits = self
                .control
                .limits
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let number = limits.as_ref().map_or(0, |(number, _)| *number) + 1;
            *limits = Some((number, config.engine.clone()));
            number
        };
        let started = Instant::now();
        loop {
            let taken = self
                .control
                .limits_taken
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            let all = taken.len() == self.shard_count && taken.iter().all(|n| *n >= number);
            if all {
                return true;
            }
            if started.elapsed() >= wait {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Stops every shard and waits for their threads. Open connections are
    /// dropped.
    pub fn stop(self) {
        self.shutdown_handle().stop_now();
        self.wait();
    }

    /// Graceful shutdown (see [`ShutdownHandle::drain`]); returns once every
    /// shard has stopped.
    pub fn shutdown(self, deadline: Duration) {
        self.shutdown_handle().drain(deadline);
        self.wait();
    }

    /// Waits until the shards stop (after a shutdown was asked for).
    pub fn wait(mut self) {
        for handle in std::mem::take(&mut self.handles) {
            if let Err(err) = handle.join() {
                warn!(%err, "shard thread ended with an error");
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // A dropped handle must not leave shard threads running forever.
        if !self.handles.is_empty() {
            self.control.state.store(STOPPING, Ordering::Release);
        }
    }
}

/// Starts the broker's shards and returns once all of them listen.
pub fn start(config: ServerConfig) -> Result<Server, StartError> {
    let cpus = affinity_cpus();
    let shard_count = config.shards.unwrap_or(cpus.len().max(1));
    if shard_count == 0 || shard_count > ShardId::MAX as usize {
        return Err(StartError::InvalidShardCount {
            count: shard_count,
            max: ShardId::MAX as usize,
        });
    }
    preflight(shard_count)?;
    // SO_REUSEPORT would let us silently share a port with another process
    // of the same user; a plain bind first turns that into a clear error.
    let web_listen = config.web.as_ref().map(|web| web.listen);
    for addr in std::iter::once(config.listen).chain(web_listen) {
        if addr.port() != 0 {
            std::net::TcpListener::bind(addr)
                .map_err(|source| StartError::Bind { addr, source })?;
        }
    }
    let origins = config.web.as_ref().map(|web| Arc::new(web.origins.clone()));
    let pin = shard_count <= cpus.len();
    let mesh = MeshBuilder::<MeshBatch, _>::full(shard_count, MESH_QUEUE_BATCHES);
    let control = Arc::new(Control::default());
    let conn_limit = Arc::new(ConnLimit::new(config.max_connections));
    let handshakes = Arc::new(HandshakeGate::new(
        config.max_handshaking,
        config.max_handshaking_per_source,
    ));
    let metrics = MetricsHandle::new(shard_count);
    let mut handles = Vec::with_capacity(shard_count);
    let mut listen = config.listen;
    let mut web_listen = web_listen;
    for index in 0..shard_count {
        let placement = match cpus.get(index) {
            Some(cpu) if pin => Placement::Fixed(*cpu),
            _ => Placement::Unbound,
        };
        let (ready_tx, ready_rx) = mpsc::channel();
        let shard_id = index as ShardId;
        let engine = config.engine.clone();
        let mesh = mesh.clone();
        let shard_control = control.clone();
        let auth = config.auth.clone();
        let webhooks = config.webhooks.clone();
        let cluster = config.cluster.clone();
        let nodes = config.nodes.clone();
        let link_tls = config.link_tls.clone();
        let tls = config.tls.clone();
        let web = web_listen.zip(origins.clone());
        let conn_limit = conn_limit.clone();
        let handshakes = handshakes.clone();
        let shard_metrics = metrics.clone();
        let spawned = LocalExecutorBuilder::new(placement)
            .name(&format!("corebus-shard-{index}"))
            .io_memory(IO_MEMORY)
            .spawn(move || async move {
                let ctx = ShardContext {
                    id: shard_id,
                    shard_count,
                    listen,
                    web,
                    control: shard_control,
                    metrics: shard_metrics,
                    ready: ready_tx,
                    auth,
                    webhooks,
                    cluster,
                    nodes,
                    link_tls,
                    conn_limit,
                    handshakes,
                    tls,
                };
                run_shard(ctx, engine, mesh).await
            });
        let handle = match spawned {
            Ok(handle) => handle,
            Err(err) => {
                control.state.store(STOPPING, Ordering::Release);
                return Err(StartError::Shard {
                    shard: shard_id,
                    reason: err.to_string(),
                });
            }
        };
        handles.push(handle);
        // Shards start one after another: shard 0 resolves port 0, and the
        // others bind the port it got.
        let ready = ready_rx.recv().unwrap_or_else(|_| {
            Err(StartError::Shard {
                shard: shard_id,
                reason: "the shard thread exited during start-up (see its log)".into(),
            })
        });
        match ready {
            Ok((addr, web)) => {
                listen = addr;
                web_listen = web;
            }
            Err(err) => {
                control.state.store(STOPPING, Ordering::Release);
                for handle in handles {
                    let _ = handle.join();
                }
                return Err(err);
            }
        }
    }
    info!(addr = %listen, shards = shard_count, pinned = pin, "corebus listening");
    if let Some(web) = web_listen {
        info!(addr = %web, "corebus listening for browsers (WebSocket, Server-Sent Events)");
    }
    Ok(Server {
        local_addr: listen,
        web_addr: web_listen,
        shard_count,
        control,
        metrics,
        handles,
        conn_limit,
        handshakes,
    })
}

/// What a shard thread is handed at start.
struct ShardContext {
    id: ShardId,
    shard_count: usize,
    listen: SocketAddr,
    /// The web listener's address and origins.
    web: Option<(SocketAddr, Arc<Origins>)>,
    control: Arc<Control>,
    metrics: MetricsHandle,
    ready: mpsc::Sender<Result<(SocketAddr, Option<SocketAddr>), StartError>>,
    auth: Arc<dyn Authenticator>,
    webhooks: Arc<dyn WebhookSink>,
    cluster: Arc<dyn ClusterControl>,
    nodes: Option<Arc<dyn NodeMap>>,
    link_tls: Option<Arc<rustls::ClientConfig>>,
    conn_limit: Arc<ConnLimit>,
    handshakes: Arc<HandshakeGate>,
    tls: Option<Arc<rustls::ServerConfig>>,
}

async fn run_shard(
    ctx: ShardContext,
    engine: EngineConfig,
    mesh: MeshBuilder<MeshBatch, glommio::channels::channel_mesh::Full>,
) {
    let ShardContext {
        id,
        shard_count,
        listen,
        web,
        control,
        metrics,
        ready,
        auth,
        webhooks,
        cluster,
        nodes,
        link_tls,
        conn_limit,
        handshakes,
        tls,
    } = ctx;
    // The last shard to join the listeners' group makes it steer by source
    // port; the shards join in order, so listener i is shard i's.
    let steer = (usize::from(id) + 1 == shard_count && shard_count > 1).then_some(shard_count);
    let bind = |addr, steer| {
        bind_listener(addr, steer)
            .and_then(|listener| Ok((listener.local_addr()?, listener)))
            .map_err(|source| StartError::Bind { addr, source })
    };
    let bound = bind(listen, steer).and_then(|native| match &web {
        Some((addr, origins)) => {
            let (addr, listener) = bind(*addr, None)?;
            Ok((native, Some((addr, listener, origins.clone()))))
        }
        None => Ok((native, None)),
    });
    let (listener, web) = match bound {
        Ok(((addr, listener), web)) => {
            let _ = ready.send(Ok((addr, web.as_ref().map(|(addr, ..)| *addr))));
            (listener, web)
        }
        Err(err) => {
            let _ = ready.send(Err(err));
            return;
        }
    };
    let mut tick_every = maintenance_period(&engine);
    let max_frame = engine.max_frame;
    let mut built = Shard::new(id, shard_count, engine, random_seed())
        .with_authenticator(auth)
        .with_webhooks(webhooks)
        .with_cluster(cluster);
    if let Some(nodes) = nodes {
        built = built.with_nodes(nodes);
        // Mirrors an owner refused while the members were changing are
        // asked for again on the tick: keep it short.
        tick_every = tick_every.min(CLUSTER_TICK);
    }
    let shard = Rc::new(RefCell::new(built));
    glommio::spawn_local({
        let shard = shard.clone();
        async move {
            loop {
                let starts = next_batch(&shard, Shard::take_link_starts).await;
                for node in starts {
                    let link =
                        crate::link::run_link(shard.clone(), node, max_frame, link_tls.clone());
                    glommio::spawn_local(link).detach();
                }
            }
        }
    })
    .detach();
    // Commands a cluster's control plane answers later: one task
    // each waits for its answer off the shard's turn.
    glommio::spawn_local({
        let shard = shard.clone();
        async move {
            loop {
                let waits = next_batch(&shard, Shard::take_command_waits).await;
                for wait in waits {
                    let shard = shard.clone();
                    glommio::spawn_local(async move {
                        let result = wait.answer.recv_async().await.unwrap_or_else(|_| {
                            Err(crate::CommandError::Internal(
                                "the command was dropped unanswered".into(),
                            ))
                        });
                        shard.borrow_mut().finish_command(
                            wait.conn,
                            wait.request_id,
                            wait.cluster,
                            result,
                        );
                    })
                    .detach();
                }
            }
        }
    })
    .detach();
    let Ok((senders, mut receivers)) = mesh.join().await else {
        warn!(shard = id, "could not join the shard mesh");
        return;
    };
    let senders = Rc::new(senders);
    for peer in 0..shard_count as ShardId {
        if peer != id {
            glommio::spawn_local(send_to_peer(shard.clone(), senders.clone(), peer)).detach();
        }
    }
    for (peer, receiver) in receivers.streams() {
        let shard = shard.clone();
        glommio::spawn_local(async move {
            while let Some(batch) = receiver.recv().await {
                let mut shard = shard.borrow_mut();
                for msg in batch {
                    shard.handle_mesh(peer as ShardId, msg);
                }
            }
        })
        .detach();
    }
    let sends = Rc::new(SendBatch::new());
    glommio::spawn_local(sends.clone().run_flusher()).detach();
    let clock = Instant::now();
    glommio::spawn_local({
        let shard = shard.clone();
        let sends = sends.clone();
        let control = control.clone();
        async move {
            let mut ticks = 0u64;
            let mut limits_seen = 0;
            loop {
                glommio::timer::sleep(tick_every).await;
                let mut shard = shard.borrow_mut();
                if let Some((number, limits)) = control.limits_after(limits_seen) {
                    shard.set_limits(&limits);
                    control.took_limits(id, number);
                    limits_seen = number;
                }
                shard.tick(clock.elapsed().as_millis() as u64);
                let mut now = shard.metrics();
                now.sends = sends.stats();
                ticks += 1;
                now.ticks = ticks;
                metrics.publish(now);
            }
        }
    })
    .detach();
    let limits = crate::conn::Limits {
        total: conn_limit,
        handshakes,
        tls,
        web: None,
    };
    let accepted = |limits: crate::conn::Limits| {
        let shard = shard.clone();
        let sends = sends.clone();
        move |stream| {
            glommio::spawn_local(crate::conn::serve(
                shard.clone(),
                stream,
                limits.clone(),
                sends.clone(),
            ))
            .detach();
        }
    };
    let stopped = || {
        let control = control.clone();
        async move {
            loop {
                match control.state.load(Ordering::Acquire) {
                    RUNNING => glommio::timer::sleep(STOP_POLL).await,
                    state => return state,
                }
            }
        }
    };
    let web_accepts = web.map(|(_, listener, origins)| {
        let limits = crate::conn::Limits {
            web: Some(origins),
            ..limits.clone()
        };
        glommio::spawn_local(accept_until(id, listener, accepted(limits), stopped()))
    });
    // A cluster member's listener stays open while it drains: the other
    // nodes connect to take its topics over (the engine refuses clients
    // then). It closes when the shard stops.
    let drained = Rc::new(std::cell::Cell::new(false));
    let (state, native_accepts) = if shard.borrow().in_cluster() {
        let until_stopped = {
            let (control, drained) = (control.clone(), drained.clone());
            async move {
                while !drained.get() && control.state.load(Ordering::Acquire) != STOPPING {
                    glommio::timer::sleep(STOP_POLL).await;
                }
            }
        };
        let accepts =
            glommio::spawn_local(accept_until(id, listener, accepted(limits), until_stopped));
        (stopped().await, Some(accepts))
    } else {
        (
            accept_until(id, listener, accepted(limits), stopped()).await,
            None,
        )
    };
    if let Some(web_accepts) = web_accepts {
        web_accepts.await;
    }
    if state == DRAINING {
        let drain_ms = control.drain_ms.load(Ordering::Acquire);
        let deadline = Instant::now() + Duration::from_millis(u64::from(drain_ms));
        shard.borrow_mut().begin_drain(drain_ms);
        // Clients go; the topics this node held go to their new owners.
        while (shard.borrow().client_connection_count() > 0
            || shard.borrow().handoffs_pending() > 0)
            && Instant::now() < deadline
            && control.state.load(Ordering::Acquire) == DRAINING
        {
            glommio::timer::sleep(Duration::from_millis(5)).await;
        }
        let (left, topics) = {
            let shard = shard.borrow();
            (shard.client_connection_count(), shard.handoffs_pending())
        };
        debug!(shard = id, connections = left, topics, "drained");
        if left > 0 || topics > 0 {
            warn!(
                shard = id,
                connections = left,
                topics_not_handed_over = topics,
                "drain deadline passed; dropping connections"
            );
        }
    }
    drained.set(true);
    if let Some(accepts) = native_accepts {
        accepts.await;
    }
    senders.close();
    debug!(shard = id, "shard stopped");
}

/// How often a shard advances its clock, sends heartbeats and evicts idle
/// topics: often enough for the shortest configured timer, at most once a
/// second, and never more than every 10 ms.
fn maintenance_period(engine: &EngineConfig) -> Duration {
    let shortest = engine
        .heartbeat_interval_ms
        .min(engine.topic_idle_evict_ms)
        .min(engine.heartbeat_timeout_ms);
    Duration::from_millis((shortest / 4).clamp(10, 1000))
}

/// A seed for topic epochs that differs between processes and restarts.
fn random_seed() -> u64 {
    let mut seed = [0u8; 8];
    if getrandom::fill(&mut seed).is_ok() {
        return u64::from_ne_bytes(seed);
    }
    // No OS random source: time and pid still differ between restarts.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos ^ (u64::from(std::process::id()) << 32)
}

/// Sends whatever the engine collected for `peer`, one batch per queue item.
/// What `take` hands over from the shard once there is something: `take`
/// registers the waker while it has nothing.
async fn next_batch<T>(
    shard: &Rc<RefCell<Shard>>,
    take: fn(&mut Shard, &std::task::Waker) -> Vec<T>,
) -> Vec<T> {
    std::future::poll_fn(|cx| {
        let batch = take(&mut shard.borrow_mut(), cx.waker());
        if batch.is_empty() {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(batch)
        }
    })
    .await
}

async fn send_to_peer(shard: Rc<RefCell<Shard>>, senders: Rc<Senders<MeshBatch>>, peer: ShardId) {
    loop {
        let batch =
            std::future::poll_fn(
                |cx| match shard.borrow_mut().take_mesh_batch(peer, cx.waker()) {
                    Some(batch) => std::task::Poll::Ready(batch),
                    None => std::task::Poll::Pending,
                },
            )
            .await;
        if senders.send_to(peer as usize, batch).await.is_err() {
            return; // The peer is gone: the broker is stopping.
        }
    }
}
