//! Quotas (hard, soft with burst and grace, per pool, pool access) and usage accounting.
//!
//! A tenant's limits apply to its whole subtree (itself and its descendants), so a parent caps
//! the sum of its children. Usage is kept per subtree, in total and per pool, and is changed only
//! together with the placements it counts (invariant 5 and 2, checked by `check_invariants`).
//!
//! Inheritance: where a tenant sets no value (a hard or soft dimension, a pool's dimension, the
//! grace period), the nearest ancestor's value applies to the tenant's own subtree. Pools denied
//! anywhere up the chain are denied. `EffectiveQuota` is the resolved view.
//!
//! Soft limits: a subtree may run above `soft` up to `burst` (never above it), for at most the
//! effective grace period counted from the moment it went above (`Burst`). When the grace ends,
//! no new work is admitted while the subtree is above soft; work already running stays. Going
//! back under soft in every dimension ends the burst.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

use super::ids::{validate_object_id, PlacementId, PoolId, TenantId, UnixMillis};
use super::resources::{Resources, POOL_RESOURCES_MAX};
use super::windows::{Window, WindowLimits};

/// A quota dimension.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Dimension {
    CpuMillis,
    MemoryMib,
    /// Instances of workloads (a `Place` of `count` adds `count`).
    Instances,
    /// Placements (a `Place` of any `count` is one job).
    Jobs,
}

impl Dimension {
    pub const ALL: [Dimension; 4] =
        [Dimension::CpuMillis, Dimension::MemoryMib, Dimension::Instances, Dimension::Jobs];

    pub fn name(self) -> &'static str {
        match self {
            Dimension::CpuMillis => "cpu_millis",
            Dimension::MemoryMib => "memory_mib",
            Dimension::Instances => "instances",
            Dimension::Jobs => "jobs",
        }
    }
}

/// One optional value per quota dimension; `None` sets none.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PerDimension<T> {
    pub cpu_millis: Option<T>,
    pub memory_mib: Option<T>,
    pub instances: Option<T>,
    pub jobs: Option<T>,
}

/// Hard limits per dimension; `None` is unlimited.
pub type Limits = PerDimension<u64>;

/// Soft limits per dimension; `None` sets none (inherit, or no soft limit).
pub type SoftLimits = PerDimension<SoftLimit>;

impl<T> Default for PerDimension<T> {
    fn default() -> Self {
        PerDimension { cpu_millis: None, memory_mib: None, instances: None, jobs: None }
    }
}

impl<T: Copy + PartialEq> PerDimension<T> {
    pub fn get(&self, dimension: Dimension) -> Option<T> {
        match dimension {
            Dimension::CpuMillis => self.cpu_millis,
            Dimension::MemoryMib => self.memory_mib,
            Dimension::Instances => self.instances,
            Dimension::Jobs => self.jobs,
        }
    }

    /// Each dimension from `self`, or from `fallback` where `self` sets none.
    pub fn or(&self, fallback: &Self) -> Self {
        self.map2(fallback, Option::or)
    }

    pub fn is_empty(&self) -> bool {
        Dimension::ALL.into_iter().all(|d| self.get(d).is_none())
    }

    fn map<U>(&self, f: impl Fn(Option<T>) -> Option<U>) -> PerDimension<U> {
        PerDimension {
            cpu_millis: f(self.cpu_millis),
            memory_mib: f(self.memory_mib),
            instances: f(self.instances),
            jobs: f(self.jobs),
        }
    }

    fn map2(&self, other: &Self, f: impl Fn(Option<T>, Option<T>) -> Option<T>) -> Self {
        PerDimension {
            cpu_millis: f(self.cpu_millis, other.cpu_millis),
            memory_mib: f(self.memory_mib, other.memory_mib),
            instances: f(self.instances, other.instances),
            jobs: f(self.jobs, other.jobs),
        }
    }
}

