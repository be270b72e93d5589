//! What goes into the core (`Entry`, `Command`) and what comes out (`Applied`, `Response`,
//! `Rejection`).
//!
//! Business rejections are values: `apply` never fails. Each rejection has a stable
//! UPPER_SNAKE `reason()` that the API puts into `google.rpc.ErrorInfo`.
//!
//! `Command::validate` is the one static check of every client-settable field against its
//! named bound: the API calls it before proposing, and `apply` again before anything else (a
//! replica never trusts the API layer). Checks that need the state stay where the state is.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use super::audit::AuditRecord;
use super::budget::{Budget, BudgetPeriod};
use super::events::Event;
use super::ids::{
    validate_object_id, GroupId, LeaseName, LogIndex, PlacementId, PlanId, PoolId, RequestId,
    TenantId, TokenHash, TokenId, UnixMillis, WorkerId,
};
use super::invoice::{validate_month, Adjustment, Invoice};
use super::meter::Prices;
use super::policy::PolicyChange;
use super::queue::QueueStatus;
use super::quota::{Dimension, LimitKind, Quota, QuotaEvent};
use super::rates::{RateLimit, RateLimits};
use super::resources::{
    validate_labels, LabelRequirement, LabelTerm, Labels, Resources, POOL_RESOURCES_MAX, RULES_MAX,
    WORKER_RESOURCES_MAX,
};
use super::state::{Config, FinishedState, GroupStrategy, Lease, Placement, Tenant, Worker};
use super::windows::Window;

/// One command as committed in the log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The log index; strictly increasing across calls to `apply`.
    pub index: LogIndex,
    /// The proposing leader's wall clock. The core never lets time run backwards.
    pub proposed_at: UnixMillis,
    /// The client's idempotency key (`None` for internal commands such as `Tick`).
    pub request_id: Option<RequestId>,
    pub command: Command,
    /// The tenant token the command was authorized with (`None` for the admin and internal
    /// commands). The replica that accepted it may have lagged: if the token no longer belongs
    /// to the command's tenant when the entry is applied, the command is refused.
    pub token: Option<TokenHash>,
}

/// A lease token that a mutating command must still hold to take effect.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Fence {
    pub lease: LeaseName,
    pub token: LogIndex,
}

/// Bin-pack fills the fullest worker that fits; spread uses the emptiest.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Strategy {
    #[default]
    BinPack,
    Spread,
}

/// What happens to a placement when a worker holding one of its instances goes down.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum OnWorkerLost {
    /// Move only the lost instances to other workers, under every rule of the spec, in the
    /// entry that marks the worker down; release (or queue) the placement where they do not fit.
    #[default]
    Reschedule,
    /// Release the whole placement (reason `WORKER_LOST`).
    Release,
}

/// What to place: `count` identical instances of one workload, all or nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlaceSpec {
    pub placement: PlacementId,
    /// Instances to place together (1..=`INSTANCES_PER_PLACEMENT_MAX`).
    pub count: u32,
    /// Resources of each instance.
    pub resources: Resources,
    /// `None` means the default pool.
    pub pool: Option<PoolId>,
    pub strategy: Strategy,
    /// The workload's own labels, which other workloads' affinity rules match.
    pub labels: Labels,
    /// Worker-label rules every chosen worker must satisfy.
    pub worker_requires: Vec<LabelRequirement>,
    /// Worker-label rules that only rank workers.
    pub worker_prefers: Vec<LabelRequirement>,
    /// The worker must already run a workload of this tenant with each of these labels.
    pub affinity: Vec<LabelTerm>,
    pub affinity_preferred: Vec<LabelTerm>,
    /// The worker must run no workload of this tenant with any of these labels.
    pub anti_affinity: Vec<LabelTerm>,
    pub anti_affinity_preferred: Vec<LabelTerm>,
    pub group: Option<GroupId>,
    /// Higher is more important. Work of a tenant whose quota allows preemption may release
    /// placements of strictly lower priority to fit (`Quota::preemption`).
    pub priority: i32,
    /// When preempted, wait in the queue again (at the back of its tenant's line) instead of
    /// being released for good.
    pub requeue_on_preemption: bool,
    /// What happens to it when one of its workers goes down (`OnWorkerLost`).
    pub on_worker_lost: OnWorkerLost,
    /// Slurm's time limit: released (reason `TIME_LIMIT`) this long after it was placed, in
    /// log time (1..=`MAX_RUNTIME_MAX_MS`; `None`: no limit).
    pub max_runtime_ms: Option<u64>,
}

