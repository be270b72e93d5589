//! The client operations, each sent through `berth::client::Client` and recorded in the
//! history (`history::Op`) with its invocation and completion time and its outcome: `ok`
//! with the answer's log index, `fail` (refused) or `info` (no answer). Used by the workload,
//! the scenarios and the hostile requests.

use std::sync::{Arc, Mutex};

use berth::client::{self, pb, Client};
use tonic::Code;

use crate::cluster::{lock, now_ms};
use crate::history::{Fenced, LeaseSeen, Op, OpKind, Outcome};

pub(crate) struct Recorder {
    pub(crate) client: u32,
    pub(crate) history: Arc<Mutex<Vec<Op>>>,
}

impl Recorder {
    pub(crate) fn record(&self, kind: OpKind, invoke_ms: u64, outcome: Outcome) -> Outcome {
        let op = Op { client: self.client, kind, invoke_ms, complete_ms: now_ms(), outcome };
        let outcome = op.outcome.clone();
        lock(&self.history).push(op);
        outcome
    }
}

pub(crate) async fn place(
    c: &Client,
    rec: &Recorder,
    request_id: String,
    tenant: &str,
    placement: &str,
    instances: u64,
    fence: Option<Fenced>,
) -> Outcome {
    place_in(c, rec, request_id, (tenant, placement), instances, fence, None).await
}

pub(crate) fn outcome_of(status: &tonic::Status) -> Outcome {
    use tonic_types::StatusExt;
    match status.code() {
        Code::Unavailable | Code::DeadlineExceeded | Code::Unknown | Code::Cancelled => {
            Outcome::Info { why: format!("{:?}: {}", status.code(), status.message()) }
        }
        // The stable ErrorInfo reason (e.g. STALE_FENCING_TOKEN), else the code.
        code => match status.get_details_error_info() {
            Some(info) => Outcome::Fail { reason: info.reason },
            None => Outcome::Fail { reason: format!("{code:?}") },
        },
    }
}

/// An acknowledged write, with its log index and log time.
fn wrote(write: Option<pb::WriteInfo>, expires_at_ms: Option<u64>) -> Outcome {
    match write {
        Some(w) => Outcome::applied(w.log_index, w.applied_at_ms, expires_at_ms),
        None => Outcome::written(None),
    }
}

pub(crate) fn is_stale(outcome: &Outcome) -> bool {
    matches!(outcome, Outcome::Fail { reason } if reason == "STALE_FENCING_TOKEN")
}

fn spec(placement: &str, instances: u64, group: Option<&str>) -> pb::PlacementSpec {
    pb::PlacementSpec {
        placement_id: placement.to_string(),
        count: u32::try_from(instances).unwrap_or(1),
        resources: Some(pb::Resources { cpu_millis: 100, memory_mib: 64 }),
        group: group.unwrap_or_default().to_string(),
        ..Default::default()
    }
}

/// Sends one write and records it as `kind`; `answered` reads an acknowledged reply. An
/// unanswered write is sent again, with the same request id (so the answer is the first one),
/// up to `attempts` times in all; if none is answered it is recorded as `info`.
pub(crate) async fn write<M: Clone, T, F, Fut>(
    c: &Client,
    rec: &Recorder,
    kind: OpKind,
    attempts: usize,
    (message, rpc): (M, F),
    answered: impl Fn(T) -> Outcome,
) -> Outcome
where
    F: Fn(tonic::transport::Channel, tonic::Request<M>) -> Fut + Copy,
    Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let invoked = now_ms();
    let mut outcome = Outcome::Info { why: "never sent".into() };
    for _ in 0..attempts {
        outcome = match c.call(message.clone(), rpc).await {
            Ok(answer) => answered(answer),
            Err(status) => outcome_of(&status),
        };
        if !matches!(outcome, Outcome::Info { .. }) {
            break;
        }
    }
    rec.record(kind, invoked, outcome)
}

pub(crate) fn acknowledged(write: Option<pb::WriteInfo>) -> Outcome {
    wrote(write, None)
}

