//! A placement's life after it is placed: its workers' reports (`ReportStatus`), its time
//! limit (`PlaceSpec::max_runtime_ms`, Slurm's), and the records of placements that ended.
//!
//! Each instance (`Slot`) is fenced by `assigned_at`, the index of the entry that bound it to its
//! worker: a report must name the worker the slot is on now and that index, so a report for a
//! slot that moved off a down worker, or from an earlier incarnation, never lands
//! (`STALE_ASSIGNMENT`). `Running` is recorded once; `Completed` marks the slot, and the
//! placement is released when every slot has completed (a gang: an instance that finished early
//! keeps its capacity until the last one ends); `Failed` releases the whole placement at once.
//! Reservations take no reports (`NOT_A_PLACEMENT`).
//!
//! A placement with `max_runtime_ms` is released at exactly `placed_at + max_runtime_ms` in log
//! time (a `Deadline::TimeLimit`; a new leader's grace does not extend it).
//!
//! Completed, failed, lost and timed-out placements are kept as `Finished` records (not those a
//! client released or cancelled itself): at most `FINISHED_PER_TENANT_MAX` per tenant, the
//! tenant's oldest evicted first, and `FINISHED_MAX` in all, the largest tenant's oldest first
//! (ties: the tenant whose oldest is oldest; `Indexes::finished_sizes`, as for sessions).
//! Placing an id again forgets its record; deleting a tenant forgets all of its records.
//!
//! Must not depend on anything outside the core.

use super::command::ReportedStatus;
use super::events::{Event, ReleaseReason};
use super::ids::{LogIndex, PlacementId, TenantId, UnixMillis, WorkerId};
use super::state::{Finished, FinishedState, Placement};
use super::{Rejection, Response, Scheduler, FINISHED_MAX, FINISHED_PER_TENANT_MAX};

