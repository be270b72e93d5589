//! The `worker` workload: agent processes (`berth agent`) heartbeat a pool with a short worker
//! TTL while the nemesis kills and pauses them; clients place spread placements on it and
//! release them; watchers record every event (`Scheduler.Watch`, admin, all kinds) with its
//! position.
//!
//! Checks, over the watchers' streams, the client history and the state read after healing:
//! - `watch_gap_free`: each stream's positions strictly increase, and within one log entry
//!   its events are numbered 0, 1, 2, … with none missing; where two streams cover the same
//!   range they hold the same events (same positions, same content), so an entry one of them
//!   skipped shows up as a difference.
//! - `replay`: the merged stream, replayed in order, never places a placement twice, never
//!   moves or releases an instance from a worker it is not on, never puts work on a down worker
//!   and never fills a worker beyond its capacity; each `WORKER_DOWN` names as many instances
//!   as the worker held, and every placement that had one there is `RESCHEDULED` or `RELEASED`
//!   (`WORKER_LOST`) in the same entry, so no instance is left on a down worker; a revived
//!   worker holds nothing. After healing, the placements and each worker's placements read
//!   back equal the replayed state at some entry between the two marker writes around the
//!   reads, and no placement has an instance on a worker read as down.
//! - `acknowledged`: an acknowledged Place appears as `PLACED` at its log index on the workers
//!   it answered, an acknowledged Release as `RELEASED` (`REQUESTED`) at its log index, a
//!   failed Place never appears, and no placement of the workload's tenant appears that no
//!   client asked for.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::CheckResult;
use crate::history::{Pair, Type};

/// The workload's tenant and pool, shared with the run.
pub const TENANT: &str = "wk-0";
pub const POOL: &str = "wk";
/// Each agent's worker: 1000 millicores and MiB; four instances of 250 fit.
pub const WORKER_CPU: u64 = 1_000;
pub const WORKER_MEM: u64 = 1_000;
pub const INSTANCE_CPU: u64 = 250;
pub const INSTANCE_MEM: u64 = 250;

/// An event's position: (log index, its number within that entry).
pub type Pos = (u64, u32);

/// One watched event, as much of it as the checks read, plus a digest of all of it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct Event {
    pub log_index: u64,
    pub event: u32,
    pub kind: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub tenant: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub placement: String,
    /// PLACED, CONFIRMED, RELEASED: one worker per instance; WORKER_*: the worker.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub workers: Vec<String>,
    /// PLACED: per instance; WORKER_REGISTERED: its capacity. [cpu, mem].
    #[serde(default)]
    pub resources: [u64; 2],
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
    /// RESCHEDULED: (slot, from, to).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub moves: Vec<(u32, String, String)>,
    #[serde(default)]
    pub instances_lost: u64,
    /// FNV-1a of the whole event as received (every field), to compare streams exactly.
    pub digest: u64,
}

impl Event {
    pub fn pos(&self) -> Pos {
        (self.log_index, self.event)
    }
}

/// One watcher's stream: it started after `start` and saw `events`.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct Watch {
    pub name: String,
    pub start: Pos,
    pub events: Vec<Event>,
    /// How often its stream was opened again (resuming after its last position).
    pub resumes: u64,
    /// Why it stopped before the end of the run, if it did.
    #[serde(default)]
    pub stopped: Option<String>,
}

impl Watch {
    /// The last position it covers (everything in `(start, end]` was delivered).
    pub fn end(&self) -> Pos {
        self.events.last().map_or(self.start, Event::pos)
    }
}

/// Who holds what, read back after healing.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct Holdings {
    /// "tenant/placement" → one worker per instance.
    pub placements: BTreeMap<String, Vec<String>>,
    /// Worker → the placements ("tenant/placement") with an instance there.
    pub by_worker: BTreeMap<String, BTreeSet<String>>,
}

/// What the workload observed: the watchers' streams and the final reads.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
pub struct Observed {
    pub watches: Vec<Watch>,
    /// The final reads, taken between two marker writes at these log indexes.
    pub reads: Option<Holdings>,
    pub marker_before: u64,
    pub marker_after: u64,
    /// Workers read as down after healing.
    pub down: BTreeSet<String>,
    /// Why the final reads fell short, if they did.
    #[serde(default)]
    pub problems: Vec<String>,
}

