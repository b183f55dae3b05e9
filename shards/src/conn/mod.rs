//! One client connection on its shard: a reader that decodes frames into the
//! engine, and a writer that drains the connection's outbox with vectored
//! writes ([`writer`]: a task only while there is output; an idle
//! connection's writer is parked in its outbox).
//!
//! Both hold the one socket ([`SharedSocket`]: one file descriptor per
//! connection). glommio's stream has no vectored write, so the writer sends
//! with non-blocking `sendmsg`, queued in the shard's [`SendBatch`] so that
//! every connection's send of one turn leaves in one submission; only when
//! the kernel buffer is full does it fall back to glommio's awaiting
//! `write`, which parks on io_uring until the socket drains.
//!
//! With TLS, both tasks share the connection's `rustls::ServerConnection`: the
//! reader feeds it ciphertext and takes plaintext, the writer gives it
//! plaintext and is the only one to write records to the socket (the reader
//! kicks it when the handshake produced some).

use std::cell::RefCell;
use std::future::poll_fn;
use std::io;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use corebus_gateway::Origins;
use corebus_net::{check, decode_from_client, Check, KeyCache};
use futures_lite::{AsyncRead, AsyncWriteExt};
use rustc_hash::FxHashMap;
use tracing::{debug, error_span, Instrument, Span};

use crate::edge::EdgeConn;
use crate::engine::{ConnId, Flow, Shard};
use crate::framing::Input;
use crate::mqtt::{MqttConn, MqttSettings};
use crate::readiness::Readiness;
use crate::sends::SendBatch;
use crate::socket::{SharedSocket, Stream};
use crate::web::WebConn;

mod parked;
mod sessions;
mod spares;
mod writer;

pub use parked::{readers_running, writers_running};
pub(crate) use writer::{encode_out_frame, next_batch};
use writer::{finish_writer, WriterParts, WriterSlot};

/// Bytes asked of the kernel per read: start small, so an idle connection
/// costs a few KiB, and double up to the maximum while reads fill the buffer.
const READ_CHUNK_MIN: usize = 4 * 1024;
const READ_CHUNK_MAX: usize = 64 * 1024;
/// A reader whose reads keep finding data gives the shard's other tasks a
/// turn after this many bytes (the writer's batch, `WRITE_BATCH_BYTES`).
const READ_TURN_BYTES: usize = 256 * 1024;
/// Wire bytes the writer takes from the outbox per round, so its encode
/// buffer stays this size and is reused warm instead of growing with a
/// deep queue (and first-touching fresh pages) every time.
const WRITE_BATCH_BYTES: usize = 256 * 1024;
/// A reader pauses while any peer's mesh backlog is above this many messages.
const MESH_HIGH_WATER: usize = 64 * 1024;
/// How long a closing connection may take to flush before it is cut.
const CLOSE_FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// The broker-wide connection count and its limit, shared by all shards.
#[derive(Debug)]
pub struct ConnLimit {
    open: AtomicUsize,
    /// Changed by a reload ([`ConnLimit::set_max`]).
    max: AtomicUsize,
}

impl ConnLimit {
    /// A limit of `max` connections.
    pub fn new(max: usize) -> ConnLimit {
        ConnLimit {
            open: AtomicUsize::new(0),
            max: AtomicUsize::new(max),
        }
    }

    /// From now on, at most `max` connections: those open stay, new ones
    /// are refused while `max` or more are.
    pub fn set_max(&self, max: usize) {
        self.max.store(max, Ordering::Release);
    }

    fn acquire(&self) -> bool {
        let before = self.open.fetch_add(1, Ordering::AcqRel);
        if before < self.max.load(Ordering::Acquire) {
            return true;
        }
        self.open.fetch_sub(1, Ordering::AcqRel);
        false
    }

    fn release(&self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Connections that have not finished their handshake, counted broker-wide
/// and per source address: a peer that has proved nothing may hold only so
/// many sockets (and their buffers) open. Separate from [`ConnLimit`], so
/// that a flood of silent sockets cannot take every connection slot from the
/// clients that authenticate.
#[derive(Debug)]
pub struct HandshakeGate {
    pending: AtomicUsize,
    max: AtomicUsize,
    /// 0: no cap per source.
    max_per_source: AtomicUsize,
    by_source: Mutex<FxHashMap<IpAddr, usize>>,
}

/// Why a new socket was closed before its handshake began.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shed {
    /// The broker holds its maximum of connections mid-handshake.
    Full,
    /// This source address holds its maximum of them.
    SourceFull,
}

impl HandshakeGate {
    /// At most `max` connections mid-handshake, and at most `max_per_source`
    /// from one address (0: no cap per address).
    pub fn new(max: usize, max_per_source: usize) -> HandshakeGate {
        HandshakeGate {
            pending: AtomicUsize::new(0),
            max: AtomicUsize::new(max),
            max_per_source: AtomicUsize::new(max_per_source),
            by_source: Mutex::new(FxHashMap::default()),
        }
    }

    /// New caps, for the connections that open from now on (those mid-
    /// handshake keep their places).
    pub fn set_caps(&self, max: usize, max_per_source: usize) {
        self.max.store(max, Ordering::Release);
        self.max_per_source.store(max_per_source, Ordering::Release);
    }

