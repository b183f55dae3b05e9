//! An MQTT session without its connection (see `mqtt/session.rs`): the
//! connection's task holds it after the socket ended, queueing what
//! arrives, until a new connection takes it over, it expires, or the
//! broker ends it; then it goes to that connection or ends, its will
//! published if one is still due.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use bytes::BytesMut;
use tracing::debug;

use crate::auth::unix_now_ms;
use crate::conn::{encode_out_frame, next_batch};
use crate::edge::EdgeConn;
use crate::engine::{ConnId, Shard};

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
    let mut head = BytesMut::new();
    let mut segments = Vec::new();
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
                for frame in batch.drain(..) {
                    encode_out_frame(frame, &mut head, &mut segments);
                }
                if !head.is_empty() {
                    segments.push(head.split().freeze());
                }
                // Deliveries are queued; answers to a client that is not
                // there are dropped.
                let arrived = shard.borrow_mut().take_arrived_session(conn);
                let mut edge = edge.borrow_mut();
                if let (Some(session), Some(mqtt)) = (arrived, edge.mqtt_mut()) {
                    // Taken over from another connection just before this
                    // one's client went: kept for the next.
                    mqtt.resume(session);
                }
                let _ = edge.wrap(&mut segments);
                let drops = edge.mqtt_mut().map_or(0, |mqtt| mqtt.take_drops());
                drop(edge);
                shard.borrow_mut().note_session_drops(drops);
                segments.clear();
                shard.borrow_mut().conn_drained(conn, 0);
                if closing || shard.borrow().is_draining() {
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

/// `conn` ends: its session goes to the connection that took it over, if
/// one asked; otherwise the session ends with it, and its will is
/// published if it was still waiting for its delay.
pub(crate) fn end(shard: &Rc<RefCell<Shard>>, conn: ConnId, edge: &Rc<RefCell<EdgeConn>>) {
    let handover = shard.borrow_mut().take_handover(conn);
    let mut edge = edge.borrow_mut();
    let Some(mqtt) = edge.mqtt_mut() else {
        return;
    };
    match handover {
        Some(to) => {
            let session = mqtt.take_session();
            shard.borrow_mut().send_session(to, session);
        }
        None => {
            if let Some(will) = mqtt.take_due_will(unix_now_ms(), true) {
                shard.borrow_mut().publish_will(conn, will);
            }
        }
    }
    mqtt.release_client_id();
}