/// FNV-1a, for event digests.
pub fn digest(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3))
}

/// Each stream gap-free and in order; streams agree where they overlap.
pub fn watch_gap_free(observed: &Observed) -> CheckResult {
    let mut r = CheckResult::new("worker-watch (positions increase, no gap, watchers agree)");
    for w in &observed.watches {
        r.checked += u64::try_from(w.events.len()).unwrap_or(u64::MAX);
        let mut last = w.start;
        for e in &w.events {
            let p = e.pos();
            let next_in_entry = p.0 == last.0 && Some(p.1) == last.1.checked_add(1);
            let next_entry = p.0 > last.0 && p.1 == 0;
            if p <= last {
                r.violation(format!("watcher {}: {p:?} after {last:?} (out of order)", w.name));
            } else if !next_in_entry && !next_entry {
                r.violation(format!("watcher {}: {p:?} after {last:?} (events missing)", w.name));
            }
            last = p;
        }
    }
    for (i, a) in observed.watches.iter().enumerate() {
        for b in &observed.watches[i + 1..] {
            let from = a.start.max(b.start);
            let to = a.end().min(b.end());
            let within = |w: &Watch| -> Vec<Event> {
                w.events.iter().filter(|e| e.pos() > from && e.pos() <= to).cloned().collect()
            };
            let (ea, eb) = (within(a), within(b));
            if ea != eb {
                let first = ea
                    .iter()
                    .zip(&eb)
                    .find(|(x, y)| x != y)
                    .map(|(x, y)| format!("{} {:?} vs {} {:?}", x.kind, x.pos(), y.kind, y.pos()))
                    .unwrap_or_else(|| format!("{} vs {} events", ea.len(), eb.len()));
                r.violation(format!(
                    "watchers {} and {} differ in ({from:?}, {to:?}]: first difference {first}",
                    a.name, b.name
                ));
            }
        }
    }
    r
}

/// Every watcher's events by position (they agree, or `watch_gap_free` says otherwise), and
/// the last position up to which the union of their ranges has no hole.
fn merged(observed: &Observed) -> (Vec<Event>, Option<Pos>) {
    let mut all: BTreeMap<Pos, Event> = BTreeMap::new();
    for w in &observed.watches {
        for e in &w.events {
            all.entry(e.pos()).or_insert_with(|| e.clone());
        }
    }
    let mut ranges: Vec<(Pos, Pos)> = observed.watches.iter().map(|w| (w.start, w.end())).collect();
    ranges.sort();
    let mut covered: Option<Pos> = None;
    for (start, end) in ranges {
        match covered {
            None => covered = Some(end),
            Some(c) if start <= c => covered = Some(c.max(end)),
            Some(_) => break,
        }
    }
    let events = all.into_values().filter(|e| covered.is_some_and(|c| e.pos() <= c)).collect();
    (events, covered)
}

#[derive(Default, Clone)]
struct Replay {
    /// Worker → [cpu, mem] capacity (from WORKER_REGISTERED).
    capacity: BTreeMap<String, [u64; 2]>,
    down: BTreeSet<String>,
    /// (tenant, placement) → (one worker per instance, per-instance [cpu, mem]).
    live: BTreeMap<(String, String), (Vec<String>, [u64; 2])>,
}

impl Replay {
    fn holdings(&self) -> Holdings {
        let mut h = Holdings::default();
        for ((tenant, placement), (workers, _)) in &self.live {
            let key = format!("{tenant}/{placement}");
            h.placements.insert(key.clone(), workers.clone());
            for w in workers {
                h.by_worker.entry(w.clone()).or_default().insert(key.clone());
            }
        }
        h
    }
    fn on(&self, worker: &str) -> u64 {
        let n = self.live.values().flat_map(|(ws, _)| ws).filter(|w| *w == worker).count();
        u64::try_from(n).unwrap_or(u64::MAX)
    }
}

