//! The replicated objects. Everything here is encoded into snapshots and hashed; the derived
//! lookup structures live in `index.rs` and are rebuilt from this on decode.

use hashbrown::hash_table::{self, HashTable};
use serde::{Deserialize, Serialize};
use std::cmp::Reverse;
use std::collections::hash_map::{DefaultHasher, RandomState};
use std::collections::{BTreeMap, BTreeSet};
use std::hash::{BuildHasher, BuildHasherDefault};

use super::budget::BudgetState;
use super::command::{Applied, PlaceSpec, Rejection};
use super::ids::{
    GroupId, LeaseName, LogIndex, PlacementId, PlanId, PoolId, RequestId, TenantId, TokenHash,
    TokenId, UnixMillis, WorkerId,
};
use super::invoice::Invoices;
use super::meter::{Meter, PricePlan};
use super::policy::PolicyHistory;
use super::queue::QueuedPlacement;
use super::quota::{Burst, Quota, UsageTotals};
use super::rates::RateState;
use super::resources::{Labels, Resources};
use super::windows::{WindowCounters, DAY_MS, HOUR_MS};

/// The placement algorithm this build implements. A change to how workers are chosen gets a
/// new version, switched on by `SetConfig` once every replica runs a build that knows it, so
/// replicas of mixed versions never decide differently.
pub const PLACEMENT_ALGORITHM: u32 = 1;
/// Longest `Config::lease_grace_ms`: 10 minutes.
pub const LEASE_GRACE_MAX_MS: u64 = 600_000;
/// Largest `Config::sessions_max`.
pub const SESSIONS_MAX: u64 = 10_000_000;
/// Largest `Config::preferred_scan_max`.
pub const PREFERRED_SCAN_MAX: u32 = 10_000;
/// Longest the usage store keeps raw usage changes: 90 days.
pub const USAGE_RAW_RETENTION_MAX_MS: u64 = 90 * DAY_MS;
/// Longest it keeps hourly roll-ups: 400 days.
pub const USAGE_HOURLY_RETENTION_MAX_MS: u64 = 400 * DAY_MS;
/// Longest it keeps daily roll-ups: 10 years of 366 days.
pub const USAGE_DAILY_RETENTION_MAX_MS: u64 = 3_660 * DAY_MS;

/// How long each replica's usage store (`crate::usage`) keeps each series, in log time. Part
/// of the replicated config so every replica prunes the same history at the same entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageRetention {
    /// Raw changes (any step): at least an hour, at most `USAGE_RAW_RETENTION_MAX_MS`.
    pub raw_ms: u64,
    /// Hourly roll-ups: at least `raw_ms`, at most `USAGE_HOURLY_RETENTION_MAX_MS`.
    pub hourly_ms: u64,
    /// Daily roll-ups: at least `hourly_ms`, at most `USAGE_DAILY_RETENTION_MAX_MS`.
    pub daily_ms: u64,
}

impl Default for UsageRetention {
    fn default() -> Self {
        UsageRetention { raw_ms: 7 * DAY_MS, hourly_ms: 92 * DAY_MS, daily_ms: 1_098 * DAY_MS }
    }
}

impl UsageRetention {
    fn validate(&self) -> Result<(), Rejection> {
        let bounds = [
            ("usage_retention.raw_ms", self.raw_ms, HOUR_MS, USAGE_RAW_RETENTION_MAX_MS),
            (
                "usage_retention.hourly_ms",
                self.hourly_ms,
                self.raw_ms,
                USAGE_HOURLY_RETENTION_MAX_MS,
            ),
            (
                "usage_retention.daily_ms",
                self.daily_ms,
                self.hourly_ms,
                USAGE_DAILY_RETENTION_MAX_MS,
            ),
        ];
        for (field, value, min, max) in bounds {
            if !(min..=max).contains(&value) {
                return Err(Rejection::invalid(field, format!("must be {min}..={max} ms")));
            }
        }
        Ok(())
    }
}

