//! The audit chain in the core: every command a client sent is a record (accepted, refused or
//! replayed; never ticks), chained by hash from the head the scheduler keeps, which snapshots
//! carry; a changed record no longer verifies; hostile strings are cut short.

use berth::scheduler::audit::verify;
use berth::scheduler::testing::T0;
use berth::scheduler::*;

mod core_harness;
use core_harness::Log;

const HASH: TokenHash = TokenHash([9; 32]);

impl Log {
    /// Applies `entry`, returning its record (if audited).
    fn audited(&mut self, entry: Entry) -> Option<AuditRecord> {
        self.apply_entry(entry).audit.map(|r| *r)
    }
}

#[test]
fn every_sent_command_is_chained_with_who_and_the_outcome() {
    let mut log = Log::new();
    log.now = T0;
    let mut records = Vec::new();
    let mut run = |log: &mut Log, command: Command, token: Option<TokenHash>, id: &str| {
        let mut entry = log.entry(command);
        entry.token = token;
        entry.request_id = Some(RequestId::new(id));
        let record = log.audited(entry).expect("audited");
        records.push(record.clone());
        record
    };
    let created = run(
        &mut log,
        Command::CreateTenant { tenant: "acme".into(), parent: None, weight: 1 },
        None,
        "c",
    );
    assert_eq!((created.seq, created.prev), (1, [0; 32]));
    assert_eq!((created.actor.as_str(), created.outcome.as_str()), ("admin", "ok"));
    let add =
        Command::AddToken { tenant: "acme".into(), token: "ci".into(), hash: HASH, ttl_ms: 0 };
    run(&mut log, add, None, "t");
    let quota = Quota { total: Limits { jobs: Some(0), ..Limits::default() }, ..Quota::default() };
    run(&mut log, Command::SetQuota { tenant: "acme".into(), quota }, None, "q");
    let lease = |name: &str| Command::AcquireLease {
        tenant: "acme".into(),
        lease: name.into(),
        holder: "me".into(),
        ttl_ms: 1_000,
    };
    let ok = run(&mut log, lease("a"), Some(HASH), "l1");
    assert_eq!(
        (ok.actor.as_str(), ok.tenant.as_str(), ok.command.as_str()),
        ("token:ci", "acme", "AcquireLease a")
    );
    let replay = run(&mut log, lease("a"), Some(HASH), "l1");
    assert_eq!(replay.outcome, "replayed");
    let spec = PlaceSpec {
        placement: "p".into(),
        resources: Resources::new(1, 1),
        count: 1,
        ..PlaceSpec::default()
    };
    let refused = run(
        &mut log,
        Command::Place { tenant: "acme".into(), spec, fence: None },
        Some(HASH),
        "p1",
    );
    assert_eq!(refused.outcome, "QUOTA_EXCEEDED");
    // A token no tenant has: refused, and recorded as such, not as the admin.
    let stranger = run(&mut log, lease("s"), Some(TokenHash([1; 32])), "s1");
    assert_eq!(
        (stranger.actor.as_str(), stranger.outcome.as_str()),
        ("token:unknown", "UNAUTHENTICATED")
    );
    // A refused request id sent again is recorded as a replay of its refusal.
    let spec = PlaceSpec {
        placement: "p".into(),
        resources: Resources::new(1, 1),
        count: 1,
        ..PlaceSpec::default()
    };
    let again = run(
        &mut log,
        Command::Place { tenant: "acme".into(), spec, fence: None },
        Some(HASH),
        "p1",
    );
    assert_eq!(again.outcome, "replayed:QUOTA_EXCEEDED");
    // A hostile id is cut short in the record.
    let long = "x".repeat(100_000);
    let bad = run(&mut log, lease(&long), Some(HASH), &long);
    assert!(bad.command.len() < 100 && bad.request_id.len() < 100, "{bad:?}");
    // Ticks are not the clients': no record, and the head stays.
    let head = log.s.audit_head();
    assert!(log.tick().audit.is_none());
    assert_eq!(log.s.audit_head(), head);
    assert_eq!(head, AuditHead { seq: 9, hash: records[8].hash });

    assert_eq!(verify(&records), Ok(()));
    let mut tampered = records.clone();
    tampered[4].outcome = "ok".into();
    assert_eq!(verify(&tampered), Err(5), "a changed record");
    let mut rehashed = tampered.clone();
    rehashed[4].hash = rehashed[4].digest();
    assert_eq!(verify(&rehashed), Err(6), "a re-hashed one breaks the next link");
    let mut missing = records.clone();
    missing.remove(3);
    assert_eq!(verify(&missing), Err(5), "a removed one");

    // The head rides in the snapshot; the chain continues from it after a restore.
    let mut restored = Scheduler::decode(&log.s.encode()).expect("decodes");
    assert_eq!(restored.audit_head(), head);
    let mut entry = log.entry(lease("b"));
    entry.token = Some(HASH);
    let next = restored.apply(entry.clone()).audit.expect("audited");
    assert_eq!(log.audited(entry), Some(*next.clone()));
    assert_eq!((next.seq, next.prev), (10, head.hash));
}
