//! Workers that live and die, through the public API of a real in-process 3-replica cluster:
//! heartbeats keep a worker up for its pool's TTL in log time, a worker that stops beating goes
//! down and its instances move, agents report on their instances, time limits end placements,
//! and every new field refuses hostile input.

mod common;

use std::collections::BTreeSet;

use berth::api::pb;
use common::*;
use tonic::Code;

async fn heartbeat(c: &Clients, worker: &str) -> Result<pb::HeartbeatResponse, tonic::Status> {
    let mut workers = c.workers.clone();
    let r = pb::HeartbeatRequest { worker_id: worker.into() };
    workers.heartbeat(authed(ADMIN_TOKEN, r)).await.map(|r| r.into_inner())
}

async fn get_worker(c: &Clients, worker: &str) -> pb::Worker {
    let mut workers = c.workers.clone();
    let r = pb::GetWorkerRequest { worker_id: worker.into(), read: None };
    workers
        .get_worker(authed(ADMIN_TOKEN, r))
        .await
        .expect("worker read")
        .into_inner()
        .worker
        .expect("a worker")
}

async fn placement(c: &Clients, tenant: &str, id: &str) -> Option<pb::Placement> {
    let mut scheduler = c.scheduler.clone();
    let r =
        pb::GetPlacementRequest { tenant_id: tenant.into(), placement_id: id.into(), read: None };
    match scheduler.get_placement(authed(ADMIN_TOKEN, r)).await {
        Ok(r) => r.into_inner().placement,
        Err(s) if s.code() == Code::NotFound => None,
        Err(s) => panic!("placement read failed: {s:?}"),
    }
}

async fn finished(
    c: &Clients,
    token: &str,
    tenant: &str,
) -> Result<Vec<pb::FinishedPlacement>, tonic::Status> {
    let mut scheduler = c.scheduler.clone();
    let r = pb::ListFinishedRequest { tenant_id: tenant.into(), page: None, read: None };
    scheduler.list_finished(authed(token, r)).await.map(|r| r.into_inner().finished)
}

async fn set_ttl(c: &mut Clients, pool: &str, ttl_ms: u64) -> Result<(), tonic::Status> {
    let r =
        pb::SetPoolWorkerTtlRequest { request_id: rid(), pool: pool.into(), ttl_ms, reset: false };
    c.workers.set_pool_worker_ttl(authed(ADMIN_TOKEN, r)).await.map(|_| ())
}

async fn report(
    c: &Clients,
    worker: &str,
    tenant: &str,
    placement: &str,
    slot: u32,
    assigned_at: u64,
    status: pb::InstanceStatus,
) -> Result<pb::ReportStatusResponse, tonic::Status> {
    let mut workers = c.workers.clone();
    let r = pb::ReportStatusRequest {
        request_id: rid(),
        worker_id: worker.into(),
        tenant_id: tenant.into(),
        placement_id: placement.into(),
        slot,
        assigned_at,
        status: status.into(),
        exit_code: if status == pb::InstanceStatus::Failed { 3 } else { 0 },
        message: String::new(),
    };
    workers.report_status(authed(ADMIN_TOKEN, r)).await.map(|r| r.into_inner())
}

