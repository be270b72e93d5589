//! Hard quotas and usage accounting.
//!
//! A tenant's limits apply to its whole subtree (itself and its descendants), so a parent caps
//! the sum of its children. Usage is kept per subtree, in total and per pool, and is changed only
//! together with the placements it counts (invariant 5 and 2, checked by `check_invariants`).

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use super::ids::PoolId;
use super::resources::Resources;

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

/// Hard limits per dimension; `None` is unlimited.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    pub cpu_millis: Option<u64>,
    pub memory_mib: Option<u64>,
    pub instances: Option<u64>,
    pub jobs: Option<u64>,
}

impl Limits {
    pub fn get(&self, dimension: Dimension) -> Option<u64> {
        match dimension {
            Dimension::CpuMillis => self.cpu_millis,
            Dimension::MemoryMib => self.memory_mib,
            Dimension::Instances => self.instances,
            Dimension::Jobs => self.jobs,
        }
    }
}

/// A tenant's quota: limits on its subtree in total, and optionally per pool.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quota {
    pub total: Limits,
    pub pools: BTreeMap<PoolId, Limits>,
}

/// Quotas may name at most this many pools.
pub const QUOTA_POOLS_MAX: usize = 64;

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
