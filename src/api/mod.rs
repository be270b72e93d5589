//! The public gRPC API (`berth.v1`): validation, authentication and tenant scoping in front of
//! the replica. Writes go through `Replica::propose` (to the leader, exactly once per request
//! id); reads are linearizable unless `stale_ok`. Business rejections become statuses in one
//! place (`status.rs`).
//!
//! One file per service (`tenants`, `workers`, `placements` for `Scheduler`, `leases`,
//! `billing`, `cluster`); each handler authorizes and validates, writes or reads through `Api`,
//! and converts (`convert.rs`). The core's wide answers are narrowed in one place
//! (`answer.rs`).

mod answer;
pub mod auth;
mod billing;
mod cluster;
pub mod connection;
pub mod convert;
mod heartbeats;
mod leases;
mod limits;
pub mod observe;
mod placements;
pub mod status;
mod streams;
mod tenants;
mod workers;

pub mod pb {
    #![allow(clippy::all, clippy::pedantic, missing_docs)]
    tonic::include_proto!("berth.v1");

    /// The public API's descriptors (served by reflection; the peer protocol is not in it).
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("berth_api_descriptor");
}

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tonic::Status;

use crate::raft::replica::{Consistency, Replica};
use crate::raft::types::Proposal;
use crate::scheduler::{Command, Response, Scheduler, TokenHash};

pub use auth::{hash_token, Caller};
pub use cluster::BACKUP_CHUNK_BYTES;
pub use streams::{STREAM_PROGRESS_INTERVAL, STREAM_SILENCE_MAX, WATCH_KINDS_MAX};

/// Largest request any RPC accepts, in encoded bytes; tonic refuses a larger one
/// (OUT_OF_RANGE) before decoding it, let alone proposing it. The largest legitimate
/// requests (a Place or Reserve with every label and rule at its bound, a SetQuota with every
/// pool, a cost allocation with every part) need well under half of it.
pub const API_REQUEST_BYTES_MAX: usize = 1024 * 1024;

/// Most time a read may take.
const READ_DEADLINE: Duration = Duration::from_secs(5);

/// The API of one replica; every service is implemented on it.
#[derive(Clone)]
pub struct Api {
    replica: Replica,
    admin: TokenHash,
    /// The replica's budget of unknown-token lookups, shared by every connection.
    lookups: Arc<auth::LookupBudget>,
    /// Gathers heartbeats into one command per batch.
    heartbeats: heartbeats::Batcher,
    /// Tenants' read buckets on this replica.
    reads: Arc<limits::ReadLimiter>,
}

impl Api {
    pub fn new(replica: Replica, admin: TokenHash) -> Self {
        let heartbeats = heartbeats::Batcher::start(replica.clone());
        let lookups = Arc::new(auth::LookupBudget::per_replica());
        Api { replica, admin, lookups, heartbeats, reads: Arc::default() }
    }

    /// Who `token` makes its bearer, checked as for an RPC (the web console signs in with it).
    pub(crate) async fn caller_of(&self, token: &str) -> Result<Caller, Status> {
        let mut request = tonic::Request::new(());
        let value = format!("Bearer {token}").parse().map_err(|_| auth::unauthenticated())?;
        request.metadata_mut().insert("authorization", value);
        self.caller(&request).await
    }

    async fn caller<T>(&self, request: &tonic::Request<T>) -> Result<Caller, Status> {
        let caller =
            auth::authenticate(request, &self.admin, &self.replica, &self.lookups, READ_DEADLINE)
                .await?;
        observe::caller(&caller);
        Ok(caller)
    }

    /// Proposes a command and returns its response with where it landed in the log.
    /// A tenant caller's token travels with the command: the state machine refuses the
    /// command if the token was revoked after this replica checked it. A command that takes
    /// tokens away is answered only once no replica can still vouch for them from state
    /// older than it (`auth::revocation_settled`).
    async fn write(
        &self,
        caller: &Caller,
        request_id: &str,
        command: Command,
    ) -> Result<(Response, pb::WriteInfo), Status> {
        let request_id = auth::request_id(request_id)?;
        observe::write(&request_id.0);
        // The core checks the same bounds again when it applies the command; checking here
        // keeps a command it would refuse out of the log.
        command.validate().map_err(|rejection| status::rejection(&rejection))?;
        if let Some(tenant) = command.tenant() {
            observe::tenant(tenant);
        }
        let token = caller.token();
        let revokes = auth::takes_tokens_away(&command);
        let applied = self
            .replica
            .propose(Proposal { request_id: Some(request_id), command, token })
            .await
            .map_err(|e| status::write_error(&e))?;
        observe::log_index(applied.log_index.0);
        if revokes {
            auth::revocation_settled().await;
        }
        let info = pb::WriteInfo {
            log_index: applied.log_index.0,
            applied_at_ms: applied.applied_at.0,
            replayed: applied.replayed,
            quota_events: applied.events.iter().map(convert::quota_event).collect(),
        };
        match applied.result {
            Ok(response) => Ok((response, info)),
            Err(rejection) => Err(status::rejection(&rejection)),
        }
    }

