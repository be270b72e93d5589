//! The core is total: no command of any kind, with any field values, in any order, makes
//! `apply` panic or breaks an invariant (issue 15). Every `Command` kind is generated with
//! full-range values (0, 1, MAX, MAX-1, powers of two, random; strings empty, huge, non-ASCII,
//! at and one past each length bound), mixed with ordinary commands on a few reused names so
//! that runs reach placements, queues, leases, reservations expiring and preemption.

use std::panic::{catch_unwind, AssertUnwindSafe};

use berth::scheduler::ids::{OBJECT_ID_LEN_MAX, TENANT_ID_LEN_MAX};
use berth::scheduler::resources::{LABELS_MAX, LABEL_LEN_MAX, RULES_MAX};
use berth::scheduler::{
    meter, Budget, Command, Config, Entry, Fence, GroupId, GroupStrategy, Guarantee, Item, LabelOp,
    LabelRequirement, LabelTerm, Labels, LeaseName, Limits, LogIndex, OnWorkerLost, PlaceSpec,
    PlacementId, PlanId, PoolId, Preemption, Prices, Quota, RateLimits, ReportedStatus, RequestId,
    Resources, Scheduler, SoftLimit, SoftLimits, SoftShare, Strategy as Spread, TenantId, Tier,
    TokenHash, TokenId, UnixMillis, UsageRetention, WindowLimits, WindowPolicy, WorkerId,
    HEARTBEATS_PER_ENTRY_MAX, MAX_RUNTIME_MAX_MS, SESSIONS_PER_TENANT_MAX, STATUS_MESSAGE_LEN_MAX,
    TOKEN_TTL_MAX_MS, WORKER_TTL_MAX_MS, WORKER_TTL_MIN_MS,
};
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::TestCaseError;

use berth::scheduler::testing::{Log, T0};

const TENANTS: [&str; 3] = ["t1", "t2", "t3"];
const WORKERS: [&str; 3] = ["w1", "w2", "w3"];
const POOLS: [&str; 2] = ["default", "p2"];
const PLACEMENTS: [&str; 3] = ["p1", "p2", "p3"];
const GROUPS: [&str; 1] = ["g1"];
const LEASES: [&str; 2] = ["l1", "l2"];

// ----- full-range values -----------------------------------------------------------------------

fn extreme_u64() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0u64),
        Just(1),
        Just(u64::MAX),
        Just(u64::MAX - 1),
        (0..64u32).prop_map(|k| 1u64 << k),
        (0..64u32).prop_map(|k| (1u64 << k) - 1),
        any::<u64>(),
    ]
}

/// Mostly `sane`, sometimes anything.
fn amount(sane: std::ops::RangeInclusive<u64>) -> impl Strategy<Value = u64> {
    prop_oneof![6 => sane, 1 => extreme_u64()]
}

fn extreme_u32() -> impl Strategy<Value = u32> {
    prop_oneof![
        Just(0u32),
        Just(1),
        Just(u32::MAX),
        Just(u32::MAX - 1),
        (0..32u32).prop_map(|k| 1u32 << k),
        any::<u32>(),
    ]
}

fn small_u32(sane: std::ops::RangeInclusive<u32>) -> impl Strategy<Value = u32> {
    prop_oneof![6 => sane, 1 => extreme_u32()]
}

fn extreme_string() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just(" ".to_owned()),
        Just("a".repeat(TENANT_ID_LEN_MAX)),
        Just("a".repeat(TENANT_ID_LEN_MAX + 1)),
        Just("x".repeat(OBJECT_ID_LEN_MAX)),
        Just("x".repeat(OBJECT_ID_LEN_MAX + 1)),
        Just("x".repeat(LABEL_LEN_MAX + 1)),
        Just("é".repeat(70)),
        Just("x".repeat(10_000)),
        Just("a b\n\"".to_owned()),
        "\\PC{0,40}",
    ]
}

fn name(pool: &'static [&'static str]) -> impl Strategy<Value = String> {
    prop_oneof![12 => select(pool).prop_map(str::to_owned), 1 => extreme_string()]
}

fn tenant() -> impl Strategy<Value = TenantId> {
    name(&TENANTS).prop_map(TenantId::from)
}

fn resources(
    cpu: std::ops::RangeInclusive<u64>,
    mem: std::ops::RangeInclusive<u64>,
) -> impl Strategy<Value = Resources> {
    (amount(cpu), amount(mem)).prop_map(|(c, m)| Resources::new(c, m))
}

fn labels() -> impl Strategy<Value = Labels> {
    let ordinary = prop::collection::btree_map(
        select(vec!["zone", "disk", "app"]).prop_map(str::to_owned),
        select(vec!["a", "b", "ssd", "web", ""]).prop_map(str::to_owned),
        0..=2,
    );
    let many = |n: usize| (0..n).map(|i| (format!("k{i}"), "v".to_owned())).collect::<Labels>();
    prop_oneof![
        12 => ordinary,
        1 => Just(many(LABELS_MAX)),
        1 => Just(many(LABELS_MAX + 1)),
        1 => (extreme_string(), extreme_string()).prop_map(|(k, v)| [(k, v)].into()),
    ]
}

