//! Property tests of the pure scheduler core over random command sequences (DESIGN §3–§4):
//! invariants and temporal rules after every step, determinism, snapshot round trip, replay
//! from a snapshot, and exactly-once request ids.
//!
//! The universe is deliberately tiny (three tenants, six workers, six placement ids, two
//! groups, two leases, a handful of labels) so that ids, capacity, quotas, affinity rules and
//! lease tokens collide often. Every entry goes through `checked_apply`, which compares the
//! core against a small model of what must (not) happen.

use std::collections::{BTreeMap, BTreeSet};

use berth::scheduler::quota::GRACE_MAX_MS;
use berth::scheduler::testing::Log;
use berth::scheduler::{
    Applied, Command, Config, Dimension, Entry, Event, Expired, Fence, GroupId, GroupStrategy,
    Guarantee, LabelOp, LabelRequirement, LabelTerm, Labels, LeaseName, Limits, LogIndex, Lost,
    LostOutcome, OnWorkerLost, PlaceSpec, Placement, PlacementId, PoolId, Preemption, Query, Quota,
    QuotaEvent, Rejection, ReportedStatus, RequestId, Resources, Response, Scheduler, SessionKey,
    SoftLimit, SoftLimits, SoftShare, State, Strategy as PlaceStrategy, TenantId, TokenHash,
    TokenId, UnixMillis, WaitReason, WindowLimits, WindowPolicy, WorkerId, PLACEMENT_ALGORITHM,
    PREEMPTIONS_PER_ENTRY_MAX, PREEMPT_VICTIMS_MAX, QUEUE_MAX, SESSIONS_PER_TENANT_MAX,
    WORKER_TTL_DEFAULT_MS, WORKER_TTL_MAX_MS, WORKER_TTL_MIN_MS,
};
use proptest::prelude::*;
use proptest::sample::{select, Index};
use proptest::test_runner::TestCaseError;

// ----- the universe ---------------------------------------------------------------------------

const TENANTS: [&str; 3] = ["acme", "beta", "gamma"];
const BAD_TENANTS: [&str; 6] = ["", "  ", "Acme", "-acme", "acme-", "ac_me"];
const WORKERS: [&str; 6] = ["w1", "w2", "w3", "w4", "w5", "w6"];
const PLACEMENTS: [&str; 6] = ["p1", "p2", "p3", "p4", "p5", "p6"];
const GROUPS: [&str; 2] = ["g1", "g2"];
const LEASES: [&str; 2] = ["l1", "l2"];
const BAD_REQUEST_IDS: [&str; 3] = ["", "-r", "r 1"];
/// The leader clock the first entry starts from: room to run backwards, and a UTC day boundary
/// (86 400 000) that longer runs cross, so daily windows reset mid-run.
const CLOCK_START_MS: u64 = 86_300_000;
const DAY_MS: u64 = 86_400_000;

// ----- generated inputs -----------------------------------------------------------------------

/// How a fencing token (fence or lease token) is chosen when the entry is built.
#[derive(Clone, Debug)]
enum TokenPick {
    /// The lease's current token, if it is held (it may still expire in this very entry).
    Live,
    /// The last token this run saw granted for the lease.
    LastGranted,
    /// Any token granted so far, to any lease.
    AnyGranted(Index),
    /// A recent log index.
    Recent(u64),
    /// Any small number.
    Arbitrary(u64),
}

/// How the leader clock moves before an entry is proposed.
#[derive(Clone, Debug)]
enum Dt {
    Forward(u64),
    Back(u64),
}

#[derive(Clone, Debug)]
enum RidPick {
    None,
    Fresh,
    /// Reuse an earlier request id, with its earlier command (`true`: a retry) or this one.
    Reuse(Index, bool),
    Invalid(Index),
}

#[derive(Clone, Debug)]
struct Step {
    command: Command,
    token: TokenPick,
    dt: Dt,
    rid: RidPick,
    /// Aim the command at an object that exists when the entry is built (a placement or
    /// reservation to release, confirm or cancel; a held lease to keep alive, release or fence
    /// with), so that these commands succeed often enough to matter.
    target: Option<Index>,
    /// A random point at which a property does something extra (snapshot, replay probe).
    probe: Option<Index>,
}

#[derive(Clone, Debug)]
struct Case {
    config: Config,
    steps: Vec<Step>,
}

fn tenant() -> impl Strategy<Value = TenantId> {
    prop_oneof![
        24 => select(TENANTS.to_vec()).prop_map(TenantId::from),
        1 => select(BAD_TENANTS.to_vec()).prop_map(TenantId::from),
    ]
}

fn worker() -> impl Strategy<Value = WorkerId> {
    select(WORKERS.to_vec()).prop_map(WorkerId::from)
}

fn lease() -> impl Strategy<Value = LeaseName> {
    select(LEASES.to_vec()).prop_map(LeaseName::from)
}

fn worker_pool() -> impl Strategy<Value = Option<PoolId>> {
    prop_oneof![
        3 => Just(None),
        1 => Just(Some(PoolId::from("default"))),
        2 => Just(Some(PoolId::from("p2"))),
    ]
}

fn capacity() -> impl Strategy<Value = Resources> {
    prop_oneof![
        30 => (1000..=4000u64, 1024..=4096u64).prop_map(|(c, m)| Resources::new(c, m)),
        1 => Just(Resources::ZERO),
    ]
}

fn worker_labels() -> impl Strategy<Value = Labels> {
    (prop::option::of(select(vec!["a", "b"])), any::<bool>(), prop::bool::weighted(0.03)).prop_map(
        |(zone, ssd, bad)| {
            let mut labels = Labels::new();
            if let Some(zone) = zone {
                labels.insert("zone".into(), zone.into());
            }
            if ssd {
                labels.insert("disk".into(), "ssd".into());
            }
            if bad {
                labels.insert("bad key".into(), "x".into());
            }
            labels
        },
    )
}

fn workload_labels() -> impl Strategy<Value = Labels> {
    let app = prop_oneof![3 => Just(Some("web")), 1 => Just(Some("db")), 1 => Just(None)];
    (app, prop::bool::weighted(0.3)).prop_map(|(app, tier)| {
        let mut labels = Labels::new();
        if let Some(app) = app {
            labels.insert("app".into(), app.into());
        }
        if tier {
            labels.insert("tier".into(), "x".into());
        }
        labels
    })
}

fn label_requirement() -> impl Strategy<Value = LabelRequirement> {
    let req = |key: &str, op, values: &[&str]| LabelRequirement {
        key: key.into(),
        op,
        values: values.iter().map(|v| (*v).into()).collect(),
    };
    prop_oneof![
        10 => select(vec![
            req("zone", LabelOp::In, &["a"]),
            req("zone", LabelOp::In, &["a", "b"]),
            req("zone", LabelOp::NotIn, &["b"]),
            req("disk", LabelOp::Exists, &[]),
            req("disk", LabelOp::DoesNotExist, &[]),
        ]),
        // Invalid: Exists takes no values.
        1 => Just(req("disk", LabelOp::Exists, &["ssd"])),
    ]
}

fn term() -> impl Strategy<Value = LabelTerm> {
    prop_oneof![
        4 => Just(LabelTerm::new("app", "web")),
        1 => Just(LabelTerm::new("app", "db")),
        1 => Just(LabelTerm::new("tier", "x")),
    ]
}

/// No rule (`odds` to 1) or one or two rules.
fn rules<T: std::fmt::Debug + Clone>(
    odds: u32,
    s: impl Strategy<Value = T> + 'static,
) -> impl Strategy<Value = Vec<T>> {
    prop_oneof![odds => Just(Vec::new()), 1 => prop::collection::vec(s, 1..=2)]
}

fn spec() -> impl Strategy<Value = PlaceSpec> {
    let basics = (
        prop_oneof![30 => select(PLACEMENTS.to_vec()), 1 => Just("")].prop_map(PlacementId::from),
        prop_oneof![30 => 1..=3u32, 1 => Just(0u32)],
        prop_oneof![
            24 => (100..=800u64, 64..=700u64),
            6 => (800..=2000u64, 700..=2048u64),
            1 => Just((0u64, 0u64)),
            1 => (Just(0u64), 64..=512u64),
            1 => (100..=1000u64, Just(0u64)),
        ]
        .prop_map(|(c, m)| Resources::new(c, m)),
        prop_oneof![
            6 => Just(None),
            2 => Just(Some(PoolId::from("default"))),
            3 => Just(Some(PoolId::from("p2"))),
            1 => Just(Some(PoolId::from("p3"))),
        ],
        prop_oneof![Just(PlaceStrategy::BinPack), Just(PlaceStrategy::Spread)],
        workload_labels(),
        prop::bool::weighted(0.3),
        prop_oneof![3 => Just(OnWorkerLost::Reschedule), 1 => Just(OnWorkerLost::Release)],
        prop_oneof![
            6 => Just(None),
            3 => ms(250..=6000).prop_map(Some),
            1 => Just(Some(0u64)),
        ],
    );
    let rule_sets = (
        rules(5, label_requirement()),
        rules(4, label_requirement()),
        rules(5, term()),
        rules(4, term()),
        rules(4, term()),
        rules(4, term()),
        prop_oneof![
            4 => Just(None),
            1 => select(GROUPS.to_vec()).prop_map(|g| Some(GroupId::from(g))),
        ],
        -2..=2i32,
    );
    (basics, rule_sets).prop_map(
        |(
            (
                placement,
                count,
                resources,
                pool,
                strategy,
                labels,
                requeue_on_preemption,
                on_worker_lost,
                max_runtime_ms,
            ),
            (
                requires,
                prefers,
                affinity,
                affinity_preferred,
                anti,
                anti_preferred,
                group,
                priority,
            ),
        )| PlaceSpec {
            placement,
            count,
            resources,
            pool,
            strategy,
            labels,
            worker_requires: requires,
            worker_prefers: prefers,
            affinity,
            affinity_preferred,
            anti_affinity: anti,
            anti_affinity_preferred: anti_preferred,
            group,
            priority,
            requeue_on_preemption,
            on_worker_lost,
            max_runtime_ms,
        },
    )
}

fn guarantee() -> impl Strategy<Value = Guarantee> {
    let amount = || (0..=3000u64, 0..=3000u64).prop_map(|(c, m)| Resources::new(c, m));
    (amount(), prop::option::weighted(0.5, amount()), prop::option::weighted(0.5, amount()))
        .prop_map(|(nominal, borrowing_limit, lending_limit)| Guarantee {
            nominal,
            borrowing_limit,
            lending_limit,
        })
}

fn limits() -> impl Strategy<Value = Limits> {
    (
        prop::option::weighted(0.4, 0..=8000u64),
        prop::option::weighted(0.4, 0..=8192u64),
        prop::option::weighted(0.4, 0..=8u64),
        prop::option::weighted(0.3, 0..=5u64),
    )
        .prop_map(|(cpu_millis, memory_mib, instances, jobs)| Limits {
            cpu_millis,
            memory_mib,
            instances,
            jobs,
        })
}

fn quota() -> impl Strategy<Value = Quota> {
    let pool = prop_oneof![
        10 => select(vec!["default", "p2"]).prop_map(PoolId::from),
        1 => Just(PoolId::from("bad pool")),
    ];
    let soft_limit = || {
        prop::option::weighted(0.5, (0..=4000u64, 0..=4000u64, prop::bool::weighted(0.05)))
            .prop_map(|l| {
                // Now and then a soft limit above its burst, which must be refused.
                l.map(|(soft, extra, inverted)| {
                    let (soft, burst) = (soft / 4, soft / 4 + extra / 4);
                    if inverted && burst > soft {
                        SoftLimit { soft: burst, burst: soft }
                    } else {
                        SoftLimit { soft, burst }
                    }
                })
            })
    };
    let soft = (soft_limit(), soft_limit(), soft_limit(), soft_limit()).prop_map(
        |(cpu_millis, memory_mib, instances, jobs)| SoftLimits {
            cpu_millis,
            memory_mib: memory_mib.map(|l| SoftLimit { soft: l.soft * 2, burst: l.burst * 2 }),
            instances: instances.map(|l| SoftLimit { soft: l.soft / 200, burst: l.burst / 200 }),
            jobs: jobs.map(|l| SoftLimit { soft: l.soft / 300, burst: l.burst / 300 }),
        },
    );
    let grace_ms = prop_oneof![
        2 => Just(None),
        1 => Just(Some(0u64)),
        6 => ms(250..=8000).prop_map(Some),
        1 => Just(Some(GRACE_MAX_MS + 1)),
    ];
    let denied = prop::collection::btree_set(
        prop_oneof![4 => select(vec!["default", "p2", "p3"]).prop_map(PoolId::from), 1 => Just(PoolId::from("bad pool"))],
        0..=1,
    );
    let denied = prop_oneof![4 => Just(Default::default()), 1 => denied];
    let windows = (
        prop::option::weighted(0.3, 0..=4u64),
        prop::option::weighted(0.2, 0..=20_000_000u64),
        prop::option::weighted(0.2, 0..=8u64),
        prop::option::weighted(0.2, 0..=40_000_000u64),
        prop_oneof![Just(WindowPolicy::Queue), Just(WindowPolicy::Refuse)],
    )
        .prop_map(
            |(
                jobs_per_day,
                cpu_milli_ms_per_month,
                jobs_per_week,
                cpu_milli_ms_per_week,
                when_exhausted,
            )| WindowLimits {
                jobs_per_day,
                cpu_milli_ms_per_month,
                jobs_per_week,
                cpu_milli_ms_per_week,
                when_exhausted,
            },
        );
    let scopes = prop::collection::btree_map(pool.clone(), limits(), 0..=1);
    let preemption = prop_oneof![
        3 => Just(None),
        1 => Just(Some(Preemption::Never)),
        2 => Just(Some(Preemption::SameTenant)),
        3 => Just(Some(Preemption::AnyTenant)),
    ];
    let guarantees = prop_oneof![
        2 => Just(BTreeMap::new()),
        3 => prop::collection::btree_map(pool, guarantee(), 1..=2),
    ];
    // Now and then soft limits as a share of a pool (sometimes inverted or over 1000, which
    // must be refused), without fixed cpu and memory soft limits so that it is accepted.
    let soft_share = prop::option::weighted(
        0.25,
        (select(vec!["default", "p2"]), 0..=1000u32, 0..=600u32, prop::bool::weighted(0.05))
            .prop_map(|(pool, soft, extra, bad)| SoftShare {
                pool: PoolId::from(pool),
                soft_per_mille: if bad { soft + extra + 1 } else { soft },
                burst_per_mille: soft + extra,
            }),
    );
    // Utilisation alerts now and then, sometimes out of range (refused).
    let alert =
        prop::option::weighted(0.3, prop_oneof![8 => 1..=100u8, 1 => Just(0u8), 1 => Just(101u8)]);
    (limits(), scopes, soft, grace_ms, denied, windows, preemption, guarantees, soft_share, alert)
        .prop_map(
            |(
                total,
                pools,
                soft,
                grace_ms,
                denied_pools,
                windows,
                preemption,
                guarantees,
                share,
                alert_percent,
            )| {
                let soft = match share {
                    Some(_) => SoftLimits { cpu_millis: None, memory_mib: None, ..soft },
                    None => soft,
                };
                Quota {
                    total,
                    pools,
                    soft,
                    grace_ms,
                    denied_pools,
                    windows,
                    preemption,
                    guarantees,
                    soft_share: share,
                    alert_percent,
                }
            },
        )
}

