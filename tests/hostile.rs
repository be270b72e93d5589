//! Requests a hostile client would send, against a real in-process 3-replica cluster through
//! the public API: extreme values, oversized ids and requests, floods of large writes and one
//! tenant's traffic against another's exactly-once window. Each is refused or survived without
//! a log entry it should not make, and afterwards every replica still answers writes.

mod common;

use std::time::Duration;

use berth::api::pb;
use berth::raft::replica::{WriteError, BATCH_BYTES_MAX, PROPOSAL_BYTES_MAX};
use berth::raft::types::Proposal;
use berth::scheduler::resources::LABELS_MAX;
use berth::scheduler::{Command, Config, RequestId, Resources, WorkerId};
use common::*;
use prost::Message;
use tonic::{Code, Status};

/// Bytes an error costs a client in headers: grpc-message plus the base64 details.
fn error_bytes(status: &Status) -> usize {
    status.message().len() + status.details().len().div_ceil(3) * 4
}

/// Writes through each running replica's own API endpoint, retrying only while a write is
/// unavailable, and fails if any replica cannot complete one before the deadline.
async fn every_replica_writes(cluster: &Cluster) {
    for id in cluster.running() {
        let c = clients(cluster, id).await;
        let request_id = rid();
        let worker_id = format!("alive-{request_id}");
        poll(&format!("a write through replica {id}"), || {
            let mut workers = c.workers.clone();
            let r = pb::RegisterWorkerRequest {
                request_id: request_id.clone(),
                worker_id: worker_id.clone(),
                capacity: Some(pb::Resources { cpu_millis: 1_000, memory_mib: 1_024 }),
                ..Default::default()
            };
            async move {
                match workers.register_worker(authed(ADMIN_TOKEN, r)).await {
                    Ok(_) => Some(()),
                    Err(s) if s.code() == Code::Unavailable => None,
                    Err(s) => panic!("replica {id} refused a plain write: {s:?}"),
                }
            }
        })
        .await;
    }
}

/// The leader's id, term and last log index. Call it after a write has committed, so a new
/// leader's own first entries are behind it.
async fn leader_position(cluster: &Cluster) -> (u64, u64, Option<u64>) {
    let leader = cluster.leader().await;
    let status = cluster.replica(leader).status();
    (leader, status.term, status.last_log_index)
}

/// Finding 1: a worker with a capacity near u64::MAX is refused at the API (it used to be
/// committed and then panic `apply` on every replica when a second worker joined its pool);
/// nothing reaches the log; an ordinary worker in the same pool is registered, and the
/// cluster keeps writing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extreme_worker_capacity_is_refused() {
    let (cluster, mut c) = setup().await;
    every_replica_writes(&cluster).await;
    let before = leader_position(&cluster).await;
    for (worker, memory_mib) in [("huge-1", u64::MAX - 1), ("huge-2", u64::MAX)] {
        let r = pb::RegisterWorkerRequest {
            request_id: rid(),
            worker_id: worker.into(),
            pool: "p1".into(),
            capacity: Some(pb::Resources { cpu_millis: 1_000, memory_mib }),
            ..Default::default()
        };
        let refused = c
            .workers
            .register_worker(authed(ADMIN_TOKEN, r))
            .await
            .expect_err("an extreme capacity is refused");
        assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
        assert_eq!(meta(&refused, "field"), "capacity");
    }
    assert_eq!(leader_position(&cluster).await, before, "nothing was appended");
    let r = pb::RegisterWorkerRequest {
        request_id: rid(),
        worker_id: "ordinary".into(),
        pool: "p1".into(),
        capacity: Some(pb::Resources { cpu_millis: 4_000, memory_mib: 8_192 }),
        ..Default::default()
    };
    c.workers.register_worker(authed(ADMIN_TOKEN, r)).await.expect("an ordinary worker joins");
    every_replica_writes(&cluster).await;
    cluster.shutdown().await;
}

