//! A test harness: real replicas (file storage in a temp dir) on loopback ports, optionally
//! serving the public API with a known admin token.
#![allow(dead_code)]

pub mod links;
pub mod scrape;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use berth::api::pb;
use berth::clock::SystemClock;
use berth::network::tcp_connect;
use berth::raft::peer::ReplicaStatus;
use berth::raft::replica::{Replica, ReplicaOptions};
use berth::server::{Listeners, Security, Server, Storage};
use berth::tls::{roots, Authority, ClientSecurity, ClientTls, Identity};
use tokio::net::TcpListener;
use tokio::time::Instant;
use tonic::metadata::MetadataValue;
use tonic::transport::server::TcpIncoming;
use tonic::transport::Channel;
use tonic::{Request, Status};
use tonic_types::StatusExt;

/// A RegisterWorker proposal for worker `w{i}`, with request id `{prefix}-{i}`.
pub fn register_worker(prefix: &str, i: u64) -> berth::raft::types::Proposal {
    berth::raft::types::Proposal {
        request_id: Some(berth::scheduler::RequestId::new(format!("{prefix}-{i}"))),
        command: berth::scheduler::Command::RegisterWorker {
            worker: berth::scheduler::WorkerId::new(format!("w{i}")),
            pool: None,
            capacity: berth::scheduler::Resources::new(1_000, 1_024),
            labels: BTreeMap::new(),
        },
        token: None,
    }
}

pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

pub const DEADLINE: Duration = Duration::from_secs(20);

pub struct Member {
    pub addr: String,
    pub api_addr: Option<String>,
    /// Where the replica serves `GET /metrics` (with the API).
    pub metrics_addr: Option<String>,
    /// Where the replica serves the web console (with the API).
    pub console_addr: Option<String>,
    dir: PathBuf,
    server: Option<Server>,
}

impl Member {
    /// A replica at peer address `addr` with its storage in `dir`, not yet started.
    fn stopped(addr: String, dir: PathBuf) -> Member {
        Member { addr, api_addr: None, metrics_addr: None, console_addr: None, dir, server: None }
    }
}

/// Replicas with file storage in a temp dir, each on its own loopback port.
pub struct Cluster {
    pub members: BTreeMap<u64, Member>,
    /// The cluster's CA: every replica's certificate comes from it.
    pub authority: Arc<Authority>,
    options: fn(u64, String) -> ReplicaOptions,
    with_api: bool,
    /// Every replica's peer connections go through these, for tests to cut or slow them.
    pub links: links::Links,
    /// Every replica's wall clock: a test moves them all at once (`set_offset_ms`).
    pub clock: SystemClock,
    _tmp: tempfile::TempDir,
}

/// Tenants a test replica's metrics name; the rest are `_other` (small, so a test can pass it).
pub const METRICS_TENANTS_MAX: usize = 3;

pub fn fast_options(id: u64, addr: String) -> ReplicaOptions {
    let mut o = ReplicaOptions::new(id, addr);
    o.heartbeat_ms = 50;
    o.election_timeout_min_ms = 300;
    o.election_timeout_max_ms = 600;
    o.tick_idle = Duration::from_millis(200);
    o
}

pub fn snapshotting_options(id: u64, addr: String) -> ReplicaOptions {
    let mut o = fast_options(id, addr);
    o.snapshot_logs = 20;
    o.snapshot_keep_logs = 5;
    o
}

/// Binds `addr`. A replica restarted on its old port may find it still held for a moment (the
/// stopped replica's sockets closing): retried until `DEADLINE`.
pub async fn listen(addr: &str) -> (String, TcpListener) {
    let until = Instant::now() + DEADLINE;
    let listener = loop {
        match TcpListener::bind(addr).await {
            Ok(listener) => break listener,
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && Instant::now() < until => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("bind {addr}: {e}"),
        }
    };
    let addr = listener.local_addr().expect("local addr").to_string();
    (addr, listener)
}

