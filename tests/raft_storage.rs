//! The Raft log stores pass openraft's storage conformance suite, and snapshots survive a
//! restart intact while damaged ones are refused.

// openraft's StoreBuilder returns its (large) StorageError.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::io::Cursor;
use std::sync::{Arc, Mutex};

use berth::fatal::FailStop;
use berth::raft::state_machine::StateMachine;
use berth::raft::types::{Batch, LogEntry, LogId, Proposal, StorageError, TypeConfig};
use berth::scheduler::{Command, PlaceSpec, RequestId, Resources, UnixMillis};
use berth::storage::{FileLogOptions, LogStore, MemLog, SnapshotStore};
use berth::usage::{UsageLocation, UsageStore};
use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{CommittedLeaderId, EntryPayload, RaftLogReader, RaftSnapshotBuilder};

struct FileBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for FileBuilder {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError> {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = LogStore::open_dir(&dir.path().join("log")).expect("log opens");
        let sm = StateMachine::open(
            SnapshotStore::Dir(dir.path().join("snapshot")),
            usage(),
            audit(),
            FailStop::record(),
        )?;
        Ok((dir, log, sm))
    }
}

struct MemoryBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, ()> for MemoryBuilder {
    async fn build(&self) -> Result<((), LogStore, StateMachine), StorageError> {
        let log = LogStore::memory(Arc::new(Mutex::new(MemLog::default())));
        let sm = StateMachine::open(
            SnapshotStore::Memory(Arc::default()),
            usage(),
            audit(),
            FailStop::record(),
        )?;
        Ok(((), log, sm))
    }
}

struct DelayedMemoryBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, ()> for DelayedMemoryBuilder {
    async fn build(&self) -> Result<((), LogStore, StateMachine), StorageError> {
        let log = MemLog::with_flush_delay(std::time::Duration::from_millis(1));
        let log = LogStore::memory(Arc::new(Mutex::new(log)));
        let sm = StateMachine::open(
            SnapshotStore::Memory(Arc::default()),
            usage(),
            audit(),
            FailStop::record(),
        )?;
        Ok(((), log, sm))
    }
}

/// The file log store (with the state machine) passes openraft's conformance suite.
#[test]
fn file_store_passes_openraft_suite() -> Result<(), StorageError> {
    Suite::test_all(FileBuilder)
}

/// A file log store compacting at every write (so rewrites interleave with every operation)
/// passes it too.
#[test]
fn constantly_compacting_file_store_passes_openraft_suite() -> Result<(), StorageError> {
    struct Compacting;
    impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for Compacting {
        async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError> {
            let dir = tempfile::tempdir().expect("temp dir");
            let options = FileLogOptions { compact_at_bytes: 1, preallocate_bytes: 4096 };
            let log = LogStore::open_dir_with(&dir.path().join("log"), options).expect("opens");
            let sm = StateMachine::open(
                SnapshotStore::Dir(dir.path().join("snapshot")),
                usage(),
                audit(),
                FailStop::record(),
            )?;
            Ok((dir, log, sm))
        }
    }
    Suite::test_all(Compacting)
}

async fn log_state(log: &mut LogStore) -> (Option<u64>, Option<u64>) {
    let state = log.get_log_state().await.expect("log state");
    (state.last_purged_log_id.map(|l| l.index), state.last_log_id.map(|l| l.index))
}

async fn indexes(log: &mut LogStore) -> Vec<u64> {
    let entries = log.try_get_log_entries(0..u64::MAX).await.expect("reads");
    entries.iter().map(|e| e.log_id.index).collect()
}

/// What the file log acknowledged is there after reopening: entries, vote, truncation and
/// purge; a record torn by a crash at the end of the file is dropped, and the log goes on.
#[tokio::test]
async fn file_log_reopens_what_it_acknowledged_and_drops_a_torn_tail() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("log");
    {
        let mut log = LogStore::open_dir(&path).expect("opens");
        log.save_vote(&openraft::Vote::new(2, 1)).await.expect("vote");
        log.blocking_append((1..=6).map(|i| entry(i, vec![register(&format!("w{i}"))])))
            .await
            .expect("appends");
        log.truncate(LogId::new(CommittedLeaderId::new(1, 1), 5)).await.expect("truncates");
        log.purge(LogId::new(CommittedLeaderId::new(1, 1), 2)).await.expect("purges");
    }
    let wal = path.join("wal");
    let end = records_end(&std::fs::read(&wal).expect("wal"));
    // A crash in the middle of the next record: its header and part of its payload.
    write_at(&wal, end, &[200, 0, 0, 0, 1, 2, 3, 4, 9, 9]);

    let mut log = LogStore::open_dir(&path).expect("reopens");
    let bytes = std::fs::read(&wal).expect("wal");
    assert!(bytes[end..].iter().all(|b| *b == 0), "torn tail zeroed");
    assert_eq!(log.read_vote().await.expect("vote"), Some(openraft::Vote::new(2, 1)));
    assert_eq!(log_state(&mut log).await, (Some(2), Some(4)));
    assert_eq!(indexes(&mut log).await, vec![3, 4]);
    log.blocking_append([entry(5, vec![register("again")])]).await.expect("appends");
    drop(log);
    let mut log = LogStore::open_dir(&path).expect("reopens again");
    assert_eq!(indexes(&mut log).await, vec![3, 4, 5], "appends after the cut survive");
}

