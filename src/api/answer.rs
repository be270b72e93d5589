//! The one place the core's wide answers are narrowed to what an RPC expects.
//!
//! A write answers with a `Response` and a list read with an `Answer`, each one enum for every
//! command or query. A handler asks for the type its RPC expects (`answer::<Reserved>`); the
//! tables below say which variants are that type. Each table also compiles to one match over
//! all its patterns with no wildcard, so a new variant fails to build until it is classified
//! here. Handlers hold no "unexpected variant" arms.

use std::fmt::Debug;

use tonic::Status;

use crate::scheduler::{
    Answer, DeletedCounts, Finished, FinishedState, HeartbeatAck, Lease, Placement, PlacementId,
    QueueStatus, Resources, Response, Tenant, TenantId, Token, TokenId, UnixMillis, Worker,
};

/// `wide` as the answer an RPC expects. Any other variant is a bug (the core answers each
/// command with its own variants, a replayed request id included): INTERNAL.
pub(super) fn answer<A, W>(wide: W) -> Result<A, Status>
where
    A: TryFrom<W, Error = W>,
    W: Debug,
{
    A::try_from(wide).map_err(|other| {
        Status::internal(format!("unexpected answer from the state machine: {other:?}"))
    })
}

/// For each answer type, the patterns of `$wide` that are it and the value each makes;
/// `unread` lists the variants no handler narrows (the RPC reads only its write info, or no
/// RPC proposes the command). Expands to a `TryFrom<$wide>` per answer type, giving the wide
/// value back when it is another variant, and to one exhaustive match over every pattern.
macro_rules! narrow {
    (
        $wide:ident {
            $($answer:ty { $($pattern:pat => $value:expr),+ $(,)? })*
        }
        unread { $($unread:pat),* $(,)? }
    ) => {
        $(impl TryFrom<$wide> for $answer {
            type Error = $wide;

            fn try_from(wide: $wide) -> Result<Self, $wide> {
                match wide {
                    $($pattern => Ok($value),)+
                    other => Err(other),
                }
            }
        })*

        const _: () = {
            /// Never called: it stops the build while a variant of the wide enum is in no
            /// table above.
            #[allow(dead_code, unused_variables)]
            fn every_variant_is_classified(wide: $wide) {
                match wide {
                    $($($pattern => {})+)*
                    $($unread => {})*
                }
            }
        };
    };
}

/// A token's expiry, if it has one.
pub(super) struct TokenAdded {
    pub expires_at: Option<UnixMillis>,
}

/// The placements a worker's removal evicted, with their tenants.
pub(super) struct Evicted(pub Vec<(TenantId, PlacementId)>);

/// What `Place` did: placed now, or queued (only with `queue_if_unavailable`).
pub(super) enum Placed {
    Now(Placement),
    Queued(QueueStatus),
}

pub(super) struct Released {
    pub resources: Resources,
    pub instances: u32,
}

pub(super) struct Reserved(pub Placement);

pub(super) struct Confirmed(pub Placement);

pub(super) struct Cancelled {
    pub resources: Resources,
}

pub(super) struct Granted(pub Lease);

pub(super) struct KeptAlive(pub Lease);

/// One answer per worker of a `Heartbeat` entry, in the order listed (`None`: unknown).
pub(super) struct Heartbeats(pub Vec<Option<HeartbeatAck>>);

/// When a price plan's new version takes effect.
pub(super) struct PriceSince(pub UnixMillis);

/// A closed invoice (`CloseInvoice`).
pub(super) struct ClosedInvoice(pub Box<crate::scheduler::Invoice>);

/// The policy version a rollback became.
pub(super) struct RolledBack(pub u64);

/// What a report did: `Some` when it ended the placement.
pub(super) struct Reported(pub Option<FinishedState>);

narrow! {
    Response {
        Tenant { Response::TenantCreated(tenant) => *tenant }
        DeletedCounts { Response::TenantDeleted(counts) => counts }
        TokenAdded { Response::TokenAdded { expires_at } => TokenAdded { expires_at } }
        Worker { Response::WorkerRegistered(worker) => worker }
        Evicted { Response::WorkerRemoved { evicted } => Evicted(evicted) }
        Placed {
            Response::Placed(placement) => Placed::Now(placement),
            Response::Queued(queued) => Placed::Queued(queued),
        }
        Released {
            Response::Released { resources, instances } => Released { resources, instances }
        }
        Reserved { Response::Reserved(reservation) => Reserved(reservation) }
        Confirmed { Response::Confirmed(placement) => Confirmed(placement) }
        Cancelled { Response::Cancelled { resources, .. } => Cancelled { resources } }
        Granted { Response::LeaseGranted(lease) => Granted(lease) }
        KeptAlive { Response::LeaseKeptAlive(lease) => KeptAlive(lease) }
        Heartbeats { Response::Heartbeats(acks) => Heartbeats(acks) }
        Reported { Response::StatusReported { finished } => Reported(finished) }
        PriceSince { Response::PricePlanSet { since } => PriceSince(since) }
        ClosedInvoice { Response::InvoiceClosed(invoice) => ClosedInvoice(invoice) }
        RolledBack { Response::PolicyRolledBack { version } => RolledBack(version) }
    }
    unread {
        Response::Ticked,
        Response::LeaderChanged { .. },
        Response::ConfigSet,
        Response::BudgetSet,
        Response::RateLimitsSet,
        Response::InvoiceAdjusted,
        Response::WorkerUpdated,
        Response::WorkerSchedulable { .. },
        Response::PoolReserveSet,
        Response::QuotaSet,
        Response::TokenRevoked,
        Response::QueuedCancelled,
        Response::GroupCreated,
        Response::LeaseReleased,
        Response::PoolWorkerTtlSet,
        Response::BillingPlanSet,
    }
}

narrow! {
    Answer {
        Vec<Tenant> { Answer::Tenants(tenants) => tenants }
        Vec<Worker> { Answer::Workers(workers) => workers }
        Vec<Placement> { Answer::Placements(placements) => placements }
        Option<(TenantId, TokenId, Token)> { Answer::TokenOwner(owner) => owner }
        Vec<Finished> { Answer::Finished(finished) => finished }
        Vec<Lease> { Answer::Leases(leases) => leases }
    }
    unread {
        Answer::Tenant(_),
        Answer::Worker(_),
        Answer::Placement(_),
        Answer::Group(_),
        Answer::Lease(_),
        Answer::Summary(_),
    }
}

#[cfg(test)]
mod tests {
    use tonic::Code;

    use super::*;

    // A response narrows to the answer its variant is classified as, and to no other (INTERNAL).
    #[test]
    fn a_response_narrows_only_to_its_own_answer() {
        let resources = Resources { cpu_millis: 1, memory_mib: 2 };
        let cancelled = Response::Cancelled { resources, instances: 3 };
        let Cancelled { resources: got } = answer(cancelled.clone()).expect("cancelled narrows");
        assert_eq!(got, resources);
        let Err(wrong) = answer::<Released, _>(cancelled) else { panic!("not a release") };
        assert_eq!(wrong.code(), Code::Internal);
        assert!(answer::<Placed, _>(Response::QuotaSet).is_err(), "an unread variant is no answer");
        let tenants: Vec<Tenant> = answer(Answer::Tenants(Vec::new())).expect("tenants narrow");
        assert!(tenants.is_empty());
        assert!(answer::<Vec<Worker>, _>(Answer::Tenants(Vec::new())).is_err());
    }
}
