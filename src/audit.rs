//! Each replica's audit trail: the records the core chains for every command a client sent
//! (`scheduler::audit`), kept in sled and read by range (`Cluster.GetAuditTrail`, `berth
//! audit`).
//!
//! The records come from applied entries, in order. They are gathered into chunks of up to
//! `CHUNK_RECORDS` (sent to a writer thread when full, or before a read, so a read sees every
//! record applied before it). The writer appends each chunk's bytes to a segment file, one per
//! log-time hour (`chunks/HOUR.chunks` beside sled's files), and keeps in sled where it is,
//! keyed by its first `seq` (big-endian, so the trail is one range in order), indexed under
//! each tenant it names. One sled insert per record, and one message per applied batch, cost
//! the replicas a fifth more CPU per write; this is a few inserts per hundred records.
//!
//! The chunks' bytes stay out of sled because sled keeps every page it wrote in memory until
//! its cache's shard (one of 256) has seen 64 accesses, and a leaf holds up to 16 values:
//! appended once and never read again, leaves of 30 KiB chunks piled up in memory (a heap
//! profile of `berth stress soak` saw them grow about 0.2 GiB an hour at 1,250 calls a
//! second). sled's values are now a few dozen bytes, and a chunk is read back from its file,
//! checked against its CRC-32 (one that fails is skipped: a gap, never a wrong record). Records still
//! gathering are sent to the writer before each snapshot (the log before it is then purged);
//! those of entries after the last snapshot are written again as a restarted replica replays
//! its log, and a replayed record already stored is skipped, so chunks never overlap. A replica that restarts replays its log after its snapshot
//! and writes the same records again (same `seq`, same bytes, perhaps batched otherwise);
//! reads take each `seq` once. Records are not in
//! snapshots: a replica that installs a leader's snapshot has no records before it, but its
//! chain continues from the head the snapshot carries, so `verify` still checks all it has.
//! sled is never asked to sync (like the usage store): it writes its log as its buffers
//! fill. Records of entries before the last snapshot that had not reached the disk when a
//! replica crashed are a gap in its trail, never a wrong record.
//!
//! Retention: a record is kept for `AUDIT_RETENTION_MS` of log time (90 days); from the first
//! chunk of each log-time hour the writer removes older chunks, oldest first, a few with each
//! chunk it writes until none is left (so pruning keeps up with any write rate), and removes
//! the segment files no chunk it keeps is in.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{mpsc, Arc, Mutex};

use serde::{Deserialize, Serialize};

use tokio::sync::oneshot;

use crate::codec;
use crate::scheduler::windows::{DAY_MS, HOUR_MS};
use crate::scheduler::AuditRecord;
use crate::usage::{write_in_batches, UsageLocation};

/// How long a record is kept, in log time: 90 days.
pub const AUDIT_RETENTION_MS: u64 = 90 * DAY_MS;
/// Most records one read returns.
pub const AUDIT_PAGE_MAX: usize = 1_000;
/// Most chunks pruning removes per chunk written (so it outpaces any write rate).
const PRUNE_PER_WRITE: usize = 8;
/// Records stored as one sled value (about 30 KiB: larger values sled writes as a file each).
const CHUNK_RECORDS: usize = 128;
/// How long opening waits for an earlier writer in this process to let go of the directory.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Which records to read: after `after_seq`, at or after `since_ms`, of `tenant` if given.
#[derive(Clone, Debug, Default)]
pub struct AuditQuery {
    pub tenant: Option<String>,
    pub since_ms: u64,
    pub after_seq: u64,
    pub limit: usize,
}

/// A page of records, oldest first, and the range the replica keeps.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuditPage {
    pub records: Vec<AuditRecord>,
    /// The oldest and newest `seq` kept (0 when none).
    pub first_seq: u64,
    pub last_seq: u64,
}

enum Message {
    Records(Vec<AuditRecord>),
    Read(AuditQuery, oneshot::Sender<Result<AuditPage, String>>),
}

/// A handle on the trail; clones share the writer, which stops with the last handle.
#[derive(Clone)]
pub struct AuditStore {
    route: Route,
    /// Records not yet sent to the writer: sent as one chunk once there are
    /// `CHUNK_RECORDS`, or before a read (so the writer wakes once a chunk, not once a batch).
    pending: Arc<Mutex<Vec<AuditRecord>>>,
}

