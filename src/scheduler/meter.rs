//! Metering: what each tenant's own placements and reservations cost, exact to the cent.
//!
//! Usage is piecewise constant between applied entries, so what a tenant used of each item
//! (cpu and memory, placed or reserved, per pool) is an exact integer: cpu_millis × ms and
//! MiB × ms. A tenant's `Meter` integrates lazily: before its usage, its plan or any price
//! changes, the time since `integrated_at` at the old rates is added. Quantities count per UTC
//! calendar month and per price (plan, version, tier). Money is made from them only in a
//! `Statement`: each line's amount is quantity × price per hour ÷ units per hour, rounded once
//! to the cent (half away from zero) in exact integer arithmetic, and a statement's total is
//! the sum of its lines. Nothing is rounded twice; no float is involved.
//!
//! Prices are named plans (`SetPricePlan`). A plan is a list of versions, each taking effect
//! at a log time (never before the entry that sets it), so a price change never rewrites the
//! past. A version prices items per pool (or for every other pool) in tiers over the month's
//! quantity: "the first 1,000 cpu-hours at 0.04, the rest at 0.03". A tenant pays by its plan
//! (`SetBillingPlan`), else by the plan named `default`, else nothing (it is still metered).
//! A tenant is billed for what it holds itself; its children have meters of their own.
//!
//! When a month ends, its statement is final: it is emitted as `Event::Metered` and kept as
//! the meter's `last_month` until the next month ends. A deleted tenant's month so far is
//! emitted the same way.

use std::collections::BTreeMap;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::budget::budget_deadline;
use super::command::{Rejection, Response};
use super::events::Event;
use super::ids::{validate_object_id, PlacementId, PlanId, PoolId, TenantId, UnixMillis};
use super::index::Deadline;
use super::invoice::{invoice_deadline, INVOICE_MONTHS_KEPT};
use super::resources::Resources;
use super::state::State;
use super::state::{Placement, Tenant};
use super::windows::{day_of, month_of, month_start, DAY_MS};
use super::Scheduler;

/// Most price plans.
pub const PRICE_PLANS_MAX: usize = 1_000;
/// Most versions a plan keeps: the one in effect and those set to take effect later.
pub const PLAN_VERSIONS_MAX: usize = 64;
/// Most pools one price version names (others take `Prices::other_pools`).
pub const PLAN_POOLS_MAX: usize = 1_000;
/// Most tiers of one item's price.
pub const TIERS_MAX: usize = 8;
/// Highest price per hour of one item: 1,000,000 (in the currency's units).
pub const PRICE_PER_HOUR_MAX: u64 = 1_000_000;
/// Most decimal places of a price (a millionth of a currency unit per hour).
pub const PRICE_SCALE_MAX: u32 = 6;
/// Highest tier bound, in item-hours (cpu-hours or GiB-hours).
pub const TIER_HOURS_MAX: u64 = 1_000_000_000_000;
/// The plan of tenants that have none of their own.
pub const DEFAULT_PLAN: &str = "default";
/// cpu_millis × ms in one cpu-hour.
pub const CPU_MILLI_MS_PER_HOUR: u128 = 3_600_000_000;
/// MiB × ms in one GiB-hour.
pub const MIB_MS_PER_GIB_HOUR: u128 = 1_024 * 3_600_000;

/// What is metered and priced: cpu and memory held by placements, and by reservations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Item {
    Cpu,
    Memory,
    ReservedCpu,
    ReservedMemory,
}

impl Item {
    pub const ALL: [Item; 4] = [Item::Cpu, Item::Memory, Item::ReservedCpu, Item::ReservedMemory];