    /// Counts one more connection from `source` mid-handshake, if both caps
    /// allow it; the slot is given back when the returned value is dropped.
    pub fn enter(self: &Arc<Self>, source: IpAddr) -> Result<HandshakeSlot, Shed> {
        if self.pending.fetch_add(1, Ordering::AcqRel) >= self.max.load(Ordering::Acquire) {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            return Err(Shed::Full);
        }
        let max_per_source = self.max_per_source.load(Ordering::Acquire);
        // Counted per source only under a cap. One set by a reload counts
        // the connections that open from then on; the place of each is
        // given back where it was taken.
        let counted = max_per_source > 0;
        if counted {
            let mut by_source = self.by_source.lock().unwrap_or_else(|e| e.into_inner());
            let count = by_source.entry(source).or_insert(0);
            if *count >= max_per_source {
                if *count == 0 {
                    by_source.remove(&source);
                }
                drop(by_source);
                self.pending.fetch_sub(1, Ordering::AcqRel);
                return Err(Shed::SourceFull);
            }
            *count += 1;
        }
        Ok(HandshakeSlot {
            gate: self.clone(),
            source,
            counted,
        })
    }

    /// Connections mid-handshake now.
    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::Acquire)
    }
}

/// One connection's place among those mid-handshake; dropping it (when the
/// handshake succeeds or the connection closes) gives the place back.
#[derive(Debug)]
pub struct HandshakeSlot {
    gate: Arc<HandshakeGate>,
    source: IpAddr,
    /// Counted under its source address.
    counted: bool,
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        let gate = &self.gate;
        if self.counted {
            let mut by_source = gate.by_source.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(count) = by_source.get_mut(&self.source) {
                *count -= 1;
                if *count == 0 {
                    by_source.remove(&self.source);
                }
            }
        }
        gate.pending.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The limits a connection is served under.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Broker-wide connection count.
    pub total: Arc<ConnLimit>,
    /// Connections mid-handshake.
    pub handshakes: Arc<HandshakeGate>,
    /// TLS, when the broker has a certificate.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// For a connection of the web listener: the origins it may come from
    /// (it speaks HTTP first, then WebSocket or Server-Sent Events).
    pub web: Option<Arc<Origins>>,
    /// For a connection of the MQTT listener: its settings (it speaks MQTT
    /// 3.1.1 or 5.0); for one of the web listener, when the broker speaks
    /// MQTT (then `/mqtt` opens MQTT over WebSocket).
    pub mqtt: Option<Arc<MqttSettings>>,
}

/// What a shard's connections share for their socket I/O.
#[derive(Clone)]
pub(crate) struct ShardIo {
    /// Gathers the sends of writers woken together.
    pub(crate) sends: Rc<SendBatch>,
    /// Where readers wait for bytes.
    pub(crate) readiness: Rc<Readiness>,
}

/// A connection's TLS state, shared by its reader and writer.
/// A connection's TLS session (a client's, or a link's from this node).
pub(crate) type Tls = Rc<RefCell<rustls::Connection>>;
/// A web or MQTT connection's state, shared by its reader and writer.
type Edge = Rc<RefCell<EdgeConn>>;

/// Starts serving one accepted connection: a task of its own serves it
/// until it closes, and its writer runs whenever it has output.
///
/// Everything logged while its tasks run, the engine's lines for its frames
/// included, carries the span `conn{id=SHARD:N peer=ADDR}`.
///
/// Every idle connection holds its tasks, so they hold only what they use:
/// the set-up runs here, before them, and the reader's task gets the parts
/// as one [`Served`] (`async fn` arguments are stored twice, and a future
/// awaited inside another `async fn` is too: served the old way, an idle
/// connection's task took 3.3 KiB, now 0.7 KiB).
pub(crate) fn serve(
    shard: Rc<RefCell<Shard>>,
    stream: Stream,
    limits: Limits,
    io: ShardIo,
    at_file_limit: bool,
) {
    let peer = stream.peer_addr().ok();
    // A socket over a handshake cap is closed at once: it has proved nothing,
    // and an error frame would cost it a write (and, with TLS, a handshake).
    let source = peer.map_or(IpAddr::from([0, 0, 0, 0]), |addr| addr.ip());
    let handshake = match limits.handshakes.enter(source) {
        Ok(slot) => slot,
        Err(shed) => {
            shard.borrow_mut().note_shed(shed);
            return;
        }
    };
    let (shard_id, conn) = {
        let mut engine = shard.borrow_mut();
        (engine.id(), engine.open_conn())
    };
    let id = format!("{shard_id}:{}", conn.0);
    // A span's level decides only whether it exists, and it must exist
    // whenever one of its lines is logged: at `info` it would be gone under
    // `log_level = warn`, and so would the peer of every warning.
    let span = match peer {
        Some(peer) => error_span!("conn", %id, %peer),
        None => error_span!("conn", %id, peer = "unknown"),
    };
    let served = span.in_scope(|| open(shard, conn, stream, limits, io, at_file_limit));
    if let Some((served, stream)) = served {
        let limit = served.shard.borrow().frame_limit(conn);
        let reader = Reader {
            served,
            stream,
            handshake: Some(handshake),
            state: ReadState::new(limit),
            span: span.clone(),
        };
        glommio::spawn_local(serve_conn(reader).instrument(span)).detach();
    }
}

/// A connection's parts, as its reader's task holds them.
struct Served {
    shard: Rc<RefCell<Shard>>,
    conn: ConnId,
    tls: Option<Tls>,
    edge: Option<Edge>,
    /// The broker-wide count, when it holds a place for this connection.
    admitted: Option<Arc<ConnLimit>>,
    writer: Rc<WriterSlot>,
}

