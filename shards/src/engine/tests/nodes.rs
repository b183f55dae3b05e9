//! A shard in a cluster, with the member list fixed by hand and links that
//! never come up: what a peer can make it hold is bounded.

use std::net::SocketAddr;
use std::sync::Arc;

use super::*;
use crate::cluster::{NodeMap, Placement};

/// A member list that never changes.
#[derive(Debug)]
struct FixedNodes(Placement);

impl NodeMap for FixedNodes {
    fn version(&self) -> u64 {
        self.0.version
    }
    fn placement(&self) -> Placement {
        self.0.clone()
    }
    fn peer_credentials(&self, _now_ms: u64) -> Vec<u8> {
        b"cbpeer1.test".to_vec()
    }
    fn verify_peer(&self, credentials: &[u8], _now_ms: u64) -> Result<String, String> {
        match credentials {
            b"cbpeer1.test" => Ok(OTHER.into()),
            _ => Err("not the test's peer".into()),
        }
    }
}

const OTHER: &str = "127.0.0.2:7400";

fn other() -> SocketAddr {
    OTHER.parse().expect("an address")
}

/// One shard, member of a cluster with one other node, alive (`leaving`
/// false: topics are placed on both) or leaving (every topic is this
/// node's, and the other node is where their state would come from).
fn member(leaving: bool) -> Cluster {
    member_with(leaving, EngineConfig::default())
}

/// [`member`] with `config`.
fn member_with(leaving: bool, config: EngineConfig) -> Cluster {
    let mut placement = Placement {
        version: 1,
        keys: vec![1],
        clients: vec![None],
        ..Placement::default()
    };
    if leaving {
        placement.leaving_keys.push(2);
        placement.leaving_clients.push(Some(other()));
    } else {
        placement.keys.push(2);
        placement.clients.push(Some(other()));
    }
    let mut cluster = Cluster::new(1, config.clone());
    let shard = std::mem::replace(&mut cluster.shards[0], Shard::new(0, 1, config, 7));
    cluster.shards[0] = shard.with_nodes(Arc::new(FixedNodes(placement)));
    cluster
}

fn big_publish(topic: &TopicKey, request_id: u32, size: usize) -> Frame {
    Frame::Publish(Publish {
        request_id,
        ack: true,
        topic: topic.clone(),
        body: Body::plain(&vec![7u8; size]),
    })
}

fn refusals(frames: &[OutFrame]) -> Vec<u32> {
    frames
        .iter()
        .filter_map(|frame| match frame {
            OutFrame::Error(error) if error.code() == Some(ErrorCode::OwnerUnavailable) => {
                Some(error.request_id)
            }
            _ => None,
        })
        .collect()
}

#[test]
fn publishes_for_an_unreachable_owner_are_bounded_then_refused() {
    let mut cluster = member(false);
    let remote = (0..)
        .map(|i| topic(&format!("far{i}")))
        .find(|t| {
            let nodes = cluster.shards[0].nodes.as_ref().expect("a member");
            nodes.placement.owner(t) == Some(other())
        })
        .expect("some topic lands on the other node");
    let publisher = cluster.connect(0);
    const SIZE: usize = 64 * 1024;
    let count = (crate::engine::nodes::LINK_HIGH_WATER / SIZE + 20) as u32;
    for request_id in 1..=count {
        cluster.send(publisher, big_publish(&remote, request_id, SIZE));
    }
    let started = cluster.shards[0].take_link_starts(Waker::noop());
    assert_eq!(started, vec![other()], "the link's task was asked for");
    let refused = refusals(&cluster.take_conn(publisher));
    // The link never came up: what waits for it stops at the high-water
    // mark (one publish past it), and the rest is refused, each by id.
    let held = (crate::engine::nodes::LINK_HIGH_WATER / (SIZE + 64) + 1) as u32;
    assert_eq!(refused, ((held + 1)..=count).collect::<Vec<_>>());
    assert!(
        cluster.shards[0].links_backlogged(),
        "readers pause meanwhile"
    );
    // The link fails for good: what waited is refused too, and nothing is held.
    cluster.shards[0].link_down(other(), "refused");
    let refused = refusals(&cluster.take_conn(publisher));
    assert_eq!(refused, (1..=held).collect::<Vec<_>>());
    assert!(!cluster.shards[0].links_backlogged());
}

