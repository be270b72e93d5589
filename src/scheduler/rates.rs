//! Per-tenant rate limits on writes, in log time: a token bucket and a daily count.
//!
//! A tenant's `RateLimits` bound the writes made with its tokens (every command a tenant
//! token proposes; the admin's and the leader's own commands are never limited):
//! `token_rate` writes per second sustained, up to `burst_rate` at once, and at most
//! `daily_quota` per UTC day of log time. Limits are hierarchical: a write takes one from the
//! bucket and day of its tenant and of every ancestor that sets limits, all of them or none,
//! in the same apply, so a parent's limits cap its children together and the limit holds
//! cluster-wide, whichever replica took the request.
//!
//! Every write that reaches `apply` counts, accepted or refused for another reason (a rate
//! limit bounds requests, which cost the log either way), except the commands that only give
//! something back (`Command::only_frees`: Release, CancelReservation, CancelQueued,
//! ReleaseLease), which are neither counted nor refused: a limit must never make a tenant
//! keep capacity, or pay for it, because it may not free it. Lease keep-alives count.
//!
//! A bucket counts thousandths of a write and refills lazily from the entry time:
//! `level + elapsed_ms × token_rate`, capped at `burst_rate × 1000`. That is exact integer
//! arithmetic (a rate of r per second is r thousandths per millisecond), so it never drifts.
//!
//! A refused write changes nothing and is not remembered for its request id: the same request
//! id retried after `retry_after_ms` is judged again. A request id already applied is answered
//! from its session first and takes nothing.
//!
//! Reads are not in the log; the API keeps the same kind of bucket per replica for a tenant's
//! reads (`Bucket`, with the replica's monotonic clock), with the same `token_rate` and
//! `burst_rate` (`api::limits`).

use serde::{Deserialize, Serialize};

use super::command::{Rejection, Response};
use super::ids::{TenantId, UnixMillis};
use super::windows::DAY_MS;
use super::Scheduler;

/// Largest `token_rate` (writes per second).
pub const TOKEN_RATE_MAX: u32 = 1_000_000;
/// Largest `burst_rate` (writes at once).
pub const BURST_RATE_MAX: u32 = 1_000_000;
/// Largest `daily_quota` (writes per UTC day).
pub const DAILY_QUOTA_MAX: u64 = 1_000_000_000_000;
/// Thousandths of a write: what one write takes from a bucket.
const WRITE: u64 = 1_000;

/// What a tenant's tokens may write; `None` is unlimited.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimits {
    /// Writes per second, sustained (1..=`TOKEN_RATE_MAX`).
    pub token_rate: Option<u32>,
    /// Most writes at once, the bucket's size (1..=`BURST_RATE_MAX`; only with `token_rate`,
    /// which it defaults to).
    pub burst_rate: Option<u32>,
    /// Most writes per UTC day of log time (1..=`DAILY_QUOTA_MAX`).
    pub daily_quota: Option<u64>,
}

impl RateLimits {
    /// Checks each bound (state-free).
    pub fn validate(&self) -> Result<(), Rejection> {
        let bad = |field: &str, max: u64| {
            Err(Rejection::invalid(field, format!("must be 1..={max} when set")))
        };
        if self.token_rate.is_some_and(|r| !(1..=TOKEN_RATE_MAX).contains(&r)) {
            return bad("token_rate", u64::from(TOKEN_RATE_MAX));
        }
        if self.burst_rate.is_some_and(|b| !(1..=BURST_RATE_MAX).contains(&b)) {
            return bad("burst_rate", u64::from(BURST_RATE_MAX));
        }
        if self.burst_rate.is_some() && self.token_rate.is_none() {
            return Err(Rejection::invalid("burst_rate", "needs a token_rate"));
        }
        if self.daily_quota.is_some_and(|q| !(1..=DAILY_QUOTA_MAX).contains(&q)) {
            return bad("daily_quota", DAILY_QUOTA_MAX);
        }
        Ok(())
    }

    pub fn is_unlimited(&self) -> bool {
        self.token_rate.is_none() && self.daily_quota.is_none()
    }

    /// The bucket's size in thousandths of a write, and its refill per ms (`None`: no bucket).
    fn bucket(&self) -> Option<(u64, u64)> {
        let rate = self.token_rate?;
        let burst = self.burst_rate.unwrap_or(rate);
        Some((u64::from(burst).saturating_mul(WRITE), u64::from(rate.max(1))))
    }
}

/// A token bucket: `level` thousandths of a write at `at` (ms on some clock that does not run
/// backwards: log time in the core, a replica's monotonic clock in the API).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bucket {
    pub level: u64,
    pub at: u64,
}

impl Bucket {
    /// A full bucket at `at`.
    pub fn full(limits: &RateLimits, at: u64) -> Bucket {
        Bucket { level: limits.bucket().map_or(0, |(size, _)| size), at }
    }

