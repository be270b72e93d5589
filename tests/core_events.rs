//! The core's journal, through its public interface: the exact events (`Applied::journal`) of
//! small scenarios, one family per test, in the order the entry did them, and that refusals,
//! replays and dry runs emit nothing. Every command is checked against the invariants (the
//! shared harness does).

use berth::scheduler::*;

mod core_harness;
use core_harness::Log;

impl Log {
    fn tenant(&mut self, id: &str) {
        self.accepted(Command::CreateTenant { tenant: id.into(), parent: None, weight: 1 });
    }

    fn worker(&mut self, id: &str, rack: &str, cpu_millis: u64) {
        self.accepted(Command::RegisterWorker {
            worker: id.into(),
            pool: None,
            capacity: Resources::new(cpu_millis, 1_000),
            labels: [("rack".to_owned(), rack.to_owned())].into_iter().collect(),
        });
    }

    /// The journal of `command`, which must be accepted.
    fn journal(&mut self, command: Command) -> Vec<Event> {
        let applied = self.accepted(command);
        assert_eq!(applied.events, quota_of(&applied.journal), "events are the journal's");
        applied.journal
    }

    fn place(&mut self, tenant: &str, spec: PlaceSpec) -> Vec<Event> {
        self.journal(Command::Place { tenant: tenant.into(), spec, fence: None })
    }

    fn release(&mut self, tenant: &str, id: &str) -> Vec<Event> {
        let (tenant, placement) = (tenant.into(), id.into());
        self.journal(Command::Release { tenant, placement, fence: None })
    }

    fn tick_after(&mut self, ms: u64) -> Vec<Event> {
        self.advance(ms);
        let applied = self.tick();
        assert_eq!(applied.events, quota_of(&applied.journal), "events are the journal's");
        applied.journal
    }

    fn placement(&self, tenant: &str, id: &str) -> Placement {
        self.s.state().placements[&(tenant.into(), id.into())].clone()
    }

    fn report(&mut self, tenant: &str, id: &str, slot: u32, status: ReportedStatus) -> Vec<Event> {
        let p = self.placement(tenant, id);
        let i = slot as usize;
        self.journal(Command::ReportStatus {
            worker: p.instances[i].clone(),
            tenant: tenant.into(),
            placement: id.into(),
            slot,
            assigned_at: p.slots[i].assigned_at,
            status,
        })
    }
}

fn quota_of(journal: &[Event]) -> Vec<QuotaEvent> {
    journal
        .iter()
        .filter_map(|e| match e {
            Event::Quota(q) => Some(q.clone()),
            _ => None,
        })
        .collect()
}

fn spec(id: &str, cpu_millis: u64) -> PlaceSpec {
    PlaceSpec {
        placement: id.into(),
        count: 1,
        resources: Resources::new(cpu_millis, 1),
        ..PlaceSpec::default()
    }
}

fn on_racks(racks: &[&str]) -> Vec<LabelRequirement> {
    vec![LabelRequirement {
        key: "rack".into(),
        op: LabelOp::In,
        values: racks.iter().map(|r| (*r).to_owned()).collect(),
    }]
}

fn ids(workers: &[&str]) -> Vec<WorkerId> {
    workers.iter().map(|w| WorkerId::from(*w)).collect()
}

fn placed(tenant: &str, id: &str, workers: &[&str], cpu_millis: u64, from_queue: bool) -> Event {
    Event::Placed {
        tenant: tenant.into(),
        placement: id.into(),
        pool: DEFAULT_POOL.into(),
        instances: ids(workers),
        resources: Resources::new(cpu_millis, 1),
        reservation: false,
        from_queue,
        expires_at: None,
    }
}

fn released(tenant: &str, id: &str, workers: &[&str], reason: ReleaseReason) -> Event {
    Event::Released { tenant: tenant.into(), placement: id.into(), instances: ids(workers), reason }
}

fn queued(tenant: &str, id: &str, cause: QueueCause) -> Event {
    Event::Queued { tenant: tenant.into(), placement: id.into(), cause }
}

