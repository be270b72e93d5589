//! The one harness for tests and benches of the core: a `Scheduler` fed entries with
//! consecutive log indexes and a log time the caller moves by hand, as a leader would stamp
//! them. For tests and benches only; nothing in the crate uses it. Pure like the rest of the
//! core (it lives inside `src/scheduler/`, so `tests/tidy.rs` polices it too).

use super::{
    Applied, Command, Entry, LogIndex, Rejection, RequestId, Response, Scheduler, UnixMillis,
};

/// A log time to start from: 2023-11-14, well inside the range of `UnixMillis`.
pub const T0: u64 = 1_700_000_000_000;

/// A scheduler with a log index and a leader clock.
#[derive(Clone, Debug)]
pub struct Log {
    pub s: Scheduler,
    /// The index of the last entry made.
    pub index: u64,
    /// The log time the next entry is stamped with.
    pub now: u64,
}

impl Default for Log {
    fn default() -> Self {
        Log::at(T0)
    }
}

impl Log {
    /// An empty scheduler whose first entry is stamped `now`.
    pub fn at(now: u64) -> Self {
        Log { s: Scheduler::default(), index: 0, now }
    }

    /// The next entry: the next index, stamped `now`, with request id `req-<index>`.
    pub fn entry(&mut self, command: Command) -> Entry {
        self.index += 1;
        Entry {
            index: LogIndex(self.index),
            proposed_at: UnixMillis(self.now),
            request_id: Some(RequestId::new(format!("req-{}", self.index))),
            command,
            token: None,
        }
    }

    /// Applies `entry` and panics if any invariant is broken afterwards.
    pub fn apply_entry(&mut self, entry: Entry) -> Applied {
        let applied = self.s.apply(entry);
        if let Err(broken) = self.s.check_invariants() {
            panic!("invariants broken after index {}: {broken:#?}", self.index);
        }
        applied
    }

    /// Applies `command` as the next entry and checks every invariant afterwards.
    pub fn apply(&mut self, command: Command) -> Applied {
        let entry = self.entry(command);
        self.apply_entry(entry)
    }

    /// Applies `command` as the next entry with `request_id` (a client's retry reuses one).
    pub fn apply_as(&mut self, request_id: &str, command: Command) -> Applied {
        let mut entry = self.entry(command);
        entry.request_id = Some(RequestId::new(request_id));
        self.apply_entry(entry)
    }

    /// Applies `command`, which must be accepted.
    pub fn accepted(&mut self, command: Command) -> Applied {
        let name = command.name();
        let applied = self.apply(command);
        if let Err(e) = &applied.result {
            panic!("{name} refused: {e}");
        }
        applied
    }

    /// Applies `command`, which must be accepted, and returns its answer.
    pub fn ok(&mut self, command: Command) -> Response {
        let name = command.name();
        match self.apply(command).result {
            Ok(r) => r,
            Err(e) => panic!("{name} refused: {e}"),
        }
    }

    /// Applies `command`, which must be refused, and returns the refusal.
    pub fn err(&mut self, command: Command) -> Rejection {
        let name = command.name();
        match self.apply(command).result {
            Ok(r) => panic!("{name} should have been refused, got {r:?}"),
            Err(e) => e,
        }
    }

    /// Moves log time forward.
    pub fn advance(&mut self, ms: u64) {
        self.now += ms;
    }

    /// Lets log time act alone: expiries, purges, queue admission.
    pub fn tick(&mut self) -> Applied {
        self.apply(Command::Tick)
    }
}
