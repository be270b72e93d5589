//! Workers that live and die in log time, through the core's public interface: heartbeats and
//! per-pool TTLs, down exactly when a TTL passes, a new leader's grace, draining versus down,
//! lost instances rescheduled under every rule of their spec or released `WORKER_LOST` (or
//! queued again), and revived workers that hold nothing. Every test asserts the invariants
//! after every command (the shared harness does).

use berth::scheduler::*;

mod core_harness;
use core_harness::Log;

const DEFAULT: &str = "default";

impl Log {
    fn tenant(&mut self, id: &str) {
        self.accepted(Command::CreateTenant { tenant: id.into(), parent: None, weight: 1 });
    }

    /// A worker with `cpu_millis` and plenty of memory, labelled `rack=<rack>`.
    fn worker(&mut self, id: &str, rack: &str, cpu_millis: u64) {
        let mut labels = Labels::new();
        labels.insert("rack".into(), rack.into());
        self.accepted(Command::RegisterWorker {
            worker: id.into(),
            pool: None,
            capacity: Resources::new(cpu_millis, 100_000),
            labels,
        });
    }

    fn heartbeat(&mut self, workers: &[&str]) -> Vec<Option<HeartbeatAck>> {
        let workers = workers.iter().map(|w| WorkerId::from(*w)).collect();
        match self.ok(Command::Heartbeat { workers }) {
            Response::Heartbeats(acks) => acks,
            other => panic!("heartbeat answered {other:?}"),
        }
    }

    fn place_spec(&mut self, tenant: &str, spec: PlaceSpec) -> Placement {
        match self.ok(Command::Place { tenant: tenant.into(), spec, fence: None }) {
            Response::Placed(p) => p,
            other => panic!("place answered {other:?}"),
        }
    }

    /// Moves log time by `ms` and ticks.
    fn tick_after(&mut self, ms: u64) -> Applied {
        self.advance(ms);
        self.tick()
    }

    fn placement(&self, tenant: &str, id: &str) -> Option<&Placement> {
        self.s.state().placements.get(&(tenant.into(), id.into()))
    }

    fn worker_state(&self, id: &str) -> &Worker {
        &self.s.state().workers[&WorkerId::from(id)]
    }

