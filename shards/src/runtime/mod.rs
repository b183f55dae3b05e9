//! Start-up and shutdown of the shard executors.
//!
//! One glommio executor per shard, each on its own thread, pinned to one CPU of
//! the process's affinity mask when there are enough CPUs for all shards
//! (more shards than CPUs is allowed, for tests, and then nothing is pinned).
//! Every shard binds its own listener on the same address with SO_REUSEPORT,
//! so the kernel spreads connections over shards and a connection lives on the
//! shard that accepted it.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

#[cfg(not(feature = "crossbeam-mesh"))]
use glommio::channels::channel_mesh::MeshBuilder;
use glommio::{ExecutorJoinHandle, LocalExecutorBuilder, Placement};
use tracing::{info, warn};

use crate::auth::{Authenticator, OpenAccess};
use crate::conn::{ConnLimit, HandshakeGate};
use crate::engine::EngineConfig;
use crate::host::{affinity_cpus, preflight, IO_MEMORY};
use crate::mqtt::MqttSettings;
use corebus_gateway::Origins;

use crate::cluster::{ClusterControl, NoCluster, NodeMap};
#[cfg(not(feature = "crossbeam-mesh"))]
use crate::mesh::MeshBatch;
use crate::metrics::MetricsHandle;
use crate::routing::ShardId;
use crate::webhooks::{NoWebhooks, WebhookSink};

mod control;
#[cfg(feature = "crossbeam-mesh")]
mod crossmesh;
mod shard;

pub use control::StartError;
use control::{Control, DRAINING, RUNNING, STOPPING};
use shard::{run_shard, ShardContext};

/// Batches each (from, to) mesh queue holds before senders wait.
const MESH_QUEUE_BATCHES: usize = 1024;
/// What a broker process runs.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address every shard listens on (port 0 picks a free port).
    pub listen: SocketAddr,
    /// Number of shards; `None` means one per CPU in the affinity mask.
    pub shards: Option<usize>,
    /// Whether each shard's thread is pinned to a CPU of the affinity mask
    /// (when there are at least as many CPUs as shards). Pinned shards keep
    /// their caches warm on a machine of their own; unpinned, the kernel may
    /// move a shard off a CPU that another process (a second node, a load
    /// generator, an application) is using.
    pub pin_shards: bool,
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
    /// The MQTT listener (3.1.1 and 5.0), with the same TLS; `None` for
    /// none.
    pub mqtt: Option<MqttConfig>,
}

/// The MQTT listener: every shard binds it beside the native one, and its
/// connections live on the shard that accepted them like native ones.
#[derive(Debug, Clone)]
pub struct MqttConfig {
    /// Address to listen on (port 0 picks a free port).
    pub listen: SocketAddr,
    /// The namespace every MQTT topic lives in (unless `tenants`).
    pub namespace: String,
    /// Multi-tenant mode: an MQTT topic name's first level is its
    /// namespace (`namespace` is then unused).
    pub tenants: bool,
    /// The longest keep-alive an MQTT 5.0 client may have, in seconds (0: no
    /// cap).
    pub max_keep_alive_secs: u16,
    /// How long sessions outlive their connections, and what they hold.
    pub sessions: crate::SessionLimits,
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
            pin_shards: true,
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
            mqtt: None,
        }
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
    mqtt_addr: Option<SocketAddr>,
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

    /// The address MQTT clients connect to, when there is an MQTT listener.
    pub fn mqtt_addr(&self) -> Option<SocketAddr> {
        self.mqtt_addr
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
    let mqtt_listen = config.mqtt.as_ref().map(|mqtt| mqtt.listen);
    for addr in std::iter::once(config.listen)
        .chain(web_listen)
        .chain(mqtt_listen)
    {
        if addr.port() != 0 {
            std::net::TcpListener::bind(addr)
                .map_err(|source| StartError::Bind { addr, source })?;
        }
    }
    let origins = config.web.as_ref().map(|web| Arc::new(web.origins.clone()));
    let mqtt_settings = config.mqtt.as_ref().map(|mqtt| {
        Arc::new(
            MqttSettings::new(
                mqtt.namespace.clone(),
                u16::try_from(config.engine.max_in_flight_per_conn).unwrap_or(u16::MAX),
                config.engine.outbox_limit_bytes,
            )
            .with_max_keep_alive(mqtt.max_keep_alive_secs)
            .with_sessions(mqtt.sessions)
            .with_tenants(mqtt.tenants),
        )
    });
    let pin = config.pin_shards && shard_count <= cpus.len();
    #[cfg(not(feature = "crossbeam-mesh"))]
    let mesh = MeshBuilder::<MeshBatch, _>::full(shard_count, MESH_QUEUE_BATCHES);
    #[cfg(feature = "crossbeam-mesh")]
    let mesh = crossmesh::CrossMesh::full(shard_count, MESH_QUEUE_BATCHES);
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
    let mut mqtt_listen = mqtt_listen;
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
        let mqtt = mqtt_listen.zip(mqtt_settings.clone());
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
                    mqtt,
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
            Ok(bound) => {
                listen = bound.native;
                web_listen = bound.web;
                mqtt_listen = bound.mqtt;
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
    if let Some(mqtt) = mqtt_listen {
        info!(addr = %mqtt, "corebus listening for MQTT (3.1.1, 5.0)");
    }
    Ok(Server {
        local_addr: listen,
        web_addr: web_listen,
        mqtt_addr: mqtt_listen,
        shard_count,
        control,
        metrics,
        handles,
        conn_limit,
        handshakes,
    })
}
