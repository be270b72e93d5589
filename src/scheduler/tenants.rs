//! Tenant commands: create, delete (cascading), quota, tokens.

use super::events::Event;
use super::index::Deadline;
use super::meter::Meter;
use super::windows::{limited_in_time, WindowCounters};
use super::SessionKey;
use super::{
    count_u64, DeletedCounts, Dimension, Limits, PlacementId, PoolId, Quota, Rejection, Response,
    Scheduler, Tenant, TenantId, Token, TokenHash, TokenId, Usage, UsageTotals, TENANTS_MAX,
    TENANT_DEPTH_MAX, TOKENS_PER_TENANT_MAX,
};

impl Scheduler {
    pub(super) fn create_tenant(
        &mut self,
        tenant: TenantId,
        parent: Option<TenantId>,
        weight: u32,
    ) -> Result<Response, Rejection> {
        if self.state.tenants.contains_key(&tenant) {
            return Err(Rejection::TenantExists { tenant });
        }
        if self.state.tenants.len() >= TENANTS_MAX {
            return Err(Rejection::LimitReached {
                what: "tenants".into(),
                max: TENANTS_MAX as u64,
            });
        }
        if let Some(parent) = &parent {
            self.tenant(parent)?;
            let depth = u32::try_from(self.lineage(parent).len()).unwrap_or(u32::MAX);
            if depth >= TENANT_DEPTH_MAX {
                return Err(Rejection::TenantTooDeep { tenant, depth_max: TENANT_DEPTH_MAX });
            }
            self.tenant_mut(parent)?.children.insert(tenant.clone());
        }
        let created = Tenant {
            id: tenant.clone(),
            parent,
            children: Default::default(),
            weight,
            quota: Quota::default(),
            usage: UsageTotals::default(),
            burst: None,
            windows: WindowCounters::new(self.state.now),
            tokens: Default::default(),
            created_at: self.state.now,
            billing_plan: None,
            meter: Box::new(Meter::new(self.state.now)),
            budget: None,
            invoices: Box::default(),
            rate: None,
            policy: Box::default(),
        };
        self.state.tenants.insert(tenant.clone(), created.clone());
        self.emit(Event::TenantCreated { tenant, parent: created.parent.clone() });
        Ok(Response::TenantCreated(Box::new(created)))
    }

