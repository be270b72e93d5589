//! Lookup structures derived from `State`. They are never encoded: `Indexes::build` recreates
//! them from the state, and `check_invariants` compares the live copy with a fresh build, so a
//! maintenance bug cannot hide.
//!
//! They make placement cost logarithmic in the number of workers: bin-pack and spread read the
//! per-pool free-capacity order; affinity rules read the per-label worker sets.

use std::collections::{BTreeMap, BTreeSet};

use super::ids::{
    GroupId, LeaseName, LogIndex, PlacementId, PoolId, TenantId, TokenHash, TokenId, UnixMillis,
    WorkerId,
};
use super::meter::meter_deadline;
use super::queue::QueuedPlacement;
use super::quota::{high_utilisation, Dimension};
use super::resources::{LabelTerm, Resources};
use super::state::{Placement, State, Token, Worker};
use super::windows::limited_in_time;

/// A schedulable worker ordered by free cpu, then free memory, then id.
pub type FreeKey = (u64, u64, WorkerId);

/// Something that expires at a log time.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Deadline {
    Reservation(TenantId, PlacementId),
    Lease(TenantId, LeaseName),
    /// The end of a tenant's burst grace period.
    Grace(TenantId),
    /// A managed, ready worker's TTL (`Liveness::alive_until`).
    Worker(WorkerId),
    /// A placement's `time_limit_at`.
    TimeLimit(TenantId, PlacementId),
    /// When a tenant's meter needs a look (`meter::meter_deadline`): its spend reaches its
    /// next budget alert, its month ends, or an open invoice month is due to close.
    Meter(TenantId),
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Indexes {
    /// Workers that accept work (neither drained nor down) per pool, by free capacity.
    pub free: BTreeMap<PoolId, BTreeSet<FreeKey>>,
    /// Every worker per pool, schedulable or not.
    pub pool_workers: BTreeMap<PoolId, BTreeSet<WorkerId>>,
    /// Workers running a tenant's workloads with a label, with the instance count there.
    pub labels: BTreeMap<(TenantId, LabelTerm), BTreeMap<WorkerId, u32>>,
    /// Workers running a tenant's workloads with a required anti-affinity to a label, with
    /// the instance count there (anti-affinity is enforced both ways).
    pub anti: BTreeMap<(TenantId, LabelTerm), BTreeMap<WorkerId, u32>>,
    /// Placement instances on each worker.
    pub worker_placements: BTreeMap<WorkerId, BTreeMap<(TenantId, PlacementId), u32>>,
    /// Placement instances in each pool (an operator's view across tenants).
    pub pool_placements: BTreeMap<PoolId, BTreeMap<(TenantId, PlacementId), u32>>,
    /// Instances of each placement group per worker.
    pub group_workers: BTreeMap<(TenantId, GroupId), BTreeMap<WorkerId, u32>>,
    /// Instances of each placement group in total (the sum of `group_workers`).
    pub group_sizes: BTreeMap<(TenantId, GroupId), u64>,
    /// Reservation and lease expiry times, and ends of burst grace periods.
    pub deadlines: BTreeSet<(UnixMillis, Deadline)>,
    /// The hard limits each tenant's usage is at or above its alert percent of
    /// (`quota::high_utilisation`): (tenant, pool or total, dimension).
    pub utilisation_high: BTreeSet<(TenantId, Option<PoolId>, Dimension)>,
    /// Each tenant's `Deadline::Meter` time, if it has one (to find it in `deadlines`).
    pub meter_deadlines: BTreeMap<TenantId, UnixMillis>,
    /// Token hash to its tenant.
    pub tokens: BTreeMap<TokenHash, (TenantId, TokenId)>,
    /// When each expiring token is forgotten (`EXPIRED_TOKEN_RETENTION_MS` after it expires).
    pub token_purges: BTreeSet<(UnixMillis, TenantId, TokenId)>,
    /// Total capacity of the workers of each pool that accept work (the denominator of fair
    /// shares): drained and down workers are out.
    pub pool_capacity: BTreeMap<PoolId, Resources>,
    /// Tenants whose own window limits or budget may make work wait for a new day
    /// (`windows::limited_in_time`).
    pub window_limited: u64,
    /// Queued placements per pool, per tenant in queue order (FIFO within a tenant; entries
    /// queued by one log entry, such as re-queued victims, in id order).
    pub queue: BTreeMap<PoolId, BTreeMap<(TenantId, LogIndex, PlacementId), PlacementId>>,
    /// Free capacity of the schedulable workers of each pool (their capacity less allocated).
    pub pool_free: BTreeMap<PoolId, Resources>,
    /// Tenants whose own quota sets a guarantee in each pool.
    pub guaranteed: BTreeMap<PoolId, BTreeSet<TenantId>>,
    /// Each tenant's finished placements, oldest (ending index) first.
    pub finished_order: BTreeMap<TenantId, BTreeSet<(LogIndex, PlacementId)>>,
    /// Every tenant with finished records by their number, then by its oldest (oldest last):
    /// the last is evicted from when `FINISHED_MAX` is reached (the `Sessions` rule).
    pub finished_sizes: BTreeSet<(usize, std::cmp::Reverse<LogIndex>, TenantId)>,
}

