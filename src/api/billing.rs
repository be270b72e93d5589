//! The `Billing` service: price plans and the plan each tenant pays by (admin), a tenant's
//! metered statement (its own token or the admin's), and exact allocation of a shared cost
//! (any caller; by metered usage, the admin only).

use std::str::FromStr;

use rust_decimal::Decimal;
use tonic::{Code, Request, Response as Reply, Status};

use super::answer::{answer, ClosedInvoice, PriceSince};
use super::auth::{require_admin, tenant_scope};
use super::status::{self, error, invalid, not_found};
use super::{convert, pb, Api};
use crate::raft::types::Proposal;
use crate::scheduler::ids::quoted;
use crate::scheduler::meter::month_label;
use crate::scheduler::money::{allocate, PARTS_MAX};
use crate::scheduler::windows::month_of;
use crate::scheduler::{Command, Item, PlanId, TenantId, UnixMillis};
use crate::usage::{UsageError, UsageQuery};

type Result<T> = std::result::Result<Reply<T>, Status>;

/// A usage query's error as a status: its bounds, the retention, or the store.
fn usage_status(e: &UsageError) -> Status {
    match e {
        UsageError::Invalid(field, why) => invalid("INVALID_ARGUMENT", format!("{field}: {why}")),
        UsageError::Expired { .. } => {
            error(Code::OutOfRange, "USAGE_EXPIRED", e.to_string(), Vec::new())
        }
        UsageError::Unavailable(_) => {
            error(Code::Unavailable, "USAGE_STORE_UNAVAILABLE", e.to_string(), Vec::new())
        }
    }
}

impl Api {
    /// Log time moves only with entries (an idle cluster proposes none): a Tick, so what is
    /// read next runs up to the moment it was asked for.
    async fn bring_log_time_to_now(&self) -> std::result::Result<(), Status> {
        let tick = Proposal { request_id: None, command: Command::Tick, token: None };
        self.replica.propose(tick).await.map(|_| ()).map_err(|e| status::write_error(&e))
    }

    /// `UsageBasis`: each tenant's metered quantity of one item, as weights (admin only).
    async fn usage_weights(
        &self,
        caller: &super::auth::Caller,
        basis: &pb::UsageBasis,
    ) -> std::result::Result<Vec<Decimal>, Status> {
        require_admin(caller)?;
        if basis.tenant_ids.is_empty() || basis.tenant_ids.len() > PARTS_MAX {
            return Err(invalid("INVALID_ARGUMENT", format!("1..={PARTS_MAX} tenants")));
        }
        let item = Item::from_name(&basis.item).ok_or_else(|| {
            let quoted = quoted(&basis.item);
            invalid("INVALID_ARGUMENT", format!("unknown item {quoted}"))
        })?;
        let tenants = basis
            .tenant_ids
            .iter()
            .map(|t| tenant_scope(caller, t))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        self.bring_log_time_to_now().await?;
        let last_month = basis.last_month;
        let weights = self
            .read(caller, None, |s| {
                tenants
                    .iter()
                    .map(|t| {
                        let (current, last) = s.statements(t).ok_or_else(|| t.clone())?;
                        let statement = if last_month { last } else { Some(current) };
                        let quantity: u128 = statement
                            .iter()
                            .flat_map(|s| &s.lines)
                            .filter(|l| l.item == item)
                            .map(|l| l.quantity)
                            .sum();
                        let quantity = i128::try_from(quantity).unwrap_or(i128::MAX);
                        Ok(Decimal::try_from_i128_with_scale(quantity, 0).unwrap_or(Decimal::MAX))
                    })
                    .collect::<std::result::Result<Vec<Decimal>, TenantId>>()
            })
            .await?;
        weights.map_err(|t| not_found("tenant", t.as_str()))
    }
}

#[tonic::async_trait]
impl pb::billing_server::Billing for Api {
    async fn allocate_shared_cost(
        &self,
        request: Request<pb::AllocateSharedCostRequest>,
    ) -> Result<pb::AllocateSharedCostResponse> {
        let caller = self.caller(&request).await?;
        let r = request.into_inner();
        let parse = |field: &str, s: &str| {
            Decimal::from_str(s.trim()).map_err(|e| {
                invalid("INVALID_DECIMAL", format!("{field} {} is not a decimal: {e}", quoted(s)))
            })
        };
        let total = parse("total", &r.total)?;
        let weights = match &r.by_usage {
            Some(basis) if r.weights.is_empty() => self.usage_weights(&caller, basis).await?,
            Some(_) => {
                let message = "give weights or by_usage, not both";
                return Err(invalid("INVALID_ARGUMENT", message));
            }
            None => r
                .weights
                .iter()
                .map(|w| parse("weight", w))
                .collect::<std::result::Result<Vec<_>, _>>()?,
        };
        let parts =
            allocate(total, &weights).map_err(|e| invalid("INVALID_ALLOCATION", e.to_string()))?;
        Ok(Reply::new(pb::AllocateSharedCostResponse {
            parts: parts.iter().map(Decimal::to_string).collect(),
            weights: weights.iter().map(Decimal::to_string).collect(),
        }))
    }

