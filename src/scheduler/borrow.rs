//! Guaranteed pool shares, borrowing and lending (Kueue's nominal quota, borrowingLimit and
//! lendingLimit, in exact integer units of cpu_millis and memory_mib).
//!
//! A tenant may set a guarantee per pool (`Quota::guarantees`): a `nominal` share, a
//! `borrowing_limit` (how far its subtree's usage in the pool may go above nominal) and a
//! `lending_limit` (how much of its *unused* nominal others may borrow). Guarantees are not
//! inherited. In a pool where some tenant holds a guarantee:
//!
//! - A placement *borrows* when it takes its tenant's subtree usage in the pool above the
//!   tenant's nominal (0 without a guarantee) in cpu or memory; it is marked `borrowed`.
//! - Borrowing is refused (`QUOTA_EXCEEDED`, `limit_kind=borrowing`) beyond a borrowing limit
//!   (the tenant's, or an ancestor's: a borrowing limit caps the setter's whole subtree),
//!   and refused (`NOT_LENDABLE`) when it would leave the pool's free capacity below what is
//!   *held for lenders*: for every other tenant with a guarantee (not the borrower nor its
//!   ancestors), its unused nominal minus what it lends, `idle - min(idle, lending_limit)`.
//! - A tenant placing within its nominal that finds no capacity *reclaims*: borrowed placements
//!   of tenants still above their own nominal are preempted, whatever their priority, lowest
//!   priority first, most recent first, until it fits (`preempt.rs`). Work placed within its
//!   tenant's share, and work of a tenant back within its share, is never a reclaim victim,
//!   so reclaim never runs the other way round.
//!
//! A pool may hold a *reserve* (`SetPoolReserve`, Kueue's cohort-level nominal quota): capacity
//! that is nobody's guarantee, so it stays open to borrowers (and to work without a guarantee).
//! In a pool with a reserve, a change that raises the sum of every tenant's nominal guarantee
//! there plus the reserve above the pool's schedulable capacity, in cpu or memory, is refused
//! (`POOL_OVERCOMMITTED`); lowering either is always allowed. The reserve is a split of the
//! capacity, not a check at admission: as long as the pool keeps that capacity, guaranteed work
//! fits its nominal share and borrowing, by anyone, has at least the reserve. A pool that later
//! shrinks (a worker drained or removed) stops nothing: guarantees keep their claim, and the
//! reserve is what is left (`PoolStatus::shortfall` says how much is missing). A pool without a
//! reserve keeps guarantees as pure accounting, unchecked against its capacity (they may be set
//! before its workers are registered).
//!
//! Must not depend on anything outside the core.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

use super::command::Response;
use super::ids::{PoolId, TenantId};
use super::quota::{Dimension, Guarantee, LimitKind};
use super::resources::Resources;
use super::state::Placement;
use super::{Rejection, Scheduler};

/// Most pools that may hold a reserve.
pub const POOL_RESERVES_MAX: usize = 10_000;

/// A pool's capacity and how it is split between guarantees and the reserve.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolStatus {
    pub pool: PoolId,
    /// Workers in the pool, schedulable or not.
    pub workers: u64,
    /// Capacity of its schedulable workers.
    pub capacity: Resources,
    pub free: Resources,
    pub reserve: Option<Resources>,
    /// The sum of every tenant's nominal guarantee in the pool (saturating at `u64::MAX`).
    pub guaranteed: Resources,
    /// Tenants holding a guarantee in the pool.
    pub guarantees: u64,
    /// How far guarantees plus the reserve exceed the capacity (zero while they fit).
    pub shortfall: Resources,
    /// Workers of the pool that are down (their capacity is out of `capacity`).
    pub down: u64,
    /// The TTL a heartbeat gives the pool's workers.
    pub worker_ttl_ms: u64,
}

/// A sum of guarantees per dimension (cpu, memory), wide enough never to overflow.
type Sum = [u128; 2];

fn wide(r: Resources) -> Sum {
    [u128::from(r.cpu_millis), u128::from(r.memory_mib)]
}

fn narrow(s: Sum) -> Resources {
    let n = |v: u128| u64::try_from(v).unwrap_or(u64::MAX);
    Resources::new(n(s[0]), n(s[1]))
}

/// The two dimensions a guarantee covers, with their values in `r`.
fn dims(r: Resources) -> [(Dimension, u64); 2] {
    [(Dimension::CpuMillis, r.cpu_millis), (Dimension::MemoryMib, r.memory_mib)]
}

