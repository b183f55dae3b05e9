//! Subscriptions: a stream of one topic's messages and discontinuities.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_core::Stream;

use corebus_net::{PayloadFormat, ResumePoint};

use crate::connection::{check_names, Started};
use crate::{Client, Error, Event, Handle, Message, ResumeFrom};

impl Client {
    /// Subscribes to a topic and waits for `SUB_OK` (within
    /// [`ClientConfig::request_timeout`]).
    ///
    /// The subscription receives every message published after
    /// [`Subscription::start_after`]. While the client reconnects, this waits
    /// for the new connection first (up to the same timeout).
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
    /// assert_eq!(&message.payload[..], b"hello");
    /// # broker.stop();
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// `topic` may be a pattern: `orders/*` matches any one segment in
    /// place of the `*`, `orders/>` one or more trailing segments
    /// (`docs/protocol.md`, section 4). A pattern subscription is live only:
    /// each [`Message`](crate::Message) carries its own topic
    /// ([`Message::topic`](crate::Message::topic)) and that topic's epoch and
    /// sequence number, and after a reconnection it subscribes live again.
    /// The subscription checks each topic's sequence on its own: a topic
    /// that skipped sequence numbers since its last message here (missed
    /// while reconnecting, or dropped for a slow consumer) is reported as a
    /// [`Discontinuity`](crate::Discontinuity) right before that topic's
    /// next message, which names the topic.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), corebus_client::Error> {
    /// # let broker = corebus_shards::start(corebus_shards::ServerConfig {
    /// #     listen: "127.0.0.1:0".parse().expect("an address"),
    /// #     shards: Some(2),
    /// #     ..Default::default()
    /// # }).expect("the broker starts");
    /// # let addr = broker.local_addr();
    /// let client = corebus_client::Client::connect(addr).await?;
    /// let mut orders = client.subscribe("shop", "orders/*").await?;
    /// client.publish("shop", "orders/eu", "one").await?;
    /// client.publish("shop", "invoices/eu", "not matched").await?;
    /// client.publish("shop", "orders/us", "two").await?;
    /// for (topic, payload) in [("orders/eu", "one"), ("orders/us", "two")] {
    ///     let message = orders.next_message().await.expect("open")?;
    ///     assert_eq!((message.topic(), &message.payload[..]), (topic, payload.as_bytes()));
    ///     assert_eq!(message.seq, 1, "each topic's own sequence");
    /// }
    /// # broker.stop();
    /// # Ok(())
    /// # }
    /// ```
    pub async fn subscribe(&self, namespace: &str, topic: &str) -> Result<Subscription, Error> {
        self.start_subscription(namespace, topic, None, None).await
    }

    /// Joins `group`'s shared subscription to `topic` (a topic or a
    /// pattern): each message goes to one member of the group, whichever
    /// connections of the broker joined it (MQTT clients with
    /// `$share/{group}/{filter}` included), in turn (docs/protocol.md,
    /// section 6.23). Each [`Message`](crate::Message) carries its topic;
    /// a member sees only its share of each topic's sequence, so no gap is
    /// reported. After a reconnection it joins again, live. Retained
    /// messages are not sent to it. `group` is 1 to 255 bytes without `/`,
    /// `+`, `#`, `*`, `>` or control characters (else the broker refuses
    /// it with `invalid_request`).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), corebus_client::Error> {
    /// # let broker = corebus_shards::start(corebus_shards::ServerConfig {
    /// #     listen: "127.0.0.1:0".parse().expect("an address"),
    /// #     shards: Some(2),
    /// #     ..Default::default()
    /// # }).expect("the broker starts");
    /// # let addr = broker.local_addr();
    /// let one = corebus_client::Client::connect(addr).await?;
    /// let two = corebus_client::Client::connect(addr).await?;
    /// let mut first = one.subscribe_shared("shop", "workers", "jobs/*").await?;
    /// let mut second = two.subscribe_shared("shop", "workers", "jobs/*").await?;
    /// for n in 0..4 {
    ///     one.publish("shop", "jobs/eu", format!("job {n}")).await?;
    /// }
    /// // Taking turns: two each, every job once.
    /// let mut jobs = Vec::new();
    /// for member in [&mut first, &mut second] {
    ///     for _ in 0..2 {
    ///         let message = member.next_message().await.expect("open")?;
    ///         jobs.push(String::from_utf8_lossy(&message.payload).into_owned());
    ///     }
    /// }
    /// jobs.sort();
    /// assert_eq!(jobs, ["job 0", "job 1", "job 2", "job 3"]);
    /// # broker.stop();
    /// # Ok(())
    /// # }
    /// ```
    pub async fn subscribe_shared(
        &self,
        namespace: &str,
        group: &str,
        topic: &str,
    ) -> Result<Subscription, Error> {
        self.start_subscription(namespace, topic, None, Some(group))
            .await
    }

