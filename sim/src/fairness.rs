//! The fairness benchmark (`benches/fairness.rs`) through the replicated cluster, under the
//! random faults (`--scenario fairness`).
//!
//! Four tenants with weights 1:2:3:4 each keep `BACKLOG` jobs waiting, submitted with
//! `queue_if_unavailable` into pool `fair` (4 workers of 1000 cpu_millis: 32 jobs of 125 fit),
//! so the pool stays full and the queue decides. A job runs for 1–3 s of the client's time
//! after the client sees it placed, then is released; every write is retried with its request
//! id until answered, and a job whose submission got no answer is submitted
//! again (same request id) until the cluster says what became of it. At the end the clients
//! stop submitting, cancel what still waits and release what runs.
//!
//! The figures come from log time in the cluster's answers: a job's admission time is the
//! placement's `placed_at_ms` (committed state, read linearizably), its end the release's
//! `applied_at_ms`, its wait `placed_at_ms - queued_at_ms`. Resource-time is integrated
//! exactly (cpu_millis × ms) over the window in which every tenant kept submitting, after a
//! warm-up; shares and Jain's index are in parts per million, integers only. It is a report,
//! not a check: the seed's ordinary checks (invariants, history, liveness) decide pass/fail.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth::client::{self, pb, Client, ClientSecurity};
use serde::Serialize;
use tonic::Code;

use crate::cluster::{api_client, now_ms, Params};
use berth_rng::Rng;

pub const POOL: &str = "fair";
pub const WEIGHTS: [u32; 4] = [1, 2, 3, 4];
pub const WORKERS: u64 = 4;
pub const WORKER_CPU_MILLIS: u64 = 1_000;
const JOB_CPU_MILLIS: u64 = 125;
const JOB_MEMORY_MIB: u64 = 64;
/// Jobs each tenant keeps waiting (submitted, not yet seen placed), as the benchmark does.
const BACKLOG: usize = 6;
const HOLD_MS: (u64, u64) = (1_000, 3_000);
/// How long the fairness clients keep submitting (simulated ms).
pub const WORKLOAD_MS: u64 = 20_000;
/// Measured from this long after the last tenant's first submission.
const WARM_UP_MS: u64 = 2_000;
const PPM: u128 = 1_000_000;

pub fn tenant(i: usize) -> String {
    format!("fair{}", i + 1)
}

/// One job as its client learned it from the cluster, in log time.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Job {
    pub tenant: usize,
    pub id: String,
    /// Log time of the submission's answer.
    pub submitted_at_ms: Option<u64>,
    pub queued_at_ms: Option<u64>,
    pub placed_at_ms: Option<u64>,
    pub released_at_ms: Option<u64>,
}

