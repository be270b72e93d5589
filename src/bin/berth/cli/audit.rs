//! `berth audit`: a replica's audit trail as JSON lines (one tenant's, or with the admin token
//! everyone's); `berth audit verify` recomputes every replica's hash chain and checks that
//! the replicas agree.

use berth::api::convert;
use berth::client::{pb, Client, ClientOptions};
use berth::scheduler::audit::verify;
use clap::{Args, Subcommand};

use super::args::parse_duration_ms;
use super::{Connection, Session};

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct AuditArgs {
    #[command(subcommand)]
    verify: Option<AuditCmd>,
    /// Only this tenant's records (a tenant token reads only its own).
    #[arg(long)]
    tenant: Option<String>,
    /// Only records since then: a duration ago (15m, 12h, 7d) or Unix time in ms.
    #[arg(long, value_parser = parse_since)]
    since: Option<Since>,
}

#[derive(Subcommand, Debug)]
pub enum AuditCmd {
    /// Recompute each replica's chain (every record's hash, and its link to the one before)
    /// and check that the replicas hold the same record at the lowest head among them
    /// (admin). Exits 1 if anything does not hold.
    Verify,
}

#[derive(Clone, Copy, Debug)]
enum Since {
    Ago(u64),
    At(u64),
}

fn parse_since(text: &str) -> Result<Since, String> {
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text.parse().map(Since::At).map_err(|_| format!("{text:?} is too large"));
    }
    parse_duration_ms(text).map(Since::Ago)
}

impl Since {
    fn ms(self) -> u64 {
        match self {
            Since::At(ms) => ms,
            Since::Ago(ago) => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
                now.saturating_sub(ago)
            }
        }
    }
}

/// One page after `after_seq`.
async fn page(
    s: &Session,
    tenant: &str,
    since_ms: u64,
    after_seq: u64,
) -> anyhow::Result<pb::GetAuditTrailResponse> {
    let m = pb::GetAuditTrailRequest {
        tenant_id: tenant.to_owned(),
        since_ms,
        after_seq,
        limit: 1_000,
        read: None,
    };
    Ok(call!(s, cluster, get_audit_trail, m))
}

pub async fn run(s: &Session, connection: &Connection, args: AuditArgs) -> anyhow::Result<()> {
    if args.verify.is_some() {
        return verify_all(s, connection).await;
    }
    let tenant = args.tenant.unwrap_or_default();
    let since_ms = args.since.map_or(0, Since::ms);
    let mut after = 0;
    loop {
        let p = page(s, &tenant, since_ms, after).await?;
        for record in &p.records {
            out!("{}", serde_json::to_string(record)?);
        }
        match p.records.last() {
            Some(last) => after = last.seq,
            None => return Ok(()),
        }
    }
}

/// What one replica's trail showed.
#[derive(serde::Serialize)]
struct Checked {
    replica_id: u64,
    endpoint: String,
    records: u64,
    first_seq: u64,
    last_seq: u64,
    /// Runs of records after a gap (a replica that installed a snapshot starts after one).
    gaps: u64,
    head_seq: u64,
    /// The first seq where the chain breaks, if it does.
    broken_at: Option<u64>,
    /// The hash of the record at the seq all replicas are compared at.
    hash_at_compare: Option<String>,
}

async fn verify_all(s: &Session, connection: &Connection) -> anyhow::Result<()> {
    let security = connection.security()?;
    let options = ClientOptions {
        deadline: std::time::Duration::from_millis(connection.timeout_ms),
        ..Default::default()
    };
    let mut checked = Vec::new();
    let mut sessions = Vec::new();
    for endpoint in &connection.endpoints {
        let client = Client::new(
            std::slice::from_ref(endpoint),
            connection.token.as_deref(),
            &security,
            options.clone(),
        )?;
        let one = Session { client, request_id: s.request_id(), json: s.json };
        checked.push(check(&one, endpoint).await?);
        sessions.push(one);
    }
    // Compare at the lowest head: every replica has applied that far.
    let at = checked.iter().map(|c| c.head_seq).min().unwrap_or(0);
    for (c, one) in checked.iter_mut().zip(&sessions) {
        let p = page(one, "", 0, at.saturating_sub(1)).await?;
        c.hash_at_compare = p.records.first().filter(|r| r.seq == at).map(|r| r.hash.clone());
    }
    let hashes: std::collections::BTreeSet<_> =
        checked.iter().filter_map(|c| c.hash_at_compare.clone()).collect();
    let agree = hashes.len() <= 1;
    let intact = checked.iter().all(|c| c.broken_at.is_none());
    if s.json {
        let report = serde_json::json!({
            "replicas": checked, "compared_at_seq": at, "agree": agree, "intact": intact
        });
        out!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        crate::output::show(false, &checked)?;
        out!("compared at seq {at}: {}", if agree { "replicas agree" } else { "REPLICAS DIFFER" });
        out!("chains: {}", if intact { "intact" } else { "BROKEN" });
    }
    anyhow::ensure!(agree && intact, "the audit trail does not verify");
    Ok(())
}

/// Reads a replica's whole trail and checks its chain.
async fn check(s: &Session, endpoint: &str) -> anyhow::Result<Checked> {
    let first = page(s, "", 0, 0).await?;
    let mut c = Checked {
        replica_id: first.replica_id,
        endpoint: endpoint.to_owned(),
        records: 0,
        first_seq: first.first_seq,
        last_seq: 0,
        gaps: 0,
        head_seq: first.head_seq,
        broken_at: None,
        hash_at_compare: None,
    };
    let mut run: Vec<berth::scheduler::AuditRecord> = Vec::new();
    let mut p = first;
    loop {
        for r in &p.records {
            let record = convert::audit_record(r).map_err(anyhow::Error::msg)?;
            if run.last().is_some_and(|last| last.seq.checked_add(1) != Some(record.seq)) {
                c.gaps += 1;
                run.clear();
            }
            if c.broken_at.is_none() {
                run.push(record);
                if let Err(seq) = verify(&run[run.len().saturating_sub(2)..]) {
                    c.broken_at = Some(seq);
                }
                run.drain(..run.len().saturating_sub(1));
            }
            c.records += 1;
            c.last_seq = r.seq;
        }
        if c.records % 100_000 < 1_000 && c.records >= 100_000 {
            eprintln!("{endpoint}: {} records checked", c.records);
        }
        match p.records.last() {
            Some(last) => p = page(s, "", 0, last.seq).await?,
            None => break,
        }
    }
    Ok(c)
}
