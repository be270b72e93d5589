//! `berth place`, `berth release` and `berth placement`: put a workload's instances on
//! workers (or explain where they would go), release them, and read what is placed.

use std::collections::BTreeMap;

use berth::client::pb;
use clap::{Args, Subcommand};

use super::args::{page, PlacementRef, Workload};
use super::Session;
use crate::output::show;

#[derive(Args, Debug)]
pub struct PlaceArgs {
    #[command(flatten)]
    workload: Workload,
    /// Explain the decision (workers, or each worker's reason and the limiting quota)
    /// without placing anything.
    #[arg(long)]
    dry_run: bool,
    /// Wait in the fair-share queue instead of failing when quota or capacity is short.
    #[arg(long)]
    queue: bool,
}

#[derive(Subcommand, Debug)]
pub enum PlacementCmd {
    Get {
        tenant: String,
        id: String,
    },
    List {
        tenant: String,
        #[arg(long)]
        after: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Placements that ended without being released by the tenant: completed, failed, lost
    /// with their worker, or timed out (the last 1,000 per tenant).
    Finished {
        tenant: String,
        #[arg(long)]
        after: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
}

pub async fn place(s: &Session, args: PlaceArgs) -> anyhow::Result<()> {
    let PlaceArgs { workload: w, dry_run, queue } = args;
    let m = pb::PlaceRequest {
        request_id: s.request_id(),
        tenant_id: w.tenant.clone(),
        spec: Some(w.spec()),
        fence: w.fence.clone(),
        dry_run,
        queue_if_unavailable: queue,
    };
    let r = call!(s, scheduler, place, m);
    match r.decision {
        Some(d) if !s.json => show_decision(&r.placement, &d),
        _ => s.show(&r),
    }
}

pub async fn release(s: &Session, args: PlacementRef) -> anyhow::Result<()> {
    let PlacementRef { tenant, id, fence } = args;
    let m = pb::ReleaseRequest {
        request_id: s.request_id(),
        tenant_id: tenant,
        placement_id: id,
        fence,
    };
    s.show(&call!(s, scheduler, release, m))
}

pub async fn run(s: &Session, cmd: PlacementCmd) -> anyhow::Result<()> {
    match cmd {
        PlacementCmd::Get { tenant, id } => {
            let m = pb::GetPlacementRequest { tenant_id: tenant, placement_id: id, read: None };
            s.show(&call!(s, scheduler, get_placement, m))
        }
        PlacementCmd::List { tenant, after, limit } => {
            let m = pb::ListPlacementsRequest {
                tenant_id: tenant,
                page: page(after, limit),
                read: None,
            };
            let r = call!(s, scheduler, list_placements, m);
            if s.json {
                return show(true, &r.placements);
            }
            let rows: Vec<serde_json::Value> = r.placements.iter().map(placement_row).collect();
            show(false, &rows)
        }
        PlacementCmd::Finished { tenant, after, limit } => {
            let m =
                pb::ListFinishedRequest { tenant_id: tenant, page: page(after, limit), read: None };
            s.show(&call!(s, scheduler, list_finished, m).finished)
        }
    }
}

/// One readable table row per placement.
fn placement_row(p: &pb::Placement) -> serde_json::Value {
    let spec = p.spec.clone().unwrap_or_default();
    let each = spec.resources.unwrap_or_default();
    serde_json::json!({
        "id": spec.placement_id,
        "instances": spec.count,
        "cpu_each": format!("{}m", each.cpu_millis),
        "memory_each": format!("{}Mi", each.memory_mib),
        "workers": p.workers,
        "running": p.instances.iter().filter(|i| i.running_since_ms.is_some()).count(),
        "kind": if p.expires_at_ms.is_some() { "reservation" } else { "placement" },
        "log_index": p.log_index,
    })
}

/// A dry run's decision: where it would go, or why not and each worker's reason.
fn show_decision(placement: &Option<pb::Placement>, d: &pb::PlaceDecision) -> anyhow::Result<()> {
    if d.would_place {
        let workers = placement.as_ref().map(|p| p.workers.join(", ")).unwrap_or_default();
        out!("would place on: {workers}");
    } else {
        out!("would refuse: {} ({})", d.reason, d.message);
        let meta: BTreeMap<_, _> = d.metadata.iter().collect();
        for (k, v) in meta {
            out!("  {k}: {v}");
        }
    }
    for e in &d.quota_events {
        out!("quota event: {:?} tenant={} {}", e.kind(), e.tenant_id, e.grace_ends_at_ms);
    }
    if !d.workers.is_empty() {
        let rows: Vec<serde_json::Value> = d
            .workers
            .iter()
            .map(|w| serde_json::json!({"worker": w.worker_id, "reason": w.reason}))
            .collect();
        show(false, &rows)?;
    }
    Ok(())
}
