//! The wall clock the leader stamps into entries, injected so tests and the simulation can
//! substitute their own (with an offset to model skew). Only the shell reads it; the core
//! sees time only through entries. [`ClockSync`] bounds how far ahead of its peers' clocks a
//! leader may stamp.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

use crate::scheduler::UnixMillis;

pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> UnixMillis;
}

/// The system clock plus an adjustable offset (a test-only skew; zero in production).
#[derive(Clone, Debug, Default)]
pub struct SystemClock {
    offset_ms: Arc<AtomicI64>,
}

impl SystemClock {
    pub fn set_offset_ms(&self, offset_ms: i64) {
        self.offset_ms.store(offset_ms, Ordering::Relaxed);
    }
}

impl Clock for SystemClock {
    fn now(&self) -> UnixMillis {
        let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
        let ms = i64::try_from(since_epoch.as_millis()).unwrap_or(i64::MAX);
        let skewed = ms.saturating_add(self.offset_ms.load(Ordering::Relaxed));
        UnixMillis(u64::try_from(skewed).unwrap_or(0))
    }
}

/// The most a leader stamps an entry ahead of the voters' clocks (their bound, `ClockSync`).
/// A leader whose own clock runs further ahead stamps that bound instead (and warns), so a
/// skewed clock can neither expire leases and reservations early nor leap log time forward.
/// Lease grace (`Config::lease_grace_ms`) must cover this plus an election timeout.
pub const CLOCK_AHEAD_MAX_MS: u64 = 1_000;
/// How often every replica reads its peers' clocks.
pub const CLOCK_SAMPLE_INTERVAL: Duration = Duration::from_millis(500);
/// A reading older than this says nothing about a peer's clock any more.
pub const CLOCK_SAMPLE_AGE_MAX: Duration = Duration::from_secs(10);
/// How long a leader without a bound on its clock (too few of the voters' clocks read: just
/// started, or cut off from them) waits for readings before it refuses a write, unproposed.
pub const CLOCK_BOUND_WAIT: Duration = Duration::from_secs(2);
/// How often a leader held back by its peers' clocks says so.
const CLOCK_WARN_EVERY: Duration = Duration::from_secs(10);

/// What one replica knows of its peers' clocks, after TigerBeetle's clock synchronisation: each
/// reading of a peer's clock is kept with the monotonic instant at the middle of its round trip
/// (so it is at most half a round trip off) and advanced by this replica's monotonic time
/// since, which keeps it right when this replica's own wall clock jumps. Of `n` voters, at most
/// `n / 2` clocks are taken to be wrong (fewer than half: with two voters neither can tell
/// which of the two is wrong, and stamping early only makes leases last longer). Of `k`
/// estimates (this replica's own clock as it reads, and each fresh reading's), the
/// `k - n/2`-th smallest is at most a sound clock's estimate, so it bounds what a leader
/// stamps: log time never leads real time by more than `CLOCK_AHEAD_MAX_MS` plus half a round
/// trip (a reading's deadline is `CLOCK_SAMPLE_INTERVAL`). With `n / 2` or fewer estimates (a
/// replica just started, or cut off from its peers' clocks) there is no bound, and a leader
/// proposes nothing until it has read enough clocks (`CLOCK_BOUND_WAIT`).
#[derive(Debug, Default)]
pub struct ClockSync {
    readings: Mutex<BTreeMap<u64, Reading>>,
    warned_at: Mutex<Option<Instant>>,
    recorded: tokio::sync::Notify,
}

#[derive(Clone, Copy, Debug)]
struct Reading {
    /// The peer's clock at `at`, the middle of the round trip, give or take half of it.
    peer_ms: u64,
    at: Instant,
}

impl ClockSync {
    /// Records that `peer` answered `peer_ms` to a request sent at `sent` and answered at
    /// `received` (monotonic instants).
    pub fn record(&self, peer: u64, sent: Instant, peer_ms: u64, received: Instant) {
        let half = received.saturating_duration_since(sent) / 2;
        lock(&self.readings).insert(peer, Reading { peer_ms, at: sent + half });
        self.recorded.notify_waiters();
    }

