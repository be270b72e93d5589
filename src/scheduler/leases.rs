//! Leases (distributed locks) with fencing tokens.
//!
//! A lease has at most one holder at any log time. Its fencing token is the log index of the
//! grant, so tokens strictly increase across grants and leaders (invariant 7). Keep-alive,
//! release and fenced commands must present the live token (checked by `check_fence`).

use super::index::Deadline;
use super::{Lease, LeaseName, LogIndex, Rejection, Response, Scheduler, TenantId, LEASES_MAX};

impl Scheduler {
    /// Grants the lease if nobody holds it; never blocks. A busy lease names its holder.
    pub(super) fn acquire_lease(
        &mut self,
        index: LogIndex,
        tenant: TenantId,
        lease: LeaseName,
        holder: String,
        ttl_ms: u64,
    ) -> Result<Response, Rejection> {
        self.tenant(&tenant)?;
        let key = (tenant.clone(), lease.clone());
        if let Some(held) = self.state.leases.get(&key) {
            // Expired leases were removed before this command ran, so `held` is live.
            return Err(Rejection::LeaseHeld {
                lease,
                holder: held.holder.clone(),
                token: held.token,
                expires_at: held.expires_at,
            });
        }
        if self.state.leases.len() >= LEASES_MAX {
            return Err(Rejection::LimitReached { what: "leases".into(), max: LEASES_MAX as u64 });
        }
        let granted = Lease {
            tenant: tenant.clone(),
            name: lease.clone(),
            holder,
            token: index,
            ttl_ms,
            granted_at: self.state.now,
            expires_at: self.state.now.plus_ms(ttl_ms),
        };
        self.ix.deadlines.insert((granted.expires_at, Deadline::Lease(tenant, lease)));
        self.state.leases.insert(key, granted.clone());
        Ok(Response::LeaseGranted(granted))
    }
}
