//! The server streams: `Scheduler.Watch` (a tenant's events, or everything for the admin,
//! from the replica's journal) and `Workers.WatchAssignments` (what one worker should run).
//!
//! Each stream is a task that reads, sends, then waits for its key's wake-up (armed before
//! reading, so nothing appended in between is missed) or for the client to go away. A slow
//! client holds back only its own task: the journal keeps events for it until they age out,
//! and then its stream ends with WATCH_COMPACTED.
//!
//! An idle stream proves every `STREAM_PROGRESS_INTERVAL` (5 s) that its replica is still current (it
//! renews the replica's vouch lease: a read index confirmed by the leader, shared by every
//! caller) and sends a progress message; a replica that cannot (cut off from the leader) ends
//! the stream with UNAVAILABLE. A client that hears nothing for a few intervals (a replica
//! paused or gone) knows the stream is dead and resumes elsewhere.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Status};

use super::auth::{self, require_admin, tenant_scope, Caller};
use super::status::{error, invalid};
use super::{convert, pb, Api};
use crate::raft::journal::{Compacted, EventPos, Journal, Scope};
use crate::raft::replica::Replica;
use crate::scheduler::events::EventKind;
use crate::scheduler::query::PAGE_MAX;
use crate::scheduler::{Answer, LogIndex, Placement, Query, WorkerId};

/// Kinds one watch may list.
pub const WATCH_KINDS_MAX: usize = 32;
/// Messages a stream holds for a slow client before its task waits.
const STREAM_BUFFER: usize = 256;
/// Events read from the journal at a time.
const READ_CHUNK: usize = 256;
/// How often an idle stream says it is alive and current.
pub const STREAM_PROGRESS_INTERVAL: Duration = Duration::from_secs(5);
/// How long a client waits on a silent stream before it takes it for dead and resumes on
/// another replica (three progress intervals).
pub const STREAM_SILENCE_MAX: Duration = Duration::from_secs(15);
/// How long an idle stream's replica may take to confirm it is current.
const VOUCH_DEADLINE: Duration = Duration::from_secs(2);

pub(super) type Stream<T> = ReceiverStream<Result<T, Status>>;

fn compacted() -> Status {
    error(
        tonic::Code::FailedPrecondition,
        "WATCH_COMPACTED",
        "this replica no longer holds every event after the resume point: list again, then \
         watch from now",
        Vec::new(),
    )
}

fn kinds(names: &[String]) -> Result<Option<BTreeSet<EventKind>>, Status> {
    if names.len() > WATCH_KINDS_MAX {
        return Err(invalid("INVALID_ARGUMENT", format!("at most {WATCH_KINDS_MAX} kinds")));
    }
    if names.is_empty() {
        return Ok(None);
    }
    let by_name: BTreeMap<&str, EventKind> =
        EventKind::ALL.iter().map(|k| (k.name(), *k)).collect();
    names
        .iter()
        .map(|n| {
            by_name.get(n.as_str()).copied().ok_or_else(|| {
                let quoted = crate::scheduler::ids::quoted(n);
                invalid("INVALID_ARGUMENT", format!("unknown event kind {quoted}"))
            })
        })
        .collect::<Result<BTreeSet<_>, _>>()
        .map(Some)
}

/// Whether this replica is still current (it can confirm a read index with the leader); an
/// idle stream's check.
async fn still_current(replica: &Replica) -> Result<(), Status> {
    let until = tokio::time::Instant::now() + VOUCH_DEADLINE;
    replica.vouch_lease(until).await.map_err(|why| {
        let message = format!("this replica is not current ({why}); resume on another replica");
        error(tonic::Code::Unavailable, "REPLICA_NOT_CURRENT", message, Vec::new())
    })
}

/// Whether the caller may still read: a revoked token ends its stream.
fn still_allowed(replica: &Replica, caller: &Caller) -> bool {
    replica.read_local(|s| auth::still_valid(caller, &s.scheduler))
}

