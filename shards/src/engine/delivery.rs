//! Offering messages to one connection under its slow-consumer policy, and
//! reporting what was dropped.

use bytes::Bytes;
use corebus_net::{Epoch, Seq};

use super::{ConnState, Lost, SlowConsumerPolicy};
use crate::outbox::{OutFrame, PushError};

/// `body` as a connection speaking protocol `version` must get it, when
/// that is not as it is: a version 1 connection gets messages without their
/// headers (a copy; version 1 has no such block).
pub(super) fn body_for_version(version: u16, body: &[u8]) -> Option<Bytes> {
    if version >= 2 {
        return None;
    }
    corebus_net::strip_headers(body)
}

/// What happened to one message offered to one subscription.
pub(super) enum Delivery {
    Queued,
    /// Outbox full, `drop` policy: recorded as lost, reported later.
    Dropped,
    /// Outbox full, `disconnect` policy: the caller closes the connection.
    Slow,
    /// The connection is closing.
    Closing,
}

/// Offers one message to one subscription of a connection, applying the
/// slow-consumer policy.
pub(super) fn push_message(
    state: &mut ConnState,
    sub_id: u32,
    epoch: Epoch,
    seq: Seq,
    payload: &Bytes,
    policy: SlowConsumerPolicy,
) -> Delivery {
    let stripped;
    let payload = match state.body_for_version(payload) {
        Some(body) => {
            stripped = body;
            &stripped
        }
        None => payload,
    };
    if !state.lossy.is_empty() {
        // Resume only once the queue is down to half its bound, so a consumer
        // that keeps up only barely is not told about one message at a time.
        if state.outbox.held_bytes() <= state.outbox.limit_bytes() / 2 {
            report_losses(state);
        } else if let Some(lost) = state
            .subscriptions
            .get_mut(&sub_id)
            .and_then(|sub| sub.lost.as_mut())
        {
            lost.last = seq;
            return Delivery::Dropped;
        }
    }
    match state.outbox.push_message(sub_id, epoch, seq, payload) {
        Ok(()) => Delivery::Queued,
        Err(PushError::Closing) => Delivery::Closing,
        Err(PushError::Full) if policy == SlowConsumerPolicy::Disconnect => Delivery::Slow,
        Err(PushError::Full) => {
            if let Some(sub) = state.subscriptions.get_mut(&sub_id) {
                sub.lost = Some(Lost {
                    epoch,
                    first: seq,
                    last: seq,
                });
                state.lossy.push(sub_id);
            }
            Delivery::Dropped
        }
    }
}

/// Queues one `DISCONTINUITY` per subscription that lost messages.
pub(super) fn report_losses(state: &mut ConnState) {
    for sub_id in std::mem::take(&mut state.lossy) {
        let Some(lost) = state
            .subscriptions
            .get_mut(&sub_id)
            .and_then(|sub| sub.lost.take())
        else {
            continue;
        };
        // Control frames may use twice the bound, which a queue at half of
        // it always has room for.
        let _ = state.outbox.push(OutFrame::Discontinuity {
            sub_id,
            epoch: lost.epoch,
            last_seq: lost.first - 1,
            next_seq: lost.last + 1,
        });
    }
}
