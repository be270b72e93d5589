//! Every decoder of outside bytes (peer frames, log files, snapshot files and bodies) meets
//! random, truncated and bit-flipped input with a clean error or a value it really holds,
//! never a panic. (Allocation is bounded by `codec`'s limit: see its header.)

use std::collections::BTreeMap;
use std::io::Cursor;
use std::sync::Arc;

use berth::codec;
use berth::fatal::FailStop;
use berth::raft::state_machine::StateMachine;
use berth::raft::types::{Batch, LogEntry, LogId, Proposal, SnapshotMeta, TypeConfig, Vote};
use berth::scheduler::{Command, Query, RequestId, Resources, TenantId, UnixMillis};
use berth::storage::snapshot_store::{unframe, StoredSnapshot};
use berth::storage::{LogStore, SnapshotStore};
use berth::usage::{UsageLocation, UsageStore};
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use openraft::storage::{RaftLogStorageExt, RaftSnapshotBuilder, RaftStateMachine};
use openraft::{CommittedLeaderId, EntryPayload, RaftLogReader};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use serde::de::DeserializeOwned;
use serde::Serialize;

fn entry(index: u64) -> LogEntry {
    let proposals = (0..3)
        .map(|i| Proposal {
            request_id: Some(RequestId::new(format!("r{index}-{i}"))),
            command: Command::RegisterWorker {
                worker: format!("worker-{index}-{i}").as_str().into(),
                pool: None,
                capacity: Resources::new(1_000, 1_024),
                labels: BTreeMap::from([("zone".into(), "a".into())]),
            },
            token: None,
        })
        .collect();
    LogEntry {
        log_id: LogId::new(CommittedLeaderId::new(3, 1), index),
        payload: EntryPayload::Normal(Batch { proposed_at: UnixMillis(1_000 + index), proposals }),
    }
}

/// One peer message of every kind a replica decodes, encoded.
fn peer_messages() -> Vec<Vec<u8>> {
    let vote = Vote::new(3, 1);
    let append = AppendEntriesRequest::<TypeConfig> {
        vote,
        prev_log_id: Some(LogId::new(CommittedLeaderId::new(3, 1), 4)),
        entries: (5..8).map(entry).collect(),
        leader_commit: Some(LogId::new(CommittedLeaderId::new(3, 1), 4)),
    };
    let install = InstallSnapshotRequest::<TypeConfig> {
        vote,
        meta: SnapshotMeta::default(),
        offset: 0,
        data: vec![7; 100],
        done: true,
    };
    let proposals: Vec<Proposal> = match entry(1).payload {
        EntryPayload::Normal(batch) => batch.proposals,
        _ => Vec::new(),
    };
    vec![
        encode(&append),
        encode(&VoteRequest::new(vote, None)),
        encode(&install),
        encode(&proposals),
        encode(&Query::Tenant(TenantId::new("acme"))),
    ]
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    codec::encode(value).expect("encodes")
}

/// Whether the decoder of message kind `which` (as in `peer_messages`) refuses `bytes`.
fn refused_as(which: usize, bytes: &[u8]) -> bool {
    fn refused<T: DeserializeOwned>(bytes: &[u8]) -> bool {
        berth::network::decode::<T>(bytes).is_err()
    }
    match which {
        0 => refused::<AppendEntriesRequest<TypeConfig>>(bytes),
        1 => refused::<VoteRequest<u64>>(bytes),
        2 => refused::<InstallSnapshotRequest<TypeConfig>>(bytes),
        3 => refused::<Vec<Proposal>>(bytes),
        _ => refused::<Query>(bytes),
    }
}

/// Decoding `bytes` as `T` gives an error, or a value whose encoding decodes back to a value
/// with that same encoding. (Not necessarily `bytes` itself: a flipped bit can reorder a map's
/// keys, which decode into the same map.)
fn decodes_faithfully<T: DeserializeOwned + Serialize>(bytes: &[u8]) -> bool {
    match codec::decode::<T>(bytes) {
        Ok(value) => {
            let encoded = codec::encode(&value).expect("encodes");
            codec::decode::<T>(&encoded)
                .is_ok_and(|again| codec::encode(&again).expect("encodes") == encoded)
        }
        Err(_) => true,
    }
}

fn all_faithful(bytes: &[u8]) -> bool {
    decodes_faithfully::<AppendEntriesRequest<TypeConfig>>(bytes)
        && decodes_faithfully::<VoteRequest<u64>>(bytes)
        && decodes_faithfully::<InstallSnapshotRequest<TypeConfig>>(bytes)
        && decodes_faithfully::<Vec<Proposal>>(bytes)
        && decodes_faithfully::<Query>(bytes)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Random bytes into every peer decoder: an error or a faithful value, never a panic.
    #[test]
    fn random_bytes_into_peer_decoders(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        prop_assert!(all_faithful(&bytes));
    }

    /// A valid peer message cut short is refused by the decoder of its kind, and no decoder
    /// panics on it.
    #[test]
    fn truncated_peer_messages_are_refused(which in 0usize..5, cut in any::<prop::sample::Index>()) {
        let message = &peer_messages()[which];
        let kept = &message[..cut.index(message.len())];
        prop_assert!(refused_as(which, kept));
        prop_assert!(all_faithful(kept));
        prop_assert!(!refused_as(which, message));
    }

    /// A valid peer message with one bit flipped: an error or a faithful value.
    #[test]
    fn bit_flipped_peer_messages(which in 0usize..5, at in any::<prop::sample::Index>(), bit in 0u8..8) {
        let mut message = peer_messages()[which].clone();
        let at = at.index(message.len());
        message[at] ^= 1 << bit;
        prop_assert!(all_faithful(&message));
    }

    /// A snapshot file, random or damaged: refused (its checksum), never half-read.
    #[test]
    fn damaged_snapshot_files_are_refused(
        random in proptest::collection::vec(any::<u8>(), 0..256),
        at in any::<prop::sample::Index>(),
        bit in 0u8..8,
        cut in any::<prop::sample::Index>(),
    ) {
        prop_assert!(unframe(&random).is_err());
        let file = snapshot_file();
        let mut flipped = file.clone();
        let at = at.index(flipped.len());
        flipped[at] ^= 1 << bit;
        prop_assert!(unframe(&flipped).is_err());
        prop_assert!(unframe(&file[..cut.index(file.len())]).is_err());
        prop_assert!(unframe(&file).is_ok());
    }
}

