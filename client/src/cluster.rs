//! Asking a node about its cluster: the members it knows, and which node
//! owns a topic (`CLUSTER_REQUEST` and `CLUSTER_REPLY`, whose JSON is in
//! docs/cluster.md). Both need super-user credentials.

use serde_json::{json, Map, Value};

use crate::command::{parse_root, with_reason};
use crate::connection::CommandKind;
use crate::{Client, Error};

/// A member of the cluster, as the node asked sees it.
///
/// ```
/// use corebus_client::ClusterMember;
///
/// // Members a node can route to: alive or merely suspected, and not leaving.
/// fn routable(members: &[ClusterMember]) -> Vec<&str> {
///     members
///         .iter()
///         .filter(|member| member.state != "down" && !member.leaving)
///         .map(|member| member.client.as_str())
///         .collect()
/// }
/// let members = [ClusterMember {
///     node: "10.0.0.2:7500".into(),
///     client: "10.0.0.2:7400".into(),
///     state: "alive".into(),
///     leaving: false,
/// }];
/// assert_eq!(routable(&members), ["10.0.0.2:7400"]);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterMember {
    /// Its node id: its cluster address, such as `10.0.0.2:7500`.
    pub node: String,
    /// Where its clients connect.
    pub client: String,
    /// `alive`, `suspect` (someone could not reach it; still counted
    /// alive) or `down`.
    pub state: String,
    /// A planned leave is under way.
    pub leaving: bool,
}

/// What a node knows of its cluster.
///
/// ```
/// use corebus_client::ClusterStatus;
///
/// fn summary(status: &ClusterStatus) -> String {
///     match &status.node {
///         None => "a single node".to_string(),
///         Some(node) => format!("{node}, one of {} members", status.members.len()),
///     }
/// }
/// let alone = ClusterStatus { node: None, members: Vec::new(), control: None };
/// assert_eq!(summary(&alone), "a single node");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterStatus {
    /// The node asked, or `None` when it runs alone (no `cluster_listen`).
    pub node: Option<String>,
    /// Every member it knows, itself included, by node id; empty when alone.
    pub members: Vec<ClusterMember>,
    /// The control plane (run-time webhooks agreed by every node), when the
    /// node is a cluster member.
    pub control: Option<ControlStatus>,
}

/// The cluster's control plane, as the node asked sees it.
///
/// ```
/// use corebus_client::ControlStatus;
///
/// // A control plane can agree on changes while it has a leader.
/// fn can_change_webhooks(control: &ControlStatus) -> bool {
///     control.leader.is_some()
/// }
/// let electing = ControlStatus {
///     leader: None,
///     term: 3,
///     voters: vec!["10.0.0.1:7500".into(), "10.0.0.2:7500".into(), "10.0.0.3:7500".into()],
///     learners: Vec::new(),
///     config_comparison: "available".into(),
///     nodes: Vec::new(),
/// };
/// assert!(!can_change_webhooks(&electing));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlStatus {
    /// The leader's node id, or `None` while there is none.
    pub leader: Option<String>,
    /// The leader's term.
    pub term: u64,
    /// The nodes that vote (at most 5).
    pub voters: Vec<String>,
    /// The nodes that follow the log without voting.
    pub learners: Vec<String>,
    /// Whether configurations can be compared: `available`, or
    /// `unavailable: ...` (the cluster has no secret).
    pub config_comparison: String,
    /// Each node: the node asked first, then what each other node up said
    /// last (within a second or so).
    pub nodes: Vec<ControlNode>,
}

/// One node of the control plane.
///
/// ```
/// use corebus_client::ControlNode;
///
/// // Nodes whose security-relevant configuration differs from the node asked's.
/// fn misconfigured(nodes: &[ControlNode]) -> impl Iterator<Item = &str> {
///     nodes.iter().filter(|node| node.config == "differs").map(|node| node.node.as_str())
/// }
/// let nodes = [ControlNode {
///     node: "10.0.0.3:7500".into(),
///     applied: Some(41),
///     config: "differs".into(),
///     error: None,
/// }];
/// assert_eq!(misconfigured(&nodes).collect::<Vec<_>>(), ["10.0.0.3:7500"]);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlNode {
    /// Its node id.
    pub node: String,
    /// The index of the last log entry it applied; `None` when it did not
    /// answer.
    pub applied: Option<u64>,
    /// Its security-relevant configuration compared with the node asked's:
    /// `same`, `differs` or `unknown`.
    pub config: String,
    /// Why it did not answer.
    pub error: Option<String>,
}