/// Per tenant: admitted resource-time in the window against its entitlement.
#[derive(Clone, Debug, Default, Serialize)]
pub struct TenantShare {
    pub tenant: String,
    pub weight: u32,
    pub cpu_milli_ms: u128,
    pub share_ppm: u128,
    pub entitlement_ppm: u128,
    /// share / entitlement.
    pub weighted_ppm: u128,
    pub placed: u64,
    pub longest_wait_ms: u64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Fairness {
    /// The measured window, in log time.
    pub window_ms: (u64, u64),
    pub tenants: Vec<TenantShare>,
    /// Admitted resource-time over the pool's capacity × window.
    pub utilisation_ppm: u128,
    /// Jain's index on the weighted shares: (Σx)² / (n · Σx²).
    pub jain_ppm: u128,
    pub longest_wait_ms: u64,
    /// Jobs whose fate the clients never learned (they count until the window's end if placed).
    pub unresolved: u64,
}

pub fn ratio(ppm: u128) -> String {
    format!("{}.{:04}", ppm / PPM, (ppm % PPM) / 100)
}

impl Fairness {
    /// The report as lines, for the seed's output.
    pub fn lines(&self) -> Vec<String> {
        let mut out = vec![format!(
            "fairness: weights {WEIGHTS:?}, {WORKERS} workers x {WORKER_CPU_MILLIS} cpu_millis, jobs of {JOB_CPU_MILLIS}, {BACKLOG} waiting per tenant; log time {}..{} ({} ms); utilisation {}",
            self.window_ms.0,
            self.window_ms.1,
            self.window_ms.1.saturating_sub(self.window_ms.0),
            ratio(self.utilisation_ppm)
        )];
        out.push(format!(
            "{:<7} {:>6} {:>8} {:>11} {:>14} {:>7} {:>12}",
            "tenant", "weight", "share", "entitlement", "share/entitled", "placed", "max wait ms"
        ));
        for t in &self.tenants {
            out.push(format!(
                "{:<7} {:>6} {:>8} {:>11} {:>14} {:>7} {:>12}",
                t.tenant,
                t.weight,
                ratio(t.share_ppm),
                ratio(t.entitlement_ppm),
                ratio(t.weighted_ppm),
                t.placed,
                t.longest_wait_ms
            ));
        }
        out.push(format!(
            "Jain's index on weighted shares: {} (target >= 0.95); longest wait {} ms; {} jobs unresolved",
            ratio(self.jain_ppm),
            self.longest_wait_ms,
            self.unresolved
        ));
        out
    }
}

/// The figures from every tenant's jobs: the window is from `WARM_UP_MS` after the last
/// tenant's first submission to the first tenant's last submission (while every tenant kept
/// `BACKLOG` jobs waiting).
pub fn measure(jobs: &[Job]) -> Fairness {
    let per_tenant = |pick: fn(&[u64]) -> Option<u64>| -> Vec<Option<u64>> {
        (0..WEIGHTS.len())
            .map(|t| {
                let times: Vec<u64> = jobs
                    .iter()
                    .filter(|j| j.tenant == t)
                    .filter_map(|j| j.submitted_at_ms)
                    .collect();
                pick(&times)
            })
            .collect()
    };
    let firsts = per_tenant(|t| t.iter().min().copied());
    let lasts = per_tenant(|t| t.iter().max().copied());
    let (Some(firsts), Some(lasts)) = (
        firsts.into_iter().collect::<Option<Vec<u64>>>(),
        lasts.into_iter().collect::<Option<Vec<u64>>>(),
    ) else {
        return Fairness::default();
    };
    let start = firsts.iter().max().copied().unwrap_or(0) + WARM_UP_MS;
    let end = lasts.iter().min().copied().unwrap_or(0).max(start);
    let weight_sum: u128 = WEIGHTS.iter().map(|w| u128::from(*w)).sum();
    let mut tenants: Vec<TenantShare> = WEIGHTS
        .iter()
        .enumerate()
        .map(|(i, w)| TenantShare {
            tenant: tenant(i),
            weight: *w,
            entitlement_ppm: u128::from(*w) * PPM / weight_sum,
            ..TenantShare::default()
        })
        .collect();
    let mut unresolved = 0;
    for job in jobs {
        let Some(placed) = job.placed_at_ms else {
            unresolved += u64::from(job.submitted_at_ms.is_none());
            continue;
        };
        unresolved += u64::from(job.released_at_ms.is_none());
        let t = &mut tenants[job.tenant];
        t.placed += 1;
        let wait = placed.saturating_sub(job.queued_at_ms.unwrap_or(placed));
        t.longest_wait_ms = t.longest_wait_ms.max(wait);
        let (from, to) = (placed.max(start), job.released_at_ms.unwrap_or(end).min(end));
        t.cpu_milli_ms += u128::from(JOB_CPU_MILLIS) * u128::from(to.saturating_sub(from));
    }
    let total: u128 = tenants.iter().map(|t| t.cpu_milli_ms).sum();
    for t in &mut tenants {
        t.share_ppm = t.cpu_milli_ms * PPM / total.max(1);
        t.weighted_ppm = t.share_ppm * PPM / t.entitlement_ppm.max(1);
    }
    let sum: u128 = tenants.iter().map(|t| t.weighted_ppm).sum();
    let squares: u128 = tenants.iter().map(|t| t.weighted_ppm * t.weighted_ppm).sum();
    let n = u128::try_from(tenants.len()).unwrap_or(1);
    let capacity = u128::from(WORKERS * WORKER_CPU_MILLIS) * u128::from(end - start);
    Fairness {
        window_ms: (start, end),
        utilisation_ppm: total * PPM / capacity.max(1),
        jain_ppm: sum * sum * PPM / (n * squares).max(1),
        longest_wait_ms: tenants.iter().map(|t| t.longest_wait_ms).max().unwrap_or(0),
        tenants,
        unresolved,
    }
}

/// No answer: the write may or may not have happened (retry with the same request id).
fn unanswered(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::DeadlineExceeded | Code::Unknown | Code::Cancelled
    )
}

