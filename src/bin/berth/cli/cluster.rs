//! `berth cluster`: the replicas and the leader, adding or removing a replica, and the
//! replicated tunables.

use berth::client::pb;
use clap::Subcommand;

use super::args::parse_duration_ms;
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
    /// The replicated tunables (admin): `config` shows them; with any option, sets those and
    /// keeps the rest.
    Config(ConfigArgs),
}

#[derive(clap::Args, Debug)]
pub struct ConfigArgs {
    /// How long every replica keeps raw usage changes (e.g. 7d; 1h..=90d).
    #[arg(long, value_parser = parse_duration_ms)]
    usage_raw_retention: Option<u64>,
    /// How long it keeps hourly usage roll-ups (raw..=400d).
    #[arg(long, value_parser = parse_duration_ms)]
    usage_hourly_retention: Option<u64>,
    /// How long it keeps daily usage roll-ups (hourly..=3660d).
    #[arg(long, value_parser = parse_duration_ms)]
    usage_daily_retention: Option<u64>,
    /// Minimum lease life left after a leader change (at most 10m).
    #[arg(long, value_parser = parse_duration_ms)]
    lease_grace: Option<u64>,
    /// Client-session entries kept for exactly-once replies.
    #[arg(long)]
    sessions_max: Option<u64>,
    /// Further feasible workers ranked for preferred rules.
    #[arg(long)]
    preferred_scan_max: Option<u32>,
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
        ClusterCmd::Config(args) => config(s, args).await,
        ClusterCmd::Remove { id } => {
            let m = pb::RemoveReplicaRequest { replica_id: id };
            s.show(&call!(s, cluster, remove_replica, m))
        }
    }
}

/// Shows the config, or reads it, changes what `args` names and writes it back.
async fn config(s: &Session, args: ConfigArgs) -> anyhow::Result<()> {
    let read = call!(s, cluster, get_config, pb::GetConfigRequest { read: None });
    let mut config = read.config.unwrap_or_default();
    let before = config;
    let set = |slot: &mut u64, value: Option<u64>| *slot = value.unwrap_or(*slot);
    set(&mut config.usage_raw_retention_ms, args.usage_raw_retention);
    set(&mut config.usage_hourly_retention_ms, args.usage_hourly_retention);
    set(&mut config.usage_daily_retention_ms, args.usage_daily_retention);
    set(&mut config.lease_grace_ms, args.lease_grace);
    set(&mut config.sessions_max, args.sessions_max);
    config.preferred_scan_max = args.preferred_scan_max.unwrap_or(config.preferred_scan_max);
    if config == before {
        return s.show(&config);
    }
    let m = pb::SetConfigRequest { request_id: s.request_id(), config: Some(config) };
    s.show(&call!(s, cluster, set_config, m))
}