    /// Deletes the tenant and, in the same step, everything it owns. Capacity returns to the
    /// workers and usage leaves every ancestor.
    pub(super) fn delete_tenant(&mut self, tenant: &TenantId) -> Result<Response, Rejection> {
        let t = self.tenant(tenant)?;
        if !t.children.is_empty() {
            return Err(Rejection::TenantHasChildren {
                tenant: tenant.clone(),
                children: count_u64(t.children.len()),
            });
        }
        let mut counts = DeletedCounts { tokens: count_u64(t.tokens.len()), ..Default::default() };
        let first = (tenant.clone(), PlacementId::new(""));
        let owned: Vec<PlacementId> = self
            .state
            .placements
            .range(first..)
            .take_while(|((owner, _), _)| owner == tenant)
            .map(|((_, id), _)| id.clone())
            .collect();
        for id in owned {
            let p = &self.state.placements[&(tenant.clone(), id.clone())];
            if p.is_reservation() {
                counts.reservations += 1;
            } else {
                counts.placements += 1;
            }
            // Ends with its tenant: no event of its own (`TenantDeleted`).
            let p = self.unplace(tenant, &id, None).expect("invariant: listed");
            let (resources, instances) = super::jobs::held(&p);
            counts.instances += u64::from(instances);
            counts.resources =
                counts.resources.checked_add(resources).expect("invariant: released fits");
        }
        counts.queued = self.drop_queued_of(tenant);
        self.forget_finished_of(tenant);
        let before = self.state.groups.len();
        self.state.groups.retain(|(owner, _), _| owner != tenant);
        counts.groups = count_u64(before - self.state.groups.len());
        let leases: Vec<_> = self
            .state
            .leases
            .iter()
            .filter(|((owner, _), _)| owner == tenant)
            .map(|(k, l)| (k.clone(), l.expires_at))
            .collect();
        for (key, expires_at) in leases {
            self.state.leases.remove(&key);
            self.ix.deadlines.remove(&(expires_at, Deadline::Lease(key.0, key.1)));
            counts.leases += 1;
        }
        // Forget the tenant's request ids: a later tenant with the same id must never be
        // answered with this one's responses. (This command's own answer is recorded after.)
        // Except the CreateTenant that made it: a delayed duplicate of that request (a retry
        // still in flight through a deposed leader) must replay, not bring the deleted tenant
        // back — a request id is applied at most once (invariant 8).
        let scope = Some(tenant.clone());
        let sessions: Vec<SessionKey> = self
            .state
            .sessions
            .of_scope(&scope)
            .filter(|(_, s)| !matches!(s.first.result, Ok(Response::TenantCreated(_))))
            .map(|(k, _)| k.clone())
            .collect();
        for key in sessions {
            self.state.sessions.remove(&key).expect("invariant: listed above");
        }
        // Its month so far is final: nothing more can be metered.
        self.meter_tenant(tenant);
        let closed = self.tenant_mut(tenant).expect("invariant: looked up above").meter.close();
        if let Some(statement) = closed {
            self.emit(Event::Metered { tenant: tenant.clone(), statement });
        }
        let removed = self.state.tenants.remove(tenant).expect("invariant: looked up above");
        self.refresh_meter_deadline(tenant);
        self.ix.set_guaranteed(tenant, removed.quota.guarantees.keys(), false);
        self.ix.window_limited -= u64::from(limited_in_time(&removed));
        assert!(removed.usage.total.is_zero(), "invariant: deleted tenant holds nothing");
        assert!(removed.burst.is_none(), "invariant: an empty subtree is under soft");
        for (id, token) in &removed.tokens {
            self.ix.forget_token(tenant, id, token);
        }
        if let Some(parent) = &removed.parent {
            self.tenant_mut(parent).expect("invariant: parent exists").children.remove(tenant);
        }
        // What its guarantees kept back for it is free now.
        self.queue_dirty |= !removed.quota.guarantees.is_empty();
        self.emit(Event::TenantDeleted { tenant: tenant.clone() });
        Ok(Response::TenantDeleted(counts))
    }

    /// Replaces a tenant's quota. A limit below what the subtree already holds is refused, so
    /// a hard limit is never exceeded (invariant 2): release first, then lower the limit.
    pub(super) fn set_quota(
        &mut self,
        tenant: &TenantId,
        quota: Quota,
    ) -> Result<Response, Rejection> {
        let t = self.tenant(tenant)?;
        // The hard limits that will apply: these, or inherited where these set none.
        let parent_hard = match &t.parent {
            Some(parent) => self.effective_quota(parent).total,
            None => Limits::default(),
        };
        let hard = quota.total.or(&parent_hard);
        for d in Dimension::ALL {
            let Some(l) = quota.soft.get(d) else { continue };
            if let Some(h) = hard.get(d).filter(|h| l.burst > *h) {
                return Err(Rejection::invalid(
                    "quota.soft",
                    format!("{} burst {} is above the hard limit {h}", d.name(), l.burst),
                ));
            }
        }
        let below = |usage: &Usage, limits: &Limits| {
            Dimension::ALL.into_iter().find(|d| limits.get(*d).is_some_and(|l| usage.get(*d) > l))
        };
        let burst = quota.soft.bursts();
        let scopes =
            [(None, t.usage.total, &quota.total), (None, t.usage.total, &burst)].into_iter().chain(
                quota
                    .pools
                    .iter()
                    .map(|(pool, limits)| (Some(pool.clone()), t.usage.pool(pool), limits)),
            );
        let ceilings: Vec<(PoolId, Limits)> = quota
            .guarantees
            .iter()
            .filter_map(|(pool, g)| {
                let b = g.borrowing_limit?.checked_add(g.nominal)?;
                let limits = Limits {
                    cpu_millis: Some(b.cpu_millis),
                    memory_mib: Some(b.memory_mib),
                    ..Limits::default()
                };
                Some((pool.clone(), limits))
            })
            .collect();
        let scopes = scopes.chain(
            ceilings.iter().map(|(pool, limits)| (Some(pool.clone()), t.usage.pool(pool), limits)),
        );
        for (pool, usage, limits) in scopes {
            if let Some(d) = below(&usage, limits) {
                return Err(Rejection::invalid(
                    "quota",
                    format!(
                        "{} limit {} is below current usage {}{}; release first",
                        d.name(),
                        limits.get(d).unwrap_or_default(),
                        usage.get(d),
                        pool.map(|p| format!(" in pool {p}")).unwrap_or_default()
                    ),
                ));
            }
        }
        self.check_guarantees_fit(&t.quota.guarantees, &quota.guarantees)?;
        let t = self.tenant_mut(tenant)?;
        let was_limited = limited_in_time(t);
        let old = std::mem::replace(&mut t.quota, quota);
        let limited = limited_in_time(t);
        let new_pools: Vec<PoolId> = t.quota.guarantees.keys().cloned().collect();
        self.ix.set_guaranteed(tenant, old.guarantees.keys(), false);
        self.ix.set_guaranteed(tenant, new_pools.iter(), true);
        self.ix.window_limited =
            self.ix.window_limited + u64::from(limited) - u64::from(was_limited);
        // Descendants inherit from this quota: their burst state may change too.
        let subtree = self.subtree(tenant);
        self.settle_bursts(&subtree);
        self.queue_dirty = true;
        Ok(Response::QuotaSet)
    }