/// Finding 3: a 120 KB request id is refused with INVALID_ARGUMENT naming the field, before
/// it is proposed: the leader's log does not move.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_request_id_is_refused_before_the_log() {
    let (cluster, mut c) = setup().await;
    every_replica_writes(&cluster).await;
    let before = leader_position(&cluster).await;
    let r = pb::CreateTenantRequest {
        request_id: "r".repeat(120 * 1024),
        tenant_id: "acme".into(),
        ..Default::default()
    };
    let refused = c.tenants.create_tenant(authed(ADMIN_TOKEN, r)).await.expect_err("refused");
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert_eq!(meta(&refused, "field"), "request");
    assert!(error_bytes(&refused) < 1024, "error of {} bytes", error_bytes(&refused));
    assert_eq!(leader_position(&cluster).await, before, "nothing was appended");
    every_replica_writes(&cluster).await;
    cluster.shutdown().await;
}

/// Finding 3: 40 concurrent 4 MB Place requests are each refused quickly for their size
/// (tonic answers OUT_OF_RANGE before decoding), none with an unknown outcome; the leader and
/// its log stay where they were.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_requests_are_refused_before_the_log() {
    let (cluster, c) = setup().await;
    every_replica_writes(&cluster).await;
    let before = leader_position(&cluster).await;
    let huge = pb::PlaceRequest {
        request_id: rid(),
        tenant_id: "acme".into(),
        spec: Some(pb::PlacementSpec {
            // 4 MB: under tonic's default limit (4 MiB), which let such requests through.
            placement_id: "p".repeat(4_000_000),
            count: 1,
            resources: Some(pb::Resources { cpu_millis: 1, memory_mib: 1 }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let started = tokio::time::Instant::now();
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..40 {
        let mut scheduler = c.scheduler.clone();
        let request = pb::PlaceRequest { request_id: rid(), ..huge.clone() };
        calls.spawn(async move { scheduler.place(authed(ADMIN_TOKEN, request)).await });
    }
    while let Some(answer) = calls.join_next().await {
        let refused = answer.expect("call completes").expect_err("a 4 MB request is refused");
        assert!(
            matches!(
                refused.code(),
                Code::OutOfRange | Code::ResourceExhausted | Code::InvalidArgument
            ),
            "{refused:?}"
        );
        assert_ne!(reason(&refused), "OUTCOME_UNKNOWN");
    }
    assert!(started.elapsed() < Duration::from_secs(10), "refused in {:?}", started.elapsed());
    assert_eq!(leader_position(&cluster).await, before, "no entry and no election");
    every_replica_writes(&cluster).await;
    cluster.shutdown().await;
}

/// A proposal larger than PROPOSAL_BYTES_MAX is refused by the replica before it is queued
/// (and through the API as INVALID_ARGUMENT), and appends nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_proposal_is_refused_by_the_replica() {
    let (cluster, _) = setup().await;
    every_replica_writes(&cluster).await;
    let before = leader_position(&cluster).await;
    let follower = cluster.running().into_iter().find(|id| *id != before.0).expect("a follower");
    for id in [before.0, follower] {
        let refused =
            cluster.replica(id).propose(worker_with_labels(1, PROPOSAL_BYTES_MAX + 1024)).await;
        assert!(
            matches!(refused, Err(WriteError::TooLarge { max: PROPOSAL_BYTES_MAX, .. })),
            "{refused:?}"
        );
        let status = berth::api::status::write_error(&refused.expect_err("refused"));
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(reason(&status), "REQUEST_TOO_LARGE");
    }
    assert_eq!(leader_position(&cluster).await, before, "nothing was appended");
    cluster.shutdown().await;
}

/// A RegisterWorker proposal of about `bytes` bytes in one label too many (apply refuses it
/// for the count, without quoting the labels: only the proposal's size matters here).
fn worker_with_labels(i: usize, bytes: usize) -> Proposal {
    let each = bytes / (LABELS_MAX + 1);
    let labels = (0..=LABELS_MAX).map(|l| (format!("l{l}"), "x".repeat(each))).collect();
    Proposal {
        request_id: Some(RequestId::new(format!("big-{i}"))),
        command: Command::RegisterWorker {
            worker: WorkerId::new(format!("big-{i}")),
            pool: None,
            capacity: Resources::new(1_000, 1_024),
            labels,
        },
        token: None,
    }
}

/// Timing for replicating megabytes per entry in a debug build on a busy machine: openraft
/// gives each AppendEntries one heartbeat interval.
fn patient_options(id: u64, addr: String) -> berth::raft::replica::ReplicaOptions {
    let mut o = fast_options(id, addr);
    o.heartbeat_ms = 1_000;
    o.election_timeout_min_ms = 5_000;
    o.election_timeout_max_ms = 8_000;
    o.write_deadline = Duration::from_secs(60);
    o
}

/// Finding 3: concurrent large proposals adding up to more than a peer frame (64 MiB) are
/// committed in batches bounded in bytes: every one gets its answer, none an unknown outcome,
/// and the leader keeps its term.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_proposals_are_batched_within_the_peer_frame() {
    let cluster = Cluster::start_with(3, patient_options, true).await;
    let (leader, term, _) = leader_position(&cluster).await;
    let size = PROPOSAL_BYTES_MAX - 1024;
    let count = 72;
    assert!(size * count > 64 * 1024 * 1024 && size <= BATCH_BYTES_MAX);
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..count {
        let replica = cluster.replica(leader).clone();
        calls.spawn(async move { replica.propose(worker_with_labels(i, size)).await });
    }
    while let Some(answer) = calls.join_next().await {
        let applied = answer.expect("call completes").expect("every proposal gets its answer");
        assert!(applied.result.is_err(), "apply refuses the labels");
    }
    let (now_leader, now_term, _) = leader_position(&cluster).await;
    assert_eq!((now_leader, now_term), (leader, term), "no election");
    every_replica_writes(&cluster).await;
    cluster.shutdown().await;
}

/// The largest legitimate Place (every label, rule and value at its bound) fits every size
/// bound with room to spare and is placed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn largest_legitimate_place_fits() {
    use berth::scheduler::resources::{LABEL_LEN_MAX, RULES_MAX};
    let (cluster, mut c) = setup().await;
    create_tenant(&mut c, "acme").await;
    register(&mut c, "w1", 64_000).await;
    let text = |prefix: &str, i: usize| format!("{prefix}{i:0>width$}", width = LABEL_LEN_MAX - 2);
    // NotIn rules on labels the worker lacks, and anti-affinity to labels no workload has,
    // hold everywhere: the placement succeeds with every list full.
    let requirement = |i: usize| pb::LabelRequirement {
        key: text("k", i),
        op: pb::label_requirement::Op::NotIn.into(),
        values: (0..RULES_MAX).map(|v| text("v", v)).collect(),
    };
    let term = |i: usize| pb::LabelTerm { key: text("t", i), value: text("v", i) };
    let spec = pb::PlacementSpec {
        placement_id: "largest".into(),
        count: 1,
        resources: Some(pb::Resources { cpu_millis: 1_000, memory_mib: 16 }),
        labels: (0..LABELS_MAX).map(|i| (text("k", i), text("v", i))).collect(),
        worker_requires: (0..RULES_MAX).map(requirement).collect(),
        worker_prefers: (0..RULES_MAX).map(requirement).collect(),
        affinity_preferred: (0..RULES_MAX).map(term).collect(),
        anti_affinity: (0..RULES_MAX).map(term).collect(),
        anti_affinity_preferred: (0..RULES_MAX).map(term).collect(),
        ..Default::default()
    };
    let request = place("acme", spec);
    let bytes = request.encoded_len();
    assert!(bytes < berth::api::API_REQUEST_BYTES_MAX / 2, "{bytes} bytes");
    c.scheduler.place(authed(ADMIN_TOKEN, request)).await.expect("the largest Place is placed");
    cluster.shutdown().await;
}

