//! A client for the public API: a list of endpoints, failover between them, retries with the
//! same request id (so a retried write is applied at most once), and a deadline per call.
//!
//! Any replica serves any call (followers forward writes to the leader), so failover is simply
//! the next endpoint. Only outcomes that may be transient are retried: UNAVAILABLE,
//! DEADLINE_EXCEEDED, UNKNOWN and transport errors. A write that never got an answer before
//! the deadline is reported as such: its outcome is unknown, retry it with the same id.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

pub use crate::api::pb;
pub use crate::tls::{ClientSecurity, ClientTls};

/// How long opening a connection to one endpoint may take (its TLS handshake has its own).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Deadline for one call, retries included.
    pub deadline: Duration,
    /// Deadline for one attempt against one endpoint.
    pub attempt_timeout: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions { deadline: Duration::from_secs(10), attempt_timeout: Duration::from_secs(3) }
    }
}

pub struct Client {
    channels: Vec<(String, Channel)>,
    token: Option<MetadataValue<tonic::metadata::Ascii>>,
    options: ClientOptions,
    preferred: AtomicUsize,
}

/// A fresh request id: 16 random bytes, hex.
pub fn new_request_id() -> String {
    let mut bytes = [0u8; 16];
    // Without OS randomness, fall back to the clock: still unique enough per process.
    if getrandom::fill(&mut bytes).is_err() {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        bytes.copy_from_slice(&nanos.to_le_bytes());
    }
    crate::raft::replica::hex(&bytes)
}

fn compacted(status: &Status) -> bool {
    use tonic_types::StatusExt;
    status.get_details_error_info().is_some_and(|info| info.reason == "WATCH_COMPACTED")
}

fn retryable(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::DeadlineExceeded | Code::Unknown | Code::Cancelled
    )
}

impl Client {
    /// `endpoints` are `host:port` (or URIs, whose scheme is ignored) of replicas' API ports,
    /// reached over TLS unless `security` is `Insecure`.
    pub fn new(
        endpoints: &[String],
        token: Option<&str>,
        security: &ClientSecurity,
        options: ClientOptions,
    ) -> anyhow::Result<Client> {
        anyhow::ensure!(!endpoints.is_empty(), "at least one endpoint is needed");
        let connect = crate::network::tcp_connect(CONNECT_TIMEOUT, None);
        let channels = endpoints
            .iter()
            .map(|endpoint| {
                let channel =
                    crate::tls::channel(endpoint, security, connect.clone(), CONNECT_TIMEOUT)
                        .map_err(anyhow::Error::msg)?;
                Ok((endpoint.clone(), channel))
            })
            .collect::<anyhow::Result<_>>()?;
        Client::with_channels(channels, token, options)
    }

    /// A client over channels the caller made (named for error messages); the simulation
    /// passes channels over its simulated network.
    pub fn with_channels(
        channels: Vec<(String, Channel)>,
        token: Option<&str>,
        options: ClientOptions,
    ) -> anyhow::Result<Client> {
        anyhow::ensure!(!channels.is_empty(), "at least one endpoint is needed");
        let token = token
            .map(|t| MetadataValue::try_from(format!("Bearer {t}")))
            .transpose()
            .map_err(|_| anyhow::anyhow!("the token must be printable ASCII"))?;
        Ok(Client { channels, token, options, preferred: AtomicUsize::new(0) })
    }

    /// Calls `rpc` with `message`, failing over between endpoints and retrying transient
    /// failures with the same message (same request id) until the deadline.
    pub async fn call<M, T, F, Fut>(&self, message: M, rpc: F) -> Result<T, Status>
    where
        M: Clone,
        F: Fn(Channel, Request<M>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        self.attempts(message, rpc, true).await
    }

