//! The control plane's storage: the log (with the vote) and the state
//! machine, kept in `data_dir/control/`.
//!
//! The control log is small (a webhook command now and then, compacted
//! into a snapshot every [`SNAPSHOT_EVERY`] entries), so each change
//! rewrites one file atomically and syncs it: `log.json` holds the vote,
//! the committed id and the entries since the last purge; `snapshot.json`
//! the last snapshot. Both are readable by the broker's user only: they
//! hold webhook secrets. On start the state machine is the snapshot's, and
//! openraft applies the committed entries after it again.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::io::Cursor;
use std::ops::RangeBounds;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    AnyError, BasicNode, EntryPayload, LogId, OptionalSend, RaftLogReader, RaftSnapshotBuilder,
    SnapshotMeta, StorageError, StorageIOError, StoredMembership, Vote,
};
use serde::{Deserialize, Serialize};
use tracing::warn;

use super::state::{Answer, ControlState};
use super::TypeConfig;

/// A snapshot is taken after this many applied entries; the log up to it
/// is then dropped (removed secrets leave the disk with it).
pub const SNAPSHOT_EVERY: u64 = 64;

type NodeId = u64;
type LogEntry = openraft::Entry<TypeConfig>;

/// Called with the state after each applied batch (and after a snapshot
/// is installed): pushes it to the webhook registry.
pub type OnApply = Arc<dyn Fn(&ControlState) + Send + Sync>;

fn io_error(err: impl std::fmt::Display) -> AnyError {
    AnyError::error(err.to_string())
}

/// Writes `value` as JSON to `dir/name` atomically (temporary file, sync,
/// rename, sync of the directory), readable by the owner only.
fn save_json(dir: &Path, name: &str, value: &impl Serialize) -> std::io::Result<()> {
    let bytes = serde_json::to_vec(value).map_err(std::io::Error::other)?;
    crate::webhook::store::replace_file(dir, name, &bytes)
}

fn load_json<T: for<'de> Deserialize<'de>>(path: &Path) -> std::io::Result<Option<T>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|err| std::io::Error::other(format!("{}: {err}", path.display()))),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(err) => Err(err),
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct LogFile {
    vote: Option<Vote<NodeId>>,
    committed: Option<LogId<NodeId>>,
    purged: Option<LogId<NodeId>>,
    entries: Vec<LogEntry>,
}

#[derive(Debug)]
struct LogData {
    dir: PathBuf,
    vote: Option<Vote<NodeId>>,
    committed: Option<LogId<NodeId>>,
    purged: Option<LogId<NodeId>>,
    log: BTreeMap<u64, LogEntry>,
}

impl LogData {
    fn save(&self) -> std::io::Result<()> {
        let file = LogFile {
            vote: self.vote,
            committed: self.committed,
            purged: self.purged,
            entries: self.log.values().cloned().collect(),
        };
        save_json(&self.dir, "log.json", &file)
    }
}

/// The log and the vote.
#[derive(Debug, Clone)]
pub struct LogStore {
    inner: Arc<Mutex<LogData>>,
}

impl LogStore {
    /// The log kept in `dir` (created if missing).
    pub fn open(dir: &Path) -> std::io::Result<LogStore> {
        std::fs::create_dir_all(dir)?;
        let file: LogFile = load_json(&dir.join("log.json"))?.unwrap_or_default();
        let log = file
            .entries
            .into_iter()
            .map(|entry| (entry.log_id.index, entry))
            .collect();
        Ok(LogStore {
            inner: Arc::new(Mutex::new(LogData {
                dir: dir.to_path_buf(),
                vote: file.vote,
                committed: file.committed,
                purged: file.purged,
                log,
            })),
        })
    }

