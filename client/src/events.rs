//! What happens to a client's connection, as a stream an application can
//! watch: losses, reconnection attempts, resumed subscriptions and the gaps
//! resuming could not fill.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_core::Stream;
use tokio::sync::broadcast::{self, error::RecvError};

use crate::Discontinuity;

/// How many events a [`ConnectionEvents`] stream may fall behind before it
/// skips some (and says how many with [`ConnectionEvent::Lagged`]).
pub(crate) const EVENT_BUFFER: usize = 64;

/// A change in a [`Client`](crate::Client)'s connection, from
/// [`Client::connection_events`](crate::Client::connection_events).
///
/// After a loss the events come in this order: [`Disconnected`], then a
/// [`ReconnectFailed`] per failed attempt, then [`Reconnected`] and, once
/// the new connection has answered every resubscription, [`Resumed`]; or
/// [`Ended`] when the client gives up. [`Discontinuity`] can come at any
/// time a subscription's stream carries one.
///
/// [`Disconnected`]: ConnectionEvent::Disconnected
/// [`ReconnectFailed`]: ConnectionEvent::ReconnectFailed
/// [`Reconnected`]: ConnectionEvent::Reconnected
/// [`Resumed`]: ConnectionEvent::Resumed
/// [`Ended`]: ConnectionEvent::Ended
/// [`Discontinuity`]: ConnectionEvent::Discontinuity
///
/// ```
/// use corebus_client::ConnectionEvent;
///
/// let event = ConnectionEvent::ReconnectFailed {
///     attempt: 2,
///     error: "connection refused".into(),
/// };
/// assert_eq!(event.to_string(), "reconnection attempt 2 failed: connection refused");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectionEvent {
    /// The connection was lost. Publishes awaiting their acknowledgement
    /// failed; with [`reconnecting`](Self::Disconnected::reconnecting), the
    /// client now tries to connect again and calls wait for it.
    Disconnected {
        /// Why the connection was lost.
        reason: String,
        /// Whether the client reconnects ([`ClientConfig::reconnect`]).
        ///
        /// [`ClientConfig::reconnect`]: crate::ClientConfig::reconnect
        reconnecting: bool,
    },
    /// An attempt to connect again failed; the next follows after the
    /// backoff delay, unless the attempts ran out ([`Ended`](Self::Ended)
    /// then follows).
    ReconnectFailed {
        /// The attempt's number since the connection was lost, from 1.
        attempt: u32,
        /// Why it failed.
        error: String,
    },
    /// Connected again; every subscription is being resumed from the
    /// message after the last one it received.
    Reconnected {
        /// The address of the broker now serving the client.
        server: String,
        /// How many attempts it took, this one included.
        attempts: u32,
    },
    /// The new connection answered every resubscription: the subscriptions
    /// it accepted flow again (each with a
    /// [`Discontinuity`](Self::Discontinuity) first where messages were
    /// lost), and those it refused ended with the server's error.
    Resumed {
        /// Subscriptions that flow again.
        subscriptions: usize,
        /// Subscriptions the server refused to resume (their streams end
        /// with its error: a permission revoked meanwhile, for example).
        refused: usize,
    },
    /// A subscription's stream carries a discontinuity: messages were lost
    /// (an outage longer than the broker's replay buffer, a restarted topic
    /// history, a slow consumer). The subscription itself reports the same
    /// [`Event::Discontinuity`](crate::Event::Discontinuity) in its place
    /// in the stream.
    Discontinuity {
        /// The subscription's namespace.
        namespace: String,
        /// The subscription's topic.
        topic: String,
        /// What was lost.
        gap: Discontinuity,
    },
    /// This stream fell behind by more than it buffers (64 events) and
    /// skipped `missed` of them.
    Lagged {
        /// How many events were skipped.
        missed: u64,
    },
    /// The client ended: closed, out of reconnection attempts, or refused
    /// by the server. The last event of the stream.
    Ended {
        /// Why, as every later call's error says it.
        reason: String,
    },
}

