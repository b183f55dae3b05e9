//! What a subscription yields: messages, and discontinuities where messages
//! were lost; and where a subscription may start.

use std::sync::Arc;

use bytes::Bytes;
use corebus_net::{Headers, PayloadFormat, ResumePoint};

/// One message delivered to a [`Subscription`](crate::Subscription).
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
    /// The payload, as published: decompressed already when the publisher
    /// compressed it. An uncompressed payload is a slice of the connection's
    /// read buffer (no copy); holding it keeps that buffer chunk alive, so
    /// copy payloads that are kept for long.
    pub payload: Bytes,
    /// The namespace and topic, shared by every message of the
    /// subscription.
    pub(crate) name: Arc<TopicName>,
    /// How the payload travelled. While the message waits in the
    /// subscription's queue a zstd payload is still compressed; the
    /// subscription decompresses it as it hands the message out.
    pub(crate) format: PayloadFormat,
    /// The publisher's headers, when it set any (boxed: most messages
    /// have none).
    pub(crate) headers: Option<Box<Headers>>,
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
    /// [`Message::namespace`] for an example): for a pattern subscription
    /// (`orders/*`), the concrete topic it matched.
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

    /// Whether the publisher compressed the payload (it is decompressed
    /// already): the broker carried fewer bytes than [`Message::payload`]
    /// holds.
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
    /// use corebus_client::Compression;
    ///
    /// let client = corebus_client::Client::connect(addr).await?;
    /// let mut sub = client.subscribe("app", "news").await?;
    /// let zstd = client.compressing(Compression::zstd());
    /// zstd.publish("app", "news", "short").await?; // under the 1 KiB threshold
    /// zstd.publish("app", "news", "long ".repeat(1000)).await?;
    /// assert!(!sub.next_message().await.expect("open")?.was_compressed());
    /// assert!(sub.next_message().await.expect("open")?.was_compressed());
    /// # broker.stop();
    /// # Ok(())
    /// # }
    /// ```
    pub fn was_compressed(&self) -> bool {
        self.format == PayloadFormat::Zstd
    }

    /// The headers the publisher set ([`Client::publish_with_headers`],
    /// or an MQTT 5.0 publisher's properties), `None` when it set none.
    ///
    /// [`Client::publish_with_headers`]: crate::Client::publish_with_headers
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
    /// use corebus_client::Headers;
    ///
    /// let client = corebus_client::Client::connect(addr).await?;
    /// let mut sub = client.subscribe("app", "news").await?;
    /// client.publish("app", "news", "plain").await?;
    /// let headers = Headers {
    ///     content_type: Some("text/plain".into()),
    ///     ..Headers::default()
    /// };
    /// client.publish_with_headers("app", "news", &headers, "typed").await?;
    /// assert_eq!(sub.next_message().await.expect("open")?.headers(), None);
    /// let typed = sub.next_message().await.expect("open")?;
    /// assert_eq!(typed.headers().and_then(|h| h.content_type.as_deref()), Some("text/plain"));
    /// # broker.stop();
    /// # Ok(())
    /// # }
    /// ```
    pub fn headers(&self) -> Option<&Headers> {
        self.headers.as_deref()
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

impl Discontinuity {
    /// The sequence numbers of `epoch` that were lost, or `None` when none
    /// lie between `last_seq` and `next_seq`: the topic's history restarted
    /// (a new epoch), and `last_seq` belongs to the old one.
    ///
    /// ```
    /// use corebus_client::Discontinuity;
    ///
    /// let gap = Discontinuity { epoch: 0x1f, last_seq: 3, next_seq: 10 };
    /// assert_eq!(gap.lost(), Some(4..=9));
    /// let restart = Discontinuity { epoch: 0x2a, last_seq: 41, next_seq: 1 };
    /// assert_eq!(restart.lost(), None);
    /// ```
    pub fn lost(&self) -> Option<std::ops::RangeInclusive<u64>> {
        let first = self.last_seq.checked_add(1)?;
        let last = self.next_seq.checked_sub(1)?;
        (first <= last).then_some(first..=last)
    }
}

impl std::fmt::Display for Discontinuity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.lost() {
            Some(_) => write!(
                f,
                "messages lost after seq {}: the next message is seq {} of epoch {:#x}",
                self.last_seq, self.next_seq, self.epoch
            ),
            None => write!(
                f,
                "the topic's history restarted after seq {}: epoch {:#x} continues at seq {}",
                self.last_seq, self.epoch, self.next_seq
            ),
        }
    }
}

/// An item of a [`Subscription`](crate::Subscription)'s stream.
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
