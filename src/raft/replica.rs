//! One running replica: the Raft instance and the tasks around it.
//!
//! - **Proposer**: client commands queue up and are committed together, several per log entry
//!   (group commit), with a few batches in flight, so throughput is not one fsync per command.
//!   The leader stamps `proposed_at`; a follower forwards the batch to the leader, which
//!   stamps it. Retrying is safe because every client command carries a request id.
//! - **Ticker**: the leader proposes `Tick` when a reservation or lease deadline is due, and at
//!   least every `tick_idle` while any is live, so expiry needs no client traffic.
//! - **Reads**: linearizable through `ensure_linearizable` on the leader, or ReadIndex from a
//!   follower (ask the leader for the index, wait to apply it, read locally); stale reads are
//!   local. The leader's reads share rounds: one round of heartbeats to a quorum answers every
//!   read asked before it began (its own and its followers'); reads asked during a round wait
//!   for the next, because a quorum confirms leadership only from when its round began.
//!   openraft lets a leader survive its own restart without an election, and then its
//!   read index (`max(committed, first log of its term)`) can lie behind entries it committed
//!   and acknowledged before the crash, because the commit index is not synced. Until a new
//!   vote, such a leader's read index is raised to the last log entry it recovered: leader
//!   completeness puts every committed entry there, and it commits in this very term.
//! - **Vouch lease**: a replica may vouch that a tenant token is still valid on a stale read
//!   only while its state is known to be recent (`vouch_lease`, `TOKEN_VOUCH_LEASE`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{ClientWriteError, InitializeError};
use openraft::storage::RaftLogStorage;
use openraft::{BasicNode, RaftMetrics, ServerState};
use prometheus_client::metrics::histogram::Histogram;
use tokio::sync::{mpsc, oneshot, watch, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::audit::AuditStore;
use crate::clock::{Clock, ClockSync, CLOCK_BOUND_WAIT, CLOCK_SAMPLE_INTERVAL};
use crate::fatal::FailStop;
use crate::network::{self, Connect, PeerNetwork, Rpc};
use crate::raft::peer::{ForwardError, Peer, ReplicaStatus};
use crate::raft::state_machine::{Replicated, SnapshotSummary, StateMachine};
use crate::raft::types::{
    Batch, BatchResult, LogId, Node, Proposal, Raft, RaftError, ReplicaId, Vote,
};
use crate::scheduler::{Applied, Command, UnixMillis};
use crate::storage::{LogStore, SnapshotStore};
use crate::usage::{self, UsageLocation, UsageStore};

/// Timing and batching knobs of one replica.
#[derive(Clone, Debug)]
pub struct ReplicaOptions {
    pub id: ReplicaId,
    /// The peer address other replicas reach this one at.
    pub advertise_peer: String,
    pub heartbeat_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// Build a snapshot after this many log entries since the last one.
    pub snapshot_logs: u64,
    /// Log entries kept behind a snapshot (for followers that lag a little).
    pub snapshot_keep_logs: u64,
    /// Longest gap between ticks while a lease or reservation is live.
    pub tick_idle: Duration,
    /// Most commands committed in one log entry.
    pub batch_max: usize,
    /// Batches proposed concurrently.
    pub batches_in_flight: usize,
    /// How long a write may take before its outcome is reported unknown.
    pub write_deadline: Duration,
    /// What stops the replica when its storage fails or apply panics: the process exits,
    /// unless tests or the simulation record it instead (`crate::fatal`).
    pub fail_stop: FailStop,
}

impl ReplicaOptions {
    pub fn new(id: ReplicaId, advertise_peer: impl Into<String>) -> Self {
        ReplicaOptions {
            id,
            advertise_peer: advertise_peer.into(),
            heartbeat_ms: 100,
            election_timeout_min_ms: 500,
            election_timeout_max_ms: 1_000,
            snapshot_logs: 10_000,
            snapshot_keep_logs: 1_000,
            tick_idle: Duration::from_millis(500),
            batch_max: 512,
            batches_in_flight: 4,
            write_deadline: Duration::from_secs(5),
            fail_stop: FailStop::exit_process(),
        }
    }

    fn raft_config(&self) -> Result<openraft::Config, String> {
        openraft::Config {
            cluster_name: "berth".into(),
            heartbeat_interval: self.heartbeat_ms,
            election_timeout_min: self.election_timeout_min_ms,
            election_timeout_max: self.election_timeout_max_ms,
            install_snapshot_timeout: 10_000,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(self.snapshot_logs),
            max_in_snapshot_log_to_keep: self.snapshot_keep_logs,
            // Purge in batches, but never more than a snapshot interval could ever accumulate.
            purge_batch_size: (self.snapshot_logs / 4).clamp(1, 256),
            snapshot_max_chunk_size: 4 * 1024 * 1024,
            max_payload_entries: ENTRIES_PER_APPEND_MAX,
            ..Default::default()
        }
        .validate()
        .map_err(|e| e.to_string())
    }
}

/// A write that did not produce an answer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    /// The command may or may not have been applied; retry it with the same request id.
    #[error("outcome unknown (retry with the same request id): {0}")]
    Unknown(String),
    /// No leader could be found before the deadline; the command was not applied.
    #[error("no leader: {0}")]
    NoLeader(String),
    #[error("replica is shutting down")]
    ShuttingDown,
    /// The command encodes to more than `PROPOSAL_BYTES_MAX`; it was not proposed.
    #[error("the command encodes to {bytes} bytes, more than the {max} a proposal may take")]
    TooLarge { bytes: usize, max: usize },
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    #[error("no leader to confirm a linearizable read: {0}")]
    NoLeader(String),
    #[error("read timed out: {0}")]
    Timeout(String),
}

/// Why `Replica::snapshot_now` has no snapshot to give.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error("building the snapshot failed: {0}")]
    Failed(String),
}

/// How often `Replica::snapshot_now` looks again for the snapshot it asked for.
const SNAPSHOT_POLL: Duration = Duration::from_secs(1);