/// A worker that stops heartbeating goes down once its TTL passes (while another keeps
/// beating), its instance moves to the live worker in that same step, its capacity leaves the
/// pool, and a later heartbeat brings it back ready with a new generation, holding nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_worker_goes_down_and_its_instance_moves() {
    let (cluster, mut c) = setup().await;
    create_tenant(&mut c, "acme").await;
    set_ttl(&mut c, "default", 1_000).await.expect("ttl set");
    register(&mut c, "w1", 4_000).await;
    register(&mut c, "w2", 4_000).await;
    let first = heartbeat(&c, "w1").await.expect("w1 beats");
    assert_eq!(first.ttl_ms, 1_000);
    assert!(!first.revived);
    heartbeat(&c, "w2").await.expect("w2 beats");
    let r = place("acme", spec("api", 1_500));
    let placed = c.scheduler.place(authed(ADMIN_TOKEN, r)).await.expect("placed").into_inner();
    let on = placed.placement.expect("placement").workers[0].clone();
    let (dead, alive) = if on == "w1" { ("w1", "w2") } else { ("w2", "w1") };

    // Keep only `alive` beating until `dead` is down.
    let beating = {
        let c = clients(&cluster, cluster.leader().await).await;
        let alive = alive.to_string();
        tokio::spawn(async move {
            loop {
                let _ = heartbeat(&c, &alive).await;
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        })
    };
    let down = poll("the silent worker to go down", || async {
        let w = get_worker(&c, dead).await;
        w.down_since_ms.is_some().then_some(w)
    })
    .await;
    let liveness = down.liveness.expect("managed");
    assert!(
        down.down_since_ms.expect("down") >= liveness.alive_until_ms,
        "down no earlier than its TTL"
    );
    assert_eq!(down.history.last().map(|t| t.state()), Some(pb::worker_transition::State::Down));
    let moved = placement(&c, "acme", "api").await.expect("still placed");
    assert_eq!(
        moved.workers,
        vec![alive.to_string()],
        "the lost instance moved to the live worker"
    );
    assert!(moved.instances[0].assigned_at > placed.write.as_ref().expect("write").log_index);
    let mut workers = c.workers.clone();
    let r = pb::GetPoolRequest { pool: "default".into(), read: None };
    let pool = workers
        .get_pool(authed(ADMIN_TOKEN, r))
        .await
        .expect("pool")
        .into_inner()
        .pool
        .expect("pool");
    assert_eq!(pool.down, 1);
    assert_eq!(pool.worker_ttl_ms, 1_000);
    let r = pb::ListWorkerPlacementsRequest { worker_id: dead.into(), page: None, read: None };
    assert!(workers
        .list_worker_placements(authed(ADMIN_TOKEN, r))
        .await
        .expect("list")
        .into_inner()
        .placements
        .is_empty());
    let r = pb::ListWorkerPlacementsRequest { worker_id: alive.into(), page: None, read: None };
    let on_alive = workers
        .list_worker_placements(authed(ADMIN_TOKEN, r))
        .await
        .expect("list")
        .into_inner()
        .placements;
    assert_eq!(
        on_alive
            .iter()
            .map(|p| p.spec.as_ref().expect("spec").placement_id.as_str())
            .collect::<Vec<_>>(),
        ["api"]
    );

    let back = heartbeat(&c, dead).await.expect("a heartbeat revives");
    assert!(back.revived);
    assert!(back.generation > down.generation, "a revived worker is a new generation");
    let w = get_worker(&c, dead).await;
    assert!(w.down_since_ms.is_none());
    assert_eq!(
        w.allocated,
        Some(pb::Resources { cpu_millis: 0, memory_mib: 0 }),
        "revived holding nothing"
    );
    beating.abort();
    cluster.shutdown().await;
}

/// Heartbeats sent at the same time share log entries: 200 concurrent heartbeats for 200
/// workers are all acknowledged, each with its own worker's answer, in fewer entries than
/// heartbeats; an unknown worker gets NOT_FOUND without sinking the batch it rode in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_heartbeats_share_entries() {
    let (cluster, mut c) = setup().await;
    set_ttl(&mut c, "default", 60_000).await.expect("ttl set");
    for i in 0..200 {
        register(&mut c, &format!("hb{i}"), 1_000).await;
    }
    let mut tasks = Vec::new();
    for i in 0..201 {
        let c = clients(&cluster, cluster.running()[i % 3]).await;
        let worker = if i == 200 { "never-registered".to_string() } else { format!("hb{i}") };
        tasks.push(tokio::spawn(async move { (worker.clone(), heartbeat(&c, &worker).await) }));
    }
    let mut entries = BTreeSet::new();
    for task in tasks {
        let (worker, answer) = task.await.expect("task");
        match answer {
            Ok(ack) => {
                assert_eq!(ack.ttl_ms, 60_000, "{worker}");
                entries.insert(ack.write.expect("write").log_index);
                let w = get_worker(&c, &worker).await;
                assert!(w.liveness.expect("managed").alive_until_ms >= ack.alive_until_ms);
            }
            Err(s) => {
                assert_eq!(worker, "never-registered");
                assert_eq!(s.code(), Code::NotFound, "{s:?}");
            }
        }
    }
    assert!(entries.len() < 200, "200 heartbeats took {} entries", entries.len());
    cluster.shutdown().await;
}

