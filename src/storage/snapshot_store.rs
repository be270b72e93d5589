//! Where a replica keeps its latest snapshot and the usage store's bases the snapshots refer
//! to (`crate::usage`): files written atomically (temp file, fsync, rename, fsync of the
//! directory), or memory for tests and simulation.
//!
//! File layout: a magic (`b"BSNP"` for `snapshot.bin`; for `usage-base-N.bin`, N the command
//! index the base was taken at, `b"BUSB"` for a base that is the store's dump whole or
//! `b"BUSD"` for one that is the changes since an earlier base), payload length (u64 LE),
//! payload (for the snapshot, bincode of `(meta, data)`; for a dump, the dump; for a delta,
//! the earlier base's index (u64 LE) and the changes), SHA-256 of the payload. A damaged file
//! is refused on load, never half-installed.
//!
//! A backup file (`berth backup`, `berth restore`) is framed the same way under `b"BBAK"`:
//! a snapshot whose usage store is whole (as a follower is sent it), so it needs no base.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::codec;
use crate::raft::types::SnapshotMeta;

const MAGIC: &[u8; 4] = b"BSNP";
const FILE_NAME: &str = "snapshot.bin";
const BASE_MAGIC: &[u8; 4] = b"BUSB";
const DELTA_MAGIC: &[u8; 4] = b"BUSD";
const BASE_PREFIX: &str = "usage-base-";
const BACKUP_MAGIC: &[u8; 4] = b"BBAK";

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
    Memory(Arc<Mutex<Stored>>),
}

/// What a memory store holds.
#[derive(Debug, Default)]
pub struct Stored {
    pub snapshot: Option<StoredSnapshot>,
    /// Usage store bases by the command index they were taken at.
    pub bases: std::collections::BTreeMap<u64, BaseFile>,
}

