//! Client subcommands: one file per resource, each with its clap subcommand enum and its
//! handler; readable output by default and `--json` for scripts (`crate::output`), shared
//! arguments and parsers in `args`.

use berth::client::{new_request_id, Client, ClientOptions};
use clap::{Args, Subcommand};
use serde::Serialize;

/// Calls `$service.$method($message)` through the session's client (failover and retries
/// included); a refusal becomes an error that reads as one line (`describe`).
macro_rules! call {
    ($session:expr, $service:ident, $method:ident, $message:expr) => {
        $session
            .client
            .call($message, |ch, req| async move { berth::client::$service(ch).$method(req).await })
            .await
            .map_err(|status| anyhow::anyhow!(crate::cli::describe(&status)))?
    };
}

pub(crate) mod args;
mod audit;
mod backup;
mod budget;
mod cluster;
mod console;
mod cost;
mod group;
mod invoice;
mod lease;
mod placement;
mod pool;
mod queue;
mod quota;
mod reservation;
mod tenant;
mod token;
mod usage;
mod watch;
mod worker;

/// Options every client subcommand takes.
#[derive(Args, Debug, Clone)]
pub struct Connection {
    /// API endpoints of the replicas (host:port, comma separated).
    #[arg(
        long,
        env = "BERTH_ENDPOINTS",
        value_delimiter = ',',
        global = true,
        default_value = "127.0.0.1:7501,127.0.0.1:7502,127.0.0.1:7503"
    )]
    pub endpoints: Vec<String>,
    /// Bearer token (the admin token, or a tenant token from `berth token issue`).
    #[arg(long, env = "BERTH_TOKEN", global = true, hide_env_values = true)]
    pub token: Option<String>,
    /// Print the response as JSON.
    #[arg(long, global = true)]
    pub json: bool,
    /// Idempotency key for a write (default: a fresh random id). Reuse it to retry safely.
    #[arg(long, global = true)]
    pub request_id: Option<String>,
    /// Deadline for the call, retries included.
    #[arg(long, global = true, default_value_t = 10_000)]
    pub timeout_ms: u64,
    /// The cluster's CA certificate (PEM), to verify the replicas' API certificates.
    /// `berth up` prints it.
    #[arg(long, env = "BERTH_CA", global = true)]
    pub ca: Option<std::path::PathBuf>,
    /// A client certificate (PEM) to present, for a cluster that requires one (with --key).
    #[arg(long, env = "BERTH_CERT", global = true, requires = "key")]
    pub cert: Option<std::path::PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, env = "BERTH_KEY", global = true, requires = "cert")]
    pub key: Option<std::path::PathBuf>,
    /// Speak plaintext, to a cluster started with `--insecure`.
    #[arg(long, env = "BERTH_INSECURE", global = true, conflicts_with_all = ["ca", "cert", "key"])]
    pub insecure: bool,
}

impl Connection {
    /// TLS with the given CA (and client certificate), or plaintext if asked for explicitly.
    pub fn security(&self) -> anyhow::Result<berth::client::ClientSecurity> {
        use berth::client::{ClientSecurity, ClientTls};
        if self.insecure {
            return Ok(ClientSecurity::Insecure);
        }
        let Some(ca) = &self.ca else {
            anyhow::bail!(
                "the API is served over TLS: give the cluster's CA certificate with --ca FILE or \
                 BERTH_CA (berth up prints it), or --insecure for a cluster started with --insecure"
            );
        };
        let identity = self.cert.as_deref().zip(self.key.as_deref());
        Ok(ClientSecurity::Tls(ClientTls::load(ca, identity)?))
    }

    /// A client for these endpoints, token and security.
    pub fn client(&self, options: berth::client::ClientOptions) -> anyhow::Result<Client> {
        Client::new(&self.endpoints, self.token.as_deref(), &self.security()?, options)
    }
}

