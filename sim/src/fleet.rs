//! **fleet**: workers that live and die (issue 18), under agent faults and the replica faults.
//!
//! Each worker of pool `fleet` is driven by an agent, a turmoil host of its own: it heartbeats
//! every third of the pool's TTL, looks at its instances (`ListWorkerPlacements`) and reports
//! them RUNNING, sometimes COMPLETED or FAILED, and sometimes with a deliberately stale
//! `assigned_at` (which must be refused). Tenant `fleet` places spread placements of 2–3
//! instances (some with anti-affinity among their own instances, some `on_worker_lost =
//! release`, some with a time limit, some through the queue) and observes the workers and
//! their placements. The fault driver crashes an agent's host (restarted later), pauses it
//! between looking and reporting for longer than the TTL, or partitions it from every replica;
//! the nemesis's replica faults run at the same time. After healing, the agents only
//! heartbeat; the tenant waits out the time limits and reads the final state until two reads
//! agree.
//!
//! What everyone saw is an [`Event`] list, checked after the run by [`check`]. No read
//! carries its log index, so a read's state is bounded below by what was acknowledged (or
//! read) before it began: a log index in any answer, an instance's `assigned_at`, a worker
//! transition's index. Every check is sound with that bound alone.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth::client::{self, pb, Client, ClientSecurity};
use berth_rng::Rng;
use serde::Serialize;

use crate::cluster::{api_client, host, lock, now_ms, replica_client, Params};
use crate::history::Outcome;
use crate::ops::{must, outcome_of};

pub const TENANT: &str = "fleet";
pub const POOL: &str = "fleet";
const WORKER_CPU_MILLIS: u64 = 1_000;
/// How long the tenant places and the faults run (simulated ms).
pub const WORKLOAD_MS: u64 = 10_000;
/// Reports an agent sends per look at its instances.
const REPORTS_PER_LOOK_MAX: usize = 4;
/// The final reads must agree twice within this long after the settle.
const SETTLE_BOUND_MS: u64 = 20_000;
const TIME_LIMIT_MS: (u64, u64) = (1_000, 3_000);

/// The fleet a seed picks (its own random stream: the other clients draw as before).
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Plan {
    pub agents: u64,
    pub ttl_ms: u64,
    /// The nemesis's replica faults run too (on the other seeds, only agent faults: every
    /// leader change extends live workers' TTLs by the lease grace, so fewer go down).
    pub replica_faults: bool,
}

impl Plan {
    pub fn from_seed(seed: u64) -> Plan {
        let mut rng = Rng::new(seed ^ 0xF1EE_7000);
        let (agents, ttl_ms) = (rng.between(4, 6), rng.between(4, 6) * 500);
        Plan { agents, ttl_ms, replica_faults: rng.below(2) == 0 }
    }
}

pub fn worker(i: u64) -> String {
    format!("aw{i}")
}

fn agent_host(i: u64) -> String {
    format!("agent{i}")
}

/// A worker as a read showed it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct WorkerView {
    pub worker: String,
    pub down: bool,
    pub generation: u64,
    pub allocated_cpu: u64,
    /// Log indexes of its Down transitions (as far as its bounded history goes).
    pub downs: Vec<u64>,
}

/// A placement as a read showed it: its instances as (worker, assigned_at).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PlacementView {
    pub placement: String,
    pub cpu: u64,
    pub instances: Vec<(String, u64)>,
}

/// A finished record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FinishedView {
    pub placement: String,
    pub reason: String,
    pub log_index: u64,
    pub placed_at_ms: u64,
    pub ended_at_ms: u64,
}

/// What a Place asked for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Spec {
    pub placement: String,
    pub count: u64,
    pub cpu: u64,
    pub anti_affinity: bool,
    pub release_when_lost: bool,
    pub queue: bool,
    pub max_runtime_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Answer {
    /// Placed (with where), or queued (no view), at `log_index`.
    Ok {
        log_index: u64,
        placed: Option<PlacementView>,
        finished: String,
    },
    Refused {
        reason: String,
    },
    Unknown,
}

impl Answer {
    fn from_status(status: &tonic::Status) -> Answer {
        match outcome_of(status) {
            Outcome::Fail { reason } => Answer::Refused { reason },
            _ => Answer::Unknown,
        }
    }

    fn log_index(&self) -> Option<u64> {
        match self {
            Answer::Ok { log_index, .. } => Some(*log_index),
            _ => None,
        }
    }
}

/// The final state, read until two reads agree.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Final {
    pub workers: Vec<WorkerView>,
    /// `ListWorkerPlacements` of each worker.
    pub on_worker: BTreeMap<String, Vec<PlacementView>>,
    /// The tenant's placements, queue and finished records.
    pub placements: Vec<PlacementView>,
    pub queued: Vec<String>,
    pub finished: Vec<FinishedView>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "seen", rename_all = "snake_case")]
