//! Jepsen-style tests of real `berth server` processes.
//!
//! # Layout
//! - `history`: the operation log (`invoke` → `ok`/`fail`/`info`), written as JSON lines.
//! - `checker`: linearizability (WGL) and log-index checks over a history; pure, no IO. Lease
//!   safety is `berth_check::lease`, shared with the simulation.
//! - `topology`: network namespaces, a bridge, and the replica processes (needs root).
//! - `nemesis`: faults — partitions (iptables), kill, pause, clock, netem, membership.
//! - `workload`: the client operations (quota, capacity, tenants, lease, register, worker) and
//!   their recording.
//! - `clientproc`: lease clients as separate processes (so a holder can be SIGSTOPped).
//! - `fleet`: the worker workload's `berth agent` processes, watchers and final reads.
//! - `run`: one test run: set up, run clients and nemesis, heal, final reads, check.
//! - `report`: `index.html` with latency and throughput plots and the checkers' verdicts.
//!
//! Dependency rule: `checker` and `history` know nothing of processes or the network, so the
//! checkers can be unit-tested on hand-written histories.

pub mod checker;
pub mod clientproc;
pub mod fleet;
pub mod history;
pub mod nemesis;
pub mod report;
pub mod run;
pub mod topology;
pub mod workload;
