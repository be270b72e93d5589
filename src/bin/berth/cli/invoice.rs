//! `berth invoice`: adjust, close, list and export tenants' monthly invoices. Amounts are
//! decimal strings end to end; the export is one row per invoice line, as billing systems
//! ingest them.

use berth::client::pb;
use clap::Subcommand;

use super::args::Format;
use super::Session;

#[derive(Subcommand, Debug)]
pub enum InvoiceCmd {
    /// Add a credit (negative) or charge (positive) to a tenant's invoice for an open month
    /// (admin): the current month, or the last one until the next ends.
    Adjust {
        tenant: String,
        /// YYYY-MM (UTC).
        #[arg(long)]
        month: String,
        /// Signed, in whole cents: -25.00 is a credit.
        #[arg(long, allow_hyphen_values = true)]
        amount: String,
        #[arg(long)]
        reason: String,
    },
    /// Close a tenant's invoice for an ended month (admin); closing again returns the same
    /// invoice. A month left open is closed by Berth when the next one ends.
    Close {
        tenant: String,
        #[arg(long)]
        month: String,
    },
    /// A tenant's closed invoices and its open months' adjustments.
    List { tenant: String },
    /// Write a tenant's closed invoices as CSV or JSON, one row per line: tenant, period,
    /// kind (usage or adjustment), pool, item, quantity, unit, unit price, amount, currency,
    /// description.
    Export {
        tenant: String,
        /// Only this month (YYYY-MM).
        #[arg(long)]
        month: Option<String>,
        #[arg(long, value_enum, default_value = "csv")]
        format: Format,
        /// The currency the amounts are in (Berth's prices carry none).
        #[arg(long, default_value = "USD")]
        currency: String,
    },
}

/// One exported row.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Row {
    pub tenant: String,
    pub period: String,
    /// "usage" or "adjustment".
    pub kind: String,
    pub pool: String,
    pub item: String,
    /// Item-hours for usage (to a millionth), 1 for an adjustment.
    pub quantity: String,
    pub unit: String,
    pub unit_price: String,
    pub amount: String,
    pub currency: String,
    pub description: String,
}

pub const COLUMNS: [&str; 11] = [
    "tenant",
    "period",
    "kind",
    "pool",
    "item",
    "quantity",
    "unit",
    "unit_price",
    "amount",
    "currency",
    "description",
];

impl Row {
    fn fields(&self) -> [&str; 11] {
        [
            &self.tenant,
            &self.period,
            &self.kind,
            &self.pool,
            &self.item,
            &self.quantity,
            &self.unit,
            &self.unit_price,
            &self.amount,
            &self.currency,
            &self.description,
        ]
    }
}

/// Every line and adjustment of `invoices` as rows.
pub fn rows(invoices: &[pb::Invoice], currency: &str) -> Vec<Row> {
    let mut rows = Vec::new();
    for i in invoices {
        for l in &i.lines {
            let description = if l.plan.is_empty() {
                "unpriced".to_owned()
            } else {
                format!("plan {} from {} ms, tier {}", l.plan, l.price_since_ms, l.tier)
            };
            rows.push(Row {
                tenant: i.tenant_id.clone(),
                period: i.month.clone(),
                kind: "usage".into(),
                pool: l.pool.clone(),
                item: l.item.clone(),
                quantity: l.quantity_hours.clone(),
                unit: l.unit.clone(),
                unit_price: l.per_hour.clone(),
                amount: l.amount.clone(),
                currency: currency.to_owned(),
                description,
            });
        }
        for a in &i.adjustments {
            rows.push(Row {
                tenant: i.tenant_id.clone(),
                period: i.month.clone(),
                kind: "adjustment".into(),
                pool: String::new(),
                item: String::new(),
                quantity: "1".into(),
                unit: String::new(),
                unit_price: a.amount.clone(),
                amount: a.amount.clone(),
                currency: currency.to_owned(),
                description: a.reason.clone(),
            });
        }
    }
    rows
}

/// The rows as CSV (`args::csv`).
pub fn csv(rows: &[Row]) -> String {
    super::args::csv(&COLUMNS, rows.iter().map(|r| r.fields().to_vec()))
}

