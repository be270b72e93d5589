//! The simulated cluster: the parameters a seed chooses, the replicas as turmoil hosts (the
//! real `berth::server::Server` on the simulated network, with a memory log that outlives a
//! crash), their certificates, and an API client of them. The bottom of the simulation's own
//! modules: it imports none of them but `net` and `history`'s types.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth::client::{Client, ClientOptions, ClientSecurity, ClientTls};
use berth::raft::replica::{Replica, ReplicaOptions};
use berth::server::{Listeners, Security, Server, Storage};
use berth::storage::snapshot_store::Stored;
use berth::storage::{LogStore, MemLog, SnapshotStore};
use berth::tls::{roots, Authority, Identity, Pem, TlsError};
use berth::usage::UsageLocation;
use berth_rng::Rng;
use serde::Serialize;

use crate::history::Quotas;
use crate::net::{self, SimClock};

pub(crate) const ADMIN: &str = "sim-admin-token";
pub(crate) const PEER_PORT: u16 = 7401;
pub(crate) const API_PORT: u16 = 7501;

/// The cluster and workload a seed chooses.
#[derive(Clone, Debug, Serialize)]
pub struct Params {
    pub replicas: u64,
    pub clients: u32,
    pub workers: u64,
    pub quotas: Quotas,
    pub workload_ms: u64,
    pub snapshot_logs: u64,
    /// Lease names `l0..` in the first tenant, and the range of their TTLs.
    pub leases: u64,
    pub lease_ttl_ms: (u64, u64),
    /// How long the memory log takes to make a write durable (a crash loses what is newer).
    pub flush_ms: u64,
    /// Remove and re-add voters through the Cluster API while faults run.
    pub membership: bool,
    /// Every tenant has placement group `g` of this many instances at most.
    pub group_max: u64,
    /// The range of reservation TTLs.
    pub reservation_ttl_ms: (u64, u64),
    /// When client 1 deletes the last tenant (the others keep using it).
    pub delete_at_ms: u64,
    /// How long a replica keeps trying a write it forwards (`ReplicaOptions::write_deadline`).
    pub write_deadline_ms: u64,
}

impl Params {
    pub fn from_seed(rng: &mut Rng) -> Params {
        let replicas = if rng.below(4) == 0 { 5 } else { 3 };
        let mut quotas: Quotas = (1..=2).map(|t| (format!("t{t}"), rng.between(3, 8))).collect();
        let workload_ms = rng.between(4_000, 7_000);
        quotas.insert("t3".into(), rng.between(3, 8));
        Params {
            replicas,
            clients: 3,
            workers: rng.between(2, 4),
            quotas,
            workload_ms,
            snapshot_logs: rng.between(20, 80),
            leases: rng.between(1, 2),
            lease_ttl_ms: (200, rng.between(400, 1_500)),
            flush_ms: rng.between(1, 3),
            membership: rng.below(2) == 0,
            group_max: rng.between(2, 4),
            reservation_ttl_ms: (50, rng.between(150, 600)),
            delete_at_ms: rng.between(workload_ms / 4, workload_ms * 3 / 4),
            write_deadline_ms: 2_000,
        }
    }
}

pub(crate) type Slot = Arc<Mutex<Option<Replica>>>;

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub(crate) fn host(id: u64) -> String {
    format!("r{id}")
}

