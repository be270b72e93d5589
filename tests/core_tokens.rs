//! Token expiry in the core: a token issued with a lifetime is refused from the log time it
//! expires at (`TOKEN_EXPIRED`), kept for `EXPIRED_TOKEN_RETENTION_MS` so callers learn why,
//! then forgotten; all in log time, the same on every replica.

use berth::scheduler::*;

use berth::scheduler::testing::T0;
const TENANT: &str = "team";
const HASH: TokenHash = TokenHash([7; 32]);

mod core_harness;
use core_harness::Log;

impl Log {
    /// A tenant, a worker, and a token `ci` with `ttl_ms`, issued at `T0`.
    fn with_token(ttl_ms: u64) -> Log {
        let mut log = Log::new();
        log.admin(T0, Command::CreateTenant { tenant: TENANT.into(), parent: None, weight: 1 });
        log.admin(
            T0,
            Command::RegisterWorker {
                worker: "w1".into(),
                pool: None,
                capacity: Resources::new(4_000, 4_096),
                labels: Labels::new(),
            },
        );
        let added = log.admin(
            T0,
            Command::AddToken { tenant: TENANT.into(), token: "ci".into(), hash: HASH, ttl_ms },
        );
        let expires_at = (ttl_ms > 0).then(|| UnixMillis(T0 + ttl_ms));
        assert_eq!(added.result, Ok(Response::TokenAdded { expires_at }));
        log
    }

    /// The next entry, stamped `at` and carrying `token`.
    fn entry(&mut self, at: u64, command: Command, token: Option<TokenHash>) -> Entry {
        self.now = at;
        Entry { token, ..self.0.entry(command) }
    }

    fn admin(&mut self, at: u64, command: Command) -> Applied {
        let entry = self.entry(at, command, None);
        self.apply_entry(entry)
    }

    /// A Place authorized by the token, at log time `at`.
    fn place_with_token(&mut self, at: u64) -> Applied {
        let id = format!("p{}", self.index);
        let spec = PlaceSpec {
            placement: id.as_str().into(),
            resources: Resources::new(10, 10),
            count: 1,
            ..PlaceSpec::default()
        };
        let command = Command::Place { tenant: TENANT.into(), spec, fence: None };
        let entry = self.entry(at, command, Some(HASH));
        self.apply_entry(entry)
    }

    fn owner(&self) -> Option<(TenantId, TokenId, Token)> {
        match self.s.query(&Query::TokenOwner(HASH)) {
            Answer::TokenOwner(owner) => owner,
            other => panic!("unexpected answer {other:?}"),
        }
    }
}

/// A token with a 1 s lifetime works at 999 ms and is refused at exactly 1,000 ms, with the
/// token's name and expiry in the rejection.
#[test]
fn a_token_expires_at_the_exact_boundary() {
    let mut log = Log::with_token(1_000);
    assert!(log.place_with_token(T0 + 999).result.is_ok(), "valid until its expiry");
    let refused = log.place_with_token(T0 + 1_000).result;
    let expected =
        Rejection::TokenExpired { token: "ci".into(), expired_at: UnixMillis(T0 + 1_000) };
    assert_eq!(refused, Err(expected.clone()));
    assert_eq!(expected.reason(), "TOKEN_EXPIRED");
    assert_eq!(expected.metadata()["expired_at_ms"], (T0 + 1_000).to_string());
    let (_, _, token) = log.owner().expect("an expired token is still known");
    assert!(!token.expired(UnixMillis(T0 + 999)) && token.expired(UnixMillis(T0 + 1_000)));

    // A token without a lifetime never expires, not even at the end of log time.
    let mut forever = Log::with_token(0);
    assert!(forever.place_with_token(UNIX_MILLIS_MAX.0).result.is_ok());
    assert_eq!(forever.s.next_token_purge(), None);
}

