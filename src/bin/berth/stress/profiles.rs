//! The stress profiles. Each sets up tenants, pools and workers of its own (named after the
//! run), drives them through the public API, checks what must hold and measures what it saw,
//! and gives back what it holds when it ends (deleting its tenants), so profiles and runs do not
//! disturb each other.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use berth::client::{self, new_request_id, pb, Client};
use tokio::sync::{Barrier, Semaphore};
use tonic::Code;

use super::record::percentile;
use super::{
    spec, tenant_with_token, tenants_with_clients, weighted_tenant_with_token, workers, Background,
    Ctx, Outcome, Profile, ScalingPoint, StressArgs,
};

/// Every placement the profiles make takes this much cpu.
pub(super) const JOB_CPU_MILLIS: u64 = 100;

type Reply<T> = Result<T, tonic::Status>;

/// Runs `work(i)` for every `i` in `0..n`, at most `limit` at once, and returns the results
/// in order.
async fn concurrently<T, Fut>(n: u32, limit: usize, work: impl Fn(u32) -> Fut) -> Vec<T>
where
    T: Send + 'static,
    Fut: Future<Output = T> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(limit.max(1)));
    let mut tasks = Vec::new();
    for i in 0..n {
        let permit = permits.clone().acquire_owned().await;
        let work = work(i);
        tasks.push(tokio::spawn(async move {
            let _permit = permit;
            work.await
        }));
    }
    let mut out = Vec::new();
    for task in tasks {
        match task.await {
            Ok(value) => out.push(value),
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }
    out
}

/// A request that places `spec` for `tenant`, with a new request id.
pub(super) fn place_request(
    tenant: &str,
    spec: pb::PlacementSpec,
    queue: bool,
) -> pb::PlaceRequest {
    pb::PlaceRequest {
        request_id: new_request_id(),
        tenant_id: tenant.into(),
        spec: Some(spec),
        fence: None,
        dry_run: false,
        queue_if_unavailable: queue,
    }
}

/// The call that places `spec` for `tenant` through `c` (one attempt or more, the same id).
fn place_call<'a>(
    c: &'a Client,
    tenant: &str,
    spec: pb::PlacementSpec,
    queue: bool,
) -> impl Future<Output = Reply<pb::PlaceResponse>> + 'a {
    let m = place_request(tenant, spec, queue);
    c.call(m, |ch, r| async move { client::scheduler(ch).place(r).await })
}

/// A request that releases `tenant`'s placement `id`, with a new request id.
pub(super) fn release_request(tenant: &str, id: &str) -> pb::ReleaseRequest {
    pb::ReleaseRequest {
        request_id: new_request_id(),
        tenant_id: tenant.into(),
        placement_id: id.into(),
        fence: None,
    }
}

/// A request that reserves one job's worth in `pool` for `tenant` as `id`, for `ttl_ms`.
pub(super) fn reserve_request(
    tenant: &str,
    id: &str,
    pool: &str,
    ttl_ms: u64,
) -> pb::ReserveRequest {
    pb::ReserveRequest {
        request_id: new_request_id(),
        tenant_id: tenant.into(),
        spec: Some(spec(id, pool, JOB_CPU_MILLIS)),
        ttl_ms,
        fence: None,
    }
}

/// A request that acquires `tenant`'s lease `name` as `holder` for `ttl_ms`.
pub(super) fn acquire_request(
    tenant: &str,
    name: &str,
    holder: &str,
    ttl_ms: u64,
) -> pb::AcquireRequest {
    pb::AcquireRequest {
        request_id: new_request_id(),
        tenant_id: tenant.into(),
        name: name.into(),
        holder: holder.into(),
        ttl_ms,
    }
}

/// The call that releases `tenant`'s placement `id` through `c`.
fn release_call<'a>(
    c: &'a Client,
    tenant: &str,
    id: &str,
) -> impl Future<Output = Reply<pb::ReleaseResponse>> + 'a {
    let m = release_request(tenant, id);
    c.call(m, |ch, r| async move { client::scheduler(ch).release(r).await })
}

async fn place(
    ctx: &Ctx,
    c: &Arc<Client>,
    tenant: &str,
    spec: pb::PlacementSpec,
    queue: bool,
) -> Reply<pb::PlaceResponse> {
    let call = place_call(c, tenant, spec, queue);
    ctx.recorder.timed(tenant, "Scheduler/Place", call).await
}

async fn release(ctx: &Ctx, c: &Arc<Client>, tenant: &str, id: &str) -> Reply<pb::ReleaseResponse> {
    let call = release_call(c, tenant, id);
    ctx.recorder.timed(tenant, "Scheduler/Release", call).await
}

pub(super) async fn list(ctx: &Ctx, c: &Arc<Client>, tenant: &str) -> Reply<Vec<pb::Placement>> {
    let m = pb::ListPlacementsRequest {
        tenant_id: tenant.into(),
        page: Some(pb::Page { after: String::new(), limit: 1_000 }),
        read: None,
    };
    let call = c.call(m, |ch, r| async move { client::scheduler(ch).list_placements(r).await });
    Ok(ctx.recorder.timed(tenant, "Scheduler/ListPlacements", call).await?.placements)
}

pub(super) async fn usage(ctx: &Ctx, c: &Arc<Client>, tenant: &str) -> Reply<pb::GetQuotaResponse> {
    let m = pb::GetQuotaRequest { tenant_id: tenant.into(), read: None };
    let call = c.call(m, |ch, r| async move { client::tenants(ch).get_quota(r).await });
    ctx.recorder.timed(tenant, "Tenants/GetQuota", call).await
}

async fn delete(ctx: &Ctx, tenant: &str) -> Reply<pb::DeleteTenantResponse> {
    let m = pb::DeleteTenantRequest { request_id: new_request_id(), tenant_id: tenant.into() };
    let c = &ctx.client;
    let call = c.call(m, |ch, r| async move { client::tenants(ch).delete_tenant(r).await });
    let deleted = ctx.recorder.timed(tenant, "Tenants/DeleteTenant", call).await;
    if deleted.is_ok() {
        ctx.deleted(tenant);
    }
    deleted
}

