//! A replica's Prometheus metrics (OpenMetrics text on `GET /metrics` of its own port).
//!
//! What is counted as it happens — API requests (`api::observe`), log syncs
//! (`storage::WalStats`), proposer batches, peer calls — is registered here; what is a view of
//! the replica's state — its Raft role, term and indexes, each tenant's usage, quota and queue —
//! is read at each scrape (`ReplicaCollector`, `TenantCollector`), so a scrape is never stale
//! and nothing on the write path maintains it. Tenants are labelled by one `TenantLabels`, so
//! their series stay bounded (see `api::observe`). `docs/metrics.md` lists every metric.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, StatusCode};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use tokio::sync::Semaphore;
use tokio_stream::Stream;

use crate::api::observe::{RequestMetrics, TenantLabels};
use crate::raft::replica::Replica;
use crate::scheduler::{Dimension, TenantId, UnixMillis};
use crate::storage::{LogStore, SnapshotStore};

/// The content type of a scrape's answer.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Most scrapes served at once; more connections wait to be accepted.
const SCRAPES_MAX: usize = 8;
/// Longest a connection may take to send its request's headers (Prometheus sends them at
/// once): a client that connects and says nothing holds a scrape's place no longer than this.
const HEADER_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest a connection may stay open in all (one request, one answer: a client that does not
/// read its answer is cut off after this).
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);

/// One replica's metrics.
pub struct Metrics {
    registry: Registry,
    requests: Arc<RequestMetrics>,
}

impl Metrics {
    /// Every metric of `replica` (whose log is `log` and snapshots `snapshots`), naming at most
    /// `tenants_max` tenants.
    pub fn new(
        replica: &Replica,
        log: &LogStore,
        snapshots: SnapshotStore,
        tenants_max: usize,
    ) -> Metrics {
        let mut registry = Registry::default();
        let tenants = Arc::new(TenantLabels::new(tenants_max));
        let requests = RequestMetrics::register(&mut registry, tenants.clone());
        if let Some(wal) = log.wal_stats() {
            registry.register(
                "berth_wal_sync_duration_seconds",
                "Time of each write of the Raft log file, from write to the end of its fdatasync",
                wal.syncs.clone(),
            );
            registry.register_collector(Box::new(LogBytes(wal)));
        }
        registry.register(
            "berth_proposer_batch_commands",
            "Client commands in each batch this replica proposed (group commit)",
            replica.batch_sizes().clone(),
        );
        let peers = replica.peer_stats();
        registry.register(
            "berth_peer_rpc_duration_seconds",
            "Time of each Raft call to a peer (append_entries, vote, install_snapshot)",
            peers.latency.clone(),
        );
        registry.register(
            "berth_peer_rpc_errors",
            "Raft calls to a peer that failed: unreachable, network or remote",
            peers.errors.clone(),
        );
        registry.register(
            "berth_peer_connections_opened",
            "Connections (TCP and TLS handshake) this replica opened for Raft calls to a peer",
            peers.connections.clone(),
        );
        registry.register_collector(Box::new(ReplicaCollector(replica.clone())));
        registry.register_collector(Box::new(SnapshotBytes(snapshots)));
        registry.register_collector(Box::new(ProcessCollector));
        registry
            .register_collector(Box::new(TenantCollector { replica: replica.clone(), tenants }));
        Metrics { registry, requests }
    }

    /// What the API's `ObserveLayer` records into.
    pub fn requests(&self) -> Arc<RequestMetrics> {
        self.requests.clone()
    }

    /// The OpenMetrics text of every metric now (`None` if a metric could not be written).
    pub fn encode(&self) -> Option<String> {
        let mut text = String::new();
        match prometheus_client::encoding::text::encode(&mut text, &self.registry) {
            Ok(()) => Some(text),
            Err(e) => {
                tracing::warn!(error = %e, "writing the metrics failed");
                None
            }
        }
    }
}

/// `value` as a gauge. prometheus-client writes integer gauges as `i64` and fails above its
/// maximum (a hard limit may be any u64): such a value is written as `i64::MAX`.
fn clamped(value: u64) -> ConstGauge<i64> {
    ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX))
}

/// One gauge family written at a scrape: a descriptor, then one value per label set.
fn gauges<S: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    values: impl IntoIterator<Item = (S, u64)>,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in values {
        clamped(value).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

/// A gauge without labels.
fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    clamped(value).encode(encoder.encode_descriptor(name, help, None, MetricType::Gauge)?)
}