impl Cluster {
    pub async fn start(n: u64, options: fn(u64, String) -> ReplicaOptions) -> Cluster {
        Cluster::start_with(n, options, false).await
    }

    /// Like `start`, with each replica also serving the public API.
    pub async fn start_with(
        n: u64,
        options: fn(u64, String) -> ReplicaOptions,
        with_api: bool,
    ) -> Cluster {
        Cluster::start_from(n, options, with_api, None).await
    }

    /// A new cluster serving the API, each replica's storage restored from `backup` (a backup
    /// file) with this cluster's members (`berth::server::restore`), none bootstrapped.
    pub async fn restored(
        n: u64,
        options: fn(u64, String) -> ReplicaOptions,
        backup: &[u8],
    ) -> Cluster {
        Cluster::start_from(n, options, true, Some(backup)).await
    }

    async fn start_from(
        n: u64,
        options: fn(u64, String) -> ReplicaOptions,
        with_api: bool,
        backup: Option<&[u8]>,
    ) -> Cluster {
        let tmp = tempfile::tempdir().expect("temp dir");
        let mut listeners = BTreeMap::new();
        let mut members = BTreeMap::new();
        for id in 1..=n {
            let (addr, listener) = listen("127.0.0.1:0").await;
            listeners.insert(id, listener);
            let dir = tmp.path().join(format!("replica-{id}"));
            members.insert(id, Member::stopped(addr, dir));
        }
        let authority = Arc::new(Authority::generate().expect("a CA"));
        let links = links::Links::default();
        let clock = SystemClock::default();
        let mut cluster =
            Cluster { members, authority, options, with_api, links, clock, _tmp: tmp };
        let founders: BTreeMap<u64, String> =
            cluster.members.iter().map(|(id, m)| (*id, m.addr.clone())).collect();
        if let Some(backup) = backup {
            for (id, member) in &cluster.members {
                berth::server::restore(&member.dir, *id, backup, &founders)
                    .await
                    .expect("the backup restores");
            }
        }
        for (id, listener) in listeners {
            let bootstrap = (id == 1 && backup.is_none()).then(|| founders.clone());
            cluster.launch(id, listener, bootstrap).await;
        }
        cluster
    }

    pub async fn launch(
        &mut self,
        id: u64,
        listener: TcpListener,
        bootstrap: Option<BTreeMap<u64, String>>,
    ) {
        let (api, metrics, console) = if self.with_api {
            let api = self.listen_again(id, |m| &mut m.api_addr).await;
            let metrics = self.listen_again(id, |m| &mut m.metrics_addr).await;
            let console = self.listen_again(id, |m| &mut m.console_addr).await;
            (
                Some((
                    TcpIncoming::from(api).with_nodelay(Some(true)),
                    berth::api::hash_token(ADMIN_TOKEN),
                )),
                Some(TcpIncoming::from(metrics)),
                Some(TcpIncoming::from(console)),
            )
        } else {
            (None, None, None)
        };
        let security = self.security(id);
        let member = self.members.get_mut(&id).expect("member");
        let storage = Storage::open_dir(&member.dir).expect("storage opens");
        let server = Server::start(
            (self.options)(id, member.addr.clone()),
            storage,
            Arc::new(self.clock.clone()),
            self.links.wrap(&member.addr, tcp_connect(Duration::from_millis(500), None)),
            security,
            Listeners {
                peer: TcpIncoming::from(listener).with_nodelay(Some(true)),
                api,
                metrics,
                console,
                metrics_tenants_max: METRICS_TENANTS_MAX,
            },
            bootstrap,
        )
        .await
        .expect("server starts");
        member.server = Some(server);
    }

    /// A listener for one of replica `id`'s public ports: on the address it had before, so a
    /// restarted replica keeps it, or a fresh one, kept in the member's `slot`.
    async fn listen_again(
        &mut self,
        id: u64,
        slot: fn(&mut Member) -> &mut Option<String>,
    ) -> TcpListener {
        let member = self.members.get_mut(&id).expect("member");
        let (addr, listener) = match slot(member).clone() {
            Some(addr) => listen(&addr).await,
            None => listen("127.0.0.1:0").await,
        };
        *slot(member) = Some(addr);
        listener
    }

