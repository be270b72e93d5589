//! The `capacity` workload: clients fill a small pool of workers exactly (instances of 250 or
//! 500 millicores on 1000-millicore workers) with plain placements, hard anti-affinity
//! placements (label `app=aa`, at most one instance per worker) and placements in a group with
//! `max_instances`, and release them.
//!
//! Checks: replaying acknowledged places and releases in log-index order (plus unknown places
//! found after healing, at their recorded index), no worker is ever allocated beyond its
//! capacity, no worker ever holds two anti-affinity instances, and the group never exceeds
//! its maximum; the same invariants hold in the state read back after healing, where nothing
//! acknowledged is lost and nothing unplaced appears.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::{CheckResult, FinalState};
use crate::history::{Pair, Type};

/// The pool's shape, shared by the workload and the checker.
pub const WORKER_CPU: u64 = 1_000;
pub const WORKER_MEM: u64 = 1_000;
pub const GROUP_MAX: u64 = 3;
pub const ANTI_AFFINITY: &str = "anti-affinity";
pub const GROUP: &str = "group";

/// One placement as the checker sees it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Placed {
    pub log_index: u64,
    pub workers: Vec<String>,
    pub cpu: u64,
    pub mem: u64,
    pub detail: String,
}

#[derive(Default)]
struct Pool {
    cpu: BTreeMap<String, u64>,
    mem: BTreeMap<String, u64>,
    anti: BTreeMap<String, u64>,
    group: u64,
}

impl Pool {
    fn apply(&mut self, p: &Placed, sign_add: bool) {
        for w in &p.workers {
            for (map, amount) in [(&mut self.cpu, p.cpu), (&mut self.mem, p.mem)] {
                let e = map.entry(w.clone()).or_default();
                *e = if sign_add { e.saturating_add(amount) } else { e.saturating_sub(amount) };
            }
            if p.detail == ANTI_AFFINITY {
                let e = self.anti.entry(w.clone()).or_default();
                *e = if sign_add { *e + 1 } else { e.saturating_sub(1) };
            }
        }
        if p.detail == GROUP {
            let n = u64::try_from(p.workers.len()).unwrap_or(u64::MAX);
            self.group =
                if sign_add { self.group.saturating_add(n) } else { self.group.saturating_sub(n) };
        }
    }
    fn violations(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (w, cpu) in &self.cpu {
            let mem = self.mem.get(w).copied().unwrap_or(0);
            if *cpu > WORKER_CPU || mem > WORKER_MEM {
                out.push(format!(
                    "worker {w} overcommitted: {cpu}m/{mem}MiB of {WORKER_CPU}m/{WORKER_MEM}MiB"
                ));
            }
        }
        for (w, n) in &self.anti {
            if *n > 1 {
                out.push(format!("worker {w} holds {n} anti-affinity instances"));
            }
        }
        if self.group > GROUP_MAX {
            out.push(format!("group holds {} instances, max {GROUP_MAX}", self.group));
        }
        out
    }
}

fn placed(p: &Pair<'_>) -> Option<Placed> {
    let done = p.done?;
    Some(Placed {
        log_index: done.log_index?,
        workers: done.workers.clone(),
        cpu: p.invoke.arg?,
        mem: crate::workload::CAPACITY_MEM,
        detail: p.invoke.detail.clone().unwrap_or_default(),
    })
}

