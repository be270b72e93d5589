//! Raft safety checks over the replicas' logs, read from outside (the simulation keeps each
//! replica's memory log): applied ≤ committed, and committed entries never change. Entries are
//! compared as encoded bytes (the same entry encodes the same on every replica).

use std::collections::BTreeMap;

/// What one voter's log durably holds at the index being checked.
#[derive(Clone, Copy, Debug, Default)]
pub struct Durable<'a> {
    /// The flushed entry at that index, if any.
    pub entry: Option<&'a [u8]>,
    /// How far the log is durably purged (those entries are inside a snapshot).
    pub purged: Option<u64>,
}

/// The entries seen committed, by log index.
#[derive(Debug, Default)]
pub struct Committed {
    entries: BTreeMap<u64, Vec<u8>>,
}

impl Committed {
    /// A replica applied `entry` at `index`, knowing `voters`. Applied ≤ committed: the entry
    /// must be durable on a quorum of them (or inside their purged prefix); and it must be the
    /// entry seen committed at that index before, if any. Returns the violation, if any.
    pub fn applied(
        &mut self,
        replica: u64,
        index: u64,
        entry: &[u8],
        voters: &[Durable<'_>],
    ) -> Option<String> {
        let holders = voters
            .iter()
            .filter(|v| v.entry == Some(entry) || v.purged.is_some_and(|p| p >= index))
            .count();
        if holders * 2 <= voters.len() {
            return Some(format!(
                "r{replica} applied log index {index}, durable on only {holders} of {} voters",
                voters.len()
            ));
        }
        match self.entries.get(&index) {
            Some(seen) if seen.as_slice() != entry => {
                Some(format!("committed entry at log index {index} changed (seen on r{replica})"))
            }
            Some(_) => None,
            None => {
                self.entries.insert(index, entry.to_vec());
                None
            }
        }
    }

    /// Committed entries never change: a replica's log up to its applied index holds exactly
    /// them (above it, a lagging replica may still hold a conflicting uncommitted entry).
    pub fn check_prefix<'a>(
        &self,
        replica: u64,
        applied: u64,
        entry_at: impl Fn(u64) -> Option<&'a [u8]>,
    ) -> Vec<String> {
        self.entries
            .range(..=applied)
            .filter(|(index, entry)| entry_at(**index).is_some_and(|e| e != entry.as_slice()))
            .map(|(index, _)| {
                format!(
                    "committed entry at log index {index} differs on r{replica}, which applied up to {applied}"
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on(entry: &[u8]) -> Durable<'_> {
        Durable { entry: Some(entry), purged: None }
    }

    #[test]
    fn an_entry_on_a_quorum_passes() {
        // Two of three voters flushed it; the third purged past it.
        let mut c = Committed::default();
        let purged = Durable { entry: None, purged: Some(9) };
        assert_eq!(c.applied(1, 7, b"e7", &[on(b"e7"), Durable::default(), on(b"e7")]), None);
        assert_eq!(c.applied(2, 7, b"e7", &[purged, on(b"e7"), Durable::default()]), None);
        assert!(c.check_prefix(3, 7, |i| (i == 7).then_some(&b"e7"[..])).is_empty());
    }

    #[test]
    fn an_entry_applied_before_it_is_committed_is_caught() {
        // Applied ≤ committed broken: only the replica itself (and an unflushed copy) has it.
        let mut c = Committed::default();
        let unflushed = Durable::default();
        let bad = c.applied(1, 7, b"e7", &[on(b"e7"), unflushed, on(b"other")]);
        assert!(bad.is_some_and(|v| v.contains("durable on only 1 of 3")));
    }

    #[test]
    fn a_committed_entry_that_changes_is_caught() {
        let mut c = Committed::default();
        assert_eq!(c.applied(1, 7, b"e7", &[on(b"e7"), on(b"e7"), on(b"e7")]), None);
        let bad = c.applied(2, 7, b"x7", &[on(b"x7"), on(b"x7"), on(b"e7")]);
        assert!(bad.is_some_and(|v| v.contains("changed")));
        // A replica whose applied prefix holds something else at a committed index.
        let bad = c.check_prefix(3, 8, |i| (i == 7).then_some(&b"x7"[..]));
        assert_eq!(bad.len(), 1, "{bad:?}");
        // Above its applied index a lagging replica may hold a conflicting entry.
        assert!(c.check_prefix(3, 6, |i| (i == 7).then_some(&b"x7"[..])).is_empty());
    }
}
