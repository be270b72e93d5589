//! One simulation: a Berth cluster of 3 or 5 replicas and several clients inside turmoil,
//! faults drawn from the seed, and the checks. Everything random comes from the seed:
//! turmoil's network, openraft's election timeouts (Berth's seedable runtime), the cluster
//! parameters, the workload and the fault schedule.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use berth::client::{self, pb, Client, ClientOptions, ClientSecurity, ClientTls};
use berth::raft::replica::{Replica, ReplicaOptions};
use berth::raft::types::Proposal;
use berth::scheduler::{Command, RequestId, TenantId, TokenId};
use berth::server::{Listeners, Security, Server, Storage};
use berth::storage::snapshot_store::StoredSnapshot;
use berth::storage::{LogStore, MemLog, SnapshotStore};
use berth::tls::{roots, Authority, Identity, Pem, TlsError};
use berth_rng::Rng;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tonic::Code;

use crate::fairness;
use crate::history::{check, Fenced, LeaseSeen, Op, OpKind, Outcome, Quotas};
use crate::hostile;
use crate::net::{self, SimClock};
use crate::raft_checks::{Committed, Durable};
use crate::scenario::{self, Scenario};

const ADMIN: &str = "sim-admin-token";
/// The client number of setup's recorded writes (placement groups).
const SETUP: u32 = 100;
/// The tenant client 1 deletes during the workload.
const DELETED: &str = "t3";
const PEER_PORT: u16 = 7401;
const API_PORT: u16 = 7501;
/// The cluster must accept a fresh write within this long after every fault is healed.
const LIVENESS_BOUND: Duration = Duration::from_secs(20);
/// All replicas must reach the same state within this long after the clients are done.
const CONVERGENCE_BOUND: Duration = Duration::from_secs(20);

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
    /// The steps a named scenario went through, as verified.
    pub scenario: Vec<String>,
    /// Leases granted, and fenced writes (or keep-alives) refused for a stale token.
    pub lease_grants: usize,
    pub stale_refused: usize,
    pub faults: Vec<String>,
    pub violations: Vec<String>,
    /// SHA-256 of the normalised event trace: equal for equal seeds.
    pub trace_hash: String,
    /// The fairness scenario's figures.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fairness: Option<crate::fairness::Fairness>,
    #[serde(skip)]
    pub history: Vec<Op>,
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

pub(crate) fn outcome_of(status: &tonic::Status) -> Outcome {
    use tonic_types::StatusExt;
    match status.code() {
        Code::Unavailable | Code::DeadlineExceeded | Code::Unknown | Code::Cancelled => {
            Outcome::Info { why: format!("{:?}: {}", status.code(), status.message()) }
        }
        // The stable ErrorInfo reason (e.g. STALE_FENCING_TOKEN), else the code.
        code => match status.get_details_error_info() {
            Some(info) => Outcome::Fail { reason: info.reason },
            None => Outcome::Fail { reason: format!("{code:?}") },
        },
    }
}

/// An acknowledged write, with its log index and log time.
fn wrote(write: Option<pb::WriteInfo>, expires_at_ms: Option<u64>) -> Outcome {
    match write {
        Some(w) => Outcome::applied(w.log_index, w.applied_at_ms, expires_at_ms),
        None => Outcome::written(None),
    }
}

fn is_stale(outcome: &Outcome) -> bool {
    matches!(outcome, Outcome::Fail { reason } if reason == "STALE_FENCING_TOKEN")
}

/// An admin client of every replica's API, over TLS (`tls`) on the simulated network.
pub(crate) fn api_client(
    replicas: u64,
    tls: &ClientSecurity,
    deadline: Duration,
) -> Result<Client, String> {
    let mut channels = Vec::new();
    for id in 1..=replicas {
        let endpoint = format!("{}:{API_PORT}", host(id));
        let channel = berth::tls::channel(&endpoint, tls, net::connect(), net::CONNECT_TIMEOUT)?;
        channels.push((host(id), channel));
    }
    let options = ClientOptions { deadline, attempt_timeout: Duration::from_millis(800) };
    Client::with_channels(channels, Some(ADMIN), options).map_err(|e| e.to_string())
}

