//! Conversions between the public protos (`berth.v1`) and the core's types. Input checks that
//! the core does not make (enum values, required messages) fail with INVALID_ARGUMENT here;
//! everything else is validated by the core in `apply`.

use tonic::Status;

use super::pb;
use super::status::invalid;
use crate::scheduler::ids::quoted;
use crate::scheduler::{
    Burst, Decision, EffectiveQuota, Guarantee, Preemption, QueueStatus, QuotaEvent, RateLimits,
    SoftLimit, SoftLimits, SoftShare, WaitReason, WindowLimits, WindowPolicy, WindowUsage,
};
use crate::scheduler::{
    Fence, Finished, FinishedState, GroupStrategy, LabelOp, LabelRequirement, LabelTerm, Lease,
    Limits, LogIndex, OnWorkerLost, PlaceSpec, Placement, PlacementId, PoolId, Quota,
    ReportedStatus, Resources, Strategy, Tenant, Usage, Worker, WorkerState,
};

/// A list request's page: the id to start after (none: from the first) and how many (0: 100).
pub fn page(page: Option<pb::Page>) -> (Option<String>, u32) {
    let page = page.unwrap_or_default();
    let limit = if page.limit == 0 { 100 } else { page.limit };
    ((!page.after.is_empty()).then_some(page.after), limit)
}

/// A cross-tenant list's `after`: "tenant_id/placement_id" (neither id has a '/').
pub fn tenant_page_after(
    after: Option<String>,
) -> Result<Option<(crate::scheduler::TenantId, PlacementId)>, Status> {
    let Some(after) = after else { return Ok(None) };
    let (tenant, placement) = after.split_once('/').ok_or_else(|| {
        invalid("INVALID_ARGUMENT", "page.after must be \"tenant_id/placement_id\"")
    })?;
    Ok(Some((crate::scheduler::TenantId::new(tenant), PlacementId::new(placement))))
}

pub fn resources(r: Option<pb::Resources>) -> Resources {
    let r = r.unwrap_or_default();
    Resources::new(r.cpu_millis, r.memory_mib)
}

pub fn pb_resources(r: Resources) -> pb::Resources {
    pb::Resources { cpu_millis: r.cpu_millis, memory_mib: r.memory_mib }
}

pub fn pool(p: crate::scheduler::PoolStatus) -> pb::Pool {
    pb::Pool {
        pool: p.pool.0,
        workers: p.workers,
        capacity: Some(pb_resources(p.capacity)),
        free: Some(pb_resources(p.free)),
        reserve: p.reserve.map(pb_resources),
        guaranteed: Some(pb_resources(p.guaranteed)),
        guarantees: p.guarantees,
        shortfall: Some(pb_resources(p.shortfall)),
        down: p.down,
        worker_ttl_ms: p.worker_ttl_ms,
    }
}

fn non_empty<T: From<String>>(s: String) -> Option<T> {
    (!s.is_empty()).then(|| T::from(s))
}

fn requirement(r: pb::LabelRequirement) -> Result<LabelRequirement, Status> {
    use pb::label_requirement::Op;
    let op = match Op::try_from(r.op) {
        Ok(Op::In) => LabelOp::In,
        Ok(Op::NotIn) => LabelOp::NotIn,
        Ok(Op::Exists) => LabelOp::Exists,
        Ok(Op::DoesNotExist) => LabelOp::DoesNotExist,
        _ => {
            return Err(invalid(
                "INVALID_ARGUMENT",
                format!("label requirement on {} needs an op", quoted(&r.key)),
            ))
        }
    };
    Ok(LabelRequirement { key: r.key, op, values: r.values })
}

fn pb_requirement(r: &LabelRequirement) -> pb::LabelRequirement {
    use pb::label_requirement::Op;
    let op = match r.op {
        LabelOp::In => Op::In,
        LabelOp::NotIn => Op::NotIn,
        LabelOp::Exists => Op::Exists,
        LabelOp::DoesNotExist => Op::DoesNotExist,
    };
    pb::LabelRequirement { key: r.key.clone(), op: op.into(), values: r.values.clone() }
}

fn terms(t: Vec<pb::LabelTerm>) -> Vec<LabelTerm> {
    t.into_iter().map(|t| LabelTerm { key: t.key, value: t.value }).collect()
}

fn pb_terms(t: &[LabelTerm]) -> Vec<pb::LabelTerm> {
    t.iter().map(|t| pb::LabelTerm { key: t.key.clone(), value: t.value.clone() }).collect()
}

pub fn spec(spec: Option<pb::PlacementSpec>) -> Result<PlaceSpec, Status> {
    let s = spec.ok_or_else(|| invalid("INVALID_ARGUMENT", "spec is required"))?;
    let strategy = match pb::Strategy::try_from(s.strategy) {
        Ok(pb::Strategy::BinPack) => Strategy::BinPack,
        Ok(pb::Strategy::Spread) => Strategy::Spread,
        Err(_) => {
            return Err(invalid("INVALID_ARGUMENT", format!("unknown strategy {}", s.strategy)))
        }
    };
    let on_worker_lost = match pb::OnWorkerLost::try_from(s.on_worker_lost) {
        Ok(pb::OnWorkerLost::Reschedule) => OnWorkerLost::Reschedule,
        Ok(pb::OnWorkerLost::Release) => OnWorkerLost::Release,
        Err(_) => {
            let message = format!("unknown on_worker_lost {}", s.on_worker_lost);
            return Err(invalid("INVALID_ARGUMENT", message));
        }
    };
    Ok(PlaceSpec {
        placement: PlacementId(s.placement_id),
        count: if s.count == 0 { 1 } else { s.count },
        resources: resources(s.resources),
        pool: non_empty(s.pool),
        strategy,
        labels: s.labels,
        worker_requires: s
            .worker_requires
            .into_iter()
            .map(requirement)
            .collect::<Result<_, _>>()?,
        worker_prefers: s.worker_prefers.into_iter().map(requirement).collect::<Result<_, _>>()?,
        affinity: terms(s.affinity),
        affinity_preferred: terms(s.affinity_preferred),
        anti_affinity: terms(s.anti_affinity),
        anti_affinity_preferred: terms(s.anti_affinity_preferred),
        group: non_empty(s.group),
        priority: s.priority,
        requeue_on_preemption: s.requeue_on_preemption,
        on_worker_lost,
        max_runtime_ms: (s.max_runtime_ms != 0).then_some(s.max_runtime_ms),
    })
}

