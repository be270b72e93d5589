//! One simulation: a Berth cluster of 3 or 5 replicas and several clients inside turmoil,
//! faults drawn from the seed, and the checks. Everything random comes from the seed:
//! turmoil's network, openraft's election timeouts (Berth's seedable runtime), the cluster
//! parameters, the workload and the fault schedule.

use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use berth_rng::Rng;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::cluster::{self, certificates, lock, Cluster, Params};
use crate::cut;
use crate::fairness;
use crate::fleet;
use crate::history::{check, Op, OpKind, Outcome};
use crate::ops::is_stale;
use crate::restart;
use crate::scenario::{self, Scenario};
use crate::watch::Watcher;
use crate::workload::{self, Clients};

/// All replicas must reach the same state within this long after the clients are done.
const CONVERGENCE_BOUND: Duration = Duration::from_secs(20);

#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    pub seed: u64,
    pub params: Option<Params>,
    pub simulated_ms: u64,
    pub ops: usize,
    pub ok: usize,
    pub fail: usize,
    pub info: usize,
    /// The steps a named scenario went through, as verified.
    pub scenario: Vec<String>,
    /// Leases granted, and fenced writes (or keep-alives) refused for a stale token.
    pub lease_grants: usize,
    pub stale_refused: usize,
    pub faults: Vec<String>,
    pub violations: Vec<String>,
    /// SHA-256 of the normalised event trace: equal for equal seeds.
    pub trace_hash: String,
    /// The fairness scenario's figures.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fairness: Option<crate::fairness::Fairness>,
    /// The fleet scenario's figures.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fleet: Option<crate::fleet::Figures>,
    #[serde(skip)]
    pub history: Vec<Op>,
}

/// Runs one seed of the random workload under random faults to the end and checks it.
pub fn run(seed: u64) -> Report {
    run_scenario(seed, Scenario::Faults)
}

