//! `berth usage`: what a tenant held over time, drawn as a sparkline per item; and
//! `berth usage report`, the same numbers for one tenant or all as CSV or JSON.

use std::collections::BTreeMap;
use std::str::FromStr;

use berth::client::pb;
use berth::scheduler::windows::{utc_label, DAY_MS, HOUR_MS};
use berth::scheduler::UnixMillis;
use clap::{Args, Subcommand};
use rust_decimal::Decimal;

use super::args::{parse_duration_ms, Format};
use super::Session;

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct UsageArgs {
    #[command(subcommand)]
    report: Option<UsageCmd>,
    #[command(flatten)]
    show: ShowArgs,
}

#[derive(Subcommand, Debug)]
pub enum UsageCmd {
    /// Usage of one tenant, or of every tenant (admin), one row per tenant, bucket, pool and
    /// item: quantity (exact cpu_millis x ms or MiB x ms), unit and item-hours.
    Report {
        /// Only this tenant (default: every tenant).
        #[arg(long)]
        tenant: Option<String>,
        /// Start: YYYY-MM-DD, YYYY-MM-DDTHH:MM (UTC), or a duration ago (30d). Default: the
        /// start of this month.
        #[arg(long)]
        from: Option<String>,
        /// End (exclusive), the same forms. Default: now.
        #[arg(long)]
        to: Option<String>,
        /// Bucket size (1d, 1h, 15m). Default: a day.
        #[arg(long, value_parser = parse_duration_ms)]
        step: Option<u64>,
        #[arg(long, value_enum, default_value = "csv")]
        format: Format,
    },
}

#[derive(Args, Debug)]
pub struct ShowArgs {
    /// The tenant (a tenant token's own by default is not assumed: name it).
    tenant: Option<String>,
    /// Start: YYYY-MM-DD, YYYY-MM-DDTHH:MM (UTC), or a duration ago (7d). Default: 24h ago,
    /// from the hour's start.
    #[arg(long)]
    from: Option<String>,
    /// End (exclusive), the same forms. Default: now.
    #[arg(long)]
    to: Option<String>,
    /// Bucket size (1h, 1d, 5m). Default: an hour, or a day for ranges over 14 days.
    #[arg(long, value_parser = parse_duration_ms)]
    step: Option<u64>,
}

/// One row of a report.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Row {
    pub tenant: String,
    pub from: String,
    pub to: String,
    pub pool: String,
    pub item: String,
    pub quantity: String,
    pub unit: String,
    pub hours: String,
}

const COLUMNS: [&str; 8] = ["tenant", "from", "to", "pool", "item", "quantity", "unit", "hours"];

/// A time as the CLI takes it: a UTC date (and time), or a duration before `now`.
pub fn parse_time(text: &str, now: u64) -> Result<u64, String> {
    let t = text.trim();
    if let Ok(ago) = parse_duration_ms(t) {
        return Ok(now.saturating_sub(ago));
    }
    let bad = || format!("{text:?} is not a time like 2026-12-01, 2026-12-01T13:00 or 7d");
    let (date, clock) = t.split_once('T').unwrap_or((t, "00:00"));
    let date: Vec<u64> =
        date.split('-').map(|p| p.parse().map_err(|_| bad())).collect::<Result<_, _>>()?;
    let clock: Vec<u64> =
        clock.split(':').map(|p| p.parse().map_err(|_| bad())).collect::<Result<_, _>>()?;
    let (&[year, month, day], &[hour, minute]) = (date.as_slice(), clock.as_slice()) else {
        return Err(bad());
    };
    if !(1970..=9999).contains(&year)
        || !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
    {
        return Err(bad());
    }
    let month_start = berth::scheduler::windows::month_start((year - 1970) * 12 + month - 1).0;
    Ok(month_start + (day - 1) * DAY_MS + hour * HOUR_MS + minute * 60_000)
}

fn now_ms() -> u64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    since.map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Each item's quantity per bucket, summed over pools.
fn per_item(r: &pb::GetUsageResponse) -> BTreeMap<String, Vec<u128>> {
    let mut items: BTreeMap<String, Vec<u128>> = BTreeMap::new();
    for (i, bucket) in r.buckets.iter().enumerate() {
        for line in &bucket.lines {
            let series = items.entry(line.item.clone()).or_insert_with(|| vec![0; r.buckets.len()]);
            series[i] += u128::from_str(&line.quantity).unwrap_or(0);
        }
    }
    items
}

