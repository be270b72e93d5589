//! The Raft log store (`RaftLogStorage`, openraft storage-v2), on file or in memory.
//!
//! The live log (entries by index, and the vote, commit and purge marks) is kept in memory,
//! where reads find it. On file, every change is also a record in a write-ahead file
//! (`<dir>/wal`, replayed on open). The vote is synced before `save_vote` returns, appended
//! entries before the append callback fires, and `last_purged` before anything is deleted.
//! Both backends share this code and pass openraft's storage conformance suite.
//!
//! On file, `append` updates memory and returns at once; one writer thread writes the records
//! and syncs them (`fdatasync`), then fires the callbacks. The Raft core keeps replicating
//! while the leader's own entries sync, and one sync covers every append queued before it.
//! The file is grown in preallocated runs of zeros, so an append overwrites blocks that exist
//! and its sync has no size or allocation to persist; zeros end the records. A torn record
//! at the end (a crash mid-write, never acknowledged) is zeroed out on open; a bad record with
//! data after it is damage, and the log refuses to open rather than drop what follows (see
//! `replay`). A failed write or sync fails every later one, and openraft stops on it (which
//! the server turns into a fail-stop, `crate::fatal`). Once the file is mostly entries already
//! purged, it is rewritten with only the live log (new file, sync, rename, sync the directory).
//!
//! In memory, writes are durable at once by default. With a flush delay (the simulation),
//! the memory log keeps what was written apart from what was flushed, like a disk: a flusher
//! task makes everything written durable `flush_delay` after a sync or append asks for it, and
//! [`MemLog::crash`] drops what was not flushed (entries, vote, purge and commit marks alike).

// openraft's traits return its (large) `StorageError`; helpers return the same type.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::File;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::{mpsc, Arc, Mutex};

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, LogState, OptionalSend, RaftLogReader};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::oneshot;

use crate::codec;
use crate::raft::types::{LogEntry, LogId, StorageError, StorageIOError, TypeConfig, Vote};

const VOTE: &str = "vote";
const LAST_PURGED: &str = "last_purged";
const COMMITTED: &str = "committed";

/// The in-memory log (for tests and simulation): shared, so a "restarted" replica can reopen
/// what its predecessor wrote.
#[derive(Debug, Default)]
pub struct MemLog {
    /// Everything written: what reads see.
    logs: BTreeMap<u64, Vec<u8>>,
    meta: BTreeMap<&'static str, Vec<u8>>,
    /// With a flush delay, what was last flushed (what survives a crash).
    durable: Option<Durable>,
    flush_delay: std::time::Duration,
}

#[derive(Clone, Debug, Default)]
struct Durable {
    logs: BTreeMap<u64, Vec<u8>>,
    meta: BTreeMap<&'static str, Vec<u8>>,
}

impl MemLog {
    /// A memory log whose writes become durable only when flushed, `delay` after a sync or an
    /// append asks for it (on tokio time; the flusher runs on the runtime that uses the log).
    pub fn with_flush_delay(delay: std::time::Duration) -> MemLog {
        MemLog { durable: Some(Durable::default()), flush_delay: delay, ..MemLog::default() }
    }

    /// Makes everything written so far durable.
    fn flush(&mut self) {
        if let Some(durable) = &mut self.durable {
            durable.logs.clone_from(&self.logs);
            durable.meta.clone_from(&self.meta);
        }
    }

    /// A crash: whatever was written but not flushed is gone. Call before reopening.
    pub fn crash(&mut self) {
        if let Some(durable) = &self.durable {
            self.logs.clone_from(&durable.logs);
            self.meta.clone_from(&durable.meta);
        }
    }

    /// Whether anything written is not yet durable.
    pub fn has_pending(&self) -> bool {
        self.durable.as_ref().is_some_and(|d| d.logs != self.logs || d.meta != self.meta)
    }