/// Replays `events` (in position order); violations into `r`. Calls `at_entry_end` with the
/// state after each log entry.
fn replay(events: &[Event], r: &mut CheckResult, mut at_entry_end: impl FnMut(u64, &Replay)) {
    let mut s = Replay::default();
    // Per WORKER_DOWN of the current entry: the placements that had an instance there.
    let mut lost: Vec<(String, BTreeSet<(String, String)>)> = Vec::new();
    let mut handled: BTreeSet<(String, String)> = BTreeSet::new();
    let end_entry = |s: &Replay,
                     index: u64,
                     lost: &mut Vec<(String, BTreeSet<(String, String)>)>,
                     handled: &mut BTreeSet<(String, String)>,
                     r: &mut CheckResult| {
        for (worker, keys) in lost.drain(..) {
            for k in keys.difference(handled) {
                r.violation(format!(
                    "index {index}: {worker} went down but {}/{} was neither rescheduled nor \
                     released WORKER_LOST in that entry",
                    k.0, k.1
                ));
            }
        }
        handled.clear();
        for (key, (workers, _)) in &s.live {
            for w in workers.iter().filter(|w| s.down.contains(*w)) {
                r.violation(format!("index {index}: {}/{} left on down worker {w}", key.0, key.1));
            }
        }
        let mut used: BTreeMap<&String, [u64; 2]> = BTreeMap::new();
        for (workers, res) in s.live.values() {
            for w in workers {
                let u = used.entry(w).or_default();
                u[0] = u[0].saturating_add(res[0]);
                u[1] = u[1].saturating_add(res[1]);
            }
        }
        for (w, u) in used {
            if let Some(cap) = s.capacity.get(w) {
                if u[0] > cap[0] || u[1] > cap[1] {
                    r.violation(format!("index {index}: worker {w} holds {u:?} of {cap:?}"));
                }
            }
        }
    };
    let mut index = None;
    for e in events {
        if index.is_some_and(|i| i != e.log_index) {
            let i = index.unwrap_or(0);
            end_entry(&s, i, &mut lost, &mut handled, r);
            at_entry_end(i, &s);
        }
        index = Some(e.log_index);
        r.checked += 1;
        let key = (e.tenant.clone(), e.placement.clone());
        let at = format!("{} {:?} {}/{}", e.kind, e.pos(), e.tenant, e.placement);
        match e.kind.as_str() {
            "WORKER_REGISTERED" => {
                if let Some(w) = e.workers.first() {
                    s.capacity.insert(w.clone(), e.resources);
                }
            }
            "WORKER_REMOVED" => {
                if let Some(w) = e.workers.first() {
                    s.capacity.remove(w);
                    s.down.remove(w);
                }
            }
            "WORKER_DOWN" => {
                let Some(w) = e.workers.first() else { continue };
                if !s.down.insert(w.clone()) {
                    r.violation(format!("{at}: {w} was already down"));
                }
                if s.on(w) != e.instances_lost {
                    r.violation(format!(
                        "{at}: {w} held {} instances, the event says {} lost",
                        s.on(w),
                        e.instances_lost
                    ));
                }
                let keys = s
                    .live
                    .iter()
                    .filter(|(_, (ws, _))| ws.contains(w))
                    .map(|(k, _)| k.clone())
                    .collect();
                lost.push((w.clone(), keys));
            }
            "WORKER_REVIVED" => {
                let Some(w) = e.workers.first() else { continue };
                if !s.down.remove(w) {
                    r.violation(format!("{at}: {w} revived but was not down"));
                }
                if s.on(w) > 0 {
                    r.violation(format!("{at}: revived {w} holds {} instances", s.on(w)));
                }
            }
            "PLACED" => {
                if let Some((old, _)) = s.live.get(&key) {
                    r.violation(format!("{at}: placed again while live on {old:?}"));
                }
                for w in e.workers.iter().filter(|w| s.down.contains(*w)) {
                    r.violation(format!("{at}: placed on down worker {w}"));
                }
                s.live.insert(key, (e.workers.clone(), e.resources));
            }
            "CONFIRMED" => match s.live.get(&key) {
                Some((ws, _)) if *ws == e.workers => {}
                other => r.violation(format!(
                    "{at}: confirmed on {:?}, live on {:?}",
                    e.workers,
                    other.map(|o| &o.0)
                )),
            },
            "RELEASED" => {
                match s.live.remove(&key) {
                    Some((ws, _)) if ws == e.workers => {}
                    other => r.violation(format!(
                        "{at}: released from {:?}, live on {:?}",
                        e.workers,
                        other.map(|o| o.0)
                    )),
                }
                if e.reason == "WORKER_LOST" {
                    handled.insert(key);
                }
            }
            "RESCHEDULED" => {
                let Some((ws, _)) = s.live.get_mut(&key) else {
                    r.violation(format!("{at}: rescheduled but not live"));
                    continue;
                };
                for (slot, from, to) in &e.moves {
                    let slot = usize::try_from(*slot).unwrap_or(usize::MAX);
                    match ws.get_mut(slot) {
                        Some(w) if w == from => *w = to.clone(),
                        other => r.violation(format!(
                            "{at}: slot {slot} moved from {from}, but it is on {other:?}"
                        )),
                    }
                    if s.down.contains(to) {
                        r.violation(format!("{at}: moved onto down worker {to}"));
                    }
                }
                handled.insert(key);
            }
            "TENANT_DELETED" => s.live.retain(|(t, _), _| *t != e.tenant),
            _ => {}
        }
    }
    if let Some(i) = index {
        end_entry(&s, i, &mut lost, &mut handled, r);
        at_entry_end(i, &s);
    }
}

