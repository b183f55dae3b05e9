//! The buffer between a connection's reader and one [`Subscription`]: a
//! bounded single-consumer queue built for a producer that delivers many
//! items in a row and a consumer that takes them in runs.
//!
//! The reader appends under a short lock, one per run of items it decoded
//! from a read, and wakes the subscription only when it was waiting. The subscription takes everything queued at once
//! (swapping buffers under the lock) and then hands items out of its own
//! buffer without any synchronization, so a busy subscription pays one lock
//! per run of messages instead of a semaphore and channel operation per
//! message. Items count against the bound until the subscription comes
//! back for more after handing out the whole run, so at most `capacity`
//! items are ever buffered.
//!
//! [`Subscription`]: crate::Subscription

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

use crate::Event;

/// Room for items a buffer keeps once emptied (about 200 KiB): more is
/// given back after a burst.
const KEEP_ITEMS: usize = 4096;

/// A queue holding at most `capacity` items (at least 1).
pub(crate) fn channel(capacity: usize) -> (Sender, Receiver) {
    let shared = Arc::new(Shared {
        capacity: capacity.max(1),
        inner: Mutex::new(Inner {
            items: VecDeque::new(),
            held: 0,
            senders: 1,
            closed: false,
            consumer: None,
            producer: None,
        }),
    });
    (
        Sender {
            shared: shared.clone(),
        },
        Receiver {
            shared,
            run: VecDeque::new(),
            taken: 0,
        },
    )
}

struct Shared {
    capacity: usize,
    inner: Mutex<Inner>,
}

struct Inner {
    /// Appended by senders, not yet taken by the receiver.
    items: VecDeque<Event>,
    /// Items counting against the bound: those in `items` and those the
    /// receiver took in its current run.
    held: usize,
    /// Live `Sender`s; the receiver ends once none is left and it has
    /// handed out everything.
    senders: usize,
    /// The receiver is closed or gone: sends fail.
    closed: bool,
    /// The receiver waiting for items.
    consumer: Option<Waker>,
    /// A sender waiting for room.
    producer: Option<Waker>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Nothing here panics while holding the lock; a poisoned queue still
        // holds consistent data.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Why [`Sender::try_send`] did not queue an item.
#[derive(Debug)]
pub(crate) enum TrySendError {
    /// `capacity` items are buffered; the item comes back.
    Full(Event),
    /// The receiver is closed or gone; the item is dropped.
    Closed,
}

/// The reader's end.
pub(crate) struct Sender {
    shared: Arc<Shared>,
}

impl Sender {
    /// Queues `event` unless the queue is full or the receiver is gone.
    pub(crate) fn try_send(&self, event: Event) -> Result<(), TrySendError> {
        self.sending().push(event)
    }

    /// Holds the queue for a run of [`Sending::push`]es: one lock, and at
    /// most one wake-up of the receiver, for the whole run.
    pub(crate) fn sending(&self) -> Sending<'_> {
        Sending {
            inner: Some(self.shared.lock()),
            capacity: self.shared.capacity,
            pushed: false,
        }
    }

    /// Waits until an item fits (`true`) or the receiver is gone (`false`).
    /// Only one sender may wait at a time (the connection's reader).
    pub(crate) async fn room(&self) -> bool {
        std::future::poll_fn(|cx| {
            let mut inner = self.shared.lock();
            if inner.closed {
                Poll::Ready(false)
            } else if inner.held < self.shared.capacity {
                Poll::Ready(true)
            } else {
                inner.producer = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await
    }
}

/// The queue held by its sender ([`Sender::sending`]); the receiver is woken
/// once the hold ends, if anything was pushed and it was waiting.
pub(crate) struct Sending<'a> {
    inner: Option<MutexGuard<'a, Inner>>,
    capacity: usize,
    pushed: bool,
}

impl Sending<'_> {
    /// Queues `event` unless the queue is full or the receiver is gone.
    pub(crate) fn push(&mut self, event: Event) -> Result<(), TrySendError> {
        let Some(inner) = self.inner.as_mut() else {
            return Err(TrySendError::Closed);
        };
        if inner.closed {
            return Err(TrySendError::Closed);
        }
        if inner.held >= self.capacity {
            return Err(TrySendError::Full(event));
        }
        inner.items.push_back(event);
        inner.held += 1;
        self.pushed = true;
        Ok(())
    }
}

impl Drop for Sending<'_> {
    fn drop(&mut self) {
        let consumer = match self.inner.as_mut() {
            Some(inner) if self.pushed => inner.consumer.take(),
            _ => None,
        };
        // Unlock first: the woken receiver takes the lock straight away.
        self.inner = None;
        if let Some(waker) = consumer {
            waker.wake();
        }
    }
}

