//! What clients saw, and the checks over it. An operation is recorded when it is invoked and
//! again when it completes: `ok` (with the `log_index` of the answer), `fail` (the cluster
//! refused it; it did not happen) or `info` (no answer: it may or may not have happened).
//! A timeout is always `info`, never `fail`.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

/// A lease token a write presented (`Fence` in the API): the write must be refused unless
/// `token` is the lease's live token when it applies.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Fenced {
    pub lease: String,
    pub token: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum OpKind {
    /// Place `instances` instances for `tenant` under `placement`.
    Place {
        tenant: String,
        placement: String,
        instances: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        fence: Option<Fenced>,
        /// The placement group it joins.
        #[serde(skip_serializing_if = "Option::is_none")]
        group: Option<String>,
    },
    /// Reserve `instances` instances as `placement` (expiry in the outcome).
    Reserve {
        tenant: String,
        placement: String,
        instances: u64,
    },
    /// Turn reservation `placement` into a placement.
    Confirm {
        tenant: String,
        placement: String,
    },
    Cancel {
        tenant: String,
        placement: String,
    },
    /// A placement group of at most `max` instances.
    CreateGroup {
        tenant: String,
        group: String,
        max: u64,
    },
    DeleteTenant {
        tenant: String,
    },
    Release {
        tenant: String,
        placement: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        fence: Option<Fenced>,
    },
    /// A linearizable read of one placement (`found` in the outcome).
    Read {
        tenant: String,
        placement: String,
    },
    /// Acquire lease `lease` of `tenant` for `holder` (the token is in the outcome).
    Acquire {
        tenant: String,
        lease: String,
        holder: String,
    },
    KeepAlive {
        tenant: String,
        lease: String,
        token: u64,
    },
    ReleaseLease {
        tenant: String,
        lease: String,
        token: u64,
    },
    /// A request no cluster may accept (`hostile.rs`): it must be refused.
    Hostile {
        shape: String,
    },
    /// Revoke the token `token` of `tenant`.
    RevokeToken {
        tenant: String,
        token: String,
    },
    /// A read of `tenant` with its token `token`, from one replica (`stale`: its own state).
    TokenRead {
        tenant: String,
        token: String,
        stale: bool,
    },
}

/// What an acknowledged lease operation said about the lease.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct LeaseSeen {
    pub token: u64,
    /// Log time at which the lease was granted (Acquire) or the operation applied.
    pub at_ms: u64,
    /// The lease's expiry as the answer gave it (a lower bound: a leader change may extend it).
    pub expires_at_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Outcome {
    Ok {
        log_index: Option<u64>,
        found: Option<bool>,
        #[serde(skip_serializing_if = "Option::is_none")]
        lease: Option<LeaseSeen>,
        /// Log time at which the write applied.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        at_ms: Option<u64>,
        /// A reservation's expiry (log time) as the answer gave it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expires_at_ms: Option<u64>,
    },
    Fail {
        reason: String,
    },
    Info {
        why: String,
    },
}

impl Outcome {
    /// An acknowledged write at `log_index`.
    pub fn written(log_index: Option<u64>) -> Outcome {
        Outcome::Ok { log_index, found: None, lease: None, at_ms: None, expires_at_ms: None }
    }

    /// An acknowledged write at `log_index`, applied at log time `at_ms`.
    pub fn applied(log_index: u64, at_ms: u64, expires_at_ms: Option<u64>) -> Outcome {
        let (log_index, at_ms) = (Some(log_index), Some(at_ms));
        Outcome::Ok { log_index, found: None, lease: None, at_ms, expires_at_ms }
    }

    /// A read that found (or did not find) what it looked for.
    pub fn read(found: bool) -> Outcome {
        Outcome::Ok {
            log_index: None,
            found: Some(found),
            lease: None,
            at_ms: None,
            expires_at_ms: None,
        }
    }
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
/// - Leases and fenced writes: see [`check_leases`].
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

