//! `berth agent`: the process on a worker machine. It registers the worker (or finds it
//! registered), heartbeats it, watches its assignments, reports each instance running, and runs
//! the `--on-assign` hook per instance (its exit status is reported: 0 completed, else failed)
//! and the `--on-release` hook when an instance is taken away (released, preempted, moved off
//! a worker that went down, timed out), like Slurm's prolog and epilog. Hooks get the
//! instance in `BERTH_*` environment variables.
//!
//! It follows the cluster through failovers (every call fails over between endpoints, and the
//! assignment stream is reopened with backoff; each reopening starts with the full set, which
//! the agent reconciles against what it runs). Ctrl-C drains: the worker is drained (no new
//! work), running hooks get `--drain-timeout` to finish and be reported, then the agent stops
//! heartbeating and exits; its worker goes down after its TTL and anything still placed there
//! moves. A second Ctrl-C exits at once.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use berth::client::{pb, Client, ClientOptions};
use clap::Args;
use tokio::sync::{mpsc, oneshot};

use crate::cli::args::{parse_duration_ms, parse_pair, Size};
use crate::cli::{describe, Connection};

#[derive(Args, Debug)]
pub struct AgentArgs {
    /// The worker's id.
    worker: String,
    #[command(flatten)]
    size: Size,
    #[arg(long)]
    pool: Option<String>,
    /// A worker label KEY=VALUE (repeatable).
    #[arg(long = "label", value_parser = parse_pair)]
    labels: Vec<(String, String)>,
    /// Run per assigned instance (`sh -c`); its exit status is reported (0: completed).
    #[arg(long)]
    on_assign: Option<String>,
    /// Run when an instance is taken away (`sh -c`), after its --on-assign hook is killed.
    #[arg(long)]
    on_release: Option<String>,
    /// How often to heartbeat (default: a third of the pool's worker TTL).
    #[arg(long, value_parser = parse_duration_ms)]
    heartbeat_every: Option<u64>,
    /// On Ctrl-C, how long running hooks may take to finish.
    #[arg(long, value_parser = parse_duration_ms, default_value = "30s")]
    drain_timeout: u64,
}

/// An instance by (tenant, placement, slot, assigned_at): moved away and back is another one.
type Key = (String, String, u32, u64);

fn key(a: &pb::Assignment) -> Key {
    (a.tenant_id.clone(), a.placement_id.clone(), a.slot, a.assigned_at)
}

/// What the main loop hears about.
enum Heard {
    Assignments(pb::WatchAssignmentsResponse),
    HookExited(Key, Option<i32>),
}

/// One instance the agent runs; dropping `stop` kills its hook.
struct Instance {
    assignment: pb::Assignment,
    stop: Option<oneshot::Sender<()>>,
}

struct Agent {
    client: Arc<Client>,
    args: AgentArgs,
    json: bool,
    running: BTreeMap<Key, Instance>,
    heard: mpsc::Sender<Heard>,
    draining: bool,
    /// The worker was down in the last view.
    down: bool,
}