impl Clone for Sender {
    fn clone(&self) -> Sender {
        self.shared.lock().senders += 1;
        Sender {
            shared: self.shared.clone(),
        }
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        let mut inner = self.shared.lock();
        inner.senders -= 1;
        let consumer = if inner.senders == 0 {
            inner.consumer.take()
        } else {
            None
        };
        drop(inner);
        if let Some(waker) = consumer {
            waker.wake();
        }
    }
}

/// The subscription's end.
pub(crate) struct Receiver {
    shared: Arc<Shared>,
    /// The items taken in the current run, handed out front first.
    run: VecDeque<Event>,
    /// Items handed out of `run` since it was taken: they leave the bound
    /// when the receiver next comes back for more.
    taken: usize,
}

impl Receiver {
    /// The next item; `None` once every sender is gone and everything
    /// queued was handed out (or after [`Receiver::close`]).
    pub(crate) fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        if let Some(event) = self.run.pop_front() {
            self.taken += 1;
            return Poll::Ready(Some(event));
        }
        let mut inner = self.shared.lock();
        inner.held -= std::mem::take(&mut self.taken);
        // The run just handed out made room: a waiting sender may go on.
        let producer = inner.producer.take();
        let result = if !inner.items.is_empty() {
            std::mem::swap(&mut inner.items, &mut self.run);
            // The emptied run becomes the senders' buffer: one burst must not
            // leave it holding memory for good.
            if inner.items.capacity() > KEEP_ITEMS {
                inner.items.shrink_to(KEEP_ITEMS);
            }
            Poll::Ready(self.run.pop_front().inspect(|_| self.taken = 1))
        } else if inner.senders == 0 || inner.closed {
            Poll::Ready(None)
        } else {
            inner.consumer = Some(cx.waker().clone());
            Poll::Pending
        };
        drop(inner);
        if let Some(waker) = producer {
            waker.wake();
        }
        result
    }

    /// Refuses further items; what is buffered is dropped.
    pub(crate) fn close(&mut self) {
        let mut inner = self.shared.lock();
        inner.closed = true;
        let items = std::mem::take(&mut inner.items);
        inner.held = 0;
        let producer = inner.producer.take();
        drop(inner);
        drop(items);
        self.run.clear();
        self.taken = 0;
        if let Some(waker) = producer {
            waker.wake();
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Message;
    use bytes::Bytes;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;

    fn message(seq: u64) -> Event {
        Event::Message(Message {
            epoch: 1,
            seq,
            payload: Bytes::new(),
            name: std::sync::Arc::new(crate::message::TopicName {
                namespace: "ns".into(),
                topic: "t".into(),
            }),
            format: corebus_net::PayloadFormat::Plain,
            headers: None,
        })
    }

    fn seq(event: &Event) -> u64 {
        match event {
            Event::Message(message) => message.seq,
            Event::Discontinuity(gap) => panic!("unexpected gap {gap:?}"),
        }
    }

    /// Counts its wake-ups.
    #[derive(Default)]
    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn poll(rx: &mut Receiver, count: &Arc<Count>) -> Poll<Option<Event>> {
        let waker = Waker::from(count.clone());
        rx.poll_recv(&mut Context::from_waker(&waker))
    }

    #[test]
    fn items_come_out_in_order_and_the_bound_holds_until_a_run_is_handed_out() {
        let (tx, mut rx) = channel(3);
        let woken = Arc::new(Count::default());
        for n in 1..=3 {
            tx.try_send(message(n)).expect("room");
        }
        assert!(matches!(
            tx.try_send(message(4)),
            Err(TrySendError::Full(_))
        ));
        // The receiver takes the run of three; they still count until it
        // comes back for more.
        assert!(matches!(poll(&mut rx, &woken), Poll::Ready(Some(e)) if seq(&e) == 1));
        assert!(matches!(
            tx.try_send(message(4)),
            Err(TrySendError::Full(_))
        ));
        assert!(matches!(poll(&mut rx, &woken), Poll::Ready(Some(e)) if seq(&e) == 2));
        assert!(matches!(poll(&mut rx, &woken), Poll::Ready(Some(e)) if seq(&e) == 3));
        // Coming back finds nothing and frees the room.
        assert!(poll(&mut rx, &woken).is_pending());
        for n in 4..=6 {
            tx.try_send(message(n)).expect("room again");
        }
        // One wake-up for the waiting receiver, not one per item.
        assert_eq!(woken.0.load(Ordering::SeqCst), 1);
        for n in 4..=6 {
            assert!(matches!(poll(&mut rx, &woken), Poll::Ready(Some(e)) if seq(&e) == n));
        }
    }

    #[test]
    fn the_receiver_ends_when_every_sender_is_gone_after_what_was_queued() {
        let (tx, mut rx) = channel(8);
        let woken = Arc::new(Count::default());
        let second = tx.clone();
        tx.try_send(message(1)).expect("room");
        drop(tx);
        assert!(matches!(poll(&mut rx, &woken), Poll::Ready(Some(e)) if seq(&e) == 1));
        assert!(poll(&mut rx, &woken).is_pending());
        drop(second);
        assert_eq!(
            woken.0.load(Ordering::SeqCst),
            1,
            "the last sender wakes the receiver"
        );
        assert!(matches!(poll(&mut rx, &woken), Poll::Ready(None)));
    }

    #[tokio::test]
    async fn a_full_queue_makes_the_sender_wait_for_room_or_the_receivers_end() {
        let (tx, mut rx) = channel(1);
        tx.try_send(message(1)).expect("room");
        let waiting = tokio::spawn(async move {
            let fits = tx.room().await;
            (fits, tx)
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        let first = std::future::poll_fn(|cx| rx.poll_recv(cx)).await;
        assert_eq!(first.as_ref().map(seq), Some(1));
        // Handing out the run is not enough; coming back for more frees it.
        let next = tokio::time::timeout(
            std::time::Duration::from_millis(50),
            std::future::poll_fn(|cx| rx.poll_recv(cx)),
        )
        .await;
        assert!(next.is_err(), "nothing more was sent");
        let (fits, tx) = waiting.await.expect("no panic");
        assert!(fits);
        tx.try_send(message(2)).expect("room");
        assert!(matches!(
            tx.try_send(message(3)),
            Err(TrySendError::Full(_))
        ));
        let waiting = tokio::spawn(async move { tx.room().await });
        tokio::task::yield_now().await;
        drop(rx);
        assert!(
            !waiting.await.expect("no panic"),
            "a gone receiver ends the wait"
        );
    }

    #[test]
    fn buffers_give_back_a_bursts_memory() {
        let (tx, mut rx) = channel(100_000);
        let woken = Arc::new(Count::default());
        for n in 0..20_000 {
            tx.try_send(message(n)).expect("room");
        }
        for _ in 0..20_000 {
            assert!(poll(&mut rx, &woken).is_ready());
        }
        tx.try_send(message(20_000)).expect("room");
        assert!(poll(&mut rx, &woken).is_ready());
        let inner = rx.shared.lock();
        assert!(
            inner.items.capacity() <= KEEP_ITEMS,
            "{}",
            inner.items.capacity()
        );
    }

    #[test]
    fn a_closed_receiver_refuses_items_and_drops_what_it_held() {
        let (tx, mut rx) = channel(4);
        let woken = Arc::new(Count::default());
        tx.try_send(message(1)).expect("room");
        rx.close();
        assert!(matches!(tx.try_send(message(2)), Err(TrySendError::Closed)));
        assert!(matches!(poll(&mut rx, &woken), Poll::Ready(None)));
    }
}
