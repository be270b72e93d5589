//! `berth stress`: multi-tenant stress profiles driven through the public API against a
//! running cluster. Each profile checks what it must hold (isolation, exact quotas, fair
//! order, nothing orphaned) against stated thresholds and measures what it saw; every run
//! writes `<out>/<run>/results.json` and a self-contained `report.html`, and points
//! `<out>/latest` at it. A progress line per second goes to stderr; `--json` prints the results
//! on stdout.

mod partition;
mod profiles;
mod record;
mod report;
mod steady;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use berth::client::{self, new_request_id, pb, Client, ClientOptions};
use clap::{Args, ValueEnum};
use serde::Serialize;

pub use record::Recorder;

#[derive(Args, Debug)]
pub struct StressArgs {
    /// Profiles to run, in order (default: every one but `soak` and `chaos`).
    #[arg(value_enum)]
    profiles: Vec<Profile>,
    /// Seconds, not minutes: the sizes CI runs.
    #[arg(long)]
    short: bool,
    /// Where runs are written: `<out>/<run>/` and the `<out>/latest` link.
    #[arg(long, default_value = "stress")]
    out: PathBuf,
    /// isolation: tenants (1..=1000; default 10, short 4).
    #[arg(long)]
    tenants: Option<u32>,
    /// isolation: placements per tenant (default 20, short 5).
    #[arg(long)]
    jobs: Option<u32>,
    /// backlog: queued placements (default 10000, short 100).
    #[arg(long)]
    backlog: Option<u32>,
    /// scaling: the tenant counts (default 1,5,10,100,1000; short 1,10,50).
    #[arg(long, value_delimiter = ',')]
    scaling_tenants: Vec<u32>,
    /// scaling: seconds at each tenant count (default 10, short 2).
    #[arg(long)]
    scaling_seconds: Option<u64>,
    /// scaling: concurrent clients at every tenant count (default 32).
    #[arg(long, default_value_t = 32)]
    clients: u32,
    /// The replicas' metrics (`http://HOST:PORT/metrics`, comma separated; `berth up` prints
    /// them): after the run, each tenant's request counters there must equal what this client
    /// sent. Give every replica's, or none.
    #[arg(long, value_delimiter = ',')]
    metrics: Vec<String>,
    /// soak: how long (default 30m, short 12s); sampled every minute (in a run shorter than
    /// ten minutes, every twelfth of it but at least every second), and at the end.
    #[arg(long, value_parser = crate::cli::args::parse_duration_ms)]
    duration: Option<u64>,
    /// soak and chaos: load steps a second across their tenants (each a Place, and a
    /// Release, a Reserve, a lease call or a read).
    #[arg(long, default_value_t = 200)]
    rate: u64,
    /// chaos: the data directory of the `berth up --restart-on-exit` cluster under test (its
    /// `replica-N.pid` files): its replicas are killed and paused. Without it, only a worker
    /// dies.
    #[arg(long)]
    cluster_dir: Option<PathBuf>,
    /// Testing the checks: leave a reservation behind in `lifecycle` and `soak`, which must
    /// then fail.
    #[arg(long, hide = true)]
    plant_leak: bool,
    /// Testing the checks: give one tenant of `backlog` and of `mixed` a fair-share weight
    /// their checks do not expect (equal shares), so both must fail.
    #[arg(long, hide = true)]
    plant_unfair: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    Isolation,
    Burst,
    Mixed,
    Quota,
    Scaling,
    Backlog,
    Lifecycle,
    /// Not run unless named: minutes long.
    Soak,
    /// Not run unless named: kills and pauses replicas.
    Chaos,
}

/// What a run that names no profile runs: every one but the long ones.
fn default_profiles() -> Vec<Profile> {
    Profile::value_variants().iter().copied().filter(|p| !p.long()).collect()
}

impl Profile {
    /// Run only when named (a run of every profile leaves it out).
    fn long(self) -> bool {
        matches!(self, Profile::Soak | Profile::Chaos)
    }

