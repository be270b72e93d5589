//! The usage store (issue 19): `GetUsage` for one tenant over 30 days at hourly steps, with
//! 1,000 tenants and a month of history.
//!
//! Builds a store on disk (a temporary directory, the production writer thread) from a month
//! of changes: every tenant changes what it holds every `CHANGE_EVERY_MS` of log time (one
//! command each, sent in batches as the state machine sends them). Prints how fast the writer
//! took them, then the time of `QUERIES` queries of a random tenant's last 30 days: hourly
//! (720 buckets), daily and raw (one day at 5-minute steps), each through the writer as the
//! API asks it, cold (sled's cache holds what the month's writes left in it). A snapshot is
//! taken every `SNAPSHOT_COMMANDS` commands while the history is written, as a replica takes
//! them: a checkpoint on the writer (the changes since the base), and when they outgrow a
//! quarter of the base a fold into a new one (a replica folds on another thread; the bench
//! prints the writer's rate without that time). Prints what the snapshots cost, then runs the
//! hourly queries again just after one more snapshot, and times restoring a replica from the
//! base and the changes. Target: hourly ≤ 5 ms.
//!
//! Run with `cargo bench --bench usage`; `-- --test` (as `cargo test --benches` passes) builds
//! a day of history for 20 tenants, as a smoke test.

use std::time::{Duration, Instant};

use berth::fatal::FailStop;
use berth::scheduler::windows::{DAY_MS, HOUR_MS};
use berth::scheduler::{PoolId, Resources, TenantId, UnixMillis, UsageRetention};
use berth::usage::{self, Record, UsageLocation, UsageQuery, UsageStore};

const TENANTS: u64 = 1_000;
const HISTORY_MS: u64 = 30 * DAY_MS;
const CHANGE_EVERY_MS: u64 = HOUR_MS;
const BATCH: usize = 64;
const QUERIES: usize = 300;
const EPOCH_MS: u64 = 1_796_083_200_000;
/// Commands between snapshots (`ReplicaOptions::snapshot_logs`' default).
const SNAPSHOT_COMMANDS: u64 = 10_000;

/// A small deterministic generator (xorshift), so every run builds the same history.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn block<T>(rt: &tokio::runtime::Runtime, p: berth::usage::Pending<T>) -> T {
    rt.block_on(p.wait()).expect("the store answers")
}

fn percentile(sorted: &[Duration], p: usize) -> Duration {
    sorted[(sorted.len() * p / 100).min(sorted.len() - 1)]
}

/// A duration in ms to two decimals (integer arithmetic: no floats in Berth).
fn ms(d: Duration) -> String {
    let us = d.as_micros();
    format!("{}.{:02} ms", us / 1_000, us % 1_000 / 10)
}

/// Bytes in MiB to one decimal.
fn mib(bytes: u64) -> String {
    let tenths = bytes * 10 / (1 << 20);
    format!("{}.{} MiB", tenths / 10, tenths % 10)
}

