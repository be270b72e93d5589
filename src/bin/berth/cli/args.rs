//! Arguments that more than one resource's subcommands take, and their parsers: exact cores
//! (`--cpu 8.1` is 8100 millicores), durations, `KEY=VALUE` labels, `LEASE:TOKEN` fences, a
//! workload's spec and a page of a list.

use berth::client::pb;
use clap::Args;

/// Resources of a workload or worker: `--cpu 8.1` is exactly 8100 millicores.
#[derive(Args, Debug, Clone)]
pub struct Size {
    /// CPU cores, up to three decimals (e.g. 0.25, 8.1).
    #[arg(long, value_parser = parse_cpu)]
    pub cpu: u64,
    /// Memory in MiB.
    #[arg(long)]
    pub memory_mib: u64,
}

/// Parses cores with at most three decimals into millicores, exactly; never rounds.
pub fn parse_cpu(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let (whole, frac) = t.split_once('.').unwrap_or((t, ""));
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(whole) || (!frac.is_empty() && !digits(frac)) || (t.contains('.') && frac.is_empty())
    {
        return Err(format!("{text:?} is not a number of cores like 2 or 0.25"));
    }
    if frac.len() > 3 {
        return Err(format!(
            "{text:?} has more than three decimals; cpu is counted in whole millicores"
        ));
    }
    let whole: u64 = whole.parse().map_err(|_| format!("{text:?} is too large"))?;
    let frac_millis: u64 =
        format!("{frac:0<3}").parse().map_err(|_| format!("{text:?} is not a number"))?;
    whole
        .checked_mul(1_000)
        .and_then(|m| m.checked_add(frac_millis))
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// Parses a duration like `90s`, `15m`, `12h` or `30d` (also `ms`) into milliseconds; zero is
/// refused.
pub fn parse_duration_ms(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let unit_ms: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(format!("{text:?} is not a duration like 90s, 15m, 12h or 30d")),
    };
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 90s, 15m, 12h or 30d"))?;
    match number.checked_mul(unit_ms) {
        Some(0) => Err(format!("{text:?} is not longer than zero")),
        Some(ms) => Ok(ms),
        None => Err(format!("{text:?} is too long")),
    }
}

pub fn parse_pair(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("{text:?} is not KEY=VALUE"))
}

pub fn parse_fence(text: &str) -> Result<pb::Fence, String> {
    let (lease, token) =
        text.rsplit_once(':').ok_or_else(|| format!("{text:?} is not LEASE:TOKEN"))?;
    let token = token.parse().map_err(|_| format!("fencing token in {text:?} is not a number"))?;
    Ok(pb::Fence { lease: lease.to_owned(), token })
}

#[derive(Args, Debug, Clone)]
pub struct Workload {
    pub tenant: String,
    /// The workload's id, unique within the tenant.
    pub id: String,
    #[command(flatten)]
    pub size: Size,
    /// Instances, placed all or nothing.
    #[arg(long, default_value_t = 1)]
    pub count: u32,
    #[arg(long)]
    pub pool: Option<String>,
    /// Use the emptiest workers instead of bin-packing.
    #[arg(long)]
    pub spread: bool,
    /// The workload's own label (repeatable).
    #[arg(long = "label", value_parser = parse_pair)]
    pub labels: Vec<(String, String)>,
    /// Worker label KEY=VALUE every chosen worker must have (repeatable).
    #[arg(long = "require", value_parser = parse_pair)]
    pub requires: Vec<(String, String)>,
    /// Worker label KEY=VALUE to prefer (repeatable).
    #[arg(long = "prefer", value_parser = parse_pair)]
    pub prefers: Vec<(String, String)>,
    /// Only on workers already running this tenant's workload labelled KEY=VALUE.
    #[arg(long = "affinity", value_parser = parse_pair)]
    pub affinity: Vec<(String, String)>,
    /// Never on workers running this tenant's workload labelled KEY=VALUE.
    #[arg(long = "anti-affinity", value_parser = parse_pair)]
    pub anti_affinity: Vec<(String, String)>,
    #[arg(long = "prefer-affinity", value_parser = parse_pair)]
    pub prefer_affinity: Vec<(String, String)>,
    #[arg(long = "prefer-anti-affinity", value_parser = parse_pair)]
    pub prefer_anti_affinity: Vec<(String, String)>,
    /// Placement group.
    #[arg(long)]
    pub group: Option<String>,
    /// Higher is more important: a tenant whose quota allows preemption may release
    /// strictly lower-priority placements to fit this one.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub priority: i32,
    /// When preempted, wait in the queue again instead of being released for good.
    #[arg(long)]
    pub requeue_on_preemption: bool,
    /// When a worker holding an instance goes down: move the lost instances
    /// (reschedule) or release the whole placement (release).
    #[arg(long, value_enum, default_value_t = OnWorkerLost::Reschedule)]
    pub on_worker_lost: OnWorkerLost,
    /// Release it this long after it is placed, in log time (reason TIME_LIMIT): 90s, 2h, 7d.
    #[arg(long, value_parser = parse_duration_ms)]
    pub max_runtime: Option<u64>,
    /// Refuse unless LEASE:TOKEN is the live holder's token.
    #[arg(long, value_parser = parse_fence)]
    pub fence: Option<pb::Fence>,
}

