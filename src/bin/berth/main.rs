//! The `berth` binary: `berth server` runs one replica.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};

/// `println!` for command output, except that output into a closed pipe
/// (`berth tenant list | head -1`) ends the process quietly with the usual status 141, as Unix
/// tools do, where `println!` would panic. (Rust ignores SIGPIPE, and so must Berth: a write to
/// a peer's closed socket must be an error, not a kill.)
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout(), $($arg)*) {
            crate::stdout_failed(e)
        }
    }};
}

fn stdout_failed(e: std::io::Error) -> ! {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(141);
    }
    eprintln!("error: cannot write the output: {e}");
    std::process::exit(1)
}

mod bench;
mod certs;
mod cli;

use berth::clock::SystemClock;
use berth::network::tcp_connect;
use berth::raft::replica::ReplicaOptions;
use berth::server::{Listeners, Server, Storage};
use clap::{Args, Parser, Subcommand};

/// Berth: a Raft-replicated, multi-tenant resource scheduler.
#[derive(Parser)]
#[command(name = "berth", version, about, long_about = None)]
struct Cli {
    #[command(flatten)]
    connection: cli::Connection,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run one replica of a Berth cluster.
    Server(ServerArgs),
    /// Start a local cluster of 3 or 5 replicas on 127.0.0.1 and keep it running until Ctrl-C.
    Up(UpArgs),
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
    #[command(flatten)]
    Client(cli::ClientCmd),
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
    worker_threads: u16,
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
    let connect = tcp_connect(Duration::from_millis(args.heartbeat_ms.max(100) * 5));
    let listeners = Listeners { peer: peer_incoming, api };
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

#[derive(Args, Debug)]
struct UpArgs {
    /// Replicas to run: 3 or 5.
    #[arg(long, default_value_t = 3)]
    replicas: u64,
    /// Where replicas keep their data, logs and the admin token (reused on the next run).
    #[arg(long, default_value = "./berth-data")]
    data_dir: PathBuf,
    /// Peer port of replica 1 (replica N uses this + N - 1).
    #[arg(long, default_value_t = 7401)]
    peer_base_port: u16,
    /// API port of replica 1 (replica N uses this + N - 1).
    #[arg(long, default_value_t = 7501)]
    api_base_port: u16,
    /// Plaintext on every port instead of TLS (the CLI then needs --insecure too).
    #[arg(long)]
    insecure: bool,
    /// Start a replica that exits again, after a backoff (1 s, doubling to 30 s); give up after
    /// 5 exits in a row each within 10 s of its start. Without it, `up` prints the command that
    /// starts the replica again, and the others keep serving either way.
    #[arg(long)]
    restart_on_exit: bool,
}

/// The admin token of a local cluster: reused from `<data-dir>/admin.token`, or created.
fn local_admin_token(data_dir: &std::path::Path) -> anyhow::Result<PathBuf> {
    let path = data_dir.join("admin.token");
    if !path.exists() {
        let mut bytes = [0u8; 24];
        getrandom::fill(&mut bytes)
            .map_err(|e| anyhow::anyhow!("no randomness for the admin token: {e}"))?;
        let token = format!("berth_admin_{}", berth::raft::replica::hex(&bytes));
        certs::write_private(&path, &format!("{token}\n"))?;
    }
    Ok(path)
}

/// Shortest wait before `up --restart-on-exit` starts an exited replica again; it doubles
/// with each quick exit in a row, up to `RESTART_BACKOFF_MAX`.
const RESTART_BACKOFF_MIN: Duration = Duration::from_secs(1);
const RESTART_BACKOFF_MAX: Duration = Duration::from_secs(30);
/// An exit this soon after a start counts as a quick failure.
const QUICK_EXIT: Duration = Duration::from_secs(10);
/// Quick failures in a row after which `up` stops restarting a replica.
const QUICK_EXITS_MAX: u32 = 5;
/// Lines of a stopped replica's log that `up` shows.
const LOG_TAIL_LINES: usize = 10;

/// One replica of `berth up`: how to start it, and its process while it runs.
struct Supervised {
    id: u64,
    /// The `berth server` arguments that start it again (never `--bootstrap`).
    args: Vec<std::ffi::OsString>,
    log: PathBuf,
    child: Option<std::process::Child>,
    started: std::time::Instant,
    /// Exits within `QUICK_EXIT` of a start, in a row.
    quick_exits: u32,
    /// When `--restart-on-exit` starts it again.
    restart_at: Option<std::time::Instant>,
}

impl Supervised {
    /// Starts the replica with `extra` arguments; its stdin stays open while `up` runs (the
    /// replica stops when it closes) and its stderr goes to its log file.
    fn spawn(&mut self, exe: &std::path::Path, extra: &[String]) -> anyhow::Result<()> {
        use std::process::Stdio;
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log)?;
        let child = std::process::Command::new(exe)
            .args(&self.args)
            .arg("--exit-with-parent")
            .args(extra)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info,openraft=warn".into()),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting replica {}", self.id))?;
        self.child = Some(child);
        self.started = std::time::Instant::now();
        Ok(())
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, std::process::Child::id)
    }

    /// The exit status, once the process has exited (and is no longer held).
    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        let status = self.child.as_mut()?.try_wait().ok()??;
        self.child = None;
        Some(status)
    }

    /// The command that starts this replica by hand, as a shell line.
    fn command_line(&self, exe: &std::path::Path) -> String {
        let words = std::iter::once(exe.as_os_str()).chain(self.args.iter().map(|a| a.as_os_str()));
        let mut line: Vec<String> = words.map(|w| shell_quote(&w.to_string_lossy())).collect();
        line.push(format!("2>>{}", shell_quote(&self.log.to_string_lossy())));
        line.join(" ")
    }
}

