//! Faults, injected by the kernel and by signals, and healed.
//!
//! - `partition`: iptables DROP rules inside the receiving replica's namespace (a *grudge*:
//!   who must not hear from whom, so one-way cuts fall out naturally). Shapes: isolate one,
//!   isolate the leader, majority/minority halves, majorities-ring (5+ replicas), bridge, and
//!   one-way. Clients are never cut off: they can still reach a minority replica.
//! - `kill`: SIGKILL one replica, the leader, a minority, or all of them; restarted on the same
//!   data directory when healed. One kill in three, when the run has `berth agent` processes
//!   (the worker workload), kills an agent instead: its worker goes down after the pool's TTL,
//!   and the agent started again at healing revives it.
//! - `pause`: SIGSTOP the leader (or any replica) for the whole fault interval, which is
//!   beyond the election timeout; SIGCONT when healed. One pause in three stops a lease
//!   client process instead (when the run has one), for longer than the lease TTL: it
//!   resumes believing it holds its lease, and its next fenced write must be refused. With
//!   agent processes, one pause in three (drawn first) stops an agent for the interval: its
//!   worker goes down while it sleeps, and it wakes to a worker that holds nothing.
//! - `clock`: move a running replica's clock (the leader's, half the time) by ±0.1–2 s (below
//!   the lease grace), or one time in three by ±20–60 s (far beyond it: a leader that far ahead
//!   must be held to its peers' clocks); healed by setting it back. The replica follows the
//!   offset in a file (`--test-clock-offset-file`), so the clock jumps while it runs, as an
//!   NTP step would.
//! - `netem`: `tc netem` delay and loss on some replicas. A kernel without netem gets loss
//!   only, from an iptables `statistic` rule that drops a random share of incoming packets.
//! - `member`: remove a replica through the admin API (RemoveReplica); healed by wiping its
//!   data directory, starting it empty and adding it back (AddReplica: learner, catch-up by
//!   snapshot or log, promotion).
//!
//! Faults are staggered: quiet, fault for one interval, heal, quiet, and so on; at the end
//! everything is healed. Each start and stop is recorded in the history.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use berth::client::{self, pb};
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::history::{Op, Outcome, Recorder, Type, NEMESIS};
use crate::topology::{replica_ip, sh_in, sh_quiet, sh_quiet_in, Cluster};
use crate::workload::Shared;
use berth_rng::Rng;

pub const KINDS: &[&str] = &["partition", "kill", "pause", "clock", "netem", "member"];

/// True if the kernel has `tc netem` (some containers lack the module).
pub fn netem_supported(ns: &str) -> bool {
    let ok =
        sh_in(ns, &["tc", "qdisc", "add", "dev", "eth0", "root", "netem", "delay", "1ms"]).is_ok();
    sh_quiet_in(ns, &["tc", "qdisc", "del", "dev", "eth0", "root"]);
    ok
}

/// The current leader, as the cluster reports it.
pub async fn leader(shared: &Shared) -> Option<u64> {
    let c = shared.client(Duration::from_secs(2)).ok()?;
    let r = c
        .call(pb::StatusRequest {}, |ch, r| async move { client::cluster(ch).status(r).await })
        .await
        .ok()?;
    r.leader_id
}

pub struct Nemesis {
    pub kinds: Vec<String>,
    pub cluster: Arc<Mutex<Cluster>>,
    pub shared: Arc<Shared>,
    pub rng: Rng,
    /// Replica ids whose process is down because of a fault.
    killed: BTreeSet<u64>,
    partitioned: bool,
    netem: BTreeSet<u64>,
    removed: BTreeSet<u64>,
    /// Lease client processes stopped by a fault.
    paused_clients: BTreeSet<u32>,
    /// Whether the kernel has `tc netem` (else `netem` is random loss through iptables).
    pub netem_supported: bool,
    pub faults: u64,
}

fn record(rec: &Recorder, f: &str, what: &str) {
    let inv = rec.invoke(NEMESIS, Op::invoke("nemesis", f, what));
    rec.complete(&inv, Type::Info, Outcome::default());
}