fn main() {
    let smoke = std::env::args().any(|a| a == "--test");
    let (tenants, history) = if smoke { (20, DAY_MS) } else { (TENANTS, HISTORY_MS) };
    let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let location = UsageLocation::Dir(dir.path().join("usage"));
    let store = UsageStore::open(&location, FailStop::record()).expect("opens");
    let ids: Vec<TenantId> =
        (0..tenants).map(|t| TenantId::new(format!("tenant-{t:04}"))).collect();
    let pools = [PoolId::new("default"), PoolId::new("gpu")];

    // Each tenant's changes are spread evenly over every hour, in log-time order. A snapshot
    // is taken every `SNAPSHOT_COMMANDS` commands, as a replica takes them.
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let steps = history / CHANGE_EVERY_MS;
    let started = Instant::now();
    let mut batch = Vec::with_capacity(BATCH);
    let mut index = 0;
    let mut snapshots = Snapshots::default();
    let mut write = |steps: std::ops::Range<u64>, rng: &mut Rng, snapshots: &mut Snapshots| {
        for step in steps {
            for (t, tenant) in ids.iter().enumerate() {
                index += 1;
                let at = EPOCH_MS + step * CHANGE_EVERY_MS + (t as u64) * CHANGE_EVERY_MS / tenants;
                let r = rng.next();
                let mut rates =
                    vec![(pools[0].clone(), false, Resources::new(r % 64_000, r % 131_072))];
                if r % 3 == 0 {
                    rates.push((
                        pools[1].clone(),
                        r % 2 == 0,
                        Resources::new(r % 8_000, r % 16_384),
                    ));
                }
                batch.push(Record {
                    index,
                    at: UnixMillis(at),
                    retention: UsageRetention::default(),
                    changes: vec![(tenant.clone(), rates)],
                });
                if batch.len() == BATCH || index % SNAPSHOT_COMMANDS == 0 {
                    store.record(std::mem::take(&mut batch));
                }
                if index % SNAPSHOT_COMMANDS == 0 {
                    snapshots.take(&rt, &store);
                }
            }
        }
        store.record(std::mem::take(&mut batch));
    };
    write(0..steps, &mut rng, &mut snapshots);
    let now = EPOCH_MS + history;
    // Waits for the writer with a query, which reads one tenant (a hash would read them all).
    let span = history.min(30 * DAY_MS);
    let hourly = ("hourly, 30 days (720 buckets)", now - span, now, HOUR_MS);
    let query = |tenant: TenantId, (_, from, to, step): (&str, u64, u64, u64)| {
        let query =
            UsageQuery { tenant, from: UnixMillis(from), to: UnixMillis(to), step_ms: step };
        block(&rt, store.query(query, UnixMillis(now), UsageRetention::default()))
    };
    query(ids[0].clone(), hourly);
    let took = started.elapsed();
    let changes = steps * tenants;
    let folding: Duration = snapshots.folds.iter().sum();
    // The bench's waits for the writer before each checkpoint take a checkpoint's time too.
    let waiting = snapshots.checkpoints.iter().sum::<Duration>().min(snapshots.waits.iter().sum());
    let rate =
        u128::from(changes) * 1_000_000 / took.saturating_sub(folding + waiting).as_micros().max(1);
    println!(
        "history: {tenants} tenants x {} days, {changes} changes written in {} with a snapshot \
         every {SNAPSHOT_COMMANDS} ({rate} changes/s, not counting the {} the bench spent \
         folding bases, which a replica does on another thread, nor {} of the bench's own \
         checkpoints waiting for the writer)",
        history / DAY_MS,
        ms(took),
        ms(folding),
        ms(waiting),
    );
    snapshots.report();
    let mut pick = Rng(0x2545_f491_4f6c_dd1d);
    let mut measure = |when: &str, shape: (&str, u64, u64, u64)| {
        let mut times = Vec::with_capacity(QUERIES);
        for _ in 0..QUERIES {
            let tenant = ids[(pick.next() % tenants) as usize].clone();
            let started = Instant::now();
            let series = query(tenant, shape);
            times.push(started.elapsed());
            assert!(series.buckets.iter().any(|b| !b.quantities.is_empty()), "history found");
        }
        let slow: Vec<usize> =
            (0..).zip(&times).filter(|(_, t)| t.as_millis() >= 5).map(|(i, _)| i).collect();
        times.sort();
        println!(
            "GetUsage {}{when}: p50 {}, p99 {}, max {} over {QUERIES} queries; {} at 5 ms or more{}",
            shape.0,
            ms(percentile(&times, 50)),
            ms(percentile(&times, 99)),
            ms(times[times.len() - 1]),
            slow.len(),
            slow.last().map_or(String::new(), |last| format!(" (the last was query {})", last + 1)),
        );
    };
    measure("", hourly);
    measure("", ("daily, 30 days (30 buckets)", now - span, now, DAY_MS));
    measure("", ("raw, 1 day at 5 min (288 buckets)", now - DAY_MS + 1, now, 300_000));

    // One more snapshot, then the same hourly queries: a checkpoint reads nothing of sled.
    snapshots.take(&rt, &store);
    let disk = block(&rt, store.size_on_disk());
    println!(
        "store: {} on disk (sled's count) and {} of block files, its base {}",
        mib(disk.sled),
        mib(disk.block_files),
        mib(snapshots.base.as_ref().map_or(0, |b| b.len() as u64)),
    );
    measure(" after a snapshot", hourly);
    let restored = UsageStore::open(&UsageLocation::Temporary, FailStop::record()).expect("opens");
    let started = Instant::now();
    let changes = std::mem::take(&mut snapshots.changes);
    let dump = usage::compose(snapshots.base.as_deref(), &changes).expect("composes");
    block(&rt, restored.restore(dump, changes));
    println!("restore from the base and changes (a replica's start): {}", ms(started.elapsed()));
}

/// The snapshots taken while the history is written, and what they cost.
#[derive(Default)]
struct Snapshots {
    /// Each checkpoint's time on the writer.
    checkpoints: Vec<Duration>,
    /// Each wait for the writer before a checkpoint (it takes one of its own).
    waits: Vec<Duration>,
    largest: u64,
    /// Each fold of the changes into a new base (a replica does it on another thread).
    folds: Vec<Duration>,
    base: Option<Vec<u8>>,
    /// The last snapshot's changes since the base.
    changes: Vec<u8>,
}

impl Snapshots {
    /// Takes a snapshot's part of the store as a replica does, the writer done with what was
    /// sent first (so the checkpoint is timed alone).
    fn take(&mut self, rt: &tokio::runtime::Runtime, store: &UsageStore) {
        // Waits for the writer without flushing what is pending (any other message would);
        // the wait is a checkpoint too, so the time after the writer caught up is the bench's.
        let started = Instant::now();
        let wait = block(rt, store.checkpoint(usize::MAX));
        drop(wait);
        self.waits.push(started.elapsed());
        let started = Instant::now();
        let base_len = self.base.as_ref().map_or(0, Vec::len);
        let checkpoint = block(rt, store.checkpoint(base_len / 4));
        self.checkpoints.push(started.elapsed());
        self.largest = self.largest.max(checkpoint.changes.len() as u64);
        if checkpoint.rebase {
            let started = Instant::now();
            let base = usage::compose(self.base.as_deref(), &checkpoint.changes).expect("folds");
            self.folds.push(started.elapsed());
            self.base = Some(base);
            self.changes = usage::no_changes();
        } else {
            self.changes = checkpoint.changes;
        }
    }

    fn report(&self) {
        let summary = |times: &[Duration]| {
            let mut sorted = times.to_vec();
            sorted.sort();
            match sorted.last() {
                Some(max) => format!("p50 {}, max {}", ms(percentile(&sorted, 50)), ms(*max)),
                None => "none".to_owned(),
            }
        };
        println!(
            "snapshots: {}, each a checkpoint on the writer ({}; the largest {} of changes); {} \
             folded the changes into a new base ({})",
            self.checkpoints.len(),
            summary(&self.checkpoints),
            mib(self.largest),
            self.folds.len(),
            summary(&self.folds),
        );
    }
}
