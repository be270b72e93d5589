//! The `Scheduler` service: a tenant's placements, reservations, queued placements and
//! placement groups, scoped to the caller's tenant.

use tonic::{Request, Response as Reply, Status};

use super::answer::{answer, Cancelled, Confirmed, Placed, Released, Reserved};
use super::auth::tenant_scope;
use super::status::not_found;
use super::{convert, pb, Api};
use crate::scheduler::query::PAGE_MAX;
use crate::scheduler::{Command, Finished, Placement, PlacementId, Query};

type Result<T> = std::result::Result<Reply<T>, Status>;

#[tonic::async_trait]
impl pb::scheduler_server::Scheduler for Api {
    type WatchStream = super::streams::Stream<pb::WatchResponse>;

    async fn watch(&self, request: Request<pb::WatchRequest>) -> Result<Self::WatchStream> {
        super::streams::watch(self, request).await.map(Reply::new)
    }

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
        let (response, write) = self.write(&caller, &r.request_id, command).await?;
        let (placement, queued) = match answer(response)? {
            Placed::Now(p) => (Some(convert::placement(&p)), None),
            Placed::Queued(q) => (None, Some(convert::queued(&q))),
        };
        Ok(Reply::new(pb::PlaceResponse { write: Some(write), placement, decision: None, queued }))
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
        let (response, write) = self.write(&caller, &r.request_id, command).await?;
        let Released { resources, instances } = answer(response)?;
        Ok(Reply::new(pb::ReleaseResponse {
            write: Some(write),
            released: Some(convert::pb_resources(resources)),
            instances,
        }))
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
        let (after, limit) = convert::page(r.page);
        let query = Query::Placements { tenant, after: after.map(Into::into), limit };
        let placements: Vec<Placement> =
            answer(self.read(&caller, r.read, |s| s.query(&query)).await?)?;
        Ok(Reply::new(pb::ListPlacementsResponse {
            placements: placements.iter().map(convert::placement).collect(),
        }))
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
        let (response, write) = self.write(&caller, &r.request_id, command).await?;
        let Reserved(reservation) = answer(response)?;
        Ok(Reply::new(pb::ReserveResponse {
            write: Some(write),
            reservation: Some(convert::placement(&reservation)),
        }))
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
        let (response, write) = self.write(&caller, &r.request_id, command).await?;
        let Confirmed(placement) = answer(response)?;
        Ok(Reply::new(pb::ConfirmReservationResponse {
            write: Some(write),
            placement: Some(convert::placement(&placement)),
        }))
    }

    async fn list_queue(
        &self,
        request: Request<pb::ListQueueRequest>,
    ) -> Result<pb::ListQueueResponse> {
        let caller = self.caller(&request).await?;
        let r = request.into_inner();
        let (after, limit) = convert::page(r.page);
        // The admin with no tenant: the cluster-wide queue.
        let (tenant, after) = if r.tenant_id.is_empty() && caller == super::Caller::Admin {
            (None, convert::tenant_page_after(after)?)
        } else {
            let tenant = tenant_scope(&caller, &r.tenant_id)?;
            let after = after.map(|a| (tenant.clone(), PlacementId::new(a)));
            (Some(tenant), after)
        };
        let limit = usize::try_from(limit.min(PAGE_MAX)).unwrap_or(1);
        let queued = self
            .read(&caller, r.read, |s| {
                s.queue_statuses(tenant.as_ref(), after.as_ref(), limit)
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
        let (response, write) = self.write(&caller, &r.request_id, command).await?;
        let Cancelled { resources } = answer(response)?;
        Ok(Reply::new(pb::CancelReservationResponse {
            write: Some(write),
            released: Some(convert::pb_resources(resources)),
        }))
    }

    async fn list_finished(
        &self,
        request: Request<pb::ListFinishedRequest>,
    ) -> Result<pb::ListFinishedResponse> {
        let caller = self.caller(&request).await?;
        let r = request.into_inner();
        let tenant = tenant_scope(&caller, &r.tenant_id)?;
        let (after, limit) = convert::page(r.page);
        let query = Query::Finished { tenant, after: after.map(Into::into), limit };
        let finished: Vec<Finished> =
            answer(self.read(&caller, r.read, |s| s.query(&query)).await?)?;
        Ok(Reply::new(pb::ListFinishedResponse {
            finished: finished.iter().map(convert::finished).collect(),
        }))
    }
}
