//! `berth bench`: drives Place + Release (or, with `--reads`, linearizable GetQuota) against a
//! running cluster from N concurrent clients and prints throughput and latency percentiles
//! (integer microseconds, no floats).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use berth::client::{self, new_request_id, pb, ClientOptions};
use clap::Args;
use serde::Serialize;

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Concurrent clients, each running Place then Release in a loop.
    #[arg(long, default_value_t = 1)]
    clients: u32,
    /// Each client reads instead: a linearizable GetQuota of the bench's tenant in a loop
    /// (what etcd's linearizable GET is compared with).
    #[arg(long)]
    reads: bool,
    /// How long to run, in seconds (after a 1 s warm-up).
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Workers to register for the benchmark (each with room for every client's workload).
    #[arg(long, default_value_t = 8)]
    workers: u32,
    /// Meanwhile, keep this many more workers heartbeating at a third of the default worker
    /// TTL (in a pool of their own): what a fleet's heartbeats cost the write path.
    #[arg(long, default_value_t = 0)]
    heartbeat_workers: u32,
    /// Meanwhile, hold this many Watch streams open, each on a tenant of its own that has no
    /// events: what idle watchers cost the write path. Reading them costs this process too;
    /// to measure the cluster alone, hold them in a second `berth bench` beside the measured one.
    #[arg(long, default_value_t = 0)]
    idle_watchers: u32,
    /// The replicas' metrics (`http://HOST:PORT/metrics`, comma separated; `berth up` prints
    /// them): the report adds the CPU time the replicas and this process spent per operation
    /// in the measured window, a figure the machine's speed moves less than ops/s.
    #[arg(long, value_delimiter = ',')]
    metrics: Vec<String>,
}

/// CPU time spent per operation in the measured window, in µs: the replicas' (their
/// `process_cpu_seconds_total`), this process's, and both.
#[derive(Serialize)]
struct CpuPerOp {
    operations: u64,
    replicas_us: u64,
    bench_us: u64,
    total_us: u64,
}

/// CPU time spent so far, in ms: the replicas' together, and this process's.
async fn cpu_spent(metrics: &[String]) -> anyhow::Result<(u64, u64)> {
    let mut replicas = 0;
    for url in metrics {
        let text = crate::stress::scrape(url).await.with_context(|| format!("scraping {url}"))?;
        let seconds: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("process_cpu_seconds_total ")?.trim().parse().ok())
            .with_context(|| format!("{url} has no process_cpu_seconds_total"))?;
        // A value that is no duration (negative, NaN, huge) is an error, not a panic.
        let spent = Duration::try_from_secs_f64(seconds)
            .with_context(|| format!("{url} serves process_cpu_seconds_total {seconds}"))?;
        replicas =
            u64::try_from(spent.as_millis()).map_or(u64::MAX, |ms| replicas.saturating_add(ms));
    }
    let bench = berth::metrics::process_cpu_ms().context("this process's CPU time")?;
    Ok((replicas, bench))
}

#[derive(Serialize)]
struct OpStats {
    op: &'static str,
    count: u64,
    per_second: u64,
    p50_us: u64,
    p99_us: u64,
    p999_us: u64,
    max_us: u64,
}

#[derive(Serialize)]
struct Report {
    clients: u32,
    seconds: u64,
    errors: u64,
    ops: Vec<OpStats>,
    heartbeat_workers: u32,
    /// Commands (log entries' worth) the measured heartbeats took, per second.
    heartbeat_commands_per_second: u64,
    idle_watchers: u32,
    /// With `--metrics`: CPU time per operation (Place and Release each count, or each read).
    cpu_per_op: Option<CpuPerOp>,
}

/// The heartbeat interval of `berth bench --heartbeat-workers`: a third of the default TTL.
const HEARTBEAT_EVERY: Duration =
    Duration::from_millis(berth::scheduler::WORKER_TTL_DEFAULT_MS / 3);

