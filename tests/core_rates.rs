//! Rate limits in the core: a tenant's writes take from a token bucket and a daily count in
//! log time, with its ancestors', all or none; a refusal says which tenant and limit and how
//! long to wait, changes nothing, and is judged again when its request id is retried; the
//! admin's writes and replays of applied requests take nothing; bad limits are refused.

use berth::scheduler::testing::T0;
use berth::scheduler::windows::DAY_MS;
use berth::scheduler::*;

mod core_harness;
use core_harness::Log;

const HASH_OF: [(&str, TokenHash); 3] =
    [("org", TokenHash([1; 32])), ("team-a", TokenHash([2; 32])), ("team-b", TokenHash([3; 32]))];

fn hash(tenant: &str) -> TokenHash {
    HASH_OF.iter().find(|(t, _)| *t == tenant).expect("a known tenant").1
}

impl Log {
    /// `org` with children `team-a` and `team-b`, each with a token.
    fn org() -> Log {
        let mut log = Log::new();
        log.now = T0;
        for (tenant, parent) in [("org", None), ("team-a", Some("org")), ("team-b", Some("org"))] {
            log.accepted(Command::CreateTenant {
                tenant: tenant.into(),
                parent: parent.map(TenantId::from),
                weight: 1,
            });
            log.accepted(Command::AddToken {
                tenant: tenant.into(),
                token: "ci".into(),
                hash: hash(tenant),
                ttl_ms: 0,
            });
        }
        log
    }

    fn limit(&mut self, tenant: &str, limits: RateLimits) {
        self.accepted(Command::SetRateLimits { tenant: tenant.into(), limits: Some(limits) });
    }

    /// A write by `tenant`'s token with `request_id`, at the current log time.
    fn write_as(&mut self, tenant: &str, request_id: &str) -> Applied {
        let lease = format!("l-{request_id}");
        let command = Command::AcquireLease {
            tenant: tenant.into(),
            lease: lease.as_str().into(),
            holder: "me".into(),
            ttl_ms: 60_000,
        };
        let mut entry = self.entry(command);
        entry.request_id = Some(RequestId::new(request_id));
        entry.token = Some(hash(tenant));
        self.apply_entry(entry)
    }

    fn write(&mut self, tenant: &str) -> Applied {
        let id = format!("w{}", self.index + 1);
        self.write_as(tenant, &id)
    }

    /// How many of `n` writes by `tenant`, at the current log time, are accepted; every
    /// refusal must be `RateLimited`.
    fn writes_accepted(&mut self, tenant: &str, n: usize) -> usize {
        (0..n)
            .filter(|_| match self.write(tenant).result {
                Ok(_) => true,
                Err(Rejection::RateLimited { .. }) => false,
                Err(other) => panic!("refused for another reason: {other}"),
            })
            .count()
    }
}

fn rate(token_rate: u32, burst_rate: Option<u32>) -> RateLimits {
    RateLimits { token_rate: Some(token_rate), burst_rate, daily_quota: None }
}

fn daily(quota: u64) -> RateLimits {
    RateLimits { daily_quota: Some(quota), ..RateLimits::default() }
}

#[test]
fn a_bucket_allows_its_burst_then_refills_at_its_rate_in_log_time() {
    let mut log = Log::org();
    log.limit("team-a", rate(10, Some(5)));
    assert_eq!(log.writes_accepted("team-a", 8), 5, "the burst, then nothing at the same ms");
    match log.write("team-a").result {
        Err(Rejection::RateLimited { limited_by, limit, retry_after_ms }) => {
            assert_eq!(limited_by, TenantId::from("team-a"));
            assert_eq!(limit, RateLimit::TokenRate);
            assert_eq!(retry_after_ms, 100, "one write at 10/s is 100 ms away");
        }
        other => panic!("expected RATE_LIMITED, got {other:?}"),
    }
    log.advance(99);
    assert_eq!(log.writes_accepted("team-a", 1), 0, "99 ms refill 0.99 of a write");
    log.advance(1);
    assert_eq!(log.writes_accepted("team-a", 3), 1);
    // A long pause fills the bucket to its size, no more.
    log.advance(3_600_000);
    assert_eq!(log.writes_accepted("team-a", 20), 5);
    // The sibling is not limited at all.
    assert_eq!(log.writes_accepted("team-b", 20), 20);
    // Over ten seconds at 10/s with a burst of 5: exactly 100 + 5 writes.
    log.advance(1_000);
    let mut accepted = log.writes_accepted("team-a", 20);
    for _ in 0..1_000 {
        log.advance(10);
        accepted += log.writes_accepted("team-a", 3);
    }
    assert_eq!(accepted, 5 + 100, "burst plus 10 ms × 1,000 at 10 per second");
}

