//! `cargo run -p sim --release -- --seed N | --seeds A..B | --reproduce N [--json]`

use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;

#[derive(Parser, Debug)]
#[command(about = "Deterministic simulation of a Berth cluster under faults")]
struct Args {
    /// Run one seed.
    #[arg(long, conflicts_with_all = ["seeds", "reproduce"])]
    seed: Option<u64>,
    /// Run a range of seeds, e.g. 0..100 (end exclusive).
    #[arg(long, conflicts_with = "reproduce")]
    seeds: Option<String>,
    /// Rerun one seed with full logs (RUST_LOG overrides the default `info`) and its history.
    #[arg(long)]
    reproduce: Option<u64>,
    /// One JSON object per seed instead of readable lines.
    #[arg(long)]
    json: bool,
    /// A named scenario instead of random faults: `faults` (the default) or `lease-expiry`
    /// (the lease holder is partitioned away, its lease expires and is granted to a rival, and
    /// its fenced write is refused when it comes back), or `fairness` (tenants with weights
    /// 1:2:3:4 keep a full pool queued under the random faults; prints their shares), or
    /// `restart-read` (acknowledged writes, every replica crashed, the old leader restarted
    /// alone and read from before its peers are back), or `fleet` (workers driven by agents
    /// that crash, pause and are partitioned, under the random faults).
    #[arg(long, default_value = "faults")]
    scenario: sim::Scenario,
}

fn range(spec: &str) -> Result<std::ops::Range<u64>, String> {
    let (a, b) = spec.split_once("..").ok_or("--seeds takes A..B")?;
    let a: u64 = a.trim().parse().map_err(|_| format!("bad start {a:?}"))?;
    let b: u64 = b.trim().parse().map_err(|_| format!("bad end {b:?}"))?;
    if a >= b {
        return Err(format!("empty range {spec}"));
    }
    Ok(a..b)
}

fn main() -> ExitCode {
    let args = Args::parse();
    let seeds = match (&args.seed, &args.seeds, &args.reproduce) {
        (Some(seed), _, _) => *seed..*seed + 1,
        (_, Some(spec), _) => match range(spec) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        },
        (_, _, Some(seed)) => {
            let filter = tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=info"));
            tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
            *seed..*seed + 1
        }
        _ => {
            eprintln!("error: give --seed N, --seeds A..B or --reproduce N");
            return ExitCode::FAILURE;
        }
    };
    let total = seeds.end - seeds.start;
    let started = Instant::now();
    let (mut failed, mut simulated_ms) = (Vec::new(), 0u64);
    for (n, seed) in seeds.enumerate() {
        let begun = Instant::now();
        let report = sim::run_scenario(seed, args.scenario);
        simulated_ms += report.simulated_ms;
        if args.json {
            println!("{}", serde_json::to_string(&report).unwrap_or_default());
        } else {
            println!(
                "[{}/{total}] seed {seed}: {} replicas, {} ops ({} ok, {} fail, {} info), {} lease grants, {} stale tokens refused, {} faults, {} s simulated in {} ms: {}",
                n + 1,
                report.params.as_ref().map_or(0, |p| p.replicas),
                report.ops,
                report.ok,
                report.fail,
                report.info,
                report.lease_grants,
                report.stale_refused,
                report.faults.len(),
                report.simulated_ms / 1000,
                begun.elapsed().as_millis(),
                if report.violations.is_empty() { "ok" } else { "VIOLATION" },
            );
        }
        for step in &report.scenario {
            println!("  {step}");
        }
        if args.reproduce.is_some() {
            for fault in &report.faults {
                eprintln!("fault: {fault}");
            }
            for op in &report.history {
                eprintln!("{}", serde_json::to_string(op).unwrap_or_default());
            }
            eprintln!("trace hash {}", report.trace_hash);
        }
        if !report.violations.is_empty() {
            for v in &report.violations {
                eprintln!("  seed {seed}: {v}");
            }
            let scenario = match args.scenario {
                sim::Scenario::Faults => String::new(),
                sim::Scenario::LeaseExpiry => " --scenario lease-expiry".into(),
                sim::Scenario::Fairness => " --scenario fairness".into(),
                sim::Scenario::RestartRead => " --scenario restart-read".into(),
                sim::Scenario::Fleet => " --scenario fleet".into(),
                sim::Scenario::LeaderCut => " --scenario leader-cut".into(),
            };
            eprintln!("  reproduce: cargo run -p sim --release --{scenario} --reproduce {seed}");
            failed.push(seed);
        }
    }
    if !args.json {
        println!(
            "{} seeds, {} s simulated, {} s wall, {} failed{}",
            total,
            simulated_ms / 1000,
            started.elapsed().as_secs(),
            failed.len(),
            if failed.is_empty() { String::new() } else { format!(": {failed:?}") }
        );
    }
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
