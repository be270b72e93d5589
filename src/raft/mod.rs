//! Replication: openraft around the scheduler core.
//!
//! - `types`: the openraft type configuration and what a log entry carries (`Batch`).
//! - `journal`: the events of the entries a replica applied, kept for watchers to read and
//!   resume from (the same positions on every replica).
//! - `state_machine`: a thin `RaftStateMachine` that feeds committed commands to
//!   `scheduler::Scheduler::apply`, numbering each one, and persists snapshots.
//! - `runtime`: tokio with a seedable generator for election timeouts (the simulation seeds it).
//! - `peer`: calls to other replicas over `crate::network` (forwarded writes and reads,
//!   status, clock readings), typed, with what they answer.
//! - `replica`: one running replica: the Raft instance, the proposer (group commit, leader
//!   stamping, forwarding to the leader), the ticker, linearizable reads and status; it is
//!   also what answers its peer port (`network::Handler`).
//!
//! No business logic lives here: every decision is made by the core inside `apply`.

pub mod journal;
pub mod peer;
pub mod replica;
pub mod runtime;
pub mod state_machine;
pub mod types;
