//! A replica's journal of recent events, fed by its state machine as it applies entries and
//! read by watch streams.
//!
//! Every replica applies the same entries, and the core emits the same events for each, so an
//! event's position — (command index, n-th event of that command) — names the same event on
//! every replica: a watcher that loses its replica resumes on another from its last position,
//! with no gap and no duplicate. A replica's journal holds the last `JOURNAL_EVENTS_MAX` events
//! and starts where its state did (a snapshot it loaded or installed): a resume point older
//! than what it holds *for that watcher* is refused (`Compacted`), and the client re-lists.
//! A tenant's watcher is not refused for other tenants' events that aged out.
//!
//! Watchers wait on keyed wake-ups (a tenant, a worker, or everything), so an idle watcher
//! costs nothing when other tenants' events are appended.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::scheduler::events::Event;
use crate::scheduler::{LogIndex, TenantId, UnixMillis, WorkerId};

/// Events a replica keeps for watchers to resume from (about 200 bytes each).
pub const JOURNAL_EVENTS_MAX: usize = 100_000;

/// Where an event stands in the log: its command's index and its place among that command's
/// events. Ordered as the log is.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct EventPos {
    pub index: LogIndex,
    pub n: u32,
}

impl EventPos {
    /// Just after every event of command `index`.
    pub fn after_command(index: LogIndex) -> EventPos {
        EventPos { index, n: u32::MAX }
    }
}

/// One journaled event.
#[derive(Clone, Debug)]
pub struct Journaled {
    pub pos: EventPos,
    /// Log time of its entry.
    pub at: UnixMillis,
    pub event: Arc<Event>,
}

/// What a watcher sees: one tenant's events, or all of them.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    Tenant(TenantId),
    All,
}

impl Scope {
    fn sees(&self, event: &Event) -> bool {
        match self {
            Scope::All => true,
            Scope::Tenant(t) => event.tenant() == Some(t),
        }
    }
}

/// A resume point the journal no longer covers for this watcher: it must re-list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Compacted;

#[derive(Default)]
struct Inner {
    events: VecDeque<Journaled>,
    /// Every event after this position is here or was dropped (and recorded below).
    complete_after: EventPos,
    /// The last position appended (or `complete_after` while nothing was).
    head: EventPos,
    /// The newest dropped position, of any event and per tenant.
    dropped: Option<EventPos>,
    dropped_by_tenant: BTreeMap<TenantId, EventPos>,
}

/// Wake-ups by key: one `Notify` per tenant, worker, and for everything.
#[derive(Default)]
struct Wakers {
    tenants: BTreeMap<TenantId, Arc<Notify>>,
    workers: BTreeMap<WorkerId, Arc<Notify>>,
}

/// The journal; clones share it.
#[derive(Clone, Default)]
pub struct Journal {
    inner: Arc<Mutex<Inner>>,
    wakers: Arc<Mutex<Wakers>>,
    all: Arc<Notify>,
}

impl Journal {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Forgets everything: the state was replaced by a snapshot at command `index`.
    pub fn restart_at(&self, index: LogIndex) {
        let start = EventPos::after_command(index);
        *self.lock() = Inner { complete_after: start, head: start, ..Inner::default() };
        self.all.notify_waiters();
    }

