//! The console's pages: what each view reads through the API, and its HTML (maud templates, so
//! every value is escaped and every page is type-checked).

use maud::{html, Markup, DOCTYPE};
use tonic::{Request, Status};

use crate::api::pb::{self, scheduler_server::Scheduler};
use crate::api::pb::{tenants_server::Tenants, workers_server::Workers};
use crate::api::Api;
use crate::raft::replica::RaftView;

/// The console's one stylesheet, compiled into the binary.
pub const CSS: &[u8] = include_bytes!("console.css");
/// The console's one script (it keeps a page current), compiled into the binary.
pub const JS: &[u8] = include_bytes!("console.js");

/// Most rows a list on one page shows (the API's page size); a longer list says so.
pub const CONSOLE_ROWS_MAX: u32 = 100;

/// What every signed-in page shows around its content.
pub struct Frame {
    pub who: String,
    pub replica_id: u64,
    /// The page's live stream.
    pub live: String,
    /// How far the answering replica had applied the log before the page was read.
    pub as_of: Option<u64>,
}

fn page(title: &str, frame: Option<&Frame>, content: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Berth" }
                link rel="stylesheet" href="/console.css";
                @if frame.is_some() {
                    script src="/console.js" defer {}
                }
            }
            body data-live=[frame.map(|f| f.live.as_str())] {
                header {
                    a.brand href="/" { "Berth" }
                    @if let Some(frame) = frame {
                        span.who { "Signed in as " (frame.who) }
                        form method="post" action="/sign-out" {
                            button type="submit" { "Sign out" }
                        }
                    }
                }
                main {
                    h1 { (title) }
                    (content)
                }
                @if let Some(frame) = frame {
                    footer {
                        "Answered by replica " (frame.replica_id) " from its state as of log index "
                        (opt(frame.as_of)) " or later; the page follows changes as they apply."
                    }
                }
            }
        }
    }
}

pub fn sign_in(problem: Option<&str>) -> Markup {
    page(
        "Sign in",
        None,
        html! {
            @if let Some(problem) = problem {
                p.problem role="alert" { (problem) }
            }
            form method="post" action="/sign-in" {
                label for="token" { "Token (the admin token, or a tenant token)" }
                input #token type="password" name="token" autocomplete="off" required autofocus;
                button type="submit" { "Sign in" }
            }
            p.note {
                "The token is kept by this replica for your session only; it is never put in a \
                 page, a URL or your browser's storage."
            }
        },
    )
}

pub fn problem(message: &str) -> Markup {
    page(
        "Not here",
        None,
        html! { p.problem role="alert" { (message) } p { a href="/" { "Back to the console" } } },
    )
}

pub(super) fn authed<T>(token: &str, message: T) -> Request<T> {
    let mut request = Request::new(message);
    if let Ok(value) = format!("Bearer {token}").parse() {
        request.metadata_mut().insert("authorization", value);
    }
    request
}

/// Pages read this replica's state, as far as it has applied the log (and say how far): no
/// leader round per page, so many tabs refreshing cost the cluster little. A tenant's read
/// still needs the replica to vouch for its token (`ReadOptions::stale_ok`).
fn this_replica() -> Option<pb::ReadOptions> {
    Some(pb::ReadOptions { stale_ok: true })
}

fn rows_page() -> Option<pb::Page> {
    Some(pb::Page { after: String::new(), limit: CONSOLE_ROWS_MAX })
}

/// A tenant's page: its quota against its use, its placements and its queue.
pub struct Tenant {
    tenant: String,
    quota: pb::GetQuotaResponse,
    placements: Vec<pb::Placement>,
    queued: Vec<pb::QueuedPlacement>,
}

