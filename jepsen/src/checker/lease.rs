//! The `lease` workload: clients Acquire a lease (non-blocking), write to a guarded resource
//! with the fencing token (a Place carrying a Fence), KeepAlive, stall past the TTL (a paused
//! client), and Release. Every grant's token is its log index, so the checks read the log
//! order straight from the history.
//!
//! `check` is the lease-safety model the simulation checks too (`sim/src/history.rs`,
//! `check_leases`): both adapt their histories to `berth_check::lease`, which holds the rules
//! — tokens are distinct and equal to the grant's log index; at most one holder at a log index
//! (no keep-alive, release or fenced write with a token after a newer grant or after its
//! release) and at a log time (a grant lands only after the previous holder's lease expired,
//! as far as any acknowledged Acquire/KeepAlive told it, or it may have released); the guarded
//! resource never goes back in tokens. Only acknowledged operations count as evidence; unknown
//! ones can only excuse (an unknown Release may explain an early re-grant), never accuse.
//!
//! `linearizable` (Jepsen's alone) also runs the WGL search per lease against a mutex-with-tokens model: a
//! grant needs no holder (or one expired by the grant's log time) and a larger token; a
//! KeepAlive, Release or fenced write is acknowledged only while its token holds the lease.
//! The model never learns of expiry extensions (keep-alives with unknown outcome, the grace a
//! new leader gives): those only make later grants illegal, so ignoring them cannot accuse a
//! correct history.

use std::collections::BTreeMap;
use std::fmt;

use berth_check::lease::{self as model, Event, Use};

use super::wgl::{self, Model, Verdict};
use super::CheckResult;
use crate::history::{Pair, Type};

/// An operation as a lease violation names it.
#[derive(Clone, Copy)]
struct Shown<'a>(&'a Pair<'a>);

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "op {} {}", self.0.invoke.op, self.0.invoke.f)
    }
}

/// The log-index and expiry checks of the module header: `berth_check::lease`, the model the
/// simulation checks too; this turns each lease operation into its event.
pub fn check(pairs: &[Pair<'_>]) -> CheckResult {
    let mut r = CheckResult::new("lease (one holder, fencing tokens, no stale fenced write)");
    let mut events = Vec::new();
    for p in pairs.iter().filter(|p| p.invoke.workload == "lease") {
        let (lease, op) = (p.invoke.key.as_str(), Shown(p));
        let log_index = p.done_field(|d| d.log_index);
        let expires_at_ms = p.done_field(|d| d.expires_at_ms);
        match (p.invoke.f.as_str(), p.kind()) {
            ("acquire", Type::Ok) => {
                r.checked += 1;
                let Some(token) = p.done_field(|d| d.value) else {
                    r.violation(format!("{op}: acquire acknowledged without a token"));
                    continue;
                };
                let at_ms = p.done_field(|d| d.applied_at_ms).unwrap_or(0);
                events.push(Event::Granted { lease, token, log_index, at_ms, expires_at_ms, op });
            }
            (f @ ("keepalive" | "fenced-write" | "release-lease"), Type::Ok) => {
                r.checked += 1;
                let (Some(token), Some(log_index)) = (p.invoke.arg, log_index) else { continue };
                let (how, expires_at_ms) = match f {
                    "keepalive" => (Use::KeepAlive, expires_at_ms),
                    "release-lease" => (Use::Release, None),
                    _ => (Use::FencedWrite, None),
                };
                events.push(Event::Used { lease, token, log_index, how, expires_at_ms, op });
            }
            ("release-lease", Type::Info) => {
                if let Some(token) = p.invoke.arg {
                    events.push(Event::MayHaveReleased { lease, token });
                }
            }
            _ => {}
        }
    }
    for v in model::check(events) {
        r.violation(v.to_string());
    }
    r
}

/// Who holds the lease, as far as the model knows.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Holder {
    Free,
    /// Token and the latest expiry an acknowledged op reported (log time, ms).
    Known(u64, u64),
    /// Granted by an acquire whose answer was lost: token and expiry unknown.
    Unknown,
}

/// (holder, last token granted)
pub struct Mutex;

impl Model for Mutex {
    type State = (Holder, u64);
    fn init(&self) -> Self::State {
        (Holder::Free, 0)
    }
    fn step(&self, state: &Self::State, op: &Pair<'_>) -> Vec<Self::State> {
        let (holder, last) = state;
        let token = op.invoke.arg;
        let held_by = |t: Option<u64>| matches!(holder, Holder::Known(h, _) if Some(*h) == t);
        match (op.invoke.f.as_str(), op.kind()) {
            ("acquire", Type::Ok) => {
                let (Some(t), Some(at), Some(until)) = (
                    op.done_field(|d| d.value),
                    op.done_field(|d| d.applied_at_ms),
                    op.done_field(|d| d.expires_at_ms),
                ) else {
                    return Vec::new();
                };
                let free = match holder {
                    Holder::Free | Holder::Unknown => true,
                    Holder::Known(_, expires) => *expires <= at,
                };
                if free && t > *last {
                    vec![(Holder::Known(t, until), t)]
                } else {
                    Vec::new()
                }
            }
            ("acquire", Type::Fail)
                if op.done_field(|d| d.error.clone()).as_deref() == Some("LEASE_HELD") =>
            {
                if *holder == Holder::Free {
                    Vec::new()
                } else {
                    vec![state.clone()]
                }
            }
            ("acquire", Type::Info) => vec![state.clone(), (Holder::Unknown, *last)],
            ("keepalive", Type::Ok) if held_by(token) => {
                let until = op.done_field(|d| d.expires_at_ms).unwrap_or(0);
                vec![(Holder::Known(token.unwrap_or(0), until), *last)]
            }
            ("release-lease", Type::Ok) if held_by(token) => vec![(Holder::Free, *last)],
            ("release-lease", Type::Info) if held_by(token) => {
                vec![state.clone(), (Holder::Free, *last)]
            }
            ("fenced-write", Type::Ok) if held_by(token) => vec![state.clone()],
            (_, Type::Ok) => Vec::new(),
            // Other failures and unknown outcomes change nothing the model tracks.
            _ => vec![state.clone()],
        }
    }
}

