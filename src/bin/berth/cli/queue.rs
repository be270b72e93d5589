//! `berth queue`: a tenant's placements waiting in the fair-share queue, and withdrawing one.

use berth::client::pb;
use clap::Subcommand;

use super::args::page;
use super::Session;
use crate::output::show;

#[derive(Subcommand, Debug)]
pub enum QueueCmd {
    /// A tenant's queued placements: position, age and why each waits (no tenant, with the
    /// admin token: every tenant's; --after TENANT/PLACEMENT).
    List {
        tenant: Option<String>,
        #[arg(long)]
        after: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Withdraw a queued placement.
    Cancel { tenant: String, id: String },
}

pub async fn run(s: &Session, cmd: QueueCmd) -> anyhow::Result<()> {
    match cmd {
        QueueCmd::List { tenant, after, limit } => {
            let m = pb::ListQueueRequest {
                tenant_id: tenant.unwrap_or_default(),
                page: page(after, limit),
                read: None,
            };
            let r = call!(s, scheduler, list_queue, m);
            if s.json {
                return show(true, &r.queued);
            }
            let rows: Vec<serde_json::Value> = r.queued.iter().map(queued_row).collect();
            show(false, &rows)
        }
        QueueCmd::Cancel { tenant, id } => {
            let m = pb::CancelQueuedRequest {
                request_id: s.request_id(),
                tenant_id: tenant,
                placement_id: id,
            };
            s.show(&call!(s, scheduler, cancel_queued, m))
        }
    }
}

/// One readable table row per queued placement.
fn queued_row(q: &pb::QueuedPlacement) -> serde_json::Value {
    let spec = q.spec.clone().unwrap_or_default();
    let each = spec.resources.unwrap_or_default();
    serde_json::json!({
        "id": spec.placement_id,
        "pool": q.pool,
        "position": format!("{}/{}", q.position, q.pool_queued),
        "instances": spec.count,
        "cpu_each": format!("{}m", each.cpu_millis),
        "queued_at_ms": q.queued_at_ms,
        "aged": q.aged,
        "waits_for": q.wait_reason,
    })
}