    /// Appends one command's events (its state machine calls this in log order).
    pub fn append(&self, index: LogIndex, at: UnixMillis, events: Vec<Event>) {
        if events.is_empty() {
            return;
        }
        let events: Vec<Arc<Event>> = events.into_iter().map(Arc::new).collect();
        {
            let mut inner = self.lock();
            for (n, event) in events.iter().enumerate() {
                let pos = EventPos { index, n: u32::try_from(n).unwrap_or(u32::MAX) };
                inner.head = pos;
                inner.events.push_back(Journaled { pos, at, event: event.clone() });
            }
            while inner.events.len() > JOURNAL_EVENTS_MAX {
                let Some(old) = inner.events.pop_front() else { break };
                inner.dropped = Some(old.pos);
                if let Some(t) = old.event.tenant() {
                    match inner.dropped_by_tenant.get_mut(t) {
                        Some(pos) => *pos = old.pos,
                        None => {
                            inner.dropped_by_tenant.insert(t.clone(), old.pos);
                        }
                    }
                }
            }
        }
        // Wake only the keys these events touch (nothing to look up while nobody watches).
        let wakers = self.wakers.lock().unwrap_or_else(|p| p.into_inner());
        if !wakers.tenants.is_empty() {
            for t in events.iter().filter_map(|e| e.tenant()) {
                if let Some(w) = wakers.tenants.get(t) {
                    w.notify_waiters();
                }
            }
        }
        if !wakers.workers.is_empty() {
            if events.iter().any(|e| matches!(**e, Event::TenantDeleted { .. })) {
                wakers.workers.values().for_each(|w| w.notify_waiters());
            } else {
                for id in events.iter().flat_map(|e| e.workers()) {
                    if let Some(w) = wakers.workers.get(id) {
                        w.notify_waiters();
                    }
                }
            }
        }
        drop(wakers);
        self.all.notify_waiters();
    }

    /// The newest position: a watch that starts now resumes after it.
    pub fn head(&self) -> EventPos {
        self.lock().head
    }

    /// Up to `max` events `scope` sees after `after`, in log order, with the position to
    /// resume after next (past other scopes' events too). `Compacted` when one it would see is
    /// no longer here. A position past the head (a client that came from a replica further
    /// ahead) reads nothing until this replica gets there.
    pub fn read(
        &self,
        scope: &Scope,
        after: EventPos,
        max: usize,
    ) -> Result<(Vec<Journaled>, EventPos), Compacted> {
        let inner = self.lock();
        let lost = match scope {
            Scope::All => inner.dropped,
            Scope::Tenant(t) => inner.dropped_by_tenant.get(t).copied(),
        };
        if after < inner.complete_after || lost.is_some_and(|dropped| dropped > after) {
            return Err(Compacted);
        }
        let start = inner.events.partition_point(|e| e.pos <= after);
        let mut seen = Vec::new();
        let mut resume = after;
        for e in inner.events.range(start..) {
            if seen.len() == max {
                return Ok((seen, resume));
            }
            resume = e.pos;
            if scope.sees(&e.event) {
                seen.push(e.clone());
            }
        }
        Ok((seen, resume.max(inner.head)))
    }

    /// The newest events `scope` sees that `wanted` accepts, newest first: at most `max` of
    /// them, from among the newest `scan` events of every scope (a page of recent activity,
    /// bounded however rare the wanted events are).
    pub fn latest(
        &self,
        scope: &Scope,
        wanted: impl Fn(&Event) -> bool,
        max: usize,
        scan: usize,
    ) -> Vec<Journaled> {
        let inner = self.lock();
        inner
            .events
            .iter()
            .rev()
            .take(scan)
            .filter(|e| scope.sees(&e.event) && wanted(&e.event))
            .take(max)
            .cloned()
            .collect()
    }

    /// The wake-up for events `scope` sees. Arm a `notified()` of it (`Notified::enable`)
    /// before reading, so nothing appended in between is missed.
    pub fn waker(&self, scope: &Scope) -> Arc<Notify> {
        match scope {
            Scope::All => self.all.clone(),
            Scope::Tenant(t) => {
                let mut wakers = self.wakers.lock().unwrap_or_else(|p| p.into_inner());
                wakers.tenants.entry(t.clone()).or_default().clone()
            }
        }
    }

    /// The wake-up for events that touch `worker` (and every tenant deletion).
    pub fn worker_waker(&self, worker: &WorkerId) -> Arc<Notify> {
        let mut wakers = self.wakers.lock().unwrap_or_else(|p| p.into_inner());
        wakers.workers.entry(worker.clone()).or_default().clone()
    }

