//! # Berth
//!
//! A Raft-replicated, multi-tenant resource scheduler.
//!
//! # Layout
//! - `scheduler` — the pure, deterministic core: `apply(Entry) -> Applied`. Depends on nothing
//!   below; no IO, clocks, tasks or randomness (enforced by `tests/tidy.rs`).
//! - `api` — the public gRPC API (`berth.v1`): auth, tenant scoping, error mapping, and the
//!   per-connection state its requests share (`ApiStream`, under tonic).
//! - `client` — the API client: endpoints, failover, retries with the same request id.
//! - `raft` — openraft around the core: the state machine wrapper, the replica (proposer with
//!   group commit, ticker, reads, membership).
//! - `storage` — the Raft log (a write-ahead file, or memory) and snapshot files.
//! - `network` — peer RPC on its own port: length-prefixed bincode frames over any byte stream,
//!   with injected connectors (TCP in production, `turmoil::net` in the simulation).
//! - `clock` — the injected wall clock, and `ClockSync`: peers' clock readings that bound how
//!   far ahead of the voters' median a leader stamps an entry.
//! - `tls` — certificates (a CA for `berth up`, `berth certs`, tests and the simulation),
//!   mutual TLS on the peer port with admission by membership, TLS on the API and for clients.
//! - `server` — a replica plus its peer and API servers, with all IO passed in.
//! - `fatal` — fail-stop: a replica whose storage failed or whose apply panicked stops for good.
//! - `codec` — bincode with a size limit: every byte written to disk or a peer, and read back.
//!
//!
//! The `berth` binary (`src/bin/berth/`: `server`, `up`, `certs`, `bench`, `output`, and `cli/`
//! with one file per resource) sits on top of the library; nothing in the library depends on it.
//!
//! Dependencies point inwards: `network`/`storage` → `raft` → `scheduler`; the core depends
//! on nothing else in the crate.

pub mod api;
pub mod client;
pub mod clock;
pub mod codec;
pub mod fatal;
pub mod network;
pub mod raft;
pub mod scheduler;
pub mod server;
pub mod storage;
pub mod tls;