pub(super) async fn pool_status(ctx: &Ctx, name: &str) -> anyhow::Result<pb::Pool> {
    let m = pb::GetPoolRequest { pool: name.into(), read: None };
    let c = &ctx.client;
    let reply = c
        .call(m, |ch, r| async move { client::workers(ch).get_pool(r).await })
        .await
        .map_err(|s| anyhow::anyhow!(crate::cli::describe(&s)))?;
    reply.pool.ok_or_else(|| anyhow::anyhow!("pool {name} has no status"))
}

pub(super) fn cpu(p: Option<pb::Resources>) -> u64 {
    p.map_or(0, |r| r.cpu_millis)
}

pub(super) fn reason(status: &tonic::Status) -> String {
    use tonic_types::StatusExt;
    status.get_details_error_info().map_or_else(|| format!("{:?}", status.code()), |i| i.reason)
}

/// Latency figures (p50, p95, p99 in µs) of `profile`'s successful calls.
fn latency_figures(ctx: &Ctx, o: &mut Outcome, profile: Profile) {
    let us = ctx.recorder.latencies(profile.name(), 0);
    o.figure("calls answered OK", us.len() as u64, "");
    o.figure("p50 latency", percentile(&us, 500), "µs");
    o.figure("p95 latency", percentile(&us, 950), "µs");
    o.figure("p99 latency", percentile(&us, 990), "µs");
}

/// N tenants × M placements at once, each tenant with a quota of exactly M placements and
/// its own token: every tenant sees exactly its own placements, one more is refused, another
/// tenant's are PERMISSION_DENIED, and usage equals the placements held, then zero.
pub async fn isolation(ctx: &Ctx, args: &StressArgs) -> anyhow::Result<Outcome> {
    let profile = Profile::Isolation;
    let mut o = Outcome::new(profile);
    let n = args.tenants.unwrap_or(if ctx.short { 4 } else { 10 });
    let m = args.jobs.unwrap_or(if ctx.short { 5 } else { 20 });
    anyhow::ensure!((1..=1_000).contains(&n), "--tenants must be 1..=1000");
    anyhow::ensure!((1..=1_000).contains(&m), "--jobs must be 1..=1000");
    let pool = ctx.name(profile, "pool");
    let slots_per_worker = 100;
    workers(
        ctx,
        &pool,
        (n * m).div_ceil(slots_per_worker),
        u64::from(slots_per_worker) * JOB_CPU_MILLIS,
    )
    .await?;
    let limit = u64::from(m) * JOB_CPU_MILLIS;
    let quota = pb::Quota {
        total: Some(pb::Limits { cpu_millis: Some(limit), ..Default::default() }),
        ..Default::default()
    };
    let tenants = tenants_with_clients(ctx, profile, n, Some(quota), |_| 0).await?;
    // Every tenant places M + 1 at once: M fit its quota, the last must not.
    let shared = Arc::new((tenants.clone(), pool.clone()));
    let recorder = ctx.recorder.clone();
    let placed = concurrently(n * (m + 1), 64, |k| {
        let (shared, recorder) = (shared.clone(), recorder.clone());
        async move {
            let (tenant, c) = &shared.0[(k % n) as usize];
            let id = format!("p{}", k / n);
            let call = place_call(c, tenant, spec(&id, &shared.1, JOB_CPU_MILLIS), false);
            let placed = recorder.timed(tenant, "Scheduler/Place", call).await;
            (k, placed.map_err(|s| reason(&s)))
        }
    })
    .await;
    let mut admitted = vec![0u32; n as usize];
    let mut refusals: BTreeMap<String, u32> = BTreeMap::new();
    for (k, outcome) in &placed {
        match outcome {
            Ok(_) => admitted[(k % n) as usize] += 1,
            Err(why) => *refusals.entry(why.clone()).or_default() += 1,
        }
    }
    let exact = admitted.iter().all(|a| *a == m);
    o.check(
        "each tenant admitted exactly its quota",
        exact && refusals.get("QUOTA_EXCEEDED") == Some(&n) && refusals.len() == 1,
        format!("admitted per tenant {:?}, refusals {refusals:?}", spread(&admitted)),
    );
    let (mut own, mut foreign, mut over) = (true, 0usize, Vec::new());
    for (i, (tenant, c)) in tenants.iter().enumerate() {
        let listed = list(ctx, c, tenant).await?;
        own &= listed.len() == m as usize;
        foreign += listed.iter().filter(|p| &p.tenant_id != tenant).count();
        let used = cpu(usage(ctx, c, tenant)
            .await?
            .usage
            .map(|u| pb::Resources { cpu_millis: u.cpu_millis, memory_mib: u.memory_mib }));
        if used != limit {
            over.push(format!("{tenant}: {used} of {limit}"));
        }
        if n > 1 {
            // Counted under the caller's tenant, as the replicas count it.
            let (other, _) = &tenants[(i + 1) % n as usize];
            let m = pb::ListPlacementsRequest { tenant_id: other.clone(), page: None, read: None };
            let call =
                c.call(m, |ch, r| async move { client::scheduler(ch).list_placements(r).await });
            let read = ctx.recorder.timed(tenant, "Scheduler/ListPlacements", call).await;
            let denied = read.err().map(|s| s.code());
            if denied != Some(Code::PermissionDenied) {
                over.push(format!("{tenant} reading {other}: {denied:?}"));
            }
        }
    }
    o.check(
        "each tenant lists exactly its own placements",
        own && foreign == 0,
        format!("{foreign} foreign"),
    );
    o.check(
        "usage equals the quota; another tenant's list is PERMISSION_DENIED",
        over.is_empty(),
        if over.is_empty() { format!("{n} tenants at {limit} mcpu") } else { over.join("; ") },
    );
    // Release what was admitted (which of a tenant's M + 1 was refused depends on arrival);
    // usage goes back to zero.
    let admitted_ids: Vec<u32> =
        placed.iter().filter(|(_, r)| r.is_ok()).map(|(k, _)| *k).collect();
    let shared = Arc::new((tenants.clone(), ctx.recorder.clone(), admitted_ids));
    concurrently(shared.2.len() as u32, 64, |j| {
        let shared = shared.clone();
        async move {
            let k = shared.2[j as usize];
            let (tenant, c) = &shared.0[(k % n) as usize];
            let call = release_call(c, tenant, &format!("p{}", k / n));
            shared.1.timed(tenant, "Scheduler/Release", call).await.is_ok()
        }
    })
    .await;
    let mut left = 0;
    for (tenant, c) in &tenants {
        left += usage(ctx, c, tenant).await?.usage.map_or(0, |u| u.cpu_millis);
    }
    o.check("usage is zero after every release", left == 0, format!("{left} mcpu left"));
    latency_figures(ctx, &mut o, profile);
    o.figure("tenants", u64::from(n), "");
    o.figure("placements per tenant", u64::from(m), "");
    Ok(o)
}