    /// Whether this node has ever been part of a control plane.
    pub fn is_empty(&self) -> bool {
        let data = self.lock();
        data.vote.is_none() && data.log.is_empty() && data.purged.is_none()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LogData> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    // openraft's trait methods return its (large) error type; this helper
    // only saves them writing the same lines.
    #[allow(clippy::result_large_err)]
    fn change(
        &self,
        change: impl FnOnce(&mut LogData),
        error: impl FnOnce(AnyError) -> StorageIOError<NodeId>,
    ) -> Result<(), StorageError<NodeId>> {
        let mut data = self.lock();
        change(&mut data);
        data.save().map_err(|err| error(io_error(err)).into())
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<LogEntry>, StorageError<NodeId>> {
        Ok(self
            .lock()
            .log
            .range(range)
            .map(|(_, entry)| entry.clone())
            .collect())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let data = self.lock();
        let last = data.log.values().next_back().map(|entry| entry.log_id);
        Ok(LogState {
            last_purged_log_id: data.purged,
            last_log_id: last.or(data.purged),
        })
    }

    async fn get_log_reader(&mut self) -> LogStore {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        let vote = *vote;
        self.change(|data| data.vote = Some(vote), StorageIOError::write_vote)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        Ok(self.lock().vote)
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogId<NodeId>>,
    ) -> Result<(), StorageError<NodeId>> {
        self.change(|data| data.committed = committed, StorageIOError::write)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        Ok(self.lock().committed)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = LogEntry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut data = self.lock();
        for entry in entries {
            data.log.insert(entry.log_id.index, entry);
        }
        let saved = data.save();
        drop(data);
        match saved {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(err) => {
                let message = err.to_string();
                callback.log_io_completed(Err(err));
                Err(StorageIOError::write_logs(io_error(message)).into())
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.change(
            |data| {
                data.log.split_off(&log_id.index);
            },
            StorageIOError::write_logs,
        )
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.change(
            |data| {
                data.purged = Some(log_id);
                data.log = data.log.split_off(&(log_id.index + 1));
            },
            StorageIOError::write_logs,
        )
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, BasicNode>,
    state: ControlState,
}

struct MachineData {
    dir: PathBuf,
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, BasicNode>,
    state: ControlState,
    snapshot: Option<StoredSnapshot>,
    snapshots_taken: u64,
}

/// The state machine: the agreed [`ControlState`].
#[derive(Clone)]
pub struct StateMachine {
    inner: Arc<Mutex<MachineData>>,
    on_apply: OnApply,
    /// The index of the last applied entry, for status answers.
    applied: Arc<AtomicU64>,
}

impl Debug for StateMachine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateMachine")
            .field("applied", &self.applied.load(Ordering::Relaxed))
            .finish()
    }
}

impl StateMachine {
    /// The state machine of `dir`: its last snapshot's state, pushed to
    /// `on_apply` at once.
    pub fn open(dir: &Path, on_apply: OnApply) -> std::io::Result<StateMachine> {
        std::fs::create_dir_all(dir)?;
        let snapshot: Option<StoredSnapshot> = load_json(&dir.join("snapshot.json"))?;
        let (last_applied, membership, state) = match &snapshot {
            Some(snapshot) => (
                snapshot.meta.last_log_id,
                snapshot.meta.last_membership.clone(),
                snapshot.state.clone(),
            ),
            None => (None, StoredMembership::default(), ControlState::default()),
        };
        on_apply(&state);
        let applied = Arc::new(AtomicU64::new(last_applied.map_or(0, |id| id.index)));
        Ok(StateMachine {
            inner: Arc::new(Mutex::new(MachineData {
                dir: dir.to_path_buf(),
                last_applied,
                membership,
                state,
                snapshot,
                snapshots_taken: 0,
            })),
            on_apply,
            applied,
        })
    }

    /// The index of the last entry applied here (0: none).
    pub fn applied(&self) -> Arc<AtomicU64> {
        self.applied.clone()
    }

    /// The agreed state now.
    pub fn state(&self) -> ControlState {
        self.lock().state.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MachineData> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let mut data = self.lock();
        data.snapshots_taken += 1;
        let last = data.last_applied;
        let meta = SnapshotMeta {
            last_log_id: last,
            last_membership: data.membership.clone(),
            snapshot_id: format!(
                "{}-{}-{}",
                last.map_or(0, |id| id.leader_id.term),
                last.map_or(0, |id| id.index),
                data.snapshots_taken
            ),
        };
        let stored = StoredSnapshot {
            meta: meta.clone(),
            state: data.state.compacted(corebus_shards::auth::unix_now_ms()),
        };
        let bytes = serde_json::to_vec(&stored.state)
            .map_err(|err| StorageIOError::write_snapshot(Some(meta.signature()), io_error(err)))?;
        save_json(&data.dir, "snapshot.json", &stored)
            .map_err(|err| StorageIOError::write_snapshot(Some(meta.signature()), io_error(err)))?;
        data.snapshot = Some(stored);
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(bytes)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = StateMachine;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, BasicNode>), StorageError<NodeId>>
    {
        let data = self.lock();
        Ok((data.last_applied, data.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Answer>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = LogEntry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut data = self.lock();
        let mut answers = Vec::new();
        for entry in entries {
            data.last_applied = Some(entry.log_id);
            let answer = match entry.payload {
                EntryPayload::Blank => Answer(Ok(serde_json::Value::Null)),
                EntryPayload::Normal(command) => {
                    let answer = data.state.apply(&command);
                    if let Answer(Err(reason)) = &answer {
                        // Refusals are answers (a webhook that is not
                        // there); a version this build cannot read is
                        // worth a line in the log.
                        if command.v > super::state::ENTRY_VERSION {
                            warn!(entry = %command, %reason, "control-plane entry skipped");
                        }
                    }
                    answer
                }
                EntryPayload::Membership(membership) => {
                    data.membership = StoredMembership::new(Some(entry.log_id), membership);
                    Answer(Ok(serde_json::Value::Null))
                }
            };
            answers.push(answer);
        }
        (self.on_apply)(&data.state);
        self.applied.store(
            data.last_applied.map_or(0, |id| id.index),
            Ordering::Release,
        );
        Ok(answers)
    }

    async fn get_snapshot_builder(&mut self) -> StateMachine {
        self.clone()
    }

    async fn begin_receiving_snapshot(
        &mut self,
    ) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let state: ControlState = serde_json::from_slice(snapshot.get_ref())
            .map_err(|err| StorageIOError::read_snapshot(Some(meta.signature()), io_error(err)))?;
        let mut data = self.lock();
        let stored = StoredSnapshot {
            meta: meta.clone(),
            state: state.clone(),
        };
        save_json(&data.dir, "snapshot.json", &stored)
            .map_err(|err| StorageIOError::write_snapshot(Some(meta.signature()), io_error(err)))?;
        data.last_applied = meta.last_log_id;
        data.membership = meta.last_membership.clone();
        data.state = state;
        data.snapshot = Some(stored);
        (self.on_apply)(&data.state);
        self.applied.store(
            data.last_applied.map_or(0, |id| id.index),
            Ordering::Release,
        );
        Ok(())
    }

    async fn get_current_snapshot(
        &mut self,
    ) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        let data = self.lock();
        let Some(stored) = &data.snapshot else {
            return Ok(None);
        };
        let bytes = serde_json::to_vec(&stored.state).map_err(|err| {
            StorageIOError::read_snapshot(Some(stored.meta.signature()), io_error(err))
        })?;
        Ok(Some(Snapshot {
            meta: stored.meta.clone(),
            snapshot: Box::new(Cursor::new(bytes)),
        }))
    }
}