fn pb_spec(s: &PlaceSpec) -> pb::PlacementSpec {
    pb::PlacementSpec {
        placement_id: s.placement.0.clone(),
        count: s.count,
        resources: Some(pb_resources(s.resources)),
        pool: s.pool.as_ref().map(|p| p.0.clone()).unwrap_or_default(),
        strategy: match s.strategy {
            Strategy::BinPack => pb::Strategy::BinPack,
            Strategy::Spread => pb::Strategy::Spread,
        }
        .into(),
        labels: s.labels.clone(),
        worker_requires: s.worker_requires.iter().map(pb_requirement).collect(),
        worker_prefers: s.worker_prefers.iter().map(pb_requirement).collect(),
        affinity: pb_terms(&s.affinity),
        affinity_preferred: pb_terms(&s.affinity_preferred),
        anti_affinity: pb_terms(&s.anti_affinity),
        anti_affinity_preferred: pb_terms(&s.anti_affinity_preferred),
        group: s.group.as_ref().map(|g| g.0.clone()).unwrap_or_default(),
        priority: s.priority,
        requeue_on_preemption: s.requeue_on_preemption,
        on_worker_lost: match s.on_worker_lost {
            OnWorkerLost::Reschedule => pb::OnWorkerLost::Reschedule,
            OnWorkerLost::Release => pb::OnWorkerLost::Release,
        }
        .into(),
        max_runtime_ms: s.max_runtime_ms.unwrap_or(0),
    }
}

pub fn placement(p: &Placement) -> pb::Placement {
    pb::Placement {
        tenant_id: p.tenant.0.clone(),
        spec: Some(pb_spec(&p.spec)),
        pool: p.pool.0.clone(),
        workers: p.instances.iter().map(|w| w.0.clone()).collect(),
        placed_at_ms: p.placed_at.0,
        log_index: p.log_index.0,
        expires_at_ms: p.expires_at.map(|t| t.0),
        borrowed: p.borrowed,
        instances: p
            .instances
            .iter()
            .zip(&p.slots)
            .map(|(w, slot)| pb::Instance {
                worker_id: w.0.clone(),
                assigned_at: slot.assigned_at.0,
                running_since_ms: slot.running_since.map(|t| t.0),
                completed_at_ms: slot.completed_at.map(|t| t.0),
            })
            .collect(),
        time_limit_at_ms: p.time_limit_at.map(|t| t.0),
    }
}

pub fn finished(f: &Finished) -> pb::FinishedPlacement {
    let (exit_code, message) = match &f.state {
        FinishedState::Failed { exit_code, message } => (*exit_code, message.clone()),
        _ => (0, String::new()),
    };
    pb::FinishedPlacement {
        tenant_id: f.tenant.0.clone(),
        placement_id: f.placement.0.clone(),
        pool: f.pool.0.clone(),
        workers: f.workers.iter().map(|w| w.0.clone()).collect(),
        resources: Some(pb_resources(f.resources)),
        count: f.count,
        placed_at_ms: f.placed_at.0,
        ended_at_ms: f.ended_at.0,
        log_index: f.log_index.0,
        reason: f.state.reason().into(),
        exit_code,
        message,
    }
}

/// An agent's report, checked for a known status (the core checks the rest).
pub fn reported_status(
    status: i32,
    exit_code: i32,
    message: String,
) -> Result<ReportedStatus, Status> {
    match pb::InstanceStatus::try_from(status) {
        Ok(pb::InstanceStatus::Running) => Ok(ReportedStatus::Running),
        Ok(pb::InstanceStatus::Completed) => Ok(ReportedStatus::Completed),
        Ok(pb::InstanceStatus::Failed) => Ok(ReportedStatus::Failed { exit_code, message }),
        Ok(pb::InstanceStatus::Unspecified) | Err(_) => Err(invalid(
            "INVALID_ARGUMENT",
            format!("status must be RUNNING, COMPLETED or FAILED, not {status}"),
        )),
    }
}

pub fn fence(f: Option<pb::Fence>) -> Option<Fence> {
    f.map(|f| Fence { lease: f.lease.into(), token: LogIndex(f.token) })
}

pub fn group_strategy(s: i32) -> Result<GroupStrategy, Status> {
    match pb::GroupStrategy::try_from(s) {
        Ok(pb::GroupStrategy::Spread) => Ok(GroupStrategy::Spread),
        Ok(pb::GroupStrategy::Pack) => Ok(GroupStrategy::Pack),
        Err(_) => Err(invalid("INVALID_ARGUMENT", format!("unknown group strategy {s}"))),
    }
}

