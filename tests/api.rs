//! The public gRPC API against a real in-process 3-replica cluster: auth and tenant isolation,
//! error details, the concurrency guarantees through the API, tenant deletion, leases with
//! fencing, cost allocation, cluster status, health and idempotent retries.

mod common;

use std::collections::BTreeSet;

use berth::api::pb;
use common::*;
use tonic::{Code, Request};

/// No token, a wrong token, a tenant token on admin RPCs or on another tenant, and malformed
/// tenant ids are each refused with the right code and reason, never an empty answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_and_tenant_isolation() {
    let (cluster, mut c) = setup().await;
    create_tenant(&mut c, "alpha").await;
    create_tenant(&mut c, "beta").await;
    let alpha = issue_token(&mut c, "alpha").await;
    let get = |tenant: &str| pb::GetTenantRequest { tenant_id: tenant.into(), read: None };
    // A just-issued token works at once on every replica, however far behind it is.
    let mut everyone = Vec::new();
    for id in cluster.running() {
        everyone.push(clients(&cluster, id).await);
    }
    for r in &mut everyone {
        r.tenants.get_tenant(authed(&alpha, get("alpha"))).await.expect("new token accepted");
    }
    let none = c.tenants.get_tenant(Request::new(get("alpha"))).await.expect_err("no token");
    assert_eq!(none.code(), Code::Unauthenticated);
    let wrong = c
        .tenants
        .get_tenant(authed("berth_not-a-token", get("alpha")))
        .await
        .expect_err("bad token");
    assert_eq!(wrong.code(), Code::Unauthenticated);

    let other = c.tenants.get_tenant(authed(&alpha, get("beta"))).await.expect_err("other tenant");
    assert_eq!(
        (other.code(), reason(&other).as_str()),
        (Code::PermissionDenied, "PERMISSION_DENIED")
    );
    let other = c
        .scheduler
        .place(authed(&alpha, place("beta", spec("x", 100))))
        .await
        .expect_err("other tenant");
    assert_eq!(other.code(), Code::PermissionDenied);
    let list = pb::ListPlacementsRequest { tenant_id: "beta".into(), ..Default::default() };
    let other = c.scheduler.list_placements(authed(&alpha, list)).await.expect_err("other tenant");
    assert_eq!(other.code(), Code::PermissionDenied);

    let admin_only = pb::ListWorkersRequest::default();
    let refused = c.workers.list_workers(authed(&alpha, admin_only)).await.expect_err("admin only");
    assert_eq!(
        (refused.code(), reason(&refused).as_str()),
        (Code::PermissionDenied, "ADMIN_REQUIRED")
    );

    for (id, expected) in
        [("", "TENANT_ID_REQUIRED"), (" ", "TENANT_ID_REQUIRED"), ("Alpha", "INVALID_TENANT_ID")]
    {
        let bad = c
            .scheduler
            .place(authed(ADMIN_TOKEN, place(id, spec("x", 100))))
            .await
            .expect_err("bad id");
        assert_eq!(
            (bad.code(), reason(&bad)),
            (Code::InvalidArgument, expected.to_owned()),
            "{id:?}"
        );
    }
    let no_rid = pb::PlaceRequest { request_id: String::new(), ..place("alpha", spec("x", 100)) };
    let bad = c.scheduler.place(authed(&alpha, no_rid)).await.expect_err("no request id");
    assert_eq!(reason(&bad), "REQUEST_ID_REQUIRED");

    // A revoked token stops working at once on every replica: writes are refused when
    // applied, linearizable reads against the state they read.
    let revoke = pb::RevokeTokenRequest {
        request_id: rid(),
        tenant_id: "alpha".into(),
        token_name: "ci".into(),
    };
    c.tenants.revoke_token(authed(ADMIN_TOKEN, revoke)).await.expect("revoked");
    for r in &mut everyone {
        let read = r.tenants.get_tenant(authed(&alpha, get("alpha"))).await.expect_err("revoked");
        assert_eq!(
            (read.code(), reason(&read).as_str()),
            (Code::Unauthenticated, "UNAUTHENTICATED")
        );
        let write = r
            .scheduler
            .place(authed(&alpha, place("alpha", spec("after-revoke", 100))))
            .await
            .expect_err("revoked");
        assert_eq!(write.code(), Code::Unauthenticated, "{write}");
    }
    let list = pb::ListPlacementsRequest { tenant_id: "alpha".into(), ..Default::default() };
    let placed = c.scheduler.list_placements(authed(ADMIN_TOKEN, list)).await.expect("listed");
    assert!(placed.into_inner().placements.is_empty(), "a revoked token placed work");
    cluster.shutdown().await;
}

/// A token issued with a lifetime works until then, and afterwards is UNAUTHENTICATED with
/// reason TOKEN_EXPIRED for reads and writes on every replica; a lifetime above
/// `TOKEN_TTL_MAX_MS` is INVALID_ARGUMENT and writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_expire() {
    let (cluster, mut c) = setup().await;
    create_tenant(&mut c, "alpha").await;
    register(&mut c, "w1", 1_000_000).await;
    let issue = |name: &str, ttl_ms| pb::IssueTokenRequest {
        request_id: rid(),
        tenant_id: "alpha".into(),
        token_name: name.into(),
        ttl_ms,
    };
    let get = || pb::GetTenantRequest { tenant_id: "alpha".into(), read: None };

    let applied = cluster.replica(cluster.leader().await).status().applied_command_index;
    let too_long = issue("long", berth::scheduler::TOKEN_TTL_MAX_MS + 1);
    let refused = c.tenants.issue_token(authed(ADMIN_TOKEN, too_long)).await.expect_err("too long");
    assert_eq!(
        (refused.code(), reason(&refused).as_str(), meta(&refused, "field").as_str()),
        (Code::InvalidArgument, "INVALID_ARGUMENT", "ttl_ms")
    );
    let leader = cluster.leader().await;
    assert_eq!(cluster.replica(leader).status().applied_command_index, applied, "proposed");

    let issued = c
        .tenants
        .issue_token(authed(ADMIN_TOKEN, issue("short", 3_000)))
        .await
        .expect("issued")
        .into_inner();
    let applied_at = issued.write.expect("write info").applied_at_ms;
    assert_eq!(issued.expires_at_ms, applied_at + 3_000);
    let token = issued.token;
    let tenant = c.tenants.get_tenant(authed(&token, get())).await.expect("works").into_inner();
    let listed = tenant.tenant.expect("tenant").tokens;
    assert_eq!(
        listed,
        vec![pb::TokenInfo { name: "short".into(), expires_at_ms: issued.expires_at_ms }]
    );
    c.scheduler.place(authed(&token, place("alpha", spec("early", 100)))).await.expect("works");

    poll("the token to expire", || {
        let mut tenants = c.tenants.clone();
        let request = authed(&token, get());
        async move {
            let refused = tenants.get_tenant(request).await.err()?;
            (reason(&refused) == "TOKEN_EXPIRED").then_some(())
        }
    })
    .await;
    for id in cluster.running() {
        let mut r = clients(&cluster, id).await;
        let read = r.tenants.get_tenant(authed(&token, get())).await.expect_err("expired");
        let write = r
            .scheduler
            .place(authed(&token, place("alpha", spec("late", 100))))
            .await
            .expect_err("expired");
        for refused in [read, write] {
            assert_eq!(
                (refused.code(), reason(&refused).as_str(), meta(&refused, "token").as_str()),
                (Code::Unauthenticated, "TOKEN_EXPIRED", "short"),
                "{refused}"
            );
            assert_eq!(meta(&refused, "expired_at_ms"), issued.expires_at_ms.to_string());
        }
    }
    cluster.shutdown().await;
}