/// Eight levels, scaled to the largest value; nothing held is a space.
pub fn sparkline(values: &[u128]) -> String {
    const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let max = values.iter().copied().max().unwrap_or(0).max(1);
    values
        .iter()
        .map(|&v| if v == 0 { ' ' } else { BARS[usize::try_from(v * 7 / max).unwrap_or(7)] })
        .collect()
}

/// `quantity` over `ms` as an average held, in cores or GiB.
fn average(item: &str, quantity: u128, ms: u64) -> Decimal {
    let per_unit: u128 = if item.ends_with("cpu") { 1_000 } else { 1_024 };
    let denominator = u128::from(ms.max(1)) * per_unit;
    let hundredths = (quantity * 100 + denominator / 2) / denominator;
    Decimal::from_i128_with_scale(i128::try_from(hundredths).unwrap_or(i128::MAX), 2)
}

async fn get(
    s: &Session,
    tenant: &str,
    from: u64,
    to: u64,
    step: u64,
) -> anyhow::Result<pb::GetUsageResponse> {
    let m = pb::GetUsageRequest {
        tenant_id: tenant.into(),
        from_ms: from,
        to_ms: to,
        step_ms: step,
        read: None,
    };
    Ok(call!(s, billing, get_usage, m))
}

pub async fn run(s: &Session, args: UsageArgs) -> anyhow::Result<()> {
    let now = now_ms();
    match args.report {
        Some(UsageCmd::Report { tenant, from, to, step, format }) => {
            let to = to.map_or(Ok(now), |t| parse_time(&t, now)).map_err(anyhow::Error::msg)?;
            let month = berth::scheduler::windows::month_of(UnixMillis(now));
            let from = match from {
                Some(f) => parse_time(&f, now).map_err(anyhow::Error::msg)?,
                None => berth::scheduler::windows::month_start(month).0,
            };
            anyhow::ensure!(from < to, "--from must be before --to");
            let step = step.unwrap_or(DAY_MS);
            let from = aligned(from, step);
            let tenants = match tenant {
                Some(t) => vec![t],
                None => all_tenants(s).await?,
            };
            let mut rows = Vec::new();
            for tenant in tenants {
                rows.extend(report_rows(&tenant, &get(s, &tenant, from, to, step).await?));
            }
            super::args::export(format, &rows, csv)
        }
        None => show(s, args.show, now).await,
    }
}

async fn show(s: &Session, args: ShowArgs, now: u64) -> anyhow::Result<()> {
    let Some(tenant) = args.tenant else { anyhow::bail!("name a tenant: berth usage TENANT") };
    let to = args.to.map_or(Ok(now), |t| parse_time(&t, now)).map_err(anyhow::Error::msg)?;
    let from = match args.from {
        Some(f) => parse_time(&f, now).map_err(anyhow::Error::msg)?,
        None => to.saturating_sub(24 * HOUR_MS) / HOUR_MS * HOUR_MS,
    };
    anyhow::ensure!(from < to, "--from must be before --to");
    let step = args.step.unwrap_or(if to - from > 14 * DAY_MS { DAY_MS } else { HOUR_MS });
    let from = aligned(from, step);
    let r = get(s, &tenant, from, to, step).await?;
    if s.json {
        return s.show(&r);
    }
    out!(
        "{tenant}: {} to {}, steps of {}, from the {} series (as of {})",
        utc_label(UnixMillis(from)),
        utc_label(UnixMillis(to)),
        step_label(step),
        r.resolution,
        utc_label(UnixMillis(r.as_of_ms)),
    );
    let items = per_item(&r);
    if items.is_empty() {
        out!("nothing held");
        return Ok(());
    }
    let counted = r.as_of_ms.min(to).saturating_sub(from);
    for (item, values) in &items {
        let unit = if item.ends_with("cpu") { "cores" } else { "GiB" };
        let peak = values
            .iter()
            .zip(&r.buckets)
            .map(|(v, b)| average(item, *v, b.to_ms.min(r.as_of_ms).saturating_sub(b.from_ms)))
            .max()
            .unwrap_or_default();
        let total: u128 = values.iter().sum();
        out!(
            "{item:<16} {}  avg {} {unit}, peak {} {unit}",
            sparkline(values),
            average(item, total, counted),
            peak
        );
    }
    Ok(())
}

