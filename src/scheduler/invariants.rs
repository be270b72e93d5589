//! `check_invariants`: DESIGN §4 recomputed from scratch and compared with the live state.
//!
//! It is O(state) and meant for tests, simulation, snapshot install and debug checks, not for
//! every apply in production.

use rust_decimal::Decimal;
use std::collections::BTreeMap;

use super::index::Indexes;
use super::resources::LabelTerm;
use super::{
    Dimension, GroupStrategy, PoolId, Resources, Scheduler, TenantId, Usage, UsageTotals, WorkerId,
};

impl Scheduler {
    /// Every violated invariant, described; `Ok` when all hold.
    pub fn check_invariants(&self) -> Result<(), Vec<String>> {
        let s = &self.state;
        let mut bad = Vec::new();

        // Every tenant's meter runs at what its own placements and reservations hold.
        let mut held: BTreeMap<(&TenantId, (PoolId, bool)), Resources> = BTreeMap::new();
        for p in s.placements.values() {
            let key = (&p.tenant, (p.pool.clone(), p.expires_at.is_some()));
            let total = p.spec.resources.checked_mul(u64::from(p.spec.count));
            let slot = held.entry(key).or_default();
            match total.and_then(|t| slot.checked_add(t)) {
                Some(sum) => *slot = sum,
                None => bad.push(format!("what tenant {} holds overflows", p.tenant)),
            }
        }
        for t in s.tenants.values() {
            let metered: Vec<_> =
                t.meter.rates.iter().map(|(k, r)| ((&t.id, k.clone()), *r)).collect();
            let holds: Vec<_> = held
                .range((&t.id, (PoolId::default(), false))..)
                .take_while(|((id, _), _)| *id == &t.id)
                .map(|((id, k), r)| ((*id, k.clone()), *r))
                .collect();
            if metered != holds {
                bad.push(format!(
                    "tenant {}'s meter runs at {metered:?}, it holds {holds:?}",
                    t.id
                ));
            }
            // A meter deadline already passed would be taken again at once, forever.
            if self.ix.meter_deadlines.get(&t.id).is_some_and(|at| *at <= s.now) {
                bad.push(format!("tenant {}'s meter deadline has passed", t.id));
            }
            // An invoice adds up: its lines' amounts plus its adjustments.
            for (month, i) in &t.invoices.closed {
                let sum =
                    i.lines.iter().map(|l| l.amount).chain(i.adjustments.iter().map(|a| a.amount));
                if i.month != *month || sum.fold(Decimal::ZERO, Decimal::saturating_add) != i.total
                {
                    bad.push(format!("tenant {}'s invoice of month {month} does not add up", t.id));
                }
            }
            // Policy versions: at most the bound, numbered one after another, the last one the
            // policy in effect.
            let versions = &t.policy.versions;
            let numbered = versions.iter().zip(versions.iter().skip(1));
            let valid = |p: &super::Policy| {
                p.quota.validate().is_ok()
                    && p.rate_limits.as_ref().is_none_or(|r| r.validate().is_ok())
                    && p.budget.as_ref().is_none_or(|b| b.validate().is_ok())
            };
            if versions.len() > super::POLICY_VERSIONS_MAX
                || versions.iter().any(|v| !valid(&v.policy))
                || numbered.into_iter().any(|(a, b)| a.version.checked_add(1) != Some(b.version))
                || versions
                    .back()
                    .is_some_and(|v| Some(&v.policy) != self.policy_of(&t.id).as_ref())
            {
                bad.push(format!("tenant {}'s policy versions are out of order or stale", t.id));
            }
            // Rate limits as `SetRateLimits` checks them, a bucket no fuller than its size and
            // no later than log time (a peer's snapshot must not hold a rate of 0 or a day
            // still to come).
            if let Some(rate) = &t.rate {
                let full = super::rates::Bucket::full(&rate.limits, s.now.0).level;
                if rate.limits.validate().is_err()
                    || rate.limits.is_unlimited()
                    || rate.bucket.level > full
                    || rate.bucket.at > s.now.0
                    || rate.day > s.now.0 / super::windows::DAY_MS
                {
                    bad.push(format!("tenant {}'s rate limits or bucket are out of bounds", t.id));
                }
            }
            if t.meter.integrated_at > s.now {
                bad.push(format!("tenant {}'s meter is ahead of log time", t.id));
            }
        }

        // 1 and 5: allocation equals the sum of live instances and never exceeds capacity.
        let mut allocated: BTreeMap<&WorkerId, Resources> = BTreeMap::new();
        for p in s.placements.values() {
            for w in &p.instances {
                let slot = allocated.entry(w).or_default();
                match slot.checked_add(p.spec.resources) {
                    Some(sum) => *slot = sum,
                    None => bad.push(format!("allocation on {w} overflows")),
                }
                if !s.workers.contains_key(w) {
                    bad.push(format!("placement {} on missing worker {w}", p.id()));
                }
            }
            if p.instances.len() != p.spec.count as usize {
                bad.push(format!(
                    "placement {} has {} instances, not {}",
                    p.id(),
                    p.instances.len(),
                    p.spec.count
                ));
            }
            // 6: every object belongs to an existing tenant.
            if !s.tenants.contains_key(&p.tenant) {
                bad.push(format!("placement {} of missing tenant {}", p.id(), p.tenant));
            }
            if p.expires_at.is_some_and(|at| at <= s.now) {
                bad.push(format!("reservation {} outlived its expiry", p.id()));
            }
            // Lifecycle: one slot per instance, assigned no earlier than the placement; never
            // every slot completed (it would have been released); a time limit ahead, exact.
            let completed = p.slots.iter().filter(|s| s.completed_at.is_some()).count();
            if p.slots.len() != p.instances.len()
                || p.slots.iter().any(|s| s.assigned_at < p.log_index)
                || (completed > 0 && completed == p.slots.len())
            {
                bad.push(format!("placement {} slots {:?} inconsistent", p.id(), p.slots));
            }
            let limit = p.spec.max_runtime_ms.map(|ms| p.placed_at.plus_ms(ms));
            if p.time_limit_at != limit || p.time_limit_at.is_some_and(|at| at <= s.now) {
                bad.push(format!("placement {} time limit {:?} wrong or passed", p.id(), limit));
            }
        }
        for w in s.workers.values() {
            let expected = allocated.get(&w.id).copied().unwrap_or_default();
            if w.allocated != expected {
                bad.push(format!(
                    "worker {} allocated {:?}, instances sum {:?}",
                    w.id, w.allocated, expected
                ));
            }
            if !w.allocated.fits_in(w.capacity) {
                bad.push(format!(
                    "worker {} overcommitted: {:?} of {:?}",
                    w.id, w.allocated, w.capacity
                ));
            }
        }

        // 4: a down worker holds nothing and is managed; a pool's schedulable capacity (and
        // free capacity) counts exactly its workers that accept work (neither drained nor down).
        let mut accepting: BTreeMap<&super::PoolId, (Resources, Resources)> = BTreeMap::new();
        for w in s.workers.values() {
            if w.is_down() {
                if !w.allocated.is_zero() || self.ix.worker_placements.contains_key(&w.id) {
                    bad.push(format!("down worker {} still holds work", w.id));
                }
                if w.liveness.is_none() {
                    bad.push(format!("worker {} is down but was never managed", w.id));
                }
            }
            if let Some(l) = w.liveness {
                if !(super::WORKER_TTL_MIN_MS..=super::WORKER_TTL_MAX_MS).contains(&l.ttl_ms)
                    || l.last_heartbeat > s.now
                    || l.alive_until < l.last_heartbeat
                {
                    bad.push(format!("worker {} liveness {l:?} out of bounds at {}", w.id, s.now));
                }
            }
            if w.history.len() > super::WORKER_HISTORY_MAX
                || w.history.windows(2).any(|h| h[0].index > h[1].index || h[0].at > h[1].at)
                || w.history.last().is_some_and(|h| h.at > s.now)
            {
                bad.push(format!("worker {} history out of order or bounds", w.id));
            }
            if w.accepts_work() {
                let slot = accepting.entry(&w.pool).or_default();
                let free = w.capacity.checked_sub(w.allocated).unwrap_or_default();
                match (slot.0.checked_add(w.capacity), slot.1.checked_add(free)) {
                    (Some(c), Some(f)) => *slot = (c, f),
                    _ => bad.push(format!("pool {} capacity overflows", w.pool)),
                }
            }
        }
        for pool in self.ix.pool_workers.keys() {
            let (capacity, free) = accepting.get(pool).copied().unwrap_or_default();
            if self.ix.pool_capacity(pool) != capacity || self.ix.pool_free(pool) != free {
                bad.push(format!(
                    "pool {pool} capacity/free {:?}/{:?}, its ready, undrained workers' {:?}/{:?}",
                    self.ix.pool_capacity(pool),
                    self.ix.pool_free(pool),
                    capacity,
                    free
                ));
            }
        }
        if s.pool_worker_ttls.len() > super::POOL_WORKER_TTLS_MAX
            || s.pool_worker_ttls
                .values()
                .any(|t| !(super::WORKER_TTL_MIN_MS..=super::WORKER_TTL_MAX_MS).contains(t))
        {
            bad.push(format!("pool worker TTLs out of bounds: {:?}", s.pool_worker_ttls));
        }

        // Finished records: bounded, of existing tenants, filed under their own key.
        let mut per_tenant: BTreeMap<&TenantId, usize> = BTreeMap::new();
        for ((tenant, id), f) in &s.finished {
            *per_tenant.entry(tenant).or_default() += 1;
            if f.tenant != *tenant || f.placement != *id || !s.tenants.contains_key(tenant) {
                bad.push(format!("finished {id} of {tenant} misfiled or of a missing tenant"));
            }
        }
        if s.finished.len() > super::FINISHED_MAX
            || per_tenant.values().any(|n| *n > super::FINISHED_PER_TENANT_MAX)
        {
            bad.push(format!("{} finished records exceed a bound", s.finished.len()));
        }

        // 2 and 6: usage is the subtree's placements, within every hard limit.
        let mut usage: BTreeMap<&TenantId, UsageTotals> = BTreeMap::new();
        for p in s.placements.values() {
            let job = Usage::of_job(p.spec.resources, p.spec.count).unwrap_or_default();
            for ancestor in self.lineage(&p.tenant) {
                if let Some(t) = s.tenants.get(&ancestor) {
                    usage.entry(&t.id).or_default().add(&p.pool, job);
                }
            }
        }
        for t in s.tenants.values() {
            let expected = usage.remove(&t.id).unwrap_or_default();
            if t.usage != expected {
                bad.push(format!(
                    "tenant {} usage {:?}, placements sum {:?}",
                    t.id, t.usage, expected
                ));
            }
            if self.lineage(&t.id).len() > usize::try_from(super::TENANT_DEPTH_MAX).unwrap_or(0) {
                bad.push(format!("tenant {} is nested deeper than allowed, or in a cycle", t.id));
            }
            // 2: hard limits (inherited where unset) are never exceeded, nor burst ceilings;
            // usage is above soft exactly while a burst is recorded, and a running grace
            // period ends in the future.
            let e = self.effective_quota(&t.id);
            let scopes = std::iter::once(("total".to_owned(), t.usage.total, &e.total))
                .chain(e.pools.iter().map(|(p, l)| (format!("pool {p}"), t.usage.pool(p), l)));
            for (scope, used, limits) in scopes {
                for d in Dimension::ALL {
                    if limits.get(d).is_some_and(|l| used.get(d) > l) {
                        bad.push(format!("tenant {} over its {} limit in {scope}", t.id, d.name()));
                    }
                }
            }
            // Borrowing never goes beyond a borrowing limit.
            for (pool, g) in &t.quota.guarantees {
                let Some(b) = g.borrowing_limit.and_then(|b| b.checked_add(g.nominal)) else {
                    continue;
                };
                let used = t.usage.pool(pool);
                if used.cpu_millis > b.cpu_millis || used.memory_mib > b.memory_mib {
                    bad.push(format!(
                        "tenant {} borrows beyond its limit in pool {pool}: {used:?} > {b:?}",
                        t.id
                    ));
                }
            }
            // (A share-of-pool ceiling moves with the pool: it binds admission, and a pool that
            // shrinks may leave running work above it, as a drained worker leaves its work.)
            for d in Dimension::ALL.into_iter().filter(|_| !e.soft_shared) {
                if e.soft.get(d).is_some_and(|l| t.usage.total.get(d) > l.burst) {
                    bad.push(format!("tenant {} over its {} burst ceiling", t.id, d.name()));
                }
            }
            if e.soft.exceeded_by(&t.usage.total) != t.burst.is_some() {
                bad.push(format!(
                    "tenant {} burst state {:?} disagrees with usage {:?} against soft {:?}",
                    t.id, t.burst, t.usage.total, e.soft
                ));
            }
            let w = &t.windows;
            let window_days = (
                super::windows::day_of(w.integrated_at),
                super::windows::month_of(w.integrated_at),
            );
            if w.integrated_at > s.now || (w.day, w.month) != window_days {
                bad.push(format!(
                    "tenant {} window counters {:?} inconsistent at {}",
                    t.id, w, s.now
                ));
            }
            if t.burst.is_some_and(|b| !b.expired && b.grace_ends_at <= s.now) {
                bad.push(format!("tenant {} grace period outlived its end", t.id));
            }
            if let Some(parent) = &t.parent {
                if !s.tenants.get(parent).is_some_and(|p| p.children.contains(&t.id)) {
                    bad.push(format!("tenant {} not listed by its parent {parent}", t.id));
                }
            }
            for child in &t.children {
                if s.tenants.get(child).and_then(|c| c.parent.as_ref()) != Some(&t.id) {
                    bad.push(format!("tenant {} lists {child} which is not its child", t.id));
                }
            }
        }

        // 3: groups within max; spread groups one per worker; hard anti-affinity both ways.
        for ((tenant, id), g) in &s.groups {
            let n = self.ix.group_instances(tenant, id);
            if n > u64::from(g.max_instances) {
                bad.push(format!("group {id} of {tenant} holds {n} > {}", g.max_instances));
            }
            if g.strategy == GroupStrategy::Spread {
                if let Some(m) = self.ix.group_workers.get(&(tenant.clone(), id.clone())) {
                    if m.values().any(|n| *n > 1) {
                        bad.push(format!("spread group {id} of {tenant} doubles up on a worker"));
                    }
                }
            }
            if !s.tenants.contains_key(tenant) {
                bad.push(format!("group {id} of missing tenant {tenant}"));
            }
        }
        for p in s.placements.values() {
            if let Some(g) = &p.spec.group {
                if !s.groups.contains_key(&(p.tenant.clone(), g.clone())) {
                    bad.push(format!("placement {} in missing group {g}", p.id()));
                }
            }
            for term in &p.spec.anti_affinity {
                let own = p.spec.labels.get(&term.key) == Some(&term.value);
                for w in &p.instances {
                    let carrying = self
                        .ix
                        .workers_with(&p.tenant, &LabelTerm::clone(term))
                        .and_then(|m| m.get(w))
                        .copied()
                        .unwrap_or(0);
                    // The placement's own single instance may carry the label it repels.
                    if carrying > u32::from(own) {
                        bad.push(format!(
                            "anti-affinity of {} to {}={} broken on {w}",
                            p.id(),
                            term.key,
                            term.value
                        ));
                    }
                }
            }
        }

        // 7: one holder per lease (by construction), all live, tenant exists.
        for l in s.leases.values() {
            if l.expires_at <= s.now {
                bad.push(format!("lease {} outlived its expiry", l.name));
            }
            if !s.tenants.contains_key(&l.tenant) {
                bad.push(format!("lease {} of missing tenant {}", l.name, l.tenant));
            }
        }

        // Queue consistency: every queued entry belongs to an existing tenant under its own id,
        // is not also placed, was queued in the past, and the queue is bounded.
        for ((tenant, id), q) in &s.queue {
            if q.tenant != *tenant || q.spec.placement != *id {
                bad.push(format!("queued {id} of {tenant} filed under the wrong key"));
            }
            if !s.tenants.contains_key(tenant) {
                bad.push(format!("queued {id} of missing tenant {tenant}"));
            }
            if s.placements.contains_key(&(tenant.clone(), id.clone())) {
                bad.push(format!("{id} of {tenant} is both queued and placed"));
            }
            if q.queued_at > s.now || q.head_since.is_some_and(|h| h < q.queued_at || h > s.now) {
                bad.push(format!("queued {id} of {tenant} in the future or head before queued"));
            }
            let head = self
                .ix
                .queue
                .get(&q.pool)
                .and_then(|e| {
                    e.range((tenant.clone(), super::LogIndex(0), super::PlacementId::new(""))..)
                        .next()
                })
                .is_some_and(|((owner, at, first), _)| {
                    owner == tenant && *at == q.log_index && first == id
                });
            if head != q.head_since.is_some() {
                bad.push(format!(
                    "queued {id} of {tenant}: head {head}, head_since {:?}",
                    q.head_since
                ));
            }
        }
        if s.queue.len() > super::QUEUE_MAX {
            bad.push(format!("{} queued exceed the bound {}", s.queue.len(), super::QUEUE_MAX));
        }

        // Pool reserves name valid pools and are bounded.
        for pool in s.pool_reserves.keys() {
            if super::ids::validate_object_id("pool", pool.as_str()).is_err() {
                bad.push(format!("reserve of invalid pool {pool:?}"));
            }
        }
        if s.pool_reserves.len() > super::POOL_RESERVES_MAX {
            bad.push(format!("{} pool reserves exceed the bound", s.pool_reserves.len()));
        }

        // 8: the session table is bounded, and its lookup and its order agree.
        if !s.sessions.consistent() {
            bad.push("the session table's lookup and order disagree".to_owned());
        }
        if super::count_u64(s.sessions.len()) > s.config.sessions_max {
            bad.push(format!(
                "{} sessions exceed the bound {}",
                s.sessions.len(),
                s.config.sessions_max
            ));
        }

        // Derived indexes match a fresh build.
        if Indexes::build(s) != self.ix {
            bad.push("indexes differ from a rebuild of the state".to_owned());
        }

        if bad.is_empty() {
            Ok(())
        } else {
            Err(bad)
        }
    }
}
