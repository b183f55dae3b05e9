//! Connection-side handlers: the clock and heartbeats, connection life
//! cycle, handshake and input errors.

use corebus_net::{ErrorCode, ErrorFrame, Frame, FrameError, PROTOCOL_VERSION};
use rustc_hash::FxHashMap;

use super::delivery::report_losses;
use super::{ConnId, ConnState, Flow, Shard};
use crate::outbox::{OutFrame, Outbox, PushError};

impl Shard {
    // ----- time --------------------------------------------------------

    /// Advances the coarse clock and does the periodic work: heartbeats and
    /// closing silent connections, then evicting idle topics. Called by the
    /// runtime's maintenance tick.
    pub fn tick(&mut self, now_ms: u64) {
        self.now_ms = now_ms;
        let interval = self.config.heartbeat_interval_ms;
        let timeout = self.config.heartbeat_timeout_ms;
        let mut silent = Vec::new();
        for (conn, state) in &mut self.conns {
            let quiet = now_ms.saturating_sub(state.last_input_ms);
            if quiet >= timeout {
                silent.push(*conn);
            } else if quiet >= interval && !state.ping_outstanding && state.handshaken {
                state.ping_outstanding = true;
                let _ = state.outbox.push(OutFrame::Ping(now_ms));
            }
        }
        for conn in silent {
            self.close_with_error(
                conn,
                ErrorCode::IdleTimeout,
                format!("nothing received for {timeout} ms; closing"),
            );
        }
        let idle = self.config.topic_idle_evict_ms;
        let before = self.owned.len();
        self.owned.retain(|_, topic| {
            !topic.interested.is_empty() || now_ms.saturating_sub(topic.last_active_ms) < idle
        });
        self.stats.topics_evicted += (before - self.owned.len()) as u64;
    }

    /// `bytes` arrived from `conn`: it is alive.
    pub fn note_input(&mut self, conn: ConnId, bytes: usize) {
        self.stats.bytes_in += bytes as u64;
        if let Some(state) = self.conns.get_mut(&conn) {
            state.last_input_ms = self.now_ms;
            state.ping_outstanding = false;
        }
    }

    // ----- connections -------------------------------------------------

    /// Registers a new connection.
    pub fn open_conn(&mut self) -> ConnId {
        self.next_conn += 1;
        let id = ConnId(self.next_conn);
        self.conns.insert(
            id,
            ConnState {
                outbox: Outbox::new(self.config.outbox_limit_bytes),
                handshaken: false,
                subscriptions: FxHashMap::default(),
                lossy: Vec::new(),
                last_input_ms: self.now_ms,
                ping_outstanding: false,
            },
        );
        self.stats.connections_opened += 1;
        id
    }

    /// The connection's outbound queue, while the connection exists.
    pub fn outbox_mut(&mut self, conn: ConnId) -> Option<&mut Outbox> {
        self.conns.get_mut(&conn).map(|state| &mut state.outbox)
    }

    /// The writer wrote `bytes` and took everything that was queued: report
    /// what was dropped.
    pub fn conn_drained(&mut self, conn: ConnId, bytes: usize) {
        self.stats.bytes_out += bytes as u64;
        if let Some(state) = self.conns.get_mut(&conn) {
            if !state.lossy.is_empty() {
                report_losses(state);
            }
        }
    }

    /// The peer stopped sending: withdraw its subscriptions at once and let
    /// the writer flush what is already queued, then close.
    pub fn finish_conn(&mut self, conn: ConnId) {
        self.withdraw_subscriptions(conn);
        if let Some(state) = self.conns.get_mut(&conn) {
            state.outbox.finish();
        }
    }

    /// Shutdown: tells every client to go away, queues nothing new, and lets
    /// each writer flush and close.
    pub fn begin_drain(&mut self, drain_ms: u32) {
        let conns: Vec<ConnId> = self.conns.keys().copied().collect();
        for conn in conns {
            self.withdraw_subscriptions(conn);
            if let Some(state) = self.conns.get_mut(&conn) {
                if state.handshaken {
                    let _ = state.outbox.push(OutFrame::GoAway {
                        drain_ms,
                        message: "the broker is shutting down".into(),
                    });
                }
                state.outbox.finish();
            }
        }
    }

    /// Forgets a connection and withdraws all its subscriptions, here and, for
    /// each topic whose last local subscriber it was, on the topic's owner.
    pub fn close_conn(&mut self, conn: ConnId) {
        self.withdraw_subscriptions(conn);
        self.conns.remove(&conn);
    }