    /// Subscribes from a given point of the topic's history: the broker
    /// replays the messages from there that its replay buffer still holds,
    /// then live ones (see [`ResumeFrom`]). If the point is no longer
    /// covered, or belongs to another epoch, the stream starts with a
    /// [`Discontinuity`] that says what is missing.
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
    /// use corebus_client::ResumeFrom;
    /// let client = corebus_client::Client::connect(addr).await?;
    /// for i in 1..=150u32 {
    ///     client.publish("app", "news", i.to_string()).await?;
    /// }
    /// // Everything from seq 100 of the current epoch on (`corebus sub --from 100`).
    /// let mut sub = client.subscribe_from("app", "news", ResumeFrom::Seq(100)).await?;
    /// let message = sub.next_message().await.expect("open")?;
    /// assert_eq!((message.seq, &message.payload[..]), (100, &b"100"[..]));
    /// # broker.stop();
    /// # Ok(())
    /// # }
    /// ```
    pub async fn subscribe_from(
        &self,
        namespace: &str,
        topic: &str,
        resume: ResumeFrom,
    ) -> Result<Subscription, Error> {
        self.start_subscription(namespace, topic, Some(resume.point()), None)
            .await
    }

    async fn start_subscription(
        &self,
        namespace: &str,
        topic: &str,
        resume: Option<ResumePoint>,
        group: Option<&str>,
    ) -> Result<Subscription, Error> {
        check_names(namespace, topic)?;
        let shared = self.shared();
        let (events, answer) = shared
            .enqueue_subscribe(namespace, topic, resume, group)
            .await?;
        // If this future is dropped or times out, the SUB_OK that comes later
        // finds no one waiting, and the reader unsubscribes.
        let started = shared.await_answer(answer).await?;
        let mut subscription =
            Subscription::new(started, namespace, topic, events, self.handle.clone());
        if group.is_some() {
            // A member sees a share of each topic's sequence: its gaps are
            // other members' messages.
            subscription.topics = None;
        }
        Ok(subscription)
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
    /// A pattern subscription's last position per topic, to report a jump
    /// in a topic's sequence (`None` for a topic subscription).
    topics: Option<TopicPositions>,
    /// A message held back while the discontinuity before it is reported.
    held: Option<Event>,
}

/// The last (epoch, seq) a pattern subscription saw of each topic, with
/// when it saw it, for at most [`TopicPositions::MAX`] topics (the least
/// recently seen half is forgotten when it is full).
#[derive(Debug, Default)]
struct TopicPositions {
    last: rustc_hash::FxHashMap<Box<str>, (u64, u64, u64)>,
    /// Counts the messages seen, to tell the least recently seen topic.
    clock: u64,
}

impl TopicPositions {
    /// Topics whose position is kept.
    const MAX: usize = 10_000;

