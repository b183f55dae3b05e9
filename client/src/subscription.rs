//! Subscriptions: a stream of one topic's messages.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_core::Stream;
use tokio::sync::mpsc;

use crate::{Error, Handle};

/// One message delivered to a [`Subscription`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The message's sequence number in its topic (the first message is 1).
    pub seq: u64,
    /// The body, as published. A slice of the connection's read buffer (no
    /// copy); holding it keeps that buffer chunk alive, so copy payloads that
    /// are kept for long.
    pub payload: Bytes,
}

/// A live subscription to one topic: a [`Stream`] of its messages.
///
/// It yields every message with a sequence number greater than
/// [`start_after`](Subscription::start_after), in order, with no gap (the
/// client checks this and ends the connection on a gap). When the connection
/// ends, the stream yields the messages already received, then one
/// `Err(`[`Error::ConnectionLost`]`)` (or [`Error::Closed`]), then `None`.
///
/// Messages are buffered up to
/// [`ClientConfig::subscription_buffer`](crate::ClientConfig::subscription_buffer);
/// when the buffer is full the connection stops reading, which stalls every
/// other subscription and every answer on the same connection until this
/// subscription is read again. Use separate connections for subscribers that
/// may fall behind.
///
/// Dropping a subscription without [`unsubscribe`](Subscription::unsubscribe)
/// sends `UNSUBSCRIBE` without waiting for the answer.
pub struct Subscription {
    id: u32,
    start_after: u64,
    namespace: String,
    topic: String,
    messages: mpsc::Receiver<Message>,
    handle: Arc<Handle>,
    /// The stream has ended (terminal error reported, or no more items).
    finished: bool,
    /// `unsubscribe()` ran (or is running): `Drop` has nothing to do.
    unsubscribed: bool,
}

impl Subscription {
    pub(crate) fn new(
        id: u32,
        start_after: u64,
        namespace: &str,
        topic: &str,
        messages: mpsc::Receiver<Message>,
        handle: Arc<Handle>,
    ) -> Subscription {
        Subscription {
            id,
            start_after,
            namespace: namespace.to_owned(),
            topic: topic.to_owned(),
            messages,
            handle,
            finished: false,
            unsubscribed: false,
        }
    }

    /// The client-chosen subscription id used on the wire.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The subscription receives every message with a greater sequence number.
    pub fn start_after(&self) -> u64 {
        self.start_after
    }

    /// The subscribed namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The subscribed topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The next message; `None` once the stream has ended.
    ///
    /// The same as [`Stream::poll_next`], without needing a `StreamExt` trait.
    /// Cancel-safe: dropping the future loses no message.
    pub async fn next_message(&mut self) -> Option<Result<Message, Error>> {
        std::future::poll_fn(|cx| Pin::new(&mut *self).poll_next(cx)).await
    }

    /// Ends the subscription: sends `UNSUBSCRIBE` and waits for `UNSUB_OK`.
    /// Messages still in flight are discarded.
    pub async fn unsubscribe(mut self) -> Result<(), Error> {
        self.unsubscribed = true;
        self.messages.close();
        let shared = &self.handle.shared;
        match shared.enqueue_unsubscribe(self.id, true)? {
            Some(answer) => shared.await_answer(answer).await,
            None => Ok(()),
        }
    }
}

impl Stream for Subscription {
    type Item = Result<Message, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.finished {
            return Poll::Ready(None);
        }
        match self.messages.poll_recv(cx) {
            Poll::Ready(Some(message)) => Poll::Ready(Some(Ok(message))),
            Poll::Ready(None) => {
                // Every sender is gone: the connection ended (or the route was
                // removed). Report why, once.
                self.finished = true;
                Poll::Ready(self.handle.shared.terminal_error().map(Err))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if !self.unsubscribed {
            // Fire and forget; fails only when the connection is already over.
            let _ = self.handle.shared.enqueue_unsubscribe(self.id, false);
        }
    }
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("id", &self.id)
            .field("namespace", &self.namespace)
            .field("topic", &self.topic)
            .field("start_after", &self.start_after)
            .finish_non_exhaustive()
    }
}
