//! A Berth server: one replica, its peer port (framed messages, mutual TLS between members)
//! and, optionally, its public API port (gRPC over TLS).
//!
//! All IO comes from the caller: the incoming connection stream, the connector to peers, the
//! clock and the storage. Production passes TCP and the system clock; tests pass `127.0.0.1:0`
//! listeners; the simulation passes `turmoil::net` and simulated time.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::Stream;

use crate::api::connection::ApiStream;
use crate::api::observe::ObserveLayer;
use crate::api::Api;
use crate::clock::Clock;
use crate::metrics::Metrics;
use crate::network::{self, Connect};
use crate::raft::replica::{Replica, ReplicaOptions};
use crate::raft::state_machine::SnapshotSummary;
use crate::raft::types::ReplicaId;
use crate::scheduler::TokenHash;
use crate::storage::{LogStore, SnapshotStore};
use crate::tls::{Admission, ApiTls, Identity, PeerTls};
use crate::usage::UsageLocation;

/// How long a stopping server waits for open connections to close.
const SERVE_DRAIN: std::time::Duration = std::time::Duration::from_secs(2);

/// Where a replica keeps its log and snapshot.
pub struct Storage {
    pub log: LogStore,
    pub snapshots: SnapshotStore,
    pub usage: UsageLocation,
}

impl Storage {
    /// Raft log in `<dir>/log`, snapshot file in `<dir>/snapshot`, usage store in `<dir>/usage`.
    pub fn open_dir(dir: &Path) -> std::io::Result<Storage> {
        Ok(Storage {
            log: LogStore::open_dir(&dir.join("log"))?,
            snapshots: SnapshotStore::Dir(dir.join("snapshot")),
            usage: UsageLocation::Dir(dir.join("usage")),
        })
    }
}

/// Makes `dir` the storage of replica `id` of a new cluster of `members` (id → peer address)
/// holding the state a backup file saved: its snapshot, with the membership replaced by
/// `members`, and a vote in the snapshot's term (a new leader's entries then come after the
/// snapshot's; without it openraft's first leader would be elected in term 1 and panic on a
/// log that ends in a later term). `dir` must be new (missing or empty). The backup is checked
/// whole (magic, length, SHA-256, encoding, format version, the state's own checksum) before
/// anything is written, and the storage is built in `<dir>.restoring` and renamed into place,
/// so a restore that fails leaves `dir` as it was. Start each replica as usual afterwards,
/// without `--bootstrap`.
pub async fn restore(
    dir: &Path,
    id: ReplicaId,
    backup: &[u8],
    members: &BTreeMap<ReplicaId, String>,
) -> anyhow::Result<SnapshotSummary> {
    use anyhow::Context;
    use openraft::storage::RaftLogStorage;
    anyhow::ensure!(members.contains_key(&id), "replica {id} is not one of the members given");
    let exists = match std::fs::read_dir(dir) {
        Ok(mut entries) => {
            anyhow::ensure!(
                entries.next().is_none(),
                "{} is not empty: restore into a new directory",
                dir.display()
            );
            true
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(anyhow::anyhow!("reading {}: {e}", dir.display())),
    };
    let snapshot = crate::storage::snapshot_store::decode_backup(backup)?;
    let term = snapshot.meta.last_log_id.map(|l| l.leader_id.term);
    let restoring = crate::raft::state_machine::restore_check(snapshot, members)
        .map_err(|e| anyhow::anyhow!("the backup does not restore: {e}"))?;
    let name = dir.file_name().context("give the data directory by its path")?;
    let building = dir.with_file_name(format!("{}.restoring", name.to_string_lossy()));
    if building.exists() {
        // Left by a restore that stopped half-way.
        std::fs::remove_dir_all(&building)?;
    }
    let storage = Storage::open_dir(&building)?;
    if let Some(term) = term {
        let mut log = storage.log;
        log.save_vote(&openraft::Vote::new(term, id)).await?;
    }
    let summary = restoring.write(&storage.snapshots).map_err(anyhow::Error::msg)?;
    if exists {
        std::fs::remove_dir(dir)?;
    }
    std::fs::rename(&building, dir)?;
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::File::open(parent)?.sync_all()?;
    }
    Ok(summary)
}

/// Most API connections completing their TLS handshake at once; more wait to be accepted.
const API_HANDSHAKES_MAX: usize = 256;

/// How the server's ports are secured.
pub enum Security {
    /// Mutual TLS between replicas (certificates from `ca` that name a member), and TLS on the
    /// API, requiring client certificates from `api_client_ca` if given.
    Tls {
        ca: rustls::RootCertStore,
        identity: Identity,
        api_client_ca: Option<rustls::RootCertStore>,
    },
    /// Plaintext on both ports: anyone who reaches the peer port can act as a replica.
    Insecure,
}