/// 50 concurrent Place calls against a quota of 10 instances: exactly 10 succeed, the rest
/// are QUOTA_EXCEEDED with dimension, limit, used and requested.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_places_never_exceed_quota() {
    let (cluster, mut c) = setup().await;
    create_tenant(&mut c, "acme").await;
    register(&mut c, "w1", 1_000_000).await;
    let quota = pb::Quota {
        total: Some(pb::Limits { instances: Some(10), ..Default::default() }),
        ..Default::default()
    };
    let set =
        pb::SetQuotaRequest { request_id: rid(), tenant_id: "acme".into(), quota: Some(quota) };
    c.tenants.set_quota(authed(ADMIN_TOKEN, set)).await.expect("quota set");

    let calls: Vec<_> = (0..50)
        .map(|i| {
            let mut s = c.scheduler.clone();
            tokio::spawn(async move {
                s.place(authed(ADMIN_TOKEN, place("acme", spec(&format!("p{i}"), 10)))).await
            })
        })
        .collect();
    let mut ok = 0;
    for call in calls {
        match call.await.expect("task") {
            Ok(_) => ok += 1,
            Err(s) => {
                assert_eq!(
                    (s.code(), reason(&s).as_str()),
                    (Code::ResourceExhausted, "QUOTA_EXCEEDED"),
                    "{s}"
                );
                assert_eq!(
                    (meta(&s, "dimension"), meta(&s, "limit")),
                    ("instances".into(), "10".into())
                );
                assert_eq!((meta(&s, "used"), meta(&s, "requested")), ("10".into(), "1".into()));
            }
        }
    }
    assert_eq!(ok, 10);
    let get = pb::GetQuotaRequest { tenant_id: "acme".into(), read: None };
    let quota = c.tenants.get_quota(authed(ADMIN_TOKEN, get)).await.expect("quota").into_inner();
    assert_eq!(quota.usage.expect("usage").instances, 10);
    cluster.shutdown().await;
}

/// 20 concurrent Place calls into a group of max 10 admit exactly 10; concurrent required
/// anti-affinity placements on 3 workers land at most one per worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_groups_and_anti_affinity_hold() {
    let (cluster, mut c) = setup().await;
    create_tenant(&mut c, "acme").await;
    for w in ["w1", "w2", "w3"] {
        register(&mut c, w, 1_000_000).await;
    }
    let group = pb::CreatePlacementGroupRequest {
        request_id: rid(),
        tenant_id: "acme".into(),
        group: "g".into(),
        max_instances: 10,
        strategy: pb::GroupStrategy::Pack.into(),
    };
    c.scheduler.create_placement_group(authed(ADMIN_TOKEN, group)).await.expect("group");
    let calls: Vec<_> = (0..20)
        .map(|i| {
            let mut s = c.scheduler.clone();
            let spec = pb::PlacementSpec { group: "g".into(), ..spec(&format!("g{i}"), 10) };
            tokio::spawn(async move { s.place(authed(ADMIN_TOKEN, place("acme", spec))).await })
        })
        .collect();
    let mut ok = 0;
    for call in calls {
        match call.await.expect("task") {
            Ok(_) => ok += 1,
            Err(s) => assert_eq!(reason(&s), "GROUP_FULL"),
        }
    }
    assert_eq!(ok, 10);

    let calls: Vec<_> = (0..12)
        .map(|i| {
            let mut s = c.scheduler.clone();
            let spec = pb::PlacementSpec {
                labels: [("app".to_string(), "db".to_string())].into(),
                anti_affinity: vec![pb::LabelTerm { key: "app".into(), value: "db".into() }],
                ..spec(&format!("db{i}"), 10)
            };
            tokio::spawn(async move { s.place(authed(ADMIN_TOKEN, place("acme", spec))).await })
        })
        .collect();
    let mut hosts = Vec::new();
    for call in calls {
        match call.await.expect("task") {
            Ok(r) => hosts.extend(r.into_inner().placement.expect("placement").workers),
            Err(s) => {
                assert_eq!(reason(&s), "NO_CAPACITY");
                assert_eq!(meta(&s, "anti_affinity"), "3");
            }
        }
    }
    let distinct: BTreeSet<_> = hosts.iter().collect();
    assert_eq!((hosts.len(), distinct.len()), (3, 3), "one per worker: {hosts:?}");
    cluster.shutdown().await;
}

