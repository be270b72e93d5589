//! The simulation's clients: setup (workers, tenants, quotas, placement groups), the random
//! workload, the token reader, membership churn and the final phase after healing, and
//! `spawn`, which starts the ones a scenario runs as turmoil clients. They act only through
//! the API (`ops`), except the token reader's token, proposed through a replica.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth::client::{self, pb, Client, ClientOptions, ClientSecurity};
use berth::raft::types::Proposal;
use berth::scheduler::{Command, RequestId, TenantId, TokenId};
use berth_rng::Rng;

use crate::cluster::{api_client, host, lock, now_ms, Params, Slot, API_PORT, PEER_PORT};
use crate::cut;
use crate::fairness;
use crate::fleet;
use crate::history::{Fenced, Op, OpKind, Outcome};
use crate::hostile;
use crate::net;
use crate::ops::{
    acknowledged, acquire, cancel, confirm, create_group, delete_tenant, is_stale, keep_alive,
    must, outcome_of, place_in, read, release, release_lease, reserve, write, Recorder,
};
use crate::restart;
use crate::scenario::{self, Scenario};

/// The client number of setup's recorded writes (placement groups).
const SETUP: u32 = 100;
/// The tenant client 1 deletes during the workload.
const DELETED: &str = "t3";
/// The cluster must accept a fresh write within this long after every fault is healed.
const LIVENESS_BOUND: Duration = Duration::from_secs(20);

/// Creates `tenant` (no quota) and a worker far bigger than the rest of the workload needs.
async fn tenant_with_big_worker(c: &Client, tenant: &str, worker: &str) -> Result<(), String> {
    let r = pb::CreateTenantRequest {
        request_id: format!("setup-{tenant}"),
        tenant_id: tenant.into(),
        ..Default::default()
    };
    must(c, r, |ch, r| async move { client::tenants(ch).create_tenant(r).await }).await?;
    let r = pb::RegisterWorkerRequest {
        request_id: format!("setup-{worker}"),
        worker_id: worker.into(),
        capacity: Some(pb::Resources { cpu_millis: 1_000_000, memory_mib: 1_000_000 }),
        ..Default::default()
    };
    must(c, r, |ch, r| async move { client::workers(ch).register_worker(r).await }).await?;
    Ok(())
}

async fn setup(
    params: Params,
    tls: ClientSecurity,
    scenario: Scenario,
    rec: Recorder,
) -> Result<(), String> {
    let c = api_client(params.replicas, &tls, Duration::from_secs(5))?;
    match scenario {
        // The guarded resource: a tenant without quota and a worker the others cannot fill.
        Scenario::LeaseExpiry => tenant_with_big_worker(&c, scenario::GUARDED, "w-guard").await?,
        Scenario::RestartRead => tenant_with_big_worker(&c, restart::DURABLE, "w-durable").await?,
        _ => {}
    }
    if scenario == Scenario::Fairness {
        for (i, weight) in fairness::WEIGHTS.iter().enumerate() {
            let r = pb::CreateTenantRequest {
                request_id: format!("setup-{}", fairness::tenant(i)),
                tenant_id: fairness::tenant(i),
                weight: *weight,
                ..Default::default()
            };
            must(&c, r, |ch, r| async move { client::tenants(ch).create_tenant(r).await }).await?;
        }
        for w in 1..=fairness::WORKERS {
            let r = pb::RegisterWorkerRequest {
                request_id: format!("setup-fw{w}"),
                worker_id: format!("fw{w}"),
                pool: fairness::POOL.into(),
                capacity: Some(pb::Resources {
                    cpu_millis: fairness::WORKER_CPU_MILLIS,
                    memory_mib: 1_000_000,
                }),
                ..Default::default()
            };
            must(&c, r, |ch, r| async move { client::workers(ch).register_worker(r).await })
                .await?;
        }
    }
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
        let id = format!("setup-group-{tenant}");
        let outcome = create_group(&c, &rec, id, tenant, "g", params.group_max).await;
        if !matches!(outcome, Outcome::Ok { .. }) {
            return Err(format!("setup: placement group of {tenant} not created: {outcome:?}"));
        }
    }
    Ok(())
}

