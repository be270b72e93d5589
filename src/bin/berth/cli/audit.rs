//! `berth audit`: a replica's audit trail as JSON lines (one tenant's, or with the admin token
//! everyone's); `berth audit verify` recomputes every replica's hash chain and checks that
//! the replicas agree.

use berth::api::convert;
use berth::client::{pb, Client, ClientOptions};
use std::collections::BTreeMap;

use berth::scheduler::audit::verify;
use berth::scheduler::AuditRecord;
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
    /// and compare every record with the first replica's at the same seq (admin; give every
    /// endpoint). Exits 1 if a chain breaks or a record differs.
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
    /// Records compared with the first replica's (every seq both hold).
    compared: u64,
    /// Of those, how many differ from the first replica's.
    differ: u64,
}

async fn verify_all(s: &Session, connection: &Connection) -> anyhow::Result<()> {
    let security = connection.security()?;
    let options = ClientOptions {
        deadline: std::time::Duration::from_millis(connection.timeout_ms),
        ..Default::default()
    };
    let mut checked = Vec::new();
    // The first replica's hash at each seq, which every other replica's records are
    // compared with: a record changed on one replica (even re-hashed, with its neighbours
    // removed) differs from the others' at that seq.
    let mut reference: Option<BTreeMap<u64, [u8; 32]>> = None;
    for endpoint in &connection.endpoints {
        let client = Client::new(
            std::slice::from_ref(endpoint),
            connection.token.as_deref(),
            &security,
            options.clone(),
        )?;
        let one = Session { client, request_id: s.request_id(), json: s.json };
        let (c, hashes) = check(&one, endpoint, reference.as_ref()).await?;
        checked.push(c);
        if reference.is_none() {
            reference = Some(hashes);
        }
    }
    let agree = checked.iter().all(|c| c.differ == 0);
    let intact = checked.iter().all(|c| c.broken_at.is_none());
    let compared = checked.iter().skip(1).map(|c| c.compared).min().unwrap_or(0);
    if s.json {
        let report = serde_json::json!({ "replicas": checked, "agree": agree, "intact": intact });
        out!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        crate::output::show(false, &checked)?;
        if checked.len() < 2 {
            out!("one replica: nothing to compare with (give every endpoint)");
        } else if agree {
            out!("replicas agree ({compared} or more records compared on each)");
        } else {
            out!("REPLICAS DIFFER");
        }
        out!("chains: {}", if intact { "intact" } else { "BROKEN" });
    }
    anyhow::ensure!(agree && intact, "the audit trail does not verify");
    Ok(())
}

/// Reads a replica's whole trail, checks its chain and compares it with `reference`; the
/// hash of each of its records when there is no reference yet.
async fn check(
    s: &Session,
    endpoint: &str,
    reference: Option<&BTreeMap<u64, [u8; 32]>>,
) -> anyhow::Result<(Checked, BTreeMap<u64, [u8; 32]>)> {
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
        compared: 0,
        differ: 0,
    };
    let mut hashes = BTreeMap::new();
    let mut last: Option<AuditRecord> = None;
    let mut p = first;
    loop {
        for r in &p.records {
            let record = convert::audit_record(r).map_err(anyhow::Error::msg)?;
            let linked = match &last {
                Some(before) if before.seq.checked_add(1) == Some(record.seq) => {
                    verify(&[before.clone(), record.clone()])
                }
                Some(_) => {
                    c.gaps += 1;
                    verify(std::slice::from_ref(&record))
                }
                None => verify(std::slice::from_ref(&record)),
            };
            if let (Err(seq), None) = (linked, c.broken_at) {
                c.broken_at = Some(seq);
            }
            match reference {
                Some(theirs) => {
                    if let Some(hash) = theirs.get(&record.seq) {
                        c.compared += 1;
                        c.differ += u64::from(*hash != record.hash);
                    }
                }
                None => {
                    hashes.insert(record.seq, record.hash);
                }
            }
            c.records += 1;
            c.last_seq = record.seq;
            last = Some(record);
        }
        if c.records > 0 && c.records % 100_000 == 0 {
            eprintln!("{endpoint}: {} records checked", c.records);
        }
        match p.records.last() {
            Some(r) => p = page(s, "", 0, r.seq).await?,
            None => break,
        }
    }
    Ok((c, hashes))
}
