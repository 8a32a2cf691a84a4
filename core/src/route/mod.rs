//! Routing decisions: which (worker, dp_rank) gets a request, with load tracking and
//! prefill/decode disaggregation.
//!
//! # Shape
//! A [`Router`] owns the KV index (one per storage tier: device, host, disk), a worker
//! registry published as immutable snapshots (`registry`), per-rank load counters and
//! a lock-free table of active requests (`load`), the approximate-mode book for workers
//! that publish no events (`approx`), a bootstrap-room allocator (`room`) and the cost
//! function (`cost`). Everything is `Sync`: many frontend threads decide at once.
//!
//! # A decision
//! [`Router::best_worker`] hashes the prompt (or takes its block hashes), loads the
//! registry snapshot, looks the hashes up in the index (by dense rank id, into a
//! thread-local array), computes each candidate rank's cost from its overlap and load,
//! picks one (cheapest, or softmax-sampled at a positive temperature), and unless it is a
//! dry query charges the rank's load under a new [`RequestId`]. No lock is taken unless
//! the chosen rank is in approximate mode.
//!
//! [`Router::route_disaggregated`] picks a prefill rank by overlap and prefill load and,
//! independently, a decode rank by decode load (the two pools' DP sizes may differ), and
//! allocates a [`BootstrapRoom`] with `room % prefill_dp_size == prefill_rank`, which is
//! how SGLang's decode side finds the prefill rank holding the KV. [`PdDecision`] carries
//! the request fields SGLang reads. In same-rank mode the decode rank has the prefill
//! rank's index.
//!
//! # Time and randomness
//! Sans-IO: the router reads time only from the [`Clock`] it is handed (request and
//! approximate-block expiry) and draws tie-breaks from a seeded lock-free generator.

mod approx;
mod cost;
mod disagg;
mod error;
mod load;
mod registry;
mod room;
mod router;
#[cfg(test)]
mod tests;

pub use cost::{CostBreakdown, CostWeights};
pub use disagg::{Bootstrap, PdDecision, PdOptions, SglangDecodeFields, SglangPrefillFields};
pub use error::RouteError;
pub use load::{LoadSnapshot, RankLoad, RequestId};
pub use registry::{BootstrapEndpoint, Role, WorkerSpec};
pub use room::{BootstrapRoom, RoomAllocator};
pub use router::{Clock, Decision, Prompt, RouteOptions, Router, RouterConfig, StorageTier};
