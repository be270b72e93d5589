//! Fairness of the queue (issue 7): four tenants with weights 1:2:3:4 keep submitting
//! `PlaceOrQueue` jobs into one full pool for a week of simulated log time; jobs finish after
//! their run time and are released, and each release admits from the queue in `apply`.
//!
//! Prints, per tenant, its share of admitted resource-time (cpu millicores × ms, integrated
//! exactly from each job's admission to its release, after a one-day warm-up) against its
//! entitlement (weight / total weight), the weighted share (share / entitlement), the longest
//! and mean wait from submission to placement, and Jain's fairness index over the weighted
//! shares (1 is perfectly fair; target ≥ 0.95). All arithmetic is integer; ratios print with
//! four decimals.
//!
//! It is a deterministic simulation (a seeded generator, log time only), so every run prints
//! the same figures; it is a benchmark, not a timed test. Run with
//! `cargo bench --bench fairness`; `-- --test` (as `cargo test --benches` passes) measures one
//! hour after the warm-up, as a smoke test. Tunables are the constants below.

use std::collections::BTreeMap;

use berth::scheduler::testing::Log;
use berth::scheduler::{
    Applied, Command, PlaceSpec, QuotaEvent, Resources, Response, TenantId, WorkerId,
    QUEUE_AGING_MS,
};

const WEIGHTS: [u32; 4] = [1, 2, 3, 4];
const WORKERS: u64 = 16;
const WORKER_CPU_MILLIS: u64 = 16_000;
const WORKER_MEMORY_MIB: u64 = 65_536;
/// Job sizes (cpu millicores; memory is 2 MiB per millicore, so cpu is the dominant resource).
const JOB_CPU_MILLIS: [u64; 4] = [500, 1_000, 2_000, 4_000];
const JOB_RUN_MS: (u64, u64) = (60_000, 900_000);
/// Each tenant keeps this many jobs waiting in the queue at all times.
const BACKLOG: usize = 8;
const DAY_MS: u64 = 24 * 3_600_000;
const WARM_UP_MS: u64 = DAY_MS;
const PERIOD_MS: u64 = 8 * DAY_MS;
const SMOKE_PERIOD_MS: u64 = 3_600_000;
const EPOCH_MS: u64 = 1_700_000_000_000;
const PPM: u128 = 1_000_000;

/// A small deterministic generator (SplitMix64), so the run is reproducible.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

struct Job {
    tenant: usize,
    cpu_millis: u64,
    run_ms: u64,
    submitted_at: u64,
}

#[derive(Default, Clone, Copy)]
struct TenantStats {
    cpu_ms: u128,
    placed: u64,
    wait_sum_ms: u128,
    wait_max_ms: u64,
}

struct Sim {
    log: Log,
    rng: Random,
    next_id: u64,
    /// Submitted jobs by placement id, until released.
    jobs: BTreeMap<String, Job>,
    /// Running jobs by (end time, id).
    running: BTreeMap<(u64, String), u64>,
    queued: [usize; 4],
    stats: [TenantStats; 4],
}

impl Sim {
    fn apply(&mut self, command: Command) -> Applied {
        let entry = self.log.entry(command);
        self.log.s.apply(entry)
    }

    fn tenant_id(i: usize) -> TenantId {
        TenantId::new(format!("w{}", WEIGHTS[i]))
    }

    /// A job starts: record its wait and when it ends.
    fn started(&mut self, id: &str) {
        let job = &self.jobs[id];
        let wait = self.log.now - job.submitted_at;
        let end = self.log.now + job.run_ms;
        let tenant = job.tenant;
        let st = &mut self.stats[tenant];
        if self.log.now >= EPOCH_MS + WARM_UP_MS {
            st.placed += 1;
            st.wait_sum_ms += u128::from(wait);
            st.wait_max_ms = st.wait_max_ms.max(wait);
        }
        self.running.insert((end, id.to_owned()), self.log.now);
    }

    fn admitted(&mut self, applied: &Applied) {
        for event in &applied.events {
            if let QuotaEvent::Admitted { placement, .. } = event {
                self.queued[self.jobs[placement.as_str()].tenant] -= 1;
                self.started(placement.as_str());
            }
        }
    }

    fn submit(&mut self, tenant: usize) {
        self.next_id += 1;
        let id = format!("j{}", self.next_id);
        let cpu_millis = JOB_CPU_MILLIS[usize::try_from(self.rng.below(4)).unwrap_or(0)];
        let run_ms = JOB_RUN_MS.0 + self.rng.below(JOB_RUN_MS.1 - JOB_RUN_MS.0);
        self.jobs
            .insert(id.clone(), Job { tenant, cpu_millis, run_ms, submitted_at: self.log.now });
        let spec = PlaceSpec {
            placement: id.as_str().into(),
            count: 1,
            resources: Resources::new(cpu_millis, cpu_millis * 2),
            ..PlaceSpec::default()
        };
        let applied = self.apply(Command::PlaceOrQueue {
            tenant: Self::tenant_id(tenant),
            spec,
            fence: None,
        });
        // Every submission goes through the queue: placed at once, it is admitted (and
        // reported) by its own entry.
        assert!(
            matches!(applied.result, Ok(Response::Placed(_) | Response::Queued(_))),
            "submission refused: {applied:?}"
        );
        self.queued[tenant] += 1;
        self.admitted(&applied);
    }