/// `from` rounded down to the day or hour a step of whole days or hours starts at, so the
/// query reads the roll-ups (kept longer than raw changes).
fn aligned(from: u64, step: u64) -> u64 {
    match step {
        step if step % DAY_MS == 0 => from / DAY_MS * DAY_MS,
        step if step % HOUR_MS == 0 => from / HOUR_MS * HOUR_MS,
        _ => from,
    }
}

fn step_label(ms: u64) -> String {
    match ms {
        ms if ms % DAY_MS == 0 => format!("{}d", ms / DAY_MS),
        ms if ms % HOUR_MS == 0 => format!("{}h", ms / HOUR_MS),
        ms if ms % 60_000 == 0 => format!("{}m", ms / 60_000),
        ms => format!("{}s", ms / 1_000),
    }
}

async fn all_tenants(s: &Session) -> anyhow::Result<Vec<String>> {
    let mut tenants = Vec::new();
    loop {
        let page =
            Some(pb::Page { after: tenants.last().cloned().unwrap_or_default(), limit: 1_000 });
        let r = call!(s, tenants, list_tenants, pb::ListTenantsRequest { page, read: None });
        if r.tenants.is_empty() {
            return Ok(tenants);
        }
        tenants.extend(r.tenants.into_iter().map(|t| t.tenant_id));
    }
}

pub fn report_rows(tenant: &str, r: &pb::GetUsageResponse) -> Vec<Row> {
    let mut rows = Vec::new();
    for bucket in &r.buckets {
        for line in &bucket.lines {
            rows.push(Row {
                tenant: tenant.into(),
                from: utc_label(UnixMillis(bucket.from_ms)),
                to: utc_label(UnixMillis(bucket.to_ms)),
                pool: line.pool.clone(),
                item: line.item.clone(),
                quantity: line.quantity.clone(),
                unit: line.unit.clone(),
                hours: line.quantity_hours.clone(),
            });
        }
    }
    rows
}

impl Row {
    fn fields(&self) -> Vec<&str> {
        let r = self;
        [&r.tenant, &r.from, &r.to, &r.pool, &r.item, &r.quantity, &r.unit, &r.hours]
            .map(String::as_str)
            .to_vec()
    }
}

/// The rows as CSV (`args::csv`).
pub fn csv(rows: &[Row]) -> String {
    super::args::csv(&COLUMNS, rows.iter().map(Row::fields))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Dates, date-times and durations ago; anything else is an error.
    #[test]
    fn times_parse() {
        assert_eq!(parse_time("1970-01-02", 0), Ok(DAY_MS));
        assert_eq!(parse_time("2026-12-01T13:30", 0), Ok(1_796_131_800_000));
        assert_eq!(parse_time("2h", 10 * HOUR_MS), Ok(8 * HOUR_MS));
        for bad in ["2026-13-01", "yesterday", "2026-12-01T25:00", "2026-12", ""] {
            assert!(parse_time(bad, 0).is_err(), "{bad}");
        }
    }

    /// The tallest bar is the largest value; nothing held is blank.
    #[test]
    fn sparklines_scale_to_the_largest_value() {
        assert_eq!(sparkline(&[0, 1, 7, 14]), " ▁▄█");
        assert_eq!(sparkline(&[]), "");
    }

    /// A report's CSV has the header and one line per row, and reads back.
    #[test]
    fn report_csv_round_trips() {
        let row = Row {
            tenant: "acme".into(),
            from: "2026-12-01 00:00:00".into(),
            to: "2026-12-02 00:00:00".into(),
            pool: "gpu".into(),
            item: "cpu".into(),
            quantity: "86400000000".into(),
            unit: "cpu-hour".into(),
            hours: "24.000000".into(),
        };
        let text = csv(&[row.clone(), Row { tenant: "beta".into(), ..row.clone() }]);
        let lines: Vec<&str> = text.split("\r\n").filter(|l| !l.is_empty()).collect();
        assert_eq!(lines[0], COLUMNS.join(","));
        let parsed: Vec<Vec<&str>> = lines[1..].iter().map(|l| l.split(',').collect()).collect();
        assert_eq!(parsed.len(), 2);
        assert_eq!(
            parsed[0],
            vec![
                "acme",
                "2026-12-01 00:00:00",
                "2026-12-02 00:00:00",
                "gpu",
                "cpu",
                "86400000000",
                "cpu-hour",
                "24.000000"
            ]
        );
        assert_eq!(parsed[1][0], "beta");
    }
}
