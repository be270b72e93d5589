//! Choosing a worker for one instance: feasibility (cheapest check first), then rank, then a
//! deterministic pick (Nomad's feasible → rank → select pipeline).
//!
//! Required rules filter, preferred rules only score, so a workload that satisfies every
//! required rule is never refused because of a preferred one. Candidates come from indexes:
//! bin-pack walks the pool's free-capacity order upwards from the request, spread walks it
//! downwards, and a required affinity starts from the (usually few) workers that carry the
//! label. Ties break on (free cpu, free memory, worker id), so every replica picks the same.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use super::command::{FilterCounts, Strategy};
use super::ids::{PoolId, WorkerId};
use super::index::Indexes;
use super::resources::LabelTerm;
use super::state::{GroupStrategy, Placement, PlacementGroup, State, Worker};

/// Why a worker was filtered out (in the order the checks run).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Filter {
    /// Down: its TTL passed without a heartbeat (checked before draining).
    Down,
    Draining,
    Cpu,
    Memory,
    Labels,
    GroupSpread,
    AntiAffinity,
    Affinity,
}

impl Filter {
    /// The stable name, as in `FilterCounts::pairs`.
    pub fn name(self) -> &'static str {
        match self {
            Filter::Down => "down",
            Filter::Draining => "draining",
            Filter::Cpu => "insufficient_cpu",
            Filter::Memory => "insufficient_memory",
            Filter::Labels => "label_mismatch",
            Filter::GroupSpread => "group_spread",
            Filter::AntiAffinity => "anti_affinity",
            Filter::Affinity => "affinity",
        }
    }
}

/// The rules of one placement, resolved against the indexes once per instance.
struct Rules<'a> {
    placement: &'a Placement,
    /// Worker sets for required anti-affinity terms (terms nobody carries are left out).
    anti: Vec<&'a BTreeMap<WorkerId, u32>>,
    /// Worker sets of workloads whose required anti-affinity matches one of our labels.
    anti_of_others: Vec<&'a BTreeMap<WorkerId, u32>>,
    /// Worker sets for required affinity terms; `None` if some term is carried nowhere.
    affinity: Option<Vec<&'a BTreeMap<WorkerId, u32>>>,
    anti_preferred: Vec<Option<&'a BTreeMap<WorkerId, u32>>>,
    affinity_preferred: Vec<Option<&'a BTreeMap<WorkerId, u32>>>,
    group_workers: Option<&'a BTreeMap<WorkerId, u32>>,
    group_strategy: Option<GroupStrategy>,
    score_max: u32,
}

impl<'a> Rules<'a> {
    fn new(ix: &'a Indexes, placement: &'a Placement, group: Option<&PlacementGroup>) -> Self {
        let tenant = &placement.tenant;
        let spec = &placement.spec;
        let lookup = |term: &LabelTerm| ix.workers_with(tenant, term);
        let affinity: Option<Vec<_>> = spec.affinity.iter().map(lookup).collect();
        let anti_of_others = spec
            .labels
            .iter()
            .filter_map(|(k, v)| ix.anti_with(tenant, &LabelTerm::new(k.as_str(), v.as_str())))
            .collect();
        let group_workers =
            group.and_then(|g| ix.group_workers.get(&(tenant.clone(), g.id.clone())));
        let group_strategy = group.map(|g| g.strategy);
        let pack = u32::from(group_strategy == Some(GroupStrategy::Pack));
        let score_max = count_u32(spec.worker_prefers.len())
            + count_u32(spec.affinity_preferred.len())
            + count_u32(spec.anti_affinity_preferred.len())
            + pack;
        Rules {
            placement,
            anti: spec.anti_affinity.iter().filter_map(lookup).collect(),
            anti_of_others,
            affinity,
            anti_preferred: spec.anti_affinity_preferred.iter().map(lookup).collect(),
            affinity_preferred: spec.affinity_preferred.iter().map(lookup).collect(),
            group_workers,
            group_strategy,
            score_max,
        }
    }

    fn check(&self, worker: &Worker) -> Result<(), Filter> {
        let spec = &self.placement.spec;
        let free = worker.free();
        if worker.is_down() {
            return Err(Filter::Down);
        }
        if !worker.schedulable {
            return Err(Filter::Draining);
        }
        if free.cpu_millis < spec.resources.cpu_millis {
            return Err(Filter::Cpu);
        }
        if free.memory_mib < spec.resources.memory_mib {
            return Err(Filter::Memory);
        }
        if !spec.worker_requires.iter().all(|r| r.matches(&worker.labels)) {
            return Err(Filter::Labels);
        }
        if self.group_strategy == Some(GroupStrategy::Spread)
            && self.group_workers.is_some_and(|m| m.contains_key(&worker.id))
        {
            return Err(Filter::GroupSpread);
        }
        let on = |m: &&BTreeMap<WorkerId, u32>| m.contains_key(&worker.id);
        if self.anti.iter().any(on) || self.anti_of_others.iter().any(on) {
            return Err(Filter::AntiAffinity);
        }
        match &self.affinity {
            Some(sets) if sets.iter().all(on) => Ok(()),
            _ => Err(Filter::Affinity),
        }
    }