    /// The bound on the clocks of `voters` at `now` (see the type), from this replica's
    /// (`me`, reading `own`) and each peer's with a fresh reading; `None` with too few. A voter
    /// without one (just added, restarted, or unreachable) does not count.
    pub fn bound(
        &self,
        me: u64,
        own: UnixMillis,
        voters: &BTreeSet<u64>,
        now: Instant,
    ) -> Option<UnixMillis> {
        let readings = lock(&self.readings);
        let mut estimates: Vec<u64> = voters
            .iter()
            .filter(|id| **id != me)
            .filter_map(|id| {
                let r = readings.get(id)?;
                let age = now.saturating_duration_since(r.at);
                (age <= CLOCK_SAMPLE_AGE_MAX).then(|| {
                    let age_ms = u64::try_from(age.as_millis()).unwrap_or(u64::MAX);
                    r.peer_ms.saturating_add(age_ms)
                })
            })
            .collect();
        estimates.push(own.0);
        estimates.sort_unstable();
        let wrong_max = voters.len() / 2;
        let at = estimates.len().checked_sub(wrong_max + 1)?;
        Some(UnixMillis(estimates[at]))
    }

    /// The time a leader stamps: its own clock, unless that runs more than
    /// `CLOCK_AHEAD_MAX_MS` ahead of the voters' clocks' bound, then that bound plus
    /// `CLOCK_AHEAD_MAX_MS` (with a warning now and then); `None` without a bound.
    pub fn stamp(
        &self,
        me: u64,
        own: UnixMillis,
        voters: &BTreeSet<u64>,
        now: Instant,
    ) -> Option<UnixMillis> {
        let bound = self.bound(me, own, voters, now)?;
        let ceiling = bound.plus_ms(CLOCK_AHEAD_MAX_MS);
        if own <= ceiling {
            return Some(own);
        }
        let mut warned_at = lock(&self.warned_at);
        if warned_at.is_none_or(|at| now.saturating_duration_since(at) >= CLOCK_WARN_EVERY) {
            *warned_at = Some(now);
            tracing::warn!(
                replica = me,
                ahead_ms = own.0.saturating_sub(bound.0),
                bound_ms = CLOCK_AHEAD_MAX_MS,
                "this replica's clock runs ahead of the voters' clocks: stamping entries at \
                 most the bound ahead of them (fix this host's clock)"
            );
        }
        Some(ceiling)
    }

    /// Resolves at the next reading recorded (create it before looking at the bound).
    pub fn read_more(&self) -> tokio::sync::futures::Notified<'_> {
        self.recorded.notified()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    const REAL: u64 = 1_800_000_000_000;

    fn voters() -> BTreeSet<u64> {
        [1, 2, 3].into()
    }

    /// Replica 1 reads sound clocks on 2 and 3 at `t0` with a 2 ms round trip.
    fn synced(t0: Instant) -> ClockSync {
        let sync = ClockSync::default();
        for peer in [2, 3] {
            sync.record(peer, t0, REAL + 1, t0 + Duration::from_millis(2));
        }
        sync
    }

    // A leader 60 s ahead of two sound peers stamps no more than the bound ahead of them.
    #[test]
    fn a_clock_far_ahead_is_held_to_the_bound() {
        let t0 = Instant::now();
        let sync = synced(t0);
        let later = t0 + Duration::from_millis(500);
        let stamped =
            sync.stamp(1, UnixMillis(REAL + 60_000 + 500), &voters(), later).expect("a bound");
        let real_then = REAL + 500;
        assert!(stamped.0 > real_then, "not behind real time: {stamped:?}");
        assert!(stamped.0 <= real_then + CLOCK_AHEAD_MAX_MS + 3, "held: {stamped:?}");
    }

    // A sound leader stamps its own clock, whatever one faulty peer's clock says.
    #[test]
    fn one_faulty_peer_changes_nothing() {
        let t0 = Instant::now();
        for faulty in [REAL - 60_000, REAL + 60_000] {
            let sync = ClockSync::default();
            sync.record(2, t0, REAL, t0);
            sync.record(3, t0, faulty, t0);
            let own = UnixMillis(REAL + 5);
            assert_eq!(sync.stamp(1, own, &voters(), t0 + Duration::from_millis(5)), Some(own));
        }
    }

    // A leader behind its peers is never pushed forward: the core keeps time monotonic.
    #[test]
    fn a_clock_behind_stamps_its_own_time() {
        let t0 = Instant::now();
        let own = UnixMillis(REAL - 30_000);
        assert_eq!(synced(t0).stamp(1, own, &voters(), t0), Some(own));
    }

