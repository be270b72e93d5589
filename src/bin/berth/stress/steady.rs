//! The profiles under a steady mixed load (placements held and released, reservations left to
//! expire, leases taken and given back, reads), which either can pause to compare the
//! cluster with what the client holds, exactly: once every reservation has expired, each
//! tenant lists exactly the placements the client holds, its usage is theirs, and the pool's
//! allocated capacity is their sum.
//!
//! - `soak` runs it for `--duration`, pausing every sample interval (a minute in a long run)
//!   to sample each replica's resident memory, open files, log and snapshot size (and the
//!   replicated state's share of the snapshot) from its metrics and to compare, and scraping
//!   the same gauges a twelfth of the interval apart in between. It fails on any drift, and
//!   on growth: a least-squares slope of the lower envelope, after warm-up, above a stated
//!   bound per hour.
//! - `chaos` runs it while replicas are killed (SIGKILL), paused (SIGSTOP) and cut off from
//!   the others (iptables, `partition`), and a worker
//!   dies (its heartbeats stop): the writes per second before, during and after each fault,
//!   the longest stall, and no drift once everything has healed.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use berth::client::{self, new_request_id, pb, Client};
use serde::Serialize;
use tokio::sync::RwLock;

use super::partition::{self, PeerAddrs};
use super::profiles::{
    acquire_request, cpu, list, place_request, pool_status, reason, release_request,
    reserve_request, usage, JOB_CPU_MILLIS,
};
use super::record::percentile;
use super::StressArgs;
use super::{scrape, spec, tenants_with_clients, workers, Background, Ctx, Outcome, Profile};

/// Placements each tenant holds at once; the oldest is released when a new one is placed.
const HELD_PER_TENANT: usize = 8;
/// Reservations are left to expire after this (every eighth step of each tenant makes one).
const RESERVATION_TTL_MS: u64 = 300;
const LEASE_TTL_MS: u64 = 5_000;
/// How long after the last reservation's expiry the cluster may take to give it back.
const EXPIRY_SLACK: Duration = Duration::from_secs(5);

/// What each replica's figures must keep to after warm-up. A replica at steady load holds a
/// bounded state (request ids, finished jobs and the queue are capped), so its memory, files
/// and the state in its snapshot stay level: the slopes (of the lower envelope, `envelope`)
/// leave room for allocator and cache noise, not for a leak of one record per request (at the
/// default rate, about 500 requests a second). The log is a saw of a long period by design
/// (its file is rewritten with only the live log once it reaches 64 MiB, about every 18
/// minutes at the default rate): its peak is held instead. The snapshot whole is reported,
/// not held: it carries the usage store's changes since its base too, which grow until a
/// snapshot folds them into a new base once they reach a quarter of it, and the base grows
/// with the usage history until its retention (days), so folds come further apart.
const GROWTH_BOUNDS: [(Gauge, Bound); 4] = [
    (Gauge::Rss, Bound::SlopePerHour(64 << 20)),
    (Gauge::OpenFiles, Bound::SlopePerHour(30)),
    (Gauge::LogBytes, Bound::Peak(128 << 20)),
    (Gauge::SnapshotStateBytes, Bound::SlopePerHour(4 << 20)),
];

#[derive(Clone, Copy, Debug)]
enum Bound {
    /// The least-squares slope of the lower envelope, per hour, at most this.
    SlopePerHour(u64),
    /// Never above this.
    Peak(u64),
}

/// The lower envelope of `points` (ms, value): the least of each third of them (counted from
/// the last; a first run left short is dropped), at the third's middle time. A snapshot is a
/// saw by design (it carries the usage changes since its base until they are folded into a new
/// one, every few minutes), and a slope fitted to a tooth or two of a saw says nothing; a leak
/// lifts the troughs too.
pub fn envelope(points: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let run = (points.len() / 3).max(1);
    let mut low: Vec<(u64, u64)> = points
        .rchunks(run)
        .filter(|c| c.len() == run)
        .filter_map(|c| {
            let low = c.iter().map(|p| p.1).min()?;
            let middle = (c[0].0 + c[c.len() - 1].0) / 2;
            Some((middle, low))
        })
        .collect();
    low.reverse();
    low
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
enum Gauge {
    Rss,
    OpenFiles,
    LogBytes,
    SnapshotBytes,
    SnapshotStateBytes,
}

impl Gauge {
    const ALL: [Gauge; 5] = [
        Gauge::Rss,
        Gauge::OpenFiles,
        Gauge::LogBytes,
        Gauge::SnapshotBytes,
        Gauge::SnapshotStateBytes,
    ];

    fn label(self) -> &'static str {
        match self {
            Gauge::Rss => "RSS",
            Gauge::OpenFiles => "open files",
            Gauge::LogBytes => "log size",
            Gauge::SnapshotBytes => "snapshot size",
            Gauge::SnapshotStateBytes => "snapshot's state",
        }
    }

    fn metric(self) -> &'static str {
        match self {
            Gauge::Rss => "process_resident_memory_bytes",
            Gauge::OpenFiles => "process_open_fds",
            Gauge::LogBytes => "berth_replica_log_bytes",
            Gauge::SnapshotBytes => "berth_replica_snapshot_bytes",
            Gauge::SnapshotStateBytes => "berth_replica_snapshot_state_bytes",
        }
    }

    /// The report's series prefix, and how a value is shown there (bytes in KiB).
    fn series(self) -> (&'static str, u64) {
        match self {
            Gauge::Rss => ("RSS KiB: ", 1024),
            Gauge::OpenFiles => ("open files: ", 1),
            Gauge::LogBytes => ("log KiB: ", 1024),
            Gauge::SnapshotBytes => ("snapshot KiB: ", 1024),
            Gauge::SnapshotStateBytes => ("snapshot's state KiB: ", 1024),
        }
    }

    fn unit(self) -> (&'static str, u64) {
        match self {
            Gauge::OpenFiles => ("files/h", 1),
            _ => ("KiB/h", 1024),
        }
    }
}

/// What the load tasks share with the sampler.
struct Shared {
    tenants: Vec<(String, Arc<Client>)>,
    pool: String,
    recorder: super::Recorder,
    /// Held for each step of the load; the sampler takes it exclusively, so while it samples
    /// no call is in flight and the client's view below is the cluster's.
    gate: RwLock<()>,
    stop: AtomicBool,
    /// The placements each tenant holds, as the client saw its calls answered.
    held: Mutex<BTreeMap<String, BTreeSet<String>>>,
    /// When the last reservation made expires.
    last_expiry: Mutex<Option<Instant>>,
    /// Latencies (µs) of the calls since the last sample, and the errors among them.
    interval: Mutex<(Vec<u64>, u64)>,
    /// Calls that failed, by RPC and reason.
    errors: Mutex<BTreeMap<String, u64>>,
    /// Places whose outcome stayed unknown, (tenant, id): taken as held if the cluster lists
    /// them at the next comparison.
    uncertain: Mutex<BTreeSet<(String, String)>>,
    /// chaos: when each failed (ms since the run began).
    failed_at: Mutex<Vec<u64>>,
    /// chaos: every Place answered OK, (ms since the run began, latency µs).
    writes: Option<Mutex<Vec<(u64, u64)>>>,
}