    /// Records `message`; returns the gap before it, if its topic skipped
    /// sequence numbers (or moved to another epoch) since it was last seen.
    /// A forgotten topic starts afresh: its next jump goes unseen.
    fn see(&mut self, message: &Message) -> Option<crate::Discontinuity> {
        self.clock += 1;
        let now = (message.epoch, message.seq, self.clock);
        let before = match self.last.get_mut(message.topic()) {
            Some(entry) => Some(std::mem::replace(entry, now)),
            None => {
                if self.last.len() >= Self::MAX {
                    // The least recently seen half goes, at once: a sort
                    // per MAX / 2 new topics, not a scan per topic.
                    let mut seen: Vec<u64> = self.last.values().map(|(_, _, at)| *at).collect();
                    seen.sort_unstable();
                    let cut = seen[seen.len() / 2];
                    self.last.retain(|_, (_, _, at)| *at >= cut);
                }
                self.last.insert(message.topic().into(), now);
                None
            }
        };
        let (epoch, seq, _) = before?;
        (epoch != message.epoch || message.seq > seq.saturating_add(1)).then_some(
            crate::Discontinuity {
                epoch: message.epoch,
                last_seq: seq,
                next_seq: message.seq,
            },
        )
    }
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
            topics: corebus_net::is_pattern(topic.as_bytes()).then(TopicPositions::default),
            held: None,
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
    /// Cancel-safe: dropping the future loses no item. An
    /// [`Error::Decompress`] item (a compressed message that cannot be read)
    /// does not end the stream; any other error is its last item.
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
    /// the gap. So does a compressed message that cannot be read
    /// ([`Error::Decompress`]). Any other error is the stream's last item.
    /// Cancel-safe.
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
        if let Some(event) = self.held.take() {
            let limit = self.handle.shared.max_decompressed();
            return Poll::Ready(Some(decompressed(event, limit)));
        }
        match self.events.poll_recv(cx) {
            Poll::Ready(Some(Event::Message(message))) if self.topics.is_some() => {
                // A pattern: each topic's sequence is checked on its own; a
                // jump (messages missed while reconnecting, or dropped for
                // a slow consumer) is reported right before the message.
                let gap = self.topics.as_mut().and_then(|topics| topics.see(&message));
                self.epoch = message.epoch;
                self.last_seq = message.seq;
                let event = Event::Message(message);
                let limit = self.handle.shared.max_decompressed();
                match gap {
                    Some(gap) => {
                        self.held = Some(event);
                        Poll::Ready(Some(Ok(Event::Discontinuity(gap))))
                    }
                    None => Poll::Ready(Some(decompressed(event, limit))),
                }
            }
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
                let limit = self.handle.shared.max_decompressed();
                Poll::Ready(Some(decompressed(event, limit)))
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

/// `event` as the subscriber sees it: a compressed payload decompressed
/// (here, on the subscriber's task, not on the connection's reader), into
/// at most `limit` bytes.
fn decompressed(event: Event, limit: usize) -> Result<Event, Error> {
    match event {
        Event::Message(mut message) if message.format == PayloadFormat::Zstd => {
            match crate::decompress(&message.payload, limit) {
                Ok(payload) => {
                    message.payload = payload.into();
                    Ok(Event::Message(message))
                }
                Err(source) => Err(Error::Decompress {
                    epoch: message.epoch,
                    seq: message.seq,
                    source,
                }),
            }
        }
        event => Ok(event),
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

#[cfg(test)]
mod tests {
    use super::*;
    use corebus_net::PayloadFormat;

    fn message(topic: &str, epoch: u64, seq: u64) -> Message {
        Message {
            epoch,
            seq,
            payload: bytes::Bytes::new(),
            name: Arc::new(crate::message::TopicName {
                namespace: "ns".into(),
                topic: topic.into(),
            }),
            format: PayloadFormat::Plain,
            headers: None,
        }
    }

    #[test]
    fn each_topic_of_a_pattern_is_checked_on_its_own() {
        let mut topics = TopicPositions::default();
        assert_eq!(topics.see(&message("a", 1, 5)), None, "first seen");
        assert_eq!(topics.see(&message("b", 2, 9)), None, "another topic");
        assert_eq!(topics.see(&message("a", 1, 6)), None, "the next one");
        let gap = topics
            .see(&message("a", 1, 9))
            .expect("7 and 8 were missed");
        assert_eq!((gap.epoch, gap.last_seq, gap.next_seq), (1, 6, 9));
        let restart = topics.see(&message("b", 3, 1)).expect("another epoch");
        assert_eq!(
            (restart.epoch, restart.last_seq, restart.next_seq),
            (3, 9, 1)
        );
        assert_eq!(topics.see(&message("b", 3, 2)), None);
    }

    #[test]
    fn the_positions_kept_are_bounded_and_the_recent_ones_stay() {
        let mut topics = TopicPositions::default();
        for i in 0..TopicPositions::MAX {
            topics.see(&message(&format!("t{i}"), 1, 1));
        }
        // t0 is seen again: the most recent now.
        topics.see(&message("t0", 1, 2));
        topics.see(&message("new", 1, 1));
        assert!(topics.last.len() <= TopicPositions::MAX);
        assert!(topics.last.contains_key("t0") && topics.last.contains_key("new"));
        assert!(
            !topics.last.contains_key("t1"),
            "the least recently seen went"
        );
        assert!(
            topics.see(&message("t0", 1, 5)).is_some(),
            "t0's jump is still seen"
        );
    }
}