    pub fn name(self) -> &'static str {
        match self {
            Item::Cpu => "cpu",
            Item::Memory => "memory",
            Item::ReservedCpu => "reserved_cpu",
            Item::ReservedMemory => "reserved_memory",
        }
    }

    pub fn from_name(name: &str) -> Option<Item> {
        Item::ALL.into_iter().find(|i| i.name() == name)
    }

    /// The unit its quantity and prices are stated in.
    pub fn unit(self) -> &'static str {
        match self {
            Item::Cpu | Item::ReservedCpu => "cpu-hour",
            Item::Memory | Item::ReservedMemory => "GiB-hour",
        }
    }

    /// Metered units (cpu_millis × ms or MiB × ms) in one priced unit.
    pub fn units_per_hour(self) -> u128 {
        match self {
            Item::Cpu | Item::ReservedCpu => CPU_MILLI_MS_PER_HOUR,
            Item::Memory | Item::ReservedMemory => MIB_MS_PER_GIB_HOUR,
        }
    }

    /// The placed item a reservation's item is priced as when it has no price of its own.
    fn placed(self) -> Item {
        match self {
            Item::ReservedCpu => Item::Cpu,
            Item::ReservedMemory => Item::Memory,
            placed => placed,
        }
    }

    /// The items `held` amounts to, per ms.
    fn of(held: Resources, reserved: bool) -> [(Item, u64); 2] {
        if reserved {
            [(Item::ReservedCpu, held.cpu_millis), (Item::ReservedMemory, held.memory_mib)]
        } else {
            [(Item::Cpu, held.cpu_millis), (Item::Memory, held.memory_mib)]
        }
    }
}

/// One step of an item's price: `per_hour` for the month's quantity up to `up_to_hours` (from
/// the previous tier's bound); the last tier has no bound.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tier {
    pub up_to_hours: Option<u64>,
    pub per_hour: Decimal,
}

/// The prices of one pool: tiers per item. An item not listed is free, except that a
/// reservation's item not listed costs what the same placed item does.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolPrices {
    pub items: BTreeMap<Item, Vec<Tier>>,
}

impl PoolPrices {
    fn tiers(&self, item: Item) -> Option<&[Tier]> {
        self.items.get(&item).or_else(|| self.items.get(&item.placed())).map(Vec::as_slice)
    }

    fn validate(&self, pool: &str) -> Result<(), Rejection> {
        for (item, tiers) in &self.items {
            let field = format!("{pool}/{}", item.name());
            if !(1..=TIERS_MAX).contains(&tiers.len()) {
                return Err(Rejection::invalid(&field, format!("must have 1..={TIERS_MAX} tiers")));
            }
            let mut below = 0;
            for (k, tier) in tiers.iter().enumerate() {
                let last = k + 1 == tiers.len();
                match (tier.up_to_hours, last) {
                    (None, true) => {}
                    (Some(h), false) if h > below && h <= TIER_HOURS_MAX => below = h,
                    (_, true) => {
                        return Err(Rejection::invalid(&field, "the last tier has no bound"));
                    }
                    (_, false) => {
                        return Err(Rejection::invalid(
                            &field,
                            format!("tier bounds must rise, each 1..={TIER_HOURS_MAX} hours"),
                        ));
                    }
                }
                validate_price(&field, tier.per_hour)?;
            }
        }
        Ok(())
    }
}

fn validate_price(field: &str, price: Decimal) -> Result<(), Rejection> {
    let ok = !price.is_sign_negative()
        && price <= Decimal::from(PRICE_PER_HOUR_MAX)
        && price.normalize().scale() <= PRICE_SCALE_MAX;
    if ok || price.is_zero() {
        Ok(())
    } else {
        Err(Rejection::invalid(
            field,
            format!(
                "a price per hour must be 0..={PRICE_PER_HOUR_MAX} with at most \
                 {PRICE_SCALE_MAX} decimals"
            ),
        ))
    }
}

/// What one version of a plan charges: per named pool, and for every other pool.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Prices {
    pub pools: BTreeMap<PoolId, PoolPrices>,
    pub other_pools: PoolPrices,
}

impl Prices {
    fn of(&self, pool: &PoolId) -> &PoolPrices {
        self.pools.get(pool).unwrap_or(&self.other_pools)
    }

    pub fn validate(&self) -> Result<(), Rejection> {
        if self.pools.len() > PLAN_POOLS_MAX {
            return Err(Rejection::invalid("pools", format!("at most {PLAN_POOLS_MAX} pools")));
        }
        for (pool, prices) in &self.pools {
            validate_object_id("pool", pool.as_str())?;
            prices.validate(pool.as_str())?;
        }
        self.other_pools.validate("other pools")
    }
}

/// Prices in effect from `since` until the next version's `since`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PriceVersion {
    pub since: UnixMillis,
    pub prices: Prices,
}

/// A named plan: its versions in order of `since`. Versions that no meter can need (a later
/// one was in effect when the plan last changed) are forgotten.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PricePlan {
    pub versions: Vec<PriceVersion>,
}

