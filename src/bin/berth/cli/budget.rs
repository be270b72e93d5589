//! `berth budget`: a tenant's monthly budget, with its alerts, hard stop and where the month
//! is heading.

use std::str::FromStr;

use berth::client::pb;
use clap::Subcommand;
use rust_decimal::Decimal;

use super::Session;

#[derive(Subcommand, Debug)]
pub enum BudgetCmd {
    /// Set a tenant's monthly budget (admin): what its own bill may reach per UTC month. Its
    /// alerts re-arm; those this month's spend already passed are raised at once.
    Set {
        tenant: String,
        /// A decimal amount, e.g. 500 or 1250.50.
        #[arg(long)]
        per_month: String,
        /// A cost window: at most this much per UTC day, always enforced (new work is refused
        /// until the next midnight).
        #[arg(long)]
        per_day: Option<String>,
        /// Percentages of the budget that raise an alert (quota events), rising. Default:
        /// 50,80,100.
        #[arg(long, value_delimiter = ',', conflicts_with = "no_alerts")]
        alerts: Vec<u32>,
        /// Raise no alerts.
        #[arg(long)]
        no_alerts: bool,
        /// At 100 %, refuse new work (QUOTA_EXCEEDED, limit_kind budget); queued work waits
        /// until the month ends or the budget is raised. Running work is never stopped.
        #[arg(long)]
        hard_stop: bool,
    },
    /// Remove a tenant's budget (admin).
    Clear { tenant: String },
    /// A tenant's budget: this month's spend, the alerts raised, when the budget is reached
    /// at the current rate, and the projected total at the month's end.
    Get { tenant: String },
}

/// `berth budget get` for people: the response plus the share of the budget spent.
#[derive(serde::Serialize)]
struct BudgetView {
    month: String,
    per_month: String,
    spent: String,
    spent_percent: String,
    per_day: String,
    spent_today: String,
    alerts_percent: Vec<u32>,
    alerts_raised: Vec<u32>,
    hard_stop: bool,
    reaches_budget_at: String,
    projected_total: String,
    projected_with_queued: String,
    month_ends_at: String,
}

pub async fn run(s: &Session, cmd: BudgetCmd) -> anyhow::Result<()> {
    match cmd {
        BudgetCmd::Set { tenant, per_month, per_day, alerts, no_alerts, hard_stop } => {
            let budget = pb::Budget {
                per_month,
                per_day: per_day.unwrap_or_default(),
                alerts_percent: alerts,
                hard_stop,
                no_alerts,
            };
            let m = pb::SetBudgetRequest {
                request_id: s.request_id(),
                tenant_id: tenant,
                budget: Some(budget),
            };
            s.show(&call!(s, billing, set_budget, m))
        }
        BudgetCmd::Clear { tenant } => {
            let m = pb::SetBudgetRequest {
                request_id: s.request_id(),
                tenant_id: tenant,
                budget: None,
            };
            s.show(&call!(s, billing, set_budget, m))
        }
        BudgetCmd::Get { tenant } => {
            let m = pb::GetBudgetRequest { tenant_id: tenant, read: None };
            let r = call!(s, billing, get_budget, m);
            if s.json {
                return s.show(&r);
            }
            let budget = r.budget.unwrap_or_default();
            let percent = match (Decimal::from_str(&r.spent), Decimal::from_str(&budget.per_month))
            {
                (Ok(spent), Ok(per_month)) if !per_month.is_zero() => {
                    format!("{} %", (spent * Decimal::ONE_HUNDRED / per_month).round_dp(1))
                }
                _ => "-".into(),
            };
            s.show(&BudgetView {
                month: r.month,
                per_month: budget.per_month,
                spent: r.spent,
                spent_percent: percent,
                per_day: if budget.per_day.is_empty() { "-".into() } else { budget.per_day },
                spent_today: r.spent_today,
                alerts_percent: budget.alerts_percent,
                alerts_raised: r.fired_percents,
                hard_stop: budget.hard_stop,
                reaches_budget_at: r.reaches_budget_at_ms.map_or("not this month".into(), utc),
                projected_total: r.projected_total,
                projected_with_queued: r.projected_with_queued,
                month_ends_at: utc(r.month_end_ms),
            })
        }
    }
}

fn utc(ms: u64) -> String {
    berth::scheduler::windows::utc_label(berth::scheduler::UnixMillis(ms))
}
