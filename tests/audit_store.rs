//! A replica's audit trail on disk (`berth::audit`): old chunks are pruned with their segment
//! files, a damaged chunk is a gap and never a wrong record, and a trail an earlier build kept
//! whole in sled is moved to segment files when it opens.

use std::path::Path;

use berth::audit::{AuditQuery, AuditStore, AUDIT_RETENTION_MS};
use berth::scheduler::windows::{DAY_MS, HOUR_MS};
use berth::scheduler::{AuditRecord, LogIndex, UnixMillis};
use berth::usage::UsageLocation;

const T0: u64 = 1_796_083_200_000;
/// Records per chunk the store sends to its writer (`CHUNK_RECORDS`).
const CHUNK: u64 = 128;

fn record(seq: u64, at: u64) -> AuditRecord {
    AuditRecord {
        seq,
        index: LogIndex(seq),
        at: UnixMillis(at),
        actor: "admin".into(),
        tenant: if seq % 2 == 0 { "acme".into() } else { "globex".into() },
        request_id: format!("r-{seq}"),
        command: "Place".into(),
        outcome: "ok".into(),
        prev: [0; 32],
        hash: [0; 32],
    }
}

/// One full chunk of records from `first_seq`, all at log time `at`.
fn chunk(first_seq: u64, at: u64) -> Vec<AuditRecord> {
    (first_seq..first_seq + CHUNK).map(|seq| record(seq, at)).collect()
}

/// Every `seq` the trail returns for `tenant` (all tenants when empty), in order.
fn seqs(store: &AuditStore, tenant: &str) -> Vec<u64> {
    let mut out = Vec::new();
    loop {
        let query = AuditQuery {
            tenant: (!tenant.is_empty()).then(|| tenant.to_string()),
            since_ms: 0,
            after_seq: out.last().copied().unwrap_or(0),
            limit: 1_000,
        };
        let page = store.read(query).blocking_recv().expect("the writer answers");
        let page = page.expect("the trail reads");
        if page.records.is_empty() {
            return out;
        }
        out.extend(page.records.iter().map(|r| r.seq));
    }
}

/// Opens the trail in `dir` (after an earlier handle's writer lets go of it: `open` waits).
fn open(dir: &Path) -> AuditStore {
    AuditStore::open(&UsageLocation::Dir(dir.to_path_buf())).expect("the trail opens")
}

fn segment_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir.join("chunks"))
        .expect("the segment directory")
        .map(|e| e.expect("an entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn chunks_past_retention_go_with_their_segment_files() {
    let tmp = tempfile::tempdir().expect("a temporary directory");
    let dir = tmp.path().join("audit");
    let store = open(&dir);
    store.record(chunk(1, T0));
    store.record(chunk(1 + CHUNK, T0 + 2 * DAY_MS));
    assert_eq!(seqs(&store, "").len() as u64, 2 * CHUNK);
    assert_eq!(segment_files(&dir).len(), 2, "one segment per log-time hour");

    // The first chunk of a later hour prunes what is past retention: the first chunk, not
    // the second (2 days after it).
    let later = T0 + AUDIT_RETENTION_MS + DAY_MS + HOUR_MS;
    store.record(chunk(1 + 2 * CHUNK, later));
    let kept = seqs(&store, "");
    assert_eq!(kept.first(), Some(&(1 + CHUNK)), "the oldest chunk is pruned");
    assert_eq!(kept.len() as u64, 2 * CHUNK);
    let acme = seqs(&store, "acme");
    assert!(acme.iter().all(|s| s % 2 == 0 && *s > CHUNK), "acme reads its own: {acme:?}");
    assert_eq!(acme.len() as u64, CHUNK, "acme reads the kept chunk's records");
    let files = segment_files(&dir);
    assert_eq!(files.len(), 2, "the pruned chunk's segment file is removed: {files:?}");
    assert!(!files.contains(&format!("{:012}.chunks", T0 / HOUR_MS)), "{files:?}");
}

#[test]
fn a_damaged_chunk_is_a_gap_never_a_wrong_record() {
    let tmp = tempfile::tempdir().expect("a temporary directory");
    let dir = tmp.path().join("audit");
    {
        let store = open(&dir);
        store.record(chunk(1, T0));
        store.record(chunk(1 + CHUNK, T0 + HOUR_MS));
        assert_eq!(seqs(&store, "").len() as u64, 2 * CHUNK);
    }
    // One byte of the first chunk changes on disk (a torn write, a bad sector).
    let first = dir.join("chunks").join(format!("{:012}.chunks", T0 / HOUR_MS));
    let mut bytes = std::fs::read(&first).expect("the first segment");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x55;
    std::fs::write(&first, bytes).expect("damaged");

    let store = open(&dir);
    let seqs = seqs(&store, "");
    assert_eq!(seqs, (1 + CHUNK..1 + 2 * CHUNK).collect::<Vec<_>>(), "only the intact chunk");
    // The trail goes on after the gap.
    store.record(chunk(1 + 2 * CHUNK, T0 + HOUR_MS));
    let all = self::seqs(&store, "");
    assert_eq!(all.len() as u64, 2 * CHUNK);
    assert_eq!(all.last(), Some(&(3 * CHUNK)));
}

#[test]
fn a_trail_kept_whole_in_sled_moves_to_segment_files() {
    let tmp = tempfile::tempdir().expect("a temporary directory");
    let dir = tmp.path().join("audit");
    {
        // What an earlier build wrote: each chunk's records as one value of tree `records`.
        let db = sled::Config::new().path(&dir).open().expect("sled opens");
        let records = db.open_tree("records").expect("the old tree");
        for first in [1, 1 + CHUNK] {
            let bytes = berth::codec::encode(&chunk(first, T0)).expect("encodes");
            records.insert(first.to_be_bytes(), bytes).expect("inserted");
        }
        let tenants = db.open_tree("tenants").expect("the index");
        for first in [1, 1 + CHUNK] {
            for tenant in ["acme", "globex"] {
                let mut key = vec![tenant.len() as u8];
                key.extend_from_slice(tenant.as_bytes());
                key.extend_from_slice(&first.to_be_bytes());
                tenants.insert(key, &[][..]).expect("indexed");
            }
        }
        db.flush().expect("flushed");
    }
    let store = open(&dir);
    assert_eq!(seqs(&store, ""), (1..=2 * CHUNK).collect::<Vec<_>>());
    assert_eq!(seqs(&store, "globex").len() as u64, CHUNK);
    assert_eq!(segment_files(&dir).len(), 1);
    // New records follow the moved ones; the replayed ones are not stored twice.
    store.record(chunk(1 + CHUNK, T0));
    store.record(chunk(1 + 2 * CHUNK, T0));
    assert_eq!(seqs(&store, ""), (1..=3 * CHUNK).collect::<Vec<_>>());
}