/// Soft limits, inheritance, pool denial and dry runs through the API: writes report quota
/// events; GetQuota shows limits as set and in effect and the burst state; a denied pool is
/// PERMISSION_DENIED/POOL_DENIED naming the denying tenant; a dry run answers with a decision
/// (chosen workers, or the limiting quota) and writes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soft_quota_pool_denial_and_dry_run() {
    let (cluster, mut c) = setup().await;
    create_tenant(&mut c, "org").await;
    let child = pb::CreateTenantRequest {
        request_id: rid(),
        tenant_id: "team".into(),
        parent_id: "org".into(),
        weight: 1,
    };
    c.tenants.create_tenant(authed(ADMIN_TOKEN, child)).await.expect("child created");
    register(&mut c, "w1", 10_000).await;
    let quota = pb::Quota {
        soft: Some(pb::SoftLimits {
            cpu_millis: Some(pb::SoftLimit { soft: 1_000, burst: 3_000 }),
            ..Default::default()
        }),
        grace_ms: Some(600_000),
        denied_pools: vec!["gpu".into()],
        ..Default::default()
    };
    let set =
        pb::SetQuotaRequest { request_id: rid(), tenant_id: "org".into(), quota: Some(quota) };
    c.tenants.set_quota(authed(ADMIN_TOKEN, set)).await.expect("quota set");

    // A dry run says where it would go and which bursts it would start, and writes nothing.
    let dry = pb::PlaceRequest { dry_run: true, ..place("team", spec("a", 2_000)) };
    let answer = c.scheduler.place(authed(ADMIN_TOKEN, dry.clone())).await.expect("dry run");
    let answer = answer.into_inner();
    let decision = answer.decision.expect("decision");
    assert!(answer.write.is_none() && decision.would_place, "{decision:?}");
    assert_eq!(answer.placement.expect("where").workers, vec!["w1".to_string()]);
    let kinds: Vec<_> =
        decision.quota_events.iter().map(|e| (e.kind(), e.tenant_id.as_str())).collect();
    use pb::quota_event::Kind;
    assert_eq!(kinds, vec![(Kind::BurstEntered, "team"), (Kind::BurstEntered, "org")]);
    let get = |t: &str| pb::GetQuotaRequest { tenant_id: t.into(), read: None };
    let before =
        c.tenants.get_quota(authed(ADMIN_TOKEN, get("org"))).await.expect("quota").into_inner();
    assert_eq!(before.usage.map(|u| u.cpu_millis), Some(0), "the dry run placed nothing");

    // The real Place reports the same events in its WriteInfo.
    let again = c.scheduler.place(authed(ADMIN_TOKEN, dry)).await.expect("dry again");
    assert!(again.into_inner().decision.is_some_and(|d| d.would_place), "still nothing placed");
    let real = c
        .scheduler
        .place(authed(ADMIN_TOKEN, place("team", spec("a", 2_000))))
        .await
        .expect("placed");
    let write = real.into_inner().write.expect("write");
    assert_eq!(write.quota_events.len(), 2, "{write:?}");

    let team =
        c.tenants.get_quota(authed(ADMIN_TOKEN, get("team"))).await.expect("quota").into_inner();
    let effective = team.effective.expect("effective");
    assert_eq!(
        effective.soft.and_then(|s| s.cpu_millis).map(|l| (l.soft, l.burst)),
        Some((1_000, 3_000))
    );
    assert_eq!(
        (effective.grace_ms, effective.denied_pools),
        (Some(600_000), vec!["gpu".to_string()])
    );
    let burst = team.burst.expect("team is bursting");
    assert_eq!(burst.grace_ends_at_ms, burst.since_ms + 600_000);
    assert!(!burst.grace_expired);

    // Over the burst ceiling: a dry run explains, a real Place refuses the same way.
    let over = pb::PlaceRequest { dry_run: true, ..place("team", spec("b", 1_001)) };
    let d = c.scheduler.place(authed(ADMIN_TOKEN, over)).await.expect("dry run").into_inner();
    let d = d.decision.expect("decision");
    assert!(!d.would_place);
    assert_eq!(
        (d.reason.as_str(), d.metadata["limit_kind"].as_str(), d.metadata["tenant"].as_str()),
        ("QUOTA_EXCEEDED", "burst", "org")
    );
    let refused = c
        .scheduler
        .place(authed(ADMIN_TOKEN, place("team", spec("b", 1_001))))
        .await
        .expect_err("burst");
    assert_eq!(
        (reason(&refused), meta(&refused, "limit_kind")),
        ("QUOTA_EXCEEDED".into(), "burst".into())
    );

    let gpu = pb::PlacementSpec { pool: "gpu".into(), ..spec("g", 100) };
    let denied =
        c.scheduler.place(authed(ADMIN_TOKEN, place("team", gpu))).await.expect_err("denied");
    assert_eq!(
        (denied.code(), reason(&denied), meta(&denied, "tenant")),
        (Code::PermissionDenied, "POOL_DENIED".into(), "org".into())
    );
    cluster.shutdown().await;
}