pub fn worker(w: &Worker) -> pb::Worker {
    pb::Worker {
        worker_id: w.id.0.clone(),
        pool: w.pool.0.clone(),
        capacity: Some(pb_resources(w.capacity)),
        allocated: Some(pb_resources(w.allocated)),
        labels: w.labels.clone(),
        schedulable: w.schedulable,
        registered_at_ms: w.registered_at.0,
        liveness: w.liveness.map(|l| pb::WorkerLiveness {
            ttl_ms: l.ttl_ms,
            alive_until_ms: l.alive_until.0,
            last_heartbeat_ms: l.last_heartbeat.0,
        }),
        down_since_ms: w.down_since.map(|t| t.0),
        generation: w.generation.0,
        history: w
            .history
            .iter()
            .map(|t| pb::WorkerTransition {
                state: match t.state {
                    WorkerState::Registered => pb::worker_transition::State::Registered,
                    WorkerState::Down => pb::worker_transition::State::Down,
                    WorkerState::Revived => pb::worker_transition::State::Revived,
                    WorkerState::Drained => pb::worker_transition::State::Drained,
                    WorkerState::Undrained => pb::worker_transition::State::Undrained,
                }
                .into(),
                at_ms: t.at.0,
                log_index: t.index.0,
            })
            .collect(),
    }
}

pub fn tenant(t: &Tenant) -> pb::Tenant {
    pb::Tenant {
        tenant_id: t.id.0.clone(),
        parent_id: t.parent.as_ref().map(|p| p.0.clone()).unwrap_or_default(),
        children: t.children.iter().map(|c| c.0.clone()).collect(),
        weight: t.weight,
        created_at_ms: t.created_at.0,
        token_names: t.tokens.keys().map(|k| k.0.clone()).collect(),
        tokens: t
            .tokens
            .iter()
            .map(|(name, token)| pb::TokenInfo {
                name: name.0.clone(),
                expires_at_ms: token.expires_at.map_or(0, |at| at.0),
            })
            .collect(),
    }
}

pub fn lease(l: &Lease) -> pb::Lease {
    pb::Lease {
        tenant_id: l.tenant.0.clone(),
        name: l.name.0.clone(),
        holder: l.holder.clone(),
        token: l.token.0,
        ttl_ms: l.ttl_ms,
        granted_at_ms: l.granted_at.0,
        expires_at_ms: l.expires_at.0,
    }
}

fn limits(l: pb::Limits) -> Limits {
    Limits {
        cpu_millis: l.cpu_millis,
        memory_mib: l.memory_mib,
        instances: l.instances,
        jobs: l.jobs,
    }
}

fn pb_limits(l: &Limits) -> pb::Limits {
    pb::Limits {
        cpu_millis: l.cpu_millis,
        memory_mib: l.memory_mib,
        instances: l.instances,
        jobs: l.jobs,
    }
}

fn soft_limit(l: pb::SoftLimit) -> SoftLimit {
    SoftLimit { soft: l.soft, burst: l.burst }
}

fn pb_soft_limit(l: SoftLimit) -> pb::SoftLimit {
    pb::SoftLimit { soft: l.soft, burst: l.burst }
}

fn soft_limits(l: pb::SoftLimits) -> SoftLimits {
    SoftLimits {
        cpu_millis: l.cpu_millis.map(soft_limit),
        memory_mib: l.memory_mib.map(soft_limit),
        instances: l.instances.map(soft_limit),
        jobs: l.jobs.map(soft_limit),
    }
}

fn pb_soft_limits(l: &SoftLimits) -> pb::SoftLimits {
    pb::SoftLimits {
        cpu_millis: l.cpu_millis.map(pb_soft_limit),
        memory_mib: l.memory_mib.map(pb_soft_limit),
        instances: l.instances.map(pb_soft_limit),
        jobs: l.jobs.map(pb_soft_limit),
    }
}

pub fn quota(q: Option<pb::Quota>) -> Result<Quota, Status> {
    let q = q.unwrap_or_default();
    let preemption = match q.preemption.map(pb::Preemption::try_from) {
        None => None,
        Some(Ok(pb::Preemption::Never)) => Some(Preemption::Never),
        Some(Ok(pb::Preemption::SameTenant)) => Some(Preemption::SameTenant),
        Some(Ok(pb::Preemption::AnyTenant)) => Some(Preemption::AnyTenant),
        Some(Err(_)) => {
            return Err(invalid(
                "INVALID_ARGUMENT",
                format!("unknown preemption policy {}", q.preemption.unwrap_or_default()),
            ))
        }
    };
    Ok(Quota {
        total: limits(q.total.unwrap_or_default()),
        pools: q.pools.into_iter().map(|(p, l)| (PoolId(p), limits(l))).collect(),
        soft: soft_limits(q.soft.unwrap_or_default()),
        grace_ms: q.grace_ms,
        denied_pools: q.denied_pools.into_iter().map(PoolId).collect(),
        windows: window_limits(q.windows.unwrap_or_default()),
        preemption,
        guarantees: q.guarantees.into_iter().map(|(p, g)| (PoolId(p), guarantee(g))).collect(),
        soft_share: q.soft_share.map(|s| SoftShare {
            pool: PoolId(s.pool),
            soft_per_mille: s.soft_per_mille,
            burst_per_mille: s.burst_per_mille,
        }),
        // Out of range: 0 (always refused as out of bounds).
        alert_percent: q.alert_percent.map(|p| u8::try_from(p).unwrap_or(0)),
    })
}

fn guarantee(g: pb::Guarantee) -> Guarantee {
    Guarantee {
        nominal: resources(g.nominal),
        borrowing_limit: g.borrowing_limit.map(|r| resources(Some(r))),
        lending_limit: g.lending_limit.map(|r| resources(Some(r))),
    }
}

pub fn pb_guarantee(g: &Guarantee) -> pb::Guarantee {
    pb::Guarantee {
        nominal: Some(pb_resources(g.nominal)),
        borrowing_limit: g.borrowing_limit.map(pb_resources),
        lending_limit: g.lending_limit.map(pb_resources),
    }
}

pub fn pb_preemption(p: Preemption) -> pb::Preemption {
    match p {
        Preemption::Never => pb::Preemption::Never,
        Preemption::SameTenant => pb::Preemption::SameTenant,
        Preemption::AnyTenant => pb::Preemption::AnyTenant,
    }
}

