//! A Berth server: one replica plus the gRPC server on its peer port.
//!
//! All IO comes from the caller: the incoming connection stream, the connector to peers, the
//! clock and the storage. Production passes TCP and the system clock; tests pass `127.0.0.1:0`
//! listeners; the simulation passes `turmoil::net` and simulated time.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_stream::{Stream, StreamExt};
use tonic::transport::server::Connected;

use crate::api::connection::ApiStream;
use crate::api::Api;
use crate::clock::Clock;
use crate::network::Connect;
use crate::raft::replica::{Replica, ReplicaOptions};
use crate::raft::types::ReplicaId;
use crate::scheduler::TokenHash;
use crate::storage::{LogStore, SnapshotStore};

/// How long a stopping server waits for open connections to close.
const SERVE_DRAIN: std::time::Duration = std::time::Duration::from_secs(2);

/// Where a replica keeps its log and snapshot.
pub struct Storage {
    pub log: LogStore,
    pub snapshots: SnapshotStore,
}

impl Storage {
    /// Raft log in `<dir>/log`, snapshot file in `<dir>/snapshot`.
    pub fn open_dir(dir: &Path) -> std::io::Result<Storage> {
        Ok(Storage {
            log: LogStore::open_dir(&dir.join("log"))?,
            snapshots: SnapshotStore::Dir(dir.join("snapshot")),
        })
    }
}

/// Where the replica listens: the peer port, and optionally the public API port with the
/// hash of the admin token.
pub struct Listeners<I> {
    pub peer: I,
    pub api: Option<(I, TokenHash)>,
}

/// A running server; `stop` shuts it down gracefully.
pub struct Server {
    pub replica: Replica,
    stop_serving: watch::Sender<()>,
    serving: Vec<JoinHandle<Result<(), tonic::transport::Error>>>,
    fail_stop_guard: JoinHandle<()>,
}

impl Server {
    /// Starts the replica, serves its peer port (and the public API, if given a listener). With
    /// `bootstrap`, a replica whose storage is new initialises the cluster with those members;
    /// a replica that already belongs to a cluster never re-initialises.
    pub async fn start<I, IO, IE>(
        options: ReplicaOptions,
        storage: Storage,
        clock: Arc<dyn Clock>,
        connect: Connect,
        listeners: Listeners<I>,
        bootstrap: Option<BTreeMap<ReplicaId, String>>,
    ) -> anyhow::Result<Server>
    where
        I: Stream<Item = Result<IO, IE>> + Send + 'static,
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Connected + Unpin + Send + 'static,
        IO::ConnectInfo: Clone + Send + Sync + 'static,
        IE: Into<Box<dyn std::error::Error + Send + Sync>> + std::fmt::Display + Send + 'static,
    {
        let replica = Replica::start(options, storage.log, storage.snapshots, clock, connect)
            .await
            .map_err(anyhow::Error::msg)?;
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
        let peer = replica.peer_service();
        let peer_stopped = stopped();
        serving.push(tokio::spawn(async move {
            peer.serve(listeners.peer, peer_stopped).await;
            Ok(())
        }));
        if let Some((incoming, admin)) = listeners.api {
            let routes =
                Api::new(replica.clone(), admin).routes().map_err(|e| anyhow::anyhow!(e))?;
            serving.push(tokio::spawn(
                tonic::transport::Server::builder()
                    .add_routes(routes)
                    .serve_with_incoming_shutdown(
                        incoming.map(|io| io.map(|io| ApiStream::new(Box::new(io)))),
                        stopped(),
                    ),
            ));
        }
        if let Some(members) = bootstrap {
            if replica.initialize(members).await.map_err(anyhow::Error::msg)? {
                tracing::info!(replica = replica.id(), "initialised a new cluster");
            }
        }
        Ok(Server { replica, stop_serving, serving, fail_stop_guard })
    }

    /// Stops Raft, then the servers.
    pub async fn stop(self) {
        self.fail_stop_guard.abort();
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
