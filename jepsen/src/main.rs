//! `jepsen`: partition, kill and pause real `berth server` processes in network namespaces
//! while clients run a workload; then check the history. Needs root.
//!
//! The outer process creates the namespaces, then re-runs itself inside the clients'
//! namespace (`ip netns exec <run>-c jepsen --inside …`) so that all client traffic stays in
//! the test network. The outer process owns cleanup: whatever happens to the inner one, every
//! process in the namespaces is killed and the namespaces deleted when it exits.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use jepsen::checker::Valid;
use jepsen::nemesis::KINDS;
use jepsen::run::{Config, Summary};
use jepsen::topology::{self, Net};
use jepsen::workload::Workload;

#[derive(Parser, Debug)]
#[command(name = "jepsen", about = "Jepsen-style fault injection against real berth processes")]
struct Opts {
    /// Replicas (3 or 5 are typical; at most 9).
    #[arg(long, default_value_t = 5)]
    replicas: u64,
    /// Seconds of workload under faults (then heal and final reads).
    #[arg(long, default_value_t = 60)]
    time_limit: u64,
    /// Faults, comma separated: partition, kill, pause, clock, netem; `all`, or `none`.
    #[arg(long, default_value = "partition,kill,pause")]
    nemesis: String,
    /// Workloads, comma separated: quota, capacity, lease, register, tenants, worker; or `all`.
    #[arg(long, default_value = "quota")]
    workload: String,
    /// Concurrent clients (split across the workloads).
    #[arg(long, default_value_t = 10)]
    concurrency: u64,
    /// Target operations per second over all clients (0: unlimited).
    #[arg(long, default_value_t = 50)]
    rate: u64,
    /// Seed for every random choice (default: from the clock; printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Seconds each fault lasts; quiet periods are half of it.
    #[arg(long, default_value_t = 10)]
    nemesis_interval: u64,
    /// The `instances` limit of each quota tenant.
    #[arg(long, default_value_t = 3)]
    quota_limit: u64,
    /// Print the summary as JSON on stdout (progress goes to stderr).
    #[arg(long)]
    json: bool,
    /// Where runs are stored (a directory per run).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/store"))]
    store: PathBuf,
    /// The berth binary (default: built next to this one, via cargo when run by cargo).
    #[arg(long, env = "BERTH_BIN")]
    berth: Option<PathBuf>,
    /// Re-run the checkers on a stored run directory (no root, no cluster) and exit.
    #[arg(long, value_name = "RUN_DIR")]
    check: Option<PathBuf>,
    #[arg(long, hide = true)]
    inside: Option<String>,
    #[arg(long, hide = true)]
    run_dir: Option<PathBuf>,
    /// Runs one lease client process of a run (started by the run itself).
    #[arg(long, hide = true, value_name = "SPEC")]
    lease_client: Option<String>,
}

fn list(s: &str, all: &[&str]) -> Vec<String> {
    match s {
        "all" => all.iter().map(|k| (*k).to_owned()).collect(),
        "none" | "" => Vec::new(),
        s => s.split(',').map(|k| k.trim().to_owned()).filter(|k| !k.is_empty()).collect(),
    }
}

/// The berth binary to run: given, or next to this executable (built first when under cargo).
fn berth_binary(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = given {
        return std::fs::canonicalize(p).with_context(|| format!("berth binary {}", p.display()));
    }
    let exe = std::env::current_exe()?;
    let dir = exe.parent().context("executable has a directory")?;
    let dir = if dir.ends_with("deps") { dir.parent().unwrap_or(dir) } else { dir };
    if let Some(cargo) = std::env::var_os("CARGO") {
        // Under `cargo run`: make sure berth is built from the same sources and profile.
        if let Some(target) = dir.parent() {
            let mut cmd = std::process::Command::new(cargo);
            // `-p jepsen` too, so features unify as for `cargo run -p jepsen` (no rebuild).
            cmd.args(["build", "-q", "-p", "berth", "-p", "jepsen", "--bins", "--target-dir"])
                .arg(target);
            if dir.ends_with("release") {
                cmd.arg("--release");
            }
            eprintln!("[setup] building berth ({})", dir.display());
            let status = cmd.status().context("running cargo build for berth")?;
            anyhow::ensure!(status.success(), "cargo build of berth failed");
        }
    }
    let path = dir.join("berth");
    anyhow::ensure!(
        path.is_file(),
        "no berth binary at {}: build it (cargo build --bin berth) or pass --berth",
        path.display()
    );
    Ok(path)
}