fn window_limits(w: pb::WindowLimits) -> WindowLimits {
    let when_exhausted = match pb::window_limits::Policy::try_from(w.when_exhausted) {
        Ok(pb::window_limits::Policy::Refuse) => WindowPolicy::Refuse,
        _ => WindowPolicy::Queue,
    };
    WindowLimits {
        jobs_per_day: w.jobs_per_day,
        cpu_milli_ms_per_month: w.cpu_milli_ms_per_month,
        jobs_per_week: w.jobs_per_week,
        cpu_milli_ms_per_week: w.cpu_milli_ms_per_week,
        when_exhausted,
    }
}

fn pb_window_limits(w: &WindowLimits) -> pb::WindowLimits {
    let policy = match w.when_exhausted {
        WindowPolicy::Queue => pb::window_limits::Policy::Queue,
        WindowPolicy::Refuse => pb::window_limits::Policy::Refuse,
    };
    pb::WindowLimits {
        jobs_per_day: w.jobs_per_day,
        cpu_milli_ms_per_month: w.cpu_milli_ms_per_month,
        jobs_per_week: w.jobs_per_week,
        cpu_milli_ms_per_week: w.cpu_milli_ms_per_week,
        when_exhausted: policy.into(),
    }
}

pub fn window_usage(w: &WindowUsage) -> pb::WindowUsage {
    pb::WindowUsage {
        jobs_today: w.jobs_today,
        day_resets_at_ms: w.day_resets_at.0,
        cpu_milli_ms_this_month: w.cpu_milli_ms_this_month.to_string(),
        month_resets_at_ms: w.month_resets_at.0,
        jobs_this_week: w.jobs_this_week,
        cpu_milli_ms_this_week: w.cpu_milli_ms_this_week.to_string(),
        week_resets_at_ms: w.week_resets_at.0,
    }
}

pub fn pb_quota(q: &Quota) -> pb::Quota {
    pb::Quota {
        total: Some(pb_limits(&q.total)),
        pools: q.pools.iter().map(|(p, l)| (p.0.clone(), pb_limits(l))).collect(),
        soft: Some(pb_soft_limits(&q.soft)),
        grace_ms: q.grace_ms,
        denied_pools: q.denied_pools.iter().map(|p| p.0.clone()).collect(),
        windows: Some(pb_window_limits(&q.windows)),
        preemption: q.preemption.map(|p| pb_preemption(p).into()),
        guarantees: q.guarantees.iter().map(|(p, g)| (p.0.clone(), pb_guarantee(g))).collect(),
        soft_share: q.soft_share.as_ref().map(|s| pb::SoftShare {
            pool: s.pool.0.clone(),
            soft_per_mille: s.soft_per_mille,
            burst_per_mille: s.burst_per_mille,
        }),
        alert_percent: q.alert_percent.map(u32::from),
    }
}

pub fn pb_effective(q: &EffectiveQuota) -> pb::Quota {
    pb::Quota {
        total: Some(pb_limits(&q.total)),
        pools: q.pools.iter().map(|(p, l)| (p.0.clone(), pb_limits(l))).collect(),
        soft: Some(pb_soft_limits(&q.soft)),
        grace_ms: Some(q.grace_ms),
        denied_pools: q.denied_pools.iter().map(|p| p.0.clone()).collect(),
        // Window limits are not inherited: each tenant's own apply to its subtree.
        windows: None,
        preemption: Some(pb_preemption(q.preemption).into()),
        // Guarantees are not inherited either; soft shows share-of-pool limits resolved.
        guarantees: Default::default(),
        soft_share: None,
        alert_percent: None,
    }
}

pub fn burst(b: &Burst) -> pb::Burst {
    pb::Burst { since_ms: b.since.0, grace_ends_at_ms: b.grace_ends_at.0, grace_expired: b.expired }
}

pub fn quota_event(e: &QuotaEvent) -> pb::QuotaEvent {
    use pb::quota_event::Kind;
    let (kind, tenant, grace_ends_at_ms) = match e {
        QuotaEvent::BurstEntered { tenant, grace_ends_at } => {
            (Kind::BurstEntered, tenant, grace_ends_at.0)
        }
        QuotaEvent::GraceExpired { tenant } => (Kind::GraceExpired, tenant, 0),
        QuotaEvent::ReturnedUnderSoft { tenant } => (Kind::ReturnedUnderSoft, tenant, 0),
        QuotaEvent::BudgetAlert { tenant, month, percent, budget, spent } => {
            return pb::QuotaEvent {
                kind: Kind::BudgetAlert.into(),
                tenant_id: tenant.0.clone(),
                budget_month: crate::scheduler::meter::month_label(*month),
                budget_percent: u32::from(*percent),
                budget: budget.to_string(),
                spent: spent.to_string(),
                ..Default::default()
            }
        }
        QuotaEvent::UtilisationHigh { tenant, pool, dimension, percent, used, limit } => {
            return pb::QuotaEvent {
                kind: Kind::UtilisationHigh.into(),
                tenant_id: tenant.0.clone(),
                pool: pool.as_ref().map(|p| p.0.clone()).unwrap_or_default(),
                dimension: dimension.name().to_owned(),
                utilisation_percent: u32::from(*percent),
                used: *used,
                limit: *limit,
                ..Default::default()
            }
        }
        QuotaEvent::UtilisationNormal { tenant, pool, dimension } => {
            return pb::QuotaEvent {
                kind: Kind::UtilisationNormal.into(),
                tenant_id: tenant.0.clone(),
                pool: pool.as_ref().map(|p| p.0.clone()).unwrap_or_default(),
                dimension: dimension.name().to_owned(),
                ..Default::default()
            }
        }
        QuotaEvent::Admitted { tenant, placement } => {
            return pb::QuotaEvent {
                kind: Kind::QueuedPlaced.into(),
                tenant_id: tenant.0.clone(),
                placement_id: placement.0.clone(),
                ..Default::default()
            }
        }
        QuotaEvent::Preempted {
            tenant,
            placement,
            by_tenant,
            by_placement,
            reclaimed,
            requeued,
        } => {
            return pb::QuotaEvent {
                kind: Kind::Preempted.into(),
                tenant_id: tenant.0.clone(),
                placement_id: placement.0.clone(),
                by_tenant_id: by_tenant.0.clone(),
                by_placement_id: by_placement.0.clone(),
                reclaimed: *reclaimed,
                requeued: *requeued,
                ..Default::default()
            }
        }
    };
    pb::QuotaEvent {
        kind: kind.into(),
        tenant_id: tenant.0.clone(),
        grace_ends_at_ms,
        ..Default::default()
    }
}