    /// Reads with the requested freshness. A tenant caller's token is checked again against
    /// the state the read sees, so a token whose revocation was answered before the read
    /// began never reads, whichever replica answers: a linearizable read sees the revocation;
    /// a stale one is served only while this replica holds a vouch lease (its state is recent
    /// enough, see `TOKEN_VOUCH_LEASE`), else it is refused (`CANNOT_VOUCH_FOR_TOKEN`). The
    /// admin token is never revoked: admin stale reads need no leader.
    async fn read<T>(
        &self,
        caller: &Caller,
        options: Option<pb::ReadOptions>,
        f: impl FnOnce(&Scheduler) -> T,
    ) -> Result<T, Status> {
        if let Caller::Tenant(tenant, _) = caller {
            let lineage = self.replica.read_local(|s| s.scheduler.rate_lineage(tenant));
            self.reads
                .take(&lineage, Instant::now())
                .map_err(|rejection| status::rejection(&rejection))?;
        }
        let consistency = if options.is_some_and(|o| o.stale_ok) {
            Consistency::Stale
        } else {
            Consistency::Linearizable
        };
        if consistency == Consistency::Stale && caller.token().is_some() {
            self.replica
                .vouch_lease(Instant::now() + READ_DEADLINE)
                .await
                .map_err(|e| auth::cannot_vouch(&e))?;
        }
        self.replica
            .read(consistency, READ_DEADLINE, |s| {
                auth::still_valid(caller, &s.scheduler).then(|| f(&s.scheduler))
            })
            .await
            .map_err(|e| status::read_error(&e))?
            .ok_or_else(auth::unauthenticated)
    }

    /// All services, health and reflection, ready to serve on the API port.
    pub fn routes(
        self,
    ) -> Result<tonic::service::Routes, Box<dyn std::error::Error + Send + Sync>> {
        let (reporter, health) = tonic_health::server::health_reporter();
        // Both reflection versions: grpcurl speaks v1, many generated clients still v1alpha.
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()?;
        let reflection_alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1alpha()?;
        let names = [
            "berth.v1.Tenants",
            "berth.v1.Workers",
            "berth.v1.Scheduler",
            "berth.v1.Leases",
            "berth.v1.Billing",
            "berth.v1.Cluster",
        ];
        let fail_stop = self.replica.fail_stop().clone();
        tokio::spawn(async move {
            for status in
                [tonic_health::ServingStatus::Serving, tonic_health::ServingStatus::NotServing]
            {
                reporter.set_service_status("", status).await;
                for name in names {
                    reporter.set_service_status(name, status).await;
                }
                // Serving until the replica fail-stops.
                fail_stop.stopped().await;
            }
        });
        let limit = API_REQUEST_BYTES_MAX;
        Ok(tonic::service::Routes::new(health.max_decoding_message_size(limit))
            .add_service(reflection.max_decoding_message_size(limit))
            .add_service(reflection_alpha.max_decoding_message_size(limit))
            .add_service(
                pb::tenants_server::TenantsServer::new(self.clone())
                    .max_decoding_message_size(limit),
            )
            .add_service(
                pb::workers_server::WorkersServer::new(self.clone())
                    .max_decoding_message_size(limit),
            )
            .add_service(
                pb::scheduler_server::SchedulerServer::new(self.clone())
                    .max_decoding_message_size(limit),
            )
            .add_service(
                pb::leases_server::LeasesServer::new(self.clone()).max_decoding_message_size(limit),
            )
            .add_service(
                pb::billing_server::BillingServer::new(self.clone())
                    .max_decoding_message_size(limit),
            )
            .add_service(
                pb::cluster_server::ClusterServer::new(self).max_decoding_message_size(limit),
            ))
    }
}