/// What a worker's agent reports about one instance (`Command::ReportStatus`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ReportedStatus {
    Running,
    /// The instance finished; the placement is released once every instance has.
    Completed,
    /// The instance failed: the whole placement is released.
    Failed {
        exit_code: i32,
        message: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Advance log time and apply expiry; proposed by the leader, carries no request id.
    Tick,
    /// The first entry of a new leader's term: live leases get at least `lease_grace_ms` more.
    LeaderChanged,
    /// Change the replicated tunables (and the placement algorithm version) for every replica
    /// at the same log index.
    SetConfig {
        config: Config,
    },
    RegisterWorker {
        worker: WorkerId,
        pool: Option<PoolId>,
        capacity: Resources,
        labels: Labels,
    },
    /// Change a worker's capacity and/or labels. Capacity may not drop below what is allocated.
    UpdateWorker {
        worker: WorkerId,
        capacity: Option<Resources>,
        labels: Option<Labels>,
    },
    /// Drain (`false`) or undrain (`true`) a worker. Draining keeps what runs there.
    SetWorkerSchedulable {
        worker: WorkerId,
        schedulable: bool,
    },
    /// Remove a worker. With work on it, refused unless `evict`, which releases every placement
    /// and reservation that has an instance there.
    RemoveWorker {
        worker: WorkerId,
        evict: bool,
    },
    /// Hold `reserve` of a pool's capacity back from guarantees (`None` removes the reserve):
    /// from then on, raising the pool's guarantees or its reserve is refused unless the sum of
    /// every guarantee there plus the reserve fits the pool's schedulable capacity.
    SetPoolReserve {
        pool: PoolId,
        reserve: Option<Resources>,
    },
    CreateTenant {
        tenant: TenantId,
        parent: Option<TenantId>,
        /// Fair-share weight, 1..=`WEIGHT_MAX`.
        weight: u32,
    },
    /// Delete a tenant and everything it owns, in one step.
    DeleteTenant {
        tenant: TenantId,
    },
    SetQuota {
        tenant: TenantId,
        quota: Quota,
    },
    AddToken {
        tenant: TenantId,
        token: TokenId,
        hash: TokenHash,
        /// Lifetime from this entry's log time, 0..=`TOKEN_TTL_MAX_MS` (0: never expires).
        ttl_ms: u64,
    },
    RevokeToken {
        tenant: TenantId,
        token: TokenId,
    },
    Place {
        tenant: TenantId,
        spec: PlaceSpec,
        fence: Option<Fence>,
    },
    /// Place now if the fair-share queue lets it and it fits; otherwise wait in the queue
    /// (for quota or capacity) and be placed by a later entry, in weighted fair order.
    PlaceOrQueue {
        tenant: TenantId,
        spec: PlaceSpec,
        fence: Option<Fence>,
    },
    /// Withdraw a queued placement.
    CancelQueued {
        tenant: TenantId,
        placement: PlacementId,
    },
    /// Release a placement (or a reservation: both free their capacity and quota).
    Release {
        tenant: TenantId,
        placement: PlacementId,
        fence: Option<Fence>,
    },
    CreatePlacementGroup {
        tenant: TenantId,
        group: GroupId,
        max_instances: u32,
        strategy: GroupStrategy,
    },
    /// Hold capacity for `ttl_ms`; it counts against quota like a placement.
    Reserve {
        tenant: TenantId,
        spec: PlaceSpec,
        ttl_ms: u64,
        fence: Option<Fence>,
    },
    ConfirmReservation {
        tenant: TenantId,
        reservation: PlacementId,
        fence: Option<Fence>,
    },
    CancelReservation {
        tenant: TenantId,
        reservation: PlacementId,
        fence: Option<Fence>,
    },
    AcquireLease {
        tenant: TenantId,
        lease: LeaseName,
        holder: String,
        ttl_ms: u64,
    },
    KeepAliveLease {
        tenant: TenantId,
        lease: LeaseName,
        token: LogIndex,
    },
    ReleaseLease {
        tenant: TenantId,
        lease: LeaseName,
        token: LogIndex,
    },
    /// Keeps each listed worker alive for its pool's worker TTL from now (log time); a worker
    /// becomes managed (it can go down) with its first heartbeat, and one that is down comes
    /// back ready, holding nothing. 1..=`HEARTBEATS_PER_ENTRY_MAX` ids; unknown ones are
    /// answered `None`.
    Heartbeat {
        workers: Vec<WorkerId>,
    },
    /// Sets the worker TTL of a pool (`WORKER_TTL_MIN_MS..=WORKER_TTL_MAX_MS`; `None`: the
    /// default, `WORKER_TTL_DEFAULT_MS`). It applies from each worker's next heartbeat.
    SetPoolWorkerTtl {
        pool: PoolId,
        ttl_ms: Option<u64>,
    },
    /// Sets `plan`'s prices from `effective_at` (never earlier than this entry; `None`: now),
    /// creating the plan. Prices already in effect are never rewritten: a version set for
    /// the same moment replaces that one, and later versions stay.
    SetPricePlan {
        plan: PlanId,
        prices: Prices,
        effective_at: Option<UnixMillis>,
    },
    /// The plan `tenant` pays by from now (`None`: the `default` plan, if there is one).
    SetBillingPlan {
        tenant: TenantId,
        plan: Option<PlanId>,
    },
    /// `tenant`'s monthly budget from now (`None`: none), its alerts re-armed (`budget.rs`).
    SetBudget {
        tenant: TenantId,
        budget: Option<Budget>,
    },
    /// `tenant`'s rate limits on writes from now, with a full bucket (`None` or all unset:
    /// none); see `rates.rs`.
    SetRateLimits {
        tenant: TenantId,
        limits: Option<RateLimits>,
    },
    /// Makes `to_version` of `tenant`'s policy (quota, rate limits, budget, billing plan)
    /// current again, as a new version (`policy.rs`).
    RollbackPolicy {
        tenant: TenantId,
        to_version: u64,
    },
    /// A credit (negative) or charge on `tenant`'s invoice for `month` (months since January
    /// 1970), while that month is open (`invoice.rs`).
    AdjustInvoice {
        tenant: TenantId,
        month: u64,
        amount: Decimal,
        reason: String,
    },
    /// Closes `tenant`'s invoice for `month`, an ended month; idempotent: closing it again
    /// returns the same invoice.
    CloseInvoice {
        tenant: TenantId,
        month: u64,
    },
    /// A worker's report on one instance of a placement (not a reservation). `assigned_at`
    /// (`Slot::assigned_at`) fences it: a report for an instance that moved, or from an
    /// earlier incarnation, is refused `STALE_ASSIGNMENT`.
    ReportStatus {
        worker: WorkerId,
        tenant: TenantId,
        placement: PlacementId,
        slot: u32,
        assigned_at: LogIndex,
        status: ReportedStatus,
    },
}

