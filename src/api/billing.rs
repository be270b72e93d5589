//! The `Billing` service: exact allocation of a shared cost. Any authenticated caller; it
//! reads and writes no state.

use std::str::FromStr;

use rust_decimal::Decimal;
use tonic::{Request, Response as Reply, Status};

use super::status::invalid;
use super::{pb, Api};
use crate::scheduler::ids::quoted;
use crate::scheduler::money::allocate;

type Result<T> = std::result::Result<Reply<T>, Status>;

#[tonic::async_trait]
impl pb::billing_server::Billing for Api {
    async fn allocate_shared_cost(
        &self,
        request: Request<pb::AllocateSharedCostRequest>,
    ) -> Result<pb::AllocateSharedCostResponse> {
        self.caller(&request).await?;
        let r = request.into_inner();
        let parse = |field: &str, s: &str| {
            Decimal::from_str(s.trim()).map_err(|e| {
                invalid("INVALID_DECIMAL", format!("{field} {} is not a decimal: {e}", quoted(s)))
            })
        };
        let total = parse("total", &r.total)?;
        let weights = r
            .weights
            .iter()
            .map(|w| parse("weight", w))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let parts =
            allocate(total, &weights).map_err(|e| invalid("INVALID_ALLOCATION", e.to_string()))?;
        Ok(Reply::new(pb::AllocateSharedCostResponse {
            parts: parts.iter().map(Decimal::to_string).collect(),
        }))
    }
}
