//! Requests no cluster may accept, sent among the ordinary workload: extreme numbers, ids and
//! labels past their bounds, oversized request ids. Each must be refused (`fail`) with an error
//! small enough to read, change nothing, and leave every replica serving; the history checker
//! fails the seed on any of them acknowledged, and on an error that echoes its input.

use berth::client::{self, pb, Client};

use crate::cluster::now_ms;
use crate::history::{OpKind, Outcome};
use crate::ops::{outcome_of, Recorder};
use berth_rng::Rng;

/// The largest error (message plus details) a refusal may carry: a client must be able to read
/// it, whatever it sent.
pub const ERROR_BYTES_MAX: usize = 1_024;

/// The shapes, by name.
const SHAPES: [&str; 8] = [
    "worker-capacity-u64-max",
    "place-resources-u64-max",
    "placement-id-5kb",
    "request-id-120kb",
    "tenant-id-10k-chars",
    "reserve-ttl-u64-max",
    "lease-holder-10kb",
    "place-labels-past-bound",
];

/// Sends one hostile request (of a shape drawn from `rng`) and records what came back.
pub(crate) async fn send(
    c: &Client,
    rec: &Recorder,
    request_id: String,
    tenant: &str,
    rng: &mut Rng,
) -> Outcome {
    let pick = usize::try_from(rng.below(SHAPES.len() as u64)).unwrap_or(0);
    let shape = SHAPES[pick];
    let kind = OpKind::Hostile { shape: shape.into() };
    let invoked = now_ms();
    let spec = |id: String, resources: pb::Resources| pb::PlacementSpec {
        placement_id: id,
        count: 1,
        resources: Some(resources),
        ..Default::default()
    };
    let small = pb::Resources { cpu_millis: 100, memory_mib: 64 };
    let place = |request_id: String, tenant: String, spec: pb::PlacementSpec| pb::PlaceRequest {
        request_id,
        tenant_id: tenant,
        spec: Some(spec),
        ..Default::default()
    };
    let id = format!("hx-{request_id}");
    let answer = match shape {
        "worker-capacity-u64-max" => {
            let r = pb::RegisterWorkerRequest {
                request_id,
                worker_id: id,
                pool: String::new(),
                capacity: Some(pb::Resources { cpu_millis: u64::MAX, memory_mib: u64::MAX - 1 }),
                ..Default::default()
            };
            c.call(r, |ch, r| async move { client::workers(ch).register_worker(r).await })
                .await
                .map(drop)
        }
        "place-resources-u64-max" => {
            let mut s = spec(id, pb::Resources { cpu_millis: u64::MAX, memory_mib: u64::MAX });
            s.count = u32::MAX;
            let r = place(request_id, tenant.into(), s);
            c.call(r, |ch, r| async move { client::scheduler(ch).place(r).await }).await.map(drop)
        }
        "placement-id-5kb" => {
            let r = place(request_id, tenant.into(), spec("p".repeat(5_000), small));
            c.call(r, |ch, r| async move { client::scheduler(ch).place(r).await }).await.map(drop)
        }
        "request-id-120kb" => {
            let r = place("r".repeat(120_000), tenant.into(), spec(id, small));
            c.call(r, |ch, r| async move { client::scheduler(ch).place(r).await }).await.map(drop)
        }
        "tenant-id-10k-chars" => {
            let r = place(request_id, "t".repeat(10_000), spec(id, small));
            c.call(r, |ch, r| async move { client::scheduler(ch).place(r).await }).await.map(drop)
        }
        "reserve-ttl-u64-max" => {
            let r = pb::ReserveRequest {
                request_id,
                tenant_id: tenant.into(),
                spec: Some(spec(id, small)),
                ttl_ms: u64::MAX,
                ..Default::default()
            };
            c.call(r, |ch, r| async move { client::scheduler(ch).reserve(r).await }).await.map(drop)
        }
        "lease-holder-10kb" => {
            let r = pb::AcquireRequest {
                request_id,
                tenant_id: tenant.into(),
                name: id,
                holder: "h".repeat(10_000),
                ttl_ms: 1_000,
            };
            c.call(r, |ch, r| async move { client::leases(ch).acquire(r).await }).await.map(drop)
        }
        _ => {
            let mut s = spec(id, small);
            s.labels = (0..1_000).map(|i| (format!("k{i}"), "v".into())).collect();
            let r = place(request_id, tenant.into(), s);
            c.call(r, |ch, r| async move { client::scheduler(ch).place(r).await }).await.map(drop)
        }
    };
    let outcome = match answer {
        Ok(()) => Outcome::written(None),
        Err(status) if status.message().len() + status.details().len() > ERROR_BYTES_MAX => {
            Outcome::Fail {
                reason: format!(
                    "ERROR_TOO_LARGE: {} bytes of message and details",
                    status.message().len() + status.details().len()
                ),
            }
        }
        Err(status) => outcome_of(&status),
    };
    rec.record(kind, invoked, outcome)
}
