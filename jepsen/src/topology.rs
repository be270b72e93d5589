//! The test network and the replica processes.
//!
//! One network namespace per replica plus one for the harness's clients (`-c`), each with a
//! veth pair to a bridge that lives in its own hub namespace (`-hub`). Nothing is added to the
//! host's namespace: no interface, address, route or firewall rule. Addresses are private
//! (10.77.0.0/24) and exist only inside these namespaces. Every name starts with
//! `bjep<pid>-`, the pid of the run that owns it, so leftovers of a crashed run are recognised
//! (their owner is gone) and removed by the next run.
//!
//! `Net` and `Cluster` clean up on drop: every process in the namespaces is SIGKILLed and the
//! namespaces deleted (which deletes the veths and the bridge with them).
//!
//! Replicas run with TLS on both ports: `Certificates` makes a CA for the run and a
//! certificate per replica (naming its id and its address, which API clients dial).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{bail, Context};

/// Every namespace this harness creates starts with this.
pub const PREFIX: &str = "bjep";
pub const SUBNET: &str = "10.77.0";
pub const CLIENT_HOST: u64 = 100;
pub const PEER_PORT: u16 = 7401;
pub const API_PORT: u16 = 7501;
/// Most replicas (addresses .1 to .9).
pub const REPLICAS_MAX: u64 = 9;

/// True when running with effective uid 0 (read from /proc, no unsafe code).
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// Runs a command, failing with its stderr.
pub fn sh(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", args.join(" ")))?;
    if !out.status.success() {
        bail!("`{}` failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `args` inside network namespace `ns` (`ip netns exec`).
pub fn sh_in(ns: &str, args: &[&str]) -> anyhow::Result<String> {
    sh(&[&["ip", "netns", "exec", ns], args].concat())
}

/// `sh_in`, for a command whose failure does not matter.
pub fn sh_quiet_in(ns: &str, args: &[&str]) {
    sh_quiet(&[&["ip", "netns", "exec", ns], args].concat());
}

/// Runs a command whose failure does not matter (cleanup, healing what may not be broken).
pub fn sh_quiet(args: &[&str]) {
    let _ = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// The tools the harness drives, with a hint if one is missing.
pub fn check_tools() -> anyhow::Result<()> {
    for (tool, hint) in
        [("ip", "apt-get install -y iproute2"), ("iptables", "apt-get install -y iptables")]
    {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
            .unwrap_or(false);
        if !found {
            bail!("`{tool}` is not installed: {hint}");
        }
    }
    Ok(())
}

pub fn replica_ip(id: u64) -> String {
    format!("{SUBNET}.{id}")
}

pub fn namespaces() -> Vec<String> {
    sh(&["ip", "netns", "list"])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

/// SIGKILLs every process in the run's namespaces and deletes them.
pub fn remove_run(run: &str) {
    let mine: Vec<String> =
        namespaces().into_iter().filter(|n| n.starts_with(&format!("{run}-"))).collect();
    for ns in &mine {
        for pid in sh(&["ip", "netns", "pids", ns]).unwrap_or_default().split_whitespace() {
            sh_quiet(&["kill", "-CONT", pid]);
            sh_quiet(&["kill", "-KILL", pid]);
        }
    }
    for ns in &mine {
        sh_quiet(&["ip", "netns", "del", ns]);
    }
}

/// True if `pid` is a live (not zombie) `jepsen` process: the owner of a run's namespaces.
fn owner_alive(pid: &str) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return false;
    };
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_owned())
            .unwrap_or_default()
    };
    field("Name:") == "jepsen" && !field("State:").starts_with('Z')
}

/// Removes namespaces (and their processes) left by runs whose process is gone.
pub fn remove_stale() -> Vec<String> {
    let mut removed = Vec::new();
    for ns in namespaces() {
        let Some(rest) = ns.strip_prefix(PREFIX) else { continue };
        let Some((pid, _)) = rest.split_once('-') else { continue };
        if pid.parse::<u32>().is_err() {
            continue;
        }
        let run = format!("{PREFIX}{pid}");
        if !owner_alive(pid) && !removed.contains(&run) {
            remove_run(&run);
            removed.push(run);
        }
    }
    removed
}

/// The namespaces and the bridge of one run; removed on drop.
pub struct Net {
    pub run: String,
    pub replicas: u64,
}

impl Net {
    pub fn ns(run: &str, id: u64) -> String {
        format!("{run}-n{id}")
    }
    pub fn client_ns(run: &str) -> String {
        format!("{run}-c")
    }

    /// Creates the hub with its bridge, and one namespace per replica plus the clients'.
    pub fn create(replicas: u64) -> anyhow::Result<Net> {
        anyhow::ensure!(
            (1..=REPLICAS_MAX).contains(&replicas),
            "--replicas must be 1..={REPLICAS_MAX}"
        );
        let run = format!("{PREFIX}{}", std::process::id());
        remove_run(&run);
        let net = Net { run: run.clone(), replicas };
        let hub = format!("{run}-hub");
        sh(&["ip", "netns", "add", &hub])?;
        sh(&["ip", "-n", &hub, "link", "add", "br0", "type", "bridge"])?;
        sh(&["ip", "-n", &hub, "link", "set", "br0", "up"])?;
        let hosts = (1..=replicas)
            .map(|i| (Net::ns(&run, i), i))
            .chain([(Net::client_ns(&run), CLIENT_HOST)]);
        for (ns, host) in hosts {
            let veth = format!("v{host}");
            sh(&["ip", "netns", "add", &ns])?;
            sh(&[
                "ip", "-n", &hub, "link", "add", &veth, "type", "veth", "peer", "name", "eth0",
                "netns", &ns,
            ])?;
            sh(&["ip", "-n", &hub, "link", "set", &veth, "master", "br0", "up"])?;
            sh(&["ip", "-n", &ns, "link", "set", "lo", "up"])?;
            sh(&["ip", "-n", &ns, "addr", "add", &format!("{SUBNET}.{host}/24"), "dev", "eth0"])?;
            sh(&["ip", "-n", &ns, "link", "set", "eth0", "up"])?;
        }
        Ok(net)
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        remove_run(&self.run);
    }
}

/// Creates `path` owner-only (0600) with `contents`, replacing any file there: never readable
/// by others, not even for an instant.
pub fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("removing {}", path.display()))
        }
        _ => {}
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut file| file.write_all(contents.as_bytes()))
        .with_context(|| format!("writing {}", path.display()))
}