pub fn decision(d: &Decision, decided_at_ms: u64) -> (Option<pb::Placement>, pb::PlaceDecision) {
    let (placement, reason, message, metadata) = match &d.result {
        Ok(p) => (Some(placement(p)), String::new(), String::new(), Default::default()),
        Err(r) => (None, r.reason().to_owned(), r.to_string(), r.metadata().into_iter().collect()),
    };
    let decision = pb::PlaceDecision {
        would_place: placement.is_some(),
        reason,
        message,
        metadata,
        workers: d
            .workers
            .iter()
            .map(|(w, f)| pb::WorkerVerdict { worker_id: w.0.clone(), reason: f.name().to_owned() })
            .collect(),
        quota_events: d.events.iter().map(quota_event).collect(),
        decided_at_ms,
    };
    (placement, decision)
}

pub fn usage(u: &Usage) -> pb::Usage {
    pb::Usage {
        cpu_millis: u.cpu_millis,
        memory_mib: u.memory_mib,
        instances: u.instances,
        jobs: u.jobs,
    }
}

pub fn queued(q: &QueueStatus) -> pb::QueuedPlacement {
    let (wait_reason, wait_message, wait_metadata) = match &q.reason {
        WaitReason::BehindOwnTenant { placement } => (
            "BEHIND_OWN_TENANT".to_owned(),
            format!("waits for {placement}, queued earlier by the same tenant"),
            Default::default(),
        ),
        WaitReason::FairShareOrder => (
            "FAIR_SHARE_ORDER".to_owned(),
            "fits now; entries ahead in fair-share order go first".to_owned(),
            Default::default(),
        ),
        WaitReason::Refused(r) => {
            (r.reason().to_owned(), r.to_string(), r.metadata().into_iter().collect())
        }
    };
    pb::QueuedPlacement {
        tenant_id: q.queued.tenant.0.clone(),
        spec: Some(pb_spec(&q.queued.spec)),
        pool: q.queued.pool.0.clone(),
        queued_at_ms: q.queued.queued_at.0,
        log_index: q.queued.log_index.0,
        position: q.position,
        pool_queued: q.pool_queued,
        aged: q.aged,
        wait_reason,
        wait_message,
        wait_metadata,
    }
}

/// The tenant's standing in every pool it uses or holds a guarantee in.
pub fn shares(s: &crate::scheduler::Scheduler, t: &Tenant) -> Vec<pb::PoolShare> {
    let pools: std::collections::BTreeSet<&PoolId> =
        t.usage.pools.keys().chain(t.quota.guarantees.keys()).collect();
    pools
        .into_iter()
        .map(|pool| {
            let used = t.usage.pool(pool);
            let g = t.quota.guarantees.get(pool);
            let nominal = g.map(|g| g.nominal).unwrap_or_default();
            pb::PoolShare {
                pool: pool.0.clone(),
                guarantee: g.map(pb_guarantee),
                used: Some(pb::Resources {
                    cpu_millis: used.cpu_millis,
                    memory_mib: used.memory_mib,
                }),
                borrowed: Some(pb_resources(s.borrowed(&t.id, pool))),
                unused: Some(pb::Resources {
                    cpu_millis: nominal.cpu_millis.saturating_sub(used.cpu_millis),
                    memory_mib: nominal.memory_mib.saturating_sub(used.memory_mib),
                }),
            }
        })
        .collect()
}