impl PlaceSpec {
    /// Checks every field against its bound (state-free).
    pub fn validate(&self) -> Result<(), Rejection> {
        validate_object_id("placement", self.placement.as_str())?;
        if !(1..=super::INSTANCES_PER_PLACEMENT_MAX).contains(&self.count) {
            return Err(Rejection::invalid(
                "count",
                format!("must be 1..={}", super::INSTANCES_PER_PLACEMENT_MAX),
            ));
        }
        if self.max_runtime_ms.is_some_and(|ms| !(1..=super::MAX_RUNTIME_MAX_MS).contains(&ms)) {
            return Err(Rejection::invalid(
                "max_runtime_ms",
                format!("must be 1..={}", super::MAX_RUNTIME_MAX_MS),
            ));
        }
        self.resources.validate("resources", WORKER_RESOURCES_MAX, false)?;
        if let Some(pool) = &self.pool {
            validate_object_id("pool", pool.as_str())?;
        }
        if let Some(group) = &self.group {
            validate_object_id("group", group.as_str())?;
        }
        validate_labels("labels", &self.labels)?;
        let lists = [
            ("worker_requires", self.worker_requires.len()),
            ("worker_prefers", self.worker_prefers.len()),
            ("affinity", self.affinity.len()),
            ("affinity_preferred", self.affinity_preferred.len()),
            ("anti_affinity", self.anti_affinity.len()),
            ("anti_affinity_preferred", self.anti_affinity_preferred.len()),
        ];
        for (field, len) in lists {
            if len > RULES_MAX {
                return Err(Rejection::invalid(field, format!("at most {RULES_MAX} rules")));
            }
        }
        for rule in self.worker_requires.iter().chain(&self.worker_prefers) {
            rule.validate("worker rules")?;
        }
        let terms = self
            .affinity
            .iter()
            .chain(&self.affinity_preferred)
            .chain(&self.anti_affinity)
            .chain(&self.anti_affinity_preferred);
        for term in terms {
            term.validate("affinity rules")?;
        }
        Ok(())
    }
}

fn validate_fence(fence: &Option<Fence>) -> Result<(), Rejection> {
    match fence {
        Some(fence) => validate_object_id("lease", fence.lease.as_str()),
        None => Ok(()),
    }
}

fn validate_ttl(ttl_ms: u64, max: u64) -> Result<(), Rejection> {
    if (1..=max).contains(&ttl_ms) {
        Ok(())
    } else {
        Err(Rejection::invalid("ttl_ms", format!("must be 1..={max}")))
    }
}

impl Command {
    /// Checks every client-settable field against its named bound, without the state: ids and
    /// their lengths, labels, rule counts, resources, counts, ttls, weights, quota and config
    /// values, the lease holder. The API calls it before proposing; `apply` calls it again.
    pub fn validate(&self) -> Result<(), Rejection> {
        if let Some(tenant) = self.tenant() {
            tenant.validate()?;
        }
        match self {
            Command::Tick | Command::LeaderChanged | Command::DeleteTenant { .. } => Ok(()),
            Command::SetConfig { config } => config.validate(),
            Command::RegisterWorker { worker, pool, capacity, labels } => {
                validate_object_id("worker", worker.as_str())?;
                if let Some(pool) = pool {
                    validate_object_id("pool", pool.as_str())?;
                }
                capacity.validate("capacity", WORKER_RESOURCES_MAX, false)?;
                validate_labels("labels", labels)
            }
            Command::UpdateWorker { worker, capacity, labels } => {
                validate_object_id("worker", worker.as_str())?;
                if let Some(capacity) = capacity {
                    capacity.validate("capacity", WORKER_RESOURCES_MAX, false)?;
                }
                labels.as_ref().map_or(Ok(()), |labels| validate_labels("labels", labels))
            }
            Command::SetWorkerSchedulable { worker, .. } | Command::RemoveWorker { worker, .. } => {
                validate_object_id("worker", worker.as_str())
            }
            Command::SetPoolReserve { pool, reserve } => {
                validate_object_id("pool", pool.as_str())?;
                reserve.map_or(Ok(()), |r| r.validate("reserve", POOL_RESOURCES_MAX, true))
            }
            Command::CreateTenant { parent, weight, .. } => {
                if let Some(parent) = parent {
                    parent.validate()?;
                }
                if (1..=super::WEIGHT_MAX).contains(weight) {
                    Ok(())
                } else {
                    Err(Rejection::invalid("weight", format!("must be 1..={}", super::WEIGHT_MAX)))
                }
            }
            Command::SetQuota { quota, .. } => quota.validate(),
            Command::AddToken { token, ttl_ms, .. } => {
                validate_object_id("token", token.as_str())?;
                if *ttl_ms > super::TOKEN_TTL_MAX_MS {
                    return Err(Rejection::invalid(
                        "ttl_ms",
                        format!("must be 0 (never expires) to {}", super::TOKEN_TTL_MAX_MS),
                    ));
                }
                Ok(())
            }
            Command::RevokeToken { token, .. } => validate_object_id("token", token.as_str()),
            Command::Place { spec, fence, .. } | Command::PlaceOrQueue { spec, fence, .. } => {
                spec.validate()?;
                validate_fence(fence)
            }
            Command::Reserve { spec, ttl_ms, fence, .. } => {
                spec.validate()?;
                validate_ttl(*ttl_ms, super::RESERVATION_TTL_MAX_MS)?;
                validate_fence(fence)
            }
            Command::CancelQueued { placement, .. } => {
                validate_object_id("placement", placement.as_str())
            }
            Command::Release { placement: id, fence, .. }
            | Command::ConfirmReservation { reservation: id, fence, .. }
            | Command::CancelReservation { reservation: id, fence, .. } => {
                validate_object_id("placement", id.as_str())?;
                validate_fence(fence)
            }
            Command::CreatePlacementGroup { group, max_instances, .. } => {
                validate_object_id("group", group.as_str())?;
                if (1..=super::GROUP_INSTANCES_MAX).contains(max_instances) {
                    Ok(())
                } else {
                    Err(Rejection::invalid(
                        "max_instances",
                        format!("must be 1..={}", super::GROUP_INSTANCES_MAX),
                    ))
                }
            }
            Command::AcquireLease { lease, holder, ttl_ms, .. } => {
                validate_object_id("lease", lease.as_str())?;
                if holder.trim().is_empty() || holder.len() > super::HOLDER_LEN_MAX {
                    return Err(Rejection::invalid(
                        "holder",
                        format!("must be 1..={} bytes", super::HOLDER_LEN_MAX),
                    ));
                }
                validate_ttl(*ttl_ms, super::LEASE_TTL_MAX_MS)
            }
            Command::KeepAliveLease { lease, .. } | Command::ReleaseLease { lease, .. } => {
                validate_object_id("lease", lease.as_str())
            }
            Command::Heartbeat { workers } => {
                if !(1..=super::HEARTBEATS_PER_ENTRY_MAX).contains(&workers.len()) {
                    return Err(Rejection::invalid(
                        "workers",
                        format!("must list 1..={} workers", super::HEARTBEATS_PER_ENTRY_MAX),
                    ));
                }
                workers.iter().try_for_each(|w| validate_object_id("worker", w.as_str()))
            }
            Command::SetPoolWorkerTtl { pool, ttl_ms } => {
                validate_object_id("pool", pool.as_str())?;
                let range = super::WORKER_TTL_MIN_MS..=super::WORKER_TTL_MAX_MS;
                match ttl_ms {
                    Some(ttl) if !range.contains(ttl) => Err(Rejection::invalid(
                        "ttl_ms",
                        format!("must be {}..={}", range.start(), range.end()),
                    )),
                    _ => Ok(()),
                }
            }
            Command::SetPricePlan { plan, prices, .. } => {
                validate_object_id("plan", plan.as_str())?;
                prices.validate()
            }
            Command::SetBillingPlan { plan, .. } => {
                plan.as_ref().map_or(Ok(()), |p| validate_object_id("plan", p.as_str()))
            }
            Command::SetBudget { budget, .. } => budget.as_ref().map_or(Ok(()), Budget::validate),
            Command::RollbackPolicy { to_version, .. } => {
                if *to_version == 0 {
                    return Err(Rejection::invalid("to_version", "versions start at 1"));
                }
                Ok(())
            }
            Command::SetRateLimits { limits, .. } => {
                limits.as_ref().map_or(Ok(()), RateLimits::validate)
            }
            Command::AdjustInvoice { month, amount, reason, .. } => {
                validate_month(*month)?;
                Adjustment::validate(*amount, reason)
            }
            Command::CloseInvoice { month, .. } => validate_month(*month),
            Command::ReportStatus { worker, placement, slot, status, .. } => {
                validate_object_id("worker", worker.as_str())?;
                validate_object_id("placement", placement.as_str())?;
                if *slot >= super::INSTANCES_PER_PLACEMENT_MAX {
                    return Err(Rejection::invalid(
                        "slot",
                        format!("must be below {}", super::INSTANCES_PER_PLACEMENT_MAX),
                    ));
                }
                match status {
                    ReportedStatus::Failed { message, .. }
                        if message.len() > super::STATUS_MESSAGE_LEN_MAX =>
                    {
                        Err(Rejection::invalid(
                            "message",
                            format!("at most {} bytes", super::STATUS_MESSAGE_LEN_MAX),
                        ))
                    }
                    _ => Ok(()),
                }
            }
        }
    }

