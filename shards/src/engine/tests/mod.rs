//! Engine tests: several shards driven by hand, with the mesh simulated as FIFO
//! queues, so ordering arguments are checked without sockets or executors.

use std::collections::VecDeque;
use std::task::Waker;

use bytes::Bytes;
use corebus_net::{
    Body, ErrorCode, Frame, Hello, PayloadFormat, Publish, Subscribe, TopicKey, Unsubscribe,
};

use super::*;
use crate::mesh::MeshBatch;
use crate::outbox::OutFrame;
use crate::routing;

struct Cluster {
    shards: Vec<Shard>,
    /// (from, to) → batches in flight, FIFO like the real mesh queues.
    queues: Vec<Vec<VecDeque<MeshBatch>>>,
}

impl Cluster {
    fn new(count: usize, config: EngineConfig) -> Cluster {
        Cluster {
            shards: (0..count)
                .map(|id| Shard::new(id as ShardId, count, config.clone(), 7))
                .collect(),
            queues: (0..count)
                .map(|_| (0..count).map(|_| VecDeque::new()).collect())
                .collect(),
        }
    }

    /// Moves collected batches into the simulated queues (what sender tasks do).
    fn collect(&mut self) {
        let count = self.shards.len();
        for from in 0..count {
            for to in 0..count {
                if from == to {
                    continue;
                }
                if let Some(batch) = self.shards[from].take_mesh_batch(to as ShardId, Waker::noop())
                {
                    self.queues[from][to].push_back(batch);
                }
            }
        }
    }

    /// Delivers everything until no queue holds anything.
    fn pump(&mut self) {
        loop {
            self.collect();
            let mut moved = false;
            for from in 0..self.shards.len() {
                for to in 0..self.shards.len() {
                    while let Some(batch) = self.queues[from][to].pop_front() {
                        moved = true;
                        for msg in batch {
                            self.shards[to].handle_mesh(from as ShardId, msg);
                        }
                    }
                }
            }
            if !moved {
                return;
            }
        }
    }

    fn connect(&mut self, shard: usize) -> (usize, ConnId) {
        let conn = self.shards[shard].open_conn();
        let flow = self.shards[shard].handle_frame(
            conn,
            Frame::Hello(Hello {
                version: corebus_net::PROTOCOL_VERSION,
                client_name: "test".into(),
                credentials: bytes::Bytes::new(),
            }),
        );
        assert_eq!(flow, Flow::Continue);
        let frames = self.take(shard, conn);
        assert!(matches!(frames[..], [OutFrame::Welcome { .. }]));
        (shard, conn)
    }

    fn send(&mut self, (shard, conn): (usize, ConnId), frame: Frame) -> Flow {
        self.shards[shard].handle_frame(conn, frame)
    }

    fn take(&mut self, shard: usize, conn: ConnId) -> Vec<OutFrame> {
        let mut frames = Vec::new();
        if let Some(outbox) = self.shards[shard].outbox_mut(conn) {
            outbox.drain_into(&mut frames);
        }
        frames
    }

    fn take_conn(&mut self, (shard, conn): (usize, ConnId)) -> Vec<OutFrame> {
        self.take(shard, conn)
    }
}

fn topic(name: &str) -> TopicKey {
    TopicKey::from_strs("test", name).expect("valid")
}

/// A topic owned by `owner` in a cluster of `count`.
fn topic_owned_by(owner: ShardId, count: usize) -> TopicKey {
    (0..)
        .map(|i| topic(&format!("t{i}")))
        .find(|t| routing::owner(t, count) == owner)
        .expect("some topic hashes to every shard")
}

fn publish(topic: &TopicKey, request_id: u32, payload: &str) -> Frame {
    Frame::Publish(Publish {
        request_id,
        ack: true,
        topic: topic.clone(),
        body: Body::plain(payload.as_bytes()),
    })
}

fn subscribe(topic: &TopicKey, request_id: u32, sub_id: u32) -> Frame {
    Frame::Subscribe(Subscribe {
        request_id,
        sub_id,
        resume: None,
        topic: topic.clone(),
    })
}

fn resume(topic: &TopicKey, request_id: u32, sub_id: u32, epoch: u64, next_seq: u64) -> Frame {
    Frame::Subscribe(Subscribe {
        request_id,
        sub_id,
        resume: Some(corebus_net::ResumePoint { epoch, next_seq }),
        topic: topic.clone(),
    })
}

fn sub_ok(frames: &[OutFrame], want_sub: u32) -> Option<(u64, u64)> {
    frames.iter().find_map(|f| match f {
        OutFrame::SubOk {
            sub_id,
            epoch,
            start_after,
            ..
        } if *sub_id == want_sub => Some((*epoch, *start_after)),
        _ => None,
    })
}

fn gaps(frames: &[OutFrame]) -> Vec<(u32, u64, u64)> {
    frames
        .iter()
        .filter_map(|f| match f {
            OutFrame::Discontinuity {
                sub_id,
                last_seq,
                next_seq,
                ..
            } => Some((*sub_id, *last_seq, *next_seq)),
            _ => None,
        })
        .collect()
}

fn messages(frames: &[OutFrame]) -> Vec<(u32, u64)> {
    frames
        .iter()
        .filter_map(|f| match f {
            OutFrame::Message { sub_id, seq, .. } => Some((*sub_id, *seq)),
            _ => None,
        })
        .collect()
}

fn sub_ok_start(frames: &[OutFrame], want_sub: u32) -> Option<u64> {
    frames.iter().find_map(|f| match f {
        OutFrame::SubOk {
            sub_id,
            start_after,
            ..
        } if *sub_id == want_sub => Some(*start_after),
        _ => None,
    })
}

mod auth;
mod connections;
mod interest;
mod memory;
mod nodes;
mod patterns;
mod resume;
mod slow;
mod webhooks;
