//! The usage store through its public interface: the series it answers equal a brute-force
//! recomputation from the changes it was given, at every resolution; its contents (hash) do
//! not depend on how records were batched, survive a snapshot's base and changes and a restore,
//! and prune by retention.

use berth::fatal::FailStop;
use berth::scheduler::windows::{DAY_MS, HOUR_MS};
use berth::scheduler::{Item, PoolId, Resources, TenantId, UnixMillis, UsageRetention};
use berth::usage::{
    self, Quantities, Rates, Record, Resolution, UsageError, UsageLocation, UsageQuery, UsageStore,
};
use proptest::prelude::*;

fn store() -> UsageStore {
    UsageStore::open(&UsageLocation::Temporary, FailStop::record()).expect("usage store opens")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
}

const TENANTS: [&str; 3] = ["acme", "beta", "gamma"];
const POOLS: [&str; 2] = ["default", "gpu"];

/// A tenant's rates: up to one entry per (pool, reserved).
fn rates() -> impl Strategy<Value = Rates> {
    proptest::collection::btree_map((0..2usize, any::<bool>()), (0..4_000u64, 0..8_192u64), 0..3)
        .prop_map(|m| {
            m.into_iter()
                .filter(|(_, (c, m))| *c > 0 || *m > 0)
                .map(|((p, r), (c, m))| (PoolId::new(POOLS[p]), r, Resources::new(c, m)))
                .collect()
        })
}

/// Commands at increasing log times, each changing some tenants' rates (or leaving them as
/// they were): sparse (gaps of up to 3 hours, sometimes 2 days), or dense (hundreds of
/// commands seconds apart, often in the same millisecond, so a tenant's change points fill
/// several blocks and a block may fill within one millisecond).
fn history() -> impl Strategy<Value = Vec<Record>> {
    let sparse = prop_oneof![4 => 0..3 * HOUR_MS, 1 => Just(2 * DAY_MS)];
    let dense = prop_oneof![1 => Just(0), 1 => 0..3u64, 1 => 0..20_000u64];
    prop_oneof![commands(sparse.boxed(), 1..60), commands(dense.boxed(), 200..900)]
}

fn commands(
    gap: BoxedStrategy<u64>,
    count: std::ops::Range<usize>,
) -> impl Strategy<Value = Vec<Record>> {
    let changes = proptest::collection::vec((0..3usize, rates()), 1..3);
    proptest::collection::vec((gap, changes), count).prop_map(|steps| {
        let mut at = 10 * DAY_MS + 1_234;
        steps
            .into_iter()
            .enumerate()
            .map(|(i, (gap, changes))| {
                at += gap;
                Record {
                    index: i as u64 + 1,
                    at: UnixMillis(at),
                    retention: UsageRetention::default(),
                    changes: changes
                        .into_iter()
                        .map(|(t, r)| (TenantId::new(TENANTS[t]), r))
                        .collect(),
                }
            })
            .collect()
    })
}