impl PricePlan {
    /// The version in effect at `at`, if any has taken effect.
    pub fn at(&self, at: UnixMillis) -> Option<&PriceVersion> {
        self.versions.iter().rev().find(|v| v.since <= at)
    }

    fn next_change_after(&self, at: UnixMillis) -> Option<UnixMillis> {
        self.versions.iter().map(|v| v.since).find(|since| *since > at)
    }

    /// This plan with `prices` from `since` (replacing a version set for that same moment),
    /// keeping only the version in effect at `now` and later ones.
    pub fn with(&self, since: UnixMillis, prices: Prices, now: UnixMillis) -> PricePlan {
        let mut versions: Vec<PriceVersion> =
            self.versions.iter().filter(|v| v.since != since).cloned().collect();
        let at = versions.partition_point(|v| v.since < since);
        versions.insert(at, PriceVersion { since, prices });
        let in_effect = versions.iter().rposition(|v| v.since <= now).unwrap_or(0);
        versions.drain(..in_effect);
        PricePlan { versions }
    }
}

/// Where a metered quantity is priced: a plan's version and tier.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PriceRef {
    pub plan: PlanId,
    pub since: UnixMillis,
    pub tier: u8,
}

/// One line of a month's meter: a pool's item at one price (`None`: unpriced).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct LineKey {
    pub pool: PoolId,
    pub item: Item,
    pub price: Option<PriceRef>,
}

/// A line's quantity (cpu_millis × ms or MiB × ms) and its price per item-hour.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Line {
    pub quantity: u128,
    pub per_hour: Decimal,
}

/// A tenant's meter: this month's quantities, brought up to `integrated_at`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meter {
    /// Months since January 1970 that `lines` count.
    pub month: u64,
    pub integrated_at: UnixMillis,
    /// What the tenant's own placements (`false`) and reservations (`true`) hold, per pool.
    pub rates: BTreeMap<(PoolId, bool), Resources>,
    pub lines: BTreeMap<LineKey, Line>,
    /// This month's quantity per pool and item, over every price: where its tiers stand.
    pub used: BTreeMap<(PoolId, Item), u128>,
    /// The last month that ended with something metered.
    pub last_month: Option<Statement>,
    /// The UTC day (since the epoch) `integrated_at` is in, and the month's total at its
    /// start: today's spend is the total less this (a daily budget, `budget.rs`).
    pub day: u64,
    pub day_start_total: Decimal,
}

/// A month's lines with their amounts (`Meter::statement`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Statement {
    pub month: u64,
    /// The month's start, and the moment it is metered up to (its end, once it ended).
    pub from: UnixMillis,
    pub to: UnixMillis,
    pub lines: Vec<StatementLine>,
    /// The sum of the lines' amounts.
    pub total: Decimal,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatementLine {
    pub pool: PoolId,
    pub item: Item,
    pub price: Option<PriceRef>,
    /// cpu_millis × ms or MiB × ms (`Item::units_per_hour` of them make one item-hour).
    pub quantity: u128,
    pub per_hour: Decimal,
    pub amount: Decimal,
}

/// What a tenant's month will cost at its end, exactly, if what it holds now is held until
/// then (`held`), and if its queued placements were admitted now as well (`with_queued`): the
/// meter run ahead through the tiers and the price versions already set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Projection {
    pub month_end: UnixMillis,
    pub held: Decimal,
    pub with_queued: Decimal,
}

/// `quantity` of `item` at `per_hour`, rounded once to the cent (half away from zero). Exact:
/// integer arithmetic on the price's mantissa. Within the bounds (a month of the largest
/// cluster at `PRICE_PER_HOUR_MAX` with `PRICE_SCALE_MAX` decimals) nothing saturates.
pub fn amount(item: Item, quantity: u128, per_hour: Decimal) -> Decimal {
    let mantissa = u128::try_from(per_hour.mantissa()).unwrap_or(0);
    let numerator = quantity.saturating_mul(mantissa).saturating_mul(100);
    let denominator = item.units_per_hour().saturating_mul(10u128.pow(per_hour.scale()));
    let cents = divide_rounded(numerator, denominator);
    let cents = i128::try_from(cents).unwrap_or(i128::MAX);
    Decimal::try_from_i128_with_scale(cents, 2).unwrap_or(Decimal::MAX)
}