    /// What replica `id` is started with: mutual TLS with a fresh certificate for it from the
    /// cluster's CA (also naming 127.0.0.1, for API clients).
    pub fn security(&self, id: u64) -> Security {
        let pem = self.authority.replica(id, &["127.0.0.1".into()]).expect("a certificate");
        Security::Tls {
            ca: roots(self.authority.cert_pem()).expect("CA roots"),
            identity: Identity::from_pem(&pem).expect("an identity"),
            api_client_ca: None,
        }
    }

    /// How API clients reach this cluster: TLS, trusting its CA.
    pub fn client_security(&self) -> ClientSecurity {
        let ca = roots(self.authority.cert_pem()).expect("CA roots");
        ClientSecurity::Tls(ClientTls::new(ca, None).expect("client TLS"))
    }

    /// Adds a new, empty replica process-alike (not yet a cluster member).
    pub async fn spawn_extra(&mut self, id: u64) {
        let (addr, listener) = listen("127.0.0.1:0").await;
        let dir = self._tmp.path().join(format!("replica-{id}"));
        self.members.insert(id, Member::stopped(addr, dir));
        self.launch(id, listener, None).await;
    }

    pub async fn stop(&mut self, id: u64) {
        let server = self.members.get_mut(&id).and_then(|m| m.server.take()).expect("running");
        server.stop().await;
    }

    pub async fn restart(&mut self, id: u64) {
        let addr = self.members[&id].addr.clone();
        let (_, listener) = listen(&addr).await;
        self.launch(id, listener, None).await;
    }

    pub fn replica(&self, id: u64) -> &Replica {
        &self.members[&id].server.as_ref().expect("running").replica
    }

    pub fn running(&self) -> Vec<u64> {
        self.members.iter().filter(|(_, m)| m.server.is_some()).map(|(id, _)| *id).collect()
    }

    pub async fn leader(&self) -> u64 {
        let first = self.running()[0];
        self.replica(first).wait_for_leader(DEADLINE).await.expect("a leader is elected")
    }

    pub async fn shutdown(mut self) {
        for id in self.running() {
            self.stop(id).await;
        }
    }
}

/// A peer connector that presents a certificate from `authority` for replica `id` (a member,
/// if `id` is one), and accepts any replica of that CA: how a test talks to the peer port.
pub fn member_connect(authority: &Authority, id: u64) -> berth::network::Connect {
    let pem = authority.replica(id, &[]).expect("a certificate");
    let tls = berth::tls::PeerTls::new(
        roots(authority.cert_pem()).expect("CA roots"),
        Identity::from_pem(&pem).expect("an identity"),
        berth::tls::Admission::default(),
    )
    .expect("peer TLS");
    tls.secure(tcp_connect(Duration::from_millis(500), None))
}

/// Runs the async `check` every 20 ms until it yields a value; fails with `what` after
/// `DEADLINE`. The one way tests wait for a condition.
pub async fn poll<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let until = Instant::now() + DEADLINE;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < until, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `poll` for a plain condition.
pub async fn eventually<F: FnMut() -> bool>(what: &str, mut check: F) {
    poll(what, || std::future::ready(check().then_some(()))).await
}

/// Waits until every running replica has applied the same commands to the same state.
pub async fn converged(cluster: &Cluster) -> Vec<ReplicaStatus> {
    let mut statuses = Vec::new();
    eventually("replicas to converge", || {
        statuses = cluster.running().iter().map(|id| cluster.replica(*id).status()).collect();
        let first = &statuses[0];
        statuses.iter().all(|s| {
            s.applied_command_index == first.applied_command_index
                && s.state_hash == first.state_hash
                && s.last_applied_index == first.last_applied_index
        })
    })
    .await;
    statuses
}

// The public API through tonic clients.

