//! `berth cost`: price plans, the plan each tenant pays by, a tenant's metered statement, and
//! splitting a shared cost by weights. Money is decimal strings end to end, never floats.

use berth::client::pb;
use clap::Subcommand;

use super::args::parse_duration_ms;
use super::Session;

#[derive(Subcommand, Debug)]
pub enum CostCmd {
    /// Split a total by weights, to the cent, parts summing exactly to the total; or, with
    /// --by-usage, by what each tenant was metered (admin).
    Allocate {
        #[arg(long)]
        total: String,
        #[arg(long, value_delimiter = ',', required_unless_present = "by_usage")]
        weights: Vec<String>,
        /// Split by each tenant's metered quantity of this item (cpu, memory, reserved_cpu,
        /// reserved_memory) this month so far, among --tenants.
        #[arg(long, conflicts_with = "weights", requires = "tenants")]
        by_usage: Option<String>,
        /// The tenants to split among (with --by-usage), in the order of the parts.
        #[arg(long, value_delimiter = ',')]
        tenants: Vec<String>,
        /// With --by-usage: their last ended month instead of this one.
        #[arg(long, requires = "by_usage")]
        last_month: bool,
    },
    /// Set a price plan's prices (admin), from now or later; prices in effect are never
    /// rewritten. The plan named "default" prices every tenant without a plan of its own.
    Price {
        plan: String,
        /// [POOL/]ITEM=TIERS, repeated. ITEM: cpu, memory (per cpu-hour, per GiB-hour),
        /// reserved_cpu, reserved_memory. TIERS: a price, or tiers over the month's
        /// item-hours, e.g. cpu=0.04 or gpu/cpu=1000:0.04,0.03 (the first 1,000 cpu-hours at
        /// 0.04, the rest at 0.03). Without POOL/: every pool not named.
        #[arg(long = "price", value_parser = parse_price, required = true)]
        prices: Vec<(String, pb::ItemPrice)>,
        /// Take effect this long from now (90s, 12h, 30d) instead of at once.
        #[arg(long = "in", value_parser = parse_duration_ms, conflicts_with = "at_ms")]
        after: Option<u64>,
        /// Take effect at this Unix time in ms (log time; a past time means now).
        #[arg(long)]
        at_ms: Option<u64>,
    },
    /// Every price plan, with the version in effect and those to come (admin).
    Plans,
    /// The plan a tenant pays by from now (admin). Without PLAN: the "default" plan.
    Assign { tenant: String, plan: Option<String> },
    /// A tenant's metered usage and cost: this UTC month so far, where it is heading (held to
    /// the month's end, and with its queue admitted), and its last ended month.
    Statement { tenant: String },
}

/// `[POOL/]ITEM=TIERS` (see `berth cost price --help`).
fn parse_price(text: &str) -> Result<(String, pb::ItemPrice), String> {
    let bad =
        || format!("{text:?} is not [POOL/]ITEM=TIERS, like cpu=0.04 or gpu/cpu=1000:0.04,0.03");
    let (target, tiers) = text.split_once('=').ok_or_else(bad)?;
    let (pool, item) = target.rsplit_once('/').unwrap_or(("", target));
    let tiers = tiers
        .split(',')
        .map(|t| match t.split_once(':') {
            Some((hours, price)) => Ok(pb::PriceTier {
                up_to_hours: Some(hours.trim().parse().map_err(|_| bad())?),
                per_hour: price.trim().to_owned(),
            }),
            None => Ok(pb::PriceTier { up_to_hours: None, per_hour: t.trim().to_owned() }),
        })
        .collect::<Result<Vec<_>, String>>()?;
    if item.is_empty() || tiers.iter().any(|t| t.per_hour.is_empty()) {
        return Err(bad());
    }
    Ok((pool.to_owned(), pb::ItemPrice { item: item.to_owned(), tiers }))
}