    async fn set_price_plan(
        &self,
        request: Request<pb::SetPricePlanRequest>,
    ) -> Result<pb::SetPricePlanResponse> {
        let caller = self.caller(&request).await?;
        require_admin(&caller)?;
        let r = request.into_inner();
        let command = Command::SetPricePlan {
            plan: PlanId::new(&r.plan),
            prices: convert::prices(&r.pools)?,
            effective_at: r.effective_at_ms.map(UnixMillis),
        };
        let (response, write) = self.write(&caller, &r.request_id, command).await?;
        let PriceSince(since) = answer(response)?;
        Ok(Reply::new(pb::SetPricePlanResponse { write: Some(write), effective_at_ms: since.0 }))
    }

    async fn list_price_plans(
        &self,
        request: Request<pb::ListPricePlansRequest>,
    ) -> Result<pb::ListPricePlansResponse> {
        let caller = self.caller(&request).await?;
        require_admin(&caller)?;
        let r = request.into_inner();
        let plans = self
            .read(&caller, r.read, |s| {
                s.state()
                    .price_plans
                    .iter()
                    .map(|(id, plan)| pb::PricePlan {
                        plan: id.0.clone(),
                        versions: plan
                            .versions
                            .iter()
                            .map(|v| pb::PriceVersion {
                                since_ms: v.since.0,
                                pools: convert::pb_prices(&v.prices),
                            })
                            .collect(),
                    })
                    .collect()
            })
            .await?;
        Ok(Reply::new(pb::ListPricePlansResponse { plans }))
    }

    async fn set_billing_plan(
        &self,
        request: Request<pb::SetBillingPlanRequest>,
    ) -> Result<pb::SetBillingPlanResponse> {
        let caller = self.caller(&request).await?;
        require_admin(&caller)?;
        let r = request.into_inner();
        let tenant = tenant_scope(&caller, &r.tenant_id)?;
        let plan = (!r.plan.is_empty()).then(|| PlanId::new(&r.plan));
        let command = Command::SetBillingPlan { tenant, plan };
        let (_, write) = self.write(&caller, &r.request_id, command).await?;
        Ok(Reply::new(pb::SetBillingPlanResponse { write: Some(write) }))
    }

    async fn get_statement(
        &self,
        request: Request<pb::GetStatementRequest>,
    ) -> Result<pb::GetStatementResponse> {
        let caller = self.caller(&request).await?;
        let r = request.into_inner();
        let tenant = tenant_scope(&caller, &r.tenant_id)?;
        self.bring_log_time_to_now().await?;
        let found = self
            .read(&caller, r.read, |s| {
                let plan = s.billing_plan_of(&tenant).map(|p| p.0.clone()).unwrap_or_default();
                let projection = s.projection(&tenant)?;
                s.statements(&tenant).map(|(current, last)| pb::GetStatementResponse {
                    current: Some(convert::pb_statement(&current)),
                    last_month: last.as_ref().map(convert::pb_statement),
                    plan,
                    projected_total: projection.held.to_string(),
                    projected_with_queued: projection.with_queued.to_string(),
                    month_end_ms: projection.month_end.0,
                })
            })
            .await?;
        Ok(Reply::new(found.ok_or_else(|| not_found("tenant", &r.tenant_id))?))
    }

    async fn get_usage(
        &self,
        request: Request<pb::GetUsageRequest>,
    ) -> Result<pb::GetUsageResponse> {
        let caller = self.caller(&request).await?;
        let r = request.into_inner();
        let tenant = tenant_scope(&caller, &r.tenant_id)?;
        let query = UsageQuery {
            tenant: tenant.clone(),
            from: UnixMillis(r.from_ms),
            to: UnixMillis(r.to_ms),
            step_ms: r.step_ms,
        };
        query.validate().map_err(|e| usage_status(&e))?;
        self.bring_log_time_to_now().await?;
        let store = self.replica.usage_store().clone();
        let (exists, pending) = self
            .read(&caller, r.read, |s| {
                let retention = s.state().config.usage_retention;
                (s.state().tenants.contains_key(&tenant), store.query(query, s.now(), retention))
            })
            .await?;
        let series = pending.wait().await.map_err(|e| usage_status(&e))?;
        if !exists && !series.known {
            return Err(not_found("tenant", &r.tenant_id));
        }
        Ok(Reply::new(convert::pb_usage(&series)))
    }