/// `n / d` rounded half up: the one rounding of money and quantities made from exact integers.
fn divide_rounded(n: u128, d: u128) -> u128 {
    n / d + u128::from(n % d * 2 >= d)
}

/// A month (since January 1970) as "YYYY-MM".
pub fn month_label(month: u64) -> String {
    format!("{:04}-{:02}", 1970 + month / 12, month % 12 + 1)
}

/// `quantity` of `item` in item-hours, rounded to a millionth (for people; amounts are made
/// from the exact quantity).
pub fn hours(item: Item, quantity: u128) -> Decimal {
    let units = item.units_per_hour();
    let micro = quantity.saturating_mul(1_000_000);
    let rounded = divide_rounded(micro, units);
    Decimal::try_from_i128_with_scale(i128::try_from(rounded).unwrap_or(i128::MAX), 6)
        .unwrap_or(Decimal::MAX)
}

/// The plan a meter is priced by, and its id.
pub type PlanIn<'a> = Option<(&'a PlanId, &'a PricePlan)>;

impl Meter {
    pub fn new(now: UnixMillis) -> Meter {
        Meter { month: month_of(now), integrated_at: now, day: day_of(now), ..Meter::default() }
    }

    /// Starts or stops holding `held` (a placement's or reservation's total) in `pool`. Bring
    /// the meter to now first (`advance`).
    pub fn hold(&mut self, pool: &PoolId, reserved: bool, held: Resources, add: bool) {
        let key = (pool.clone(), reserved);
        let now = self.rates.get(&key).copied().unwrap_or_default();
        let next = if add { now.checked_add(held) } else { now.checked_sub(held) };
        let next = next.expect("invariant: a meter's rates are what its tenant holds");
        if next.is_zero() {
            self.rates.remove(&key);
        } else {
            self.rates.insert(key, next);
        }
    }

    /// Brings the meter to `now` under `plan`; returns the statements of the months that
    /// ended on the way (each final).
    pub fn advance(&mut self, now: UnixMillis, plan: PlanIn<'_>) -> Vec<Statement> {
        let mut ended = Vec::new();
        let today = UnixMillis(day_of(now).saturating_mul(DAY_MS));
        while self.integrated_at < now {
            let month_end = month_start(self.month + 1);
            if self.rates.is_empty() {
                // Nothing held: no quantity to add, only months to end.
                if month_of(now) != self.month {
                    ended.extend(self.end_month(month_end));
                    self.month = month_of(now);
                }
                self.integrated_at = now;
                break;
            }
            let change = plan.and_then(|(_, p)| p.next_change_after(self.integrated_at));
            let mut end = change.map_or(now, |c| c.min(now)).min(month_end);
            if self.integrated_at < today {
                // Stop at today's start, to note the month's total there.
                end = end.min(today);
            }
            let version = plan.and_then(|(id, p)| p.at(self.integrated_at).map(|v| (id, v)));
            let ms = u128::from(end.0 - self.integrated_at.0);
            let rates: Vec<((PoolId, bool), Resources)> =
                self.rates.iter().map(|(k, r)| (k.clone(), *r)).collect();
            for ((pool, reserved), held) in rates {
                for (item, per_ms) in Item::of(held, reserved) {
                    let quantity = u128::from(per_ms) * ms;
                    if quantity > 0 {
                        self.add(&pool, item, quantity, version);
                    }
                }
            }
            self.integrated_at = end;
            if end == month_end {
                ended.extend(self.end_month(month_end));
                self.month += 1;
            }
            if end == today {
                self.day = day_of(today);
                self.day_start_total = self.statement().total;
            }
        }
        if self.day != day_of(now) {
            // Nothing was held across midnight: the total then is the total now.
            self.day = day_of(now);
            self.day_start_total = self.statement().total;
        }
        ended
    }