/// One journaled event as a watcher receives it.
pub fn watch_event(j: &crate::raft::journal::Journaled) -> pb::WatchEvent {
    use crate::scheduler::events::{Event, QueueCause, ReleaseReason};
    let ids =
        |workers: &[crate::scheduler::WorkerId]| workers.iter().map(|w| w.0.clone()).collect();
    let mut e = pb::WatchEvent {
        log_index: j.pos.index.0,
        event: j.pos.n,
        at_ms: j.at.0,
        kind: j.event.kind().name().into(),
        tenant_id: j.event.tenant().map(|t| t.0.clone()).unwrap_or_default(),
        ..Default::default()
    };
    match &*j.event {
        Event::Placed {
            placement,
            pool,
            instances,
            resources,
            reservation,
            from_queue,
            expires_at,
            ..
        } => {
            e.placement_id = placement.0.clone();
            e.pool = pool.0.clone();
            e.workers = ids(instances);
            e.resources = Some(pb_resources(*resources));
            e.reservation = *reservation;
            e.from_queue = *from_queue;
            e.expires_at_ms = expires_at.map(|t| t.0);
        }
        Event::Confirmed { placement, instances, .. } => {
            e.placement_id = placement.0.clone();
            e.workers = ids(instances);
        }
        Event::Dequeued { placement, .. } => e.placement_id = placement.0.clone(),
        Event::Released { placement, instances, reason, .. } => {
            e.placement_id = placement.0.clone();
            e.workers = ids(instances);
            e.reason = reason.reason().into();
            match reason {
                ReleaseReason::Preempted { by_tenant, by_placement, reclaimed } => {
                    e.by_tenant_id = by_tenant.0.clone();
                    e.by_placement_id = by_placement.0.clone();
                    e.reclaimed = *reclaimed;
                }
                ReleaseReason::Failed { exit_code } => e.exit_code = *exit_code,
                _ => {}
            }
        }
        Event::Queued { placement, cause, .. } => {
            e.placement_id = placement.0.clone();
            e.reason = match cause {
                QueueCause::Requested => "REQUESTED",
                QueueCause::Preempted => "PREEMPTED",
                QueueCause::WorkerLost => "WORKER_LOST",
            }
            .into();
        }
        Event::Metered { statement, .. } => e.statement = Some(pb_statement(statement)),
        Event::InvoiceClosed { invoice, .. } => e.invoice = Some(pb_invoice(invoice)),
        Event::Rescheduled { placement, moves, .. } => {
            e.placement_id = placement.0.clone();
            e.moves = moves
                .iter()
                .map(|(slot, from, to)| pb::InstanceMove {
                    slot: *slot,
                    from_worker: from.0.clone(),
                    to_worker: to.0.clone(),
                })
                .collect();
        }
        Event::InstanceRunning { placement, slot, worker, .. }
        | Event::InstanceCompleted { placement, slot, worker, .. } => {
            e.placement_id = placement.0.clone();
            e.slot = *slot;
            e.workers = vec![worker.0.clone()];
        }
        Event::InstanceFailed { placement, slot, worker, exit_code, .. } => {
            e.placement_id = placement.0.clone();
            e.slot = *slot;
            e.workers = vec![worker.0.clone()];
            e.exit_code = *exit_code;
        }
        Event::LeaseGranted { lease, holder, token, expires_at, .. } => {
            e.lease = lease.0.clone();
            e.holder = holder.clone();
            e.fencing_token = token.0;
            e.expires_at_ms = Some(expires_at.0);
        }
        Event::LeaseReleased { lease, token, .. } | Event::LeaseExpired { lease, token, .. } => {
            e.lease = lease.0.clone();
            e.fencing_token = token.0;
        }
        Event::Quota(q) => e.quota = Some(quota_event(q)),
        Event::TenantCreated { parent, .. } => {
            e.parent_id = parent.as_ref().map(|p| p.0.clone()).unwrap_or_default();
        }
        Event::TenantDeleted { .. } => {}
        Event::WorkerRegistered { worker, pool, capacity } => {
            e.workers = vec![worker.0.clone()];
            e.pool = pool.0.clone();
            e.resources = Some(pb_resources(*capacity));
        }
        Event::WorkerDown { worker, instances_lost } => {
            e.workers = vec![worker.0.clone()];
            e.instances_lost = *instances_lost;
        }
        Event::WorkerRevived { worker }
        | Event::WorkerDrained { worker }
        | Event::WorkerUndrained { worker }
        | Event::WorkerRemoved { worker } => e.workers = vec![worker.0.clone()],
    }
    e
}

// ----- billing ---------------------------------------------------------------------------------

fn pb_pool_prices(pool: &str, prices: &crate::scheduler::meter::PoolPrices) -> pb::PoolPrices {
    pb::PoolPrices {
        pool: pool.to_owned(),
        items: prices
            .items
            .iter()
            .map(|(item, tiers)| pb::ItemPrice {
                item: item.name().into(),
                tiers: tiers
                    .iter()
                    .map(|t| pb::PriceTier {
                        up_to_hours: t.up_to_hours,
                        per_hour: t.per_hour.to_string(),
                    })
                    .collect(),
            })
            .collect(),
    }
}

/// A version's prices: each named pool, then (pool "") every other pool.
pub fn pb_prices(prices: &crate::scheduler::Prices) -> Vec<pb::PoolPrices> {
    let named = prices.pools.iter().map(|(pool, p)| pb_pool_prices(pool.as_str(), p));
    named.chain(std::iter::once(pb_pool_prices("", &prices.other_pools))).collect()
}

/// A request's prices; the core checks their bounds (`Prices::validate`).
pub fn prices(pools: &[pb::PoolPrices]) -> Result<crate::scheduler::Prices, Status> {
    use crate::scheduler::meter::{PoolPrices, PLAN_POOLS_MAX, TIERS_MAX};
    use crate::scheduler::{Item, PoolId, Tier};
    // One more than the core allows is enough for it to say so.
    if pools.len() > PLAN_POOLS_MAX + 1 {
        return Err(invalid("INVALID_ARGUMENT", format!("at most {PLAN_POOLS_MAX} pools")));
    }
    let mut out = crate::scheduler::Prices::default();
    let mut seen = std::collections::BTreeSet::new();
    for p in pools {
        if !seen.insert(p.pool.as_str()) {
            let which = if p.pool.is_empty() { "every other pool".into() } else { quoted(&p.pool) };
            return Err(invalid("INVALID_ARGUMENT", format!("prices for {which} given twice")));
        }
        let mut priced = PoolPrices::default();
        for i in &p.items {
            let item = Item::from_name(&i.item).ok_or_else(|| {
                let quoted = quoted(&i.item);
                invalid(
                    "INVALID_ARGUMENT",
                    format!("unknown item {quoted}: cpu, memory, reserved_cpu or reserved_memory"),
                )
            })?;
            if i.tiers.len() > TIERS_MAX {
                return Err(invalid("INVALID_ARGUMENT", format!("at most {TIERS_MAX} tiers")));
            }
            let tiers = i
                .tiers
                .iter()
                .map(|t| {
                    let per_hour = t.per_hour.trim().parse().map_err(|_| {
                        let quoted = quoted(&t.per_hour);
                        invalid("INVALID_DECIMAL", format!("per_hour {quoted} is not a decimal"))
                    })?;
                    Ok(Tier { up_to_hours: t.up_to_hours, per_hour })
                })
                .collect::<Result<Vec<_>, Status>>()?;
            if priced.items.insert(item, tiers).is_some() {
                let name = item.name();
                return Err(invalid("INVALID_ARGUMENT", format!("item {name} priced twice")));
            }
        }
        if p.pool.is_empty() {
            out.other_pools = priced;
        } else {
            out.pools.insert(PoolId::new(&p.pool), priced);
        }
    }
    Ok(out)
}

