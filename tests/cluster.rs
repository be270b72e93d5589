//! In-process clusters of real replicas on 127.0.0.1: election, writes through any replica,
//! linearizable reads, leader failure, restart from disk, snapshot catch-up, membership
//! changes, group commit and log-time expiry without client traffic.

mod common;

use std::time::Duration;

use berth::raft::replica::{Consistency, Replica, WriteError};
use berth::raft::types::Proposal;
use berth::scheduler::{Answer, Applied, Command, Query};
use common::*;
use tokio::time::Instant;

fn register(i: u64) -> Proposal {
    register_worker("register", i)
}

async fn write(replica: &Replica, proposal: Proposal) -> Applied {
    let applied = replica.propose(proposal).await.expect("write committed");
    assert!(applied.result.is_ok(), "write refused: {:?}", applied.result);
    applied
}

async fn workers(replica: &Replica, consistency: Consistency) -> usize {
    replica
        .read(consistency, DEADLINE, |s| s.scheduler.state().workers.len())
        .await
        .expect("read served")
}

/// Three replicas elect a leader; writes through the leader and through a follower commit;
/// a linearizable read on a follower sees both; when the leader stops, a new one is elected
/// within a few election timeouts and every acknowledged write is still there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_elect_replicate_and_fail_over() {
    let mut cluster = Cluster::start(3, fast_options).await;
    let leader = cluster.leader().await;
    let follower = cluster.running().into_iter().find(|id| *id != leader).expect("a follower");

    let a = write(cluster.replica(leader), register(1)).await;
    let b = write(cluster.replica(follower), register(2)).await;
    assert!(b.log_index > a.log_index, "command indexes order the writes");
    assert_eq!(workers(cluster.replica(follower), Consistency::Linearizable).await, 2);

    let stopped_at = Instant::now();
    cluster.stop(leader).await;
    let survivor = cluster.running()[0];
    let new_leader = poll("a new leader", || {
        let replica = cluster.replica(survivor).clone();
        async move { replica.wait_for_leader(DEADLINE).await.ok().filter(|seen| *seen != leader) }
    })
    .await;
    let failover = stopped_at.elapsed();
    assert!(failover < Duration::from_secs(5), "failover took {failover:?}");
    write(cluster.replica(survivor), register(3)).await;
    for id in cluster.running() {
        assert_eq!(workers(cluster.replica(id), Consistency::Linearizable).await, 3);
    }
    assert_ne!(new_leader, leader);
    converged(&cluster).await;
    cluster.shutdown().await;
}

/// A replica restarted from its data directory keeps what it had and catches up on what it
/// missed; retrying an acknowledged request id returns the first answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_replica_catches_up_from_disk() {
    let mut cluster = Cluster::start(3, fast_options).await;
    let leader = cluster.leader().await;
    for i in 0..10 {
        write(cluster.replica(leader), register(i)).await;
    }
    let follower = cluster.running().into_iter().find(|id| *id != leader).expect("a follower");
    cluster.stop(follower).await;
    let mut first = None;
    for i in 10..30 {
        let applied = write(cluster.replica(leader), register(i)).await;
        first.get_or_insert(applied);
    }
    cluster.restart(follower).await;
    let statuses = converged(&cluster).await;
    assert!(statuses.iter().all(|s| s.applied_command_index >= 30));
    assert_eq!(workers(cluster.replica(follower), Consistency::Stale).await, 30);

    let retry = cluster.replica(follower).propose(register(10)).await.expect("retry answered");
    let first = first.expect("first write");
    assert!(retry.replayed);
    assert_eq!((retry.log_index, retry.result), (first.log_index, first.result));
    cluster.shutdown().await;
}

/// A replica that falls behind a purged log is brought up to date by snapshot install.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_replica_catches_up_by_snapshot() {
    let mut cluster = Cluster::start(3, snapshotting_options).await;
    let leader = cluster.leader().await;
    let follower = cluster.running().into_iter().find(|id| *id != leader).expect("a follower");
    cluster.stop(follower).await;
    // One command per entry, so the log grows well past the snapshot threshold.
    for i in 0..80 {
        write(cluster.replica(leader), register(i)).await;
    }
    eventually("the leader to purge its log", || {
        let status = cluster.replica(leader).status();
        status.purged_index.is_some_and(|p| p > 20)
    })
    .await;
    cluster.restart(follower).await;
    converged(&cluster).await;
    let status = cluster.replica(follower).status();
    assert!(status.snapshot_index.is_some(), "follower installed a snapshot: {status:?}");
    assert_eq!(workers(cluster.replica(follower), Consistency::Stale).await, 80);
    cluster.shutdown().await;
}