/// Which node owns a topic, as the node asked computes it.
///
/// ```
/// use corebus_client::TopicOwner;
///
/// // Where a publisher to the topic saves a hop by connecting.
/// fn best_server(owner: &TopicOwner, fallback: &str) -> String {
///     owner.client.clone().unwrap_or_else(|| fallback.to_string())
/// }
/// let alone = TopicOwner { node: None, client: None, shard: Some(0) };
/// assert_eq!(best_server(&alone, "127.0.0.1:7400"), "127.0.0.1:7400");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicOwner {
    /// The owner's node id, or `None` when the node asked runs alone.
    pub node: Option<String>,
    /// Where the owner's clients connect, when in a cluster.
    pub client: Option<String>,
    /// The owner shard, when the owner is the node asked (or it runs alone).
    pub shard: Option<u16>,
}

/// The examples run against a broker embedded in the test
/// (`corebus::embedded`) that runs alone: `broker/tests/cluster.rs` runs
/// each command against a cluster.
impl Client {
    /// The members of the cluster, as the node this client is connected to
    /// sees them (super-user credentials only).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), corebus_client::Error> {
    /// # let data = std::env::temp_dir().join(format!("corebus-doc-{}", std::process::id()));
    /// # let broker = corebus::embedded::Embedded::start(&[
    /// #     "--listen", "127.0.0.1:0", "--shards", "1", "--data-dir", data.to_str().expect("UTF-8"),
    /// # ]).expect("the broker starts");
    /// # // The broker runs without authentication, on loopback: every client is a super-user.
    /// # let client = corebus_client::Client::connect(broker.local_addr()).await?;
    /// let status = client.cluster_status().await?;
    /// for member in &status.members {
    ///     println!("{} {} (clients: {})", member.node, member.state, member.client);
    /// }
    /// // This broker runs alone.
    /// assert_eq!((status.node, status.members.len()), (None, 0));
    /// # broker.stop();
    /// # let _ = std::fs::remove_dir_all(&data);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn cluster_status(&self) -> Result<ClusterStatus, Error> {
        let result = self
            .command_request(CommandKind::Cluster, &json!({ "op": "status" }))
            .await?;
        with_reason("cluster status", parse_status(&result))
    }

    /// The control plane's agreed run-time webhooks, secrets included, as
    /// JSON in the format of `webhooks.json` (super-user credentials only):
    /// a backup from which a cluster that lost a majority for good is
    /// rebuilt (docs/cluster.md). Keep it as secret as the secrets in it.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), corebus_client::Error> {
    /// # let data = std::env::temp_dir().join(format!("corebus-doc-{}", std::process::id()));
    /// # let broker = corebus::embedded::Embedded::start(&[
    /// #     "--listen", "127.0.0.1:0", "--shards", "1", "--data-dir", data.to_str().expect("UTF-8"),
    /// # ]).expect("the broker starts");
    /// # // The broker runs without authentication, on loopback: every client is a super-user.
    /// # let client = corebus_client::Client::connect(broker.local_addr()).await?;
    /// match client.control_snapshot().await {
    ///     // Keep it as secret as the secrets in it.
    ///     Ok(backup) => println!("{} bytes to store safely", backup.len()),
    ///     // A node that runs alone has no control plane to back up.
    ///     Err(err) => assert_eq!(err.server_code(), Some(corebus_client::ErrorCode::InvalidRequest)),
    /// }
    /// # broker.stop();
    /// # let _ = std::fs::remove_dir_all(&data);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn control_snapshot(&self) -> Result<String, Error> {
        self.command_request(CommandKind::Cluster, &json!({ "op": "snapshot" }))
            .await
    }

    /// Removes `node` (a node id: its cluster address) from the control
    /// plane: a node gone for good gives up its vote, so that the others
    /// keep a majority without it (super-user credentials only). A node
    /// that is up is refused: it would be added back.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), corebus_client::Error> {
    /// # let data = std::env::temp_dir().join(format!("corebus-doc-{}", std::process::id()));
    /// # let broker = corebus::embedded::Embedded::start(&[
    /// #     "--listen", "127.0.0.1:0", "--shards", "1", "--data-dir", data.to_str().expect("UTF-8"),
    /// # ]).expect("the broker starts");
    /// # // The broker runs without authentication, on loopback: every client is a super-user.
    /// # let client = corebus_client::Client::connect(broker.local_addr()).await?;
    /// match client.remove_cluster_node("10.0.0.3:7500").await {
    ///     Ok(()) => println!("10.0.0.3:7500 gave up its vote"),
    ///     // Refused: not a cluster here (or the node is up, or unknown).
    ///     Err(err) => eprintln!("not removed: {err}"),
    /// }
    /// # broker.stop();
    /// # let _ = std::fs::remove_dir_all(&data);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn remove_cluster_node(&self, node: &str) -> Result<(), Error> {
        let command = json!({ "op": "remove", "node": node });
        self.command_request(CommandKind::Cluster, &command)
            .await
            .map(drop)
    }

    /// The node that owns `namespace`/`topic` (super-user credentials only).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), corebus_client::Error> {
    /// # let data = std::env::temp_dir().join(format!("corebus-doc-{}", std::process::id()));
    /// # let broker = corebus::embedded::Embedded::start(&[
    /// #     "--listen", "127.0.0.1:0", "--shards", "1", "--data-dir", data.to_str().expect("UTF-8"),
    /// # ]).expect("the broker starts");
    /// # // The broker runs without authentication, on loopback: every client is a super-user.
    /// # let client = corebus_client::Client::connect(broker.local_addr()).await?;
    /// let owner = client.topic_owner("orders", "eu/created").await?;
    /// println!("owned by {:?}", owner.node);
    /// // This broker runs alone, with one shard: it owns everything.
    /// assert_eq!((owner.node, owner.shard), (None, Some(0)));
    /// # broker.stop();
    /// # let _ = std::fs::remove_dir_all(&data);
    /// # Ok(())
    /// # }
    /// ```
    pub async fn topic_owner(&self, namespace: &str, topic: &str) -> Result<TopicOwner, Error> {
        let command = json!({ "op": "owner", "ns": namespace, "topic": topic });
        let result = self.command_request(CommandKind::Cluster, &command).await?;
        with_reason("cluster owner", parse_owner(&result))
    }
}

