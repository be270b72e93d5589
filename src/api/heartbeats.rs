//! Heartbeats are many and small: 10,000 workers at the default 10 s TTL, each beating a few
//! times per TTL, would be thousands of writes a second if each were its own command. A
//! replica gathers the heartbeats that reach it while its previous batch is being committed
//! and proposes them as one `Command::Heartbeat` (at most `HEARTBEATS_PER_ENTRY_MAX` workers),
//! so their cost grows with the batches, not the workers. A heartbeat carries no request id:
//! repeating one only extends the TTL again.

use tokio::sync::{mpsc, oneshot};
use tonic::Status;

use super::answer::{answer, Heartbeats};
use super::{pb, status};
use crate::raft::replica::Replica;
use crate::raft::types::Proposal;
use crate::scheduler::{Command, HeartbeatAck, WorkerId, HEARTBEATS_PER_ENTRY_MAX};

/// Heartbeats waiting for a batch slot; a sender past it waits (backpressure).
const WAITING_MAX: usize = 4 * HEARTBEATS_PER_ENTRY_MAX;

/// The answer to one heartbeat: its worker's ack (`None`: not registered) and the entry's
/// write info.
type Beat = Result<(Option<HeartbeatAck>, pb::WriteInfo), Status>;

struct Waiting {
    worker: WorkerId,
    reply: oneshot::Sender<Beat>,
}

/// A replica's heartbeat batcher (one per `Api`, shared by every connection).
#[derive(Clone)]
pub(super) struct Batcher {
    queue: mpsc::Sender<Waiting>,
}

impl Batcher {
    /// Starts the batching task; it ends when the last `Batcher` clone is dropped.
    pub(super) fn start(replica: Replica) -> Self {
        let (queue, rx) = mpsc::channel(WAITING_MAX);
        tokio::spawn(run(replica, rx));
        Batcher { queue }
    }

    /// Heartbeats `worker` in the next batch and waits for its entry to be applied.
    pub(super) async fn beat(&self, worker: WorkerId) -> Beat {
        let (reply, answer) = oneshot::channel();
        let stopped = || Status::unavailable("the replica is shutting down");
        self.queue.send(Waiting { worker, reply }).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

async fn run(replica: Replica, mut rx: mpsc::Receiver<Waiting>) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < HEARTBEATS_PER_ENTRY_MAX {
            match rx.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let workers = batch.iter().map(|w| w.worker.clone()).collect();
        let proposal =
            Proposal { request_id: None, command: Command::Heartbeat { workers }, token: None };
        let outcome = replica.propose(proposal).await.map_err(|e| status::write_error(&e));
        let acks = outcome.and_then(|applied| {
            let info = pb::WriteInfo {
                log_index: applied.log_index.0,
                applied_at_ms: applied.applied_at.0,
                replayed: false,
                quota_events: Vec::new(),
            };
            let result = applied.result.map_err(|rejection| status::rejection(&rejection))?;
            let Heartbeats(acks) = answer(result)?;
            if acks.len() != batch.len() {
                let why = format!("{} heartbeat answers for {} workers", acks.len(), batch.len());
                return Err(Status::internal(why));
            }
            Ok((acks, info))
        });
        match acks {
            Ok((acks, info)) => {
                for (waiting, ack) in batch.into_iter().zip(acks) {
                    let _ = waiting.reply.send(Ok((ack, info.clone())));
                }
            }
            Err(status) => {
                for waiting in batch {
                    let _ = waiting.reply.send(Err(status.clone()));
                }
            }
        }
    }
}