/// Where the replica listens: the peer port, optionally the public API port with the hash of
/// the admin token, and optionally the metrics port (plaintext HTTP, `GET /metrics`).
pub struct Listeners<I> {
    pub peer: I,
    pub api: Option<(I, TokenHash)>,
    pub metrics: Option<I>,
    /// Optionally the web console (`console`), over the API's TLS; it needs the API.
    pub console: Option<I>,
    /// Tenants the metrics name; later ones are counted as `_other`
    /// (`api::observe::METRICS_TENANTS_DEFAULT`).
    pub metrics_tenants_max: usize,
}

/// A running server; `stop` shuts it down gracefully.
pub struct Server {
    pub replica: Replica,
    stop_serving: watch::Sender<()>,
    serving: Vec<JoinHandle<Result<(), tonic::transport::Error>>>,
    fail_stop_guard: JoinHandle<()>,
    admitting: JoinHandle<()>,
}

impl Server {
    /// Starts the replica, serves its peer port (and the public API, if given a listener). With
    /// `bootstrap`, a replica whose storage is new initialises the cluster with those members;
    /// a replica that already belongs to a cluster never re-initialises.
    #[allow(clippy::too_many_arguments)]
    pub async fn start<I, IO, IE>(
        options: ReplicaOptions,
        storage: Storage,
        clock: Arc<dyn Clock>,
        connect: Connect,
        security: Security,
        listeners: Listeners<I>,
        bootstrap: Option<BTreeMap<ReplicaId, String>>,
    ) -> anyhow::Result<Server>
    where
        I: Stream<Item = Result<IO, IE>> + Send + 'static,
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
        IE: std::fmt::Display + Send + 'static,
    {
        let admission = Admission::default();
        let (connect, peer_tls, api_tls, console_tls) = match security {
            Security::Tls { ca, identity, api_client_ca } => {
                let peer = PeerTls::new(ca, identity.clone(), admission.clone())?;
                let console = ApiTls::console(identity.clone(), api_client_ca.clone())?;
                let api = ApiTls::new(identity, api_client_ca)?;
                (peer.secure(connect), Some(peer), Some(api), Some(console))
            }
            Security::Insecure => {
                tracing::warn!(
                    replica = options.id,
                    "insecure: peer and API ports speak plaintext; anyone who can reach the \
                     peer port can act as a replica"
                );
                (connect, None, None, None)
            }
        };
        let (log, snapshots) = (storage.log.clone(), storage.snapshots.clone());
        let replica =
            Replica::start(options, storage.log, storage.snapshots, storage.usage, clock, connect)
                .await
                .map_err(anyhow::Error::msg)?;
        let metrics =
            Arc::new(Metrics::new(&replica, &log, snapshots, listeners.metrics_tenants_max));
        let admitting = tokio::spawn(admit_members(replica.clone(), admission));
        let fail_stop_guard = tokio::spawn(fail_stop_guard(replica.clone()));
        // One signal stops every server; a dropped sender stops them too, and so does a
        // fail-stop (in-process: the replica never serves again).
        let (stop_serving, stop) = watch::channel(());
        let fail_stop = replica.fail_stop().clone();
        let stopped = move || {
            let (mut stop, fail_stop) = (stop.clone(), fail_stop.clone());
            async move {
                tokio::select! {
                    _ = stop.changed() => {}
                    _ = fail_stop.stopped() => {}
                }
            }
        };
        let mut serving = Vec::new();
        let peer = network::serve(replica.clone(), listeners.peer, peer_tls, stopped());
        serving.push(tokio::spawn(async move {
            peer.await;
            Ok(())
        }));
        if let Some(incoming) = listeners.metrics {
            let serve = crate::metrics::serve(metrics.clone(), incoming, stopped());
            serving.push(tokio::spawn(async move {
                serve.await;
                Ok(())
            }));
        }
        if listeners.console.is_some() && listeners.api.is_none() {
            anyhow::bail!("the web console needs the API (its admin token and handlers)");
        }
        if let Some((incoming, admin)) = listeners.api {
            let api = Api::new(replica.clone(), admin);
            if let Some(incoming) = listeners.console {
                let tls = console_tls.is_some();
                let console = crate::console::Console::new(api.clone(), replica.clone(), tls);
                let serve = console.serve(accept_api(incoming, console_tls, stopped()), stopped());
                serving.push(tokio::spawn(async move {
                    serve.await;
                    Ok(())
                }));
            }
            let routes = api.routes().map_err(|e| anyhow::anyhow!(e))?;
            serving.push(tokio::spawn(
                tonic::transport::Server::builder()
                    .layer(ObserveLayer::new(metrics.requests()))
                    .add_routes(routes)
                    .serve_with_incoming_shutdown(
                        accept_api(incoming, api_tls, stopped()),
                        stopped(),
                    ),
            ));
        }
        if let Some(members) = bootstrap {
            if replica.initialize(members).await.map_err(anyhow::Error::msg)? {
                tracing::info!(replica = replica.id(), "initialised a new cluster");
            }
        }
        Ok(Server { replica, stop_serving, serving, fail_stop_guard, admitting })
    }