    /// The tenant the command acts on; also the scope of its request id.
    pub fn tenant(&self) -> Option<&TenantId> {
        match self {
            Command::Tick
            | Command::LeaderChanged
            | Command::SetConfig { .. }
            | Command::RegisterWorker { .. }
            | Command::UpdateWorker { .. }
            | Command::SetWorkerSchedulable { .. }
            | Command::RemoveWorker { .. }
            | Command::SetPoolReserve { .. }
            | Command::Heartbeat { .. }
            | Command::SetPoolWorkerTtl { .. }
            | Command::SetPricePlan { .. } => None,
            Command::CreateTenant { tenant, .. }
            | Command::DeleteTenant { tenant }
            | Command::SetQuota { tenant, .. }
            | Command::AddToken { tenant, .. }
            | Command::RevokeToken { tenant, .. }
            | Command::Place { tenant, .. }
            | Command::PlaceOrQueue { tenant, .. }
            | Command::CancelQueued { tenant, .. }
            | Command::Release { tenant, .. }
            | Command::CreatePlacementGroup { tenant, .. }
            | Command::Reserve { tenant, .. }
            | Command::ConfirmReservation { tenant, .. }
            | Command::CancelReservation { tenant, .. }
            | Command::AcquireLease { tenant, .. }
            | Command::KeepAliveLease { tenant, .. }
            | Command::ReleaseLease { tenant, .. }
            | Command::ReportStatus { tenant, .. }
            | Command::SetBillingPlan { tenant, .. }
            | Command::SetBudget { tenant, .. }
            | Command::SetRateLimits { tenant, .. }
            | Command::RollbackPolicy { tenant, .. }
            | Command::AdjustInvoice { tenant, .. }
            | Command::CloseInvoice { tenant, .. } => Some(tenant),
        }
    }

    /// Whether the command can only give something back (a placement, reservation, queued
    /// placement or lease): rate limits never refuse it, so no tenant is made to keep what it
    /// wants to free.
    pub fn only_frees(&self) -> bool {
        matches!(
            self,
            Command::Release { .. }
                | Command::CancelReservation { .. }
                | Command::CancelQueued { .. }
                | Command::ReleaseLease { .. }
        )
    }

    /// The tenant whose policy this command changes when accepted, and how (`policy.rs`).
    pub fn policy_change(&self) -> Option<(TenantId, PolicyChange)> {
        let (tenant, change) = match self {
            Command::CreateTenant { tenant, .. } => (tenant, PolicyChange::Created),
            Command::SetQuota { tenant, .. } => (tenant, PolicyChange::Quota),
            Command::SetRateLimits { tenant, .. } => (tenant, PolicyChange::RateLimits),
            Command::SetBudget { tenant, .. } => (tenant, PolicyChange::Budget),
            Command::SetBillingPlan { tenant, .. } => (tenant, PolicyChange::BillingPlan),
            Command::RollbackPolicy { tenant, to_version } => {
                (tenant, PolicyChange::Rollback { to: *to_version })
            }
            _ => return None,
        };
        Some((tenant.clone(), change))
    }

