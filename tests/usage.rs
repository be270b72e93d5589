//! Usage history through the public API: `GetUsage` answers exact quantities from each
//! replica's usage store; every replica's store is identical at the same command index,
//! including one restarted from its snapshot; retention is set with `Cluster.SetConfig`;
//! hostile queries and configs are refused.

mod common;

use berth::api::pb;
use berth::scheduler::windows::HOUR_MS;
use common::*;
use tonic::Code;

fn usage(tenant: &str, from_ms: u64, to_ms: u64, step_ms: u64) -> pb::GetUsageRequest {
    pb::GetUsageRequest { tenant_id: tenant.into(), from_ms, to_ms, step_ms, read: None }
}

/// The summed quantity of `item` over every bucket and pool.
fn total(r: &pb::GetUsageResponse, item: &str) -> u128 {
    let lines = r.buckets.iter().flat_map(|b| &b.lines);
    lines.filter(|l| l.item == item).map(|l| l.quantity.parse::<u128>().expect("a number")).sum()
}

/// Waits until log time (moved by a read's tick) reaches `at`: the leader stamps entries at
/// most a bounded step ahead of the time its peers last reported.
async fn log_time_reaches(c: &Clients, at: u64) {
    poll("log time to follow the clock", || {
        let mut billing = c.billing.clone();
        async move {
            let request = pb::GetStatementRequest { tenant_id: "acme".into(), read: None };
            let s = billing.get_statement(authed(ADMIN_TOKEN, request)).await.ok()?.into_inner();
            let current = s.current?;
            (current.to_ms >= at).then_some(())
        }
    })
    .await
}