/// Place, optionally into a placement group.
pub(crate) async fn place_in(
    c: &Client,
    rec: &Recorder,
    request_id: String,
    (tenant, placement): (&str, &str),
    instances: u64,
    fence: Option<Fenced>,
    group: Option<&str>,
) -> Outcome {
    let r = pb::PlaceRequest {
        request_id,
        tenant_id: tenant.to_string(),
        spec: Some(spec(placement, instances, group)),
        fence: fence.clone().map(|f| pb::Fence { lease: f.lease, token: f.token }),
        ..Default::default()
    };
    let kind = OpKind::Place {
        tenant: tenant.into(),
        placement: placement.into(),
        instances,
        fence,
        group: group.map(str::to_string),
    };
    let rpc = |ch, r| async move { client::scheduler(ch).place(r).await };
    write(c, rec, kind, 1, (r, rpc), |a: pb::PlaceResponse| acknowledged(a.write)).await
}

pub(crate) async fn release(
    c: &Client,
    rec: &Recorder,
    request_id: String,
    tenant: &str,
    placement: &str,
    fence: Option<Fenced>,
) -> Outcome {
    let r = pb::ReleaseRequest {
        request_id,
        tenant_id: tenant.to_string(),
        placement_id: placement.to_string(),
        fence: fence.clone().map(|f| pb::Fence { lease: f.lease, token: f.token }),
    };
    let kind = OpKind::Release { tenant: tenant.into(), placement: placement.into(), fence };
    let rpc = |ch, r| async move { client::scheduler(ch).release(r).await };
    write(c, rec, kind, 1, (r, rpc), |a: pb::ReleaseResponse| acknowledged(a.write)).await
}

pub(crate) async fn reserve(
    c: &Client,
    rec: &Recorder,
    request_id: String,
    (tenant, placement): (&str, &str),
    instances: u64,
    ttl_ms: u64,
) -> Outcome {
    let r = pb::ReserveRequest {
        request_id,
        tenant_id: tenant.to_string(),
        spec: Some(spec(placement, instances, None)),
        ttl_ms,
        fence: None,
    };
    let kind = OpKind::Reserve { tenant: tenant.into(), placement: placement.into(), instances };
    let rpc = |ch, r| async move { client::scheduler(ch).reserve(r).await };
    write(c, rec, kind, 1, (r, rpc), |a: pb::ReserveResponse| {
        wrote(a.write, a.reservation.and_then(|p| p.expires_at_ms))
    })
    .await
}

pub(crate) async fn confirm(
    c: &Client,
    rec: &Recorder,
    request_id: String,
    tenant: &str,
    placement: &str,
) -> Outcome {
    let r = pb::ConfirmReservationRequest {
        request_id,
        tenant_id: tenant.to_string(),
        reservation_id: placement.to_string(),
        fence: None,
    };
    let kind = OpKind::Confirm { tenant: tenant.into(), placement: placement.into() };
    let rpc = |ch, r| async move { client::scheduler(ch).confirm_reservation(r).await };
    write(c, rec, kind, 1, (r, rpc), |a: pb::ConfirmReservationResponse| acknowledged(a.write))
        .await
}

pub(crate) async fn cancel(
    c: &Client,
    rec: &Recorder,
    request_id: String,
    tenant: &str,
    placement: &str,
) -> Outcome {
    let r = pb::CancelReservationRequest {
        request_id,
        tenant_id: tenant.to_string(),
        reservation_id: placement.to_string(),
        fence: None,
    };
    let kind = OpKind::Cancel { tenant: tenant.into(), placement: placement.into() };
    let rpc = |ch, r| async move { client::scheduler(ch).cancel_reservation(r).await };
    write(c, rec, kind, 1, (r, rpc), |a: pb::CancelReservationResponse| acknowledged(a.write)).await
}

/// CreatePlacementGroup, retried with the same request id until answered (the answer carries
/// the first log index).
pub(crate) async fn create_group(
    c: &Client,
    rec: &Recorder,
    request_id: String,
    tenant: &str,
    group: &str,
    max: u64,
) -> Outcome {
    let r = pb::CreatePlacementGroupRequest {
        request_id,
        tenant_id: tenant.to_string(),
        group: group.to_string(),
        max_instances: u32::try_from(max).unwrap_or(u32::MAX),
        strategy: pb::GroupStrategy::Pack.into(),
    };
    let kind = OpKind::CreateGroup { tenant: tenant.into(), group: group.into(), max };
    let rpc = |ch, r| async move { client::scheduler(ch).create_placement_group(r).await };
    write(c, rec, kind, 5, (r, rpc), |a: pb::CreatePlacementGroupResponse| acknowledged(a.write))
        .await
}

