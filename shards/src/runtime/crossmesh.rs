//! A shard mesh built on `crossbeam-queue` (feature `crossbeam-mesh`, for
//! the comparison in docs/architecture.md's Dependencies table; the broker
//! uses glommio's channel mesh): one bounded `ArrayQueue` per ordered pair
//! of shards, and an `AtomicWaker` for the task waiting on each side
//! (glommio queues a wake that comes from another thread and rings the
//! executor's eventfd). Same interface as the part of glommio's mesh the
//! shards use.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::Poll;

use atomic_waker::AtomicWaker;
use crossbeam_queue::ArrayQueue;

use crate::mesh::MeshBatch;

struct Lane {
    queue: ArrayQueue<MeshBatch>,
    receiver: AtomicWaker,
    sender: AtomicWaker,
    /// The sending shard closed it (the broker is stopping).
    closed: AtomicBool,
}

struct Inner {
    shards: usize,
    /// `from * shards + to`.
    lanes: Vec<Lane>,
}

/// Every shard's handle on the mesh.
#[derive(Clone)]
pub(crate) struct CrossMesh(Arc<Inner>);

impl CrossMesh {
    pub(crate) fn full(shards: usize, capacity: usize) -> CrossMesh {
        CrossMesh(Arc::new(Inner {
            shards,
            lanes: (0..shards * shards)
                .map(|_| Lane {
                    queue: ArrayQueue::new(capacity),
                    receiver: AtomicWaker::new(),
                    sender: AtomicWaker::new(),
                    closed: AtomicBool::new(false),
                })
                .collect(),
        }))
    }

    /// Shard `id`'s senders and receivers.
    pub(crate) fn join(&self, id: usize) -> (Senders, Receivers) {
        (
            Senders {
                mesh: self.clone(),
                id,
            },
            Receivers {
                mesh: self.clone(),
                id,
            },
        )
    }
}

pub(crate) struct Senders {
    mesh: CrossMesh,
    id: usize,
}

impl Senders {
    /// Sends `batch` to shard `peer`, waiting while its queue is full.
    pub(crate) async fn send_to(&self, peer: usize, batch: MeshBatch) -> Result<(), ()> {
        let lane = &self.mesh.0.lanes[self.id * self.mesh.0.shards + peer];
        let mut item = batch;
        loop {
            match lane.queue.push(item) {
                Ok(()) => {
                    lane.receiver.wake();
                    return Ok(());
                }
                Err(back) => item = back,
            }
            std::future::poll_fn(|cx| {
                lane.sender.register(cx.waker());
                if lane.queue.is_full() {
                    Poll::Pending
                } else {
                    Poll::Ready(())
                }
            })
            .await;
        }
    }
}

impl Senders {
    /// Closes this shard's lanes: each peer's receiver ends once it has
    /// read what was sent.
    pub(crate) fn close(&self) {
        for peer in 0..self.mesh.0.shards {
            let lane = &self.mesh.0.lanes[self.id * self.mesh.0.shards + peer];
            lane.closed.store(true, Ordering::Release);
            lane.receiver.wake();
        }
    }
}

pub(crate) struct Receivers {
    mesh: CrossMesh,
    id: usize,
}

impl Receivers {
    /// One receiver per other shard, with its id.
    pub(crate) fn streams(&mut self) -> Vec<(usize, Receiver)> {
        (0..self.mesh.0.shards)
            .filter(|peer| *peer != self.id)
            .map(|peer| {
                (
                    peer,
                    Receiver {
                        mesh: self.mesh.clone(),
                        lane: peer * self.mesh.0.shards + self.id,
                    },
                )
            })
            .collect()
    }
}

pub(crate) struct Receiver {
    mesh: CrossMesh,
    lane: usize,
}

impl Receiver {
    /// The next batch from the peer.
    pub(crate) async fn recv(&self) -> Option<MeshBatch> {
        let lane = &self.mesh.0.lanes[self.lane];
        std::future::poll_fn(|cx| {
            if let Some(batch) = lane.queue.pop() {
                lane.sender.wake();
                return Poll::Ready(Some(batch));
            }
            lane.receiver.register(cx.waker());
            match lane.queue.pop() {
                Some(batch) => {
                    lane.sender.wake();
                    Poll::Ready(Some(batch))
                }
                None if lane.closed.load(Ordering::Acquire) => Poll::Ready(None),
                None => Poll::Pending,
            }
        })
        .await
    }
}
