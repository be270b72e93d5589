//! **leader-cut**: workers heartbeating through a leader cut off from its followers stay up.
//!
//! Three agents heartbeat workers `cw1..cw3` of pool `cut` (TTL `TTL_MS`) every quarter of
//! the TTL; agent `i` tries replica `i` first and fails over to the others, as every client
//! does. The lease grace, which a new leader's first entry gives every live worker, is set
//! to `GRACE_MS`, and a forwarded write is tried for production's deadline (5 s). Once every
//! worker has been heartbeat for a second, the leader is cut off from every other replica
//! (clients still reach it) for `CUT_MS`, longer than that deadline, and then healed.
//!
//! The followers elect a new leader among themselves. A follower forwarding a heartbeat batch
//! to the old leader when the cut came must give it up for the new leader: the batches of a
//! replica go one at a time, so until it does, every heartbeat reaching it waits behind one
//! that cannot be answered. Before that fix (found by `berth stress chaos`), both followers
//! waited out the whole deadline and every worker went down once the new leader's log time
//! passed the grace: the work they held was released (`WORKER_LOST`) although every agent
//! had kept heartbeating. The check: no worker ever went down, each was heartbeat during the
//! cut, and a new leader was elected during it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth::client::{self, pb, Client, ClientSecurity};

use crate::cluster::{api_client, api_client_from, host, lock, now_ms, Params, Slot};
use crate::ops::must;

pub const POOL: &str = "cut";
pub const AGENTS: u64 = 3;
const TTL_MS: u64 = 1_000;
const GRACE_MS: u64 = 3_000;
/// How long the leader is cut off: longer than a forwarded write's deadline.
const CUT_MS: u64 = 7_000;
/// The simulated time the scenario needs: setup, a second of heartbeats, the cut, the settle.
pub const WORKLOAD_MS: u64 = 14_000;

/// The story's steps, shared by the agents and the run loop (which alone can cut).
const SETTING_UP: u64 = 0;
const BEATING: u64 = 1;
const HEALED: u64 = 2;
const DONE: u64 = 3;

pub fn worker(i: u64) -> String {
    format!("cw{i}")
}

/// Each worker as the final read showed it: (down now, log indexes of its downs).
type WorkersRead = BTreeMap<String, (bool, Vec<u64>)>;

/// What the agents and the run loop share.
#[derive(Default)]
pub(crate) struct Story {
    step: AtomicU64,
    /// When every worker had been heartbeat once (simulated ms).
    beating_since: AtomicU64,
    /// Each worker's acknowledged heartbeats, by when they were sent (simulated ms).
    acks: Mutex<BTreeMap<String, Vec<u64>>>,
    final_read: Mutex<Option<WorkersRead>>,
}

