//! Checkers over a recorded history (and the state read back after healing). Each returns a
//! `CheckResult`; a run is valid only if every result is. `Unknown` (a search that gave up) is
//! reported as such and does not count as a pass.
//!
//! - `wgl`: linearizability search, used per register key and per quota tenant.
//! - `register`, `quota`, `lease`: per-workload models and log-index ("witness") checks.
//! - `worker`: watch streams gap-free and agreeing, their replay (nothing double-placed, lost
//!   work moved or released), final reads and acknowledged writes against them.
//! - `writes_ordered`: acknowledged writes have distinct log indexes that respect real time.
//! - `log_time`: log time never leads real time by more than a leader's stamping bound.
//! - `final_state`: nothing acknowledged lost, no overcommit, replicas converged.

pub mod capacity;
pub mod lease;
pub mod quota;
pub mod register;
pub mod tenants;
pub mod wgl;
pub mod worker;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::history::{Op, Pair, Type};

/// Most violations listed per checker (the count is always complete).
const DETAILS_MAX: usize = 20;

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Valid {
    True,
    False,
    Unknown,
}

#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct CheckResult {
    pub name: String,
    pub valid: Valid,
    /// How much was checked (ops or objects), so an empty check is visible as such.
    pub checked: u64,
    pub violations: u64,
    pub details: Vec<String>,
}

impl CheckResult {
    pub fn new(name: &str) -> CheckResult {
        CheckResult {
            name: name.to_owned(),
            valid: Valid::True,
            checked: 0,
            violations: 0,
            details: Vec::new(),
        }
    }
    pub fn violation(&mut self, detail: String) {
        self.valid = Valid::False;
        self.violations += 1;
        if self.details.len() < DETAILS_MAX {
            self.details.push(detail);
        }
    }
    pub fn unknown(&mut self, detail: String) {
        if self.valid == Valid::True {
            self.valid = Valid::Unknown;
        }
        if self.details.len() < DETAILS_MAX {
            self.details.push(detail);
        }
    }
}

/// What the harness read back after healing every fault.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct FinalState {
    /// Per quota tenant: live placement id → its log index.
    pub placements: BTreeMap<String, BTreeMap<String, u64>>,
    /// Every tenant that exists after healing.
    #[serde(default)]
    pub tenants: std::collections::BTreeSet<String>,
    /// The capacity workload's live placements by id.
    #[serde(default)]
    pub capacity: BTreeMap<String, capacity::Placed>,
    /// Per quota tenant: `usage.instances` from GetQuota.
    pub usage_instances: BTreeMap<String, u64>,
    /// Per worker: [capacity cpu, capacity mem, allocated cpu, allocated mem].
    pub workers: BTreeMap<String, [u64; 4]>,
    /// Sum over every tenant's placements of instances × resources: [cpu, mem].
    pub placed: [u64; 2],
    /// Per replica: (applied command index, state hash) once converged.
    pub replicas: BTreeMap<u64, (u64, String)>,
    /// The worker workload's watch streams and final reads.
    #[serde(default)]
    pub worker: Option<worker::Observed>,
    /// Every final read succeeded (the cluster was live after healing).
    pub complete: bool,
    /// Why the final phase fell short, if it did.
    pub problems: Vec<String>,
}

/// Pairs of one workload, excluding the nemesis.
pub fn of_workload<'a>(pairs: &[Pair<'a>], workload: &str) -> Vec<Pair<'a>> {
    pairs.iter().filter(|p| p.invoke.workload == workload).copied().collect()
}

fn describe(op: &Op) -> String {
    let mut s = format!("op {} p{} {} {} {}", op.op, op.process, op.workload, op.f, op.key);
    if let Some(id) = &op.id {
        s.push_str(&format!(" id={id}"));
    }
    if let Some(a) = op.arg {
        s.push_str(&format!(" arg={a}"));
    }
    s
}

/// What a clock reading's round trip and the replicas' own clocks (within NTP of the host's,
/// which every process here shares) may add to `berth::clock::CLOCK_AHEAD_MAX_MS`.
const CLOCK_READING_ERROR_MS: u64 = 250;

