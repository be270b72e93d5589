//! The `Cluster` service: the replicas' status and membership changes, and each replica's
//! audit trail. Admin only, except that a tenant reads its own audit records; membership
//! changes run on the leader.

use std::time::Duration;

use sha2::{Digest, Sha256};
use tonic::{Code, Request, Response as Reply, Status};

use super::auth::{require_admin, tenant_scope, Caller};
use super::observe;
use super::status::{error, invalid, read_error};
use super::{convert, pb, Api};
use crate::audit::{AuditQuery, AUDIT_PAGE_MAX};
use crate::raft::replica::{hex, SnapshotError};
use crate::raft::state_machine::SnapshotSummary;
use crate::scheduler::{Command, TenantId};

type Result<T> = std::result::Result<Reply<T>, Status>;

#[tonic::async_trait]
impl pb::cluster_server::Cluster for Api {
    type BackupStream = super::streams::Stream<pb::BackupChunk>;

    async fn status(&self, request: Request<pb::StatusRequest>) -> Result<pb::StatusResponse> {
        let caller = self.caller(&request).await?;
        require_admin(&caller)?;
        Ok(Reply::new(self.cluster_status().await))
    }

    async fn add_replica(
        &self,
        request: Request<pb::AddReplicaRequest>,
    ) -> Result<pb::AddReplicaResponse> {
        let caller = self.caller(&request).await?;
        require_admin(&caller)?;
        self.require_leader()?;
        let r = request.into_inner();
        if r.replica_id == 0 || r.peer_address.is_empty() {
            return Err(invalid(
                "INVALID_ARGUMENT",
                "replica_id (> 0) and peer_address are required",
            ));
        }
        self.replica.add_replica(r.replica_id, r.peer_address).await.map_err(|e| {
            error(Code::FailedPrecondition, "MEMBERSHIP_CHANGE_FAILED", e, Vec::new())
        })?;
        Ok(Reply::new(pb::AddReplicaResponse { status: Some(self.cluster_status().await) }))
    }

    async fn remove_replica(
        &self,
        request: Request<pb::RemoveReplicaRequest>,
    ) -> Result<pb::RemoveReplicaResponse> {
        let caller = self.caller(&request).await?;
        require_admin(&caller)?;
        self.require_leader()?;
        let r = request.into_inner();
        self.replica.remove_replica(r.replica_id).await.map_err(|e| {
            error(Code::FailedPrecondition, "MEMBERSHIP_CHANGE_FAILED", e, Vec::new())
        })?;
        Ok(Reply::new(pb::RemoveReplicaResponse { status: Some(self.cluster_status().await) }))
    }

    async fn get_config(
        &self,
        request: Request<pb::GetConfigRequest>,
    ) -> Result<pb::GetConfigResponse> {
        let caller = self.caller(&request).await?;
        require_admin(&caller)?;
        let r = request.into_inner();
        let config = self.read(&caller, r.read, |s| convert::pb_config(&s.state().config)).await?;
        Ok(Reply::new(pb::GetConfigResponse { config: Some(config) }))
    }

