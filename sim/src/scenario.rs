//! Named scenarios: a fixed story played out by dedicated clients while the random workload
//! runs in the background, and a check that the story happened exactly as told (not only that
//! nothing was violated).
//!
//! **lease-expiry** (lock TTL expiry under partition): the holder acquires a lease and writes
//! to the guarded resource with its token; it is then partitioned from every replica, its
//! keep-alive gets no answer, the lease expires in log time and is granted to a rival, who
//! writes with the new token; when the old holder comes back, its fenced write (and its
//! keep-alive) with the old token is refused with `STALE_FENCING_TOKEN`. Some seeds also
//! isolate the leader while the holder is away, so the grant comes from a new leader (which
//! extends live leases by the grace period first).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use berth::client::ClientSecurity;
use serde::Serialize;

use crate::cluster::{api_client, host, now_ms, Params, Slot};
use crate::history::{Fenced, Op, OpKind, Outcome};
use crate::ops::{acquire, keep_alive, place, Recorder};
use berth_rng::Rng;

/// The tenant whose lease guards the resource; it has no quota and a worker of its own size.
pub const GUARDED: &str = "guarded";
pub const LEASE: &str = "guard";
/// History client ids of the holder and the rival.
pub const HOLDER: u32 = 101;
pub const RIVAL: u32 = 102;
/// How long the rival keeps trying to acquire (the lease TTL, plus a grace period after a
/// leader change, plus elections).
const RIVAL_PATIENCE: Duration = Duration::from_secs(40);

/// Named scenarios (`--scenario`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// Random workload under random faults (the default).
    Faults,
    /// Lock TTL expiry under partition (see the module header).
    LeaseExpiry,
    /// The fairness benchmark through the cluster, under the random faults (`fairness.rs`).
    Fairness,
    /// A linearizable read from a leader that survived a crash of every replica, before its
    /// peers are back (`restart.rs`).
    RestartRead,
    /// Workers that live and die: agents as hosts that crash, pause and are partitioned
    /// (`fleet.rs`).
    Fleet,
    /// Workers heartbeating through a leader cut off from its followers stay up (`cut.rs`).
    LeaderCut,
}

impl std::str::FromStr for Scenario {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "faults" => Ok(Scenario::Faults),
            "lease-expiry" => Ok(Scenario::LeaseExpiry),
            "fairness" => Ok(Scenario::Fairness),
            "restart-read" => Ok(Scenario::RestartRead),
            "fleet" => Ok(Scenario::Fleet),
            "leader-cut" => Ok(Scenario::LeaderCut),
            other => Err(format!(
                "unknown scenario {other:?} (faults, lease-expiry, fairness, restart-read, fleet, leader-cut)"
            )),
        }
    }
}

/// Where the story is: the holder and the rival take turns.
const START: u64 = 0;
const HOLDER_AWAY: u64 = 1;
const RIVAL_DONE: u64 = 2;

async fn wait_for(step: &AtomicU64, at_least: u64) {
    while step.load(Ordering::SeqCst) < at_least {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn fence(token: u64) -> Option<Fenced> {
    Some(Fenced { lease: LEASE.into(), token })
}

/// The holder's part: acquire, write, be cut off, come back and try the old token.
pub(crate) async fn holder(
    params: Params,
    tls: ClientSecurity,
    rec: Recorder,
    step: Arc<AtomicU64>,
    ttl_ms: u64,
) -> Result<(), String> {
    let c = api_client(params.replicas, &tls, Duration::from_secs(10))?;
    wait_for(&step, START).await;
    let mut token = None;
    for attempt in 0..20 {
        let outcome = acquire(
            &c,
            &rec,
            format!("holder-acquire-{attempt}"),
            GUARDED,
            LEASE,
            "holder",
            ttl_ms,
        )
        .await;
        if let Outcome::Ok { lease: Some(seen), .. } = outcome {
            token = Some(seen.token);
            break;
        }
    }
    let token = token.ok_or("the holder never got the lease")?;
    place(&c, &rec, "holder-write-1".into(), GUARDED, "guard-a1", 1, fence(token)).await;
    for id in 1..=params.replicas {
        turmoil::partition("holder", host(id));
    }
    step.store(HOLDER_AWAY, Ordering::SeqCst);
    let cut_off = api_client(params.replicas, &tls, Duration::from_secs(1))?;
    keep_alive(&cut_off, &rec, "holder-keepalive-1".into(), GUARDED, LEASE, token).await;
    wait_for(&step, RIVAL_DONE).await;
    for id in 1..=params.replicas {
        turmoil::repair("holder", host(id));
    }
    // Back, on fresh connections (the old ones stalled when the partition dropped them).
    let back = api_client(params.replicas, &tls, Duration::from_secs(10))?;
    place(&back, &rec, "holder-write-2".into(), GUARDED, "guard-a2", 1, fence(token)).await;
    keep_alive(&back, &rec, "holder-keepalive-2".into(), GUARDED, LEASE, token).await;
    Ok(())
}

/// The rival's part: wait for the holder to vanish, maybe isolate the leader, acquire until
/// granted, write with the new token.
pub(crate) async fn rival(
    params: Params,
    tls: ClientSecurity,
    rec: Recorder,
    step: Arc<AtomicU64>,
    slots: Vec<Slot>,
    seed: u64,
) -> Result<(), String> {
    let mut rng = Rng::new(seed ^ 0x5CE4_A210);
    let c = api_client(params.replicas, &tls, Duration::from_secs(5))?;
    wait_for(&step, HOLDER_AWAY).await;
    let mut isolate_leader = rng.below(2) == 0;
    let until = now_ms() + u64::try_from(RIVAL_PATIENCE.as_millis()).unwrap_or(u64::MAX);
    let mut token = None;
    let mut attempt = 0;
    while token.is_none() && now_ms() < until {
        attempt += 1;
        let outcome =
            acquire(&c, &rec, format!("rival-acquire-{attempt}"), GUARDED, LEASE, "rival", 5_000)
                .await;
        match outcome {
            Outcome::Ok { lease: Some(seen), .. } => token = Some(seen.token),
            _ => tokio::time::sleep(Duration::from_millis(rng.between(50, 250))).await,
        }
        if isolate_leader && token.is_none() {
            // Once refused, make the grant come from a new leader.
            isolate_leader = false;
            let leader = crate::nemesis::leader(&slots).unwrap_or(1);
            let others: Vec<u64> = (1..=params.replicas).filter(|o| *o != leader).collect();
            for o in &others {
                turmoil::partition(host(leader), host(*o));
            }
            tracing::info!(leader, "scenario: isolating the leader while the holder is away");
            tokio::time::sleep(Duration::from_millis(rng.between(800, 2_000))).await;
            for o in &others {
                turmoil::repair(host(leader), host(*o));
            }
        }
    }
    if let Some(token) = token {
        place(&c, &rec, "rival-write-1".into(), GUARDED, "guard-b1", 1, fence(token)).await;
    }
    step.store(RIVAL_DONE, Ordering::SeqCst);
    Ok(())
}

/// One acknowledged lease answer of `client` for the guard lease: (token, log time, expiry).
fn granted(history: &[Op], client: u32) -> Option<(&Op, u64, u64, u64)> {
    history.iter().find_map(|op| match (&op.kind, &op.outcome) {
        (OpKind::Acquire { lease, .. }, Outcome::Ok { lease: Some(seen), .. })
            if op.client == client && lease == LEASE =>
        {
            Some((op, seen.token, seen.at_ms, seen.expires_at_ms))
        }
        _ => None,
    })
}

fn fenced_write<'a>(history: &'a [Op], client: u32, placement: &str) -> Option<&'a Op> {
    history.iter().find(|op| {
        op.client == client
            && matches!(&op.kind, OpKind::Place { placement: p, fence: Some(_), .. } if p == placement)
    })
}