/// Sets a connection up: its TLS session, its protocol's state, its
/// admission (over a limit it still gets a typed error before it closes)
/// and its writer's task. `None` if it cannot even start.
fn open(
    shard: Rc<RefCell<Shard>>,
    conn: ConnId,
    stream: Stream,
    limits: Limits,
    io: ShardIo,
    at_file_limit: bool,
) -> Option<(Served, SharedSocket)> {
    debug!("connection accepted");
    if let Err(err) = stream.set_nodelay(true) {
        debug!(%err, "cannot set TCP_NODELAY");
    }
    let stream = SharedSocket::new(stream, &io.readiness);
    let tls: Option<Tls> = match &limits.tls {
        None => None,
        Some(config) => {
            match rustls::ServerConnection::new(config.clone()).map(rustls::Connection::Server) {
                Ok(mut session) => {
                    // Plaintext is bounded by the outbox already.
                    session.set_buffer_limit(None);
                    Some(Rc::new(RefCell::new(session)))
                }
                Err(err) => {
                    // Logged; without a session, no frame the client could read.
                    shard
                        .borrow_mut()
                        .refuse_conn(conn, format!("cannot start a TLS session: {err}"));
                    shard.borrow_mut().close_conn(conn);
                    return None;
                }
            }
        }
    };
    let edge = match (&limits.web, &limits.mqtt) {
        (Some(origins), mqtt) => Some(EdgeConn::Web(Box::new(WebConn::new(
            origins.clone(),
            limits.tls.is_some(),
            mqtt.clone(),
        )))),
        (None, Some(settings)) => Some(EdgeConn::Mqtt(Box::new(MqttConn::new(settings.clone())))),
        (None, None) => None,
    };
    let edge: Option<Edge> = edge.map(|edge| Rc::new(RefCell::new(edge)));
    let admitted = !at_file_limit && limits.total.acquire();
    let over_shard_limit = shard.borrow().over_connection_limit();
    let refusal = if at_file_limit {
        Some(
            "the broker is at its open-file limit (Too many open files): raise it, see \
             `corebus doctor`"
                .to_owned(),
        )
    } else if !admitted {
        let max = limits.total.max.load(Ordering::Acquire);
        Some(format!("the broker holds its maximum of {max} connections"))
    } else {
        over_shard_limit.map(|max| format!("this shard holds its maximum of {max} connections"))
    };
    if let Some(reason) = refusal {
        shard.borrow_mut().refuse_conn(conn, reason);
    }
    // The engine may end the connection's input (a takeover, a lapsed
    // keep-alive) while the reader runs.
    shard
        .borrow_mut()
        .set_socket(conn, Some(stream.as_raw_fd()));
    // Its writer starts with the first frame queued for it.
    let writer = Rc::new(WriterSlot::default());
    writer::park(WriterParts {
        shard: shard.clone(),
        conn,
        stream: stream.clone(),
        tls: tls.clone(),
        edge: edge.clone(),
        sends: io.sends,
        span: Span::current(),
        slot: writer.clone(),
    });
    let served = Served {
        shard,
        conn,
        tls,
        edge,
        admitted: admitted.then_some(limits.total),
        writer,
    };
    Some((served, stream))
}

/// A connection's reader: its parts, and what it keeps from one read to
/// the next. Parked, it is all that an idle connection's reading holds.
struct Reader {
    served: Served,
    stream: SharedSocket,
    /// Its place in the handshake gate, until the handshake succeeds.
    handshake: Option<HandshakeSlot>,
    state: ReadState,
    /// The connection's log span, for every task the reader runs in.
    span: Span,
}

/// What a reader keeps between reads.
struct ReadState {
    /// The frame limit: the small pre-handshake one until a `HELLO`
    /// succeeds; only then may a frame's announced length grow the buffer to
    /// `max_frame`.
    limit: u32,
    handshaken: bool,
    /// Closes the connection the instant its token expires (cancelled when
    /// the reader ends, dropping it).
    expiry: Option<glommio::Task<()>>,
    buf: BytesMut,
    chunk: usize,
    cipher: BytesMut,
    /// Plaintext of a TLS web or MQTT connection, before it goes through
    /// its protocol layer.
    edge_plain: BytesMut,
    event_stream: bool,
    turn: ReadTurn,
    /// The peer is done (closed its TLS session or its protocol ended it):
    /// the frames its last bytes held are handled, then the reader ends.
    ending: bool,
    /// An MQTT client's input ended by the protocol: see `linger`.
    linger_after: bool,
}

impl ReadState {
    fn new(limit: u32) -> ReadState {
        ReadState {
            limit,
            handshaken: false,
            expiry: None,
            buf: BytesMut::new(),
            chunk: READ_CHUNK_MIN,
            cipher: BytesMut::new(),
            edge_plain: BytesMut::new(),
            event_stream: false,
            turn: ReadTurn::default(),
            ending: false,
            linger_after: false,
        }
    }

    /// Whether a reader that finds its socket empty may park: its
    /// handshake is done and it holds no partial input.
    fn may_park(&self) -> bool {
        self.handshaken
            && !self.ending
            && !self.linger_after
            && self.buf.is_empty()
            && self.edge_plain.is_empty()
    }
}

/// How a reader's loop stopped.
enum Read {
    /// The connection's input is over.
    Ended,
    /// The socket is empty and the reader holds nothing partial: it may
    /// park until the socket is readable.
    Idle,
}

impl parked::Resume for Reader {
    fn resume(self) {
        let span = self.span.clone();
        parked::spawn_resumed(serve_conn(self), span);
    }
}