    /// A short name for logs and audit.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Tick => "Tick",
            Command::LeaderChanged => "LeaderChanged",
            Command::SetConfig { .. } => "SetConfig",
            Command::RegisterWorker { .. } => "RegisterWorker",
            Command::UpdateWorker { .. } => "UpdateWorker",
            Command::SetWorkerSchedulable { .. } => "SetWorkerSchedulable",
            Command::SetPoolReserve { .. } => "SetPoolReserve",
            Command::RemoveWorker { .. } => "RemoveWorker",
            Command::CreateTenant { .. } => "CreateTenant",
            Command::DeleteTenant { .. } => "DeleteTenant",
            Command::SetQuota { .. } => "SetQuota",
            Command::AddToken { .. } => "AddToken",
            Command::RevokeToken { .. } => "RevokeToken",
            Command::Place { .. } => "Place",
            Command::PlaceOrQueue { .. } => "PlaceOrQueue",
            Command::CancelQueued { .. } => "CancelQueued",
            Command::Release { .. } => "Release",
            Command::CreatePlacementGroup { .. } => "CreatePlacementGroup",
            Command::Reserve { .. } => "Reserve",
            Command::ConfirmReservation { .. } => "ConfirmReservation",
            Command::CancelReservation { .. } => "CancelReservation",
            Command::AcquireLease { .. } => "AcquireLease",
            Command::KeepAliveLease { .. } => "KeepAliveLease",
            Command::ReleaseLease { .. } => "ReleaseLease",
            Command::Heartbeat { .. } => "Heartbeat",
            Command::SetPoolWorkerTtl { .. } => "SetPoolWorkerTtl",
            Command::ReportStatus { .. } => "ReportStatus",
            Command::SetPricePlan { .. } => "SetPricePlan",
            Command::SetBillingPlan { .. } => "SetBillingPlan",
            Command::SetBudget { .. } => "SetBudget",
            Command::SetRateLimits { .. } => "SetRateLimits",
            Command::RollbackPolicy { .. } => "RollbackPolicy",
            Command::AdjustInvoice { .. } => "AdjustInvoice",
            Command::CloseInvoice { .. } => "CloseInvoice",
        }
    }
}

/// The result of applying one entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    /// The index at which the command took effect (the first one, for a replayed request id).
    pub log_index: LogIndex,
    /// Log time when it took effect.
    pub applied_at: UnixMillis,
    pub result: Result<Response, Rejection>,
    /// True when `request_id` had been applied before and this is its first answer again.
    pub replayed: bool,
    /// What this entry's advance of log time expired (reported once, by the entry that did it).
    pub expired: Vec<Expired>,
    /// Quota state changes this entry caused, in order: those of its advance of log time, then
    /// those of its command (reported once, by the entry that did it, like `expired`).
    pub events: Vec<QuotaEvent>,
    /// What became of the placements that had instances on the workers this entry marked down
    /// (`Expired::Worker`), in (tenant, placement) order; reported once, like `expired`.
    pub lost: Vec<Lost>,
    /// Everything this entry did, in order (`events.rs`): the complete record, identical on
    /// every replica; `expired`, `events` and `lost` are views of it for the proposer's answer.
    /// A replayed request id's journal holds only what this entry's log time did. Never
    /// encoded (not in snapshots' session records nor in forwarded answers): each replica
    /// takes it from its own `apply`.
    #[serde(skip)]
    pub journal: Vec<Event>,
    /// The audit trail's record of this entry (`audit.rs`), if it is audited. Never encoded,
    /// like `journal`.
    #[serde(skip)]
    pub audit: Option<Box<AuditRecord>>,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Expired {
    Reservation {
        tenant: TenantId,
        reservation: PlacementId,
    },
    Lease {
        tenant: TenantId,
        lease: LeaseName,
        token: LogIndex,
    },
    /// The worker's TTL passed: it is down.
    Worker {
        worker: WorkerId,
    },
    /// The placement reached its `max_runtime_ms` and was released (reason `TIME_LIMIT`).
    TimeLimit {
        tenant: TenantId,
        placement: PlacementId,
    },
}

/// A placement that had instances on a worker that went down, and what became of it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Lost {
    pub tenant: TenantId,
    pub placement: PlacementId,
    /// The positions (in `Placement::instances`) of the lost instances, ascending.
    pub slots: Vec<u32>,
    pub outcome: LostOutcome,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum LostOutcome {
    /// Every lost instance moved: `(slot, from, to)`. The other instances, the placement's
    /// usage, quota, windows and grace periods are unchanged.
    Rescheduled { moves: Vec<(u32, WorkerId, WorkerId)> },
    /// Released (reason `WORKER_LOST`) and queued again (it came through the queue), to be
    /// placed anew by the fair-share queue.
    Queued,
    /// Released for good (reason `WORKER_LOST`).
    Released,
}

impl LostOutcome {
    /// The stable release reason (UPPER_SNAKE) when the placement was released.
    pub fn reason(&self) -> Option<&'static str> {
        match self {
            LostOutcome::Rescheduled { .. } => None,
            LostOutcome::Queued | LostOutcome::Released => {
                Some(super::events::ReleaseReason::WorkerLost.reason())
            }
        }
    }
}

/// A heartbeat's answer for one known worker.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatAck {
    /// The index at which the worker last became ready (registration or revival): an agent
    /// that sees it change knows the cluster dropped everything it ran.
    pub generation: LogIndex,
    /// Until when (log time) it stays up without another heartbeat.
    pub alive_until: UnixMillis,
    pub ttl_ms: u64,
    /// It was down, and this heartbeat brought it back (holding nothing).
    pub revived: bool,
    /// It is drained (alive, but receives no new work).
    pub drained: bool,
}

