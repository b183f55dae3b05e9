//! An MQTT session without its connection (see `mqtt/session.rs`): the
//! connection's task holds it after the socket ended, queueing what
//! arrives, until a new connection takes it over, it expires, or the
//! broker ends it; then it goes to that connection or ends, its will
//! published if one is still due.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tracing::debug;

use super::{encode_out_frame, next_batch};
use crate::auth::unix_now_ms;
use crate::edge::EdgeConn;
use crate::engine::{Arrival, ConnId, Holder, Shard};
use crate::mqtt::homes::wire as homes;
use crate::mqtt::{Claim, MqttConn};
use crate::outbox::OutFrame;
use corebus_net::{check, decode, Check};

/// What woke a detached session.
enum Woke {
    /// Frames (or a kick), and whether the outbox is closing.
    Frames(bool),
    /// The outbox closed, or the connection is gone.
    Gone,
    /// Its will or its expiry is due.
    Due,
}

/// Holds `conn`'s detached session until it is taken over, expires or is
/// closed; deliveries are queued in it, and its will is published when
/// its delay ends.
pub(crate) async fn hold(shard: &Rc<RefCell<Shard>>, conn: ConnId, edge: &Rc<RefCell<EdgeConn>>) {
    shard.borrow_mut().detach_conn(conn);
    debug!("MQTT connection ended; its session lives on");
    let mut batch = Vec::new();
    loop {
        let (expires, will) = match edge.borrow_mut().mqtt_mut() {
            Some(mqtt) => (mqtt.expires_at_ms(), mqtt.will_due_ms()),
            None => return,
        };
        let now = unix_now_ms();
        let Some(expires) = expires.filter(|at| *at > now) else {
            debug!("MQTT session expired");
            return;
        };
        let next = will.map_or(expires, |will| will.min(expires));
        let woke = futures_lite::future::or(
            async {
                match next_batch(shard, conn, &mut batch).await {
                    Some(closing) => Woke::Frames(closing),
                    None => Woke::Gone,
                }
            },
            async {
                let wait = next.saturating_sub(now);
                glommio::timer::sleep(Duration::from_millis(wait)).await;
                Woke::Due
            },
        )
        .await;
        match woke {
            Woke::Frames(closing) => {
                take_in(shard, conn, edge, &mut batch);
                let refused = edge
                    .borrow_mut()
                    .mqtt_mut()
                    .is_some_and(|mqtt| mqtt.is_refused());
                if closing
                    || refused
                    || shard.borrow().is_draining()
                    || shard.borrow().has_handover(conn)
                {
                    return;
                }
            }
            Woke::Gone => return,
            Woke::Due => {
                let will = edge
                    .borrow_mut()
                    .mqtt_mut()
                    .and_then(|mqtt| mqtt.take_due_will(unix_now_ms(), false));
                if let Some(will) = will {
                    shard.borrow_mut().publish_will(conn, will);
                }
            }
        }
    }
}

/// Frames of `conn`'s outbox (in `batch`) taken into its session without a
/// client: deliveries are queued, answers dropped; and a session this
/// connection was taking over from another goes on arriving and being
/// asked for.
fn take_in(
    shard: &Rc<RefCell<Shard>>,
    conn: ConnId,
    edge: &Rc<RefCell<EdgeConn>>,
    batch: &mut Vec<OutFrame>,
) {
    let mut head = BytesMut::new();
    let mut segments: Vec<Bytes> = Vec::new();
    for frame in batch.drain(..) {
        encode_out_frame(frame, &mut head, &mut segments);
    }
    if !head.is_empty() {
        segments.push(head.split().freeze());
    }
    let mut edge = edge.borrow_mut();
    if let Some(mqtt) = edge.mqtt_mut() {
        // A session taken over from another connection just before this
        // one's client went: kept for the next.
        take_arrival(&mut shard.borrow_mut(), conn, mqtt);
    }
    let _ = edge.wrap(&mut segments);
    let mut shard = shard.borrow_mut();
    shard.conn_drained(conn, 0);
    if let Some(mqtt) = edge.mqtt_mut() {
        shard.note_session_drops(mqtt.take_drops());
        ask_for_session(&mut shard, conn, mqtt);
    }
}

