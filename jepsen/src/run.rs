//! One run, inside the clients' namespace: start the replicas, set up tenants and workers, run
//! the clients and the nemesis for the time limit, heal, read the final state, check, report.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use berth::client::{self, pb, Client};
use serde::Serialize;
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::checker::{self, Availability, CheckResult, FinalState, Valid};
use crate::clientproc::{self, ClientSpec};
use crate::fleet;
use crate::history::{self, unix_us, Op, Outcome, Recorder, Type};
use crate::nemesis::{self, Nemesis};
use crate::topology::{write_private, Certificates, Cluster, Net};
use crate::workload::{self, Shared, Workload};

/// Longest wait for the cluster to elect a leader, converge or answer a final read.
const SETTLE: Duration = Duration::from_secs(60);
/// Process id of the final reads.
const FINAL_PROCESS: u64 = 1_000_000;

#[derive(Clone, Debug, Serialize)]
pub struct Config {
    pub run: String,
    pub dir: PathBuf,
    pub berth: PathBuf,
    pub replicas: u64,
    pub time_limit: Duration,
    pub nemesis: Vec<String>,
    pub workloads: Vec<Workload>,
    pub concurrency: u64,
    pub rate: u64,
    pub seed: u64,
    pub nemesis_interval: Duration,
    pub quota_limit: u64,
}

#[derive(Serialize)]
pub struct Summary {
    pub valid: Valid,
    pub seed: u64,
    pub replicas: u64,
    pub time_limit_s: u64,
    pub nemesis: Vec<String>,
    pub workloads: Vec<Workload>,
    pub faults: u64,
    pub ops: u64,
    pub ok: u64,
    pub fail: u64,
    pub info: u64,
    pub availability: Availability,
    pub checks: Vec<CheckResult>,
    pub store: PathBuf,
    pub problems: Vec<String>,
    /// The run's time zero, µs since the Unix epoch (op times count from it).
    pub start_unix_us: u64,
}

