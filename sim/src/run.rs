//! One simulation: a Berth cluster of 3 or 5 replicas and several clients inside turmoil,
//! faults drawn from the seed, and the checks. Everything random comes from the seed:
//! turmoil's network, openraft's election timeouts (Berth's seedable runtime), the cluster
//! parameters, the workload and the fault schedule.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use berth::client::{self, pb, Client, ClientOptions};
use berth::raft::replica::{Replica, ReplicaOptions};
use berth::server::{Listeners, Server, Storage};
use berth::storage::snapshot_store::StoredSnapshot;
use berth::storage::{LogStore, MemLog, SnapshotStore};
use serde::Serialize;
use sha2::{Digest, Sha256};
use tonic::Code;

use crate::history::{check, Op, OpKind, Outcome, Quotas};
use crate::net::{self, SimClock};

const ADMIN: &str = "sim-admin-token";
const PEER_PORT: u16 = 7401;
const API_PORT: u16 = 7501;
/// The cluster must accept a fresh write within this long after every fault is healed.
const LIVENESS_BOUND: Duration = Duration::from_secs(20);
/// All replicas must reach the same state within this long after the clients are done.
const CONVERGENCE_BOUND: Duration = Duration::from_secs(20);

/// splitmix64: small, seedable, and the same everywhere.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
    pub fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }
}

/// The cluster and workload a seed chooses.
#[derive(Clone, Debug, Serialize)]
pub struct Params {
    pub replicas: u64,
    pub clients: u32,
    pub workers: u64,
    pub quotas: Quotas,
    pub workload_ms: u64,
    pub snapshot_logs: u64,
}

impl Params {
    pub fn from_seed(rng: &mut Rng) -> Params {
        let replicas = if rng.below(4) == 0 { 5 } else { 3 };
        let quotas = (1..=2).map(|t| (format!("t{t}"), rng.between(3, 8))).collect();
        Params {
            replicas,
            clients: 3,
            workers: rng.between(2, 4),
            quotas,
            workload_ms: rng.between(4_000, 7_000),
            snapshot_logs: rng.between(20, 80),
        }
    }
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    pub seed: u64,
    pub params: Option<Params>,
    pub simulated_ms: u64,
    pub ops: usize,
    pub ok: usize,
    pub fail: usize,
    pub info: usize,
    pub faults: Vec<String>,
    pub violations: Vec<String>,
    /// SHA-256 of the normalised event trace: equal for equal seeds.
    pub trace_hash: String,
    #[serde(skip)]
    pub history: Vec<Op>,
}

type Slot = Arc<Mutex<Option<Replica>>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn host(id: u64) -> String {
    format!("r{id}")
}

fn now_ms() -> u64 {
    turmoil::sim_elapsed().map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn outcome_of(status: &tonic::Status) -> Outcome {
    match status.code() {
        Code::Unavailable | Code::DeadlineExceeded | Code::Unknown | Code::Cancelled => {
            Outcome::Info { why: format!("{:?}: {}", status.code(), status.message()) }
        }
        code => Outcome::Fail { reason: format!("{code:?}") },
    }
}

fn api_client(replicas: u64, deadline: Duration) -> Result<Client, String> {
    let mut channels = Vec::new();
    for id in 1..=replicas {
        channels.push((host(id), net::channel(&format!("{}:{API_PORT}", host(id)))?));
    }
    let options = ClientOptions { deadline, attempt_timeout: Duration::from_millis(800) };
    Client::with_channels(channels, Some(ADMIN), options).map_err(|e| e.to_string())
}

/// Retries a setup write (same request id) until it is applied.
async fn must<M: Clone, T, F, Fut>(client: &Client, message: M, rpc: F) -> Result<T, String>
where
    F: Fn(tonic::transport::Channel, tonic::Request<M>) -> Fut + Copy,
    Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    for _ in 0..100 {
        match client.call(message.clone(), rpc).await {
            Ok(answer) => return Ok(answer),
            Err(status) if matches!(outcome_of(&status), Outcome::Info { .. }) => {}
            Err(status) => return Err(format!("setup refused: {status:?}")),
        }
    }
    Err("setup never succeeded".into())
}

async fn setup(params: Params) -> Result<(), String> {
    let c = api_client(params.replicas, Duration::from_secs(5))?;
    for w in 1..=params.workers {
        let capacity = pb::Resources { cpu_millis: 300, memory_mib: 1_024 };
        let r = pb::RegisterWorkerRequest {
            request_id: format!("setup-w{w}"),
            worker_id: format!("w{w}"),
            capacity: Some(capacity),
            ..Default::default()
        };
        must(&c, r, |ch, r| async move { client::workers(ch).register_worker(r).await }).await?;
    }
    for (tenant, limit) in &params.quotas {
        let r = pb::CreateTenantRequest {
            request_id: format!("setup-{tenant}"),
            tenant_id: tenant.clone(),
            ..Default::default()
        };
        must(&c, r, |ch, r| async move { client::tenants(ch).create_tenant(r).await }).await?;
        let total = pb::Limits { instances: Some(*limit), ..Default::default() };
        let r = pb::SetQuotaRequest {
            request_id: format!("setup-quota-{tenant}"),
            tenant_id: tenant.clone(),
            quota: Some(pb::Quota { total: Some(total), ..Default::default() }),
        };
        must(&c, r, |ch, r| async move { client::tenants(ch).set_quota(r).await }).await?;
    }
    Ok(())
}