    pub(super) fn withdraw_subscriptions(&mut self, conn: ConnId) {
        let Some(state) = self.conns.get_mut(&conn) else {
            return;
        };
        state.lossy.clear();
        let subscriptions = std::mem::take(&mut state.subscriptions);
        for (sub_id, sub) in subscriptions {
            self.remove_subscriber(&sub.topic, conn, sub_id);
        }
    }

    /// Queues a control frame for a connection. These are never dropped: a
    /// queue too full even for them closes the connection as a slow consumer,
    /// which the client is told about.
    pub(super) fn send(&mut self, conn: ConnId, frame: OutFrame) {
        let Some(state) = self.conns.get_mut(&conn) else {
            return; // Closed while the answer was in flight.
        };
        if state.outbox.push(frame) == Err(PushError::Full) {
            self.close_slow_consumer(conn);
        }
    }

    pub(super) fn close_slow_consumer(&mut self, conn: ConnId) {
        let limit = self.config.outbox_limit_bytes;
        self.close_with_error(
            conn,
            ErrorCode::SlowConsumer,
            format!("outbound queue passed its bound of {limit} bytes; closing"),
        );
        self.stats.slow_consumer_closes += 1;
    }

    pub(super) fn send_error(
        &mut self,
        conn: ConnId,
        request_id: u32,
        code: ErrorCode,
        text: String,
    ) {
        self.send(
            conn,
            OutFrame::Error(ErrorFrame::new(request_id, code, false, text)),
        );
    }

    pub(super) fn close_with_error(&mut self, conn: ConnId, code: ErrorCode, text: String) -> Flow {
        if let Some(state) = self.conns.get_mut(&conn) {
            state
                .outbox
                .close_with(Some(OutFrame::Error(ErrorFrame::new(0, code, true, text))));
        }
        self.withdraw_subscriptions(conn);
        Flow::Close
    }

    /// Handles bytes that did not decode. Errors that break framing, and any
    /// error before the handshake, close the connection.
    pub fn handle_decode_error(&mut self, conn: ConnId, error: &FrameError) -> Flow {
        self.stats.protocol_errors += 1;
        let handshaken = self.conns.get(&conn).is_some_and(|state| state.handshaken);
        if !handshaken {
            self.stats.handshake_failures += 1;
        }
        if error.breaks_framing() || !handshaken {
            let code = if handshaken {
                error.code()
            } else {
                ErrorCode::HandshakeRequired
            };
            return self.close_with_error(conn, code, error.to_string());
        }
        let request_id = error.request_id().unwrap_or(0);
        self.send_error(conn, request_id, error.code(), error.to_string());
        Flow::Continue
    }

    /// Handles one decoded frame from a connection.
    pub fn handle_frame(&mut self, conn: ConnId, frame: Frame) -> Flow {
        let Some(state) = self.conns.get_mut(&conn) else {
            return Flow::Close;
        };
        if state.outbox.is_closing() {
            return Flow::Close;
        }
        if !state.handshaken {
            return self.handle_handshake(conn, frame);
        }
        match frame {
            Frame::Publish(publish) => self.handle_publish(conn, publish),
            Frame::Subscribe(subscribe) => self.handle_subscribe(conn, subscribe),
            Frame::Unsubscribe(unsubscribe) => self.handle_unsubscribe(conn, unsubscribe),
            Frame::Ping(nonce) => self.send(conn, OutFrame::Pong(nonce)),
            Frame::Pong(_) => {}
            Frame::Hello(_) => self.send_error(
                conn,
                0,
                ErrorCode::HandshakeRequired,
                "HELLO was already received on this connection".into(),
            ),
            other => self.send_error(
                conn,
                0,
                ErrorCode::WrongDirection,
                format!(
                    "{:?} frames are sent by servers, not clients",
                    other.opcode()
                ),
            ),
        }
        Flow::Continue
    }

    pub(super) fn handle_handshake(&mut self, conn: ConnId, frame: Frame) -> Flow {
        let Frame::Hello(hello) = frame else {
            self.stats.handshake_failures += 1;
            return self.close_with_error(
                conn,
                ErrorCode::HandshakeRequired,
                format!("expected HELLO, got {:?}", frame.opcode()),
            );
        };
        if hello.version != PROTOCOL_VERSION {
            self.stats.handshake_failures += 1;
            return self.close_with_error(
                conn,
                ErrorCode::UnsupportedVersion,
                format!(
                    "client speaks protocol version {}, this server speaks {PROTOCOL_VERSION}",
                    hello.version
                ),
            );
        }
        if let Some(state) = self.conns.get_mut(&conn) {
            state.handshaken = true;
        }
        let welcome = OutFrame::Welcome {
            max_frame: self.config.max_frame,
            shard: self.id,
            shard_count: self.shard_count as u16,
        };
        self.send(conn, welcome);
        Flow::Continue
    }
}
