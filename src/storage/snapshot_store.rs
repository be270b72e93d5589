//! Where a replica keeps its latest snapshot: a file written atomically (temp file, fsync,
//! rename, fsync of the directory), or memory for tests and simulation.
//!
//! File layout: `b"BSNP"`, payload length (u64 LE), payload (bincode of `(meta, data)`),
//! SHA-256 of the payload. A damaged file is refused on load, never half-installed.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::codec;
use crate::raft::types::SnapshotMeta;

const MAGIC: &[u8; 4] = b"BSNP";
const FILE_NAME: &str = "snapshot.bin";

/// A snapshot as stored: openraft's metadata and our state machine bytes.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StoredSnapshot {
    pub meta: SnapshotMeta,
    /// Written as one run of bytes (`codec::bytes`; the same bytes as a plain `Vec<u8>`).
    #[serde(with = "codec::bytes")]
    pub data: Vec<u8>,
}

#[derive(Clone, Debug)]
pub enum SnapshotStore {
    Dir(PathBuf),
    Memory(Arc<Mutex<Option<StoredSnapshot>>>),
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotFileError {
    #[error("snapshot file io: {0}")]
    Io(#[from] std::io::Error),
    #[error("snapshot file is damaged: {0}")]
    Damaged(String),
}

impl SnapshotStore {
    pub fn save(&self, snapshot: &StoredSnapshot) -> Result<(), SnapshotFileError> {
        match self {
            SnapshotStore::Memory(slot) => {
                *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(snapshot.clone());
                Ok(())
            }
            SnapshotStore::Dir(dir) => write_atomically(dir, &frame(snapshot)?),
        }
    }

    /// `save` off the async runtime for files; in place for memory (so the simulation stays
    /// on its one thread and deterministic).
    pub async fn save_async(&self, snapshot: StoredSnapshot) -> Result<(), SnapshotFileError> {
        match self {
            SnapshotStore::Memory(_) => self.save(&snapshot),
            SnapshotStore::Dir(_) => {
                let store = self.clone();
                tokio::task::spawn_blocking(move || store.save(&snapshot))
                    .await
                    .map_err(|e| SnapshotFileError::Io(std::io::Error::other(e)))?
            }
        }
    }

    pub fn load(&self) -> Result<Option<StoredSnapshot>, SnapshotFileError> {
        match self {
            SnapshotStore::Memory(slot) => {
                Ok(slot.lock().unwrap_or_else(|p| p.into_inner()).clone())
            }
            SnapshotStore::Dir(dir) => match std::fs::read(dir.join(FILE_NAME)) {
                Ok(bytes) => unframe(&bytes).map(Some),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e.into()),
            },
        }
    }
}

fn frame(snapshot: &StoredSnapshot) -> Result<Vec<u8>, SnapshotFileError> {
    let payload = codec::encode(snapshot).map_err(|e| SnapshotFileError::Damaged(e.to_string()))?;
    let mut out = Vec::with_capacity(payload.len() + 44);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&payload);
    out.extend_from_slice(&Sha256::digest(&payload));
    Ok(out)
}

/// Checks and decodes a framed snapshot file.
pub fn unframe(bytes: &[u8]) -> Result<StoredSnapshot, SnapshotFileError> {
    let damaged = |why: &str| SnapshotFileError::Damaged(why.to_owned());
    if bytes.len() < 4 + 8 + 32 || &bytes[..4] != MAGIC {
        return Err(damaged("bad header"));
    }
    let declared = u64::from_le_bytes(bytes[4..12].try_into().map_err(|_| damaged("length"))?);
    let payload = &bytes[12..bytes.len() - 32];
    if declared != payload.len() as u64 {
        return Err(damaged("length mismatch (truncated?)"));
    }
    if Sha256::digest(payload).as_slice() != &bytes[bytes.len() - 32..] {
        return Err(damaged("checksum mismatch"));
    }
    codec::decode(payload).map_err(|e| SnapshotFileError::Damaged(e.to_string()))
}

fn write_atomically(dir: &Path, bytes: &[u8]) -> Result<(), SnapshotFileError> {
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!("{FILE_NAME}.tmp"));
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, dir.join(FILE_NAME))?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}
