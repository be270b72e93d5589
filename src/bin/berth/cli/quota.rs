//! `berth quota`: a tenant's hard, soft and time-window limits, pool denials, preemption
//! policy, guaranteed shares and rate limits. Each quota change reads the quota as set,
//! changes one part and writes it back, so run one quota change at a time; `rate` sets all
//! three rate limits at once.

use berth::client::pb;
use berth::scheduler::{BURST_RATE_MAX, DAILY_QUOTA_MAX, TOKEN_RATE_MAX};
use clap::Subcommand;

use super::args::parse_cpu;
use super::Session;

#[derive(Subcommand, Debug)]
pub enum QuotaCmd {
    /// Set hard limits (in total, or in one pool with --pool); unset flags are unlimited.
    Set {
        tenant: String,
        #[arg(long)]
        pool: Option<String>,
        #[arg(long, value_parser = parse_cpu)]
        cpu: Option<u64>,
        #[arg(long)]
        memory_mib: Option<u64>,
        #[arg(long)]
        instances: Option<u64>,
        #[arg(long)]
        jobs: Option<u64>,
    },
    /// Set soft limits with burst ceilings on the total (SOFT:BURST; cpu in cores) and the
    /// grace period; unset flags set none (inherit).
    Soft {
        tenant: String,
        #[arg(long, value_parser = parse_soft_cpu)]
        cpu: Option<pb::SoftLimit>,
        #[arg(long, value_parser = parse_soft)]
        memory_mib: Option<pb::SoftLimit>,
        #[arg(long, value_parser = parse_soft)]
        instances: Option<pb::SoftLimit>,
        #[arg(long, value_parser = parse_soft)]
        jobs: Option<pb::SoftLimit>,
        /// How long usage may stay above soft (log-time ms); 0 admits nothing above soft.
        #[arg(long)]
        grace_ms: Option<u64>,
        /// Cpu and memory soft limits as a share of this pool's schedulable capacity, which
        /// follow the pool as workers come and go (instead of --cpu/--memory-mib).
        #[arg(long, requires = "share", conflicts_with_all = ["cpu", "memory_mib"])]
        share_of_pool: Option<String>,
        /// SOFT:BURST in per-mille of the pool (e.g. 250:400).
        #[arg(long, value_parser = parse_soft, requires = "share_of_pool")]
        share: Option<pb::SoftLimit>,
    },
    /// Set time-window limits (UTC, log time); unset flags are unlimited.
    Window {
        tenant: String,
        #[arg(long)]
        jobs_per_day: Option<u64>,
        /// Cpu-hours per calendar month, up to three decimals (counted exactly).
        #[arg(long, value_parser = parse_cpu_hours)]
        cpu_hours_per_month: Option<u64>,
        /// Placements per week (Monday 00:00 UTC to the next).
        #[arg(long)]
        jobs_per_week: Option<u64>,
        /// Cpu-hours per week, up to three decimals.
        #[arg(long, value_parser = parse_cpu_hours)]
        cpu_hours_per_week: Option<u64>,
        /// What `place --queue` does when a window is spent.
        #[arg(long, value_parser = ["queue", "refuse"], default_value = "queue")]
        when_exhausted: String,
    },
    /// Raise a quota event when the subtree's usage reaches PERCENT (1-100) of a hard limit
    /// this tenant's quota sets (in total or per pool), and another when it is back below;
    /// "off" removes the alerts.
    Alert { tenant: String, percent: String },
    /// Deny the tenant's subtree a pool.
    Deny { tenant: String, pool: String },
    /// Lift a pool denial set on this tenant.
    Allow { tenant: String, pool: String },
    /// Whose strictly lower-priority placements the tenant's subtree may preempt when its work
    /// does not fit ("inherit" clears the tenant's own setting).
    Preemption {
        tenant: String,
        #[arg(value_parser = ["never", "same-tenant", "any-tenant", "inherit"])]
        policy: String,
    },
    /// Set the tenant's guaranteed share of a pool (cpu in cores), with optional borrowing and
    /// lending limits (a dimension left out is unlimited); --remove drops it.
    Guarantee {
        tenant: String,
        pool: String,
        #[command(flatten)]
        share: GuaranteeFlags,
        #[arg(long, conflicts_with_all = ["cpu", "memory_mib", "borrow_cpu", "borrow_memory_mib", "lend_cpu", "lend_memory_mib"])]
        remove: bool,
    },
    /// Set rate limits on the requests made with the tenant's (and its descendants') tokens:
    /// writes are limited cluster-wide, reads per replica. Unset flags are unlimited; no flag
    /// removes the tenant's rate limits.
    Rate {
        tenant: String,
        /// Requests per second, sustained.
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=i64::from(TOKEN_RATE_MAX)))]
        token_rate: Option<u32>,
        /// Most requests at once (default: the token rate).
        #[arg(long, requires = "token_rate", value_parser = clap::value_parser!(u32).range(1..=i64::from(BURST_RATE_MAX)))]
        burst_rate: Option<u32>,
        /// Most writes per UTC day.
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..=DAILY_QUOTA_MAX))]
        daily_quota: Option<u64>,
    },
    /// Limits as set and in effect, usage, burst state and each pool's guarantee, borrowed
    /// and unused amounts.
    Get { tenant: String },
    /// The tenant's policy versions: its creation and each change to its quota, rate limits,
    /// budget or billing plan, with who, when and the log index (--json: each version's whole
    /// policy).
    History { tenant: String },
    /// Make an earlier policy version current again (quota, rate limits, budget and billing
    /// plan together), as a new version; refused whole if any part is.
    Rollback {
        tenant: String,
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        to_version: u64,
    },
}

