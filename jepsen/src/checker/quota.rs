//! The `quota` workload: many clients Place (one instance each) and Release against a tenant
//! whose `instances` limit is tight, and read the usage with GetQuota. The model per tenant is
//! the set of live placement ids: a Place is acknowledged only if the set is below the limit,
//! rejected with QUOTA_EXCEEDED only if it is at the limit; a read returns the set's size.
//!
//! Checks: WGL per tenant; a replay of acknowledged writes in log-index order (the quota is
//! never exceeded at any index); and against the state after healing, nothing acknowledged is
//! lost, nothing appears that was never placed, and usage equals the placements.

use std::collections::{BTreeMap, BTreeSet};

use super::wgl::{self, Model, Verdict};
use super::{CheckResult, FinalState};
use crate::history::{Pair, Type};

pub struct Quota {
    pub limit: u64,
}

fn reason(p: &Pair<'_>) -> Option<String> {
    p.done_field(|d| d.error.clone())
}

impl Model for Quota {
    type State = BTreeSet<String>;
    fn init(&self) -> Self::State {
        BTreeSet::new()
    }
    fn step(&self, state: &Self::State, op: &Pair<'_>) -> Vec<Self::State> {
        let id = op.invoke.id.clone().unwrap_or_default();
        let below = u64::try_from(state.len()).unwrap_or(u64::MAX) < self.limit;
        let with = || {
            let mut s = state.clone();
            s.insert(id.clone());
            s
        };
        let without = || {
            let mut s = state.clone();
            s.remove(&id);
            s
        };
        match (op.invoke.f.as_str(), op.kind()) {
            ("place", Type::Ok) if below && !state.contains(&id) => vec![with()],
            ("place", Type::Fail) if !below => vec![state.clone()],
            ("place", Type::Info) if below && !state.contains(&id) => vec![with(), state.clone()],
            ("place", Type::Info) => vec![state.clone()],
            ("release", Type::Ok) if state.contains(&id) => vec![without()],
            ("release", Type::Fail) if !state.contains(&id) => vec![state.clone()],
            ("release", Type::Info) => vec![without(), state.clone()],
            ("read", Type::Ok) => {
                let n = u64::try_from(state.len()).unwrap_or(u64::MAX);
                if op.done_field(|d| d.value) == Some(n) {
                    vec![state.clone()]
                } else {
                    Vec::new()
                }
            }
            _ => Vec::new(),
        }
    }
}

/// Ops the model takes: every acknowledged or unknown op, and the definite rejections whose
/// reason the model explains (QUOTA_EXCEEDED, PLACEMENT_NOT_FOUND). Reads that failed are
/// dropped: they did nothing.
fn relevant(p: &Pair<'_>) -> bool {
    match (p.invoke.f.as_str(), p.kind()) {
        (_, Type::Ok) => true,
        ("place", Type::Fail) => reason(p).as_deref() == Some("QUOTA_EXCEEDED"),
        ("release", Type::Fail) => reason(p).as_deref() == Some("PLACEMENT_NOT_FOUND"),
        ("place" | "release", Type::Info) => true,
        _ => false,
    }
}

fn by_tenant<'a>(pairs: &[Pair<'a>]) -> BTreeMap<String, Vec<Pair<'a>>> {
    let mut tenants: BTreeMap<String, Vec<Pair<'a>>> = BTreeMap::new();
    for p in pairs.iter().filter(|p| p.invoke.workload == "quota" && relevant(p)) {
        tenants.entry(p.invoke.key.clone()).or_default().push(*p);
    }
    tenants
}

