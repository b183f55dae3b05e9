//! Connection-side handlers: the clock and heartbeats, connection life
//! cycle, handshake and input errors.

use corebus_net::{
    ClusterRequest, ErrorCode, ErrorFrame, Frame, FrameError, TokenRequest, TopicKey,
    WebhookRequest, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION,
};
use rustc_hash::FxHashMap;
use tracing::{debug, warn};

use super::delivery::report_losses;
use std::task::Waker;

use super::{CommandWait, ConnId, ConnState, Flow, Liveness, Shard};
use crate::auth::{unix_now_ms, Action, AuthError, Grant};
use crate::outbox::{OutFrame, Outbox, PushError};
use crate::webhooks::{CommandAnswer, CommandError, CommandResult};

impl Shard {
    // ----- time --------------------------------------------------------

    /// Advances the coarse clock and does the periodic work: heartbeats and
    /// closing silent connections, then evicting idle topics. Called by the
    /// runtime's maintenance tick.
    pub fn tick(&mut self, now_ms: u64) {
        self.now_ms = now_ms;
        let interval = self.config.heartbeat_interval_ms;
        let timeout = self.config.heartbeat_timeout_ms;
        let handshake_timeout = self.config.handshake_timeout_ms;
        let unix_ms = unix_now_ms();
        let mut to_close = Vec::new();
        for (conn, state) in &mut self.conns {
            if state.outbox.is_closing() {
                continue;
            }
            let quiet = now_ms.saturating_sub(state.last_input_ms);
            if !state.handshaken {
                if now_ms.saturating_sub(state.opened_ms) >= handshake_timeout {
                    to_close.push((
                        *conn,
                        ErrorCode::HandshakeTimeout,
                        format!("no valid HELLO within {handshake_timeout} ms; closing"),
                    ));
                }
            } else if let Some(expired) = state
                .grant
                .as_ref()
                .and_then(|grant| grant.expires_at_ms)
                .filter(|expires| *expires <= unix_ms)
            {
                to_close.push((*conn, ErrorCode::TokenExpired, expiry_message(expired)));
            } else if let Liveness::KeepAlive(limit) = state.liveness {
                if let Some(limit) = limit.filter(|limit| quiet >= *limit) {
                    // Told, and its writer ends the connection; the engine
                    // connection stays for the MQTT session, which may
                    // outlive it.
                    state.liveness = Liveness::KeepAlive(None);
                    let text =
                        format!("nothing received for {limit} ms, past the keep-alive; closing");
                    let told = state.outbox.push(OutFrame::Error(ErrorFrame::new(
                        0,
                        ErrorCode::IdleTimeout,
                        true,
                        text.clone(),
                    )));
                    if told.is_ok() {
                        self.stats.timeouts_and_expiries += 1;
                        cut_input(state);
                    } else {
                        to_close.push((*conn, ErrorCode::IdleTimeout, text));
                    }
                }
            } else if quiet >= timeout {
                to_close.push((
                    *conn,
                    ErrorCode::IdleTimeout,
                    format!("nothing received for {timeout} ms; closing"),
                ));
            } else if quiet >= interval && !state.ping_outstanding {
                state.ping_outstanding = true;
                let _ = state.outbox.push(OutFrame::Ping(now_ms));
            }
        }
        for (conn, code, text) in to_close {
            self.stats.timeouts_and_expiries += 1;
            self.close_with_error(conn, code, text);
        }
        // A flood that stopped still has its count reported.
        if let Some(suppressed) = self.auth_failure_log.overdue(now_ms) {
            warn!(
                suppressed,
                "authentication failures not logged (rate limit)"
            );
        }
        if let Some(suppressed) = self.refusal_log.overdue(now_ms) {
            warn!(suppressed, "connection refusals not logged (rate limit)");
        }
        if let Some(suppressed) = self.tls_failure_log.overdue(now_ms) {
            warn!(suppressed, "TLS handshake failures not logged (rate limit)");
        }
        self.tick_nodes();
        let idle = self.config.topic_idle_evict_ms;
        let before = self.owned.len();
        let mut freed = 0;
        self.owned.retain(|_, topic| {
            // A mirror lives exactly as long as its interests (see
            // `drop_mirror_if_unused`), waiting ones included.
            let keep = !topic.interested.is_empty()
                || topic.upstream.is_some()
                || now_ms.saturating_sub(topic.last_active_ms) < idle;
            if !keep {
                freed += topic.retained();
            }
            keep
        });
        self.retained -= freed;
        self.stats.topics_evicted += (before - self.owned.len()) as u64;
    }

