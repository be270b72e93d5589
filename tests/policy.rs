//! Policy versions through the API: a tenant reads only its own history, only the admin rolls
//! back, a rollback is idempotent by request id and answers the version it became, and bad
//! input is refused without an echo.

mod common;

use berth::api::pb;
use common::*;
use tonic::Code;

fn rollback(tenant: &str, to_version: u64) -> pb::RollbackPolicyRequest {
    pb::RollbackPolicyRequest { request_id: rid(), tenant_id: tenant.into(), to_version }
}

fn history(tenant: &str) -> pb::GetPolicyHistoryRequest {
    pb::GetPolicyHistoryRequest { tenant_id: tenant.into(), read: None }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_is_scoped_rollback_is_the_admins_and_bad_input_changes_nothing() {
    let (cluster, mut c) = setup().await;
    create_tenant(&mut c, "acme").await;
    create_tenant(&mut c, "other").await;
    let token = issue_token(&mut c, "acme").await;
    let quota = pb::Quota {
        total: Some(pb::Limits { jobs: Some(5), ..Default::default() }),
        ..Default::default()
    };
    let set =
        pb::SetQuotaRequest { request_id: rid(), tenant_id: "acme".into(), quota: Some(quota) };
    let set = c.tenants.set_quota(authed(ADMIN_TOKEN, set)).await.expect("set").into_inner();

    let own = c.tenants.get_policy_history(authed(&token, history("acme"))).await;
    let own = own.expect("a tenant reads its own history").into_inner();
    assert_eq!(own.current, 2);
    let v2 = &own.versions[1];
    assert_eq!((v2.change.as_str(), v2.actor.as_str()), ("quota", "admin"));
    assert_eq!(v2.log_index, set.write.expect("write info").log_index);
    let theirs = c.tenants.get_policy_history(authed(&token, history("other"))).await;
    assert_eq!(theirs.expect_err("another tenant's").code(), Code::PermissionDenied);
    let denied = c.tenants.rollback_policy(authed(&token, rollback("acme", 1))).await;
    assert_eq!(denied.expect_err("a tenant may not roll back").code(), Code::PermissionDenied);

    let zero = c.tenants.rollback_policy(authed(ADMIN_TOKEN, rollback("acme", 0))).await;
    let zero = zero.expect_err("versions start at 1");
    assert_eq!((zero.code(), meta(&zero, "field")), (Code::InvalidArgument, "to_version".into()));
    let gone = c.tenants.rollback_policy(authed(ADMIN_TOKEN, rollback("acme", 99))).await;
    let gone = gone.expect_err("no version 99");
    assert_eq!((gone.code(), reason(&gone)), (Code::NotFound, "POLICY_VERSION_NOT_FOUND".into()));
    assert_eq!(meta(&gone, "oldest"), "1");
    let long = "x".repeat(100_000);
    let hostile = c.tenants.rollback_policy(authed(ADMIN_TOKEN, rollback(&long, 1))).await;
    let hostile = hostile.expect_err("a bad tenant id");
    assert_eq!(hostile.code(), Code::InvalidArgument);
    assert!(hostile.message().len() < 300, "not echoed: {} bytes", hostile.message().len());
    let missing = c.tenants.get_policy_history(authed(ADMIN_TOKEN, history("nobody"))).await;
    assert_eq!(missing.expect_err("no such tenant").code(), Code::NotFound);
    let after = c.tenants.get_policy_history(authed(ADMIN_TOKEN, history("acme"))).await;
    assert_eq!(after.expect("history").into_inner().current, 2, "the refusals changed nothing");

    // Roll back to creation: no quota again, as version 3; the retry is the same answer.
    let once = rollback("acme", 1);
    let first = c.tenants.rollback_policy(authed(ADMIN_TOKEN, once.clone())).await;
    let first = first.expect("rolled back").into_inner();
    let again = c.tenants.rollback_policy(authed(ADMIN_TOKEN, once)).await;
    let again = again.expect("retried").into_inner();
    assert_eq!((first.version, again.version), (3, 3));
    let (w1, w2) = (first.write.expect("write"), again.write.expect("write"));
    assert!(w2.replayed && w1.log_index == w2.log_index);
    let get = pb::GetQuotaRequest { tenant_id: "acme".into(), read: None };
    let got = c.tenants.get_quota(authed(ADMIN_TOKEN, get)).await.expect("quota").into_inner();
    assert_eq!(got.policy_version, 3);
    let jobs = got.quota.and_then(|q| q.total).and_then(|t| t.jobs);
    assert_eq!(jobs, None, "the quota of version 1: none");
    cluster.shutdown().await;
}