/// A valid quota that lets the tenant preempt, with a tight cpu limit and maybe guarantees.
fn preempting_quota() -> impl Strategy<Value = Quota> {
    let pool = select(vec!["default", "p2"]).prop_map(PoolId::from);
    (
        prop::option::weighted(0.5, 1000..=5000u64),
        prop::option::weighted(0.3, 2..=6u64),
        prop_oneof![Just(Preemption::SameTenant), Just(Preemption::AnyTenant)],
        prop::collection::btree_map(pool, guarantee(), 0..=2),
    )
        .prop_map(|(cpu_millis, instances, preemption, guarantees)| Quota {
            total: Limits { cpu_millis, instances, ..Limits::default() },
            preemption: Some(preemption),
            // Soft limits that follow the default pool as workers come and go.
            soft_share: (cpu_millis.unwrap_or(0) % 2 == 0).then(|| SoftShare {
                pool: PoolId::from("default"),
                soft_per_mille: 300,
                burst_per_mille: 700,
            }),
            grace_ms: Some(60_000),
            guarantees,
            ..Quota::default()
        })
}

/// A fence whose token is filled in when the entry is built.
fn fence() -> impl Strategy<Value = Option<Fence>> {
    prop_oneof![
        3 => Just(None),
        1 => lease().prop_map(|lease| Some(Fence { lease, token: LogIndex(0) })),
    ]
}

/// Milliseconds in `range`, usually a multiple of 250 so that deadlines often fall exactly on
/// a proposed time (the `<=` boundary of expiry).
fn ms(range: std::ops::RangeInclusive<u64>) -> impl Strategy<Value = u64> {
    let (lo, hi) = (*range.start(), *range.end());
    let quarters = (lo.div_ceil(250)..=hi / 250).prop_map(|n| n * 250);
    prop_oneof![2 => quarters, 1 => range]
}

fn ttl_ms() -> impl Strategy<Value = u64> {
    prop_oneof![20 => ms(1..=5000), 1 => Just(0u64)]
}

fn acquire_lease() -> impl Strategy<Value = Command> {
    let holder = prop_oneof![12 => select(vec!["h1", "h2"]), 1 => Just(" ")];
    let ttl_ms = prop_oneof![6 => ms(1..=5000), 12 => ms(5000..=60_000), 1 => Just(0u64)];
    (tenant(), lease(), holder, ttl_ms).prop_map(|(tenant, lease, holder, ttl_ms)| {
        Command::AcquireLease { tenant, lease, holder: holder.into(), ttl_ms }
    })
}

fn placement_id() -> impl Strategy<Value = PlacementId> {
    select(PLACEMENTS.to_vec()).prop_map(PlacementId::from)
}

/// A heartbeat of one to three of the workers (an unknown one now and then), or of none.
fn heartbeat() -> impl Strategy<Value = Command> {
    let id = prop_oneof![12 => worker(), 1 => Just(WorkerId::from("w9"))];
    prop_oneof![
        20 => prop::collection::vec(id, 1..=3),
        1 => Just(Vec::new()),
    ]
    .prop_map(|workers| Command::Heartbeat { workers })
}

/// Worker TTLs of 1–3 s (so that the clock's jumps cross them), the default, or out of bounds.
fn set_pool_worker_ttl() -> impl Strategy<Value = Command> {
    let ttl = prop_oneof![
        6 => ms(WORKER_TTL_MIN_MS..=3_000).prop_map(Some),
        2 => Just(None),
        1 => Just(Some(WORKER_TTL_MIN_MS - 1)),
    ];
    (select(vec!["default", "p2"]), ttl)
        .prop_map(|(pool, ttl_ms)| Command::SetPoolWorkerTtl { pool: PoolId::from(pool), ttl_ms })
}

/// A report on a slot; `retarget` aims it at a live slot (with its live `assigned_at` when
/// it is 0 here, else a stale or arbitrary one).
fn report_status() -> impl Strategy<Value = Command> {
    let status = prop_oneof![
        3 => Just(ReportedStatus::Running),
        4 => Just(ReportedStatus::Completed),
        1 => (any::<i32>(), prop_oneof![5 => Just(String::from("oom")), 1 => Just("x".repeat(257))])
            .prop_map(|(exit_code, message)| ReportedStatus::Failed { exit_code, message }),
    ];
    (
        tenant(),
        placement_id(),
        worker(),
        0..=3u32,
        prop_oneof![4 => Just(0u64), 1 => 1..=40u64],
        status,
    )
        .prop_map(|(tenant, placement, worker, slot, assigned_at, status)| {
            Command::ReportStatus {
                worker,
                tenant,
                placement,
                slot,
                assigned_at: LogIndex(assigned_at),
                status,
            }
        })
}

fn command() -> impl Strategy<Value = Command> {
    prop_oneof![
        6 => report_status(),
        8 => heartbeat(),
        2 => set_pool_worker_ttl(),
        4 => Just(Command::Tick),
        3 => Just(Command::LeaderChanged),
        1 => set_config(),
        2 => (worker(), worker_pool(), capacity(), worker_labels()).prop_map(
            |(worker, pool, capacity, labels)| Command::RegisterWorker {
                worker,
                pool,
                capacity,
                labels
            }
        ),
        2 => (worker(), prop::option::of(capacity()), prop::option::of(worker_labels())).prop_map(
            |(worker, capacity, labels)| Command::UpdateWorker { worker, capacity, labels }
        ),
        4 => (worker(), prop::bool::weighted(0.4))
            .prop_map(|(worker, schedulable)| {
                Command::SetWorkerSchedulable { worker, schedulable }
            }),
        2 => (worker(), any::<bool>())
            .prop_map(|(worker, evict)| Command::RemoveWorker { worker, evict }),
        2 => (
            tenant(),
            prop_oneof![
                2 => Just(None),
                3 => tenant().prop_map(Some),
            ],
            prop_oneof![20 => 1..=3u32, 1 => Just(0u32)],
        )
            .prop_map(|(tenant, parent, weight)| Command::CreateTenant { tenant, parent, weight }),
        1 => tenant().prop_map(|tenant| Command::DeleteTenant { tenant }),
        5 => (tenant(), quota()).prop_map(|(tenant, quota)| Command::SetQuota { tenant, quota }),
        2 => set_pool_reserve(),
        1 => (tenant(), select(vec!["t1", "t2"]), 0..3u8, prop_oneof![Just(0u64), 1..=5_000u64])
            .prop_map(|(tenant, token, b, ttl_ms)| Command::AddToken {
                tenant,
                token: TokenId::from(token),
                hash: TokenHash([b; 32]),
                ttl_ms,
            }),
        1 => (tenant(), select(vec!["t1", "t2"]))
            .prop_map(|(tenant, token)| {
                Command::RevokeToken { tenant, token: TokenId::from(token) }
            }),
        16 => (tenant(), spec(), fence())
            .prop_map(|(tenant, spec, fence)| Command::Place { tenant, spec, fence }),
        10 => (tenant(), spec(), fence())
            .prop_map(|(tenant, spec, fence)| Command::PlaceOrQueue { tenant, spec, fence }),
        3 => (tenant(), placement_id())
            .prop_map(|(tenant, placement)| Command::CancelQueued { tenant, placement }),
        8 => (tenant(), spec(), ttl_ms(), fence()).prop_map(|(tenant, spec, ttl_ms, fence)| {
            Command::Reserve { tenant, spec, ttl_ms, fence }
        }),
        3 => (tenant(), placement_id(), fence())
            .prop_map(|(tenant, placement, fence)| Command::Release { tenant, placement, fence }),
        4 => (tenant(), placement_id(), fence()).prop_map(|(tenant, reservation, fence)| {
            Command::ConfirmReservation { tenant, reservation, fence }
        }),
        4 => (tenant(), placement_id(), fence()).prop_map(|(tenant, reservation, fence)| {
            Command::CancelReservation { tenant, reservation, fence }
        }),
        3 => (
            tenant(),
            select(GROUPS.to_vec()),
            prop_oneof![10 => 1..=4u32, 1 => Just(0u32)],
            prop_oneof![Just(GroupStrategy::Spread), Just(GroupStrategy::Pack)],
        )
            .prop_map(|(tenant, group, max_instances, strategy)| {
                Command::CreatePlacementGroup {
                    tenant,
                    group: GroupId::from(group),
                    max_instances,
                    strategy,
                }
            }),
        10 => acquire_lease(),
        3 => (tenant(), lease()).prop_map(|(tenant, lease)| Command::KeepAliveLease {
            tenant,
            lease,
            token: LogIndex(0)
        }),
        2 => (tenant(), lease()).prop_map(|(tenant, lease)| Command::ReleaseLease {
            tenant,
            lease,
            token: LogIndex(0)
        }),
    ]
}

fn set_pool_reserve() -> impl Strategy<Value = Command> {
    let reserve = (0..=6000u64, 0..=8192u64).prop_map(|(c, m)| Resources::new(c, m));
    (select(vec!["default", "p2", "Bad Pool"]), prop::option::weighted(0.8, reserve))
        .prop_map(|(pool, reserve)| Command::SetPoolReserve { pool: PoolId::from(pool), reserve })
}

fn set_config() -> impl Strategy<Value = Command> {
    (
        prop_oneof![10 => Just(PLACEMENT_ALGORITHM), 1 => Just(PLACEMENT_ALGORITHM + 1)],
        select(vec![0u64, 1_000, 5_000, 30_000, 700_000]),
        select(vec![0u64, 2, 3, 16, 100_000]),
        select(vec![0u32, 1, 2, 64]),
    )
        .prop_map(|(placement_algorithm, lease_grace_ms, sessions_max, preferred_scan_max)| {
            Command::SetConfig {
                config: Config {
                    placement_algorithm,
                    lease_grace_ms,
                    sessions_max,
                    preferred_scan_max,
                    usage_retention: Default::default(),
                },
            }
        })
}

fn token_pick() -> impl Strategy<Value = TokenPick> {
    prop_oneof![
        10 => Just(TokenPick::Live),
        2 => Just(TokenPick::LastGranted),
        1 => any::<Index>().prop_map(TokenPick::AnyGranted),
        1 => (1..=8u64).prop_map(TokenPick::Recent),
        1 => (0..=100u64).prop_map(TokenPick::Arbitrary),
    ]
}

fn dt() -> impl Strategy<Value = Dt> {
    prop_oneof![
        10 => ms(0..=1000).prop_map(Dt::Forward),
        5 => ms(1000..=3000).prop_map(Dt::Forward),
        2 => ms(3000..=9000).prop_map(Dt::Forward),
        2 => ms(1..=6000).prop_map(Dt::Back),
    ]
}

