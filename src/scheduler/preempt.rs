//! Priority preemption and reclaiming guarantees from borrowers.
//!
//! When a placement (a `Place`, a `Reserve`, a queue admission, or a dry run of one) is refused
//! for capacity (`NO_CAPACITY`, `NOT_LENDABLE`) or quota (`QUOTA_EXCEEDED`), the core may
//! release other placements to make it fit, in the same `apply`:
//!
//! - **By priority**, where the tenant's effective `Quota::preemption` allows it: placements of
//!   *strictly lower* priority, of the same tenant (`SameTenant`) or of any tenant
//!   (`AnyTenant`). In a pool with guarantees, another tenant's work placed within its
//!   guarantee (not `borrowed`) is never a priority victim (a guarantee outranks priority
//!   across tenants), and work that would itself borrow takes no other tenant's work by
//!   priority (its victim could reclaim it right back).
//! - **Reclaim**, when the placement stays within its tenant's guaranteed share of the pool:
//!   placements of tenants above their own share (borrowers), whatever their priority.
//!
//! Victims are chosen deterministically: borrowers first, then lowest priority, then most
//! recent (log index, then placement time), then by tenant and id; except that for a lack of
//! capacity, a borrower with an instance on a worker that could then take an instance of the
//! placement goes before other borrowers (so reclaim does not give up early: see
//! `next_victim`). A victim is released only if
//! it can help with what refuses the placement *at that point*: for capacity it runs in the
//! pool; for a quota it belongs to the limiting tenant's subtree, runs in the limited pool (if
//! the limit is per pool) and uses the limited dimension. Victims are released one at a time on
//! a scratch copy until the placement fits; only then are they released for real (each reported
//! as a `Preempted` event, and re-queued if its spec asks) and the placement made. If it cannot
//! fit with up to `PREEMPT_VICTIMS_MAX` victims, nothing is preempted and the first refusal is
//! returned. Reservations are never preempted, nor the carrier of a required-affinity label that
//! a placement made earlier in the same entry stands next to (`anchors_of_this_entry`).
//!
//! No cycles: a priority victim has strictly lower priority than its preemptor, so it can never
//! preempt the preemptor back by priority; a cross-tenant priority preemptor in a pool with
//! guarantees stays within its own share, so neither it nor any work of its tenant is
//! reclaimable; a reclaim victim's tenant is above its share and the claimant within its own,
//! so the claimant's work is never a reclaim victim of that tenant's. An entry
//! preempts at most `PREEMPTIONS_PER_ENTRY_MAX` placements, so admission (which may re-queue
//! victims) always ends.
//!
//! Cost: a preempting attempt works on a copy of the state (O(state)); it is tried only when the
//! policy or a guarantee allows it and some candidate exists.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};

use super::command::{PlaceSpec, Rejection};
use super::events::{Event, QueueCause, ReleaseReason};
use super::ids::{LogIndex, PlacementId, PoolId, TenantId, UnixMillis, WorkerId, DEFAULT_POOL};
use super::jobs::Explain;
use super::queue::QUEUE_MAX;
use super::quota::{Preemption, QuotaEvent, Usage};
use super::resources::Resources;
use super::state::Placement;
use super::Scheduler;

/// Most placements one placement may preempt.
pub const PREEMPT_VICTIMS_MAX: usize = 64;
/// Most placements one log entry may preempt (all its placements and admissions together).
pub const PREEMPTIONS_PER_ENTRY_MAX: u64 = 256;

/// A placement that may be released for the one being placed.
#[derive(Clone, Debug)]
struct Candidate {
    key: (TenantId, PlacementId),
    /// Eligible by priority (strictly lower, allowed by the policy).
    by_priority: bool,
    /// Eligible by reclaim (its tenant is above its share; rechecked before each release).
    by_reclaim: bool,
}

/// Victim order: borrowers (reclaimable) first, then lowest priority, then most recent.
type VictimOrder = (bool, i32, Reverse<LogIndex>, Reverse<UnixMillis>);

/// Refusals that releasing other work may cure.
fn preemptable(r: &Rejection) -> bool {
    matches!(
        r,
        Rejection::NoCapacity { .. }
            | Rejection::NotLendable { .. }
            | Rejection::QuotaExceeded { .. }
    )
}