#[test]
fn a_daily_quota_refuses_until_midnight_utc_and_counts_again_from_zero() {
    let mut log = Log::org();
    let midnight = (T0 / DAY_MS + 1) * DAY_MS;
    log.now = midnight - 10_000;
    log.limit("team-a", daily(3));
    assert_eq!(log.writes_accepted("team-a", 5), 3);
    log.advance(4_000);
    match log.write("team-a").result {
        Err(Rejection::RateLimited { limit, retry_after_ms, .. }) => {
            assert_eq!(limit, RateLimit::DailyQuota);
            assert_eq!(retry_after_ms, 6_000, "until 00:00:00.000 UTC");
        }
        other => panic!("expected RATE_LIMITED, got {other:?}"),
    }
    // Changing the limits keeps today's count.
    log.limit("team-a", daily(4));
    assert_eq!(log.writes_accepted("team-a", 5), 1);
    log.now = midnight - 1;
    assert_eq!(log.writes_accepted("team-a", 1), 0);
    log.now = midnight;
    assert_eq!(log.writes_accepted("team-a", 6), 4);
}

#[test]
fn a_parent_caps_its_children_together_and_a_refusal_takes_from_no_one() {
    let mut log = Log::org();
    log.limit("org", daily(10));
    log.limit("team-a", rate(1, Some(8)));
    // team-a uses 8 of its bucket and 8 of org's day; team-b may have only the 2 left.
    assert_eq!(log.writes_accepted("team-a", 8), 8);
    assert_eq!(log.writes_accepted("team-b", 5), 2);
    // team-a's bucket refills, but org's day is spent: the refusal names org, the longer wait.
    log.advance(5_000);
    match log.write("team-a").result {
        Err(Rejection::RateLimited { limited_by, limit, .. }) => {
            assert_eq!((limited_by, limit), (TenantId::from("org"), RateLimit::DailyQuota));
        }
        other => panic!("expected RATE_LIMITED, got {other:?}"),
    }
    // org's own token is limited by org's day too.
    assert_eq!(log.writes_accepted("org", 1), 0);
    // Nothing was taken by the refusals: team-a's bucket holds the 5 it refilled.
    let t = &log.s.state().tenants[&TenantId::from("team-a")];
    let rate = t.rate.as_ref().expect("team-a has limits");
    assert_eq!(rate.bucket.available(&rate.limits, log.now), Some(5));
    assert_eq!(rate.today_at(UnixMillis(log.now)), 8);
    let org = log.s.state().tenants[&TenantId::from("org")].rate.as_ref().expect("org limits");
    assert_eq!(org.today_at(UnixMillis(log.now)), 10);
}

#[test]
fn a_refused_write_changes_nothing_and_its_request_id_is_judged_again() {
    let mut log = Log::org();
    log.limit("team-a", rate(1, None));
    assert!(log.write_as("team-a", "first").result.is_ok());
    let before = log.s.state_hash();
    let refused = log.write_as("team-a", "second");
    assert!(matches!(refused.result, Err(Rejection::RateLimited { retry_after_ms: 1_000, .. })));
    assert_eq!(log.s.state_hash(), before, "a refusal changes nothing");
    // A replay of an applied request is answered from its session, taking nothing.
    let replay = log.write_as("team-a", "first");
    assert!(replay.replayed && replay.result.is_ok());
    assert_eq!(log.s.state_hash(), before, "a replay takes nothing from the bucket");
    log.advance(1_000);
    let retried = log.write_as("team-a", "second");
    assert!(retried.result.is_ok() && !retried.replayed, "the retry is judged anew");
}

#[test]
fn the_admins_writes_are_never_limited() {
    let mut log = Log::org();
    log.limit("team-a", RateLimits { token_rate: Some(1), burst_rate: None, daily_quota: Some(1) });
    assert_eq!(log.writes_accepted("team-a", 1), 1);
    let before = log.s.state().tenants[&TenantId::from("team-a")].rate.clone();
    for i in 0..5 {
        log.accepted(Command::AcquireLease {
            tenant: "team-a".into(),
            lease: format!("admin-{i}").as_str().into(),
            holder: "ops".into(),
            ttl_ms: 1_000,
        });
    }
    let after = &log.s.state().tenants[&TenantId::from("team-a")].rate;
    assert_eq!(*after, before, "the admin's writes took nothing");
}