/// The run's TLS files in one directory: the CA's certificate (`ca.pem`; its key is never
/// written) and each replica's certificate and key (`replica-N.pem`, `replica-N-key.pem`).
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Certificates {
    pub dir: PathBuf,
}

impl Certificates {
    /// A new CA, and for replicas `1..=n` a certificate naming the id and `replica_ip(id)`.
    pub fn create(dir: &Path, n: u64) -> anyhow::Result<Certificates> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let certs = Certificates { dir: dir.to_owned() };
        let ca = berth::tls::Authority::generate()?;
        for id in 1..=n {
            let pem = ca.replica(id, &[replica_ip(id)])?;
            let (cert, key) = certs.replica(id);
            write_private(&key, &pem.key)?;
            std::fs::write(&cert, &pem.cert)
                .with_context(|| format!("writing {}", cert.display()))?;
        }
        std::fs::write(certs.ca(), ca.cert_pem())
            .with_context(|| format!("writing {}", certs.ca().display()))?;
        Ok(certs)
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// Replica `id`'s certificate and key.
    pub fn replica(&self, id: u64) -> (PathBuf, PathBuf) {
        (self.dir.join(format!("replica-{id}.pem")), self.dir.join(format!("replica-{id}-key.pem")))
    }

    /// How the harness's clients reach the API: TLS, trusting the run's CA.
    pub fn client_security(&self) -> anyhow::Result<berth::client::ClientSecurity> {
        Ok(berth::client::ClientSecurity::Tls(berth::client::ClientTls::load(&self.ca(), None)?))
    }
}

/// One `berth server` process.
pub struct Replica {
    pub id: u64,
    pub ns: String,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    pub child: Option<Child>,
    pub paused: bool,
    pub clock_offset_ms: i64,
    /// Started once already (its storage is initialised).
    pub started: bool,
}

impl Replica {
    /// Where the replica reads its clock offset from (while it runs, too).
    pub fn clock_offset_file(&self) -> PathBuf {
        self.data_dir.with_file_name("clock-offset-ms")
    }

    /// Moves the running replica's clock by `offset_ms` from true time (0 to heal).
    pub fn set_clock_offset(&mut self, offset_ms: i64) -> anyhow::Result<()> {
        std::fs::write(self.clock_offset_file(), offset_ms.to_string())?;
        self.clock_offset_ms = offset_ms;
        Ok(())
    }
}

/// The replica processes of one run; all SIGKILLed on drop.
pub struct Cluster {
    pub replicas: BTreeMap<u64, Replica>,
    pub berth: PathBuf,
    pub token_file: PathBuf,
    pub certs: Certificates,
    pub members: String,
}