#[derive(Debug)]
struct LogBytes(Arc<crate::storage::WalStats>);

impl Collector for LogBytes {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        gauge(
            &mut encoder,
            "berth_replica_log_bytes",
            "Bytes of records in the Raft log file",
            self.0.bytes.load(Ordering::Relaxed),
        )
    }
}

/// The CPU time this process has spent, user and system, in milliseconds (from
/// `/proc/self/stat`, in Linux's fixed 100 ticks a second; `None` elsewhere).
pub fn process_cpu_ms() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count from after it.
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace();
    // Fields 14 and 15 (utime, stime); after the name, field 3 comes first.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime.saturating_add(stime).saturating_mul(10))
}

/// What the replica's process holds and has spent, read at each scrape: resident memory, open
/// files and CPU time (from `/proc/self`, so on Linux only; elsewhere they are left out).
/// `berth stress soak` fits a slope to the first two; `berth bench --metrics` divides the CPU
/// time by the operations it ran.
#[derive(Debug)]
struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if let Some(ms) = process_cpu_ms() {
            let seconds = Duration::from_millis(ms).as_secs_f64();
            ConstCounter::new(seconds).encode(encoder.encode_descriptor(
                "process_cpu_seconds",
                "CPU time the process has spent, user and system",
                None,
                MetricType::Counter,
            )?)?;
        }
        let resident = std::fs::read_to_string("/proc/self/status").ok().and_then(|status| {
            let kib = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
            let kib = kib.trim().strip_suffix("kB")?.trim().parse::<u64>().ok()?;
            Some(kib.saturating_mul(1024))
        });
        if let Some(bytes) = resident {
            gauge(&mut encoder, "process_resident_memory_bytes", "Resident memory", bytes)?;
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            let open = u64::try_from(fds.count()).unwrap_or(u64::MAX);
            gauge(&mut encoder, "process_open_fds", "Open file descriptors", open)?;
        }
        Ok(())
    }
}

#[derive(Debug)]
struct SnapshotBytes(SnapshotStore);

impl Collector for SnapshotBytes {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        gauge(
            &mut encoder,
            "berth_replica_snapshot_bytes",
            "Bytes of the snapshot the replica keeps (0: none yet)",
            self.0.bytes(),
        )
    }
}

/// The replica's Raft view, read at each scrape.
struct ReplicaCollector(Replica);

impl std::fmt::Debug for ReplicaCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ReplicaCollector({})", self.0.id())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RoleLabels {
    role: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FollowerLabels {
    follower: u64,
}

impl Collector for ReplicaCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use openraft::ServerState;
        let replica = &self.0;
        let m = replica.raft().metrics().borrow().clone();
        let roles = [
            (ServerState::Leader, "leader"),
            (ServerState::Follower, "follower"),
            (ServerState::Candidate, "candidate"),
            (ServerState::Learner, "learner"),
            (ServerState::Shutdown, "shutdown"),
        ];
        gauges(
            &mut encoder,
            "berth_replica_role",
            "1 for the replica's Raft role, 0 for the others",
            roles.map(|(state, role)| (RoleLabels { role }, u64::from(m.state == state))),
        )?;
        gauge(
            &mut encoder,
            "berth_replica_snapshot_state_bytes",
            "Bytes of the snapshot the replica keeps that are its replicated state, not the usage store's changes since its base (0: none yet)",
            replica.snapshot_state_bytes(),
        )?;
        gauge(
            &mut encoder,
            "berth_replica_term",
            "The replica's current Raft term",
            m.current_term,
        )?;
        gauge(
            &mut encoder,
            "berth_replica_leader_id",
            "The leader this replica knows of (0: none)",
            m.current_leader.unwrap_or(0),
        )?;
        let last_log = m.last_log_index.unwrap_or(0);
        let applied = m.last_applied.map_or(0, |l| l.index);
        gauge(
            &mut encoder,
            "berth_replica_last_log_index",
            "Last entry in the replica's log",
            last_log,
        )?;
        gauge(
            &mut encoder,
            "berth_replica_applied_index",
            "Last entry the replica applied",
            applied,
        )?;
        gauge(
            &mut encoder,
            "berth_replica_apply_lag_entries",
            "Entries in the replica's log not applied yet",
            last_log.saturating_sub(applied),
        )?;
        gauge(
            &mut encoder,
            "berth_replica_snapshot_index",
            "Last entry in the replica's latest snapshot",
            m.snapshot.map_or(0, |l| l.index),
        )?;
        gauge(
            &mut encoder,
            "berth_replica_purged_index",
            "Last entry purged from the replica's log (the log holds the entries after it)",
            m.purged.map_or(0, |l| l.index),
        )?;
        gauge(
            &mut encoder,
            "berth_replica_fail_stopped",
            "1 once the replica stopped for good on a storage or apply failure",
            u64::from(replica.fail_stop().reason().is_some()),
        )?;
        let replication = m.replication.as_ref().map(|r| {
            r.iter()
                .filter(|(id, _)| **id != m.id)
                .map(|(id, matched)| (*id, matched.map_or(0, |l| l.index)))
                .collect::<BTreeMap<u64, u64>>()
        });
        if let Some(followers) = replication {
            gauges(
                &mut encoder,
                "berth_replica_follower_matched_index",
                "On the leader: the last entry each follower holds",
                followers.iter().map(|(id, matched)| (FollowerLabels { follower: *id }, *matched)),
            )?;
            gauges(
                &mut encoder,
                "berth_replica_follower_lag_entries",
                "On the leader: entries each follower lacks",
                followers.iter().map(|(id, matched)| {
                    (FollowerLabels { follower: *id }, last_log.saturating_sub(*matched))
                }),
            )?;
        }
        Ok(())
    }
}

