//! What every API request did, for operators: counted in the replica's metrics (per tenant and
//! RPC: requests, errors by code and reason, latency) and logged (every request at debug, every
//! refusal at info, with `tenant_id`, `request_id`, `rpc`, `code`, `reason` and `log_index`).
//!
//! `Observe` wraps the whole API service. While a request's handler runs, the handler notes
//! what only it learns — the tenant the request is about (`caller`, `tenant`), its request id
//! and log index (`write`, `log_index`), the reason of the error it returns (`reason`) — in a
//! slot that lives as long as the request (a task-local of the handler's future); when the
//! response is ready, `Observe` reads the slot and the response's gRPC status and records
//! both. Outside a request (in-process calls, the simulation) noting does nothing.
//!
//! Every label value is bounded: `rpc` is one of the methods the server serves (`_unknown`
//! otherwise), `tenant_id` one of the first `tenants_max` tenants this replica saw (`_other`
//! beyond, `_none` for a request about no one tenant), `code` and `reason` come from the code.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use prost::Message;
use tonic::codegen::http;

use super::Caller;
use crate::scheduler::TenantId;

/// The tenants a replica's metrics name by default; later ones are counted as `_other`.
pub const METRICS_TENANTS_DEFAULT: usize = 100;
/// The `tenant_id` of tenants past the cap.
pub const TENANT_OTHER: &str = "_other";
/// The `tenant_id` of a request about no one tenant (refused before its tenant was known, or
/// an operator's request about the whole cluster).
pub const TENANT_NONE: &str = "_none";
/// The `rpc` of a path the server does not serve.
pub const RPC_UNKNOWN: &str = "_unknown";
/// The `reason` of a request dropped before it was answered (code `CANCELLED`).
pub const REASON_DROPPED: &str = "DROPPED";

/// Request latency buckets, in seconds: 100 µs to about 6.5 s, doubling.
fn latency_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.0001, 2.0, 17)
}

/// What a handler noted about its request.
#[derive(Default)]
struct Noted {
    tenant: Option<TenantId>,
    /// The tenant is the caller's own (a tenant token): a request naming another tenant is
    /// still counted as the caller's, never as the tenant it tried to reach.
    caller_bound: bool,
    request_id: Option<String>,
    log_index: Option<u64>,
    reason: Option<String>,
}

tokio::task_local! {
    static NOTED: RefCell<Noted>;
}

fn note(f: impl FnOnce(&mut Noted)) {
    let _ = NOTED.try_with(|noted| f(&mut noted.borrow_mut()));
}

/// The request's caller is known: a tenant caller's requests are counted as its tenant's.
pub(super) fn caller(caller: &Caller) {
    if let Caller::Tenant(tenant, _) = caller {
        note(|n| {
            n.tenant = Some(tenant.clone());
            n.caller_bound = true;
        });
    }
}

/// The request is about `tenant` (unless its caller is a tenant, which it is about instead).
pub(super) fn tenant(tenant: &TenantId) {
    note(|n| {
        if !n.caller_bound {
            n.tenant = Some(tenant.clone());
        }
    });
}

/// The request proposes a write with this request id.
pub(super) fn write(request_id: &str) {
    note(|n| n.request_id = Some(request_id.to_owned()));
}

/// The request's write landed at this log index (accepted or refused by the state machine).
pub(super) fn log_index(index: u64) {
    note(|n| n.log_index = Some(index));
}

/// The request is answered with an error of this reason.
pub(super) fn reason(reason: &str) {
    note(|n| n.reason = Some(reason.to_owned()));
}

/// Label values for tenants: each tenant's own id for the first `max` tenants seen, then
/// `_other`. Ids are kept for the life of the replica, so a tenant's series never changes name.
#[derive(Debug)]
pub struct TenantLabels {
    max: usize,
    given: Mutex<BTreeMap<TenantId, Arc<str>>>,
    other: Arc<str>,
    none: Arc<str>,
}

impl TenantLabels {
    pub fn new(max: usize) -> Self {
        TenantLabels {
            max,
            given: Mutex::new(BTreeMap::new()),
            other: Arc::from(TENANT_OTHER),
            none: Arc::from(TENANT_NONE),
        }
    }