/// `word` quoted for a POSIX shell when it needs it.
fn shell_quote(word: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "-_./:=,@".contains(c);
    if !word.is_empty() && word.chars().all(plain) {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// The last `n` lines of a file (or why it could not be read).
fn log_tail(path: &std::path::Path, n: usize) -> Vec<String> {
    use std::io::{Read, Seek, SeekFrom};
    let read = || -> std::io::Result<String> {
        let mut file = std::fs::File::open(path)?;
        let len = file.metadata()?.len();
        file.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    };
    match read() {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(n)..].iter().map(|l| (*l).to_owned()).collect()
        }
        Err(e) => vec![format!("(cannot read {}: {e})", path.display())],
    }
}

/// Says which replica stopped, how, and the end of its log.
fn report_exit(replica: &Supervised, status: std::process::ExitStatus) {
    eprintln!(
        "replica {} exited ({status}); the last lines of {}:",
        replica.id,
        replica.log.display()
    );
    for line in log_tail(&replica.log, LOG_TAIL_LINES) {
        eprintln!("  | {line}");
    }
}

/// After `replica` exited: plan its restart (with `--restart-on-exit`), or say how to start it.
/// `running` of `total` replicas are still up.
fn after_exit(
    replica: &mut Supervised,
    exe: &std::path::Path,
    restart: bool,
    (running, total): (usize, usize),
) {
    if running > total / 2 {
        eprintln!("the other {running} replicas keep serving");
    } else {
        eprintln!("only {running} of {total} replicas run: no writes until a majority is back");
    }
    if !restart {
        eprintln!("start replica {} again with:\n  {}", replica.id, replica.command_line(exe));
        return;
    }
    replica.quick_exits =
        if replica.started.elapsed() < QUICK_EXIT { replica.quick_exits + 1 } else { 1 };
    if replica.quick_exits >= QUICK_EXITS_MAX {
        eprintln!(
            "replica {} exited {} times in a row within {QUICK_EXIT:?} of starting; not restarting \
             it again. Fix the cause (see its log), then start it with:\n  {}",
            replica.id,
            replica.quick_exits,
            replica.command_line(exe)
        );
        return;
    }
    let backoff = RESTART_BACKOFF_MIN
        .saturating_mul(1 << (replica.quick_exits - 1).min(5))
        .min(RESTART_BACKOFF_MAX);
    eprintln!("restarting replica {} in {backoff:?}", replica.id);
    replica.restart_at = Some(std::time::Instant::now() + backoff);
}