    async fn get_audit_trail(
        &self,
        request: Request<pb::GetAuditTrailRequest>,
    ) -> Result<pb::GetAuditTrailResponse> {
        let caller = self.caller(&request).await?;
        let r = request.into_inner();
        let tenant = match (&caller, r.tenant_id.is_empty()) {
            (Caller::Admin, true) => None,
            _ => Some(tenant_scope(&caller, &r.tenant_id)?),
        };
        if let Some(tenant) = &tenant {
            observe::tenant(tenant);
        }
        let limit = match usize::try_from(r.limit).unwrap_or(usize::MAX) {
            0 => 100,
            n if n <= AUDIT_PAGE_MAX => n,
            _ => {
                let message = format!("limit must be 1..={AUDIT_PAGE_MAX} (0: 100)");
                return Err(error(
                    Code::InvalidArgument,
                    "INVALID_ARGUMENT",
                    message,
                    vec![("field".into(), "limit".into())],
                ));
            }
        };
        let query = AuditQuery {
            tenant: tenant.map(|t| t.to_string()),
            since_ms: r.since_ms,
            after_seq: r.after_seq,
            limit,
        };
        let store = self.replica.audit_store().clone();
        let tenant_caller = matches!(caller, Caller::Tenant(..));
        let (head, pending) = self
            .read(&caller, r.read, |s| {
                let mut query = query;
                // A tenant's token reads from its tenant's creation: a deleted tenant of the
                // same name is another tenant.
                if let (true, Some(t)) = (tenant_caller, &query.tenant) {
                    let created = s.state().tenants.get(&TenantId::new(t)).map(|t| t.created_at.0);
                    query.since_ms = query.since_ms.max(created.unwrap_or(u64::MAX));
                }
                (s.audit_head(), store.read(query))
            })
            .await?;
        let page = pending
            .await
            .map_err(|_| {
                error(Code::Unavailable, "SHUTTING_DOWN", "replica is stopping", Vec::new())
            })?
            .map_err(|e| error(Code::Internal, "AUDIT_UNAVAILABLE", e, Vec::new()))?;
        Ok(Reply::new(pb::GetAuditTrailResponse {
            records: page.records.iter().map(convert::pb_audit_record).collect(),
            first_seq: page.first_seq,
            last_seq: page.last_seq,
            head_seq: head.seq,
            head_hash: hex(&head.hash),
            replica_id: self.replica.id(),
        }))
    }

    async fn create_snapshot(
        &self,
        request: Request<pb::CreateSnapshotRequest>,
    ) -> Result<pb::CreateSnapshotResponse> {
        let caller = self.caller(&request).await?;
        require_admin(&caller)?;
        let summary =
            self.replica.snapshot_now(SNAPSHOT_DEADLINE).await.map_err(|e| snapshot_error(&e))?;
        let snapshot = Some(self.snapshot_info(&summary));
        Ok(Reply::new(pb::CreateSnapshotResponse { snapshot }))
    }

    async fn backup(&self, request: Request<pb::BackupRequest>) -> Result<Self::BackupStream> {
        let caller = self.caller(&request).await?;
        require_admin(&caller)?;
        // One backup at a time on a replica: each holds its whole file in memory.
        let Ok(permit) = BACKUPS.try_acquire() else {
            return Err(error(
                Code::ResourceExhausted,
                "BACKUP_RUNNING",
                "a backup is already being taken on this replica; try again when it ends",
                Vec::new(),
            ));
        };
        let api = self.clone();
        let (tx, rx) = tokio::sync::mpsc::channel(BACKUP_BUFFER);
        // The snapshot is built in the stream's task: opening the stream does not wait for it.
        tokio::spawn(async move {
            let _permit = permit;
            let built = tokio::select! {
                built = api.replica.backup(SNAPSHOT_DEADLINE) => built,
                () = tx.closed() => return,
            };
            let (file, summary) = match built {
                Ok(built) => built,
                Err(e) => {
                    let _ = tx.send(Err(snapshot_error(&e))).await;
                    return;
                }
            };
            let header = pb::BackupHeader {
                snapshot: Some(api.snapshot_info(&summary)),
                file_bytes: file.len() as u64,
                sha256: hex(&Sha256::digest(&file)),
            };
            let first = pb::backup_chunk::Part::Header(header);
            let data =
                file.chunks(BACKUP_CHUNK_BYTES).map(|c| pb::backup_chunk::Part::Data(c.to_vec()));
            for part in std::iter::once(first).chain(data) {
                // A client that stops reading is let go, and the file with it.
                let sent = tokio::time::timeout(
                    BACKUP_SEND_TIMEOUT,
                    tx.send(Ok(pb::BackupChunk { part: Some(part) })),
                );
                if !matches!(sent.await, Ok(Ok(()))) {
                    return;
                }
            }
        });
        Ok(Reply::new(tokio_stream::wrappers::ReceiverStream::new(rx)))
    }

