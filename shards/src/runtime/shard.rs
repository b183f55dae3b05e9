//! One shard's thread: its engine, listeners, mesh queues, maintenance
//! tick, and its part in draining and stopping.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

#[cfg(feature = "crossbeam-mesh")]
use super::crossmesh::{CrossMesh as ShardMesh, Senders as MeshSenders};
#[cfg(not(feature = "crossbeam-mesh"))]
type ShardMesh =
    glommio::channels::channel_mesh::MeshBuilder<MeshBatch, glommio::channels::channel_mesh::Full>;
#[cfg(not(feature = "crossbeam-mesh"))]
type MeshSenders = glommio::channels::channel_mesh::Senders<MeshBatch>;
use tracing::{debug, warn};

use crate::auth::Authenticator;
use crate::conn::{ConnLimit, HandshakeGate};
use crate::engine::{EngineConfig, Shard};
use crate::mqtt::MqttSettings;
use corebus_gateway::Origins;

use crate::cluster::{ClusterControl, NodeMap};
use crate::listen::{accept_until, bind_listener};
#[cfg(not(feature = "crossbeam-mesh"))]
use crate::mesh::MeshBatch;
use crate::metrics::MetricsHandle;
use crate::readiness::Readiness;
use crate::routing::ShardId;
use crate::sends::SendBatch;
use crate::webhooks::WebhookSink;

use super::control::{Control, StartError, DRAINING, RUNNING, STOPPING};

/// Longest maintenance period of a cluster member's shards.
const CLUSTER_TICK: Duration = Duration::from_millis(100);
/// How often shards look at the stop flag.
const STOP_POLL: Duration = Duration::from_millis(20);

/// The addresses a shard's listeners got (the real ports when 0 was asked).
pub(super) struct Bound {
    pub(super) native: SocketAddr,
    pub(super) web: Option<SocketAddr>,
    pub(super) mqtt: Option<SocketAddr>,
}

/// What a shard thread is handed at start.
pub(super) struct ShardContext {
    pub(super) id: ShardId,
    pub(super) shard_count: usize,
    pub(super) listen: SocketAddr,
    /// The web listener's address and origins.
    pub(super) web: Option<(SocketAddr, Arc<Origins>)>,
    /// The MQTT listener's address and settings.
    pub(super) mqtt: Option<(SocketAddr, Arc<MqttSettings>)>,
    pub(super) control: Arc<Control>,
    pub(super) metrics: MetricsHandle,
    pub(super) ready: mpsc::Sender<Result<Bound, StartError>>,
    pub(super) auth: Arc<dyn Authenticator>,
    pub(super) webhooks: Arc<dyn WebhookSink>,
    pub(super) cluster: Arc<dyn ClusterControl>,
    pub(super) nodes: Option<Arc<dyn NodeMap>>,
    pub(super) link_tls: Option<Arc<rustls::ClientConfig>>,
    pub(super) conn_limit: Arc<ConnLimit>,
    pub(super) handshakes: Arc<HandshakeGate>,
    pub(super) tls: Option<Arc<rustls::ServerConfig>>,
}

pub(super) async fn run_shard(ctx: ShardContext, engine: EngineConfig, mesh: ShardMesh) {
    let ShardContext {
        id,
        shard_count,
        listen,
        web,
        mqtt,
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
    let bound = (|| {
        let native = bind(listen, steer)?;
        // The other listeners, with what their connections are served with.
        let web = web
            .as_ref()
            .map(|(addr, origins)| bind(*addr, None).map(|(at, l)| (at, l, origins.clone())))
            .transpose()?;
        let mqtt = mqtt
            .as_ref()
            .map(|(addr, settings)| bind(*addr, None).map(|(at, l)| (at, l, settings.clone())))
            .transpose()?;
        Ok((native, web, mqtt))
    })();
    let (listener, web, mqtt) = match bound {
        Ok(((addr, listener), web, mqtt)) => {
            let _ = ready.send(Ok(Bound {
                native: addr,
                web: web.as_ref().map(|(addr, ..)| *addr),
                mqtt: mqtt.as_ref().map(|(addr, ..)| *addr),
            }));
            (listener, web, mqtt)
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
    if let Some((_, _, settings)) = &mqtt {
        built = built.with_mqtt(settings.clone());
    }
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
    #[cfg(feature = "crossbeam-mesh")]
    let joined: Result<_, ()> = Ok(mesh.join(id as usize));
    #[cfg(not(feature = "crossbeam-mesh"))]
    let joined = mesh.join().await;
    let Ok((senders, mut receivers)) = joined else {
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
    let readiness = Rc::new(Readiness::new());
    glommio::spawn_local(readiness.clone().run()).detach();
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
                now.writers_running = crate::conn::writers_running();
                now.readers_running = crate::conn::readers_running();
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
        mqtt: None,
    };
    let accepted = |limits: crate::conn::Limits| {
        let shard = shard.clone();
        let sends = sends.clone();
        let readiness = readiness.clone();
        move |stream, at_file_limit| {
            crate::conn::serve(
                shard.clone(),
                stream,
                limits.clone(),
                crate::conn::ShardIo {
                    sends: sends.clone(),
                    readiness: readiness.clone(),
                },
                at_file_limit,
            );
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
    let mqtt_settings = mqtt.as_ref().map(|(_, _, settings)| settings.clone());
    let spawn_accepts = |listener, limits| {
        glommio::spawn_local(accept_until(
            id,
            listener,
            readiness.clone(),
            accepted(limits),
            stopped(),
        ))
    };
    let web_accepts = web.map(|(_, listener, origins)| {
        let limits = crate::conn::Limits {
            web: Some(origins),
            mqtt: mqtt_settings,
            ..limits.clone()
        };
        spawn_accepts(listener, limits)
    });
    let mqtt_accepts = mqtt.map(|(_, listener, settings)| {
        let limits = crate::conn::Limits {
            mqtt: Some(settings),
            ..limits.clone()
        };
        spawn_accepts(listener, limits)
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
        let accepts = glommio::spawn_local(accept_until(
            id,
            listener,
            readiness.clone(),
            accepted(limits),
            until_stopped,
        ));
        (stopped().await, Some(accepts))
    } else {
        (
            accept_until(id, listener, readiness.clone(), accepted(limits), stopped()).await,
            None,
        )
    };
    if let Some(web_accepts) = web_accepts {
        web_accepts.await;
    }
    if let Some(mqtt_accepts) = mqtt_accepts {
        mqtt_accepts.await;
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
    // Connections still open hold parked readers and writers inside wakers
    // (of the readiness ring, of their outboxes), which hold the sockets
    // and the shard: let go of them, or the sockets would stay open.
    let writers = shard.borrow_mut().take_writers();
    drop(writers);
    readiness.release_waiting();
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

async fn send_to_peer(shard: Rc<RefCell<Shard>>, senders: Rc<MeshSenders>, peer: ShardId) {
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
