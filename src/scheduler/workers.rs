//! Worker commands: register, update, drain (schedulable or not), remove. Liveness
//! (heartbeats, down, revival, lost work) is in `liveness.rs`.

use super::events::{Event, ReleaseReason};
use super::index::{alive_until, Deadline};
use super::state::WorkerState;
use super::Labels;
use super::{
    LogIndex, PoolId, Rejection, Resources, Response, Scheduler, Worker, WorkerId, DEFAULT_POOL,
    WORKERS_MAX,
};

impl Scheduler {
    pub(super) fn register_worker(
        &mut self,
        index: LogIndex,
        worker: WorkerId,
        pool: Option<PoolId>,
        capacity: Resources,
        labels: Labels,
    ) -> Result<Response, Rejection> {
        let pool = pool.unwrap_or_else(|| PoolId::new(DEFAULT_POOL));
        if self.state.workers.contains_key(&worker) {
            return Err(Rejection::WorkerExists { worker });
        }
        if self.state.workers.len() >= WORKERS_MAX {
            return Err(Rejection::LimitReached {
                what: "workers".into(),
                max: WORKERS_MAX as u64,
            });
        }
        let w = Worker {
            id: worker.clone(),
            pool,
            capacity,
            allocated: Resources::ZERO,
            labels,
            schedulable: true,
            registered_at: self.state.now,
            liveness: None,
            down_since: None,
            generation: index,
            history: Vec::new(),
        };
        let mut w = w;
        w.record(self.state.now, index, WorkerState::Registered);
        let (pool, capacity) = (w.pool.clone(), w.capacity);
        self.emit(Event::WorkerRegistered { worker: worker.clone(), pool, capacity });
        self.ix.add_worker(&w);
        self.state.workers.insert(worker, w.clone());
        self.pool_capacity_changed(&w.pool);
        self.queue_dirty = true;
        Ok(Response::WorkerRegistered(w))
    }

    pub(super) fn update_worker(
        &mut self,
        worker: &WorkerId,
        capacity: Option<Resources>,
        labels: Option<Labels>,
    ) -> Result<Response, Rejection> {
        let w = self.state.workers.get_mut(worker);
        let w = w.ok_or_else(|| Rejection::WorkerNotFound { worker: worker.clone() })?;
        if let Some(capacity) = capacity {
            if !w.allocated.fits_in(capacity) {
                return Err(Rejection::CapacityBelowAllocated {
                    worker: worker.clone(),
                    capacity,
                    allocated: w.allocated,
                });
            }
        }
        self.ix.set_free(w, false);
        if let Some(capacity) = capacity {
            w.capacity = capacity;
        }
        if let Some(labels) = labels {
            // Like Kubernetes' IgnoredDuringExecution: running work stays where it is.
            w.labels = labels;
        }
        self.ix.set_free(w, true);
        let pool = w.pool.clone();
        self.pool_capacity_changed(&pool);
        self.queue_dirty = true;
        Ok(Response::WorkerUpdated)
    }

    /// Drains a worker (no new work lands on it) or opens it again.
    pub(super) fn set_worker_schedulable(
        &mut self,
        index: LogIndex,
        worker: WorkerId,
        schedulable: bool,
    ) -> Result<Response, Rejection> {
        let w = self.state.workers.get_mut(&worker);
        let w = w.ok_or(Rejection::WorkerNotFound { worker })?;
        self.ix.set_free(w, false);
        let changed = w.schedulable != schedulable;
        if changed {
            let state = if schedulable { WorkerState::Undrained } else { WorkerState::Drained };
            w.record(self.state.now, index, state);
        }
        w.schedulable = schedulable;
        self.ix.set_free(w, true);
        let pool = w.pool.clone();
        if changed {
            let worker = w.id.clone();
            let event = if schedulable {
                Event::WorkerUndrained { worker }
            } else {
                Event::WorkerDrained { worker }
            };
            self.emit(event);
        }
        self.pool_capacity_changed(&pool);
        self.queue_dirty |= schedulable;
        Ok(Response::WorkerSchedulable { schedulable })
    }

    pub(super) fn remove_worker(
        &mut self,
        worker: &WorkerId,
        evict: bool,
    ) -> Result<Response, Rejection> {
        let current = self.worker_mut(worker)?.clone();
        let on_worker: Vec<_> = self
            .ix
            .worker_placements
            .get(worker)
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
        if !on_worker.is_empty() && !evict {
            return Err(Rejection::WorkerNotEmpty {
                worker: worker.clone(),
                placements: on_worker.len() as u64,
            });
        }
        // A placement is all or nothing, so evicting one instance releases the whole placement.
        for (tenant, placement) in &on_worker {
            let released = self.release(tenant, placement, ReleaseReason::Evicted);
            released.expect("invariant: indexed placement exists");
        }
        let current = Worker { allocated: Resources::ZERO, ..current };
        if let Some(at) = alive_until(&current) {
            let removed = self.ix.deadlines.remove(&(at, Deadline::Worker(worker.clone())));
            assert!(removed, "invariant: a managed, ready worker has a deadline");
        }
        self.ix.remove_worker(&current);
        let removed = self.state.workers.remove(worker).expect("invariant: looked up above");
        assert!(removed.allocated.is_zero(), "invariant: evicted worker is empty");
        self.emit(Event::WorkerRemoved { worker: worker.clone() });
        self.pool_capacity_changed(&removed.pool);
        Ok(Response::WorkerRemoved { evicted: on_worker })
    }
}
