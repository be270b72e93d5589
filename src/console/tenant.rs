//! A tenant's pages: its overview (quota, placements and reservations, the queue with cancel,
//! leases), why one queued placement waits (a dry run), and its usage and invoices (with CSV
//! downloads of the exact figures).

use maud::{html, Markup};
use tonic::Status;

use super::pages::{authed, countdown, more, of, page, rows_page, this_replica, utc, Frame};
use crate::api::pb::{self, billing_server::Billing, scheduler_server::Scheduler};
use crate::api::pb::{leases_server::Leases, tenants_server::Tenants};
use crate::api::Api;

/// How many days of usage history the usage page shows (daily buckets).
pub const CONSOLE_USAGE_DAYS: u64 = 14;
const DAY_MS: u64 = 24 * 3_600_000;

/// The tabs of a tenant's pages; `here` is the current one's path under the tenant.
fn tabs(tenant: &str, here: &str) -> Markup {
    html! {
        nav.tabs aria-label="Tenant pages" {
            @for (path, name) in [("", "Overview"), ("/usage", "Usage and invoices"), ("/activity", "Events")] {
                a href={ "/tenants/" (tenant) (path) } aria-current=[(path == here).then_some("page")] { (name) }
            }
        }
    }
}

/// A tenant's overview.
pub struct Overview {
    tenant: String,
    now_ms: u64,
    quota: pb::GetQuotaResponse,
    placements: Vec<pb::Placement>,
    queued: Vec<pb::QueuedPlacement>,
    leases: Vec<pb::Lease>,
}

impl Overview {
    /// Reads `tenant`'s page as `token`; `now_ms` is this replica's time, for countdowns.
    pub async fn read(
        api: &Api,
        token: &str,
        tenant: &str,
        now_ms: u64,
    ) -> Result<Overview, Status> {
        let tenant_id = || tenant.to_owned();
        let quota = Tenants::get_quota(
            api,
            authed(token, pb::GetQuotaRequest { tenant_id: tenant_id(), read: this_replica() }),
        )
        .await?
        .into_inner();
        let placements = Scheduler::list_placements(
            api,
            authed(
                token,
                pb::ListPlacementsRequest {
                    tenant_id: tenant_id(),
                    page: rows_page(),
                    read: this_replica(),
                },
            ),
        )
        .await?
        .into_inner()
        .placements;
        let queued = Scheduler::list_queue(
            api,
            authed(
                token,
                pb::ListQueueRequest {
                    tenant_id: tenant_id(),
                    page: rows_page(),
                    read: this_replica(),
                },
            ),
        )
        .await?
        .into_inner()
        .queued;
        let leases = Leases::list_leases(
            api,
            authed(
                token,
                pb::ListLeasesRequest {
                    tenant_id: tenant_id(),
                    page: rows_page(),
                    read: this_replica(),
                },
            ),
        )
        .await?
        .into_inner()
        .leases;
        Ok(Overview { tenant: tenant_id(), now_ms, quota, placements, queued, leases })
    }

    pub fn render(&self, frame: &Frame) -> Markup {
        let t = &self.tenant;
        page(
            &format!("Tenant {t}"),
            Some(frame),
            html! {
                (tabs(t, ""))
                (self.quota_section())
                (self.placements_section())
                (self.queue_section(frame))
                (self.leases_section())
            },
        )
    }

