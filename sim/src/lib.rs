//! Deterministic simulation of a whole Berth cluster with turmoil: the real server code
//! (openraft, the peer transport, the gRPC API, the scheduler core) for 3 or 5 replicas and
//! several clients in one process, with faults drawn from a seed, checked against what the
//! clients were told. See `sim/README.md`.

pub mod fairness;
pub mod history;
pub mod hostile;
pub mod nemesis;
pub mod net;
pub mod raft_checks;
pub mod run;
pub mod scenario;

pub use run::{run, run_scenario, Report};
pub use scenario::Scenario;
