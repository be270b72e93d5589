//! The fair-share queue: placements that asked to wait (`PlaceOrQueue`) rather than fail for
//! quota or capacity, admitted inside `apply` whenever an entry may have made one fit: it freed
//! capacity or quota, or made room another way (a confirmed reservation may be preempted, a
//! moved instance carries its labels to a new worker for a required affinity).
//!
//! Order, per pool (each pool is its own resource):
//! 1. Entries that have waited `QUEUE_AGING_MS` or more come first, oldest first. An aged entry
//!    that does not fit for capacity stops admission in its pool: nothing younger takes the
//!    capacity it waits for, so no entry waits without bound once it could fit in the pool.
//! 2. Then the lowest weighted dominant-resource share: for cpu and memory, the tenant's usage
//!    in the pool *plus this entry* over the pool's schedulable capacity, the larger of the
//!    two, divided by the tenant's weight. Counting the entry itself is the entry penalty: a
//!    big request or a burst of submissions does not look cheaper than it is. Shares are
//!    exact fractions compared by cross-multiplication (no floats).
//! 3. Ties: the earlier entry (log index), then the tenant id.
//!
//! FIFO within a tenant: only a tenant's oldest entry in a pool is a candidate, so its entries
//! are placed in the order they were queued. An entry that does not fit because of its own
//! tenant's quota (or another reason) is skipped; the others still get their turn.
//!
//! Queued ids share the tenant's placement namespace. Invariants (`check_invariants`): every
//! queued entry belongs to an existing tenant, is not also placed, and the queue is bounded.

use serde::{Deserialize, Serialize};
use std::cmp::Ordering;
use std::collections::BTreeSet;

use super::command::{Fence, PlaceSpec, Rejection, Response};
use super::events::{Event, QueueCause};
use super::ids::{LogIndex, PlacementId, PoolId, TenantId, UnixMillis, DEFAULT_POOL};
use super::jobs::Explain;
use super::quota::{QuotaEvent, Usage};
use super::windows::WindowPolicy;
use super::Scheduler;

/// Most queued placements, all tenants together.
pub const QUEUE_MAX: usize = 100_000;
/// Waiting this long (log time) puts an entry ahead of every younger one in its pool.
pub const QUEUE_AGING_MS: u64 = 600_000;
/// Most placement attempts one admission pass makes per pool, so an entry's cost is bounded
/// however long the queue is.
pub const ADMIT_ATTEMPTS_MAX: usize = 256;

/// A placement waiting in the queue.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueuedPlacement {
    pub tenant: TenantId,
    pub spec: PlaceSpec,
    /// The pool it waits for (the spec's, or the default pool).
    pub pool: PoolId,
    pub queued_at: UnixMillis,
    /// The log index of the `PlaceOrQueue`: FIFO order within the tenant.
    pub log_index: LogIndex,
    /// Since when it is its tenant's oldest entry in the pool, i.e. competing with other
    /// tenants; `None` while behind its own tenant. Aging counts from here, so a tenant's own
    /// backlog does not age its entries past other tenants'.
    pub head_since: Option<UnixMillis>,
}

/// Why a queued placement has not been placed yet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WaitReason {
    /// An earlier entry of the same tenant in the same pool goes first.
    BehindOwnTenant { placement: PlacementId },
    /// It would be refused now with this (quota, capacity, ...).
    Refused(Rejection),
    /// It would fit, but entries ahead in fair order go first.
    FairShareOrder,
}

/// A queued placement with its place in line, as reported to clients.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueStatus {
    pub queued: QueuedPlacement,
    /// 1-based position among the entries of its pool in the current admission order.
    pub position: u64,
    /// Entries waiting in its pool.
    pub pool_queued: u64,
    /// True once it has competed (as its tenant's head) for `QUEUE_AGING_MS`.
    pub aged: bool,
    pub reason: WaitReason,
}

/// The smallest queue index key of `tenant` (a range start).
fn first_of(tenant: &TenantId) -> (TenantId, LogIndex, PlacementId) {
    (tenant.clone(), LogIndex(0), PlacementId::new(""))
}

