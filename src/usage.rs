//! The usage store: each replica's history of what every tenant held, kept in sled, queried
//! by range (`GetUsage`, `berth usage`).
//!
//! It is derived only from applied commands. After each command that placed, confirmed or
//! released something or deleted a tenant, the state machine sends what each tenant named
//! holds now (its meter's rates: resources per pool, placed or reserved) with the command's
//! index and log time; a writer thread records a change point where the rates differ from the
//! tenant's last. Usage is piecewise constant between points, so every quantity is an exact
//! integer (cpu_millis × ms, MiB × ms), the same the meter prices.
//!
//! When a tenant's interval closes (its next point), the interval is added to hourly and daily
//! roll-ups. At the first point of each new log-time hour, history older than the replicated
//! retention (`Config::usage_retention`) is pruned. Everything in the store is a function of
//! the command sequence alone, so replicas hash equal at equal command index (`hash`).
//!
//! Writes leave the apply path as one message per applied batch; the writer keeps writes in
//! memory (a tenant's last point is rewritten many times a second under load) and applies
//! them to sled once there are `PENDING_MAX` keys (in sled batches of `SLED_BATCH_MAX`), and
//! never flushes sled. The roll-ups of the current log-time day (rewritten at every change of
//! every tenant) stay in memory until log time passes the day and are then written once: a
//! roll-up rewritten in sled all day leaves its pages in many pieces, which cold queries then
//! read back one by one (it doubled hourly `GetUsage`'s p99). Reads, queries and the hash see
//! them in place.
//!
//! Durability comes from snapshots, without reading the store whole at each one. A *base* is
//! the store's contents at some snapshot (every key and value in key order, kept in files
//! beside the snapshot); the writer keeps every write since the base in memory (`Writer::changes`, the
//! latest value of each key or its removal), and a snapshot carries the base's name and those
//! changes, taken in the writer's order at the snapshot's index (`checkpoint`). When the
//! changes outgrow a limit the snapshot asks for (`raft::state_machine`: a quarter of the
//! base's dump, at most 4 MiB, so the changes in memory stay bounded however long the
//! history), the snapshot makes them a new base and the writer starts counting afresh. A base
//! is a dump or a delta (the changes as they were, over the base before), so a base is a chain:
//! a dump and deltas over it, folded into a new dump once the deltas outgrow a quarter of it
//! (`merge_changes` and `compose`, off the writer: merges of sorted lists read in place, not a
//! scan of sled). A replica that opens or installs a snapshot restores the
//! store from its base and changes and replays the log after it; a snapshot sent to a
//! follower carries the composed dump whole. Queries run on the writer thread too, in order
//! after every command applied before they were asked, so they see a consistent store.
//!
//! Keys (one sled tree): a kind byte, the tenant (length-prefixed), and for series a
//! big-endian time, so one tenant's series is one range:
//! `p` blocks of change points (the time of the block's first point → up to `BLOCK_POINTS`
//! points, each its time and rates; a full block is in a file beside sled and sled keeps
//! where, `BlockFiles`), `h` hourly roll-ups (one key per day → quantities per
//! hour of it, so a month of hours is 30 keys), `d` daily roll-ups (→ quantities), `l` each
//! tenant's last point (→ time, rates and its block), `m` the hour pruning last ran.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::oneshot;

use crate::codec;
use crate::fatal::FailStop;
use crate::scheduler::windows::{DAY_MS, HOUR_MS};
use crate::scheduler::{Event, Item, PoolId, Resources, TenantId, UnixMillis, UsageRetention};

/// Most buckets one query returns.
pub const USAGE_BUCKETS_MAX: u64 = 10_000;
/// Shortest step of a query: a second.
pub const USAGE_STEP_MIN_MS: u64 = 1_000;
/// Most keys the writer holds in memory before writing them to sled as one batch. A key is at
/// most a block of points (a few KiB), and what is pending stays in memory across a rebase,
/// so this keeps it within about a MiB (at 1,024, a heap profile of a soak held 18 MB of
/// blocks, counting their spare capacity).
const PENDING_MAX: usize = 256;

/// Most change points in one key. sled holds about 17 bytes in memory for every key it
/// stores, however small its cache (a probe of sled alone: 49 MiB resident at a million
/// keys, 166 MiB at eight million; the same points in keys of 128, 43 MiB at eight
/// million): at a soak's 1.6 million points an hour, one key per point is about 27 MiB an
/// hour, for as long as raw points are kept (7 days by default). Below 251, so a
/// block's point count is its first byte (`Block`).
const BLOCK_POINTS: u8 = 128;
/// sled's page cache for the store. sled counts a page by its size on disk; in memory, the
/// store's many small keys take several times that. At 64 MiB, the store's pages in memory
/// grew from 29 to 95 MB between 150 and 480 s of a soak at 1,250 calls a second (a heap
/// profile); at 8 MiB they stay near 23 MB, for about 6 % more CPU per write
/// (docs/performance.md, "Memory under a steady load").
const CACHE_BYTES: u64 = 8 << 20;

/// Most writes in one sled batch. sled frees the tree nodes a write replaces through its
/// epoch-based reclamation, and a batch is one pin of it: what a batch much larger than this
/// replaces is left behind for good. Batches of 4,096 keys kept the whole usage store in
/// memory and more (a heap profile of a soak: its sled pages grew about 45 MB in 220 s; a
/// probe appending 500,000 keys to sled alone: 1.5 GB resident in batches of 8,192 keys,
/// 47 MB in batches of 512, 41 MB in batches of 128 to 256).
pub(crate) const SLED_BATCH_MAX: usize = 256;

/// Applies `writes` (a value, or `None` to remove the key) to `tree` in batches of at most
/// `SLED_BATCH_MAX`. The batches are not atomic together: what uses this is derived, and
/// rebuilt from a snapshot and the log after a crash.
pub(crate) fn write_in_batches<K: Into<sled::IVec>, V: Into<sled::IVec>>(
    tree: &sled::Tree,
    writes: impl IntoIterator<Item = (K, Option<V>)>,
) -> sled::Result<()> {
    let mut batch = sled::Batch::default();
    let mut len = 0;
    for (key, value) in writes {
        match value {
            Some(value) => batch.insert(key, value),
            None => batch.remove(key),
        }
        len += 1;
        if len == SLED_BATCH_MAX {
            tree.apply_batch(std::mem::take(&mut batch))?;
            len = 0;
        }
    }
    if len > 0 {
        tree.apply_batch(batch)?;
    }
    Ok(())
}

/// What a tenant holds at a moment: resources per (pool, reserved), in order.
pub type Rates = Vec<(PoolId, bool, Resources)>;

/// Exact quantities per (pool, item): cpu_millis × ms or MiB × ms.
pub type Quantities = BTreeMap<(PoolId, Item), u128>;