    fn quota_section(&self) -> Markup {
        let used = self.quota.usage.unwrap_or_default();
        let limits = self.quota.effective.as_ref().and_then(|q| q.total).unwrap_or_default();
        let pools = self.quota.effective.as_ref().map(|q| q.pools.clone()).unwrap_or_default();
        html! {
            section aria-labelledby="quota" {
                h2 #quota { "Quota" }
                table {
                    thead { tr { th { "Scope" } th { "CPU (millicores)" } th { "Memory (MiB)" } th { "Instances" } th { "Jobs" } } }
                    tbody {
                        tr.total {
                            td { "all pools" }
                            td.n { (of(used.cpu_millis, limits.cpu_millis)) }
                            td.n { (of(used.memory_mib, limits.memory_mib)) }
                            td.n { (of(used.instances, limits.instances)) }
                            td.n { (of(used.jobs, limits.jobs)) }
                        }
                        @for (pool, usage) in &self.quota.pool_usage {
                            @let limit = pools.get(pool).cloned().unwrap_or_default();
                            tr {
                                td { "pool " (pool) }
                                td.n { (of(usage.cpu_millis, limit.cpu_millis)) }
                                td.n { (of(usage.memory_mib, limit.memory_mib)) }
                                td.n { (of(usage.instances, limit.instances)) }
                                td.n { (of(usage.jobs, limit.jobs)) }
                            }
                        }
                    }
                }
                p.note {
                    "Used / limit that applies (inherited limits included); a dash is no limit. "
                    (self.quota.queued) " placements wait in the queue."
                    @if let Some(burst) = &self.quota.burst {
                        " "
                        strong.problem {
                            @if burst.grace_expired { "Above a soft limit and out of grace: nothing new is admitted until usage is back under it." }
                            @else { "Above a soft limit: grace ends " (utc(burst.grace_ends_at_ms)) "." }
                        }
                    }
                }
                @if !self.quota.shares.is_empty() {
                    h3 { "Guaranteed shares and borrowing" }
                    table {
                        thead { tr { th { "Pool" } th { "Guaranteed CPU / memory" } th { "Used" } th { "Borrowed (above the guarantee)" } th { "Guarantee unused" } } }
                        tbody {
                            @for share in &self.quota.shares {
                                @let nominal = share.guarantee.as_ref().and_then(|g| g.nominal);
                                tr {
                                    td { (share.pool) }
                                    td.n { @match nominal { Some(n) => (resources(n)), None => "none" } }
                                    td.n { (resources(share.used.unwrap_or_default())) }
                                    td.n { (resources(share.borrowed.unwrap_or_default())) }
                                    td.n { (resources(share.unused.unwrap_or_default())) }
                                }
                            }
                        }
                    }
                    p.note { "Borrowed capacity may be preempted when a tenant within its own guarantee needs it back." }
                }
            }
        }
    }

    fn placements_section(&self) -> Markup {
        html! {
            section aria-labelledby="placements" {
                h2 #placements { "Placements and reservations (" (self.placements.len()) ")" }
                @if self.placements.is_empty() {
                    p.empty { "None." }
                } @else {
                    table {
                        thead { tr { th { "Placement" } th { "State" } th { "Pool" } th.n { "Count" } th.n { "CPU each" } th.n { "Memory each (MiB)" } th { "Workers" } th.n { "Log index" } } }
                        tbody {
                            @for p in &self.placements {
                                @let spec = p.spec.clone().unwrap_or_default();
                                @let resources = spec.resources.unwrap_or_default();
                                @let running = p.instances.iter().filter(|i| i.running_since_ms.is_some() && i.completed_at_ms.is_none()).count();
                                tr {
                                    td { (spec.placement_id) }
                                    td {
                                        @if let Some(expires) = p.expires_at_ms {
                                            "reserved, unconfirmed; released in " (countdown(expires, self.now_ms))
                                        } @else {
                                            "placed"
                                            @if running > 0 { ", " (running) " running" }
                                            @if p.borrowed { ", borrowed" }
                                            @if let Some(limit) = p.time_limit_at_ms { "; time limit in " (countdown(limit, self.now_ms)) }
                                        }
                                    }
                                    td { (p.pool) }
                                    td.n { (spec.count.max(1)) }
                                    td.n { (resources.cpu_millis) }
                                    td.n { (resources.memory_mib) }
                                    td { (p.workers.join(", ")) }
                                    td.n { (p.log_index) }
                                }
                            }
                        }
                    }
                    (more(self.placements.len()))
                }
            }
        }
    }

