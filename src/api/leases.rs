//! The `Leases` service: named leases with fencing tokens, scoped to the caller's tenant.

use tonic::{Request, Response as Reply, Status};

use super::answer::{answer, Granted, KeptAlive};
use super::auth::tenant_scope;
use super::status::not_found;
use super::{convert, pb, Api};
use crate::scheduler::query::Query;
use crate::scheduler::{Command, Lease, LeaseName, LogIndex};

type Result<T> = std::result::Result<Reply<T>, Status>;

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
        let (response, write) = self.write(&caller, &r.request_id, command).await?;
        let Granted(lease) = answer(response)?;
        Ok(Reply::new(pb::AcquireResponse {
            write: Some(write),
            lease: Some(convert::lease(&lease)),
        }))
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
        let (response, write) = self.write(&caller, &r.request_id, command).await?;
        let KeptAlive(lease) = answer(response)?;
        Ok(Reply::new(pb::KeepAliveResponse {
            write: Some(write),
            lease: Some(convert::lease(&lease)),
        }))
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

    async fn list_leases(
        &self,
        request: Request<pb::ListLeasesRequest>,
    ) -> Result<pb::ListLeasesResponse> {
        let caller = self.caller(&request).await?;
        let r = request.into_inner();
        let tenant = tenant_scope(&caller, &r.tenant_id)?;
        let (after, limit) = convert::page(r.page);
        let query = Query::Leases { tenant, after: after.map(|a| LeaseName::new(&a)), limit };
        let leases: Vec<Lease> = answer(self.read(&caller, r.read, |s| s.query(&query)).await?)?;
        Ok(Reply::new(pb::ListLeasesResponse {
            leases: leases.iter().map(convert::lease).collect(),
        }))
    }
}