/// Tunables that are part of replicated state, so every replica uses the same values. They
/// change only through `Command::SetConfig`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    /// Which placement algorithm `apply` runs (only `PLACEMENT_ALGORITHM` in this build).
    pub placement_algorithm: u32,
    /// Minimum lease life left after a leader change (≥ election timeout + max clock offset).
    pub lease_grace_ms: u64,
    /// Client-session entries kept for exactly-once replies; the oldest are evicted first.
    pub sessions_max: u64,
    /// How many further feasible workers a placement with preferred rules ranks after the
    /// first feasible one (Nomad's limit iterator). Required rules are always searched fully.
    pub preferred_scan_max: u32,
    /// How long each replica's usage store keeps its history.
    pub usage_retention: UsageRetention,
}

impl Config {
    /// Checks every value against its bound (state-free; part of `Command::validate`).
    pub fn validate(&self) -> Result<(), Rejection> {
        if self.placement_algorithm != PLACEMENT_ALGORITHM {
            return Err(Rejection::invalid(
                "placement_algorithm",
                format!(
                    "this build implements version {PLACEMENT_ALGORITHM}, not {}",
                    self.placement_algorithm
                ),
            ));
        }
        if self.lease_grace_ms > LEASE_GRACE_MAX_MS {
            return Err(Rejection::invalid(
                "lease_grace_ms",
                format!("must be at most {LEASE_GRACE_MAX_MS}"),
            ));
        }
        if !(1..=SESSIONS_MAX).contains(&self.sessions_max) {
            return Err(Rejection::invalid("sessions_max", format!("must be 1..={SESSIONS_MAX}")));
        }
        if self.preferred_scan_max > PREFERRED_SCAN_MAX {
            return Err(Rejection::invalid(
                "preferred_scan_max",
                format!("must be at most {PREFERRED_SCAN_MAX}"),
            ));
        }
        self.usage_retention.validate()
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            placement_algorithm: PLACEMENT_ALGORITHM,
            lease_grace_ms: 5_000,
            sessions_max: 100_000,
            preferred_scan_max: 64,
            usage_retention: UsageRetention::default(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Worker {
    pub id: WorkerId,
    pub pool: PoolId,
    pub capacity: Resources,
    /// Sum of every live placement and reservation instance on this worker (invariant 5).
    pub allocated: Resources,
    pub labels: Labels,
    /// False while drained/cordoned: no new placement or reservation lands here.
    pub schedulable: bool,
    pub registered_at: UnixMillis,
    /// `None` until its first heartbeat: a worker nobody heartbeats (registered by hand) never
    /// goes down. `Some` once managed, kept while down (its last heartbeat's view).
    pub liveness: Option<Liveness>,
    /// `Some` while down (its TTL passed): it accepts no work, holds nothing, and its capacity
    /// is out of its pool's. Separate from draining (`schedulable`).
    pub down_since: Option<UnixMillis>,
    /// The index at which it last became ready: its registration, or the heartbeat that
    /// revived it. An agent that sees it change knows everything it ran was taken away.
    pub generation: LogIndex,
    /// Its latest state changes, oldest first (at most `WORKER_HISTORY_MAX`).
    pub history: Vec<WorkerTransition>,
}

/// A change of a worker's state, at a log time and index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerTransition {
    pub at: UnixMillis,
    pub index: LogIndex,
    pub state: WorkerState,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum WorkerState {
    Registered,
    /// Its TTL passed.
    Down,
    /// A heartbeat brought it back after down.
    Revived,
    Drained,
    Undrained,
}

/// A managed worker's heartbeat state (log time).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Liveness {
    /// The TTL its last heartbeat was given (its pool's at that time).
    pub ttl_ms: u64,
    /// It goes down when log time reaches this without another heartbeat (a deadline while
    /// it is ready; a new leader lifts it to its grace floor, as for leases).
    pub alive_until: UnixMillis,
    pub last_heartbeat: UnixMillis,
}

impl Worker {
    /// Records a state change, forgetting the oldest beyond `WORKER_HISTORY_MAX`.
    pub fn record(&mut self, at: UnixMillis, index: LogIndex, state: WorkerState) {
        self.history.push(WorkerTransition { at, index, state });
        let excess = self.history.len().saturating_sub(super::WORKER_HISTORY_MAX);
        self.history.drain(..excess);
    }

    /// Whether new placements and reservations may land here: not drained and not down.
    pub fn accepts_work(&self) -> bool {
        self.schedulable && self.down_since.is_none()
    }

    pub fn is_down(&self) -> bool {
        self.down_since.is_some()
    }

    pub fn free(&self) -> Resources {
        self.capacity.checked_sub(self.allocated).expect("invariant: allocated <= capacity")
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tenant {
    pub id: TenantId,
    pub parent: Option<TenantId>,
    pub children: BTreeSet<TenantId>,
    pub weight: u32,
    pub quota: Quota,
    /// Usage of this tenant and all its descendants.
    pub usage: UsageTotals,
    /// `Some` exactly while the subtree's usage is above an effective soft limit.
    pub burst: Option<Burst>,
    /// Jobs today and cpu time this month of this tenant and its descendants.
    pub windows: WindowCounters,
    pub tokens: BTreeMap<TokenId, Token>,
    pub created_at: UnixMillis,
    /// The price plan it pays by (`None`: the `default` plan, if there is one).
    pub billing_plan: Option<PlanId>,
    /// What its own placements and reservations have used this month (`meter.rs`).
    pub meter: Box<Meter>,
    /// Its monthly budget and the alerts fired (`budget.rs`).
    pub budget: Option<Box<BudgetState>>,
    /// Its closed invoices and the adjustments of its open months (`invoice.rs`).
    pub invoices: Box<Invoices>,
    /// Its rate limits on writes and what its subtree wrote under them (`rates.rs`).
    pub rate: Option<Box<RateState>>,
    /// Its policy's versions (`policy.rs`).
    pub policy: Box<PolicyHistory>,
}

/// One of a tenant's API tokens: only its hash is kept, never the token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Token {
    pub hash: TokenHash,
    /// The log time from which the token is refused (`TOKEN_EXPIRED`); `None`: never. It is
    /// forgotten `EXPIRED_TOKEN_RETENTION_MS` later.
    pub expires_at: Option<UnixMillis>,
}

impl Token {
    /// Whether the token is refused at log time (or replica clock) `now`.
    pub fn expired(&self, now: UnixMillis) -> bool {
        self.expires_at.is_some_and(|at| at <= now)
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum GroupStrategy {
    /// Every instance on a distinct worker (hard).
    #[default]
    Spread,
    /// Prefer workers that already hold the group's instances.
    Pack,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlacementGroup {
    pub tenant: TenantId,
    pub id: GroupId,
    pub max_instances: u32,
    pub strategy: GroupStrategy,
    pub created_at: UnixMillis,
}

/// A workload bound to workers; with `expires_at` set it is a reservation that has not been
/// confirmed yet. Both hold capacity and quota identically.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    pub tenant: TenantId,
    pub spec: PlaceSpec,
    /// The pool the placement landed in (the spec's, or the default pool).
    pub pool: PoolId,
    /// One worker per instance, in the order they were chosen.
    pub instances: Vec<WorkerId>,
    pub placed_at: UnixMillis,
    pub log_index: LogIndex,
    /// `Some` while this is an unconfirmed reservation.
    pub expires_at: Option<UnixMillis>,
    /// It took its tenant above its guaranteed share of the pool when it was placed, in a pool
    /// where some tenant holds a guarantee (see `borrow.rs`).
    pub borrowed: bool,
    /// It came through the queue (`PlaceOrQueue`, or re-queued after preemption): if a worker
    /// loss cannot be rescheduled, it waits in the queue again instead of being released.
    pub queue_if_unavailable: bool,
    /// One per instance, parallel to `instances`: when it was bound there, and what its
    /// worker's agent reported.
    pub slots: Vec<Slot>,
    /// `placed_at + max_runtime_ms`: released then (reason `TIME_LIMIT`), exactly in log time.
    pub time_limit_at: Option<UnixMillis>,
}

/// One instance of a placement.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Slot {
    /// The index of the entry that bound it to its worker (the placement's, or the one that
    /// moved it off a down worker): the fence of `ReportStatus`.
    pub assigned_at: LogIndex,
    /// First reported running (or completed) at.
    pub running_since: Option<UnixMillis>,
    /// Reported completed at; the placement is released when every slot has completed.
    pub completed_at: Option<UnixMillis>,
}

impl Slot {
    pub fn assigned(at: LogIndex) -> Slot {
        Slot { assigned_at: at, running_since: None, completed_at: None }
    }
}

/// How a placement ended, for the ends a client did not ask for itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FinishedState {
    /// Every instance reported completed.
    Completed,
    /// An instance reported failed.
    Failed { exit_code: i32, message: String },
    /// A worker went down and it could not be rescheduled (or asked to be released).
    Lost,
    /// It reached `max_runtime_ms`.
    TimedOut,
}

impl FinishedState {
    /// The stable release reason (UPPER_SNAKE).
    pub fn reason(&self) -> &'static str {
        super::events::ReleaseReason::from(self).reason()
    }
}

/// A placement that ended (kept `FINISHED_PER_TENANT_MAX` per tenant, `FINISHED_MAX` in all).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finished {
    pub tenant: TenantId,
    pub placement: PlacementId,
    pub pool: PoolId,
    pub workers: Vec<WorkerId>,
    pub resources: Resources,
    pub count: u32,
    pub placed_at: UnixMillis,
    pub ended_at: UnixMillis,
    /// The index of the entry that ended it.
    pub log_index: LogIndex,
    pub state: FinishedState,
}

impl Placement {
    pub fn id(&self) -> &PlacementId {
        &self.spec.placement
    }

