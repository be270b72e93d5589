//! # Berth
//!
//! A Raft-replicated, multi-tenant resource scheduler.
//!
//! # Layout
//! - `scheduler` — the pure, deterministic core: `apply(Entry) -> Applied`. Depends on nothing
//!   below; no IO, clocks, tasks or randomness (enforced by `tests/tidy.rs`).
//!
//! Later layers (replication, storage, peer network, public API) wrap the core; the rule is
//! that dependencies point inwards, towards `scheduler`.

pub mod scheduler;