    fn queue_section(&self, frame: &Frame) -> Markup {
        let t = &self.tenant;
        html! {
            section aria-labelledby="waiting" {
                h2 #waiting { "Waiting (" (self.queued.len()) ")" }
                @if self.queued.is_empty() {
                    p.empty { "Nothing waits." }
                } @else {
                    table {
                        thead { tr { th { "Position" } th { "Placement" } th { "Pool" } th { "Waiting since" } th { "Why it waits" } th { span.sr { "Actions" } } } }
                        tbody {
                            @for q in &self.queued {
                                @let spec = q.spec.clone().unwrap_or_default();
                                @let id = &spec.placement_id;
                                tr {
                                    td.n { (q.position) " of " (q.pool_queued) @if q.aged { " (aged)" } }
                                    td { (id) }
                                    td { (q.pool) }
                                    td { (utc(q.queued_at_ms)) }
                                    td {
                                        strong { (q.wait_reason) } " " (q.wait_message) " "
                                        a href={ "/tenants/" (t) "/queue/" (id) } { "Explain" }
                                    }
                                    td { (cancel_form(t, id, frame)) }
                                }
                            }
                        }
                    }
                    (more(self.queued.len()))
                }
            }
        }
    }

    fn leases_section(&self) -> Markup {
        html! {
            section aria-labelledby="leases" {
                h2 #leases { "Leases (" (self.leases.len()) ")" }
                @if self.leases.is_empty() {
                    p.empty { "No lease is held." }
                } @else {
                    table {
                        thead { tr { th { "Lease" } th { "Holder" } th.n { "Fencing token" } th { "Expires in" } th { "Granted" } } }
                        tbody {
                            @for l in &self.leases {
                                tr {
                                    td { (l.name) }
                                    td { (l.holder) }
                                    td.n { (l.token) }
                                    td { (countdown(l.expires_at_ms, self.now_ms)) " (TTL " (l.ttl_ms) " ms)" }
                                    td { (utc(l.granted_at_ms)) }
                                }
                            }
                        }
                    }
                    (more(self.leases.len()))
                    p.note { "Pass the fencing token with a write so a stale holder's writes are refused." }
                }
            }
        }
    }
}

/// The button that withdraws a queued placement. Its request id is fixed when the page is
/// drawn, so a form sent twice (a double click, a resent POST) withdraws once.
fn cancel_form(tenant: &str, placement: &str, frame: &Frame) -> Markup {
    html! {
        form.inline method="post" action={ "/tenants/" (tenant) "/queue/" (placement) "/cancel" } {
            input type="hidden" name="request_id" value=(frame.request_id(placement));
            button type="submit" aria-label={ "Cancel " (placement) } { "Cancel" }
        }
    }
}

/// Why one queued placement waits: what a Place of it would do now (a dry run).
pub struct Explanation {
    tenant: String,
    queued: pb::QueuedPlacement,
    decision: pb::PlaceDecision,
}

impl Explanation {
    /// `None` when the placement no longer waits.
    pub async fn read(
        api: &Api,
        token: &str,
        tenant: &str,
        placement: &str,
    ) -> Result<Option<Explanation>, Status> {
        let got = Scheduler::get_placement(
            api,
            authed(
                token,
                pb::GetPlacementRequest {
                    tenant_id: tenant.to_owned(),
                    placement_id: placement.to_owned(),
                    read: this_replica(),
                },
            ),
        )
        .await?
        .into_inner();
        let Some(queued) = got.queued else { return Ok(None) };
        // Its own id is taken (by the queued entry itself): the dry run asks about the same
        // spec under an id no placement has, and says what it said under the real one.
        let mut nonce = [0u8; 12];
        getrandom::fill(&mut nonce).map_err(|_| Status::unavailable("no randomness"))?;
        let stand_in = format!("console-dry-run-{}", crate::raft::replica::hex(&nonce));
        let mut spec = queued.spec.clone().unwrap_or_default();
        spec.placement_id.clone_from(&stand_in);
        let dry_run = pb::PlaceRequest {
            tenant_id: tenant.to_owned(),
            spec: Some(spec),
            dry_run: true,
            ..Default::default()
        };
        let answer = Scheduler::place(api, authed(token, dry_run)).await?.into_inner();
        let mut decision = answer.decision.unwrap_or_default();
        decision.message = decision.message.replace(&stand_in, placement);
        for value in decision.metadata.values_mut() {
            *value = value.replace(&stand_in, placement);
        }
        Ok(Some(Explanation { tenant: tenant.to_owned(), queued, decision }))
    }

