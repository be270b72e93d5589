//! Live pages: one server-sent-events stream per tab. It waits on the replica's journal for a
//! change in what the page shows and tells the tab (`event: changed`, its id the log index the
//! journal had reached, so a reconnecting tab resumes with `Last-Event-ID`), at most four times
//! a second however fast commands apply; the tab then fetches its content again. A tab that
//! reads too slowly to keep up is told to reload everything (`event: resync`); a token that
//! stops working signs the tab out (`event: signed-out`) and ends the stream.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{combinators::BoxBody, BodyExt, StreamBody};
use hyper::body::{Bytes, Frame};
use tokio::sync::mpsc::{self, error::TrySendError};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

use super::Console;
use crate::raft::journal::{self, Compacted, EventPos, Journal};
use crate::scheduler::{LogIndex, TenantId};

/// Least time between two notes to one tab: at most four a second.
pub const CONSOLE_LIVE_INTERVAL: Duration = Duration::from_millis(250);
/// Notes waiting for a tab that reads slowly; one more, and the tab is told to resync instead.
pub const CONSOLE_LIVE_BUFFER: usize = 8;
/// How often a live stream checks its token again, and (on the operator's page) the leader.
const RECHECK: Duration = Duration::from_secs(1);

/// What a tab watches: one tenant, or (the operator's page) every tenant and the leadership.
pub(super) enum Scope {
    Tenant(String),
    Cluster,
}

/// The stream for one tab, resuming after `resume` (its `Last-Event-ID`) if given.
///
/// It reads no events: a tab only needs to know that its scope changed, so it waits on the
/// journal's wake-up for that scope and names the journal's head at the time it tells. (Fed
/// by a Watch instead, each operator tab turned every event of the cluster into a message:
/// 50 tabs cost a busy cluster more than 40 % of its writes, see docs/console.md.)
pub(super) fn stream(
    console: Arc<Console>,
    session: [u8; 32],
    token: String,
    scope: Scope,
    resume: Option<u64>,
) -> BoxBody<Bytes, Infallible> {
    let (tx, rx) = mpsc::channel(CONSOLE_LIVE_BUFFER);
    tokio::spawn(async move {
        let mut live = Live { tx, told: None };
        // The first note opens the stream and asks a dropped tab to come back within 2 s.
        if !live.send(": live\nretry: 2000\n\n".to_owned()) {
            return;
        }
        let journal = console.replica.journal().clone();
        let scope = match &scope {
            Scope::Tenant(tenant) => journal::Scope::Tenant(TenantId::new(tenant)),
            Scope::Cluster => journal::Scope::All,
        };
        let waker = journal.waker(&scope);
        follow(&console, &mut live, &journal, &scope, &waker, session, &token, resume).await;
        drop(waker);
        journal.forget_idle_wakers();
    });
    StreamBody::new(ReceiverStream::new(rx)).boxed()
}

/// Tells the tab of each change to `scope` (and, for the whole cluster, of each change of
/// leader) until the tab goes or its token stops working.
#[allow(clippy::too_many_arguments)]
async fn follow(
    console: &Console,
    live: &mut Live,
    journal: &Journal,
    scope: &journal::Scope,
    waker: &Notify,
    session: [u8; 32],
    token: &str,
    resume: Option<u64>,
) {
    // What the tab has not been told: a change in its scope, a new leader, or that it must
    // reload everything.
    let (mut changed, mut new_leader, mut resync) = (false, false, false);
    // The wake-up is armed before the journal is read, here and each time the tab is told, so
    // a change appended after a read always wakes it. While a change waits to be told, it is
    // not polled: more changes only move the head the note will name.
    let mut woken = Box::pin(waker.notified());
    woken.as_mut().enable();
    if let Some(after) = resume {
        // A point past what this replica has applied is not one it gave the tab, and one it no
        // longer holds cannot be resumed from: either way the tab reloads everything.
        match journal.read(scope, EventPos::after_command(LogIndex(after)), 1) {
            _ if after > journal.head().index.0 => resync = true,
            Ok((missed, _)) => changed = !missed.is_empty(),
            Err(Compacted) => resync = true,
        }
    }
    let mut leader = leadership(console);
    let mut recheck = tokio::time::interval(RECHECK);
    loop {
        // On the console's common tick, so the tabs of one page are told (and ask for it
        // again) together and share one drawing of it (`Console::drawn`).
        // After a quiet spell the next tick is the first from now: the ticks a tab was not
        // told at are not owed to it.
        let now = Instant::now();
        let due = next_tick(
            console.ticks_from,
            live.told.map_or(now, |t| (t + CONSOLE_LIVE_INTERVAL).max(now)),
        );
        tokio::select! {
            () = &mut woken, if !changed => changed = true,
            () = tokio::time::sleep_until(due), if changed || new_leader || resync => {
                woken = Box::pin(waker.notified());
                woken.as_mut().enable();
                let note = if resync {
                    "event: resync\ndata: resync\n\n".to_owned()
                } else if changed {
                    let head = journal.head().index.0;
                    format!("id: {head}\nevent: changed\ndata: {head}\n\n")
                } else {
                    "event: changed\ndata: leadership\n\n".to_owned()
                };
                match live.try_send(note) {
                    Ok(()) => resync = false,
                    Err(TrySendError::Full(())) => resync = true,
                    Err(TrySendError::Closed(())) => return,
                }
                (changed, new_leader) = (false, false);
                // The tick it was due at, not when the send finished: the next is one interval
                // on, on the same tick as every other tab's.
                live.told = Some(due);
            }
            _ = recheck.tick() => {
                if let Err(status) = console.api.caller_of(token).await {
                    if status.code() == Code::Unauthenticated {
                        console.lock().remove(&session);
                        let _ = live.try_send("event: signed-out\ndata: signed-out\n\n".into());
                        return;
                    }
                }
                let now = leadership(console);
                if matches!(scope, journal::Scope::All) && now != leader {
                    (leader, new_leader) = (now, true);
                }
            }
            () = live.tx.closed() => return,
        }
    }
}

struct Live {
    tx: mpsc::Sender<Result<Frame<Bytes>, Infallible>>,
    /// When the tab was last told something.
    told: Option<Instant>,
}

impl Live {
    fn try_send(&mut self, note: String) -> Result<(), TrySendError<()>> {
        self.told = Some(Instant::now());
        self.tx.try_send(Ok(Frame::data(Bytes::from(note)))).map_err(|e| match e {
            TrySendError::Full(_) => TrySendError::Full(()),
            TrySendError::Closed(_) => TrySendError::Closed(()),
        })
    }

    fn send(&mut self, note: String) -> bool {
        self.try_send(note).is_ok()
    }
}

/// The first tick (every `CONSOLE_LIVE_INTERVAL` from `from`) at or after `at`.
fn next_tick(from: Instant, at: Instant) -> Instant {
    let interval = CONSOLE_LIVE_INTERVAL.as_nanos();
    let since = at.saturating_duration_since(from).as_nanos();
    let ticks = since.div_ceil(interval);
    let ahead = u64::try_from(ticks.saturating_mul(interval)).unwrap_or(u64::MAX);
    from + Duration::from_nanos(ahead)
}

/// The leader the console's replica knows of, and its term.
fn leadership(console: &Console) -> (Option<u64>, u64) {
    let view = console.replica.view();
    (view.leader, view.term)
}