impl Shared {
    fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
        m.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn measured<T>(
        &self,
        tenant: &str,
        rpc: &str,
        call: impl std::future::Future<Output = Result<T, tonic::Status>>,
    ) -> Result<T, tonic::Status> {
        let (outcome, us) = self.recorder.measured(tenant, rpc, call).await;
        let mut interval = Shared::lock(&self.interval);
        interval.0.push(us);
        interval.1 += u64::from(outcome.is_err());
        drop(interval);
        if let Err(status) = &outcome {
            let key = format!("{rpc} {}", reason(status));
            *Shared::lock(&self.errors).entry(key).or_default() += 1;
            if self.writes.is_some() {
                Shared::lock(&self.failed_at).push(self.recorder.now_ms());
            }
        }
        outcome
    }
}

/// One tenant's steady load: a step every `period` until told to stop.
async fn load(shared: Arc<Shared>, t: usize, period: Duration) {
    let (tenant, c) = (&shared.tenants[t].0, &shared.tenants[t].1);
    let mut queue: VecDeque<String> = VecDeque::new();
    // Releases that went unanswered even after `RETRY_FOR`: one may have been applied.
    let mut unanswered: BTreeSet<String> = BTreeSet::new();
    let (mut k, mut next) = (0u64, Instant::now());
    let mut lease_token = None;
    while !shared.stop.load(Ordering::Relaxed) {
        next += period;
        let now = Instant::now();
        if next < now {
            // Behind (a sample paused the load): resume the pace, do not catch up in a burst.
            next = now;
        }
        tokio::time::sleep_until(next.into()).await;
        let _step = shared.gate.read().await;
        if shared.stop.load(Ordering::Relaxed) {
            break;
        }
        k += 1;
        let id = format!("p{k}");
        let m = place_request(tenant, spec(&id, &shared.pool, JOB_CPU_MILLIS), false);
        let started = Instant::now();
        let placed = until_answered(&shared, tenant, "Scheduler/Place", || {
            c.call(m.clone(), |ch, r| async move { client::scheduler(ch).place(r).await })
        });
        match placed.await {
            Ok(_) => {
                Shared::lock(&shared.held).entry(tenant.clone()).or_default().insert(id.clone());
                queue.push_back(id);
                if let Some(writes) = &shared.writes {
                    let us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
                    Shared::lock(writes).push((shared.recorder.now_ms(), us));
                }
            }
            // Unanswered even after `RETRY_FOR`: it may have been applied. The next comparison
            // takes it as held if the cluster lists it.
            Err(s) if transient(&s) => {
                Shared::lock(&shared.uncertain).insert((tenant.clone(), id));
            }
            Err(_) => {}
        }
        if queue.len() > HELD_PER_TENANT {
            if let Some(oldest) = queue.pop_front() {
                let m = release_request(tenant, &oldest);
                let released = until_answered(&shared, tenant, "Scheduler/Release", || {
                    c.call(m.clone(), |ch, r| async move { client::scheduler(ch).release(r).await })
                });
                match released.await {
                    Ok(_) => {
                        let mut held = Shared::lock(&shared.held);
                        held.entry(tenant.clone()).or_default().remove(&oldest);
                    }
                    // Not found after an unanswered release: that one was applied.
                    Err(s) if s.code() == tonic::Code::NotFound && unanswered.remove(&oldest) => {
                        let mut held = Shared::lock(&shared.held);
                        held.entry(tenant.clone()).or_default().remove(&oldest);
                    }
                    // Not found otherwise: the cluster lost it. It stays held here, so the next
                    // comparison reports it.
                    Err(s) if s.code() == tonic::Code::NotFound => {}
                    // Unanswered: try again next step, with a new request.
                    Err(s) => {
                        if transient(&s) {
                            unanswered.insert(oldest.clone());
                        }
                        queue.push_front(oldest);
                    }
                }
            }
        }
        match k % 8 {
            0 => {
                let m = reserve_request(tenant, &format!("r{k}"), &shared.pool, RESERVATION_TTL_MS);
                let call = c.call(m, |ch, r| async move { client::scheduler(ch).reserve(r).await });
                let sent = Instant::now();
                // Counted whether or not it was answered: a timed-out one may still hold until
                // it expires.
                let _ = shared.measured(tenant, "Scheduler/Reserve", call).await;
                let expiry = sent.max(Instant::now()) + Duration::from_millis(RESERVATION_TTL_MS);
                let mut last = Shared::lock(&shared.last_expiry);
                *last = Some(last.map_or(expiry, |l| l.max(expiry)));
            }
            2 | 6 => {
                let m = pb::ListPlacementsRequest {
                    tenant_id: tenant.clone(),
                    page: Some(pb::Page { after: String::new(), limit: 100 }),
                    read: None,
                };
                let call = c
                    .call(m, |ch, r| async move { client::scheduler(ch).list_placements(r).await });
                let _ = shared.measured(tenant, "Scheduler/ListPlacements", call).await;
            }
            4 => {
                let token = match lease_token.take() {
                    Some(token) => token,
                    None => {
                        let m = acquire_request(tenant, "soak", "soak", LEASE_TTL_MS);
                        let call =
                            c.call(m, |ch, r| async move { client::leases(ch).acquire(r).await });
                        let acquired = shared.measured(tenant, "Leases/Acquire", call).await;
                        let token = acquired.ok().and_then(|a| a.lease).map(|l| l.token);
                        lease_token = token;
                        continue;
                    }
                };
                let m = pb::ReleaseLeaseRequest {
                    request_id: new_request_id(),
                    tenant_id: tenant.clone(),
                    name: "soak".into(),
                    token,
                };
                let call = c.call(m, |ch, r| async move { client::leases(ch).release(r).await });
                let _ = shared.measured(tenant, "Leases/Release", call).await;
            }
            _ => {}
        }
    }
}

/// How long a write is sent again (the same request: applied at most once) while a fault
/// makes the cluster unavailable.
const RETRY_FOR: Duration = Duration::from_secs(30);

/// Whether `status` leaves a write's outcome unknown (no replica answered in time).
fn transient(status: &tonic::Status) -> bool {
    use tonic::Code;
    matches!(status.code(), Code::Unavailable | Code::DeadlineExceeded | Code::Unknown)
}

/// Sends `send()` until it is answered, or an answer other than unavailable, or `RETRY_FOR`:
/// a client that must know whether its write happened asks again with the same request id.
async fn until_answered<T, Fut>(
    shared: &Shared,
    tenant: &str,
    rpc: &str,
    send: impl Fn() -> Fut,
) -> Result<T, tonic::Status>
where
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let until = Instant::now() + RETRY_FOR;
    loop {
        match shared.measured(tenant, rpc, send()).await {
            Err(s) if transient(&s) && Instant::now() < until => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            answered => return answered,
        }
    }
}