/// What was released when a tenant was deleted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeletedCounts {
    pub placements: u64,
    /// Queued placements withdrawn.
    pub queued: u64,
    pub reservations: u64,
    pub instances: u64,
    pub leases: u64,
    pub groups: u64,
    pub tokens: u64,
    pub resources: Resources,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    Ticked,
    LeaderChanged {
        leases_extended: u64,
    },
    ConfigSet,
    /// The worker as registered.
    WorkerRegistered(Worker),
    WorkerUpdated,
    WorkerSchedulable {
        schedulable: bool,
    },
    WorkerRemoved {
        evicted: Vec<(TenantId, PlacementId)>,
    },
    PoolReserveSet,
    /// The tenant as created.
    TenantCreated(Box<Tenant>),
    TenantDeleted(DeletedCounts),
    QuotaSet,
    /// The token was added; it is refused from `expires_at` on, if set.
    TokenAdded {
        expires_at: Option<UnixMillis>,
    },
    TokenRevoked,
    /// A placement or reservation as it now stands (instances name their workers).
    Placed(Placement),
    /// The placement waits in the queue.
    Queued(QueueStatus),
    QueuedCancelled,
    Released {
        resources: Resources,
        instances: u32,
    },
    GroupCreated,
    Reserved(Placement),
    Confirmed(Placement),
    Cancelled {
        resources: Resources,
        instances: u32,
    },
    LeaseGranted(Lease),
    LeaseKeptAlive(Lease),
    LeaseReleased,
    /// One answer per listed worker, in the order listed (`None`: no such worker).
    Heartbeats(Vec<Option<HeartbeatAck>>),
    PoolWorkerTtlSet,
    /// The version set takes effect at `since`.
    PricePlanSet {
        since: UnixMillis,
    },
    BillingPlanSet,
    BudgetSet,
    RateLimitsSet,
    /// The version the rollback became.
    PolicyRolledBack {
        version: u64,
    },
    InvoiceAdjusted,
    InvoiceClosed(Box<Invoice>),
    /// The report was recorded; `finished` when it ended the placement (then released).
    StatusReported {
        finished: Option<FinishedState>,
    },
}

/// Why workers were not chosen, counted once per worker (the first failing check, cheapest
/// first). Reported with `NoCapacity`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilterCounts {
    pub workers_in_pool: u64,
    pub draining: u64,
    /// Down: its TTL passed without a heartbeat.
    pub down: u64,
    pub insufficient_cpu: u64,
    pub insufficient_memory: u64,
    pub label_mismatch: u64,
    pub group_spread: u64,
    pub anti_affinity: u64,
    pub affinity: u64,
}

impl FilterCounts {
    /// The counts as `(reason, count)` pairs, for error metadata.
    pub fn pairs(&self) -> [(&'static str, u64); 9] {
        [
            ("workers_in_pool", self.workers_in_pool),
            ("draining", self.draining),
            ("down", self.down),
            ("insufficient_cpu", self.insufficient_cpu),
            ("insufficient_memory", self.insufficient_memory),
            ("label_mismatch", self.label_mismatch),
            ("group_spread", self.group_spread),
            ("anti_affinity", self.anti_affinity),
            ("affinity", self.affinity),
        ]
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum Rejection {
    #[error("tenant id is required")]
    TenantIdRequired,
    #[error(
        "tenant id {tenant:?} is invalid: use 1-63 of [a-z0-9-], starting and ending with [a-z0-9]"
    )]
    InvalidTenantId {
        /// The id as `ids::shortened` gives it: at most a short prefix of what was sent.
        tenant: String,
    },
    #[error("invalid {field}: {reason}")]
    InvalidArgument { field: String, reason: String },
    #[error("tenant {tenant} not found")]
    TenantNotFound { tenant: TenantId },
    #[error("tenant {tenant} already exists")]
    TenantExists { tenant: TenantId },
    #[error("tenant {tenant} has {children} child tenants; delete them first")]
    TenantHasChildren { tenant: TenantId, children: u64 },
    #[error("tenant {tenant} would be nested deeper than {depth_max} levels")]
    TenantTooDeep { tenant: TenantId, depth_max: u32 },
    #[error("worker {worker} not found")]
    WorkerNotFound { worker: WorkerId },
    #[error("worker {worker} already exists")]
    WorkerExists { worker: WorkerId },
    #[error("worker {worker} still runs {placements} placements; drain it or remove with evict")]
    WorkerNotEmpty { worker: WorkerId, placements: u64 },
    #[error(
        "worker {worker} has {allocated:?} allocated, more than the new capacity {capacity:?}"
    )]
    CapacityBelowAllocated { worker: WorkerId, capacity: Resources, allocated: Resources },
    #[error("placement {placement} not found")]
    PlacementNotFound { placement: PlacementId },
    #[error("placement {placement} already exists")]
    PlacementExists { placement: PlacementId },
    #[error("{placement} is a placement, not a reservation")]
    NotAReservation { placement: PlacementId },
    #[error("placement group {group} not found")]
    GroupNotFound { group: GroupId },
    #[error("price plan {plan} not found")]
    PlanNotFound { plan: PlanId },
    #[error("placement group {group} already exists")]
    GroupExists { group: GroupId },
    #[error("placement group {group} holds {current} of {max_instances} instances; {requested} more do not fit")]
    GroupFull { group: GroupId, max_instances: u32, current: u64, requested: u32 },
    #[error("{} quota of {limited_by} exceeded on {}{}: limit {limit}, used {used}, requested {requested}{}", kind.name(), dimension.name(), pool.as_ref().map(|p| format!(" in pool {p}")).unwrap_or_default(), match kind { LimitKind::Soft { grace_ended_at: Some(at) } => format!(" (grace ended at {at})"), LimitKind::Soft { grace_ended_at: None } => " (no grace period)".to_owned(), _ => String::new() })]
    QuotaExceeded {
        /// The tenant whose limit is hit: the caller or one of its ancestors.
        limited_by: TenantId,
        kind: LimitKind,
        dimension: Dimension,
        pool: Option<PoolId>,
        limit: u64,
        used: u64,
        requested: u64,
    },
    #[error("{} window of {limited_by} is spent: limit {limit}, used {used}; resets at {resets_at}", window.name())]
    WindowExhausted {
        /// The tenant whose window limit is spent: the caller or one of its ancestors.
        limited_by: TenantId,
        window: Window,
        limit: u64,
        used: u64,
        resets_at: UnixMillis,
    },
    #[error("policy version {version} of {tenant} is not kept (the oldest kept is {oldest})")]
    PolicyVersionNotFound { tenant: TenantId, version: u64, oldest: u64 },
    #[error("the {} of {limited_by} is spent; retry after {retry_after_ms} ms", limit.name())]
    RateLimited {
        /// The tenant whose rate limit holds the write back: the caller or an ancestor.
        limited_by: TenantId,
        limit: RateLimit,
        /// Ms until that limit (and every other in the lineage) allows one write.
        retry_after_ms: u64,
    },
    #[error("the {} budget of {tenant} is spent: {spent} of {budget}; it resets at {resets_at}", period.window_name())]
    BudgetSpent {
        tenant: TenantId,
        period: BudgetPeriod,
        budget: Decimal,
        spent: Decimal,
        resets_at: UnixMillis,
    },
    #[error("the invoice of {} is closed", super::meter::month_label(*month))]
    InvoiceClosed { month: u64 },
    #[error("{} has no open invoice: before the tenant existed, not begun, or older than the months kept", super::meter::month_label(*month))]
    InvoiceUnavailable { month: u64 },
    #[error("{} has not ended: it ends at {ends_at}", super::meter::month_label(*month))]
    MonthNotEnded { month: u64, ends_at: UnixMillis },
    #[error("pool {pool} is denied to {limited_by}")]
    PoolDenied {
        /// The tenant whose quota denies the pool: the caller or one of its ancestors.
        limited_by: TenantId,
        pool: PoolId,
    },
    #[error("borrowing {requested} {} in pool {pool} would leave less than the {held_for_lenders} held for other tenants' guarantees ({free} free)", dimension.name())]
    NotLendable {
        pool: PoolId,
        dimension: Dimension,
        free: u64,
        held_for_lenders: u64,
        requested: u64,
    },
    #[error("pool {pool}: guarantees of {guaranteed} {} plus a reserve of {reserve} would exceed its schedulable capacity of {capacity}", dimension.name())]
    PoolOvercommitted {
        pool: PoolId,
        dimension: Dimension,
        capacity: u64,
        /// The sum of every tenant's nominal guarantee in the pool, as it would be.
        guaranteed: u64,
        reserve: u64,
    },
    #[error("no capacity for instance {placed_before_failure} of {count} in pool {pool}")]
    NoCapacity { pool: PoolId, count: u32, placed_before_failure: u32, filtered: FilterCounts },
    #[error("lease {lease} is held by {holder} (token {}) until {expires_at}", token.0)]
    LeaseHeld { lease: LeaseName, holder: String, token: LogIndex, expires_at: UnixMillis },
    #[error("lease {lease} not found or expired")]
    LeaseNotFound { lease: LeaseName },
    #[error("fencing token {} for lease {lease} is stale (current: {})", presented.0, current.map(|t| t.0.to_string()).unwrap_or_else(|| "none".into()))]
    StaleFencingToken { lease: LeaseName, presented: LogIndex, current: Option<LogIndex> },
    #[error("request id was first used at index {} for a different command", first_index.0)]
    RequestIdReused { first_index: LogIndex },
    #[error("token {token} already exists")]
    TokenExists { token: TokenId },
    #[error("token {token} not found")]
    TokenNotFound { token: TokenId },
    #[error("placement {placement} is not queued")]
    NotQueued { placement: PlacementId },
    #[error("{what} limit of {max} reached")]
    LimitReached { what: String, max: u64 },
    #[error("unknown or revoked token")]
    Unauthenticated,
    #[error("slot {slot} of {placement} is not assigned to this worker at index {} (current: {})", presented.0, current.map(|c| c.0.to_string()).unwrap_or_else(|| "none".into()))]
    StaleAssignment {
        placement: PlacementId,
        slot: u32,
        presented: LogIndex,
        /// The slot's `assigned_at` if it is on the reporting worker.
        current: Option<LogIndex>,
    },
    #[error("{placement} is a reservation, not a placement")]
    NotAPlacement { placement: PlacementId },
    #[error("token {token} expired at {expired_at}")]
    TokenExpired { token: TokenId, expired_at: UnixMillis },
}