/// A guaranteed share of a pool, as `berth quota guarantee` takes it.
#[derive(clap::Args, Debug)]
pub struct GuaranteeFlags {
    #[arg(long, value_parser = parse_cpu, default_value = "0")]
    cpu: u64,
    #[arg(long, default_value_t = 0)]
    memory_mib: u64,
    /// Most cpu the subtree may use above the guarantee in the pool.
    #[arg(long, value_parser = parse_cpu)]
    borrow_cpu: Option<u64>,
    #[arg(long)]
    borrow_memory_mib: Option<u64>,
    /// Most of the unused guaranteed cpu other tenants may borrow.
    #[arg(long, value_parser = parse_cpu)]
    lend_cpu: Option<u64>,
    #[arg(long)]
    lend_memory_mib: Option<u64>,
}

impl GuaranteeFlags {
    /// The guarantee: a limit dimension left out is unlimited, which is the most any pool can
    /// hold (`POOL_*_MAX`, the bound on a guarantee's amounts).
    fn guarantee(&self) -> pb::Guarantee {
        use berth::scheduler::resources::{POOL_CPU_MILLIS_MAX, POOL_MEMORY_MIB_MAX};
        let res = |cpu_millis, memory_mib| pb::Resources { cpu_millis, memory_mib };
        let borrowing =
            (self.borrow_cpu.is_some() || self.borrow_memory_mib.is_some()).then(|| {
                res(
                    self.borrow_cpu.unwrap_or(POOL_CPU_MILLIS_MAX),
                    self.borrow_memory_mib.unwrap_or(POOL_MEMORY_MIB_MAX),
                )
            });
        let lending = (self.lend_cpu.is_some() || self.lend_memory_mib.is_some()).then(|| {
            res(
                self.lend_cpu.unwrap_or(POOL_CPU_MILLIS_MAX),
                self.lend_memory_mib.unwrap_or(POOL_MEMORY_MIB_MAX),
            )
        });
        pb::Guarantee {
            nominal: Some(res(self.cpu, self.memory_mib)),
            borrowing_limit: borrowing,
            lending_limit: lending,
        }
    }
}

fn parse_soft_pair(
    text: &str,
    parse: fn(&str) -> Result<u64, String>,
) -> Result<pb::SoftLimit, String> {
    let (soft, burst) =
        text.split_once(':').ok_or_else(|| format!("{text:?} is not SOFT:BURST"))?;
    let (soft, burst) = (parse(soft)?, parse(burst)?);
    if soft > burst {
        return Err(format!("soft {soft} is above burst {burst}"));
    }
    Ok(pb::SoftLimit { soft, burst })
}

/// Cpu-hours (up to three decimals) as cpu_millis × ms, exactly.
fn parse_cpu_hours(text: &str) -> Result<u64, String> {
    parse_cpu(text)?.checked_mul(3_600_000).ok_or_else(|| format!("{text:?} is too large"))
}

fn parse_soft_cpu(text: &str) -> Result<pb::SoftLimit, String> {
    parse_soft_pair(text, parse_cpu)
}

fn parse_soft(text: &str) -> Result<pb::SoftLimit, String> {
    parse_soft_pair(text, |n| n.trim().parse().map_err(|_| format!("{n:?} is not a number")))
}

