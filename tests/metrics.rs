//! The metrics port: after known traffic, a scrape counts exactly that traffic per tenant, RPC,
//! code and reason, names at most the configured number of tenants, labels a path it does not
//! serve as `_unknown`, shows each replica's Raft view and each tenant's usage and quota, and
//! is well-formed OpenMetrics.

mod common;

use berth::api::pb;
use common::scrape::*;
use common::*;
use tokio::io::AsyncWriteExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scrape_counts_known_traffic_exactly_per_tenant() {
    let cluster = Cluster::start_with(3, fast_options, true).await;
    let leader = cluster.leader().await;
    let follower = *cluster.members.keys().find(|id| **id != leader).expect("a follower");
    // Through a follower, so forwarded writes are counted where they arrived.
    let mut c = clients(&cluster, follower).await;

    register(&mut c, "w1", 64_000).await;
    for tenant in ["alpha", "beta", "gamma", "delta"] {
        create_tenant(&mut c, tenant).await;
    }
    let quota = pb::Quota {
        total: Some(pb::Limits { jobs: Some(2), ..Default::default() }),
        ..Default::default()
    };
    let set =
        pb::SetQuotaRequest { request_id: rid(), tenant_id: "alpha".into(), quota: Some(quota) };
    c.tenants.set_quota(authed(ADMIN_TOKEN, set)).await.expect("quota set");
    // A limit as large as a u64 goes: more than a gauge holds, written as the largest one.
    let quota = pb::Quota {
        total: Some(pb::Limits { cpu_millis: Some(u64::MAX), ..Default::default() }),
        ..Default::default()
    };
    let set =
        pb::SetQuotaRequest { request_id: rid(), tenant_id: "beta".into(), quota: Some(quota) };
    c.tenants.set_quota(authed(ADMIN_TOKEN, set)).await.expect("quota set");
    let alpha = issue_token(&mut c, "alpha").await;
    let beta = issue_token(&mut c, "beta").await;

    // alpha: two placements fit its quota of 2 jobs, the third does not.
    for i in 0..3 {
        let placed =
            c.scheduler.place(authed(&alpha, place("alpha", spec(&format!("a{i}"), 100)))).await;
        match i {
            0 | 1 => {
                placed.expect("within quota");
            }
            _ => assert_eq!(reason(&placed.expect_err("over quota")), "QUOTA_EXCEEDED"),
        }
    }
    // beta: one placement of its own, and one attempt on alpha's tenant, counted as beta's.
    c.scheduler.place(authed(&beta, place("beta", spec("b0", 100)))).await.expect("placed");
    let denied = c.scheduler.place(authed(&beta, place("alpha", spec("b1", 100)))).await;
    assert_eq!(denied.expect_err("another tenant").code(), tonic::Code::PermissionDenied);
    // A token nobody issued: refused before any tenant is known.
    let unknown = c.scheduler.place(authed("berth_nobody", place("beta", spec("x", 1)))).await;
    assert_eq!(unknown.expect_err("unknown token").code(), tonic::Code::Unauthenticated);
    // A path the server does not serve: counted, but under one bounded label.
    let mut grpc = tonic::client::Grpc::new(c.channel.clone());
    grpc.ready().await.expect("ready");
    let path = tonic::codegen::http::uri::PathAndQuery::from_static("/evil.Spray/AnyName123");
    let codec = tonic_prost::ProstCodec::<pb::GetQuotaRequest, pb::GetQuotaResponse>::default();
    let unserved =
        grpc.unary(authed(ADMIN_TOKEN, pb::GetQuotaRequest::default()), path, codec).await;
    assert_eq!(unserved.expect_err("not served").code(), tonic::Code::Unimplemented);

    let s = scrape(&cluster, follower).await;
    let place_rpc = "Scheduler/Place";
    assert_eq!(requests(&s, "alpha", place_rpc), Some(3.0));
    assert_eq!(errors(&s, "alpha", place_rpc, "RESOURCE_EXHAUSTED", "QUOTA_EXCEEDED"), Some(1.0));
    assert_eq!(
        value(
            &s,
            "berth_api_request_duration_seconds_count",
            &[("tenant_id", "alpha"), ("rpc", place_rpc)]
        ),
        Some(3.0)
    );
    assert_eq!(requests(&s, "beta", place_rpc), Some(2.0));
    assert_eq!(errors(&s, "beta", place_rpc, "PERMISSION_DENIED", "PERMISSION_DENIED"), Some(1.0));
    assert_eq!(errors(&s, "alpha", place_rpc, "PERMISSION_DENIED", "PERMISSION_DENIED"), None);
    assert_eq!(errors(&s, "_none", place_rpc, "UNAUTHENTICATED", "UNAUTHENTICATED"), Some(1.0));
    assert_eq!(requests(&s, "_none", "Workers/RegisterWorker"), Some(1.0));
    // Three tenants are named (the test cap); the fourth seen is `_other`.
    for tenant in ["alpha", "beta", "gamma"] {
        assert_eq!(requests(&s, tenant, "Tenants/CreateTenant"), Some(1.0), "{tenant}");
    }
    assert_eq!(requests(&s, "delta", "Tenants/CreateTenant"), None);
    assert_eq!(requests(&s, "_other", "Tenants/CreateTenant"), Some(1.0));
    assert_eq!(requests(&s, "_none", "_unknown"), Some(1.0));
    assert_eq!(errors(&s, "_none", "_unknown", "UNIMPLEMENTED", "UNIMPLEMENTED"), Some(1.0));
    let named: std::collections::BTreeSet<&str> =
        s.keys().filter_map(|(_, labels)| labels.get("tenant_id").map(String::as_str)).collect();
    assert_eq!(named, ["_none", "_other", "alpha", "beta", "gamma"].into_iter().collect());
    assert!(!s.keys().any(|(_, l)| l.get("rpc").is_some_and(|r| r.contains("evil"))));

    // The replica's view and the tenants' state, as of what it applied (poll: a follower
    // applies a moment after the leader answers).
    let s = poll("alpha's usage on the follower", || async {
        let s = scrape(&cluster, follower).await;
        let jobs = [("tenant_id", "alpha"), ("dimension", "jobs")];
        (value(&s, "berth_tenant_usage", &jobs) == Some(2.0)).then_some(s)
    })
    .await;
    let jobs = [("tenant_id", "alpha"), ("dimension", "jobs")];
    assert_eq!(value(&s, "berth_tenant_quota_limit", &jobs), Some(2.0));
    let huge = [("tenant_id", "beta"), ("dimension", "cpu_millis")];
    assert_eq!(value(&s, "berth_tenant_quota_limit", &huge), Some(i64::MAX as f64));
    assert_eq!(
        value(&s, "berth_tenant_usage", &[("tenant_id", "alpha"), ("dimension", "cpu_millis")]),
        Some(200.0)
    );
    assert_eq!(
        value(&s, "berth_tenant_usage", &[("tenant_id", "beta"), ("dimension", "jobs")]),
        Some(1.0)
    );
    assert_eq!(value(&s, "berth_replica_role", &[("role", "follower")]), Some(1.0));
    assert_eq!(value(&s, "berth_replica_role", &[("role", "leader")]), Some(0.0));
    assert_eq!(value(&s, "berth_replica_leader_id", &[]), Some(leader as f64));
    assert!(value(&s, "berth_replica_applied_index", &[]).is_some_and(|i| i > 0.0));
    assert!(value(&s, "berth_replica_log_bytes", &[]).is_some_and(|b| b > 0.0));
    assert!(value(&s, "berth_wal_sync_duration_seconds_count", &[]).is_some_and(|n| n > 0.0));
    assert!(value(&s, "berth_proposer_batch_commands_count", &[]).is_some_and(|n| n > 0.0));
    assert!(value(&s, "process_cpu_seconds_total", &[]).is_some_and(|s| s > 0.0));

    // Every metric served is documented, and every metric the shipped alert rules and
    // dashboard use is one Berth serves (documented, so a typo there fails here).
    let documented = documented_metrics();
    for (name, _) in s.keys() {
        let family = ["_total", "_bucket", "_count", "_sum"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .unwrap_or(name);
        assert!(documented.contains(family), "{family} is served but not in docs/metrics.md");
    }
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for shipped in ["cluster/prometheus/alerts.yml", "cluster/grafana/berth-tenant-health.json"] {
        let text = std::fs::read_to_string(root.join(shipped)).expect("shipped file");
        for used in metric_names(&text) {
            let family = ["_total", "_bucket"].iter().find_map(|x| used.strip_suffix(x));
            let family = family.unwrap_or(&used);
            assert!(
                documented.contains(family),
                "{shipped} uses {used}, which Berth does not serve"
            );
        }
    }

    // Of a snapshot's bytes, the replicated state is a part (the rest: the usage store's
    // changes since its base).
    let made = c.cluster.create_snapshot(authed(ADMIN_TOKEN, pb::CreateSnapshotRequest {})).await;
    let on = made.expect("a snapshot").into_inner().snapshot.expect("its summary").replica_id;
    let s = scrape(&cluster, on).await;
    let whole = value(&s, "berth_replica_snapshot_bytes", &[]).expect("snapshot bytes");
    let state = value(&s, "berth_replica_snapshot_state_bytes", &[]).expect("its state's bytes");
    assert!(state > 0.0 && state <= whole, "state {state} of {whole} bytes");

    // The leader reports each follower's progress, and its calls to them.
    let s = scrape(&cluster, leader).await;
    assert_eq!(value(&s, "berth_replica_role", &[("role", "leader")]), Some(1.0));
    for id in cluster.members.keys().filter(|id| **id != leader) {
        let follower = id.to_string();
        let labels = [("follower", follower.as_str())];
        assert!(value(&s, "berth_replica_follower_matched_index", &labels).is_some(), "{id}");
        let append = [("peer", follower.as_str()), ("rpc", "append_entries")];
        assert!(
            value(&s, "berth_peer_rpc_duration_seconds_count", &append).is_some_and(|n| n > 0.0)
        );
    }
}

/// Every `berth_…` name in `text`.
fn metric_names(text: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("berth_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        names.insert(name);
    }
    names
}

/// The metrics docs/metrics.md lists (the first column of its tables).
fn documented_metrics() -> std::collections::BTreeSet<String> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(root.join("docs/metrics.md")).expect("docs/metrics.md");
    // The first column of every table row: Berth's own (`berth_...`) and the process's.
    doc.lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| l.split('`').next())
        .map(|name| name.strip_suffix("_total").unwrap_or(name).to_owned())
        .collect()
}