fn requirement() -> impl Strategy<Value = LabelRequirement> {
    let op = select(vec![LabelOp::In, LabelOp::NotIn, LabelOp::Exists, LabelOp::DoesNotExist]);
    let values = prop_oneof![
        6 => prop::collection::vec(select(vec!["a", "b", "ssd"]).prop_map(str::to_owned), 0..=2),
        1 => Just(vec!["v".to_owned(); RULES_MAX]),
        1 => Just(vec!["v".to_owned(); RULES_MAX + 1]),
        1 => prop::collection::vec(extreme_string(), 1..=2),
    ];
    (name(&["zone", "disk"]), op, values).prop_map(|(key, op, values)| LabelRequirement {
        key,
        op,
        values,
    })
}

fn term() -> impl Strategy<Value = LabelTerm> {
    (name(&["app"]), name(&["web", "db"])).prop_map(|(k, v)| LabelTerm::new(k, v))
}

/// Usually empty or one rule; now and then exactly at or one past the bound. (Mostly empty:
/// each rule list of a spec can make it invalid, and valid specs are what reach deep states.)
fn rules<T: Clone + std::fmt::Debug + 'static, S: Strategy<Value = T> + 'static>(
    s: fn() -> S,
) -> impl Strategy<Value = Vec<T>> {
    prop_oneof![
        24 => Just(Vec::new()),
        4 => prop::collection::vec(s(), 1..=2),
        1 => prop::collection::vec(s(), RULES_MAX..=RULES_MAX + 1),
    ]
}

fn fence() -> impl Strategy<Value = Option<Fence>> {
    prop_oneof![
        8 => Just(None),
        1 => (name(&LEASES), amount(0..=200)).prop_map(|(lease, token)| Some(Fence {
            lease: LeaseName::from(lease),
            token: LogIndex(token),
        })),
    ]
}

fn spec() -> impl Strategy<Value = PlaceSpec> {
    let basics = (
        name(&PLACEMENTS).prop_map(PlacementId::from),
        small_u32(1..=3),
        resources(100..=1500, 64..=1500),
        prop::option::of(name(&POOLS).prop_map(PoolId::from)),
        select(vec![Spread::BinPack, Spread::Spread]),
        labels(),
        any::<bool>(),
        select(vec![OnWorkerLost::Reschedule, OnWorkerLost::Release]),
        prop_oneof![
            4 => Just(None),
            2 => (1..=5_000u64).prop_map(Some),
            1 => Just(Some(0u64)),
            1 => Just(Some(MAX_RUNTIME_MAX_MS)),
            1 => Just(Some(MAX_RUNTIME_MAX_MS + 1)),
            1 => extreme_u64().prop_map(Some),
        ],
    );
    let rule_sets = (
        rules(requirement),
        rules(requirement),
        rules(term),
        rules(term),
        rules(term),
        rules(term),
        prop::option::weighted(0.2, name(&GROUPS).prop_map(GroupId::from)),
        prop_oneof![6 => -2..=2i32, 1 => Just(i32::MIN), 1 => Just(i32::MAX), 1 => any::<i32>()],
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
                worker_requires,
                worker_prefers,
                affinity,
                affinity_preferred,
                anti,
                anti_pref,
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
            worker_requires,
            worker_prefers,
            affinity,
            affinity_preferred,
            anti_affinity: anti,
            anti_affinity_preferred: anti_pref,
            group,
            priority,
            requeue_on_preemption,
            on_worker_lost,
            max_runtime_ms,
        },
    )
}

fn limits() -> impl Strategy<Value = Limits> {
    let one = || prop::option::weighted(0.3, amount(0..=10_000));
    (one(), one(), one(), one()).prop_map(|(cpu_millis, memory_mib, instances, jobs)| Limits {
        cpu_millis,
        memory_mib,
        instances,
        jobs,
    })
}