/// The lowest and highest of `values`.
fn spread(values: &[u32]) -> (u32, u32) {
    (values.iter().copied().min().unwrap_or(0), values.iter().copied().max().unwrap_or(0))
}

/// Seconds to milliseconds of `d`.
fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The seed's burst: 5 tenants × 50 placements sent at the same instant (queued if they do
/// not fit): every one is placed exactly once; the time until the last is placed is measured
/// against the seed's 2 s.
pub async fn burst(ctx: &Ctx) -> anyhow::Result<Outcome> {
    const TENANTS: u32 = 5;
    const EACH: u32 = 50;
    const TARGET_MS: u64 = 2_000;
    let profile = Profile::Burst;
    let mut o = Outcome::new(profile);
    let pool = ctx.name(profile, "pool");
    workers(ctx, &pool, 3, 100 * JOB_CPU_MILLIS).await?;
    let tenants = tenants_with_clients(ctx, profile, TENANTS, None, |_| 0).await?;
    // Each tenant's connection is opened (TLS) before the burst, so the burst times placing.
    for (tenant, c) in &tenants {
        usage(ctx, c, tenant).await.map_err(|s| anyhow::anyhow!(crate::cli::describe(&s)))?;
    }
    let total = TENANTS * EACH;
    let barrier = Arc::new(Barrier::new(total as usize));
    let shared = Arc::new((tenants.clone(), pool.clone(), ctx.recorder.clone()));
    let started = Arc::new(std::sync::Mutex::new(None::<Instant>));
    let answers = concurrently(total, total as usize, |k| {
        let (shared, barrier, started) = (shared.clone(), barrier.clone(), started.clone());
        async move {
            let (tenant, c) = &shared.0[(k % TENANTS) as usize];
            barrier.wait().await;
            started.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert_with(Instant::now);
            let call = place_call(
                c,
                tenant,
                spec(&format!("b{}", k / TENANTS), &shared.1, JOB_CPU_MILLIS),
                true,
            );
            let reply = shared.2.timed(tenant, "Scheduler/Place", call).await;
            (reply.map(|r| r.queued.is_none()).map_err(|s| reason(&s)), Instant::now())
        }
    })
    .await;
    let began = started.lock().unwrap_or_else(|p| p.into_inner()).unwrap_or_else(Instant::now);
    let placed = answers.iter().filter(|(r, _)| r == &Ok(true)).count();
    let queued = answers.iter().filter(|(r, _)| r == &Ok(false)).count();
    let failed: Vec<_> = answers.iter().filter_map(|(r, _)| r.clone().err()).collect();
    let last = answers.iter().map(|(_, at)| *at).max().unwrap_or(began);
    let last_ms = ms(last.saturating_duration_since(began));
    let mut counts = Vec::new();
    for (tenant, c) in &tenants {
        counts.push(list(ctx, c, tenant).await?.len() as u32);
    }
    o.check(
        "every placement answered, none refused",
        failed.is_empty() && placed + queued == total as usize,
        format!("{placed} placed, {queued} queued, {} refused {:?}", failed.len(), failed.first()),
    );
    o.check(
        "each tenant holds exactly its 50",
        counts.iter().all(|c| *c == EACH),
        format!("held per tenant {:?}", spread(&counts)),
    );
    o.check(
        "the last placed within the seed's 2 s",
        last_ms < TARGET_MS,
        format!("{last_ms} ms after the burst began"),
    );
    o.figure("last placed after", last_ms, "ms");
    latency_figures(ctx, &mut o, profile);
    Ok(o)
}

/// Rounds of 50 placements at once against a quota of 10: exactly 10 are admitted each round,
/// and a reader polling the usage meanwhile never sees it above the limit.
pub async fn quota(ctx: &Ctx) -> anyhow::Result<Outcome> {
    const AT_ONCE: u32 = 50;
    const FIT: u64 = 10;
    let profile = Profile::Quota;
    let mut o = Outcome::new(profile);
    let rounds = if ctx.short { 3 } else { 20 };
    let pool = ctx.name(profile, "pool");
    workers(ctx, &pool, 1, u64::from(AT_ONCE) * JOB_CPU_MILLIS).await?;
    let tenant = ctx.name(profile, "t");
    let limit = FIT * JOB_CPU_MILLIS;
    let quota = pb::Quota {
        total: Some(pb::Limits { cpu_millis: Some(limit), ..Default::default() }),
        ..Default::default()
    };
    let token = tenant_with_token(ctx, &tenant, Some(quota)).await?;
    let c = ctx.client_as(&token)?;
    let (mut exact, mut highest, mut refusals) = (true, 0u64, BTreeMap::<String, u32>::new());
    let mut admitted_per_round = Vec::new();
    for round in 0..rounds {
        let barrier = Arc::new(Barrier::new(AT_ONCE as usize));
        let shared = Arc::new((tenant.clone(), c.clone(), pool.clone(), ctx.recorder.clone()));
        let watching = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let watcher = {
            let (shared, watching) = (shared.clone(), watching.clone());
            tokio::spawn(async move {
                let mut highest = 0;
                while watching.load(std::sync::atomic::Ordering::Relaxed) {
                    let m = pb::GetQuotaRequest { tenant_id: shared.0.clone(), read: None };
                    let call = shared
                        .1
                        .call(m, |ch, r| async move { client::tenants(ch).get_quota(r).await });
                    if let Ok(q) = shared.3.timed(&shared.0, "Tenants/GetQuota", call).await {
                        highest = highest.max(q.usage.map_or(0, |u| u.cpu_millis));
                    }
                }
                highest
            })
        };
        let answers = concurrently(AT_ONCE, AT_ONCE as usize, |k| {
            let (shared, barrier) = (shared.clone(), barrier.clone());
            async move {
                barrier.wait().await;
                let call = place_call(
                    &shared.1,
                    &shared.0,
                    spec(&format!("r{round}-{k}"), &shared.2, JOB_CPU_MILLIS),
                    false,
                );
                shared
                    .3
                    .timed(&shared.0, "Scheduler/Place", call)
                    .await
                    .map(|_| k)
                    .map_err(|s| reason(&s))
            }
        })
        .await;
        watching.store(false, std::sync::atomic::Ordering::Relaxed);
        highest = highest.max(watcher.await.unwrap_or(u64::MAX));
        let admitted: Vec<u32> = answers.iter().filter_map(|a| a.as_ref().ok().copied()).collect();
        for why in answers.iter().filter_map(|a| a.as_ref().err()) {
            *refusals.entry(why.clone()).or_default() += 1;
        }
        exact &= admitted.len() as u64 == FIT;
        admitted_per_round.push(admitted.len() as u32);
        let held = usage(ctx, &c, &tenant).await?.usage.map_or(0, |u| u.cpu_millis);
        highest = highest.max(held);
        for k in admitted {
            release(ctx, &c, &tenant, &format!("r{round}-{k}"))
                .await
                .map_err(|s| anyhow::anyhow!(crate::cli::describe(&s)))?;
        }
    }
    o.check(
        "exactly the quota admitted every round",
        exact && refusals.keys().all(|r| r == "QUOTA_EXCEEDED"),
        format!(
            "admitted per round {:?} of {AT_ONCE} at once; refusals {refusals:?}",
            spread(&admitted_per_round)
        ),
    );
    o.check(
        "usage never above the limit",
        highest <= limit,
        format!("highest usage seen {highest} mcpu of {limit}"),
    );
    o.figure("rounds", rounds, "");
    o.figure("highest usage seen", highest, "mcpu");
    latency_figures(ctx, &mut o, profile);
    Ok(o)
}

