//! Lease safety (Berth's invariant 7), as both harnesses check it. A lease is a mutex whose
//! fencing token is the log index of its grant; a holder is told an expiry in log time, and
//! the guarded resource takes writes that carry the token. Per lease:
//!
//! - A grant's token is the log index of its grant, and no token is granted twice; grant
//!   log time never runs backwards along the tokens.
//! - At most one holder at any log index: every acknowledged use of a token (keep-alive,
//!   release, fenced write) lies after its grant, before the next grant and no later than an
//!   acknowledged release of it.
//! - At most one holder at any log time: the next grant comes no earlier than the latest
//!   expiry the holder was told before it (a lower bound of the real one), unless the holder
//!   may have released.
//! - The guarded resource never accepts a token lower than one it has already accepted: the
//!   tokens of acknowledged fenced writes do not decrease in log order.
//!
//! Only acknowledged operations are evidence; one whose outcome is unknown can only excuse
//! (a release that may have happened explains an early re-grant), never accuse.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// What a use of a token was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Use {
    KeepAlive,
    Release,
    /// A write to the guarded resource carrying the token.
    FencedWrite,
}

/// One operation of a history, as the lease checker sees it. `K` names a lease; `O` describes
/// the operation in a violation (the harness's own rendering of it).
#[derive(Clone, Debug)]
pub enum Event<K, O> {
    /// An acknowledged grant of `token`, answered at `log_index`, applied at log time `at_ms`,
    /// with the expiry its holder was told (if the answer said).
    Granted {
        lease: K,
        token: u64,
        log_index: Option<u64>,
        at_ms: u64,
        expires_at_ms: Option<u64>,
        op: O,
    },
    /// An acknowledged use of `token` at `log_index`, with the expiry it told the holder (a
    /// keep-alive's answer).
    Used { lease: K, token: u64, log_index: u64, how: Use, expires_at_ms: Option<u64>, op: O },
    /// A release of `token` that got no log index (no answer): it may have happened.
    MayHaveReleased { lease: K, token: u64 },
}

/// One broken rule, on one lease, found at operation `op`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation<K, O> {
    pub lease: K,
    pub op: O,
    pub broken: Broken<O>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Broken<O> {
    TokenNotLogIndex {
        token: u64,
        log_index: Option<u64>,
    },
    GrantedTwice {
        token: u64,
        first: O,
    },
    GrantTimeBackwards {
        token: u64,
        at_ms: u64,
        before: u64,
        before_at_ms: u64,
    },
    UsedBeforeGrant {
        token: u64,
        log_index: u64,
    },
    /// A stale token honoured: two holders at one log index.
    UsedAfterNextGrant {
        token: u64,
        log_index: u64,
        next: u64,
    },
    UsedAfterRelease {
        token: u64,
        log_index: u64,
        released: u64,
    },
    /// Two holders at one log time.
    GrantedWhileHeld {
        token: u64,
        told_ms: u64,
        next: u64,
        at_ms: u64,
    },
    GuardedTokenDecreased {
        token: u64,
        log_index: u64,
        highest: u64,
        highest_index: u64,
    },
}

impl<K: fmt::Display, O: fmt::Display> fmt::Display for Violation<K, O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (lease, op) = (&self.lease, &self.op);
        match &self.broken {
            Broken::TokenNotLogIndex { token, log_index } => {
                let index = log_index.map_or_else(|| "(none)".to_owned(), |i| i.to_string());
                write!(f, "lease {lease}: fencing token {token} is not the log index {index} of its grant: {op}")
            }
            Broken::GrantedTwice { token, first } => {
                write!(f, "lease {lease}: token {token} granted twice: {first} and {op}")
            }
            Broken::GrantTimeBackwards { token, at_ms, before, before_at_ms } => write!(
                f,
                "lease {lease}: token {token} granted at log time {at_ms} before token {before} at {before_at_ms}: {op}"
            ),
            Broken::UsedBeforeGrant { token, log_index } => write!(
                f,
                "lease {lease}: token {token} used at log index {log_index}, before it was granted: {op}"
            ),
            Broken::UsedAfterNextGrant { token, log_index, next } => write!(
                f,
                "two lease holders: lease {lease}: stale token {token} accepted at log index {log_index} after token {next} was granted: {op}"
            ),
            Broken::UsedAfterRelease { token, log_index, released } => write!(
                f,
                "lease {lease}: token {token} accepted at log index {log_index} after its release at {released}: {op}"
            ),
            Broken::GrantedWhileHeld { token, told_ms, next, at_ms } => write!(
                f,
                "two lease holders: lease {lease}: token {token} was told it held until log time {told_ms}, but token {next} was granted at {at_ms} (two holders at once): {op}"
            ),
            Broken::GuardedTokenDecreased { token, log_index, highest, highest_index } => write!(
                f,
                "lease {lease}: the guarded resource accepted token {token} at log index {log_index} after token {highest} at {highest_index}: {op}"
            ),
        }
    }
}