/// Setting up tenants and workers is reported (admin-scoped for workers), and a placement is
/// one `Placed` naming its workers, with its scope, kind and the workers it touches.
#[test]
fn a_placement_is_one_placed_event() {
    let mut log = Log::new();
    let created =
        log.journal(Command::CreateTenant { tenant: "acme".into(), parent: None, weight: 1 });
    assert_eq!(created, vec![Event::TenantCreated { tenant: "acme".into(), parent: None }]);
    let registered = log.journal(Command::RegisterWorker {
        worker: "w1".into(),
        pool: None,
        capacity: Resources::new(1_000, 1_000),
        labels: Labels::new(),
    });
    let capacity = Resources::new(1_000, 1_000);
    let worker =
        Event::WorkerRegistered { worker: "w1".into(), pool: DEFAULT_POOL.into(), capacity };
    assert_eq!(registered, vec![worker.clone()]);
    assert_eq!((worker.tenant(), worker.kind().name()), (None, "WORKER_REGISTERED"));
    log.worker("w2", "r1", 1_000);

    let journal =
        log.place("acme", PlaceSpec { count: 2, strategy: Strategy::Spread, ..spec("p1", 100) });
    // Spread: the emptiest first, ties to the later id.
    let event = placed("acme", "p1", &["w2", "w1"], 100, false);
    assert_eq!(journal, vec![event.clone()]);
    assert_eq!(event.tenant(), Some(&"acme".into()));
    assert_eq!(event.kind().name(), "PLACED");
    assert_eq!(event.workers(), vec![&WorkerId::from("w2"), &WorkerId::from("w1")]);
    let names: std::collections::BTreeSet<_> = EventKind::ALL.iter().map(|k| k.name()).collect();
    assert_eq!(names.len(), EventKind::ALL.len(), "one name per kind");
}

/// Release, reservation confirm, cancel and expiry each report their one event, with the
/// reason.
#[test]
fn releases_and_reservations_say_why() {
    let mut log = Log::new();
    log.tenant("acme");
    log.worker("w1", "r1", 1_000);
    log.place("acme", spec("p1", 100));
    assert_eq!(
        log.release("acme", "p1"),
        vec![released("acme", "p1", &["w1"], ReleaseReason::Requested)]
    );

    let reserve = |id: &str| Command::Reserve {
        tenant: "acme".into(),
        spec: spec(id, 100),
        ttl_ms: 1_000,
        fence: None,
    };
    let expires_at = Some(UnixMillis(log.now + 1_000));
    let journal = log.journal(reserve("r1"));
    let Event::Placed { reservation, expires_at: at, .. } = &journal[0] else {
        panic!("reserving is placing: {journal:?}")
    };
    assert_eq!((journal.len(), *reservation, *at), (1, true, expires_at));
    let confirm = Command::ConfirmReservation {
        tenant: "acme".into(),
        reservation: "r1".into(),
        fence: None,
    };
    assert_eq!(
        log.journal(confirm),
        vec![Event::Confirmed {
            tenant: "acme".into(),
            placement: "r1".into(),
            instances: vec!["w1".into()]
        }]
    );

    log.journal(reserve("r2"));
    let cancel =
        Command::CancelReservation { tenant: "acme".into(), reservation: "r2".into(), fence: None };
    assert_eq!(
        log.journal(cancel),
        vec![released("acme", "r2", &["w1"], ReleaseReason::Cancelled)]
    );

    log.journal(reserve("r3"));
    assert_eq!(log.tick_after(999), vec![], "not before its time");
    let expired = released("acme", "r3", &["w1"], ReleaseReason::ReservationExpired);
    assert_eq!(log.tick_after(1), vec![expired]);
}

/// A queued placement is `Queued`, then admitted by the release that frees room (`Placed`
/// from the queue, then the `Admitted` quota event); a cancel is one `Dequeued`.
#[test]
fn queueing_admission_and_cancel() {
    let mut log = Log::new();
    log.tenant("acme");
    log.worker("w1", "r1", 1_000);
    log.place("acme", spec("p1", 1_000));
    let queue = |id: &str| Command::PlaceOrQueue {
        tenant: "acme".into(),
        spec: spec(id, 1_000),
        fence: None,
    };
    assert_eq!(log.journal(queue("p2")), vec![queued("acme", "p2", QueueCause::Requested)]);
    assert_eq!(log.journal(queue("p3")), vec![queued("acme", "p3", QueueCause::Requested)]);
    let admitted = QuotaEvent::Admitted { tenant: "acme".into(), placement: "p2".into() };
    assert_eq!(
        log.release("acme", "p1"),
        vec![
            released("acme", "p1", &["w1"], ReleaseReason::Requested),
            placed("acme", "p2", &["w1"], 1_000, true),
            Event::Quota(admitted),
        ]
    );
    let cancel = Command::CancelQueued { tenant: "acme".into(), placement: "p3".into() };
    assert_eq!(
        log.journal(cancel),
        vec![Event::Dequeued { tenant: "acme".into(), placement: "p3".into() }]
    );

    // Room at once: queued and admitted by the same entry, in that order.
    log.worker("w2", "r1", 1_000);
    let journal = log.journal(queue("p4"));
    let kinds: Vec<_> = journal.iter().map(|e| e.kind().name()).collect();
    assert_eq!(kinds, ["QUEUED", "PLACED", "QUOTA"]);
}