/// An agent's reports: running, then completed on every instance ends the placement with a
/// COMPLETED record; a failed report ends one at once; a report with a stale assigned_at is
/// refused; a time limit ends a placement at exactly placed_at + max_runtime_ms; and a tenant
/// reads only its own records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_and_time_limits_end_placements() {
    let (cluster, mut c) = setup().await;
    create_tenant(&mut c, "acme").await;
    create_tenant(&mut c, "other").await;
    let token = issue_token(&mut c, "acme").await;
    register(&mut c, "w1", 8_000).await;
    let r = place("acme", pb::PlacementSpec { count: 2, ..spec("job", 1_000) });
    let p = c
        .scheduler
        .place(authed(&token, r))
        .await
        .expect("placed")
        .into_inner()
        .placement
        .expect("placement");
    let at = p.instances[0].assigned_at;
    assert_eq!(p.instances.len(), 2);
    assert_eq!(at, p.log_index);

    let stale = report(&c, "w1", "acme", "job", 0, at - 1, pb::InstanceStatus::Running)
        .await
        .expect_err("stale");
    assert_eq!(
        (stale.code(), reason(&stale).as_str()),
        (Code::FailedPrecondition, "STALE_ASSIGNMENT")
    );
    let r =
        report(&c, "w1", "acme", "job", 0, at, pb::InstanceStatus::Running).await.expect("running");
    assert_eq!(r.finished_reason, "");
    let running = placement(&c, "acme", "job").await.expect("placed");
    assert!(running.instances[0].running_since_ms.is_some());
    assert!(running.instances[1].running_since_ms.is_none());
    let r =
        report(&c, "w1", "acme", "job", 0, at, pb::InstanceStatus::Completed).await.expect("done");
    assert_eq!(r.finished_reason, "", "one of two instances completed");
    let r =
        report(&c, "w1", "acme", "job", 1, at, pb::InstanceStatus::Completed).await.expect("done");
    assert_eq!(r.finished_reason, "COMPLETED");
    assert!(placement(&c, "acme", "job").await.is_none(), "completed placements are released");

    let r = place("acme", spec("flaky", 1_000));
    let p = c
        .scheduler
        .place(authed(&token, r))
        .await
        .expect("placed")
        .into_inner()
        .placement
        .expect("placement");
    let r = report(&c, "w1", "acme", "flaky", 0, p.log_index, pb::InstanceStatus::Failed)
        .await
        .expect("failed");
    assert_eq!(r.finished_reason, "FAILED");

    let r = place("acme", pb::PlacementSpec { max_runtime_ms: 1_500, ..spec("batch", 1_000) });
    let p = c
        .scheduler
        .place(authed(&token, r))
        .await
        .expect("placed")
        .into_inner()
        .placement
        .expect("placement");
    assert_eq!(p.time_limit_at_ms, Some(p.placed_at_ms + 1_500));
    let records = poll("the time limit to end the placement", || async {
        let records = finished(&c, &token, "acme").await.expect("records");
        records.iter().any(|f| f.placement_id == "batch").then_some(records)
    })
    .await;
    let by_id = |id: &str| records.iter().find(|f| f.placement_id == id).expect("a record").clone();
    assert_eq!(by_id("job").reason, "COMPLETED");
    assert_eq!((by_id("flaky").reason.as_str(), by_id("flaky").exit_code), ("FAILED", 3));
    let batch = by_id("batch");
    assert_eq!(batch.reason, "TIME_LIMIT");
    assert_eq!(batch.ended_at_ms, p.placed_at_ms + 1_500, "released at exactly its log time");
    let mut workers = c.workers.clone();
    let w = workers
        .get_worker(authed(
            ADMIN_TOKEN,
            pb::GetWorkerRequest { worker_id: "w1".into(), read: None },
        ))
        .await
        .expect("worker")
        .into_inner()
        .worker
        .expect("worker");
    assert_eq!(w.allocated.expect("allocated").cpu_millis, 0, "every end released its capacity");

    let denied = finished(&c, &token, "other").await.expect_err("another tenant's records");
    assert_eq!(denied.code(), Code::PermissionDenied);
    assert!(finished(&c, ADMIN_TOKEN, "other").await.expect("admin reads").is_empty());
    cluster.shutdown().await;
}

