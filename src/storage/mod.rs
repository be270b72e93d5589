//! Durable storage: the Raft log (a write-ahead file, or memory for tests and simulation) and
//! snapshot files.
//!
//! Rule: nothing is acknowledged before it is on stable storage: every append and vote is
//! followed by `fdatasync` of the log file before it is acknowledged, and snapshots are written
//! to a new file, synced, renamed into place, and the directory synced.
//!
//! One file per concern, each importing only those listed before it:
//! - `memory` — the live log in memory (`MemLog`: entries, vote, commit and purge marks), what
//!   every read sees on either backend; and the memory backend's flusher (simulated disk).
//! - `wal` — the write-ahead file's format: records, their framing, replay and the line between
//!   a torn write and damage.
//! - `file_log` — the file backend: one writer thread (group sync), preallocation, compaction.
//! - `log_store` — `LogStore`, openraft's `RaftLogStorage` over either backend.
//! - `snapshot_store` — snapshot files (or memory), replaced atomically.
//!
//! Imports from the crate only `codec` and `raft::types`.

// openraft's traits return its (large) `StorageError`; helpers return the same type.
#![allow(clippy::result_large_err)]

mod file_log;
pub mod log_store;
mod memory;
pub mod snapshot_store;
mod wal;

pub use file_log::{FileLogOptions, WalStats};
pub use log_store::LogStore;
pub use memory::MemLog;
pub use snapshot_store::SnapshotStore;

use std::sync::{Mutex, MutexGuard};

use openraft::{ErrorSubject, ErrorVerb};

use crate::raft::types::{StorageError, StorageIOError};

/// Locks `mutex`; a panic elsewhere while it was held leaves the log as it was, so go on.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
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
