//! **restart-read**: a linearizable read served by a leader that survived its own restart.
//!
//! The writer acknowledges one to three placements of tenant `durable`; at once (the next
//! simulation step) every replica is crashed, so each loses what it had not flushed — the
//! commit mark included, which the log never syncs on its own. The old leader restarts first
//! and alone; openraft restores it as leader in the same term, without an election, with the
//! commit index it found on disk. The writer reads its placements back, linearizably, from
//! that replica only, newest first, while its peers are still down; they restart 20–200 ms
//! after it serves again, so the read's quorum round (and the first commit of the restarted
//! leader) can only complete then. The read must find every acknowledged placement. With
//! openraft's own read index (`max(committed, first log of the term)`) it can miss them: the
//! recovered commit index lags the acknowledged entries (Jepsen's "stale read after a
//! whole-cluster kill"; `Replica::leader_read_index` is the fix). The history checker flags
//! such a read as a lost write; `verify` also checks that the story happened as told.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use berth::client::ClientSecurity;
use berth_rng::Rng;

use crate::cluster::{api_client, host, lock, replica_client, Params, Slot};
use crate::history::{Op, OpKind, Outcome};
use crate::ops::{place, read, Recorder};

/// The writer's tenant: no quota, and a worker of its own size.
pub const DURABLE: &str = "durable";
/// History client id of the writer.
pub const WRITER: u32 = 103;

/// The story's steps, shared by the writer (a turmoil client) and the run loop (which alone
/// can crash and restart hosts).
const WRITTEN: u64 = 1;
const LEADER_UP: u64 = 2;
const READ_DONE: u64 = 3;

/// What the writer and the run loop share.
#[derive(Default)]
pub(crate) struct Story {
    step: AtomicU64,
    /// The replica that led at the crash.
    leader: AtomicU64,
}