pub(super) async fn watch(
    api: &Api,
    request: Request<pb::WatchRequest>,
) -> Result<Stream<pb::WatchResponse>, Status> {
    let caller = api.caller(&request).await?;
    let r = request.into_inner();
    let scope = if r.tenant_id.is_empty() {
        require_admin(&caller)?;
        Scope::All
    } else {
        Scope::Tenant(tenant_scope(&caller, &r.tenant_id)?)
    };
    let kinds = kinds(&r.kinds)?;
    let journal = api.replica.journal().clone();
    let start = match (r.after_log_index, r.after_event) {
        (None, _) => None,
        (Some(index), None) => Some(EventPos::after_command(LogIndex(index))),
        (Some(index), Some(n)) => Some(EventPos { index: LogIndex(index), n }),
    };
    // Refuse a resume point this replica cannot serve before the stream opens.
    if let Some(start) = start {
        journal.read(&scope, start, 0).map_err(|Compacted| compacted())?;
    }
    let (tx, rx) = mpsc::channel(STREAM_BUFFER);
    let replica = api.replica.clone();
    tokio::spawn(async move {
        let waker = journal.waker(&scope);
        let mut pos = match start {
            Some(start) => start,
            None => {
                let head = journal.head();
                let progress = pb::WatchPosition { log_index: head.index.0, event: head.n };
                let message = pb::watch_response::Message::Progress(progress);
                if tx.send(Ok(pb::WatchResponse { message: Some(message) })).await.is_err() {
                    return;
                }
                head
            }
        };
        loop {
            let notified = waker.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let (events, next) = match journal.read(&scope, pos, READ_CHUNK) {
                Ok(read) => read,
                Err(Compacted) => {
                    let _ = tx.send(Err(compacted())).await;
                    break;
                }
            };
            if !events.is_empty() && !still_allowed(&replica, &caller) {
                let _ = tx.send(Err(auth::unauthenticated())).await;
                break;
            }
            // A full chunk may have more behind it: read on before waiting.
            let full = events.len() == READ_CHUNK;
            for e in events {
                if kinds.as_ref().is_none_or(|k| k.contains(&e.event.kind())) {
                    let message = pb::watch_response::Message::Event(convert::watch_event(&e));
                    if tx.send(Ok(pb::WatchResponse { message: Some(message) })).await.is_err() {
                        journal.forget_idle_wakers();
                        return;
                    }
                }
            }
            pos = next;
            if full {
                continue;
            }
            tokio::select! {
                () = &mut notified => {}
                () = tx.closed() => break,
                () = tokio::time::sleep(STREAM_PROGRESS_INTERVAL) => {
                    if let Err(status) = still_current(&replica).await {
                        let _ = tx.send(Err(status)).await;
                        break;
                    }
                    let progress = pb::WatchPosition { log_index: pos.index.0, event: pos.n };
                    let message = pb::watch_response::Message::Progress(progress);
                    if tx.send(Ok(pb::WatchResponse { message: Some(message) })).await.is_err() {
                        break;
                    }
                }
            }
        }
        drop(waker);
        journal.forget_idle_wakers();
    });
    Ok(ReceiverStream::new(rx))
}

/// A worker's assignments as this replica sees them, keyed by (tenant, placement, slot,
/// assigned_at, reservation): a confirmed reservation is unassigned as a reservation and
/// assigned as a placement.
struct WorkerView {
    log_index: u64,
    registered: bool,
    generation: u64,
    down: bool,
    assignments: BTreeMap<(String, String, u32, u64, bool), pb::Assignment>,
}

impl WorkerView {
    /// A message with this view's state and no assignments.
    fn message(&self, full: bool) -> pb::WatchAssignmentsResponse {
        pb::WatchAssignmentsResponse {
            log_index: self.log_index,
            full,
            assigned: Vec::new(),
            unassigned: Vec::new(),
            generation: self.generation,
            down: self.down,
            registered: self.registered,
        }
    }
}

/// What to send for `view` after `known`: everything first, then only what changed.
fn change(known: Option<&WorkerView>, view: &WorkerView) -> Option<pb::WatchAssignmentsResponse> {
    let Some(old) = known else {
        let assigned = view.assignments.values().cloned().collect();
        return Some(pb::WatchAssignmentsResponse { assigned, ..view.message(true) });
    };
    let assigned: Vec<_> = view
        .assignments
        .iter()
        .filter(|(k, _)| !old.assignments.contains_key(*k))
        .map(|(_, a)| a.clone())
        .collect();
    let unassigned: Vec<_> = old
        .assignments
        .iter()
        .filter(|(k, _)| !view.assignments.contains_key(*k))
        .map(|(_, a)| a.clone())
        .collect();
    let same =
        (old.generation, old.down, old.registered) == (view.generation, view.down, view.registered);
    (!assigned.is_empty() || !unassigned.is_empty() || !same)
        .then(|| pb::WatchAssignmentsResponse { assigned, unassigned, ..view.message(false) })
}

