//! The cluster as the broker's clients see it: answers to `CLUSTER_REQUEST`
//! commands from the membership thread's member list, and
//! `corebus cluster status|owner`.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use corebus_cluster::{ClusterView, LinkKey, MemberState, MemberView};
use corebus_net::routing::{node_key, owner_of_hash};
use corebus_net::TopicKey;
use corebus_shards::{
    ClusterCommandError, ClusterControl, CommandAnswer, CommandResult, NodeMap, Placement,
};
use serde_json::{json, Value};

use crate::cli::ClusterCommand;
use crate::pubsub::connect;
use crate::stdio;

/// The member list as the broker's parts need it: answers to cluster
/// commands, and the shards' [`NodeMap`] (owners, link credentials). Until
/// the membership thread has started (or when the node runs alone), this
/// node is the only member.
#[derive(Debug, Default)]
pub struct ClusterCommands {
    membership: OnceLock<(SocketAddr, Arc<ClusterView>)>,
    /// This node's client address: how its links name it.
    client: OnceLock<SocketAddr>,
    links: OnceLock<LinkKey>,
    control: OnceLock<crate::control::ControlHandle>,
}

impl ClusterCommands {
    /// Starts answering from `view`, the member list of node `node`.
    pub fn attach(&self, node: SocketAddr, view: Arc<ClusterView>) {
        let _ = self.membership.set((node, view));
    }

    /// The key of the links' credentials (from the cluster secret), and
    /// the client address that names this node in them.
    pub fn set_links(&self, key: LinkKey, client: SocketAddr) {
        let _ = self.links.set(key);
        let _ = self.client.set(client);
    }

    /// Reports the control plane in `cluster status` from now on.
    pub fn set_control(&self, control: crate::control::ControlHandle) {
        let _ = self.control.set(control);
    }

    fn status(&self) -> Value {
        match self.membership.get() {
            None => json!({ "node": null, "members": [] }),
            Some((node, view)) => {
                let members: Vec<Value> = view
                    .snapshot()
                    .members
                    .iter()
                    .map(|member| {
                        json!({
                            "node": member.node.addr.to_string(),
                            "client": member.node.client.to_string(),
                            "state": member.state.name(),
                            "leaving": member.node.leaving,
                        })
                    })
                    .collect();
                let control = self.control.get().map_or(Value::Null, |c| c.status());
                json!({ "node": node.to_string(), "members": members, "control": control })
            }
        }
    }

    fn owner(&self, command: &Value, shard_count: usize) -> Result<Value, ClusterCommandError> {
        let text = |key: &str| {
            command.get(key).and_then(Value::as_str).ok_or_else(|| {
                ClusterCommandError::Invalid(format!("`{key}` is missing or not a string"))
            })
        };
        let topic = TopicKey::new(text("ns")?.as_bytes(), text("topic")?.as_bytes())
            .map_err(|err| ClusterCommandError::Invalid(format!("invalid topic: {err}")))?;
        let hash = topic.stable_hash();
        let local_shard = owner_of_hash(hash, shard_count as u64);
        Ok(match self.membership.get() {
            None => json!({ "node": null, "client": null, "shard": local_shard }),
            Some((node, view)) => {
                let members: Arc<MemberView> = view.snapshot();
                match members.owner(hash) {
                    None => json!({ "node": null, "client": null, "shard": null }),
                    Some(owner) => {
                        let here = owner.node.addr == *node;
                        json!({
                            "node": owner.node.addr.to_string(),
                            "client": owner.node.client.to_string(),
                            "shard": if here { Some(local_shard) } else { None },
                        })
                    }
                }
            }
        })
    }
}

impl NodeMap for ClusterCommands {
    fn version(&self) -> u64 {
        self.membership.get().map_or(0, |(_, view)| view.version())
    }

    fn placement(&self) -> Placement {
        let Some((node, view)) = self.membership.get() else {
            return Placement::default();
        };
        let members = view.snapshot();
        let mut placement = Placement {
            version: members.version,
            ..Placement::default()
        };
        for member in &members.members {
            let key = node_key(&member.node.addr.to_string());
            let client = (member.node.addr != *node).then_some(member.node.client);
            if member.places_topics() {
                placement.keys.push(key);
                placement.clients.push(client);
            } else if member.state != MemberState::Down {
                placement.leaving_keys.push(key);
                placement.leaving_clients.push(client);
            }
        }
        placement
    }