    async fn set_config(
        &self,
        request: Request<pb::SetConfigRequest>,
    ) -> Result<pb::SetConfigResponse> {
        let caller = self.caller(&request).await?;
        require_admin(&caller)?;
        let r = request.into_inner();
        let Some(config) = r.config.as_ref() else {
            return Err(invalid("INVALID_ARGUMENT", "config is required"));
        };
        let command = Command::SetConfig { config: convert::config(config) };
        let (_, write) = self.write(&caller, &r.request_id, command).await?;
        Ok(Reply::new(pb::SetConfigResponse { write: Some(write) }))
    }
}

/// How long building a snapshot for `CreateSnapshot` or `Backup` may take.
const SNAPSHOT_DEADLINE: Duration = Duration::from_secs(60);
/// The most file bytes one `BackupChunk` carries (below gRPC's default 4 MiB message limit).
pub const BACKUP_CHUNK_BYTES: usize = 1 << 20;
/// Chunks a backup stream holds for a slow client before its task waits.
const BACKUP_BUFFER: usize = 4;
/// How long a backup stream waits for its client to take the next chunk before it gives up.
const BACKUP_SEND_TIMEOUT: Duration = Duration::from_secs(30);
/// Backups a process takes at once (one per replica in production).
static BACKUPS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);

fn snapshot_error(e: &SnapshotError) -> Status {
    match e {
        SnapshotError::Read(e) => read_error(e),
        SnapshotError::Failed(why) => {
            error(Code::Unavailable, "SNAPSHOT_FAILED", why.clone(), Vec::new())
        }
    }
}

impl Api {
    fn snapshot_info(&self, summary: &SnapshotSummary) -> pb::SnapshotInfo {
        let (raft_index, raft_term) = summary.raft_position();
        pb::SnapshotInfo {
            replica_id: self.replica.id(),
            raft_index,
            raft_term,
            log_index: summary.command_index,
            bytes: summary.bytes,
        }
    }

    /// Membership changes run on the leader. Elsewhere the answer is UNAVAILABLE/NOT_LEADER,
    /// which clients treat like any unavailable replica: they try the next endpoint.
    fn require_leader(&self) -> std::result::Result<(), Status> {
        if self.replica.is_leader() {
            return Ok(());
        }
        let leader = self.replica.status().leader.map(|l| l.to_string()).unwrap_or_default();
        Err(error(
            Code::Unavailable,
            "NOT_LEADER",
            "membership changes must be sent to the leader; try another endpoint",
            vec![("leader_replica_id".into(), leader)],
        ))
    }

    /// Every member's own status (asked over the peer port), or "Unreachable".
    async fn cluster_status(&self) -> pb::StatusResponse {
        let local = self.replica.status();
        let mut replicas = Vec::new();
        let members =
            local.voters.iter().map(|m| (m, true)).chain(local.learners.iter().map(|m| (m, false)));
        for ((id, addr), voter) in members {
            let status = if *id == local.id {
                Some(local.clone())
            } else {
                self.replica.peer_status(addr).await
            };
            replicas.push(match status {
                Some(s) => pb::ReplicaStatus {
                    replica_id: *id,
                    peer_address: addr.clone(),
                    role: s.role,
                    term: s.term,
                    last_log_index: s.last_log_index,
                    last_applied_index: s.last_applied_index,
                    snapshot_index: s.snapshot_index,
                    applied_command_index: s.applied_command_index,
                    state_hash: s.state_hash,
                    voter,
                    read_indexes: s.read_indexes,
                },
                None => pb::ReplicaStatus {
                    replica_id: *id,
                    peer_address: addr.clone(),
                    role: "Unreachable".into(),
                    voter,
                    ..Default::default()
                },
            });
        }
        pb::StatusResponse { leader_id: local.leader, term: local.term, replicas }
    }
}
