//! What happened: every applied entry returns, in `Applied::journal`, the ordered events it
//! caused, so a watcher that sees every event of every entry can rebuild who holds what
//! (placements and their workers, the queue, leases, down workers) without reading the state.
//!
//! Each event is emitted once, at the one place its change happens (`Scheduler::emit`), in the
//! order of the entry's steps: expiry (reservations, time limits, leases, grace periods, then
//! workers going down and their lost work), the command, then queue admissions. The journal
//! is derived from applied entries only, so it is identical on every replica. A rejected
//! command, a replayed request id, a dry run and every scratch copy emit nothing. Keep-alives
//! of leases and heartbeats that change nothing emit nothing (too chatty).
//!
//! Bounded: an event names at most `INSTANCES_PER_PLACEMENT_MAX` workers (a move names two per
//! lost slot) and carries no client text but a lease's holder (`HOLDER_LEN_MAX`); a failure's
//! message stays in its `Finished` record.
//!
//! Must not depend on anything outside the core.

use serde::{Deserialize, Serialize};

use super::ids::{LeaseName, LogIndex, PlacementId, PoolId, TenantId, UnixMillis, WorkerId};
use super::invoice::Invoice;
use super::meter::Statement;
use super::quota::QuotaEvent;
use super::resources::Resources;
use super::state::FinishedState;

/// One thing that happened in an applied entry. Tenant-scoped events have a `tenant()`; the
/// others (workers) only an admin watch sees.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    /// A placement or (with `expires_at`) a reservation was made on `instances` (slot order),
    /// each slot assigned at this entry's index. `from_queue`: admitted from the queue.
    Placed {
        tenant: TenantId,
        placement: PlacementId,
        pool: PoolId,
        instances: Vec<WorkerId>,
        /// Of each instance.
        resources: Resources,
        reservation: bool,
        from_queue: bool,
        expires_at: Option<UnixMillis>,
    },
    /// A reservation became a placement on the same `instances` (slot order).
    Confirmed {
        tenant: TenantId,
        placement: PlacementId,
        instances: Vec<WorkerId>,
    },
    /// A placement or reservation ended; its instances are free.
    Released {
        tenant: TenantId,
        placement: PlacementId,
        instances: Vec<WorkerId>,
        reason: ReleaseReason,
    },
    /// A placement waits in the queue.
    Queued {
        tenant: TenantId,
        placement: PlacementId,
        cause: QueueCause,
    },
    /// A queued placement was withdrawn (`CancelQueued`). Admission is a `Placed` with
    /// `from_queue`.
    Dequeued {
        tenant: TenantId,
        placement: PlacementId,
    },
    /// Lost instances moved: `(slot, from, to)`, each slot assigned anew at this entry's index.
    Rescheduled {
        tenant: TenantId,
        placement: PlacementId,
        moves: Vec<(u32, WorkerId, WorkerId)>,
    },
    /// A worker's first `Running` report for the slot.
    InstanceRunning {
        tenant: TenantId,
        placement: PlacementId,
        slot: u32,
        worker: WorkerId,
    },
    /// A worker's first `Completed` report for the slot.
    InstanceCompleted {
        tenant: TenantId,
        placement: PlacementId,
        slot: u32,
        worker: WorkerId,
    },
    /// A worker reported the slot failed (the placement is released, reason `FAILED`).
    InstanceFailed {
        tenant: TenantId,
        placement: PlacementId,
        slot: u32,
        worker: WorkerId,
        exit_code: i32,
    },
    LeaseGranted {
        tenant: TenantId,
        lease: LeaseName,
        holder: String,
        token: LogIndex,
        expires_at: UnixMillis,
    },
    LeaseReleased {
        tenant: TenantId,
        lease: LeaseName,
        token: LogIndex,
    },
    LeaseExpired {
        tenant: TenantId,
        lease: LeaseName,
        token: LogIndex,
    },
    /// A quota event (also in `Applied::events`, in the same order).
    Quota(QuotaEvent),
    TenantCreated {
        tenant: TenantId,
        parent: Option<TenantId>,
    },
    /// The tenant and everything it owned are gone in this one event: its placements and
    /// reservations ended, its queued placements and leases with them (no event of their own).
    TenantDeleted {
        tenant: TenantId,
    },
    /// A month of the tenant's meter ended (or, when the tenant is deleted, just before
    /// `TenantDeleted`, its month so far): the statement is final.
    Metered {
        tenant: TenantId,
        statement: Statement,
    },
    /// A month's invoice was closed (by `CloseInvoice`, or by the core when the next month
    /// ended): it is immutable.
    InvoiceClosed {
        tenant: TenantId,
        invoice: Box<Invoice>,
    },
    WorkerRegistered {
        worker: WorkerId,
        pool: PoolId,
        capacity: Resources,
    },
    /// Its TTL passed; it held `instances_lost` instances, whose placements' fates follow as
    /// tenant events (`Rescheduled`, or `Released` reason `WORKER_LOST`, maybe `Queued`).
    WorkerDown {
        worker: WorkerId,
        instances_lost: u64,
    },
    /// A heartbeat brought a down worker back, ready and holding nothing (generation: this
    /// entry's index).
    WorkerRevived {
        worker: WorkerId,
    },
    WorkerDrained {
        worker: WorkerId,
    },
    WorkerUndrained {
        worker: WorkerId,
    },
    /// Removed; the placements it held were released just before (reason `EVICTED`).
    WorkerRemoved {
        worker: WorkerId,
    },
}

