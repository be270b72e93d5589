//! The Billing service on a real cluster: price plans (admin only, idempotent by request id,
//! every bad input refused with a short error and no change), the plan a tenant pays by, and a
//! tenant's statement — its own token reads its own, never another tenant's.

mod common;

use std::str::FromStr;

use berth::api::pb;
use common::*;
use rust_decimal::{Decimal, RoundingStrategy};
use tonic::Code;

fn tier(up_to_hours: Option<u64>, per_hour: &str) -> pb::PriceTier {
    pb::PriceTier { up_to_hours, per_hour: per_hour.into() }
}

fn item(name: &str, tiers: Vec<pb::PriceTier>) -> pb::ItemPrice {
    pb::ItemPrice { item: name.into(), tiers }
}

fn set_plan(plan: &str, pools: Vec<pb::PoolPrices>) -> pb::SetPricePlanRequest {
    pb::SetPricePlanRequest { request_id: rid(), plan: plan.into(), pools, effective_at_ms: None }
}

fn every_pool(items: Vec<pb::ItemPrice>) -> Vec<pb::PoolPrices> {
    vec![pb::PoolPrices { pool: String::new(), items }]
}

fn d(s: &str) -> Decimal {
    Decimal::from_str(s).expect("a decimal")
}

/// Bad prices, unknown items and plans, and tenant tokens are refused, each with a short error,
/// and nothing changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_prices_are_refused() {
    let (cluster, mut c) = setup().await;
    create_tenant(&mut c, "acme").await;
    let acme = issue_token(&mut c, "acme").await;
    let cpu = |price: &str| every_pool(vec![item("cpu", vec![tier(None, price)])]);
    let bad: Vec<(pb::SetPricePlanRequest, &str)> = vec![
        (set_plan("p", cpu("-0.01")), "INVALID_ARGUMENT"),
        (set_plan("p", cpu("0.0000001")), "INVALID_ARGUMENT"),
        (set_plan("p", cpu("1000000.5")), "INVALID_ARGUMENT"),
        (set_plan("p", cpu(&"9".repeat(10_000))), "INVALID_DECIMAL"),
        (set_plan("p", cpu("one")), "INVALID_DECIMAL"),
        (set_plan("p", every_pool(vec![item("gpu", vec![tier(None, "1")])])), "INVALID_ARGUMENT"),
        (set_plan("p", every_pool(vec![item(&"x".repeat(5_000), vec![])])), "INVALID_ARGUMENT"),
        (set_plan("p", every_pool(vec![item("cpu", vec![])])), "INVALID_ARGUMENT"),
        (
            set_plan(
                "p",
                every_pool(vec![item("cpu", (0..100).map(|_| tier(None, "1")).collect())]),
            ),
            "INVALID_ARGUMENT",
        ),
        (
            set_plan(
                "p",
                every_pool(vec![item(
                    "cpu",
                    vec![tier(Some(5), "1"), tier(Some(5), "1"), tier(None, "1")],
                )]),
            ),
            "INVALID_ARGUMENT",
        ),
        (
            set_plan(
                "p",
                every_pool(vec![
                    item("cpu", vec![tier(None, "1")]),
                    item("cpu", vec![tier(None, "2")]),
                ]),
            ),
            "INVALID_ARGUMENT",
        ),
        (set_plan("p", [cpu("1"), cpu("2")].concat()), "INVALID_ARGUMENT"),
        (
            set_plan(
                "p",
                (0..2_000)
                    .map(|i| pb::PoolPrices { pool: format!("pool-{i}"), items: Vec::new() })
                    .collect(),
            ),
            "INVALID_ARGUMENT",
        ),
        (set_plan(&"p".repeat(5_000), cpu("1")), "INVALID_ARGUMENT"),
        (set_plan("", cpu("1")), "INVALID_ARGUMENT"),
    ];
    for (request, expected) in bad {
        let refused =
            c.billing.set_price_plan(authed(ADMIN_TOKEN, request)).await.expect_err("bad");
        assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
        assert_eq!(reason(&refused), expected, "{refused:?}");
        assert!(refused.message().len() < 300, "a short error: {}", refused.message());
    }
    // A tenant token may not price, list plans or choose its plan.
    let denied = [
        c.billing.set_price_plan(authed(&acme, set_plan("p", cpu("1")))).await.expect_err("admin"),
        c.billing
            .list_price_plans(authed(&acme, pb::ListPricePlansRequest { read: None }))
            .await
            .expect_err("admin"),
        c.billing
            .set_billing_plan(authed(
                &acme,
                pb::SetBillingPlanRequest {
                    request_id: rid(),
                    tenant_id: "acme".into(),
                    plan: String::new(),
                },
            ))
            .await
            .expect_err("admin"),
    ];
    for refused in denied {
        assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    }
    let unknown = pb::SetBillingPlanRequest {
        request_id: rid(),
        tenant_id: "acme".into(),
        plan: "nope".into(),
    };
    let refused =
        c.billing.set_billing_plan(authed(ADMIN_TOKEN, unknown)).await.expect_err("unknown");
    assert_eq!((refused.code(), reason(&refused).as_str()), (Code::NotFound, "PLAN_NOT_FOUND"));
    let plans = c
        .billing
        .list_price_plans(authed(ADMIN_TOKEN, pb::ListPricePlansRequest { read: None }))
        .await
        .expect("lists")
        .into_inner()
        .plans;
    assert!(plans.is_empty(), "nothing was set: {plans:?}");
    // Ids too long or malformed, and unknown tenants.
    let long = "a".repeat(5_000);
    let statement = |tenant: &str| pb::GetStatementRequest { tenant_id: tenant.into(), read: None };
    let refused = c.billing.get_statement(authed(ADMIN_TOKEN, statement(&long))).await;
    let refused = refused.expect_err("long tenant id");
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(refused.message().len() < 300, "a short error: {}", refused.message());
    let refused = c.billing.get_statement(authed(ADMIN_TOKEN, statement(""))).await;
    assert_eq!(refused.expect_err("no tenant").code(), Code::InvalidArgument);
    let refused = c.billing.get_statement(authed(ADMIN_TOKEN, statement("nobody"))).await;
    assert_eq!(refused.expect_err("unknown tenant").code(), Code::NotFound);
    let assign = pb::SetBillingPlanRequest { request_id: rid(), tenant_id: long, plan: "p".into() };
    let refused = c.billing.set_billing_plan(authed(ADMIN_TOKEN, assign)).await;
    assert_eq!(refused.expect_err("long tenant id").code(), Code::InvalidArgument);
    let assign = pb::SetBillingPlanRequest {
        request_id: rid(),
        tenant_id: "acme".into(),
        plan: "p".repeat(5_000),
    };
    let refused = c.billing.set_billing_plan(authed(ADMIN_TOKEN, assign)).await;
    let refused = refused.expect_err("long plan id");
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(refused.message().len() < 300, "a short error: {}", refused.message());
    cluster.shutdown().await;
}