/// A preemption releases its victim (reason: by whom), reports the quota event, places the
/// preemptor and queues the victim again; the victim search on a copy emits nothing.
#[test]
fn preemption_releases_and_requeues_its_victim() {
    let mut log = Log::new();
    log.tenant("acme");
    log.worker("w1", "r1", 1_000);
    let quota = Quota { preemption: Some(Preemption::SameTenant), ..Quota::default() };
    log.accepted(Command::SetQuota { tenant: "acme".into(), quota });
    log.place("acme", PlaceSpec { requeue_on_preemption: true, ..spec("low", 1_000) });
    let journal = log.place("acme", PlaceSpec { priority: 10, ..spec("high", 1_000) });
    let reason = ReleaseReason::Preempted {
        by_tenant: "acme".into(),
        by_placement: "high".into(),
        reclaimed: false,
    };
    assert_eq!(reason.reason(), "PREEMPTED");
    assert_eq!(
        journal,
        vec![
            released("acme", "low", &["w1"], reason),
            Event::Quota(QuotaEvent::Preempted {
                tenant: "acme".into(),
                placement: "low".into(),
                by_tenant: "acme".into(),
                by_placement: "high".into(),
                reclaimed: false,
                requeued: true,
            }),
            placed("acme", "high", &["w1"], 1_000, false),
            queued("acme", "low", QueueCause::Preempted),
        ]
    );
}

/// A worker going down is `WorkerDown`, then each affected placement in (tenant, id) order:
/// released `WORKER_LOST` where it cannot move, `Rescheduled` where it can; a revival is one
/// `WorkerRevived`.
#[test]
fn a_down_worker_reschedules_and_releases() {
    let mut log = Log::new();
    log.tenant("acme");
    log.worker("w1", "a", 1_000);
    log.worker("w2", "b", 1_000);
    log.journal(Command::Heartbeat { workers: ids(&["w1"]) });
    log.place("acme", PlaceSpec { worker_requires: on_racks(&["a"]), ..spec("p1", 500) });
    log.place("acme", PlaceSpec { worker_requires: on_racks(&["a", "b"]), ..spec("p2", 500) });
    assert_eq!(log.placement("acme", "p2").instances, ids(&["w1"]));

    assert_eq!(
        log.tick_after(WORKER_TTL_DEFAULT_MS),
        vec![
            Event::WorkerDown { worker: "w1".into(), instances_lost: 2 },
            released("acme", "p1", &["w1"], ReleaseReason::WorkerLost),
            Event::Rescheduled {
                tenant: "acme".into(),
                placement: "p2".into(),
                moves: vec![(0, "w1".into(), "w2".into())],
            },
        ]
    );
    assert_eq!(
        log.journal(Command::Heartbeat { workers: ids(&["w1"]) }),
        vec![Event::WorkerRevived { worker: "w1".into() }]
    );
    assert_eq!(
        log.journal(Command::Heartbeat { workers: ids(&["w1", "w2"]) }),
        vec![],
        "heartbeats alone are silent"
    );
}

/// A time limit releases with reason `TIME_LIMIT`, at exactly its log time.
#[test]
fn a_time_limit_is_a_release() {
    let mut log = Log::new();
    log.tenant("acme");
    log.worker("w1", "r1", 1_000);
    log.place("acme", PlaceSpec { max_runtime_ms: Some(1_000), ..spec("p1", 100) });
    assert_eq!(log.tick_after(999), vec![]);
    assert_eq!(log.tick_after(1), vec![released("acme", "p1", &["w1"], ReleaseReason::TimeLimit)]);
}

