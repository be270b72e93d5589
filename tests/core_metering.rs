//! Metering and prices through the core's public interface. The property test runs random
//! placements, reservations, confirmations, releases, tenant deletions, price changes, plan
//! assignments and time jumps (across months), and checks every statement the core makes
//! against an independent model: an eager integrator that knows only the command history and
//! the entries' events, and recomputes every quantity and amount itself.

use std::collections::BTreeMap;
use std::str::FromStr;

use berth::scheduler::meter::{month_label, MIB_MS_PER_GIB_HOUR};
use berth::scheduler::windows::{month_of, month_start};
use berth::scheduler::*;
use proptest::prelude::*;
use proptest::strategy::Strategy as PropStrategy;
use rust_decimal::{Decimal, RoundingStrategy};

mod core_harness;
use core_harness::Log;

const HOUR: u64 = 3_600_000;
const DAY: u64 = 24 * HOUR;

fn d(s: &str) -> Decimal {
    Decimal::from_str(s).expect("test decimal")
}

fn tier(up_to_hours: Option<u64>, per_hour: &str) -> Tier {
    Tier { up_to_hours, per_hour: d(per_hour) }
}

impl Log {
    fn setup(&mut self) {
        for t in ["t0", "t1", "t2"] {
            self.tenant(t);
        }
        for (w, pool) in [("a1", "a"), ("a2", "a"), ("b1", "b"), ("b2", "b")] {
            self.accepted(Command::RegisterWorker {
                worker: w.into(),
                pool: Some(pool.into()),
                capacity: Resources::new(4_000, 8_192),
                labels: Labels::new(),
            });
        }
    }

    fn tenant(&mut self, id: &str) {
        self.accepted(Command::CreateTenant { tenant: id.into(), parent: None, weight: 1 });
    }

    /// Its statements as of log time now (a tick brings the core there first).
    fn statement(&mut self, tenant: &str) -> (Statement, Option<Statement>) {
        self.tick();
        self.s.statements(&tenant.into()).expect("tenant exists")
    }
}

fn spec(id: &str, pool: &str, cpu_millis: u64, memory_mib: u64, count: u32) -> PlaceSpec {
    PlaceSpec {
        placement: id.into(),
        count,
        resources: Resources::new(cpu_millis, memory_mib),
        pool: Some(pool.into()),
        ..PlaceSpec::default()
    }
}

fn prices(other: &[(Item, Vec<Tier>)], pools: &[(&str, Item, Vec<Tier>)]) -> Prices {
    let mut p = Prices::default();
    for (item, tiers) in other {
        p.other_pools.items.insert(*item, tiers.clone());
    }
    for (pool, item, tiers) in pools {
        p.pools.entry((*pool).into()).or_default().items.insert(*item, tiers.clone());
    }
    p
}

/// One cpu for 90 minutes under "first hour at 2, then 1": 2.50; a reservation without a price
/// of its own costs what a placement does; memory is priced per GiB-hour.
#[test]
fn tiers_reservations_and_memory_are_priced() {
    let mut log = Log::new();
    log.setup();
    let plan = prices(
        &[
            (Item::Cpu, vec![tier(Some(1), "2"), tier(None, "1")]),
            (Item::Memory, vec![tier(None, "0.01")]),
        ],
        &[],
    );
    let set =
        log.ok(Command::SetPricePlan { plan: "default".into(), prices: plan, effective_at: None });
    assert!(matches!(set, Response::PricePlanSet { .. }));
    log.ok(Command::Place {
        tenant: "t0".into(),
        spec: spec("p", "a", 1_000, 1_024, 1),
        fence: None,
    });
    log.advance(90 * 60_000);
    log.ok(Command::Reserve {
        tenant: "t1".into(),
        spec: spec("r", "b", 1_000, 0, 1),
        ttl_ms: HOUR,
        fence: None,
    });
    log.advance(30 * 60_000);
    let (now, _) = log.statement("t0");
    // Two hours: 1 h at 2, 1 h at 1, and 2 GiB-hours at 0.01.
    assert_eq!(now.total, d("3.02"), "{now:#?}");
    let (reserved, _) = log.statement("t1");
    assert_eq!(reserved.total, d("1.00"), "half an hour at the first tier: {reserved:#?}");
    assert_eq!(reserved.lines[0].item, Item::ReservedCpu);
}