/// Prices set once (a retry replays the first answer), a tenant's own plan, and statements:
/// each line's amount is its exact quantity at its price, rounded once to the cent, and the
/// total is their sum. A tenant reads its own statement and no other's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_price_what_tenants_hold() {
    let (cluster, mut c) = setup().await;
    create_tenant(&mut c, "acme").await;
    create_tenant(&mut c, "globex").await;
    let acme = issue_token(&mut c, "acme").await;
    register(&mut c, "w1", 64_000).await;
    let default = set_plan("default", every_pool(vec![item("cpu", vec![tier(None, "3600")])]));
    let first = c.billing.set_price_plan(authed(ADMIN_TOKEN, default.clone())).await.expect("set");
    let retry = c.billing.set_price_plan(authed(ADMIN_TOKEN, default)).await.expect("replayed");
    let (first, retry) = (first.into_inner(), retry.into_inner());
    let (w1, w2) = (first.write.expect("write info"), retry.write.expect("write info"));
    assert!(w1.log_index > 0 && w2.replayed && w2.log_index == w1.log_index);
    assert_eq!(first.effective_at_ms, retry.effective_at_ms);
    let gold = set_plan(
        "gold",
        every_pool(vec![
            item("cpu", vec![tier(Some(1), "7200"), tier(None, "1")]),
            item("memory", vec![tier(None, "0.5")]),
        ]),
    );
    c.billing.set_price_plan(authed(ADMIN_TOKEN, gold)).await.expect("set");
    let assign = pb::SetBillingPlanRequest {
        request_id: rid(),
        tenant_id: "globex".into(),
        plan: "gold".into(),
    };
    let assigned = c.billing.set_billing_plan(authed(ADMIN_TOKEN, assign)).await.expect("assigned");
    assert!(assigned.into_inner().write.expect("write info").log_index > 0);

    c.scheduler.place(authed(ADMIN_TOKEN, place("acme", spec("a", 2_000)))).await.expect("placed");
    c.scheduler
        .place(authed(ADMIN_TOKEN, place("globex", spec("g", 1_000))))
        .await
        .expect("placed");
    // At 3,600 per cpu-hour, one cpu costs a cent per 10 ms of log time: wait for a few cents.
    let statement = |token: String, tenant: &str| {
        let mut billing = c.billing.clone();
        let request = pb::GetStatementRequest { tenant_id: tenant.into(), read: None };
        async move { billing.get_statement(authed(&token, request)).await }
    };
    let acme_now = poll("acme's statement to show a cost", || {
        let s = statement(acme.clone(), "acme");
        async move {
            let s = s.await.expect("its own statement").into_inner();
            let total = d(&s.current.as_ref().expect("a current month").total);
            (total > d("0.10")).then_some(s)
        }
    })
    .await;
    assert_eq!(acme_now.plan, "default");
    let current = acme_now.current.clone().expect("a current month");
    // cpu priced by the default plan; memory unpriced (the plan does not list it): 0.00.
    assert_eq!(current.lines.len(), 2, "{current:?}");
    let line = current.lines.iter().find(|l| l.item == "cpu").expect("a cpu line");
    let memory = current.lines.iter().find(|l| l.item == "memory").expect("a memory line");
    assert_eq!((memory.plan.as_str(), memory.amount.as_str()), ("", "0.00"));
    assert_eq!(
        (line.item.as_str(), line.unit.as_str(), line.plan.as_str()),
        ("cpu", "cpu-hour", "default")
    );
    // 2 cpus at 3,600 per cpu-hour: quantity (cpu_millis x ms) x 3,600 / 3.6e9, to the cent.
    let quantity = u128::from_str(&line.quantity).expect("an integer quantity");
    let exact = Decimal::from_i128_with_scale(quantity as i128, 0) * d("3600") / d("3600000000");
    let rounded = exact.round_dp_with_strategy(2, RoundingStrategy::MidpointAwayFromZero);
    assert_eq!(d(&line.amount), rounded, "{line:?}");
    assert_eq!(d(&current.total), d(&line.amount) + d(&memory.amount));

    let globex =
        statement(ADMIN_TOKEN.into(), "globex").await.expect("admin reads any").into_inner();
    assert_eq!(globex.plan, "gold");
    let lines = globex.current.expect("a current month").lines;
    assert!(lines.iter().any(|l| l.item == "cpu" && l.plan == "gold"), "{lines:?}");
    assert!(lines.iter().any(|l| l.item == "memory"), "{lines:?}");

    // Held to the month's end, acme's month costs more than it has so far.
    assert!(d(&acme_now.projected_total) > d(&current.total), "{acme_now:?}");
    assert_eq!(acme_now.projected_with_queued, acme_now.projected_total, "nothing queued");

    let other = statement(acme.clone(), "globex").await.expect_err("another tenant's statement");
    assert_eq!(other.code(), Code::PermissionDenied);

    // A shared bill split by metered cpu: the parts sum exactly to the total, in the order
    // asked, weighted by each tenant's exact quantity.
    let by_usage = |tenants: &[&str], item: &str| pb::AllocateSharedCostRequest {
        total: "1000.00".into(),
        weights: Vec::new(),
        by_usage: Some(pb::UsageBasis {
            tenant_ids: tenants.iter().map(|t| (*t).into()).collect(),
            item: item.into(),
            last_month: false,
        }),
    };
    let split = c
        .billing
        .allocate_shared_cost(authed(ADMIN_TOKEN, by_usage(&["acme", "globex"], "cpu")))
        .await
        .expect("splits")
        .into_inner();
    let sum: Decimal = split.parts.iter().map(|p| d(p)).sum();
    assert_eq!(sum, d("1000.00"));
    let weights: Vec<Decimal> = split.weights.iter().map(|w| d(w)).collect();
    assert!(weights.iter().all(|w| *w > Decimal::ZERO), "{split:?}");
    assert!(d(&split.parts[0]) > d(&split.parts[1]), "acme holds twice globex's cpu: {split:?}");
    let refusals = [
        (ADMIN_TOKEN.to_owned(), by_usage(&["acme", "nobody"], "cpu"), Code::NotFound),
        (ADMIN_TOKEN.to_owned(), by_usage(&["acme"], "gpu"), Code::InvalidArgument),
        (ADMIN_TOKEN.to_owned(), by_usage(&[], "cpu"), Code::InvalidArgument),
        (acme.clone(), by_usage(&["acme"], "cpu"), Code::PermissionDenied),
        (
            ADMIN_TOKEN.to_owned(),
            pb::AllocateSharedCostRequest {
                weights: vec!["1".into()],
                ..by_usage(&["acme"], "cpu")
            },
            Code::InvalidArgument,
        ),
    ];
    for (token, request, code) in refusals {
        let refused =
            c.billing.allocate_shared_cost(authed(&token, request)).await.expect_err("bad");
        assert_eq!(refused.code(), code, "{refused:?}");
    }
    // Nobody used any memory yet, reserved: the weights sum to zero.
    let zero = c
        .billing
        .allocate_shared_cost(authed(ADMIN_TOKEN, by_usage(&["acme", "globex"], "reserved_memory")))
        .await
        .expect_err("no usage to split by");
    assert_eq!(reason(&zero), "INVALID_ALLOCATION");
    cluster.shutdown().await;
}

