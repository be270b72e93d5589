//! Placements, reservations and placement groups.
//!
//! `place` checks group size, quota (up the whole tenant chain) and capacity, then binds every
//! instance, all in one `apply`: either all `count` instances land and usage rises by exactly
//! their sum, or nothing changes.

use super::index::Deadline;
use super::placement::{choose_worker, diagnose, verdicts, Filter};
use serde::{Deserialize, Serialize};

use super::command::FilterCounts;
use super::events::{quota_events, Event, ReleaseReason};
use super::quota::QuotaEvent;
use super::state::{Slot, State};
use super::{
    Fence, GroupId, GroupStrategy, LogIndex, PlaceSpec, Placement, PlacementGroup, PlacementId,
    PoolId, Rejection, Resources, Response, Scheduler, TenantId, UnixMillis, Usage, WorkerId,
    DEFAULT_POOL, GROUPS_MAX, PLACEMENTS_MAX,
};

/// How much a refusal for capacity explains (the scan of the pool costs O(workers)).
pub(super) enum Explain<'a> {
    /// Nothing: the caller only needs to know it did not fit.
    Nothing,
    /// Per-reason worker counts (`NoCapacity::filtered`).
    Counts,
    /// Counts, and each worker's first failing check.
    Workers(&'a mut Vec<(WorkerId, Filter)>),
}

/// What a placement holds: all its instances' resources, and how many instances.
pub(super) fn held(p: &Placement) -> (Resources, u32) {
    let held = p.spec.resources.checked_mul(u64::from(p.spec.count));
    (held.expect("invariant: usage was computed at placement"), p.spec.count)
}

/// Most workers a dry run explains one by one.
pub const VERDICTS_MAX: usize = 1_000;

/// What a `Place` would do now, computed without changing anything (`Scheduler::dry_run`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    /// The placement it would make (with log index 0), or the refusal it would get.
    pub result: Result<Placement, Rejection>,
    /// With `NoCapacity`: each worker of the pool (up to `VERDICTS_MAX`) and the first check it
    /// failed for the instance that found no worker.
    pub workers: Vec<(WorkerId, Filter)>,
    /// The quota events the placement would cause.
    pub events: Vec<QuotaEvent>,
}

impl Scheduler {
    /// The decision `Place { tenant, spec }` would get at the current log time, without changing
    /// anything. Works on a copy of the state, so it costs O(state): for people and CI, not for
    /// hot paths.
    pub fn dry_run(&self, tenant: &TenantId, spec: PlaceSpec) -> Decision {
        self.scratch().decide(tenant, spec)
    }

    /// A copy to try things on: everything a placement reads or writes, without the session
    /// table (a dry run never records a request id).
    pub(super) fn scratch(&self) -> Scheduler {
        let s = &self.state;
        let state = State {
            config: s.config.clone(),
            now: s.now,
            workers: s.workers.clone(),
            tenants: s.tenants.clone(),
            placements: s.placements.clone(),
            groups: s.groups.clone(),
            leases: s.leases.clone(),
            queue: s.queue.clone(),
            sessions: Default::default(),
            pool_reserves: s.pool_reserves.clone(),
            pool_worker_ttls: s.pool_worker_ttls.clone(),
            // A copy never ends a placement it keeps a record of.
            finished: Default::default(),
            // Prices: a budget's spend decides whether work may start.
            price_plans: s.price_plans.clone(),
        };
        let mut ix = self.ix.clone();
        ix.finished_order.clear();
        ix.finished_sizes.clear();
        Scheduler {
            state,
            ix,
            journal: Vec::new(),
            queue_dirty: false,
            preempted: self.preempted,
            admitted: Vec::new(),
            lost: Vec::new(),
            moved: self.moved.clone(),
            applying: self.applying,
            audit: self.audit,
        }
    }

    /// The decision a queued placement would get if it were tried now.
    pub(super) fn dry_run_queued(&self, key: &(TenantId, PlacementId)) -> Decision {
        let mut scratch = self.scratch();
        let queued = scratch.state.queue.remove(key).expect("invariant: asked about a queued");
        scratch.ix.remove_queued(&queued);
        scratch.decide(&queued.tenant, queued.spec)
    }

    /// Places on `self` (a scratch copy) to see what would happen.
    fn decide(mut self, tenant: &TenantId, spec: PlaceSpec) -> Decision {
        let scratch = &mut self;
        let mut workers = Vec::new();
        let result = tenant
            .validate()
            .and_then(|()| spec.validate())
            .and_then(|()| scratch.tenant(tenant).map(|_| ()))
            .and_then(|()| {
                let explain = Explain::Workers(&mut workers);
                scratch.place(LogIndex(0), tenant.clone(), spec, None, explain, false)
            });
        let events = quota_events(&scratch.journal);
        Decision { result, workers, events }
    }

