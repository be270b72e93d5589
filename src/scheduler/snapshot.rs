//! Versioned snapshot encoding and the state hash.
//!
//! Layout: `b"BRTH"`, format version (u32 LE), payload length (u64 LE), payload (bincode 2 of
//! `(State, AuditHead)`), SHA-256 of the payload. `decode` checks every part and then the invariants, so a
//! truncated, corrupted or inconsistent snapshot is refused rather than installed, and no bytes
//! make it panic or allocate without bound (the payload decodes under a size limit).

use sha2::{Digest, Sha256};

use super::audit::AuditHead;
use super::{Scheduler, State};

/// 2: quotas gained soft limits, grace, pool denial; tenants a burst state.
/// 3: quotas gained a preemption policy and pool guarantees; placements a `borrowed` mark and
/// specs `requeue_on_preemption`.
/// 4: quotas gained soft limits as a share of a pool (`soft_share`).
/// 5: pools gained reserves (`State::pool_reserves`).
/// 6: tenants' tokens gained an expiry (`Token`).
/// 7: workers gained liveness (heartbeats, TTL), a down mark, a generation and a history;
/// placements `queue_if_unavailable`, slots and a time limit; specs `on_worker_lost` and
/// `max_runtime_ms`; the state pool worker TTLs and finished placements; session answers the
/// work lost with a worker (`Applied::lost`).
/// 8: tenants gained a billing plan and a meter; the state price plans.
/// 9: tenants gained budgets and invoices; quotas utilisation alerts and weekly windows.
/// 10: the config gained the usage store's retention.
/// 11: the usage store's hourly roll-ups hold a row of 24 hours per pool and item (the
/// store's dump rides in the snapshot).
/// 12: a stored snapshot holds the usage store as a base file's name and the changes since it
/// (the dump whole only when sent to a follower).
/// 13: tenants gained rate limits and their buckets (`rates.rs`).
/// 14: tenants gained their policy's versions (`policy.rs`).
/// 15: the payload is the state and the audit chain's head (`audit.rs`).
/// 16: the usage store keeps a tenant's change points in blocks (the store's base and changes
/// ride with the snapshot).
pub const SNAPSHOT_VERSION: u32 = 16;
const MAGIC: &[u8; 4] = b"BRTH";
const HEADER_LEN: usize = 4 + 4 + 8;
const DIGEST_LEN: usize = 32;
/// Largest snapshot payload this build decodes: 4 GiB.
pub const SNAPSHOT_PAYLOAD_MAX: usize = 1 << 32;
/// Most bytes bincode's limit counts per payload byte. The limit counts what each value claims
/// in memory as it decodes (a varint u128 claims 16 bytes however short its encoding), not the
/// bytes read, so a payload needs a limit of up to this many times its length.
const CLAIM_PER_BYTE_MAX: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("snapshot is too short ({0} bytes)")]
    Truncated(usize),
    #[error("not a Berth snapshot (bad magic)")]
    BadMagic,
    #[error(
        "snapshot format version {found} is not supported (this build reads {SNAPSHOT_VERSION})"
    )]
    UnsupportedVersion { found: u32 },
    #[error("snapshot payload length {declared} does not match the {actual} bytes present")]
    LengthMismatch { declared: u64, actual: u64 },
    #[error("snapshot checksum mismatch")]
    Checksum,
    #[error(
        "snapshot payload of {0} bytes is larger than the {SNAPSHOT_PAYLOAD_MAX} this build reads"
    )]
    TooLarge(usize),
    #[error("snapshot payload does not decode: {0}")]
    Payload(String),
    #[error("snapshot state breaks invariants: {0}")]
    Invariants(String),
}

fn payload<T: serde::Serialize>(value: &T) -> Vec<u8> {
    bincode::serde::encode_to_vec(value, bincode::config::standard())
        .expect("invariant: state always encodes")
}

