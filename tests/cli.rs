//! The `berth` binary as a person uses it: `berth up` starts a local cluster, client
//! subcommands work against it (readable and --json), errors are one line with their reason
//! and a non-zero exit, and a second `berth up` on the same data directory keeps the state.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

mod webdriver;

const BERTH: &str = env!("CARGO_BIN_EXE_berth");

/// `berth up` with its printed lines; killed (and so its replicas stopped) on drop.
struct Up {
    child: Child,
    /// Every replica pid `up` printed, restarts included.
    pids: Vec<u32>,
    /// The latest pid of each replica.
    replica_pids: BTreeMap<u64, u32>,
    /// The replicas' metrics addresses (`host:port`), as `up` printed them.
    metrics: Vec<String>,
    /// The replicas' web console addresses (`https://host:port`), as `up` printed them.
    consoles: Vec<String>,
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
            if let Some(urls) = line.trim_start().strip_prefix("metrics:") {
                self.metrics = urls
                    .split_whitespace()
                    .filter_map(|u| u.strip_prefix("http://")?.strip_suffix("/metrics"))
                    .map(str::to_owned)
                    .collect();
            }
            if let Some(urls) = line.trim_start().strip_prefix("console:") {
                self.consoles = urls
                    .split_whitespace()
                    .filter_map(|u| u.strip_suffix('/').filter(|u| u.starts_with("http")))
                    .map(str::to_owned)
                    .collect();
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
    // A base with `count` free consecutive ports below Linux's ephemeral range (32768 and
    // up): a port found free there could be taken by another test's outgoing connection
    // before `berth up` binds it (it happened in CI). Tests run in parallel: each call starts
    // its search elsewhere.
    static CALLS: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let seed = std::process::id() % 2_000 + u32::from(call) * 1_013;
    (0..200u32)
        .filter_map(|k| u16::try_from(20_000 + (seed * 7 + k * 13) % 12_000).ok())
        .find(|base| {
            (0..count).all(|i| std::net::TcpListener::bind(("127.0.0.1", base + i)).is_ok())
        })
        .expect("free ports")
}

fn up(data: &Path, peer: u16, api: u16) -> Up {
    up_with(data, peer, api, &[])
}

fn up_with(data: &Path, peer: u16, api: u16, flags: &[&str]) -> Up {
    // One search for both, so the two ranges cannot overlap.
    let metrics = free_base(10);
    let console = metrics + 5;
    let mut child = Command::new(BERTH)
        .args(["up", "--peer-base-port", &peer.to_string(), "--api-base-port", &api.to_string()])
        .args(["--metrics-base-port", &metrics.to_string()])
        .args(["--console-base-port", &console.to_string()])
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
    let mut up = Up {
        child,
        pids: Vec::new(),
        replica_pids: BTreeMap::new(),
        metrics: Vec::new(),
        consoles: Vec::new(),
        lines: rx,
    };
    up.wait_for(Duration::from_secs(90), |line| line.contains("Press Ctrl-C"));
    up
}

/// How the CLI logs in to a cluster: a token, and the cluster's CA (`None`: plaintext, with
/// `--insecure`).
#[derive(Clone)]
struct Login {
    token: String,
    ca: Option<PathBuf>,
}

impl Login {
    /// The admin token and the CA that `berth up` keeps in its data directory.
    fn of_up(data: &Path) -> Login {
        let token = std::fs::read_to_string(data.join("admin.token")).expect("admin token written");
        Login { token: token.trim().to_owned(), ca: Some(data.join("tls/ca.pem")) }
    }
}

/// The CLI, pointed at the three API ports from `api` on, logged in with `login`.
fn cli(api: u16, login: &Login) -> Command {
    let endpoints = (0..3).map(|i| format!("127.0.0.1:{}", api + i)).collect::<Vec<_>>().join(",");
    let mut command = Command::new(BERTH);
    command
        .env("BERTH_ENDPOINTS", endpoints)
        .env("BERTH_TOKEN", &login.token)
        .env_remove("BERTH_CA")
        .env_remove("BERTH_INSECURE")
        .env_remove("RUST_BACKTRACE");
    match &login.ca {
        Some(ca) => command.env("BERTH_CA", ca),
        None => command.env("BERTH_INSECURE", "true"),
    };
    command
}

struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

fn berth(api: u16, login: &Login, args: &[&str]) -> Run {
    let out = cli(api, login).args(args).output().expect("berth runs");
    Run {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn ok(api: u16, login: &Login, args: &[&str]) -> String {
    let run = berth(api, login, args);
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
    let login = &Login::of_up(&data);

    ok(api, login, &["tenant", "create", "acme"]);
    ok(api, login, &["quota", "set", "acme", "--cpu", "1.5", "--instances", "10"]);
    ok(api, login, &["worker", "register", "w1", "--cpu", "8", "--memory-mib", "16384"]);
    let placed =
        ok(api, login, &["place", "acme", "web", "--cpu", "0.75", "--memory-mib", "512", "--json"]);
    let placed: serde_json::Value = serde_json::from_str(&placed).expect("json");
    assert_eq!(placed["placement"]["workers"][0], "w1");
    assert_eq!(placed["placement"]["spec"]["resources"]["cpu_millis"], 750);

    let over = berth(api, login, &["place", "acme", "big", "--cpu", "0.751", "--memory-mib", "1"]);
    assert!(!over.ok);
    assert!(
        over.stderr.contains("QUOTA_EXCEEDED") && over.stderr.contains("limit=1500"),
        "{}",
        over.stderr
    );
    assert_eq!(over.stderr.trim().lines().count(), 1, "one line, no backtrace: {}", over.stderr);
    let rounded =
        berth(api, login, &["place", "acme", "x", "--cpu", "0.1234", "--memory-mib", "1"]);
    assert!(!rounded.ok && rounded.stderr.contains("more than three decimals"));

    let quota = ok(api, login, &["quota", "get", "acme"]);
    assert!(quota.contains("usage: cpu_millis=750"), "{quota}");

    // Soft limits, pool denial and dry runs.
    ok(api, login, &["quota", "soft", "acme", "--cpu", "0.5:1.2", "--grace-ms", "600000"]);
    let quota = ok(api, login, &["quota", "get", "acme", "--json"]);
    let quota: serde_json::Value = serde_json::from_str(&quota).expect("json");
    assert_eq!(quota["quota"]["soft"]["cpu_millis"]["burst"], 1200, "{quota}");
    assert!(quota["burst"]["grace_ends_at_ms"].as_u64().is_some(), "750 > soft 500: {quota}");
    let dry =
        ok(api, login, &["place", "acme", "d", "--cpu", "0.25", "--memory-mib", "1", "--dry-run"]);
    assert!(dry.contains("would place on: w1"), "{dry}");
    let dry =
        ok(api, login, &["place", "acme", "d", "--cpu", "0.5", "--memory-mib", "1", "--dry-run"]);
    assert!(
        dry.contains("would refuse: QUOTA_EXCEEDED") && dry.contains("limit_kind: burst"),
        "{dry}"
    );
    ok(api, login, &["quota", "deny", "acme", "gpu"]);
    let denied = berth(
        api,
        login,
        &["place", "acme", "g", "--cpu", "1", "--memory-mib", "1", "--pool", "gpu"],
    );
    assert!(!denied.ok && denied.stderr.contains("POOL_DENIED"), "{}", denied.stderr);
    ok(api, login, &["quota", "allow", "acme", "gpu"]);

    // Queueing: a request over quota waits, is listed with its reason, and can be cancelled.
    let queued =
        ok(api, login, &["place", "acme", "q1", "--cpu", "1", "--memory-mib", "1", "--queue"]);
    assert!(queued.contains("wait_reason: QUOTA_EXCEEDED"), "{queued}");
    let listed = ok(api, login, &["queue", "list", "acme"]);
    assert!(
        listed.contains("q1") && listed.contains("1/1") && listed.contains("QUOTA_EXCEEDED"),
        "{listed}"
    );
    let got = ok(api, login, &["placement", "get", "acme", "q1", "--json"]);
    let got: serde_json::Value = serde_json::from_str(&got).expect("json");
    assert_eq!(got["queued"]["position"], 1, "{got}");
    ok(api, login, &["queue", "cancel", "acme", "q1"]);
    assert!(ok(api, login, &["queue", "list", "acme"]).contains("(none)"));

    // Time windows: a day's job budget, spent, refused with the reset time.
    // Preemption policy and a pool guarantee: set and shown; a borrowing limit below usage is
    // refused.
    ok(api, login, &["quota", "preemption", "acme", "same-tenant"]);
    let args = ["quota", "guarantee", "acme", "default", "--cpu", "0.5", "--memory-mib", "64"];
    ok(api, login, &[&args[..], &["--borrow-cpu", "1", "--lend-cpu", "0.25"]].concat());
    let quota = ok(api, login, &["quota", "get", "acme", "--json"]);
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
        login,
        &["quota", "guarantee", "acme", "default", "--cpu", "0.5", "--borrow-cpu", "0.1"],
    );
    assert!(!bad.ok && bad.stderr.contains("INVALID_ARGUMENT"), "below usage: {}", bad.stderr);
    ok(api, login, &["quota", "guarantee", "acme", "default", "--remove"]);
    // Rate limits: set, shown with what they allow now, and removed by no flag.
    ok(api, login, &["quota", "rate", "acme", "--token-rate", "50", "--daily-quota", "1000"]);
    let quota = ok(api, login, &["quota", "get", "acme", "--json"]);
    let quota: serde_json::Value = serde_json::from_str(&quota).expect("json");
    let limits = &quota["rate_limits"];
    assert_eq!(
        (limits["token_rate"].as_u64(), limits["daily_quota"].as_u64()),
        (Some(50), Some(1_000))
    );
    assert_eq!(quota["rate"]["writes_available"].as_u64(), Some(50), "a full bucket: {quota}");
    let bad = berth(api, login, &["quota", "rate", "acme", "--burst-rate", "5"]);
    assert!(!bad.ok && bad.stderr.contains("--token-rate"), "{}", bad.stderr);
    ok(api, login, &["quota", "rate", "acme"]);
    let quota = ok(api, login, &["quota", "get", "acme", "--json"]);
    let quota: serde_json::Value = serde_json::from_str(&quota).expect("json");
    assert!(quota["rate_limits"].is_null(), "removed: {quota}");
    // Policy versions: every change above is one; roll back to the first quota set.
    let history = ok(api, login, &["quota", "history", "acme", "--json"]);
    let history: serde_json::Value = serde_json::from_str(&history).expect("json");
    let versions = history["versions"].as_array().expect("versions");
    let first_quota = versions.iter().find(|v| v["change"] == "quota").expect("a quota change");
    assert_eq!(versions[0]["change"], "created", "{history}");
    assert_eq!(first_quota["actor"], "admin");
    let to = first_quota["version"].as_u64().expect("a number").to_string();
    let table = ok(api, login, &["quota", "history", "acme"]);
    assert!(table.contains("VERSION") && table.contains("rate_limits"), "{table}");
    let rolled = ok(api, login, &["quota", "rollback", "acme", "--to-version", &to, "--json"]);
    let rolled: serde_json::Value = serde_json::from_str(&rolled).expect("json");
    let current = history["current"].as_u64().expect("current");
    assert_eq!(rolled["version"].as_u64(), Some(current + 1), "{rolled}");
    let quota = ok(api, login, &["quota", "get", "acme", "--json"]);
    let quota: serde_json::Value = serde_json::from_str(&quota).expect("json");
    assert_eq!(quota["quota"], first_quota["policy"]["quota"], "the first quota again");
    let gone = berth(api, login, &["quota", "rollback", "acme", "--to-version", "999"]);
    assert!(!gone.ok && gone.stderr.contains("POLICY_VERSION_NOT_FOUND"), "{}", gone.stderr);
    // The audit trail: JSON lines of acme's commands in the last hour, the rollback and its
    // refusal among them; and every replica's chain verifies.
    let lines = ok(api, login, &["audit", "--tenant", "acme", "--since", "1h"]);
    let records: Vec<serde_json::Value> =
        lines.lines().map(|l| serde_json::from_str(l).expect("a JSON line")).collect();
    assert!(records.iter().all(|r| r["tenant_id"] == "acme"), "{lines}");
    let outcomes: Vec<_> = records
        .iter()
        .filter(|r| r["command"].as_str().is_some_and(|c| c.starts_with("RollbackPolicy")))
        .map(|r| r["outcome"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(outcomes, ["ok", "POLICY_VERSION_NOT_FOUND"], "{lines}");
    let verified = ok(api, login, &["audit", "verify"]);
    assert!(verified.contains("replicas agree") && verified.contains("intact"), "{verified}");
    // A pool reserve (8 cores in the pool): shown, and a guarantee that would eat into it is
    // refused with the reason.
    ok(api, login, &["pool", "reserve", "default", "--cpu", "6", "--memory-mib", "0"]);
    let pool = ok(api, login, &["pool", "get", "default"]);
    assert!(pool.contains("reserve: cpu_millis=6000 memory_mib=0"), "{pool}");
    let args = ["quota", "guarantee", "acme", "default", "--cpu", "2.001", "--memory-mib", "64"];
    let bad = berth(api, login, &args);
    assert!(!bad.ok && bad.stderr.contains("POOL_OVERCOMMITTED"), "{}", bad.stderr);
    ok(api, login, &["pool", "reserve", "default", "--remove"]);
    let pool = ok(api, login, &["pool", "get", "default", "--json"]);
    let pool: serde_json::Value = serde_json::from_str(&pool).expect("json");
    assert!(pool["reserve"].is_null() && pool["capacity"]["cpu_millis"] == 8_000, "{pool}");
    // Soft limits as a share of the pool (8 cores): 250‰ soft, 400‰ burst, shown resolved.
    let args = ["quota", "soft", "acme", "--share-of-pool", "default", "--share", "250:400"];
    ok(api, login, &[&args[..], &["--grace-ms", "600000"]].concat());
    let quota = ok(api, login, &["quota", "get", "acme", "--json"]);
    let quota: serde_json::Value = serde_json::from_str(&quota).expect("json");
    assert_eq!(quota["quota"]["soft_share"]["burst_per_mille"], 400, "{quota}");
    assert_eq!(quota["effective"]["soft"]["cpu_millis"]["soft"], 2_000, "{quota}");
    assert_eq!(quota["effective"]["soft"]["cpu_millis"]["burst"], 3_200, "{quota}");
    let bad = berth(
        api,
        login,
        &["quota", "soft", "acme", "--share-of-pool", "default", "--share", "1:1001"],
    );
    assert!(!bad.ok && bad.stderr.contains("INVALID_ARGUMENT"), "{}", bad.stderr);
    ok(api, login, &["quota", "soft", "acme"]);
    ok(api, login, &["quota", "preemption", "acme", "inherit"]);
    let args = ["quota", "window", "acme", "--jobs-per-day", "3", "--cpu-hours-per-month", "1.5"];
    ok(api, login, &[&args[..], &["--when-exhausted", "refuse"]].concat());
    let quota = ok(api, login, &["quota", "get", "acme", "--json"]);
    let quota: serde_json::Value = serde_json::from_str(&quota).expect("json");
    assert_eq!(quota["quota"]["windows"]["cpu_milli_ms_per_month"], 5_400_000_000u64, "{quota}");
    let jobs = quota["windows"]["jobs_today"].as_u64().expect("jobs today");
    let resets = quota["windows"]["day_resets_at_ms"].as_u64().expect("reset time");
    assert_eq!(resets % 86_400_000, 0, "UTC midnight");
    for i in jobs..3 {
        ok(
            api,
            login,
            &["place", "acme", &format!("day-{i}"), "--cpu", "0.001", "--memory-mib", "1"],
        );
    }
    let spent = berth(
        api,
        login,
        &["place", "acme", "day-x", "--cpu", "0.001", "--memory-mib", "1", "--queue"],
    );
    assert!(!spent.ok && spent.stderr.contains("window=jobs_per_day"), "{}", spent.stderr);
    assert!(spent.stderr.contains(&format!("resets_at_ms={resets}")), "{}", spent.stderr);
    let denied = berth(
        api,
        &Login { token: "not-the-token".into(), ..login.clone() },
        &["tenant", "get", "acme"],
    );
    assert!(!denied.ok && denied.stderr.contains("Unauthenticated"));
    // A lease's fencing token and the bearer token are different flags (they once clashed,
    // and keepalive and release panicked whenever a bearer token was given).
    let lease = ok(
        api,
        login,
        &["lease", "acquire", "acme", "l1", "--holder", "me", "--ttl-ms", "60000", "--json"],
    );
    let lease: serde_json::Value = serde_json::from_str(&lease).expect("json");
    let fence = lease["lease"]["token"].as_u64().expect("fencing token").to_string();
    ok(api, login, &["lease", "keepalive", "acme", "l1", "--fencing-token", &fence]);
    ok(api, login, &["lease", "release", "acme", "l1", "--fencing-token", &fence]);
    let issued = ok(api, login, &["token", "issue", "acme", "ci", "--expires-in", "1h", "--json"]);
    let issued: serde_json::Value = serde_json::from_str(&issued).expect("json");
    let expires_at = issued["expires_at_ms"].as_u64().expect("expiry");
    assert_eq!(expires_at, issued["write"]["applied_at_ms"].as_u64().expect("time") + 3_600_000);
    let listed = ok(api, login, &["tenant", "get", "acme"]);
    assert!(listed.contains(&format!("{expires_at}  ci")), "{listed}");
    // Prices, the plans, and a statement that prices what acme holds.
    let price = ["cost", "price", "default", "--price", "cpu=1000:0.04,0.03"];
    ok(api, login, &[&price[..], &["--price", "memory=0.005"]].concat());
    let plans = ok(api, login, &["cost", "plans", "--json"]);
    let plans: serde_json::Value = serde_json::from_str(&plans).expect("json");
    let cpu = &plans[0]["versions"][0]["pools"][0]["items"][0];
    assert_eq!((&cpu["item"], &cpu["tiers"][1]["per_hour"]), (&"cpu".into(), &"0.03".into()));
    let table = ok(api, login, &["cost", "plans"]);
    assert!(table.contains("cpu") && table.contains("1000:0.04,0.03"), "{table}");
    let statement = ok(api, login, &["cost", "statement", "acme", "--json"]);
    let statement: serde_json::Value = serde_json::from_str(&statement).expect("json");
    assert_eq!(statement["plan"], "default", "{statement}");
    let lines = statement["current"]["lines"].as_array().expect("lines");
    assert!(lines.iter().any(|l| l["item"] == "cpu" && l["plan"] == "default"), "{statement}");
    let bad = berth(api, login, &["cost", "price", "default", "--price", "cpu=-1"]);
    assert!(!bad.ok && bad.stderr.contains("INVALID_ARGUMENT"), "{}", bad.stderr);
    // A budget, read back for people and for scripts.
    ok(api, login, &["budget", "set", "acme", "--per-month", "250.50", "--hard-stop"]);
    let budget = ok(api, login, &["budget", "get", "acme"]);
    assert!(budget.contains("250.50") && budget.contains("spent_percent"), "{budget}");
    let budget = ok(api, login, &["budget", "get", "acme", "--json"]);
    let budget: serde_json::Value = serde_json::from_str(&budget).expect("json");
    assert_eq!(budget["budget"]["alerts_percent"], serde_json::json!([50, 80, 100]), "{budget}");
    assert_eq!(budget["budget"]["hard_stop"], true);
    ok(api, login, &["budget", "clear", "acme"]);
    let bad = berth(api, login, &["budget", "set", "acme", "--per-month", "1.001"]);
    assert!(!bad.ok && bad.stderr.contains("INVALID_ARGUMENT"), "{}", bad.stderr);
    // Invoices: this month takes adjustments; nothing is closed yet, so the export is a header.
    let month = berth::scheduler::meter::month_label(berth::scheduler::windows::month_of(
        berth::scheduler::UnixMillis(
            u64::try_from(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .expect("after 1970")
                    .as_millis(),
            )
            .expect("fits"),
        ),
    ));
    let credit = ["invoice", "adjust", "acme", "--month", &month, "--amount", "-5.00"];
    ok(api, login, &[&credit[..], &["--reason", "welcome credit"]].concat());
    let listed = ok(api, login, &["invoice", "list", "acme", "--json"]);
    assert!(listed.contains("welcome credit") && listed.contains("-5.00"), "{listed}");
    let export = ok(api, login, &["invoice", "export", "acme", "--format", "csv"]);
    assert_eq!(
        export.trim(),
        "tenant,period,kind,pool,item,quantity,unit,unit_price,amount,currency,description"
    );
    let bad = berth(api, login, &["invoice", "close", "acme", "--month", "2026-13"]);
    assert!(!bad.ok && bad.stderr.contains("INVALID_ARGUMENT"), "{}", bad.stderr);

    // Usage history: sparklines for people, the series for scripts, a report of every tenant.
    let drawn = ok(api, login, &["usage", "acme", "--from", "1h", "--step", "5m"]);
    assert!(drawn.contains("cpu") && drawn.contains("avg") && drawn.contains("raw"), "{drawn}");
    let drawn = ok(api, login, &["usage", "acme", "--from", "7d"]);
    assert!(drawn.contains("hourly series"), "{drawn}");
    let series = ok(api, login, &["usage", "acme", "--json"]);
    let series: serde_json::Value = serde_json::from_str(&series).expect("json");
    assert_eq!(series["resolution"], "hourly", "{series}");
    let report = ok(api, login, &["usage", "report", "--from", "1d", "--step", "1h"]);
    assert!(report.starts_with("tenant,from,to,pool,item,quantity,unit,hours"), "{report}");
    assert!(report.contains("\nacme,"), "{report}");
    ok(api, login, &["cluster", "config", "--usage-raw-retention", "2d"]);
    let config = ok(api, login, &["cluster", "config", "--json"]);
    assert!(config.contains("172800000"), "{config}");
    let bad = berth(api, login, &["cluster", "config", "--usage-raw-retention", "100d"]);
    assert!(!bad.ok && bad.stderr.contains("INVALID_ARGUMENT"), "{}", bad.stderr);
    closed_stdout_ends_quietly(api, login);
    drop(cluster);

    // Same data directory: same token, same state.
    let cluster = up(&data, peer, api);
    let placements = ok(api, login, &["placement", "list", "acme"]);
    assert!(placements.contains("web"), "{placements}");
    // Right after a restart a replica may still be catching up or electing: wait for calm.
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let status = ok(api, login, &["cluster", "status"]);
        if status.contains("Leader") && status.matches("Follower").count() == 2 {
            break;
        }
        assert!(Instant::now() < until, "cluster never settled: {status}");
        std::thread::sleep(Duration::from_millis(200));
    }

    // A snapshot on demand; a backup, never over an existing file; a cluster from it.
    let made = ok(api, login, &["snapshot", "create", "--json"]);
    let made: serde_json::Value = serde_json::from_str(&made).expect("json");
    assert!(made["log_index"].as_u64() > Some(0), "{made}");
    let file = tmp.path().join("berth.backup");
    let file_arg = file.to_str().expect("utf-8 path");
    let wrote = ok(api, login, &["backup", file_arg, "--json"]);
    let wrote: serde_json::Value = serde_json::from_str(&wrote).expect("json");
    let sha256 = wrote["sha256"].as_str().expect("a checksum").to_owned();
    assert_eq!(wrote["bytes"].as_u64(), Some(std::fs::metadata(&file).expect("written").len()));
    let again = berth(api, login, &["backup", file_arg]);
    assert!(!again.ok && again.stderr.contains("never replaces"), "{}", again.stderr);
    drop(cluster);
    let one = tmp.path().join("one");
    let restore = |sha: &str| {
        let args = ["restore", "--from", file_arg, "--sha256", sha, "--id", "1"];
        let members = ["--initial-members", "1=127.0.0.1:1", "--data-dir"];
        cli(api, login).args(args).args(members).arg(&one).output().expect("berth runs")
    };
    let wrong = restore(&"0".repeat(64));
    let stderr = String::from_utf8_lossy(&wrong.stderr);
    assert!(!wrong.status.success() && stderr.contains("not the"), "{stderr}");
    assert!(!one.exists(), "a refused restore writes nothing");
    let restored = restore(&sha256);
    let stdout = String::from_utf8_lossy(&restored.stdout);
    assert!(restored.status.success() && stdout.contains("no --bootstrap"), "{stdout}");
    let elsewhere = tmp.path().join("restored");
    let cluster = up_with(&elsewhere, peer, api, &["--restore", file_arg]);
    let login = &Login::of_up(&elsewhere);
    let placements = ok(api, login, &["placement", "list", "acme"]);
    assert!(placements.contains("web"), "{placements}");
    drop(cluster);
}

/// Output into a pipe whose reader has gone (`berth cluster status | head -0`) ends the command
/// quietly, as Unix tools do (status 141, or 0 if the output fit before the reader left), never
/// with a panic.
fn closed_stdout_ends_quietly(api: u16, login: &Login) {
    let mut child = cli(api, login)
        .args(["cluster", "status"])
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
fn leader(api: u16, login: &Login) -> u64 {
    let status = ok(api, login, &["cluster", "status", "--json"]);
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
fn write_succeeds_within(api: u16, login: &Login, within: Duration, tenant: &str) {
    let until = Instant::now() + within;
    loop {
        let run = berth(api, login, &["tenant", "create", tenant]);
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
    let login = &Login::of_up(&data);
    ok(api, login, &["tenant", "create", "before"]);
    let leader = leader(api, login);
    kill_replica(&cluster, leader);
    let report = format!("replica {leader} exited");
    cluster.wait_for(Duration::from_secs(10), |line| line.contains(&report));
    let hint = cluster.wait_for(Duration::from_secs(10), |line| line.contains(" server --id "));
    assert!(hint.contains(&format!("--id {leader} ")), "{hint}");
    write_succeeds_within(api, login, Duration::from_secs(10), "after");
    assert!(cluster.child.try_wait().expect("up's status").is_none(), "berth up still runs");
}

/// With --restart-on-exit, a killed replica is started again and rejoins the cluster; one sent
/// SIGTERM exits and is started again too.
#[test]
fn up_restarts_an_exited_replica() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let data = tmp.path().join("berth-data");
    let peer = free_base(6);
    let api = peer + 3;
    let mut cluster = up_with(&data, peer, api, &["--restart-on-exit"]);
    let login = &Login::of_up(&data);
    let leader = leader(api, login);
    let killed = cluster.replica_pids[&leader];
    kill_replica(&cluster, leader);
    let restarted = format!("replica {leader}: pid ");
    cluster.wait_for(Duration::from_secs(20), |line| line.starts_with(&restarted));
    assert_ne!(cluster.replica_pids[&leader], killed, "a new process");
    write_succeeds_within(api, login, Duration::from_secs(10), "after");
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let status = ok(api, login, &["cluster", "status", "--json"]);
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

    // SIGTERM stops a replica for good: it exits (and is started again), it does not hang
    // on the standard input it watches for its parent.
    let pid = cluster.replica_pids[&leader].to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().expect("kill runs").success());
    let exited = format!("replica {leader} exited");
    cluster.wait_for(Duration::from_secs(10), |line| line.contains(&exited));
    cluster.wait_for(Duration::from_secs(20), |line| line.starts_with(&restarted));
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
            .args(["--api-listen", &format!("127.0.0.1:{}", base + 1), "--insecure"])
            .arg("--admin-token-file")
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

/// `berth certs HOSTS --out OUT --json`: what it wrote.
fn certs(hosts: &Path, out: &Path) -> serde_json::Value {
    let run = Command::new(BERTH)
        .arg("certs")
        .arg(hosts)
        .arg("--out")
        .arg(out)
        .arg("--json")
        .env_remove("RUST_BACKTRACE")
        .output()
        .expect("berth certs runs");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "berth certs failed: {stderr}");
    serde_json::from_slice(&run.stdout).expect("json")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// Whether the PEM certificate `cert` chains to the CA in `ca` and is valid for `name`.
fn valid_for(ca: &str, cert: &str, name: &str) -> bool {
    use rustls::client::danger::ServerCertVerifier as _;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let roots = std::sync::Arc::new(berth::tls::roots(ca).expect("a CA certificate"));
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider)
        .build()
        .expect("a verifier");
    let cert = CertificateDer::from_pem_slice(cert.as_bytes()).expect("a PEM certificate");
    let name = ServerName::try_from(name.to_owned()).expect("a server name");
    verifier.verify_server_cert(&cert, &[], &name, &[], UnixTime::now()).is_ok()
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).expect("file written").permissions().mode() & 0o777
}

/// `berth certs` on cluster/hosts/3 writes the CA, a directory per host and a client
/// certificate, every key 0600; each replica's certificate is from the CA and names its own
/// replica id (no other) and its hosts, never the wildcard it listens on; a second run reuses
/// the CA and issues new certificates. cluster/hosts/5 gives five such certificates.
#[test]
fn certs_for_the_shipped_hosts() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let out = tmp.path().join("tls");
    let hosts = Path::new(env!("CARGO_MANIFEST_DIR")).join("cluster/hosts/3");
    let written = certs(&hosts, &out);
    assert_eq!(written["ca"]["reused"], false, "{written}");
    let ca = read(&out.join("ca.pem"));
    let others_ca = berth::tls::Authority::generate().expect("another CA");
    let mut keys = vec![out.join("ca-key.pem"), out.join("client-key.pem")];
    for id in 1..=3u64 {
        let dir = out.join(format!("berth-{id}"));
        assert_eq!(written["replicas"][id as usize - 1]["dir"], dir.to_str().expect("utf-8"));
        assert_eq!(read(&dir.join("ca.pem")), ca, "each host gets the CA certificate");
        keys.push(dir.join("replica-key.pem"));
        let cert = read(&dir.join("replica.pem"));
        for name in [
            format!("r{id}.replica.berth"),
            format!("berth-{id}.example.internal"),
            format!("10.0.0.1{id}"),
        ] {
            assert!(valid_for(&ca, &cert, &name), "replica {id}'s certificate names {name}");
        }
        for id in (1..=3).filter(|other| *other != id) {
            assert!(!valid_for(&ca, &cert, &format!("r{id}.replica.berth")), "not replica {id}");
        }
        assert!(!valid_for(&ca, &cert, "0.0.0.0"), "no wildcard address");
        assert!(!valid_for(others_ca.cert_pem(), &cert, &format!("r{id}.replica.berth")));
    }
    for key in &keys {
        assert_eq!(mode(key), 0o600, "{} is owner-only", key.display());
    }
    let client = read(&out.join("client.pem"));
    assert!(!valid_for(&ca, &client, "replica.berth"), "the client certificate names no replica");
    assert!(!valid_for(&ca, &client, "r1.replica.berth"));

    let (ca_key, replica_1) =
        (read(&out.join("ca-key.pem")), read(&out.join("berth-1/replica.pem")));
    let again = certs(&hosts, &out);
    assert_eq!(again["ca"]["reused"], true, "{again}");
    assert_eq!(read(&out.join("ca.pem")), ca, "the same CA");
    assert_eq!(read(&out.join("ca-key.pem")), ca_key);
    let rotated = read(&out.join("berth-1/replica.pem"));
    assert_ne!(rotated, replica_1, "a new certificate");
    assert!(valid_for(&ca, &rotated, "r1.replica.berth"));
    for key in &keys {
        assert_eq!(mode(key), 0o600, "{} is owner-only after a re-issue", key.display());
    }

    let out = tmp.path().join("tls-5");
    let written = certs(&hosts.with_file_name("5"), &out);
    assert_eq!(written["replicas"].as_array().map(Vec::len), Some(5), "{written}");
    let ca = read(&out.join("ca.pem"));
    for id in 1..=5 {
        let cert = read(&out.join(format!("berth-{id}/replica.pem")));
        for name in [format!("r{id}.replica.berth"), format!("10.0.0.1{id}")] {
            assert!(valid_for(&ca, &cert, &name), "replica {id}'s certificate names {name}");
        }
    }
}

/// `berth server` processes started from host env files, as systemd starts them; killed on
/// drop.
struct Servers {
    envs: BTreeMap<u64, Vec<(String, String)>>,
    children: BTreeMap<u64, Child>,
    logs: PathBuf,
}

impl Servers {
    fn start(&mut self, id: u64) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.logs.join(format!("replica-{id}.log")))
            .expect("log file");
        let child = Command::new(BERTH)
            .arg("server")
            .envs(self.envs[&id].iter().map(|(k, v)| (k, v)))
            .env_remove("BERTH_INSECURE")
            .env_remove("RUST_BACKTRACE")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("berth server starts");
        self.children.insert(id, child);
    }

