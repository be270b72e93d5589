//! The `worker` workload's processes: `berth agent` processes (one per worker of the pool
//! `checker::worker::POOL`), which the `kill` and `pause` nemeses SIGKILL and SIGSTOP as they
//! do lease client processes; the watchers, which record every event with its position
//! (`Client::watch`, admin token, all kinds); and the final reads the checker compares them
//! with.
//!
//! Agents run the real `berth agent` (the run's own `berth` binary) inside the clients'
//! namespace; their `--json` lines go to `agent-<worker>.log` in the run directory. A killed
//! agent is started again when the nemesis heals, which revives its worker (empty).
//!
//! Watcher 1 watches from "now" (before setup, so it sees the workers registered); watcher 2
//! resumes after watcher 1's starting point and, every `REOPEN_EVERY`, ends its stream on
//! purpose and resumes on the next replica, so the run always includes resumes across
//! replicas besides those the nemesis forces.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use berth::client::{self, pb, Client, ClientOptions};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::checker::worker::{self, Event, Holdings, Observed, Watch};
use crate::run::{list_placements, list_tenants, list_workers};
use crate::topology::sh_quiet;
use crate::workload::Shared;

/// Agent processes, one worker each.
pub const AGENTS: u64 = 4;
/// The pool's worker TTL: a paused or killed agent's worker goes down within a fault.
pub const WORKER_TTL_MS: u64 = 2_000;
/// Watcher 2 resumes on the next replica this often.
const REOPEN_EVERY: Duration = Duration::from_secs(15);
/// Longest wait for the workers to be up, or the watchers to catch up, after healing.
const SETTLE: Duration = Duration::from_secs(30);

pub fn agent_worker(i: u64) -> String {
    format!("a{i}")
}

struct Agent {
    child: Option<Child>,
    paused: bool,
}

/// The agent processes of a run.
pub struct Agents {
    berth: PathBuf,
    dir: PathBuf,
    endpoints: Vec<String>,
    token: String,
    ca: PathBuf,
    procs: BTreeMap<String, Agent>,
}

impl Agents {
    pub fn new(
        berth: PathBuf,
        dir: PathBuf,
        endpoints: Vec<String>,
        token: String,
        ca: PathBuf,
    ) -> Agents {
        Agents { berth, dir, endpoints, token, ca, procs: BTreeMap::new() }
    }

    /// Starts (or starts again) the agent of `worker`.
    pub fn start(&mut self, worker: &str) -> anyhow::Result<()> {
        let log = self.dir.join(format!("agent-{worker}.log"));
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("opening {}", log.display()))?;
        let cpu = format!("{}", worker::WORKER_CPU / 1_000);
        let child = Command::new(&self.berth)
            .arg("--endpoints")
            .arg(self.endpoints.join(","))
            .arg("--ca")
            .arg(&self.ca)
            .args(["--json", "agent", worker, "--cpu", &cpu])
            .args(["--memory-mib", &worker::WORKER_MEM.to_string(), "--pool", worker::POOL])
            .env("BERTH_TOKEN", &self.token)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("starting berth agent")?;
        self.procs.insert(worker.to_owned(), Agent { child: Some(child), paused: false });
        Ok(())
    }

    /// Workers whose agent runs and is not paused (what a fault can target).
    pub fn targets(&self) -> Vec<String> {
        self.procs
            .iter()
            .filter(|(_, a)| a.child.is_some() && !a.paused)
            .map(|(w, _)| w.clone())
            .collect()
    }

    pub fn kill(&mut self, worker: &str) {
        if let Some(mut child) = self.procs.get_mut(worker).and_then(|a| a.child.take()) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGSTOP (`true`) or SIGCONT (`false`).
    pub fn pause(&mut self, worker: &str, stop: bool) {
        if let Some(a) = self.procs.get_mut(worker) {
            if let Some(child) = &a.child {
                sh_quiet(&["kill", if stop { "-STOP" } else { "-CONT" }, &child.id().to_string()]);
                a.paused = stop;
            }
        }
    }

    /// Resumes paused agents and starts killed ones again.
    pub fn heal(&mut self) -> anyhow::Result<()> {
        let workers: Vec<String> = self.procs.keys().cloned().collect();
        for w in workers {
            if self.procs[&w].paused {
                self.pause(&w, false);
            }
            if self.procs[&w].child.is_none() {
                self.start(&w)?;
            }
        }
        Ok(())
    }

    /// Agents that exited by themselves (not killed by a fault), with their status.
    pub fn exited(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        for (w, a) in &mut self.procs {
            if let Some(Ok(Some(status))) = a.child.as_mut().map(Child::try_wait) {
                out.push(format!("agent {w} exited by itself ({status})"));
                a.child = None;
            }
        }
        out
    }
}