    fn pool_capacity(&self) -> Resources {
        self.s.pool_status(&DEFAULT.into()).map(|p| p.capacity).unwrap_or_default()
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

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

fn on_racks(racks: &[&str]) -> Vec<LabelRequirement> {
    vec![LabelRequirement {
        key: "rack".into(),
        op: LabelOp::In,
        values: racks.iter().map(|r| (*r).to_owned()).collect(),
    }]
}

fn down(worker: &str) -> Expired {
    Expired::Worker { worker: worker.into() }
}

fn ids(workers: &[&str]) -> Vec<WorkerId> {
    workers.iter().map(|w| WorkerId::from(*w)).collect()
}

/// A managed worker is ready up to the millisecond before its TTL passes and down at it: its
/// capacity leaves the pool's, and a hand-registered worker that never heartbeats stays up.
#[test]
fn a_worker_goes_down_exactly_when_its_ttl_passes() {
    let mut log = Log::new();
    log.worker("w1", "r1", 1_000);
    log.worker("w2", "r2", 2_000);
    let start = log.now;
    let acks = log.heartbeat(&["w1", "ghost", "w1"]);
    let until = UnixMillis(start + WORKER_TTL_DEFAULT_MS);
    assert_eq!(acks.len(), 3, "one answer per listed id, in order");
    assert_eq!(acks[1], None, "an unknown worker is answered None");
    let ack = acks[0].clone().expect("w1 is known");
    assert_eq!((ack.alive_until, ack.ttl_ms, ack.revived), (until, WORKER_TTL_DEFAULT_MS, false));
    assert_eq!(acks[2], acks[0], "a repeated id gets the same answer");
    assert_eq!(log.s.next_deadline(), Some(until));

    assert!(log.tick_after(WORKER_TTL_DEFAULT_MS - 1).expired.is_empty(), "1 ms before");
    assert_eq!(log.pool_capacity(), Resources::new(3_000, 200_000));
    let tick = log.tick_after(1);
    assert_eq!(tick.expired, vec![down("w1")]);
    assert_eq!(log.worker_state("w1").down_since, Some(until));
    assert_eq!(log.pool_capacity(), Resources::new(2_000, 100_000), "w1's capacity is out");
    assert_eq!(log.s.next_deadline(), None, "a down worker has no deadline");

    // The hand-registered worker never goes down, however long nobody heartbeats it.
    assert!(log.tick_after(365 * 24 * 3_600_000).expired.is_empty());
    assert!(log.worker_state("w2").down_since.is_none());
}

/// A worker's lost instance moves to the one worker that keeps the spec's anti-affinity: not
/// the worker of its sibling instance, nor the one running another workload it repels; the
/// surviving instance stays, and usage does not change.
#[test]
fn a_lost_instance_moves_where_anti_affinity_allows() {
    let mut log = Log::new();
    log.tenant("acme");
    for (w, rack) in [("w1", "r1"), ("w2", "r2"), ("w3", "r3"), ("w4", "r4")] {
        log.worker(w, rack, 4_000);
    }
    let cache = PlaceSpec {
        labels: labels(&[("app", "web")]),
        worker_requires: on_racks(&["r3"]),
        ..spec("cache", 500)
    };
    assert_eq!(log.place_spec("acme", cache).instances, ids(&["w3"]));
    let web = PlaceSpec {
        count: 2,
        labels: labels(&[("app", "web")]),
        anti_affinity: vec![LabelTerm::new("app", "web")],
        ..spec("web", 1_000)
    };
    assert_eq!(log.place_spec("acme", web).instances, ids(&["w1", "w2"]));
    let usage = log.s.state().tenants[&TenantId::from("acme")].usage.clone();

    log.heartbeat(&["w1"]);
    let tick = log.tick_after(WORKER_TTL_DEFAULT_MS);
    assert_eq!(tick.expired, vec![down("w1")]);
    // Bin-pack alone would pick w2 or w3 (fuller than w4): anti-affinity rules them out.
    assert_eq!(
        tick.lost,
        vec![Lost {
            tenant: "acme".into(),
            placement: "web".into(),
            slots: vec![0],
            outcome: LostOutcome::Rescheduled { moves: vec![(0, "w1".into(), "w4".into())] },
        }]
    );
    let moved = log.placement("acme", "web").expect("still placed");
    assert_eq!(moved.instances, ids(&["w4", "w2"]), "slot order kept, the survivor stays");
    assert_eq!(log.worker_state("w1").allocated, Resources::ZERO);
    assert_eq!(log.worker_state("w4").allocated, Resources::new(1_000, 1));
    assert_eq!(log.s.state().tenants[&TenantId::from("acme")].usage, usage, "usage unchanged");
}

/// A moved instance carries its labels to its new worker, so a queued placement that requires
/// them beside it (a required affinity) is admitted in the same step. (Found by
/// `invariants_hold_after_every_step`: the move freed nothing, so the queue was not offered it.)
#[test]
fn a_moved_instance_brings_its_affinity_to_the_queue_at_once() {
    let mut log = Log::new();
    log.tenant("acme");
    log.worker("w1", "r1", 1_000);
    let anchor = PlaceSpec { labels: labels(&[("app", "web")]), ..spec("anchor", 500) };
    assert_eq!(log.place_spec("acme", anchor).instances, ids(&["w1"]));
    log.worker("w2", "r2", 4_000);
    let beside =
        PlaceSpec { affinity: vec![LabelTerm::new("app", "web")], ..spec("beside", 1_000) };
    let queued =
        log.apply(Command::PlaceOrQueue { tenant: "acme".into(), spec: beside, fence: None });
    assert!(matches!(queued.result, Ok(Response::Queued(_))), "{:?}", queued.result);

    log.heartbeat(&["w1"]);
    let tick = log.tick_after(WORKER_TTL_DEFAULT_MS);
    assert_eq!(tick.expired, vec![down("w1")]);
    assert_eq!(log.placement("acme", "anchor").expect("moved").instances, ids(&["w2"]));
    let admitted = tick.events.iter().any(
        |e| matches!(e, QuotaEvent::Admitted { placement, .. } if placement.as_str() == "beside"),
    );
    assert!(admitted, "not admitted with its anchor: {:?}", tick.events);
    assert_eq!(log.placement("acme", "beside").expect("placed").instances, ids(&["w2"]));
}

/// A spread group's lost instance never joins a sibling, and required worker labels hold.
#[test]
fn a_lost_instance_keeps_its_group_spread_and_required_labels() {
    let mut log = Log::new();
    log.tenant("acme");
    for (w, rack) in [("w1", "r1"), ("w2", "r2"), ("w3", "r3"), ("w4", "r4")] {
        log.worker(w, rack, 4_000);
    }
    log.accepted(Command::CreatePlacementGroup {
        tenant: "acme".into(),
        group: "g".into(),
        max_instances: 3,
        strategy: GroupStrategy::Spread,
    });
    let spread = PlaceSpec {
        count: 2,
        group: Some("g".into()),
        worker_requires: on_racks(&["r1", "r2", "r4"]),
        ..spec("spread", 1_000)
    };
    assert_eq!(log.place_spec("acme", spread).instances, ids(&["w1", "w2"]));
    // w3 is the fullest that fits, but its rack is not allowed; w2 holds a sibling.
    log.place_spec("acme", PlaceSpec { worker_requires: on_racks(&["r3"]), ..spec("x", 2_500) });
    log.heartbeat(&["w2"]);
    let tick = log.tick_after(WORKER_TTL_DEFAULT_MS);
    let moves = vec![(1, "w2".into(), "w4".into())];
    assert_eq!(tick.lost[0].outcome, LostOutcome::Rescheduled { moves });
    assert_eq!(
        log.placement("acme", "spread").map(|p| p.instances.clone()),
        Some(ids(&["w1", "w4"]))
    );
}

/// Where a lost instance fits nowhere, its placement is released with reason `WORKER_LOST`,
/// its quota and capacity freed exactly; with `OnWorkerLost::Release` it is released even
/// where it would fit.
#[test]
fn a_loss_that_cannot_fit_is_released_worker_lost() {
    let mut log = Log::new();
    log.tenant("acme");
    log.worker("w1", "r1", 1_000);
    log.worker("w2", "r2", 2_000);
    assert_eq!(log.place_spec("acme", spec("big", 800)).instances, ids(&["w1"]));
    let gone = PlaceSpec { on_worker_lost: OnWorkerLost::Release, ..spec("gone", 100) };
    assert_eq!(log.place_spec("acme", gone).instances, ids(&["w1"]));
    assert_eq!(log.place_spec("acme", spec("other", 1_500)).instances, ids(&["w2"]));
    log.heartbeat(&["w1", "w2"]);
    log.advance(WORKER_TTL_DEFAULT_MS - 10);
    log.heartbeat(&["w2"]);
    let tick = log.tick_after(10);
    assert_eq!(tick.expired, vec![down("w1")]);
    let outcomes: Vec<(&str, &LostOutcome)> =
        tick.lost.iter().map(|l| (l.placement.as_str(), &l.outcome)).collect();
    assert_eq!(
        outcomes,
        vec![("big", &LostOutcome::Released), ("gone", &LostOutcome::Released)],
        "800 does not fit in w2's 500 free; `gone` asked to be released (it would fit)"
    );
    assert_eq!(tick.lost[0].outcome.reason(), Some("WORKER_LOST"));
    assert!(log.placement("acme", "big").is_none() && log.placement("acme", "gone").is_none());
    let usage = &log.s.state().tenants[&TenantId::from("acme")].usage.total;
    assert_eq!((usage.cpu_millis, usage.instances), (1_500, 1), "only `other` is counted");
}

/// Work that came through the queue is queued again when its loss cannot be rescheduled, and
/// a revived worker comes back ready with a new generation, holding nothing until the queue
/// places that work on it anew.
#[test]
fn lost_queued_work_waits_and_a_revived_worker_holds_nothing() {
    let mut log = Log::new();
    log.tenant("acme");
    log.worker("w1", "r1", 1_000);
    log.worker("w2", "r2", 1_000);
    let queued = log.ok(Command::PlaceOrQueue {
        tenant: "acme".into(),
        spec: spec("job", 800),
        fence: None,
    });
    assert!(
        matches!(queued, Response::Placed(p) if p.queue_if_unavailable && p.instances == ids(&["w1"]))
    );
    log.place_spec("acme", spec("fill", 900));
    assert_eq!(log.placement("acme", "fill").map(|p| p.instances.clone()), Some(ids(&["w2"])));
    log.heartbeat(&["w1"]);
    let tick = log.tick_after(WORKER_TTL_DEFAULT_MS);
    assert_eq!(tick.lost[0].outcome, LostOutcome::Queued);
    assert!(log.s.state().queue.contains_key(&("acme".into(), "job".into())));
    assert!(log.placement("acme", "job").is_none());

    let generation = LogIndex(log.index + 1);
    let ack = log.heartbeat(&["w1"])[0].clone().expect("known");
    assert!(ack.revived && ack.generation == generation && !ack.drained);
    assert!(log.worker_state("w1").down_since.is_none());
    // The revival offered w1 to the queue in the same entry: the job is placed anew.
    let job = log.placement("acme", "job").expect("admitted onto the revived worker");
    assert_eq!((job.instances.clone(), job.log_index), (ids(&["w1"]), generation));
    assert!(log.s.state().queue.is_empty());
}

/// A heartbeat in the very entry whose log time passes the TTL is too late: expiry runs first,
/// the work moves, and the heartbeat revives an empty worker.
#[test]
fn a_heartbeat_at_the_deadline_revives_an_empty_worker() {
    let mut log = Log::new();
    log.tenant("acme");
    log.worker("w1", "r1", 1_000);
    log.worker("w2", "r2", 1_000);
    log.place_spec("acme", spec("a", 500));
    log.heartbeat(&["w1"]);
    log.advance(WORKER_TTL_DEFAULT_MS);
    let late = log.apply(Command::Heartbeat { workers: ids(&["w1"]) });
    assert_eq!(late.expired, vec![down("w1")]);
    let moves = vec![(0, "w1".into(), "w2".into())];
    assert_eq!(late.lost[0].outcome, LostOutcome::Rescheduled { moves });
    let Ok(Response::Heartbeats(acks)) = late.result else { panic!("{:?}", late.result) };
    assert!(acks[0].as_ref().is_some_and(|a| a.revived));
    assert_eq!(log.worker_state("w1").allocated, Resources::ZERO, "never its old placements");
    assert_eq!(log.placement("acme", "a").map(|p| p.instances.clone()), Some(ids(&["w2"])));
}

/// A new leader lifts every managed worker's TTL to its grace floor, so a fast new clock cannot
/// take a worker down early; a worker TTL set per pool applies from the next heartbeat.
#[test]
fn a_leader_change_extends_worker_ttls() {
    let mut log = Log::new();
    log.worker("w1", "r1", 1_000);
    log.worker("w2", "r2", 1_000);
    log.accepted(Command::SetPoolWorkerTtl { pool: DEFAULT.into(), ttl_ms: Some(2_000) });
    let start = log.now;
    log.heartbeat(&["w1", "w2"]);
    log.advance(1_500);
    log.heartbeat(&["w2"]);
    log.advance(400);
    // Grace 5,000 from t+1,900: both lifted to start + 6,900.
    log.ok(Command::LeaderChanged);
    let floor = UnixMillis(start + 1_900 + Config::default().lease_grace_ms);
    for w in ["w1", "w2"] {
        assert_eq!(log.worker_state(w).liveness.map(|l| l.alive_until), Some(floor), "{w}");
    }
    let wait = floor.0 - log.now - 1;
    assert!(log.tick_after(wait).expired.is_empty(), "not before the floor");
    assert_eq!(log.tick_after(1).expired, vec![down("w1"), down("w2")]);
}

/// Draining and down are separate: a drained worker that heartbeats keeps its work and never
/// goes down; a drained worker whose TTL passes loses its work like any other; a drained worker
/// revived stays drained (alive, no new work).
#[test]
fn drained_is_not_down() {
    let mut log = Log::new();
    log.tenant("acme");
    log.worker("w1", "r1", 1_000);
    log.worker("w2", "r2", 1_000);
    log.place_spec("acme", spec("a", 500));
    log.accepted(Command::SetWorkerSchedulable { worker: "w1".into(), schedulable: false });
    for _ in 0..3 {
        log.heartbeat(&["w1"]);
        assert!(log.tick_after(WORKER_TTL_DEFAULT_MS - 1).expired.is_empty());
    }
    assert_eq!(log.placement("acme", "a").map(|p| p.instances.clone()), Some(ids(&["w1"])));
    let tick = log.tick_after(1);
    assert_eq!(tick.expired, vec![down("w1")]);
    assert_eq!(log.placement("acme", "a").map(|p| p.instances.clone()), Some(ids(&["w2"])));
    let ack = log.heartbeat(&["w1"])[0].clone().expect("known");
    assert!(ack.revived && ack.drained);
    let w1 = log.worker_state("w1");
    assert!(!w1.accepts_work() && w1.down_since.is_none());
    let history: Vec<WorkerState> = w1.history.iter().map(|h| h.state).collect();
    use WorkerState::{Down, Drained, Registered, Revived};
    assert_eq!(history, vec![Registered, Drained, Down, Revived], "drained and down apart");
    assert_eq!(log.pool_capacity(), Resources::new(1_000, 100_000), "drained w1 stays out");
}

/// A loss re-settles share-of-pool soft limits (the pool shrank), with their events, in the
/// entry that marks the worker down.
#[test]
fn a_down_worker_shrinks_share_of_pool_soft_limits() {
    let mut log = Log::new();
    log.tenant("acme");
    log.worker("w1", "r1", 1_000);
    log.worker("w2", "r2", 1_000);
    let quota = Quota {
        soft_share: Some(SoftShare {
            pool: DEFAULT.into(),
            soft_per_mille: 400,
            burst_per_mille: 1_000,
        }),
        grace_ms: Some(60_000),
        ..Quota::default()
    };
    log.accepted(Command::SetQuota { tenant: "acme".into(), quota });
    log.place_spec("acme", PlaceSpec { worker_requires: on_racks(&["r2"]), ..spec("a", 600) });
    log.heartbeat(&["w1"]);
    let tick = log.tick_after(WORKER_TTL_DEFAULT_MS);
    assert_eq!(tick.expired, vec![down("w1")]);
    assert!(tick.lost.is_empty(), "w1 held nothing");
    let grace_ends_at = UnixMillis(log.now + 60_000);
    assert_eq!(
        tick.events,
        vec![QuotaEvent::BurstEntered { tenant: "acme".into(), grace_ends_at }],
        "600 of a 1,000 pool is above 40 %"
    );
}

/// Bounds: a heartbeat lists 1..=HEARTBEATS_PER_ENTRY_MAX valid ids and a pool TTL is within
/// its bounds, or nothing happens; one entry marks at most WORKERS_DOWN_PER_ENTRY_MAX workers
/// down, the rest are still due and go in the next entry.
#[test]
fn worker_liveness_is_bounded() {
    let mut log = Log::new();
    let invalid = |r: &Rejection| matches!(r, Rejection::InvalidArgument { .. });
    assert!(invalid(&log.err(Command::Heartbeat { workers: Vec::new() })));
    let too_many = vec![WorkerId::from("w"); HEARTBEATS_PER_ENTRY_MAX + 1];
    assert!(invalid(&log.err(Command::Heartbeat { workers: too_many })));
    assert!(invalid(&log.err(Command::Heartbeat { workers: ids(&["bad id"]) })));
    for ttl in [WORKER_TTL_MIN_MS - 1, WORKER_TTL_MAX_MS + 1, 0, u64::MAX] {
        let set = Command::SetPoolWorkerTtl { pool: DEFAULT.into(), ttl_ms: Some(ttl) };
        assert!(invalid(&log.err(set)), "ttl {ttl}");
    }
    for ttl in [WORKER_TTL_MIN_MS, WORKER_TTL_MAX_MS] {
        log.accepted(Command::SetPoolWorkerTtl { pool: DEFAULT.into(), ttl_ms: Some(ttl) });
    }
    log.accepted(Command::SetPoolWorkerTtl { pool: DEFAULT.into(), ttl_ms: None });
    assert!(log.s.state().pool_worker_ttls.is_empty());

    let n = WORKERS_DOWN_PER_ENTRY_MAX + 44;
    let names: Vec<String> = (0..n).map(|i| format!("w{i:03}")).collect();
    for name in &names {
        log.worker(name, "r", 1_000);
    }
    let all: Vec<&str> = names.iter().map(String::as_str).collect();
    assert!(log.heartbeat(&all).iter().all(Option::is_some));
    let first = log.tick_after(WORKER_TTL_DEFAULT_MS);
    assert_eq!(first.expired.len(), WORKERS_DOWN_PER_ENTRY_MAX);
    assert!(log.s.next_deadline().is_some_and(|at| at.0 <= log.now), "the rest are still due");
    let second = log.tick();
    assert_eq!(second.expired.len(), 44);
    assert_eq!(log.s.next_deadline(), None);
    assert_eq!(log.pool_capacity(), Resources::ZERO);
}

/// A down worker holds nothing, so removing it needs no eviction; its id may heartbeat no more.
#[test]
fn a_down_worker_can_be_removed() {
    let mut log = Log::new();
    log.tenant("acme");
    log.worker("w1", "r1", 1_000);
    log.worker("w2", "r2", 1_000);
    log.place_spec("acme", spec("a", 100));
    log.heartbeat(&["w1"]);
    log.tick_after(WORKER_TTL_DEFAULT_MS);
    let removed = log.ok(Command::RemoveWorker { worker: "w1".into(), evict: false });
    assert_eq!(removed, Response::WorkerRemoved { evicted: Vec::new() });
    assert_eq!(log.heartbeat(&["w1"]), vec![None]);
}

// ----- placement lifecycle: reports, time limits, finished records ----------------------------

impl Log {
    fn report(
        &mut self,
        worker: &str,
        id: &str,
        slot: u32,
        assigned_at: LogIndex,
        status: ReportedStatus,
    ) -> Result<Response, Rejection> {
        self.apply(Command::ReportStatus {
            worker: worker.into(),
            tenant: "acme".into(),
            placement: id.into(),
            slot,
            assigned_at,
            status,
        })
        .result
    }

    fn finished(&self, id: &str) -> Option<&Finished> {
        self.s.state().finished.get(&("acme".into(), id.into()))
    }
}

/// A time limit releases its placement at exactly `placed_at + max_runtime_ms` in log time,
/// freeing capacity and quota, and leaves a `TimedOut` record; a new leader does not extend it.
#[test]
fn a_time_limit_releases_at_exactly_its_log_time() {
    let mut log = Log::new();
    log.tenant("acme");
    log.worker("w1", "r1", 1_000);
    let placed =
        log.place_spec("acme", PlaceSpec { max_runtime_ms: Some(5_000), ..spec("job", 400) });
    let at = placed.placed_at.plus_ms(5_000);
    assert_eq!(placed.time_limit_at, Some(at));
    assert_eq!(log.s.next_deadline(), Some(at));
    log.advance(4_000);
    log.ok(Command::LeaderChanged);
    assert!(log.tick_after(999).expired.is_empty(), "1 ms before its limit");
    assert!(log.placement("acme", "job").is_some());
    let tick = log.tick_after(1);
    let timed_out = Expired::TimeLimit { tenant: "acme".into(), placement: "job".into() };
    assert_eq!(tick.expired, vec![timed_out]);
    assert!(log.placement("acme", "job").is_none());
    assert_eq!(log.worker_state("w1").allocated, Resources::ZERO);
    assert_eq!(log.s.state().tenants[&TenantId::from("acme")].usage.total.cpu_millis, 0);
    let record = log.finished("job").expect("kept");
    assert_eq!((record.state.reason(), record.ended_at), ("TIME_LIMIT", at));
    // Noticed late (the next entry comes 250 ms after the limit), it still ended at its limit.
    let late = log.place_spec("acme", PlaceSpec { max_runtime_ms: Some(100), ..spec("late", 400) });
    log.tick_after(350);
    let record = log.finished("late").expect("kept");
    assert_eq!(record.ended_at, late.placed_at.plus_ms(100));
    let spec_bad = PlaceSpec { max_runtime_ms: Some(0), ..spec("bad", 1) };
    let refused = log.err(Command::Place { tenant: "acme".into(), spec: spec_bad, fence: None });
    assert!(
        matches!(refused, Rejection::InvalidArgument { field, .. } if field == "max_runtime_ms")
    );
}

/// Reports are fenced by the slot's worker and `assigned_at`: running is recorded once, a gang
/// is released only when every instance completed, a failure releases it at once, a
/// reservation takes no report, and a report for a slot that moved off a down worker is stale.
#[test]
fn reports_are_fenced_and_end_placements() {
    let mut log = Log::new();
    log.tenant("acme");
    log.worker("w1", "r1", 1_000);
    log.worker("w2", "r2", 1_000);
    let gang = log.place_spec("acme", PlaceSpec { count: 2, ..spec("gang", 600) });
    let (at, on) = (gang.log_index, gang.instances.clone());
    assert_eq!(gang.slots.iter().map(|s| s.assigned_at).collect::<Vec<_>>(), vec![at, at]);

    let stale = log.report(on[0].as_str(), "gang", 0, LogIndex(at.0 - 1), ReportedStatus::Running);
    assert_eq!(stale.expect_err("stale").reason(), "STALE_ASSIGNMENT");
    let other = log.report(on[1].as_str(), "gang", 0, at, ReportedStatus::Running);
    assert_eq!(other.expect_err("wrong worker").reason(), "STALE_ASSIGNMENT");
    let running = log.report(on[0].as_str(), "gang", 0, at, ReportedStatus::Running);
    assert_eq!(running, Ok(Response::StatusReported { finished: None }));
    let since = log.placement("acme", "gang").and_then(|p| p.slots[0].running_since);
    log.advance(10);
    log.report(on[0].as_str(), "gang", 0, at, ReportedStatus::Running).expect("again");
    assert_eq!(log.placement("acme", "gang").and_then(|p| p.slots[0].running_since), since);

    let first = log.report(on[0].as_str(), "gang", 0, at, ReportedStatus::Completed);
    assert_eq!(first, Ok(Response::StatusReported { finished: None }), "one of two done");
    assert_eq!(log.worker_state(on[0].as_str()).allocated, Resources::new(600, 1), "held");
    let last = log.report(on[1].as_str(), "gang", 1, at, ReportedStatus::Completed);
    let completed = Some(FinishedState::Completed);
    assert_eq!(last, Ok(Response::StatusReported { finished: completed.clone() }));
    assert!(log.placement("acme", "gang").is_none());
    assert_eq!(log.finished("gang").map(|f| f.state.clone()), completed);

    let solo = log.place_spec("acme", spec("solo", 100));
    let failed = ReportedStatus::Failed { exit_code: 137, message: "oom".into() };
    let ended = log.report(solo.instances[0].as_str(), "solo", 0, solo.log_index, failed);
    assert!(matches!(
        ended,
        Ok(Response::StatusReported {
            finished: Some(FinishedState::Failed { exit_code: 137, .. })
        })
    ));
    assert!(log.placement("acme", "solo").is_none());
    // Placing the id again forgets its record.
    log.place_spec("acme", spec("solo", 100));
    assert!(log.finished("solo").is_none());

    log.accepted(Command::Reserve {
        tenant: "acme".into(),
        spec: spec("res", 100),
        ttl_ms: 60_000,
        fence: None,
    });
    let r = log.placement("acme", "res").cloned().expect("reserved");
    let refused =
        log.report(r.instances[0].as_str(), "res", 0, r.log_index, ReportedStatus::Running);
    assert_eq!(refused.expect_err("a reservation").reason(), "NOT_A_PLACEMENT");

    // A slot that moves gets a new assignment: the old worker's report is stale.
    let moving = log.place_spec(
        "acme",
        PlaceSpec { worker_requires: on_racks(&["r1", "r2"]), ..spec("moving", 100) },
    );
    let from = moving.instances[0].clone();
    log.heartbeat(&[from.as_str()]);
    let tick = log.tick_after(WORKER_TTL_DEFAULT_MS);
    let now_at = log.placement("acme", "moving").cloned().expect("moved");
    assert_ne!(now_at.instances[0], from);
    assert_eq!(now_at.slots[0].assigned_at, tick.log_index, "assigned by the entry that moved it");
    let old = log.report(from.as_str(), "moving", 0, moving.log_index, ReportedStatus::Completed);
    assert_eq!(old.expect_err("moved away").reason(), "STALE_ASSIGNMENT");
    let new = log.report(
        now_at.instances[0].as_str(),
        "moving",
        0,
        tick.log_index,
        ReportedStatus::Completed,
    );
    assert!(matches!(
        new,
        Ok(Response::StatusReported { finished: Some(FinishedState::Completed) })
    ));
}

/// Finished records are bounded per tenant (its oldest forgotten first) and lost placements
/// released `WORKER_LOST` leave a `Lost` record; deleting the tenant forgets them all.
#[test]
fn finished_records_are_bounded() {
    let mut log = Log::new();
    log.tenant("acme");
    log.worker("w1", "r1", 1_000);
    for i in 0..=FINISHED_PER_TENANT_MAX {
        let id = format!("p{i:04}");
        let p = log.place_spec("acme", spec(&id, 10));
        let failed = ReportedStatus::Failed { exit_code: 1, message: String::new() };
        log.report("w1", &id, 0, p.log_index, failed).expect("ends it");
    }
    assert_eq!(log.s.state().finished.len(), FINISHED_PER_TENANT_MAX);
    assert!(log.finished("p0000").is_none(), "the oldest is forgotten");
    assert!(log.finished(&format!("p{FINISHED_PER_TENANT_MAX:04}")).is_some());

    log.place_spec("acme", PlaceSpec { on_worker_lost: OnWorkerLost::Release, ..spec("lost", 10) });
    log.heartbeat(&["w1"]);
    log.tick_after(WORKER_TTL_DEFAULT_MS);
    assert_eq!(log.finished("lost").map(|f| f.state.reason()), Some("WORKER_LOST"));
    assert_eq!(log.s.state().finished.len(), FINISHED_PER_TENANT_MAX);
    log.ok(Command::DeleteTenant { tenant: "acme".into() });
    assert!(log.s.state().finished.is_empty());
}

/// Borrowed work whose instance is lost may not move into capacity held for a lender's unused
/// guarantee: it is released `WORKER_LOST`, though the pool has room for it.
#[test]
fn a_borrowed_loss_never_takes_a_lenders_held_capacity() {
    let mut log = Log::new();
    log.tenant("lender");
    log.tenant("acme");
    log.worker("w1", "r1", 1_000);
    log.worker("w2", "r2", 1_500);
    let guarantee = Guarantee {
        nominal: Resources::new(2_000, 0),
        borrowing_limit: None,
        lending_limit: Some(Resources::ZERO),
    };
    let quota = Quota { guarantees: [(DEFAULT.into(), guarantee)].into(), ..Quota::default() };
    log.accepted(Command::SetQuota { tenant: "lender".into(), quota });
    let borrowed = log.place_spec("acme", spec("b", 500));
    assert!(borrowed.borrowed && borrowed.instances == ids(&["w1"]), "{borrowed:?}");
    log.heartbeat(&["w1"]);
    let tick = log.tick_after(WORKER_TTL_DEFAULT_MS);
    // w2 has 1,500 free, but 2,000 are held for the lender: moving 500 there is not lendable.
    assert_eq!(tick.lost[0].outcome, LostOutcome::Released);
    assert!(log.placement("acme", "b").is_none());
    assert_eq!(log.worker_state("w2").allocated, Resources::ZERO);
}

/// A worker's history keeps its latest `WORKER_HISTORY_MAX` state changes, oldest first, and
/// records only real changes (draining a drained worker is none).
#[test]
fn worker_history_is_bounded() {
    let mut log = Log::new();
    log.worker("w1", "r1", 1_000);
    for i in 0..20 {
        log.advance(1);
        let schedulable = i % 2 == 1;
        log.accepted(Command::SetWorkerSchedulable { worker: "w1".into(), schedulable });
        log.accepted(Command::SetWorkerSchedulable { worker: "w1".into(), schedulable });
    }
    let history = &log.worker_state("w1").history;
    assert_eq!(history.len(), WORKER_HISTORY_MAX);
    assert_eq!(history.last().map(|h| h.state), Some(WorkerState::Undrained));
    assert_eq!(history.first().map(|h| h.state), Some(WorkerState::Drained));
    assert!(history.windows(2).all(|h| h[0].index < h[1].index), "oldest first");
}

/// Operator views: a worker's placements across tenants (from the index), a tenant's finished
/// placements, and a pool's down workers and worker TTL.
#[test]
fn views_show_workers_placements_finished_and_down() {
    let mut log = Log::new();
    log.tenant("acme");
    log.tenant("beta");
    log.worker("w1", "r1", 1_000);
    log.worker("w2", "r2", 1_000);
    log.place_spec("acme", PlaceSpec { worker_requires: on_racks(&["r1"]), ..spec("a", 100) });
    log.place_spec("beta", PlaceSpec { worker_requires: on_racks(&["r1"]), ..spec("b", 100) });
    let gone = PlaceSpec { on_worker_lost: OnWorkerLost::Release, ..spec("gone", 100) };
    log.place_spec("acme", PlaceSpec { worker_requires: on_racks(&["r2"]), ..gone });
    let on = |log: &Log, worker: &str, after: Option<(&str, &str)>| -> Vec<(String, String)> {
        let after = after.map(|(t, p)| (TenantId::from(t), PlacementId::from(p)));
        let query = Query::WorkerPlacements { worker: worker.into(), after, limit: 10 };
        match log.s.query(&query) {
            Answer::Placements(ps) => {
                ps.iter().map(|p| (p.tenant.to_string(), p.id().to_string())).collect()
            }
            other => panic!("{other:?}"),
        }
    };
    let both = vec![("acme".to_owned(), "a".to_owned()), ("beta".to_owned(), "b".to_owned())];
    assert_eq!(on(&log, "w1", None), both);
    assert_eq!(on(&log, "w1", Some(("acme", "a"))), both[1..].to_vec(), "paged");

    log.accepted(Command::SetPoolWorkerTtl { pool: DEFAULT.into(), ttl_ms: Some(3_000) });
    log.heartbeat(&["w2"]);
    log.tick_after(3_000);
    let pool = log.s.pool_status(&DEFAULT.into()).expect("pool");
    assert_eq!((pool.down, pool.worker_ttl_ms, pool.workers), (1, 3_000, 2));
    assert!(on(&log, "w2", None).is_empty(), "a down worker holds nothing");
    let query = Query::Finished { tenant: "acme".into(), after: None, limit: 10 };
    let Answer::Finished(records) = log.s.query(&query) else { panic!("finished answer") };
    let summary: Vec<(&str, &str)> =
        records.iter().map(|f| (f.placement.as_str(), f.state.reason())).collect();
    assert_eq!(summary, vec![("gone", "WORKER_LOST")]);
    let other = Query::Finished { tenant: "beta".into(), after: None, limit: 10 };
    assert_eq!(log.s.query(&other), Answer::Finished(Vec::new()), "another tenant's are not seen");
}
