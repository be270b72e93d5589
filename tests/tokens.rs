//! Unknown tokens cost the leader a bounded number of ReadIndex rounds: a flood of random
//! tokens, over one connection or many, is refused without reads once the connection's or the
//! replica's budget of lookups is spent, while valid tokens keep working.

mod common;

use std::time::Duration;

use berth::api::auth::{
    UNKNOWN_TOKEN_LOOKUPS_PER_CONNECTION_MAX, UNKNOWN_TOKEN_LOOKUPS_PER_SECOND_MAX,
    UNKNOWN_TOKEN_LOOKUP_REFILL_MS,
};
use berth::api::pb;
use common::*;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tonic::Code;

fn random_token() -> String {
    format!("berth_{:032x}", rand::random::<u128>())
}

fn get_alpha(stale_ok: bool) -> pb::GetTenantRequest {
    pb::GetTenantRequest { tenant_id: "alpha".into(), read: Some(pb::ReadOptions { stale_ok }) }
}

/// Starts sending `count` random tokens on `c`'s connection from `tasks` concurrent tasks.
/// Every one must be UNAUTHENTICATED; each task counts those refused without a lookup.
fn flood(c: &Clients, tasks: usize, count: usize) -> JoinSet<usize> {
    let mut flooding = JoinSet::new();
    for _ in 0..tasks {
        let mut tenants = c.tenants.clone();
        flooding.spawn(async move {
            let mut not_looked_up = 0;
            for _ in 0..count / tasks {
                let refused = tenants
                    .get_tenant(authed(&random_token(), get_alpha(true)))
                    .await
                    .expect_err("a random token is refused");
                assert_eq!(refused.code(), Code::Unauthenticated, "{refused}");
                not_looked_up += usize::from(refused.message().contains("not looked up"));
            }
            not_looked_up
        });
    }
    flooding
}

/// How many of a flood's tokens were refused without a lookup, once it is over.
async fn not_looked_up(flooding: JoinSet<usize>) -> usize {
    flooding.join_all().await.into_iter().sum()
}

/// Lookups a budget of `burst`, regaining one every `refill`, allows within `elapsed`.
fn allowed(burst: u32, refill: Duration, elapsed: Duration) -> u64 {
    let refills = elapsed.as_nanos() / refill.as_nanos();
    u64::from(burst) + u64::try_from(refills).expect("small") + 1
}

/// One connection to a follower and one to the leader, each flooded from several tasks: the
/// leader serves at most the two connections' budgets of ReadIndex rounds; a valid token keeps
/// working on a fresh connection during and after the flood, and a just-issued one works at
/// once on the flooded follower.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_on_one_connection_is_bounded_by_its_budget() {
    let (cluster, mut c) = setup().await;
    create_tenant(&mut c, "alpha").await;
    let valid = issue_token(&mut c, "alpha").await;
    converged(&cluster).await;
    let leader = cluster.leader().await;
    let follower = cluster.running().into_iter().find(|id| *id != leader).expect("a follower");
    let before = cluster.replica(leader).status().read_indexes;
    let started = Instant::now();
    let (to_follower, to_leader) =
        (clients(&cluster, follower).await, clients(&cluster, leader).await);

    const PER_CONNECTION: usize = 200;
    let floods = [flood(&to_follower, 4, PER_CONNECTION), flood(&to_leader, 4, PER_CONNECTION)];
    let floods = async {
        let [a, b] = floods;
        not_looked_up(a).await + not_looked_up(b).await
    };
    let valid_reads = async {
        // A valid token on a fresh connection, while the flood runs (stale reads: they need
        // no ReadIndex, so the count below is the flood's alone).
        let mut fresh = clients(&cluster, follower).await;
        for _ in 0..20 {
            fresh.tenants.get_tenant(authed(&valid, get_alpha(true))).await.expect("valid token");
        }
    };
    let (refused_at_once, ()) = tokio::join!(floods, valid_reads);
    let elapsed = started.elapsed();
    let served = cluster.replica(leader).status().read_indexes - before;
    let refill = Duration::from_millis(UNKNOWN_TOKEN_LOOKUP_REFILL_MS);
    let bound = 2 * allowed(UNKNOWN_TOKEN_LOOKUPS_PER_CONNECTION_MAX, refill, elapsed);
    assert!(served <= bound, "{served} ReadIndex rounds in {elapsed:?}, more than {bound}");
    assert!(served >= 1, "the flood's first unknown tokens are looked up");
    let looked_up = 2 * PER_CONNECTION - refused_at_once;
    assert!(looked_up as u64 <= bound, "{looked_up} lookups, more than {bound}");

    let mut fresh = clients(&cluster, follower).await;
    fresh.tenants.get_tenant(authed(&valid, get_alpha(false))).await.expect("valid after");
    // Issued through the leader, used at once on the follower, which may not have applied it.
    let mut at_leader = clients(&cluster, leader).await;
    let r = pb::IssueTokenRequest {
        request_id: rid(),
        tenant_id: "alpha".into(),
        token_name: "fresh".into(),
        ttl_ms: 0,
    };
    let issued = at_leader.tenants.issue_token(authed(ADMIN_TOKEN, r)).await.expect("issued");
    let token = issued.into_inner().token;
    fresh.tenants.get_tenant(authed(&token, get_alpha(false))).await.expect("just issued works");
    cluster.shutdown().await;
}

/// Many connections to one follower each spend their own small budget, but together no more
/// than the replica's lookups per second reach the leader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_connections_share_the_replica_budget() {
    let (cluster, mut c) = setup().await;
    create_tenant(&mut c, "alpha").await;
    let valid = issue_token(&mut c, "alpha").await;
    converged(&cluster).await;
    let leader = cluster.leader().await;
    let follower = cluster.running().into_iter().find(|id| *id != leader).expect("a follower");
    let before = cluster.replica(leader).status().read_indexes;
    let started = Instant::now();

    const CONNECTIONS: usize = 40;
    const PER_CONNECTION: usize = 5;
    let mut connections = Vec::new();
    for _ in 0..CONNECTIONS {
        connections.push(clients(&cluster, follower).await);
    }
    // Every connection's flood runs at once.
    let floods: Vec<_> = connections.iter().map(|c| flood(c, 1, PER_CONNECTION)).collect();
    let mut refused_at_once = 0;
    for flooding in floods {
        refused_at_once += not_looked_up(flooding).await;
    }
    let elapsed = started.elapsed();
    let served = cluster.replica(leader).status().read_indexes - before;
    let interval = Duration::from_secs(1) / UNKNOWN_TOKEN_LOOKUPS_PER_SECOND_MAX;
    let bound = allowed(UNKNOWN_TOKEN_LOOKUPS_PER_SECOND_MAX, interval, elapsed);
    assert!(served <= bound, "{served} ReadIndex rounds in {elapsed:?}, more than {bound}");
    let looked_up = CONNECTIONS * PER_CONNECTION - refused_at_once;
    assert!(looked_up as u64 <= bound, "{looked_up} lookups, more than {bound}");
    let connection_budgets =
        CONNECTIONS as u64 * u64::from(UNKNOWN_TOKEN_LOOKUPS_PER_CONNECTION_MAX);
    assert!(
        bound < connection_budgets.min((CONNECTIONS * PER_CONNECTION) as u64),
        "test too slow to tell"
    );

    let mut fresh = clients(&cluster, follower).await;
    fresh.tenants.get_tenant(authed(&valid, get_alpha(false))).await.expect("valid after");
    cluster.shutdown().await;
}