/// Hostile values for every new field are refused at the API with INVALID_ARGUMENT (or
/// NOT_FOUND / PERMISSION_DENIED), never echoing the input whole, and change nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_fleet_input_is_refused() {
    let (cluster, mut c) = setup().await;
    create_tenant(&mut c, "acme").await;
    let token = issue_token(&mut c, "acme").await;
    register(&mut c, "w1", 8_000).await;
    let huge = "w".repeat(100_000);
    for bad in ["", " ", "w/1", huge.as_str()] {
        let s = heartbeat(&c, bad).await.expect_err("a bad worker id");
        assert_eq!(s.code(), Code::InvalidArgument, "{bad:.40}: {s:?}");
        assert!(s.message().len() <= 256, "the error stays small");
    }
    let s = heartbeat(&c, "nobody").await.expect_err("unknown");
    assert_eq!(s.code(), Code::NotFound);
    let mut workers = c.workers.clone();
    let r = pb::HeartbeatRequest { worker_id: "w1".into() };
    let s = workers.heartbeat(authed(&token, r)).await.expect_err("tenants do not heartbeat");
    assert_eq!(s.code(), Code::PermissionDenied);
    assert!(get_worker(&c, "w1").await.liveness.is_none(), "no refused heartbeat made w1 managed");

    for ttl in [0, 999, 3_600_001, u64::MAX] {
        let s = set_ttl(&mut c, "default", ttl).await.expect_err("out of bounds");
        assert_eq!(s.code(), Code::InvalidArgument, "{ttl}: {s:?}");
    }
    for max_runtime_ms in [365 * 24 * 3_600_000 + 1, u64::MAX] {
        let r = place("acme", pb::PlacementSpec { max_runtime_ms, ..spec("x", 1) });
        let s = c.scheduler.place(authed(&token, r)).await.expect_err("too long a time limit");
        assert_eq!(s.code(), Code::InvalidArgument, "{max_runtime_ms}: {s:?}");
    }
    let r = place("acme", pb::PlacementSpec { on_worker_lost: 7, ..spec("x", 1) });
    let s = c.scheduler.place(authed(&token, r)).await.expect_err("unknown policy");
    assert_eq!(s.code(), Code::InvalidArgument);

    let r = place("acme", spec("job", 1_000));
    let p = c
        .scheduler
        .place(authed(&token, r))
        .await
        .expect("placed")
        .into_inner()
        .placement
        .expect("placement");
    for status in [0, 4, i32::MAX, -1] {
        let r = pb::ReportStatusRequest {
            request_id: rid(),
            worker_id: "w1".into(),
            tenant_id: "acme".into(),
            placement_id: "job".into(),
            slot: 0,
            assigned_at: p.log_index,
            status,
            exit_code: 0,
            message: String::new(),
        };
        let s = workers.report_status(authed(ADMIN_TOKEN, r)).await.expect_err("bad status");
        assert_eq!(s.code(), Code::InvalidArgument, "{status}: {s:?}");
    }
    let long = pb::ReportStatusRequest {
        request_id: rid(),
        worker_id: "w1".into(),
        tenant_id: "acme".into(),
        placement_id: "job".into(),
        slot: 0,
        assigned_at: p.log_index,
        status: pb::InstanceStatus::Failed.into(),
        exit_code: 1,
        message: "m".repeat(257),
    };
    let s = workers.report_status(authed(ADMIN_TOKEN, long)).await.expect_err("a long message");
    assert_eq!(s.code(), Code::InvalidArgument);
    for slot in [1, 1_000, u32::MAX] {
        let s = report(&c, "w1", "acme", "job", slot, p.log_index, pb::InstanceStatus::Running)
            .await
            .expect_err("no such slot");
        assert!(
            matches!(s.code(), Code::InvalidArgument | Code::FailedPrecondition | Code::NotFound),
            "{slot}: {s:?}"
        );
    }
    let r = pb::ListWorkerPlacementsRequest {
        worker_id: "w1".into(),
        page: Some(pb::Page { after: "no-slash".into(), limit: 10 }),
        read: None,
    };
    let s = workers.list_worker_placements(authed(ADMIN_TOKEN, r)).await.expect_err("a bad page");
    assert_eq!(s.code(), Code::InvalidArgument);
    assert!(placement(&c, "acme", "job").await.expect("still placed").instances[0]
        .running_since_ms
        .is_none());
    cluster.shutdown().await;
}

