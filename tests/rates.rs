//! Rate limits through the API: concurrent writes through every replica share one bucket and
//! one day, a parent caps its children together, reads are limited per replica, a refusal is
//! `RESOURCE_EXHAUSTED`/`RATE_LIMITED` with `retry_after_ms` and a RetryInfo and is counted on
//! `/metrics`, and only the admin may set limits, within their bounds.

mod common;

use berth::api::pb;
use common::scrape::*;
use common::*;
use std::time::{Duration, Instant};
use tonic::Code;
use tonic_types::StatusExt;

const DAY_MS: u64 = 86_400_000;

async fn create_child(c: &mut Clients, id: &str, parent: &str) {
    let r = pb::CreateTenantRequest {
        request_id: rid(),
        tenant_id: id.into(),
        parent_id: parent.into(),
        ..Default::default()
    };
    c.tenants.create_tenant(authed(ADMIN_TOKEN, r)).await.expect("tenant created");
}

async fn set_limits(c: &mut Clients, tenant: &str, limits: pb::RateLimits) {
    let r = pb::SetRateLimitsRequest {
        request_id: rid(),
        tenant_id: tenant.into(),
        limits: Some(limits),
    };
    c.tenants.set_rate_limits(authed(ADMIN_TOKEN, r)).await.expect("rate limits set");
}

/// `org` with children `team-a` and `team-b`; their tokens.
async fn org(c: &mut Clients) -> (String, String) {
    create_tenant(c, "org").await;
    create_child(c, "team-a", "org").await;
    create_child(c, "team-b", "org").await;
    (issue_token(c, "team-a").await, issue_token(c, "team-b").await)
}

/// One write (a lease acquired) by `tenant` with `token`.
async fn write(c: &mut Clients, tenant: &str, token: &str) -> Result<(), tonic::Status> {
    let r = pb::AcquireRequest {
        request_id: rid(),
        tenant_id: tenant.into(),
        name: rid(),
        holder: "me".into(),
        ttl_ms: 60_000,
    };
    c.leases.acquire(authed(token, r)).await.map(drop)
}

/// A refusal as the contract says: code, reason, limit, the wait in the metadata and as a
/// RetryInfo, both at most `max_ms`.
fn assert_rate_limited(status: &tonic::Status, limit: &str, max_ms: u64) -> u64 {
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(reason(status), "RATE_LIMITED");
    assert_eq!(meta(status, "limit"), limit);
    let wait: u64 = meta(status, "retry_after_ms").parse().expect("retry_after_ms");
    assert!((1..=max_ms).contains(&wait), "retry after {wait} ms");
    let retry = status.get_details_retry_info().expect("a RetryInfo");
    assert_eq!(retry.retry_delay, Some(Duration::from_millis(wait)));
    wait
}

