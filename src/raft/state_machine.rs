//! The Raft state machine: a thin wrapper that feeds committed commands to the core.
//!
//! Each command in a committed batch gets the next *command index* (dense, starting at 1), the
//! `LogIndex` the core and clients see: it orders every applied command, and is the fencing
//! token of a lease grant even when several commands share one Raft entry. The first entry of a
//! new leader (a change of `log_id.leader_id`) is applied as `Command::LeaderChanged` first.
//!
//! Snapshots are a point-in-time encoding of the scheduler plus this wrapper's counters and the
//! usage store (`crate::usage`: the name of a base file beside the snapshot and the writes
//! since it; a follower is sent the store whole); they are persisted before openraft purges the
//! log they replace, and loaded again on open.
//!
//! The core is total, so `apply` never panics; if it ever does (a bug), the panic is caught at
//! the command, the replica fail-stops naming the raft index, command index and command kind
//! (`crate::fatal`), and this state machine applies nothing more: the state the panic left is
//! never served, and every restart replays the same command and stops again.

// openraft's traits return its (large) `StorageError`; helpers return the same type.
#![allow(clippy::result_large_err)]

use std::collections::hash_map::RandomState;
use std::collections::BTreeMap;
use std::io::Cursor;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use openraft::storage::RaftStateMachine;
use openraft::{CommittedLeaderId, EntryPayload, OptionalSend, RaftSnapshotBuilder};
use serde::{Deserialize, Serialize};

use crate::audit::AuditStore;
use crate::codec;
use crate::fatal::FailStop;
use crate::raft::journal::Journal;
use crate::raft::types::{
    BatchResult, LogEntry, LogId, Node, ReplicaId, Snapshot, SnapshotMeta, StorageError,
    StorageIOError, StoredMembership, TypeConfig,
};
use crate::scheduler::events::Event;
use crate::scheduler::AuditRecord;
use crate::scheduler::{Applied, Command, Entry, LogIndex, QuotaEvent, Scheduler, TenantId};
use crate::storage::snapshot_store::{
    self, BaseFile, SnapshotFileError, SnapshotStore, StoredSnapshot,
};
use crate::usage::{self, Record, UsageStore};

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
    /// `Scheduler::encode` (versioned, checksummed), written as one run (`codec::bytes`).
    #[serde(with = "codec::bytes")]
    scheduler: Vec<u8>,
    /// The usage store at the same command index (`crate::usage`).
    usage: UsageImage,
}

/// The usage store as a snapshot carries it.
#[derive(Serialize, Deserialize)]
enum UsageImage {
    /// A base (by the command index it was taken at; none: the empty store) and the writes
    /// since it: what a replica keeps (the base is a file beside the snapshot).
    Since {
        base: Option<u64>,
        #[serde(with = "codec::bytes")]
        changes: Vec<u8>,
    },
    /// The store's dump whole: what a follower is sent (`get_current_snapshot`).
    Whole(#[serde(with = "codec::bytes")] Vec<u8>),
}

/// The base the usage store's changes count from: a chain of files beside the snapshot, a
/// dump of the whole store and then deltas over it (`snapshot_store::BaseFile`), each named by
/// the command index it was taken at. The chain of the base before is kept until a newer base
/// is made: `get_current_snapshot` reads a snapshot's base without waiting for a build that
/// may replace it.
#[derive(Clone, Debug, Default)]
struct Base {
    /// The newest file of the chain (none: the empty store).
    index: Option<u64>,
    chain: Chain,
    previous: Vec<u64>,
}

/// The files a base is made of, oldest (the dump) first, and their sizes.
#[derive(Clone, Debug, Default)]
struct Chain {
    files: Vec<u64>,
    dump_len: usize,
    deltas_len: usize,
}

impl Base {
    fn kept(&self) -> Vec<u64> {
        let mut kept: Vec<u64> = self.chain.files.iter().chain(&self.previous).copied().collect();
        kept.sort_unstable();
        kept.dedup();
        kept
    }
}

/// A snapshot makes the usage store's changes a new base once they take more than the dump's
/// size divided by this, or `DELTA_MAX`, whichever is less. The new base is a delta over the
/// current one while the deltas of the chain take no more than the dump's size divided by this
/// too; otherwise the chain and the changes are folded into a new dump. So a replica holds at
/// most `DELTA_MAX` of changes in memory however large the history, a snapshot writes only
/// what changed, and a dump is rewritten only after the store has changed by a good part of
/// its size.
const REBASE_RATIO: usize = 4;

/// Most bytes of usage store changes (keys and values) a replica holds before a snapshot
/// writes them as a delta. In memory they take about two and a half times this.
const DELTA_MAX: usize = 4 << 20;

/// The core's `apply` (a unit test puts a panicking one in its place).
type CoreApply = fn(&mut Scheduler, Entry) -> Applied;

/// What applied commands leave for the stores derived from them.
#[derive(Default)]
struct Derived {
    usage: Vec<Record>,
    audit: Vec<AuditRecord>,
}

/// The snapshot a replica keeps, and the last command it holds.
#[derive(Clone)]
struct Current {
    /// Shared, not copied: tens of MB.
    stored: Arc<StoredSnapshot>,
    command_index: u64,
    /// Bytes of `stored.data` that are the usage store's changes since its base (the rest is
    /// the replicated state).
    usage_bytes: usize,
}

/// What a snapshot holds, in brief.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotSummary {
    /// The last Raft log entry it holds.
    pub last_log_id: Option<LogId>,
    /// The last command it holds.
    pub command_index: u64,
    /// Its size as kept (for a backup: the size of the backup file).
    pub bytes: u64,
}