    /// The first moment, from `integrated_at` to the month's end, at which this month's total
    /// reaches `threshold` while what is held now stays held; `None`: not this month. Exact:
    /// a binary search over milliseconds of the rounded total, which never falls as time
    /// passes, within each span of one price version.
    pub fn reaches(&self, plan: PlanIn<'_>, threshold: Decimal) -> Option<UnixMillis> {
        let month_end = month_start(self.month + 1);
        let mut meter = self.clone();
        if meter.statement().total >= threshold {
            return Some(meter.integrated_at);
        }
        while meter.integrated_at < month_end {
            let start = meter.integrated_at;
            let change = plan.and_then(|(_, p)| p.next_change_after(start));
            let end = change.map_or(month_end, |c| c.min(month_end));
            let version = plan.and_then(|(id, p)| p.at(start).map(|v| (id, v)));
            let span = end.0 - start.0;
            if meter.total_after(span, version) >= threshold {
                // total_after(lo) < threshold <= total_after(hi)
                let (mut lo, mut hi) = (0, span);
                while hi - lo > 1 {
                    let mid = lo + (hi - lo) / 2;
                    if meter.total_after(mid, version) >= threshold {
                        hi = mid;
                    } else {
                        lo = mid;
                    }
                }
                return Some(start.plus_ms(hi));
            }
            if end == month_end {
                break;
            }
            meter.advance(end, plan);
        }
        None
    }

    /// Adds `quantity` of `item` in `pool`, split over the tiers of the price in effect.
    fn add(
        &mut self,
        pool: &PoolId,
        item: Item,
        quantity: u128,
        version: Option<(&PlanId, &PriceVersion)>,
    ) {
        let pieces = self.pieces(pool, item, quantity, version);
        let used = self.used.entry((pool.clone(), item)).or_insert(0);
        *used = used.saturating_add(quantity);
        for (key, take, per_hour) in pieces {
            self.line(key, take, per_hour);
        }
    }

    /// The lines `quantity` more of `item` in `pool` adds to, with how much to each: the
    /// tiers of the price in effect from where the month's quantity stands.
    fn pieces(
        &self,
        pool: &PoolId,
        item: Item,
        quantity: u128,
        version: Option<(&PlanId, &PriceVersion)>,
    ) -> Vec<(LineKey, u128, Decimal)> {
        let mut at = self.used.get(&(pool.clone(), item)).copied().unwrap_or(0);
        let tiers = version.and_then(|(plan, v)| {
            v.prices.of(pool).tiers(item).map(|tiers| (plan, v.since, tiers))
        });
        let Some((plan, since, tiers)) = tiers else {
            let key = LineKey { pool: pool.clone(), item, price: None };
            return vec![(key, quantity, Decimal::ZERO)];
        };
        let mut pieces = Vec::new();
        let mut rest = quantity;
        for (tier, t) in tiers.iter().enumerate() {
            let bound = t.up_to_hours.map_or(u128::MAX, |h| u128::from(h) * item.units_per_hour());
            if rest == 0 || at >= bound {
                continue;
            }
            let take = rest.min(bound - at);
            let tier = u8::try_from(tier).unwrap_or(u8::MAX);
            let price = Some(PriceRef { plan: plan.clone(), since, tier });
            pieces.push((LineKey { pool: pool.clone(), item, price }, take, t.per_hour));
            at += take;
            rest -= take;
        }
        pieces
    }

    /// The month's total if what is held now were held `ms` longer under `version`, without
    /// changing anything. Only for a span with no price change and no month end in it.
    pub fn total_after(&self, ms: u64, version: Option<(&PlanId, &PriceVersion)>) -> Decimal {
        let mut more: BTreeMap<&LineKey, u128> = BTreeMap::new();
        let mut new_lines: BTreeMap<LineKey, (u128, Decimal)> = BTreeMap::new();
        for ((pool, reserved), held) in &self.rates {
            for (item, per_ms) in Item::of(*held, *reserved) {
                let quantity = u128::from(per_ms) * u128::from(ms);
                if quantity == 0 {
                    continue;
                }
                for (key, take, per_hour) in self.pieces(pool, item, quantity, version) {
                    match self.lines.get_key_value(&key) {
                        Some((existing, _)) => *more.entry(existing).or_insert(0) += take,
                        None => new_lines.entry(key).or_insert((0, per_hour)).0 += take,
                    }
                }
            }
        }
        let old = self.lines.iter().map(|(k, l)| {
            let quantity = l.quantity.saturating_add(more.get(k).copied().unwrap_or(0));
            amount(k.item, quantity, l.per_hour)
        });
        let new =
            new_lines.iter().map(|(k, (quantity, per_hour))| amount(k.item, *quantity, *per_hour));
        old.chain(new).fold(Decimal::ZERO, Decimal::saturating_add)
    }