    pub fn render(&self, frame: &Frame) -> Markup {
        let (t, q, d) = (&self.tenant, &self.queued, &self.decision);
        let spec = q.spec.clone().unwrap_or_default();
        let resources = spec.resources.unwrap_or_default();
        page(
            &format!("Why {} waits", spec.placement_id),
            Some(frame),
            html! {
                (tabs(t, "/queue"))
                p {
                    "Position " strong { (q.position) } " of " (q.pool_queued) " in pool " (q.pool)
                    ", waiting since " (utc(q.queued_at_ms)) ": "
                    strong { (q.wait_reason) } " " (q.wait_message)
                }
                p {
                    (spec.count.max(1)) " × " (resources.cpu_millis) " millicores, "
                    (resources.memory_mib) " MiB, priority " (spec.priority) "."
                }
                section aria-labelledby="now" {
                    h2 #now { "If it were placed now" }
                    @if d.would_place {
                        p { "It would fit now (decided at " (utc(d.decided_at_ms)) "); "
                            "it waits for its turn: " (q.wait_reason) "." }
                    } @else {
                        p { "Refused with " strong { (d.reason) } ": " (d.message) }
                        @if !d.metadata.is_empty() {
                            dl {
                                @for (k, v) in &d.metadata { dt { (k) } dd { (v) } }
                            }
                        }
                    }
                    @if !d.workers.is_empty() {
                        h3 { "Each worker of the pool, and the first check it failed" }
                        table {
                            thead { tr { th { "Worker" } th { "Failed" } } }
                            tbody {
                                @for w in &d.workers { tr { td { (w.worker_id) } td { (w.reason) } } }
                            }
                        }
                    }
                    @if !d.quota_events.is_empty() {
                        p.note { "Placing it would raise " (d.quota_events.len()) " quota alerts." }
                    }
                    p.note { "A dry run reads the cluster linearizably and changes nothing." }
                }
                (cancel_form(t, &spec.placement_id, frame))
            },
        )
    }
}

/// A tenant's usage history, its statement so far and its invoices.
pub struct Usage {
    tenant: String,
    usage: pb::GetUsageResponse,
    statement: pb::GetStatementResponse,
    invoices: pb::ListInvoicesResponse,
}

impl Usage {
    pub async fn read(api: &Api, token: &str, tenant: &str, now_ms: u64) -> Result<Usage, Status> {
        let usage = history(api, token, tenant, now_ms).await?;
        let statement = Billing::get_statement(
            api,
            authed(
                token,
                pb::GetStatementRequest { tenant_id: tenant.to_owned(), read: this_replica() },
            ),
        )
        .await?
        .into_inner();
        let invoices = invoices(api, token, tenant).await?;
        Ok(Usage { tenant: tenant.to_owned(), usage, statement, invoices })
    }