    pub fn is_reservation(&self) -> bool {
        self.expires_at.is_some()
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub tenant: TenantId,
    pub name: LeaseName,
    pub holder: String,
    /// The log index of the grant: strictly increasing across grants (invariant 7).
    pub token: LogIndex,
    pub ttl_ms: u64,
    pub granted_at: UnixMillis,
    pub expires_at: UnixMillis,
}

/// Who a request id belongs to: its tenant, or the operator for tenant-less commands.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SessionKey {
    pub tenant: Option<TenantId>,
    pub request_id: RequestId,
}

/// The first answer to a request id, kept so a retry gets it again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// SHA-256 of the encoded command, to refuse a request id reused for something else.
    pub command_digest: [u8; 32],
    pub first: Applied,
}

/// The session table: the first answer to each request id, found by key and kept in the order
/// the sessions were created, which is the order they are listed in a snapshot.
///
/// Each scope (a tenant, or the operator's tenant-less commands) has its own window: a new
/// session evicts the oldest of its own scope beyond `SESSIONS_PER_TENANT_MAX`, so no tenant's
/// traffic can evict another's records. When the whole table is full (`Config::sessions_max`),
/// the oldest session of the largest scope goes (ties: the scope whose oldest is oldest), so a
/// tenant loses a record to another's traffic only while it holds the most, and every active
/// tenant keeps at least `sessions_max` ÷ active tenants. At the defaults (100,000 in all,
/// 10,000 per tenant) up to ten busy tenants each keep a full window.
///
/// Lookups go through a hash table, the core's only one. With the default 100,000 sessions, a
/// B-tree lookup walked about seven levels of nodes and compared heap strings at each; three of
/// those per write were a seventh of a leader's CPU. The table's hashes decide only where
/// entries sit in memory: it is only ever asked about one key or one log index (`tests/tidy.rs`
/// checks), and every walk, comparison and encoding goes through `order`, so no outcome
/// depends on them. `scopes` and `sizes` are derived from `order` (rebuilt on decode).
///
/// A slot is a hash, a log index and a pointer: an answer takes about 650 bytes inline (a
/// placement's), and the table keeps up to twice as many slots as sessions. Unboxed, the
/// default 100,000 sessions took about 185 MB (a heap profile of a soak). `order` keeps each
/// session's hash, so evicting the oldest finds its slot by comparing log indexes: no rehash
/// of its key and no visit to its key's strings, cold by then (a profile at 64 clients had
/// those as a third of the table's cost).
#[derive(Clone, Default)]
pub struct Sessions {
    by_key: HashTable<Filed>,
    hasher: SessionHasher,
    /// Each session's log index, oldest first, and the hash its slot is filed under.
    order: BTreeMap<LogIndex, u64>,
    /// Each scope's sessions, oldest first.
    scopes: BTreeMap<Option<TenantId>, BTreeSet<LogIndex>>,
    /// Every scope by size, then by its oldest session (oldest last): the last is evicted from
    /// when the table is full.
    sizes: BTreeSet<(usize, Reverse<LogIndex>, Option<TenantId>)>,
}