/// The tenant whose token the token reader reads with and revokes (not the one deleted).
const TOKEN_TENANT: &str = "t2";
/// The token reader's client number in the history.
const TOKEN_READER: u32 = 103;

/// The token reader's token, and its name.
const READER_TOKEN: &str = "sim-reader-token";
const READER_TOKEN_NAME: &str = "reader";

/// Adds the token reader's token to `TOKEN_TENANT`, proposed through any running replica
/// (retried with the same request id). Not through IssueToken: that draws the token from the
/// OS, and the simulation must replay exactly.
async fn add_reader_token(slots: &[Slot]) -> Result<(), String> {
    let proposal = Proposal {
        request_id: Some(RequestId::new("reader-token")),
        command: Command::AddToken {
            tenant: TenantId::new(TOKEN_TENANT),
            token: TokenId::new(READER_TOKEN_NAME),
            hash: berth::api::hash_token(READER_TOKEN),
            ttl_ms: 0,
        },
        token: None,
    };
    for attempt in 0..100 {
        let replica =
            (0..slots.len()).find_map(|i| lock(&slots[(attempt + i) % slots.len()]).clone());
        if let Some(replica) = replica {
            if let Ok(applied) = replica.propose(proposal.clone()).await {
                return applied.result.map(|_| ()).map_err(|r| format!("token reader: {r}"));
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err("token reader: its token was never added".into())
}

/// Reads `TOKEN_TENANT` with a token of its own from one replica at a time, stale or
/// linearizable, and revokes the token (through any replica) at a time the seed picks: no
/// read that begins after the revocation is acknowledged may succeed (`check_revoked`).
async fn token_reader(
    params: Params,
    tls: ClientSecurity,
    seed: u64,
    rec: Recorder,
    ready: Arc<AtomicBool>,
    slots: Vec<Slot>,
) -> Result<(), String> {
    let mut rng = Rng::new(seed);
    let admin = api_client(params.replicas, &tls, Duration::from_secs(5))?;
    while !ready.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    add_reader_token(&slots).await?;
    let (name, token) = (READER_TOKEN_NAME.to_owned(), READER_TOKEN);
    let options = ClientOptions {
        deadline: Duration::from_secs(1),
        attempt_timeout: Duration::from_millis(800),
    };
    let mut replicas = Vec::new();
    for id in 1..=params.replicas {
        let endpoint = format!("{}:{API_PORT}", host(id));
        let channel = berth::tls::channel(&endpoint, &tls, net::connect(), net::CONNECT_TIMEOUT)?;
        let c = Client::with_channels(vec![(host(id), channel)], Some(token), options.clone());
        replicas.push(c.map_err(|e| e.to_string())?);
    }
    let revoke_at_ms = rng.between(params.workload_ms / 5, params.workload_ms / 2);
    let mut revoked = false;
    while now_ms() < params.workload_ms {
        if !revoked && now_ms() >= revoke_at_ms {
            revoked = true;
            let r = pb::RevokeTokenRequest {
                request_id: "reader-revoke".into(),
                tenant_id: TOKEN_TENANT.into(),
                token_name: name.clone(),
            };
            let kind = OpKind::RevokeToken { tenant: TOKEN_TENANT.into(), token: name.clone() };
            let rpc = |ch, r| async move { client::tenants(ch).revoke_token(r).await };
            write(&admin, &rec, kind, 5, (r, rpc), |a: pb::RevokeTokenResponse| {
                acknowledged(a.write)
            })
            .await;
        }
        let at = usize::try_from(rng.below(params.replicas)).unwrap_or(0);
        let stale = rng.below(2) == 0;
        let r = pb::GetTenantRequest {
            tenant_id: TOKEN_TENANT.into(),
            read: Some(pb::ReadOptions { stale_ok: stale }),
        };
        let invoked = now_ms();
        let rpc = |ch, r| async move { client::tenants(ch).get_tenant(r).await };
        let outcome = match replicas[at].call(r, rpc).await {
            Ok(_) => Outcome::read(true),
            Err(status) => outcome_of(&status),
        };
        let kind = OpKind::TokenRead { tenant: TOKEN_TENANT.into(), token: name.clone(), stale };
        rec.record(kind, invoked, outcome);
        tokio::time::sleep(Duration::from_millis(rng.between(1, 30))).await;
    }
    Ok(())
}

/// A lease a client believes it holds (it keeps using the token until told it is stale, so
/// stale fenced writes happen).
struct Held {
    lease: String,
    token: u64,
}

/// One request in this many is hostile (`hostile.rs`).
const HOSTILE_ONE_IN: u64 = 25;

/// Quota-bound Place/Release with a linearizable read after every acknowledged Place, and
/// leases: acquire, keep-alive, release, and fenced Place/Release on the lease's tenant with
/// the token the client holds.
async fn workload(
    params: Params,
    tls: ClientSecurity,
    index: u32,
    seed: u64,
    rec: Recorder,
    ready: Arc<AtomicBool>,
) -> Result<(), String> {
    let mut rng = Rng::new(seed ^ (u64::from(index) << 32));
    let c = api_client(params.replicas, &tls, Duration::from_secs(3))?;
    while !ready.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let tenants: Vec<String> = params.quotas.keys().cloned().collect();
    let lease_tenant = tenants.first().cloned().unwrap_or_default();
    let holder = format!("c{index}");
    let mut held: Option<Held> = None;
    let mut live: Vec<(String, String)> = Vec::new();
    let mut reserved: Vec<(String, String)> = Vec::new();
    let mut deleted = false;
    let mut n = 0u64;
    while now_ms() < params.workload_ms {
        n += 1;
        let request_id = format!("c{index}-{n}");
        let fence = held.as_ref().map(|h| Fenced { lease: h.lease.clone(), token: h.token });
        let action = rng.below(14);
        if index == 1 && !deleted && now_ms() >= params.delete_at_ms {
            // The others keep writing to it: nothing may be accepted after the deletion.
            deleted = true;
            delete_tenant(&c, &rec, request_id, DELETED).await;
        } else if rng.below(HOSTILE_ONE_IN) == 0 {
            let t = &tenants[usize::try_from(rng.below(tenants.len() as u64)).unwrap_or(0)];
            hostile::send(&c, &rec, request_id, t, &mut rng).await;
        } else if action >= 10 {
            // Reservations with short TTLs: confirm, cancel, or let them expire.
            if action == 13 || reserved.is_empty() {
                let t = &tenants[usize::try_from(rng.below(tenants.len() as u64)).unwrap_or(0)];
                let placement = format!("c{index}-r{n}");
                let ttl_ms = rng.between(params.reservation_ttl_ms.0, params.reservation_ttl_ms.1);
                let instances = rng.between(1, 2);
                let outcome =
                    reserve(&c, &rec, request_id, (t, &placement), instances, ttl_ms).await;
                if matches!(outcome, Outcome::Ok { .. }) {
                    reserved.push((t.clone(), placement));
                }
            } else {
                let at = usize::try_from(rng.below(reserved.len() as u64)).unwrap_or(0);
                let (tenant, placement) = reserved.swap_remove(at);
                if action == 12 {
                    cancel(&c, &rec, request_id, &tenant, &placement).await;
                } else {
                    let outcome = confirm(&c, &rec, request_id, &tenant, &placement).await;
                    if matches!(outcome, Outcome::Ok { .. }) {
                        live.push((tenant, placement));
                    }
                }
            }
        } else if action >= 7 {
            match held.take() {
                None => {
                    let lease = format!("l{}", rng.below(params.leases));
                    let ttl_ms = rng.between(params.lease_ttl_ms.0, params.lease_ttl_ms.1);
                    let outcome =
                        acquire(&c, &rec, request_id, &lease_tenant, &lease, &holder, ttl_ms).await;
                    if let Outcome::Ok { lease: Some(seen), .. } = outcome {
                        held = Some(Held { lease, token: seen.token });
                    }
                }
                Some(h) if action == 9 => {
                    // Released or not, the client stops using the token.
                    release_lease(&c, &rec, request_id, &lease_tenant, &h.lease, h.token).await;
                }
                Some(h) => {
                    let outcome =
                        keep_alive(&c, &rec, request_id, &lease_tenant, &h.lease, h.token).await;
                    if !matches!(outcome, Outcome::Fail { .. }) {
                        held = Some(h);
                    }
                }
            }
        } else if live.is_empty() || rng.below(5) < 3 {
            // Fenced writes go to the lease's tenant.
            let fenced = fence.is_some() && rng.below(2) == 0;
            let tenant = if fenced {
                lease_tenant.clone()
            } else {
                tenants[usize::try_from(rng.below(tenants.len() as u64)).unwrap_or(0)].clone()
            };
            let placement = format!("c{index}-p{n}");
            let instances = rng.between(1, 3);
            let fence = if fenced { fence } else { None };
            let group = (!fenced && rng.below(3) == 0).then_some("g");
            let outcome =
                place_in(&c, &rec, request_id, (&tenant, &placement), instances, fence, group)
                    .await;
            if is_stale(&outcome) {
                held = None;
            }
            if matches!(outcome, Outcome::Ok { .. }) {
                read(&c, &rec, &tenant, &placement).await;
                live.push((tenant, placement));
            }
        } else {
            let at = usize::try_from(rng.below(live.len() as u64)).unwrap_or(0);
            let (tenant, placement) = live.swap_remove(at);
            let fence = if tenant == lease_tenant && rng.below(2) == 0 { fence } else { None };
            let outcome = release(&c, &rec, request_id, &tenant, &placement, fence).await;
            if is_stale(&outcome) {
                // Not released: the token is stale. Release it later without a fence.
                held = None;
                live.push((tenant, placement));
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.between(1, 30))).await;
    }
    Ok(())
}

/// Membership churn through the Cluster API: remove a voter (any, the leader included), add it
/// back a little later, under whatever faults run. After healing every replica is made a voter
/// again. What it did goes into `events` (and the trace).
async fn membership(
    params: Params,
    tls: ClientSecurity,
    seed: u64,
    events: Arc<Mutex<Vec<String>>>,
    ready: Arc<AtomicBool>,
    healed: Arc<AtomicBool>,
) -> Result<(), String> {
    let mut rng = Rng::new(seed ^ 0x3E3B_E125);
    let c = api_client(params.replicas, &tls, Duration::from_secs(5))?;
    while !ready.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let say = |what: String| lock(&events).push(format!("{} ms: {what}", now_ms()));
    let add = |id: u64| {
        let r = pb::AddReplicaRequest {
            replica_id: id,
            peer_address: format!("{}:{PEER_PORT}", host(id)),
        };
        c.call(r, |ch, r| async move { client::cluster(ch).add_replica(r).await })
    };
    // A replica that was (or may have been) removed and is not known to be back.
    let mut removed: Option<u64> = None;
    tokio::time::sleep(Duration::from_millis(rng.between(300, 2_000))).await;
    while now_ms() < params.workload_ms {
        match removed {
            None => {
                let id = rng.between(1, params.replicas);
                let r = pb::RemoveReplicaRequest { replica_id: id };
                let outcome = c
                    .call(r, |ch, r| async move { client::cluster(ch).remove_replica(r).await })
                    .await;
                match outcome {
                    Ok(_) => say(format!("removed r{id}")),
                    Err(status) => {
                        say(format!("remove r{id}: {:?} {}", status.code(), status.message()))
                    }
                }
                // Unless certainly refused, it may be out: add it back to be sure.
                removed = Some(id);
            }
            Some(id) => match add(id).await {
                Ok(_) => {
                    say(format!("added r{id} back"));
                    removed = None;
                }
                Err(status) => say(format!("add r{id}: {:?} {}", status.code(), status.message())),
            },
        }
        tokio::time::sleep(Duration::from_millis(rng.between(300, 1_500))).await;
    }
    while !healed.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    if let Some(id) = removed {
        let until = now_ms() + u64::try_from(LIVENESS_BOUND.as_millis()).unwrap_or(u64::MAX);
        loop {
            match add(id).await {
                Ok(_) => {
                    say(format!("added r{id} back after healing"));
                    break;
                }
                Err(status) if now_ms() >= until => {
                    return Err(format!("liveness: r{id} not added back within {LIVENESS_BOUND:?} of healing: {status:?}"));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }
    Ok(())
}

/// After healing: a fresh write must succeed within the bound, and every acknowledged
/// placement is read back (the checker decides which must be there).
async fn final_phase(
    params: Params,
    tls: ClientSecurity,
    rec: Recorder,
    healed: Arc<AtomicBool>,
) -> Result<(), String> {
    let c = api_client(params.replicas, &tls, LIVENESS_BOUND)?;
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
    // Let every reservation reach its expiry, then a recorded write moves log time past it.
    tokio::time::sleep(Duration::from_millis(params.reservation_ttl_ms.1 + 50)).await;
    let first = params.quotas.keys().next().cloned().unwrap_or_default();
    create_group(&c, &rec, "final-group".into(), &first, "final", 1).await;
    let placed: Vec<(String, String)> = lock(&rec.history)
        .iter()
        .filter_map(|op| match (&op.kind, &op.outcome) {
            (
                OpKind::Place { tenant, placement, .. } | OpKind::Reserve { tenant, placement, .. },
                Outcome::Ok { .. },
            ) => Some((tenant.clone(), placement.clone())),
            _ => None,
        })
        .collect();
    for (tenant, placement) in placed {
        read(&c, &rec, &tenant, &placement).await;
    }
    Ok(())
}

/// What the clients share with the run loop: the history they record, whether setup is done
/// and whether the faults are healed (set by the run loop), the fairness jobs and the
/// membership events.
#[derive(Default)]
pub(crate) struct Clients {
    pub(crate) history: Arc<Mutex<Vec<Op>>>,
    pub(crate) ready: Arc<AtomicBool>,
    pub(crate) healed: Arc<AtomicBool>,
    pub(crate) fair_jobs: Arc<Mutex<Vec<fairness::Job>>>,
    pub(crate) membership_events: Arc<Mutex<Vec<String>>>,
    /// The restart-read story, shared with the run loop's crasher.
    pub(crate) restart: Arc<restart::Story>,
    /// The fleet's history and the agents' pause switches, shared with its fault driver.
    pub(crate) fleet: Arc<fleet::Shared>,
    /// The leader-cut story, shared with the run loop's cutter.
    pub(crate) cut: Arc<cut::Story>,
}

/// Starts the clients `scenario` runs as turmoil clients of `sim`; their seeds come from
/// `seed` and `rng` (in a fixed order, so a seed replays).
pub(crate) fn spawn(
    sim: &mut turmoil::Sim<'_>,
    (params, tls, scenario): (&Params, &ClientSecurity, Scenario),
    (seed, rng): (u64, &mut Rng),
    slots: &[Slot],
) -> Clients {
    let mut shared = Clients::default();
    if scenario == Scenario::Fleet {
        shared.fleet = Arc::new(fleet::Shared::new(fleet::Plan::from_seed(seed)));
        fleet::spawn(sim, (params, tls), &shared.fleet, &shared.healed, seed);
    }
    let (history, ready, healed) =
        (shared.history.clone(), shared.ready.clone(), shared.healed.clone());
    {
        let (params, tls, ready) = (params.clone(), tls.clone(), ready.clone());
        let rec = Recorder { client: SETUP, history: history.clone() };
        sim.client("setup", async move {
            setup(params, tls, scenario, rec).await?;
            ready.store(true, Ordering::SeqCst);
            Ok(())
        });
    }
    for index in 1..=params.clients {
        let rec = Recorder { client: index, history: history.clone() };
        let (params, tls, ready) = (params.clone(), tls.clone(), ready.clone());
        sim.client(format!("c{index}"), async move {
            workload(params, tls, index, seed, rec, ready).await?;
            Ok(())
        });
    }
    if scenario == Scenario::Faults {
        let rec = Recorder { client: TOKEN_READER, history: history.clone() };
        // Its own random stream, so the other clients and the faults stay as the seed had them.
        let (params, ready, seed) = (params.clone(), ready.clone(), seed ^ 0x70CE_4EAD);
        let (slots, tls) = (slots.to_vec(), tls.clone());
        sim.client("reader", async move {
            token_reader(params, tls, seed, rec, ready, slots).await?;
            Ok(())
        });
    }
    if scenario == Scenario::LeaseExpiry {
        let step = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let ttl_ms = rng.between(500, 2_000);
        let rec = Recorder { client: scenario::HOLDER, history: history.clone() };
        let (params2, tls2, ready2, step2) =
            (params.clone(), tls.clone(), ready.clone(), step.clone());
        sim.client("holder", async move {
            while !ready2.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            scenario::holder(params2, tls2, rec, step2, ttl_ms).await?;
            Ok(())
        });
        let rec = Recorder { client: scenario::RIVAL, history: history.clone() };
        let (params2, tls2, slots2, scenario_seed) =
            (params.clone(), tls.clone(), slots.to_vec(), rng.next_u64());
        sim.client("rival", async move {
            scenario::rival(params2, tls2, rec, step, slots2, scenario_seed).await?;
            Ok(())
        });
    }
    if scenario == Scenario::RestartRead {
        let rec = Recorder { client: restart::WRITER, history: history.clone() };
        let (params, tls, ready, story, seed) =
            (params.clone(), tls.clone(), ready.clone(), shared.restart.clone(), rng.next_u64());
        sim.client("writer", async move {
            while !ready.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            restart::writer(params, tls, rec, story, seed).await?;
            Ok(())
        });
    }
    if scenario == Scenario::LeaderCut {
        let (params, tls, ready, story) =
            (params.clone(), tls.clone(), ready.clone(), shared.cut.clone());
        sim.client("agents", async move {
            while !ready.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            cut::agents(params, tls, story).await?;
            Ok(())
        });
    }
    if scenario == Scenario::Fairness {
        for t in 0..fairness::WEIGHTS.len() {
            let (params, tls, ready, jobs, seed) = (
                params.clone(),
                tls.clone(),
                ready.clone(),
                shared.fair_jobs.clone(),
                rng.next_u64(),
            );
            sim.client(fairness::tenant(t), async move {
                while !ready.load(Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                fairness::client(params, tls, t, seed, jobs).await?;
                Ok(())
            });
        }
    }
    {
        let rec = Recorder { client: 0, history: history.clone() };
        let (params, tls, healed) = (params.clone(), tls.clone(), healed.clone());
        sim.client("final", async move {
            final_phase(params, tls, rec, healed).await?;
            Ok(())
        });
    }
    if params.membership && !matches!(scenario, Scenario::LeaseExpiry | Scenario::RestartRead) {
        let (params, tls, events) = (params.clone(), tls.clone(), shared.membership_events.clone());
        let (ready, healed, seed) = (ready.clone(), healed.clone(), rng.next_u64());
        sim.client("member", async move {
            membership(params, tls, seed, events, ready, healed).await?;
            Ok(())
        });
    }
    shared
}