    pub fn render(&self, frame: &Frame) -> Markup {
        let t = &self.tenant;
        let current = self.statement.current.clone().unwrap_or_default();
        page(
            &format!("Usage and invoices of {t}"),
            Some(frame),
            html! {
                (tabs(t, "/usage"))
                section aria-labelledby="history" {
                    h2 #history { "Usage, the last " (CONSOLE_USAGE_DAYS) " days (UTC)" }
                    (chart(&self.usage))
                    p.note {
                        "Exact quantities (millicore·ms and MiB·ms, as the meter counts them) are in the "
                        a href={ "/tenants/" (t) "/usage.csv" } download { "CSV" } "; "
                        "as of log time " (utc(self.usage.as_of_ms)) ", from the " (self.usage.resolution) " series."
                    }
                }
                section aria-labelledby="statement" {
                    h2 #statement { "This month so far (" (current.month) ")" }
                    @if self.statement.plan.is_empty() {
                        p.note { "No price plan applies: the lines are metered, not priced." }
                    } @else {
                        p { "Plan " strong { (self.statement.plan) } "." }
                    }
                    (lines_table(&current.lines))
                    p {
                        "Total so far " strong.n { (current.total) } "; "
                        "at the month's end (" (utc(self.statement.month_end_ms)) ") if what is held now is held until then: "
                        strong.n { (self.statement.projected_total) }
                        ", and with the queue admitted now: " strong.n { (self.statement.projected_with_queued) } ". "
                        a href={ "/tenants/" (t) "/statement.csv" } download { "CSV" }
                    }
                }
                section aria-labelledby="invoices" {
                    h2 #invoices { "Invoices (" (self.invoices.invoices.len()) ")" }
                    @if self.invoices.invoices.is_empty() {
                        p.empty { "No month has been invoiced yet." }
                    } @else {
                        table {
                            thead { tr { th { "Month" } th.n { "Total" } th { "Adjustments" } th { "Closed" } th { "Download" } } }
                            tbody {
                                @for i in self.invoices.invoices.iter().rev() {
                                    tr {
                                        td { (i.month) }
                                        td.n { (i.total) }
                                        td.n { (i.adjustments.len()) }
                                        td { (utc(i.closed_at_ms)) @if i.automatic { " (automatically)" } }
                                        td { a href={ "/tenants/" (t) "/invoices/" (i.month) ".csv" } download { "CSV" } }
                                    }
                                }
                            }
                        }
                    }
                    @for open in &self.invoices.open {
                        @if !open.adjustments.is_empty() {
                            p.note { (open.month) ", still open, has " (open.adjustments.len()) " adjustments waiting for its invoice." }
                        }
                    }
                }
            },
        )
    }
}

async fn history(
    api: &Api,
    token: &str,
    tenant: &str,
    now_ms: u64,
) -> Result<pb::GetUsageResponse, Status> {
    let to_ms = (now_ms / DAY_MS + 1) * DAY_MS;
    let request = pb::GetUsageRequest {
        tenant_id: tenant.to_owned(),
        from_ms: to_ms.saturating_sub(CONSOLE_USAGE_DAYS * DAY_MS),
        to_ms,
        step_ms: DAY_MS,
        read: this_replica(),
    };
    Ok(Billing::get_usage(api, authed(token, request)).await?.into_inner())
}

async fn invoices(
    api: &Api,
    token: &str,
    tenant: &str,
) -> Result<pb::ListInvoicesResponse, Status> {
    let request = pb::ListInvoicesRequest { tenant_id: tenant.to_owned(), read: this_replica() };
    Ok(Billing::list_invoices(api, authed(token, request)).await?.into_inner())
}

fn lines_table(lines: &[pb::StatementLine]) -> Markup {
    html! {
        @if lines.is_empty() {
            p.empty { "Nothing metered." }
        } @else {
            table {
                thead { tr { th { "Pool" } th { "Item" } th.n { "Quantity" } th { "Unit" } th.n { "Per hour" } th.n { "Amount" } } }
                tbody {
                    @for l in lines {
                        tr {
                            td { (l.pool) }
                            td { (l.item) @if l.tier > 0 { " (tier " (l.tier) ")" } }
                            td.n { (l.quantity_hours) }
                            td { (l.unit) }
                            td.n { @if l.per_hour.is_empty() { "–" } @else { (l.per_hour) } }
                            td.n { @if l.amount.is_empty() { "–" } @else { (l.amount) } }
                        }
                    }
                }
            }
        }
    }
}

