//! Who is calling: the admin (token from `--admin-token-file` or `BERTH_ADMIN_TOKEN`) or a
//! tenant (a token issued by `IssueToken`). Tokens are stored only as SHA-256 hashes; the
//! admin token is compared in constant time. A tenant token acts only on its own tenant:
//! another tenant's id is PERMISSION_DENIED, never an empty answer.

use sha2::{Digest, Sha256};
use tonic::{Code, Status};

use super::status::{error, invalid};
use crate::raft::replica::Replica;
use crate::scheduler::{Answer, Query, TenantId, TokenHash};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    Admin,
    Tenant(TenantId),
}

pub fn hash_token(token: &str) -> TokenHash {
    TokenHash(Sha256::digest(token.as_bytes()).into())
}

/// Equal-length byte strings compared without an early exit.
fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Resolves the bearer token of a request.
pub fn authenticate<T>(
    request: &tonic::Request<T>,
    admin: &TokenHash,
    replica: &Replica,
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
    // Looked up on this replica's state: a just-issued token may need a moment to reach it.
    match replica.read_local(|s| s.scheduler.query(&Query::TokenOwner(hash))) {
        Answer::TokenOwner(Some((tenant, _))) => Ok(Caller::Tenant(tenant)),
        _ => Err(error(
            Code::Unauthenticated,
            "UNAUTHENTICATED",
            "unknown or revoked token",
            Vec::new(),
        )),
    }
}

pub fn require_admin(caller: &Caller) -> Result<(), Status> {
    match caller {
        Caller::Admin => Ok(()),
        Caller::Tenant(t) => Err(error(
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
        Caller::Tenant(own) if *own == tenant => Ok(tenant),
        Caller::Tenant(own) => Err(error(
            Code::PermissionDenied,
            "PERMISSION_DENIED",
            format!("tenant {own}'s token may not act on tenant {tenant}"),
            vec![("tenant".into(), tenant.to_string())],
        )),
    }
}

pub fn request_id(id: &str) -> Result<crate::scheduler::RequestId, Status> {
    if id.trim().is_empty() {
        return Err(invalid(
            "REQUEST_ID_REQUIRED",
            "request_id is required on every mutating request (an idempotency key)",
        ));
    }
    Ok(crate::scheduler::RequestId::new(id))
}