/// The run's CA: a certificate for each replica (`1..=replicas`), naming its id and the host
/// name API clients dial, and the CA's certificate, which API clients trust.
fn certificates(replicas: u64) -> Result<(String, Vec<Pem>, ClientSecurity), TlsError> {
    let ca = Authority::generate()?;
    let pems = (1..=replicas).map(|id| ca.replica(id, &[host(id)])).collect::<Result<_, _>>()?;
    let clients = ClientSecurity::Tls(ClientTls::new(roots(ca.cert_pem())?, None)?);
    Ok((ca.cert_pem().to_owned(), pems, clients))
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

async fn setup(
    params: Params,
    tls: ClientSecurity,
    scenario: Scenario,
    rec: Recorder,
) -> Result<(), String> {
    let c = api_client(params.replicas, &tls, Duration::from_secs(5))?;
    if scenario == Scenario::LeaseExpiry {
        // The guarded resource: a tenant without quota and a worker the others cannot fill.
        let r = pb::CreateTenantRequest {
            request_id: "setup-guarded".into(),
            tenant_id: scenario::GUARDED.into(),
            ..Default::default()
        };
        must(&c, r, |ch, r| async move { client::tenants(ch).create_tenant(r).await }).await?;
        let r = pb::RegisterWorkerRequest {
            request_id: "setup-w-guard".into(),
            worker_id: "w-guard".into(),
            capacity: Some(pb::Resources { cpu_millis: 1_000_000, memory_mib: 1_000_000 }),
            ..Default::default()
        };
        must(&c, r, |ch, r| async move { client::workers(ch).register_worker(r).await }).await?;
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

pub(crate) struct Recorder {
    pub(crate) client: u32,
    pub(crate) history: Arc<Mutex<Vec<Op>>>,
}

impl Recorder {
    pub(crate) fn record(&self, kind: OpKind, invoke_ms: u64, outcome: Outcome) -> Outcome {
        let op = Op { client: self.client, kind, invoke_ms, complete_ms: now_ms(), outcome };
        let outcome = op.outcome.clone();
        lock(&self.history).push(op);
        outcome
    }
}

pub(crate) async fn place(
    c: &Client,
    rec: &Recorder,
    request_id: String,
    tenant: &str,
    placement: &str,
    instances: u64,
    fence: Option<Fenced>,
) -> Outcome {
    place_in(c, rec, request_id, (tenant, placement), instances, fence, None).await
}

fn spec(placement: &str, instances: u64, group: Option<&str>) -> pb::PlacementSpec {
    pb::PlacementSpec {
        placement_id: placement.to_string(),
        count: u32::try_from(instances).unwrap_or(1),
        resources: Some(pb::Resources { cpu_millis: 100, memory_mib: 64 }),
        group: group.unwrap_or_default().to_string(),
        ..Default::default()
    }
}

/// Place, optionally into a placement group.
/// Sends one write and records it as `kind`; `answered` reads an acknowledged reply. An
/// unanswered write is sent again, with the same request id (so the answer is the first one),
/// up to `attempts` times in all; if none is answered it is recorded as `info`.
async fn write<M: Clone, T, F, Fut>(
    c: &Client,
    rec: &Recorder,
    kind: OpKind,
    attempts: usize,
    (message, rpc): (M, F),
    answered: impl Fn(T) -> Outcome,
) -> Outcome
where
    F: Fn(tonic::transport::Channel, tonic::Request<M>) -> Fut + Copy,
    Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let invoked = now_ms();
    let mut outcome = Outcome::Info { why: "never sent".into() };
    for _ in 0..attempts {
        outcome = match c.call(message.clone(), rpc).await {
            Ok(answer) => answered(answer),
            Err(status) => outcome_of(&status),
        };
        if !matches!(outcome, Outcome::Info { .. }) {
            break;
        }
    }
    rec.record(kind, invoked, outcome)
}

fn acknowledged(write: Option<pb::WriteInfo>) -> Outcome {
    wrote(write, None)
}

async fn place_in(
    c: &Client,
    rec: &Recorder,
    request_id: String,
    (tenant, placement): (&str, &str),
    instances: u64,
    fence: Option<Fenced>,
    group: Option<&str>,
) -> Outcome {
    let r = pb::PlaceRequest {
        request_id,
        tenant_id: tenant.to_string(),
        spec: Some(spec(placement, instances, group)),
        fence: fence.clone().map(|f| pb::Fence { lease: f.lease, token: f.token }),
        ..Default::default()
    };
    let kind = OpKind::Place {
        tenant: tenant.into(),
        placement: placement.into(),
        instances,
        fence,
        group: group.map(str::to_string),
    };
    let rpc = |ch, r| async move { client::scheduler(ch).place(r).await };
    write(c, rec, kind, 1, (r, rpc), |a: pb::PlaceResponse| acknowledged(a.write)).await
}

async fn release(
    c: &Client,
    rec: &Recorder,
    request_id: String,
    tenant: &str,
    placement: &str,
    fence: Option<Fenced>,
) -> Outcome {
    let r = pb::ReleaseRequest {
        request_id,
        tenant_id: tenant.to_string(),
        placement_id: placement.to_string(),
        fence: fence.clone().map(|f| pb::Fence { lease: f.lease, token: f.token }),
    };
    let kind = OpKind::Release { tenant: tenant.into(), placement: placement.into(), fence };
    let rpc = |ch, r| async move { client::scheduler(ch).release(r).await };
    write(c, rec, kind, 1, (r, rpc), |a: pb::ReleaseResponse| acknowledged(a.write)).await
}

async fn reserve(
    c: &Client,
    rec: &Recorder,
    request_id: String,
    (tenant, placement): (&str, &str),
    instances: u64,
    ttl_ms: u64,
) -> Outcome {
    let r = pb::ReserveRequest {
        request_id,
        tenant_id: tenant.to_string(),
        spec: Some(spec(placement, instances, None)),
        ttl_ms,
        fence: None,
    };
    let kind = OpKind::Reserve { tenant: tenant.into(), placement: placement.into(), instances };
    let rpc = |ch, r| async move { client::scheduler(ch).reserve(r).await };
    write(c, rec, kind, 1, (r, rpc), |a: pb::ReserveResponse| {
        wrote(a.write, a.reservation.and_then(|p| p.expires_at_ms))
    })
    .await
}

async fn confirm(
    c: &Client,
    rec: &Recorder,
    request_id: String,
    tenant: &str,
    placement: &str,
) -> Outcome {
    let r = pb::ConfirmReservationRequest {
        request_id,
        tenant_id: tenant.to_string(),
        reservation_id: placement.to_string(),
        fence: None,
    };
    let kind = OpKind::Confirm { tenant: tenant.into(), placement: placement.into() };
    let rpc = |ch, r| async move { client::scheduler(ch).confirm_reservation(r).await };
    write(c, rec, kind, 1, (r, rpc), |a: pb::ConfirmReservationResponse| acknowledged(a.write))
        .await
}

async fn cancel(
    c: &Client,
    rec: &Recorder,
    request_id: String,
    tenant: &str,
    placement: &str,
) -> Outcome {
    let r = pb::CancelReservationRequest {
        request_id,
        tenant_id: tenant.to_string(),
        reservation_id: placement.to_string(),
        fence: None,
    };
    let kind = OpKind::Cancel { tenant: tenant.into(), placement: placement.into() };
    let rpc = |ch, r| async move { client::scheduler(ch).cancel_reservation(r).await };
    write(c, rec, kind, 1, (r, rpc), |a: pb::CancelReservationResponse| acknowledged(a.write)).await
}

/// CreatePlacementGroup, retried with the same request id until answered (the answer carries
/// the first log index).
async fn create_group(
    c: &Client,
    rec: &Recorder,
    request_id: String,
    tenant: &str,
    group: &str,
    max: u64,
) -> Outcome {
    let r = pb::CreatePlacementGroupRequest {
        request_id,
        tenant_id: tenant.to_string(),
        group: group.to_string(),
        max_instances: u32::try_from(max).unwrap_or(u32::MAX),
        strategy: pb::GroupStrategy::Pack.into(),
    };
    let kind = OpKind::CreateGroup { tenant: tenant.into(), group: group.into(), max };
    let rpc = |ch, r| async move { client::scheduler(ch).create_placement_group(r).await };
    write(c, rec, kind, 5, (r, rpc), |a: pb::CreatePlacementGroupResponse| acknowledged(a.write))
        .await
}

/// DeleteTenant, retried with the same request id until answered.
async fn delete_tenant(c: &Client, rec: &Recorder, request_id: String, tenant: &str) -> Outcome {
    let r = pb::DeleteTenantRequest { request_id, tenant_id: tenant.to_string() };
    let kind = OpKind::DeleteTenant { tenant: tenant.into() };
    let rpc = |ch, r| async move { client::tenants(ch).delete_tenant(r).await };
    write(c, rec, kind, 5, (r, rpc), |a: pb::DeleteTenantResponse| acknowledged(a.write)).await
}

/// The lease state of an acknowledged lease answer.
fn lease_seen(write: Option<pb::WriteInfo>, lease: Option<pb::Lease>, grant: bool) -> Outcome {
    let log_index = write.as_ref().map(|w| w.log_index);
    let lease = lease.map(|l| LeaseSeen {
        token: l.token,
        at_ms: if grant { l.granted_at_ms } else { write.as_ref().map_or(0, |w| w.applied_at_ms) },
        expires_at_ms: l.expires_at_ms,
    });
    let at_ms = write.as_ref().map(|w| w.applied_at_ms);
    Outcome::Ok { log_index, found: None, lease, at_ms, expires_at_ms: None }
}

pub(crate) async fn acquire(
    c: &Client,
    rec: &Recorder,
    request_id: String,
    tenant: &str,
    lease: &str,
    holder: &str,
    ttl_ms: u64,
) -> Outcome {
    let r = pb::AcquireRequest {
        request_id,
        tenant_id: tenant.into(),
        name: lease.into(),
        holder: holder.into(),
        ttl_ms,
    };
    let kind =
        OpKind::Acquire { tenant: tenant.into(), lease: lease.into(), holder: holder.into() };
    let rpc = |ch, r| async move { client::leases(ch).acquire(r).await };
    write(c, rec, kind, 1, (r, rpc), |a: pb::AcquireResponse| lease_seen(a.write, a.lease, true))
        .await
}

pub(crate) async fn keep_alive(
    c: &Client,
    rec: &Recorder,
    request_id: String,
    tenant: &str,
    lease: &str,
    token: u64,
) -> Outcome {
    let r =
        pb::KeepAliveRequest { request_id, tenant_id: tenant.into(), name: lease.into(), token };
    let kind = OpKind::KeepAlive { tenant: tenant.into(), lease: lease.into(), token };
    let rpc = |ch, r| async move { client::leases(ch).keep_alive(r).await };
    write(c, rec, kind, 1, (r, rpc), |a: pb::KeepAliveResponse| lease_seen(a.write, a.lease, false))
        .await
}

async fn release_lease(
    c: &Client,
    rec: &Recorder,
    request_id: String,
    tenant: &str,
    lease: &str,
    token: u64,
) -> Outcome {
    let r =
        pb::ReleaseLeaseRequest { request_id, tenant_id: tenant.into(), name: lease.into(), token };
    let kind = OpKind::ReleaseLease { tenant: tenant.into(), lease: lease.into(), token };
    let rpc = |ch, r| async move { client::leases(ch).release(r).await };
    write(c, rec, kind, 1, (r, rpc), |a: pb::ReleaseLeaseResponse| acknowledged(a.write)).await
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
        Ok(_) => Outcome::read(true),
        Err(status) if status.code() == Code::NotFound => Outcome::read(false),
        Err(status) => outcome_of(&status),
    };
    rec.record(
        OpKind::Read { tenant: tenant.into(), placement: placement.into() },
        invoked,
        outcome,
    );
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

/// Quota-bound Place/Release with a linearizable read after every acknowledged Place, and
/// leases: acquire, keep-alive, release, and fenced Place/Release on the lease's tenant with
/// the token the client holds.
/// One request in this many is hostile (`hostile.rs`).
const HOSTILE_ONE_IN: u64 = 25;

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

/// Watches every running replica: core invariants, one leader per term, equal state at
/// equal applied command index, applied ≤ committed (every applied entry is durable on a
/// quorum of voters), and committed entries never change in any replica's log.
#[derive(Default)]
struct Watcher {
    leaders: BTreeMap<u64, u64>,
    hashes: BTreeMap<u64, String>,
    committed: Committed,
    violations: Vec<String>,
}

impl Watcher {
    fn check(
        &mut self,
        slots: &[Slot],
        logs: &[Arc<Mutex<MemLog>>],
        trace: &mut Vec<String>,
        at: u64,
    ) {
        for (slot, log) in slots.iter().zip(logs) {
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
            // Applied ≤ committed, and committed entries never change (`raft_checks`).
            let Some(applied) = status.last_applied_index else { continue };
            let Some(entry) = lock(log).entry(applied).map(<[u8]>::to_vec) else { continue };
            let copies: Vec<(Option<Vec<u8>>, Option<u64>)> = status
                .voters
                .keys()
                .filter_map(|v| logs.get(usize::try_from(*v).ok()?.checked_sub(1)?))
                .map(|l| {
                    let l = lock(l);
                    (l.durable_entry(applied).map(<[u8]>::to_vec), l.durable_purged_index())
                })
                .collect();
            let voters: Vec<Durable<'_>> = copies
                .iter()
                .map(|(entry, purged)| Durable { entry: entry.as_deref(), purged: *purged })
                .collect();
            if let Some(v) = self.committed.applied(status.id, applied, &entry, &voters) {
                self.violations.push(v);
            }
            let log = lock(log);
            self.violations
                .extend(self.committed.check_prefix(status.id, applied, |i| log.entry(i)));
        }
    }
}

/// Runs one seed of the random workload under random faults to the end and checks it.
pub fn run(seed: u64) -> Report {
    run_scenario(seed, Scenario::Faults)
}

/// Runs one seed of `scenario` to the end and checks it.
pub fn run_scenario(seed: u64, scenario: Scenario) -> Report {
    let mut rng = Rng::new(seed);
    let mut params = Params::from_seed(&mut rng);
    if scenario == Scenario::Fairness {
        params.workload_ms = fairness::WORKLOAD_MS;
    }
    berth::raft::runtime::seed_thread_rng(rng.next_u64());
    let mut report = Report { seed, params: Some(params.clone()), ..Default::default() };
    let mut trace: Vec<String> = Vec::new();

    let (ca, pems, tls) = match certificates(params.replicas) {
        Ok(made) => made,
        Err(e) => {
            report.violations.push(format!("no certificates for the cluster: {e}"));
            return report;
        }
    };

    let mut sim = turmoil::Builder::new()
        .rng_seed(rng.next_u64())
        .epoch(SystemTime::UNIX_EPOCH + Duration::from_millis(crate::history::EPOCH_MS))
        .simulation_duration(Duration::from_secs(600))
        .tick_duration(Duration::from_millis(1))
        .min_message_latency(Duration::from_micros(200))
        .max_message_latency(Duration::from_millis(3))
        // Membership churn can queue many connections on one port (turmoil's default is 64).
        .tcp_capacity(65_536)
        .build();

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
        let snapshot: Arc<Mutex<Option<StoredSnapshot>>> = Arc::default();
        let (s, c, m, snapshot_logs) =
            (slot.clone(), clock.clone(), members.clone(), params.snapshot_logs);
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
                options.write_deadline = Duration::from_secs(2);
                // A fail-stop ends this host with an error (a violation), not the process.
                options.fail_stop = berth::fatal::FailStop::record();
                // What was not flushed before a crash is gone (a no-op on first start).
                lock(&log).crash();
                let storage = Storage {
                    log: LogStore::memory(log),
                    snapshots: SnapshotStore::Memory(snapshot),
                };
                let listeners = Listeners {
                    peer: net::listen(PEER_PORT).await?,
                    api: Some((net::listen(API_PORT).await?, berth::api::hash_token(ADMIN))),
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

    let history: Arc<Mutex<Vec<Op>>> = Arc::default();
    let ready = Arc::new(AtomicBool::new(false));
    let healed = Arc::new(AtomicBool::new(false));
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
        let (slots, tls) = (slots.clone(), tls.clone());
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
            (params.clone(), tls.clone(), slots.clone(), rng.next_u64());
        sim.client("rival", async move {
            scenario::rival(params2, tls2, rec, step, slots2, scenario_seed).await?;
            Ok(())
        });
    }
    let fair_jobs: Arc<Mutex<Vec<fairness::Job>>> = Arc::default();
    if scenario == Scenario::Fairness {
        for t in 0..fairness::WEIGHTS.len() {
            let (params, tls, ready, jobs, seed) =
                (params.clone(), tls.clone(), ready.clone(), fair_jobs.clone(), rng.next_u64());
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
    let membership_events: Arc<Mutex<Vec<String>>> = Arc::default();
    if params.membership && scenario != Scenario::LeaseExpiry {
        let (params, tls, events) = (params.clone(), tls.clone(), membership_events.clone());
        let (ready, healed, seed) = (ready.clone(), healed.clone(), rng.next_u64());
        sim.client("member", async move {
            membership(params, tls, seed, events, ready, healed).await?;
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
            if scenario == Scenario::LeaseExpiry {
                // This scenario makes its own faults.
            } else if let Some(fault) = nemesis.maybe_act(at, &mut sim, &slots, &clocks) {
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
            watcher.check(&slots, &logs, &mut trace, at);
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
    watcher.check(&slots, &logs, &mut trace, at);
    report.violations.append(&mut watcher.violations);

    for event in lock(&membership_events).iter() {
        trace.push(format!("membership {event}"));
        report.faults.push(format!("membership {event}"));
    }
    let history = lock(&history).clone();
    report.violations.extend(check(&history, &params.quotas));
    if scenario == Scenario::LeaseExpiry {
        match scenario::verify_lease_expiry(&history) {
            Ok(steps) => report.scenario = steps,
            Err(missing) => report.violations.push(format!("lease-expiry scenario: {missing}")),
        }
    }
    if scenario == Scenario::Fairness {
        let figures = fairness::measure(&lock(&fair_jobs));
        report.scenario = figures.lines();
        report.fairness = Some(figures);
    }
    for op in &history {
        trace.push(serde_json::to_string(op).unwrap_or_default());
        match (&op.kind, &op.outcome) {
            (OpKind::Acquire { .. }, Outcome::Ok { .. }) => report.lease_grants += 1,
            (_, outcome) if is_stale(outcome) => report.stale_refused += 1,
            _ => {}
        }
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