#[test]
fn what_only_gives_back_is_never_limited_and_other_refusals_count() {
    let mut log = Log::org();
    log.limit("team-a", RateLimits { daily_quota: Some(3), ..RateLimits::default() });
    assert!(log.write_as("team-a", "take").result.is_ok());
    // Refused for another reason (the lease is held): it still counts.
    let command = Command::AcquireLease {
        tenant: "team-a".into(),
        lease: "l-take".into(),
        holder: "other".into(),
        ttl_ms: 60_000,
    };
    let mut entry = log.entry(command);
    entry.token = Some(hash("team-a"));
    let held = log.apply_entry(entry);
    assert!(matches!(held.result, Err(Rejection::LeaseHeld { .. })), "{held:?}");
    assert_eq!(log.writes_accepted("team-a", 3), 1, "3 of the day: 2 sent before");
    let token = log.s.state().leases[&(TenantId::from("team-a"), LeaseName::from("l-take"))].token;
    let rate = log.s.state().tenants[&TenantId::from("team-a")].rate.clone();
    // The day is spent, yet the lease can be released, and that takes nothing.
    let release = Command::ReleaseLease { tenant: "team-a".into(), lease: "l-take".into(), token };
    let mut entry = log.entry(release);
    entry.token = Some(hash("team-a"));
    assert!(log.apply_entry(entry).result.is_ok());
    assert_eq!(log.s.state().tenants[&TenantId::from("team-a")].rate, rate);
}

#[test]
fn no_limits_or_all_unset_removes_them_and_bad_limits_are_refused() {
    let mut log = Log::org();
    log.limit("team-a", rate(1, None));
    assert_eq!(log.writes_accepted("team-a", 3), 1);
    log.accepted(Command::SetRateLimits {
        tenant: "team-a".into(),
        limits: Some(RateLimits::default()),
    });
    assert!(log.s.state().tenants[&TenantId::from("team-a")].rate.is_none());
    assert_eq!(log.writes_accepted("team-a", 3), 3);
    log.limit("team-a", daily(1));
    log.accepted(Command::SetRateLimits { tenant: "team-a".into(), limits: None });
    assert_eq!(log.writes_accepted("team-a", 3), 3);

    let bad = [
        (RateLimits { token_rate: Some(0), ..RateLimits::default() }, "token_rate"),
        (rate(TOKEN_RATE_MAX + 1, None), "token_rate"),
        (rate(1, Some(0)), "burst_rate"),
        (rate(1, Some(BURST_RATE_MAX + 1)), "burst_rate"),
        (RateLimits { burst_rate: Some(5), ..RateLimits::default() }, "burst_rate"),
        (daily(0), "daily_quota"),
        (daily(DAILY_QUOTA_MAX + 1), "daily_quota"),
    ];
    let before = log.s.state_hash();
    for (limits, field) in bad {
        let command = Command::SetRateLimits { tenant: "team-a".into(), limits: Some(limits) };
        match log.err(command) {
            Rejection::InvalidArgument { field: f, .. } => assert_eq!(f, field, "{limits:?}"),
            other => panic!("{limits:?}: expected INVALID_ARGUMENT, got {other}"),
        }
    }
    assert_eq!(log.s.state_hash(), before);
    let missing = Command::SetRateLimits { tenant: "nobody".into(), limits: Some(daily(1)) };
    assert!(matches!(log.err(missing), Rejection::TenantNotFound { .. }));
    // The largest limits, and a bucket left for the longest log time, do not overflow.
    log.limit("team-a", rate(TOKEN_RATE_MAX, Some(BURST_RATE_MAX)));
    log.now = UNIX_MILLIS_MAX.0;
    assert_eq!(log.writes_accepted("team-a", 3), 3);
}

#[test]
fn rate_limits_survive_a_snapshot_and_go_with_their_tenant() {
    let mut log = Log::org();
    log.limit(
        "team-a",
        RateLimits { token_rate: Some(2), burst_rate: Some(3), daily_quota: Some(9) },
    );
    assert_eq!(log.writes_accepted("team-a", 2), 2);
    let bytes = log.s.encode();
    let restored = Scheduler::decode(&bytes).expect("the snapshot decodes");
    assert_eq!(restored.state_hash(), log.s.state_hash());
    log.accepted(Command::DeleteTenant { tenant: "team-a".into() });
    log.accepted(Command::CreateTenant {
        tenant: "team-a".into(),
        parent: Some("org".into()),
        weight: 1,
    });
    assert!(log.s.state().tenants[&TenantId::from("team-a")].rate.is_none(), "starts unlimited");
}