fn set_budget(tenant: &str, budget: Option<pb::Budget>) -> pb::SetBudgetRequest {
    pb::SetBudgetRequest { request_id: rid(), tenant_id: tenant.into(), budget }
}

fn budget(per_month: &str, alerts_percent: Vec<u32>, hard_stop: bool) -> pb::Budget {
    pb::Budget {
        per_month: per_month.into(),
        per_day: String::new(),
        alerts_percent,
        hard_stop,
        no_alerts: false,
    }
}

/// Budgets through the API: only the admin sets one, every bad value is refused with a short
/// error and changes nothing, a retry replays; alerts are raised as the spend passes them (seen
/// in `GetBudget` and as quota events on `Watch`), and the hard stop refuses new work with
/// QUOTA_EXCEEDED, limit_kind budget. A tenant reads its own budget and no other's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budgets_alert_and_stop() {
    let (cluster, mut c) = setup().await;
    create_tenant(&mut c, "acme").await;
    create_tenant(&mut c, "globex").await;
    let acme = issue_token(&mut c, "acme").await;
    register(&mut c, "w1", 64_000).await;

    let bad: Vec<(pb::Budget, &str)> = vec![
        (budget("0", vec![], false), "INVALID_ARGUMENT"),
        (budget("-5", vec![], false), "INVALID_ARGUMENT"),
        (budget("0.001", vec![], false), "INVALID_ARGUMENT"),
        (budget("1000000000001", vec![], false), "INVALID_ARGUMENT"),
        (budget(&"9".repeat(10_000), vec![], false), "INVALID_DECIMAL"),
        (budget("ten", vec![], false), "INVALID_DECIMAL"),
        (budget("10", vec![80, 50], false), "INVALID_ARGUMENT"),
        (budget("10", vec![0], false), "INVALID_ARGUMENT"),
        (budget("10", vec![70_000], false), "INVALID_ARGUMENT"),
        (budget("10", (1..=100).collect(), false), "INVALID_ARGUMENT"),
        (pb::Budget { no_alerts: true, ..budget("10", vec![50], false) }, "INVALID_ARGUMENT"),
        (pb::Budget { per_day: "0".into(), ..budget("10", vec![], false) }, "INVALID_ARGUMENT"),
        (pb::Budget { per_day: "a day".into(), ..budget("10", vec![], false) }, "INVALID_DECIMAL"),
    ];
    for (b, why) in bad {
        let refused = c
            .billing
            .set_budget(authed(ADMIN_TOKEN, set_budget("acme", Some(b.clone()))))
            .await
            .expect_err("bad budget");
        assert_eq!(refused.code(), Code::InvalidArgument, "{b:?}: {refused:?}");
        assert_eq!(reason(&refused), why, "{b:?}");
        assert!(refused.message().len() < 300, "short: {}", refused.message());
    }
    let unknown = c
        .billing
        .set_budget(authed(ADMIN_TOKEN, set_budget("nobody", Some(budget("10", vec![], false)))))
        .await
        .expect_err("unknown tenant");
    assert_eq!(unknown.code(), Code::NotFound);
    let tenant_sets = c
        .billing
        .set_budget(authed(&acme, set_budget("acme", Some(budget("10", vec![], false)))))
        .await
        .expect_err("only the admin sets budgets");
    assert_eq!(tenant_sets.code(), Code::PermissionDenied);
    let reader = c.billing.clone();
    let get = |token: String, tenant: &str| {
        let mut billing = reader.clone();
        let request = pb::GetBudgetRequest { tenant_id: tenant.into(), read: None };
        async move { billing.get_budget(authed(&token, request)).await }
    };
    let none = get(ADMIN_TOKEN.into(), "acme").await.expect_err("no budget yet");
    assert_eq!(none.code(), Code::NotFound, "nothing was set: {none:?}");

    // One cpu at 360,000 per cpu-hour costs a cent per 0.1 ms: a budget of 100 is spent in
    // a second, and its three alerts on the way.
    let price = set_plan("default", every_pool(vec![item("cpu", vec![tier(None, "360000")])]));
    c.billing.set_price_plan(authed(ADMIN_TOKEN, price)).await.expect("priced");
    let set = set_budget("acme", Some(budget("100", vec![], true)));
    let first = c.billing.set_budget(authed(ADMIN_TOKEN, set.clone())).await.expect("set");
    let retry = c.billing.set_budget(authed(ADMIN_TOKEN, set)).await.expect("replayed");
    let (w1, w2) =
        (first.into_inner().write.expect("info"), retry.into_inner().write.expect("info"));
    assert!(w1.log_index > 0 && w2.replayed && w2.log_index == w1.log_index);

    let mut watch = c
        .scheduler
        .watch(authed(
            &acme,
            pb::WatchRequest {
                tenant_id: "acme".into(),
                kinds: vec!["QUOTA".into()],
                ..Default::default()
            },
        ))
        .await
        .expect("acme watches its events")
        .into_inner();
    c.scheduler.place(authed(&acme, place("acme", spec("a", 1_000)))).await.expect("placed");
    let spent = poll("acme's budget to be spent", || {
        let g = get(acme.clone(), "acme");
        async move {
            let b = g.await.expect("its own budget").into_inner();
            (b.fired_percents.len() == 3).then_some(b)
        }
    })
    .await;
    assert_eq!(spent.fired_percents, vec![50, 80, 100]);
    assert!(d(&spent.spent) >= d("100"), "{spent:?}");
    assert_eq!(spent.budget.as_ref().map(|b| b.alerts_percent.clone()), Some(vec![50, 80, 100]));
    assert!(spent.reaches_budget_at_ms.is_some(), "reached: {spent:?}");
    assert!(d(&spent.projected_total) >= d(&spent.spent));

    let mut raised = Vec::new();
    while raised.len() < 3 {
        let message = tokio::time::timeout(std::time::Duration::from_secs(10), watch.message())
            .await
            .expect("an event within 10 s")
            .expect("the stream")
            .expect("open");
        let Some(pb::watch_response::Message::Event(event)) = message.message else { continue };
        if let Some(q) = event.quota.filter(|q| q.kind() == pb::quota_event::Kind::BudgetAlert) {
            assert_eq!((q.tenant_id.as_str(), q.budget.as_str()), ("acme", "100"));
            assert!(d(&q.spent) * d("100") >= d("100") * Decimal::from(q.budget_percent));
            raised.push(q.budget_percent);
        }
    }
    assert_eq!(raised, vec![50, 80, 100], "each once, in order");

    let stopped = c
        .scheduler
        .place(authed(&acme, place("acme", spec("b", 1_000))))
        .await
        .expect_err("the budget is spent");
    assert_eq!(stopped.code(), Code::ResourceExhausted);
    assert_eq!(reason(&stopped), "QUOTA_EXCEEDED");
    assert_eq!(meta(&stopped, "limit_kind"), "budget");
    assert_eq!(meta(&stopped, "limit"), "100");
    // Another tenant is not stopped, and acme cannot read its budget.
    c.scheduler
        .place(authed(ADMIN_TOKEN, place("globex", spec("g", 1_000))))
        .await
        .expect("placed");
    let other = get(acme.clone(), "globex").await.expect_err("another tenant's budget");
    assert_eq!(other.code(), Code::PermissionDenied);
    // Raised, it takes work again; cleared, it is gone.
    let raise = set_budget("acme", Some(budget("1000000000000", vec![], true)));
    c.billing.set_budget(authed(ADMIN_TOKEN, raise)).await.expect("raised");
    c.scheduler.place(authed(&acme, place("acme", spec("b", 1_000)))).await.expect("placed");
    c.billing.set_budget(authed(ADMIN_TOKEN, set_budget("acme", None))).await.expect("cleared");
    let gone = get(ADMIN_TOKEN.into(), "acme").await.expect_err("cleared");
    assert_eq!(gone.code(), Code::NotFound);
    cluster.shutdown().await;
}

