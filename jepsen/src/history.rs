//! The history: every client operation recorded as `invoke`, then `ok` (it happened), `fail`
//! (it definitely did not happen) or `info` (unknown: a timeout or lost connection is never
//! `fail`). Nemesis actions are recorded too, as `info` pairs from process 0, so the report and
//! the availability checker can line them up with client operations.
//!
//! Times come from the harness's monotonic clock, in one process, so the order of the lines is
//! the real-time order the checkers rely on.

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// Process id of the nemesis; clients start at 1.
pub const NEMESIS: u64 = 0;

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Type {
    Invoke,
    Ok,
    Fail,
    Info,
}

/// One line of `history.jsonl`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Op {
    /// Shared by an invocation and its completion.
    pub op: u64,
    pub process: u64,
    #[serde(rename = "type")]
    pub kind: Type,
    /// Microseconds since the run started (harness monotonic clock).
    pub time_us: u64,
    /// `quota`, `lease`, `register`, `final` or `nemesis`.
    pub workload: String,
    /// `place`, `release`, `read`, `write`, `acquire`, `keepalive`, `release-lease`,
    /// `fenced-write`; for the nemesis `start`/`stop`.
    pub f: String,
    /// The object: tenant, register key or lease name; for the nemesis the fault.
    pub key: String,
    /// Placement id or lease holder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Argument: the value written, or the fencing token presented.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arg: Option<u64>,
    /// Result: the value read, or the token granted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<u64>,
    /// Where a write landed in the command log (from the response's WriteInfo).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_index: Option<u64>,
    /// Log time at which a write took effect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_at_ms: Option<u64>,
    /// A lease's expiry as granted or kept alive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<u64>,
    /// ErrorInfo reason (or gRPC code) of a `fail`/`info`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What kind of request (capacity workload: `plain`, `anti-affinity`, `group`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// The workers an acknowledged Place chose, one per instance.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub workers: Vec<String>,
}

impl Op {
    /// An invocation with no result fields.
    pub fn invoke(workload: &str, f: &str, key: &str) -> Op {
        Op {
            op: 0,
            process: 0,
            kind: Type::Invoke,
            time_us: 0,
            workload: workload.to_owned(),
            f: f.to_owned(),
            key: key.to_owned(),
            id: None,
            arg: None,
            value: None,
            log_index: None,
            applied_at_ms: None,
            expires_at_ms: None,
            error: None,
            detail: None,
            workers: Vec::new(),
        }
    }
    pub fn with_detail(mut self, detail: &str) -> Op {
        self.detail = Some(detail.to_owned());
        self
    }
    pub fn with_id(mut self, id: impl Into<String>) -> Op {
        self.id = Some(id.into());
        self
    }
    pub fn with_arg(mut self, arg: u64) -> Op {
        self.arg = Some(arg);
        self
    }
}

/// An invocation and its completion (None: the run ended first, same as `info`).
#[derive(Clone, Copy, Debug)]
pub struct Pair<'a> {
    pub invoke: &'a Op,
    pub done: Option<&'a Op>,
}

impl Pair<'_> {
    pub fn kind(&self) -> Type {
        self.done.map_or(Type::Info, |d| d.kind)
    }
    pub fn is_ok(&self) -> bool {
        self.kind() == Type::Ok
    }
    /// Completion time, or `u64::MAX` if it never completed definitely (info).
    pub fn end_us(&self) -> u64 {
        match self.done {
            Some(d) if d.kind != Type::Info => d.time_us,
            _ => u64::MAX,
        }
    }
    pub fn done_field<T>(&self, f: impl Fn(&Op) -> Option<T>) -> Option<T> {
        self.done.and_then(f)
    }
}

/// Pairs every invocation with its completion, in invocation order.
pub fn pairs(history: &[Op]) -> Vec<Pair<'_>> {
    let mut out: Vec<Pair<'_>> = Vec::new();
    let mut open = std::collections::BTreeMap::new();
    for op in history {
        if op.kind == Type::Invoke {
            open.insert(op.op, out.len());
            out.push(Pair { invoke: op, done: None });
        } else if let Some(i) = open.remove(&op.op) {
            out[i].done = Some(op);
        }
    }
    out
}

/// Appends operations as they happen; shared by every client task and the nemesis.
#[derive(Clone)]
pub struct Recorder {
    inner: Arc<Mutex<Inner>>,
    /// The run's time zero, in µs since the Unix epoch: a client process started by the run
    /// stamps its ops against the same zero, so their times compare with the run's own.
    start_unix_us: u64,
}

enum Sink {
    Memory,
    File(std::io::BufWriter<std::fs::File>),
    /// A client process: each op goes to stdout at once, for the run to adopt.
    Stdout,
}

struct Inner {
    ops: Vec<Op>,
    next_op: u64,
    sink: Sink,
}

/// Microseconds since the Unix epoch (the one clock the run and its client processes share).
pub fn unix_us() -> u64 {
    let since = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    u64::try_from(since.as_micros()).unwrap_or(u64::MAX)
}