/// Decodes a payload under a bincode limit: the smallest of a few fixed limits (the limit is a
/// type parameter) that is at least `CLAIM_PER_BYTE_MAX` times its length. A length inside
/// the payload that claims more (a 2^62-byte string) is an error before anything is allocated,
/// so no allocation is larger than that multiple of the bytes given.
fn decode_limited<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<(T, usize), DecodeError> {
    use bincode::config::standard;
    use bincode::serde::decode_from_slice;
    if body.len() > SNAPSHOT_PAYLOAD_MAX {
        return Err(DecodeError::TooLarge(body.len()));
    }
    let claim = body.len().saturating_mul(CLAIM_PER_BYTE_MAX);
    let decoded = if claim <= 1 << 16 {
        decode_from_slice(body, standard().with_limit::<{ 1 << 16 }>())
    } else if claim <= 1 << 20 {
        decode_from_slice(body, standard().with_limit::<{ 1 << 20 }>())
    } else if claim <= 1 << 24 {
        decode_from_slice(body, standard().with_limit::<{ 1 << 24 }>())
    } else if claim <= 1 << 28 {
        decode_from_slice(body, standard().with_limit::<{ 1 << 28 }>())
    } else if claim <= 1 << 32 {
        decode_from_slice(body, standard().with_limit::<{ 1 << 32 }>())
    } else {
        decode_from_slice(body, standard().with_limit::<{ 1 << 36 }>())
    };
    decoded.map_err(|e| DecodeError::Payload(e.to_string()))
}

