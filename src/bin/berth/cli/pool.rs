//! `berth pool`: a pool's capacity and guarantees, and the reserve held back for borrowers.

use berth::client::pb;
use clap::Subcommand;

use super::args::{page, parse_cpu, parse_duration_ms};
use super::Session;

#[derive(Subcommand, Debug)]
pub enum PoolCmd {
    /// Hold capacity of a pool back from guarantees, for borrowers: from then on, guarantees
    /// plus the reserve may not be raised beyond the pool's schedulable capacity.
    Reserve {
        pool: String,
        /// CPU cores held back (up to three decimals).
        #[arg(long, value_parser = parse_cpu, required_unless_present = "remove")]
        cpu: Option<u64>,
        /// Memory held back, in MiB.
        #[arg(long, required_unless_present = "remove")]
        memory_mib: Option<u64>,
        /// Drop the reserve (guarantees are no longer checked against capacity).
        #[arg(long, conflicts_with_all = ["cpu", "memory_mib"])]
        remove: bool,
    },
    /// A pool's capacity, free capacity, reserve, guarantees and any shortfall.
    Get { pool: String },
    /// Every placement in the pool, across tenants.
    Placements {
        pool: String,
        /// TENANT/PLACEMENT of the last one seen.
        #[arg(long)]
        after: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// How long a heartbeat keeps the pool's workers alive (from each one's next heartbeat).
    Ttl {
        pool: String,
        /// 1s..=1h: 10s, 30s, 2m.
        #[arg(value_parser = parse_duration_ms, required_unless_present = "reset")]
        ttl: Option<u64>,
        /// Back to the default (10 s).
        #[arg(long, conflicts_with = "ttl")]
        reset: bool,
    },
}

pub async fn run(s: &Session, cmd: PoolCmd) -> anyhow::Result<()> {
    match cmd {
        PoolCmd::Reserve { pool, cpu, memory_mib, remove } => {
            let m = pb::SetPoolReserveRequest {
                request_id: s.request_id(),
                pool,
                reserve: Some(pb::Resources {
                    cpu_millis: cpu.unwrap_or_default(),
                    memory_mib: memory_mib.unwrap_or_default(),
                }),
                remove,
            };
            s.show(&call!(s, workers, set_pool_reserve, m))
        }
        PoolCmd::Get { pool } => {
            s.show(&call!(s, workers, get_pool, pb::GetPoolRequest { pool, read: None }).pool)
        }
        PoolCmd::Placements { pool, after, limit } => {
            let m = pb::ListPoolPlacementsRequest { pool, page: page(after, limit), read: None };
            s.show(&call!(s, workers, list_pool_placements, m).placements)
        }
        PoolCmd::Ttl { pool, ttl, reset } => {
            let m = pb::SetPoolWorkerTtlRequest {
                request_id: s.request_id(),
                pool,
                ttl_ms: ttl.unwrap_or_default(),
                reset,
            };
            s.show(&call!(s, workers, set_pool_worker_ttl, m))
        }
    }
}
