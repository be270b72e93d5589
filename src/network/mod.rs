//! Peer transport: openraft's AppendEntries / Vote / InstallSnapshot, plus forwarding of client
//! commands and read-index requests to the leader, over tonic on the replica's own peer port.
//!
//! Messages are bincode 2 encodings of openraft's types inside one bytes field. Every call has
//! a client-side deadline (a partitioned TCP connection may never fail by itself), and the
//! channel to a peer is lazy and reconnects after failure. Channels come from an injected
//! `Connect`, and the server side accepts any incoming stream, so the simulation can run this
//! code over `turmoil::net`.

use std::sync::Arc;
use std::time::Duration;

use openraft::error::{NetworkError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tonic::transport::{Channel, Endpoint};

use crate::raft::types::{
    BatchResult, InstallSnapshotError, LogId, Node, Proposal, RaftError, ReplicaId, RpcError,
    TypeConfig,
};

pub mod pb {
    #![allow(clippy::all, clippy::pedantic, missing_docs)]
    tonic::include_proto!("berth.raft.v1");
}

use pb::raft_peer_client::RaftPeerClient;
use pb::RaftBytes;

/// Largest peer message (snapshot chunks and append batches stay well below it).
pub const PEER_MESSAGE_MAX_BYTES: usize = 64 * 1024 * 1024;

/// Makes a (lazy) channel to a peer address. Production uses TCP; the simulation its own.
pub type Connect = Arc<dyn Fn(&str) -> Result<Channel, String> + Send + Sync>;

/// TCP channels with a connect timeout.
pub fn tcp_connect(connect_timeout: Duration) -> Connect {
    Arc::new(move |addr: &str| {
        Endpoint::from_shared(format!("http://{addr}"))
            .map(|e| e.connect_timeout(connect_timeout).tcp_nodelay(true).connect_lazy())
            .map_err(|e| format!("bad peer address {addr:?}: {e}"))
    })
}

pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, String> {
    bincode::serde::encode_to_vec(value, bincode::config::standard()).map_err(|e| e.to_string())
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    bincode::serde::decode_from_slice(bytes, bincode::config::standard())
        .map(|(v, _)| v)
        .map_err(|e| e.to_string())
}

/// Why a forwarded command or read could not be served by the replica it reached.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum ForwardError {
    #[error("replica is not the leader (leader: {leader:?})")]
    NotLeader { leader: Option<(ReplicaId, String)> },
    #[error("replica could not serve the request: {0}")]
    Unavailable(String),
}

/// A typed client for one peer.
#[derive(Clone)]
pub struct PeerClient {
    client: RaftPeerClient<Channel>,
}

impl PeerClient {
    pub fn new(connect: &Connect, addr: &str) -> Result<PeerClient, String> {
        let channel = connect(addr)?;
        let client = RaftPeerClient::new(channel)
            .max_decoding_message_size(PEER_MESSAGE_MAX_BYTES)
            .max_encoding_message_size(PEER_MESSAGE_MAX_BYTES);
        Ok(PeerClient { client })
    }

    /// Calls one RPC with a deadline; `Err` is a transport failure (outcome unknown).
    async fn call(
        &mut self,
        rpc: Rpc,
        data: Vec<u8>,
        deadline: Duration,
    ) -> Result<Vec<u8>, tonic::Status> {
        let mut request = tonic::Request::new(RaftBytes { data });
        request.set_timeout(deadline);
        let client = &mut self.client;
        let call = async move {
            match rpc {
                Rpc::AppendEntries => client.append_entries(request).await,
                Rpc::Vote => client.vote(request).await,
                Rpc::InstallSnapshot => client.install_snapshot(request).await,
                Rpc::Propose => client.propose(request).await,
                Rpc::ReadIndex => client.read_index(request).await,
                Rpc::Status => client.status(request).await,
                Rpc::Query => client.query(request).await,
            }
        };
        match tokio::time::timeout(deadline, call).await {
            Ok(reply) => Ok(reply?.into_inner().data),
            Err(_) => {
                Err(tonic::Status::deadline_exceeded(format!("{rpc:?} took over {deadline:?}")))
            }
        }
    }