fn stats(op: &'static str, mut micros: Vec<u64>, elapsed: Duration) -> OpStats {
    micros.sort_unstable();
    let at = |per_mille: usize| {
        if micros.is_empty() {
            0
        } else {
            micros[(micros.len() * per_mille / 1000).min(micros.len() - 1)]
        }
    };
    let count = micros.len() as u64;
    let elapsed_us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX).max(1);
    OpStats {
        op,
        count,
        per_second: count.saturating_mul(1_000_000) / elapsed_us,
        p50_us: at(500),
        p99_us: at(990),
        p999_us: at(999),
        max_us: micros.last().copied().unwrap_or(0),
    }
}

pub async fn run(connection: crate::cli::Connection, args: BenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.clients > 0 && args.duration > 0,
        "--clients and --duration must be positive"
    );
    let options = ClientOptions {
        deadline: Duration::from_millis(connection.timeout_ms),
        ..Default::default()
    };
    let client = Arc::new(connection.client(options)?);
    // Every metrics address must answer before anything is created.
    if !args.metrics.is_empty() {
        cpu_spent(&args.metrics).await?;
    }
    let run_id = &new_request_id()[..8];
    let tenant = format!("bench-{run_id}");
    let c = &client;
    macro_rules! call {
        ($svc:ident, $method:ident, $msg:expr) => {
            c.call($msg, |ch, req| async move { client::$svc(ch).$method(req).await })
                .await
                .map_err(|s| anyhow::anyhow!(crate::cli::describe(&s)))?
        };
    }
    call!(
        tenants,
        create_tenant,
        pb::CreateTenantRequest {
            request_id: new_request_id(),
            tenant_id: tenant.clone(),
            ..Default::default()
        }
    );
    for w in 0..args.workers {
        call!(
            workers,
            register_worker,
            pb::RegisterWorkerRequest {
                request_id: new_request_id(),
                worker_id: format!("{tenant}-w{w}"),
                pool: format!("{tenant}-pool"),
                capacity: Some(pb::Resources { cpu_millis: 1_000_000, memory_mib: 1 << 30 }),
                ..Default::default()
            }
        );
    }
    let fleet = register_fleet(client.clone(), &tenant, args.heartbeat_workers).await?;
    let watchers = open_idle_watchers(&connection, &tenant, args.idle_watchers).await?;
    eprintln!(
        "bench: tenant {tenant}, {} workers, {} clients, {} s, {} heartbeating workers, {} idle \
         watchers",
        args.workers, args.clients, args.duration, args.heartbeat_workers, args.idle_watchers
    );

    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let measuring = Instant::now() + Duration::from_secs(1);
    let stop = measuring + Duration::from_secs(args.duration);
    let beats = heartbeat_fleet(client.clone(), fleet, measuring, stop, errors.clone());
    let mut tasks = Vec::new();
    let reads = args.reads;
    for n in 0..args.clients {
        let (client, tenant, done, errors) =
            (client.clone(), tenant.clone(), done.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let (mut places, mut releases) = (Vec::new(), Vec::new());
            let mut i = 0u64;
            while reads && Instant::now() < stop {
                let get = pb::GetQuotaRequest { tenant_id: tenant.clone(), read: None };
                let started = Instant::now();
                let read = client
                    .call(get, |ch, req| async move { client::tenants(ch).get_quota(req).await })
                    .await;
                let read_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
                if read.is_err() {
                    errors.fetch_add(1, Ordering::Relaxed);
                } else if started >= measuring {
                    places.push(read_us);
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }
            while !reads && Instant::now() < stop {
                i += 1;
                let id = format!("c{n}-{i}");
                let spec = pb::PlacementSpec {
                    placement_id: id.clone(),
                    resources: Some(pb::Resources { cpu_millis: 100, memory_mib: 64 }),
                    pool: format!("{tenant}-pool"),
                    ..Default::default()
                };
                let place = pb::PlaceRequest {
                    request_id: new_request_id(),
                    tenant_id: tenant.clone(),
                    spec: Some(spec),
                    fence: None,
                    dry_run: false,
                    queue_if_unavailable: false,
                };
                let started = Instant::now();
                let placed = client
                    .call(place, |ch, req| async move { client::scheduler(ch).place(req).await })
                    .await;
                let place_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
                if placed.is_err() {
                    errors.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let release = pb::ReleaseRequest {
                    request_id: new_request_id(),
                    tenant_id: tenant.clone(),
                    placement_id: id,
                    fence: None,
                };
                let started = Instant::now();
                let released = client
                    .call(
                        release,
                        |ch, req| async move { client::scheduler(ch).release(req).await },
                    )
                    .await;
                let release_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
                if released.is_err() {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
                if started >= measuring {
                    places.push(place_us);
                    if released.is_ok() {
                        releases.push(release_us);
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }
            (places, releases)
        }));
    }
    // The CPU clocks at the start of the measured window.
    let cpu_at_start = if args.metrics.is_empty() {
        None
    } else {
        tokio::time::sleep_until(measuring.into()).await;
        Some(cpu_spent(&args.metrics).await?)
    };
    // Progress once a second.
    let mut last = 0;
    while Instant::now() < stop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = done.load(Ordering::Relaxed);
        let what = if reads { "linearizable reads" } else { "place+release pairs" };
        eprintln!("  {:>6} {what} in the last second", now - last);
        last = now;
    }
    let (mut places, mut releases) = (Vec::new(), Vec::new());
    for task in tasks {
        let (p, r) = task.await?;
        places.extend(p);
        releases.extend(r);
    }
    let (mut heartbeats, mut commands) = (Vec::new(), std::collections::BTreeSet::new());
    for task in beats {
        let (latencies, indexes) = task.await?;
        heartbeats.extend(latencies);
        commands.extend(indexes);
    }
    // Operations that started in the window and ended after it count, with their CPU time.
    let cpu_at_end = match cpu_at_start {
        Some(_) => Some(cpu_spent(&args.metrics).await?),
        None => None,
    };
    for watcher in watchers {
        watcher.abort();
    }
    let elapsed = Duration::from_secs(args.duration);
    let mut ops = if reads {
        vec![stats("get_quota", places, elapsed)]
    } else {
        vec![stats("place", places, elapsed), stats("release", releases, elapsed)]
    };
    let operations = ops.iter().map(|o| o.count).sum::<u64>();
    let cpu_per_op = cpu_at_start.zip(cpu_at_end).map(|((r0, b0), (r1, b1))| {
        let per_op = |ms: u64| ms.saturating_mul(1_000) / operations.max(1);
        let (replicas_us, bench_us) =
            (per_op(r1.saturating_sub(r0)), per_op(b1.saturating_sub(b0)));
        CpuPerOp { operations, replicas_us, bench_us, total_us: replicas_us + bench_us }
    });
    if args.heartbeat_workers > 0 {
        ops.push(stats("heartbeat", heartbeats, elapsed));
    }
    let report = Report {
        clients: args.clients,
        seconds: args.duration,
        errors: errors.load(Ordering::Relaxed),
        ops,
        heartbeat_workers: args.heartbeat_workers,
        heartbeat_commands_per_second: commands.len() as u64 / args.duration,
        idle_watchers: args.idle_watchers,
        cpu_per_op,
    };
    let _ = call!(
        tenants,
        delete_tenant,
        pb::DeleteTenantRequest { request_id: new_request_id(), tenant_id: tenant.clone() }
    );
    if connection.json {
        out!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        out!("{} clients, {} s, {} errors", report.clients, report.seconds, report.errors);
        if report.heartbeat_workers > 0 {
            out!(
                "{} workers heartbeating every {} ms took {} commands/s",
                report.heartbeat_workers,
                HEARTBEAT_EVERY.as_millis(),
                report.heartbeat_commands_per_second
            );
        }
        if report.idle_watchers > 0 {
            out!("{} idle watch streams open", report.idle_watchers);
        }
        out!(
            "{:<9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "op",
            "count",
            "ops/s",
            "p50 ms",
            "p99 ms",
            "p999 ms",
            "max ms"
        );
        let ms = |us: u64| format!("{}.{:03}", us / 1000, us % 1000);
        for s in &report.ops {
            out!(
                "{:<9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
                s.op,
                s.count,
                s.per_second,
                ms(s.p50_us),
                ms(s.p99_us),
                ms(s.p999_us),
                ms(s.max_us)
            );
        }
        if let Some(cpu) = &report.cpu_per_op {
            out!(
                "CPU per operation: {} µs (replicas {} µs, this bench {} µs), over {} operations",
                cpu.total_us,
                cpu.replicas_us,
                cpu.bench_us,
                cpu.operations
            );
        }
    }
    Ok(())
}

/// Registers `count` workers in a pool of their own, 64 at a time.
async fn register_fleet(
    client: Arc<client::Client>,
    tenant: &str,
    count: u32,
) -> anyhow::Result<Vec<String>> {
    let ids: Vec<String> = (0..count).map(|i| format!("{tenant}-fleet-{i}")).collect();
    for chunk in ids.chunks(64) {
        let mut registering = Vec::new();
        for id in chunk {
            let m = pb::RegisterWorkerRequest {
                request_id: new_request_id(),
                worker_id: id.clone(),
                pool: format!("{tenant}-fleet"),
                capacity: Some(pb::Resources { cpu_millis: 1_000, memory_mib: 1_024 }),
                ..Default::default()
            };
            let client = client.clone();
            registering.push(tokio::spawn(async move {
                client
                    .call(m, |ch, r| async move { client::workers(ch).register_worker(r).await })
                    .await
            }));
        }
        for r in registering {
            r.await?.map_err(|s| anyhow::anyhow!(crate::cli::describe(&s)))?;
        }
    }
    Ok(ids)
}

/// Heartbeats each worker every `HEARTBEAT_EVERY`, spread evenly over the interval; returns,
/// per task, the latencies measured between `measuring` and `stop` and the command indexes
/// their acknowledgements named.
fn heartbeat_fleet(
    client: Arc<client::Client>,
    fleet: Vec<String>,
    measuring: Instant,
    stop: Instant,
    errors: Arc<AtomicU64>,
) -> Vec<tokio::task::JoinHandle<(Vec<u64>, Vec<u64>)>> {
    let count = u32::try_from(fleet.len()).unwrap_or(u32::MAX).max(1);
    fleet
        .into_iter()
        .enumerate()
        .map(|(i, worker)| {
            let (client, errors) = (client.clone(), errors.clone());
            let offset = HEARTBEAT_EVERY * u32::try_from(i).unwrap_or(0) / count;
            tokio::spawn(async move {
                let (mut latencies, mut indexes) = (Vec::new(), Vec::new());
                let mut next = tokio::time::Instant::now() + offset;
                loop {
                    tokio::time::sleep_until(next).await;
                    next += HEARTBEAT_EVERY;
                    let started = Instant::now();
                    if started >= stop {
                        break;
                    }
                    let m = pb::HeartbeatRequest { worker_id: worker.clone() };
                    let beat = client
                        .call(m, |ch, r| async move { client::workers(ch).heartbeat(r).await })
                        .await;
                    match beat {
                        Ok(ack) if started >= measuring => {
                            latencies.push(
                                u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
                            );
                            indexes.push(ack.write.map_or(0, |w| w.log_index));
                        }
                        Ok(_) => {}
                        Err(_) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                (latencies, indexes)
            })
        })
        .collect()
}

/// Opens `count` Watch streams on tenants of their own that never have events, and keeps each
/// open (reading, should anything come) until aborted. They are other clients: 100 per client
/// of their own (own connections), spread over the endpoints, not sharing the load's
/// connections.
async fn open_idle_watchers(
    connection: &crate::cli::Connection,
    tenant: &str,
    count: u32,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    let mut watchers = Vec::new();
    let mut client = None;
    for i in 0..count {
        if i % 100 == 0 {
            let c = connection.client(ClientOptions::default())?;
            for _ in 0..(i / 100) {
                c.next_endpoint();
            }
            client = Some(Arc::new(c));
        }
        let client = client.clone().expect("invariant: made at i = 0");
        let m = pb::WatchRequest { tenant_id: format!("{tenant}-idle-{i}"), ..Default::default() };
        let mut stream = client
            .open(m, |ch, r| async move { client::scheduler(ch).watch(r).await })
            .await
            .map_err(|s| anyhow::anyhow!(crate::cli::describe(&s)))?;
        watchers.push(tokio::spawn(async move {
            let _client = client;
            while let Ok(Some(_)) = stream.message().await {}
        }));
    }
    Ok(watchers)
}