fn job_usage(queued: &QueuedPlacement) -> Usage {
    Usage::of_job(queued.spec.resources, queued.spec.count).expect("invariant: checked when queued")
}

/// A non-negative fraction; `den == 0` with `num > 0` is infinite.
#[derive(Clone, Copy, Debug)]
struct Fraction {
    num: u128,
    den: u128,
}

/// `a * b` as a 256-bit (high, low) pair, so products of u128 never overflow.
fn mul_wide(a: u128, b: u128) -> (u128, u128) {
    const HALF: u32 = 64;
    let mask = u128::from(u64::MAX);
    let (a_hi, a_lo) = (a >> HALF, a & mask);
    let (b_hi, b_lo) = (b >> HALF, b & mask);
    let lo_lo = a_lo * b_lo;
    let hi_lo = a_hi * b_lo;
    let lo_hi = a_lo * b_hi;
    let hi_hi = a_hi * b_hi;
    let cross = (lo_lo >> HALF) + (hi_lo & mask) + (lo_hi & mask);
    let low = (cross << HALF) | (lo_lo & mask);
    let high = hi_hi + (hi_lo >> HALF) + (lo_hi >> HALF) + (cross >> HALF);
    (high, low)
}

impl Fraction {
    fn cmp(self, other: Fraction) -> Ordering {
        match (self.den == 0 && self.num > 0, other.den == 0 && other.num > 0) {
            (true, true) => Ordering::Equal,
            (true, false) => Ordering::Greater,
            (false, true) => Ordering::Less,
            // a/b vs c/d  <=>  a*d vs c*b (0/0 counts as 0).
            (false, false) => mul_wide(self.num, other.den).cmp(&mul_wide(other.num, self.den)),
        }
    }

    fn max(self, other: Fraction) -> Fraction {
        if self.cmp(other) == Ordering::Less {
            other
        } else {
            self
        }
    }
}

/// What orders a candidate: aged first (oldest first), then weighted share, then log index,
/// then tenant.
struct Key {
    aged: bool,
    share: Fraction,
    log_index: LogIndex,
    tenant: TenantId,
}

impl Key {
    fn cmp(&self, other: &Key) -> Ordering {
        other
            .aged
            .cmp(&self.aged)
            .then_with(|| if self.aged { Ordering::Equal } else { self.share.cmp(other.share) })
            .then_with(|| self.log_index.cmp(&other.log_index))
            .then_with(|| self.tenant.cmp(&other.tenant))
    }
}

impl Scheduler {
    pub(super) fn place_or_queue(
        &mut self,
        index: LogIndex,
        tenant: TenantId,
        spec: PlaceSpec,
        fence: Option<Fence>,
    ) -> Result<Response, Rejection> {
        self.check_tenant_fence(&tenant, fence.as_ref())?;
        let key = (tenant.clone(), spec.placement.clone());
        if self.state.placements.contains_key(&key) || self.state.queue.contains_key(&key) {
            return Err(Rejection::PlacementExists { placement: spec.placement });
        }
        if self.state.queue.len() >= QUEUE_MAX {
            return Err(Rejection::LimitReached { what: "queue".into(), max: QUEUE_MAX as u64 });
        }
        let pool = spec.pool.clone().unwrap_or_else(|| PoolId::new(DEFAULT_POOL));
        // A hard-stopped budget that is spent takes no new work, queued or not.
        self.check_budget(&tenant)?;
        // A spent window of a tenant whose policy is to refuse is refused, not queued.
        for ancestor in self.lineage(&tenant) {
            if let Err(rejection) = self.check_windows(&ancestor) {
                let t = self.tenant(&ancestor)?;
                if t.quota.windows.when_exhausted == WindowPolicy::Refuse {
                    return Err(rejection);
                }
            }
        }
        self.enqueue(index, tenant, spec, pool, QueueCause::Requested);
        self.admit_queued(index);
        if let Some(p) = self.state.placements.get(&key) {
            return Ok(Response::Placed(p.clone()));
        }
        if self.state.queue.contains_key(&key) {
            let status = self.queue_status(&key.0, &key.1).expect("invariant: queued");
            return Ok(Response::Queued(status));
        }
        // Placed, then preempted (and not re-queued) by a later admission of this same entry:
        // the answer is the placement as it was made; the events report the preemption.
        let placed = self.admitted.iter().rev().find(|p| (&p.tenant, p.id()) == (&key.0, &key.1));
        Ok(Response::Placed(
            placed.cloned().expect("invariant: neither placed nor queued, so admitted"),
        ))
    }