/// Collects the events of a Watch stream until `count` arrived (or fails after the deadline).
async fn collect(
    stream: &mut tonic::Streaming<pb::WatchResponse>,
    count: usize,
) -> Vec<pb::WatchEvent> {
    let mut events = Vec::new();
    while events.len() < count {
        let next = tokio::time::timeout(DEADLINE, stream.message()).await;
        let message =
            next.expect("an event in time").expect("the stream is healthy").expect("open");
        if let Some(pb::watch_response::Message::Event(e)) = message.message {
            events.push(e);
        }
    }
    events
}

fn positions(events: &[pb::WatchEvent]) -> Vec<(u64, u32)> {
    events.iter().map(|e| (e.log_index, e.event)).collect()
}

/// A tenant's watch sees its own events in log order and no one else's; a watch that resumes
/// on another replica after a position sees exactly what followed it; any replica gives the
/// same positions; a tenant may not watch another tenant or everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_streams_are_ordered_scoped_and_resumable_anywhere() {
    let (cluster, mut c) = setup().await;
    create_tenant(&mut c, "acme").await;
    create_tenant(&mut c, "other").await;
    let token = issue_token(&mut c, "acme").await;
    register(&mut c, "w1", 8_000).await;
    let mut scheduler = c.scheduler.clone();
    let r = pb::WatchRequest { tenant_id: "acme".into(), ..Default::default() };
    let mut stream = scheduler.watch(authed(&token, r)).await.expect("watch").into_inner();
    let first = stream.message().await.expect("healthy").expect("open");
    let Some(pb::watch_response::Message::Progress(start)) = first.message else {
        panic!("a watch from now says where it starts: {first:?}")
    };
    for id in ["a", "b"] {
        c.scheduler.place(authed(&token, place("acme", spec(id, 1_000)))).await.expect("placed");
        c.scheduler
            .place(authed(ADMIN_TOKEN, place("other", spec(id, 1_000))))
            .await
            .expect("placed");
    }
    let r = pb::ReleaseRequest {
        request_id: rid(),
        tenant_id: "acme".into(),
        placement_id: "a".into(),
        fence: None,
    };
    c.scheduler.release(authed(&token, r)).await.expect("released");
    let events = collect(&mut stream, 3).await;
    let kinds: Vec<(&str, &str)> =
        events.iter().map(|e| (e.kind.as_str(), e.placement_id.as_str())).collect();
    assert_eq!(kinds, [("PLACED", "a"), ("PLACED", "b"), ("RELEASED", "a")]);
    assert!(events.iter().all(|e| e.tenant_id == "acme"), "only acme's events");
    assert_eq!(events[0].workers, ["w1"]);
    assert_eq!(events[2].reason, "REQUESTED");
    let pos = positions(&events);
    assert!(pos.windows(2).all(|w| w[0] < w[1]), "in log order: {pos:?}");
    assert!((start.log_index, start.event) < pos[0]);

    // Resume after the first event on every replica: the same two events follow.
    for id in cluster.running() {
        let other = clients(&cluster, id).await;
        let mut scheduler = other.scheduler.clone();
        let r = pb::WatchRequest {
            tenant_id: "acme".into(),
            after_log_index: Some(events[0].log_index),
            after_event: Some(events[0].event),
            kinds: Vec::new(),
        };
        let mut resumed = scheduler.watch(authed(&token, r)).await.expect("resume").into_inner();
        let again = collect(&mut resumed, 2).await;
        assert_eq!(again, events[1..].to_vec(), "replica {id} resumes exactly after the position");
    }
    // A filter by kind.
    let r = pb::WatchRequest {
        tenant_id: "acme".into(),
        after_log_index: Some(start.log_index),
        after_event: Some(start.event),
        kinds: vec!["RELEASED".into()],
    };
    let mut released = scheduler.watch(authed(&token, r)).await.expect("watch").into_inner();
    assert_eq!(positions(&collect(&mut released, 1).await), vec![pos[2]]);

    for (tenant, what) in [("other", "another tenant"), ("", "everything")] {
        let r = pb::WatchRequest { tenant_id: tenant.into(), ..Default::default() };
        let denied = scheduler.watch(authed(&token, r)).await.expect_err(what);
        assert_eq!(denied.code(), Code::PermissionDenied, "{what}");
    }
    for (kinds, what) in [
        (vec!["NOPE".to_string()], "an unknown kind"),
        (vec!["PLACED".to_string(); 33], "too many kinds"),
    ] {
        let r = pb::WatchRequest { tenant_id: "acme".into(), kinds, ..Default::default() };
        let refused = scheduler.watch(authed(&token, r)).await.expect_err(what);
        assert_eq!(refused.code(), Code::InvalidArgument, "{what}");
    }
    cluster.shutdown().await;
}