/// Serves a connection's input until it ends, then ends the connection; or,
/// between reads of an idle connection, parks the reader on the socket's
/// readiness (no task) until input comes.
async fn serve_conn(mut reader: Reader) {
    let _running = parked::Running::new(&parked::READERS);
    let read = read_loop(&mut reader).await;
    let Reader {
        served,
        stream,
        handshake,
        state,
        ..
    } = match read {
        Ok(Read::Idle) => {
            // The read found the socket empty just now, in this poll: no
            // readiness was reported since, and none can be missed.
            let stream = reader.stream.clone();
            let waker = parked::waker(reader);
            if !stream.wait_readable(&waker) {
                // Not on the ring any more: the waker, dropped, would drop
                // the reader; it goes on as a task instead.
                waker.wake();
            }
            return;
        }
        Ok(Read::Ended) => {
            debug!("connection closed");
            reader
        }
        Err(err)
            if reader
                .served
                .tls
                .as_ref()
                .is_some_and(|tls| tls.borrow().is_handshaking()) =>
        {
            reader.served.shard.borrow_mut().note_tls_failure(&err);
            reader
        }
        Err(err) => {
            debug!(%err, "connection read failed");
            reader
        }
    };
    // Its token's expiry and its buffers go with the reader.
    drop((stream, state));
    // What follows runs once, at the end: boxed, it takes no room in the
    // task while the connection is served. A connection that never
    // finished its handshake holds its place in the gate until it is gone.
    Box::pin(end_conn(served)).await;
    drop(handshake);
}

/// Ends a connection whose reader ended: its will, its session's handover
/// or detachment (then it holds the session until that ends), its
/// writer's last flush, and its place.
async fn end_conn(served: Served) {
    let Served {
        shard,
        conn,
        edge,
        mut admitted,
        writer,
        ..
    } = served;
    let shard = &shard;
    shard.borrow_mut().set_socket(conn, None);
    let mqtt = edge
        .as_ref()
        .filter(|edge| edge.borrow_mut().mqtt_mut().is_some());
    if let Some(edge) = mqtt {
        // A lost connection's will is due now, or after its delay if its
        // session lives on.
        let now = crate::auth::unix_now_ms();
        let will = edge.borrow_mut().mqtt_mut().and_then(|mqtt| {
            mqtt.lost(now);
            let session_over = !mqtt.session_persists();
            mqtt.take_due_will(now, session_over)
        });
        if let Some(will) = will {
            shard.borrow_mut().publish_will(conn, will);
        }
    }
    let closing = shard
        .borrow_mut()
        .outbox_mut(conn)
        .is_none_or(|outbox| outbox.is_closing());
    // Another connection takes the session over: it gets what this one
    // still holds, queued from now on; its client is told (5.0).
    let taken = shard.borrow().has_handover(conn);
    let handover = taken
        && mqtt.is_some_and(|edge| {
            edge.borrow_mut().mqtt_mut().is_some_and(|mqtt| {
                let persists = mqtt.session_persists();
                if persists {
                    mqtt.begin_handover();
                }
                persists
            })
        });
    if taken && !handover {
        // Taken over, its session not living on: closed as any takeover.
        shard.borrow_mut().close_taken_over(conn);
    }
    let detached = !closing
        && !taken
        && mqtt.is_some_and(|edge| {
            edge.borrow_mut()
                .mqtt_mut()
                .is_some_and(|mqtt| mqtt.detach(crate::auth::unix_now_ms()))
        });
    if handover {
        kick(shard, conn);
        finish_writer(&writer).await;
    } else if detached {
        // The session lives on without its socket: the writer stops at
        // its next batch, and the connection's place is given back.
        kick(shard, conn);
        finish_writer(&writer).await;
        if let Some(total) = admitted.take() {
            total.release();
        }
        if let Some(edge) = mqtt {
            sessions::hold(shard, conn, edge).await;
        }
    } else {
        shard.borrow_mut().finish_conn(conn);
        finish_writer(&writer).await;
    }
    if let Some(edge) = mqtt {
        // To the connection that took the session over, or ended.
        sessions::end(shard, conn, edge);
    }
    shard.borrow_mut().close_conn(conn);
    if let Some(total) = admitted.take() {
        total.release();
    }
}

/// How long a reader has held its shard: bytes read since its socket last
/// ran dry or it last gave the others a turn.
#[derive(Debug, Default)]
struct ReadTurn {
    bytes: usize,
}

impl ReadTurn {
    /// Counts a read that got `got` of the `asked` bytes. A short read
    /// drained the socket: the next read is likely to wait, which gives the
    /// others their turn anyway.
    fn note_read(&mut self, got: usize, asked: usize) {
        self.bytes = if got == asked { self.bytes + got } else { 0 };
    }

    /// Whether the reader should yield now; starts a new turn if so.
    fn is_over(&mut self) -> bool {
        let over = self.bytes >= READ_TURN_BYTES;
        if over {
            self.bytes = 0;
        }
        over
    }
}

