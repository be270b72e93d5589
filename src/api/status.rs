//! The one mapping from Berth's errors to `tonic::Status`.
//!
//! Every error carries a `google.rpc.ErrorInfo` detail with a stable UPPER_SNAKE `reason`,
//! domain `berth`, and metadata. UNAVAILABLE with reason `OUTCOME_UNKNOWN` means a write may
//! or may not have happened: retry it with the same request id.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::raft::replica::{ReadError, WriteError};
use crate::scheduler::Rejection;

pub const DOMAIN: &str = "berth";

/// A status with an ErrorInfo detail.
pub fn error(
    code: Code,
    reason: &str,
    message: impl Into<String>,
    metadata: Vec<(String, String)>,
) -> Status {
    let details = ErrorDetails::with_error_info(
        reason,
        DOMAIN,
        metadata.into_iter().collect::<std::collections::HashMap<_, _>>(),
    );
    Status::with_error_details(code, message, details)
}

pub fn invalid(reason: &str, message: impl Into<String>) -> Status {
    error(Code::InvalidArgument, reason, message, Vec::new())
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
        | Rejection::LeaseNotFound { .. }
        | Rejection::TokenNotFound { .. }
        | Rejection::NotQueued { .. } => Code::NotFound,
        Rejection::TenantExists { .. }
        | Rejection::WorkerExists { .. }
        | Rejection::PlacementExists { .. }
        | Rejection::GroupExists { .. }
        | Rejection::TokenExists { .. } => Code::AlreadyExists,
        Rejection::QuotaExceeded { .. }
        | Rejection::WindowExhausted { .. }
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
        | Rejection::RequestIdReused { .. } => Code::FailedPrecondition,
        Rejection::PoolDenied { .. } => Code::PermissionDenied,
        Rejection::Unauthenticated => Code::Unauthenticated,
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