/// One session in the lookup table: the hash it is filed under, its log index, and the record.
#[derive(Clone, Debug)]
struct Filed {
    hash: u64,
    index: LogIndex,
    recorded: Box<(SessionKey, Session)>,
}

/// Most sessions of one tenant (or of the operator): its exactly-once window. A snapshot of an
/// earlier build may hold more in one scope; the next session there trims it.
pub const SESSIONS_PER_TENANT_MAX: usize = 10_000;

/// How the session lookup hashes: SipHash under std's fixed keys, until the shell hands it
/// random ones (`Scheduler::key_session_lookup`) so no client can choose request ids that
/// collide. The core itself draws no randomness.
#[derive(Clone, Default)]
pub struct SessionHasher(Option<RandomState>);

impl SessionHasher {
    fn hash(&self, key: &SessionKey) -> u64 {
        match &self.0 {
            Some(keys) => keys.hash_one(key),
            None => BuildHasherDefault::<DefaultHasher>::default().hash_one(key),
        }
    }
}

impl Sessions {
    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    pub fn get(&self, key: &SessionKey) -> Option<&Session> {
        self.slot_of(key).map(|slot| &slot.recorded.1)
    }

    fn slot_of(&self, key: &SessionKey) -> Option<&Filed> {
        self.by_key.find(self.hasher.hash(key), |filed| filed.recorded.0 == *key)
    }