/// Reports: the first `Running` and each first `Completed` of a slot are events, repeats are
/// not; the last completion and a failure release the placement with their reason.
#[test]
fn reports_are_events_once() {
    let mut log = Log::new();
    log.tenant("acme");
    log.worker("w1", "r1", 1_000);
    log.worker("w2", "r1", 1_000);
    log.place("acme", PlaceSpec { count: 2, strategy: Strategy::Spread, ..spec("p1", 100) });
    let at = |slot: u32, worker: &str| ("acme".into(), "p1".into(), slot, WorkerId::from(worker));
    let running = |(tenant, placement, slot, worker)| Event::InstanceRunning {
        tenant,
        placement,
        slot,
        worker,
    };
    let completed = |(tenant, placement, slot, worker)| Event::InstanceCompleted {
        tenant,
        placement,
        slot,
        worker,
    };

    assert_eq!(log.report("acme", "p1", 0, ReportedStatus::Running), vec![running(at(0, "w2"))]);
    assert_eq!(log.report("acme", "p1", 0, ReportedStatus::Running), vec![], "once");
    assert_eq!(
        log.report("acme", "p1", 0, ReportedStatus::Completed),
        vec![completed(at(0, "w2"))]
    );
    assert_eq!(log.report("acme", "p1", 0, ReportedStatus::Completed), vec![], "once");
    assert_eq!(
        log.report("acme", "p1", 1, ReportedStatus::Completed),
        vec![
            completed(at(1, "w1")),
            released("acme", "p1", &["w2", "w1"], ReleaseReason::Completed)
        ]
    );

    log.place("acme", spec("p2", 100));
    let failed = ReportedStatus::Failed { exit_code: 3, message: "oom".into() };
    let worker = log.placement("acme", "p2").instances[0].clone();
    let journal = log.report("acme", "p2", 0, failed);
    let reason = ReleaseReason::Failed { exit_code: 3 };
    assert_eq!(
        reason.reason(),
        FinishedState::Failed { exit_code: 3, message: String::new() }.reason()
    );
    assert_eq!(
        journal,
        vec![
            Event::InstanceFailed {
                tenant: "acme".into(),
                placement: "p2".into(),
                slot: 0,
                worker: worker.clone(),
                exit_code: 3
            },
            released("acme", "p2", &[worker.as_str()], reason),
        ]
    );
}

/// Leases: a grant, a release and an expiry are one event each (with the token); keep-alives
/// emit nothing.
#[test]
fn leases_are_granted_released_and_expire() {
    let mut log = Log::new();
    log.tenant("acme");
    let acquire = |lease: &str| Command::AcquireLease {
        tenant: "acme".into(),
        lease: lease.into(),
        holder: "me".into(),
        ttl_ms: 1_000,
    };
    let expires_at = UnixMillis(log.now + 1_000);
    let journal = log.journal(acquire("l1"));
    let token = LogIndex(log.index);
    let granted = Event::LeaseGranted {
        tenant: "acme".into(),
        lease: "l1".into(),
        holder: "me".into(),
        token,
        expires_at,
    };
    assert_eq!(journal, vec![granted]);
    let keep = Command::KeepAliveLease { tenant: "acme".into(), lease: "l1".into(), token };
    assert_eq!(log.journal(keep), vec![], "keep-alives are silent");
    let release = Command::ReleaseLease { tenant: "acme".into(), lease: "l1".into(), token };
    assert_eq!(
        log.journal(release),
        vec![Event::LeaseReleased { tenant: "acme".into(), lease: "l1".into(), token }]
    );

    log.journal(acquire("l2"));
    let token = LogIndex(log.index);
    assert_eq!(
        log.tick_after(1_000),
        vec![Event::LeaseExpired { tenant: "acme".into(), lease: "l2".into(), token }]
    );
}

/// Quota events are journal events too, after the change that caused them, and
/// `Applied::events` is exactly them in order.
#[test]
fn quota_events_follow_their_cause() {
    let mut log = Log::new();
    log.tenant("acme");
    log.worker("w1", "r1", 1_000);
    let soft = SoftLimits {
        cpu_millis: Some(SoftLimit { soft: 500, burst: 1_000 }),
        ..SoftLimits::default()
    };
    let quota = Quota { soft, grace_ms: Some(1_000), ..Quota::default() };
    log.accepted(Command::SetQuota { tenant: "acme".into(), quota });
    let entered = QuotaEvent::BurstEntered {
        tenant: "acme".into(),
        grace_ends_at: UnixMillis(log.now + 1_000),
    };
    assert_eq!(
        log.place("acme", spec("p1", 800)),
        vec![placed("acme", "p1", &["w1"], 800, false), Event::Quota(entered)]
    );
    assert_eq!(
        log.tick_after(1_000),
        vec![Event::Quota(QuotaEvent::GraceExpired { tenant: "acme".into() })]
    );
    assert_eq!(
        log.release("acme", "p1"),
        vec![
            released("acme", "p1", &["w1"], ReleaseReason::Requested),
            Event::Quota(QuotaEvent::ReturnedUnderSoft { tenant: "acme".into() }),
        ]
    );
}