    /// Puts `spec` at the back of its tenant's line in `pool` (for `cause`). The caller has
    /// checked that the id is neither placed nor queued and that the queue has room.
    pub(super) fn enqueue(
        &mut self,
        index: LogIndex,
        tenant: TenantId,
        spec: PlaceSpec,
        pool: PoolId,
        cause: QueueCause,
    ) {
        let own = (tenant.clone(), index, spec.placement.clone());
        let first = self.ix.queue.get(&pool).and_then(|entries| {
            entries
                .range(first_of(&tenant)..)
                .next()
                .filter(|((owner, _, _), _)| *owner == tenant)
                .map(|(k, id)| (k.clone(), id.clone()))
        });
        let is_head = match first {
            None => true,
            // Ahead of an entry queued by this same log entry (victims re-queued by one
            // entry go in id order): it takes over as its tenant's head.
            Some((k, id)) if own < k => {
                let q = self.state.queue.get_mut(&(tenant.clone(), id));
                let q = q.expect("invariant: indexed entry is queued");
                let since = q.head_since.take();
                // (A dry run places at log index 0, on a copy that is thrown away.)
                assert!(
                    index == LogIndex(0) || since.is_none_or(|s| s == self.state.now),
                    "invariant: only an entry queued at this log time is overtaken"
                );
                true
            }
            Some(_) => false,
        };
        let key = (tenant.clone(), spec.placement.clone());
        self.emit(Event::Queued { tenant: key.0.clone(), placement: key.1.clone(), cause });
        let queued = QueuedPlacement {
            tenant,
            spec,
            pool,
            queued_at: self.state.now,
            log_index: index,
            head_since: is_head.then_some(self.state.now),
        };
        self.ix.add_queued(&queued);
        let previous = self.state.queue.insert(key, queued);
        assert!(previous.is_none(), "invariant: a queued id is queued once");
        self.queue_dirty = true;
    }

    pub(super) fn cancel_queued(
        &mut self,
        tenant: &TenantId,
        placement: &PlacementId,
    ) -> Result<Response, Rejection> {
        self.tenant(tenant)?;
        let key = (tenant.clone(), placement.clone());
        let removed = self
            .state
            .queue
            .remove(&key)
            .ok_or_else(|| Rejection::NotQueued { placement: placement.clone() })?;
        self.ix.remove_queued(&removed);
        self.promote_head(&removed);
        // The tenant's next entry may now be its head.
        self.queue_dirty = true;
        self.emit(Event::Dequeued { tenant: key.0, placement: key.1 });
        Ok(Response::QueuedCancelled)
    }

    /// Removes every queued entry of `tenant` (tenant deletion). Returns how many.
    pub(super) fn drop_queued_of(&mut self, tenant: &TenantId) -> u64 {
        let keys: Vec<_> = self
            .state
            .queue
            .range((tenant.clone(), PlacementId::new(""))..)
            .take_while(|((owner, _), _)| owner == tenant)
            .map(|(k, _)| k.clone())
            .collect();
        for key in &keys {
            let removed = self.state.queue.remove(key).expect("invariant: listed above");
            self.ix.remove_queued(&removed);
        }
        // One of them may have been an aged entry holding its pool for capacity.
        self.queue_dirty |= !keys.is_empty();
        super::count_u64(keys.len())
    }

    /// Places queued entries that fit now, in fair order, if anything changed in this entry.
    /// A placement may make another fit (a required affinity), so passes repeat while one
    /// admits something; each such pass shortens the queue, so this ends.
    pub(super) fn admit_queued(&mut self, index: LogIndex) {
        while std::mem::take(&mut self.queue_dirty) {
            let pools: Vec<PoolId> = self.ix.queue.keys().cloned().collect();
            for pool in pools {
                self.admit_in_pool(index, &pool);
            }
        }
    }

