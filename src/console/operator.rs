//! The operator's page: the replicas, the pools and their workers, every tenant's standing, and
//! the blocked work grouped by why it waits.

use std::collections::BTreeMap;

use maud::{html, Markup};
use tonic::Status;

use super::pages::Frame;
use super::pages::{authed, countdown, more, of, opt, page, rows_page, span_of, this_replica, utc};
use crate::api::pb::{self, scheduler_server::Scheduler};
use crate::api::pb::{tenants_server::Tenants, workers_server::Workers};
use crate::api::Api;
use crate::raft::replica::RaftView;

/// Most queued placements the operator's page reads to group blocked work (the API's page).
pub const CONSOLE_QUEUE_ROWS_MAX: u32 = crate::scheduler::query::PAGE_MAX;

/// One tenant's row: its record, what it uses against what it may, and its queue.
struct TenantRow {
    tenant: pb::Tenant,
    quota: pb::GetQuotaResponse,
    queued: u64,
    oldest_ms: Option<u64>,
}

/// Blocked work with one reason.
#[derive(Default)]
struct Blocked {
    placements: u64,
    tenants: std::collections::BTreeSet<String>,
    oldest_ms: Option<u64>,
    example: String,
}

pub struct Operator {
    view: RaftView,
    now_ms: u64,
    workers: Vec<pb::Worker>,
    pools: Vec<pb::Pool>,
    tenants: Vec<TenantRow>,
    /// The queue read, and whether it was cut at `CONSOLE_QUEUE_ROWS_MAX`.
    queue_rows: usize,
    blocked: BTreeMap<String, Blocked>,
}

impl Operator {
    /// The replicas as this replica sees them (`view`: no peer asked, no state hashed; the
    /// CLI's `cluster status` is the full report), with the rest read through the API.
    pub async fn read(
        api: &Api,
        view: RaftView,
        token: &str,
        now_ms: u64,
    ) -> Result<Operator, Status> {
        let tenants = Tenants::list_tenants(
            api,
            authed(token, pb::ListTenantsRequest { page: rows_page(), read: this_replica() }),
        )
        .await?
        .into_inner()
        .tenants;
        let workers = Workers::list_workers(
            api,
            authed(
                token,
                pb::ListWorkersRequest {
                    pool: String::new(),
                    page: rows_page(),
                    read: this_replica(),
                },
            ),
        )
        .await?
        .into_inner()
        .workers;
        let mut pools = Vec::new();
        let names: std::collections::BTreeSet<&str> =
            workers.iter().map(|w| w.pool.as_str()).collect();
        for pool in names {
            let request = pb::GetPoolRequest { pool: pool.to_owned(), read: this_replica() };
            let got = Workers::get_pool(api, authed(token, request)).await?.into_inner();
            pools.extend(got.pool);
        }
        let queue = Scheduler::list_queue(
            api,
            authed(
                token,
                pb::ListQueueRequest {
                    tenant_id: String::new(),
                    page: Some(pb::Page { after: String::new(), limit: CONSOLE_QUEUE_ROWS_MAX }),
                    read: this_replica(),
                },
            ),
        )
        .await?
        .into_inner()
        .queued;
        let mut blocked: BTreeMap<String, Blocked> = BTreeMap::new();
        let mut oldest: BTreeMap<&str, u64> = BTreeMap::new();
        for q in &queue {
            let b = blocked.entry(q.wait_reason.clone()).or_default();
            b.placements += 1;
            b.tenants.insert(q.tenant_id.clone());
            if b.oldest_ms.is_none_or(|o| q.queued_at_ms < o) {
                b.oldest_ms = Some(q.queued_at_ms);
                b.example.clone_from(&q.wait_message);
            }
            let o = oldest.entry(&q.tenant_id).or_insert(q.queued_at_ms);
            *o = (*o).min(q.queued_at_ms);
        }
        let mut rows = Vec::with_capacity(tenants.len());
        for tenant in tenants {
            let request =
                pb::GetQuotaRequest { tenant_id: tenant.tenant_id.clone(), read: this_replica() };
            let quota = Tenants::get_quota(api, authed(token, request)).await?.into_inner();
            let oldest_ms = oldest.get(tenant.tenant_id.as_str()).copied();
            rows.push(TenantRow { queued: quota.queued, tenant, quota, oldest_ms });
        }
        Ok(Operator {
            view,
            now_ms,
            workers,
            pools,
            tenants: rows,
            queue_rows: queue.len(),
            blocked,
        })
    }

    pub fn render(&self, frame: &Frame) -> Markup {
        page(
            "Cluster",
            Some(frame),
            html! {
                (self.replicas())
                (self.blocked())
                (self.tenants())
                (self.pools())
                (self.workers())
            },
        )
    }