fn config(
    opts: &Opts,
    run: String,
    dir: PathBuf,
    berth: PathBuf,
    seed: u64,
) -> anyhow::Result<Config> {
    let nemesis = list(&opts.nemesis, KINDS);
    for k in &nemesis {
        anyhow::ensure!(KINDS.contains(&k.as_str()), "unknown nemesis {k:?}; one of {KINDS:?}");
    }
    let workloads =
        list(&opts.workload, &["quota", "capacity", "lease", "register", "tenants", "worker"])
            .iter()
            .map(|w| Workload::parse(w))
            .collect::<anyhow::Result<Vec<_>>>()?;
    anyhow::ensure!(!workloads.is_empty(), "--workload needs at least one workload");
    anyhow::ensure!(
        opts.concurrency >= u64::try_from(workloads.len())?,
        "--concurrency must be at least the number of workloads"
    );
    anyhow::ensure!(opts.nemesis_interval >= 2, "--nemesis-interval must be at least 2 s");
    Ok(Config {
        run,
        dir,
        berth,
        replicas: opts.replicas,
        time_limit: Duration::from_secs(opts.time_limit),
        nemesis,
        workloads,
        concurrency: opts.concurrency,
        rate: opts.rate,
        seed,
        nemesis_interval: Duration::from_secs(opts.nemesis_interval),
        quota_limit: opts.quota_limit,
    })
}

fn print_summary(s: &Summary, json: bool) {
    if json {
        println!("{}", serde_json::to_string_pretty(s).unwrap_or_default());
        return;
    }
    println!();
    println!(
        "== berth jepsen: {} replicas, {} s, nemesis {:?}, workloads {:?}, seed {}",
        s.replicas, s.time_limit_s, s.nemesis, s.workloads, s.seed
    );
    println!(
        "   {} faults; {} operations: {} ok, {} fail, {} info",
        s.faults, s.ops, s.ok, s.fail, s.info
    );
    println!(
        "   ok while faulty {}/{}, while quiet {}/{}",
        s.availability.faulty_ok,
        s.availability.faulty_total,
        s.availability.quiet_ok,
        s.availability.quiet_total
    );
    for c in &s.checks {
        let v = match c.valid {
            Valid::True => "valid  ",
            Valid::False => "INVALID",
            Valid::Unknown => "unknown",
        };
        println!("   {v} {} (checked {})", c.name, c.checked);
        for d in &c.details {
            println!("           {d}");
        }
    }
    let verdict = match s.valid {
        Valid::True => "VALID",
        Valid::False => "INVALID",
        Valid::Unknown => "UNKNOWN",
    };
    println!("== {verdict}    report: {}", s.store.join("index.html").display());
}

fn exit(valid: Valid) -> ExitCode {
    match valid {
        Valid::True => ExitCode::SUCCESS,
        Valid::False => ExitCode::from(1),
        Valid::Unknown => ExitCode::from(2),
    }
}

/// Inside the clients' namespace: the run itself.
async fn inside(opts: Opts, run: String) -> anyhow::Result<ExitCode> {
    let dir = opts.run_dir.clone().context("--run-dir")?;
    let berth = opts.berth.clone().context("--berth")?;
    let seed = opts.seed.context("--seed")?;
    let config = config(&opts, run, dir, berth, seed)?;
    let summary = jepsen::run::run(config).await?;
    print_summary(&summary, opts.json);
    Ok(exit(summary.valid))
}