fn rid_pick() -> impl Strategy<Value = RidPick> {
    prop_oneof![
        3 => Just(RidPick::None),
        12 => Just(RidPick::Fresh),
        2 => (any::<Index>(), any::<bool>()).prop_map(|(i, same)| RidPick::Reuse(i, same)),
        1 => any::<Index>().prop_map(RidPick::Invalid),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    (
        command(),
        token_pick(),
        dt(),
        rid_pick(),
        prop::option::weighted(0.6, any::<Index>()),
        prop::option::weighted(0.2, any::<Index>()),
    )
        .prop_map(|(command, token, dt, rid, target, probe)| Step {
            command,
            token,
            dt,
            rid,
            target,
            probe,
        })
}

fn setup_step(command: Command) -> Step {
    Step {
        command,
        token: TokenPick::Live,
        dt: Dt::Forward(10),
        rid: RidPick::Fresh,
        target: None,
        probe: None,
    }
}

/// Three tenants (`beta` a child of `acme`), two placement groups, 3–6 workers in 1–2 pools,
/// quotas on some tenants, then up to 60 random commands.
fn case() -> impl Strategy<Value = Case> {
    let config =
        (select(vec![0u64, 1_000, 5_000, 30_000]), select(vec![3u64, 16, 100_000]), 0..=2u32)
            .prop_map(|(lease_grace_ms, sessions_max, preferred_scan_max)| Config {
                lease_grace_ms,
                sessions_max,
                preferred_scan_max,
                ..Config::default()
            });
    let workers = prop::collection::vec(
        (
            worker_pool(),
            (1000..=4000u64, 1024..=4096u64).prop_map(|(c, m)| Resources::new(c, m)),
            worker_labels(),
        ),
        3..=6,
    );
    let group = || (prop_oneof![Just(GroupStrategy::Spread), Just(GroupStrategy::Pack)], 1..=4u32);
    let body = prop::collection::vec(step(), 0..=60);
    // In half the runs every worker is managed from the start, often with short TTLs.
    // (Some stay unmanaged: they never go down, so lost work has somewhere to go.)
    let liveness = (
        any::<bool>(),
        prop::option::weighted(0.6, ms(WORKER_TTL_MIN_MS..=3_000)),
        prop::collection::vec(prop::bool::weighted(0.7), WORKERS.len()),
    );
    // Often start with quotas (soft limits especially) on some tenants, so that bursts, grace
    // ends and refusals by every kind of limit happen within a short run.
    // And often with preemption policies, tight cpu limits and guarantees, so that priority
    // preemption, borrowing and reclaim happen too.
    let quotas = prop::collection::vec(
        prop_oneof![2 => Just(None), 2 => quota().prop_map(Some), 3 => preempting_quota().prop_map(Some)],
        3,
    );
    (config, workers, group(), group(), body, quotas, liveness).prop_map(
        |(config, workers, g1, g2, body, quotas, (managed, ttl_ms, mask))| {
            let create = |tenant: &str, parent: Option<&str>| Command::CreateTenant {
                tenant: TenantId::from(tenant),
                parent: parent.map(TenantId::from),
                weight: 1,
            };
            let mut steps = vec![
                setup_step(create("acme", None)),
                setup_step(create("beta", Some("acme"))),
                setup_step(create("gamma", None)),
            ];
            for (tenant, group, (strategy, max_instances)) in
                [("acme", "g1", g1), ("beta", "g2", g2)]
            {
                steps.push(setup_step(Command::CreatePlacementGroup {
                    tenant: TenantId::from(tenant),
                    group: GroupId::from(group),
                    max_instances,
                    strategy,
                }));
            }
            let registered = workers.len();
            for (i, (pool, capacity, labels)) in workers.into_iter().enumerate() {
                steps.push(setup_step(Command::RegisterWorker {
                    worker: WorkerId::from(WORKERS[i]),
                    pool,
                    capacity,
                    labels,
                }));
            }
            if managed {
                for pool in ["default", "p2"] {
                    let pool = PoolId::from(pool);
                    steps.push(setup_step(Command::SetPoolWorkerTtl { pool, ttl_ms }));
                }
                let workers: Vec<WorkerId> = WORKERS[..registered]
                    .iter()
                    .zip(&mask)
                    .filter(|(_, m)| **m)
                    .map(|(w, _)| WorkerId::from(*w))
                    .collect();
                if !workers.is_empty() {
                    steps.push(setup_step(Command::Heartbeat { workers }));
                }
            }
            for (tenant, quota) in TENANTS.iter().zip(quotas) {
                if let Some(quota) = quota {
                    let tenant = TenantId::from(*tenant);
                    steps.push(setup_step(Command::SetQuota { tenant, quota }));
                }
            }
            steps.extend(body);
            Case { config, steps }
        },
    )
}

// ----- building entries -----------------------------------------------------------------------

/// Turns generated steps into log entries on the shared harness's `Log` (log index, leader
/// clock) and picks their request ids and fencing tokens.
struct Driver {
    log: Log,
    granted: Vec<LogIndex>,
    last_granted: BTreeMap<(TenantId, LeaseName), LogIndex>,
    used: Vec<(RequestId, Command)>,
}

impl Driver {
    fn new(config: &Config) -> Self {
        Driver {
            log: Log { s: Scheduler::new(config.clone()), index: 0, now: CLOCK_START_MS },
            granted: Vec::new(),
            last_granted: BTreeMap::new(),
            used: Vec::new(),
        }
    }

    /// The next entry for `step`, stamped with the leader clock moved by `step.dt`.
    fn entry(&mut self, step: &Step) -> Entry {
        self.log.now = match step.dt {
            Dt::Forward(ms) => self.log.now + ms,
            Dt::Back(ms) => self.log.now.saturating_sub(ms),
        };
        let s = &self.log.s;
        let index = LogIndex(self.log.index + 1);
        let mut command = step.command.clone();
        if let Some(target) = &step.target {
            retarget(&mut command, target, s.state());
        }
        if let Some((tenant, lease, _)) = fenced(&command) {
            let key = (tenant, lease);
            let token = match &step.token {
                TokenPick::Live => s
                    .state()
                    .leases
                    .get(&key)
                    .map(|l| l.token)
                    .or_else(|| self.last_granted.get(&key).copied())
                    .unwrap_or(LogIndex(0)),
                TokenPick::LastGranted => {
                    self.last_granted.get(&key).copied().unwrap_or(LogIndex(1))
                }
                TokenPick::AnyGranted(i) if !self.granted.is_empty() => *i.get(&self.granted),
                TokenPick::AnyGranted(_) => LogIndex(index.0 / 2),
                TokenPick::Recent(back) => LogIndex(index.0.saturating_sub(*back)),
                TokenPick::Arbitrary(n) => LogIndex(*n),
            };
            set_token(&mut command, token);
        }
        let fresh = RequestId::new(format!("r{}", index.0));
        let request_id = match &step.rid {
            RidPick::None => None,
            RidPick::Fresh => Some(fresh),
            RidPick::Invalid(i) => Some(RequestId::from(*i.get(&BAD_REQUEST_IDS))),
            RidPick::Reuse(_, _) if self.used.is_empty() => Some(fresh),
            RidPick::Reuse(i, same) => {
                let (rid, earlier) = i.get(&self.used).clone();
                if *same {
                    command = earlier;
                }
                Some(rid)
            }
        };
        let mut entry = self.log.entry(command);
        entry.request_id = request_id;
        entry
    }

    /// The next entry, stamped with the scheduler's own log time: a client's retry of `command`.
    fn retry(&mut self, request_id: &RequestId, command: Command) -> Entry {
        let mut entry = self.log.entry(command);
        entry.proposed_at = self.log.s.now();
        entry.request_id = Some(request_id.clone());
        entry
    }

    fn observe(&mut self, entry: &Entry, applied: &Applied) {
        if let Some(rid) = &entry.request_id {
            if object_id_ok(rid.as_str()) {
                self.used.push((rid.clone(), entry.command.clone()));
            }
        }
        if let (false, Ok(Response::LeaseGranted(l))) = (applied.replayed, &applied.result) {
            self.granted.push(l.token);
            self.last_granted.insert((l.tenant.clone(), l.name.clone()), l.token);
        }
    }
}

/// Points `command` at an existing placement (or reservation) or held lease, if there is one.
/// A fenced command prefers objects of a tenant that holds a lease, and fences with that lease.
fn retarget(command: &mut Command, target: &Index, state: &State) {
    let holds_lease = |t: &TenantId| state.leases.keys().any(|(owner, _)| owner == t);
    let held_by = |t: &TenantId| -> Vec<LeaseName> {
        state.leases.keys().filter(|(owner, _)| owner == t).map(|(_, l)| l.clone()).collect()
    };
    // The first non-empty candidate list wins.
    let pick = |lists: Vec<Vec<(TenantId, PlacementId)>>| {
        lists.into_iter().find(|l| !l.is_empty()).map(|l| target.get(&l).clone())
    };
    let placements = |reservations_only: bool, fenced: bool| -> Vec<(TenantId, PlacementId)> {
        state
            .placements
            .iter()
            .filter(|(_, p)| !reservations_only || p.is_reservation())
            .filter(|((t, _), _)| !fenced || holds_lease(t))
            .map(|(k, _)| k.clone())
            .collect()
    };
    let point_fence = |tenant: &TenantId, fence: &mut Option<Fence>| {
        if let Some(fence) = fence {
            let held = held_by(tenant);
            if !held.is_empty() {
                fence.lease = target.get(&held).clone();
            }
        }
    };
    match command {
        Command::Release { tenant, placement: id, fence } => {
            let f = fence.is_some();
            if let Some(key) = pick(vec![placements(false, f), placements(false, false)]) {
                (*tenant, *id) = key;
            }
            point_fence(tenant, fence);
        }
        Command::ConfirmReservation { tenant, reservation: id, fence }
        | Command::CancelReservation { tenant, reservation: id, fence } => {
            let f = fence.is_some();
            let lists = vec![placements(true, f), placements(true, false), placements(false, f)];
            if let Some(key) = pick(lists) {
                (*tenant, *id) = key;
            }
            point_fence(tenant, fence);
        }
        Command::Place { tenant, fence: Some(fence), .. }
        | Command::PlaceOrQueue { tenant, fence: Some(fence), .. }
        | Command::Reserve { tenant, fence: Some(fence), .. } => {
            let keys: Vec<_> = state.leases.keys().cloned().collect();
            if !keys.is_empty() {
                (*tenant, fence.lease) = target.get(&keys).clone();
            }
        }
        Command::CancelQueued { tenant, placement } => {
            let keys: Vec<_> = state.queue.keys().cloned().collect();
            if !keys.is_empty() {
                (*tenant, *placement) = target.get(&keys).clone();
            }
        }
        Command::KeepAliveLease { tenant, lease, .. }
        | Command::ReleaseLease { tenant, lease, .. } => {
            let keys: Vec<_> = state.leases.keys().cloned().collect();
            if !keys.is_empty() {
                (*tenant, *lease) = target.get(&keys).clone();
            }
        }
        Command::ReportStatus { worker, tenant, placement, slot, assigned_at, .. } => {
            let live: Vec<&Placement> =
                state.placements.values().filter(|p| !p.is_reservation()).collect();
            if !live.is_empty() {
                let p = *target.get(&live);
                let i = (*slot as usize) % p.instances.len();
                (*tenant, *placement) = (p.tenant.clone(), p.id().clone());
                (*worker, *slot) = (p.instances[i].clone(), i as u32);
                if assigned_at.0 == 0 {
                    *assigned_at = p.slots[i].assigned_at;
                }
            }
        }
        _ => {}
    }
}

/// The `(tenant, lease, token)` a command must hold, if any.
fn fenced(command: &Command) -> Option<(TenantId, LeaseName, LogIndex)> {
    match command {
        Command::Place { tenant, fence: Some(f), .. }
        | Command::PlaceOrQueue { tenant, fence: Some(f), .. }
        | Command::Reserve { tenant, fence: Some(f), .. }
        | Command::Release { tenant, fence: Some(f), .. }
        | Command::ConfirmReservation { tenant, fence: Some(f), .. }
        | Command::CancelReservation { tenant, fence: Some(f), .. } => {
            Some((tenant.clone(), f.lease.clone(), f.token))
        }
        Command::KeepAliveLease { tenant, lease, token }
        | Command::ReleaseLease { tenant, lease, token } => {
            Some((tenant.clone(), lease.clone(), *token))
        }
        _ => None,
    }
}

fn set_token(command: &mut Command, new: LogIndex) {
    match command {
        Command::Place { fence: Some(f), .. }
        | Command::PlaceOrQueue { fence: Some(f), .. }
        | Command::Reserve { fence: Some(f), .. }
        | Command::Release { fence: Some(f), .. }
        | Command::ConfirmReservation { fence: Some(f), .. }
        | Command::CancelReservation { fence: Some(f), .. } => f.token = new,
        Command::KeepAliveLease { token, .. } | Command::ReleaseLease { token, .. } => *token = new,
        _ => {}
    }
}

// ----- the model and the per-step checks ------------------------------------------------------

/// What the core must remember: the session table and the last grant of every lease.
struct Model {
    sessions_max: usize,
    sessions: BTreeMap<SessionKey, (Command, Applied)>,
    order: BTreeMap<LogIndex, SessionKey>,
    last_token: BTreeMap<(TenantId, LeaseName), LogIndex>,
    /// Worker TTLs set per pool (`SetPoolWorkerTtl`); the default elsewhere.
    pool_ttls: BTreeMap<PoolId, u64>,
    /// What a watcher that saw every journal event knows.
    watch: Watch,
}

/// The state as rebuilt from nothing but the journal: what `Watch` and `WatchAssignments`
/// promise their clients they can know.
#[derive(Debug, Default, PartialEq, Eq)]
struct Watch {
    tenants: BTreeSet<TenantId>,
    /// Placements and reservations: their instances and, for a reservation, its expiry.
    placements: BTreeMap<(TenantId, PlacementId), (Vec<WorkerId>, Option<UnixMillis>)>,
    queued: BTreeSet<(TenantId, PlacementId)>,
    leases: BTreeMap<(TenantId, LeaseName), LogIndex>,
    /// Each worker: (down, drained).
    workers: BTreeMap<WorkerId, (bool, bool)>,
    /// Each worker's assignments (tenant, placement, slot), folded only from the events that
    /// name it (`Event::workers`) and `TenantDeleted`: what `WatchAssignments` can know.
    assignments: BTreeMap<WorkerId, BTreeSet<(TenantId, PlacementId, u32)>>,
}

impl Watch {
    /// The same view, read from the state.
    fn of(state: &State) -> Watch {
        Watch {
            tenants: state.tenants.keys().cloned().collect(),
            placements: state
                .placements
                .iter()
                .map(|(k, p)| (k.clone(), (p.instances.clone(), p.expires_at)))
                .collect(),
            queued: state.queue.keys().cloned().collect(),
            leases: state.leases.iter().map(|(k, l)| (k.clone(), l.token)).collect(),
            workers: state
                .workers
                .iter()
                .map(|(id, w)| (id.clone(), (w.is_down(), !w.schedulable)))
                .collect(),
            assignments: state.placements.values().fold(BTreeMap::new(), |mut map, p| {
                for (slot, w) in p.instances.iter().enumerate() {
                    let slot = u32::try_from(slot).expect("small");
                    let set: &mut BTreeSet<_> = map.entry(w.clone()).or_default();
                    set.insert((p.tenant.clone(), p.id().clone(), slot));
                }
                map
            }),
        }
    }

    /// Folds `event` into the assignments of `worker`, one of the workers it names.
    fn assign(
        &mut self,
        worker: &WorkerId,
        event: &Event,
        what: &str,
    ) -> Result<(), TestCaseError> {
        let set = self.assignments.entry(worker.clone()).or_default();
        let slots = |instances: &[WorkerId]| -> Vec<u32> {
            let on = instances.iter().enumerate().filter(|(_, w)| *w == worker);
            on.map(|(i, _)| u32::try_from(i).expect("small")).collect()
        };
        match event {
            Event::Placed { tenant, placement, instances, .. } => {
                for slot in slots(instances) {
                    set.insert((tenant.clone(), placement.clone(), slot));
                }
            }
            Event::Released { tenant, placement, instances, .. } => {
                for slot in slots(instances) {
                    let gone = set.remove(&(tenant.clone(), placement.clone(), slot));
                    prop_assert!(gone, "{:?} released what it did not hold: {}", worker, what);
                }
            }
            Event::Rescheduled { tenant, placement, moves } => {
                for (slot, from, to) in moves {
                    let a = (tenant.clone(), placement.clone(), *slot);
                    if from == worker {
                        prop_assert!(set.remove(&a), "moved off {:?}: {}", worker, what);
                    }
                    if to == worker {
                        set.insert(a);
                    }
                }
            }
            _ => {}
        }
        if set.is_empty() {
            self.assignments.remove(worker);
        }
        Ok(())
    }

    /// Folds one event in; an event that contradicts what came before fails.
    fn fold(&mut self, event: &Event, what: &str) -> Result<(), TestCaseError> {
        let named: BTreeSet<&WorkerId> = event.workers().into_iter().collect();
        for worker in named {
            self.assign(worker, event, what)?;
        }
        let key = |t: &TenantId, p: &PlacementId| (t.clone(), p.clone());
        match event {
            Event::Placed { tenant, placement, instances, from_queue, expires_at, .. } => {
                let k = key(tenant, placement);
                if *from_queue {
                    prop_assert!(self.queued.remove(&k), "admitted unqueued {:?}: {}", k, what);
                }
                let old = self.placements.insert(k, (instances.clone(), *expires_at));
                prop_assert!(old.is_none(), "placed twice: {}", what);
            }
            Event::Confirmed { tenant, placement, instances } => {
                let p = self.placements.get_mut(&key(tenant, placement));
                prop_assert!(p.as_ref().is_some_and(|p| p.1.is_some()), "confirmed: {}", what);
                prop_assert!(
                    p.as_ref().is_some_and(|p| &p.0 == instances),
                    "confirmed where: {}",
                    what
                );
                if let Some(p) = p {
                    p.1 = None;
                }
            }
            Event::Released { tenant, placement, instances, .. } => {
                let old = self.placements.remove(&key(tenant, placement)).map(|p| p.0);
                prop_assert_eq!(old.as_ref(), Some(instances), "released: {}", what);
            }
            Event::Queued { tenant, placement, .. } => {
                let k = key(tenant, placement);
                prop_assert!(!self.placements.contains_key(&k), "queued while placed: {}", what);
                prop_assert!(self.queued.insert(k), "queued twice: {}", what);
            }
            Event::Dequeued { tenant, placement } => {
                prop_assert!(self.queued.remove(&key(tenant, placement)), "dequeued: {}", what);
            }
            Event::Rescheduled { tenant, placement, moves } => {
                let p = self.placements.get_mut(&key(tenant, placement));
                let Some((instances, _)) = p else {
                    return Err(TestCaseError::fail(format!("moved unplaced: {what}")));
                };
                for (slot, from, to) in moves {
                    let at = instances.get_mut(*slot as usize);
                    prop_assert_eq!(at.as_deref(), Some(from), "moved from: {}", what);
                    if let Some(at) = at {
                        *at = to.clone();
                    }
                }
            }
            Event::LeaseGranted { tenant, lease, token, .. } => {
                let old = self.leases.insert((tenant.clone(), lease.clone()), *token);
                prop_assert!(old.is_none(), "granted a held lease: {}", what);
            }
            Event::LeaseReleased { tenant, lease, token }
            | Event::LeaseExpired { tenant, lease, token } => {
                let old = self.leases.remove(&(tenant.clone(), lease.clone()));
                prop_assert_eq!(old, Some(*token), "lease ended: {}", what);
            }
            Event::TenantCreated { tenant, .. } => {
                prop_assert!(self.tenants.insert(tenant.clone()), "created twice: {}", what);
            }
            Event::TenantDeleted { tenant } => {
                prop_assert!(self.tenants.remove(tenant), "deleted unknown: {}", what);
                self.placements.retain(|(t, _), _| t != tenant);
                self.queued.retain(|(t, _)| t != tenant);
                self.leases.retain(|(t, _), _| t != tenant);
                for set in self.assignments.values_mut() {
                    set.retain(|(t, _, _)| t != tenant);
                }
                self.assignments.retain(|_, set| !set.is_empty());
            }
            Event::WorkerRegistered { worker, .. } => {
                let old = self.workers.insert(worker.clone(), (false, false));
                prop_assert!(old.is_none(), "registered twice: {}", what);
            }
            Event::WorkerRemoved { worker } => {
                prop_assert!(self.workers.remove(worker).is_some(), "removed: {}", what);
            }
            Event::WorkerDown { worker, .. }
            | Event::WorkerRevived { worker }
            | Event::WorkerDrained { worker }
            | Event::WorkerUndrained { worker } => {
                let w = self.workers.get_mut(worker);
                let Some((down, drained)) = w else {
                    return Err(TestCaseError::fail(format!("unknown worker: {what}")));
                };
                let (flag, to) = match event {
                    Event::WorkerDown { .. } => (down, true),
                    Event::WorkerRevived { .. } => (down, false),
                    Event::WorkerDrained { .. } => (drained, true),
                    _ => (drained, false),
                };
                prop_assert!(*flag != to, "no change reported: {}", what);
                *flag = to;
            }
            Event::InstanceRunning { .. }
            | Event::InstanceCompleted { .. }
            | Event::InstanceFailed { .. }
            | Event::Quota(_)
            | Event::Metered { .. }
            | Event::InvoiceClosed { .. } => {}
        }
        Ok(())
    }
}

impl Model {
    fn new(config: &Config) -> Self {
        Model {
            sessions_max: usize::try_from(config.sessions_max).expect("small sessions_max"),
            sessions: BTreeMap::new(),
            order: BTreeMap::new(),
            last_token: BTreeMap::new(),
            pool_ttls: BTreeMap::new(),
            watch: Watch::default(),
        }
    }

    fn remember(&mut self, key: SessionKey, command: Command, first: Applied) {
        let scope = key.tenant.clone();
        self.order.insert(first.log_index, key.clone());
        self.sessions.insert(key, (command, first));
        // Its own scope's window first, then the whole table.
        let window = SESSIONS_PER_TENANT_MAX.min(self.sessions_max);
        while self.order.values().filter(|k| k.tenant == scope).count() > window {
            self.drop_oldest_of(&scope);
        }
        self.evict();
    }

    /// The TTL a heartbeat gives a worker of `pool`.
    fn ttl_of(&self, pool: &PoolId) -> u64 {
        self.pool_ttls.get(pool).copied().unwrap_or(WORKER_TTL_DEFAULT_MS)
    }

    fn drop_oldest_of(&mut self, scope: &Option<TenantId>) {
        let index = self.order.iter().find(|(_, k)| k.tenant == *scope).map(|(i, _)| *i);
        let key = self.order.remove(&index.expect("scope has sessions")).expect("ordered");
        self.sessions.remove(&key);
    }

    /// `SetConfig` took effect: a smaller table drops its oldest sessions at once.
    fn set_sessions_max(&mut self, sessions_max: u64) {
        self.sessions_max = usize::try_from(sessions_max).expect("small sessions_max");
        self.evict();
    }

    /// A deleted tenant's request ids are forgotten, so a tenant created later with the same
    /// id never gets its answers — all but its own CreateTenant, whose late duplicate must
    /// replay rather than re-create the tenant.
    fn forget_tenant(&mut self, tenant: &TenantId) {
        let scope = Some(tenant.clone());
        let created = |c: &Command, a: &Applied| {
            matches!(c, Command::CreateTenant { .. }) && a.result.is_ok()
        };
        self.sessions.retain(|k, (c, a)| k.tenant != scope || created(c, a));
        let sessions = &self.sessions;
        self.order.retain(|_, k| sessions.contains_key(k));
    }

    /// A full table drops the oldest session of the largest scope (of those, the one whose
    /// oldest session is oldest), so no tenant loses records while another holds more.
    fn evict(&mut self) {
        while self.sessions.len() > self.sessions_max {
            let mut sizes: BTreeMap<Option<TenantId>, (usize, LogIndex)> = BTreeMap::new();
            for (index, key) in &self.order {
                sizes.entry(key.tenant.clone()).or_insert((0, *index)).0 += 1;
            }
            let largest =
                sizes.iter().max_by_key(|(_, (n, oldest))| (*n, std::cmp::Reverse(*oldest)));
            let scope = largest.map(|(scope, _)| scope.clone()).expect("sessions exist");
            self.drop_oldest_of(&scope);
        }
    }
}

/// The object id rule (`[A-Za-z0-9._:-]{1,128}`, starting alphanumeric), restated.
fn object_id_ok(id: &str) -> bool {
    let b = id.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && b[0].is_ascii_alphanumeric()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || b".-_:".contains(c))
}