    /// Places (or, with `expires_at`, reserves) every instance of `spec`, or nothing, without
    /// preempting anything (`place` in `preempt.rs` adds that). `explain` says how much a
    /// refusal for capacity explains.
    pub(super) fn try_place(
        &mut self,
        index: LogIndex,
        tenant: TenantId,
        spec: PlaceSpec,
        expires_at: Option<UnixMillis>,
        explain: Explain<'_>,
        from_queue: bool,
    ) -> Result<Placement, Rejection> {
        let key = (tenant.clone(), spec.placement.clone());
        if self.state.placements.contains_key(&key) || self.state.queue.contains_key(&key) {
            return Err(Rejection::PlacementExists { placement: spec.placement });
        }
        if self.state.placements.len() >= PLACEMENTS_MAX {
            return Err(Rejection::LimitReached {
                what: "placements".into(),
                max: PLACEMENTS_MAX as u64,
            });
        }
        let group = match &spec.group {
            None => None,
            Some(id) => {
                let group = self
                    .state
                    .groups
                    .get(&(tenant.clone(), id.clone()))
                    .ok_or_else(|| Rejection::GroupNotFound { group: id.clone() })?;
                let current = self.ix.group_instances(&tenant, id);
                if current + u64::from(spec.count) > u64::from(group.max_instances) {
                    return Err(Rejection::GroupFull {
                        group: id.clone(),
                        max_instances: group.max_instances,
                        current,
                        requested: spec.count,
                    });
                }
                Some(group.clone())
            }
        };
        let pool = spec.pool.clone().unwrap_or_else(|| PoolId::new(DEFAULT_POOL));
        let usage = Usage::of_job(spec.resources, spec.count)
            .expect("invariant: validated resources × count fit in a u64");
        self.check_quota(&tenant, &pool, &usage)?;
        let total = Resources::new(usage.cpu_millis, usage.memory_mib);
        let borrowed = self.check_borrowing(&tenant, &pool, total)?;

        let mut placement = Placement {
            tenant,
            spec,
            pool,
            instances: Vec::new(),
            placed_at: self.state.now,
            log_index: index,
            expires_at,
            borrowed,
            // It came through the queue: a worker loss it cannot survive queues it again.
            queue_if_unavailable: from_queue,
            slots: Vec::new(),
            time_limit_at: None,
        };
        let scan_max = self.state.config.preferred_scan_max;
        for placed in 0..placement.spec.count {
            let chosen = choose_worker(&self.state, &self.ix, &placement, group.as_ref(), scan_max);
            let Some(worker) = chosen else {
                let g = group.as_ref();
                let filtered = match explain {
                    // Queue admission only needs to know it did not fit.
                    Explain::Nothing => FilterCounts::default(),
                    Explain::Counts => {
                        diagnose(&self.state, &self.ix, &placement, g, &placement.pool)
                    }
                    Explain::Workers(out) => {
                        *out = verdicts(&self.state, &self.ix, &placement, g, VERDICTS_MAX);
                        diagnose(&self.state, &self.ix, &placement, g, &placement.pool)
                    }
                };
                for worker in std::mem::take(&mut placement.instances).iter().rev() {
                    self.unbind(&placement, worker);
                }
                return Err(Rejection::NoCapacity {
                    pool: placement.pool,
                    count: placement.spec.count,
                    placed_before_failure: placed,
                    filtered,
                });
            };
            self.bind(&placement, &worker);
            placement.instances.push(worker);
            placement.slots.push(Slot::assigned(index));
        }

        let lineage = self.lineage(&placement.tenant);
        self.roll_windows(&lineage);
        self.meter_tenant(&placement.tenant);
        self.meter_hold(&placement, true);
        for ancestor in &lineage {
            let t = self.state.tenants.get_mut(ancestor).expect("invariant: lineage exists");
            t.usage.add(&placement.pool, usage).expect("invariant: usage checked against limits");
            t.windows.jobs += 1;
            t.windows.jobs_week += 1;
        }
        self.emit(Event::Placed {
            tenant: placement.tenant.clone(),
            placement: placement.id().clone(),
            pool: placement.pool.clone(),
            instances: placement.instances.clone(),
            resources: placement.spec.resources,
            reservation: expires_at.is_some(),
            from_queue,
            expires_at,
        });
        self.settle_bursts(&lineage);
        if let Some(at) = expires_at {
            self.ix.deadlines.insert((
                at,
                Deadline::Reservation(placement.tenant.clone(), placement.id().clone()),
            ));
        }
        if let Some(ms) = placement.spec.max_runtime_ms {
            let at = placement.placed_at.plus_ms(ms);
            placement.time_limit_at = Some(at);
            self.ix.deadlines.insert((
                at,
                Deadline::TimeLimit(placement.tenant.clone(), placement.id().clone()),
            ));
        }
        // The id is in use again: its old record (if any) is forgotten.
        self.forget_finished(&key);
        self.state.placements.insert(key, placement.clone());
        // A queued placement may have waited for this one (a required affinity on its labels),
        // or for an aged entry to stop holding its pool (this placement may have turned that
        // entry's wait from capacity into its tenant's quota, in any pool).
        self.queue_dirty |= !placement.spec.labels.is_empty() || !self.ix.queue.is_empty();
        Ok(placement)
    }