/// Replicas are added (learner, catch-up, promotion) and removed online while a client keeps
/// writing; every acknowledged write survives and the remaining members agree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_changes_while_writing() {
    let mut cluster = Cluster::start(3, snapshotting_options).await;
    let leader = cluster.leader().await;
    let writer_replica = cluster.replica(leader).clone();
    let writer = tokio::spawn(async move {
        let mut acknowledged = 0u64;
        for i in 0..150 {
            match writer_replica.propose(register(i)).await {
                Ok(applied) if applied.result.is_ok() => acknowledged += 1,
                Ok(applied) => panic!("refused: {:?}", applied.result),
                Err(WriteError::Unknown(_)) | Err(WriteError::NoLeader(_)) => {}
                Err(e) => panic!("write failed: {e}"),
            }
        }
        acknowledged
    });

    cluster.spawn_extra(4).await;
    cluster.spawn_extra(5).await;
    let addr4 = cluster.members[&4].addr.clone();
    let addr5 = cluster.members[&5].addr.clone();
    cluster.replica(leader).add_replica(4, addr4).await.expect("adds 4");
    cluster.replica(leader).add_replica(5, addr5).await.expect("adds 5");
    let removed = cluster.running().into_iter().find(|id| *id != leader && *id <= 3).expect("one");
    cluster.replica(leader).remove_replica(removed).await.expect("removes one");
    let acknowledged = writer.await.expect("writer finished");
    assert!(acknowledged >= 140, "writes continued throughout ({acknowledged} of 150)");

    cluster.stop(removed).await;
    let status = cluster.replica(leader).status();
    let voters: Vec<u64> = status.voters.keys().copied().collect();
    let mut expected: Vec<u64> =
        vec![1, 2, 3, 4, 5].into_iter().filter(|id| *id != removed).collect();
    expected.sort();
    assert_eq!(voters, expected);
    write(cluster.replica(leader), register(1_000)).await;
    converged(&cluster).await;
    for id in cluster.running() {
        let n = workers(cluster.replica(id), Consistency::Stale).await as u64;
        assert!(n > acknowledged, "replica {id} has {n} workers, {acknowledged} acknowledged");
    }
    cluster.shutdown().await;
}

/// Concurrent writes are committed several to a log entry (group commit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_share_log_entries() {
    let cluster = Cluster::start(3, fast_options).await;
    let leader = cluster.leader().await;
    let replica = cluster.replica(leader).clone();
    let before = replica.status().last_log_index.unwrap_or(0);
    let writes: Vec<_> = (0..200)
        .map(|i| {
            let replica = replica.clone();
            tokio::spawn(async move { write(&replica, register(i)).await })
        })
        .collect();
    let mut indexes = Vec::new();
    for w in writes {
        indexes.push(w.await.expect("write task").log_index);
    }
    indexes.sort();
    indexes.dedup();
    assert_eq!(indexes.len(), 200, "every command has its own command index");
    let entries = replica.status().last_log_index.unwrap_or(0) - before;
    assert!(entries < 100, "200 commands took {entries} log entries");
    cluster.shutdown().await;
}

/// Concurrent linearizable reads, on the leader and through a follower, share ReadIndex
/// rounds, and each still sees every write that finished before it was asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_linearizable_reads_share_rounds_and_see_every_finished_write() {
    let cluster = Cluster::start(3, fast_options).await;
    let leader = cluster.leader().await;
    let follower = cluster.running().into_iter().find(|id| *id != leader).expect("a follower");
    let rounds = || cluster.replica(leader).status().read_indexes;
    let before = rounds();
    const WRITES: u64 = 20;
    const READS_PER_WRITE: usize = 20;
    for i in 0..WRITES {
        write(cluster.replica(leader), register(i)).await;
        let reads: Vec<_> = (0..READS_PER_WRITE)
            .map(|r| {
                let on = cluster.replica(if r % 2 == 0 { leader } else { follower }).clone();
                tokio::spawn(async move { workers(&on, Consistency::Linearizable).await })
            })
            .collect();
        for read in reads {
            let seen = read.await.expect("read task");
            assert!(seen as u64 > i, "a read asked after write {i} finished saw {seen} workers");
        }
    }
    let reads = WRITES * READS_PER_WRITE as u64;
    let served = rounds() - before;
    assert!((1..reads / 2).contains(&served), "{reads} reads took {served} ReadIndex rounds");
    cluster.shutdown().await;
}

/// A lease expires in log time with no client traffic: the leader's ticker proposes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_expire_without_client_traffic() {
    let cluster = Cluster::start(3, fast_options).await;
    let leader = cluster.leader().await;
    let replica = cluster.replica(leader).clone();
    write(
        &replica,
        Proposal {
            request_id: Some("tenant".into()),
            command: Command::CreateTenant { tenant: "acme".into(), parent: None, weight: 1 },
            token: None,
        },
    )
    .await;
    let granted = write(
        &replica,
        Proposal {
            request_id: Some("lock".into()),
            command: Command::AcquireLease {
                tenant: "acme".into(),
                lease: "lock".into(),
                holder: "me".into(),
                ttl_ms: 300,
            },
            token: None,
        },
    )
    .await;
    assert!(granted.result.is_ok());
    let lease = || async {
        replica
            .read(Consistency::Linearizable, DEADLINE, |s| {
                s.scheduler.query(&Query::Lease("acme".into(), "lock".into()))
            })
            .await
            .expect("read")
    };
    poll("the lease to expire", || async { (lease().await == Answer::Lease(None)).then_some(()) })
        .await;
    cluster.shutdown().await;
}
