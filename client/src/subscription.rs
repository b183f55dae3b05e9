//! Subscriptions: a stream of one topic's messages and discontinuities.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use corebus_net::ResumePoint;
use futures_core::Stream;

use crate::{Error, Handle};

/// One message delivered to a [`Subscription`].
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), corebus_client::Error> {
/// # let broker = corebus_shards::start(corebus_shards::ServerConfig {
/// #     listen: "127.0.0.1:0".parse().expect("an address"),
/// #     shards: Some(1),
/// #     ..Default::default()
/// # }).expect("the broker starts");
/// # let addr = broker.local_addr();
/// let client = corebus_client::Client::connect(addr).await?;
/// let mut news = client.subscribe("app", "news").await?;
/// client.publish("app", "news", "hello").await?;
/// let message = news.next_message().await.expect("open")?;
/// assert_eq!((message.seq, &message.payload[..]), (1, &b"hello"[..]));
/// println!("{}/{} #{} of epoch {:x}", message.namespace(), message.topic(), message.seq, message.epoch);
/// # broker.stop();
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The topic epoch the message belongs to: a random id of one incarnation
    /// of the topic's history on the broker. Sequence numbers restart at 1 in
    /// a new epoch.
    pub epoch: u64,
    /// The message's sequence number in its topic epoch (the first is 1).
    pub seq: u64,
    /// The body, as published. A slice of the connection's read buffer (no
    /// copy); holding it keeps that buffer chunk alive, so copy payloads that
    /// are kept for long.
    pub payload: Bytes,
    /// The namespace and topic, shared by every message of the
    /// subscription.
    pub(crate) name: Arc<TopicName>,
}

/// A subscription's namespace and topic.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct TopicName {
    pub(crate) namespace: Box<str>,
    pub(crate) topic: Box<str>,
}

impl Message {
    /// The namespace the message was published to.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), corebus_client::Error> {
    /// # let broker = corebus_shards::start(corebus_shards::ServerConfig {
    /// #     listen: "127.0.0.1:0".parse().expect("an address"),
    /// #     shards: Some(1),
    /// #     ..Default::default()
    /// # }).expect("the broker starts");
    /// # let addr = broker.local_addr().to_string();
    /// let client = corebus_client::Client::connect(addr.as_str()).await?;
    /// let mut orders = client.subscribe("shop", "orders").await?;
    /// client.publish("shop", "orders", "one").await?;
    /// let message = orders.next_message().await.expect("open")?;
    /// assert_eq!(message.namespace(), "shop");
    /// assert_eq!(message.topic(), "orders");
    /// assert_eq!(message.seq, 1);
    /// # broker.stop();
    /// # Ok(())
    /// # }
    /// ```
    pub fn namespace(&self) -> &str {
        &self.name.namespace
    }

    /// The topic the message was published to (see
    /// [`Message::namespace`] for an example).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), corebus_client::Error> {
    /// # let broker = corebus_shards::start(corebus_shards::ServerConfig {
    /// #     listen: "127.0.0.1:0".parse().expect("an address"),
    /// #     shards: Some(1),
    /// #     ..Default::default()
    /// # }).expect("the broker starts");
    /// # let addr = broker.local_addr();
    /// let client = corebus_client::Client::connect(addr).await?;
    /// let mut sub = client.subscribe("app", "news").await?;
    /// client.publish("app", "news", "hello").await?;
    /// let message = sub.next_message().await.expect("open")?;
    /// assert_eq!(message.topic(), "news");
    /// # broker.stop();
    /// # Ok(())
    /// # }
    /// ```
    pub fn topic(&self) -> &str {
        &self.name.topic
    }
}

/// Messages of a subscription were lost.
///
/// Messages `last_seq + 1 ..= next_seq - 1` were lost; if `epoch` differs from
/// the epoch of the subscription's previous item, the topic's history
/// restarted (the broker lost its state) and `last_seq` is a sequence number
/// of the older epoch. The next message of the subscription carries `epoch`
/// and `next_seq`.
///
/// Reported when a resume point was no longer in the broker's replay buffer
/// (an outage longer than it covers), when the epoch changed, and when the
/// broker dropped messages because the connection did not read fast enough
/// (its slow-consumer `drop` policy).
///
/// ```
/// use corebus_client::Discontinuity;
///
/// // Messages 4 to 9 of the epoch were lost; the next one is 10.
/// let gap = Discontinuity { epoch: 0x1f, last_seq: 3, next_seq: 10 };
/// let lost = gap.last_seq + 1..gap.next_seq;
/// assert_eq!(lost.count(), 6);
/// assert_eq!(
///     gap.to_string(),
///     "messages lost after seq 3: the next message is seq 10 of epoch 0x1f"
/// );
///
/// // The broker lost its state: a new epoch starts again at seq 1.
/// let restart = Discontinuity { epoch: 0x2a, last_seq: 41, next_seq: 1 };
/// assert_eq!(
///     restart.to_string(),
///     "the topic's history restarted after seq 41: epoch 0x2a continues at seq 1"
/// );
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Discontinuity {
    /// The epoch `next_seq` belongs to.
    pub epoch: u64,
    /// The last sequence number received before the loss (or the one before
    /// the resume point asked for), possibly of an older epoch.
    pub last_seq: u64,
    /// The sequence number of the next message.
    pub next_seq: u64,
}