impl std::fmt::Display for ConnectionEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectionEvent::Disconnected {
                reason,
                reconnecting: true,
            } => write!(f, "connection lost ({reason}); reconnecting"),
            ConnectionEvent::Disconnected { reason, .. } => write!(f, "connection lost ({reason})"),
            ConnectionEvent::ReconnectFailed { attempt, error } => {
                write!(f, "reconnection attempt {attempt} failed: {error}")
            }
            ConnectionEvent::Reconnected { server, attempts } => {
                let s = if *attempts == 1 { "" } else { "s" };
                write!(f, "reconnected to {server} after {attempts} attempt{s}")
            }
            ConnectionEvent::Resumed {
                subscriptions,
                refused,
            } => {
                let s = if *subscriptions == 1 { "" } else { "s" };
                write!(f, "resumed {subscriptions} subscription{s}")?;
                match refused {
                    0 => Ok(()),
                    refused => write!(f, "; the server refused {refused}"),
                }
            }
            ConnectionEvent::Discontinuity {
                namespace,
                topic,
                gap,
            } => write!(f, "{namespace}/{topic}: {gap}"),
            ConnectionEvent::Lagged { missed } => {
                write!(f, "{missed} connection events skipped (read too slowly)")
            }
            ConnectionEvent::Ended { reason } => write!(f, "the client ended: {reason}"),
        }
    }
}

/// The future that waits for the next event; it owns the receiver while it
/// waits and gives it back with the result.
type Recv = Pin<
    Box<
        dyn Future<
                Output = (
                    Result<ConnectionEvent, RecvError>,
                    broadcast::Receiver<ConnectionEvent>,
                ),
            > + Send,
    >,
>;

/// The [`ConnectionEvent`]s of one client from the moment it was asked for
/// ([`Client::connection_events`](crate::Client::connection_events)), as a
/// [`Stream`] or with [`next`](Self::next). It ends after
/// [`ConnectionEvent::Ended`], and does not keep the client open.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), corebus_client::Error> {
/// # let broker = corebus_shards::start(corebus_shards::ServerConfig {
/// #     listen: "127.0.0.1:0".parse().expect("an address"),
/// #     shards: Some(1),
/// #     ..Default::default()
/// # }).expect("the broker starts");
/// use corebus_client::{Client, ConnectionEvent};
///
/// let client = Client::connect(broker.local_addr()).await?;
/// let mut events = client.connection_events();
/// client.close().await?;
/// assert!(matches!(events.next().await, Some(ConnectionEvent::Ended { .. })));
/// assert_eq!(events.next().await, None);
/// # broker.stop();
/// # Ok(())
/// # }
/// ```
pub struct ConnectionEvents {
    receiver: Option<broadcast::Receiver<ConnectionEvent>>,
    waiting: Option<Recv>,
    done: bool,
}

impl std::fmt::Debug for ConnectionEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectionEvents")
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl ConnectionEvents {
    /// A stream of what `sender` sends from now on; with `ended`, one that
    /// is over already.
    pub(crate) fn new(sender: &broadcast::Sender<ConnectionEvent>, ended: bool) -> Self {
        ConnectionEvents {
            receiver: Some(sender.subscribe()),
            waiting: None,
            done: ended,
        }
    }

    /// The next event; `None` once the client has ended and its
    /// [`ConnectionEvent::Ended`] was returned.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), corebus_client::Error> {
    /// # let broker = corebus_shards::start(corebus_shards::ServerConfig {
    /// #     listen: "127.0.0.1:0".parse().expect("an address"),
    /// #     shards: Some(1),
    /// #     ..Default::default()
    /// # }).expect("the broker starts");
    /// let client = corebus_client::Client::connect(broker.local_addr()).await?;
    /// let mut events = client.connection_events();
    /// tokio::spawn(async move {
    ///     while let Some(event) = events.next().await {
    ///         eprintln!("corebus: {event}");
    ///     }
    /// });
    /// # client.close().await?;
    /// # broker.stop();
    /// # Ok(())
    /// # }
    /// ```
    pub async fn next(&mut self) -> Option<ConnectionEvent> {
        std::future::poll_fn(|cx| Pin::new(&mut *self).poll_next(cx)).await
    }
}

impl Stream for ConnectionEvents {
    type Item = ConnectionEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        let this = &mut *self;
        let waiting = match (&mut this.waiting, this.receiver.take()) {
            (Some(waiting), _) => waiting,
            (None, Some(mut receiver)) => this.waiting.insert(Box::pin(async move {
                let result = receiver.recv().await;
                (result, receiver)
            })),
            (None, None) => return Poll::Ready(None),
        };
        let Poll::Ready((result, receiver)) = waiting.as_mut().poll(cx) else {
            return Poll::Pending;
        };
        this.waiting = None;
        this.receiver = Some(receiver);
        let event = match result {
            Ok(event) => event,
            Err(RecvError::Lagged(missed)) => ConnectionEvent::Lagged { missed },
            // The client is gone (every handle dropped, its state freed).
            Err(RecvError::Closed) => {
                this.done = true;
                return Poll::Ready(None);
            }
        };
        this.done = matches!(event, ConnectionEvent::Ended { .. });
        Poll::Ready(Some(event))
    }
}