#[test]
fn a_topic_being_taken_over_parks_a_bounded_number_of_publishes() {
    let mut cluster = member(true);
    let here = topic("taken");
    let publisher = cluster.connect(0);
    let count = crate::engine::nodes::PARKED_MAX as u32 + 5;
    for request_id in 1..=count {
        cluster.send(publisher, publish(&here, request_id, "x"));
    }
    // Its state is asked of the leaving node; meanwhile publishes wait, up
    // to the bound; the rest are refused at once.
    let frames = cluster.take_conn(publisher);
    assert_eq!(
        refusals(&frames),
        ((crate::engine::nodes::PARKED_MAX as u32 + 1)..=count).collect::<Vec<_>>()
    );
    assert!(
        !frames.iter().any(|f| matches!(f, OutFrame::PubAck { .. })),
        "nothing sequenced before the state came"
    );
    // No answer within the pull's deadline: a new epoch, and the waiting
    // publishes are sequenced in order.
    cluster.shards[0].tick(crate::engine::nodes::PULL_TIMEOUT_MS + 1);
    let acks: Vec<(u32, u64)> = cluster
        .take_conn(publisher)
        .iter()
        .filter_map(|frame| match frame {
            OutFrame::PubAck { request_id, seq } => Some((*request_id, *seq)),
            _ => None,
        })
        .collect();
    let expected: Vec<(u32, u64)> = (1..=crate::engine::nodes::PARKED_MAX as u32)
        .map(|id| (id, u64::from(id)))
        .collect();
    assert_eq!(acks, expected);
}

/// The other node's answer to a pattern fetch on the link: `count`
/// retained messages of `size` bytes to `big/{n}`, then `REPLAY_END`.
fn answer_fetch(cluster: &mut Cluster, link_sub: u32, count: u64, size: usize) {
    for n in 0..count {
        let message = Frame::TopicMessage(corebus_net::TopicMessage {
            sub_id: link_sub,
            epoch: 9,
            seq: 1,
            topic: format!("big/{n}"),
            body: Body::plain(&vec![1u8; size]).retained_if(true),
        });
        cluster.shards[0].handle_link_frame(other(), message);
    }
    let end = Frame::ReplayEnd(corebus_net::ReplayEnd {
        sub_id: link_sub,
        last_seq: count,
    });
    cluster.shards[0].handle_link_frame(other(), end);
}

/// What a fetch's answer brought the client: the `TOPIC_MESSAGE`s and the
/// `REPLAY_END`'s count.
fn fetched(frames: &[OutFrame]) -> (usize, Option<u64>) {
    let messages = frames
        .iter()
        .filter(|frame| matches!(frame, OutFrame::Encoded(_)))
        .count();
    let end = frames.iter().find_map(|frame| match frame {
        OutFrame::ReplayEnd { last_seq, .. } => Some(*last_seq),
        _ => None,
    });
    (messages, end)
}

#[test]
fn what_a_shard_gathers_from_another_nodes_retained_answers_is_bounded() {
    // A client with room for all of it: the bound is the link's.
    let mut cluster = member_with(
        false,
        EngineConfig {
            outbox_limit_bytes: 64 << 20,
            ..EngineConfig::default()
        },
    );
    let client = cluster.connect(0);
    let fetch = |sub_id| {
        Frame::FetchRetained(Subscribe {
            request_id: sub_id,
            sub_id,
            resume: None,
            topic: topic("big/*"),
        })
    };
    // Asked once the link is up (its first subscription id on the link).
    cluster.send(client, fetch(1));
    cluster.shards[0].link_up(other());
    const SIZE: usize = 1 << 20;
    let count = (crate::engine::retained::LINK_FETCH_BYTES / SIZE + 4) as u64;
    let dropped = cluster.shards[0].stats.messages_dropped;
    answer_fetch(&mut cluster, 1, count, SIZE);
    let (messages, end) = fetched(&cluster.take_conn(client));
    // Within the bound, each message counted with its overhead: one fewer
    // than the bound's megabytes.
    let held = crate::engine::retained::LINK_FETCH_BYTES / SIZE - 1;
    assert_eq!((messages, end), (held, Some(held as u64)));
    assert_eq!(
        cluster.shards[0].stats.messages_dropped - dropped,
        count - held as u64,
        "what was left out is counted"
    );
    // The answer is over: its bytes are free for the next one.
    cluster.send(client, fetch(2));
    answer_fetch(&mut cluster, 2, 3, SIZE);
    assert_eq!(fetched(&cluster.take_conn(client)), (3, Some(3)));
}

