//! Budgets: what a tenant may spend per UTC calendar month on its own bill (its meter's
//! statement, `meter.rs`), with alerts and an optional hard stop.
//!
//! - **Alerts** at percentages of the budget (default 50, 80 and 100) are emitted once each
//!   per month, as `QuotaEvent::BudgetAlert`, on the entry that first sees the month's total at
//!   or above them. A tenant's spend grows while nothing is applied, so each budgeted tenant
//!   that holds something has a deadline: the exact millisecond its total reaches the next
//!   alert (`Meter::reaches`), or its month's end, when the alerts re-arm. The leader ticks
//!   then, so an idle tenant's alert is not late. Setting a budget re-arms its alerts: those
//!   the month's spend already passed are emitted on that entry.
//! - **Hard stop:** at or above 100 %, new work of the tenant is refused (`QUOTA_EXCEEDED`,
//!   `limit_kind` `budget`) and its queued work waits, until the month ends or the budget is
//!   raised. Work already running is never stopped, so the month can end above the budget by
//!   what was running when it was spent.
//!
//! A budget is the tenant's own: its children have bills, and budgets, of their own.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::command::{Rejection, Response};
use super::events::Event;
use super::ids::{TenantId, UnixMillis};
use super::meter::Meter;
use super::quota::QuotaEvent;
use super::state::{State, Tenant};
use super::windows::{day_of, limited_in_time, month_of, month_start, DAY_MS};
use super::Scheduler;

/// Highest monthly budget, in currency units.
pub const BUDGET_MAX: u64 = 1_000_000_000_000;
/// Most decimal places of a budget (cents).
pub const BUDGET_SCALE_MAX: u32 = 2;
/// Most alert thresholds of one budget.
pub const BUDGET_ALERTS_MAX: usize = 8;
/// Highest alert threshold, in percent of the budget.
pub const BUDGET_ALERT_PERCENT_MAX: u16 = 1_000;
/// The thresholds of a budget set without any.
pub const BUDGET_ALERTS_DEFAULT: [u16; 3] = [50, 80, 100];

/// Which of a budget's limits a refusal is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum BudgetPeriod {
    Day,
    Month,
}

impl BudgetPeriod {
    /// The window it is, among the quota windows.
    pub fn window_name(self) -> &'static str {
        match self {
            BudgetPeriod::Day => "cost_per_day",
            BudgetPeriod::Month => "cost_per_month",
        }
    }
}

/// A tenant's monthly budget.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Budget {
    pub per_month: Decimal,
    /// A cost window: at most this much per UTC day, always a hard limit (new work is refused
    /// until the next midnight).
    pub per_day: Option<Decimal>,
    /// Percentages of `per_month` that raise an alert, rising (may be empty).
    pub alerts_percent: Vec<u16>,
    /// Refuse new work once the month's spend reaches `per_month`.
    pub hard_stop: bool,
}

impl Budget {
    /// Checks every field against its bound (state-free).
    pub fn validate(&self) -> Result<(), Rejection> {
        let amount = |field: &str, p: Decimal| {
            if p <= Decimal::ZERO
                || p > Decimal::from(BUDGET_MAX)
                || p.normalize().scale() > BUDGET_SCALE_MAX
            {
                return Err(Rejection::invalid(
                    field,
                    format!(
                        "must be above 0, at most {BUDGET_MAX}, with at most {BUDGET_SCALE_MAX} \
                         decimals"
                    ),
                ));
            }
            Ok(())
        };
        amount("per_month", self.per_month)?;
        if let Some(per_day) = self.per_day {
            amount("per_day", per_day)?;
        }
        if self.alerts_percent.len() > BUDGET_ALERTS_MAX {
            let message = format!("at most {BUDGET_ALERTS_MAX} thresholds");
            return Err(Rejection::invalid("alerts_percent", message));
        }
        let in_range = |p: &u16| (1..=BUDGET_ALERT_PERCENT_MAX).contains(p);
        let rising = self.alerts_percent.windows(2).all(|w| w[0] < w[1]);
        if !self.alerts_percent.iter().all(in_range) || !rising {
            return Err(Rejection::invalid(
                "alerts_percent",
                format!("thresholds must rise, each 1..={BUDGET_ALERT_PERCENT_MAX} percent"),
            ));
        }
        Ok(())
    }

    /// The spend at which the `k`th alert fires.
    pub fn threshold(&self, k: usize) -> Option<Decimal> {
        let percent = *self.alerts_percent.get(k)?;
        Some(self.per_month * Decimal::new(i64::from(percent), 2))
    }
}

/// A tenant's budget and how many of its alerts (a prefix: spend never falls within a month)
/// fired in `month`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BudgetState {
    pub budget: Budget,
    pub month: u64,
    pub fired: usize,
}

impl BudgetState {
    fn fired_in(&self, month: u64) -> usize {
        if self.month == month {
            self.fired
        } else {
            0
        }
    }

    /// The alert percentages that fired in `month`.
    pub fn fired_percents(&self, month: u64) -> &[u16] {
        &self.budget.alerts_percent[..self.fired_in(month)]
    }
}

/// A tenant's budget as of now (`Scheduler::budget_status`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BudgetStatus {
    pub budget: Budget,
    /// This month's spend so far.
    pub spent: Decimal,
    /// Today's spend so far (UTC day).
    pub spent_today: Decimal,
    /// The alert percentages that fired this month.
    pub fired_percents: Vec<u16>,
    /// When this month's spend reaches the budget if what is held now stays held (`None`:
    /// not this month); at or before now once it has.
    pub reaches_budget_at: Option<UnixMillis>,
    pub month_end: UnixMillis,
}