    /// The slot of the session recorded at `index`, filed under `hash`.
    fn slot_at(&self, index: LogIndex, hash: u64) -> &Filed {
        let found = self.by_key.find(hash, |filed| filed.index == index);
        found.expect("invariant: ordered sessions are kept")
    }

    /// Takes the session recorded at `index`, filed under `hash`, out of the lookup.
    fn unfile(&mut self, index: LogIndex, hash: u64) -> Filed {
        let found = self.by_key.find_entry(hash, |filed| filed.index == index);
        found.expect("invariant: ordered sessions are kept").remove().0
    }

    /// Records the first answer to `key`, which must not have one yet, then evicts: the
    /// scope's oldest beyond its window, and the largest scope's oldest beyond `total_max`.
    pub fn insert(&mut self, key: SessionKey, session: Session, total_max: usize) {
        let scope = key.tenant.clone();
        if let Err(key) = self.try_insert(key, session) {
            panic!("invariant: {key:?} is recorded once, one command per log index");
        }
        let window = SESSIONS_PER_TENANT_MAX.min(total_max);
        while self.scopes.get(&scope).is_some_and(|s| s.len() > window) {
            self.pop_oldest_of(&scope);
        }
        self.evict(total_max);
    }

    /// Drops sessions, the largest scope's oldest first, until at most `total_max` remain.
    pub fn evict(&mut self, total_max: usize) {
        while self.len() > total_max {
            let Some((_, _, scope)) = self.sizes.last().cloned() else { return };
            self.pop_oldest_of(&scope);
        }
    }