impl Nemesis {
    pub fn new(
        kinds: Vec<String>,
        cluster: Arc<Mutex<Cluster>>,
        shared: Arc<Shared>,
        seed: u64,
    ) -> Nemesis {
        Nemesis {
            kinds,
            cluster,
            shared,
            rng: Rng::new(seed ^ 0x006e_656d_6573_6973),
            killed: BTreeSet::new(),
            partitioned: false,
            netem: BTreeSet::new(),
            removed: BTreeSet::new(),
            paused_clients: BTreeSet::new(),
            netem_supported: true,
            faults: 0,
        }
    }

    /// Quiet, fault, heal, quiet … until `until`; returns with everything healed.
    pub async fn run(&mut self, interval: Duration, until: Instant) -> anyhow::Result<()> {
        if self.kinds.is_empty() {
            tokio::time::sleep_until(until).await;
            return Ok(());
        }
        tokio::time::sleep(interval / 2).await;
        while Instant::now() + interval < until {
            let i = usize::try_from(self.rng.below(u64::try_from(self.kinds.len())?))?;
            let kind = self.kinds[i].clone();
            let what = self.start(&kind).await?;
            self.faults += 1;
            record(&self.shared.recorder, "start", &what);
            eprintln!("[nemesis] start {what}");
            tokio::time::sleep(interval).await;
            self.heal().await?;
            record(&self.shared.recorder, "stop", "heal");
            eprintln!("[nemesis] healed");
            tokio::time::sleep(interval / 2).await;
        }
        Ok(())
    }

    async fn pick_target(&mut self, prefer_leader: bool) -> u64 {
        let ids = self.cluster.lock().await.ids();
        if prefer_leader {
            if let Some(l) = leader(&self.shared).await {
                return l;
            }
        }
        let i = usize::try_from(self.rng.below(u64::try_from(ids.len()).unwrap_or(1))).unwrap_or(0);
        ids[i]
    }

    fn with_agents<T>(&self, f: impl FnOnce(&mut crate::fleet::Agents) -> T) -> Option<T> {
        self.shared.agents.lock().unwrap_or_else(|e| e.into_inner()).as_mut().map(f)
    }

    /// One time in three, when the run has agent processes: one of them to kill or pause.
    fn pick_agent(&mut self) -> Option<String> {
        let targets = self.with_agents(|a| a.targets())?;
        if targets.is_empty() || self.rng.below(3) != 0 {
            return None;
        }
        let i = usize::try_from(self.rng.below(u64::try_from(targets.len()).ok()?)).ok()?;
        Some(targets[i].clone())
    }