    /// Thousandths of a write in the bucket at `now` (a time before `at` counts as `at`).
    pub fn level_at(&self, limits: &RateLimits, now: u64) -> u64 {
        match limits.bucket() {
            Some((size, per_ms)) => {
                let refill = now.saturating_sub(self.at).saturating_mul(per_ms);
                self.level.saturating_add(refill).min(size)
            }
            None => 0,
        }
    }

    /// Whole writes the bucket allows at `now` (`None`: no bucket).
    pub fn available(&self, limits: &RateLimits, now: u64) -> Option<u64> {
        limits.bucket().map(|_| self.level_at(limits, now) / WRITE)
    }

    /// Ms from `now` until the bucket holds one write (0: it does now, or there is no bucket).
    pub fn wait_ms(&self, limits: &RateLimits, now: u64) -> u64 {
        let Some((_, per_ms)) = limits.bucket() else { return 0 };
        WRITE.saturating_sub(self.level_at(limits, now)).div_ceil(per_ms)
    }

    /// Takes one write at `now`; call only when `wait_ms` is 0.
    pub fn take(&mut self, limits: &RateLimits, now: u64) {
        self.level = self.level_at(limits, now).saturating_sub(WRITE);
        self.at = self.at.max(now);
    }
}

/// A tenant's rate limits and what its subtree has written under them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateState {
    pub limits: RateLimits,
    /// In log time.
    pub bucket: Bucket,
    /// The UTC day (days since 1970) `today` counts.
    pub day: u64,
    /// Writes the subtree sent on `day` (accepted, or refused other than by a rate limit),
    /// since the limits were first set.
    pub today: u64,
}

impl RateState {
    /// Writes counted today at log time `now`.
    pub fn today_at(&self, now: UnixMillis) -> u64 {
        if self.day == now.0 / DAY_MS {
            self.today
        } else {
            0
        }
    }

    /// Ms from `now` until this tenant allows a write, and which limit holds it back.
    fn wait_ms(&self, now: UnixMillis) -> (u64, RateLimit) {
        let bucket = self.bucket.wait_ms(&self.limits, now.0);
        let daily = match self.limits.daily_quota {
            Some(quota) if self.today_at(now) >= quota => {
                (now.0 / DAY_MS + 1).saturating_mul(DAY_MS).saturating_sub(now.0)
            }
            _ => 0,
        };
        if daily > bucket {
            (daily, RateLimit::DailyQuota)
        } else {
            (bucket, RateLimit::TokenRate)
        }
    }
}

/// Which rate limit refused a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RateLimit {
    TokenRate,
    DailyQuota,
}

impl RateLimit {
    pub fn name(self) -> &'static str {
        match self {
            RateLimit::TokenRate => "token_rate",
            RateLimit::DailyQuota => "daily_quota",
        }
    }
}

impl Scheduler {
    /// `SetRateLimits`: from this entry, with a full bucket; today's count is kept.
    pub(super) fn set_rate_limits(
        &mut self,
        tenant: &TenantId,
        limits: Option<RateLimits>,
    ) -> Result<Response, Rejection> {
        let now = self.state.now;
        let t = self.tenant_mut(tenant)?;
        let today = t.rate.as_ref().map_or(0, |r| r.today_at(now));
        t.rate = limits.filter(|l| !l.is_unlimited()).map(|limits| {
            Box::new(RateState {
                bucket: Bucket::full(&limits, now.0),
                limits,
                day: now.0 / DAY_MS,
                today,
            })
        });
        Ok(Response::RateLimitsSet)
    }

    /// The rate limits `tenant` and each ancestor set, nearest first.
    pub fn rate_lineage(&self, tenant: &TenantId) -> Vec<(TenantId, RateLimits)> {
        self.lineage(tenant)
            .into_iter()
            .filter_map(|id| {
                let limits = self.state.tenants.get(&id)?.rate.as_ref()?.limits;
                Some((id, limits))
            })
            .collect()
    }

    /// Takes one write at log time from `tenant` and every ancestor with rate limits, or, if
    /// any of them allows none now, refuses with the longest wait and takes nothing.
    pub(super) fn take_write(&mut self, tenant: &TenantId) -> Result<(), Rejection> {
        let now = self.state.now;
        let lineage = self.lineage(tenant);
        let mut refusal: Option<(u64, RateLimit, &TenantId)> = None;
        for id in &lineage {
            let Some(rate) = self.state.tenants.get(id).and_then(|t| t.rate.as_ref()) else {
                continue;
            };
            let (wait, limit) = rate.wait_ms(now);
            if wait > refusal.map_or(0, |(w, _, _)| w) {
                refusal = Some((wait, limit, id));
            }
        }
        if let Some((retry_after_ms, limit, limited_by)) = refusal {
            return Err(Rejection::RateLimited {
                limited_by: limited_by.clone(),
                limit,
                retry_after_ms,
            });
        }
        for id in &lineage {
            if let Some(rate) = self.state.tenants.get_mut(id).and_then(|t| t.rate.as_mut()) {
                rate.bucket.take(&rate.limits, now.0);
                rate.today = rate.today_at(now).saturating_add(1);
                rate.day = now.0 / DAY_MS;
            }
        }
        Ok(())
    }
}