/// Place + Release from a fixed number of clients spread over 1, 5, 10, 100 and 1,000
/// tenants: throughput and latency at each, and the ratio of the last to the first.
pub async fn scaling(ctx: &Ctx, args: &StressArgs) -> anyhow::Result<Outcome> {
    /// The throughput at the most tenants, per mille of that at the fewest, below which the
    /// profile fails.
    const FLAT_PER_MILLE_MIN: u64 = 500;
    let profile = Profile::Scaling;
    let mut o = Outcome::new(profile);
    let levels = if !args.scaling_tenants.is_empty() {
        args.scaling_tenants.clone()
    } else if ctx.short {
        vec![1, 10, 50]
    } else {
        vec![1, 5, 10, 100, 1_000]
    };
    anyhow::ensure!(
        levels.iter().all(|n| (1..=1_000).contains(n)),
        "tenant counts must be 1..=1000"
    );
    let seconds = args.scaling_seconds.unwrap_or(if ctx.short { 2 } else { 10 });
    let clients = args.clients.max(1);
    let pool = ctx.name(profile, "pool");
    workers(ctx, &pool, 4, u64::from(clients) * JOB_CPU_MILLIS * 4).await?;
    let mut series = BTreeMap::new();
    for (level, &n) in levels.iter().enumerate() {
        let names: Vec<String> =
            (0..n).map(|i| ctx.name(profile, &format!("l{level}-t{i}"))).collect();
        for name in &names {
            ctx.created(name);
        }
        let shared = Arc::new((names.clone(), ctx.client.clone(), ctx.recorder.clone()));
        concurrently(n, 16, |i| {
            let shared = shared.clone();
            async move {
                let tenant = &shared.0[i as usize];
                let m = pb::CreateTenantRequest {
                    request_id: new_request_id(),
                    tenant_id: tenant.clone(),
                    ..Default::default()
                };
                let call = shared
                    .1
                    .call(m, |ch, r| async move { client::tenants(ch).create_tenant(r).await });
                shared.2.timed(tenant, "Tenants/CreateTenant", call).await.is_ok()
            }
        })
        .await;
        let measuring = Instant::now() + Duration::from_secs(1);
        let stop = measuring + Duration::from_secs(seconds);
        let measured_from = ctx.recorder.now_ms() + 1_000;
        let shared =
            Arc::new((names.clone(), ctx.client.clone(), ctx.recorder.clone(), pool.clone()));
        let outcomes = concurrently(clients, clients as usize, |j| {
            let shared = shared.clone();
            async move {
                let (mut done, mut errors, mut k) = (0u64, 0u64, 0u64);
                while Instant::now() < stop {
                    let t = (u64::from(j) + k * u64::from(clients)) % shared.0.len() as u64;
                    let tenant = &shared.0[t as usize];
                    k += 1;
                    let id = format!("c{j}-{k}");
                    let call =
                        place_call(&shared.1, tenant, spec(&id, &shared.3, JOB_CPU_MILLIS), false);
                    let counted = Instant::now() >= measuring;
                    if shared.2.timed(tenant, "Scheduler/Place", call).await.is_err() {
                        errors += u64::from(counted);
                        continue;
                    }
                    let call = release_call(&shared.1, tenant, &id);
                    let released = shared.2.timed(tenant, "Scheduler/Release", call).await.is_ok();
                    errors += u64::from(counted && !released);
                    done += u64::from(counted && released);
                }
                (done, errors)
            }
        })
        .await;
        let done: u64 = outcomes.iter().map(|(d, _)| d).sum();
        let errors: u64 = outcomes.iter().map(|(_, e)| e).sum();
        let us = ctx.recorder.latencies(profile.name(), measured_from);
        let point = ScalingPoint {
            tenants: n,
            per_second: done / seconds.max(1),
            p50_us: percentile(&us, 500),
            p95_us: percentile(&us, 950),
            p99_us: percentile(&us, 990),
            errors,
        };
        eprintln!(
            "  scaling: {n} tenants: {} place+release/s, p50 {} µs, p99 {} µs, {errors} errors",
            point.per_second, point.p50_us, point.p99_us
        );
        series.extend(
            ctx.recorder.series(profile.name()).into_iter().filter(|(k, _)| k.ends_with(": all")),
        );
        o.curve.push(point);
        let deleted = concurrently(n, 16, |i| {
            let shared = shared.clone();
            async move {
                let tenant = &shared.0[i as usize];
                let m = pb::DeleteTenantRequest {
                    request_id: new_request_id(),
                    tenant_id: tenant.clone(),
                };
                let call = shared
                    .1
                    .call(m, |ch, r| async move { client::tenants(ch).delete_tenant(r).await });
                shared.2.timed(tenant, "Tenants/DeleteTenant", call).await.is_ok()
            }
        })
        .await;
        for (name, _) in names.iter().zip(deleted).filter(|(_, ok)| *ok) {
            ctx.deleted(name);
        }
    }
    o.series = series;
    let (first, last) = (o.curve.first().cloned(), o.curve.last().cloned());
    if let (Some(first), Some(last)) = (first, last) {
        let ratio = last.per_second.saturating_mul(1_000) / first.per_second.max(1);
        o.figure(
            &format!("throughput at {} tenants vs {}", last.tenants, first.tenants),
            ratio,
            "‰",
        );
        // Two seconds a level on a shared machine (CI runs other clusters beside it) is within
        // noise: the short mode reports the ratio (a figure), the full mode holds it to the
        // bound.
        if !ctx.short {
            o.check(
                "throughput stays within half across tenant counts",
                ratio >= FLAT_PER_MILLE_MIN,
                format!(
                    "{} place+release/s at {} tenants, {} at {} ({ratio}‰)",
                    last.per_second, last.tenants, first.per_second, first.tenants
                ),
            );
        }
        let idle: Vec<u32> =
            o.curve.iter().filter(|p| p.per_second == 0).map(|p| p.tenants).collect();
        o.check("every level made progress", idle.is_empty(), format!("none at {idle:?} tenants"));
        let errors: u64 = o.curve.iter().map(|p| p.errors).sum();
        o.check("no errors", errors == 0, format!("{errors} errors"));
    }
    Ok(o)
}