    // Without enough fresh readings there is no bound, and nothing to stamp (seed 1067: a
    // replica restarted with its clock 11 s ahead led at once, before it had read a peer's
    // clock, and stamped 9.7 s ahead of real time).
    #[test]
    fn without_enough_fresh_readings_there_is_no_stamp() {
        let t0 = Instant::now();
        let own = UnixMillis(REAL + 60_000);
        assert_eq!(ClockSync::default().stamp(1, own, &voters(), t0), None);
        let stale = t0 + CLOCK_SAMPLE_AGE_MAX + Duration::from_secs(1);
        assert_eq!(synced(t0).stamp(1, own, &voters(), stale), None);
        // Of three voters, one fresh reading of a sound peer is enough to hold a leader far
        // ahead.
        let one = ClockSync::default();
        one.record(2, t0, REAL, t0);
        let held = UnixMillis(REAL + CLOCK_AHEAD_MAX_MS);
        assert_eq!(one.stamp(1, own, &voters(), t0), Some(held));
        // A single replica is its own quorum.
        let alone: BTreeSet<u64> = [1].into();
        assert_eq!(ClockSync::default().stamp(1, own, &alone, t0), Some(own));
    }

    // Of five voters, two clocks may be wrong: with three estimates the bound is the least
    // of them (the lower median, the second, would be a clock far ahead).
    #[test]
    fn of_five_voters_two_clocks_ahead_do_not_move_the_bound() {
        let t0 = Instant::now();
        let five: BTreeSet<u64> = [1, 2, 3, 4, 5].into();
        let sync = ClockSync::default();
        sync.record(2, t0, REAL + 60_000, t0);
        sync.record(3, t0, REAL, t0);
        let own = UnixMillis(REAL + 60_000);
        let held = UnixMillis(REAL + CLOCK_AHEAD_MAX_MS);
        assert_eq!(sync.stamp(1, own, &five, t0), Some(held));
        // Two estimates of five bound nothing.
        let two = ClockSync::default();
        two.record(3, t0, REAL, t0);
        assert_eq!(two.stamp(1, own, &five, t0), None);
    }

    // A reading is the middle of its round trip: a sound peer that read its clock as it
    // answered is estimated at most half the round trip ahead, so a leader far ahead is held
    // to the bound plus half a round trip (seed 579: adding that half again as an error
    // estimated it from above, a whole round trip ahead, and log time led by 1.3 s).
    #[test]
    fn a_slow_reading_adds_at_most_half_its_round_trip() {
        let t0 = Instant::now();
        let answered = t0 + Duration::from_millis(500);
        let sync = ClockSync::default();
        sync.record(2, t0, REAL + 500, answered);
        sync.record(3, t0, REAL + 500, answered);
        let stamped = sync.stamp(1, UnixMillis(REAL + 60_000), &voters(), answered);
        let most = REAL + 500 + CLOCK_AHEAD_MAX_MS + 250;
        assert!(stamped.is_some_and(|s| s.0 <= most), "{stamped:?}, at most {most}");
    }

    // Of two voters, the leader ahead of the other is held to it: neither can tell which
    // clock is wrong, and stamping early is the safe side.
    #[test]
    fn two_voters_stamp_within_the_bound_of_the_earlier_clock() {
        let t0 = Instant::now();
        let sync = ClockSync::default();
        sync.record(2, t0, REAL, t0);
        let pair: BTreeSet<u64> = [1, 2].into();
        let stamped = sync.stamp(1, UnixMillis(REAL + 60_000), &pair, t0).expect("a bound");
        assert_eq!(stamped, UnixMillis(REAL + CLOCK_AHEAD_MAX_MS));
    }

    // Readings advance with monotonic time, so a jump of the leader's own wall clock after
    // they were taken is still caught.
    #[test]
    fn readings_advance_with_monotonic_time() {
        let t0 = Instant::now();
        let sync = synced(t0);
        let later = t0 + Duration::from_secs(5);
        let bound = sync.bound(1, UnixMillis(REAL + 90_000), &voters(), later).map(|b| b.0);
        assert!(bound.is_some_and(|b| (REAL + 5_000..=REAL + 5_003).contains(&b)), "{bound:?}");
    }
}