/// `conn`'s handshake succeeded: its MQTT state takes its client id, here
/// or at the id's home node; the frames of a session to resume go to
/// `frames`, for the engine.
pub(crate) fn claim(shard: &mut Shard, conn: ConnId, mqtt: &mut MqttConn, frames: &mut BytesMut) {
    let home = shard.client_home(mqtt.client_id());
    match mqtt.claim_client_id(Holder::local(shard.id(), conn), home, frames) {
        Claim::Here(Some(previous)) => shard.take_over(previous),
        Claim::Here(None) => {}
        Claim::AtHome(home, request) => {
            let request = homes::encode(&request, mqtt.client_id(), shard.session_body_max());
            shard.claim_at_home(home, conn, request);
        }
    }
}

/// Hands `conn`'s MQTT state what came for it from elsewhere (the session
/// it asked for, its claim's answer), and the engine what that brings: a
/// connection to close, a session's subscriptions.
pub(crate) fn take_arrival(shard: &mut Shard, conn: ConnId, mqtt: &mut MqttConn) {
    match shard.take_arrival(conn) {
        Some(Arrival::Session(session)) => mqtt.resume(session),
        Some(Arrival::Claimed(answer)) => {
            let mut frames = BytesMut::new();
            if let Ok(previous) = mqtt.claimed(answer, &mut frames) {
                if let Some(previous) = previous {
                    shard.take_over(previous);
                }
                while let Ok(Check::Complete { len }) = check(&frames, u32::MAX) {
                    match decode(frames.split_to(len).freeze()) {
                        Ok(frame) => {
                            shard.handle_frame(conn, frame);
                        }
                        Err(err) => debug!(%err, "a session's subscription is not a frame"),
                    }
                }
            }
        }
        None => {}
    }
    tell_home(shard, mqtt);
}

/// Asks for the session `mqtt` takes over, once its subscriptions are in
/// place; and tells its client id's home what changed.
pub(crate) fn ask_for_session(shard: &mut Shard, conn: ConnId, mqtt: &mut MqttConn) {
    if let Some(wanted) = mqtt.take_wanted() {
        let me = Holder::local(shard.id(), conn);
        shard.want_session(wanted.from, me);
    }
    tell_home(shard, mqtt);
}

/// Sends what `mqtt` has for its client id's home, when that is another
/// node.
pub(crate) fn tell_home(shard: &mut Shard, mqtt: &mut MqttConn) {
    let Some((_, requests)) = mqtt.take_home_requests() else {
        return;
    };
    // Where the id's home is now: the members may have changed since the
    // connection claimed it (its entry went to the new home).
    match shard.client_home(mqtt.client_id()) {
        Some(home) => {
            for request in requests {
                let request = homes::encode(&request, mqtt.client_id(), shard.session_body_max());
                shard.to_node(home, request);
            }
        }
        None => mqtt.apply_here(requests),
    }
}

/// `conn` ends: its session goes to the connection that took it over, if
/// one asked, with what its outbox still held; otherwise the session ends
/// with it, and its will is published if it was still waiting for its
/// delay.
pub(crate) fn end(shard: &Rc<RefCell<Shard>>, conn: ConnId, edge: &Rc<RefCell<EdgeConn>>) {
    let handover = shard.borrow_mut().take_handover(conn);
    if let Some(to) = handover {
        // Nothing more arrives for it; what came is the session's.
        shard.borrow_mut().finish_conn(conn);
        let mut batch = Vec::new();
        if let Some(outbox) = shard.borrow_mut().outbox_mut(conn) {
            outbox.drain_some(&mut batch, usize::MAX);
        }
        if let Some(mqtt) = edge.borrow_mut().mqtt_mut() {
            mqtt.begin_handover();
        }
        take_in(shard, conn, edge, &mut batch);
        let session = edge
            .borrow_mut()
            .mqtt_mut()
            .and_then(MqttConn::take_session);
        shard.borrow_mut().send_session(to, session);
    }
    let mut edge = edge.borrow_mut();
    let Some(mqtt) = edge.mqtt_mut() else {
        return;
    };
    if let Some(will) = mqtt.take_due_will(unix_now_ms(), true) {
        shard.borrow_mut().publish_will(conn, will);
    }
    if let Some(previous) = mqtt.abandon_resume() {
        // It was taking a session over and ends first: the connection that
        // held it is closed at least (one connection per client id).
        shard.borrow_mut().take_over(previous);
    }
    mqtt.release_client_id();
    tell_home(&mut shard.borrow_mut(), mqtt);
}
