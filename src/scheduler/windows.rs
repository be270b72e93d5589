//! Time-window quotas: jobs per UTC day and cpu time per UTC calendar month, in log time.
//!
//! Every tenant keeps counters for its subtree: jobs placed today and cpu time used this month,
//! integrated exactly in integer `cpu_millis × ms` (usage is piecewise constant: before any
//! change of usage the elapsed time at the old usage is added, so no rounding ever happens).
//! Counters roll lazily: the first look after a boundary discards the old window and counts
//! only from the boundary, so a window resets exactly at 00:00:00.000 UTC of the day or month.
//!
//! A tenant's window limits are checked for it and every ancestor that sets them, in the same
//! apply as the placement. A spent window refuses new work (`QUOTA_EXCEEDED`, `limit_kind`
//! `window`, with the reset time) or, for `PlaceOrQueue` under `WindowPolicy::Queue`, lets it
//! wait; the leader ticks at each day boundary while something waits, so it is admitted then.
//! Work already running is never stopped: the month's cpu time can pass the budget by what was
//! running when it was spent.

use serde::{Deserialize, Serialize};

use super::ids::{TenantId, UnixMillis};
use super::Scheduler;

pub const DAY_MS: u64 = 86_400_000;

/// What a tenant's subtree may use per window; `None` is unlimited.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowLimits {
    /// Placements (a `Place` of any count is one job) per UTC day.
    pub jobs_per_day: Option<u64>,
    /// Cpu time per UTC calendar month, in cpu_millis × ms (one cpu-hour is 3.6 × 10⁹).
    pub cpu_milli_ms_per_month: Option<u64>,
    /// What `PlaceOrQueue` does when a window is spent.
    pub when_exhausted: WindowPolicy,
}

impl WindowLimits {
    pub fn is_unlimited(&self) -> bool {
        self.jobs_per_day.is_none() && self.cpu_milli_ms_per_month.is_none()
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum WindowPolicy {
    /// Wait in the queue until the window resets.
    #[default]
    Queue,
    /// Refuse with `QUOTA_EXCEEDED` and the reset time.
    Refuse,
}

/// Which window a refusal is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Window {
    JobsPerDay,
    CpuMilliMsPerMonth,
}

impl Window {
    pub fn name(self) -> &'static str {
        match self {
            Window::JobsPerDay => "jobs_per_day",
            Window::CpuMilliMsPerMonth => "cpu_milli_ms_per_month",
        }
    }
}

/// A subtree's window counters, as of `integrated_at`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowCounters {
    /// Days since the epoch (UTC) that `jobs` counts.
    pub day: u64,
    pub jobs: u64,
    /// Months since January 1970 that `cpu_milli_ms` counts.
    pub month: u64,
    pub cpu_milli_ms: u128,
    pub integrated_at: UnixMillis,
}

/// Counters brought to a moment, with when each window resets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowUsage {
    pub jobs_today: u64,
    pub day_resets_at: UnixMillis,
    pub cpu_milli_ms_this_month: u128,
    pub month_resets_at: UnixMillis,
}

/// Days since 1970-01-01 to (year, month 1..=12), proleptic Gregorian (H. Hinnant).
fn civil_from_days(days: u64) -> (u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month)
}

/// The first day of (year, month) as days since 1970-01-01 (year ≥ 1970).
fn days_from_civil(year: u64, month: u64) -> u64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y / 400;
    let yoe = y % 400;
    let mp = if month > 2 { month - 3 } else { month + 9 };
    let doy = (153 * mp + 2) / 5;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

pub fn day_of(at: UnixMillis) -> u64 {
    at.0 / DAY_MS
}

/// Months since January 1970.
pub fn month_of(at: UnixMillis) -> u64 {
    let (year, month) = civil_from_days(day_of(at));
    (year - 1970) * 12 + (month - 1)
}

pub fn month_start(month: u64) -> UnixMillis {
    // Saturating: a window that would end past the end of time never resets.
    UnixMillis(days_from_civil(1970 + month / 12, month % 12 + 1).saturating_mul(DAY_MS))
}

impl WindowCounters {
    pub fn new(now: UnixMillis) -> Self {
        WindowCounters {
            day: day_of(now),
            jobs: 0,
            month: month_of(now),
            cpu_milli_ms: 0,
            integrated_at: now,
        }
    }

    /// The counters at `now`, the subtree having run `cpu_millis` since `integrated_at`.
    pub fn at(self, now: UnixMillis, cpu_millis: u64) -> WindowCounters {
        let mut c = self;
        if day_of(now) != c.day {
            c.day = day_of(now);
            c.jobs = 0;
        }
        let month = month_of(now);
        if month != c.month {
            c.month = month;
            c.cpu_milli_ms = 0;
            c.integrated_at = c.integrated_at.max(month_start(month));
        }
        let elapsed = now.0.saturating_sub(c.integrated_at.0);
        c.cpu_milli_ms =
            c.cpu_milli_ms.saturating_add(u128::from(cpu_millis) * u128::from(elapsed));
        c.integrated_at = c.integrated_at.max(now);
        c
    }

    pub fn usage(&self) -> WindowUsage {
        WindowUsage {
            jobs_today: self.jobs,
            day_resets_at: UnixMillis((self.day + 1).saturating_mul(DAY_MS)),
            cpu_milli_ms_this_month: self.cpu_milli_ms,
            month_resets_at: month_start(self.month + 1),
        }
    }
}

impl Scheduler {
    /// A tenant's window counters as of now (without changing anything).
    pub fn window_usage(&self, tenant: &TenantId) -> Option<WindowUsage> {
        let t = self.state.tenants.get(tenant)?;
        Some(t.windows.at(self.state.now, t.usage.total.cpu_millis).usage())
    }

    /// Brings the counters of `tenants` to now; call before their usage changes.
    pub(super) fn roll_windows(&mut self, tenants: &[TenantId]) {
        let now = self.state.now;
        for id in tenants {
            let t = self.state.tenants.get_mut(id).expect("invariant: rolled tenant exists");
            t.windows = t.windows.at(now, t.usage.total.cpu_millis);
        }
    }

    /// The next UTC day boundary, while a queued placement may be waiting for a window.
    pub(super) fn window_deadline(&self) -> Option<UnixMillis> {
        if self.ix.window_limited == 0 || self.state.queue.is_empty() {
            return None;
        }
        Some(UnixMillis((day_of(self.state.now) + 1).saturating_mul(DAY_MS)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Calendar months are exact in UTC, leap years included.
    #[test]
    fn calendar_months_in_utc() {
        let ms = |days: u64| UnixMillis(days * DAY_MS);
        assert_eq!(month_of(ms(0)), 0);
        assert_eq!(month_start(1), ms(31));
        // 2024-02-29 is in February 2024; 2024-03-01 starts March.
        let feb_2024 = (2024 - 1970) * 12 + 1;
        assert_eq!(month_start(feb_2024 + 1).0 - month_start(feb_2024).0, 29 * DAY_MS);
        assert_eq!(month_of(UnixMillis(month_start(feb_2024 + 1).0 - 1)), feb_2024);
        assert_eq!(month_of(month_start(feb_2024 + 1)), feb_2024 + 1);
        // 2023-11-14T22:13:20Z (1.7e12 ms) is in November 2023.
        assert_eq!(month_of(UnixMillis(1_700_000_000_000)), (2023 - 1970) * 12 + 10);
        for m in 0..1_200 {
            assert_eq!(month_of(month_start(m)), m);
            assert_eq!(month_of(UnixMillis(month_start(m + 1).0 - 1)), m);
        }
    }
}