    /// The encoded entry at `index` as written (durable or not): for checks that read the
    /// log from outside (the simulation compares committed entries across replicas).
    pub fn entry(&self, index: u64) -> Option<&[u8]> {
        self.logs.get(&index).map(Vec::as_slice)
    }

    /// The encoded entry at `index` as last flushed (what a crash would keep).
    pub fn durable_entry(&self, index: u64) -> Option<&[u8]> {
        let logs = self.durable.as_ref().map_or(&self.logs, |d| &d.logs);
        logs.get(&index).map(Vec::as_slice)
    }

    /// The index up to which the log is durably purged (those entries are in a snapshot).
    pub fn durable_purged_index(&self) -> Option<u64> {
        let meta = self.durable.as_ref().map_or(&self.meta, |d| &d.meta);
        let bytes = meta.get(LAST_PURGED)?;
        decode::<LogId>(bytes).ok().map(|l| l.index)
    }
}

/// A request to the memory log's flusher.
enum MemFlush {
    Append(LogFlushed<TypeConfig>),
    Sync(oneshot::Sender<()>),
}

/// The memory log's flusher: started on first use, on the runtime of the caller (so it dies
/// with a simulated host). Requests complete in the order they were queued.
#[derive(Default)]
struct MemFlusher {
    queue: std::sync::OnceLock<tokio::sync::mpsc::UnboundedSender<MemFlush>>,
}

impl MemFlusher {
    fn request(&self, log: &Arc<Mutex<MemLog>>, request: MemFlush) -> io::Result<()> {
        if self.queue.get().is_none() {
            let runtime = tokio::runtime::Handle::try_current().map_err(io::Error::other)?;
            let (queue, requests) = tokio::sync::mpsc::unbounded_channel::<MemFlush>();
            let delay = lock(log).flush_delay;
            runtime.spawn(Self::run(log.clone(), delay, requests));
            // Lost a race to another first caller: that one's flusher serves, this one stops.
            let _ = self.queue.set(queue);
        }
        let queue = self.queue.get().ok_or_else(|| io::Error::other("no memory log flusher"))?;
        queue.send(request).map_err(|_| io::Error::other("memory log flusher stopped"))
    }

    async fn run(
        log: Arc<Mutex<MemLog>>,
        delay: std::time::Duration,
        mut requests: tokio::sync::mpsc::UnboundedReceiver<MemFlush>,
    ) {
        while let Some(first) = requests.recv().await {
            tokio::time::sleep(delay).await;
            let mut waiting = vec![first];
            while let Ok(next) = requests.try_recv() {
                waiting.push(next);
            }
            lock(&log).flush();
            for request in waiting {
                match request {
                    MemFlush::Append(callback) => callback.log_io_completed(Ok(())),
                    MemFlush::Sync(reply) => {
                        let _ = reply.send(());
                    }
                }
            }
        }
    }
}

/// One change to the log, as the write-ahead file records it. Replaying the records in order
/// rebuilds the log; each one sets or removes keys, so a record applied twice in a row changes
/// nothing more.
#[derive(Serialize, serde::Deserialize)]
enum Record {
    /// Entries (index, encoded entry), written over whatever those indexes held.
    Entries(Vec<(u64, Vec<u8>)>),
    /// A vote, commit or purge mark.
    Meta(String, Vec<u8>),
    /// Removes every entry at or after the index (truncate).
    RemoveFrom(u64),
    /// Removes every entry at or before the index (purge).
    RemoveThrough(u64),
}

impl Record {
    fn apply(self, log: &mut MemLog) -> Result<(), String> {
        match self {
            Record::Entries(entries) => log.logs.extend(entries),
            Record::Meta(key, value) => {
                let key = META_KEYS
                    .into_iter()
                    .find(|k| *k == key)
                    .ok_or_else(|| format!("unknown log meta key {key:?}"))?;
                log.meta.insert(key, value);
            }
            Record::RemoveFrom(index) => {
                log.logs.split_off(&index);
            }
            Record::RemoveThrough(index) => {
                log.logs = match index.checked_add(1) {
                    Some(next) => log.logs.split_off(&next),
                    None => BTreeMap::new(),
                };
            }
        }
        Ok(())
    }

