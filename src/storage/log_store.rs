//! The Raft log store (`RaftLogStorage`, openraft storage-v2), on sled or in memory.
//!
//! Keys are big-endian log indexes, so sled's byte order is log order. The vote and appended
//! entries are synced before `save_vote` returns or the append callback fires;
//! `last_purged` is synced before anything is deleted. Both backends share this code and pass
//! openraft's storage conformance suite.

// openraft's traits return its (large) `StorageError`; helpers return the same type.
#![allow(clippy::result_large_err)]

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::fs::File;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::{Arc, Mutex};

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, LogState, OptionalSend, RaftLogReader};
use serde::de::DeserializeOwned;
use serde::Serialize;

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
    db: sled::Db,
    logs: sled::Tree,
    meta: sled::Tree,
    /// sled's data file, kept open for `sync_data` after every flush.
    data_file: File,
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
        Ok(LogStore { backend: Backend::Sled(Arc::new(SledLog { db, logs, meta, data_file })) })
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
    async fn sync(&self) -> Result<(), std::io::Error> {
        match &self.backend {
            Backend::Sled(s) => {
                let s = Arc::clone(s);
                tokio::task::spawn_blocking(move || {
                    s.db.flush().map_err(std::io::Error::other)?;
                    s.data_file.sync_data()
                })
                .await
                .map_err(std::io::Error::other)?
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
        match &self.backend {
            Backend::Sled(s) => {
                let mut batch = sled::Batch::default();
                for (index, bytes) in encoded {
                    batch.insert(&index.to_be_bytes(), bytes);
                }
                s.logs.apply_batch(batch).map_err(write_err)?;
            }
            Backend::Memory(m) => {
                let mut log = Self::mem(m);
                log.logs.extend(encoded);
            }
        }
        // Readable now; acknowledged only once durable.
        match self.sync().await {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                let message = e.to_string();
                callback.log_io_completed(Err(e));
                Err(write_err(message))
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
