//! `berth group`: placement groups, which spread or pack a tenant's instances.

use berth::client::pb;
use clap::Subcommand;

use super::Session;

#[derive(Subcommand, Debug)]
pub enum GroupCmd {
    Create {
        tenant: String,
        group: String,
        #[arg(long)]
        max_instances: u32,
        /// Prefer workers already holding the group (default: spread, one per worker).
        #[arg(long)]
        pack: bool,
    },
}

pub async fn run(s: &Session, cmd: GroupCmd) -> anyhow::Result<()> {
    let GroupCmd::Create { tenant, group, max_instances, pack } = cmd;
    let strategy = if pack { pb::GroupStrategy::Pack } else { pb::GroupStrategy::Spread }.into();
    let m = pb::CreatePlacementGroupRequest {
        request_id: s.request_id(),
        tenant_id: tenant,
        group,
        max_instances,
        strategy,
    };
    s.show(&call!(s, scheduler, create_placement_group, m))
}