#[tokio::test]
async fn the_metrics_port_serves_only_get_metrics() {
    let cluster = Cluster::start_with(1, fast_options, true).await;
    cluster.leader().await;
    let addr = cluster.members[&1].metrics_addr.clone().expect("metrics served");
    let (status, _, _) = http(&addr, "GET", "/").await;
    assert_eq!(status, 404);
    let (status, _, _) = http(&addr, "GET", &format!("/{}", "x".repeat(4096))).await;
    assert_eq!(status, 404);
    let (status, _, _) = http(&addr, "POST", "/metrics").await;
    assert_eq!(status, 405);
    // Clients that connect and never finish their request hold the port's every place, but
    // only for its header timeout (2 s): a scrape behind them is answered soon after.
    let mut idle = Vec::new();
    for _ in 0..8 {
        let mut stream = tokio::net::TcpStream::connect(&addr).await.expect("connect");
        stream.write_all(b"GET /metr").await.expect("partial request");
        idle.push(stream);
    }
    let started = std::time::Instant::now();
    let (status, _, body) = http(&addr, "GET", "/metrics").await;
    assert_eq!(status, 200);
    parse_openmetrics(&body);
    let waited = started.elapsed();
    assert!(waited < std::time::Duration::from_secs(6), "a scrape waited {waited:?}");
    drop(idle);
}

