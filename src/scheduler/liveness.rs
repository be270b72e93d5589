//! Workers that live and die in log time: heartbeats, worker TTLs per pool, going down when a
//! TTL passes, and what becomes of the work a down worker held.
//!
//! A worker is *managed* from its first `Heartbeat`: from then on it is down once log time
//! reaches `Liveness::alive_until` without another heartbeat (a `Deadline::Worker`, expired at
//! the start of any entry, `Tick` included, at most `WORKERS_DOWN_PER_ENTRY_MAX` workers and
//! `LOST_INSTANCES_PER_ENTRY_MAX` of their instances per entry; the rest stay due, so the
//! leader ticks again at once). A worker nobody heartbeats never goes down. Down is separate
//! from drained: a down worker accepts no work, its capacity leaves its pool's schedulable
//! capacity (share-of-pool soft limits re-settle, with their events), and it holds nothing.
//!
//! In the same `apply` that marks workers down, every placement (or reservation) with an
//! instance on one of them is handled, in (tenant, placement) order, after all of them are
//! down (nothing moves onto a worker dying in the same entry):
//! - `OnWorkerLost::Reschedule` moves only the lost instances, slot by slot, with
//!   `choose_worker` and every rule of the spec (labels, spread groups, anti-affinity both
//!   ways, required affinity), the surviving instances staying where they are. Usage, quota,
//!   windows and grace periods do not change: the same instances of the same size in the same
//!   pool. Borrowed work must not take capacity held for lenders (`check_lendable`). Moving
//!   never preempts.
//! - Where a lost instance finds no worker (or under `OnWorkerLost::Release`), the placement
//!   is released (reason `WORKER_LOST`) and, if it came through the queue and the queue has
//!   room, queued again at the back of its tenant's line.
//!
//! Each outcome is reported once in `Applied::lost`. A heartbeat after down brings the worker
//! back ready with a new `generation` (the heartbeat's index), holding nothing: its old
//! placements were moved or released when it went down. A new leader lifts every managed,
//! ready worker's `alive_until` to its grace floor, as for leases (`leases.rs`).
//!
//! Must not depend on anything outside the core.

use std::collections::{BTreeMap, BTreeSet};

use super::command::{HeartbeatAck, Lost, LostOutcome, OnWorkerLost};
use super::events::{Event, QueueCause, ReleaseReason};
use super::index::{alive_until, Deadline};
use super::placement::choose_worker;
use super::queue::QUEUE_MAX;
use super::state::{FinishedState, Liveness, Placement, Slot, WorkerState};
use super::{
    count_u64, Expired, LogIndex, PlacementId, PoolId, Rejection, Response, Scheduler, TenantId,
    UnixMillis, WorkerId, LOST_INSTANCES_PER_ENTRY_MAX, POOL_WORKER_TTLS_MAX,
    WORKERS_DOWN_PER_ENTRY_MAX, WORKER_TTL_DEFAULT_MS,
};

/// Workers whose deadlines came due in one entry, gathered under the per-entry bounds.
#[derive(Default)]
pub(super) struct Dying {
    pub workers: Vec<WorkerId>,
    instances: u64,
    /// Due deadlines left for the next entry (a bound was reached).
    pub deferred: Vec<(UnixMillis, Deadline)>,
}

impl Dying {
    /// Takes `worker` (holding `instances`) if the entry's bounds allow it; the first always.
    pub fn offer(&mut self, at: UnixMillis, worker: WorkerId, instances: u64) {
        let fits = self.deferred.is_empty()
            && (self.workers.is_empty()
                || (self.workers.len() < WORKERS_DOWN_PER_ENTRY_MAX
                    && self.instances.saturating_add(instances) <= LOST_INSTANCES_PER_ENTRY_MAX));
        if fits {
            self.workers.push(worker);
            self.instances = self.instances.saturating_add(instances);
        } else {
            self.deferred.push((at, Deadline::Worker(worker)));
        }
    }
}

impl Scheduler {
    /// The TTL a heartbeat gives a worker of `pool`.
    pub fn worker_ttl_ms(&self, pool: &PoolId) -> u64 {
        self.state.pool_worker_ttls.get(pool).copied().unwrap_or(WORKER_TTL_DEFAULT_MS)
    }

    /// Instances of any placement on `worker`.
    pub(super) fn instances_on(&self, worker: &WorkerId) -> u64 {
        let on = self.ix.worker_placements.get(worker);
        on.map_or(0, |m| m.values().map(|n| u64::from(*n)).sum())
    }

