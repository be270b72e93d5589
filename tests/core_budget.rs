//! Budgets through the core's public interface: alerts once per threshold and month, at the
//! exact millisecond the spend reaches them (an idle tenant's deadline makes the leader tick
//! then), the hard stop, re-arming, bounds, and a property test over random histories.

use std::collections::BTreeMap;
use std::str::FromStr;

use berth::scheduler::budget::{BudgetState, BUDGET_ALERTS_DEFAULT};
use berth::scheduler::windows::{month_of, month_start};
use berth::scheduler::*;
use proptest::prelude::*;
use proptest::strategy::Strategy as PropStrategy;
use rust_decimal::Decimal;

mod core_harness;
use core_harness::Log;

const HOUR: u64 = 3_600_000;
const DAY: u64 = 24 * HOUR;

fn d(s: &str) -> Decimal {
    Decimal::from_str(s).expect("test decimal")
}

/// The start of December 2023 (31 days), after the harness's first month.
fn december() -> u64 {
    month_start(month_of(UnixMillis(testing::T0)) + 1).0
}

fn budget(per_month: &str, alerts: &[u16], hard_stop: bool) -> Budget {
    Budget { per_month: d(per_month), per_day: None, alerts_percent: alerts.to_vec(), hard_stop }
}

fn spec(id: &str, cpu_millis: u64) -> PlaceSpec {
    PlaceSpec {
        placement: id.into(),
        count: 1,
        resources: Resources::new(cpu_millis, 0),
        ..PlaceSpec::default()
    }
}

impl Log {
    /// Tenants `t` and `u`, one worker of 4 cpus, and one cpu-hour at `per_cpu_hour`.
    fn priced(per_cpu_hour: &str) -> Log {
        let mut log = Log(testing::Log::at(december()));
        for t in ["t", "u"] {
            log.ok(Command::CreateTenant { tenant: t.into(), parent: None, weight: 1 });
        }
        log.ok(Command::RegisterWorker {
            worker: "w".into(),
            pool: None,
            capacity: Resources::new(4_000, 8_192),
            labels: Labels::new(),
        });
        log.price(per_cpu_hour);
        log
    }

    fn price(&mut self, per_cpu_hour: &str) {
        let mut prices = Prices::default();
        let tiers = vec![Tier { up_to_hours: None, per_hour: d(per_cpu_hour) }];
        prices.other_pools.items.insert(Item::Cpu, tiers);
        self.ok(Command::SetPricePlan { plan: "default".into(), prices, effective_at: None });
    }

    fn place(&mut self, tenant: &str, id: &str, cpu_millis: u64) -> Applied {
        let spec = spec(id, cpu_millis);
        self.apply(Command::Place { tenant: tenant.into(), spec, fence: None })
    }

    fn set_budget(&mut self, tenant: &str, budget: Option<Budget>) -> Applied {
        self.apply(Command::SetBudget { tenant: tenant.into(), budget })
    }

    /// Ticks at log time `at`.
    fn tick_at(&mut self, at: u64) -> Applied {
        self.now = at;
        self.tick()
    }
}

/// The budget alerts of an entry: (percent, spent).
fn alerts(applied: &Applied) -> Vec<(u16, Decimal)> {
    applied
        .events
        .iter()
        .filter_map(|e| match e {
            QuotaEvent::BudgetAlert { percent, spent, .. } => Some((*percent, *spent)),
            _ => None,
        })
        .collect()
}