    /// Counts what a browser-listener request became.
    pub(crate) fn note_web(&mut self, opened: crate::web::Opened) {
        use crate::web::Opened;
        match opened {
            Opened::WebSocket => self.stats.websockets_opened += 1,
            Opened::EventStream => self.stats.event_streams_opened += 1,
            Opened::Refused => self.stats.web_requests_refused += 1,
        }
    }

    /// `conn` keeps itself alive (an MQTT client's keep-alive): the engine
    /// sends it no heartbeat, and closes it after `quiet_ms` without input
    /// (never, for `None`).
    pub fn set_keep_alive(&mut self, conn: ConnId, quiet_ms: Option<u64>) {
        if let Some(state) = self.conns.get_mut(&conn) {
            state.liveness = Liveness::KeepAlive(quiet_ms);
        }
    }

    /// Closes `conn`, whose client id another connection took over.
    pub fn close_taken_over(&mut self, conn: ConnId) {
        if self
            .conns
            .get(&conn)
            .is_some_and(|state| !state.outbox.is_closing())
        {
            self.close_with_error(
                conn,
                ErrorCode::TakenOver,
                "another connection took over this client id".into(),
            );
        }
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
            Box::new(ConnState {
                outbox: Outbox::new(self.config.outbox_limit_bytes),
                handshaken: false,
                version: PROTOCOL_VERSION,
                grant: None,
                opened_ms: self.now_ms,
                in_flight: 0,
                subscriptions: FxHashMap::default(),
                subscription_bytes: 0,
                lossy: Vec::new(),
                last_input_ms: self.now_ms,
                ping_outstanding: false,
                liveness: Liveness::Heartbeat,
                socket: None,
                handover: None,
                arrived: None,
            }),
        );
        self.stats.connections_opened += 1;
        id
    }

    /// Refuses a connection the broker cannot take (a connection limit, no
    /// descriptor left): a fatal `too_many_connections` error, then close.
    /// Logged as a warning, within the shard's budget.
    pub fn refuse_conn(&mut self, conn: ConnId, reason: String) {
        if let Some(suppressed) = self.refusal_log.admit(self.now_ms) {
            warn!(%reason, suppressed, "connection refused");
        }
        self.close_with_error(conn, ErrorCode::TooManyConnections, reason);
    }

    /// A connection's TLS handshake failed (an old protocol version, plain
    /// TCP on the TLS port, an untrusted client): one warning, within the
    /// shard's budget, in the connection's span (peer and id).
    pub fn note_tls_failure(&mut self, reason: &dyn std::fmt::Display) {
        if let Some(suppressed) = self.tls_failure_log.admit(self.now_ms) {
            warn!(%reason, suppressed, "TLS handshake failed");
        }
    }

    /// Counts a new socket closed at once by a handshake cap.
    pub fn note_shed(&mut self, shed: crate::conn::Shed) {
        match shed {
            crate::conn::Shed::Full => self.stats.handshakes_shed += 1,
            crate::conn::Shed::SourceFull => self.stats.handshakes_shed_per_source += 1,
        }
    }

    /// When `conn`'s grant expires (Unix ms), if it does: the connection's
    /// task sets a timer for that instant and then calls
    /// [`Shard::expire_if_due`].
    pub fn expires_at_ms(&self, conn: ConnId) -> Option<u64> {
        self.conns
            .get(&conn)
            .and_then(|state| state.grant.as_ref())
            .and_then(|grant| grant.expires_at_ms)
    }

    /// Closes `conn` with `token_expired` if its grant has expired; true if
    /// it did.
    pub fn expire_if_due(&mut self, conn: ConnId) -> bool {
        let Some(expired) = self
            .expires_at_ms(conn)
            .filter(|expires| *expires <= unix_now_ms())
        else {
            return false;
        };
        if self
            .conns
            .get(&conn)
            .is_some_and(|state| state.outbox.is_closing())
        {
            return false;
        }
        self.stats.timeouts_and_expiries += 1;
        self.close_with_error(conn, ErrorCode::TokenExpired, expiry_message(expired));
        true
    }

    /// Whether `conn`'s handshake succeeded.
    pub fn is_handshaken(&self, conn: ConnId) -> bool {
        self.conns.get(&conn).is_some_and(|state| state.handshaken)
    }

    /// Largest frame length `conn` may send now: `max_hello_frame` until its
    /// handshake succeeded, then `max_frame`.
    pub fn frame_limit(&self, conn: ConnId) -> u32 {
        match self.conns.get(&conn) {
            Some(state) if state.handshaken => self.config.max_frame,
            _ => self.config.max_hello_frame.min(self.config.max_frame),
        }
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
            state.outbox.batch_sent();
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
        self.draining = true;
        // A member that starts leaving places its topics on the others now,
        // so that the drain waits for them to be taken over.
        self.tick_nodes();
        // Links from other nodes stay: while this node drains, they take
        // over its topics with their state, which they ask for on them.
        let conns: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, state)| !state.is_peer())
            .map(|(conn, _)| *conn)
            .collect();
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
        self.forget_fetches(conn);
        self.forget_session_parts(conn);
        self.forget_wants(conn);
        if let Some(to) = self.conns.remove(&conn).and_then(|state| state.handover) {
            // Asked for its session after its task had sent it, or ended
            // it: the asking connection gets none.
            self.send_session(*to, None);
        }
    }

    pub(super) fn withdraw_subscriptions(&mut self, conn: ConnId) {
        let Some(state) = self.conns.get_mut(&conn) else {
            return;
        };
        state.lossy.clear();
        let subscriptions = std::mem::take(&mut state.subscriptions);
        state.subscription_bytes = 0;
        self.release_subscriptions(subscriptions.len());
        for (sub_id, sub) in subscriptions {
            match sub.group {
                Some(group) => self.leave_shared(group, sub.topic, conn, sub_id),
                None => self.remove_subscriber(&sub.topic, conn, sub_id),
            }
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
        // A token is refused from the instant it expires, whatever the next
        // tick: no request is carried out under an expired grant. (Only
        // connections whose grant expires read the clock.)
        if let Some(expired) = state
            .grant
            .as_ref()
            .and_then(|grant| grant.expires_at_ms)
            .filter(|expires| *expires <= unix_now_ms())
        {
            self.stats.timeouts_and_expiries += 1;
            self.close_with_error(conn, ErrorCode::TokenExpired, expiry_message(expired));
            return Flow::Close;
        }
        match frame {
            Frame::Publish(publish) => self.handle_publish(conn, publish),
            Frame::Subscribe(subscribe) => self.handle_subscribe(conn, subscribe),
            Frame::Unsubscribe(unsubscribe) => self.handle_unsubscribe(conn, unsubscribe),
            Frame::Ping(nonce) => self.send(conn, OutFrame::Pong(nonce)),
            Frame::TokenRequest(request) => self.handle_token_request(conn, request),
            Frame::WebhookRequest(request) => self.handle_webhook_request(conn, request),
            Frame::ClusterRequest(request) => self.handle_cluster_request(conn, request),
            Frame::HandoffRequest(request) => self.handle_handoff_request(conn, request),
            Frame::FetchRetained(request) => self.handle_fetch_retained(conn, request),
            Frame::SubscribeShared(request) => self.handle_subscribe_shared(conn, request),
            Frame::SessionRequest(request) => self.handle_session_request(conn, request),
            Frame::Pong(_) => {}
            Frame::Hello(_) => self.send_error(
                conn,
                0,
                ErrorCode::HandshakeRequired,
                "HELLO was already received on this connection".into(),
            ),
            // The connection's reader refuses these from the opcode alone
            // (`decode_from_client`); this answers callers that decoded them.
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

    /// Whether the connection may do `action` on `topic`; answers a refusal
    /// with a non-fatal `forbidden` error naming what was denied.
    pub(super) fn permitted(
        &mut self,
        conn: ConnId,
        request_id: u32,
        action: Action,
        topic: &TopicKey,
    ) -> bool {
        let Some(grant) = self.conns.get(&conn).and_then(|state| state.grant.as_ref()) else {
            return false;
        };
        if grant.permissions.allows(action, topic) {
            return true;
        }
        let text = format!("{} may not {} on {topic}", grant.identity, action.name());
        self.stats.forbidden += 1;
        self.send_error(conn, request_id, ErrorCode::Forbidden, text);
        false
    }

    /// True when the connection authenticated as a super-user; otherwise
    /// answers `forbidden`, saying that only super-users may `what`.
    fn superuser(&mut self, conn: ConnId, request_id: u32, what: &str) -> bool {
        let superuser = self
            .conns
            .get(&conn)
            .and_then(|state| state.grant.as_ref())
            .is_some_and(|grant| grant.permissions.superuser);
        if !superuser {
            self.stats.forbidden += 1;
            self.send_error(
                conn,
                request_id,
                ErrorCode::Forbidden,
                format!("only super-user keys may {what}"),
            );
        }
        superuser
    }

    fn handle_webhook_request(&mut self, conn: ConnId, request: WebhookRequest) {
        if !self.superuser(conn, request.request_id, "manage webhooks") {
            return;
        }
        let answer = self.webhooks.command(&request.command);
        self.answer_command(conn, request.request_id, false, answer);
    }

    /// Sends a command's answer now, or hands it to the runtime to wait for.
    fn answer_command(
        &mut self,
        conn: ConnId,
        request_id: u32,
        cluster: bool,
        answer: CommandAnswer,
    ) {
        match answer {
            CommandAnswer::Now(result) => self.finish_command(conn, request_id, cluster, result),
            CommandAnswer::Later(answer) => {
                let waits = &mut self.command_waits;
                waits.new.push(CommandWait {
                    conn,
                    request_id,
                    cluster,
                    answer,
                });
                if let Some(waker) = waits.waker.take() {
                    waker.wake();
                }
            }
        }
    }

    /// Sends the answer to a webhook command (`cluster` false) or a cluster
    /// command, if its connection is still there.
    pub fn finish_command(
        &mut self,
        conn: ConnId,
        request_id: u32,
        cluster: bool,
        result: CommandResult,
    ) {
        if !self.conns.contains_key(&conn) {
            return;
        }
        match result {
            Ok(result) if cluster => self.send(conn, OutFrame::ClusterReply { request_id, result }),
            Ok(result) => self.send(conn, OutFrame::WebhookReply { request_id, result }),
            Err(err) => {
                let code = match err {
                    CommandError::Invalid(_) => ErrorCode::InvalidRequest,
                    CommandError::Refused(_) => ErrorCode::Forbidden,
                    CommandError::Internal(_) => ErrorCode::Internal,
                    CommandError::Unavailable(_) => ErrorCode::Unavailable,
                };
                self.send_error(conn, request_id, code, err.to_string());
            }
        }
    }

    /// Commands whose answers the runtime must wait for, or `waker`
    /// registered to be woken when there are some.
    pub fn take_command_waits(&mut self, waker: &Waker) -> Vec<CommandWait> {
        let waits = &mut self.command_waits;
        if waits.new.is_empty() {
            waits.waker = Some(waker.clone());
        }
        std::mem::take(&mut waits.new)
    }

    fn handle_cluster_request(&mut self, conn: ConnId, request: ClusterRequest) {
        if !self.superuser(conn, request.request_id, "ask about the cluster") {
            return;
        }
        let answer = self.cluster.command(&request.command, self.shard_count);
        self.answer_command(conn, request.request_id, true, answer);
    }

    fn handle_token_request(&mut self, conn: ConnId, request: TokenRequest) {
        if !self.superuser(conn, request.request_id, "mint tokens") {
            return;
        }
        match self
            .auth
            .mint(&request.claims, request.ttl_secs, unix_now_ms())
        {
            Ok(token) => self.send(
                conn,
                OutFrame::Token {
                    request_id: request.request_id,
                    token,
                },
            ),
            Err(err) => self.send_error(
                conn,
                request.request_id,
                ErrorCode::Forbidden,
                err.to_string(),
            ),
        }
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
        if !(MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&hello.version) {
            self.stats.handshake_failures += 1;
            return self.close_with_error(
                conn,
                ErrorCode::UnsupportedVersion,
                format!(
                    "client speaks protocol version {}, this server speaks \
                     {MIN_PROTOCOL_VERSION} to {PROTOCOL_VERSION}",
                    hello.version
                ),
            );
        }
        let checked = if hello
            .credentials
            .starts_with(crate::cluster::PEER_CREDENTIALS_PREFIX)
        {
            // Another node's link: checked against the cluster, not the
            // client credentials.
            self.verify_peer(&hello.credentials)
                .and_then(|node| {
                    let addr = node
                        .parse()
                        .map_err(|_| format!("the node {node:?} is not a socket address"))?;
                    Ok(Grant {
                        identity: format!("node:{node}"),
                        permissions: std::sync::Arc::new(crate::auth::Permissions::all()),
                        expires_at_ms: None,
                        peer: Some(addr),
                    })
                })
                .map_err(AuthError::Invalid)
        } else {
            self.auth.authenticate(&hello.credentials, unix_now_ms())
        };
        let grant = match checked {
            Ok(grant) => grant,
            Err(err) => {
                self.stats.handshake_failures += 1;
                self.stats.auth_failures += 1;
                let code = match err {
                    AuthError::Expired { .. } => ErrorCode::TokenExpired,
                    _ => ErrorCode::Unauthorized,
                };
                // Why, never what: the credentials stay out of the log. The
                // client's name is its own text, printed escaped.
                if let Some(suppressed) = self.auth_failure_log.admit(self.now_ms) {
                    warn!(
                        code = code.name(),
                        reason = %err,
                        client = ?hello.client_name,
                        suppressed,
                        "authentication failed"
                    );
                }
                return self.close_with_error(conn, code, err.to_string());
            }
        };
        if self.draining && grant.peer.is_none() {
            return self.close_with_error(
                conn,
                ErrorCode::ShuttingDown,
                "this node is shutting down: connect to another".into(),
            );
        }
        debug!(identity = %grant.identity, "authenticated");
        let link_limit = self.config.link_outbox_limit_bytes;
        if let Some(state) = self.conns.get_mut(&conn) {
            if grant.peer.is_some() {
                state
                    .outbox
                    .set_limit_bytes(link_limit.max(state.outbox.limit_bytes()));
            }
            state.handshaken = true;
            state.version = hello.version;
            state.grant = Some(grant);
        }
        let welcome = OutFrame::Welcome {
            version: hello.version,
            max_frame: self.config.max_frame,
            shard: self.id,
            shard_count: self.shard_count as u16,
        };
        self.send(conn, welcome);
        Flow::Continue
    }
}

/// The `token_expired` error's text.
fn expiry_message(expired_ms: u64) -> String {
    format!(
        "the token expired at {} (Unix seconds); reconnect with a fresh one",
        expired_ms / 1000
    )
}

/// Ends a connection's input now: its reader sees the end of the stream
/// (its writer still sends what is queued).
pub(super) fn cut_input(state: &super::ConnState) {
    if let Some(fd) = state.socket {
        // SAFETY: shutdown(2) on the descriptor the connection's reader
        // holds open (`socket` is cleared when the reader ends); it touches
        // no memory.
        unsafe { libc::shutdown(fd, libc::SHUT_RD) };
    }
}