/// Each tenant's usage, quota and queue in this replica's state, read at each scrape.
struct TenantCollector {
    replica: Replica,
    tenants: Arc<TenantLabels>,
}

impl std::fmt::Debug for TenantCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TenantCollector({})", self.replica.id())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, Ord, PartialOrd, EncodeLabelSet)]
struct TenantLabel {
    tenant_id: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, Ord, PartialOrd, EncodeLabelSet)]
struct DimensionLabels {
    tenant_id: Arc<str>,
    dimension: &'static str,
}

/// One tenant label's figures (a tenant's own, or the sum of those counted as `_other`).
#[derive(Default)]
struct TenantFigures {
    usage: BTreeMap<Dimension, u64>,
    /// Hard limits, for a tenant with its own label only (a sum of limits means nothing).
    limits: BTreeMap<Dimension, u64>,
    queued: u64,
    oldest_queued_at: Option<UnixMillis>,
    preempted: u64,
}

impl Collector for TenantCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let (now, mut figures) = self.replica.read_local(|r| {
            let s = &r.scheduler;
            let state = s.state();
            let mut figures: BTreeMap<Arc<str>, TenantFigures> = BTreeMap::new();
            for (id, tenant) in &state.tenants {
                let label = self.tenants.label(Some(id));
                let own = &*label == id.0.as_str();
                let f = figures.entry(label).or_default();
                for dimension in Dimension::ALL {
                    let used = f.usage.entry(dimension).or_default();
                    *used = used.saturating_add(tenant.usage.total.get(dimension));
                }
                if own {
                    let effective = s.effective_quota(id);
                    for dimension in Dimension::ALL {
                        if let Some(limit) = effective.total.get(dimension) {
                            f.limits.insert(dimension, limit);
                        }
                    }
                }
            }
            let mut owner: Option<(&TenantId, Arc<str>)> = None;
            for ((tenant, _), queued) in &state.queue {
                let label = match &owner {
                    Some((t, label)) if *t == tenant => label.clone(),
                    _ => {
                        let label = self.tenants.label(Some(tenant));
                        owner = Some((tenant, label.clone()));
                        label
                    }
                };
                let f = figures.entry(label).or_default();
                f.queued += 1;
                f.oldest_queued_at = Some(match f.oldest_queued_at {
                    Some(at) => at.min(queued.queued_at),
                    None => queued.queued_at,
                });
            }
            (s.now(), figures)
        });
        for (tenant, preempted) in self.replica.preemptions() {
            let f = figures.entry(self.tenants.label(Some(&tenant))).or_default();
            f.preempted = f.preempted.saturating_add(preempted);
        }
        let per_dimension = |pick: fn(&TenantFigures) -> &BTreeMap<Dimension, u64>| {
            figures
                .iter()
                .flat_map(move |(label, f)| {
                    pick(f).iter().map(move |(dimension, value)| {
                        (
                            DimensionLabels {
                                tenant_id: label.clone(),
                                dimension: dimension.name(),
                            },
                            *value,
                        )
                    })
                })
                .collect::<Vec<_>>()
        };
        gauges(
            &mut encoder,
            "berth_tenant_usage",
            "What the tenant holds, per quota dimension (cpu_millis, memory_mib, instances, jobs)",
            per_dimension(|f| &f.usage),
        )?;
        gauges(
            &mut encoder,
            "berth_tenant_quota_limit",
            "The tenant's effective hard limit per quota dimension, where one is set",
            per_dimension(|f| &f.limits),
        )?;
        gauges(
            &mut encoder,
            "berth_tenant_queue_depth",
            "The tenant's placements waiting in the queue",
            figures.iter().map(|(label, f)| (TenantLabel { tenant_id: label.clone() }, f.queued)),
        )?;
        let mut preemptions = encoder.encode_descriptor(
            "berth_tenant_preemptions",
            "The tenant's placements preempted by entries this replica applied since it started",
            None,
            MetricType::Counter,
        )?;
        for (label, f) in figures.iter().filter(|(_, f)| f.preempted > 0) {
            let labels = TenantLabel { tenant_id: label.clone() };
            ConstCounter::new(f.preempted).encode(preemptions.encode_family(&labels)?)?;
        }
        let mut oldest = encoder.encode_descriptor(
            "berth_tenant_queue_oldest_wait_seconds",
            "How long the tenant's longest-waiting queued placement has waited, in log time",
            None,
            MetricType::Gauge,
        )?;
        for (label, f) in &figures {
            let Some(queued_at) = f.oldest_queued_at else { continue };
            let waited = Duration::from_millis(now.0.saturating_sub(queued_at.0)).as_secs_f64();
            let labels = TenantLabel { tenant_id: label.clone() };
            ConstGauge::new(waited).encode(oldest.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

/// Serves `GET /metrics` (HTTP/1.1, plaintext, one request per connection) on every
/// connection `incoming` yields, at most `SCRAPES_MAX` at once, until `stopped` resolves.
pub async fn serve<I, IO, IE>(
    metrics: Arc<Metrics>,
    incoming: I,
    stopped: impl std::future::Future<Output = ()> + Send + 'static,
) where
    I: Stream<Item = Result<IO, IE>> + Send + 'static,
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    IE: std::fmt::Display + Send + 'static,
{
    let scrapes = Arc::new(Semaphore::new(SCRAPES_MAX));
    let mut incoming = std::pin::pin!(incoming);
    let mut stopped = std::pin::pin!(stopped);
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let Some(io) = crate::network::accept(&mut incoming, &mut stopped, "metrics").await else {
            break;
        };
        let permit = tokio::select! {
            _ = &mut stopped => break,
            permit = scrapes.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let metrics = metrics.clone();
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let metrics = metrics.clone();
                async move { Ok::<_, std::convert::Infallible>(answer(&metrics, &request)) }
            });
            let served = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .keep_alive(false)
                .serve_connection(hyper_util::rt::TokioIo::new(io), service);
            match tokio::time::timeout(CONNECTION_TIMEOUT, served).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!(error = %e, "metrics connection ended with an error"),
                Err(_) => {
                    tracing::debug!("metrics connection cut off after {CONNECTION_TIMEOUT:?}")
                }
            }
            drop(permit);
        });
        while connections.try_join_next().is_some() {}
    }
    connections.shutdown().await;
}

fn answer<B>(metrics: &Metrics, request: &hyper::Request<B>) -> hyper::Response<Full<Bytes>> {
    let (status, content_type, body) = match (request.method(), request.uri().path()) {
        (&Method::GET, "/metrics") => match metrics.encode() {
            Some(text) => (StatusCode::OK, CONTENT_TYPE, text),
            None => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain",
                "the metrics could not be written; see the replica's log\n".to_owned(),
            ),
        },
        (_, "/metrics") => {
            (StatusCode::METHOD_NOT_ALLOWED, "text/plain", "only GET /metrics\n".to_owned())
        }
        _ => (StatusCode::NOT_FOUND, "text/plain", "metrics are at /metrics\n".to_owned()),
    };
    let mut response = hyper::Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = hyper::header::HeaderValue::from_str(content_type) {
        response.headers_mut().insert(hyper::header::CONTENT_TYPE, value);
    }
    response
}