struct Recorder {
    client: u32,
    history: Arc<Mutex<Vec<Op>>>,
}

impl Recorder {
    fn record(&self, kind: OpKind, invoke_ms: u64, outcome: Outcome) -> Outcome {
        let op = Op { client: self.client, kind, invoke_ms, complete_ms: now_ms(), outcome };
        let outcome = op.outcome.clone();
        lock(&self.history).push(op);
        outcome
    }
}

async fn place(
    c: &Client,
    rec: &Recorder,
    request_id: String,
    tenant: &str,
    placement: &str,
    instances: u64,
) -> Outcome {
    let spec = pb::PlacementSpec {
        placement_id: placement.to_string(),
        count: u32::try_from(instances).unwrap_or(1),
        resources: Some(pb::Resources { cpu_millis: 100, memory_mib: 64 }),
        ..Default::default()
    };
    let r = pb::PlaceRequest {
        request_id,
        tenant_id: tenant.to_string(),
        spec: Some(spec),
        ..Default::default()
    };
    let invoked = now_ms();
    let outcome = match c.call(r, |ch, r| async move { client::scheduler(ch).place(r).await }).await
    {
        Ok(answer) => Outcome::Ok { log_index: answer.write.map(|w| w.log_index), found: None },
        Err(status) => outcome_of(&status),
    };
    let kind = OpKind::Place { tenant: tenant.into(), placement: placement.into(), instances };
    rec.record(kind, invoked, outcome)
}

async fn read(c: &Client, rec: &Recorder, tenant: &str, placement: &str) {
    let r = pb::GetPlacementRequest {
        tenant_id: tenant.to_string(),
        placement_id: placement.to_string(),
        ..Default::default()
    };
    let invoked = now_ms();
    let outcome = match c
        .call(r, |ch, r| async move { client::scheduler(ch).get_placement(r).await })
        .await
    {
        Ok(_) => Outcome::Ok { log_index: None, found: Some(true) },
        Err(status) if status.code() == Code::NotFound => {
            Outcome::Ok { log_index: None, found: Some(false) }
        }
        Err(status) => outcome_of(&status),
    };
    rec.record(
        OpKind::Read { tenant: tenant.into(), placement: placement.into() },
        invoked,
        outcome,
    );
}

/// Quota-bound Place/Release with a linearizable read after every acknowledged Place.
async fn workload(
    params: Params,
    index: u32,
    seed: u64,
    rec: Recorder,
    ready: Arc<AtomicBool>,
) -> Result<(), String> {
    let mut rng = Rng::new(seed ^ (u64::from(index) << 32));
    let c = api_client(params.replicas, Duration::from_secs(3))?;
    while !ready.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let tenants: Vec<String> = params.quotas.keys().cloned().collect();
    let mut live: Vec<(String, String)> = Vec::new();
    let mut n = 0u64;
    while now_ms() < params.workload_ms {
        n += 1;
        let request_id = format!("c{index}-{n}");
        if live.is_empty() || rng.below(5) < 3 {
            let tenant = &tenants[usize::try_from(rng.below(tenants.len() as u64)).unwrap_or(0)];
            let placement = format!("c{index}-p{n}");
            let instances = rng.between(1, 3);
            let outcome = place(&c, &rec, request_id, tenant, &placement, instances).await;
            if matches!(outcome, Outcome::Ok { .. }) {
                read(&c, &rec, tenant, &placement).await;
                live.push((tenant.clone(), placement));
            }
        } else {
            let at = usize::try_from(rng.below(live.len() as u64)).unwrap_or(0);
            let (tenant, placement) = live.swap_remove(at);
            let r = pb::ReleaseRequest {
                request_id,
                tenant_id: tenant.clone(),
                placement_id: placement.clone(),
                ..Default::default()
            };
            let invoked = now_ms();
            let outcome = match c
                .call(r, |ch, r| async move { client::scheduler(ch).release(r).await })
                .await
            {
                Ok(answer) => {
                    Outcome::Ok { log_index: answer.write.map(|w| w.log_index), found: None }
                }
                Err(status) => outcome_of(&status),
            };
            rec.record(OpKind::Release { tenant, placement }, invoked, outcome);
        }
        tokio::time::sleep(Duration::from_millis(rng.between(1, 30))).await;
    }
    Ok(())
}