/// When `tenant`'s budget next needs a look: the moment its spend reaches the next alert, or
/// (while it holds something) its month's end. A function of the state alone (part of
/// `meter::meter_deadline`).
pub fn budget_deadline(state: &State, tenant: &Tenant) -> Option<UnixMillis> {
    let b = tenant.budget.as_ref()?;
    let meter: &Meter = &tenant.meter;
    let plan = Scheduler::plan_of(&state.price_plans, tenant);
    let holding = !meter.rates.is_empty();
    let month_end = holding.then(|| month_start(meter.month + 1));
    match b.budget.threshold(b.fired_in(meter.month)) {
        Some(threshold) => meter.reaches(plan, threshold).or(month_end),
        None => month_end,
    }
}

impl Scheduler {
    /// `SetBudget`: from this entry; the month's alerts re-arm (those its spend already passed
    /// fire now), and queued work a hard stop held back is looked at again.
    pub(super) fn set_budget(
        &mut self,
        tenant: &TenantId,
        budget: Option<Budget>,
    ) -> Result<Response, Rejection> {
        self.tenant(tenant)?;
        self.meter_tenant(tenant);
        let t = self.tenant_mut(tenant)?;
        let month = t.meter.month;
        let was_limited = limited_in_time(t);
        t.budget = budget.map(|budget| Box::new(BudgetState { budget, month, fired: 0 }));
        let limited = limited_in_time(t);
        self.ix.window_limited =
            self.ix.window_limited + u64::from(limited) - u64::from(was_limited);
        self.budget_alerts(tenant, &[]);
        self.refresh_meter_deadline(tenant);
        self.queue_dirty = true;
        Ok(Response::BudgetSet)
    }

    /// Emits the alerts the spend of months that just ended (`ended`, oldest first) and of
    /// this month so far has reached. Call with the meter brought to now. True if it raised
    /// any or started a new month.
    pub(super) fn budget_alerts(&mut self, tenant: &TenantId, ended: &[(u64, Decimal)]) -> bool {
        let t = self.state.tenants.get_mut(tenant).expect("invariant: budgeted tenant exists");
        let Some(b) = t.budget.as_mut() else { return false };
        let before = (b.month, b.fired);
        let current = (t.meter.month, t.meter.statement().total);
        let mut alerts = Vec::new();
        for (month, spent) in ended.iter().copied().chain([current]) {
            if month < b.month {
                continue;
            }
            if month > b.month {
                b.month = month;
                b.fired = 0;
            }
            while let Some(threshold) = b.budget.threshold(b.fired) {
                if spent < threshold {
                    break;
                }
                alerts.push(QuotaEvent::BudgetAlert {
                    tenant: tenant.clone(),
                    month,
                    percent: b.budget.alerts_percent[b.fired],
                    budget: b.budget.per_month,
                    spent,
                });
                b.fired += 1;
            }
        }
        let changed = (b.month, b.fired) != before;
        for alert in alerts {
            self.emit(Event::Quota(alert));
        }
        changed
    }

    /// Refuses new work of `tenant` if today's spend reached its daily limit, or this month's
    /// its hard-stopped budget. Changes nothing (the spend is worked out on a copy of the
    /// meter).
    pub(super) fn check_budget(&self, tenant: &TenantId) -> Result<(), Rejection> {
        let t = self.tenant(tenant)?;
        let Some(b) = t.budget.as_ref() else { return Ok(()) };
        let b = &b.budget;
        if !b.hard_stop && b.per_day.is_none() {
            return Ok(());
        }
        let mut meter = (*t.meter).clone();
        meter.advance(self.state.now, Self::plan_of(&self.state.price_plans, t));
        let month = meter.statement().total;
        let spent = |period, budget, spent, resets_at| Rejection::BudgetSpent {
            tenant: tenant.clone(),
            period,
            budget,
            spent,
            resets_at,
        };
        if let Some(per_day) = b.per_day {
            let today = month.saturating_sub(meter.day_start_total);
            if today >= per_day {
                let midnight = UnixMillis((day_of(self.state.now) + 1).saturating_mul(DAY_MS));
                return Err(spent(BudgetPeriod::Day, per_day, today, midnight));
            }
        }
        if b.hard_stop && month >= b.per_month {
            let next_month = month_start(month_of(self.state.now) + 1);
            return Err(spent(BudgetPeriod::Month, b.per_month, month, next_month));
        }
        Ok(())
    }

    /// `tenant`'s budget as of now, if it has one, without changing anything.
    pub fn budget_status(&self, tenant: &TenantId) -> Option<BudgetStatus> {
        let t = self.state.tenants.get(tenant)?;
        let b = t.budget.as_ref()?;
        let plan = Self::plan_of(&self.state.price_plans, t);
        let mut meter = (*t.meter).clone();
        meter.advance(self.state.now, plan);
        let spent = meter.statement().total;
        Some(BudgetStatus {
            budget: b.budget.clone(),
            spent,
            spent_today: spent.saturating_sub(meter.day_start_total),
            fired_percents: b.fired_percents(meter.month).to_vec(),
            reaches_budget_at: meter.reaches(plan, b.budget.per_month),
            month_end: month_start(meter.month + 1),
        })
    }
}
