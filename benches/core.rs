//! Throughput of `Scheduler::apply(Place)` at cluster scale (issue #2).
//!
//! A cluster of 10,000 workers holds 100,000 live placements of mixed sizes (cpu 250..8000
//! millicores, 1..8 MiB per millicore, so some workers run out of memory before cpu). Setup
//! fills it, then turns it over once with bin-pack so timing starts from its steady state.
//! Scenarios, each on its own copy of that cluster:
//! - `place`: batches of up to `CHUNK` `Place` (count 1, bin-pack) entries are timed; each
//!   batch is released again untimed, newest first, which restores every worker's allocation,
//!   so each batch starts from the same cluster (a burst of 1% growth).
//! - `place+release`: one timed iteration is a `Place` plus a `Release` of the oldest live
//!   placement (steady state). One iteration places one workload, so iterations/s is
//!   placements/s *including* the cost of the release.
//! - `place+request-id`: as `place`, but every entry carries a random request id, as production
//!   does; the session table starts full (`Config::sessions_max`), so every entry also evicts
//!   one.
//!
//! - `place+release+budget`: as `place+release`, with cpu and memory priced and the tenant
//!   given a budget with alerts and a hard stop (never reached): the cost of budgets.
//!
//! All run twice: `unconstrained`, and `constrained`, where workload `appN` (N in 0..1000) is
//! labelled `app=appN`, has a required anti-affinity to `app=appN` and joins the spread
//! placement group `gN`. Targets: 100,000 placements/s unconstrained, 20,000/s constrained.
//!
//! Only `apply` (and dropping its `Applied`) is timed; entries are built before the clock
//! starts. Every timed entry must be accepted, so a rejection can never pass for a fast place.
//! A summary table in placements/s, from the last `SAMPLES` samples of each scenario, is
//! printed at the end. Run with `cargo bench --bench core`; a smoke run (`cargo test --benches`
//! or `-- --test`) uses a 1/10 scale cluster and prints no summary.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use berth::scheduler::testing::Log;
use berth::scheduler::{
    Budget, Command, Entry, GroupId, GroupStrategy, Item, LabelTerm, Limits, PlaceSpec,
    PlacementId, Prices, Quota, RequestId, Resources, Strategy, TenantId, Tier, WorkerId,
};
use criterion::{criterion_group, BenchmarkId, Criterion, Throughput};

/// Criterion samples per scenario; the summary uses exactly these (warm-up calls are dropped).
const SAMPLES: usize = 20;
/// Places timed between two untimed clean-ups, so a sample never grows the cluster by more.
const CHUNK: u64 = 1_000;
/// Log time of the first entry (2023-11-14); each entry is 1 ms later.
const EPOCH_MS: u64 = 1_700_000_000_000;
const WORKER_CPU_MILLIS: u64 = 64_000;
const WORKER_MEMORY_MIB: u64 = 262_144;
/// Instance cpu sizes (millicores) and memory per millicore (MiB), drawn uniformly.
const CPU_SIZES: [u64; 6] = [250, 500, 1_000, 2_000, 4_000, 8_000];
const MIB_PER_MILLI: [u64; 4] = [1, 2, 4, 8];
const TENANT: &str = "acme";

#[derive(Clone, Copy)]
struct Scale {
    workers: u64,
    placements: u64,
    /// Distinct `app=appN` labels and spread groups `gN` (constrained cluster only).
    apps: u64,
}

const FULL: Scale = Scale { workers: 10_000, placements: 100_000, apps: 1_000 };
const SMOKE: Scale = Scale { workers: 1_000, placements: 10_000, apps: 100 };

/// Times `iters` iterations of one scenario on a cluster, returning the time spent in `apply`.
type Run = fn(&mut Cluster, u64) -> Duration;

/// Readies a scenario's copy of the cluster, untimed.
type Prepare = fn(&mut Cluster);

/// One scenario's timed samples: (places, time spent applying).
type Samples = Vec<(u64, Duration)>;

static RESULTS: Mutex<Vec<(String, u64, Samples)>> = Mutex::new(Vec::new());

fn record(scenario: &str, target_per_s: u64, places: u64, elapsed: Duration) {
    let mut results = RESULTS.lock().expect("results lock is never poisoned");
    let at = match results.iter().position(|(name, _, _)| name == scenario) {
        Some(at) => at,
        None => {
            results.push((scenario.to_owned(), target_per_s, Vec::new()));
            results.len() - 1
        }
    };
    results[at].2.push((places, elapsed));
}