async fn read_loop(reader: &mut Reader) -> io::Result<Read> {
    let Reader {
        served,
        stream,
        handshake,
        state: st,
        ..
    } = reader;
    let (shard, conn, tls, edge) = (&served.shard, served.conn, &served.tls, &served.edge);
    let shard_rc = Rc::clone(shard);
    loop {
        let need;
        let ended = {
            let mut shard = shard.borrow_mut();
            loop {
                match check(&st.buf, st.limit) {
                    Ok(Check::Complete { len }) => {
                        let frame = st.buf.split_to(len).freeze();
                        let decoded =
                            KEYS.with(|keys| decode_from_client(frame, &mut keys.borrow_mut()));
                        let flow = match decoded {
                            Ok(frame) => shard.handle_frame(conn, frame),
                            Err(err) => shard.handle_decode_error(conn, &err),
                        };
                        if !st.handshaken {
                            st.handshaken = shard.is_handshaken(conn);
                            st.limit = shard.frame_limit(conn);
                            if st.handshaken {
                                *handshake = None;
                                if let Some(edge) = &edge {
                                    let mut edge = edge.borrow_mut();
                                    edge.handshaken(st.limit);
                                    if let Some(mqtt) = edge.mqtt_mut() {
                                        sessions::claim(&mut shard, conn, mqtt, &mut st.buf);
                                    }
                                }
                                st.expiry = shard.expires_at_ms(conn).map(|at| {
                                    glommio::spawn_local(expire_at(shard_rc.clone(), conn, at))
                                });
                            }
                        }
                        if flow == Flow::Close {
                            return Ok(Read::Ended);
                        }
                    }
                    Ok(Check::Incomplete { need: total }) => {
                        need = total;
                        break;
                    }
                    Err(err) => {
                        shard.handle_decode_error(conn, &err);
                        return Ok(Read::Ended);
                    }
                }
            }
            let done = st.ending
                || shard
                    .outbox_mut(conn)
                    .is_none_or(|outbox| outbox.is_closing());
            if done && !st.linger_after {
                return Ok(Read::Ended);
            }
            done
        };
        if ended {
            // Once, at the end: boxed, it takes no room while reading.
            Box::pin(linger(stream)).await;
            return Ok(Read::Ended);
        }
        // A read that finds data completes at once without giving up the
        // shard, so a client that keeps its socket full would hold every
        // other task of this shard (its subscribers' writers, the mesh
        // senders, other connections' readers) until it pauses: deliveries
        // would leave in bursts a whole flow-control window long, and other
        // clients would wait as long. Give them a turn now and then.
        if st.turn.is_over() {
            futures_lite::future::yield_now().await;
        }
        // Backpressure: a publisher faster than the mesh waits here rather than
        // growing the mesh backlog without bound.
        // Links to other nodes too, except for a node's own link here: two
        // nodes whose links both filled would otherwise wait on each other.
        while shard.borrow().max_mesh_backlog() > MESH_HIGH_WATER
            || shard.borrow().waits_for_links(conn)
        {
            glommio::timer::sleep(Duration::from_micros(100)).await;
        }
        let start = st.buf.len();
        // Never sized by the announced length alone: a frame's bytes grow the
        // buffer as they arrive, a chunk at a time, so a peer that announces
        // a large frame and sends nothing more holds one chunk, not the frame.
        // Before the handshake the chunk grows only with bytes that came.
        let ceiling = if st.handshaken {
            READ_CHUNK_MAX
        } else {
            st.chunk
        };
        let want = need.saturating_sub(start).clamp(st.chunk, ceiling);
        let may_park = st.may_park() && stream.waits_on_ring();
        if tls.is_some() || edge.is_some() {
            st.cipher.clear();
            let Some(read) = read_some(stream, &mut st.cipher, st.chunk, may_park).await else {
                return Ok(Read::Idle);
            };
            let read = read?;
            if read == 0 {
                return Ok(Read::Ended);
            }
            shard.borrow_mut().note_input(conn, read);
            st.turn.note_read(read, st.chunk);
            if read == st.chunk {
                st.chunk = (st.chunk * 2).min(READ_CHUNK_MAX);
            }
            let mut peer_closed = false;
            if let Some(tls) = &tls {
                let plain = if edge.is_some() {
                    &mut st.edge_plain
                } else {
                    &mut st.buf
                };
                peer_closed = feed_tls(tls, &st.cipher[..read], plain).inspect_err(|_| {
                    // rustls queued an alert: let the writer send it.
                    kick(shard, conn);
                })?;
                if tls.borrow().wants_write() {
                    kick(shard, conn);
                }
            }
            if let Some(edge) = &edge {
                let fed = match &tls {
                    Some(_) => {
                        let plain = st.edge_plain.split();
                        edge.borrow_mut().feed(&plain, &mut st.buf, st.limit)
                    }
                    None => edge
                        .borrow_mut()
                        .feed(&st.cipher[..read], &mut st.buf, st.limit),
                };
                if let Some(opened) = edge.borrow_mut().take_opened() {
                    shard.borrow_mut().note_web(opened);
                }
                if let Some(keep_alive) = edge.borrow_mut().take_keep_alive() {
                    shard.borrow_mut().set_keep_alive(conn, keep_alive);
                }
                if let Some(mqtt) = edge.borrow_mut().mqtt_mut() {
                    sessions::tell_home(&mut shard.borrow_mut(), mqtt);
                }
                if edge.borrow().has_pending() {
                    kick(shard, conn);
                }
                match fed {
                    Ok(Input::More) => {}
                    Ok(Input::End) => {
                        st.ending = true;
                        st.linger_after =
                            edge.borrow_mut().mqtt_mut().is_some_and(MqttConn::linger);
                    }
                    Err(err) => {
                        debug!(%err, "WebSocket session failed");
                        return Ok(Read::Ended);
                    }
                }
                if !st.event_stream && edge.borrow().is_event_stream() {
                    st.event_stream = true;
                    let timeout = shard.borrow().heartbeat_timeout_ms();
                    watch_unacknowledged(&*stream, timeout);
                }
            }
            st.ending |= peer_closed;
            continue;
        }
        let Some(read) = read_some(stream, &mut st.buf, want, may_park).await else {
            return Ok(Read::Idle);
        };
        match read {
            Ok(0) => return Ok(Read::Ended),
            Ok(n) => {
                st.turn.note_read(n, want);
                st.chunk = if n == want {
                    (st.chunk * 2).min(READ_CHUNK_MAX)
                } else if n < st.chunk / 4 {
                    (st.chunk / 2).max(READ_CHUNK_MIN)
                } else {
                    st.chunk
                };
                shard.borrow_mut().note_input(conn, n);
            }
            Err(err) => return Err(err),
        }
    }
}

