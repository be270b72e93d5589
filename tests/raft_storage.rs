//! The Raft log stores pass openraft's storage conformance suite, and snapshots survive a
//! restart intact while damaged ones are refused.

// openraft's StoreBuilder returns its (large) StorageError.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::io::Cursor;
use std::sync::{Arc, Mutex};

use berth::raft::state_machine::StateMachine;
use berth::raft::types::{Batch, LogEntry, LogId, Proposal, StorageError, TypeConfig};
use berth::scheduler::{Command, RequestId, Resources, UnixMillis};
use berth::storage::{LogStore, MemLog, SnapshotStore};
use openraft::storage::RaftStateMachine;
use openraft::testing::{StoreBuilder, Suite};
use openraft::{CommittedLeaderId, EntryPayload, RaftSnapshotBuilder};

struct SledBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for SledBuilder {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError> {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = LogStore::open_sled(&dir.path().join("log")).expect("sled opens");
        let sm = StateMachine::open(SnapshotStore::Dir(dir.path().join("snapshot")))?;
        Ok((dir, log, sm))
    }
}

struct MemoryBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, ()> for MemoryBuilder {
    async fn build(&self) -> Result<((), LogStore, StateMachine), StorageError> {
        let log = LogStore::memory(Arc::new(Mutex::new(MemLog::default())));
        let sm = StateMachine::open(SnapshotStore::Memory(Arc::default()))?;
        Ok(((), log, sm))
    }
}

struct DelayedMemoryBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, ()> for DelayedMemoryBuilder {
    async fn build(&self) -> Result<((), LogStore, StateMachine), StorageError> {
        let log = MemLog::with_flush_delay(std::time::Duration::from_millis(1));
        let log = LogStore::memory(Arc::new(Mutex::new(log)));
        let sm = StateMachine::open(SnapshotStore::Memory(Arc::default()))?;
        Ok(((), log, sm))
    }
}

/// The sled log store (with the state machine) passes openraft's conformance suite.
#[test]
fn sled_store_passes_openraft_suite() -> Result<(), StorageError> {
    Suite::test_all(SledBuilder)
}

/// The in-memory log store behaves the same and passes the same suite.
#[test]
fn memory_store_passes_openraft_suite() -> Result<(), StorageError> {
    Suite::test_all(MemoryBuilder)
}

/// The simulation's memory log (durable only once its flusher ran) passes it too.
#[test]
fn delayed_memory_store_passes_openraft_suite() -> Result<(), StorageError> {
    Suite::test_all(DelayedMemoryBuilder)
}

fn entry(index: u64, commands: Vec<Command>) -> LogEntry {
    let proposals = commands
        .into_iter()
        .enumerate()
        .map(|(i, command)| Proposal {
            request_id: Some(RequestId::new(format!("r{index}-{i}"))),
            command,
            token: None,
        })
        .collect();
    LogEntry {
        log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
        payload: EntryPayload::Normal(Batch { proposed_at: UnixMillis(1_000 + index), proposals }),
    }
}

fn register(id: &str) -> Command {
    Command::RegisterWorker {
        worker: id.into(),
        pool: None,
        capacity: Resources::new(1_000, 1_000),
        labels: BTreeMap::new(),
    }
}

/// A snapshot written to disk restores the same state (hash, command index, applied log id)
/// in a freshly opened state machine; batches number every command.
#[tokio::test]
async fn snapshot_round_trip_through_disk() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SnapshotStore::Dir(dir.path().join("snapshot"));
    let mut sm = StateMachine::open(store.clone()).expect("opens");
    let results = sm
        .apply(vec![entry(1, vec![register("a"), register("b")]), entry(2, vec![register("c")])])
        .await
        .expect("applies");
    let indexes: Vec<u64> = results.iter().flatten().map(|a| a.log_index.0).collect();
    assert_eq!(indexes, vec![2, 3, 4], "a leader change (1) then one index per command");
    let snapshot = sm.build_snapshot().await.expect("builds");

    let reopened = StateMachine::open(store).expect("reopens from disk");
    let (before, after) = (sm.read(), reopened.read());
    assert_eq!(before.scheduler.state_hash(), after.scheduler.state_hash());
    assert_eq!(before.progress, after.progress);
    assert_eq!(after.progress.last_applied, snapshot.meta.last_log_id);
    assert_eq!(after.scheduler.state().workers.len(), 3);
}

/// A damaged snapshot file is refused on open, and a damaged snapshot sent by a leader is
/// refused by install without changing the state.
#[tokio::test]
async fn corrupt_snapshots_are_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("snapshot");
    let mut sm = StateMachine::open(SnapshotStore::Dir(path.clone())).expect("opens");
    sm.apply(vec![entry(1, vec![register("a")])]).await.expect("applies");
    let snapshot = sm.build_snapshot().await.expect("builds");

    let file = path.join("snapshot.bin");
    let mut bytes = std::fs::read(&file).expect("snapshot file");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&file, &bytes).expect("rewrite");
    assert!(StateMachine::open(SnapshotStore::Dir(path.clone())).is_err(), "flipped byte");
    std::fs::write(&file, &bytes[..bytes.len() - 10]).expect("truncate");
    assert!(StateMachine::open(SnapshotStore::Dir(path)).is_err(), "truncated file");

    let mut data = snapshot.snapshot.into_inner();
    let last = data.len() - 1;
    data[last] ^= 0x01;
    let mut target = StateMachine::open(SnapshotStore::Memory(Arc::default())).expect("opens");
    let hash = target.read().scheduler.state_hash();
    let refused = target.install_snapshot(&snapshot.meta, Box::new(Cursor::new(data))).await;
    assert!(refused.is_err());
    assert_eq!(target.read().scheduler.state_hash(), hash, "state unchanged");
    assert!(target.get_current_snapshot().await.expect("reads").is_none());
}