struct Grant<O> {
    at_ms: u64,
    expires_at_ms: Option<u64>,
    op: O,
}

struct Used<O> {
    log_index: u64,
    how: Use,
    expires_at_ms: Option<u64>,
    op: O,
}

/// Checks the lease events of a history (in the order they were recorded); every violation of
/// the rules in the module header, grouped by rule.
pub fn check<K: Ord + Copy, O: Copy>(
    events: impl IntoIterator<Item = Event<K, O>>,
) -> Vec<Violation<K, O>> {
    let mut bad = Vec::new();
    let mut grants: BTreeMap<K, BTreeMap<u64, Grant<O>>> = BTreeMap::new();
    let mut uses: BTreeMap<(K, u64), Vec<Used<O>>> = BTreeMap::new();
    let mut may_have_released: BTreeSet<(K, u64)> = BTreeSet::new();
    for event in events {
        match event {
            Event::Granted { lease, token, log_index, at_ms, expires_at_ms, op } => {
                if log_index != Some(token) {
                    let broken = Broken::TokenNotLogIndex { token, log_index };
                    bad.push(Violation { lease, op, broken });
                }
                let grant = Grant { at_ms, expires_at_ms, op };
                if let Some(first) = grants.entry(lease).or_default().insert(token, grant) {
                    let broken = Broken::GrantedTwice { token, first: first.op };
                    bad.push(Violation { lease, op, broken });
                }
            }
            Event::Used { lease, token, log_index, how, expires_at_ms, op } => {
                if how == Use::Release {
                    may_have_released.insert((lease, token));
                }
                uses.entry((lease, token)).or_default().push(Used {
                    log_index,
                    how,
                    expires_at_ms,
                    op,
                });
            }
            Event::MayHaveReleased { lease, token } => {
                may_have_released.insert((lease, token));
            }
        }
    }
    for (lease, by_token) in &grants {
        let tokens: Vec<(&u64, &Grant<O>)> = by_token.iter().collect();
        for pair in tokens.windows(2) {
            let ((before, a), (token, b)) = (pair[0], pair[1]);
            if b.at_ms < a.at_ms {
                let broken = Broken::GrantTimeBackwards {
                    token: *token,
                    at_ms: b.at_ms,
                    before: *before,
                    before_at_ms: a.at_ms,
                };
                bad.push(Violation { lease: *lease, op: b.op, broken });
            }
        }
    }
    for ((lease, token), used) in &uses {
        let (lease, token) = (*lease, *token);
        let next = grants.get(&lease).and_then(|g| g.range(token + 1..).next()).map(|(t, _)| *t);
        let released = used.iter().filter(|u| u.how == Use::Release).map(|u| u.log_index).min();
        for u in used {
            let (log_index, op) = (u.log_index, u.op);
            if log_index <= token {
                let broken = Broken::UsedBeforeGrant { token, log_index };
                bad.push(Violation { lease, op, broken });
            }
            if let Some(next) = next.filter(|next| log_index >= *next) {
                let broken = Broken::UsedAfterNextGrant { token, log_index, next };
                bad.push(Violation { lease, op, broken });
            }
            if let Some(released) = released.filter(|released| log_index > *released) {
                let broken = Broken::UsedAfterRelease { token, log_index, released };
                bad.push(Violation { lease, op, broken });
            }
        }
    }
    for (lease, by_token) in &grants {
        let tokens: Vec<(&u64, &Grant<O>)> = by_token.iter().collect();
        for pair in tokens.windows(2) {
            let ((token, held), (next, granted)) = (pair[0], pair[1]);
            if may_have_released.contains(&(*lease, *token)) {
                continue;
            }
            let told = uses
                .get(&(*lease, *token))
                .into_iter()
                .flatten()
                .filter(|u| u.log_index < *next)
                .filter_map(|u| u.expires_at_ms)
                .chain(held.expires_at_ms)
                .max();
            if let Some(told_ms) = told.filter(|told| granted.at_ms < *told) {
                let broken = Broken::GrantedWhileHeld {
                    token: *token,
                    told_ms,
                    next: *next,
                    at_ms: granted.at_ms,
                };
                bad.push(Violation { lease: *lease, op: granted.op, broken });
            }
        }
    }
    let mut fenced: BTreeMap<K, BTreeMap<u64, (u64, O)>> = BTreeMap::new();
    for ((lease, token), used) in &uses {
        for u in used.iter().filter(|u| u.how == Use::FencedWrite) {
            fenced.entry(*lease).or_default().insert(u.log_index, (*token, u.op));
        }
    }
    for (lease, by_index) in fenced {
        let mut highest: Option<(u64, u64)> = None;
        for (log_index, (token, op)) in by_index {
            match highest {
                Some((top, highest_index)) if token < top => {
                    let broken = Broken::GuardedTokenDecreased {
                        token,
                        log_index,
                        highest: top,
                        highest_index,
                    };
                    bad.push(Violation { lease, op, broken });
                }
                _ => highest = Some((token, log_index)),
            }
        }
    }
    bad
}

