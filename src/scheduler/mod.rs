//! The scheduler core: a pure, deterministic state machine.
//!
//! `Scheduler::apply(Entry) -> Applied` is the only way state changes. Every replica applying
//! the same entries reaches byte-identical state (`state_hash`). The core never reads a clock,
//! does IO, spawns tasks, draws randomness or iterates a hash map: time is the leader-stamped
//! `Entry::proposed_at`, and every collection is a `BTreeMap`/`BTreeSet`.
//!
//! Each check and the increment it guards (capacity, quota, group size, anti-affinity, lease
//! ownership) happen inside one `apply`, so they are one atomic step on every replica.
//! Rejections are values; a broken invariant is a panic (`expect("invariant: …")`).
//!
//! `apply` is total: a committed entry runs on every replica and again on every restart, so no
//! input may reach a panic. Every client-settable value has a named bound, checked first by
//! `Command::validate` (which the API also calls before proposing), and the bounds keep every
//! sum of client values within its integer type (`tests/core_totality.rs` generates them all).
//!
//! Must not depend on: tokio, tonic, openraft, sled, std::fs, std::net, clocks (`tests/tidy.rs`).

pub mod audit;
mod borrow;
pub mod budget;
pub mod command;
pub mod events;
pub mod ids;
mod index;
mod invariants;
pub mod invoice;
mod jobs;
mod leases;
mod lifecycle;
mod liveness;
pub mod meter;
pub mod money;
mod placement;
pub mod policy;
mod preempt;
pub mod query;
mod queue;
pub mod quota;
pub mod rates;
pub mod resources;
mod snapshot;
pub mod state;
mod tenants;
pub mod testing;
pub mod windows;
mod workers;

use sha2::{Digest, Sha256};

pub use audit::{AuditHead, AuditRecord};
pub use borrow::{PoolStatus, POOL_RESERVES_MAX};
pub use budget::{Budget, BudgetStatus};
pub use command::{
    Applied, Command, DeletedCounts, Entry, Expired, Fence, FilterCounts, HeartbeatAck, Lost,
    LostOutcome, OnWorkerLost, PlaceSpec, Rejection, ReportedStatus, Response, Strategy,
};
pub use events::{Event, EventKind, QueueCause, ReleaseReason};
pub use ids::{
    GroupId, LeaseName, LogIndex, PlacementId, PlanId, PoolId, RequestId, TenantId, TokenHash,
    TokenId, UnixMillis, WorkerId, DEFAULT_POOL, UNIX_MILLIS_MAX,
};
pub use invoice::{Adjustment, Invoice};
pub use jobs::{Decision, VERDICTS_MAX};
pub use meter::{Item, PricePlan, Prices, Projection, Statement, StatementLine, Tier};
pub use placement::Filter as WorkerFilter;
pub use policy::{Actor, Policy, PolicyChange, PolicyHistory, PolicyVersion, POLICY_VERSIONS_MAX};
pub use preempt::{PREEMPTIONS_PER_ENTRY_MAX, PREEMPT_VICTIMS_MAX};
pub use query::{Answer, Query};
pub use queue::{QueueStatus, QueuedPlacement, WaitReason, QUEUE_AGING_MS, QUEUE_MAX};
pub use quota::{
    Burst, Dimension, EffectiveQuota, Guarantee, LimitKind, Limits, PerDimension, Preemption,
    Quota, QuotaEvent, SoftLimit, SoftLimits, SoftShare, Usage, UsageTotals,
};
pub use rates::{
    Bucket, RateLimit, RateLimits, RateState, BURST_RATE_MAX, DAILY_QUOTA_MAX, TOKEN_RATE_MAX,
};
pub use resources::{
    LabelOp, LabelRequirement, LabelTerm, Labels, Resources, POOL_CPU_MILLIS_MAX,
    POOL_MEMORY_MIB_MAX, WORKER_CPU_MILLIS_MAX, WORKER_MEMORY_MIB_MAX,
};
pub use snapshot::{DecodeError, SNAPSHOT_VERSION};
pub use state::{
    Config, Finished, FinishedState, GroupStrategy, Lease, Liveness, Placement, PlacementGroup,
    Session, SessionKey, Sessions, Slot, State, Tenant, Token, UsageRetention, Worker, WorkerState,
    WorkerTransition, PLACEMENT_ALGORITHM, SESSIONS_PER_TENANT_MAX, USAGE_DAILY_RETENTION_MAX_MS,
    USAGE_HOURLY_RETENTION_MAX_MS, USAGE_RAW_RETENTION_MAX_MS,
};
pub use windows::{Window, WindowCounters, WindowLimits, WindowPolicy, WindowUsage};

