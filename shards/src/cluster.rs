//! What the shards ask of the cluster: answers to `CLUSTER_REQUEST`
//! commands ([`ClusterControl`]), and which node owns a topic ([`NodeMap`]).
//! The broker implements both over the membership thread's member list; the
//! shards read a snapshot, never wait for it.

use std::fmt::Debug;
use std::net::SocketAddr;

use corebus_net::TopicKey;

/// The prefix of the credentials a node sends in the `HELLO` of a link to
/// another node (the rest is the broker's business: see [`NodeMap`]).
pub const PEER_CREDENTIALS_PREFIX: &[u8] = b"cbpeer1.";

/// The live members as the data path places topics on them: for each, its
/// node key (`corebus_net::routing::node_key` of its cluster address) and
/// where it accepts clients, `None` for this node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Placement {
    /// The member list version this was made from.
    pub version: u64,
    /// Node keys, one per live member that is not leaving.
    pub keys: Vec<u64>,
    /// Their client addresses, in the same order; `None` for this node.
    pub clients: Vec<Option<SocketAddr>>,
    /// Node keys of the members alive but leaving: they own nothing, but
    /// still answer, and hold the state of the topics they owned until it
    /// is handed over.
    pub leaving_keys: Vec<u64>,
    /// Their client addresses, in the same order; `None` for this node.
    pub leaving_clients: Vec<Option<SocketAddr>>,
}

impl Placement {
    /// The node that owns `topic`: the highest rendezvous score over the
    /// members (`corebus_net::routing::owner_node`); `None` when it is this
    /// node, or when there are no members at all.
    pub fn owner(&self, topic: &TopicKey) -> Option<SocketAddr> {
        let index = corebus_net::routing::owner_node(topic.stable_hash(), &self.keys)?;
        self.clients[index]
    }

    /// Whether `node` is the client address of a member, leaving or not.
    pub fn has(&self, node: SocketAddr) -> bool {
        self.clients.contains(&Some(node)) || self.leaving_clients.contains(&Some(node))
    }

    /// Of the members other than `asking`, leaving ones and this node
    /// included, the one that scores highest for `topic`: where `asking`,
    /// if it knew every member, would ask for the topic's state. `None`
    /// inside `Some` is this node; `None` when there is no other member.
    pub fn source_for(&self, topic: &TopicKey, asking: SocketAddr) -> Option<Option<SocketAddr>> {
        let (keys, clients): (Vec<u64>, Vec<Option<SocketAddr>>) = self
            .keys
            .iter()
            .zip(&self.clients)
            .chain(self.leaving_keys.iter().zip(&self.leaving_clients))
            .filter(|(_, client)| **client != Some(asking))
            .map(|(key, client)| (*key, *client))
            .unzip();
        let index = corebus_net::routing::owner_node(topic.stable_hash(), &keys)?;
        Some(clients[index])
    }

    /// Where the state of `topic` is to be had when this node owns it and
    /// holds none: of the other members, leaving ones included, the one
    /// that scores highest for the topic. After a join that is the node
    /// that owned the topic before; after a leave, the node that left.
    pub fn handoff_source(&self, topic: &TopicKey) -> Option<SocketAddr> {
        let (keys, clients): (Vec<u64>, Vec<SocketAddr>) = self
            .keys
            .iter()
            .zip(&self.clients)
            .chain(self.leaving_keys.iter().zip(&self.leaving_clients))
            .filter_map(|(key, client)| client.map(|client| (*key, client)))
            .unzip();
        let index = corebus_net::routing::owner_node(topic.stable_hash(), &keys)?;
        Some(clients[index])
    }
}

/// The cluster as the data path sees it: the members topics are placed on,
/// and how the nodes prove to each other that they are members.
/// Implementations must not block: the shards call [`NodeMap::version`] on
/// every routing decision, and the rest when it changes.
pub trait NodeMap: Debug + Send + Sync {
    /// Changes whenever the live member list does (and so, maybe, owners).
    fn version(&self) -> u64;

    /// The members as of now.
    fn placement(&self) -> Placement;

    /// The credentials this node sends in the `HELLO` of its links to other
    /// nodes at `now_ms` (Unix milliseconds); they start with
    /// [`PEER_CREDENTIALS_PREFIX`].
    fn peer_credentials(&self, now_ms: u64) -> Vec<u8>;

    /// Checks another node's link credentials; the name of the node for the
    /// logs, or why they are refused.
    fn verify_peer(&self, credentials: &[u8], now_ms: u64) -> Result<String, String>;
}

/// Why a cluster command failed.
pub type ClusterCommandError = crate::webhooks::CommandError;

/// Answers cluster commands. Implementations must not block: they read a
/// snapshot of the member list, or answer later (a change to the control
/// plane).
pub trait ClusterControl: Debug + Send + Sync {
    /// Carries out a `CLUSTER_REQUEST` command (a JSON object) from a
    /// super-user connection on a node of `shard_count` shards: the JSON
    /// result, now or later.
    fn command(&self, command: &str, shard_count: usize) -> crate::webhooks::CommandAnswer;
}

/// No cluster control: every command is refused.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoCluster;

impl ClusterControl for NoCluster {
    fn command(&self, _command: &str, _shard_count: usize) -> crate::webhooks::CommandAnswer {
        crate::webhooks::CommandAnswer::Now(Err(ClusterCommandError::Invalid(
            "this broker answers no cluster commands".into(),
        )))
    }
}
