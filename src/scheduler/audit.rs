//! The audit trail's records and hash chain, computed in `apply` so every replica computes
//! the same ones.
//!
//! Every command a client sent (everything but `Tick`, `LeaderChanged` and the replicas'
//! batched `Heartbeat`s), accepted, refused or replayed, becomes an `AuditRecord`: its place
//! in the chain (`seq`, from 1), log index and time, who sent it (`Actor`), the tenant, the
//! request id, a one-line summary and the outcome (`ok`, the refusal's reason, or
//! `replayed`/`replayed:REASON` for a request id answered again). Each record carries the hash of the one before it and its own:
//! `hash = SHA-256(prev ‖ field ‖ field …)`, each field as its length (u64 little-endian) and
//! its UTF-8 bytes, in the order `seq, index, at_ms` (decimal), `actor, tenant, request_id,
//! command, outcome`. Anyone can recompute it from the exported JSON.
//!
//! The chain's head (the last `seq` and hash) is replicated with the state and carried by
//! snapshots, so replicas agree on it at every index. The records themselves are kept by
//! each replica (`crate::audit`, in sled); a client-sent string in a record is cut to a short
//! prefix (`ids::shortened`; a valid tenant id is kept whole), so a hostile input cannot make
//! a record large.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::command::{Applied, Command};
use super::ids::{shortened, LogIndex, UnixMillis};
use super::policy::Actor;

/// The end of the chain: how many records it has and the last one's hash (zeros before any).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditHead {
    pub seq: u64,
    pub hash: [u8; 32],
}

/// One command as the audit trail records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub seq: u64,
    pub index: LogIndex,
    pub at: UnixMillis,
    /// `admin`, `token:NAME`, or `token:unknown` (a token no tenant had when it was applied).
    pub actor: String,
    /// The command's tenant (empty for none).
    pub tenant: String,
    /// Empty for none.
    pub request_id: String,
    pub command: String,
    /// `ok`, the refusal's reason (`QUOTA_EXCEEDED`, `RATE_LIMITED`, …), or for a request id
    /// answered again `replayed` (`replayed:REASON` if it was refused).
    pub outcome: String,
    pub prev: [u8; 32],
    pub hash: [u8; 32],
}

impl AuditRecord {
    /// The hash this record must carry, from its `prev` and fields.
    pub fn digest(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(self.prev);
        let numbers = [self.seq, self.index.0, self.at.0].map(|n| n.to_string());
        let fields = numbers.iter().map(String::as_str).chain([
            self.actor.as_str(),
            self.tenant.as_str(),
            self.request_id.as_str(),
            self.command.as_str(),
            self.outcome.as_str(),
        ]);
        for field in fields {
            h.update(u64::try_from(field.len()).unwrap_or(u64::MAX).to_le_bytes());
            h.update(field.as_bytes());
        }
        h.finalize().into()
    }
}

/// What of an entry the trail needs, taken before it is applied.
pub(super) struct Pending {
    actor: Actor,
    tenant: String,
    request_id: String,
    command: String,
}

/// Whether a command is one a client sent (and so is audited).
fn audited(command: &Command) -> bool {
    !matches!(command, Command::Tick | Command::LeaderChanged | Command::Heartbeat { .. })
}

impl super::Scheduler {
    /// The trail's part of `entry`, if it is audited (call before applying it).
    pub(super) fn audit_pending(&self, entry: &super::Entry) -> Option<Pending> {
        audited(&entry.command).then(|| Pending {
            actor: self.actor(entry.token),
            // A valid tenant id whole (tenants read their records by it), else cut short.
            tenant: entry
                .command
                .tenant()
                .map(|t| match t.validate() {
                    Ok(()) => t.to_string(),
                    Err(_) => shortened(t.as_str()),
                })
                .unwrap_or_default(),
            request_id: entry.request_id.as_ref().map(|r| shortened(&r.0)).unwrap_or_default(),
            command: entry.command.summary(),
        })
    }

    /// Chains the record of an applied entry onto the head.
    pub(super) fn audit_record(&mut self, pending: Pending, applied: &Applied) -> AuditRecord {
        let outcome = match (&applied.result, applied.replayed) {
            (Ok(_), true) => "replayed".to_owned(),
            (Ok(_), false) => "ok".to_owned(),
            (Err(rejection), true) => format!("replayed:{}", rejection.reason()),
            (Err(rejection), false) => rejection.reason().to_owned(),
        };
        let mut record = AuditRecord {
            seq: self.audit.seq.saturating_add(1),
            index: self.applying,
            at: self.state.now,
            actor: pending.actor.name(),
            tenant: pending.tenant,
            request_id: pending.request_id,
            command: pending.command,
            outcome,
            prev: self.audit.hash,
            hash: [0; 32],
        };
        record.hash = record.digest();
        self.audit = AuditHead { seq: record.seq, hash: record.hash };
        record
    }

    /// The chain's head as of the last entry applied.
    pub fn audit_head(&self) -> AuditHead {
        self.audit
    }
}

/// Where a list of records, oldest first, breaks the chain: the first `seq` whose hash is not
/// its digest or whose `prev` is not the hash before it (a gap in `seq` is a break too).
pub fn verify(records: &[AuditRecord]) -> Result<(), u64> {
    let mut before: Option<&AuditRecord> = None;
    for r in records {
        let linked = before.is_none_or(|b| b.seq.checked_add(1) == Some(r.seq) && r.prev == b.hash);
        if !linked || r.digest() != r.hash {
            return Err(r.seq);
        }
        before = Some(r);
    }
    Ok(())
}

impl Command {
    /// One line saying what the command does: its name and the object it names, client
    /// strings cut short.
    pub fn summary(&self) -> String {
        let name = self.name();
        let object = match self {
            Command::Place { spec, .. }
            | Command::PlaceOrQueue { spec, .. }
            | Command::Reserve { spec, .. } => {
                format!("{} x{}", shortened(spec.placement.as_str()), spec.count)
            }
            Command::Release { placement, .. } | Command::CancelQueued { placement, .. } => {
                shortened(placement.as_str())
            }
            Command::ConfirmReservation { reservation, .. }
            | Command::CancelReservation { reservation, .. } => shortened(reservation.as_str()),
            Command::AcquireLease { lease, .. }
            | Command::KeepAliveLease { lease, .. }
            | Command::ReleaseLease { lease, .. } => shortened(lease.as_str()),
            Command::RegisterWorker { worker, .. }
            | Command::UpdateWorker { worker, .. }
            | Command::SetWorkerSchedulable { worker, .. }
            | Command::RemoveWorker { worker, .. } => shortened(worker.as_str()),
            Command::ReportStatus { placement, slot, .. } => {
                format!("{}/{slot}", shortened(placement.as_str()))
            }
            Command::AddToken { token, .. } | Command::RevokeToken { token, .. } => {
                shortened(token.as_str())
            }
            Command::CreatePlacementGroup { group, .. } => shortened(group.as_str()),
            Command::SetPoolReserve { pool, .. } | Command::SetPoolWorkerTtl { pool, .. } => {
                shortened(pool.as_str())
            }
            Command::SetPricePlan { plan, .. } => shortened(plan.as_str()),
            Command::RollbackPolicy { to_version, .. } => format!("to {to_version}"),
            Command::AdjustInvoice { month, amount, .. } => format!("month {month} {amount}"),
            Command::CloseInvoice { month, .. } => format!("month {month}"),
            _ => String::new(),
        };
        if object.is_empty() {
            name.to_owned()
        } else {
            format!("{name} {object}")
        }
    }
}