    /// The label of `tenant` (`_none` for none).
    pub fn label(&self, tenant: Option<&TenantId>) -> Arc<str> {
        let Some(tenant) = tenant else { return self.none.clone() };
        let mut given = self.given.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(label) = given.get(tenant) {
            return label.clone();
        }
        if given.len() >= self.max {
            return self.other.clone();
        }
        let label: Arc<str> = Arc::from(tenant.0.as_str());
        given.insert(tenant.clone(), label.clone());
        label
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    tenant_id: Arc<str>,
    rpc: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    tenant_id: Arc<str>,
    rpc: Arc<str>,
    code: &'static str,
    reason: Arc<str>,
}

#[derive(Clone)]
struct LatencyHistogram;

impl MetricConstructor<Histogram> for LatencyHistogram {
    fn new_metric(&self) -> Histogram {
        Histogram::new(latency_buckets())
    }
}

/// The API's request metrics on one replica.
#[derive(Debug)]
pub struct RequestMetrics {
    tenants: Arc<TenantLabels>,
    /// Label of each path served, by path.
    rpcs: BTreeMap<String, Arc<str>>,
    unknown_rpc: Arc<str>,
    /// Reasons seen, interned (they come from the code, so they are few).
    reasons: Mutex<BTreeSet<Arc<str>>>,
    requests: Family<RequestLabels, Counter>,
    errors: Family<ErrorLabels, Counter>,
    latency: Family<RequestLabels, Histogram, LatencyHistogram>,
}

impl RequestMetrics {
    /// Request metrics registered in `registry`, naming tenants by `tenants`.
    pub fn register(registry: &mut Registry, tenants: Arc<TenantLabels>) -> Arc<RequestMetrics> {
        let metrics = Arc::new(RequestMetrics {
            tenants,
            rpcs: served_rpcs(),
            unknown_rpc: Arc::from(RPC_UNKNOWN),
            reasons: Mutex::new(BTreeSet::new()),
            requests: Family::default(),
            errors: Family::default(),
            latency: Family::new_with_constructor(LatencyHistogram),
        });
        registry.register(
            "berth_api_requests",
            "API requests answered, by tenant and RPC",
            metrics.requests.clone(),
        );
        registry.register(
            "berth_api_errors",
            "API requests answered with an error, by tenant, RPC, gRPC code and reason",
            metrics.errors.clone(),
        );
        registry.register(
            "berth_api_request_duration_seconds",
            "Time from a request's arrival to its response (for a stream, to its opening)",
            metrics.latency.clone(),
        );
        metrics
    }

    fn rpc(&self, path: &str) -> Arc<str> {
        self.rpcs.get(path).cloned().unwrap_or_else(|| self.unknown_rpc.clone())
    }

    fn intern_reason(&self, reason: &str) -> Arc<str> {
        let mut reasons = self.reasons.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(known) = reasons.get(reason) {
            return known.clone();
        }
        let interned: Arc<str> = Arc::from(reason);
        reasons.insert(interned.clone());
        interned
    }