/// Through the API: a tenant's preemption policy and pool guarantee round-trip through
/// SetQuota/GetQuota; a higher-priority Place reports the victim it preempted (re-queued, as its
/// spec asked) in its WriteInfo; GetQuota shows borrowed and unused amounts per pool; a borrower
/// beyond another tenant's kept share is refused NOT_LENDABLE; a lender within its guarantee
/// reclaims from the borrower in one write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preemption_and_guarantees_through_the_api() {
    let (cluster, mut c) = setup().await;
    create_tenant(&mut c, "acme").await;
    create_tenant(&mut c, "beta").await;
    register(&mut c, "w1", 4_000).await;
    let res = |cpu_millis| Some(pb::Resources { cpu_millis, memory_mib: 1 << 20 });
    let quota = |preemption: Option<pb::Preemption>, nominal, lend| pb::Quota {
        preemption: preemption.map(Into::into),
        guarantees: [(
            "default".to_string(),
            pb::Guarantee { nominal: res(nominal), borrowing_limit: None, lending_limit: lend },
        )]
        .into(),
        ..Default::default()
    };
    let set = |tenant: &str, quota: pb::Quota| pb::SetQuotaRequest {
        request_id: rid(),
        tenant_id: tenant.into(),
        quota: Some(quota),
    };
    let q = quota(Some(pb::Preemption::SameTenant), 1_000, None);
    c.tenants.set_quota(authed(ADMIN_TOKEN, set("acme", q.clone()))).await.expect("acme quota");
    let q2 = quota(None, 2_000, res(1_000));
    c.tenants.set_quota(authed(ADMIN_TOKEN, set("beta", q2))).await.expect("beta quota");
    let get = |t: &str| pb::GetQuotaRequest { tenant_id: t.into(), read: None };
    let got = c.tenants.get_quota(authed(ADMIN_TOKEN, get("acme"))).await.expect("get");
    let got = got.into_inner();
    assert_eq!(
        got.quota.as_ref().map(|q| (q.preemption, q.guarantees.clone())),
        Some((q.preemption, q.guarantees))
    );
    assert_eq!(got.effective.and_then(|e| e.preemption), Some(pb::Preemption::SameTenant.into()));

    // acme borrows 1000 beyond its 1000; beta's 2000 unused lends only 1000, so 1000 is kept.
    let batch = pb::PlacementSpec { requeue_on_preemption: true, ..spec("batch", 2_000) };
    let placed = c.scheduler.place(authed(ADMIN_TOKEN, place("acme", batch))).await.expect("ok");
    assert!(placed.into_inner().placement.is_some_and(|p| p.borrowed), "beyond its share");
    let got = c.tenants.get_quota(authed(ADMIN_TOKEN, get("acme"))).await.expect("get");
    let share = got.into_inner().shares.into_iter().find(|s| s.pool == "default").expect("share");
    assert_eq!(
        (share.borrowed.map(|r| r.cpu_millis), share.unused.map(|r| r.cpu_millis)),
        (Some(1_000), Some(0))
    );
    let more = place("acme", spec("more", 1_001));
    let refused = c.scheduler.place(authed(ADMIN_TOKEN, more)).await.expect_err("kept for beta");
    assert_eq!(
        (refused.code(), reason(&refused), meta(&refused, "held_for_lenders")),
        (Code::ResourceExhausted, "NOT_LENDABLE".into(), "1000".into())
    );

    // Priority: acme's urgent work preempts its own batch, which goes back into the queue.
    let urgent = pb::PlacementSpec { priority: 5, ..spec("urgent", 2_500) };
    let w = c.scheduler.place(authed(ADMIN_TOKEN, place("acme", urgent))).await.expect("ok");
    let events = w.into_inner().write.expect("write").quota_events;
    use pb::quota_event::Kind;
    let preempted: Vec<_> = events
        .iter()
        .filter(|e| e.kind() == Kind::Preempted)
        .map(|e| (e.placement_id.as_str(), e.by_placement_id.as_str(), e.requeued, e.reclaimed))
        .collect();
    assert_eq!(preempted, vec![("batch", "urgent", true, false)]);
    let r = pb::GetPlacementRequest {
        tenant_id: "acme".into(),
        placement_id: "batch".into(),
        read: None,
    };
    let batch = c.scheduler.get_placement(authed(ADMIN_TOKEN, r)).await.expect("get").into_inner();
    assert!(batch.placement.is_none() && batch.queued.is_some(), "re-queued: {batch:?}");

    // beta, within its guarantee, reclaims from the borrower (urgent borrows 1500) in one write.
    let own = c.scheduler.place(authed(ADMIN_TOKEN, place("beta", spec("own", 2_000)))).await;
    let events = own.expect("reclaimed").into_inner().write.expect("write").quota_events;
    let reclaimed: Vec<_> = events
        .iter()
        .filter(|e| e.kind() == Kind::Preempted)
        .map(|e| (e.tenant_id.as_str(), e.placement_id.as_str(), e.reclaimed))
        .collect();
    assert_eq!(reclaimed, vec![("acme", "urgent", true)]);
    cluster.shutdown().await;
}

/// A tenant at its quota asks to wait (queue_if_unavailable): it is queued with its position
/// and reason, visible in GetPlacement and ListQueue, survives a leader kill, and is placed
/// by the write that releases the other placement; GetPlacement then shows it placed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_placement_is_placed_after_release_across_leader_kill() {
    let (mut cluster, mut c) = setup().await;
    create_tenant(&mut c, "acme").await;
    register(&mut c, "w1", 10_000).await;
    let quota = pb::Quota {
        total: Some(pb::Limits { instances: Some(1), ..Default::default() }),
        ..Default::default()
    };
    let set =
        pb::SetQuotaRequest { request_id: rid(), tenant_id: "acme".into(), quota: Some(quota) };
    c.tenants.set_quota(authed(ADMIN_TOKEN, set)).await.expect("quota set");
    c.scheduler
        .place(authed(ADMIN_TOKEN, place("acme", spec("first", 1_000))))
        .await
        .expect("placed");
    let wait =
        pb::PlaceRequest { queue_if_unavailable: true, ..place("acme", spec("second", 1_000)) };
    let queued = c.scheduler.place(authed(ADMIN_TOKEN, wait)).await.expect("queued").into_inner();
    assert!(queued.placement.is_none());
    let q = queued.queued.expect("queued");
    assert_eq!((q.position, q.wait_reason.as_str()), (1, "QUOTA_EXCEEDED"));
    assert_eq!(q.wait_metadata["dimension"], "instances");

    let get = || pb::GetPlacementRequest {
        tenant_id: "acme".into(),
        placement_id: "second".into(),
        read: None,
    };
    let seen =
        c.scheduler.get_placement(authed(ADMIN_TOKEN, get())).await.expect("get").into_inner();
    assert!(seen.placement.is_none() && seen.queued.is_some(), "{seen:?}");
    let quota = pb::GetQuotaRequest { tenant_id: "acme".into(), read: None };
    let quota = c.tenants.get_quota(authed(ADMIN_TOKEN, quota)).await.expect("quota").into_inner();
    assert_eq!(quota.queued, 1);
    let list = pb::ListQueueRequest { tenant_id: "acme".into(), page: None, read: None };
    let listed =
        c.scheduler.list_queue(authed(ADMIN_TOKEN, list)).await.expect("list").into_inner();
    assert_eq!(listed.queued.len(), 1);

    // Kill the leader; the client's replica (a follower) stays up and finds the new leader.
    let leader = cluster.leader().await;
    cluster.stop(leader).await;
    let release_rid = rid();
    let released = poll("the release to commit under the new leader", || {
        let mut scheduler = c.scheduler.clone();
        let r = pb::ReleaseRequest {
            request_id: release_rid.clone(),
            tenant_id: "acme".into(),
            placement_id: "first".into(),
            fence: None,
        };
        async move { scheduler.release(authed(ADMIN_TOKEN, r)).await.ok() }
    })
    .await
    .into_inner();
    let write = released.write.expect("write");
    let placed = write
        .quota_events
        .iter()
        .any(|e| e.kind() == pb::quota_event::Kind::QueuedPlaced && e.placement_id == "second");
    assert!(placed || write.replayed, "{write:?}");

    let now = poll("second to be placed", || {
        let mut scheduler = c.scheduler.clone();
        async move {
            let r = scheduler.get_placement(authed(ADMIN_TOKEN, get())).await.ok()?.into_inner();
            r.placement
        }
    })
    .await;
    assert_eq!(now.workers, vec!["w1".to_string()]);
    let cancel = pb::CancelQueuedRequest {
        request_id: rid(),
        tenant_id: "acme".into(),
        placement_id: "second".into(),
    };
    let gone = c
        .scheduler
        .cancel_queued(authed(ADMIN_TOKEN, cancel))
        .await
        .expect_err("placed, not queued");
    assert_eq!((gone.code(), reason(&gone)), (Code::NotFound, "NOT_QUEUED".into()));
    cluster.shutdown().await;
}

