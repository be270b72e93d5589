//! The quota manager through the core's public interface (`Scheduler::apply`, `dry_run`):
//! soft limits with burst ceilings and grace periods in log time, inheritance and parent caps
//! up the whole tenant chain, pool limits and pool denial, and dry-run decisions. Every test
//! asserts the invariants after every command.

use berth::scheduler::*;

use berth::scheduler::testing::T0;

mod core_harness;
use core_harness::Log;

impl Log {
    fn tenant(&mut self, id: &str, parent: Option<&str>) {
        self.accepted(Command::CreateTenant {
            tenant: id.into(),
            parent: parent.map(Into::into),
            weight: 1,
        });
    }

    fn worker(&mut self, id: &str, pool: Option<&str>, cpu_millis: u64) {
        self.accepted(Command::RegisterWorker {
            worker: id.into(),
            pool: pool.map(Into::into),
            capacity: Resources::new(cpu_millis, 1_000_000),
            labels: Labels::new(),
        });
    }

    fn quota(&mut self, tenant: &str, quota: Quota) -> Applied {
        self.accepted(Command::SetQuota { tenant: tenant.into(), quota })
    }

    fn place(&mut self, tenant: &str, id: &str, cpu_millis: u64) -> Applied {
        self.apply(Command::Place {
            tenant: tenant.into(),
            spec: spec(id, cpu_millis),
            fence: None,
        })
    }

    fn release(&mut self, tenant: &str, id: &str) -> Applied {
        self.accepted(Command::Release { tenant: tenant.into(), placement: id.into(), fence: None })
    }

    fn tick(&mut self, advance_ms: u64) -> Applied {
        self.now += advance_ms;
        self.apply(Command::Tick)
    }

    fn tenant_state(&self, id: &str) -> &Tenant {
        &self.s.state().tenants[&TenantId::from(id)]
    }
}

fn spec(id: &str, cpu_millis: u64) -> PlaceSpec {
    PlaceSpec {
        placement: id.into(),
        count: 1,
        resources: Resources::new(cpu_millis, 1),
        ..PlaceSpec::default()
    }
}

fn soft_cpu(soft: u64, burst: u64, grace_ms: Option<u64>) -> Quota {
    Quota {
        soft: SoftLimits { cpu_millis: Some(SoftLimit { soft, burst }), ..SoftLimits::default() },
        grace_ms,
        ..Quota::default()
    }
}

fn entered(tenant: &str, grace_ends_at: u64) -> QuotaEvent {
    QuotaEvent::BurstEntered { tenant: tenant.into(), grace_ends_at: UnixMillis(grace_ends_at) }
}

fn meta(r: &Rejection, key: &str) -> String {
    r.metadata().get(key).cloned().unwrap_or_default()
}

/// Above soft up to burst (never beyond) for exactly the grace period in log time; then no new
/// work until usage is back under soft; each transition is reported once as an event.
#[test]
fn soft_limit_bursts_within_grace_only() {
    let mut log = Log::new();
    log.tenant("acme", None);
    log.worker("w1", None, 64_000);
    log.quota("acme", soft_cpu(4_000, 6_000, Some(10_000)));

    assert!(log.place("acme", "a", 4_000).events.is_empty(), "at soft is not above it");
    let start = log.now;
    let over = log.place("acme", "b", 1_000);
    assert!(over.result.is_ok());
    assert_eq!(over.events, vec![entered("acme", start + 10_000)]);
    assert_eq!(log.s.next_deadline(), Some(UnixMillis(start + 10_000)));

    let ceiling = log.place("acme", "c", 1_001).result.expect_err("5000 + 1001 > burst 6000");
    assert_eq!(
        (ceiling.reason(), meta(&ceiling, "limit_kind")),
        ("QUOTA_EXCEEDED", "burst".into())
    );
    assert_eq!((meta(&ceiling, "limit"), meta(&ceiling, "used")), ("6000".into(), "5000".into()));

    // The last millisecond of grace still admits work up to burst.
    assert!(log.tick(9_999).events.is_empty());
    assert!(log.place("acme", "d", 1_000).result.is_ok(), "exactly at burst, within grace");
    let tick = log.tick(1);
    assert_eq!(tick.events, vec![QuotaEvent::GraceExpired { tenant: "acme".into() }]);
    assert_eq!(log.s.next_deadline(), invoices_due(&log), "no grace deadline left");
    assert!(log.tenant_state("acme").burst.is_some_and(|b| b.expired));

    // After the grace, new work is refused while above soft, naming when the grace ended.
    log.release("acme", "d");
    let late = log.place("acme", "e", 1).result.expect_err("grace over, still above soft");
    assert_eq!(meta(&late, "limit_kind"), "soft");
    assert_eq!(meta(&late, "grace_ended_at_ms"), (start + 10_000).to_string());
    assert_eq!(meta(&late, "limit"), "4000");

    // Back under soft in every dimension ends the burst; the next one gets a fresh grace.
    let back = log.release("acme", "b");
    assert_eq!(back.events, vec![QuotaEvent::ReturnedUnderSoft { tenant: "acme".into() }]);
    assert_eq!(log.tenant_state("acme").burst, None);
    let again = log.place("acme", "f", 500);
    assert_eq!(again.events, vec![entered("acme", log.now + 10_000)]);
}

/// Without a grace period (unset everywhere, or 0) nothing is admitted above soft; lowering a
/// soft limit below current usage starts a burst at once; a burst ceiling below usage, a soft
/// limit above its burst, or a burst above the hard limit is refused; changing the grace
/// period moves the running deadline.
#[test]
fn soft_limit_changes_through_set_quota() {
    let mut log = Log::new();
    log.tenant("acme", None);
    log.worker("w1", None, 64_000);
    log.quota("acme", soft_cpu(1_000, 2_000, None));
    let refused = log.place("acme", "a", 1_001).result.expect_err("no grace period");
    assert_eq!(
        (meta(&refused, "limit_kind"), meta(&refused, "grace_ended_at_ms")),
        ("soft".into(), String::new())
    );
    log.place("acme", "a", 1_000).result.expect("up to soft");

    let lowered = log.quota("acme", soft_cpu(500, 2_000, Some(5_000)));
    assert_eq!(lowered.events, vec![entered("acme", log.now + 5_000)]);
    let since = log.now;
    log.now += 1_000;
    let longer = log.quota("acme", soft_cpu(500, 2_000, Some(60_000)));
    assert!(longer.events.is_empty());
    assert_eq!(
        log.s.next_deadline(),
        Some(UnixMillis(since + 60_000)),
        "grace counts from the burst start"
    );
    let shorter = log.quota("acme", soft_cpu(500, 2_000, Some(1_000)));
    assert_eq!(shorter.events, vec![QuotaEvent::GraceExpired { tenant: "acme".into() }]);

    for bad in [soft_cpu(500, 999, Some(1)), soft_cpu(3_000, 2_000, Some(1))] {
        let e = log.err(Command::SetQuota { tenant: "acme".into(), quota: bad });
        assert_eq!(e.reason(), "INVALID_ARGUMENT");
    }
    let above_hard = Quota {
        total: Limits { cpu_millis: Some(1_500), ..Limits::default() },
        ..soft_cpu(500, 2_000, Some(1))
    };
    let e = log.err(Command::SetQuota { tenant: "acme".into(), quota: above_hard });
    assert!(e.to_string().contains("above the hard limit"), "{e}");

    let cleared = log.quota("acme", Quota::default());
    assert_eq!(cleared.events, vec![QuotaEvent::ReturnedUnderSoft { tenant: "acme".into() }]);
}