    fn replicas(&self) -> Markup {
        let v = &self.view;
        let newest = v.last_log_index;
        html! {
            section aria-labelledby="replicas" {
                h2 #replicas { "Replicas" }
                p {
                    @match v.leader {
                        Some(leader) => { "Leader: replica " (leader) ", term " (v.term) "." }
                        None => { strong.problem { "No leader" } " in term " (v.term) "." }
                    }
                    " Replica " (v.id) ", which answered, is " (v.role.to_lowercase())
                    ": last log index " (opt(v.last_log_index))
                    ", applied " (opt(v.last_applied_index))
                    ", snapshot at " (opt(v.snapshot_index)) "."
                    @if let Some(held) = v.majority_holds() {
                        " A majority of the voters hold the log up to " (held) "."
                    }
                    @if let Some(ack) = v.millis_since_quorum_ack {
                        " A quorum last acknowledged the leader " (ack) " ms ago."
                    }
                }
                @if let Some(stopped) = &v.stopped {
                    p.problem role="alert" { "Replica " (v.id) " has stopped (fail-stop): " (stopped) }
                }
                table {
                    thead { tr { th { "Replica" } th { "Peer address" } th { "Voter" } th.n { "Holds the log up to" } th.n { "Behind the leader by" } } }
                    tbody {
                        @for (id, addr, voter) in v.voters.iter().map(|(i, a)| (i, a, true)).chain(v.learners.iter().map(|(i, a)| (i, a, false))) {
                            @let held = v.matched.as_ref().map(|m| m.get(id).copied().flatten());
                            tr {
                                td { (id) @if v.leader == Some(*id) { " (leader)" } }
                                td { (addr) }
                                td { @if voter { "yes" } @else { "no (learner)" } }
                                td.n { @match held { Some(held) => (opt(held)), None => "–" } }
                                td.n {
                                    @match (held, newest) {
                                        (Some(Some(held)), Some(newest)) => { (newest.saturating_sub(held)) " entries" }
                                        (Some(None), _) => strong.problem { "not reached" },
                                        _ => "–",
                                    }
                                }
                            }
                        }
                    }
                }
                @if v.matched.is_none() {
                    p.note { "Only the leader knows how far each replica holds the log; open the leader's console, or run `berth cluster status`, which asks every replica (and checks that their states agree)." }
                }
            }
        }
    }

    fn blocked(&self) -> Markup {
        html! {
            section aria-labelledby="blocked" {
                h2 #blocked { "Blocked work, by why it waits" }
                @if self.blocked.is_empty() {
                    p.empty { "Nothing waits." }
                } @else {
                    table {
                        thead { tr { th { "Reason" } th.n { "Placements" } th { "Tenants" } th { "Oldest waits for" } th { "For example" } } }
                        tbody {
                            @for (reason, b) in &self.blocked {
                                tr {
                                    td { strong { (reason) } }
                                    td.n { (b.placements) }
                                    td {
                                        @for (k, t) in b.tenants.iter().take(10).enumerate() {
                                            @if k > 0 { ", " }
                                            a href={ "/tenants/" (t) } { (t) }
                                        }
                                        @if b.tenants.len() > 10 { " and " (b.tenants.len() - 10) " more" }
                                    }
                                    td { @if let Some(o) = b.oldest_ms { (span_of(self.now_ms.saturating_sub(o))) } }
                                    td { (b.example) }
                                }
                            }
                        }
                    }
                    @if u32::try_from(self.queue_rows).is_ok_and(|n| n >= CONSOLE_QUEUE_ROWS_MAX) {
                        p.note { "Grouped from the first " (CONSOLE_QUEUE_ROWS_MAX) " queued placements (in tenant order); `berth queue list` lists them all." }
                    }
                }
            }
        }
    }

    fn tenants(&self) -> Markup {
        let weights: u64 = self.tenants.iter().map(|t| u64::from(t.tenant.weight.max(1))).sum();
        html! {
            section aria-labelledby="tenants" {
                h2 #tenants { "Tenants (" (self.tenants.len()) ")" }
                @if self.tenants.is_empty() {
                    p.empty { "No tenant exists." }
                } @else {
                    table {
                        thead { tr { th { "Tenant" } th { "Parent" } th.n { "CPU used / limit" } th.n { "Memory used / limit (MiB)" } th.n { "Borrowed CPU" } th.n { "Queued" } th { "Oldest waits for" } th.n { "Weight (share of all weights)" } } }
                        tbody {
                            @for row in &self.tenants {
                                @let used = row.quota.usage.unwrap_or_default();
                                @let limit = row.quota.effective.as_ref().and_then(|q| q.total).unwrap_or_default();
                                @let borrowed: u64 = row.quota.shares.iter().filter_map(|s| s.borrowed).map(|b| b.cpu_millis).sum();
                                @let weight = u64::from(row.tenant.weight.max(1));
                                tr {
                                    td { a href={ "/tenants/" (row.tenant.tenant_id) } { (row.tenant.tenant_id) } }
                                    td { (row.tenant.parent_id) }
                                    td.n { (of(used.cpu_millis, limit.cpu_millis)) }
                                    td.n { (of(used.memory_mib, limit.memory_mib)) }
                                    td.n { (borrowed) }
                                    td.n { (row.queued) }
                                    td { @match row.oldest_ms { Some(o) => (span_of(self.now_ms.saturating_sub(o))), None => "–" } }
                                    td.n { (weight) " (" (per_cent(weight, weights)) ")" }
                                }
                            }
                        }
                    }
                    (more(self.tenants.len()))
                    p.note { "The fair-share queue admits, among tenants that wait, the one using least against its weight; a tenant's weight over all weights is its share when every tenant wants more than the pool holds." }
                }
            }
        }
    }

