//! `berth server`: one replica of a cluster, from its flags (or `BERTH_*` variables), until
//! Ctrl-C, SIGTERM or (under `berth up`) the end of standard input.

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
use clap::Args;

#[derive(Args, Debug)]
pub struct ServerArgs {
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
    /// Address to serve Prometheus metrics on (plaintext HTTP, `GET /metrics`, OpenMetrics
    /// text; see docs/metrics.md). They name tenants: bind it where only operators reach it.
    #[arg(long, env = "BERTH_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,
    /// Address to serve the web console on (HTTP/1.1 over the API's TLS; sign in with a token).
    /// Off unless given; needs --api-listen.
    #[arg(long, env = "BERTH_CONSOLE_LISTEN", requires = "api_listen")]
    console_listen: Option<SocketAddr>,
    /// Tenants the metrics name, the first ones this replica sees; later ones are counted
    /// together as tenant_id="_other", so the series stay bounded.
    #[arg(long, env = "BERTH_METRICS_TENANTS_MAX", default_value_t = berth::api::observe::METRICS_TENANTS_DEFAULT)]
    metrics_tenants_max: usize,
    /// File holding the admin token (first line). Alternatively set BERTH_ADMIN_TOKEN.
    #[arg(long, env = "BERTH_ADMIN_TOKEN_FILE")]
    admin_token_file: Option<PathBuf>,
    /// The address this replica's connections to its peers come from (default: the
    /// system's choice). `berth up` gives each replica its own loopback address, so a
    /// firewall rule can cut one replica off from the others (`berth stress chaos` does).
    #[arg(long, env = "BERTH_PEER_SOURCE")]
    peer_source: Option<std::net::IpAddr>,
    /// Directory for this replica's Raft log and snapshots (created if missing).
    #[arg(long, env = "BERTH_DATA_DIR")]
    data_dir: PathBuf,
    #[command(flatten)]
    tls: ServerTls,
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
    /// Threads running the replica's tasks (Raft, peers, the API). With 1 (the default) they
    /// share one thread and hand work to each other without waking another thread, which on
    /// a small machine costs less CPU per write than spreading them (the log writer always has
    /// a thread of its own). More threads let one replica use more cores.
    #[arg(long, env = "BERTH_WORKER_THREADS", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub worker_threads: u16,
    /// Exit cleanly when standard input closes (used by `berth up` for its replicas).
    #[arg(long, hide = true)]
    exit_with_parent: bool,
    /// Testing only: a file holding milliseconds to add to the wall clock (models clock skew),
    /// read at start and every 100 ms, so a test can move a running replica's clock.
    #[arg(long, hide = true)]
    test_clock_offset_file: Option<PathBuf>,
}

/// How a replica secures its ports: its certificate from the cluster's CA (as `berth certs`
/// writes them), or `--insecure`.
#[derive(Args, Debug)]
struct ServerTls {
    /// The cluster's CA certificate (PEM): peers must present a certificate from it.
    #[arg(long, env = "BERTH_CA_FILE")]
    ca_file: Option<PathBuf>,
    /// This replica's certificate (PEM, from the cluster's CA, naming its id); used on both
    /// ports.
    #[arg(long, env = "BERTH_CERT_FILE")]
    cert_file: Option<PathBuf>,
    /// This replica's private key (PEM).
    #[arg(long, env = "BERTH_KEY_FILE")]
    key_file: Option<PathBuf>,
    /// Require API clients to present a certificate from this CA (PEM), besides their token.
    #[arg(long, env = "BERTH_API_CLIENT_CA_FILE")]
    api_client_ca_file: Option<PathBuf>,
    /// Plaintext on both ports: anyone who reaches the peer port can act as a replica, and
    /// tokens cross the network in the clear. For a trusted test network only.
    #[arg(long, env = "BERTH_INSECURE", conflicts_with_all = ["ca_file", "cert_file", "key_file", "api_client_ca_file"])]
    insecure: bool,
}