impl std::fmt::Display for Discontinuity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.next_seq <= self.last_seq.saturating_add(1) {
            // Nothing in between: only a new epoch explains the jump.
            write!(
                f,
                "the topic's history restarted after seq {}: epoch {:#x} continues at seq {}",
                self.last_seq, self.epoch, self.next_seq
            )
        } else {
            write!(
                f,
                "messages lost after seq {}: the next message is seq {} of epoch {:#x}",
                self.last_seq, self.next_seq, self.epoch
            )
        }
    }
}

/// An item of a [`Subscription`]'s stream.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), corebus_client::Error> {
/// # let broker = corebus_shards::start(corebus_shards::ServerConfig {
/// #     listen: "127.0.0.1:0".parse().expect("an address"),
/// #     shards: Some(1),
/// #     ..Default::default()
/// # }).expect("the broker starts");
/// # let addr = broker.local_addr();
/// let client = corebus_client::Client::connect(addr).await?;
/// let mut sub = client.subscribe("app", "news").await?;
/// client.publish("app", "news", "hello").await?;
/// match sub.next_event().await.expect("open")? {
///     corebus_client::Event::Message(message) => assert_eq!(message.seq, 1),
///     corebus_client::Event::Discontinuity(gap) => eprintln!("lost: {gap}"),
/// }
/// # broker.stop();
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The next message, in order.
    Message(Message),
    /// Messages were lost between the previous item and the next message.
    Discontinuity(Discontinuity),
}

/// Where [`Client::subscribe_from`](crate::Client::subscribe_from) starts.
///
/// Messages from the start point on that the broker still holds in its
/// replay buffer are replayed first, then live messages follow. A point the
/// buffer no longer covers, or a point in another epoch, is answered with a
/// [`Discontinuity`] first, then everything the buffer holds. A point beyond
/// the topic's last message starts with the next message published.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), corebus_client::Error> {
/// # let broker = corebus_shards::start(corebus_shards::ServerConfig {
/// #     listen: "127.0.0.1:0".parse().expect("an address"),
/// #     shards: Some(1),
/// #     ..Default::default()
/// # }).expect("the broker starts");
/// # let addr = broker.local_addr();
/// use corebus_client::{Event, ResumeFrom};
///
/// let client = corebus_client::Client::connect(addr).await?;
/// let mut sub = client.subscribe("app", "news").await?;
/// for word in ["one", "two", "three"] {
///     client.publish("app", "news", word).await?;
/// }
/// // Read one message, note the position, and stop.
/// sub.next_message().await.expect("open")?;
/// let (epoch, next_seq) = (sub.epoch(), sub.last_seq() + 1);
/// sub.unsubscribe().await?;
///
/// // Later: continue from there; the broker replays what its buffer holds.
/// let mut again = client
///     .subscribe_from("app", "news", ResumeFrom::Point { epoch, next_seq })
///     .await?;
/// match again.next_event().await.expect("open")? {
///     Event::Message(message) => assert_eq!(&message.payload[..], b"two"),
///     Event::Discontinuity(gap) => panic!("the buffer holds it: {gap}"),
/// }
/// # broker.stop();
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResumeFrom {
    /// Continue a history recorded earlier: `next_seq` of `epoch` (the
    /// [`Subscription::epoch`] and [`Subscription::last_seq`]` + 1` of an
    /// earlier subscription). Epoch 0 means the current epoch.
    Point {
        /// The epoch of the recorded history.
        epoch: u64,
        /// The first sequence number wanted (0 counts as 1).
        next_seq: u64,
    },
    /// `next_seq` of whatever the topic's current epoch is (0 counts as 1), as
    /// `corebus sub --from SEQ` does.
    Seq(u64),
}

