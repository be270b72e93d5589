//! Deterministic simulation of a whole Berth cluster with turmoil: the real server code
//! (openraft, the peer transport, the gRPC API, the scheduler core) for 3 or 5 replicas and
//! several clients in one process, with faults drawn from a seed, checked against what the
//! clients were told. See `sim/README.md`.
//!
//! # Layout
//!
//! Bottom to top; a module imports only from modules above it in this list.
//!
//! - `history`: the recorded operations and the checks over them (lease safety is
//!   `berth_check::lease`, shared with the Jepsen harness). Pure.
//! - `raft_checks`: applied ≤ committed and committed entries never change, over raw logs. Pure.
//! - `net`: turmoil glue for Berth's injected IO (listeners, connector, `SimClock`).
//! - `cluster`: the parameters a seed picks, the replicas as turmoil hosts, certificates, an API
//!   client; `history`'s types and `net` only.
//! - `ops`: the client operations, each sent and recorded in the history.
//! - `nemesis`: the faults (`cluster`'s replica handles, `net`'s clocks).
//! - `watch`: looks into every running replica between steps (`raft_checks`).
//! - `hostile`, `scenario`, `restart`, `fairness`, `fleet`, `cut`: requests no cluster may
//!   accept, the named scenarios' stories (`restart`: the read from a leader that survived a
//!   whole-cluster crash; `fleet`: agents that crash, pause and are partitioned, and its
//!   checks; `cut`: workers heartbeating through a leader cut off from its followers), the
//!   fairness figures — built on `cluster` and `ops`.
//! - `workload`: setup, the random clients, the token reader, membership churn, the final
//!   phase, and `spawn`, which starts the ones a scenario runs.
//! - `run`: one seed end to end — cluster, clients, the step loop with faults and the
//!   watcher, convergence, the history checks — and its `Report`.

mod cluster;
pub mod cut;
pub mod fairness;
pub mod fleet;
pub mod history;
pub mod hostile;
pub mod nemesis;
pub mod net;
mod ops;
pub mod raft_checks;
pub mod restart;
pub mod run;
pub mod scenario;
mod watch;
mod workload;

pub use cluster::Params;
pub use run::{run, run_scenario, Report};
pub use scenario::Scenario;