fn quota() -> impl Strategy<Value = Quota> {
    let soft_limit = || {
        prop::option::weighted(0.3, (amount(0..=4000), amount(0..=4000))).prop_map(|l| {
            l.map(|(soft, extra)| SoftLimit { soft, burst: soft.saturating_add(extra) })
        })
    };
    let soft = (soft_limit(), soft_limit(), soft_limit(), soft_limit()).prop_map(
        |(cpu_millis, memory_mib, instances, jobs)| SoftLimits {
            cpu_millis,
            memory_mib,
            instances,
            jobs,
        },
    );
    let pool = || name(&POOLS).prop_map(PoolId::from);
    let guarantee = (
        resources(0..=3000, 0..=3000),
        prop::option::of(resources(0..=3000, 0..=3000)),
        prop::option::of(resources(0..=3000, 0..=3000)),
    )
        .prop_map(|(nominal, borrowing_limit, lending_limit)| Guarantee {
            nominal,
            borrowing_limit,
            lending_limit,
        });
    let many_pools = |n: usize| (0..n).map(|i| PoolId::new(format!("q{i}"))).collect::<Vec<_>>();
    let pools = prop_oneof![
        8 => prop::collection::btree_map(pool(), limits(), 0..=1),
        1 => Just(many_pools(65).into_iter().map(|p| (p, Limits::default())).collect()),
    ];
    let share = prop::option::weighted(
        0.2,
        (pool(), small_u32(0..=1000), small_u32(0..=1000)).prop_map(|(pool, a, b)| SoftShare {
            pool,
            soft_per_mille: a.min(b),
            burst_per_mille: a.max(b),
        }),
    );
    let windows = (
        prop::option::weighted(0.2, amount(0..=4)),
        prop::option::weighted(0.2, amount(0..=20_000_000)),
        prop::option::weighted(0.2, amount(0..=8)),
        prop::option::weighted(0.2, amount(0..=40_000_000)),
        select(vec![WindowPolicy::Queue, WindowPolicy::Refuse]),
    )
        .prop_map(
            |(
                jobs_per_day,
                cpu_milli_ms_per_month,
                jobs_per_week,
                cpu_milli_ms_per_week,
                when_exhausted,
            )| {
                WindowLimits {
                    jobs_per_day,
                    cpu_milli_ms_per_month,
                    jobs_per_week,
                    cpu_milli_ms_per_week,
                    when_exhausted,
                }
            },
        );
    (
        limits(),
        pools,
        soft,
        prop::option::weighted(0.5, amount(0..=10_000)),
        prop::collection::btree_set(pool(), 0..=1),
        windows,
        prop::option::of(select(vec![
            Preemption::Never,
            Preemption::SameTenant,
            Preemption::AnyTenant,
        ])),
        prop::collection::btree_map(pool(), guarantee, 0..=1),
        share,
        prop::option::of(select(vec![0u8, 1, 50, 80, 100, 101, u8::MAX])),
    )
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
                soft_share,
                alert_percent,
            )| {
                Quota {
                    total,
                    pools,
                    soft,
                    grace_ms,
                    denied_pools,
                    windows,
                    preemption,
                    guarantees,
                    soft_share,
                    alert_percent,
                }
            },
        )
}

fn config() -> impl Strategy<Value = Config> {
    let settings = (small_u32(1..=1), amount(0..=10_000), amount(1..=100_000), small_u32(0..=100));
    // Retention in and out of bounds (an hour, 90 days, ~400 days, 10 years, and beyond).
    let ms = || {
        prop_oneof![
            Just(0),
            Just(3_600_000),
            Just(7_776_000_000),
            Just(34_560_000_000),
            Just(316_224_000_000),
            Just(u64::MAX)
        ]
    };
    (settings, (ms(), ms(), ms())).prop_map(
        |((placement_algorithm, lease_grace_ms, sessions_max, preferred_scan_max), retention)| {
            let (raw_ms, hourly_ms, daily_ms) = retention;
            Config {
                placement_algorithm,
                lease_grace_ms,
                sessions_max,
                preferred_scan_max,
                usage_retention: UsageRetention { raw_ms, hourly_ms, daily_ms },
            }
        },
    )
}

fn token_hash() -> impl Strategy<Value = TokenHash> {
    (0..3u8).prop_map(|b| TokenHash([b; 32]))
}

/// No expiry, short enough to expire (and be purged) within a run, at and past the bound,
/// and anything.
fn token_ttl() -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => Just(0u64),
        4 => 1..=20_000u64,
        1 => Just(TOKEN_TTL_MAX_MS),
        1 => Just(TOKEN_TTL_MAX_MS + 1),
        1 => extreme_u64(),
    ]
}

/// A heartbeat's worker list: empty, a few of the workers (repeats included), at and one
/// past `HEARTBEATS_PER_ENTRY_MAX`, or extreme names.
fn heartbeat_workers() -> impl Strategy<Value = Vec<WorkerId>> {
    let many = |n: usize| (0..n).map(|i| WorkerId::from(format!("w{}", i % 5).as_str())).collect();
    prop_oneof![
        1 => Just(Vec::new()),
        12 => prop::collection::vec(select(&WORKERS).prop_map(WorkerId::from), 1..=4),
        1 => Just(many(HEARTBEATS_PER_ENTRY_MAX)),
        1 => Just(many(HEARTBEATS_PER_ENTRY_MAX + 1)),
        1 => prop::collection::vec(extreme_string().prop_map(|w| WorkerId::from(w.as_str())), 1..=3),
    ]
}

/// A worker TTL: none, in range, at and one past each bound, and anything.
fn worker_ttl() -> impl Strategy<Value = Option<u64>> {
    prop_oneof![
        2 => Just(None),
        4 => (WORKER_TTL_MIN_MS..=5_000u64).prop_map(Some),
        1 => Just(Some(WORKER_TTL_MIN_MS - 1)),
        1 => Just(Some(WORKER_TTL_MAX_MS)),
        1 => Just(Some(WORKER_TTL_MAX_MS + 1)),
        1 => extreme_u64().prop_map(Some),
    ]
}