    fn peer_credentials(&self, now_ms: u64) -> Vec<u8> {
        match (self.links.get(), self.client.get()) {
            (Some(key), Some(client)) => key.credentials(&client.to_string(), now_ms).into_bytes(),
            _ => Vec::new(),
        }
    }

    fn verify_peer(&self, credentials: &[u8], now_ms: u64) -> Result<String, String> {
        match self.links.get() {
            Some(key) => key.verify(credentials, now_ms),
            None => Err("this broker is not a member of a cluster".into()),
        }
    }
}

impl ClusterCommands {
    /// A command answered from the member list.
    fn answer_now(&self, command: &Value, shard_count: usize) -> CommandResult {
        let result = match command.get("op").and_then(Value::as_str) {
            Some("status") => self.status(),
            Some("owner") => self.owner(command, shard_count)?,
            Some("snapshot") => match self.control.get() {
                Some(control) => control.snapshot(),
                None => return Err(not_a_member()),
            },
            Some(other) => {
                return Err(ClusterCommandError::Invalid(format!(
                    "unknown op {other:?}: {OPS}"
                )))
            }
            None => {
                return Err(ClusterCommandError::Invalid(format!(
                    "`op` is missing: {OPS}"
                )))
            }
        };
        Ok(result.to_string())
    }
}

/// The cluster commands.
const OPS: &str = "status, owner, snapshot or remove";

fn not_a_member() -> ClusterCommandError {
    ClusterCommandError::Invalid("this broker is not a member of a cluster".into())
}

impl ClusterControl for ClusterCommands {
    fn command(&self, command: &str, shard_count: usize) -> CommandAnswer {
        let command: Value = match serde_json::from_str(command) {
            Ok(command) => command,
            Err(err) => {
                return CommandAnswer::Now(Err(ClusterCommandError::Invalid(format!(
                    "not a JSON object: {err}"
                ))))
            }
        };
        if command.get("op").and_then(Value::as_str) != Some("remove") {
            return CommandAnswer::Now(self.answer_now(&command, shard_count));
        }
        let Some(control) = self.control.get() else {
            return CommandAnswer::Now(Err(not_a_member()));
        };
        let node = match command.get("node").and_then(Value::as_str).map(str::parse) {
            Some(Ok(node)) => node,
            _ => {
                return CommandAnswer::Now(Err(ClusterCommandError::Invalid(
                    "`node` is missing or not a node id (its cluster address)".into(),
                )))
            }
        };
        let (done, answer) = flume::bounded(1);
        control.remove(node, done);
        CommandAnswer::Later(answer)
    }
}

/// Runs `corebus cluster status|owner` against a node.
pub async fn main(command: ClusterCommand) -> anyhow::Result<()> {
    match command {
        ClusterCommand::Status { json, server } => {
            let client = connect(&server, "corebus-cluster").await?;
            let status = client.cluster_status().await?;
            if json {
                let members: Vec<Value> = status
                    .members
                    .iter()
                    .map(|member| {
                        json!({
                            "node": member.node,
                            "client": member.client,
                            "state": member.state,
                            "leaving": member.leaving,
                        })
                    })
                    .collect();
                let control = status.control.as_ref().map(|control| {
                    json!({
                        "leader": control.leader,
                        "term": control.term,
                        "voters": control.voters,
                        "learners": control.learners,
                        "config_comparison": control.config_comparison,
                        "nodes": control.nodes.iter().map(|node| json!({
                            "node": node.node,
                            "applied": node.applied,
                            "config": node.config,
                            "error": node.error,
                        })).collect::<Vec<_>>(),
                    })
                });
                stdio::line(
                    json!({ "node": status.node, "members": members, "control": control }),
                )?;
            } else if status.node.is_none() {
                stdio::line("this node runs alone (no cluster_listen)")?;
            } else {
                for member in &status.members {
                    let me = if Some(&member.node) == status.node.as_ref() {
                        " (this node)"
                    } else {
                        ""
                    };
                    let leaving = if member.leaving { ", leaving" } else { "" };
                    stdio::line(format_args!(
                        "{} {}{leaving}, clients on {}{me}",
                        member.node, member.state, member.client
                    ))?;
                }
                if let Some(control) = &status.control {
                    print_control(control)?;
                }
            }
        }
        ClusterCommand::Snapshot { out, server } => {
            let client = connect(&server, "corebus-cluster").await?;
            let snapshot = client.control_snapshot().await?;
            write_private(&out, snapshot.as_bytes())?;
            stdio::line(format_args!("control plane saved to {}", out.display()))?;
        }
        ClusterCommand::Remove { node, server } => {
            let client = connect(&server, "corebus-cluster").await?;
            client.remove_cluster_node(&node).await?;
            stdio::line(format_args!("removed {node} from the control plane"))?;
        }
        ClusterCommand::Owner {
            namespace,
            topic,
            server,
        } => {
            let client = connect(&server, "corebus-cluster").await?;
            let owner = client.topic_owner(&namespace, &topic).await?;
            match (owner.node, owner.client, owner.shard) {
                (Some(node), Some(client), Some(shard)) => stdio::line(format_args!(
                    "{namespace}/{topic}: node {node} (clients on {client}), shard {shard}"
                ))?,
                (Some(node), Some(client), None) => stdio::line(format_args!(
                    "{namespace}/{topic}: node {node} (clients on {client})"
                ))?,
                (None, _, Some(shard)) => stdio::line(format_args!(
                    "{namespace}/{topic}: this node (it runs alone), shard {shard}"
                ))?,
                _ => stdio::line(format_args!("{namespace}/{topic}: no node can own it now"))?,
            }
        }
    }
    Ok(())
}

