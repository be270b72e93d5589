//! The watcher: between simulation steps it looks into every running replica (its status,
//! its state and its memory log) and records what breaks, with the trace line of each look.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use berth::storage::MemLog;

use crate::cluster::{lock, Slot};
use crate::raft_checks::{Committed, Durable};

/// Watches every running replica: core invariants, one leader per term, equal state at
/// equal applied command index, applied ≤ committed (every applied entry is durable on a
/// quorum of voters), and committed entries never change in any replica's log.
#[derive(Default)]
pub(crate) struct Watcher {
    leaders: BTreeMap<u64, u64>,
    hashes: BTreeMap<u64, String>,
    committed: Committed,
    pub(crate) violations: Vec<String>,
}

impl Watcher {
    pub(crate) fn check(
        &mut self,
        slots: &[Slot],
        logs: &[Arc<Mutex<MemLog>>],
        trace: &mut Vec<String>,
        at: u64,
    ) {
        for (slot, log) in slots.iter().zip(logs) {
            let Some(replica) = lock(slot).clone() else { continue };
            let status = replica.status();
            trace.push(format!(
                "{at} r{} {} t{} a{} {}",
                status.id,
                status.role,
                status.term,
                status.applied_command_index,
                status.state_hash
            ));
            if status.role == "Leader" {
                if let Some(other) = self.leaders.insert(status.term, status.id) {
                    if other != status.id {
                        self.violations.push(format!(
                            "two leaders in term {}: r{other} and r{}",
                            status.term, status.id
                        ));
                    }
                }
            }
            let index = status.applied_command_index;
            match self.hashes.get(&index) {
                Some(hash) if *hash != status.state_hash => self.violations.push(format!(
                    "r{} differs from another replica at command index {index}",
                    status.id
                )),
                Some(_) => {}
                None => {
                    self.hashes.insert(index, status.state_hash.clone());
                }
            }
            if let Err(broken) = replica.read_local(|s| s.scheduler.check_invariants()) {
                self.violations.push(format!("r{} broke invariants: {broken:?}", status.id));
            }
            // Applied ≤ committed, and committed entries never change (`raft_checks`).
            let Some(applied) = status.last_applied_index else { continue };
            let Some(entry) = lock(log).entry(applied).map(<[u8]>::to_vec) else { continue };
            let copies: Vec<(Option<Vec<u8>>, Option<u64>)> = status
                .voters
                .keys()
                .filter_map(|v| logs.get(usize::try_from(*v).ok()?.checked_sub(1)?))
                .map(|l| {
                    let l = lock(l);
                    (l.durable_entry(applied).map(<[u8]>::to_vec), l.durable_purged_index())
                })
                .collect();
            let voters: Vec<Durable<'_>> = copies
                .iter()
                .map(|(entry, purged)| Durable { entry: entry.as_deref(), purged: *purged })
                .collect();
            if let Some(v) = self.committed.applied(status.id, applied, &entry, &voters) {
                self.violations.push(v);
            }
            let log = lock(log);
            self.violations
                .extend(self.committed.check_prefix(status.id, applied, |i| log.entry(i)));
        }
    }
}
