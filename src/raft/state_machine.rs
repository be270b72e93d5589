//! The Raft state machine: a thin wrapper that feeds committed commands to the core.
//!
//! Each command in a committed batch gets the next *command index* (dense, starting at 1), the
//! `LogIndex` the core and clients see: it orders every applied command, and is the fencing
//! token of a lease grant even when several commands share one Raft entry. The first entry of a
//! new leader (a change of `log_id.leader_id`) is applied as `Command::LeaderChanged` first.
//!
//! Snapshots are a point-in-time encoding of the scheduler plus this wrapper's counters; they
//! are persisted before openraft purges the log they replace, and loaded again on open.

// openraft's traits return its (large) `StorageError`; helpers return the same type.
#![allow(clippy::result_large_err)]

use std::collections::hash_map::RandomState;
use std::io::Cursor;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use openraft::storage::RaftStateMachine;
use openraft::{CommittedLeaderId, EntryPayload, OptionalSend, RaftSnapshotBuilder};
use serde::{Deserialize, Serialize};

use crate::codec;
use crate::raft::types::{
    BatchResult, LogEntry, LogId, Snapshot, SnapshotMeta, StorageError, StorageIOError,
    StoredMembership, TypeConfig,
};
use crate::scheduler::{Applied, Command, Entry, LogIndex, Scheduler};
use crate::storage::snapshot_store::{SnapshotStore, StoredSnapshot};

/// What the wrapper tracks beside the scheduler (all of it is in every snapshot).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    pub last_applied: Option<LogId>,
    pub membership: StoredMembership,
    /// The leader of the last applied entry, to notice the first entry of a new one.
    pub last_leader: Option<CommittedLeaderId<u64>>,
    /// The last command index handed out.
    pub command_index: u64,
}

/// The replicated state one replica holds.
#[derive(Clone, Debug, Default)]
pub struct Replicated {
    pub scheduler: Scheduler,
    pub progress: Progress,
}

#[derive(Serialize, Deserialize)]
struct SnapshotBody {
    progress: Progress,
    /// `Scheduler::encode` (versioned, checksummed).
    scheduler: Vec<u8>,
}

/// The `RaftStateMachine`. Clones share the same state.
#[derive(Clone)]
pub struct StateMachine {
    shared: Arc<RwLock<Replicated>>,
    store: SnapshotStore,
    current: Arc<Mutex<Option<StoredSnapshot>>>,
    builds: Arc<AtomicU64>,
}

fn snapshot_err(meta: Option<&SnapshotMeta>, e: impl std::fmt::Display) -> StorageError {
    let any = openraft::AnyError::error(e.to_string());
    StorageIOError::read_snapshot(meta.map(|m| m.signature()), &any).into()
}

impl StateMachine {
    /// Opens the state machine, restoring the last persisted snapshot if there is one.
    pub fn open(store: SnapshotStore) -> Result<StateMachine, StorageError> {
        let mut fresh = Replicated::default();
        fresh.scheduler.key_session_lookup(RandomState::new());
        let sm = StateMachine {
            shared: Arc::new(RwLock::new(fresh)),
            store,
            current: Arc::default(),
            builds: Arc::default(),
        };
        if let Some(stored) = sm.store.load().map_err(|e| snapshot_err(None, e))? {
            let restored = decode_body(&stored.meta, &stored.data)?;
            *sm.write() = restored;
            *sm.current.lock().unwrap_or_else(|p| p.into_inner()) = Some(stored);
        }
        Ok(sm)
    }

    /// Read access to the replicated state (held briefly: apply waits for it).
    pub fn read(&self) -> std::sync::RwLockReadGuard<'_, Replicated> {
        self.shared.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Replicated> {
        self.shared.write().unwrap_or_else(|p| p.into_inner())
    }

