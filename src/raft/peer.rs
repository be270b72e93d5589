//! Calls to another replica's peer port (`crate::network`): what each call sends and gets back,
//! typed. The receiving side is `Replica`'s `network::Handler`.
//!
//! Imports only `network`, `raft::types` and the core's query types, so `replica` can use it
//! without a cycle.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::network::{Connect, PeerClient, PeerError, Rpc};
use crate::raft::types::{BatchResult, LogId, Proposal, ReplicaId};
use crate::scheduler::{Answer, Query, UnixMillis};

/// Why a forwarded command or read could not be served by the replica it reached.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ForwardError {
    #[error("replica is not the leader (leader: {leader:?})")]
    NotLeader { leader: Option<(ReplicaId, String)> },
    #[error("replica could not serve the request: {0}")]
    Unavailable(String),
}

/// What a replica reports about itself and the cluster.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaStatus {
    pub id: ReplicaId,
    pub role: String,
    pub leader: Option<ReplicaId>,
    pub term: u64,
    pub last_log_index: Option<u64>,
    pub last_applied_index: Option<u64>,
    pub snapshot_index: Option<u64>,
    pub purged_index: Option<u64>,
    /// Voters and learners with their peer addresses.
    pub voters: BTreeMap<ReplicaId, String>,
    pub learners: BTreeMap<ReplicaId, String>,
    /// The last command index applied (the `log_index` clients see).
    pub applied_command_index: u64,
    /// Log time of the state machine.
    pub now_ms: u64,
    /// SHA-256 of the scheduler state, hex; equal on replicas at equal applied index.
    pub state_hash: String,
    /// ReadIndex rounds this replica has served as leader since it started (its own
    /// linearizable reads and its followers'), each confirmed by a quorum. A round that
    /// failed (no quorum in time) is not counted; its read tries again.
    pub read_indexes: u64,
}

/// Another replica, reached on its peer port; clones share its connections.
#[derive(Clone)]
pub struct Peer {
    client: PeerClient,
}

impl Peer {
    /// The replica at peer address `addr`; connections open when a call needs one.
    pub fn new(connect: &Connect, addr: &str) -> Peer {
        Peer { client: PeerClient::new(connect, addr) }
    }

    /// Asks the leader to propose `proposals`; the leader stamps the time.
    pub async fn propose(
        &self,
        proposals: &[Proposal],
        deadline: Duration,
    ) -> Result<Result<BatchResult, ForwardError>, PeerError> {
        self.client.call(Rpc::Propose, &proposals, deadline).await
    }

    /// The peer's status.
    pub async fn status(&self, deadline: Duration) -> Result<ReplicaStatus, PeerError> {
        self.client.call(Rpc::Status, &(), deadline).await
    }

    /// A read of the peer's local (possibly stale) state.
    pub async fn query(&self, query: &Query, deadline: Duration) -> Result<Answer, PeerError> {
        self.client.call(Rpc::Query, query, deadline).await
    }

    /// The peer's wall clock.
    pub async fn clock(&self, deadline: Duration) -> Result<UnixMillis, PeerError> {
        self.client.call(Rpc::Clock, &(), deadline).await
    }

    /// Asks the leader for a linearizable read index (ReadIndex, confirmed by a quorum).
    pub async fn read_index(
        &self,
        deadline: Duration,
    ) -> Result<Result<Option<LogId>, ForwardError>, PeerError> {
        self.client.call(Rpc::ReadIndex, &(), deadline).await
    }
}