impl Recorder {
    /// Records into memory and, if given, streams JSON lines to `path`.
    pub fn new(path: Option<&Path>) -> anyhow::Result<Recorder> {
        let sink = match path {
            Some(p) => Sink::File(std::io::BufWriter::new(std::fs::File::create(p)?)),
            None => Sink::Memory,
        };
        Ok(Recorder::with(sink, unix_us()))
    }

    /// The recorder of a client process: ops go to stdout, timed from the run's zero.
    pub fn stdout(start_unix_us: u64) -> Recorder {
        Recorder::with(Sink::Stdout, start_unix_us)
    }

    fn with(sink: Sink, start_unix_us: u64) -> Recorder {
        Recorder {
            inner: Arc::new(Mutex::new(Inner { ops: Vec::new(), next_op: 1, sink })),
            start_unix_us,
        }
    }

    pub fn start_unix_us(&self) -> u64 {
        self.start_unix_us
    }

    pub fn elapsed_us(&self) -> u64 {
        unix_us().saturating_sub(self.start_unix_us)
    }

    fn push(&self, mut op: Op, assign: bool) -> u64 {
        op.time_us = self.elapsed_us();
        self.record(op, assign)
    }

    fn record(&self, mut op: Op, assign: bool) -> u64 {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if assign {
            op.op = inner.next_op;
            inner.next_op += 1;
        }
        let id = op.op;
        // A failed history write must not go unnoticed: it would make the run vacuous.
        let line = || serde_json::to_string(&op).expect("invariant: ops serialise");
        match &mut inner.sink {
            Sink::Memory => {}
            Sink::File(file) => writeln!(file, "{}", line()).expect("writing history.jsonl"),
            Sink::Stdout => {
                let mut out = std::io::stdout().lock();
                writeln!(out, "{}", line()).expect("writing ops to the run");
                out.flush().expect("writing ops to the run");
            }
        }
        inner.ops.push(op);
        id
    }

    /// Records an op reported by a client process, keeping its time. `ids` maps that
    /// process's op ids to this history's; returns the op's type, or None for a completion
    /// whose invocation was never seen (then nothing is recorded).
    pub fn adopt(
        &self,
        ids: &mut std::collections::BTreeMap<u64, u64>,
        mut op: Op,
    ) -> Option<Type> {
        let kind = op.kind;
        if kind == Type::Invoke {
            let theirs = op.op;
            let ours = self.record(op, true);
            ids.insert(theirs, ours);
        } else {
            op.op = ids.remove(&op.op)?;
            self.record(op, false);
        }
        Some(kind)
    }

    /// Records an invocation by `process`; returns its op id for the completion.
    pub fn invoke(&self, process: u64, mut op: Op) -> Invoked {
        op.process = process;
        op.kind = Type::Invoke;
        let template = op.clone();
        let id = self.push(op, true);
        Invoked { op: id, template }
    }

    /// Records the completion of `invoked` with `kind` and the result fields of `result`.
    pub fn complete(&self, invoked: &Invoked, kind: Type, result: Outcome) -> Op {
        let mut op = invoked.template.clone();
        op.op = invoked.op;
        op.kind = kind;
        op.value = result.value;
        op.log_index = result.log_index;
        op.applied_at_ms = result.applied_at_ms;
        op.expires_at_ms = result.expires_at_ms;
        op.error = result.error;
        op.workers = result.workers;
        self.push(op.clone(), false);
        op
    }

    pub fn snapshot(&self) -> Vec<Op> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).ops.clone()
    }

    pub fn flush(&self) -> anyhow::Result<()> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if let Sink::File(file) = &mut inner.sink {
            file.flush()?;
        }
        Ok(())
    }
}

/// An invocation waiting for its completion.
pub struct Invoked {
    pub op: u64,
    template: Op,
}

/// The result fields of a completion.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    pub value: Option<u64>,
    pub log_index: Option<u64>,
    pub applied_at_ms: Option<u64>,
    pub expires_at_ms: Option<u64>,
    pub error: Option<String>,
    pub workers: Vec<String>,
}

/// Reads a `history.jsonl` back.
pub fn load(path: &Path) -> anyhow::Result<Vec<Op>> {
    let text = std::fs::read_to_string(path)?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).map_err(anyhow::Error::from))
        .collect()
}

/// Builds histories by hand, for checker tests.
#[cfg(test)]
pub mod build {
    use super::*;

    pub struct H {
        pub ops: Vec<Op>,
        next: u64,
    }

    impl Default for H {
        fn default() -> H {
            H::new()
        }
    }

    impl H {
        pub fn new() -> H {
            H { ops: Vec::new(), next: 1 }
        }
        /// Invokes `op` from `process` at `t` (µs); returns the op id.
        pub fn invoke(&mut self, t: u64, process: u64, mut op: Op) -> u64 {
            op.op = self.next;
            self.next += 1;
            op.process = process;
            op.time_us = t;
            op.kind = Type::Invoke;
            self.ops.push(op);
            self.next - 1
        }
        /// Completes op `id` at `t`; `f` fills in the result.
        pub fn done(&mut self, t: u64, id: u64, kind: Type, f: impl FnOnce(&mut Op)) {
            let mut op = self.ops.iter().find(|o| o.op == id).expect("invoked").clone();
            op.kind = kind;
            op.time_us = t;
            f(&mut op);
            self.ops.push(op);
        }
    }
}