    fn apply_entry(state: &mut Replicated, entry: LogEntry) -> BatchResult {
        let leader = entry.log_id.leader_id;
        let span = tracing::debug_span!("apply", raft_index = entry.log_id.index);
        let _guard = span.enter();
        let progress = &mut state.progress;
        progress.last_applied = Some(entry.log_id);
        // Term 0 is `initialize`'s membership entry, not a leader.
        if leader.term > 0 && progress.last_leader != Some(leader) {
            progress.last_leader = Some(leader);
            progress.command_index += 1;
            let now = state.scheduler.now();
            let applied = state.scheduler.apply(Entry {
                index: LogIndex(progress.command_index),
                proposed_at: now,
                request_id: None,
                command: Command::LeaderChanged,
                token: None,
            });
            tracing::debug!(command_index = progress.command_index, ?applied.result, "leader changed");
        }
        match entry.payload {
            EntryPayload::Blank => Vec::new(),
            EntryPayload::Membership(membership) => {
                progress.membership = StoredMembership::new(Some(entry.log_id), membership);
                Vec::new()
            }
            EntryPayload::Normal(batch) => {
                let mut results: Vec<Applied> = Vec::with_capacity(batch.proposals.len());
                for proposal in batch.proposals {
                    progress.command_index += 1;
                    results.push(state.scheduler.apply(Entry {
                        index: LogIndex(progress.command_index),
                        proposed_at: batch.proposed_at,
                        request_id: proposal.request_id,
                        command: proposal.command,
                        token: proposal.token,
                    }));
                }
                results
            }
        }
    }
}

fn decode_body(meta: &SnapshotMeta, data: &[u8]) -> Result<Replicated, StorageError> {
    let body: SnapshotBody = codec::decode(data).map_err(|e| snapshot_err(Some(meta), e))?;
    if body.progress.last_applied != meta.last_log_id {
        return Err(snapshot_err(Some(meta), "snapshot body and metadata disagree on last log id"));
    }
    let mut scheduler =
        Scheduler::decode(&body.scheduler).map_err(|e| snapshot_err(Some(meta), e))?;
    scheduler.key_session_lookup(RandomState::new());
    Ok(Replicated { scheduler, progress: body.progress })
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        // Point-in-time copy under the read lock; the file is written after it is released.
        let (progress, scheduler) = {
            let state = self.read();
            (state.progress.clone(), state.scheduler.encode())
        };
        let body = SnapshotBody { progress: progress.clone(), scheduler };
        let data = codec::encode(&body).map_err(|e| snapshot_err(None, e))?;
        let build = self.builds.fetch_add(1, Ordering::Relaxed);
        let snapshot_id = match progress.last_applied {
            Some(id) => format!("{}-{}-{build}", id.leader_id, id.index),
            None => format!("empty-{build}"),
        };
        let meta = SnapshotMeta {
            last_log_id: progress.last_applied,
            last_membership: progress.membership,
            snapshot_id,
        };
        let stored = StoredSnapshot { meta: meta.clone(), data: data.clone() };
        self.store.save_async(stored.clone()).await.map_err(|e| snapshot_err(Some(&meta), e))?;
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = Some(stored);
        tracing::info!(snapshot = %meta.snapshot_id, bytes = data.len(), "snapshot built");
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(data)) })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let state = self.read();
        Ok((state.progress.last_applied, state.progress.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<BatchResult>, StorageError>
    where
        I: IntoIterator<Item = LogEntry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut state = self.write();
        Ok(entries.into_iter().map(|entry| Self::apply_entry(&mut state, entry)).collect())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        // Validate fully before touching anything: a damaged snapshot is refused.
        let restored = decode_body(meta, &data)?;
        let stored = StoredSnapshot { meta: meta.clone(), data };
        self.store.save_async(stored.clone()).await.map_err(|e| snapshot_err(Some(meta), e))?;
        *self.write() = restored;
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = Some(stored);
        tracing::info!(snapshot = %meta.snapshot_id, "snapshot installed");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        let current = self.current.lock().unwrap_or_else(|p| p.into_inner()).clone();
        Ok(current.map(|s| Snapshot { meta: s.meta, snapshot: Box::new(Cursor::new(s.data)) }))
    }
}