/// After healing: a fresh write must succeed within the bound, and every acknowledged
/// placement is read back (the checker decides which must be there).
async fn final_phase(params: Params, rec: Recorder, healed: Arc<AtomicBool>) -> Result<(), String> {
    let c = api_client(params.replicas, LIVENESS_BOUND)?;
    while !healed.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let started = now_ms();
    let r = pb::RegisterWorkerRequest {
        request_id: "final-liveness".into(),
        worker_id: "w-final".into(),
        capacity: Some(pb::Resources { cpu_millis: 1, memory_mib: 1 }),
        ..Default::default()
    };
    c.call(r, |ch, r| async move { client::workers(ch).register_worker(r).await }).await.map_err(
        |s| format!("liveness: no fresh write within {LIVENESS_BOUND:?} of healing: {s:?}"),
    )?;
    tracing::info!(ms = now_ms() - started, "fresh write after healing");
    let placed: Vec<(String, String)> = lock(&rec.history)
        .iter()
        .filter_map(|op| match (&op.kind, &op.outcome) {
            (OpKind::Place { tenant, placement, .. }, Outcome::Ok { .. }) => {
                Some((tenant.clone(), placement.clone()))
            }
            _ => None,
        })
        .collect();
    for (tenant, placement) in placed {
        read(&c, &rec, &tenant, &placement).await;
    }
    Ok(())
}

/// Watches every running replica: core invariants, one leader per term, and equal state at
/// equal applied command index.
#[derive(Default)]
struct Watcher {
    leaders: BTreeMap<u64, u64>,
    hashes: BTreeMap<u64, String>,
    violations: Vec<String>,
}

impl Watcher {
    fn check(&mut self, slots: &[Slot], trace: &mut Vec<String>, at: u64) {
        for slot in slots {
            let Some(replica) = lock(slot).clone() else { continue };
            let status = replica.status();
            trace.push(format!(
                "{at} r{} {} t{} a{} {}",
                status.id,
                status.role,
                status.term,
                status.applied_command_index,
                status.state_hash
            ));
            if status.role == "Leader" {
                if let Some(other) = self.leaders.insert(status.term, status.id) {
                    if other != status.id {
                        self.violations.push(format!(
                            "two leaders in term {}: r{other} and r{}",
                            status.term, status.id
                        ));
                    }
                }
            }
            let index = status.applied_command_index;
            match self.hashes.get(&index) {
                Some(hash) if *hash != status.state_hash => self.violations.push(format!(
                    "r{} differs from another replica at command index {index}",
                    status.id
                )),
                Some(_) => {}
                None => {
                    self.hashes.insert(index, status.state_hash.clone());
                }
            }
            if let Err(broken) = replica.read_local(|s| s.scheduler.check_invariants()) {
                self.violations.push(format!("r{} broke invariants: {broken:?}", status.id));
            }
        }
    }
}

