//! Peer transport: frames in, frames out, on the replica's own peer port. It carries openraft's
//! AppendEntries / Vote / InstallSnapshot (`PeerNetwork`, openraft's `RaftNetwork`) and Berth's
//! own calls (`Rpc`), but serves none of them itself: `serve` hands each request to a `Handler`
//! (the replica's, `raft::replica`) and writes back its reply. It holds no clock and never
//! writes to Raft; from the crate it imports only `codec`, `tls` and `raft::types`. Opening
//! connections is `connect`'s, which imports nothing (so `tls` can wrap it).
//!
//! The protocol is frames on a plain byte stream, one request at a time per connection:
//!
//! ```text
//! request:  [len u32 LE][rpc u8][bincode 2 of the openraft or Berth request]
//! reply:    [len u32 LE][0 u8][bincode 2 of the reply]  or  [len][1 u8][UTF-8 error message]
//! ```
//!
//! (`len` counts the byte after it and the payload, at most `PEER_MESSAGE_MAX_BYTES`; payloads
//! decode with a size limit, `crate::codec`, so no length inside one is trusted.) It replaced
//! tonic unary calls, whose HTTP/2 machinery cost each AppendEntries about half a millisecond
//! more than the follower spent handling it, and a fifth of a follower's CPU; see
//! `docs/performance.md`.
//!
//! Over TLS (`crate::tls`), only members of the cluster reach this protocol at all: both ends
//! present a certificate from the cluster's CA naming a current member, checked in the
//! handshake and again on an open connection after each membership change. That is what lets
//! a leader trust what a peer forwards: a forwarded proposal carries the identity its caller
//! was authenticated as by the forwarding replica (`Proposal::token`: the tenant token's hash,
//! or none for the admin), and the state machine checks that token again when it applies.
//!
//! A client keeps a small pool of open connections per peer, so concurrent callers (forwarded
//! writes, reads) each get their own and a lone caller (a follower's replication stream)
//! reuses one. `PeerNetwork` hands openraft one client per peer however often it asks:
//! openraft 0.9 asks anew for every ReadIndex round and every election, and a fresh client
//! each time cost a TCP connection and a TLS handshake per linearizable read per follower.
//! Only a vote still opens a connection of its own (see `vote`).
//! Every call has a deadline (a partitioned TCP connection may never fail by itself); a
//! connection that failed or timed out is dropped, never reused, so a late reply can never be
//! read as the answer to the next request, and the connections pooled beside it are dropped
//! too (a peer that crashed or was cut off answers on none of them). A pooled connection the
//! peer has closed (it restarted) fails its first use; the call then drops the pool and tries
//! once more on a new connection, within the same deadline. Connections come from an injected
//! `Connect`, and the server accepts any stream of connections, so the simulation runs this
//! code over `turmoil::net`.

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{NetworkError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::histogram::Histogram;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::task::JoinSet;
use tokio_stream::{Stream, StreamExt};

use crate::codec;
use crate::raft::types::{InstallSnapshotError, Node, RaftError, ReplicaId, RpcError, TypeConfig};
use crate::tls::{Admitted, PeerTls};

pub mod connect;

pub use connect::{accept, tcp_connect, Connect, Connecting, PeerStream};

/// Largest peer message (snapshot chunks and append batches stay well below it).
pub const PEER_MESSAGE_MAX_BYTES: usize = 64 * 1024 * 1024;

/// Open connections a client keeps per peer beyond those in use.
const IDLE_CONNECTIONS_MAX: usize = 8;

/// Read buffer per connection: a whole frame of an ordinary append in one read.
const READ_BUFFER_BYTES: usize = 64 * 1024;

/// A peer message decoded (with a size limit, see `codec`).
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    codec::decode(bytes).map_err(|e| e.to_string())
}

/// A frame: its header (length and tag) followed by `value` encoded in place.
fn frame<T: Serialize>(tag: u8, value: &T) -> Result<Vec<u8>, String> {
    let mut frame = vec![0u8; 5];
    codec::encode_into(value, &mut frame).map_err(|e| e.to_string())?;
    seal(frame, tag)
}

