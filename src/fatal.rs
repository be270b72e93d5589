//! Fail-stop: a replica that cannot go on safely stops at once and never serves again from
//! that state. That is the case when its log, vote or snapshot could not be written or synced
//! (what it acknowledged might not be on disk), and when applying a committed command panicked
//! (its state is whatever the panic left, and every restart replays the same command).
//!
//! One handle, [`FailStop`], is given to a replica through its options. Production's handle
//! exits the process with [`FAIL_STOP_EXIT_CODE`], so a supervisor (systemd's
//! `Restart=on-failure`, `berth up`) sees the failure. Tests and the simulation run several
//! replicas in one process: their handle records the reason, and the server stops that replica
//! (Raft, both ports) while the others go on. Either way the first reason is kept and goes to
//! the log, and health turns NOT_SERVING where the process lives on to say so.

use std::sync::Arc;

use tokio::sync::watch;

/// The exit status of a replica process that fail-stopped (`EX_SOFTWARE`).
pub const FAIL_STOP_EXIT_CODE: i32 = 70;

/// Stops a replica for good; cheap to clone (clones share the reason).
#[derive(Clone)]
pub struct FailStop {
    exits_process: bool,
    reason: Arc<watch::Sender<Option<String>>>,
}

impl std::fmt::Debug for FailStop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FailStop")
            .field("exits_process", &self.exits_process)
            .field("reason", &self.reason())
            .finish()
    }
}

impl FailStop {
    /// Production: a fail-stop ends the process with [`FAIL_STOP_EXIT_CODE`].
    pub fn exit_process() -> FailStop {
        FailStop { exits_process: true, reason: Arc::new(watch::channel(None).0) }
    }

    /// Tests and simulation: a fail-stop is recorded, and the server stops the replica.
    pub fn record() -> FailStop {
        FailStop { exits_process: false, reason: Arc::new(watch::channel(None).0) }
    }

    /// Stops the replica because of `reason` (only the first reason is kept). With
    /// [`FailStop::exit_process`], does not return.
    pub fn stop(&self, reason: impl Into<String>) {
        let reason = reason.into();
        tracing::error!(%reason, "fail-stop: this replica stops and will not serve again");
        self.reason.send_if_modified(|first| {
            let unset = first.is_none();
            if unset {
                *first = Some(reason.clone());
            }
            unset
        });
        if self.exits_process {
            eprintln!("berth: fail-stop: {reason}");
            std::process::exit(FAIL_STOP_EXIT_CODE);
        }
    }

    /// Why the replica stopped, if it did.
    pub fn reason(&self) -> Option<String> {
        self.reason.borrow().clone()
    }

    /// Resolves once the replica has fail-stopped, with the reason.
    pub async fn stopped(&self) -> String {
        let mut reason = self.reason.subscribe();
        // The sender lives as long as `self`: waiting cannot fail.
        let why = reason.wait_for(Option::is_some).await.map(|why| (*why).clone());
        why.ok().flatten().unwrap_or_default()
    }
}
