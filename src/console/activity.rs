//! The events page: the newest events this replica has applied, filtered by tenant and kind
//! (a tenant sees its own only), read from the replica's journal, the same events a Watch
//! streams.

use maud::{html, Markup};

use super::pages::{page, utc, Frame};
use crate::api::convert::watch_event;
use crate::raft::journal::{Journal, Scope};
use crate::scheduler::events::EventKind;
use crate::scheduler::ids::TENANT_ID_LEN_MAX;
use crate::scheduler::TenantId;

/// Most events the page shows.
pub const CONSOLE_EVENTS_MAX: usize = 200;
/// How many of the newest events (of every tenant) the page looks through for those that match
/// its filter.
pub const CONSOLE_EVENTS_SCAN_MAX: usize = 10_000;

/// What the page shows: whose events (`None`: every tenant's and the workers') and which kind.
pub struct Filter {
    pub tenant: Option<String>,
    pub kind: Option<EventKind>,
}

impl Filter {
    /// The filter a query string asks for, or what is wrong with it (said without echoing it).
    pub fn parse(query: Option<&str>) -> Result<Filter, String> {
        let mut filter = Filter { tenant: None, kind: None };
        for (name, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
            let value = value.trim();
            if value.is_empty() {
                continue;
            }
            match name.as_ref() {
                "tenant" if value.len() <= TENANT_ID_LEN_MAX => {
                    filter.tenant = Some(value.to_owned())
                }
                "tenant" => {
                    return Err(format!("A tenant id has at most {TENANT_ID_LEN_MAX} bytes."))
                }
                "kind" => {
                    let kind = EventKind::ALL.iter().find(|k| k.name() == value);
                    filter.kind = Some(*kind.ok_or("There is no such kind of event.")?);
                }
                _ => return Err("The events page takes only tenant and kind.".into()),
            }
        }
        Ok(filter)
    }
}

/// The newest events `filter` matches, as the page shows them; `own` is the tenant a tenant's
/// session is scoped to (its filter's tenant is ignored).
pub fn render(journal: &Journal, filter: &Filter, own: Option<&str>, frame: &Frame) -> Markup {
    let tenant = own.or(filter.tenant.as_deref());
    let scope = match tenant {
        Some(t) => Scope::Tenant(TenantId::new(t)),
        None => Scope::All,
    };
    let kind = filter.kind;
    let events = journal.latest(
        &scope,
        |e| kind.is_none_or(|k| e.kind() == k),
        CONSOLE_EVENTS_MAX,
        CONSOLE_EVENTS_SCAN_MAX,
    );
    let action = match own {
        Some(t) => format!("/tenants/{t}/activity"),
        None => "/activity".to_owned(),
    };
    let title = match tenant {
        Some(t) => format!("Events of {t}"),
        None => "Events".to_owned(),
    };
    page(
        &title,
        Some(frame),
        html! {
            form.filters method="get" action=(action) role="search" {
                @if own.is_none() {
                    label for="tenant" { "Tenant" }
                    input #tenant name="tenant" value=[filter.tenant.as_deref()] placeholder="every tenant" maxlength=(TENANT_ID_LEN_MAX);
                }
                label for="kind" { "Kind" }
                select #kind name="kind" {
                    option value="" { "every kind" }
                    @for k in EventKind::ALL {
                        option value=(k.name()) selected[kind == Some(k)] { (k.name()) }
                    }
                }
                button type="submit" { "Show" }
            }
            @if events.is_empty() {
                p.empty { "No such event among the newest " (CONSOLE_EVENTS_SCAN_MAX) " this replica holds." }
            } @else {
                table {
                    thead { tr { th { "Log time" } th.n { "Log index" } th { "Kind" } th { "Tenant" } th { "What" } } }
                    tbody {
                        @for j in &events {
                            @let e = watch_event(j);
                            tr {
                                td { (utc(e.at_ms)) }
                                td.n { (e.log_index) "." (e.event) }
                                td { (e.kind) }
                                td { @if !e.tenant_id.is_empty() { a href={ "/tenants/" (e.tenant_id) } { (e.tenant_id) } } }
                                td { (what(&e)) }
                            }
                        }
                    }
                }
                p.note {
                    "The newest " (events.len()) " that match, newest first, from among the newest "
                    (CONSOLE_EVENTS_SCAN_MAX) " events this replica holds. `berth watch` streams them all, resuming where it left off."
                }
            }
        },
    )
}

/// An event's particulars in a line.
fn what(e: &crate::api::pb::WatchEvent) -> Markup {
    html! {
        @if !e.placement_id.is_empty() { "placement " strong { (e.placement_id) } " " }
        @if !e.pool.is_empty() { "in " (e.pool) " " }
        @if !e.workers.is_empty() { "on " (e.workers.join(", ")) " " }
        @if !e.reason.is_empty() { "(" (e.reason) ") " }
        @if e.reservation { "reservation " }
        @if e.from_queue { "from the queue " }
        @if !e.by_tenant_id.is_empty() { "for " (e.by_tenant_id) "/" (e.by_placement_id) " " }
        @if !e.lease.is_empty() { "lease " strong { (e.lease) } " held by " (e.holder) ", fencing token " (e.fencing_token) " " }
        @if e.instances_lost > 0 { (e.instances_lost) " instances lost " }
        @if e.exit_code != 0 { "exit code " (e.exit_code) " " }
        @if let Some(q) = &e.quota { "quota " (q.kind().as_str_name()) " " }
        @if let Some(i) = &e.invoice { "invoice " (i.month) ", total " (i.total) " " }
        @if let Some(s) = &e.statement { "statement " (s.month) ", total " (s.total) " " }
    }
}