    /// `Heartbeat`: each listed worker (each once, however often listed) stays up for its
    /// pool's TTL from now; a down one comes back ready, empty, with a new generation.
    pub(super) fn heartbeat(
        &mut self,
        index: LogIndex,
        workers: Vec<WorkerId>,
    ) -> Result<Response, Rejection> {
        let now = self.state.now;
        let mut acks: BTreeMap<WorkerId, Option<HeartbeatAck>> = BTreeMap::new();
        let mut revived_pools = BTreeSet::new();
        for id in &workers {
            if acks.contains_key(id) {
                continue;
            }
            let Some(pool) = self.state.workers.get(id).map(|w| w.pool.clone()) else {
                acks.insert(id.clone(), None);
                continue;
            };
            let ttl_ms = self.worker_ttl_ms(&pool);
            let w = self.state.workers.get_mut(id).expect("invariant: looked up above");
            let revived = w.is_down();
            let old = alive_until(w);
            if let Some(at) = old {
                let removed = self.ix.deadlines.remove(&(at, Deadline::Worker(id.clone())));
                assert!(removed, "invariant: a managed, ready worker has a deadline");
            }
            let until = now.plus_ms(ttl_ms).max(old.unwrap_or(UnixMillis(0)));
            if revived {
                assert!(w.allocated.is_zero(), "invariant: a down worker holds nothing");
                self.ix.set_free(w, false);
                w.down_since = None;
                w.generation = index;
                w.record(now, index, WorkerState::Revived);
                self.ix.set_free(w, true);
                revived_pools.insert(pool);
            }
            w.liveness = Some(Liveness { ttl_ms, alive_until: until, last_heartbeat: now });
            self.ix.deadlines.insert((until, Deadline::Worker(id.clone())));
            let ack = HeartbeatAck {
                generation: w.generation,
                alive_until: until,
                ttl_ms,
                revived,
                drained: !w.schedulable,
            };
            acks.insert(id.clone(), Some(ack));
            if revived {
                self.emit(Event::WorkerRevived { worker: id.clone() });
            }
        }
        for pool in &revived_pools {
            self.pool_capacity_changed(pool);
        }
        self.queue_dirty |= !revived_pools.is_empty();
        let answers = workers.iter().map(|id| acks.get(id).cloned().flatten()).collect();
        Ok(Response::Heartbeats(answers))
    }

    /// `SetPoolWorkerTtl`: the TTL the pool's workers get from their next heartbeat.
    pub(super) fn set_pool_worker_ttl(
        &mut self,
        pool: PoolId,
        ttl_ms: Option<u64>,
    ) -> Result<Response, Rejection> {
        match ttl_ms {
            Some(ttl) => {
                let full = self.state.pool_worker_ttls.len() >= POOL_WORKER_TTLS_MAX;
                if full && !self.state.pool_worker_ttls.contains_key(&pool) {
                    return Err(Rejection::LimitReached {
                        what: "pools with a worker TTL".into(),
                        max: count_u64(POOL_WORKER_TTLS_MAX),
                    });
                }
                self.state.pool_worker_ttls.insert(pool, ttl);
            }
            None => {
                self.state.pool_worker_ttls.remove(&pool);
            }
        }
        Ok(Response::PoolWorkerTtlSet)
    }

    /// A new leader's clock may run ahead: every managed, ready worker stays up until at least
    /// `floor`, as every live lease does. Returns how many were extended.
    pub(super) fn extend_workers(&mut self, floor: UnixMillis) -> u64 {
        let short: Vec<(WorkerId, UnixMillis)> = self
            .state
            .workers
            .values()
            .filter_map(|w| alive_until(w).filter(|at| *at < floor).map(|at| (w.id.clone(), at)))
            .collect();
        for (id, at) in &short {
            let removed = self.ix.deadlines.remove(&(*at, Deadline::Worker(id.clone())));
            assert!(removed, "invariant: a managed, ready worker has a deadline");
            self.ix.deadlines.insert((floor, Deadline::Worker(id.clone())));
            let w = self.state.workers.get_mut(id).expect("invariant: listed worker exists");
            let liveness = w.liveness.as_mut().expect("invariant: a deadline means managed");
            liveness.alive_until = floor;
        }
        count_u64(short.len())
    }