/// A worker's report: every kind, failures with any exit code and messages at, past and far
/// past `STATUS_MESSAGE_LEN_MAX`.
fn reported_status() -> impl Strategy<Value = ReportedStatus> {
    let message = prop_oneof![
        4 => extreme_string(),
        1 => Just("m".repeat(STATUS_MESSAGE_LEN_MAX)),
        1 => Just("m".repeat(STATUS_MESSAGE_LEN_MAX + 1)),
    ];
    prop_oneof![
        Just(ReportedStatus::Running),
        Just(ReportedStatus::Completed),
        (any::<i32>(), message)
            .prop_map(|(exit_code, message)| ReportedStatus::Failed { exit_code, message }),
    ]
}

/// One pool's prices: sane and extreme decimals, tier bounds of any size and order, any item.
fn pool_prices() -> impl Strategy<Value = meter::PoolPrices> {
    let decimal = prop_oneof![
        6 => select(vec!["0", "0.035", "1.25", "2", "0.000001", "1000000"]),
        1 => select(vec![
            "-1",
            "0.0000001",
            "1000000.000001",
            "79228162514264337593543950335",
            "0.0000000000000000000000000001",
        ]),
    ]
    .prop_map(|s| rust_decimal::Decimal::from_str_exact(s).expect("test decimal"));
    let tiers = prop::collection::vec(
        (prop::option::of(amount(1..=5)), decimal)
            .prop_map(|(up_to_hours, per_hour)| Tier { up_to_hours, per_hour }),
        0..=3,
    );
    prop::collection::btree_map(select(Item::ALL.to_vec()), tiers, 0..=3)
        .prop_map(|items| meter::PoolPrices { items })
}

fn prices() -> impl Strategy<Value = Prices> {
    let pools =
        prop::collection::btree_map(name(&POOLS).prop_map(PoolId::from), pool_prices(), 0..=2);
    (pools, pool_prices()).prop_map(|(pools, other_pools)| Prices { pools, other_pools })
}

/// Budgets sane and extreme: tiny, huge, too precise, negative; thresholds in and out of order.
/// Rate limits small enough to bite within a case, and at and past every bound.
fn rate_limits() -> impl Strategy<Value = RateLimits> {
    let rate = prop::option::of(prop_oneof![4 => 1..=5u32, 1 => extreme_u32()]);
    let daily = prop::option::of(prop_oneof![4 => 1..=5u64, 1 => extreme_u64()]);
    (rate.clone(), rate, daily).prop_map(|(token_rate, burst_rate, daily_quota)| RateLimits {
        token_rate,
        burst_rate,
        daily_quota,
    })
}

fn budget() -> impl Strategy<Value = Budget> {
    let amount = || {
        select(vec![
            "0.01",
            "1",
            "2.5",
            "1000000000000",
            "0",
            "-1",
            "0.001",
            "79228162514264337593543950335",
        ])
        .prop_map(|s| rust_decimal::Decimal::from_str_exact(s).expect("test decimal"))
    };
    let alerts =
        prop::collection::vec(select(vec![0u16, 1, 50, 80, 100, 1_000, 1_001, u16::MAX]), 0..=9);
    (amount(), prop::option::of(amount()), alerts, any::<bool>()).prop_map(
        |(per_month, per_day, alerts_percent, hard_stop)| Budget {
            per_month,
            per_day,
            alerts_percent,
            hard_stop,
        },
    )
}