/// A soft limit and the burst ceiling above it (`soft <= burst`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SoftLimit {
    pub soft: u64,
    pub burst: u64,
}

impl SoftLimits {
    /// The soft limits as plain limits.
    pub fn softs(&self) -> Limits {
        self.map(|l| l.map(|l| l.soft))
    }

    /// The burst ceilings as plain limits.
    pub fn bursts(&self) -> Limits {
        self.map(|l| l.map(|l| l.burst))
    }

    /// True when `usage` is above the soft limit in some dimension.
    pub fn exceeded_by(&self, usage: &Usage) -> bool {
        Dimension::ALL.into_iter().any(|d| self.get(d).is_some_and(|l| usage.get(d) > l.soft))
    }
}

/// A tenant's quota as set: limits on its subtree in total, per pool, soft limits on the total,
/// and pools it may not use. Unset values inherit (see the module header).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quota {
    pub total: Limits,
    pub pools: BTreeMap<PoolId, Limits>,
    pub soft: SoftLimits,
    /// How long the subtree may stay above a soft limit, in log-time milliseconds. `Some(0)`
    /// admits nothing above soft.
    pub grace_ms: Option<u64>,
    /// Pools the subtree may not place into at all.
    pub denied_pools: BTreeSet<PoolId>,
    /// Jobs per day and cpu time per month (checked where set, up the chain).
    pub windows: WindowLimits,
    /// Whom this subtree's higher-priority work may preempt; `None` inherits (default: never).
    pub preemption: Option<Preemption>,
    /// Guaranteed (nominal) shares of pools, with borrowing and lending limits. Not inherited:
    /// each applies to the tenant that sets it (and the work of its subtree).
    pub guarantees: BTreeMap<PoolId, Guarantee>,
    /// Soft limits on cpu and memory as shares of a pool's schedulable capacity: they follow
    /// the pool as workers are added, drained or removed. Replaces `soft.cpu_millis` and
    /// `soft.memory_mib` (setting both is refused); inherited like them.
    pub soft_share: Option<SoftShare>,
    /// Utilisation alerts on the hard limits this quota sets (in total and per pool): at or
    /// above this percent of one, `QuotaEvent::UtilisationHigh`; back below,
    /// `UtilisationNormal`. `1..=100`; `None`: no alerts. Not inherited.
    pub alert_percent: Option<u8>,
}

/// Per-mille of a pool's schedulable capacity: `soft <= burst <= 1000`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SoftShare {
    pub pool: PoolId,
    pub soft_per_mille: u32,
    pub burst_per_mille: u32,
}

impl SoftShare {
    /// The soft limits this share gives on a pool of `capacity`, rounded down (exact integers).
    pub fn limits(&self, capacity: Resources) -> (SoftLimit, SoftLimit) {
        let part = |total: u64, per_mille: u32| {
            let v = u128::from(total) * u128::from(per_mille) / 1000;
            u64::try_from(v).expect("invariant: a per-mille share of a u64 fits in a u64")
        };
        let of = |total| SoftLimit {
            soft: part(total, self.soft_per_mille),
            burst: part(total, self.burst_per_mille),
        };
        (of(capacity.cpu_millis), of(capacity.memory_mib))
    }
}

/// Whose strictly lower-priority placements a tenant's work may preempt when it does not fit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Preemption {
    /// Nothing is preempted for this tenant's work.
    #[default]
    Never,
    /// Placements of the same tenant only.
    SameTenant,
    /// Placements of any tenant (in the pool, for capacity; under the limiting tenant, for a
    /// quota).
    AnyTenant,
}

impl Preemption {
    pub fn name(self) -> &'static str {
        match self {
            Preemption::Never => "never",
            Preemption::SameTenant => "same_tenant",
            Preemption::AnyTenant => "any_tenant",
        }
    }
}

