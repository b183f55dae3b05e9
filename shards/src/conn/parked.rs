//! Tasks that end while their connection is idle and start again when it
//! is not: what such a task needs waits inside the waker that would have
//! woken it, and that waker, woken, starts a new task with it.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::sync::Arc;
use std::task::{Wake, Waker};
use std::thread::{LocalKey, ThreadId};

use glommio::task::JoinHandle;
use tracing::{Instrument, Span};

thread_local! {
    /// Reader tasks of this thread's (this shard's) connections that run:
    /// connections mid-handshake, mid-frame or just read, not idle ones.
    pub(super) static READERS: Cell<u64> = const { Cell::new(0) };
    /// Writer tasks of this shard's connections that run: the connections
    /// that have something to write.
    pub(super) static WRITERS: Cell<u64> = const { Cell::new(0) };
}

/// How many of this shard's connections have a reader task running; an
/// idle connection's reader is parked.
pub fn readers_running() -> u64 {
    READERS.with(Cell::get)
}

/// How many of this shard's connections have a writer task running; an
/// idle connection's writer is parked.
pub fn writers_running() -> u64 {
    WRITERS.with(Cell::get)
}

/// Counts a task in one of the counts above while it lives, however it
/// ends (done, parked, or cancelled).
pub(super) struct Running(&'static LocalKey<Cell<u64>>);

impl Running {
    pub(super) fn new(count: &'static LocalKey<Cell<u64>>) -> Running {
        count.with(|count| count.set(count.get() + 1));
        Running(count)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0
            .with(|count| count.set(count.get().saturating_sub(1)));
    }
}

/// What a parked task keeps: woken, it starts the task again.
pub(super) trait Resume: Sized + 'static {
    /// Starts the task again, with what it kept ([`spawn_resumed`]).
    fn resume(self);
}

/// Spawns a task that resumes parked work. glommio polls a task as it
/// spawns it, and a resume comes from a waker, which the engine may call
/// while it holds the shard: the task first gives its caller the turn back.
pub(super) fn spawn_resumed(
    task: impl Future<Output = ()> + 'static,
    span: Span,
) -> JoinHandle<()> {
    let resumed = async move {
        futures_lite::future::yield_now().await;
        task.await;
    };
    glommio::spawn_local(resumed.instrument(span)).detach()
}

/// A waker that holds `parts` and resumes them when woken (once; later
/// wakes do nothing). Dropped unwoken, it drops them.
pub(super) fn waker<T: Resume>(parts: T) -> Waker {
    Waker::from(Arc::new(Parked {
        owner: std::thread::current().id(),
        parts: RefCell::new(Some(parts)),
    }))
}

/// A `Waker` must be `Send` and `Sync`, and the parts are neither (they
/// share the shard's `Rc`s). They are only touched on the thread that
/// parked them: woken there, they resume; woken anywhere else (no code of
/// the broker does that), nothing happens; dropped anywhere else, they are
/// leaked rather than dropped on the wrong thread.
struct Parked<T> {
    owner: ThreadId,
    parts: RefCell<Option<T>>,
}

// SAFETY: `parts` is borrowed, taken or dropped only on the `owner` thread
// (checked in `wake_by_ref` and `drop`), so none of its `Rc`s or its
// `RefCell` is ever touched by two threads.
unsafe impl<T> Send for Parked<T> {}
// SAFETY: as above; a shared `&Parked` on another thread reads `owner` only.
unsafe impl<T> Sync for Parked<T> {}

impl<T: Resume> Wake for Parked<T> {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if std::thread::current().id() != self.owner {
            return;
        }
        let parts = self.parts.borrow_mut().take();
        if let Some(parts) = parts {
            parts.resume();
        }
    }
}

impl<T> Drop for Parked<T> {
    fn drop(&mut self) {
        if std::thread::current().id() != self.owner {
            std::mem::forget(self.parts.get_mut().take());
        }
    }
}
