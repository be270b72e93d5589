//! `berth watch`: print events as they happen, one line each (`--json`: one JSON object per
//! line). It follows the cluster through failovers, resuming after the last event it printed.

use berth::client::pb;
use clap::Args;

use super::Session;

#[derive(Args, Debug)]
pub struct WatchArgs {
    /// The tenant to watch (none, with the admin token: every tenant and the workers).
    tenant: Option<String>,
    /// Resume after this log index (default: from now).
    #[arg(long)]
    after: Option<u64>,
    /// With --after: the last event of that index already seen.
    #[arg(long, requires = "after")]
    after_event: Option<u32>,
    /// Only events of this kind (repeatable): PLACED, RELEASED, QUEUED, RESCHEDULED,
    /// WORKER_DOWN, ...
    #[arg(long = "kind")]
    kinds: Vec<String>,
    /// Stop after this many events.
    #[arg(long)]
    count: Option<u64>,
}

pub async fn run(s: &Session, args: WatchArgs) -> anyhow::Result<()> {
    let request = pb::WatchRequest {
        tenant_id: args.tenant.unwrap_or_default(),
        after_log_index: args.after,
        after_event: args.after_event,
        kinds: args.kinds,
    };
    let mut left = args.count;
    let json = s.json;
    s.client
        .watch(request, |message| {
            match message.message {
                Some(pb::watch_response::Message::Event(e)) => {
                    if json {
                        out!("{}", serde_json::to_string(&e).unwrap_or_default());
                    } else {
                        out!("{}", line(&e));
                    }
                    if let Some(n) = left.as_mut() {
                        *n -= 1;
                        return *n > 0;
                    }
                }
                Some(pb::watch_response::Message::Progress(p)) if !json => {
                    eprintln!("watching after log index {} (event {})", p.log_index, p.event);
                }
                _ => {}
            }
            true
        })
        .await
        .map_err(|status| anyhow::anyhow!(super::describe(&status)))
}

/// One readable line: position, kind, who and what.
fn line(e: &pb::WatchEvent) -> String {
    let mut text = format!("{}.{} {}", e.log_index, e.event, e.kind);
    let mut field = |name: &str, value: &str| {
        if !value.is_empty() {
            text.push_str(&format!(" {name}={value}"));
        }
    };
    field("tenant", &e.tenant_id);
    field("placement", &e.placement_id);
    field("workers", &e.workers.join(","));
    field("reason", &e.reason);
    field("lease", &e.lease);
    let moves: Vec<String> =
        e.moves.iter().map(|m| format!("{}:{}->{}", m.slot, m.from_worker, m.to_worker)).collect();
    field("moves", &moves.join(","));
    if let Some(q) = &e.quota {
        field("quota", q.kind().as_str_name());
        if matches!(
            q.kind(),
            pb::quota_event::Kind::UtilisationHigh | pb::quota_event::Kind::UtilisationNormal
        ) {
            field("pool", &q.pool);
            field("dimension", &q.dimension);
        }
        if q.kind() == pb::quota_event::Kind::UtilisationHigh {
            field("percent", &q.utilisation_percent.to_string());
            field("used", &q.used.to_string());
            field("limit", &q.limit.to_string());
        }
        if q.kind() == pb::quota_event::Kind::BudgetAlert {
            field("month", &q.budget_month);
            field("percent", &q.budget_percent.to_string());
            field("spent", &q.spent);
            field("budget", &q.budget);
        }
    }
    if e.kind == "WORKER_DOWN" {
        field("instances_lost", &e.instances_lost.to_string());
    }
    text
}