/// A label key: 1..=128 of `[A-Za-z0-9._/-]`.
fn label_key_ok(key: &str) -> bool {
    (1..=128).contains(&key.len())
        && key.bytes().all(|c| c.is_ascii_alphanumeric() || b"._/-".contains(&c))
}

/// The tenant id rule (`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`), restated.
fn tenant_id_ok(id: &str) -> bool {
    let b = id.as_bytes();
    let edge = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    (1..=63).contains(&b.len())
        && b.iter().all(|c| edge(c) || *c == b'-')
        && b.first().is_some_and(edge)
        && b.last().is_some_and(edge)
}

/// The rejection an obviously invalid command must get: `Some(Some(r))` for exactly `r`,
/// `Some(None)` for any rejection, `None` if the command is not known to be invalid.
fn must_reject(command: &Command) -> Option<Option<Rejection>> {
    if let Some(t) = command.tenant() {
        if t.as_str().trim().is_empty() {
            return Some(Some(Rejection::TenantIdRequired));
        }
        if !tenant_id_ok(t.as_str()) {
            return Some(Some(Rejection::InvalidTenantId { tenant: t.0.clone() }));
        }
    }
    let bad_labels = |l: &Labels| l.keys().any(|k| !label_key_ok(k));
    let bad_rule = |r: &LabelRequirement| {
        let needs_values = matches!(r.op, LabelOp::In | LabelOp::NotIn);
        needs_values == r.values.is_empty()
    };
    let bad_spec = |s: &PlaceSpec| {
        s.max_runtime_ms == Some(0)
            || s.count == 0
            || s.resources.is_zero()
            || !object_id_ok(s.placement.as_str())
            || s.worker_requires.iter().chain(&s.worker_prefers).any(bad_rule)
    };
    let invalid = match command {
        Command::SetConfig { config } => {
            config.placement_algorithm != PLACEMENT_ALGORITHM
                || config.lease_grace_ms > 600_000
                || config.sessions_max == 0
        }
        Command::CreateTenant { parent, weight, .. } => {
            *weight == 0 || parent.as_ref().is_some_and(|p| !tenant_id_ok(p.as_str()))
        }
        Command::RegisterWorker { capacity, labels, .. } => {
            capacity.is_zero() || bad_labels(labels)
        }
        Command::UpdateWorker { capacity, labels, .. } => {
            capacity.is_some_and(Resources::is_zero) || labels.as_ref().is_some_and(bad_labels)
        }
        Command::SetQuota { quota, .. } => {
            quota
                .pools
                .keys()
                .chain(&quota.denied_pools)
                .chain(quota.guarantees.keys())
                .any(|p| !object_id_ok(p.as_str()))
                || quota.grace_ms.is_some_and(|g| g > GRACE_MAX_MS)
                || quota.soft_share.as_ref().is_some_and(|s| {
                    s.soft_per_mille > s.burst_per_mille || s.burst_per_mille > 1000
                })
                || Dimension::ALL
                    .into_iter()
                    .any(|d| quota.soft.get(d).is_some_and(|l| l.soft > l.burst))
        }
        Command::Place { spec, .. } | Command::PlaceOrQueue { spec, .. } => bad_spec(spec),
        Command::Reserve { spec, ttl_ms, .. } => bad_spec(spec) || *ttl_ms == 0,
        Command::CreatePlacementGroup { max_instances, .. } => *max_instances == 0,
        Command::SetPoolReserve { pool, .. } => !object_id_ok(pool.as_str()),
        Command::AcquireLease { holder, ttl_ms, .. } => holder.trim().is_empty() || *ttl_ms == 0,
        Command::Heartbeat { workers } => workers.is_empty(),
        Command::ReportStatus { slot, status, .. } => {
            *slot >= 1_000
                || matches!(status, ReportedStatus::Failed { message, .. } if message.len() > 256)
        }
        Command::SetPoolWorkerTtl { ttl_ms, .. } => {
            ttl_ms.is_some_and(|t| !(WORKER_TTL_MIN_MS..=WORKER_TTL_MAX_MS).contains(&t))
        }
        _ => false,
    };
    invalid.then_some(None)
}

/// A pool's guarantees summed over every tenant, and its schedulable capacity, per dimension
/// (cpu, memory), recomputed from the state.
fn pool_split(state: &State, pool: &PoolId) -> ([u128; 2], [u128; 2]) {
    let mut guaranteed = [0u128; 2];
    for g in state.tenants.values().filter_map(|t| t.quota.guarantees.get(pool)) {
        guaranteed[0] += u128::from(g.nominal.cpu_millis);
        guaranteed[1] += u128::from(g.nominal.memory_mib);
    }
    let mut capacity = [0u128; 2];
    for w in state.workers.values().filter(|w| w.pool == *pool && w.schedulable) {
        capacity[0] += u128::from(w.capacity.cpu_millis);
        capacity[1] += u128::from(w.capacity.memory_mib);
    }
    (guaranteed, capacity)
}

/// What advancing log time to `now` must expire, from the state before the entry.
fn due(state: &State, now: UnixMillis) -> Vec<Expired> {
    // A reservation with a time limit ends by whichever comes first (a tie: its expiry).
    let expiry_first = |p: &Placement| {
        p.expires_at.is_some_and(|e| e <= now && p.time_limit_at.is_none_or(|t| e <= t))
    };
    let mut due: Vec<Expired> = state
        .placements
        .values()
        .filter(|p| expiry_first(p))
        .map(|p| Expired::Reservation { tenant: p.tenant.clone(), reservation: p.id().clone() })
        .chain(
            state
                .placements
                .values()
                .filter(|p| p.time_limit_at.is_some_and(|t| t <= now) && !expiry_first(p))
                .map(|p| Expired::TimeLimit {
                    tenant: p.tenant.clone(),
                    placement: p.id().clone(),
                }),
        )
        .chain(state.leases.values().filter(|l| l.expires_at <= now).map(|l| Expired::Lease {
            tenant: l.tenant.clone(),
            lease: l.name.clone(),
            token: l.token,
        }))
        .chain(
            state
                .workers
                .values()
                .filter(|w| {
                    w.down_since.is_none() && w.liveness.is_some_and(|l| l.alive_until <= now)
                })
                .map(|w| Expired::Worker { worker: w.id.clone() }),
        )
        .collect();
    due.sort();
    due
}

fn sorted(expired: &[Expired]) -> Vec<Expired> {
    let mut v = expired.to_vec();
    v.sort();
    v
}

/// Everything but the session table is equal.
fn same_objects(a: &State, b: &State, what: &str) -> Result<(), TestCaseError> {
    prop_assert_eq!(&a.config, &b.config, "config changed: {}", what);
    prop_assert_eq!(a.now, b.now, "now changed: {}", what);
    prop_assert_eq!(&a.workers, &b.workers, "workers changed: {}", what);
    prop_assert_eq!(&a.tenants, &b.tenants, "tenants changed: {}", what);
    prop_assert_eq!(&a.placements, &b.placements, "placements changed: {}", what);
    prop_assert_eq!(&a.groups, &b.groups, "groups changed: {}", what);
    prop_assert_eq!(&a.leases, &b.leases, "leases changed: {}", what);
    prop_assert_eq!(&a.queue, &b.queue, "queue changed: {}", what);
    prop_assert_eq!(&a.pool_reserves, &b.pool_reserves, "pool reserves changed: {}", what);
    prop_assert_eq!(&a.pool_worker_ttls, &b.pool_worker_ttls, "worker TTLs changed: {}", what);
    Ok(())
}