use index::{Deadline, Indexes};

/// Most workers in the cluster.
pub const WORKERS_MAX: usize = 100_000;
/// Most tenants.
pub const TENANTS_MAX: usize = 100_000;
/// Most placements and reservations, all tenants together.
pub const PLACEMENTS_MAX: usize = 5_000_000;
/// Most placement groups, all tenants together.
pub const GROUPS_MAX: usize = 1_000_000;
/// Most live leases, all tenants together.
pub const LEASES_MAX: usize = 1_000_000;
/// Most instances in one `Place`.
pub const INSTANCES_PER_PLACEMENT_MAX: u32 = 1_000;
/// Most instances a placement group may be declared with.
pub const GROUP_INSTANCES_MAX: u32 = 100_000;
/// Deepest tenant hierarchy (root is depth 1).
pub const TENANT_DEPTH_MAX: u32 = 8;
/// Largest fair-share weight.
pub const WEIGHT_MAX: u32 = 1_000;
/// Most API tokens per tenant (expired ones count until they are forgotten).
pub const TOKENS_PER_TENANT_MAX: usize = 16;
/// Longest token lifetime: 1 year (`AddToken::ttl_ms`; 0 means the token never expires).
pub const TOKEN_TTL_MAX_MS: u64 = 365 * 24 * 3_600_000;
/// How long an expired token is kept, refused as `TOKEN_EXPIRED`, before it is forgotten
/// (then it is an unknown token): 1 day. Expired tokens must not pile up in the state.
pub const EXPIRED_TOKEN_RETENTION_MS: u64 = 24 * 3_600_000;
/// Longest reservation: 7 days.
pub const RESERVATION_TTL_MAX_MS: u64 = 7 * 24 * 3_600_000;
/// Longest lease TTL: 1 hour.
pub const LEASE_TTL_MAX_MS: u64 = 3_600_000;
/// Longest lease holder name.
pub const HOLDER_LEN_MAX: usize = 128;
/// Most worker ids in one `Heartbeat` (a batch of 4,096 ids is about 0.5 MiB).
pub const HEARTBEATS_PER_ENTRY_MAX: usize = 4_096;
/// Shortest worker TTL a pool may set: 1 second.
pub const WORKER_TTL_MIN_MS: u64 = 1_000;
/// Longest worker TTL a pool may set: 1 hour.
pub const WORKER_TTL_MAX_MS: u64 = 3_600_000;
/// The worker TTL of a pool that sets none: 10 seconds.
pub const WORKER_TTL_DEFAULT_MS: u64 = 10_000;
/// Most pools that may set their own worker TTL (like `POOL_RESERVES_MAX`).
pub const POOL_WORKER_TTLS_MAX: usize = 10_000;
/// Most workers one entry marks down; further due workers wait for the next entry (the
/// leader ticks again at once), so a rack's loss is spread over a few entries.
pub const WORKERS_DOWN_PER_ENTRY_MAX: usize = 256;
/// Most state changes kept in a worker's history (the oldest are forgotten first).
pub const WORKER_HISTORY_MAX: usize = 16;
/// Most lost instances one entry handles (at least one worker's, however many it held).
pub const LOST_INSTANCES_PER_ENTRY_MAX: u64 = 10_000;
/// Longest `PlaceSpec::max_runtime_ms`: 365 days.
pub const MAX_RUNTIME_MAX_MS: u64 = 365 * 24 * 3_600_000;
/// Longest message of a failed instance's report, in bytes.
pub const STATUS_MESSAGE_LEN_MAX: usize = 256;
/// Most finished-placement records kept per tenant (its oldest are forgotten first).
pub const FINISHED_PER_TENANT_MAX: usize = 1_000;
/// Most finished-placement records kept in all (the largest tenant's oldest go first).
pub const FINISHED_MAX: usize = 100_000;