/// One sample: each replica's gauges (by metrics URL), the accounting, the interval's calls.
#[derive(Clone, Debug, Serialize)]
struct Sample {
    at_ms: u64,
    gauges: BTreeMap<String, BTreeMap<Gauge, u64>>,
    allocated_mcpu: u64,
    held_mcpu: u64,
    calls_per_second: u64,
    errors: u64,
    p50_us: u64,
    p95_us: u64,
    p99_us: u64,
}

/// Each replica's gauges (by metrics URL), as (ms since the run began, values).
type GaugeSeries = BTreeMap<String, Vec<(u64, BTreeMap<Gauge, u64>)>>;

/// The gauges a scrape holds.
fn gauges_of(text: &str) -> BTreeMap<Gauge, u64> {
    Gauge::ALL.iter().filter_map(|g| Some((*g, gauge_value(text, g.metric())?))).collect()
}

/// Scrapes every replica in `urls` every `every` into `into` until aborted (a scrape that
/// fails is skipped here: the samples report it).
async fn sample_gauges(
    urls: Vec<String>,
    began: Instant,
    every: Duration,
    into: Arc<Mutex<GaugeSeries>>,
) {
    loop {
        for url in &urls {
            if let Ok(text) = scrape(url).await {
                let at_ms = u64::try_from(began.elapsed().as_millis()).unwrap_or(u64::MAX);
                let gauges = gauges_of(&text);
                Shared::lock(&into).entry(url.clone()).or_default().push((at_ms, gauges));
            }
        }
        tokio::time::sleep(every).await;
    }
}