    fn record(&self, rpc: Arc<str>, code: tonic::Code, noted: Noted, took: Duration) {
        let labels = RequestLabels { tenant_id: self.tenants.label(noted.tenant.as_ref()), rpc };
        self.requests.get_or_create(&labels).inc();
        self.latency.get_or_create(&labels).observe(took.as_secs_f64());
        let tenant_id = noted.tenant.as_ref().map_or(TENANT_NONE, |t| t.0.as_str());
        let request_id = noted.request_id.as_deref().unwrap_or("");
        let log_index = noted.log_index.unwrap_or(0);
        if code == tonic::Code::Ok {
            tracing::debug!(
                target: "berth::api",
                rpc = &*labels.rpc,
                tenant_id,
                request_id,
                log_index,
                micros = took.as_micros() as u64,
                "request"
            );
            return;
        }
        let code_name = code_name(code);
        let reason = noted.reason.as_deref().unwrap_or(code_name);
        tracing::info!(
            target: "berth::api",
            rpc = &*labels.rpc,
            tenant_id,
            request_id,
            code = code_name,
            reason,
            log_index,
            micros = took.as_micros() as u64,
            "refused"
        );
        let labels = ErrorLabels {
            tenant_id: labels.tenant_id,
            rpc: labels.rpc,
            code: code_name,
            reason: self.intern_reason(reason),
        };
        self.errors.get_or_create(&labels).inc();
    }
}

/// The label of every method the API port serves, by its path: `Service/Method` for Berth's
/// own services, the full name for health and reflection.
fn served_rpcs() -> BTreeMap<String, Arc<str>> {
    let sets = [
        super::pb::FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
    ];
    let mut rpcs = BTreeMap::new();
    for set in sets {
        let Ok(set) = prost_types::FileDescriptorSet::decode(set) else { continue };
        for file in set.file {
            let package = file.package.unwrap_or_default();
            for service in file.service {
                let service_name = service.name.unwrap_or_default();
                let full = format!("{package}.{service_name}");
                for method in service.method {
                    let method = method.name.unwrap_or_default();
                    let label = if package == "berth.v1" {
                        format!("{service_name}/{method}")
                    } else {
                        format!("{full}/{method}")
                    };
                    rpcs.insert(format!("/{full}/{method}"), Arc::from(label.as_str()));
                }
            }
        }
    }
    rpcs
}

/// The UPPER_SNAKE name of a gRPC code.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

/// The gRPC status of a response whose headers carry it (an error, or a trailers-only
/// answer); `Ok` otherwise (a unary answer's OK comes in its trailers).
fn status_of<B>(response: &http::Response<B>) -> tonic::Code {
    response
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map_or(tonic::Code::Ok, tonic::Code::from_i32)
}

/// The layer that observes every request of the service it wraps.
#[derive(Clone)]
pub struct ObserveLayer {
    metrics: Arc<RequestMetrics>,
}

impl ObserveLayer {
    pub fn new(metrics: Arc<RequestMetrics>) -> Self {
        ObserveLayer { metrics }
    }
}

impl<S> tower::Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Observe<S> {
        Observe { inner, metrics: self.metrics.clone() }
    }
}

/// A service whose requests are observed (`ObserveLayer`).
#[derive(Clone)]
pub struct Observe<S> {
    inner: S,
    metrics: Arc<RequestMetrics>,
}

impl<S, B, R> tower::Service<http::Request<B>> for Observe<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Observed<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let started = Instant::now();
        let rpc = self.metrics.rpc(request.uri().path());
        Observed {
            handled: NOTED.scope(RefCell::new(Noted::default()), self.inner.call(request)),
            started,
            rpc: Some(rpc),
            metrics: self.metrics.clone(),
        }
    }
}

pin_project_lite::pin_project! {
    /// A request being handled, with its slot for notes; recorded when its response is ready,
    /// or as `CANCELLED` if it is dropped before (the client went away, or its deadline
    /// passed: tonic's deadline drops the handler).
    pub struct Observed<F: Future> {
        #[pin]
        handled: tokio::task::futures::TaskLocalFuture<RefCell<Noted>, F>,
        started: Instant,
        rpc: Option<Arc<str>>,
        metrics: Arc<RequestMetrics>,
    }

    impl<F: Future> PinnedDrop for Observed<F> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            if let Some(rpc) = this.rpc.take() {
                let noted = this.handled.take_value().map(RefCell::into_inner).unwrap_or_default();
                let noted = Noted { reason: Some(REASON_DROPPED.to_owned()), ..noted };
                this.metrics.record(rpc, tonic::Code::Cancelled, noted, this.started.elapsed());
            }
        }
    }
}

impl<F, R, E> Future for Observed<F>
where
    F: Future<Output = Result<http::Response<R>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let mut this = self.project();
        let result = std::task::ready!(this.handled.as_mut().poll(cx));
        let noted = this.handled.take_value().map(RefCell::into_inner).unwrap_or_default();
        if let (Ok(response), Some(rpc)) = (&result, this.rpc.take()) {
            this.metrics.record(rpc, status_of(response), noted, this.started.elapsed());
        }
        Poll::Ready(result)
    }
}
