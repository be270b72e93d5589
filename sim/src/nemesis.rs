//! Faults drawn from the seed: partitions (isolate the leader, majority/minority, bridge,
//! one-way), hold and release (late delivery of a deposed leader's messages), latency spikes,
//! message loss on the peer links, crash and restart (short, or long enough to need snapshot
//! catch-up), a crash of every replica with a quick restart (the old leader first), and clock
//! skew. One fault at a time; everything is healed before the final phase.

use std::sync::atomic::Ordering;
use std::time::Duration;

use berth_rng::Rng;

use crate::cluster::Slot;
use crate::net::SimClock;

const BASE_LATENCY: Duration = Duration::from_millis(3);

enum Active {
    Cut(Vec<(u64, u64)>),
    OneWay(u64, u64),
    Hold(Vec<(u64, u64)>),
    Crash(u64),
    /// Every replica is down; they restart in this order (the old leader first).
    CrashAll(Vec<u64>),
    /// The peer links drop messages (turmoil's fail rate: a link fails and drops what is in
    /// flight on it, then is repaired).
    Lossy,
    Slow,
}

pub struct Nemesis {
    rng: Rng,
    replicas: u64,
    next_at: u64,
    active: Option<(Active, u64)>,
    /// Replicas still to restart after a crash of all, with when.
    restarts: Vec<(u64, u64)>,
}

fn name(id: u64) -> String {
    format!("r{id}")
}

pub(crate) fn leader(slots: &[Slot]) -> Option<u64> {
    slots
        .iter()
        .filter_map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).clone())
        .map(|r| r.status())
        .filter(|s| s.role == "Leader")
        .max_by_key(|s| s.term)
        .map(|s| s.id)
}

impl Nemesis {
    pub fn new(seed: u64, replicas: u64) -> Self {
        Nemesis {
            rng: Rng::new(seed),
            replicas,
            next_at: 1_500,
            active: None,
            restarts: Vec::new(),
        }
    }

    fn others(&self, id: u64) -> Vec<u64> {
        (1..=self.replicas).filter(|o| *o != id).collect()
    }

    fn shuffled(&mut self) -> Vec<u64> {
        let mut ids: Vec<u64> = (1..=self.replicas).collect();
        for i in (1..ids.len()).rev() {
            let j = usize::try_from(self.rng.below(i as u64 + 1)).unwrap_or(0);
            ids.swap(i, j);
        }
        ids
    }

    fn end(&mut self, sim: &mut turmoil::Sim<'_>, active: Active) -> String {
        match active {
            Active::Cut(pairs) => {
                for (a, b) in &pairs {
                    sim.repair(name(*a), name(*b));
                }
                "repair partition".into()
            }
            Active::OneWay(from, to) => {
                sim.repair_oneway(name(from), name(to));
                format!("repair one-way r{from}->r{to}")
            }
            Active::Hold(pairs) => {
                for (a, b) in &pairs {
                    sim.release(name(*a), name(*b));
                }
                "release held messages".into()
            }
            Active::Crash(id) => {
                sim.bounce(name(id));
                format!("restart r{id}")
            }
            Active::CrashAll(order) => {
                // The old leader first, at once; the others a little later, one by one.
                let mut at = 0;
                let mut said = Vec::new();
                for (n, id) in order.into_iter().enumerate() {
                    if n == 0 {
                        sim.bounce(name(id));
                    } else {
                        at += self.rng.between(5, 150);
                        self.restarts.push((at, id));
                    }
                    said.push(format!("r{id} +{at} ms"));
                }
                format!("restart {}", said.join(", "))
            }
            Active::Lossy => {
                self.set_loss(sim, 0.0);
                "peer links lossless again".into()
            }
            Active::Slow => {
                sim.set_max_message_latency(BASE_LATENCY);
                "latency back to normal".into()
            }
        }
    }

    fn set_loss(&self, sim: &mut turmoil::Sim<'_>, rate: f64) {
        for a in 1..=self.replicas {
            for b in (a + 1)..=self.replicas {
                sim.set_link_fail_rate(name(a), name(b), rate);
            }
        }
    }

    /// Restarts due after a crash of all replicas; true while some are still down.
    fn restart_due(&mut self, at: u64, sim: &mut turmoil::Sim<'_>) -> bool {
        let Some(&(offset, id)) = self.restarts.first() else { return false };
        if at >= self.next_at + offset {
            self.restarts.remove(0);
            sim.bounce(name(id));
        }
        true
    }