impl Scheduler {
    /// Places (or reserves) `spec` like `try_place`, preempting lower-priority work or
    /// borrowers if that is what it takes and the rules allow (module header).
    pub(super) fn place(
        &mut self,
        index: LogIndex,
        tenant: TenantId,
        spec: PlaceSpec,
        expires_at: Option<UnixMillis>,
        explain: Explain<'_>,
        from_queue: bool,
    ) -> Result<Placement, Rejection> {
        let first =
            self.try_place(index, tenant.clone(), spec.clone(), expires_at, explain, from_queue);
        let refused = match first {
            Ok(p) => return Ok(p),
            Err(r) => r,
        };
        if !preemptable(&refused) || self.preempted >= PREEMPTIONS_PER_ENTRY_MAX {
            return Err(refused);
        }
        let Some(victims) = self.choose_victims(index, &tenant, &spec, expires_at, &refused) else {
            return Err(refused);
        };
        let mut requeue = Vec::new();
        for (key, reclaimed) in &victims {
            let reason = ReleaseReason::Preempted {
                by_tenant: tenant.clone(),
                by_placement: spec.placement.clone(),
                reclaimed: *reclaimed,
            };
            let victim = self.unplace(&key.0, &key.1, Some(reason));
            let victim = victim.expect("invariant: a chosen victim is placed");
            self.preempted += 1;
            let requeued = victim.spec.requeue_on_preemption
                && self.state.queue.len() + requeue.len() < QUEUE_MAX;
            self.emit(Event::Quota(QuotaEvent::Preempted {
                tenant: key.0.clone(),
                placement: key.1.clone(),
                by_tenant: tenant.clone(),
                by_placement: spec.placement.clone(),
                reclaimed: *reclaimed,
                requeued,
            }));
            if requeued {
                requeue.push(victim);
            }
        }
        let placed = self
            .try_place(index, tenant, spec, expires_at, Explain::Nothing, from_queue)
            .expect("invariant: fits once its victims are released, as it did on the copy");
        for victim in requeue {
            let cause = QueueCause::Preempted;
            self.enqueue(index, victim.tenant, victim.spec, victim.pool, cause);
        }
        Ok(placed)
    }

    /// The victims (with whether each is reclaimed) that make `spec` fit, in release order, or
    /// `None` if the rules allow none that do.
    fn choose_victims(
        &self,
        index: LogIndex,
        tenant: &TenantId,
        spec: &PlaceSpec,
        expires_at: Option<UnixMillis>,
        refused: &Rejection,
    ) -> Option<Vec<((TenantId, PlacementId), bool)>> {
        let pool = spec.pool.clone().unwrap_or_else(|| PoolId::new(DEFAULT_POOL));
        let policy = self.effective_quota(tenant).preemption;
        let total = spec.resources.checked_mul(u64::from(spec.count))?;
        let reclaiming = self.within_guarantee(tenant, &pool, total);
        if policy == Preemption::Never && !reclaiming {
            return None;
        }
        // In a pool with guarantees, work that would borrow may not take other tenants' work
        // by priority: the victim could reclaim it right back (a cycle).
        let borrows_here = self.ix.guaranteed.contains_key(&pool) && !reclaiming;
        let anchors = self.anchors_of_this_entry(index);
        let mut candidates: Vec<(Candidate, VictimOrder)> = self
            .state
            .placements
            .iter()
            .filter(|(key, p)| !p.is_reservation() && !anchors.contains(key))
            .filter_map(|(key, p)| {
                // Another tenant's work placed within its guarantee is never a priority
                // victim: a guarantee outranks priority across tenants.
                let guaranteed = !p.borrowed && self.ix.guaranteed.contains_key(&p.pool);
                let by_priority = p.spec.priority < spec.priority
                    && match policy {
                        Preemption::Never => false,
                        Preemption::SameTenant => p.tenant == *tenant,
                        Preemption::AnyTenant => {
                            p.tenant == *tenant || (!guaranteed && !borrows_here)
                        }
                    };
                let by_reclaim = reclaiming && self.reclaimable(p, tenant);
                (by_priority || by_reclaim).then(|| {
                    let order =
                        (!by_reclaim, p.spec.priority, Reverse(p.log_index), Reverse(p.placed_at));
                    (Candidate { key: key.clone(), by_priority, by_reclaim }, order)
                })
            })
            .collect();
        if candidates.is_empty() {
            return None;
        }
        // Stable sort: equal orders stay in key (tenant, id) order.
        candidates.sort_by_key(|c| c.1);
        let mut scratch = self.scratch();
        let mut refused = refused.clone();
        let mut chosen = Vec::new();
        let left = PREEMPTIONS_PER_ENTRY_MAX.saturating_sub(self.preempted);
        let max = PREEMPT_VICTIMS_MAX.min(usize::try_from(left).unwrap_or(usize::MAX));
        loop {
            if chosen.len() >= max {
                return None;
            }
            let next = scratch.next_victim(&candidates, &refused, tenant, spec)?;
            let (c, _) = candidates.remove(next);
            // Reclaimed if that is what made it eligible now (a borrower goes first either way).
            let reclaimed =
                c.by_reclaim && scratch.reclaimable(&scratch.state.placements[&c.key], tenant);
            let released = scratch.unplace(&c.key.0, &c.key.1, None);
            released.expect("invariant: candidates are placed");
            chosen.push((c.key, reclaimed));
            match scratch.try_place(
                index,
                tenant.clone(),
                spec.clone(),
                expires_at,
                Explain::Nothing,
                false,
            ) {
                Ok(_) => return Some(chosen),
                Err(r) if preemptable(&r) => refused = r,
                Err(_) => return None,
            }
        }
    }

