//! The `berth` binary: `berth server` runs one replica.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use berth::clock::SystemClock;
use berth::network::tcp_connect;
use berth::raft::replica::ReplicaOptions;
use berth::server::{Listeners, Server, Storage};
use clap::{Args, Parser, Subcommand};

/// Berth: a Raft-replicated, multi-tenant resource scheduler.
#[derive(Parser)]
#[command(name = "berth", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run one replica of a Berth cluster.
    Server(ServerArgs),
}

#[derive(Args, Debug)]
struct ServerArgs {
    /// This replica's id: a positive integer unique in the cluster.
    #[arg(long, env = "BERTH_ID")]
    id: u64,
    /// Address to listen on for peer (Raft) traffic from the other replicas.
    #[arg(long, env = "BERTH_PEER_LISTEN", default_value = "127.0.0.1:7401")]
    peer_listen: SocketAddr,
    /// Address the other replicas use to reach this one (default: --peer-listen).
    #[arg(long, env = "BERTH_PEER_ADVERTISE")]
    peer_advertise: Option<String>,
    /// Address to serve the public gRPC API on (Tenants, Workers, Scheduler, Leases, Billing,
    /// Cluster, health, reflection). Needs an admin token.
    #[arg(long, env = "BERTH_API_LISTEN")]
    api_listen: Option<SocketAddr>,
    /// File holding the admin token (first line). Alternatively set BERTH_ADMIN_TOKEN.
    #[arg(long, env = "BERTH_ADMIN_TOKEN_FILE")]
    admin_token_file: Option<PathBuf>,
    /// Directory for this replica's Raft log and snapshots (created if missing).
    #[arg(long, env = "BERTH_DATA_DIR")]
    data_dir: PathBuf,
    /// Initialise a new cluster from --initial-members if this replica's storage is new.
    /// Give it to exactly one replica; restarts never re-initialise.
    #[arg(long, env = "BERTH_BOOTSTRAP")]
    bootstrap: bool,
    /// The founding members, as `ID=HOST:PEER_PORT` separated by commas (with --bootstrap).
    #[arg(long, env = "BERTH_INITIAL_MEMBERS", value_delimiter = ',')]
    initial_members: Vec<String>,
    /// Leader heartbeat interval.
    #[arg(long, default_value_t = 100)]
    heartbeat_ms: u64,
    /// Election timeout lower bound (must exceed the heartbeat).
    #[arg(long, default_value_t = 500)]
    election_timeout_min_ms: u64,
    /// Election timeout upper bound.
    #[arg(long, default_value_t = 1000)]
    election_timeout_max_ms: u64,
    /// Build a snapshot (and purge the log behind it) after this many log entries.
    #[arg(long, default_value_t = 10_000)]
    snapshot_logs: u64,
    /// Log entries kept behind the latest snapshot for slightly lagging followers.
    #[arg(long, default_value_t = 1_000)]
    snapshot_keep_logs: u64,
    /// Longest gap between leader ticks while leases or reservations are live.
    #[arg(long, default_value_t = 500)]
    tick_idle_ms: u64,
    /// Most client commands committed in one log entry (group commit).
    #[arg(long, default_value_t = 512)]
    batch_max: usize,
    /// Testing only: add this many milliseconds to the wall clock (models clock skew).
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    test_clock_offset_ms: i64,
}

fn parse_members(specs: &[String]) -> anyhow::Result<BTreeMap<u64, String>> {
    let mut members = BTreeMap::new();
    for spec in specs {
        let (id, addr) =
            spec.split_once('=').with_context(|| format!("member {spec:?} is not ID=HOST:PORT"))?;
        let id: u64 = id.trim().parse().with_context(|| format!("member id in {spec:?}"))?;
        if id == 0 {
            bail!("replica ids start at 1 (got {spec:?})");
        }
        if members.insert(id, addr.trim().to_owned()).is_some() {
            bail!("replica {id} is listed twice in --initial-members");
        }
    }
    Ok(members)
}

async fn server(args: ServerArgs) -> anyhow::Result<()> {
    if args.id == 0 {
        bail!("--id must be a positive integer");
    }
    let advertise = args.peer_advertise.clone().unwrap_or_else(|| args.peer_listen.to_string());
    let bootstrap = if args.bootstrap {
        let members = parse_members(&args.initial_members)?;
        match members.get(&args.id) {
            Some(addr) if *addr == advertise => {}
            Some(addr) => bail!(
                "--initial-members gives replica {} the address {addr}, but it advertises {advertise}",
                args.id
            ),
            None => bail!("--initial-members must include this replica ({})", args.id),
        }
        Some(members)
    } else {
        None
    };
    let mut options = ReplicaOptions::new(args.id, advertise.clone());
    options.heartbeat_ms = args.heartbeat_ms;
    options.election_timeout_min_ms = args.election_timeout_min_ms;
    options.election_timeout_max_ms = args.election_timeout_max_ms;
    options.snapshot_logs = args.snapshot_logs;
    options.snapshot_keep_logs = args.snapshot_keep_logs;
    options.tick_idle = Duration::from_millis(args.tick_idle_ms);
    options.batch_max = args.batch_max.max(1);

    let api = match args.api_listen {
        None => None,
        Some(addr) => {
            let admin = admin_token(args.admin_token_file.as_deref())?;
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding API address {addr}"))?;
            tracing::info!(api = %addr, "serving the public API");
            Some((
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                berth::api::hash_token(&admin),
            ))
        }
    };
    let storage = Storage::open_dir(&args.data_dir)
        .with_context(|| format!("opening data dir {}", args.data_dir.display()))?;
    let listener = tokio::net::TcpListener::bind(args.peer_listen)
        .await
        .with_context(|| format!("binding peer address {}", args.peer_listen))?;
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    let clock = Arc::new(SystemClock::with_offset_ms(args.test_clock_offset_ms));
    let connect = tcp_connect(Duration::from_millis(args.heartbeat_ms.max(100) * 5));
    let listeners = Listeners { peer: incoming, api };
    let server = Server::start(options, storage, clock, connect, listeners, bootstrap).await?;
    tracing::info!(id = args.id, peer = %advertise, data_dir = %args.data_dir.display(), "replica started");

    shutdown_signal().await;
    tracing::info!("shutting down");
    server.stop().await;
    Ok(())
}

/// The admin token from a file (first line) or `BERTH_ADMIN_TOKEN`.
fn admin_token(file: Option<&std::path::Path>) -> anyhow::Result<String> {
    let token = match file {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("reading admin token file {}", path.display()))?
            .lines()
            .next()
            .unwrap_or_default()
            .trim()
            .to_owned(),
        None => std::env::var("BERTH_ADMIN_TOKEN").unwrap_or_default().trim().to_owned(),
    };
    if token.len() < 16 {
        bail!("the API needs an admin token of at least 16 characters: --admin-token-file or BERTH_ADMIN_TOKEN");
    }
    Ok(token)
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = interrupt.await;
                    return;
                }
            };
        tokio::select! {
            _ = interrupt => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    match cli.command {
        Cmd::Server(args) => runtime.block_on(server(args)),
    }
}