fn pick(r: Resources, d: Dimension) -> u64 {
    match d {
        Dimension::MemoryMib => r.memory_mib,
        _ => r.cpu_millis,
    }
}

impl Scheduler {
    /// The sum of every tenant's nominal guarantee in `pool`.
    fn guaranteed_sum(&self, pool: &PoolId) -> Sum {
        let mut sum = [0u128; 2];
        for tenant in self.ix.guaranteed.get(pool).into_iter().flatten() {
            let n = wide(self.state.tenants[tenant].quota.guarantees[pool].nominal);
            sum = [sum[0] + n[0], sum[1] + n[1]];
        }
        sum
    }

    /// Where `pool` holds a reserve (`new_reserve`), refuses a change of its guarantees (their
    /// sum, `old_sum` to `new_sum`) or of its reserve that raises their total in a dimension
    /// above the pool's schedulable capacity. Lowering is always allowed, so a pool that shrank
    /// can still be put right.
    fn check_split(
        &self,
        pool: &PoolId,
        (old_sum, old_reserve): (Sum, Option<Resources>),
        (new_sum, new_reserve): (Sum, Option<Resources>),
    ) -> Result<(), Rejection> {
        let Some(reserve) = new_reserve else { return Ok(()) };
        let (old_reserve, new_reserve) = (wide(old_reserve.unwrap_or_default()), wide(reserve));
        let capacity = wide(self.ix.pool_capacity(pool));
        for (i, d) in [Dimension::CpuMillis, Dimension::MemoryMib].into_iter().enumerate() {
            let (before, after) = (old_sum[i] + old_reserve[i], new_sum[i] + new_reserve[i]);
            if after > before && after > capacity[i] {
                return Err(Rejection::PoolOvercommitted {
                    pool: pool.clone(),
                    dimension: d,
                    capacity: pick(narrow(capacity), d),
                    guaranteed: pick(narrow(new_sum), d),
                    reserve: pick(reserve, d),
                });
            }
        }
        Ok(())
    }

    /// Refuses a tenant's guarantees changing from `old` to `new` where that overcommits a pool
    /// with a reserve (module header).
    pub(super) fn check_guarantees_fit(
        &self,
        old: &BTreeMap<PoolId, Guarantee>,
        new: &BTreeMap<PoolId, Guarantee>,
    ) -> Result<(), Rejection> {
        let pools: BTreeSet<&PoolId> = old.keys().chain(new.keys()).collect();
        for pool in pools {
            let Some(reserve) = self.state.pool_reserves.get(pool) else { continue };
            let nominal = |g: &BTreeMap<PoolId, Guarantee>| {
                wide(g.get(pool).map(|g| g.nominal).unwrap_or_default())
            };
            let (was, will) = (nominal(old), nominal(new));
            if was == will {
                continue;
            }
            let sum = self.guaranteed_sum(pool);
            let after = [sum[0] - was[0] + will[0], sum[1] - was[1] + will[1]];
            self.check_split(pool, (sum, Some(*reserve)), (after, Some(*reserve)))?;
        }
        Ok(())
    }

    /// `SetPoolReserve`: holds `reserve` of `pool` back from guarantees, or with `None` stops.
    pub(super) fn set_pool_reserve(
        &mut self,
        pool: PoolId,
        reserve: Option<Resources>,
    ) -> Result<Response, Rejection> {
        let old = self.state.pool_reserves.get(&pool).copied();
        if old.is_none() && reserve.is_some() && self.state.pool_reserves.len() >= POOL_RESERVES_MAX
        {
            return Err(Rejection::LimitReached {
                what: "pools with a reserve".into(),
                max: super::count_u64(POOL_RESERVES_MAX),
            });
        }
        let sum = self.guaranteed_sum(&pool);
        self.check_split(&pool, (sum, old), (sum, reserve))?;
        match reserve {
            Some(r) => self.state.pool_reserves.insert(pool, r),
            None => self.state.pool_reserves.remove(&pool),
        };
        Ok(Response::PoolReserveSet)
    }

