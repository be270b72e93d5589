//! Lease clients as processes of their own, so that the `pause` nemesis can SIGSTOP a client
//! while it holds a lease (the process pause of Kleppmann's fencing example, not a simulated
//! stall). The run starts each lease client as `jepsen --lease-client <spec>`; the client
//! writes every op as a JSON line on stdout, timed against the run's own zero, and the run
//! adopts them into its history. A client stops by itself at the end of the run, and is
//! killed if the run drops it.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::history::{unix_us, Op, Recorder, Type};
use crate::topology::Certificates;
use crate::workload::{client_loop, Shared, Workload};

/// What a client process needs to know (passed as JSON in one argument).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClientSpec {
    pub worker: u64,
    pub concurrency: u64,
    pub gap_ms: u64,
    pub seed: u64,
    pub endpoints: Vec<String>,
    pub token_file: std::path::PathBuf,
    /// The run's TLS files: the API's certificates are verified against its CA.
    pub certs: Certificates,
    /// The run's time zero and its end, in µs since the Unix epoch.
    pub start_unix_us: u64,
    pub until_unix_us: u64,
}

/// The client process itself: the lease workload until the run's end, ops on stdout.
pub async fn run_client(spec: &str) -> anyhow::Result<()> {
    let spec: ClientSpec = serde_json::from_str(spec).context("--lease-client spec")?;
    let token = std::fs::read_to_string(&spec.token_file)
        .with_context(|| format!("reading {}", spec.token_file.display()))?;
    let recorder = Recorder::stdout(spec.start_unix_us);
    let tls = spec.certs.client_security()?;
    let shared = Arc::new(Shared::new(spec.endpoints, token.trim().to_owned(), tls, recorder, 0));
    let left = spec.until_unix_us.saturating_sub(unix_us());
    let until = Instant::now() + Duration::from_micros(left);
    let gap = Duration::from_millis(spec.gap_ms);
    client_loop(shared, Workload::Lease, spec.worker, spec.concurrency, gap, spec.seed, until).await
}

/// Starts a client process and adopts its ops into `shared`'s history until it exits.
/// Its pid is in `shared.client_pids` while it runs.
pub fn spawn(
    shared: Arc<Shared>,
    spec: &ClientSpec,
) -> anyhow::Result<JoinHandle<anyhow::Result<()>>> {
    let exe = std::env::current_exe().context("the jepsen executable")?;
    let mut child = tokio::process::Command::new(exe)
        .arg("--lease-client")
        .arg(serde_json::to_string(spec)?)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .context("starting a lease client process")?;
    let pid = child.id().context("a started client has a pid")?;
    let stdout = child.stdout.take().context("the client's stdout is piped")?;
    shared.client_pids.lock().unwrap_or_else(|e| e.into_inner()).insert(pid, spec.worker);
    let worker = spec.worker;
    Ok(tokio::spawn(async move {
        let mut lines = BufReader::new(stdout).lines();
        let mut ids = BTreeMap::new();
        while let Some(line) = lines.next_line().await? {
            let op: Op = serde_json::from_str(&line)
                .with_context(|| format!("an op from lease client {worker}: {line}"))?;
            match shared.recorder.adopt(&mut ids, op) {
                Some(Type::Invoke) | None => {}
                Some(kind) => shared.count(kind),
            }
        }
        let status = child.wait().await?;
        shared.client_pids.lock().unwrap_or_else(|e| e.into_inner()).remove(&pid);
        anyhow::ensure!(status.success(), "lease client {worker} exited with {status}");
        Ok(())
    }))
}