/// Where the records of a log file end (the first zero length).
fn records_end(bytes: &[u8]) -> usize {
    let mut at = 0;
    loop {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) as usize;
        if len == 0 {
            return at;
        }
        at += 8 + len;
    }
}

fn write_at(path: &std::path::Path, offset: usize, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    let file = std::fs::OpenOptions::new().write(true).open(path).expect("wal");
    file.write_all_at(bytes, offset as u64).expect("write");
}

/// Where each record of a log file starts, up to the first zero length.
fn record_starts(bytes: &[u8]) -> Vec<usize> {
    let mut starts = Vec::new();
    let mut at = 0;
    while at + 8 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) as usize;
        if len == 0 {
            break;
        }
        starts.push(at);
        at += 8 + len;
    }
    starts
}

/// A file log of 50 appended records (one entry each), closed.
async fn fifty_records(path: &std::path::Path) -> Vec<u8> {
    let mut log = LogStore::open_dir(path).expect("opens");
    for i in 1..=50 {
        log.blocking_append([entry(i, vec![register(&format!("w{i}"))])]).await.expect("appends");
    }
    drop(log);
    std::fs::read(path.join("wal")).expect("wal")
}

/// One byte flipped in record 3 of 50 is damage, not a torn write: the log refuses to open,
/// naming the file and the record's offset, and leaves the file exactly as it was.
#[tokio::test]
async fn a_damaged_record_before_others_refuses_to_open() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("log");
    let mut bytes = fifty_records(&path).await;
    let starts = record_starts(&bytes);
    assert_eq!(starts.len(), 50);
    let wal = path.join("wal");
    // A payload byte (bad checksum), then a length byte (a length running past the file).
    for (flip, why) in [(starts[2] + 20, "checksum mismatch"), (starts[2] + 3, "runs past")] {
        bytes[flip] ^= 0x80;
        std::fs::write(&wal, &bytes).expect("damage");
        let Err(error) = LogStore::open_dir(&path) else { panic!("opened a damaged log") };
        let message = error.to_string();
        assert_eq!(error.kind(), std::io::ErrorKind::InvalidData, "{message}");
        assert!(message.contains(&wal.display().to_string()), "names the file: {message}");
        assert!(message.contains(&format!("byte {}", starts[2])), "names the offset: {message}");
        assert!(message.contains(why), "{message}");
        assert_eq!(std::fs::read(&wal).expect("wal"), bytes, "the file is unchanged");
        bytes[flip] ^= 0x80;
    }
    std::fs::write(&wal, &bytes).expect("repair");
    let mut log = LogStore::open_dir(&path).expect("opens once repaired");
    assert_eq!(indexes(&mut log).await, (1..=50).collect::<Vec<_>>());
}

/// A write torn by a crash recovers: a file cut in the middle of its last record, or a last
/// record partly garbage and then zeros, loses that record only.
#[tokio::test]
async fn a_torn_last_record_is_dropped() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("log");
    let bytes = fifty_records(&path).await;
    let last = *record_starts(&bytes).last().expect("records");
    let wal = path.join("wal");
    let end = records_end(&bytes);

    std::fs::write(&wal, &bytes[..last + 13]).expect("cut mid-record");
    let mut log = LogStore::open_dir(&path).expect("reopens");
    assert_eq!(indexes(&mut log).await, (1..=49).collect::<Vec<_>>());
    drop(log);

    let mut torn = bytes.clone();
    torn[last + 10..end].fill(0);
    torn[last + 10..last + 14].copy_from_slice(&[0xde, 0xad, 0xbe, 0xef]);
    std::fs::write(&wal, &torn).expect("tear");
    let mut log = LogStore::open_dir(&path).expect("reopens");
    assert_eq!(indexes(&mut log).await, (1..=49).collect::<Vec<_>>());
    log.blocking_append([entry(50, vec![register("again")])]).await.expect("appends");
    drop(log);
    let mut log = LogStore::open_dir(&path).expect("reopens again");
    assert_eq!(indexes(&mut log).await, (1..=50).collect::<Vec<_>>(), "the log goes on");
}