#[derive(Clone)]
enum Route {
    Thread(mpsc::Sender<Message>),
    /// On the caller's thread (the simulation's).
    Inline(Arc<Mutex<Writer>>),
}

struct Writer {
    /// A chunk's first `seq` (big-endian) → where its records are (`Chunk`).
    chunks: sled::Tree,
    /// tenant length, tenant, a chunk's first `seq` (big-endian) → nothing.
    tenants: sled::Tree,
    /// The chunks' bytes.
    segments: Segments,
    /// The log-time hour pruning last started in.
    pruned_hour: u64,
    /// Whether pruning has more to remove (it removes a few chunks a write until done).
    pruning: bool,
    /// The last `seq` stored: records at or below it (a restarted replica replaying its log)
    /// are already there, so chunks never overlap.
    last_stored: u64,
    /// The error that stopped the trail, if one did (every read then reports it).
    broken: Option<String>,
}

/// Where a chunk's records are: `len` bytes at `offset` of segment `segment` (the log-time hour
/// of its first record), with their CRC-32, and the chunk's last record (so neither pruning
/// nor the head needs the records themselves).
#[derive(Serialize, Deserialize)]
struct Chunk {
    segment: u64,
    offset: u64,
    len: u32,
    crc: u32,
    last_seq: u64,
    last_at: u64,
}

/// The segment files: each chunk's encoded records, appended in `seq` order.
enum Segments {
    /// `DIR/HOUR.chunks`; the file written last is kept open.
    Dir { dir: PathBuf, open: Option<(u64, File, u64)> },
    /// In memory (a temporary trail: tests and the simulation).
    Memory(BTreeMap<u64, Vec<u8>>),
}

impl Segments {
    fn path(dir: &std::path::Path, segment: u64) -> PathBuf {
        dir.join(format!("{segment:012}.chunks"))
    }

    /// Appends `bytes` to `segment`; the offset they start at.
    fn append(&mut self, segment: u64, bytes: &[u8]) -> std::io::Result<u64> {
        match self {
            Segments::Memory(files) => {
                let file = files.entry(segment).or_default();
                let offset = file.len() as u64;
                file.extend_from_slice(bytes);
                Ok(offset)
            }
            Segments::Dir { dir, open } => {
                if open.as_ref().is_none_or(|(s, _, _)| *s != segment) {
                    let file = std::fs::OpenOptions::new()
                        .read(true)
                        .append(true)
                        .create(true)
                        .open(Self::path(dir, segment))?;
                    let len = file.metadata()?.len();
                    *open = Some((segment, file, len));
                }
                let Some((_, file, len)) = open else { unreachable!("opened above") };
                // Not synced, as sled is not: see the module's comment.
                file.write_all(bytes)?;
                let offset = *len;
                *len += bytes.len() as u64;
                Ok(offset)
            }
        }
    }

    /// The bytes `chunk` names, if they are all there.
    fn read(&self, chunk: &Chunk) -> std::io::Result<Option<Vec<u8>>> {
        let len = usize::try_from(chunk.len).unwrap_or(usize::MAX);
        match self {
            Segments::Memory(files) => {
                let file = files.get(&chunk.segment).map_or(&[][..], Vec::as_slice);
                let start = usize::try_from(chunk.offset).unwrap_or(usize::MAX);
                Ok(file.get(start..start.saturating_add(len)).map(<[u8]>::to_vec))
            }
            Segments::Dir { dir, open } => {
                let mut bytes = vec![0; len];
                let read = match open {
                    Some((s, file, _)) if *s == chunk.segment => {
                        file.read_exact_at(&mut bytes, chunk.offset)
                    }
                    _ => match File::open(Self::path(dir, chunk.segment)) {
                        Ok(file) => file.read_exact_at(&mut bytes, chunk.offset),
                        Err(e) => Err(e),
                    },
                };
                match read {
                    Ok(()) => Ok(Some(bytes)),
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::NotFound
                        ) =>
                    {
                        Ok(None)
                    }
                    Err(e) => Err(e),
                }
            }
        }
    }

    /// Removes every segment before `first` (the oldest a kept chunk is in).
    fn remove_before(&mut self, first: u64) -> std::io::Result<()> {
        match self {
            Segments::Memory(files) => {
                *files = files.split_off(&first);
                Ok(())
            }
            Segments::Dir { dir, open } => {
                if open.as_ref().is_some_and(|(s, _, _)| *s < first) {
                    *open = None;
                }
                for entry in std::fs::read_dir(&*dir)? {
                    let name = entry?.file_name();
                    let segment = name.to_str().and_then(|n| n.strip_suffix(".chunks"));
                    if segment.and_then(|n| n.parse::<u64>().ok()).is_some_and(|s| s < first) {
                        std::fs::remove_file(dir.join(name))?;
                    }
                }
                Ok(())
            }
        }
    }
}