impl SnapshotSummary {
    /// The index and term of the last Raft log entry it holds (0 for none).
    pub fn raft_position(&self) -> (u64, u64) {
        self.last_log_id.map_or((0, 0), |l| (l.index, l.leader_id.term))
    }
}

/// The `RaftStateMachine`. Clones share the same state.
#[derive(Clone)]
pub struct StateMachine {
    shared: Arc<RwLock<Replicated>>,
    store: SnapshotStore,
    current: Arc<Mutex<Option<Current>>>,
    builds: Arc<AtomicU64>,
    fail_stop: FailStop,
    core_apply: CoreApply,
    /// The events of the entries this replica applied, for watchers.
    journal: Journal,
    /// The usage history derived from applied commands.
    usage: UsageStore,
    /// The audit trail's records of applied commands (`crate::audit`).
    audit: AuditStore,
    /// The usage base the current snapshot refers to.
    base: Arc<Mutex<Base>>,
    /// `DELTA_MAX` (a test makes deltas of a small store with a smaller one).
    delta_max: usize,
    /// Held while a snapshot is built or installed: one at a time, so each sees the snapshot,
    /// base and store the one before it left.
    snapshotting: Arc<tokio::sync::Mutex<()>>,
    /// Placements of each tenant preempted by the entries this replica applied since it
    /// started (for its metrics).
    preemptions: Arc<Mutex<BTreeMap<TenantId, u64>>>,
}

fn snapshot_err(meta: Option<&SnapshotMeta>, e: impl std::fmt::Display) -> StorageError {
    let any = openraft::AnyError::error(e.to_string());
    StorageIOError::read_snapshot(meta.map(|m| m.signature()), &any).into()
}

impl StateMachine {
    /// Opens the state machine, restoring the last persisted snapshot if there is one. A
    /// panic in `apply` stops the replica through `fail_stop`.
    /// The usage store starts empty and is restored from the snapshot (its base and changes).
    pub fn open(
        store: SnapshotStore,
        usage: UsageStore,
        audit: AuditStore,
        fail_stop: FailStop,
    ) -> Result<StateMachine, StorageError> {
        let mut fresh = Replicated::default();
        fresh.scheduler.key_session_lookup(RandomState::new());
        let sm = StateMachine {
            shared: Arc::new(RwLock::new(fresh)),
            store,
            current: Arc::default(),
            builds: Arc::default(),
            fail_stop,
            core_apply: Scheduler::apply,
            journal: Journal::default(),
            usage,
            audit,
            base: Arc::default(),
            delta_max: DELTA_MAX,
            snapshotting: Arc::default(),
            preemptions: Arc::default(),
        };
        if let Some(stored) = sm.store.load().map_err(|e| snapshot_err(None, e))? {
            let (restored, image) = decode_body(&stored.meta, &stored.data)?;
            let UsageImage::Since { base, changes } = image else {
                return Err(snapshot_err(Some(&stored.meta), "a stored snapshot names no base"));
            };
            let (dump, chain) = resolve(&sm.store, base, &changes)
                .map_err(|e| snapshot_err(Some(&stored.meta), e))?;
            sm.journal.restart_at(LogIndex(restored.progress.command_index));
            // Records of the log replayed after the snapshot queue behind the restore.
            let usage_bytes = changes.len();
            drop(sm.usage.restore(dump, changes));
            *sm.base() = Base { index: base, chain, previous: Vec::new() };
            let command_index = restored.progress.command_index;
            *sm.write() = restored;
            *sm.current() = Some(Current { stored: Arc::new(stored), command_index, usage_bytes });
        }
        Ok(sm)
    }