thread_local! {
    /// The topic of the last publish the shard decoded, validated: a
    /// publisher sending to one topic has it checked once (one cache for the
    /// shard's connections, not one each: frames are decoded one
    /// connection's batch at a time).
    static KEYS: RefCell<KeyCache> = RefCell::new(KeyCache::default());
    /// The shard's read buffer: every read of the shard's connections lands
    /// here first (one read at a time: a shard is one thread, and the buffer
    /// is borrowed only inside a poll).
    static SCRATCH: RefCell<Vec<u8>> = RefCell::new(vec![0; READ_CHUNK_MAX]);
    /// Read buffers that connections gave up while their sockets were
    /// empty, for the next connection that has bytes: a publisher whose
    /// socket runs dry after every burst takes one back instead of
    /// allocating one per burst.
    static SPARE_BUFFERS: RefCell<Vec<BytesMut>> = const { RefCell::new(Vec::new()) };
}

/// Spare read buffers a shard keeps, each of at most twice
/// [`READ_CHUNK_MAX`] (so at most 4 MiB per shard).
const SPARE_BUFFERS_MAX: usize = 32;

/// Reads at most `want` (up to [`READ_CHUNK_MAX`]) bytes from `stream` and
/// appends them to `into`; 0 at the end of the stream.
///
/// glommio tries a non-blocking `recv` first and otherwise waits for the
/// socket to become readable, holding no buffer while it waits. So the
/// bytes land in the shard's scratch buffer and are copied on, and a
/// connection whose socket is empty gives up its own buffer if that holds
/// nothing, to the shard's spare buffers (up to [`SPARE_BUFFERS_MAX`]):
/// an idle connection owns no read buffer (it cost 4 KiB each, a chunk
/// resized and zeroed for a read that then waited).
async fn read_into(
    stream: &mut SharedSocket,
    into: &mut BytesMut,
    want: usize,
) -> io::Result<usize> {
    let want = want.min(READ_CHUNK_MAX);
    poll_fn(|cx| {
        SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            match std::pin::Pin::new(&mut *stream).poll_read(cx, &mut scratch[..want]) {
                Poll::Ready(Ok(read)) => {
                    if into.capacity() == 0 && read > 0 {
                        if let Some(spare) = SPARE_BUFFERS.with(|spare| spare.borrow_mut().pop()) {
                            *into = spare;
                        }
                    }
                    into.extend_from_slice(&scratch[..read]);
                    Poll::Ready(Ok(read))
                }
                Poll::Ready(Err(err)) => Poll::Ready(Err(err)),
                Poll::Pending => {
                    if into.is_empty() && into.capacity() > 0 {
                        let given_up = std::mem::take(into);
                        if given_up.capacity() <= 2 * READ_CHUNK_MAX {
                            SPARE_BUFFERS.with(|spare| {
                                let mut spare = spare.borrow_mut();
                                if spare.len() < SPARE_BUFFERS_MAX {
                                    spare.push(given_up);
                                }
                            });
                        }
                    }
                    Poll::Pending
                }
            }
        })
    })
    .await
}

/// [`read_into`], or `None` if `may_park` and the socket is empty: the
/// reader may park, and the socket waits for input with this task's waker,
/// for the reader to hand it over (see [`SharedSocket::wait_readable`]).
async fn read_some(
    stream: &mut SharedSocket,
    into: &mut BytesMut,
    want: usize,
    may_park: bool,
) -> Option<io::Result<usize>> {
    let mut read = std::pin::pin!(read_into(stream, into, want));
    if !may_park {
        return Some(read.await);
    }
    poll_fn(|cx| match std::future::Future::poll(read.as_mut(), cx) {
        Poll::Ready(read) => Poll::Ready(Some(read)),
        Poll::Pending => Poll::Ready(None),
    })
    .await
}

/// Wakes `conn`'s writer.
pub(crate) fn kick(shard: &Rc<RefCell<Shard>>, conn: ConnId) {
    if let Some(outbox) = shard.borrow_mut().outbox_mut(conn) {
        outbox.kick();
    }
}

/// An event stream never answers the heartbeat, so the engine learns that
/// its browser went away from the socket: with TCP_USER_TIMEOUT, data the
/// peer leaves unacknowledged for the heartbeat timeout breaks the
/// connection (the heartbeat itself makes sure there is data).
fn watch_unacknowledged(stream: &impl AsRawFd, timeout_ms: u64) {
    let timeout = libc::c_uint::try_from(timeout_ms).unwrap_or(libc::c_uint::MAX);
    // SAFETY: setsockopt on a socket we own, with a pointer to a live
    // c_uint and its size.
    let result = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_USER_TIMEOUT,
            (&timeout as *const libc::c_uint).cast(),
            std::mem::size_of::<libc::c_uint>() as libc::socklen_t,
        )
    };
    if result != 0 {
        debug!(err = %io::Error::last_os_error(), "cannot set TCP_USER_TIMEOUT");
    }
}