/// The admin's watch of everything survives the kill of the leader it streams from: the
/// client library resumes on another replica (under a new leader) after the last event it
/// delivered, and the events it delivers equal, position for position, a fresh watch over the
/// same range (no gap, no duplicate).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_resumes_across_a_leader_kill_with_no_gap_and_no_duplicate() {
    let (mut cluster, mut c) = setup().await;
    create_tenant(&mut c, "acme").await;
    register(&mut c, "w1", 8_000).await;
    let first_leader = cluster.leader().await;
    // The library client lists the leader first, so its stream starts there.
    let order: Vec<u64> = std::iter::once(first_leader)
        .chain(cluster.running().into_iter().filter(|id| *id != first_leader))
        .collect();
    let channels = {
        let mut channels = Vec::new();
        for id in &order {
            channels.push((format!("replica {id}"), clients(&cluster, *id).await.channel));
        }
        channels
    };
    let watcher =
        berth::client::Client::with_channels(channels, Some(ADMIN_TOKEN), Default::default())
            .expect("a client");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let watching = tokio::spawn(async move {
        let r = pb::WatchRequest { after_log_index: Some(0), ..Default::default() };
        watcher
            .watch(r, |m| {
                if let Some(pb::watch_response::Message::Event(e)) = m.message {
                    let _ = tx.send(e);
                }
                true
            })
            .await
    });
    let writer = clients(&cluster, first_leader).await;
    let mut writes = writer.scheduler.clone();
    for i in 0..5 {
        writes
            .place(authed(ADMIN_TOKEN, place("acme", spec(&format!("before-{i}"), 100))))
            .await
            .expect("placed");
    }
    let mut seen = Vec::new();
    while !seen.iter().any(|e: &pb::WatchEvent| e.placement_id == "before-4") {
        seen.push(tokio::time::timeout(DEADLINE, rx.recv()).await.expect("in time").expect("open"));
    }
    cluster.stop(first_leader).await;
    let leader = cluster.leader().await;
    assert_ne!(leader, first_leader);
    let writes = clients(&cluster, leader).await.scheduler.clone();
    for i in 0..5 {
        poll("a write after the kill", || {
            let mut writes = writes.clone();
            let r = place("acme", spec(&format!("after-{i}"), 100));
            async move { writes.place(authed(ADMIN_TOKEN, r)).await.ok() }
        })
        .await;
    }
    while !seen.iter().any(|e| e.placement_id == "after-4") {
        seen.push(tokio::time::timeout(DEADLINE, rx.recv()).await.expect("in time").expect("open"));
    }
    watching.abort();
    let pos = positions(&seen);
    assert!(pos.windows(2).all(|w| w[0] < w[1]), "no duplicate, in order: {pos:?}");
    // A fresh watch of the same range on a survivor gives exactly the same events.
    let mut scheduler = clients(&cluster, leader).await.scheduler.clone();
    let r = pb::WatchRequest { after_log_index: Some(0), ..Default::default() };
    let mut fresh = scheduler.watch(authed(ADMIN_TOKEN, r)).await.expect("watch").into_inner();
    let fresh = collect(&mut fresh, seen.len()).await;
    assert_eq!(fresh, seen, "no gap: the resumed history is the whole history");
    cluster.shutdown().await;
}

/// The next message that is not an idle stream's "still here" (an empty change).
async fn next(
    stream: &mut tonic::Streaming<pb::WatchAssignmentsResponse>,
) -> pb::WatchAssignmentsResponse {
    loop {
        let message = tokio::time::timeout(DEADLINE, stream.message()).await.expect("in time");
        let message = message.expect("healthy").expect("open");
        if message.full || !message.assigned.is_empty() || !message.unassigned.is_empty() {
            return message;
        }
    }
}