/// The `SESSION_REQUEST`s the shard wrote on its link to the other node.
fn session_requests(cluster: &mut Cluster) -> Vec<corebus_net::SessionFrame> {
    let Ok(Some(mut out)) = cluster.shards[0].take_link_out(other(), Waker::noop()) else {
        return Vec::new();
    };
    let mut found = Vec::new();
    while let Ok(corebus_net::Check::Complete { len }) = corebus_net::check(&out, u32::MAX) {
        if let Ok(Frame::SessionRequest(request)) = corebus_net::decode(out.split_to(len).freeze())
        {
            found.push(request);
        }
    }
    found
}

#[test]
fn a_client_id_claim_is_answered_by_its_home_or_fails_with_its_link() {
    use crate::engine::Arrival;
    let mut cluster = member(false);
    let client = cluster.connect(0);
    let claim = (7, bytes::Bytes::from_static(b"claim"));
    // Asked while the link is not up; the link fails: no answer is coming.
    cluster.shards[0].claim_at_home(other(), client.1, claim.clone());
    assert!(cluster.shards[0].take_arrival(client.1).is_none());
    cluster.shards[0].link_down(other(), "refused");
    assert!(matches!(
        cluster.shards[0].take_arrival(client.1),
        Some(Arrival::Claimed(None))
    ));
    // Asked again, and answered: the answer reaches the connection, once.
    cluster.shards[0].claim_at_home(other(), client.1, claim);
    cluster.shards[0].link_up(other());
    let sent = session_requests(&mut cluster);
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!((sent[0].kind, &sent[0].body[..]), (7, &b"claim"[..]));
    let reply = |request_id| {
        Frame::SessionReply(corebus_net::SessionFrame {
            request_id,
            kind: crate::mqtt::homes::wire::CLAIMED,
            body: bytes::Bytes::from_static(&[0]),
        })
    };
    cluster.shards[0].handle_link_frame(other(), reply(sent[0].request_id + 1));
    assert!(
        cluster.shards[0].take_arrival(client.1).is_none(),
        "not its id"
    );
    cluster.shards[0].handle_link_frame(other(), reply(sent[0].request_id));
    match cluster.shards[0].take_arrival(client.1) {
        Some(Arrival::Claimed(Some(_))) => {}
        other => panic!("the home's answer, not {other:?}"),
    }
    cluster.shards[0].handle_link_frame(other(), reply(sent[0].request_id));
    assert!(
        cluster.shards[0].take_arrival(client.1).is_none(),
        "answered once"
    );
    // A home that does not understand the claim answers ERROR: refused.
    cluster.shards[0].claim_at_home(other(), client.1, (7, bytes::Bytes::new()));
    let sent = session_requests(&mut cluster);
    let error =
        corebus_net::ErrorFrame::new(sent[0].request_id, ErrorCode::UnknownOpcode, false, "no");
    cluster.shards[0].handle_link_frame(other(), Frame::Error(error));
    assert!(matches!(
        cluster.shards[0].take_arrival(client.1),
        Some(Arrival::Claimed(None))
    ));
    cluster.shards[0].link_down(other(), "gone");
    assert!(cluster.shards[0].take_arrival(client.1).is_none());
}