    fn name(self) -> &'static str {
        match self {
            Profile::Isolation => "isolation",
            Profile::Burst => "burst",
            Profile::Mixed => "mixed",
            Profile::Quota => "quota",
            Profile::Scaling => "scaling",
            Profile::Backlog => "backlog",
            Profile::Lifecycle => "lifecycle",
            Profile::Soak => "soak",
            Profile::Chaos => "chaos",
        }
    }
}

/// One thing a profile checks, and what it saw.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    pub name: String,
    pub passed: bool,
    pub detail: String,
}

/// A figure a profile measured (integers: counts, microseconds, milliseconds, per-mille).
#[derive(Clone, Debug, Serialize)]
pub struct Figure {
    pub name: String,
    pub value: u64,
    pub unit: &'static str,
}

/// A profile's outcome.
#[derive(Debug, Serialize)]
pub struct Outcome {
    pub profile: Profile,
    pub passed: bool,
    pub seconds_ms: u64,
    pub checks: Vec<Check>,
    pub figures: Vec<Figure>,
    /// Per-second series (ms since the run began → value), by name, for the report.
    pub series: BTreeMap<String, Vec<(u64, u64)>>,
    /// scaling: one point per tenant count.
    pub curve: Vec<ScalingPoint>,
    /// chaos: the faults, shaded in the plots.
    pub faults: Vec<steady::FaultSpan>,
}

#[derive(Clone, Debug, Serialize)]
pub struct ScalingPoint {
    pub tenants: u32,
    pub per_second: u64,
    pub p50_us: u64,
    pub p95_us: u64,
    pub p99_us: u64,
    pub errors: u64,
}

impl Outcome {
    fn new(profile: Profile) -> Outcome {
        Outcome {
            profile,
            passed: true,
            seconds_ms: 0,
            checks: Vec::new(),
            figures: Vec::new(),
            series: BTreeMap::new(),
            curve: Vec::new(),
            faults: Vec::new(),
        }
    }

    pub fn check(&mut self, name: &str, passed: bool, detail: impl Into<String>) {
        self.passed &= passed;
        self.checks.push(Check { name: name.into(), passed, detail: detail.into() });
    }

    pub fn figure(&mut self, name: &str, value: u64, unit: &'static str) {
        self.figures.push(Figure { name: name.into(), value, unit });
    }
}

/// What every profile runs with.
pub struct Ctx {
    pub client: Arc<Client>,
    pub connection: crate::cli::Connection,
    /// 8 hex digits naming this run's tenants, pools and workers.
    pub run: String,
    pub short: bool,
    pub recorder: Recorder,
    pub plant_leak: bool,
    /// `--plant-unfair`: the weight of the tenant `backlog` and `mixed` favour against their
    /// checks (0: none favoured).
    pub unfair_weight: u32,
    /// What the profile running now made and has not yet given back: the tenants and
    /// workers `cleanup` deletes after it, whether it passed, failed or stopped half-way.
    made: std::sync::Mutex<Made>,
}

#[derive(Default)]
struct Made {
    tenants: std::collections::BTreeSet<String>,
    workers: Vec<String>,
}

impl Ctx {
    /// A client that sends `token` (a tenant's), with the same endpoints and security.
    pub fn client_as(&self, token: &str) -> anyhow::Result<Arc<Client>> {
        let mut connection = self.connection.clone();
        connection.token = Some(token.to_owned());
        Ok(Arc::new(connection.client(options(&self.connection))?))
    }

    fn made(&self) -> std::sync::MutexGuard<'_, Made> {
        self.made.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Notes a tenant this profile created (`cleanup` deletes it unless `deleted` is said).
    pub fn created(&self, tenant: &str) {
        self.made().tenants.insert(tenant.to_owned());
    }

    /// Notes that the profile deleted `tenant` itself.
    pub fn deleted(&self, tenant: &str) {
        self.made().tenants.remove(tenant);
    }

    /// A name unique to this run.
    pub fn name(&self, profile: Profile, what: &str) -> String {
        format!("st{}-{}-{what}", self.run, &profile.name()[..3])
    }
}

fn options(connection: &crate::cli::Connection) -> ClientOptions {
    ClientOptions { deadline: Duration::from_millis(connection.timeout_ms), ..Default::default() }
}