/// A child that sets nothing inherits its parent's limits and grace; its own settings win;
/// every ancestor up the chain caps its subtree in the same apply; usage rolls up; deleting a
/// child leaves the parent's usage and burst state exact.
#[test]
fn hierarchy_inherits_and_caps_up_the_chain() {
    let mut log = Log::new();
    log.tenant("org", None);
    log.tenant("team", Some("org"));
    log.tenant("dev", Some("team"));
    log.tenant("ops", Some("team"));
    log.worker("w1", None, 64_000);
    log.quota(
        "org",
        Quota {
            total: Limits { cpu_millis: Some(10_000), instances: Some(5), ..Limits::default() },
            ..soft_cpu(4_000, 8_000, Some(30_000))
        },
    );
    log.quota(
        "ops",
        Quota { total: Limits { instances: Some(2), ..Limits::default() }, ..Quota::default() },
    );

    let dev = log.s.effective_quota(&"dev".into());
    assert_eq!(
        (dev.total.cpu_millis, dev.total.instances, dev.grace_ms),
        (Some(10_000), Some(5), 30_000)
    );
    assert_eq!(dev.soft.cpu_millis, Some(SoftLimit { soft: 4_000, burst: 8_000 }));
    let ops = log.s.effective_quota(&"ops".into());
    assert_eq!(
        (ops.total.cpu_millis, ops.total.instances),
        (Some(10_000), Some(2)),
        "own value wins"
    );

    // Usage rolls up: dev and ops stay under the inherited soft limit on their own, but team
    // and org (4500 > 4000) go above it in the same apply, each with its own grace period.
    assert!(log.place("dev", "a", 2_500).events.is_empty());
    let ops_place = log.place("ops", "b", 2_000);
    let now = log.now;
    assert_eq!(ops_place.events, vec![entered("team", now + 30_000), entered("org", now + 30_000)]);
    assert_eq!(log.tenant_state("org").usage.total.cpu_millis, 4_500);
    assert_eq!(log.tenant_state("dev").burst, None);

    // org's burst ceiling (8000) binds dev two levels down, and the refusal names org.
    let capped = log.place("dev", "c", 3_501).result.expect_err("4500 + 3501 > org burst");
    assert!(
        matches!(capped, Rejection::QuotaExceeded { ref limited_by, kind: LimitKind::Burst, .. } if limited_by.as_str() == "org"),
        "{capped:?}"
    );
    log.place("ops", "d", 100).result.expect("ops: 2 of its own 2 instances");
    let ops_full = log.place("ops", "e", 100).result.expect_err("ops instance limit");
    assert!(
        matches!(ops_full, Rejection::QuotaExceeded { ref limited_by, dimension: Dimension::Instances, .. } if limited_by.as_str() == "ops")
    );
    log.tenant("lab", Some("org"));
    log.place("lab", "f", 100).result.expect("4 of org's 5");
    log.place("dev", "g", 100).result.expect("5 of org's 5");
    let org_full = log.place("dev", "h", 100).result.expect_err("org instance limit");
    assert!(
        matches!(org_full, Rejection::QuotaExceeded { ref limited_by, dimension: Dimension::Instances, .. } if limited_by.as_str() == "org")
    );

    // Deleting dev releases its work from every ancestor and ends their bursts in one step.
    let deleted = log.accepted(Command::DeleteTenant { tenant: "dev".into() });
    let under = |t: &str| QuotaEvent::ReturnedUnderSoft { tenant: t.into() };
    assert_eq!(deleted.events, vec![under("team"), under("org")]);
    assert_eq!(log.tenant_state("team").usage.total.cpu_millis, 2_100);
    assert_eq!(log.tenant_state("org").usage.total.cpu_millis, 2_200);
    assert_eq!(log.tenant_state("org").usage.total.instances, 3);
    assert_eq!(log.tenant_state("org").burst, None);
}

/// A pool limit binds only in its pool; a pool denied anywhere up the chain is refused with
/// POOL_DENIED naming who denies it, while other pools stay open; lifting it reopens it.
#[test]
fn pool_limits_and_denial() {
    let mut log = Log::new();
    log.tenant("org", None);
    log.tenant("team", Some("org"));
    log.worker("cpu-1", None, 64_000);
    log.worker("gpu-1", Some("gpu"), 64_000);
    let gpu =
        |id: &str, cpu_millis: u64| PlaceSpec { pool: Some("gpu".into()), ..spec(id, cpu_millis) };
    log.quota(
        "team",
        Quota {
            pools: [("gpu".into(), Limits { cpu_millis: Some(2_000), ..Limits::default() })].into(),
            ..Quota::default()
        },
    );
    log.accepted(Command::Place { tenant: "team".into(), spec: gpu("g1", 2_000), fence: None });
    let full = log.err(Command::Place { tenant: "team".into(), spec: gpu("g2", 1), fence: None });
    assert_eq!((meta(&full, "pool"), meta(&full, "limit")), ("gpu".into(), "2000".into()));
    log.place("team", "c1", 30_000).result.expect("the default pool is not limited");

    log.quota("org", Quota { denied_pools: ["gpu".into()].into(), ..Quota::default() });
    log.release("team", "g1");
    let denied = log.err(Command::Place { tenant: "team".into(), spec: gpu("g3", 1), fence: None });
    assert_eq!(denied, Rejection::PoolDenied { limited_by: "org".into(), pool: "gpu".into() });
    assert_eq!(denied.reason(), "POOL_DENIED");
    assert!(log.s.effective_quota(&"team".into()).denied_pools.contains(&PoolId::from("gpu")));
    log.place("team", "c2", 1_000).result.expect("other pools stay open");

    log.quota("org", Quota::default());
    log.accepted(Command::Place { tenant: "team".into(), spec: gpu("g3", 1), fence: None });
}

/// A dry run returns exactly the decision Place would make (same workers, same refusal with
/// the limiting quota, per-worker reasons, the quota events it would cause) and changes
/// nothing: the state hash and the next deadline are the same before and after.
#[test]
fn dry_run_explains_without_changing_anything() {
    let mut log = Log::new();
    log.tenant("org", None);
    log.tenant("team", Some("org"));
    log.worker("w1", None, 4_000);
    log.worker("w2", None, 2_000);
    log.accepted(Command::SetWorkerSchedulable { worker: "w2".into(), schedulable: false });
    log.worker("w3", None, 1_000);
    log.quota("org", soft_cpu(1_000, 3_500, Some(60_000)));

    let hash = log.s.state_hash();
    let deadline = log.s.next_deadline();
    let decision = log.s.dry_run(&"team".into(), spec("a", 2_500));
    assert_eq!(log.s.state_hash(), hash, "a dry run changes nothing");
    assert_eq!(log.s.next_deadline(), deadline);
    let would = decision.result.clone().expect("would place");
    assert_eq!(would.instances, vec![WorkerId::from("w1")]);
    let ends = log.now + 60_000;
    assert_eq!(decision.events, vec![entered("team", ends), entered("org", ends)]);
    let placed = log.place("team", "a", 2_500);
    match placed.result {
        Ok(Response::Placed(p)) => assert_eq!(p.instances, would.instances, "dry run = real"),
        other => panic!("{other:?}"),
    }

    // Refused by quota: the limiting tenant, dimension and kind, as Place would say.
    let quota = log.s.dry_run(&"team".into(), spec("b", 1_001));
    let refusal = quota.result.expect_err("over org's burst");
    assert_eq!(refusal, log.place("team", "b", 1_001).result.expect_err("same refusal"));
    assert_eq!(
        (meta(&refusal, "tenant"), meta(&refusal, "limit_kind")),
        ("org".into(), "burst".into())
    );

    // Refused for capacity: each worker and the first check it failed.
    log.quota("org", Quota::default());
    let hash = log.s.state_hash();
    let full = log.s.dry_run(&"team".into(), spec("c", 1_600));
    assert_eq!(log.s.state_hash(), hash);
    assert_eq!(full.result.expect_err("no worker fits").reason(), "NO_CAPACITY");
    let reasons: Vec<(&str, &str)> =
        full.workers.iter().map(|(w, f)| (w.as_str(), f.name())).collect();
    assert_eq!(
        reasons,
        vec![("w1", "insufficient_cpu"), ("w2", "draining"), ("w3", "insufficient_cpu")]
    );

    // Unknown and invalid tenants are refused the same way as by Place.
    assert_eq!(
        log.s.dry_run(&"nobody".into(), spec("d", 1)).result.expect_err("missing").reason(),
        "TENANT_NOT_FOUND"
    );
    assert_eq!(
        log.s.dry_run(&"".into(), spec("d", 1)).result.expect_err("blank").reason(),
        "TENANT_ID_REQUIRED"
    );
}

// ----- the fair-share queue --------------------------------------------------------------------

impl Log {
    fn queue(&mut self, tenant: &str, id: &str, cpu_millis: u64) -> Applied {
        self.apply(Command::PlaceOrQueue {
            tenant: tenant.into(),
            spec: spec(id, cpu_millis),
            fence: None,
        })
    }

    fn status(&self, tenant: &str, id: &str) -> QueueStatus {
        self.s.queue_status(&tenant.into(), &id.into()).expect("queued")
    }

    fn placed(&self, tenant: &str, id: &str) -> Option<&Placement> {
        self.s.state().placements.get(&(tenant.into(), id.into()))
    }

    fn weighted(&mut self, id: &str, weight: u32) {
        self.accepted(Command::CreateTenant { tenant: id.into(), parent: None, weight });
    }
}

fn admitted(events: &[QuotaEvent]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            QuotaEvent::Admitted { tenant, placement } => Some(format!("{tenant}/{placement}")),
            _ => None,
        })
        .collect()
}