    /// Resource-time of a job inside the measured window.
    fn account(&mut self, id: &str, started_at: u64) {
        let job = &self.jobs[id];
        let from = started_at.max(EPOCH_MS + WARM_UP_MS);
        if self.log.now > from {
            let ms = u128::from(self.log.now - from);
            self.stats[job.tenant].cpu_ms += ms * u128::from(job.cpu_millis);
        }
    }
}

fn ratio(ppm: u128) -> String {
    format!("{}.{:04}", ppm / PPM, (ppm % PPM) / 100)
}

fn main() {
    let smoke = std::env::args().any(|a| a == "--test");
    let period = if smoke { SMOKE_PERIOD_MS.max(WARM_UP_MS + 3_600_000) } else { PERIOD_MS };
    let mut sim = Sim {
        log: Log::at(EPOCH_MS),
        rng: Random(0x5EED_FA1E),
        next_id: 0,
        jobs: BTreeMap::new(),
        running: BTreeMap::new(),
        queued: [0; 4],
        stats: [TenantStats::default(); 4],
    };
    for (i, weight) in WEIGHTS.iter().enumerate() {
        let tenant = Sim::tenant_id(i);
        sim.apply(Command::CreateTenant { tenant, parent: None, weight: *weight });
    }
    for w in 0..WORKERS {
        sim.apply(Command::RegisterWorker {
            worker: WorkerId::new(format!("worker-{w:02}")),
            pool: None,
            capacity: Resources::new(WORKER_CPU_MILLIS, WORKER_MEMORY_MIB),
            labels: Default::default(),
        });
    }
    let end = EPOCH_MS + period;
    loop {
        for tenant in 0..WEIGHTS.len() {
            while sim.queued[tenant] < BACKLOG {
                sim.submit(tenant);
            }
        }
        let Some(((finish, id), started_at)) = sim.running.pop_first() else { break };
        if finish > end {
            sim.log.now = end;
            sim.account(&id, started_at);
            for ((_, id), started_at) in std::mem::take(&mut sim.running) {
                sim.account(&id, started_at);
            }
            break;
        }
        sim.log.now = finish;
        sim.account(&id, started_at);
        let tenant = Sim::tenant_id(sim.jobs[&id].tenant);
        let applied =
            sim.apply(Command::Release { tenant, placement: id.as_str().into(), fence: None });
        assert!(applied.result.is_ok(), "release refused: {applied:?}");
        sim.jobs.remove(&id);
        sim.admitted(&applied);
    }
    if let Err(broken) = sim.log.s.check_invariants() {
        panic!("invariants broken: {broken:?}");
    }

    let total: u128 = sim.stats.iter().map(|t| t.cpu_ms).sum();
    let weight_sum: u128 = WEIGHTS.iter().map(|w| u128::from(*w)).sum();
    let capacity_ms = u128::from(WORKERS * WORKER_CPU_MILLIS) * u128::from(period - WARM_UP_MS);
    println!(
        "fairness: {} tenants, weights {:?}, {} workers × {} cpu_millis, {} h measured after {} h warm-up, backlog {} per tenant, aging {} ms",
        WEIGHTS.len(),
        WEIGHTS,
        WORKERS,
        WORKER_CPU_MILLIS,
        (period - WARM_UP_MS) / 3_600_000,
        WARM_UP_MS / 3_600_000,
        BACKLOG,
        QUEUE_AGING_MS
    );
    println!("pool utilisation: {}", ratio(total * PPM / capacity_ms.max(1)));
    println!(
        "{:<8} {:>6} {:>10} {:>12} {:>14} {:>9} {:>13} {:>13}",
        "tenant",
        "weight",
        "share",
        "entitlement",
        "share/entitled",
        "placed",
        "mean wait s",
        "max wait s"
    );
    let mut weighted = Vec::new();
    for (i, st) in sim.stats.iter().enumerate() {
        let share = st.cpu_ms * PPM / total.max(1);
        let entitlement = u128::from(WEIGHTS[i]) * PPM / weight_sum;
        let x = share * PPM / entitlement;
        weighted.push(x);
        let mean_wait = st.wait_sum_ms / u128::from(st.placed.max(1)) / 1_000;
        println!(
            "{:<8} {:>6} {:>10} {:>12} {:>14} {:>9} {:>13} {:>13}",
            Sim::tenant_id(i).as_str(),
            WEIGHTS[i],
            ratio(share),
            ratio(entitlement),
            ratio(x),
            st.placed,
            mean_wait,
            st.wait_max_ms / 1_000
        );
    }
    // Jain's index: (Σx)² / (n · Σx²), in parts per million.
    let sum: u128 = weighted.iter().sum();
    let squares: u128 = weighted.iter().map(|x| x * x).sum();
    let n = u128::try_from(weighted.len()).unwrap_or(1);
    let jain = sum * sum * PPM / (n * squares).max(1);
    let longest = sim.stats.iter().map(|s| s.wait_max_ms).max().unwrap_or(0);
    println!("Jain's fairness index on weighted shares: {} (target >= 0.95)", ratio(jain));
    println!("longest wait: {} s", longest / 1_000);
    if !smoke {
        assert!(jain * 100 >= 95 * PPM, "Jain's index {} below 0.95", ratio(jain));
    }
}