/// What `tenant` used in `[from, to)`, recomputed from the records alone: each record's rates
/// hold until the tenant's next record (or `now`).
fn brute_force(records: &[Record], tenant: &str, from: u64, to: u64, now: u64) -> Quantities {
    let mut points: Vec<(u64, Rates)> = Vec::new();
    for r in records {
        for (t, rates) in &r.changes {
            if t.as_str() == tenant {
                points.push((r.at.0, rates.clone()));
            }
        }
    }
    let mut out = Quantities::new();
    for (i, (at, rates)) in points.iter().enumerate() {
        let end = points.get(i + 1).map_or(now, |p| p.0).min(to).min(now);
        let start = (*at).max(from);
        if start >= end {
            continue;
        }
        for (pool, reserved, held) in rates {
            let (cpu, memory) = if *reserved {
                (Item::ReservedCpu, Item::ReservedMemory)
            } else {
                (Item::Cpu, Item::Memory)
            };
            for (item, per_ms) in [(cpu, held.cpu_millis), (memory, held.memory_mib)] {
                if per_ms > 0 {
                    *out.entry((pool.clone(), item)).or_default() +=
                        u128::from(per_ms) * u128::from(end - start);
                }
            }
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Every bucket of every resolution equals the brute-force sum, to the unit.
    #[test]
    fn series_equal_a_recomputation_from_the_changes(
        records in history(),
        tenant in 0..3usize,
        start_hour in 0..400u64,
        raw_step in 60_000..7_200_000u64,
        raw_start in 0..=100u64,
    ) {
        let rt = runtime();
        let s = store();
        s.record(records.clone());
        let now = records.last().map_or(0, |r| r.at.0) + 5 * HOUR_MS + 17;
        let tenant_id = TenantId::new(TENANTS[tenant]);
        let from_hour = 10 * 24 + start_hour;
        // A raw range starts within the history (its first point to its last), or at its end.
        let (first, last) = (records[0].at.0, records[records.len() - 1].at.0);
        let raw_from = (first + (last - first) * raw_start / 100) | 1;
        let raw_step = raw_step.min(((now - raw_from) / 4).max(1_000));
        for (step, from, resolution) in [
            (HOUR_MS, from_hour * HOUR_MS, Resolution::Hourly),
            (3 * HOUR_MS, from_hour * HOUR_MS, Resolution::Hourly),
            (DAY_MS, from_hour / 24 * DAY_MS, Resolution::Daily),
            (raw_step, raw_from, Resolution::Raw),
        ] {
            let to = (from + 200 * step).min(now + 3 * step);
            if from >= to {
                continue;
            }
            let query = UsageQuery { tenant: tenant_id.clone(), from: UnixMillis(from), to: UnixMillis(to), step_ms: step };
            let retention = UsageRetention::default();
            let series = match rt.block_on(s.query(query, UnixMillis(now), retention).wait()) {
                Ok(series) => series,
                Err(UsageError::Expired { oldest_ms, .. }) => {
                    // Only a range older than the retention is refused.
                    prop_assert!(from < oldest_ms && oldest_ms <= now, "{} {}", from, oldest_ms);
                    continue;
                }
                Err(e) => return Err(TestCaseError::fail(e.to_string())),
            };
            prop_assert_eq!(series.resolution, resolution);
            for bucket in &series.buckets {
                let expected = brute_force(&records, TENANTS[tenant], bucket.from.0, bucket.to.0, now);
                prop_assert_eq!(&bucket.quantities, &expected, "bucket {:?} step {}", bucket.from, step);
            }
        }
    }

    /// Records split into batches differently, or restored half-way from a snapshot's base
    /// and changes, leave the same store behind; and at every checkpoint, rebasing or not, the
    /// base and the changes since it compose to exactly what the store holds.
    #[test]
    fn contents_do_not_depend_on_batching_or_restoring(
        records in history(),
        mut cuts in proptest::collection::vec((0..900usize, 0..3_000usize), 1..6),
    ) {
        let rt = runtime();
        let one = store();
        one.record(records.clone());
        cuts.sort();
        // `two` takes the records one by one, with a checkpoint (a snapshot) at each cut,
        // keeping a base as the state machine does.
        let two = store();
        let (mut base, mut done) = (None::<Vec<u8>>, 0);
        let mut restore_from = (usage::compose(None, &usage::no_changes()).expect("empty"), usage::no_changes(), 0);
        for (cut, rebase_over) in cuts {
            let cut = cut.min(records.len());
            for r in &records[done..cut] {
                two.record(vec![r.clone()]);
            }
            done = cut;
            let checkpoint = rt.block_on(two.checkpoint(rebase_over).wait()).expect("checkpoint");
            let dump = usage::compose(base.as_deref(), &checkpoint.changes).expect("composes");
            let hash = rt.block_on(two.hash().wait()).expect("hashes");
            prop_assert_eq!(usage::dump_hash(&dump).expect("hashes"), hash);
            restore_from = if checkpoint.rebase {
                base = Some(dump.clone());
                (dump, usage::no_changes(), cut)
            } else {
                (dump, checkpoint.changes, cut)
            };
        }
        two.record(records[done..].to_vec());
        // `three` restores from the last checkpoint and replays what came after it.
        let (dump, changes, cut) = restore_from;
        let three = store();
        drop(three.restore(dump, changes));
        three.record(records[cut..].to_vec());
        let hash = rt.block_on(one.hash().wait()).expect("hashes");
        prop_assert_eq!(rt.block_on(two.hash().wait()).expect("hashes"), hash);
        prop_assert_eq!(rt.block_on(three.hash().wait()).expect("hashes"), hash);
        // It kept the changes since the base it restored from.
        let last = rt.block_on(three.checkpoint(usize::MAX).wait()).expect("checkpoint");
        let whole = usage::compose(base.as_deref(), &last.changes).expect("composes");
        prop_assert_eq!(usage::dump_hash(&whole).expect("hashes"), hash);
    }
}

/// With short retention, raw changes and roll-ups older than it are gone, queries that
/// start before it are refused naming the retention, and what is kept still adds up.
#[test]
fn retention_prunes_and_refuses_older_ranges() {
    let rt = runtime();
    let s = store();
    let retention = UsageRetention { raw_ms: HOUR_MS, hourly_ms: DAY_MS, daily_ms: 3 * DAY_MS };
    let acme = TenantId::new("acme");
    let held = [(PoolId::new("default"), false, Resources::new(1_000, 1_024))];
    let records: Vec<Record> = (0..24 * 20)
        .map(|h| Record {
            index: h + 1,
            at: UnixMillis(h * HOUR_MS + 60_000),
            retention,
            // One core and 1 GiB in even hours, two in odd ones; 480 change points, several
            // blocks of them.
            changes: vec![(
                acme.clone(),
                held.iter()
                    .map(|(p, r, x)| (p.clone(), *r, x.checked_mul(1 + h % 2).expect("small")))
                    .collect(),
            )],
        })
        .collect();
    s.record(records.clone());
    let now = UnixMillis(480 * HOUR_MS);
    let ask = |from: u64, step: u64| {
        let query =
            UsageQuery { tenant: acme.clone(), from: UnixMillis(from), to: now, step_ms: step };
        rt.block_on(s.query(query, now, retention).wait())
    };
    // Hourly: the last day is kept; each whole hour used 1.5 cpu-hours on average.
    let hourly = ask(now.0 - DAY_MS, HOUR_MS).expect("within the hourly retention");
    assert_eq!(hourly.buckets.len(), 24);
    for b in &hourly.buckets {
        assert_eq!(b.quantities, brute_force(&records, "acme", b.from.0, b.to.0, now.0));
    }
    match ask(now.0 - 2 * DAY_MS, HOUR_MS) {
        Err(UsageError::Expired { resolution: "hourly", kept_days: 1, .. }) => {}
        other => panic!("an hourly range before the retention: {other:?}"),
    }
    match ask(now.0 - 2 * HOUR_MS, 60_000) {
        Err(UsageError::Expired { resolution: "raw", .. }) => {}
        other => panic!("a raw range before the retention: {other:?}"),
    }
    let daily = ask(now.0 - 3 * DAY_MS, DAY_MS).expect("within the daily retention");
    for b in &daily.buckets {
        assert_eq!(b.quantities, brute_force(&records, "acme", b.from.0, b.to.0, now.0));
    }
    // A store fed the same records with the default retention keeps more: pruning happened.
    let kept_long = store();
    kept_long.record(
        records
            .iter()
            .cloned()
            .map(|r| Record { retention: UsageRetention::default(), ..r })
            .collect(),
    );
    // Everything a store holds is in its changes since the empty store.
    let dump = |s: &UsageStore| {
        let checkpoint = rt.block_on(s.checkpoint(usize::MAX).wait()).expect("checkpoint");
        usage::compose(None, &checkpoint.changes).expect("composes").len()
    };
    let (short, long) = (dump(&s), dump(&kept_long));
    assert!(short * 3 < long, "pruned dump {short} bytes, unpruned {long}");
}

/// Full blocks of change points are kept in files beside sled: pruned by retention, they
/// leave their files (the store's files stay a few, however long the history), and what is
/// kept reads back whole.
#[test]
fn pruned_blocks_leave_their_files() {
    let rt = runtime();
    let retention = UsageRetention { raw_ms: HOUR_MS, hourly_ms: DAY_MS, daily_ms: 3 * DAY_MS };
    let acme = TenantId::new("acme");
    // A change every 40 s for 20 days: 43,200 points, over 300 full blocks.
    let records: Vec<Record> = (0..43_200u64)
        .map(|i| Record {
            index: i + 1,
            at: UnixMillis(i * 40_000 + 60_000),
            retention,
            changes: vec![(
                acme.clone(),
                vec![(PoolId::new("default"), false, Resources::new(1_000 * (1 + i % 3), 1_024))],
            )],
        })
        .collect();
    let pruned = store();
    pruned.record(records.clone());
    let kept = store();
    kept.record(
        records
            .iter()
            .cloned()
            .map(|r| Record { retention: UsageRetention::default(), ..r })
            .collect(),
    );
    let files = |s: &UsageStore| rt.block_on(s.size_on_disk().wait()).expect("size").block_files;
    let (pruned_bytes, kept_bytes) = (files(&pruned), files(&kept));
    // The default retention keeps 7 days of points: about 15,000, in 120 full blocks.
    assert!(kept_bytes > 300_000, "7 days of points kept in {kept_bytes} bytes of files");
    assert!(
        pruned_bytes * 2 < kept_bytes,
        "an hour of points kept in {pruned_bytes} bytes of files; 7 days in {kept_bytes}"
    );
    // The last hour, point by point, from both: the blocks read back from their files.
    let now = UnixMillis(43_200 * 40_000);
    for s in [&pruned, &kept] {
        let query = UsageQuery {
            tenant: acme.clone(),
            from: UnixMillis(now.0 - HOUR_MS + 1),
            to: now,
            step_ms: 60_000,
        };
        let series = rt.block_on(s.query(query, now, retention).wait()).expect("within retention");
        assert_eq!(series.resolution, Resolution::Raw);
        for b in &series.buckets {
            assert_eq!(b.quantities, brute_force(&records, "acme", b.from.0, b.to.0, now.0));
        }
    }
}

/// A tenant gone (holding nothing since before the daily retention) is pruned whole, and its
/// blocks leave the files they share with other tenants' blocks without taking those along.
/// Here pruning first runs again after a quiet day, so the gone tenant's blocks are due twice
/// over: as older than the raw cutoff, and as a tenant gone.
#[test]
fn a_tenant_gone_over_a_quiet_spell_leaves_the_others_blocks() {
    let rt = runtime();
    let retention = UsageRetention { raw_ms: HOUR_MS, hourly_ms: HOUR_MS, daily_ms: HOUR_MS };
    let (acme, beta) = (TenantId::new("acme"), TenantId::new("beta"));
    let held = |i: u64, pools: u64| -> Rates {
        (0..pools)
            .map(|p| {
                (PoolId::new(format!("pool{p}")), false, Resources::new(1_000 * (1 + i % 3), 1_024))
            })
            .collect()
    };
    // Both change every second; acme stops after 84 full blocks (its last block full, so in
    // a file), beta (wider, so its blocks fill files faster) goes on for 45 minutes more,
    // then holds nothing.
    let mut records: Vec<Record> = Vec::new();
    let mut record = |at: u64, changes: Vec<(TenantId, Rates)>| {
        let index = records.len() as u64 + 1;
        records.push(Record { index, at: UnixMillis(at), retention, changes });
    };
    let acme_stops = 84 * 128;
    for i in 0..acme_stops + 2_700 {
        let mut changes = vec![(beta.clone(), held(i + 1, 4))];
        if i < acme_stops {
            changes.push((acme.clone(), held(i, 1)));
        }
        record(i * 1_000 + 1, changes);
    }
    let gone = (acme_stops + 2_700) * 1_000 + 1;
    record(gone, vec![(beta.clone(), vec![])]);
    // A quiet day, then acme changes once: the first pruning since.
    let later = gone + DAY_MS;
    record(later, vec![(acme.clone(), held(1, 1))]);
    let s = store();
    s.record(records.clone());
    // acme's last hour starts in its last full block, from before the quiet day.
    let now = UnixMillis(later + 1_000);
    let from = UnixMillis(now.0 - HOUR_MS + 7);
    let query = UsageQuery { tenant: acme.clone(), from, to: now, step_ms: 60_000 };
    let series = rt.block_on(s.query(query, now, retention).wait()).expect("acme's blocks read");
    for b in &series.buckets {
        assert_eq!(b.quantities, brute_force(&records, "acme", b.from.0, b.to.0, now.0));
    }
    let query = UsageQuery { tenant: beta.clone(), from, to: now, step_ms: 60_000 };
    let series = rt.block_on(s.query(query, now, retention).wait()).expect("beta answers");
    assert!(!series.known, "beta is forgotten");
}

/// Out-of-bounds queries are refused before anything is read.
#[test]
fn hostile_queries_are_refused() {
    let acme = TenantId::new("acme");
    let q = |from: u64, to: u64, step_ms: u64| UsageQuery {
        tenant: acme.clone(),
        from: UnixMillis(from),
        to: UnixMillis(to),
        step_ms,
    };
    for (query, field) in [
        (q(0, HOUR_MS, 0), "step_ms"),
        (q(0, HOUR_MS, 999), "step_ms"),
        (q(HOUR_MS, HOUR_MS, HOUR_MS), "to_ms"),
        (q(HOUR_MS, 0, HOUR_MS), "to_ms"),
        (q(0, u64::MAX, 1_000), "step_ms"),
        (q(0, 10_001 * HOUR_MS, HOUR_MS), "step_ms"),
    ] {
        match query.validate() {
            Err(UsageError::Invalid(f, _)) => assert_eq!(f, field, "{query:?}"),
            other => panic!("{query:?}: {other:?}"),
        }
    }
    assert!(q(0, 10_000 * HOUR_MS, HOUR_MS).validate().is_ok());
}

/// A dump or changes whose keys are out of order or repeated are refused, by the check a
/// snapshot passes before it is accepted and by `compose` (merged as sorted lists, they would
/// leave replicas with different stores); in order, changes replace and remove keys.
#[test]
fn dumps_and_changes_out_of_key_order_are_refused() {
    let dump = |rows: &[(&str, &str)]| {
        let rows: Vec<(Vec<u8>, Vec<u8>)> =
            rows.iter().map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec())).collect();
        berth::codec::encode(&rows).expect("encodes")
    };
    let changes = |rows: &[(&str, Option<&str>)]| {
        let rows: Vec<(Vec<u8>, Option<Vec<u8>>)> =
            rows.iter().map(|(k, v)| (k.as_bytes().to_vec(), v.map(|v| v.into()))).collect();
        berth::codec::encode(&rows).expect("encodes")
    };
    let base = dump(&[("a", "1"), ("c", "3")]);
    assert_eq!(usage::check_dump(&base), Ok(()));
    let later = changes(&[("b", Some("2")), ("c", None), ("d", Some("4"))]);
    assert_eq!(usage::check_changes(&later), Ok(()));
    assert_eq!(
        usage::compose(Some(&base), &later),
        Ok(dump(&[("a", "1"), ("b", "2"), ("d", "4")]))
    );
    for bad in [dump(&[("c", "3"), ("a", "1")]), dump(&[("a", "1"), ("a", "2")])] {
        assert!(usage::check_dump(&bad).is_err());
        assert!(usage::compose(Some(&bad), &usage::no_changes()).is_err());
    }
    for bad in
        [changes(&[("d", Some("4")), ("c", None)]), changes(&[("c", Some("x")), ("c", None)])]
    {
        assert!(usage::check_changes(&bad).is_err());
        assert!(usage::compose(Some(&base), &bad).is_err());
    }
}
