//! The one mapping from Berth's errors to `tonic::Status`.
//!
//! Every error carries a `google.rpc.ErrorInfo` detail with a stable UPPER_SNAKE `reason`,
//! domain `berth`, and metadata. UNAVAILABLE with reason `OUTCOME_UNKNOWN` means a write may
//! or may not have happened: retry it with the same request id.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::raft::replica::{ReadError, WriteError};
use crate::scheduler::ids::{quoted, shortened, OBJECT_ID_LEN_MAX};
use crate::scheduler::Rejection;

pub const DOMAIN: &str = "berth";

/// Most bytes of an error message. Client values inside it are quoted short already; this is
/// the backstop that keeps every error readable (gRPC clients refuse large metadata).
pub const ERROR_MESSAGE_BYTES_MAX: usize = 256;

/// Longest metadata value passed on whole: every valid id fits (`OBJECT_ID_LEN_MAX`); a
/// longer value can only be bad input, and is quoted.
pub const METADATA_VALUE_BYTES_MAX: usize = OBJECT_ID_LEN_MAX;

/// `message` cut to at most `ERROR_MESSAGE_BYTES_MAX` bytes (at a character boundary).
fn bounded(message: String) -> String {
    if message.len() <= ERROR_MESSAGE_BYTES_MAX {
        return message;
    }
    let mut cut = ERROR_MESSAGE_BYTES_MAX;
    while !message.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}… ({} bytes)", &message[..cut], message.len())
}

/// A status with an ErrorInfo detail. Long metadata values are quoted and the message is
/// bounded, whoever built them: an error never carries a client's whole input back.
pub fn error(
    code: Code,
    reason: &str,
    message: impl Into<String>,
    metadata: Vec<(String, String)>,
) -> Status {
    super::observe::reason(reason);
    // A refusal that says when to come back says it in RetryInfo too, where gRPC clients look.
    let retry_after_ms = metadata
        .iter()
        .find(|(key, _)| key == "retry_after_ms")
        .and_then(|(_, value)| value.parse::<u64>().ok());
    let mut details = ErrorDetails::with_error_info(
        reason,
        DOMAIN,
        metadata
            .into_iter()
            .map(|(key, value)| {
                if value.len() <= METADATA_VALUE_BYTES_MAX {
                    (key, value)
                } else {
                    (key, shortened(&value))
                }
            })
            .collect::<std::collections::HashMap<_, _>>(),
    );
    if let Some(ms) = retry_after_ms {
        details.set_retry_info(Some(std::time::Duration::from_millis(ms)));
    }
    Status::with_error_details(code, bounded(message.into()), details)
}

pub fn invalid(reason: &str, message: impl Into<String>) -> Status {
    error(Code::InvalidArgument, reason, message, Vec::new())
}

/// NOT_FOUND for a read of an object that does not exist: reason `<WHAT>_NOT_FOUND`.
pub fn not_found(what: &str, id: &str) -> Status {
    error(
        Code::NotFound,
        &format!("{}_NOT_FOUND", what.to_uppercase()),
        format!("{what} {} not found", quoted(id)),
        Vec::new(),
    )
}

/// The gRPC code for each business rejection.
fn code(rejection: &Rejection) -> Code {
    match rejection {
        Rejection::TenantIdRequired
        | Rejection::InvalidTenantId { .. }
        | Rejection::InvalidArgument { .. } => Code::InvalidArgument,
        Rejection::TenantNotFound { .. }
        | Rejection::WorkerNotFound { .. }
        | Rejection::PlacementNotFound { .. }
        | Rejection::GroupNotFound { .. }
        | Rejection::PlanNotFound { .. }
        | Rejection::LeaseNotFound { .. }
        | Rejection::TokenNotFound { .. }
        | Rejection::PolicyVersionNotFound { .. }
        | Rejection::NotQueued { .. } => Code::NotFound,
        Rejection::TenantExists { .. }
        | Rejection::WorkerExists { .. }
        | Rejection::PlacementExists { .. }
        | Rejection::GroupExists { .. }
        | Rejection::TokenExists { .. } => Code::AlreadyExists,
        Rejection::QuotaExceeded { .. }
        | Rejection::WindowExhausted { .. }
        | Rejection::BudgetSpent { .. }
        | Rejection::RateLimited { .. }
        | Rejection::NoCapacity { .. }
        | Rejection::NotLendable { .. }
        | Rejection::GroupFull { .. }
        | Rejection::LimitReached { .. } => Code::ResourceExhausted,
        Rejection::TenantHasChildren { .. }
        | Rejection::TenantTooDeep { .. }
        | Rejection::WorkerNotEmpty { .. }
        | Rejection::CapacityBelowAllocated { .. }
        | Rejection::PoolOvercommitted { .. }
        | Rejection::NotAReservation { .. }
        | Rejection::LeaseHeld { .. }
        | Rejection::StaleFencingToken { .. }
        | Rejection::RequestIdReused { .. }
        | Rejection::StaleAssignment { .. }
        | Rejection::NotAPlacement { .. }
        | Rejection::InvoiceClosed { .. }
        | Rejection::InvoiceUnavailable { .. }
        | Rejection::MonthNotEnded { .. } => Code::FailedPrecondition,
        Rejection::PoolDenied { .. } => Code::PermissionDenied,
        Rejection::Unauthenticated | Rejection::TokenExpired { .. } => Code::Unauthenticated,
    }
}

pub fn rejection(rejection: &Rejection) -> Status {
    error(
        code(rejection),
        rejection.reason(),
        rejection.to_string(),
        rejection.metadata().into_iter().collect(),
    )
}

pub fn write_error(e: &WriteError) -> Status {
    match e {
        WriteError::Unknown(why) => error(
            Code::Unavailable,
            "OUTCOME_UNKNOWN",
            format!("the write may or may not have been applied; retry with the same request_id ({why})"),
            Vec::new(),
        ),
        WriteError::NoLeader(why) => error(Code::Unavailable, "NOT_LEADER", format!("no leader: {why}"), Vec::new()),
        WriteError::ShuttingDown => error(Code::Unavailable, "SHUTTING_DOWN", "replica is shutting down", Vec::new()),
        WriteError::TooLarge { bytes, max } => error(
            Code::InvalidArgument,
            "REQUEST_TOO_LARGE",
            e.to_string(),
            vec![("bytes".into(), bytes.to_string()), ("max_bytes".into(), max.to_string())],
        ),
    }
}

pub fn read_error(e: &ReadError) -> Status {
    match e {
        ReadError::NoLeader(why) => error(Code::Unavailable, "NOT_LEADER", why.clone(), Vec::new()),
        ReadError::Timeout(why) => {
            error(Code::DeadlineExceeded, "READ_TIMEOUT", why.clone(), Vec::new())
        }
    }
}
