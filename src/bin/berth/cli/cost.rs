//! `berth cost`: split a shared cost by weights, exactly to the cent.

use berth::client::pb;
use clap::Subcommand;

use super::Session;

#[derive(Subcommand, Debug)]
pub enum CostCmd {
    /// Split a total by weights, to the cent, parts summing exactly to the total.
    Allocate {
        #[arg(long)]
        total: String,
        #[arg(long, value_delimiter = ',')]
        weights: Vec<String>,
    },
}

pub async fn run(s: &Session, cmd: CostCmd) -> anyhow::Result<()> {
    let CostCmd::Allocate { total, weights } = cmd;
    let m = pb::AllocateSharedCostRequest { total, weights };
    s.show(&call!(s, billing, allocate_shared_cost, m))
}