/// Applies one entry and checks everything that must hold about it (property 1's body).
fn checked_apply(
    s: &mut Scheduler,
    model: &mut Model,
    entry: &Entry,
) -> Result<Applied, TestCaseError> {
    let before = s.clone();
    // The same log time with nothing else: the state a rejected command must leave behind.
    let mut ticked = s.clone();
    let tick = ticked.apply(Entry {
        index: entry.index,
        proposed_at: entry.proposed_at,
        request_id: None,
        command: Command::Tick,
        token: None,
    });
    let applied = s.apply(entry.clone());
    let what = format!("{entry:?}\n  => {applied:?}");

    if let Err(broken) = s.check_invariants() {
        return Err(TestCaseError::fail(format!("invariants broken: {broken:#?}\n  by {what}")));
    }
    check_preemptions(&before, s, entry, &applied, &what)?;
    check_lost(before.state(), s.state(), entry, &applied, &what)?;

    // A watcher that folds every event knows exactly what the state holds.
    for event in &applied.journal {
        model.watch.fold(event, &what)?;
    }
    prop_assert_eq!(&model.watch, &Watch::of(s.state()), "journal vs state: {}", what);
    let quota: Vec<&QuotaEvent> = applied
        .journal
        .iter()
        .filter_map(|e| if let Event::Quota(q) = e { Some(q) } else { None })
        .collect();
    prop_assert_eq!(quota, applied.events.iter().collect::<Vec<_>>(), "events: {}", what);

    // Time never runs backwards; it is the largest proposed_at seen.
    let now = before.now().max(entry.proposed_at);
    prop_assert_eq!(s.now(), now, "log time: {}", what);
    prop_assert!(s.now() >= before.now(), "time ran backwards: {}", what);

    // Exactly what was due expires, reported once, by this entry.
    let expected = due(before.state(), now);
    prop_assert_eq!(sorted(&applied.expired), expected.clone(), "expiry: {}", what);
    prop_assert_eq!(sorted(&tick.expired), expected, "expiry on tick: {}", what);

    // Exactly-once request ids.
    let key = entry.request_id.as_ref().map(|request_id| SessionKey {
        tenant: entry.command.tenant().cloned(),
        request_id: request_id.clone(),
    });
    let executed = match &key {
        Some(key) if !object_id_ok(key.request_id.as_str()) => {
            let refused = matches!(
                &applied.result,
                Err(Rejection::InvalidArgument { field, .. }) if field == "request"
            );
            prop_assert!(refused, "invalid request id accepted: {}", what);
            prop_assert!(!applied.replayed);
            prop_assert_eq!(s.state_hash(), ticked.state_hash(), "invalid request id: {}", what);
            false
        }
        // An out-of-bound command is refused by the static check before its request id is
        // looked up, and never remembered (a retry gets the same refusal).
        Some(key) if model.sessions.contains_key(key) && entry.command.validate().is_ok() => {
            let (command, first) = &model.sessions[key];
            if *command == entry.command {
                prop_assert!(applied.replayed, "retry not replayed: {}", what);
                prop_assert_eq!(&applied.result, &first.result, "retry answer: {}", what);
                prop_assert_eq!(applied.log_index, first.log_index, "retry index: {}", what);
                prop_assert_eq!(applied.applied_at, first.applied_at, "retry time: {}", what);
            } else {
                prop_assert!(!applied.replayed, "reused id replayed: {}", what);
                prop_assert_eq!(
                    &applied.result,
                    &Err(Rejection::RequestIdReused { first_index: first.log_index }),
                    "reused request id: {}",
                    what
                );
                prop_assert_eq!(applied.log_index, entry.index);
            }
            prop_assert_eq!(s.state_hash(), ticked.state_hash(), "retry changed state: {}", what);
            false
        }
        _ => true,
    };

    // A refused or replayed command emits nothing beyond what its log time did.
    if !executed || applied.result.is_err() {
        prop_assert_eq!(&applied.journal, &tick.journal, "a refusal emitted: {}", what);
    }

    if executed {
        prop_assert!(!applied.replayed, "fresh command replayed: {}", what);
        prop_assert_eq!(applied.log_index, entry.index, "log index: {}", what);
        prop_assert_eq!(applied.applied_at, now, "applied_at: {}", what);
        if let (Command::SetConfig { config }, Ok(_)) = (&entry.command, &applied.result) {
            prop_assert_eq!(&s.state().config, config, "config not set: {}", what);
            model.set_sessions_max(config.sessions_max);
        }
        if let (Command::DeleteTenant { tenant }, Ok(_)) = (&entry.command, &applied.result) {
            model.forget_tenant(tenant);
        }
        if let Some(key) = key.filter(|_| entry.command.validate().is_ok()) {
            let first = Applied {
                expired: Vec::new(),
                events: Vec::new(),
                lost: Vec::new(),
                journal: Vec::new(),
                audit: None,
                ..applied.clone()
            };
            model.remember(key, entry.command.clone(), first);
        }
        check_executed(ticked.state(), s, model, entry, &applied, &what)?;
        check_reclaim_exhausted(&ticked, entry, &applied, &what)?;
    }

    // The session table is exactly the model's, oldest first.
    let table: Vec<(&SessionKey, &Applied)> =
        s.state().sessions.iter().map(|(k, v)| (k, &v.first)).collect();
    let modelled: Vec<(&SessionKey, &Applied)> =
        model.order.values().map(|k| (k, &model.sessions[k].1)).collect();
    prop_assert_eq!(table, modelled, "session table: {}", what);

    // Every instance runs in its placement's pool.
    for (key, p) in &s.state().placements {
        for w in &p.instances {
            let pool = s.state().workers.get(w).map(|w| &w.pool);
            prop_assert_eq!(pool, Some(&p.pool), "{:?} outside its pool: {}", key, what);
        }
    }
    // A placement's instances never move; a new one must respect the rules as they stood.
    for (key, p) in &s.state().placements {
        match before.state().placements.get(key) {
            Some(old) if old.log_index == p.log_index => {
                // Only its lost instances move, each exactly as reported (`check_lost`).
                let mut expected = old.instances.clone();
                for lost in
                    applied.lost.iter().filter(|l| (&l.tenant, &l.placement) == (&key.0, &key.1))
                {
                    if let LostOutcome::Rescheduled { moves } = &lost.outcome {
                        for (slot, _, to) in moves {
                            expected[*slot as usize] = to.clone();
                        }
                    }
                }
                prop_assert_eq!(&expected, &p.instances, "{:?} moved: {}", key, what);
            }
            _ => {
                // Placed from the queue by this entry (before or after its command ran).
                let requeued = applied.events.iter().any(|e| {
                    matches!(e, QuotaEvent::Preempted { tenant, placement, requeued: true, .. }
                        if (tenant, placement) == (&key.0, &key.1))
                });
                // (Or lost with its worker and queued again by this entry.)
                let lost_queued = applied.lost.iter().any(|l| {
                    (&l.tenant, &l.placement) == (&key.0, &key.1)
                        && l.outcome == LostOutcome::Queued
                });
                let queued = before.state().queue.contains_key(key)
                    || requeued
                    || lost_queued
                    || matches!(&entry.command, Command::PlaceOrQueue { tenant, spec, .. }
                        if (tenant, &spec.placement) == (&key.0, &key.1));
                if queued {
                    check_admitted(before.state(), s.state(), p, &what)?;
                } else {
                    check_new_placement(before.state(), ticked.state(), p, &what)?;
                }
            }
        }
    }

    // Queue: nothing left waiting could be placed now (admission leaves nothing admissible
    // behind), unless its pool is held for an aged entry waiting for capacity; ids are unique.
    let held: Vec<&PoolId> = s
        .state()
        .queue
        .keys()
        .filter_map(|(t, id)| s.queue_status(t, id))
        .filter(|q| q.aged && matches!(q.reason, WaitReason::Refused(Rejection::NoCapacity { .. })))
        .map(|q| &s.state().queue[&(q.queued.tenant.clone(), q.queued.spec.placement.clone())].pool)
        .collect();
    for (t, id) in s.state().queue.keys() {
        let q = s.queue_status(t, id).expect("listed");
        if q.reason == WaitReason::FairShareOrder {
            prop_assert!(held.contains(&&q.queued.pool), "{}/{} fits but waits: {}", t, id, what);
        }
    }

    // Soft limits: a tenant whose grace period had ended before this entry gets no new work
    // (its usage rises in no dimension); a burst that starts here starts now, with the
    // effective grace period.
    for (id, t) in &s.state().tenants {
        let Some(was) = ticked.state().tenants.get(id) else { continue };
        // (Unless it went back under soft within this entry, which starts afresh.)
        let same_burst = t.burst.map(|b| b.since) == was.burst.map(|b| b.since);
        if was.burst.is_some_and(|b| b.expired) && same_burst {
            for d in Dimension::ALL {
                prop_assert!(
                    t.usage.total.get(d) <= was.usage.total.get(d),
                    "tenant {} grew its {} after its grace ended: {}",
                    id,
                    d.name(),
                    what
                );
            }
        }
        if let Some(b) = t.burst.filter(|b| was.burst.is_none_or(|w| w.since != b.since)) {
            prop_assert_eq!(b.since, s.now(), "burst of {} starts now: {}", id, what);
            let grace = s.effective_quota(id).grace_ms;
            prop_assert_eq!(b.grace_ends_at, s.now().plus_ms(grace), "grace of {}: {}", id, what);
        }
    }

    // Windows: within a day the job count never falls, never rises past a limit it had
    // reached, and a spent monthly cpu budget admits no new job.
    for (id, t) in &s.state().tenants {
        let (Some(was), Some(now)) = (ticked.window_usage(id), s.window_usage(id)) else {
            continue;
        };
        let Some(old) = ticked.state().tenants.get(id) else { continue };
        if was.day_resets_at != now.day_resets_at {
            continue;
        }
        prop_assert!(now.jobs_today >= was.jobs_today, "{} jobs fell within a day: {}", id, what);
        if let (Some(a), Some(b)) = (old.quota.windows.jobs_per_day, t.quota.windows.jobs_per_day) {
            // Admission may run under the old limit (before the command) and the new one.
            let cap = a.max(b).max(was.jobs_today);
            prop_assert!(now.jobs_today <= cap, "{} over its jobs per day: {}", id, what);
        }
        if was.week_resets_at == now.week_resets_at {
            prop_assert!(now.jobs_this_week >= was.jobs_this_week, "{} week fell: {}", id, what);
            prop_assert!(now.cpu_milli_ms_this_week >= was.cpu_milli_ms_this_week);
            let limits = (old.quota.windows.jobs_per_week, t.quota.windows.jobs_per_week);
            if let (Some(a), Some(b)) = limits {
                let cap = a.max(b).max(was.jobs_this_week);
                prop_assert!(now.jobs_this_week <= cap, "{} over its jobs per week: {}", id, what);
            }
            let budgets =
                (old.quota.windows.cpu_milli_ms_per_week, t.quota.windows.cpu_milli_ms_per_week);
            if let (Some(a), Some(b)) = budgets {
                if was.cpu_milli_ms_this_week >= u128::from(a.max(b)) {
                    prop_assert_eq!(
                        now.jobs_this_week,
                        was.jobs_this_week,
                        "{} spent its cpu week, yet placed: {}",
                        id,
                        what
                    );
                }
            }
        }
        let budgets =
            (old.quota.windows.cpu_milli_ms_per_month, t.quota.windows.cpu_milli_ms_per_month);
        if let (Some(a), Some(b)) = budgets {
            // Spent under the limit before and after the command (admission runs under both).
            if was.cpu_milli_ms_this_month >= u128::from(a.max(b)) {
                prop_assert_eq!(
                    now.jobs_today,
                    was.jobs_today,
                    "{} spent, yet placed: {}",
                    id,
                    what
                );
            }
        }
    }

    // next_deadline is the earliest reservation or lease expiry or grace end.
    let st = s.state();
    let earliest = st
        .placements
        .values()
        .filter_map(|p| p.expires_at)
        .chain(st.placements.values().filter_map(|p| p.time_limit_at))
        .chain(st.leases.values().map(|l| l.expires_at))
        .chain(
            st.tenants
                .values()
                .filter_map(|t| t.burst.filter(|b| !b.expired))
                .map(|b| b.grace_ends_at),
        )
        .chain(
            st.workers
                .values()
                .filter(|w| w.down_since.is_none())
                .filter_map(|w| w.liveness.map(|l| l.alive_until)),
        )
        // Meters: budgets' alerts and month ends, invoices due to close (`meter_deadline`).
        .chain(st.tenants.values().filter_map(|t| berth::scheduler::meter::meter_deadline(st, t)))
        .chain(
            (!st.queue.is_empty() && st.tenants.values().any(|t| !t.quota.windows.is_unlimited()))
                .then(|| UnixMillis((st.now.0 / DAY_MS + 1) * DAY_MS)),
        )
        .min();
    prop_assert_eq!(s.next_deadline(), earliest, "next_deadline: {}", what);
    Ok(applied)
}

/// Workers that go down take nothing with them: no instance stands on a down worker after any
/// entry; every placement that had an instance on a worker this entry marked down (and did not
/// expire in it) is reported exactly once in `Applied::lost` with exactly its lost slots, and
/// either each lost slot moved (to a worker that was ready, undrained and met the spec's
/// required labels, never under `OnWorkerLost::Release`) or the placement was released
/// `WORKER_LOST` (queued again exactly when it came through the queue).
/// True when `applied` reports `key` preempted within its entry.
fn preempted_in(applied: &Applied, key: (&TenantId, &PlacementId)) -> bool {
    applied.events.iter().any(|e| {
        matches!(e, QuotaEvent::Preempted { tenant, placement, .. } if (tenant, placement) == key)
    })
}

