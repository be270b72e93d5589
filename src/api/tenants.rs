//! The `Tenants` service: tenants, their quotas and their tokens. Everything but reading one's
//! own tenant and quota is for the admin.

use tonic::{Code, Request, Response as Reply, Status};

use super::answer::{answer, RolledBack, TokenAdded};
use super::auth::{require_admin, tenant_scope, valid_tenant};
use super::status::{error, not_found};
use super::{convert, pb, Api};
use crate::scheduler::{Command, DeletedCounts, Query, Tenant, TenantId, TokenId};

type Result<T> = std::result::Result<Reply<T>, Status>;

/// A new bearer token: 32 random bytes from the OS, hex.
fn new_token() -> std::result::Result<String, Status> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| Status::internal(format!("no randomness: {e}")))?;
    Ok(format!("berth_{}", crate::raft::replica::hex(&bytes)))
}

#[tonic::async_trait]
impl pb::tenants_server::Tenants for Api {
    async fn create_tenant(
        &self,
        request: Request<pb::CreateTenantRequest>,
    ) -> Result<pb::CreateTenantResponse> {
        let caller = self.caller(&request).await?;
        require_admin(&caller)?;
        let r = request.into_inner();
        let parent = (!r.parent_id.is_empty()).then(|| r.parent_id.clone().into());
        let weight = if r.weight == 0 { 1 } else { r.weight };
        let command = Command::CreateTenant { tenant: TenantId::new(&r.tenant_id), parent, weight };
        let (response, write) = self.write(&caller, &r.request_id, command).await?;
        let tenant: Tenant = answer(response)?;
        Ok(Reply::new(pb::CreateTenantResponse {
            write: Some(write),
            tenant: Some(convert::tenant(&tenant)),
        }))
    }

    async fn get_tenant(
        &self,
        request: Request<pb::GetTenantRequest>,
    ) -> Result<pb::GetTenantResponse> {
        let caller = self.caller(&request).await?;
        let r = request.into_inner();
        let tenant = tenant_scope(&caller, &r.tenant_id)?;
        let found = self
            .read(&caller, r.read, |s| s.state().tenants.get(&tenant).map(convert::tenant))
            .await?;
        let tenant = found.ok_or_else(|| not_found("tenant", &r.tenant_id))?;
        Ok(Reply::new(pb::GetTenantResponse { tenant: Some(tenant) }))
    }

    async fn list_tenants(
        &self,
        request: Request<pb::ListTenantsRequest>,
    ) -> Result<pb::ListTenantsResponse> {
        let caller = self.caller(&request).await?;
        require_admin(&caller)?;
        let r = request.into_inner();
        let (after, limit) = convert::page(r.page);
        let query = Query::Tenants { after: after.map(Into::into), limit };
        let tenants: Vec<Tenant> = answer(self.read(&caller, r.read, |s| s.query(&query)).await?)?;
        Ok(Reply::new(pb::ListTenantsResponse {
            tenants: tenants.iter().map(convert::tenant).collect(),
        }))
    }

    async fn delete_tenant(
        &self,
        request: Request<pb::DeleteTenantRequest>,
    ) -> Result<pb::DeleteTenantResponse> {
        let caller = self.caller(&request).await?;
        require_admin(&caller)?;
        let r = request.into_inner();
        let tenant = valid_tenant(&r.tenant_id)?;
        let (response, write) =
            self.write(&caller, &r.request_id, Command::DeleteTenant { tenant }).await?;
        let c: DeletedCounts = answer(response)?;
        Ok(Reply::new(pb::DeleteTenantResponse {
            write: Some(write),
            placements_released: c.placements,
            reservations_released: c.reservations,
            instances_released: c.instances,
            leases_released: c.leases,
            groups_deleted: c.groups,
            tokens_revoked: c.tokens,
            resources_released: Some(convert::pb_resources(c.resources)),
            queued_withdrawn: c.queued,
        }))
    }

    async fn set_quota(
        &self,
        request: Request<pb::SetQuotaRequest>,
    ) -> Result<pb::SetQuotaResponse> {
        let caller = self.caller(&request).await?;
        require_admin(&caller)?;
        let r = request.into_inner();
        let tenant = valid_tenant(&r.tenant_id)?;
        let quota = convert::quota(r.quota)?;
        let (_, write) =
            self.write(&caller, &r.request_id, Command::SetQuota { tenant, quota }).await?;
        Ok(Reply::new(pb::SetQuotaResponse { write: Some(write) }))
    }

