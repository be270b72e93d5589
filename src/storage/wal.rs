//! The write-ahead file's format: what a change to the log looks like on disk, and how the
//! file is read back.
//!
//! The file is a run of frames, `[length u32 LE][crc32 of the payload u32 LE][payload]`, each
//! payload one `Record` (bounded bincode, `crate::codec`), followed by zeros to the end of the
//! file (the writer preallocates; zeros end the records). Replaying the records in order
//! rebuilds the live log (`MemLog`). A torn record at the end (a crash mid-write, never
//! acknowledged) is dropped; a bad record with data after it is damage, and refused rather
//! than dropping what follows (see `replay`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::memory::{MemLog, META_KEYS};
use super::write_err;
use crate::codec;
use crate::raft::types::StorageError;

/// Bytes before each record's payload: its length and checksum.
const FRAME_HEADER: usize = 8;

/// One change to the log, as the write-ahead file records it. Replaying the records in order
/// rebuilds the log; each one sets or removes keys, so a record applied twice in a row changes
/// nothing more.
#[derive(Serialize, Deserialize)]
pub(super) enum Record {
    /// Entries (index, encoded entry), written over whatever those indexes held.
    Entries(Vec<(u64, EntryBytes)>),
    /// A vote, commit or purge mark.
    Meta(String, #[serde(with = "codec::bytes")] Vec<u8>),
    /// Removes every entry at or after the index (truncate).
    RemoveFrom(u64),
    /// Removes every entry at or before the index (purge).
    RemoveThrough(u64),
}

/// An entry as `log_store` encoded it, recorded as one run of bytes (`codec::bytes`: the same
/// bytes as a plain `Vec<u8>`, copied at once rather than encoded again byte by byte).
#[derive(Serialize, Deserialize)]
pub(super) struct EntryBytes(#[serde(with = "codec::bytes")] pub(super) Vec<u8>);

impl Record {
    pub(super) fn apply(self, log: &mut MemLog) -> Result<(), String> {
        match self {
            Record::Entries(entries) => {
                log.logs.extend(entries.into_iter().map(|(index, entry)| (index, entry.0)))
            }
            Record::Meta(key, value) => {
                let key = META_KEYS
                    .into_iter()
                    .find(|k| *k == key)
                    .ok_or_else(|| format!("unknown log meta key {key:?}"))?;
                log.meta.insert(key, value);
            }
            Record::RemoveFrom(index) => {
                log.logs.split_off(&index);
            }
            Record::RemoveThrough(index) => {
                log.logs = match index.checked_add(1) {
                    Some(next) => log.logs.split_off(&next),
                    None => BTreeMap::new(),
                };
            }
        }
        Ok(())
    }

    /// Appends `[length u32 LE][crc32 of the payload u32 LE][payload]` to `out`, encoding
    /// the payload in place (on failure `out` is left as it was).
    pub(super) fn frame_into(&self, out: &mut Vec<u8>) -> Result<(), StorageError> {
        let start = out.len();
        out.extend_from_slice(&[0; FRAME_HEADER]);
        let encoded = codec::encode_into(self, out)
            .map_err(write_err)
            .and_then(|n| u32::try_from(n).map_err(write_err));
        let len = match encoded {
            Ok(len) => len,
            Err(e) => {
                out.truncate(start);
                return Err(e);
            }
        };
        let crc = crc32fast::hash(&out[start + FRAME_HEADER..]);
        out[start..start + 4].copy_from_slice(&len.to_le_bytes());
        out[start + 4..start + FRAME_HEADER].copy_from_slice(&crc.to_le_bytes());
        Ok(())
    }
}

/// A record that does not read back whole, and why.
#[derive(Debug)]
pub(super) struct Damage {
    pub(super) at: usize,
    pub(super) why: String,
}

/// Reads the records of a write-ahead file into `log`. Returns the length of the valid prefix:
/// what follows it is zeros (the preallocated tail) or a write torn by a crash. Nothing after
/// a torn write was ever acknowledged: every acknowledgement waits for `fdatasync`, and nothing
/// is written after a write until it synced. So a bad record (cut short, or failing its
/// checksum) is a torn write only if nothing but zeros follows it; anything else after it
/// is damage, and refused rather than dropped. A record cut short by the end of the file is
/// torn only if the file ends in it: the writer always leaves zeros after its last record,
/// so a length that runs past them was itself damaged. A record that passes its checksum but
/// does not decode was never torn either. (A torn write whose later pages reached the disk
/// before its earlier ones is refused too: it cannot be told apart from damage.)
pub(super) fn replay(bytes: &[u8], log: &mut MemLog) -> Result<usize, Damage> {
    // Everything from here on is zero.
    let data_end = bytes.iter().rposition(|b| *b != 0).map_or(0, |last| last + 1);
    let mut at = 0;
    while at < data_end {
        let header = bytes.get(at..at + FRAME_HEADER);
        let word = |from: usize| {
            header.map(|h| u32::from_le_bytes([h[from], h[from + 1], h[from + 2], h[from + 3]]))
        };
        let (len, crc) = match (word(0), word(4)) {
            (Some(len), Some(crc)) => (len as usize, crc),
            _ => return torn_or_damaged(bytes, data_end, at, usize::MAX, "header cut short"),
        };
        let end = at + FRAME_HEADER + len;
        if len == 0 {
            return torn_or_damaged(bytes, data_end, at, end, "zero length");
        }
        let Some(payload) = bytes.get(at + FRAME_HEADER..end) else {
            return torn_or_damaged(bytes, data_end, at, end, "cut short");
        };
        if crc32fast::hash(payload) != crc {
            return torn_or_damaged(bytes, data_end, at, end, "checksum mismatch");
        }
        let damaged = |why: String| Damage { at, why };
        let record: Record = codec::decode(payload)
            .map_err(|e| damaged(format!("passes its checksum but does not decode: {e}")))?;
        record.apply(log).map_err(damaged)?;
        at = end;
    }
    Ok(at)
}

/// The bad record at `at`, ending at `end` by its header: a torn write to drop (`Ok`, the
/// valid prefix) or damage to refuse (see `replay`).
fn torn_or_damaged(
    bytes: &[u8],
    data_end: usize,
    at: usize,
    end: usize,
    why: &str,
) -> Result<usize, Damage> {
    let cut_short = end > bytes.len();
    let torn = if cut_short { data_end == bytes.len() } else { end >= data_end };
    if torn {
        return Ok(at);
    }
    let why = match cut_short {
        true => format!("{why}, and its length runs past the zeros that end the file"),
        false => format!("{why}, and {} bytes of data follow it", data_end - end),
    };
    Err(Damage { at, why })
}