/// A tenant's guaranteed share of one pool (cpu and memory), how far beyond it the tenant may
/// borrow idle capacity, and how much of its unused share others may borrow.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Guarantee {
    pub nominal: Resources,
    /// Most the subtree's usage in the pool may exceed `nominal` by; `None` is unlimited (up
    /// to the hard limits).
    pub borrowing_limit: Option<Resources>,
    /// Most of the unused nominal share others may borrow; `None` lends all of it.
    pub lending_limit: Option<Resources>,
}

/// Quotas may name at most this many pools (limits, denials and guarantees each).
pub const QUOTA_POOLS_MAX: usize = 64;
/// Longest grace period: 30 days.
pub const GRACE_MAX_MS: u64 = 30 * 24 * 3_600_000;
/// Largest per-mille share of a pool (all of it).
pub const PER_MILLE_MAX: u32 = 1_000;

impl Quota {
    /// Checks every value against its bound (state-free; part of `Command::validate`). Hard,
    /// soft and window limits may be any u64: they are only compared, with checked sums.
    pub fn validate(&self) -> Result<(), Rejection> {
        if self.pools.len() > QUOTA_POOLS_MAX
            || self.denied_pools.len() > QUOTA_POOLS_MAX
            || self.guarantees.len() > QUOTA_POOLS_MAX
        {
            return Err(Rejection::invalid(
                "quota.pools",
                format!(
                    "at most {QUOTA_POOLS_MAX} pools with limits, {QUOTA_POOLS_MAX} denied and \
                     {QUOTA_POOLS_MAX} guaranteed"
                ),
            ));
        }
        for pool in self.pools.keys().chain(&self.denied_pools).chain(self.guarantees.keys()) {
            validate_object_id("pool", pool.as_str())?;
        }
        for g in self.guarantees.values() {
            let amounts = [Some(g.nominal), g.borrowing_limit, g.lending_limit];
            for amount in amounts.into_iter().flatten() {
                amount.validate("quota.guarantees", POOL_RESOURCES_MAX, true)?;
            }
        }
        if self.alert_percent.is_some_and(|p| !(1..=100).contains(&p)) {
            return Err(Rejection::invalid("quota.alert_percent", "must be 1..=100"));
        }
        if self.grace_ms.is_some_and(|g| g > GRACE_MAX_MS) {
            return Err(Rejection::invalid(
                "quota.grace_ms",
                format!("must be at most {GRACE_MAX_MS}"),
            ));
        }
        for d in Dimension::ALL {
            let Some(l) = self.soft.get(d) else { continue };
            if l.soft > l.burst {
                return Err(Rejection::invalid(
                    "quota.soft",
                    format!("{} soft limit {} is above its burst {}", d.name(), l.soft, l.burst),
                ));
            }
        }
        if let Some(share) = &self.soft_share {
            validate_object_id("pool", share.pool.as_str())?;
            if share.soft_per_mille > share.burst_per_mille || share.burst_per_mille > PER_MILLE_MAX
            {
                return Err(Rejection::invalid(
                    "quota.soft_share",
                    format!("per-mille shares must satisfy soft <= burst <= {PER_MILLE_MAX}"),
                ));
            }
            if self.soft.cpu_millis.is_some() || self.soft.memory_mib.is_some() {
                return Err(Rejection::invalid(
                    "quota.soft_share",
                    "a share of a pool replaces the cpu and memory soft limits: set one or the other",
                ));
            }
        }
        Ok(())
    }
}

/// A quota with inheritance resolved: what actually limits a tenant's subtree.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EffectiveQuota {
    pub total: Limits,
    pub pools: BTreeMap<PoolId, Limits>,
    pub soft: SoftLimits,
    /// 0 when no tenant up the chain sets one: nothing is admitted above soft.
    pub grace_ms: u64,
    pub denied_pools: BTreeSet<PoolId>,
    /// `Never` when no tenant up the chain sets one.
    pub preemption: Preemption,
    /// Some tenant up the chain declares soft limits as a share of a pool (they move with it).
    pub soft_shared: bool,
}