/// Opens sled, waiting up to `LOCK_WAIT` for the writer of a replica stopped in this process
/// (a test's restart) to let go of the directory: it ends once its last handle is gone,
/// after the records still queued for it.
fn open_waiting(config: &sled::Config) -> std::io::Result<sled::Db> {
    let deadline = std::time::Instant::now() + LOCK_WAIT;
    loop {
        match config.open() {
            Ok(db) => return Ok(db),
            // sled reports a held lock as an `Other` error naming it.
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => return Err(std::io::Error::other(e)),
        }
    }
}

fn seq_key(seq: u64) -> [u8; 8] {
    seq.to_be_bytes()
}

fn tenant_key(tenant: &str, seq: u64) -> Vec<u8> {
    let name = tenant.as_bytes();
    let mut key = Vec::with_capacity(1 + name.len() + 8);
    key.push(u8::try_from(name.len()).unwrap_or(u8::MAX));
    key.extend_from_slice(name);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

fn seq_of(key: &[u8]) -> u64 {
    let tail: [u8; 8] = key[key.len().saturating_sub(8)..].try_into().unwrap_or([0; 8]);
    u64::from_be_bytes(tail)
}

impl AuditStore {
    /// Opens the trail in `location`, keeping what an earlier run of the replica left there
    /// (a temporary one for `Temporary` and `Simulated`, the latter written on the caller's
    /// thread).
    pub fn open(location: &UsageLocation) -> std::io::Result<AuditStore> {
        // sled's own flusher syncs its file every so often, next to the Raft log's syncs on the
        // same disk (it raised the write p99 by half): it writes as its buffers fill instead.
        let config = sled::Config::new().cache_capacity(8 << 20).flush_every_ms(None);
        let config = match location {
            UsageLocation::Dir(dir) => config.path(dir),
            UsageLocation::Temporary | UsageLocation::Simulated => config.temporary(true),
        };
        let db = open_waiting(&config)?;
        let segments = match location {
            UsageLocation::Dir(dir) => {
                let dir = dir.join("chunks");
                std::fs::create_dir_all(&dir)?;
                Segments::Dir { dir, open: None }
            }
            UsageLocation::Temporary | UsageLocation::Simulated => {
                Segments::Memory(BTreeMap::new())
            }
        };
        let mut writer = Writer {
            chunks: db.open_tree("chunks").map_err(std::io::Error::other)?,
            tenants: db.open_tree("tenants").map_err(std::io::Error::other)?,
            segments,
            pruned_hour: 0,
            pruning: false,
            last_stored: 0,
            broken: None,
        };
        // A trail an earlier build kept whole in sled moves to the segment files (looked up
        // first: opening a tree creates it).
        if db.tree_names().iter().any(|name| name == b"records") {
            let old = db.open_tree("records").map_err(std::io::Error::other)?;
            for row in old.iter() {
                let (_, value) = row.map_err(std::io::Error::other)?;
                let records = Writer::decode(&value).map_err(std::io::Error::other)?;
                writer.store(&records).map_err(std::io::Error::other)?;
            }
            db.drop_tree("records").map_err(std::io::Error::other)?;
        }
        writer.last_stored = writer.last_seq().map_err(std::io::Error::other)?;
        if let UsageLocation::Simulated = location {
            let route = Route::Inline(Arc::new(Mutex::new(writer)));
            return Ok(AuditStore { route, pending: Arc::default() });
        }
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new().name("berth-audit".into()).spawn(move || {
            while let Ok(message) = rx.recv() {
                writer.handle(message);
            }
        })?;
        Ok(AuditStore { route: Route::Thread(tx), pending: Arc::default() })
    }

    fn send(&self, message: Message) {
        match &self.route {
            Route::Thread(tx) => drop(tx.send(message)),
            Route::Inline(w) => w.lock().unwrap_or_else(|p| p.into_inner()).handle(message),
        }
    }

    /// Queues an applied batch's records (call under the state machine's write lock, so they
    /// arrive in order).
    pub fn record(&self, records: Vec<AuditRecord>) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        pending.extend(records);
        if pending.len() >= CHUNK_RECORDS {
            let chunk = std::mem::take(&mut *pending);
            self.send(Message::Records(chunk));
        }
    }

    /// Sends the records still gathering to the writer (under the lock, so a read sent after
    /// this is answered after them). A snapshot does this before it is taken: the log before
    /// it will be gone, so its records must not wait in memory.
    pub fn flush(&self) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        if !pending.is_empty() {
            let chunk = std::mem::take(&mut *pending);
            self.send(Message::Records(chunk));
        }
    }

    /// Asks for a page, after every record queued so far: call under the state machine's
    /// read lock, await after releasing it.
    pub fn read(&self, query: AuditQuery) -> oneshot::Receiver<Result<AuditPage, String>> {
        // Under the lock: a concurrent read cannot overtake the records this one sends.
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        if !pending.is_empty() {
            let chunk = std::mem::take(&mut *pending);
            self.send(Message::Records(chunk));
        }
        let (reply, answer) = oneshot::channel();
        self.send(Message::Read(query, reply));
        answer
    }
}