#[derive(Subcommand, Debug)]
pub enum ClientCmd {
    #[command(subcommand)]
    Tenant(tenant::TenantCmd),
    #[command(subcommand)]
    Quota(quota::QuotaCmd),
    #[command(subcommand)]
    Token(token::TokenCmd),
    #[command(subcommand)]
    Worker(worker::WorkerCmd),
    #[command(subcommand)]
    Pool(pool::PoolCmd),
    /// Place instances of a workload (with --dry-run: only say what would happen).
    Place(placement::PlaceArgs),
    /// Release a placement or reservation.
    Release(args::PlacementRef),
    #[command(subcommand)]
    Placement(placement::PlacementCmd),
    #[command(subcommand)]
    Queue(queue::QueueCmd),
    /// Hold capacity for --ttl-ms.
    Reserve(reservation::ReserveArgs),
    /// Turn a reservation into a placement.
    Confirm(args::PlacementRef),
    /// Cancel a reservation.
    Cancel(args::PlacementRef),
    #[command(subcommand)]
    Group(group::GroupCmd),
    #[command(subcommand)]
    Lease(lease::LeaseCmd),
    /// Price plans, tenants' statements, and shared costs split exactly.
    #[command(subcommand)]
    Cost(cost::CostCmd),
    /// Tenants' monthly budgets: alerts, a hard stop, and where the month is heading.
    #[command(subcommand)]
    Budget(budget::BudgetCmd),
    /// Tenants' monthly invoices: adjust, close, list, export as CSV or JSON.
    #[command(subcommand)]
    Invoice(invoice::InvoiceCmd),
    /// What a tenant held over time, as a sparkline; `usage report` as CSV or JSON.
    Usage(usage::UsageArgs),
    #[command(subcommand)]
    Cluster(cluster::ClusterCmd),
    /// Print events as they happen (a tenant's, or with the admin token everything).
    Watch(watch::WatchArgs),
    /// The audit trail as JSON lines: every command sent, accepted or refused, with who, the
    /// tenant and the outcome; `audit verify` checks every replica's hash chain.
    Audit(audit::AuditArgs),
    /// Snapshots on demand: `snapshot create` compacts the answering replica's log.
    #[command(subcommand)]
    Snapshot(backup::SnapshotCmd),
    /// Download a fresh snapshot of the cluster as a backup file (owner-only), checked by its
    /// SHA-256, for `berth restore`.
    Backup(backup::BackupArgs),
    /// A one-time link that signs a browser in to a replica's web console with this token.
    Console(console::ConsoleArgs),
}

/// What one client subcommand runs with: the client, the request id of its write (each
/// subcommand makes at most one) and the output format.
struct Session {
    client: Client,
    request_id: String,
    json: bool,
}

impl Session {
    fn request_id(&self) -> String {
        self.request_id.clone()
    }

    /// Prints a response as `--json` asks (`crate::output::show`).
    fn show<T: Serialize>(&self, value: &T) -> anyhow::Result<()> {
        crate::output::show(self.json, value)
    }
}

/// Runs one client subcommand.
pub async fn run(connection: Connection, command: ClientCmd) -> anyhow::Result<()> {
    let mut options = ClientOptions {
        deadline: std::time::Duration::from_millis(connection.timeout_ms),
        ..Default::default()
    };
    // A snapshot takes as long as the state is large: one attempt may use the whole deadline.
    if matches!(command, ClientCmd::Snapshot(_)) {
        options.attempt_timeout = options.deadline;
    }
    let s = Session {
        client: connection.client(options)?,
        request_id: connection.request_id.clone().unwrap_or_else(new_request_id),
        json: connection.json,
    };
    match command {
        ClientCmd::Tenant(cmd) => tenant::run(&s, cmd).await,
        ClientCmd::Quota(cmd) => quota::run(&s, cmd).await,
        ClientCmd::Token(cmd) => token::run(&s, cmd).await,
        ClientCmd::Worker(cmd) => worker::run(&s, cmd).await,
        ClientCmd::Pool(cmd) => pool::run(&s, cmd).await,
        ClientCmd::Place(args) => placement::place(&s, args).await,
        ClientCmd::Release(args) => placement::release(&s, args).await,
        ClientCmd::Placement(cmd) => placement::run(&s, cmd).await,
        ClientCmd::Queue(cmd) => queue::run(&s, cmd).await,
        ClientCmd::Reserve(args) => reservation::reserve(&s, args).await,
        ClientCmd::Confirm(args) => reservation::confirm(&s, args).await,
        ClientCmd::Cancel(args) => reservation::cancel(&s, args).await,
        ClientCmd::Group(cmd) => group::run(&s, cmd).await,
        ClientCmd::Lease(cmd) => lease::run(&s, cmd).await,
        ClientCmd::Cost(cmd) => cost::run(&s, cmd).await,
        ClientCmd::Budget(cmd) => budget::run(&s, cmd).await,
        ClientCmd::Invoice(cmd) => invoice::run(&s, cmd).await,
        ClientCmd::Usage(args) => usage::run(&s, args).await,
        ClientCmd::Cluster(cmd) => cluster::run(&s, cmd).await,
        ClientCmd::Watch(args) => watch::run(&s, args).await,
        ClientCmd::Audit(args) => audit::run(&s, &connection, args).await,
        ClientCmd::Snapshot(cmd) => backup::snapshot(&s, cmd).await,
        ClientCmd::Backup(args) => backup::backup(&s, args).await,
        ClientCmd::Console(args) => console::run(&connection, args).await,
    }
}

/// A status as one readable line: code, message, reason and metadata.
pub fn describe(status: &tonic::Status) -> String {
    use tonic_types::StatusExt;
    let mut text = format!("{:?}: {}", status.code(), status.message());
    if let Some(info) = status.get_details_error_info() {
        text.push_str(&format!(" [{}", info.reason));
        let mut meta: Vec<_> = info.metadata.iter().collect();
        meta.sort();
        for (k, v) in meta {
            text.push_str(&format!(" {k}={v}"));
        }
        text.push(']');
    }
    text
}