/// Fills in the header of a frame whose payload follows its first five bytes.
fn seal(mut frame: Vec<u8>, tag: u8) -> Result<Vec<u8>, String> {
    let len = frame.len() - 4;
    if len > PEER_MESSAGE_MAX_BYTES {
        return Err(format!("message of {len} bytes exceeds {PEER_MESSAGE_MAX_BYTES}"));
    }
    let len = u32::try_from(len).expect("invariant: bounded above");
    frame[..4].copy_from_slice(&len.to_le_bytes());
    frame[4] = tag;
    Ok(frame)
}

/// Reads one frame: `None` if the stream ended cleanly before it.
async fn read_frame<R: AsyncRead + Unpin>(stream: &mut R) -> io::Result<Option<(u8, Vec<u8>)>> {
    let mut header = [0u8; 5];
    match stream.read_exact(&mut header[..1]).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    stream.read_exact(&mut header[1..]).await?;
    let len = u32::from_le_bytes(header[..4].try_into().expect("four bytes")) as usize;
    if len == 0 || len > PEER_MESSAGE_MAX_BYTES {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("bad frame length {len}")));
    }
    // Grown as bytes arrive, not allocated at the declared length up front: a stray or broken
    // connection announcing 64 MiB costs only what it actually sends.
    let want = len - 1;
    let mut payload = Vec::new();
    while payload.len() < want {
        let start = payload.len();
        payload.resize(start + (want - start).min(READ_BUFFER_BYTES), 0);
        stream.read_exact(&mut payload[start..]).await?;
    }
    Ok(Some((header[4], payload)))
}

const REPLY_OK: u8 = 0;
const REPLY_ERROR: u8 = 1;

/// Why a peer call failed. Either way a write's outcome is unknown.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PeerError {
    /// No connection could be opened.
    #[error("cannot reach {addr}: {why}")]
    Unreachable { addr: String, why: String },
    /// The call was sent (or being sent) and got no usable answer.
    #[error("{rpc:?} to {addr} failed: {why}")]
    Failed { addr: String, rpc: Rpc, why: String },
}

/// The calls a replica serves on its peer port; the discriminant is the frame's tag.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Rpc {
    AppendEntries = 1,
    Vote = 2,
    InstallSnapshot = 3,
    /// A follower forwards client commands to the leader, which stamps and proposes them.
    Propose = 4,
    /// A follower asks the leader for a read index confirmed by a quorum (ReadIndex).
    ReadIndex = 5,
    /// The replica's view of itself and the cluster (role, term, indexes, state hash).
    Status = 6,
    /// A read of the replica's local state, possibly stale (for inspection and tests).
    Query = 7,
    /// The replica's wall clock, for its peers to bound how far ahead a leader stamps.
    Clock = 8,
}

impl Rpc {
    fn from_tag(tag: u8) -> Option<Rpc> {
        [
            Rpc::AppendEntries,
            Rpc::Vote,
            Rpc::InstallSnapshot,
            Rpc::Propose,
            Rpc::ReadIndex,
            Rpc::Status,
            Rpc::Query,
            Rpc::Clock,
        ]
        .into_iter()
        .find(|rpc| *rpc as u8 == tag)
    }
}

type Connection = BufReader<Box<dyn PeerStream>>;

/// A client for one peer; clones share its connections.
#[derive(Clone)]
pub struct PeerClient {
    addr: String,
    connect: Connect,
    idle: Arc<Mutex<Vec<Connection>>>,
    /// Connections opened (each a TCP connect and, over TLS, a handshake).
    opened: Counter,
}

impl PeerClient {
    /// A client for `addr`; connections open when a call needs one.
    pub fn new(connect: &Connect, addr: &str) -> PeerClient {
        PeerClient::counting(connect, addr, Counter::default())
    }

    /// A client for `addr` that counts the connections it opens in `opened`.
    pub fn counting(connect: &Connect, addr: &str, opened: Counter) -> PeerClient {
        PeerClient {
            addr: addr.to_owned(),
            connect: connect.clone(),
            idle: Default::default(),
            opened,
        }
    }

    /// A client for the same peer, counted alike, with a pool of its own (empty).
    fn apart(&self) -> PeerClient {
        PeerClient::counting(&self.connect, &self.addr, self.opened.clone())
    }

