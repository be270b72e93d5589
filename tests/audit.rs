//! The audit trail through the API: after known traffic (accepted, refused, rate-limited,
//! replayed) every replica holds the same chain, which verifies; a tenant reads only its own
//! records; a restarted replica keeps its trail and goes on chaining it; bad input is refused.

mod common;

use berth::api::{convert, pb};
use berth::scheduler::audit::verify;
use common::*;
use tonic::Code;

fn trail(tenant: &str, after_seq: u64) -> pb::GetAuditTrailRequest {
    pb::GetAuditTrailRequest {
        tenant_id: tenant.into(),
        after_seq,
        limit: 1_000,
        ..Default::default()
    }
}

/// Every record replica `id` keeps, and its head, once its head is at least `seq`.
async fn whole(cluster: &Cluster, id: u64, at_least: u64) -> (Vec<pb::AuditRecord>, u64) {
    let c = clients(cluster, id).await;
    let first = poll("the replica's head reaches the others'", || {
        let mut cl = c.cluster.clone();
        async move {
            let p = cl.get_audit_trail(authed(ADMIN_TOKEN, trail("", 0))).await.ok()?;
            let p = p.into_inner();
            (p.head_seq >= at_least).then_some(p)
        }
    })
    .await;
    let head = first.head_seq;
    let mut records = first.records;
    loop {
        let after = records.last().map_or(0, |r| r.seq);
        let mut cl = c.cluster.clone();
        let next = cl.get_audit_trail(authed(ADMIN_TOKEN, trail("", after))).await;
        let next = next.expect("a page").into_inner().records;
        if next.is_empty() {
            return (records, head);
        }
        records.extend(next);
    }
}

fn checked(records: &[pb::AuditRecord]) {
    let core: Vec<_> = records.iter().map(|r| convert::audit_record(r).expect("hex")).collect();
    assert_eq!(verify(&core), Ok(()), "the chain verifies");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_keep_the_same_verified_chain_of_known_traffic() {
    // Snapshots every 20 entries, keeping 5: a restarted replica cannot rebuild its records
    // from a log that was purged, so what it shows after a restart is what it kept.
    let mut cluster = Cluster::start_with(3, snapshotting_options, true).await;
    let leader = cluster.leader().await;
    let follower = cluster.running().into_iter().find(|id| *id != leader).expect("a follower");
    let mut c = clients(&cluster, follower).await;
    create_tenant(&mut c, "acme").await;
    create_tenant(&mut c, "other").await;
    let token = issue_token(&mut c, "acme").await;
    let limits = pb::RateLimits { daily_quota: 2, ..Default::default() };
    let set = pb::SetRateLimitsRequest {
        request_id: rid(),
        tenant_id: "acme".into(),
        limits: Some(limits),
    };
    c.tenants.set_rate_limits(authed(ADMIN_TOKEN, set)).await.expect("limits");
    let acquire = |name: &str| pb::AcquireRequest {
        request_id: rid(),
        tenant_id: "acme".into(),
        name: name.into(),
        holder: "me".into(),
        ttl_ms: 60_000,
    };
    let first = acquire("a");
    c.leases.acquire(authed(&token, first.clone())).await.expect("acquired");
    c.leases.acquire(authed(&token, first)).await.expect("replayed");
    let mut held = acquire("a");
    held.holder = "someone".into();
    c.leases.acquire(authed(&token, held)).await.expect_err("held");
    c.leases.acquire(authed(&token, acquire("b"))).await.expect_err("rate limited");

    let (records, head) = whole(&cluster, cluster.leader().await, 0).await;
    checked(&records);
    let outcomes: Vec<_> = records
        .iter()
        .filter(|r| r.tenant_id == "acme" && r.actor == "token:ci")
        .map(|r| (r.command.as_str(), r.outcome.as_str()))
        .collect();
    assert_eq!(
        outcomes,
        [
            ("AcquireLease a", "ok"),
            ("AcquireLease a", "replayed"),
            ("AcquireLease a", "LEASE_HELD"),
            ("AcquireLease b", "RATE_LIMITED")
        ]
    );
    assert!(records.iter().any(|r| r.command == "SetRateLimits" && r.actor == "admin"));
    for id in cluster.running() {
        let (theirs, _) = whole(&cluster, id, head).await;
        assert_eq!(theirs[..records.len()], records[..], "replica {id} holds the same chain");
    }

    // A tenant reads its own records only.
    let own = c.cluster.get_audit_trail(authed(&token, trail("acme", 0))).await;
    let own = own.expect("its own").into_inner().records;
    assert!(!own.is_empty() && own.iter().all(|r| r.tenant_id == "acme"));
    let other = c.cluster.get_audit_trail(authed(&token, trail("other", 0))).await;
    assert_eq!(other.expect_err("another's").code(), Code::PermissionDenied);
    let all = c.cluster.get_audit_trail(authed(&token, trail("", 0))).await;
    assert_eq!(all.expect_err("everyone's").code(), Code::InvalidArgument);
    let mut big = trail("", 0);
    big.limit = 1_001;
    let big = c.cluster.get_audit_trail(authed(ADMIN_TOKEN, big)).await;
    assert_eq!(big.expect_err("too many").code(), Code::InvalidArgument);
    let mut since = trail("acme", 0);
    since.since_ms = u64::MAX;
    let none = c.cluster.get_audit_trail(authed(&token, since)).await.expect("since");
    assert!(none.into_inner().records.is_empty());

    // A tenant deleted and created again is another tenant: its new token reads none of the
    // old one's records.
    let gone = issue_token(&mut c, "other").await;
    c.leases
        .acquire(authed(&gone, pb::AcquireRequest { tenant_id: "other".into(), ..acquire("x") }))
        .await
        .expect("the first other's lease");
    let delete = pb::DeleteTenantRequest { request_id: rid(), tenant_id: "other".into() };
    c.tenants.delete_tenant(authed(ADMIN_TOKEN, delete)).await.expect("deleted");
    create_tenant(&mut c, "other").await;
    let again = issue_token(&mut c, "other").await;
    let theirs = c.cluster.get_audit_trail(authed(&again, trail("other", 0))).await;
    let theirs = theirs.expect("its own").into_inner().records;
    assert!(theirs.iter().all(|r| r.command != "AcquireLease x"), "{theirs:?}");
    let admin = c.cluster.get_audit_trail(authed(ADMIN_TOKEN, trail("other", 0))).await;
    let admin = admin.expect("the admin's view").into_inner().records;
    assert!(admin.iter().any(|r| r.command == "AcquireLease x"), "the admin sees both");

    // Enough writes for every replica to snapshot and purge its log, then a follower
    // restarts: its records from before are those it kept, and it chains on.
    for i in 0..40 {
        create_tenant(&mut c, &format!("filler-{i}")).await;
    }
    let (before, head) = whole(&cluster, follower, 0).await;
    checked(&before);
    let purged = poll("the follower purged its log", || {
        let replica = cluster.replica(follower).clone();
        async move { replica.status().purged_index.filter(|i| *i > 10) }
    })
    .await;
    assert!(purged > 10);
    cluster.stop(follower).await;
    cluster.restart(follower).await;
    create_tenant(&mut clients(&cluster, leader).await, "later").await;
    let (after, _) = whole(&cluster, follower, head + 1).await;
    checked(&after);
    assert!(after.len() > before.len(), "{} records after the restart", after.len());
    assert_eq!(after[..before.len()], before[..], "kept across the restart");
    cluster.shutdown().await;
}