impl Scheduler {
    /// The whole replicated state as bytes.
    pub fn encode(&self) -> Vec<u8> {
        let body = payload(&(&self.state, &self.audit));
        let mut out = Vec::with_capacity(HEADER_LEN + body.len() + DIGEST_LEN);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&SNAPSHOT_VERSION.to_le_bytes());
        out.extend_from_slice(&super::count_u64(body.len()).to_le_bytes());
        out.extend_from_slice(&body);
        out.extend_from_slice(&Sha256::digest(&body));
        out
    }

    /// Rebuilds a scheduler from `encode`'s output, refusing anything damaged or inconsistent.
    pub fn decode(bytes: &[u8]) -> Result<Scheduler, DecodeError> {
        if bytes.len() < HEADER_LEN + DIGEST_LEN {
            return Err(DecodeError::Truncated(bytes.len()));
        }
        if &bytes[..4] != MAGIC {
            return Err(DecodeError::BadMagic);
        }
        let version = u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes"));
        if version != SNAPSHOT_VERSION {
            return Err(DecodeError::UnsupportedVersion { found: version });
        }
        let declared = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes"));
        let actual = super::count_u64(bytes.len() - HEADER_LEN - DIGEST_LEN);
        if declared != actual {
            return Err(DecodeError::LengthMismatch { declared, actual });
        }
        let (body, digest) = bytes[HEADER_LEN..].split_at(bytes.len() - HEADER_LEN - DIGEST_LEN);
        if Sha256::digest(body).as_slice() != digest {
            return Err(DecodeError::Checksum);
        }
        let ((state, audit), read): ((State, AuditHead), usize) = decode_limited(body)?;
        if read != body.len() {
            return Err(DecodeError::Payload(format!("{} trailing bytes", body.len() - read)));
        }
        // What building the indexes relies on; everything else is `check_invariants`.
        for w in state.workers.values() {
            let bounded =
                w.capacity.validate("capacity", super::resources::WORKER_RESOURCES_MAX, true);
            if bounded.is_err() || !w.allocated.fits_in(w.capacity) {
                return Err(DecodeError::Invariants(format!(
                    "worker {} holds {:?} of {:?}",
                    super::ids::quoted(w.id.as_str()),
                    w.allocated,
                    w.capacity
                )));
            }
        }
        let mut scheduler = Scheduler::from_state(state);
        scheduler.audit = audit;
        scheduler.check_invariants().map_err(|v| DecodeError::Invariants(v.join("; ")))?;
        Ok(scheduler)
    }

    /// SHA-256 of the encoded state: equal on replicas that applied the same entries.
    pub fn state_hash(&self) -> [u8; 32] {
        Sha256::digest(payload(&self.state)).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::{
        Applied, LogIndex, PoolId, RequestId, Resources, Response, Session, SessionKey, Sessions,
    };
    use std::collections::BTreeMap;

    fn session(index: u64) -> Session {
        Session {
            command_digest: [0; 32],
            first: Applied {
                log_index: LogIndex(index),
                applied_at: Default::default(),
                result: Ok(Response::Ticked),
                replayed: false,
                expired: Vec::new(),
                events: Vec::new(),
                journal: Vec::new(),
                lost: Vec::new(),
                audit: None,
            },
        }
    }

    fn key(request_id: &str) -> SessionKey {
        SessionKey { tenant: None, request_id: RequestId::new(request_id) }
    }

    fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
        bincode::serde::encode_to_vec(value, bincode::config::standard()).expect("encodes")
    }

    fn decode_sessions(bytes: &[u8]) -> Result<Sessions, bincode::error::DecodeError> {
        bincode::serde::decode_from_slice(bytes, bincode::config::standard()).map(|(s, _)| s)
    }

    /// The session table encodes as the `BTreeMap` it replaced did, so a table written by an
    /// earlier build decodes into the same sessions, oldest first; one listing a request id or
    /// a log index twice is refused.
    #[test]
    fn sessions_decode_from_the_earlier_map_encoding() {
        // Key order ("a" before "b") is the reverse of creation order.
        let earlier: BTreeMap<SessionKey, Session> =
            [(key("a"), session(2)), (key("b"), session(1))].into();
        let sessions = decode_sessions(&encode(&earlier)).expect("decodes");
        let listed: Vec<(&SessionKey, LogIndex)> =
            sessions.iter().map(|(k, s)| (k, s.first.log_index)).collect();
        assert_eq!(listed, vec![(&key("b"), LogIndex(1)), (&key("a"), LogIndex(2))]);
        assert!(sessions.consistent());
        assert_eq!(decode_sessions(&encode(&sessions)).expect("decodes"), sessions);

        let mut rekeyed = sessions.clone();
        rekeyed.rekey(std::collections::hash_map::RandomState::new());
        assert_eq!(rekeyed, sessions, "keys change where sessions sit, nothing else");
        assert!(rekeyed.consistent());
        assert_eq!(rekeyed.get(&key("a")).map(|s| s.first.log_index), Some(LogIndex(2)));

        let same_id = vec![(key("a"), session(1)), (key("a"), session(2))];
        assert!(decode_sessions(&encode(&same_id)).is_err());
        let same_index = vec![(key("a"), session(1)), (key("b"), session(1))];
        assert!(decode_sessions(&encode(&same_index)).is_err());
    }

    /// A snapshot whose pool reserve names an invalid pool is refused by the invariants, and
    /// one of the previous format version is refused outright.
    #[test]
    fn decode_refuses_a_bad_reserve_and_an_old_version() {
        let mut state = State::default();
        state.pool_reserves.insert(PoolId::new("Bad Pool"), Resources::new(1, 1));
        let bytes = Scheduler::from_state(state).encode();
        assert!(matches!(Scheduler::decode(&bytes), Err(DecodeError::Invariants(_))));

        let mut bytes = Scheduler::default().encode();
        assert!(Scheduler::decode(&bytes).is_ok());
        bytes[4..8].copy_from_slice(&(SNAPSHOT_VERSION - 1).to_le_bytes());
        assert!(matches!(
            Scheduler::decode(&bytes),
            Err(DecodeError::UnsupportedVersion { found }) if found == SNAPSHOT_VERSION - 1
        ));
    }
}