    fn admit_in_pool(&mut self, index: LogIndex, pool: &PoolId) {
        let mut skipped: BTreeSet<TenantId> = BTreeSet::new();
        for _ in 0..ADMIT_ATTEMPTS_MAX {
            let Some((key, aged)) = self.best_candidate(pool, &skipped) else { return };
            // Out of the queue while it is tried (its id must be free to place), back in the
            // same place if it does not fit.
            let queued = self.state.queue.remove(&key).expect("invariant: candidate queued");
            self.ix.remove_queued(&queued);
            let spec = queued.spec.clone();
            match self.place(index, queued.tenant.clone(), spec, None, Explain::Nothing, true) {
                Ok(placed) => {
                    self.admitted.push(placed);
                    self.promote_head(&queued);
                    let admitted = QuotaEvent::Admitted { tenant: key.0, placement: key.1 };
                    self.emit(Event::Quota(admitted));
                }
                Err(rejection) => {
                    self.ix.add_queued(&queued);
                    self.state.queue.insert(key.clone(), queued);
                    // Reserve the pool for an aged entry waiting for capacity: nothing younger
                    // may take what it needs.
                    if aged && matches!(rejection, Rejection::NoCapacity { .. }) {
                        return;
                    }
                    skipped.insert(key.0);
                }
            }
        }
    }

    /// After `gone` (a head) left the queue, its tenant's next entry in the pool starts
    /// competing now.
    fn promote_head(&mut self, gone: &QueuedPlacement) {
        if gone.head_since.is_none() {
            return;
        }
        let first = first_of(&gone.tenant);
        let next = self.ix.queue.get(&gone.pool).and_then(|entries| {
            entries
                .range(first..)
                .next()
                .filter(|((owner, _, _), _)| *owner == gone.tenant)
                .map(|(_, id)| id.clone())
        });
        if let Some(id) = next {
            let q = self.state.queue.get_mut(&(gone.tenant.clone(), id));
            let q = q.expect("invariant: indexed entry is queued");
            // A victim re-queued while `gone` was out of the queue being placed is already the
            // head (it was queued at this log time).
            assert!(
                q.head_since.is_none_or(|since| since == self.state.now),
                "invariant: one head per tenant and pool"
            );
            q.head_since = Some(self.state.now);
        }
    }

    /// The tenants' head entries in `pool`, each with its ordering key.
    fn candidates(&self, pool: &PoolId) -> Vec<((TenantId, PlacementId), Key)> {
        let Some(entries) = self.ix.queue.get(pool) else { return Vec::new() };
        let capacity = self.ix.pool_capacity(pool);
        let mut out = Vec::new();
        let mut last: Option<&TenantId> = None;
        for ((tenant, log_index, _), id) in entries {
            if last == Some(tenant) {
                continue;
            }
            last = Some(tenant);
            let key = (tenant.clone(), id.clone());
            let queued = &self.state.queue[&key];
            let t = &self.state.tenants[tenant];
            let used = t.usage.pool(pool);
            let add = job_usage(queued);
            let weight = u128::from(t.weight);
            let share = |used: u64, add: u64, cap: u64| Fraction {
                num: u128::from(used) + u128::from(add),
                den: u128::from(cap) * weight,
            };
            let share = share(used.cpu_millis, add.cpu_millis, capacity.cpu_millis).max(share(
                used.memory_mib,
                add.memory_mib,
                capacity.memory_mib,
            ));
            let since = queued.head_since.expect("invariant: a tenant's oldest entry is its head");
            let aged = self.state.now.0.saturating_sub(since.0) >= QUEUE_AGING_MS;
            out.push((key, Key { aged, share, log_index: *log_index, tenant: tenant.clone() }));
        }
        out.sort_by(|a, b| a.1.cmp(&b.1));
        out
    }

    fn best_candidate(
        &self,
        pool: &PoolId,
        skipped: &BTreeSet<TenantId>,
    ) -> Option<((TenantId, PlacementId), bool)> {
        self.candidates(pool)
            .into_iter()
            .find(|(key, _)| !skipped.contains(&key.0))
            .map(|(key, k)| (key, k.aged))
    }

