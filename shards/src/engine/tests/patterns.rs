//! Pattern subscriptions across shards: registration with every shard
//! before `SUB_OK`, matching on whichever shard owns a topic, one
//! `TOPIC_MESSAGE` per subscription with the topic's own epoch and
//! sequence, and the interest withdrawn everywhere at the end.

use corebus_net::{decode, Frame};

use super::*;

/// The `TOPIC_MESSAGE`s among `frames`: (sub id, topic, seq, payload).
fn topic_messages(frames: &[OutFrame]) -> Vec<(u32, String, u64, String)> {
    frames
        .iter()
        .filter_map(|frame| match frame {
            OutFrame::Encoded(bytes) => match decode(bytes.clone()) {
                Ok(Frame::TopicMessage(message)) => Some((
                    message.sub_id,
                    message.topic,
                    message.seq,
                    String::from_utf8_lossy(&message.body.payload()).into_owned(),
                )),
                other => panic!("not a TOPIC_MESSAGE: {other:?}"),
            },
            _ => None,
        })
        .collect()
}

fn registrations(cluster: &Cluster) -> Vec<usize> {
    cluster
        .shards
        .iter()
        .map(|shard| shard.patterns.len())
        .collect()
}

#[test]
fn a_pattern_receives_every_matching_topic_from_every_shard_with_its_own_sequence() {
    let mut cluster = Cluster::new(3, EngineConfig::default());
    let subscriber = cluster.connect(1);
    let publisher = cluster.connect(2);
    cluster.send(subscriber, subscribe(&topic("orders/*"), 1, 7));
    assert_eq!(
        sub_ok(&cluster.take_conn(subscriber), 7),
        None,
        "no SUB_OK before every shard registered the pattern"
    );
    cluster.pump();
    assert_eq!(sub_ok(&cluster.take_conn(subscriber), 7), Some((0, 0)));
    assert_eq!(registrations(&cluster), vec![1, 1, 1]);

    // Topics owned by each shard, two messages on one of them, and topics
    // the pattern does not match.
    let a = topic("orders/a");
    let owners: Vec<ShardId> = (0..3)
        .map(|shard| {
            let t = (0..)
                .map(|i| topic(&format!("orders/t{i}")))
                .find(|t| routing::owner(t, 3) == shard)
                .expect("some topic hashes to every shard");
            cluster.send(publisher, publish(&t, 10 + u32::from(shard), "x"));
            routing::owner(&t, 3)
        })
        .collect();
    assert_eq!(owners, vec![0, 1, 2]);
    cluster.send(publisher, publish(&a, 20, "first"));
    cluster.send(publisher, publish(&a, 21, "second"));
    cluster.send(publisher, publish(&topic("orders/a/deeper"), 22, "no"));
    cluster.send(publisher, publish(&topic("other/a"), 23, "no"));
    cluster.pump();
    let mut got = topic_messages(&cluster.take_conn(subscriber));
    got.sort();
    assert_eq!(got.len(), 5, "{got:?}");
    assert!(got.iter().all(|(sub, _, _, _)| *sub == 7));
    let of_a: Vec<(u64, &str)> = got
        .iter()
        .filter(|(_, t, _, _)| t == "orders/a")
        .map(|(_, _, seq, payload)| (*seq, payload.as_str()))
        .collect();
    assert_eq!(
        of_a,
        vec![(1, "first"), (2, "second")],
        "the topic's own sequence"
    );

    cluster.send(
        subscriber,
        Frame::Unsubscribe(corebus_net::Unsubscribe {
            request_id: 2,
            sub_id: 7,
        }),
    );
    cluster.pump();
    assert_eq!(
        registrations(&cluster),
        vec![0, 0, 0],
        "withdrawn everywhere"
    );
    cluster.send(publisher, publish(&a, 24, "after"));
    cluster.pump();
    assert!(topic_messages(&cluster.take_conn(subscriber)).is_empty());
}