/// Nothing double-placed, no lost instance left on a down worker, final reads agree.
pub fn replay_check(observed: &Observed) -> CheckResult {
    let mut r = CheckResult::new(
        "worker-replay (nothing double-placed, lost work moved or released, final reads agree)",
    );
    let (events, covered) = merged(observed);
    if events.is_empty() {
        r.unknown("no watched events".into());
        return r;
    }
    let (before, after) = (observed.marker_before, observed.marker_after);
    let mut candidates: Vec<(u64, Holdings)> = Vec::new();
    let mut at_before: Option<Holdings> = None;
    replay(&events, &mut r, |index, s| {
        if index <= before {
            at_before = Some(s.holdings());
        } else if index <= after {
            candidates.push((index, s.holdings()));
        }
    });
    let Some(reads) = &observed.reads else {
        r.unknown(format!("no final reads: {:?}", observed.problems));
        return r;
    };
    if covered.is_none_or(|c| c.0 < after) {
        r.unknown(format!("the watches end at {covered:?}, before the final marker {after}"));
        return r;
    }
    let mut states: Vec<(u64, Holdings)> = at_before.map(|h| (before, h)).into_iter().collect();
    states.extend(candidates);
    if !states.iter().any(|(_, h)| h == reads) {
        let (index, last) = states.last().cloned().unwrap_or_default();
        let only_read: Vec<_> =
            reads.placements.iter().filter(|(k, v)| last.placements.get(*k) != Some(*v)).collect();
        let only_watched: Vec<_> =
            last.placements.iter().filter(|(k, v)| reads.placements.get(*k) != Some(*v)).collect();
        r.violation(format!(
            "final reads differ from the watched state at every entry in {before}..={after}; \
             at {index}: read only {only_read:?}; watched only {only_watched:?}; per worker \
             equal: {}",
            reads.by_worker == last.by_worker
        ));
    }
    for (key, workers) in &reads.placements {
        for w in workers.iter().filter(|w| observed.down.contains(*w)) {
            r.violation(format!("after healing {key} has an instance on down worker {w}"));
        }
    }
    r
}