    /// `call`'s loop; `bounded` sends the attempt timeout to the server too (a unary call),
    /// where a stream bounds only its opening.
    async fn attempts<M, T, F, Fut>(&self, message: M, rpc: F, bounded: bool) -> Result<T, Status>
    where
        M: Clone,
        F: Fn(Channel, Request<M>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let until = tokio::time::Instant::now() + self.options.deadline;
        let mut attempt = 0usize;
        let mut last = Status::unavailable("no endpoint answered");
        while tokio::time::Instant::now() < until {
            let index = (self.preferred.load(Ordering::Relaxed) + attempt) % self.channels.len();
            let (name, channel) = &self.channels[index];
            let mut request = Request::new(message.clone());
            if bounded {
                request.set_timeout(self.options.attempt_timeout);
            }
            if let Some(token) = &self.token {
                request.metadata_mut().insert("authorization", token.clone());
            }
            let remaining = until.saturating_duration_since(tokio::time::Instant::now());
            let outcome = tokio::time::timeout(
                remaining.min(self.options.attempt_timeout),
                rpc(channel.clone(), request),
            )
            .await;
            match outcome {
                Ok(Ok(reply)) => {
                    self.preferred.store(index, Ordering::Relaxed);
                    return Ok(reply.into_inner());
                }
                Ok(Err(status)) if !retryable(&status) => return Err(status),
                Ok(Err(status)) => {
                    last = Status::new(status.code(), format!("{name}: {}", status.message()))
                }
                Err(_) => last = Status::deadline_exceeded(format!("{name}: no answer in time")),
            }
            attempt += 1;
            if attempt % self.channels.len() == 0 {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Err(Status::new(
            last.code(),
            format!(
                "{} (if this was a write, its outcome is unknown: retry with the same request id)",
                last.message()
            ),
        ))
    }

    /// Opens a server stream with `rpc`, failing over between endpoints as `call` does. The
    /// stream itself has no deadline (only opening it does).
    pub async fn open<M, T, F, Fut>(
        &self,
        message: M,
        rpc: F,
    ) -> Result<tonic::Streaming<T>, Status>
    where
        M: Clone,
        F: Fn(Channel, Request<M>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<tonic::Streaming<T>>, Status>>,
    {
        self.attempts(message, rpc, false).await
    }

    /// Watches events (`Scheduler.Watch`) through failures: when a stream breaks, it is opened
    /// again (on another endpoint if this one is gone), resuming after the last position
    /// delivered, so `deliver` sees every event once, in log order (positions are the same on
    /// every replica). Ends when `deliver` returns false, or with the first error that is not
    /// transient (`WATCH_COMPACTED` from every endpoint: list again and watch from now;
    /// `PERMISSION_DENIED`; ...), or when no endpoint opens it within the call deadline.
    pub async fn watch(
        &self,
        mut request: pb::WatchRequest,
        mut deliver: impl FnMut(pb::WatchResponse) -> bool,
    ) -> Result<(), Status> {
        loop {
            let mut stream = self.open_watch(&request).await?;
            loop {
                // An idle stream hears progress every few seconds: silence means its replica
                // is paused or gone.
                let next = tokio::time::timeout(crate::api::STREAM_SILENCE_MAX, stream.message());
                let Ok(next) = next.await else { break };
                match next {
                    Ok(Some(message)) => {
                        let at = match &message.message {
                            Some(pb::watch_response::Message::Event(e)) => {
                                Some((e.log_index, e.event))
                            }
                            Some(pb::watch_response::Message::Progress(p)) => {
                                Some((p.log_index, p.event))
                            }
                            None => None,
                        };
                        if let Some((log_index, event)) = at {
                            request.after_log_index = Some(log_index);
                            request.after_event = Some(event);
                        }
                        if !deliver(message) {
                            return Ok(());
                        }
                    }
                    // The replica went away (or ended the stream): resume elsewhere.
                    Ok(None) => break,
                    Err(status) if retryable(&status) => break,
                    Err(status) => return Err(status),
                }
            }
            self.next_endpoint();
        }
    }

    /// Opens a watch. A replica that no longer holds the resume point (it caught up by
    /// snapshot, or restarted) may not be the only one: each endpoint is asked once before
    /// `WATCH_COMPACTED` is the answer.
    async fn open_watch(
        &self,
        request: &pb::WatchRequest,
    ) -> Result<tonic::Streaming<pb::WatchResponse>, Status> {
        let mut tried = 0;
        loop {
            let opened =
                self.open(request.clone(), |ch, r| async move { scheduler(ch).watch(r).await });
            match opened.await {
                Err(status) if compacted(&status) && tried + 1 < self.channels.len() => {
                    tried += 1;
                    self.next_endpoint();
                }
                other => return other,
            }
        }
    }

    /// Prefers the next endpoint from now on: a stream from the current one broke.
    pub fn next_endpoint(&self) {
        self.preferred.fetch_add(1, Ordering::Relaxed);
    }
}

/// One generated client per service over a channel, for use inside `Client::call`.
pub fn tenants(channel: Channel) -> pb::tenants_client::TenantsClient<Channel> {
    pb::tenants_client::TenantsClient::new(channel)
}
pub fn workers(channel: Channel) -> pb::workers_client::WorkersClient<Channel> {
    pb::workers_client::WorkersClient::new(channel)
}
pub fn scheduler(channel: Channel) -> pb::scheduler_client::SchedulerClient<Channel> {
    pb::scheduler_client::SchedulerClient::new(channel)
}
pub fn leases(channel: Channel) -> pb::leases_client::LeasesClient<Channel> {
    pb::leases_client::LeasesClient::new(channel)
}
pub fn billing(channel: Channel) -> pb::billing_client::BillingClient<Channel> {
    pb::billing_client::BillingClient::new(channel)
}
pub fn cluster(channel: Channel) -> pb::cluster_client::ClusterClient<Channel> {
    pb::cluster_client::ClusterClient::new(channel)
}