/// A price change takes effect at its time and never rewrites the past; one set for the
/// future waits; a tenant's own plan replaces the default from the moment it is assigned.
#[test]
fn price_changes_never_rewrite_the_past() {
    let mut log = Log::new();
    log.setup();
    let at = |p: &str| prices(&[(Item::Cpu, vec![tier(None, p)])], &[]);
    log.ok(Command::SetPricePlan { plan: "default".into(), prices: at("1"), effective_at: None });
    log.ok(Command::Place { tenant: "t0".into(), spec: spec("p", "a", 1_000, 0, 1), fence: None });
    log.advance(HOUR);
    // Set now for an hour from now, and again (as of the past: it takes effect now).
    let future = UnixMillis(log.now + HOUR);
    let r = log.ok(Command::SetPricePlan {
        plan: "default".into(),
        prices: at("3"),
        effective_at: Some(future),
    });
    assert_eq!(r, Response::PricePlanSet { since: future });
    let past = UnixMillis(log.now - HOUR);
    let r = log.ok(Command::SetPricePlan {
        plan: "default".into(),
        prices: at("2"),
        effective_at: Some(past),
    });
    assert_eq!(r, Response::PricePlanSet { since: UnixMillis(log.now) });
    log.advance(2 * HOUR);
    // 1 h at 1, 1 h at 2, 1 h at 3.
    assert_eq!(log.statement("t0").0.total, d("6.00"));
    log.ok(Command::SetPricePlan { plan: "gold".into(), prices: at("10"), effective_at: None });
    log.ok(Command::SetBillingPlan { tenant: "t0".into(), plan: Some("gold".into()) });
    log.advance(HOUR);
    assert_eq!(log.statement("t0").0.total, d("16.00"));
    assert_eq!(log.s.billing_plan_of(&"t0".into()), Some(&PlanId::new("gold")));
    assert_eq!(log.s.billing_plan_of(&"t1".into()), Some(&PlanId::new("default")));
}

/// Bad prices and unknown plans are refused and change nothing.
#[test]
fn bad_prices_are_refused() {
    let mut log = Log::new();
    log.setup();
    let before = log.s.clone();
    let bad = [
        prices(&[(Item::Cpu, vec![tier(None, "-1")])], &[]),
        prices(&[(Item::Cpu, vec![tier(None, "0.0000001")])], &[]),
        prices(&[(Item::Cpu, vec![tier(None, "1000000.01")])], &[]),
        prices(&[(Item::Cpu, vec![tier(Some(5), "1")])], &[]),
        prices(&[(Item::Cpu, vec![tier(Some(5), "1"), tier(Some(4), "1"), tier(None, "1")])], &[]),
        prices(&[(Item::Cpu, vec![])], &[]),
        prices(&[(Item::Cpu, (0..9).map(|_| tier(None, "1")).collect())], &[]),
        prices(&[], &[("no spaces", Item::Cpu, vec![tier(None, "1")])]),
    ];
    for p in bad {
        let r = log.err(Command::SetPricePlan { plan: "p".into(), prices: p, effective_at: None });
        assert_eq!(r.reason(), "INVALID_ARGUMENT", "{r}");
    }
    let r = log.err(Command::SetBillingPlan { tenant: "t0".into(), plan: Some("nope".into()) });
    assert_eq!(r.reason(), "PLAN_NOT_FOUND");
    assert_eq!(log.s.state().price_plans, before.state().price_plans);
    assert_eq!(log.s.state().tenants, before.state().tenants);
}