/// A bar per day: the day's cpu-hours, drawn on the server (no script, no library). Heights
/// are scaled in integers against the largest day's exact quantity.
fn chart(usage: &pb::GetUsageResponse) -> Markup {
    const W: u64 = 640;
    const H: u64 = 120;
    let cpu: Vec<(u64, u128)> = usage
        .buckets
        .iter()
        .map(|b| {
            let exact = b
                .lines
                .iter()
                .filter(|l| l.item == "cpu")
                .map(|l| l.quantity.parse::<u128>().unwrap_or(0))
                .fold(0u128, u128::saturating_add);
            (b.from_ms, exact)
        })
        .collect();
    let top = cpu.iter().map(|(_, q)| *q).max().unwrap_or(0).max(1);
    let n = u64::try_from(cpu.len()).unwrap_or(1).max(1);
    let slot = W / n;
    html! {
        figure {
            svg.chart viewBox={ "0 0 " (W) " " (H + 20) } role="img" aria-label="CPU used per day" {
                @for (k, (from, q)) in cpu.iter().enumerate() {
                    @let x = u64::try_from(k).unwrap_or(0) * slot;
                    @let h = u64::try_from(q.saturating_mul(u128::from(H)) / top).unwrap_or(H);
                    g {
                        title { (utc(*from).get(..10).unwrap_or_default()) ": " (cpu_hours(*q)) " cpu-hours" }
                        rect x=(x + 2) y=(H - h) width=(slot.saturating_sub(4)) height=(h) {}
                        text x=(x + slot / 2) y=(H + 14) text-anchor="middle" { (utc(*from).get(8..10).unwrap_or_default()) }
                    }
                }
            }
            figcaption { "CPU per UTC day (hover a bar for its cpu-hours); the table below and the CSV have every item." }
        }
        table {
            thead { tr { th { "Day" } th { "Pool" } th { "Item" } th.n { "Quantity" } th { "Unit" } } }
            tbody {
                @for b in usage.buckets.iter().filter(|b| !b.lines.is_empty()) {
                    @for l in &b.lines {
                        tr {
                            td { (utc(b.from_ms).get(..10).unwrap_or_default()) }
                            td { (l.pool) }
                            td { (l.item) }
                            td.n { (l.quantity_hours) }
                            td { (l.unit) }
                        }
                    }
                }
            }
        }
    }
}

/// Millicore·ms as cpu-hours, to 6 decimals (exact arithmetic; the figure is for people).
fn cpu_hours(milli_ms: u128) -> String {
    let Ok(exact) = i128::try_from(milli_ms) else { return format!("{milli_ms} millicore·ms") };
    match rust_decimal::Decimal::try_from_i128_with_scale(exact, 0) {
        Ok(q) => (q / rust_decimal::Decimal::from(3_600_000_000u64)).round_dp(6).to_string(),
        Err(_) => format!("{milli_ms} millicore·ms"),
    }
}

fn resources(r: pb::Resources) -> Markup {
    html! { (r.cpu_millis) " m / " (r.memory_mib) " MiB" }
}

/// The usage history as CSV: one row per day, pool and item, with the meter's exact quantity.
pub async fn usage_csv(
    api: &Api,
    token: &str,
    tenant: &str,
    now_ms: u64,
) -> Result<String, Status> {
    let usage = history(api, token, tenant, now_ms).await?;
    let mut csv = String::from("from,to,pool,item,unit,quantity,quantity_hours\r\n");
    for b in &usage.buckets {
        for l in &b.lines {
            let row = [
                utc(b.from_ms),
                utc(b.to_ms),
                l.pool.clone(),
                l.item.clone(),
                l.unit.clone(),
                l.quantity.clone(),
                l.quantity_hours.clone(),
            ];
            csv_row(&mut csv, &row);
        }
    }
    Ok(csv)
}

