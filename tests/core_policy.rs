//! Policy versions in the core: a tenant's creation and each accepted change to its quota,
//! rate limits, budget or billing plan is a numbered version with who, when, the log index,
//! the request id and the whole policy; a rollback makes an earlier version current again as
//! a new version, checked like a change and refused whole; only the last
//! `POLICY_VERSIONS_MAX` are kept.

use berth::scheduler::testing::T0;
use berth::scheduler::*;
use rust_decimal::Decimal;

mod core_harness;
use core_harness::Log;

fn tenant() -> TenantId {
    TenantId::from("acme")
}

fn cpu_quota(cpu_millis: u64) -> Quota {
    Quota {
        total: Limits { cpu_millis: Some(cpu_millis), ..Limits::default() },
        ..Quota::default()
    }
}

impl Log {
    fn acme() -> Log {
        let mut log = Log::new();
        log.now = T0;
        log.accepted(Command::CreateTenant { tenant: tenant(), parent: None, weight: 1 });
        log.accepted(Command::RegisterWorker {
            worker: "w1".into(),
            pool: None,
            capacity: Resources::new(64_000, 65_536),
            labels: Labels::new(),
        });
        log
    }

    fn history(&self) -> &PolicyHistory {
        &self.s.state().tenants[&tenant()].policy
    }

    fn set_quota(&mut self, cpu_millis: u64) -> Applied {
        self.apply(Command::SetQuota { tenant: tenant(), quota: cpu_quota(cpu_millis) })
    }
}

#[test]
fn each_change_is_a_version_with_who_when_and_the_whole_policy() {
    let mut log = Log::acme();
    assert_eq!(log.history().current(), 1);
    let created = &log.history().versions[0];
    assert_eq!((created.change, &created.actor), (PolicyChange::Created, &Actor::Admin));
    assert_eq!(created.policy, Policy::default());

    log.advance(1_000);
    let set =
        log.apply_as("set-quota", Command::SetQuota { tenant: tenant(), quota: cpu_quota(8_000) });
    assert!(set.result.is_ok());
    let limits = RateLimits { token_rate: Some(5), burst_rate: None, daily_quota: Some(100) };
    log.accepted(Command::SetRateLimits { tenant: tenant(), limits: Some(limits) });
    let budget = Budget {
        per_month: Decimal::new(10_000, 2),
        per_day: None,
        alerts_percent: vec![50],
        hard_stop: true,
    };
    log.accepted(Command::SetBudget { tenant: tenant(), budget: Some(budget.clone()) });
    log.accepted(Command::SetPricePlan {
        plan: "gold".into(),
        prices: Prices::default(),
        effective_at: None,
    });
    log.accepted(Command::SetBillingPlan { tenant: tenant(), plan: Some("gold".into()) });

    let h = log.history();
    let changes: Vec<_> = h.versions.iter().map(|v| (v.version, v.change)).collect();
    assert_eq!(
        changes,
        [
            (1, PolicyChange::Created),
            (2, PolicyChange::Quota),
            (3, PolicyChange::RateLimits),
            (4, PolicyChange::Budget),
            (5, PolicyChange::BillingPlan)
        ]
    );
    let v2 = h.get(2).expect("version 2");
    assert_eq!((v2.log_index, v2.at), (set.log_index, UnixMillis(T0 + 1_000)));
    assert_eq!(v2.request_id, Some(RequestId::new("set-quota")));
    assert_eq!(v2.policy, Policy { quota: cpu_quota(8_000), ..Policy::default() });
    let v5 = h.get(5).expect("version 5");
    assert_eq!(
        v5.policy,
        Policy {
            quota: cpu_quota(8_000),
            rate_limits: Some(limits),
            budget: Some(budget),
            billing_plan: Some("gold".into()),
        }
    );
    // A refused change is no version.
    log.accepted(Command::Place {
        tenant: tenant(),
        spec: PlaceSpec {
            placement: "p".into(),
            resources: Resources::new(4_000, 64),
            count: 1,
            ..PlaceSpec::default()
        },
        fence: None,
    });
    assert!(log.set_quota(1_000).result.is_err(), "below usage");
    assert_eq!(log.history().current(), 5);
}