    /// Appends `[length u32 LE][crc32 of the payload u32 LE][payload]` to `out`, encoding
    /// the payload in place (on failure `out` is left as it was).
    fn frame_into(&self, out: &mut Vec<u8>) -> Result<(), StorageError> {
        let start = out.len();
        out.extend_from_slice(&[0; FRAME_HEADER]);
        let encoded = codec::encode_into(self, out)
            .map_err(write_err)
            .and_then(|n| u32::try_from(n).map_err(write_err));
        let len = match encoded {
            Ok(len) => len,
            Err(e) => {
                out.truncate(start);
                return Err(e);
            }
        };
        let crc = crc32fast::hash(&out[start + FRAME_HEADER..]);
        out[start..start + 4].copy_from_slice(&len.to_le_bytes());
        out[start + 4..start + FRAME_HEADER].copy_from_slice(&crc.to_le_bytes());
        Ok(())
    }
}

const META_KEYS: [&str; 3] = [VOTE, LAST_PURGED, COMMITTED];
const FRAME_HEADER: usize = 8;
/// The write-ahead file, and its replacement while being compacted.
const WAL_FILE: &str = "wal";
const WAL_TMP: &str = "wal.tmp";
/// The file is rewritten with only the live log once it grows past this and past twice what
/// the last rewrite wrote (entries behind a snapshot are purged, but stay in the file until then).
const COMPACT_AT_BYTES: u64 = 64 << 20;

/// How the log file is kept (tests shrink both sizes).
#[derive(Clone, Copy, Debug)]
pub struct FileLogOptions {
    /// Rewrite the file with only the live log once it passes this (and twice its last rewrite).
    pub compact_at_bytes: u64,
    /// The file is grown by this many bytes of zeros at a time, synced once. Appends then
    /// overwrite blocks that already exist, so their `fdatasync` has no file size or block
    /// allocation to persist (measured here: 0.21 ms p50 against 0.37 ms for a true append).
    pub preallocate_bytes: u64,
}

impl Default for FileLogOptions {
    fn default() -> Self {
        FileLogOptions { compact_at_bytes: COMPACT_AT_BYTES, preallocate_bytes: 16 << 20 }
    }
}

/// Writes `len` zero bytes at `offset`.
fn write_zeros(file: &File, offset: u64, len: u64) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let zeros = vec![0u8; 1 << 20];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(zeros.len() as u64);
        file.write_all_at(&zeros[..n as usize], offset + done)?;
        done += n;
    }
    Ok(())
}

/// A record that does not read back whole, and why.
#[derive(Debug)]
struct Damage {
    at: usize,
    why: String,
}

/// Reads the records of a write-ahead file into `log`. Returns the length of the valid prefix:
/// what follows it is zeros (the preallocated tail) or a write torn by a crash. Nothing after
/// a torn write was ever acknowledged: every acknowledgement waits for `fdatasync`, and nothing
/// is written after a write until it synced. So a bad record (cut short, or failing its
/// checksum) is a torn write only if nothing but zeros follows it; anything else after it
/// is damage, and refused rather than dropped. A record cut short by the end of the file is
/// torn only if the file ends in it: the writer always leaves zeros after its last record,
/// so a length that runs past them was itself damaged. A record that passes its checksum but
/// does not decode was never torn either. (A torn write whose later pages reached the disk
/// before its earlier ones is refused too: it cannot be told apart from damage.)
fn replay(bytes: &[u8], log: &mut MemLog) -> Result<usize, Damage> {
    // Everything from here on is zero.
    let data_end = bytes.iter().rposition(|b| *b != 0).map_or(0, |last| last + 1);
    let mut at = 0;
    while at < data_end {
        let header = bytes.get(at..at + FRAME_HEADER);
        let word = |from: usize| {
            header.map(|h| u32::from_le_bytes([h[from], h[from + 1], h[from + 2], h[from + 3]]))
        };
        let (len, crc) = match (word(0), word(4)) {
            (Some(len), Some(crc)) => (len as usize, crc),
            _ => return torn_or_damaged(bytes, data_end, at, usize::MAX, "header cut short"),
        };
        let end = at + FRAME_HEADER + len;
        if len == 0 {
            return torn_or_damaged(bytes, data_end, at, end, "zero length");
        }
        let Some(payload) = bytes.get(at + FRAME_HEADER..end) else {
            return torn_or_damaged(bytes, data_end, at, end, "cut short");
        };
        if crc32fast::hash(payload) != crc {
            return torn_or_damaged(bytes, data_end, at, end, "checksum mismatch");
        }
        let damaged = |why: String| Damage { at, why };
        let record: Record = codec::decode(payload)
            .map_err(|e| damaged(format!("passes its checksum but does not decode: {e}")))?;
        record.apply(log).map_err(damaged)?;
        at = end;
    }
    Ok(at)
}