/// Log time never leads real time by more than the bound a leader stamps within, whatever one
/// replica's clock says (the `clock` nemesis skews replicas by up to ±60 s): an acknowledged
/// write applied at log time `t` completed at real time `c` with
/// `t <= c + CLOCK_AHEAD_MAX_MS + error`. A leader stamping a clock far ahead would expire
/// leases and reservations early. `start_unix_us` is the run's time zero.
pub fn log_time(pairs: &[Pair<'_>], start_unix_us: u64) -> CheckResult {
    let mut r = CheckResult::new("log-time (never far ahead of real time)");
    let bound = berth::clock::CLOCK_AHEAD_MAX_MS + CLOCK_READING_ERROR_MS;
    for p in pairs.iter().filter(|p| p.is_ok()) {
        let Some(applied) = p.done_field(|d| d.applied_at_ms) else { continue };
        r.checked += 1;
        let real_ms = (start_unix_us + p.end_us()) / 1_000;
        if applied > real_ms + bound {
            r.violation(format!(
                "{} applied at log time {applied} ms, {} ms after the real time {real_ms} ms of \
                 its answer (bound {bound} ms)",
                describe(p.invoke),
                applied - real_ms
            ));
        }
    }
    r
}

/// Acknowledged writes carry distinct log indexes, and a write that completed before another
/// was invoked has the smaller index (the log order respects real time).
pub fn writes_ordered(pairs: &[Pair<'_>]) -> CheckResult {
    let mut r = CheckResult::new("writes-ordered");
    let acked: Vec<(&Pair<'_>, u64)> = pairs
        .iter()
        .filter(|p| p.is_ok())
        .filter_map(|p| p.done_field(|d| d.log_index).map(|i| (p, i)))
        .collect();
    r.checked = u64::try_from(acked.len()).unwrap_or(u64::MAX);
    let mut seen: BTreeMap<u64, &Op> = BTreeMap::new();
    for (p, index) in &acked {
        if let Some(other) = seen.insert(*index, p.invoke) {
            r.violation(format!(
                "log index {index} acknowledged to two writes: {} and {}",
                describe(other),
                describe(p.invoke)
            ));
        }
    }
    // Sweep invocations in time order; `floor` is the highest index of any write that
    // completed before the current invocation, and who it was.
    let mut by_end: Vec<(u64, u64, &Op)> =
        acked.iter().map(|(p, i)| (p.end_us(), *i, p.invoke)).collect();
    by_end.sort_by_key(|e| (e.0, e.1));
    let mut by_start: Vec<(u64, u64, &Op)> =
        acked.iter().map(|(p, i)| (p.invoke.time_us, *i, p.invoke)).collect();
    by_start.sort_by_key(|e| (e.0, e.1));
    let mut floor: Option<(u64, &Op)> = None;
    let mut k = 0;
    for (start, index, op) in by_start {
        while k < by_end.len() && by_end[k].0 < start {
            if floor.is_none_or(|(f, _)| by_end[k].1 > f) {
                floor = Some((by_end[k].1, by_end[k].2));
            }
            k += 1;
        }
        if let Some((f, before)) = floor {
            if f >= index {
                r.violation(format!(
                    "{} got log index {index} although {} (index {f}) completed before it began",
                    describe(op),
                    describe(before)
                ));
            }
        }
    }
    r
}

/// The state after healing: replicas converged, every final read answered, no worker
/// allocated beyond its capacity, and allocation equal to what the placements hold.
pub fn final_state(state: &FinalState, replicas_expected: usize) -> CheckResult {
    let mut r = CheckResult::new("final-state");
    r.checked = u64::try_from(state.workers.len() + state.replicas.len()).unwrap_or(u64::MAX);
    if !state.complete {
        r.violation(format!("the cluster did not answer every final read: {:?}", state.problems));
    }
    if state.replicas.len() != replicas_expected {
        r.violation(format!(
            "{} of {replicas_expected} replicas reported converged state: {:?}",
            state.replicas.len(),
            state.replicas
        ));
    }
    let distinct: std::collections::BTreeSet<_> = state.replicas.values().collect();
    if distinct.len() > 1 {
        r.violation(format!("replicas diverged after healing: {:?}", state.replicas));
    }
    let (mut cpu, mut mem) = (0u64, 0u64);
    for (id, [cap_cpu, cap_mem, cpu_alloc, mem_alloc]) in &state.workers {
        if cpu_alloc > cap_cpu || mem_alloc > cap_mem {
            r.violation(format!(
                "worker {id} overcommitted: allocated {cpu_alloc}m/{mem_alloc}MiB of {cap_cpu}m/{cap_mem}MiB"
            ));
        }
        cpu = cpu.saturating_add(*cpu_alloc);
        mem = mem.saturating_add(*mem_alloc);
    }
    if !state.workers.is_empty() && [cpu, mem] != state.placed {
        r.violation(format!(
            "workers' allocation {cpu}m/{mem}MiB differs from the placements' {}m/{}MiB (leak)",
            state.placed[0], state.placed[1]
        ));
    }
    r
}

/// Fraction of client operations that succeeded, split by whether a fault was active.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct Availability {
    pub quiet_ok: u64,
    pub quiet_total: u64,
    pub faulty_ok: u64,
    pub faulty_total: u64,
}

/// Nemesis intervals (µs) from the history's start/stop pairs; an unmatched start runs to `end`.
pub fn nemesis_intervals(history: &[Op], end_us: u64) -> Vec<(u64, u64, String)> {
    let mut open: BTreeMap<String, u64> = BTreeMap::new();
    let mut out = Vec::new();
    for op in history.iter().filter(|o| o.workload == "nemesis" && o.kind != Type::Invoke) {
        match op.f.as_str() {
            "start" => {
                open.insert(op.key.clone(), op.time_us);
            }
            "stop" => {
                // `stop` heals everything that is open.
                for (k, s) in std::mem::take(&mut open) {
                    out.push((s, op.time_us, k));
                }
            }
            _ => {}
        }
    }
    for (k, s) in open {
        out.push((s, end_us, k));
    }
    out.sort();
    out
}

pub fn availability(history: &[Op], end_us: u64) -> Availability {
    let intervals = nemesis_intervals(history, end_us);
    let mut a = Availability::default();
    for p in crate::history::pairs(history) {
        if p.invoke.workload == "nemesis" || p.invoke.workload == "final" {
            continue;
        }
        let t = p.invoke.time_us;
        let faulty = intervals.iter().any(|(s, e, _)| *s <= t && t < *e);
        let ok = u64::from(p.is_ok());
        if faulty {
            a.faulty_ok += ok;
            a.faulty_total += 1;
        } else {
            a.quiet_ok += ok;
            a.quiet_total += 1;
        }
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::build::H;
    use crate::history::{pairs, Op};

    /// Two sequential writes whose log indexes run backwards are caught.
    #[test]
    fn writes_ordered_catches_index_inversion() {
        let mut h = H::new();
        let a = h.invoke(0, 1, Op::invoke("register", "write", "k").with_arg(1));
        h.done(10, a, Type::Ok, |o| o.log_index = Some(50));
        let b = h.invoke(20, 2, Op::invoke("register", "write", "k").with_arg(2));
        h.done(30, b, Type::Ok, |o| o.log_index = Some(40));
        let r = writes_ordered(&pairs(&h.ops));
        assert_eq!(r.valid, Valid::False, "{r:?}");
        // Concurrent writes may land in either order.
        let mut h = H::new();
        let a = h.invoke(0, 1, Op::invoke("register", "write", "k").with_arg(1));
        let b = h.invoke(5, 2, Op::invoke("register", "write", "k").with_arg(2));
        h.done(10, a, Type::Ok, |o| o.log_index = Some(50));
        h.done(30, b, Type::Ok, |o| o.log_index = Some(40));
        assert_eq!(writes_ordered(&pairs(&h.ops)).valid, Valid::True);
    }

    /// A write applied at a log time far past the real time of its answer is caught; one
    /// within a leader's stamping bound is not.
    #[test]
    fn log_time_catches_a_leap_ahead_of_real_time() {
        let start_us = 1_800_000_000_000_000;
        let real_ms = 1_800_000_000_010;
        let write_at = |applied_ms: u64| {
            let mut h = H::new();
            let a = h.invoke(0, 1, Op::invoke("register", "write", "k").with_arg(1));
            h.done(10_000, a, Type::Ok, |o| {
                o.log_index = Some(5);
                o.applied_at_ms = Some(applied_ms);
            });
            log_time(&pairs(&h.ops), start_us)
        };
        let r = write_at(real_ms + 20_000);
        assert_eq!(r.valid, Valid::False, "{r:?}");
        assert!(r.details[0].contains("20000 ms after"), "{r:?}");
        let r = write_at(real_ms + berth::clock::CLOCK_AHEAD_MAX_MS);
        assert_eq!((r.valid, r.checked), (Valid::True, 1), "{r:?}");
    }

    /// An overcommitted worker and a capacity leak are caught in the final state.
    #[test]
    fn final_state_catches_overcommit_and_divergence() {
        let mut s = FinalState { complete: true, placed: [1_000, 10], ..FinalState::default() };
        s.workers.insert("w0".into(), [1_000, 1_000, 1_000, 10]);
        s.replicas.insert(1, (5, "aa".into()));
        s.replicas.insert(2, (5, "aa".into()));
        assert_eq!(final_state(&s, 2).valid, Valid::True);
        s.workers.insert("w1".into(), [1_000, 1_000, 1_001, 0]);
        let r = final_state(&s, 2);
        assert_eq!(r.valid, Valid::False);
        assert!(r.details.iter().any(|d| d.contains("overcommitted")), "{r:?}");
        s.workers.remove("w1");
        s.replicas.insert(2, (5, "bb".into()));
        assert_eq!(final_state(&s, 2).valid, Valid::False);
    }
}
