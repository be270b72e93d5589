//! History checkers shared by the simulation (`sim/`) and the Jepsen harness (`jepsen/`).
//! Each harness records its own history format; it adapts its operations to the events here
//! and renders the violations with its own description of an operation. Pure: no IO, no
//! clock, no dependency on Berth itself, so a checker is tested on hand-written events.
//!
//! - `lease`: lease safety (one holder, fencing tokens, the guarded resource).

pub mod lease;
