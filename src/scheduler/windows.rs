//! Time-window quotas: jobs per UTC day and per week, cpu time per week and per UTC calendar
//! month, in log time. A week starts on Monday at 00:00 UTC (ISO 8601).
//!
//! Every tenant keeps counters for its subtree: jobs placed today and this week, cpu time used
//! this week and this month,
//! integrated exactly in integer `cpu_millis × ms` (usage is piecewise constant: before any
//! change of usage the elapsed time at the old usage is added, so no rounding ever happens).
//! Counters roll lazily: the first look after a boundary discards the old window and counts
//! only from the boundary, so a window resets exactly at 00:00:00.000 UTC of the day, Monday or
//! month.
//!
//! A tenant's window limits are checked for it and every ancestor that sets them, in the same
//! apply as the placement. A spent window refuses new work (`QUOTA_EXCEEDED`, `limit_kind`
//! `window`, with the reset time) or, for `PlaceOrQueue` under `WindowPolicy::Queue`, lets it
//! wait; the leader ticks at each day boundary while something waits, so it is admitted then.
//! Work already running is never stopped: the month's cpu time can pass the budget by what was
//! running when it was spent.

use serde::{Deserialize, Serialize};

use super::ids::{TenantId, UnixMillis};
use super::state::Tenant;
use super::Scheduler;

pub const DAY_MS: u64 = 86_400_000;
/// An hour in ms.
pub const HOUR_MS: u64 = 3_600_000;

/// What a tenant's subtree may use per window; `None` is unlimited.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowLimits {
    /// Placements (a `Place` of any count is one job) per UTC day.
    pub jobs_per_day: Option<u64>,
    /// Cpu time per UTC calendar month, in cpu_millis × ms (one cpu-hour is 3.6 × 10⁹).
    pub cpu_milli_ms_per_month: Option<u64>,
    /// Placements per week (Monday 00:00 UTC to the next).
    pub jobs_per_week: Option<u64>,
    /// Cpu time per week, in cpu_millis × ms.
    pub cpu_milli_ms_per_week: Option<u64>,
    /// What `PlaceOrQueue` does when a window is spent.
    pub when_exhausted: WindowPolicy,
}

impl WindowLimits {
    pub fn is_unlimited(&self) -> bool {
        self.jobs_per_day.is_none()
            && self.cpu_milli_ms_per_month.is_none()
            && self.jobs_per_week.is_none()
            && self.cpu_milli_ms_per_week.is_none()
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
    JobsPerWeek,
    CpuMilliMsPerWeek,
}

impl Window {
    pub fn name(self) -> &'static str {
        match self {
            Window::JobsPerDay => "jobs_per_day",
            Window::CpuMilliMsPerMonth => "cpu_milli_ms_per_month",
            Window::JobsPerWeek => "jobs_per_week",
            Window::CpuMilliMsPerWeek => "cpu_milli_ms_per_week",
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
    /// Weeks since the one holding 1970-01-01 (`week_of`) that `jobs_week` and `cpu_week`
    /// count.
    pub week: u64,
    pub jobs_week: u64,
    pub cpu_week: u128,
    pub integrated_at: UnixMillis,
}

/// Counters brought to a moment, with when each window resets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowUsage {
    pub jobs_today: u64,
    pub day_resets_at: UnixMillis,
    pub cpu_milli_ms_this_month: u128,
    pub month_resets_at: UnixMillis,
    pub jobs_this_week: u64,
    pub cpu_milli_ms_this_week: u128,
    pub week_resets_at: UnixMillis,
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

/// Weeks (Monday 00:00 UTC to the next) since the one holding 1970-01-01, a Thursday.
pub fn week_of(at: UnixMillis) -> u64 {
    (day_of(at) + 3) / 7
}

/// When week `week` starts (week 0 started before 1970: its start is the epoch).
pub fn week_start(week: u64) -> UnixMillis {
    UnixMillis((week * 7).saturating_sub(3).saturating_mul(DAY_MS))
}

/// Months since January 1970.
pub fn month_of(at: UnixMillis) -> u64 {
    let (year, month) = civil_from_days(day_of(at));
    (year - 1970) * 12 + (month - 1)
}

/// `at` as an RFC 3339 UTC time to the millisecond, e.g. "2026-12-03T12:18:06.000Z".
pub fn utc_label(at: UnixMillis) -> String {
    let days = day_of(at);
    let (year, month) = civil_from_days(days);
    let day = days - days_from_civil(year, month) + 1;
    let ms = at.0 % DAY_MS;
    let (h, m, s, milli) = (ms / 3_600_000, ms / 60_000 % 60, ms / 1_000 % 60, ms % 1_000);
    format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{milli:03}Z")
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
            week: week_of(now),
            jobs_week: 0,
            cpu_week: 0,
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
        // Each window counts cpu time from its own start: a new week or month drops what
        // ran before it.
        let mut month_from = c.integrated_at;
        let month = month_of(now);
        if month != c.month {
            c.month = month;
            c.cpu_milli_ms = 0;
            month_from = month_from.max(month_start(month));
        }
        let mut week_from = c.integrated_at;
        let week = week_of(now);
        if week != c.week {
            c.week = week;
            c.jobs_week = 0;
            c.cpu_week = 0;
            week_from = week_from.max(week_start(week));
        }
        let ran =
            |from: UnixMillis| u128::from(cpu_millis) * u128::from(now.0.saturating_sub(from.0));
        c.cpu_milli_ms = c.cpu_milli_ms.saturating_add(ran(month_from));
        c.cpu_week = c.cpu_week.saturating_add(ran(week_from));
        c.integrated_at = c.integrated_at.max(now);
        c
    }

    pub fn usage(&self) -> WindowUsage {
        WindowUsage {
            jobs_today: self.jobs,
            day_resets_at: UnixMillis((self.day + 1).saturating_mul(DAY_MS)),
            cpu_milli_ms_this_month: self.cpu_milli_ms,
            month_resets_at: month_start(self.month + 1),
            jobs_this_week: self.jobs_week,
            cpu_milli_ms_this_week: self.cpu_week,
            week_resets_at: week_start(self.week + 1),
        }
    }
}

/// Whether `t`'s own limits may refuse work until a day, week or month starts: window limits,
/// or a budget with a hard stop or a daily limit. While such a tenant exists and something is
/// queued, the leader ticks at each UTC midnight (`window_deadline`).
pub fn limited_in_time(t: &Tenant) -> bool {
    let budget =
        t.budget.as_ref().is_some_and(|b| b.budget.hard_stop || b.budget.per_day.is_some());
    !t.quota.windows.is_unlimited() || budget
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

    /// The next UTC day boundary, while a queued placement may be waiting for a window or a
    /// budget.
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