/// What one applied command changed: each named tenant's rates after it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub index: u64,
    pub at: UnixMillis,
    pub retention: UsageRetention,
    pub changes: Vec<(TenantId, Rates)>,
}

/// The tenants whose holdings `events` may have changed, once each, in order.
pub fn tenants_changed(events: &[Event]) -> BTreeSet<&TenantId> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Placed { tenant, .. }
            | Event::Confirmed { tenant, .. }
            | Event::Released { tenant, .. }
            | Event::TenantDeleted { tenant } => Some(tenant),
            _ => None,
        })
        .collect()
}

/// A usage query: `[from, to)` in buckets of `step`, as of log time `now`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageQuery {
    pub tenant: TenantId,
    pub from: UnixMillis,
    pub to: UnixMillis,
    pub step_ms: u64,
}

/// Which series answers a query: the coarsest its step and start align with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resolution {
    Raw,
    Hourly,
    Daily,
}

impl Resolution {
    pub fn name(self) -> &'static str {
        match self {
            Resolution::Raw => "raw",
            Resolution::Hourly => "hourly",
            Resolution::Daily => "daily",
        }
    }
}

/// One bucket of a series: `[from, to)` and what was used in it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bucket {
    pub from: UnixMillis,
    pub to: UnixMillis,
    pub quantities: Quantities,
}

/// A query's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Series {
    pub resolution: Resolution,
    /// The log time it is as of: nothing after it is counted.
    pub as_of: UnixMillis,
    pub buckets: Vec<Bucket>,
    /// Whether the store has any history of the tenant.
    pub known: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UsageError {
    /// A value of the query is out of bounds (field, why).
    #[error("{0}: {1}")]
    Invalid(&'static str, String),
    /// The range starts before the oldest history this resolution keeps.
    #[error(
        "{resolution} usage is kept for {kept_days} days: from must be at or after {oldest_ms} ms{hint}"
    )]
    Expired { resolution: &'static str, kept_days: u64, oldest_ms: u64, hint: &'static str },
    #[error("the usage store is unavailable: {0}")]
    Unavailable(String),
}

impl UsageQuery {
    /// Checks the query's bounds (before it reaches the store).
    pub fn validate(&self) -> Result<(), UsageError> {
        if self.step_ms < USAGE_STEP_MIN_MS {
            return Err(UsageError::Invalid(
                "step_ms",
                format!("must be at least {USAGE_STEP_MIN_MS}"),
            ));
        }
        if self.from >= self.to {
            return Err(UsageError::Invalid("to_ms", "must be after from_ms".into()));
        }
        let buckets = (self.to.0 - self.from.0).div_ceil(self.step_ms);
        if buckets > USAGE_BUCKETS_MAX {
            return Err(UsageError::Invalid(
                "step_ms",
                format!("the range makes {buckets} buckets; at most {USAGE_BUCKETS_MAX}"),
            ));
        }
        Ok(())
    }

    /// The coarsest series whose buckets tile this query's.
    pub fn resolution(&self) -> Resolution {
        let aligned = |g: u64| self.step_ms % g == 0 && self.from.0 % g == 0;
        if aligned(DAY_MS) {
            Resolution::Daily
        } else if aligned(HOUR_MS) {
            Resolution::Hourly
        } else {
            Resolution::Raw
        }
    }
}

type Reply<T> = oneshot::Sender<Result<T, UsageError>>;

enum Message {
    Records(Vec<Record>),
    Query(UsageQuery, UnixMillis, UsageRetention, Reply<Series>),
    Checkpoint(usize, Reply<Checkpoint>),
    Restore(Vec<u8>, Vec<u8>, Reply<()>),
    Hash(Reply<[u8; 32]>),
    Size(Reply<DiskUse>),
}

/// Where a replica keeps its usage store.
#[derive(Clone, Debug)]
pub enum UsageLocation {
    Dir(PathBuf),
    /// A temporary directory, removed when the store stops (tests).
    Temporary,
    /// A temporary directory written on the caller's thread instead of a writer thread: the
    /// simulation's, whose runs must not depend on how fast a real thread answers.
    Simulated,
}

/// The bytes the store takes on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DiskUse {
    /// sled's own count.
    pub sled: u64,
    /// The files of full blocks of change points (`BlockFiles`).
    pub block_files: u64,
}

/// A handle on the store; clones share the writer. The writer stops when every handle is gone.
#[derive(Clone)]
pub struct UsageStore {
    writer: Route,
}

/// Where messages go: the writer thread, or (in the simulation) the writer itself, on the
/// caller's thread, so nothing waits on real time.
#[derive(Clone)]
enum Route {
    Thread(mpsc::Sender<Message>),
    Inline(Arc<Mutex<Writer>>),
}

/// The last point of a tenant: since when it holds `rates`, and the block it is in (the
/// time of the block's first point).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Last {
    at: UnixMillis,
    rates: Rates,
    block: u64,
}

/// A block of a tenant's change points, in time order, as stored: `Vec<(u64, Rates)>`
/// encoded. Its length (at most `BLOCK_POINTS`) encodes as one byte, so a point is appended
/// by adding one to the first byte and the point's encoding to the end.
type Block = Vec<(u64, Rates)>;

/// What a dump holds, read in place: every key and value, in key order.
type Dump<'a> = Vec<(&'a [u8], &'a [u8])>;

/// Writes since a base: each key's latest value, or `None` where it was removed.
type Changes = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

/// `Changes` read in place, in key order (the same encoding).
type ChangeRows<'a> = Vec<(&'a [u8], Option<&'a [u8]>)>;

/// The writes since the base, at a snapshot's index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    /// The changes, encoded (`compose` applies them to the base).
    pub changes: Vec<u8>,
    /// Whether they outgrew the limit asked for: the writer now counts changes from this
    /// checkpoint, so the snapshot must make `compose(base, changes)` its new base.
    pub rebase: bool,
}

const POINT: u8 = b'p';
const HOURLY: u8 = b'h';
const DAILY: u8 = b'd';
const LAST: u8 = b'l';
const META_PRUNED: &[u8] = b"m";

fn tenant_key(kind: u8, tenant: &TenantId) -> Vec<u8> {
    let name = tenant.as_str().as_bytes();
    let mut key = Vec::with_capacity(2 + name.len() + 8);
    key.push(kind);
    // Object ids are at most 128 bytes.
    key.push(u8::try_from(name.len()).unwrap_or(u8::MAX));
    key.extend_from_slice(name);
    key
}

fn timed_key(kind: u8, tenant: &TenantId, at: u64) -> Vec<u8> {
    let mut key = tenant_key(kind, tenant);
    key.extend_from_slice(&at.to_be_bytes());
    key
}

/// The time at the end of a timed key.
fn key_time(key: &[u8]) -> u64 {
    let tail: [u8; 8] = key[key.len().saturating_sub(8)..].try_into().unwrap_or([0; 8]);
    u64::from_be_bytes(tail)
}