#[test]
fn only_another_node_may_send_session_requests() {
    let mut cluster = member(false);
    let client = cluster.connect(0);
    let forbidden = cluster.shards[0].stats.forbidden;
    cluster.send(
        client,
        Frame::SessionRequest(corebus_net::SessionFrame {
            request_id: 3,
            kind: crate::mqtt::homes::wire::TAKE_OVER,
            body: bytes::Bytes::from_static(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 1]),
        }),
    );
    let frames = cluster.take_conn(client);
    assert!(
        frames.iter().any(|frame| matches!(frame,
            OutFrame::Error(error) if error.code() == Some(ErrorCode::Forbidden) && error.request_id == 3)),
        "{frames:?}"
    );
    assert_eq!(cluster.shards[0].stats.forbidden, forbidden + 1);
}

/// A connection from the other node's link (its `HELLO` carries the
/// test's peer credentials).
fn connect_peer(cluster: &mut Cluster) -> ConnId {
    let conn = cluster.shards[0].open_conn();
    let hello = Frame::Hello(Hello {
        version: corebus_net::PROTOCOL_VERSION,
        client_name: "node".into(),
        credentials: bytes::Bytes::from_static(b"cbpeer1.test"),
    });
    assert_eq!(cluster.shards[0].handle_frame(conn, hello), Flow::Continue);
    assert!(matches!(
        cluster.take(0, conn)[..],
        [OutFrame::Welcome { .. }]
    ));
    conn
}

/// Part of a session for `to`, from the other node's link.
fn session_part(to: ConnId, last: bool, chunk: &[u8]) -> Frame {
    let mut body = vec![0, 0];
    body.extend_from_slice(&to.0.to_be_bytes());
    body.push(u8::from(last));
    body.extend_from_slice(chunk);
    Frame::SessionRequest(corebus_net::SessionFrame {
        request_id: 0,
        kind: crate::mqtt::homes::wire::SESSION,
        body: body.into(),
    })
}

#[test]
fn a_session_wanted_of_another_node_arrives_or_is_none_but_never_hangs() {
    use crate::engine::Arrival;
    use crate::mesh::Holder;
    let mut cluster = member(false);
    let taking = cluster.connect(0).1;
    let elsewhere = Holder {
        node: Some(other()),
        ..Holder::local(0, ConnId(5))
    };
    // The link breaks before the session comes: none, at once.
    cluster.shards[0].want_session(elsewhere, Holder::local(0, taking));
    assert!(cluster.shards[0].take_arrival(taking).is_none());
    cluster.shards[0].link_down(other(), "cut");
    assert!(matches!(
        cluster.shards[0].take_arrival(taking),
        Some(Arrival::Session(None))
    ));
    // The other node's link sends a session in parts and closes midway:
    // none, too.
    let link = connect_peer(&mut cluster);
    cluster.send((0, link), session_part(taking, false, b"\x01"));
    assert!(cluster.shards[0].take_arrival(taking).is_none());
    cluster.shards[0].close_conn(link);
    assert!(matches!(
        cluster.shards[0].take_arrival(taking),
        Some(Arrival::Session(None))
    ));
    // Whole, it arrives (an empty session here: none to resume).
    let link = connect_peer(&mut cluster);
    cluster.send((0, link), session_part(taking, true, b""));
    assert!(matches!(
        cluster.shards[0].take_arrival(taking),
        Some(Arrival::Session(None))
    ));
}