/// The whole run's results (`results.json`).
#[derive(Serialize)]
struct Results {
    run: String,
    started: String,
    short: bool,
    passed: bool,
    profiles: Vec<Outcome>,
    metrics: Option<Check>,
}

pub async fn run(connection: crate::cli::Connection, args: StressArgs) -> anyhow::Result<()> {
    let mut profiles = args.profiles.clone();
    if profiles.is_empty() {
        profiles = default_profiles();
    }
    // Each at most once: a profile's workers and tenants have fixed names within a run.
    let mut seen = std::collections::BTreeSet::new();
    profiles.retain(|p| seen.insert(*p));
    let client = Arc::new(connection.client(options(&connection))?);
    let run = new_request_id()[..8].to_owned();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let started = berth::scheduler::windows::utc_label(berth::scheduler::UnixMillis(now_ms));
    let compact: String = started.chars().filter(char::is_ascii_alphanumeric).collect();
    let dir = args.out.join(format!("{}Z-{run}", &compact[..15]));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let ctx = Ctx {
        client,
        connection: connection.clone(),
        run: run.clone(),
        short: args.short,
        recorder: Recorder::new(Instant::now()),
        plant_leak: args.plant_leak,
        unfair_weight: if args.plant_unfair { 16 } else { 0 },
        made: std::sync::Mutex::default(),
    };
    let progress = record::progress(ctx.recorder.clone(), connection.json);
    let mut outcomes = Vec::new();
    // Ctrl-C stops the profile running (dropping it: a replica `chaos` paused is resumed),
    // gives back what it made, and ends the run with the results so far; a second one stops
    // the giving back too.
    let interrupt = tokio::signal::ctrl_c();
    tokio::pin!(interrupt);
    for profile in profiles {
        ctx.recorder.begin(profile.name());
        let began = Instant::now();
        let running = async {
            match profile {
                Profile::Isolation => profiles::isolation(&ctx, &args).await,
                Profile::Burst => profiles::burst(&ctx).await,
                Profile::Mixed => profiles::mixed(&ctx).await,
                Profile::Quota => profiles::quota(&ctx).await,
                Profile::Scaling => profiles::scaling(&ctx, &args).await,
                Profile::Backlog => profiles::backlog(&ctx, &args).await,
                Profile::Lifecycle => profiles::lifecycle(&ctx).await,
                Profile::Soak => steady::soak(&ctx, &args).await,
                Profile::Chaos => steady::chaos(&ctx, &args).await,
            }
        };
        let mut interrupted = false;
        let ran = tokio::select! {
            ran = running => ran,
            _ = &mut interrupt => {
                interrupted = true;
                Err(anyhow::anyhow!("interrupted (Ctrl-C)"))
            }
        };
        let mut outcome = ran.unwrap_or_else(|e| {
            let mut failed = Outcome::new(profile);
            failed.check("ran to the end", false, format!("{e:#}"));
            failed
        });
        outcome.seconds_ms = u64::try_from(began.elapsed().as_millis()).unwrap_or(u64::MAX);
        // Ctrl-C during the clean-up (again, if one stopped the profile) leaves what the run
        // made and ends the run at once.
        let cleaned = tokio::select! {
            cleaned = cleanup(&ctx) => cleaned,
            () = async {
                match interrupted {
                    true => drop(tokio::signal::ctrl_c().await),
                    false => drop((&mut interrupt).await),
                }
            } => {
                progress.abort();
                eprintln!(
                    "stopped during the clean-up: what the run made is left (its names begin st{}-)",
                    ctx.run
                );
                std::process::exit(130);
            }
        };
        if let Err(e) = cleaned {
            outcome.check("gave back what it made", false, format!("{e:#}"));
        }
        if outcome.series.is_empty() {
            outcome.series = ctx.recorder.series(profile.name());
        }
        if !connection.json {
            summary(&outcome);
        }
        outcomes.push(outcome);
        if interrupted {
            break;
        }
    }
    progress.abort();
    let metrics = if args.metrics.is_empty() {
        None
    } else {
        Some(validate_metrics(&args.metrics, &ctx.recorder, &format!("st{}-", ctx.run)).await)
    };
    let passed = outcomes.iter().all(|o| o.passed) && metrics.as_ref().is_none_or(|m| m.passed);
    let results = Results { run, started, short: args.short, passed, profiles: outcomes, metrics };
    std::fs::write(dir.join("results.json"), serde_json::to_vec_pretty(&results)?)?;
    std::fs::write(dir.join("report.html"), report::html(&results))?;
    link_latest(&args.out, &dir)?;
    if connection.json {
        out!("{}", serde_json::to_string_pretty(&results)?);
    } else {
        if let Some(m) = &results.metrics {
            out!("metrics: {} ({})", if m.passed { "pass" } else { "FAIL" }, m.detail);
        }
        out!(
            "{}: report {}",
            if passed { "passed" } else { "FAILED" },
            dir.join("report.html").display()
        );
    }
    anyhow::ensure!(passed, "a stress check failed (see {})", dir.join("report.html").display());
    Ok(())
}