/// One cpu at 1 per cpu-hour against a budget of 10: the 50 % alert is due when the rounded
/// spend reaches 5.00, at 4.995 hours (17,982,000 ms), not a millisecond earlier; the core
/// says so as its next deadline, so an idle cluster ticks then. Each alert fires once; a new
/// month re-arms them.
#[test]
fn alerts_fire_once_each_at_the_exact_millisecond() {
    let mut log = Log::priced("1");
    let start = log.now;
    log.set_budget("t", Some(budget("10", &BUDGET_ALERTS_DEFAULT, false)));
    assert!(log.place("t", "a", 1_000).result.is_ok());
    let fifty = start + 17_982_000;
    assert_eq!(log.s.next_deadline(), Some(UnixMillis(fifty)));

    assert_eq!(alerts(&log.tick_at(fifty - 1)), vec![], "4.99 is not half of 10");
    assert_eq!(alerts(&log.tick_at(fifty)), vec![(50, d("5.00"))]);
    assert_eq!(log.s.next_deadline(), Some(UnixMillis(start + 28_782_000)), "80 % at 7.995 h");
    // Both remaining thresholds passed while nothing was applied: one entry raises both.
    assert_eq!(alerts(&log.tick_at(start + 12 * HOUR)), vec![(80, d("12.00")), (100, d("12.00"))]);
    assert_eq!(alerts(&log.tick_at(start + 20 * HOUR)), vec![], "each once");
    // All fired: the next look is at the month's end, where they re-arm.
    let january = month_start(month_of(UnixMillis(start)) + 1).0;
    assert_eq!(log.s.next_deadline(), Some(UnixMillis(january)));
    let turn = log.tick_at(january);
    assert!(turn.journal.iter().any(|e| matches!(e, Event::Metered { .. })));
    assert_eq!(alerts(&turn), vec![]);
    assert_eq!(log.s.next_deadline(), Some(UnixMillis(january + 17_982_000)));
    assert_eq!(alerts(&log.tick_at(january + 17_982_000)), vec![(50, d("5.00"))]);
}

/// A threshold reached exactly as the month ends belongs to that month.
#[test]
fn a_threshold_reached_at_the_month_end_is_raised_for_that_month() {
    let mut log = Log::priced("1");
    let start = log.now;
    let january = month_start(month_of(UnixMillis(start)) + 1).0;
    // 31 days of one cpu: 744.00 at the last millisecond of December.
    log.set_budget("t", Some(budget("744", &[100], false)));
    assert!(log.place("t", "a", 1_000).result.is_ok());
    assert_eq!(log.s.next_deadline(), Some(UnixMillis(january - 18_000)), "743.995 rounds up");
    let applied = log.tick_at(january + DAY);
    let december = month_of(UnixMillis(start));
    let raised: Vec<_> = applied
        .events
        .iter()
        .filter_map(|e| match e {
            QuotaEvent::BudgetAlert { month, spent, .. } => Some((*month, *spent)),
            _ => None,
        })
        .collect();
    assert_eq!(raised, vec![(december, d("744.00"))]);
}

/// Setting a budget re-arms it: thresholds the month's spend already passed are raised on
/// that entry. Clearing it removes its deadline; deleting the tenant too (the invariant check
/// after every entry compares the deadlines with a rebuild).
#[test]
fn setting_a_budget_raises_what_is_already_spent() {
    let mut log = Log::priced("1");
    assert!(log.place("t", "a", 1_000).result.is_ok());
    log.advance(6 * HOUR);
    let set = log.set_budget("t", Some(budget("10", &BUDGET_ALERTS_DEFAULT, false)));
    assert_eq!(alerts(&set), vec![(50, d("6.00"))]);
    let again = log.set_budget("t", Some(budget("10", &BUDGET_ALERTS_DEFAULT, false)));
    assert_eq!(alerts(&again), vec![(50, d("6.00"))], "a new budget is armed anew");
    let lower = log.set_budget("t", Some(budget("6", &[50, 100], false)));
    assert_eq!(alerts(&lower), vec![(50, d("6.00")), (100, d("6.00"))]);
    assert!(log.s.next_deadline().is_some());
    assert_eq!(alerts(&log.set_budget("t", None)), vec![]);
    let december = month_of(UnixMillis(log.now));
    assert_eq!(
        log.s.next_deadline(),
        Some(month_start(december + 2)),
        "no budget: only the invoice's (December closes when January has ended)"
    );
    log.set_budget("t", Some(budget("100", &[50], false)));
    assert!(log.s.next_deadline().is_some());
    log.ok(Command::DeleteTenant { tenant: "t".into() });
    assert_eq!(log.s.next_deadline(), None);
}

