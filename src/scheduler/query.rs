//! Reads of the replicated state. Every tenant-scoped read names its tenant, and objects are
//! keyed by `(TenantId, id)`, so a read can only ever see its own tenant's objects.

use serde::{Deserialize, Serialize};

use super::{
    Finished, GroupId, Lease, LeaseName, Placement, PlacementGroup, PlacementId, PoolId, Scheduler,
    Tenant, TenantId, Token, TokenHash, TokenId, UnixMillis, Worker, WorkerId,
};

/// Most items one list query returns.
pub const PAGE_MAX: u32 = 1_000;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Query {
    Tenant(TenantId),
    /// Tenants after `after`, in id order.
    Tenants {
        after: Option<TenantId>,
        limit: u32,
    },
    Worker(WorkerId),
    /// Workers after `after`, in id order, optionally in one pool.
    Workers {
        pool: Option<PoolId>,
        after: Option<WorkerId>,
        limit: u32,
    },
    Placement(TenantId, PlacementId),
    /// One tenant's placements and reservations after `after`, in id order.
    Placements {
        tenant: TenantId,
        after: Option<PlacementId>,
        limit: u32,
    },
    Group(TenantId, GroupId),
    Lease(TenantId, LeaseName),
    /// The placements and reservations with an instance on a worker, all tenants (an operator's
    /// view), in (tenant, id) order after `after`; from the index, never a scan.
    WorkerPlacements {
        worker: WorkerId,
        after: Option<(TenantId, PlacementId)>,
        limit: u32,
    },
    /// The placements and reservations in a pool, all tenants (an operator's view), in
    /// (tenant, id) order after `after`; from the index, never a scan.
    PoolPlacements {
        pool: PoolId,
        after: Option<(TenantId, PlacementId)>,
        limit: u32,
    },
    /// One tenant's finished placements (completed, failed, lost, timed out) after `after`, in
    /// id order.
    Finished {
        tenant: TenantId,
        after: Option<PlacementId>,
        limit: u32,
    },
    /// Which tenant (and token name and record) a token hash belongs to.
    TokenOwner(TokenHash),
    Summary,
    /// One tenant's leases after `after`, in name order. (Last: a variant's place is its
    /// encoding between replicas.)
    Leases {
        tenant: TenantId,
        after: Option<LeaseName>,
        limit: u32,
    },
}

/// Counts across the whole cluster.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    pub now: UnixMillis,
    pub workers: u64,
    pub tenants: u64,
    pub placements: u64,
    pub groups: u64,
    pub leases: u64,
    pub sessions: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Answer {
    Tenant(Option<Box<Tenant>>),
    Tenants(Vec<Tenant>),
    Worker(Option<Worker>),
    Workers(Vec<Worker>),
    Placement(Option<Box<Placement>>),
    Placements(Vec<Placement>),
    /// The group and how many instances it holds now.
    Group(Option<(PlacementGroup, u64)>),
    Lease(Option<Lease>),
    Finished(Vec<Finished>),
    TokenOwner(Option<(TenantId, TokenId, Token)>),
    Summary(Summary),
    /// Last: a variant's place is its encoding between replicas.
    Leases(Vec<Lease>),
}

fn page(limit: u32) -> usize {
    usize::try_from(limit.clamp(1, PAGE_MAX)).unwrap_or(1)
}

fn after<K: Ord>(after: Option<K>) -> std::ops::Bound<K> {
    after.map_or(std::ops::Bound::Unbounded, std::ops::Bound::Excluded)
}