    /// Puts one instance of `placement` on `worker`: capacity and indexes.
    pub(super) fn bind(&mut self, placement: &Placement, worker: &WorkerId) {
        self.adjust_allocation(worker, placement.spec.resources, true);
        self.ix.add_instance(placement, worker);
    }

    pub(super) fn unbind(&mut self, placement: &Placement, worker: &WorkerId) {
        self.ix.remove_instance(placement, worker);
        self.adjust_allocation(worker, placement.spec.resources, false);
    }

    fn adjust_allocation(&mut self, worker: &WorkerId, resources: Resources, add: bool) {
        let w = self.state.workers.get_mut(worker).expect("invariant: bound worker exists");
        self.ix.set_free(w, false);
        w.allocated = if add {
            w.allocated.checked_add(resources).filter(|a| a.fits_in(w.capacity))
        } else {
            w.allocated.checked_sub(resources)
        }
        .expect("invariant: allocation stays within 0..=capacity");
        self.ix.set_free(w, true);
    }

    /// Releases a placement or reservation for `reason` (`unplace`, reported). Returns what
    /// it held.
    pub(super) fn release(
        &mut self,
        tenant: &TenantId,
        id: &PlacementId,
        reason: ReleaseReason,
    ) -> Result<(Resources, u32), Rejection> {
        let placement = self.unplace(tenant, id, Some(reason))?;
        Ok(held(&placement))
    }

    /// Takes a placement or reservation away: capacity back to its workers, usage out of every
    /// ancestor. With a `reason`, reported as `Released`; without, it ends with its tenant
    /// (`TenantDeleted`). Returns it.
    pub(super) fn unplace(
        &mut self,
        tenant: &TenantId,
        id: &PlacementId,
        reason: Option<ReleaseReason>,
    ) -> Result<Placement, Rejection> {
        let key = (tenant.clone(), id.clone());
        let placement = self
            .state
            .placements
            .remove(&key)
            .ok_or_else(|| Rejection::PlacementNotFound { placement: id.clone() })?;
        if let Some(at) = placement.expires_at {
            let deadline = Deadline::Reservation(tenant.clone(), id.clone());
            assert!(self.ix.deadlines.remove(&(at, deadline)), "invariant: reservation deadline");
        }
        if let Some(at) = placement.time_limit_at {
            let deadline = Deadline::TimeLimit(tenant.clone(), id.clone());
            assert!(self.ix.deadlines.remove(&(at, deadline)), "invariant: time limit deadline");
        }
        for worker in placement.instances.iter().rev() {
            self.unbind(&placement, worker);
        }
        let usage = Usage::of_job(placement.spec.resources, placement.spec.count)
            .expect("invariant: usage was computed at placement");
        self.queue_dirty = true;
        let lineage = self.lineage(tenant);
        self.roll_windows(&lineage);
        self.meter_tenant(tenant);
        self.meter_hold(&placement, false);
        for ancestor in &lineage {
            let t = self.state.tenants.get_mut(ancestor).expect("invariant: lineage exists");
            t.usage.sub(&placement.pool, usage).expect("invariant: usage covers its placements");
        }
        if let Some(reason) = reason {
            self.emit(Event::Released {
                tenant: tenant.clone(),
                placement: id.clone(),
                instances: placement.instances.clone(),
                reason,
            });
        }
        self.settle_bursts(&lineage);
        Ok(placement)
    }

