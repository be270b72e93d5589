//! `berth tenant`: create, read, list and delete tenants.

use berth::client::pb;
use clap::Subcommand;

use super::args::page;
use super::Session;

#[derive(Subcommand, Debug)]
pub enum TenantCmd {
    /// Create a tenant.
    Create {
        id: String,
        #[arg(long)]
        parent: Option<String>,
        #[arg(long, default_value_t = 1)]
        weight: u32,
    },
    Get {
        id: String,
    },
    List {
        #[arg(long)]
        after: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Delete a tenant and everything it owns.
    Delete {
        id: String,
    },
}

pub async fn run(s: &Session, cmd: TenantCmd) -> anyhow::Result<()> {
    match cmd {
        TenantCmd::Create { id, parent, weight } => {
            let m = pb::CreateTenantRequest {
                request_id: s.request_id(),
                tenant_id: id,
                parent_id: parent.unwrap_or_default(),
                weight,
            };
            s.show(&call!(s, tenants, create_tenant, m))
        }
        TenantCmd::Get { id } => s.show(&call!(
            s,
            tenants,
            get_tenant,
            pb::GetTenantRequest { tenant_id: id, read: None }
        )),
        TenantCmd::List { after, limit } => {
            let m = pb::ListTenantsRequest { page: page(after, limit), read: None };
            s.show(&call!(s, tenants, list_tenants, m).tenants)
        }
        TenantCmd::Delete { id } => {
            let m = pb::DeleteTenantRequest { request_id: s.request_id(), tenant_id: id };
            s.show(&call!(s, tenants, delete_tenant, m))
        }
    }
}