pub fn linearizable(pairs: &[Pair<'_>]) -> CheckResult {
    let mut r = CheckResult::new("lease-linearizable (WGL per lease, mutex with tokens)");
    let mut leases: BTreeMap<String, Vec<Pair<'_>>> = BTreeMap::new();
    for p in pairs.iter().filter(|p| p.invoke.workload == "lease") {
        // Failed ops that say nothing about the holder are left out.
        let informative = p.kind() != Type::Fail
            || (p.invoke.f == "acquire"
                && p.done_field(|d| d.error.clone()).as_deref() == Some("LEASE_HELD"));
        if informative {
            leases.entry(p.invoke.key.clone()).or_default().push(*p);
        }
    }
    for (name, ops) in leases {
        r.checked += u64::try_from(ops.len()).unwrap_or(u64::MAX);
        match wgl::check(&Mutex, &ops) {
            Verdict::Linearizable => {}
            Verdict::NotLinearizable { stuck_op, linearized } => r.violation(format!(
                "lease {name}: not linearizable; op {stuck_op} cannot be explained after {linearized} ops"
            )),
            Verdict::Unknown(why) => r.unknown(format!("lease {name}: {why}")),
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

    fn acquire(h: &mut H, t: u64, p: u64, token: u64, at: u64, until: u64) {
        let op = h.invoke(t, p, Op::invoke("lease", "acquire", "lock").with_id(format!("p{p}")));
        h.done(t + 5, op, Type::Ok, |o| {
            o.value = Some(token);
            o.log_index = Some(token);
            o.applied_at_ms = Some(at);
            o.expires_at_ms = Some(until);
        });
    }
    fn fenced(h: &mut H, t: u64, p: u64, token: u64, index: u64) {
        let op = h.invoke(t, p, Op::invoke("lease", "fenced-write", "lock").with_arg(token));
        h.done(t + 5, op, Type::Ok, |o| o.log_index = Some(index));
    }

    /// A second grant while the first holder's lease is still live is a double grant.
    #[test]
    fn double_grant_is_caught() {
        let mut h = H::new();
        acquire(&mut h, 0, 1, 10, 1_000, 3_000);
        acquire(&mut h, 10, 2, 20, 2_000, 4_000);
        let r = check(&pairs(&h.ops));
        assert_eq!(r.valid, Valid::False);
        assert!(r.details[0].contains("two holders"), "{r:?}");
        // After expiry it is fine.
        let mut h = H::new();
        acquire(&mut h, 0, 1, 10, 1_000, 3_000);
        acquire(&mut h, 10, 2, 20, 3_000, 5_000);
        assert_eq!(check(&pairs(&h.ops)).valid, Valid::True);
    }

    /// A fenced write with an old token accepted after a newer grant is caught.
    #[test]
    fn stale_fenced_write_is_caught() {
        let mut h = H::new();
        acquire(&mut h, 0, 1, 10, 1_000, 3_000);
        fenced(&mut h, 10, 1, 10, 12);
        acquire(&mut h, 20, 2, 20, 3_000, 5_000);
        assert_eq!(check(&pairs(&h.ops)).valid, Valid::True);
        fenced(&mut h, 30, 1, 10, 25);
        let r = check(&pairs(&h.ops));
        assert_eq!(r.valid, Valid::False);
        assert!(r.details[0].contains("stale token"), "{r:?}");
    }

    /// The WGL search accepts a clean hand-over and catches the double grant and the stale
    /// fenced write.
    #[test]
    fn wgl_catches_double_grant_and_stale_write() {
        let mut h = H::new();
        acquire(&mut h, 0, 1, 10, 1_000, 3_000);
        fenced(&mut h, 10, 1, 10, 12);
        acquire(&mut h, 20, 2, 20, 3_000, 5_000);
        let held = h.invoke(30, 3, Op::invoke("lease", "acquire", "lock").with_id("p3"));
        h.done(35, held, Type::Fail, |o| o.error = Some("LEASE_HELD".into()));
        assert_eq!(linearizable(&pairs(&h.ops)).valid, Valid::True);
        fenced(&mut h, 40, 1, 10, 25);
        assert_eq!(linearizable(&pairs(&h.ops)).valid, Valid::False);
        let mut h = H::new();
        acquire(&mut h, 0, 1, 10, 1_000, 3_000);
        acquire(&mut h, 10, 2, 20, 2_000, 4_000);
        assert_eq!(linearizable(&pairs(&h.ops)).valid, Valid::False);
    }

    /// The same token granted to two acquires is caught.
    #[test]
    fn duplicate_token_is_caught() {
        let mut h = H::new();
        acquire(&mut h, 0, 1, 10, 1_000, 3_000);
        acquire(&mut h, 10, 2, 10, 4_000, 6_000);
        assert_eq!(check(&pairs(&h.ops)).valid, Valid::False);
    }
}
