//! Client workloads against the public API, each operation recorded in the history.
//!
//! - `register`: SetQuota(instances = v) / GetQuota on one tenant per key — a linearizable
//!   register of unique values.
//! - `quota`: Place (1 instance) / Release / GetQuota usage against a tight `instances` limit.
//! - `capacity`: Place plain, hard anti-affinity and placement-group workloads (250 or 500
//!   millicores per instance) on a pool of four 1000-millicore workers, and Release them.
//! - `tenants`: CreateTenant / Place into it / DeleteTenant under load, and probes reading
//!   another tenant with a tenant token (which must be refused).
//! - `worker`: Place spread placements of two instances on the pool of `berth agent`
//!   processes (`fleet`), which the nemesis kills and pauses, and Release them.
//! - `lease`: Acquire, fenced writes (Place with a Fence), KeepAlive, Release; some clients
//!   stall past the TTL while holding and then try a fenced write. Lease clients run as
//!   processes of their own (`clientproc`), which the `pause` nemesis also SIGSTOPs.
//!
//! Outcomes: a response is `ok`; a definite rejection (a business error code) is `fail`; an
//! UNAVAILABLE / DEADLINE_EXCEEDED / transport error is `info` for a write (it may have
//! happened) and `fail` for a read (reads change nothing). After an `info` the client takes a
//! new process id, as in Jepsen, so its unknown operation stays concurrent with everything
//! after it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth::client::{self, pb, Client, ClientOptions, ClientSecurity};
use tokio::time::Instant;
use tonic::{Code, Status};
use tonic_types::StatusExt;

use crate::checker;
use crate::history::{Op, Outcome, Recorder, Type};
use berth_rng::Rng;

pub const REGISTER_KEYS: u64 = 3;
pub const QUOTA_TENANTS: u64 = 2;
pub const LEASE_TENANT: &str = "l-0";
pub const LEASE_NAMES: u64 = 2;
pub const LEASE_TTL_MS: u64 = 1_000;
pub const WORKERS: u64 = 3;
/// Big enough that capacity never decides a quota or lease placement (the largest worker
/// Berth accepts: a million placements of `PLACE_CPU`).
pub const WORKER_CPU: u64 = berth::scheduler::resources::WORKER_CPU_MILLIS_MAX;
pub const WORKER_MEM: u64 = 100_000_000;
pub const PLACE_CPU: u64 = 10;
pub const PLACE_MEM: u64 = 10;
pub const CAPACITY_TENANT: &str = "cap-0";
pub const CAPACITY_POOL: &str = "cap";
pub const CAPACITY_WORKERS: u64 = 4;
pub const CAPACITY_MEM: u64 = 100;
pub const CAPACITY_GROUP: &str = "g";
/// The tenants workload's probe: a token of `PROBE_FROM` reading `PROBE_TO`.
pub const PROBE_FROM: &str = "probe-a";
pub const PROBE_TO: &str = "probe-b";
/// Key of the tenants workload's created tenants in `Shared::placed`.
const CREATED: &str = "*created*";

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    Capacity,
    Tenants,
    Quota,
    Lease,
    Register,
    Worker,
}

impl Workload {
    pub fn parse(s: &str) -> anyhow::Result<Workload> {
        match s {
            "capacity" => Ok(Workload::Capacity),
            "tenants" => Ok(Workload::Tenants),
            "quota" => Ok(Workload::Quota),
            "lease" => Ok(Workload::Lease),
            "register" => Ok(Workload::Register),
            "worker" => Ok(Workload::Worker),
            other => anyhow::bail!(
                "unknown workload {other:?} (quota, capacity, lease, register, tenants, worker)"
            ),
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Workload::Capacity => "capacity",
            Workload::Tenants => "tenants",
            Workload::Quota => "quota",
            Workload::Lease => "lease",
            Workload::Register => "register",
            Workload::Worker => "worker",
        }
    }
}