pub fn pb_statement(s: &crate::scheduler::Statement) -> pb::Statement {
    use crate::scheduler::meter::{hours, month_label};
    pb::Statement {
        month: month_label(s.month),
        from_ms: s.from.0,
        to_ms: s.to.0,
        lines: s
            .lines
            .iter()
            .map(|l| pb::StatementLine {
                pool: l.pool.0.clone(),
                item: l.item.name().into(),
                unit: l.item.unit().into(),
                plan: l.price.as_ref().map(|p| p.plan.0.clone()).unwrap_or_default(),
                price_since_ms: l.price.as_ref().map_or(0, |p| p.since.0),
                tier: l.price.as_ref().map_or(0, |p| u32::from(p.tier)),
                quantity: l.quantity.to_string(),
                quantity_hours: hours(l.item, l.quantity).to_string(),
                per_hour: l.per_hour.to_string(),
                amount: l.amount.to_string(),
            })
            .collect(),
        total: s.total.to_string(),
    }
}

pub fn pb_usage(s: &crate::usage::Series) -> pb::GetUsageResponse {
    use crate::scheduler::meter::hours;
    pb::GetUsageResponse {
        resolution: s.resolution.name().into(),
        as_of_ms: s.as_of.0,
        buckets: s
            .buckets
            .iter()
            .map(|b| pb::UsageBucket {
                from_ms: b.from.0,
                to_ms: b.to.0,
                lines: b
                    .quantities
                    .iter()
                    .map(|((pool, item), quantity)| pb::UsageLine {
                        pool: pool.0.clone(),
                        item: item.name().into(),
                        unit: item.unit().into(),
                        quantity: quantity.to_string(),
                        quantity_hours: hours(*item, *quantity).to_string(),
                    })
                    .collect(),
            })
            .collect(),
    }
}

/// The replicated tunables on the wire.
pub fn pb_config(c: &crate::scheduler::Config) -> pb::ClusterConfig {
    pb::ClusterConfig {
        placement_algorithm: c.placement_algorithm,
        lease_grace_ms: c.lease_grace_ms,
        sessions_max: c.sessions_max,
        preferred_scan_max: c.preferred_scan_max,
        usage_raw_retention_ms: c.usage_retention.raw_ms,
        usage_hourly_retention_ms: c.usage_retention.hourly_ms,
        usage_daily_retention_ms: c.usage_retention.daily_ms,
    }
}

/// The replicated tunables from the wire (checked by `Command::validate`).
pub fn config(c: &pb::ClusterConfig) -> crate::scheduler::Config {
    crate::scheduler::Config {
        placement_algorithm: c.placement_algorithm,
        lease_grace_ms: c.lease_grace_ms,
        sessions_max: c.sessions_max,
        preferred_scan_max: c.preferred_scan_max,
        usage_retention: crate::scheduler::UsageRetention {
            raw_ms: c.usage_raw_retention_ms,
            hourly_ms: c.usage_hourly_retention_ms,
            daily_ms: c.usage_daily_retention_ms,
        },
    }
}

/// A `Budget` from the wire: an empty threshold list is the default one unless `no_alerts`.
pub fn budget(b: &pb::Budget) -> Result<crate::scheduler::Budget, Status> {
    use crate::scheduler::budget::{
        BUDGET_ALERTS_DEFAULT, BUDGET_ALERTS_MAX, BUDGET_ALERT_PERCENT_MAX,
    };
    let per_month = b.per_month.trim().parse().map_err(|_| {
        let quoted = quoted(&b.per_month);
        invalid("INVALID_DECIMAL", format!("per_month {quoted} is not a decimal"))
    })?;
    if b.no_alerts && !b.alerts_percent.is_empty() {
        return Err(invalid("INVALID_ARGUMENT", "give alerts_percent or no_alerts, not both"));
    }
    // One more than the core allows is enough for it to say so.
    if b.alerts_percent.len() > BUDGET_ALERTS_MAX + 1 {
        let message = format!("at most {BUDGET_ALERTS_MAX} alert thresholds");
        return Err(invalid("INVALID_ARGUMENT", message));
    }
    let alerts_percent = if b.alerts_percent.is_empty() && !b.no_alerts {
        BUDGET_ALERTS_DEFAULT.to_vec()
    } else {
        b.alerts_percent
            .iter()
            .map(|p| {
                u16::try_from(*p).map_err(|_| {
                    let message =
                        format!("alert thresholds are 1..={BUDGET_ALERT_PERCENT_MAX} percent");
                    invalid("INVALID_ARGUMENT", message)
                })
            })
            .collect::<Result<Vec<u16>, Status>>()?
    };
    let per_day = match b.per_day.trim() {
        "" => None,
        text => Some(text.parse().map_err(|_| {
            let quoted = quoted(&b.per_day);
            invalid("INVALID_DECIMAL", format!("per_day {quoted} is not a decimal"))
        })?),
    };
    Ok(crate::scheduler::Budget { per_month, per_day, alerts_percent, hard_stop: b.hard_stop })
}

pub fn pb_budget(b: &crate::scheduler::Budget) -> pb::Budget {
    pb::Budget {
        per_month: b.per_month.to_string(),
        alerts_percent: b.alerts_percent.iter().map(|p| u32::from(*p)).collect(),
        hard_stop: b.hard_stop,
        no_alerts: b.alerts_percent.is_empty(),
        per_day: b.per_day.map(|d| d.to_string()).unwrap_or_default(),
    }
}

