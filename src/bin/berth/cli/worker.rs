//! `berth worker`: register, read, list, drain and remove the machines that run work.

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
    }
}

async fn drain(s: &Session, id: String, drain: bool) -> anyhow::Result<()> {
    let m = pb::DrainWorkerRequest { request_id: s.request_id(), worker_id: id, drain };
    s.show(&call!(s, workers, drain_worker, m))
}
