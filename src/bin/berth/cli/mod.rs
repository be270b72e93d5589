//! Client subcommands: one per RPC, readable output by default and `--json` for scripts.

use std::collections::BTreeMap;

use berth::client::{self, new_request_id, pb, Client, ClientOptions};
use clap::{Args, Subcommand};
use serde::Serialize;

/// Options every client subcommand takes.
#[derive(Args, Debug, Clone)]
pub struct Connection {
    /// API endpoints of the replicas (host:port, comma separated).
    #[arg(
        long,
        env = "BERTH_ENDPOINTS",
        value_delimiter = ',',
        global = true,
        default_value = "127.0.0.1:7501,127.0.0.1:7502,127.0.0.1:7503"
    )]
    pub endpoints: Vec<String>,
    /// Bearer token (the admin token, or a tenant token from `berth token issue`).
    #[arg(long, env = "BERTH_TOKEN", global = true, hide_env_values = true)]
    pub token: Option<String>,
    /// Print the response as JSON.
    #[arg(long, global = true)]
    pub json: bool,
    /// Idempotency key for a write (default: a fresh random id). Reuse it to retry safely.
    #[arg(long, global = true)]
    pub request_id: Option<String>,
    /// Deadline for the call, retries included.
    #[arg(long, global = true, default_value_t = 10_000)]
    pub timeout_ms: u64,
    /// The cluster's CA certificate (PEM), to verify the replicas' API certificates.
    /// `berth up` prints it.
    #[arg(long, env = "BERTH_CA", global = true)]
    pub ca: Option<std::path::PathBuf>,
    /// A client certificate (PEM) to present, for a cluster that requires one (with --key).
    #[arg(long, env = "BERTH_CERT", global = true, requires = "key")]
    pub cert: Option<std::path::PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, env = "BERTH_KEY", global = true, requires = "cert")]
    pub key: Option<std::path::PathBuf>,
    /// Speak plaintext, to a cluster started with `--insecure`.
    #[arg(long, env = "BERTH_INSECURE", global = true, conflicts_with_all = ["ca", "cert", "key"])]
    pub insecure: bool,
}

impl Connection {
    /// TLS with the given CA (and client certificate), or plaintext if asked for explicitly.
    pub fn security(&self) -> anyhow::Result<berth::client::ClientSecurity> {
        use berth::client::{ClientSecurity, ClientTls};
        if self.insecure {
            return Ok(ClientSecurity::Insecure);
        }
        let Some(ca) = &self.ca else {
            anyhow::bail!(
                "the API is served over TLS: give the cluster's CA certificate with --ca FILE or \
                 BERTH_CA (berth up prints it), or --insecure for a cluster started with --insecure"
            );
        };
        let identity = self.cert.as_deref().zip(self.key.as_deref());
        Ok(ClientSecurity::Tls(ClientTls::load(ca, identity)?))
    }

    /// A client for these endpoints, token and security.
    pub fn client(&self, options: berth::client::ClientOptions) -> anyhow::Result<Client> {
        Client::new(&self.endpoints, self.token.as_deref(), &self.security()?, options)
    }
}

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

fn parse_pair(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("{text:?} is not KEY=VALUE"))
}

fn parse_fence(text: &str) -> Result<pb::Fence, String> {
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
    /// Refuse unless LEASE:TOKEN is the live holder's token.
    #[arg(long, value_parser = parse_fence)]
    pub fence: Option<pb::Fence>,
}

