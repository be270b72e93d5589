//! Durable storage: the Raft log (a write-ahead file, or memory for tests and simulation) and
//! snapshot files.
//!
//! Rule: nothing is acknowledged before it is on stable storage: every append and vote is
//! followed by `fdatasync` of the log file before it is acknowledged, and snapshots are written
//! to a new file, synced, renamed into place, and the directory synced.

pub mod log_store;
pub mod snapshot_store;

pub use log_store::{FileLogOptions, LogStore, MemLog};
pub use snapshot_store::SnapshotStore;