/// The items `rates` amount to, per ms.
fn per_ms(rates: &Rates) -> impl Iterator<Item = (PoolId, Item, u64)> + '_ {
    rates.iter().flat_map(|(pool, reserved, held)| {
        let (cpu, memory) = if *reserved {
            (Item::ReservedCpu, Item::ReservedMemory)
        } else {
            (Item::Cpu, Item::Memory)
        };
        [(pool.clone(), cpu, held.cpu_millis), (pool.clone(), memory, held.memory_mib)]
    })
}

/// Adds what `rates` held over `[from, to)` to `into`.
fn accrue(into: &mut Quantities, rates: &Rates, from: u64, to: u64) {
    let ms = u128::from(to.saturating_sub(from));
    if ms == 0 {
        return;
    }
    for (pool, item, per_ms) in per_ms(rates) {
        if per_ms > 0 {
            *into.entry((pool, item)).or_default() += u128::from(per_ms) * ms;
        }
    }
}

/// A day's hourly roll-ups: per (pool, item), the quantity in each hour of the day. Stored
/// densely (24 varints a row, an hour with nothing is one byte), so a month of a tenant's
/// hours is 30 small values and decoding one allocates once per pool, not once per hour.
type Hours = BTreeMap<(PoolId, Item), [u128; 24]>;

fn encode_hours(h: &Hours) -> Vec<u8> {
    let rows: Vec<(&PoolId, Item, &[u128; 24])> = h.iter().map(|((p, i), n)| (p, *i, n)).collect();
    codec::encode(&rows).expect("invariant: hours encode")
}

fn decode_hours(bytes: &[u8]) -> Result<Hours, String> {
    let rows: Vec<(PoolId, Item, [u128; 24])> = codec::decode(bytes).map_err(|e| e.to_string())?;
    Ok(rows.into_iter().map(|(p, i, n)| ((p, i), n)).collect())
}

fn encode_quantities(q: &Quantities) -> Vec<u8> {
    let rows: Vec<(&PoolId, Item, u128)> = q.iter().map(|((p, i), n)| (p, *i, *n)).collect();
    codec::encode(&rows).expect("invariant: quantities encode")
}

fn decode_quantities(bytes: &[u8]) -> Result<Quantities, String> {
    let rows: Vec<(PoolId, Item, u128)> = codec::decode(bytes).map_err(|e| e.to_string())?;
    Ok(rows.into_iter().map(|(p, i, n)| ((p, i), n)).collect())
}

impl UsageStore {
    /// Opens the store, empty: a replica restores it from its snapshot and replays its log.
    /// What an earlier run left in the directory is removed first (it is never read).
    pub fn open(location: &UsageLocation, fail_stop: FailStop) -> std::io::Result<UsageStore> {
        let config = sled::Config::new().cache_capacity(CACHE_BYTES).flush_every_ms(None);
        let (config, blocks) = match location {
            UsageLocation::Dir(dir) => {
                match std::fs::remove_dir_all(dir) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
                (config.path(dir), BlockFiles::new(dir.join("blocks"), false)?)
            }
            UsageLocation::Temporary | UsageLocation::Simulated => {
                (config.temporary(true), BlockFiles::temporary()?)
            }
        };
        let db = config.open().map_err(std::io::Error::other)?;
        let mut writer = Writer {
            db,
            blocks,
            fail_stop,
            pending: BTreeSet::new(),
            today: Today::default(),
            changes: HashMap::new(),
            changes_bytes: 0,
        };
        if let UsageLocation::Simulated = location {
            return Ok(UsageStore { writer: Route::Inline(Arc::new(Mutex::new(writer))) });
        }
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new().name("berth-usage".into()).spawn(move || {
            while let Ok(message) = rx.recv() {
                writer.handle(message);
            }
        })?;
        Ok(UsageStore { writer: Route::Thread(tx) })
    }

    fn send(&self, message: Message) {
        match &self.writer {
            // The writer only stops once every handle is dropped.
            Route::Thread(tx) => drop(tx.send(message)),
            Route::Inline(writer) => {
                writer.lock().unwrap_or_else(|p| p.into_inner()).handle(message)
            }
        }
    }

    /// Queues what a batch of applied commands changed (call under the state machine's write
    /// lock, so batches arrive in command order).
    pub fn record(&self, records: Vec<Record>) {
        if !records.is_empty() {
            self.send(Message::Records(records));
        }
    }

    fn ask<T>(
        &self,
        make: impl FnOnce(Reply<T>) -> Message,
    ) -> oneshot::Receiver<Result<T, UsageError>> {
        let (reply, answer) = oneshot::channel();
        self.send(make(reply));
        answer
    }

    /// Asks for a series as of log time `now`, after every record queued so far. Call under
    /// the state machine's read lock (at the applied index the answer is for); await the
    /// answer after releasing it.
    pub fn query(
        &self,
        query: UsageQuery,
        now: UnixMillis,
        retention: UsageRetention,
    ) -> Pending<Series> {
        Pending(self.ask(|reply| Message::Query(query, now, retention, reply)))
    }

    /// Asks for the writes since the base, after every record queued so far (for a
    /// snapshot; call under the state machine's read lock). If they take more than
    /// `rebase_over` bytes the writer starts counting afresh (`Checkpoint::rebase`).
    pub fn checkpoint(&self, rebase_over: usize) -> Pending<Checkpoint> {
        Pending(self.ask(|reply| Message::Checkpoint(rebase_over, reply)))
    }

    /// Replaces the store with `dump` (`compose(base, changes)`), remembering `changes` as the
    /// writes since the base; records queued after it apply on top.
    pub fn restore(&self, dump: Vec<u8>, changes: Vec<u8>) -> Pending<()> {
        Pending(self.ask(|reply| Message::Restore(dump, changes, reply)))
    }

    /// Asks for the bytes the store takes on disk.
    pub fn size_on_disk(&self) -> Pending<DiskUse> {
        Pending(self.ask(Message::Size))
    }

    /// Asks for the SHA-256 of every key and value, after every record queued so far.
    pub fn hash(&self) -> Pending<[u8; 32]> {
        Pending(self.ask(Message::Hash))
    }
}

/// An answer the writer will give.
pub struct Pending<T>(oneshot::Receiver<Result<T, UsageError>>);

impl<T> Pending<T> {
    pub async fn wait(self) -> Result<T, UsageError> {
        self.0.await.unwrap_or_else(|_| Err(stopped()))
    }

    /// `wait` for a caller outside any async runtime (the simulation's driver).
    pub fn wait_blocking(self) -> Result<T, UsageError> {
        self.0.blocking_recv().unwrap_or_else(|_| Err(stopped()))
    }
}

fn stopped() -> UsageError {
    UsageError::Unavailable("the writer stopped".into())
}

/// Checks a dump decodes, its keys in strictly increasing order (before a snapshot holding
/// it is accepted: `compose` merges it with changes as a sorted list).
pub fn check_dump(bytes: &[u8]) -> Result<(), String> {
    dump_rows(bytes).map(drop)
}