fn summary(o: &Outcome) {
    out!(
        "{:<10} {}  ({}.{:03} s)",
        o.profile.name(),
        if o.passed { "pass" } else { "FAIL" },
        o.seconds_ms / 1000,
        o.seconds_ms % 1000
    );
    for c in &o.checks {
        out!("  [{}] {}: {}", if c.passed { "ok" } else { "FAIL" }, c.name, c.detail);
    }
    for f in &o.figures {
        out!("  {} = {} {}", f.name, f.value, f.unit);
    }
}

/// Points `<out>/latest` at `dir` (a relative link, replaced atomically).
fn link_latest(out: &Path, dir: &Path) -> anyhow::Result<()> {
    let name = dir.file_name().context("a run directory has a name")?;
    let tmp = out.join(format!(".latest-{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(name, &tmp)?;
    std::fs::rename(&tmp, out.join("latest"))?;
    Ok(())
}

/// Each tenant's `berth_api_requests_total` summed over every replica must equal the calls
/// this client made for it, RPC by RPC. Tenants the replicas fold into `_other` (past their
/// label cap) are not compared, and said so.
async fn validate_metrics(urls: &[String], recorder: &Recorder, prefix: &str) -> Check {
    let mut seen: BTreeMap<(String, String), u64> = BTreeMap::new();
    for url in urls {
        match scrape(url).await {
            Ok(text) => {
                for (labels, value) in parse_requests(&text) {
                    *seen.entry(labels).or_default() += value;
                }
            }
            Err(e) => {
                return Check {
                    name: "metrics equal what the client sent".into(),
                    passed: false,
                    detail: format!("scraping {url}: {e:#}"),
                }
            }
        }
    }
    // This run's tenants only (their names start with the run's prefix).
    let sent: BTreeMap<_, _> = recorder
        .calls()
        .into_iter()
        .filter(|((tenant, _), _)| tenant.starts_with(prefix))
        .collect();
    let labelled: std::collections::BTreeSet<&String> = seen.keys().map(|(t, _)| t).collect();
    let sent_tenants: std::collections::BTreeSet<&String> = sent.keys().map(|(t, _)| t).collect();
    let folded = sent_tenants.iter().filter(|t| !labelled.contains(*t)).count();
    let (mut compared, mut wrong) = (0u64, Vec::new());
    for ((tenant, rpc), count) in &sent {
        if !labelled.contains(tenant) {
            continue;
        }
        compared += 1;
        let got = seen.get(&(tenant.clone(), rpc.clone())).copied().unwrap_or(0);
        if got != *count {
            wrong.push(format!("{tenant} {rpc}: sent {count}, metrics {got}"));
        }
    }
    // And the other way: a counter of this run's tenants the client never sent.
    for ((tenant, rpc), got) in &seen {
        if tenant.starts_with(prefix) && !sent.contains_key(&(tenant.clone(), rpc.clone())) {
            wrong.push(format!("{tenant} {rpc}: sent 0, metrics {got}"));
        }
    }
    let passed = wrong.is_empty() && compared > 0;
    let detail = if wrong.is_empty() {
        format!(
            "{compared} tenant×RPC counters equal; {folded} of {} tenants past the replicas' label cap not compared",
            sent_tenants.len()
        )
    } else {
        let shown: Vec<_> = wrong.iter().take(5).cloned().collect();
        format!("{} differ: {}", wrong.len(), shown.join("; "))
    };
    Check { name: "metrics equal what the client sent".into(), passed, detail }
}

/// GET an `http://HOST:PORT/PATH` URL (the metrics port speaks plain HTTP/1.1).
pub(crate) async fn scrape(url: &str) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").context("a metrics URL starts with http://")?;
    let (host, path) =
        rest.split_once('/').map_or((rest, "/metrics".to_owned()), |(h, p)| (h, format!("/{p}")));
    let mut stream =
        tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(host))
            .await
            .context("connecting")??;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut body = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut body))
        .await
        .context("reading")??;
    let text = String::from_utf8_lossy(&body).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").context("an HTTP answer")?;
    anyhow::ensure!(
        head.starts_with("HTTP/1.1 200"),
        "answer: {}",
        head.lines().next().unwrap_or("")
    );
    Ok(body.to_owned())
}