/// WatchAssignments: the first message is the worker's full set; a placement, a move off a
/// worker that went down, a confirmed reservation and a release each arrive as a change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assignments_stream_the_full_set_then_each_change() {
    let (cluster, mut c) = setup().await;
    create_tenant(&mut c, "acme").await;
    set_ttl(&mut c, "default", 1_000).await.expect("ttl");
    register(&mut c, "w1", 4_000).await;
    c.scheduler
        .place(authed(ADMIN_TOKEN, place("acme", spec("early", 1_000))))
        .await
        .expect("placed");
    register(&mut c, "w2", 4_000).await;
    let mut workers = c.workers.clone();
    let r = pb::WatchAssignmentsRequest { worker_id: "w1".into() };
    let mut stream =
        workers.watch_assignments(authed(ADMIN_TOKEN, r)).await.expect("watch").into_inner();
    let full = next(&mut stream).await;
    assert!(full.full && full.registered && !full.down);
    let ids = |a: &[pb::Assignment]| a.iter().map(|a| a.placement_id.clone()).collect::<Vec<_>>();
    assert_eq!(ids(&full.assigned), ["early"]);

    // Placed on w2 (w1 drained), then w2 stops heartbeating: the instance moves to w1.
    let r = pb::DrainWorkerRequest { request_id: rid(), worker_id: "w1".into(), drain: true };
    c.workers.drain_worker(authed(ADMIN_TOKEN, r)).await.expect("drained");
    heartbeat(&c, "w2").await.expect("managed, alive for a second");
    c.scheduler
        .place(authed(ADMIN_TOKEN, place("acme", spec("moved", 1_000))))
        .await
        .expect("placed");
    let r = pb::DrainWorkerRequest { request_id: rid(), worker_id: "w1".into(), drain: false };
    c.workers.drain_worker(authed(ADMIN_TOKEN, r)).await.expect("undrained");
    let change = next(&mut stream).await;
    assert!(!change.full);
    assert_eq!(ids(&change.assigned), ["moved"], "the lost instance arrives on w1");
    assert!(change.assigned[0].assigned_at > 0);

    let r = pb::ReserveRequest {
        request_id: rid(),
        tenant_id: "acme".into(),
        spec: Some(spec("held", 1_000)),
        ttl_ms: 60_000,
        fence: None,
    };
    c.scheduler.reserve(authed(ADMIN_TOKEN, r)).await.expect("reserved");
    let reserved = next(&mut stream).await;
    assert_eq!(ids(&reserved.assigned), ["held"]);
    assert!(reserved.assigned[0].reservation);
    let r = pb::ConfirmReservationRequest {
        request_id: rid(),
        tenant_id: "acme".into(),
        reservation_id: "held".into(),
        fence: None,
    };
    c.scheduler.confirm_reservation(authed(ADMIN_TOKEN, r)).await.expect("confirmed");
    let confirmed = next(&mut stream).await;
    assert_eq!(
        (ids(&confirmed.unassigned), ids(&confirmed.assigned)),
        (vec!["held".to_string()], vec!["held".to_string()])
    );
    assert!(!confirmed.assigned[0].reservation, "a confirmed reservation arrives as a placement");

    let r = pb::ReleaseRequest {
        request_id: rid(),
        tenant_id: "acme".into(),
        placement_id: "moved".into(),
        fence: None,
    };
    c.scheduler.release(authed(ADMIN_TOKEN, r)).await.expect("released");
    let released = next(&mut stream).await;
    assert_eq!(ids(&released.unassigned), ["moved"]);
    cluster.shutdown().await;
}

