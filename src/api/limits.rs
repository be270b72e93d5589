//! Per-replica rate limits on a tenant's reads.
//!
//! Writes are limited exactly, in log time, by the core (`scheduler::rates`). Reads never
//! reach the log, so each replica keeps its own bucket per tenant that sets a `token_rate`,
//! at the same rate and burst: a tenant reading through three replicas may read up to three
//! times its rate in all. Like a write, a read takes one from the bucket of its tenant and of
//! each ancestor that sets a rate, all or none, and a refused read is
//! `RESOURCE_EXHAUSTED`/`RATE_LIMITED` with the wait. The limits are those of this replica's
//! applied state; a bucket starts full when its limits are first seen or change.

use std::collections::BTreeMap;
use std::sync::Mutex;
use tokio::time::Instant;

use crate::scheduler::{Bucket, RateLimit, RateLimits, Rejection, TenantId, TENANTS_MAX};

/// A bucket per tenant that sets a `token_rate`, on this replica's monotonic clock.
pub struct ReadLimiter {
    started: Instant,
    buckets: Mutex<BTreeMap<TenantId, (RateLimits, Bucket)>>,
}

impl Default for ReadLimiter {
    fn default() -> Self {
        ReadLimiter { started: Instant::now(), buckets: Mutex::default() }
    }
}

impl ReadLimiter {
    /// Takes one read at `now` from each bucket of `lineage` (the limits `tenant` and its
    /// ancestors set, `Scheduler::rate_lineage`), or refuses with the longest wait.
    pub fn take(&self, lineage: &[(TenantId, RateLimits)], now: Instant) -> Result<(), Rejection> {
        let reads: Vec<_> = lineage
            .iter()
            .filter(|(_, l)| l.token_rate.is_some())
            .map(|(id, l)| (id, RateLimits { daily_quota: None, ..*l }))
            .collect();
        if reads.is_empty() {
            return Ok(());
        }
        let ms = u64::try_from(now.saturating_duration_since(self.started).as_millis())
            .unwrap_or(u64::MAX);
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() >= TENANTS_MAX {
            // Tenants deleted long ago: start again rather than grow.
            buckets.clear();
        }
        let mut refusal: Option<(u64, &TenantId)> = None;
        for (id, limits) in &reads {
            let (seen, bucket) =
                buckets.entry((*id).clone()).or_insert_with(|| (*limits, Bucket::full(limits, ms)));
            if seen != limits {
                *seen = *limits;
                *bucket = Bucket::full(limits, ms);
            }
            let wait = bucket.wait_ms(limits, ms);
            if wait > refusal.map_or(0, |(w, _)| w) {
                refusal = Some((wait, id));
            }
        }
        if let Some((retry_after_ms, id)) = refusal {
            return Err(Rejection::RateLimited {
                limited_by: id.clone(),
                limit: RateLimit::TokenRate,
                retry_after_ms,
            });
        }
        for (id, limits) in &reads {
            if let Some((_, bucket)) = buckets.get_mut(*id) {
                bucket.take(limits, ms);
            }
        }
        Ok(())
    }
}