    /// Drops wake-ups nobody waits on any more (called when a watch ends).
    pub fn forget_idle_wakers(&self) {
        let mut wakers = self.wakers.lock().unwrap_or_else(|p| p.into_inner());
        wakers.tenants.retain(|_, w| Arc::strong_count(w) > 1);
        wakers.workers.retain(|_, w| Arc::strong_count(w) > 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::events::Event;

    fn created(tenant: &str) -> Event {
        Event::TenantCreated { tenant: TenantId::new(tenant), parent: None }
    }

    fn after(index: u64) -> EventPos {
        EventPos::after_command(LogIndex(index))
    }

    // Reads return a scope's events in log order with the next resume point; a position past
    // the head reads nothing; a restart at a snapshot refuses older resume points.
    #[test]
    fn reads_are_scoped_ordered_and_bounded_by_the_start() {
        let j = Journal::default();
        j.append(LogIndex(1), UnixMillis(10), vec![created("a"), created("b")]);
        j.append(LogIndex(2), UnixMillis(20), vec![created("a")]);
        let a = Scope::Tenant(TenantId::new("a"));
        let (events, next) = j.read(&a, after(0), 10).expect("covered");
        let at: Vec<EventPos> = events.iter().map(|e| e.pos).collect();
        assert_eq!(
            at,
            [EventPos { index: LogIndex(1), n: 0 }, EventPos { index: LogIndex(2), n: 0 }]
        );
        assert_eq!(next, j.head());
        let (events, next) = j.read(&a, EventPos { index: LogIndex(1), n: 0 }, 1).expect("covered");
        assert_eq!(events.len(), 1, "after (1, 0) only (2, 0) is a's");
        assert!(next >= EventPos { index: LogIndex(1), n: 1 });
        let (all, _) = j.read(&Scope::All, after(0), 10).expect("covered");
        assert_eq!(all.len(), 3);
        let (none, next) = j.read(&Scope::All, after(9), 10).expect("a future position waits");
        assert!(none.is_empty());
        assert_eq!(next, after(9));
        j.restart_at(LogIndex(5));
        assert_eq!(j.read(&a, after(4), 10).map(|r| r.0.len()), Err(Compacted));
        assert_eq!(j.read(&a, after(5), 10).map(|r| r.0.len()), Ok(0));
    }

    // Past `JOURNAL_EVENTS_MAX`, the oldest events go: a watcher that would have seen one is
    // refused, one of a tenant that lost nothing is not.
    #[test]
    fn dropping_old_events_compacts_only_those_who_would_see_them() {
        let j = Journal::default();
        j.append(LogIndex(1), UnixMillis(1), vec![created("old")]);
        j.append(LogIndex(2), UnixMillis(1), vec![created("quiet")]);
        // One more than fits: (1, 0) goes.
        let busy: Vec<Event> = (0..JOURNAL_EVENTS_MAX - 1).map(|_| created("busy")).collect();
        j.append(LogIndex(3), UnixMillis(2), busy);
        let old = Scope::Tenant(TenantId::new("old"));
        let quiet = Scope::Tenant(TenantId::new("quiet"));
        let busy = Scope::Tenant(TenantId::new("busy"));
        assert_eq!(j.read(&old, after(0), 1).map(|r| r.0.len()), Err(Compacted));
        assert_eq!(j.read(&Scope::All, after(0), 1).map(|r| r.0.len()), Err(Compacted));
        assert_eq!(j.read(&quiet, after(0), 1).map(|r| r.0.len()), Ok(1), "it lost nothing");
        assert_eq!(j.read(&busy, after(1), 1).map(|r| r.0.len()), Ok(1));
        assert_eq!(j.read(&Scope::All, after(2), 1).map(|r| r.0.len()), Ok(1));
    }
}