/// Operator views across tenants: a pool's placements of every tenant, and the cluster-wide
/// queue; a tenant token sees neither.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_see_pools_and_the_queue_across_tenants() {
    let (cluster, mut c) = setup().await;
    for t in ["acme", "beta"] {
        create_tenant(&mut c, t).await;
    }
    let token = issue_token(&mut c, "acme").await;
    register(&mut c, "w1", 2_000).await;
    for (t, id) in [("beta", "b1"), ("acme", "a1")] {
        c.scheduler.place(authed(ADMIN_TOKEN, place(t, spec(id, 1_000)))).await.expect("placed");
    }
    for (t, id) in [("beta", "b2"), ("acme", "a2")] {
        let r = pb::PlaceRequest { queue_if_unavailable: true, ..place(t, spec(id, 1_500)) };
        let answer = c.scheduler.place(authed(ADMIN_TOKEN, r)).await.expect("queued").into_inner();
        assert!(answer.queued.is_some(), "{id} waits");
    }
    let mut workers = c.workers.clone();
    let r = pb::ListPoolPlacementsRequest {
        pool: String::new(),
        page: Some(pb::Page { after: String::new(), limit: 1 }),
        read: None,
    };
    let first =
        workers.list_pool_placements(authed(ADMIN_TOKEN, r)).await.expect("list").into_inner();
    let key = |p: &pb::Placement| {
        format!("{}/{}", p.tenant_id, p.spec.as_ref().expect("spec").placement_id)
    };
    assert_eq!(first.placements.iter().map(key).collect::<Vec<_>>(), ["acme/a1"]);
    let r = pb::ListPoolPlacementsRequest {
        pool: "default".into(),
        page: Some(pb::Page { after: "acme/a1".into(), limit: 10 }),
        read: None,
    };
    let rest =
        workers.list_pool_placements(authed(ADMIN_TOKEN, r)).await.expect("list").into_inner();
    assert_eq!(rest.placements.iter().map(key).collect::<Vec<_>>(), ["beta/b1"]);
    let r = pb::ListPoolPlacementsRequest { pool: "default".into(), page: None, read: None };
    let s = workers.list_pool_placements(authed(&token, r)).await.expect_err("admin only");
    assert_eq!(s.code(), Code::PermissionDenied);

    let mut scheduler = c.scheduler.clone();
    let r = pb::ListQueueRequest { tenant_id: String::new(), page: None, read: None };
    let queue = scheduler.list_queue(authed(ADMIN_TOKEN, r)).await.expect("queue").into_inner();
    let queued: Vec<String> = queue
        .queued
        .iter()
        .map(|q| format!("{}/{}", q.tenant_id, q.spec.as_ref().expect("spec").placement_id))
        .collect();
    assert_eq!(queued, ["acme/a2", "beta/b2"], "every tenant's queue");
    let r = pb::ListQueueRequest { tenant_id: String::new(), page: None, read: None };
    let s = scheduler.list_queue(authed(&token, r)).await.expect_err("a tenant names itself");
    assert!(matches!(s.code(), Code::InvalidArgument | Code::PermissionDenied), "{s:?}");
    cluster.shutdown().await;
}

/// A replica restarted from its snapshot holds no events before it: a resume point older than
/// that is WATCH_COMPACTED there, while the client library asks the other replicas, which
/// still hold it, and delivers from there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_point_before_a_replicas_snapshot_is_compacted_there_only() {
    let mut cluster = Cluster::start_with(3, snapshotting_options, true).await;
    let leader = cluster.leader().await;
    let mut c = clients(&cluster, leader).await;
    create_tenant(&mut c, "acme").await;
    register(&mut c, "w1", 1_000_000).await;
    for i in 0..60 {
        c.scheduler
            .place(authed(ADMIN_TOKEN, place("acme", spec(&format!("p{i}"), 10))))
            .await
            .expect("placed");
    }
    let restarted = cluster.running().into_iter().find(|id| *id != leader).expect("a follower");
    cluster.stop(restarted).await;
    cluster.restart(restarted).await;
    converged(&cluster).await;
    let there = clients(&cluster, restarted).await;
    let mut scheduler = there.scheduler.clone();
    let r = pb::WatchRequest { after_log_index: Some(0), ..Default::default() };
    let refused = scheduler.watch(authed(ADMIN_TOKEN, r.clone())).await.expect_err("compacted");
    assert_eq!(
        (refused.code(), reason(&refused).as_str()),
        (Code::FailedPrecondition, "WATCH_COMPACTED")
    );

    let mut channels = vec![(format!("replica {restarted}"), there.channel.clone())];
    for id in cluster.running().into_iter().filter(|id| *id != restarted) {
        channels.push((format!("replica {id}"), clients(&cluster, id).await.channel));
    }
    let client =
        berth::client::Client::with_channels(channels, Some(ADMIN_TOKEN), Default::default())
            .expect("a client");
    let mut first = None;
    client
        .watch(r, |m| match m.message {
            Some(pb::watch_response::Message::Event(e)) => {
                first = Some(e);
                false
            }
            _ => true,
        })
        .await
        .expect("another replica still holds it");
    let first = first.expect("an event");
    assert_eq!((first.kind.as_str(), first.tenant_id.as_str()), ("TENANT_CREATED", "acme"));
    cluster.shutdown().await;
}