#[test]
fn what_another_node_sends_of_sessions_at_once_is_bounded() {
    use crate::engine::Arrival;
    let mut cluster = member(false);
    let (first, second) = (cluster.connect(0).1, cluster.connect(0).1);
    let link = connect_peer(&mut cluster);
    let chunk = vec![0u8; 1 << 20];
    let half = crate::mqtt::homes::wire::GATHER_MAX / chunk.len() / 2;
    // Two sessions at once, each half the bound: the second goes past it
    // and is dropped; the first, whole, still arrives (here, as bytes that
    // do not decode: none).
    for _ in 0..half {
        cluster.send((0, link), session_part(first, false, &chunk));
        cluster.send((0, link), session_part(second, false, &chunk));
    }
    let held: usize = cluster.shards[0]
        .session_parts
        .values()
        .map(|gathering| gathering.0)
        .sum();
    assert!(held <= crate::mqtt::homes::wire::GATHER_MAX, "{held}");
    let dropped = cluster.shards[0]
        .session_parts
        .get(&(link, 0, second))
        .is_some_and(|gathering| gathering.1.is_none());
    assert!(dropped, "the one past the bound is dropped");
    cluster.send((0, link), session_part(second, true, b""));
    cluster.send((0, link), session_part(first, true, b""));
    for conn in [first, second] {
        assert!(matches!(
            cluster.shards[0].take_arrival(conn),
            Some(Arrival::Session(None))
        ));
    }
    assert!(cluster.shards[0].session_parts.is_empty());
}

#[test]
fn a_claim_answered_after_its_connection_ended_still_closes_the_previous_holder() {
    let mut cluster = member(false);
    let client = cluster.connect(0).1;
    cluster.shards[0].claim_at_home(other(), client, (1, bytes::Bytes::new()));
    cluster.shards[0].link_up(other());
    let sent = session_requests(&mut cluster);
    cluster.shards[0].close_conn(client);
    // The home says a connection of its own held the id (shard 0, conn 9).
    let mut body = vec![2, 0, 0];
    body.extend_from_slice(&9u64.to_be_bytes());
    body.push(0);
    let reply = Frame::SessionReply(corebus_net::SessionFrame {
        request_id: sent[0].request_id,
        kind: crate::mqtt::homes::wire::CLAIMED,
        body: body.into(),
    });
    cluster.shards[0].handle_link_frame(other(), reply);
    let told = session_requests(&mut cluster);
    assert_eq!(told.len(), 1, "{told:?}");
    assert_eq!(told[0].kind, crate::mqtt::homes::wire::TAKE_OVER);
    assert_eq!(&told[0].body[..], &[0, 0, 0, 0, 0, 0, 0, 0, 0, 9][..]);
}

#[test]
fn a_retained_fetch_waits_for_a_topic_being_taken_over_and_finds_its_message() {
    let mut cluster = member(true);
    let client = cluster.connect(0);
    cluster.send(
        client,
        Frame::FetchRetained(Subscribe {
            request_id: 1,
            sub_id: 1,
            resume: None,
            topic: topic("kept"),
        }),
    );
    // The topic's state is asked of the node it comes from; the fetch waits.
    assert_eq!(fetched(&cluster.take_conn(client)), (0, None));
    cluster.shards[0].link_up(other());
    let Ok(Some(mut out)) = cluster.shards[0].take_link_out(other(), Waker::noop()) else {
        panic!("the handoff request");
    };
    let Ok(corebus_net::Check::Complete { len }) = corebus_net::check(&out, u32::MAX) else {
        panic!("a frame");
    };
    let Ok(Frame::HandoffRequest(request)) = corebus_net::decode(out.split_to(len).freeze()) else {
        panic!("a HANDOFF_REQUEST");
    };
    // The state comes, with the topic's retained message before its end.
    let sub_id = request.sub_id;
    let frames = [
        Frame::SubOk(corebus_net::SubOk {
            request_id: request.request_id,
            sub_id,
            epoch: 5,
            start_after: 3,
        }),
        Frame::TopicMessage(corebus_net::TopicMessage {
            sub_id,
            epoch: 5,
            seq: 2,
            topic: "kept".into(),
            body: Body::plain(b"last").retained_if(true),
        }),
        Frame::ReplayEnd(corebus_net::ReplayEnd {
            sub_id,
            last_seq: 3,
        }),
    ];
    for frame in frames {
        cluster.shards[0].handle_link_frame(other(), frame);
    }
    assert_eq!(fetched(&cluster.take_conn(client)), (1, Some(1)));
    assert_eq!(cluster.shards[0].retained_messages.len(), 1, "kept here");
}