/// Finding 4: a 10,000-character tenant id, a 5 KB placement id and a long decimal each come
/// back as INVALID_ARGUMENT with a small error (under 1 KB of headers), not the whole input.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_quote_a_short_prefix() {
    let (cluster, mut c) = setup().await;
    create_tenant(&mut c, "acme").await;
    let long_tenant = "T".repeat(10_000);
    let refusals = [
        c.tenants
            .get_tenant(authed(
                ADMIN_TOKEN,
                pb::GetTenantRequest { tenant_id: long_tenant.clone(), read: None },
            ))
            .await
            .expect_err("long tenant id"),
        c.scheduler
            .place(authed(ADMIN_TOKEN, place(&long_tenant, spec("p1", 100))))
            .await
            .expect_err("long tenant id"),
        c.scheduler
            .place(authed(ADMIN_TOKEN, place("acme", spec(&"p".repeat(5_000), 100))))
            .await
            .expect_err("long placement id"),
        c.scheduler
            .release(authed(
                ADMIN_TOKEN,
                pb::ReleaseRequest {
                    request_id: rid(),
                    tenant_id: "acme".into(),
                    placement_id: "p".repeat(5_000),
                    fence: None,
                },
            ))
            .await
            .expect_err("long placement id"),
        c.billing
            .allocate_shared_cost(authed(
                ADMIN_TOKEN,
                pb::AllocateSharedCostRequest {
                    total: "9".repeat(10_000),
                    weights: vec!["1".into()],
                    by_usage: None,
                },
            ))
            .await
            .expect_err("long decimal"),
    ];
    for refused in refusals {
        assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
        assert!(!reason(&refused).is_empty(), "{refused:?}");
        assert!(error_bytes(&refused) < 1024, "error of {} bytes", error_bytes(&refused));
    }
    every_replica_writes(&cluster).await;
    cluster.shutdown().await;
}