    /// Placements that carry a required-affinity label next to an instance of a placement made
    /// earlier in this entry (`index`). They are never victims: no reader ever saw that
    /// placement without its carrier, so releasing the carrier in the same entry would place it
    /// against its own rule. (A later entry may release the carrier: affinity is checked when a
    /// placement is made, as Kubernetes' `requiredDuringSchedulingIgnoredDuringExecution`.)
    fn anchors_of_this_entry(&self, index: LogIndex) -> BTreeSet<(TenantId, PlacementId)> {
        // (Placements whose lost instances moved in this entry stand where they are as newly.)
        let fresh: Vec<&Placement> = self
            .state
            .placements
            .iter()
            .filter(|(key, p)| {
                (p.log_index == index || self.moved.contains(*key)) && !p.spec.affinity.is_empty()
            })
            .map(|(_, p)| p)
            .collect();
        if fresh.is_empty() {
            return BTreeSet::new();
        }
        self.state
            .placements
            .iter()
            .filter(|(_, carrier)| {
                fresh.iter().any(|p| {
                    p.tenant == carrier.tenant
                        && p.instances.iter().any(|w| carrier.instances.contains(w))
                        && p.spec
                            .affinity
                            .iter()
                            .any(|t| carrier.spec.labels.get(&t.key) == Some(&t.value))
                })
            })
            .map(|(key, _)| key.clone())
            .collect()
    }

    /// The next candidate to release: the first one in victim order that may be released, except
    /// that for a lack of capacity a reclaim candidate with an instance on a worker that could
    /// then take an instance of `spec` (its free capacity plus what reclaim candidates hold
    /// there) goes first. Otherwise releasing a borrower's work elsewhere could bring it down to
    /// its share with nothing gained, and the victim that would have made room could no longer
    /// be reclaimed.
    fn next_victim(
        &self,
        candidates: &[(Candidate, VictimOrder)],
        refused: &Rejection,
        claimant: &TenantId,
        spec: &PlaceSpec,
    ) -> Option<usize> {
        let eligible: Vec<usize> = (0..candidates.len())
            .filter(|i| self.may_release(&candidates[*i].0, refused, claimant))
            .collect();
        let first = *eligible.first()?;
        if !matches!(refused, Rejection::NoCapacity { .. }) {
            return Some(first);
        }
        let reclaim: Vec<&Placement> = eligible
            .iter()
            .map(|i| &candidates[*i].0)
            .filter(|c| c.by_reclaim)
            .map(|c| &self.state.placements[&c.key])
            .collect();
        let mut held: BTreeMap<&WorkerId, Resources> = BTreeMap::new();
        for p in &reclaim {
            for w in &p.instances {
                let slot = held.entry(w).or_default();
                *slot = slot.checked_add(p.spec.resources).unwrap_or(*slot);
            }
        }
        let room = |w: &WorkerId| {
            let worker = &self.state.workers[w];
            let free = worker.free().checked_add(held[w]).unwrap_or(Resources::ZERO);
            worker.accepts_work()
                && spec.resources.fits_in(free)
                && spec.worker_requires.iter().all(|r| r.matches(&worker.labels))
        };
        let useful = eligible.into_iter().find(|i| {
            let c = &candidates[*i].0;
            c.by_reclaim && self.state.placements[&c.key].instances.iter().any(room)
        });
        Some(useful.unwrap_or(first))
    }

    /// True when releasing candidate `c` (on this state) is allowed and can help with `refused`.
    fn may_release(&self, c: &Candidate, refused: &Rejection, claimant: &TenantId) -> bool {
        let Some(p) = self.state.placements.get(&c.key) else { return false };
        let eligible = c.by_priority
            || (c.by_reclaim
                && matches!(refused, Rejection::NoCapacity { .. })
                && self.reclaimable(p, claimant));
        if !eligible {
            return false;
        }
        match refused {
            Rejection::NoCapacity { pool, .. } | Rejection::NotLendable { pool, .. } => {
                p.pool == *pool
            }
            Rejection::QuotaExceeded { limited_by, pool, dimension, .. } => {
                let usage = Usage::of_job(p.spec.resources, p.spec.count).unwrap_or_default();
                self.lineage(&p.tenant).contains(limited_by)
                    && pool.as_ref().is_none_or(|scope| p.pool == *scope)
                    && usage.get(*dimension) > 0
            }
            _ => false,
        }
    }
}