/// A write carrying an expired token is refused the same way on every replica and changes
/// nothing: not the state, not the session table (a retry is refused again, not replayed).
#[test]
fn a_write_with_an_expired_token_changes_nothing() {
    let mut replicas = [Log::with_token(1_000), Log::with_token(1_000)];
    let at = T0 + 5_000;
    let mut answers = Vec::new();
    for log in &mut replicas {
        log.admin(at, Command::Tick);
        let before = log.s.state_hash();
        let entry = log.entry(at, Command::Tick, None);
        let place = Entry {
            command: Command::Place {
                tenant: TENANT.into(),
                spec: PlaceSpec {
                    placement: "late".into(),
                    resources: Resources::new(10, 10),
                    count: 1,
                    ..PlaceSpec::default()
                },
                fence: None,
            },
            token: Some(HASH),
            ..entry
        };
        let first = log.apply_entry(place.clone());
        assert_eq!(log.s.state_hash(), before, "the refused write changed the state");
        let retry = log.apply_entry(Entry { index: LogIndex(place.index.0 + 1), ..place });
        assert!(!retry.replayed, "a refusal for the token is not remembered");
        assert_eq!(retry.result, first.result);
        assert_eq!(log.s.state_hash(), before);
        answers.push(first);
    }
    assert_eq!(answers[0], answers[1], "replicas answer alike");
    assert!(matches!(answers[0].result, Err(Rejection::TokenExpired { .. })));
    assert_eq!(replicas[0].s.state_hash(), replicas[1].s.state_hash());
}

/// An expired token is kept (refused as expired) for the retention period, then forgotten by
/// the first entry at or after it (the leader proposes a Tick then): it no longer counts
/// toward the tenant's tokens, and presenting it is plainly unauthenticated.
#[test]
fn expired_tokens_are_forgotten_after_the_retention() {
    let mut log = Log::with_token(1_000);
    let purge = T0 + 1_000 + EXPIRED_TOKEN_RETENTION_MS;
    assert_eq!(log.s.next_token_purge(), Some(UnixMillis(purge)));
    assert_eq!(log.s.next_deadline(), None, "a token's purge does not keep the leader ticking");

    log.admin(purge - 1, Command::Tick);
    assert!(log.owner().is_some(), "kept until the retention ends");
    assert!(matches!(log.place_with_token(purge - 1).result, Err(Rejection::TokenExpired { .. })));
    // The purge survives a snapshot.
    let decoded = Scheduler::decode(&log.s.encode()).expect("snapshot decodes");
    assert_eq!(decoded.next_token_purge(), Some(UnixMillis(purge)));

    log.admin(purge, Command::Tick);
    assert_eq!(log.owner(), None);
    assert!(log.s.state().tenants[&TenantId::from(TENANT)].tokens.is_empty());
    assert_eq!(log.s.next_token_purge(), None);
    assert_eq!(log.place_with_token(purge).result, Err(Rejection::Unauthenticated));
    // The name is free again.
    let reissued = log.admin(
        purge,
        Command::AddToken { tenant: TENANT.into(), token: "ci".into(), hash: HASH, ttl_ms: 0 },
    );
    assert_eq!(reissued.result, Ok(Response::TokenAdded { expires_at: None }));
}

/// Revoking an expiring token, or deleting its tenant, drops its purge with it.
#[test]
fn revoked_and_deleted_tokens_leave_no_purge() {
    let mut log = Log::with_token(60_000);
    let revoked =
        log.admin(T0 + 1, Command::RevokeToken { tenant: TENANT.into(), token: "ci".into() });
    assert_eq!(revoked.result, Ok(Response::TokenRevoked));
    assert_eq!(log.s.next_token_purge(), None);

    let mut log = Log::with_token(60_000);
    log.admin(T0 + 1, Command::DeleteTenant { tenant: TENANT.into() });
    assert_eq!(log.s.next_token_purge(), None);
    assert_eq!(log.owner(), None);
}

/// A lifetime above `TOKEN_TTL_MAX_MS` is refused by `validate` (what the API calls before
/// proposing) and again by `apply`, which then adds nothing; the bound itself is accepted.
#[test]
fn a_lifetime_above_the_bound_is_refused() {
    let command = |ttl_ms| Command::AddToken {
        tenant: TENANT.into(),
        token: "long".into(),
        hash: TokenHash([9; 32]),
        ttl_ms,
    };
    assert_eq!(command(TOKEN_TTL_MAX_MS).validate(), Ok(()));
    for ttl_ms in [TOKEN_TTL_MAX_MS + 1, u64::MAX] {
        let refused = command(ttl_ms).validate().expect_err("above the bound");
        assert_eq!(refused.metadata()["field"], "ttl_ms");

        let mut log = Log::with_token(0);
        let before = log.s.state_hash();
        let applied = log.admin(T0, command(ttl_ms));
        assert_eq!(applied.result, Err(refused));
        assert_eq!(log.s.state_hash(), before);
    }
    let mut log = Log::with_token(0);
    let added = log.admin(T0, command(TOKEN_TTL_MAX_MS));
    let expires_at = Some(UnixMillis(T0 + TOKEN_TTL_MAX_MS));
    assert_eq!(added.result, Ok(Response::TokenAdded { expires_at }));
}