/// Sleeps until `at_ms` (Unix ms), then closes `conn` with `token_expired`
/// if its grant has expired by then.
async fn expire_at(shard: Rc<RefCell<Shard>>, conn: ConnId, at_ms: u64) {
    loop {
        let now = crate::auth::unix_now_ms();
        if now >= at_ms {
            break;
        }
        glommio::timer::sleep(Duration::from_millis(at_ms - now)).await;
    }
    shard.borrow_mut().expire_if_due(conn);
}

/// Feeds ciphertext to rustls and appends the plaintext it yields to `plain`;
/// returns whether the peer sent close_notify.
pub(crate) fn feed_tls(tls: &Tls, mut cipher: &[u8], plain: &mut BytesMut) -> io::Result<bool> {
    let mut session = tls.borrow_mut();
    let mut peer_closed = false;
    while !cipher.is_empty() {
        session.read_tls(&mut cipher)?;
        let state = session
            .process_new_packets()
            .map_err(|err| io::Error::new(io::ErrorKind::InvalidData, err))?;
        let available = state.plaintext_bytes_to_read();
        if available > 0 {
            let start = plain.len();
            plain.resize(start + available, 0);
            io::Read::read_exact(&mut session.reader(), &mut plain[start..])?;
        }
        peer_closed |= state.peer_has_closed();
    }
    Ok(peer_closed)
}

/// Writes every record rustls has ready.
pub(crate) async fn flush_tls(
    stream: &mut (impl futures_lite::AsyncWrite + Unpin),
    tls: &Tls,
) -> io::Result<()> {
    loop {
        let mut records = Vec::new();
        {
            let mut session = tls.borrow_mut();
            while session.wants_write() {
                session.write_tls(&mut records)?;
            }
        }
        if records.is_empty() {
            return Ok(());
        }
        stream.write_all(&records).await?;
    }
}

/// Hands the segments to rustls as plaintext and writes the records; returns
/// the plaintext bytes written.
pub(crate) async fn write_tls(
    stream: &mut (impl futures_lite::AsyncWrite + Unpin),
    tls: &Tls,
    segments: &mut Vec<Bytes>,
) -> io::Result<usize> {
    let mut total = 0;
    {
        let mut session = tls.borrow_mut();
        for segment in segments.drain(..) {
            io::Write::write_all(&mut session.writer(), &segment)?;
            total += segment.len();
        }
    }
    flush_tls(stream, tls).await?;
    Ok(total)
}

/// How long a closing MQTT connection reads (and drops) what its client
/// still sends, once its last words are out.
const LINGER: Duration = Duration::from_secs(5);

