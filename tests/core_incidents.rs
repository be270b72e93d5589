//! One test per real incident from DESIGN §1, driven through the core's public interface
//! (`Scheduler::apply` and `query`). Each asserts the invariants after every command.

use berth::scheduler::money::allocate;
use berth::scheduler::*;
use rust_decimal::Decimal;
use std::str::FromStr;

use berth::scheduler::testing::T0;

mod core_harness;
use core_harness::Log;

impl Log {
    fn worker(&mut self, id: &str, cpu_millis: u64, memory_mib: u64) {
        self.worker_labelled(id, cpu_millis, memory_mib, &[]);
    }

    fn worker_labelled(&mut self, id: &str, cpu: u64, mem: u64, pairs: &[(&str, &str)]) {
        self.ok(Command::RegisterWorker {
            worker: id.into(),
            pool: None,
            capacity: Resources::new(cpu, mem),
            labels: labels(pairs),
        });
    }

    fn tenant(&mut self, id: &str) {
        self.ok(Command::CreateTenant { tenant: id.into(), parent: None, weight: 1 });
    }

    fn place(&mut self, tenant: &str, spec: PlaceSpec) -> Result<Placement, Rejection> {
        let applied = self.apply(Command::Place { tenant: tenant.into(), spec, fence: None });
        applied.result.map(|r| match r {
            Response::Placed(p) => p,
            other => panic!("unexpected response {other:?}"),
        })
    }

    fn allocated(&self, worker: &str) -> Resources {
        self.s.state().workers[&WorkerId::from(worker)].allocated
    }