    /// Starts one fault of `kind`; returns its description.
    async fn start(&mut self, kind: &str) -> anyhow::Result<String> {
        let ids = self.cluster.lock().await.ids();
        let n = ids.len();
        match kind {
            "partition" => {
                let mut shapes = vec!["one", "leader", "halves", "bridge", "oneway"];
                if n >= 5 {
                    shapes.push("ring");
                }
                let shape = shapes[usize::try_from(self.rng.below(u64::try_from(shapes.len())?))?];
                let mut order = ids.clone();
                self.rng.shuffle(&mut order);
                let mut grudge: BTreeMap<u64, BTreeSet<u64>> = BTreeMap::new();
                let mut cut = |a: &[u64], b: &[u64]| {
                    for x in a {
                        for y in b {
                            grudge.entry(*x).or_default().insert(*y);
                            grudge.entry(*y).or_default().insert(*x);
                        }
                    }
                };
                let desc = match shape {
                    "one" | "leader" => {
                        let x =
                            if shape == "leader" { self.pick_target(true).await } else { order[0] };
                        let rest: Vec<u64> = ids.iter().copied().filter(|i| *i != x).collect();
                        cut(&[x], &rest);
                        format!("partition {shape} [{x}] | {rest:?}")
                    }
                    "halves" => {
                        let (minority, majority) = order.split_at(n / 2);
                        cut(minority, majority);
                        format!("partition halves {minority:?} | {majority:?}")
                    }
                    "bridge" => {
                        // a | middle | c, the middle node seeing both sides.
                        let (a, rest) = order.split_at((n - 1) / 2);
                        let (middle, c) = rest.split_at(1);
                        cut(a, c);
                        format!("partition bridge {a:?} <{}> {c:?}", middle[0])
                    }
                    "ring" => {
                        // Each replica hears only its two ring neighbours: all see a majority,
                        // no two the same one.
                        for (k, x) in order.iter().enumerate() {
                            let near = [order[(k + 1) % n], order[(k + n - 1) % n], *x];
                            for y in &order {
                                if !near.contains(y) {
                                    grudge.entry(*x).or_default().insert(*y);
                                }
                            }
                        }
                        format!("partition majorities-ring {order:?}")
                    }
                    _ => {
                        let x = order[0];
                        let rest: Vec<u64> = ids.iter().copied().filter(|i| *i != x).collect();
                        grudge.insert(x, rest.iter().copied().collect());
                        format!("partition oneway [{x}] hears nobody; {rest:?} still hear it")
                    }
                };
                let cluster = self.cluster.lock().await;
                for (to, from) in &grudge {
                    let ns = &cluster.replicas[to].ns;
                    for f in from {
                        sh_in(
                            ns,
                            &["iptables", "-w", "-A", "INPUT", "-s", &replica_ip(*f), "-j", "DROP"],
                        )?;
                    }
                }
                self.partitioned = true;
                Ok(desc)
            }
            "kill" => {
                if let Some(w) = self.pick_agent() {
                    self.with_agents(|a| a.kill(&w));
                    return Ok(format!("kill agent {w}"));
                }
                let targets: Vec<u64> = match self.rng.below(4) {
                    0 => vec![self.pick_target(true).await],
                    1 => vec![self.pick_target(false).await],
                    2 => {
                        let mut order = ids.clone();
                        self.rng.shuffle(&mut order);
                        order.truncate((n - 1) / 2);
                        order
                    }
                    _ => ids.clone(),
                };
                let mut cluster = self.cluster.lock().await;
                for t in &targets {
                    cluster.kill(*t);
                    self.killed.insert(*t);
                }
                Ok(format!("kill {targets:?}"))
            }
            "pause" => {
                if let Some(w) = self.pick_agent() {
                    self.with_agents(|a| a.pause(&w, true));
                    return Ok(format!("pause agent {w}"));
                }
                let clients: Vec<(u32, u64)> = self
                    .shared
                    .client_pids
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .iter()
                    .map(|(pid, worker)| (*pid, *worker))
                    .collect();
                if !clients.is_empty() && self.rng.below(3) == 0 {
                    let i = usize::try_from(self.rng.below(u64::try_from(clients.len())?))?;
                    let (pid, worker) = clients[i];
                    sh_quiet(&["kill", "-STOP", &pid.to_string()]);
                    self.paused_clients.insert(pid);
                    return Ok(format!("pause lease client {worker} (pid {pid})"));
                }
                let leader = self.rng.below(3) != 0;
                let t = self.pick_target(leader).await;
                self.cluster.lock().await.pause(t, true);
                Ok(format!("pause {} {t}", if leader { "leader" } else { "replica" }))
            }
            "clock" => {
                let prefer_leader = self.rng.below(2) == 0;
                let t = self.pick_target(prefer_leader).await;
                // Mostly within the lease grace; one in three far beyond it (20-60 s), where
                // only a leader's bound by its peers' clocks keeps log time true.
                let magnitude = if self.rng.below(3) == 0 {
                    i64::try_from(20_000 + self.rng.below(40_001))?
                } else {
                    i64::try_from(100 + self.rng.below(1_900))?
                };
                let offset = if self.rng.below(2) == 0 { magnitude } else { -magnitude };
                let mut cluster = self.cluster.lock().await;
                if let Some(r) = cluster.replicas.get_mut(&t) {
                    r.set_clock_offset(offset)?;
                }
                Ok(format!("clock {t} offset {offset} ms"))
            }
            "netem" => {
                let mut order = ids.clone();
                self.rng.shuffle(&mut order);
                order.truncate(1 + usize::try_from(self.rng.below(u64::try_from(n)?))?);
                let delay = 20 + self.rng.below(200);
                let loss = self.rng.below(10);
                let cluster = self.cluster.lock().await;
                if !self.netem_supported {
                    let loss = 5 + self.rng.below(26);
                    let p = format!("0.{loss:02}");
                    for t in &order {
                        let ns = &cluster.replicas[t].ns;
                        sh_in(
                            ns,
                            &[
                                "iptables",
                                "-w",
                                "-I",
                                "INPUT",
                                "-m",
                                "statistic",
                                "--mode",
                                "random",
                                "--probability",
                                &p,
                                "-j",
                                "DROP",
                            ],
                        )?;
                    }
                    self.partitioned = true;
                    return Ok(format!("loss {order:?} {loss}% (iptables; no netem)"));
                }
                for t in &order {
                    let ns = &cluster.replicas[t].ns;
                    sh_in(
                        ns,
                        &[
                            "tc",
                            "qdisc",
                            "add",
                            "dev",
                            "eth0",
                            "root",
                            "netem",
                            "delay",
                            &format!("{delay}ms"),
                            &format!("{}ms", delay / 2),
                            "loss",
                            &format!("{loss}%"),
                        ],
                    )?;
                    self.netem.insert(*t);
                }
                Ok(format!("netem {order:?} delay {delay}ms loss {loss}%"))
            }
            "member" => {
                let prefer_leader = self.rng.below(3) == 0;
                let t = self.pick_target(prefer_leader).await;
                let c = self.shared.client(Duration::from_secs(10))?;
                let req = pb::RemoveReplicaRequest { replica_id: t };
                let outcome = c
                    .call(req, |ch, r| async move { client::cluster(ch).remove_replica(r).await })
                    .await;
                // Whatever the answer, heal re-adds it (wiped) if it is no longer a voter.
                self.removed.insert(t);
                Ok(match outcome {
                    Ok(_) => format!("member remove {t}"),
                    Err(e) => {
                        format!("member remove {t} (answer: {})", crate::workload::reason(&e))
                    }
                })
            }
            other => anyhow::bail!("unknown nemesis {other:?} (one of {KINDS:?})"),
        }
    }