impl Rejection {
    pub fn invalid(field: &str, reason: impl Into<String>) -> Self {
        Rejection::InvalidArgument { field: field.to_owned(), reason: reason.into() }
    }

    /// The stable machine-readable reason (UPPER_SNAKE), part of the public contract.
    pub fn reason(&self) -> &'static str {
        match self {
            Rejection::TenantIdRequired => "TENANT_ID_REQUIRED",
            Rejection::InvalidTenantId { .. } => "INVALID_TENANT_ID",
            Rejection::InvalidArgument { .. } => "INVALID_ARGUMENT",
            Rejection::TenantNotFound { .. } => "TENANT_NOT_FOUND",
            Rejection::TenantExists { .. } => "TENANT_EXISTS",
            Rejection::TenantHasChildren { .. } => "TENANT_HAS_CHILDREN",
            Rejection::TenantTooDeep { .. } => "TENANT_TOO_DEEP",
            Rejection::WorkerNotFound { .. } => "WORKER_NOT_FOUND",
            Rejection::WorkerExists { .. } => "WORKER_EXISTS",
            Rejection::WorkerNotEmpty { .. } => "WORKER_NOT_EMPTY",
            Rejection::CapacityBelowAllocated { .. } => "CAPACITY_BELOW_ALLOCATED",
            Rejection::PlacementNotFound { .. } => "PLACEMENT_NOT_FOUND",
            Rejection::PlacementExists { .. } => "PLACEMENT_EXISTS",
            Rejection::NotAReservation { .. } => "NOT_A_RESERVATION",
            Rejection::GroupNotFound { .. } => "GROUP_NOT_FOUND",
            Rejection::PlanNotFound { .. } => "PLAN_NOT_FOUND",
            Rejection::GroupExists { .. } => "GROUP_EXISTS",
            Rejection::GroupFull { .. } => "GROUP_FULL",
            Rejection::QuotaExceeded { .. } => "QUOTA_EXCEEDED",
            Rejection::PoolDenied { .. } => "POOL_DENIED",
            Rejection::WindowExhausted { .. } => "QUOTA_EXCEEDED",
            Rejection::BudgetSpent { .. } => "QUOTA_EXCEEDED",
            Rejection::RateLimited { .. } => "RATE_LIMITED",
            Rejection::PolicyVersionNotFound { .. } => "POLICY_VERSION_NOT_FOUND",
            Rejection::InvoiceClosed { .. } => "INVOICE_CLOSED",
            Rejection::InvoiceUnavailable { .. } => "INVOICE_UNAVAILABLE",
            Rejection::MonthNotEnded { .. } => "MONTH_NOT_ENDED",
            Rejection::NoCapacity { .. } => "NO_CAPACITY",
            Rejection::NotLendable { .. } => "NOT_LENDABLE",
            Rejection::PoolOvercommitted { .. } => "POOL_OVERCOMMITTED",
            Rejection::LeaseHeld { .. } => "LEASE_HELD",
            Rejection::LeaseNotFound { .. } => "LEASE_NOT_FOUND",
            Rejection::StaleFencingToken { .. } => "STALE_FENCING_TOKEN",
            Rejection::RequestIdReused { .. } => "REQUEST_ID_REUSED",
            Rejection::TokenExists { .. } => "TOKEN_EXISTS",
            Rejection::TokenNotFound { .. } => "TOKEN_NOT_FOUND",
            Rejection::NotQueued { .. } => "NOT_QUEUED",
            Rejection::LimitReached { .. } => "LIMIT_REACHED",
            Rejection::Unauthenticated => "UNAUTHENTICATED",
            Rejection::StaleAssignment { .. } => "STALE_ASSIGNMENT",
            Rejection::NotAPlacement { .. } => "NOT_A_PLACEMENT",
            Rejection::TokenExpired { .. } => "TOKEN_EXPIRED",
        }
    }

    /// Key/value detail for `ErrorInfo.metadata`.
    pub fn metadata(&self) -> BTreeMap<String, String> {
        let mut m = BTreeMap::new();
        let mut put = |k: &str, v: String| {
            m.insert(k.to_owned(), v);
        };
        match self {
            Rejection::QuotaExceeded {
                limited_by,
                kind,
                dimension,
                pool,
                limit,
                used,
                requested,
            } => {
                put("tenant", limited_by.to_string());
                put("limit_kind", kind.name().to_owned());
                if let LimitKind::Soft { grace_ended_at: Some(at) } = kind {
                    put("grace_ended_at_ms", at.0.to_string());
                }
                put("dimension", dimension.name().to_owned());
                if let Some(pool) = pool {
                    put("pool", pool.to_string());
                }
                put("limit", limit.to_string());
                put("used", used.to_string());
                put("requested", requested.to_string());
            }
            Rejection::WindowExhausted { limited_by, window, limit, used, resets_at } => {
                put("tenant", limited_by.to_string());
                put("limit_kind", "window".to_owned());
                put("window", window.name().to_owned());
                put("limit", limit.to_string());
                put("used", used.to_string());
                put("resets_at_ms", resets_at.0.to_string());
            }
            Rejection::BudgetSpent { tenant, period, budget, spent, resets_at } => {
                put("tenant", tenant.to_string());
                put("limit_kind", "budget".to_owned());
                put("window", period.window_name().to_owned());
                put("limit", budget.to_string());
                put("used", spent.to_string());
                put("resets_at_ms", resets_at.0.to_string());
            }
            Rejection::PolicyVersionNotFound { tenant, version, oldest } => {
                put("tenant", tenant.to_string());
                put("version", version.to_string());
                put("oldest", oldest.to_string());
            }
            Rejection::RateLimited { limited_by, limit, retry_after_ms } => {
                put("tenant", limited_by.to_string());
                put("limit_kind", "rate".to_owned());
                put("limit", limit.name().to_owned());
                put("retry_after_ms", retry_after_ms.to_string());
            }
            Rejection::PoolDenied { limited_by, pool } => {
                put("tenant", limited_by.to_string());
                put("pool", pool.to_string());
            }
            Rejection::NoCapacity { pool, count, placed_before_failure, filtered } => {
                put("pool", pool.to_string());
                put("count", count.to_string());
                put("placed_before_failure", placed_before_failure.to_string());
                for (reason, n) in filtered.pairs() {
                    put(reason, n.to_string());
                }
            }
            Rejection::NotLendable { pool, dimension, free, held_for_lenders, requested } => {
                put("pool", pool.to_string());
                put("dimension", dimension.name().to_owned());
                put("free", free.to_string());
                put("held_for_lenders", held_for_lenders.to_string());
                put("requested", requested.to_string());
            }
            Rejection::PoolOvercommitted { pool, dimension, capacity, guaranteed, reserve } => {
                put("pool", pool.to_string());
                put("dimension", dimension.name().to_owned());
                put("capacity", capacity.to_string());
                put("guaranteed", guaranteed.to_string());
                put("reserve", reserve.to_string());
            }
            Rejection::LeaseHeld { lease, holder, token, expires_at } => {
                put("lease", lease.to_string());
                put("holder", holder.clone());
                put("token", token.0.to_string());
                put("expires_at_ms", expires_at.0.to_string());
            }
            Rejection::StaleFencingToken { lease, presented, current } => {
                put("lease", lease.to_string());
                put("presented", presented.0.to_string());
                if let Some(current) = current {
                    put("current", current.0.to_string());
                }
            }
            Rejection::GroupFull { group, max_instances, current, requested } => {
                put("group", group.to_string());
                put("max_instances", max_instances.to_string());
                put("current", current.to_string());
                put("requested", requested.to_string());
            }
            Rejection::StaleAssignment { placement, slot, presented, current } => {
                put("placement", placement.to_string());
                put("slot", slot.to_string());
                put("presented", presented.0.to_string());
                if let Some(current) = current {
                    put("current", current.0.to_string());
                }
            }
            Rejection::TokenExpired { token, expired_at } => {
                put("token", token.to_string());
                put("expired_at_ms", expired_at.0.to_string());
            }
            Rejection::InvalidArgument { field, .. } => put("field", field.clone()),
            Rejection::InvalidTenantId { tenant } => put("tenant", tenant.clone()),
            _ => {}
        }
        m
    }
}
