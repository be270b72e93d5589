//! The Raft log store (`RaftLogStorage`, openraft storage-v2), on file or in memory.
//!
//! Both backends keep the live log in memory (`MemLog`), where reads find it; the file backend
//! (`file_log`) also records every change in a write-ahead file. The vote is synced before
//! `save_vote` returns, appended entries before the append callback fires, and `last_purged`
//! before anything is deleted. openraft 0.9.25 waits for a leader's append callback before it
//! sends the entries to the followers, so the leader's sync is on the commit path, not beside
//! replication. Both backends share this adapter and pass openraft's storage
//! conformance suite (`tests/raft_storage.rs`).

// openraft's traits return its (large) `StorageError`; helpers return the same type.
#![allow(clippy::result_large_err)]

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::{Arc, Mutex};

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, LogState, OptionalSend, RaftLogReader};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::oneshot;

use super::file_log::{Ack, FileLog, FileLogOptions, WalStats};
use super::memory::{MemFlush, MemFlusher, MemLog, COMMITTED, LAST_PURGED, VOTE};
use super::wal::{EntryBytes, Record};
use super::{io_err, lock, read_err, write_err};
use crate::codec;
use crate::raft::types::{LogEntry, LogId, StorageError, TypeConfig, Vote};

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

    /// What the write-ahead file's writer measured (`None` for a log in memory).
    pub fn wal_stats(&self) -> Option<Arc<WalStats>> {
        match &self.backend {
            Backend::File(f) => Some(f.stats.clone()),
            Backend::Memory(..) => None,
        }
    }

    /// With a flush delay, whether writes wait for the flusher.
    fn delayed(log: &Arc<Mutex<MemLog>>) -> bool {
        lock(log).delayed()
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
            encoded.push((entry.log_id.index, EntryBytes(encode(&entry)?)));
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
