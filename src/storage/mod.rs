//! Durable storage: the Raft log (sled, or memory for tests and simulation) and snapshot
//! files.
//!
//! Rule: nothing is acknowledged before it is on stable storage. sled 0.34's `flush()` ends in
//! `sync_file_range` on Linux, which neither empties the device cache nor persists the file
//! size, so every flush is followed by `fdatasync` on sled's data file.

pub mod log_store;
pub mod snapshot_store;

pub use log_store::{LogStore, MemLog};
pub use snapshot_store::SnapshotStore;