    async fn get_quota(
        &self,
        request: Request<pb::GetQuotaRequest>,
    ) -> Result<pb::GetQuotaResponse> {
        let caller = self.caller(&request).await?;
        let r = request.into_inner();
        let tenant = tenant_scope(&caller, &r.tenant_id)?;
        let found = self
            .read(&caller, r.read, |s| {
                s.state().tenants.get(&tenant).map(|t| pb::GetQuotaResponse {
                    shares: convert::shares(s, t),
                    quota: Some(convert::pb_quota(&t.quota)),
                    effective: Some(convert::pb_effective(&s.effective_quota(&tenant))),
                    burst: t.burst.as_ref().map(convert::burst),
                    queued: s.queued_count(&tenant),
                    windows: s.window_usage(&tenant).as_ref().map(convert::window_usage),
                    rate_limits: t.rate.as_ref().map(|r| convert::pb_rate_limits(&r.limits)),
                    rate: Some(convert::rate_status(s, t)),
                    policy_version: t.policy.current(),
                    usage: Some(convert::usage(&t.usage.total)),
                    pool_usage: t
                        .usage
                        .pools
                        .iter()
                        .map(|(p, u)| (p.0.clone(), convert::usage(u)))
                        .collect(),
                })
            })
            .await?;
        Ok(Reply::new(found.ok_or_else(|| not_found("tenant", &r.tenant_id))?))
    }

    async fn set_rate_limits(
        &self,
        request: Request<pb::SetRateLimitsRequest>,
    ) -> Result<pb::SetRateLimitsResponse> {
        let caller = self.caller(&request).await?;
        require_admin(&caller)?;
        let r = request.into_inner();
        let tenant = valid_tenant(&r.tenant_id)?;
        let limits = convert::rate_limits(r.limits);
        let command = Command::SetRateLimits { tenant, limits };
        let (_, write) = self.write(&caller, &r.request_id, command).await?;
        Ok(Reply::new(pb::SetRateLimitsResponse { write: Some(write) }))
    }

    async fn get_policy_history(
        &self,
        request: Request<pb::GetPolicyHistoryRequest>,
    ) -> Result<pb::GetPolicyHistoryResponse> {
        let caller = self.caller(&request).await?;
        let r = request.into_inner();
        let tenant = tenant_scope(&caller, &r.tenant_id)?;
        let found = self
            .read(&caller, r.read, |s| {
                s.state().tenants.get(&tenant).map(|t| pb::GetPolicyHistoryResponse {
                    versions: t.policy.versions.iter().map(convert::pb_policy_version).collect(),
                    current: t.policy.current(),
                })
            })
            .await?;
        Ok(Reply::new(found.ok_or_else(|| not_found("tenant", &r.tenant_id))?))
    }

    async fn rollback_policy(
        &self,
        request: Request<pb::RollbackPolicyRequest>,
    ) -> Result<pb::RollbackPolicyResponse> {
        let caller = self.caller(&request).await?;
        require_admin(&caller)?;
        let r = request.into_inner();
        let tenant = valid_tenant(&r.tenant_id)?;
        let command = Command::RollbackPolicy { tenant, to_version: r.to_version };
        let (response, write) = self.write(&caller, &r.request_id, command).await?;
        let RolledBack(version) = answer(response)?;
        Ok(Reply::new(pb::RollbackPolicyResponse { write: Some(write), version }))
    }

    async fn issue_token(
        &self,
        request: Request<pb::IssueTokenRequest>,
    ) -> Result<pb::IssueTokenResponse> {
        let caller = self.caller(&request).await?;
        require_admin(&caller)?;
        let r = request.into_inner();
        let tenant = valid_tenant(&r.tenant_id)?;
        let token = new_token()?;
        let hash = super::hash_token(&token);
        let name = TokenId::new(&r.token_name);
        let command = Command::AddToken { tenant, token: name, hash, ttl_ms: r.ttl_ms };
        let (response, write) = self.write(&caller, &r.request_id, command).await?;
        if write.replayed {
            // The token of the first attempt was shown once and is not stored; say so.
            return Err(error(
                Code::AlreadyExists,
                "TOKEN_ALREADY_ISSUED",
                "this request_id already issued a token; revoke it and issue a new one if it was lost",
                Vec::new(),
            ));
        }
        let TokenAdded { expires_at } = answer(response)?;
        let expires_at_ms = expires_at.map_or(0, |at| at.0);
        Ok(Reply::new(pb::IssueTokenResponse { write: Some(write), token, expires_at_ms }))
    }

    async fn revoke_token(
        &self,
        request: Request<pb::RevokeTokenRequest>,
    ) -> Result<pb::RevokeTokenResponse> {
        let caller = self.caller(&request).await?;
        require_admin(&caller)?;
        let r = request.into_inner();
        let tenant = valid_tenant(&r.tenant_id)?;
        let command = Command::RevokeToken { tenant, token: TokenId::new(&r.token_name) };
        let (_, write) = self.write(&caller, &r.request_id, command).await?;
        Ok(Reply::new(pb::RevokeTokenResponse { write: Some(write) }))
    }
}