/// The replicated scheduler: state plus its derived indexes.
#[derive(Clone, Debug)]
pub struct Scheduler {
    state: State,
    ix: Indexes,
    /// What the entry being applied did, in order (`Scheduler::emit`); drained into
    /// `Applied::journal`. Never part of the state (empty between entries).
    journal: Vec<Event>,
    /// Something that may let a queued placement in has happened in this entry (false between
    /// entries, so it is the same on every replica and after a snapshot).
    queue_dirty: bool,
    /// Placements preempted by the entry being applied (0 between entries).
    preempted: u64,
    /// Placements admitted from the queue by the entry being applied (empty between entries).
    admitted: Vec<Placement>,
    /// What became of work on workers marked down by the entry being applied (empty between
    /// entries); drained into `Applied::lost`.
    lost: Vec<Lost>,
    /// Placements whose lost instances moved in the entry being applied (empty between
    /// entries): their new instances stand as if placed now (`anchors_of_this_entry`).
    moved: std::collections::BTreeSet<(TenantId, PlacementId)>,
    /// The index of the entry being applied (0 between entries and in dry runs).
    applying: LogIndex,
    /// The audit chain's head (`audit.rs`): replicated and in snapshots, but not part of
    /// `State` (nor `state_hash`), so a refusal still leaves the state as it was.
    audit: AuditHead,
}

impl PartialEq for Scheduler {
    fn eq(&self, other: &Self) -> bool {
        // Indexes are derived; equal states have equal indexes (checked by check_invariants).
        self.state == other.state && self.audit == other.audit
    }
}

impl Eq for Scheduler {}

impl Default for Scheduler {
    fn default() -> Self {
        Scheduler::new(Config::default())
    }
}

impl Scheduler {
    pub fn new(config: Config) -> Self {
        Scheduler {
            state: State { config, ..State::default() },
            ix: Indexes::default(),
            journal: Vec::new(),
            queue_dirty: false,
            preempted: 0,
            admitted: Vec::new(),
            lost: Vec::new(),
            moved: Default::default(),
            applying: LogIndex(0),
            audit: AuditHead::default(),
        }
    }