/// Checks that the lease-expiry story happened exactly: returns the steps as seen, or what
/// is missing.
pub fn verify_lease_expiry(history: &[Op]) -> Result<Vec<String>, String> {
    let mut steps = Vec::new();
    let (_, token_a, at_a, expires_a) =
        granted(history, HOLDER).ok_or("the holder was never granted the lease")?;
    steps.push(format!(
        "holder granted token {token_a} at log time {at_a}, expiring at {expires_a}"
    ));
    let write_a = fenced_write(history, HOLDER, "guard-a1").ok_or("no first holder write")?;
    if !matches!(write_a.outcome, Outcome::Ok { .. }) {
        return Err(format!("the holder's first fenced write was not accepted: {write_a:?}"));
    }
    steps.push(format!("holder's fenced write with token {token_a} accepted"));
    let kept = history.iter().find(|op| {
        op.client == HOLDER
            && matches!(op.kind, OpKind::KeepAlive { .. })
            && op.invoke_ms >= write_a.complete_ms
    });
    match kept.map(|op| &op.outcome) {
        Some(Outcome::Info { .. }) => {
            steps.push("holder partitioned: keep-alive unanswered".into())
        }
        other => {
            return Err(format!("the partitioned holder's keep-alive was answered: {other:?}"))
        }
    }
    let (grant_b, token_b, at_b, _) =
        granted(history, RIVAL).ok_or("the rival was never granted the lease")?;
    if token_b <= token_a {
        return Err(format!("the rival's token {token_b} is not above the holder's {token_a}"));
    }
    if at_b < expires_a {
        return Err(format!(
            "the rival was granted at log time {at_b}, before the holder's lease expired at {expires_a}"
        ));
    }
    let refused = history
        .iter()
        .filter(|op| op.client == RIVAL && matches!(op.kind, OpKind::Acquire { .. }))
        .filter(|op| matches!(&op.outcome, Outcome::Fail { reason } if reason == "LEASE_HELD"))
        .count();
    if refused == 0 {
        return Err("the rival was never refused LEASE_HELD: the lease had expired already".into());
    }
    steps.push(format!(
        "lease expired in log time; rival granted token {token_b} at log time {at_b} (after {refused} LEASE_HELD)"
    ));
    let write_b = fenced_write(history, RIVAL, "guard-b1").ok_or("no rival write")?;
    if !matches!(write_b.outcome, Outcome::Ok { .. }) {
        return Err(format!("the rival's fenced write was not accepted: {write_b:?}"));
    }
    steps.push(format!("rival's fenced write with token {token_b} accepted"));
    let stale = fenced_write(history, HOLDER, "guard-a2").ok_or("the holder never came back")?;
    if stale.invoke_ms < grant_b.complete_ms {
        return Err("the holder came back before the rival's grant".into());
    }
    match &stale.outcome {
        Outcome::Fail { reason } if reason == "STALE_FENCING_TOKEN" => {}
        other => {
            return Err(format!(
                "the returning holder's fenced write with token {token_a} was not refused as stale: {other:?}"
            ))
        }
    }
    let kept = history
        .iter()
        .rev()
        .find(|op| op.client == HOLDER && matches!(op.kind, OpKind::KeepAlive { .. }));
    match kept.map(|op| &op.outcome) {
        Some(Outcome::Fail { reason }) if reason == "STALE_FENCING_TOKEN" => {}
        other => {
            return Err(format!(
                "the returning holder's keep-alive was not refused as stale: {other:?}"
            ))
        }
    }
    steps.push(format!(
        "holder back: fenced write and keep-alive with token {token_a} refused STALE_FENCING_TOKEN"
    ));
    Ok(steps)
}