fn optional_string(root: &Map<String, Value>, key: &str) -> Result<Option<String>, String> {
    match root.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text.clone())),
        Some(_) => Err(format!("field `{key}` is not a string")),
    }
}

fn string(value: &Map<String, Value>, key: &str, path: &str) -> Result<String, String> {
    value
        .get(key)
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| format!("field `{path}.{key}` is missing or not a string"))
}

/// A JSON object, with its path for errors (`members[2]`).
type Located<'a> = (String, &'a Map<String, Value>);

/// The objects of the list `key` of `value` (`path` in errors), each with
/// its own path (`path[i]`).
fn objects<'a>(
    value: &'a Map<String, Value>,
    key: &str,
    path: &str,
) -> Result<Vec<Located<'a>>, String> {
    value
        .get(key)
        .and_then(Value::as_array)
        .ok_or_else(|| format!("field `{path}` is missing or not a list"))?
        .iter()
        .enumerate()
        .map(|(index, item)| {
            let path = format!("{path}[{index}]");
            match item.as_object() {
                Some(object) => Ok((path, object)),
                None => Err(format!("`{path}` is not an object")),
            }
        })
        .collect()
}

fn parse_status(result: &str) -> Result<ClusterStatus, String> {
    let root = parse_root(result)?;
    let node = optional_string(&root, "node")?;
    let members = objects(&root, "members", "members")?
        .into_iter()
        .map(|(path, member)| {
            Ok(ClusterMember {
                node: string(member, "node", &path)?,
                client: string(member, "client", &path)?,
                state: string(member, "state", &path)?,
                leaving: member
                    .get("leaving")
                    .and_then(Value::as_bool)
                    .ok_or_else(|| format!("field `{path}.leaving` is missing or not a boolean"))?,
            })
        })
        .collect::<Result<_, String>>()?;
    let control = match root.get("control") {
        None | Some(Value::Null) => None,
        Some(value) => Some(parse_control(value)?),
    };
    Ok(ClusterStatus {
        node,
        members,
        control,
    })
}