/// Sends `per_replica` writes per tenant through each replica at once; the accepted count
/// per tenant, and every refusal checked.
async fn concurrently(
    cluster: &Cluster,
    tenants: &[(&'static str, String)],
    per_replica: usize,
    limit: &'static str,
    max_wait_ms: u64,
) -> Vec<(usize, usize)> {
    let mut tasks = Vec::new();
    for id in cluster.running() {
        for (t, (tenant, token)) in tenants.iter().enumerate() {
            let mut c = clients(cluster, id).await;
            let (tenant, token) = (*tenant, token.clone());
            tasks.push(tokio::spawn(async move {
                let mut counts = (t, 0, 0);
                for _ in 0..per_replica {
                    match write(&mut c, tenant, &token).await {
                        Ok(()) => counts.1 += 1,
                        Err(status) => {
                            assert_rate_limited(&status, limit, max_wait_ms);
                            counts.2 += 1;
                        }
                    }
                }
                counts
            }));
        }
    }
    let mut per_tenant = vec![(0, 0); tenants.len()];
    for task in tasks {
        let (t, accepted, refused) = task.await.expect("writer task");
        per_tenant[t].0 += accepted;
        per_tenant[t].1 += refused;
    }
    per_tenant
}

/// `RATE_LIMITED` refusals of `tenant`'s `rpc` counted by each replica's `/metrics`.
async fn refusals_counted(cluster: &Cluster, tenant: &str, rpc: &str) -> Vec<f64> {
    let mut counted = Vec::new();
    for id in cluster.running() {
        let s = scrape(cluster, id).await;
        counted.push(errors(&s, tenant, rpc, "RESOURCE_EXHAUSTED", "RATE_LIMITED").unwrap_or(0.0));
    }
    counted
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_through_every_replica_share_one_day_and_the_parent_caps_both() {
    let (cluster, mut c) = setup().await;
    let (a, b) = org(&mut c).await;
    set_limits(&mut c, "org", pb::RateLimits { daily_quota: 12, ..Default::default() }).await;
    set_limits(&mut c, "team-a", pb::RateLimits { daily_quota: 8, ..Default::default() }).await;
    let tenants = [("team-a", a), ("team-b", b)];
    // 60 writes at once, 10 per tenant through each of the 3 replicas.
    let counts = concurrently(&cluster, &tenants, 10, "daily_quota", DAY_MS).await;
    let accepted = counts[0].0 + counts[1].0;
    assert_eq!(accepted, 12, "org's day holds across replicas and children: {counts:?}");
    assert!(counts[0].0 <= 8, "team-a's own day: {counts:?}");
    assert_eq!(counts[0].0 + counts[0].1 + counts[1].0 + counts[1].1, 60);

    // The day's counts as the state has them.
    let r = pb::GetQuotaRequest { tenant_id: "org".into(), read: None };
    let got = c.tenants.get_quota(authed(ADMIN_TOKEN, r)).await.expect("quota").into_inner();
    let rate = got.rate.expect("a rate status");
    assert_eq!(rate.writes_today, 12);
    assert_eq!(got.rate_limits.map(|l| l.daily_quota), Some(12));
    let r = pb::GetQuotaRequest { tenant_id: "team-a".into(), read: None };
    let got = c.tenants.get_quota(authed(ADMIN_TOKEN, r)).await.expect("quota").into_inner();
    let lineage: Vec<_> =
        got.rate.expect("status").lineage.into_iter().map(|l| l.tenant_id).collect();
    assert_eq!(lineage, ["team-a", "org"], "nearest first");

    // Every refusal was counted where it arrived, under its own tenant.
    for (t, (tenant, _)) in tenants.iter().enumerate() {
        let counted = refusals_counted(&cluster, tenant, "Leases/Acquire").await;
        let sum: f64 = counted.iter().sum();
        assert_eq!(sum, counts[t].1 as f64, "{tenant}'s refusals on /metrics: {counted:?}");
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_bucket_holds_cluster_wide_not_per_replica() {
    let (cluster, mut c) = setup().await;
    let (a, _) = org(&mut c).await;
    // From before the limits are set: the bucket refills from their log time.
    let started = Instant::now();
    set_limits(&mut c, "team-a", pb::RateLimits { token_rate: 2, burst_rate: 10, daily_quota: 0 })
        .await;
    // 45 writes at once through 3 replicas: a bucket per replica would let 30 in.
    let counts = concurrently(&cluster, &[("team-a", a.clone())], 15, "token_rate", 1_000).await;
    let elapsed_ms = u64::try_from(started.elapsed().as_millis()).expect("ms");
    let most = 10 + usize::try_from(2 * elapsed_ms / 1_000).expect("small") + 1;
    let (accepted, refused) = counts[0];
    assert!(
        (10..=most).contains(&accepted) && accepted < 30,
        "{accepted} accepted, {refused} refused in {elapsed_ms} ms (at most {most})"
    );
    // A refused request id goes through once the bucket has refilled (a new id for each
    // try until one is refused).
    let (request, wait) = loop {
        let request = pb::AcquireRequest {
            request_id: rid(),
            tenant_id: "team-a".into(),
            name: rid(),
            holder: "me".into(),
            ttl_ms: 60_000,
        };
        if let Err(status) = c.leases.acquire(authed(&a, request.clone())).await {
            break (request, assert_rate_limited(&status, "token_rate", 1_000));
        }
    };
    tokio::time::sleep(Duration::from_millis(wait)).await;
    let retried = poll("the refused request id goes through after its wait", || {
        let mut leases = c.leases.clone();
        let request = request.clone();
        let a = a.clone();
        async move { leases.acquire(authed(&a, request)).await.ok() }
    })
    .await
    .into_inner();
    assert!(!retried.write.expect("write info").replayed, "judged again, not replayed");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_are_limited_per_replica_and_the_admin_is_not() {
    let (cluster, mut c) = setup().await;
    let (a, _) = org(&mut c).await;
    // One read a second, three at once, set on the parent.
    set_limits(&mut c, "org", pb::RateLimits { token_rate: 1, burst_rate: 3, daily_quota: 0 })
        .await;
    let read = || pb::GetQuotaRequest { tenant_id: "team-a".into(), read: None };
    let replicas = cluster.running();
    for (i, id) in replicas.iter().enumerate() {
        let mut c = clients(&cluster, *id).await;
        // Spend this replica's bucket (once it has applied the limits).
        let refused = poll("the replica limits team-a's reads", || {
            let mut tenants = c.tenants.clone();
            let a = a.clone();
            async move { tenants.get_quota(authed(&a, read())).await.err() }
        })
        .await;
        assert_rate_limited(&refused, "token_rate", 1_000);
        assert_eq!(meta(&refused, "tenant"), "org", "the parent's rate limits the child");
        // The next replica's bucket is its own: still full, though this one is empty.
        if let Some(next) = replicas.get(i + 1) {
            let mut n = clients(&cluster, *next).await;
            n.tenants.get_quota(authed(&a, read())).await.expect("another replica's bucket");
        }
        for _ in 0..5 {
            c.tenants.get_quota(authed(ADMIN_TOKEN, read())).await.expect("the admin reads");
        }
        // Writes have their own bucket, in the log: reads spent none of it.
        write(&mut c, "team-a", &a).await.expect("a write");
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_admin_sets_rate_limits_and_bad_ones_change_nothing() {
    let (cluster, mut c) = setup().await;
    let (a, _) = org(&mut c).await;
    let limits = |token_rate, burst_rate, daily_quota| pb::RateLimits {
        token_rate,
        burst_rate,
        daily_quota,
    };
    let request = |tenant: &str, l| pb::SetRateLimitsRequest {
        request_id: rid(),
        tenant_id: tenant.into(),
        limits: Some(l),
    };
    let denied = c
        .tenants
        .set_rate_limits(authed(&a, request("team-a", limits(1_000_000, 0, 0))))
        .await
        .expect_err("a tenant may not lift its own limits");
    assert_eq!(denied.code(), Code::PermissionDenied);
    let bad = [
        (limits(1_000_001, 0, 0), "token_rate"),
        (limits(5, 1_000_001, 0), "burst_rate"),
        (limits(0, 5, 0), "burst_rate"),
        (limits(0, 0, 1_000_000_000_001), "daily_quota"),
    ];
    for (l, field) in bad {
        let refused = c
            .tenants
            .set_rate_limits(authed(ADMIN_TOKEN, request("team-a", l)))
            .await
            .expect_err("out of bounds");
        assert_eq!(refused.code(), Code::InvalidArgument, "{l:?}");
        assert_eq!(meta(&refused, "field"), field);
    }
    let missing = c
        .tenants
        .set_rate_limits(authed(ADMIN_TOKEN, request("nobody", limits(1, 0, 0))))
        .await
        .expect_err("no such tenant");
    assert_eq!(missing.code(), Code::NotFound);
    let hostile = c
        .tenants
        .set_rate_limits(authed(ADMIN_TOKEN, request(&"X".repeat(100_000), limits(1, 0, 0))))
        .await
        .expect_err("bad tenant id");
    assert_eq!(hostile.code(), Code::InvalidArgument);
    assert!(hostile.message().len() < 300, "the input is not echoed");
    let r = pb::GetQuotaRequest { tenant_id: "team-a".into(), read: None };
    let got = c.tenants.get_quota(authed(ADMIN_TOKEN, r)).await.expect("quota").into_inner();
    assert_eq!(got.rate_limits, None, "nothing was set");

    // Idempotent by request id.
    let once = request("team-a", limits(7, 0, 0));
    let first = c.tenants.set_rate_limits(authed(ADMIN_TOKEN, once.clone())).await.expect("set");
    let again = c.tenants.set_rate_limits(authed(ADMIN_TOKEN, once)).await.expect("retried");
    let first = first.into_inner().write.expect("write info");
    let again = again.into_inner().write.expect("write info");
    assert!(again.replayed && again.log_index == first.log_index);
    cluster.shutdown().await;
}