    /// A queued placement's position and why it waits, at the current state.
    pub fn queue_status(&self, tenant: &TenantId, placement: &PlacementId) -> Option<QueueStatus> {
        let key = (tenant.clone(), placement.clone());
        let queued = self.state.queue.get(&key)?.clone();
        let entries = self.ix.queue.get(&queued.pool).expect("invariant: queued entry indexed");
        let aged = queued
            .head_since
            .is_some_and(|since| self.state.now.0.saturating_sub(since.0) >= QUEUE_AGING_MS);
        // Position: tenants' heads in fair order, each followed by nothing of its own tenant;
        // a tenant's later entries are counted after every head (FIFO within the tenant).
        let order = self.candidates(&queued.pool);
        let head = order.iter().position(|(k, _)| *k == key);
        let position = match head {
            Some(i) => i + 1,
            None => {
                let own = (tenant.clone(), queued.log_index, placement.clone());
                let ahead_in_tenant = entries.range(first_of(tenant)..own).count();
                order.len() + ahead_in_tenant
            }
        };
        let reason = match head {
            None => {
                let first = entries
                    .range(first_of(tenant)..)
                    .next()
                    .map(|(_, id)| id.clone())
                    .expect("invariant: the tenant has a head");
                WaitReason::BehindOwnTenant { placement: first }
            }
            // Quota first (cheap); then a trial placement on a scratch copy (O(state)).
            Some(_) => match self.check_quota(tenant, &queued.pool, &job_usage(&queued)) {
                Err(rejection) => WaitReason::Refused(rejection),
                Ok(()) => match self.dry_run_queued(&key).result {
                    Err(rejection) => WaitReason::Refused(rejection),
                    Ok(_) => WaitReason::FairShareOrder,
                },
            },
        };
        Some(QueueStatus {
            queued,
            position: super::count_u64(position),
            pool_queued: super::count_u64(entries.len()),
            aged,
            reason,
        })
    }

    /// How many placements the tenant has waiting.
    pub fn queued_count(&self, tenant: &TenantId) -> u64 {
        let first = (tenant.clone(), PlacementId::new(""));
        let n =
            self.state.queue.range(first..).take_while(|((owner, _), _)| owner == tenant).count();
        super::count_u64(n)
    }

    /// A tenant's queued placements (all tenants with `None`), in id order, after `after`.
    pub fn queue_statuses(
        &self,
        tenant: Option<&TenantId>,
        after: Option<&(TenantId, PlacementId)>,
        limit: usize,
    ) -> Vec<QueueStatus> {
        use std::ops::Bound;
        let start = match after {
            Some(k) => Bound::Excluded(k.clone()),
            None => match tenant {
                Some(t) => Bound::Included((t.clone(), PlacementId::new(""))),
                None => Bound::Unbounded,
            },
        };
        self.state
            .queue
            .range((start, Bound::Unbounded))
            .take_while(|((owner, _), _)| tenant.is_none_or(|t| t == owner))
            .take(limit)
            .filter_map(|((t, id), _)| self.queue_status(t, id))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::{mul_wide, Fraction};
    use std::cmp::Ordering;

    /// The 256-bit product is exact at the extremes, so share comparisons never overflow.
    #[test]
    fn wide_products_are_exact() {
        assert_eq!(mul_wide(u128::MAX, u128::MAX), (u128::MAX - 1, 1));
        assert_eq!(mul_wide(1 << 64, 1 << 64), (1, 0));
        assert_eq!(mul_wide(3, 5), (0, 15));
        let f = |num, den| Fraction { num, den };
        assert_eq!(
            f(u128::MAX, u128::MAX - 1).cmp(f(u128::MAX - 1, u128::MAX - 2)),
            Ordering::Less
        );
        assert_eq!(f(1, 3).cmp(f(2, 6)), Ordering::Equal);
        assert_eq!(f(1, 0).cmp(f(u128::MAX, 1)), Ordering::Greater);
        assert_eq!(f(0, 0).cmp(f(0, 5)), Ordering::Equal);
    }
}