/// Checks a checkpoint's changes decode, their keys in strictly increasing order.
pub fn check_changes(bytes: &[u8]) -> Result<(), String> {
    change_rows(bytes).map(drop)
}

/// A dump's rows, read in place and checked to be in strict key order.
fn dump_rows(bytes: &[u8]) -> Result<Dump<'_>, String> {
    let rows: Dump<'_> =
        codec::decode_borrowed(bytes).map_err(|e| format!("usage store dump: {e}"))?;
    in_order(rows.iter().map(|(k, _)| *k)).map_err(|e| format!("usage store dump: {e}"))?;
    Ok(rows)
}

/// Changes' rows, read in place and checked to be in strict key order.
fn change_rows(bytes: &[u8]) -> Result<ChangeRows<'_>, String> {
    let rows: ChangeRows<'_> =
        codec::decode_borrowed(bytes).map_err(|e| format!("usage store changes: {e}"))?;
    in_order(rows.iter().map(|(k, _)| *k)).map_err(|e| format!("usage store changes: {e}"))?;
    Ok(rows)
}

fn in_order<'a>(keys: impl Iterator<Item = &'a [u8]>) -> Result<(), String> {
    let mut last: Option<&[u8]> = None;
    for key in keys {
        if last.is_some_and(|last| last >= key) {
            return Err("keys out of order or repeated".into());
        }
        last = Some(key);
    }
    Ok(())
}

/// No changes: what a checkpoint right after a rebase carries.
pub fn no_changes() -> Vec<u8> {
    codec::encode(&Changes::new()).expect("invariant: an empty map encodes")
}

/// The dump of the store a base (`None`: the empty store) and the changes since it make: a
/// merge of two sorted lists, read in place (`Dump` and `Changes` encode byte strings as their
/// length and bytes, as `&[u8]` does).
pub fn compose(base: Option<&[u8]>, changes: &[u8]) -> Result<Vec<u8>, String> {
    let base = base.map(dump_rows).transpose()?.unwrap_or_default();
    let changes = change_rows(changes)?;
    let mut out: Dump<'_> = Vec::with_capacity(base.len() + changes.len());
    let mut changes = changes.into_iter().peekable();
    for (key, value) in base {
        while let Some((k, v)) = changes.next_if(|(k, _)| *k < key) {
            out.extend(v.map(|v| (k, v)));
        }
        match changes.next_if(|(k, _)| *k == key) {
            Some((k, v)) => out.extend(v.map(|v| (k, v))),
            None => out.push((key, value)),
        }
    }
    out.extend(changes.filter_map(|(k, v)| v.map(|v| (k, v))));
    codec::encode(&out).map_err(|e| e.to_string())
}

/// The changes since a base that `older` (since the base) and then `newer` (since the end of
/// `older`) make together: a merge of two sorted lists, `newer`'s row winning for a key in
/// both (a base kept as a chain of deltas is read this way, `raft::state_machine`).
pub fn merge_changes(older: &[u8], newer: &[u8]) -> Result<Vec<u8>, String> {
    let (older, newer) = (change_rows(older)?, change_rows(newer)?);
    let mut out: ChangeRows<'_> = Vec::with_capacity(older.len() + newer.len());
    let mut newer = newer.into_iter().peekable();
    for (key, value) in older {
        while let Some(row) = newer.next_if(|(k, _)| *k < key) {
            out.push(row);
        }
        match newer.next_if(|(k, _)| *k == key) {
            Some(row) => out.push(row),
            None => out.push((key, value)),
        }
    }
    out.extend(newer);
    codec::encode(&out).map_err(|e| e.to_string())
}

/// The SHA-256 of every key and value a dump holds: equal to the store's `hash` when the
/// dump is of that store.
pub fn dump_hash(dump: &[u8]) -> Result<[u8; 32], String> {
    let rows = dump_rows(dump)?;
    let mut hasher = Sha256::new();
    for (k, v) in rows {
        hash_row(&mut hasher, k, v);
    }
    Ok(hasher.finalize().into())
}

