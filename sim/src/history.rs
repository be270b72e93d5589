//! What clients saw, and the checks over it. An operation is recorded when it is invoked and
//! again when it completes: `ok` (with the `log_index` of the answer), `fail` (the cluster
//! refused it; it did not happen) or `info` (no answer: it may or may not have happened).
//! A timeout is always `info`, never `fail`.

use std::collections::BTreeMap;

use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum OpKind {
    /// Place `instances` instances for `tenant` under `placement`.
    Place {
        tenant: String,
        placement: String,
        instances: u64,
    },
    Release {
        tenant: String,
        placement: String,
    },
    /// A linearizable read of one placement (`found` in the outcome).
    Read {
        tenant: String,
        placement: String,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Outcome {
    Ok { log_index: Option<u64>, found: Option<bool> },
    Fail { reason: String },
    Info { why: String },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Op {
    pub client: u32,
    #[serde(flatten)]
    pub kind: OpKind,
    /// Simulated milliseconds at invocation and at completion.
    pub invoke_ms: u64,
    pub complete_ms: u64,
    pub outcome: Outcome,
}

impl Op {
    fn ok_index(&self) -> Option<u64> {
        match self.outcome {
            Outcome::Ok { log_index, .. } => log_index,
            _ => None,
        }
    }
}

/// Per-tenant instance limits the workload ran against.
pub type Quotas = BTreeMap<String, u64>;

/// Checks a history; every message is one violation.
///
/// - Acknowledged writes have distinct log indexes, and real-time order: a write acknowledged
///   before another was invoked has a smaller log index.
/// - Replaying the acknowledged Place/Release in log order never exceeds a tenant's instance
///   quota (unacknowledged ones can only add usage, so this is a sound lower bound).
/// - A read never misses an acknowledged placement that no acknowledged or pending release
///   could have removed, and never finds one whose release was acknowledged before it began
///   (stale reads and lost writes).
pub fn check(history: &[Op], quotas: &Quotas) -> Vec<String> {
    let mut bad = Vec::new();
    let writes: Vec<&Op> = history
        .iter()
        .filter(|op| !matches!(op.kind, OpKind::Read { .. }) && op.ok_index().is_some())
        .collect();

    let mut by_index: BTreeMap<u64, &Op> = BTreeMap::new();
    for op in &writes {
        let index = op.ok_index().unwrap_or_default();
        if let Some(other) = by_index.insert(index, op) {
            bad.push(format!("log index {index} acknowledged twice: {other:?} and {op:?}"));
        }
    }
    for a in &writes {
        for b in &writes {
            if a.complete_ms < b.invoke_ms && a.ok_index() >= b.ok_index() {
                bad.push(format!(
                    "real-time order broken: {a:?} finished before {b:?} began but has a later log index"
                ));
            }
        }
    }

    // Quota replay in log order.
    let mut sizes: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    let mut usage: BTreeMap<&str, u64> = BTreeMap::new();
    for (index, op) in &by_index {
        match &op.kind {
            OpKind::Place { tenant, placement, instances } => {
                sizes.insert((tenant, placement), *instances);
                let used = usage.entry(tenant).or_default();
                *used += instances;
                if let Some(limit) = quotas.get(tenant.as_str()) {
                    if *used > *limit {
                        bad.push(format!(
                            "quota exceeded at log index {index}: tenant {tenant} holds {used} instances, limit {limit}"
                        ));
                    }
                }
            }
            OpKind::Release { tenant, placement } => {
                let released = sizes.remove(&(tenant.as_str(), placement.as_str()));
                let used = usage.entry(tenant).or_default();
                *used = used.saturating_sub(released.unwrap_or_default());
            }
            OpKind::Read { .. } => {}
        }
    }

    // Reads against acknowledged writes.
    for read in history {
        let (OpKind::Read { tenant, placement }, Outcome::Ok { found: Some(found), .. }) =
            (&read.kind, &read.outcome)
        else {
            continue;
        };
        let same = |op: &&Op| match &op.kind {
            OpKind::Place { tenant: t, placement: p, .. }
            | OpKind::Release { tenant: t, placement: p } => t == tenant && p == placement,
            OpKind::Read { .. } => false,
        };
        let placed_before = history.iter().filter(same).any(|op| {
            matches!(op.kind, OpKind::Place { .. })
                && op.ok_index().is_some()
                && op.complete_ms < read.invoke_ms
        });
        // A release that may have taken effect by the time the read answered.
        let maybe_released = history.iter().filter(same).any(|op| {
            matches!(op.kind, OpKind::Release { .. })
                && !matches!(op.outcome, Outcome::Fail { .. })
                && op.invoke_ms <= read.complete_ms
        });
        let surely_released = history.iter().filter(same).any(|op| {
            matches!(op.kind, OpKind::Release { .. })
                && op.ok_index().is_some()
                && op.complete_ms < read.invoke_ms
        });
        if placed_before && !maybe_released && !found {
            bad.push(format!(
                "stale read or lost write: {read:?} missed an acknowledged placement"
            ));
        }
        if surely_released && *found {
            bad.push(format!(
                "stale read: {read:?} found a placement whose release was acknowledged"
            ));
        }
    }
    bad
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(client: u32, kind: OpKind, at: (u64, u64), outcome: Outcome) -> Op {
        Op { client, kind, invoke_ms: at.0, complete_ms: at.1, outcome }
    }
    fn ok(index: u64) -> Outcome {
        Outcome::Ok { log_index: Some(index), found: None }
    }
    fn read(found: bool) -> Outcome {
        Outcome::Ok { log_index: None, found: Some(found) }
    }
    fn place(p: &str, n: u64) -> OpKind {
        OpKind::Place { tenant: "t".into(), placement: p.into(), instances: n }
    }
    fn release(p: &str) -> OpKind {
        OpKind::Release { tenant: "t".into(), placement: p.into() }
    }
    fn get(p: &str) -> OpKind {
        OpKind::Read { tenant: "t".into(), placement: p.into() }
    }
    fn quotas() -> Quotas {
        [("t".to_string(), 4)].into()
    }

    #[test]
    fn a_clean_history_passes() {
        let h = vec![
            op(1, place("a", 2), (0, 5), ok(1)),
            op(1, get("a"), (6, 8), read(true)),
            op(2, place("b", 2), (1, 9), ok(2)),
            op(1, release("a"), (10, 12), ok(3)),
            op(1, get("a"), (13, 14), read(false)),
            op(2, place("c", 3), (15, 16), Outcome::Fail { reason: "QUOTA_EXCEEDED".into() }),
            op(2, place("d", 2), (17, 30), Outcome::Info { why: "timeout".into() }),
        ];
        assert_eq!(check(&h, &quotas()), Vec::<String>::new());
    }

    #[test]
    fn a_lost_write_is_caught() {
        let h = vec![op(1, place("a", 1), (0, 5), ok(1)), op(2, get("a"), (6, 7), read(false))];
        assert!(check(&h, &quotas())[0].contains("lost write"));
    }

    #[test]
    fn a_stale_read_is_caught() {
        let h = vec![
            op(1, place("a", 1), (0, 5), ok(1)),
            op(1, release("a"), (6, 8), ok(2)),
            op(2, get("a"), (9, 10), read(true)),
        ];
        assert!(check(&h, &quotas())[0].contains("stale read"));
    }

    #[test]
    fn an_exceeded_quota_is_caught() {
        let h = vec![op(1, place("a", 3), (0, 5), ok(1)), op(2, place("b", 2), (0, 6), ok(2))];
        assert!(check(&h, &quotas())[0].contains("quota exceeded"));
    }

    #[test]
    fn reordered_and_duplicated_acknowledgements_are_caught() {
        let h = vec![op(1, place("a", 1), (0, 5), ok(7)), op(2, place("b", 1), (6, 8), ok(3))];
        assert!(check(&h, &quotas())[0].contains("real-time order"));
        let h = vec![op(1, place("a", 1), (0, 5), ok(3)), op(2, place("b", 1), (0, 8), ok(3))];
        assert!(check(&h, &quotas())[0].contains("acknowledged twice"));
    }
}