pub async fn run(s: &Session, cmd: CostCmd) -> anyhow::Result<()> {
    match cmd {
        CostCmd::Allocate { total, weights, by_usage, tenants, last_month } => {
            let by_usage =
                by_usage.map(|item| pb::UsageBasis { tenant_ids: tenants, item, last_month });
            let m = pb::AllocateSharedCostRequest { total, weights, by_usage };
            s.show(&call!(s, billing, allocate_shared_cost, m))
        }
        CostCmd::Price { plan, prices, after, at_ms } => {
            let mut pools: Vec<pb::PoolPrices> = Vec::new();
            for (pool, item) in prices {
                match pools.iter_mut().find(|p| p.pool == pool) {
                    Some(p) => p.items.push(item),
                    None => pools.push(pb::PoolPrices { pool, items: vec![item] }),
                }
            }
            let effective_at_ms = match (after, at_ms) {
                (Some(ms), _) => Some(unix_ms_now()?.saturating_add(ms)),
                (None, at) => at,
            };
            let m = pb::SetPricePlanRequest {
                request_id: s.request_id(),
                plan,
                pools,
                effective_at_ms,
            };
            s.show(&call!(s, billing, set_price_plan, m))
        }
        CostCmd::Plans => {
            let m = pb::ListPricePlansRequest { read: None };
            let plans = call!(s, billing, list_price_plans, m).plans;
            if s.json {
                s.show(&plans)
            } else {
                s.show(&price_rows(&plans))
            }
        }
        CostCmd::Assign { tenant, plan } => {
            let m = pb::SetBillingPlanRequest {
                request_id: s.request_id(),
                tenant_id: tenant,
                plan: plan.unwrap_or_default(),
            };
            s.show(&call!(s, billing, set_billing_plan, m))
        }
        CostCmd::Statement { tenant } => {
            let m = pb::GetStatementRequest { tenant_id: tenant, read: None };
            s.show(&call!(s, billing, get_statement, m))
        }
    }
}

/// One row per plan, version, pool and item: the plans as a table people can read.
#[derive(serde::Serialize)]
struct PriceRow {
    plan: String,
    since_ms: u64,
    /// `*`: every pool not named.
    pool: String,
    item: String,
    /// As `--price` takes them: `1000:0.04,0.03`.
    tiers: String,
}

fn price_rows(plans: &[pb::PricePlan]) -> Vec<PriceRow> {
    let mut rows = Vec::new();
    for plan in plans {
        for version in &plan.versions {
            for pool in &version.pools {
                for item in &pool.items {
                    let tiers = item.tiers.iter().map(|t| match t.up_to_hours {
                        Some(hours) => format!("{hours}:{}", t.per_hour),
                        None => t.per_hour.clone(),
                    });
                    rows.push(PriceRow {
                        plan: plan.plan.clone(),
                        since_ms: version.since_ms,
                        pool: if pool.pool.is_empty() { "*".into() } else { pool.pool.clone() },
                        item: item.item.clone(),
                        tiers: tiers.collect::<Vec<_>>().join(","),
                    });
                }
            }
        }
    }
    rows
}

fn unix_ms_now() -> anyhow::Result<u64> {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
    Ok(u64::try_from(since.as_millis())?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prices_parse_with_tiers_and_pools() {
        let (pool, item) = parse_price("gpu/cpu=1000:0.04,0.03").expect("parses");
        assert_eq!(pool, "gpu");
        assert_eq!(item.item, "cpu");
        assert_eq!(item.tiers.len(), 2);
        assert_eq!(item.tiers[0].up_to_hours, Some(1000));
        assert_eq!(item.tiers[1].per_hour, "0.03");
        let (pool, item) = parse_price("memory=0.005").expect("parses");
        assert_eq!((pool.as_str(), item.tiers[0].up_to_hours), ("", None));
        for bad in ["cpu", "=1", "cpu=", "cpu=x:1,2", "cpu=1,"] {
            assert!(parse_price(bad).is_err(), "{bad:?} should be refused");
        }
    }
}