async fn wait_for(step: &AtomicU64, at_least: u64) {
    while step.load(Ordering::SeqCst) < at_least {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

fn placement(n: u64) -> String {
    format!("durable-{n}")
}

/// The writer's part: acknowledged writes, then (after the crash) the reads from the old
/// leader alone.
pub(crate) async fn writer(
    params: Params,
    tls: ClientSecurity,
    rec: Recorder,
    story: Arc<Story>,
    seed: u64,
) -> Result<(), String> {
    let mut rng = Rng::new(seed);
    let c = api_client(params.replicas, &tls, Duration::from_secs(5))?;
    // Let the background workload get going: the crash hits a busy leader.
    tokio::time::sleep(Duration::from_millis(rng.between(200, 1_500))).await;
    let writes = rng.between(1, 3);
    for n in 1..=writes {
        let mut placed = false;
        for _ in 0..20 {
            let id = placement(n);
            let outcome = place(&c, &rec, format!("writer-{id}"), DURABLE, &id, 1, None).await;
            if matches!(outcome, Outcome::Ok { .. }) {
                placed = true;
                break;
            }
        }
        if !placed {
            return Err(format!("the writer never placed {}", placement(n)));
        }
    }
    story.step.store(WRITTEN, Ordering::SeqCst);
    wait_for(&story.step, LEADER_UP).await;
    let leader = story.leader.load(Ordering::SeqCst);
    let pinned = replica_client(leader, &tls, Duration::from_secs(10))?;
    for n in (1..=writes).rev() {
        read(&pinned, &rec, DURABLE, &placement(n)).await;
    }
    story.step.store(READ_DONE, Ordering::SeqCst);
    Ok(())
}

enum Phase {
    /// Until the writes are acknowledged.
    Writing,
    /// Every replica down; the old leader restarts at `until`.
    Down {
        leader: u64,
        term: u64,
        until: u64,
    },
    /// The old leader restarted; waiting for it to serve.
    Restarting {
        leader: u64,
        term: u64,
    },
    /// The others restart at these times, in this order.
    Up {
        restarts: Vec<(u64, u64)>,
    },
    Done,
}

/// The run loop's part: the crash of every replica and the restarts.
pub(crate) struct Crasher {
    rng: Rng,
    replicas: u64,
    phase: Phase,
    /// What the run loop saw, for the report's scenario steps.
    pub(crate) seen: Vec<String>,
    /// The story did not happen as told (not a stale read: that is the checker's).
    pub(crate) problems: Vec<String>,
    pub(crate) first_restart_ms: Option<u64>,
}

impl Crasher {
    pub(crate) fn new(seed: u64, replicas: u64) -> Crasher {
        Crasher {
            rng: Rng::new(seed),
            replicas,
            phase: Phase::Writing,
            seen: Vec::new(),
            problems: Vec::new(),
            first_restart_ms: None,
        }
    }

    /// Moves the story on at simulated time `at`; says what it did to the hosts.
    pub(crate) fn act(
        &mut self,
        at: u64,
        sim: &mut turmoil::Sim<'_>,
        slots: &[Slot],
        story: &Story,
    ) -> Option<String> {
        match &mut self.phase {
            Phase::Writing => {
                if story.step.load(Ordering::SeqCst) < WRITTEN {
                    return None;
                }
                let leader = crate::nemesis::leader(slots)?;
                let term = lock(&slots[index(leader)]).as_ref()?.status().term;
                for id in 1..=self.replicas {
                    sim.crash(host(id));
                    *lock(&slots[index(id)]) = None;
                }
                story.leader.store(leader, Ordering::SeqCst);
                let down = self.rng.between(1, 50);
                self.phase = Phase::Down { leader, term, until: at + down };
                Some(format!(
                    "crash every replica (leader r{leader}, term {term}) for {down} ms, right after the acknowledgement"
                ))
            }
            Phase::Down { leader, term, until } => {
                if at < *until {
                    return None;
                }
                let (leader, term) = (*leader, *term);
                sim.bounce(host(leader));
                self.phase = Phase::Restarting { leader, term };
                Some(format!("restart r{leader} alone"))
            }
            Phase::Restarting { leader, term } => {
                let (leader, term) = (*leader, *term);
                let status = lock(&slots[index(leader)]).as_ref()?.status();
                let said = format!(
                    "r{leader} serves again as {} in term {} (term {term} before the crash); raft log: last entry {:?}, applied {:?}",
                    status.role, status.term, status.last_log_index, status.last_applied_index
                );
                if status.role != "Leader" || status.term != term {
                    self.problems.push(format!(
                        "the old leader did not come back as leader of the same term: {said}"
                    ));
                }
                self.seen.push(said.clone());
                let mut due = at + self.rng.between(20, 200);
                let mut restarts = Vec::new();
                for id in (1..=self.replicas).filter(|id| *id != leader) {
                    restarts.push((due, id));
                    due += self.rng.between(5, 50);
                }
                self.phase = Phase::Up { restarts };
                story.step.store(LEADER_UP, Ordering::SeqCst);
                Some(said)
            }
            Phase::Up { restarts } => {
                let &(due, id) = restarts.first()?;
                if at < due {
                    return None;
                }
                restarts.remove(0);
                sim.bounce(host(id));
                self.first_restart_ms.get_or_insert(at);
                if restarts.is_empty() {
                    self.phase = Phase::Done;
                }
                Some(format!("restart r{id}"))
            }
            Phase::Done => None,
        }
    }

    /// Restarts whatever is still down (at the end of the workload).
    pub(crate) fn heal(&mut self, sim: &mut turmoil::Sim<'_>) {
        match std::mem::replace(&mut self.phase, Phase::Done) {
            Phase::Down { .. } | Phase::Restarting { .. } => {
                self.problems.push("the story was cut short by the end of the workload".into());
                for id in 1..=self.replicas {
                    sim.bounce(host(id));
                }
            }
            Phase::Up { restarts } => {
                for (_, id) in restarts {
                    sim.bounce(host(id));
                }
            }
            Phase::Writing => self.problems.push("the writes were never acknowledged".into()),
            Phase::Done => {}
        }
    }
}

fn index(id: u64) -> usize {
    usize::try_from(id - 1).unwrap_or(0)
}

/// Checks that the story happened: the writes acknowledged, the crash, the old leader back
/// alone, its reads answered (found or not: a miss is the history checker's lost write, and
/// is reported here too). Returns the steps as seen.
pub(crate) fn verify(history: &[Op], crasher: &Crasher) -> Result<Vec<String>, String> {
    if let Some(problem) = crasher.problems.first() {
        return Err(problem.clone());
    }
    let mut steps = Vec::new();
    let written: Vec<(String, u64)> = history
        .iter()
        .filter(|op| op.client == WRITER)
        .filter_map(|op| match (&op.kind, &op.outcome) {
            (OpKind::Place { placement, .. }, Outcome::Ok { log_index: Some(i), .. }) => {
                Some((placement.clone(), *i))
            }
            _ => None,
        })
        .collect();
    if written.is_empty() {
        return Err("no write of the writer was acknowledged".into());
    }
    steps.push(format!("acknowledged before the crash: {written:?} (placement, log index)"));
    steps.extend(crasher.seen.iter().cloned());
    let reads: Vec<&Op> = history
        .iter()
        .filter(|op| op.client == WRITER && matches!(op.kind, OpKind::Read { .. }))
        .collect();
    if reads.len() != written.len() {
        return Err(format!("{} reads for {} writes", reads.len(), written.len()));
    }
    let first_restart = crasher.first_restart_ms.unwrap_or(u64::MAX);
    for op in reads {
        let OpKind::Read { placement, .. } = &op.kind else { continue };
        match &op.outcome {
            Outcome::Ok { found: Some(true), .. } => steps.push(format!(
                "read {placement} from the restarted leader at {}–{} ms (its peers back from {first_restart} ms): found",
                op.invoke_ms, op.complete_ms
            )),
            Outcome::Ok { found: Some(false), .. } => {
                return Err(format!(
                    "stale read: the restarted leader answered that the acknowledged {placement} does not exist (read at {}–{} ms, its peers back from {first_restart} ms)",
                    op.invoke_ms, op.complete_ms
                ))
            }
            other => return Err(format!("the read of {placement} was not answered: {other:?}")),
        }
    }
    Ok(steps)
}