    /// How `pool` is split between guarantees and its reserve; `None` for a pool with no
    /// workers, no reserve and no guarantees.
    pub fn pool_status(&self, pool: &PoolId) -> Option<PoolStatus> {
        let workers = self.ix.pool_workers.get(pool).map_or(0, |w| w.len());
        let reserve = self.state.pool_reserves.get(pool).copied();
        let guarantees = self.ix.guaranteed.get(pool).map_or(0, |g| g.len());
        if workers == 0 && reserve.is_none() && guarantees == 0 {
            return None;
        }
        let sum = self.guaranteed_sum(pool);
        let (capacity, held) =
            (wide(self.ix.pool_capacity(pool)), wide(reserve.unwrap_or_default()));
        let short = |i: usize| (sum[i] + held[i]).saturating_sub(capacity[i]);
        Some(PoolStatus {
            pool: pool.clone(),
            workers: super::count_u64(workers),
            capacity: narrow(capacity),
            free: self.ix.pool_free(pool),
            reserve,
            guaranteed: narrow(sum),
            guarantees: super::count_u64(guarantees),
            shortfall: narrow([short(0), short(1)]),
            down: super::count_u64(
                self.ix
                    .pool_workers
                    .get(pool)
                    .into_iter()
                    .flatten()
                    .filter(|w| self.state.workers.get(*w).is_some_and(|w| w.is_down()))
                    .count(),
            ),
            worker_ttl_ms: self.worker_ttl_ms(pool),
        })
    }

    /// The guarantee `tenant` itself sets in `pool`.
    pub fn guarantee(&self, tenant: &TenantId, pool: &PoolId) -> Option<Guarantee> {
        self.state.tenants.get(tenant).and_then(|t| t.quota.guarantees.get(pool)).copied()
    }

    /// What `tenant`'s subtree holds in `pool` above its nominal (all of it without a
    /// guarantee), per dimension; zero in a pool where nobody holds a guarantee.
    pub fn borrowed(&self, tenant: &TenantId, pool: &PoolId) -> Resources {
        if !self.ix.guaranteed.contains_key(pool) {
            return Resources::ZERO;
        }
        let Some(t) = self.state.tenants.get(tenant) else { return Resources::ZERO };
        let used = t.usage.pool(pool);
        let nominal = self.guarantee(tenant, pool).map(|g| g.nominal).unwrap_or(Resources::ZERO);
        Resources::new(
            used.cpu_millis.saturating_sub(nominal.cpu_millis),
            used.memory_mib.saturating_sub(nominal.memory_mib),
        )
    }

    /// Capacity in `pool` held back for the unlent, unused guarantees of every tenant with a
    /// guarantee there except `borrower` and its ancestors.
    pub fn held_for_lenders(&self, pool: &PoolId, borrower: &TenantId) -> Resources {
        let Some(lenders) = self.ix.guaranteed.get(pool) else { return Resources::ZERO };
        let lineage = self.lineage(borrower);
        let mut held = Resources::ZERO;
        for lender in lenders.iter().filter(|l| !lineage.contains(l)) {
            let t = &self.state.tenants[lender];
            let g = t.quota.guarantees[pool];
            let used = t.usage.pool(pool);
            let idle = Resources::new(
                g.nominal.cpu_millis.saturating_sub(used.cpu_millis),
                g.nominal.memory_mib.saturating_sub(used.memory_mib),
            );
            let lent = match g.lending_limit {
                None => idle,
                Some(l) => Resources::new(
                    idle.cpu_millis.min(l.cpu_millis),
                    idle.memory_mib.min(l.memory_mib),
                ),
            };
            let kept = idle.checked_sub(lent).expect("invariant: lent <= idle");
            held = Resources::new(
                held.cpu_millis.saturating_add(kept.cpu_millis),
                held.memory_mib.saturating_add(kept.memory_mib),
            );
        }
        held
    }

