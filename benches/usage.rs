//! The usage store (issue 19): `GetUsage` for one tenant over 30 days at hourly steps, with
//! 1,000 tenants and a month of history.
//!
//! Builds a store on disk (a temporary directory, the production writer thread) from a month
//! of changes: every tenant changes what it holds every `CHANGE_EVERY_MS` of log time (one
//! command each, sent in batches as the state machine sends them). Prints how fast the writer
//! took them, then the time of `QUERIES` queries of a random tenant's last 30 days: hourly
//! (720 buckets), daily and raw (one day at 5-minute steps), each through the writer as the
//! API asks it, cold (sled's cache holds what the month's writes left in it). Then what
//! snapshots cost: the first checkpoint (every change since the empty store, folded into a
//! base off the writer), a snapshot interval later (`SNAPSHOT_COMMANDS` more changes) a
//! checkpoint as the state machine takes it, the time to restore a replica from the base and
//! those changes, and the hourly queries again after all that. Target: hourly ≤ 5 ms.
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

    // Each tenant's changes are spread evenly over every hour, in log-time order.
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let steps = history / CHANGE_EVERY_MS;
    let started = Instant::now();
    let mut batch = Vec::with_capacity(BATCH);
    let mut index = 0;
    let mut write = |steps: std::ops::Range<u64>, rng: &mut Rng| {
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
                if batch.len() == BATCH {
                    store.record(std::mem::take(&mut batch));
                }
            }
        }
        store.record(std::mem::take(&mut batch));
    };
    write(0..steps, &mut rng);
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
    let rate = u128::from(changes) * 1_000_000 / took.as_micros().max(1);
    println!(
        "history: {tenants} tenants x {} days, {changes} changes written in {} ({rate} changes/s)",
        history / DAY_MS,
        ms(took),
    );
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

    // The first snapshot: every change so far, folded into a base.
    let started = Instant::now();
    let first = block(&rt, store.checkpoint(0));
    let taken = started.elapsed();
    let started = Instant::now();
    let base = usage::compose(None, &first.changes).expect("composes");
    println!(
        "store: {} on disk (sled's count); the first checkpoint takes {} of changes in {} (on \
         the writer), composed into a {} base in {} (off it)",
        mib(block(&rt, store.size_on_disk())),
        mib(first.changes.len() as u64),
        ms(taken),
        mib(base.len() as u64),
        ms(started.elapsed()),
    );
    // A snapshot interval later.
    let more = SNAPSHOT_COMMANDS.div_ceil(tenants);
    write(steps..steps + more, &mut rng);
    let started = Instant::now();
    let next = block(&rt, store.checkpoint(base.len() / 4));
    println!(
        "{} changes later: a checkpoint of {} taken in {}{}",
        more * tenants,
        mib(next.changes.len() as u64),
        ms(started.elapsed()),
        if next.rebase { " (folded into a new base)" } else { "" },
    );
    let restored = UsageStore::open(&UsageLocation::Temporary, FailStop::record()).expect("opens");
    let started = Instant::now();
    let dump = usage::compose(Some(&base), &next.changes).expect("composes");
    block(&rt, restored.restore(dump, next.changes));
    println!("restore from the base and changes: {}", ms(started.elapsed()));
    drop(restored);
    measure(" after the checkpoints", hourly);
}
