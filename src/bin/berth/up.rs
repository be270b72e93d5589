//! `berth up`: a local cluster of 3 or 5 replicas on 127.0.0.1, each a `berth server` child
//! process, supervised until Ctrl-C. Replica N's connections to its peers come from
//! 127.0.1.N, so a firewall rule can cut one off (`berth stress chaos` partitions that way).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;

use crate::certs;
use crate::server::{admin_token, shutdown_signal};

#[derive(Args, Debug)]
pub struct UpArgs {
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
    /// Metrics port of replica 1 (replica N uses this + N - 1; plaintext HTTP, `GET /metrics`).
    #[arg(long, default_value_t = 7601)]
    metrics_base_port: u16,
    /// Serve no metrics.
    #[arg(long)]
    no_metrics: bool,
    /// Web console port of replica 1 (replica N uses this + N - 1; over the API's TLS).
    #[arg(long, default_value_t = 7701)]
    console_base_port: u16,
    /// Serve no web console.
    #[arg(long)]
    no_console: bool,
    /// Plaintext on every port instead of TLS (the CLI then needs --insecure too).
    #[arg(long)]
    insecure: bool,
    /// Start a replica that exits again, after a backoff (1 s, doubling to 30 s); give up after
    /// 5 exits in a row each within 10 s of its start. Without it, `up` prints the command that
    /// starts the replica again, and the others keep serving either way.
    #[arg(long)]
    restart_on_exit: bool,
    /// Start the cluster from a backup file (`berth backup`) instead of empty: each replica's
    /// storage is restored from it (`berth restore`). Needs a --data-dir holding no replicas.
    #[arg(long)]
    restore: Option<PathBuf>,
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
        // Its pid, for tools on this host (`berth stress chaos` signals replicas by it),
        // written whole or not at all.
        let (file, tmp) = (self.pid_file(), self.log.with_extension("pid.tmp"));
        std::fs::write(&tmp, format!("{}\n", child.id()))
            .and_then(|()| std::fs::rename(&tmp, &file))
            .with_context(|| format!("writing {}", file.display()))?;
        self.child = Some(child);
        self.started = std::time::Instant::now();
        Ok(())
    }

    /// `replica-N.pid` beside its log while it runs.
    fn pid_file(&self) -> PathBuf {
        self.log.with_extension("pid")
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, std::process::Child::id)
    }

    /// The exit status, once the process has exited (and is no longer held).
    fn exited(&mut self) -> Option<std::process::ExitStatus> {
        let status = self.child.as_mut()?.try_wait().ok()??;
        self.child = None;
        let _ = std::fs::remove_file(self.pid_file());
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

pub async fn run(args: UpArgs, log_format: crate::LogFormat) -> anyhow::Result<()> {
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
    if let Some(from) = &args.restore {
        let file = std::fs::read(from).with_context(|| format!("reading {}", from.display()))?;
        let founders = crate::server::parse_members(&members)?;
        for i in 1..=args.replicas {
            let dir = data_dir.join(format!("replica-{i}"));
            let restored = berth::server::restore(&dir, i, &file, &founders)
                .await
                .with_context(|| format!("restoring replica {i} from {}", from.display()))?;
            eprintln!(
                "replica {i}: restored from {}, every write up to log index {}",
                from.display(),
                restored.command_index
            );
        }
    }
    let mut replicas = Vec::new();
    let mut endpoints = Vec::new();
    let mut scrapes = Vec::new();
    let mut consoles = Vec::new();
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
                // Its own source address, so a firewall rule can cut it off from the others.
                "--peer-source".into(),
                format!("127.0.1.{i}").into(),
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
        if !args.no_metrics {
            let metrics = format!("127.0.0.1:{}", port(args.metrics_base_port, i)?);
            replica.args.extend(["--metrics-listen".into(), metrics.clone().into()]);
            scrapes.push(format!("http://{metrics}/metrics"));
        }
        if !args.no_console {
            let console = format!("127.0.0.1:{}", port(args.console_base_port, i)?);
            replica.args.extend(["--console-listen".into(), console.clone().into()]);
            let scheme = if tls.is_some() { "https" } else { "http" };
            consoles.push(format!("{scheme}://{console}/"));
        }
        replica.args.extend(["--log-format".into(), log_format.name().into()]);
        let bootstrap = if i == 1 && args.restore.is_none() {
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
    if !scrapes.is_empty() {
        out!("  metrics:     {}", scrapes.join(" "));
    }
    if !consoles.is_empty() {
        out!("  console:     {}  (sign in with a token)", consoles.join(" "));
    }
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
    for replica in replicas.iter() {
        let _ = std::fs::remove_file(replica.pid_file());
    }
}