/// Every `Command` kind. The weights favour the commands that build deep states.
fn command() -> impl Strategy<Value = Command> {
    let worker = || name(&WORKERS).prop_map(WorkerId::from);
    let pool = || name(&POOLS).prop_map(PoolId::from);
    let lease = || name(&LEASES).prop_map(LeaseName::from);
    let placement = || name(&PLACEMENTS).prop_map(PlacementId::from);
    let capacity = || resources(1000..=4000, 1024..=4096);
    // The largest strategies (quota, prices, budget) are boxed: inlined, their value trees
    // make the union's so large that a debug build overflows the test thread's stack.
    prop_oneof![
        2 => Just(Command::Tick),
        1 => Just(Command::LeaderChanged),
        1 => config().prop_map(|config| Command::SetConfig { config }),
        4 => (worker(), prop::option::of(pool()), capacity(), labels()).prop_map(
            |(worker, pool, capacity, labels)| Command::RegisterWorker { worker, pool, capacity, labels }
        ),
        2 => (worker(), prop::option::of(capacity()), prop::option::of(labels())).prop_map(
            |(worker, capacity, labels)| Command::UpdateWorker { worker, capacity, labels }
        ),
        1 => (worker(), any::<bool>())
            .prop_map(|(worker, schedulable)| Command::SetWorkerSchedulable { worker, schedulable }),
        1 => (worker(), any::<bool>()).prop_map(|(worker, evict)| Command::RemoveWorker { worker, evict }),
        1 => (pool(), prop::option::of(resources(0..=4000, 0..=4000)))
            .prop_map(|(pool, reserve)| Command::SetPoolReserve { pool, reserve }),
        3 => (tenant(), prop::option::weighted(0.4, tenant()), small_u32(1..=10))
            .prop_map(|(tenant, parent, weight)| Command::CreateTenant { tenant, parent, weight }),
        1 => tenant().prop_map(|tenant| Command::DeleteTenant { tenant }),
        3 => (tenant(), quota().boxed()).prop_map(|(tenant, quota)| Command::SetQuota { tenant, quota }),
        1 => (tenant(), name(&["k1", "k2"]), token_hash(), token_ttl()).prop_map(
            |(tenant, token, hash, ttl_ms)| Command::AddToken { tenant, token: TokenId::from(token), hash, ttl_ms }
        ),
        1 => (tenant(), name(&["k1", "k2"]))
            .prop_map(|(tenant, token)| Command::RevokeToken { tenant, token: TokenId::from(token) }),
        6 => (tenant(), spec(), fence()).prop_map(|(tenant, spec, fence)| Command::Place { tenant, spec, fence }),
        4 => (tenant(), spec(), fence())
            .prop_map(|(tenant, spec, fence)| Command::PlaceOrQueue { tenant, spec, fence }),
        1 => (tenant(), placement())
            .prop_map(|(tenant, placement)| Command::CancelQueued { tenant, placement }),
        3 => (tenant(), placement(), fence())
            .prop_map(|(tenant, placement, fence)| Command::Release { tenant, placement, fence }),
        1 => (tenant(), name(&GROUPS), small_u32(1..=4), select(vec![GroupStrategy::Spread, GroupStrategy::Pack]))
            .prop_map(|(tenant, group, max_instances, strategy)| Command::CreatePlacementGroup {
                tenant,
                group: GroupId::from(group),
                max_instances,
                strategy,
            }),
        3 => (tenant(), spec(), amount(1..=20_000), fence())
            .prop_map(|(tenant, spec, ttl_ms, fence)| Command::Reserve { tenant, spec, ttl_ms, fence }),
        1 => (tenant(), placement(), fence()).prop_map(|(tenant, reservation, fence)| {
            Command::ConfirmReservation { tenant, reservation, fence }
        }),
        1 => (tenant(), placement(), fence()).prop_map(|(tenant, reservation, fence)| {
            Command::CancelReservation { tenant, reservation, fence }
        }),
        2 => (tenant(), lease(), name(&["h1", "h2"]), amount(1..=20_000))
            .prop_map(|(tenant, lease, holder, ttl_ms)| Command::AcquireLease { tenant, lease, holder, ttl_ms }),
        1 => (tenant(), lease(), amount(0..=200))
            .prop_map(|(tenant, lease, token)| Command::KeepAliveLease { tenant, lease, token: LogIndex(token) }),
        1 => (tenant(), lease(), amount(0..=200))
            .prop_map(|(tenant, lease, token)| Command::ReleaseLease { tenant, lease, token: LogIndex(token) }),
        4 => heartbeat_workers().prop_map(|workers| Command::Heartbeat { workers }),
        1 => (pool(), worker_ttl()).prop_map(|(pool, ttl_ms)| Command::SetPoolWorkerTtl { pool, ttl_ms }),
        2 => (name(&["default", "gold"]), prices().boxed(), prop::option::of(amount(0..=10_000))).prop_map(
            |(plan, prices, later)| Command::SetPricePlan {
                plan: PlanId::from(plan),
                prices,
                effective_at: later.map(UnixMillis),
            }
        ),
        1 => (tenant(), prop::option::of(name(&["default", "gold"]))).prop_map(|(tenant, plan)| {
            Command::SetBillingPlan { tenant, plan: plan.map(PlanId::from) }
        }),
        1 => (tenant(), prop::option::of(budget()).boxed()).prop_map(|(tenant, budget)| {
            Command::SetBudget { tenant, budget }
        }),
        2 => (tenant(), prop::option::of(rate_limits())).prop_map(|(tenant, limits)| {
            Command::SetRateLimits { tenant, limits }
        }),
        1 => (tenant(), amount(0..=12)).prop_map(|(tenant, to_version)| {
            Command::RollbackPolicy { tenant, to_version }
        }),
        1 => (
            tenant(),
            // Months around log time (November 2023 is 646), and extremes.
            amount(640..=660),
            select(vec!["0", "-0.01", "25.00", "0.001", "-1000000000000", "1000000000000.01"]),
            select(vec!["credit", "", "line\nbreak", "a reason of a fair length"]),
        )
            .prop_map(|(tenant, month, amount, reason)| Command::AdjustInvoice {
                tenant,
                month,
                amount: rust_decimal::Decimal::from_str_exact(amount).expect("test decimal"),
                reason: reason.to_owned(),
            }),
        1 => (tenant(), amount(640..=660))
            .prop_map(|(tenant, month)| Command::CloseInvoice { tenant, month }),
        3 => (worker(), tenant(), placement(), extreme_u32(), amount(0..=60), reported_status()).prop_map(
            |(worker, tenant, placement, slot, assigned_at, status)| Command::ReportStatus {
                worker,
                tenant,
                placement,
                slot,
                assigned_at: LogIndex(assigned_at),
                status,
            }
        ),
    ]
}

