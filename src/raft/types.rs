//! openraft type configuration and the replicated payload.

use std::io::Cursor;

use serde::{Deserialize, Serialize};

use crate::scheduler::{Applied, Command, RequestId, TokenHash, UnixMillis};

/// One client command inside a batch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proposal {
    pub request_id: Option<RequestId>,
    pub command: Command,
    /// The tenant token that authorized the command (see `scheduler::Entry::token`).
    pub token: Option<TokenHash>,
}

/// What one Raft log entry carries: several commands committed together (group commit),
/// stamped with the leader's clock when it proposed them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    pub proposed_at: UnixMillis,
    pub proposals: Vec<Proposal>,
}

/// The answer to one log entry: one `Applied` per proposal, in order (empty for blank and
/// membership entries, or one `LeaderChanged` for a new leader's first entry).
pub type BatchResult = Vec<Applied>;

openraft::declare_raft_types!(
    /// Berth's openraft types: replicas are `u64` ids with their peer address.
    pub TypeConfig:
        D = Batch,
        R = BatchResult,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = crate::raft::runtime::BerthRuntime,
        Responder = openraft::impls::OneshotResponder<TypeConfig>,
);

pub type ReplicaId = u64;
pub type Node = openraft::BasicNode;
pub type Raft = openraft::Raft<TypeConfig>;
pub type LogEntry = openraft::Entry<TypeConfig>;
pub type LogId = openraft::LogId<ReplicaId>;
pub type Vote = openraft::Vote<ReplicaId>;
pub type StorageError = openraft::StorageError<ReplicaId>;
pub type StorageIOError = openraft::StorageIOError<ReplicaId>;
pub type SnapshotMeta = openraft::SnapshotMeta<ReplicaId, Node>;
pub type StoredMembership = openraft::StoredMembership<ReplicaId, Node>;
pub type Snapshot = openraft::Snapshot<TypeConfig>;
pub type RaftMetrics = openraft::RaftMetrics<ReplicaId, Node>;
pub type RaftError<E = openraft::error::Infallible> = openraft::error::RaftError<ReplicaId, E>;
pub type RpcError<E = openraft::error::Infallible> = openraft::error::RPCError<ReplicaId, Node, E>;
pub type ClientWriteError = openraft::error::ClientWriteError<ReplicaId, Node>;
pub type CheckIsLeaderError = openraft::error::CheckIsLeaderError<ReplicaId, Node>;
pub type InstallSnapshotError = openraft::error::InstallSnapshotError;