/// Finding 7: one tenant's flood of writes, twice the exactly-once window, does not evict
/// another tenant's session: B's retry of an acknowledged write is replayed, not applied again
/// (before per-tenant windows, A's flood evicted B's record and the retry failed GROUP_EXISTS).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_tenant_cannot_spend_anothers_exactly_once_window() {
    const WINDOW: u64 = 20;
    let (cluster, mut c) = setup().await;
    let leader = cluster.leader().await;
    let config = Config { sessions_max: WINDOW, ..Config::default() };
    let set = Proposal { request_id: None, command: Command::SetConfig { config }, token: None };
    let applied = cluster.replica(leader).propose(set).await.expect("config committed");
    assert!(applied.result.is_ok(), "{:?}", applied.result);
    create_tenant(&mut c, "tenant-a").await;
    create_tenant(&mut c, "tenant-b").await;
    let b = pb::CreatePlacementGroupRequest {
        request_id: rid(),
        tenant_id: "tenant-b".into(),
        group: "g-b".into(),
        max_instances: 4,
        ..Default::default()
    };
    let first = c
        .scheduler
        .create_placement_group(authed(ADMIN_TOKEN, b.clone()))
        .await
        .expect("B's write is acknowledged")
        .into_inner()
        .write
        .expect("write info");
    for i in 0..2 * WINDOW {
        let a = pb::CreatePlacementGroupRequest {
            request_id: rid(),
            tenant_id: "tenant-a".into(),
            group: format!("g-a-{i}"),
            max_instances: 4,
            ..Default::default()
        };
        c.scheduler.create_placement_group(authed(ADMIN_TOKEN, a)).await.expect("A's write");
    }
    let retry = c
        .scheduler
        .create_placement_group(authed(ADMIN_TOKEN, b))
        .await
        .expect("B's retry is answered as the first attempt was")
        .into_inner()
        .write
        .expect("write info");
    assert!(retry.replayed);
    assert_eq!(retry.log_index, first.log_index);
    every_replica_writes(&cluster).await;
    cluster.shutdown().await;
}