/// "YYYY-MM" (UTC) as months since January 1970.
pub fn month(field: &str, text: &str) -> Result<u64, Status> {
    let bad = || {
        let quoted = quoted(text);
        invalid("INVALID_ARGUMENT", format!("{field} {quoted} is not a month like 2026-11"))
    };
    let (year, month) = text.trim().split_once('-').ok_or_else(bad)?;
    let (year, month): (u64, u64) =
        (year.parse().map_err(|_| bad())?, month.parse().map_err(|_| bad())?);
    if year.to_string().len() != 4 || !(1970..=9999).contains(&year) || !(1..=12).contains(&month) {
        return Err(bad());
    }
    Ok((year - 1970) * 12 + month - 1)
}

fn pb_adjustment(a: &crate::scheduler::Adjustment) -> pb::InvoiceAdjustment {
    pb::InvoiceAdjustment {
        amount: a.amount.to_string(),
        reason: a.reason.clone(),
        log_index: a.log_index.0,
        added_at_ms: a.added_at.0,
    }
}

pub fn pb_adjustments(a: &[crate::scheduler::Adjustment]) -> Vec<pb::InvoiceAdjustment> {
    a.iter().map(pb_adjustment).collect()
}

pub fn pb_invoice(i: &crate::scheduler::Invoice) -> pb::Invoice {
    let lines = pb_statement(&crate::scheduler::Statement {
        month: i.month,
        from: crate::scheduler::UnixMillis(0),
        to: crate::scheduler::UnixMillis(0),
        lines: i.lines.clone(),
        total: i.total,
    })
    .lines;
    pb::Invoice {
        tenant_id: i.tenant.0.clone(),
        month: crate::scheduler::meter::month_label(i.month),
        lines,
        adjustments: pb_adjustments(&i.adjustments),
        total: i.total.to_string(),
        closed_at_ms: i.closed_at.0,
        log_index: i.log_index.0,
        automatic: i.automatic,
    }
}

/// Rate limits as sent: 0 is "not limited that way"; all zero (or unset) is `None`. A
/// `burst_rate` alone is kept, for `RateLimits::validate` to refuse.
pub fn rate_limits(r: Option<pb::RateLimits>) -> Option<RateLimits> {
    let r = r.unwrap_or_default();
    let limits = RateLimits {
        token_rate: (r.token_rate != 0).then_some(r.token_rate),
        burst_rate: (r.burst_rate != 0).then_some(r.burst_rate),
        daily_quota: (r.daily_quota != 0).then_some(r.daily_quota),
    };
    (limits != RateLimits::default()).then_some(limits)
}

pub fn pb_rate_limits(r: &RateLimits) -> pb::RateLimits {
    pb::RateLimits {
        token_rate: r.token_rate.unwrap_or(0),
        burst_rate: r.burst_rate.unwrap_or(0),
        daily_quota: r.daily_quota.unwrap_or(0),
    }
}

/// What `tenant`'s rate limits allow at the state's log time.
pub fn rate_status(s: &crate::scheduler::Scheduler, t: &Tenant) -> pb::RateStatus {
    use crate::scheduler::windows::DAY_MS;
    let now = s.now();
    let own = t.rate.as_deref();
    pb::RateStatus {
        writes_available: own.and_then(|r| r.bucket.available(&r.limits, now.0)).unwrap_or(0),
        writes_today: own.map_or(0, |r| r.today_at(now)),
        day_resets_at_ms: (now.0 / DAY_MS + 1).saturating_mul(DAY_MS),
        lineage: s
            .rate_lineage(&t.id)
            .iter()
            .map(|(id, limits)| pb::RateLimitsOf {
                tenant_id: id.to_string(),
                limits: Some(pb_rate_limits(limits)),
            })
            .collect(),
    }
}

pub fn pb_policy_version(v: &crate::scheduler::PolicyVersion) -> pb::PolicyVersion {
    let p = &v.policy;
    pb::PolicyVersion {
        version: v.version,
        at_ms: v.at.0,
        log_index: v.log_index.0,
        actor: v.actor.name(),
        request_id: v.request_id.as_ref().map(|r| r.0.clone()).unwrap_or_default(),
        change: v.change.name(),
        policy: Some(pb::Policy {
            quota: Some(pb_quota(&p.quota)),
            rate_limits: p.rate_limits.as_ref().map(pb_rate_limits),
            budget: p.budget.as_ref().map(pb_budget),
            billing_plan: p.billing_plan.as_ref().map(|p| p.to_string()).unwrap_or_default(),
        }),
    }
}

pub fn pb_audit_record(r: &crate::scheduler::AuditRecord) -> pb::AuditRecord {
    use crate::raft::replica::hex;
    pb::AuditRecord {
        seq: r.seq,
        log_index: r.index.0,
        at_ms: r.at.0,
        actor: r.actor.clone(),
        tenant_id: r.tenant.clone(),
        request_id: r.request_id.clone(),
        command: r.command.clone(),
        outcome: r.outcome.clone(),
        prev_hash: hex(&r.prev),
        hash: hex(&r.hash),
    }
}

/// A record as the API gives it, back in the core's form (to recompute its hash).
pub fn audit_record(r: &pb::AuditRecord) -> Result<crate::scheduler::AuditRecord, String> {
    let hash = |text: &str| -> Result<[u8; 32], String> {
        let bytes: Option<Vec<u8>> = (0..text.len())
            .step_by(2)
            .map(|i| text.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
            .collect();
        bytes
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| format!("{} is not a hash", quoted(text)))
    };
    Ok(crate::scheduler::AuditRecord {
        seq: r.seq,
        index: LogIndex(r.log_index),
        at: crate::scheduler::UnixMillis(r.at_ms),
        actor: r.actor.clone(),
        tenant: r.tenant_id.clone(),
        request_id: r.request_id.clone(),
        command: r.command.clone(),
        outcome: r.outcome.clone(),
        prev: hash(&r.prev_hash)?,
        hash: hash(&r.hash)?,
    })
}