/// What a watch filters on: one kind per `Event` variant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum EventKind {
    Placed,
    Confirmed,
    Released,
    Queued,
    Dequeued,
    Rescheduled,
    InstanceRunning,
    InstanceCompleted,
    InstanceFailed,
    LeaseGranted,
    LeaseReleased,
    LeaseExpired,
    Quota,
    TenantCreated,
    TenantDeleted,
    Metered,
    InvoiceClosed,
    WorkerRegistered,
    WorkerDown,
    WorkerRevived,
    WorkerDrained,
    WorkerUndrained,
    WorkerRemoved,
}

impl EventKind {
    /// Every kind, in declaration order.
    pub const ALL: [EventKind; 23] = [
        EventKind::Placed,
        EventKind::Confirmed,
        EventKind::Released,
        EventKind::Queued,
        EventKind::Dequeued,
        EventKind::Rescheduled,
        EventKind::InstanceRunning,
        EventKind::InstanceCompleted,
        EventKind::InstanceFailed,
        EventKind::LeaseGranted,
        EventKind::LeaseReleased,
        EventKind::LeaseExpired,
        EventKind::Quota,
        EventKind::TenantCreated,
        EventKind::TenantDeleted,
        EventKind::Metered,
        EventKind::InvoiceClosed,
        EventKind::WorkerRegistered,
        EventKind::WorkerDown,
        EventKind::WorkerRevived,
        EventKind::WorkerDrained,
        EventKind::WorkerUndrained,
        EventKind::WorkerRemoved,
    ];

    /// The stable name (UPPER_SNAKE), part of the public contract.
    pub fn name(self) -> &'static str {
        match self {
            EventKind::Placed => "PLACED",
            EventKind::Confirmed => "CONFIRMED",
            EventKind::Released => "RELEASED",
            EventKind::Queued => "QUEUED",
            EventKind::Dequeued => "DEQUEUED",
            EventKind::Rescheduled => "RESCHEDULED",
            EventKind::InstanceRunning => "INSTANCE_RUNNING",
            EventKind::InstanceCompleted => "INSTANCE_COMPLETED",
            EventKind::InstanceFailed => "INSTANCE_FAILED",
            EventKind::LeaseGranted => "LEASE_GRANTED",
            EventKind::LeaseReleased => "LEASE_RELEASED",
            EventKind::LeaseExpired => "LEASE_EXPIRED",
            EventKind::Quota => "QUOTA",
            EventKind::TenantCreated => "TENANT_CREATED",
            EventKind::TenantDeleted => "TENANT_DELETED",
            EventKind::Metered => "METERED",
            EventKind::InvoiceClosed => "INVOICE_CLOSED",
            EventKind::WorkerRegistered => "WORKER_REGISTERED",
            EventKind::WorkerDown => "WORKER_DOWN",
            EventKind::WorkerRevived => "WORKER_REVIVED",
            EventKind::WorkerDrained => "WORKER_DRAINED",
            EventKind::WorkerUndrained => "WORKER_UNDRAINED",
            EventKind::WorkerRemoved => "WORKER_REMOVED",
        }
    }
}