impl Tenant {
    pub async fn read(api: &Api, token: &str, tenant: &str) -> Result<Tenant, Status> {
        let tenant_id = tenant.to_owned();
        let quota = Tenants::get_quota(
            api,
            authed(
                token,
                pb::GetQuotaRequest { tenant_id: tenant_id.clone(), read: this_replica() },
            ),
        )
        .await?
        .into_inner();
        let placements = Scheduler::list_placements(
            api,
            authed(
                token,
                pb::ListPlacementsRequest {
                    tenant_id: tenant_id.clone(),
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
                pb::ListQueueRequest { tenant_id, page: rows_page(), read: this_replica() },
            ),
        )
        .await?
        .into_inner()
        .queued;
        Ok(Tenant { tenant: tenant.to_owned(), quota, placements, queued })
    }

    pub fn render(&self, frame: &Frame) -> Markup {
        let used = self.quota.usage.unwrap_or_default();
        let limits = self.quota.quota.as_ref().and_then(|q| q.total).unwrap_or_default();
        let pools = self.quota.quota.as_ref().map(|q| q.pools.clone()).unwrap_or_default();
        page(
            &format!("Tenant {}", self.tenant),
            Some(frame),
            html! {
                section {
                    h2 { "Quota" }
                    table {
                        thead { tr { th { "Scope" } th { "CPU (millicores)" } th { "Memory (MiB)" } th { "Instances" } th { "Jobs" } } }
                        tbody {
                            tr.total {
                                td { "all pools" }
                                td { (of(used.cpu_millis, limits.cpu_millis)) }
                                td { (of(used.memory_mib, limits.memory_mib)) }
                                td { (of(used.instances, limits.instances)) }
                                td { (of(used.jobs, limits.jobs)) }
                            }
                            @for (pool, usage) in &self.quota.pool_usage {
                                @let limit = pools.get(pool).cloned().unwrap_or_default();
                                tr {
                                    td { "pool " (pool) }
                                    td { (of(usage.cpu_millis, limit.cpu_millis)) }
                                    td { (of(usage.memory_mib, limit.memory_mib)) }
                                    td { (of(usage.instances, limit.instances)) }
                                    td { (of(usage.jobs, limit.jobs)) }
                                }
                            }
                        }
                    }
                    p.note { "Used / limit; a dash is no limit. " (self.quota.queued) " placements wait in the queue." }
                }
                section {
                    h2 { "Placements (" (self.placements.len()) ")" }
                    @if self.placements.is_empty() {
                        p.empty { "None." }
                    } @else {
                        table {
                            thead { tr { th { "Placement" } th { "Pool" } th { "Count" } th { "CPU each" } th { "Memory each" } th { "Workers" } th { "Log index" } } }
                            tbody {
                                @for p in &self.placements {
                                    @let spec = p.spec.clone().unwrap_or_default();
                                    @let resources = spec.resources.unwrap_or_default();
                                    tr {
                                        td { (spec.placement_id) }
                                        td { (p.pool) }
                                        td.n { (spec.count) }
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
                section {
                    h2 { "Waiting (" (self.queued.len()) ")" }
                    @if self.queued.is_empty() {
                        p.empty { "Nothing waits." }
                    } @else {
                        table {
                            thead { tr { th { "Position" } th { "Placement" } th { "Pool" } th { "Why it waits" } } }
                            tbody {
                                @for q in &self.queued {
                                    @let spec = q.spec.clone().unwrap_or_default();
                                    tr {
                                        td.n { (q.position) " of " (q.pool_queued) }
                                        td { (spec.placement_id) }
                                        td { (q.pool) }
                                        td { strong { (q.wait_reason) } " " (q.wait_message) }
                                    }
                                }
                            }
                        }
                        (more(self.queued.len()))
                    }
                }
            },
        )
    }
}

/// The operator's page: the replicas, the tenants and the workers.
pub struct Operator {
    view: RaftView,
    tenants: Vec<pb::Tenant>,
    workers: Vec<pb::Worker>,
}

impl Operator {
    /// The replicas as this replica sees them (`view`: no peer asked, no state hashed; the
    /// CLI's `cluster status` is the full report), with the tenants and workers read through
    /// the API.
    pub async fn read(api: &Api, view: RaftView, token: &str) -> Result<Operator, Status> {
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
        Ok(Operator { view, tenants, workers })
    }

    pub fn render(&self, frame: &Frame) -> Markup {
        page(
            "Cluster",
            Some(frame),
            html! {
                section {
                    h2 { "Replicas" }
                    @let v = &self.view;
                    p {
                        @match v.leader {
                            Some(leader) => { "Leader: replica " (leader) ", term " (v.term) "." }
                            None => { strong.problem { "No leader" } " in term " (v.term) "." }
                        }
                        " Replica " (v.id) ", which answered, is " (v.role.to_lowercase())
                        ": last log index " (opt(v.last_log_index))
                        ", applied " (opt(v.last_applied_index)) "."
                    }
                    table {
                        thead { tr { th { "Replica" } th { "Peer address" } th { "Voter" } th { "Holds the log up to" } } }
                        tbody {
                            @for (id, addr, voter) in v.voters.iter().map(|(i, a)| (i, a, true)).chain(v.learners.iter().map(|(i, a)| (i, a, false))) {
                                tr {
                                    td {
                                        (id)
                                        @if v.leader == Some(*id) { " (leader)" }
                                    }
                                    td { (addr) }
                                    td { @if voter { "yes" } @else { "no (learner)" } }
                                    td.n {
                                        @match &v.matched {
                                            Some(matched) => (opt(matched.get(id).copied().flatten())),
                                            None => "–",
                                        }
                                    }
                                }
                            }
                        }
                    }
                    @if v.matched.is_none() {
                        p.note { "Only the leader knows how far each replica holds the log; `berth cluster status` asks every replica." }
                    }
                }
                section {
                    h2 { "Workers (" (self.workers.len()) ")" }
                    @if self.workers.is_empty() {
                        p.empty { "No worker is registered." }
                    } @else {
                        table {
                            thead { tr { th { "Worker" } th { "Pool" } th { "CPU allocated / capacity" } th { "Memory allocated / capacity (MiB)" } th { "State" } } }
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
                                            @if w.down_since_ms.is_some() { "down" }
                                            @else if !w.schedulable { "draining" }
                                            @else { "ready" }
                                        }
                                    }
                                }
                            }
                        }
                        (more(self.workers.len()))
                    }
                }
                section {
                    h2 { "Tenants (" (self.tenants.len()) ")" }
                    @if self.tenants.is_empty() {
                        p.empty { "No tenant exists." }
                    } @else {
                        ul.tenants {
                            @for t in &self.tenants {
                                li { a href={ "/tenants/" (t.tenant_id) } { (t.tenant_id) } }
                            }
                        }
                        (more(self.tenants.len()))
                    }
                }
            },
        )
    }
}

/// `used / limit`, or `used / –` without a limit.
fn of(used: u64, limit: Option<u64>) -> Markup {
    html! {
        (used) " / "
        @match limit { Some(limit) => (limit), None => "–" }
    }
}

fn opt(value: Option<u64>) -> Markup {
    html! { @match value { Some(v) => (v), None => "–" } }
}

/// Says when a list was cut at a page's length.
fn more(shown: usize) -> Markup {
    html! {
        @if u32::try_from(shown).is_ok_and(|n| n >= CONSOLE_ROWS_MAX) {
            p.note { "The first " (CONSOLE_ROWS_MAX) " are shown; the CLI lists the rest." }
        }
    }
}