pub fn register_key(i: u64) -> String {
    format!("reg-{i}")
}
pub fn quota_tenant(i: u64) -> String {
    format!("q-{i}")
}

/// What the client tasks share.
pub struct Shared {
    pub endpoints: Vec<String>,
    pub token: String,
    /// How clients reach the API (TLS, trusting the run's CA).
    pub tls: ClientSecurity,
    pub recorder: Recorder,
    pub quota_limit: u64,
    /// Placement ids placed (ok or unknown) per quota tenant, for releases to pick from.
    pub placed: Mutex<BTreeMap<String, Vec<String>>>,
    pub next_value: AtomicU64,
    /// A token of tenant `PROBE_FROM`, issued at setup.
    pub probe_token: std::sync::OnceLock<String>,
    pub counts: [AtomicU64; 3],
    /// Running lease client processes: pid → worker (see `clientproc`).
    pub client_pids: Mutex<BTreeMap<u32, u64>>,
    /// The worker workload's agent processes (see `fleet`).
    pub agents: Mutex<Option<crate::fleet::Agents>>,
}

impl Shared {
    pub fn new(
        endpoints: Vec<String>,
        token: String,
        tls: ClientSecurity,
        recorder: Recorder,
        quota_limit: u64,
    ) -> Shared {
        Shared {
            endpoints,
            token,
            tls,
            recorder,
            quota_limit,
            placed: Mutex::new(BTreeMap::new()),
            next_value: AtomicU64::new(1),
            probe_token: std::sync::OnceLock::new(),
            counts: [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)],
            client_pids: Mutex::new(BTreeMap::new()),
            agents: Mutex::new(None),
        }
    }

    pub fn client(&self, deadline: Duration) -> anyhow::Result<Client> {
        Client::new(
            &self.endpoints,
            Some(&self.token),
            &self.tls,
            ClientOptions { deadline, attempt_timeout: Duration::from_millis(1_000) },
        )
    }
    pub fn count(&self, kind: Type) {
        let i = match kind {
            Type::Ok => 0,
            Type::Fail => 1,
            _ => 2,
        };
        self.counts[i].fetch_add(1, Ordering::Relaxed);
    }
}

fn write_info(w: Option<&pb::WriteInfo>) -> Outcome {
    Outcome {
        log_index: w.map(|w| w.log_index),
        applied_at_ms: w.map(|w| w.applied_at_ms),
        ..Outcome::default()
    }
}

/// The ErrorInfo reason of a status, or its code.
pub fn reason(status: &Status) -> String {
    status
        .get_details_error_info()
        .map(|i| i.reason)
        .unwrap_or_else(|| format!("{:?}", status.code()))
}

/// `fail` for a definite rejection, else `info` (writes) / `fail` (reads).
pub fn failure(status: &Status, read: bool) -> (Type, Outcome) {
    let definite = matches!(
        status.code(),
        Code::InvalidArgument
            | Code::NotFound
            | Code::AlreadyExists
            | Code::ResourceExhausted
            | Code::FailedPrecondition
            | Code::PermissionDenied
            | Code::Unauthenticated
            | Code::OutOfRange
    );
    let kind = if definite || read { Type::Fail } else { Type::Info };
    (kind, Outcome { error: Some(reason(status)), ..Outcome::default() })
}

pub async fn set_register(c: &Client, key: &str, v: u64) -> Result<Outcome, Status> {
    let req = pb::SetQuotaRequest {
        request_id: client::new_request_id(),
        tenant_id: key.to_owned(),
        quota: Some(pb::Quota {
            total: Some(pb::Limits { instances: Some(v), ..Default::default() }),
            ..Default::default()
        }),
    };
    let r = c.call(req, |ch, r| async move { client::tenants(ch).set_quota(r).await }).await?;
    Ok(write_info(r.write.as_ref()))
}