/// At most `PLAN_VERSIONS_MAX` versions wait; those that no meter can need are forgotten.
#[test]
fn plan_versions_are_bounded() {
    let mut log = Log::new();
    log.setup();
    let p = prices(&[(Item::Cpu, vec![tier(None, "1")])], &[]);
    for i in 1..=meter::PLAN_VERSIONS_MAX as u64 {
        let at = Some(UnixMillis(log.now + i * HOUR));
        log.ok(Command::SetPricePlan { plan: "p".into(), prices: p.clone(), effective_at: at });
    }
    let at = Some(UnixMillis(log.now + 1_000 * HOUR));
    let r =
        log.err(Command::SetPricePlan { plan: "p".into(), prices: p.clone(), effective_at: at });
    assert_eq!(r.reason(), "LIMIT_REACHED");
    // Once they are in effect, the older ones go.
    log.advance(100 * HOUR);
    log.ok(Command::SetPricePlan { plan: "p".into(), prices: p, effective_at: None });
    assert_eq!(log.s.state().price_plans[&PlanId::new("p")].versions.len(), 1);
}

/// A month ends exactly at 00:00 UTC of the next: its statement is final, reported once as a
/// `METERED` event, and the new month starts at the first tier. A deleted tenant's month so
/// far is reported the same way.
#[test]
fn months_end_with_a_final_statement() {
    let mut log = Log::new();
    log.setup();
    let p = prices(&[(Item::Cpu, vec![tier(Some(10), "1"), tier(None, "0.5")])], &[]);
    log.ok(Command::SetPricePlan { plan: "default".into(), prices: p, effective_at: None });
    log.ok(Command::Place { tenant: "t0".into(), spec: spec("p", "a", 1_000, 0, 1), fence: None });
    let month = month_of(UnixMillis(log.now));
    let end = month_start(month + 1).0;
    let hours_left = (end - log.now) / HOUR;
    log.now = end + 2 * HOUR;
    let applied = log.tick();
    // The tick does not touch t0: nothing is reported until its meter moves.
    assert!(applied.journal.iter().all(|e| !matches!(e, Event::Metered { .. })));
    let applied =
        log.accepted(Command::Release { tenant: "t0".into(), placement: "p".into(), fence: None });
    let metered: Vec<&Statement> = applied
        .journal
        .iter()
        .filter_map(|e| match e {
            Event::Metered { statement, .. } => Some(statement),
            _ => None,
        })
        .collect();
    assert_eq!(metered.len(), 1);
    assert_eq!(metered[0].month, month);
    assert_eq!(metered[0].to, UnixMillis(end));
    assert!(hours_left > 10, "the test starts early enough in its month");
    let (now, last) = log.statement("t0");
    assert_eq!(now.total, d("2.00"), "two hours of the new month, at the first tier");
    assert_eq!(last.as_ref(), Some(metered[0]));
    // Deleting the tenant reports its month so far.
    log.ok(Command::Place { tenant: "t0".into(), spec: spec("q", "a", 1_000, 0, 1), fence: None });
    log.advance(HOUR);
    let applied = log.accepted(Command::DeleteTenant { tenant: "t0".into() });
    let kinds: Vec<EventKind> = applied.journal.iter().map(Event::kind).collect();
    assert_eq!(kinds.last(), Some(&EventKind::TenantDeleted));
    let last_metered = applied.journal.iter().rev().find_map(|e| match e {
        Event::Metered { statement, .. } => Some(statement.total),
        _ => None,
    });
    assert_eq!(last_metered, Some(d("3.00")));
    assert_eq!(month_label(month_of(UnixMillis(0))), "1970-01");
}

/// The projection runs the meter to the month's end: what is held, exactly, and with the
/// queued placements admitted now.
#[test]
fn projections_run_the_meter_to_the_months_end() {
    let mut log = Log::new();
    log.setup();
    let p = prices(&[(Item::Cpu, vec![tier(None, "1")])], &[]);
    log.ok(Command::SetPricePlan { plan: "default".into(), prices: p, effective_at: None });
    let placed_at = log.now;
    log.ok(Command::Place { tenant: "t0".into(), spec: spec("p", "a", 1_000, 0, 1), fence: None });
    log.advance(HOUR);
    // Two workers of 4 cpus in pool a: four more of 3 cpus must wait.
    let queued = log.ok(Command::PlaceOrQueue {
        tenant: "t0".into(),
        spec: spec("q", "a", 3_000, 0, 4),
        fence: None,
    });
    assert!(matches!(queued, Response::Queued(_)), "{queued:?}");
    let queued_at = log.now;
    let end = month_start(month_of(UnixMillis(log.now)) + 1);
    let projection = log.s.projection(&"t0".into()).expect("tenant exists");
    assert_eq!(projection.month_end, end);
    let held = u128::from(1_000 * (end.0 - placed_at));
    assert_eq!(projection.held, meter::amount(Item::Cpu, held, d("1")));
    let waiting = u128::from(12_000 * (end.0 - queued_at));
    assert_eq!(projection.with_queued, meter::amount(Item::Cpu, held + waiting, d("1")));
    // Nothing changed: the statement still runs to now.
    assert_eq!(log.statement("t0").0.total, d("1.00"));
}