impl Cluster {
    pub fn new(
        run: &str,
        n: u64,
        berth: &Path,
        dir: &Path,
        token_file: &Path,
        certs: Certificates,
    ) -> Cluster {
        let mut replicas = BTreeMap::new();
        for id in 1..=n {
            let rdir = dir.join(format!("replica-{id}"));
            replicas.insert(
                id,
                Replica {
                    id,
                    ns: Net::ns(run, id),
                    data_dir: rdir.join("data"),
                    log: rdir.join("server.log"),
                    child: None,
                    paused: false,
                    clock_offset_ms: 0,
                    started: false,
                },
            );
        }
        let members = (1..=n)
            .map(|id| format!("{id}={}:{PEER_PORT}", replica_ip(id)))
            .collect::<Vec<_>>()
            .join(",");
        Cluster {
            replicas,
            berth: berth.to_owned(),
            token_file: token_file.to_owned(),
            certs,
            members,
        }
    }

    pub fn ids(&self) -> Vec<u64> {
        self.replicas.keys().copied().collect()
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.replicas.keys().map(|id| format!("{}:{API_PORT}", replica_ip(*id))).collect()
    }

    pub fn running(&self, id: u64) -> bool {
        self.replicas.get(&id).is_some_and(|r| r.child.is_some())
    }

    /// Starts replica `id` (on its existing data directory, if any). Replica 1 bootstraps the
    /// cluster on its very first start only.
    pub fn start(&mut self, id: u64) -> anyhow::Result<()> {
        let members = self.members.clone();
        let (cert, key) = self.certs.replica(id);
        let r = self.replicas.get_mut(&id).context("no such replica")?;
        if r.child.is_some() {
            return Ok(());
        }
        std::fs::create_dir_all(&r.data_dir)?;
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&r.log)?;
        let ip = replica_ip(id);
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &r.ns])
            .arg(&self.berth)
            .args(["server", "--id", &id.to_string()])
            .args(["--peer-listen", &format!("{ip}:{PEER_PORT}")])
            .args(["--api-listen", &format!("{ip}:{API_PORT}")])
            .arg("--admin-token-file")
            .arg(&self.token_file)
            .arg("--data-dir")
            .arg(&r.data_dir)
            .arg("--ca-file")
            .arg(self.certs.ca())
            .arg("--cert-file")
            .arg(cert)
            .arg("--key-file")
            .arg(key)
            // Small snapshot threshold: restarted replicas catch up by snapshot too.
            .args(["--snapshot-logs", "500", "--snapshot-keep-logs", "50"])
            .arg("--test-clock-offset-file")
            .arg(r.clock_offset_file());
        if id == 1 && !r.started {
            cmd.args(["--bootstrap", "--initial-members", &members]);
        }
        let child = cmd
            .env("RUST_LOG", "info,openraft=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting berth server")?;
        r.child = Some(child);
        r.started = true;
        r.paused = false;
        Ok(())
    }

    /// SIGKILL (no shutdown, no flush beyond what the replica already did).
    pub fn kill(&mut self, id: u64) {
        if let Some(r) = self.replicas.get_mut(&id) {
            if let Some(mut child) = r.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
            r.paused = false;
        }
    }

    /// SIGSTOP (`true`) or SIGCONT (`false`).
    pub fn pause(&mut self, id: u64, stop: bool) {
        if let Some(r) = self.replicas.get_mut(&id) {
            if let Some(child) = &r.child {
                let pid = child.id().to_string();
                sh_quiet(&["kill", if stop { "-STOP" } else { "-CONT" }, &pid]);
                r.paused = stop;
            }
        }
    }

    /// Replicas whose process exited by itself (a crash), with their exit status.
    pub fn exited(&mut self) -> Vec<(u64, String)> {
        let mut out = Vec::new();
        for r in self.replicas.values_mut() {
            if let Some(child) = r.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    out.push((r.id, status.to_string()));
                    r.child = None;
                }
            }
        }
        out
    }

    /// Lines of the replicas' logs that show a panic.
    pub fn panics(&self) -> Vec<String> {
        let mut out = Vec::new();
        for r in self.replicas.values() {
            let text = std::fs::read_to_string(&r.log).unwrap_or_default();
            out.extend(
                text.lines()
                    .filter(|l| l.contains("panicked"))
                    .map(|l| format!("replica {}: {l}", r.id)),
            );
        }
        out
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let ids = self.ids();
        for id in ids {
            self.pause(id, false);
            self.kill(id);
        }
    }
}