/// A request short of quota or capacity waits (with its position and the refusal it would
/// get) instead of failing, and is placed by the entry that frees room: a release, a
/// reservation's expiry on a Tick, a new worker. Queued ids are taken; cancel withdraws.
#[test]
fn queued_placement_waits_and_is_placed_when_room_frees() {
    let mut log = Log::new();
    log.tenant("acme", None);
    log.tenant("other", None);
    log.worker("w1", None, 4_000);
    log.quota(
        "acme",
        Quota { total: Limits { instances: Some(1), ..Limits::default() }, ..Quota::default() },
    );

    match log.queue("acme", "a", 1_000).result {
        Ok(Response::Placed(p)) => {
            assert_eq!(p.instances, vec![WorkerId::from("w1")], "fits: placed at once")
        }
        other => panic!("{other:?}"),
    }
    let waiting = match log.queue("acme", "b", 1_000).result {
        Ok(Response::Queued(q)) => q,
        other => panic!("{other:?}"),
    };
    assert_eq!((waiting.position, waiting.pool_queued), (1, 1));
    assert!(matches!(
        waiting.reason,
        WaitReason::Refused(Rejection::QuotaExceeded { dimension: Dimension::Instances, .. })
    ));
    assert_eq!(
        log.place("acme", "b", 1).result.expect_err("id is queued").reason(),
        "PLACEMENT_EXISTS"
    );

    let release = log.release("acme", "a");
    assert_eq!(admitted(&release.events), vec!["acme/b"]);
    let b = log.placed("acme", "b").expect("placed by the release");
    assert_eq!((b.log_index, b.placed_at), (LogIndex(log.index), UnixMillis(log.now)));
    assert!(log.s.state().queue.is_empty());

    // Capacity: a reservation holds the worker; its expiry (a Tick) admits the waiter.
    log.accepted(Command::Reserve {
        tenant: "other".into(),
        spec: spec("r", 3_000),
        ttl_ms: 1_000,
        fence: None,
    });
    log.queue("other", "c", 2_000).result.expect("queued");
    assert!(matches!(
        log.status("other", "c").reason,
        WaitReason::Refused(Rejection::NoCapacity { .. })
    ));
    let tick = log.tick(1_000);
    assert_eq!(tick.expired.len(), 1);
    assert_eq!(admitted(&tick.events), vec!["other/c"]);

    // A new worker admits too; cancel withdraws; deleting a tenant withdraws its entries.
    log.queue("other", "d", 3_000).result.expect("queued");
    log.queue("other", "e", 64_000).result.expect("queued");
    let more = log.accepted(Command::RegisterWorker {
        worker: "w2".into(),
        pool: None,
        capacity: Resources::new(4_000, 1_000_000),
        labels: Labels::new(),
    });
    assert_eq!(admitted(&more.events), vec!["other/d"]);
    log.accepted(Command::CancelQueued { tenant: "other".into(), placement: "e".into() });
    let gone = log.err(Command::CancelQueued { tenant: "other".into(), placement: "e".into() });
    assert_eq!(gone.reason(), "NOT_QUEUED");
    log.queue("other", "f", 64_000).result.expect("queued");
    match log.accepted(Command::DeleteTenant { tenant: "other".into() }).result {
        Ok(Response::TenantDeleted(c)) => assert_eq!(c.queued, 1),
        other => panic!("{other:?}"),
    }
    assert!(log.s.state().queue.is_empty());
}

/// Freed capacity goes to the lowest weighted dominant share first, counting the entry itself
/// (the entry penalty); ties go to the earlier entry; a tenant's entries keep their order.
#[test]
fn admission_follows_weighted_dominant_share() {
    let mut log = Log::new();
    log.weighted("a", 1);
    log.weighted("b", 3);
    log.weighted("filler", 1);
    log.worker("w1", None, 10_000);
    log.place("filler", "fill", 10_000).result.expect("fills the pool");
    for (t, id) in [("a", "a1"), ("b", "b1"), ("b", "b2"), ("b", "b3"), ("a", "a2")] {
        log.queue(t, id, 1_000).result.expect("queued");
    }
    assert_eq!(log.status("b", "b1").position, 1);
    assert!(
        matches!(log.status("b", "b2").reason, WaitReason::BehindOwnTenant { ref placement } if placement.as_str() == "b1")
    );
    assert!(matches!(
        log.status("a", "a1").reason,
        WaitReason::Refused(Rejection::NoCapacity { .. })
    ));
    assert!(admitted(&log.tick(1).events).is_empty(), "nothing freed, nothing admitted");

    // Four more cores. Shares after admission (cpu over 14 cores, per weight): b1 1/42,
    // b2 2/42, then a1 3/42 ties b3 3/42 and a1 is older, then b3; a2 (6/42) waits.
    let grown = log.accepted(Command::UpdateWorker {
        worker: "w1".into(),
        capacity: Some(Resources::new(14_000, 1_000_000)),
        labels: None,
    });
    assert_eq!(admitted(&grown.events), vec!["b/b1", "b/b2", "a/a1", "b/b3"]);
    assert_eq!(log.status("a", "a2").position, 1);
    assert_eq!(admitted(&log.release("filler", "fill").events), vec!["a/a2"]);

    // Entry penalty: a tenant with nothing running but a big request does not jump ahead of
    // a small request from a tenant already running something.
    let mut log = Log::new();
    log.weighted("big", 1);
    log.weighted("small", 1);
    log.weighted("filler", 1);
    log.worker("w1", None, 10_000);
    log.place("small", "s0", 2_000).result.expect("running");
    log.place("filler", "fill", 8_000).result.expect("fills the pool");
    log.queue("big", "b", 6_000).result.expect("queued first");
    log.queue("small", "s1", 1_000).result.expect("queued second");
    // big: (0 + 6000)/10000 = 0.6; small: (2000 + 1000)/10000 = 0.3.
    assert_eq!((log.status("small", "s1").position, log.status("big", "b").position), (1, 2));
    let freed = log.release("filler", "fill");
    assert_eq!(admitted(&freed.events), vec!["small/s1", "big/b"]);
}

/// A tenant's own quota holds back only that tenant (its later entries wait behind its head,
/// FIFO), never others. No starvation: a big request that keeps losing to a heavier-weighted
/// tenant's small ones is aged after `QUEUE_AGING_MS`, and from then on nothing younger takes
/// capacity in its pool until it is placed.
#[test]
fn fifo_within_tenant_and_no_starvation_after_aging() {
    let mut log = Log::new();
    log.weighted("capped", 1);
    log.weighted("free", 1);
    log.worker("w1", None, 4_000);
    log.quota(
        "capped",
        Quota {
            total: Limits { cpu_millis: Some(1_000), ..Limits::default() },
            ..Quota::default()
        },
    );
    log.place("capped", "c0", 1_000).result.expect("at its quota");
    log.queue("capped", "c1", 500).result.expect("queued: quota");
    log.queue("capped", "c2", 1).result.expect("queued behind c1");
    assert!(matches!(log.status("capped", "c2").reason, WaitReason::BehindOwnTenant { .. }));
    let other = log.queue("free", "f1", 1_000);
    assert!(matches!(other.result, Ok(Response::Placed(_))), "capped's quota does not block free");
    assert_eq!(admitted(&log.release("capped", "c0").events), vec!["capped/c1", "capped/c2"]);

    // Starvation: "big" needs 4 cores on one worker; "small" (weight 10) keeps a 1-core job
    // waiting, so every freed core goes to small while big is younger than the aging bound.
    let mut log = Log::new();
    log.weighted("big", 1);
    log.weighted("small", 10);
    log.worker("w1", None, 4_000);
    for i in 0..4 {
        log.place("small", &format!("s{i}"), 1_000).result.expect("fills");
    }
    log.queue("big", "b", 4_000).result.expect("queued");
    let mut next = 4;
    let mut released = 0;
    let start = log.now;
    for _ in 0..5 {
        log.queue("small", &format!("s{next}"), 1_000).result.expect("queued");
        log.now += 100_000;
        let freed = log.release("small", &format!("s{released}"));
        assert_eq!(
            admitted(&freed.events),
            vec![format!("small/s{next}")],
            "small wins while big is young"
        );
        assert!(!log.status("big", "b").aged);
        next += 1;
        released += 1;
    }
    log.now = start + QUEUE_AGING_MS;
    log.tick(0);
    assert!(log.status("big", "b").aged);
    assert_eq!(log.status("big", "b").position, 1);
    // From now on freed cores wait for big; the fourth completes it.
    log.queue("small", &format!("s{next}"), 1_000).result.expect("queued");
    for _ in 0..3 {
        let freed = log.release("small", &format!("s{released}"));
        assert!(admitted(&freed.events).is_empty(), "reserved for the aged entry");
        released += 1;
    }
    let freed = log.release("small", &format!("s{released}"));
    assert_eq!(admitted(&freed.events), vec!["big/b"]);
    assert!(log.placed("big", "b").is_some());
}

// ----- time windows ---------------------------------------------------------------------------

fn windows(
    jobs_per_day: Option<u64>,
    cpu_milli_ms_per_month: Option<u64>,
    policy: WindowPolicy,
) -> Quota {
    Quota {
        windows: WindowLimits {
            jobs_per_day,
            cpu_milli_ms_per_month,
            when_exhausted: policy,
            ..WindowLimits::default()
        },
        ..Quota::default()
    }
}