/// A job being submitted, waiting or running, and when its client may release it.
struct Open {
    job: Job,
    /// Client time after which a placed job is released.
    release_after: Option<u64>,
}

/// Submits (or, with the same request id, asks again about) `job`; `false` if refused.
async fn submit(c: &Client, job: &mut Job) -> bool {
    let r = pb::PlaceRequest {
        request_id: job.id.clone(),
        tenant_id: tenant(job.tenant),
        spec: Some(pb::PlacementSpec {
            placement_id: job.id.clone(),
            count: 1,
            resources: Some(pb::Resources {
                cpu_millis: JOB_CPU_MILLIS,
                memory_mib: JOB_MEMORY_MIB,
            }),
            pool: POOL.into(),
            ..Default::default()
        }),
        queue_if_unavailable: true,
        ..Default::default()
    };
    match c.call(r, |ch, r| async move { client::scheduler(ch).place(r).await }).await {
        Ok(a) => {
            job.submitted_at_ms = a.write.map(|w| w.applied_at_ms);
            job.queued_at_ms = a.queued.map(|q| q.queued_at_ms);
            if let Some(p) = a.placement {
                job.placed_at_ms = Some(p.placed_at_ms);
            }
            true
        }
        Err(status) => unanswered(&status),
    }
}

/// Reads where a submitted job is now (linearizable): placed, still queued, or gone.
async fn look(c: &Client, job: &mut Job) -> Result<bool, ()> {
    let r = pb::GetPlacementRequest {
        tenant_id: tenant(job.tenant),
        placement_id: job.id.clone(),
        read: None,
    };
    match c.call(r, |ch, r| async move { client::scheduler(ch).get_placement(r).await }).await {
        Ok(a) => {
            if let Some(p) = a.placement {
                job.placed_at_ms = Some(p.placed_at_ms);
            }
            Ok(a.queued.is_some() || job.placed_at_ms.is_some())
        }
        Err(_) => Err(()),
    }
}

/// Releases a placed job (same request id until answered); its log time, if answered.
async fn release(c: &Client, job: &Job) -> Result<Option<u64>, ()> {
    let r = pb::ReleaseRequest {
        request_id: format!("release-{}", job.id),
        tenant_id: tenant(job.tenant),
        placement_id: job.id.clone(),
        fence: None,
    };
    match c.call(r, |ch, r| async move { client::scheduler(ch).release(r).await }).await {
        Ok(a) => Ok(a.write.map(|w| w.applied_at_ms)),
        Err(status) if unanswered(&status) => Err(()),
        Err(_) => Ok(None),
    }
}

/// Withdraws a queued job; `Ok(true)` if withdrawn, `Ok(false)` if it is no longer queued.
async fn cancel(c: &Client, job: &Job) -> Result<bool, ()> {
    let r = pb::CancelQueuedRequest {
        request_id: format!("cancel-{}", job.id),
        tenant_id: tenant(job.tenant),
        placement_id: job.id.clone(),
    };
    match c.call(r, |ch, r| async move { client::scheduler(ch).cancel_queued(r).await }).await {
        Ok(_) => Ok(true),
        Err(status) if unanswered(&status) => Err(()),
        Err(_) => Ok(false),
    }
}

