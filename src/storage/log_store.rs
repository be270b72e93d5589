//! The Raft log store (`RaftLogStorage`, openraft storage-v2), on sled or in memory.
//!
//! Keys are big-endian log indexes, so sled's byte order is log order. The vote is synced
//! before `save_vote` returns, appended entries before the append callback fires, and
//! `last_purged` before anything is deleted. Both backends share this code and pass
//! openraft's storage conformance suite.
//!
//! On sled, `append` writes and returns at once; a flusher thread makes the entries durable
//! and then fires the callback. The Raft core keeps replicating while the leader's own
//! entries sync, and one flush covers every append queued before it began.
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
            let delay = LogStore::mem(log).flush_delay;
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
            LogStore::mem(&log).flush();
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

struct SledLog {
    logs: sled::Tree,
    meta: sled::Tree,
    flusher: Flusher,
}

/// Waits for durability of everything written before it was queued.
enum FlushRequest {
    Append(LogFlushed<TypeConfig>),
    Sync(oneshot::Sender<io::Result<()>>),
}

/// The thread that syncs sled: flush, then `fdatasync` of sled's data file (sled's own flush
/// ends in `sync_file_range`, which neither empties the device cache nor persists the file
/// size). Requests complete in the order they were queued. Dropping it drains the queue and
/// joins the thread, so sled's lock is released when the store is gone.
struct Flusher {
    queue: Option<mpsc::Sender<FlushRequest>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Flusher {
    fn start(db: sled::Db, data_file: File) -> io::Result<Flusher> {
        let (queue, requests) = mpsc::channel::<FlushRequest>();
        let thread =
            std::thread::Builder::new().name("berth-log-sync".into()).spawn(move || {
                while let Ok(first) = requests.recv() {
                    let mut waiting = vec![first];
                    waiting.extend(requests.try_iter());
                    let synced =
                        db.flush().map_err(io::Error::other).and_then(|_| data_file.sync_data());
                    for request in waiting {
                        let outcome = match &synced {
                            Ok(()) => Ok(()),
                            Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
                        };
                        match request {
                            FlushRequest::Append(callback) => callback.log_io_completed(outcome),
                            FlushRequest::Sync(reply) => {
                                let _ = reply.send(outcome);
                            }
                        }
                    }
                }
            })?;
        Ok(Flusher { queue: Some(queue), thread: Some(thread) })
    }

    fn request(&self, request: FlushRequest) -> io::Result<()> {
        let stopped = || io::Error::other("log sync thread stopped");
        self.queue.as_ref().ok_or_else(stopped)?.send(request).map_err(|_| stopped())
    }
}

impl Drop for Flusher {
    fn drop(&mut self) {
        drop(self.queue.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[derive(Clone)]
enum Backend {
    Sled(Arc<SledLog>),
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
    bincode::serde::encode_to_vec(value, bincode::config::standard()).map_err(write_err)
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, StorageError> {
    bincode::serde::decode_from_slice(bytes, bincode::config::standard())
        .map(|(v, _)| v)
        .map_err(read_err)
}

fn key_range<R: RangeBounds<u64>>(range: &R) -> (Bound<u64>, Bound<u64>) {
    (range.start_bound().cloned(), range.end_bound().cloned())
}

fn be(bound: Bound<u64>) -> Bound<[u8; 8]> {
    match bound {
        Bound::Included(i) => Bound::Included(i.to_be_bytes()),
        Bound::Excluded(i) => Bound::Excluded(i.to_be_bytes()),
        Bound::Unbounded => Bound::Unbounded,
    }
}

impl LogStore {
    /// Opens (or creates) the sled log in `dir`.
    pub fn open_sled(dir: &Path) -> Result<LogStore, std::io::Error> {
        std::fs::create_dir_all(dir)?;
        let db = sled::Config::new().path(dir).open().map_err(std::io::Error::other)?;
        let logs = db.open_tree("raft_log").map_err(std::io::Error::other)?;
        let meta = db.open_tree("raft_meta").map_err(std::io::Error::other)?;
        let data_file = File::options().read(true).write(true).open(dir.join("db"))?;
        let flusher = Flusher::start(db, data_file)?;
        Ok(LogStore { backend: Backend::Sled(Arc::new(SledLog { logs, meta, flusher })) })
    }

    /// A log in memory; pass the same `Arc` again to reopen it after a simulated restart.
    pub fn memory(log: Arc<Mutex<MemLog>>) -> LogStore {
        LogStore { backend: Backend::Memory(log, Arc::default()) }
    }

    /// With a flush delay, whether writes wait for the flusher.
    fn delayed(log: &Arc<Mutex<MemLog>>) -> bool {
        Self::mem(log).durable.is_some()
    }

    fn mem(log: &Mutex<MemLog>) -> std::sync::MutexGuard<'_, MemLog> {
        log.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn get_meta<T: DeserializeOwned>(&self, key: &'static str) -> Result<Option<T>, StorageError> {
        let bytes = match &self.backend {
            Backend::Sled(s) => s.meta.get(key).map_err(read_err)?.map(|v| v.to_vec()),
            Backend::Memory(m, _) => Self::mem(m).meta.get(key).cloned(),
        };
        bytes.map(|b| decode(&b)).transpose()
    }

    fn put_meta<T: Serialize>(&self, key: &'static str, value: &T) -> Result<(), StorageError> {
        let bytes = encode(value)?;
        match &self.backend {
            Backend::Sled(s) => {
                s.meta.insert(key, bytes).map_err(write_err)?;
            }
            Backend::Memory(m, _) => {
                Self::mem(m).meta.insert(key, bytes);
            }
        }
        Ok(())
    }

    fn read_range(&self, range: (Bound<u64>, Bound<u64>)) -> Result<Vec<LogEntry>, StorageError> {
        match &self.backend {
            Backend::Sled(s) => s
                .logs
                .range::<[u8; 8], _>((be(range.0), be(range.1)))
                .map(|kv| decode(&kv.map_err(read_err)?.1))
                .collect(),
            Backend::Memory(m, _) => {
                Self::mem(m).logs.range(range).map(|(_, v)| decode(v)).collect()
            }
        }
    }

    fn remove_range(&self, range: (Bound<u64>, Bound<u64>)) -> Result<(), StorageError> {
        match &self.backend {
            Backend::Sled(s) => {
                let mut batch = sled::Batch::default();
                for kv in s.logs.range::<[u8; 8], _>((be(range.0), be(range.1))) {
                    batch.remove(kv.map_err(write_err)?.0);
                }
                s.logs.apply_batch(batch).map_err(write_err)
            }
            Backend::Memory(m, _) => {
                let mut log = Self::mem(m);
                let doomed: Vec<u64> = log.logs.range(range).map(|(k, _)| *k).collect();
                for k in doomed {
                    log.logs.remove(&k);
                }
                Ok(())
            }
        }
    }

    fn last_entry(&self) -> Result<Option<LogEntry>, StorageError> {
        match &self.backend {
            Backend::Sled(s) => {
                s.logs.last().map_err(read_err)?.map(|(_, v)| decode(&v)).transpose()
            }
            Backend::Memory(m, _) => {
                Self::mem(m).logs.values().next_back().map(|v| decode(v)).transpose()
            }
        }
    }

    /// Makes everything written so far durable: sled flush, then fdatasync of its data file.
    async fn sync(&self) -> io::Result<()> {
        match &self.backend {
            Backend::Sled(s) => {
                let (reply, synced) = oneshot::channel();
                s.flusher.request(FlushRequest::Sync(reply))?;
                synced.await.map_err(|_| io::Error::other("log sync thread stopped"))?
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
        match &self.backend {
            Backend::Sled(s) => {
                let mut batch = sled::Batch::default();
                for (index, bytes) in encoded {
                    batch.insert(&index.to_be_bytes(), bytes);
                }
                s.logs.apply_batch(batch).map_err(write_err)?;
                s.flusher.request(FlushRequest::Append(callback)).map_err(write_err)
            }
            Backend::Memory(m, flusher) => {
                Self::mem(m).logs.extend(encoded);
                if Self::delayed(m) {
                    flusher.request(m, MemFlush::Append(callback)).map_err(write_err)
                } else {
                    callback.log_io_completed(Ok(()));
                    Ok(())
                }
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.remove_range((Bound::Included(log_id.index), Bound::Unbounded))?;
        self.sync().await.map_err(write_err)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // Record how far the log is purged, durably, before deleting anything.
        self.put_meta(LAST_PURGED, &log_id)?;
        self.sync().await.map_err(write_err)?;
        self.remove_range((Bound::Unbounded, Bound::Included(log_id.index)))?;
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
        assert!(!LogStore::mem(&log).has_pending());
        let committed = Some(LogId::new(CommittedLeaderId::new(3, 1), 7));
        store.save_committed(committed).await.expect("saves");
        assert!(LogStore::mem(&log).has_pending(), "a commit mark alone is not flushed");
        LogStore::mem(&log).crash();
        let mut reopened = LogStore::memory(log.clone());
        assert_eq!(reopened.read_vote().await.expect("reads"), Some(vote));
        assert_eq!(reopened.read_committed().await.expect("reads"), None, "not flushed, lost");
    }

    /// Entries written but not flushed are readable, and gone after a crash; flushed ones stay.
    #[tokio::test]
    async fn unflushed_entries_are_readable_until_a_crash() {
        let (log, mut store) = delayed();
        LogStore::mem(&log).logs.insert(1, vec![1]);
        store.save_vote(&Vote::new(1, 1)).await.expect("flushes everything written before");
        LogStore::mem(&log).logs.insert(2, vec![2]);
        assert!(LogStore::mem(&log).entry(2).is_some(), "readable before it is flushed");
        assert!(LogStore::mem(&log).durable_entry(2).is_none());
        LogStore::mem(&log).crash();
        assert_eq!(LogStore::mem(&log).entry(1), Some(&[1u8][..]));
        assert_eq!(LogStore::mem(&log).entry(2), None, "not flushed, lost");
    }

    /// Without a flush delay every write is durable at once (tests and `berth up`).
    #[tokio::test]
    async fn an_undelayed_memory_log_loses_nothing() {
        let log: Arc<Mutex<MemLog>> = Arc::default();
        let mut store = LogStore::memory(log.clone());
        store.save_committed(Some(LogId::new(CommittedLeaderId::new(1, 1), 2))).await.expect("ok");
        assert!(!LogStore::mem(&log).has_pending());
        LogStore::mem(&log).crash();
        assert!(store.read_committed().await.expect("reads").is_some());
    }
}