/// Two tenants with the same workload id see only their own; deleting one releases everything
/// it held and the capacity returns to the workers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_ids_isolated_and_deletion_returns_capacity() {
    let (cluster, mut c) = setup().await;
    create_tenant(&mut c, "alpha").await;
    create_tenant(&mut c, "beta").await;
    register(&mut c, "w1", 10_000).await;
    let alpha = issue_token(&mut c, "alpha").await;
    let beta = issue_token(&mut c, "beta").await;
    c.scheduler.place(authed(&alpha, place("alpha", spec("web", 1_000)))).await.expect("alpha web");
    c.scheduler.place(authed(&beta, place("beta", spec("web", 3_000)))).await.expect("beta web");
    let get = |t: &str| pb::GetPlacementRequest {
        tenant_id: t.into(),
        placement_id: "web".into(),
        read: None,
    };
    let a =
        c.scheduler.get_placement(authed(&alpha, get("alpha"))).await.expect("get").into_inner();
    let b = c.scheduler.get_placement(authed(&beta, get("beta"))).await.expect("get").into_inner();
    let cpu = |p: pb::GetPlacementResponse| {
        p.placement.and_then(|p| p.spec).and_then(|s| s.resources).map(|r| r.cpu_millis)
    };
    assert_eq!((cpu(a), cpu(b)), (Some(1_000), Some(3_000)));

    let delete = pb::DeleteTenantRequest { request_id: rid(), tenant_id: "beta".into() };
    let deleted =
        c.tenants.delete_tenant(authed(ADMIN_TOKEN, delete)).await.expect("deleted").into_inner();
    assert_eq!((deleted.placements_released, deleted.tokens_revoked), (1, 1));
    let worker = pb::GetWorkerRequest { worker_id: "w1".into(), read: None };
    let w = c.workers.get_worker(authed(ADMIN_TOKEN, worker)).await.expect("worker").into_inner();
    assert_eq!(w.worker.and_then(|w| w.allocated).map(|a| a.cpu_millis), Some(1_000));
    let gone =
        c.scheduler.get_placement(authed(ADMIN_TOKEN, get("beta"))).await.expect_err("deleted");
    assert_eq!(gone.code(), Code::NotFound);
    cluster.shutdown().await;
}

/// Leases through the API: busy is LEASE_HELD with the holder; a fenced write with the live
/// token succeeds and with a stale one is STALE_FENCING_TOKEN; a retried request id returns
/// the first answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_fencing_and_retries() {
    let (cluster, mut c) = setup().await;
    create_tenant(&mut c, "acme").await;
    register(&mut c, "w1", 10_000).await;
    let acquire = |holder: &str, request_id: String| pb::AcquireRequest {
        request_id,
        tenant_id: "acme".into(),
        name: "leader".into(),
        holder: holder.into(),
        ttl_ms: 60_000,
    };
    let first_rid = rid();
    let granted = c
        .leases
        .acquire(authed(ADMIN_TOKEN, acquire("c1", first_rid.clone())))
        .await
        .expect("granted");
    let granted = granted.into_inner();
    let token = granted.lease.as_ref().expect("lease").token;
    assert_eq!(
        token,
        granted.write.as_ref().expect("write").log_index,
        "token is the grant's log index"
    );
    let retry =
        c.leases.acquire(authed(ADMIN_TOKEN, acquire("c1", first_rid))).await.expect("replayed");
    let retry = retry.into_inner();
    assert!(retry.write.as_ref().expect("write").replayed);
    assert_eq!(retry.lease, granted.lease);

    let busy = c.leases.acquire(authed(ADMIN_TOKEN, acquire("c2", rid()))).await.expect_err("held");
    assert_eq!((reason(&busy), meta(&busy, "holder")), ("LEASE_HELD".into(), "c1".into()));

    let fenced = |token: u64, id: &str| pb::PlaceRequest {
        fence: Some(pb::Fence { lease: "leader".into(), token }),
        ..place("acme", spec(id, 100))
    };
    c.scheduler.place(authed(ADMIN_TOKEN, fenced(token, "ok"))).await.expect("live token");
    let stale = c
        .scheduler
        .place(authed(ADMIN_TOKEN, fenced(token - 1, "stale")))
        .await
        .expect_err("stale");
    assert_eq!(
        (stale.code(), reason(&stale).as_str()),
        (Code::FailedPrecondition, "STALE_FENCING_TOKEN")
    );

    let release = pb::ReleaseLeaseRequest {
        request_id: rid(),
        tenant_id: "acme".into(),
        name: "leader".into(),
        token,
    };
    c.leases.release(authed(ADMIN_TOKEN, release)).await.expect("released");
    let get = pb::GetLeaseRequest { tenant_id: "acme".into(), name: "leader".into(), read: None };
    let gone = c.leases.get_lease(authed(ADMIN_TOKEN, get)).await.expect_err("released");
    assert_eq!(gone.code(), Code::NotFound);
    cluster.shutdown().await;
}

