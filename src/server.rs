//! A Berth server: one replica plus the gRPC server on its peer port.
//!
//! All IO comes from the caller: the incoming connection stream, the connector to peers, the
//! clock and the storage. Production passes TCP and the system clock; tests pass `127.0.0.1:0`
//! listeners; the simulation passes `turmoil::net` and simulated time.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_stream::Stream;
use tonic::transport::server::Connected;

use crate::clock::Clock;
use crate::network::Connect;
use crate::raft::replica::{Replica, ReplicaOptions};
use crate::raft::types::ReplicaId;
use crate::storage::{LogStore, SnapshotStore};

/// Where a replica keeps its log and snapshot.
pub struct Storage {
    pub log: LogStore,
    pub snapshots: SnapshotStore,
}

impl Storage {
    /// sled log in `<dir>/log`, snapshot file in `<dir>/snapshot`.
    pub fn open_dir(dir: &Path) -> std::io::Result<Storage> {
        Ok(Storage {
            log: LogStore::open_sled(&dir.join("log"))?,
            snapshots: SnapshotStore::Dir(dir.join("snapshot")),
        })
    }
}

/// A running server; `stop` shuts it down gracefully.
pub struct Server {
    pub replica: Replica,
    stop_serving: Option<oneshot::Sender<()>>,
    serving: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl Server {
    /// Starts the replica and serves its peer RPC on `peer_incoming`. With `bootstrap`, a
    /// replica whose storage is new initialises the cluster with those members; a replica that
    /// already belongs to a cluster never re-initialises.
    pub async fn start<I, IO, IE>(
        options: ReplicaOptions,
        storage: Storage,
        clock: Arc<dyn Clock>,
        connect: Connect,
        peer_incoming: I,
        bootstrap: Option<BTreeMap<ReplicaId, String>>,
    ) -> anyhow::Result<Server>
    where
        I: Stream<Item = Result<IO, IE>> + Send + 'static,
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Connected + Unpin + Send + 'static,
        IO::ConnectInfo: Clone + Send + Sync + 'static,
        IE: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
    {
        let replica = Replica::start(options, storage.log, storage.snapshots, clock, connect)
            .await
            .map_err(anyhow::Error::msg)?;
        let (stop_serving, stopped) = oneshot::channel::<()>();
        let service = replica.peer_service().into_server();
        let serving = tokio::spawn(
            tonic::transport::Server::builder().add_service(service).serve_with_incoming_shutdown(
                peer_incoming,
                async {
                    let _ = stopped.await;
                },
            ),
        );
        if let Some(members) = bootstrap {
            if replica.initialize(members).await.map_err(anyhow::Error::msg)? {
                tracing::info!(replica = replica.id(), "initialised a new cluster");
            }
        }
        Ok(Server { replica, stop_serving: Some(stop_serving), serving })
    }

    /// Stops Raft, then the peer server.
    pub async fn stop(mut self) {
        self.replica.shutdown().await;
        if let Some(stop) = self.stop_serving.take() {
            let _ = stop.send(());
        }
        match self.serving.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "peer server stopped with an error"),
            Err(e) => tracing::warn!(error = %e, "peer server task failed"),
        }
    }
}