/// The vouch lease (`Replica::vouch_lease`); its mutex also makes renewals single-flight.
#[derive(Default)]
struct Vouch {
    /// The lease ends at this instant.
    until: Option<Instant>,
    /// The last renewal that failed: when it began, and why. Callers that were already
    /// waiting when it began share its answer rather than each trying again in turn.
    failed: Option<(Instant, ReadError)>,
}

/// How fresh a read must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Consistency {
    /// Reflects every write acknowledged before the read began (ReadIndex).
    Linearizable,
    /// This replica's state, possibly behind.
    Stale,
}

struct Pending {
    proposal: Proposal,
    /// The proposal's encoded size.
    bytes: usize,
    reply: oneshot::Sender<Result<Applied, WriteError>>,
}

struct Inner {
    options: ReplicaOptions,
    raft: Raft,
    sm: StateMachine,
    clock: Arc<dyn Clock>,
    /// Peers' clock readings: what bounds the time this replica stamps as leader.
    clock_sync: ClockSync,
    connect: Connect,
    queue: mpsc::Sender<Pending>,
    stop: watch::Sender<bool>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    /// The last leader we forwarded to, with its client (channels are reused).
    leader_client: Mutex<Option<(ReplicaId, String, Peer)>>,
    /// The vote and the last log entry found on disk at start (see the module header).
    recovered: (Option<Vote>, Option<LogId>),
    /// ReadIndex rounds served as leader (`ReplicaStatus::read_indexes`).
    read_indexes: AtomicU64,
    /// Reads waiting for the next ReadIndex round (`run_read_rounds`).
    reads: mpsc::Sender<oneshot::Sender<ReadRound>>,
    vouch: tokio::sync::Mutex<Vouch>,
    /// Commands in each batch this replica's proposer sent (to Raft, or to the leader).
    batch_sizes: Histogram,
    /// What Raft's calls to each peer took, and how they failed.
    peer_stats: Arc<network::PeerStats>,
}

/// A running replica; clones share it.
#[derive(Clone)]
pub struct Replica {
    inner: Arc<Inner>,
}

/// Commands waiting for the proposer, at most.
const QUEUE_MAX: usize = 65_536;
/// Reads waiting for a ReadIndex round, at most (one more waits for room).
const READS_WAITING_MAX: usize = 65_536;

/// What a ReadIndex round answers each read it serves: the index to apply before reading.
type ReadRound =
    Result<Option<LogId>, RaftError<openraft::error::CheckIsLeaderError<ReplicaId, BasicNode>>>;
/// Largest client command, encoded, that a replica proposes; a larger one is refused before
/// it is queued. Every request the API accepts (`api::API_REQUEST_BYTES_MAX`) fits.
pub const PROPOSAL_BYTES_MAX: usize = 1024 * 1024;
/// Most encoded bytes of commands in one log entry (group commit stops adding commands at
/// this size or at `batch_max` commands, whichever comes first). Any single proposal fits.
/// openraft gives an AppendEntries one heartbeat interval to travel and be appended, so an
/// entry must stay small enough to cross in one, batches in flight included; and far below
/// the peer frame limit (`network::PEER_MESSAGE_MAX_BYTES`, 64 MiB).
pub const BATCH_BYTES_MAX: usize = 1024 * 1024;
const _: () = assert!(PROPOSAL_BYTES_MAX <= BATCH_BYTES_MAX);
const _: () = assert!(BATCH_BYTES_MAX <= crate::network::PEER_MESSAGE_MAX_BYTES / 16);
/// Most log entries in one AppendEntries: at `BATCH_BYTES_MAX` each they fill half a peer frame,
/// so a follower catching up on the largest entries is never sent a message it must refuse
/// (openraft's default, 300, could build one of 300 MiB and retry it forever).
const ENTRIES_PER_APPEND_MAX: u64 =
    (crate::network::PEER_MESSAGE_MAX_BYTES / 2 / BATCH_BYTES_MAX) as u64;

/// How long a replica may vouch for tenant tokens on stale reads after it asked for a read
/// index and applied up to it, measured from the moment it *asked* (`vouch_lease`).
///
/// Why a revoked token then never reads again once its revocation was answered: a command
/// that takes a token away (RevokeToken, DeleteTenant) is answered only
/// `TOKEN_VOUCH_LEASE + TOKEN_VOUCH_DRIFT_MARGIN` after the answering replica learned it was
/// applied, which is after it committed. A replica whose read index includes the revocation
/// sees it in its state and refuses the token. A replica whose read index does not include it
/// asked for that index before the revocation committed (a read index covers every entry
/// committed before the leader received the request), so its lease ends before the
/// revocation is answered; to vouch again it must ask again, and gets an index that includes
/// the revocation. This assumes nothing about network delay, only that replicas' monotonic
/// clocks measure elapsed time at rates within the margin of each other.
///
/// Longer leases cost revocations more waiting; shorter ones cost more ReadIndex rounds
/// (at most one per lease per replica, however many stale reads share it).
pub const TOKEN_VOUCH_LEASE: Duration = Duration::from_millis(500);

/// What a revocation waits beyond `TOKEN_VOUCH_LEASE`, for replicas' clocks measuring elapsed
/// time at different rates: a tenth of the lease covers rates 10 % apart (real clocks differ
/// by well under 0.1 %).
pub const TOKEN_VOUCH_DRIFT_MARGIN: Duration = Duration::from_millis(50);

/// How long to wait for leadership news before looking again.
const LEADER_POLL: Duration = Duration::from_millis(20);
/// The shortest wait between two looks for a leader.
const LEADER_BACKOFF: Duration = Duration::from_millis(2);

/// A count as a histogram observation (exact below 2^53, far above any batch).
fn count_f64(n: usize) -> f64 {
    u32::try_from(n).map_or(f64::from(u32::MAX), f64::from)
}

/// The encoded size of `proposal`, counted without building the encoding.
fn encoded_len(proposal: &Proposal) -> usize {
    let mut counter = bincode::enc::write::SizeWriter::default();
    bincode::serde::encode_into_writer(proposal, &mut counter, bincode::config::standard())
        .expect("invariant: a proposal encodes (every sequence in it has a known length)");
    counter.bytes_written
}