// ----- the property test -----------------------------------------------------------------------

#[derive(Clone, Debug)]
enum Op {
    Place { tenant: usize, pool: usize, cpu: u64, mem: u64, count: u32, reserve: bool },
    Release { tenant: usize, nth: usize },
    Confirm { tenant: usize, nth: usize },
    Price { plan: usize, shape: usize, price: usize, later_hours: Option<u64> },
    Assign { tenant: usize, plan: Option<usize> },
    Recreate { tenant: usize },
    Advance { ms: u64 },
}

const TENANTS: [&str; 3] = ["t0", "t1", "t2"];
const POOLS: [&str; 2] = ["a", "b"];
const PLANS: [&str; 2] = ["default", "gold"];
const PRICES: [&str; 5] = ["0.035", "1.25", "0.5", "2", "0.0013"];

fn op() -> impl PropStrategy<Value = Op> {
    prop_oneof![
        4 => (0..3usize, 0..2usize, 1..5u64, 0..4u64, 1..3u32, any::<bool>()).prop_map(
            |(tenant, pool, cpu, mem, count, reserve)| Op::Place {
                tenant, pool, cpu: cpu * 250, mem: mem * 512, count, reserve
            }
        ),
        2 => (0..3usize, 0..8usize).prop_map(|(tenant, nth)| Op::Release { tenant, nth }),
        1 => (0..3usize, 0..8usize).prop_map(|(tenant, nth)| Op::Confirm { tenant, nth }),
        2 => (0..2usize, 0..4usize, 0..5usize, prop::option::of(0..48u64)).prop_map(
            |(plan, shape, price, later_hours)| Op::Price { plan, shape, price, later_hours }
        ),
        1 => (0..3usize, prop::option::of(0..2usize))
            .prop_map(|(tenant, plan)| Op::Assign { tenant, plan }),
        1 => (0..3usize).prop_map(|tenant| Op::Recreate { tenant }),
        4 => prop_oneof![1..120_000u64, HOUR..3 * HOUR, DAY..20 * DAY]
            .prop_map(|ms| Op::Advance { ms }),
    ]
}

/// The prices of shape `shape` with base price `price`: tiers, per-pool prices, reservations'
/// own prices, and unpriced memory.
fn shaped(shape: usize, price: usize) -> Prices {
    let p = PRICES[price];
    let q = PRICES[(price + 1) % PRICES.len()];
    match shape {
        0 => prices(&[(Item::Cpu, vec![tier(None, p)])], &[]),
        1 => prices(
            &[
                (Item::Cpu, vec![tier(Some(1), p), tier(Some(3), q), tier(None, "0.001")]),
                (Item::Memory, vec![tier(None, q)]),
            ],
            &[],
        ),
        2 => prices(
            &[(Item::Cpu, vec![tier(None, p)]), (Item::ReservedCpu, vec![tier(None, q)])],
            &[("a", Item::Memory, vec![tier(Some(2), q), tier(None, p)])],
        ),
        _ => prices(&[], &[("b", Item::Cpu, vec![tier(None, p)])]),
    }
}

type LineKey = (PoolId, Item, Option<(PlanId, UnixMillis, u8)>);