#[cfg(test)]
mod tests {
    use super::*;

    type E = Event<&'static str, u64>;

    /// Op `op` grants `token` at its own log index, log time `at`, told to hold until `until`.
    fn grant(op: u64, token: u64, at: u64, until: u64) -> E {
        let expires_at_ms = Some(until);
        Event::Granted { lease: "l", token, log_index: Some(token), at_ms: at, expires_at_ms, op }
    }
    fn used(op: u64, token: u64, log_index: u64, how: Use) -> E {
        Event::Used { lease: "l", token, log_index, how, expires_at_ms: None, op }
    }
    fn broken(events: Vec<E>) -> Vec<Broken<u64>> {
        check(events).into_iter().map(|v| v.broken).collect()
    }
    /// Two holders in turn, each writing to the guarded resource; the first releases.
    fn clean() -> Vec<E> {
        vec![
            grant(1, 3, 100, 1_100),
            used(2, 3, 4, Use::FencedWrite),
            used(3, 3, 5, Use::Release),
            grant(4, 9, 600, 1_600),
            used(5, 9, 10, Use::FencedWrite),
        ]
    }

    // A clean hand-over passes, and the rendering names the lease, the rule and the op.
    #[test]
    fn a_clean_hand_over_passes() {
        assert_eq!(broken(clean()), Vec::new());
        let v = check(vec![grant(7, 3, 0, 10), grant(8, 3, 5, 10)]);
        assert_eq!(v[0].to_string(), "lease l: token 3 granted twice: 7 and 8");
    }

    // A second holder granted while the first was told it still held is caught.
    #[test]
    fn a_double_holder_is_caught() {
        let mut h = clean();
        h.remove(2);
        assert_eq!(
            broken(h.clone()),
            vec![Broken::GrantedWhileHeld { token: 3, told_ms: 1_100, next: 9, at_ms: 600 }]
        );
        // An unanswered release excuses it; a failed one is not an event at all.
        h.push(Event::MayHaveReleased { lease: "l", token: 3 });
        assert_eq!(broken(h), Vec::new());
    }

    // A stale fencing token honoured after the next grant is caught, twice: as two holders
    // at one log index and as the guarded resource going back in tokens.
    #[test]
    fn a_stale_fencing_token_is_caught() {
        let mut h = clean();
        h.push(used(6, 3, 11, Use::FencedWrite));
        assert_eq!(
            broken(h),
            vec![
                Broken::UsedAfterNextGrant { token: 3, log_index: 11, next: 9 },
                Broken::UsedAfterRelease { token: 3, log_index: 11, released: 5 },
                Broken::GuardedTokenDecreased {
                    token: 3,
                    log_index: 11,
                    highest: 9,
                    highest_index: 10
                },
            ]
        );
    }

    // Tokens that are not their grant's log index, reused, or used before their grant are
    // caught, and so is grant time running backwards.
    #[test]
    fn bad_tokens_are_caught() {
        let not_index = Event::Granted {
            lease: "l",
            token: 3,
            log_index: Some(2),
            at_ms: 0,
            expires_at_ms: None,
            op: 1,
        };
        assert_eq!(
            broken(vec![not_index]),
            vec![Broken::TokenNotLogIndex { token: 3, log_index: Some(2) }]
        );
        let h = vec![grant(1, 3, 500, 600), used(2, 3, 2, Use::KeepAlive), grant(3, 9, 400, 900)];
        assert_eq!(
            broken(h),
            vec![
                Broken::GrantTimeBackwards { token: 9, at_ms: 400, before: 3, before_at_ms: 500 },
                Broken::UsedBeforeGrant { token: 3, log_index: 2 },
                Broken::GrantedWhileHeld { token: 3, told_ms: 600, next: 9, at_ms: 400 },
            ]
        );
    }

    // A keep-alive's expiry counts only if it was answered before the next grant's index.
    #[test]
    fn a_keep_alive_extends_what_the_holder_was_told() {
        let keep_alive = |op, log_index, until| Event::Used {
            lease: "l",
            token: 3,
            log_index,
            how: Use::KeepAlive,
            expires_at_ms: Some(until),
            op,
        };
        let h = vec![grant(1, 3, 100, 500), keep_alive(2, 4, 900), grant(3, 9, 600, 1_600)];
        assert_eq!(
            broken(h),
            vec![Broken::GrantedWhileHeld { token: 3, told_ms: 900, next: 9, at_ms: 600 }]
        );
    }
}