/// `berth_api_requests_total{tenant_id="T",rpc="R"} N` samples: ((T, R), N).
fn parse_requests(text: &str) -> Vec<((String, String), u64)> {
    let mut samples = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("berth_api_requests_total{") else { continue };
        let Some((labels, value)) = rest.rsplit_once("} ") else { continue };
        let label = |key: &str| {
            labels.split(',').find_map(|kv| {
                let (k, v) = kv.split_once('=')?;
                (k == key).then(|| v.trim_matches('"').to_owned())
            })
        };
        let value = value.split_whitespace().next().and_then(|v| v.parse::<u64>().ok());
        if let (Some(t), Some(r), Some(v)) = (label("tenant_id"), label("rpc"), value) {
            samples.push(((t, r), v));
        }
    }
    samples
}

/// Tenants `t0..` of `profile`, `n` of them, each made by `weighted_tenant_with_token` with
/// `quota` and the weight `weight` gives its number, with a client that speaks as it.
pub async fn tenants_with_clients(
    ctx: &Ctx,
    profile: Profile,
    n: u32,
    quota: Option<pb::Quota>,
    weight: impl Fn(u32) -> u32,
) -> anyhow::Result<Vec<(String, Arc<Client>)>> {
    let mut tenants = Vec::new();
    for i in 0..n {
        let tenant = ctx.name(profile, &format!("t{i}"));
        let token = weighted_tenant_with_token(ctx, &tenant, quota.clone(), weight(i)).await?;
        tenants.push((tenant, ctx.client_as(&token)?));
    }
    Ok(tenants)
}

/// Creates `tenant` (admin), with `quota` if given, and issues it a token.
pub async fn tenant_with_token(
    ctx: &Ctx,
    tenant: &str,
    quota: Option<pb::Quota>,
) -> anyhow::Result<String> {
    weighted_tenant_with_token(ctx, tenant, quota, 0).await
}

/// `tenant_with_token` with a fair-share `weight` (0: the default, 1).
pub async fn weighted_tenant_with_token(
    ctx: &Ctx,
    tenant: &str,
    quota: Option<pb::Quota>,
    weight: u32,
) -> anyhow::Result<String> {
    let c = &ctx.client;
    let create = pb::CreateTenantRequest {
        request_id: new_request_id(),
        tenant_id: tenant.into(),
        weight,
        ..Default::default()
    };
    ctx.recorder.call(tenant, "Tenants/CreateTenant");
    c.call(create, |ch, r| async move { client::tenants(ch).create_tenant(r).await })
        .await
        .map_err(|s| anyhow::anyhow!(crate::cli::describe(&s)))?;
    ctx.created(tenant);
    if let Some(quota) = quota {
        let set = pb::SetQuotaRequest {
            request_id: new_request_id(),
            tenant_id: tenant.into(),
            quota: Some(quota),
        };
        ctx.recorder.call(tenant, "Tenants/SetQuota");
        c.call(set, |ch, r| async move { client::tenants(ch).set_quota(r).await })
            .await
            .map_err(|s| anyhow::anyhow!(crate::cli::describe(&s)))?;
    }
    let issue = pb::IssueTokenRequest {
        request_id: new_request_id(),
        tenant_id: tenant.into(),
        token_name: "stress".into(),
        ttl_ms: 0,
    };
    ctx.recorder.call(tenant, "Tenants/IssueToken");
    let issued = c
        .call(issue, |ch, r| async move { client::tenants(ch).issue_token(r).await })
        .await
        .map_err(|s| anyhow::anyhow!(crate::cli::describe(&s)))?;
    Ok(issued.token)
}

