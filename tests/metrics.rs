//! The metrics port: after known traffic, a scrape counts exactly that traffic per tenant, RPC,
//! code and reason, names at most the configured number of tenants, labels a path it does not
//! serve as `_unknown`, shows each replica's Raft view and each tenant's usage and quota, and
//! is well-formed OpenMetrics.

mod common;

use berth::api::pb;
use common::*;
use std::collections::BTreeMap;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One HTTP/1.1 request to `addr`; the status code, the content type and the body.
async fn http(addr: &str, method: &str, path: &str) -> (u16, String, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("metrics port answers");
    let request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("request sent");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("response read");
    let (head, body) = response.split_once("\r\n\r\n").expect("headers end");
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("a status line");
    let content_type = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-type: ").map(str::to_owned))
        .unwrap_or_default();
    (status, content_type, body.to_owned())
}

/// A sample: its metric name and labels.
type Key = (String, BTreeMap<String, String>);

/// Parses OpenMetrics text strictly enough to catch what a scraper would refuse: it must end
/// in `# EOF`; every sample must belong to the family declared last (by `# TYPE`), with a
/// suffix its type allows, well-formed labels and a numeric value; a family is declared once;
/// a histogram's buckets are cumulative and end in `le="+Inf"` equal to its `_count`.
fn parse_openmetrics(text: &str) -> BTreeMap<Key, f64> {
    let body = text.strip_suffix("# EOF\n").expect("the exposition ends in # EOF");
    let mut samples = BTreeMap::new();
    let mut declared = std::collections::BTreeSet::new();
    let mut family: Option<(String, String)> = None;
    for line in body.lines() {
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (kind, name) = (parts.next().expect("kind"), parts.next().expect("name"));
            match kind {
                "HELP" | "UNIT" => {}
                "TYPE" => {
                    let kind = parts.next().expect("a type");
                    assert!(
                        ["counter", "gauge", "histogram", "info", "unknown"].contains(&kind),
                        "type {kind}"
                    );
                    assert!(declared.insert(name.to_owned()), "{name} declared twice");
                    family = Some((name.to_owned(), kind.to_owned()));
                }
                other => panic!("unknown descriptor {other} in {line:?}"),
            }
            continue;
        }
        let (name, labels, value) = parse_sample(line);
        let (family_name, kind) = family.as_ref().expect("a sample after its # TYPE");
        let suffix = name.strip_prefix(family_name.as_str()).expect("sample of its family");
        let allowed: &[&str] = match kind.as_str() {
            "counter" => &["_total", "_created"],
            "gauge" => &[""],
            "histogram" => &["_bucket", "_count", "_sum", "_created"],
            "info" => &["_info"],
            _ => &[""],
        };
        assert!(allowed.contains(&suffix), "{name} in a {kind} family {family_name}");
        assert!(samples.insert((name.clone(), labels), value).is_none(), "{line} repeated");
    }
    // Histograms: cumulative buckets ending in +Inf, equal to the count.
    let mut buckets: BTreeMap<Key, Vec<(f64, f64)>> = BTreeMap::new();
    for ((name, labels), value) in &samples {
        if let Some(base) = name.strip_suffix("_bucket") {
            let mut series = labels.clone();
            let le = series.remove("le").expect("a bucket has le");
            let le = if le == "+Inf" { f64::INFINITY } else { le.parse().expect("le is a number") };
            buckets.entry((base.to_owned(), series)).or_default().push((le, *value));
        }
    }
    for ((base, series), mut bs) in buckets {
        bs.sort_by(|a, b| a.0.total_cmp(&b.0));
        assert!(bs.windows(2).all(|w| w[0].1 <= w[1].1), "{base} buckets not cumulative");
        let last = bs.last().expect("buckets");
        assert!(last.0.is_infinite(), "{base} has no +Inf bucket");
        let count = samples[&(format!("{base}_count"), series)];
        assert_eq!(last.1, count, "{base}: +Inf bucket differs from _count");
    }
    samples
}