/// A snapshot file as `SnapshotStore` writes it.
fn snapshot_file() -> Vec<u8> {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SnapshotStore::Dir(dir.path().to_owned());
    let snapshot = StoredSnapshot { meta: SnapshotMeta::default(), data: vec![1, 2, 3, 250, 0] };
    store.save(&snapshot).expect("saves");
    std::fs::read(dir.path().join("snapshot.bin")).expect("reads")
}

/// Random and damaged snapshot bodies, sent as by a leader: refused or installed, never a
/// panic; a refused one leaves the state as it was.
#[tokio::test]
async fn damaged_snapshot_bodies_are_refused() {
    let mut source = StateMachine::open(
        SnapshotStore::Memory(Arc::default()),
        usage(),
        audit(),
        FailStop::record(),
    )
    .expect("opens");
    source.apply((1..4).map(entry).collect::<Vec<_>>()).await.expect("applies");
    source.build_snapshot().await.expect("builds");
    // As a leader sends it: the usage store whole.
    let snapshot = source.get_current_snapshot().await.expect("reads").expect("built");
    let body = snapshot.snapshot.into_inner();
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let mut target = StateMachine::open(
        SnapshotStore::Memory(Arc::default()),
        usage(),
        audit(),
        FailStop::record(),
    )
    .expect("opens");
    let mut refused = 0;
    for _ in 0..200 {
        let mut data = body.clone();
        let (at, bit, cut, noise) = (0..data.len(), 0u8..8, 0..data.len(), any::<u8>())
            .new_tree(&mut runner)
            .expect("draws")
            .current();
        data[at] ^= 1 << bit;
        for damaged in [data, body[..cut].to_vec(), vec![noise; cut % 64]] {
            let hash = target.read().scheduler.state_hash();
            let installed =
                target.install_snapshot(&snapshot.meta, Box::new(Cursor::new(damaged))).await;
            if installed.is_err() {
                refused += 1;
                assert_eq!(target.read().scheduler.state_hash(), hash, "state unchanged");
            }
        }
    }
    // Truncated and random bodies are always refused; a flipped bit nearly always is.
    assert!(refused >= 400, "only {refused} of 600 damaged bodies refused");
    target.install_snapshot(&snapshot.meta, Box::new(Cursor::new(body))).await.expect("installs");
}

/// A log file with bytes flipped, cut or replaced at random opens to a prefix of what was
/// written (never a damaged or invented entry), or is refused; it never panics.
#[tokio::test]
async fn damaged_log_files_open_to_a_prefix_or_are_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("log");
    let written: Vec<LogEntry> = (1..=8).map(entry).collect();
    {
        let mut log = LogStore::open_dir(&path).expect("opens");
        for e in &written {
            log.blocking_append([e.clone()]).await.expect("appends");
        }
    }
    let wal = path.join("wal");
    let original = std::fs::read(&wal).expect("wal");
    let records = original.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1);
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let (mut opened, mut refused) = (0, 0);
    for round in 0..120 {
        let (at, bit, cut, noise) = (0..records + 64, 0u8..8, 0..records, any::<u8>())
            .new_tree(&mut runner)
            .expect("draws")
            .current();
        let bytes = match round % 3 {
            0 => {
                let mut b = original.clone();
                b[at] ^= 1 << bit;
                b
            }
            1 => original[..cut].to_vec(),
            _ => vec![noise; cut],
        };
        std::fs::write(&wal, &bytes).expect("damage");
        match LogStore::open_dir(&path) {
            Ok(mut log) => {
                opened += 1;
                let read = log.try_get_log_entries(0..u64::MAX).await.expect("reads");
                assert!(read.len() <= written.len());
                let prefix = &written[..read.len()];
                assert_eq!(encode(&read), encode(&prefix), "round {round}: a prefix of the log");
            }
            Err(e) => {
                refused += 1;
                assert_eq!(e.kind(), std::io::ErrorKind::InvalidData, "round {round}: {e}");
            }
        }
    }
    assert!(opened > 0 && refused > 0, "both outcomes occur ({opened} opened, {refused} refused)");
}

/// An empty usage store (a state machine restores it from its snapshot).
fn usage() -> UsageStore {
    UsageStore::open(&UsageLocation::Temporary, FailStop::record()).expect("usage store opens")
}

fn audit() -> berth::audit::AuditStore {
    berth::audit::AuditStore::open(&UsageLocation::Temporary).expect("audit trail opens")
}