/// Registers `count` workers of `cpu_millis` each in `pool`.
pub async fn workers(ctx: &Ctx, pool: &str, count: u32, cpu_millis: u64) -> anyhow::Result<()> {
    for w in 0..count {
        ctx.made().workers.push(format!("{pool}-w{w}"));
        let m = pb::RegisterWorkerRequest {
            request_id: new_request_id(),
            worker_id: format!("{pool}-w{w}"),
            pool: pool.into(),
            capacity: Some(pb::Resources { cpu_millis, memory_mib: 1 << 20 }),
            ..Default::default()
        };
        ctx.client
            .call(m, |ch, r| async move { client::workers(ch).register_worker(r).await })
            .await
            .map_err(|s| anyhow::anyhow!(crate::cli::describe(&s)))?;
    }
    Ok(())
}

/// Deletes the tenants the profile made and did not delete, and removes its workers
/// (evicting what they still hold): a profile leaves the cluster as it found it, even when it
/// failed half-way.
async fn cleanup(ctx: &Ctx) -> anyhow::Result<()> {
    let made = std::mem::take(&mut *ctx.made());
    for tenant in &made.tenants {
        let m = pb::DeleteTenantRequest { request_id: new_request_id(), tenant_id: tenant.clone() };
        let call =
            ctx.client.call(m, |ch, r| async move { client::tenants(ch).delete_tenant(r).await });
        match ctx.recorder.timed(tenant, "Tenants/DeleteTenant", call).await {
            Ok(_) => {}
            Err(s) if s.code() == tonic::Code::NotFound => {}
            Err(s) => anyhow::bail!("deleting {tenant}: {}", crate::cli::describe(&s)),
        }
    }
    for worker in &made.workers {
        let m = pb::RemoveWorkerRequest {
            request_id: new_request_id(),
            worker_id: worker.clone(),
            evict: true,
        };
        match ctx
            .client
            .call(m, |ch, r| async move { client::workers(ch).remove_worker(r).await })
            .await
        {
            Ok(_) => {}
            Err(s) if s.code() == tonic::Code::NotFound => {}
            Err(s) => anyhow::bail!("removing {worker}: {}", crate::cli::describe(&s)),
        }
    }
    Ok(())
}

/// A background task of a profile, aborted if the profile stops before joining it.
pub struct Background<T>(tokio::task::JoinHandle<T>);

impl<T> Background<T> {
    pub fn spawn(task: impl std::future::Future<Output = T> + Send + 'static) -> Background<T>
    where
        T: Send + 'static,
    {
        Background(tokio::spawn(task))
    }

    pub async fn join(mut self) -> anyhow::Result<T> {
        (&mut self.0).await.map_err(|e| anyhow::anyhow!("a background task: {e}"))
    }
}

impl<T> Drop for Background<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A placement of one instance of `cpu_millis` in `pool`.
pub fn spec(id: &str, pool: &str, cpu_millis: u64) -> pb::PlacementSpec {
    pb::PlacementSpec {
        placement_id: id.into(),
        resources: Some(pb::Resources { cpu_millis, memory_mib: 1 }),
        pool: pool.into(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::{default_profiles, Profile};

    #[test]
    fn a_run_naming_no_profile_leaves_out_the_long_ones() {
        let all = default_profiles();
        assert!(!all.contains(&Profile::Soak) && !all.contains(&Profile::Chaos), "{all:?}");
        assert_eq!(all.len(), 7, "{all:?}");
    }
}
