//! `berth cluster`: the replicas and the leader, and adding or removing a replica.

use berth::client::pb;
use clap::Subcommand;

use super::Session;
use crate::output::show;

#[derive(Subcommand, Debug)]
pub enum ClusterCmd {
    Status,
    /// Add a replica (it must already be running, without --bootstrap).
    Add {
        id: u64,
        peer_address: String,
    },
    Remove {
        id: u64,
    },
}

pub async fn run(s: &Session, cmd: ClusterCmd) -> anyhow::Result<()> {
    match cmd {
        ClusterCmd::Status => {
            let r = call!(s, cluster, status, pb::StatusRequest {});
            if s.json {
                return show(true, &r);
            }
            out!(
                "leader: {}  term: {}",
                r.leader_id.map(|l| l.to_string()).unwrap_or("-".into()),
                r.term
            );
            show(false, &r.replicas)
        }
        ClusterCmd::Add { id, peer_address } => {
            let m = pb::AddReplicaRequest { replica_id: id, peer_address };
            s.show(&call!(s, cluster, add_replica, m))
        }
        ClusterCmd::Remove { id } => {
            let m = pb::RemoveReplicaRequest { replica_id: id };
            s.show(&call!(s, cluster, remove_replica, m))
        }
    }
}