/// `--check DIR`: the checkers over a stored history and final state.
fn recheck(opts: &Opts, dir: &Path) -> anyhow::Result<ExitCode> {
    let ops = jepsen::history::load(&dir.join("history.jsonl"))?;
    let last: jepsen::checker::FinalState =
        serde_json::from_str(&std::fs::read_to_string(dir.join("final.json"))?)?;
    let results: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("results.json"))?)?;
    let mut workloads: Vec<Workload> =
        ops.iter().filter_map(|o| Workload::parse(&o.workload).ok()).collect();
    workloads.sort();
    workloads.dedup();
    let mut config = config(opts, String::new(), dir.to_owned(), PathBuf::new(), 0)?;
    config.workloads = workloads;
    config.replicas = results["replicas"].as_u64().unwrap_or(opts.replicas);
    config.seed = results["seed"].as_u64().unwrap_or(0);
    config.time_limit = Duration::from_secs(results["time_limit_s"].as_u64().unwrap_or(0));
    config.nemesis = results["nemesis"]
        .as_array()
        .map(|a| a.iter().filter_map(|k| k.as_str().map(str::to_owned)).collect())
        .unwrap_or_default();
    let start_unix_us = results["start_unix_us"].as_u64().unwrap_or(0);
    let summary = jepsen::run::check(&config, &ops, &last, 0, Vec::new(), start_unix_us);
    print_summary(&summary, opts.json);
    Ok(exit(summary.valid))
}

/// Outside: check, create the network, run inside it, clean up.
async fn outside(opts: Opts) -> anyhow::Result<ExitCode> {
    if !topology::is_root() {
        eprintln!("jepsen: NOT RUN — it needs root (network namespaces, veth, iptables). Run it with sudo, or as root in CI.");
        return Ok(ExitCode::from(4));
    }
    topology::check_tools()?;
    for run in topology::remove_stale() {
        eprintln!("[setup] removed leftovers of crashed run {run}");
    }
    let berth = berth_binary(opts.berth.as_deref())?;
    let seed = opts.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| u64::from(d.subsec_nanos()) ^ d.as_secs())
            .unwrap_or(1)
    });
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    std::fs::create_dir_all(&opts.store)?;
    let store = std::fs::canonicalize(&opts.store)?;
    let dir = store.join(format!("{secs}-seed{seed}"));
    // Validate flags before touching the network.
    config(&opts, String::new(), dir.clone(), berth.clone(), seed)?;
    std::fs::create_dir_all(&dir)?;
    let latest = store.join("latest");
    let _ = std::fs::remove_file(&latest);
    let _ = std::os::unix::fs::symlink(&dir, &latest);

    let net = Net::create(opts.replicas)?;
    let exe = std::env::current_exe()?;
    let mut cmd = tokio::process::Command::new("ip");
    cmd.args(["netns", "exec", &Net::client_ns(&net.run)])
        .arg(&exe)
        .args(["--inside", &net.run, "--run-dir"])
        .arg(&dir)
        .arg("--berth")
        .arg(&berth)
        .args(["--replicas", &opts.replicas.to_string()])
        .args(["--time-limit", &opts.time_limit.to_string()])
        .args(["--nemesis", &opts.nemesis, "--workload", &opts.workload])
        .args(["--concurrency", &opts.concurrency.to_string()])
        .args(["--rate", &opts.rate.to_string(), "--seed", &seed.to_string()])
        .args(["--nemesis-interval", &opts.nemesis_interval.to_string()])
        .args(["--quota-limit", &opts.quota_limit.to_string()])
        .arg("--store")
        .arg(&store)
        .kill_on_drop(true);
    if opts.json {
        cmd.arg("--json");
    }
    let mut child = cmd.spawn().context("starting the run inside the namespace")?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let code = tokio::select! {
        status = child.wait() => status?.code(),
        _ = tokio::signal::ctrl_c() => {
            eprintln!("[jepsen] interrupted: cleaning up");
            let _ = child.kill().await;
            Some(130)
        }
        _ = term.recv() => {
            eprintln!("[jepsen] terminated: cleaning up");
            let _ = child.kill().await;
            Some(143)
        }
    };
    drop(net);
    Ok(match code {
        Some(0) => ExitCode::SUCCESS,
        Some(c) => ExitCode::from(u8::try_from(c).unwrap_or(1)),
        None => ExitCode::from(3),
    })
}

#[tokio::main]
async fn main() -> ExitCode {
    let opts = Opts::parse();
    if let Some(spec) = &opts.lease_client {
        return match jepsen::clientproc::run_client(spec).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("jepsen lease client: error: {e:#}");
                ExitCode::from(3)
            }
        };
    }
    let result = match (opts.check.clone(), opts.inside.clone()) {
        (Some(dir), _) => recheck(&opts, &dir),
        (None, Some(run)) => inside(opts, run).await,
        (None, None) => outside(opts).await,
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("jepsen: error: {e:#}");
            ExitCode::from(3)
        }
    }
}