impl Writer {
    fn handle(&mut self, message: Message) {
        match message {
            Message::Records(records) => {
                if let Err(e) = self.write(records) {
                    tracing::error!(error = %e, "the audit trail stopped recording");
                    self.broken.get_or_insert(e);
                }
            }
            Message::Read(query, reply) => {
                let page = match &self.broken {
                    Some(e) => Err(format!("the audit trail stopped recording: {e}")),
                    None => self.page(&query),
                };
                drop(reply.send(page));
            }
        }
    }

    fn write(&mut self, mut records: Vec<AuditRecord>) -> Result<(), String> {
        records.retain(|r| r.seq > self.last_stored);
        let Some(last_at) = records.last().map(|r| r.at.0) else { return Ok(()) };
        if self.broken.is_some() {
            return Ok(());
        }
        self.store(&records)?;
        if last_at / HOUR_MS > self.pruned_hour {
            self.pruned_hour = last_at / HOUR_MS;
            self.pruning = true;
        }
        if self.pruning {
            self.pruning = self.prune(last_at.saturating_sub(AUDIT_RETENTION_MS))?;
        }
        Ok(())
    }

    /// Appends `records` (in order, after every record stored) as one chunk and indexes it.
    fn store(&mut self, records: &[AuditRecord]) -> Result<(), String> {
        let (Some(first), Some(last)) = (records.first(), records.last()) else { return Ok(()) };
        let tenants: std::collections::BTreeSet<&str> =
            records.iter().map(|r| r.tenant.as_str()).filter(|t| !t.is_empty()).collect();
        let index = tenants.into_iter().map(|t| (tenant_key(t, first.seq), Some(&[][..])));
        let bytes = codec::encode(&records).map_err(|e| e.to_string())?;
        let segment = first.at.0 / HOUR_MS;
        let offset = self.segments.append(segment, &bytes).map_err(|e| e.to_string())?;
        let chunk = Chunk {
            segment,
            offset,
            len: u32::try_from(bytes.len()).map_err(|_| "a chunk over 4 GiB".to_string())?,
            crc: crc32fast::hash(&bytes),
            last_seq: last.seq,
            last_at: last.at.0,
        };
        let chunk = codec::encode(&chunk).map_err(|e| e.to_string())?;
        self.chunks.insert(seq_key(first.seq), chunk).map_err(|e| e.to_string())?;
        write_in_batches(&self.tenants, index).map_err(|e| e.to_string())?;
        self.last_stored = last.seq;
        Ok(())
    }

    /// The last `seq` stored (0: none).
    fn last_seq(&self) -> Result<u64, String> {
        match self.chunks.iter().next_back().transpose().map_err(|e| e.to_string())? {
            Some((_, v)) => Ok(Self::chunk(&v)?.last_seq),
            None => Ok(0),
        }
    }

    fn decode(bytes: &[u8]) -> Result<Vec<AuditRecord>, String> {
        codec::decode(bytes).map_err(|e| e.to_string())
    }

    fn chunk(bytes: &[u8]) -> Result<Chunk, String> {
        codec::decode(bytes).map_err(|e| format!("an audit chunk's place: {e}"))
    }