/// A queue of `--backlog` placements (4 tenants, one of them queueing half of it) in a pool
/// with room for 4 at once; once everything is queued, each placement is released as soon as
/// it is placed: the queue drains, and every admission while every tenant still waits goes to
/// a tenant with the fewest placements running (equal weights and sizes: the lowest dominant
/// share, the queue's rule), checked against the cluster's own events in log order.
pub async fn backlog(ctx: &Ctx, args: &StressArgs) -> anyhow::Result<Outcome> {
    const TENANTS: usize = 4;
    let profile = Profile::Backlog;
    let mut o = Outcome::new(profile);
    let total = args.backlog.unwrap_or(if ctx.short { 100 } else { 10_000 });
    anyhow::ensure!((4..=100_000).contains(&total), "--backlog must be 4..=100000");
    let pool = ctx.name(profile, "pool");
    workers(ctx, &pool, 1, 4 * JOB_CPU_MILLIS).await?;
    // The planted fault (`--plant-unfair`) favours tenant 1.
    let weight = |i| if i == 1 { ctx.unfair_weight } else { 0 };
    let tenants = tenants_with_clients(ctx, profile, TENANTS as u32, None, weight).await?;
    // Tenant 0 queues half; the three others a sixth each, all at once (each tenant in order).
    let mut plan: Vec<Vec<u32>> = vec![(0..total / 2).collect()];
    let rest = total - total / 2;
    for t in 1..TENANTS as u32 {
        plan.push((0..rest).filter(|k| k % (TENANTS as u32 - 1) == t - 1).collect());
    }
    let mut stream = open_watch(ctx, &["PLACED", "RELEASED"]).await?;
    // Says how many placements to expect once everything is queued.
    let (go, mut going) = tokio::sync::watch::channel(None::<u32>);
    let watcher = {
        let tenants = tenants.clone();
        let recorder = ctx.recorder.clone();
        let mut left: Vec<u32> = plan.iter().map(|p| p.len() as u32).collect();
        Background::spawn(async move {
            let index: BTreeMap<&str, usize> =
                tenants.iter().enumerate().map(|(i, (t, _))| (t.as_str(), i)).collect();
            let release = |i: usize, id: String| {
                let (tenant, c) = tenants[i].clone();
                let recorder = recorder.clone();
                async move {
                    let call = release_call(&c, &tenant, &id);
                    recorder
                        .timed(&tenant, "Scheduler/Release", call)
                        .await
                        .map(drop)
                        .map_err(|s| anyhow::anyhow!(crate::cli::describe(&s)))
                }
            };
            let mut f = Fairness::default();
            let mut running = [0u32; TENANTS];
            let (mut held, mut releasing, mut placed) = (Vec::new(), Vec::new(), 0u32);
            loop {
                let expected = *going.borrow();
                if let Some(expected) = expected {
                    // Everything is queued: give back what was placed meanwhile.
                    for (i, id) in std::mem::take(&mut held) {
                        releasing.push(tokio::spawn(release(i, id)));
                    }
                    if placed >= expected {
                        break;
                    }
                }
                let message = tokio::select! {
                    m = stream.message() => m,
                    _ = going.changed(), if expected.is_none() => continue,
                };
                let message = match message {
                    Ok(Some(m)) => m,
                    Ok(None) => break,
                    Err(s) => return Err(anyhow::anyhow!(crate::cli::describe(&s))),
                };
                let Some(pb::watch_response::Message::Event(e)) = message.message else { continue };
                let Some(&i) = index.get(e.tenant_id.as_str()) else { continue };
                if e.kind == "RELEASED" {
                    running[i] = running[i].saturating_sub(1);
                    continue;
                }
                placed += 1;
                let draining = going.borrow().is_some();
                if draining && e.from_queue && left.iter().all(|l| *l > 0) {
                    // Every tenant waits: the admitted one must have the fewest running.
                    let fewest = running.iter().copied().min().unwrap_or(0);
                    f.checked += 1;
                    f.counts[i] += 1;
                    if running[i] > fewest {
                        f.violations += 1;
                    }
                }
                left[i] = left[i].saturating_sub(1);
                running[i] += 1;
                if draining {
                    f.drained_at = Some(Instant::now());
                    // Released concurrently (at most the pool's 4 at once): the drain is paced
                    // by the cluster, not by one release's round trip after another.
                    releasing.push(tokio::spawn(release(i, e.placement_id)));
                } else {
                    held.push((i, e.placement_id));
                }
            }
            for task in releasing {
                task.await??;
            }
            f.placed = placed;
            anyhow::Ok(f)
        })
    };
    let began = Instant::now();
    let shared = Arc::new((tenants.clone(), plan.clone(), pool.clone(), ctx.recorder.clone()));
    let refused: u32 = concurrently(TENANTS as u32, TENANTS, |t| {
        let shared = shared.clone();
        async move {
            let (tenant, c) = &shared.0[t as usize];
            let mut refused = 0;
            for k in &shared.1[t as usize] {
                let call =
                    place_call(c, tenant, spec(&format!("q{k}"), &shared.2, JOB_CPU_MILLIS), true);
                refused +=
                    u32::from(shared.3.timed(tenant, "Scheduler/Place", call).await.is_err());
            }
            refused
        }
    })
    .await
    .into_iter()
    .sum();
    let submit_ms = ms(began.elapsed());
    let draining = Instant::now();
    let _ = go.send(Some(total - refused));
    let f = tokio::time::timeout(Duration::from_secs(1_800), watcher.join())
        .await
        .map_err(|_| anyhow::anyhow!("the queue did not drain in 30 minutes"))???;
    let drain_ms = ms(f.drained_at.unwrap_or(draining).saturating_duration_since(draining));
    o.check("every request queued or placed", refused == 0, format!("{refused} refused"));
    o.check(
        "the queue drained",
        f.placed == total - refused,
        format!(
            "{} of {total} placed, the last {drain_ms} ms after everything was queued",
            f.placed
        ),
    );
    let (lo, hi) = spread(&f.counts);
    o.check(
        "fair order: each admission to a tenant with the fewest running",
        f.violations == 0 && f.checked > 0,
        format!(
            "{} of {} admissions while every tenant waited went elsewhere; admissions per tenant {lo}..{hi}",
            f.violations, f.checked
        ),
    );
    o.figure("queued", u64::from(total), "");
    o.figure("submitted in", submit_ms, "ms");
    o.figure("drained in", drain_ms, "ms");
    o.figure("admissions checked for fairness", u64::from(f.checked), "");
    latency_figures(ctx, &mut o, profile);
    Ok(o)
}