pub fn linearizable(pairs: &[Pair<'_>], limit: u64) -> CheckResult {
    let mut r = CheckResult::new("quota-linearizable (WGL per tenant)");
    for (tenant, ops) in by_tenant(pairs) {
        r.checked += u64::try_from(ops.len()).unwrap_or(u64::MAX);
        match wgl::check(&Quota { limit }, &ops) {
            Verdict::Linearizable => {}
            Verdict::NotLinearizable { stuck_op, linearized } => r.violation(format!(
                "tenant {tenant}: not linearizable; op {stuck_op} cannot be explained after {linearized} ops"
            )),
            Verdict::Unknown(why) => r.unknown(format!("tenant {tenant}: {why}")),
        }
    }
    r
}

/// Replays acknowledged places and releases (and unknown places found after healing, at
/// their recorded index) in log order: no acknowledged Place may find the tenant at its limit.
pub fn replay(pairs: &[Pair<'_>], limit: u64, last: &FinalState) -> CheckResult {
    let mut r = CheckResult::new("quota-replay (log-index order, never over the limit)");
    for (tenant, ops) in by_tenant(pairs) {
        let found = last.placements.get(&tenant);
        // A release with an unknown outcome may have taken effect at any index after its
        // call: its placement is never counted, so the replay stays free of false alarms.
        let uncertain: BTreeSet<String> = ops
            .iter()
            .filter(|p| p.invoke.f == "release" && p.kind() == Type::Info)
            .filter_map(|p| p.invoke.id.clone())
            .collect();
        let mut events: Vec<(u64, bool, String, u64)> = Vec::new(); // (index, is_place, id, op)
        for p in &ops {
            let id = p.invoke.id.clone().unwrap_or_default();
            let index = match p.kind() {
                Type::Ok => p.done_field(|d| d.log_index),
                Type::Info if p.invoke.f == "place" => found.and_then(|f| f.get(&id)).copied(),
                _ => None,
            };
            if let Some(i) = index {
                if p.invoke.f != "read" {
                    events.push((i, p.invoke.f == "place", id, p.invoke.op));
                }
            }
        }
        events.sort();
        r.checked += u64::try_from(events.len()).unwrap_or(u64::MAX);
        let mut live: BTreeSet<String> = BTreeSet::new();
        for (index, is_place, id, op) in events {
            if is_place {
                if u64::try_from(live.len()).unwrap_or(u64::MAX) >= limit {
                    r.violation(format!(
                        "tenant {tenant}: op {op} placed {id} at log index {index} with {} of {limit} instances already live: {live:?}",
                        live.len()
                    ));
                }
                if !uncertain.contains(&id) {
                    live.insert(id);
                }
            } else {
                live.remove(&id);
            }
        }
    }
    r
}

/// Against the state after healing: every acknowledged placement not released is there,
/// everything there was placed by someone, the limit holds and usage matches.
pub fn final_placements(pairs: &[Pair<'_>], limit: u64, last: &FinalState) -> CheckResult {
    let mut r = CheckResult::new("quota-final (nothing acknowledged lost, no phantoms)");
    let mut placed: BTreeMap<String, BTreeMap<String, Type>> = BTreeMap::new();
    let mut released: BTreeSet<(String, String)> = BTreeSet::new();
    for p in pairs.iter().filter(|p| p.invoke.workload == "quota") {
        let id = p.invoke.id.clone().unwrap_or_default();
        match (p.invoke.f.as_str(), p.kind()) {
            ("place", k @ (Type::Ok | Type::Info)) => {
                placed.entry(p.invoke.key.clone()).or_default().insert(id, k);
            }
            ("release", Type::Ok | Type::Info) => {
                released.insert((p.invoke.key.clone(), id));
            }
            _ => {}
        }
    }
    for (tenant, ids) in &placed {
        let found = last.placements.get(tenant).cloned().unwrap_or_default();
        for (id, kind) in ids {
            r.checked += 1;
            if *kind == Type::Ok
                && !released.contains(&(tenant.clone(), id.clone()))
                && !found.contains_key(id)
            {
                r.violation(format!("tenant {tenant}: acknowledged placement {id} was lost"));
            }
        }
    }
    for (tenant, found) in &last.placements {
        let ids = placed.get(tenant).cloned().unwrap_or_default();
        for id in found.keys() {
            if !ids.contains_key(id) {
                r.violation(format!("tenant {tenant}: placement {id} exists but was never placed"));
            }
        }
        let n = u64::try_from(found.len()).unwrap_or(u64::MAX);
        if n > limit {
            r.violation(format!("tenant {tenant}: {n} placements live, limit {limit}"));
        }
        if let Some(usage) = last.usage_instances.get(tenant) {
            if *usage != n {
                r.violation(format!(
                    "tenant {tenant}: usage says {usage} instances, {n} placements live"
                ));
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

    fn place(h: &mut H, t: u64, p: u64, id: &str, kind: Type, idx: Option<u64>) -> u64 {
        let op = h.invoke(t, p, Op::invoke("quota", "place", "q-0").with_id(id));
        h.done(t + 5, op, kind, |o| {
            o.log_index = idx;
            if kind == Type::Fail {
                o.error = Some("QUOTA_EXCEEDED".into());
            }
        });
        op
    }

    /// Two sequential acknowledged placements against a limit of one (the check-then-increment
    /// race) are caught by the WGL search and by the log replay.
    #[test]
    fn overcommitted_quota_is_caught() {
        let mut h = H::new();
        place(&mut h, 0, 1, "a", Type::Ok, Some(10));
        place(&mut h, 100, 2, "b", Type::Ok, Some(11));
        let p = pairs(&h.ops);
        assert_eq!(linearizable(&p, 1).valid, Valid::False);
        assert_eq!(replay(&p, 1, &FinalState::default()).valid, Valid::False);
        // With a limit of two it is fine, and a rejection at the limit is explained.
        place(&mut h, 200, 3, "c", Type::Fail, None);
        let p = pairs(&h.ops);
        assert_eq!(linearizable(&p, 2).valid, Valid::True);
        assert_eq!(replay(&p, 2, &FinalState::default()).valid, Valid::True);
        // A rejection while below the limit is not.
        assert_eq!(linearizable(&p, 3).valid, Valid::False);
    }

    /// A release whose outcome is unknown may have freed quota: no false alarm.
    #[test]
    fn unknown_release_is_not_a_violation() {
        let mut h = H::new();
        place(&mut h, 0, 1, "a", Type::Ok, Some(10));
        let r = h.invoke(10, 2, Op::invoke("quota", "release", "q-0").with_id("a"));
        h.done(20, r, Type::Info, |_| {});
        place(&mut h, 30, 3, "b", Type::Ok, Some(12));
        let p = pairs(&h.ops);
        assert_eq!(linearizable(&p, 1).valid, Valid::True);
        assert_eq!(replay(&p, 1, &FinalState::default()).valid, Valid::True);
    }

    /// An acknowledged placement missing after healing is reported lost; an unknown one may be
    /// missing; one nobody placed is a phantom.
    #[test]
    fn lost_placement_is_caught() {
        let mut h = H::new();
        place(&mut h, 0, 1, "a", Type::Ok, Some(10));
        place(&mut h, 10, 2, "b", Type::Info, None);
        let p = pairs(&h.ops);
        let mut last = FinalState::default();
        last.placements.insert("q-0".into(), BTreeMap::from([("a".into(), 10)]));
        assert_eq!(final_placements(&p, 3, &last).valid, Valid::True);
        last.placements.insert("q-0".into(), BTreeMap::from([("b".into(), 12)]));
        let r = final_placements(&p, 3, &last);
        assert_eq!(r.valid, Valid::False);
        assert!(r.details[0].contains("lost"), "{r:?}");
        last.placements.insert("q-0".into(), BTreeMap::from([("a".into(), 10), ("z".into(), 1)]));
        assert_eq!(final_placements(&p, 3, &last).valid, Valid::False);
    }

    /// A usage read that disagrees with the placements is not linearizable.
    #[test]
    fn wrong_usage_read_is_caught() {
        let mut h = H::new();
        place(&mut h, 0, 1, "a", Type::Ok, Some(10));
        let r = h.invoke(20, 2, Op::invoke("quota", "read", "q-0"));
        h.done(25, r, Type::Ok, |o| o.value = Some(0));
        assert_eq!(linearizable(&pairs(&h.ops), 2).valid, Valid::False);
    }
}