fn check_lost(
    before: &State,
    after: &State,
    entry: &Entry,
    applied: &Applied,
    what: &str,
) -> Result<(), TestCaseError> {
    for (key, p) in &after.placements {
        for w in &p.instances {
            let down = after.workers.get(w).is_some_and(|w| w.down_since.is_some());
            prop_assert!(!down, "{:?} has an instance on down worker {}: {}", key, w, what);
        }
    }
    let dead: Vec<&WorkerId> = applied
        .expired
        .iter()
        .filter_map(|e| match e {
            Expired::Worker { worker } => Some(worker),
            _ => None,
        })
        .collect();
    let now = after.now;
    let mut expected: Vec<(TenantId, PlacementId, Vec<u32>)> = before
        .placements
        .iter()
        .filter(|(_, p)| p.expires_at.is_none_or(|at| at > now))
        .filter(|(_, p)| p.time_limit_at.is_none_or(|at| at > now))
        .filter_map(|(key, p)| {
            let slots: Vec<u32> = (0..p.instances.len())
                .filter(|i| dead.contains(&&p.instances[*i]))
                .map(|i| i as u32)
                .collect();
            (!slots.is_empty()).then(|| (key.0.clone(), key.1.clone(), slots))
        })
        .collect();
    expected.sort();
    let reported: Vec<(TenantId, PlacementId, Vec<u32>)> = applied
        .lost
        .iter()
        .map(|l| (l.tenant.clone(), l.placement.clone(), l.slots.clone()))
        .collect();
    prop_assert_eq!(&reported, &expected, "lost instances, each once: {}", what);
    for Lost { tenant, placement, slots, outcome } in &applied.lost {
        let key = (tenant.clone(), placement.clone());
        let old = &before.placements[&key];
        let still = after.placements.get(&key).filter(|p| p.log_index == old.log_index);
        let commanded = match &entry.command {
            Command::Place { tenant: t, spec, .. }
            | Command::PlaceOrQueue { tenant: t, spec, .. }
            | Command::Reserve { tenant: t, spec, .. } => {
                (t, &spec.placement) == (tenant, placement)
            }
            Command::CancelQueued { tenant: t, .. } | Command::DeleteTenant { tenant: t } => {
                t == tenant
            }
            // (Queued again, admitted at once, then released by the command.)
            Command::Release { tenant: t, placement: id, .. } => (t, id) == (tenant, placement),
            Command::RemoveWorker { .. } => matches!(&applied.result,
                Ok(Response::WorkerRemoved { evicted }) if evicted.contains(&key)),
            _ => false,
        };
        match outcome {
            LostOutcome::Rescheduled { moves } => {
                prop_assert_eq!(old.spec.on_worker_lost, OnWorkerLost::Reschedule, "{}", what);
                let moved: Vec<u32> = moves.iter().map(|m| m.0).collect();
                prop_assert_eq!(&moved, slots, "every lost slot moves: {}", what);
                for (slot, from, to) in moves {
                    prop_assert_eq!(&old.instances[*slot as usize], from);
                    let target = before.workers.get(to);
                    prop_assert!(
                        target.is_some_and(|w| w.down_since.is_none() && w.schedulable)
                            && !dead.contains(&to),
                        "{:?} slot {} moved to {} that was down, drained or dying: {}",
                        key,
                        slot,
                        to,
                        what
                    );
                    let labels = target.map(|w| w.labels.clone()).unwrap_or_default();
                    for rule in &old.spec.worker_requires {
                        prop_assert!(
                            rule.matches(&labels),
                            "{:?} moved to {} against {:?}: {}",
                            key,
                            to,
                            rule,
                            what
                        );
                    }
                }
            }
            LostOutcome::Queued | LostOutcome::Released => {
                prop_assert!(still.is_none(), "released {:?} is still placed: {}", key, what);
                let queued = matches!(outcome, LostOutcome::Queued);
                prop_assert_eq!(
                    queued,
                    old.queue_if_unavailable,
                    "{:?} queued again iff it came through the queue: {}",
                    key,
                    what
                );
                let back = after.queue.contains_key(&key) || after.placements.contains_key(&key);
                if queued {
                    // (Unless placed again and then preempted within this entry.)
                    let preempted = preempted_in(applied, (tenant, placement));
                    prop_assert!(
                        back || commanded || preempted,
                        "queued {:?} is gone: {}",
                        key,
                        what
                    );
                } else if !commanded && before.queue.len() < QUEUE_MAX {
                    let placed_anew =
                        after.placements.get(&key).is_some_and(|p| p.log_index == entry.index);
                    prop_assert!(
                        !after.queue.contains_key(&key) && !placed_anew,
                        "released {:?} came back: {}",
                        key,
                        what
                    );
                }
            }
        }
    }
    Ok(())
}

/// A placement made by this entry: invariant 4 temporally (no instance on a worker that was
/// drained before the entry), required worker labels, and required affinity (each instance
/// lands where the tenant already ran a workload with the label, or where an earlier instance
/// of this very placement carrying it went).
fn check_new_placement(
    before: &State,
    ticked: &State,
    p: &Placement,
    what: &str,
) -> Result<(), TestCaseError> {
    let mut carriers: Vec<Vec<&WorkerId>> = p
        .spec
        .affinity
        .iter()
        .map(|term| {
            ticked
                .placements
                .values()
                .filter(|q| {
                    q.tenant == p.tenant && q.spec.labels.get(&term.key) == Some(&term.value)
                })
                .flat_map(|q| q.instances.iter())
                .collect()
        })
        .collect();
    for w in &p.instances {
        let was = before.workers.get(w);
        prop_assert!(
            was.is_some_and(|w| w.schedulable),
            "new instance of {} on worker {} that was drained or missing ({:?}): {}",
            p.id(),
            w,
            was.map(|w| w.schedulable),
            what
        );
        let then = ticked.workers.get(w);
        prop_assert!(
            then.is_some_and(|w| w.down_since.is_none()),
            "new instance of {} on worker {} that was down: {}",
            p.id(),
            w,
            what
        );
        let labels = was.map(|w| &w.labels).cloned().unwrap_or_default();
        for rule in &p.spec.worker_requires {
            prop_assert!(rule.matches(&labels), "{} on {} breaks {:?}: {}", p.id(), w, rule, what);
        }
        for (term, on) in p.spec.affinity.iter().zip(carriers.iter_mut()) {
            prop_assert!(on.contains(&w), "{} on {} without {:?}: {}", p.id(), w, term, what);
            if p.spec.labels.get(&term.key) == Some(&term.value) {
                on.push(w);
            }
        }
    }
    Ok(())
}

/// A placement admitted from the queue by this entry: on workers schedulable before or after
/// the command (admission runs on both sides of it), meeting its required labels there, and
/// next to a carrier of every required affinity label as the state now stands.
fn check_admitted(
    before: &State,
    after: &State,
    p: &Placement,
    what: &str,
) -> Result<(), TestCaseError> {
    for w in &p.instances {
        let states = [before.workers.get(w), after.workers.get(w)];
        let ok = states
            .iter()
            .flatten()
            .any(|w| w.schedulable && p.spec.worker_requires.iter().all(|r| r.matches(&w.labels)));
        prop_assert!(ok, "admitted {} on {} breaks drain or labels: {}", p.id(), w, what);
        for term in &p.spec.affinity {
            let carried = after.placements.values().any(|q| {
                q.tenant == p.tenant
                    && q.spec.labels.get(&term.key) == Some(&term.value)
                    && q.instances.contains(w)
            });
            prop_assert!(carried, "admitted {} on {} without {:?}: {}", p.id(), w, term, what);
        }
    }
    Ok(())
}

/// The nearest-first chain of `tenant` and its ancestors in `state`.
fn lineage_of(state: &State, tenant: &TenantId) -> Vec<TenantId> {
    let mut chain = vec![tenant.clone()];
    while let Some(parent) = chain.last().and_then(|t| state.tenants.get(t)?.parent.clone()) {
        chain.push(parent);
    }
    chain
}

/// Preemption never cycles and never breaks its rules: a victim has strictly lower priority
/// than its preemptor, unless it was reclaimed — then it was borrowed, its tenant is unrelated to
/// the claimant and was above its guarantee, and the claimant places within its own guarantee;
/// no two placements preempt each other; a victim not re-queued is gone, a re-queued one waits
/// or was placed again; an entry preempts a bounded number of placements.
fn check_preemptions(
    before: &Scheduler,
    after: &Scheduler,
    entry: &Entry,
    applied: &Applied,
    what: &str,
) -> Result<(), TestCaseError> {
    let (b, a) = (before.state(), after.state());
    let commanded = |key: &(TenantId, PlacementId)| match &entry.command {
        Command::Place { tenant, spec, .. }
        | Command::PlaceOrQueue { tenant, spec, .. }
        | Command::Reserve { tenant, spec, .. }
            if (tenant, &spec.placement) == (&key.0, &key.1) =>
        {
            Some(spec.clone())
        }
        _ => None,
    };
    let spec_of = |key: &(TenantId, PlacementId)| -> Option<PlaceSpec> {
        a.placements
            .get(key)
            .map(|p| p.spec.clone())
            .or_else(|| b.placements.get(key).map(|p| p.spec.clone()))
            .or_else(|| b.queue.get(key).map(|q| q.spec.clone()))
            .or_else(|| a.queue.get(key).map(|q| q.spec.clone()))
            .or_else(|| commanded(key))
    };
    let mut edges: Vec<((TenantId, PlacementId), (TenantId, PlacementId))> = Vec::new();
    let mut last: BTreeMap<(TenantId, PlacementId), bool> = BTreeMap::new();
    for (i, e) in applied.events.iter().enumerate() {
        let QuotaEvent::Preempted {
            tenant,
            placement,
            by_tenant,
            by_placement,
            reclaimed,
            requeued,
        } = e
        else {
            continue;
        };
        let victim = (tenant.clone(), placement.clone());
        let by = (by_tenant.clone(), by_placement.clone());
        prop_assert!(victim != by, "{:?} preempted itself: {}", victim, what);
        let (Some(v), Some(p)) = (spec_of(&victim), spec_of(&by)) else {
            return Err(TestCaseError::fail(format!("unknown preemption {e:?}: {what}")));
        };
        if *reclaimed {
            // (Unless it was placed again by this entry, after an earlier preemption.)
            let again = applied.events[..i].iter().any(|e| {
                matches!(e, QuotaEvent::Admitted { tenant: t, placement: id }
                    if (t, id) == (&victim.0, &victim.1))
            });
            if let Some(old) = b.placements.get(&victim).filter(|_| !again) {
                prop_assert!(old.borrowed, "reclaimed {:?} was not borrowed: {}", victim, what);
            }
            prop_assert!(
                !lineage_of(b, tenant).contains(by_tenant)
                    && !lineage_of(b, by_tenant).contains(tenant),
                "reclaim between related tenants {:?}: {}",
                e,
                what
            );
            let pool = p.pool.clone().unwrap_or_else(|| PoolId::from("default"));
            // (Before or after the command: admission runs on both sides of a SetQuota.)
            let g = |st: &State| {
                st.tenants.get(by_tenant).is_some_and(|t| t.quota.guarantees.contains_key(&pool))
            };
            prop_assert!(g(b) || g(a), "reclaim without a guarantee {:?}: {}", e, what);
        } else {
            prop_assert!(
                v.priority < p.priority,
                "{:?} (priority {}) preempted by {:?} (priority {}): {}",
                victim,
                v.priority,
                by,
                p.priority,
                what
            );
        }
        edges.push((by, victim.clone()));
        last.insert(victim, *requeued);
    }
    prop_assert!(
        edges.len() as u64 <= PREEMPTIONS_PER_ENTRY_MAX,
        "{} preemptions in one entry: {}",
        edges.len(),
        what
    );
    for (by, victim) in &edges {
        prop_assert!(
            !edges.contains(&(victim.clone(), by.clone())),
            "{:?} and {:?} preempted each other: {}",
            by,
            victim,
            what
        );
    }
    for (victim, requeued) in &last {
        let back = a.queue.contains_key(victim) || a.placements.contains_key(victim);
        if *requeued {
            prop_assert!(back, "re-queued {:?} is gone: {}", victim, what);
        } else if commanded(victim).is_none() {
            prop_assert!(!back, "preempted {:?} came back: {}", victim, what);
        }
    }
    Ok(())
}

/// A lender gets its guarantee back within the one step that asks for it: if a `Place` within
/// its tenant's guarantee (by a tenant that may not preempt by priority) is refused for
/// capacity, then releasing borrowers one by one, as the rules allow (borrowed, of a tenant
/// still above its own share and unrelated to the claimant; lowest priority, most recent
/// first), through ordinary `Release` commands on a copy, never makes it fit either.
/// True when `p` may be reclaimed for `claimant` in `pool` on state `s` (borrow.rs's rule).
fn reclaimable(s: &Scheduler, p: &Placement, claimant: &TenantId, pool: &PoolId) -> bool {
    let st = s.state();
    let over = s.borrowed(&p.tenant, pool);
    p.borrowed
        && !p.is_reservation()
        && p.pool == *pool
        && !lineage_of(st, &p.tenant).contains(claimant)
        && !lineage_of(st, claimant).contains(&p.tenant)
        && ((p.spec.resources.cpu_millis > 0 && over.cpu_millis > 0)
            || (p.spec.resources.memory_mib > 0 && over.memory_mib > 0))
}

fn check_reclaim_exhausted(
    ticked: &Scheduler,
    entry: &Entry,
    applied: &Applied,
    what: &str,
) -> Result<(), TestCaseError> {
    let (Command::Place { tenant, spec, .. }, Err(Rejection::NoCapacity { .. })) =
        (&entry.command, &applied.result)
    else {
        return Ok(());
    };
    let st = ticked.state();
    let pool = spec.pool.clone().unwrap_or_else(|| PoolId::from("default"));
    let (Some(t), Some(total)) =
        (st.tenants.get(tenant), spec.resources.checked_mul(u64::from(spec.count)))
    else {
        return Ok(());
    };
    let Some(g) = t.quota.guarantees.get(&pool) else { return Ok(()) };
    let used = t.usage.pool(&pool);
    let within = used.cpu_millis + total.cpu_millis <= g.nominal.cpu_millis
        && used.memory_mib + total.memory_mib <= g.nominal.memory_mib;
    if !within || ticked.effective_quota(tenant).preemption != Preemption::Never {
        return Ok(());
    }
    let mut copy = ticked.clone();
    let at = |command| Entry {
        index: entry.index,
        proposed_at: entry.proposed_at,
        request_id: None,
        command,
        token: None,
    };
    // No single reclaimable victim makes it fit on its own either (reclaim must not give up
    // early by taking the wrong borrower's work first).
    let single: Vec<(TenantId, PlacementId)> = st
        .placements
        .values()
        .filter(|p| reclaimable(ticked, p, tenant, &pool))
        .map(|p| (p.tenant.clone(), p.id().clone()))
        .collect();
    for victim in single {
        let mut trial = ticked.clone();
        let release =
            Command::Release { tenant: victim.0.clone(), placement: victim.1.clone(), fence: None };
        prop_assert!(trial.apply(at(release)).result.is_ok(), "model release failed: {}", what);
        let placed = trial.apply(at(entry.command.clone()));
        let preempted = placed.events.iter().any(|e| matches!(e, QuotaEvent::Preempted { .. }));
        prop_assert!(
            placed.result.is_err() || preempted,
            "within its guarantee, refused, yet reclaiming only {:?} makes it fit: {}",
            victim,
            what
        );
    }
    let mut released = Vec::new();
    for _ in 0..PREEMPT_VICTIMS_MAX {
        let cs = copy.state();
        let mut order: Vec<&Placement> = cs.placements.values().collect();
        order.sort_by_key(|p| {
            (p.spec.priority, std::cmp::Reverse(p.log_index), std::cmp::Reverse(p.placed_at))
        });
        let next = order.into_iter().find(|p| reclaimable(&copy, p, tenant, &pool));
        let Some(victim) = next.map(|p| (p.tenant.clone(), p.id().clone())) else {
            return Ok(());
        };
        let release =
            Command::Release { tenant: victim.0.clone(), placement: victim.1.clone(), fence: None };
        prop_assert!(copy.apply(at(release)).result.is_ok(), "model release failed: {}", what);
        released.push(victim);
        let mut trial = copy.clone();
        let placed = trial.apply(at(entry.command.clone()));
        let preempted = placed.events.iter().any(|e| matches!(e, QuotaEvent::Preempted { .. }));
        prop_assert!(
            placed.result.is_err() || preempted,
            "within its guarantee, refused, yet releasing {:?} makes it fit: {}",
            released,
            what
        );
    }
    Ok(())
}