/// A byte flipped inside a record fails its checksum: the log ends before it, never with a
/// damaged entry.
#[tokio::test]
async fn file_log_never_returns_a_damaged_record() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("log");
    {
        let mut log = LogStore::open_dir(&path).expect("opens");
        log.blocking_append([entry(1, vec![register("a")])]).await.expect("appends");
        log.blocking_append([entry(2, vec![register("b")])]).await.expect("appends");
    }
    let wal = path.join("wal");
    let mut bytes = std::fs::read(&wal).expect("wal");
    let last = records_end(&bytes) - 3;
    bytes[last] ^= 0x40;
    std::fs::write(&wal, &bytes).expect("damage");
    let mut log = LogStore::open_dir(&path).expect("reopens");
    assert_eq!(indexes(&mut log).await, vec![1]);
}

/// Compaction rewrites the file with only the live log: after purging, the file shrinks, and
/// reopening it gives the same log.
#[tokio::test]
async fn file_log_compaction_keeps_the_live_log_only() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("log");
    let big = |i: u64| entry(i, (0..20).map(|k| register(&format!("worker-{i}-{k}"))).collect());
    {
        let options = FileLogOptions { compact_at_bytes: 64 * 1024, preallocate_bytes: 4096 };
        let mut log = LogStore::open_dir_with(&path, options).expect("opens");
        for i in 1..=200 {
            log.blocking_append([big(i)]).await.expect("appends");
            if i % 50 == 0 {
                log.purge(LogId::new(CommittedLeaderId::new(1, 1), i - 10)).await.expect("purges");
            }
        }
        log.save_vote(&openraft::Vote::new(7, 2)).await.expect("vote");
    }
    let size = std::fs::metadata(path.join("wal")).expect("wal").len();
    assert!(size < 128 * 1024, "the file holds about the live log only ({size} bytes)");
    let mut log = LogStore::open_dir(&path).expect("reopens");
    assert_eq!(log_state(&mut log).await, (Some(190), Some(200)));
    assert_eq!(indexes(&mut log).await, (191..=200).collect::<Vec<_>>());
    assert_eq!(log.read_vote().await.expect("vote"), Some(openraft::Vote::new(7, 2)));
}

/// A log directory of the old sled format is refused with a clear error, not read as empty.
#[test]
fn a_sled_log_directory_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("db"), b"sled data").expect("fake sled file");
    let Err(error) = LogStore::open_dir(dir.path()) else { panic!("opened a sled directory") };
    assert!(error.to_string().contains("sled format"), "{error}");
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
    let mut sm =
        StateMachine::open(store.clone(), usage(), audit(), FailStop::record()).expect("opens");
    let results = sm
        .apply(vec![entry(1, vec![register("a"), register("b")]), entry(2, vec![register("c")])])
        .await
        .expect("applies");
    let indexes: Vec<u64> = results.iter().flatten().map(|a| a.log_index.0).collect();
    assert_eq!(indexes, vec![2, 3, 4], "a leader change (1) then one index per command");
    let snapshot = sm.build_snapshot().await.expect("builds");

    let reopened =
        StateMachine::open(store, usage(), audit(), FailStop::record()).expect("reopens from disk");
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
    let mut sm =
        StateMachine::open(SnapshotStore::Dir(path.clone()), usage(), audit(), FailStop::record())
            .expect("opens");
    sm.apply(vec![entry(1, vec![register("a")])]).await.expect("applies");
    sm.build_snapshot().await.expect("builds");
    // As a leader sends it: the usage store whole.
    let snapshot = sm.get_current_snapshot().await.expect("reads").expect("built");

    let file = path.join("snapshot.bin");
    let mut bytes = std::fs::read(&file).expect("snapshot file");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&file, &bytes).expect("rewrite");
    assert!(
        StateMachine::open(SnapshotStore::Dir(path.clone()), usage(), audit(), FailStop::record())
            .is_err(),
        "flipped byte"
    );
    std::fs::write(&file, &bytes[..bytes.len() - 10]).expect("truncate");
    assert!(
        StateMachine::open(SnapshotStore::Dir(path), usage(), audit(), FailStop::record()).is_err(),
        "truncated file"
    );

    let mut data = snapshot.snapshot.into_inner();
    let last = data.len() - 1;
    data[last] ^= 0x01;
    let mut target = StateMachine::open(
        SnapshotStore::Memory(Arc::default()),
        usage(),
        audit(),
        FailStop::record(),
    )
    .expect("opens");
    let hash = target.read().scheduler.state_hash();
    let refused = target.install_snapshot(&snapshot.meta, Box::new(Cursor::new(data))).await;
    assert!(refused.is_err());
    assert_eq!(target.read().scheduler.state_hash(), hash, "state unchanged");
    assert!(target.get_current_snapshot().await.expect("reads").is_none());
}