fn hash_row(hasher: &mut Sha256, key: &[u8], value: &[u8]) {
    for part in [key, value] {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
}

struct Writer {
    db: sled::Db,
    /// Full blocks of change points, out of sled (`BlockFiles`).
    blocks: BlockFiles,
    fail_stop: FailStop,
    /// Every write since the base the last checkpoint refers to (what the next snapshot
    /// carries; after a rebase, also the writes still pending and today's roll-ups, whose
    /// values live only here), and roughly how many bytes they take. A key here has its
    /// latest value here; any other key's is in sled. Hashed for speed (it holds a
    /// snapshot interval's writes and more); never iterated in hash order: a checkpoint sorts.
    changes: HashMap<Vec<u8>, Option<Vec<u8>>>,
    changes_bytes: usize,
    /// Keys whose latest value (in `changes`) is not in sled yet, written as one batch once
    /// there are `PENDING_MAX`, or before anything reads sled whole (queries, the hash,
    /// pruning).
    pending: BTreeSet<Vec<u8>>,
    /// The roll-ups of the current log-time day, in memory until log time passes it.
    today: Today,
}

/// Most bytes in one block file before the next is started.
const BLOCK_FILE_BYTES: u64 = 32 << 20;
/// The same in a temporary location (tests, the simulation): small, so files are started
/// and removed often there.
const TEMPORARY_BLOCK_FILE_BYTES: u64 = 64 << 10;

/// The first byte of what sled keeps for a full block: where it is in the block files (a
/// block's own first byte is its point count, below 251).
const FILED: u8 = 0xFF;

/// Full blocks of change points, kept out of sled in append-only files; sled keeps where each
/// is (`FILED`, the file, the offset and the length, big-endian).
///
/// sled 0.34 evicts a tree page only when the page's shard of its cache (one of 256) has seen
/// 64 accesses since it last evicted, whatever the cache's capacity. The store writes a few
/// hundred keys a minute, most of them full blocks never written or read again, so the pages
/// holding them stayed in memory for hours: a soak's RSS grew with the history, about 90 MB
/// an hour at 500 calls a second (a heap profile: the values sled copied at `Batch::insert`),
/// where a probe feeding the store faster, and so accessing it more, levelled off.
///
/// Derived like the rest of the store: removed and rebuilt at every start, never synced. A
/// file goes once no block in it is kept and it is not the one being written.
struct BlockFiles {
    dir: PathBuf,
    /// Removed with the store (a temporary location).
    temporary: bool,
    /// `BLOCK_FILE_BYTES`, or `TEMPORARY_BLOCK_FILE_BYTES`.
    file_bytes: u64,
    /// The file being appended: its number, handle and length.
    writing: Option<(u32, std::fs::File, u64)>,
    /// Per file: how many blocks sled points to in it, and its length.
    files: BTreeMap<u32, (u64, u64)>,
    next: u32,
}

impl BlockFiles {
    /// Block files in `dir`, which is emptied first.
    fn new(dir: PathBuf, temporary: bool) -> std::io::Result<BlockFiles> {
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        std::fs::create_dir_all(&dir)?;
        let file_bytes = if temporary { TEMPORARY_BLOCK_FILE_BYTES } else { BLOCK_FILE_BYTES };
        let files = BTreeMap::new();
        Ok(BlockFiles { dir, temporary, file_bytes, writing: None, files, next: 0 })
    }

    /// Block files in a directory of their own under the system's temporary directory.
    fn temporary() -> std::io::Result<BlockFiles> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("berth-usage-blocks-{}-{n}", std::process::id());
        BlockFiles::new(std::env::temp_dir().join(name), true)
    }

    fn path(&self, file: u32) -> PathBuf {
        self.dir.join(format!("{file:08}.blocks"))
    }

    /// What sled keeps for `value` under `key`: where it now is in a file if it is a full
    /// block, else the value itself.
    fn store(&mut self, key: &[u8], value: &[u8]) -> std::io::Result<sled::IVec> {
        if key.first() != Some(&POINT) || value.first() != Some(&BLOCK_POINTS) {
            return Ok(value.into());
        }
        if self.writing.as_ref().is_none_or(|(_, _, len)| *len >= self.file_bytes) {
            let file = self.next;
            self.next += 1;
            let mut open = std::fs::OpenOptions::new();
            let handle = open.create_new(true).append(true).open(self.path(file))?;
            self.files.insert(file, (0, 0));
            if let Some((done, _, _)) = self.writing.replace((file, handle, 0)) {
                self.remove_if_unused(done)?;
            }
        }
        let Some((file, handle, len)) = self.writing.as_mut() else {
            return Err(std::io::Error::other("invariant: a block file is open"));
        };
        let size = u32::try_from(value.len()).map_err(std::io::Error::other)?;
        handle.write_all(value)?;
        let offset = *len;
        *len += u64::from(size);
        let kept = self.files.entry(*file).or_default();
        *kept = (kept.0 + 1, *len);
        let mut place = Vec::with_capacity(17);
        place.push(FILED);
        place.extend(file.to_be_bytes());
        place.extend(offset.to_be_bytes());
        place.extend(size.to_be_bytes());
        Ok(place.into())
    }

    /// The value sled keeps under `key` as the store knows it: a full block read back from
    /// its file.
    fn load<'a>(&self, key: &[u8], value: &'a [u8]) -> Result<Cow<'a, [u8]>, String> {
        if key.first() != Some(&POINT) {
            return Ok(Cow::Borrowed(value));
        }
        let Some((file, offset, size)) = place(value) else {
            return Ok(Cow::Borrowed(value));
        };
        let mut block = vec![0; size];
        let read = std::fs::File::open(self.path(file))
            .and_then(|handle| handle.read_exact_at(&mut block, offset));
        read.map_err(|e| format!("reading block file {}: {e}", self.path(file).display()))?;
        Ok(Cow::Owned(block))
    }

    /// Forgets the block sled kept as `value` under a point key (replaced or removed).
    fn release(&mut self, value: &[u8]) -> std::io::Result<()> {
        let Some((file, _, _)) = place(value) else { return Ok(()) };
        if let Some(kept) = self.files.get_mut(&file) {
            kept.0 = kept.0.saturating_sub(1);
        }
        self.remove_if_unused(file)
    }

    fn remove_if_unused(&mut self, file: u32) -> std::io::Result<()> {
        let writing = self.writing.as_ref().map(|(f, _, _)| *f);
        if writing != Some(file) && self.files.get(&file).is_some_and(|(n, _)| *n == 0) {
            self.files.remove(&file);
            std::fs::remove_file(self.path(file))?;
        }
        Ok(())
    }

    /// Removes every file (the store is being replaced).
    fn clear(&mut self) -> std::io::Result<()> {
        self.writing = None;
        for file in std::mem::take(&mut self.files).into_keys() {
            std::fs::remove_file(self.path(file))?;
        }
        Ok(())
    }

    /// The bytes the files take.
    fn bytes(&self) -> u64 {
        self.files.values().map(|(_, len)| len).sum()
    }
}