    fn kill(&mut self, id: u64) {
        let mut child = self.children.remove(&id).expect("running");
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Every replica's log, to say why a wait failed.
    fn logs(&self) -> String {
        let logs = self.envs.keys().map(|id| self.logs.join(format!("replica-{id}.log")));
        logs.map(|log| format!("{}:\n{}", log.display(), read(&log))).collect()
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        for child in self.children.values_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Replicas started from host env files and the certificates `berth certs` made from those
/// files form a cluster; the CLI reaches it with `--ca` and gets an error, not data, with
/// `--insecure`. After `berth certs` again (rotation), a replica restarted with its new
/// certificate rejoins: it serves a linearizable read of a write made after its restart.
#[test]
fn a_cluster_from_berth_certs_rotates_a_certificate() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let (hosts, out) = (tmp.path().join("hosts"), tmp.path().join("tls"));
    std::fs::create_dir(&hosts).expect("hosts dir");
    let token_file = tmp.path().join("admin.token");
    {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&token_file)
            .expect("token file");
        file.write_all(b"berth_admin_certs_test_0123456789\n").expect("token written");
    }
    let peer = free_base(6);
    let api = peer + 3;
    let members: Vec<String> =
        (0..3).map(|i| format!("{}=127.0.0.1:{}", i + 1, peer + i)).collect();
    let mut servers =
        Servers { envs: BTreeMap::new(), children: BTreeMap::new(), logs: tmp.path().into() };
    for id in 1..=3u16 {
        let files = out.join(format!("berth-{id}"));
        let path = |p: &Path| p.to_str().expect("utf-8").to_owned();
        let env = vec![
            ("BERTH_ID", id.to_string()),
            ("BERTH_PEER_LISTEN", format!("127.0.0.1:{}", peer + id - 1)),
            ("BERTH_API_LISTEN", format!("127.0.0.1:{}", api + id - 1)),
            ("BERTH_ADMIN_TOKEN_FILE", path(&token_file)),
            ("BERTH_CA_FILE", path(&files.join("ca.pem"))),
            ("BERTH_CERT_FILE", path(&files.join("replica.pem"))),
            ("BERTH_KEY_FILE", path(&files.join("replica-key.pem"))),
            ("BERTH_DATA_DIR", path(&tmp.path().join(format!("data-{id}")))),
            ("BERTH_BOOTSTRAP", (id == 1).to_string()),
            ("BERTH_INITIAL_MEMBERS", members.join(",")),
        ];
        let text: String = env.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
        std::fs::write(hosts.join(format!("berth-{id}.env")), text).expect("env file");
        let env = env.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
        servers.envs.insert(u64::from(id), env);
    }
    certs(&hosts, &out);
    for id in 1..=3 {
        servers.start(id);
    }
    let login = &Login { token: read(&token_file).trim().to_owned(), ca: Some(out.join("ca.pem")) };
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let status = berth(api, login, &["cluster", "status"]);
        if status.stdout.contains("Leader") && status.stdout.matches("Follower").count() == 2 {
            break;
        }
        let logs = servers.logs();
        assert!(Instant::now() < until, "no cluster: {}{}\n{logs}", status.stdout, status.stderr);
        std::thread::sleep(Duration::from_millis(200));
    }
    ok(api, login, &["tenant", "create", "acme"]);
    let plaintext = berth(api, &Login { ca: None, ..login.clone() }, &["tenant", "get", "acme"]);
    assert!(!plaintext.ok && !plaintext.stdout.contains("acme"), "{}", plaintext.stdout);