impl EffectiveQuota {
    /// Resolves `chain` (a tenant's quota first, then its ancestors', nearest first), with
    /// share-of-pool soft limits taken as fixed ones.
    pub fn resolve<'a>(chain: impl IntoIterator<Item = &'a Quota>) -> EffectiveQuota {
        EffectiveQuota::resolve_with(chain.into_iter().map(|q| (q, q.soft.clone())))
    }

    /// Resolves `chain` of quotas, each with its soft limits as they stand now (share-of-pool
    /// limits computed from the pool's capacity).
    pub fn resolve_with<'a>(
        chain: impl IntoIterator<Item = (&'a Quota, SoftLimits)>,
    ) -> EffectiveQuota {
        let mut e = EffectiveQuota::default();
        let mut grace = None;
        let mut preemption = None;
        for (q, soft) in chain {
            preemption = preemption.or(q.preemption);
            e.total = e.total.or(&q.total);
            for (pool, limits) in &q.pools {
                let slot = e.pools.entry(pool.clone()).or_default();
                *slot = slot.or(limits);
            }
            e.soft_shared |= q.soft_share.is_some();
            e.soft = e.soft.or(&soft);
            grace = grace.or(q.grace_ms);
            e.denied_pools.extend(q.denied_pools.iter().cloned());
        }
        e.grace_ms = grace.unwrap_or(0);
        e.preemption = preemption.unwrap_or_default();
        e
    }

    pub fn pool(&self, pool: &PoolId) -> Option<&Limits> {
        self.pools.get(pool)
    }
}

/// Which kind of limit refused a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum LimitKind {
    Hard,
    /// The burst ceiling above a soft limit.
    Burst,
    /// A soft limit whose grace period has ended (`grace_ended_at`) or is zero (`None`).
    Soft {
        grace_ended_at: Option<UnixMillis>,
    },
    /// The borrowing limit above a pool guarantee (`Guarantee::borrowing_limit`).
    Borrowing,
}

impl LimitKind {
    pub fn name(self) -> &'static str {
        match self {
            LimitKind::Hard => "hard",
            LimitKind::Burst => "burst",
            LimitKind::Soft { .. } => "soft",
            LimitKind::Borrowing => "borrowing",
        }
    }
}

/// A subtree running above a soft limit since `since`; it may until `grace_ends_at`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Burst {
    pub since: UnixMillis,
    pub grace_ends_at: UnixMillis,
    /// The grace period has ended: no new work until the subtree is back under soft.
    pub expired: bool,
}

/// Quota state changes reported with the entry that caused them.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum QuotaEvent {
    /// The tenant's subtree went above a soft limit; the grace period runs until `grace_ends_at`.
    BurstEntered { tenant: TenantId, grace_ends_at: UnixMillis },
    /// The grace period ended while the subtree was still above soft.
    GraceExpired { tenant: TenantId },
    /// The subtree is back under every soft limit.
    ReturnedUnderSoft { tenant: TenantId },
    /// The tenant's spend this `month` reached `percent` of its `budget` (once per threshold
    /// and month; `spent` is the month's total when it was seen).
    BudgetAlert { tenant: TenantId, month: u64, percent: u16, budget: Decimal, spent: Decimal },
    /// A queued placement was placed.
    Admitted { tenant: TenantId, placement: PlacementId },
    /// The subtree's usage of `dimension` (in total, or in `pool`) reached `percent` of the hard
    /// limit the tenant's quota sets there (`Quota::alert_percent`).
    UtilisationHigh {
        tenant: TenantId,
        pool: Option<PoolId>,
        dimension: Dimension,
        percent: u8,
        used: u64,
        limit: u64,
    },
    /// It is back below that percent (or the limit or the alert was removed).
    UtilisationNormal { tenant: TenantId, pool: Option<PoolId>, dimension: Dimension },
    /// A placement was released (and, with `requeued`, queued again) to make room for
    /// `by_placement` of `by_tenant`: by priority, or to return a guarantee (`reclaimed`).
    Preempted {
        tenant: TenantId,
        placement: PlacementId,
        by_tenant: TenantId,
        by_placement: PlacementId,
        reclaimed: bool,
        requeued: bool,
    },
}