/// Every tenant's events of `kinds` (admin), from now, through failures: the watch resumes
/// on another replica after the last position it delivered when its stream breaks (a replica
/// without a leader for a moment ends it with `REPLICA_NOT_CURRENT`), as a client should.
/// Its first message (where it starts) has been read, so nothing done after this returns is
/// missed.
async fn open_watch(ctx: &Ctx, kinds: &[&str]) -> anyhow::Result<Watching> {
    let watch = pb::WatchRequest {
        kinds: kinds.iter().map(|k| (*k).to_owned()).collect(),
        ..Default::default()
    };
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let client = ctx.client.clone();
    let task = Background::spawn(async move {
        let delivered = client.watch(watch, |m| tx.send(Ok(m)).is_ok()).await;
        if let Err(status) = delivered {
            let _ = tx.send(Err(status));
        }
    });
    let mut stream = Watching { rx, _task: task };
    let first = tokio::time::timeout(Duration::from_secs(10), stream.message()).await;
    match first {
        Ok(Ok(Some(_))) => Ok(stream),
        Ok(Ok(None)) => anyhow::bail!("the watch stream ended at once"),
        Ok(Err(s)) => anyhow::bail!("{}", crate::cli::describe(&s)),
        Err(_) => anyhow::bail!("the watch stream said nothing in 10 s"),
    }
}

/// A watch that resumes through failures (`open_watch`); dropping it ends it.
struct Watching {
    rx: tokio::sync::mpsc::UnboundedReceiver<Result<pb::WatchResponse, tonic::Status>>,
    _task: Background<()>,
}

impl Watching {
    /// The next message; `Ok(None)` once the watch has ended, an error that no replica could
    /// get past (the watch then ends).
    async fn message(&mut self) -> Result<Option<pb::WatchResponse>, tonic::Status> {
        self.rx.recv().await.transpose()
    }
}

/// What `backlog`'s watcher saw.
#[derive(Default)]
struct Fairness {
    placed: u32,
    /// Admissions from the queue while every tenant waited.
    checked: u32,
    /// Of those, admissions to a tenant with more running than another.
    violations: u32,
    counts: [u32; 4],
    drained_at: Option<Instant>,
}