/// Why a placement or reservation was released.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ReleaseReason {
    /// `Release`.
    Requested,
    /// `CancelReservation`.
    Cancelled,
    /// The reservation was not confirmed in time.
    ReservationExpired,
    /// Released for `by_placement` of `by_tenant` (`reclaimed`: to return a guarantee); a
    /// `Quota(Preempted)` follows, and a `Queued` if it waits again.
    Preempted { by_tenant: TenantId, by_placement: PlacementId, reclaimed: bool },
    /// `RemoveWorker` with `evict` on a worker that held one of its instances.
    Evicted,
    /// A worker went down and it could not move (or asked to be released).
    WorkerLost,
    /// It reached `max_runtime_ms`.
    TimeLimit,
    /// Every instance reported completed.
    Completed,
    /// An instance reported failed.
    Failed { exit_code: i32 },
}

impl ReleaseReason {
    /// The stable reason (UPPER_SNAKE), part of the public contract.
    pub fn reason(&self) -> &'static str {
        match self {
            ReleaseReason::Requested => "REQUESTED",
            ReleaseReason::Cancelled => "CANCELLED",
            ReleaseReason::ReservationExpired => "RESERVATION_EXPIRED",
            ReleaseReason::Preempted { .. } => "PREEMPTED",
            ReleaseReason::Evicted => "EVICTED",
            ReleaseReason::WorkerLost => "WORKER_LOST",
            ReleaseReason::TimeLimit => "TIME_LIMIT",
            ReleaseReason::Completed => "COMPLETED",
            ReleaseReason::Failed { .. } => "FAILED",
        }
    }
}

impl From<&FinishedState> for ReleaseReason {
    fn from(state: &FinishedState) -> Self {
        match state {
            FinishedState::Completed => ReleaseReason::Completed,
            FinishedState::Failed { exit_code, .. } => {
                ReleaseReason::Failed { exit_code: *exit_code }
            }
            FinishedState::Lost => ReleaseReason::WorkerLost,
            FinishedState::TimedOut => ReleaseReason::TimeLimit,
        }
    }
}

/// Why a placement waits in the queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum QueueCause {
    /// `PlaceOrQueue` (in the same entry a `Placed` may follow, if it is admitted at once).
    Requested,
    /// Preempted, and its spec asks to wait again.
    Preempted,
    /// Released `WORKER_LOST`, and it came through the queue.
    WorkerLost,
}

impl Event {
    /// The tenant whose watch sees it; `None` for workers' events (an admin watch).
    pub fn tenant(&self) -> Option<&TenantId> {
        match self {
            Event::Placed { tenant, .. }
            | Event::Confirmed { tenant, .. }
            | Event::Released { tenant, .. }
            | Event::Queued { tenant, .. }
            | Event::Dequeued { tenant, .. }
            | Event::Rescheduled { tenant, .. }
            | Event::InstanceRunning { tenant, .. }
            | Event::InstanceCompleted { tenant, .. }
            | Event::InstanceFailed { tenant, .. }
            | Event::LeaseGranted { tenant, .. }
            | Event::LeaseReleased { tenant, .. }
            | Event::LeaseExpired { tenant, .. }
            | Event::TenantCreated { tenant, .. }
            | Event::TenantDeleted { tenant }
            | Event::Metered { tenant, .. }
            | Event::InvoiceClosed { tenant, .. } => Some(tenant),
            Event::Quota(e) => Some(match e {
                QuotaEvent::BurstEntered { tenant, .. }
                | QuotaEvent::GraceExpired { tenant }
                | QuotaEvent::ReturnedUnderSoft { tenant }
                | QuotaEvent::Admitted { tenant, .. }
                | QuotaEvent::Preempted { tenant, .. }
                | QuotaEvent::BudgetAlert { tenant, .. }
                | QuotaEvent::UtilisationHigh { tenant, .. }
                | QuotaEvent::UtilisationNormal { tenant, .. } => tenant,
            }),
            Event::WorkerRegistered { .. }
            | Event::WorkerDown { .. }
            | Event::WorkerRevived { .. }
            | Event::WorkerDrained { .. }
            | Event::WorkerUndrained { .. }
            | Event::WorkerRemoved { .. } => None,
        }
    }