    /// The events this replica applied, for watchers.
    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    /// Placements of each tenant preempted by the entries this replica applied since it
    /// started (replayed entries included).
    pub fn preemptions(&self) -> BTreeMap<TenantId, u64> {
        self.preemptions.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The usage history of this replica.
    pub fn usage(&self) -> &UsageStore {
        &self.usage
    }

    /// The audit trail of this replica.
    pub fn audit(&self) -> &AuditStore {
        &self.audit
    }

    /// Read access to the replicated state (held briefly: apply waits for it).
    pub fn read(&self) -> std::sync::RwLockReadGuard<'_, Replicated> {
        self.shared.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Replicated> {
        self.shared.write().unwrap_or_else(|p| p.into_inner())
    }

    fn base(&self) -> std::sync::MutexGuard<'_, Base> {
        self.base.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn current(&self) -> std::sync::MutexGuard<'_, Option<Current>> {
        self.current.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The snapshot this replica keeps, in brief.
    pub fn snapshot_summary(&self) -> Option<SnapshotSummary> {
        self.current().as_ref().map(|c| SnapshotSummary {
            last_log_id: c.stored.meta.last_log_id,
            command_index: c.command_index,
            bytes: c.stored.data.len() as u64,
        })
    }

    /// Bytes of the snapshot this replica keeps that are not the usage store's changes since
    /// its base: the replicated state, level under a steady load (0: no snapshot yet).
    pub fn snapshot_state_bytes(&self) -> u64 {
        self.current().as_ref().map_or(0, |c| {
            u64::try_from(c.stored.data.len().saturating_sub(c.usage_bytes)).unwrap_or(u64::MAX)
        })
    }

    /// The snapshot this replica keeps as a backup file (`storage::snapshot_store`: its usage
    /// store whole, framed and checksummed), and what it holds.
    pub async fn backup(&self) -> Result<(Vec<u8>, SnapshotSummary), StorageError> {
        // No build replaces the base this snapshot names while it is read.
        let _one = self.snapshotting.clone().lock_owned().await;
        let Some(current) = self.current().clone() else {
            return Err(snapshot_err(None, "this replica has no snapshot yet"));
        };
        let meta = current.stored.meta.clone();
        let file = self
            .store
            .blocking(move |store| {
                let whole = whole(store, &current.stored)?;
                snapshot_store::encode_backup(&whole)
            })
            .await
            .map_err(|e| snapshot_err(Some(&meta), e))?;
        let summary = SnapshotSummary {
            last_log_id: meta.last_log_id,
            command_index: current.command_index,
            bytes: file.len() as u64,
        };
        Ok((file, summary))
    }

    /// Saves `stored` as the current snapshot, whose usage store counts from `base`, and
    /// removes the bases no longer needed.
    async fn keep(
        &self,
        stored: Arc<StoredSnapshot>,
        base: Base,
        command_index: u64,
        usage_bytes: usize,
    ) -> Result<(), StorageError> {
        let (saved, meta) = (stored.clone(), stored.meta.clone());
        let kept = base.kept();
        self.store
            .blocking(move |store| {
                store.save(&saved)?;
                // Best effort: a base left behind is only disk space, removed next time.
                if let Err(e) = store.retain_bases(&kept) {
                    tracing::warn!(error = %e, "removing old usage store bases");
                }
                Ok(())
            })
            .await
            .map_err(|e| snapshot_err(Some(&meta), e))?;
        *self.base() = base;
        *self.current() = Some(Current { stored, command_index, usage_bytes });
        Ok(())
    }

    /// Applies one Raft entry; `Err` is the fail-stop reason of a panic in the core.
    /// What each command changed in tenants' usage, and its audit record, go to `derived`.
    fn apply_entry(
        &self,
        state: &mut Replicated,
        entry: LogEntry,
        derived: &mut Derived,
    ) -> Result<BatchResult, String> {
        let leader = entry.log_id.leader_id;
        let raft_index = entry.log_id.index;
        let span = tracing::debug_span!("apply", raft_index);
        let _guard = span.enter();
        let progress = &mut state.progress;
        progress.last_applied = Some(entry.log_id);
        // Term 0 is `initialize`'s membership entry, not a leader.
        if leader.term > 0 && progress.last_leader != Some(leader) {
            progress.last_leader = Some(leader);
            progress.command_index += 1;
            let now = state.scheduler.now();
            let changed = Entry {
                index: LogIndex(progress.command_index),
                proposed_at: now,
                request_id: None,
                command: Command::LeaderChanged,
                token: None,
            };
            let applied = self.apply_command(&mut state.scheduler, raft_index, changed, derived)?;
            tracing::debug!(command_index = progress.command_index, ?applied.result, "leader changed");
        }
        match entry.payload {
            EntryPayload::Blank => Ok(Vec::new()),
            EntryPayload::Membership(membership) => {
                progress.membership = StoredMembership::new(Some(entry.log_id), membership);
                Ok(Vec::new())
            }
            EntryPayload::Normal(batch) => {
                let mut results: Vec<Applied> = Vec::with_capacity(batch.proposals.len());
                for proposal in batch.proposals {
                    progress.command_index += 1;
                    let entry = Entry {
                        index: LogIndex(progress.command_index),
                        proposed_at: batch.proposed_at,
                        request_id: proposal.request_id,
                        command: proposal.command,
                        token: proposal.token,
                    };
                    let applied =
                        self.apply_command(&mut state.scheduler, raft_index, entry, derived)?;
                    results.push(applied);
                }
                Ok(results)
            }
        }
    }

    fn count_preemptions(&self, events: &[Event]) {
        let mut preempted = events.iter().filter_map(|event| match event {
            Event::Quota(QuotaEvent::Preempted { tenant, .. }) => Some(tenant),
            _ => None,
        });
        let Some(first) = preempted.next() else { return };
        let mut counts = self.preemptions.lock().unwrap_or_else(|p| p.into_inner());
        for tenant in std::iter::once(first).chain(preempted) {
            *counts.entry(tenant.clone()).or_default() += 1;
        }
    }

    /// Applies one command through the core; a panic comes back as the fail-stop reason,
    /// naming where it happened. (The panic hook has already printed the panic itself.)
    fn apply_command(
        &self,
        scheduler: &mut Scheduler,
        raft_index: u64,
        entry: Entry,
        derived: &mut Derived,
    ) -> Result<Applied, String> {
        let (command_index, kind) = (entry.index.0, entry.command.name());
        let core_apply = self.core_apply;
        let applied = std::panic::catch_unwind(AssertUnwindSafe(|| core_apply(scheduler, entry)));
        applied
            .map(|mut applied| {
                if let Some(record) = applied.audit.take() {
                    derived.audit.push(*record);
                }
                let events = std::mem::take(&mut applied.journal);
                self.count_preemptions(&events);
                let changed = usage::tenants_changed(&events);
                if !changed.is_empty() {
                    let state = scheduler.state();
                    let changes = changed
                        .into_iter()
                        .map(|tenant| {
                            let rates = state.tenants.get(tenant).map(|t| {
                                t.meter
                                    .rates
                                    .iter()
                                    .map(|((p, r), h)| (p.clone(), *r, *h))
                                    .collect()
                            });
                            (tenant.clone(), rates.unwrap_or_default())
                        })
                        .collect();
                    derived.usage.push(Record {
                        index: command_index,
                        at: applied.applied_at,
                        retention: state.config.usage_retention,
                        changes,
                    });
                }
                self.journal.append(LogIndex(command_index), applied.applied_at, events);
                applied
            })
            .map_err(|panic| {
                let message = match (panic.downcast_ref::<&str>(), panic.downcast_ref::<String>()) {
                    (Some(message), _) => (*message).to_owned(),
                    (None, Some(message)) => message.clone(),
                    (None, None) => "no message".to_owned(),
                };
                format!(
                    "applying the committed command at raft index {raft_index} (command index \
                     {command_index}, {kind}) panicked: {message}"
                )
            })
    }
}

/// The replicated state and the usage store a snapshot holds, checked.
fn decode_body(meta: &SnapshotMeta, data: &[u8]) -> Result<(Replicated, UsageImage), StorageError> {
    let body: SnapshotBody = codec::decode(data).map_err(|e| snapshot_err(Some(meta), e))?;
    if body.progress.last_applied != meta.last_log_id {
        return Err(snapshot_err(Some(meta), "snapshot body and metadata disagree on last log id"));
    }
    let mut scheduler =
        Scheduler::decode(&body.scheduler).map_err(|e| snapshot_err(Some(meta), e))?;
    scheduler.key_session_lookup(RandomState::new());
    match &body.usage {
        UsageImage::Since { changes, .. } => usage::check_changes(changes),
        UsageImage::Whole(dump) => usage::check_dump(dump),
    }
    .map_err(|e| snapshot_err(Some(meta), e))?;
    Ok((Replicated { scheduler, progress: body.progress }, body.usage))
}

/// The usage store's dump a base kept in `store` (its chain, newest file `base`) and the
/// changes since it make, and the base's chain.
fn resolve(
    store: &SnapshotStore,
    base: Option<u64>,
    changes: &[u8],
) -> Result<(Vec<u8>, Chain), SnapshotFileError> {
    let damaged = SnapshotFileError::Damaged;
    let mut chain = Chain::default();
    let mut deltas = Vec::new();
    let mut dump = None;
    let mut next = base;
    // Each delta names an earlier base (`load_base` checks), so the walk ends.
    while let Some(index) = next {
        chain.files.push(index);
        next = match store.load_base(index)? {
            BaseFile::Dump(bytes) => {
                chain.dump_len = bytes.len();
                dump = Some(bytes);
                None
            }
            BaseFile::Delta { parent, changes } => {
                chain.deltas_len += changes.len();
                deltas.push(changes);
                Some(parent)
            }
        };
    }
    chain.files.reverse();
    // The deltas, oldest first, then the changes since the newest: merged, then applied to
    // the dump once.
    let mut since = usage::no_changes();
    for delta in deltas.iter().rev().map(Vec::as_slice).chain([changes]) {
        since = usage::merge_changes(&since, delta).map_err(damaged)?;
    }
    drop(deltas);
    let dump = usage::compose(dump.as_deref(), &since).map_err(damaged)?;
    Ok((dump, chain))
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    /// Builds and keeps a snapshot. Its data is the stored form (the usage store as a base and
    /// the changes since it); `get_current_snapshot` gives it whole.
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        // Point-in-time copy under the read lock; the file is written after it is released.
        // The usage store's changes are taken in its writer's order, at the same command index.
        let _one = self.snapshotting.clone().lock_owned().await;
        let mut base = self.base().clone();
        let (progress, scheduler, checkpoint) = {
            let state = self.read();
            // The log up to this snapshot may be purged: its audit records go to the writer.
            self.audit.flush();
            let rebase_over = (base.chain.dump_len / REBASE_RATIO).min(self.delta_max);
            let checkpoint = self.usage.checkpoint(rebase_over);
            (state.progress.clone(), state.scheduler.encode(), checkpoint)
        };
        let checkpoint = checkpoint.wait().await.map_err(|e| snapshot_err(None, e))?;
        let rebase = checkpoint.rebase;
        let built = async {
            let mut usage_bytes = usage::no_changes().len();
            let usage = if checkpoint.rebase {
                // The changes outgrew their limit: they become a new base, off the writer.
                let at = progress.command_index;
                let changes = checkpoint.changes;
                let chain = &base.chain;
                let fold = chain.deltas_len + changes.len() > chain.dump_len / REBASE_RATIO;
                let chain = match base.index {
                    // A delta over the current base (an earlier one: a base taken at this
                    // very index is rewritten as a dump instead, as before deltas).
                    Some(parent) if !fold && parent < at => {
                        let mut chain = chain.clone();
                        chain.files.push(at);
                        chain.deltas_len += changes.len();
                        self.store
                            .blocking(move |store| store.save_delta(at, parent, &changes))
                            .await
                            .map_err(|e| snapshot_err(None, e))?;
                        chain
                    }
                    // The chain and the changes folded into a new dump.
                    from => self
                        .store
                        .blocking(move |store| {
                            let (dump, _) = resolve(store, from, &changes)?;
                            store.save_base(at, &dump)?;
                            Ok(Chain { files: vec![at], dump_len: dump.len(), deltas_len: 0 })
                        })
                        .await
                        .map_err(|e| snapshot_err(None, e))?,
                };
                let previous = std::mem::take(&mut base.chain.files);
                base = Base { index: Some(at), chain, previous };
                UsageImage::Since { base: Some(at), changes: usage::no_changes() }
            } else {
                usage_bytes = checkpoint.changes.len();
                UsageImage::Since { base: base.index, changes: checkpoint.changes }
            };
            let body = SnapshotBody { progress: progress.clone(), scheduler, usage };
            let data = codec::encode(&body).map_err(|e| snapshot_err(None, e))?;
            // Its parts (the state encoded, the usage changes) are in `data` now.
            drop(body);
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
            let stored = Arc::new(StoredSnapshot { meta: meta.clone(), data });
            self.keep(stored.clone(), base, progress.command_index, usage_bytes).await?;
            tracing::info!(snapshot = %meta.snapshot_id, bytes = stored.data.len(), "snapshot built");
            // openraft takes only the meta of a snapshot built; copied once it is saved.
            Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(stored.data.clone())) })
        }
        .await;
        if let (true, Err(e)) = (rebase, &built) {
            // The writer counts its changes from the new base already: a later snapshot
            // naming the old one would lose the history between them.
            self.fail_stop.stop(format!("saving a new usage store base failed: {e}"));
        }
        built
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
        let mut results = Vec::new();
        let mut derived = Derived::default();
        for entry in entries {
            let log_id = entry.log_id;
            let failed =
                |why: String| StorageIOError::apply(log_id, openraft::AnyError::error(why));
            // After a fail-stop nothing more is applied (in-process, the replica is stopping).
            if let Some(why) = self.fail_stop.reason() {
                return Err(failed(why).into());
            }
            match self.apply_entry(&mut state, entry, &mut derived) {
                Ok(result) => results.push(result),
                Err(why) => {
                    self.fail_stop.stop(why.clone());
                    return Err(failed(why).into());
                }
            }
        }
        // One message per applied batch to each store: their writer threads do the work.
        self.usage.record(derived.usage);
        self.audit.record(derived.audit);
        Ok(results)
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
        let _one = self.snapshotting.clone().lock_owned().await;
        // Validate fully before touching anything: a damaged snapshot is refused.
        let (restored, image) = decode_body(meta, &data)?;
        let at = restored.progress.command_index;
        // A leader sends the store whole (`get_current_snapshot`); a base named by another
        // replica means nothing here.
        let UsageImage::Whole(dump) = image else {
            return Err(snapshot_err(
                Some(meta),
                "a snapshot sent must hold the usage store whole",
            ));
        };
        // Kept as a base of its own, with no changes since.
        let len = dump.len();
        let dump = self
            .store
            .blocking(move |store| store.save_base(at, &dump).map(|()| dump))
            .await
            .map_err(|e| snapshot_err(Some(meta), e))?;
        let stored = own_base_body(restored.progress.clone(), &restored.scheduler)
            .map_err(|e| snapshot_err(Some(meta), e))?;
        let (changes, previous) = (usage::no_changes(), self.base().chain.files.clone());
        let chain = Chain { files: vec![at], dump_len: len, deltas_len: 0 };
        let base = Base { index: Some(at), chain, previous };
        let stored = Arc::new(StoredSnapshot { meta: meta.clone(), data: stored });
        self.keep(stored, base, at, changes.len()).await?;
        let mut state = self.write();
        self.journal.restart_at(LogIndex(at));
        drop(self.usage.restore(dump, changes));
        *state = restored;
        drop(state);
        tracing::info!(snapshot = %meta.snapshot_id, "snapshot installed");
        Ok(())
    }

    /// The current snapshot with the usage store whole (its base and changes composed), as a
    /// follower is sent it.
    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        let Some(current) = self.current().clone() else {
            return Ok(None);
        };
        let meta = current.stored.meta.clone();
        let whole = self
            .store
            .blocking(move |store| whole(store, &current.stored))
            .await
            .map_err(|e| snapshot_err(Some(&meta), e))?;
        Ok(Some(Snapshot { meta, snapshot: Box::new(Cursor::new(whole.data)) }))
    }
}