impl Scheduler {
    pub fn query(&self, query: &Query) -> Answer {
        let s = &self.state;
        match query.clone() {
            Query::Tenant(id) => Answer::Tenant(s.tenants.get(&id).cloned().map(Box::new)),
            Query::Tenants { after: a, limit } => Answer::Tenants(
                s.tenants
                    .range((after(a), std::ops::Bound::Unbounded))
                    .take(page(limit))
                    .map(|(_, t)| t.clone())
                    .collect(),
            ),
            Query::Worker(id) => Answer::Worker(s.workers.get(&id).cloned()),
            Query::Workers { pool, after: a, limit } => Answer::Workers(
                s.workers
                    .range((after(a), std::ops::Bound::Unbounded))
                    .map(|(_, w)| w)
                    .filter(|w| pool.as_ref().is_none_or(|p| *p == w.pool))
                    .take(page(limit))
                    .cloned()
                    .collect(),
            ),
            Query::Placement(tenant, id) => {
                Answer::Placement(s.placements.get(&(tenant, id)).cloned().map(Box::new))
            }
            Query::Placements { tenant, after: a, limit } => Answer::Placements(tenant_page(
                &s.placements,
                tenant,
                a,
                PlacementId::new(""),
                limit,
            )),
            Query::Group(tenant, id) => Answer::Group(
                s.groups
                    .get(&(tenant.clone(), id.clone()))
                    .map(|g| (g.clone(), self.ix.group_instances(&tenant, &id))),
            ),
            Query::Lease(tenant, name) => Answer::Lease(s.leases.get(&(tenant, name)).cloned()),
            Query::Leases { tenant, after: a, limit } => {
                Answer::Leases(tenant_page(&s.leases, tenant, a, LeaseName::new(""), limit))
            }
            Query::WorkerPlacements { worker, after: a, limit } => {
                Answer::Placements(indexed(s, self.ix.worker_placements.get(&worker), a, limit))
            }
            Query::PoolPlacements { pool, after: a, limit } => {
                Answer::Placements(indexed(s, self.ix.pool_placements.get(&pool), a, limit))
            }
            Query::Finished { tenant, after: a, limit } => {
                Answer::Finished(tenant_page(&s.finished, tenant, a, PlacementId::new(""), limit))
            }
            Query::TokenOwner(hash) => {
                Answer::TokenOwner(self.ix.tokens.get(&hash).and_then(|(tenant, id)| {
                    let token = self.state.tenants.get(tenant)?.tokens.get(id)?;
                    Some((tenant.clone(), id.clone(), *token))
                }))
            }
            Query::Summary => Answer::Summary(Summary {
                now: s.now,
                workers: super::count_u64(s.workers.len()),
                tenants: super::count_u64(s.tenants.len()),
                placements: super::count_u64(s.placements.len()),
                groups: super::count_u64(s.groups.len()),
                leases: super::count_u64(s.leases.len()),
                sessions: super::count_u64(s.sessions.len()),
            }),
        }
    }
}

/// A page of `tenant`'s entries of a map keyed by (tenant, id), in id order after `a` (from
/// `first`, the least id, without one).
fn tenant_page<K: Ord + Clone, V: Clone>(
    map: &std::collections::BTreeMap<(TenantId, K), V>,
    tenant: TenantId,
    a: Option<K>,
    first: K,
    limit: u32,
) -> Vec<V> {
    let start = match a {
        Some(id) => std::ops::Bound::Excluded((tenant.clone(), id)),
        None => std::ops::Bound::Included((tenant.clone(), first)),
    };
    map.range((start, std::ops::Bound::Unbounded))
        .take_while(|((owner, _), _)| *owner == tenant)
        .take(page(limit))
        .map(|(_, v)| v.clone())
        .collect()
}

/// A page of the placements an index lists, in (tenant, id) order after `a`.
fn indexed(
    s: &super::State,
    index: Option<&std::collections::BTreeMap<(TenantId, PlacementId), u32>>,
    a: Option<(TenantId, PlacementId)>,
    limit: u32,
) -> Vec<Placement> {
    let start = after(a);
    index
        .into_iter()
        .flat_map(|on| on.range((start.clone(), std::ops::Bound::Unbounded)))
        .take(page(limit))
        .filter_map(|(key, _)| s.placements.get(key).cloned())
        .collect()
}