/// Acknowledged Place/Release of the workload agree with the watched events.
pub fn acknowledged(pairs: &[Pair<'_>], observed: &Observed) -> CheckResult {
    let mut r = CheckResult::new("worker-acknowledged (acks match the watched events)");
    let (events, covered) = merged(observed);
    let Some(covered) = covered else {
        r.unknown("no watched events".into());
        return r;
    };
    let mut placed: BTreeMap<&str, Vec<&Event>> = BTreeMap::new();
    let mut released: BTreeMap<&str, Vec<&Event>> = BTreeMap::new();
    for e in events.iter().filter(|e| e.tenant == TENANT) {
        match e.kind.as_str() {
            "PLACED" => placed.entry(&e.placement).or_default().push(e),
            "RELEASED" if e.reason == "REQUESTED" => {
                released.entry(&e.placement).or_default().push(e)
            }
            _ => {}
        }
    }
    let mut asked: BTreeSet<&str> = BTreeSet::new();
    for p in pairs.iter().filter(|p| p.invoke.workload == "worker") {
        let Some(id) = p.invoke.id.as_deref() else { continue };
        let index = p.done_field(|d| d.log_index);
        if index.is_some_and(|i| i > covered.0) {
            continue;
        }
        r.checked += 1;
        match (p.invoke.f.as_str(), p.kind()) {
            ("place", kind) => {
                asked.insert(id);
                let seen = placed.get(id).map(Vec::as_slice).unwrap_or_default();
                if kind == Type::Fail && !seen.is_empty() {
                    r.violation(format!("place {id} failed, but PLACED at {:?}", seen[0].pos()));
                }
                if kind == Type::Ok {
                    let workers = p.done.map(|d| d.workers.clone()).unwrap_or_default();
                    let ok =
                        seen.iter().any(|e| Some(e.log_index) == index && e.workers == workers);
                    if !ok {
                        r.violation(format!(
                            "place {id} acknowledged at {index:?} on {workers:?}; watched: {:?}",
                            seen.iter().map(|e| (e.pos(), &e.workers)).collect::<Vec<_>>()
                        ));
                    }
                }
            }
            ("release", Type::Ok) => {
                let seen = released.get(id).map(Vec::as_slice).unwrap_or_default();
                if !seen.iter().any(|e| Some(e.log_index) == index) {
                    r.violation(format!(
                        "release {id} acknowledged at {index:?}; watched RELEASED (REQUESTED) at {:?}",
                        seen.iter().map(|e| e.pos()).collect::<Vec<_>>()
                    ));
                }
            }
            _ => {}
        }
    }
    let acked =
        pairs.iter().any(|p| p.invoke.workload == "worker" && p.invoke.f == "place" && p.is_ok());
    if !acked {
        r.unknown("no Place was acknowledged: nothing to compare".into());
    }
    for (id, es) in &placed {
        if !asked.contains(id) {
            r.violation(format!("{id} PLACED at {:?}, but no client placed it", es[0].pos()));
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

    fn ev(index: u64, n: u32, kind: &str, placement: &str, workers: &[&str]) -> Event {
        let mut e = Event {
            log_index: index,
            event: n,
            kind: kind.into(),
            placement: placement.into(),
            workers: workers.iter().map(|w| (*w).to_owned()).collect(),
            ..Event::default()
        };
        if !placement.is_empty() {
            e.tenant = TENANT.into();
        }
        match kind {
            "PLACED" => e.resources = [INSTANCE_CPU, INSTANCE_MEM],
            "WORKER_REGISTERED" => e.resources = [WORKER_CPU, WORKER_MEM],
            _ => {}
        }
        e.digest = digest(format!("{e:?}").as_bytes());
        e
    }
    fn released(index: u64, n: u32, placement: &str, workers: &[&str], reason: &str) -> Event {
        let mut e = ev(index, n, "RELEASED", placement, workers);
        e.reason = reason.into();
        e
    }
    fn down(index: u64, n: u32, worker: &str, lost: u64) -> Event {
        let mut e = ev(index, n, "WORKER_DOWN", "", &[worker]);
        e.instances_lost = lost;
        e
    }
    fn moved(index: u64, n: u32, placement: &str, moves: &[(u32, &str, &str)]) -> Event {
        let mut e = ev(index, n, "RESCHEDULED", placement, &[]);
        e.moves = moves.iter().map(|(s, f, t)| (*s, (*f).to_owned(), (*t).to_owned())).collect();
        e
    }
    /// Two workers and one placement on both; w1 goes down at 5, its instance moves to w3.
    fn good_stream() -> Vec<Event> {
        vec![
            ev(2, 0, "WORKER_REGISTERED", "", &["w1"]),
            ev(3, 0, "WORKER_REGISTERED", "", &["w2"]),
            ev(3, 1, "WORKER_REGISTERED", "", &["w3"]),
            ev(4, 0, "PLACED", "a", &["w1", "w2"]),
            down(5, 0, "w1", 1),
            moved(5, 1, "a", &[(0, "w1", "w3")]),
            ev(6, 0, "WORKER_REVIVED", "", &["w1"]),
            ev(7, 0, "PLACED", "b", &["w1", "w2"]),
        ]
    }
    fn holdings(ps: &[(&str, &[&str])]) -> Holdings {
        let mut h = Holdings::default();
        for (id, ws) in ps {
            let key = format!("{TENANT}/{id}");
            h.placements.insert(key.clone(), ws.iter().map(|w| (*w).to_owned()).collect());
            for w in *ws {
                h.by_worker.entry((*w).to_owned()).or_default().insert(key.clone());
            }
        }
        h
    }
    fn observed(watches: Vec<Vec<Event>>) -> Observed {
        Observed {
            watches: watches
                .into_iter()
                .enumerate()
                .map(|(i, events)| Watch {
                    name: format!("{}", i + 1),
                    start: (1, 0),
                    events,
                    ..Watch::default()
                })
                .collect(),
            reads: Some(holdings(&[("a", &["w3", "w2"]), ("b", &["w1", "w2"])])),
            marker_before: 6,
            marker_after: 7,
            down: BTreeSet::new(),
            problems: Vec::new(),
        }
    }

    // Two agreeing, complete streams and matching final reads pass every check.
    #[test]
    fn a_good_run_passes() {
        let o = observed(vec![good_stream(), good_stream()]);
        assert_eq!(watch_gap_free(&o).valid, Valid::True);
        let r = replay_check(&o);
        assert_eq!(r.valid, Valid::True, "{:?}", r.details);
        assert_eq!(r.checked, 8);
    }

    // A watcher that missed a whole entry differs from the other one.
    #[test]
    fn a_skipped_entry_is_caught_by_the_other_watcher() {
        let mut gap = good_stream();
        gap.remove(6);
        let o = observed(vec![good_stream(), gap]);
        let r = watch_gap_free(&o);
        assert_eq!(r.valid, Valid::False);
        assert!(r.details[0].contains("differ"), "{:?}", r.details);
    }

    // A missing event inside an entry, a duplicate and a reordering are caught in one stream.
    #[test]
    fn gaps_duplicates_and_reordering_within_a_stream_are_caught() {
        for broken in [
            {
                let mut s = good_stream();
                s.remove(1); // (3, 0) missing before (3, 1)
                s
            },
            {
                let mut s = good_stream();
                let dup = s[4].clone();
                s.insert(5, dup);
                s
            },
            {
                let mut s = good_stream();
                s.swap(3, 4);
                s
            },
        ] {
            let o = observed(vec![broken]);
            assert_eq!(watch_gap_free(&o).valid, Valid::False);
        }
    }

    // Two watchers with the same positions but different content disagree.
    #[test]
    fn different_content_at_the_same_position_is_caught() {
        let mut other = good_stream();
        other[7] = ev(7, 0, "PLACED", "b", &["w2", "w1"]);
        let r = watch_gap_free(&observed(vec![good_stream(), other]));
        assert_eq!(r.valid, Valid::False);
    }

    // A worker down with no RESCHEDULED/RELEASED for its placement in that entry is caught.
    #[test]
    fn lost_work_left_on_a_down_worker_is_caught() {
        let mut s = good_stream();
        s.truncate(5); // w1 down at 5, nothing moved
        let mut o = observed(vec![s]);
        o.reads = None;
        let r = replay_check(&o);
        assert_eq!(r.valid, Valid::False);
        assert!(r.details.iter().any(|d| d.contains("neither rescheduled")), "{:?}", r.details);
        assert!(r.details.iter().any(|d| d.contains("left on down worker")), "{:?}", r.details);
    }

    // A move in a later entry is not "in the same entry" as the WORKER_DOWN.
    #[test]
    fn a_late_reschedule_is_caught() {
        let mut s = good_stream();
        s[5] = moved(6, 0, "a", &[(0, "w1", "w3")]);
        s[6] = ev(6, 1, "WORKER_REVIVED", "", &["w1"]);
        let r = replay_check(&observed(vec![s]));
        assert_eq!(r.valid, Valid::False);
    }

    // Released WORKER_LOST in the same entry is a valid fate of lost work.
    #[test]
    fn released_worker_lost_is_a_valid_fate() {
        let mut s = good_stream();
        s[5] = released(5, 1, "a", &["w1", "w2"], "WORKER_LOST");
        let mut o = observed(vec![s]);
        o.reads = Some(holdings(&[("b", &["w1", "w2"])]));
        let r = replay_check(&o);
        assert_eq!(r.valid, Valid::True, "{:?}", r.details);
    }

    // Placing a live placement again, a move from the wrong worker and overfilling a worker
    // are double placements.
    #[test]
    fn double_placement_and_overcommit_are_caught() {
        let mut again = good_stream();
        again.push(ev(8, 0, "PLACED", "a", &["w1", "w2"]));
        let mut wrong_from = good_stream();
        wrong_from[5] = moved(5, 1, "a", &[(0, "w2", "w3")]);
        let mut full = good_stream();
        for (i, id) in ["c", "d", "e", "f"].iter().enumerate() {
            full.push(ev(8 + u64::try_from(i).unwrap_or(0), 0, "PLACED", id, &["w2", "w3"]));
        }
        for s in [again, wrong_from, full] {
            let mut o = observed(vec![s]);
            o.reads = None;
            assert_eq!(replay_check(&o).valid, Valid::False);
        }
    }

    // WORKER_DOWN must name the instances the worker held; a revived worker holds nothing.
    #[test]
    fn a_wrong_lost_count_is_caught() {
        let mut s = good_stream();
        s[4] = down(5, 0, "w1", 2);
        assert_eq!(replay_check(&observed(vec![s])).valid, Valid::False);
    }

    // Final reads that match no watched state between the markers, or keep an instance on a
    // worker read as down, are caught.
    #[test]
    fn final_reads_that_disagree_are_caught() {
        let mut o = observed(vec![good_stream()]);
        o.reads = Some(holdings(&[("a", &["w1", "w2"]), ("b", &["w1", "w2"])]));
        assert_eq!(replay_check(&o).valid, Valid::False);
        let mut o = observed(vec![good_stream()]);
        o.down.insert("w3".into());
        assert_eq!(replay_check(&o).valid, Valid::False);
        // The state before b was placed (entry 6) is also a valid reading.
        let mut o = observed(vec![good_stream()]);
        o.reads = Some(holdings(&[("a", &["w3", "w2"])]));
        assert_eq!(replay_check(&o).valid, Valid::True);
    }

    fn place(h: &mut H, t: u64, id: &str, kind: Type, index: u64, workers: &[&str]) {
        let op = h.invoke(t, 1, Op::invoke("worker", "place", TENANT).with_id(id));
        h.done(t + 1, op, kind, |o| {
            if kind == Type::Ok {
                o.log_index = Some(index);
                o.workers = workers.iter().map(|w| (*w).to_owned()).collect();
            }
        });
    }

    // Acks that match the events pass; an ack at another index, a failed place that happened,
    // a placement nobody asked for and an unwatched release are caught.
    #[test]
    fn acknowledgements_must_match_the_events() {
        let mut s = good_stream();
        s.push(released(8, 0, "b", &["w1", "w2"], "REQUESTED"));
        let o = observed(vec![s]);
        let mut h = H::new();
        place(&mut h, 10, "a", Type::Ok, 4, &["w1", "w2"]);
        place(&mut h, 20, "b", Type::Info, 0, &[]);
        let rel = h.invoke(30, 1, Op::invoke("worker", "release", TENANT).with_id("b"));
        h.done(31, rel, Type::Ok, |o| o.log_index = Some(8));
        let r = acknowledged(&pairs(&h.ops), &o);
        assert_eq!(r.valid, Valid::True, "{:?}", r.details);
        let mut vacuous = H::new();
        place(&mut vacuous, 10, "a", Type::Info, 0, &[]);
        place(&mut vacuous, 20, "b", Type::Info, 0, &[]);
        let r = acknowledged(&pairs(&vacuous.ops), &o);
        assert_eq!(r.valid, Valid::Unknown, "{:?}", r.details);

        for bad in [
            |h: &mut H| place(h, 10, "a", Type::Ok, 3, &["w1", "w2"]),
            |h: &mut H| place(h, 10, "a", Type::Fail, 0, &[]),
            |h: &mut H| place(h, 10, "z", Type::Info, 0, &[]),
        ] {
            let mut h = H::new();
            bad(&mut h);
            place(&mut h, 20, "b", Type::Info, 0, &[]);
            assert_eq!(
                acknowledged(&pairs(&h.ops), &observed(vec![good_stream()])).valid,
                Valid::False
            );
        }
        let mut h = H::new();
        place(&mut h, 10, "a", Type::Ok, 4, &["w1", "w2"]);
        place(&mut h, 20, "b", Type::Ok, 7, &["w1", "w2"]);
        let rel = h.invoke(30, 1, Op::invoke("worker", "release", TENANT).with_id("b"));
        h.done(31, rel, Type::Ok, |o| o.log_index = Some(7));
        assert_eq!(
            acknowledged(&pairs(&h.ops), &observed(vec![good_stream()])).valid,
            Valid::False
        );
    }
}