/// A price change moves the deadline: the spend runs faster from the change on.
#[test]
fn a_price_change_moves_the_deadline() {
    let mut log = Log::priced("1");
    let start = log.now;
    log.set_budget("t", Some(budget("10", &[100], false)));
    assert!(log.place("t", "a", 1_000).result.is_ok());
    assert_eq!(log.s.next_deadline(), Some(UnixMillis(start + 35_982_000)));
    log.advance(5 * HOUR);
    log.price("5");
    // 5.00 spent; 5.00 more at 5 per hour takes 0.999 h (3,596,400 ms) to round to 10.00.
    assert_eq!(log.s.next_deadline(), Some(UnixMillis(start + 5 * HOUR + 3_596_400)));
}

/// With a hard stop, the spent budget refuses new work (placed or queued), changing nothing;
/// queued work waits, saying why, until the budget is raised or the month ends. Running work
/// is never stopped.
#[test]
fn the_hard_stop_refuses_at_one_hundred_percent() {
    let mut log = Log::priced("1");
    let start = log.now;
    log.set_budget("t", Some(budget("1", &[], true)));
    assert!(log.place("t", "a", 1_000).result.is_ok());
    // Waits for capacity: the worker has 3 cpus left.
    let queued =
        log.ok(Command::PlaceOrQueue { tenant: "t".into(), spec: spec("big", 4_000), fence: None });
    assert!(matches!(queued, Response::Queued(_)));
    log.now = start + 3_582_000 - 1;
    assert!(log.place("t", "b", 1).result.is_ok(), "0.99 spent");
    log.ok(Command::Release { tenant: "t".into(), placement: "b".into(), fence: None });
    log.now = start + 3_582_000 + 10;
    let refused = log.place("t", "c", 1_000);
    let Err(Rejection::BudgetSpent { tenant, budget: limit, spent, resets_at, .. }) =
        &refused.result
    else {
        panic!("refused for the budget: {:?}", refused.result);
    };
    assert_eq!((tenant.as_str(), *limit, *spent), ("t", d("1"), d("1.00")));
    assert_eq!(*resets_at, month_start(month_of(UnixMillis(start)) + 1));
    let rejection = refused.result.as_ref().expect_err("refused");
    assert_eq!(rejection.reason(), "QUOTA_EXCEEDED");
    let meta = rejection.metadata();
    assert_eq!(meta.get("limit_kind").map(String::as_str), Some("budget"));
    assert!(refused.journal.is_empty(), "a refusal emits nothing");
    let queue = log.apply(Command::PlaceOrQueue {
        tenant: "t".into(),
        spec: spec("later", 1),
        fence: None,
    });
    assert!(matches!(queue.result, Err(Rejection::BudgetSpent { .. })), "not queued either");
    assert!(log.place("u", "other", 1_000).result.is_ok(), "another tenant is not stopped");
    log.ok(Command::Release { tenant: "u".into(), placement: "other".into(), fence: None });

    // Capacity frees, but the queued placement waits for the budget.
    log.ok(Command::Release { tenant: "t".into(), placement: "a".into(), fence: None });
    let status = log.s.queue_status(&"t".into(), &"big".into()).expect("still queued");
    assert!(matches!(status.reason, WaitReason::Refused(Rejection::BudgetSpent { .. })));
    let mut next_month = Log(log.0.clone());

    // Raised: admitted in the same entry.
    let raised = log.set_budget("t", Some(budget("2", &[], true)));
    assert!(raised.journal.iter().any(|e| matches!(e, Event::Placed { from_queue: true, .. })));

    // Or at the month's end.
    let january = month_start(month_of(UnixMillis(start)) + 1).0;
    let before = next_month.tick_at(january - 1);
    assert!(!before.journal.iter().any(|e| matches!(e, Event::Placed { .. })));
    let turn = next_month.tick_at(january);
    assert!(turn.journal.iter().any(|e| matches!(e, Event::Placed { from_queue: true, .. })));
}