pub(crate) fn now_ms() -> u64 {
    turmoil::sim_elapsed().map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// An admin client of every replica's API, over TLS (`tls`) on the simulated network.
pub(crate) fn api_client(
    replicas: u64,
    tls: &ClientSecurity,
    deadline: Duration,
) -> Result<Client, String> {
    api_client_from(1, replicas, tls, deadline)
}

/// `api_client`, trying replica `first` first (then the next ids, around).
pub(crate) fn api_client_from(
    first: u64,
    replicas: u64,
    tls: &ClientSecurity,
    deadline: Duration,
) -> Result<Client, String> {
    let mut channels = Vec::new();
    for id in (0..replicas).map(|k| (first.saturating_sub(1) + k) % replicas + 1) {
        let endpoint = format!("{}:{API_PORT}", host(id));
        let channel = berth::tls::channel(&endpoint, tls, net::connect(), net::CONNECT_TIMEOUT)?;
        channels.push((host(id), channel));
    }
    let options = ClientOptions { deadline, attempt_timeout: Duration::from_millis(800) };
    Client::with_channels(channels, Some(ADMIN), options).map_err(|e| e.to_string())
}

/// An admin client of replica `id`'s API alone (no failover to the others).
pub(crate) fn replica_client(
    id: u64,
    tls: &ClientSecurity,
    deadline: Duration,
) -> Result<Client, String> {
    let endpoint = format!("{}:{API_PORT}", host(id));
    let channel = berth::tls::channel(&endpoint, tls, net::connect(), net::CONNECT_TIMEOUT)?;
    let options = ClientOptions { deadline, attempt_timeout: Duration::from_millis(800) };
    Client::with_channels(vec![(host(id), channel)], Some(ADMIN), options)
        .map_err(|e| e.to_string())
}

/// The run's CA: a certificate for each replica (`1..=replicas`), naming its id and the host
/// name API clients dial, and the CA's certificate, which API clients trust.
pub(crate) fn certificates(replicas: u64) -> Result<(String, Vec<Pem>, ClientSecurity), TlsError> {
    let ca = Authority::generate()?;
    let pems = (1..=replicas).map(|id| ca.replica(id, &[host(id)])).collect::<Result<_, _>>()?;
    let clients = ClientSecurity::Tls(ClientTls::new(roots(ca.cert_pem())?, None)?);
    Ok((ca.cert_pem().to_owned(), pems, clients))
}

/// The running replicas, by id - 1: the handle each host publishes once started, its clock
/// (which the nemesis skews) and its memory log (which survives the host's crash).
pub(crate) struct Cluster {
    pub(crate) slots: Vec<Slot>,
    pub(crate) clocks: Vec<SimClock>,
    pub(crate) logs: Vec<Arc<Mutex<MemLog>>>,
}

/// Adds a host per replica to `sim`, each running the real server with the TLS identity in
/// `pems` (from `certificates`); replica 1 bootstraps the cluster on its first start.
pub(crate) fn start(
    sim: &mut turmoil::Sim<'_>,
    params: &Params,
    (ca, pems): (String, Vec<Pem>),
) -> Cluster {
    let members: BTreeMap<u64, String> =
        (1..=params.replicas).map(|id| (id, format!("{}:{PEER_PORT}", host(id)))).collect();
    let mut slots: Vec<Slot> = Vec::new();
    let mut clocks: Vec<SimClock> = Vec::new();
    let mut logs: Vec<Arc<Mutex<MemLog>>> = Vec::new();
    for (id, pem) in (1..=params.replicas).zip(pems) {
        let slot: Slot = Arc::default();
        let clock = SimClock::default();
        let log =
            Arc::new(Mutex::new(MemLog::with_flush_delay(Duration::from_millis(params.flush_ms))));
        let snapshot: Arc<Mutex<Stored>> = Arc::default();
        let (s, c, m, snapshot_logs) =
            (slot.clone(), clock.clone(), members.clone(), params.snapshot_logs);
        let write_deadline = Duration::from_millis(params.write_deadline_ms);
        let ca = ca.clone();
        logs.push(log.clone());
        sim.host(host(id), move || {
            let (slot, clock, members, log, snapshot) =
                (s.clone(), c.clone(), m.clone(), log.clone(), snapshot.clone());
            let (ca, pem) = (ca.clone(), pem.clone());
            async move {
                let mut options = ReplicaOptions::new(id, format!("{}:{PEER_PORT}", host(id)));
                options.heartbeat_ms = 50;
                options.election_timeout_min_ms = 300;
                options.election_timeout_max_ms = 600;
                options.snapshot_logs = snapshot_logs;
                options.snapshot_keep_logs = 5;
                options.tick_idle = Duration::from_millis(200);
                options.write_deadline = write_deadline;
                // A fail-stop ends this host with an error (a violation), not the process.
                options.fail_stop = berth::fatal::FailStop::record();
                // What was not flushed before a crash is gone (a no-op on first start).
                lock(&log).crash();
                let storage = Storage {
                    log: LogStore::memory(log),
                    snapshots: SnapshotStore::Memory(snapshot),
                    usage: UsageLocation::Simulated,
                };
                let listeners = Listeners {
                    peer: net::listen(PEER_PORT).await?,
                    api: Some((net::listen(API_PORT).await?, berth::api::hash_token(ADMIN))),
                    metrics: None,
                    console: None,
                    metrics_tenants_max: berth::api::observe::METRICS_TENANTS_DEFAULT,
                };
                let bootstrap = (id == 1).then_some(members);
                let security = Security::Tls {
                    ca: roots(&ca)?,
                    identity: Identity::from_pem(&pem)?,
                    api_client_ca: None,
                };
                let server = Server::start(
                    options,
                    storage,
                    Arc::new(clock),
                    net::connect(),
                    security,
                    listeners,
                    bootstrap,
                )
                .await
                .map_err(|e| e.to_string())?;
                *lock(&slot) = Some(server.replica.clone());
                let why = server.replica.fail_stop().stopped().await;
                Err(format!("r{id} fail-stopped: {why}").into())
            }
        });
        slots.push(slot);
        clocks.push(clock);
    }
    Cluster { slots, clocks, logs }
}