/// What a tenant's subtree holds, in one scope (total or one pool).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    pub cpu_millis: u64,
    pub memory_mib: u64,
    pub instances: u64,
    pub jobs: u64,
}

impl Usage {
    /// The usage a job of `count` instances of `each` adds.
    pub fn of_job(each: Resources, count: u32) -> Option<Usage> {
        let total = each.checked_mul(u64::from(count))?;
        Some(Usage {
            cpu_millis: total.cpu_millis,
            memory_mib: total.memory_mib,
            instances: u64::from(count),
            jobs: 1,
        })
    }

    pub fn get(&self, dimension: Dimension) -> u64 {
        match dimension {
            Dimension::CpuMillis => self.cpu_millis,
            Dimension::MemoryMib => self.memory_mib,
            Dimension::Instances => self.instances,
            Dimension::Jobs => self.jobs,
        }
    }

    pub fn checked_add(self, o: Usage) -> Option<Usage> {
        Some(Usage {
            cpu_millis: self.cpu_millis.checked_add(o.cpu_millis)?,
            memory_mib: self.memory_mib.checked_add(o.memory_mib)?,
            instances: self.instances.checked_add(o.instances)?,
            jobs: self.jobs.checked_add(o.jobs)?,
        })
    }

    pub fn checked_sub(self, o: Usage) -> Option<Usage> {
        Some(Usage {
            cpu_millis: self.cpu_millis.checked_sub(o.cpu_millis)?,
            memory_mib: self.memory_mib.checked_sub(o.memory_mib)?,
            instances: self.instances.checked_sub(o.instances)?,
            jobs: self.jobs.checked_sub(o.jobs)?,
        })
    }

    pub fn is_zero(&self) -> bool {
        *self == Usage::default()
    }

    /// The first dimension where `self + add` would exceed `limits`, as
    /// `(dimension, limit, used, requested)`.
    pub fn exceeds(&self, add: &Usage, limits: &Limits) -> Option<(Dimension, u64, u64, u64)> {
        Dimension::ALL.into_iter().find_map(|d| {
            let limit = limits.get(d)?;
            let (used, requested) = (self.get(d), add.get(d));
            match used.checked_add(requested) {
                Some(after) if after <= limit => None,
                _ => Some((d, limit, used, requested)),
            }
        })
    }
}

/// A subtree's usage in total and per pool.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageTotals {
    pub total: Usage,
    pub pools: BTreeMap<PoolId, Usage>,
}

impl UsageTotals {
    pub fn pool(&self, pool: &PoolId) -> Usage {
        self.pools.get(pool).copied().unwrap_or_default()
    }

    /// Adds `usage` in `pool`. `None` on overflow (the caller treats it as an invariant breach).
    pub fn add(&mut self, pool: &PoolId, usage: Usage) -> Option<()> {
        self.total = self.total.checked_add(usage)?;
        let slot = self.pools.entry(pool.clone()).or_default();
        *slot = slot.checked_add(usage)?;
        Some(())
    }

    /// Subtracts `usage` in `pool`, dropping pools that reach zero so equal usage encodes equally.
    pub fn sub(&mut self, pool: &PoolId, usage: Usage) -> Option<()> {
        self.total = self.total.checked_sub(usage)?;
        let slot = self.pools.get_mut(pool)?;
        *slot = slot.checked_sub(usage)?;
        if slot.is_zero() {
            self.pools.remove(pool);
        }
        Some(())
    }
}

// ----- enforcement ---------------------------------------------------------------------------

