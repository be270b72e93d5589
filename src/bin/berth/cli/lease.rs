//! `berth lease`: named leases with fencing tokens (acquire, keep alive, release, read).

use berth::client::pb;
use clap::Subcommand;

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
    }
}
