//! Leases (distributed locks) with fencing tokens: acquire, keep alive, release, and the
//! extension a new leader grants.
//!
//! A lease has at most one holder at any log time. Its fencing token is the log index of the
//! grant, so tokens strictly increase across grants and leaders (invariant 7). Keep-alive,
//! release and fenced commands must present the live token (checked by `check_fence`).

use super::events::Event;
use super::index::Deadline;
use super::{
    count_u64, Fence, Lease, LeaseName, LogIndex, Rejection, Response, Scheduler, TenantId,
    UnixMillis, LEASES_MAX,
};

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
        self.emit(Event::LeaseGranted {
            tenant: granted.tenant.clone(),
            lease: granted.name.clone(),
            holder: granted.holder.clone(),
            token: granted.token,
            expires_at: granted.expires_at,
        });
        Ok(Response::LeaseGranted(granted))
    }

    /// Extends a live lease by its TTL from now (never shortens it); the token must be live.
    pub(super) fn keep_alive_lease(
        &mut self,
        tenant: TenantId,
        lease: LeaseName,
        token: LogIndex,
    ) -> Result<Response, Rejection> {
        self.check_tenant_fence(&tenant, Some(&Fence { lease: lease.clone(), token }))?;
        let key = (tenant, lease);
        let old = self.state.leases.get(&key).expect("invariant: fence checked").clone();
        let expires_at = self.state.now.plus_ms(old.ttl_ms).max(old.expires_at);
        self.move_lease_deadline(&old, expires_at);
        let lease = self.state.leases.get_mut(&key).expect("invariant: fence checked");
        lease.expires_at = expires_at;
        Ok(Response::LeaseKeptAlive(lease.clone()))
    }

    /// Gives up a lease; the token must be live.
    pub(super) fn release_lease(
        &mut self,
        tenant: TenantId,
        lease: LeaseName,
        token: LogIndex,
    ) -> Result<Response, Rejection> {
        self.check_tenant_fence(&tenant, Some(&Fence { lease: lease.clone(), token }))?;
        let removed = self.state.leases.remove(&(tenant, lease)).expect("invariant: fence checked");
        self.ix.deadlines.remove(&(
            removed.expires_at,
            Deadline::Lease(removed.tenant.clone(), removed.name.clone()),
        ));
        let token = removed.token;
        self.emit(Event::LeaseReleased { tenant: removed.tenant, lease: removed.name, token });
        Ok(Response::LeaseReleased)
    }

    /// A new leader's clock may run ahead: give every live lease, and every managed, ready
    /// worker's TTL, at least the grace period.
    pub(super) fn extend_leases(&mut self) -> Response {
        let floor = self.state.now.plus_ms(self.state.config.lease_grace_ms);
        let short: Vec<Lease> =
            self.state.leases.values().filter(|l| l.expires_at < floor).cloned().collect();
        for old in &short {
            self.move_lease_deadline(old, floor);
            let key = (old.tenant.clone(), old.name.clone());
            self.state.leases.get_mut(&key).expect("invariant: listed lease exists").expires_at =
                floor;
        }
        // Worker TTLs are lower bounds exactly as lease TTLs (`liveness.rs`).
        self.extend_workers(floor);
        Response::LeaderChanged { leases_extended: count_u64(short.len()) }
    }

    fn move_lease_deadline(&mut self, old: &Lease, expires_at: UnixMillis) {
        let deadline = Deadline::Lease(old.tenant.clone(), old.name.clone());
        assert!(
            self.ix.deadlines.remove(&(old.expires_at, deadline.clone())),
            "invariant: every lease has a deadline"
        );
        self.ix.deadlines.insert((expires_at, deadline));
    }
}
