//! # Berth
//!
//! A Raft-replicated, multi-tenant resource scheduler.
//!
//! # Layout
//! One entry per module, in dependency order: `→` names what it imports from the crate, and a
//! module imports only modules listed above it, so there are no cycles. The `berth` binary
//! (`src/bin/berth/`: `server`, `up`, `certs`, `bench`, `agent`, `restore`, `output`,
//! `stress/` (the stress profiles, the steady load of `soak` and `chaos`, `chaos`'s iptables
//! partitions, what they record, the report), and `cli/` with one file per resource) uses the library from outside; nothing
//! in the library depends on it. The
//! workspace's `rng/` crate (`berth-rng`) is the one seeded generator of `sim/` and `jepsen/`.
//! - `codec` — bincode with a size limit: every byte written to disk or a peer, and read back.
//!   Imports nothing from the crate.
//! - `fatal` — fail-stop: a replica whose storage failed or whose apply panicked stops for good.
//!   Imports nothing.
//! - `scheduler` — the pure, deterministic core: `apply(Entry) -> Applied`. Imports nothing
//!   else from the crate; no IO, clocks, tasks or randomness (enforced by `tests/tidy.rs`).
//!   `scheduler::testing` is the one harness (a log with its own index and time) for the
//!   core's tests and benches; `scheduler::events` is what each applied entry reports it did
//!   (`Applied::journal`, in order, the same on every replica), the source of watches;
//!   `scheduler::meter` meters what each tenant holds in log time and prices it by plan;
//!   `scheduler::budget` holds each tenant's monthly budget, its alerts and hard stop;
//!   `scheduler::invoice` closes each tenant's months into immutable invoices;
//!   `scheduler::rates` limits each tenant's writes with a token bucket and a daily count;
//!   `scheduler::policy` numbers each change to a tenant's policy and rolls it back;
//!   `scheduler::audit` chains a record of every command a client sent.
//! - `clock` — the injected wall clock, and `ClockSync`: peers' clock readings that bound how
//!   far ahead of the voters' clocks a leader stamps an entry. → `scheduler`.
//! - `raft::types` — the shared bottom of replication: the openraft type configuration and
//!   what a log entry carries (`Batch`). → `scheduler` (and `raft::runtime`).
//! - `storage` — the Raft log and snapshot files, one file per concern: `memory` (the live
//!   log every read sees, and the memory backend), `wal` (the write-ahead file's records,
//!   framing and replay), `file_log` (the writer thread: group sync, preallocation,
//!   compaction), `log_store` (openraft's `RaftLogStorage` over either), `snapshot_store`
//!   (the snapshot file, the usage store's bases, and backup files).
//!   → `codec`, `raft::types`.
//! - `usage` — each replica's usage history in sled (full blocks of change points in files
//!   beside it): change points and hourly and daily roll-ups per tenant, derived from applied commands by a writer thread, pruned by the
//!   replicated retention, carried by snapshots as a base and the changes since it and
//!   restored from them, queried by range.
//!   → `codec`, `fatal`, `scheduler`.
//! - `audit` — each replica's audit trail: the records the core chains for every command a
//!   client sent, gathered into chunks and written by a writer thread to a file per log-time
//!   hour (sled indexes them by `seq` and tenant), kept across restarts, pruned by age, read
//!   by range. → `codec`, `usage` (where it lives), `scheduler`.
//! - `network::connect` — byte streams to peers: the injected connector (`Connect`; TCP in
//!   production, `turmoil::net` in the simulation), re-exported as `network::Connect` etc.;
//!   and `accept`, how the API and metrics listeners take their next connection.
//!   Imports nothing.
//! - `tls` — certificates (a CA for `berth up`, `berth certs`, tests and the simulation),
//!   mutual TLS on the peer port with admission by membership, TLS on the API and for
//!   clients. → `network::connect`, `raft::types`.
//! - `network` — pure peer transport: length-prefixed bincode frames, pooled connections,
//!   deadlines, TLS hand-off; each request goes to a `Handler` it is given. No clock, no
//!   writes to Raft. → `codec`, `tls`, `raft::types`.
//! - `raft` — openraft around the core: `peer` (typed calls to other replicas), the state
//!   machine wrapper, `journal` (the events of applied entries, kept for watch streams), and
//!   the replica (the one proposer: group commit, leader stamping,
//!   forwarding; ticker, reads, membership; it is the peer port's `Handler`).
//!   → `network`, `storage`, `usage`, `audit`, `clock`, `fatal`, `codec`, `scheduler`.
//! - `api` — the public gRPC API (`berth.v1`): one file per service (`tenants`, `workers`,
//!   `placements`, `leases`, `billing`, `cluster`: with snapshots on demand and backups), auth and tenant scoping, proto conversions,
//!   error mapping (`status`), the one narrowing of the core's answers (`answer`), the
//!   heartbeat batcher (`heartbeats`), the server streams (`streams`: Watch,
//!   WatchAssignments), the per-connection state its requests share (`ApiStream`, under
//!   tonic), and what each request did (`observe`: the layer that counts and logs it, by
//!   tenant, RPC and reason, with bounded labels), and tenants' read rate limits on this
//!   replica (`limits`; writes are limited in the core, `scheduler::rates`).
//!   → `raft`, `usage`, `audit`, `scheduler`, `network::connect`.
//! - `metrics` — a replica's Prometheus metrics: the API's request counts, log syncs, batches
//!   and peer calls as they happen; its Raft view and each tenant's usage, quota and queue
//!   read at each scrape; served as OpenMetrics on `GET /metrics`.
//!   → `api::observe`, `raft`, `storage`, `scheduler`.
//! - `console` — the web console: sign-in that exchanges a token (or a one-time link) for a
//!   session cookie; a tenant's pages (`tenant`: overview, explanation, usage and invoices,
//!   CSV), the operator's (`operator`), the events page (`activity`, from the journal), the
//!   live streams (`live`) and the shared frame (`pages`, maud templates, the embedded
//!   stylesheet and script), read in-process through the API's own handlers; served over the
//!   API's TLS as HTTP/1.1.
//!   → `api`, `raft::replica`, `raft::journal`, `scheduler::events`, `scheduler::windows`.
//! - `client` — the API client: endpoints, failover, retries with the same request id.
//!   → `api::pb`, `tls`, `network::connect`, `raft::replica::hex`.
//! - `server` — a replica plus its peer, API, metrics and console servers, with all IO passed in; and
//!   `restore`, a new replica's storage from a backup file.
//!   → `console`, `api`, `metrics`, `raft`, `network`, `storage`, `usage`, `tls`, `clock`,
//!   `scheduler`.
//!
//! In short: `server` → `console`/`metrics` → `api` → `raft` → `network`/`storage`/`usage` → `raft::types` →
//! `scheduler`.
//! `raft::types` is the one part of `raft` that `storage`, `network` and `tls` import: the
//! shared bottom. Inside `raft`: `replica` → `peer`, `state_machine` → `journal`, `types` →
//! `runtime`.

pub mod api;
pub mod audit;
pub mod client;
pub mod clock;
pub mod codec;
pub mod console;
pub mod fatal;
pub mod metrics;
pub mod network;
pub mod raft;
pub mod scheduler;
pub mod server;
pub mod storage;
pub mod tls;
pub mod usage;