/// Runs one seed of `scenario` to the end and checks it.
pub fn run_scenario(seed: u64, scenario: Scenario) -> Report {
    let mut rng = Rng::new(seed);
    let mut params = Params::from_seed(&mut rng);
    if scenario == Scenario::Fairness {
        params.workload_ms = fairness::WORKLOAD_MS;
    }
    if scenario == Scenario::Fleet {
        // One random client in the background: the fleet brings its own load.
        params.workload_ms = fleet::WORKLOAD_MS;
        params.clients = 1;
        // Membership churn elects leaders too (each extends worker TTLs by the lease grace).
        params.membership &= fleet::Plan::from_seed(seed).replica_faults;
    }
    if scenario == Scenario::LeaderCut {
        params.workload_ms = cut::WORKLOAD_MS;
        params.clients = 1;
        params.membership = false;
        // Production's: the cut must outlast it.
        params.write_deadline_ms = u64::try_from(
            berth::raft::replica::ReplicaOptions::new(0, String::new()).write_deadline.as_millis(),
        )
        .unwrap_or(u64::MAX);
    }
    berth::raft::runtime::seed_thread_rng(rng.next_u64());
    let mut report = Report { seed, params: Some(params.clone()), ..Default::default() };
    let mut trace: Vec<String> = Vec::new();

    let (ca, pems, tls) = match certificates(params.replicas) {
        Ok(made) => made,
        Err(e) => {
            report.violations.push(format!("no certificates for the cluster: {e}"));
            return report;
        }
    };

    let mut sim = turmoil::Builder::new()
        .rng_seed(rng.next_u64())
        .epoch(SystemTime::UNIX_EPOCH + Duration::from_millis(crate::history::EPOCH_MS))
        .simulation_duration(Duration::from_secs(600))
        .tick_duration(Duration::from_millis(1))
        .min_message_latency(Duration::from_micros(200))
        .max_message_latency(Duration::from_millis(3))
        // Membership churn can queue many connections on one port (turmoil's default is 64).
        .tcp_capacity(65_536)
        .build();

    let cluster = cluster::start(&mut sim, &params, (ca, pems));
    let Cluster { slots, clocks, logs } = &cluster;
    let clients = workload::spawn(&mut sim, (&params, &tls, scenario), (seed, &mut rng), slots);
    let Clients {
        history,
        healed,
        fair_jobs,
        membership_events,
        restart: story,
        fleet: agents,
        cut: cut_story,
        ..
    } = &clients;

    let mut nemesis = crate::nemesis::Nemesis::new(rng.next_u64(), params.replicas);
    // Its own stream, so the other scenarios draw from `rng` as before.
    let mut crasher = restart::Crasher::new(seed ^ 0x2E57_A2D0, params.replicas);
    let mut agent_faults = fleet::Faults::new(seed, params.replicas);
    let mut cutter = cut::Cutter::new(params.replicas);
    let mut watcher = Watcher::default();
    let mut step = 0u64;
    loop {
        let finished = match sim.step() {
            Ok(finished) => finished,
            Err(e) => {
                report.violations.push(format!("a simulated node failed: {e}"));
                break;
            }
        };
        step += 1;
        let at = u64::try_from(sim.elapsed().as_millis()).unwrap_or(u64::MAX);
        if at < params.workload_ms {
            if scenario == Scenario::Fleet {
                if let Some(fault) = agent_faults.act(at, &mut sim, agents) {
                    trace.push(format!("{at} fault {fault}"));
                    report.faults.push(format!("{at} ms: {fault}"));
                }
            }
            if scenario == Scenario::LeaderCut {
                if let Some(fault) = cutter.act(at, &mut sim, slots, cut_story) {
                    trace.push(format!("{at} fault {fault}"));
                    report.faults.push(format!("{at} ms: {fault}"));
                }
            } else if scenario == Scenario::LeaseExpiry
                || scenario == Scenario::Fleet && !fleet::Plan::from_seed(seed).replica_faults
            {
                // These make their own faults.
            } else if scenario == Scenario::RestartRead {
                if let Some(fault) = crasher.act(at, &mut sim, slots, story) {
                    trace.push(format!("{at} fault {fault}"));
                    report.faults.push(format!("{at} ms: {fault}"));
                }
            } else if let Some(fault) = nemesis.maybe_act(at, &mut sim, slots, clocks) {
                trace.push(format!("{at} fault {fault}"));
                report.faults.push(format!("{at} ms: {fault}"));
            }
        } else if !healed.load(Ordering::SeqCst) {
            if scenario == Scenario::RestartRead {
                crasher.heal(&mut sim);
            }
            if scenario == Scenario::LeaderCut {
                cutter.heal(&mut sim, cut_story);
            }
            if let Some(healing) = agent_faults.heal(&mut sim, agents) {
                trace.push(format!("{at} heal {healing}"));
                report.faults.push(format!("{at} ms: heal ({healing})"));
            }
            let healing = nemesis.heal(&mut sim, clocks);
            trace.push(format!("{at} heal {healing}"));
            report.faults.push(format!("{at} ms: heal ({healing})"));
            healed.store(true, Ordering::SeqCst);
        }
        if step % 25 == 0 {
            watcher.check(slots, logs, &mut trace, at);
        }
        if step % 1_000 == 0 {
            tracing::info!(sim_ms = at, ops = lock(history).len(), "progress");
        }
        if finished {
            break;
        }
    }
    // Convergence: every replica reaches the same state.
    let until = sim.elapsed() + CONVERGENCE_BOUND;
    let converged = loop {
        let states: Vec<(u64, String)> = slots
            .iter()
            .filter_map(|s| lock(s).clone())
            .map(|r| r.status())
            .map(|s| (s.applied_command_index, s.state_hash))
            .collect();
        if states.len() == slots.len() && states.windows(2).all(|w| w[0] == w[1]) {
            break true;
        }
        if sim.elapsed() > until || sim.step().is_err() {
            break false;
        }
    };
    if !converged {
        report.violations.push(format!(
            "replicas did not converge within {CONVERGENCE_BOUND:?} after the clients finished"
        ));
    } else {
        // Their usage stores, derived from the same commands, are identical too.
        let stores: Vec<(u64, Result<[u8; 32], String>)> = slots
            .iter()
            .filter_map(|s| lock(s).clone())
            .map(|r| {
                let (index, hash) = r.usage_hash();
                (index, hash.wait_blocking().map_err(|e| e.to_string()))
            })
            .collect();
        if let Some((index, Err(e))) = stores.iter().find(|(_, h)| h.is_err()) {
            report.violations.push(format!("a usage store at command index {index}: {e}"));
        } else if stores.windows(2).any(|w| w[0] != w[1]) {
            report.violations.push(format!("usage stores differ at command index {}", stores[0].0));
        }
    }
    let at = u64::try_from(sim.elapsed().as_millis()).unwrap_or(u64::MAX);
    watcher.check(slots, logs, &mut trace, at);
    report.violations.append(&mut watcher.violations);

    for event in lock(membership_events).iter() {
        trace.push(format!("membership {event}"));
        report.faults.push(format!("membership {event}"));
    }
    let history = lock(history).clone();
    report.violations.extend(check(&history, &params.quotas));
    if scenario == Scenario::LeaseExpiry {
        match scenario::verify_lease_expiry(&history) {
            Ok(steps) => report.scenario = steps,
            Err(missing) => report.violations.push(format!("lease-expiry scenario: {missing}")),
        }
    }
    if scenario == Scenario::RestartRead {
        match restart::verify(&history, &crasher) {
            Ok(steps) => report.scenario = steps,
            Err(missing) => report.violations.push(format!("restart-read scenario: {missing}")),
        }
    }
    if scenario == Scenario::LeaderCut {
        match cut::verify(cut_story, &cutter) {
            Ok(steps) => report.scenario = steps,
            Err(missing) => report.violations.push(format!("leader-cut scenario: {missing}")),
        }
    }
    if scenario == Scenario::Fleet {
        let events = lock(&agents.events).clone();
        report.violations.extend(fleet::check(&events).into_iter().map(|v| format!("fleet: {v}")));
        let figures = fleet::Figures::of(&events);
        report.scenario = figures.lines(fleet::Plan::from_seed(seed));
        report.fleet = Some(figures);
    }
    if scenario == Scenario::Fairness {
        let figures = fairness::measure(&lock(fair_jobs));
        report.scenario = figures.lines();
        report.fairness = Some(figures);
    }
    for op in &history {
        trace.push(serde_json::to_string(op).unwrap_or_default());
        match (&op.kind, &op.outcome) {
            (OpKind::Acquire { .. }, Outcome::Ok { .. }) => report.lease_grants += 1,
            (_, outcome) if is_stale(outcome) => report.stale_refused += 1,
            _ => {}
        }
        match op.outcome {
            Outcome::Ok { .. } => report.ok += 1,
            Outcome::Fail { .. } => report.fail += 1,
            Outcome::Info { .. } => report.info += 1,
        }
    }
    report.ops = history.len();
    report.history = history;
    report.simulated_ms = at;
    let mut hasher = Sha256::new();
    for line in &trace {
        hasher.update(line.as_bytes());
        hasher.update(b"\n");
    }
    report.trace_hash = berth::raft::replica::hex(&hasher.finalize());
    report
}
