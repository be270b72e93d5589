//! `berth worker`: register, read, list, drain and remove the machines that run work; send a
//! heartbeat or a report by hand (`berth agent` does both for a real worker); list what runs on
//! one.

use std::collections::BTreeMap;

use berth::client::pb;
use clap::Subcommand;

use super::args::{page, parse_pair, Size};
use super::Session;

#[derive(Subcommand, Debug)]
pub enum WorkerCmd {
    Register {
        id: String,
        #[command(flatten)]
        size: Size,
        #[arg(long)]
        pool: Option<String>,
        #[arg(long = "label", value_parser = parse_pair)]
        labels: Vec<(String, String)>,
    },
    Get {
        id: String,
    },
    List {
        #[arg(long)]
        pool: Option<String>,
        #[arg(long)]
        after: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Stop new placements on a worker (what runs there stays).
    Drain {
        id: String,
    },
    Undrain {
        id: String,
    },
    /// Remove a worker; with --evict, release whatever runs there.
    Remove {
        id: String,
        #[arg(long)]
        evict: bool,
    },
    /// Keep a worker alive for its pool's TTL (the first heartbeat makes it managed: it goes
    /// down when its TTL passes without another).
    Heartbeat {
        id: String,
    },
    /// Every placement with an instance on the worker, across tenants.
    Placements {
        id: String,
        /// TENANT/PLACEMENT of the last one seen.
        #[arg(long)]
        after: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Report on one instance the worker was assigned (what `berth agent` sends).
    Report {
        id: String,
        tenant: String,
        placement: String,
        /// The instance's position in the placement's workers (0-based).
        #[arg(long)]
        slot: u32,
        /// The instance's assigned_at (its fence, from `berth placement get`).
        #[arg(long)]
        assigned_at: u64,
        #[arg(value_enum)]
        status: Reported,
        /// With failed: the exit code.
        #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
        exit_code: i32,
        #[arg(long, default_value = "")]
        message: String,
    },
}

#[derive(clap::ValueEnum, Debug, Clone, Copy)]
pub enum Reported {
    Running,
    Completed,
    Failed,
}

pub async fn run(s: &Session, cmd: WorkerCmd) -> anyhow::Result<()> {
    match cmd {
        WorkerCmd::Register { id, size, pool, labels } => {
            let m = pb::RegisterWorkerRequest {
                request_id: s.request_id(),
                worker_id: id,
                pool: pool.unwrap_or_default(),
                capacity: Some(pb::Resources { cpu_millis: size.cpu, memory_mib: size.memory_mib }),
                labels: labels.into_iter().collect::<BTreeMap<_, _>>(),
            };
            s.show(&call!(s, workers, register_worker, m))
        }
        WorkerCmd::Get { id } => s.show(&call!(
            s,
            workers,
            get_worker,
            pb::GetWorkerRequest { worker_id: id, read: None }
        )),
        WorkerCmd::List { pool, after, limit } => {
            let m = pb::ListWorkersRequest {
                pool: pool.unwrap_or_default(),
                page: page(after, limit),
                read: None,
            };
            s.show(&call!(s, workers, list_workers, m).workers)
        }
        WorkerCmd::Drain { id } => drain(s, id, true).await,
        WorkerCmd::Undrain { id } => drain(s, id, false).await,
        WorkerCmd::Remove { id, evict } => {
            let m = pb::RemoveWorkerRequest { request_id: s.request_id(), worker_id: id, evict };
            s.show(&call!(s, workers, remove_worker, m))
        }
        WorkerCmd::Heartbeat { id } => {
            let m = pb::HeartbeatRequest { worker_id: id };
            s.show(&call!(s, workers, heartbeat, m))
        }
        WorkerCmd::Placements { id, after, limit } => {
            let m = pb::ListWorkerPlacementsRequest {
                worker_id: id,
                page: page(after, limit),
                read: None,
            };
            s.show(&call!(s, workers, list_worker_placements, m).placements)
        }
        WorkerCmd::Report {
            id,
            tenant,
            placement,
            slot,
            assigned_at,
            status,
            exit_code,
            message,
        } => {
            let status = match status {
                Reported::Running => pb::InstanceStatus::Running,
                Reported::Completed => pb::InstanceStatus::Completed,
                Reported::Failed => pb::InstanceStatus::Failed,
            };
            let m = pb::ReportStatusRequest {
                request_id: s.request_id(),
                worker_id: id,
                tenant_id: tenant,
                placement_id: placement,
                slot,
                assigned_at,
                status: status.into(),
                exit_code,
                message,
            };
            s.show(&call!(s, workers, report_status, m))
        }
    }
}

async fn drain(s: &Session, id: String, drain: bool) -> anyhow::Result<()> {
    let m = pb::DrainWorkerRequest { request_id: s.request_id(), worker_id: id, drain };
    s.show(&call!(s, workers, drain_worker, m))
}