pub async fn run(connection: Connection, args: AgentArgs) -> anyhow::Result<()> {
    let options = ClientOptions {
        deadline: Duration::from_secs(30),
        attempt_timeout: Duration::from_secs(3),
    };
    let client = Arc::new(connection.client(options)?);
    register(&client, &args).await?;
    let (heard, mut hear) = mpsc::channel(256);
    let heartbeats =
        tokio::spawn(heartbeat(client.clone(), args.worker.clone(), args.heartbeat_every));
    let watching = tokio::spawn(watch(client.clone(), args.worker.clone(), heard.clone()));
    let mut agent = Agent {
        client,
        args,
        json: connection.json,
        running: BTreeMap::new(),
        heard,
        draining: false,
        down: false,
    };
    agent.say("started", &[("worker", agent.args.worker.clone())]);
    let mut drain_until = None;
    loop {
        let deadline = async {
            match drain_until {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            Some(heard) = hear.recv() => match heard {
                Heard::Assignments(view) => agent.reconcile(view).await,
                Heard::HookExited(key, code) => agent.hook_exited(key, code).await,
            },
            _ = tokio::signal::ctrl_c(), if !agent.draining => {
                agent.drain().await;
                drain_until = Some(
                    tokio::time::Instant::now() + Duration::from_millis(agent.args.drain_timeout),
                );
            }
            _ = tokio::signal::ctrl_c(), if agent.draining => break,
            () = deadline => break,
        }
        if agent.draining && agent.running.values().all(|i| i.stop.is_none()) {
            break;
        }
    }
    heartbeats.abort();
    watching.abort();
    let left = agent.running.len();
    agent.running.clear();
    agent.say("stopped", &[("instances_left", left.to_string())]);
    Ok(())
}

/// Registers the worker, or finds it registered (a restarted agent) and undrains it.
async fn register(client: &Client, args: &AgentArgs) -> anyhow::Result<()> {
    let m = pb::RegisterWorkerRequest {
        request_id: berth::client::new_request_id(),
        worker_id: args.worker.clone(),
        pool: args.pool.clone().unwrap_or_default(),
        capacity: Some(pb::Resources {
            cpu_millis: args.size.cpu,
            memory_mib: args.size.memory_mib,
        }),
        labels: args.labels.iter().cloned().collect(),
    };
    let registered = client
        .call(m, |ch, r| async move { berth::client::workers(ch).register_worker(r).await })
        .await;
    match registered {
        Ok(_) => Ok(()),
        Err(status) if describe(&status).contains("WORKER_EXISTS") => {
            let m = pb::DrainWorkerRequest {
                request_id: berth::client::new_request_id(),
                worker_id: args.worker.clone(),
                drain: false,
            };
            client
                .call(m, |ch, r| async move { berth::client::workers(ch).drain_worker(r).await })
                .await
                .map_err(|s| anyhow::anyhow!(describe(&s)))?;
            Ok(())
        }
        Err(status) => Err(anyhow::anyhow!(describe(&status))),
    }
}

/// Heartbeats forever: every `every` ms, or a third of the TTL the last answer gave.
async fn heartbeat(client: Arc<Client>, worker: String, every: Option<u64>) {
    let mut interval = Duration::from_millis(every.unwrap_or(1_000));
    loop {
        let m = pb::HeartbeatRequest { worker_id: worker.clone() };
        match client
            .call(m, |ch, r| async move { berth::client::workers(ch).heartbeat(r).await })
            .await
        {
            Ok(ack) => {
                if ack.revived {
                    eprintln!(
                        "agent: the worker was down; revived (generation {})",
                        ack.generation
                    );
                }
                let third = Duration::from_millis((ack.ttl_ms / 3).max(100));
                interval = every.map_or(third, Duration::from_millis);
            }
            Err(status) => eprintln!("agent: heartbeat failed: {}", describe(&status)),
        }
        tokio::time::sleep(interval).await;
    }
}

/// Follows the worker's assignments, reopening the stream with backoff when it breaks.
async fn watch(client: Arc<Client>, worker: String, heard: mpsc::Sender<Heard>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let m = pb::WatchAssignmentsRequest { worker_id: worker.clone() };
        let opened = client
            .open(m, |ch, r| async move { berth::client::workers(ch).watch_assignments(r).await })
            .await;
        match opened {
            Ok(mut stream) => loop {
                // An idle stream hears from its replica every few seconds: silence means it is
                // paused or gone.
                let next = tokio::time::timeout(berth::api::STREAM_SILENCE_MAX, stream.message());
                let next = next.await;
                let Ok(next) = next else {
                    eprintln!("agent: the assignment stream fell silent; reconnecting");
                    break;
                };
                match next {
                    Ok(Some(view)) => {
                        backoff = Duration::from_millis(100);
                        if heard.send(Heard::Assignments(view)).await.is_err() {
                            return;
                        }
                    }
                    Ok(None) => break,
                    Err(status) => {
                        eprintln!("agent: assignment stream broke: {}", describe(&status));
                        break;
                    }
                }
            },
            Err(status) => eprintln!("agent: cannot watch assignments: {}", describe(&status)),
        }
        client.next_endpoint();
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

impl Agent {
    /// One line per thing that happens: `key=value` words, or a JSON object with --json.
    fn say(&self, what: &str, fields: &[(&str, String)]) {
        if self.json {
            let mut object = serde_json::Map::new();
            object.insert("event".into(), what.into());
            for (k, v) in fields {
                object.insert((*k).into(), v.clone().into());
            }
            out!("{}", serde_json::Value::Object(object));
        } else {
            let words: Vec<String> = fields.iter().map(|(k, v)| format!("{k}={v}")).collect();
            out!("{what} {}", words.join(" "));
        }
    }

    fn describe_instance(a: &pb::Assignment) -> Vec<(&'static str, String)> {
        vec![
            ("tenant", a.tenant_id.clone()),
            ("placement", a.placement_id.clone()),
            ("slot", a.slot.to_string()),
            ("assigned_at", a.assigned_at.to_string()),
        ]
    }

    /// Brings what runs in line with `view`: a full view replaces everything, a change adds
    /// and removes.
    async fn reconcile(&mut self, view: pb::WatchAssignmentsResponse) {
        let wanted: Vec<pb::Assignment> =
            view.assigned.into_iter().filter(|a| !a.reservation).collect();
        let gone: Vec<Key> = if view.full {
            let keep: Vec<Key> = wanted.iter().map(key).collect();
            self.running.keys().filter(|k| !keep.contains(k)).cloned().collect()
        } else {
            view.unassigned.iter().map(key).collect()
        };
        for k in gone {
            if let Some(instance) = self.running.remove(&k) {
                self.taken_away(instance).await;
            }
        }
        if view.down && !self.down {
            self.say("worker down", &[("worker", self.args.worker.clone())]);
        }
        self.down = view.down;
        for a in wanted {
            if !self.draining && !self.running.contains_key(&key(&a)) {
                self.start(a).await;
            }
        }
    }

    async fn start(&mut self, a: pb::Assignment) {
        self.say("assigned", &Self::describe_instance(&a));
        if !a.running {
            self.report(&a, pb::InstanceStatus::Running, 0, String::new()).await;
        }
        let stop = self.args.on_assign.clone().map(|cmd| {
            let (stop, stopped) = oneshot::channel();
            let (env, k, heard) = (self.env(&a), key(&a), self.heard.clone());
            tokio::spawn(async move {
                let code = run_hook(&cmd, env, Some(stopped)).await;
                let _ = heard.send(Heard::HookExited(k, code)).await;
            });
            stop
        });
        self.running.insert(key(&a), Instance { assignment: a, stop });
    }

    /// The cluster took an instance away: stop its hook, run --on-release.
    async fn taken_away(&mut self, instance: Instance) {
        drop(instance.stop);
        self.say("released", &Self::describe_instance(&instance.assignment));
        if let Some(cmd) = self.args.on_release.clone() {
            let code = run_hook(&cmd, self.env(&instance.assignment), None).await;
            if code != Some(0) {
                eprintln!("agent: --on-release exited {code:?}");
            }
        }
    }

    async fn hook_exited(&mut self, k: Key, code: Option<i32>) {
        let Some(instance) = self.running.get_mut(&k) else { return };
        if instance.stop.take().is_none() {
            return;
        }
        let a = instance.assignment.clone();
        let (status, message) = match code {
            Some(0) => (pb::InstanceStatus::Completed, String::new()),
            Some(code) => (pb::InstanceStatus::Failed, format!("--on-assign exited {code}")),
            None => (pb::InstanceStatus::Failed, "--on-assign was killed by a signal".into()),
        };
        let mut fields = Self::describe_instance(&a);
        fields.push(("exit_code", code.map_or("signal".into(), |c| c.to_string())));
        self.say("hook exited", &fields);
        self.report(&a, status, code.unwrap_or(-1), message).await;
    }

    async fn report(
        &self,
        a: &pb::Assignment,
        status: pb::InstanceStatus,
        exit_code: i32,
        message: String,
    ) {
        let m = pb::ReportStatusRequest {
            request_id: berth::client::new_request_id(),
            worker_id: self.args.worker.clone(),
            tenant_id: a.tenant_id.clone(),
            placement_id: a.placement_id.clone(),
            slot: a.slot,
            assigned_at: a.assigned_at,
            status: status.into(),
            exit_code,
            message,
        };
        let reported = self
            .client
            .call(m, |ch, r| async move { berth::client::workers(ch).report_status(r).await })
            .await;
        if let Err(status) = reported {
            // STALE_ASSIGNMENT: it already moved or ended; the stream says so next.
            eprintln!("agent: report failed: {}", describe(&status));
        }
    }

    async fn drain(&mut self) {
        self.draining = true;
        self.say("draining", &[("running", self.running.len().to_string())]);
        let m = pb::DrainWorkerRequest {
            request_id: berth::client::new_request_id(),
            worker_id: self.args.worker.clone(),
            drain: true,
        };
        let drained = self
            .client
            .call(m, |ch, r| async move { berth::client::workers(ch).drain_worker(r).await })
            .await;
        if let Err(status) = drained {
            eprintln!("agent: drain failed: {}", describe(&status));
        }
    }

    fn env(&self, a: &pb::Assignment) -> Vec<(String, String)> {
        let resources = a.resources.unwrap_or_default();
        vec![
            ("BERTH_WORKER".into(), self.args.worker.clone()),
            ("BERTH_TENANT".into(), a.tenant_id.clone()),
            ("BERTH_PLACEMENT".into(), a.placement_id.clone()),
            ("BERTH_SLOT".into(), a.slot.to_string()),
            ("BERTH_ASSIGNED_AT".into(), a.assigned_at.to_string()),
            ("BERTH_CPU_MILLIS".into(), resources.cpu_millis.to_string()),
            ("BERTH_MEMORY_MIB".into(), resources.memory_mib.to_string()),
            ("BERTH_PLACED_AT_MS".into(), a.placed_at_ms.to_string()),
            (
                "BERTH_TIME_LIMIT_AT_MS".into(),
                a.time_limit_at_ms.map(|t| t.to_string()).unwrap_or_default(),
            ),
        ]
    }
}

/// Runs `sh -c cmd` with `env`; killed when `stop` fires or is dropped. Its exit code (`None`:
/// a signal, or it could not start).
async fn run_hook(
    cmd: &str,
    env: Vec<(String, String)>,
    stop: Option<oneshot::Receiver<()>>,
) -> Option<i32> {
    let child =
        tokio::process::Command::new("sh").arg("-c").arg(cmd).envs(env).kill_on_drop(true).spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(e) => {
            eprintln!("agent: cannot run {cmd:?}: {e}");
            return None;
        }
    };
    match stop {
        Some(stop) => tokio::select! {
            status = child.wait() => status.ok().and_then(|s| s.code()),
            _ = stop => {
                let _ = child.kill().await;
                None
            }
        },
        None => child.wait().await.ok().and_then(|s| s.code()),
    }
}
