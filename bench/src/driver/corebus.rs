//! corebus through the project's own client crate.

use std::collections::VecDeque;

use bytes::Bytes;
use corebus_client::{
    Client, ClientConfig, Compression, Event, PendingPublish, Subscription, TopicAffinity,
};
use futures_util::FutureExt;

use super::{failed, next_of_any, Endpoint, PublisherDone, Received, MAX_IN_FLIGHT, NAMESPACE};
use crate::options::Target;
use crate::payload::Header;
use crate::BenchError;

const TARGET: Target = Target::Corebus;

/// A client for a connection that will use `topics`: one that uses a single
/// topic asks for the shard that owns it, unless the run says otherwise
/// (`--no-affinity`).
async fn connect(
    endpoint: &Endpoint,
    topics: &[impl AsRef<str>],
    local_address: Option<std::net::IpAddr>,
) -> Result<Client, BenchError> {
    let topic_affinity = match topics {
        [topic] if endpoint.affinity => Some(TopicAffinity::new(NAMESPACE, topic.as_ref())),
        _ => None,
    };
    let config = ClientConfig {
        topic_affinity,
        compression: if endpoint.compress {
            Compression::zstd()
        } else {
            Compression::Off
        },
        local_address,
        ..ClientConfig::default()
    };
    Client::connect_with(endpoint.url.as_str(), config)
        .await
        .map_err(|err| failed(TARGET, "connect", err))
}

/// Pattern subscriptions one connection holds for `--idle-patterns` (under
/// the broker's default 10,000 per connection).
const PATTERNS_PER_CONNECTION: usize = 5000;

/// Connections holding `count` pattern subscriptions that match no topic of
/// a run (`--idle-patterns`): kept open for the run, closed when dropped.
pub async fn hold_idle_patterns(
    url: &str,
    count: usize,
) -> Result<Vec<(Client, Vec<Subscription>)>, BenchError> {
    let mut held = Vec::new();
    for first in (0..count).step_by(PATTERNS_PER_CONNECTION) {
        let client = Client::connect(url)
            .await
            .map_err(|err| failed(TARGET, "connect", err))?;
        let mut subscriptions = Vec::new();
        for i in first..(first + PATTERNS_PER_CONNECTION).min(count) {
            let pattern = match i % 3 {
                0 => format!("idle-{i}/*"),
                1 => format!("*/idle-{i}"),
                _ => format!("idle/{i}/>"),
            };
            let subscription = client
                .subscribe(NAMESPACE, &pattern)
                .await
                .map_err(|err| failed(TARGET, "subscribe to a pattern", err))?;
            subscriptions.push(subscription);
        }
        held.push((client, subscriptions));
    }
    Ok(held)
}

/// Where the publishers of a cluster run connect (`--publisher-on`): the
/// node that owns `topic`, as the node at `--url` names it, or the first of
/// the subscriber addresses that is not that node.
pub async fn publisher_url(
    plan: &crate::options::Plan,
    endpoint: &Endpoint,
    topic: &str,
    place: crate::options::PublisherOn,
) -> Result<String, BenchError> {
    let client = Client::connect(endpoint.url.as_str())
        .await
        .map_err(|err| failed(TARGET, "connect", err))?;
    let owner = client
        .topic_owner(NAMESPACE, topic)
        .await
        .map_err(|err| failed(TARGET, "cluster owner", err))?;
    let _ = client.close().await;
    let Some(owner) = owner.client else {
        return Err(BenchError::Options(format!(
            "--publisher-on: the node at {} is not in a cluster",
            endpoint.url
        )));
    };
    let url = match place {
        crate::options::PublisherOn::Owner => Some(owner.clone()),
        crate::options::PublisherOn::Other => plan
            .subscriber_urls
            .iter()
            .find(|url| **url != owner)
            .cloned(),
    };
    url.ok_or_else(|| {
        BenchError::Options(format!(
            "--publisher-on other: every subscriber address is the owner {owner}"
        ))
    })
}

/// Fire-and-forget publishes, or (`--acks`) pipelined publishes whose
/// acknowledgements are checked in order, oldest first.
pub struct CorebusPublisher {
    client: Client,
    topics: Vec<String>,
    /// Publishes ask for acknowledgements.
    acked: bool,
    /// (topic index, acknowledgement) of publishes not yet checked.
    acks: VecDeque<(usize, PendingPublish)>,
    /// Per topic, the highest sequence number acknowledged so far.
    max_seq: Vec<u64>,
}