use super::command::Rejection;
use super::events::Event;
use super::index::Deadline;
use super::state::Tenant;
use super::Scheduler;

impl Scheduler {
    /// The tenant's quota with inheritance resolved up its chain.
    pub fn effective_quota(&self, tenant: &TenantId) -> EffectiveQuota {
        let lineage = self.lineage(tenant);
        EffectiveQuota::resolve_with(
            lineage
                .iter()
                .filter_map(|id| self.state.tenants.get(id))
                .map(|t| (&t.quota, self.own_soft(&t.quota))),
        )
    }

    /// A quota's own soft limits as they stand now: a share of a pool is computed from the
    /// pool's current schedulable capacity.
    pub fn own_soft(&self, quota: &Quota) -> SoftLimits {
        let Some(share) = &quota.soft_share else { return quota.soft.clone() };
        let (cpu, memory) = share.limits(self.ix.pool_capacity(&share.pool));
        SoftLimits { cpu_millis: Some(cpu), memory_mib: Some(memory), ..quota.soft.clone() }
    }

    /// After a pool's schedulable capacity changed: share-of-pool soft limits on it moved, so
    /// the burst state of every subtree under such a limit is settled again.
    pub(super) fn pool_capacity_changed(&mut self, pool: &PoolId) {
        let setters: Vec<TenantId> = self
            .state
            .tenants
            .values()
            .filter(|t| t.quota.soft_share.as_ref().is_some_and(|s| s.pool == *pool))
            .map(|t| t.id.clone())
            .collect();
        // Moved soft limits may turn an aged entry's wait from capacity into quota (or back).
        self.queue_dirty |= !setters.is_empty();
        for setter in setters {
            let subtree = self.subtree(&setter);
            self.settle_bursts(&subtree);
        }
    }

    /// Refuses `usage` in `pool` if the tenant or any ancestor denies the pool, or it would take
    /// one of them over a hard limit (in total or in the pool), over a burst ceiling, or above a
    /// soft limit when that subtree may not burst (grace ended, or no grace period).
    ///
    /// Hard limits and burst ceilings are checked where they are set: an inherited one can only
    /// be exceeded if the ancestor that sets it is (its subtree holds at least as much), so the
    /// refusal names the tenant whose quota says so. Soft limits are checked with inheritance,
    /// because every tenant has its own burst state and grace period.
    pub(super) fn check_quota(
        &self,
        tenant: &TenantId,
        pool: &PoolId,
        usage: &Usage,
    ) -> Result<(), Rejection> {
        self.check_budget(tenant)?;
        for ancestor in self.lineage(tenant) {
            let t = self.tenant(&ancestor)?;
            if t.quota.denied_pools.contains(pool) {
                return Err(Rejection::PoolDenied { limited_by: ancestor, pool: pool.clone() });
            }
            let exceeded = |kind, scope: Option<&PoolId>, (dimension, limit, used, requested)| {
                Rejection::QuotaExceeded {
                    limited_by: ancestor.clone(),
                    kind,
                    dimension,
                    pool: scope.cloned(),
                    limit,
                    used,
                    requested,
                }
            };
            let used = t.usage.total;
            let scopes = [
                (None, used, Some(&t.quota.total)),
                (Some(pool), t.usage.pool(pool), t.quota.pools.get(pool)),
            ];
            for (scope, used_now, limits) in scopes {
                let Some(limits) = limits else { continue };
                if let Some(over) = used_now.exceeds(usage, limits) {
                    return Err(exceeded(LimitKind::Hard, scope, over));
                }
            }
            self.check_windows(&ancestor)?;
            let own_soft = self.own_soft(&t.quota);
            if let Some(over) = used.exceeds(usage, &own_soft.bursts()) {
                return Err(exceeded(LimitKind::Burst, None, over));
            }
            if own_soft.is_empty() && t.parent.is_none() {
                // No soft limit set here, and none to inherit.
                continue;
            }
            let grace_ended_at = match t.burst {
                Some(b) if b.expired => Some(b.grace_ends_at),
                Some(_) => continue,
                None => None,
            };
            let e = self.effective_quota(&ancestor);
            if grace_ended_at.is_none() && e.grace_ms > 0 {
                // Within the grace period, or about to start one: up to burst is fine.
                continue;
            }
            if let Some(over) = used.exceeds(usage, &e.soft.softs()) {
                return Err(exceeded(LimitKind::Soft { grace_ended_at }, None, over));
            }
        }
        Ok(())
    }