impl ResumeFrom {
    pub(crate) fn point(self) -> ResumePoint {
        let (epoch, next_seq) = match self {
            ResumeFrom::Point { epoch, next_seq } => (epoch, next_seq),
            ResumeFrom::Seq(next_seq) => (0, next_seq),
        };
        // 0 on the wire means "no resume".
        ResumePoint {
            epoch,
            next_seq: next_seq.max(1),
        }
    }
}

/// A live subscription to one topic: a [`Stream`] of [`Event`]s.
///
/// It yields every message with a sequence number greater than
/// [`start_after`](Subscription::start_after), in order, each exactly once;
/// a gap is never silent: a [`Discontinuity`] item says exactly what was lost
/// (the client checks this, and ends the connection on a gap the broker did
/// not report).
///
/// When the connection is lost and [`ClientConfig::reconnect`] is on (the
/// default), the client reconnects and resubscribes under the same id from
/// the last message received: the stream just goes on, with the messages of
/// the outage replayed, or a [`Discontinuity`] when the broker's replay buffer
/// no longer holds them. When the client gives up reconnecting (or is not
/// configured to), is closed, or the broker refuses the resubscription, the
/// stream yields the items already received, then one `Err` (for example
/// [`Error::ConnectionLost`] or [`Error::Closed`]), then `None`.
///
/// Items are buffered up to [`ClientConfig::subscription_buffer`]; when the
/// buffer is full the connection stops reading, which stalls every other
/// subscription and every answer on the same connection until this
/// subscription is read again. Use separate connections for subscribers that
/// may fall behind.
///
/// Dropping a subscription without [`unsubscribe`](Subscription::unsubscribe)
/// sends `UNSUBSCRIBE` without waiting for the answer.
///
/// [`ClientConfig::reconnect`]: crate::ClientConfig::reconnect
/// [`ClientConfig::subscription_buffer`]: crate::ClientConfig::subscription_buffer
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), corebus_client::Error> {
/// # let broker = corebus_shards::start(corebus_shards::ServerConfig {
/// #     listen: "127.0.0.1:0".parse().expect("an address"),
/// #     shards: Some(1),
/// #     ..Default::default()
/// # }).expect("the broker starts");
/// # let addr = broker.local_addr();
/// use futures_util::StreamExt;
///
/// let client = corebus_client::Client::connect(addr).await?;
/// let mut sub = client.subscribe("app", "news").await?;
/// client.publish("app", "news", "hello").await?;
/// // A Stream of events: `next()` from StreamExt, or `next_event()`.
/// if let Some(event) = sub.next().await {
///     println!("{:?}", event?);
/// }
/// sub.unsubscribe().await?;
/// # broker.stop();
/// # Ok(())
/// # }
/// ```
pub struct Subscription {
    id: u32,
    start_after: u64,
    epoch: u64,
    last_seq: u64,
    namespace: String,
    topic: String,
    events: crate::queue::Receiver,
    handle: Arc<Handle>,
    /// The stream has ended (terminal error reported, or no more items).
    finished: bool,
    /// `unsubscribe()` ran (or is running): `Drop` has nothing to do.
    unsubscribed: bool,
}

/// What `SUB_OK` said about a new subscription.
pub(crate) struct Started {
    pub(crate) sub_id: u32,
    pub(crate) epoch: u64,
    pub(crate) start_after: u64,
}

impl Subscription {
    pub(crate) fn new(
        started: Started,
        namespace: &str,
        topic: &str,
        events: crate::queue::Receiver,
        handle: Arc<Handle>,
    ) -> Subscription {
        Subscription {
            id: started.sub_id,
            start_after: started.start_after,
            epoch: started.epoch,
            last_seq: started.start_after,
            namespace: namespace.to_owned(),
            topic: topic.to_owned(),
            events,
            handle,
            finished: false,
            unsubscribed: false,
        }
    }

    /// The client-chosen subscription id used on the wire; it stays the same
    /// across reconnections.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), corebus_client::Error> {
    /// # let broker = corebus_shards::start(corebus_shards::ServerConfig {
    /// #     listen: "127.0.0.1:0".parse().expect("an address"),
    /// #     shards: Some(1),
    /// #     ..Default::default()
    /// # }).expect("the broker starts");
    /// # let addr = broker.local_addr();
    /// let client = corebus_client::Client::connect(addr).await?;
    /// let first = client.subscribe("app", "news").await?;
    /// let second = client.subscribe("app", "news").await?;
    /// assert_ne!(first.id(), second.id());
    /// # broker.stop();
    /// # Ok(())
    /// # }
    /// ```
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The start point the broker gave when the subscription began: it
    /// receives every message of the first epoch with a greater sequence
    /// number. Not changed by reconnections.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), corebus_client::Error> {
    /// # let broker = corebus_shards::start(corebus_shards::ServerConfig {
    /// #     listen: "127.0.0.1:0".parse().expect("an address"),
    /// #     shards: Some(1),
    /// #     ..Default::default()
    /// # }).expect("the broker starts");
    /// # let addr = broker.local_addr();
    /// let client = corebus_client::Client::connect(addr).await?;
    /// client.publish("app", "news", "before").await?;
    /// let sub = client.subscribe("app", "news").await?;
    /// // Seq 1 was published before: the subscription gets seq 2 on.
    /// assert_eq!(sub.start_after(), 1);
    /// # broker.stop();
    /// # Ok(())
    /// # }
    /// ```
    pub fn start_after(&self) -> u64 {
        self.start_after
    }

    /// The epoch of the last item taken from the stream (at first, the epoch
    /// the broker reported when the subscription began).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), corebus_client::Error> {
    /// # let broker = corebus_shards::start(corebus_shards::ServerConfig {
    /// #     listen: "127.0.0.1:0".parse().expect("an address"),
    /// #     shards: Some(1),
    /// #     ..Default::default()
    /// # }).expect("the broker starts");
    /// # let addr = broker.local_addr();
    /// let client = corebus_client::Client::connect(addr).await?;
    /// let mut sub = client.subscribe("app", "news").await?;
    /// client.publish("app", "news", "hello").await?;
    /// let message = sub.next_message().await.expect("open")?;
    /// assert_eq!(sub.epoch(), message.epoch);
    /// # broker.stop();
    /// # Ok(())
    /// # }
    /// ```
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The subscription's position in [`epoch`](Subscription::epoch): every
    /// message up to this sequence number was taken from the stream or
    /// reported lost, and the next message carries `last_seq() + 1`. At first
    /// [`start_after`](Subscription::start_after); after a message, its
    /// sequence number; after a [`Discontinuity`], `next_seq - 1`.
    ///
    /// `ResumeFrom::Point { epoch: sub.epoch(), next_seq: sub.last_seq() + 1 }`
    /// continues from here in a later subscription.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), corebus_client::Error> {
    /// # let broker = corebus_shards::start(corebus_shards::ServerConfig {
    /// #     listen: "127.0.0.1:0".parse().expect("an address"),
    /// #     shards: Some(1),
    /// #     ..Default::default()
    /// # }).expect("the broker starts");
    /// # let addr = broker.local_addr();
    /// let client = corebus_client::Client::connect(addr).await?;
    /// let mut sub = client.subscribe("app", "news").await?;
    /// assert_eq!(sub.last_seq(), 0);
    /// client.publish("app", "news", "hello").await?;
    /// sub.next_message().await.expect("open")?;
    /// assert_eq!(sub.last_seq(), 1);
    /// # broker.stop();
    /// # Ok(())
    /// # }
    /// ```
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// The subscribed namespace.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), corebus_client::Error> {
    /// # let broker = corebus_shards::start(corebus_shards::ServerConfig {
    /// #     listen: "127.0.0.1:0".parse().expect("an address"),
    /// #     shards: Some(1),
    /// #     ..Default::default()
    /// # }).expect("the broker starts");
    /// # let addr = broker.local_addr();
    /// let client = corebus_client::Client::connect(addr).await?;
    /// let mut sub = client.subscribe("app", "news").await?;
    /// assert_eq!(sub.namespace(), "app");
    /// # broker.stop();
    /// # Ok(())
    /// # }
    /// ```
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The subscribed topic.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), corebus_client::Error> {
    /// # let broker = corebus_shards::start(corebus_shards::ServerConfig {
    /// #     listen: "127.0.0.1:0".parse().expect("an address"),
    /// #     shards: Some(1),
    /// #     ..Default::default()
    /// # }).expect("the broker starts");
    /// # let addr = broker.local_addr();
    /// let client = corebus_client::Client::connect(addr).await?;
    /// let mut sub = client.subscribe("app", "news").await?;
    /// assert_eq!(sub.topic(), "news");
    /// # broker.stop();
    /// # Ok(())
    /// # }
    /// ```
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The next item; `None` once the stream has ended.
    ///
    /// The same as [`Stream::poll_next`], without needing a `StreamExt` trait.
    /// Cancel-safe: dropping the future loses no item.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), corebus_client::Error> {
    /// # let broker = corebus_shards::start(corebus_shards::ServerConfig {
    /// #     listen: "127.0.0.1:0".parse().expect("an address"),
    /// #     shards: Some(1),
    /// #     ..Default::default()
    /// # }).expect("the broker starts");
    /// # let addr = broker.local_addr();
    /// let client = corebus_client::Client::connect(addr).await?;
    /// let mut sub = client.subscribe("app", "news").await?;
    /// client.publish("app", "news", "hello").await?;
    /// let item = sub.next_event().await;
    /// assert!(matches!(item, Some(Ok(corebus_client::Event::Message(_)))));
    /// # broker.stop();
    /// # Ok(())
    /// # }
    /// ```
    pub async fn next_event(&mut self) -> Option<Result<Event, Error>> {
        std::future::poll_fn(|cx| Pin::new(&mut *self).poll_next(cx)).await
    }

    /// The next message; `None` once the stream has ended.
    ///
    /// A [`Discontinuity`] comes back as `Some(Err(`[`Error::Discontinuity`]`))`,
    /// which does not end the stream: the next call returns the message after
    /// the gap. Any other error is the stream's last item. Cancel-safe.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), corebus_client::Error> {
    /// # let broker = corebus_shards::start(corebus_shards::ServerConfig {
    /// #     listen: "127.0.0.1:0".parse().expect("an address"),
    /// #     shards: Some(1),
    /// #     ..Default::default()
    /// # }).expect("the broker starts");
    /// # let addr = broker.local_addr();
    /// let client = corebus_client::Client::connect(addr).await?;
    /// let mut sub = client.subscribe("app", "news").await?;
    /// client.publish("app", "news", "hello").await?;
    /// while let Some(item) = sub.next_message().await {
    ///     match item {
    ///         Ok(message) => {
    ///             assert_eq!(&message.payload[..], b"hello");
    ///             break;
    ///         }
    ///         // Reported, and the stream goes on.
    ///         Err(corebus_client::Error::Discontinuity(gap)) => eprintln!("lost: {gap}"),
    ///         Err(err) => return Err(err),
    ///     }
    /// }
    /// # broker.stop();
    /// # Ok(())
    /// # }
    /// ```
    pub async fn next_message(&mut self) -> Option<Result<Message, Error>> {
        match self.next_event().await? {
            Ok(Event::Message(message)) => Some(Ok(message)),
            Ok(Event::Discontinuity(gap)) => Some(Err(Error::Discontinuity(gap))),
            Err(err) => Some(Err(err)),
        }
    }

    /// Ends the subscription: sends `UNSUBSCRIBE` and waits for `UNSUB_OK`.
    /// Messages still in flight are discarded. While the client is
    /// reconnecting there is nothing to tell the broker, and this returns at
    /// once.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), corebus_client::Error> {
    /// # let broker = corebus_shards::start(corebus_shards::ServerConfig {
    /// #     listen: "127.0.0.1:0".parse().expect("an address"),
    /// #     shards: Some(1),
    /// #     ..Default::default()
    /// # }).expect("the broker starts");
    /// # let addr = broker.local_addr();
    /// let client = corebus_client::Client::connect(addr).await?;
    /// let mut sub = client.subscribe("app", "news").await?;
    /// sub.unsubscribe().await?;
    /// // Nothing is delivered for it any more; the client goes on.
    /// client.publish("app", "news", "unheard").await?;
    /// # broker.stop();
    /// # Ok(())
    /// # }
    /// ```
    pub async fn unsubscribe(mut self) -> Result<(), Error> {
        self.unsubscribed = true;
        self.events.close();
        let shared = &self.handle.shared;
        match shared.enqueue_unsubscribe(self.id, true)? {
            Some(answer) => shared.await_answer(answer).await,
            None => Ok(()),
        }
    }
}

impl Stream for Subscription {
    type Item = Result<Event, Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.finished {
            return Poll::Ready(None);
        }
        match self.events.poll_recv(cx) {
            Poll::Ready(Some(event)) => {
                match &event {
                    Event::Message(message) => {
                        self.epoch = message.epoch;
                        self.last_seq = message.seq;
                    }
                    Event::Discontinuity(gap) => {
                        self.epoch = gap.epoch;
                        self.last_seq = gap.next_seq.saturating_sub(1);
                    }
                }
                Poll::Ready(Some(Ok(event)))
            }
            Poll::Ready(None) => {
                // Every sender is gone: the client ended, or this subscription
                // did. Report why, once.
                self.finished = true;
                let id = self.id;
                Poll::Ready(self.handle.shared.subscription_end(id).map(Err))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if !self.unsubscribed {
            // Fire and forget; fails only when the client is already over.
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
            .field("epoch", &self.epoch)
            .field("last_seq", &self.last_seq)
            .finish_non_exhaustive()
    }
}
