//! The cross-core queue alone: batches of mesh-sized messages from one
//! glommio executor to another (each pinned to its own CPU), through
//! glommio's channel mesh (what the shards use) and through a mesh built
//! on crossbeam's `ArrayQueue`, one per ordered pair, with an
//! `AtomicWaker` on each side (glommio queues a wake from another thread
//! and rings the executor's eventfd).
//!
//! `cargo bench -p corebus-bench --features micro --bench mesh`
//!
//! Each sample moves `iters` batches of `size` messages of 104 bytes (the
//! largest `ShardMsg`) and times the whole transfer, from the first send
//! until the receiver has read the last message's first byte. The queue
//! holds 1,024 batches, as the shards' mesh does.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use atomic_waker::AtomicWaker;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use crossbeam_queue::ArrayQueue;
use glommio::channels::channel_mesh::MeshBuilder;
use glommio::{LocalExecutorBuilder, Placement};

type Message = [u8; 104];
type Batch = Vec<Message>;

const QUEUE_BATCHES: usize = 1024;

fn batch(size: usize, n: u64) -> Batch {
    vec![[n as u8; 104]; size]
}

/// The receiver's work per batch: read every message.
fn consume(batch: &Batch) -> u64 {
    batch.iter().map(|message| u64::from(message[0])).sum()
}

/// Runs `sender` on CPU 0 and `receiver` on CPU 1 (or both on CPU 0 on a
/// one-CPU machine); returns the receiver's time from start to done.
fn two_executors(
    sender: impl FnOnce() -> std::pin::Pin<Box<dyn std::future::Future<Output = ()>>> + Send + 'static,
    receiver: impl FnOnce() -> std::pin::Pin<Box<dyn std::future::Future<Output = ()>>> + Send + 'static,
) -> Duration {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let started = Instant::now();
    let a = LocalExecutorBuilder::new(Placement::Fixed(0))
        .spawn(move || async move { sender().await })
        .expect("sender executor");
    let b = LocalExecutorBuilder::new(Placement::Fixed(if cpus > 1 { 1 } else { 0 }))
        .spawn(move || async move { receiver().await })
        .expect("receiver executor");
    a.join().expect("sender ran");
    b.join().expect("receiver ran");
    started.elapsed()
}

fn glommio_mesh(batches: u64, size: usize) -> Duration {
    let mesh = MeshBuilder::<Batch, _>::full(2, QUEUE_BATCHES);
    let (send_mesh, recv_mesh) = (mesh.clone(), mesh);
    two_executors(
        move || {
            Box::pin(async move {
                let (senders, _receivers) = send_mesh.join().await.expect("joined");
                let peer = 1 - senders.peer_id();
                for n in 0..batches {
                    senders.send_to(peer, batch(size, n)).await.expect("sent");
                }
            })
        },
        move || {
            Box::pin(async move {
                let (_senders, mut receivers) = recv_mesh.join().await.expect("joined");
                let mut streams = receivers.streams();
                let (_, stream) = streams.pop().expect("one peer");
                let mut sum = 0;
                for _ in 0..batches {
                    sum += consume(&stream.recv().await.expect("a batch"));
                }
                std::hint::black_box(sum);
            })
        },
    )
}

/// One direction of the crossbeam mesh: a bounded queue, and the tasks
/// waiting on it.
struct Lane {
    queue: ArrayQueue<Batch>,
    receiver: AtomicWaker,
    sender: AtomicWaker,
    closed: AtomicBool,
}

impl Lane {
    async fn send(&self, mut item: Batch) {
        loop {
            match self.queue.push(item) {
                Ok(()) => {
                    self.receiver.wake();
                    return;
                }
                Err(back) => item = back,
            }
            // Full: wait for the receiver to take one.
            std::future::poll_fn(|cx| {
                self.sender.register(cx.waker());
                if self.queue.is_full() {
                    Poll::Pending
                } else {
                    Poll::Ready(())
                }
            })
            .await;
        }
    }

    async fn recv(&self) -> Option<Batch> {
        std::future::poll_fn(|cx| {
            if let Some(item) = self.queue.pop() {
                self.sender.wake();
                return Poll::Ready(Some(item));
            }
            self.receiver.register(cx.waker());
            match self.queue.pop() {
                Some(item) => {
                    self.sender.wake();
                    Poll::Ready(Some(item))
                }
                None if self.closed.load(Ordering::Acquire) => Poll::Ready(None),
                None => Poll::Pending,
            }
        })
        .await
    }
}

fn crossbeam_mesh(batches: u64, size: usize) -> Duration {
    let lane = Arc::new(Lane {
        queue: ArrayQueue::new(QUEUE_BATCHES),
        receiver: AtomicWaker::new(),
        sender: AtomicWaker::new(),
        closed: AtomicBool::new(false),
    });
    let (send_lane, recv_lane) = (lane.clone(), lane);
    two_executors(
        move || {
            Box::pin(async move {
                for n in 0..batches {
                    send_lane.send(batch(size, n)).await;
                }
                send_lane.closed.store(true, Ordering::Release);
                send_lane.receiver.wake();
            })
        },
        move || {
            Box::pin(async move {
                let mut sum = 0;
                for _ in 0..batches {
                    sum += consume(&recv_lane.recv().await.expect("a batch"));
                }
                std::hint::black_box(sum);
            })
        },
    )
}

fn mesh(c: &mut Criterion) {
    let mut group = c.benchmark_group("mesh");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(5));
    for size in [1usize, 16, 256] {
        group.throughput(Throughput::Elements(size as u64));
        group.bench_with_input(BenchmarkId::new("glommio", size), &size, |b, &size| {
            b.iter_custom(|iters| {
                glommio_mesh(iters.max(1000), size) * iters as u32 / iters.max(1000) as u32
            })
        });
        group.bench_with_input(BenchmarkId::new("crossbeam", size), &size, |b, &size| {
            b.iter_custom(|iters| {
                crossbeam_mesh(iters.max(1000), size) * iters as u32 / iters.max(1000) as u32
            })
        });
    }
    group.finish();
}

criterion_group!(benches, mesh);
criterion_main!(benches);
