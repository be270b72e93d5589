//! Who is calling: the admin (token from `--admin-token-file` or `BERTH_ADMIN_TOKEN`) or a
//! tenant (a token issued by `IssueToken`). Tokens are stored only as SHA-256 hashes; the
//! admin token is compared in constant time. A tenant token acts only on its own tenant:
//! another tenant's id is PERMISSION_DENIED, never an empty answer.
//!
//! A replica may lag the leader, so its own view of the tokens is only a first check. A token
//! it does not know is looked up again after a linearizable read (a just-issued token works on
//! every replica); a token it still knows but the leader has revoked is caught later: writes
//! carry the token hash and the state machine refuses them, reads check it
//! again against the state they read.
//!
//! An expired token is refused (`TOKEN_EXPIRED`) against this replica's clock here, and
//! against the entry's log time when a write is applied.

use std::time::Duration;

use sha2::{Digest, Sha256};
use tonic::{Code, Status};

use super::status::{error, invalid};
use crate::raft::replica::{Consistency, Replica};
use crate::scheduler::{
    Answer, Query, Rejection, Scheduler, TenantId, Token, TokenHash, TokenId, UnixMillis,
};

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

/// A tenant token as found in some replica's state, with that state's log time.
struct Found {
    tenant: TenantId,
    name: TokenId,
    token: Token,
    log_now: UnixMillis,
}

fn lookup(scheduler: &Scheduler, hash: TokenHash) -> Option<Found> {
    match scheduler.query(&Query::TokenOwner(hash)) {
        Answer::TokenOwner(Some((tenant, name, token))) => {
            Some(Found { tenant, name, token, log_now: scheduler.now() })
        }
        _ => None,
    }
}

/// The caller a found token makes, unless it has expired by `now` (this replica's clock, or
/// the state's log time if that is later).
fn admit(found: Found, now: UnixMillis) -> Result<Caller, Status> {
    match found.token.expires_at {
        Some(expired_at) if found.token.expired(now.max(found.log_now)) => {
            Err(super::status::rejection(&Rejection::TokenExpired {
                token: found.name,
                expired_at,
            }))
        }
        _ => Ok(Caller::Tenant(found.tenant, found.token.hash)),
    }
}

/// Whether the caller's token still belongs to its tenant in `scheduler`'s state.
pub fn still_valid(caller: &Caller, scheduler: &Scheduler) -> bool {
    match caller {
        Caller::Admin => true,
        Caller::Tenant(tenant, hash) => {
            lookup(scheduler, *hash).is_some_and(|found| found.tenant == *tenant)
        }
    }
}

/// The status for a token that is unknown or was revoked.
pub fn unauthenticated() -> Status {
    super::status::rejection(&Rejection::Unauthenticated)
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
    if let Some(found) = replica.read_local(|s| lookup(&s.scheduler, hash)) {
        return admit(found, replica.stamp());
    }
    // Unknown here; this replica may not have applied the IssueToken yet.
    match replica.read(Consistency::Linearizable, deadline, |s| lookup(&s.scheduler, hash)).await {
        Ok(Some(found)) => admit(found, replica.stamp()),
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