    /// The records of a chunk, or none if its bytes did not all reach the disk before a
    /// crash (or were damaged since): a gap in the trail, never a wrong record.
    fn records_of(&self, chunk: &[u8]) -> Result<Vec<AuditRecord>, String> {
        let chunk = Self::chunk(chunk)?;
        let bytes = self.segments.read(&chunk).map_err(|e| e.to_string())?;
        match bytes {
            Some(bytes) if crc32fast::hash(&bytes) == chunk.crc => Self::decode(&bytes),
            _ => {
                tracing::warn!(
                    segment = chunk.segment,
                    offset = chunk.offset,
                    "an audit chunk is missing or damaged; its records are skipped"
                );
                Ok(Vec::new())
            }
        }
    }

    /// Removes up to `PRUNE_PER_WRITE` chunks whose every record is older than `cutoff` (log
    /// time), oldest first; whether there may be more.
    fn prune(&mut self, cutoff: u64) -> Result<bool, String> {
        let mut pruned = Vec::new();
        let mut index = Vec::new();
        let mut more = false;
        let mut kept = None;
        for (n, row) in self.chunks.iter().enumerate() {
            let (key, value) = row.map_err(|e| e.to_string())?;
            let chunk = Self::chunk(&value)?;
            if chunk.last_at >= cutoff {
                kept = Some(chunk.segment);
                break;
            }
            if n == PRUNE_PER_WRITE {
                more = true;
                break;
            }
            let first = seq_of(&key);
            for r in self.records_of(&value)?.iter().filter(|r| !r.tenant.is_empty()) {
                index.push((tenant_key(&r.tenant, first), None::<&[u8]>));
            }
            pruned.push((key, None::<&[u8]>));
        }
        write_in_batches(&self.chunks, pruned).map_err(|e| e.to_string())?;
        write_in_batches(&self.tenants, index).map_err(|e| e.to_string())?;
        if let Some(segment) = kept {
            self.segments.remove_before(segment).map_err(|e| e.to_string())?;
        }
        Ok(more)
    }

    /// The key of the batch holding `seq` (or the first after it).
    fn batch_of(&self, seq: u64) -> Result<u64, String> {
        let before = self.chunks.range(..=seq_key(seq)).next_back();
        Ok(before.transpose().map_err(|e| e.to_string())?.map_or(seq, |(k, _)| seq_of(&k)))
    }

    fn page(&self, q: &AuditQuery) -> Result<AuditPage, String> {
        let first_seq = match self.chunks.iter().next().transpose().map_err(|e| e.to_string())? {
            Some((k, _)) => seq_of(&k),
            None => 0,
        };
        let last_seq = self.last_stored;
        let limit = q.limit.clamp(1, AUDIT_PAGE_MAX);
        let start = q.after_seq.saturating_add(1);
        let from = self.batch_of(start)?;
        // Chunks never overlap (`last_stored`); each seq is taken once, in order, all the same.
        let mut next = start;
        let mut records = Vec::new();
        let mut take = |batch: Vec<AuditRecord>, records: &mut Vec<AuditRecord>| {
            for r in batch {
                if r.seq < next {
                    continue;
                }
                next = r.seq.saturating_add(1);
                let tenant_ok = q.tenant.as_ref().is_none_or(|t| *t == r.tenant);
                if tenant_ok && r.at.0 >= q.since_ms {
                    records.push(r);
                    if records.len() == limit {
                        return true;
                    }
                }
            }
            false
        };
        match &q.tenant {
            Some(tenant) => {
                let keys = tenant_key(tenant, from)..=tenant_key(tenant, u64::MAX);
                for row in self.tenants.range(keys) {
                    let (key, _) = row.map_err(|e| e.to_string())?;
                    // A batch pruned after its index entry was read is skipped.
                    let Some(value) =
                        self.chunks.get(seq_key(seq_of(&key))).map_err(|e| e.to_string())?
                    else {
                        continue;
                    };
                    if take(self.records_of(&value)?, &mut records) {
                        break;
                    }
                }
            }
            None => {
                for row in self.chunks.range(seq_key(from)..) {
                    let (_, value) = row.map_err(|e| e.to_string())?;
                    if take(self.records_of(&value)?, &mut records) {
                        break;
                    }
                }
            }
        }
        Ok(AuditPage { records, first_seq, last_seq })
    }
}