    let rotated = certs(&hosts, &out);
    assert_eq!(rotated["ca"]["reused"], true, "{rotated}");
    servers.kill(3);
    servers.start(3);
    write_succeeds_within(api, login, Duration::from_secs(20), "after");
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let read = cli(api, login)
            .env("BERTH_ENDPOINTS", format!("127.0.0.1:{}", api + 2))
            .args(["tenant", "get", "after"])
            .output()
            .expect("berth runs");
        if read.status.success() {
            break;
        }
        let stderr = String::from_utf8_lossy(&read.stderr);
        let logs = servers.logs();
        assert!(Instant::now() < until, "replica 3 never rejoined: {stderr}\n{logs}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `berth up --insecure` serves plaintext, says so in each replica's log, and the CLI reaches
/// it with `--insecure`; without `--ca` or `--insecure` the CLI refuses, naming both, and a TLS
/// client gets an error from it, not data.
#[test]
fn up_insecure_is_plaintext_on_request() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let data = tmp.path().join("berth-data");
    let peer = free_base(6);
    let api = peer + 3;
    let _cluster = up_with(&data, peer, api, &["--insecure", "--log-format", "json"]);
    assert!(!data.join("tls").exists(), "no certificates for a plaintext cluster");
    let log = read(&data.join("replica-1.log"));
    assert!(log.contains("insecure: peer and API ports speak plaintext"), "{log}");
    let plaintext = &Login { ca: None, ..Login::of_up(&data) };
    ok(api, plaintext, &["tenant", "create", "acme"]);
    assert!(ok(api, plaintext, &["tenant", "get", "acme"]).contains("acme"));

    // `--log-format json` reaches the replicas: a refusal is one JSON object on one line,
    // with its tenant, request id, reason and RPC.
    let again = berth(api, plaintext, &["tenant", "create", "acme"]);
    assert!(!again.ok);
    let until = std::time::Instant::now() + Duration::from_secs(30);
    let refusal = loop {
        let found = (1..=3).find_map(|i| {
            read(&data.join(format!("replica-{i}.log")))
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .find(|l| l["message"] == "refused" && l["reason"] == "TENANT_EXISTS")
        });
        if let Some(found) = found {
            break found;
        }
        assert!(std::time::Instant::now() < until, "no JSON refusal in the replicas' logs");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(refusal["tenant_id"], "acme", "{refusal}");
    assert_eq!(refusal["rpc"], "Tenants/CreateTenant", "{refusal}");
    assert_eq!(refusal["code"], "ALREADY_EXISTS", "{refusal}");
    assert!(refusal["request_id"].as_str().is_some_and(|r| !r.is_empty()), "{refusal}");
    assert!(refusal["log_index"].as_u64().is_some_and(|i| i > 0), "{refusal}");

    let neither = cli(api, plaintext)
        .env_remove("BERTH_INSECURE")
        .args(["tenant", "get", "acme"])
        .output()
        .expect("berth runs");
    let stderr = String::from_utf8_lossy(&neither.stderr);
    assert!(!neither.status.success(), "{stderr}");
    assert!(stderr.contains("--ca") && stderr.contains("--insecure"), "{stderr}");
    assert!(neither.stdout.is_empty());

    let ca = tmp.path().join("other-ca.pem");
    std::fs::write(&ca, berth::tls::Authority::generate().expect("a CA").cert_pem())
        .expect("CA written");
    let tls = berth(api, &Login { ca: Some(ca), ..plaintext.clone() }, &["tenant", "get", "acme"]);
    assert!(!tls.ok && tls.stdout.is_empty(), "{}", tls.stdout);
}

/// A long-running `berth` child (an agent, a watch) whose output lines arrive on a channel;
/// killed on drop.
struct Background {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Background {
    fn start(mut command: Command) -> Background {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("berth starts");
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Background { child, lines }
    }

    /// The first line (after those already read) that satisfies `wanted`, within `within`.
    fn wait_for(&self, within: Duration, wanted: impl Fn(&str) -> bool) -> String {
        let until = Instant::now() + within;
        let mut seen = Vec::new();
        loop {
            let left = until.saturating_duration_since(Instant::now());
            let Ok(line) = self.lines.recv_timeout(left) else {
                panic!("no expected line in time; saw {seen:#?}");
            };
            if wanted(&line) {
                return line;
            }
            seen.push(line);
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Two `berth agent`s run a spread placement; SIGKILL of one makes its worker go down within
/// its TTL plus a tick of log time, and `berth watch` shows its instance moving to the other;
/// a hook's exit status becomes the instance's report (with the instance in its environment);
/// Ctrl-C drains an agent and it exits cleanly.
#[test]
fn agents_heartbeat_run_hooks_and_a_killed_one_loses_its_work() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let data = tmp.path().join("berth-data");
    let peer = free_base(6);
    let api = peer + 3;
    let _cluster = up(&data, peer, api);
    let login = &Login::of_up(&data);
    ok(api, login, &["pool", "ttl", "default", "2s"]);
    ok(api, login, &["tenant", "create", "acme"]);
    let watch = Background::start({
        let mut c = cli(api, login);
        c.args(["watch", "--json"]);
        c
    });
    let agent = |worker: &str, hook: Option<&str>| {
        let mut c = cli(api, login);
        c.args(["agent", worker, "--cpu", "4", "--memory-mib", "4096"]);
        if let Some(hook) = hook {
            c.args(["--on-assign", hook]);
        }
        Background::start(c)
    };
    let a1 = agent("a1", None);
    let a2 = agent("a2", None);
    for a in [&a1, &a2] {
        a.wait_for(Duration::from_secs(20), |l| l.starts_with("started"));
    }
    // Both managed (heartbeating) before anything is placed.
    for w in ["a1", "a2"] {
        let until = Instant::now() + Duration::from_secs(20);
        while !ok(api, login, &["worker", "get", w, "--json"]).contains("alive_until_ms") {
            assert!(Instant::now() < until, "{w} never heartbeat");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    ok(
        api,
        login,
        &["place", "acme", "job", "--cpu", "1", "--memory-mib", "256", "--count", "2", "--spread"],
    );
    for a in [&a1, &a2] {
        a.wait_for(Duration::from_secs(20), |l| {
            l.starts_with("assigned") && l.contains("placement=job")
        });
    }
    let placement = ok(api, login, &["placement", "get", "acme", "job", "--json"]);
    let placement: serde_json::Value = serde_json::from_str(&placement).expect("json");
    let running = placement["placement"]["instances"].as_array().expect("instances").clone();
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let placement = ok(api, login, &["placement", "get", "acme", "job", "--json"]);
        let placement: serde_json::Value = serde_json::from_str(&placement).expect("json");
        let reported = placement["placement"]["instances"]
            .as_array()
            .is_some_and(|i| i.iter().all(|i| i["running_since_ms"].is_u64()));
        if reported {
            break;
        }
        assert!(Instant::now() < until, "the agents never reported running: {running:?}");
        std::thread::sleep(Duration::from_millis(100));
    }

    let worker: serde_json::Value =
        serde_json::from_str(&ok(api, login, &["worker", "get", "a1", "--json"])).expect("json");
    let mut a1 = a1;
    a1.child.kill().expect("SIGKILL a1");
    let _ = a1.child.wait();
    let ttl = worker["worker"]["liveness"]["ttl_ms"].as_u64().expect("ttl");
    assert_eq!(ttl, 2_000);
    let down = watch.wait_for(Duration::from_secs(30), |l| l.contains("\"WORKER_DOWN\""));
    let down: serde_json::Value = serde_json::from_str(&down).expect("json");
    assert_eq!(down["workers"][0], "a1");
    let moved = watch.wait_for(Duration::from_secs(5), |l| l.contains("\"RESCHEDULED\""));
    let moved: serde_json::Value = serde_json::from_str(&moved).expect("json");
    assert_eq!(moved["placement_id"], "job");
    assert_eq!(moved["moves"][0]["from_worker"], "a1");
    assert_eq!(moved["moves"][0]["to_worker"], "a2");
    assert_eq!(moved["log_index"], down["log_index"], "moved in the entry that marked it down");
    // In log time: no later than its last heartbeat's TTL plus one tick of the leader.
    let last: serde_json::Value =
        serde_json::from_str(&ok(api, login, &["worker", "get", "a1", "--json"])).expect("json");
    let alive_until = last["worker"]["liveness"]["alive_until_ms"].as_u64().expect("alive until");
    let at = down["at_ms"].as_u64().expect("at");
    assert!(
        at >= alive_until && at <= alive_until + 1_000,
        "down at {at}, alive until {alive_until}"
    );
    a2.wait_for(Duration::from_secs(20), |l| l.starts_with("assigned") && l.contains("slot="));
    let placement = ok(api, login, &["placement", "get", "acme", "job", "--json"]);
    assert!(!placement.contains("\"a1\""), "nothing left on a1: {placement}");

    // A hook's exit status is the report; the instance is in its environment.
    let seen = tmp.path().join("seen");
    let hook = format!(
        "echo \"$BERTH_TENANT $BERTH_PLACEMENT $BERTH_SLOT $BERTH_WORKER\" > {}; exit 3",
        seen.display()
    );
    let a3 = agent("a3", Some(&hook));
    a3.wait_for(Duration::from_secs(20), |l| l.starts_with("started"));
    ok(api, login, &["worker", "drain", "a2"]);
    ok(api, login, &["place", "acme", "flaky", "--cpu", "1", "--memory-mib", "256"]);
    a3.wait_for(Duration::from_secs(20), |l| {
        l.starts_with("hook exited") && l.contains("exit_code=3")
    });
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let finished = ok(api, login, &["placement", "finished", "acme", "--json"]);
        if finished.contains("\"FAILED\"") {
            assert!(finished.contains("\"exit_code\": 3"), "{finished}");
            break;
        }
        assert!(Instant::now() < until, "the failure was never reported: {finished}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(std::fs::read_to_string(&seen).expect("the hook ran").trim(), "acme flaky 0 a3");

    // Ctrl-C drains: the worker stops taking work and the agent exits 0.
    let pid = a3.child.id().to_string();
    assert!(Command::new("kill").args(["-INT", &pid]).status().expect("kill").success());
    let mut a3 = a3;
    let until = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = a3.child.try_wait().expect("status") {
            break status;
        }
        assert!(Instant::now() < until, "the agent did not exit after Ctrl-C");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
    let a3_state = ok(api, login, &["worker", "get", "a3", "--json"]);
    assert!(a3_state.contains("\"schedulable\": false"), "{a3_state}");
}

/// Prometheus' `promtool` and `prometheus`, if installed (Debian's `prometheus` package, which
/// `.ci/run` installs, setting BERTH_REQUIRE_PROMETHEUS). Missing outside CI: the caller skips,
/// saying so; missing in CI: a failure.
fn prometheus_installed(test: &str) -> bool {
    let found =
        Command::new("promtool").arg("--version").output().is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var_os("BERTH_REQUIRE_PROMETHEUS").is_none(),
            "{test}: promtool is not installed, and CI must run this test (.ci/run installs it)"
        );
        eprintln!("SKIPPED {test}: Prometheus is not installed (apt-get install prometheus)");
    }
    found
}

/// A child process killed when dropped.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A GET to `http://addr/path`: its status code and body.
fn http_get(addr: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(addr) else { return (0, String::new()) };
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return (0, String::new());
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    let Some((head, body)) = response.split_once("\r\n\r\n") else { return (0, String::new()) };
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    // Prometheus answers small bodies whole, large ones chunked: undo the chunking.
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        let mut rest = body;
        let mut joined = String::new();
        while let Some((size, after)) = rest.split_once("\r\n") {
            let Ok(size) = usize::from_str_radix(size.trim(), 16) else { break };
            if size == 0 || after.len() < size {
                break;
            }
            joined.push_str(&after[..size]);
            rest = after[size..].trim_start_matches("\r\n");
        }
        return (status, joined);
    }
    (status, body.to_owned())
}

/// The shipped Prometheus configuration and alert rules pass `promtool`; a real Prometheus
/// scrapes a `berth up` cluster with them, and `BerthTenantSLOBreach` fires for a tenant whose
/// requests fail for the service's reasons and not for one whose failures are its own.
#[test]
fn prometheus_scrapes_berth_and_a_failing_tenant_breaches_its_slo() {
    if !prometheus_installed("prometheus_scrapes_berth_and_a_failing_tenant_breaches_its_slo") {
        return;
    }
    let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("cluster/prometheus");
    for (what, file) in [("rules", "alerts.yml"), ("config", "prometheus.yml")] {
        let checked = Command::new("promtool")
            .args(["check", what])
            .arg(shipped.join(file))
            .output()
            .expect("promtool runs");
        assert!(checked.status.success(), "promtool check {what} {file}: {checked:?}");
    }

    let tmp = tempfile::tempdir().expect("temp dir");
    let data = tmp.path().join("berth-data");
    let peer = free_base(6);
    let api = peer + 3;
    let cluster = up_with(&data, peer, api, &["--insecure"]);
    assert_eq!(cluster.metrics.len(), 3, "up prints every replica's metrics address");
    let login = &Login { ca: None, ..Login::of_up(&data) };
    for tenant in ["failing", "healthy"] {
        ok(api, login, &["tenant", "create", tenant]);
    }

    // The shipped rules as they are, but firing as soon as they hold and over 30 s windows (a
    // test cannot wait their `for:` minutes, nor fill 5-minute rate windows), evaluated every
    // second over scrapes every second.
    let rules = std::fs::read_to_string(shipped.join("alerts.yml")).expect("rules read");
    let rules: String = rules
        .lines()
        .map(|l| if l.trim_start().starts_with("for:") { "        for: 0s" } else { l })
        .collect::<Vec<_>>()
        .join("\n")
        .replace("[5m]", "[30s]");
    std::fs::write(tmp.path().join("alerts.yml"), rules).expect("rules written");
    let targets = cluster.metrics.iter().map(|t| format!("\"{t}\"")).collect::<Vec<_>>();
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - alerts.yml\n\
         scrape_configs:\n  - job_name: berth\n    static_configs:\n      - targets: [{}]\n",
        targets.join(", ")
    );
    std::fs::write(tmp.path().join("prometheus.yml"), config).expect("config written");
    let web = format!("127.0.0.1:{}", free_base(1));
    let prometheus = Command::new("prometheus")
        .arg(format!("--config.file={}", tmp.path().join("prometheus.yml").display()))
        .arg(format!("--storage.tsdb.path={}", tmp.path().join("tsdb").display()))
        .arg(format!("--web.listen-address={web}"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(tmp.path().join("prometheus.log")).expect("log file"))
        .spawn()
        .expect("prometheus starts");
    let _prometheus = KillOnDrop(prometheus);

    // Traffic: every Place of `failing` is refused (no worker has room: NO_CAPACITY, the
    // service's failure); half of `healthy`'s requests fail too, but by its own mistake (an
    // invalid placement id: INVALID_ARGUMENT), which must not page. Until the alert fires,
    // within a deadline.
    let until = Instant::now() + Duration::from_secs(120);
    let mut n = 0;
    let alerts = loop {
        for _ in 0..5 {
            n += 1;
            let id = format!("p{n}");
            let placed =
                berth(api, login, &["place", "failing", &id, "--cpu", "1", "--memory-mib", "1"]);
            assert!(!placed.ok && placed.stderr.contains("NO_CAPACITY"), "{}", placed.stderr);
            ok(api, login, &["quota", "get", "healthy"]);
            let invalid = berth(
                api,
                login,
                &["place", "healthy", "no spaces allowed", "--cpu", "1", "--memory-mib", "1"],
            );
            assert!(!invalid.ok && invalid.stderr.contains("INVALID"), "{}", invalid.stderr);
        }
        let (status, body) = http_get(&web, "/api/v1/alerts");
        if status == 200 {
            let alerts: serde_json::Value = serde_json::from_str(&body).expect("alerts JSON");
            let breach = alerts["data"]["alerts"].as_array().cloned().unwrap_or_default();
            let breach: Vec<serde_json::Value> = breach
                .into_iter()
                .filter(|a| a["labels"]["alertname"] == "BerthTenantSLOBreach")
                .collect();
            if breach.iter().any(|a| a["state"] == "firing") {
                break breach;
            }
        }
        let log = std::fs::read_to_string(tmp.path().join("prometheus.log")).unwrap_or_default();
        assert!(Instant::now() < until, "BerthTenantSLOBreach did not fire; prometheus: {log}");
    };
    let tenants: Vec<&str> =
        alerts.iter().filter_map(|a| a["labels"]["tenant_id"].as_str()).collect();
    assert_eq!(tenants, ["failing"], "{alerts:#?}");
    // Prometheus scraped all three replicas, and none is alerting as down or leaderless.
    let (_, body) = http_get(&web, "/api/v1/query?query=up");
    let up: serde_json::Value = serde_json::from_str(&body).expect("query JSON");
    let scraped = up["data"]["result"].as_array().expect("a vector");
    assert_eq!(scraped.len(), 3, "{up}");
    assert!(scraped.iter().all(|s| s["value"][1] == "1"), "{up}");
    // Every query of the shipped dashboard is one Prometheus accepts.
    let dashboard = shipped.join("../grafana/berth-tenant-health.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dashboard).expect("dashboard"))
            .expect("JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    for target in panels.iter().flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default()) {
        let expr = target["expr"].as_str().expect("expr").replace("$tenant", ".*");
        let encoded: String = expr
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        let (status, body) = http_get(&web, &format!("/api/v1/query?query={encoded}"));
        assert_eq!(status, 200, "{expr}: {body}");
    }
    drop(cluster);
}

/// `berth stress` in short mode against `berth up`: every profile passes, the replicas'
/// per-tenant counters equal what the client sent, a run directory holds results.json and a
/// report with plots, `latest` points at it; `soak` samples every replica; a planted leak
/// makes `lifecycle` and `soak` fail, a planted unfair weight `backlog` and `mixed`; and
/// `chaos` kills, pauses and (as root, with iptables) partitions replicas and lets a worker
/// die, and everything heals without drift.
#[test]
fn stress_profiles_pass_in_short_mode_and_a_planted_leak_fails() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let data = tmp.path().join("berth-data");
    let peer = free_base(6);
    let api = peer + 3;
    let cluster = up_with(&data, peer, api, &["--restart-on-exit"]);
    let login = &Login::of_up(&data);
    let out = tmp.path().join("stress");
    let out_arg = out.to_str().expect("utf-8 path");
    let metrics: Vec<String> =
        cluster.metrics.iter().map(|m| format!("http://{m}/metrics")).collect();
    let run = berth(
        api,
        login,
        &[
            "stress",
            "isolation",
            "burst",
            "mixed",
            "quota",
            "scaling",
            "backlog",
            "lifecycle",
            "soak",
            "--short",
            "--json",
            "--out",
            out_arg,
            "--metrics",
            &metrics.join(","),
        ],
    );
    assert!(run.ok, "stress failed: {}\n{}", run.stdout, run.stderr);
    let results: serde_json::Value = serde_json::from_str(&run.stdout).expect("json");
    assert_eq!(results["passed"], true, "{results:#}");
    let profiles = results["profiles"].as_array().expect("profiles");
    let names: Vec<&str> = profiles.iter().filter_map(|p| p["profile"].as_str()).collect();
    assert_eq!(
        names,
        ["isolation", "burst", "mixed", "quota", "scaling", "backlog", "lifecycle", "soak"]
    );
    let soak = &profiles[7];
    let sampled = soak["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .any(|c| c["name"] == "every replica sampled" && c["passed"] == true);
    assert!(sampled, "{soak:#}");
    assert_eq!(results["metrics"]["passed"], true, "{:#}", results["metrics"]);
    let latest = out.join("latest");
    let saved: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(latest.join("results.json")).expect("results.json"),
    )
    .expect("json");
    assert_eq!(saved["run"], results["run"]);
    let report = std::fs::read_to_string(latest.join("report.html")).expect("report.html");
    assert!(report.matches("<svg").count() >= 6 && !report.contains("http"), "self-contained");
    assert!(report.contains("Resident memory of each replica"), "soak's RSS is drawn");

    // A leaked reservation, and a tenant favoured beyond what the fairness checks assume.
    let planted = |profiles: &[&str], fault: &str, checks: &[&str]| {
        let mut args = vec!["stress"];
        args.extend(profiles);
        args.extend(["--short", "--out", out_arg, fault]);
        let run = berth(api, login, &args);
        assert!(!run.ok, "{fault} must fail: {}", run.stdout);
        for check in checks {
            assert!(run.stdout.contains(&format!("[FAIL] {check}")), "{fault}: {}", run.stdout);
        }
    };
    planted(&["lifecycle", "soak"], "--plant-leak", &["nothing orphaned", "no accounting drift"]);
    planted(&["backlog", "mixed"], "--plant-unfair", &["fair order", "short jobs' p95 wait"]);

    // `berth bench` with the replicas' metrics divides their CPU time and its own by the
    // operations it ran; a metrics address that does not answer is named, not skipped.
    let metrics_arg = metrics.join(",");
    let bench_args = ["bench", "--clients", "2", "--duration", "1", "--json", "--metrics"];
    let run = berth(api, login, &[&bench_args[..], &[metrics_arg.as_str()]].concat());
    assert!(run.ok, "bench failed: {}\n{}", run.stdout, run.stderr);
    let bench: serde_json::Value = serde_json::from_str(&run.stdout).expect("json");
    let counts: u64 =
        bench["ops"].as_array().expect("ops").iter().filter_map(|o| o["count"].as_u64()).sum();
    let cpu = &bench["cpu_per_op"];
    assert!(counts > 0 && cpu["operations"] == counts, "{bench:#}");
    let part = |name: &str| cpu[name].as_u64().expect("µs");
    assert!(
        part("replicas_us") > 0 && part("total_us") == part("replicas_us") + part("bench_us"),
        "{bench:#}"
    );
    let nobody = format!("http://127.0.0.1:{}/metrics", free_base(1));
    let run = berth(api, login, &[&bench_args[..], &[nobody.as_str()]].concat());
    assert!(!run.ok && run.stderr.contains(&nobody), "{}", run.stderr);

    // Last: they kill replicas (their metrics counters restart). A profile's watch resumes on
    // another replica when the one it follows dies: replica 1, the first endpoint, is killed
    // while `mixed` runs (its watcher releases every placement, so a stream that ended would
    // leave short jobs unplaced and fail the profile).
    let mut mixed = cli(api, login)
        .args(["stress", "mixed", "--short", "--out", out_arg])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("berth stress runs");
    let progress = BufReader::new(mixed.stderr.take().expect("stderr"));
    let (said, hear) = mpsc::channel();
    std::thread::spawn(move || {
        for line in progress.lines().map_while(Result::ok) {
            let _ = said.send(line);
        }
    });
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let line = hear.recv_timeout(until.saturating_duration_since(Instant::now()));
        let line = line.expect("mixed reports its progress");
        if line.trim_start().starts_with("mixed") && line.contains(" 2 s ") {
            break;
        }
    }
    kill_replica(&cluster, 1);
    let out = mixed.wait_with_output().expect("berth stress ends");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr: Vec<String> = hear.try_iter().collect();
    let passed = stdout.lines().any(|l| l.starts_with("mixed") && l.contains(" pass "));
    assert!(
        out.status.success() && passed,
        "mixed failed across a kill: {stdout}\n{}",
        stderr.join("\n")
    );

    // Chaos kills replicas itself.
    let data_arg = data.to_str().expect("utf-8 path");
    let chaos = berth(
        api,
        login,
        &["stress", "chaos", "--short", "--json", "--out", out_arg, "--cluster-dir", data_arg],
    );
    assert!(chaos.ok, "chaos failed: {}\n{}", chaos.stdout, chaos.stderr);
    let results: serde_json::Value = serde_json::from_str(&chaos.stdout).expect("json");
    let faults: Vec<&str> = results["profiles"][0]["faults"]
        .as_array()
        .expect("faults")
        .iter()
        .filter_map(|f| f["name"].as_str())
        .collect();
    // A partition needs root and iptables: CI has both (`.ci/run` installs iptables and sets
    // BERTH_REQUIRE_PARTITIONS).
    let partitions = Command::new("iptables")
        .args(["-w", "-n", "-L", "INPUT"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        partitions || std::env::var_os("BERTH_REQUIRE_PARTITIONS").is_none(),
        "CI must partition replicas: iptables is missing or refused"
    );
    let expected = if partitions { 5 } else { 4 };
    assert_eq!(faults.len(), expected, "{faults:?}");
    assert!(faults[0].starts_with("kill leader"), "{faults:?}");
    assert_eq!(faults[expected - 1], "worker w0 dies", "{faults:?}");
    if partitions {
        assert!(faults[3].starts_with("partition leader"), "{faults:?}");
        // Healed: the rules are gone.
        let rules = Command::new("iptables").args(["-w", "-S"]).output().expect("iptables");
        let rules = String::from_utf8_lossy(&rules.stdout).into_owned();
        assert!(!rules.contains("BERTH-CHAOS"), "{rules}");
    }
    drop(cluster);
}

/// The web console in a real browser (headless Chromium over WebDriver) against `berth up`: a
/// tenant signs in and sees only its own tenant; its queued placement is placed on the page
/// within 2 s of a Release made elsewhere, with no reload; revoking its token signs the tab
/// out; the operator's page, open on a follower, names a new leader after the leader is
/// killed. Screenshots of each view go to the test's output directory. Skipped, saying so,
/// where Chromium is not installed; CI installs it and must run it (`BERTH_REQUIRE_BROWSER`).
#[test]
fn the_console_in_a_browser() {
    let browser = match webdriver::Browser::start(free_base(1)) {
        Ok(browser) => browser,
        Err(why) if std::env::var_os("BERTH_REQUIRE_BROWSER").is_none() => {
            eprintln!("skipped: {why}");
            return;
        }
        Err(why) => panic!("CI must run the browser test: {why}"),
    };
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots");
    std::fs::create_dir_all(&shots).expect("screenshot directory");
    let tmp = tempfile::tempdir().expect("temp dir");
    let data = tmp.path().join("berth-data");
    let peer = free_base(6);
    let api = peer + 3;
    let cluster = up(&data, peer, api);
    let admin = &Login::of_up(&data);
    for tenant in ["a", "b"] {
        ok(api, admin, &["tenant", "create", tenant]);
    }
    ok(api, admin, &["worker", "register", "w1", "--cpu", "1", "--memory-mib", "1024"]);
    ok(api, admin, &["place", "a", "a-run", "--cpu", "1", "--memory-mib", "64"]);
    let queued =
        ok(api, admin, &["place", "b", "b-wait", "--cpu", "0.5", "--memory-mib", "64", "--queue"]);
    assert!(queued.contains("wait_reason"), "{queued}");
    ok(api, admin, &["place", "a", "a-wait", "--cpu", "0.5", "--memory-mib", "64", "--queue"]);
    let issued = ok(api, admin, &["token", "issue", "a", "web", "--json"]);
    let issued: serde_json::Value = serde_json::from_str(&issued).expect("json");
    let token = issued["token"].as_str().expect("a token").to_owned();

    // A tenant signs in: its own page, its queued placement, nothing of b's.
    let leader = leader(api, admin);
    let console = |id: u64| cluster.consoles[usize::try_from(id - 1).expect("an index")].clone();
    browser.goto(&format!("{}/", console(leader)));
    assert!(browser.url().ends_with("/sign-in"), "{}", browser.url());
    browser.type_into("#token", &token);
    browser.click("button[type=submit]");
    let page = browser.wait_text("main", Duration::from_secs(10), |t| t.contains("Waiting (1)"));
    assert!(browser.url().ends_with("/tenants/a"), "{}", browser.url());
    assert!(page.contains("a-run") && page.contains("a-wait"), "{page}");
    assert!(!page.contains("b-wait"), "another tenant's placement shows: {page}");
    browser.screenshot(&shots.join("tenant.png"));

    // A Release elsewhere: the page shows a-wait placed within 2 s, without a reload.
    ok(api, admin, &["release", "a", "a-run"]);
    let released = Instant::now();
    let page = browser.wait_text("main", Duration::from_secs(10), |t| t.contains("Nothing waits."));
    assert!(released.elapsed() <= Duration::from_secs(2), "took {:?}", released.elapsed());
    assert!(page.contains("a-wait") && !page.contains("a-run"), "{page}");
    browser.screenshot(&shots.join("tenant-live.png"));

    // Its leases with their fencing tokens, counting down; a queued placement explained by a
    // dry run, and cancelled from the keyboard alone.
    ok(api, admin, &["lease", "acquire", "a", "deploy", "--holder", "ci-1", "--ttl-ms", "600000"]);
    ok(api, admin, &["place", "a", "a-later", "--cpu", "1", "--memory-mib", "64", "--queue"]);
    let page = browser.wait_text("main", Duration::from_secs(10), |t| {
        t.contains("Waiting (1)") && t.contains("deploy")
    });
    assert!(page.contains("ci-1") && page.contains("a-later"), "{page}");
    let left = browser.text(".countdown");
    browser.wait_text(".countdown", Duration::from_secs(5), |t| t != left);
    browser.screenshot(&shots.join("tenant-queue-and-leases.png"));
    browser.click("a[href='/tenants/a/queue/a-later']");
    let why = browser.wait_text("main", Duration::from_secs(10), |t| t.contains("placed now"));
    assert!(why.contains("NO_CAPACITY") && why.contains("insufficient_cpu"), "{why}");
    browser.screenshot(&shots.join("explain.png"));
    browser.goto(&format!("{}/tenants/a", console(leader)));
    browser.wait_text("main", Duration::from_secs(10), |t| t.contains("Waiting (1)"));
    let cancel = "form[action='/tenants/a/queue/a-later/cancel'] button";
    for _ in 0..40 {
        if browser.focused(cancel) {
            break;
        }
        browser.press(webdriver::TAB);
    }
    assert!(browser.focused(cancel), "Cancel is reached with Tab");
    browser.press(webdriver::ENTER);
    browser.wait_text("main", Duration::from_secs(10), |t| t.contains("Nothing waits."));
    assert!(browser.url().ends_with("/tenants/a#waiting"), "{}", browser.url());
    browser.goto(&format!("{}/tenants/a/usage", console(leader)));
    browser.wait_text("main", Duration::from_secs(10), |t| t.contains("This month so far"));
    browser.screenshot(&shots.join("usage.png"));
    browser.goto(&format!("{}/tenants/a/activity?kind=LEASE_GRANTED", console(leader)));
    let events = browser.wait_text("tbody", Duration::from_secs(10), |t| t.contains("deploy"));
    assert!(!events.contains("PLACED"), "filtered by kind: {events}");
    browser.screenshot(&shots.join("events.png"));
    browser.goto(&format!("{}/tenants/a", console(leader)));
    browser.wait_text("main", Duration::from_secs(10), |t| t.contains("Nothing waits."));

    // Revoking the token signs the tab out.
    ok(api, admin, &["token", "revoke", "a", "web"]);
    let until = Instant::now() + Duration::from_secs(10);
    while !browser.url().ends_with("/sign-in") {
        assert!(Instant::now() < until, "still signed in at {}", browser.url());
        std::thread::sleep(Duration::from_millis(50));
    }
    browser.screenshot(&shots.join("signed-out.png"));

    // The operator, on a follower's console, sees a new leader once the leader is killed.
    let follower = (1..=3).find(|id| *id != leader).expect("a follower");
    // `berth console` signs the browser in with a one-time link (the token is not typed).
    let printed = ok(api, admin, &["console", "--url", &console(follower)]);
    let link = printed.lines().map(str::trim).find(|l| l.starts_with("https://"));
    let link = link.unwrap_or_else(|| panic!("a link: {printed}"));
    assert!(link.contains("/sign-in/link?code=") && !link.contains(&admin.token), "{link}");
    browser.goto(link);
    browser.wait_text("main", Duration::from_secs(10), |t| t.contains("Sign in as operator"));
    browser.click("button[type=submit]");
    let was = format!("Leader: replica {leader},");
    let page = browser.wait_text("main", Duration::from_secs(10), |t| t.contains(&was));
    assert!(page.contains("w1") && page.contains("Tenants (2)"), "{page}");
    browser.screenshot(&shots.join("operator.png"));
    kill_replica(&cluster, leader);
    let page = browser.wait_text("main", Duration::from_secs(30), |t| {
        t.contains("Leader: replica ") && !t.contains(&was)
    });
    assert!(!page.contains(&was), "{page}");
    browser.screenshot(&shots.join("operator-new-leader.png"));
    eprintln!("screenshots: {}", shots.display());
}