/// A request with a bearer token.
pub fn authed<T>(token: &str, message: T) -> Request<T> {
    let mut request = Request::new(message);
    let value = MetadataValue::try_from(format!("Bearer {token}")).expect("ascii token");
    request.metadata_mut().insert("authorization", value);
    request
}

pub fn reason(status: &Status) -> String {
    status.get_details_error_info().map(|i| i.reason).unwrap_or_default()
}

pub fn meta(status: &Status, key: &str) -> String {
    status.get_details_error_info().and_then(|i| i.metadata.get(key).cloned()).unwrap_or_default()
}

pub struct Clients {
    pub tenants: pb::tenants_client::TenantsClient<Channel>,
    pub workers: pb::workers_client::WorkersClient<Channel>,
    pub scheduler: pb::scheduler_client::SchedulerClient<Channel>,
    pub leases: pb::leases_client::LeasesClient<Channel>,
    pub billing: pb::billing_client::BillingClient<Channel>,
    pub cluster: pb::cluster_client::ClusterClient<Channel>,
    pub channel: Channel,
}

pub async fn clients(cluster: &Cluster, id: u64) -> Clients {
    let addr = cluster.members[&id].api_addr.clone().expect("api served");
    let channel = berth::tls::channel(
        &addr,
        &cluster.client_security(),
        tcp_connect(Duration::from_secs(1), None),
        Duration::from_secs(1),
    )
    .expect("a channel");
    Clients {
        tenants: pb::tenants_client::TenantsClient::new(channel.clone()),
        workers: pb::workers_client::WorkersClient::new(channel.clone()),
        scheduler: pb::scheduler_client::SchedulerClient::new(channel.clone()),
        leases: pb::leases_client::LeasesClient::new(channel.clone()),
        billing: pb::billing_client::BillingClient::new(channel.clone()),
        cluster: pb::cluster_client::ClusterClient::new(channel.clone()),
        channel,
    }
}

/// A cluster with the API on every replica, and clients talking to a follower (so every write
/// also exercises forwarding to the leader).
pub async fn setup() -> (Cluster, Clients) {
    let cluster = Cluster::start_with(3, fast_options, true).await;
    let leader = cluster.leader().await;
    let follower = cluster.running().into_iter().find(|id| *id != leader).expect("a follower");
    let c = clients(&cluster, follower).await;
    (cluster, c)
}

pub fn rid() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    format!("req-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

pub async fn create_tenant(c: &mut Clients, id: &str) {
    let r =
        pb::CreateTenantRequest { request_id: rid(), tenant_id: id.into(), ..Default::default() };
    c.tenants.create_tenant(authed(ADMIN_TOKEN, r)).await.expect("tenant created");
}

pub async fn issue_token(c: &mut Clients, tenant: &str) -> String {
    let r = pb::IssueTokenRequest {
        request_id: rid(),
        tenant_id: tenant.into(),
        token_name: "ci".into(),
        ttl_ms: 0,
    };
    c.tenants.issue_token(authed(ADMIN_TOKEN, r)).await.expect("token issued").into_inner().token
}

pub async fn register(c: &mut Clients, id: &str, cpu_millis: u64) {
    let r = pb::RegisterWorkerRequest {
        request_id: rid(),
        worker_id: id.into(),
        capacity: Some(pb::Resources { cpu_millis, memory_mib: 1 << 20 }),
        ..Default::default()
    };
    c.workers.register_worker(authed(ADMIN_TOKEN, r)).await.expect("worker registered");
}

pub fn spec(id: &str, cpu_millis: u64) -> pb::PlacementSpec {
    pb::PlacementSpec {
        placement_id: id.into(),
        resources: Some(pb::Resources { cpu_millis, memory_mib: 16 }),
        ..Default::default()
    }
}

pub fn place(tenant: &str, spec: pb::PlacementSpec) -> pb::PlaceRequest {
    pb::PlaceRequest {
        request_id: rid(),
        tenant_id: tenant.into(),
        spec: Some(spec),
        fence: None,
        dry_run: false,
        queue_if_unavailable: false,
    }
}