/// Jobs per UTC day count every placement of the subtree (a parent's limit caps its
/// children), are refused with the reset time when spent, reset exactly at 00:00:00.000 UTC
/// in log time, and — by the tenant's policy — a queued request is refused or waits and is
/// placed by the first entry of the new day (the leader ticks at the boundary).
#[test]
fn jobs_per_day_reset_exactly_at_utc_midnight() {
    let mut log = Log::new();
    log.tenant("org", None);
    log.tenant("team", Some("org"));
    log.worker("w1", None, 64_000);
    log.quota("org", windows(Some(2), None, WindowPolicy::Refuse));
    let midnight = (T0 / windows::DAY_MS + 1) * windows::DAY_MS;

    log.place("team", "a", 100).result.expect("1 of 2 today");
    log.release("team", "a");
    log.place("team", "b", 100).result.expect("2 of 2: releasing does not give a job back");
    let spent = log.place("team", "c", 100).result.expect_err("spent");
    assert_eq!(spent.reason(), "QUOTA_EXCEEDED");
    let m = |k: &str| meta(&spent, k);
    assert_eq!(
        (m("limit_kind"), m("window"), m("tenant")),
        ("window".into(), "jobs_per_day".into(), "org".into())
    );
    assert_eq!(
        (m("limit"), m("used"), m("resets_at_ms")),
        ("2".into(), "2".into(), midnight.to_string())
    );
    let refused = log.queue("team", "c", 100).result.expect_err("policy: refuse, not queue");
    assert_eq!(refused, spent);

    log.quota("org", windows(Some(2), None, WindowPolicy::Queue));
    assert!(matches!(log.queue("team", "c", 100).result, Ok(Response::Queued(_))));
    assert_eq!(log.s.next_deadline(), Some(UnixMillis(midnight)), "the leader ticks at midnight");
    log.now = midnight - 1;
    assert!(admitted(&log.apply(Command::Tick).events).is_empty(), "one millisecond early");
    assert_eq!(
        log.place("team", "d", 100).result.expect_err("still today").reason(),
        "QUOTA_EXCEEDED"
    );
    log.now = midnight;
    assert_eq!(admitted(&log.apply(Command::Tick).events), vec!["team/c"], "exactly at midnight");
    let today = log.s.window_usage(&"org".into()).expect("org");
    assert_eq!(
        (today.jobs_today, today.day_resets_at),
        (1, UnixMillis(midnight + windows::DAY_MS))
    );
    assert_eq!(log.s.next_deadline(), invoices_due(&log), "nothing waits");
}

/// The one deadline a tenant that metered something this month keeps: its invoice closes when
/// the next month has ended.
fn invoices_due(log: &Log) -> Option<UnixMillis> {
    Some(windows::month_start(windows::month_of(UnixMillis(log.now)) + 2))
}

/// Cpu time per UTC calendar month is integrated exactly in cpu_millis × ms from each change
/// of usage; a spent budget refuses new work (running work continues) until the first
/// millisecond of the next month, when the count restarts from the boundary.
#[test]
fn cpu_time_per_month_integrates_exactly_and_resets_at_month_start() {
    let mut log = Log::new();
    log.tenant("acme", None);
    log.worker("w1", None, 64_000);
    let month = windows::month_of(UnixMillis(T0));
    let next_month = windows::month_start(month + 1);
    log.quota("acme", windows(None, Some(1_500 * 1_000 + 2 * 3 * 500), WindowPolicy::Refuse));
    log.place("acme", "a", 1_500).result.expect("budget untouched");
    log.now += 1_000;
    log.place("acme", "b", 2).result.expect("1 500 000 used of 1 503 000");
    log.now += 500;
    // 1500 × 1000 + 1502 × 500 = 2 251 000 ≥ the budget.
    let usage = log.s.window_usage(&"acme".into()).expect("acme");
    assert_eq!(usage.cpu_milli_ms_this_month, 1_500 * 1_000);
    log.apply(Command::Tick);
    let usage = log.s.window_usage(&"acme".into()).expect("acme");
    assert_eq!(usage.cpu_milli_ms_this_month, 1_500 * 1_000 + 1_502 * 500);
    let spent = log.place("acme", "c", 1).result.expect_err("budget spent");
    assert_eq!(
        (meta(&spent, "window"), meta(&spent, "resets_at_ms")),
        ("cpu_milli_ms_per_month".into(), next_month.0.to_string())
    );
    assert!(log.placed("acme", "a").is_some(), "running work is not stopped");

    log.now = next_month.0 - 1;
    assert_eq!(
        log.place("acme", "c", 1).result.expect_err("last ms of the month").reason(),
        "QUOTA_EXCEEDED"
    );
    log.now = next_month.0;
    log.place("acme", "c", 1).result.expect("a new month starts from zero");
    log.now += 10;
    log.apply(Command::Tick);
    let usage = log.s.window_usage(&"acme".into()).expect("acme");
    assert_eq!(usage.cpu_milli_ms_this_month, 1_503 * 10, "counted from the boundary only");
    assert_eq!(usage.month_resets_at, windows::month_start(month + 2));
}

/// Weeks run from Monday 00:00 UTC: jobs and cpu time per week count the subtree from the
/// week's first millisecond (cpu time is integrated exactly from each change, as for months),
/// refuse with the reset time when spent, and reset exactly at the next Monday's midnight.
#[test]
fn weekly_windows_reset_on_monday_at_midnight() {
    // Friday 2023-11-17 00:00 UTC; the next week starts Monday 2023-11-20.
    let friday = 1_700_179_200_000;
    let monday = friday + 3 * windows::DAY_MS;
    assert_eq!(windows::week_start(windows::week_of(UnixMillis(friday)) + 1), UnixMillis(monday));
    assert_eq!(windows::week_of(UnixMillis(monday - 1)) + 1, windows::week_of(UnixMillis(monday)));
    let mut log = Log(testing::Log::at(friday));
    log.tenant("org", None);
    log.tenant("team", Some("org"));
    log.worker("w1", None, 64_000);
    let weekly = |jobs, cpu| Quota {
        windows: WindowLimits {
            jobs_per_week: jobs,
            cpu_milli_ms_per_week: cpu,
            when_exhausted: WindowPolicy::Queue,
            ..WindowLimits::default()
        },
        ..Quota::default()
    };
    log.quota("org", weekly(Some(2), None));
    log.place("team", "a", 100).result.expect("1 of 2 this week");
    log.now += windows::DAY_MS;
    log.place("team", "b", 100).result.expect("2 of 2, on Saturday");
    let spent = log.place("team", "c", 100).result.expect_err("spent for the week");
    let m = |k: &str| meta(&spent, k);
    assert_eq!((m("window"), m("tenant")), ("jobs_per_week".into(), "org".into()));
    assert_eq!((m("used"), m("resets_at_ms")), ("2".into(), monday.to_string()));
    assert!(matches!(log.queue("team", "c", 100).result, Ok(Response::Queued(_))));
    log.now = monday - 1;
    assert!(admitted(&log.apply(Command::Tick).events).is_empty(), "one millisecond early");
    log.now = monday;
    assert_eq!(admitted(&log.apply(Command::Tick).events), vec!["team/c"], "on Monday");
    let week = log.s.window_usage(&"org".into()).expect("org");
    assert_eq!((week.jobs_this_week, week.jobs_today), (1, 1));
    assert_eq!(week.week_resets_at, UnixMillis(monday + 7 * windows::DAY_MS));

    // Cpu per week: 300 cpu_millis held (a, b and c) for 1,000 ms of the new week.
    log.quota("org", weekly(None, Some(300 * 1_000)));
    log.now += 999;
    log.place("team", "d", 1).result.expect("299,700 of 300,000");
    log.now += 1;
    log.apply(Command::Tick);
    let week = log.s.window_usage(&"org".into()).expect("org");
    assert_eq!(week.cpu_milli_ms_this_week, 300 * 999 + 301);
    let spent = log.place("team", "e", 1).result.expect_err("cpu week spent");
    assert_eq!(meta(&spent, "window"), "cpu_milli_ms_per_week");
    assert!(week.cpu_milli_ms_this_month > week.cpu_milli_ms_this_week, "the month began earlier");
}

// ----- utilisation alerts ---------------------------------------------------------------------

/// The utilisation events of an entry, as readable strings.
fn utilisation(applied: &Applied) -> Vec<String> {
    applied
        .events
        .iter()
        .filter_map(|e| match e {
            QuotaEvent::UtilisationHigh { tenant, pool, dimension, percent, used, limit } => {
                let pool = pool.as_ref().map_or("total".to_owned(), |p| p.to_string());
                Some(format!(
                    "{tenant} {pool} {} high {used}/{limit} ({percent}%)",
                    dimension.name()
                ))
            }
            QuotaEvent::UtilisationNormal { tenant, pool, dimension } => {
                let pool = pool.as_ref().map_or("total".to_owned(), |p| p.to_string());
                Some(format!("{tenant} {pool} {} normal", dimension.name()))
            }
            _ => None,
        })
        .collect()
}