    /// Heals every fault: rules flushed, netem removed, paused resumed, clocks reset, killed
    /// replicas restarted.
    pub async fn heal(&mut self) -> anyhow::Result<()> {
        let mut cluster = self.cluster.lock().await;
        let ids = cluster.ids();
        for id in &ids {
            let ns = cluster.replicas[id].ns.clone();
            if self.partitioned {
                sh_in(&ns, &["iptables", "-w", "-F", "INPUT"])?;
            }
            if self.netem.remove(id) {
                sh_quiet_in(&ns, &["tc", "qdisc", "del", "dev", "eth0", "root"]);
            }
            if cluster.replicas[id].paused {
                cluster.pause(*id, false);
            }
            if cluster.replicas[id].clock_offset_ms != 0 {
                if let Some(r) = cluster.replicas.get_mut(id) {
                    r.set_clock_offset(0)?;
                }
            }
            if !cluster.running(*id) {
                cluster.start(*id)?;
            }
        }
        self.partitioned = false;
        self.killed.clear();
        drop(cluster);
        for pid in std::mem::take(&mut self.paused_clients) {
            sh_quiet(&["kill", "-CONT", &pid.to_string()]);
        }
        self.with_agents(crate::fleet::Agents::heal).transpose()?;
        let removed = std::mem::take(&mut self.removed);
        for id in removed {
            self.readd(id).await?;
        }
        Ok(())
    }

    /// Brings a removed replica back as a new, empty member, unless it is still a voter.
    async fn readd(&mut self, id: u64) -> anyhow::Result<()> {
        let c = self.shared.client(Duration::from_secs(30))?;
        let status = c
            .call(pb::StatusRequest {}, |ch, r| async move { client::cluster(ch).status(r).await })
            .await
            .map_err(|e| anyhow::anyhow!("cluster status before re-adding {id}: {e}"))?;
        if status.replicas.iter().any(|r| r.replica_id == id && r.voter) {
            return Ok(());
        }
        {
            let mut cluster = self.cluster.lock().await;
            cluster.kill(id);
            if let Some(r) = cluster.replicas.get(&id) {
                let _ = std::fs::remove_dir_all(&r.data_dir);
            }
            cluster.start(id)?;
        }
        let req = pb::AddReplicaRequest {
            replica_id: id,
            peer_address: format!("{}:{}", replica_ip(id), crate::topology::PEER_PORT),
        };
        c.call(req, |ch, r| async move { client::cluster(ch).add_replica(r).await })
            .await
            .map_err(|e| anyhow::anyhow!("re-adding replica {id}: {e}"))?;
        eprintln!("[nemesis] replica {id} re-added (empty data directory)");
        Ok(())
    }
}