/// This month's statement so far as CSV (its lines, then the total).
pub async fn statement_csv(api: &Api, token: &str, tenant: &str) -> Result<String, Status> {
    let request = pb::GetStatementRequest { tenant_id: tenant.to_owned(), read: this_replica() };
    let statement = Billing::get_statement(api, authed(token, request)).await?.into_inner();
    let current = statement.current.unwrap_or_default();
    Ok(lines_csv(&current.month, &current.lines, &[], &current.total))
}

/// A closed invoice as CSV; `None` when the tenant has none for `month`.
pub async fn invoice_csv(
    api: &Api,
    token: &str,
    tenant: &str,
    month: &str,
) -> Result<Option<String>, Status> {
    let listed = invoices(api, token, tenant).await?;
    Ok(listed
        .invoices
        .iter()
        .find(|i| i.month == month)
        .map(|i| lines_csv(&i.month, &i.lines, &i.adjustments, &i.total)))
}

fn lines_csv(
    month: &str,
    lines: &[pb::StatementLine],
    adjustments: &[pb::InvoiceAdjustment],
    total: &str,
) -> String {
    let mut csv = String::from(
        "month,kind,pool,item,unit,plan,tier,quantity,quantity_hours,per_hour,amount\r\n",
    );
    for l in lines {
        let row = [
            month.to_owned(),
            "line".into(),
            l.pool.clone(),
            l.item.clone(),
            l.unit.clone(),
            l.plan.clone(),
            l.tier.to_string(),
            l.quantity.clone(),
            l.quantity_hours.clone(),
            l.per_hour.clone(),
            l.amount.clone(),
        ];
        csv_row(&mut csv, &row);
    }
    for a in adjustments {
        let row = [
            month.to_owned(),
            "adjustment".into(),
            String::new(),
            a.reason.clone(),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
            a.amount.clone(),
        ];
        csv_row(&mut csv, &row);
    }
    let empty = String::new;
    let row = [
        month.to_owned(),
        "total".into(),
        empty(),
        empty(),
        empty(),
        empty(),
        empty(),
        empty(),
        empty(),
        empty(),
        total.to_owned(),
    ];
    csv_row(&mut csv, &row);
    csv
}

/// One CSV row (RFC 4180): a field with a comma, quote or line break is quoted, and a field a
/// spreadsheet would run as a formula is prefixed with a quote.
fn csv_row(csv: &mut String, fields: &[String]) {
    for (k, field) in fields.iter().enumerate() {
        if k > 0 {
            csv.push(',');
        }
        let formula = field.starts_with(['=', '+', '@', '\t', '\r'])
            || (field.starts_with('-') && field.parse::<rust_decimal::Decimal>().is_err());
        let field = if formula { format!("'{field}") } else { field.clone() };
        if field.contains([',', '"', '\n', '\r']) {
            csv.push('"');
            csv.push_str(&field.replace('"', "\"\""));
            csv.push('"');
        } else {
            csv.push_str(&field);
        }
    }
    csv.push_str("\r\n");
}

#[cfg(test)]
mod tests {
    use super::csv_row;

    fn row(fields: &[&str]) -> String {
        let mut csv = String::new();
        csv_row(&mut csv, &fields.iter().map(|f| (*f).to_owned()).collect::<Vec<_>>());
        csv
    }

    #[test]
    fn csv_fields_are_quoted_and_formulas_defused() {
        assert_eq!(row(&["a", "1.50", "-12.50"]), "a,1.50,-12.50\r\n", "numbers stay numbers");
        assert_eq!(
            row(&["x,y", "say \"hi\"", "two\nlines"]),
            "\"x,y\",\"say \"\"hi\"\"\",\"two\nlines\"\r\n"
        );
        assert_eq!(row(&["=HYPERLINK(\"http://x\")"]), "\"'=HYPERLINK(\"\"http://x\"\")\"\r\n");
        assert_eq!(row(&["+1+1", "@SUM(A1)", "-cmd"]), "'+1+1,'@SUM(A1),'-cmd\r\n");
    }
}