/// How the leader's clock moves before an entry: forward, backward, or anywhere at all.
#[derive(Clone, Debug)]
enum Clock {
    Forward(u64),
    Back(u64),
    At(u64),
}

fn clock() -> impl Strategy<Value = Clock> {
    prop_oneof![
        20 => (0..3_000u64).prop_map(Clock::Forward),
        3 => (0..20_000u64).prop_map(Clock::Back),
        1 => extreme_u64().prop_map(Clock::At),
    ]
}

#[derive(Clone, Debug)]
struct Step {
    clock: Clock,
    request_id: Option<String>,
    token: Option<TokenHash>,
    command: Command,
}

fn step() -> impl Strategy<Value = Step> {
    let request_id = prop_oneof![
        6 => Just(None),
        4 => (0..8u32).prop_map(|n| Some(format!("r{n}"))),
        1 => extreme_string().prop_map(Some),
    ];
    (clock(), request_id, prop::option::weighted(0.15, token_hash()), command())
        .prop_map(|(clock, request_id, token, command)| Step { clock, request_id, token, command })
}

// ----- running ---------------------------------------------------------------------------------

/// A short description of a command for failure reports: long strings are cut.
fn describe(step: &Step) -> String {
    let text = format!("{step:?}");
    if text.len() <= 600 {
        return text;
    }
    let cut = (0..=600).rev().find(|i| text.is_char_boundary(*i)).unwrap_or(0);
    format!("{}…({} bytes)", &text[..cut], text.len())
}

/// Applies `entry`, turning a panic into an error that names the command.
fn apply_caught(s: &mut Scheduler, entry: Entry, what: &str) -> Result<(), TestCaseError> {
    let result = catch_unwind(AssertUnwindSafe(|| s.apply(entry)));
    if let Err(panic) = result {
        let message = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_default();
        return Err(TestCaseError::fail(format!("apply panicked ({message}) on {what}")));
    }
    if let Err(broken) = s.check_invariants() {
        return Err(TestCaseError::fail(format!("invariants broken after {what}: {broken:#?}")));
    }
    Ok(())
}

/// A cluster with tenants and workers, so random steps start from a useful state.
fn seeded() -> Result<Log, TestCaseError> {
    let mut log = Log::at(T0);
    let seed = |log: &mut Log, command: Command| {
        let mut entry = log.entry(command);
        entry.request_id = None;
        apply_caught(&mut log.s, entry, "seed")
    };
    for (i, t) in TENANTS.iter().enumerate() {
        let parent = (i == 2).then(|| TenantId::from("t1"));
        seed(&mut log, Command::CreateTenant { tenant: (*t).into(), parent, weight: 1 })?;
    }
    for (i, w) in WORKERS.iter().enumerate() {
        let pool = (i == 2).then(|| PoolId::from("p2"));
        let capacity = Resources::new(4000, 4096);
        seed(
            &mut log,
            Command::RegisterWorker { worker: (*w).into(), pool, capacity, labels: Labels::new() },
        )?;
    }
    Ok(log)
}

fn run(steps: &[Step]) -> Result<(), TestCaseError> {
    let mut log = seeded()?;
    for (i, step) in steps.iter().enumerate() {
        log.now = match step.clock {
            Clock::Forward(ms) => log.now.saturating_add(ms),
            Clock::Back(ms) => log.now.saturating_sub(ms),
            Clock::At(at) => at,
        };
        let mut entry = log.entry(step.command.clone());
        entry.request_id = step.request_id.clone().map(RequestId::from);
        entry.token = step.token;
        apply_caught(&mut log.s, entry, &format!("step {i}: {}", describe(step)))?;
    }
    Ok(())
}

fn cases() -> ProptestConfig {
    let default = ProptestConfig::default();
    let cases = if std::env::var_os("PROPTEST_CASES").is_some() { default.cases } else { 512 };
    ProptestConfig { cases, failure_persistence: None, ..default }
}

proptest! {
    #![proptest_config(cases())]

    /// No sequence of commands with full-range values panics `apply` or breaks an invariant.
    #[test]
    fn apply_is_total(steps in prop::collection::vec(step(), 1..60)) {
        // The panic is reported through the error above; the default hook would print it
        // once per shrinking step.
        std::panic::set_hook(Box::new(|_| {}));
        let outcome = run(&steps);
        let _ = std::panic::take_hook();
        outcome?;
    }
}