    /// `Place`: all instances now, or a refusal.
    pub(super) fn place_now(
        &mut self,
        index: LogIndex,
        tenant: TenantId,
        spec: PlaceSpec,
        fence: Option<Fence>,
    ) -> Result<Response, Rejection> {
        self.check_tenant_fence(&tenant, fence.as_ref())?;
        self.place(index, tenant, spec, None, Explain::Counts, false).map(Response::Placed)
    }

    /// `Reserve`: a placement that expires `ttl_ms` from now unless confirmed.
    pub(super) fn reserve(
        &mut self,
        index: LogIndex,
        tenant: TenantId,
        spec: PlaceSpec,
        ttl_ms: u64,
        fence: Option<Fence>,
    ) -> Result<Response, Rejection> {
        self.check_tenant_fence(&tenant, fence.as_ref())?;
        let expires_at = self.state.now.plus_ms(ttl_ms);
        let at = Some(expires_at);
        self.place(index, tenant, spec, at, Explain::Counts, false).map(Response::Reserved)
    }

    /// `Release`: frees a placement or reservation.
    pub(super) fn release_placement(
        &mut self,
        tenant: &TenantId,
        placement: &PlacementId,
        fence: Option<Fence>,
    ) -> Result<Response, Rejection> {
        self.check_tenant_fence(tenant, fence.as_ref())?;
        let released = self.release(tenant, placement, ReleaseReason::Requested)?;
        Ok(Response::Released { resources: released.0, instances: released.1 })
    }

    /// Turns a reservation into a placement on the same workers, keeping its quota.
    pub(super) fn confirm_reservation(
        &mut self,
        tenant: &TenantId,
        id: &PlacementId,
        fence: Option<Fence>,
    ) -> Result<Response, Rejection> {
        self.check_tenant_fence(tenant, fence.as_ref())?;
        let key = (tenant.clone(), id.clone());
        let placement = self
            .state
            .placements
            .get(&key)
            .ok_or_else(|| Rejection::PlacementNotFound { placement: id.clone() })?;
        if placement.expires_at.is_none() {
            return Err(Rejection::NotAReservation { placement: id.clone() });
        }
        // Metered as a reservation until now, as a placement from now.
        self.meter_tenant(tenant);
        let reserved = self.state.placements[&key].clone();
        self.meter_hold(&reserved, false);
        let placement = self.state.placements.get_mut(&key).expect("invariant: looked up above");
        let at = placement.expires_at.take().expect("invariant: a reservation");
        let confirmed = placement.clone();
        self.meter_hold(&confirmed, true);
        let deadline = Deadline::Reservation(tenant.clone(), id.clone());
        assert!(self.ix.deadlines.remove(&(at, deadline)), "invariant: reservation deadline");
        let instances = confirmed.instances.clone();
        // Work, unlike a reservation, may be preempted or reclaimed: a waiting entry may fit now.
        self.queue_dirty = true;
        self.emit(Event::Confirmed { tenant: tenant.clone(), placement: id.clone(), instances });
        Ok(Response::Confirmed(confirmed))
    }

    /// Frees a reservation before it expires; a placement is not a reservation.
    pub(super) fn cancel_reservation(
        &mut self,
        tenant: &TenantId,
        reservation: &PlacementId,
        fence: Option<Fence>,
    ) -> Result<Response, Rejection> {
        self.check_tenant_fence(tenant, fence.as_ref())?;
        let key = (tenant.clone(), reservation.clone());
        match self.state.placements.get(&key) {
            None => return Err(Rejection::PlacementNotFound { placement: reservation.clone() }),
            Some(p) if !p.is_reservation() => {
                return Err(Rejection::NotAReservation { placement: reservation.clone() })
            }
            Some(_) => {}
        }
        let (resources, instances) = self.release(tenant, reservation, ReleaseReason::Cancelled)?;
        Ok(Response::Cancelled { resources, instances })
    }

    pub(super) fn create_group(
        &mut self,
        tenant: TenantId,
        group: GroupId,
        max_instances: u32,
        strategy: GroupStrategy,
    ) -> Result<Response, Rejection> {
        self.tenant(&tenant)?;
        let key = (tenant.clone(), group.clone());
        if self.state.groups.contains_key(&key) {
            return Err(Rejection::GroupExists { group });
        }
        if self.state.groups.len() >= GROUPS_MAX {
            return Err(Rejection::LimitReached { what: "groups".into(), max: GROUPS_MAX as u64 });
        }
        let created_at = self.state.now;
        self.state
            .groups
            .insert(key, PlacementGroup { tenant, id: group, max_instances, strategy, created_at });
        // A queued placement may have been waiting for this group to exist.
        self.queue_dirty = true;
        Ok(Response::GroupCreated)
    }
}