    /// Starts or ends a fault when one is due; says what it did.
    pub fn maybe_act(
        &mut self,
        at: u64,
        sim: &mut turmoil::Sim<'_>,
        slots: &[Slot],
        clocks: &[SimClock],
    ) -> Option<String> {
        if let Some((_, until)) = &self.active {
            if at < *until {
                return None;
            }
            let (active, _) = self.active.take()?;
            let restarting_from = at;
            let said = self.end(sim, active);
            if self.restarts.is_empty() {
                self.next_at = at + self.rng.between(200, 1_200);
            } else {
                // Restart offsets count from now; the next fault waits for them.
                self.next_at = restarting_from;
            }
            return Some(said);
        }
        if self.restart_due(at, sim) {
            if self.restarts.is_empty() {
                self.next_at = at + self.rng.between(200, 1_200);
            }
            return None;
        }
        if at < self.next_at {
            return None;
        }
        let duration = self.rng.between(300, 2_500);
        let leader = leader(slots).unwrap_or(1);
        let (active, what) = match self.rng.below(10) {
            0 => {
                let pairs: Vec<(u64, u64)> =
                    self.others(leader).into_iter().map(|o| (leader, o)).collect();
                for (a, b) in &pairs {
                    sim.partition(name(*a), name(*b));
                }
                (Active::Cut(pairs), format!("isolate leader r{leader}"))
            }
            1 => {
                let ids = self.shuffled();
                let minority = usize::try_from((self.replicas - 1) / 2).unwrap_or(1);
                let (small, big) = ids.split_at(minority);
                let mut pairs = Vec::new();
                for a in small {
                    for b in big {
                        sim.partition(name(*a), name(*b));
                        pairs.push((*a, *b));
                    }
                }
                (Active::Cut(pairs), format!("split {small:?} | {big:?}"))
            }
            2 => {
                // Two halves that only the bridge node connects.
                let ids = self.shuffled();
                let half = ids.len() / 2;
                let (left, rest) = ids.split_at(half);
                let (bridge, right) = rest.split_at(1);
                let mut pairs = Vec::new();
                for a in left {
                    for b in right {
                        sim.partition(name(*a), name(*b));
                        pairs.push((*a, *b));
                    }
                }
                (Active::Cut(pairs), format!("bridge {left:?} - {bridge:?} - {right:?}"))
            }
            3 => {
                let others = self.others(leader);
                let to = others[usize::try_from(self.rng.below(others.len() as u64)).unwrap_or(0)];
                sim.partition_oneway(name(leader), name(to));
                (Active::OneWay(leader, to), format!("one-way cut r{leader}->r{to}"))
            }
            4 => {
                let pairs: Vec<(u64, u64)> =
                    self.others(leader).into_iter().map(|o| (leader, o)).collect();
                for (a, b) in &pairs {
                    sim.hold(name(*a), name(*b));
                }
                (Active::Hold(pairs), format!("hold leader r{leader}'s messages"))
            }
            5 | 6 => {
                let id = self.rng.between(1, self.replicas);
                sim.crash(name(id));
                *slots[usize::try_from(id - 1).unwrap_or(0)]
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = None;
                let long = self.rng.below(3) == 0;
                let down = if long { duration + 4_000 } else { duration };
                self.active = Some((Active::Crash(id), at + down));
                self.next_at = at + down;
                return Some(format!("crash r{id} for {down} ms"));
            }
            8 => {
                let rate = [0.002, 0.01, 0.05][usize::try_from(self.rng.below(3)).unwrap_or(0)];
                self.set_loss(sim, rate);
                (Active::Lossy, format!("peer links fail at rate {rate} per ms"))
            }
            9 => {
                let mut order = vec![leader];
                order.extend(self.others(leader));
                for id in 1..=self.replicas {
                    sim.crash(name(id));
                    *slots[usize::try_from(id - 1).unwrap_or(0)]
                        .lock()
                        .unwrap_or_else(|p| p.into_inner()) = None;
                }
                let down = self.rng.between(1, 300);
                self.active = Some((Active::CrashAll(order), at + down));
                return Some(format!("crash every replica (leader r{leader}) for {down} ms"));
            }
            _ => {
                if self.rng.below(2) == 0 {
                    sim.set_max_message_latency(Duration::from_millis(60));
                    (Active::Slow, "latency spike to 60 ms".into())
                } else {
                    let id = self.rng.between(1, self.replicas);
                    // Mostly within the lease grace; one in three far beyond it, where only
                    // the leader's bound by its peers' clocks keeps log time true.
                    let range = if self.rng.below(3) == 0 { 120_000 } else { 4_000 };
                    let skew = i64::try_from(self.rng.below(range + 1)).unwrap_or(0)
                        - i64::try_from(range / 2).unwrap_or(0);
                    // One skewed clock at a time: the bound holds while most clocks are sound
                    // (`berth::clock::ClockSync`), so a later skew moves the clock already
                    // skewed (seed 762 skewed two of three, 33.6 s and 1.7 s ahead, and log
                    // time followed; the peers' readings of a clock set right lag by up to a
                    // sampling interval, so moving the skew to another replica does the same).
                    let skewed = clocks.iter().position(|c| c.skew_ms.load(Ordering::Relaxed) != 0);
                    let index = skewed.unwrap_or(usize::try_from(id - 1).unwrap_or(0));
                    let id = u64::try_from(index).unwrap_or(0) + 1;
                    clocks[index].skew_ms.store(skew, Ordering::Relaxed);
                    self.next_at = at + duration;
                    return Some(format!("skew r{id}'s clock by {skew} ms"));
                }
            }
        };
        self.active = Some((active, at + duration));
        Some(format!("{what} for {duration} ms"))
    }

    /// Ends any fault, repairs every link, restarts what is down and removes clock skew.
    pub fn heal(&mut self, sim: &mut turmoil::Sim<'_>, clocks: &[SimClock]) -> String {
        let mut done = Vec::new();
        if let Some((active, _)) = self.active.take() {
            done.push(self.end(sim, active));
        }
        for (_, id) in std::mem::take(&mut self.restarts) {
            sim.bounce(name(id));
        }
        self.set_loss(sim, 0.0);
        for a in 1..=self.replicas {
            for b in (a + 1)..=self.replicas {
                sim.repair(name(a), name(b));
            }
        }
        sim.set_max_message_latency(BASE_LATENCY);
        for clock in clocks {
            clock.skew_ms.store(0, Ordering::Relaxed);
        }
        done.push("all links repaired, skew removed".into());
        done.join("; ")
    }
}
