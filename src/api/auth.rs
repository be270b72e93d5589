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
//!
//! An expired token is refused (`TOKEN_EXPIRED`) against this replica's clock here, and
//! against the entry's log time when a write is applied.
//!
//! A lookup costs the leader a quorum round, so unknown tokens are budgeted: each connection
//! may look up `UNKNOWN_TOKEN_LOOKUPS_PER_CONNECTION_MAX` at once, regaining one every
//! `UNKNOWN_TOKEN_LOOKUP_REFILL_MS`, and the whole replica `UNKNOWN_TOKEN_LOOKUPS_PER_SECOND_MAX`
//! a second. Past either, an unknown token is UNAUTHENTICATED without a read. A lookup that
//! finds its token costs nothing. (A request that did not come through `ApiStream`, such as
//! an in-process call, has no connection budget and meets the replica's alone.)

use std::sync::Mutex;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::time::Instant;
use tonic::{Code, Status};

use super::answer::answer;
use super::connection::ApiConnection;
use super::status::{error, invalid};
use crate::raft::replica::{
    Consistency, ReadError, Replica, TOKEN_VOUCH_DRIFT_MARGIN, TOKEN_VOUCH_LEASE,
};
use crate::scheduler::{
    Command, Query, Rejection, Scheduler, TenantId, Token, TokenHash, TokenId, UnixMillis,
};

/// Unknown tokens one API connection may have looked up (a linearizable read each) before it
/// must wait for its budget to refill: a client that mistypes its token a few times is still
/// answered precisely, one that sprays random tokens is not.
pub const UNKNOWN_TOKEN_LOOKUPS_PER_CONNECTION_MAX: u32 = 8;
/// How often a connection's budget of unknown-token lookups regains one: every 10 s.
pub const UNKNOWN_TOKEN_LOOKUP_REFILL_MS: u64 = 10_000;
/// Unknown-token lookups one replica makes per second, all connections together (and at
/// most this many at once), so that opening many connections does not multiply the budget.
pub const UNKNOWN_TOKEN_LOOKUPS_PER_SECOND_MAX: u32 = 20;

/// A token bucket of lookups: `burst` at most, one more every `refill`.
#[derive(Debug)]
pub struct LookupBudget {
    burst: u32,
    refill: Duration,
    /// Lookups left, and when the last refill was counted.
    left: Mutex<(u32, Instant)>,
}

impl LookupBudget {
    fn new(burst: u32, refill: Duration) -> Self {
        LookupBudget { burst, refill, left: Mutex::new((burst, Instant::now())) }
    }

    /// One connection's budget.
    pub fn per_connection() -> Self {
        Self::new(
            UNKNOWN_TOKEN_LOOKUPS_PER_CONNECTION_MAX,
            Duration::from_millis(UNKNOWN_TOKEN_LOOKUP_REFILL_MS),
        )
    }

    /// The whole replica's budget.
    pub fn per_replica() -> Self {
        let per_second = UNKNOWN_TOKEN_LOOKUPS_PER_SECOND_MAX;
        Self::new(per_second, Duration::from_secs(1) / per_second)
    }

    /// Takes one lookup if any is left.
    fn take(&self) -> bool {
        let mut left = self.left.lock().unwrap_or_else(|p| p.into_inner());
        let (left, counted_at) = &mut *left;
        let now = Instant::now();
        // Whole refills since the last count; a full bucket earns nothing.
        let earned =
            now.saturating_duration_since(*counted_at).as_nanos() / self.refill.as_nanos().max(1);
        let earned = u32::try_from(earned).unwrap_or(u32::MAX);
        if left.saturating_add(earned) >= self.burst {
            *left = self.burst;
            *counted_at = now;
        } else {
            *left += earned;
            *counted_at += self.refill * earned;
        }
        if *left == 0 {
            return false;
        }
        *left -= 1;
        true
    }

    /// Returns a lookup that found its token.
    fn give_back(&self) {
        let mut left = self.left.lock().unwrap_or_else(|p| p.into_inner());
        left.0 = left.0.saturating_add(1).min(self.burst);
    }
}

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
    let owner: Option<(TenantId, TokenId, Token)> =
        answer(scheduler.query(&Query::TokenOwner(hash))).ok()?;
    let (tenant, name, token) = owner?;
    Some(Found { tenant, name, token, log_now: scheduler.now() })
}

/// The caller a found token makes, unless it has expired by `now()` (this replica's clock,
/// asked only for a token that expires) or by the state's log time, if that is later.
fn admit(found: Found, now: impl FnOnce() -> UnixMillis) -> Result<Caller, Status> {
    match found.token.expires_at {
        Some(expired_at) if found.token.expired(now().max(found.log_now)) => {
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

/// Resolves the bearer token of a request. An unknown token is looked up with a linearizable
/// read while the request's connection and `replica_lookups` have budget left.
pub async fn authenticate<T>(
    request: &tonic::Request<T>,
    admin: &TokenHash,
    replica: &Replica,
    replica_lookups: &LookupBudget,
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
        return admit(found, || replica.now());
    }
    // Unknown here; this replica may not have applied the IssueToken yet.
    let connection = request.extensions().get::<ApiConnection>().map(|c| &*c.lookups);
    if !connection.is_none_or(LookupBudget::take) {
        return Err(not_looked_up("this connection"));
    }
    if !replica_lookups.take() {
        if let Some(connection) = connection {
            connection.give_back();
        }
        return Err(not_looked_up("this replica"));
    }
    match replica.read(Consistency::Linearizable, deadline, |s| lookup(&s.scheduler, hash)).await {
        Ok(Some(found)) => {
            replica_lookups.give_back();
            if let Some(connection) = connection {
                connection.give_back();
            }
            admit(found, || replica.now())
        }
        Ok(None) => Err(unauthenticated()),
        Err(e) => Err(super::status::read_error(&e)),
    }
}

/// An unknown token refused without a lookup: `whose` budget of lookups is spent.
fn not_looked_up(whose: &str) -> Status {
    error(
        Code::Unauthenticated,
        "UNAUTHENTICATED",
        format!(
            "unknown token; not looked up at the leader, {whose} has looked up too many unknown \
             tokens (a just-issued token works here once this replica has applied it)"
        ),
        Vec::new(),
    )
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
    super::observe::tenant(&tenant);
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