/// A daily limit is a cost window: today's spend (the month's total less its total at
/// midnight) reaching it refuses new work, with or without a hard stop, until the next UTC
/// midnight, when queued work is admitted by the tick the leader makes then.
#[test]
fn a_daily_limit_refuses_until_midnight() {
    let mut log = Log::priced("1");
    let start = log.now;
    let daily = Budget { per_day: Some(d("2")), ..budget("1000", &[], false) };
    log.set_budget("t", Some(daily));
    assert!(log.place("t", "a", 1_000).result.is_ok());
    // 2.00 at 1.995 h.
    log.now = start + 7_182_000 - 1;
    assert!(log.place("t", "b", 1).result.is_ok(), "1.99 today");
    log.ok(Command::Release { tenant: "t".into(), placement: "b".into(), fence: None });
    log.now = start + 7_182_000;
    let refused = log.place("t", "c", 1).result.expect_err("today's budget is spent");
    let Rejection::BudgetSpent { period, budget: limit, spent, resets_at, .. } = &refused else {
        panic!("refused for the day: {refused:?}");
    };
    assert_eq!((*period, *limit, *spent), (budget::BudgetPeriod::Day, d("2"), d("2.00")));
    let midnight = start + DAY;
    assert_eq!(*resets_at, UnixMillis(midnight));
    assert_eq!(refused.metadata().get("window").map(String::as_str), Some("cost_per_day"));
    // Queued: it waits for a new day, and the leader ticks at midnight for it.
    log.ok(Command::Release { tenant: "t".into(), placement: "a".into(), fence: None });
    let mut waiting = Log(log.0.clone());
    assert!(
        matches!(
            waiting
                .apply(Command::PlaceOrQueue {
                    tenant: "t".into(),
                    spec: spec("q", 1_000),
                    fence: None,
                })
                .result,
            Err(Rejection::BudgetSpent { .. })
        ),
        "refused, not queued"
    );
    // Queued before the limit was reached, it waits.
    let mut early = Log::priced("1");
    early.set_budget("t", Some(Budget { per_day: Some(d("2")), ..budget("1000", &[], false) }));
    assert!(early.place("t", "a", 4_000).result.is_ok());
    let queued =
        early.ok(Command::PlaceOrQueue { tenant: "t".into(), spec: spec("q", 1_000), fence: None });
    assert!(matches!(queued, Response::Queued(_)));
    early.now = start + HOUR;
    early.ok(Command::Release { tenant: "t".into(), placement: "a".into(), fence: None });
    let status = early.s.queue_status(&"t".into(), &"q".into()).expect("waits");
    assert!(matches!(status.reason, WaitReason::Refused(Rejection::BudgetSpent { .. })));
    assert_eq!(early.s.next_deadline(), Some(UnixMillis(midnight)), "a tick at midnight");
    assert!(early.tick_at(midnight - 1).journal.iter().all(|e| !matches!(e, Event::Placed { .. })));
    let admitted = early.tick_at(midnight);
    assert!(admitted.journal.iter().any(|e| matches!(e, Event::Placed { from_queue: true, .. })));
    let status = early.s.budget_status(&"t".into()).expect("budgeted");
    assert_eq!(status.spent_today, d("0.00"), "a new day");
    assert_eq!(status.spent, d("4.00"), "the month goes on");
}

/// Out-of-bound budgets are refused with the field named, and change nothing.
#[test]
fn hostile_budgets_are_refused() {
    let mut log = Log::priced("1");
    let bad = [
        budget("0", &[], false),
        budget("-1", &[], false),
        budget("1000000000000.01", &[], false),
        budget("1.001", &[], false),
        budget("10", &[80, 50], false),
        budget("10", &[50, 50], false),
        budget("10", &[0], false),
        budget("10", &[1_001], false),
        budget("10", &[1, 2, 3, 4, 5, 6, 7, 8, 9], false),
        Budget { per_day: Some(d("0")), ..budget("10", &[], false) },
        Budget { per_day: Some(d("0.001")), ..budget("10", &[], false) },
    ];
    for b in bad {
        let refused = log.set_budget("t", Some(b.clone()));
        let Err(Rejection::InvalidArgument { field, .. }) = &refused.result else {
            panic!("{b:?} accepted: {:?}", refused.result);
        };
        assert!(["per_month", "per_day", "alerts_percent"].contains(&field.as_str()), "{field}");
        assert!(log.s.state().tenants[&TenantId::new("t")].budget.is_none());
    }
    let unknown = log.set_budget("nobody", Some(budget("10", &[], false)));
    assert!(matches!(unknown.result, Err(Rejection::TenantNotFound { .. })));
    // The largest budget and the most thresholds are fine.
    let most = budget("1000000000000", &[1, 2, 3, 4, 5, 6, 7, 1_000], true);
    assert!(log.set_budget("t", Some(most)).result.is_ok());
}