impl CorebusPublisher {
    pub(super) async fn connect(
        endpoint: &Endpoint,
        topics: &[String],
    ) -> Result<Self, BenchError> {
        let client = connect(endpoint, topics, None).await?;
        Ok(CorebusPublisher {
            client,
            topics: topics.to_vec(),
            acked: endpoint.acks,
            acks: VecDeque::with_capacity(MAX_IN_FLIGHT),
            max_seq: vec![0; topics.len()],
        })
    }

    pub(super) async fn publish(&mut self, topic: usize, payload: Bytes) -> Result<(), BenchError> {
        if !self.acked {
            return self
                .client
                .publish_unacked(NAMESPACE, &self.topics[topic], payload)
                .await
                .map_err(|err| failed(TARGET, "publish", err));
        }
        let ack = self
            .client
            .start_publish(NAMESPACE, &self.topics[topic], payload)
            .await
            .map_err(|err| failed(TARGET, "publish", err))?;
        self.acks.push_back((topic, ack));
        // Check what has already been answered without waiting; wait only
        // when too many are outstanding.
        loop {
            let over = self.acks.len() > MAX_IN_FLIGHT;
            let Some((_, ack)) = self.acks.front_mut() else {
                break;
            };
            let answer = if over {
                Some(ack.await)
            } else {
                ack.now_or_never()
            };
            let Some(answer) = answer else { break };
            self.take_answer(answer)?;
        }
        Ok(())
    }

    fn take_answer(
        &mut self,
        answer: Result<u64, corebus_client::Error>,
    ) -> Result<(), BenchError> {
        let seq = answer.map_err(|err| failed(TARGET, "publish", err))?;
        if let Some((topic, _)) = self.acks.pop_front() {
            let max = &mut self.max_seq[topic];
            *max = (*max).max(seq);
        }
        Ok(())
    }

    pub(super) async fn finish(mut self) -> Result<PublisherDone, BenchError> {
        while let Some((_, ack)) = self.acks.front_mut() {
            let answer = ack.await;
            self.take_answer(answer)?;
        }
        // A refused fire-and-forget publish is reported here if its ERROR
        // has arrived; one that has not yet shows as a lost message.
        let refused = self.client.take_unacked_failures();
        if let Some(error) = refused.last {
            return Err(failed(
                TARGET,
                "publish",
                format!("{} publishes refused, the last: {error}", refused.count),
            ));
        }
        self.client
            .close()
            .await
            .map_err(|err| failed(TARGET, "close", err))?;
        Ok(PublisherDone {
            max_seq: self.acked.then_some(self.max_seq),
        })
    }
}

/// One connection with one subscription per topic.
pub struct CorebusSubscriber {
    subscriptions: Vec<Subscription>,
    /// The subscription polled first next time (round-robin).
    turn: usize,
    /// Keeps the connection open as long as the subscriptions are read.
    _client: Client,
}

impl CorebusSubscriber {
    pub(super) async fn connect(
        endpoint: &Endpoint,
        topics: &[&str],
        local: Option<std::net::IpAddr>,
    ) -> Result<Self, BenchError> {
        let client = connect(endpoint, topics, local).await?;
        let mut subscriptions = Vec::with_capacity(topics.len());
        for topic in topics {
            subscriptions.push(
                client
                    .subscribe(NAMESPACE, topic)
                    .await
                    .map_err(|err| failed(TARGET, "subscribe", err))?,
            );
        }
        Ok(CorebusSubscriber {
            subscriptions,
            turn: 0,
            _client: client,
        })
    }

    pub(super) fn start_after(&self, subscription: usize) -> u64 {
        self.subscriptions
            .get(subscription)
            .map_or(0, Subscription::start_after)
    }

    pub(super) async fn next(&mut self) -> Result<Option<Received>, BenchError> {
        match next_of_any(&mut self.subscriptions, &mut self.turn).await {
            (_, None) => Ok(None),
            (subscription, Some(Ok(Event::Message(message)))) => Ok(Some(Received {
                subscription,
                seq: Some(message.seq),
                header: Header::parse(&message.payload),
                len: message.payload.len(),
            })),
            // A gap is the broker reporting loss: the run fails.
            (_, Some(Ok(Event::Discontinuity(gap)))) => Err(failed(
                TARGET,
                "receive",
                corebus_client::Error::Discontinuity(gap),
            )),
            (_, Some(Err(err))) => Err(failed(TARGET, "receive", err)),
        }
    }
}