/// The value of an unlabelled gauge `name` in a scrape.
fn gauge_value(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Waits until every reservation made has expired and then compares the cluster with what
/// the client holds, tenant by tenant, until they agree or `EXPIRY_SLACK` passes. Returns
/// (allocated mcpu in the pool, mcpu the client holds, the differences).
async fn account(ctx: &Ctx, shared: &Shared) -> anyhow::Result<(u64, u64, Vec<String>)> {
    let last = *Shared::lock(&shared.last_expiry);
    if let Some(at) = last {
        tokio::time::sleep_until(at.into()).await;
    }
    let until = Instant::now() + EXPIRY_SLACK;
    // A place whose outcome was unknown is held if the cluster lists it.
    // One not listed stays uncertain: it may still be applied (a retry in flight elsewhere).
    let uncertain = std::mem::take(&mut *Shared::lock(&shared.uncertain));
    for (tenant, c) in &shared.tenants {
        let mine: BTreeSet<&String> =
            uncertain.iter().filter(|(t, _)| t == tenant).map(|(_, id)| id).collect();
        if mine.is_empty() {
            continue;
        }
        let listed = list(ctx, c, tenant).await?;
        let listed: BTreeSet<&String> =
            listed.iter().filter_map(|p| p.spec.as_ref()).map(|s| &s.placement_id).collect();
        let mut held = Shared::lock(&shared.held);
        let mut still = Shared::lock(&shared.uncertain);
        for id in mine {
            if listed.contains(id) {
                held.entry(tenant.clone()).or_default().insert(id.clone());
            } else {
                still.insert((tenant.clone(), id.clone()));
            }
        }
    }
    loop {
        let expected = Shared::lock(&shared.held).clone();
        let mut wrong = Vec::new();
        let mut held_mcpu = 0;
        for (tenant, c) in &shared.tenants {
            let want = expected.get(tenant).cloned().unwrap_or_default();
            let want_mcpu = u64::try_from(want.len()).unwrap_or(u64::MAX) * JOB_CPU_MILLIS;
            held_mcpu += want_mcpu;
            let listed = list(ctx, c, tenant).await?;
            let got: BTreeSet<String> = listed
                .iter()
                .filter_map(|p| p.spec.as_ref().map(|s| s.placement_id.clone()))
                .collect();
            let extra: Vec<&String> = got.difference(&want).collect();
            let missing: Vec<&String> = want.difference(&got).collect();
            if !extra.is_empty() || !missing.is_empty() {
                wrong.push(format!(
                    "{tenant}: the cluster lists {} the client does not hold ({}) and lacks {}",
                    extra.len(),
                    extra.iter().take(3).map(|s| s.as_str()).collect::<Vec<_>>().join(","),
                    missing.len()
                ));
            }
            let used = usage(ctx, c, tenant).await?.usage.map_or(0, |u| u.cpu_millis);
            if used != want_mcpu {
                wrong.push(format!("{tenant}: usage {used} mcpu, the client holds {want_mcpu}"));
            }
        }
        let pool = pool_status(ctx, &shared.pool).await?;
        let allocated = cpu(pool.capacity).saturating_sub(cpu(pool.free));
        if allocated != held_mcpu {
            wrong.push(format!("pool: {allocated} mcpu allocated, the client holds {held_mcpu}"));
        }
        if wrong.is_empty() || Instant::now() >= until {
            return Ok((allocated, held_mcpu, wrong));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A slope or a peak of `gauge` for people: "grows 12 KiB/h", "peaks at 5 KiB".
fn shown(gauge: Gauge, bound: Bound, value: i128) -> String {
    match bound {
        Bound::SlopePerHour(_) => {
            let (unit, scale) = gauge.unit();
            format!("grows {} {unit}", value / i128::from(scale))
        }
        Bound::Peak(_) => format!("peaks at {} KiB", value / 1024),
    }
}

/// `: N RPC REASON, ...` for the calls that failed, or nothing.
fn by_reason(shared: &Shared) -> String {
    let errors = Shared::lock(&shared.errors);
    if errors.is_empty() {
        return String::new();
    }
    let each: Vec<String> = errors.iter().map(|(what, n)| format!("{n} {what}")).collect();
    format!(": {}", each.join(", "))
}

/// The least-squares slope of `points` (ms, value), per hour (0 for fewer than two points).
pub fn slope_per_hour(points: &[(u64, u64)]) -> i128 {
    let n = points.len() as i128;
    if n < 2 {
        return 0;
    }
    let (mut sx, mut sy, mut sxy, mut sxx) = (0i128, 0i128, 0i128, 0i128);
    for (x, y) in points {
        let (x, y) = (i128::from(*x), i128::from(*y));
        (sx, sy, sxy, sxx) = (sx + x, sy + y, sxy + x * y, sxx + x * x);
    }
    let denominator = n * sxx - sx * sx;
    if denominator == 0 {
        return 0;
    }
    (n * sxy - sx * sy) * 3_600_000 / denominator
}

/// Placements at most held at once by `tenants` tenants' load (its reservations included),
/// twice over: a pool of this many slots on each worker never refuses the load for capacity.
fn slots(tenants: u32) -> u64 {
    u64::from(tenants) * (HELD_PER_TENANT as u64 + 4) * 2
}

/// Creates `tenants` tenants with tokens and starts their load in `pool`: `rate` steps a
/// second in all.
async fn start(
    ctx: &Ctx,
    profile: Profile,
    pool: &str,
    tenants: u32,
    rate: u64,
    track_writes: bool,
) -> anyhow::Result<(Arc<Shared>, Vec<Background<()>>)> {
    let clients = tenants_with_clients(ctx, profile, tenants, None, |_| 0).await?;
    let shared = Arc::new(Shared {
        tenants: clients,
        pool: pool.to_owned(),
        recorder: ctx.recorder.clone(),
        gate: RwLock::new(()),
        stop: AtomicBool::new(false),
        held: Mutex::default(),
        last_expiry: Mutex::default(),
        interval: Mutex::default(),
        errors: Mutex::default(),
        failed_at: Mutex::default(),
        uncertain: Mutex::default(),
        writes: track_writes.then(Mutex::default),
    });
    let period = Duration::from_micros(1_000_000 * u64::from(tenants) / rate.max(1));
    let loads =
        (0..tenants as usize).map(|t| Background::spawn(load(shared.clone(), t, period))).collect();
    Ok((shared, loads))
}

/// Stops the load: once this returns, no call of it is in flight and none follows.
async fn stop(shared: &Shared, loads: Vec<Background<()>>) -> anyhow::Result<()> {
    shared.stop.store(true, Ordering::Relaxed);
    drop(shared.gate.write().await);
    for task in loads {
        task.join().await?;
    }
    Ok(())
}

pub async fn soak(ctx: &Ctx, args: &StressArgs) -> anyhow::Result<Outcome> {
    let profile = Profile::Soak;
    let mut o = Outcome::new(profile);
    let duration = Duration::from_millis(args.duration.unwrap_or(if ctx.short {
        12_000
    } else {
        30 * 60_000
    }));
    anyhow::ensure!(duration >= Duration::from_secs(5), "--duration must be 5 s or more");
    // A minute in a long run; a twelfth of a short one.
    let every = if duration >= Duration::from_secs(600) {
        Duration::from_secs(60)
    } else {
        (duration / 12).max(Duration::from_secs(1))
    };
    let warm_up = (duration / 6).min(Duration::from_secs(300));
    let tenants: u32 = if ctx.short { 4 } else { 8 };
    let pool = ctx.name(profile, "pool");
    workers(ctx, &pool, 2, slots(tenants) * JOB_CPU_MILLIS).await?;
    let rate = args.rate.max(1);
    let (shared, loads) = start(ctx, profile, &pool, tenants, rate, false).await?;
    let began = Instant::now();
    // The gauges a twelfth of a sample interval apart too (5 s in a long run): the lower
    // envelope of a saw (the snapshot's usage changes, and the memory that follows them,
    // rise for minutes and fall at a fold) needs its troughs, which one sample a minute
    // mostly misses, and a slope over three missed troughs is noise.
    let dense: Arc<Mutex<GaugeSeries>> = Arc::default();
    let gauge_every = (every / 12).max(Duration::from_millis(250));
    let sampler =
        Background::spawn(sample_gauges(args.metrics.clone(), began, gauge_every, dense.clone()));
    let mut samples: Vec<Sample> = Vec::new();
    let mut drift = Vec::new();
    let mut scrape_errors = Vec::new();
    let mut leaked = 0u64;
    // Evenly spaced, about `every` apart, the last at the end.
    let ticks =
        u32::try_from((duration.as_millis() + every.as_millis() / 2) / every.as_millis().max(1))
            .unwrap_or(u32::MAX)
            .max(1);
    let mut last_sample = Instant::now();
    for tick in 1..=ticks {
        let last = tick == ticks;
        let due = began + duration * tick / ticks;
        tokio::time::sleep_until(due.into()).await;
        // Pause the load: no call in flight while the cluster is compared with the client.
        if last {
            shared.stop.store(true, Ordering::Relaxed);
        }
        let paused = shared.gate.write().await;
        let (latencies, errors) = std::mem::take(&mut *Shared::lock(&shared.interval));
        let elapsed_ms = u64::try_from(last_sample.elapsed().as_millis()).unwrap_or(1).max(1);
        let mut sorted = latencies;
        sorted.sort_unstable();
        let at_ms = u64::try_from(began.elapsed().as_millis()).unwrap_or(u64::MAX);
        let mut gauges = BTreeMap::new();
        for url in &args.metrics {
            match scrape(url).await {
                Ok(text) => drop(gauges.insert(url.clone(), gauges_of(&text))),
                Err(e) => scrape_errors.push(format!("{url}: {e:#}")),
            }
        }
        let (allocated_mcpu, held_mcpu, wrong) = account(ctx, &shared).await?;
        drift.extend(wrong.into_iter().map(|w| format!("at {} s: {w}", at_ms / 1000)));
        samples.push(Sample {
            at_ms,
            gauges,
            allocated_mcpu,
            held_mcpu,
            calls_per_second: sorted.len() as u64 * 1_000 / elapsed_ms,
            errors,
            p50_us: percentile(&sorted, 500),
            p95_us: percentile(&sorted, 950),
            p99_us: percentile(&sorted, 990),
        });
        eprintln!(
            "  soak: {} s: {} calls/s, p99 {} µs, {allocated_mcpu} mcpu allocated{}",
            at_ms / 1000,
            sorted.len() as u64 * 1_000 / elapsed_ms,
            percentile(&sorted, 990),
            samples
                .last()
                .and_then(|s| s.gauges.values().next())
                .and_then(|g| g.get(&Gauge::Rss))
                .map(|rss| format!(", RSS {} MiB (first replica)", rss >> 20))
                .unwrap_or_default()
        );
        if ctx.plant_leak && !last {
            // The planted fault: a reservation the client forgets, as a leak would.
            let (tenant, c) = &shared.tenants[0];
            leaked += 1;
            let m = reserve_request(tenant, &format!("leak-{leaked}"), &pool, 3_600_000);
            let call = c.call(m, |ch, r| async move { client::scheduler(ch).reserve(r).await });
            ctx.recorder.timed(tenant, "Scheduler/Reserve", call).await?;
        }
        drop(paused);
        last_sample = Instant::now();
    }
    stop(&shared, loads).await?;
    drop(sampler);
    let dense = std::mem::take(&mut *Shared::lock(&dense));
    let warm_up_ms = u64::try_from(warm_up.as_millis()).unwrap_or(0);
    // Each replica's `gauge` after warm-up: every scrape, the samples' and the sampler's.
    let gauge_points = |url: &String, gauge: Gauge| -> Vec<(u64, u64)> {
        let sampled =
            samples.iter().filter_map(|s| Some((s.at_ms, *s.gauges.get(url)?.get(&gauge)?)));
        let between = dense.get(url).into_iter().flatten();
        let mut points: Vec<(u64, u64)> =
            sampled.chain(between.filter_map(|(at, g)| Some((*at, *g.get(&gauge)?)))).collect();
        points.sort_unstable();
        points
    };

    let errors: u64 = samples.iter().map(|s| s.errors).sum();
    o.check(
        "no accounting drift: the cluster holds exactly what the client holds",
        drift.is_empty(),
        if drift.is_empty() {
            format!("{} samples, every reservation given back on expiry", samples.len())
        } else {
            format!("{} differences: {}", drift.len(), drift[..drift.len().min(3)].join("; "))
        },
    );
    o.check("no errors", errors == 0, format!("{errors} calls failed{}", by_reason(&shared)));
    let after: Vec<&Sample> = samples.iter().filter(|s| s.at_ms >= warm_up_ms).collect();
    if args.metrics.is_empty() {
        o.check("growth measured", false, "give every replica's --metrics URL to sample it");
    } else {
        // A figure a replica does not export (not Linux, an older build) is not measured:
        // that fails here rather than pass as level.
        let mut unmeasured = Vec::new();
        for (replica, url) in args.metrics.iter().enumerate() {
            for gauge in Gauge::ALL {
                let n = after
                    .iter()
                    .filter(|s| s.gauges.get(url).is_some_and(|g| g.contains_key(&gauge)))
                    .count();
                if n < 2 {
                    unmeasured.push(format!(
                        "replica {} {}: {n} samples after warm-up",
                        replica + 1,
                        gauge.label()
                    ));
                }
            }
        }
        let problems: Vec<String> = scrape_errors.iter().chain(&unmeasured).cloned().collect();
        o.check(
            "every replica sampled",
            problems.is_empty(),
            if problems.is_empty() {
                format!("{} replicas, {} samples each", args.metrics.len(), samples.len())
            } else {
                problems[..problems.len().min(3)].join("; ")
            },
        );
        let mut over = Vec::new();
        let mut worst: BTreeMap<Gauge, i128> = BTreeMap::new();
        for (replica, url) in args.metrics.iter().enumerate() {
            for (gauge, bound) in GROWTH_BOUNDS {
                let mut points = gauge_points(url, gauge);
                points.retain(|p| p.0 >= warm_up_ms);
                let (seen, limit) = match bound {
                    Bound::SlopePerHour(b) => (slope_per_hour(&envelope(&points)), b),
                    Bound::Peak(b) => {
                        (i128::from(points.iter().map(|p| p.1).max().unwrap_or(0)), b)
                    }
                };
                let w = worst.entry(gauge).or_insert(i128::MIN);
                *w = (*w).max(seen);
                if seen > i128::from(limit) {
                    over.push(format!(
                        "replica {} {} {} (bound {})",
                        replica + 1,
                        gauge.label(),
                        shown(gauge, bound, seen),
                        shown(gauge, bound, i128::from(limit))
                    ));
                }
            }
        }
        for (gauge, bound) in GROWTH_BOUNDS {
            let Some(seen) = worst.get(&gauge) else { continue };
            let (what, unit, scale) = match bound {
                Bound::SlopePerHour(_) => ("growth after warm-up", gauge.unit().0, gauge.unit().1),
                Bound::Peak(_) => ("peak after warm-up", "KiB", 1024),
            };
            let value = u64::try_from((*seen).max(0) / i128::from(scale)).unwrap_or(u64::MAX);
            o.figure(&format!("{} {what}, worst replica", gauge.label()), value, unit);
        }
        let snapshot = after.iter().flat_map(|s| s.gauges.values());
        let snapshot = snapshot.filter_map(|g| g.get(&Gauge::SnapshotBytes)).max();
        o.figure(
            "snapshot size peak after warm-up, largest replica (state and usage changes; not held)",
            snapshot.copied().unwrap_or(0) >> 10,
            "KiB",
        );
        if let Some(last) = samples.last() {
            let rss = last.gauges.values().filter_map(|g| g.get(&Gauge::Rss)).max();
            o.figure("RSS at the end, largest replica", rss.copied().unwrap_or(0) >> 20, "MiB");
        }
        let detail = if over.is_empty() {
            let bounds: Vec<String> = GROWTH_BOUNDS
                .iter()
                .map(|(g, bound)| {
                    let limit = match bound {
                        Bound::SlopePerHour(b) | Bound::Peak(b) => i128::from(*b),
                    };
                    format!("{} {}", g.label(), shown(*g, *bound, limit))
                })
                .collect();
            format!(
                "{} samples after {} s of warm-up (the gauges every {} ms); bounds: {}",
                after.len(),
                warm_up.as_secs(),
                gauge_every.as_millis(),
                bounds.join(", ")
            )
        } else {
            over.join("; ")
        };
        // Seconds are not enough to tell a trend from start-up: a short run reports slopes
        // (figures) and holds them to the bounds only in a run of ten minutes or more.
        if duration >= Duration::from_secs(600) {
            o.check(
                "no unbounded growth (envelope slopes and the log's peak, after warm-up)",
                over.is_empty(),
                detail,
            );
        } else {
            o.figure(
                "replicas' figures over their growth bound (reported, not held: short)",
                over.len() as u64,
                "",
            );
        }
    }
    let mut all: Vec<u64> = Vec::new();
    for s in &after {
        all.push(s.p99_us);
    }
    all.sort_unstable();
    o.figure("samples", samples.len() as u64, "");
    o.figure("load steps per second asked", rate, "");
    if let Some(s) = samples.iter().max_by_key(|s| s.calls_per_second) {
        o.figure("calls per second, busiest interval", s.calls_per_second, "");
    }
    o.figure("worst interval p99 after warm-up", all.last().copied().unwrap_or(0), "µs");
    o.figure("median interval p99 after warm-up", percentile(&all, 500), "µs");
    // The report's series: each replica's gauges, the accounting, the load.
    for (replica, url) in args.metrics.iter().enumerate() {
        for gauge in Gauge::ALL {
            let (prefix, scale) = gauge.series();
            let line: Vec<(u64, u64)> =
                gauge_points(url, gauge).into_iter().map(|(at, v)| (at, v / scale)).collect();
            o.series.insert(format!("{prefix}replica {}", replica + 1), line);
        }
    }
    let line = |f: fn(&Sample) -> u64| samples.iter().map(|s| (s.at_ms, f(s))).collect::<Vec<_>>();
    o.series.insert("allocated mcpu: cluster".into(), line(|s| s.allocated_mcpu));
    o.series.insert("allocated mcpu: client".into(), line(|s| s.held_mcpu));
    o.series.insert("calls/s: all".into(), line(|s| s.calls_per_second));
    o.series.insert("p95 latency µs: all".into(), line(|s| s.p95_us));
    o.series.insert("p99 latency µs: all".into(), line(|s| s.p99_us));
    Ok(o)
}

/// A fault `chaos` injected, from when it began to when everything it broke was back (ms
/// since the run began).
#[derive(Clone, Debug, Serialize)]
pub struct FaultSpan {
    pub name: String,
    pub from_ms: u64,
    pub to_ms: u64,
}

/// A replica paused with SIGSTOP, resumed (SIGCONT) when dropped: however the profile ends, no
/// replica is left stopped.
struct Paused(u32);

impl Drop for Paused {
    fn drop(&mut self) {
        if let Err(e) = signal(self.0, "CONT") {
            eprintln!(
                "could not resume paused replica process {}: {e:#}; run kill -CONT {}",
                self.0, self.0
            );
        }
    }
}

/// Sends `sig` (`KILL`, `STOP`, `CONT`) to `pid` with kill(1).
fn signal(pid: u32, sig: &str) -> anyhow::Result<()> {
    let status = std::process::Command::new("kill")
        .args([format!("-{sig}"), pid.to_string()])
        .status()
        .context("running kill")?;
    anyhow::ensure!(status.success(), "kill -{sig} {pid} failed");
    Ok(())
}

/// The pid `berth up` wrote for replica `id` in its data directory `cluster_dir` (canonical),
/// if that process is this replica: a `berth server` of `cluster_dir/replica-N` (a pid file
/// left by an `up` that was killed may name a process that is gone, or another one since).
fn replica_pid(cluster_dir: &std::path::Path, id: u64) -> Option<u32> {
    replica_process(cluster_dir, id).map(|(pid, _)| pid)
}

/// `replica_pid`, and the process's command line.
fn replica_process(cluster_dir: &std::path::Path, id: u64) -> Option<(u32, Vec<String>)> {
    let text = std::fs::read_to_string(cluster_dir.join(format!("replica-{id}.pid"))).ok()?;
    let pid: u32 = text.trim().parse().ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<String> =
        cmdline.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
    let data_dir = cluster_dir.join(format!("replica-{id}"));
    let ours = args.iter().any(|a| a == "server")
        && args.iter().any(|a| std::path::Path::new(a) == data_dir);
    ours.then_some((pid, args))
}

/// Where replica `id` of the cluster in `cluster_dir` sends and takes peer traffic.
fn peer_addrs(cluster_dir: &std::path::Path, id: u64) -> anyhow::Result<PeerAddrs> {
    let (_, args) =
        replica_process(cluster_dir, id).with_context(|| format!("no pid for replica {id}"))?;
    PeerAddrs::of_args(&args).with_context(|| {
        format!(
            "replica {id} has no --peer-listen and --peer-source (start it with this `berth up`)"
        )
    })
}

/// A client of replicas `ids` of the cluster in `cluster_dir` alone (their API addresses as
/// their command lines give them).
fn others_client(ctx: &Ctx, cluster_dir: &std::path::Path, ids: &[u64]) -> anyhow::Result<Client> {
    let mut connection = ctx.connection.clone();
    connection.endpoints = ids
        .iter()
        .map(|id| {
            let (_, args) = replica_process(cluster_dir, *id)
                .with_context(|| format!("no pid for replica {id}"))?;
            let api = partition::flag(&args, "--api-listen").cloned();
            api.with_context(|| format!("replica {id} has no --api-listen"))
        })
        .collect::<anyhow::Result<_>>()?;
    connection.client(berth::client::ClientOptions {
        deadline: Duration::from_secs(1),
        ..Default::default()
    })
}

/// The leader `client`'s replicas know of, if any.
async fn leader_of(client: &Client) -> Option<u64> {
    let status = client
        .call(pb::StatusRequest {}, |ch, r| async move { client::cluster(ch).status(r).await })
        .await
        .ok()?;
    status.leader_id
}

/// The leader and the replicas that are not, as the cluster says; `None` while it has no
/// leader or a replica is unreachable.
async fn roles(ctx: &Ctx) -> Option<(u64, Vec<u64>)> {
    let status = ctx
        .client
        .call(pb::StatusRequest {}, |ch, r| async move { client::cluster(ch).status(r).await })
        .await
        .ok()?;
    let leader = status.leader_id?;
    if status.replicas.iter().any(|r| r.role == "Unreachable") {
        return None;
    }
    let others = status.replicas.iter().map(|r| r.replica_id).filter(|id| *id != leader);
    Some((leader, others.collect()))
}

/// Waits until `done()` holds, polling every 100 ms, for at most `within`.
async fn wait_for<Fut: std::future::Future<Output = bool>>(
    within: Duration,
    mut done: impl FnMut() -> Fut,
) -> bool {
    let until = Instant::now() + within;
    loop {
        if done().await {
            return true;
        }
        if Instant::now() >= until {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[derive(Clone, Copy, Debug)]
enum Fault {
    KillLeader,
    PauseFollower,
    PauseLeader,
    PartitionLeader,
    WorkerDies,
}

/// How long a replica may take to be started again, or to serve again, before the profile
/// says it did not heal.
const HEAL_WITHIN: Duration = Duration::from_secs(30);

/// Injects `fault` and waits until it has healed, naming what it hit and when it began in
/// `span`; returns a problem if it did not heal.
async fn inject(
    span: &mut FaultSpan,
    ctx: &Ctx,
    fault: Fault,
    cluster_dir: Option<&std::path::Path>,
    pool: &str,
    silenced: &Mutex<BTreeSet<String>>,
    hold: Duration,
) -> anyhow::Result<Option<String>> {
    let replica_fault = !matches!(fault, Fault::WorkerDies);
    let (dir, (leader, followers)) = match (cluster_dir, replica_fault) {
        (Some(dir), true) => {
            let until = Instant::now() + HEAL_WITHIN;
            let mut roles_now = roles(ctx).await;
            while roles_now.is_none() && Instant::now() < until {
                tokio::time::sleep(Duration::from_millis(100)).await;
                roles_now = roles(ctx).await;
            }
            match roles_now {
                Some(r) => (dir, r),
                None => return Ok(Some(format!("{fault:?}: the cluster had no leader"))),
            }
        }
        (None, true) => anyhow::bail!("{fault:?} needs --cluster-dir"),
        (_, false) => (std::path::Path::new(""), (0, Vec::new())),
    };
    let pid_of = |id: u64| replica_pid(dir, id).with_context(|| format!("no pid for replica {id}"));
    match fault {
        Fault::KillLeader => {
            span.name = format!("kill leader {leader}");
            let pid = pid_of(leader)?;
            span.from_ms = ctx.recorder.now_ms();
            signal(pid, "KILL")?;
            // `berth up --restart-on-exit` starts it again (a new pid) and it rejoins.
            let back = wait_for(HEAL_WITHIN, || async move {
                replica_pid(dir, leader).is_some_and(|p| p != pid) && roles(ctx).await.is_some()
            })
            .await;
            if !back {
                return Ok(Some(format!(
                    "replica {leader} was not serving again within {} s (is `berth up` running with --restart-on-exit?)",
                    HEAL_WITHIN.as_secs()
                )));
            }
        }
        Fault::PauseFollower | Fault::PauseLeader => {
            let id = match fault {
                Fault::PauseLeader => leader,
                _ => *followers.first().context("a follower")?,
            };
            let role = if id == leader { "leader" } else { "follower" };
            span.name = format!("pause {role} {id}");
            let paused = Paused(pid_of(id)?);
            span.from_ms = ctx.recorder.now_ms();
            signal(paused.0, "STOP")?;
            tokio::time::sleep(hold).await;
            drop(paused);
            if !wait_for(HEAL_WITHIN, || async { roles(ctx).await.is_some() }).await {
                return Ok(Some(format!("replica {id} did not serve again after SIGCONT")));
            }
        }
        Fault::PartitionLeader => {
            span.name = format!("partition leader {leader}");
            let others = followers
                .iter()
                .map(|id| peer_addrs(dir, *id))
                .collect::<anyhow::Result<Vec<_>>>()?;
            // Asked of the others alone: the old leader may think it leads for a while.
            let others_say = others_client(ctx, dir, &followers)?;
            let cut = partition::Cut::isolate(peer_addrs(dir, leader)?, &others)?;
            span.from_ms = ctx.recorder.now_ms();
            // The others elect a leader among themselves.
            let moved = wait_for(HEAL_WITHIN, || async {
                leader_of(&others_say).await.is_some_and(|l| l != leader)
            })
            .await;
            tokio::time::sleep(hold).await;
            drop(cut);
            if !moved {
                return Ok(Some(format!(
                    "replicas {followers:?} elected no leader while cut off from {leader}"
                )));
            }
            if !wait_for(HEAL_WITHIN, || async { roles(ctx).await.is_some() }).await {
                return Ok(Some(format!(
                    "replica {leader} did not rejoin after the partition healed"
                )));
            }
        }
        Fault::WorkerDies => {
            let worker = format!("{pool}-w0");
            span.name = "worker w0 dies".into();
            span.from_ms = ctx.recorder.now_ms();
            Shared::lock(silenced).insert(worker.clone());
            let down = wait_for(HEAL_WITHIN, || async {
                pool_status(ctx, pool).await.is_ok_and(|p| p.down == 1)
            })
            .await;
            Shared::lock(silenced).remove(&worker);
            if !down {
                return Ok(Some(format!("{worker} was not marked down without heartbeats")));
            }
            let up = wait_for(HEAL_WITHIN, || async {
                pool_status(ctx, pool).await.is_ok_and(|p| p.down == 0)
            })
            .await;
            if !up {
                return Ok(Some(format!("{worker} did not come back with its heartbeats")));
            }
        }
    }
    Ok(None)
}

/// Heartbeats every worker of `pool` but the silenced ones, all at once, every `every`, until
/// aborted. `client` must fail over within the workers' TTL (a replica paused with SIGSTOP
/// holds a call until the attempt times out), as a worker's agent would.
async fn heartbeats(
    client: Arc<Client>,
    workers: Vec<String>,
    silenced: Arc<Mutex<BTreeSet<String>>>,
    every: Duration,
) {
    loop {
        let beats: Vec<Background<()>> = workers
            .iter()
            .filter(|w| !Shared::lock(&silenced).contains(*w))
            .map(|worker| {
                let (client, m) =
                    (client.clone(), pb::HeartbeatRequest { worker_id: worker.clone() });
                Background::spawn(async move {
                    let beat = |ch, r| async move { client::workers(ch).heartbeat(r).await };
                    let _ = client.call(m, beat).await;
                })
            })
            .collect();
        tokio::time::sleep(every).await;
        for beat in beats {
            let _ = beat.join().await;
        }
    }
}

/// OK writes a second within `[from, to)` (ms since the run began).
fn writes_per_second(writes: &[(u64, u64)], from: u64, to: u64) -> u64 {
    let n = writes.iter().filter(|(at, _)| (from..to).contains(at)).count() as u64;
    n * 1_000 / (to.saturating_sub(from)).max(1)
}

/// The longest time without an OK write within `[from, to)`, counting from `from`.
fn longest_stall(writes: &[(u64, u64)], from: u64, to: u64) -> u64 {
    let mut last = from;
    let mut longest = 0;
    for (at, _) in writes.iter().filter(|(at, _)| (from..to).contains(at)) {
        longest = longest.max(at.saturating_sub(last));
        last = last.max(*at);
    }
    longest.max(to.saturating_sub(last))
}

pub async fn chaos(ctx: &Ctx, args: &StressArgs) -> anyhow::Result<Outcome> {
    /// Writes a second after each fault, per mille of those before the first, below which a
    /// full run fails.
    const RECOVERED_PER_MILLE_MIN: u64 = 500;
    /// The longest a full run may go without a write, through any fault.
    const STALL_MAX_MS: u64 = 15_000;
    let profile = Profile::Chaos;
    let mut o = Outcome::new(profile);
    // Canonical, as `berth up` names each replica's data directory on its command line.
    let cluster_dir = match &args.cluster_dir {
        Some(dir) => Some(
            std::fs::canonicalize(dir)
                .with_context(|| format!("--cluster-dir {}", dir.display()))?,
        ),
        None => None,
    };
    let (settle, hold, ttl_ms) = if ctx.short {
        (Duration::from_secs(3), Duration::from_secs(2), 3_000)
    } else {
        (Duration::from_secs(15), Duration::from_secs(8), 5_000)
    };
    let tenants: u32 = if ctx.short { 4 } else { 8 };
    let pool = ctx.name(profile, "pool");
    // Three workers, each with room for all the load: one dead, the others take its work.
    workers(ctx, &pool, 3, slots(tenants) * JOB_CPU_MILLIS).await?;
    let m = pb::SetPoolWorkerTtlRequest {
        request_id: new_request_id(),
        pool: pool.clone(),
        ttl_ms,
        reset: false,
    };
    ctx.client
        .call(m, |ch, r| async move { client::workers(ch).set_pool_worker_ttl(r).await })
        .await
        .map_err(|s| anyhow::anyhow!(crate::cli::describe(&s)))?;
    let silenced = Arc::new(Mutex::new(BTreeSet::new()));
    let names = (0..3).map(|w| format!("{pool}-w{w}")).collect();
    let beat_client = ctx.connection.client(berth::client::ClientOptions {
        deadline: Duration::from_millis(ttl_ms / 2),
        attempt_timeout: Duration::from_millis(ttl_ms / 6),
    })?;
    let _beats = Background::spawn(heartbeats(
        Arc::new(beat_client),
        names,
        silenced.clone(),
        Duration::from_millis(ttl_ms / 5),
    ));
    let (shared, loads) = start(ctx, profile, &pool, tenants, args.rate.max(1), true).await?;
    let mut plan = Vec::new();
    let mut not_injected = None;
    if cluster_dir.is_some() {
        plan.extend([Fault::KillLeader, Fault::PauseFollower, Fault::PauseLeader]);
        match partition::unavailable() {
            None => plan.push(Fault::PartitionLeader),
            Some(why) => {
                eprintln!("  chaos: no partition: {why}");
                not_injected = Some(format!(" (no partition: {why})"));
            }
        }
    }
    plan.push(Fault::WorkerDies);
    let t0 = ctx.recorder.now_ms();
    tokio::time::sleep(settle).await;
    let baseline_end = ctx.recorder.now_ms();
    let mut spans = Vec::new();
    let mut problems = Vec::new();
    for fault in plan {
        let now = ctx.recorder.now_ms();
        let mut span = FaultSpan { name: format!("{fault:?}"), from_ms: now, to_ms: now };
        let dir = cluster_dir.as_deref();
        let problem = inject(&mut span, ctx, fault, dir, &pool, &silenced, hold).await?;
        problems.extend(problem);
        span.to_ms = ctx.recorder.now_ms();
        eprintln!("  chaos: {}: healed after {} ms", span.name, span.to_ms - span.from_ms);
        spans.push(span);
        tokio::time::sleep(settle).await;
    }
    let end_ms = ctx.recorder.now_ms();
    stop(&shared, loads).await?;
    let (allocated, held, drift) = account(ctx, &shared).await?;
    let mut writes = shared.writes.as_ref().map(|w| Shared::lock(w).clone()).unwrap_or_default();
    // In the order they were answered (tasks push in nearly that order, not exactly).
    writes.sort_unstable();

    if cluster_dir.is_none() {
        o.check(
            "replica faults injected",
            false,
            "give --cluster-dir (the data directory of `berth up --restart-on-exit`) to kill and pause its replicas",
        );
    }
    o.check(
        "every fault injected and healed",
        problems.is_empty(),
        if problems.is_empty() {
            let healed: Vec<String> =
                spans.iter().map(|s| format!("{} {} ms", s.name, s.to_ms - s.from_ms)).collect();
            format!("{}{}", healed.join(", "), not_injected.unwrap_or_default())
        } else {
            problems.join("; ")
        },
    );
    o.check(
        "no accounting drift after healing",
        drift.is_empty(),
        if drift.is_empty() {
            format!("{allocated} mcpu allocated, as the client holds")
        } else {
            format!("{} held by the client; {}", held, drift[..drift.len().min(3)].join("; "))
        },
    );
    // A call may fail while a fault lasts and until the cluster has settled after it, never
    // before the first or once the last has settled.
    let failed_at = Shared::lock(&shared.failed_at).clone();
    let settle_ms = u64::try_from(settle.as_millis()).unwrap_or(u64::MAX);
    let outside = failed_at
        .iter()
        .filter(|at| !spans.iter().any(|s| (s.from_ms..=s.to_ms + settle_ms).contains(*at)))
        .count();
    o.check(
        "calls fail only while a fault lasts or settles",
        outside == 0,
        format!("{outside} of {} failures outside{}", failed_at.len(), by_reason(&shared)),
    );
    let before = writes_per_second(&writes, t0, baseline_end);
    o.figure("writes/s before the faults", before, "");
    let (mut worst_after, mut worst_stall) = (u64::MAX, 0);
    for (k, span) in spans.iter().enumerate() {
        let next = spans.get(k + 1).map_or(end_ms, |s| s.from_ms);
        let during = writes_per_second(&writes, span.from_ms, span.to_ms.max(span.from_ms + 1));
        let after = writes_per_second(&writes, span.to_ms, next);
        let stall = longest_stall(&writes, span.from_ms, next);
        worst_after = worst_after.min(after);
        worst_stall = worst_stall.max(stall);
        o.figure(&format!("{}: writes/s during", span.name), during, "");
        o.figure(&format!("{}: writes/s after", span.name), after, "");
        o.figure(&format!("{}: longest stall", span.name), stall, "ms");
        o.figure(&format!("{}: healed after", span.name), span.to_ms - span.from_ms, "ms");
    }
    let recovered = worst_after.saturating_mul(1_000) / before.max(1);
    let detail = format!(
        "the worst {} writes/s after a fault, {before} before ({recovered}‰); longest stall {worst_stall} ms",
        if worst_after == u64::MAX { 0 } else { worst_after }
    );
    // A few seconds a phase on a shared machine are noise: the short mode reports these.
    if ctx.short {
        o.figure("writes/s after the worst fault vs before", recovered, "‰");
        o.figure("longest stall", worst_stall, "ms");
    } else {
        o.check(
            "writes recover after every fault",
            recovered >= RECOVERED_PER_MILLE_MIN && worst_stall <= STALL_MAX_MS,
            format!("{detail} (bounds {RECOVERED_PER_MILLE_MIN}‰, {STALL_MAX_MS} ms)"),
        );
    }
    // The series: OK writes a second and their p95, half-second buckets.
    let bucket = 500;
    let mut by_bucket: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for (at, us) in &writes {
        by_bucket.entry(at / bucket * bucket).or_default().push(*us);
    }
    let mut rate_line = Vec::new();
    let mut p95_line = Vec::new();
    // Whole buckets only: a partial one would read as a fall.
    for b in (t0.div_ceil(bucket) * bucket..=end_ms.saturating_sub(bucket)).step_by(bucket as usize)
    {
        let mut us = by_bucket.remove(&b).unwrap_or_default();
        us.sort_unstable();
        rate_line.push((b, us.len() as u64 * 1_000 / bucket));
        p95_line.push((b, percentile(&us, 950)));
    }
    o.series.insert("calls/s: Place answered OK".into(), rate_line);
    o.series.insert("p95 latency µs: Place".into(), p95_line);
    o.faults = spans;
    Ok(o)
}

#[cfg(test)]
mod tests {
    use super::{gauge_value, slope_per_hour};

    #[test]
    fn slopes_are_per_hour_and_level_lines_have_none() {
        assert_eq!(slope_per_hour(&[(0, 100), (60_000, 100), (120_000, 100)]), 0);
        // 1 per minute is 60 per hour.
        assert_eq!(slope_per_hour(&[(0, 10), (60_000, 11), (120_000, 12)]), 60);
        assert_eq!(slope_per_hour(&[(0, 12), (60_000, 11), (120_000, 10)]), -60);
        assert_eq!(slope_per_hour(&[(5, 7)]), 0);
    }

    #[test]
    fn a_saw_has_a_level_envelope_and_a_leak_does_not() {
        use super::envelope;
        // Teeth of 5 samples a minute apart: 10, 20, .., 50, then back to 10; thirds of 10.
        let saw: Vec<(u64, u64)> = (0..30).map(|i| (i * 60_000, 10 + (i % 5) * 10)).collect();
        assert_eq!(envelope(&saw), [(270_000, 10), (870_000, 10), (1_470_000, 10)]);
        assert_eq!(slope_per_hour(&envelope(&saw)), 0);
        // A rise of one a minute lifts each third's least (its first) by ten.
        let leak: Vec<(u64, u64)> = saw.iter().map(|(t, v)| (*t, v + t / 60_000)).collect();
        assert_eq!(envelope(&leak), [(270_000, 10), (870_000, 20), (1_470_000, 30)]);
        assert_eq!(slope_per_hour(&envelope(&leak)), 60);
        // Counted from the last: a first sample left over is dropped.
        assert_eq!(envelope(&saw[..7]).len(), 3);
    }

    #[test]
    fn stalls_and_rates_count_only_their_window() {
        use super::{longest_stall, writes_per_second};
        let writes = [(1_000, 5), (1_200, 5), (1_300, 5), (4_300, 5), (4_400, 5)];
        assert_eq!(writes_per_second(&writes, 1_000, 2_000), 3);
        assert_eq!(writes_per_second(&writes, 2_000, 3_000), 0);
        assert_eq!(longest_stall(&writes, 1_000, 5_000), 3_000);
        // Nothing in the window: stalled throughout; a window ending in silence counts it.
        assert_eq!(longest_stall(&writes, 2_000, 3_000), 1_000);
        assert_eq!(longest_stall(&writes, 4_400, 6_000), 1_600);
    }

    #[test]
    fn gauges_are_read_by_exact_name() {
        let text = "process_open_fds 17\nprocess_open_fds_max 99\nberth_replica_log_bytes 4096\n";
        assert_eq!(gauge_value(text, "process_open_fds"), Some(17));
        assert_eq!(gauge_value(text, "berth_replica_log_bytes"), Some(4096));
        assert_eq!(gauge_value(text, "process_resident_memory_bytes"), None);
    }
}