    pub fn kind(&self) -> EventKind {
        match self {
            Event::Placed { .. } => EventKind::Placed,
            Event::Confirmed { .. } => EventKind::Confirmed,
            Event::Released { .. } => EventKind::Released,
            Event::Queued { .. } => EventKind::Queued,
            Event::Dequeued { .. } => EventKind::Dequeued,
            Event::Rescheduled { .. } => EventKind::Rescheduled,
            Event::InstanceRunning { .. } => EventKind::InstanceRunning,
            Event::InstanceCompleted { .. } => EventKind::InstanceCompleted,
            Event::InstanceFailed { .. } => EventKind::InstanceFailed,
            Event::LeaseGranted { .. } => EventKind::LeaseGranted,
            Event::LeaseReleased { .. } => EventKind::LeaseReleased,
            Event::LeaseExpired { .. } => EventKind::LeaseExpired,
            Event::Quota(_) => EventKind::Quota,
            Event::TenantCreated { .. } => EventKind::TenantCreated,
            Event::TenantDeleted { .. } => EventKind::TenantDeleted,
            Event::Metered { .. } => EventKind::Metered,
            Event::InvoiceClosed { .. } => EventKind::InvoiceClosed,
            Event::WorkerRegistered { .. } => EventKind::WorkerRegistered,
            Event::WorkerDown { .. } => EventKind::WorkerDown,
            Event::WorkerRevived { .. } => EventKind::WorkerRevived,
            Event::WorkerDrained { .. } => EventKind::WorkerDrained,
            Event::WorkerUndrained { .. } => EventKind::WorkerUndrained,
            Event::WorkerRemoved { .. } => EventKind::WorkerRemoved,
        }
    }

    /// The workers whose assignments or state it changes, in order, possibly repeated
    /// (`Workers.WatchAssignments` filters on it). `TenantDeleted` names none: it ends every
    /// placement of its tenant, wherever they ran.
    pub fn workers(&self) -> Vec<&WorkerId> {
        match self {
            Event::Placed { instances, .. }
            | Event::Confirmed { instances, .. }
            | Event::Released { instances, .. } => instances.iter().collect(),
            Event::Rescheduled { moves, .. } => {
                moves.iter().flat_map(|(_, from, to)| [from, to]).collect()
            }
            Event::InstanceRunning { worker, .. }
            | Event::InstanceCompleted { worker, .. }
            | Event::InstanceFailed { worker, .. }
            | Event::WorkerRegistered { worker, .. }
            | Event::WorkerDown { worker, .. }
            | Event::WorkerRevived { worker }
            | Event::WorkerDrained { worker }
            | Event::WorkerUndrained { worker }
            | Event::WorkerRemoved { worker } => vec![worker],
            Event::Queued { .. }
            | Event::Dequeued { .. }
            | Event::LeaseGranted { .. }
            | Event::LeaseReleased { .. }
            | Event::LeaseExpired { .. }
            | Event::Quota(_)
            | Event::TenantCreated { .. }
            | Event::TenantDeleted { .. }
            | Event::Metered { .. }
            | Event::InvoiceClosed { .. } => Vec::new(),
        }
    }
}

/// The quota events among `journal`, in order (`Applied::events`, `Decision::events`).
pub(super) fn quota_events(journal: &[Event]) -> Vec<QuotaEvent> {
    journal
        .iter()
        .filter_map(|e| match e {
            Event::Quota(q) => Some(q.clone()),
            _ => None,
        })
        .collect()
}
