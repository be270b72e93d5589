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
//! Must not depend on anything outside the core.

use super::ids::{PoolId, TenantId};
use super::quota::{Dimension, Guarantee, LimitKind};
use super::resources::Resources;
use super::state::Placement;
use super::{Rejection, Scheduler};

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
        let free = self.ix.pool_free(pool);
        let mut held = None;
        let mut borrows = false;
        for (d, requested) in dims(add) {
            if requested == 0 || pick(used, d).saturating_add(requested) <= pick(nominal, d) {
                continue;
            }
            borrows = true;
            let held = *held.get_or_insert_with(|| self.held_for_lenders(pool, tenant));
            let (f, h) = (pick(free, d), pick(held, d));
            // Short of free capacity altogether is for the worker search to report.
            if requested <= f && f - requested < h {
                return Err(Rejection::NotLendable {
                    pool: pool.clone(),
                    dimension: d,
                    free: f,
                    held_for_lenders: h,
                    requested,
                });
            }
        }
        Ok(borrows)
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