    // Quota and placement-group replay in log order, with reservations and tenant deletion.
    // A release or cancel without an answer may have happened at any time after it was sent,
    // so its placement or reservation counts only at its own write (a lower bound). An
    // unconfirmed reservation counts until its expiry: it is released at the first write whose
    // log time reaches it. An acknowledged DeleteTenant frees everything of the tenant, and
    // nothing of the tenant may be accepted at a later log index. A tenant whose deletion got
    // no answer is not replayed after it (it may have been emptied at any point).
    let maybe_released: BTreeSet<(&str, &str)> = history
        .iter()
        .filter_map(|op| match (&op.kind, &op.outcome) {
            (
                OpKind::Release { tenant, placement, .. } | OpKind::Cancel { tenant, placement },
                Outcome::Info { .. },
            ) => Some((tenant.as_str(), placement.as_str())),
            _ => None,
        })
        .collect();
    let maybe_deleted: BTreeSet<&str> = history
        .iter()
        .filter_map(|op| match (&op.kind, &op.outcome) {
            (OpKind::DeleteTenant { tenant }, Outcome::Info { .. }) => Some(tenant.as_str()),
            _ => None,
        })
        .collect();
    let limits: BTreeMap<(&str, &str), u64> = writes
        .iter()
        .filter_map(|op| match &op.kind {
            OpKind::CreateGroup { tenant, group, max } => {
                Some(((tenant.as_str(), group.as_str()), *max))
            }
            _ => None,
        })
        .collect();
    let mut sizes: BTreeMap<(&str, &str), (u64, Option<&str>)> = BTreeMap::new();
    let mut reserved: BTreeMap<(&str, &str), (u64, u64)> = BTreeMap::new();
    let mut expired: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    let mut cancelled: BTreeSet<(&str, &str)> = BTreeSet::new();
    let mut usage: BTreeMap<&str, u64> = BTreeMap::new();
    let mut group_usage: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    let mut deleted: BTreeMap<&str, u64> = BTreeMap::new();
    for (index, &op) in &by_index {
        let now = match op.outcome {
            Outcome::Ok { at_ms, .. } => at_ms,
            _ => None,
        };
        if let Some(now) = now {
            reserved.retain(|key, (instances, expires)| {
                if *expires > now {
                    return true;
                }
                let used = usage.entry(key.0).or_default();
                *used = used.saturating_sub(*instances);
                expired.insert(*key, *expires);
                false
            });
        }
        let Some(tenant) = tenant_of(&op.kind) else { continue };
        if let Some(at) = deleted.get(tenant) {
            bad.push(format!(
                "tenant {tenant} was deleted at log index {at}, but log index {index} accepted {op:?}"
            ));
            continue;
        }
        if maybe_deleted.contains(tenant) {
            continue;
        }
        if let OpKind::Place { instances, .. } | OpKind::Reserve { instances, .. } = &op.kind {
            let used = usage.entry(tenant).or_default();
            *used += instances;
            if let Some(limit) = quotas.get(tenant) {
                if *used > *limit {
                    bad.push(format!(
                        "quota exceeded at log index {index}: tenant {tenant} holds {used} instances, limit {limit}"
                    ));
                }
            }
        }
        match &op.kind {
            OpKind::Place { placement, instances, group, .. } => {
                let key = (tenant, placement.as_str());
                let group = group.as_deref();
                if let Some(g) = group {
                    let in_group = group_usage.entry((tenant, g)).or_default();
                    *in_group += instances;
                    if let Some(max) = limits.get(&(tenant, g)) {
                        if *in_group > *max {
                            bad.push(format!(
                                "placement group {tenant}/{g} exceeded at log index {index}: {in_group} instances, max {max}"
                            ));
                        }
                    }
                }
                if maybe_released.contains(&key) {
                    *usage.entry(tenant).or_default() -= instances;
                    if let Some(g) = group {
                        *group_usage.entry((tenant, g)).or_default() -= instances;
                    }
                } else {
                    sizes.insert(key, (*instances, group));
                }
            }
            OpKind::Reserve { placement, instances, .. } => {
                let key = (tenant, placement.as_str());
                let expires = match op.outcome {
                    Outcome::Ok { expires_at_ms: Some(at), .. } => at,
                    _ => {
                        bad.push(format!("reservation acknowledged without its expiry: {op:?}"));
                        u64::MAX
                    }
                };
                if maybe_released.contains(&key) {
                    *usage.entry(tenant).or_default() -= instances;
                } else {
                    reserved.insert(key, (*instances, expires));
                }
            }
            OpKind::Confirm { placement, .. } => {
                let key = (tenant, placement.as_str());
                if let Some((instances, _)) = reserved.remove(&key) {
                    sizes.insert(key, (instances, None));
                } else if cancelled.contains(&key) {
                    bad.push(format!(
                        "reservation {tenant}/{placement} confirmed at log index {index} after its cancel was acknowledged"
                    ));
                } else if let (Some(expires), Some(now)) = (expired.get(&key), now) {
                    // Expiry runs in apply; at exactly its expiry the order is not asserted.
                    if *expires < now {
                        bad.push(format!(
                            "reservation {tenant}/{placement} confirmed at log index {index}, log time {now}, after it expired at {expires}"
                        ));
                    }
                }
            }
            OpKind::Cancel { placement, .. } => {
                let key = (tenant, placement.as_str());
                if let Some((instances, _)) = reserved.remove(&key) {
                    let used = usage.entry(tenant).or_default();
                    *used = used.saturating_sub(instances);
                }
                cancelled.insert(key);
            }
            OpKind::Release { placement, .. } => {
                let released = sizes.remove(&(tenant, placement.as_str()));
                let (instances, group) = released.unwrap_or_default();
                let used = usage.entry(tenant).or_default();
                *used = used.saturating_sub(instances);
                if let Some(g) = group {
                    let in_group = group_usage.entry((tenant, g)).or_default();
                    *in_group = in_group.saturating_sub(instances);
                }
            }
            OpKind::DeleteTenant { .. } => {
                usage.remove(tenant);
                sizes.retain(|(t, _), _| *t != tenant);
                reserved.retain(|(t, _), _| *t != tenant);
                group_usage.retain(|(t, _), _| *t != tenant);
                deleted.insert(tenant, *index);
            }
            _ => {}
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
            | OpKind::Release { tenant: t, placement: p, .. }
            | OpKind::Reserve { tenant: t, placement: p, .. }
            | OpKind::Confirm { tenant: t, placement: p }
            | OpKind::Cancel { tenant: t, placement: p } => t == tenant && p == placement,
            _ => false,
        };
        let deletes = || {
            history
                .iter()
                .filter(|op| matches!(&op.kind, OpKind::DeleteTenant { tenant: t } if t == tenant))
        };
        let placed_before = history.iter().filter(same).any(|op| {
            matches!(op.kind, OpKind::Place { .. } | OpKind::Confirm { .. })
                && op.ok_index().is_some()
                && op.complete_ms < read.invoke_ms
        });
        // A release (or cancel, or deletion of the tenant) that may have taken effect by the
        // time the read answered.
        let maybe_released = history.iter().filter(same).chain(deletes()).any(|op| {
            matches!(
                op.kind,
                OpKind::Release { .. } | OpKind::Cancel { .. } | OpKind::DeleteTenant { .. }
            ) && !matches!(op.outcome, Outcome::Fail { .. })
                && op.invoke_ms <= read.complete_ms
        });
        let surely_released = history.iter().filter(same).any(|op| {
            matches!(op.kind, OpKind::Release { .. } | OpKind::Cancel { .. })
                && op.ok_index().is_some()
                && op.complete_ms < read.invoke_ms
        });
        let surely_deleted =
            deletes().any(|op| op.ok_index().is_some() && op.complete_ms < read.invoke_ms);
        // An unconfirmed reservation is surely expired once a later write, acknowledged
        // before the read began, applied at or after its expiry.
        let may_be_confirmed = history.iter().filter(same).any(|op| {
            matches!(op.kind, OpKind::Confirm { .. }) && !matches!(op.outcome, Outcome::Fail { .. })
        });
        let surely_expired = !may_be_confirmed
            && history.iter().filter(same).any(|reserve| {
                let (OpKind::Reserve { .. }, Outcome::Ok { log_index: Some(at), expires_at_ms: Some(expires), .. }) =
                    (&reserve.kind, &reserve.outcome)
                else {
                    return false;
                };
                writes.iter().any(|w| {
                    matches!(w.outcome, Outcome::Ok { log_index: Some(i), at_ms: Some(t), .. } if i > *at && t >= *expires)
                        && w.complete_ms < read.invoke_ms
                })
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
        if surely_deleted && *found {
            bad.push(format!(
                "deleted tenant: {read:?} found a placement after its tenant's deletion was acknowledged"
            ));
        }
        if surely_expired && *found {
            bad.push(format!(
                "expired reservation: {read:?} found a reservation after it expired in log time"
            ));
        }
    }
    bad.extend(check_leases(history));
    bad.extend(check_log_time(history));
    bad.extend(check_hostile(history));
    bad.extend(check_revoked(history));
    bad
}

/// A token never reads once its revocation was acknowledged: no read with it that began after
/// the acknowledgement succeeds, stale or not, whichever replica served it.
pub fn check_revoked(history: &[Op]) -> Vec<String> {
    let revoked: BTreeMap<(&str, &str), u64> = history
        .iter()
        .filter_map(|op| match (&op.kind, &op.outcome) {
            (OpKind::RevokeToken { tenant, token }, Outcome::Ok { .. }) => {
                Some(((tenant.as_str(), token.as_str()), op.complete_ms))
            }
            _ => None,
        })
        .collect();
    history
        .iter()
        .filter_map(|op| match (&op.kind, &op.outcome) {
            (OpKind::TokenRead { tenant, token, .. }, Outcome::Ok { .. }) => revoked
                .get(&(tenant.as_str(), token.as_str()))
                .filter(|at| op.invoke_ms > **at)
                .map(|at| {
                    format!("token read after its revocation was acknowledged at {at} ms: {op:?}")
                }),
            _ => None,
        })
        .collect()
}

/// A hostile request is never acknowledged, and its refusal is small enough to read.
pub fn check_hostile(history: &[Op]) -> Vec<String> {
    let mut bad = Vec::new();
    for op in history {
        let OpKind::Hostile { shape } = &op.kind else { continue };
        match &op.outcome {
            Outcome::Ok { .. } => bad.push(format!("hostile request {shape} was accepted: {op:?}")),
            Outcome::Fail { reason } if reason.starts_with("ERROR_TOO_LARGE") => {
                bad.push(format!("hostile request {shape}: its error echoes the input ({reason})"))
            }
            Outcome::Fail { .. } | Outcome::Info { .. } => {}
        }
    }
    bad
}

/// The simulation's wall-clock epoch: true time is this plus simulated time.
pub const EPOCH_MS: u64 = 1_800_000_000_000;
/// What a leader's clock-reading error may add to `CLOCK_AHEAD_MAX_MS` here: half the round
/// trip of a clock reading, at most half the reading's deadline.
const CLOCK_READING_ERROR_MS: u64 = 250;

/// Log time never leads true time by more than the bound a leader stamps within
/// (`berth::clock::CLOCK_AHEAD_MAX_MS`), whatever one replica's clock says: an acknowledged
/// write applied at log time `t` completed at true time `c` with `t <= c + bound`. A leader
/// stamping its own skewed clock would expire leases and reservations early.
pub fn check_log_time(history: &[Op]) -> Vec<String> {
    let bound = berth::clock::CLOCK_AHEAD_MAX_MS + CLOCK_READING_ERROR_MS;
    let mut bad = Vec::new();
    for op in history {
        let Outcome::Ok { at_ms, lease, .. } = &op.outcome else { continue };
        let applied = at_ms.or(lease.map(|l| l.at_ms));
        let Some(applied) = applied else { continue };
        let true_ms = EPOCH_MS + op.complete_ms;
        if applied > true_ms + bound {
            bad.push(format!(
                "log time leaps ahead: applied at {applied} ms, {} ms after the true time {true_ms} ms \
                 at its completion (bound {bound} ms): {op:?}",
                applied - true_ms
            ));
        }
    }
    bad
}

/// The tenant an operation acts on.
fn tenant_of(kind: &OpKind) -> Option<&str> {
    match kind {
        OpKind::Place { tenant, .. }
        | OpKind::Release { tenant, .. }
        | OpKind::Reserve { tenant, .. }
        | OpKind::Confirm { tenant, .. }
        | OpKind::Cancel { tenant, .. }
        | OpKind::CreateGroup { tenant, .. }
        | OpKind::DeleteTenant { tenant }
        | OpKind::Acquire { tenant, .. }
        | OpKind::KeepAlive { tenant, .. }
        | OpKind::ReleaseLease { tenant, .. }
        | OpKind::RevokeToken { tenant, .. } => Some(tenant),
        OpKind::Read { .. } | OpKind::Hostile { .. } | OpKind::TokenRead { .. } => None,
    }
}

/// A lease, by tenant and name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct LeaseName<'a> {
    tenant: &'a str,
    lease: &'a str,
}

impl std::fmt::Display for LeaseName<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.tenant, self.lease)
    }
}