/// splitmix64: a deterministic stream, so every run builds the same cluster.
fn next_random(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A request id shaped like a client's (32 random hex digits, see `client::new_request_id`),
/// derived from the entry's index on a stream of its own, so the placements are unchanged.
/// Sequential ids ("req-1", "req-2", ...) would keep the session table's lookups in cache.
fn request_id_for(index: u64) -> RequestId {
    let mut state = index;
    RequestId::new(format!("{:016x}{:016x}", next_random(&mut state), next_random(&mut state)))
}

fn pick<T: Copy>(state: &mut u64, items: &[T]) -> T {
    let len = u64::try_from(items.len()).expect("slice length fits in u64");
    let at = usize::try_from(next_random(state) % len).expect("index fits in usize");
    items[at]
}

fn assert_accepted(applied: &berth::scheduler::Applied, what: &str) {
    if let Err(rejection) = &applied.result {
        panic!("{what} at index {} was rejected: {rejection}", applied.log_index.0);
    }
}

/// A cluster plus the bookkeeping needed to keep feeding it valid entries.
#[derive(Clone)]
struct Cluster {
    log: Log,
    scale: Scale,
    constrained: bool,
    tenant: TenantId,
    placements_made: u64,
    random: u64,
    /// Live placements, oldest first.
    live: VecDeque<PlacementId>,
}

impl Cluster {
    fn build(scale: Scale, constrained: bool) -> Cluster {
        let started = Instant::now();
        let mut cluster = Cluster {
            log: Log::at(EPOCH_MS),
            scale,
            constrained,
            tenant: TenantId::new(TENANT),
            placements_made: 0,
            random: 0x5EED,
            live: VecDeque::new(),
        };
        let tenant = cluster.tenant.clone();
        cluster.apply_ok(Command::CreateTenant { tenant: tenant.clone(), parent: None, weight: 1 });
        let huge = Some(u64::MAX / 4);
        let limits = Limits { cpu_millis: huge, memory_mib: huge, instances: huge, jobs: huge };
        let quota = Quota { total: limits, ..Quota::default() };
        cluster.apply_ok(Command::SetQuota { tenant: tenant.clone(), quota });
        for i in 0..scale.workers {
            let labels = BTreeMap::from([
                ("zone".to_owned(), format!("z{}", i % 3)),
                ("rack".to_owned(), format!("r{}", i % 200)),
            ]);
            cluster.apply_ok(Command::RegisterWorker {
                worker: WorkerId::new(format!("w{i:06}")),
                pool: None,
                capacity: Resources::new(WORKER_CPU_MILLIS, WORKER_MEMORY_MIB),
                labels,
            });
        }
        if constrained {
            for n in 0..scale.apps {
                cluster.apply_ok(Command::CreatePlacementGroup {
                    tenant: tenant.clone(),
                    group: GroupId::new(format!("g{n}")),
                    max_instances: 1_000,
                    strategy: GroupStrategy::Spread,
                });
            }
        }
        // Fill with request ids (so the session table is full, as in production), a quarter
        // spread so the free index is not one tidy staircase.
        for _ in 0..scale.placements {
            let strategy = if next_random(&mut cluster.random) % 4 == 0 {
                Strategy::Spread
            } else {
                Strategy::BinPack
            };
            let entry = cluster.place_entry(strategy, true);
            cluster.apply_entry_ok(entry, "setup place");
        }
        // Turn the cluster over once with the measured policy (bin-pack, oldest released
        // first). Bin-pack consolidates work over time, so only after this does the timed
        // part start from the cluster's steady state rather than drift during the samples.
        cluster.time_place_release_pairs(scale.placements);
        let state = cluster.log.s.state();
        let (cpu, memory) = state.workers.values().fold((0u64, 0u64), |(c, m), w| {
            (c + w.allocated.cpu_millis, m + w.allocated.memory_mib)
        });
        let kind = if constrained { "constrained" } else { "unconstrained" };
        let idle = state.workers.values().filter(|w| w.allocated.is_zero()).count();
        let built_ms = started.elapsed().as_millis();
        // Equal across builds iff they placed identically: an optimisation must keep it.
        let hash: String =
            cluster.log.s.state_hash()[..8].iter().map(|b| format!("{b:02x}")).collect();
        println!(
            "setup {kind}: {} workers ({idle} idle), {} placements, {} sessions, cpu {}% / \
             memory {}% allocated, built in {built_ms} ms, state hash {hash}",
            state.workers.len(),
            state.placements.len(),
            state.sessions.len(),
            cpu * 100 / (scale.workers * WORKER_CPU_MILLIS),
            memory * 100 / (scale.workers * WORKER_MEMORY_MIB),
        );
        cluster
    }

    /// Prices cpu and memory and gives the tenant a budget it never reaches, with the default
    /// alerts: every Place and Release then also moves its budget's deadline.
    fn budget(&mut self) {
        let mut prices = Prices::default();
        for (item, price) in [(Item::Cpu, "0.04"), (Item::Memory, "0.005")] {
            let per_hour = price.parse().expect("a decimal");
            prices.other_pools.items.insert(item, vec![Tier { up_to_hours: None, per_hour }]);
        }
        let plan = "default".into();
        self.apply_ok(Command::SetPricePlan { plan, prices, effective_at: None });
        let budget = Budget {
            per_month: "1000000000000".parse().expect("a decimal"),
            per_day: None,
            alerts_percent: vec![50, 80, 100],
            hard_stop: true,
        };
        self.apply_ok(Command::SetBudget { tenant: self.tenant.clone(), budget: Some(budget) });
    }

    fn entry(&mut self, command: Command, request_id: bool) -> Entry {
        // One millisecond of log time per entry.
        self.log.advance(1);
        let entry = self.log.entry(command);
        Entry { request_id: request_id.then(|| request_id_for(entry.index.0)), ..entry }
    }

    fn apply_ok(&mut self, command: Command) {
        let entry = self.entry(command, false);
        self.apply_entry_ok(entry, "setup");
    }

    fn apply_entry_ok(&mut self, entry: Entry, what: &str) {
        let applied = self.log.s.apply(entry);
        assert_accepted(&applied, what);
    }

    /// The next `Place` of one instance; the placement is counted live from here on.
    fn place_entry(&mut self, strategy: Strategy, request_id: bool) -> Entry {
        let n = self.placements_made;
        self.placements_made += 1;
        let cpu = pick(&mut self.random, &CPU_SIZES);
        let memory = cpu * pick(&mut self.random, &MIB_PER_MILLI);
        let placement = PlacementId::new(format!("p{n}"));
        let mut spec = PlaceSpec {
            placement: placement.clone(),
            count: 1,
            resources: Resources::new(cpu, memory),
            strategy,
            ..PlaceSpec::default()
        };
        if self.constrained {
            let app = format!("app{}", n % self.scale.apps);
            spec.anti_affinity = vec![LabelTerm::new("app", app.as_str())];
            spec.labels = BTreeMap::from([("app".to_owned(), app)]);
            spec.group = Some(GroupId::new(format!("g{}", n % self.scale.apps)));
        }
        self.live.push_back(placement);
        let command = Command::Place { tenant: self.tenant.clone(), spec, fence: None };
        self.entry(command, request_id)
    }

    fn release_entry(&mut self, placement: PlacementId) -> Entry {
        let command = Command::Release { tenant: self.tenant.clone(), placement, fence: None };
        self.entry(command, false)
    }

    /// Times `iters` places in chunks; after each chunk its placements are released untimed.
    fn time_places(&mut self, iters: u64, request_ids: bool) -> Duration {
        let mut elapsed = Duration::ZERO;
        let mut left = iters;
        while left > 0 {
            let chunk = left.min(CHUNK);
            left -= chunk;
            let entries: Vec<Entry> =
                (0..chunk).map(|_| self.place_entry(Strategy::BinPack, request_ids)).collect();
            let started = Instant::now();
            for entry in entries {
                let applied = self.log.s.apply(entry);
                assert_accepted(&applied, "timed place");
            }
            elapsed += started.elapsed();
            for _ in 0..chunk {
                let id = self.live.pop_back().expect("the chunk's placements are live");
                let entry = self.release_entry(id);
                self.apply_entry_ok(entry, "untimed release");
            }
        }
        elapsed
    }

    /// Times `iters` (place, release oldest) pairs.
    fn time_place_release_pairs(&mut self, iters: u64) -> Duration {
        let mut elapsed = Duration::ZERO;
        let mut left = iters;
        while left > 0 {
            let chunk = left.min(CHUNK);
            left -= chunk;
            let mut entries =
                Vec::with_capacity(usize::try_from(2 * chunk).expect("chunk fits in usize"));
            for _ in 0..chunk {
                entries.push(self.place_entry(Strategy::BinPack, false));
                let oldest = self.live.pop_front().expect("the cluster is never empty");
                entries.push(self.release_entry(oldest));
            }
            let started = Instant::now();
            for entry in entries {
                let applied = self.log.s.apply(entry);
                assert_accepted(&applied, "timed place/release");
            }
            elapsed += started.elapsed();
        }
        elapsed
    }
}

/// True under `cargo bench` proper; false for smoke runs (`cargo test --benches`, `--test`).
fn measuring() -> bool {
    let has = |flag: &str| std::env::args().any(|arg| arg == flag);
    has("--bench") && !has("--test")
}

fn bench_kind(c: &mut Criterion, constrained: bool) {
    let scale = if measuring() { FULL } else { SMOKE };
    // Built on first use, so a filter that skips this kind also skips its setup.
    let mut base: Option<Cluster> = None;
    let (kind, target) =
        if constrained { ("constrained", 20_000) } else { ("unconstrained", 100_000) };

    let mut group = c.benchmark_group(format!("apply/{kind}"));
    group.sample_size(SAMPLES);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(if constrained { 5 } else { 4 }));
    // One placement per iteration in every scenario (a pair places one and releases one).
    group.throughput(Throughput::Elements(1));

    let scenarios: [(&str, Prepare, Run); 4] = [
        ("place", |_| {}, |cluster, iters| cluster.time_places(iters, false)),
        ("place+release", |_| {}, |cluster, iters| cluster.time_place_release_pairs(iters)),
        ("place+request-id", |_| {}, |cluster, iters| cluster.time_places(iters, true)),
        ("place+release+budget", Cluster::budget, |cluster, iters| {
            cluster.time_place_release_pairs(iters)
        }),
    ];
    for (name, prepare, run) in scenarios {
        let mut cluster: Option<Cluster> = None;
        let scenario = format!("{kind}/{name}");
        group.bench_function(BenchmarkId::from_parameter(name), |b| {
            let cluster = cluster.get_or_insert_with(|| {
                let mut c = base.get_or_insert_with(|| Cluster::build(scale, constrained)).clone();
                prepare(&mut c);
                c
            });
            b.iter_custom(|iters| {
                let elapsed = run(cluster, iters);
                record(&scenario, target, iters, elapsed);
                elapsed
            });
        });
    }
    group.finish();
}