/// The reader of an MQTT connection that its protocol ended reads (and
/// drops) what the client still sends until it closes (or [`LINGER`]
/// passes), while the writer sends the last words: closing a socket with
/// unread input resets the connection, and the client could lose those
/// words (a `DISCONNECT` with its reason) to the reset before reading them.
async fn linger(stream: &mut SharedSocket) {
    let drain = async {
        let mut dropped = BytesMut::new();
        loop {
            dropped.clear();
            match read_into(stream, &mut dropped, READ_CHUNK_MIN).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    };
    futures_lite::future::or(drain, glommio::timer::sleep(LINGER)).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::framing::frames_of_batch;
    use crate::outbox::{OutFrame, ENCODE_BELOW};

    #[test]
    fn the_handshake_gate_caps_all_and_each_source_and_gives_places_back() {
        let gate = Arc::new(HandshakeGate::new(3, 2));
        let (a, b) = (IpAddr::from([10, 0, 0, 1]), IpAddr::from([10, 0, 0, 2]));
        let first = gate.enter(a).expect("room");
        let second = gate.enter(a).expect("room");
        assert_eq!(gate.enter(a).err(), Some(Shed::SourceFull));
        let third = gate.enter(b).expect("another source");
        assert_eq!(gate.enter(b).err(), Some(Shed::Full));
        assert_eq!(gate.pending(), 3, "refusals hold no place");
        drop(first);
        assert_eq!(gate.pending(), 2);
        let again = gate.enter(a).expect("a's place came back");
        drop((second, third, again));
        assert_eq!(gate.pending(), 0);
        let by_source = gate.by_source.lock().expect("lock");
        assert!(by_source.is_empty(), "no entry is left for a quiet source");
        drop(by_source);
        // No cap per source: only the total.
        let gate = Arc::new(HandshakeGate::new(2, 0));
        let _held = (gate.enter(a).expect("room"), gate.enter(a).expect("room"));
        assert_eq!(gate.enter(b).err(), Some(Shed::Full));
    }

    #[test]
    fn new_caps_apply_to_what_comes_next_and_places_go_back_where_taken() {
        let gate = Arc::new(HandshakeGate::new(4, 0));
        let a = IpAddr::from([10, 0, 0, 1]);
        let uncounted = gate.enter(a).expect("room");
        // A reload sets a cap per source of 1 and lowers the total to 3.
        gate.set_caps(3, 1);
        let counted = gate.enter(a).expect("the first counted place of a");
        assert_eq!(gate.enter(a).err(), Some(Shed::SourceFull));
        drop(uncounted);
        assert_eq!(
            gate.enter(a).err(),
            Some(Shed::SourceFull),
            "the place taken before the cap is not given back from a's count"
        );
        drop(counted);
        let again = gate.enter(a).expect("a's counted place came back");
        let b = gate.enter(IpAddr::from([10, 0, 0, 2])).expect("room");
        let c = gate.enter(IpAddr::from([10, 0, 0, 3])).expect("room");
        assert_eq!(
            gate.enter(IpAddr::from([10, 0, 0, 4])).err(),
            Some(Shed::Full)
        );
        drop((again, b, c));
        assert_eq!(gate.pending(), 0);
        assert!(gate.by_source.lock().expect("lock").is_empty());
    }

    /// What the outbox bound counts for each frame is exactly what the writer
    /// puts on the wire for it.
    #[test]
    fn wire_len_is_the_encoded_length_of_every_frame() {
        for frame in every_out_frame() {
            let expected = frame.wire_len();
            let mut head = BytesMut::new();
            let mut segments = Vec::new();
            encode_out_frame(frame.clone(), &mut head, &mut segments);
            let encoded = head.len() + segments.iter().map(Bytes::len).sum::<usize>();
            assert_eq!(encoded, expected, "{frame:?}");
        }
    }

    /// A plain MQTT connection's writer reads its batch as frames without
    /// encoding it: it must read exactly what its client would decode from
    /// the batch encoded, runs of the outbox included.
    #[test]
    fn a_batch_read_as_frames_is_the_batch_encoded_and_decoded() {
        let mut batch: Vec<OutFrame> = every_out_frame()
            .into_iter()
            .filter(|frame| !matches!(frame, OutFrame::Encoded(_)))
            .collect();
        let mut outbox = crate::outbox::Outbox::new(1 << 20);
        for seq in 1..=3 {
            let body = corebus_net::Body::plain(format!("small {seq}").as_bytes());
            outbox
                .push_message(4, 1, seq, body.as_bytes())
                .expect("under the bound");
        }
        let large = corebus_net::Body::plain(&[7; ENCODE_BELOW + 1]);
        outbox
            .push_message(4, 1, 4, large.as_bytes())
            .expect("under the bound");
        outbox.drain_some(&mut batch, usize::MAX);
        assert!(
            batch
                .iter()
                .any(|frame| matches!(frame, OutFrame::Encoded(_))),
            "the small messages came as a run"
        );
        let mut head = BytesMut::new();
        let mut segments = Vec::new();
        for frame in batch.clone() {
            encode_out_frame(frame, &mut head, &mut segments);
        }
        segments.push(head.split().freeze());
        let decoded = crate::framing::frames_of(&segments);
        let read = frames_of_batch(&mut batch);
        assert!(batch.is_empty(), "the batch is taken");
        assert_eq!(read, decoded);
        let messages = read
            .iter()
            .filter(|frame| matches!(frame, corebus_net::Frame::Message(_)))
            .count();
        assert_eq!(
            messages, 6,
            "two queued as frames, three in the run, one large"
        );
    }

    /// One item of every kind a writer takes from an outbox (a `MESSAGE`
    /// with a small and with a large body, then each other frame, then a
    /// run of made-up bytes).
    fn every_out_frame() -> Vec<OutFrame> {
        vec![
            OutFrame::Message {
                sub_id: 7,
                epoch: 3,
                seq: 9,
                payload: Bytes::from(vec![0; 10]),
            },
            OutFrame::Message {
                sub_id: 7,
                epoch: 3,
                seq: 9,
                payload: Bytes::from(vec![0; ENCODE_BELOW + 100]),
            },
            OutFrame::PubAck {
                request_id: 1,
                seq: 2,
            },
            OutFrame::SubOk {
                request_id: 1,
                sub_id: 2,
                epoch: 3,
                start_after: 4,
            },
            OutFrame::Discontinuity {
                sub_id: 1,
                epoch: 2,
                last_seq: 3,
                next_seq: 5,
            },
            OutFrame::UnsubOk {
                request_id: 1,
                sub_id: 2,
            },
            OutFrame::ReplayEnd {
                sub_id: 1,
                last_seq: 9,
            },
            OutFrame::Welcome {
                version: 2,
                max_frame: 1 << 20,
                shard: 1,
                shard_count: 2,
            },
            OutFrame::Ping(5),
            OutFrame::Pong(6),
            OutFrame::Error(corebus_net::ErrorFrame::new(
                4,
                corebus_net::ErrorCode::Forbidden,
                false,
                "not yours",
            )),
            OutFrame::Token {
                request_id: 8,
                token: "a.b.c".into(),
            },
            OutFrame::ClusterReply {
                request_id: 10,
                result: "{\"members\":[]}".into(),
            },
            OutFrame::WebhookReply {
                request_id: 9,
                result: "{}".into(),
            },
            OutFrame::GoAway {
                drain_ms: 100,
                message: "bye".into(),
            },
            OutFrame::Encoded(Bytes::from(vec![0; 77])),
        ]
    }

    #[test]
    fn a_reader_that_keeps_finding_data_yields_once_per_turn() {
        let mut turn = ReadTurn::default();
        let mut yields = 0;
        // 1 MiB in full 64 KiB reads: four turns of 256 KiB.
        for _ in 0..16 {
            turn.note_read(READ_CHUNK_MAX, READ_CHUNK_MAX);
            if turn.is_over() {
                yields += 1;
            }
        }
        assert_eq!(yields, 4);
    }

    #[test]
    fn a_short_read_starts_a_new_turn() {
        let mut turn = ReadTurn::default();
        for _ in 0..3 {
            turn.note_read(READ_CHUNK_MAX, READ_CHUNK_MAX);
        }
        // The socket ran dry: the next read waits anyway.
        turn.note_read(100, READ_CHUNK_MAX);
        for _ in 0..3 {
            turn.note_read(READ_CHUNK_MAX, READ_CHUNK_MAX);
            assert!(!turn.is_over(), "192 KiB since the socket ran dry");
        }
        turn.note_read(READ_CHUNK_MAX, READ_CHUNK_MAX);
        assert!(turn.is_over());
        assert!(!turn.is_over(), "a yield starts a new turn");
    }
}