    fn pools(&self) -> Markup {
        html! {
            section aria-labelledby="pools" {
                h2 #pools { "Pools (" (self.pools.len()) ")" }
                @if u32::try_from(self.workers.len()).is_ok_and(|n| n >= super::pages::CONSOLE_ROWS_MAX) {
                    p.note { "The pools of the first " (super::pages::CONSOLE_ROWS_MAX) " workers; `berth pool get POOL` reads any pool." }
                }
                @if self.pools.is_empty() {
                    p.empty { "No worker is registered, so no pool has capacity." }
                } @else {
                    table {
                        thead { tr { th { "Pool" } th.n { "Workers (down)" } th.n { "CPU free / capacity" } th.n { "Memory free / capacity (MiB)" } th.n { "Held in reserve" } th.n { "Guaranteed to tenants" } th { "Shortfall" } th.n { "Worker TTL" } } }
                        tbody {
                            @for p in &self.pools {
                                @let capacity = p.capacity.unwrap_or_default();
                                @let free = p.free.unwrap_or_default();
                                @let shortfall = p.shortfall.unwrap_or_default();
                                tr {
                                    td { (p.pool) }
                                    td.n { (p.workers) " (" (p.down) ")" }
                                    td.n { (free.cpu_millis) " / " (capacity.cpu_millis) }
                                    td.n { (free.memory_mib) " / " (capacity.memory_mib) }
                                    td.n { @match p.reserve { Some(r) => { (r.cpu_millis) " m / " (r.memory_mib) " MiB" }, None => "none" } }
                                    td.n { @let g = p.guaranteed.unwrap_or_default(); (g.cpu_millis) " m / " (g.memory_mib) " MiB to " (p.guarantees) }
                                    td {
                                        @if shortfall.cpu_millis > 0 || shortfall.memory_mib > 0 {
                                            strong.problem { (shortfall.cpu_millis) " m / " (shortfall.memory_mib) " MiB" }
                                        } @else { "none" }
                                    }
                                    td.n { (span_of(p.worker_ttl_ms)) }
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    fn workers(&self) -> Markup {
        html! {
            section aria-labelledby="workers" {
                h2 #workers { "Workers (" (self.workers.len()) ")" }
                @if self.workers.is_empty() {
                    p.empty { "No worker is registered." }
                } @else {
                    table {
                        thead { tr { th { "Worker" } th { "Pool" } th.n { "CPU allocated / capacity" } th.n { "Memory allocated / capacity (MiB)" } th { "State" } th { "Last heartbeat" } } }
                        tbody {
                            @for w in &self.workers {
                                @let capacity = w.capacity.unwrap_or_default();
                                @let allocated = w.allocated.unwrap_or_default();
                                tr {
                                    td { (w.worker_id) }
                                    td { (w.pool) }
                                    td.n { (allocated.cpu_millis) " / " (capacity.cpu_millis) }
                                    td.n { (allocated.memory_mib) " / " (capacity.memory_mib) }
                                    td {
                                        @if let Some(since) = w.down_since_ms { strong.problem { "down" } " since " (utc(since)) }
                                        @else if !w.schedulable { "draining" }
                                        @else { "ready" }
                                    }
                                    td {
                                        @match &w.liveness {
                                            Some(l) => {
                                                (span_of(self.now_ms.saturating_sub(l.last_heartbeat_ms))) " ago"
                                                @if w.down_since_ms.is_none() { "; down in " (countdown(l.alive_until_ms, self.now_ms)) " without another" }
                                            }
                                            None => "none (not managed)",
                                        }
                                    }
                                }
                            }
                        }
                    }
                    (more(self.workers.len()))
                }
            }
        }
    }
}

/// `part` of `whole` in percent to one decimal, in integers.
fn per_cent(part: u64, whole: u64) -> String {
    let tenths = u128::from(part) * 1_000 / u128::from(whole.max(1));
    format!("{}.{} %", tenths / 10, tenths % 10)
}

#[cfg(test)]
mod tests {
    #[test]
    fn per_cent_rounds_down_in_integers() {
        assert_eq!(super::per_cent(1, 3), "33.3 %");
        assert_eq!(super::per_cent(0, 0), "0.0 %");
        assert_eq!(super::per_cent(5, 5), "100.0 %");
    }
}