    /// Refuses new work if `tenant`'s own window limits are spent (one more job today or this
    /// week, or any more cpu time this week or month).
    pub(super) fn check_windows(&self, tenant: &TenantId) -> Result<(), Rejection> {
        let t = self.tenant(tenant)?;
        let limits = &t.quota.windows;
        if limits.is_unlimited() {
            return Ok(());
        }
        let now = t.windows.at(self.state.now, t.usage.total.cpu_millis).usage();
        let refuse = |window, limit, used, resets_at| Rejection::WindowExhausted {
            limited_by: tenant.clone(),
            window,
            limit,
            used,
            resets_at,
        };
        if let Some(limit) = limits.jobs_per_day.filter(|l| now.jobs_today >= *l) {
            return Err(refuse(Window::JobsPerDay, limit, now.jobs_today, now.day_resets_at));
        }
        if let Some(limit) = limits.jobs_per_week.filter(|l| now.jobs_this_week >= *l) {
            return Err(refuse(Window::JobsPerWeek, limit, now.jobs_this_week, now.week_resets_at));
        }
        let used = u64::try_from(now.cpu_milli_ms_this_week).unwrap_or(u64::MAX);
        if let Some(limit) = limits.cpu_milli_ms_per_week.filter(|l| used >= *l) {
            return Err(refuse(Window::CpuMilliMsPerWeek, limit, used, now.week_resets_at));
        }
        let used = u64::try_from(now.cpu_milli_ms_this_month).unwrap_or(u64::MAX);
        if let Some(limit) = limits.cpu_milli_ms_per_month.filter(|l| used >= *l) {
            return Err(refuse(Window::CpuMilliMsPerMonth, limit, used, now.month_resets_at));
        }
        Ok(())
    }

    /// Brings every tenant in `tenants` to the burst state its usage and effective soft limits
    /// call for, recording the events. Call after any change to usage or quotas.
    pub(super) fn settle_bursts(&mut self, tenants: &[TenantId]) {
        for id in tenants {
            self.settle_burst(id);
            self.settle_utilisation(id);
        }
    }

    /// Brings `id`'s utilisation alerts to what its usage and quota say, reporting each change.
    fn settle_utilisation(&mut self, id: &TenantId) {
        let t = self.state.tenants.get(id).expect("invariant: settled tenant exists");
        let now: BTreeMap<(Option<PoolId>, Dimension), (u64, u64)> = high_utilisation(t).collect();
        let percent = t.quota.alert_percent.unwrap_or(0);
        let first = (id.clone(), None, Dimension::CpuMillis);
        let was: Vec<(Option<PoolId>, Dimension)> = self
            .ix
            .utilisation_high
            .range(first..)
            .take_while(|(t, _, _)| t == id)
            .map(|(_, pool, d)| (pool.clone(), *d))
            .collect();
        let mut events = Vec::new();
        for (pool, dimension) in &was {
            if !now.contains_key(&(pool.clone(), *dimension)) {
                self.ix.utilisation_high.remove(&(id.clone(), pool.clone(), *dimension));
                let (tenant, pool, dimension) = (id.clone(), pool.clone(), *dimension);
                events.push(QuotaEvent::UtilisationNormal { tenant, pool, dimension });
            }
        }
        for ((pool, dimension), (used, limit)) in now {
            if self.ix.utilisation_high.insert((id.clone(), pool.clone(), dimension)) {
                let tenant = id.clone();
                events.push(QuotaEvent::UtilisationHigh {
                    tenant,
                    pool,
                    dimension,
                    percent,
                    used,
                    limit,
                });
            }
        }
        for e in events {
            self.emit(Event::Quota(e));
        }
    }