/// A tenant's preempted placements are counted, and its queue's depth and oldest wait shown.
#[tokio::test]
async fn preemptions_and_the_queue_per_tenant() {
    let cluster = Cluster::start_with(1, fast_options, true).await;
    cluster.leader().await;
    let mut c = clients(&cluster, 1).await;
    create_tenant(&mut c, "acme").await;
    register(&mut c, "w1", 4_000).await;
    let quota =
        pb::Quota { preemption: Some(pb::Preemption::SameTenant.into()), ..Default::default() };
    let set =
        pb::SetQuotaRequest { request_id: rid(), tenant_id: "acme".into(), quota: Some(quota) };
    c.tenants.set_quota(authed(ADMIN_TOKEN, set)).await.expect("quota set");
    let batch = pb::PlacementSpec { requeue_on_preemption: true, ..spec("batch", 3_000) };
    c.scheduler.place(authed(ADMIN_TOKEN, place("acme", batch))).await.expect("batch placed");
    let s = scrape(&cluster, 1).await;
    assert_eq!(value(&s, "berth_tenant_preemptions_total", &[("tenant_id", "acme")]), None);
    assert_eq!(value(&s, "berth_tenant_queue_depth", &[("tenant_id", "acme")]), Some(0.0));
    assert_eq!(value(&s, "berth_tenant_queue_oldest_wait_seconds", &[("tenant_id", "acme")]), None);

    // Urgent work preempts the batch, which waits in the queue again.
    let urgent = pb::PlacementSpec { priority: 5, ..spec("urgent", 2_000) };
    c.scheduler.place(authed(ADMIN_TOKEN, place("acme", urgent))).await.expect("urgent placed");
    let s = scrape(&cluster, 1).await;
    assert_eq!(value(&s, "berth_tenant_preemptions_total", &[("tenant_id", "acme")]), Some(1.0));
    assert_eq!(value(&s, "berth_tenant_queue_depth", &[("tenant_id", "acme")]), Some(1.0));
    let waited = value(&s, "berth_tenant_queue_oldest_wait_seconds", &[("tenant_id", "acme")]);
    assert!(waited.is_some_and(|w| (0.0..60.0).contains(&w)), "{waited:?}");
    cluster.shutdown().await;
}