    /// Checks the borrowing rules for `add` more in `pool` by `tenant`'s subtree. `Ok(true)`
    /// when the placement borrows.
    pub(super) fn check_borrowing(
        &self,
        tenant: &TenantId,
        pool: &PoolId,
        add: Resources,
    ) -> Result<bool, Rejection> {
        if !self.ix.guaranteed.contains_key(pool) {
            return Ok(false);
        }
        // Borrowing limits cap the whole subtree of the tenant that sets them, like hard limits.
        for ancestor in self.lineage(tenant) {
            let Some(g) = self.guarantee(&ancestor, pool) else { continue };
            let Some(limit) = g.borrowing_limit else { continue };
            let used = self.tenant(&ancestor)?.usage.pool(pool);
            let used = Resources::new(used.cpu_millis, used.memory_mib);
            for (d, requested) in dims(add) {
                let before = pick(used, d);
                let ceiling = pick(g.nominal, d).saturating_add(pick(limit, d));
                if requested > 0 && before.saturating_add(requested) > ceiling {
                    return Err(Rejection::QuotaExceeded {
                        limited_by: ancestor.clone(),
                        kind: LimitKind::Borrowing,
                        dimension: d,
                        pool: Some(pool.clone()),
                        limit: ceiling,
                        used: before,
                        requested,
                    });
                }
            }
        }
        let t = self.tenant(tenant)?;
        let used = t.usage.pool(pool);
        let used = Resources::new(used.cpu_millis, used.memory_mib);
        let nominal = self.guarantee(tenant, pool).map(|g| g.nominal).unwrap_or(Resources::ZERO);
        let borrowing = dims(add).map(|(d, requested)| {
            requested > 0 && pick(used, d).saturating_add(requested) > pick(nominal, d)
        });
        self.check_lendable(tenant, pool, add, borrowing)?;
        Ok(borrowing.contains(&true))
    }

    /// Refuses (`NOT_LENDABLE`) taking `add` of `pool`'s free capacity, in the dimensions
    /// (cpu, memory) where `borrowing` says the tenant borrows, if that leaves less free than
    /// is held for other tenants' unlent guarantees. Also the rule for moving the lost
    /// instances of borrowed work (`liveness.rs`): a borrower never takes held capacity.
    pub(super) fn check_lendable(
        &self,
        tenant: &TenantId,
        pool: &PoolId,
        add: Resources,
        borrowing: [bool; 2],
    ) -> Result<(), Rejection> {
        if !borrowing.contains(&true) || !self.ix.guaranteed.contains_key(pool) {
            return Ok(());
        }
        let free = self.ix.pool_free(pool);
        let held = self.held_for_lenders(pool, tenant);
        for ((d, requested), borrows) in dims(add).into_iter().zip(borrowing) {
            let (f, h) = (pick(free, d), pick(held, d));
            // Short of free capacity altogether is for the worker search to report.
            if borrows && requested <= f && f - requested < h {
                return Err(Rejection::NotLendable {
                    pool: pool.clone(),
                    dimension: d,
                    free: f,
                    held_for_lenders: h,
                    requested,
                });
            }
        }
        Ok(())
    }

    /// The dimensions (cpu, memory) in which `tenant`'s subtree holds more of `pool` than its
    /// nominal share: where it borrows now.
    pub(super) fn borrowing_now(&self, tenant: &TenantId, pool: &PoolId) -> [bool; 2] {
        let over = self.borrowed(tenant, pool);
        [over.cpu_millis > 0, over.memory_mib > 0]
    }

    /// True when `add` more keeps `tenant`'s subtree within its own nominal share of `pool`
    /// (so a lack of capacity may be solved by reclaiming from borrowers).
    pub(super) fn within_guarantee(
        &self,
        tenant: &TenantId,
        pool: &PoolId,
        add: Resources,
    ) -> bool {
        let (Some(g), Some(t)) = (self.guarantee(tenant, pool), self.state.tenants.get(tenant))
        else {
            return false;
        };
        let used = t.usage.pool(pool);
        used.cpu_millis.saturating_add(add.cpu_millis) <= g.nominal.cpu_millis
            && used.memory_mib.saturating_add(add.memory_mib) <= g.nominal.memory_mib
    }

    /// True when `victim` may be reclaimed for `claimant`, which places within its guarantee:
    /// it was placed as borrowed, and its tenant (neither the claimant, nor an ancestor or
    /// descendant of it) still holds more than its nominal share of the pool in a dimension the
    /// victim uses.
    pub(super) fn reclaimable(&self, victim: &Placement, claimant: &TenantId) -> bool {
        if !victim.borrowed
            || !self.ix.guaranteed.contains_key(&victim.pool)
            || victim.is_reservation()
        {
            return false;
        }
        let owner = &victim.tenant;
        if self.lineage(owner).contains(claimant) || self.lineage(claimant).contains(owner) {
            return false;
        }
        let over = self.borrowed(owner, &victim.pool);
        dims(victim.spec.resources).into_iter().any(|(d, uses)| uses > 0 && pick(over, d) > 0)
    }
}
