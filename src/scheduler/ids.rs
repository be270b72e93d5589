//! Identifiers and units of the replicated state.
//!
//! Every id is a newtype so a `TenantId` can never be passed where a `WorkerId` is meant.
//! Ids arrive from clients as strings; they are checked by `Command::validate` (at the API
//! and again in `apply`), never trusted because a command deserialised. A rejection quotes at
//! most a short prefix of a bad value (`quoted`), so an error is never larger than its input
//! warrants.

use serde::{Deserialize, Serialize};
use std::fmt;

use super::command::Rejection;

/// The longest tenant id (DNS label rule).
pub const TENANT_ID_LEN_MAX: usize = 63;
/// The longest id of any other object (worker, pool, placement, group, lease, token, request).
pub const OBJECT_ID_LEN_MAX: usize = 128;
/// Most bytes of a client-supplied value a rejection quotes.
pub const QUOTED_LEN_MAX: usize = 32;

/// `text` for an error: itself when short, else its first `QUOTED_LEN_MAX` bytes (at most)
/// and its full length, so a huge bad value never travels back in an error.
pub fn shortened(text: &str) -> String {
    if text.len() <= QUOTED_LEN_MAX {
        return text.to_owned();
    }
    let cut = (0..=QUOTED_LEN_MAX).rev().find(|i| text.is_char_boundary(*i)).unwrap_or(0);
    format!("{}…({} bytes)", &text[..cut], text.len())
}

/// `shortened(text)`, Rust-quoted, for a message.
pub fn quoted(text: &str) -> String {
    format!("{:?}", shortened(text))
}

macro_rules! string_id {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(
            Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
        )]
        pub struct $name(pub String);

        impl $name {
            pub fn new(id: impl Into<String>) -> Self {
                Self(id.into())
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<&str> for $name {
            fn from(id: &str) -> Self {
                Self(id.to_owned())
            }
        }

        impl From<String> for $name {
            fn from(id: String) -> Self {
                Self(id)
            }
        }
    };
}

string_id!(
    /// A tenant: `^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`.
    TenantId
);
string_id!(
    /// A machine that runs workloads (never "node": Raft members are replicas).
    WorkerId
);
string_id!(
    /// A named set of workers.
    PoolId
);
string_id!(
    /// A workload chosen by its tenant; unique only within that tenant.
    PlacementId
);
string_id!(
    /// A placement group, unique within its tenant.
    GroupId
);
string_id!(
    /// A lease (lock) name, unique within its tenant.
    LeaseName
);
string_id!(
    /// A client-chosen idempotency key, scoped by tenant.
    RequestId
);
string_id!(
    /// The name of one of a tenant's API tokens (the token itself is never stored).
    TokenId
);
string_id!(
    /// A price plan (`meter.rs`).
    PlanId
);

/// The pool a worker or placement uses when none is named.
pub const DEFAULT_POOL: &str = "default";

/// A Raft log index. Also the fencing token of a lease grant.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct LogIndex(pub u64);

/// Milliseconds since the Unix epoch, in log time (stamped by the leader).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct UnixMillis(pub u64);

/// The latest log time: 9999-12-31T23:59:59.999Z. A later `proposed_at` counts as this, so
/// every deadline (now plus a bounded ttl or grace) is a real time that can still pass.
pub const UNIX_MILLIS_MAX: UnixMillis = UnixMillis(253_402_300_799_999);

impl UnixMillis {
    /// `self + ms`, saturating: a deadline past the end of time never fires.
    pub fn plus_ms(self, ms: u64) -> UnixMillis {
        UnixMillis(self.0.saturating_add(ms))
    }
}

impl fmt::Display for UnixMillis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}ms", self.0)
    }
}

/// SHA-256 of an API token. Tokens are stored only in this form.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TokenHash(pub [u8; 32]);

impl TenantId {
    /// Checks the DNS-label rule; an empty or blank id is `TENANT_ID_REQUIRED`.
    pub fn validate(&self) -> Result<(), Rejection> {
        let id = self.0.as_str();
        if id.trim().is_empty() {
            return Err(Rejection::TenantIdRequired);
        }
        let bytes = id.as_bytes();
        let inner_ok = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-';
        let edge_ok = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
        let valid = bytes.len() <= TENANT_ID_LEN_MAX
            && bytes.iter().all(inner_ok)
            && bytes.first().is_some_and(edge_ok)
            && bytes.last().is_some_and(edge_ok);
        if valid {
            Ok(())
        } else {
            Err(Rejection::InvalidTenantId { tenant: shortened(id) })
        }
    }
}

impl RequestId {
    /// Checks the object id rule; the API and `apply` both call this.
    pub fn validate(&self) -> Result<(), Rejection> {
        validate_object_id("request", self.as_str())
    }
}

/// Checks an object id: 1..=128 bytes of `[A-Za-z0-9._:-]`, starting alphanumeric.
pub fn validate_object_id(kind: &'static str, id: &str) -> Result<(), Rejection> {
    let bytes = id.as_bytes();
    let ok = !bytes.is_empty()
        && bytes.len() <= OBJECT_ID_LEN_MAX
        && bytes[0].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b':'));
    if ok {
        Ok(())
    } else {
        Err(Rejection::invalid(
            kind,
            format!(
                "{kind} id {} must be 1..={OBJECT_ID_LEN_MAX} characters of [A-Za-z0-9._:-] starting with a letter or digit",
                quoted(id)
            ),
        ))
    }
}