/// `name{k="v",...} value`.
fn parse_sample(line: &str) -> (String, BTreeMap<String, String>, f64) {
    let name_end = line.find(['{', ' ']).expect("a value");
    let name = &line[..name_end];
    assert!(
        !name.is_empty()
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
            && !name.starts_with(|c: char| c.is_ascii_digit()),
        "metric name {name:?}"
    );
    let mut labels = BTreeMap::new();
    let bytes = line.as_bytes();
    let mut at = name_end;
    if line[at..].starts_with("{}") {
        at += 2;
    } else if bytes[at] == b'{' {
        at += 1;
        loop {
            let eq = at + line[at..].find('=').expect("label =");
            let key = &line[at..eq];
            assert!(
                !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                "label {key:?} in {line:?}"
            );
            assert_eq!(bytes[eq + 1], b'"', "label value quoted in {line:?}");
            at = eq + 2;
            let mut value = String::new();
            loop {
                let c = line[at..].chars().next().expect("label value ends");
                at += c.len_utf8();
                match c {
                    '"' => break,
                    '\\' => {
                        let escaped = bytes[at];
                        at += 1;
                        value.push(match escaped {
                            b'n' => '\n',
                            b'"' => '"',
                            b'\\' => '\\',
                            other => panic!("bad escape \\{} in {line:?}", other as char),
                        });
                    }
                    c => value.push(c),
                }
            }
            assert!(labels.insert(key.to_owned(), value).is_none(), "label {key} twice");
            at += 1;
            match bytes[at - 1] {
                b',' => continue,
                b'}' => break,
                other => panic!("{:?} after a label in {line:?}", other as char),
            }
        }
    }
    let value = line[at..].strip_prefix(' ').expect("a space before the value");
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().unwrap_or_else(|_| panic!("value {v:?} in {line:?}")),
    };
    (name.to_owned(), labels, value)
}

/// One scrape of replica `id`, parsed.
async fn scrape(cluster: &Cluster, id: u64) -> BTreeMap<Key, f64> {
    let addr = cluster.members[&id].metrics_addr.clone().expect("metrics served");
    let (status, content_type, body) = http(&addr, "GET", "/metrics").await;
    assert_eq!(status, 200, "{body}");
    assert!(content_type.starts_with("application/openmetrics-text"), "{content_type}");
    parse_openmetrics(&body)
}

/// The value of the sample `name` with exactly `labels`, if there is one.
fn value(samples: &BTreeMap<Key, f64>, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let labels = labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    samples.get(&(name.to_owned(), labels)).copied()
}

fn requests(samples: &BTreeMap<Key, f64>, tenant: &str, rpc: &str) -> Option<f64> {
    value(samples, "berth_api_requests_total", &[("tenant_id", tenant), ("rpc", rpc)])
}

fn errors(
    samples: &BTreeMap<Key, f64>,
    tenant: &str,
    rpc: &str,
    code: &str,
    reason: &str,
) -> Option<f64> {
    let labels = [("tenant_id", tenant), ("rpc", rpc), ("code", code), ("reason", reason)];
    value(samples, "berth_api_errors_total", &labels)
}

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
    doc.lines()
        .filter_map(|l| l.strip_prefix("| `berth_"))
        .filter_map(|l| l.split('`').next())
        .map(|name| {
            let name = format!("berth_{name}");
            name.strip_suffix("_total").map(str::to_owned).unwrap_or(name)
        })
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
    let s = poll("the dropped request to be counted", || async {
        let s = scrape(&cluster, leader).await;
        requests(&s, "late", "Tenants/CreateTenant").is_some().then_some(s)
    })
    .await;
    assert_eq!(requests(&s, "late", "Tenants/CreateTenant"), Some(1.0));
    assert_eq!(errors(&s, "late", "Tenants/CreateTenant", "CANCELLED", "DROPPED"), Some(1.0));
    cluster.shutdown().await;
}
