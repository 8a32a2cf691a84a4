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
//! # Example
//! ```
//! use std::sync::Arc;
//! use std::time::Instant;
//! use kvroute_core::route::{PdOptions, Prompt, RouteOptions, Router, RouterConfig, WorkerSpec};
//! use kvroute_core::WorkerId;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let start = Instant::now();
//! // Give each router lifetime its own room seed (random) so rooms never repeat.
//! let config = RouterConfig { room_seed: 0x1234_5678, ..RouterConfig::default() };
//! let router = Router::new(config, Arc::new(move || start.elapsed().as_millis() as u64))?;
//! let token_ids: Vec<u32> = (0..2048).collect();
//!
//! // Aggregated serving: a worker with 4 dp ranks, block size 16.
//! router.add_worker(WorkerSpec::new(WorkerId(7), 4, 16))?;
//! let d = router.best_worker(Prompt::Tokens(&token_ids), &RouteOptions::default())?;
//! println!("send to worker {} rank {} ({} blocks cached)", d.worker.0, d.dp_rank.0, d.overlap_blocks);
//! let id = d.request.expect("not a dry run");
//! router.prefill_done(id); // first token out
//! router.finish(id); // done or cancelled
//!
//! // Disaggregated: prefill DP 4, decode DP 2 (independent sizes).
//! router.add_worker(WorkerSpec::prefill(WorkerId(1), 4, 16, "10.0.0.1", Some(8998)))?;
//! router.add_worker(WorkerSpec::decode(WorkerId(2), 2, 16))?;
//! let pd = router.route_disaggregated(Prompt::Tokens(&token_ids), &PdOptions::default())?;
//! let to_prefill = serde_json::to_value(pd.prefill_fields())?; // merge into the prefill request
//! let to_decode = serde_json::to_value(pd.decode_fields())?; // merge into the decode request
//! assert_eq!(to_decode["bootstrap_room"].as_u64().unwrap() % 4, u64::from(pd.prefill.dp_rank.0));
//! assert_eq!(to_prefill["routed_dp_rank"], to_decode["disagg_prefill_dp_rank"]);
//! router.finish(pd.request().expect("not a dry run"));
//! # Ok(())
//! # }
//! ```
//!
//! # Time and randomness
//! Sans-IO: the router reads time only from the [`Clock`] it is handed (request and
//! approximate-block expiry) and draws tie-breaks from a seeded lock-free generator.

mod approx;
mod cost;
mod disagg;
mod engine_load;
mod error;
mod load;
mod policy;
#[cfg(test)]
mod policy_tests;
mod prefill_progress;
mod registry;
mod room;
mod router;
mod shortfall;
mod sink;
mod snapshot;
#[cfg(test)]
mod tests;

pub use approx::ApproxStats;
pub use cost::{CostBreakdown, CostWeights};
pub use disagg::{Bootstrap, PdDecision, PdOptions, SglangDecodeFields, SglangPrefillFields};
pub use engine_load::engine_load_reports;
pub use error::RouteError;
pub use load::{LoadReport, LoadSnapshot, RankLoad, RequestId};
pub use policy::{CacheAwareThresholds, Policy, ScorerWeights, TtftWeights};
pub use registry::{BootstrapEndpoint, Role, WorkerSpec};
pub use room::{BootstrapRoom, RoomAllocator};
pub use router::{Clock, Decision, ExpiryStep, Prompt, RouteOptions, Router, RouterConfig, StorageTier, TierOverlap};
pub use shortfall::Shortfall;
pub use snapshot::{RestoreError, RestoreReport, SkipReason};
