//! The `berth` binary as a person uses it: `berth up` starts a local cluster, client
//! subcommands work against it (readable and --json), errors are one line with their reason
//! and a non-zero exit, and a second `berth up` on the same data directory keeps the state.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BERTH: &str = env!("CARGO_BIN_EXE_berth");

/// `berth up` with its printed lines; killed (and so its replicas stopped) on drop.
struct Up {
    child: Child,
    /// Every replica pid `up` printed, restarts included.
    pids: Vec<u32>,
    /// The latest pid of each replica.
    replica_pids: BTreeMap<u64, u32>,
    lines: mpsc::Receiver<String>,
}

impl Up {
    /// Reads `up`'s output until a line satisfies `wanted`, noting pids on the way; fails
    /// after `within`.
    fn wait_for(&mut self, within: Duration, wanted: impl Fn(&str) -> bool) -> String {
        let until = Instant::now() + within;
        let mut seen = Vec::new();
        loop {
            let Ok(line) = self.lines.recv_timeout(until.saturating_duration_since(Instant::now()))
            else {
                panic!("berth up did not print the expected line in time; it printed {seen:#?}");
            };
            seen.push(line.clone());
            // "replica N: pid P, ..."
            let replica = line.strip_prefix("replica ").and_then(|r| r.split(':').next());
            let pid = line.split("pid ").nth(1).and_then(|r| r.split(',').next());
            if let (Some(Ok(id)), Some(Ok(pid))) =
                (replica.map(str::parse), pid.map(str::parse::<u32>))
            {
                self.pids.push(pid);
                self.replica_pids.insert(id, pid);
            }
            if wanted(&line) {
                return line;
            }
        }
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // The replicas exit when their stdin (held by `berth up`) closes.
        let until = Instant::now() + Duration::from_secs(20);
        while self.pids.iter().any(|p| Path::new(&format!("/proc/{p}")).exists())
            && Instant::now() < until
        {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn free_base(count: u16) -> u16 {
    // A base with `count` free consecutive ports in a range unlikely to be in use.
    // Tests run in parallel: each call starts its search elsewhere.
    static CALLS: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let seed = std::process::id() % 2_000 + u32::from(call) * 1_013;
    (0..200u32)
        .filter_map(|k| u16::try_from(30_000 + (seed * 7 + k * 13) % 20_000).ok())
        .find(|base| {
            (0..count).all(|i| std::net::TcpListener::bind(("127.0.0.1", base + i)).is_ok())
        })
        .expect("free ports")
}

fn up(data: &Path, peer: u16, api: u16) -> Up {
    up_with(data, peer, api, &[])
}

fn up_with(data: &Path, peer: u16, api: u16, flags: &[&str]) -> Up {
    let mut child = Command::new(BERTH)
        .args(["up", "--peer-base-port", &peer.to_string(), "--api-base-port", &api.to_string()])
        .args(flags)
        .arg("--data-dir")
        .arg(data)
        .env_remove("RUST_BACKTRACE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("berth up starts");
    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().expect("stdout");
    let stderr = child.stderr.take().expect("stderr");
    for stream in [Box::new(stdout) as Box<dyn std::io::Read + Send>, Box::new(stderr)] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
    }
    let mut up = Up { child, pids: Vec::new(), replica_pids: BTreeMap::new(), lines: rx };
    up.wait_for(Duration::from_secs(90), |line| line.contains("Press Ctrl-C"));
    up
}

struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

fn berth(api: u16, token: &str, args: &[&str]) -> Run {
    let endpoints = (0..3).map(|i| format!("127.0.0.1:{}", api + i)).collect::<Vec<_>>().join(",");
    let out = Command::new(BERTH)
        .args(args)
        .env("BERTH_ENDPOINTS", endpoints)
        .env("BERTH_TOKEN", token)
        .env_remove("RUST_BACKTRACE")
        .output()
        .expect("berth runs");
    Run {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn ok(api: u16, token: &str, args: &[&str]) -> String {
    let run = berth(api, token, args);
    assert!(run.ok, "berth {args:?} failed: {}", run.stderr);
    run.stdout
}

/// `berth up`, a few subcommands, a refusal, and a restart that keeps the state.
#[test]
fn up_and_client_subcommands() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let data = tmp.path().join("berth-data");
    let peer = free_base(6);
    let api = peer + 3;
    let cluster = up(&data, peer, api);
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(data.join("admin.token")).expect("admin token written");
        assert_eq!(meta.permissions().mode() & 0o777, 0o600, "only its owner may read it");
    }
    let token = std::fs::read_to_string(data.join("admin.token")).expect("admin token written");
    let token = token.trim();

    ok(api, token, &["tenant", "create", "acme"]);
    ok(api, token, &["quota", "set", "acme", "--cpu", "1.5", "--instances", "10"]);
    ok(api, token, &["worker", "register", "w1", "--cpu", "8", "--memory-mib", "16384"]);
    let placed =
        ok(api, token, &["place", "acme", "web", "--cpu", "0.75", "--memory-mib", "512", "--json"]);
    let placed: serde_json::Value = serde_json::from_str(&placed).expect("json");
    assert_eq!(placed["placement"]["workers"][0], "w1");
    assert_eq!(placed["placement"]["spec"]["resources"]["cpu_millis"], 750);

    let over = berth(api, token, &["place", "acme", "big", "--cpu", "0.751", "--memory-mib", "1"]);
    assert!(!over.ok);
    assert!(
        over.stderr.contains("QUOTA_EXCEEDED") && over.stderr.contains("limit=1500"),
        "{}",
        over.stderr
    );
    assert_eq!(over.stderr.trim().lines().count(), 1, "one line, no backtrace: {}", over.stderr);
    let rounded =
        berth(api, token, &["place", "acme", "x", "--cpu", "0.1234", "--memory-mib", "1"]);
    assert!(!rounded.ok && rounded.stderr.contains("more than three decimals"));

    let quota = ok(api, token, &["quota", "get", "acme"]);
    assert!(quota.contains("usage: cpu_millis=750"), "{quota}");

    // Soft limits, pool denial and dry runs.
    ok(api, token, &["quota", "soft", "acme", "--cpu", "0.5:1.2", "--grace-ms", "600000"]);
    let quota = ok(api, token, &["quota", "get", "acme", "--json"]);
    let quota: serde_json::Value = serde_json::from_str(&quota).expect("json");
    assert_eq!(quota["quota"]["soft"]["cpu_millis"]["burst"], 1200, "{quota}");
    assert!(quota["burst"]["grace_ends_at_ms"].as_u64().is_some(), "750 > soft 500: {quota}");
    let dry =
        ok(api, token, &["place", "acme", "d", "--cpu", "0.25", "--memory-mib", "1", "--dry-run"]);
    assert!(dry.contains("would place on: w1"), "{dry}");
    let dry =
        ok(api, token, &["place", "acme", "d", "--cpu", "0.5", "--memory-mib", "1", "--dry-run"]);
    assert!(
        dry.contains("would refuse: QUOTA_EXCEEDED") && dry.contains("limit_kind: burst"),
        "{dry}"
    );
    ok(api, token, &["quota", "deny", "acme", "gpu"]);
    let denied = berth(
        api,
        token,
        &["place", "acme", "g", "--cpu", "1", "--memory-mib", "1", "--pool", "gpu"],
    );
    assert!(!denied.ok && denied.stderr.contains("POOL_DENIED"), "{}", denied.stderr);
    ok(api, token, &["quota", "allow", "acme", "gpu"]);

    // Queueing: a request over quota waits, is listed with its reason, and can be cancelled.
    let queued =
        ok(api, token, &["place", "acme", "q1", "--cpu", "1", "--memory-mib", "1", "--queue"]);
    assert!(queued.contains("wait_reason: QUOTA_EXCEEDED"), "{queued}");
    let listed = ok(api, token, &["queue", "list", "acme"]);
    assert!(
        listed.contains("q1") && listed.contains("1/1") && listed.contains("QUOTA_EXCEEDED"),
        "{listed}"
    );
    let got = ok(api, token, &["placement", "get", "acme", "q1", "--json"]);
    let got: serde_json::Value = serde_json::from_str(&got).expect("json");
    assert_eq!(got["queued"]["position"], 1, "{got}");
    ok(api, token, &["queue", "cancel", "acme", "q1"]);
    assert!(ok(api, token, &["queue", "list", "acme"]).contains("(none)"));

    // Time windows: a day's job budget, spent, refused with the reset time.
    // Preemption policy and a pool guarantee: set and shown; a borrowing limit below usage is
    // refused.
    ok(api, token, &["quota", "preemption", "acme", "same-tenant"]);
    let args = ["quota", "guarantee", "acme", "default", "--cpu", "0.5", "--memory-mib", "64"];
    ok(api, token, &[&args[..], &["--borrow-cpu", "1", "--lend-cpu", "0.25"]].concat());
    let quota = ok(api, token, &["quota", "get", "acme", "--json"]);
    let quota: serde_json::Value = serde_json::from_str(&quota).expect("json");
    let g = &quota["quota"]["guarantees"]["default"];
    assert_eq!(
        (
            g["nominal"]["cpu_millis"].as_u64(),
            g["borrowing_limit"]["cpu_millis"].as_u64(),
            g["lending_limit"]["cpu_millis"].as_u64()
        ),
        (Some(500), Some(1_000), Some(250)),
        "{quota}"
    );
    assert_eq!(quota["effective"]["preemption"], 1, "same_tenant: {quota}");
    let share = quota["shares"].as_array().and_then(|s| s.iter().find(|s| s["pool"] == "default"));
    assert_eq!(
        share.map(|s| s["borrowed"]["cpu_millis"].as_u64()),
        Some(Some(250)),
        "750 used of 500: {quota}"
    );
    let bad = berth(
        api,
        token,
        &["quota", "guarantee", "acme", "default", "--cpu", "0.5", "--borrow-cpu", "0.1"],
    );
    assert!(!bad.ok && bad.stderr.contains("INVALID_ARGUMENT"), "below usage: {}", bad.stderr);
    ok(api, token, &["quota", "guarantee", "acme", "default", "--remove"]);
    // A pool reserve (8 cores in the pool): shown, and a guarantee that would eat into it is
    // refused with the reason.
    ok(api, token, &["pool", "reserve", "default", "--cpu", "6", "--memory-mib", "0"]);
    let pool = ok(api, token, &["pool", "get", "default"]);
    assert!(pool.contains("reserve: cpu_millis=6000 memory_mib=0"), "{pool}");
    let args = ["quota", "guarantee", "acme", "default", "--cpu", "2.001", "--memory-mib", "64"];
    let bad = berth(api, token, &args);
    assert!(!bad.ok && bad.stderr.contains("POOL_OVERCOMMITTED"), "{}", bad.stderr);
    ok(api, token, &["pool", "reserve", "default", "--remove"]);
    let pool = ok(api, token, &["pool", "get", "default", "--json"]);
    let pool: serde_json::Value = serde_json::from_str(&pool).expect("json");
    assert!(pool["reserve"].is_null() && pool["capacity"]["cpu_millis"] == 8_000, "{pool}");
    // Soft limits as a share of the pool (8 cores): 250‰ soft, 400‰ burst, shown resolved.
    let args = ["quota", "soft", "acme", "--share-of-pool", "default", "--share", "250:400"];
    ok(api, token, &[&args[..], &["--grace-ms", "600000"]].concat());
    let quota = ok(api, token, &["quota", "get", "acme", "--json"]);
    let quota: serde_json::Value = serde_json::from_str(&quota).expect("json");
    assert_eq!(quota["quota"]["soft_share"]["burst_per_mille"], 400, "{quota}");
    assert_eq!(quota["effective"]["soft"]["cpu_millis"]["soft"], 2_000, "{quota}");
    assert_eq!(quota["effective"]["soft"]["cpu_millis"]["burst"], 3_200, "{quota}");
    let bad = berth(
        api,
        token,
        &["quota", "soft", "acme", "--share-of-pool", "default", "--share", "1:1001"],
    );
    assert!(!bad.ok && bad.stderr.contains("INVALID_ARGUMENT"), "{}", bad.stderr);
    ok(api, token, &["quota", "soft", "acme"]);
    ok(api, token, &["quota", "preemption", "acme", "inherit"]);
    let args = ["quota", "window", "acme", "--jobs-per-day", "3", "--cpu-hours-per-month", "1.5"];
    ok(api, token, &[&args[..], &["--when-exhausted", "refuse"]].concat());
    let quota = ok(api, token, &["quota", "get", "acme", "--json"]);
    let quota: serde_json::Value = serde_json::from_str(&quota).expect("json");
    assert_eq!(quota["quota"]["windows"]["cpu_milli_ms_per_month"], 5_400_000_000u64, "{quota}");
    let jobs = quota["windows"]["jobs_today"].as_u64().expect("jobs today");
    let resets = quota["windows"]["day_resets_at_ms"].as_u64().expect("reset time");
    assert_eq!(resets % 86_400_000, 0, "UTC midnight");
    for i in jobs..3 {
        ok(
            api,
            token,
            &["place", "acme", &format!("day-{i}"), "--cpu", "0.001", "--memory-mib", "1"],
        );
    }
    let spent = berth(
        api,
        token,
        &["place", "acme", "day-x", "--cpu", "0.001", "--memory-mib", "1", "--queue"],
    );
    assert!(!spent.ok && spent.stderr.contains("window=jobs_per_day"), "{}", spent.stderr);
    assert!(spent.stderr.contains(&format!("resets_at_ms={resets}")), "{}", spent.stderr);
    let denied = berth(api, "not-the-token", &["tenant", "get", "acme"]);
    assert!(!denied.ok && denied.stderr.contains("Unauthenticated"));
    let issued = ok(api, token, &["token", "issue", "acme", "ci", "--expires-in", "1h", "--json"]);
    let issued: serde_json::Value = serde_json::from_str(&issued).expect("json");
    let expires_at = issued["expires_at_ms"].as_u64().expect("expiry");
    assert_eq!(expires_at, issued["write"]["applied_at_ms"].as_u64().expect("time") + 3_600_000);
    let listed = ok(api, token, &["tenant", "get", "acme"]);
    assert!(listed.contains(&format!("{expires_at}  ci")), "{listed}");
    closed_stdout_ends_quietly(api, token);
    drop(cluster);

    // Same data directory: same token, same state.
    let cluster = up(&data, peer, api);
    let placements = ok(api, token, &["placement", "list", "acme"]);
    assert!(placements.contains("web"), "{placements}");
    // Right after a restart a replica may still be catching up or electing: wait for calm.
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let status = ok(api, token, &["cluster", "status"]);
        if status.contains("Leader") && status.matches("Follower").count() == 2 {
            break;
        }
        assert!(Instant::now() < until, "cluster never settled: {status}");
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(cluster);
}

/// Output into a pipe whose reader has gone (`berth cluster status | head -0`) ends the command
/// quietly, as Unix tools do (status 141, or 0 if the output fit before the reader left), never
/// with a panic.
fn closed_stdout_ends_quietly(api: u16, token: &str) {
    let endpoints = (0..3).map(|i| format!("127.0.0.1:{}", api + i)).collect::<Vec<_>>().join(",");
    let mut child = Command::new(BERTH)
        .args(["cluster", "status"])
        .env("BERTH_ENDPOINTS", endpoints)
        .env("BERTH_TOKEN", token)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("berth runs");
    // The reader goes before the command has its answer to print.
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("berth ends");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(matches!(out.status.code(), Some(0 | 141)), "{:?}: {stderr}", out.status);
    assert!(stderr.is_empty(), "{stderr}");
}

/// The leader's replica id, from `berth cluster status --json`.
fn leader(api: u16, token: &str) -> u64 {
    let status = ok(api, token, &["cluster", "status", "--json"]);
    let status: serde_json::Value = serde_json::from_str(&status).expect("json");
    status["leader_id"].as_u64().expect("a leader")
}

/// Kills replica `id` of `up` with SIGKILL.
fn kill_replica(up: &Up, id: u64) {
    let pid = up.replica_pids[&id].to_string();
    let killed = Command::new("kill").args(["-KILL", &pid]).status().expect("kill runs");
    assert!(killed.success(), "kill -KILL {pid}");
}

/// Retries a write through every endpoint until it succeeds; fails after `within`.
fn write_succeeds_within(api: u16, token: &str, within: Duration, tenant: &str) {
    let until = Instant::now() + within;
    loop {
        let run = berth(api, token, &["tenant", "create", tenant]);
        if run.ok || run.stderr.contains("TENANT_EXISTS") {
            return;
        }
        assert!(Instant::now() < until, "no write within {within:?}: {}", run.stderr);
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// SIGKILL of the leader replica: `berth up` says which replica stopped and how to start it,
/// keeps the other two serving (a write through the client succeeds within seconds), and is
/// still running.
#[test]
fn up_keeps_the_survivors() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let data = tmp.path().join("berth-data");
    let peer = free_base(6);
    let api = peer + 3;
    let mut cluster = up(&data, peer, api);
    let token = std::fs::read_to_string(data.join("admin.token")).expect("admin token written");
    let token = token.trim();
    ok(api, token, &["tenant", "create", "before"]);
    let leader = leader(api, token);
    kill_replica(&cluster, leader);
    let report = format!("replica {leader} exited");
    cluster.wait_for(Duration::from_secs(10), |line| line.contains(&report));
    let hint = cluster.wait_for(Duration::from_secs(10), |line| line.contains(" server --id "));
    assert!(hint.contains(&format!("--id {leader} ")), "{hint}");
    write_succeeds_within(api, token, Duration::from_secs(10), "after");
    assert!(cluster.child.try_wait().expect("up's status").is_none(), "berth up still runs");
}

/// With --restart-on-exit, a killed replica is started again and rejoins the cluster.
#[test]
fn up_restarts_an_exited_replica() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let data = tmp.path().join("berth-data");
    let peer = free_base(6);
    let api = peer + 3;
    let mut cluster = up_with(&data, peer, api, &["--restart-on-exit"]);
    let token = std::fs::read_to_string(data.join("admin.token")).expect("admin token written");
    let token = token.trim();
    let leader = leader(api, token);
    let killed = cluster.replica_pids[&leader];
    kill_replica(&cluster, leader);
    let restarted = format!("replica {leader}: pid ");
    cluster.wait_for(Duration::from_secs(20), |line| line.starts_with(&restarted));
    assert_ne!(cluster.replica_pids[&leader], killed, "a new process");
    write_succeeds_within(api, token, Duration::from_secs(10), "after");
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let status = ok(api, token, &["cluster", "status", "--json"]);
        let status: serde_json::Value = serde_json::from_str(&status).expect("json");
        let replicas = status["replicas"].as_array().cloned().unwrap_or_default();
        let back = replicas.iter().any(|r| {
            r["replica_id"].as_u64() == Some(leader)
                && matches!(r["role"].as_str(), Some("Follower" | "Leader"))
        });
        if back {
            break;
        }
        assert!(Instant::now() < until, "replica {leader} never rejoined: {status}");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(cluster.child.try_wait().expect("up's status").is_none(), "berth up still runs");
}

/// `berth server` refuses an admin token file that others may read, saying how to fix it, and
/// takes the same file once it is the owner's alone.
#[test]
fn a_world_readable_admin_token_file_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().expect("temp dir");
    let file = tmp.path().join("admin.token");
    std::fs::write(&file, "berth_admin_0123456789abcdef\n").expect("token written");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let base = free_base(2);
    let server = |data: &str| {
        Command::new(BERTH)
            .args(["server", "--id", "1", "--peer-listen", &format!("127.0.0.1:{base}")])
            .args(["--api-listen", &format!("127.0.0.1:{}", base + 1), "--admin-token-file"])
            .arg(&file)
            .arg("--data-dir")
            .arg(tmp.path().join(data))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("berth server starts")
    };
    let mut refused = server("refused");
    let until = Instant::now() + Duration::from_secs(10);
    while matches!(refused.try_wait(), Ok(None)) {
        if Instant::now() > until {
            let _ = refused.kill();
            panic!("berth server kept running with a world-readable admin token file");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let refused = refused.wait_with_output().expect("berth server exited");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{stderr}");
    assert!(stderr.contains("has mode 644") && stderr.contains("chmod 600"), "{stderr}");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let mut accepted = server("accepted");
    // It serves until killed: still running once its API port answers.
    let until = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", base + 1)).is_err() {
        assert!(matches!(accepted.try_wait(), Ok(None)), "the 0600 file was refused too");
        assert!(Instant::now() < until, "the API never listened");
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = accepted.kill();
    let _ = accepted.wait();
}