impl Replica {
    /// Opens storage, starts Raft and the proposer and ticker. Serve the replica on the peer
    /// listener (`network::serve`, it is the port's `Handler`) for the replica to reach and be reached by the others.
    pub async fn start(
        options: ReplicaOptions,
        log: LogStore,
        snapshots: SnapshotStore,
        usage: UsageLocation,
        clock: Arc<dyn Clock>,
        connect: Connect,
    ) -> Result<Replica, String> {
        let config = Arc::new(options.raft_config()?);
        let usage_store = UsageStore::open(&usage, options.fail_stop.clone())
            .map_err(|e| format!("opening the usage store: {e}"))?;
        let audit = AuditStore::open(&audit_location(&usage))
            .map_err(|e| format!("opening the audit trail: {e}"))?;
        let sm = StateMachine::open(snapshots, usage_store, audit, options.fail_stop.clone())
            .map_err(|e| e.to_string())?;
        let mut recovering = log.clone();
        let vote = recovering.read_vote().await.map_err(|e| e.to_string())?;
        let last_log = recovering.get_log_state().await.map_err(|e| e.to_string())?.last_log_id;
        let peer_stats = Arc::new(network::PeerStats::default());
        let network = PeerNetwork::new(connect.clone(), peer_stats.clone());
        let raft = Raft::new(options.id, config, network, log, sm.clone())
            .await
            .map_err(|e| e.to_string())?;
        let (queue, rx) = mpsc::channel(QUEUE_MAX);
        let (reads, asked) = mpsc::channel(READS_WAITING_MAX);
        let (stop, _) = watch::channel(false);
        let replica = Replica {
            inner: Arc::new(Inner {
                options,
                raft,
                sm,
                clock,
                clock_sync: ClockSync::default(),
                connect,
                queue,
                stop,
                tasks: Mutex::new(Vec::new()),
                leader_client: Mutex::new(None),
                recovered: (vote, last_log),
                read_indexes: AtomicU64::new(0),
                reads,
                vouch: tokio::sync::Mutex::new(Vouch::default()),
                batch_sizes: Histogram::new(
                    prometheus_client::metrics::histogram::exponential_buckets(1.0, 2.0, 11),
                ),
                peer_stats,
            }),
        };
        let proposer = tokio::spawn(replica.clone().run_proposer(rx));
        let ticker = tokio::spawn(replica.clone().run_ticker());
        let reporter = tokio::spawn(replica.clone().report_role_changes());
        let clocks = tokio::spawn(replica.clone().read_peer_clocks());
        let read_rounds = tokio::spawn(replica.clone().run_read_rounds(asked));
        replica.lock_tasks().extend([proposer, ticker, reporter, clocks, read_rounds]);
        Ok(replica)
    }

    fn lock_tasks(&self) -> std::sync::MutexGuard<'_, Vec<JoinHandle<()>>> {
        self.inner.tasks.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn id(&self) -> ReplicaId {
        self.inner.options.id
    }

    pub fn raft(&self) -> &Raft {
        &self.inner.raft
    }

    /// What Raft's calls to each peer took, and how they failed (for its metrics).
    pub fn peer_stats(&self) -> &network::PeerStats {
        &self.inner.peer_stats
    }

    /// Commands per batch this replica's proposer sent (a histogram for its metrics).
    pub fn batch_sizes(&self) -> &Histogram {
        &self.inner.batch_sizes
    }

    /// What stops this replica for good; `stopped()` tells when it has.
    /// The events this replica applied, for watch streams.
    pub fn journal(&self) -> &crate::raft::journal::Journal {
        self.inner.sm.journal()
    }

    pub fn fail_stop(&self) -> &FailStop {
        &self.inner.options.fail_stop
    }

    /// The read index of a linearizable read, if this replica leads: openraft's ReadIndex
    /// (leadership confirmed by a quorum), raised to the recovered last log entry while the
    /// vote is still the one found on disk (a leader that survived its restart). The read
    /// shares its round with the others waiting (`run_read_rounds`); the reader applies up to
    /// the index before it reads, within its own deadline.
    pub async fn leader_read_index(&self) -> ReadRound {
        let stopped = || RaftError::Fatal(openraft::error::Fatal::Stopped);
        let (answer, answered) = oneshot::channel();
        self.inner.reads.send(answer).await.map_err(|_| stopped())?;
        let index = answered.await.map_err(|_| stopped())??;
        let (vote, last_log) = &self.inner.recovered;
        let same_vote = vote.as_ref() == Some(&self.inner.raft.metrics().borrow().vote);
        Ok(if same_vote { index.max(*last_log) } else { index })
    }

    /// Runs ReadIndex rounds one after another while reads wait; each answers every read
    /// asked before it began.
    async fn run_read_rounds(self, mut asked: mpsc::Receiver<oneshot::Sender<ReadRound>>) {
        while let Some(first) = asked.recv().await {
            let mut waiting = vec![first];
            while let Ok(next) = asked.try_recv() {
                waiting.push(next);
            }
            // Every read in `waiting` was asked before this round begins, so the quorum that
            // answers it confirms a leadership that held after each of them was asked.
            let round = self.inner.raft.get_read_log_id().await.map(|(index, _applied)| index);
            if round.is_ok() {
                self.inner.read_indexes.fetch_add(1, Ordering::Relaxed);
            }
            for read in waiting {
                // A read whose caller gave up is not waited for.
                let _ = read.send(round.clone());
            }
        }
    }