pub async fn get_quota(c: &Client, tenant: &str) -> Result<pb::GetQuotaResponse, Status> {
    let req = pb::GetQuotaRequest { tenant_id: tenant.to_owned(), read: None };
    c.call(req, |ch, r| async move { client::tenants(ch).get_quota(r).await }).await
}

pub fn place_request(tenant: &str, id: &str, fence: Option<pb::Fence>) -> pb::PlaceRequest {
    pb::PlaceRequest {
        request_id: client::new_request_id(),
        tenant_id: tenant.to_owned(),
        spec: Some(pb::PlacementSpec {
            placement_id: id.to_owned(),
            count: 1,
            resources: Some(pb::Resources { cpu_millis: PLACE_CPU, memory_mib: PLACE_MEM }),
            ..Default::default()
        }),
        fence,
        ..Default::default()
    }
}

async fn place(c: &Client, req: pb::PlaceRequest) -> Result<Outcome, Status> {
    let r = c.call(req, |ch, r| async move { client::scheduler(ch).place(r).await }).await?;
    Ok(write_info(r.write.as_ref()))
}

async fn release(c: &Client, tenant: &str, id: &str) -> Result<Outcome, Status> {
    let req = pb::ReleaseRequest {
        request_id: client::new_request_id(),
        tenant_id: tenant.to_owned(),
        placement_id: id.to_owned(),
        fence: None,
    };
    let r = c.call(req, |ch, r| async move { client::scheduler(ch).release(r).await }).await?;
    Ok(write_info(r.write.as_ref()))
}

fn lease_outcome(write: Option<&pb::WriteInfo>, lease: Option<&pb::Lease>) -> Outcome {
    let mut o = write_info(write);
    o.value = lease.map(|l| l.token);
    o.expires_at_ms = lease.map(|l| l.expires_at_ms);
    o
}

/// Runs one client until `until`: `rate_per_client` ops/s at most (0: as fast as it can).
#[allow(clippy::too_many_arguments)]
/// The placements of `tenant` a release may pick from: placed, or maybe placed.
fn known_placements(shared: &Shared, tenant: &str) -> Vec<String> {
    let placed = shared.placed.lock().unwrap_or_else(|e| e.into_inner());
    placed.get(tenant).cloned().unwrap_or_default()
}

/// Records `op` (a Place of `spec`) and its outcome, with the workers it landed on; remembers
/// the id for releases unless the Place definitely failed.
async fn place_recorded(
    c: &Client,
    shared: &Shared,
    process: u64,
    op: Op,
    tenant: &str,
    spec: pb::PlacementSpec,
) -> (Type, Outcome) {
    let rec = &shared.recorder;
    let id = spec.placement_id.clone();
    let inv = rec.invoke(process, op);
    let req = pb::PlaceRequest {
        request_id: client::new_request_id(),
        tenant_id: tenant.to_owned(),
        spec: Some(spec),
        ..Default::default()
    };
    let res = match c.call(req, |ch, r| async move { client::scheduler(ch).place(r).await }).await {
        Ok(r) => {
            let mut o = write_info(r.write.as_ref());
            o.workers = r.placement.map(|p| p.workers).unwrap_or_default();
            (Type::Ok, o)
        }
        Err(s) => failure(&s, false),
    };
    rec.complete(&inv, res.0, res.1.clone());
    if res.0 != Type::Fail {
        let mut placed = shared.placed.lock().unwrap_or_else(|e| e.into_inner());
        placed.entry(tenant.to_owned()).or_default().push(id);
    }
    res
}