fn strings(value: &Map<String, Value>, key: &str) -> Result<Vec<String>, String> {
    value
        .get(key)
        .and_then(Value::as_array)
        .ok_or_else(|| format!("field `control.{key}` is missing or not a list"))?
        .iter()
        .map(|item| {
            item.as_str()
                .map(str::to_owned)
                .ok_or_else(|| format!("`control.{key}` holds a non-string"))
        })
        .collect()
}

fn parse_control(value: &Value) -> Result<ControlStatus, String> {
    let control = value.as_object().ok_or("`control` is not an object")?;
    let nodes = objects(control, "nodes", "control.nodes")?
        .into_iter()
        .map(|(path, node)| {
            Ok(ControlNode {
                node: string(node, "node", &path)?,
                applied: node.get("applied").and_then(Value::as_u64),
                config: string(node, "config", &path)?,
                error: optional_string(node, "error")?,
            })
        })
        .collect::<Result<_, String>>()?;
    Ok(ControlStatus {
        leader: optional_string(control, "leader")?,
        term: control
            .get("term")
            .and_then(Value::as_u64)
            .ok_or("field `control.term` is missing or not a number")?,
        voters: strings(control, "voters")?,
        learners: strings(control, "learners")?,
        config_comparison: string(control, "config_comparison", "control")?,
        nodes,
    })
}

fn parse_owner(result: &str) -> Result<TopicOwner, String> {
    let root = parse_root(result)?;
    let shard = match root.get("shard") {
        None | Some(Value::Null) => None,
        Some(value) => Some(
            value
                .as_u64()
                .and_then(|shard| u16::try_from(shard).ok())
                .ok_or("field `shard` is not a shard number")?,
        ),
    };
    Ok(TopicOwner {
        node: optional_string(&root, "node")?,
        client: optional_string(&root, "client")?,
        shard,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_and_owner_results_parse_and_malformed_ones_say_why() {
        let status = parse_status(
            r#"{"node":"10.0.0.1:7500","members":[{"node":"10.0.0.1:7500","client":"10.0.0.1:7400","state":"alive","leaving":false,"extra":1}]}"#,
        )
        .unwrap();
        assert_eq!(status.node.as_deref(), Some("10.0.0.1:7500"));
        assert_eq!(status.members[0].state, "alive");
        let alone = parse_status(r#"{"node":null,"members":[]}"#).unwrap();
        assert_eq!(
            alone,
            ClusterStatus {
                node: None,
                members: vec![],
                control: None,
            }
        );
        let control = parse_status(
            r#"{"node":"a:1","members":[],"control":{"leader":"a:1","term":2,"voters":["a:1"],
                "learners":[],"config_comparison":"available",
                "nodes":[{"node":"a:1","applied":7,"config":"same"},
                         {"node":"b:1","applied":null,"config":"unknown","error":"refused"}]}}"#,
        )
        .unwrap()
        .control
        .expect("a control plane");
        assert_eq!(control.leader.as_deref(), Some("a:1"));
        assert_eq!(control.nodes[0].applied, Some(7));
        assert_eq!(control.nodes[1].error.as_deref(), Some("refused"));
        assert_eq!(
            parse_status(r#"{"node":"a:1","members":[],"control":{"term":1}}"#).unwrap_err(),
            "field `control.nodes` is missing or not a list"
        );
        assert_eq!(
            parse_status(r#"{"members":[{"node":"a"}]}"#).unwrap_err(),
            "field `members[0].client` is missing or not a string"
        );
        let owner =
            parse_owner(r#"{"node":"10.0.0.2:7500","client":"10.0.0.2:7400","shard":null}"#)
                .unwrap();
        assert_eq!(owner.shard, None);
        assert_eq!(
            parse_owner(r#"{"node":null,"shard":3}"#).unwrap().shard,
            Some(3)
        );
        assert!(parse_owner(r#"{"shard":-1}"#).is_err());
    }
}