/// Finding 1: a worker with a near-`u64::MAX` memory capacity and a second one in the same
/// pool are refused (or accepted) without a panic, and the cluster keeps taking writes.
#[test]
fn an_extreme_worker_capacity_does_not_poison_the_log() {
    let mut log = Log::at(T0);
    let register = |worker: &str, memory_mib: u64| Command::RegisterWorker {
        worker: worker.into(),
        pool: None,
        capacity: Resources::new(1000, memory_mib),
        labels: Labels::new(),
    };
    let commands = [
        register("huge", u64::MAX - 1),
        register("w1", 4096),
        Command::CreateTenant { tenant: "acme".into(), parent: None, weight: 1 },
    ];
    for (i, command) in commands.into_iter().enumerate() {
        let mut entry = log.entry(command);
        entry.request_id = None;
        let applied = catch_unwind(AssertUnwindSafe(|| log.s.apply(entry)));
        let applied = applied.unwrap_or_else(|_| panic!("apply panicked on entry {}", i + 1));
        if i == 0 {
            assert!(applied.result.is_err(), "an out-of-bound capacity is refused");
        } else {
            assert!(applied.result.is_ok(), "entry {} is applied: {:?}", i + 1, applied.result);
        }
        log.s.check_invariants().expect("invariants hold");
    }
}

// ----- snapshot decoding -----------------------------------------------------------------------

/// A snapshot of a seeded cluster after a few steps, so it holds every kind of object.
fn sample_snapshot() -> Vec<u8> {
    let mut log = seeded().expect("seeds");
    let spec = PlaceSpec {
        placement: "p1".into(),
        count: 2,
        resources: Resources::new(500, 512),
        ..PlaceSpec::default()
    };
    let commands = [
        Command::Place { tenant: "t1".into(), spec: spec.clone(), fence: None },
        Command::Reserve { tenant: "t2".into(), spec, ttl_ms: 60_000, fence: None },
        Command::AcquireLease {
            tenant: "t3".into(),
            lease: "l1".into(),
            holder: "h".into(),
            ttl_ms: 9_000,
        },
    ];
    for command in commands {
        log.apply(command);
    }
    log.s.encode()
}