/// Two subscriptions of one pattern on a shard share one registration per
/// shard; a closed connection withdraws its share.
#[test]
fn subscriptions_of_one_pattern_share_its_registration() {
    let mut cluster = Cluster::new(2, EngineConfig::default());
    let first = cluster.connect(0);
    let second = cluster.connect(0);
    let publisher = cluster.connect(1);
    cluster.send(first, subscribe(&topic("prices/>"), 1, 1));
    cluster.send(second, subscribe(&topic("prices/>"), 1, 2));
    cluster.pump();
    assert_eq!(sub_ok(&cluster.take_conn(first), 1), Some((0, 0)));
    assert_eq!(sub_ok(&cluster.take_conn(second), 2), Some((0, 0)));
    assert_eq!(registrations(&cluster), vec![1, 1]);
    let metrics = cluster.shards[0].metrics();
    assert_eq!((metrics.local_patterns, metrics.patterns_matched), (1, 1));
    assert_eq!(cluster.shards[1].metrics().local_patterns, 0);
    assert_eq!(cluster.shards[1].metrics().patterns_matched, 1);
    cluster.send(publisher, publish(&topic("prices/eur/usd"), 5, "1.08"));
    cluster.pump();
    assert_eq!(topic_messages(&cluster.take_conn(first)).len(), 1);
    assert_eq!(
        topic_messages(&cluster.take_conn(second)),
        vec![(2, "prices/eur/usd".into(), 1, "1.08".into())]
    );
    cluster.shards[0].close_conn(first.1);
    cluster.pump();
    assert_eq!(
        registrations(&cluster),
        vec![1, 1],
        "the second still holds it"
    );
    cluster.shards[0].close_conn(second.1);
    cluster.pump();
    assert_eq!(registrations(&cluster), vec![0, 0]);
}

/// Live only: a pattern with a resume point is refused, and nothing is
/// registered.
#[test]
fn a_pattern_cannot_resume() {
    let mut cluster = Cluster::new(2, EngineConfig::default());
    let conn = cluster.connect(0);
    cluster.send(conn, resume(&topic("orders/*"), 3, 1, 0, 5));
    cluster.pump();
    let frames = cluster.take_conn(conn);
    assert!(
        matches!(&frames[..], [OutFrame::Error(e)] if e.request_id == 3
            && e.code() == Some(ErrorCode::InvalidRequest) && !e.fatal),
        "{frames:?}"
    );
    assert_eq!(registrations(&cluster), vec![0, 0]);
}

/// Sixteen shards: the pattern is registered with each before `SUB_OK`,
/// every shard's topics reach it, and it is withdrawn from each.
#[test]
fn sixteen_shards_each_register_match_and_withdraw_the_pattern() {
    const SHARDS: usize = 16;
    let mut cluster = Cluster::new(SHARDS, EngineConfig::default());
    let subscriber = cluster.connect(5);
    let publisher = cluster.connect(11);
    cluster.send(subscriber, subscribe(&topic("m/>"), 1, 3));
    cluster.pump();
    assert_eq!(sub_ok(&cluster.take_conn(subscriber), 3), Some((0, 0)));
    assert_eq!(registrations(&cluster), vec![1; SHARDS]);
    // One topic owned by each shard.
    let topics: Vec<TopicKey> = (0..SHARDS as ShardId)
        .map(|owner| {
            (0..)
                .map(|i| topic(&format!("m/{i}/x")))
                .find(|t| routing::owner(t, SHARDS) == owner)
                .expect("some topic hashes to every shard")
        })
        .collect();
    for (i, t) in topics.iter().enumerate() {
        cluster.send(publisher, publish(t, i as u32 + 10, "p"));
    }
    cluster.pump();
    let mut got: Vec<String> = topic_messages(&cluster.take_conn(subscriber))
        .into_iter()
        .map(|(_, topic, seq, _)| {
            assert_eq!(seq, 1);
            topic
        })
        .collect();
    got.sort();
    let mut expected: Vec<String> = topics.iter().map(|t| t.topic().to_owned()).collect();
    expected.sort();
    assert_eq!(got, expected);
    cluster.shards[5].close_conn(subscriber.1);
    cluster.pump();
    assert_eq!(registrations(&cluster), vec![0; SHARDS]);
}
