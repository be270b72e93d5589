//! Invoices through the core's public interface: closed once (a second close returns the same
//! invoice, whatever happened since), adjustments as signed lines, totals that add up to the
//! cent, months that cannot be closed, the core closing a month left open, and retention.

use std::str::FromStr;

use berth::scheduler::invoice::{INVOICE_MONTHS_KEPT, REASON_LEN_MAX};
use berth::scheduler::windows::{month_of, month_start};
use berth::scheduler::*;
use rust_decimal::Decimal;

mod core_harness;
use core_harness::Log;

const HOUR: u64 = 3_600_000;

fn d(s: &str) -> Decimal {
    Decimal::from_str(s).expect("test decimal")
}

/// December 2023, after the harness's first month.
fn december() -> u64 {
    month_of(UnixMillis(testing::T0)) + 1
}

impl Log {
    /// Tenant `t` created at the start of December 2023 holding one cpu at 1 per cpu-hour.
    fn holding() -> Log {
        let mut log = Log(testing::Log::at(month_start(december()).0));
        log.ok(Command::CreateTenant { tenant: "t".into(), parent: None, weight: 1 });
        log.ok(Command::RegisterWorker {
            worker: "w".into(),
            pool: None,
            capacity: Resources::new(4_000, 8_192),
            labels: Labels::new(),
        });
        let mut prices = Prices::default();
        let tiers = vec![Tier { up_to_hours: None, per_hour: d("1") }];
        prices.other_pools.items.insert(Item::Cpu, tiers);
        log.ok(Command::SetPricePlan { plan: "default".into(), prices, effective_at: None });
        let spec = PlaceSpec {
            placement: "a".into(),
            count: 1,
            resources: Resources::new(1_000, 0),
            ..PlaceSpec::default()
        };
        log.ok(Command::Place { tenant: "t".into(), spec, fence: None });
        log
    }

    fn close(&mut self, month: u64) -> Result<Invoice, Rejection> {
        match self.apply(Command::CloseInvoice { tenant: "t".into(), month }).result {
            Ok(Response::InvoiceClosed(invoice)) => Ok(*invoice),
            Ok(other) => panic!("unexpected {other:?}"),
            Err(e) => Err(e),
        }
    }

    fn adjust(&mut self, month: u64, amount: &str, reason: &str) -> Result<Response, Rejection> {
        let command = Command::AdjustInvoice {
            tenant: "t".into(),
            month,
            amount: d(amount),
            reason: reason.into(),
        };
        self.apply(command).result
    }

    fn at_month(&mut self, month: u64, plus_ms: u64) {
        self.now = month_start(month).0 + plus_ms;
    }
}

/// December's invoice: its metered lines (744 cpu-hours at 1) and two adjustments, each its
/// own signed line; the total is their sum to the cent. Closing again, after more usage and a
/// price change, returns the very same invoice; adjusting a closed month is refused.
#[test]
fn an_invoice_is_closed_once_and_adds_up() {
    let mut log = Log::holding();
    let dec = december();
    log.adjust(dec, "-44.00", "credit: maintenance window").expect("adjusted");
    log.adjust(dec, "0.25", "support").expect("adjusted");
    let early = log.close(dec).expect_err("December has not ended");
    assert_eq!(early.reason(), "MONTH_NOT_ENDED");
    log.at_month(dec + 1, HOUR);
    let first = log.close(dec).expect("closed");
    assert_eq!(first.month, dec);
    assert!(!first.automatic);
    let metered: Decimal = first.lines.iter().map(|l| l.amount).sum();
    assert_eq!(metered, d("744.00"), "31 days of one cpu");
    let adjusted: Decimal = first.adjustments.iter().map(|a| a.amount).sum();
    assert_eq!(adjusted, d("-43.75"));
    assert_eq!(first.total, d("700.25"));
    assert_eq!(first.total, metered + adjusted);

    log.advance(5 * HOUR);
    let mut prices = Prices::default();
    prices.other_pools.items.insert(Item::Cpu, vec![Tier { up_to_hours: None, per_hour: d("9") }]);
    log.ok(Command::SetPricePlan { plan: "default".into(), prices, effective_at: None });
    let again = log.close(dec).expect("closed before");
    assert_eq!(again, first, "the same invoice, unchanged");
    let refused = log.adjust(dec, "1.00", "late").expect_err("closed");
    assert_eq!(refused.reason(), "INVOICE_CLOSED");
    // January stays open for adjustments until it ends.
    log.adjust(dec + 1, "-1.00", "goodwill").expect("January is open");
}