    fn score(&self, worker: &Worker) -> u32 {
        let spec = &self.placement.spec;
        let on =
            |m: &Option<&BTreeMap<WorkerId, u32>>| m.is_some_and(|m| m.contains_key(&worker.id));
        let prefers = spec.worker_prefers.iter().filter(|r| r.matches(&worker.labels)).count();
        let affinity = self.affinity_preferred.iter().filter(|m| on(m)).count();
        let anti = self.anti_preferred.iter().filter(|m| !on(m)).count();
        let pack = self.group_strategy == Some(GroupStrategy::Pack) && on(&self.group_workers);
        count_u32(prefers) + count_u32(affinity) + count_u32(anti) + u32::from(pack)
    }
}

fn count_u32(n: usize) -> u32 {
    u32::try_from(n).expect("invariant: rule counts are bounded by RULES_MAX")
}

/// Picks the worker for the next instance of `placement`, or `None` if no worker passes every
/// required rule. `preferred_scan_max` bounds how many feasible workers are ranked after the
/// first one when preferred rules exist.
pub fn choose_worker(
    state: &State,
    ix: &Indexes,
    placement: &Placement,
    group: Option<&PlacementGroup>,
    preferred_scan_max: u32,
) -> Option<WorkerId> {
    let rules = Rules::new(ix, placement, group);
    let affinity_sets = rules.affinity.as_ref()?;
    let mut best: Option<(u32, WorkerId)> = None;
    let mut ranked_after_first = 0u32;
    // Returns true to stop scanning.
    let mut consider = |worker: &Worker| -> bool {
        if rules.check(worker).is_err() {
            return false;
        }
        if rules.score_max == 0 {
            best = Some((0, worker.id.clone()));
            return true;
        }
        let score = rules.score(worker);
        if best.as_ref().is_none_or(|(b, _)| score > *b) {
            best = Some((score, worker.id.clone()));
        }
        if best.as_ref().is_some_and(|(b, _)| *b == rules.score_max) {
            return true;
        }
        if best.is_some() {
            ranked_after_first += 1;
        }
        ranked_after_first > preferred_scan_max
    };

    let strategy = placement.spec.strategy;
    if let Some(smallest) = affinity_sets.iter().min_by_key(|m| m.len()) {
        // Required affinity: only workers already running a matching workload qualify.
        let mut candidates: Vec<&Worker> = smallest
            .keys()
            .filter_map(|id| state.workers.get(id))
            .filter(|w| w.pool == placement.pool)
            .collect();
        candidates.sort_by_key(|w| {
            let free = w.free();
            (free.cpu_millis, free.memory_mib, w.id.clone())
        });
        if strategy == Strategy::Spread {
            candidates.reverse();
        }
        for worker in candidates {
            if consider(worker) {
                break;
            }
        }
    } else if let Some(free) = ix.free.get(&placement.pool) {
        let need = placement.spec.resources;
        // Free memory is in the index key: skip short workers without looking them up.
        let fits = |key: &&(u64, u64, WorkerId)| key.1 >= need.memory_mib;
        let mut visit = |key: &(u64, u64, WorkerId)| consider(state_worker(state, &key.2));
        match strategy {
            Strategy::BinPack => {
                for key in free.range((need.cpu_millis, 0, WorkerId::new(""))..).filter(fits) {
                    if visit(key) {
                        break;
                    }
                }
            }
            Strategy::Spread => {
                let cpu_fits = |k: &&(u64, u64, WorkerId)| k.0 >= need.cpu_millis;
                for key in free.iter().rev().take_while(cpu_fits).filter(fits) {
                    if visit(key) {
                        break;
                    }
                }
            }
        }
    }
    best.map(|(_, id)| id)
}

fn state_worker<'s>(state: &'s State, id: &WorkerId) -> &'s Worker {
    state.workers.get(id).expect("invariant: indexed workers exist")
}

/// The first check each worker in the pool fails (at most `max` workers, in id order). Used only
/// to explain a dry run, so a full scan is acceptable here.
pub fn verdicts(
    state: &State,
    ix: &Indexes,
    placement: &Placement,
    group: Option<&PlacementGroup>,
    max: usize,
) -> Vec<(WorkerId, Filter)> {
    let rules = Rules::new(ix, placement, group);
    ix.pool_workers
        .get(&placement.pool)
        .into_iter()
        .flatten()
        .filter_map(|id| rules.check(state_worker(state, id)).err().map(|f| (id.clone(), f)))
        .take(max)
        .collect()
}

/// Counts, for every worker in the pool, the first check it fails. Used only to explain a
/// refusal, so a full scan is acceptable here.
pub fn diagnose(
    state: &State,
    ix: &Indexes,
    placement: &Placement,
    group: Option<&PlacementGroup>,
    pool: &PoolId,
) -> FilterCounts {
    let rules = Rules::new(ix, placement, group);
    let mut counts = FilterCounts::default();
    for id in ix.pool_workers.get(pool).into_iter().flatten() {
        counts.workers_in_pool += 1;
        let slot = match rules.check(state_worker(state, id)) {
            Ok(()) => continue,
            Err(Filter::Down) => &mut counts.down,
            Err(Filter::Draining) => &mut counts.draining,
            Err(Filter::Cpu) => &mut counts.insufficient_cpu,
            Err(Filter::Memory) => &mut counts.insufficient_memory,
            Err(Filter::Labels) => &mut counts.label_mismatch,
            Err(Filter::GroupSpread) => &mut counts.group_spread,
            Err(Filter::AntiAffinity) => &mut counts.anti_affinity,
            Err(Filter::Affinity) => &mut counts.affinity,
        };
        *slot += 1;
    }
    counts
}
