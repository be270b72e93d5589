//! `berth lease`: named leases with fencing tokens (acquire, keep alive, release, read).

use berth::client::pb;
use clap::Subcommand;

use super::args::page;
use super::Session;

#[derive(Subcommand, Debug)]
pub enum LeaseCmd {
    Acquire {
        tenant: String,
        name: String,
        #[arg(long)]
        holder: String,
        #[arg(long)]
        ttl_ms: u64,
    },
    Keepalive {
        tenant: String,
        name: String,
        /// The fencing token `lease acquire` returned (not the bearer `--token`).
        #[arg(long)]
        fencing_token: u64,
    },
    Release {
        tenant: String,
        name: String,
        /// The fencing token `lease acquire` returned (not the bearer `--token`).
        #[arg(long)]
        fencing_token: u64,
    },
    Get {
        tenant: String,
        name: String,
    },
    /// A tenant's leases in name order, with their holders and fencing tokens.
    List {
        tenant: String,
        #[arg(long)]
        after: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
}

pub async fn run(s: &Session, cmd: LeaseCmd) -> anyhow::Result<()> {
    let request_id = s.request_id();
    match cmd {
        LeaseCmd::Acquire { tenant, name, holder, ttl_ms } => {
            let m = pb::AcquireRequest { request_id, tenant_id: tenant, name, holder, ttl_ms };
            s.show(&call!(s, leases, acquire, m))
        }
        LeaseCmd::Keepalive { tenant, name, fencing_token: token } => {
            let m = pb::KeepAliveRequest { request_id, tenant_id: tenant, name, token };
            s.show(&call!(s, leases, keep_alive, m))
        }
        LeaseCmd::Release { tenant, name, fencing_token: token } => {
            let m = pb::ReleaseLeaseRequest { request_id, tenant_id: tenant, name, token };
            s.show(&call!(s, leases, release, m))
        }
        LeaseCmd::Get { tenant, name } => {
            let m = pb::GetLeaseRequest { tenant_id: tenant, name, read: None };
            s.show(&call!(s, leases, get_lease, m))
        }
        LeaseCmd::List { tenant, after, limit } => {
            let m =
                pb::ListLeasesRequest { tenant_id: tenant, page: page(after, limit), read: None };
            s.show(&call!(s, leases, list_leases, m).leases)
        }
    }
}