impl ServerTls {
    fn security(&self) -> anyhow::Result<berth::server::Security> {
        use berth::tls::{load_roots, Identity};
        if self.insecure {
            return Ok(berth::server::Security::Insecure);
        }
        let (Some(ca), Some(cert), Some(key)) = (&self.ca_file, &self.cert_file, &self.key_file)
        else {
            bail!(
                "a replica needs --ca-file, --cert-file and --key-file (see `berth certs`), \
                 or --insecure to speak plaintext"
            );
        };
        Ok(berth::server::Security::Tls {
            ca: load_roots(ca)?,
            identity: Identity::load(cert, key)?,
            api_client_ca: self.api_client_ca_file.as_deref().map(load_roots).transpose()?,
        })
    }
}

/// The clock offset in `path`: none if the file is missing or unreadable.
fn clock_offset_ms(path: &std::path::Path) -> i64 {
    std::fs::read_to_string(path).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0)
}

/// Follows the offset in `path` while the process runs.
async fn follow_clock_offset(clock: SystemClock, path: PathBuf) {
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        clock.set_offset_ms(clock_offset_ms(&path));
    }
}

pub(crate) fn parse_members(specs: &[String]) -> anyhow::Result<BTreeMap<u64, String>> {
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

pub async fn run(args: ServerArgs) -> anyhow::Result<()> {
    if args.id == 0 {
        bail!("--id must be a positive integer");
    }
    let security = args.tls.security()?;
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
            Some((incoming(listener), berth::api::hash_token(&admin)))
        }
    };
    let storage = Storage::open_dir(&args.data_dir)
        .with_context(|| format!("opening data dir {}", args.data_dir.display()))?;
    let listener = tokio::net::TcpListener::bind(args.peer_listen)
        .await
        .with_context(|| format!("binding peer address {}", args.peer_listen))?;
    let peer_incoming = incoming(listener);
    let clock = SystemClock::default();
    if let Some(path) = args.test_clock_offset_file.clone() {
        clock.set_offset_ms(clock_offset_ms(&path));
        tokio::spawn(follow_clock_offset(clock.clone(), path));
    }
    let clock = Arc::new(clock);
    let connect =
        tcp_connect(Duration::from_millis(args.heartbeat_ms.max(100) * 5), args.peer_source);
    let metrics = match args.metrics_listen {
        None => None,
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding metrics address {addr}"))?;
            tracing::info!(metrics = %addr, "serving metrics at /metrics");
            Some(incoming(listener))
        }
    };
    let console = match args.console_listen {
        None => None,
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding console address {addr}"))?;
            tracing::info!(console = %addr, "serving the web console");
            Some(incoming(listener))
        }
    };
    let listeners = Listeners {
        peer: peer_incoming,
        api,
        metrics,
        console,
        metrics_tenants_max: args.metrics_tenants_max,
    };
    let server =
        Server::start(options, storage, clock, connect, security, listeners, bootstrap).await?;
    tracing::info!(id = args.id, peer = %advertise, data_dir = %args.data_dir.display(), "replica started");

    if args.exit_with_parent {
        tokio::select! {
            _ = shutdown_signal() => {}
            _ = stdin_closed() => {}
        }
    } else {
        shutdown_signal().await;
    }
    tracing::info!("shutting down");
    server.stop().await;
    Ok(())
}

/// Accepted connections with Nagle's algorithm off: small RPCs must not wait for delayed ACKs
/// (that costs ~40 ms a round trip).
fn incoming(listener: tokio::net::TcpListener) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true))
}

/// Resolves when standard input reaches end of file (the parent went away).
async fn stdin_closed() {
    use tokio::io::AsyncReadExt;
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 64];
    while matches!(stdin.read(&mut buf).await, Ok(n) if n > 0) {}
}
/// The admin token from a file (first line) or `BERTH_ADMIN_TOKEN`. A file that anyone but
/// its owner may read or write is refused: it holds the key to every tenant.
pub fn admin_token(file: Option<&std::path::Path>) -> anyhow::Result<String> {
    if let Some(path) = file {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)
            .with_context(|| format!("reading admin token file {}", path.display()))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            bail!(
                "admin token file {} has mode {:o}: others may read or change it; \
                 run `chmod 600 {}` (the owner alone may have it)",
                path.display(),
                mode & 0o777,
                path.display()
            );
        }
    }
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

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
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