/// A usage store base as kept: the store's dump whole, or the changes since an earlier base
/// (a *delta*: `raft::state_machine` keeps the store as a dump and a chain of deltas, so a
/// snapshot writes only what changed and a replica holds only the changes since the last one).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BaseFile {
    Dump(Vec<u8>),
    Delta { parent: u64, changes: Vec<u8> },
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
                lock(slot).snapshot = Some(snapshot.clone());
                Ok(())
            }
            SnapshotStore::Dir(dir) => {
                let payload = codec::encode(snapshot)
                    .map_err(|e| SnapshotFileError::Damaged(e.to_string()))?;
                write_framed(dir, FILE_NAME, MAGIC, &payload)
            }
        }
    }

    /// Runs `work` on the store off the async runtime for files; in place for memory (so the
    /// simulation stays on its one thread and deterministic).
    pub async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&SnapshotStore) -> Result<T, SnapshotFileError> + Send + 'static,
    ) -> Result<T, SnapshotFileError> {
        match self {
            SnapshotStore::Memory(_) => work(self),
            SnapshotStore::Dir(_) => {
                let store = self.clone();
                tokio::task::spawn_blocking(move || work(&store))
                    .await
                    .map_err(|e| SnapshotFileError::Io(std::io::Error::other(e)))?
            }
        }
    }

    /// Bytes of the snapshot kept (its file, or its data in memory); 0 when there is none.
    pub fn bytes(&self) -> u64 {
        match self {
            SnapshotStore::Memory(slot) => lock(slot)
                .snapshot
                .as_ref()
                .map_or(0, |s| u64::try_from(s.data.len()).unwrap_or(u64::MAX)),
            SnapshotStore::Dir(dir) => {
                std::fs::metadata(dir.join(FILE_NAME)).map_or(0, |m| m.len())
            }
        }
    }

    pub fn load(&self) -> Result<Option<StoredSnapshot>, SnapshotFileError> {
        match self {
            SnapshotStore::Memory(slot) => Ok(lock(slot).snapshot.clone()),
            SnapshotStore::Dir(dir) => match std::fs::read(dir.join(FILE_NAME)) {
                Ok(bytes) => unframe(&bytes).map(Some),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e.into()),
            },
        }
    }

    /// Keeps the usage store's base taken at command index `index`: its dump whole.
    pub fn save_base(&self, index: u64, dump: &[u8]) -> Result<(), SnapshotFileError> {
        match self {
            SnapshotStore::Memory(slot) => {
                lock(slot).bases.insert(index, BaseFile::Dump(dump.to_vec()));
                Ok(())
            }
            SnapshotStore::Dir(dir) => write_framed(dir, &base_name(index), BASE_MAGIC, dump),
        }
    }

    /// Keeps the usage store's base taken at command index `index` as the changes since the
    /// base taken at `parent` (an earlier index).
    pub fn save_delta(
        &self,
        index: u64,
        parent: u64,
        changes: &[u8],
    ) -> Result<(), SnapshotFileError> {
        if parent >= index {
            return Err(SnapshotFileError::Damaged(format!(
                "usage store base {index} cannot be a delta over a later base {parent}"
            )));
        }
        match self {
            SnapshotStore::Memory(slot) => {
                let delta = BaseFile::Delta { parent, changes: changes.to_vec() };
                lock(slot).bases.insert(index, delta);
                Ok(())
            }
            SnapshotStore::Dir(dir) => {
                let payload = [&parent.to_le_bytes()[..], changes].concat();
                write_framed(dir, &base_name(index), DELTA_MAGIC, &payload)
            }
        }
    }

    /// The usage store's base taken at command index `index`.
    pub fn load_base(&self, index: u64) -> Result<BaseFile, SnapshotFileError> {
        let missing = || SnapshotFileError::Damaged(format!("usage store base {index} is missing"));
        let damaged =
            |why: &str| SnapshotFileError::Damaged(format!("usage store base {index}: {why}"));
        let file = match self {
            SnapshotStore::Memory(slot) => {
                lock(slot).bases.get(&index).cloned().ok_or_else(missing)?
            }
            SnapshotStore::Dir(dir) => match std::fs::read(dir.join(base_name(index))) {
                Ok(mut bytes) if bytes.starts_with(DELTA_MAGIC) => {
                    let payload = payload(DELTA_MAGIC, &bytes)?;
                    let (parent, changes) =
                        payload.split_first_chunk::<8>().ok_or_else(|| damaged("no parent"))?;
                    let parent = u64::from_le_bytes(*parent);
                    let changes = changes.len();
                    // In place, as a dump below.
                    bytes.truncate(FRAME_HEAD + 8 + changes);
                    bytes.drain(..FRAME_HEAD + 8);
                    BaseFile::Delta { parent, changes: bytes }
                }
                Ok(mut bytes) => {
                    // In place: a base is the largest thing a replica reads whole.
                    let len = payload(BASE_MAGIC, &bytes)?.len();
                    bytes.truncate(FRAME_HEAD + len);
                    bytes.drain(..FRAME_HEAD);
                    BaseFile::Dump(bytes)
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(missing()),
                Err(e) => return Err(e.into()),
            },
        };
        match file {
            BaseFile::Delta { parent, .. } if parent >= index => {
                Err(damaged("a delta over a later base"))
            }
            file => Ok(file),
        }
    }

    /// Removes every usage store base but those in `keep` (and any half-written one).
    pub fn retain_bases(&self, keep: &[u64]) -> Result<(), SnapshotFileError> {
        match self {
            SnapshotStore::Memory(slot) => {
                lock(slot).bases.retain(|index, _| keep.contains(index));
                Ok(())
            }
            SnapshotStore::Dir(dir) => {
                for entry in std::fs::read_dir(dir)? {
                    let name = entry?.file_name();
                    // A temporary file a crash left while a base was written goes too.
                    let index = name
                        .to_str()
                        .and_then(|n| n.strip_prefix(BASE_PREFIX))
                        .and_then(|n| n.strip_suffix(".bin.tmp").or(n.strip_suffix(".bin")))
                        .and_then(|n| n.parse::<u64>().ok());
                    let temporary = name.to_str().is_some_and(|n| n.ends_with(".tmp"));
                    if index.is_some_and(|i| temporary || !keep.contains(&i)) {
                        std::fs::remove_file(dir.join(name))?;
                    }
                }
                Ok(())
            }
        }
    }
}