/// `payload` framed as a snapshot with a correct header and checksum, so it reaches bincode.
fn framed(payload: &[u8]) -> Vec<u8> {
    use sha2::{Digest, Sha256};
    let mut out = b"BRTH".to_vec();
    out.extend_from_slice(&berth::scheduler::SNAPSHOT_VERSION.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(payload);
    out.extend_from_slice(&Sha256::digest(payload));
    out
}

fn decode_caught(bytes: &[u8]) -> Result<bool, TestCaseError> {
    match catch_unwind(AssertUnwindSafe(|| Scheduler::decode(bytes).map(|s| s.check_invariants())))
    {
        Ok(Ok(invariants)) => {
            prop_assert!(invariants.is_ok(), "a decoded snapshot holds its invariants");
            Ok(true)
        }
        Ok(Err(_)) => Ok(false),
        Err(_) => Err(TestCaseError::fail(format!("decode panicked on {} bytes", bytes.len()))),
    }
}

proptest! {
    #![proptest_config(cases())]

    /// A truncated snapshot, or one with any bit flipped, is refused with an error.
    #[test]
    fn damaged_snapshots_are_refused(cut in any::<prop::sample::Index>(), bit in any::<prop::sample::Index>()) {
        let bytes = sample_snapshot();
        let truncated = &bytes[..cut.index(bytes.len())];
        prop_assert!(!decode_caught(truncated)?, "a truncated snapshot decodes");
        let mut flipped = bytes.clone();
        let at = bit.index(bytes.len() * 8);
        flipped[at / 8] ^= 1 << (at % 8);
        prop_assert!(!decode_caught(&flipped)?, "a snapshot with bit {at} flipped decodes");
    }

    /// Random bytes, and a real payload with bits flipped or cut short, framed with a correct
    /// checksum (so bincode sees them), never panic the decoder.
    #[test]
    fn any_payload_decodes_or_is_refused(
        random in prop::collection::vec(any::<u8>(), 0..512),
        flips in prop::collection::vec(any::<prop::sample::Index>(), 1..4),
        cut in any::<prop::sample::Index>(),
    ) {
        decode_caught(&framed(&random))?;
        let bytes = sample_snapshot();
        let mut payload = bytes[16..bytes.len() - 32].to_vec();
        for flip in &flips {
            let at = flip.index(payload.len() * 8);
            payload[at / 8] ^= 1 << (at % 8);
        }
        decode_caught(&framed(&payload))?;
        decode_caught(&framed(&payload[..cut.index(payload.len())]))?;
    }
}

/// A payload whose first string claims 2^62 bytes is refused before anything is allocated
/// (without a limit, bincode allocates the claimed length first and the process aborts).
#[test]
fn a_huge_declared_length_is_refused_without_allocating() {
    // Config (4 small varints), now, one worker, then the worker id's length: 0xFD + u64 LE.
    let mut payload = vec![1, 0, 1, 0, 0, 1, 0xFD];
    payload.extend_from_slice(&(1u64 << 62).to_le_bytes());
    let refused = Scheduler::decode(&framed(&payload));
    assert!(
        matches!(refused, Err(berth::scheduler::DecodeError::Payload(_))),
        "expected a payload error, got {:?}",
        refused.map(|_| ())
    );
}

// ----- findings 4 and 7 ------------------------------------------------------------------------

/// Finding 4: a 10,000-character tenant id, a 5 KB placement id, a huge label and a huge
/// request id are refused with a message and fields that each stay under 200 bytes.
#[test]
fn rejections_quote_only_a_short_prefix() {
    let mut log = seeded().expect("seeds");
    let spec = |placement: String, labels: Labels| PlaceSpec {
        placement: placement.into(),
        count: 1,
        resources: Resources::new(100, 100),
        labels,
        ..PlaceSpec::default()
    };
    let huge_label: Labels = [("k".repeat(5_000), "v".to_owned())].into();
    let cases = [
        (
            "r1".to_owned(),
            Command::Place {
                tenant: "a".repeat(10_000).into(),
                spec: spec("p1".into(), Labels::new()),
                fence: None,
            },
        ),
        (
            "r2".to_owned(),
            Command::Place {
                tenant: "t1".into(),
                spec: spec("x".repeat(5_000), Labels::new()),
                fence: None,
            },
        ),
        (
            "r3".to_owned(),
            Command::Place {
                tenant: "t1".into(),
                spec: spec("p1".into(), huge_label),
                fence: None,
            },
        ),
        ("é".repeat(3_000), Command::Tick),
    ];
    for (request_id, command) in cases {
        let what = command.name();
        let refused = log.apply_as(&request_id, command).result;
        let rejection = refused.expect_err("an out-of-bound value is refused");
        let shown = rejection.to_string();
        assert!(shown.len() < 200, "{what}: message of {} bytes: {shown}", shown.len());
        for (key, value) in rejection.metadata() {
            assert!(value.len() < 200, "{what}: metadata {key} of {} bytes", value.len());
        }
        let fields = format!("{rejection:?}");
        assert!(fields.len() < 300, "{what}: fields of {} bytes: {fields}", fields.len());
    }
}

/// Finding 7: tenant A sending twice its window of writes evicts only its own records;
/// tenant B's earlier request id still replays its first answer, at its first log index.
/// (The table holds two windows, so one global FIFO would have evicted B's.)
#[test]
fn one_tenant_cannot_spend_anothers_exactly_once_window() {
    let mut log = seeded().expect("seeds");
    let window = u64::try_from(SESSIONS_PER_TENANT_MAX).expect("fits");
    let config = Config { sessions_max: 2 * window, ..Config::default() };
    assert!(log.apply_as("cfg", Command::SetConfig { config }).result.is_ok());
    let lease = |tenant: &str| Command::AcquireLease {
        tenant: tenant.into(),
        lease: "l1".into(),
        holder: "h".into(),
        ttl_ms: 60_000,
    };
    let first_b = log.apply_as("b-1", lease("t2"));
    assert!(first_b.result.is_ok(), "{:?}", first_b.result);
    let first_a = log.apply_as("a-0", lease("t1"));
    for n in 1..=2 * SESSIONS_PER_TENANT_MAX {
        let release =
            Command::Release { tenant: "t1".into(), placement: "none".into(), fence: None };
        log.apply_as(&format!("a-{n}"), release);
    }
    let retry = log.apply_as("b-1", lease("t2"));
    assert!(retry.replayed, "B's request id replays");
    assert_eq!(retry.log_index, first_b.log_index);
    assert_eq!(retry.result, first_b.result);
    // A's own oldest record went: its retry is applied afresh (and finds the lease held).
    let again = log.apply_as("a-0", lease("t1"));
    assert!(!again.replayed, "A's oldest request id left A's window");
    assert_ne!(again.log_index, first_a.log_index);
    log.s.check_invariants().expect("invariants hold");
}

/// A full table (a small `sessions_max`) evicts from the tenant holding the most records, so
/// a tenant with fewer keeps its own.
#[test]
fn a_full_session_table_evicts_from_the_largest_tenant() {
    let mut log = seeded().expect("seeds");
    let config = Config { sessions_max: 4, ..Config::default() };
    assert!(log.apply_as("cfg", Command::SetConfig { config }).result.is_ok());
    let release = |tenant: &str| Command::Release {
        tenant: tenant.into(),
        placement: "none".into(),
        fence: None,
    };
    let first_b = log.apply_as("b-1", release("t2"));
    for n in 0..10 {
        log.apply_as(&format!("a-{n}"), release("t1"));
    }
    assert_eq!(log.s.state().sessions.len(), 4);
    let retry = log.apply_as("b-1", release("t2"));
    assert!(retry.replayed && retry.log_index == first_b.log_index, "B kept its record");
}