pub async fn run(s: &Session, cmd: InvoiceCmd) -> anyhow::Result<()> {
    match cmd {
        InvoiceCmd::Adjust { tenant, month, amount, reason } => {
            let m = pb::AdjustInvoiceRequest {
                request_id: s.request_id(),
                tenant_id: tenant,
                month,
                amount,
                reason,
            };
            s.show(&call!(s, billing, adjust_invoice, m))
        }
        InvoiceCmd::Close { tenant, month } => {
            let m =
                pb::CloseInvoiceRequest { request_id: s.request_id(), tenant_id: tenant, month };
            s.show(&call!(s, billing, close_invoice, m))
        }
        InvoiceCmd::List { tenant } => {
            let m = pb::ListInvoicesRequest { tenant_id: tenant, read: None };
            s.show(&call!(s, billing, list_invoices, m))
        }
        InvoiceCmd::Export { tenant, month, format, currency } => {
            let m = pb::ListInvoicesRequest { tenant_id: tenant, read: None };
            let mut invoices = call!(s, billing, list_invoices, m).invoices;
            if let Some(month) = month {
                invoices.retain(|i| i.month == month);
            }
            super::args::export(format, &rows(&invoices, &currency), csv)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal RFC 4180 reader, independent of the writer: quoted fields, doubled quotes,
    /// commas and line breaks inside quotes.
    fn parse(text: &str) -> Vec<Vec<String>> {
        let mut records = Vec::new();
        let mut record = Vec::new();
        let mut field = String::new();
        let mut quoted = false;
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            match (quoted, c) {
                (true, '"') if chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                (true, '"') => quoted = false,
                (true, c) => field.push(c),
                (false, '"') => quoted = true,
                (false, ',') => record.push(std::mem::take(&mut field)),
                (false, '\r') => {}
                (false, '\n') => {
                    record.push(std::mem::take(&mut field));
                    records.push(std::mem::take(&mut record));
                }
                (false, c) => field.push(c),
            }
        }
        records
    }

    fn invoice() -> pb::Invoice {
        let line = |item: &str, amount: &str| pb::StatementLine {
            pool: "gpu".into(),
            item: item.into(),
            unit: "cpu-hour".into(),
            plan: "gold".into(),
            price_since_ms: 1_700_000_000_000,
            tier: 1,
            quantity: "3600000000".into(),
            quantity_hours: "1.000000".into(),
            per_hour: "0.04".into(),
            amount: amount.into(),
        };
        let adjustment = |amount: &str, reason: &str| pb::InvoiceAdjustment {
            amount: amount.into(),
            reason: reason.into(),
            log_index: 7,
            added_at_ms: 1,
        };
        pb::Invoice {
            tenant_id: "acme".into(),
            month: "2026-11".into(),
            lines: vec![line("cpu", "1234.56"), line("memory", "0.04")],
            adjustments: vec![
                adjustment("-100.00", "SLA credit, \"outage\" of 11-03,\r\nticket 42"),
                adjustment("0.40", "support"),
            ],
            total: "1135.00".into(),
            closed_at_ms: 2,
            log_index: 9,
            automatic: false,
        }
    }

    /// The CSV reads back, through a separate parser, into exactly the rows written (quotes,
    /// commas and line breaks in a reason included), and its amounts add up to the total.
    #[test]
    fn csv_export_round_trips() {
        let invoice = invoice();
        let rows = rows(std::slice::from_ref(&invoice), "EUR");
        let parsed = parse(&csv(&rows));
        assert_eq!(parsed[0], COLUMNS.map(String::from).to_vec());
        let back: Vec<Row> = parsed[1..]
            .iter()
            .map(|f| Row {
                tenant: f[0].clone(),
                period: f[1].clone(),
                kind: f[2].clone(),
                pool: f[3].clone(),
                item: f[4].clone(),
                quantity: f[5].clone(),
                unit: f[6].clone(),
                unit_price: f[7].clone(),
                amount: f[8].clone(),
                currency: f[9].clone(),
                description: f[10].clone(),
            })
            .collect();
        assert_eq!(back, rows);
        assert_eq!(back.len(), 4);
        let sum: rust_decimal::Decimal =
            back.iter().map(|r| r.amount.parse::<rust_decimal::Decimal>().expect("amount")).sum();
        assert_eq!(sum.to_string(), invoice.total);
        assert!(back.iter().all(|r| r.currency == "EUR" && r.tenant == "acme"));
    }

    /// The JSON export is the same rows.
    #[test]
    fn json_export_round_trips() {
        let rows = rows(&[invoice()], "USD");
        let json = serde_json::to_string_pretty(&rows).expect("encodes");
        let back: Vec<Row> = serde_json::from_str(&json).expect("decodes");
        assert_eq!(back, rows);
    }
}