/// Runs one seed to the end and checks it.
pub fn run(seed: u64) -> Report {
    let mut rng = Rng::new(seed);
    let params = Params::from_seed(&mut rng);
    berth::raft::runtime::seed_thread_rng(rng.next_u64());
    let mut report = Report { seed, params: Some(params.clone()), ..Default::default() };
    let mut trace: Vec<String> = Vec::new();

    let mut sim = turmoil::Builder::new()
        .rng_seed(rng.next_u64())
        .epoch(SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000))
        .simulation_duration(Duration::from_secs(600))
        .tick_duration(Duration::from_millis(1))
        .min_message_latency(Duration::from_micros(200))
        .max_message_latency(Duration::from_millis(3))
        .build();

    let members: BTreeMap<u64, String> =
        (1..=params.replicas).map(|id| (id, format!("{}:{PEER_PORT}", host(id)))).collect();
    let mut slots: Vec<Slot> = Vec::new();
    let mut clocks: Vec<SimClock> = Vec::new();
    for id in 1..=params.replicas {
        let slot: Slot = Arc::default();
        let clock = SimClock::default();
        let log: Arc<Mutex<MemLog>> = Arc::default();
        let snapshot: Arc<Mutex<Option<StoredSnapshot>>> = Arc::default();
        let (s, c, m, snapshot_logs) =
            (slot.clone(), clock.clone(), members.clone(), params.snapshot_logs);
        sim.host(host(id), move || {
            let (slot, clock, members, log, snapshot) =
                (s.clone(), c.clone(), m.clone(), log.clone(), snapshot.clone());
            async move {
                let mut options = ReplicaOptions::new(id, format!("{}:{PEER_PORT}", host(id)));
                options.heartbeat_ms = 50;
                options.election_timeout_min_ms = 300;
                options.election_timeout_max_ms = 600;
                options.snapshot_logs = snapshot_logs;
                options.snapshot_keep_logs = 5;
                options.tick_idle = Duration::from_millis(200);
                options.write_deadline = Duration::from_secs(2);
                let storage = Storage {
                    log: LogStore::memory(log),
                    snapshots: SnapshotStore::Memory(snapshot),
                };
                let listeners = Listeners {
                    peer: net::listen(PEER_PORT).await?,
                    api: Some((net::listen(API_PORT).await?, berth::api::hash_token(ADMIN))),
                };
                let bootstrap = (id == 1).then_some(members);
                let server = Server::start(
                    options,
                    storage,
                    Arc::new(clock),
                    net::connect(),
                    listeners,
                    bootstrap,
                )
                .await
                .map_err(|e| e.to_string())?;
                *lock(&slot) = Some(server.replica.clone());
                std::future::pending::<()>().await;
                drop(server);
                Ok(())
            }
        });
        slots.push(slot);
        clocks.push(clock);
    }

    let history: Arc<Mutex<Vec<Op>>> = Arc::default();
    let ready = Arc::new(AtomicBool::new(false));
    let healed = Arc::new(AtomicBool::new(false));
    {
        let (params, ready) = (params.clone(), ready.clone());
        sim.client("setup", async move {
            setup(params).await?;
            ready.store(true, Ordering::SeqCst);
            Ok(())
        });
    }
    for index in 1..=params.clients {
        let rec = Recorder { client: index, history: history.clone() };
        let (params, ready) = (params.clone(), ready.clone());
        sim.client(format!("c{index}"), async move {
            workload(params, index, seed, rec, ready).await?;
            Ok(())
        });
    }
    {
        let rec = Recorder { client: 0, history: history.clone() };
        let (params, healed) = (params.clone(), healed.clone());
        sim.client("final", async move {
            final_phase(params, rec, healed).await?;
            Ok(())
        });
    }

    let mut nemesis = crate::nemesis::Nemesis::new(rng.next_u64(), params.replicas);
    let mut watcher = Watcher::default();
    let mut step = 0u64;
    loop {
        let finished = match sim.step() {
            Ok(finished) => finished,
            Err(e) => {
                report.violations.push(format!("a simulated node failed: {e}"));
                break;
            }
        };
        step += 1;
        let at = u64::try_from(sim.elapsed().as_millis()).unwrap_or(u64::MAX);
        if at < params.workload_ms {
            if let Some(fault) = nemesis.maybe_act(at, &mut sim, &slots, &clocks) {
                trace.push(format!("{at} fault {fault}"));
                report.faults.push(format!("{at} ms: {fault}"));
            }
        } else if !healed.load(Ordering::SeqCst) {
            let healing = nemesis.heal(&mut sim, &clocks);
            trace.push(format!("{at} heal {healing}"));
            report.faults.push(format!("{at} ms: heal ({healing})"));
            healed.store(true, Ordering::SeqCst);
        }
        if step % 25 == 0 {
            watcher.check(&slots, &mut trace, at);
        }
        if step % 1_000 == 0 {
            tracing::info!(sim_ms = at, ops = lock(&history).len(), "progress");
        }
        if finished {
            break;
        }
    }
    // Convergence: every replica reaches the same state.
    let until = sim.elapsed() + CONVERGENCE_BOUND;
    let converged = loop {
        let states: Vec<(u64, String)> = slots
            .iter()
            .filter_map(|s| lock(s).clone())
            .map(|r| r.status())
            .map(|s| (s.applied_command_index, s.state_hash))
            .collect();
        if states.len() == slots.len() && states.windows(2).all(|w| w[0] == w[1]) {
            break true;
        }
        if sim.elapsed() > until || sim.step().is_err() {
            break false;
        }
    };
    if !converged {
        report.violations.push(format!(
            "replicas did not converge within {CONVERGENCE_BOUND:?} after the clients finished"
        ));
    }
    let at = u64::try_from(sim.elapsed().as_millis()).unwrap_or(u64::MAX);
    watcher.check(&slots, &mut trace, at);
    report.violations.append(&mut watcher.violations);

    let history = lock(&history).clone();
    report.violations.extend(check(&history, &params.quotas));
    for op in &history {
        trace.push(serde_json::to_string(op).unwrap_or_default());
        match op.outcome {
            Outcome::Ok { .. } => report.ok += 1,
            Outcome::Fail { .. } => report.fail += 1,
            Outcome::Info { .. } => report.info += 1,
        }
    }
    report.ops = history.len();
    report.history = history;
    report.simulated_ms = at;
    let mut hasher = Sha256::new();
    for line in &trace {
        hasher.update(line.as_bytes());
        hasher.update(b"\n");
    }
    report.trace_hash = berth::raft::replica::hex(&hasher.finalize());
    report
}