impl Drop for BlockFiles {
    fn drop(&mut self) {
        if self.temporary {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Where a full block is (`FILED`, file, offset, length), if `value` says so.
fn place(value: &[u8]) -> Option<(u32, u64, usize)> {
    let rest: &[u8; 16] = value.strip_prefix(&[FILED])?.try_into().ok()?;
    let file = u32::from_be_bytes(rest[..4].try_into().ok()?);
    let offset = u64::from_be_bytes(rest[4..12].try_into().ok()?);
    let size = u32::from_be_bytes(rest[12..].try_into().ok()?);
    Some((file, offset, usize::try_from(size).ok()?))
}

/// The hourly and daily roll-up keys of one day (`day`, its start in log time), their values
/// in `Writer::changes`: one of each per tenant that held something that day. A row restored
/// part-way through the day is in sled too, with an older value until the day ends: reads and
/// scans take the row from `changes`.
#[derive(Default)]
struct Today {
    day: u64,
    rows: BTreeSet<Vec<u8>>,
}

impl Writer {
    fn handle(&mut self, message: Message) {
        if self.fail_stop.reason().is_some() {
            return;
        }
        // Everything but a write or a checkpoint reads sled whole: what is pending goes first.
        if !matches!(message, Message::Records(_) | Message::Checkpoint(..)) {
            if let Err(e) = self.flush_pending() {
                self.pending.clear();
                self.fail_stop.stop(format!("the usage store failed writing: {e}"));
                return;
            }
        }
        match message {
            Message::Records(records) => {
                let mut written = Ok(());
                for record in &records {
                    written = self.apply(record).map_err(|e| (record.index, e));
                    if written.is_err() {
                        break;
                    }
                }
                // Pending writes reach sled in large batches: the same keys (a tenant's last
                // point, its day's roll-ups) are rewritten in memory meanwhile, not in sled.
                let written = written.and_then(|()| {
                    if self.pending.len() < PENDING_MAX {
                        return Ok(());
                    }
                    let last = records.last().map_or(0, |r| r.index);
                    self.flush_pending().map_err(|e| (last, e))
                });
                if let Err((index, e)) = written {
                    self.pending.clear();
                    self.fail_stop
                        .stop(format!("the usage store failed writing command index {index}: {e}"));
                }
            }
            Message::Query(query, now, retention, reply) => {
                let _ = reply.send(self.query(&query, now, retention));
            }
            Message::Checkpoint(rebase_over, reply) => {
                let _ = reply.send(self.checkpoint(rebase_over).map_err(UsageError::Unavailable));
            }
            Message::Restore(dump, changes, reply) => {
                let restored = self.restore(&dump, &changes);
                if let Err(why) = &restored {
                    self.fail_stop.stop(format!("the usage store failed restoring: {why}"));
                }
                let _ = reply.send(restored.map_err(UsageError::Unavailable));
            }
            Message::Hash(reply) => {
                let _ = reply.send(self.hash().map_err(UsageError::Unavailable));
            }
            Message::Size(reply) => {
                let sled = self.db.size_on_disk();
                let size = sled.map(|sled| DiskUse { sled, block_files: self.blocks.bytes() });
                let size = size.map_err(|e| UsageError::Unavailable(e.to_string()));
                let _ = reply.send(size);
            }
        }
    }

    /// A key's value: its latest write since the base if there is one, else sled's.
    fn read(&self, key: &[u8]) -> Result<Option<Vec<u8>>, String> {
        match self.changes.get(key) {
            Some(value) => Ok(value.clone()),
            None => match self.db.get(key).map_err(|e| e.to_string())? {
                Some(v) => Ok(Some(self.blocks.load(key, &v)?.into_owned())),
                None => Ok(None),
            },
        }
    }

    /// The value of today's roll-up `key`.
    fn row(&self, key: &[u8]) -> Result<&[u8], String> {
        let missing = || "invariant: today's roll-up has its value among the changes".to_owned();
        self.changes.get(key).and_then(Option::as_deref).ok_or_else(missing)
    }

    fn get<T: serde::de::DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, String> {
        match self.read(key)? {
            Some(bytes) => codec::decode(&bytes).map(Some).map_err(|e| e.to_string()),
            None => Ok(None),
        }
    }

    fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.pending.insert(key.clone());
        self.note(key, Some(value));
    }

    /// Counts a write among the changes since the base.
    fn note(&mut self, key: Vec<u8>, value: Option<Vec<u8>>) {
        let size = |key: usize, value: &Option<Vec<u8>>| key + value.as_ref().map_or(0, Vec::len);
        let key_len = key.len();
        self.changes_bytes += size(key_len, &value);
        if let Some(had) = self.changes.insert(key, value) {
            // Entries kept across a rebase were not counted (they equal the base).
            self.changes_bytes = self.changes_bytes.saturating_sub(size(key_len, &had));
        }
    }

    /// Writes the roll-up of the day starting at `day`: today's stays in memory (pending
    /// writes are of other days: `start_day` moves a day's rows there once it has ended).
    fn put_roll_up(&mut self, day: u64, key: Vec<u8>, value: Vec<u8>) {
        if day == self.today.day {
            self.today.rows.insert(key.clone());
            self.note(key, Some(value));
        } else {
            self.put(key, value);
        }
    }

    /// Moves on to the log-time day of `at`: the roll-ups of the day before are final and
    /// become pending writes (each written to sled once).
    fn start_day(&mut self, at: UnixMillis) {
        let day = at.0 / DAY_MS * DAY_MS;
        if day > self.today.day {
            // Their values are among the changes already.
            self.pending.append(&mut self.today.rows);
            self.today.day = day;
        }
    }

    /// Calls `each` with every key in `range` and its value, in key order: sled's, with
    /// today's roll-ups in place (pending writes must be flushed first).
    fn scan<R>(
        &self,
        range: R,
        mut each: impl FnMut(&[u8], &[u8]) -> Result<(), String>,
    ) -> Result<(), String>
    where
        R: std::ops::RangeBounds<Vec<u8>> + Clone,
    {
        let mut today = self.today.rows.range(range.clone()).peekable();
        for entry in self.db.range(range) {
            let (k, v) = entry.map_err(|e| e.to_string())?;
            while let Some(tk) = today.next_if(|tk| tk.as_slice() < &k[..]) {
                each(tk, self.row(tk)?)?;
            }
            match today.next_if(|tk| tk.as_slice() == &k[..]) {
                Some(tk) => each(tk, self.row(tk)?)?,
                None => each(&k, &self.blocks.load(&k, &v)?)?,
            }
        }
        today.try_for_each(|tk| each(tk, self.row(tk)?))
    }

    /// Applies the message's writes to sled, as one batch.
    fn flush_pending(&mut self) -> Result<(), String> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let pending = std::mem::take(&mut self.pending);
        let mut writes = Vec::with_capacity(pending.len());
        let mut replaced = Vec::new();
        for key in pending {
            let value = self.changes.get(&key).ok_or_else(|| {
                "invariant: a pending key has its value among the changes".to_owned()
            })?;
            if key.first() == Some(&POINT) {
                replaced.extend(self.db.get(&key).map_err(|e| e.to_string())?);
            }
            let value = match value {
                Some(v) => Some(self.blocks.store(&key, v).map_err(|e| e.to_string())?),
                None => None,
            };
            writes.push((key, value));
        }
        write_in_batches(&self.db, writes).map_err(|e| e.to_string())?;
        replaced.iter().try_for_each(|v| self.blocks.release(v)).map_err(|e| e.to_string())
    }

    /// Records one command's changes (into the message's pending writes).
    fn apply(&mut self, record: &Record) -> Result<(), String> {
        self.start_day(record.at);
        let mut touched = false;
        // A tenant named twice holds what it was named with last.
        let changes: BTreeMap<&TenantId, &Rates> =
            record.changes.iter().map(|(tenant, rates)| (tenant, rates)).collect();
        for (tenant, rates) in changes {
            let last_key = tenant_key(LAST, tenant);
            let last: Option<Last> = self.get(&last_key)?;
            if last.as_ref().is_some_and(|l| l.rates == *rates) {
                continue;
            }
            if let Some(last) = &last {
                self.roll_up(tenant, last, record)?;
            }
            let block = self.add_point(tenant, last.as_ref(), record.at.0, rates)?;
            let last = Last { at: record.at, rates: rates.clone(), block };
            self.put(last_key, codec::encode(&last).map_err(|e| e.to_string())?);
            touched = true;
        }
        let hour = record.at.0 / HOUR_MS;
        if touched && self.get::<u64>(META_PRUNED)?.is_none_or(|p| p < hour) {
            // Pruning reads ranges from sled: what is pending goes first.
            self.flush_pending()?;
            self.prune(record)?;
        }
        Ok(())
    }

    /// Adds the change point (`at`, `rates`) to the tenant's series, after its last point
    /// (`last`); returns the block it went into. A point at the last point's time replaces
    /// it, as a later command at the same log time says what was held from then on; a full
    /// block is followed by a new one.
    fn add_point(
        &mut self,
        tenant: &TenantId,
        last: Option<&Last>,
        at: u64,
        rates: &Rates,
    ) -> Result<u64, String> {
        let new_block = |at: u64| codec::encode(&vec![(at, rates)]).map_err(|e| e.to_string());
        let Some(last) = last else {
            self.put(timed_key(POINT, tenant, at), new_block(at)?);
            return Ok(at);
        };
        let key = timed_key(POINT, tenant, last.block);
        let mut block = self.read(&key)?.ok_or("a tenant's last block is missing")?;
        if last.at.0 == at {
            // The last point is the block's last encoding: replaced in place, not by decoding
            // the block (under load most commands share a log time with the one before).
            let old = codec::encode(&(last.at.0, &last.rates)).map_err(|e| e.to_string())?;
            let kept = block
                .len()
                .checked_sub(old.len())
                .filter(|&kept| kept > 0 && block[kept..] == old[..])
                .ok_or("a tenant's last point does not end its block")?;
            block.truncate(kept);
            codec::encode_into(&(at, rates), &mut block).map_err(|e| e.to_string())?;
            self.put(key, block);
            return Ok(last.block);
        }
        match block.first().copied() {
            Some(n) if n < BLOCK_POINTS => {
                block[0] = n + 1;
                codec::encode_into(&(at, rates), &mut block).map_err(|e| e.to_string())?;
                self.put(key, block);
                Ok(last.block)
            }
            _ => {
                self.put(timed_key(POINT, tenant, at), new_block(at)?);
                Ok(at)
            }
        }
    }

    /// Adds `last`'s interval, which `record` closes, to the tenant's hourly roll-ups (one
    /// key per day, holding its hours) and daily ones, those still within their retention.
    fn roll_up(&mut self, tenant: &TenantId, last: &Last, record: &Record) -> Result<(), String> {
        let (from, to) = (last.at.0, record.at.0);
        let mut hours: BTreeMap<u64, Hours> = BTreeMap::new();
        let oldest = to.saturating_sub(record.retention.hourly_ms);
        // Buckets that end at or before `oldest` are pruned already.
        let mut start = from.max(oldest) / HOUR_MS * HOUR_MS;
        while start < to {
            let end = start + HOUR_MS;
            let mut q = Quantities::new();
            accrue(&mut q, &last.rates, from.max(start), to.min(end));
            let hour = (start % DAY_MS / HOUR_MS) as usize;
            let day = hours.entry(start / DAY_MS * DAY_MS).or_default();
            for (key, n) in q {
                day.entry(key).or_insert([0; 24])[hour] += n;
            }
            start = end;
        }
        for (day, add) in hours {
            if add.is_empty() {
                continue;
            }
            let key = timed_key(HOURLY, tenant, day);
            let mut had: Hours = match self.read(&key)? {
                Some(bytes) => decode_hours(&bytes)?,
                None => Hours::new(),
            };
            for (k, add) in add {
                let row = had.entry(k).or_insert([0; 24]);
                for (n, more) in row.iter_mut().zip(add) {
                    *n += more;
                }
            }
            self.put_roll_up(day, key, encode_hours(&had));
        }
        let oldest = to.saturating_sub(record.retention.daily_ms);
        let mut start = from.max(oldest) / DAY_MS * DAY_MS;
        while start < to {
            let end = start + DAY_MS;
            let mut q = Quantities::new();
            accrue(&mut q, &last.rates, from.max(start), to.min(end));
            if !q.is_empty() {
                let key = timed_key(DAILY, tenant, start);
                let mut had = match self.read(&key)? {
                    Some(bytes) => decode_quantities(&bytes)?,
                    None => Quantities::new(),
                };
                for (k, n) in q {
                    *had.entry(k).or_default() += n;
                }
                self.put_roll_up(start, key, encode_quantities(&had));
            }
            start = end;
        }
        Ok(())
    }

    /// Forgets what is older than the retention, as of `record`: blocks of change points
    /// before the last one that starts at or before the raw cutoff (its points say what was
    /// held from the cutoff on), roll-ups that ended by their cutoff, and tenants gone
    /// (holding nothing) since before the daily cutoff.
    fn prune(&mut self, record: &Record) -> Result<(), String> {
        let at = record.at.0;
        let keep = record.retention;
        let mut removed: Vec<Vec<u8>> = Vec::new();
        // The values of removed blocks, once each (a block in a file frees its place there;
        // a tenant gone has its blocks before the cutoff named twice).
        let mut released: BTreeMap<Vec<u8>, sled::IVec> = BTreeMap::new();
        for entry in self.db.scan_prefix([LAST]) {
            let (key, value) = entry.map_err(|e| e.to_string())?;
            let name = key.get(2..).ok_or("a tenant's last point without a tenant")?;
            let name = std::str::from_utf8(name).map_err(|e| e.to_string())?;
            let tenant = TenantId::new(name);
            let last: Last = codec::decode(&value).map_err(|e| e.to_string())?;
            let raw_cut = at.saturating_sub(keep.raw_ms);
            let upto = self
                .db
                .range(timed_key(POINT, &tenant, 0)..=timed_key(POINT, &tenant, raw_cut))
                .next_back()
                .transpose()
                .map_err(|e| e.to_string())?
                .map(|(k, _)| key_time(&k));
            if let Some(upto) = upto {
                for old in
                    self.db.range(timed_key(POINT, &tenant, 0)..timed_key(POINT, &tenant, upto))
                {
                    let (key, value) = old.map_err(|e| e.to_string())?;
                    removed.push(key.to_vec());
                    released.insert(key.to_vec(), value);
                }
            }
            // Hourly keys hold a day's hours: a day whose last hour ended by the cutoff goes.
            for (kind, kept) in [(HOURLY, keep.hourly_ms), (DAILY, keep.daily_ms)] {
                // Keys starting at or before `cut - DAY_MS` ended by the cutoff.
                let cut = at.saturating_sub(kept);
                if cut < DAY_MS {
                    continue;
                }
                let end = timed_key(kind, &tenant, cut - DAY_MS + 1);
                for old in self.db.range(timed_key(kind, &tenant, 0)..end) {
                    removed.push(old.map_err(|e| e.to_string())?.0.to_vec());
                }
            }
            if last.rates.is_empty() && last.at.0 < at.saturating_sub(keep.daily_ms) {
                removed.push(key.to_vec());
                for old in self.db.scan_prefix(tenant_key(POINT, &tenant)) {
                    let (key, value) = old.map_err(|e| e.to_string())?;
                    removed.push(key.to_vec());
                    released.insert(key.to_vec(), value);
                }
            }
        }
        let pruned = codec::encode(&(at / HOUR_MS)).map_err(|e| e.to_string())?;
        let writes = removed.iter().map(|key| (key.as_slice(), None));
        let writes = writes.chain([(META_PRUNED, Some(pruned.as_slice()))]);
        write_in_batches(&self.db, writes).map_err(|e| e.to_string())?;
        released.values().try_for_each(|v| self.blocks.release(v)).map_err(|e| e.to_string())?;
        for key in removed {
            self.note(key, None);
        }
        self.note(META_PRUNED.to_vec(), Some(pruned));
        Ok(())
    }

    fn query(
        &self,
        query: &UsageQuery,
        now: UnixMillis,
        retention: UsageRetention,
    ) -> Result<Series, UsageError> {
        query.validate()?;
        let unavailable = UsageError::Unavailable;
        let resolution = query.resolution();
        let (kept, size, hint) = match resolution {
            Resolution::Raw => {
                (retention.raw_ms, 0, "; use a step of whole hours from an hour's start")
            }
            Resolution::Hourly => {
                (retention.hourly_ms, HOUR_MS, "; use a step of whole days from a day's start")
            }
            Resolution::Daily => (retention.daily_ms, DAY_MS, ""),
        };
        let oldest = now.0.saturating_sub(kept);
        // A roll-up's bucket is whole if it ends after the oldest time kept.
        let earliest = oldest.checked_div(size).map_or(oldest, |n| n * size);
        if query.from.0 < earliest {
            return Err(UsageError::Expired {
                resolution: resolution.name(),
                kept_days: kept / DAY_MS,
                oldest_ms: earliest,
                hint,
            });
        }
        let to = query.to.min(now).max(query.from);
        let mut buckets: Vec<Bucket> = (0..(query.to.0 - query.from.0).div_ceil(query.step_ms))
            .map(|i| {
                let from = query.from.0 + i * query.step_ms;
                Bucket {
                    from: UnixMillis(from),
                    to: UnixMillis((from + query.step_ms).min(query.to.0)),
                    quantities: Quantities::new(),
                }
            })
            .collect();
        let tenant = &query.tenant;
        let last: Option<Last> = self.get(&tenant_key(LAST, tenant)).map_err(unavailable)?;
        let step = query.step_ms;
        let slot = |at: u64| ((at - query.from.0) / step) as usize;
        // Adds `rates` over `[a, b)` (within the query) to the buckets it spans.
        let spread = |buckets: &mut Vec<Bucket>, rates: &Rates, a: u64, b: u64| {
            let (a, b) = (a.max(query.from.0), b.min(to.0));
            let mut start = a;
            while start < b {
                let i = slot(start);
                let end = buckets[i].to.0.min(b);
                accrue(&mut buckets[i].quantities, rates, start, end);
                start = end;
            }
        };
        match resolution {
            Resolution::Raw => {
                // From the block holding the last point at or before `from`, if any.
                let before = self
                    .db
                    .range(timed_key(POINT, tenant, 0)..=timed_key(POINT, tenant, query.from.0))
                    .next_back()
                    .transpose()
                    .map_err(|e| unavailable(e.to_string()))?;
                let first = before.map_or(query.from.0, |(k, _)| key_time(&k));
                let blocks =
                    self.db.range(timed_key(POINT, tenant, first)..timed_key(POINT, tenant, to.0));
                let mut held: Option<(u64, Rates)> = None;
                'blocks: for entry in blocks {
                    let (k, v) = entry.map_err(|e| unavailable(e.to_string()))?;
                    let v = self.blocks.load(&k, &v).map_err(unavailable)?;
                    let points: Block =
                        codec::decode(&v).map_err(|e| unavailable(e.to_string()))?;
                    for (at, rates) in points {
                        if at >= to.0 {
                            break 'blocks;
                        }
                        if let Some((since, was)) = held.as_ref().filter(|_| at > query.from.0) {
                            spread(&mut buckets, was, *since, at);
                        }
                        held = Some((at, rates));
                    }
                }
                if let Some((since, rates)) = &held {
                    spread(&mut buckets, rates, *since, to.0);
                }
            }
            Resolution::Hourly | Resolution::Daily => {
                let daily = resolution == Resolution::Daily;
                let kind = if daily { DAILY } else { HOURLY };
                let first_day = query.from.0 / DAY_MS * DAY_MS;
                let range = timed_key(kind, tenant, first_day)..timed_key(kind, tenant, to.0);
                self.scan(range, |k, v| {
                    let day = key_time(k);
                    let mut add = |at: u64, pool: &PoolId, item: Item, n: u128| {
                        if n > 0 && (query.from.0..to.0).contains(&at) {
                            let q = &mut buckets[slot(at)].quantities;
                            *q.entry((pool.clone(), item)).or_default() += n;
                        }
                    };
                    if daily {
                        for ((pool, item), n) in decode_quantities(v)? {
                            add(day, &pool, item, n);
                        }
                    } else {
                        for ((pool, item), row) in decode_hours(v)? {
                            for (hour, n) in (0..).zip(row) {
                                add(day + hour * HOUR_MS, &pool, item, n);
                            }
                        }
                    }
                    Ok(())
                })
                .map_err(unavailable)?;
                // The open interval since the tenant's last point is in no roll-up yet.
                if let Some(last) = &last {
                    spread(&mut buckets, &last.rates, last.at.0, to.0);
                }
            }
        }
        Ok(Series { resolution, as_of: to, buckets, known: last.is_some() })
    }