/// ListLeases lists a tenant's leases in name order, page by page, with their fencing tokens;
/// a tenant token lists only its own tenant's (another's is PERMISSION_DENIED, not empty);
/// hostile pages change nothing and echo nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_leases_is_scoped_paged_and_refuses_hostile_input() {
    let (cluster, mut c) = setup().await;
    create_tenant(&mut c, "acme").await;
    create_tenant(&mut c, "globex").await;
    let acme = issue_token(&mut c, "acme").await;
    let mut tokens = Vec::new();
    for (tenant, name) in [("acme", "b"), ("acme", "a"), ("acme", "c"), ("globex", "a")] {
        let acquire = pb::AcquireRequest {
            request_id: rid(),
            tenant_id: tenant.into(),
            name: name.into(),
            holder: format!("{tenant}-{name}"),
            ttl_ms: 60_000,
        };
        let granted = c.leases.acquire(authed(ADMIN_TOKEN, acquire)).await.expect("granted");
        tokens.push(granted.into_inner().lease.expect("a lease").token);
    }
    let list = |tenant: &str, after: &str, limit: u32| pb::ListLeasesRequest {
        tenant_id: tenant.into(),
        page: Some(pb::Page { after: after.into(), limit }),
        read: None,
    };
    let names = |r: pb::ListLeasesResponse| -> Vec<(String, u64)> {
        r.leases.into_iter().map(|l| (l.name, l.token)).collect()
    };
    let all = c.leases.list_leases(authed(&acme, list("acme", "", 0))).await.expect("listed");
    let expected =
        vec![("a".to_owned(), tokens[1]), ("b".to_owned(), tokens[0]), ("c".to_owned(), tokens[2])];
    assert_eq!(names(all.into_inner()), expected, "name order, with fencing tokens");
    let first = c.leases.list_leases(authed(&acme, list("acme", "", 2))).await.expect("page");
    assert_eq!(names(first.into_inner()), expected[..2]);
    let rest = c.leases.list_leases(authed(&acme, list("acme", "b", 2))).await.expect("page");
    assert_eq!(names(rest.into_inner()), expected[2..]);

    let denied = c.leases.list_leases(authed(&acme, list("globex", "", 0))).await;
    assert_eq!(denied.expect_err("another tenant's").code(), Code::PermissionDenied);
    let globex = c.leases.list_leases(authed(ADMIN_TOKEN, list("globex", "", 0))).await;
    assert_eq!(names(globex.expect("admin lists any").into_inner()), vec![("a".into(), tokens[3])]);

    // A huge `after`, a limit past the page bound, a missing or malformed tenant.
    let huge = "z".repeat(100_000);
    let after_all = c.leases.list_leases(authed(&acme, list("acme", &huge, 0))).await;
    assert!(after_all.expect("a key past every name").into_inner().leases.is_empty());
    let capped = c.leases.list_leases(authed(ADMIN_TOKEN, list("acme", "", u32::MAX))).await;
    assert_eq!(capped.expect("capped at the page bound").into_inner().leases.len(), 3);
    for tenant in ["", "no such tenant!", &"t".repeat(1_000)] {
        let refused = c.leases.list_leases(authed(ADMIN_TOKEN, list(tenant, "", 0))).await;
        let refused = refused.expect_err("refused");
        assert!(
            matches!(refused.code(), Code::InvalidArgument | Code::NotFound),
            "{tenant:.20}: {refused:?}"
        );
        assert!(refused.message().len() < 300, "no echo of the input");
    }
    cluster.shutdown().await;
}