/// Records a Release of `id` as `workload`'s and its outcome; forgets the id unless the outcome
/// is unknown.
async fn release_recorded(
    c: &Client,
    shared: &Shared,
    process: u64,
    workload: &str,
    tenant: &str,
    id: &str,
) -> (Type, Outcome) {
    let rec = &shared.recorder;
    let inv = rec.invoke(process, Op::invoke(workload, "release", tenant).with_id(id.to_owned()));
    let res = match release(c, tenant, id).await {
        Ok(o) => (Type::Ok, o),
        Err(s) => failure(&s, false),
    };
    rec.complete(&inv, res.0, res.1.clone());
    if res.0 != Type::Info {
        let mut placed = shared.placed.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(ids) = placed.get_mut(tenant) {
            ids.retain(|x| x != id);
        }
    }
    res
}

pub async fn client_loop(
    shared: Arc<Shared>,
    workload: Workload,
    worker: u64,
    concurrency: u64,
    gap: Duration,
    seed: u64,
    until: Instant,
) -> anyhow::Result<()> {
    let c = shared.client(Duration::from_secs(4))?;
    // Mixed non-linearly: streams of neighbouring workers must not be shifts of each other.
    let mut rng = Rng::new(
        Rng::new(seed).next_u64()
            ^ Rng::new(worker.wrapping_add(1) << 20).next_u64().rotate_left(17),
    );
    let mut generation = 0u64;
    let mut holding: Option<(String, u64)> = None;
    let probe = match shared.probe_token.get() {
        Some(token) => Some(Client::new(
            &shared.endpoints,
            Some(token),
            &shared.tls,
            ClientOptions {
                deadline: Duration::from_secs(4),
                attempt_timeout: Duration::from_millis(1_000),
            },
        )?),
        None => None,
    };
    let holder = |g: u64| format!("p{}", worker + 1 + g * concurrency);
    while Instant::now() < until {
        let process = worker + 1 + generation * concurrency;
        let rec = &shared.recorder;
        let result: (Type, Outcome) = match workload {
            Workload::Register => {
                let key = register_key(rng.below(REGISTER_KEYS));
                if rng.below(2) == 0 {
                    let v = shared.next_value.fetch_add(1, Ordering::Relaxed);
                    let op = Op::invoke("register", "write", &key).with_arg(v);
                    let inv = rec.invoke(process, op);
                    let res = match set_register(&c, &key, v).await {
                        Ok(o) => (Type::Ok, o),
                        Err(s) => failure(&s, false),
                    };
                    rec.complete(&inv, res.0, res.1.clone());
                    res
                } else {
                    let op = Op::invoke("register", "read", &key);
                    let inv = rec.invoke(process, op);
                    let res = match get_quota(&c, &key).await {
                        Ok(q) => (
                            Type::Ok,
                            Outcome {
                                value: Some(
                                    q.quota
                                        .and_then(|q| q.total)
                                        .and_then(|l| l.instances)
                                        .unwrap_or(crate::checker::register::INITIAL),
                                ),
                                ..Outcome::default()
                            },
                        ),
                        Err(s) => failure(&s, true),
                    };
                    rec.complete(&inv, res.0, res.1.clone());
                    res
                }
            }
            Workload::Quota => {
                let tenant = quota_tenant(rng.below(QUOTA_TENANTS));
                let roll = rng.below(100);
                let known: Vec<String> = shared
                    .placed
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(&tenant)
                    .cloned()
                    .unwrap_or_default();
                if roll < 45 || (roll < 80 && known.is_empty()) {
                    let id = format!("p{process}-{}", rng.below(u64::MAX));
                    let op = Op::invoke("quota", "place", &tenant).with_id(id.clone());
                    let inv = rec.invoke(process, op);
                    let res = match place(&c, place_request(&tenant, &id, None)).await {
                        Ok(o) => (Type::Ok, o),
                        Err(s) => failure(&s, false),
                    };
                    rec.complete(&inv, res.0, res.1.clone());
                    if res.0 != Type::Fail {
                        let mut placed = shared.placed.lock().unwrap_or_else(|e| e.into_inner());
                        placed.entry(tenant.clone()).or_default().push(id);
                    }
                    res
                } else if roll < 80 {
                    let pick = usize::try_from(rng.below(u64::try_from(known.len())?))?;
                    let id = known[pick].clone();
                    let op = Op::invoke("quota", "release", &tenant).with_id(id.clone());
                    let inv = rec.invoke(process, op);
                    let res = match release(&c, &tenant, &id).await {
                        Ok(o) => (Type::Ok, o),
                        Err(s) => failure(&s, false),
                    };
                    rec.complete(&inv, res.0, res.1.clone());
                    if res.0 != Type::Info {
                        let mut placed = shared.placed.lock().unwrap_or_else(|e| e.into_inner());
                        if let Some(ids) = placed.get_mut(&tenant) {
                            ids.retain(|x| *x != id);
                        }
                    }
                    res
                } else {
                    let op = Op::invoke("quota", "read", &tenant);
                    let inv = rec.invoke(process, op);
                    let res = match get_quota(&c, &tenant).await {
                        Ok(q) => (
                            Type::Ok,
                            Outcome {
                                value: Some(q.usage.map(|u| u.instances).unwrap_or(0)),
                                ..Outcome::default()
                            },
                        ),
                        Err(s) => failure(&s, true),
                    };
                    rec.complete(&inv, res.0, res.1.clone());
                    res
                }
            }
            Workload::Tenants => {
                let known: Vec<String> = shared
                    .placed
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(CREATED)
                    .cloned()
                    .unwrap_or_default();
                let roll = rng.below(100);
                let pick = |rng: &mut Rng| -> anyhow::Result<String> {
                    Ok(known[usize::try_from(rng.below(u64::try_from(known.len())?))?].clone())
                };
                if roll < 20 || (roll < 70 && known.is_empty()) {
                    let tenant = format!("t-{}", rng.below(1_000_000_000));
                    let inv = rec.invoke(process, Op::invoke("tenants", "create", &tenant));
                    let req = pb::CreateTenantRequest {
                        request_id: client::new_request_id(),
                        tenant_id: tenant.clone(),
                        ..Default::default()
                    };
                    let res = match c
                        .call(
                            req,
                            |ch, r| async move { client::tenants(ch).create_tenant(r).await },
                        )
                        .await
                    {
                        Ok(r) => (Type::Ok, write_info(r.write.as_ref())),
                        Err(s) => failure(&s, false),
                    };
                    rec.complete(&inv, res.0, res.1.clone());
                    if res.0 != Type::Fail {
                        let mut placed = shared.placed.lock().unwrap_or_else(|e| e.into_inner());
                        placed.entry(CREATED.to_owned()).or_default().push(tenant);
                    }
                    res
                } else if roll < 55 {
                    let tenant = pick(&mut rng)?;
                    let id = format!("t{process}-{}", rng.below(u64::MAX));
                    let op = Op::invoke("tenants", "place", &tenant).with_id(id.clone());
                    let inv = rec.invoke(process, op);
                    let res = match place(&c, place_request(&tenant, &id, None)).await {
                        Ok(o) => (Type::Ok, o),
                        Err(s) => failure(&s, false),
                    };
                    rec.complete(&inv, res.0, res.1.clone());
                    res
                } else if roll < 70 {
                    let tenant = pick(&mut rng)?;
                    let inv = rec.invoke(process, Op::invoke("tenants", "delete", &tenant));
                    let req = pb::DeleteTenantRequest {
                        request_id: client::new_request_id(),
                        tenant_id: tenant.clone(),
                    };
                    let res = match c
                        .call(
                            req,
                            |ch, r| async move { client::tenants(ch).delete_tenant(r).await },
                        )
                        .await
                    {
                        Ok(r) => (Type::Ok, write_info(r.write.as_ref())),
                        Err(s) => failure(&s, false),
                    };
                    rec.complete(&inv, res.0, res.1.clone());
                    if res.0 != Type::Info {
                        let mut placed = shared.placed.lock().unwrap_or_else(|e| e.into_inner());
                        if let Some(ids) = placed.get_mut(CREATED) {
                            ids.retain(|x| *x != tenant);
                        }
                    }
                    res
                } else {
                    let inv = rec.invoke(process, Op::invoke("tenants", "probe", PROBE_TO));
                    let res = match &probe {
                        Some(p) => match get_quota(p, PROBE_TO).await {
                            Ok(_) => (Type::Ok, Outcome::default()),
                            Err(s) => failure(&s, true),
                        },
                        None => (
                            Type::Fail,
                            Outcome { error: Some("NO_PROBE_TOKEN".into()), ..Outcome::default() },
                        ),
                    };
                    rec.complete(&inv, res.0, res.1.clone());
                    res
                }
            }
            Workload::Worker => {
                let tenant = checker::worker::TENANT;
                let known = known_placements(&shared, tenant);
                if rng.below(100) < 55 || known.is_empty() {
                    let id = format!("k{process}-{}", rng.below(u64::MAX));
                    // One in four is released, not moved, when a worker holding it goes down.
                    let on_lost = if rng.below(4) == 0 { "release" } else { "reschedule" };
                    let spec = pb::PlacementSpec {
                        placement_id: id.clone(),
                        count: 2,
                        resources: Some(pb::Resources {
                            cpu_millis: checker::worker::INSTANCE_CPU,
                            memory_mib: checker::worker::INSTANCE_MEM,
                        }),
                        pool: checker::worker::POOL.to_owned(),
                        strategy: pb::Strategy::Spread.into(),
                        on_worker_lost: if on_lost == "release" {
                            pb::OnWorkerLost::Release.into()
                        } else {
                            pb::OnWorkerLost::Reschedule.into()
                        },
                        ..Default::default()
                    };
                    let op = Op::invoke("worker", "place", tenant).with_id(id).with_detail(on_lost);
                    place_recorded(&c, &shared, process, op, tenant, spec).await
                } else {
                    let pick = usize::try_from(rng.below(u64::try_from(known.len())?))?;
                    release_recorded(&c, &shared, process, "worker", tenant, &known[pick]).await
                }
            }
            Workload::Capacity => {
                let tenant = CAPACITY_TENANT;
                let known = known_placements(&shared, tenant);
                if rng.below(100) < 55 || known.is_empty() {
                    let id = format!("c{process}-{}", rng.below(u64::MAX));
                    let cpu = [250, 500][usize::try_from(rng.below(2))?];
                    let roll = rng.below(10);
                    let detail = if roll < 3 {
                        checker::capacity::ANTI_AFFINITY
                    } else if roll < 6 {
                        checker::capacity::GROUP
                    } else {
                        "plain"
                    };
                    let mut spec = pb::PlacementSpec {
                        placement_id: id.clone(),
                        count: 1 + u32::try_from(rng.below(2))?,
                        resources: Some(pb::Resources {
                            cpu_millis: cpu,
                            memory_mib: CAPACITY_MEM,
                        }),
                        pool: CAPACITY_POOL.to_owned(),
                        strategy: i32::try_from(rng.below(2))?,
                        ..Default::default()
                    };
                    if detail == checker::capacity::ANTI_AFFINITY {
                        spec.labels.insert("app".into(), "aa".into());
                        spec.anti_affinity
                            .push(pb::LabelTerm { key: "app".into(), value: "aa".into() });
                    } else if detail == checker::capacity::GROUP {
                        spec.group = CAPACITY_GROUP.to_owned();
                    }
                    let op = Op::invoke("capacity", "place", tenant)
                        .with_id(id)
                        .with_arg(cpu)
                        .with_detail(detail);
                    place_recorded(&c, &shared, process, op, tenant, spec).await
                } else {
                    let pick = usize::try_from(rng.below(u64::try_from(known.len())?))?;
                    release_recorded(&c, &shared, process, "capacity", tenant, &known[pick]).await
                }
            }
            Workload::Lease => match holding.clone() {
                None => {
                    let name = format!("lock-{}", rng.below(LEASE_NAMES));
                    let op = Op::invoke("lease", "acquire", &name).with_id(holder(generation));
                    let inv = rec.invoke(process, op);
                    let req = pb::AcquireRequest {
                        request_id: client::new_request_id(),
                        tenant_id: LEASE_TENANT.to_owned(),
                        name: name.clone(),
                        holder: holder(generation),
                        ttl_ms: LEASE_TTL_MS,
                    };
                    let res = match c
                        .call(req, |ch, r| async move { client::leases(ch).acquire(r).await })
                        .await
                    {
                        Ok(r) => (Type::Ok, lease_outcome(r.write.as_ref(), r.lease.as_ref())),
                        Err(s) => failure(&s, false),
                    };
                    rec.complete(&inv, res.0, res.1.clone());
                    if let (Type::Ok, Some(token)) = (res.0, res.1.value) {
                        holding = Some((name, token));
                    }
                    res
                }
                Some((name, token)) => {
                    let roll = rng.below(100);
                    if roll < 10 {
                        // A paused client: it still believes it holds the lease.
                        tokio::time::sleep(Duration::from_millis(LEASE_TTL_MS + 500)).await;
                    }
                    if roll < 70 {
                        let id = format!("f{process}-{}", rng.below(u64::MAX));
                        let op = Op::invoke("lease", "fenced-write", &name)
                            .with_id(id.clone())
                            .with_arg(token);
                        let inv = rec.invoke(process, op);
                        let fence = pb::Fence { lease: name.clone(), token };
                        let res =
                            match place(&c, place_request(LEASE_TENANT, &id, Some(fence))).await {
                                Ok(o) => (Type::Ok, o),
                                Err(s) => failure(&s, false),
                            };
                        rec.complete(&inv, res.0, res.1.clone());
                        if res.0 != Type::Ok {
                            holding = None;
                        }
                        res
                    } else if roll < 85 {
                        let op = Op::invoke("lease", "keepalive", &name).with_arg(token);
                        let inv = rec.invoke(process, op);
                        let req = pb::KeepAliveRequest {
                            request_id: client::new_request_id(),
                            tenant_id: LEASE_TENANT.to_owned(),
                            name: name.clone(),
                            token,
                        };
                        let res = match c
                            .call(
                                req,
                                |ch, r| async move { client::leases(ch).keep_alive(r).await },
                            )
                            .await
                        {
                            Ok(r) => (Type::Ok, lease_outcome(r.write.as_ref(), r.lease.as_ref())),
                            Err(s) => failure(&s, false),
                        };
                        rec.complete(&inv, res.0, res.1.clone());
                        if res.0 != Type::Ok {
                            holding = None;
                        }
                        res
                    } else {
                        let op = Op::invoke("lease", "release-lease", &name).with_arg(token);
                        let inv = rec.invoke(process, op);
                        let req = pb::ReleaseLeaseRequest {
                            request_id: client::new_request_id(),
                            tenant_id: LEASE_TENANT.to_owned(),
                            name: name.clone(),
                            token,
                        };
                        let res = match c
                            .call(req, |ch, r| async move { client::leases(ch).release(r).await })
                            .await
                        {
                            Ok(r) => (Type::Ok, write_info(r.write.as_ref())),
                            Err(s) => failure(&s, false),
                        };
                        rec.complete(&inv, res.0, res.1.clone());
                        holding = None;
                        res
                    }
                }
            },
        };
        shared.count(result.0);
        if result.0 == Type::Info {
            generation += 1;
            holding = None;
        }
        if !gap.is_zero() {
            let jitter = rng.below(u64::try_from(gap.as_millis()).unwrap_or(0).max(1));
            tokio::time::sleep(gap / 2 + Duration::from_millis(jitter)).await;
        }
    }
    Ok(())
}
