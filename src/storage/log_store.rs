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
    logs: BTreeMap<u64, Vec<u8>>,
    meta: BTreeMap<&'static str, Vec<u8>>,
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
    Memory(Arc<Mutex<MemLog>>),
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
        LogStore { backend: Backend::Memory(log) }
    }

    fn mem(log: &Mutex<MemLog>) -> std::sync::MutexGuard<'_, MemLog> {
        log.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn get_meta<T: DeserializeOwned>(&self, key: &'static str) -> Result<Option<T>, StorageError> {
        let bytes = match &self.backend {
            Backend::Sled(s) => s.meta.get(key).map_err(read_err)?.map(|v| v.to_vec()),
            Backend::Memory(m) => Self::mem(m).meta.get(key).cloned(),
        };
        bytes.map(|b| decode(&b)).transpose()
    }

    fn put_meta<T: Serialize>(&self, key: &'static str, value: &T) -> Result<(), StorageError> {
        let bytes = encode(value)?;
        match &self.backend {
            Backend::Sled(s) => {
                s.meta.insert(key, bytes).map_err(write_err)?;
            }
            Backend::Memory(m) => {
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
            Backend::Memory(m) => Self::mem(m).logs.range(range).map(|(_, v)| decode(v)).collect(),
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
            Backend::Memory(m) => {
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
            Backend::Memory(m) => {
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
            Backend::Memory(_) => Ok(()),
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
            Backend::Memory(m) => {
                Self::mem(m).logs.extend(encoded);
                callback.log_io_completed(Ok(()));
                Ok(())
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