    fn line(&mut self, key: LineKey, quantity: u128, per_hour: Decimal) {
        let line = self.lines.entry(key).or_insert(Line { quantity: 0, per_hour });
        line.quantity = line.quantity.saturating_add(quantity);
    }

    /// Ends the month: its statement (if anything was metered) becomes `last_month`.
    fn end_month(&mut self, month_end: UnixMillis) -> Option<Statement> {
        self.used.clear();
        if self.lines.is_empty() {
            return None;
        }
        let statement = self.statement_to(month_end);
        self.lines.clear();
        self.last_month = Some(statement.clone());
        Some(statement)
    }

    /// The statement of the month so far, up to `integrated_at`.
    pub fn statement(&self) -> Statement {
        self.statement_to(self.integrated_at)
    }

    /// Ends what is metered so far (its tenant is gone): the month's statement, if anything
    /// was metered.
    pub fn close(&mut self) -> Option<Statement> {
        let statement = (!self.lines.is_empty()).then(|| self.statement());
        self.lines.clear();
        self.used.clear();
        statement
    }

    fn statement_to(&self, to: UnixMillis) -> Statement {
        let lines: Vec<StatementLine> = self
            .lines
            .iter()
            .map(|(k, l)| StatementLine {
                pool: k.pool.clone(),
                item: k.item,
                price: k.price.clone(),
                quantity: l.quantity,
                per_hour: l.per_hour,
                amount: amount(k.item, l.quantity, l.per_hour),
            })
            .collect();
        let total = lines.iter().fold(Decimal::ZERO, |sum, l| sum.saturating_add(l.amount));
        Statement { month: self.month, from: month_start(self.month), to, lines, total }
    }
}