impl Scheduler {
    /// `ReportStatus`: a worker's report on one slot (module header).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn report_status(
        &mut self,
        index: LogIndex,
        worker: WorkerId,
        tenant: TenantId,
        id: PlacementId,
        slot: u32,
        assigned_at: LogIndex,
        status: ReportedStatus,
    ) -> Result<Response, Rejection> {
        self.tenant(&tenant)?;
        let key = (tenant, id);
        let p = self
            .state
            .placements
            .get(&key)
            .ok_or_else(|| Rejection::PlacementNotFound { placement: key.1.clone() })?;
        if p.is_reservation() {
            return Err(Rejection::NotAPlacement { placement: key.1.clone() });
        }
        let i = usize::try_from(slot).ok().filter(|i| *i < p.instances.len());
        let current = i.filter(|i| p.instances[*i] == worker).map(|i| p.slots[i].assigned_at);
        let Some(i) = i.filter(|_| current == Some(assigned_at)) else {
            return Err(Rejection::StaleAssignment {
                placement: key.1.clone(),
                slot,
                presented: assigned_at,
                current,
            });
        };
        let now = self.state.now;
        let p = self.state.placements.get_mut(&key).expect("invariant: looked up above");
        let (tenant, placement) = key.clone();
        let (event, ended) = match status {
            ReportedStatus::Running => {
                let first = p.slots[i].running_since.is_none();
                p.slots[i].running_since.get_or_insert(now);
                let event = Event::InstanceRunning { tenant, placement, slot, worker };
                (first.then_some(event), None)
            }
            ReportedStatus::Completed => {
                let s = &mut p.slots[i];
                let first = s.completed_at.is_none();
                s.running_since.get_or_insert(now);
                s.completed_at.get_or_insert(now);
                let all = p.slots.iter().all(|s| s.completed_at.is_some());
                let event = Event::InstanceCompleted { tenant, placement, slot, worker };
                (first.then_some(event), all.then_some(FinishedState::Completed))
            }
            ReportedStatus::Failed { exit_code, message } => {
                let event = Event::InstanceFailed { tenant, placement, slot, worker, exit_code };
                (Some(event), Some(FinishedState::Failed { exit_code, message }))
            }
        };
        if let Some(event) = event {
            self.emit(event);
        }
        if let Some(state) = &ended {
            let placement = self.state.placements[&key].clone();
            self.end(index, self.state.now, &placement, state.clone());
        }
        Ok(Response::StatusReported { finished: ended })
    }

    /// Releases `p` (placed) because it ended as `state` at log time `ended_at`, and keeps its
    /// record.
    pub(super) fn end(
        &mut self,
        index: LogIndex,
        ended_at: UnixMillis,
        p: &Placement,
        state: FinishedState,
    ) {
        let released = self.release(&p.tenant, p.id(), ReleaseReason::from(&state));
        released.expect("invariant: an ending placement is placed");
        self.record_finished(index, ended_at, p, state);
    }

    /// Keeps a record of a placement that ended as `state` at log time `ended_at` (already
    /// released), evicting the oldest beyond the bounds (module header).
    pub(super) fn record_finished(
        &mut self,
        index: LogIndex,
        ended_at: UnixMillis,
        p: &Placement,
        state: FinishedState,
    ) {
        let key = (p.tenant.clone(), p.id().clone());
        self.forget_finished(&key);
        let record = Finished {
            tenant: p.tenant.clone(),
            placement: p.id().clone(),
            pool: p.pool.clone(),
            workers: p.instances.clone(),
            resources: p.spec.resources,
            count: p.spec.count,
            placed_at: p.placed_at,
            ended_at,
            log_index: index,
            state,
        };
        self.state.finished.insert(key.clone(), record);
        self.ix.change_finished(&key.0, |order| order.insert((index, key.1.clone())));
        while self.ix.finished_order.get(&key.0).is_some_and(|o| o.len() > FINISHED_PER_TENANT_MAX)
        {
            self.evict_oldest_finished(&key.0);
        }
        while self.state.finished.len() > FINISHED_MAX {
            let largest = self.ix.finished_sizes.last().map(|(_, _, tenant)| tenant.clone());
            self.evict_oldest_finished(&largest.expect("invariant: records are sized"));
        }
    }

    fn evict_oldest_finished(&mut self, tenant: &TenantId) {
        let oldest = self.ix.change_finished(tenant, |order| order.pop_first());
        let (_, id) = oldest.expect("invariant: tenant has records");
        let removed = self.state.finished.remove(&(tenant.clone(), id));
        assert!(removed.is_some(), "invariant: ordered records are kept");
    }

    /// Forgets the record of `key`, if any (the id is placed again, or its tenant deleted).
    pub(super) fn forget_finished(&mut self, key: &(TenantId, PlacementId)) {
        let Some(old) = self.state.finished.remove(key) else { return };
        let removed =
            self.ix.change_finished(&key.0, |o| o.remove(&(old.log_index, key.1.clone())));
        assert!(removed, "invariant: record ordered");
    }

    /// Forgets every record of `tenant` (tenant deletion).
    pub(super) fn forget_finished_of(&mut self, tenant: &TenantId) {
        let order = self.ix.change_finished(tenant, std::mem::take);
        for (_, id) in order {
            self.state.finished.remove(&(tenant.clone(), id));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::state::{FinishedState, Placement};
    use super::super::{LogIndex, PlaceSpec, Scheduler, TenantId, UnixMillis, FINISHED_MAX};

    fn placement(tenant: &str, id: &str) -> Placement {
        Placement {
            tenant: tenant.into(),
            spec: PlaceSpec { placement: id.into(), count: 1, ..PlaceSpec::default() },
            pool: "default".into(),
            instances: Vec::new(),
            placed_at: UnixMillis(0),
            log_index: LogIndex(0),
            expires_at: None,
            borrowed: false,
            queue_if_unavailable: false,
            slots: Vec::new(),
            time_limit_at: None,
        }
    }

    // With the table full, a new record evicts the oldest record of the largest tenant (ties:
    // the tenant whose oldest record is oldest), never the newcomer's.
    #[test]
    fn a_full_finished_table_evicts_from_the_largest_tenant() {
        let mut s = Scheduler::default();
        let tenants = FINISHED_MAX / super::FINISHED_PER_TENANT_MAX;
        let mut index = 0;
        for round in 0..super::FINISHED_PER_TENANT_MAX {
            for t in 0..tenants {
                index += 1;
                let p = placement(&format!("t{t:03}"), &format!("p{round}"));
                s.record_finished(LogIndex(index), UnixMillis(0), &p, FinishedState::Completed);
            }
        }
        assert_eq!(s.state.finished.len(), FINISHED_MAX);
        s.record_finished(
            LogIndex(index + 1),
            UnixMillis(0),
            &placement("zz", "new"),
            FinishedState::Lost,
        );
        assert_eq!(s.state.finished.len(), FINISHED_MAX);
        assert!(s.state.finished.contains_key(&(TenantId::from("zz"), "new".into())));
        let first: TenantId = "t000".into();
        assert!(!s.state.finished.contains_key(&(first.clone(), "p0".into())), "oldest gone");
        assert_eq!(s.ix.finished_order[&first].len(), super::FINISHED_PER_TENANT_MAX - 1);
        assert_eq!(s.ix.finished_sizes.len(), tenants + 1);
    }
}