/// An empty usage store (a state machine restores it from its snapshot).
fn usage() -> UsageStore {
    UsageStore::open(&UsageLocation::Temporary, FailStop::record()).expect("usage store opens")
}

fn audit() -> berth::audit::AuditStore {
    berth::audit::AuditStore::open(&UsageLocation::Temporary).expect("audit trail opens")
}

fn place(tenant: &str, id: &str) -> Command {
    Command::Place {
        tenant: tenant.into(),
        spec: PlaceSpec {
            placement: id.into(),
            count: 1,
            resources: Resources::new(10, 10),
            ..PlaceSpec::default()
        },
        fence: None,
    }
}

/// The usage bases beside a snapshot, by the command index each was taken at.
fn bases(dir: &std::path::Path) -> Vec<u64> {
    let mut found: Vec<u64> = std::fs::read_dir(dir)
        .expect("reads the snapshot directory")
        .filter_map(|e| {
            let name = e.expect("entry").file_name().into_string().expect("utf-8");
            name.strip_prefix("usage-base-")?.strip_suffix(".bin")?.parse().ok()
        })
        .collect();
    found.sort();
    found
}

/// The usage store rides in snapshots as a base file and the changes since it: snapshots fold
/// the changes into a new base once they outgrow a quarter of it, keep the base before it and
/// remove older ones; a restart restores the same store; a follower is sent it whole and
/// keeps it as its own base (one naming the sender's base is refused); a snapshot whose base
/// is missing is refused, naming it.
#[tokio::test]
async fn usage_rides_in_snapshots_as_a_base_and_the_changes_since() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("snapshot");
    let store = SnapshotStore::Dir(path.clone());
    let mut sm =
        StateMachine::open(store.clone(), usage(), audit(), FailStop::record()).expect("opens");
    let create = Command::CreateTenant { tenant: "acme".into(), parent: None, weight: 1 };
    sm.apply(vec![entry(1, vec![register("w"), create])]).await.expect("applies");
    let empty = sm.usage().hash().wait().await.expect("hashes");
    let mut seen = Vec::new();
    for round in 0..6u64 {
        let places = (0..=round).map(|i| place("acme", &format!("p{round}-{i}"))).collect();
        sm.apply(vec![entry(2 + round, places)]).await.expect("applies");
        sm.build_snapshot().await.expect("builds");
        let now = bases(&path);
        assert!(!now.is_empty() && now.len() <= 2, "round {round}: bases {now:?}");
        seen.extend(now);
    }
    seen.dedup();
    assert!(seen.len() >= 3, "bases were folded anew and old ones removed: {seen:?}");
    let hash = sm.usage().hash().wait().await.expect("hashes");
    assert_ne!(hash, empty, "the placements were metered");

    let reopened =
        StateMachine::open(store, usage(), audit(), FailStop::record()).expect("reopens");
    assert_eq!(reopened.usage().hash().wait().await.expect("hashes"), hash);

    let sent = sm.get_current_snapshot().await.expect("reads").expect("built");
    let follower_path = dir.path().join("follower");
    let mut follower = StateMachine::open(
        SnapshotStore::Dir(follower_path.clone()),
        usage(),
        audit(),
        FailStop::record(),
    )
    .expect("opens");
    // What a replica keeps names its own base: another replica refuses it.
    let kept = sm.build_snapshot().await.expect("builds");
    let refused = follower.install_snapshot(&kept.meta, kept.snapshot).await;
    assert!(refused.is_err(), "a snapshot naming another replica's base is refused");
    follower.install_snapshot(&sent.meta, sent.snapshot).await.expect("installs");
    assert_eq!(follower.usage().hash().wait().await.expect("hashes"), hash);
    assert_eq!(bases(&follower_path).len(), 1, "kept as its own base");
    let restarted =
        StateMachine::open(SnapshotStore::Dir(follower_path), usage(), audit(), FailStop::record())
            .expect("reopens");
    assert_eq!(restarted.usage().hash().wait().await.expect("hashes"), hash);

    for base in bases(&path) {
        std::fs::remove_file(path.join(format!("usage-base-{base}.bin"))).expect("removes");
    }
    let missing =
        StateMachine::open(SnapshotStore::Dir(path), usage(), audit(), FailStop::record());
    let error = missing.err().expect("refused without its base").to_string();
    assert!(error.contains("usage store base"), "{error}");
}