fn worker_view(replica: &Replica, worker: &WorkerId) -> WorkerView {
    replica.read_local(|s| {
        let scheduler = &s.scheduler;
        let w = scheduler.state().workers.get(worker);
        let mut view = WorkerView {
            log_index: s.progress.command_index,
            registered: w.is_some(),
            generation: w.map_or(0, |w| w.generation.0),
            down: w.is_some_and(|w| w.down_since.is_some()),
            assignments: BTreeMap::new(),
        };
        let mut after = None;
        loop {
            let query = Query::WorkerPlacements { worker: worker.clone(), after, limit: PAGE_MAX };
            let Answer::Placements(page) = scheduler.query(&query) else { break };
            for p in &page {
                for a in assignments_of(p, worker) {
                    let key = (
                        a.tenant_id.clone(),
                        a.placement_id.clone(),
                        a.slot,
                        a.assigned_at,
                        a.reservation,
                    );
                    view.assignments.insert(key, a);
                }
            }
            match page.last() {
                Some(last) if page.len() == PAGE_MAX as usize => {
                    after = Some((last.tenant.clone(), last.id().clone()));
                }
                _ => break,
            }
        }
        view
    })
}

fn assignments_of(p: &Placement, worker: &WorkerId) -> Vec<pb::Assignment> {
    p.instances
        .iter()
        .zip(&p.slots)
        .enumerate()
        .filter(|(_, (w, _))| *w == worker)
        .map(|(slot, (_, s))| pb::Assignment {
            tenant_id: p.tenant.0.clone(),
            placement_id: p.id().0.clone(),
            slot: u32::try_from(slot).unwrap_or(u32::MAX),
            assigned_at: s.assigned_at.0,
            resources: Some(convert::pb_resources(p.spec.resources)),
            placed_at_ms: p.placed_at.0,
            time_limit_at_ms: p.time_limit_at.map(|t| t.0),
            reservation: p.expires_at.is_some(),
            running: s.running_since.is_some(),
            labels: p.spec.labels.clone(),
        })
        .collect()
}

pub(super) async fn watch_assignments(
    api: &Api,
    request: Request<pb::WatchAssignmentsRequest>,
) -> Result<Stream<pb::WatchAssignmentsResponse>, Status> {
    let caller = api.caller(&request).await?;
    require_admin(&caller)?;
    let r = request.into_inner();
    let worker = WorkerId::new(&r.worker_id);
    crate::scheduler::Command::Heartbeat { workers: vec![worker.clone()] }
        .validate()
        .map_err(|rejection| super::status::rejection(&rejection))?;
    if !worker_view(&api.replica, &worker).registered {
        return Err(super::status::not_found("worker", &r.worker_id));
    }
    let (tx, rx) = mpsc::channel(STREAM_BUFFER);
    let replica = api.replica.clone();
    let journal: Journal = replica.journal().clone();
    tokio::spawn(async move {
        let waker = journal.worker_waker(&worker);
        let mut known: Option<WorkerView> = None;
        let mut idle = false;
        loop {
            let notified = waker.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if idle {
                if let Err(status) = still_current(&replica).await {
                    let _ = tx.send(Err(status)).await;
                    break;
                }
            }
            let view = worker_view(&replica, &worker);
            // Idle and unchanged: an empty change says the stream is alive.
            let message =
                change(known.as_ref(), &view).or_else(|| idle.then(|| view.message(false)));
            if let Some(message) = message {
                if tx.send(Ok(message)).await.is_err() {
                    break;
                }
            }
            let registered = view.registered;
            known = Some(view);
            if !registered {
                break;
            }
            idle = tokio::select! {
                () = &mut notified => false,
                () = tx.closed() => break,
                () = tokio::time::sleep(STREAM_PROGRESS_INTERVAL) => true,
            };
        }
        drop(waker);
        journal.forget_idle_wakers();
    });
    Ok(ReceiverStream::new(rx))
}