impl Drop for Agents {
    fn drop(&mut self) {
        let workers: Vec<String> = self.procs.keys().cloned().collect();
        for w in workers {
            self.pause(&w, false);
            self.kill(&w);
        }
    }
}

/// The pool's TTL, then an agent per worker (their pids in `shared.agents`).
pub async fn start_agents(shared: &Shared, mut agents: Agents) -> anyhow::Result<()> {
    let c = shared.client(Duration::from_secs(60))?;
    let req = pb::SetPoolWorkerTtlRequest {
        request_id: "setup-worker-ttl".to_owned(),
        pool: worker::POOL.to_owned(),
        ttl_ms: WORKER_TTL_MS,
        ..Default::default()
    };
    c.call(req, |ch, r| async move { client::workers(ch).set_pool_worker_ttl(r).await }).await?;
    for i in 0..AGENTS {
        agents.start(&agent_worker(i))?;
    }
    *shared.agents.lock().unwrap_or_else(|e| e.into_inner()) = Some(agents);
    wait_workers_up(shared).await
}

/// Until every agent's worker is registered and not down (or `SETTLE` passes).
async fn wait_workers_up(shared: &Shared) -> anyhow::Result<()> {
    let c = shared.client(Duration::from_secs(5))?;
    let until = Instant::now() + SETTLE;
    loop {
        let up = list_workers(&c).await.map(|ws| {
            ws.iter()
                .filter(|w| w.pool == worker::POOL && w.down_since_ms.is_none())
                .filter(|w| w.liveness.is_some())
                .count()
        });
        if up.as_ref().is_ok_and(|n| u64::try_from(*n).unwrap_or(0) == AGENTS) {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < until, "agents' workers not all up: {up:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The running watchers.
pub struct Watchers {
    watches: Vec<Arc<Mutex<Watch>>>,
    tasks: Vec<JoinHandle<()>>,
}

fn event(e: &pb::WatchEvent) -> Event {
    Event {
        log_index: e.log_index,
        event: e.event,
        kind: e.kind.clone(),
        tenant: e.tenant_id.clone(),
        placement: e.placement_id.clone(),
        workers: e.workers.clone(),
        resources: e.resources.map_or([0, 0], |r| [r.cpu_millis, r.memory_mib]),
        reason: e.reason.clone(),
        moves: e
            .moves
            .iter()
            .map(|m| (m.slot, m.from_worker.clone(), m.to_worker.clone()))
            .collect(),
        instances_lost: e.instances_lost,
        digest: worker::digest(format!("{e:?}").as_bytes()),
    }
}

/// Watches everything until aborted, resuming after its last position on the next replica
/// whenever the stream ends (by itself, or every `reopen` on purpose).
async fn watch_loop(
    shared: Arc<Shared>,
    watch: Arc<Mutex<Watch>>,
    first: u64,
    reopen: Option<Duration>,
    started: Option<tokio::sync::oneshot::Sender<()>>,
) {
    let mut started = started;
    let mut k = usize::try_from(first).unwrap_or(0);
    let n = shared.endpoints.len().max(1);
    loop {
        let mut endpoints = shared.endpoints.clone();
        endpoints.rotate_left(k % n);
        k += 1;
        let options = ClientOptions {
            deadline: Duration::from_secs(10),
            attempt_timeout: Duration::from_secs(2),
        };
        let c = match Client::new(&endpoints, Some(&shared.token), &shared.tls, options) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("[watch] cannot make a client: {e:#}");
                return;
            }
        };
        let after = {
            let w = watch.lock().unwrap_or_else(|e| e.into_inner());
            (started.is_none()).then(|| w.end())
        };
        let req = pb::WatchRequest {
            tenant_id: String::new(),
            after_log_index: after.map(|p| p.0),
            after_event: after.map(|p| p.1),
            kinds: Vec::new(),
        };
        let opened = Instant::now();
        let result = c
            .watch(req, |m| {
                let mut w = watch.lock().unwrap_or_else(|e| e.into_inner());
                match m.message {
                    Some(pb::watch_response::Message::Event(e)) => w.events.push(event(&e)),
                    Some(pb::watch_response::Message::Progress(p)) => {
                        if let Some(tx) = started.take() {
                            w.start = (p.log_index, p.event);
                            let _ = tx.send(());
                        }
                    }
                    None => {}
                }
                reopen.is_none_or(|d| opened.elapsed() < d)
            })
            .await;
        let failed = {
            let mut w = watch.lock().unwrap_or_else(|e| e.into_inner());
            match result {
                Err(s) => {
                    let why = format!("{}: {}", crate::workload::reason(&s), s.message());
                    eprintln!("[watch] watcher {} (resuming): {why}", w.name);
                    w.stopped = Some(why);
                    true
                }
                Ok(()) => {
                    w.stopped = None;
                    w.resumes += 1;
                    false
                }
            }
        };
        if failed {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// Starts both watchers; returns once both have a starting position.
pub async fn start_watchers(shared: Arc<Shared>) -> anyhow::Result<Watchers> {
    let first = Arc::new(Mutex::new(Watch { name: "1".into(), ..Watch::default() }));
    let (tx, rx) = tokio::sync::oneshot::channel();
    let mut tasks =
        vec![tokio::spawn(watch_loop(shared.clone(), first.clone(), 0, None, Some(tx)))];
    tokio::time::timeout(SETTLE, rx).await.context("watcher 1 never started")??;
    let start = first.lock().unwrap_or_else(|e| e.into_inner()).start;
    let second = Arc::new(Mutex::new(Watch { name: "2".into(), start, ..Watch::default() }));
    tasks.push(tokio::spawn(watch_loop(shared, second.clone(), 1, Some(REOPEN_EVERY), None)));
    Ok(Watchers { watches: vec![first, second], tasks })
}

async fn create_marker(c: &Client, name: &str) -> Result<u64, tonic::Status> {
    let req = pb::CreateTenantRequest {
        request_id: format!("final-{name}"),
        tenant_id: name.to_owned(),
        ..Default::default()
    };
    let r = c.call(req, |ch, r| async move { client::tenants(ch).create_tenant(r).await }).await?;
    Ok(r.write.map_or(0, |w| w.log_index))
}

/// Who holds what, every tenant and every worker; and the workers that are down.
async fn read_holdings(c: &Client) -> Result<(Holdings, BTreeSet<String>), tonic::Status> {
    let mut h = Holdings::default();
    for t in list_tenants(c).await? {
        for p in list_placements(c, &t).await? {
            let id = p.spec.map(|s| s.placement_id).unwrap_or_default();
            h.placements.insert(format!("{t}/{id}"), p.workers);
        }
    }
    let mut down = BTreeSet::new();
    for w in list_workers(c).await? {
        if w.down_since_ms.is_some() {
            down.insert(w.worker_id.clone());
        }
        let mut after = String::new();
        loop {
            let req = pb::ListWorkerPlacementsRequest {
                worker_id: w.worker_id.clone(),
                page: Some(pb::Page { after: after.clone(), limit: 1_000 }),
                read: None,
            };
            let page = c
                .call(
                    req,
                    |ch, r| async move { client::workers(ch).list_worker_placements(r).await },
                )
                .await?
                .placements;
            for p in &page {
                let id = p.spec.as_ref().map(|s| s.placement_id.clone()).unwrap_or_default();
                after = format!("{}/{id}", p.tenant_id);
                h.by_worker.entry(w.worker_id.clone()).or_default().insert(after.clone());
            }
            if page.len() < 1_000 {
                break;
            }
        }
    }
    Ok((h, down))
}

/// After healing: the workers up again, the final reads between two marker writes, and the
/// watchers caught up past the second marker; then the watchers stop.
pub async fn finish(shared: &Shared, watchers: Watchers) -> Observed {
    let mut o = Observed::default();
    if let Err(e) = wait_workers_up(shared).await {
        o.problems.push(e.to_string());
    }
    let read = async {
        let c = shared
            .client(Duration::from_secs(60))
            .map_err(|e| tonic::Status::internal(e.to_string()))?;
        o.marker_before = create_marker(&c, "mark-before").await?;
        let (reads, down) = read_holdings(&c).await?;
        o.marker_after = create_marker(&c, "mark-after").await?;
        Ok::<_, tonic::Status>((reads, down))
    };
    match read.await {
        Ok((reads, down)) => {
            o.reads = Some(reads);
            o.down = down;
        }
        Err(s) => o.problems.push(format!("final reads: {s}")),
    }
    let until = Instant::now() + SETTLE;
    while Instant::now() < until {
        let behind = watchers
            .watches
            .iter()
            .any(|w| w.lock().unwrap_or_else(|e| e.into_inner()).end().0 < o.marker_after);
        if !behind {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for t in &watchers.tasks {
        t.abort();
    }
    o.watches = watchers
        .watches
        .iter()
        .map(|w| w.lock().unwrap_or_else(|e| e.into_inner()).clone())
        .collect();
    o
}