/// Invoices on a real cluster, across the end of a month (every replica's clock moved forward
/// together): hostile months and amounts refused, admin-only writes, a closed month's invoice
/// returned unchanged by a retry, by a second close, after the leader is stopped, and after
/// every replica restarts from its data directory; a tenant lists its own invoices only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invoices_close_once_across_leader_changes_and_restarts() {
    use berth::scheduler::meter::month_label;
    use berth::scheduler::windows::{month_of, month_start};
    let (mut cluster, mut c) = setup().await;
    create_tenant(&mut c, "acme").await;
    create_tenant(&mut c, "globex").await;
    let acme = issue_token(&mut c, "acme").await;
    register(&mut c, "w1", 64_000).await;
    let price = set_plan("default", every_pool(vec![item("cpu", vec![tier(None, "3600")])]));
    c.billing.set_price_plan(authed(ADMIN_TOKEN, price)).await.expect("priced");
    c.scheduler.place(authed(ADMIN_TOKEN, place("acme", spec("a", 1_000)))).await.expect("placed");

    let now = berth::clock::Clock::now(&cluster.clock);
    let this_month = month_of(now);
    let label = month_label(this_month);
    let adjust = |month: &str, amount: &str, reason: &str| pb::AdjustInvoiceRequest {
        request_id: rid(),
        tenant_id: "acme".into(),
        month: month.into(),
        amount: amount.into(),
        reason: reason.into(),
    };
    let close = |month: &str| pb::CloseInvoiceRequest {
        request_id: rid(),
        tenant_id: "acme".into(),
        month: month.into(),
    };
    for (request, code, why) in [
        (adjust("2026-13", "1", "r"), Code::InvalidArgument, "INVALID_ARGUMENT"),
        (adjust("twenty", "1", "r"), Code::InvalidArgument, "INVALID_ARGUMENT"),
        (adjust(&label, "one", "r"), Code::InvalidArgument, "INVALID_DECIMAL"),
        (adjust(&label, "0.001", "r"), Code::InvalidArgument, "INVALID_ARGUMENT"),
        (adjust(&label, "1", &"r".repeat(5_000)), Code::InvalidArgument, "INVALID_ARGUMENT"),
        (adjust("1999-01", "1", "r"), Code::FailedPrecondition, "INVOICE_UNAVAILABLE"),
    ] {
        let refused =
            c.billing.adjust_invoice(authed(ADMIN_TOKEN, request)).await.expect_err("bad");
        assert_eq!((refused.code(), reason(&refused).as_str()), (code, why), "{refused:?}");
        assert!(refused.message().len() < 300, "short: {}", refused.message());
    }
    let early =
        c.billing.close_invoice(authed(ADMIN_TOKEN, close(&label))).await.expect_err("open");
    assert_eq!(reason(&early), "MONTH_NOT_ENDED");
    let tenant_closes =
        c.billing.close_invoice(authed(&acme, close(&label))).await.expect_err("admin");
    assert_eq!(tenant_closes.code(), Code::PermissionDenied);
    c.billing
        .adjust_invoice(authed(ADMIN_TOKEN, adjust(&label, "-0.50", "credit, \"goodwill\"")))
        .await
        .expect("adjusted");

    // Every replica's clock moves to the first hour of next month; the leader ticks there.
    let next = month_start(this_month + 1).0 + 3_600_000;
    cluster.clock.set_offset_ms(i64::try_from(next - now.0).expect("a month fits"));
    poll("log time to reach next month", || {
        let mut billing = c.billing.clone();
        let label = label.clone();
        async move {
            let request = pb::GetStatementRequest { tenant_id: "acme".into(), read: None };
            let s = billing.get_statement(authed(ADMIN_TOKEN, request)).await.ok()?.into_inner();
            (s.last_month.as_ref()?.month == label).then_some(())
        }
    })
    .await;

    let request = close(&label);
    let first =
        c.billing.close_invoice(authed(ADMIN_TOKEN, request.clone())).await.expect("closed");
    let first = first.into_inner();
    let invoice = first.invoice.clone().expect("an invoice");
    let metered: Decimal = invoice.lines.iter().map(|l| d(&l.amount)).sum();
    assert!(metered > d("0.50"), "{invoice:?}");
    assert_eq!(d(&invoice.total), metered - d("0.50"), "lines plus the credit, to the cent");
    assert!(!invoice.automatic);
    let retry = c.billing.close_invoice(authed(ADMIN_TOKEN, request)).await.expect("replayed");
    let retry = retry.into_inner();
    assert!(retry.write.as_ref().expect("info").replayed);
    assert_eq!(retry.invoice.as_ref(), Some(&invoice));
    let again = c.billing.close_invoice(authed(ADMIN_TOKEN, close(&label))).await.expect("same");
    assert_eq!(again.into_inner().invoice.as_ref(), Some(&invoice), "a second close");
    let late = c
        .billing
        .adjust_invoice(authed(ADMIN_TOKEN, adjust(&label, "1", "late")))
        .await
        .expect_err("closed");
    assert_eq!(reason(&late), "INVOICE_CLOSED");

    // The leader stops: the new one returns the same invoice.
    let leader = cluster.leader().await;
    let survivor = cluster.running().into_iter().find(|id| *id != leader).expect("a follower");
    cluster.stop(leader).await;
    let mut c2 = clients(&cluster, survivor).await;
    let after = poll("a new leader to answer", || {
        let mut billing = c2.billing.clone();
        let request = close(&label);
        async move { billing.close_invoice(authed(ADMIN_TOKEN, request)).await.ok() }
    })
    .await;
    assert_eq!(after.into_inner().invoice.as_ref(), Some(&invoice), "after a leader change");
    cluster.restart(leader).await;

    // Every replica restarts from its data directory.
    for id in cluster.running() {
        cluster.stop(id).await;
    }
    for id in [1, 2, 3] {
        cluster.restart(id).await;
    }
    c2 = clients(&cluster, survivor).await;
    let restarted = poll("the restarted cluster to answer", || {
        let mut billing = c2.billing.clone();
        let request = close(&label);
        async move { billing.close_invoice(authed(ADMIN_TOKEN, request)).await.ok() }
    })
    .await;
    assert_eq!(restarted.into_inner().invoice.as_ref(), Some(&invoice), "after a restart");

    let list = |token: &str, tenant: &str| {
        let mut billing = c2.billing.clone();
        let request = pb::ListInvoicesRequest { tenant_id: tenant.into(), read: None };
        let token = token.to_owned();
        async move { billing.list_invoices(authed(&token, request)).await }
    };
    let own = list(&acme, "acme").await.expect("its own invoices").into_inner();
    assert_eq!(own.invoices, vec![invoice]);
    let other = list(&acme, "globex").await.expect_err("another tenant's invoices");
    assert_eq!(other.code(), Code::PermissionDenied);
    cluster.shutdown().await;
}
