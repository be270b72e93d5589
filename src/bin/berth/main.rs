//! The `berth` binary: one module per command, on top of the library (`berth::…`), which never
//! depends on it.
//!
//! - `server`: `berth server`, one replica of a cluster.
//! - `up`: `berth up`, a local cluster of `berth server` child processes.
//! - `certs`: `berth certs`, a CA and the certificates of a cluster's replicas.
//! - `bench`: `berth bench`, load against a running cluster.
//! - `agent`: `berth agent`, the process on a worker machine (heartbeats, assignments, hooks).
//! - `cli`: the client subcommands, one file per resource.
//! - `output`: how every command prints: `out!`, `--json`, `key: value` lines and tables.

#[macro_use]
mod output;

mod agent;
mod bench;
mod certs;
mod cli;
mod restore;
mod server;
mod stress;
mod up;

use clap::{Parser, Subcommand};

/// The process's allocator: jemalloc, with its background threads on (the crate's
/// `background_threads`), which return freed pages to the system. Without them, pages freed
/// in an arena that then goes quiet are purged only when that arena is next used, and a
/// replica's resident memory crept up under a steady load (docs/performance.md, "The
/// allocator"). `_RJEM_MALLOC_CONF` in the environment overrides its options.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Berth: a Raft-replicated, multi-tenant resource scheduler.
#[derive(Parser)]
#[command(name = "berth", version, about, long_about = None)]
struct Cli {
    #[command(flatten)]
    connection: cli::Connection,
    /// How diagnostics on standard error are written: `text` for people, `json` (one object
    /// per line, with every field) for log collectors. `berth up` passes it to its replicas.
    #[arg(long, global = true, env = "BERTH_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

impl LogFormat {
    pub fn name(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Run one replica of a Berth cluster.
    Server(server::ServerArgs),
    /// Start a local cluster of 3 or 5 replicas on 127.0.0.1 and keep it running until Ctrl-C.
    Up(up::UpArgs),
    /// Create a CA and certificates for the replicas of a cluster/hosts/N directory.
    ///
    /// Reads each berth-*.env there (BERTH_ID, and the hosts of BERTH_PEER_ADVERTISE,
    /// BERTH_PEER_LISTEN and BERTH_API_LISTEN) and writes under --out: the CA (ca.pem, and
    /// ca-key.pem, which signs every certificate: keep it offline), one directory per host
    /// (berth-N/ with ca.pem, replica.pem and replica-key.pem, for /etc/berth/tls/ there; the
    /// certificate names replica N and those hosts), and an operator client certificate
    /// (client.pem, client-key.pem) for clusters started with --api-client-ca-file. Private
    /// keys are owner-only (0600) from the start.
    ///
    /// Rotation: run it again with the same --out. It reuses the CA there and issues new
    /// certificates; copy one host's new files over its old ones, restart that replica, and it
    /// rejoins (old and new certificates from the same CA work together).
    Certs(certs::CertsArgs),
    /// Drive Place + Release against a running cluster and print ops/s and latency.
    Bench(bench::BenchArgs),
    /// Make a new replica's storage from a backup file (`berth backup`), checked by its
    /// SHA-256: run it for every replica of the new cluster with the same --initial-members,
    /// then start each with `berth server` as usual, without --bootstrap.
    Restore(restore::RestoreArgs),
    /// Multi-tenant stress profiles against a running cluster (isolation, burst, quota,
    /// scaling, backlog, lifecycle): checks against stated thresholds, measured figures, and a
    /// report in <out>/<run>/report.html with results.json (<out>/latest is the newest).
    Stress(stress::StressArgs),
    /// Run a worker: register it, heartbeat, follow its assignments, run hooks, report.
    Agent(agent::AgentArgs),
    #[command(flatten)]
    Client(cli::ClientCmd),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn")),
        )
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => {
            logs.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).init();
        }
        LogFormat::Json => logs.json().flatten_event(true).with_current_span(false).init(),
    }
    // A replica runs on as many threads as asked; every other command (the CLI, `up`, the
    // benchmark's load generator) on one, so it takes as little CPU from the cluster as it can.
    let mut builder = match &cli.command {
        Cmd::Server(args) if args.worker_threads > 1 => {
            let mut builder = tokio::runtime::Builder::new_multi_thread();
            builder.worker_threads(usize::from(args.worker_threads));
            builder
        }
        _ => tokio::runtime::Builder::new_current_thread(),
    };
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let outcome = match cli.command {
        Cmd::Server(args) => runtime.block_on(server::run(args)),
        Cmd::Up(args) => runtime.block_on(up::run(args, cli.log_format)),
        Cmd::Certs(args) => certs::run(&args, cli.connection.json),
        Cmd::Bench(args) => runtime.block_on(bench::run(cli.connection, args)),
        Cmd::Restore(args) => runtime.block_on(restore::run(args, cli.connection.json)),
        Cmd::Stress(args) => runtime.block_on(stress::run(cli.connection, args)),
        Cmd::Agent(args) => runtime.block_on(agent::run(cli.connection, args)),
        Cmd::Client(command) => runtime.block_on(cli::run(cli.connection, command)),
    };
    // A replica under `berth up` watches standard input on a blocking thread, and that read
    // never ends while the parent lives: dropping the runtime would wait for it, so a
    // replica sent SIGTERM stopped serving but never exited.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One readable line (with causes), never a backtrace.
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