/// When a managed, ready worker goes down without another heartbeat (`None`: it cannot).
pub fn alive_until(worker: &Worker) -> Option<UnixMillis> {
    worker.liveness.filter(|_| !worker.is_down()).map(|l| l.alive_until)
}

/// When a token that expires at `expires_at` is forgotten.
pub fn purge_at(expires_at: UnixMillis) -> UnixMillis {
    expires_at.plus_ms(super::EXPIRED_TOKEN_RETENTION_MS)
}

fn bump<K: Ord + Clone>(map: &mut BTreeMap<K, u32>, key: &K) {
    let n = map.entry(key.clone()).or_insert(0);
    *n = n.checked_add(1).expect("invariant: instance counts fit in u32");
}

/// Decrements a count, dropping the key at zero. Returns true when the map became empty.
fn drop_one<K: Ord>(map: &mut BTreeMap<K, u32>, key: &K) -> bool {
    let n = map.get_mut(key).expect("invariant: indexed instance is counted");
    *n -= 1;
    if *n == 0 {
        map.remove(key);
    }
    map.is_empty()
}

impl Indexes {
    pub fn build(state: &State) -> Indexes {
        let mut ix = Indexes::default();
        for worker in state.workers.values() {
            ix.add_worker(worker);
            if let Some(at) = alive_until(worker) {
                ix.deadlines.insert((at, Deadline::Worker(worker.id.clone())));
            }
        }
        for placement in state.placements.values() {
            for worker in &placement.instances {
                ix.add_instance(placement, worker);
            }
            if let Some(at) = placement.expires_at {
                ix.deadlines.insert((
                    at,
                    Deadline::Reservation(placement.tenant.clone(), placement.id().clone()),
                ));
            }
            if let Some(at) = placement.time_limit_at {
                ix.deadlines.insert((
                    at,
                    Deadline::TimeLimit(placement.tenant.clone(), placement.id().clone()),
                ));
            }
        }
        for lease in state.leases.values() {
            ix.deadlines.insert((
                lease.expires_at,
                Deadline::Lease(lease.tenant.clone(), lease.name.clone()),
            ));
        }
        for tenant in state.tenants.values() {
            ix.window_limited += u64::from(limited_in_time(tenant));
            if let Some(burst) = tenant.burst.filter(|b| !b.expired) {
                ix.deadlines.insert((burst.grace_ends_at, Deadline::Grace(tenant.id.clone())));
            }
            for (id, token) in &tenant.tokens {
                ix.add_token(&tenant.id, id, token);
            }
            ix.set_guaranteed(&tenant.id, tenant.quota.guarantees.keys(), true);
            for ((pool, dimension), _) in high_utilisation(tenant) {
                ix.utilisation_high.insert((tenant.id.clone(), pool, dimension));
            }
            if let Some(at) = meter_deadline(state, tenant) {
                ix.meter_deadlines.insert(tenant.id.clone(), at);
                ix.deadlines.insert((at, Deadline::Meter(tenant.id.clone())));
            }
        }
        for queued in state.queue.values() {
            ix.add_queued(queued);
        }
        for ((tenant, id), f) in &state.finished {
            ix.change_finished(tenant, |order| order.insert((f.log_index, id.clone())));
        }
        ix
    }

    pub fn add_token(&mut self, tenant: &TenantId, id: &TokenId, token: &Token) {
        self.tokens.insert(token.hash, (tenant.clone(), id.clone()));
        if let Some(at) = token.expires_at {
            self.token_purges.insert((purge_at(at), tenant.clone(), id.clone()));
        }
    }