    fn usage(&self, tenant: &str) -> Usage {
        self.s.state().tenants[&TenantId::from(tenant)].usage.total
    }
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn spec(id: &str, cpu_millis: u64, memory_mib: u64) -> PlaceSpec {
    PlaceSpec {
        placement: id.into(),
        count: 1,
        resources: Resources::new(cpu_millis, memory_mib),
        ..PlaceSpec::default()
    }
}

fn term(k: &str, v: &str) -> LabelTerm {
    LabelTerm::new(k, v)
}

fn d(s: &str) -> Decimal {
    Decimal::from_str(s).expect("test decimal")
}

/// 64 cores filled by 640 × 0.1 core and by mixed sizes land exactly on 64 000 millicores and
/// never one millicore over (the float incident: 64.00000000001 of 64 allocated).
#[test]
fn no_overcommit_float_precision() {
    // What floats do to the same arithmetic, for the record.
    let float_sum = (0..640).map(|_| 0.1_f64).sum::<f64>();
    assert_ne!(float_sum, 64.0, "f64 accumulation drifts; integers must not");

    let mut log = Log::new();
    log.tenant("acme");
    log.worker("w1", 64_000, 1_000_000);
    for i in 0..640 {
        log.place("acme", spec(&format!("tenth-{i}"), 100, 1)).expect("fits exactly");
    }
    assert_eq!(log.allocated("w1").cpu_millis, 64_000);
    let refused = log.place("acme", spec("one-more", 1, 1)).expect_err("worker is full");
    assert_eq!(refused.reason(), "NO_CAPACITY");
    assert_eq!(log.allocated("w1").cpu_millis, 64_000);

    // 7 × 8.1 cores, then 0.1-core slices for the rest; an 8.1-core request never squeezes in.
    log.worker("w2", 64_000, 1_000_000);
    for i in 0..7 {
        log.place("acme", spec(&format!("big-{i}"), 8_100, 1)).expect("fits");
    }
    assert_eq!(log.allocated("w2").cpu_millis, 56_700);
    assert!(log.place("acme", spec("big-7", 8_100, 1)).is_err());
    for i in 0..73 {
        log.place("acme", spec(&format!("slice-{i}"), 100, 1)).expect("fits");
    }
    assert_eq!(log.allocated("w2").cpu_millis, 64_000);
    assert!(log.place("acme", spec("slice-73", 100, 1)).is_err());
    assert_eq!(log.usage("acme").cpu_millis, 128_000);
}

/// A placement group never exceeds its max instances, counting multi-instance placements, and
/// a spread group never puts two instances on one worker.
#[test]
fn placement_group_capacity_limit() {
    let mut log = Log::new();
    log.tenant("acme");
    for w in 0..20 {
        log.worker(&format!("w{w}"), 4_000, 8_192);
    }
    log.ok(Command::CreatePlacementGroup {
        tenant: "acme".into(),
        group: "g".into(),
        max_instances: 10,
        strategy: GroupStrategy::Spread,
    });
    let in_group =
        |id: &str, count: u32| PlaceSpec { count, group: Some("g".into()), ..spec(id, 100, 64) };
    log.place("acme", in_group("a", 9)).expect("9 of 10");
    let full = log.place("acme", in_group("b", 2)).expect_err("11 > 10");
    assert!(matches!(full, Rejection::GroupFull { current: 9, requested: 2, .. }), "{full:?}");
    assert_eq!(log.usage("acme").instances, 9, "a refused placement changes nothing");
    log.place("acme", in_group("c", 1)).expect("10 of 10");
    assert!(log.place("acme", in_group("d", 1)).is_err());
    log.ok(Command::Release { tenant: "acme".into(), placement: "c".into(), fence: None });
    let again = log.place("acme", in_group("d", 1)).expect("room again");

    let placed = log.s.state().placements.values().filter(|p| p.spec.group.is_some());
    let mut workers: Vec<_> = placed.flat_map(|p| p.instances.clone()).collect();
    let n = workers.len();
    workers.sort();
    workers.dedup();
    assert_eq!(workers.len(), n, "spread group: every instance on its own worker");
    assert_eq!(again.instances.len(), 1);

    // A spread group larger than the pool runs out of distinct workers, and says so.
    log.ok(Command::CreatePlacementGroup {
        tenant: "acme".into(),
        group: "wide".into(),
        max_instances: 100,
        strategy: GroupStrategy::Spread,
    });
    let wide = PlaceSpec { count: 21, group: Some("wide".into()), ..spec("wide", 100, 64) };
    match log.place("acme", wide).expect_err("only 20 workers") {
        Rejection::NoCapacity { placed_before_failure, filtered, .. } => {
            assert_eq!(placed_before_failure, 20);
            assert_eq!(filtered.group_spread, 20);
        }
        other => panic!("unexpected {other:?}"),
    }
}

/// Required anti-affinity holds within one multi-instance placement, across placements applied
/// back to back (as concurrent requests are, in one log), and in both directions.
#[test]
fn anti_affinity_atomic() {
    let mut log = Log::new();
    log.tenant("acme");
    for w in ["w1", "w2", "w3"] {
        log.worker(w, 8_000, 16_384);
    }
    let web = |id: &str, count: u32| PlaceSpec {
        count,
        labels: labels(&[("app", "web")]),
        anti_affinity: vec![term("app", "web")],
        ..spec(id, 100, 64)
    };
    // Four instances cannot spread over three workers: all or nothing.
    let refused = log.place("acme", web("four", 4)).expect_err("only 3 workers");
    assert_eq!(refused.reason(), "NO_CAPACITY");
    assert_eq!(log.usage("acme").instances, 0);
    for w in ["w1", "w2", "w3"] {
        assert_eq!(log.allocated(w), Resources::ZERO, "rollback left nothing on {w}");
    }

    // Ten racing single placements: exactly one per worker wins.
    let outcomes: Vec<_> = (0..10).map(|i| log.place("acme", web(&format!("r{i}"), 1))).collect();
    let winners: Vec<_> = outcomes.iter().filter_map(|o| o.as_ref().ok()).collect();
    assert_eq!(winners.len(), 3);
    let mut hosts: Vec<_> = winners.iter().map(|p| p.instances[0].clone()).collect();
    hosts.sort();
    hosts.dedup();
    assert_eq!(hosts.len(), 3, "at most one web per worker");

    // Symmetry: a workload without rules but labelled app=web is repelled too.
    let plain = PlaceSpec { labels: labels(&[("app", "web")]), ..spec("plain", 100, 64) };
    let refused = log.place("acme", plain).expect_err("every worker repels app=web");
    match refused {
        Rejection::NoCapacity { filtered, .. } => assert_eq!(filtered.anti_affinity, 3),
        other => panic!("unexpected {other:?}"),
    }
}

/// Required affinity and required anti-affinity are both honoured: the only worker that has
/// the wanted neighbour and lacks the unwanted one is chosen, and when it is full the refusal
/// explains each worker rather than falling back to a rule-breaking one.
#[test]
fn affinity_before_anti_affinity() {
    let mut log = Log::new();
    log.tenant("acme");
    // w1 is large enough that only its rules, not its size, can exclude it.
    log.worker("w1", 2_000, 4_096);
    log.worker("w2", 1_000, 4_096);
    log.worker("w3", 1_000, 4_096);
    let pin = |id: &str, app: &str, worker: &str| PlaceSpec {
        labels: labels(&[("app", app)]),
        worker_requires: vec![LabelRequirement {
            key: "name".into(),
            op: LabelOp::In,
            values: vec![worker.into()],
        }],
        ..spec(id, 100, 64)
    };
    for (w, _) in [("w1", ()), ("w2", ()), ("w3", ())] {
        log.ok(Command::UpdateWorker {
            worker: w.into(),
            capacity: None,
            labels: Some(labels(&[("name", w)])),
        });
    }
    log.place("acme", pin("db1", "db", "w1")).expect("pinned");
    log.place("acme", pin("web1", "web", "w1")).expect("pinned");
    log.place("acme", pin("db2", "db", "w2")).expect("pinned");

    let cache = |id: &str, cpu: u64| PlaceSpec {
        affinity: vec![term("app", "db")],
        anti_affinity: vec![term("app", "web")],
        ..spec(id, cpu, 64)
    };
    let placed = log.place("acme", cache("cache", 100)).expect("w2 qualifies");
    assert_eq!(placed.instances, vec![WorkerId::from("w2")]);

    match log.place("acme", cache("too-big", 900)).expect_err("w2 lacks room") {
        Rejection::NoCapacity { filtered, .. } => {
            assert_eq!(filtered.workers_in_pool, 3);
            assert_eq!(filtered.insufficient_cpu, 1, "w2");
            assert_eq!(filtered.anti_affinity, 1, "w1");
            assert_eq!(filtered.affinity, 1, "w3");
        }
        other => panic!("unexpected {other:?}"),
    }

    // Preferred rules only rank: an unsatisfiable preference never refuses a placement.
    let hopeful = PlaceSpec {
        affinity_preferred: vec![term("app", "nowhere")],
        worker_prefers: vec![LabelRequirement {
            key: "gpu".into(),
            op: LabelOp::Exists,
            values: vec![],
        }],
        ..spec("hopeful", 100, 64)
    };
    log.place("acme", hopeful).expect("preferences never refuse");
    // And a satisfiable preference wins over bin-packing order.
    let near_db = PlaceSpec { affinity_preferred: vec![term("app", "db")], ..spec("near", 50, 8) };
    let near = log.place("acme", near_db).expect("placed");
    assert!(near.instances[0] == "w1".into() || near.instances[0] == "w2".into());
}

/// A drained worker receives no new placement or reservation, keeps what it runs, and takes
/// work again once undrained.
#[test]
fn drain_flag_respected() {
    let mut log = Log::new();
    log.tenant("acme");
    log.worker("w1", 10_000, 10_000);
    log.worker("w2", 10_000, 10_000);
    log.place("acme", spec("before", 100, 10)).expect("placed");
    let host = log.s.state().placements.values().next().expect("one").instances[0].clone();
    let other = if host == "w1".into() { "w2" } else { "w1" };
    log.ok(Command::SetWorkerSchedulable { worker: host.clone(), schedulable: false });

    for i in 0..20 {
        let p = log.place("acme", spec(&format!("p{i}"), 100, 10)).expect("room on the other");
        assert_eq!(p.instances[0], other.into());
    }
    let reserved = log.apply(Command::Reserve {
        tenant: "acme".into(),
        spec: spec("res", 100, 10),
        ttl_ms: 60_000,
        fence: None,
    });
    match reserved.result {
        Ok(Response::Reserved(p)) => assert_eq!(p.instances[0], other.into()),
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(log.allocated(host.as_str()), Resources::new(100, 10), "existing work stays");

    // Fill the schedulable worker; the drained one still refuses, and the refusal says why.
    log.place("acme", spec("fill", 10_000 - 2_100, 10)).expect("fills");
    match log.place("acme", spec("nope", 100, 10)).expect_err("drained + full") {
        Rejection::NoCapacity { filtered, .. } => {
            assert_eq!(filtered.draining, 1);
            assert_eq!(filtered.insufficient_cpu, 1);
        }
        other => panic!("unexpected {other:?}"),
    }
    log.ok(Command::SetWorkerSchedulable { worker: host.clone(), schedulable: true });
    let p = log.place("acme", spec("after", 100, 10)).expect("undrained");
    assert_eq!(p.instances[0], host);
}

/// An expired reservation releases exactly its capacity and quota, at its deadline in log
/// time, whether or not anyone touches it (the 188-leaked-cores incident).
#[test]
fn reservation_cleanup_releases_resources() {
    let mut log = Log::new();
    log.tenant("acme");
    log.ok(Command::SetQuota {
        tenant: "acme".into(),
        quota: Quota {
            total: Limits { cpu_millis: Some(188_000), ..Limits::default() },
            ..Quota::default()
        },
    });
    for w in 0..4 {
        log.worker(&format!("w{w}"), 64_000, 262_144);
    }
    let reserve = |id: &str, ttl_ms: u64| Command::Reserve {
        tenant: "acme".into(),
        spec: PlaceSpec { count: 4, ..spec(id, 47_000, 1_024) },
        ttl_ms,
        fence: None,
    };
    log.ok(reserve("batch", 1_000));
    assert_eq!(log.usage("acme").cpu_millis, 188_000);
    assert_eq!(log.s.next_deadline(), Some(UnixMillis(T0 + 1_000)));
    let quota_full = log.err(reserve("second", 1_000));
    assert_eq!(quota_full.reason(), "QUOTA_EXCEEDED");

    log.advance(999);
    assert!(log.tick().expired.is_empty(), "not yet");
    assert_eq!(log.usage("acme").cpu_millis, 188_000);

    log.advance(1);
    let tick = log.tick();
    assert_eq!(
        tick.expired,
        vec![Expired::Reservation { tenant: "acme".into(), reservation: "batch".into() }]
    );
    assert!(log.usage("acme").is_zero());
    for w in 0..4 {
        assert_eq!(log.allocated(&format!("w{w}")), Resources::ZERO);
    }
    // Only the invoice's: the month acme metered closes when the next one has ended.
    let month = berth::scheduler::windows::month_of(UnixMillis(log.now));
    assert_eq!(log.s.next_deadline(), Some(berth::scheduler::windows::month_start(month + 2)));
    let gone = log.err(Command::ConfirmReservation {
        tenant: "acme".into(),
        reservation: "batch".into(),
        fence: None,
    });
    assert_eq!(gone.reason(), "PLACEMENT_NOT_FOUND");

    // Confirmed in time, a reservation becomes a placement and outlives its TTL.
    log.ok(reserve("kept", 1_000));
    let confirmed = log.ok(Command::ConfirmReservation {
        tenant: "acme".into(),
        reservation: "kept".into(),
        fence: None,
    });
    assert!(matches!(confirmed, Response::Confirmed(ref p) if !p.is_reservation()));
    log.advance(10_000);
    assert!(log.tick().expired.is_empty());
    assert_eq!(log.usage("acme").cpu_millis, 188_000);

    // Cancel releases immediately; a placement is not a reservation.
    let not_res = log.err(Command::CancelReservation {
        tenant: "acme".into(),
        reservation: "kept".into(),
        fence: None,
    });
    assert_eq!(not_res.reason(), "NOT_A_RESERVATION");
    log.ok(Command::Release { tenant: "acme".into(), placement: "kept".into(), fence: None });
    log.ok(reserve("cancelled", 60_000));
    log.ok(Command::CancelReservation {
        tenant: "acme".into(),
        reservation: "cancelled".into(),
        fence: None,
    });
    assert!(log.usage("acme").is_zero());

    // Expiry needs no Tick: any entry whose time passes the deadline releases it.
    log.ok(reserve("lazy", 500));
    log.advance(500);
    let applied =
        log.apply(Command::CreateTenant { tenant: "other".into(), parent: None, weight: 1 });
    assert_eq!(applied.expired.len(), 1);
    assert!(log.usage("acme").is_zero());
}

/// Empty, blank and malformed tenant ids are refused with a precise reason and create nothing.
#[test]
fn tenant_id_required() {
    let mut log = Log::new();
    let cases = [
        ("", "TENANT_ID_REQUIRED"),
        ("   ", "TENANT_ID_REQUIRED"),
        ("Acme", "INVALID_TENANT_ID"),
        ("acme corp", "INVALID_TENANT_ID"),
        ("acme_corp", "INVALID_TENANT_ID"),
        ("-acme", "INVALID_TENANT_ID"),
        ("acme-", "INVALID_TENANT_ID"),
        ("ácme", "INVALID_TENANT_ID"),
        (&"a".repeat(64), "INVALID_TENANT_ID"),
    ];
    for (id, reason) in cases {
        let refused = log.err(Command::CreateTenant { tenant: id.into(), parent: None, weight: 1 });
        assert_eq!(refused.reason(), reason, "tenant id {id:?}");
    }
    assert!(log.s.state().tenants.is_empty());
    log.tenant(&"a".repeat(63));
    log.tenant("a");
    log.tenant("acme-2");
    assert_eq!(log.s.state().tenants.len(), 3);

    // Every tenant-scoped command checks the id the same way.
    log.worker("w1", 1_000, 1_000);
    let refused = log.place("", spec("x", 1, 1)).expect_err("no tenant");
    assert_eq!(refused.reason(), "TENANT_ID_REQUIRED");
    let refused = log.err(Command::AcquireLease {
        tenant: "ACME".into(),
        lease: "l".into(),
        holder: "h".into(),
        ttl_ms: 1_000,
    });
    assert_eq!(refused.reason(), "INVALID_TENANT_ID");
    assert!(log.s.state().placements.is_empty() && log.s.state().leases.is_empty());
}

/// With 9 of 10 instances used, many Place commands committed together admit exactly one:
/// check and increment are one step. Refusals carry dimension, limit, used and requested.
#[test]
fn quota_enforcement_atomic() {
    let mut log = Log::new();
    log.tenant("acme");
    log.worker("w1", 1_000_000, 1_000_000);
    log.ok(Command::SetQuota {
        tenant: "acme".into(),
        quota: Quota {
            total: Limits { instances: Some(10), cpu_millis: Some(50_000), ..Limits::default() },
            ..Quota::default()
        },
    });
    log.place("acme", PlaceSpec { count: 9, ..spec("nine", 100, 1) }).expect("9 of 10");
    let outcomes: Vec<_> =
        (0..50).map(|i| log.place("acme", spec(&format!("c{i}"), 100, 1))).collect();
    assert_eq!(outcomes.iter().filter(|o| o.is_ok()).count(), 1);
    assert_eq!(log.usage("acme").instances, 10);
    let refusal = outcomes.iter().find_map(|o| o.as_ref().err()).expect("some refused");
    assert_eq!(refusal.reason(), "QUOTA_EXCEEDED");
    let meta = refusal.metadata();
    assert_eq!(meta["dimension"], "instances");
    assert_eq!(meta["limit"], "10");
    assert_eq!(meta["used"], "10");
    assert_eq!(meta["requested"], "1");

    // cpu is checked in the same step, in integer millicores.
    log.ok(Command::Release { tenant: "acme".into(), placement: "nine".into(), fence: None });
    let big = log.place("acme", spec("big", 49_901, 1)).expect_err("100 + 49 901 > 50 000");
    assert!(matches!(
        big,
        Rejection::QuotaExceeded {
            dimension: Dimension::CpuMillis,
            limit: 50_000,
            used: 100,
            requested: 49_901,
            ..
        }
    ));
    log.place("acme", spec("exact", 49_900, 1)).expect("exactly at the limit");

    // A quota may not be set below what is already used.
    let lowered = log.err(Command::SetQuota {
        tenant: "acme".into(),
        quota: Quota {
            total: Limits { instances: Some(1), ..Limits::default() },
            ..Quota::default()
        },
    });
    assert_eq!(lowered.reason(), "INVALID_ARGUMENT");

    // A parent's limit caps the sum of its children, checked up the chain in the same step.
    log.tenant("org");
    log.ok(Command::SetQuota {
        tenant: "org".into(),
        quota: Quota {
            total: Limits { instances: Some(3), ..Limits::default() },
            ..Quota::default()
        },
    });
    for child in ["team-a", "team-b"] {
        log.ok(Command::CreateTenant {
            tenant: child.into(),
            parent: Some("org".into()),
            weight: 1,
        });
    }
    log.place("team-a", PlaceSpec { count: 2, ..spec("x", 100, 1) }).expect("2 of 3");
    log.place("team-b", spec("x", 100, 1)).expect("3 of 3");
    let capped = log.place("team-b", spec("y", 100, 1)).expect_err("org is full");
    assert!(
        matches!(capped, Rejection::QuotaExceeded { ref limited_by, .. } if limited_by.as_str() == "org")
    );
    assert_eq!(log.usage("org").instances, 3);
}

/// Two tenants using the same workload id, lease name, group name and request id never see or
/// touch each other's objects, and affinity rules never look across tenants.
#[test]
fn cache_isolation_by_tenant() {
    let mut log = Log::new();
    log.tenant("alpha");
    log.tenant("beta");
    log.worker("w1", 10_000, 10_000);
    log.worker("w2", 10_000, 10_000);
    let web = PlaceSpec { labels: labels(&[("app", "web")]), ..spec("web", 1_000, 100) };
    let a = log.place("alpha", web.clone()).expect("alpha's web");
    let b = log
        .place("beta", PlaceSpec { resources: Resources::new(2_000, 200), ..web.clone() })
        .expect("beta's web: same id, other tenant");
    assert_eq!(a.spec.resources.cpu_millis, 1_000);
    assert_eq!(b.spec.resources.cpu_millis, 2_000);
    let seen = |log: &Log, t: &str| match log.s.query(&Query::Placement(t.into(), "web".into())) {
        Answer::Placement(Some(p)) => p,
        other => panic!("unexpected {other:?}"),
    };
    assert_eq!(seen(&log, "alpha").tenant.as_str(), "alpha");
    assert_eq!(seen(&log, "beta").spec.resources.cpu_millis, 2_000);

    // Releasing beta's "web" leaves alpha's alone.
    log.ok(Command::Release { tenant: "beta".into(), placement: "web".into(), fence: None });
    assert_eq!(seen(&log, "alpha").spec.resources.cpu_millis, 1_000);
    assert_eq!(
        log.s.query(&Query::Placement("beta".into(), "web".into())),
        Answer::Placement(None)
    );
    let listed = log.s.query(&Query::Placements { tenant: "beta".into(), after: None, limit: 100 });
    assert_eq!(listed, Answer::Placements(vec![]), "beta lists only its own");

    // Affinity only sees the caller's own workloads: beta cannot find alpha's web.
    let follower = PlaceSpec { affinity: vec![term("app", "web")], ..spec("follower", 100, 10) };
    assert_eq!(log.place("beta", follower).expect_err("no beta web").reason(), "NO_CAPACITY");

    // The same request id from two tenants is two requests, not one replayed.
    let same_rid = |tenant: &str, index: u64| Entry {
        index: LogIndex(index),
        proposed_at: UnixMillis(T0),
        request_id: Some("shared-rid".into()),
        command: Command::AcquireLease {
            tenant: tenant.into(),
            lease: "leader".into(),
            holder: format!("{tenant}-1"),
            ttl_ms: 10_000,
        },
        token: None,
    };
    let first = log.s.apply(same_rid("alpha", 1_000));
    let second = log.s.apply(same_rid("beta", 1_001));
    assert!(!second.replayed, "a request id is scoped by tenant");
    match (first.result, second.result) {
        (Ok(Response::LeaseGranted(la)), Ok(Response::LeaseGranted(lb))) => {
            assert_eq!(la.holder, "alpha-1");
            assert_eq!(lb.holder, "beta-1");
            assert_ne!(la.token, lb.token);
        }
        other => panic!("unexpected {other:?}"),
    }
}

/// Deleting a tenant releases, in one command, every placement, reservation, lease, group and
/// token it owns; capacity returns to the workers and usage leaves its parent.
#[test]
fn tenant_deletion_cascades() {
    let mut log = Log::new();
    log.tenant("org");
    log.ok(Command::CreateTenant { tenant: "team".into(), parent: Some("org".into()), weight: 2 });
    log.tenant("bystander");
    log.worker("w1", 10_000, 10_000);
    log.worker("w2", 10_000, 10_000);
    log.ok(Command::CreatePlacementGroup {
        tenant: "team".into(),
        group: "g".into(),
        max_instances: 5,
        strategy: GroupStrategy::Pack,
    });
    log.place("team", PlaceSpec { count: 3, group: Some("g".into()), ..spec("a", 1_000, 100) })
        .expect("placed");
    log.place("team", spec("b", 500, 50)).expect("placed");
    log.ok(Command::Reserve {
        tenant: "team".into(),
        spec: spec("r", 700, 70),
        ttl_ms: 60_000,
        fence: None,
    });
    log.ok(Command::AcquireLease {
        tenant: "team".into(),
        lease: "l".into(),
        holder: "me".into(),
        ttl_ms: 60_000,
    });
    log.ok(Command::AddToken {
        tenant: "team".into(),
        token: "ci".into(),
        hash: TokenHash([7; 32]),
        ttl_ms: 60_000,
    });
    log.place("bystander", spec("b", 300, 30)).expect("placed");
    assert_eq!(log.usage("org").cpu_millis, 4_200);

    let refused = log.err(Command::DeleteTenant { tenant: "org".into() });
    assert_eq!(refused.reason(), "TENANT_HAS_CHILDREN");

    let deleted = log.ok(Command::DeleteTenant { tenant: "team".into() });
    let Response::TenantDeleted(counts) = deleted else { panic!("unexpected {deleted:?}") };
    assert_eq!(counts.placements, 2);
    assert_eq!(counts.reservations, 1);
    assert_eq!(counts.instances, 5);
    assert_eq!(counts.leases, 1);
    assert_eq!(counts.groups, 1);
    assert_eq!(counts.tokens, 1);
    assert_eq!(counts.resources, Resources::new(4_200, 420));

    let state = log.s.state();
    let total: u64 = state.workers.values().map(|w| w.allocated.cpu_millis).sum();
    assert_eq!(total, 300, "only the bystander's placement remains");
    assert!(log.usage("org").is_zero());
    assert!(state.tenants[&TenantId::from("org")].children.is_empty());
    // No deadline outlives its tenant (the invariant check after every entry compares the
    // deadlines with a rebuild from the state): what is left is the invoices' month end.
    let month = berth::scheduler::windows::month_of(UnixMillis(log.now));
    let invoices = Some(berth::scheduler::windows::month_start(month + 2));
    assert_eq!(log.s.next_deadline(), invoices, "only the month's invoices");
    assert_eq!(log.s.next_token_purge(), None, "nor a token's purge");
    assert_eq!(log.s.query(&Query::TokenOwner(TokenHash([7; 32]))), Answer::TokenOwner(None));
    assert_eq!(log.usage("bystander").cpu_millis, 300);

    // Nothing of the old tenant leaks into a new one with the same id: not its objects, and
    // not its answers to request ids.
    let old_request = Entry {
        index: LogIndex(900),
        proposed_at: UnixMillis(log.now),
        request_id: Some("team-place".into()),
        command: Command::Place { tenant: "team".into(), spec: spec("z", 100, 10), fence: None },
        token: None,
    };
    log.s.apply(Entry {
        index: LogIndex(899),
        request_id: Some("team-create".into()),
        command: Command::CreateTenant { tenant: "team".into(), parent: None, weight: 1 },
        ..old_request.clone()
    });
    assert!(log.s.apply(old_request.clone()).result.is_ok());
    log.s.apply(Entry {
        index: LogIndex(901),
        request_id: Some("team-delete".into()),
        command: Command::DeleteTenant { tenant: "team".into() },
        ..old_request.clone()
    });
    log.index = 901;
    log.tenant("team");
    let listed = log.s.query(&Query::Placements { tenant: "team".into(), after: None, limit: 10 });
    assert_eq!(listed, Answer::Placements(vec![]));
    let fresh = log.s.apply(Entry { index: LogIndex(1_000), ..old_request });
    assert!(!fresh.replayed, "a recreated tenant does not inherit request ids");
    // With its only child gone, the parent can be deleted too.
    log.ok(Command::DeleteTenant { tenant: "org".into() });
}

/// Shared costs split by each tenant's own usage sum exactly to the total, to the cent, with no
/// float anywhere ($10,000 at 30/30/40, at 1/1/1, and by live cpu usage).
#[test]
fn billing_isolation_precision() {
    let parts = allocate(d("10000.00"), &[d("30"), d("30"), d("40")]).expect("splits");
    assert_eq!(parts, vec![d("3000.00"), d("3000.00"), d("4000.00")]);
    let parts = allocate(d("10000.00"), &[d("1"), d("1"), d("1")]).expect("splits");
    assert_eq!(parts.iter().sum::<Decimal>(), d("10000.00"));
    assert_eq!(parts, vec![d("3333.34"), d("3333.33"), d("3333.33")]);

    // Weights taken from each tenant's own usage, read through its own scope.
    let mut log = Log::new();
    let tenants = ["alpha", "beta", "gamma"];
    for t in tenants {
        log.tenant(t);
    }
    log.worker("w1", 100_000, 100_000);
    for (i, t) in tenants.iter().enumerate() {
        log.place(t, spec("job", 1_000 * (i as u64 + 1) + 333, 10)).expect("placed");
    }
    let weights: Vec<Decimal> = tenants
        .iter()
        .map(|t| match log.s.query(&Query::Tenant((*t).into())) {
            Answer::Tenant(Some(tenant)) => Decimal::from(tenant.usage.total.cpu_millis),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(weights, vec![d("1333"), d("2333"), d("3333")]);
    let bill = allocate(d("9999.99"), &weights).expect("splits");
    assert_eq!(bill.iter().sum::<Decimal>(), d("9999.99"));

    // Exhaustively over awkward totals and weights: never a cent lost or invented.
    for cents in [1i64, 2, 99, 100, 101, 999_999, 1_000_000] {
        for weights in [vec![1, 1, 1], vec![1, 2, 3, 4], vec![7; 7], vec![1, 1_000_000], vec![3]] {
            let total = Decimal::new(cents, 2);
            let w: Vec<Decimal> = weights.iter().map(|n| Decimal::from(*n)).collect();
            let parts = allocate(total, &w).expect("splits");
            assert_eq!(parts.iter().sum::<Decimal>(), total, "{total} by {weights:?}");
            assert!(parts.iter().all(|p| p.scale() == 2));
        }
    }
}

/// At most one holder at any log time; tokens strictly increase; a stale holder's fenced
/// write, keep-alive and release are refused after its lease expired and was re-granted; a new
/// leader never expires a lease early.
#[test]
fn lease_mutual_exclusion_and_fencing() {
    let mut log = Log::new();
    log.tenant("acme");
    log.worker("w1", 10_000, 10_000);
    let acquire = |holder: &str| Command::AcquireLease {
        tenant: "acme".into(),
        lease: "leader".into(),
        holder: holder.into(),
        ttl_ms: 10_000,
    };
    let Response::LeaseGranted(first) = log.ok(acquire("c1")) else { panic!("not granted") };
    assert_eq!(first.token, LogIndex(log.index), "token is the grant's log index");
    let busy = log.err(acquire("c2"));
    assert!(
        matches!(busy, Rejection::LeaseHeld { ref holder, token, .. } if holder == "c1" && token == first.token)
    );

    let fence = |token: LogIndex| Some(Fence { lease: "leader".into(), token });
    let fenced = |id: &str, token| Command::Place {
        tenant: "acme".into(),
        spec: spec(id, 100, 10),
        fence: fence(token),
    };
    log.ok(fenced("by-c1", first.token));

    // c1 is partitioned away and stops renewing; the lease expires in log time.
    log.advance(9_999);
    assert!(log.tick().expired.is_empty());
    log.advance(1);
    assert_eq!(log.tick().expired.len(), 1);
    let Response::LeaseGranted(second) = log.ok(acquire("c2")) else { panic!("not granted") };
    assert!(second.token > first.token, "fencing tokens strictly increase");

    // c1 comes back: every use of its old token is refused.
    let stale = log.err(fenced("late-c1", first.token));
    assert!(
        matches!(stale, Rejection::StaleFencingToken { current: Some(t), .. } if t == second.token)
    );
    assert_eq!(stale.reason(), "STALE_FENCING_TOKEN");
    let stale_release = log.err(Command::Release {
        tenant: "acme".into(),
        placement: "by-c1".into(),
        fence: fence(first.token),
    });
    assert_eq!(stale_release.reason(), "STALE_FENCING_TOKEN");
    let keepalive =
        |token| Command::KeepAliveLease { tenant: "acme".into(), lease: "leader".into(), token };
    assert_eq!(log.err(keepalive(first.token)).reason(), "STALE_FENCING_TOKEN");
    assert!(
        log.s.query(&Query::Placement("acme".into(), "late-c1".into())) == Answer::Placement(None)
    );
    log.ok(fenced("by-c2", second.token));

    // Keep-alive extends from now; a leader change grants at least the grace period.
    log.advance(8_000);
    let Response::LeaseKeptAlive(kept) = log.ok(keepalive(second.token)) else { panic!() };
    assert_eq!(kept.expires_at, UnixMillis(log.now + 10_000));
    log.advance(9_000);
    let grace = log.s.state().config.lease_grace_ms;
    let changed = log.ok(Command::LeaderChanged);
    assert_eq!(changed, Response::LeaderChanged { leases_extended: 1 });
    let lease = match log.s.query(&Query::Lease("acme".into(), "leader".into())) {
        Answer::Lease(Some(l)) => l,
        other => panic!("unexpected {other:?}"),
    };
    assert_eq!(lease.expires_at, UnixMillis(log.now + grace));

    // Release by the holder frees it; the released token is stale from then on.
    log.ok(Command::ReleaseLease {
        tenant: "acme".into(),
        lease: "leader".into(),
        token: second.token,
    });
    assert_eq!(log.err(fenced("after", second.token)).reason(), "STALE_FENCING_TOKEN");
    let Response::LeaseGranted(third) = log.ok(acquire("c3")) else { panic!() };
    assert!(third.token > second.token);
}

/// Time comes only from entries and never runs backwards, even if a new leader's clock lags.
#[test]
fn log_time_never_runs_backwards() {
    let mut log = Log::new();
    log.tenant("acme");
    log.advance(5_000);
    log.tick();
    assert_eq!(log.s.now(), UnixMillis(T0 + 5_000));
    log.now = T0;
    let applied = log.tick();
    assert_eq!(log.s.now(), UnixMillis(T0 + 5_000));
    assert_eq!(applied.applied_at, UnixMillis(T0 + 5_000));
}

/// A retried request id returns the first answer and changes nothing; reusing it for another
/// command is refused.
#[test]
fn request_ids_apply_at_most_once() {
    let mut log = Log::new();
    log.tenant("acme");
    log.worker("w1", 1_000, 1_000);
    let entry = |index: u64, id: &str| Entry {
        index: LogIndex(index),
        proposed_at: UnixMillis(T0),
        request_id: Some("place-1".into()),
        command: Command::Place { tenant: "acme".into(), spec: spec(id, 600, 10), fence: None },
        token: None,
    };
    let first = log.s.apply(entry(100, "a"));
    assert!(first.result.is_ok());
    let hash = log.s.state_hash();
    let retry = log.s.apply(entry(101, "a"));
    assert!(retry.replayed);
    assert_eq!(retry.log_index, LogIndex(100));
    assert_eq!(retry.result, first.result);
    assert_eq!(log.s.state_hash(), hash, "a retry changes nothing");
    let reused = log.s.apply(entry(102, "b"));
    assert!(matches!(
        reused.result,
        Err(Rejection::RequestIdReused { first_index: LogIndex(100) })
    ));
    assert_eq!(log.s.state_hash(), hash);
}

/// A worker with work on it is removed only with evict, which releases whole placements and
/// their quota; capacity cannot be lowered below what is allocated.
#[test]
fn worker_removal_and_capacity_changes() {
    let mut log = Log::new();
    log.tenant("acme");
    log.worker("w1", 1_000, 1_000);
    log.worker("w2", 1_000, 1_000);
    log.place("acme", PlaceSpec { count: 2, strategy: Strategy::Spread, ..spec("pair", 400, 10) })
        .expect("one on each");
    let lower = log.err(Command::UpdateWorker {
        worker: "w1".into(),
        capacity: Some(Resources::new(300, 1_000)),
        labels: None,
    });
    assert_eq!(lower.reason(), "CAPACITY_BELOW_ALLOCATED");
    let busy = log.err(Command::RemoveWorker { worker: "w1".into(), evict: false });
    assert_eq!(busy.reason(), "WORKER_NOT_EMPTY");
    let removed = log.ok(Command::RemoveWorker { worker: "w1".into(), evict: true });
    assert_eq!(removed, Response::WorkerRemoved { evicted: vec![("acme".into(), "pair".into())] });
    assert_eq!(log.allocated("w2"), Resources::ZERO, "the whole placement was released");
    assert!(log.usage("acme").is_zero());
    log.ok(Command::UpdateWorker {
        worker: "w2".into(),
        capacity: Some(Resources::new(2_000, 2_000)),
        labels: None,
    });
    log.place("acme", spec("big", 2_000, 2_000)).expect("new capacity is usable");
}

/// Replicated tunables change only through the log: unknown algorithm versions and
/// out-of-range values are refused, and a smaller session bound evicts the oldest first.
#[test]
fn config_changes_through_the_log() {
    let mut log = Log::new();
    let config = log.s.state().config.clone();
    let refused =
        log.err(Command::SetConfig { config: Config { placement_algorithm: 2, ..config.clone() } });
    assert_eq!(refused.reason(), "INVALID_ARGUMENT");
    let refused =
        log.err(Command::SetConfig { config: Config { sessions_max: 0, ..config.clone() } });
    assert_eq!(refused.reason(), "INVALID_ARGUMENT");
    assert_eq!(log.s.state().config, config, "refusals change nothing");

    for i in 0..5 {
        log.tenant(&format!("t{i}"));
    }
    log.ok(Command::SetConfig { config: Config { sessions_max: 3, ..config } });
    let kept: Vec<u64> = log.s.state().sessions.iter().map(|(_, s)| s.first.log_index.0).collect();
    assert_eq!(kept, vec![log.index - 2, log.index - 1, log.index], "newest three remain");
}

/// Found by jepsen/ (tenants workload, one-way partition of the leader): a CreateTenant retried
/// through a deposed leader was applied again after the tenant's deletion and brought it back.
/// A late duplicate of a deleted tenant's CreateTenant replays its first answer instead.
#[test]
fn deleted_tenant_is_not_recreated_by_a_late_duplicate_create() {
    let mut log = Log::new();
    let create = Entry {
        index: LogIndex(10),
        proposed_at: UnixMillis(T0),
        request_id: Some("ghost-create".into()),
        command: Command::CreateTenant { tenant: "ghost".into(), parent: None, weight: 1 },
        token: None,
    };
    assert!(log.s.apply(create.clone()).result.is_ok());
    let deleted = log.s.apply(Entry {
        index: LogIndex(11),
        request_id: Some("ghost-delete".into()),
        command: Command::DeleteTenant { tenant: "ghost".into() },
        ..create.clone()
    });
    assert!(deleted.result.is_ok());
    let late = log.s.apply(Entry { index: LogIndex(12), ..create });
    assert!(late.replayed, "the duplicate create replays its first answer");
    assert_eq!(late.log_index, LogIndex(10));
    assert_eq!(log.s.query(&Query::Tenant("ghost".into())), Answer::Tenant(None));
    assert!(log.s.check_invariants().is_ok());
    // A new tenant with the same id and a fresh request id is created as usual.
    log.index = 12;
    log.tenant("ghost");
    assert!(matches!(log.s.query(&Query::Tenant("ghost".into())), Answer::Tenant(Some(_))));
}

/// A command carrying a tenant token is applied only if, at apply time, the token still
/// belongs to the command's tenant: a token revoked after a lagging replica checked it, or
/// one of another tenant, is refused with UNAUTHENTICATED and changes nothing.
#[test]
fn commands_with_a_revoked_or_foreign_token_are_refused_at_apply() {
    let mut log = Log::new();
    log.tenant("acme");
    log.tenant("beta");
    log.worker("w1", 4_000, 4_096);
    let acme = TokenHash([1; 32]);
    let beta = TokenHash([2; 32]);
    log.ok(Command::AddToken { tenant: "acme".into(), token: "ci".into(), hash: acme, ttl_ms: 0 });
    log.ok(Command::AddToken { tenant: "beta".into(), token: "ci".into(), hash: beta, ttl_ms: 0 });
    let with_token = |log: &mut Log, id: &str, token: TokenHash| {
        let command =
            Command::Place { tenant: "acme".into(), spec: spec(id, 100, 10), fence: None };
        let entry = Entry { token: Some(token), ..log.entry(command) };
        log.s.apply(entry)
    };
    assert!(with_token(&mut log, "a", acme).result.is_ok(), "own live token");
    let foreign = with_token(&mut log, "b", beta);
    assert_eq!(foreign.result.map_err(|e| e.reason()), Err("UNAUTHENTICATED"));
    log.ok(Command::RevokeToken { tenant: "acme".into(), token: "ci".into() });
    let hash = log.s.state_hash();
    let revoked = with_token(&mut log, "c", acme);
    assert_eq!(revoked.result.map_err(|e| e.reason()), Err("UNAUTHENTICATED"));
    assert_eq!(log.s.state_hash(), hash, "a refused command changed the state");
    assert!(log.s.check_invariants().is_ok());
}