    /// Records the first answer to `key`, or hands the key back (changing nothing) if it, or
    /// the answer's log index, is recorded already.
    fn try_insert(&mut self, key: SessionKey, session: Session) -> Result<(), SessionKey> {
        use std::collections::btree_map;
        let index = session.first.log_index;
        let btree_map::Entry::Vacant(ordered) = self.order.entry(index) else {
            return Err(key);
        };
        let hash = self.hasher.hash(&key);
        let found = self.by_key.entry(hash, |filed| filed.recorded.0 == key, |filed| filed.hash);
        let hash_table::Entry::Vacant(vacant) = found else {
            return Err(key);
        };
        let scope = key.tenant.clone();
        ordered.insert(hash);
        vacant.insert(Filed { hash, index, recorded: Box::new((key, session)) });
        self.resize(scope, |set| {
            set.insert(index);
        });
        Ok(())
    }

    /// Changes one scope's set of sessions, keeping `sizes` in step.
    fn resize(&mut self, scope: Option<TenantId>, change: impl FnOnce(&mut BTreeSet<LogIndex>)) {
        let set = self.scopes.entry(scope.clone()).or_default();
        if let Some(oldest) = set.first() {
            let removed = self.sizes.remove(&(set.len(), Reverse(*oldest), scope.clone()));
            assert!(removed, "invariant: every scope is sized");
        }
        change(set);
        match set.first() {
            Some(oldest) => {
                self.sizes.insert((set.len(), Reverse(*oldest), scope));
            }
            None => {
                self.scopes.remove(&scope);
            }
        }
    }

    /// Forgets the session recorded at `index`.
    fn forget(&mut self, index: LogIndex) -> Option<Box<(SessionKey, Session)>> {
        let hash = self.order.remove(&index)?;
        let filed = self.unfile(index, hash);
        self.resize(filed.recorded.0.tenant.clone(), |set| {
            set.remove(&index);
        });
        Some(filed.recorded)
    }

    fn pop_oldest_of(&mut self, scope: &Option<TenantId>) {
        if let Some(oldest) = self.scopes.get(scope).and_then(BTreeSet::first) {
            self.forget(*oldest);
        }
    }

    pub fn remove(&mut self, key: &SessionKey) -> Option<Session> {
        let index = self.slot_of(key)?.index;
        self.forget(index).map(|recorded| recorded.1)
    }

    /// Hashes the lookup under `keys` from now on. Changes no session and no outcome.
    pub fn rekey(&mut self, keys: RandomState) {
        let hasher = SessionHasher(Some(keys));
        let mut keyed = HashTable::with_capacity(self.len());
        let ordered: Vec<(LogIndex, u64)> = self.order.iter().map(|(i, h)| (*i, *h)).collect();
        for (index, hash) in ordered {
            let mut filed = self.unfile(index, hash);
            filed.hash = hasher.hash(&filed.recorded.0);
            self.order.insert(index, filed.hash);
            keyed.insert_unique(filed.hash, filed, |filed| filed.hash);
        }
        self.by_key = keyed;
        self.hasher = hasher;
    }

