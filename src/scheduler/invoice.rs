//! Invoices: a tenant's month, closed once and never changed.
//!
//! A month's statement is final when the month ends (`meter.rs`). `CloseInvoice` makes it,
//! with the adjustments added for that month (`AdjustInvoice`: credits and charges, signed,
//! each its own line), an immutable invoice. Closing is idempotent by tenant and month: a
//! second close, or a retry, returns the same invoice. A month takes adjustments while it runs
//! and through the next month; when the next one ends the core closes it itself
//! (`automatic`), with what it has, so no metered or adjusted month goes without an invoice. A tenant keeps the invoices of
//! its last `INVOICE_MONTHS_KEPT` months; older ones are dropped from the state (export them
//! first: `berth invoice export`), and so are a deleted tenant's.
//!
//! The invoice's total is the sum of its lines' amounts (each rounded once, `meter.rs`) and
//! its adjustments (whole cents): it adds up to the cent by construction.

use std::collections::BTreeMap;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::command::{Rejection, Response};
use super::events::Event;
use super::ids::{LogIndex, TenantId, UnixMillis};
use super::meter::{Statement, StatementLine};
use super::state::Tenant;
use super::windows::{month_of, month_start};
use super::Scheduler;

/// Months of invoices a tenant keeps (the current month's and the 12 before it).
pub const INVOICE_MONTHS_KEPT: u64 = 13;
/// Most adjustments to one month's invoice.
pub const ADJUSTMENTS_MAX: usize = 64;
/// Largest adjustment, either way, in currency units.
pub const ADJUSTMENT_MAX: u64 = 1_000_000_000_000;
/// Longest reason of an adjustment, in bytes.
pub const REASON_LEN_MAX: usize = 200;
/// The last month an invoice can name: December 9999.
pub const INVOICE_MONTH_MAX: u64 = (9999 - 1970) * 12 + 11;

/// Checks a month a client names (state-free).
pub fn validate_month(month: u64) -> Result<(), Rejection> {
    if month > INVOICE_MONTH_MAX {
        return Err(Rejection::invalid("month", "must be a month up to 9999-12"));
    }
    Ok(())
}

/// A credit (negative) or charge (positive) on a month's invoice, in whole cents.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Adjustment {
    pub amount: Decimal,
    pub reason: String,
    pub log_index: LogIndex,
    pub added_at: UnixMillis,
}

impl Adjustment {
    /// Checks an adjustment's amount and reason (state-free).
    pub fn validate(amount: Decimal, reason: &str) -> Result<(), Rejection> {
        if amount.is_zero()
            || amount.abs() > Decimal::from(ADJUSTMENT_MAX)
            || amount.normalize().scale() > 2
        {
            return Err(Rejection::invalid(
                "amount",
                format!("must be nonzero, at most {ADJUSTMENT_MAX} either way, in whole cents"),
            ));
        }
        if reason.trim().is_empty()
            || reason.len() > REASON_LEN_MAX
            || reason.chars().any(char::is_control)
        {
            return Err(Rejection::invalid(
                "reason",
                format!("must be 1..={REASON_LEN_MAX} bytes of text without control characters"),
            ));
        }
        Ok(())
    }
}

/// A closed month: immutable.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invoice {
    pub tenant: TenantId,
    pub month: u64,
    /// The month's metered lines (its final statement's; none if nothing was metered).
    pub lines: Vec<StatementLine>,
    pub adjustments: Vec<Adjustment>,
    /// The lines' amounts plus the adjustments.
    pub total: Decimal,
    pub closed_at: UnixMillis,
    /// The entry that closed it.
    pub log_index: LogIndex,
    /// Closed by the core when the next month ended, not by `CloseInvoice`.
    pub automatic: bool,
}

/// A tenant's invoices and the adjustments of its open months.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invoices {
    pub closed: BTreeMap<u64, Invoice>,
    pub pending: BTreeMap<u64, Vec<Adjustment>>,
}

/// The invoice of `month` for `tenant`: `statement`'s lines (if any) and `adjustments`.
fn invoice(
    tenant: &TenantId,
    month: u64,
    statement: Option<&Statement>,
    adjustments: Vec<Adjustment>,
    closed: (UnixMillis, LogIndex, bool),
) -> Invoice {
    let lines = statement.map(|s| s.lines.clone()).unwrap_or_default();
    let metered = statement.map_or(Decimal::ZERO, |s| s.total);
    let total = adjustments.iter().fold(metered, |sum, a| sum.saturating_add(a.amount));
    let (closed_at, log_index, automatic) = closed;
    Invoice {
        tenant: tenant.clone(),
        month,
        lines,
        adjustments,
        total,
        closed_at,
        log_index,
        automatic,
    }
}

/// When the core must close `t`'s oldest open month (the start of the second month after
/// it): a month with adjustments, its meter's last ended month, or its current month once it
/// meters something, unless closed or older than the months kept. A function of the state alone (part of
/// `meter::meter_deadline`).
pub fn invoice_deadline(t: &Tenant) -> Option<UnixMillis> {
    let meter = &t.meter;
    let metering = !meter.rates.is_empty() || !meter.lines.is_empty();
    let last = meter.last_month.as_ref().map(|s| s.month);
    let open =
        t.invoices.pending.keys().copied().chain(last).chain(metering.then_some(meter.month));
    // A month older than those kept is never closed (it would be dropped at once).
    let kept = meter.month.saturating_sub(INVOICE_MONTHS_KEPT - 1);
    let oldest = open.filter(|m| *m >= kept && !t.invoices.closed.contains_key(m)).min()?;
    Some(month_start(oldest.saturating_add(2)))
}