    /// Stops Raft, then the servers.
    pub async fn stop(self) {
        self.fail_stop_guard.abort();
        self.admitting.abort();
        self.replica.shutdown().await;
        let _ = self.stop_serving.send(());
        // Open client connections hold a graceful shutdown up; a client that keeps its
        // connection idle must not keep the replica running.
        let until = tokio::time::Instant::now() + SERVE_DRAIN;
        for mut serving in self.serving {
            match tokio::time::timeout_at(until, &mut serving).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => tracing::warn!(error = %e, "server stopped with an error"),
                Ok(Err(e)) => tracing::warn!(error = %e, "server task failed"),
                Err(_) => {
                    tracing::info!("closing client connections still open after {SERVE_DRAIN:?}");
                    serving.abort();
                }
            }
        }
    }
}

/// Turns a fatal Raft error (above all, a log or vote write that failed) into a fail-stop,
/// and stops Raft once the replica fail-stopped (in-process; a process has exited by then).
/// Ends when Raft stops normally.
async fn fail_stop_guard(replica: Replica) {
    let fail_stop = replica.fail_stop().clone();
    let mut metrics = replica.raft().metrics();
    let fatal = async {
        loop {
            if let Err(fatal) = &metrics.borrow_and_update().running_state {
                return match fatal {
                    openraft::error::Fatal::Stopped => None,
                    other => Some(other.to_string()),
                };
            }
            if metrics.changed().await.is_err() {
                return None;
            }
        }
    };
    tokio::select! {
        fatal = fatal => match fatal {
            Some(why) => fail_stop.stop(format!("Raft stopped on a fatal error: {why}")),
            None => return,
        },
        _ = fail_stop.stopped() => {}
    }
    replica.shutdown().await;
}

/// Keeps the peer port's admission equal to the replica's membership (voters and learners,
/// effective as soon as a change is in the log), from its first membership on.
async fn admit_members(replica: Replica, admission: Admission) {
    let mut metrics = replica.raft().metrics();
    let mut admitted = BTreeSet::new();
    loop {
        let members: BTreeSet<ReplicaId> = metrics
            .borrow_and_update()
            .membership_config
            .membership()
            .nodes()
            .map(|(id, _)| *id)
            .collect();
        if !members.is_empty() && members != admitted {
            tracing::info!(replica = replica.id(), ?members, "peer port admits");
            admission.set(members.clone());
            admitted = members;
        }
        if metrics.changed().await.is_err() {
            return;
        }
    }
}

/// The API connections `incoming` yields, each after its TLS handshake (done concurrently,
/// at most `API_HANDSHAKES_MAX` at once, each within `tls::HANDSHAKE_TIMEOUT`); one whose
/// handshake fails is dropped. Stops accepting when `stopped` resolves.
fn accept_api<I, IO, IE>(
    incoming: I,
    tls: Option<ApiTls>,
    stopped: impl std::future::Future<Output = ()> + Send + 'static,
) -> ReceiverStream<std::io::Result<ApiStream>>
where
    I: Stream<Item = Result<IO, IE>> + Send + 'static,
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    IE: std::fmt::Display + Send + 'static,
{
    let (accepted, connections) = mpsc::channel(64);
    tokio::spawn(async move {
        let handshakes = Arc::new(Semaphore::new(API_HANDSHAKES_MAX));
        let mut incoming = std::pin::pin!(incoming);
        let mut stopped = std::pin::pin!(stopped);
        loop {
            let Some(io) = network::accept(&mut incoming, &mut stopped, "API").await else {
                return;
            };
            let Some(tls) = &tls else {
                let connection = ApiStream::new(Box::new(io));
                if accepted.send(Ok(connection)).await.is_err() {
                    return;
                }
                continue;
            };
            let Ok(permit) = handshakes.clone().acquire_owned().await else { return };
            let (tls, accepted) = (tls.clone(), accepted.clone());
            tokio::spawn(async move {
                match tls.accept(io).await {
                    Ok(io) => {
                        let _ = accepted.send(Ok(ApiStream::new(Box::new(io)))).await;
                    }
                    Err(e) => tracing::debug!(error = %e, "API connection without a TLS handshake"),
                }
                drop(permit);
            });
        }
    });
    ReceiverStream::new(connections)
}