    /// Asks the leader to propose `proposals`; the leader stamps the time.
    pub async fn propose(
        &mut self,
        proposals: &[Proposal],
        deadline: Duration,
    ) -> Result<Result<BatchResult, ForwardError>, tonic::Status> {
        let data = encode(&proposals).map_err(tonic::Status::internal)?;
        let reply = self.call(Rpc::Propose, data, deadline).await?;
        decode(&reply).map_err(tonic::Status::internal)
    }

    /// The peer's status.
    pub async fn status(
        &mut self,
        deadline: Duration,
    ) -> Result<crate::raft::replica::ReplicaStatus, tonic::Status> {
        let reply = self.call(Rpc::Status, Vec::new(), deadline).await?;
        decode(&reply).map_err(tonic::Status::internal)
    }

    /// A read of the peer's local (possibly stale) state.
    pub async fn query(
        &mut self,
        query: &crate::scheduler::Query,
        deadline: Duration,
    ) -> Result<crate::scheduler::Answer, tonic::Status> {
        let data = encode(query).map_err(tonic::Status::internal)?;
        let reply = self.call(Rpc::Query, data, deadline).await?;
        decode(&reply).map_err(tonic::Status::internal)
    }

    /// Asks the leader for a linearizable read index (ReadIndex, confirmed by a quorum).
    pub async fn read_index(
        &mut self,
        deadline: Duration,
    ) -> Result<Result<Option<LogId>, ForwardError>, tonic::Status> {
        let reply = self.call(Rpc::ReadIndex, Vec::new(), deadline).await?;
        decode(&reply).map_err(tonic::Status::internal)
    }
}

#[derive(Clone, Copy, Debug)]
enum Rpc {
    AppendEntries,
    Vote,
    InstallSnapshot,
    Propose,
    ReadIndex,
    Status,
    Query,
}

/// openraft's network factory: one lazily connected client per peer.
#[derive(Clone)]
pub struct PeerNetwork {
    connect: Connect,
}

impl PeerNetwork {
    pub fn new(connect: Connect) -> Self {
        PeerNetwork { connect }
    }
}

pub struct PeerConnection {
    target: ReplicaId,
    addr: String,
    connect: Connect,
    client: Option<PeerClient>,
}

impl RaftNetworkFactory<TypeConfig> for PeerNetwork {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: ReplicaId, node: &Node) -> PeerConnection {
        PeerConnection {
            target,
            addr: node.addr.clone(),
            connect: self.connect.clone(),
            client: None,
        }
    }
}