#[test]
fn a_rollback_is_a_new_version_with_the_old_policy_and_is_refused_whole() {
    let mut log = Log::acme();
    log.set_quota(2_000); // 2
    log.accepted(Command::SetRateLimits {
        tenant: tenant(),
        limits: Some(RateLimits { daily_quota: Some(7), ..RateLimits::default() }),
    }); // 3
    log.set_quota(16_000); // 4
    let rolled = log.apply_as("undo", Command::RollbackPolicy { tenant: tenant(), to_version: 2 });
    assert_eq!(rolled.result, Ok(Response::PolicyRolledBack { version: 5 }));
    let h = log.history();
    let v5 = h.get(5).expect("version 5");
    assert_eq!(v5.change, PolicyChange::Rollback { to: 2 });
    assert_eq!(v5.policy, h.get(2).expect("version 2").policy, "version 2's policy again");
    assert!(log.s.state().tenants[&tenant()].rate.is_none(), "the rate limits went too");
    // Retried with its request id: the same answer, no new version.
    let again = log.apply_as("undo", Command::RollbackPolicy { tenant: tenant(), to_version: 2 });
    assert!(again.replayed && again.result == rolled.result);
    assert_eq!(log.history().current(), 5);

    // Back to 16 cores, use 4, then a rollback to 2 cores is refused: nothing changes.
    log.accepted(Command::RollbackPolicy { tenant: tenant(), to_version: 4 }); // 6
    log.accepted(Command::Place {
        tenant: tenant(),
        spec: PlaceSpec {
            placement: "p".into(),
            resources: Resources::new(4_000, 64),
            count: 1,
            ..PlaceSpec::default()
        },
        fence: None,
    });
    let before = log.s.state().tenants[&tenant()].clone();
    let refused = log.err(Command::RollbackPolicy { tenant: tenant(), to_version: 2 });
    assert!(matches!(refused, Rejection::InvalidArgument { .. }), "{refused}");
    assert!(refused.to_string().contains("below current usage"), "{refused}");
    assert_eq!(log.s.state().tenants[&tenant()], before, "the refusals changed nothing");
    assert_eq!(log.history().current(), 6);
}

#[test]
fn only_the_last_versions_are_kept_and_bad_rollbacks_are_refused() {
    let mut log = Log::acme();
    for i in 0..40 {
        log.set_quota(1_000 + i);
    }
    let h = log.history();
    assert_eq!(h.versions.len(), POLICY_VERSIONS_MAX);
    let oldest = h.versions.front().expect("versions").version;
    assert_eq!((oldest, h.current()), (41 - POLICY_VERSIONS_MAX as u64 + 1, 41));
    let before = log.s.state().tenants[&tenant()].clone();
    match log.err(Command::RollbackPolicy { tenant: tenant(), to_version: 3 }) {
        Rejection::PolicyVersionNotFound { version, oldest: o, .. } => {
            assert_eq!((version, o), (3, oldest));
        }
        other => panic!("expected POLICY_VERSION_NOT_FOUND, got {other}"),
    }
    for to_version in [0, 42, u64::MAX] {
        assert!(log
            .apply(Command::RollbackPolicy { tenant: tenant(), to_version })
            .result
            .is_err());
    }
    let missing = Command::RollbackPolicy { tenant: "nobody".into(), to_version: 1 };
    assert!(matches!(log.err(missing), Rejection::TenantNotFound { .. }));
    assert_eq!(log.s.state().tenants[&tenant()], before, "the refusals changed nothing");
    // The history survives a snapshot.
    let restored = Scheduler::decode(&log.s.encode()).expect("decodes");
    assert_eq!(*restored.state().tenants[&tenant()].policy, *log.history());
}