    pub(crate) fn from_state(state: State) -> Self {
        let ix = Indexes::build(&state);
        Scheduler {
            state,
            ix,
            journal: Vec::new(),
            queue_dirty: false,
            preempted: 0,
            admitted: Vec::new(),
            lost: Vec::new(),
            moved: Default::default(),
            applying: LogIndex(0),
            audit: AuditHead::default(),
        }
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    /// Hashes the session lookup under `keys`, random keys from the shell, so that no client
    /// can choose request ids that collide in it. Changes no state and no outcome.
    pub fn key_session_lookup(&mut self, keys: std::collections::hash_map::RandomState) {
        self.state.sessions.rekey(keys);
    }

    /// Log time: the latest `proposed_at` applied.
    pub fn now(&self) -> UnixMillis {
        self.state.now
    }

    /// The earliest reservation, lease or worker expiry or grace end, so the leader knows when
    /// to propose `Tick`.
    pub fn next_deadline(&self) -> Option<UnixMillis> {
        let first = self.ix.deadlines.first().map(|(at, _)| *at);
        match (first, self.window_deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// When the next expired token is due to be forgotten, so the leader proposes `Tick` then.
    /// Apart from `next_deadline`: a token that expires in a year must not keep the leader
    /// ticking while idle.
    pub fn next_token_purge(&self) -> Option<UnixMillis> {
        self.ix.token_purges.first().map(|(at, _, _)| *at)
    }

    /// Applies one committed entry. Never fails: rejections are in `Applied::result`.
    pub fn apply(&mut self, entry: Entry) -> Applied {
        let index = entry.index;
        self.preempted = 0;
        self.applying = index;
        let audit = self.audit_pending(&entry);
        let mut applied = self.apply_entry(entry);
        // Whatever the command freed (capacity, quota) goes to the queue in the same step.
        self.admit_queued(index);
        applied.journal = std::mem::take(&mut self.journal);
        applied.events = events::quota_events(&applied.journal);
        applied.lost = std::mem::take(&mut self.lost);
        self.preempted = 0;
        self.admitted.clear();
        self.moved.clear();
        if let Some(pending) = audit {
            applied.audit = Some(Box::new(self.audit_record(pending, &applied)));
        }
        self.applying = LogIndex(0);
        applied
    }

    fn apply_entry(&mut self, entry: Entry) -> Applied {
        let Entry { index, proposed_at, request_id, command, token } = entry;
        let day = windows::day_of(self.state.now);
        // Never backwards, never past the end of log time (a deadline must be able to pass).
        self.state.now = self.state.now.max(proposed_at.min(UNIX_MILLIS_MAX));
        // A new UTC day (or month) may have reset a window someone waits for.
        self.queue_dirty |= windows::day_of(self.state.now) != day;
        let expired = self.expire_due(index);
        self.purge_expired_tokens();
        // What expiry freed is offered to the queue before the command runs.
        self.admit_queued(index);

        // A replica never trusts the API layer: out-of-bound input changes nothing, and is not
        // remembered (a retry gets the same refusal, from the same static check).
        let valid = request_id.as_ref().map_or(Ok(()), RequestId::validate);
        if let Err(rejection) = valid.and_then(|()| command.validate()) {
            return self.answer(index, Err(rejection), expired);
        }
        if let Some(hash) = token {
            if let Err(rejection) = self.check_token(hash, command.tenant()) {
                return self.answer(index, Err(rejection), expired);
            }
        }
        let policy_change = command.policy_change();
        let origin = policy_change.as_ref().map(|_| policy::Origin {
            index,
            request_id: request_id.clone(),
            token,
        });
        let session = request_id.map(|request_id| {
            let key = SessionKey { tenant: command.tenant().cloned(), request_id };
            (key, command_digest(&command))
        });
        if let Some((key, digest)) = &session {
            if let Some(first) = self.state.sessions.get(key) {
                if first.command_digest == *digest {
                    return Applied { replayed: true, expired, ..first.first.clone() };
                }
                let first_index = first.first.log_index;
                let reused = Err(Rejection::RequestIdReused { first_index });
                return self.answer(index, reused, expired);
            }
        }

        // A tenant's write within its rate limits (and its ancestors'), or refused unremembered,
        // so the same request id retried later is judged again. What only gives back is never
        // held back (`rates.rs`).
        if let (Some(_), Some(tenant), false) = (token, command.tenant(), command.only_frees()) {
            if let Err(rejection) = self.take_write(tenant) {
                return self.answer(index, Err(rejection), expired);
            }
        }

        let emitted = self.journal.len();
        let result = self.execute(index, command);
        if result.is_err() {
            assert!(self.journal.len() == emitted, "invariant: a rejected command emits nothing");
        }
        if let (Ok(_), Some((tenant, change)), Some(origin)) = (&result, policy_change, origin) {
            self.record_policy(&tenant, change, origin);
        }
        let applied = self.answer(index, result, expired);
        if let Some((key, command_digest)) = session {
            // (`events`, `lost` and `journal` are filled in by `apply`, after this.)
            let first = Applied { expired: Vec::new(), ..applied.clone() };
            self.remember(key, Session { command_digest, first });
        }
        applied
    }

    fn answer(
        &self,
        index: LogIndex,
        result: Result<Response, Rejection>,
        expired: Vec<Expired>,
    ) -> Applied {
        Applied {
            log_index: index,
            applied_at: self.state.now,
            result,
            replayed: false,
            expired,
            events: Vec::new(),
            lost: Vec::new(),
            journal: Vec::new(),
            audit: None,
        }
    }

    /// Records that `event` happened in the entry being applied (the one way into the journal).
    fn emit(&mut self, event: Event) {
        self.journal.push(event);
    }

    fn remember(&mut self, key: SessionKey, session: Session) {
        let max = self.sessions_max();
        self.state.sessions.insert(key, session, max);
    }

    fn sessions_max(&self) -> usize {
        usize::try_from(self.state.config.sessions_max).unwrap_or(usize::MAX)
    }

    fn execute(&mut self, index: LogIndex, command: Command) -> Result<Response, Rejection> {
        match command {
            Command::Tick => Ok(Response::Ticked),
            Command::LeaderChanged => Ok(self.extend_leases()),
            Command::SetConfig { config } => self.set_config(config),
            Command::RegisterWorker { worker, pool, capacity, labels } => {
                self.register_worker(index, worker, pool, capacity, labels)
            }
            Command::UpdateWorker { worker, capacity, labels } => {
                self.update_worker(&worker, capacity, labels)
            }
            Command::SetWorkerSchedulable { worker, schedulable } => {
                self.set_worker_schedulable(index, worker, schedulable)
            }
            Command::RemoveWorker { worker, evict } => self.remove_worker(&worker, evict),
            Command::SetPoolReserve { pool, reserve } => self.set_pool_reserve(pool, reserve),
            Command::CreateTenant { tenant, parent, weight } => {
                self.create_tenant(tenant, parent, weight)
            }
            Command::DeleteTenant { tenant } => self.delete_tenant(&tenant),
            Command::SetQuota { tenant, quota } => self.set_quota(&tenant, quota),
            Command::AddToken { tenant, token, hash, ttl_ms } => {
                self.add_token(&tenant, token, hash, ttl_ms)
            }
            Command::RevokeToken { tenant, token } => self.revoke_token(&tenant, token),
            Command::Place { tenant, spec, fence } => self.place_now(index, tenant, spec, fence),
            Command::Reserve { tenant, spec, ttl_ms, fence } => {
                self.reserve(index, tenant, spec, ttl_ms, fence)
            }
            Command::PlaceOrQueue { tenant, spec, fence } => {
                self.place_or_queue(index, tenant, spec, fence)
            }
            Command::CancelQueued { tenant, placement } => self.cancel_queued(&tenant, &placement),
            Command::Release { tenant, placement, fence } => {
                self.release_placement(&tenant, &placement, fence)
            }
            Command::ConfirmReservation { tenant, reservation, fence } => {
                self.confirm_reservation(&tenant, &reservation, fence)
            }
            Command::CancelReservation { tenant, reservation, fence } => {
                self.cancel_reservation(&tenant, &reservation, fence)
            }
            Command::CreatePlacementGroup { tenant, group, max_instances, strategy } => {
                self.create_group(tenant, group, max_instances, strategy)
            }
            Command::AcquireLease { tenant, lease, holder, ttl_ms } => {
                self.acquire_lease(index, tenant, lease, holder, ttl_ms)
            }
            Command::KeepAliveLease { tenant, lease, token } => {
                self.keep_alive_lease(tenant, lease, token)
            }
            Command::ReleaseLease { tenant, lease, token } => {
                self.release_lease(tenant, lease, token)
            }
            Command::Heartbeat { workers } => self.heartbeat(index, workers),
            Command::SetPoolWorkerTtl { pool, ttl_ms } => self.set_pool_worker_ttl(pool, ttl_ms),
            Command::SetPricePlan { plan, prices, effective_at } => {
                self.set_price_plan(plan, prices, effective_at)
            }
            Command::SetBillingPlan { tenant, plan } => self.set_billing_plan(&tenant, plan),
            Command::SetBudget { tenant, budget } => self.set_budget(&tenant, budget),
            Command::SetRateLimits { tenant, limits } => self.set_rate_limits(&tenant, limits),
            Command::RollbackPolicy { tenant, to_version } => {
                self.rollback_policy(&tenant, to_version)
            }
            Command::AdjustInvoice { tenant, month, amount, reason } => {
                self.adjust_invoice(index, &tenant, month, amount, reason)
            }
            Command::CloseInvoice { tenant, month } => self.close_invoice(index, &tenant, month),
            Command::ReportStatus { worker, tenant, placement, slot, assigned_at, status } => {
                self.report_status(index, worker, tenant, placement, slot, assigned_at, status)
            }
        }
    }

    // ----- expiry and time -------------------------------------------------------------------

    /// Expires every reservation, lease and burst grace period whose deadline is at or before
    /// `now`, then marks down the workers whose TTL passed (within the per-entry bounds) and
    /// handles their work (`liveness.rs`).
    fn expire_due(&mut self, index: LogIndex) -> Vec<Expired> {
        let mut expired = Vec::new();
        let mut dying = liveness::Dying::default();
        while let Some((at, _)) = self.ix.deadlines.first() {
            if *at > self.state.now {
                break;
            }
            let (at, deadline) = self.ix.deadlines.pop_first().expect("invariant: first exists");
            match deadline {
                Deadline::Worker(worker) => {
                    let instances = self.instances_on(&worker);
                    dying.offer(at, worker, instances);
                }
                Deadline::TimeLimit(tenant, placement) => {
                    // The deadline was popped above; release() must not look for it again.
                    let key = (tenant.clone(), placement.clone());
                    let p = self.state.placements.get_mut(&key);
                    let p = p.expect("invariant: a time limit's placement");
                    p.time_limit_at = None;
                    let ended = p.clone();
                    // Its time limit passed at `at`, whichever later entry noticed.
                    self.end(index, at, &ended, FinishedState::TimedOut);
                    expired.push(Expired::TimeLimit { tenant, placement });
                }
                Deadline::Reservation(tenant, reservation) => {
                    let key = (tenant.clone(), reservation.clone());
                    let p = self.state.placements.get(&key);
                    let p = p.expect("invariant: deadline has reservation");
                    assert!(
                        p.expires_at == Some(at),
                        "invariant: only reservations have deadlines"
                    );
                    // Put back: release() takes it away with the reservation (which stays one
                    // to the end, so it is metered as a reservation).
                    let deadline = Deadline::Reservation(tenant.clone(), reservation.clone());
                    self.ix.deadlines.insert((at, deadline));
                    let reason = ReleaseReason::ReservationExpired;
                    self.release(&tenant, &reservation, reason).expect("invariant: reserved");
                    expired.push(Expired::Reservation { tenant, reservation });
                }
                Deadline::Lease(tenant, lease) => {
                    let removed = self
                        .state
                        .leases
                        .remove(&(tenant.clone(), lease.clone()))
                        .expect("invariant: deadline has lease");
                    let token = removed.token;
                    let (t, l) = (tenant.clone(), lease.clone());
                    self.emit(Event::LeaseExpired { tenant: t, lease: l, token });
                    expired.push(Expired::Lease { tenant, lease, token });
                }
                Deadline::Meter(tenant) => {
                    // Its spend reached an alert, its month ended, or an invoice is due to
                    // close: metering says which.
                    self.ix.meter_deadlines.remove(&tenant);
                    self.meter_tenant(&tenant);
                    let t = self.state.tenants.get(&tenant);
                    let last = t.and_then(|t| t.meter.last_month.clone());
                    self.close_overdue_invoices(&tenant, &last.into_iter().collect::<Vec<_>>());
                    self.refresh_meter_deadline(&tenant);
                }
                Deadline::Grace(tenant) => {
                    let t = self.state.tenants.get_mut(&tenant);
                    let burst = t.and_then(|t| t.burst.as_mut());
                    let burst = burst.expect("invariant: grace deadline has a burst");
                    assert!(!burst.expired, "invariant: an ended grace has no deadline");
                    burst.expired = true;
                    self.emit(Event::Quota(QuotaEvent::GraceExpired { tenant }));
                    // An aged entry of this tenant that held its pool for capacity may now wait
                    // for its quota instead, letting others in.
                    self.queue_dirty = true;
                }
            }
        }
        // Past a bound: still due, for the next entry.
        self.ix.deadlines.extend(dying.deferred);
        if !dying.workers.is_empty() {
            self.mark_down(index, &dying.workers, &mut expired);
        }
        expired
    }

    fn set_config(&mut self, config: Config) -> Result<Response, Rejection> {
        self.state.config = config;
        let max = self.sessions_max();
        self.state.sessions.evict(max);
        Ok(Response::ConfigSet)
    }

    // ----- lookups ---------------------------------------------------------------------------

    fn tenant(&self, id: &TenantId) -> Result<&Tenant, Rejection> {
        self.state.tenants.get(id).ok_or_else(|| Rejection::TenantNotFound { tenant: id.clone() })
    }

    fn tenant_mut(&mut self, id: &TenantId) -> Result<&mut Tenant, Rejection> {
        self.state
            .tenants
            .get_mut(id)
            .ok_or_else(|| Rejection::TenantNotFound { tenant: id.clone() })
    }

    fn worker_mut(&mut self, id: &WorkerId) -> Result<&mut Worker, Rejection> {
        self.state
            .workers
            .get_mut(id)
            .ok_or_else(|| Rejection::WorkerNotFound { worker: id.clone() })
    }

    /// The tenant and its ancestors, nearest first. At most one more than `TENANT_DEPTH_MAX`
    /// long, so a damaged snapshot's parent cycle ends here and fails `check_invariants`.
    fn lineage(&self, tenant: &TenantId) -> Vec<TenantId> {
        let mut chain = vec![tenant.clone()];
        let mut at = tenant;
        let depth_max = usize::try_from(TENANT_DEPTH_MAX).unwrap_or(usize::MAX);
        while let Some(parent) = self.state.tenants.get(at).and_then(|t| t.parent.as_ref()) {
            if chain.len() > depth_max {
                break;
            }
            chain.push(parent.clone());
            at = parent;
        }
        chain
    }

    /// The tenant exists and, if a fence is presented, it holds the live token.
    fn check_tenant_fence(
        &self,
        tenant: &TenantId,
        fence: Option<&Fence>,
    ) -> Result<(), Rejection> {
        self.tenant(tenant)?;
        self.check_fence(tenant, fence)
    }

    fn check_fence(&self, tenant: &TenantId, fence: Option<&Fence>) -> Result<(), Rejection> {
        let Some(fence) = fence else { return Ok(()) };
        let current =
            self.state.leases.get(&(tenant.clone(), fence.lease.clone())).map(|l| l.token);
        if current == Some(fence.token) {
            Ok(())
        } else {
            Err(Rejection::StaleFencingToken {
                lease: fence.lease.clone(),
                presented: fence.token,
                current,
            })
        }
    }
}

/// SHA-256 of a command's encoding: equal commands, equal digests. Each replica encodes the
/// command here once more: the log entry carries commands, not their digests, and apply gets
/// entries openraft decoded, so reusing an encoding would mean changing the log format.
fn command_digest(command: &Command) -> [u8; 32] {
    let bytes = bincode::serde::encode_to_vec(command, bincode::config::standard())
        .expect("invariant: commands always encode");
    Sha256::digest(bytes).into()
}

/// A collection length as u64 (lossless on every supported platform).
fn count_u64(n: usize) -> u64 {
    u64::try_from(n).expect("invariant: usize fits in u64")
}