/// Writes `bytes` to a new file at `path`, readable by its owner only.
fn write_private(path: &std::path::Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|err| anyhow::anyhow!("cannot create {}: {err}", path.display()))?;
    file.write_all(bytes)
        .and_then(|()| file.write_all(b"\n"))
        .and_then(|()| file.sync_all())
        .map_err(|err| anyhow::anyhow!("cannot write {}: {err}", path.display()))
}

/// The control plane's lines of `cluster status`.
fn print_control(control: &corebus_client::ControlStatus) -> anyhow::Result<()> {
    let list = |nodes: &[String]| match nodes.is_empty() {
        true => "none".to_string(),
        false => nodes.join(", "),
    };
    stdio::line(format_args!(
        "control plane: leader {} (term {}); voters {}; learners {}",
        control.leader.as_deref().unwrap_or("none"),
        control.term,
        list(&control.voters),
        list(&control.learners)
    ))?;
    if control.config_comparison != "available" {
        stdio::line(format_args!(
            "  configuration comparison {}",
            control.config_comparison
        ))?;
    }
    for node in &control.nodes {
        match (&node.applied, &node.error) {
            (Some(applied), _) => stdio::line(format_args!(
                "  {} applied {applied}, configuration {}",
                node.node, node.config
            ))?,
            (None, error) => stdio::line(format_args!(
                "  {} did not answer: {}",
                node.node,
                error.as_deref().unwrap_or("no reason given")
            ))?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now(answer: CommandAnswer) -> CommandResult {
        match answer {
            CommandAnswer::Now(result) => result,
            CommandAnswer::Later(_) => panic!("answered later"),
        }
    }

    #[test]
    fn a_lone_node_answers_for_itself_and_bad_commands_are_invalid() {
        let commands = ClusterCommands::default();
        let status: Value =
            serde_json::from_str(&now(commands.command(r#"{"op":"status"}"#, 2)).unwrap()).unwrap();
        assert_eq!(status, json!({ "node": null, "members": [] }));
        let owner: Value = serde_json::from_str(
            &now(commands.command(r#"{"op":"owner","ns":"app","topic":"news"}"#, 8)).unwrap(),
        )
        .unwrap();
        // The shard golden table: app/news is shard 0 of 8 (net/src/routing.rs).
        assert_eq!(
            owner["shard"],
            json!(owner_of_hash(corebus_net::key_hash(b"app", b"news"), 8))
        );
        for (bad, why) in [
            ("[]", "`op` is missing"),
            (r#"{"op":"drop"}"#, "unknown op"),
            (r#"{"op":"owner","ns":"app"}"#, "`topic` is missing"),
            (r#"{"op":"owner","ns":"","topic":"t"}"#, "invalid topic"),
            ("{", "not a JSON object"),
            (r#"{"op":"snapshot"}"#, "not a member"),
            (r#"{"op":"remove","node":"127.0.0.1:1"}"#, "not a member"),
        ] {
            let err = now(commands.command(bad, 1)).unwrap_err();
            assert!(
                matches!(&err, ClusterCommandError::Invalid(text) if text.contains(why)),
                "{bad}: {err}"
            );
        }
    }
}
