//! A revoked token never reads again, on any replica, stale or not, once its revocation was
//! answered; the vouch lease that makes stale reads safe costs a follower at most one
//! ReadIndex round per lease, however many stale reads share it.

mod common;

use std::time::Duration;

use berth::api::pb;
use berth::raft::replica::TOKEN_VOUCH_LEASE;
use common::*;
use tokio::time::Instant;
use tonic::{Code, Status};

fn get(tenant: &str, stale_ok: bool) -> pb::GetTenantRequest {
    pb::GetTenantRequest { tenant_id: tenant.into(), read: Some(pb::ReadOptions { stale_ok }) }
}

/// Reads tenant acme through `c` with `token`.
async fn read(c: &Clients, token: &str, stale_ok: bool) -> Result<pb::GetTenantResponse, Status> {
    let mut tenants = c.tenants.clone();
    tenants.get_tenant(authed(token, get("acme", stale_ok))).await.map(|r| r.into_inner())
}

/// Revokes the `ci` token of acme through `c`; returns the revocation's log index.
async fn revoke(c: &mut Clients) -> u64 {
    let r = pb::RevokeTokenRequest {
        request_id: rid(),
        tenant_id: "acme".into(),
        token_name: "ci".into(),
    };
    let revoked = c.tenants.revoke_token(authed(ADMIN_TOKEN, r)).await.expect("revoked");
    revoked.into_inner().write.expect("write info").log_index
}

/// A 3-replica cluster with the API, tenant acme and a token for it; returns the cluster, the
/// leader's clients, the token and the two followers.
async fn acme() -> (Cluster, Clients, String, u64, u64) {
    let cluster = Cluster::start_with(3, fast_options, true).await;
    let leader = cluster.leader().await;
    let followers: Vec<u64> = cluster.running().into_iter().filter(|id| *id != leader).collect();
    let mut on_leader = clients(&cluster, leader).await;
    create_tenant(&mut on_leader, "acme").await;
    let token = issue_token(&mut on_leader, "acme").await;
    (cluster, on_leader, token, followers[0], followers[1])
}

/// A replica cut off from the others, which never learns of the revocation, refuses the
/// revoked token for stale reads (it cannot vouch for it) and linearizable reads, while an
/// admin stale read there still answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_cut_off_refuses_a_token_revoked_behind_its_back() {
    let (cluster, mut on_leader, token, x, _) = acme().await;
    let on_x = clients(&cluster, x).await;
    read(&on_x, &token, true).await.expect("a stale read with the token on x");
    read(&on_x, &token, false).await.expect("a linearizable read with the token on x");

    cluster.links.cut_off(&cluster.members[&x].addr);
    let revoked_at = revoke(&mut on_leader).await;
    let applied_on_x = cluster.replica(x).status().applied_command_index;
    assert!(applied_on_x < revoked_at, "x applied the revocation ({applied_on_x} >= {revoked_at})");

    let stale = read(&on_x, &token, true).await.expect_err("a stale read with a revoked token");
    let refused = matches!(
        (stale.code(), reason(&stale).as_str()),
        (Code::Unavailable, "CANNOT_VOUCH_FOR_TOKEN") | (Code::Unauthenticated, _)
    );
    assert!(refused, "{stale:?}");
    let linearizable =
        read(&on_x, &token, false).await.expect_err("a linearizable read with a revoked token");
    let refused = [Code::Unavailable, Code::DeadlineExceeded, Code::Unauthenticated]
        .contains(&linearizable.code());
    assert!(refused, "{linearizable:?}");
    let admin = read(&on_x, ADMIN_TOKEN, true).await.expect("an admin stale read on x");
    assert_eq!(admin.tenant.map(|t| t.tenant_id).as_deref(), Some("acme"));
    cluster.shutdown().await;
}

/// Right after RevokeToken returns, a stale read with the token on a follower that lags the
/// leader (everything sent to it is delayed) is refused, though it vouched for the token just
/// before: UNAUTHENTICATED once it renewed its vouch lease past the revocation, or UNAVAILABLE
/// (`CANNOT_VOUCH_FOR_TOKEN`) if, on a loaded machine, it could not renew it in time. Never
/// data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_follower_refuses_a_token_right_after_its_revocation_returns() {
    let (cluster, mut on_leader, token, y, _) = acme().await;
    let on_y = clients(&cluster, y).await;
    // Less than the heartbeat interval, openraft's timeout for an AppendEntries round trip.
    cluster.links.slow_down(&cluster.members[&y].addr, Duration::from_millis(20));
    read(&on_y, &token, true).await.expect("a stale read with the token on y");

    revoke(&mut on_leader).await;
    let stale = read(&on_y, &token, true).await.expect_err("a stale read with a revoked token");
    let refused = matches!(
        (stale.code(), reason(&stale).as_str()),
        (Code::Unauthenticated, _) | (Code::Unavailable, "CANNOT_VOUCH_FOR_TOKEN")
    );
    assert!(refused, "{stale:?}");
    cluster.shutdown().await;
}

/// Many concurrent stale reads with a tenant token on a follower that holds no vouch lease
/// yet share one renewal: about one ReadIndex round per lease period, not one per read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_stale_reads_share_one_read_index_round_per_lease() {
    let (cluster, _, token, y, _) = acme().await;
    let on_y = std::sync::Arc::new(clients(&cluster, y).await);
    // Linearizable, so y knows the token but has not vouched for it yet.
    read(&on_y, &token, false).await.expect("a linearizable read with the token on y");

    // Every ReadIndex round y asks for is served by the leader, which counts them.
    let leader = cluster.leader().await;
    let served = || cluster.replica(leader).status().read_indexes;
    let rounds_before = served();
    let started = Instant::now();
    let mut reads = tokio::task::JoinSet::new();
    for _ in 0..READS {
        let (on_y, token) = (on_y.clone(), token.clone());
        reads.spawn(async move { read(&on_y, &token, true).await });
    }
    while let Some(done) = reads.join_next().await {
        done.expect("a read task").expect("a stale read with the token on y");
    }
    let periods = started.elapsed().as_millis() / TOKEN_VOUCH_LEASE.as_millis() + 1;
    let rounds = u128::from(served() - rounds_before);
    // A renewal asks again when the leader could not confirm at once (a loaded machine).
    assert!(
        (1..=periods + 2).contains(&rounds),
        "{rounds} ReadIndex rounds for {READS} stale reads over {periods} lease periods (y is {})",
        cluster.replica(y).status().role
    );
    cluster.shutdown().await;
}

/// Concurrent stale reads in the lease test.
const READS: usize = 500;