async fn until_step(story: &Story, at_least: u64) {
    while story.step.load(Ordering::SeqCst) < at_least {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn setup(c: &Client) -> Result<(), String> {
    let read = must(c, pb::GetConfigRequest { read: None }, |ch, r| async move {
        client::cluster(ch).get_config(r).await
    })
    .await?;
    let mut config = read.config.unwrap_or_default();
    config.lease_grace_ms = GRACE_MS;
    let r = pb::SetConfigRequest { request_id: "cut-grace".into(), config: Some(config) };
    must(c, r, |ch, r| async move { client::cluster(ch).set_config(r).await }).await?;
    for i in 1..=AGENTS {
        let r = pb::RegisterWorkerRequest {
            request_id: format!("cut-{}", worker(i)),
            worker_id: worker(i),
            pool: POOL.into(),
            capacity: Some(pb::Resources { cpu_millis: 1_000, memory_mib: 1_000 }),
            ..Default::default()
        };
        must(c, r, |ch, r| async move { client::workers(ch).register_worker(r).await }).await?;
    }
    let r = pb::SetPoolWorkerTtlRequest {
        request_id: "cut-ttl".into(),
        pool: POOL.into(),
        ttl_ms: TTL_MS,
        reset: false,
    };
    must(c, r, |ch, r| async move { client::workers(ch).set_pool_worker_ttl(r).await }).await?;
    Ok(())
}

/// Agent `i`: heartbeats `worker(i)` every quarter TTL until a while after the heal.
async fn agent(params: Params, tls: ClientSecurity, story: Arc<Story>, i: u64) {
    let Ok(c) = api_client_from(i, params.replicas, &tls, Duration::from_millis(2 * TTL_MS)) else {
        return;
    };
    let me = worker(i);
    while story.step.load(Ordering::SeqCst) < DONE {
        let sent = now_ms();
        let r = pb::HeartbeatRequest { worker_id: me.clone() };
        let beat = c.call(r, |ch, r| async move { client::workers(ch).heartbeat(r).await });
        if beat.await.is_ok() {
            let mut acks = lock(&story.acks);
            acks.entry(me.clone()).or_default().push(sent);
            if story.step.load(Ordering::SeqCst) == SETTING_UP
                && acks.len() == usize::try_from(AGENTS).unwrap_or(usize::MAX)
            {
                story.beating_since.store(now_ms(), Ordering::SeqCst);
                story.step.store(BEATING, Ordering::SeqCst);
            }
        }
        let next = sent + TTL_MS / 4;
        tokio::time::sleep(Duration::from_millis(next.saturating_sub(now_ms()).max(1))).await;
    }
}

/// Sets the pool up, runs the agents, and once the cut has healed (and two TTLs more) reads
/// every worker.
pub(crate) async fn agents(
    params: Params,
    tls: ClientSecurity,
    story: Arc<Story>,
) -> Result<(), String> {
    let c = api_client(params.replicas, &tls, Duration::from_secs(10))?;
    setup(&c).await?;
    let running: Vec<_> = (1..=AGENTS)
        .map(|i| tokio::spawn(agent(params.clone(), tls.clone(), story.clone(), i)))
        .collect();
    until_step(&story, HEALED).await;
    tokio::time::sleep(Duration::from_millis(2 * TTL_MS)).await;
    let r = pb::ListWorkersRequest {
        pool: POOL.into(),
        page: Some(pb::Page { after: String::new(), limit: 100 }),
        read: None,
    };
    let read =
        must(&c, r, |ch, r| async move { client::workers(ch).list_workers(r).await }).await?;
    let workers = read.workers.iter().map(|w| {
        use pb::worker_transition::State;
        let downs = w.history.iter().filter(|t| t.state() == State::Down);
        (w.worker_id.clone(), (w.down_since_ms.is_some(), downs.map(|t| t.log_index).collect()))
    });
    *lock(&story.final_read) = Some(workers.collect());
    story.step.store(DONE, Ordering::SeqCst);
    for agent in running {
        let _ = agent.await;
    }
    Ok(())
}

enum Phase {
    Waiting,
    Cut { leader: u64, term: u64, from: u64 },
    Done,
}

/// The run loop's part: the cut and the heal.
pub(crate) struct Cutter {
    replicas: u64,
    phase: Phase,
    /// When the cut began (simulated ms).
    cut_at: Option<u64>,
    /// The first replica seen leading a later term during the cut: (id, term, ms into the cut).
    elected: Option<(u64, u64, u64)>,
    /// What the run loop saw, for the report's scenario steps.
    seen: Vec<String>,
    problems: Vec<String>,
}

impl Cutter {
    pub(crate) fn new(replicas: u64) -> Cutter {
        Cutter {
            replicas,
            phase: Phase::Waiting,
            cut_at: None,
            elected: None,
            seen: Vec::new(),
            problems: Vec::new(),
        }
    }

    fn pairs(&self, leader: u64) -> Vec<(String, String)> {
        (1..=self.replicas).filter(|id| *id != leader).map(|id| (host(leader), host(id))).collect()
    }

    /// Moves the story on at simulated time `at`; says what it did to the hosts.
    pub(crate) fn act(
        &mut self,
        at: u64,
        sim: &mut turmoil::Sim<'_>,
        slots: &[Slot],
        story: &Story,
    ) -> Option<String> {
        match self.phase {
            Phase::Waiting => {
                if story.step.load(Ordering::SeqCst) < BEATING
                    || at < story.beating_since.load(Ordering::SeqCst) + 1_000
                {
                    return None;
                }
                let leader = crate::nemesis::leader(slots)?;
                let term = lock(&slots[index(leader)]).as_ref()?.status().term;
                for (a, b) in self.pairs(leader) {
                    sim.partition(a, b);
                }
                self.phase = Phase::Cut { leader, term, from: at };
                self.cut_at = Some(at);
                let said = format!(
                    "cut leader r{leader} (term {term}) off from its followers for {CUT_MS} ms"
                );
                self.seen.push(format!("{at} ms: {said}"));
                Some(said)
            }
            Phase::Cut { leader, term, from } => {
                if self.elected.is_none() {
                    self.elected = slots
                        .iter()
                        .filter_map(|s| lock(s).clone())
                        .map(|r| r.status())
                        .find(|s| s.id != leader && s.role == "Leader" && s.term > term)
                        .map(|s| (s.id, s.term, at - from));
                }
                if at < from + CUT_MS {
                    return None;
                }
                self.repair(sim, leader);
                story.step.store(HEALED, Ordering::SeqCst);
                let said = format!("heal the cut of r{leader}");
                self.seen.push(format!("{at} ms: {said}"));
                Some(said)
            }
            Phase::Done => None,
        }
    }

    fn repair(&mut self, sim: &mut turmoil::Sim<'_>, leader: u64) {
        for (a, b) in self.pairs(leader) {
            sim.repair(a, b);
        }
        self.phase = Phase::Done;
    }

    /// Heals a cut still in place at the end of the workload (the story was cut short).
    pub(crate) fn heal(&mut self, sim: &mut turmoil::Sim<'_>, story: &Story) {
        match self.phase {
            Phase::Waiting => self.problems.push("the leader was never cut off".into()),
            Phase::Cut { leader, .. } => {
                self.problems.push("the cut outlasted the workload".into());
                self.repair(sim, leader);
            }
            Phase::Done => {}
        }
        story.step.store(HEALED.max(story.step.load(Ordering::SeqCst)), Ordering::SeqCst);
    }
}

fn index(id: u64) -> usize {
    usize::try_from(id - 1).unwrap_or(0)
}

/// Checks that the story happened (the cut, a new leader during it, heartbeats acknowledged
/// during it) and that no worker ever went down. Returns the steps as seen.
pub(crate) fn verify(story: &Story, cutter: &Cutter) -> Result<Vec<String>, String> {
    if let Some(problem) = cutter.problems.first() {
        return Err(problem.clone());
    }
    let mut steps = cutter.seen.clone();
    let Some(from) = cutter.cut_at else {
        return Err("the leader was never cut off".into());
    };
    let to = from + CUT_MS;
    match cutter.elected {
        Some((id, term, after)) => {
            steps.push(format!("r{id} led term {term} from {after} ms into the cut"));
        }
        None => return Err("the followers elected no leader while the leader was cut off".into()),
    }
    let acks = lock(&story.acks);
    for i in 1..=AGENTS {
        let w = worker(i);
        let during =
            acks.get(&w).map_or(0, |a| a.iter().filter(|t| (from..to).contains(*t)).count());
        if during == 0 {
            return Err(format!("no heartbeat of {w} was acknowledged during the cut"));
        }
        steps.push(format!("{w}: {during} heartbeats acknowledged during the cut"));
    }
    let final_read = lock(&story.final_read);
    let Some(workers) = final_read.as_ref() else {
        return Err("the workers were never read after the heal".into());
    };
    for i in 1..=AGENTS {
        let w = worker(i);
        match workers.get(&w) {
            Some((false, downs)) if downs.is_empty() => steps.push(format!("{w}: never down")),
            Some((down, downs)) => {
                return Err(format!(
                    "{w} went down although its agent kept heartbeating (down now: {down}; down at log indexes {downs:?})"
                ))
            }
            None => return Err(format!("{w} is missing from the final read")),
        }
    }
    Ok(steps)
}