/// `stored` with its usage store whole (its base, kept in `store`, and changes composed).
fn whole(
    store: &SnapshotStore,
    stored: &StoredSnapshot,
) -> Result<StoredSnapshot, SnapshotFileError> {
    let damaged = |e: String| SnapshotFileError::Damaged(e);
    let mut body: SnapshotBody = codec::decode(&stored.data).map_err(|e| damaged(e.to_string()))?;
    if let UsageImage::Since { base, changes } = &body.usage {
        body.usage = UsageImage::Whole(resolve(store, *base, changes)?.0);
    }
    let data = codec::encode(&body).map_err(|e| damaged(e.to_string()))?;
    Ok(StoredSnapshot { meta: stored.meta.clone(), data })
}

/// A backup's snapshot, checked and made ready to keep for a replica of a new cluster
/// (`restore_check`), then written (`Restoring::write`).
pub struct Restoring {
    meta: SnapshotMeta,
    data: Vec<u8>,
    dump: Vec<u8>,
    pub summary: SnapshotSummary,
}

/// Checks `backup` (a backup file's snapshot) whole, without writing anything: its encoding,
/// format version, the state's own checksum, the usage store; and makes it the snapshot of a
/// replica of a new cluster whose members are `members` (id → peer address): its membership
/// is replaced by theirs, as if the cluster had been founded with them holding this state.
pub fn restore_check(
    backup: StoredSnapshot,
    members: &BTreeMap<ReplicaId, String>,
) -> Result<Restoring, String> {
    if members.is_empty() {
        return Err("a restored cluster needs at least one member".into());
    }
    let (restored, image) = decode_body(&backup.meta, &backup.data).map_err(|e| e.to_string())?;
    let UsageImage::Whole(dump) = image else {
        return Err("a backup must hold the usage store whole".into());
    };
    let voters: std::collections::BTreeSet<ReplicaId> = members.keys().copied().collect();
    let nodes: BTreeMap<ReplicaId, Node> =
        members.iter().map(|(id, addr)| (*id, Node::new(addr.clone()))).collect();
    let membership = StoredMembership::new(
        *backup.meta.last_membership.log_id(),
        openraft::Membership::new(vec![voters], nodes),
    );
    let progress = Progress { membership: membership.clone(), ..restored.progress };
    let at = progress.command_index;
    let data = own_base_body(progress, &restored.scheduler).map_err(|e| e.to_string())?;
    let meta = SnapshotMeta {
        last_log_id: backup.meta.last_log_id,
        last_membership: membership,
        snapshot_id: format!("restored-{}", backup.meta.snapshot_id),
    };
    let summary = SnapshotSummary {
        last_log_id: meta.last_log_id,
        command_index: at,
        bytes: data.len() as u64,
    };
    Ok(Restoring { meta, data, dump, summary })
}