/// Months that cannot be closed or adjusted say why; out-of-bound adjustments are refused
/// with the field named.
#[test]
fn bad_months_and_adjustments_are_refused() {
    let mut log = Log::holding();
    let dec = december();
    let before = log.close(dec - 1).expect_err("before the tenant existed");
    assert_eq!(before.reason(), "INVOICE_UNAVAILABLE");
    let future = log.adjust(dec + 1, "1.00", "next month").expect_err("not begun");
    assert_eq!(future.reason(), "INVOICE_UNAVAILABLE");
    let long = "x".repeat(REASON_LEN_MAX + 1);
    for (amount, reason, field) in [
        ("0", "zero", "amount"),
        ("0.001", "a tenth of a cent", "amount"),
        ("1000000000000.01", "too much", "amount"),
        ("-1000000000000.01", "too much credit", "amount"),
        ("1", "", "reason"),
        ("1", "   ", "reason"),
        ("1", long.as_str(), "reason"),
        ("1", "line\nbreak", "reason"),
    ] {
        let Err(Rejection::InvalidArgument { field: got, .. }) = log.adjust(dec, amount, reason)
        else {
            panic!("{amount} {reason:?} accepted");
        };
        assert_eq!(got, field);
    }
    let unknown = log.apply(Command::CloseInvoice { tenant: "nobody".into(), month: dec });
    assert!(matches!(unknown.result, Err(Rejection::TenantNotFound { .. })));
    let invoices = log.s.invoices(&"t".into()).expect("t");
    assert!(invoices.closed.is_empty() && invoices.pending.is_empty(), "nothing changed");
}

/// A month nobody closed is closed by the core when the next one ends, with its statement and
/// adjustments (`automatic`, reported as `INVOICE_CLOSED`); a month with only adjustments too.
/// Invoices older than the months kept are dropped.
#[test]
fn the_core_closes_a_month_left_open() {
    let mut log = Log::holding();
    let dec = december();
    log.adjust(dec, "-4.00", "credit").expect("adjusted");
    log.at_month(dec + 1, HOUR);
    log.ok(Command::Release { tenant: "t".into(), placement: "a".into(), fence: None });
    log.adjust(dec + 1, "2.00", "January's charge").expect("adjusted");
    assert!(log.s.invoices(&"t".into()).expect("t").closed.is_empty(), "December still open");
    // February: January ended, so December (the month before it) closes.
    log.at_month(dec + 2, 1);
    let tick = log.tick();
    let closed: Vec<&Invoice> = tick
        .journal
        .iter()
        .filter_map(|e| match e {
            Event::InvoiceClosed { invoice, .. } => Some(&**invoice),
            _ => None,
        })
        .collect();
    assert_eq!(closed.len(), 1, "{closed:?}");
    assert!(closed[0].automatic);
    assert_eq!(closed[0].month, dec);
    assert_eq!(closed[0].total, d("740.00"), "744.00 metered, 4.00 credited");
    // March: January (one hour metered, one charge) closes too.
    log.at_month(dec + 3, 1);
    log.tick();
    let invoices = log.s.invoices(&"t".into()).expect("t");
    assert_eq!(invoices.closed.keys().copied().collect::<Vec<_>>(), vec![dec, dec + 1]);
    assert_eq!(invoices.closed[&(dec + 1)].total, d("3.00"));
    assert!(invoices.pending.is_empty());
    // Closing February by hand: nothing metered, nothing adjusted.
    assert_eq!(log.close(dec + 2).expect("closed").total, d("0"));
    // A year and more later, December is no longer kept.
    log.at_month(dec + INVOICE_MONTHS_KEPT, 1);
    log.adjust(dec + INVOICE_MONTHS_KEPT, "1.00", "keeps the meter moving").expect("open");
    let months: Vec<u64> = log.s.invoices(&"t".into()).expect("t").closed.keys().copied().collect();
    assert_eq!(months, vec![dec + 1, dec + 2]);
    let gone = log.close(dec).expect_err("older than the months kept");
    assert_eq!(gone.reason(), "INVOICE_UNAVAILABLE");
}