/// A tenant's subtree reaching a set percent of a hard limit its quota sets (in total or per
/// pool) is reported once as it crosses, and once as it falls back below; changing the quota
/// settles it at once.
#[test]
fn utilisation_alerts_fire_once_per_crossing() {
    let mut log = Log::new();
    log.tenant("org", None);
    log.tenant("team", Some("org"));
    log.worker("w1", None, 64_000);
    let quota = Quota {
        total: Limits { cpu_millis: Some(10_000), jobs: Some(10), ..Limits::default() },
        alert_percent: Some(80),
        ..Quota::default()
    };
    assert!(utilisation(&log.quota("org", quota.clone())).is_empty());
    assert!(utilisation(&log.place("team", "a", 7_999)).is_empty(), "79.99 %");
    assert_eq!(
        utilisation(&log.place("team", "b", 1)),
        vec!["org total cpu_millis high 8000/10000 (80%)"],
        "the child's work counts against the parent's limit"
    );
    assert!(utilisation(&log.place("team", "c", 1_000)).is_empty(), "once per crossing");
    assert!(utilisation(&log.release("team", "c")).is_empty(), "still at 80 %");
    assert_eq!(utilisation(&log.release("team", "b")), vec!["org total cpu_millis normal"]);
    assert_eq!(
        utilisation(&log.place("team", "b2", 1)),
        vec!["org total cpu_millis high 8000/10000 (80%)"],
        "crossing again is reported again"
    );
    // A lower limit crosses without any placement; removing the alert settles it.
    let lower = Quota { total: Limits { jobs: Some(2), ..quota.total.clone() }, ..quota.clone() };
    assert_eq!(utilisation(&log.quota("org", lower)), vec!["org total jobs high 2/2 (80%)"],);
    let off = Quota { alert_percent: None, ..quota.clone() };
    assert_eq!(
        utilisation(&log.quota("org", off)),
        vec!["org total cpu_millis normal", "org total jobs normal"],
    );
    // Per pool, on the tenant's own limits.
    let pooled = Quota {
        pools: [("default".into(), Limits { cpu_millis: Some(16_000), ..Limits::default() })]
            .into(),
        alert_percent: Some(50),
        ..Quota::default()
    };
    assert_eq!(
        utilisation(&log.quota("team", pooled)),
        vec!["team default cpu_millis high 8000/16000 (50%)"]
    );
    let bad = Quota { alert_percent: Some(101), ..Quota::default() };
    let refused = log.apply(Command::SetQuota { tenant: "team".into(), quota: bad });
    assert!(matches!(refused.result, Err(Rejection::InvalidArgument { .. })));
}

// ----- priority and preemption -----------------------------------------------------------------

impl Log {
    fn place_spec(&mut self, tenant: &str, spec: PlaceSpec) -> Applied {
        self.apply(Command::Place { tenant: tenant.into(), spec, fence: None })
    }

    fn preemption(&mut self, tenant: &str, preemption: Preemption) {
        let mut quota = self.tenant_state(tenant).quota.clone();
        quota.preemption = Some(preemption);
        self.quota(tenant, quota);
    }
}

fn prio(id: &str, cpu_millis: u64, priority: i32) -> PlaceSpec {
    PlaceSpec { priority, ..spec(id, cpu_millis) }
}

/// The preemptions reported, as `victim-tenant/victim by preemptor-tenant/preemptor` plus
/// ` reclaimed` / ` requeued`.
fn preempted(events: &[QuotaEvent]) -> Vec<String> {
    events
        .iter()
        .filter_map(|e| match e {
            QuotaEvent::Preempted {
                tenant,
                placement,
                by_tenant,
                by_placement,
                reclaimed,
                requeued,
            } => Some(format!(
                "{tenant}/{placement} by {by_tenant}/{by_placement}{}{}",
                if *reclaimed { " reclaimed" } else { "" },
                if *requeued { " requeued" } else { "" }
            )),
            _ => None,
        })
        .collect()
}

/// A tenant allowed to preempt its own work releases strictly lower-priority placements, lowest
/// priority first and most recent first, only as many as it takes; equal priority is never
/// preempted, and a policy of `never` (the default) preempts nothing.
#[test]
fn preemption_takes_lowest_priority_most_recent_first() {
    let mut log = Log::new();
    log.tenant("acme", None);
    log.worker("w1", None, 4_000);
    for (id, p) in [("low-1", 0), ("low-2", 0), ("mid", 1), ("low-3", 0)] {
        log.place_spec("acme", prio(id, 1_000, p)).result.expect("fits");
    }
    let refused = log.place_spec("acme", prio("urgent", 2_000, 5)).result.expect_err("policy");
    assert_eq!(refused.reason(), "NO_CAPACITY", "the default policy preempts nothing");

    log.preemption("acme", Preemption::SameTenant);
    let urgent = log.place_spec("acme", prio("urgent", 2_000, 5));
    assert!(urgent.result.is_ok(), "{:?}", urgent.result);
    assert_eq!(
        preempted(&urgent.events),
        vec!["acme/low-3 by acme/urgent", "acme/low-2 by acme/urgent"],
        "lowest priority first, most recent first, and no more than needed"
    );
    assert!(log.placed("acme", "low-1").is_some() && log.placed("acme", "mid").is_some());
    assert!(log.placed("acme", "low-2").is_none() && log.placed("acme", "low-3").is_none());

    // Equal priority is never a victim: strictly lower only.
    let same = log.place_spec("acme", prio("peer", 1_000, 0)).result.expect_err("full");
    assert_eq!(same.reason(), "NO_CAPACITY");
    assert!(log.placed("acme", "low-1").is_some());
    let next = log.place_spec("acme", prio("peer", 1_000, 2));
    assert_eq!(preempted(&next.events), vec!["acme/low-1 by acme/peer"], "priority 0 before 1");
}

/// `same_tenant` never reaches another tenant's work; `any_tenant` does, by the same order.
/// The policy is inherited from the parent where a tenant sets none.
#[test]
fn preemption_across_tenants_needs_any_tenant() {
    let mut log = Log::new();
    log.tenant("org", None);
    log.tenant("acme", Some("org"));
    log.tenant("beta", None);
    log.worker("w1", None, 2_000);
    log.place_spec("beta", prio("batch-1", 1_000, 0)).result.expect("fits");
    log.place_spec("beta", prio("batch-2", 1_000, 0)).result.expect("fits");

    log.preemption("org", Preemption::SameTenant);
    assert_eq!(log.s.effective_quota(&"acme".into()).preemption, Preemption::SameTenant);
    let own = log.place_spec("acme", prio("svc", 1_000, 9)).result.expect_err("not its own");
    assert_eq!(own.reason(), "NO_CAPACITY");

    log.preemption("org", Preemption::AnyTenant);
    let svc = log.place_spec("acme", prio("svc", 1_000, 9));
    assert_eq!(preempted(&svc.events), vec!["beta/batch-2 by acme/svc"]);
    assert_eq!(log.tenant_state("beta").usage.total.cpu_millis, 1_000, "usage follows");
    assert_eq!(log.tenant_state("org").usage.total.cpu_millis, 1_000);
}

/// Over a quota, only work that counts against the limiting tenant's quota, in the limited
/// dimension, is preempted; reservations are never preempted.
#[test]
fn preemption_for_quota_takes_only_work_under_the_limit() {
    let mut log = Log::new();
    log.tenant("org", None);
    log.tenant("acme", Some("org"));
    log.tenant("beta", Some("org"));
    log.tenant("outsider", None);
    log.worker("w1", None, 64_000);
    log.quota(
        "org",
        Quota {
            total: Limits { cpu_millis: Some(3_000), ..Limits::default() },
            preemption: Some(Preemption::AnyTenant),
            ..Quota::default()
        },
    );
    log.place_spec("outsider", prio("x", 5_000, -10)).result.expect("not under org");
    log.place_spec("beta", prio("b-old", 1_000, 0)).result.expect("fits");
    log.accepted(Command::Reserve {
        tenant: "beta".into(),
        spec: prio("b-held", 1_000, -5),
        ttl_ms: 60_000,
        fence: None,
    });
    log.place_spec("acme", prio("a-1", 1_000, 0)).result.expect("fits");
    let big = log.place_spec("acme", prio("a-2", 2_000, 3));
    assert_eq!(
        preempted(&big.events),
        vec!["acme/a-1 by acme/a-2", "beta/b-old by acme/a-2"],
        "most recent first; never the reservation, never outside org"
    );
    assert!(log.placed("outsider", "x").is_some() && log.placed("beta", "b-held").is_some());
    assert_eq!(log.tenant_state("org").usage.total.cpu_millis, 3_000, "at the hard limit");
}

