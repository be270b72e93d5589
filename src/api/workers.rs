//! The `Workers` service: the machines that run work, and their pools. Admin only.

use tonic::{Request, Response as Reply, Status};

use super::answer::{answer, Evicted, Reported};
use super::auth::require_admin;
use super::status::{self, not_found};
use super::{convert, pb, Api};
use crate::scheduler::{
    Command, LogIndex, Placement, PlacementId, PoolId, Query, TenantId, Worker, WorkerId,
    DEFAULT_POOL,
};

type Result<T> = std::result::Result<Reply<T>, Status>;

fn pool_or_default(pool: &str) -> PoolId {
    PoolId::new(if pool.is_empty() { DEFAULT_POOL } else { pool })
}

#[tonic::async_trait]
impl pb::workers_server::Workers for Api {
    type WatchAssignmentsStream = super::streams::Stream<pb::WatchAssignmentsResponse>;

    async fn watch_assignments(
        &self,
        request: Request<pb::WatchAssignmentsRequest>,
    ) -> Result<Self::WatchAssignmentsStream> {
        super::streams::watch_assignments(self, request).await.map(Reply::new)
    }

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
        let (response, write) = self.write(&caller, &r.request_id, command).await?;
        let worker: Worker = answer(response)?;
        Ok(Reply::new(pb::RegisterWorkerResponse {
            write: Some(write),
            worker: Some(convert::worker(&worker)),
        }))
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
        let (after, limit) = convert::page(r.page);
        let pool = (!r.pool.is_empty()).then(|| PoolId::new(&r.pool));
        let query = Query::Workers { pool, after: after.map(Into::into), limit };
        let workers: Vec<Worker> = answer(self.read(&caller, r.read, |s| s.query(&query)).await?)?;
        Ok(Reply::new(pb::ListWorkersResponse {
            workers: workers.iter().map(convert::worker).collect(),
        }))
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
        let (response, write) = self.write(&caller, &r.request_id, command).await?;
        let Evicted(evicted) = answer(response)?;
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

    async fn heartbeat(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> Result<pb::HeartbeatResponse> {
        let caller = self.caller(&request).await?;
        require_admin(&caller)?;
        let r = request.into_inner();
        let worker = WorkerId::new(&r.worker_id);
        // One bad id would sink the whole batch: each is checked before it joins one.
        Command::Heartbeat { workers: vec![worker.clone()] }
            .validate()
            .map_err(|rejection| status::rejection(&rejection))?;
        let (ack, write) = self.heartbeats.beat(worker).await?;
        let ack = ack.ok_or_else(|| not_found("worker", &r.worker_id))?;
        Ok(Reply::new(pb::HeartbeatResponse {
            write: Some(write),
            generation: ack.generation.0,
            alive_until_ms: ack.alive_until.0,
            ttl_ms: ack.ttl_ms,
            revived: ack.revived,
            drained: ack.drained,
        }))
    }

    async fn report_status(
        &self,
        request: Request<pb::ReportStatusRequest>,
    ) -> Result<pb::ReportStatusResponse> {
        let caller = self.caller(&request).await?;
        require_admin(&caller)?;
        let r = request.into_inner();
        let command = Command::ReportStatus {
            worker: WorkerId::new(&r.worker_id),
            tenant: TenantId::new(&r.tenant_id),
            placement: PlacementId::new(&r.placement_id),
            slot: r.slot,
            assigned_at: LogIndex(r.assigned_at),
            status: convert::reported_status(r.status, r.exit_code, r.message)?,
        };
        let (response, write) = self.write(&caller, &r.request_id, command).await?;
        let Reported(finished) = answer(response)?;
        Ok(Reply::new(pb::ReportStatusResponse {
            write: Some(write),
            finished_reason: finished.map(|f| f.reason().to_owned()).unwrap_or_default(),
        }))
    }

    async fn set_pool_worker_ttl(
        &self,
        request: Request<pb::SetPoolWorkerTtlRequest>,
    ) -> Result<pb::SetPoolWorkerTtlResponse> {
        let caller = self.caller(&request).await?;
        require_admin(&caller)?;
        let r = request.into_inner();
        let ttl_ms = (!r.reset).then_some(r.ttl_ms);
        let command = Command::SetPoolWorkerTtl { pool: pool_or_default(&r.pool), ttl_ms };
        let (_, write) = self.write(&caller, &r.request_id, command).await?;
        Ok(Reply::new(pb::SetPoolWorkerTtlResponse { write: Some(write) }))
    }

    async fn list_worker_placements(
        &self,
        request: Request<pb::ListWorkerPlacementsRequest>,
    ) -> Result<pb::ListWorkerPlacementsResponse> {
        let caller = self.caller(&request).await?;
        require_admin(&caller)?;
        let r = request.into_inner();
        let (after, limit) = convert::page(r.page);
        let after = convert::tenant_page_after(after)?;
        let query = Query::WorkerPlacements { worker: WorkerId::new(&r.worker_id), after, limit };
        let placements: Vec<Placement> =
            answer(self.read(&caller, r.read, |s| s.query(&query)).await?)?;
        Ok(Reply::new(pb::ListWorkerPlacementsResponse {
            placements: placements.iter().map(convert::placement).collect(),
        }))
    }

    async fn list_pool_placements(
        &self,
        request: Request<pb::ListPoolPlacementsRequest>,
    ) -> Result<pb::ListPoolPlacementsResponse> {
        let caller = self.caller(&request).await?;
        require_admin(&caller)?;
        let r = request.into_inner();
        let (after, limit) = convert::page(r.page);
        let after = convert::tenant_page_after(after)?;
        let query = Query::PoolPlacements { pool: pool_or_default(&r.pool), after, limit };
        let placements: Vec<Placement> =
            answer(self.read(&caller, r.read, |s| s.query(&query)).await?)?;
        Ok(Reply::new(pb::ListPoolPlacementsResponse {
            placements: placements.iter().map(convert::placement).collect(),
        }))
    }
}