    async fn set_budget(
        &self,
        request: Request<pb::SetBudgetRequest>,
    ) -> Result<pb::SetBudgetResponse> {
        let caller = self.caller(&request).await?;
        require_admin(&caller)?;
        let r = request.into_inner();
        let tenant = tenant_scope(&caller, &r.tenant_id)?;
        let budget = r.budget.as_ref().map(convert::budget).transpose()?;
        let command = Command::SetBudget { tenant, budget };
        let (_, write) = self.write(&caller, &r.request_id, command).await?;
        Ok(Reply::new(pb::SetBudgetResponse { write: Some(write) }))
    }

    async fn get_budget(
        &self,
        request: Request<pb::GetBudgetRequest>,
    ) -> Result<pb::GetBudgetResponse> {
        let caller = self.caller(&request).await?;
        let r = request.into_inner();
        let tenant = tenant_scope(&caller, &r.tenant_id)?;
        self.bring_log_time_to_now().await?;
        let found = self
            .read(&caller, r.read, |s| {
                let Some(status) = s.budget_status(&tenant) else {
                    let exists = s.state().tenants.contains_key(&tenant);
                    return Err(if exists { "budget" } else { "tenant" });
                };
                let projection = s.projection(&tenant).ok_or("tenant")?;
                Ok(pb::GetBudgetResponse {
                    budget: Some(convert::pb_budget(&status.budget)),
                    month: month_label(month_of(s.now())),
                    spent: status.spent.to_string(),
                    spent_today: status.spent_today.to_string(),
                    fired_percents: status.fired_percents.iter().map(|p| u32::from(*p)).collect(),
                    reaches_budget_at_ms: status.reaches_budget_at.map(|at| at.0),
                    projected_total: projection.held.to_string(),
                    projected_with_queued: projection.with_queued.to_string(),
                    month_end_ms: status.month_end.0,
                })
            })
            .await?;
        Ok(Reply::new(found.map_err(|what| not_found(what, &r.tenant_id))?))
    }

    async fn adjust_invoice(
        &self,
        request: Request<pb::AdjustInvoiceRequest>,
    ) -> Result<pb::AdjustInvoiceResponse> {
        let caller = self.caller(&request).await?;
        require_admin(&caller)?;
        let r = request.into_inner();
        let tenant = tenant_scope(&caller, &r.tenant_id)?;
        let month = convert::month("month", &r.month)?;
        let amount = Decimal::from_str(r.amount.trim()).map_err(|_| {
            invalid("INVALID_DECIMAL", format!("amount {} is not a decimal", quoted(&r.amount)))
        })?;
        let command = Command::AdjustInvoice { tenant, month, amount, reason: r.reason };
        let (_, write) = self.write(&caller, &r.request_id, command).await?;
        Ok(Reply::new(pb::AdjustInvoiceResponse { write: Some(write) }))
    }

    async fn close_invoice(
        &self,
        request: Request<pb::CloseInvoiceRequest>,
    ) -> Result<pb::CloseInvoiceResponse> {
        let caller = self.caller(&request).await?;
        require_admin(&caller)?;
        let r = request.into_inner();
        let tenant = tenant_scope(&caller, &r.tenant_id)?;
        let month = convert::month("month", &r.month)?;
        let command = Command::CloseInvoice { tenant, month };
        let (response, write) = self.write(&caller, &r.request_id, command).await?;
        let ClosedInvoice(invoice) = answer(response)?;
        Ok(Reply::new(pb::CloseInvoiceResponse {
            write: Some(write),
            invoice: Some(convert::pb_invoice(&invoice)),
        }))
    }

    async fn list_invoices(
        &self,
        request: Request<pb::ListInvoicesRequest>,
    ) -> Result<pb::ListInvoicesResponse> {
        let caller = self.caller(&request).await?;
        let r = request.into_inner();
        let tenant = tenant_scope(&caller, &r.tenant_id)?;
        let found = self
            .read(&caller, r.read, |s| {
                s.invoices(&tenant).map(|i| pb::ListInvoicesResponse {
                    invoices: i.closed.values().map(convert::pb_invoice).collect(),
                    open: i
                        .pending
                        .iter()
                        .map(|(month, adjustments)| pb::OpenMonth {
                            month: month_label(*month),
                            adjustments: convert::pb_adjustments(adjustments),
                        })
                        .collect(),
                })
            })
            .await?;
        Ok(Reply::new(found.ok_or_else(|| not_found("tenant", &r.tenant_id))?))
    }
}
