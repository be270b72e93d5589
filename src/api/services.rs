//! The RPC handlers: authenticate, scope to the caller's tenant, convert, then write or read.

use std::str::FromStr;

use rust_decimal::Decimal;
use tonic::{Code, Request, Response as Reply, Status};

use super::auth::{require_admin, tenant_scope, valid_tenant};
use super::convert;
use super::pb;
use super::status::{error, invalid};
use super::{unexpected, Api};
use crate::scheduler::ids::quoted;
use crate::scheduler::money::allocate;
use crate::scheduler::{
    Answer, Command, LeaseName, LogIndex, PlacementId, PoolId, Query, Response, TenantId, TokenId,
    WorkerId, DEFAULT_POOL,
};

type Result<T> = std::result::Result<Reply<T>, Status>;

fn not_found(what: &str, id: &str) -> Status {
    error(
        Code::NotFound,
        &format!("{}_NOT_FOUND", what.to_uppercase()),
        format!("{what} {} not found", quoted(id)),
        Vec::new(),
    )
}

fn page(page: Option<pb::Page>) -> (Option<String>, u32) {
    let page = page.unwrap_or_default();
    let limit = if page.limit == 0 { 100 } else { page.limit };
    ((!page.after.is_empty()).then_some(page.after), limit)
}

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
        let (tenant, write) = match self.write(&caller, &r.request_id, command).await? {
            (Response::TenantCreated(t), write) => (Some(convert::tenant(&t)), write),
            (other, _) => return Err(unexpected(other)),
        };
        Ok(Reply::new(pb::CreateTenantResponse { write: Some(write), tenant }))
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
        let (after, limit) = page(r.page);
        let query = Query::Tenants { after: after.map(Into::into), limit };
        let tenants = match self.read(&caller, r.read, |s| s.query(&query)).await? {
            Answer::Tenants(t) => t.iter().map(convert::tenant).collect(),
            other => return Err(Status::internal(format!("unexpected answer {other:?}"))),
        };
        Ok(Reply::new(pb::ListTenantsResponse { tenants }))
    }

    async fn delete_tenant(
        &self,
        request: Request<pb::DeleteTenantRequest>,
    ) -> Result<pb::DeleteTenantResponse> {
        let caller = self.caller(&request).await?;
        require_admin(&caller)?;
        let r = request.into_inner();
        let tenant = valid_tenant(&r.tenant_id)?;
        match self.write(&caller, &r.request_id, Command::DeleteTenant { tenant }).await? {
            (Response::TenantDeleted(c), write) => Ok(Reply::new(pb::DeleteTenantResponse {
                write: Some(write),
                placements_released: c.placements,
                reservations_released: c.reservations,
                instances_released: c.instances,
                leases_released: c.leases,
                groups_deleted: c.groups,
                tokens_revoked: c.tokens,
                resources_released: Some(convert::pb_resources(c.resources)),
                queued_withdrawn: c.queued,
            })),
            (other, _) => Err(unexpected(other)),
        }
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
        let expires_at_ms = match response {
            Response::TokenAdded { expires_at } => expires_at.map_or(0, |at| at.0),
            other => return Err(unexpected(other)),
        };
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

#[tonic::async_trait]
impl pb::workers_server::Workers for Api {
    async fn register_worker(
        &self,
        request: Request<pb::RegisterWorkerRequest>,
    ) -> Result<pb::RegisterWorkerResponse> {
        let caller = self.caller(&request).await?;
        require_admin(&caller)?;
        let r = request.into_inner();
        let command = Command::RegisterWorker {
            worker: WorkerId::new(&r.worker_id),
            pool: (!r.pool.is_empty()).then(|| PoolId::new(&r.pool)),
            capacity: convert::resources(r.capacity),
            labels: r.labels,
        };
        let (worker, write) = match self.write(&caller, &r.request_id, command).await? {
            (Response::WorkerRegistered(w), write) => (Some(convert::worker(&w)), write),
            (other, _) => return Err(unexpected(other)),
        };
        Ok(Reply::new(pb::RegisterWorkerResponse { write: Some(write), worker }))
    }

    async fn get_worker(
        &self,
        request: Request<pb::GetWorkerRequest>,
    ) -> Result<pb::GetWorkerResponse> {
        let caller = self.caller(&request).await?;
        require_admin(&caller)?;
        let r = request.into_inner();
        let id = WorkerId::new(&r.worker_id);
        let worker =
            self.read(&caller, r.read, |s| s.state().workers.get(&id).map(convert::worker)).await?;
        Ok(Reply::new(pb::GetWorkerResponse {
            worker: Some(worker.ok_or_else(|| not_found("worker", &r.worker_id))?),
        }))
    }

    async fn list_workers(
        &self,
        request: Request<pb::ListWorkersRequest>,
    ) -> Result<pb::ListWorkersResponse> {
        let caller = self.caller(&request).await?;
        require_admin(&caller)?;
        let r = request.into_inner();
        let (after, limit) = page(r.page);
        let pool = (!r.pool.is_empty()).then(|| PoolId::new(&r.pool));
        let query = Query::Workers { pool, after: after.map(Into::into), limit };
        let workers = match self.read(&caller, r.read, |s| s.query(&query)).await? {
            Answer::Workers(w) => w.iter().map(convert::worker).collect(),
            other => return Err(Status::internal(format!("unexpected answer {other:?}"))),
        };
        Ok(Reply::new(pb::ListWorkersResponse { workers }))
    }

    async fn drain_worker(
        &self,
        request: Request<pb::DrainWorkerRequest>,
    ) -> Result<pb::DrainWorkerResponse> {
        let caller = self.caller(&request).await?;
        require_admin(&caller)?;
        let r = request.into_inner();
        let command = Command::SetWorkerSchedulable {
            worker: WorkerId::new(&r.worker_id),
            schedulable: !r.drain,
        };
        let (_, write) = self.write(&caller, &r.request_id, command).await?;
        Ok(Reply::new(pb::DrainWorkerResponse { write: Some(write), schedulable: !r.drain }))
    }

    async fn remove_worker(
        &self,
        request: Request<pb::RemoveWorkerRequest>,
    ) -> Result<pb::RemoveWorkerResponse> {
        let caller = self.caller(&request).await?;
        require_admin(&caller)?;
        let r = request.into_inner();
        let command = Command::RemoveWorker { worker: WorkerId::new(&r.worker_id), evict: r.evict };
        match self.write(&caller, &r.request_id, command).await? {
            (Response::WorkerRemoved { evicted }, write) => {
                Ok(Reply::new(pb::RemoveWorkerResponse {
                    write: Some(write),
                    evicted: evicted
                        .into_iter()
                        .map(|(t, p)| pb::remove_worker_response::Evicted {
                            tenant_id: t.0,
                            placement_id: p.0,
                        })
                        .collect(),
                }))
            }
            (other, _) => Err(unexpected(other)),
        }
    }

    async fn set_pool_reserve(
        &self,
        request: Request<pb::SetPoolReserveRequest>,
    ) -> Result<pb::SetPoolReserveResponse> {
        let caller = self.caller(&request).await?;
        require_admin(&caller)?;
        let r = request.into_inner();
        let reserve = (!r.remove).then(|| convert::resources(r.reserve));
        let command = Command::SetPoolReserve { pool: pool_or_default(&r.pool), reserve };
        let (_, write) = self.write(&caller, &r.request_id, command).await?;
        Ok(Reply::new(pb::SetPoolReserveResponse { write: Some(write) }))
    }

    async fn get_pool(&self, request: Request<pb::GetPoolRequest>) -> Result<pb::GetPoolResponse> {
        let caller = self.caller(&request).await?;
        require_admin(&caller)?;
        let r = request.into_inner();
        let pool = pool_or_default(&r.pool);
        let found = self.read(&caller, r.read, |s| s.pool_status(&pool).map(convert::pool)).await?;
        let pool = found.ok_or_else(|| not_found("pool", pool.as_str()))?;
        Ok(Reply::new(pb::GetPoolResponse { pool: Some(pool) }))
    }
}

fn pool_or_default(pool: &str) -> PoolId {
    PoolId::new(if pool.is_empty() { DEFAULT_POOL } else { pool })
}

#[tonic::async_trait]
impl pb::scheduler_server::Scheduler for Api {
    async fn place(&self, request: Request<pb::PlaceRequest>) -> Result<pb::PlaceResponse> {
        let caller = self.caller(&request).await?;
        let r = request.into_inner();
        let tenant = tenant_scope(&caller, &r.tenant_id)?;
        let spec = convert::spec(r.spec)?;
        if r.dry_run {
            // A linearizable read: the decision Place would get at the latest applied state.
            let (placement, decision) = self
                .read(&caller, None, |s| convert::decision(&s.dry_run(&tenant, spec), s.now().0))
                .await?;
            return Ok(Reply::new(pb::PlaceResponse {
                write: None,
                placement,
                decision: Some(decision),
                queued: None,
            }));
        }
        let fence = convert::fence(r.fence);
        let command = if r.queue_if_unavailable {
            Command::PlaceOrQueue { tenant, spec, fence }
        } else {
            Command::Place { tenant, spec, fence }
        };
        match self.write(&caller, &r.request_id, command).await? {
            (Response::Placed(p), write) => Ok(Reply::new(pb::PlaceResponse {
                write: Some(write),
                placement: Some(convert::placement(&p)),
                decision: None,
                queued: None,
            })),
            (Response::Queued(q), write) => Ok(Reply::new(pb::PlaceResponse {
                write: Some(write),
                placement: None,
                decision: None,
                queued: Some(convert::queued(&q)),
            })),
            (other, _) => Err(unexpected(other)),
        }
    }

    async fn release(&self, request: Request<pb::ReleaseRequest>) -> Result<pb::ReleaseResponse> {
        let caller = self.caller(&request).await?;
        let r = request.into_inner();
        let tenant = tenant_scope(&caller, &r.tenant_id)?;
        let command = Command::Release {
            tenant,
            placement: PlacementId::new(&r.placement_id),
            fence: convert::fence(r.fence),
        };
        match self.write(&caller, &r.request_id, command).await? {
            (Response::Released { resources, instances }, write) => {
                Ok(Reply::new(pb::ReleaseResponse {
                    write: Some(write),
                    released: Some(convert::pb_resources(resources)),
                    instances,
                }))
            }
            (other, _) => Err(unexpected(other)),
        }
    }

    async fn get_placement(
        &self,
        request: Request<pb::GetPlacementRequest>,
    ) -> Result<pb::GetPlacementResponse> {
        let caller = self.caller(&request).await?;
        let r = request.into_inner();
        let tenant = tenant_scope(&caller, &r.tenant_id)?;
        let id = PlacementId::new(&r.placement_id);
        let found = self
            .read(&caller, r.read, |s| {
                match s.state().placements.get(&(tenant.clone(), id.clone())) {
                    Some(p) => Some(pb::GetPlacementResponse {
                        placement: Some(convert::placement(p)),
                        queued: None,
                    }),
                    None => s.queue_status(&tenant, &id).map(|q| pb::GetPlacementResponse {
                        placement: None,
                        queued: Some(convert::queued(&q)),
                    }),
                }
            })
            .await?;
        Ok(Reply::new(found.ok_or_else(|| not_found("placement", &r.placement_id))?))
    }

    async fn list_placements(
        &self,
        request: Request<pb::ListPlacementsRequest>,
    ) -> Result<pb::ListPlacementsResponse> {
        let caller = self.caller(&request).await?;
        let r = request.into_inner();
        let tenant = tenant_scope(&caller, &r.tenant_id)?;
        let (after, limit) = page(r.page);
        let query = Query::Placements { tenant, after: after.map(Into::into), limit };
        let placements = match self.read(&caller, r.read, |s| s.query(&query)).await? {
            Answer::Placements(p) => p.iter().map(convert::placement).collect(),
            other => return Err(Status::internal(format!("unexpected answer {other:?}"))),
        };
        Ok(Reply::new(pb::ListPlacementsResponse { placements }))
    }

    async fn create_placement_group(
        &self,
        request: Request<pb::CreatePlacementGroupRequest>,
    ) -> Result<pb::CreatePlacementGroupResponse> {
        let caller = self.caller(&request).await?;
        let r = request.into_inner();
        let tenant = tenant_scope(&caller, &r.tenant_id)?;
        let command = Command::CreatePlacementGroup {
            tenant,
            group: r.group.into(),
            max_instances: r.max_instances,
            strategy: convert::group_strategy(r.strategy)?,
        };
        let (_, write) = self.write(&caller, &r.request_id, command).await?;
        Ok(Reply::new(pb::CreatePlacementGroupResponse { write: Some(write) }))
    }

    async fn reserve(&self, request: Request<pb::ReserveRequest>) -> Result<pb::ReserveResponse> {
        let caller = self.caller(&request).await?;
        let r = request.into_inner();
        let tenant = tenant_scope(&caller, &r.tenant_id)?;
        let command = Command::Reserve {
            tenant,
            spec: convert::spec(r.spec)?,
            ttl_ms: r.ttl_ms,
            fence: convert::fence(r.fence),
        };
        match self.write(&caller, &r.request_id, command).await? {
            (Response::Reserved(p), write) => Ok(Reply::new(pb::ReserveResponse {
                write: Some(write),
                reservation: Some(convert::placement(&p)),
            })),
            (other, _) => Err(unexpected(other)),
        }
    }

    async fn confirm_reservation(
        &self,
        request: Request<pb::ConfirmReservationRequest>,
    ) -> Result<pb::ConfirmReservationResponse> {
        let caller = self.caller(&request).await?;
        let r = request.into_inner();
        let tenant = tenant_scope(&caller, &r.tenant_id)?;
        let command = Command::ConfirmReservation {
            tenant,
            reservation: PlacementId::new(&r.reservation_id),
            fence: convert::fence(r.fence),
        };
        match self.write(&caller, &r.request_id, command).await? {
            (Response::Confirmed(p), write) => Ok(Reply::new(pb::ConfirmReservationResponse {
                write: Some(write),
                placement: Some(convert::placement(&p)),
            })),
            (other, _) => Err(unexpected(other)),
        }
    }

    async fn list_queue(
        &self,
        request: Request<pb::ListQueueRequest>,
    ) -> Result<pb::ListQueueResponse> {
        let caller = self.caller(&request).await?;
        let r = request.into_inner();
        let tenant = tenant_scope(&caller, &r.tenant_id)?;
        let (after, limit) = page(r.page);
        let after = after.map(|a| (tenant.clone(), PlacementId::new(a)));
        let limit = usize::try_from(limit.min(crate::scheduler::query::PAGE_MAX)).unwrap_or(1);
        let queued = self
            .read(&caller, r.read, |s| {
                s.queue_statuses(Some(&tenant), after.as_ref(), limit)
                    .iter()
                    .map(convert::queued)
                    .collect()
            })
            .await?;
        Ok(Reply::new(pb::ListQueueResponse { queued }))
    }

    async fn cancel_queued(
        &self,
        request: Request<pb::CancelQueuedRequest>,
    ) -> Result<pb::CancelQueuedResponse> {
        let caller = self.caller(&request).await?;
        let r = request.into_inner();
        let tenant = tenant_scope(&caller, &r.tenant_id)?;
        let command =
            Command::CancelQueued { tenant, placement: PlacementId::new(&r.placement_id) };
        let (_, write) = self.write(&caller, &r.request_id, command).await?;
        Ok(Reply::new(pb::CancelQueuedResponse { write: Some(write) }))
    }

    async fn cancel_reservation(
        &self,
        request: Request<pb::CancelReservationRequest>,
    ) -> Result<pb::CancelReservationResponse> {
        let caller = self.caller(&request).await?;
        let r = request.into_inner();
        let tenant = tenant_scope(&caller, &r.tenant_id)?;
        let command = Command::CancelReservation {
            tenant,
            reservation: PlacementId::new(&r.reservation_id),
            fence: convert::fence(r.fence),
        };
        match self.write(&caller, &r.request_id, command).await? {
            (Response::Cancelled { resources, .. }, write) => {
                Ok(Reply::new(pb::CancelReservationResponse {
                    write: Some(write),
                    released: Some(convert::pb_resources(resources)),
                }))
            }
            (other, _) => Err(unexpected(other)),
        }
    }
}

#[tonic::async_trait]
impl pb::leases_server::Leases for Api {
    async fn acquire(&self, request: Request<pb::AcquireRequest>) -> Result<pb::AcquireResponse> {
        let caller = self.caller(&request).await?;
        let r = request.into_inner();
        let tenant = tenant_scope(&caller, &r.tenant_id)?;
        let command = Command::AcquireLease {
            tenant,
            lease: LeaseName::new(&r.name),
            holder: r.holder,
            ttl_ms: r.ttl_ms,
        };
        match self.write(&caller, &r.request_id, command).await? {
            (Response::LeaseGranted(l), write) => Ok(Reply::new(pb::AcquireResponse {
                write: Some(write),
                lease: Some(convert::lease(&l)),
            })),
            (other, _) => Err(unexpected(other)),
        }
    }

    async fn keep_alive(
        &self,
        request: Request<pb::KeepAliveRequest>,
    ) -> Result<pb::KeepAliveResponse> {
        let caller = self.caller(&request).await?;
        let r = request.into_inner();
        let tenant = tenant_scope(&caller, &r.tenant_id)?;
        let command = Command::KeepAliveLease {
            tenant,
            lease: LeaseName::new(&r.name),
            token: LogIndex(r.token),
        };
        match self.write(&caller, &r.request_id, command).await? {
            (Response::LeaseKeptAlive(l), write) => Ok(Reply::new(pb::KeepAliveResponse {
                write: Some(write),
                lease: Some(convert::lease(&l)),
            })),
            (other, _) => Err(unexpected(other)),
        }
    }

    async fn release(
        &self,
        request: Request<pb::ReleaseLeaseRequest>,
    ) -> Result<pb::ReleaseLeaseResponse> {
        let caller = self.caller(&request).await?;
        let r = request.into_inner();
        let tenant = tenant_scope(&caller, &r.tenant_id)?;
        let command = Command::ReleaseLease {
            tenant,
            lease: LeaseName::new(&r.name),
            token: LogIndex(r.token),
        };
        let (_, write) = self.write(&caller, &r.request_id, command).await?;
        Ok(Reply::new(pb::ReleaseLeaseResponse { write: Some(write) }))
    }

    async fn get_lease(
        &self,
        request: Request<pb::GetLeaseRequest>,
    ) -> Result<pb::GetLeaseResponse> {
        let caller = self.caller(&request).await?;
        let r = request.into_inner();
        let tenant = tenant_scope(&caller, &r.tenant_id)?;
        let key = (tenant, LeaseName::new(&r.name));
        let found =
            self.read(&caller, r.read, |s| s.state().leases.get(&key).map(convert::lease)).await?;
        let lease = found.ok_or_else(|| not_found("lease", &r.name))?;
        Ok(Reply::new(pb::GetLeaseResponse { lease: Some(lease) }))
    }
}

#[tonic::async_trait]
impl pb::billing_server::Billing for Api {
    async fn allocate_shared_cost(
        &self,
        request: Request<pb::AllocateSharedCostRequest>,
    ) -> Result<pb::AllocateSharedCostResponse> {
        self.caller(&request).await?;
        let r = request.into_inner();
        let parse = |field: &str, s: &str| {
            Decimal::from_str(s.trim()).map_err(|e| {
                invalid("INVALID_DECIMAL", format!("{field} {} is not a decimal: {e}", quoted(s)))
            })
        };
        let total = parse("total", &r.total)?;
        let weights = r
            .weights
            .iter()
            .map(|w| parse("weight", w))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let parts =
            allocate(total, &weights).map_err(|e| invalid("INVALID_ALLOCATION", e.to_string()))?;
        Ok(Reply::new(pb::AllocateSharedCostResponse {
            parts: parts.iter().map(Decimal::to_string).collect(),
        }))
    }
}

#[tonic::async_trait]
impl pb::cluster_server::Cluster for Api {
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
}

impl Api {
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
