//! `berth snapshot create` (a snapshot on the replica that answers, compacting its log) and
//! `berth backup FILE` (a fresh snapshot downloaded as a file, checked against the SHA-256 the
//! replica sends, for `berth restore`).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use berth::client::pb;
use clap::{Args, Subcommand};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::Session;

#[derive(Subcommand, Debug)]
pub enum SnapshotCmd {
    /// Build a snapshot on the replica that answers, holding every write acknowledged before
    /// the call, and compact its log behind it (admin).
    Create,
}

#[derive(Args, Debug)]
pub struct BackupArgs {
    /// Where to write the backup; an existing file is never replaced.
    file: PathBuf,
}

pub async fn snapshot(s: &Session, cmd: SnapshotCmd) -> anyhow::Result<()> {
    match cmd {
        SnapshotCmd::Create => {
            let r = call!(s, cluster, create_snapshot, pb::CreateSnapshotRequest {});
            s.show(&r.snapshot.unwrap_or_default())
        }
    }
}

/// What `berth backup` wrote.
#[derive(Serialize)]
struct Written {
    file: String,
    bytes: u64,
    sha256: String,
    snapshot: Option<pb::SnapshotInfo>,
}

pub async fn backup(s: &Session, args: BackupArgs) -> anyhow::Result<()> {
    if args.file.exists() {
        bail!("{} exists: a backup never replaces a file", args.file.display());
    }
    // Owner-only from the start: a backup holds every tenant's state and token hashes.
    let partial = partial_name(&args.file);
    let mut out = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&partial)
        .with_context(|| {
            format!("creating {} (left by an earlier backup? remove it)", partial.display())
        })?;
    let written = async {
        let mut stream = s
            .client
            .open(pb::BackupRequest {}, |ch, req| async move {
                berth::client::cluster(ch).backup(req).await
            })
            .await
            .map_err(|status| anyhow::anyhow!(super::describe(&status)))?;
        let header = receive(&mut stream, &mut out, s.json).await?;
        out.sync_all()?;
        // Linked, not renamed: a file that appeared meanwhile is never replaced.
        std::fs::hard_link(&partial, &args.file)
            .with_context(|| format!("linking {}", args.file.display()))?;
        if let Some(dir) = args.file.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::File::open(dir)?.sync_all()?;
        }
        anyhow::Ok(header)
    }
    .await;
    let _ = std::fs::remove_file(&partial);
    let header = written?;
    let written = Written {
        file: args.file.display().to_string(),
        bytes: header.file_bytes,
        sha256: header.sha256,
        snapshot: header.snapshot,
    };
    if s.json {
        return s.show(&written);
    }
    let info = written.snapshot.unwrap_or_default();
    out!(
        "wrote {} ({} bytes) from replica {}: every write up to log index {} (raft index {}, term {})",
        written.file,
        written.bytes,
        info.replica_id,
        info.log_index,
        info.raft_index,
        info.raft_term
    );
    out!("sha256 {}", written.sha256);
    Ok(())
}

/// Writes the stream's file bytes to `out`, checking them against its header; shows progress
/// on a terminal unless `quiet`.
async fn receive(
    stream: &mut tonic::Streaming<pb::BackupChunk>,
    out: &mut std::fs::File,
    quiet: bool,
) -> anyhow::Result<pb::BackupHeader> {
    let progress = !quiet && std::io::IsTerminal::is_terminal(&std::io::stderr());
    if progress {
        eprint!("building a snapshot on the replica...");
    }
    let mut header = None;
    let (mut received, mut hash) = (0u64, Sha256::new());
    while let Some(chunk) =
        stream.message().await.map_err(|s| anyhow::anyhow!(super::describe(&s)))?
    {
        match (chunk.part, &header) {
            (Some(pb::backup_chunk::Part::Header(h)), None) => header = Some(h),
            (Some(pb::backup_chunk::Part::Data(bytes)), Some(h)) => {
                received += bytes.len() as u64;
                if received > h.file_bytes {
                    bail!("the replica sent more than the {} bytes it announced", h.file_bytes);
                }
                hash.update(&bytes);
                out.write_all(&bytes)?;
                if progress {
                    eprint!("\rreceived {received} of {} bytes", h.file_bytes);
                }
            }
            _ => bail!("the replica's backup stream is out of order"),
        }
    }
    if progress {
        eprintln!();
    }
    let Some(header) = header else { bail!("the backup stream ended before it began") };
    if received != header.file_bytes {
        bail!("the backup stream ended after {received} of {} bytes", header.file_bytes);
    }
    let sha256 = berth::raft::replica::hex(&hash.finalize());
    if sha256 != header.sha256 {
        bail!("the backup's SHA-256 is {sha256}, but the replica sent {}", header.sha256);
    }
    Ok(header)
}

/// Where the backup is written until it is whole.
fn partial_name(file: &Path) -> PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push(".partial");
    PathBuf::from(name)
}