/// Waits until every running replica reports the same usage-store hash at the same index.
async fn usage_hashes_agree(cluster: &Cluster) -> [u8; 32] {
    poll("usage stores to agree", || async {
        let mut seen = Vec::new();
        for id in cluster.running() {
            let (index, hash) = cluster.replica(id).usage_hash();
            seen.push((index, hash.wait().await.ok()?));
        }
        let first = seen[0];
        seen.iter().all(|s| *s == first).then_some(first.1)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_is_exact_and_the_same_on_every_replica() {
    let mut cluster = Cluster::start_with(3, snapshotting_options, true).await;
    let leader = cluster.leader().await;
    let follower = cluster.running().into_iter().find(|id| *id != leader).expect("a follower");
    let mut c = clients(&cluster, follower).await;
    create_tenant(&mut c, "acme").await;
    create_tenant(&mut c, "globex").await;
    let acme = issue_token(&mut c, "acme").await;
    register(&mut c, "w1", 64_000).await;

    // acme holds 2 cores for two hours (of log time), then 2 + 3 for an hour.
    let placed = c.scheduler.place(authed(&acme, place("acme", spec("a", 2_000)))).await;
    let t0 = placed.expect("placed").into_inner().write.expect("info").applied_at_ms;
    let now = berth::clock::Clock::now(&cluster.clock).0;
    cluster.clock.set_offset_ms(i64::try_from(t0 + 2 * HOUR_MS - now).expect("small"));
    log_time_reaches(&c, t0 + 2 * HOUR_MS).await;
    let placed = c.scheduler.place(authed(&acme, place("acme", spec("b", 3_000)))).await;
    let t1 = placed.expect("placed").into_inner().write.expect("info").applied_at_ms;
    cluster.clock.set_offset_ms(i64::try_from(t1 + HOUR_MS - now).expect("small"));
    log_time_reaches(&c, t1 + HOUR_MS).await;
    for id in ["a", "b"] {
        let release = pb::ReleaseRequest {
            request_id: rid(),
            tenant_id: "acme".into(),
            placement_id: id.into(),
            fence: None,
        };
        c.scheduler.release(authed(&acme, release)).await.expect("released");
    }
    let released = c.scheduler.place(authed(ADMIN_TOKEN, place("globex", spec("g", 1_000)))).await;
    let t2 = released.expect("placed").into_inner().write.expect("info").applied_at_ms;
    assert!(t1 >= t0 + 2 * HOUR_MS && t2 >= t1 + HOUR_MS, "log time followed the clock");

    // Hourly and raw series agree with what was held, to the unit.
    let from = t0 / HOUR_MS * HOUR_MS;
    let hourly = c.billing.get_usage(authed(&acme, usage("acme", from, t2 + HOUR_MS, HOUR_MS)));
    let hourly = hourly.await.expect("hourly usage").into_inner();
    assert_eq!(hourly.resolution, "hourly");
    assert_eq!(hourly.buckets.len(), 4 + usize::from(t2 + HOUR_MS - from > 4 * HOUR_MS));
    let cpu = total(&hourly, "cpu");
    // Both releases happen at or after t1 + 1h, before t2: between those bounds exactly.
    let least = 2_000 * u128::from(t1 - t0) + 5_000 * u128::from(HOUR_MS);
    let most = 2_000 * u128::from(t2 - t0) + 3_000 * u128::from(t2 - t1);
    assert!((least..=most).contains(&cpu), "{least} <= {cpu} <= {most}");
    let raw = c.billing.get_usage(authed(&acme, usage("acme", t0, t2 + 1, 60_000)));
    let raw = raw.await.expect("raw usage").into_inner();
    assert_eq!(raw.resolution, "raw");
    assert_eq!(total(&raw, "cpu"), cpu, "raw and hourly series agree");
    assert_eq!(total(&raw, "memory"), total(&hourly, "memory"));

    // Every replica's store is identical at the same index. A replica that stops while the
    // others write on (and snapshot, and purge their logs) catches up by snapshot: its store
    // comes from the snapshot's dump and agrees again.
    let before = usage_hashes_agree(&cluster).await;
    cluster.stop(follower).await;
    let mut on_leader = clients(&cluster, leader).await;
    for i in 0..30 {
        let id = format!("g{i}");
        let placed = on_leader.scheduler.place(authed(ADMIN_TOKEN, place("globex", spec(&id, 10))));
        placed.await.expect("placed");
        let release = pb::ReleaseRequest {
            request_id: rid(),
            tenant_id: "globex".into(),
            placement_id: id,
            fence: None,
        };
        on_leader.scheduler.release(authed(ADMIN_TOKEN, release)).await.expect("released");
    }
    let snapshotted = cluster.replica(leader).status().snapshot_index.unwrap_or(0);
    cluster.restart(follower).await;
    let after = usage_hashes_agree(&cluster).await;
    assert_ne!(before, after, "globex's history was recorded");
    let status = cluster.replica(follower).status();
    assert!(status.snapshot_index.unwrap_or(0) >= snapshotted, "caught up by snapshot: {status:?}");
    let mut c = clients(&cluster, follower).await;
    let again =
        c.billing.get_usage(authed(ADMIN_TOKEN, usage("acme", from, t2 + HOUR_MS, HOUR_MS)));
    assert_eq!(again.await.expect("after a restart").into_inner().buckets, hourly.buckets);

    // Hostile queries.
    let long_ago = (t2 - 100 * 24 * HOUR_MS) / HOUR_MS * HOUR_MS;
    for (request, token, code, why) in [
        (usage("acme", t0, t2, 0), acme.as_str(), Code::InvalidArgument, "INVALID_ARGUMENT"),
        (usage("acme", t2, t0, HOUR_MS), &acme, Code::InvalidArgument, "INVALID_ARGUMENT"),
        (usage("acme", 0, u64::MAX, 1_000), &acme, Code::InvalidArgument, "INVALID_ARGUMENT"),
        (usage("acme", long_ago, t2, HOUR_MS), &acme, Code::OutOfRange, "USAGE_EXPIRED"),
        (usage("globex", t0, t2, HOUR_MS), &acme, Code::PermissionDenied, ""),
        (usage("nobody", t0, t2, HOUR_MS), ADMIN_TOKEN, Code::NotFound, ""),
        (usage("bad id!", t0, t2, HOUR_MS), ADMIN_TOKEN, Code::InvalidArgument, ""),
    ] {
        let refused = c.billing.get_usage(authed(token, request.clone())).await.expect_err("bad");
        assert_eq!(refused.code(), code, "{request:?}: {refused:?}");
        if !why.is_empty() {
            assert_eq!(reason(&refused), why, "{request:?}");
        }
        assert!(refused.message().len() < 300, "short: {}", refused.message());
    }
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_is_set_by_the_admin_within_bounds() {
    let (cluster, mut c) = setup().await;
    create_tenant(&mut c, "acme").await;
    let acme = issue_token(&mut c, "acme").await;
    let get = pb::GetConfigRequest { read: None };
    let config = c.cluster.get_config(authed(ADMIN_TOKEN, get)).await.expect("config");
    let config = config.into_inner().config.expect("a config");
    assert_eq!(config.usage_raw_retention_ms, 7 * 24 * HOUR_MS);
    let set = |config: pb::ClusterConfig| pb::SetConfigRequest {
        request_id: rid(),
        config: Some(config),
    };
    let with = |raw: u64, hourly: u64, daily: u64| pb::ClusterConfig {
        usage_raw_retention_ms: raw,
        usage_hourly_retention_ms: hourly,
        usage_daily_retention_ms: daily,
        ..config
    };
    let day = 24 * HOUR_MS;
    for (request, token, code) in [
        (set(with(0, day, day)), ADMIN_TOKEN, Code::InvalidArgument),
        (set(with(2 * day, day, 3 * day)), ADMIN_TOKEN, Code::InvalidArgument),
        (set(with(day, 401 * day, 500 * day)), ADMIN_TOKEN, Code::InvalidArgument),
        (set(with(day, day, u64::MAX)), ADMIN_TOKEN, Code::InvalidArgument),
        (
            set(pb::ClusterConfig { placement_algorithm: 7, ..config }),
            ADMIN_TOKEN,
            Code::InvalidArgument,
        ),
        (
            pb::SetConfigRequest { request_id: rid(), config: None },
            ADMIN_TOKEN,
            Code::InvalidArgument,
        ),
        (set(with(day, day, day)), acme.as_str(), Code::PermissionDenied),
    ] {
        let refused = c.cluster.set_config(authed(token, request.clone())).await.expect_err("bad");
        assert_eq!(refused.code(), code, "{request:?}: {refused:?}");
        assert!(refused.message().len() < 300, "short: {}", refused.message());
    }
    let refused = c.cluster.get_config(authed(&acme, get)).await.expect_err("admin");
    assert_eq!(refused.code(), Code::PermissionDenied);
    let unchanged = c.cluster.get_config(authed(ADMIN_TOKEN, get)).await.expect("config");
    assert_eq!(unchanged.into_inner().config.as_ref(), Some(&config), "refusals changed nothing");

    let request = set(with(2 * HOUR_MS, 3 * day, 30 * day));
    let first = c.cluster.set_config(authed(ADMIN_TOKEN, request.clone())).await.expect("set");
    let first = first.into_inner().write.expect("info");
    assert!(first.log_index > 0);
    let retry = c.cluster.set_config(authed(ADMIN_TOKEN, request)).await.expect("replayed");
    let retry = retry.into_inner().write.expect("info");
    assert!(retry.replayed && retry.log_index == first.log_index, "{retry:?}");
    let now = c.cluster.get_config(authed(ADMIN_TOKEN, get)).await.expect("config");
    assert_eq!(now.into_inner().config, Some(with(2 * HOUR_MS, 3 * day, 30 * day)));
    // A raw range older than two hours is now refused, naming the retention.
    let t = berth::clock::Clock::now(&cluster.clock).0;
    let old = c.billing.get_usage(authed(&acme, usage("acme", t - 3 * HOUR_MS, t, 60_000)));
    let old = old.await.expect_err("expired");
    assert_eq!((old.code(), reason(&old).as_str()), (Code::OutOfRange, "USAGE_EXPIRED"));
    cluster.shutdown().await;
}
