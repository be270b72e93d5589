//! Live pages: one server-sent-events stream per tab, fed in-process by a Watch of what the
//! page shows. It tells the tab that something changed (`event: changed`, its id the log index
//! of the latest change, so a reconnecting tab resumes with `Last-Event-ID`), at most four times
//! a second however fast commands apply; the tab then reloads its content. A tab that reads too
//! slowly to keep up is told to reload everything (`event: resync`); a token that stops working
//! signs the tab out (`event: signed-out`) and ends the stream.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{combinators::BoxBody, BodyExt, StreamBody};
use hyper::body::{Bytes, Frame};
use tokio::sync::mpsc::{self, error::TrySendError};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::Code;

use super::{pages, Console};
use crate::api::pb::{self, scheduler_server::Scheduler, watch_response::Message};

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
        let tenant_id = match &scope {
            Scope::Tenant(tenant) => tenant.clone(),
            Scope::Cluster => String::new(),
        };
        // A resume point this replica no longer holds (or cannot serve) is dropped: the tab
        // reloads everything and watches from now.
        let mut resync = false;
        // A point past what this replica has applied is not one it gave the tab: resuming there
        // would skip what comes before it.
        let head = console.replica.journal().head().index.0;
        let resume = resume.filter(|after| {
            resync |= *after > head;
            *after <= head
        });
        let mut watch = None;
        for after_log_index in [resume, None] {
            let request = pb::WatchRequest {
                tenant_id: tenant_id.clone(),
                after_log_index,
                after_event: None,
                kinds: vec![],
            };
            match Scheduler::watch(&console.api, pages::authed(&token, request)).await {
                Ok(opened) => {
                    watch = Some(opened.into_inner());
                    break;
                }
                Err(status)
                    if status.code() == Code::Unauthenticated || after_log_index.is_none() =>
                {
                    live.end(&console, &session, &status);
                    return;
                }
                Err(_) => resync = true,
            }
        }
        let Some(mut watch) = watch else { return };
        let mut leadership = console.replica.leadership();
        let mut recheck = tokio::time::interval(RECHECK);
        // What the tab has not been told yet: that something changed, and the log index of the
        // latest change among it (none: only the leadership changed).
        let mut pending: Option<Option<u64>> = None;
        loop {
            let due = live.told.map_or_else(Instant::now, |t| t + CONSOLE_LIVE_INTERVAL);
            let tell = pending.is_some() || resync;
            tokio::select! {
                message = watch.next() => match message {
                    Some(Ok(pb::WatchResponse { message: Some(Message::Event(e)) })) => {
                        pending = Some(Some(e.log_index));
                    }
                    Some(Ok(_)) => {}
                    Some(Err(status)) => {
                        live.end(&console, &session, &status);
                        return;
                    }
                    None => return,
                },
                () = tokio::time::sleep_until(due), if tell => {
                    let note = if resync {
                        "event: resync\ndata: resync\n\n".to_owned()
                    } else {
                        match pending.flatten() {
                            Some(index) => format!("id: {index}\nevent: changed\ndata: {index}\n\n"),
                            None => "event: changed\ndata: leadership\n\n".to_owned(),
                        }
                    };
                    match live.try_send(note) {
                        Ok(()) => resync = false,
                        Err(TrySendError::Full(_)) => resync = true,
                        Err(TrySendError::Closed(_)) => return,
                    }
                    pending = None;
                }
                _ = recheck.tick() => {
                    if let Err(status) = console.api.caller_of(&token).await {
                        if status.code() == Code::Unauthenticated {
                            live.end(&console, &session, &status);
                            return;
                        }
                    }
                    let now = console.replica.leadership();
                    if matches!(scope, Scope::Cluster) && now != leadership {
                        leadership = now;
                        pending = Some(pending.flatten());
                    }
                }
                () = live.tx.closed() => return,
            }
        }
    });
    StreamBody::new(ReceiverStream::new(rx)).boxed()
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

    /// Ends the stream over `status`: a token that no longer works signs the tab out (and ends
    /// its session); anything else (a resume point this replica no longer holds, a replica
    /// that stopped serving) asks the tab to reload, which opens a new stream.
    fn end(&mut self, console: &Console, session: &[u8; 32], status: &tonic::Status) {
        let note = if status.code() == Code::Unauthenticated {
            console.lock().remove(session);
            "event: signed-out\ndata: signed-out\n\n"
        } else {
            "event: resync\ndata: resync\n\n"
        };
        let _ = self.try_send(note.to_owned());
    }
}