/// If releasing every eligible victim would still not make room, nothing is preempted and the
/// first refusal is returned; a dry run shows the victims a real Place would preempt.
#[test]
fn preemption_that_cannot_help_changes_nothing_and_dry_run_shows_victims() {
    let mut log = Log::new();
    log.tenant("acme", None);
    log.worker("w1", None, 2_000);
    log.worker("w2", None, 2_000);
    log.preemption("acme", Preemption::SameTenant);
    log.place_spec("acme", prio("low", 1_000, 0)).result.expect("fits");
    log.place_spec("acme", prio("high", 2_000, 9)).result.expect("fits");
    let before = log.s.state().placements.clone();
    // 3000 on one worker never fits, whatever is released.
    let huge = log.place_spec("acme", prio("huge", 3_000, 5));
    assert_eq!(huge.result.expect_err("too big").reason(), "NO_CAPACITY");
    assert!(huge.events.is_empty());
    assert_eq!(log.s.state().placements, before, "nothing preempted");

    let d = log.s.dry_run(&"acme".into(), prio("mid", 2_000, 5));
    assert!(d.result.is_ok());
    assert_eq!(preempted(&d.events), vec!["acme/low by acme/mid"]);
    assert_eq!(log.s.state().placements, before, "a dry run preempts nothing");
}

/// A victim whose spec asks for it goes back into the queue (reported `requeued`) and is placed
/// again when room frees. Having strictly lower priority, it never preempts its preemptor back,
/// even with a policy that allows preemption.
#[test]
fn preempted_work_requeues_and_never_preempts_back() {
    let mut log = Log::new();
    log.tenant("acme", None);
    log.worker("w1", None, 2_000);
    log.preemption("acme", Preemption::SameTenant);
    let batch = PlaceSpec { requeue_on_preemption: true, ..prio("batch", 2_000, 1) };
    log.place_spec("acme", batch).result.expect("fits");
    let svc = log.place_spec("acme", prio("svc", 2_000, 7));
    assert_eq!(preempted(&svc.events), vec!["acme/batch by acme/svc requeued"]);
    assert!(admitted(&svc.events).is_empty(), "it must not come straight back");
    let waiting = log.status("acme", "batch");
    assert_eq!(waiting.queued.log_index, LogIndex(log.index));
    assert!(matches!(waiting.reason, WaitReason::Refused(Rejection::NoCapacity { .. })));
    // Ticks and unrelated writes do not let it back in while the preemptor runs.
    log.tick(QUEUE_AGING_MS + 1);
    assert!(log.placed("acme", "svc").is_some() && log.placed("acme", "batch").is_none());

    let release = log.release("acme", "svc");
    assert_eq!(admitted(&release.events), vec!["acme/batch"]);
    assert!(preempted(&release.events).is_empty());
}

/// One entry may admit a queued placement next to the carrier of its required affinity and
/// then admit a higher-priority one that needs room: the carrier is not its victim, since no
/// reader ever saw the first placement without it. (Found by `request_ids_apply_at_most_once`.)
#[test]
fn an_admission_never_preempts_the_carrier_another_admission_stands_next_to() {
    let mut log = Log::new();
    log.tenant("acme", None);
    log.worker("w1", None, 2_000);
    let db = PlaceSpec {
        labels: [("app".to_string(), "db".to_string())].into(),
        ..prio("db", 1_000, 0)
    };
    log.place_spec("acme", db).result.expect("fits");
    log.place_spec("acme", prio("filler", 1_000, 9)).result.expect("fits");
    let dependent = PlaceSpec {
        affinity: vec![LabelTerm::new("app", "db")],
        requeue_on_preemption: true,
        ..prio("dependent", 1_000, 4)
    };
    let queued =
        log.apply(Command::PlaceOrQueue { tenant: "acme".into(), spec: dependent, fence: None });
    assert!(matches!(queued.result, Ok(Response::Queued(_))), "{:?}", queued.result);
    let urgent = prio("urgent", 1_000, 5);
    let queued =
        log.apply(Command::PlaceOrQueue { tenant: "acme".into(), spec: urgent, fence: None });
    assert!(matches!(queued.result, Ok(Response::Queued(_))), "{:?}", queued.result);
    log.preemption("acme", Preemption::SameTenant);

    // Room for one: `dependent` (first in the tenant's FIFO) is admitted next to `db`, then
    // `urgent` needs room and `db` (priority 0) would go first, leaving `dependent` stranded.
    let release = log.release("acme", "filler");
    assert_eq!(admitted(&release.events)[0], "acme/dependent", "{:?}", release.events);
    assert!(log.placed("acme", "db").is_some(), "the carrier stays: {:?}", release.events);
    // `urgent` takes the next victim in order instead, which here is `dependent` itself.
    assert_eq!(preempted(&release.events), vec!["acme/dependent by acme/urgent requeued"]);
    for p in log.s.state().placements.values() {
        for term in &p.spec.affinity {
            for w in &p.instances {
                let carried = log.s.state().placements.values().any(|q| {
                    q.tenant == p.tenant
                        && q.spec.labels.get(&term.key) == Some(&term.value)
                        && q.instances.contains(w)
                });
                assert!(carried, "{} on {w} without its {term:?}", p.spec.placement);
            }
        }
    }
}

// ----- guarantees, borrowing and lending -------------------------------------------------------

/// A guarantee of `cpu_millis` (and 1000 MiB) in pool gpu, with optional cpu borrowing and
/// lending limits (memory limits 1000 MiB when set).
fn guarantee(cpu_millis: u64, borrow: Option<u64>, lend: Option<u64>) -> Guarantee {
    Guarantee {
        nominal: Resources::new(cpu_millis, 1_000),
        borrowing_limit: borrow.map(|b| Resources::new(b, 1_000)),
        lending_limit: lend.map(|l| Resources::new(l, 1_000)),
    }
}

impl Log {
    fn guarantee(&mut self, tenant: &str, g: Guarantee) {
        let mut quota = self.tenant_state(tenant).quota.clone();
        quota.guarantees.insert("gpu".into(), g);
        self.quota(tenant, quota);
    }

    fn gpu(&mut self, tenant: &str, id: &str, cpu_millis: u64, priority: i32) -> Applied {
        let spec = PlaceSpec { pool: Some("gpu".into()), ..prio(id, cpu_millis, priority) };
        self.place_spec(tenant, spec)
    }

    fn borrowed_cpu(&self, tenant: &str) -> u64 {
        self.s.borrowed(&tenant.into(), &"gpu".into()).cpu_millis
    }
}

/// Beyond its guarantee a tenant borrows idle capacity (marked `borrowed`), up to its borrowing
/// limit, and never into what other tenants' guarantees keep back (their unused share beyond
/// what they lend): refused with NOT_LENDABLE. A tenant without a guarantee only borrows.
#[test]
fn borrowing_stays_within_borrowing_and_lending_limits() {
    let mut log = Log::new();
    log.tenant("acme", None);
    log.tenant("beta", None);
    log.tenant("gamma", None);
    log.worker("g1", Some("gpu"), 10_000);
    log.guarantee("acme", guarantee(6_000, None, Some(2_000)));
    log.guarantee("beta", guarantee(4_000, Some(3_000), None));

    let own = log.gpu("beta", "b-1", 4_000, 0).result.expect("within its share");
    assert!(matches!(own, Response::Placed(Placement { borrowed: false, .. })));
    assert_eq!(log.borrowed_cpu("beta"), 0);
    let more = log.gpu("beta", "b-2", 1_000, 0).result.expect("borrows");
    assert!(matches!(more, Response::Placed(Placement { borrowed: true, .. })));
    assert_eq!(log.borrowed_cpu("beta"), 1_000);
    assert_eq!(log.s.held_for_lenders(&"gpu".into(), &"beta".into()).cpu_millis, 4_000);

    // acme's unused 6000 lends only 2000: 4000 stays free for it.
    let e = log.gpu("beta", "b-3", 1_500, 0).result.expect_err("into acme's kept share");
    assert_eq!(e.reason(), "NOT_LENDABLE");
    assert_eq!(
        (meta(&e, "free"), meta(&e, "held_for_lenders"), meta(&e, "requested")),
        ("5000".into(), "4000".into(), "1500".into())
    );
    log.gpu("beta", "b-3", 1_000, 0).result.expect("exactly down to what is kept");
    let e = log.gpu("gamma", "g-1", 1, 0).result.expect_err("nothing left to lend");
    assert_eq!(e.reason(), "NOT_LENDABLE");

    // The borrowing limit: beta may hold at most 4000 + 3000.
    log.guarantee("acme", guarantee(6_000, None, None));
    let e = log.gpu("beta", "b-4", 1_001, 0).result.expect_err("beyond its borrowing limit");
    assert_eq!((meta(&e, "limit_kind"), meta(&e, "limit")), ("borrowing".into(), "7000".into()));
    log.gpu("beta", "b-4", 1_000, 0).result.expect("up to it");
    let g = log.gpu("gamma", "g-1", 1_000, 0).result.expect("no guarantee: all borrowed");
    assert!(matches!(g, Response::Placed(Placement { borrowed: true, .. })));

    // A borrowing limit below what the subtree holds is refused, like a hard limit.
    let mut q = log.tenant_state("beta").quota.clone();
    q.guarantees.insert("gpu".into(), guarantee(4_000, Some(2_000), None));
    let e = log.err(Command::SetQuota { tenant: "beta".into(), quota: q });
    assert_eq!(e.reason(), "INVALID_ARGUMENT");
    let mut q = Quota::default();
    q.guarantees.insert("bad pool".into(), guarantee(1, None, None));
    assert_eq!(
        log.err(Command::SetQuota { tenant: "beta".into(), quota: q }).reason(),
        "INVALID_ARGUMENT"
    );
}

