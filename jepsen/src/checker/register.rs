//! The `register` workload: one integer per key (a tenant's instance limit, written with
//! SetQuota and read with GetQuota). Every written value is unique, so a read names the write
//! it saw. Two checks: the WGL search per key, and the cheap witness check with log indexes —
//! a read must not return a value that an acknowledged write had already overwritten before
//! the read began (stale read), nor a value whose write had not yet begun.

use std::collections::BTreeMap;

use super::wgl::{self, Model, Verdict};
use super::CheckResult;
use crate::history::{Pair, Type};

/// The value every key holds before the first write.
pub const INITIAL: u64 = 0;

pub struct Register;

impl Model for Register {
    type State = u64;
    fn init(&self) -> u64 {
        INITIAL
    }
    fn step(&self, state: &u64, op: &Pair<'_>) -> Vec<u64> {
        match (op.invoke.f.as_str(), op.kind()) {
            ("write", Type::Ok) => op.invoke.arg.into_iter().collect(),
            ("write", _) => op.invoke.arg.into_iter().chain([*state]).collect(),
            ("read", Type::Ok) => {
                if op.done_field(|d| d.value) == Some(*state) {
                    vec![*state]
                } else {
                    Vec::new()
                }
            }
            _ => vec![*state],
        }
    }
}

/// Operations the models consider: acknowledged or unknown writes, acknowledged reads.
fn relevant(p: &Pair<'_>) -> bool {
    match p.invoke.f.as_str() {
        "write" => p.kind() != Type::Fail,
        "read" => p.kind() == Type::Ok,
        _ => false,
    }
}

fn by_key<'a>(pairs: &[Pair<'a>]) -> BTreeMap<String, Vec<Pair<'a>>> {
    let mut keys: BTreeMap<String, Vec<Pair<'a>>> = BTreeMap::new();
    for p in pairs.iter().filter(|p| p.invoke.workload == "register" && relevant(p)) {
        keys.entry(p.invoke.key.clone()).or_default().push(*p);
    }
    keys
}

pub fn linearizable(pairs: &[Pair<'_>]) -> CheckResult {
    let mut r = CheckResult::new("register-linearizable (WGL per key)");
    for (key, ops) in by_key(pairs) {
        r.checked += u64::try_from(ops.len()).unwrap_or(u64::MAX);
        match wgl::check(&Register, &ops) {
            Verdict::Linearizable => {}
            Verdict::NotLinearizable { stuck_op, linearized } => r.violation(format!(
                "key {key}: not linearizable; op {stuck_op} cannot be explained after {linearized} ops"
            )),
            Verdict::Unknown(why) => r.unknown(format!("key {key}: {why}")),
        }
    }
    r
}

/// Log-index witness check for reads (see module doc).
pub fn witness(pairs: &[Pair<'_>]) -> CheckResult {
    let mut r = CheckResult::new("register-witness (stale/future reads by log index)");
    for (key, ops) in by_key(pairs) {
        // value → (log index if acknowledged, invoke time)
        let mut writes: BTreeMap<u64, (Option<u64>, u64)> = BTreeMap::new();
        writes.insert(INITIAL, (Some(0), 0));
        let mut acked: Vec<(u64, u64, u64)> = Vec::new(); // (end, index, value)
        for p in ops.iter().filter(|p| p.invoke.f == "write") {
            let Some(v) = p.invoke.arg else { continue };
            let index = if p.is_ok() { p.done_field(|d| d.log_index) } else { None };
            writes.insert(v, (index, p.invoke.time_us));
            if let Some(i) = index {
                acked.push((p.end_us(), i, v));
            }
        }
        for p in ops.iter().filter(|p| p.invoke.f == "read") {
            r.checked += 1;
            let Some(v) = p.done_field(|d| d.value) else { continue };
            let Some(&(index, invoked)) = writes.get(&v) else {
                r.violation(format!(
                    "key {key}: op {} read {v}, which was never written",
                    p.invoke.op
                ));
                continue;
            };
            if invoked > p.end_us() {
                r.violation(format!(
                    "key {key}: op {} read {v} before its write was invoked",
                    p.invoke.op
                ));
            }
            // The newest acknowledged write that completed before this read began.
            let newest = acked
                .iter()
                .filter(|(end, _, _)| *end < p.invoke.time_us)
                .max_by_key(|(_, i, _)| *i);
            if let (Some(&(_, newest_index, newest_value)), Some(read_index)) = (newest, index) {
                if read_index < newest_index {
                    r.violation(format!(
                        "key {key}: stale read: op {} read {v} (log index {read_index}) after the write of {newest_value} (index {newest_index}) had completed",
                        p.invoke.op
                    ));
                }
            }
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::Valid;
    use crate::history::build::H;
    use crate::history::{pairs, Op};

    fn write(h: &mut H, t: u64, p: u64, v: u64, idx: u64, d: u64) {
        let id = h.invoke(t, p, Op::invoke("register", "write", "k").with_arg(v));
        h.done(t + d, id, Type::Ok, |o| o.log_index = Some(idx));
    }
    fn read(h: &mut H, t: u64, p: u64, v: u64, d: u64) {
        let id = h.invoke(t, p, Op::invoke("register", "read", "k"));
        h.done(t + d, id, Type::Ok, |o| o.value = Some(v));
    }

    /// A read returning a value overwritten before the read began is caught by both checks.
    #[test]
    fn stale_read_is_caught() {
        let mut h = H::new();
        write(&mut h, 0, 1, 1, 10, 5);
        write(&mut h, 10, 1, 2, 11, 5);
        read(&mut h, 20, 2, 1, 5);
        let p = pairs(&h.ops);
        assert_eq!(linearizable(&p).valid, Valid::False);
        assert_eq!(witness(&p).valid, Valid::False);
    }

    /// A read concurrent with a write may see either value; an unknown write may or may not
    /// have happened — both are accepted.
    #[test]
    fn concurrent_and_unknown_are_accepted() {
        let mut h = H::new();
        write(&mut h, 0, 1, 1, 10, 5);
        let w = h.invoke(10, 1, Op::invoke("register", "write", "k").with_arg(2));
        read(&mut h, 12, 2, 1, 2);
        read(&mut h, 15, 3, 2, 2);
        h.done(30, w, Type::Ok, |o| o.log_index = Some(11));
        let u = h.invoke(40, 4, Op::invoke("register", "write", "k").with_arg(3));
        h.done(45, u, Type::Info, |_| {});
        read(&mut h, 50, 2, 2, 2);
        read(&mut h, 60, 2, 3, 2);
        let p = pairs(&h.ops);
        assert_eq!(linearizable(&p).valid, Valid::True, "{:?}", linearizable(&p));
        assert_eq!(witness(&p).valid, Valid::True, "{:?}", witness(&p));
        // But once 3 was seen, reading 2 again is not linearizable.
        read(&mut h, 70, 2, 2, 2);
        assert_eq!(linearizable(&pairs(&h.ops)).valid, Valid::False);
    }

    /// A lost acknowledged write (a later read sees the old value) is caught.
    #[test]
    fn lost_write_is_caught() {
        let mut h = H::new();
        write(&mut h, 0, 1, 7, 10, 5);
        read(&mut h, 100, 2, INITIAL, 5);
        assert_eq!(linearizable(&pairs(&h.ops)).valid, Valid::False);
        assert_eq!(witness(&pairs(&h.ops)).valid, Valid::False);
    }
}