impl Workload {
    pub fn spec(&self) -> pb::PlacementSpec {
        let terms = |pairs: &[(String, String)]| {
            pairs.iter().map(|(k, v)| pb::LabelTerm { key: k.clone(), value: v.clone() }).collect()
        };
        let rules = |pairs: &[(String, String)]| {
            pairs
                .iter()
                .map(|(k, v)| pb::LabelRequirement {
                    key: k.clone(),
                    op: pb::label_requirement::Op::In.into(),
                    values: vec![v.clone()],
                })
                .collect()
        };
        pb::PlacementSpec {
            placement_id: self.id.clone(),
            count: self.count,
            resources: Some(pb::Resources {
                cpu_millis: self.size.cpu,
                memory_mib: self.size.memory_mib,
            }),
            pool: self.pool.clone().unwrap_or_default(),
            strategy: if self.spread { pb::Strategy::Spread } else { pb::Strategy::BinPack }.into(),
            labels: self.labels.iter().cloned().collect(),
            worker_requires: rules(&self.requires),
            worker_prefers: rules(&self.prefers),
            affinity: terms(&self.affinity),
            affinity_preferred: terms(&self.prefer_affinity),
            anti_affinity: terms(&self.anti_affinity),
            anti_affinity_preferred: terms(&self.prefer_anti_affinity),
            group: self.group.clone().unwrap_or_default(),
            priority: self.priority,
            requeue_on_preemption: self.requeue_on_preemption,
            on_worker_lost: match self.on_worker_lost {
                OnWorkerLost::Reschedule => pb::OnWorkerLost::Reschedule,
                OnWorkerLost::Release => pb::OnWorkerLost::Release,
            }
            .into(),
            max_runtime_ms: self.max_runtime.unwrap_or(0),
        }
    }
}

#[derive(clap::ValueEnum, Debug, Clone, Copy)]
pub enum OnWorkerLost {
    Reschedule,
    Release,
}

/// A tenant's placement or reservation by id, for a write the holder of a lease may fence.
#[derive(Args, Debug)]
pub struct PlacementRef {
    pub tenant: String,
    pub id: String,
    #[arg(long, value_parser = parse_fence)]
    pub fence: Option<pb::Fence>,
}

/// The page of a list that starts after `after`.
/// How `invoice export` and `usage report` write their rows.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Format {
    Csv,
    Json,
}

/// RFC 4180: a header line, then one line per row; fields quoted when they hold a comma, a
/// quote or a line break (quotes doubled).
pub fn csv<'a>(header: &[&str], rows: impl Iterator<Item = Vec<&'a str>>) -> String {
    let field = |f: &str| {
        if f.contains([',', '"', '\n', '\r']) {
            format!("\"{}\"", f.replace('"', "\"\""))
        } else {
            f.to_owned()
        }
    };
    let mut out = header.join(",");
    out.push_str("\r\n");
    for row in rows {
        let line: Vec<String> = row.into_iter().map(field).collect();
        out.push_str(&line.join(","));
        out.push_str("\r\n");
    }
    out
}

/// Prints `rows` as `format` asks: CSV through `as_csv`, or a JSON array.
pub fn export<R: serde::Serialize>(
    format: Format,
    rows: &[R],
    as_csv: impl Fn(&[R]) -> String,
) -> anyhow::Result<()> {
    match format {
        Format::Csv => out!("{}", as_csv(rows).trim_end()),
        Format::Json => out!("{}", serde_json::to_string_pretty(rows)?),
    }
    Ok(())
}

pub fn page(after: Option<String>, limit: u32) -> Option<pb::Page> {
    Some(pb::Page { after: after.unwrap_or_default(), limit })
}

#[cfg(test)]
mod tests {
    use super::{parse_cpu, parse_duration_ms};

    /// Durations take one unit (ms, s, m, h, d); zero, no unit or overflow is an error.
    #[test]
    fn durations_parse_to_millis() {
        assert_eq!(parse_duration_ms("90s"), Ok(90_000));
        assert_eq!(parse_duration_ms("15m"), Ok(900_000));
        assert_eq!(parse_duration_ms("12h"), Ok(43_200_000));
        assert_eq!(parse_duration_ms("30d"), Ok(2_592_000_000));
        assert_eq!(parse_duration_ms("250ms"), Ok(250));
        for bad in ["", "0s", "90", "s", "1.5h", "-1d", "1w", "99999999999999999999d", "1h30m"] {
            assert!(parse_duration_ms(bad).is_err(), "{bad:?} should be refused");
        }
    }

    /// Cores parse exactly to millicores; more than three decimals is an error, never rounded.
    #[test]
    fn cpu_parses_exactly() {
        assert_eq!(parse_cpu("8.1"), Ok(8_100));
        assert_eq!(parse_cpu("0.001"), Ok(1));
        assert_eq!(parse_cpu("64"), Ok(64_000));
        assert_eq!(parse_cpu("0.25"), Ok(250));
        for bad in ["8.1234", "", ".5", "5.", "-1", "1e3", "abc", "99999999999999999999"] {
            assert!(parse_cpu(bad).is_err(), "{bad:?} should be refused");
        }
    }
}