/// The independent model: holdings from events, plans from commands, integrated eagerly
/// before every entry.
#[derive(Default)]
struct Model {
    at: u64,
    /// (tenant, placement) → (pool, total held, reservation).
    holdings: BTreeMap<(TenantId, PlacementId), (PoolId, Resources, bool)>,
    plans: BTreeMap<PlanId, Vec<(UnixMillis, Prices)>>,
    assigned: BTreeMap<TenantId, PlanId>,
    /// Per tenant: its month, the month's quantities by line, its use per (pool, item).
    month: BTreeMap<TenantId, u64>,
    lines: BTreeMap<TenantId, BTreeMap<LineKey, (u128, Decimal)>>,
    used: BTreeMap<(TenantId, PoolId, Item), u128>,
    /// Months that ended, per tenant: (month) → lines.
    ended: BTreeMap<(TenantId, u64), BTreeMap<LineKey, (u128, Decimal)>>,
}

fn units(item: Item) -> u128 {
    match item {
        Item::Cpu | Item::ReservedCpu => 3_600_000_000,
        Item::Memory | Item::ReservedMemory => MIB_MS_PER_GIB_HOUR,
    }
}

fn model_amount(item: Item, quantity: u128, per_hour: Decimal) -> Decimal {
    let hours =
        Decimal::from_i128_with_scale(quantity as i128, 0) / Decimal::from(units(item) as u64);
    (hours * per_hour).round_dp_with_strategy(2, RoundingStrategy::MidpointAwayFromZero)
}

impl Model {
    fn plan_of(&self, tenant: &TenantId) -> Option<PlanId> {
        match self.assigned.get(tenant) {
            Some(p) => Some(p.clone()),
            None => self.plans.contains_key(&PlanId::new("default")).then(|| "default".into()),
        }
    }

    fn version_at(&self, plan: &PlanId, at: u64) -> Option<(UnixMillis, &Prices)> {
        let versions = self.plans.get(plan)?;
        versions
            .iter()
            .filter(|(since, _)| since.0 <= at)
            .max_by_key(|(s, _)| *s)
            .map(|(s, p)| (*s, p))
    }

    /// Integrates everyone from `self.at` to `to`, piece by piece.
    fn integrate(&mut self, to: u64) {
        while self.at < to {
            let mut end = to.min(month_start(month_of(UnixMillis(self.at)) + 1).0);
            for versions in self.plans.values() {
                for (since, _) in versions {
                    if since.0 > self.at {
                        end = end.min(since.0);
                    }
                }
            }
            let ms = u128::from(end - self.at);
            let held: Vec<_> =
                self.holdings.iter().map(|((t, _), v)| (t.clone(), v.clone())).collect();
            for (tenant, (pool, total, reserved)) in held {
                let items = if reserved {
                    [
                        (Item::ReservedCpu, total.cpu_millis),
                        (Item::ReservedMemory, total.memory_mib),
                    ]
                } else {
                    [(Item::Cpu, total.cpu_millis), (Item::Memory, total.memory_mib)]
                };
                for (item, rate) in items {
                    let q = u128::from(rate) * ms;
                    if q > 0 {
                        self.add(&tenant, &pool, item, q);
                    }
                }
            }
            self.at = end;
            if end == month_start(month_of(UnixMillis(end - 1)) + 1).0 {
                // A month ended: every tenant's lines of it are final.
                let tenants: Vec<TenantId> = self.lines.keys().cloned().collect();
                for t in tenants {
                    let lines = self.lines.remove(&t).unwrap_or_default();
                    let month = self.month[&t];
                    if !lines.is_empty() {
                        self.ended.insert((t.clone(), month), lines);
                    }
                }
                self.used.clear();
                for m in self.month.values_mut() {
                    *m = month_of(UnixMillis(end));
                }
            }
        }
    }