/// When `t`'s meter next needs a look, brought forward by `Deadline::Meter`: its budget's
/// (`budget::budget_deadline`) or its invoices' (`invoice::invoice_deadline`), whichever is
/// first. A function of the state alone, so `Indexes::build` makes the same.
pub fn meter_deadline(state: &State, t: &Tenant) -> Option<UnixMillis> {
    let budget = budget_deadline(state, t);
    let invoice = invoice_deadline(t);
    match (budget, invoice) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

impl Scheduler {
    /// Puts `tenant`'s `Deadline::Meter` where its state says (`meter_deadline`). Call after
    /// anything it depends on changes: what it holds, its month, budget, plan or invoices.
    pub(super) fn refresh_meter_deadline(&mut self, tenant: &TenantId) {
        let at = self.state.tenants.get(tenant).and_then(|t| meter_deadline(&self.state, t));
        let was = self.ix.meter_deadlines.get(tenant).copied();
        if at == was {
            return;
        }
        if let Some(was) = was {
            self.ix.meter_deadlines.remove(tenant);
            self.ix.deadlines.remove(&(was, Deadline::Meter(tenant.clone())));
        }
        if let Some(at) = at {
            self.ix.meter_deadlines.insert(tenant.clone(), at);
            self.ix.deadlines.insert((at, Deadline::Meter(tenant.clone())));
        }
    }

    /// The plan `tenant` pays by: its own, else `default` if there is one.
    pub(super) fn plan_of<'a>(
        plans: &'a BTreeMap<PlanId, PricePlan>,
        tenant: &Tenant,
    ) -> PlanIn<'a> {
        let id = tenant.billing_plan.clone().unwrap_or_else(|| PlanId::new(DEFAULT_PLAN));
        plans.get_key_value(&id)
    }

    /// Brings `tenant`'s meter to now under its plan, reporting months that ended. Call before
    /// anything it holds changes.
    pub(super) fn meter_tenant(&mut self, tenant: &TenantId) {
        let now = self.state.now;
        let plans = &self.state.price_plans;
        let t = self.state.tenants.get_mut(tenant).expect("invariant: metered tenant exists");
        let plan = Self::plan_of(plans, t);
        // A new month may close last month's invoice: keep its statement at hand.
        let new_month = month_of(now) != t.meter.month;
        let previous = if new_month { t.meter.last_month.clone() } else { None };
        let ended = t.meter.advance(now, plan);
        let budgeted = t.budget.is_some();
        let totals: Vec<(u64, Decimal)> = ended.iter().map(|s| (s.month, s.total)).collect();
        let statements: Vec<Statement> = if new_month {
            let kept = month_of(now).saturating_sub(INVOICE_MONTHS_KEPT);
            previous.into_iter().chain(ended.iter().cloned()).filter(|s| s.month >= kept).collect()
        } else {
            Vec::new()
        };
        for statement in ended {
            self.emit(Event::Metered { tenant: tenant.clone(), statement });
        }
        if new_month {
            self.close_overdue_invoices(tenant, &statements);
        }
        // Bringing a meter forward moves no crossing (the spend at a moment does not depend on
        // when it was last integrated): only a raised alert or a new month does.
        let alerted = budgeted && self.budget_alerts(tenant, &totals);
        if alerted || new_month {
            self.refresh_meter_deadline(tenant);
        }
    }

    /// Starts or stops metering what `placement` holds (call `meter_tenant` first).
    pub(super) fn meter_hold(&mut self, placement: &Placement, add: bool) {
        let held = placement
            .spec
            .resources
            .checked_mul(u64::from(placement.spec.count))
            .expect("invariant: a placement's total was checked");
        let t = self.state.tenants.get_mut(&placement.tenant);
        let t = t.expect("invariant: a placement's tenant exists");
        t.meter.hold(&placement.pool, placement.expires_at.is_some(), held, add);
        self.refresh_meter_deadline(&placement.tenant.clone());
    }

    /// `SetPricePlan`. Every meter is brought to now first, under the prices it had, so no
    /// meter needs a version that ended before now (those are forgotten).
    pub(super) fn set_price_plan(
        &mut self,
        plan: PlanId,
        prices: Prices,
        effective_at: Option<UnixMillis>,
    ) -> Result<Response, Rejection> {
        let now = self.state.now;
        let since = effective_at.map_or(now, |at| at.max(now));
        let existing = self.state.price_plans.get(&plan);
        if existing.is_none() && self.state.price_plans.len() >= PRICE_PLANS_MAX {
            let max = PRICE_PLANS_MAX as u64;
            return Err(Rejection::LimitReached { what: "price plans".into(), max });
        }
        let next = existing.cloned().unwrap_or_default().with(since, prices, now);
        if next.versions.len() > PLAN_VERSIONS_MAX {
            let max = PLAN_VERSIONS_MAX as u64;
            return Err(Rejection::LimitReached { what: "versions of a price plan".into(), max });
        }
        let tenants: Vec<TenantId> = self.state.tenants.keys().cloned().collect();
        for tenant in &tenants {
            self.meter_tenant(tenant);
        }
        self.state.price_plans.insert(plan, next);
        for tenant in &tenants {
            self.refresh_meter_deadline(tenant);
        }
        Ok(Response::PricePlanSet { since })
    }

    /// `SetBillingPlan`: the tenant's meter so far is priced as it was; the plan applies from
    /// now.
    pub(super) fn set_billing_plan(
        &mut self,
        tenant: &TenantId,
        plan: Option<PlanId>,
    ) -> Result<Response, Rejection> {
        self.tenant(tenant)?;
        if let Some(plan) = &plan {
            if !self.state.price_plans.contains_key(plan) {
                return Err(Rejection::PlanNotFound { plan: plan.clone() });
            }
        }
        self.meter_tenant(tenant);
        self.tenant_mut(tenant)?.billing_plan = plan;
        self.refresh_meter_deadline(tenant);
        Ok(Response::BillingPlanSet)
    }

    /// The plan `tenant` pays by now, if any applies.
    pub fn billing_plan_of(&self, tenant: &TenantId) -> Option<&PlanId> {
        let t = self.state.tenants.get(tenant)?;
        Self::plan_of(&self.state.price_plans, t).map(|(id, _)| id)
    }

    /// Where `tenant`'s month is heading (`Projection`), without changing anything.
    pub fn projection(&self, tenant: &TenantId) -> Option<Projection> {
        let t = self.state.tenants.get(tenant)?;
        let plan = Self::plan_of(&self.state.price_plans, t);
        let mut meter = (*t.meter).clone();
        meter.advance(self.state.now, plan);
        let month_end = month_start(meter.month + 1);
        let at_end = |mut m: Meter| {
            let ended = m.advance(month_end, plan);
            ended.first().map_or(Decimal::ZERO, |s| s.total)
        };
        let held = at_end(meter.clone());
        let first = (tenant.clone(), PlacementId::new(""));
        let queued = self.state.queue.range(first..).take_while(|((t, _), _)| t == tenant);
        for (_, q) in queued {
            let total = q.spec.resources.checked_mul(u64::from(q.spec.count)).unwrap_or_default();
            let rate = meter.rates.entry((q.pool.clone(), false)).or_default();
            *rate = Resources::new(
                rate.cpu_millis.saturating_add(total.cpu_millis),
                rate.memory_mib.saturating_add(total.memory_mib),
            );
        }
        Some(Projection { month_end, held, with_queued: at_end(meter) })
    }

    /// `tenant`'s statement for this month up to now, and its last ended month's, without
    /// changing anything.
    pub fn statements(&self, tenant: &TenantId) -> Option<(Statement, Option<Statement>)> {
        let t = self.state.tenants.get(tenant)?;
        let mut meter = t.meter.clone();
        let ended = meter.advance(self.state.now, Self::plan_of(&self.state.price_plans, t));
        let last = ended.into_iter().last().or(meter.last_month.clone());
        Some((meter.statement(), last))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn d(s: &str) -> Decimal {
        Decimal::from_str(s).expect("test decimal")
    }

    /// One cpu-hour at 0.035 is 0.04 (half away from zero); a third of a cent rounds down.
    #[test]
    fn amounts_round_once_to_the_cent() {
        assert_eq!(amount(Item::Cpu, CPU_MILLI_MS_PER_HOUR, d("0.035")), d("0.04"));
        assert_eq!(amount(Item::Cpu, CPU_MILLI_MS_PER_HOUR / 3, d("0.01")), d("0.00"));
        assert_eq!(amount(Item::Memory, MIB_MS_PER_GIB_HOUR * 10, d("1.5")), d("15.00"));
        assert_eq!(amount(Item::Cpu, 0, d("1")), d("0.00"));
    }

    /// The largest month the bounds allow, at the highest price, saturates nothing.
    #[test]
    fn the_largest_amount_is_exact() {
        let cluster_mib = u128::from(crate::scheduler::POOL_MEMORY_MIB_MAX);
        let month_ms = 31 * 86_400_000u128;
        let price = Decimal::from(PRICE_PER_HOUR_MAX) - d("0.000001");
        let quantity = cluster_mib * month_ms;
        let got = amount(Item::Memory, quantity, price);
        // quantity / units_per_hour is a whole number of GiB-hours here.
        let hours = Decimal::from_i128_with_scale((quantity / MIB_MS_PER_GIB_HOUR) as i128, 0);
        assert_eq!(quantity % MIB_MS_PER_GIB_HOUR, 0);
        assert_eq!(got, (hours * price).round_dp(2));
    }

    /// Tiers split a month's quantity at their bounds, and a new month starts from the first.
    #[test]
    fn tiers_split_the_month_and_reset() {
        let plan_id = PlanId::new("p");
        let tiers = vec![
            Tier { up_to_hours: Some(1), per_hour: d("2") },
            Tier { up_to_hours: None, per_hour: d("1") },
        ];
        let mut prices = Prices::default();
        prices.other_pools.items.insert(Item::Cpu, tiers);
        let plan = PricePlan { versions: vec![PriceVersion { since: UnixMillis(0), prices }] };
        let start = month_start(100);
        let mut m = Meter::new(start);
        m.hold(&PoolId::new("x"), false, Resources { cpu_millis: 1_000, memory_mib: 0 }, true);
        // 90 minutes of one cpu: 1 h at 2, 0.5 h at 1.
        m.advance(start.plus_ms(90 * 60_000), Some((&plan_id, &plan)));
        let s = m.statement();
        assert_eq!(s.total, d("2.50"));
        assert_eq!(s.lines.len(), 2);
        // Into the next month: the old one ends with its full quantity, the new one starts
        // at the first tier again.
        let next = month_start(101);
        let ended = m.advance(next.plus_ms(30 * 60_000), Some((&plan_id, &plan)));
        assert_eq!(ended.len(), 1);
        assert_eq!(ended[0].to, next);
        assert_eq!(m.statement().total, d("1.00"), "half an hour at the first tier");
        assert_eq!(m.last_month, Some(ended[0].clone()));
    }
}