    pub fn forget_token(&mut self, tenant: &TenantId, id: &TokenId, token: &Token) {
        self.tokens.remove(&token.hash);
        if let Some(at) = token.expires_at {
            self.token_purges.remove(&(purge_at(at), tenant.clone(), id.clone()));
        }
    }

    /// Adds (`present`) or removes `tenant` as holding a guarantee in each of `pools`.
    pub fn set_guaranteed<'a>(
        &mut self,
        tenant: &TenantId,
        pools: impl IntoIterator<Item = &'a PoolId>,
        present: bool,
    ) {
        for pool in pools {
            if present {
                self.guaranteed.entry(pool.clone()).or_default().insert(tenant.clone());
            } else if let Some(set) = self.guaranteed.get_mut(pool) {
                set.remove(tenant);
                if set.is_empty() {
                    self.guaranteed.remove(pool);
                }
            }
        }
    }

    /// Free capacity of the schedulable workers in `pool`.
    pub fn pool_free(&self, pool: &PoolId) -> Resources {
        self.pool_free.get(pool).copied().unwrap_or_default()
    }

    pub fn add_queued(&mut self, queued: &QueuedPlacement) {
        let entries = self.queue.entry(queued.pool.clone()).or_default();
        let key = (queued.tenant.clone(), queued.log_index, queued.spec.placement.clone());
        let previous = entries.insert(key, queued.spec.placement.clone());
        assert!(previous.is_none(), "invariant: one queued entry per log index and tenant");
    }

    pub fn remove_queued(&mut self, queued: &QueuedPlacement) {
        let entries = self.queue.get_mut(&queued.pool).expect("invariant: queued pool indexed");
        let removed = entries.remove(&(
            queued.tenant.clone(),
            queued.log_index,
            queued.spec.placement.clone(),
        ));
        assert!(removed.is_some(), "invariant: queued entry indexed");
        if entries.is_empty() {
            self.queue.remove(&queued.pool);
        }
    }

    /// Capacity of the schedulable workers in `pool`.
    pub fn pool_capacity(&self, pool: &PoolId) -> Resources {
        self.pool_capacity.get(pool).copied().unwrap_or_default()
    }

    pub fn add_worker(&mut self, worker: &Worker) {
        self.pool_workers.entry(worker.pool.clone()).or_default().insert(worker.id.clone());
        self.set_free(worker, true);
    }

    pub fn remove_worker(&mut self, worker: &Worker) {
        self.set_free(worker, false);
        let pool =
            self.pool_workers.get_mut(&worker.pool).expect("invariant: worker's pool indexed");
        pool.remove(&worker.id);
        if pool.is_empty() {
            self.pool_workers.remove(&worker.pool);
        }
    }

    /// Adds (`present`) or removes the worker's free-capacity key, if it accepts work (neither
    /// drained nor down). Call with `false` before changing `allocated`/`capacity`/
    /// `schedulable`/`down_since`, `true` after.
    pub fn set_free(&mut self, worker: &Worker, present: bool) {
        if !worker.accepts_work() {
            return;
        }
        let free = worker.free();
        let key = (free.cpu_millis, free.memory_mib, worker.id.clone());
        let total = self.pool_capacity.entry(worker.pool.clone()).or_default();
        *total = if present {
            total.checked_add(worker.capacity)
        } else {
            total.checked_sub(worker.capacity)
        }
        .expect("invariant: pool capacity is the sum of its schedulable workers");
        if total.is_zero() {
            self.pool_capacity.remove(&worker.pool);
        }
        let pool_free = self.pool_free.entry(worker.pool.clone()).or_default();
        *pool_free =
            if present { pool_free.checked_add(free) } else { pool_free.checked_sub(free) }
                .expect("invariant: pool free capacity is the sum of its schedulable workers'");
        if pool_free.is_zero() {
            self.pool_free.remove(&worker.pool);
        }
        if present {
            self.free.entry(worker.pool.clone()).or_default().insert(key);
        } else {
            let set = self.free.get_mut(&worker.pool).expect("invariant: pool indexed");
            assert!(set.remove(&key), "invariant: free index holds every schedulable worker");
            if set.is_empty() {
                self.free.remove(&worker.pool);
            }
        }
    }

    /// Indexes one instance of `placement` on `worker` (labels, group, worker's placements).
    pub fn add_instance(&mut self, placement: &Placement, worker: &WorkerId) {
        let tenant = &placement.tenant;
        for (key, value) in &placement.spec.labels {
            let term = (tenant.clone(), LabelTerm::new(key.as_str(), value.as_str()));
            bump(self.labels.entry(term).or_default(), worker);
        }
        for term in &placement.spec.anti_affinity {
            bump(self.anti.entry((tenant.clone(), term.clone())).or_default(), worker);
        }
        let key = (tenant.clone(), placement.id().clone());
        bump(self.worker_placements.entry(worker.clone()).or_default(), &key);
        bump(self.pool_placements.entry(placement.pool.clone()).or_default(), &key);
        if let Some(group) = &placement.spec.group {
            let key = (tenant.clone(), group.clone());
            *self.group_sizes.entry(key.clone()).or_insert(0) += 1;
            bump(self.group_workers.entry(key).or_default(), worker);
        }
    }

    pub fn remove_instance(&mut self, placement: &Placement, worker: &WorkerId) {
        let tenant = &placement.tenant;
        for (key, value) in &placement.spec.labels {
            let term = (tenant.clone(), LabelTerm::new(key.as_str(), value.as_str()));
            let map = self.labels.get_mut(&term).expect("invariant: label indexed");
            if drop_one(map, worker) {
                self.labels.remove(&term);
            }
        }
        for term in &placement.spec.anti_affinity {
            let key = (tenant.clone(), term.clone());
            let map = self.anti.get_mut(&key).expect("invariant: anti-affinity indexed");
            if drop_one(map, worker) {
                self.anti.remove(&key);
            }
        }
        let key = (tenant.clone(), placement.id().clone());
        let map = self.worker_placements.get_mut(worker).expect("invariant: worker has placements");
        if drop_one(map, &key) {
            self.worker_placements.remove(worker);
        }
        let map = self.pool_placements.get_mut(&placement.pool).expect("invariant: pool indexed");
        if drop_one(map, &key) {
            self.pool_placements.remove(&placement.pool);
        }
        if let Some(group) = &placement.spec.group {
            let key = (tenant.clone(), group.clone());
            let map = self.group_workers.get_mut(&key).expect("invariant: group indexed");
            if drop_one(map, worker) {
                self.group_workers.remove(&key);
            }
            let size = self.group_sizes.get_mut(&key).expect("invariant: group counted");
            *size -= 1;
            if *size == 0 {
                self.group_sizes.remove(&key);
            }
        }
    }

    /// Workers of `tenant` running a workload labelled `term`.
    pub fn workers_with(
        &self,
        tenant: &TenantId,
        term: &LabelTerm,
    ) -> Option<&BTreeMap<WorkerId, u32>> {
        self.labels.get(&(tenant.clone(), term.clone()))
    }

    /// Workers of `tenant` running a workload with a required anti-affinity to `term`.
    pub fn anti_with(
        &self,
        tenant: &TenantId,
        term: &LabelTerm,
    ) -> Option<&BTreeMap<WorkerId, u32>> {
        self.anti.get(&(tenant.clone(), term.clone()))
    }

    /// Changes one tenant's order of finished records, keeping `finished_sizes` in step.
    pub fn change_finished<R>(
        &mut self,
        tenant: &TenantId,
        change: impl FnOnce(&mut BTreeSet<(LogIndex, PlacementId)>) -> R,
    ) -> R {
        use std::cmp::Reverse;
        let order = self.finished_order.entry(tenant.clone()).or_default();
        if let Some((oldest, _)) = order.first() {
            let sized =
                self.finished_sizes.remove(&(order.len(), Reverse(*oldest), tenant.clone()));
            assert!(sized, "invariant: every tenant with records is sized");
        }
        let result = change(order);
        match order.first() {
            Some((oldest, _)) => {
                self.finished_sizes.insert((order.len(), Reverse(*oldest), tenant.clone()));
            }
            None => {
                self.finished_order.remove(tenant);
            }
        }
        result
    }

    /// Instances currently in a placement group.
    pub fn group_instances(&self, tenant: &TenantId, group: &GroupId) -> u64 {
        self.group_sizes.get(&(tenant.clone(), group.clone())).copied().unwrap_or(0)
    }
}