/// DeleteTenant, retried with the same request id until answered.
pub(crate) async fn delete_tenant(
    c: &Client,
    rec: &Recorder,
    request_id: String,
    tenant: &str,
) -> Outcome {
    let r = pb::DeleteTenantRequest { request_id, tenant_id: tenant.to_string() };
    let kind = OpKind::DeleteTenant { tenant: tenant.into() };
    let rpc = |ch, r| async move { client::tenants(ch).delete_tenant(r).await };
    write(c, rec, kind, 5, (r, rpc), |a: pb::DeleteTenantResponse| acknowledged(a.write)).await
}

/// The lease state of an acknowledged lease answer.
fn lease_seen(write: Option<pb::WriteInfo>, lease: Option<pb::Lease>, grant: bool) -> Outcome {
    let log_index = write.as_ref().map(|w| w.log_index);
    let lease = lease.map(|l| LeaseSeen {
        token: l.token,
        at_ms: if grant { l.granted_at_ms } else { write.as_ref().map_or(0, |w| w.applied_at_ms) },
        expires_at_ms: l.expires_at_ms,
    });
    let at_ms = write.as_ref().map(|w| w.applied_at_ms);
    Outcome::Ok { log_index, found: None, lease, at_ms, expires_at_ms: None }
}

pub(crate) async fn acquire(
    c: &Client,
    rec: &Recorder,
    request_id: String,
    tenant: &str,
    lease: &str,
    holder: &str,
    ttl_ms: u64,
) -> Outcome {
    let r = pb::AcquireRequest {
        request_id,
        tenant_id: tenant.into(),
        name: lease.into(),
        holder: holder.into(),
        ttl_ms,
    };
    let kind =
        OpKind::Acquire { tenant: tenant.into(), lease: lease.into(), holder: holder.into() };
    let rpc = |ch, r| async move { client::leases(ch).acquire(r).await };
    write(c, rec, kind, 1, (r, rpc), |a: pb::AcquireResponse| lease_seen(a.write, a.lease, true))
        .await
}

pub(crate) async fn keep_alive(
    c: &Client,
    rec: &Recorder,
    request_id: String,
    tenant: &str,
    lease: &str,
    token: u64,
) -> Outcome {
    let r =
        pb::KeepAliveRequest { request_id, tenant_id: tenant.into(), name: lease.into(), token };
    let kind = OpKind::KeepAlive { tenant: tenant.into(), lease: lease.into(), token };
    let rpc = |ch, r| async move { client::leases(ch).keep_alive(r).await };
    write(c, rec, kind, 1, (r, rpc), |a: pb::KeepAliveResponse| lease_seen(a.write, a.lease, false))
        .await
}

pub(crate) async fn release_lease(
    c: &Client,
    rec: &Recorder,
    request_id: String,
    tenant: &str,
    lease: &str,
    token: u64,
) -> Outcome {
    let r =
        pb::ReleaseLeaseRequest { request_id, tenant_id: tenant.into(), name: lease.into(), token };
    let kind = OpKind::ReleaseLease { tenant: tenant.into(), lease: lease.into(), token };
    let rpc = |ch, r| async move { client::leases(ch).release(r).await };
    write(c, rec, kind, 1, (r, rpc), |a: pb::ReleaseLeaseResponse| acknowledged(a.write)).await
}

pub(crate) async fn read(c: &Client, rec: &Recorder, tenant: &str, placement: &str) {
    let r = pb::GetPlacementRequest {
        tenant_id: tenant.to_string(),
        placement_id: placement.to_string(),
        ..Default::default()
    };
    let invoked = now_ms();
    let outcome = match c
        .call(r, |ch, r| async move { client::scheduler(ch).get_placement(r).await })
        .await
    {
        Ok(_) => Outcome::read(true),
        Err(status) if status.code() == Code::NotFound => Outcome::read(false),
        Err(status) => outcome_of(&status),
    };
    rec.record(
        OpKind::Read { tenant: tenant.into(), placement: placement.into() },
        invoked,
        outcome,
    );
}

/// Retries a setup write (same request id) until it is applied.
pub(crate) async fn must<M: Clone, T, F, Fut>(
    client: &Client,
    message: M,
    rpc: F,
) -> Result<T, String>
where
    F: Fn(tonic::transport::Channel, tonic::Request<M>) -> Fut + Copy,
    Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    for _ in 0..100 {
        match client.call(message.clone(), rpc).await {
            Ok(answer) => return Ok(answer),
            Err(status) if matches!(outcome_of(&status), Outcome::Info { .. }) => {}
            Err(status) => return Err(format!("setup refused: {status:?}")),
        }
    }
    Err("setup never succeeded".into())
}