pub async fn run(s: &Session, cmd: QuotaCmd) -> anyhow::Result<()> {
    match cmd {
        QuotaCmd::Set { tenant, pool, cpu, memory_mib, instances, jobs } => {
            let limits = pb::Limits { cpu_millis: cpu, memory_mib, instances, jobs };
            edit(s, tenant, |quota| match pool {
                Some(pool) => {
                    quota.pools.insert(pool, limits);
                }
                None => quota.total = Some(limits),
            })
            .await
        }
        QuotaCmd::Soft {
            tenant,
            cpu,
            memory_mib,
            instances,
            jobs,
            grace_ms,
            share_of_pool,
            share,
        } => {
            edit(s, tenant, |quota| {
                quota.soft = Some(pb::SoftLimits { cpu_millis: cpu, memory_mib, instances, jobs });
                quota.grace_ms = grace_ms;
                quota.soft_share = share_of_pool.zip(share).map(|(pool, l)| pb::SoftShare {
                    pool,
                    soft_per_mille: u32::try_from(l.soft).unwrap_or(u32::MAX),
                    burst_per_mille: u32::try_from(l.burst).unwrap_or(u32::MAX),
                });
            })
            .await
        }
        QuotaCmd::Window {
            tenant,
            jobs_per_day,
            cpu_hours_per_month,
            jobs_per_week,
            cpu_hours_per_week,
            when_exhausted,
        } => {
            edit(s, tenant, |quota| {
                let policy = if when_exhausted == "refuse" {
                    pb::window_limits::Policy::Refuse
                } else {
                    pb::window_limits::Policy::Queue
                };
                quota.windows = Some(pb::WindowLimits {
                    jobs_per_day,
                    cpu_milli_ms_per_month: cpu_hours_per_month,
                    jobs_per_week,
                    cpu_milli_ms_per_week: cpu_hours_per_week,
                    when_exhausted: policy.into(),
                });
            })
            .await
        }
        QuotaCmd::Alert { tenant, percent } => {
            let percent =
                match percent.as_str() {
                    "off" => None,
                    p => Some(p.parse::<u32>().map_err(|_| {
                        anyhow::anyhow!("{p:?} is not a percent (1-100) or \"off\"")
                    })?),
                };
            edit(s, tenant, |quota| quota.alert_percent = percent).await
        }
        QuotaCmd::Deny { tenant, pool } => {
            edit(s, tenant, |quota| {
                quota.denied_pools.retain(|p| *p != pool);
                quota.denied_pools.push(pool);
            })
            .await
        }
        QuotaCmd::Allow { tenant, pool } => {
            edit(s, tenant, |quota| quota.denied_pools.retain(|p| *p != pool)).await
        }
        QuotaCmd::Preemption { tenant, policy } => {
            edit(s, tenant, |quota| {
                quota.preemption = match policy.as_str() {
                    "never" => Some(pb::Preemption::Never.into()),
                    "same-tenant" => Some(pb::Preemption::SameTenant.into()),
                    "any-tenant" => Some(pb::Preemption::AnyTenant.into()),
                    _ => None,
                };
            })
            .await
        }
        QuotaCmd::Guarantee { tenant, pool, share, remove } => {
            edit(s, tenant, |quota| {
                if remove {
                    quota.guarantees.remove(&pool);
                } else {
                    quota.guarantees.insert(pool, share.guarantee());
                }
            })
            .await
        }
        QuotaCmd::Rate { tenant, token_rate, burst_rate, daily_quota } => {
            let limits = pb::RateLimits {
                token_rate: token_rate.unwrap_or(0),
                burst_rate: burst_rate.unwrap_or(0),
                daily_quota: daily_quota.unwrap_or(0),
            };
            let m = pb::SetRateLimitsRequest {
                request_id: s.request_id(),
                tenant_id: tenant,
                limits: Some(limits),
            };
            s.show(&call!(s, tenants, set_rate_limits, m))
        }
        QuotaCmd::History { tenant } => {
            let m = pb::GetPolicyHistoryRequest { tenant_id: tenant, read: None };
            s.show(&call!(s, tenants, get_policy_history, m))
        }
        QuotaCmd::Rollback { tenant, to_version } => {
            let m = pb::RollbackPolicyRequest {
                request_id: s.request_id(),
                tenant_id: tenant,
                to_version,
            };
            s.show(&call!(s, tenants, rollback_policy, m))
        }
        QuotaCmd::Get { tenant } => {
            let m = pb::GetQuotaRequest { tenant_id: tenant, read: None };
            s.show(&call!(s, tenants, get_quota, m))
        }
    }
}

/// Read-modify-write of a tenant's quota as set: `change` changes one part, the rest is kept.
async fn edit(
    s: &Session,
    tenant: String,
    change: impl FnOnce(&mut pb::Quota),
) -> anyhow::Result<()> {
    let m = pb::GetQuotaRequest { tenant_id: tenant.clone(), read: None };
    let mut quota = call!(s, tenants, get_quota, m).quota.unwrap_or_default();
    change(&mut quota);
    let m =
        pb::SetQuotaRequest { request_id: s.request_id(), tenant_id: tenant, quota: Some(quota) };
    s.show(&call!(s, tenants, set_quota, m))
}