impl PeerConnection {
    async fn send<Req, Resp, E>(
        &mut self,
        rpc: Rpc,
        request: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RpcError<E>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let span = tracing::trace_span!("peer_rpc", ?rpc, target = self.target);
        let _guard = span.enter();
        if self.client.is_none() {
            let client = PeerClient::new(&self.connect, &self.addr).map_err(|e| {
                RpcError::Unreachable(Unreachable::from(openraft::AnyError::error(e)))
            })?;
            self.client = Some(client);
        }
        let client = self.client.as_mut().expect("invariant: client set above");
        let data = encode(request)
            .map_err(|e| RpcError::Network(NetworkError::from(openraft::AnyError::error(e))))?;
        // openraft's hard TTL bounds the call; the soft TTL leaves it room to react.
        let reply = match client.call(rpc, data, option.soft_ttl()).await {
            Ok(reply) => reply,
            Err(status) => {
                // Drop the channel so the next call reconnects from scratch.
                self.client = None;
                return Err(match status.code() {
                    tonic::Code::Unavailable => RpcError::Unreachable(Unreachable::new(&status)),
                    _ => RpcError::Network(NetworkError::new(&status)),
                });
            }
        };
        let result: Result<Resp, E> = decode(&reply)
            .map_err(|e| RpcError::Network(NetworkError::from(openraft::AnyError::error(e))))?;
        result.map_err(|e| RpcError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for PeerConnection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<ReplicaId>, RpcError<RaftError>> {
        self.send(Rpc::AppendEntries, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<ReplicaId>,
        option: RPCOption,
    ) -> Result<VoteResponse<ReplicaId>, RpcError<RaftError>> {
        self.send(Rpc::Vote, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<ReplicaId>, RpcError<RaftError<InstallSnapshotError>>> {
        self.send(Rpc::InstallSnapshot, &rpc, &option).await
    }
}

/// The receiving side: hands peer requests to the local Raft, serves forwarded commands and
/// read-index requests when this replica leads, and reports status.
#[derive(Clone)]
pub struct PeerService {
    replica: crate::raft::replica::Replica,
    clock: Arc<dyn crate::clock::Clock>,
}

impl PeerService {
    pub fn new(
        replica: crate::raft::replica::Replica,
        clock: Arc<dyn crate::clock::Clock>,
    ) -> Self {
        PeerService { replica, clock }
    }

    /// The tonic service, with message limits sized for snapshot chunks.
    pub fn into_server(self) -> pb::raft_peer_server::RaftPeerServer<PeerService> {
        pb::raft_peer_server::RaftPeerServer::new(self)
            .max_decoding_message_size(PEER_MESSAGE_MAX_BYTES)
            .max_encoding_message_size(PEER_MESSAGE_MAX_BYTES)
    }
}

fn reply<T: Serialize>(value: &T) -> Result<tonic::Response<RaftBytes>, tonic::Status> {
    let data = encode(value).map_err(tonic::Status::internal)?;
    Ok(tonic::Response::new(RaftBytes { data }))
}

fn request<T: DeserializeOwned>(request: tonic::Request<RaftBytes>) -> Result<T, tonic::Status> {
    decode(&request.into_inner().data).map_err(tonic::Status::invalid_argument)
}

/// Maps openraft's "forward to leader" into our answer for the forwarding replica.
pub fn not_leader(leader_id: Option<ReplicaId>, leader_node: Option<Node>) -> ForwardError {
    ForwardError::NotLeader { leader: leader_id.zip(leader_node.map(|n| n.addr)) }
}

#[tonic::async_trait]
impl pb::raft_peer_server::RaftPeer for PeerService {
    async fn append_entries(
        &self,
        req: tonic::Request<RaftBytes>,
    ) -> Result<tonic::Response<RaftBytes>, tonic::Status> {
        reply(&self.replica.raft().append_entries(request(req)?).await)
    }

    async fn vote(
        &self,
        req: tonic::Request<RaftBytes>,
    ) -> Result<tonic::Response<RaftBytes>, tonic::Status> {
        reply(&self.replica.raft().vote(request(req)?).await)
    }

    async fn install_snapshot(
        &self,
        req: tonic::Request<RaftBytes>,
    ) -> Result<tonic::Response<RaftBytes>, tonic::Status> {
        reply(&self.replica.raft().install_snapshot(request(req)?).await)
    }

    async fn propose(
        &self,
        req: tonic::Request<RaftBytes>,
    ) -> Result<tonic::Response<RaftBytes>, tonic::Status> {
        use openraft::error::ClientWriteError;
        let proposals: Vec<Proposal> = request(req)?;
        let batch = crate::raft::types::Batch { proposed_at: self.clock.now(), proposals };
        let result = match self.replica.raft().client_write(batch).await {
            Ok(written) => Ok(written.data),
            Err(e) => match e.forward_to_leader() {
                Some(f) => Err(not_leader(f.leader_id, f.leader_node.clone())),
                None => Err(ForwardError::Unavailable(match e {
                    openraft::error::RaftError::APIError(
                        ClientWriteError::ChangeMembershipError(c),
                    ) => c.to_string(),
                    other => other.to_string(),
                })),
            },
        };
        reply(&result)
    }

    async fn read_index(
        &self,
        _req: tonic::Request<RaftBytes>,
    ) -> Result<tonic::Response<RaftBytes>, tonic::Status> {
        let result = match self.replica.leader_read_index().await {
            Ok(index) => Ok(index),
            Err(e) => match e.forward_to_leader() {
                Some(f) => Err(not_leader(f.leader_id, f.leader_node.clone())),
                None => Err(ForwardError::Unavailable(e.to_string())),
            },
        };
        reply(&result)
    }

    async fn status(
        &self,
        _req: tonic::Request<RaftBytes>,
    ) -> Result<tonic::Response<RaftBytes>, tonic::Status> {
        reply(&self.replica.status())
    }

    async fn query(
        &self,
        req: tonic::Request<RaftBytes>,
    ) -> Result<tonic::Response<RaftBytes>, tonic::Status> {
        let query: crate::scheduler::Query = request(req)?;
        reply(&self.replica.read_local(|state| state.scheduler.query(&query)))
    }
}