fn lock(slot: &Mutex<Stored>) -> std::sync::MutexGuard<'_, Stored> {
    slot.lock().unwrap_or_else(|p| p.into_inner())
}

fn base_name(index: u64) -> String {
    format!("{BASE_PREFIX}{index}.bin")
}

fn frame(magic: &[u8; 4], payload: &[u8]) -> Vec<u8> {
    let (head, tail) = frame_ends(magic, payload);
    [&head[..], payload, &tail[..]].concat()
}

/// Bytes of a frame before its payload: the magic and the payload's length.
const FRAME_HEAD: usize = 4 + 8;

/// What a frame puts before `payload` and after it (its SHA-256).
fn frame_ends(magic: &[u8; 4], payload: &[u8]) -> ([u8; FRAME_HEAD], [u8; 32]) {
    let mut head = [0; FRAME_HEAD];
    head[..4].copy_from_slice(magic);
    head[4..].copy_from_slice(&(payload.len() as u64).to_le_bytes());
    (head, Sha256::digest(payload).into())
}

/// A backup file of `snapshot` (whose usage store is whole).
pub fn encode_backup(snapshot: &StoredSnapshot) -> Result<Vec<u8>, SnapshotFileError> {
    let payload = codec::encode(snapshot).map_err(|e| SnapshotFileError::Damaged(e.to_string()))?;
    Ok(frame(BACKUP_MAGIC, &payload))
}

/// Checks and decodes a backup file: its magic, length and checksum, then its encoding.
pub fn decode_backup(bytes: &[u8]) -> Result<StoredSnapshot, SnapshotFileError> {
    let payload = payload(BACKUP_MAGIC, bytes).map_err(|e| match e {
        SnapshotFileError::Damaged(why) => {
            SnapshotFileError::Damaged(format!("not a Berth backup, or a damaged one: {why}"))
        }
        other => other,
    })?;
    codec::decode(payload).map_err(|e| SnapshotFileError::Damaged(e.to_string()))
}

/// Checks and decodes a framed snapshot file.
pub fn unframe(bytes: &[u8]) -> Result<StoredSnapshot, SnapshotFileError> {
    codec::decode(payload(MAGIC, bytes)?).map_err(|e| SnapshotFileError::Damaged(e.to_string()))
}

/// The payload of a framed file, checked.
fn payload<'a>(magic: &[u8; 4], bytes: &'a [u8]) -> Result<&'a [u8], SnapshotFileError> {
    let damaged = |why: &str| SnapshotFileError::Damaged(why.to_owned());
    if bytes.len() < FRAME_HEAD + 32 || &bytes[..4] != magic {
        return Err(damaged("bad header"));
    }
    let declared =
        u64::from_le_bytes(bytes[4..FRAME_HEAD].try_into().map_err(|_| damaged("length"))?);
    let payload = &bytes[FRAME_HEAD..bytes.len() - 32];
    if declared != payload.len() as u64 {
        return Err(damaged("length mismatch (truncated?)"));
    }
    if Sha256::digest(payload).as_slice() != &bytes[bytes.len() - 32..] {
        return Err(damaged("checksum mismatch"));
    }
    Ok(payload)
}

/// Writes `payload` framed (`frame`) to `dir/name` atomically, without copying it into a
/// frame first: a snapshot or a usage store base is tens of MB, and each copy of that size
/// is heap the allocator may keep.
fn write_framed(
    dir: &Path,
    name: &str,
    magic: &[u8; 4],
    payload: &[u8],
) -> Result<(), SnapshotFileError> {
    let (head, tail) = frame_ends(magic, payload);
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!("{name}.tmp"));
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(&head)?;
    file.write_all(payload)?;
    file.write_all(&tail)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, dir.join(name))?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(())
}