    fn add(&mut self, tenant: &TenantId, pool: &PoolId, item: Item, q: u128) {
        let priced: Option<(PlanId, UnixMillis, Option<Vec<Tier>>)> =
            self.plan_of(tenant).and_then(|plan| {
                let (since, prices) = self.version_at(&plan, self.at)?;
                let pool_prices = prices.pools.get(pool).unwrap_or(&prices.other_pools);
                let placed = match item {
                    Item::ReservedCpu => Item::Cpu,
                    Item::ReservedMemory => Item::Memory,
                    other => other,
                };
                let tiers = pool_prices
                    .items
                    .get(&item)
                    .or_else(|| pool_prices.items.get(&placed))
                    .cloned();
                Some((plan, since, tiers))
            });
        let (version, tiers) = match priced {
            Some((plan, since, tiers)) => (Some((plan, since)), tiers),
            None => (None, None),
        };
        let used = self.used.entry((tenant.clone(), pool.clone(), item)).or_insert(0);
        let lines = self.lines.entry(tenant.clone()).or_default();
        match (version, tiers) {
            (Some((plan, since)), Some(tiers)) => {
                let mut lower = 0u128;
                let mut rest = q;
                for (k, t) in tiers.iter().enumerate() {
                    let upper = t.up_to_hours.map_or(u128::MAX, |h| u128::from(h) * units(item));
                    let room = upper.saturating_sub((*used).max(lower));
                    let take = rest.min(room);
                    if take > 0 {
                        let key = (pool.clone(), item, Some((plan.clone(), since, k as u8)));
                        let line = lines.entry(key).or_insert((0, t.per_hour));
                        line.0 += take;
                        *used += take;
                        rest -= take;
                    }
                    lower = upper;
                }
                assert_eq!(rest, 0, "the last tier has no bound");
            }
            _ => {
                let line = lines.entry((pool.clone(), item, None)).or_insert((0, Decimal::ZERO));
                line.0 += q;
                *used += q;
            }
        }
    }

