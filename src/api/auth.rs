//! Who is calling: the admin (token from `--admin-token-file` or `BERTH_ADMIN_TOKEN`) or a
//! tenant (a token issued by `IssueToken`). Tokens are stored only as SHA-256 hashes; the
//! admin token is compared in constant time. A tenant token acts only on its own tenant:
//! another tenant's id is PERMISSION_DENIED, never an empty answer.
//!
//! A replica may lag the leader, so its own view of the tokens is only a first check. A token
//! it does not know is looked up again after a linearizable read (a just-issued token works on
//! every replica); a token it still knows but the leader has revoked is caught later: writes
//! carry the token hash and the state machine refuses them, reads check it again against the
//! state they read, and a stale read does so only on a replica that holds a vouch lease
//! (`Replica::vouch_lease`), which the answer to a revocation waits out.

use std::time::Duration;

use sha2::{Digest, Sha256};
use tonic::{Code, Status};

use super::status::{error, invalid};
use crate::raft::replica::{
    Consistency, ReadError, Replica, TOKEN_VOUCH_DRIFT_MARGIN, TOKEN_VOUCH_LEASE,
};
use crate::scheduler::{Answer, Command, Query, Rejection, Scheduler, TenantId, TokenHash};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    Admin,
    /// A tenant, and the hash of the token it presented.
    Tenant(TenantId, TokenHash),
}

impl Caller {
    /// The token a command must still be authorized by when it is applied.
    pub fn token(&self) -> Option<TokenHash> {
        match self {
            Caller::Admin => None,
            Caller::Tenant(_, hash) => Some(*hash),
        }
    }
}

fn owner(scheduler: &Scheduler, hash: TokenHash) -> Option<TenantId> {
    match scheduler.query(&Query::TokenOwner(hash)) {
        Answer::TokenOwner(owner) => owner.map(|(tenant, _)| tenant),
        _ => None,
    }
}

/// Whether the caller's token still belongs to its tenant in `scheduler`'s state.
pub fn still_valid(caller: &Caller, scheduler: &Scheduler) -> bool {
    match caller {
        Caller::Admin => true,
        Caller::Tenant(tenant, hash) => owner(scheduler, *hash).as_ref() == Some(tenant),
    }
}

/// The status for a token that is unknown or was revoked.
pub fn unauthenticated() -> Status {
    super::status::rejection(&Rejection::Unauthenticated)
}

/// The status for a tenant's stale read on a replica that holds no vouch lease and could not
/// get one (no leader confirmed a read index in time).
pub fn cannot_vouch(why: &ReadError) -> Status {
    error(
        Code::Unavailable,
        "CANNOT_VOUCH_FOR_TOKEN",
        format!(
            "this replica cannot confirm the token is still valid; retry on another replica or without stale_ok ({why})"
        ),
        Vec::new(),
    )
}

/// Whether `command` takes tokens away from a tenant (revokes one, or deletes the tenant
/// with all of its tokens).
pub fn takes_tokens_away(command: &Command) -> bool {
    matches!(command, Command::RevokeToken { .. } | Command::DeleteTenant { .. })
}

/// Waits until no replica can still vouch for a token from state older than a revocation
/// this replica has just learned was applied: `TOKEN_VOUCH_LEASE` and the drift margin (the
/// argument is on `TOKEN_VOUCH_LEASE`). Waited whatever the command's outcome, a replayed
/// one included, since the revocation it reports may be that recent.
pub async fn revocation_settled() {
    tokio::time::sleep(TOKEN_VOUCH_LEASE + TOKEN_VOUCH_DRIFT_MARGIN).await;
}

pub fn hash_token(token: &str) -> TokenHash {
    TokenHash(Sha256::digest(token.as_bytes()).into())
}

/// Equal-length byte strings compared without an early exit.
fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Resolves the bearer token of a request.
pub async fn authenticate<T>(
    request: &tonic::Request<T>,
    admin: &TokenHash,
    replica: &Replica,
    deadline: Duration,
) -> Result<Caller, Status> {
    let header = request.metadata().get("authorization").ok_or_else(|| {
        error(
            Code::Unauthenticated,
            "UNAUTHENTICATED",
            "missing authorization: Bearer <token>",
            Vec::new(),
        )
    })?;
    let token = header
        .to_str()
        .ok()
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            error(
                Code::Unauthenticated,
                "UNAUTHENTICATED",
                "authorization must be: Bearer <token>",
                Vec::new(),
            )
        })?;
    let hash = hash_token(token);
    if constant_time_eq(&hash.0, &admin.0) {
        return Ok(Caller::Admin);
    }
    if let Some(tenant) = replica.read_local(|s| owner(&s.scheduler, hash)) {
        return Ok(Caller::Tenant(tenant, hash));
    }
    // Unknown here; this replica may not have applied the IssueToken yet.
    match replica.read(Consistency::Linearizable, deadline, |s| owner(&s.scheduler, hash)).await {
        Ok(Some(tenant)) => Ok(Caller::Tenant(tenant, hash)),
        Ok(None) => Err(unauthenticated()),
        Err(e) => Err(super::status::read_error(&e)),
    }
}

pub fn require_admin(caller: &Caller) -> Result<(), Status> {
    match caller {
        Caller::Admin => Ok(()),
        Caller::Tenant(t, _) => Err(error(
            Code::PermissionDenied,
            "ADMIN_REQUIRED",
            format!("this RPC needs the admin token; tenant {t}'s token may not call it"),
            Vec::new(),
        )),
    }
}

/// A well-formed tenant id (`TENANT_ID_REQUIRED` / `INVALID_TENANT_ID` otherwise).
pub fn valid_tenant(tenant_id: &str) -> Result<TenantId, Status> {
    let tenant = TenantId::new(tenant_id);
    tenant.validate().map_err(|rejection| super::status::rejection(&rejection))?;
    Ok(tenant)
}

/// Validates `tenant_id` and checks the caller may act on it.
pub fn tenant_scope(caller: &Caller, tenant_id: &str) -> Result<TenantId, Status> {
    let tenant = valid_tenant(tenant_id)?;
    match caller {
        Caller::Admin => Ok(tenant),
        Caller::Tenant(own, _) if *own == tenant => Ok(tenant),
        Caller::Tenant(own, _) => Err(error(
            Code::PermissionDenied,
            "PERMISSION_DENIED",
            format!("tenant {own}'s token may not act on tenant {tenant}"),
            vec![("tenant".into(), tenant.to_string())],
        )),
    }
}

/// A well-formed request id, checked here as `apply` checks it, so a bad one is refused
/// before it is proposed and never reaches the log.
pub fn request_id(id: &str) -> Result<crate::scheduler::RequestId, Status> {
    if id.trim().is_empty() {
        return Err(invalid(
            "REQUEST_ID_REQUIRED",
            "request_id is required on every mutating request (an idempotency key)",
        ));
    }
    let id = crate::scheduler::RequestId::new(id);
    id.validate().map_err(|rejection| super::status::rejection(&rejection))?;
    Ok(id)
}