impl Scheduler {
    /// Closes, as the core, every month of `tenant` that is still open once the month after it
    /// has ended: `statements` are the final statements at hand (the meter's last month before
    /// it moved, and those of the months that ended since). Call right after its meter moved.
    pub(super) fn close_overdue_invoices(&mut self, tenant: &TenantId, statements: &[Statement]) {
        let index = self.applying;
        let now = self.state.now;
        let t = self.state.tenants.get_mut(tenant).expect("invariant: metered tenant exists");
        let current = t.meter.month;
        // Months older than those kept would be dropped at once: a long jump of log time
        // closes (and reports) only the kept ones; their statements were reported as metered.
        let oldest = current.saturating_sub(INVOICE_MONTHS_KEPT - 1);
        let open = statements.iter().map(|s| s.month).chain(t.invoices.pending.keys().copied());
        let overdue: Vec<u64> = open
            .filter(|m| *m >= oldest && m.saturating_add(2) <= current)
            .filter(|m| !t.invoices.closed.contains_key(m))
            .collect();
        t.invoices.pending.retain(|m, _| *m >= oldest);
        let mut closed = Vec::new();
        for month in overdue {
            if t.invoices.closed.contains_key(&month) {
                continue;
            }
            let statement = statements.iter().find(|s| s.month == month);
            let adjustments = t.invoices.pending.remove(&month).unwrap_or_default();
            let inv = invoice(tenant, month, statement, adjustments, (now, index, true));
            t.invoices.closed.insert(month, inv.clone());
            closed.push(inv);
        }
        Self::forget_old_invoices(t, current);
        for invoice in closed {
            self.emit(Event::InvoiceClosed { tenant: tenant.clone(), invoice: Box::new(invoice) });
        }
    }

    fn forget_old_invoices(t: &mut super::state::Tenant, current: u64) {
        let oldest = current.saturating_sub(INVOICE_MONTHS_KEPT - 1);
        t.invoices.closed = t.invoices.closed.split_off(&oldest);
    }

    /// Whether `month` of `t` can still be closed (`oldest`: the oldest month that may be; an
    /// adjustment takes only this month's or the last's): not closed, begun, since the
    /// tenant existed.
    fn open_month(&self, tenant: &TenantId, month: u64, oldest: u64) -> Result<(), Rejection> {
        let t = self.tenant(tenant)?;
        if t.invoices.closed.contains_key(&month) {
            return Err(Rejection::InvoiceClosed { month });
        }
        let created = month_of(t.created_at);
        if month > t.meter.month || month < created || month < oldest {
            return Err(Rejection::InvoiceUnavailable { month });
        }
        Ok(())
    }

    /// `AdjustInvoice`: a credit or charge on `month`'s invoice, while it is open.
    pub(super) fn adjust_invoice(
        &mut self,
        index: LogIndex,
        tenant: &TenantId,
        month: u64,
        amount: Decimal,
        reason: String,
    ) -> Result<Response, Rejection> {
        self.tenant(tenant)?;
        self.meter_tenant(tenant);
        let current = self.tenant(tenant)?.meter.month;
        self.open_month(tenant, month, current.saturating_sub(1))?;
        let now = self.state.now;
        let t = self.tenant_mut(tenant)?;
        let pending = t.invoices.pending.entry(month).or_default();
        if pending.len() >= ADJUSTMENTS_MAX {
            let max = ADJUSTMENTS_MAX as u64;
            return Err(Rejection::LimitReached { what: "adjustments to an invoice".into(), max });
        }
        pending.push(Adjustment { amount, reason, log_index: index, added_at: now });
        self.refresh_meter_deadline(tenant);
        Ok(Response::InvoiceAdjusted)
    }

    /// `CloseInvoice`: `month`'s invoice, closed now if it is not yet (idempotent by tenant
    /// and month).
    pub(super) fn close_invoice(
        &mut self,
        index: LogIndex,
        tenant: &TenantId,
        month: u64,
    ) -> Result<Response, Rejection> {
        self.tenant(tenant)?;
        self.meter_tenant(tenant);
        let t = self.tenant(tenant)?;
        if let Some(done) = t.invoices.closed.get(&month) {
            return Ok(Response::InvoiceClosed(Box::new(done.clone())));
        }
        let current = t.meter.month;
        if month >= current {
            let ends_at = month_start(month.saturating_add(1));
            return Err(Rejection::MonthNotEnded { month, ends_at });
        }
        self.open_month(tenant, month, current.saturating_sub(INVOICE_MONTHS_KEPT - 1))?;
        let now = self.state.now;
        let t = self.tenant_mut(tenant)?;
        let statement = t.meter.last_month.as_ref().filter(|s| s.month == month);
        let adjustments = t.invoices.pending.remove(&month).unwrap_or_default();
        let closed = invoice(tenant, month, statement, adjustments, (now, index, false));
        t.invoices.closed.insert(month, closed.clone());
        Self::forget_old_invoices(t, current);
        let boxed = Box::new(closed);
        self.refresh_meter_deadline(tenant);
        self.emit(Event::InvoiceClosed { tenant: tenant.clone(), invoice: boxed.clone() });
        Ok(Response::InvoiceClosed(boxed))
    }

    /// `tenant`'s closed invoices (by month) and the adjustments of its open months.
    pub fn invoices(&self, tenant: &TenantId) -> Option<&Invoices> {
        self.state.tenants.get(tenant).map(|t| &*t.invoices)
    }
}