impl Restoring {
    /// Keeps the snapshot (and its usage store as a base of its own) in `store`.
    pub fn write(self, store: &SnapshotStore) -> Result<SnapshotSummary, String> {
        // The base first: a snapshot file is only ever written naming a base that exists.
        let at = self.summary.command_index;
        store.save_base(at, &self.dump).map_err(|e| e.to_string())?;
        store
            .save(&StoredSnapshot { meta: self.meta, data: self.data })
            .map_err(|e| e.to_string())?;
        Ok(self.summary)
    }
}

/// A snapshot body of `progress` and `scheduler` whose usage store is its own base, taken at
/// its command index, with no changes since (what a replica keeps of a snapshot it was given
/// whole: a leader's, or a backup's).
fn own_base_body(
    progress: Progress,
    scheduler: &Scheduler,
) -> Result<Vec<u8>, bincode::error::EncodeError> {
    let at = progress.command_index;
    let body = SnapshotBody {
        progress,
        scheduler: scheduler.encode(),
        usage: UsageImage::Since { base: Some(at), changes: usage::no_changes() },
    };
    codec::encode(&body)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::raft::types::{Batch, Proposal};
    use crate::scheduler::{Resources, UnixMillis, WorkerId};
    use crate::usage::UsageLocation;

    fn audit() -> AuditStore {
        AuditStore::open(&UsageLocation::Temporary).expect("audit store")
    }

    /// The core, except that it panics on registering a worker named "poison" (a stand-in
    /// for a bug: the real core is total).
    fn buggy_core(scheduler: &mut Scheduler, entry: Entry) -> Applied {
        let poison = WorkerId::new("poison");
        if matches!(&entry.command, Command::RegisterWorker { worker, .. } if *worker == poison) {
            panic!("invariant: a bug in the core");
        }
        scheduler.apply(entry)
    }

    fn register(id: &str) -> Proposal {
        Proposal {
            request_id: None,
            command: Command::RegisterWorker {
                worker: WorkerId::new(id),
                pool: None,
                capacity: Resources::new(1_000, 1_024),
                labels: BTreeMap::new(),
            },
            token: None,
        }
    }

    fn entry(index: u64, workers: &[&str]) -> LogEntry {
        LogEntry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Normal(Batch {
                proposed_at: UnixMillis(1_000),
                proposals: workers.iter().map(|w| register(w)).collect(),
            }),
        }
    }

    /// A state machine over `store` whose core panics on "poison".
    fn buggy(store: &SnapshotStore) -> (StateMachine, FailStop) {
        let fail_stop = FailStop::record();
        let usage =
            UsageStore::open(&UsageLocation::Temporary, fail_stop.clone()).expect("usage store");
        let mut sm =
            StateMachine::open(store.clone(), usage, audit(), fail_stop.clone()).expect("opens");
        sm.core_apply = buggy_core;
        (sm, fail_stop)
    }

    /// A panic in the core fail-stops the replica naming the raft index, the command index
    /// and the command kind; nothing is applied after it; and a restart that replays the same
    /// log fails the same way instead of serving.
    #[tokio::test]
    async fn a_panic_in_apply_fail_stops_naming_the_command() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = SnapshotStore::Dir(dir.path().to_owned());
        let log = vec![entry(1, &["a"]), entry(2, &["b", "poison", "c"]), entry(3, &["d"])];
        for start in ["first start", "restart"] {
            let (mut sm, fail_stop) = buggy(&store);
            let Err(error) = sm.apply(log.clone()).await else { panic!("{start}: applied") };
            let reason = fail_stop.reason().expect("fail-stopped");
            // Command 1 is the leader change, 2 is "a", 3 is "b", 4 is "poison".
            let expected = "raft index 2 (command index 4, RegisterWorker) panicked: invariant";
            assert!(reason.contains(expected), "{start}: {reason}");
            assert!(error.to_string().contains(expected), "{start}: {error}");
            assert_eq!(sm.read().progress.last_applied.map(|l| l.index), Some(2));
            let later = sm.apply(vec![entry(3, &["d"])]).await;
            assert!(later.is_err(), "{start}: applied after a fail-stop");
            assert!(!sm.read().scheduler.state().workers.contains_key(&WorkerId::new("d")));
        }
    }

    fn proposal(command: Command) -> Proposal {
        Proposal { request_id: None, command, token: None }
    }

    /// The usage bases beside a snapshot in `dir`, by the command index each was taken at,
    /// with whether it is a delta.
    fn base_files(dir: &std::path::Path) -> Vec<(u64, bool)> {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Vec::new();
        };
        let mut found: Vec<(u64, bool)> = entries
            .filter_map(|e| {
                let e = e.expect("entry");
                let name = e.file_name().into_string().expect("utf-8");
                let index = name.strip_prefix("usage-base-")?.strip_suffix(".bin")?.parse().ok()?;
                let bytes = std::fs::read(e.path()).expect("reads a base");
                Some((index, bytes.starts_with(b"BUSD")))
            })
            .collect();
        found.sort_unstable();
        found
    }

    /// Past `delta_max` of changes, a snapshot writes them as a delta over the current base,
    /// and folds the chain into a new dump once its deltas outgrow a quarter of the dump; every
    /// file of the chain (and of the one before) is kept and no other; a restart restores the
    /// same store from the chain; a follower is sent it whole; a chain missing a delta is
    /// refused, naming it.
    #[tokio::test]
    async fn usage_changes_past_the_delta_limit_become_a_chain_of_deltas() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("snapshot");
        let store = SnapshotStore::Dir(path.clone());
        let open = |store: &SnapshotStore| {
            StateMachine::open(store.clone(), usage_store(), audit(), FailStop::record())
                .expect("opens")
        };
        let mut sm = open(&store);
        sm.delta_max = 1;
        sm.apply(vec![entry(1, &["w"])]).await.expect("applies");
        let (mut deltas, mut folds_after_a_delta, mut longest) = (0, 0, 0);
        for round in 0..60u64 {
            let had_deltas = base_files(&path).iter().any(|(_, delta)| *delta);
            place_and_snapshot(&mut sm, round).await;
            let files = base_files(&path);
            let newest = files.iter().map(|(i, _)| *i).max();
            let newest_is_delta = files.last().is_some_and(|(_, delta)| *delta);
            deltas += u32::from(newest_is_delta && newest == sm.base().index);
            folds_after_a_delta += u32::from(had_deltas && !newest_is_delta);
            longest = longest.max(sm.base().chain.files.len());
            let on_disk: Vec<u64> = files.iter().map(|(i, _)| *i).collect();
            assert_eq!(on_disk, sm.base().kept(), "round {round}: the chains' files, no others");
            let hash = sm.usage().hash().wait().await.expect("hashes");
            let reopened = open(&store);
            assert_eq!(
                reopened.usage().hash().wait().await.expect("hashes"),
                hash,
                "round {round}"
            );
        }
        assert!(deltas >= 3, "deltas were written: {deltas}");
        assert!(folds_after_a_delta >= 1, "a chain was folded into a dump");
        assert!(longest >= 3, "a dump and deltas over it: {longest}");

        let hash = sm.usage().hash().wait().await.expect("hashes");
        let sent = sm.get_current_snapshot().await.expect("reads").expect("built");
        let mut follower = open(&SnapshotStore::Memory(Arc::default()));
        follower.install_snapshot(&sent.meta, sent.snapshot).await.expect("installs");
        assert_eq!(follower.usage().hash().wait().await.expect("hashes"), hash);

        // The chain is only as good as its every file.
        for round in 60..100 {
            if sm.base().chain.files.len() >= 2 {
                break;
            }
            place_and_snapshot(&mut sm, round).await;
        }
        let chain = sm.base().chain.files.clone();
        let delta = *chain.last().expect("a chain");
        assert!(chain.len() >= 2, "ends in a delta: {chain:?}");
        std::fs::remove_file(path.join(format!("usage-base-{delta}.bin"))).expect("removes");
        let missing = StateMachine::open(store, usage_store(), audit(), FailStop::record());
        let error = missing.err().expect("refused without a delta").to_string();
        assert!(error.contains(&format!("usage store base {delta} is missing")), "{error}");
    }

    /// Creates tenant `t{round}` and places `p` for it (command `2 + round`), then builds a
    /// snapshot: each round adds keys of their own to the usage store (a tenant's first block
    /// of change points and its last point), as a dump grows.
    async fn place_and_snapshot(sm: &mut StateMachine, round: u64) {
        let tenant = format!("t{round}");
        let spec = crate::scheduler::PlaceSpec {
            placement: "p".into(),
            count: 1,
            resources: Resources::new(10, 10),
            ..Default::default()
        };
        let create =
            Command::CreateTenant { tenant: tenant.as_str().into(), parent: None, weight: 1 };
        let place = Command::Place { tenant: tenant.as_str().into(), spec, fence: None };
        let mut e = entry(2 + round, &[]);
        if let EntryPayload::Normal(batch) = &mut e.payload {
            // A second later each round.
            batch.proposed_at = UnixMillis(2_000 + round * 1_000);
            batch.proposals.extend([proposal(create), proposal(place)]);
        }
        sm.apply(vec![e]).await.expect("applies");
        sm.build_snapshot().await.expect("builds");
    }

    fn usage_store() -> UsageStore {
        UsageStore::open(&UsageLocation::Temporary, FailStop::record()).expect("usage store")
    }

    /// Without a bug, the same entries apply and nothing stops.
    #[tokio::test]
    async fn a_total_core_applies_and_nothing_stops() {
        let fail_stop = FailStop::record();
        let usage =
            UsageStore::open(&UsageLocation::Temporary, fail_stop.clone()).expect("usage store");
        let memory = SnapshotStore::Memory(Arc::default());
        let mut sm = StateMachine::open(memory, usage, audit(), fail_stop.clone()).expect("opens");
        let results = sm.apply(vec![entry(1, &["a"]), entry(2, &["b", "c"])]).await.expect("ok");
        assert_eq!(results.iter().map(Vec::len).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(fail_stop.reason(), None);
    }
}