/// An operation as a lease violation shows it: the whole recorded op.
#[derive(Clone, Copy)]
struct Shown<'a>(&'a Op);

impl std::fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

/// What the history says about leases (invariant 7): the lease-safety model of
/// `berth_check::lease`, which the Jepsen harness checks too; this only turns each operation
/// into its event. A grant's fencing token must be the log index of its grant, so tokens of
/// successive grants strictly increase (their real-time order is checked with every other
/// write).
pub fn check_leases(history: &[Op]) -> Vec<String> {
    use berth_check::lease::{self, Event, Use};
    let mut bad = Vec::new();
    let mut events = Vec::new();
    for op in history {
        let shown = Shown(op);
        let told = match &op.outcome {
            Outcome::Ok { lease: Some(seen), .. } => Some(seen.expires_at_ms),
            _ => None,
        };
        let (lease, token, how) = match &op.kind {
            OpKind::Acquire { tenant, lease, .. } => {
                let Outcome::Ok { log_index, lease: seen, .. } = &op.outcome else { continue };
                let Some(seen) = seen else {
                    bad.push(format!("lease granted without its token: {op:?}"));
                    continue;
                };
                events.push(Event::Granted {
                    lease: LeaseName { tenant, lease },
                    token: seen.token,
                    log_index: *log_index,
                    at_ms: seen.at_ms,
                    expires_at_ms: Some(seen.expires_at_ms),
                    op: shown,
                });
                continue;
            }
            OpKind::KeepAlive { tenant, lease, token } => {
                (LeaseName { tenant, lease }, *token, Use::KeepAlive)
            }
            OpKind::ReleaseLease { tenant, lease, token } => {
                (LeaseName { tenant, lease }, *token, Use::Release)
            }
            OpKind::Place { tenant, fence: Some(f), .. }
            | OpKind::Release { tenant, fence: Some(f), .. } => {
                (LeaseName { tenant, lease: &f.lease }, f.token, Use::FencedWrite)
            }
            _ => continue,
        };
        match op.ok_index() {
            Some(log_index) => events.push(Event::Used {
                lease,
                token,
                log_index,
                how,
                expires_at_ms: told,
                op: shown,
            }),
            None if how == Use::Release && !matches!(op.outcome, Outcome::Fail { .. }) => {
                events.push(Event::MayHaveReleased { lease, token });
            }
            None => {}
        }
    }
    bad.extend(lease::check(events).iter().map(ToString::to_string));
    bad
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(client: u32, kind: OpKind, at: (u64, u64), outcome: Outcome) -> Op {
        Op { client, kind, invoke_ms: at.0, complete_ms: at.1, outcome }
    }
    fn ok(index: u64) -> Outcome {
        Outcome::written(Some(index))
    }
    fn read(found: bool) -> Outcome {
        Outcome::read(found)
    }
    fn place(p: &str, n: u64) -> OpKind {
        OpKind::Place {
            tenant: "t".into(),
            placement: p.into(),
            instances: n,
            fence: None,
            group: None,
        }
    }
    fn release(p: &str) -> OpKind {
        OpKind::Release { tenant: "t".into(), placement: p.into(), fence: None }
    }
    fn fenced_place(p: &str, token: u64) -> OpKind {
        let fence = Some(Fenced { lease: "l".into(), token });
        OpKind::Place { tenant: "t".into(), placement: p.into(), instances: 1, fence, group: None }
    }
    fn acquire(holder: &str) -> OpKind {
        OpKind::Acquire { tenant: "t".into(), lease: "l".into(), holder: holder.into() }
    }
    fn keep_alive(token: u64) -> OpKind {
        OpKind::KeepAlive { tenant: "t".into(), lease: "l".into(), token }
    }
    fn release_lease(token: u64) -> OpKind {
        OpKind::ReleaseLease { tenant: "t".into(), lease: "l".into(), token }
    }
    /// An acknowledged lease operation at `index`: token, log time, expiry.
    fn leased(index: u64, token: u64, at_ms: u64, expires_at_ms: u64) -> Outcome {
        let lease = Some(LeaseSeen { token, at_ms, expires_at_ms });
        Outcome::Ok { log_index: Some(index), found: None, lease, at_ms: None, expires_at_ms: None }
    }
    fn stale() -> Outcome {
        Outcome::Fail { reason: "STALE_FENCING_TOKEN".into() }
    }
    /// Two holders in turn, the second after the first's expiry; the old token is refused.
    fn clean_lease_history() -> Vec<Op> {
        vec![
            op(1, acquire("a"), (0, 5), leased(3, 3, 100, 1_100)),
            op(1, fenced_place("a1", 3), (6, 9), ok(4)),
            op(1, keep_alive(3), (10, 12), leased(5, 3, 600, 1_600)),
            op(2, acquire("b"), (13, 14), Outcome::Fail { reason: "LEASE_HELD".into() }),
            op(2, acquire("b"), (20, 25), leased(9, 9, 1_650, 2_650)),
            op(2, fenced_place("b1", 9), (26, 28), ok(10)),
            op(1, fenced_place("a2", 3), (30, 31), stale()),
            op(1, keep_alive(3), (32, 33), stale()),
            op(2, release_lease(9), (34, 35), ok(11)),
            op(1, acquire("a"), (36, 40), leased(12, 12, 1_700, 2_700)),
        ]
    }
    fn get(p: &str) -> OpKind {
        OpKind::Read { tenant: "t".into(), placement: p.into() }
    }
    fn quotas() -> Quotas {
        [("t".to_string(), 4)].into()
    }

    #[test]
    fn a_read_with_a_token_after_its_revocation_is_caught() {
        let revoke = OpKind::RevokeToken { tenant: "t".into(), token: "k".into() };
        let read_with = |stale| OpKind::TokenRead { tenant: "t".into(), token: "k".into(), stale };
        let refused = Outcome::Fail { reason: "UNAUTHENTICATED".into() };
        let mut h = vec![
            op(1, read_with(true), (0, 2), read(true)),
            op(2, revoke, (1, 600), ok(3)),
            // Concurrent with the revocation: may read.
            op(1, read_with(true), (500, 601), read(true)),
            op(1, read_with(true), (602, 603), refused.clone()),
            op(1, read_with(false), (604, 605), refused),
        ];
        assert_eq!(check(&h, &quotas()), Vec::<String>::new());
        h.push(op(1, read_with(true), (606, 607), read(true)));
        let bad = check(&h, &quotas());
        assert!(bad.iter().any(|v| v.contains("token read after its revocation")), "{bad:?}");
    }

    #[test]
    fn a_clean_lease_history_passes() {
        assert_eq!(check(&clean_lease_history(), &quotas()), Vec::<String>::new());
    }

    #[test]
    fn two_lease_holders_at_once_are_caught() {
        // b is granted at log time 1 200, while a was told it holds until 1 600.
        let mut h = clean_lease_history();
        h[4] = op(2, acquire("b"), (20, 25), leased(9, 9, 1_200, 2_200));
        let bad = check(&h, &quotas());
        assert!(bad.iter().any(|v| v.contains("two lease holders")), "{bad:?}");
        // The old holder's token accepted after the next grant.
        let mut h = clean_lease_history();
        h[6] = op(1, fenced_place("a2", 3), (30, 31), ok(10));
        h[5] = op(2, fenced_place("b1", 9), (26, 28), ok(13));
        let bad = check(&h, &quotas());
        assert!(bad.iter().any(|v| v.contains("two lease holders")), "{bad:?}");
    }

    #[test]
    fn log_time_leaping_ahead_of_true_time_is_caught() {
        // A lease granted at a log time 20 s past the true time of its answer.
        let mut h = clean_lease_history();
        let leapt = EPOCH_MS + 40 + 20_000;
        h[9] = op(1, acquire("a"), (36, 40), leased(12, 12, leapt, leapt + 1_000));
        let bad = check(&h, &quotas());
        assert!(bad.iter().any(|v| v.contains("log time leaps ahead")), "{bad:?}");
        // Within the bound it is a leader's ordinary clock error.
        let near = EPOCH_MS + 40 + berth::clock::CLOCK_AHEAD_MAX_MS;
        h[9] = op(1, acquire("a"), (36, 40), leased(12, 12, near, near + 1_000));
        assert_eq!(check(&h, &quotas()), Vec::<String>::new());
    }

    #[test]
    fn a_stale_fenced_write_accepted_is_caught() {
        // a's token, used after b's grant, accepted by the guarded resource.
        let mut h = clean_lease_history();
        h[6] = op(1, fenced_place("a2", 3), (30, 31), ok(14));
        let bad = check(&h, &quotas());
        assert!(bad.iter().any(|v| v.contains("guarded resource")), "{bad:?}");
        assert!(bad.iter().any(|v| v.contains("after token 9 was granted")), "{bad:?}");
        // A token still accepted after its own release.
        let mut h = clean_lease_history();
        h.push(op(2, fenced_place("b2", 9), (41, 42), ok(15)));
        let bad = check(&h, &quotas());
        assert!(bad.iter().any(|v| v.contains("after its release")), "{bad:?}");
    }

    #[test]
    fn fencing_tokens_that_do_not_increase_are_caught() {
        // A token that is not its grant's log index.
        let mut h = clean_lease_history();
        h[4] = op(2, acquire("b"), (20, 25), leased(9, 2, 1_650, 2_650));
        let bad = check(&h, &quotas());
        assert!(bad.iter().any(|v| v.contains("is not the log index")), "{bad:?}");
        // A later grant (in real time) with a smaller token.
        let mut h = clean_lease_history();
        h[9] = op(1, acquire("a"), (36, 40), leased(2, 2, 1_700, 2_700));
        let bad = check(&h, &quotas());
        assert!(bad.iter().any(|v| v.contains("real-time order")), "{bad:?}");
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
    fn a_release_without_an_answer_may_have_freed_quota() {
        // The release of "a" timed out but was applied; "b" then fits the quota of 4.
        let h = vec![
            op(1, place("a", 3), (0, 5), ok(1)),
            op(1, release("a"), (6, 100), Outcome::Info { why: "timeout".into() }),
            op(2, place("b", 3), (7, 9), ok(3)),
        ];
        assert_eq!(check(&h, &quotas()), Vec::<String>::new());
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

    fn at(index: u64, at_ms: u64) -> Outcome {
        Outcome::applied(index, at_ms, None)
    }
    fn reserve(p: &str, n: u64) -> OpKind {
        OpKind::Reserve { tenant: "t".into(), placement: p.into(), instances: n }
    }
    fn confirm(p: &str) -> OpKind {
        OpKind::Confirm { tenant: "t".into(), placement: p.into() }
    }

    #[test]
    fn an_expired_reservation_frees_quota_and_is_not_confirmed_or_held() {
        // "r" (3 of 4) expires at log time 100; "b" (3) fits at log time 150, not at 50.
        let reserved = Outcome::applied(1, 10, Some(100));
        let clean = vec![
            op(1, reserve("r", 3), (0, 5), reserved.clone()),
            op(2, place("b", 3), (6, 9), at(2, 150)),
            op(1, confirm("r"), (10, 12), Outcome::Fail { reason: "PLACEMENT_NOT_FOUND".into() }),
            op(1, get("r"), (13, 14), read(false)),
        ];
        assert_eq!(check(&clean, &quotas()), Vec::<String>::new());
        let mut h = clean.clone();
        h[1] = op(2, place("b", 3), (6, 9), at(2, 50));
        let bad = check(&h, &quotas());
        assert!(bad.iter().any(|v| v.contains("quota exceeded")), "{bad:?}");
        // Confirmed after its expiry.
        let mut h = clean.clone();
        h[2] = op(1, confirm("r"), (10, 12), at(3, 160));
        let bad = check(&h, &quotas());
        assert!(bad.iter().any(|v| v.contains("after it expired")), "{bad:?}");
        // Still held after a later write moved log time past its expiry.
        let mut h = clean;
        h[3] = op(1, get("r"), (13, 14), read(true));
        let bad = check(&h, &quotas());
        assert!(bad.iter().any(|v| v.contains("expired reservation")), "{bad:?}");
    }

    #[test]
    fn a_placement_group_over_its_max_is_caught() {
        let in_group = |p: &str, n: u64| OpKind::Place {
            tenant: "t".into(),
            placement: p.into(),
            instances: n,
            fence: None,
            group: Some("g".into()),
        };
        let group = OpKind::CreateGroup { tenant: "t".into(), group: "g".into(), max: 2 };
        let clean = vec![
            op(100, group, (0, 1), at(1, 1)),
            op(1, in_group("a", 2), (2, 3), at(2, 2)),
            op(1, release("a"), (4, 5), at(3, 3)),
            op(2, in_group("b", 2), (6, 7), at(4, 4)),
        ];
        assert_eq!(check(&clean, &quotas()), Vec::<String>::new());
        let mut h = clean;
        h.remove(2);
        let bad = check(&h, &quotas());
        assert!(bad.iter().any(|v| v.contains("placement group t/g exceeded")), "{bad:?}");
    }

    #[test]
    fn a_write_after_its_tenants_deletion_is_caught() {
        let delete = OpKind::DeleteTenant { tenant: "t".into() };
        let clean = vec![
            op(1, place("a", 1), (0, 1), at(1, 1)),
            op(1, delete, (2, 3), at(2, 2)),
            op(2, place("b", 1), (4, 5), Outcome::Fail { reason: "TENANT_NOT_FOUND".into() }),
            op(0, get("a"), (6, 7), read(false)),
        ];
        assert_eq!(check(&clean, &quotas()), Vec::<String>::new());
        let mut h = clean.clone();
        h[2] = op(2, place("b", 1), (4, 5), at(3, 3));
        let bad = check(&h, &quotas());
        assert!(bad.iter().any(|v| v.contains("was deleted at log index 2")), "{bad:?}");
        let mut h = clean;
        h[3] = op(0, get("a"), (6, 7), read(true));
        let bad = check(&h, &quotas());
        assert!(bad.iter().any(|v| v.contains("deleted tenant")), "{bad:?}");
    }
}