#[derive(Clone, Debug)]
enum Op {
    Place {
        tenant: usize,
        cpu: u64,
    },
    Release {
        tenant: usize,
        nth: usize,
    },
    Advance {
        ms: u64,
    },
    Budget {
        tenant: usize,
        cents: u64,
        daily_cents: Option<u64>,
        alerts: Vec<u16>,
        hard_stop: bool,
    },
    Clear {
        tenant: usize,
    },
    Price {
        per_hour: u64,
    },
    Recreate {
        tenant: usize,
    },
}

const TENANTS: [&str; 2] = ["t", "u"];

fn op() -> impl PropStrategy<Value = Op> {
    prop_oneof![
        4 => (0..2usize, 1..2_000u64).prop_map(|(tenant, cpu)| Op::Place { tenant, cpu }),
        2 => (0..2usize, 0..4usize).prop_map(|(tenant, nth)| Op::Release { tenant, nth }),
        4 => prop_oneof![1..HOUR, HOUR..10 * DAY].prop_map(|ms| Op::Advance { ms }),
        2 => (
            0..2usize,
            1..5_000u64,
            proptest::option::weighted(0.4, 1..500u64),
            proptest::collection::btree_set(1..150u16, 0..4),
            any::<bool>(),
        )
            .prop_map(|(tenant, cents, daily_cents, alerts, hard_stop)| Op::Budget {
                tenant,
                cents,
                daily_cents,
                alerts: alerts.into_iter().collect(),
                hard_stop,
            }),
        1 => (0..2usize).prop_map(|tenant| Op::Clear { tenant }),
        1 => (0..300u64).prop_map(|per_hour| Op::Price { per_hour }),
        1 => (0..2usize).prop_map(|tenant| Op::Recreate { tenant }),
    ]
}

/// Raised alerts per (tenant, month, percent) since the tenant's budget was last set.
type Raised = BTreeMap<(TenantId, u64, u16), u32>;

fn spent(log: &Log, t: &str) -> Decimal {
    log.s.statements(&t.into()).map(|(s, _)| s.total).expect("tenant exists")
}

/// Applies `command` and checks the entry: a refusal for the budget exactly when
/// `hard_stopped`, each alert once, and every budget's alerts exactly what its spend reached.
fn check(
    log: &mut Log,
    raised: &mut Raised,
    command: Command,
    hard_stopped: Option<bool>,
) -> Result<(), TestCaseError> {
    match &command {
        Command::SetBudget { tenant, .. } | Command::DeleteTenant { tenant } => {
            raised.retain(|(owner, _, _), _| owner != tenant)
        }
        _ => {}
    }
    let applied = log.apply(command);
    match (hard_stopped, &applied.result) {
        (Some(true), r) => prop_assert!(matches!(r, Err(Rejection::BudgetSpent { .. })), "{:?}", r),
        (_, Err(Rejection::BudgetSpent { .. })) => prop_assert!(false, "refused unspent"),
        _ => {}
    }
    for e in &applied.events {
        if let QuotaEvent::BudgetAlert { tenant, month, percent, budget, spent } = e {
            prop_assert!(*spent >= *budget * Decimal::new(i64::from(*percent), 2));
            let n = raised.entry((tenant.clone(), *month, *percent)).or_insert(0);
            *n += 1;
            prop_assert_eq!(*n, 1, "{} {}% raised twice in month {}", tenant, percent, month);
        }
    }
    for t in TENANTS {
        let Some(tenant) = log.s.state().tenants.get(&TenantId::new(t)) else { continue };
        let Some(b) = tenant.budget.clone() else { continue };
        let BudgetState { budget, .. } = &*b;
        let month = month_of(log.s.now());
        let spent = spent(log, t);
        let due: Vec<u16> = budget
            .alerts_percent
            .iter()
            .copied()
            .filter(|p| spent >= budget.per_month * Decimal::new(i64::from(*p), 2))
            .collect();
        let fired = b.fired_percents(month);
        prop_assert_eq!(fired, &due[..], "{} spent {} of {}", t, spent, budget.per_month);
        let raised_now: Vec<u16> = raised
            .range((TenantId::new(t), month, 0)..=(TenantId::new(t), month, u16::MAX))
            .map(|((_, _, p), _)| *p)
            .collect();
        prop_assert_eq!(&raised_now, &due, "raised as events");
    }
    Ok(())
}