/// One tenant's client: keep `BACKLOG` jobs waiting until the workload ends, release
/// each a while after it is placed; then withdraw or release everything left.
pub(crate) async fn client(
    params: Params,
    tls: ClientSecurity,
    t: usize,
    seed: u64,
    out: Arc<Mutex<Vec<Job>>>,
) -> Result<(), String> {
    let mut rng = Rng::new(seed ^ 0xFA1E_0000 ^ u64::try_from(t).unwrap_or(0));
    let c = api_client(params.replicas, &tls, Duration::from_secs(3))?;
    let mut open: BTreeMap<String, Open> = BTreeMap::new();
    let mut done: Vec<Job> = Vec::new();
    let mut n = 0u64;
    let mut submitted = false;
    while now_ms() < params.workload_ms {
        while open.values().filter(|o| o.job.placed_at_ms.is_none()).count() < BACKLOG {
            n += 1;
            let id = format!("{}-{n}", tenant(t));
            let job = Job { tenant: t, id: id.clone(), ..Job::default() };
            open.insert(id, Open { job, release_after: None });
        }
        let ids: Vec<String> = open.keys().cloned().collect();
        for id in ids {
            if now_ms() >= params.workload_ms {
                break;
            }
            let o = open.get_mut(&id).expect("listed");
            if o.job.submitted_at_ms.is_none() {
                if !submit(&c, &mut o.job).await {
                    open.remove(&id);
                    continue;
                }
                submitted |= o.job.submitted_at_ms.is_some();
            } else if o.job.placed_at_ms.is_none() && look(&c, &mut o.job).await == Ok(false) {
                done.push(open.remove(&id).expect("listed").job);
                continue;
            }
            let o = open.get_mut(&id).expect("listed");
            if o.job.placed_at_ms.is_some() && o.release_after.is_none() {
                o.release_after = Some(now_ms() + rng.between(HOLD_MS.0, HOLD_MS.1));
            }
            if o.release_after.is_some_and(|at| now_ms() >= at) {
                if let Ok(at) = release(&c, &o.job).await {
                    let mut job = open.remove(&id).expect("listed").job;
                    job.released_at_ms = at;
                    done.push(job);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.between(5, 20))).await;
    }
    // Wind down: withdraw what waits, release what runs (the cluster heals meanwhile).
    let until = now_ms() + 120_000;
    while !open.is_empty() && now_ms() < until {
        let ids: Vec<String> = open.keys().cloned().collect();
        for id in ids {
            let o = open.get_mut(&id).expect("listed");
            if o.job.submitted_at_ms.is_none() && !submit(&c, &mut o.job).await {
                open.remove(&id);
                continue;
            }
            if o.job.submitted_at_ms.is_none() {
                continue;
            }
            if o.job.placed_at_ms.is_none() {
                match cancel(&c, &o.job).await {
                    Ok(true) => {
                        done.push(open.remove(&id).expect("listed").job);
                        continue;
                    }
                    Ok(false) => {
                        if look(&c, &mut o.job).await == Ok(false) {
                            done.push(open.remove(&id).expect("listed").job);
                            continue;
                        }
                    }
                    Err(()) => continue,
                }
            }
            let o = open.get_mut(&id).expect("listed");
            if o.job.placed_at_ms.is_some() {
                if let Ok(at) = release(&c, &o.job).await {
                    let mut job = open.remove(&id).expect("listed").job;
                    job.released_at_ms = at;
                    done.push(job);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    done.extend(open.into_values().map(|o| o.job));
    crate::cluster::lock(&out).extend(done);
    if !submitted {
        return Err(format!("fairness: {} never got a submission answered", tenant(t)));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(t: usize, submitted: u64, queued: Option<u64>, placed: u64, released: u64) -> Job {
        Job {
            tenant: t,
            id: format!("{t}-{submitted}"),
            submitted_at_ms: Some(submitted),
            queued_at_ms: queued,
            placed_at_ms: Some(placed),
            released_at_ms: Some(released),
        }
    }

    /// Shares proportional to the weights give an index of 1; one tenant taking everything
    /// gives 1/n; time outside the window does not count.
    #[test]
    fn measure_integrates_shares_in_the_window() {
        let t0 = 1_000;
        let w = t0 + WARM_UP_MS;
        let fair: Vec<Job> = (0..4)
            .flat_map(|t| {
                let held = 1_000 * (t as u64 + 1);
                // Submitted at t0 (and at w + 10_000, which ends the window).
                [
                    job(t, t0, Some(t0), w - 500, w + held),
                    job(t, w + 10_000, None, w + 10_000, w + 10_000),
                ]
            })
            .collect();
        let f = measure(&fair);
        assert_eq!(f.window_ms, (w, w + 10_000));
        assert_eq!(f.jain_ppm, PPM, "{f:?}");
        assert_eq!(f.tenants[3].cpu_milli_ms, 125 * 4_000);
        assert_eq!(f.longest_wait_ms, w - 500 - t0);

        let mut greedy = fair.clone();
        for j in greedy.iter_mut().filter(|j| j.tenant > 0) {
            j.placed_at_ms = j.released_at_ms;
        }
        assert_eq!(measure(&greedy).jain_ppm, PPM / 4);
    }
}