pub fn check(pairs: &[Pair<'_>], last: &FinalState) -> CheckResult {
    let mut r = CheckResult::new("capacity (no overcommit, anti-affinity, group max)");
    let ops: Vec<&Pair<'_>> = pairs.iter().filter(|p| p.invoke.workload == "capacity").collect();
    let uncertain: BTreeSet<String> = ops
        .iter()
        .filter(|p| p.invoke.f == "release" && p.kind() == Type::Info)
        .filter_map(|p| p.invoke.id.clone())
        .collect();
    let mut by_id: BTreeMap<String, Placed> = BTreeMap::new();
    let mut events: Vec<(u64, bool, String)> = Vec::new();
    let mut acked: BTreeSet<String> = BTreeSet::new();
    let mut attempted: BTreeSet<String> = BTreeSet::new();
    let mut released: BTreeSet<String> = BTreeSet::new();
    for p in &ops {
        let id = p.invoke.id.clone().unwrap_or_default();
        match (p.invoke.f.as_str(), p.kind()) {
            ("place", Type::Ok) => {
                attempted.insert(id.clone());
                acked.insert(id.clone());
                if let Some(pl) = placed(p) {
                    events.push((pl.log_index, true, id.clone()));
                    by_id.insert(id, pl);
                }
            }
            ("place", Type::Info) => {
                attempted.insert(id.clone());
                if let Some(pl) = last.capacity.get(&id) {
                    events.push((pl.log_index, true, id.clone()));
                    by_id.insert(id, pl.clone());
                }
            }
            ("release", Type::Ok) => {
                released.insert(id.clone());
                if let Some(i) = p.done_field(|d| d.log_index) {
                    events.push((i, false, id));
                }
            }
            ("release", Type::Info) => {
                released.insert(id);
            }
            _ => {}
        }
    }
    events.sort();
    r.checked = u64::try_from(events.len()).unwrap_or(u64::MAX);
    let mut pool = Pool::default();
    let mut live: BTreeSet<String> = BTreeSet::new();
    for (index, is_place, id) in events {
        let Some(pl) = by_id.get(&id) else { continue };
        if is_place {
            if uncertain.contains(&id) {
                continue;
            }
            pool.apply(pl, true);
            live.insert(id.clone());
            for v in pool.violations() {
                r.violation(format!("after placing {id} at log index {index}: {v}"));
            }
        } else if live.remove(&id) {
            pool.apply(pl, false);
        }
    }
    // The state after healing.
    let mut end = Pool::default();
    for (id, pl) in &last.capacity {
        end.apply(pl, true);
        if !attempted.contains(id) {
            r.violation(format!("placement {id} exists but was never placed"));
        }
    }
    for v in end.violations() {
        r.violation(format!("after healing: {v}"));
    }
    for id in acked.difference(&released) {
        if !last.capacity.contains_key(id) {
            r.violation(format!("acknowledged placement {id} was lost"));
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::build::H;
    use crate::history::{pairs, Op};

    fn place(h: &mut H, t: u64, id: &str, cpu: u64, detail: &str, workers: &[&str], idx: u64) {
        let op = h.invoke(
            t,
            1,
            Op::invoke("capacity", "place", "cap-0").with_id(id).with_arg(cpu).with_detail(detail),
        );
        h.done(t + 5, op, Type::Ok, |o| {
            o.log_index = Some(idx);
            o.workers = workers.iter().map(|w| (*w).to_owned()).collect();
        });
    }

    fn last_of(h: &H) -> FinalState {
        let mut last = FinalState::default();
        for p in pairs(&h.ops) {
            if let Some(pl) = placed(&p) {
                last.capacity.insert(p.invoke.id.clone().unwrap_or_default(), pl);
            }
        }
        last
    }

    /// Filling a worker exactly is fine; one more millicore on it is an overcommit.
    #[test]
    fn overcommit_is_caught() {
        let mut h = H::new();
        place(&mut h, 0, "a", 500, "plain", &["c0"], 10);
        place(&mut h, 10, "b", 500, "plain", &["c0"], 11);
        assert_eq!(check(&pairs(&h.ops), &last_of(&h)).valid, super::super::Valid::True);
        place(&mut h, 20, "c", 250, "plain", &["c0"], 12);
        let r = check(&pairs(&h.ops), &last_of(&h));
        assert_eq!(r.valid, super::super::Valid::False);
        assert!(r.details[0].contains("overcommitted"), "{r:?}");
    }

    /// Two anti-affinity instances on one worker, or a group past its max, are caught.
    #[test]
    fn anti_affinity_and_group_violations_are_caught() {
        let mut h = H::new();
        place(&mut h, 0, "a", 250, ANTI_AFFINITY, &["c0"], 10);
        place(&mut h, 10, "b", 250, ANTI_AFFINITY, &["c0"], 11);
        assert_eq!(check(&pairs(&h.ops), &last_of(&h)).valid, super::super::Valid::False);
        let mut h = H::new();
        place(&mut h, 0, "a", 250, GROUP, &["c0", "c1"], 10);
        place(&mut h, 10, "b", 250, GROUP, &["c2", "c3"], 11);
        assert_eq!(check(&pairs(&h.ops), &last_of(&h)).valid, super::super::Valid::False);
    }

    /// An acknowledged placement missing after healing is lost.
    #[test]
    fn lost_placement_is_caught() {
        let mut h = H::new();
        place(&mut h, 0, "a", 250, "plain", &["c0"], 10);
        let r = check(&pairs(&h.ops), &FinalState::default());
        assert_eq!(r.valid, super::super::Valid::False);
        assert!(r.details.iter().any(|d| d.contains("lost")), "{r:?}");
    }
}