/// Checks for a command that really ran (not replayed, not refused for its request id).
fn check_executed(
    ticked: &State,
    s: &Scheduler,
    model: &mut Model,
    entry: &Entry,
    applied: &Applied,
    what: &str,
) -> Result<(), TestCaseError> {
    let after = s.state();
    let now = after.now;
    let ok = applied.result.is_ok();

    // A rejection changes nothing (beyond expiry and its session record).
    if !ok {
        same_objects(ticked, after, what)?;
    }
    match must_reject(&entry.command) {
        Some(Some(rejection)) => {
            prop_assert_eq!(&applied.result, &Err(rejection), "invalid tenant id: {}", what)
        }
        Some(None) => prop_assert!(!ok, "invalid input accepted: {}", what),
        None => {}
    }

    // Invariant 7: a command carrying a token that is not the live one never takes effect.
    if let Some((tenant, lease, token)) = fenced(&entry.command) {
        let live = ticked.leases.get(&(tenant.clone(), lease.clone())).map(|l| l.token);
        if ok {
            prop_assert_eq!(live, Some(token), "stale fence accepted: {}", what);
        } else if live != Some(token)
            && entry.command.validate().is_ok()
            && ticked.tenants.contains_key(&tenant)
        {
            prop_assert_eq!(
                &applied.result,
                &Err(Rejection::StaleFencingToken { lease, presented: token, current: live }),
                "stale fence: {}",
                what
            );
        }
    }

    // A pool's reserve is never guaranteed to anyone: no entry raises a reserved pool's
    // guarantees plus reserve, in a dimension, above its schedulable capacity.
    for (pool, reserve) in &after.pool_reserves {
        let wide = |r: Resources| [u128::from(r.cpu_millis), u128::from(r.memory_mib)];
        let ((was, _), (will, capacity)) = (pool_split(ticked, pool), pool_split(after, pool));
        let (before, reserve) =
            (wide(ticked.pool_reserves.get(pool).copied().unwrap_or_default()), wide(*reserve));
        for i in 0..2 {
            let (old, new) = (was[i] + before[i], will[i] + reserve[i]);
            prop_assert!(
                new <= old || new <= capacity[i],
                "pool {} overcommitted past its reserve: {}",
                pool,
                what
            );
        }
    }

    // A lease's life is never cut short while it is held (keep-alive and leader change only
    // extend it).
    for (key, l) in &after.leases {
        if let Some(was) = ticked.leases.get(key).filter(|was| was.token == l.token) {
            prop_assert!(l.expires_at >= was.expires_at, "lease {} shortened: {}", l.name, what);
        }
    }

    match (&entry.command, &applied.result) {
        (Command::AcquireLease { tenant, lease, ttl_ms, .. }, result) => {
            let key = (tenant.clone(), lease.clone());
            if ticked.leases.contains_key(&key) {
                prop_assert!(result.is_err(), "second holder granted: {}", what);
            }
            if let Ok(Response::LeaseGranted(l)) = result {
                prop_assert_eq!(l.token, entry.index, "token is the grant's index: {}", what);
                prop_assert_eq!(l.expires_at, now.plus_ms(*ttl_ms));
                prop_assert_eq!(after.leases.get(&key), Some(l), "granted lease: {}", what);
                if let Some(prev) = model.last_token.get(&key) {
                    prop_assert!(l.token > *prev, "token did not increase: {}", what);
                }
                model.last_token.insert(key, l.token);
            }
        }
        (Command::KeepAliveLease { tenant, lease, token }, Ok(Response::LeaseKeptAlive(l))) => {
            let held = after.leases.get(&(tenant.clone(), lease.clone()));
            prop_assert_eq!(held, Some(l), "kept-alive lease: {}", what);
            prop_assert_eq!(l.token, *token, "keep-alive changed the token: {}", what);
            prop_assert!(l.expires_at >= now.plus_ms(l.ttl_ms), "keep-alive: {}", what);
        }
        (Command::ReleaseLease { tenant, lease, .. }, Ok(_)) => {
            let key = (tenant.clone(), lease.clone());
            prop_assert!(!after.leases.contains_key(&key), "released lease held: {}", what);
        }
        (Command::ReportStatus { worker, tenant, placement, slot, assigned_at, .. }, result) => {
            let key = (tenant.clone(), placement.clone());
            let was = ticked.placements.get(&key);
            let live = was.and_then(|p| {
                let i = *slot as usize;
                (i < p.instances.len() && p.instances[i] == *worker && !p.is_reservation())
                    .then(|| p.slots[i].assigned_at)
            });
            match result {
                Ok(Response::StatusReported { finished }) => {
                    prop_assert_eq!(live, Some(*assigned_at), "a stale report landed: {}", what);
                    let old = was.map(|p| p.log_index);
                    let still =
                        after.placements.get(&key).is_some_and(|p| Some(p.log_index) == old);
                    prop_assert_eq!(still, finished.is_none(), "ended iff released: {}", what);
                    if let Some(state) = finished {
                        let record = after.finished.get(&key).map(|f| &f.state);
                        prop_assert_eq!(record, Some(state), "finished record: {}", what);
                    }
                }
                Err(Rejection::StaleAssignment { .. }) => {
                    prop_assert!(live != Some(*assigned_at), "a live report refused: {}", what);
                }
                _ => {}
            }
        }
        (Command::SetPoolWorkerTtl { pool, ttl_ms }, Ok(_)) => {
            match ttl_ms {
                Some(ttl) => model.pool_ttls.insert(pool.clone(), *ttl),
                None => model.pool_ttls.remove(pool),
            };
            prop_assert_eq!(&after.pool_worker_ttls, &model.pool_ttls, "pool TTLs: {}", what);
        }
        (Command::Heartbeat { workers }, Ok(Response::Heartbeats(acks))) => {
            prop_assert_eq!(acks.len(), workers.len(), "one answer per id: {}", what);
            for (id, ack) in workers.iter().zip(acks) {
                let (Some(was), Some(ack)) = (ticked.workers.get(id), ack) else {
                    prop_assert!(ack.is_none(), "unknown {} answered: {}", id, what);
                    continue;
                };
                let w = &after.workers[id];
                let ttl = model.ttl_of(&was.pool);
                let old = was.liveness.filter(|_| was.down_since.is_none()).map(|l| l.alive_until);
                let until = now.plus_ms(ttl).max(old.unwrap_or(UnixMillis(0)));
                prop_assert_eq!(
                    w.liveness.map(|l| l.alive_until),
                    Some(until),
                    "TTL of {}: {}",
                    id,
                    what
                );
                prop_assert_eq!(ack.alive_until, until);
                prop_assert_eq!(ack.revived, was.down_since.is_some(), "revived {}: {}", id, what);
                prop_assert!(
                    w.down_since.is_none(),
                    "{} still down after a heartbeat: {}",
                    id,
                    what
                );
                let generation = if ack.revived { entry.index } else { was.generation };
                prop_assert_eq!(w.generation, generation, "generation of {}: {}", id, what);
                if ack.revived {
                    prop_assert!(was.allocated.is_zero(), "revived {} held work: {}", id, what);
                }
            }
        }
        (Command::LeaderChanged, Ok(_)) => {
            let floor = now.plus_ms(after.config.lease_grace_ms);
            for w in after.workers.values().filter(|w| w.down_since.is_none()) {
                let until = w.liveness.map(|l| l.alive_until);
                prop_assert!(until.is_none_or(|u| u >= floor), "{} not extended: {}", w.id, what);
            }
            for l in after.leases.values() {
                prop_assert!(l.expires_at >= floor, "lease {} not extended: {}", l.name, what);
            }
        }
        (Command::PlaceOrQueue { tenant, spec, .. }, Ok(Response::Queued(q))) => {
            let key = (tenant.clone(), spec.placement.clone());
            prop_assert!(!ticked.placements.contains_key(&key), "queued a placed id: {}", what);
            prop_assert!(!ticked.queue.contains_key(&key), "queued twice: {}", what);
            prop_assert_eq!(after.queue.get(&key), Some(&q.queued), "queued stored: {}", what);
            prop_assert_eq!(q.queued.log_index, entry.index);
        }
        (Command::CancelQueued { tenant, placement }, Ok(_)) => {
            let key = (tenant.clone(), placement.clone());
            prop_assert!(ticked.queue.contains_key(&key), "cancelled nothing: {}", what);
            prop_assert!(!after.queue.contains_key(&key), "still queued: {}", what);
        }
        (Command::PlaceOrQueue { tenant, spec, .. }, Ok(Response::Placed(p)))
        | (Command::Place { tenant, spec, .. }, Ok(Response::Placed(p)))
        | (Command::Reserve { tenant, spec, .. }, Ok(Response::Reserved(p))) => {
            let key = (tenant.clone(), spec.placement.clone());
            prop_assert!(!ticked.placements.contains_key(&key), "placed twice: {}", what);
            // (Unless queue admission later in the entry preempted it, which is reported.)
            let preempted = preempted_in(applied, (&key.0, &key.1));
            if !preempted {
                prop_assert_eq!(after.placements.get(&key), Some(p), "placement stored: {}", what);
            }
            prop_assert_eq!(p.instances.len(), spec.count as usize);
            let expires_at = match &entry.command {
                Command::Reserve { ttl_ms, .. } => Some(now.plus_ms(*ttl_ms)),
                _ => None,
            };
            prop_assert_eq!(p.expires_at, expires_at, "reservation expiry: {}", what);
            let limit = spec.max_runtime_ms.map(|ms| now.plus_ms(ms));
            prop_assert_eq!(p.time_limit_at, limit, "time limit: {}", what);
        }
        (Command::Release { tenant, placement: id, .. }, Ok(_))
        | (Command::CancelReservation { tenant, reservation: id, .. }, Ok(_)) => {
            let key = (tenant.clone(), id.clone());
            prop_assert!(ticked.placements.contains_key(&key), "released nothing: {}", what);
            prop_assert!(!after.placements.contains_key(&key), "still placed: {}", what);
        }
        (Command::ConfirmReservation { tenant, reservation, .. }, Ok(Response::Confirmed(p))) => {
            let key = (tenant.clone(), reservation.clone());
            let was = ticked.placements.get(&key);
            prop_assert!(was.is_some_and(|r| r.is_reservation()), "confirmed: {}", what);
            // Work may be preempted where a reservation may not: queue admission later in the
            // entry may take it at once, which is reported.
            let preempted = preempted_in(applied, (&key.0, &key.1));
            if !preempted {
                prop_assert_eq!(after.placements.get(&key), Some(p), "confirmed: {}", what);
            }
            prop_assert!(!p.is_reservation());
            prop_assert_eq!(was.map(|r| &r.instances), Some(&p.instances), "moved: {}", what);
        }
        (Command::DeleteTenant { tenant }, Ok(_)) => {
            prop_assert!(!after.tenants.contains_key(tenant), "tenant kept: {}", what);
        }
        _ => {}
    }
    Ok(())
}

// ----- running a case -------------------------------------------------------------------------

/// Everything a run produced, entry by entry.
struct Run {
    entries: Vec<Entry>,
    applied: Vec<Applied>,
    hashes: Vec<[u8; 32]>,
    last: Scheduler,
}

type Hook<'a> = dyn FnMut(&mut Model, &mut Driver, &Step) -> Result<(), TestCaseError> + 'a;

/// Builds and applies every step of `case` with `checked_apply`, calling `hook` after each.
fn drive(case: &Case, hook: &mut Hook<'_>) -> Result<Run, TestCaseError> {
    let mut model = Model::new(&case.config);
    let mut driver = Driver::new(&case.config);
    let mut run = Run {
        entries: Vec::new(),
        applied: Vec::new(),
        hashes: Vec::new(),
        last: driver.log.s.clone(),
    };
    for step in &case.steps {
        let entry = driver.entry(step);
        let applied = checked_apply(&mut driver.log.s, &mut model, &entry)?;
        driver.observe(&entry, &applied);
        run.entries.push(entry);
        run.applied.push(applied);
        run.hashes.push(driver.log.s.state_hash());
        hook(&mut model, &mut driver, step)?;
    }
    run.last = driver.log.s;
    Ok(run)
}

fn no_hook(_: &mut Model, _: &mut Driver, _: &Step) -> Result<(), TestCaseError> {
    Ok(())
}

/// A command in the same request-id scope (same tenant) that differs from `command`.
fn different(command: &Command) -> Command {
    let candidates = match command.tenant() {
        None => vec![Command::Tick, Command::LeaderChanged],
        Some(tenant) => vec![
            Command::DeleteTenant { tenant: tenant.clone() },
            Command::SetQuota { tenant: tenant.clone(), quota: Quota::default() },
        ],
    };
    candidates.into_iter().find(|c| c != command).expect("two distinct candidates")
}

/// 64 cases per property (a few seconds in the debug profile); `PROPTEST_CASES` overrides it
/// for a longer soak.
fn cases() -> ProptestConfig {
    let default = ProptestConfig::default();
    let cases = if std::env::var_os("PROPTEST_CASES").is_some() { default.cases } else { 64 };
    ProptestConfig { cases, failure_persistence: None, ..default }
}