/// Tenants onboarded, loaded (placements, a reservation, a lease, a queued request), deleted
/// and re-created under a steady load from another tenant: nothing is left behind (the pools'
/// free capacity returns, the queue empties, the old token is refused), and each re-created
/// tenant starts empty.
pub async fn lifecycle(ctx: &Ctx) -> anyhow::Result<Outcome> {
    let profile = Profile::Lifecycle;
    let mut o = Outcome::new(profile);
    let cycles = if ctx.short { 3 } else { 20 };
    let pool = ctx.name(profile, "pool");
    let tiny = ctx.name(profile, "tiny");
    workers(ctx, &pool, 2, 50 * JOB_CPU_MILLIS).await?;
    workers(ctx, &tiny, 1, JOB_CPU_MILLIS).await?;
    let steady = ctx.name(profile, "steady");
    let steady_token = tenant_with_token(ctx, &steady, None).await?;
    let steady_client = ctx.client_as(&steady_token)?;
    // The steady load, until told to stop.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (stop, c, tenant, pool) =
            (stop.clone(), steady_client.clone(), steady.clone(), pool.clone());
        let recorder = ctx.recorder.clone();
        Background::spawn(async move {
            let mut k = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                k += 1;
                let id = format!("s{k}");
                let call = place_call(&c, &tenant, spec(&id, &pool, JOB_CPU_MILLIS), false);
                if recorder.timed(&tenant, "Scheduler/Place", call).await.is_ok() {
                    let call = release_call(&c, &tenant, &id);
                    let _ = recorder.timed(&tenant, "Scheduler/Release", call).await;
                }
            }
        })
    };
    let mut problems = Vec::new();
    let (mut released, mut fresh) = (0u64, true);
    let tenant = ctx.name(profile, "cycled");
    for cycle in 0..cycles {
        let token = tenant_with_token(ctx, &tenant, None).await?;
        let c = ctx.client_as(&token)?;
        // A re-created tenant starts empty.
        let held = list(ctx, &c, &tenant).await?;
        let quota = usage(ctx, &c, &tenant).await?;
        // Each incarnation takes the lease as another holder: one left behind would refuse it.
        let leased = lease(ctx, &c, &tenant, &format!("cycle-{cycle}")).await;
        fresh &= held.is_empty()
            && quota.usage.is_some_and(|u| u.cpu_millis == 0)
            && quota.queued == 0
            && leased.is_ok();
        for k in 0..3 {
            place(ctx, &c, &tenant, spec(&format!("p{k}"), &pool, JOB_CPU_MILLIS), false)
                .await
                .map_err(|s| anyhow::anyhow!("cycle {cycle}: {}", crate::cli::describe(&s)))?;
        }
        reserve(ctx, &c, &tenant, &pool, "r0").await?;
        place(ctx, &c, &tenant, spec("tiny-0", &tiny, JOB_CPU_MILLIS), false)
            .await
            .map_err(|s| anyhow::anyhow!("cycle {cycle}: {}", crate::cli::describe(&s)))?;
        let queued = place(ctx, &c, &tenant, spec("tiny-1", &tiny, JOB_CPU_MILLIS), true)
            .await
            .map_err(|s| anyhow::anyhow!("cycle {cycle}: {}", crate::cli::describe(&s)))?;
        if queued.queued.is_none() {
            problems.push(format!("cycle {cycle}: the second tiny placement was not queued"));
        }
        let deleted =
            delete(ctx, &tenant).await.map_err(|s| anyhow::anyhow!(crate::cli::describe(&s)))?;
        released += deleted.placements_released + deleted.reservations_released;
        // The deleted tenant's token no longer works (a request of no tenant to the replicas).
        let m = pb::GetQuotaRequest { tenant_id: tenant.clone(), read: None };
        let call = c.call(m, |ch, r| async move { client::tenants(ch).get_quota(r).await });
        let refused =
            ctx.recorder.timed("_none", "Tenants/GetQuota", call).await.err().map(|s| s.code());
        if refused != Some(Code::Unauthenticated) {
            problems.push(format!("cycle {cycle}: the deleted tenant's token got {refused:?}"));
        }
    }
    if ctx.plant_leak {
        // The planted fault: a reservation nobody gives back.
        reserve(ctx, &steady_client, &steady, &pool, "leaked").await?;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    load.join().await?;
    o.check("a re-created tenant starts empty", fresh, format!("{cycles} cycles"));
    let ended = if problems.is_empty() {
        "the old token refused each time".into()
    } else {
        problems.join("; ")
    };
    o.check("each deletion ends its tenant", problems.is_empty(), ended);
    // Nothing orphaned: with the steady load stopped (its last placement released), both pools
    // are whole again and nothing waits.
    let mut orphans = Vec::new();
    for name in [&pool, &tiny] {
        let p = pool_status(ctx, name).await?;
        if cpu(p.free) != cpu(p.capacity) {
            orphans.push(format!("pool {name}: {} of {} mcpu free", cpu(p.free), cpu(p.capacity)));
        }
    }
    let steady_quota = usage(ctx, &steady_client, &steady).await?;
    if steady_quota.usage.is_some_and(|u| u.cpu_millis > 0) || steady_quota.queued > 0 {
        orphans.push(format!("{steady} still holds {:?}", steady_quota.usage));
    }
    o.check(
        "nothing orphaned: capacity, quota and queue whole again",
        orphans.is_empty(),
        if orphans.is_empty() { "every pool whole".into() } else { orphans.join("; ") },
    );
    o.figure("cycles", cycles, "");
    o.figure("released by deletions", released, "placements and reservations");
    latency_figures(ctx, &mut o, profile);
    Ok(o)
}

async fn reserve(
    ctx: &Ctx,
    c: &Arc<Client>,
    tenant: &str,
    pool: &str,
    id: &str,
) -> anyhow::Result<()> {
    let m = reserve_request(tenant, id, pool, 3_600_000);
    let call = c.call(m, |ch, r| async move { client::scheduler(ch).reserve(r).await });
    ctx.recorder
        .timed(tenant, "Scheduler/Reserve", call)
        .await
        .map(drop)
        .map_err(|s| anyhow::anyhow!(crate::cli::describe(&s)))
}

/// Acquires the lease "l" for `tenant` as `holder` (refused while another holder has it).
async fn lease(
    ctx: &Ctx,
    c: &Arc<Client>,
    tenant: &str,
    holder: &str,
) -> Reply<pb::AcquireResponse> {
    let m = acquire_request(tenant, "l", holder, 60_000);
    let call = c.call(m, |ch, r| async move { client::leases(ch).acquire(r).await });
    ctx.recorder.timed(tenant, "Leases/Acquire", call).await
}