/// After every entry, each budgeted tenant's raised alerts are exactly the thresholds its
/// spend this month has reached (never late, never early), each raised once per month and
/// budget; a hard-stopped tenant is refused exactly when its spend has reached its budget.
fn run(ops: &[Op]) -> Result<(), TestCaseError> {
    let mut log = Log::priced("1");
    let mut raised = Raised::new();
    let mut next = 0;
    for op in ops {
        let (command, hard_stopped) = match op.clone() {
            Op::Place { tenant, cpu } => {
                next += 1;
                let t = TENANTS[tenant];
                let stopped = log.s.budget_status(&t.into()).map(|s| {
                    let month = s.budget.hard_stop && s.spent >= s.budget.per_month;
                    month || s.budget.per_day.is_some_and(|limit| s.spent_today >= limit)
                });
                let spec = spec(&format!("p{next}"), cpu);
                (Command::Place { tenant: t.into(), spec, fence: None }, stopped)
            }
            Op::Release { tenant, nth } => {
                let t = TenantId::new(TENANTS[tenant]);
                let ids: Vec<PlacementId> = log
                    .s
                    .state()
                    .placements
                    .keys()
                    .filter(|(owner, _)| *owner == t)
                    .map(|(_, id)| id.clone())
                    .collect();
                let Some(id) = ids.get(nth % ids.len().max(1)).cloned() else { continue };
                (Command::Release { tenant: t, placement: id, fence: None }, None)
            }
            Op::Advance { ms } => {
                log.advance(ms);
                (Command::Tick, None)
            }
            Op::Budget { tenant, cents, daily_cents, alerts, hard_stop } => {
                let per_month = Decimal::new(i64::try_from(cents).expect("small"), 2);
                let per_day =
                    daily_cents.map(|c| Decimal::new(i64::try_from(c).expect("small"), 2));
                let budget = Budget { per_month, per_day, alerts_percent: alerts, hard_stop };
                (Command::SetBudget { tenant: TENANTS[tenant].into(), budget: Some(budget) }, None)
            }
            Op::Clear { tenant } => {
                (Command::SetBudget { tenant: TENANTS[tenant].into(), budget: None }, None)
            }
            Op::Price { per_hour } => {
                let mut prices = Prices::default();
                let per_hour = Decimal::new(i64::try_from(per_hour).expect("small"), 3);
                prices
                    .other_pools
                    .items
                    .insert(Item::Cpu, vec![Tier { up_to_hours: None, per_hour }]);
                (Command::SetPricePlan { plan: "default".into(), prices, effective_at: None }, None)
            }
            Op::Recreate { tenant } => {
                let t = TENANTS[tenant];
                check(&mut log, &mut raised, Command::DeleteTenant { tenant: t.into() }, None)?;
                (Command::CreateTenant { tenant: t.into(), parent: None, weight: 1 }, None)
            }
        };
        check(&mut log, &mut raised, command, hard_stopped)?;
    }
    Ok(())
}

fn cases() -> ProptestConfig {
    let default = ProptestConfig::default();
    let cases = if std::env::var_os("PROPTEST_CASES").is_some() { default.cases } else { 128 };
    ProptestConfig { cases, ..default }
}

proptest! {
    #![proptest_config(cases())]
    #[test]
    fn alerts_are_exact_and_once_per_threshold(ops in proptest::collection::vec(op(), 1..60)) {
        run(&ops)?;
    }
}

/// Times for people: RFC 3339 in UTC, to the millisecond, leap days included.
#[test]
fn utc_labels_are_rfc3339() {
    use berth::scheduler::windows::utc_label;
    assert_eq!(utc_label(UnixMillis(testing::T0)), "2023-11-14T22:13:20.000Z");
    assert_eq!(utc_label(UnixMillis(december())), "2023-12-01T00:00:00.000Z");
    assert_eq!(utc_label(UnixMillis(1_709_164_800_123)), "2024-02-29T00:00:00.123Z");
    assert_eq!(utc_label(UnixMillis(0)), "1970-01-01T00:00:00.000Z");
}