async fn wait_for_cluster(shared: &Shared, replicas: u64) -> anyhow::Result<()> {
    let until = Instant::now() + SETTLE;
    let c = shared.client(Duration::from_secs(2))?;
    loop {
        let status = c
            .call(pb::StatusRequest {}, |ch, r| async move { client::cluster(ch).status(r).await })
            .await;
        if let Ok(s) = &status {
            let voters = s.replicas.iter().filter(|r| r.voter && r.role != "Unreachable").count();
            if s.leader_id.is_some() && u64::try_from(voters)? == replicas {
                return Ok(());
            }
        }
        if Instant::now() > until {
            anyhow::bail!("no healthy cluster of {replicas} after {SETTLE:?}: {status:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Tenants, quotas and workers the workloads need (not part of the history).
async fn setup(shared: &Shared) -> anyhow::Result<()> {
    let c = shared.client(SETTLE)?;
    let mut tenants: Vec<String> =
        (0..workload::REGISTER_KEYS).map(workload::register_key).collect();
    tenants.extend((0..workload::QUOTA_TENANTS).map(workload::quota_tenant));
    tenants.push(workload::LEASE_TENANT.to_owned());
    tenants.push(workload::CAPACITY_TENANT.to_owned());
    tenants.push(workload::PROBE_FROM.to_owned());
    tenants.push(workload::PROBE_TO.to_owned());
    tenants.push(checker::worker::TENANT.to_owned());
    for t in &tenants {
        let req = pb::CreateTenantRequest {
            request_id: format!("setup-tenant-{t}"),
            tenant_id: t.clone(),
            ..Default::default()
        };
        c.call(req, |ch, r| async move { client::tenants(ch).create_tenant(r).await })
            .await
            .with_context(|| format!("creating tenant {t}"))?;
    }
    for i in 0..workload::REGISTER_KEYS {
        workload::set_register(&c, &workload::register_key(i), checker::register::INITIAL).await?;
    }
    for i in 0..workload::QUOTA_TENANTS {
        let req = pb::SetQuotaRequest {
            request_id: client::new_request_id(),
            tenant_id: workload::quota_tenant(i),
            quota: Some(pb::Quota {
                total: Some(pb::Limits {
                    instances: Some(shared.quota_limit),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        };
        c.call(req, |ch, r| async move { client::tenants(ch).set_quota(r).await }).await?;
    }
    for i in 0..workload::WORKERS {
        let req = pb::RegisterWorkerRequest {
            request_id: format!("setup-worker-{i}"),
            worker_id: format!("w{i}"),
            pool: String::new(),
            capacity: Some(pb::Resources {
                cpu_millis: workload::WORKER_CPU,
                memory_mib: workload::WORKER_MEM,
            }),
            labels: Default::default(),
        };
        c.call(req, |ch, r| async move { client::workers(ch).register_worker(r).await }).await?;
    }
    for i in 0..workload::CAPACITY_WORKERS {
        let req = pb::RegisterWorkerRequest {
            request_id: format!("setup-cap-worker-{i}"),
            worker_id: format!("c{i}"),
            pool: workload::CAPACITY_POOL.to_owned(),
            capacity: Some(pb::Resources {
                cpu_millis: checker::capacity::WORKER_CPU,
                memory_mib: checker::capacity::WORKER_MEM,
            }),
            labels: Default::default(),
        };
        c.call(req, |ch, r| async move { client::workers(ch).register_worker(r).await }).await?;
    }
    let req = pb::CreatePlacementGroupRequest {
        request_id: "setup-group".to_owned(),
        tenant_id: workload::CAPACITY_TENANT.to_owned(),
        group: workload::CAPACITY_GROUP.to_owned(),
        max_instances: u32::try_from(checker::capacity::GROUP_MAX)?,
        strategy: 0,
    };
    c.call(req, |ch, r| async move { client::scheduler(ch).create_placement_group(r).await })
        .await?;
    let req = pb::IssueTokenRequest {
        request_id: "setup-probe-token".to_owned(),
        tenant_id: workload::PROBE_FROM.to_owned(),
        token_name: "probe".to_owned(),
        ttl_ms: 0,
    };
    let token =
        c.call(req, |ch, r| async move { client::tenants(ch).issue_token(r).await }).await?.token;
    let _ = shared.probe_token.set(token);
    Ok(())
}

pub(crate) async fn list_placements(
    c: &Client,
    tenant: &str,
) -> Result<Vec<pb::Placement>, tonic::Status> {
    let mut out: Vec<pb::Placement> = Vec::new();
    loop {
        let after = out.last().and_then(|p| p.spec.as_ref()).map(|s| s.placement_id.clone());
        let req = pb::ListPlacementsRequest {
            tenant_id: tenant.to_owned(),
            page: Some(pb::Page { after: after.unwrap_or_default(), limit: 1_000 }),
            read: None,
        };
        let page = c
            .call(req, |ch, r| async move { client::scheduler(ch).list_placements(r).await })
            .await?
            .placements;
        let n = page.len();
        out.extend(page);
        if n < 1_000 {
            return Ok(out);
        }
    }
}

pub(crate) async fn list_tenants(c: &Client) -> Result<Vec<String>, tonic::Status> {
    let mut out: Vec<String> = Vec::new();
    loop {
        let after = out.last().cloned().unwrap_or_default();
        let req =
            pb::ListTenantsRequest { page: Some(pb::Page { after, limit: 1_000 }), read: None };
        let page = c
            .call(req, |ch, r| async move { client::tenants(ch).list_tenants(r).await })
            .await?
            .tenants;
        let n = page.len();
        out.extend(page.into_iter().map(|t| t.tenant_id));
        if n < 1_000 {
            return Ok(out);
        }
    }
}

pub(crate) async fn list_workers(c: &Client) -> Result<Vec<pb::Worker>, tonic::Status> {
    let mut out: Vec<pb::Worker> = Vec::new();
    loop {
        let after = out.last().map(|w| w.worker_id.clone()).unwrap_or_default();
        let req = pb::ListWorkersRequest {
            pool: String::new(),
            page: Some(pb::Page { after, limit: 1_000 }),
            read: None,
        };
        let page = c
            .call(req, |ch, r| async move { client::workers(ch).list_workers(r).await })
            .await?
            .workers;
        let n = page.len();
        out.extend(page);
        if n < 1_000 {
            return Ok(out);
        }
    }
}

/// A final linearizable read, recorded, retried until it succeeds or `SETTLE` passes.
async fn final_read(shared: &Shared, c: &Client, workload: Workload, key: &str) -> bool {
    let until = Instant::now() + SETTLE;
    while Instant::now() < until {
        let op = Op::invoke(workload.name(), "read", key);
        let inv = shared.recorder.invoke(FINAL_PROCESS, op);
        let res = workload::get_quota(c, key).await;
        let (kind, outcome) = match res {
            Ok(q) => {
                let value = match workload {
                    Workload::Register => q
                        .quota
                        .and_then(|q| q.total)
                        .and_then(|l| l.instances)
                        .unwrap_or(checker::register::INITIAL),
                    _ => q.usage.map(|u| u.instances).unwrap_or(0),
                };
                (Type::Ok, Outcome { value: Some(value), ..Outcome::default() })
            }
            Err(s) => workload::failure(&s, true),
        };
        shared.recorder.complete(&inv, kind, outcome);
        if kind == Type::Ok {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    false
}

/// After healing: wait for a leader, read every object, and wait for the replicas to agree.
async fn final_phase(config: &Config, shared: &Shared) -> FinalState {
    let mut last = FinalState { complete: true, ..FinalState::default() };
    if let Err(e) = wait_for_cluster(shared, config.replicas).await {
        last.complete = false;
        last.problems.push(e.to_string());
    }
    let c = match shared.client(SETTLE) {
        Ok(c) => c,
        Err(e) => {
            last.complete = false;
            last.problems.push(e.to_string());
            return last;
        }
    };
    for w in &config.workloads {
        let keys: Vec<String> = match w {
            Workload::Register => {
                (0..workload::REGISTER_KEYS).map(workload::register_key).collect()
            }
            Workload::Quota => (0..workload::QUOTA_TENANTS).map(workload::quota_tenant).collect(),
            Workload::Lease | Workload::Capacity | Workload::Tenants | Workload::Worker => {
                Vec::new()
            }
        };
        for k in keys {
            if !final_read(shared, &c, *w, &k).await {
                last.complete = false;
                last.problems.push(format!("final read of {k} never succeeded"));
            }
        }
    }
    let tenants = match list_tenants(&c).await {
        Ok(t) => t,
        Err(e) => {
            last.complete = false;
            last.problems.push(format!("listing tenants: {e}"));
            Vec::new()
        }
    };
    last.tenants = tenants.iter().cloned().collect();
    for t in &tenants {
        match list_placements(&c, t).await {
            Ok(ps) => {
                let mut ids = BTreeMap::new();
                for p in ps {
                    let per = p.spec.as_ref().and_then(|s| s.resources).unwrap_or_default();
                    let n = u64::try_from(p.workers.len()).unwrap_or(u64::MAX);
                    last.placed[0] =
                        last.placed[0].saturating_add(per.cpu_millis.saturating_mul(n));
                    last.placed[1] =
                        last.placed[1].saturating_add(per.memory_mib.saturating_mul(n));
                    if let Some(s) = p.spec {
                        if t == workload::CAPACITY_TENANT {
                            let detail = if !s.anti_affinity.is_empty() {
                                checker::capacity::ANTI_AFFINITY
                            } else if !s.group.is_empty() {
                                checker::capacity::GROUP
                            } else {
                                "plain"
                            };
                            last.capacity.insert(
                                s.placement_id.clone(),
                                checker::capacity::Placed {
                                    log_index: p.log_index,
                                    workers: p.workers.clone(),
                                    cpu: per.cpu_millis,
                                    mem: per.memory_mib,
                                    detail: detail.to_owned(),
                                },
                            );
                        }
                        ids.insert(s.placement_id, p.log_index);
                    }
                }
                if t.starts_with("q-") {
                    last.placements.insert(t.clone(), ids);
                }
            }
            Err(e) => {
                last.complete = false;
                last.problems.push(format!("listing placements of {t}: {e}"));
            }
        }
        if t.starts_with("q-") {
            match workload::get_quota(&c, t).await {
                Ok(q) => {
                    last.usage_instances
                        .insert(t.clone(), q.usage.map(|u| u.instances).unwrap_or(0));
                }
                Err(e) => last.problems.push(format!("usage of {t}: {e}")),
            }
        }
    }
    match list_workers(&c).await {
        Ok(ws) => {
            for w in ws {
                let cap = w.capacity.unwrap_or_default();
                let alloc = w.allocated.unwrap_or_default();
                last.workers.insert(
                    w.worker_id,
                    [cap.cpu_millis, cap.memory_mib, alloc.cpu_millis, alloc.memory_mib],
                );
            }
        }
        Err(e) => {
            last.complete = false;
            last.problems.push(format!("listing workers: {e}"));
        }
    }
    // Convergence: every replica at the same applied command and state hash.
    let until = Instant::now() + SETTLE;
    let mut seen = String::new();
    while Instant::now() < until {
        let status = c
            .call(pb::StatusRequest {}, |ch, r| async move { client::cluster(ch).status(r).await })
            .await;
        if let Ok(s) = status {
            let states: BTreeMap<u64, (u64, String)> = s
                .replicas
                .iter()
                .filter(|r| r.role != "Unreachable" && !r.state_hash.is_empty())
                .map(|r| (r.replica_id, (r.applied_command_index, r.state_hash.clone())))
                .collect();
            let agreed = states.values().collect::<std::collections::BTreeSet<_>>().len() == 1;
            if agreed && u64::try_from(states.len()).unwrap_or(0) == config.replicas {
                last.replicas = states;
                return last;
            }
            seen = format!("{states:?}");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    last.problems.push(format!("replicas did not converge within {SETTLE:?}: {seen}"));
    last
}

/// Runs the test; returns the summary (its `valid` decides the exit code).
pub async fn run(mut config: Config) -> anyhow::Result<Summary> {
    std::fs::create_dir_all(&config.dir)?;
    let token = format!("jepsen-admin-{}", client::new_request_id());
    let token_file = config.dir.join("admin.token");
    // Owner-only, as `berth server` requires.
    write_private(&token_file, &format!("{token}\n"))?;
    let certs = Certificates::create(&config.dir.join("tls"), config.replicas)?;
    let tls = certs.client_security()?;
    let mut cluster_procs = Cluster::new(
        &config.run,
        config.replicas,
        &config.berth,
        &config.dir,
        &token_file,
        certs.clone(),
    );
    for id in cluster_procs.ids() {
        cluster_procs.start(id)?;
    }
    let endpoints = cluster_procs.endpoints();
    let cluster = Arc::new(Mutex::new(cluster_procs));
    let recorder = Recorder::new(Some(&config.dir.join("history.jsonl")))?;
    let shared = Arc::new(Shared::new(endpoints, token, tls, recorder.clone(), config.quota_limit));
    eprintln!(
        "[setup] {} replicas in namespaces {}-n*, store {}",
        config.replicas,
        config.run,
        config.dir.display()
    );
    wait_for_cluster(&shared, config.replicas).await?;
    let fleet = config.workloads.contains(&Workload::Worker);
    // Watching starts before setup, so the watchers see every worker and placement.
    let watchers = if fleet { Some(fleet::start_watchers(shared.clone()).await?) } else { None };
    setup(&shared).await?;
    if fleet {
        let agents = fleet::Agents::new(
            config.berth.clone(),
            config.dir.clone(),
            shared.endpoints.clone(),
            shared.token.clone(),
            certs.ca(),
        );
        fleet::start_agents(&shared, agents).await?;
    }
    let kinds = config.nemesis.clone();
    let netem =
        !kinds.iter().any(|k| k == "netem") || nemesis::netem_supported(&Net::ns(&config.run, 1));
    if !netem {
        eprintln!(
            "[setup] NOTE: this kernel has no tc netem; the netem nemesis drops a random share \
             of packets with iptables instead (loss, no delay)"
        );
    }
    config.nemesis = kinds.clone();
    eprintln!(
        "[setup] cluster ready; {} s of {:?} with nemesis {:?}, {} clients, seed {}",
        config.time_limit.as_secs(),
        config.workloads,
        kinds,
        config.concurrency,
        config.seed
    );

    let start = Instant::now();
    let until = start + config.time_limit;
    let per_client_gap = if config.rate == 0 {
        Duration::ZERO
    } else {
        Duration::from_millis(1_000 * config.concurrency / config.rate.max(1))
    };
    let mut clients = Vec::new();
    for w in 0..config.concurrency {
        let workload = config.workloads[usize::try_from(w)? % config.workloads.len()];
        if workload == Workload::Lease {
            let spec = ClientSpec {
                worker: w,
                concurrency: config.concurrency,
                gap_ms: u64::try_from(per_client_gap.as_millis())?,
                seed: config.seed,
                endpoints: shared.endpoints.clone(),
                token_file: token_file.clone(),
                certs: certs.clone(),
                start_unix_us: recorder.start_unix_us(),
                until_unix_us: unix_us() + u64::try_from(config.time_limit.as_micros())?,
            };
            clients.push(clientproc::spawn(shared.clone(), &spec)?);
            continue;
        }
        clients.push(tokio::spawn(workload::client_loop(
            shared.clone(),
            workload,
            w,
            config.concurrency,
            per_client_gap,
            config.seed,
            until,
        )));
    }
    let mut nemesis = Nemesis::new(kinds, cluster.clone(), shared.clone(), config.seed);
    nemesis.netem_supported = netem;
    let interval = config.nemesis_interval;
    let nemesis_task = tokio::spawn(async move {
        let r = nemesis.run(interval, until).await;
        (nemesis, r)
    });

    let mut problems = Vec::new();
    let progress = Duration::from_secs(5);
    while Instant::now() < until {
        tokio::time::sleep(progress.min(until.saturating_duration_since(Instant::now()))).await;
        let [ok, fail, info] = [0, 1, 2].map(|i| shared.counts[i].load(Ordering::Relaxed));
        eprintln!("[{:>4}s] ok {ok:>6}  fail {fail:>6}  info {info:>6}", start.elapsed().as_secs());
        for (id, status) in cluster.lock().await.exited() {
            let p = format!("replica {id} exited by itself ({status})");
            eprintln!("[problem] {p}");
            problems.push(p);
        }
    }
    for c in clients {
        c.await.context("client task")??;
    }
    let (mut nemesis, result) = nemesis_task.await.context("nemesis task")?;
    result?;
    nemesis.heal().await?;
    let faults = nemesis.faults;
    eprintln!("[final] all faults healed; final reads");
    let mut last = final_phase(&config, &shared).await;
    if let Some(watchers) = watchers {
        last.worker = Some(fleet::finish(&shared, watchers).await);
    }
    if let Some(agents) = shared.agents.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
        problems.extend(agents.exited());
    }
    for (id, status) in cluster.lock().await.exited() {
        problems.push(format!("replica {id} exited by itself ({status})"));
    }
    problems.extend(cluster.lock().await.panics());
    recorder.flush()?;
    let ops = recorder.snapshot();
    let summary = check(&config, &ops, &last, faults, problems, recorder.start_unix_us());
    std::fs::write(config.dir.join("final.json"), serde_json::to_string_pretty(&last)?)?;
    std::fs::write(config.dir.join("results.json"), serde_json::to_string_pretty(&summary)?)?;
    crate::report::write(&config.dir.join("index.html"), &config, &ops, &summary)?;
    Ok(summary)
}

/// Runs every checker that applies to the workloads of the run.
pub fn check(
    config: &Config,
    ops: &[Op],
    last: &FinalState,
    faults: u64,
    problems: Vec<String>,
    start_unix_us: u64,
) -> Summary {
    let pairs = history::pairs(ops);
    let mut checks =
        vec![checker::writes_ordered(&pairs), checker::log_time(&pairs, start_unix_us)];
    for w in &config.workloads {
        match w {
            Workload::Register => {
                checks.push(checker::register::linearizable(&pairs));
                checks.push(checker::register::witness(&pairs));
            }
            Workload::Quota => {
                checks.push(checker::quota::linearizable(&pairs, config.quota_limit));
                checks.push(checker::quota::replay(&pairs, config.quota_limit, last));
                checks.push(checker::quota::final_placements(&pairs, config.quota_limit, last));
            }
            Workload::Lease => {
                checks.push(checker::lease::linearizable(&pairs));
                checks.push(checker::lease::check(&pairs));
            }
            Workload::Capacity => checks.push(checker::capacity::check(&pairs, last)),
            Workload::Tenants => checks.push(checker::tenants::check(&pairs, last)),
            Workload::Worker => {
                let observed = last.worker.clone().unwrap_or_default();
                checks.push(checker::worker::watch_gap_free(&observed));
                checks.push(checker::worker::replay_check(&observed));
                checks.push(checker::worker::acknowledged(&pairs, &observed));
            }
        }
    }
    checks.push(checker::final_state(last, usize::try_from(config.replicas).unwrap_or(0)));
    let mut alive = CheckResult::new("replicas-alive (no crash, no panic)");
    alive.checked = config.replicas;
    for p in &problems {
        alive.violation(p.clone());
    }
    checks.push(alive);
    let valid = if checks.iter().any(|c| c.valid == Valid::False) {
        Valid::False
    } else if checks.iter().any(|c| c.valid == Valid::Unknown) {
        Valid::Unknown
    } else {
        Valid::True
    };
    let client_pairs: Vec<_> = pairs.iter().filter(|p| p.invoke.workload != "nemesis").collect();
    let count =
        |t: Type| u64::try_from(client_pairs.iter().filter(|p| p.kind() == t).count()).unwrap_or(0);
    let end = ops.last().map_or(0, |o| o.time_us);
    Summary {
        valid,
        seed: config.seed,
        replicas: config.replicas,
        time_limit_s: config.time_limit.as_secs(),
        nemesis: config.nemesis.clone(),
        workloads: config.workloads.clone(),
        faults,
        ops: u64::try_from(client_pairs.len()).unwrap_or(0),
        ok: count(Type::Ok),
        fail: count(Type::Fail),
        info: count(Type::Info),
        availability: checker::availability(ops, end),
        checks,
        store: config.dir.clone(),
        problems,
        start_unix_us,
    }
}