impl Workload {
    fn spec(&self) -> pb::PlacementSpec {
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
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum TenantCmd {
    /// Create a tenant.
    Create {
        id: String,
        #[arg(long)]
        parent: Option<String>,
        #[arg(long, default_value_t = 1)]
        weight: u32,
    },
    Get {
        id: String,
    },
    List {
        #[arg(long)]
        after: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Delete a tenant and everything it owns.
    Delete {
        id: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum QuotaCmd {
    /// Set hard limits (in total, or in one pool with --pool); unset flags are unlimited.
    Set {
        tenant: String,
        #[arg(long)]
        pool: Option<String>,
        #[arg(long, value_parser = parse_cpu)]
        cpu: Option<u64>,
        #[arg(long)]
        memory_mib: Option<u64>,
        #[arg(long)]
        instances: Option<u64>,
        #[arg(long)]
        jobs: Option<u64>,
    },
    /// Set soft limits with burst ceilings on the total (SOFT:BURST; cpu in cores) and the
    /// grace period; unset flags set none (inherit).
    Soft {
        tenant: String,
        #[arg(long, value_parser = parse_soft_cpu)]
        cpu: Option<pb::SoftLimit>,
        #[arg(long, value_parser = parse_soft)]
        memory_mib: Option<pb::SoftLimit>,
        #[arg(long, value_parser = parse_soft)]
        instances: Option<pb::SoftLimit>,
        #[arg(long, value_parser = parse_soft)]
        jobs: Option<pb::SoftLimit>,
        /// How long usage may stay above soft (log-time ms); 0 admits nothing above soft.
        #[arg(long)]
        grace_ms: Option<u64>,
        /// Cpu and memory soft limits as a share of this pool's schedulable capacity, which
        /// follow the pool as workers come and go (instead of --cpu/--memory-mib).
        #[arg(long, requires = "share", conflicts_with_all = ["cpu", "memory_mib"])]
        share_of_pool: Option<String>,
        /// SOFT:BURST in per-mille of the pool (e.g. 250:400).
        #[arg(long, value_parser = parse_soft, requires = "share_of_pool")]
        share: Option<pb::SoftLimit>,
    },
    /// Set time-window limits (UTC, log time); unset flags are unlimited.
    Window {
        tenant: String,
        #[arg(long)]
        jobs_per_day: Option<u64>,
        /// Cpu-hours per calendar month, up to three decimals (counted exactly).
        #[arg(long, value_parser = parse_cpu_hours)]
        cpu_hours_per_month: Option<u64>,
        /// What `place --queue` does when a window is spent.
        #[arg(long, value_parser = ["queue", "refuse"], default_value = "queue")]
        when_exhausted: String,
    },
    /// Deny the tenant's subtree a pool.
    Deny { tenant: String, pool: String },
    /// Lift a pool denial set on this tenant.
    Allow { tenant: String, pool: String },
    /// Whose strictly lower-priority placements the tenant's subtree may preempt when its work
    /// does not fit ("inherit" clears the tenant's own setting).
    Preemption {
        tenant: String,
        #[arg(value_parser = ["never", "same-tenant", "any-tenant", "inherit"])]
        policy: String,
    },
    /// Set the tenant's guaranteed share of a pool (cpu in cores), with optional borrowing and
    /// lending limits (a dimension left out is unlimited); --remove drops it.
    Guarantee {
        tenant: String,
        pool: String,
        #[command(flatten)]
        share: GuaranteeFlags,
        #[arg(long, conflicts_with_all = ["cpu", "memory_mib", "borrow_cpu", "borrow_memory_mib", "lend_cpu", "lend_memory_mib"])]
        remove: bool,
    },
    /// Limits as set and in effect, usage, burst state and each pool's guarantee, borrowed
    /// and unused amounts.
    Get { tenant: String },
}

/// A guaranteed share of a pool, as `berth quota guarantee` takes it.
#[derive(clap::Args, Debug)]
pub struct GuaranteeFlags {
    #[arg(long, value_parser = parse_cpu, default_value = "0")]
    cpu: u64,
    #[arg(long, default_value_t = 0)]
    memory_mib: u64,
    /// Most cpu the subtree may use above the guarantee in the pool.
    #[arg(long, value_parser = parse_cpu)]
    borrow_cpu: Option<u64>,
    #[arg(long)]
    borrow_memory_mib: Option<u64>,
    /// Most of the unused guaranteed cpu other tenants may borrow.
    #[arg(long, value_parser = parse_cpu)]
    lend_cpu: Option<u64>,
    #[arg(long)]
    lend_memory_mib: Option<u64>,
}

impl GuaranteeFlags {
    /// The guarantee: a limit dimension left out is unlimited, which is the most any pool can
    /// hold (`POOL_*_MAX`, the bound on a guarantee's amounts).
    fn guarantee(&self) -> pb::Guarantee {
        use berth::scheduler::resources::{POOL_CPU_MILLIS_MAX, POOL_MEMORY_MIB_MAX};
        let res = |cpu_millis, memory_mib| pb::Resources { cpu_millis, memory_mib };
        let borrowing =
            (self.borrow_cpu.is_some() || self.borrow_memory_mib.is_some()).then(|| {
                res(
                    self.borrow_cpu.unwrap_or(POOL_CPU_MILLIS_MAX),
                    self.borrow_memory_mib.unwrap_or(POOL_MEMORY_MIB_MAX),
                )
            });
        let lending = (self.lend_cpu.is_some() || self.lend_memory_mib.is_some()).then(|| {
            res(
                self.lend_cpu.unwrap_or(POOL_CPU_MILLIS_MAX),
                self.lend_memory_mib.unwrap_or(POOL_MEMORY_MIB_MAX),
            )
        });
        pb::Guarantee {
            nominal: Some(res(self.cpu, self.memory_mib)),
            borrowing_limit: borrowing,
            lending_limit: lending,
        }
    }
}

fn parse_soft_pair(
    text: &str,
    parse: fn(&str) -> Result<u64, String>,
) -> Result<pb::SoftLimit, String> {
    let (soft, burst) =
        text.split_once(':').ok_or_else(|| format!("{text:?} is not SOFT:BURST"))?;
    let (soft, burst) = (parse(soft)?, parse(burst)?);
    if soft > burst {
        return Err(format!("soft {soft} is above burst {burst}"));
    }
    Ok(pb::SoftLimit { soft, burst })
}

/// Cpu-hours (up to three decimals) as cpu_millis × ms, exactly.
fn parse_cpu_hours(text: &str) -> Result<u64, String> {
    parse_cpu(text)?.checked_mul(3_600_000).ok_or_else(|| format!("{text:?} is too large"))
}

fn parse_soft_cpu(text: &str) -> Result<pb::SoftLimit, String> {
    parse_soft_pair(text, parse_cpu)
}

fn parse_soft(text: &str) -> Result<pb::SoftLimit, String> {
    parse_soft_pair(text, |n| n.trim().parse().map_err(|_| format!("{n:?} is not a number")))
}

#[derive(Subcommand, Debug)]
pub enum TokenCmd {
    /// Issue a tenant token (printed once).
    Issue {
        tenant: String,
        name: String,
        /// Lifetime, like 90s, 15m, 12h or 30d (at most 365d); by default it never expires.
        #[arg(long, value_parser = parse_duration_ms)]
        expires_in: Option<u64>,
    },
    Revoke {
        tenant: String,
        name: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum WorkerCmd {
    Register {
        id: String,
        #[command(flatten)]
        size: Size,
        #[arg(long)]
        pool: Option<String>,
        #[arg(long = "label", value_parser = parse_pair)]
        labels: Vec<(String, String)>,
    },
    Get {
        id: String,
    },
    List {
        #[arg(long)]
        pool: Option<String>,
        #[arg(long)]
        after: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Stop new placements on a worker (what runs there stays).
    Drain {
        id: String,
    },
    Undrain {
        id: String,
    },
    /// Remove a worker; with --evict, release whatever runs there.
    Remove {
        id: String,
        #[arg(long)]
        evict: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum PoolCmd {
    /// Hold capacity of a pool back from guarantees, for borrowers: from then on, guarantees
    /// plus the reserve may not be raised beyond the pool's schedulable capacity.
    Reserve {
        pool: String,
        /// CPU cores held back (up to three decimals).
        #[arg(long, value_parser = parse_cpu, required_unless_present = "remove")]
        cpu: Option<u64>,
        /// Memory held back, in MiB.
        #[arg(long, required_unless_present = "remove")]
        memory_mib: Option<u64>,
        /// Drop the reserve (guarantees are no longer checked against capacity).
        #[arg(long, conflicts_with_all = ["cpu", "memory_mib"])]
        remove: bool,
    },
    /// A pool's capacity, free capacity, reserve, guarantees and any shortfall.
    Get { pool: String },
}

#[derive(Subcommand, Debug)]
pub enum PlacementCmd {
    Get {
        tenant: String,
        id: String,
    },
    List {
        tenant: String,
        #[arg(long)]
        after: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
}

#[derive(Subcommand, Debug)]
pub enum QueueCmd {
    /// A tenant's queued placements: position, age and why each waits.
    List {
        tenant: String,
        #[arg(long)]
        after: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Withdraw a queued placement.
    Cancel { tenant: String, id: String },
}

#[derive(Subcommand, Debug)]
pub enum GroupCmd {
    Create {
        tenant: String,
        group: String,
        #[arg(long)]
        max_instances: u32,
        /// Prefer workers already holding the group (default: spread, one per worker).
        #[arg(long)]
        pack: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum LeaseCmd {
    Acquire {
        tenant: String,
        name: String,
        #[arg(long)]
        holder: String,
        #[arg(long)]
        ttl_ms: u64,
    },
    Keepalive {
        tenant: String,
        name: String,
        #[arg(long)]
        token: u64,
    },
    Release {
        tenant: String,
        name: String,
        #[arg(long)]
        token: u64,
    },
    Get {
        tenant: String,
        name: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum CostCmd {
    /// Split a total by weights, to the cent, parts summing exactly to the total.
    Allocate {
        #[arg(long)]
        total: String,
        #[arg(long, value_delimiter = ',')]
        weights: Vec<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum ClusterCmd {
    Status,
    /// Add a replica (it must already be running, without --bootstrap).
    Add {
        id: u64,
        peer_address: String,
    },
    Remove {
        id: u64,
    },
}

#[derive(Subcommand, Debug)]
pub enum ClientCmd {
    #[command(subcommand)]
    Tenant(TenantCmd),
    #[command(subcommand)]
    Quota(QuotaCmd),
    #[command(subcommand)]
    Token(TokenCmd),
    #[command(subcommand)]
    Worker(WorkerCmd),
    #[command(subcommand)]
    Pool(PoolCmd),
    /// Place instances of a workload (with --dry-run: only say what would happen).
    Place {
        #[command(flatten)]
        workload: Workload,
        /// Explain the decision (workers, or each worker's reason and the limiting quota)
        /// without placing anything.
        #[arg(long)]
        dry_run: bool,
        /// Wait in the fair-share queue instead of failing when quota or capacity is short.
        #[arg(long)]
        queue: bool,
    },
    /// Release a placement or reservation.
    Release {
        tenant: String,
        id: String,
        #[arg(long, value_parser = parse_fence)]
        fence: Option<pb::Fence>,
    },
    #[command(subcommand)]
    Placement(PlacementCmd),
    #[command(subcommand)]
    Queue(QueueCmd),
    /// Hold capacity for --ttl-ms.
    Reserve {
        #[command(flatten)]
        workload: Workload,
        #[arg(long)]
        ttl_ms: u64,
    },
    /// Turn a reservation into a placement.
    Confirm {
        tenant: String,
        id: String,
        #[arg(long, value_parser = parse_fence)]
        fence: Option<pb::Fence>,
    },
    /// Cancel a reservation.
    Cancel {
        tenant: String,
        id: String,
        #[arg(long, value_parser = parse_fence)]
        fence: Option<pb::Fence>,
    },
    #[command(subcommand)]
    Group(GroupCmd),
    #[command(subcommand)]
    Lease(LeaseCmd),
    #[command(subcommand)]
    Cost(CostCmd),
    #[command(subcommand)]
    Cluster(ClusterCmd),
}

/// Prints a response: JSON with --json, otherwise readable `key: value` lines and tables.
fn show<T: Serialize>(json: bool, value: &T) -> anyhow::Result<()> {
    let value = serde_json::to_value(value)?;
    if json {
        out!("{}", serde_json::to_string_pretty(&value)?);
    } else {
        render(&value, 0);
    }
    Ok(())
}

fn scalar(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::Null => Some("-".into()),
        serde_json::Value::Bool(b) => Some(b.to_string()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) if o.is_empty() => Some("-".into()),
        // A small object of scalars (resources, labels) reads well inline.
        serde_json::Value::Object(o)
            if o.len() <= 4 && o.values().all(|v| !v.is_object() && !v.is_array()) =>
        {
            Some(
                o.iter()
                    .map(|(k, v)| format!("{k}={}", scalar(v).unwrap_or_default()))
                    .collect::<Vec<_>>()
                    .join(" "),
            )
        }
        serde_json::Value::Array(a) if a.iter().all(|x| !x.is_object() && !x.is_array()) => {
            Some(a.iter().filter_map(scalar).collect::<Vec<_>>().join(", "))
        }
        _ => None,
    }
}

fn render(value: &serde_json::Value, indent: usize) {
    let pad = "  ".repeat(indent);
    match value {
        serde_json::Value::Object(map) => {
            for (key, v) in map {
                match scalar(v) {
                    Some(s) => out!("{pad}{key}: {s}"),
                    None => {
                        out!("{pad}{key}:");
                        render(v, indent + 1);
                    }
                }
            }
        }
        serde_json::Value::Array(items) => table(items, indent),
        other => out!("{pad}{}", scalar(other).unwrap_or_default()),
    }
}

/// Rows of objects as a table of their scalar fields.
fn table(items: &[serde_json::Value], indent: usize) {
    let pad = "  ".repeat(indent);
    let mut columns: Vec<String> = Vec::new();
    for item in items {
        if let serde_json::Value::Object(map) = item {
            for (k, v) in map {
                if scalar(v).is_some() && !columns.contains(k) {
                    columns.push(k.clone());
                }
            }
        }
    }
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|item| {
            columns.iter().map(|c| item.get(c).and_then(scalar).unwrap_or_default()).collect()
        })
        .collect();
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| rows.iter().map(|r| r[i].len()).chain([c.len()]).max().unwrap_or(0))
        .collect();
    let line = |cells: Vec<String>| {
        let text: Vec<String> =
            cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        out!("{pad}{}", text.join("  ").trim_end());
    };
    line(columns.iter().map(|c| c.to_uppercase()).collect());
    for row in rows {
        line(row);
    }
    if items.is_empty() {
        out!("{pad}(none)");
    }
}

/// One readable table row per placement.
fn placement_row(p: &pb::Placement) -> serde_json::Value {
    let spec = p.spec.clone().unwrap_or_default();
    let each = spec.resources.unwrap_or_default();
    serde_json::json!({
        "id": spec.placement_id,
        "instances": spec.count,
        "cpu_each": format!("{}m", each.cpu_millis),
        "memory_each": format!("{}Mi", each.memory_mib),
        "workers": p.workers,
        "kind": if p.expires_at_ms.is_some() { "reservation" } else { "placement" },
        "log_index": p.log_index,
    })
}

/// One readable table row per queued placement.
fn queued_row(q: &pb::QueuedPlacement) -> serde_json::Value {
    let spec = q.spec.clone().unwrap_or_default();
    let each = spec.resources.unwrap_or_default();
    serde_json::json!({
        "id": spec.placement_id,
        "pool": q.pool,
        "position": format!("{}/{}", q.position, q.pool_queued),
        "instances": spec.count,
        "cpu_each": format!("{}m", each.cpu_millis),
        "queued_at_ms": q.queued_at_ms,
        "aged": q.aged,
        "waits_for": q.wait_reason,
    })
}

/// A dry run's decision: where it would go, or why not and each worker's reason.
fn show_decision(placement: &Option<pb::Placement>, d: &pb::PlaceDecision) -> anyhow::Result<()> {
    if d.would_place {
        let workers = placement.as_ref().map(|p| p.workers.join(", ")).unwrap_or_default();
        out!("would place on: {workers}");
    } else {
        out!("would refuse: {} ({})", d.reason, d.message);
        let meta: BTreeMap<_, _> = d.metadata.iter().collect();
        for (k, v) in meta {
            out!("  {k}: {v}");
        }
    }
    for e in &d.quota_events {
        out!("quota event: {:?} tenant={} {}", e.kind(), e.tenant_id, e.grace_ends_at_ms);
    }
    if !d.workers.is_empty() {
        let rows: Vec<serde_json::Value> = d
            .workers
            .iter()
            .map(|w| serde_json::json!({"worker": w.worker_id, "reason": w.reason}))
            .collect();
        show(false, &rows)?;
    }
    Ok(())
}

fn page(after: Option<String>, limit: u32) -> Option<pb::Page> {
    Some(pb::Page { after: after.unwrap_or_default(), limit })
}

/// Runs one client subcommand.
pub async fn run(connection: Connection, command: ClientCmd) -> anyhow::Result<()> {
    let options = ClientOptions {
        deadline: std::time::Duration::from_millis(connection.timeout_ms),
        ..Default::default()
    };
    let client = connection.client(options)?;
    let rid = connection.request_id.clone().unwrap_or_else(new_request_id);
    let json = connection.json;
    let c = &client;
    macro_rules! call {
        ($svc:ident, $method:ident, $msg:expr) => {
            c.call($msg, |ch, req| async move { client::$svc(ch).$method(req).await })
                .await
                .map_err(|s| anyhow::anyhow!(describe(&s)))?
        };
    }
    // Read-modify-write of a tenant's quota as set: `edit` changes one part, the rest is kept.
    // Run one quota change at a time.
    macro_rules! edit_quota {
        ($tenant:ident, |$quota:ident| $edit:block) => {{
            let current = call!(
                tenants,
                get_quota,
                pb::GetQuotaRequest { tenant_id: $tenant.clone(), read: None }
            );
            let mut $quota = current.quota.unwrap_or_default();
            $edit
            let m = pb::SetQuotaRequest { request_id: rid, tenant_id: $tenant, quota: Some($quota) };
            show(json, &call!(tenants, set_quota, m))
        }};
    }
    match command {
        ClientCmd::Tenant(cmd) => match cmd {
            TenantCmd::Create { id, parent, weight } => {
                let m = pb::CreateTenantRequest {
                    request_id: rid,
                    tenant_id: id,
                    parent_id: parent.unwrap_or_default(),
                    weight,
                };
                show(json, &call!(tenants, create_tenant, m))
            }
            TenantCmd::Get { id } => show(
                json,
                &call!(tenants, get_tenant, pb::GetTenantRequest { tenant_id: id, read: None }),
            ),
            TenantCmd::List { after, limit } => {
                let r = call!(
                    tenants,
                    list_tenants,
                    pb::ListTenantsRequest { page: page(after, limit), read: None }
                );
                show(json, &r.tenants)
            }
            TenantCmd::Delete { id } => show(
                json,
                &call!(
                    tenants,
                    delete_tenant,
                    pb::DeleteTenantRequest { request_id: rid, tenant_id: id }
                ),
            ),
        },
        ClientCmd::Quota(cmd) => match (matches!(cmd, QuotaCmd::Deny { .. }), cmd) {
            (_, QuotaCmd::Set { tenant, pool, cpu, memory_mib, instances, jobs }) => {
                let limits = pb::Limits { cpu_millis: cpu, memory_mib, instances, jobs };
                edit_quota!(tenant, |quota| {
                    match pool {
                        Some(pool) => {
                            quota.pools.insert(pool, limits);
                        }
                        None => quota.total = Some(limits),
                    }
                })
            }
            (
                _,
                QuotaCmd::Soft {
                    tenant,
                    cpu,
                    memory_mib,
                    instances,
                    jobs,
                    grace_ms,
                    share_of_pool,
                    share,
                },
            ) => {
                edit_quota!(tenant, |quota| {
                    quota.soft =
                        Some(pb::SoftLimits { cpu_millis: cpu, memory_mib, instances, jobs });
                    quota.grace_ms = grace_ms;
                    quota.soft_share = share_of_pool.zip(share).map(|(pool, l)| pb::SoftShare {
                        pool,
                        soft_per_mille: u32::try_from(l.soft).unwrap_or(u32::MAX),
                        burst_per_mille: u32::try_from(l.burst).unwrap_or(u32::MAX),
                    });
                })
            }
            (_, QuotaCmd::Window { tenant, jobs_per_day, cpu_hours_per_month, when_exhausted }) => {
                edit_quota!(tenant, |quota| {
                    let policy = if when_exhausted == "refuse" {
                        pb::window_limits::Policy::Refuse
                    } else {
                        pb::window_limits::Policy::Queue
                    };
                    quota.windows = Some(pb::WindowLimits {
                        jobs_per_day,
                        cpu_milli_ms_per_month: cpu_hours_per_month,
                        when_exhausted: policy.into(),
                    });
                })
            }
            (deny, QuotaCmd::Deny { tenant, pool } | QuotaCmd::Allow { tenant, pool }) => {
                edit_quota!(tenant, |quota| {
                    quota.denied_pools.retain(|p| *p != pool);
                    if deny {
                        quota.denied_pools.push(pool);
                    }
                })
            }
            (_, QuotaCmd::Preemption { tenant, policy }) => {
                edit_quota!(tenant, |quota| {
                    quota.preemption = match policy.as_str() {
                        "never" => Some(pb::Preemption::Never.into()),
                        "same-tenant" => Some(pb::Preemption::SameTenant.into()),
                        "any-tenant" => Some(pb::Preemption::AnyTenant.into()),
                        _ => None,
                    };
                })
            }
            (_, QuotaCmd::Guarantee { tenant, pool, share, remove }) => {
                edit_quota!(tenant, |quota| {
                    if remove {
                        quota.guarantees.remove(&pool);
                    } else {
                        let g = share.guarantee();
                        quota.guarantees.insert(pool, g);
                    }
                })
            }
            (_, QuotaCmd::Get { tenant }) => show(
                json,
                &call!(tenants, get_quota, pb::GetQuotaRequest { tenant_id: tenant, read: None }),
            ),
        },
        ClientCmd::Token(cmd) => match cmd {
            TokenCmd::Issue { tenant, name, expires_in } => {
                let m = pb::IssueTokenRequest {
                    request_id: rid,
                    tenant_id: tenant,
                    token_name: name,
                    ttl_ms: expires_in.unwrap_or(0),
                };
                show(json, &call!(tenants, issue_token, m))
            }
            TokenCmd::Revoke { tenant, name } => {
                let m =
                    pb::RevokeTokenRequest { request_id: rid, tenant_id: tenant, token_name: name };
                show(json, &call!(tenants, revoke_token, m))
            }
        },
        ClientCmd::Worker(cmd) => match cmd {
            WorkerCmd::Register { id, size, pool, labels } => {
                let m = pb::RegisterWorkerRequest {
                    request_id: rid,
                    worker_id: id,
                    pool: pool.unwrap_or_default(),
                    capacity: Some(pb::Resources {
                        cpu_millis: size.cpu,
                        memory_mib: size.memory_mib,
                    }),
                    labels: labels.into_iter().collect::<BTreeMap<_, _>>(),
                };
                show(json, &call!(workers, register_worker, m))
            }
            WorkerCmd::Get { id } => show(
                json,
                &call!(workers, get_worker, pb::GetWorkerRequest { worker_id: id, read: None }),
            ),
            WorkerCmd::List { pool, after, limit } => {
                let m = pb::ListWorkersRequest {
                    pool: pool.unwrap_or_default(),
                    page: page(after, limit),
                    read: None,
                };
                show(json, &call!(workers, list_workers, m).workers)
            }
            WorkerCmd::Drain { id } => show(
                json,
                &call!(
                    workers,
                    drain_worker,
                    pb::DrainWorkerRequest { request_id: rid, worker_id: id, drain: true }
                ),
            ),
            WorkerCmd::Undrain { id } => show(
                json,
                &call!(
                    workers,
                    drain_worker,
                    pb::DrainWorkerRequest { request_id: rid, worker_id: id, drain: false }
                ),
            ),
            WorkerCmd::Remove { id, evict } => show(
                json,
                &call!(
                    workers,
                    remove_worker,
                    pb::RemoveWorkerRequest { request_id: rid, worker_id: id, evict }
                ),
            ),
        },
        ClientCmd::Pool(cmd) => match cmd {
            PoolCmd::Reserve { pool, cpu, memory_mib, remove } => {
                let m = pb::SetPoolReserveRequest {
                    request_id: rid,
                    pool,
                    reserve: Some(pb::Resources {
                        cpu_millis: cpu.unwrap_or_default(),
                        memory_mib: memory_mib.unwrap_or_default(),
                    }),
                    remove,
                };
                show(json, &call!(workers, set_pool_reserve, m))
            }
            PoolCmd::Get { pool } => {
                let r = call!(workers, get_pool, pb::GetPoolRequest { pool, read: None });
                show(json, &r.pool)
            }
        },
        ClientCmd::Place { workload: w, dry_run, queue } => {
            let m = pb::PlaceRequest {
                request_id: rid,
                tenant_id: w.tenant.clone(),
                spec: Some(w.spec()),
                fence: w.fence.clone(),
                dry_run,
                queue_if_unavailable: queue,
            };
            let r = call!(scheduler, place, m);
            match r.decision {
                Some(d) if !json => show_decision(&r.placement, &d),
                _ => show(json, &r),
            }
        }
        ClientCmd::Release { tenant, id, fence } => show(
            json,
            &call!(
                scheduler,
                release,
                pb::ReleaseRequest { request_id: rid, tenant_id: tenant, placement_id: id, fence }
            ),
        ),
        ClientCmd::Placement(cmd) => match cmd {
            PlacementCmd::Get { tenant, id } => {
                let m = pb::GetPlacementRequest { tenant_id: tenant, placement_id: id, read: None };
                show(json, &call!(scheduler, get_placement, m))
            }
            PlacementCmd::List { tenant, after, limit } => {
                let m = pb::ListPlacementsRequest {
                    tenant_id: tenant,
                    page: page(after, limit),
                    read: None,
                };
                let r = call!(scheduler, list_placements, m);
                if json {
                    return show(true, &r.placements);
                }
                let rows: Vec<serde_json::Value> = r.placements.iter().map(placement_row).collect();
                show(false, &rows)
            }
        },
        ClientCmd::Queue(cmd) => match cmd {
            QueueCmd::List { tenant, after, limit } => {
                let m = pb::ListQueueRequest {
                    tenant_id: tenant,
                    page: page(after, limit),
                    read: None,
                };
                let r = call!(scheduler, list_queue, m);
                if json {
                    return show(true, &r.queued);
                }
                let rows: Vec<serde_json::Value> = r.queued.iter().map(queued_row).collect();
                show(false, &rows)
            }
            QueueCmd::Cancel { tenant, id } => {
                let m = pb::CancelQueuedRequest {
                    request_id: rid,
                    tenant_id: tenant,
                    placement_id: id,
                };
                show(json, &call!(scheduler, cancel_queued, m))
            }
        },
        ClientCmd::Reserve { workload, ttl_ms } => {
            let m = pb::ReserveRequest {
                request_id: rid,
                tenant_id: workload.tenant.clone(),
                spec: Some(workload.spec()),
                ttl_ms,
                fence: workload.fence.clone(),
            };
            show(json, &call!(scheduler, reserve, m))
        }
        ClientCmd::Confirm { tenant, id, fence } => {
            let m = pb::ConfirmReservationRequest {
                request_id: rid,
                tenant_id: tenant,
                reservation_id: id,
                fence,
            };
            show(json, &call!(scheduler, confirm_reservation, m))
        }
        ClientCmd::Cancel { tenant, id, fence } => {
            let m = pb::CancelReservationRequest {
                request_id: rid,
                tenant_id: tenant,
                reservation_id: id,
                fence,
            };
            show(json, &call!(scheduler, cancel_reservation, m))
        }
        ClientCmd::Group(GroupCmd::Create { tenant, group, max_instances, pack }) => {
            let strategy =
                if pack { pb::GroupStrategy::Pack } else { pb::GroupStrategy::Spread }.into();
            let m = pb::CreatePlacementGroupRequest {
                request_id: rid,
                tenant_id: tenant,
                group,
                max_instances,
                strategy,
            };
            show(json, &call!(scheduler, create_placement_group, m))
        }
        ClientCmd::Lease(cmd) => match cmd {
            LeaseCmd::Acquire { tenant, name, holder, ttl_ms } => {
                let m =
                    pb::AcquireRequest { request_id: rid, tenant_id: tenant, name, holder, ttl_ms };
                show(json, &call!(leases, acquire, m))
            }
            LeaseCmd::Keepalive { tenant, name, token } => {
                let m = pb::KeepAliveRequest { request_id: rid, tenant_id: tenant, name, token };
                show(json, &call!(leases, keep_alive, m))
            }
            LeaseCmd::Release { tenant, name, token } => {
                let m = pb::ReleaseLeaseRequest { request_id: rid, tenant_id: tenant, name, token };
                show(json, &call!(leases, release, m))
            }
            LeaseCmd::Get { tenant, name } => show(
                json,
                &call!(
                    leases,
                    get_lease,
                    pb::GetLeaseRequest { tenant_id: tenant, name, read: None }
                ),
            ),
        },
        ClientCmd::Cost(CostCmd::Allocate { total, weights }) => {
            let r = call!(
                billing,
                allocate_shared_cost,
                pb::AllocateSharedCostRequest { total, weights }
            );
            show(json, &r)
        }
        ClientCmd::Cluster(cmd) => match cmd {
            ClusterCmd::Status => {
                let r = call!(cluster, status, pb::StatusRequest {});
                if json {
                    show(true, &r)
                } else {
                    out!(
                        "leader: {}  term: {}",
                        r.leader_id.map(|l| l.to_string()).unwrap_or("-".into()),
                        r.term
                    );
                    show(false, &r.replicas)
                }
            }
            ClusterCmd::Add { id, peer_address } => show(
                json,
                &call!(
                    cluster,
                    add_replica,
                    pb::AddReplicaRequest { replica_id: id, peer_address }
                ),
            ),
            ClusterCmd::Remove { id } => show(
                json,
                &call!(cluster, remove_replica, pb::RemoveReplicaRequest { replica_id: id }),
            ),
        },
    }
}

/// A status as one readable line: code, message, reason and metadata.
pub fn describe(status: &tonic::Status) -> String {
    use tonic_types::StatusExt;
    let mut text = format!("{:?}: {}", status.code(), status.message());
    if let Some(info) = status.get_details_error_info() {
        text.push_str(&format!(" [{}", info.reason));
        let mut meta: Vec<_> = info.metadata.iter().collect();
        meta.sort();
        for (k, v) in meta {
            text.push_str(&format!(" {k}={v}"));
        }
        text.push(']');
    }
    text
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