async fn up(args: UpArgs) -> anyhow::Result<()> {
    if args.replicas != 3 && args.replicas != 5 {
        bail!("--replicas must be 3 or 5");
    }
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating {}", args.data_dir.display()))?;
    let data_dir = std::fs::canonicalize(&args.data_dir)?;
    let token_file = local_admin_token(&data_dir)?;
    let token = admin_token(Some(&token_file))?;
    let tls = if args.insecure { None } else { Some(certs::local_tls(&data_dir, args.replicas)?) };
    let exe = std::env::current_exe().context("finding the berth binary")?;
    let port = |base: u16, i: u64| -> anyhow::Result<u16> {
        u16::try_from(u64::from(base) + i - 1).context("port out of range")
    };
    let mut members = Vec::new();
    for i in 1..=args.replicas {
        members.push(format!("{i}=127.0.0.1:{}", port(args.peer_base_port, i)?));
    }
    let mut replicas = Vec::new();
    let mut endpoints = Vec::new();
    for i in 1..=args.replicas {
        let api = format!("127.0.0.1:{}", port(args.api_base_port, i)?);
        let mut replica = Supervised {
            id: i,
            args: vec![
                "server".into(),
                "--id".into(),
                i.to_string().into(),
                "--peer-listen".into(),
                format!("127.0.0.1:{}", port(args.peer_base_port, i)?).into(),
                "--api-listen".into(),
                api.clone().into(),
                "--admin-token-file".into(),
                token_file.clone().into(),
                "--data-dir".into(),
                data_dir.join(format!("replica-{i}")).into(),
            ],
            log: data_dir.join(format!("replica-{i}.log")),
            child: None,
            started: std::time::Instant::now(),
            quick_exits: 0,
            restart_at: None,
        };
        match &tls {
            Some(dir) => {
                let (cert, key) = certs::local_replica_tls(dir, i);
                let files =
                    [("--ca-file", dir.join("ca.pem")), ("--cert-file", cert), ("--key-file", key)];
                for (flag, path) in files {
                    replica.args.extend([flag.into(), path.into()]);
                }
            }
            None => replica.args.push("--insecure".into()),
        }
        let bootstrap = if i == 1 {
            vec!["--bootstrap".to_owned(), "--initial-members".to_owned(), members.join(",")]
        } else {
            Vec::new()
        };
        if let Err(e) = replica.spawn(&exe, &bootstrap) {
            stop_replicas(&mut replicas).await;
            return Err(e);
        }
        eprintln!("replica {i}: pid {}, api {api}, log {}", replica.pid(), replica.log.display());
        replicas.push(replica);
        endpoints.push(api);
    }

    let security = match &tls {
        Some(dir) => berth::client::ClientSecurity::Tls(berth::client::ClientTls::load(
            &dir.join("ca.pem"),
            None,
        )?),
        None => berth::client::ClientSecurity::Insecure,
    };
    let client = berth::client::Client::new(
        &endpoints,
        Some(&token),
        &security,
        berth::client::ClientOptions::default(),
    )?;
    eprint!("waiting for a leader");
    let until = std::time::Instant::now() + Duration::from_secs(60);
    let leader = loop {
        let status = client
            .call(berth::client::pb::StatusRequest {}, |ch, req| async move {
                berth::client::cluster(ch).status(req).await
            })
            .await;
        if let Ok(status) = status {
            let all_up = status.replicas.len() as u64 == args.replicas
                && status.replicas.iter().all(|r| r.role != "Unreachable");
            if let (Some(leader), true) = (status.leader_id, all_up) {
                break leader;
            }
        }
        if let Some((i, status)) = replicas.iter_mut().find_map(|r| Some((r.id, r.exited()?))) {
            eprintln!();
            if let Some(replica) = replicas.iter().find(|r| r.id == i) {
                report_exit(replica, status);
            }
            stop_replicas(&mut replicas).await;
            bail!("replica {i} exited during start-up");
        }
        if std::time::Instant::now() > until {
            stop_replicas(&mut replicas).await;
            bail!("no leader after 60 s; see the logs in {}", data_dir.display());
        }
        eprint!(".");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    eprintln!();
    out!("Berth is up: {} replicas, leader replica {leader}", args.replicas);
    out!("  endpoints:   {}", endpoints.join(","));
    out!("  admin token: {token}  (also in {})", token_file.display());
    let security = match &tls {
        Some(dir) => {
            let ca = dir.join("ca.pem");
            out!("  CA:          {}  (the API and peers speak TLS)", ca.display());
            format!("BERTH_CA={}", ca.display())
        }
        None => {
            out!("  insecure:    plaintext on every port (--insecure)");
            "BERTH_INSECURE=true".to_owned()
        }
    };
    out!(
        "  try:         export BERTH_ENDPOINTS={} {security} BERTH_TOKEN=$(cat {})",
        endpoints.join(","),
        token_file.display()
    );
    out!("               berth cluster status");
    if args.restart_on_exit {
        out!("A replica that exits is started again (--restart-on-exit).");
    } else {
        out!("A replica that exits stays down; the others keep serving.");
    }
    out!("Press Ctrl-C to stop every replica.");

    loop {
        tokio::select! {
            _ = shutdown_signal() => break,
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
        }
        for k in 0..replicas.len() {
            if let Some(status) = replicas[k].exited() {
                report_exit(&replicas[k], status);
                let running = replicas.iter().filter(|r| r.child.is_some()).count();
                let total = replicas.len();
                after_exit(&mut replicas[k], &exe, args.restart_on_exit, (running, total));
            }
            let replica = &mut replicas[k];
            if replica.restart_at.is_some_and(|at| std::time::Instant::now() >= at) {
                replica.restart_at = None;
                match replica.spawn(&exe, &[]) {
                    Ok(()) => eprintln!(
                        "replica {}: pid {}, restarted, log {}",
                        replica.id,
                        replica.pid(),
                        replica.log.display()
                    ),
                    Err(e) => eprintln!("replica {} could not be restarted: {e:#}", replica.id),
                }
            }
        }
        if replicas.iter().all(|r| r.child.is_none() && r.restart_at.is_none()) {
            bail!("every replica has stopped; the data stays in {}", data_dir.display());
        }
    }
    // The replicas wait for open connections to close before they stop: close ours first.
    drop(client);
    let running = replicas.iter().filter(|r| r.child.is_some()).count();
    eprintln!("stopping {running} replicas...");
    stop_replicas(&mut replicas).await;
    eprintln!("stopped; the data stays in {}", data_dir.display());
    Ok(())
}

/// Closes each running replica's stdin (a clean shutdown), waits up to 15 s, then kills
/// stragglers.
async fn stop_replicas(replicas: &mut [Supervised]) {
    let mut children: Vec<(u64, std::process::Child)> =
        replicas.iter_mut().filter_map(|r| Some((r.id, r.child.take()?))).collect();
    for (_, child) in children.iter_mut() {
        drop(child.stdin.take());
    }
    let until = std::time::Instant::now() + Duration::from_secs(15);
    for (i, child) in children.iter_mut() {
        loop {
            match child.try_wait() {
                Ok(Some(_)) => break,
                Ok(None) if std::time::Instant::now() < until => {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                _ => {
                    eprintln!("replica {i} did not stop in time; killing it");
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
            }
        }
    }
}

/// The admin token from a file (first line) or `BERTH_ADMIN_TOKEN`. A file that anyone but
/// its owner may read or write is refused: it holds the key to every tenant.
fn admin_token(file: Option<&std::path::Path>) -> anyhow::Result<String> {
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

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
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
        Cmd::Server(args) => runtime.block_on(server(args)),
        Cmd::Up(args) => runtime.block_on(up(args)),
        Cmd::Certs(args) => certs::run(&args, cli.connection.json),
        Cmd::Bench(args) => runtime.block_on(bench::run(cli.connection, args)),
        Cmd::Client(command) => runtime.block_on(cli::run(cli.connection, command)),
    };
    match outcome {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One readable line (with causes), never a backtrace.
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
