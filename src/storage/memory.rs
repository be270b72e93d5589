//! The live log in memory, and the memory backend.
//!
//! `MemLog` holds the log as reads see it (entries by index, encoded; the vote, commit and purge
//! marks) on both backends: the file backend (`file_log`) keeps one and records every change to
//! it in the write-ahead file too.
//!
//! As a backend of its own (tests and simulation), writes are durable at once by default. With
//! a flush delay (the simulation), the memory log keeps what was written apart from what was
//! flushed, like a disk: a flusher task makes everything written durable `flush_delay` after a
//! sync or append asks for it, and [`MemLog::crash`] drops what was not flushed (entries, vote,
//! purge and commit marks alike).

use std::collections::BTreeMap;
use std::io;
use std::sync::{Arc, Mutex};

use openraft::storage::LogFlushed;
use tokio::sync::oneshot;

use super::lock;
use crate::codec;
use crate::raft::types::{LogId, TypeConfig};

/// The keys of the log's marks (`MemLog::meta`), the only ones a record may set.
pub(super) const VOTE: &str = "vote";
pub(super) const LAST_PURGED: &str = "last_purged";
pub(super) const COMMITTED: &str = "committed";
pub(super) const META_KEYS: [&str; 3] = [VOTE, LAST_PURGED, COMMITTED];

/// The in-memory log (for tests and simulation): shared, so a "restarted" replica can reopen
/// what its predecessor wrote.
#[derive(Debug, Default)]
pub struct MemLog {
    /// Everything written: what reads see.
    pub(super) logs: BTreeMap<u64, Vec<u8>>,
    pub(super) meta: BTreeMap<&'static str, Vec<u8>>,
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

    /// Whether writes wait for the flusher (a flush delay was set).
    pub(super) fn delayed(&self) -> bool {
        self.durable.is_some()
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
        codec::decode::<LogId>(bytes).ok().map(|l| l.index)
    }
}

/// A request to the memory log's flusher.
pub(super) enum MemFlush {
    Append(LogFlushed<TypeConfig>),
    Sync(oneshot::Sender<()>),
}

/// The memory log's flusher: started on first use, on the runtime of the caller (so it dies
/// with a simulated host). Requests complete in the order they were queued.
#[derive(Default)]
pub(super) struct MemFlusher {
    queue: std::sync::OnceLock<tokio::sync::mpsc::UnboundedSender<MemFlush>>,
}

impl MemFlusher {
    pub(super) fn request(&self, log: &Arc<Mutex<MemLog>>, request: MemFlush) -> io::Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::LogStore;
    use openraft::storage::RaftLogStorage;
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
