//! The `tenants` workload: tenants created and deleted under load, placements into them, and
//! cross-tenant probes (a tenant token reading another tenant).
//!
//! Checks: no probe of another tenant ever succeeds; no write on a tenant is accepted at a log
//! index after its acknowledged deletion (unless an acknowledged re-creation came in between);
//! a tenant whose last acknowledged operation was its deletion does not exist after healing.

use std::collections::{BTreeMap, BTreeSet};

use super::{CheckResult, FinalState};
use crate::history::{Pair, Type};

pub fn check(pairs: &[Pair<'_>], last: &FinalState) -> CheckResult {
    let mut r = CheckResult::new("tenants (isolation, nothing accepted after deletion)");
    let ops: Vec<&Pair<'_>> = pairs.iter().filter(|p| p.invoke.workload == "tenants").collect();
    // tenant → acknowledged (log index, f) of create / delete / place
    let mut events: BTreeMap<&str, Vec<(u64, &str, u64)>> = BTreeMap::new();
    let mut unknown_create: BTreeSet<&str> = BTreeSet::new();
    for p in &ops {
        r.checked += 1;
        if p.invoke.f == "probe" {
            if p.is_ok() {
                r.violation(format!(
                    "op {}: a token of another tenant read tenant {}",
                    p.invoke.op, p.invoke.key
                ));
            }
            continue;
        }
        if p.invoke.f == "create" && p.kind() == Type::Info {
            unknown_create.insert(p.invoke.key.as_str());
        }
        if let (true, Some(i)) = (p.is_ok(), p.done_field(|d| d.log_index)) {
            events.entry(p.invoke.key.as_str()).or_default().push((
                i,
                p.invoke.f.as_str(),
                p.invoke.op,
            ));
        }
    }
    for (tenant, mut evs) in events {
        evs.sort();
        let mut deleted_at: Option<u64> = None;
        for (i, f, op) in &evs {
            match *f {
                "delete" => deleted_at = Some(*i),
                "create" => deleted_at = None,
                _ => {
                    if let Some(d) = deleted_at {
                        r.violation(format!(
                            "tenant {tenant}: op {op} {f} accepted at log index {i}, after the tenant was deleted at {d}"
                        ));
                    }
                }
            }
        }
        let gone = evs.last().is_some_and(|(_, f, _)| *f == "delete");
        if gone
            && last.complete
            && last.tenants.contains(tenant)
            && !unknown_create.contains(tenant)
        {
            r.violation(format!("tenant {tenant} still exists after its acknowledged deletion"));
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checker::Valid;
    use crate::history::build::H;
    use crate::history::Op;

    fn ok(h: &mut H, t: u64, f: &str, tenant: &str, idx: u64) {
        let op = h.invoke(t, 1, Op::invoke("tenants", f, tenant));
        h.done(t + 5, op, Type::Ok, |o| o.log_index = Some(idx));
    }

    /// A placement accepted after the tenant's deletion, and a successful cross-tenant probe,
    /// are caught.
    #[test]
    fn write_after_delete_and_cross_tenant_read_are_caught() {
        let mut h = H::new();
        ok(&mut h, 0, "create", "t-1", 10);
        ok(&mut h, 10, "place", "t-1", 11);
        ok(&mut h, 20, "delete", "t-1", 12);
        let last = FinalState { complete: true, ..FinalState::default() };
        assert_eq!(check(&crate::history::pairs(&h.ops), &last).valid, Valid::True);
        ok(&mut h, 30, "place", "t-1", 13);
        assert_eq!(check(&crate::history::pairs(&h.ops), &last).valid, Valid::False);

        let mut h = H::new();
        let op = h.invoke(0, 1, Op::invoke("tenants", "probe", "probe-b"));
        h.done(5, op, Type::Ok, |_| {});
        assert_eq!(check(&crate::history::pairs(&h.ops), &last).valid, Valid::False);
    }

    /// A tenant that still exists after its acknowledged deletion is caught.
    #[test]
    fn resurrected_tenant_is_caught() {
        let mut h = H::new();
        ok(&mut h, 0, "create", "t-1", 10);
        ok(&mut h, 20, "delete", "t-1", 12);
        let mut last = FinalState { complete: true, ..FinalState::default() };
        last.tenants.insert("t-1".into());
        assert_eq!(check(&crate::history::pairs(&h.ops), &last).valid, Valid::False);
    }
}