/// A run built for contention: two or three small workers, simple specs of every priority, and
/// quotas that allow preemption and hold guarantees, so that priority preemption, re-queueing,
/// borrowing and reclaim happen in most runs.
fn contention_case() -> impl Strategy<Value = Case> {
    let simple = (
        select(PLACEMENTS.to_vec()).prop_map(PlacementId::from),
        1..=2u32,
        (300..=1200u64, 64..=512u64).prop_map(|(c, m)| Resources::new(c, m)),
        prop_oneof![2 => Just(None), 1 => Just(Some(PoolId::from("p2")))],
        -2..=2i32,
        prop::bool::weighted(0.5),
    )
        .prop_map(|(placement, count, resources, pool, priority, requeue_on_preemption)| {
            PlaceSpec {
                placement,
                count,
                resources,
                pool,
                priority,
                requeue_on_preemption,
                ..PlaceSpec::default()
            }
        });
    let command = prop_oneof![
        8 => (tenant(), simple.clone())
            .prop_map(|(tenant, spec)| Command::Place { tenant, spec, fence: None }),
        6 => (tenant(), simple)
            .prop_map(|(tenant, spec)| Command::PlaceOrQueue { tenant, spec, fence: None }),
        4 => (tenant(), placement_id())
            .prop_map(|(tenant, placement)| Command::Release { tenant, placement, fence: None }),
        2 => (tenant(), preempting_quota())
            .prop_map(|(tenant, quota)| Command::SetQuota { tenant, quota }),
        2 => Just(Command::Tick),
        1 => (worker(), any::<bool>())
            .prop_map(|(worker, schedulable)| Command::SetWorkerSchedulable { worker, schedulable }),
        1 => (worker(), 1000..=2500u64).prop_map(|(worker, cpu)| Command::RegisterWorker {
            worker,
            pool: None,
            capacity: Resources::new(cpu, 4096),
            labels: Labels::new(),
        }),
        1 => worker().prop_map(|worker| Command::RemoveWorker { worker, evict: true }),
        1 => set_pool_reserve(),
        4 => heartbeat(),
    ];
    let step = (command, prop::option::weighted(0.5, any::<Index>()), 1..=200_000u64).prop_map(
        |(command, target, dt)| Step { dt: Dt::Forward(dt), target, ..setup_step(command) },
    );
    let workers = prop::collection::vec(
        (prop_oneof![2 => Just(None), 1 => Just(Some(PoolId::from("p2")))], 1000..=2500u64),
        2..=3,
    );
    let quotas = prop::collection::vec(prop::option::weighted(0.8, preempting_quota()), 3);
    (workers, quotas, prop::collection::vec(step, 10..=60)).prop_map(|(workers, quotas, body)| {
        let mut steps = Vec::new();
        for (tenant, parent) in [("acme", None), ("beta", Some("acme")), ("gamma", None)] {
            steps.push(setup_step(Command::CreateTenant {
                tenant: TenantId::from(tenant),
                parent: parent.map(TenantId::from),
                weight: 1,
            }));
        }
        for (i, (pool, cpu)) in workers.into_iter().enumerate() {
            steps.push(setup_step(Command::RegisterWorker {
                worker: WorkerId::from(WORKERS[i]),
                pool,
                capacity: Resources::new(cpu, 4096),
                labels: Labels::new(),
            }));
        }
        for (tenant, quota) in TENANTS.iter().zip(quotas) {
            if let Some(quota) = quota {
                steps
                    .push(setup_step(Command::SetQuota { tenant: TenantId::from(*tenant), quota }));
            }
        }
        // Managed workers with the longest TTL: the clock's jumps (up to 200 s) still take
        // them down now and then, and heartbeats bring them back.
        steps.push(setup_step(Command::SetPoolWorkerTtl {
            pool: PoolId::from("default"),
            ttl_ms: Some(120_000),
        }));
        steps.push(setup_step(Command::Heartbeat { workers: vec![WorkerId::from("w1")] }));
        steps.extend(body);
        Case { config: Config::default(), steps }
    })
}

/// A fleet whose workers die and come back: several workers (some never managed, so lost work
/// has somewhere to go), short TTLs, heartbeats of random subsets, and simple placements with
/// anti-affinity, a spread group, both `on_worker_lost` policies and some through the queue, so
/// that most runs move, release and re-queue lost instances.
fn fleet_case() -> impl Strategy<Value = Case> {
    let simple = || {
        (
            select(PLACEMENTS.to_vec()).prop_map(PlacementId::from),
            1..=3u32,
            (100..=700u64, 64..=512u64).prop_map(|(c, m)| Resources::new(c, m)),
            prop::bool::weighted(0.3),
            prop::bool::weighted(0.3),
            prop_oneof![3 => Just(OnWorkerLost::Reschedule), 1 => Just(OnWorkerLost::Release)],
            prop::option::weighted(0.2, ms(1000..=8000)),
        )
            .prop_map(
                |(placement, count, resources, anti, grouped, on_worker_lost, max_runtime_ms)| {
                    let mut labels = Labels::new();
                    labels.insert("app".into(), "web".into());
                    PlaceSpec {
                        placement,
                        count,
                        resources,
                        labels,
                        anti_affinity: if anti {
                            vec![LabelTerm::new("app", "web")]
                        } else {
                            Vec::new()
                        },
                        group: grouped.then(|| GroupId::from("g1")),
                        on_worker_lost,
                        max_runtime_ms,
                        ..PlaceSpec::default()
                    }
                },
            )
    };
    let command = prop_oneof![
        6 => (tenant(), simple())
            .prop_map(|(tenant, spec)| Command::Place { tenant, spec, fence: None }),
        4 => (tenant(), simple())
            .prop_map(|(tenant, spec)| Command::PlaceOrQueue { tenant, spec, fence: None }),
        2 => (tenant(), placement_id())
            .prop_map(|(tenant, placement)| Command::Release { tenant, placement, fence: None }),
        8 => heartbeat(),
        2 => report_status(),
        3 => Just(Command::Tick),
        1 => Just(Command::LeaderChanged),
        1 => (worker(), any::<bool>())
            .prop_map(|(worker, schedulable)| Command::SetWorkerSchedulable { worker, schedulable }),
        1 => set_pool_worker_ttl(),
    ];
    let step = (command, prop::option::weighted(0.6, any::<Index>()), ms(0..=2500)).prop_map(
        |(command, target, dt)| Step { dt: Dt::Forward(dt), target, ..setup_step(command) },
    );
    let workers =
        prop::collection::vec((2000..=4000u64, any::<bool>(), prop::bool::weighted(0.5)), 4..=6);
    (workers, ms(WORKER_TTL_MIN_MS..=3000), prop::collection::vec(step, 10..=60)).prop_map(
        |(workers, ttl, body)| {
            let mut steps = Vec::new();
            for (tenant, parent) in [("acme", None), ("beta", Some("acme")), ("gamma", None)] {
                steps.push(setup_step(Command::CreateTenant {
                    tenant: TenantId::from(tenant),
                    parent: parent.map(TenantId::from),
                    weight: 1,
                }));
            }
            steps.push(setup_step(Command::CreatePlacementGroup {
                tenant: TenantId::from("acme"),
                group: GroupId::from("g1"),
                max_instances: 4,
                strategy: GroupStrategy::Spread,
            }));
            let mut managed = Vec::new();
            for (i, (cpu, zone_a, is_managed)) in workers.into_iter().enumerate() {
                let mut labels = Labels::new();
                labels.insert("zone".into(), if zone_a { "a" } else { "b" }.into());
                steps.push(setup_step(Command::RegisterWorker {
                    worker: WorkerId::from(WORKERS[i]),
                    pool: None,
                    capacity: Resources::new(cpu, 4096),
                    labels,
                }));
                if is_managed {
                    managed.push(WorkerId::from(WORKERS[i]));
                }
            }
            steps.push(setup_step(Command::SetPoolWorkerTtl {
                pool: PoolId::from("default"),
                ttl_ms: Some(ttl),
            }));
            if !managed.is_empty() {
                steps.push(setup_step(Command::Heartbeat { workers: managed }));
            }
            steps.extend(body);
            Case { config: Config::default(), steps }
        },
    )
}

proptest! {
    #![proptest_config(cases())]

    /// Workers die and revive: after every step no instance stands on a down worker, each lost
    /// instance is moved (under its rules) or released `WORKER_LOST` exactly once, capacity and
    /// quota are exact (`check_invariants`), and the run is deterministic and round-trips.
    #[test]
    fn workers_die_and_revive_without_losing_work(case in fleet_case()) {
        let run = drive(&case, &mut no_hook)?;
        let mut other = Scheduler::new(case.config.clone());
        for (i, entry) in run.entries.iter().enumerate() {
            let applied = other.apply(entry.clone());
            prop_assert_eq!(&applied, &run.applied[i], "answer to entry {}", i);
        }
        prop_assert_eq!(other.state_hash(), run.last.state_hash());
        let decoded = Scheduler::decode(&run.last.encode()).expect("round trip");
        prop_assert!(decoded == run.last);
    }

    /// Under contention, every step keeps the invariants and the preemption rules (strictly
    /// lower priority or a reclaim from a borrower, no mutual preemption, re-queued victims
    /// wait, bounded per entry); the run is deterministic and its final state round-trips
    /// through a snapshot.
    #[test]
    fn preemption_and_borrowing_hold_under_contention(case in contention_case()) {
        let run = drive(&case, &mut no_hook)?;
        let mut other = Scheduler::new(case.config.clone());
        for (i, entry) in run.entries.iter().enumerate() {
            let applied = other.apply(entry.clone());
            prop_assert_eq!(&applied, &run.applied[i], "answer to entry {}", i);
        }
        prop_assert_eq!(other.state_hash(), run.last.state_hash());
        let decoded = Scheduler::decode(&run.last.encode()).expect("round trip");
        prop_assert!(decoded == run.last);
    }

    /// Invariants hold after every step, drained workers get nothing new, lease tokens strictly
    /// increase, stale fences never take effect, time never runs backwards, and bad input is
    /// refused without effect.
    #[test]
    fn invariants_hold_after_every_step(case in case()) {
        let run = drive(&case, &mut no_hook)?;
        prop_assert_eq!(run.entries.len(), case.steps.len());
    }

    /// Two schedulers fed the same entries give the same answers and the same state hash.
    #[test]
    fn same_entries_same_state(case in case()) {
        let run = drive(&case, &mut no_hook)?;
        let mut other = Scheduler::new(case.config.clone());
        for (i, entry) in run.entries.iter().enumerate() {
            let applied = other.apply(entry.clone());
            prop_assert_eq!(&applied, &run.applied[i], "answer to entry {}", i);
            prop_assert_eq!(other.state_hash(), run.hashes[i], "state hash after entry {}", i);
        }
        prop_assert!(other == run.last);
    }

    /// `decode(encode(s))` equals `s`, hashes and re-encodes identically, at random points.
    #[test]
    fn snapshot_round_trips(case in case()) {
        let mut round_trip = |_: &mut Model, driver: &mut Driver, step: &Step| {
            if step.probe.is_none() {
                return Ok(());
            }
            let s = &driver.log.s;
            let bytes = s.encode();
            let decoded = Scheduler::decode(&bytes)
                .map_err(|e| TestCaseError::fail(format!("decode failed: {e}")))?;
            prop_assert!(decoded == *s, "decoded state differs");
            prop_assert_eq!(decoded.state_hash(), s.state_hash());
            prop_assert_eq!(decoded.encode(), bytes);
            prop_assert_eq!(decoded.next_deadline(), s.next_deadline());
            prop_assert_eq!(decoded.query(&Query::Summary), s.query(&Query::Summary));
            prop_assert!(decoded.check_invariants().is_ok());
            Ok(())
        };
        drive(&case, &mut round_trip)?;
    }

    /// Restoring a snapshot taken after k entries and applying the rest gives the state and
    /// answers of applying everything from genesis.
    #[test]
    fn replay_from_snapshot_equals_replay_from_genesis(case in case(), split in any::<Index>()) {
        let run = drive(&case, &mut no_hook)?;
        let k = split.index(run.entries.len() + 1);
        let mut head = Scheduler::new(case.config.clone());
        for entry in &run.entries[..k] {
            head.apply(entry.clone());
        }
        let mut restored = Scheduler::decode(&head.encode())
            .map_err(|e| TestCaseError::fail(format!("decode failed: {e}")))?;
        for (i, entry) in run.entries.iter().enumerate().skip(k) {
            let applied = restored.apply(entry.clone());
            prop_assert_eq!(&applied, &run.applied[i], "entry {} after restore at {}", i, k);
        }
        prop_assert_eq!(restored.state_hash(), run.last.state_hash(), "split at {}", k);
        prop_assert!(restored == run.last);
    }

    /// Re-applying a remembered request id with the same command replays its first answer and
    /// changes nothing; with a different command it is refused as reused and changes nothing.
    #[test]
    fn request_ids_apply_at_most_once(case in case()) {
        let mut probe = |model: &mut Model, driver: &mut Driver, step: &Step| {
            let Some(pick) = &step.probe else { return Ok(()) };
            if model.sessions.is_empty() {
                return Ok(());
            }
            let (key, (command, first)) = model
                .sessions
                .iter()
                .nth(pick.index(model.sessions.len()))
                .map(|(k, (c, f))| (k.clone(), (c.clone(), f.clone())))
                .expect("index in range");
            let hash = driver.log.s.state_hash();
            let retry = driver.retry(&key.request_id, command.clone());
            let again = checked_apply(&mut driver.log.s, model, &retry)?;
            prop_assert!(again.replayed, "not replayed: {:?}", retry);
            prop_assert_eq!(&again.result, &first.result);
            prop_assert_eq!(again.log_index, first.log_index);
            prop_assert!(again.expired.is_empty());
            prop_assert_eq!(driver.log.s.state_hash(), hash, "retry changed the state: {:?}", retry);

            let reused = driver.retry(&key.request_id, different(&command));
            let refused = checked_apply(&mut driver.log.s, model, &reused)?;
            prop_assert!(!refused.replayed);
            prop_assert_eq!(
                &refused.result,
                &Err(Rejection::RequestIdReused { first_index: first.log_index })
            );
            prop_assert_eq!(refused.log_index, reused.index);
            prop_assert_eq!(driver.log.s.state_hash(), hash, "reuse changed the state: {:?}", reused);
            Ok(())
        };
        drive(&case, &mut probe)?;
    }
}