    /// The changes since the base, encoded; if they take more than `rebase_over` bytes, the
    /// snapshot makes a new base of them and counting starts afresh.
    fn checkpoint(&mut self, rebase_over: usize) -> Result<Checkpoint, String> {
        let mut sorted: Vec<(&Vec<u8>, &Option<Vec<u8>>)> = self.changes.iter().collect();
        sorted.sort_unstable_by(|a, b| a.0.cmp(b.0));
        // Encoded as `Changes` (a map is its length, then its pairs).
        let changes = codec::encode(&sorted).map_err(|e| e.to_string())?;
        let rebase = self.changes_bytes > rebase_over;
        if rebase {
            // What is pending and today's roll-ups keep their values here (the new base has
            // the same: they count as unchanged writes until written again).
            // Not counted: until written again they equal the new base.
            let (pending, today) = (&self.pending, &self.today.rows);
            self.changes.retain(|key, _| pending.contains(key) || today.contains(key));
            self.changes_bytes = 0;
        }
        Ok(Checkpoint { changes, rebase })
    }

    fn restore(&mut self, dump: &[u8], changes: &[u8]) -> Result<(), String> {
        let (rows, changes) = (dump_rows(dump)?, change_rows(changes)?);
        self.db.clear().map_err(|e| e.to_string())?;
        self.blocks.clear().map_err(|e| e.to_string())?;
        self.today = Today::default();
        self.changes_bytes = changes.iter().map(|(k, v)| k.len() + v.map_or(0, <[u8]>::len)).sum();
        self.changes =
            changes.into_iter().map(|(k, v)| (k.to_vec(), v.map(<[u8]>::to_vec))).collect();
        let mut writes = Vec::with_capacity(rows.len());
        for (k, v) in rows {
            writes.push((k, Some(self.blocks.store(k, v).map_err(|e| e.to_string())?)));
        }
        write_in_batches(&self.db, writes).map_err(|e| e.to_string())
    }

    fn hash(&self) -> Result<[u8; 32], String> {
        let mut hasher = Sha256::new();
        self.scan::<std::ops::RangeFull>(.., |k, v| {
            hash_row(&mut hasher, k, v);
            Ok(())
        })?;
        Ok(hasher.finalize().into())
    }
}