/// Deleting a tenant is one `TenantDeleted`, however much it held; a worker's drain, undrain
/// and removal (with its evictions first) are reported, a drain that changes nothing is not.
#[test]
fn tenant_deletion_and_worker_changes() {
    let mut log = Log::new();
    log.tenant("acme");
    log.tenant("beta");
    log.worker("w1", "r1", 1_000);
    log.place("acme", spec("p1", 1_000));
    log.accepted(Command::PlaceOrQueue {
        tenant: "acme".into(),
        spec: spec("p2", 1_000),
        fence: None,
    });
    log.accepted(Command::AcquireLease {
        tenant: "acme".into(),
        lease: "l1".into(),
        holder: "me".into(),
        ttl_ms: 1_000,
    });
    log.accepted(Command::PlaceOrQueue {
        tenant: "beta".into(),
        spec: spec("b1", 1_000),
        fence: None,
    });
    assert_eq!(
        log.journal(Command::DeleteTenant { tenant: "acme".into() }),
        vec![
            Event::TenantDeleted { tenant: "acme".into() },
            placed("beta", "b1", &["w1"], 1_000, true),
            Event::Quota(QuotaEvent::Admitted { tenant: "beta".into(), placement: "b1".into() }),
        ]
    );

    let drain = |schedulable| Command::SetWorkerSchedulable { worker: "w1".into(), schedulable };
    assert_eq!(log.journal(drain(false)), vec![Event::WorkerDrained { worker: "w1".into() }]);
    assert_eq!(log.journal(drain(false)), vec![], "already drained");
    assert_eq!(log.journal(drain(true)), vec![Event::WorkerUndrained { worker: "w1".into() }]);
    assert_eq!(
        log.journal(Command::RemoveWorker { worker: "w1".into(), evict: true }),
        vec![
            released("beta", "b1", &["w1"], ReleaseReason::Evicted),
            Event::WorkerRemoved { worker: "w1".into() },
        ]
    );
}

/// A refused command emits nothing, though its entry's own expiry still does; a replayed
/// request id emits nothing; a dry run leaves nothing behind (its quota events are its own).
#[test]
fn refusals_replays_and_dry_runs_emit_nothing() {
    let mut log = Log::new();
    log.tenant("acme");
    log.worker("w1", "r1", 1_000);
    let too_big = Command::Place { tenant: "acme".into(), spec: spec("p1", 2_000), fence: None };
    let applied = log.apply(too_big.clone());
    assert!(applied.result.is_err());
    assert_eq!(applied.journal, vec![]);

    let acquire = Command::AcquireLease {
        tenant: "acme".into(),
        lease: "l1".into(),
        holder: "me".into(),
        ttl_ms: 1_000,
    };
    log.accepted(acquire);
    let token = LogIndex(log.index);
    log.advance(1_000);
    let applied = log.apply(too_big);
    assert!(applied.result.is_err());
    assert_eq!(
        applied.journal,
        vec![Event::LeaseExpired { tenant: "acme".into(), lease: "l1".into(), token }]
    );

    let place = Command::Place { tenant: "acme".into(), spec: spec("p2", 100), fence: None };
    let first = log.apply_as("once", place.clone());
    assert_eq!(first.journal, vec![placed("acme", "p2", &["w1"], 100, false)]);
    let again = log.apply_as("once", place);
    assert!(again.replayed);
    assert_eq!(again.journal, vec![], "reported by the entry that did it");

    let soft = SoftLimits {
        cpu_millis: Some(SoftLimit { soft: 100, burst: 1_000 }),
        ..SoftLimits::default()
    };
    log.accepted(Command::SetQuota {
        tenant: "acme".into(),
        quota: Quota { soft, grace_ms: Some(1_000), ..Quota::default() },
    });
    let decision = log.s.dry_run(&"acme".into(), spec("p3", 100));
    assert!(decision.result.is_ok());
    assert_eq!(decision.events.len(), 1, "a dry run tells its quota events: {:?}", decision.events);
    assert_eq!(log.tick().journal, vec![], "and leaves none behind");
}
