//! `berth reserve`, `berth confirm` and `berth cancel`: hold capacity for a while, then turn
//! the reservation into a placement or give it back.

use berth::client::pb;
use clap::Args;

use super::args::{PlacementRef, Workload};
use super::Session;

#[derive(Args, Debug)]
pub struct ReserveArgs {
    #[command(flatten)]
    workload: Workload,
    #[arg(long)]
    ttl_ms: u64,
}

pub async fn reserve(s: &Session, args: ReserveArgs) -> anyhow::Result<()> {
    let ReserveArgs { workload, ttl_ms } = args;
    let m = pb::ReserveRequest {
        request_id: s.request_id(),
        tenant_id: workload.tenant.clone(),
        spec: Some(workload.spec()),
        ttl_ms,
        fence: workload.fence.clone(),
    };
    s.show(&call!(s, scheduler, reserve, m))
}

pub async fn confirm(s: &Session, args: PlacementRef) -> anyhow::Result<()> {
    let PlacementRef { tenant, id, fence } = args;
    let m = pb::ConfirmReservationRequest {
        request_id: s.request_id(),
        tenant_id: tenant,
        reservation_id: id,
        fence,
    };
    s.show(&call!(s, scheduler, confirm_reservation, m))
}

pub async fn cancel(s: &Session, args: PlacementRef) -> anyhow::Result<()> {
    let PlacementRef { tenant, id, fence } = args;
    let m = pb::CancelReservationRequest {
        request_id: s.request_id(),
        tenant_id: tenant,
        reservation_id: id,
        fence,
    };
    s.show(&call!(s, scheduler, cancel_reservation, m))
}