/// Cost allocation is exact; cluster status shows every replica; health says SERVING;
/// reflection lists the public services and not the replicas' peer protocol.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn billing_status_health_and_reflection() {
    let (cluster, mut c) = setup().await;
    let r = pb::AllocateSharedCostRequest {
        total: "10000.00".into(),
        weights: vec!["1".into(), "1".into(), "1".into()],
        by_usage: None,
    };
    let parts = c
        .billing
        .allocate_shared_cost(authed(ADMIN_TOKEN, r))
        .await
        .expect("allocates")
        .into_inner()
        .parts;
    assert_eq!(parts, vec!["3333.34", "3333.33", "3333.33"]);
    let bad = pb::AllocateSharedCostRequest {
        total: "1.005".into(),
        weights: vec!["1".into()],
        by_usage: None,
    };
    let refused =
        c.billing.allocate_shared_cost(authed(ADMIN_TOKEN, bad)).await.expect_err("sub-cent");
    assert_eq!(reason(&refused), "INVALID_ALLOCATION");

    // The replica asked reports its own view; a follower learns the membership by replication.
    let status = poll("every replica in the status", || {
        let mut cluster = c.cluster.clone();
        async move {
            let status =
                cluster.status(authed(ADMIN_TOKEN, pb::StatusRequest {})).await.expect("status");
            let status = status.into_inner();
            (status.replicas.len() == 3).then_some(status)
        }
    })
    .await;
    assert_eq!(status.replicas.len(), 3, "{status:?}");
    assert!(status.leader_id.is_some());
    assert!(status.replicas.iter().all(|r| r.voter && r.role != "Unreachable"), "{status:?}");

    // A membership change sent to a follower is refused as retryable, changing nothing.
    let remove = pb::RemoveReplicaRequest { replica_id: 3 };
    let refused =
        c.cluster.remove_replica(authed(ADMIN_TOKEN, remove)).await.expect_err("follower");
    assert_eq!((refused.code(), reason(&refused).as_str()), (Code::Unavailable, "NOT_LEADER"));
    let status = c.cluster.status(authed(ADMIN_TOKEN, pb::StatusRequest {})).await.expect("status");
    assert_eq!(status.into_inner().replicas.iter().filter(|r| r.voter).count(), 3);

    let mut health = tonic_health::pb::health_client::HealthClient::new(c.channel.clone());
    let check = tonic_health::pb::HealthCheckRequest { service: "berth.v1.Scheduler".into() };
    let answer = health.check(check).await.expect("health").into_inner();
    assert_eq!(
        answer.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    use tonic_reflection::pb::v1 as reflection;
    let mut client =
        reflection::server_reflection_client::ServerReflectionClient::new(c.channel.clone());
    let list = reflection::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(reflection::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let mut answers = client
        .server_reflection_info(tokio_stream::iter([list]))
        .await
        .expect("reflection")
        .into_inner();
    let answer = answers.message().await.expect("answer").expect("one answer");
    let Some(reflection::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        answer.message_response
    else {
        panic!("not a service list: {answer:?}");
    };
    let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    names.sort();
    let expected = [
        "berth.v1.Billing",
        "berth.v1.Cluster",
        "berth.v1.Leases",
        "berth.v1.Scheduler",
        "berth.v1.Tenants",
        "berth.v1.Workers",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
    ];
    assert_eq!(names, expected, "reflection lists the public services, not the peer protocol");
    cluster.shutdown().await;
}

/// The admin RPCs and the reservation and keep-alive paths not covered above, each with its
/// error path: ListTenants, DrainWorker (drain and undrain), RemoveWorker (refused while work
/// runs, then with evict), Reserve / ConfirmReservation / CancelReservation, KeepAlive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_reservations_keepalive_and_listing() {
    let (cluster, mut c) = setup().await;
    create_tenant(&mut c, "acme").await;
    create_tenant(&mut c, "beta").await;
    let acme = issue_token(&mut c, "acme").await;

    let listed = c
        .tenants
        .list_tenants(authed(ADMIN_TOKEN, pb::ListTenantsRequest::default()))
        .await
        .expect("listed")
        .into_inner();
    let ids: Vec<&str> = listed.tenants.iter().map(|t| t.tenant_id.as_str()).collect();
    assert_eq!(ids, ["acme", "beta"]);
    let refused = c
        .tenants
        .list_tenants(authed(&acme, pb::ListTenantsRequest::default()))
        .await
        .expect_err("admin only");
    assert_eq!(reason(&refused), "ADMIN_REQUIRED");

    // A drained worker takes no new work; undrained, it does again.
    register(&mut c, "w1", 1_000).await;
    let drain = |worker: &str, drain: bool| pb::DrainWorkerRequest {
        request_id: rid(),
        worker_id: worker.into(),
        drain,
    };
    let drained =
        c.workers.drain_worker(authed(ADMIN_TOKEN, drain("w1", true))).await.expect("drained");
    assert!(!drained.into_inner().schedulable);
    let refused =
        c.scheduler.place(authed(&acme, place("acme", spec("a", 100)))).await.expect_err("drained");
    assert_eq!((reason(&refused), meta(&refused, "draining")), ("NO_CAPACITY".into(), "1".into()));
    let unknown =
        c.workers.drain_worker(authed(ADMIN_TOKEN, drain("nope", true))).await.expect_err("none");
    assert_eq!((unknown.code(), reason(&unknown).as_str()), (Code::NotFound, "WORKER_NOT_FOUND"));
    let undrained =
        c.workers.drain_worker(authed(ADMIN_TOKEN, drain("w1", false))).await.expect("undrained");
    assert!(undrained.into_inner().schedulable);
    c.scheduler.place(authed(&acme, place("acme", spec("a", 100)))).await.expect("placed");

    // A reservation holds capacity until confirmed (then it is a placement) or cancelled
    // (then exactly what it held is free again).
    let reserve = |id: &str, cpu: u64, ttl_ms: u64| pb::ReserveRequest {
        request_id: rid(),
        tenant_id: "acme".into(),
        spec: Some(spec(id, cpu)),
        ttl_ms,
        fence: None,
    };
    let held = c.scheduler.reserve(authed(&acme, reserve("r1", 300, 60_000))).await.expect("held");
    let held = held.into_inner().reservation.expect("reservation");
    assert!(held.expires_at_ms.is_some(), "{held:?}");
    let confirm = |id: &str| pb::ConfirmReservationRequest {
        request_id: rid(),
        tenant_id: "acme".into(),
        reservation_id: id.into(),
        fence: None,
    };
    let placed =
        c.scheduler.confirm_reservation(authed(&acme, confirm("r1"))).await.expect("confirmed");
    let placed = placed.into_inner().placement.expect("placement");
    assert_eq!((placed.expires_at_ms, placed.workers), (None, vec!["w1".to_owned()]));
    let again =
        c.scheduler.confirm_reservation(authed(&acme, confirm("r1"))).await.expect_err("placed");
    assert_eq!(reason(&again), "NOT_A_RESERVATION");
    let missing =
        c.scheduler.confirm_reservation(authed(&acme, confirm("r9"))).await.expect_err("none");
    assert_eq!(
        (missing.code(), reason(&missing).as_str()),
        (Code::NotFound, "PLACEMENT_NOT_FOUND")
    );
    let bad_ttl =
        c.scheduler.reserve(authed(&acme, reserve("r0", 100, 0))).await.expect_err("ttl 0");
    assert_eq!(bad_ttl.code(), Code::InvalidArgument);

    c.scheduler.reserve(authed(&acme, reserve("r2", 600, 60_000))).await.expect("held");
    let full =
        c.scheduler.reserve(authed(&acme, reserve("r3", 100, 60_000))).await.expect_err("full");
    assert_eq!(reason(&full), "NO_CAPACITY");
    let cancel = pb::CancelReservationRequest {
        request_id: rid(),
        tenant_id: "acme".into(),
        reservation_id: "r2".into(),
        fence: None,
    };
    let cancelled = c.scheduler.cancel_reservation(authed(&acme, cancel)).await.expect("cancelled");
    let released = cancelled.into_inner().released.expect("released");
    assert_eq!((released.cpu_millis, released.memory_mib), (600, 16));
    c.scheduler.reserve(authed(&acme, reserve("r3", 600, 60_000))).await.expect("room again");

    // Lease keep-alive: the holder's token extends the lease; any other token is refused.
    let acquire = pb::AcquireRequest {
        request_id: rid(),
        tenant_id: "acme".into(),
        name: "deploy".into(),
        holder: "ci-1".into(),
        ttl_ms: 30_000,
    };
    let lease = c.leases.acquire(authed(&acme, acquire)).await.expect("granted");
    let lease = lease.into_inner().lease.expect("lease");
    let keep = |token: u64| pb::KeepAliveRequest {
        request_id: rid(),
        tenant_id: "acme".into(),
        name: "deploy".into(),
        token,
    };
    let kept = c.leases.keep_alive(authed(&acme, keep(lease.token))).await.expect("kept alive");
    let kept = kept.into_inner().lease.expect("lease");
    assert_eq!((kept.token, kept.holder.as_str()), (lease.token, "ci-1"));
    assert!(kept.expires_at_ms >= lease.expires_at_ms, "{kept:?} vs {lease:?}");
    let stale =
        c.leases.keep_alive(authed(&acme, keep(lease.token + 1))).await.expect_err("wrong token");
    assert_eq!(reason(&stale), "STALE_FENCING_TOKEN");

    // RemoveWorker refuses while work runs there; with evict it releases that work.
    let remove =
        |evict: bool| pb::RemoveWorkerRequest { request_id: rid(), worker_id: "w1".into(), evict };
    let busy =
        c.workers.remove_worker(authed(ADMIN_TOKEN, remove(false))).await.expect_err("not empty");
    assert_eq!(
        (busy.code(), reason(&busy).as_str()),
        (Code::FailedPrecondition, "WORKER_NOT_EMPTY")
    );
    let tenant_refused =
        c.workers.remove_worker(authed(&acme, remove(true))).await.expect_err("admin only");
    assert_eq!(reason(&tenant_refused), "ADMIN_REQUIRED");
    let removed =
        c.workers.remove_worker(authed(ADMIN_TOKEN, remove(true))).await.expect("evicted");
    let evicted: BTreeSet<String> =
        removed.into_inner().evicted.into_iter().map(|e| e.placement_id).collect();
    assert_eq!(evicted, ["a", "r1", "r3"].map(String::from).into_iter().collect());
    let get = pb::GetWorkerRequest { worker_id: "w1".into(), read: None };
    let gone = c.workers.get_worker(authed(ADMIN_TOKEN, get)).await.expect_err("removed");
    assert_eq!(gone.code(), Code::NotFound);
    cluster.shutdown().await;
}

/// AddReplica through the API (on the leader): a new empty replica catches up and votes;
/// RemoveReplica takes it out again. Bad arguments are refused and change nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_and_remove_replica_through_the_api() {
    let (mut cluster, mut c) = setup().await;
    create_tenant(&mut c, "acme").await;
    let leader = cluster.leader().await;
    let mut l = clients(&cluster, leader).await;
    let bad = pb::AddReplicaRequest { replica_id: 0, peer_address: String::new() };
    let refused = l.cluster.add_replica(authed(ADMIN_TOKEN, bad)).await.expect_err("bad args");
    assert_eq!(refused.code(), Code::InvalidArgument);

    cluster.spawn_extra(4).await;
    let add =
        pb::AddReplicaRequest { replica_id: 4, peer_address: cluster.members[&4].addr.clone() };
    l.cluster.add_replica(authed(ADMIN_TOKEN, add)).await.expect("added");
    let voters = |s: &pb::StatusResponse| s.replicas.iter().filter(|r| r.voter).count();
    poll("replica 4 to vote and catch up", || {
        let mut cluster = l.cluster.clone();
        async move {
            let s = cluster.status(authed(ADMIN_TOKEN, pb::StatusRequest {})).await.ok()?;
            (voters(&s.into_inner()) == 4).then_some(())
        }
    })
    .await;
    let tenant = pb::GetTenantRequest {
        tenant_id: "acme".into(),
        read: Some(pb::ReadOptions { stale_ok: true }),
    };
    let new = clients(&cluster, 4).await;
    poll("replica 4 to have the state", || {
        let mut tenants = new.tenants.clone();
        let r = tenant.clone();
        async move { tenants.get_tenant(authed(ADMIN_TOKEN, r)).await.ok() }
    })
    .await;

    let remove = pb::RemoveReplicaRequest { replica_id: 4 };
    l.cluster.remove_replica(authed(ADMIN_TOKEN, remove)).await.expect("removed");
    let status = l.cluster.status(authed(ADMIN_TOKEN, pb::StatusRequest {})).await.expect("status");
    assert_eq!(voters(&status.into_inner()), 3);
    let token = issue_token(&mut c, "acme").await;
    let refused = l
        .cluster
        .add_replica(authed(&token, pb::AddReplicaRequest::default()))
        .await
        .expect_err("tenant token");
    assert_eq!(refused.code(), Code::PermissionDenied);
    cluster.shutdown().await;
}