/// What a guarantee keeps back goes to the queue in the step that stops keeping it: deleting
/// the lender, or lowering its guarantee. (Found by `same_entries_same_state`: a deleted
/// child's kept share was freed but the waiting entry was not offered it.)
#[test]
fn a_share_no_longer_kept_goes_to_the_queue_in_the_same_step() {
    let mut log = Log::new();
    log.tenant("acme", None);
    log.tenant("beta", Some("acme"));
    log.tenant("gamma", None);
    log.worker("g1", Some("gpu"), 2_000);
    log.guarantee("beta", guarantee(1_600, None, Some(400)));
    log.guarantee("gamma", guarantee(400, None, Some(0)));

    // beta keeps 1200 of its unused 1600 back, gamma its 400: 400 is lendable.
    let queue = |log: &mut Log, tenant: &str, id: &str| {
        let spec = PlaceSpec { pool: Some("gpu".into()), ..spec(id, 500) };
        log.apply(Command::PlaceOrQueue { tenant: tenant.into(), spec, fence: None })
    };
    assert!(matches!(queue(&mut log, "acme", "a-1").result, Ok(Response::Queued(_))));
    assert!(matches!(
        log.status("acme", "a-1").reason,
        WaitReason::Refused(Rejection::NotLendable { .. })
    ));
    let deleted = log.accepted(Command::DeleteTenant { tenant: "beta".into() });
    assert_eq!(admitted(&deleted.events), vec!["acme/a-1"]);

    // gamma lends nothing; lowering its guarantee lets the next one in.
    assert!(matches!(queue(&mut log, "acme", "a-2").result, Ok(Response::Placed(_))));
    assert!(matches!(queue(&mut log, "acme", "a-3").result, Ok(Response::Placed(_))));
    assert!(matches!(queue(&mut log, "acme", "a-4").result, Ok(Response::Queued(_))));
    let lowered = log.quota("gamma", Quota::default());
    assert_eq!(admitted(&lowered.events), vec!["acme/a-4"]);
    assert!(log.s.state().queue.is_empty());
}

/// A tenant that needs capacity within its guarantee gets it back in the same step: borrowers
/// are preempted (borrowed work of any priority, lowest priority first, most recent first) —
/// never work within its owner's own share, and never the other way round.
#[test]
fn a_lender_reclaims_its_share_from_borrowers_in_one_step() {
    let mut log = Log::new();
    log.tenant("acme", None);
    log.tenant("beta", None);
    log.tenant("gamma", None);
    log.worker("g1", Some("gpu"), 10_000);
    log.guarantee("acme", guarantee(6_000, None, None));
    log.guarantee("beta", guarantee(2_000, None, None));
    log.gpu("beta", "b-own", 2_000, 0).result.expect("its share");
    log.gpu("beta", "b-hi", 2_000, 100).result.expect("borrowed, high priority");
    log.gpu("gamma", "g-1", 2_000, 50).result.expect("borrowed, no guarantee");
    log.gpu("beta", "b-lo", 2_000, 0).result.expect("borrowed, low priority");
    assert_eq!((log.borrowed_cpu("beta"), log.borrowed_cpu("gamma")), (4_000, 2_000));

    // acme wants 5000 of its 6000: 2000 are free, 3000 more must come back.
    let claim = log.gpu("acme", "a-1", 5_000, -1);
    assert!(claim.result.is_ok(), "{:?}", claim.result);
    assert_eq!(
        preempted(&claim.events),
        vec!["beta/b-lo by acme/a-1 reclaimed", "gamma/g-1 by acme/a-1 reclaimed"],
        "lowest priority first, whatever the claimant's priority"
    );
    assert!(log.placed("beta", "b-hi").is_some() && log.placed("beta", "b-own").is_some());

    // beta still borrows 2000 (b-hi); its own share (b-own, placed within it) is never
    // reclaimed, and work beyond the claimant's own share reclaims nothing.
    assert_eq!(log.borrowed_cpu("beta"), 2_000);
    let over = log.gpu("acme", "a-2", 2_000, 0).result.expect_err("beyond acme's share");
    assert_eq!(over.reason(), "NO_CAPACITY");
    assert!(log.placed("beta", "b-own").is_some() && log.placed("beta", "b-hi").is_some());

    // The other way round: beta, within its share again, reclaims only from borrowers, never
    // from acme (whose work is within acme's own share).
    log.release("beta", "b-own");
    log.release("beta", "b-hi");
    log.gpu("gamma", "g-2", 4_000, 0).result.expect("borrows what beta left");
    let back = log.gpu("beta", "b-again", 2_000, 99);
    assert!(back.result.is_ok(), "{:?}", back.result);
    assert_eq!(preempted(&back.events), vec!["gamma/g-2 by beta/b-again reclaimed"]);
    assert!(log.placed("acme", "a-1").is_some());
}

/// Confirming a reservation makes it work like any other, which a lender may reclaim (a
/// reservation never is): a queued claimant that now fits is admitted in the same step. (Found
/// by `same_entries_same_state`: the confirm freed nothing, so the queue was not offered it.)
#[test]
fn a_confirmed_reservation_may_be_reclaimed_by_a_waiting_lender_at_once() {
    let mut log = Log::new();
    log.tenant("acme", None);
    log.tenant("gamma", None);
    log.worker("g1", Some("gpu"), 2_000);
    log.guarantee("acme", guarantee(2_000, None, None));
    let spec = |id: &str| PlaceSpec { pool: Some("gpu".into()), ..spec(id, 2_000) };
    log.accepted(Command::Reserve {
        tenant: "gamma".into(),
        spec: spec("g-held"),
        ttl_ms: 60_000,
        fence: None,
    });
    let queued =
        log.apply(Command::PlaceOrQueue { tenant: "acme".into(), spec: spec("a-1"), fence: None });
    assert!(matches!(queued.result, Ok(Response::Queued(_))), "{:?}", queued.result);
    assert!(matches!(
        log.status("acme", "a-1").reason,
        WaitReason::Refused(Rejection::NoCapacity { .. })
    ));

    let confirmed = log.accepted(Command::ConfirmReservation {
        tenant: "gamma".into(),
        reservation: "g-held".into(),
        fence: None,
    });
    assert_eq!(admitted(&confirmed.events), vec!["acme/a-1"]);
    assert_eq!(preempted(&confirmed.events), vec!["gamma/g-held by acme/a-1 reclaimed"]);
    assert!(log.s.state().queue.is_empty());
}

// ----- soft limits as a share of a pool --------------------------------------------------------

/// Soft limits declared as per-mille of a pool's schedulable capacity follow the pool: adding a
/// worker raises them (ending a burst), draining or removing one lowers them (starting one),
/// and admission checks the ceiling as it stands now. A share next to fixed cpu/memory soft
/// limits, or beyond 1000 per mille, is refused.
#[test]
fn soft_share_of_pool_follows_its_capacity() {
    let mut log = Log::new();
    log.tenant("acme", None);
    log.worker("w1", None, 4_000);
    let share = SoftShare { pool: "default".into(), soft_per_mille: 500, burst_per_mille: 750 };
    let quota =
        Quota { soft_share: Some(share.clone()), grace_ms: Some(60_000), ..Quota::default() };
    log.quota("acme", quota.clone());
    let cpu = |log: &Log| log.s.effective_quota(&"acme".into()).soft.cpu_millis;
    assert_eq!(cpu(&log), Some(SoftLimit { soft: 2_000, burst: 3_000 }));

    let burst = log.place("acme", "a", 2_500);
    assert_eq!(burst.events, vec![entered("acme", log.now + 60_000)]);
    let e = log.place("acme", "b", 600).result.expect_err("2500 + 600 > 750‰ of 4000");
    assert_eq!((meta(&e, "limit_kind"), meta(&e, "limit")), ("burst".into(), "3000".into()));

    // A second worker doubles the pool: 4000 soft, so acme is back under soft.
    let grown = log.accepted(Command::RegisterWorker {
        worker: "w2".into(),
        pool: None,
        capacity: Resources::new(4_000, 1_000_000),
        labels: Labels::new(),
    });
    assert_eq!(grown.events, vec![QuotaEvent::ReturnedUnderSoft { tenant: "acme".into() }]);
    assert_eq!(cpu(&log), Some(SoftLimit { soft: 4_000, burst: 6_000 }));
    log.place("acme", "b", 600).result.expect("within the larger share");

    // Draining w2 halves it again: above soft at once, with a fresh grace period.
    let drained =
        log.accepted(Command::SetWorkerSchedulable { worker: "w2".into(), schedulable: false });
    assert_eq!(drained.events, vec![entered("acme", log.now + 60_000)]);
    assert_eq!(cpu(&log), Some(SoftLimit { soft: 2_000, burst: 3_000 }));
    let e = log.place("acme", "c", 1).result.expect_err("3100 already above the 3000 ceiling");
    assert_eq!(meta(&e, "limit_kind"), "burst");
    // Removing it changes nothing more (it no longer counted); another pool never counts.
    assert!(log
        .accepted(Command::RemoveWorker { worker: "w2".into(), evict: true })
        .events
        .is_empty());
    log.worker("g1", Some("gpu"), 64_000);
    assert_eq!(cpu(&log), Some(SoftLimit { soft: 2_000, burst: 3_000 }));

    let both = Quota { soft: soft_cpu(1, 2, None).soft, ..quota };
    assert_eq!(
        log.err(Command::SetQuota { tenant: "acme".into(), quota: both }).reason(),
        "INVALID_ARGUMENT"
    );
    let over = SoftShare { burst_per_mille: 1_001, ..share };
    let q = Quota { soft_share: Some(over), ..Quota::default() };
    assert_eq!(
        log.err(Command::SetQuota { tenant: "acme".into(), quota: q }).reason(),
        "INVALID_ARGUMENT"
    );
}