fn unconstrained(c: &mut Criterion) {
    bench_kind(c, false);
}

fn constrained(c: &mut Criterion) {
    bench_kind(c, true);
}

/// `n / 10` with one decimal, without floats (the workspace denies float arithmetic).
fn tenths(n: u128) -> String {
    format!("{}.{}", n / 10, n % 10)
}

fn print_summary() {
    let results = RESULTS.lock().expect("results lock is never poisoned");
    if results.is_empty() {
        return;
    }
    if !measuring() {
        println!("smoke run at 1/10 scale: no placements/s summary (use `cargo bench`)");
        return;
    }
    println!();
    println!("placements/s over the last {SAMPLES} samples of each scenario (warm-up excluded)");
    println!(
        "{:<32} {:>10} {:>14} {:>10} {:>14} {:>12} {:>8}",
        "scenario", "places", "placements/s", "ns/place", "median ns/pl", "target/s", "met"
    );
    for (name, target, samples) in results.iter() {
        let measured = &samples[samples.len().saturating_sub(SAMPLES)..];
        let places: u128 = measured.iter().map(|(n, _)| u128::from(*n)).sum();
        let nanos: u128 = measured.iter().map(|(_, d)| d.as_nanos()).sum();
        if places == 0 || nanos == 0 {
            continue;
        }
        let per_s = places * 1_000_000_000 / nanos;
        let mut per_place: Vec<u128> = measured
            .iter()
            .filter(|(n, _)| *n > 0)
            .map(|(n, d)| d.as_nanos() * 10 / u128::from(*n))
            .collect();
        per_place.sort_unstable();
        let median = per_place[per_place.len() / 2];
        let met = if per_s >= u128::from(*target) { "yes" } else { "NO" };
        println!(
            "{:<32} {:>10} {:>14} {:>10} {:>14} {:>12} {:>8}",
            name,
            places,
            per_s,
            tenths(nanos * 10 / places),
            tenths(median),
            target,
            met
        );
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default();
    targets = unconstrained, constrained
}

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    print_summary();
}
