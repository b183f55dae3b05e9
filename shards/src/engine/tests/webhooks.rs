//! Webhooks: what the owner offers its sink, and the commands.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use super::*;
use crate::webhooks::{CommandAnswer, WebhookCommandError, WebhookMessage, WebhookSink};

/// Wants topics whose name starts with `wanted`; records what it is offered.
#[derive(Debug, Default)]
struct Recorder {
    generation: AtomicU64,
    wanted: Mutex<String>,
    offered: Mutex<Vec<WebhookMessage>>,
}

impl Recorder {
    fn want(&self, prefix: &str) {
        *self.wanted.lock().expect("not poisoned") = prefix.into();
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    fn offered(&self) -> Vec<(String, Seq, String)> {
        self.offered
            .lock()
            .expect("not poisoned")
            .iter()
            .map(|m| {
                let topic = m.topic.topic().to_owned();
                let payload = String::from_utf8_lossy(&m.body.payload()).into_owned();
                (topic, m.seq, payload)
            })
            .collect()
    }
}

impl WebhookSink for Recorder {
    fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    fn wants(&self, topic: &TopicKey) -> bool {
        let wanted = self.wanted.lock().expect("not poisoned");
        !wanted.is_empty() && topic.topic().starts_with(wanted.as_str())
    }

    fn offer(&self, message: WebhookMessage) {
        self.offered.lock().expect("not poisoned").push(message);
    }

    fn command(&self, command: &str) -> CommandAnswer {
        CommandAnswer::Now(match command {
            "ok" => Ok("{\"done\":true}".into()),
            _ => Err(WebhookCommandError::Invalid(format!(
                "bad command {command}"
            ))),
        })
    }
}

fn cluster(recorder: &Arc<Recorder>) -> Cluster {
    let mut cluster = Cluster::new(2, EngineConfig::default());
    cluster.shards = std::mem::take(&mut cluster.shards)
        .into_iter()
        .map(|shard| shard.with_webhooks(recorder.clone()))
        .collect();
    cluster
}

fn named(prefix: &str, owner: ShardId) -> TopicKey {
    (0..)
        .map(|i| topic(&format!("{prefix}{i}")))
        .find(|t| routing::owner(t, 2) == owner)
        .expect("some topic hashes to every shard")
}

#[test]
fn wanted_topics_are_offered_once_per_message_by_their_owner() {
    let recorder = Arc::new(Recorder::default());
    let mut cluster = cluster(&recorder);
    let hooked = named("hook-", 1);
    let other = named("plain-", 1);
    // Subscribers on both shards: the owner must still offer each message once.
    let subs = [cluster.connect(0), cluster.connect(1)];
    for (i, sub) in subs.into_iter().enumerate() {
        cluster.send(sub, subscribe(&hooked, 1, i as u32));
    }
    cluster.pump();
    let publisher = cluster.connect(0);
    cluster.send(publisher, publish(&hooked, 1, "before"));
    cluster.pump();
    assert!(recorder.offered().is_empty(), "nothing is wanted yet");

    recorder.want("hook-");
    for (i, text) in ["a", "b", "c"].into_iter().enumerate() {
        cluster.send(publisher, publish(&hooked, 2 + i as u32, text));
        cluster.send(publisher, publish(&other, 10 + i as u32, text));
    }
    cluster.pump();
    let name = hooked.topic().to_owned();
    assert_eq!(
        recorder.offered(),
        vec![
            (name.clone(), 2, "a".into()),
            (name.clone(), 3, "b".into()),
            (name, 4, "c".into()),
        ]
    );
    let offered = recorder.offered.lock().expect("not poisoned")[0].clone();
    assert!(offered.epoch != 0 && offered.published_ms > 0);

    recorder.want("nothing-");
    cluster.send(publisher, publish(&hooked, 20, "d"));
    cluster.pump();
    assert_eq!(
        recorder.offered().len(),
        3,
        "a new generation is re-evaluated"
    );
}

#[test]
fn commands_go_to_the_sink_and_refusals_are_invalid_requests() {
    let recorder = Arc::new(Recorder::default());
    let mut cluster = cluster(&recorder);
    let admin = cluster.connect(0);
    let request = |request_id, command: &str| {
        Frame::WebhookRequest(corebus_net::WebhookRequest {
            request_id,
            command: command.into(),
        })
    };
    cluster.send(admin, request(1, "ok"));
    cluster.send(admin, request(2, "nonsense"));
    let frames = cluster.take_conn(admin);
    assert!(matches!(
        &frames[..],
        [
            OutFrame::WebhookReply { request_id: 1, result },
            OutFrame::Error(error),
        ] if result == "{\"done\":true}"
            && error.request_id == 2
            && error.code() == Some(ErrorCode::InvalidRequest)
            && !error.fatal
    ));
}