    /// Marks `dying` down (their deadlines already taken off), then handles every placement
    /// with an instance on one of them (module header). Reports each worker in `expired`.
    pub(super) fn mark_down(
        &mut self,
        index: LogIndex,
        dying: &[WorkerId],
        expired: &mut Vec<Expired>,
    ) {
        let now = self.state.now;
        let mut pools = BTreeSet::new();
        for id in dying {
            let instances_lost = self.instances_on(id);
            self.emit(Event::WorkerDown { worker: id.clone(), instances_lost });
            let w = self.state.workers.get_mut(id).expect("invariant: a worker deadline's worker");
            assert!(!w.is_down() && w.liveness.is_some(), "invariant: only managed, ready die");
            self.ix.set_free(w, false);
            w.down_since = Some(now);
            w.record(now, index, WorkerState::Down);
            self.ix.set_free(w, true);
            pools.insert(w.pool.clone());
        }
        // Share-of-pool soft limits follow the smaller pools (with their events).
        for pool in &pools {
            self.pool_capacity_changed(pool);
        }
        let dead: BTreeSet<&WorkerId> = dying.iter().collect();
        let affected: BTreeSet<(TenantId, PlacementId)> = dying
            .iter()
            .filter_map(|w| self.ix.worker_placements.get(w))
            .flat_map(|m| m.keys().cloned())
            .collect();
        for key in affected {
            self.lose(index, key, &dead);
        }
        for id in dying {
            assert!(
                !self.ix.worker_placements.contains_key(id),
                "invariant: a down worker holds nothing"
            );
            expired.push(Expired::Worker { worker: id.clone() });
        }
    }

    /// One placement with instances on `dead` workers: moved, released or queued again.
    fn lose(&mut self, index: LogIndex, key: (TenantId, PlacementId), dead: &BTreeSet<&WorkerId>) {
        let p = self.state.placements.get(&key).expect("invariant: indexed placement").clone();
        let slots: Vec<usize> =
            (0..p.instances.len()).filter(|i| dead.contains(&p.instances[*i])).collect();
        let moved = match p.spec.on_worker_lost {
            OnWorkerLost::Reschedule => self.reschedule(&p, &slots),
            OnWorkerLost::Release => None,
        };
        let outcome = match moved {
            Some(moves) => {
                let placement =
                    self.state.placements.get_mut(&key).expect("invariant: placed above");
                for (slot, _, to) in &moves {
                    let i = usize::try_from(*slot).expect("invariant: small");
                    placement.instances[i] = to.clone();
                    // A new assignment: reports for the old one are stale from now on.
                    placement.slots[i] = Slot::assigned(index);
                }
                self.moved.insert(key.clone());
                // A queued placement may need its labels beside it (a required affinity), on
                // its new worker.
                self.queue_dirty |= !p.spec.labels.is_empty();
                let (tenant, placement) = key.clone();
                self.emit(Event::Rescheduled { tenant, placement, moves: moves.clone() });
                LostOutcome::Rescheduled { moves }
            }
            None => self.release_lost(index, &p),
        };
        let slots = slots.into_iter().map(|i| u32::try_from(i).expect("invariant: count is u32"));
        self.lost.push(Lost { tenant: key.0, placement: key.1, slots: slots.collect(), outcome });
    }

    /// Binds each lost slot of `p` to a new worker under every rule of its spec, then unbinds
    /// it from its dead worker; or, if some slot finds none, changes nothing and says `None`.
    fn reschedule(
        &mut self,
        p: &Placement,
        slots: &[usize],
    ) -> Option<Vec<(u32, WorkerId, WorkerId)>> {
        let n = u64::try_from(slots.len()).expect("invariant: usize fits in u64");
        let total = p.spec.resources.checked_mul(n).expect("invariant: count × resources fits");
        if p.borrowed {
            let borrowing = self.borrowing_now(&p.tenant, &p.pool);
            self.check_lendable(&p.tenant, &p.pool, total, borrowing).ok()?;
        }
        let group = p
            .spec
            .group
            .as_ref()
            .and_then(|g| self.state.groups.get(&(p.tenant.clone(), g.clone())).cloned());
        let scan_max = self.state.config.preferred_scan_max;
        let mut moves: Vec<(u32, WorkerId, WorkerId)> = Vec::new();
        for &i in slots {
            let chosen = choose_worker(&self.state, &self.ix, p, group.as_ref(), scan_max);
            let Some(to) = chosen else {
                for (_, _, to) in moves.iter().rev() {
                    self.unbind(p, to);
                }
                return None;
            };
            self.bind(p, &to);
            let slot = u32::try_from(i).expect("invariant: count is u32");
            moves.push((slot, p.instances[i].clone(), to));
        }
        for (_, from, _) in &moves {
            self.unbind(p, from);
        }
        Some(moves)
    }

    /// Releases a placement whose instances could not all be moved (reason `WORKER_LOST`);
    /// queues it again if it came through the queue and the queue has room.
    fn release_lost(&mut self, index: LogIndex, p: &Placement) -> LostOutcome {
        let released = self.release(&p.tenant, p.id(), ReleaseReason::WorkerLost);
        released.expect("invariant: a lost placement is placed");
        if p.queue_if_unavailable && self.state.queue.len() < QUEUE_MAX {
            let cause = QueueCause::WorkerLost;
            self.enqueue(index, p.tenant.clone(), p.spec.clone(), p.pool.clone(), cause);
            LostOutcome::Queued
        } else {
            self.record_finished(index, self.state.now, p, FinishedState::Lost);
            LostOutcome::Released
        }
    }
}