    /// Folds an accepted entry's events in.
    fn fold(&mut self, journal: &[Event]) -> Result<(), TestCaseError> {
        for e in journal {
            match e {
                Event::Placed {
                    tenant,
                    placement,
                    pool,
                    instances,
                    resources,
                    reservation,
                    ..
                } => {
                    let total = resources.checked_mul(instances.len() as u64).expect("fits");
                    self.holdings.insert(
                        (tenant.clone(), placement.clone()),
                        (pool.clone(), total, *reservation),
                    );
                }
                Event::Released { tenant, placement, .. } => {
                    prop_assert!(self
                        .holdings
                        .remove(&(tenant.clone(), placement.clone()))
                        .is_some());
                }
                Event::Confirmed { tenant, placement, .. } => {
                    let h = self.holdings.get_mut(&(tenant.clone(), placement.clone()));
                    let h = h.expect("confirmed what was reserved");
                    prop_assert!(h.2);
                    h.2 = false;
                }
                Event::Metered { tenant, statement } => {
                    let expected = match self.ended.get(&(tenant.clone(), statement.month)) {
                        Some(lines) => lines.clone(),
                        // Deleted: its month so far.
                        None => self.lines.get(tenant).cloned().unwrap_or_default(),
                    };
                    check(statement, &expected)?;
                }
                Event::TenantDeleted { tenant } => {
                    self.holdings.retain(|(t, _), _| t != tenant);
                    self.lines.remove(tenant);
                    self.used.retain(|(t, _, _), _| t != tenant);
                    self.ended.retain(|(t, _), _| t != tenant);
                    self.assigned.remove(tenant);
                }
                Event::TenantCreated { tenant, .. } => {
                    self.month.insert(tenant.clone(), month_of(UnixMillis(self.at)));
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// The core's statement has exactly the model's lines, quantities and amounts, and its total
/// is their sum.
fn check(
    s: &Statement,
    expected: &BTreeMap<LineKey, (u128, Decimal)>,
) -> Result<(), TestCaseError> {
    let got: BTreeMap<LineKey, (u128, Decimal)> = s
        .lines
        .iter()
        .map(|l| {
            let price = l.price.as_ref().map(|p| (p.plan.clone(), p.since, p.tier));
            ((l.pool.clone(), l.item, price), (l.quantity, l.per_hour))
        })
        .collect();
    prop_assert_eq!(&got, expected, "lines of {}", month_label(s.month));
    let mut total = Decimal::ZERO;
    for l in &s.lines {
        let amount = model_amount(l.item, l.quantity, l.per_hour);
        prop_assert_eq!(l.amount, amount, "amount of {:?}", l);
        total += amount;
    }
    prop_assert_eq!(s.total, total);
    Ok(())
}

fn run(ops: &[Op]) -> Result<(), TestCaseError> {
    let mut log = Log::new();
    let mut model = Model { at: log.now, ..Model::default() };
    let mut next = 0u64;
    let apply =
        |log: &mut Log, model: &mut Model, command: Command| -> Result<Applied, TestCaseError> {
            model.integrate(log.now);
            let plan_cmd = match &command {
                Command::SetPricePlan { plan, prices, .. } => Some((plan.clone(), prices.clone())),
                _ => None,
            };
            let assign = match &command {
                Command::SetBillingPlan { tenant, plan } => Some((tenant.clone(), plan.clone())),
                _ => None,
            };
            let applied = log.apply(command);
            model.fold(&applied.journal)?;
            if let Ok(Response::PricePlanSet { since }) = &applied.result {
                let (plan, prices) = plan_cmd.expect("a price plan was set");
                let versions = model.plans.entry(plan).or_default();
                versions.retain(|(s, _)| s != since);
                versions.push((*since, prices));
            }
            if let (Ok(Response::BillingPlanSet), Some((tenant, plan))) = (&applied.result, assign)
            {
                match plan {
                    Some(p) => model.assigned.insert(tenant, p),
                    None => model.assigned.remove(&tenant),
                };
            }
            Ok(applied)
        };
    for t in TENANTS {
        apply(
            &mut log,
            &mut model,
            Command::CreateTenant { tenant: t.into(), parent: None, weight: 1 },
        )?;
    }
    for (w, pool) in [("a1", "a"), ("a2", "a"), ("b1", "b"), ("b2", "b")] {
        let capacity = Resources::new(4_000, 8_192);
        let command = Command::RegisterWorker {
            worker: w.into(),
            pool: Some(pool.into()),
            capacity,
            labels: Labels::new(),
        };
        apply(&mut log, &mut model, command)?;
    }
    for op in ops {
        let live = |log: &Log, tenant: usize, reservations: bool| -> Vec<PlacementId> {
            log.s
                .state()
                .placements
                .values()
                .filter(|p| p.tenant.as_str() == TENANTS[tenant])
                .filter(|p| !reservations || p.is_reservation())
                .map(|p| p.id().clone())
                .collect()
        };
        let command = match op.clone() {
            Op::Place { tenant, pool, cpu, mem, count, reserve } => {
                next += 1;
                let spec = spec(&format!("p{next}"), POOLS[pool], cpu, mem, count);
                let tenant = TENANTS[tenant].into();
                if reserve {
                    Command::Reserve { tenant, spec, ttl_ms: 3 * DAY, fence: None }
                } else {
                    Command::Place { tenant, spec, fence: None }
                }
            }
            Op::Release { tenant, nth } => {
                let ids = live(&log, tenant, false);
                let Some(id) = ids.get(nth % ids.len().max(1)).cloned() else { continue };
                Command::Release { tenant: TENANTS[tenant].into(), placement: id, fence: None }
            }
            Op::Confirm { tenant, nth } => {
                let ids = live(&log, tenant, true);
                let Some(id) = ids.get(nth % ids.len().max(1)).cloned() else { continue };
                Command::ConfirmReservation {
                    tenant: TENANTS[tenant].into(),
                    reservation: id,
                    fence: None,
                }
            }
            Op::Price { plan, shape, price, later_hours } => Command::SetPricePlan {
                plan: PLANS[plan].into(),
                prices: shaped(shape, price),
                effective_at: later_hours.map(|h| UnixMillis(log.now + h * HOUR)),
            },
            Op::Assign { tenant, plan } => Command::SetBillingPlan {
                tenant: TENANTS[tenant].into(),
                plan: plan.map(|p| PLANS[p].into()),
            },
            Op::Recreate { tenant } => {
                apply(
                    &mut log,
                    &mut model,
                    Command::DeleteTenant { tenant: TENANTS[tenant].into() },
                )?;
                Command::CreateTenant { tenant: TENANTS[tenant].into(), parent: None, weight: 1 }
            }
            Op::Advance { ms } => {
                log.advance(ms);
                Command::Tick
            }
        };
        apply(&mut log, &mut model, command)?;
    }
    // Every tenant's month so far, and its last ended month, match the model.
    model.integrate(log.now);
    let mut cluster = Decimal::ZERO;
    let mut model_cluster = Decimal::ZERO;
    for t in TENANTS {
        let tenant = TenantId::new(t);
        let (current, last) = log.statement(t);
        check(&current, &model.lines.get(&tenant).cloned().unwrap_or_default())?;
        if let Some(last) = &last {
            let expected =
                model.ended.get(&(tenant.clone(), last.month)).cloned().unwrap_or_default();
            check(last, &expected)?;
        }
        let newest =
            model.ended.range((tenant.clone(), 0)..=(tenant.clone(), u64::MAX)).next_back();
        prop_assert_eq!(last.as_ref().map(|l| l.month), newest.map(|((_, m), _)| *m));
        cluster += current.total;
        for (key, (q, p)) in model.lines.get(&tenant).into_iter().flatten() {
            model_cluster += model_amount(key.1, *q, *p);
        }
    }
    prop_assert_eq!(cluster, model_cluster, "tenants' totals sum to the cluster's");
    Ok(())
}

fn cases() -> ProptestConfig {
    let default = ProptestConfig::default();
    let cases = if std::env::var_os("PROPTEST_CASES").is_some() { default.cases } else { 96 };
    ProptestConfig { cases, failure_persistence: None, ..default }
}

proptest! {
    #![proptest_config(cases())]

    /// Every statement the core makes (each month that ended, the month so far, each deleted
    /// tenant's) equals the model's to the cent, line by line.
    #[test]
    fn metering_matches_an_independent_recomputation(ops in prop::collection::vec(op(), 1..80)) {
        run(&ops)?;
    }
}

/// A million metered intervals (the issue's drift run): one tenant's holdings change a
/// million times at irregular moments over eleven days, under a two-tier price with awkward
/// decimals. The meter's quantity equals the sum of rate × duration (u128, computed here), and
/// its amount is that exact quantity priced and rounded once: no drift, however many
/// intervals.
#[test]
fn a_million_intervals_meter_without_drift() {
    use berth::scheduler::meter::{Meter, PricePlan, PriceVersion, CPU_MILLI_MS_PER_HOUR};
    let start = month_start(month_of(UnixMillis(testing::T0)) + 1);
    let plan_id = PlanId::new("p");
    let p = prices(&[(Item::Cpu, vec![tier(Some(100), "0.035"), tier(None, "0.021")])], &[]);
    let plan = PricePlan { versions: vec![PriceVersion { since: start, prices: p }] };
    let mut meter = Meter::new(start);
    let pool = PoolId::new("x");
    let (mut now, mut held, mut expected) = (start.0, 0u64, 0u128);
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = |bound: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % bound
    };
    for _ in 0..1_000_000 {
        let dt = 1 + next(1_999);
        expected += u128::from(held) * u128::from(dt);
        now += dt;
        meter.advance(UnixMillis(now), Some((&plan_id, &plan)));
        let change = 1 + next(3_000);
        let add = held < change || next(2) == 0;
        meter.hold(&pool, false, Resources::new(change, 0), add);
        held = if add { held + change } else { held - change };
    }
    assert!(now < month_start(month_of(start) + 1).0, "the run stays in one month");
    let s = meter.statement();
    let quantity: u128 = s.lines.iter().map(|l| l.quantity).sum();
    assert_eq!(quantity, expected, "the meter's quantity is the exact integral");
    let bound = 100 * CPU_MILLI_MS_PER_HOUR;
    let (first, rest) = (expected.min(bound), expected.saturating_sub(bound));
    assert!(rest > 0, "both tiers are used");
    let exact = |q: u128, price: &str| {
        Decimal::from_i128_with_scale(q as i128, 0) * d(price) / Decimal::from(3_600_000_000u64)
    };
    let round = |x: Decimal| x.round_dp_with_strategy(2, RoundingStrategy::MidpointAwayFromZero);
    assert_eq!(s.total, round(exact(first, "0.035")) + round(exact(rest, "0.021")), "{s:#?}");
}