/// The bad record at `at`, ending at `end` by its header: a torn write to drop (`Ok`, the
/// valid prefix) or damage to refuse (see `replay`).
fn torn_or_damaged(
    bytes: &[u8],
    data_end: usize,
    at: usize,
    end: usize,
    why: &str,
) -> Result<usize, Damage> {
    let cut_short = end > bytes.len();
    let torn = if cut_short { data_end == bytes.len() } else { end >= data_end };
    if torn {
        return Ok(at);
    }
    let why = match cut_short {
        true => format!("{why}, and its length runs past the zeros that end the file"),
        false => format!("{why}, and {} bytes of data follow it", data_end - end),
    };
    Err(Damage { at, why })
}

/// What the writer thread is asked to do: write framed records, sync, and say so.
struct WriteRequest {
    frames: Vec<u8>,
    ack: Ack,
}

/// Who is told once a write is durable.
enum Ack {
    Append(LogFlushed<TypeConfig>),
    Sync(oneshot::Sender<io::Result<()>>),
}

impl Ack {
    fn send(self, outcome: &Result<(), String>) {
        let outcome = outcome.clone().map_err(io::Error::other);
        match self {
            Ack::Append(callback) => callback.log_io_completed(outcome),
            Ack::Sync(reply) => {
                let _ = reply.send(outcome);
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The log on disk: the whole live log in memory (what reads see) and a write-ahead file that
/// makes it durable. One thread writes the file: it takes every request queued, writes them
/// with one `write`, runs one `fdatasync` for all that need it, and only then acknowledges
/// them, in order. (sled 0.34 did this before; its flush woke all seven of its IO threads
/// for every append, and cost a `sync_file_range` on top of the `fdatasync`.)
struct FileLog {
    mem: Arc<Mutex<MemLog>>,
    /// Records that need no sync of their own (commit marks), held back to go out with the
    /// next write that syncs, so they cost no extra write or wake-up. Locked inside `mem`.
    held: Arc<Mutex<Vec<u8>>>,
    queue: Option<mpsc::Sender<WriteRequest>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

struct Writer {
    dir: std::path::PathBuf,
    file: File,
    /// Where the records end; the file is zeros from here to `allocated`.
    len: u64,
    allocated: u64,
    preallocate_bytes: u64,
    /// Rewrite once the records pass this ...
    compact_at_bytes: u64,
    /// ... and twice the size of the last rewrite.
    compact_at: u64,
    mem: Arc<Mutex<MemLog>>,
    held: Arc<Mutex<Vec<u8>>>,
    requests: mpsc::Receiver<WriteRequest>,
    /// After a failed write the file's tail is unknown: every later request fails too.
    failed: Option<String>,
}

impl FileLog {
    fn open(dir: &Path, options: FileLogOptions) -> io::Result<FileLog> {
        std::fs::create_dir_all(dir)?;
        if dir.join("db").exists() && !dir.join(WAL_FILE).exists() {
            return Err(io::Error::other(format!(
                "{} holds a Raft log in the sled format of earlier Berth versions, which this \
                 version does not read: remove this replica's data directory and add the \
                 replica again (it catches up from the others)",
                dir.display()
            )));
        }
        // A rewrite that did not reach its rename: the old file is still the log.
        let _ = std::fs::remove_file(dir.join(WAL_TMP));
        let path = dir.join(WAL_FILE);
        let created = !path.exists();
        let mut file =
            File::options().read(true).write(true).create(true).truncate(false).open(&path)?;
        if created {
            File::open(dir)?.sync_all()?;
        }
        let mut bytes = Vec::new();
        io::Read::read_to_end(&mut file, &mut bytes)?;
        let mut mem = MemLog::default();
        let valid = replay(&bytes, &mut mem).map_err(|Damage { at, why }| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{}: the Raft log is damaged at byte {at} ({why}); this is not a write torn \
                     by a crash, so nothing after it is dropped and the file is left as it is. \
                     Replace this replica: see \"A replica's log is damaged\" in \
                     docs/runbook.md",
                    path.display()
                ),
            )
        })?;
        if bytes[valid..].iter().any(|b| *b != 0) {
            // Zero what a torn write left, before anything is written over part of it: a
            // later, shorter record could otherwise be followed by a stale record of the torn
            // write that still passes its checksum.
            tracing::warn!(
                file = %path.display(),
                kept = valid,
                "the log ends in a torn write (a crash mid-append); dropping it"
            );
            write_zeros(&file, valid as u64, (bytes.len() - valid) as u64)?;
            file.sync_all()?;
        }
        let len = valid as u64;
        let allocated = bytes.len() as u64;
        let mem = Arc::new(Mutex::new(mem));
        let held = Arc::new(Mutex::new(Vec::new()));
        let (queue, requests) = mpsc::channel();
        let writer = Writer {
            dir: dir.to_owned(),
            file,
            len,
            allocated,
            preallocate_bytes: options.preallocate_bytes.max(1),
            compact_at_bytes: options.compact_at_bytes,
            compact_at: options.compact_at_bytes.max(2 * len),
            mem: mem.clone(),
            held: held.clone(),
            requests,
            failed: None,
        };
        let thread = std::thread::Builder::new()
            .name("berth-log-sync".into())
            .spawn(move || writer.run())?;
        Ok(FileLog { mem, held, queue: Some(queue), thread: Some(thread) })
    }

    /// Applies `record` (if any) to the log in memory and queues it for the file, in one
    /// step, so the file holds the changes in the order reads saw them. Without `ack` the
    /// record is held back for the next write that has one.
    fn write(&self, record: Option<Record>, ack: Option<Ack>) -> Result<(), StorageError> {
        let mut mem = lock(&self.mem);
        let mut held = lock(&self.held);
        if let Some(record) = record {
            record.frame_into(&mut held)?;
            record.apply(&mut mem).map_err(write_err)?;
        }
        let Some(ack) = ack else { return Ok(()) };
        let frames = std::mem::take(&mut *held);
        let queue = self.queue.as_ref().ok_or_else(|| write_err("log writer stopped"))?;
        queue.send(WriteRequest { frames, ack }).map_err(|_| write_err("log writer stopped"))
    }
}

impl Drop for FileLog {
    fn drop(&mut self) {
        drop(self.queue.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Writer {
    fn run(mut self) {
        let mut carried = None;
        loop {
            let first = match carried.take() {
                Some(request) => request,
                None => match self.requests.recv() {
                    Ok(request) => request,
                    Err(_) => break,
                },
            };
            let mut batch = vec![first];
            batch.extend(self.requests.try_iter());
            let outcome = self.write(&batch);
            for request in batch {
                request.ack.send(&outcome);
            }
            if self.failed.is_none() && self.len >= self.compact_at {
                match self.compact() {
                    Ok(next) => carried = next,
                    Err(e) => self.failed = Some(format!("rewriting the Raft log failed: {e}")),
                }
            }
        }
    }

    /// Writes the frames of `batch` and syncs them.
    fn write(&mut self, batch: &[WriteRequest]) -> Result<(), String> {
        if let Some(why) = &self.failed {
            return Err(why.clone());
        }
        // One request (the common case) is written as it is; several are joined for one write.
        let joined;
        let bytes = match batch {
            [one] => &one.frames[..],
            _ => {
                joined = batch.iter().map(|r| r.frames.as_slice()).collect::<Vec<_>>().concat();
                &joined[..]
            }
        };
        match self.write_at_end(bytes) {
            Ok(()) => {
                self.len += bytes.len() as u64;
                Ok(())
            }
            Err(e) => {
                let why = format!("writing the Raft log failed: {e}");
                self.failed = Some(why.clone());
                Err(why)
            }
        }
    }

    /// Writes `bytes` where the records end and syncs, growing the file first if needed.
    fn write_at_end(&mut self, bytes: &[u8]) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        let end = self.len + bytes.len() as u64;
        if end > self.allocated {
            let grown = end + self.preallocate_bytes;
            write_zeros(&self.file, self.allocated, grown - self.allocated)?;
            self.file.sync_all()?;
            self.allocated = grown;
        }
        self.file.write_all_at(bytes, self.len)?;
        self.file.sync_data()
    }

    /// Replaces the file with one holding just the live log: write a new file, sync it, rename
    /// it over the old one, sync the directory. Runs only when every queued change is written
    /// (changes are queued under the memory lock, which this holds), so the memory log is
    /// exactly what the file says; otherwise hands back the request it found queued.
    fn compact(&mut self) -> io::Result<Option<WriteRequest>> {
        let mem = lock(&self.mem);
        match self.requests.try_recv() {
            // Not idle: write that first, and try again after it.
            Ok(request) => return Ok(Some(request)),
            Err(mpsc::TryRecvError::Empty) => {}
            Err(mpsc::TryRecvError::Disconnected) => return Ok(None),
        }
        // Held records are already in memory, so in the new file.
        let mut held = lock(&self.held);
        let mut bytes = Vec::new();
        for (key, value) in &mem.meta {
            let record = Record::Meta((*key).to_owned(), value.clone());
            record.frame_into(&mut bytes).map_err(io::Error::other)?;
        }
        let mut entries = mem.logs.iter().peekable();
        while entries.peek().is_some() {
            let chunk = entries.by_ref().take(1024).map(|(i, e)| (*i, e.clone())).collect();
            Record::Entries(chunk).frame_into(&mut bytes).map_err(io::Error::other)?;
        }
        let tmp = self.dir.join(WAL_TMP);
        let mut file = File::create(&tmp)?;
        io::Write::write_all(&mut file, &bytes)?;
        let len = bytes.len() as u64;
        write_zeros(&file, len, self.preallocate_bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, self.dir.join(WAL_FILE))?;
        File::open(&self.dir)?.sync_all()?;
        self.file = File::options().read(true).write(true).open(self.dir.join(WAL_FILE))?;
        self.len = len;
        self.allocated = len + self.preallocate_bytes;
        self.compact_at = self.compact_at_bytes.max(2 * self.len);
        held.clear();
        tracing::debug!(bytes = self.len, entries = mem.logs.len(), "rewrote the Raft log file");
        Ok(None)
    }
}
#[derive(Clone)]
enum Backend {
    File(Arc<FileLog>),
    Memory(Arc<Mutex<MemLog>>, Arc<MemFlusher>),
}

/// A Raft log store; cheap to clone (clones share the same log).
#[derive(Clone)]
pub struct LogStore {
    backend: Backend,
}

fn io_err(subject: ErrorSubject<u64>, verb: ErrorVerb, e: impl std::fmt::Display) -> StorageError {
    StorageIOError::new(subject, verb, openraft::AnyError::error(e.to_string())).into()
}

fn write_err(e: impl std::fmt::Display) -> StorageError {
    io_err(ErrorSubject::Logs, ErrorVerb::Write, e)
}

fn read_err(e: impl std::fmt::Display) -> StorageError {
    io_err(ErrorSubject::Logs, ErrorVerb::Read, e)
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StorageError> {
    codec::encode(value).map_err(write_err)
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, StorageError> {
    codec::decode(bytes).map_err(read_err)
}

fn key_range<R: RangeBounds<u64>>(range: &R) -> (Bound<u64>, Bound<u64>) {
    (range.start_bound().cloned(), range.end_bound().cloned())
}

impl LogStore {
    /// Opens (or creates) the log in `dir` (its write-ahead file is `<dir>/wal`).
    pub fn open_dir(dir: &Path) -> Result<LogStore, std::io::Error> {
        Self::open_dir_with(dir, FileLogOptions::default())
    }

    /// As `open_dir`, with the file's compaction and preallocation sizes.
    pub fn open_dir_with(dir: &Path, options: FileLogOptions) -> Result<LogStore, std::io::Error> {
        Ok(LogStore { backend: Backend::File(Arc::new(FileLog::open(dir, options)?)) })
    }

    /// A log in memory; pass the same `Arc` again to reopen it after a simulated restart.
    pub fn memory(log: Arc<Mutex<MemLog>>) -> LogStore {
        LogStore { backend: Backend::Memory(log, Arc::default()) }
    }

    /// With a flush delay, whether writes wait for the flusher.
    fn delayed(log: &Arc<Mutex<MemLog>>) -> bool {
        lock(log).durable.is_some()
    }

    /// The log as reads see it.
    fn log(&self) -> std::sync::MutexGuard<'_, MemLog> {
        match &self.backend {
            Backend::File(f) => lock(&f.mem),
            Backend::Memory(m, _) => lock(m),
        }
    }

    fn get_meta<T: DeserializeOwned>(&self, key: &'static str) -> Result<Option<T>, StorageError> {
        let bytes = self.log().meta.get(key).cloned();
        bytes.map(|b| decode(&b)).transpose()
    }

    /// Records a change. On file it is durable with the next sync; an append's callback
    /// fires once it is.
    fn write(
        &self,
        record: Record,
        append: Option<LogFlushed<TypeConfig>>,
    ) -> Result<(), StorageError> {
        match &self.backend {
            Backend::File(f) => f.write(Some(record), append.map(Ack::Append)),
            Backend::Memory(m, flusher) => {
                record.apply(&mut lock(m)).map_err(write_err)?;
                match append {
                    Some(callback) if Self::delayed(m) => {
                        flusher.request(m, MemFlush::Append(callback)).map_err(write_err)
                    }
                    Some(callback) => {
                        callback.log_io_completed(Ok(()));
                        Ok(())
                    }
                    None => Ok(()),
                }
            }
        }
    }

    fn put_meta<T: Serialize>(&self, key: &'static str, value: &T) -> Result<(), StorageError> {
        self.write(Record::Meta(key.to_owned(), encode(value)?), None)
    }

    fn read_range(&self, range: (Bound<u64>, Bound<u64>)) -> Result<Vec<LogEntry>, StorageError> {
        self.log().logs.range(range).map(|(_, v)| decode(v)).collect()
    }

    fn last_entry(&self) -> Result<Option<LogEntry>, StorageError> {
        self.log().logs.values().next_back().map(|v| decode(v)).transpose()
    }

    /// Makes everything written so far durable (on file: one `fdatasync` after the writes).
    async fn sync(&self) -> io::Result<()> {
        match &self.backend {
            Backend::File(f) => {
                let (reply, synced) = oneshot::channel();
                f.write(None, Some(Ack::Sync(reply))).map_err(io::Error::other)?;
                synced.await.map_err(|_| io::Error::other("log writer stopped"))?
            }
            Backend::Memory(m, flusher) if Self::delayed(m) => {
                let (reply, synced) = oneshot::channel();
                flusher.request(m, MemFlush::Sync(reply))?;
                synced.await.map_err(|_| io::Error::other("memory log flusher stopped"))
            }
            Backend::Memory(..) => Ok(()),
        }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<LogEntry>, StorageError> {
        self.read_range(key_range(&range))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged_log_id: Option<LogId> = self.get_meta(LAST_PURGED)?;
        let last_log_id = match self.last_entry()? {
            Some(entry) => Some(entry.log_id),
            None => last_purged_log_id,
        };
        Ok(LogState { last_purged_log_id, last_log_id })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        self.put_meta(VOTE, vote)?;
        self.sync().await.map_err(|e| io_err(ErrorSubject::Vote, ErrorVerb::Write, e))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.get_meta(VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Not synced on its own: a stale commit index only means replaying less on restart.
        self.put_meta(COMMITTED, &committed)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.get_meta::<Option<LogId>>(COMMITTED)?.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = LogEntry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut encoded = Vec::new();
        for entry in entries {
            encoded.push((entry.log_id.index, encode(&entry)?));
        }
        // Readable at once; acknowledged (the callback) only once durable.
        self.write(Record::Entries(encoded), Some(callback))
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.write(Record::RemoveFrom(log_id.index), None)?;
        self.sync().await.map_err(write_err)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // Record how far the log is purged, durably, before deleting anything.
        self.put_meta(LAST_PURGED, &log_id)?;
        self.sync().await.map_err(write_err)?;
        self.write(Record::RemoveThrough(log_id.index), None)?;
        self.sync().await.map_err(write_err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{CommittedLeaderId, Vote};

    fn delayed() -> (Arc<Mutex<MemLog>>, LogStore) {
        let log =
            Arc::new(Mutex::new(MemLog::with_flush_delay(std::time::Duration::from_millis(1))));
        (log.clone(), LogStore::memory(log))
    }

    /// A vote is durable once `save_vote` returns; a commit mark written after it is not, and
    /// a crash takes exactly that back.
    #[tokio::test]
    async fn a_crash_loses_what_was_not_flushed() {
        let (log, mut store) = delayed();
        let vote = Vote::new(3, 1);
        store.save_vote(&vote).await.expect("saves");
        assert!(!lock(&log).has_pending());
        let committed = Some(LogId::new(CommittedLeaderId::new(3, 1), 7));
        store.save_committed(committed).await.expect("saves");
        assert!(lock(&log).has_pending(), "a commit mark alone is not flushed");
        lock(&log).crash();
        let mut reopened = LogStore::memory(log.clone());
        assert_eq!(reopened.read_vote().await.expect("reads"), Some(vote));
        assert_eq!(reopened.read_committed().await.expect("reads"), None, "not flushed, lost");
    }

    /// Entries written but not flushed are readable, and gone after a crash; flushed ones stay.
    #[tokio::test]
    async fn unflushed_entries_are_readable_until_a_crash() {
        let (log, mut store) = delayed();
        lock(&log).logs.insert(1, vec![1]);
        store.save_vote(&Vote::new(1, 1)).await.expect("flushes everything written before");
        lock(&log).logs.insert(2, vec![2]);
        assert!(lock(&log).entry(2).is_some(), "readable before it is flushed");
        assert!(lock(&log).durable_entry(2).is_none());
        lock(&log).crash();
        assert_eq!(lock(&log).entry(1), Some(&[1u8][..]));
        assert_eq!(lock(&log).entry(2), None, "not flushed, lost");
    }

    /// Without a flush delay every write is durable at once (tests and `berth up`).
    #[tokio::test]
    async fn an_undelayed_memory_log_loses_nothing() {
        let log: Arc<Mutex<MemLog>> = Arc::default();
        let mut store = LogStore::memory(log.clone());
        store.save_committed(Some(LogId::new(CommittedLeaderId::new(1, 1), 2))).await.expect("ok");
        assert!(!lock(&log).has_pending());
        lock(&log).crash();
        assert!(store.read_committed().await.expect("reads").is_some());
    }
}