    /// Every session, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = (&SessionKey, &Session)> {
        self.order.iter().map(|(index, hash)| self.session(*index, *hash))
    }

    /// The sessions of one scope (a tenant, or `None` for the operator), oldest first.
    pub fn of_scope(
        &self,
        scope: &Option<TenantId>,
    ) -> impl Iterator<Item = (&SessionKey, &Session)> {
        let indexes = self.scopes.get(scope).into_iter().flatten();
        indexes.map(|index| {
            let hash = self.order.get(index).expect("invariant: scoped sessions are ordered");
            self.session(*index, *hash)
        })
    }

    fn session(&self, index: LogIndex, hash: u64) -> (&SessionKey, &Session) {
        let (key, session) = self.slot_at(index, hash).recorded.as_ref();
        (key, session)
    }

    /// Whether the views agree: the same sessions, each ordered under its own log index and
    /// filed under its key's hash, one per key, and the scope sets and sizes are what the order
    /// implies.
    pub fn consistent(&self) -> bool {
        let mut scopes: BTreeMap<Option<TenantId>, BTreeSet<LogIndex>> = BTreeMap::new();
        let mut sound = true;
        for (index, hash) in &self.order {
            let Some(slot) = self.by_key.find(*hash, |filed| filed.index == *index) else {
                return false;
            };
            let (key, session) = slot.recorded.as_ref();
            sound &= slot.hash == *hash
                && self.hasher.hash(key) == *hash
                && session.first.log_index == *index
                && self.slot_of(key).is_some_and(|found| found.index == *index);
            scopes.entry(key.tenant.clone()).or_default().insert(*index);
        }
        let sizes: BTreeSet<_> = scopes
            .iter()
            .filter_map(|(scope, set)| Some((set.len(), Reverse(*set.first()?), scope.clone())))
            .collect();
        sound
            && self.by_key.len() == self.order.len()
            && scopes == self.scopes
            && sizes == self.sizes
    }
}

impl PartialEq for Sessions {
    fn eq(&self, other: &Self) -> bool {
        self.iter().eq(other.iter())
    }
}

impl Eq for Sessions {}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

/// A sequence of (key, session) pairs, oldest first. In bincode this is byte for byte what the
/// earlier `BTreeMap` encoding was (a length, then the pairs), so older snapshots still decode.
impl Serialize for Sessions {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.iter())
    }
}

impl<'de> Deserialize<'de> for Sessions {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let pairs = Vec::<(SessionKey, Session)>::deserialize(deserializer)?;
        let mut sessions = Sessions::default();
        for (key, session) in pairs {
            let index = session.first.log_index.0;
            sessions.try_insert(key, session).map_err(|key| {
                serde::de::Error::custom(format!(
                    "session {key:?} or log index {index} listed twice"
                ))
            })?;
        }
        Ok(sessions)
    }
}

/// The whole replicated state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub config: Config,
    /// Log time: the largest `proposed_at` applied so far.
    pub now: UnixMillis,
    pub workers: BTreeMap<WorkerId, Worker>,
    pub tenants: BTreeMap<TenantId, Tenant>,
    pub placements: BTreeMap<(TenantId, PlacementId), Placement>,
    pub groups: BTreeMap<(TenantId, GroupId), PlacementGroup>,
    pub leases: BTreeMap<(TenantId, LeaseName), Lease>,
    /// Placements waiting for quota or capacity (`PlaceOrQueue`).
    pub queue: BTreeMap<(TenantId, PlacementId), QueuedPlacement>,
    pub sessions: Sessions,
    /// Capacity of a pool held back from guarantees, for borrowers (`SetPoolReserve`). A pool
    /// with a reserve refuses guarantees that would eat into it (see `borrow.rs`).
    pub pool_reserves: BTreeMap<PoolId, Resources>,
    /// Worker TTLs set per pool (`SetPoolWorkerTtl`); other pools use `WORKER_TTL_DEFAULT_MS`.
    pub pool_worker_ttls: BTreeMap<PoolId, u64>,
    /// Placements that completed, failed, were lost or timed out, for a bounded retention.
    pub finished: BTreeMap<(TenantId, PlacementId), Finished>,
    /// Price plans by name (`SetPricePlan`).
    pub price_plans: BTreeMap<PlanId, PricePlan>,
}