/// A request dropped before it was answered (here: its deadline passed while its write could
/// not commit, with both followers stopped) is still counted, as `CANCELLED`/`DROPPED`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_dropped_at_its_deadline_is_counted() {
    let mut cluster = Cluster::start_with(3, fast_options, true).await;
    let leader = cluster.leader().await;
    let mut c = clients(&cluster, leader).await;
    create_tenant(&mut c, "acme").await;
    for id in [1, 2, 3].into_iter().filter(|id| *id != leader) {
        cluster.stop(id).await;
    }
    let mut request = authed(
        ADMIN_TOKEN,
        pb::CreateTenantRequest {
            request_id: rid(),
            tenant_id: "late".into(),
            ..Default::default()
        },
    );
    request.set_timeout(std::time::Duration::from_millis(300));
    let late = c.tenants.create_tenant(request).await.expect_err("no quorum to commit");
    assert!(
        [tonic::Code::DeadlineExceeded, tonic::Code::Cancelled].contains(&late.code()),
        "{late:?}"
    );
    // Its series may be served (at 0) a moment before the drop is counted.
    poll("the dropped request to be counted, as CANCELLED/DROPPED", || async {
        let s = scrape(&cluster, leader).await;
        let counted = requests(&s, "late", "Tenants/CreateTenant") == Some(1.0);
        let dropped = errors(&s, "late", "Tenants/CreateTenant", "CANCELLED", "DROPPED");
        (counted && dropped == Some(1.0)).then_some(())
    })
    .await;
    cluster.shutdown().await;
}

/// openraft 0.9 asks the network for a new client on every ReadIndex round; each used to open
/// a TCP connection and a TLS handshake per follower. They reuse the leader's connections now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linearizable_reads_reuse_the_leaders_connections_to_its_followers() {
    let cluster = Cluster::start_with(3, fast_options, true).await;
    let leader = cluster.leader().await;
    let mut c = clients(&cluster, leader).await;
    create_tenant(&mut c, "acme").await;
    let opened = |s: &std::collections::BTreeMap<Key, f64>, peer: &str| {
        value(s, "berth_peer_connections_opened_total", &[("peer", peer)]).unwrap_or(0.0)
    };
    let followers: Vec<String> =
        cluster.members.keys().filter(|id| **id != leader).map(u64::to_string).collect();
    let before = scrape(&cluster, leader).await;
    const READS: usize = 200;
    for _ in 0..READS {
        let get = pb::GetQuotaRequest { tenant_id: "acme".into(), read: None };
        c.tenants.get_quota(authed(ADMIN_TOKEN, get)).await.expect("a linearizable read");
    }
    let after = scrape(&cluster, leader).await;
    for peer in &followers {
        let new = opened(&after, peer) - opened(&before, peer);
        // One for the read rounds, one beside it for replication, and room for a reconnect.
        assert!(new <= 4.0, "{new} connections opened to replica {peer} for {READS} reads");
        assert!(opened(&after, peer) >= 1.0, "the leader counts its connections to {peer}");
    }
    cluster.shutdown().await;
}