// ----- pool reserves ---------------------------------------------------------------------------

impl Log {
    fn reserve(&mut self, reserve: Option<Resources>) -> Applied {
        self.apply(Command::SetPoolReserve { pool: "gpu".into(), reserve })
    }

    fn gpu_status(&self) -> PoolStatus {
        self.s.pool_status(&"gpu".into()).expect("pool gpu exists")
    }
}

/// A pool's reserve is nobody's guarantee: raising a guarantee or the reserve so that all
/// guarantees plus the reserve exceed the pool's schedulable capacity (in cpu or memory) is
/// refused with POOL_OVERCOMMITTED and changes nothing; the reserve stays open to borrowers;
/// a pool that shrinks stops nothing and shows its shortfall, and lowering is always allowed.
#[test]
fn a_pool_reserve_is_held_back_from_guarantees() {
    let mut log = Log::new();
    log.tenant("acme", None);
    log.tenant("beta", None);
    log.tenant("gamma", None);
    // Capacity exists before a reserve can hold any of it back.
    let e = log.reserve(Some(Resources::new(1, 0))).result.expect_err("an empty pool");
    assert_eq!((e.reason(), meta(&e, "capacity")), ("POOL_OVERCOMMITTED", "0".into()));
    assert!(log.s.pool_status(&"gpu".into()).is_none());
    log.worker("g1", Some("gpu"), 10_000);
    log.worker("g2", Some("gpu"), 6_000);
    log.reserve(Some(Resources::new(4_000, 0))).result.expect("16000 of cpu to split");
    log.guarantee("acme", guarantee(8_000, None, Some(0)));
    log.guarantee("beta", guarantee(4_000, None, Some(0)));
    let status = log.gpu_status();
    assert_eq!(
        (status.capacity, status.guaranteed, status.reserve, status.shortfall),
        (
            Resources::new(16_000, 2_000_000),
            Resources::new(12_000, 2_000),
            Some(Resources::new(4_000, 0)),
            Resources::ZERO
        )
    );

    // One more millicore of guarantee, or of reserve, would eat into the other.
    let mut q = log.tenant_state("beta").quota.clone();
    q.guarantees.insert("gpu".into(), guarantee(4_001, None, Some(0)));
    let e = log.err(Command::SetQuota { tenant: "beta".into(), quota: q });
    assert_eq!(e.reason(), "POOL_OVERCOMMITTED");
    assert_eq!(
        ["dimension", "capacity", "guaranteed", "reserve"].map(|k| meta(&e, k)),
        ["cpu_millis", "16000", "12001", "4000"]
    );
    assert_eq!(
        log.s.guarantee(&"beta".into(), &"gpu".into()),
        Some(guarantee(4_000, None, Some(0)))
    );
    let mut q = log.tenant_state("gamma").quota.clone();
    q.guarantees.insert("gpu".into(), guarantee(1, None, None));
    assert_eq!(
        log.err(Command::SetQuota { tenant: "gamma".into(), quota: q }).reason(),
        "POOL_OVERCOMMITTED"
    );
    let e = log.reserve(Some(Resources::new(4_001, 0))).result.expect_err("into the guarantees");
    assert_eq!((meta(&e, "dimension"), meta(&e, "reserve")), ("cpu_millis".into(), "4001".into()));
    let e = log.reserve(Some(Resources::new(4_000, 1_998_001))).result.expect_err("memory too");
    assert_eq!(
        (meta(&e, "dimension"), meta(&e, "capacity")),
        ("memory_mib".into(), "2000000".into())
    );
    assert_eq!(log.gpu_status().reserve, Some(Resources::new(4_000, 0)), "refusals change nothing");
    let e = log.apply(Command::SetPoolReserve { pool: "bad pool".into(), reserve: None });
    assert_eq!(e.result.expect_err("invalid pool id").reason(), "INVALID_ARGUMENT");

    // The reserve is for borrowers: gamma, without a guarantee, gets exactly it (acme and beta
    // lend nothing of their unused shares).
    let g = log.gpu("gamma", "g-1", 4_000, 0).result.expect("the reserve");
    assert!(matches!(g, Response::Placed(Placement { borrowed: true, .. })));
    assert_eq!(
        log.gpu("gamma", "g-2", 1, 0).result.expect_err("the rest is guaranteed").reason(),
        "NOT_LENDABLE"
    );
    log.gpu("acme", "a-1", 8_000, 0).result.expect("acme's share is there");
    log.gpu("beta", "b-1", 4_000, 0).result.expect("and beta's");

    // Draining a worker stops nothing; the shortfall shows, and only lowering is allowed.
    let placed = log.s.state().placements.len();
    log.accepted(Command::SetWorkerSchedulable { worker: "g2".into(), schedulable: false });
    assert_eq!(log.gpu_status().shortfall, Resources::new(6_000, 0));
    assert_eq!(log.s.state().placements.len(), placed);
    assert_eq!(
        log.reserve(Some(Resources::new(4_001, 0))).result.expect_err("raised").reason(),
        "POOL_OVERCOMMITTED"
    );
    log.guarantee("beta", guarantee(3_000, None, None));
    log.reserve(Some(Resources::new(1_000, 0))).result.expect("lowered");
    assert_eq!(log.gpu_status().shortfall, Resources::new(2_000, 0));

    // The reserve survives a snapshot; without one, guarantees are unchecked accounting again.
    let copy = Scheduler::decode(&log.s.encode()).expect("round trip");
    assert_eq!(copy.pool_status(&"gpu".into()), log.s.pool_status(&"gpu".into()));
    log.reserve(None).result.expect("removed");
    log.guarantee("gamma", guarantee(50_000, None, None));
    assert_eq!(log.gpu_status().reserve, None);
}

/// Reclaim does not give up while a victim that would make room exists: a borrower holds two
/// borrowed placements but only one of them is above its share, and only the older one's
/// worker can take the claimant. Taking the most recent first (the usual order) would bring the
/// borrower down to its share with nothing gained, and the useful victim would no longer be
/// reclaimable; the victim whose worker can take the claimant goes first instead.
#[test]
fn reclaim_takes_the_victim_that_makes_room() {
    let mut log = Log::new();
    log.tenant("acme", None);
    log.tenant("beta", None);
    for (worker, zone, cpu_millis) in [("g1", "a", 4_000), ("g2", "b", 3_000)] {
        log.accepted(Command::RegisterWorker {
            worker: worker.into(),
            pool: Some("gpu".into()),
            capacity: Resources::new(cpu_millis, 1_000_000),
            labels: [("zone".to_string(), zone.to_string())].into(),
        });
    }
    log.guarantee("acme", guarantee(4_000, None, None));
    log.guarantee("beta", guarantee(2_000, None, None));
    let zone = |id: &str, zone: &str| PlaceSpec {
        pool: Some("gpu".into()),
        worker_requires: vec![LabelRequirement {
            key: "zone".into(),
            op: LabelOp::In,
            values: vec![zone.into()],
        }],
        ..spec(id, 2_000)
    };
    log.place_spec("beta", zone("b-own", "a")).result.expect("within beta's share");
    log.place_spec("beta", zone("b-1", "a")).result.expect("borrowed, on g1");
    log.place_spec("beta", zone("b-2", "b")).result.expect("borrowed, on g2");
    log.release("beta", "b-own");
    // beta holds 4000 of its 2000: one of b-1 and b-2 may be reclaimed, not both. acme needs
    // 4000 on one worker: only g1 (2000 free + b-1) can take it; g2 (1000 free + b-2) cannot.
    assert_eq!(log.borrowed_cpu("beta"), 2_000);
    let claim = log.gpu("acme", "a-1", 4_000, 0);
    assert!(claim.result.is_ok(), "reclaim gave up: {:?}", claim.result);
    assert_eq!(preempted(&claim.events), vec!["beta/b-1 by acme/a-1 reclaimed"]);
    assert!(log.placed("beta", "b-2").is_some());
    assert_eq!(log.borrowed_cpu("beta"), 0);
}