    /// Initialises a new cluster with `members` (id → peer address). Returns false if this
    /// replica already belongs to a cluster (restarts never re-initialise).
    pub async fn initialize(&self, members: BTreeMap<ReplicaId, String>) -> Result<bool, String> {
        let nodes: BTreeMap<ReplicaId, BasicNode> =
            members.into_iter().map(|(id, addr)| (id, BasicNode::new(addr))).collect();
        match self.inner.raft.initialize(nodes).await {
            Ok(()) => Ok(true),
            Err(RaftError::APIError(InitializeError::NotAllowed(_))) => Ok(false),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Proposes one client command and waits for its answer. A command larger than
    /// `PROPOSAL_BYTES_MAX` is refused at once (`TooLarge`) and never proposed.
    pub async fn propose(&self, proposal: Proposal) -> Result<Applied, WriteError> {
        let bytes = encoded_len(&proposal);
        if bytes > PROPOSAL_BYTES_MAX {
            return Err(WriteError::TooLarge { bytes, max: PROPOSAL_BYTES_MAX });
        }
        if *self.inner.stop.borrow() {
            return Err(WriteError::ShuttingDown);
        }
        let (reply, answer) = oneshot::channel();
        self.inner
            .queue
            .send(Pending { proposal, bytes, reply })
            .await
            .map_err(|_| WriteError::ShuttingDown)?;
        answer.await.map_err(|_| WriteError::ShuttingDown)?
    }

    async fn run_proposer(self, mut rx: mpsc::Receiver<Pending>) {
        let in_flight = Arc::new(Semaphore::new(self.inner.options.batches_in_flight.max(1)));
        let mut stop = self.inner.stop.subscribe();
        // The command that did not fit the last batch's byte budget opens the next one.
        let mut carried: Option<Pending> = None;
        loop {
            // A batch slot first, then everything queued by the time it frees: while every
            // slot is busy, commands pile up and go out together in the next entry.
            let permit = tokio::select! {
                biased; // a stopped replica takes nothing more
                _ = stop.changed() => break,
                permit = in_flight.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break,
                },
            };
            let first = match carried.take() {
                Some(p) => p,
                None => tokio::select! {
                    biased; // a stopped replica takes nothing more
                    _ = stop.changed() => break,
                    next = rx.recv() => match next { Some(p) => p, None => break },
                },
            };
            let mut bytes = first.bytes;
            let mut batch = vec![first];
            while batch.len() < self.inner.options.batch_max {
                match rx.try_recv() {
                    Ok(p) if bytes + p.bytes > BATCH_BYTES_MAX => {
                        carried = Some(p);
                        break;
                    }
                    Ok(p) => {
                        bytes += p.bytes;
                        batch.push(p);
                    }
                    Err(_) => break,
                }
            }
            self.inner.batch_sizes.observe(count_f64(batch.len()));
            let me = self.clone();
            tokio::spawn(async move {
                let proposals: Vec<Proposal> = batch.iter().map(|p| p.proposal.clone()).collect();
                let outcome = me.submit(proposals).await;
                match outcome {
                    Ok(results) if results.len() == batch.len() => {
                        for (pending, applied) in batch.into_iter().zip(results) {
                            let _ = pending.reply.send(Ok(applied));
                        }
                    }
                    Ok(results) => {
                        let why = format!("{} answers for {} commands", results.len(), batch.len());
                        for pending in batch {
                            let _ = pending.reply.send(Err(WriteError::Unknown(why.clone())));
                        }
                    }
                    Err(e) => {
                        for pending in batch {
                            let _ = pending.reply.send(Err(e.clone()));
                        }
                    }
                }
                drop(permit);
            });
        }
    }

    /// Commits `proposals` in one entry: locally when leading, else through the leader.
    async fn submit(&self, proposals: Vec<Proposal>) -> Result<BatchResult, WriteError> {
        let deadline = Instant::now() + self.inner.options.write_deadline;
        let mut sent = false;
        let mut last_problem = String::from("no leader elected yet");
        while Instant::now() < deadline {
            let leader = self.known_leader();
            match leader {
                Some(id) if id == self.id() => {
                    sent = true;
                    match self.write(proposals.clone()).await {
                        Ok(results) => return Ok(results),
                        Err(ForwardError::NotLeader { .. }) => {
                            // Not appended: we lost leadership before proposing.
                            last_problem = "leadership moved".into();
                        }
                        Err(ForwardError::Unavailable(why)) => {
                            return Err(WriteError::Unknown(why))
                        }
                    }
                }
                Some(id) => {
                    // A leader cut off from this replica answers nothing until the deadline,
                    // while the others elect a new one: follow the news, not the old call.
                    let forwarded = tokio::select! {
                        outcome = self.forward(id, &proposals, deadline) => outcome,
                        () = self.leader_moves_from(id) => {
                            Err(format!("leadership moved from replica {id} while forwarding"))
                        }
                    };
                    match forwarded {
                        Ok(Ok(results)) => return Ok(results),
                        Ok(Err(ForwardError::NotLeader { .. })) => {
                            last_problem = format!("replica {id} is no longer the leader");
                        }
                        Ok(Err(ForwardError::Unavailable(why))) => {
                            return Err(WriteError::Unknown(why))
                        }
                        Err(why) => {
                            // Unanswered, perhaps applied: send again (request ids make it
                            // safe; a heartbeat, which has none, only extends a TTL again).
                            sent = true;
                            last_problem = why;
                        }
                    }
                }
                None => {}
            }
            self.wait_for_leadership_news().await;
        }
        Err(if sent {
            WriteError::Unknown(last_problem)
        } else {
            WriteError::NoLeader(last_problem)
        })
    }

    /// Stamps `proposals` with this replica's time and proposes them as one entry, if it
    /// leads: the only writer of `Batch::proposed_at`, for this replica's own commands and
    /// those its followers forward alike.
    async fn write(&self, proposals: Vec<Proposal>) -> Result<BatchResult, ForwardError> {
        let batch = Batch { proposed_at: self.bounded_stamp().await?, proposals };
        self.inner.raft.client_write(batch).await.map(|written| written.data).map_err(|e| {
            match e.forward_to_leader() {
                Some(f) => not_leader(f.leader_id, f.leader_node.clone()),
                None => ForwardError::Unavailable(e.to_string()),
            }
        })
    }

    async fn forward(
        &self,
        leader: ReplicaId,
        proposals: &[Proposal],
        deadline: Instant,
    ) -> Result<Result<BatchResult, ForwardError>, String> {
        let client = self.leader_client(leader)?;
        let remaining = deadline.saturating_duration_since(Instant::now());
        client.propose(proposals, remaining).await.map_err(|e| {
            self.forget_leader_client();
            e.to_string()
        })
    }

    fn leader_client(&self, leader: ReplicaId) -> Result<Peer, String> {
        let addr = self
            .inner
            .raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .get_node(&leader)
            .map(|n| n.addr.clone())
            .ok_or_else(|| format!("leader {leader} has no known address"))?;
        let mut cached = self.inner.leader_client.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((id, cached_addr, client)) = cached.as_ref() {
            if *id == leader && *cached_addr == addr {
                return Ok(client.clone());
            }
        }
        let client = Peer::new(&self.inner.connect, &addr);
        *cached = Some((leader, addr, client.clone()));
        Ok(client)
    }

    fn forget_leader_client(&self) {
        *self.inner.leader_client.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Returns once this replica no longer knows `leader` as the leader (another, or none).
    async fn leader_moves_from(&self, leader: ReplicaId) {
        let mut metrics = self.inner.raft.metrics();
        let stopped = metrics.wait_for(|m| self.leader_in(m) != Some(leader)).await.is_err();
        if stopped {
            // Raft has stopped: no news will come; the forward's own deadline ends it.
            std::future::pending::<()>().await;
        }
    }

    async fn wait_for_leadership_news(&self) {
        let mut metrics = self.inner.raft.metrics();
        // A fresh receiver counts the current value as unseen: without marking it seen,
        // `changed()` returns at once and a write waiting for a leader spins.
        metrics.borrow_and_update();
        let started = Instant::now();
        let _ = tokio::time::timeout(LEADER_POLL, metrics.changed()).await;
        // Metrics can change on every round while nothing useful happens (a replica removed
        // while leading still names itself leader, and each refused write updates them):
        // never retry sooner than the backoff, or the caller spins without time passing.
        let waited = started.elapsed();
        if waited < LEADER_BACKOFF {
            tokio::time::sleep(LEADER_BACKOFF - waited).await;
        }
    }

    /// The time this replica stamps into an entry it proposes as leader: its clock, held to at
    /// most `CLOCK_AHEAD_MAX_MS` ahead of what the voters' clocks read; `None` while too few
    /// of them are read to bound it (`ClockSync`).
    pub fn stamp(&self) -> Option<UnixMillis> {
        let own = self.inner.clock.now();
        self.inner.clock_sync.stamp(self.id(), own, &self.voter_ids(), Instant::now())
    }

    /// This replica's time for a check that stamps nothing (a token's expiry): the stamp, or
    /// its own clock while there is none (a clock ahead refuses a token early, never late).
    pub fn now(&self) -> UnixMillis {
        self.stamp().unwrap_or_else(|| self.inner.clock.now())
    }

    /// The stamp, once enough of the voters' clocks are read, waiting up to
    /// `CLOCK_BOUND_WAIT` for them (a leader just started reads them within half a second).
    async fn bounded_stamp(&self) -> Result<UnixMillis, ForwardError> {
        let deadline = Instant::now() + CLOCK_BOUND_WAIT;
        loop {
            let read_more = self.inner.clock_sync.read_more();
            if let Some(stamp) = self.stamp() {
                return Ok(stamp);
            }
            if tokio::time::timeout_at(deadline, read_more).await.is_err() {
                return Err(ForwardError::Unavailable(format!(
                    "this leader has read too few of the voters' clocks in {} ms to bound its \
                     own; nothing was proposed",
                    CLOCK_BOUND_WAIT.as_millis()
                )));
            }
        }
    }

    /// Reads every other voter's clock every `CLOCK_SAMPLE_INTERVAL`, all at once.
    async fn read_peer_clocks(self) {
        let mut stop = self.inner.stop.subscribe();
        let mut every = tokio::time::interval(CLOCK_SAMPLE_INTERVAL);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut clients: BTreeMap<ReplicaId, (String, Peer)> = BTreeMap::new();
        loop {
            tokio::select! {
                biased; // a stopped replica takes nothing more
                _ = stop.changed() => break,
                _ = every.tick() => {}
            }
            let voters = self.voter_ids();
            let addrs: BTreeMap<ReplicaId, String> = {
                let metrics = self.inner.raft.metrics();
                let m = metrics.borrow();
                let membership = m.membership_config.membership();
                voters
                    .iter()
                    .filter(|id| **id != self.id())
                    .filter_map(|id| membership.get_node(id).map(|n| (*id, n.addr.clone())))
                    .collect()
            };
            clients.retain(|id, (addr, _)| addrs.get(id) == Some(addr));
            let mut readings = tokio::task::JoinSet::new();
            for (id, addr) in addrs {
                let (_, client) = clients
                    .entry(id)
                    .or_insert_with(|| (addr.clone(), Peer::new(&self.inner.connect, &addr)));
                let client = client.clone();
                readings.spawn(async move {
                    let sent = Instant::now();
                    let reading = client.clock(CLOCK_SAMPLE_INTERVAL).await;
                    (id, sent, reading, Instant::now())
                });
            }
            while let Some(done) = readings.join_next().await {
                if let Ok((id, sent, Ok(peer), received)) = done {
                    self.inner.clock_sync.record(id, sent, peer.0, received);
                }
            }
        }
    }

    async fn run_ticker(self) {
        let mut stop = self.inner.stop.subscribe();
        let mut check = tokio::time::interval(Duration::from_millis(50));
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_tick: Option<Instant> = None;
        loop {
            tokio::select! {
                biased; // a stopped replica takes nothing more
                _ = stop.changed() => break,
                _ = check.tick() => {}
            }
            if !self.is_leader() {
                continue;
            }
            let (next_deadline, next_purge) = {
                let s = &self.inner.sm.read().scheduler;
                (s.next_deadline(), s.next_token_purge())
            };
            let Some(now) = self.stamp() else { continue };
            let due = next_deadline.into_iter().chain(next_purge).any(|at| at <= now);
            let idle = next_deadline.is_some()
                && last_tick.is_none_or(|t| t.elapsed() >= self.inner.options.tick_idle);
            if due || idle {
                last_tick = Some(Instant::now());
                let tick = Proposal { request_id: None, command: Command::Tick, token: None };
                if let Err(e) = self.propose(tick).await {
                    tracing::debug!(error = %e, "tick not committed");
                }
            }
        }
    }

    /// Logs every change of role, term or leader, for operators (and scripts) to follow.
    async fn report_role_changes(self) {
        let mut metrics = self.inner.raft.metrics();
        let mut seen = None;
        loop {
            let now = {
                let m = metrics.borrow_and_update();
                (m.state, m.current_term, m.current_leader)
            };
            if seen != Some(now) {
                let (role, term, leader) = now;
                tracing::info!(replica = self.id(), ?role, term, ?leader, "role changed");
                seen = Some(now);
            }
            if metrics.changed().await.is_err() {
                break;
            }
        }
    }

    /// Whether this replica leads now. A leader removed from the voters turns learner but
    /// keeps naming itself as `current_leader`; only the role tells.
    pub fn is_leader(&self) -> bool {
        let m = self.inner.raft.metrics();
        let m = m.borrow();
        m.state == ServerState::Leader && m.current_leader == Some(self.id())
    }

    /// The leader to send writes and read-index requests to: this replica only while it
    /// leads (see `is_leader`), else the one it last heard of.
    fn known_leader(&self) -> Option<ReplicaId> {
        self.leader_in(&self.inner.raft.metrics().borrow())
    }

    /// The leader `metrics` name, unless it is this replica and it no longer leads.
    fn leader_in(&self, metrics: &RaftMetrics<ReplicaId, BasicNode>) -> Option<ReplicaId> {
        match metrics.current_leader {
            Some(id) if id == self.id() && metrics.state != ServerState::Leader => None,
            other => other,
        }
    }

    /// Reads the replicated state with the requested freshness.
    pub async fn read<T>(
        &self,
        consistency: Consistency,
        deadline: Duration,
        f: impl FnOnce(&Replicated) -> T,
    ) -> Result<T, ReadError> {
        if consistency == Consistency::Linearizable {
            let until = Instant::now() + deadline;
            let index = self.read_index(until).await?;
            if let Some(index) = index {
                let remaining = until.saturating_duration_since(Instant::now());
                self.inner
                    .raft
                    .wait(Some(remaining))
                    .applied_index_at_least(Some(index.index), "read index applied")
                    .await
                    .map_err(|e| ReadError::Timeout(e.to_string()))?;
            }
        }
        Ok(self.read_local(f))
    }

    /// Holds a vouch lease (see `TOKEN_VOUCH_LEASE`), renewing it if it ran out: by then this
    /// replica has applied a read index it asked for less than `TOKEN_VOUCH_LEASE` ago. A
    /// renewal costs one ReadIndex round; concurrent callers share it. Fails if no leader
    /// confirms an index in time (no renewal is given longer than the lease it would yield).
    pub async fn vouch_lease(&self, until: Instant) -> Result<(), ReadError> {
        let waiting_since = Instant::now();
        let held = |vouch: &Vouch| vouch.until.is_some_and(|end| Instant::now() < end);
        let mut vouch = tokio::time::timeout_at(until, self.inner.vouch.lock())
            .await
            .map_err(|_| ReadError::Timeout("waiting for the vouch lease".into()))?;
        if held(&vouch) {
            return Ok(());
        }
        if let Some((began, why)) = &vouch.failed {
            if *began >= waiting_since {
                return Err(why.clone());
            }
        }
        let asked = Instant::now();
        let renewal = until.min(asked + TOKEN_VOUCH_LEASE).saturating_duration_since(asked);
        match self.read(Consistency::Linearizable, renewal, |_| ()).await {
            Ok(()) => {
                *vouch = Vouch { until: Some(asked + TOKEN_VOUCH_LEASE), failed: None };
                if held(&vouch) {
                    Ok(())
                } else {
                    Err(ReadError::Timeout("the vouch lease ran out while it was renewed".into()))
                }
            }
            Err(why) => {
                vouch.failed = Some((asked, why.clone()));
                Err(why)
            }
        }
    }

    /// A read index confirmed by a quorum: locally when leading, else from the leader.
    async fn read_index(&self, until: Instant) -> Result<Option<LogId>, ReadError> {
        let mut last_problem = String::from("no leader elected yet");
        while Instant::now() < until {
            let leader = self.known_leader();
            match leader {
                Some(id) if id == self.id() => match self.leader_read_index().await {
                    Ok(index) => return Ok(index),
                    Err(e) => last_problem = e.to_string(),
                },
                Some(id) => {
                    let remaining = until.saturating_duration_since(Instant::now());
                    match self.leader_client(id) {
                        Ok(client) => match client.read_index(remaining).await {
                            Ok(Ok(index)) => return Ok(index),
                            Ok(Err(e)) => last_problem = e.to_string(),
                            Err(e) => {
                                self.forget_leader_client();
                                last_problem = e.to_string();
                            }
                        },
                        Err(e) => last_problem = e,
                    }
                }
                None => {}
            }
            self.wait_for_leadership_news().await;
        }
        Err(ReadError::NoLeader(last_problem))
    }

    /// Bytes of the snapshot this replica keeps that are its replicated state (not the usage
    /// store's changes since its base); 0 before its first snapshot.
    pub fn snapshot_state_bytes(&self) -> u64 {
        self.inner.sm.snapshot_state_bytes()
    }

    /// Placements of each tenant preempted by the entries this replica applied since it
    /// started (for its metrics).
    pub fn preemptions(&self) -> BTreeMap<crate::scheduler::TenantId, u64> {
        self.inner.sm.preemptions()
    }

    /// Reads this replica's state as it is now (possibly behind the leader).
    pub fn read_local<T>(&self, f: impl FnOnce(&Replicated) -> T) -> T {
        f(&self.inner.sm.read())
    }

    /// This replica's audit trail (`crate::audit`): ask it under `read`'s closure, so the
    /// answer is as of the index the read reached.
    pub fn audit_store(&self) -> &crate::audit::AuditStore {
        self.inner.sm.audit()
    }

    /// This replica's usage history (`crate::usage`): ask it under `read`'s closure, so
    /// the answer is as of the index the read reached.
    pub fn usage_store(&self) -> &UsageStore {
        self.inner.sm.usage()
    }

    /// The command index this replica has applied and the SHA-256 of its usage store there
    /// (to wait for): equal on replicas at equal index.
    pub fn usage_hash(&self) -> (u64, usage::Pending<[u8; 32]>) {
        let state = self.inner.sm.read();
        (state.progress.command_index, self.inner.sm.usage().hash())
    }

    /// A snapshot on this replica that holds every write acknowledged before the call (a
    /// linearizable read first): the one it keeps if that is new enough, or one built now
    /// (openraft then compacts the log behind it).
    pub async fn snapshot_now(&self, deadline: Duration) -> Result<SnapshotSummary, SnapshotError> {
        let until = Instant::now() + deadline;
        let applied =
            self.read(Consistency::Linearizable, deadline, |s| s.progress.last_applied).await?;
        let want = applied.map(|l| l.index);
        let held = |sm: &StateMachine| {
            sm.snapshot_summary().filter(|s| s.last_log_id.map(|l| l.index) >= want)
        };
        loop {
            if let Some(summary) = held(&self.inner.sm) {
                return Ok(summary);
            }
            // Ignored while a build runs; asked again after it (it may be older than `want`).
            self.inner
                .raft
                .trigger()
                .snapshot()
                .await
                .map_err(|e| SnapshotError::Failed(e.to_string()))?;
            let step = until.saturating_duration_since(Instant::now()).min(SNAPSHOT_POLL);
            // Either way (built, or a second gone by), look again: `current` is set first.
            let _ = self
                .inner
                .raft
                .wait(Some(step))
                .metrics(|m| m.snapshot.map(|l| l.index) >= want, "snapshot built")
                .await;
            if let Some(why) = self.fail_stop().reason() {
                return Err(SnapshotError::Failed(why));
            }
            if held(&self.inner.sm).is_none() && Instant::now() >= until {
                return Err(SnapshotError::Read(ReadError::Timeout(
                    "no snapshot was built before the deadline".into(),
                )));
            }
        }
    }

    /// A backup: `snapshot_now`'s snapshot as a backup file, and what it holds.
    pub async fn backup(
        &self,
        deadline: Duration,
    ) -> Result<(Vec<u8>, SnapshotSummary), SnapshotError> {
        self.snapshot_now(deadline).await?;
        self.inner.sm.backup().await.map_err(|e| SnapshotError::Failed(e.to_string()))
    }

    /// What this replica knows of the cluster from its own Raft view: no peer is asked and no
    /// state is hashed, so it is cheap enough for every console page (`status` is the full
    /// report).
    pub fn view(&self) -> RaftView {
        let m = self.inner.raft.metrics().borrow().clone();
        let (voters, learners) = members(&m);
        let matched = m.replication.as_ref().map(|replication| {
            replication.iter().map(|(id, log)| (*id, log.map(|l| l.index))).collect()
        });
        RaftView {
            id: m.id,
            role: format!("{:?}", m.state),
            leader: self.leader_in(&m),
            term: m.current_term,
            last_log_index: m.last_log_index,
            last_applied_index: m.last_applied.map(|l| l.index),
            voters,
            learners,
            matched,
            stopped: m.running_state.as_ref().err().map(ToString::to_string),
            snapshot_index: m.snapshot.map(|l| l.index),
            millis_since_quorum_ack: m.millis_since_quorum_ack,
        }
    }

    pub fn status(&self) -> ReplicaStatus {
        let m = self.inner.raft.metrics().borrow().clone();
        let (voters, learners) = members(&m);
        let state = self.inner.sm.read();
        ReplicaStatus {
            id: m.id,
            role: format!("{:?}", m.state),
            leader: m.current_leader,
            term: m.current_term,
            last_log_index: m.last_log_index,
            last_applied_index: m.last_applied.map(|l| l.index),
            snapshot_index: m.snapshot.map(|l| l.index),
            purged_index: m.purged.map(|l| l.index),
            voters,
            learners,
            applied_command_index: state.progress.command_index,
            now_ms: state.scheduler.now().0,
            state_hash: hex(&state.scheduler.state_hash()),
            read_indexes: self.inner.read_indexes.load(Ordering::Relaxed),
        }
    }

    /// Asks a peer for its own status over the peer port (`None` if it does not answer).
    pub async fn peer_status(&self, addr: &str) -> Option<ReplicaStatus> {
        let client = Peer::new(&self.inner.connect, addr);
        client.status(Duration::from_secs(1)).await.ok()
    }

    /// Adds a replica: first as a learner that catches up (by snapshot if needed), then as a
    /// voter. Call on the leader.
    pub async fn add_replica(&self, id: ReplicaId, addr: String) -> Result<(), String> {
        let raft = &self.inner.raft;
        self.retry_transient(|| async {
            // A new leader's inherited membership counts as committed only once its first
            // entry commits; confirming leadership first waits for exactly that.
            raft.ensure_linearizable().await.map_err(|e| (is_transient_read(&e), e.to_string()))?;
            raft.add_learner(id, BasicNode::new(addr.clone()), true)
                .await
                .map_err(|e| (is_transient_write(&e), e.to_string()))?;
            let mut voters = self.voter_ids();
            voters.insert(id);
            raft.change_membership(voters, false)
                .await
                .map_err(|e| (is_transient_write(&e), e.to_string()))?;
            Ok(())
        })
        .await
    }

    /// Removes a replica from the voters and the cluster. Call on the leader.
    pub async fn remove_replica(&self, id: ReplicaId) -> Result<(), String> {
        let raft = &self.inner.raft;
        self.retry_transient(|| async {
            raft.ensure_linearizable().await.map_err(|e| (is_transient_read(&e), e.to_string()))?;
            let mut voters = self.voter_ids();
            if !voters.remove(&id) {
                return Err((false, format!("replica {id} is not a voter")));
            }
            if voters.is_empty() {
                return Err((false, "cannot remove the last voter".to_owned()));
            }
            raft.change_membership(voters, false)
                .await
                .map_err(|e| (is_transient_write(&e), e.to_string()))?;
            Ok(())
        })
        .await
    }

    fn voter_ids(&self) -> BTreeSet<ReplicaId> {
        self.inner.raft.metrics().borrow().membership_config.membership().voter_ids().collect()
    }

    /// Runs a membership step until it succeeds, fails for good, or the write deadline passes.
    /// Errors are `(transient, message)`.
    async fn retry_transient<F, Fut>(&self, mut step: F) -> Result<(), String>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<(), (bool, String)>>,
    {
        let until = Instant::now() + self.inner.options.write_deadline;
        loop {
            match step().await {
                Ok(()) => return Ok(()),
                Err((true, why)) if Instant::now() < until => {
                    tracing::debug!(%why, "membership change will be retried");
                    self.wait_for_leadership_news().await;
                }
                Err((_, why)) => return Err(why),
            }
        }
    }

    /// Waits until this replica sees a leader, or the timeout passes.
    pub async fn wait_for_leader(&self, timeout: Duration) -> Result<ReplicaId, String> {
        self.inner
            .raft
            .wait(Some(timeout))
            .metrics(|m| m.current_leader.is_some(), "a leader")
            .await
            .map_err(|e| e.to_string())?
            .current_leader
            .ok_or_else(|| "no leader".to_owned())
    }

    pub fn role(&self) -> ServerState {
        self.inner.raft.metrics().borrow().state
    }

    /// Stops the tasks and Raft. Queued writes fail with `ShuttingDown`.
    pub async fn shutdown(&self) {
        let _ = self.inner.stop.send(true);
        if let Err(e) = self.inner.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
        let tasks: Vec<_> = self.lock_tasks().drain(..).collect();
        for task in tasks {
            task.abort();
        }
    }
}

/// What this replica answers on its peer port: openraft's calls go to Raft, forwarded
/// writes to `write`, forwarded reads to `leader_read_index`.
impl network::Handler for Replica {
    async fn handle(&self, rpc: Rpc, payload: &[u8]) -> Result<Vec<u8>, String> {
        use network::{decode, reply};
        let raft = &self.inner.raft;
        match rpc {
            Rpc::AppendEntries => reply(&raft.append_entries(decode(payload)?).await),
            Rpc::Vote => reply(&raft.vote(decode(payload)?).await),
            Rpc::InstallSnapshot => reply(&raft.install_snapshot(decode(payload)?).await),
            Rpc::Propose => reply(&self.write(decode(payload)?).await),
            Rpc::ReadIndex => {
                reply(&self.leader_read_index().await.map_err(|e| match e.forward_to_leader() {
                    Some(f) => not_leader(f.leader_id, f.leader_node.clone()),
                    None => ForwardError::Unavailable(e.to_string()),
                }))
            }
            Rpc::Status => reply(&self.status()),
            Rpc::Clock => reply(&self.inner.clock.now()),
            Rpc::Query => {
                let query: crate::scheduler::Query = decode(payload)?;
                reply(&self.read_local(|state| state.scheduler.query(&query)))
            }
        }
    }
}

/// openraft's "forward to leader", as told to the replica that forwarded the request.
fn not_leader(leader_id: Option<ReplicaId>, leader_node: Option<Node>) -> ForwardError {
    ForwardError::NotLeader { leader: leader_id.zip(leader_node.map(|n| n.addr)) }
}

/// A replica's own view of the cluster (`Replica::view`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RaftView {
    pub id: ReplicaId,
    pub role: String,
    /// The leader it knows of (not itself once it no longer leads).
    pub leader: Option<ReplicaId>,
    pub term: u64,
    pub last_log_index: Option<u64>,
    pub last_applied_index: Option<u64>,
    /// Voters and learners with their peer addresses.
    pub voters: BTreeMap<ReplicaId, String>,
    pub learners: BTreeMap<ReplicaId, String>,
    /// While it leads: the last log index each replica is known to hold.
    pub matched: Option<BTreeMap<ReplicaId, Option<u64>>>,
    /// Why its Raft stopped, once it has (a fatal error: the replica fail-stops).
    pub stopped: Option<String>,
    /// The log index its latest snapshot covers.
    pub snapshot_index: Option<u64>,
    /// While it leads: how long since a quorum last acknowledged it.
    pub millis_since_quorum_ack: Option<u64>,
}

impl RaftView {
    /// While it leads: the highest index a majority of the voters hold (what the leader may
    /// commit, entries of its own term permitting).
    pub fn majority_holds(&self) -> Option<u64> {
        let matched = self.matched.as_ref()?;
        let mut held: Vec<u64> =
            self.voters.keys().map(|id| matched.get(id).copied().flatten().unwrap_or(0)).collect();
        held.sort_unstable_by(|a, b| b.cmp(a));
        held.get(held.len() / 2).copied()
    }
}

/// The voters and the learners of `metrics`' membership, with their peer addresses.
fn members(
    metrics: &RaftMetrics<ReplicaId, BasicNode>,
) -> (BTreeMap<ReplicaId, String>, BTreeMap<ReplicaId, String>) {
    let membership = metrics.membership_config.membership();
    let voter_ids: BTreeSet<ReplicaId> = membership.voter_ids().collect();
    let mut voters = BTreeMap::new();
    let mut learners = BTreeMap::new();
    for (id, node) in membership.nodes() {
        let slot = if voter_ids.contains(id) { &mut voters } else { &mut learners };
        slot.insert(*id, node.addr.clone());
    }
    (voters, learners)
}

pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}

/// A leadership check that may pass if tried again (the quorum has not answered yet).
fn is_transient_read(e: &RaftError<crate::raft::types::CheckIsLeaderError>) -> bool {
    matches!(e, RaftError::APIError(openraft::error::CheckIsLeaderError::QuorumNotEnough(_)))
}

/// A membership change refused because another one is still in progress.
fn is_transient_write(e: &RaftError<crate::raft::types::ClientWriteError>) -> bool {
    matches!(
        e,
        RaftError::APIError(ClientWriteError::ChangeMembershipError(
            openraft::error::ChangeMembershipError::InProgress(_)
        ))
    )
}

/// Where the audit trail lives: `audit` beside the usage store's directory (it is kept across
/// restarts, where the usage store is rebuilt), or temporary like it.
fn audit_location(usage: &UsageLocation) -> UsageLocation {
    match usage {
        UsageLocation::Dir(dir) => UsageLocation::Dir(dir.parent().unwrap_or(dir).join("audit")),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn hex_is_two_lowercase_digits_per_byte_high_nibble_first() {
        assert_eq!(super::hex(&[0x00, 0x0f, 0xa5, 0xf0, 0xff]), "000fa5f0ff");
        assert_eq!(super::hex(&[]), "");
    }
}