pub enum Seen {
    Place {
        spec: Spec,
        answer: Answer,
    },
    /// A heartbeat and its answer: (log index, generation, revived).
    Heartbeat {
        worker: String,
        ack: Option<(u64, u64, bool)>,
    },
    Report {
        worker: String,
        placement: String,
        slot: u32,
        assigned_at: u64,
        status: String,
        /// Sent with an `assigned_at` below the one seen: must be refused.
        deliberately_stale: bool,
        answer: Answer,
    },
    /// A message of an agent's `WatchAssignments` stream: the replica's applied index it is
    /// of, and the instances (placement, assigned_at) the agent holds once it is applied.
    Assigned {
        worker: String,
        log_index: u64,
        generation: u64,
        down: bool,
        holds: Vec<(String, u64)>,
    },
    /// `ListWorkers` of the pool.
    Workers {
        workers: Vec<WorkerView>,
    },
    /// `ListWorkerPlacements` of one worker.
    OnWorker {
        worker: String,
        placements: Vec<PlacementView>,
    },
    Final(Final),
    /// An event the watcher received: its position, on which replica, in which round, and
    /// the whole event (its debug form: equal events print alike).
    Watched {
        round: u32,
        replica: u64,
        log_index: u64,
        event: u32,
        what: String,
    },
    /// After the final state: a fresh watch from the start of `replica`'s journal, up to the
    /// watcher's last position (replica 0: every replica had compacted it).
    Replay {
        replica: u64,
        events: Vec<(u64, u32, String)>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Event {
    pub invoke_ms: u64,
    pub complete_ms: u64,
    #[serde(flatten)]
    pub seen: Seen,
}

impl Event {
    /// The newest log index this answer proves the cluster had reached.
    fn reached(&self) -> u64 {
        let views = |ps: &[PlacementView]| {
            ps.iter().flat_map(|p| p.instances.iter().map(|(_, a)| *a)).max().unwrap_or(0)
        };
        let workers = |ws: &[WorkerView]| {
            ws.iter().flat_map(|w| w.downs.iter().chain([&w.generation])).copied().max()
        };
        match &self.seen {
            Seen::Place { answer, .. } | Seen::Report { answer, .. } => {
                answer.log_index().unwrap_or(0)
            }
            Seen::Heartbeat { ack, .. } => ack.map_or(0, |(i, g, _)| i.max(g)),
            Seen::Assigned { log_index, .. } | Seen::Watched { log_index, .. } => *log_index,
            Seen::Replay { .. } => 0,
            Seen::Workers { workers: ws } => workers(ws).unwrap_or(0),
            Seen::OnWorker { placements, .. } => views(placements),
            Seen::Final(f) => workers(&f.workers).unwrap_or(0).max(views(&f.placements)),
        }
    }

    /// Every placement this answer showed.
    fn placements(&self) -> Vec<PlacementView> {
        match &self.seen {
            Seen::Place { answer: Answer::Ok { placed: Some(p), .. }, .. } => vec![p.clone()],
            Seen::OnWorker { placements, .. } => placements.clone(),
            Seen::Assigned { worker, holds, .. } => {
                let mut by: BTreeMap<&str, PlacementView> = BTreeMap::new();
                for (p, at) in holds {
                    let view = by.entry(p).or_insert_with(|| PlacementView {
                        placement: p.clone(),
                        cpu: 0,
                        instances: Vec::new(),
                    });
                    view.instances.push((worker.clone(), *at));
                }
                by.into_values().collect()
            }
            Seen::Final(f) => {
                f.placements.iter().chain(f.on_worker.values().flatten()).cloned().collect()
            }
            _ => Vec::new(),
        }
    }
}

/// What the fleet's clients and agents share with each other and the run loop.
#[derive(Default)]
pub(crate) struct Shared {
    pub(crate) events: Mutex<Vec<Event>>,
    /// The tenant, the pool and the workers exist.
    ready: AtomicBool,
    /// After healing: agents only heartbeat, so the final state settles.
    settling: AtomicBool,
    /// The final state is read.
    settled: AtomicBool,
    /// An agent paused between looking at its instances and reporting on them.
    paused: Vec<AtomicBool>,
    /// Starts of each agent's host (request ids stay unique across restarts).
    boots: Vec<AtomicU64>,
}

impl Shared {
    pub(crate) fn new(plan: Plan) -> Shared {
        let n = usize::try_from(plan.agents).unwrap_or(0);
        Shared {
            paused: (0..n).map(|_| AtomicBool::new(false)).collect(),
            boots: (0..n).map(|_| AtomicU64::new(0)).collect(),
            ..Shared::default()
        }
    }

    fn note(&self, invoke_ms: u64, seen: Seen) {
        lock(&self.events).push(Event { invoke_ms, complete_ms: now_ms(), seen });
    }
}

fn worker_view(w: &pb::Worker) -> WorkerView {
    use pb::worker_transition::State;
    WorkerView {
        worker: w.worker_id.clone(),
        down: w.down_since_ms.is_some(),
        generation: w.generation,
        allocated_cpu: w.allocated.as_ref().map_or(0, |r| r.cpu_millis),
        downs: w.history.iter().filter(|t| t.state() == State::Down).map(|t| t.log_index).collect(),
    }
}

fn placement_view(p: &pb::Placement) -> PlacementView {
    let spec = p.spec.clone().unwrap_or_default();
    PlacementView {
        placement: spec.placement_id,
        cpu: spec.resources.map_or(0, |r| r.cpu_millis),
        instances: p.instances.iter().map(|i| (i.worker_id.clone(), i.assigned_at)).collect(),
    }
}

fn page() -> Option<pb::Page> {
    Some(pb::Page { after: String::new(), limit: 1_000 })
}

async fn list_workers(c: &Client) -> Result<Vec<WorkerView>, tonic::Status> {
    let r = pb::ListWorkersRequest { pool: POOL.into(), page: page(), read: None };
    let a = c.call(r, |ch, r| async move { client::workers(ch).list_workers(r).await }).await?;
    Ok(a.workers.iter().map(worker_view).collect())
}

async fn on_worker(c: &Client, worker: &str) -> Result<Vec<PlacementView>, tonic::Status> {
    let r = pb::ListWorkerPlacementsRequest { worker_id: worker.into(), page: page(), read: None };
    let rpc = |ch, r| async move { client::workers(ch).list_worker_placements(r).await };
    Ok(c.call(r, rpc).await?.placements.iter().map(placement_view).collect())
}

/// Records `ListWorkers`, then `ListWorkerPlacements` of every worker it listed.
async fn observe(c: &Client, shared: &Shared) {
    let invoked = now_ms();
    let Ok(workers) = list_workers(c).await else { return };
    let names: Vec<String> = workers.iter().map(|w| w.worker.clone()).collect();
    shared.note(invoked, Seen::Workers { workers });
    for worker in names {
        let invoked = now_ms();
        if let Ok(placements) = on_worker(c, &worker).await {
            shared.note(invoked, Seen::OnWorker { worker, placements });
        }
    }
}

async fn read_final(c: &Client) -> Result<Final, tonic::Status> {
    let workers = list_workers(c).await?;
    let mut on = BTreeMap::new();
    for w in &workers {
        on.insert(w.worker.clone(), on_worker(c, &w.worker).await?);
    }
    let r = pb::ListPlacementsRequest { tenant_id: TENANT.into(), page: page(), read: None };
    let rpc = |ch, r| async move { client::scheduler(ch).list_placements(r).await };
    let placements = c.call(r, rpc).await?.placements.iter().map(placement_view).collect();
    let r = pb::ListQueueRequest { tenant_id: TENANT.into(), page: page(), read: None };
    let rpc = |ch, r| async move { client::scheduler(ch).list_queue(r).await };
    let queued = c
        .call(r, rpc)
        .await?
        .queued
        .into_iter()
        .map(|q| q.spec.unwrap_or_default().placement_id)
        .collect();
    let r = pb::ListFinishedRequest { tenant_id: TENANT.into(), page: page(), read: None };
    let rpc = |ch, r| async move { client::scheduler(ch).list_finished(r).await };
    let finished = c
        .call(r, rpc)
        .await?
        .finished
        .into_iter()
        .map(|f| FinishedView {
            placement: f.placement_id,
            reason: f.reason,
            log_index: f.log_index,
            placed_at_ms: f.placed_at_ms,
            ended_at_ms: f.ended_at_ms,
        })
        .collect();
    Ok(Final { workers, on_worker: on, placements, queued, finished })
}

async fn setup(c: &Client, plan: Plan) -> Result<(), String> {
    let r = pb::CreateTenantRequest {
        request_id: "setup-fleet".into(),
        tenant_id: TENANT.into(),
        ..Default::default()
    };
    must(c, r, |ch, r| async move { client::tenants(ch).create_tenant(r).await }).await?;
    for i in 1..=plan.agents {
        let r = pb::RegisterWorkerRequest {
            request_id: format!("setup-{}", worker(i)),
            worker_id: worker(i),
            pool: POOL.into(),
            capacity: Some(pb::Resources { cpu_millis: WORKER_CPU_MILLIS, memory_mib: 1_000_000 }),
            ..Default::default()
        };
        must(c, r, |ch, r| async move { client::workers(ch).register_worker(r).await }).await?;
    }
    let r = pb::SetPoolWorkerTtlRequest {
        request_id: "setup-fleet-ttl".into(),
        pool: POOL.into(),
        ttl_ms: plan.ttl_ms,
        reset: false,
    };
    must(c, r, |ch, r| async move { client::workers(ch).set_pool_worker_ttl(r).await }).await?;
    Ok(())
}

fn spec(rng: &mut Rng, n: u64) -> Spec {
    let timed = rng.below(4) == 0;
    Spec {
        placement: format!("f{n}"),
        count: rng.between(2, 3),
        cpu: rng.between(3, 7) * 50,
        anti_affinity: rng.below(3) == 0,
        release_when_lost: rng.below(4) == 0,
        // The settle waits out every time limit: no timed placement waits in the queue.
        queue: !timed && rng.below(3) == 0,
        max_runtime_ms: if timed { rng.between(TIME_LIMIT_MS.0, TIME_LIMIT_MS.1) } else { 0 },
    }
}

async fn place(c: &Client, shared: &Shared, spec: Spec) {
    let labels = BTreeMap::from([("app".to_string(), spec.placement.clone())]);
    let term = pb::LabelTerm { key: "app".into(), value: spec.placement.clone() };
    let r = pb::PlaceRequest {
        request_id: format!("fleet-{}", spec.placement),
        tenant_id: TENANT.into(),
        spec: Some(pb::PlacementSpec {
            placement_id: spec.placement.clone(),
            count: u32::try_from(spec.count).unwrap_or(1),
            resources: Some(pb::Resources { cpu_millis: spec.cpu, memory_mib: 64 }),
            pool: POOL.into(),
            strategy: pb::Strategy::Spread.into(),
            labels: if spec.anti_affinity {
                labels.into_iter().collect()
            } else {
                Default::default()
            },
            anti_affinity: if spec.anti_affinity { vec![term] } else { Vec::new() },
            on_worker_lost: if spec.release_when_lost {
                pb::OnWorkerLost::Release.into()
            } else {
                pb::OnWorkerLost::Reschedule.into()
            },
            max_runtime_ms: spec.max_runtime_ms,
            ..Default::default()
        }),
        queue_if_unavailable: spec.queue,
        ..Default::default()
    };
    let invoked = now_ms();
    let answer = match c.call(r, |ch, r| async move { client::scheduler(ch).place(r).await }).await
    {
        Ok(a) => Answer::Ok {
            log_index: a.write.map_or(0, |w| w.log_index),
            placed: a.placement.as_ref().map(placement_view),
            finished: String::new(),
        },
        Err(status) => Answer::from_status(&status),
    };
    shared.note(invoked, Seen::Place { spec, answer });
}

/// The tenant: setup, placements and observations while the faults run, then (after healing)
/// the settle and the final reads.
pub(crate) async fn tenant(
    params: Params,
    tls: ClientSecurity,
    plan: Plan,
    shared: Arc<Shared>,
    healed: Arc<AtomicBool>,
    seed: u64,
) -> Result<(), String> {
    let mut rng = Rng::new(seed);
    let c = api_client(params.replicas, &tls, Duration::from_secs(5))?;
    setup(&c, plan).await?;
    shared.ready.store(true, Ordering::SeqCst);
    let mut n = 0;
    while now_ms() < params.workload_ms {
        n += 1;
        place(&c, &shared, spec(&mut rng, n)).await;
        observe(&c, &shared).await;
        tokio::time::sleep(Duration::from_millis(rng.between(100, 500))).await;
    }
    while !healed.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    shared.settling.store(true, Ordering::SeqCst);
    // Reports in flight land, every agent heartbeats again, every time limit passes.
    tokio::time::sleep(Duration::from_millis(2 * plan.ttl_ms + TIME_LIMIT_MS.1)).await;
    let until = now_ms() + SETTLE_BOUND_MS;
    let mut last: Option<Final> = None;
    while now_ms() < until {
        let invoked = now_ms();
        match read_final(&c).await {
            Ok(read) if last.as_ref() == Some(&read) => {
                shared.note(invoked, Seen::Final(read));
                shared.settled.store(true, Ordering::SeqCst);
                return Ok(());
            }
            Ok(read) => last = Some(read),
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(plan.ttl_ms / 2)).await;
    }
    Err(format!("fleet: the final state did not settle within {SETTLE_BOUND_MS} ms of healing"))
}

fn status_name(status: pb::InstanceStatus) -> String {
    status.as_str_name().trim_start_matches("INSTANCE_STATUS_").to_string()
}

/// What an agent's assignment stream has told it so far.
#[derive(Default)]
struct Held {
    /// (placement, slot) → (assigned_at, running), this tenant's instances only.
    slots: BTreeMap<(String, u32), (u64, bool)>,
}

/// Follows `Workers.WatchAssignments` for `me` into `held`, recording each view (the
/// replica's applied index it is of, and what the agent then holds). Reopens when the stream
/// ends; the first message of each stream is the full set.
async fn follow(c: Client, me: String, held: Arc<Mutex<Held>>, shared: Arc<Shared>) {
    loop {
        let r = pb::WatchAssignmentsRequest { worker_id: me.clone() };
        let rpc = |ch, r| async move { client::workers(ch).watch_assignments(r).await };
        let Ok(mut stream) = c.open(r, rpc).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        while let Ok(Some(m)) = stream.message().await {
            let invoked = now_ms();
            let mut held = lock(&held);
            if m.full {
                held.slots.clear();
            }
            let ours = |a: &&pb::Assignment| a.tenant_id == TENANT && !a.reservation;
            for a in m.unassigned.iter().filter(ours) {
                let key = (a.placement_id.clone(), a.slot);
                if held.slots.get(&key).is_some_and(|(at, _)| *at == a.assigned_at) {
                    held.slots.remove(&key);
                }
            }
            for a in m.assigned.iter().filter(ours) {
                held.slots.insert((a.placement_id.clone(), a.slot), (a.assigned_at, a.running));
            }
            let holds = held.slots.iter().map(|((p, _), (at, _))| (p.clone(), *at)).collect();
            drop(held);
            let seen = Seen::Assigned {
                worker: me.clone(),
                log_index: m.log_index,
                generation: m.generation,
                down: m.down,
                holds,
            };
            shared.note(invoked, seen);
        }
    }
}

/// One agent: heartbeat, take what its assignment stream says it holds, (a pause, if the
/// fault driver holds it here, after which it reports all of that COMPLETED,) report on it;
/// every third of the TTL. A failed heartbeat gets
/// fresh connections and a fresh stream (a partition leaves the old ones stalled).
pub(crate) async fn agent(
    params: Params,
    tls: ClientSecurity,
    plan: Plan,
    shared: Arc<Shared>,
    i: u64,
) -> Result<(), String> {
    let me = worker(i);
    let at = usize::try_from(i - 1).unwrap_or(0);
    let boot = shared.boots[at].fetch_add(1, Ordering::SeqCst);
    let mut rng = Rng::new(plan.ttl_ms ^ (i << 16) ^ (boot << 32));
    let period = Duration::from_millis(plan.ttl_ms / 3);
    let connect = || api_client(params.replicas, &tls, period);
    while !shared.ready.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let held: Arc<Mutex<Held>> = Arc::default();
    let start = |c: Client| tokio::spawn(follow(c, me.clone(), held.clone(), shared.clone()));
    let mut c = connect()?;
    let mut stream = start(connect()?);
    let mut n = 0u64;
    loop {
        let started = now_ms();
        let r = pb::HeartbeatRequest { worker_id: me.clone() };
        let rpc = |ch, r| async move { client::workers(ch).heartbeat(r).await };
        let ack = match c.call(r, rpc).await {
            Ok(a) => Some((a.write.map_or(0, |w| w.log_index), a.generation, a.revived)),
            Err(_) => {
                c = connect()?;
                stream.abort();
                stream = start(connect()?);
                None
            }
        };
        shared.note(started, Seen::Heartbeat { worker: me.clone(), ack });
        let mut reports: Vec<(String, u32, u64, bool)> = lock(&held)
            .slots
            .iter()
            .map(|((p, slot), (assigned_at, running))| (p.clone(), *slot, *assigned_at, *running))
            .collect();
        let mut resumed = false;
        while shared.paused[at].load(Ordering::SeqCst) {
            resumed = true;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        rng.shuffle(&mut reports);
        for (placement, slot, assigned_at, running) in
            reports.into_iter().take(REPORTS_PER_LOOK_MAX)
        {
            if shared.settling.load(Ordering::SeqCst) {
                break;
            }
            let (status, stale) = match rng.below(100) {
                // Back from a pause: what it held has finished, as far as it knows.
                _ if resumed => (pb::InstanceStatus::Completed, false),
                0..=4 => (pb::InstanceStatus::Running, true),
                5..=19 if running => (pb::InstanceStatus::Completed, false),
                20..=22 if running => (pb::InstanceStatus::Failed, false),
                _ if !running => (pb::InstanceStatus::Running, false),
                _ => continue,
            };
            let assigned_at = if stale { assigned_at.saturating_sub(1) } else { assigned_at };
            n += 1;
            let r = pb::ReportStatusRequest {
                request_id: format!("{me}-b{boot}-{n}"),
                worker_id: me.clone(),
                tenant_id: TENANT.into(),
                placement_id: placement.clone(),
                slot,
                assigned_at,
                status: status.into(),
                exit_code: i32::from(status == pb::InstanceStatus::Failed),
                message: String::new(),
            };
            let invoked = now_ms();
            let rpc = |ch, r| async move { client::workers(ch).report_status(r).await };
            let answer = match c.call(r, rpc).await {
                Ok(a) => Answer::Ok {
                    log_index: a.write.map_or(0, |w| w.log_index),
                    placed: None,
                    finished: a.finished_reason,
                },
                Err(status) => Answer::from_status(&status),
            };
            // The stream does not say when an instance starts running: the agent knows.
            if matches!(answer, Answer::Ok { .. }) && !stale {
                if let Some(slot) = lock(&held).slots.get_mut(&(placement.clone(), slot)) {
                    slot.1 |= slot.0 == assigned_at;
                }
            }
            let status = status_name(status);
            let deliberately_stale = stale;
            let seen = Seen::Report {
                worker: me.clone(),
                placement,
                slot,
                assigned_at,
                status,
                deliberately_stale,
                answer,
            };
            shared.note(invoked, seen);
        }
        let next = started + plan.ttl_ms / 3;
        tokio::time::sleep(Duration::from_millis(next.saturating_sub(now_ms()).max(1))).await;
    }
}

/// How long the watcher stays on one replica before it resumes on the next.
const WATCH_ROUND_MS: u64 = 1_500;

/// `Scheduler.Watch` of everything (admin), from the start of the journal, through
/// `Client::watch`, one replica per round, resuming on the next replica after the last
/// position; stops at the final state (or when no replica still holds its resume point).
/// Then a fresh watch from the start, on the first replica that still holds it all, replays
/// up to the last position seen.
pub(crate) async fn watcher(
    params: Params,
    tls: ClientSecurity,
    shared: Arc<Shared>,
) -> Result<(), String> {
    while !shared.ready.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut after: (u64, Option<u32>) = (0, None);
    let (mut round, mut compacted) = (0u32, 0u64);
    while !shared.settled.load(Ordering::SeqCst) && compacted < params.replicas {
        round += 1;
        let replica = u64::from(round) % params.replicas + 1;
        let c = replica_client(replica, &tls, Duration::from_secs(2))?;
        let request = pb::WatchRequest {
            tenant_id: String::new(),
            after_log_index: Some(after.0),
            after_event: after.1,
            kinds: Vec::new(),
        };
        let deliver = |m: pb::WatchResponse| {
            match m.message {
                Some(pb::watch_response::Message::Event(e)) => {
                    after = (e.log_index, Some(e.event));
                    let (log_index, event, what) = (e.log_index, e.event, format!("{e:?}"));
                    let seen = Seen::Watched { round, replica, log_index, event, what };
                    shared.note(now_ms(), seen);
                }
                Some(pb::watch_response::Message::Progress(p)) => {
                    after = (p.log_index, Some(p.event));
                }
                None => {}
            }
            true
        };
        let round_ms = Duration::from_millis(WATCH_ROUND_MS);
        match tokio::time::timeout(round_ms, c.watch(request, deliver)).await {
            Ok(Err(status)) if is_compacted(&status) => compacted += 1,
            Ok(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(_) => compacted = 0,
        }
    }
    while !shared.settled.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let last = (after.0, after.1.unwrap_or(0));
    for replica in 1..=params.replicas {
        let c = replica_client(replica, &tls, Duration::from_secs(2))?;
        let request = pb::WatchRequest { after_log_index: Some(0), ..Default::default() };
        let mut events = Vec::new();
        let deliver = |m: pb::WatchResponse| match m.message {
            Some(pb::watch_response::Message::Event(e)) if (e.log_index, e.event) <= last => {
                let done = (e.log_index, e.event) == last;
                events.push((e.log_index, e.event, format!("{e:?}")));
                !done
            }
            Some(pb::watch_response::Message::Event(_)) => false,
            _ => true,
        };
        let until = Duration::from_secs(5);
        if let Ok(Ok(())) = tokio::time::timeout(until, c.watch(request, deliver)).await {
            shared.note(now_ms(), Seen::Replay { replica, events });
            return Ok(());
        }
    }
    shared.note(now_ms(), Seen::Replay { replica: 0, events: Vec::new() });
    Ok(())
}

fn is_compacted(status: &tonic::Status) -> bool {
    matches!(outcome_of(status), Outcome::Fail { reason } if reason == "WATCH_COMPACTED")
}

/// Starts the fleet: an agent host per worker, the tenant client and the watcher.
pub(crate) fn spawn(
    sim: &mut turmoil::Sim<'_>,
    (params, tls): (&Params, &ClientSecurity),
    shared: &Arc<Shared>,
    healed: &Arc<AtomicBool>,
    seed: u64,
) {
    let plan = Plan::from_seed(seed);
    for i in 1..=plan.agents {
        let (params, tls, shared) = (params.clone(), tls.clone(), shared.clone());
        sim.host(agent_host(i), move || {
            let (params, tls, shared) = (params.clone(), tls.clone(), shared.clone());
            async move {
                agent(params, tls, plan, shared, i).await?;
                Ok(())
            }
        });
    }
    let (params, tls, shared, healed) =
        (params.clone(), tls.clone(), shared.clone(), healed.clone());
    {
        let (params, tls, shared) = (params.clone(), tls.clone(), shared.clone());
        sim.client("fleet-watcher", async move {
            watcher(params, tls, shared).await?;
            Ok(())
        });
    }
    sim.client("fleet", async move {
        tenant(params, tls, plan, shared, healed, seed ^ 0xF1EE_7E4A).await?;
        Ok(())
    });
}

enum AgentFault {
    Crash(u64),
    Pause(u64),
    Partition(u64),
}

/// The agent faults, at most `AGENT_FAULTS_MAX` at once on distinct agents: crash (the host
/// restarts later), pause, partition from every replica; most last longer than the TTL.
pub(crate) struct Faults {
    rng: Rng,
    plan: Plan,
    replicas: u64,
    next_at: u64,
    active: Vec<(AgentFault, u64, u64)>,
}

const AGENT_FAULTS_MAX: usize = 2;

impl Faults {
    pub(crate) fn new(seed: u64, replicas: u64) -> Faults {
        Faults {
            rng: Rng::new(seed ^ 0xFA17_0000),
            plan: Plan::from_seed(seed),
            replicas,
            next_at: 1_000,
            active: Vec::new(),
        }
    }

    fn end(&mut self, sim: &mut turmoil::Sim<'_>, shared: &Shared, fault: AgentFault) -> String {
        match fault {
            AgentFault::Crash(i) => {
                sim.bounce(agent_host(i));
                format!("restart agent {i}")
            }
            AgentFault::Pause(i) => {
                shared.paused[usize::try_from(i - 1).unwrap_or(0)].store(false, Ordering::SeqCst);
                format!("resume agent {i}")
            }
            AgentFault::Partition(i) => {
                for r in 1..=self.replicas {
                    sim.repair(agent_host(i), host(r));
                }
                format!("reconnect agent {i}")
            }
        }
    }

    /// Starts or ends an agent fault when one is due; says what it did.
    pub(crate) fn act(
        &mut self,
        at: u64,
        sim: &mut turmoil::Sim<'_>,
        shared: &Shared,
    ) -> Option<String> {
        if let Some(k) = self.active.iter().position(|(_, _, until)| at >= *until) {
            let (fault, _, _) = self.active.remove(k);
            return Some(self.end(sim, shared, fault));
        }
        if at < self.next_at || self.active.len() >= AGENT_FAULTS_MAX {
            return None;
        }
        self.next_at = at + self.rng.between(200, 1_000);
        let i = self.rng.between(1, self.plan.agents);
        if self.active.iter().any(|(_, busy, _)| *busy == i) {
            return None;
        }
        let ttl = self.plan.ttl_ms;
        // One in four shorter than the TTL (the worker may stay up).
        let lasts = if self.rng.below(4) == 0 {
            self.rng.between(ttl / 4, ttl)
        } else {
            self.rng.between(ttl + 200, 2 * ttl)
        };
        let (fault, what) = match self.rng.below(3) {
            0 => {
                sim.crash(agent_host(i));
                (AgentFault::Crash(i), "crash")
            }
            1 => {
                shared.paused[usize::try_from(i - 1).unwrap_or(0)].store(true, Ordering::SeqCst);
                (AgentFault::Pause(i), "pause")
            }
            _ => {
                for r in 1..=self.replicas {
                    sim.partition(agent_host(i), host(r));
                }
                (AgentFault::Partition(i), "partition")
            }
        };
        self.active.push((fault, i, at + lasts));
        Some(format!("{what} agent {i} for {lasts} ms"))
    }

    /// Ends the agent faults still running.
    pub(crate) fn heal(&mut self, sim: &mut turmoil::Sim<'_>, shared: &Shared) -> Option<String> {
        let ended: Vec<String> = std::mem::take(&mut self.active)
            .into_iter()
            .map(|(fault, _, _)| self.end(sim, shared, fault))
            .collect();
        (!ended.is_empty()).then(|| ended.join(", "))
    }
}

/// The log index each event's read (or write) is known to be at or after: the newest index
/// any answer that completed before it began had reached (its own, for a write).
fn floors(events: &[Event]) -> Vec<u64> {
    let mut done: Vec<(u64, u64)> = events.iter().map(|e| (e.complete_ms, e.reached())).collect();
    done.sort_unstable();
    let mut best = 0;
    let prefix: Vec<(u64, u64)> = done
        .into_iter()
        .map(|(at, i)| {
            best = best.max(i);
            (at, best)
        })
        .collect();
    events
        .iter()
        .map(|e| {
            let before = prefix.partition_point(|(at, _)| *at < e.invoke_ms);
            let seen = before.checked_sub(1).map_or(0, |k| prefix[k].1);
            match e.seen {
                Seen::Place { .. } | Seen::Report { .. } | Seen::Heartbeat { .. } => {
                    seen.max(e.reached())
                }
                // A stream's view is of its replica's applied index, which may lag.
                Seen::Assigned { log_index, .. } => log_index,
                _ => seen,
            }
        })
        .collect()
}

/// Every Down transition seen, by worker.
fn downs(events: &[Event]) -> BTreeMap<&str, BTreeSet<u64>> {
    let mut downs: BTreeMap<&str, BTreeSet<u64>> = BTreeMap::new();
    for e in events {
        let ws = match &e.seen {
            Seen::Workers { workers } => workers,
            Seen::Final(f) => &f.workers,
            _ => continue,
        };
        for w in ws {
            downs.entry(w.worker.as_str()).or_default().extend(w.downs.iter().copied());
        }
    }
    downs
}

/// A Down after `after`, at or before `upto`.
fn down_between(downs: &BTreeSet<u64>, after: u64, upto: u64) -> Option<u64> {
    downs.range(after.saturating_add(1)..).next().copied().filter(|d| *d <= upto)
}

fn final_state(events: &[Event]) -> Option<&Final> {
    events.iter().rev().find_map(|e| match &e.seen {
        Seen::Final(f) => Some(f),
        _ => None,
    })
}

/// No instance is observed on a worker that went down after the instance was assigned there
/// and before the read (a down worker holds nothing: its instances moved or ended in the entry
/// that marked it down); nor, in the final state, on a worker the same read shows down.
pub fn check_no_instance_on_down(events: &[Event]) -> Vec<String> {
    let mut bad = Vec::new();
    let downs = downs(events);
    for (e, floor) in events.iter().zip(floors(events)) {
        for p in e.placements() {
            for (w, assigned_at) in &p.instances {
                let Some(d) = downs.get(w.as_str()) else { continue };
                if let Some(down) = down_between(d, *assigned_at, floor) {
                    bad.push(format!(
                        "{} seen on {w} (assigned at {assigned_at}) by a read at log index {floor} or later ({}–{} ms), but {w} went down at {down}",
                        p.placement, e.invoke_ms, e.complete_ms
                    ));
                }
            }
        }
    }
    for e in events {
        if let Seen::Assigned { worker, log_index, down: true, holds, .. } = &e.seen {
            if !holds.is_empty() {
                bad.push(format!(
                    "{worker}'s assignments at log index {log_index} say it is down but hold {holds:?}"
                ));
            }
        }
    }
    if let Some(f) = final_state(events) {
        let down: BTreeSet<&str> =
            f.workers.iter().filter(|w| w.down).map(|w| w.worker.as_str()).collect();
        for p in f.placements.iter().chain(f.on_worker.values().flatten()) {
            for (w, _) in p.instances.iter().filter(|(w, _)| down.contains(w.as_str())) {
                bad.push(format!(
                    "final state: {} has an instance on {w}, which is down",
                    p.placement
                ));
            }
        }
    }
    bad
}

/// By the end every placement is in exactly one place: placed (on live workers), queued, or
/// finished with a reason that happened — WORKER_LOST only at the entry where a worker went
/// down, COMPLETED/FAILED only after such a report, TIME_LIMIT exactly at its limit. An
/// acknowledged one is never nowhere; a refused one never anywhere; an anti-affinity one
/// never has two instances on one worker.
pub fn check_fates(events: &[Event]) -> Vec<String> {
    let mut bad = Vec::new();
    let Some(f) = final_state(events) else {
        return vec!["fleet: no final state was read".into()];
    };
    let downs = downs(events);
    let lost_at: BTreeSet<u64> = downs.values().flatten().copied().collect();
    let reported: BTreeSet<(&str, &str)> = events
        .iter()
        .filter_map(|e| match &e.seen {
            Seen::Report { placement, status, answer, .. }
                if !matches!(answer, Answer::Refused { .. }) =>
            {
                Some((placement.as_str(), status.as_str()))
            }
            _ => None,
        })
        .collect();
    for e in events {
        let Seen::Place { spec, answer } = &e.seen else { continue };
        let id = spec.placement.as_str();
        let placed = f.placements.iter().filter(|p| p.placement == id).count();
        let queued = f.queued.iter().filter(|q| *q == id).count();
        let finished: Vec<&FinishedView> =
            f.finished.iter().filter(|r| r.placement == id).collect();
        let places = placed + queued + finished.len();
        match answer {
            Answer::Ok { .. } if places != 1 => bad.push(format!(
                "{id} is in {places} places at the end (placed {placed}, queued {queued}, finished {}), not exactly one",
                finished.len()
            )),
            Answer::Unknown if places > 1 => {
                bad.push(format!("{id} (unanswered) is in {places} places at the end"))
            }
            Answer::Refused { reason } if places > 0 => {
                bad.push(format!("{id} was refused ({reason}) but is there at the end"))
            }
            _ => {}
        }
        for r in finished {
            let happened = match r.reason.as_str() {
                "WORKER_LOST" => lost_at.contains(&r.log_index),
                "COMPLETED" | "FAILED" => reported.contains(&(id, r.reason.as_str())),
                "TIME_LIMIT" => {
                    spec.max_runtime_ms > 0
                        && r.ended_at_ms.checked_sub(r.placed_at_ms) == Some(spec.max_runtime_ms)
                }
                _ => false,
            };
            if !happened {
                bad.push(format!("{id} finished {r:?}, which did not happen (spec {spec:?})"));
            }
        }
        if spec.anti_affinity {
            for seen in events.iter().flat_map(Event::placements).filter(|p| p.placement == id) {
                let seen = &seen;
                let on: BTreeSet<&str> = seen.instances.iter().map(|(w, _)| w.as_str()).collect();
                if on.len() != seen.instances.len() {
                    bad.push(format!("{id} has anti-affinity but was seen as {seen:?}"));
                }
            }
        }
    }
    bad
}

/// After healing and settling, each worker's allocation is the sum of the instances its
/// placement list puts on it, and the tenant's placements and the workers' lists agree.
pub fn check_final_accounting(events: &[Event]) -> Vec<String> {
    let Some(f) = final_state(events) else { return Vec::new() };
    let mut bad = Vec::new();
    for w in &f.workers {
        let listed = f.on_worker.get(&w.worker).map(Vec::as_slice).unwrap_or_default();
        let mut sum = 0;
        for p in listed {
            let here = p.instances.iter().filter(|(on, _)| *on == w.worker).count();
            if here == 0 {
                bad.push(format!(
                    "final state: {} is listed on {} without an instance there",
                    p.placement, w.worker
                ));
            }
            sum += p.cpu * u64::try_from(here).unwrap_or(u64::MAX);
        }
        if sum != w.allocated_cpu {
            bad.push(format!(
                "final state: {} has {} cpu_millis allocated, but the instances on it add up to {sum}",
                w.worker, w.allocated_cpu
            ));
        }
        for p in &f.placements {
            let here = p.instances.iter().any(|(on, _)| *on == w.worker);
            let listed = listed.iter().any(|l| l == p);
            if here != listed {
                bad.push(format!(
                    "final state: {} has an instance on {}: {here}, but {}'s list says {listed}",
                    p.placement, w.worker, w.worker
                ));
            }
        }
    }
    bad
}

/// A report is never accepted with a stale `assigned_at`: not one sent deliberately below
/// the one seen, and not one whose instance was assigned before its worker went down, at an
/// entry no later than the report's. An accepted report that ended its placement is in the
/// finished records with its reason.
pub fn check_reports(events: &[Event]) -> Vec<String> {
    let mut bad = Vec::new();
    let downs = downs(events);
    let f = final_state(events);
    for e in events {
        let Seen::Report { worker, placement, assigned_at, deliberately_stale, answer, .. } =
            &e.seen
        else {
            continue;
        };
        let Answer::Ok { log_index, finished, .. } = answer else { continue };
        if *deliberately_stale {
            bad.push(format!(
                "a deliberately stale report was accepted at log index {log_index}: {e:?}"
            ));
        }
        let down =
            downs.get(worker.as_str()).and_then(|d| down_between(d, *assigned_at, *log_index));
        if let Some(down) = down {
            bad.push(format!(
                "a stale report was accepted at log index {log_index}: {worker} went down at {down}, after {placement}'s instance was assigned to it at {assigned_at}"
            ));
        }
        if let (false, Some(f)) = (finished.is_empty(), f) {
            if !f.finished.iter().any(|r| r.placement == *placement && r.reason == *finished) {
                bad.push(format!(
                    "{placement} ended {finished} by the report at log index {log_index}, but no such finished record"
                ));
            }
        }
    }
    bad
}

/// A heartbeat that revives a worker gives it a generation above any it had, after a Down;
/// and nothing assigned to it before its revival is seen on it by a read at or after it.
pub fn check_revivals(events: &[Event]) -> Vec<String> {
    let mut bad = Vec::new();
    let downs = downs(events);
    let floors = floors(events);
    for e in events {
        let Seen::Heartbeat { worker, ack: Some((_, generation, true)) } = &e.seen else {
            continue;
        };
        let earlier =
            events.iter().filter(|o| o.complete_ms < e.invoke_ms).filter_map(|o| match &o.seen {
                Seen::Heartbeat { worker: w, ack: Some((_, g, _)) } if w == worker => Some(*g),
                Seen::Workers { workers } => {
                    workers.iter().find(|v| v.worker == *worker).map(|v| v.generation)
                }
                _ => None,
            });
        if let Some(g) = earlier.max().filter(|g| g >= generation) {
            bad.push(format!(
                "{worker} revived with generation {generation}, not above {g} (at {} ms)",
                e.invoke_ms
            ));
        }
        // (At or before: an entry that finds the worker's TTL passed marks it down before its
        // own heartbeat revives it, both at the entry's index.)
        let was_down =
            downs.get(worker.as_str()).is_some_and(|d| d.range(..=*generation).next().is_some());
        if !was_down {
            bad.push(format!(
                "{worker} revived at generation {generation} without a Down before it"
            ));
        }
        for (o, later) in events.iter().zip(&floors).filter(|(_, f)| **f >= *generation) {
            for p in o.placements() {
                for (w, a) in &p.instances {
                    if w == worker && a < generation {
                        bad.push(format!(
                            "{worker} revived at {generation} but a read at log index {later} or later saw {} on it, assigned at {a}",
                            p.placement
                        ));
                    }
                }
            }
        }
    }
    bad
}

/// The watcher's events are in log order with no repeat (positions strictly increase across
/// its rounds on different replicas), and a fresh watch from the start of the journal replays
/// exactly them, up to the last.
pub fn check_watch(events: &[Event]) -> Vec<String> {
    let mut bad = Vec::new();
    let watched: Vec<(u64, u32, String)> = events
        .iter()
        .filter_map(|e| match &e.seen {
            Seen::Watched { log_index, event, what, .. } => {
                Some((*log_index, *event, what.clone()))
            }
            _ => None,
        })
        .collect();
    for w in watched.windows(2) {
        if (w[0].0, w[0].1) >= (w[1].0, w[1].1) {
            bad.push(format!(
                "watch out of order: ({}, {}) then ({}, {})",
                w[0].0, w[0].1, w[1].0, w[1].1
            ));
        }
    }
    let replay = events.iter().find_map(|e| match &e.seen {
        Seen::Replay { replica, events } if *replica > 0 => Some((replica, events)),
        _ => None,
    });
    if let Some((replica, replayed)) = replay {
        if *replayed != watched {
            let at = replayed.iter().zip(&watched).position(|(a, b)| a != b);
            let at = at.unwrap_or(replayed.len().min(watched.len()));
            bad.push(format!(
                "a fresh watch from the start on r{replica} replayed {} events, the watcher saw {}; first difference at #{at}: {:?} vs {:?}",
                replayed.len(),
                watched.len(),
                replayed.get(at).map(|e| (e.0, e.1)),
                watched.get(at).map(|e| (e.0, e.1))
            ));
        }
    }
    bad
}

/// Every fleet check.
pub fn check(events: &[Event]) -> Vec<String> {
    let mut bad = check_no_instance_on_down(events);
    bad.extend(check_fates(events));
    bad.extend(check_final_accounting(events));
    bad.extend(check_reports(events));
    bad.extend(check_revivals(events));
    bad.extend(check_watch(events));
    bad
}

/// What happened in a fleet run (the report's `fleet`).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Figures {
    pub placed: usize,
    pub queued: usize,
    pub reports_accepted: usize,
    pub stale_refused: usize,
    pub downs: usize,
    pub revived: usize,
    pub watched: usize,
    pub watch_rounds: usize,
    /// The replica a fresh watch replayed the journal from (none: every replica had
    /// compacted its start), and how many events.
    pub replayed_from: Option<u64>,
    pub replayed: usize,
    /// The final state: placed, queued, finished by reason.
    pub final_placed: usize,
    pub final_queued: usize,
    pub finished: BTreeMap<String, usize>,
}

impl Figures {
    pub fn of(events: &[Event]) -> Figures {
        let count = |f: &dyn Fn(&Seen) -> bool| events.iter().filter(|e| f(&e.seen)).count();
        let mut figures = Figures {
            placed: count(&|s| {
                matches!(s, Seen::Place { answer: Answer::Ok { placed: Some(_), .. }, .. })
            }),
            queued: count(&|s| {
                matches!(s, Seen::Place { answer: Answer::Ok { placed: None, .. }, .. })
            }),
            reports_accepted: count(&|s| {
                matches!(s, Seen::Report { answer: Answer::Ok { .. }, .. })
            }),
            stale_refused: count(
                &|s| matches!(s, Seen::Report { answer: Answer::Refused { reason }, .. } if reason == "STALE_ASSIGNMENT"),
            ),
            downs: downs(events).values().map(BTreeSet::len).sum(),
            revived: count(&|s| matches!(s, Seen::Heartbeat { ack: Some((_, _, true)), .. })),
            watched: count(&|s| matches!(s, Seen::Watched { .. })),
            ..Figures::default()
        };
        let rounds: BTreeSet<u32> = events
            .iter()
            .filter_map(|e| match e.seen {
                Seen::Watched { round, .. } => Some(round),
                _ => None,
            })
            .collect();
        figures.watch_rounds = rounds.len();
        for e in events {
            if let Seen::Replay { replica, events } = &e.seen {
                figures.replayed_from = (*replica > 0).then_some(*replica);
                figures.replayed = events.len();
            }
        }
        if let Some(f) = final_state(events) {
            figures.final_placed = f.placements.len();
            figures.final_queued = f.queued.len();
            for r in &f.finished {
                *figures.finished.entry(r.reason.clone()).or_default() += 1;
            }
        }
        figures
    }

    /// The report's scenario lines.
    pub fn lines(&self, plan: Plan) -> Vec<String> {
        let replay = match self.replayed_from {
            Some(r) => {
                format!("a fresh watch from the start on r{r} replayed the same {}", self.replayed)
            }
            None => "no replica held the journal from the start".into(),
        };
        vec![
            format!(
                "{} agents, TTL {} ms, replica faults {}: {} placed, {} queued; {} reports accepted, {} refused STALE_ASSIGNMENT; {} workers down, {} revived",
                plan.agents, plan.ttl_ms, plan.replica_faults, self.placed, self.queued,
                self.reports_accepted, self.stale_refused, self.downs, self.revived
            ),
            format!("watch: {} events over {} rounds on rotating replicas; {replay}", self.watched, self.watch_rounds),
            format!(
                "final: {} placed, {} queued, finished {:?}",
                self.final_placed, self.final_queued, self.finished
            ),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(invoke_ms: u64, complete_ms: u64, seen: Seen) -> Event {
        Event { invoke_ms, complete_ms, seen }
    }

    fn w(worker: &str, generation: u64, allocated_cpu: u64, downs: &[u64]) -> WorkerView {
        let down = false;
        WorkerView { worker: worker.into(), down, generation, allocated_cpu, downs: downs.to_vec() }
    }

    fn p(placement: &str, instances: &[(&str, u64)]) -> PlacementView {
        PlacementView {
            placement: placement.into(),
            cpu: 100,
            instances: instances.iter().map(|(w, a)| (w.to_string(), *a)).collect(),
        }
    }

    fn spec(placement: &str) -> Spec {
        Spec {
            placement: placement.into(),
            count: 2,
            cpu: 100,
            anti_affinity: true,
            release_when_lost: false,
            queue: false,
            max_runtime_ms: 0,
        }
    }

    fn ok(log_index: u64) -> Answer {
        Answer::Ok { log_index, placed: None, finished: String::new() }
    }

    fn report(worker: &str, assigned_at: u64, stale: bool, answer: Answer) -> Seen {
        Seen::Report {
            worker: worker.into(),
            placement: "f1".into(),
            slot: 0,
            assigned_at,
            status: "RUNNING".into(),
            deliberately_stale: stale,
            answer,
        }
    }

    fn refused() -> Answer {
        Answer::Refused { reason: "STALE_ASSIGNMENT".into() }
    }

    /// f1 placed on aw1 and aw2 at 10; aw1 goes down at 20 and its instance moves to aw3;
    /// aw1 is revived at 25; reports; the final state.
    fn clean() -> Vec<Event> {
        let moved = p("f1", &[("aw3", 20), ("aw2", 10)]);
        let placed = Answer::Ok {
            log_index: 10,
            placed: Some(p("f1", &[("aw1", 10), ("aw2", 10)])),
            finished: String::new(),
        };
        let mut down = w("aw1", 1, 0, &[20]);
        down.down = true;
        vec![
            ev(0, 2, Seen::Place { spec: spec("f1"), answer: placed }),
            ev(3, 4, Seen::Workers { workers: vec![w("aw1", 1, 100, &[]), w("aw2", 2, 100, &[])] }),
            ev(10, 11, Seen::Workers { workers: vec![down, w("aw3", 3, 100, &[])] }),
            ev(12, 13, Seen::OnWorker { worker: "aw3".into(), placements: vec![moved.clone()] }),
            ev(14, 15, Seen::Heartbeat { worker: "aw1".into(), ack: Some((25, 25, true)) }),
            ev(16, 17, report("aw3", 20, false, ok(26))),
            ev(16, 17, report("aw2", 9, true, refused())),
            ev(18, 19, report("aw1", 10, false, refused())),
            ev(
                30,
                31,
                Seen::Final(Final {
                    workers: vec![
                        w("aw1", 25, 0, &[20]),
                        w("aw2", 2, 100, &[]),
                        w("aw3", 3, 100, &[]),
                    ],
                    on_worker: BTreeMap::from([
                        ("aw1".into(), vec![]),
                        ("aw2".into(), vec![moved.clone()]),
                        ("aw3".into(), vec![moved.clone()]),
                    ]),
                    placements: vec![moved],
                    queued: vec![],
                    finished: vec![],
                }),
            ),
        ]
    }

    fn final_mut(events: &mut [Event]) -> &mut Final {
        events
            .iter_mut()
            .rev()
            .find_map(|e| match &mut e.seen {
                Seen::Final(f) => Some(f),
                _ => None,
            })
            .expect("a final state")
    }

    #[test]
    fn a_clean_fleet_history_passes() {
        // The checks accept a history with a loss, a move, a revival and refused stale reports.
        assert_eq!(check(&clean()), Vec::<String>::new());
    }

    #[test]
    fn an_instance_seen_on_a_worker_after_it_went_down_is_caught() {
        // A read that began after aw1 was seen down at 20 still shows f1's instance on aw1.
        let mut h = clean();
        h[3] = ev(
            12,
            13,
            Seen::OnWorker { worker: "aw1".into(), placements: vec![p("f1", &[("aw1", 10)])] },
        );
        assert!(!check_no_instance_on_down(&h).is_empty());
        // And the final state with an instance on a worker it shows down.
        let mut h = clean();
        final_mut(&mut h).workers[1].down = true;
        assert!(!check_no_instance_on_down(&h).is_empty());
        // An assignment stream's view at 21 (exact: its replica's applied index) still holding
        // the instance aw1 lost at 20, though it began before anything said so.
        let mut h = clean();
        let holds = vec![("f1".to_string(), 10)];
        let (worker, generation, down) = ("aw1".to_string(), 1, false);
        let view = Seen::Assigned { worker, log_index: 21, generation, down, holds };
        h.insert(1, ev(1, 2, view));
        assert!(!check_no_instance_on_down(&h).is_empty());
        // A view that says its worker is down while it holds something.
        let holds = vec![("f1".to_string(), 10)];
        let (worker, generation, down) = ("aw1".to_string(), 1, true);
        let view = Seen::Assigned { worker, log_index: 12, generation, down, holds };
        let mut h = clean();
        h.insert(1, ev(1, 2, view));
        assert!(!check_no_instance_on_down(&h).is_empty());
    }

    #[test]
    fn a_placement_left_nowhere_or_duplicated_or_ended_for_nothing_is_caught() {
        // Nowhere at the end.
        let mut h = clean();
        final_mut(&mut h).placements.clear();
        assert!(!check_fates(&h).is_empty());
        // Both placed and finished.
        let lost = FinishedView {
            placement: "f1".into(),
            reason: "WORKER_LOST".into(),
            log_index: 20,
            placed_at_ms: 0,
            ended_at_ms: 5,
        };
        let mut h = clean();
        final_mut(&mut h).finished.push(lost.clone());
        assert!(!check_fates(&h).is_empty());
        // Finished WORKER_LOST at an entry where no worker went down.
        let mut h = clean();
        let f = final_mut(&mut h);
        f.placements.clear();
        f.finished.push(FinishedView { log_index: 21, ..lost });
        assert!(!check_fates(&h).is_empty());
        // Two instances of an anti-affinity placement on one worker.
        let mut h = clean();
        h[3] = ev(
            12,
            13,
            Seen::OnWorker {
                worker: "aw2".into(),
                placements: vec![p("f1", &[("aw2", 20), ("aw2", 10)])],
            },
        );
        assert!(!check_fates(&h).is_empty());
    }

    #[test]
    fn an_allocation_that_is_not_the_sum_of_its_instances_is_caught() {
        // aw2 says 200 cpu_millis allocated; its one instance of f1 is 100.
        let mut h = clean();
        final_mut(&mut h).workers[1].allocated_cpu = 200;
        assert!(!check_final_accounting(&h).is_empty());
        // aw3's list forgets f1, whose instance is on it.
        let mut h = clean();
        final_mut(&mut h).on_worker.insert("aw3".into(), vec![]);
        assert!(!check_final_accounting(&h).is_empty());
    }

    #[test]
    fn an_accepted_stale_report_is_caught() {
        // The deliberately stale report accepted.
        let mut h = clean();
        h[6] = ev(16, 17, report("aw2", 9, true, ok(27)));
        assert!(!check_reports(&h).is_empty());
        // aw1's report for the instance it lost at 20, accepted at 28.
        let mut h = clean();
        h[7] = ev(18, 19, report("aw1", 10, false, ok(28)));
        assert!(!check_reports(&h).is_empty());
        // A report that ended f1 COMPLETED, without a finished record.
        let mut h = clean();
        let finished = "COMPLETED".to_string();
        h[5] = ev(
            16,
            17,
            report("aw3", 20, false, Answer::Ok { log_index: 26, placed: None, finished }),
        );
        assert!(!check_reports(&h).is_empty());
    }

    #[test]
    fn a_revival_that_keeps_work_or_its_generation_is_caught() {
        // Revived with a generation no higher than one seen before.
        let mut h = clean();
        h[4] = ev(14, 15, Seen::Heartbeat { worker: "aw1".into(), ack: Some((25, 1, true)) });
        assert!(!check_revivals(&h).is_empty());
        // After the revival at 25, a read shows aw1 still holding f1's instance from 10.
        let mut h = clean();
        h.insert(
            8,
            ev(
                20,
                21,
                Seen::OnWorker { worker: "aw1".into(), placements: vec![p("f1", &[("aw1", 10)])] },
            ),
        );
        assert!(!check_revivals(&h).is_empty());
    }

    fn watched(round: u32, log_index: u64, event: u32) -> Event {
        let (replica, what) = (u64::from(round), format!("e{log_index}.{event}"));
        ev(0, 0, Seen::Watched { round, replica, log_index, event, what })
    }

    #[test]
    fn a_watch_with_a_gap_a_repeat_or_a_different_replay_is_caught() {
        // Two rounds on two replicas, then a replay from the start that matches.
        let mut h = clean();
        h.extend([watched(1, 5, 0), watched(1, 5, 1), watched(2, 7, 0)]);
        let events = vec![(5, 0, "e5.0".into()), (5, 1, "e5.1".into()), (7, 0, "e7.0".into())];
        h.push(ev(40, 41, Seen::Replay { replica: 1, events: events.clone() }));
        assert_eq!(check_watch(&h), Vec::<String>::new());
        // The second round repeats the first round's last event.
        let mut bad = h.clone();
        bad.insert(bad.len() - 2, watched(2, 5, 1));
        assert!(!check_watch(&bad).is_empty());
        // The replay has an event the watcher never got (a gap at the reconnect).
        let mut bad = h.clone();
        let mut more = events;
        more.insert(2, (6, 0, "e6.0".into()));
        *bad.last_mut().expect("replay") = ev(40, 41, Seen::Replay { replica: 1, events: more });
        assert!(!check_watch(&bad).is_empty());
    }
}
