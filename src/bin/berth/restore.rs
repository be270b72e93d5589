//! `berth restore`: one replica's storage of a new cluster, from a backup file (`berth
//! backup`), checked by its SHA-256. Run it for every replica of the new cluster with the same
//! members, then start each with `berth server` as usual, without `--bootstrap`.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Args;
use serde::Serialize;
use sha2::{Digest, Sha256};

#[derive(Args, Debug)]
pub struct RestoreArgs {
    /// The backup file.
    #[arg(long)]
    from: PathBuf,
    /// The SHA-256 `berth backup` printed: the file must have it (it is always checked
    /// against the checksum inside it too).
    #[arg(long)]
    sha256: Option<String>,
    /// This replica's id in the new cluster.
    #[arg(long, env = "BERTH_ID")]
    id: u64,
    /// The replica's new storage directory (its `berth server --data-dir`): missing or empty.
    #[arg(long, env = "BERTH_DATA_DIR")]
    data_dir: PathBuf,
    /// The new cluster's members, as `ID=HOST:PEER_PORT` separated by commas: the same list
    /// for every replica. They replace the members the backup was taken with.
    #[arg(long, env = "BERTH_INITIAL_MEMBERS", value_delimiter = ',', required = true)]
    initial_members: Vec<String>,
}

/// What `berth restore` did.
#[derive(Serialize)]
struct Restored {
    replica_id: u64,
    data_dir: String,
    sha256: String,
    /// Every write up to this log index is in the restored state.
    log_index: u64,
    raft_index: u64,
    raft_term: u64,
}

pub async fn run(args: RestoreArgs, json: bool) -> anyhow::Result<()> {
    let members = crate::server::parse_members(&args.initial_members)?;
    let file =
        std::fs::read(&args.from).with_context(|| format!("reading {}", args.from.display()))?;
    let sha256 = berth::raft::replica::hex(&Sha256::digest(&file));
    if let Some(expected) = &args.sha256 {
        if !expected.trim().eq_ignore_ascii_case(&sha256) {
            bail!(
                "{} has SHA-256 {sha256}, not the {} expected",
                args.from.display(),
                expected.trim()
            );
        }
    }
    let summary = berth::server::restore(&args.data_dir, args.id, &file, &members).await?;
    let (raft_index, raft_term) = summary.raft_position();
    let restored = Restored {
        replica_id: args.id,
        data_dir: args.data_dir.display().to_string(),
        sha256,
        log_index: summary.command_index,
        raft_index,
        raft_term,
    };
    if json {
        return crate::output::show(true, &restored);
    }
    out!(
        "restored replica {} in {}: every write up to log index {} (raft index {}, term {})",
        restored.replica_id,
        restored.data_dir,
        restored.log_index,
        restored.raft_index,
        restored.raft_term
    );
    out!(
        "start it with berth server --id {} --data-dir {} (no --bootstrap)",
        args.id,
        restored.data_dir
    );
    Ok(())
}