    /// Connections this client (and its clones) opened.
    pub fn connections_opened(&self) -> u64 {
        self.opened.get()
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<Connection>> {
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends `request` and returns the reply, all within `deadline`.
    pub async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        rpc: Rpc,
        request: &Req,
        deadline: Duration,
    ) -> Result<Resp, PeerError> {
        let failed = |why: String| PeerError::Failed { addr: self.addr.clone(), rpc, why };
        let request = frame(rpc as u8, request).map_err(failed)?;
        let pooled = self.idle().pop();
        let exchange = async {
            if let Some(mut connection) = pooled {
                match exchange(&mut connection, &request).await {
                    Ok(Some(reply)) => return Ok((connection, Some(reply))),
                    // Closed or broken before any reply: the peer dropped its idle connections
                    // (it restarted), so the others in the pool are as stale as this one.
                    Ok(None) | Err(_) => self.idle().clear(),
                }
            }
            let stream = (self.connect)(&self.addr).await.map_err(|e| PeerError::Unreachable {
                addr: self.addr.clone(),
                why: e.to_string(),
            })?;
            self.opened.inc();
            let mut connection = BufReader::with_capacity(READ_BUFFER_BYTES, stream);
            let reply =
                exchange(&mut connection, &request).await.map_err(|e| failed(e.to_string()))?;
            Ok((connection, reply))
        };
        let exchanged = tokio::time::timeout(deadline, exchange)
            .await
            .map_err(|_| failed(format!("no answer within {deadline:?}")))
            .and_then(|done| done);
        let (connection, reply) = match exchanged {
            Ok(exchanged) => exchanged,
            Err(e) => {
                // A peer that did not answer in time (it crashed, or the network is cut) will
                // not answer on the connections pooled beside this one either: drop them, so
                // the next call (a vote, say) opens a new one instead of waiting out a deadline
                // on each.
                self.idle().clear();
                return Err(e);
            }
        };
        let result = match reply {
            Some((REPLY_OK, payload)) => decode(&payload).map_err(failed),
            Some((REPLY_ERROR, message)) => Err(failed(String::from_utf8_lossy(&message).into())),
            Some((tag, _)) => Err(failed(format!("reply with unknown tag {tag}"))),
            None => Err(failed("the peer closed the connection".into())),
        };
        if result.is_ok() {
            let mut idle = self.idle();
            if idle.len() < IDLE_CONNECTIONS_MAX {
                idle.push(connection);
            }
        }
        result
    }
}

/// Writes one request frame on `connection` and reads the reply frame (`None`: it closed).
async fn exchange(
    connection: &mut Connection,
    request: &[u8],
) -> io::Result<Option<(u8, Vec<u8>)>> {
    connection.write_all(request).await?;
    connection.flush().await?;
    read_frame(connection).await
}

impl Rpc {
    /// The call's name, as metrics label it.
    pub fn name(self) -> &'static str {
        match self {
            Rpc::AppendEntries => "append_entries",
            Rpc::Vote => "vote",
            Rpc::InstallSnapshot => "install_snapshot",
            Rpc::Propose => "propose",
            Rpc::ReadIndex => "read_index",
            Rpc::Status => "status",
            Rpc::Query => "query",
            Rpc::Clock => "clock",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabels {
    pub peer: ReplicaId,
    pub rpc: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerErrorLabels {
    pub peer: ReplicaId,
    pub rpc: &'static str,
    /// `unreachable` (no connection), `network` (the call failed on it) or `remote` (the peer
    /// answered with an error).
    pub kind: &'static str,
}

#[derive(Clone, Debug)]
pub struct PeerLatency;

impl MetricConstructor<Histogram> for PeerLatency {
    fn new_metric(&self) -> Histogram {
        // 100 µs to about 3.3 s, doubling.
        Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(0.0001, 2.0, 16))
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerConnectionLabels {
    pub peer: ReplicaId,
}

/// What this replica's Raft calls to each peer took, how they failed, and the connections
/// they opened (its metrics). Peers are members, so the labels are as few as the members.
#[derive(Debug)]
pub struct PeerStats {
    pub latency: Family<PeerLabels, Histogram, PeerLatency>,
    pub errors: Family<PeerErrorLabels, Counter>,
    pub connections: Family<PeerConnectionLabels, Counter>,
}

impl Default for PeerStats {
    fn default() -> Self {
        PeerStats {
            latency: Family::new_with_constructor(PeerLatency),
            errors: Family::default(),
            connections: Family::default(),
        }
    }
}

/// openraft's network factory: one client per peer, its connections shared by every
/// `PeerConnection` openraft asks for (a replication stream, each ReadIndex round); a vote
/// opens its own (`vote`).
#[derive(Clone)]
pub struct PeerNetwork {
    connect: Connect,
    stats: Arc<PeerStats>,
    clients: Arc<Mutex<BTreeMap<ReplicaId, PeerClient>>>,
}

impl PeerNetwork {
    pub fn new(connect: Connect, stats: Arc<PeerStats>) -> Self {
        PeerNetwork { connect, stats, clients: Arc::default() }
    }

    /// The client for `target` at `addr`: the one it had, unless its address changed.
    fn client(&self, target: ReplicaId, addr: &str) -> PeerClient {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        let client = clients.entry(target).or_insert_with(|| self.open(target, addr));
        if client.addr != addr {
            *client = self.open(target, addr);
        }
        client.clone()
    }

    fn open(&self, target: ReplicaId, addr: &str) -> PeerClient {
        let opened = self.stats.connections.get_or_create(&PeerConnectionLabels { peer: target });
        PeerClient::counting(&self.connect, addr, opened.clone())
    }
}

pub struct PeerConnection {
    target: ReplicaId,
    client: PeerClient,
    stats: Arc<PeerStats>,
}

impl RaftNetworkFactory<TypeConfig> for PeerNetwork {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: ReplicaId, node: &Node) -> PeerConnection {
        PeerConnection {
            target,
            client: self.client(target, &node.addr),
            stats: self.stats.clone(),
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
        use tracing::Instrument;
        // The span follows the call's future (a guard held across `.await` would tag whatever
        // else runs on this thread meanwhile).
        let span = tracing::trace_span!("peer_rpc", ?rpc, target = self.target);
        // openraft's hard TTL bounds the call; the soft TTL leaves it room to react.
        let call = self.client.call(rpc, request, option.soft_ttl()).instrument(span);
        let started = std::time::Instant::now();
        let outcome: Result<Result<Resp, E>, PeerError> = call.await;
        let labels = PeerLabels { peer: self.target, rpc: rpc.name() };
        self.stats.latency.get_or_create(&labels).observe(started.elapsed().as_secs_f64());
        let failed = |kind| {
            let labels = PeerErrorLabels { peer: self.target, rpc: rpc.name(), kind };
            self.stats.errors.get_or_create(&labels).inc();
        };
        let result = outcome.map_err(|e| match e {
            PeerError::Unreachable { .. } => {
                failed("unreachable");
                RpcError::Unreachable(Unreachable::new(&e))
            }
            PeerError::Failed { .. } => {
                failed("network");
                RpcError::Network(NetworkError::new(&e))
            }
        })?;
        result.map_err(|e| {
            failed("remote");
            RpcError::RemoteError(RemoteError::new(self.target, e))
        })
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
        // A vote goes on a connection of its own, as every call did before the pool was
        // shared: over pooled connections, the simulation's seed 596 (five replicas, after a
        // partition healed) campaigned for 20 s without electing anyone. Elections are rare.
        self.client = self.client.apart();
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

/// What answers the calls arriving on the peer port (the replica: `raft::replica`).
pub trait Handler: Clone + Send + Sync + 'static {
    /// The reply frame to one call (built with `reply`), or why it could not be served.
    fn handle(
        &self,
        rpc: Rpc,
        payload: &[u8],
    ) -> impl Future<Output = Result<Vec<u8>, String>> + Send;
}

/// A reply frame carrying `value`, encoded in place.
pub fn reply<T: Serialize>(value: &T) -> Result<Vec<u8>, String> {
    frame(REPLY_OK, value)
}

/// Serves every connection `incoming` yields until `shutdown` resolves, then closes them all
/// (a peer must not keep talking to a stopped replica through an open connection). With `tls`,
/// each connection first completes a mutual TLS handshake as an admitted member (see
/// `crate::tls`); one that does not is closed before any frame is read.
pub async fn serve<H, I, IO, IE>(
    handler: H,
    incoming: I,
    tls: Option<PeerTls>,
    shutdown: impl Future<Output = ()>,
) where
    H: Handler,
    I: Stream<Item = Result<IO, IE>>,
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    IE: std::fmt::Display,
{
    let mut incoming = std::pin::pin!(incoming);
    let mut shutdown = std::pin::pin!(shutdown);
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            next = incoming.next() => match next {
                Some(Ok(stream)) => {
                    let (handler, tls) = (handler.clone(), tls.clone());
                    connections.spawn(async move {
                        match tls {
                            None => serve_connection(handler, stream, None).await,
                            Some(tls) => match tls.accept(stream).await {
                                Ok((stream, member)) => {
                                    serve_connection(handler, stream, Some(member)).await
                                }
                                Err(e) => tracing::info!(
                                    error = %e,
                                    "refused a peer connection: no TLS handshake as a member"
                                ),
                            },
                        }
                    });
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "accepting a peer connection failed");
                    tokio::time::sleep(connect::ACCEPT_BACKOFF).await;
                }
                None => break,
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Answers one connection's requests in order until it closes or breaks the protocol, or
/// (over TLS) its `member` is no longer one.
async fn serve_connection<H: Handler, IO: AsyncRead + AsyncWrite + Unpin>(
    handler: H,
    stream: IO,
    mut member: Option<Admitted>,
) {
    let mut stream = BufReader::with_capacity(READ_BUFFER_BYTES, stream);
    loop {
        let (tag, payload) = match read_frame(&mut stream).await {
            Ok(Some(request)) => request,
            Ok(None) => return,
            Err(e) => {
                tracing::debug!(error = %e, "peer connection ended");
                return;
            }
        };
        if member.as_mut().is_some_and(|member| !member.still()) {
            tracing::info!("closed a peer connection: its replica is no longer a member");
            return;
        }
        let reply = match Rpc::from_tag(tag) {
            Some(rpc) => handler.handle(rpc, &payload).await,
            None => Err(format!("unknown peer call {tag}")),
        };
        let frame = match reply {
            Ok(frame) => frame,
            Err(why) => {
                let mut frame = vec![0u8; 5];
                frame.extend_from_slice(why.as_bytes());
                seal(frame, REPLY_ERROR).expect("invariant: error messages are short")
            }
        };
        if stream.write_all(&frame).await.is_err() || stream.flush().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A peer that echoes each request's value back, answering the first one only after
    /// `first_delay`. Every connection the client opens is served by its own task.
    fn echo_peer(first_delay: Duration) -> Connect {
        let served = Arc::new(std::sync::atomic::AtomicBool::new(false));
        Arc::new(move |_addr: &str| {
            let served = served.clone();
            Box::pin(async move {
                let (client, mut server) = tokio::io::duplex(1024);
                tokio::spawn(async move {
                    while let Ok(Some((tag, payload))) = read_frame(&mut server).await {
                        assert_eq!(tag, Rpc::Query as u8);
                        let value: u64 = decode(&payload).expect("a u64");
                        if !served.swap(true, std::sync::atomic::Ordering::SeqCst) {
                            tokio::time::sleep(first_delay).await;
                        }
                        let reply = frame(REPLY_OK, &value).expect("frame");
                        if server.write_all(&reply).await.is_err() {
                            return;
                        }
                    }
                });
                Ok(Box::new(client) as Box<dyn PeerStream>)
            })
        })
    }

    #[tokio::test]
    async fn a_late_reply_is_never_taken_for_the_next_answer() {
        let client = PeerClient::new(&echo_peer(Duration::from_millis(300)), "peer");
        let late = client.call::<u64, u64>(Rpc::Query, &1, Duration::from_millis(50)).await;
        assert!(matches!(late, Err(PeerError::Failed { .. })), "{late:?}");
        // The timed-out connection still carries the reply to 1; a new call must not read it.
        let next = client.call::<u64, u64>(Rpc::Query, &2, Duration::from_secs(5)).await;
        assert_eq!(next, Ok(2));
        let again = client.call::<u64, u64>(Rpc::Query, &3, Duration::from_secs(5)).await;
        assert_eq!(again, Ok(3));
        assert_eq!(client.idle().len(), 1, "the good connection is reused, the late one dropped");
    }

    #[tokio::test]
    async fn a_frame_cut_short_is_an_error_not_a_message() {
        let (mut writer, mut reader) = tokio::io::duplex(1024);
        let mut cut = 1_000_000u32.to_le_bytes().to_vec();
        cut.push(Rpc::Query as u8);
        cut.extend_from_slice(b"ten bytes!");
        writer.write_all(&cut).await.expect("written");
        drop(writer);
        let read = read_frame(&mut reader).await;
        assert_eq!(read.map_err(|e| e.kind()), Err(io::ErrorKind::UnexpectedEof));
        // A stream that ends between frames has simply ended.
        let (writer, mut reader) = tokio::io::duplex(16);
        drop(writer);
        assert!(matches!(read_frame(&mut reader).await, Ok(None)));
    }

    /// A peer that answers each connection's first request (echoing its value) and then
    /// closes it, as a restarted peer's old connections are closed. Counts connections.
    fn one_reply_per_connection(opened: Arc<std::sync::atomic::AtomicU64>) -> Connect {
        Arc::new(move |_addr: &str| {
            opened.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Box::pin(async move {
                let (client, mut server) = tokio::io::duplex(1024);
                tokio::spawn(async move {
                    if let Ok(Some((_, payload))) = read_frame(&mut server).await {
                        let value: u64 = decode(&payload).expect("a u64");
                        let reply = frame(REPLY_OK, &value).expect("frame");
                        let _ = server.write_all(&reply).await;
                    }
                });
                Ok(Box::new(client) as Box<dyn PeerStream>)
            })
        })
    }

    #[tokio::test]
    async fn a_pooled_connection_the_peer_closed_costs_a_reconnect_not_a_failure() {
        let opened = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let client = PeerClient::new(&one_reply_per_connection(opened.clone()), "peer");
        for value in 1..=3u64 {
            let reply = client.call::<u64, u64>(Rpc::Query, &value, Duration::from_secs(5)).await;
            assert_eq!(reply, Ok(value));
        }
        assert_eq!(opened.load(std::sync::atomic::Ordering::SeqCst), 3);
        assert_eq!(client.connections_opened(), 3);
    }

    #[tokio::test]
    async fn every_client_openraft_asks_for_shares_one_pool_per_peer() {
        let network = PeerNetwork::new(echo_peer(Duration::ZERO), Arc::default());
        for value in 1..=5u64 {
            // openraft asks anew for each ReadIndex round and each vote.
            let client = network.client(2, "peer-2:1");
            let reply = client.call::<u64, u64>(Rpc::Query, &value, Duration::from_secs(5)).await;
            assert_eq!(reply, Ok(value));
        }
        let opened =
            |peer| network.stats.connections.get_or_create(&PeerConnectionLabels { peer }).get();
        assert_eq!(opened(2), 1, "one connection served every call");
        // Another peer has its own; a peer that moved gets a new client.
        let other = network.client(3, "peer-3:1");
        assert_eq!(other.call::<u64, u64>(Rpc::Query, &6, Duration::from_secs(5)).await, Ok(6));
        assert_eq!(opened(3), 1);
        let moved = network.client(2, "peer-2:2");
        assert_eq!(moved.addr, "peer-2:2");
        assert_eq!(moved.call::<u64, u64>(Rpc::Query, &7, Duration::from_secs(5)).await, Ok(7));
        assert_eq!(opened(2), 2);
    }

    #[tokio::test]
    async fn an_unreachable_peer_is_reported_as_such() {
        let refuse: Connect = Arc::new(|_addr: &str| {
            Box::pin(async { Err(io::Error::new(io::ErrorKind::ConnectionRefused, "refused")) })
        });
        let client = PeerClient::new(&refuse, "nowhere:1");
        let result = client.call::<u64, u64>(Rpc::Query, &1, Duration::from_secs(1)).await;
        assert!(matches!(result, Err(PeerError::Unreachable { .. })), "{result:?}");
    }
}