    fn settle_burst(&mut self, id: &TenantId) {
        let e = self.effective_quota(id);
        let now = self.state.now;
        let t = self.state.tenants.get_mut(id).expect("invariant: settled tenant exists");
        let above = e.soft.exceeded_by(&t.usage.total);
        let old = t.burst;
        let new = match (above, old) {
            (false, _) => None,
            (true, None) => {
                Some(Burst { since: now, grace_ends_at: now.plus_ms(e.grace_ms), expired: false })
            }
            // The grace period may have changed with a quota.
            (true, Some(b)) if !b.expired => {
                Some(Burst { grace_ends_at: b.since.plus_ms(e.grace_ms), ..b })
            }
            (true, Some(b)) => Some(b),
        };
        let new = new.map(|b| Burst { expired: b.expired || b.grace_ends_at <= now, ..b });
        if old == new {
            return;
        }
        t.burst = new;
        if let Some(b) = old.filter(|b| !b.expired) {
            let removed = self.ix.deadlines.remove(&(b.grace_ends_at, Deadline::Grace(id.clone())));
            assert!(removed, "invariant: a running grace period has a deadline");
        }
        if let Some(b) = new.filter(|b| !b.expired) {
            self.ix.deadlines.insert((b.grace_ends_at, Deadline::Grace(id.clone())));
        }
        let tenant = id.clone();
        match (old, new) {
            (Some(_), None) => self.emit(Event::Quota(QuotaEvent::ReturnedUnderSoft { tenant })),
            (None, Some(b)) => {
                let grace_ends_at = b.grace_ends_at;
                let entered = QuotaEvent::BurstEntered { tenant: tenant.clone(), grace_ends_at };
                self.emit(Event::Quota(entered));
                if b.expired {
                    self.emit(Event::Quota(QuotaEvent::GraceExpired { tenant }));
                }
            }
            (Some(o), Some(b)) if b.expired && !o.expired => {
                self.emit(Event::Quota(QuotaEvent::GraceExpired { tenant }))
            }
            _ => {}
        }
    }

    /// The tenant and all its descendants, parents before children.
    pub(super) fn subtree(&self, tenant: &TenantId) -> Vec<TenantId> {
        let mut out = vec![tenant.clone()];
        let mut next = 0;
        while let Some(id) = out.get(next).cloned() {
            next += 1;
            if let Some(t) = self.state.tenants.get(&id) {
                out.extend(t.children.iter().cloned());
            }
        }
        out
    }
}

/// The hard limits of `t`'s own quota (in total, then per pool) its subtree's usage is at or
/// above `alert_percent` of, with (used, limit). Zero limits are left out.
pub fn high_utilisation(
    t: &Tenant,
) -> impl Iterator<Item = ((Option<PoolId>, Dimension), (u64, u64))> + '_ {
    let percent = t.quota.alert_percent.map_or(0, u128::from);
    let total = std::iter::once((None, &t.quota.total, t.usage.total));
    let pools = t.quota.pools.iter().map(|(p, l)| (Some(p), l, t.usage.pool(p)));
    total.chain(pools).filter(move |_| percent > 0).flat_map(move |(pool, limits, used)| {
        Dimension::ALL.into_iter().filter_map(move |d| {
            let limit = limits.get(d).filter(|l| *l > 0)?;
            let high = u128::from(used.get(d)) * 100 >= u128::from(limit) * percent;
            high.then(|| ((pool.cloned(), d), (used.get(d), limit)))
        })
    })
}