/// Long jobs (held `LONG_MS`) from one tenant keep a pool full and its queue deep, while
/// another tenant submits short jobs (held `SHORT_MS`) one after another: the short jobs' p95
/// wait for a slot, in log time (from the Place's entry to the entry that placed it), stays
/// within the fair-share bound, the time one long job holds its slot (each slot that frees goes
/// to the tenant with the lower share, the short one) plus `PASSAGE_MS` for the release to go
/// through the log, and is measured against the short jobs' wait alone. Were the queue
/// first-come first-served, a short job would wait behind twice the pool's slots of long jobs:
/// two long holds or more.
pub async fn mixed(ctx: &Ctx) -> anyhow::Result<Outcome> {
    const SLOTS: u64 = 8;
    const LONG_MS: u64 = 2_000;
    const SHORT_MS: u64 = 50;
    const SHORT_EVERY_MS: u64 = 100;
    const PASSAGE_MS: u64 = 1_000;
    let profile = Profile::Mixed;
    let mut o = Outcome::new(profile);
    let phase_ms = if ctx.short { 3_000 } else { 30_000 };
    let pool = ctx.name(profile, "pool");
    workers(ctx, &pool, 1, SLOTS * JOB_CPU_MILLIS).await?;
    let long = ctx.name(profile, "long");
    let short = ctx.name(profile, "short");
    // The planted fault (`--plant-unfair`) favours the long jobs' tenant.
    let long_token = weighted_tenant_with_token(ctx, &long, None, ctx.unfair_weight).await?;
    let long_client = ctx.client_as(&long_token)?;
    let short_client = ctx.client_as(&tenant_with_token(ctx, &short, None).await?)?;
    // The watcher releases every placement once held for its time, notes the log time each
    // short job was placed at, and counts the long jobs placed.
    let mut stream = open_watch(ctx, &["PLACED"]).await?;
    let placed_at: Arc<std::sync::Mutex<BTreeMap<String, u64>>> = Arc::default();
    let long_placed = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let watcher = {
        let (placed_at, long_placed, recorder) =
            (placed_at.clone(), long_placed.clone(), ctx.recorder.clone());
        let tenants = [(long.clone(), long_client.clone()), (short.clone(), short_client.clone())];
        let mut stopping = stopping.clone();
        Background::spawn(async move {
            let mut releasing = Vec::new();
            loop {
                let message = tokio::select! {
                    m = stream.message() => m,
                    _ = stopping.changed() => break,
                };
                let message = match message {
                    Ok(Some(m)) => m,
                    Ok(None) => anyhow::bail!("the watch stream ended"),
                    Err(s) => anyhow::bail!("{}", crate::cli::describe(&s)),
                };
                let Some(pb::watch_response::Message::Event(e)) = message.message else { continue };
                let Some(k) = tenants.iter().position(|(t, _)| *t == e.tenant_id) else { continue };
                if k == 0 {
                    long_placed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                } else {
                    placed_at
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(e.placement_id.clone(), e.at_ms);
                }
                let (tenant, c) = tenants[k].clone();
                let recorder = recorder.clone();
                let hold = if k == 0 { LONG_MS } else { SHORT_MS };
                releasing.push(tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(hold)).await;
                    let call = release_call(&c, &tenant, &e.placement_id);
                    let _ = recorder.timed(&tenant, "Scheduler/Release", call).await;
                }));
            }
            anyhow::Ok(releasing)
        })
    };
    let place = {
        let (recorder, pool) = (ctx.recorder.clone(), pool.clone());
        move |tenant: String, c: Arc<Client>, id: String| {
            let (recorder, pool) = (recorder.clone(), pool.clone());
            async move {
                let call = place_call(&c, &tenant, spec(&id, &pool, JOB_CPU_MILLIS), true);
                // The log time the request was taken at.
                let placed = recorder.timed(&tenant, "Scheduler/Place", call).await;
                placed.ok().and_then(|r| r.write).map(|w| w.applied_at_ms)
            }
        }
    };
    // Short jobs: (number, the log time its Place was taken at).
    let mut shorts: Vec<(u64, Option<u64>)> = Vec::new();
    let submit_shorts = |until: Instant, shorts: &mut Vec<(u64, Option<u64>)>| {
        let (place, short, c) = (place.clone(), short.clone(), short_client.clone());
        let first = shorts.len() as u64 + 1;
        async move {
            let mut taken = Vec::new();
            let mut k = first;
            while Instant::now() < until {
                taken.push((k, place(short.clone(), c.clone(), format!("s{k}")).await));
                k += 1;
                tokio::time::sleep(Duration::from_millis(SHORT_EVERY_MS)).await;
            }
            taken
        }
    };
    // Phase 1: the short jobs alone.
    let alone = submit_shorts(Instant::now() + Duration::from_millis(phase_ms), &mut shorts).await;
    shorts.extend(alone);
    let alone_jobs = shorts.len() as u64;
    // Phase 2: the long tenant keeps twice the pool's slots queued meanwhile.
    let feeding = {
        let (place, mut stopping, long_placed) =
            (place.clone(), stopping.clone(), long_placed.clone());
        let (long, c) = (long.clone(), long_client.clone());
        Background::spawn(async move {
            let mut n = 0u64;
            loop {
                let waiting =
                    n.saturating_sub(long_placed.load(std::sync::atomic::Ordering::Relaxed));
                if waiting < 2 * SLOTS {
                    n += 1;
                    let _ = place(long.clone(), c.clone(), format!("l{n}")).await;
                    continue;
                }
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_millis(20)) => {}
                    _ = stopping.changed() => return n,
                }
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(LONG_MS)).await;
    let beside = submit_shorts(Instant::now() + Duration::from_millis(phase_ms), &mut shorts).await;
    shorts.extend(beside);
    // Every short job is placed in the end: wait for the last ones, with a deadline.
    let deadline = Instant::now() + Duration::from_millis(4 * LONG_MS + PASSAGE_MS);
    loop {
        let seen = placed_at.lock().unwrap_or_else(|p| p.into_inner()).len();
        if seen >= shorts.len() || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = stop.send(true);
    let long_jobs = feeding.join().await?;
    // Every placement seen is given back before the tenants go.
    for task in watcher.join().await?? {
        task.await.map_err(|e| anyhow::anyhow!("a release: {e}"))?;
    }
    let placed_at = placed_at.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let (mut alone, mut beside, mut missing, mut refused) = (Vec::new(), Vec::new(), 0u64, 0u64);
    for (k, taken) in &shorts {
        match (taken, placed_at.get(&format!("s{k}"))) {
            (None, _) => refused += 1,
            (Some(_), None) => missing += 1,
            (Some(taken), Some(placed)) => {
                let wait = placed.saturating_sub(*taken);
                if *k <= alone_jobs {
                    alone.push(wait)
                } else {
                    beside.push(wait)
                }
            }
        }
    }
    alone.sort_unstable();
    beside.sort_unstable();
    let short_jobs = shorts.len() as u64;
    o.check(
        "every short job placed",
        refused == 0 && missing == 0,
        format!("{} of {short_jobs} placed, {refused} refused", short_jobs - refused - missing),
    );
    let p95 = percentile(&beside, 950);
    o.check(
        "short jobs' p95 wait beside long ones within the fair-share bound",
        p95 <= LONG_MS + PASSAGE_MS && !beside.is_empty(),
        format!(
            "p95 wait {p95} ms of log time beside {long_jobs} long jobs of {LONG_MS} ms (bound {} ms); alone {} ms",
            LONG_MS + PASSAGE_MS,
            percentile(&alone, 950)
        ),
    );
    o.figure("short jobs", short_jobs, "");
    o.figure("long jobs", long_jobs, "");
    o.figure("short p50 wait alone", percentile(&alone, 500), "ms");
    o.figure("short p95 wait alone", percentile(&alone, 950), "ms");
    o.figure("short p50 wait beside long", percentile(&beside, 500), "ms");
    o.figure("short p95 wait beside long", p95, "ms");
    latency_figures(ctx, &mut o, profile);
    Ok(o)
}