/// SetPoolReserve through the API: it answers with its log index, a retry with the same
/// request id gets the first answer again, GetPool shows the split, a guarantee that would eat
/// into the reserve is refused (FAILED_PRECONDITION, POOL_OVERCOMMITTED) and changes nothing,
/// and tenants may not set or read a pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_reserve_through_the_api() {
    let (cluster, mut c) = setup().await;
    create_tenant(&mut c, "acme").await;
    let token = issue_token(&mut c, "acme").await;
    register(&mut c, "w1", 4_000).await;
    let res = |cpu_millis, memory_mib| Some(pb::Resources { cpu_millis, memory_mib });
    let set = pb::SetPoolReserveRequest {
        request_id: rid(),
        pool: String::new(),
        reserve: res(1_000, 0),
        remove: false,
    };
    let first = c.workers.set_pool_reserve(authed(ADMIN_TOKEN, set.clone())).await.expect("set");
    let first = first.into_inner().write.expect("write");
    assert!(first.log_index > 0 && !first.replayed);
    let again = c.workers.set_pool_reserve(authed(ADMIN_TOKEN, set.clone())).await.expect("retry");
    let again = again.into_inner().write.expect("write");
    assert_eq!((again.log_index, again.replayed), (first.log_index, true));
    let denied = c.workers.set_pool_reserve(authed(&token, set)).await.expect_err("tenant");
    assert_eq!(denied.code(), Code::PermissionDenied);

    let get = |pool: &str| pb::GetPoolRequest { pool: pool.into(), read: None };
    let pool = c.workers.get_pool(authed(ADMIN_TOKEN, get(""))).await.expect("get");
    let pool = pool.into_inner().pool.expect("pool");
    assert_eq!(
        (pool.pool.as_str(), pool.workers, pool.capacity, pool.reserve, pool.guaranteed),
        ("default", 1, res(4_000, 1 << 20), res(1_000, 0), res(0, 0))
    );

    let guarantee = |cpu_millis| pb::SetQuotaRequest {
        request_id: rid(),
        tenant_id: "acme".into(),
        quota: Some(pb::Quota {
            guarantees: [(
                "default".to_string(),
                pb::Guarantee { nominal: res(cpu_millis, 0), ..Default::default() },
            )]
            .into(),
            ..Default::default()
        }),
    };
    let refused = c.tenants.set_quota(authed(ADMIN_TOKEN, guarantee(3_001))).await;
    let refused = refused.expect_err("into the reserve");
    assert_eq!(
        (refused.code(), reason(&refused), meta(&refused, "guaranteed"), meta(&refused, "reserve")),
        (Code::FailedPrecondition, "POOL_OVERCOMMITTED".into(), "3001".into(), "1000".into())
    );
    c.tenants.set_quota(authed(ADMIN_TOKEN, guarantee(3_000))).await.expect("fits exactly");
    let pool = c.workers.get_pool(authed(ADMIN_TOKEN, get("default"))).await.expect("get");
    let pool = pool.into_inner().pool.expect("pool");
    assert_eq!((pool.guaranteed, pool.guarantees, pool.shortfall), (res(3_000, 0), 1, res(0, 0)));

    let missing = c.workers.get_pool(authed(ADMIN_TOKEN, get("nowhere"))).await;
    assert_eq!(missing.expect_err("no such pool").code(), Code::NotFound);
    let remove = pb::SetPoolReserveRequest {
        request_id: rid(),
        pool: "default".into(),
        reserve: None,
        remove: true,
    };
    c.workers.set_pool_reserve(authed(ADMIN_TOKEN, remove)).await.expect("removed");
    let pool = c.workers.get_pool(authed(ADMIN_TOKEN, get(""))).await.expect("get");
    assert_eq!(pool.into_inner().pool.and_then(|p| p.reserve), None);
    cluster.shutdown().await;
}