    /// Adds a token that expires `ttl_ms` after this entry's log time (0: never).
    pub(super) fn add_token(
        &mut self,
        tenant: &TenantId,
        token: TokenId,
        hash: TokenHash,
        ttl_ms: u64,
    ) -> Result<Response, Rejection> {
        let t = self.tenant(tenant)?;
        if t.tokens.contains_key(&token) || self.ix.tokens.contains_key(&hash) {
            return Err(Rejection::TokenExists { token });
        }
        if t.tokens.len() >= TOKENS_PER_TENANT_MAX {
            return Err(Rejection::LimitReached {
                what: "tokens per tenant".into(),
                max: TOKENS_PER_TENANT_MAX as u64,
            });
        }
        let expires_at = (ttl_ms > 0).then(|| self.state.now.plus_ms(ttl_ms));
        let record = Token { hash, expires_at };
        self.tenant_mut(tenant)?.tokens.insert(token.clone(), record);
        self.ix.add_token(tenant, &token, &record);
        Ok(Response::TokenAdded { expires_at })
    }

    /// Refuses a command authorized by a token that is unknown, another tenant's, or expired
    /// at this entry's log time.
    pub(super) fn revoke_token(
        &mut self,
        tenant: &TenantId,
        token: TokenId,
    ) -> Result<Response, Rejection> {
        let t = self.tenant_mut(tenant)?;
        let Some(removed) = t.tokens.remove(&token) else {
            return Err(Rejection::TokenNotFound { token });
        };
        self.ix.forget_token(tenant, &token, &removed);
        Ok(Response::TokenRevoked)
    }

    pub(super) fn check_token(
        &self,
        hash: TokenHash,
        tenant: Option<&TenantId>,
    ) -> Result<(), Rejection> {
        let Some((owner, id)) = self.ix.tokens.get(&hash) else {
            return Err(Rejection::Unauthenticated);
        };
        if Some(owner) != tenant {
            return Err(Rejection::Unauthenticated);
        }
        let token = self.state.tenants.get(owner).and_then(|t| t.tokens.get(id));
        let token = token.expect("invariant: an indexed token belongs to its tenant");
        match token.expires_at {
            Some(expired_at) if token.expired(self.state.now) => {
                Err(Rejection::TokenExpired { token: id.clone(), expired_at })
            }
            _ => Ok(()),
        }
    }

    /// Forgets every token whose retention after expiry has ended at this entry's log time.
    pub(super) fn purge_expired_tokens(&mut self) {
        while let Some((at, _, _)) = self.ix.token_purges.first() {
            if *at > self.state.now {
                break;
            }
            let (_, tenant, id) =
                self.ix.token_purges.pop_first().expect("invariant: first exists");
            let t = self.state.tenants.get_mut(&tenant);
            let token = t.and_then(|t| t.tokens.remove(&id));
            let token = token.expect("invariant: a purge names a token of its tenant");
            self.ix.tokens.remove(&token.hash);
        }
    }
}
