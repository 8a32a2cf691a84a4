//! kvroute-bench: the open-loop replay benchmark that runs our index beside the peers'
//! published indexers, in one process, on the same schedule (REFERENCE.md section 6).
//!
//! Pipeline:
//! - [`schedule`]: a Mooncake trace plus the engine-cache simulator become, once, an
//!   ordered schedule of lookups and KV events, with the reference index's answer to every
//!   lookup and a dependency plan that keeps those answers exact under concurrency;
//! - [`backend`] and [`backends`]: the interface an index implements to be replayed, and the
//!   adapters for ours (`kvroute`), Dynamo's (`dynamo-crtc`, `dynamo-positional`) and the
//!   SGLang gateway's (`sglang-chain`);
//! - [`replay`]: one open-loop trial at an offered rate: query threads and rank-sharded
//!   event lanes, deadlines, latency histogram, exactness check, memory reading;
//! - [`sweep`]: calibration, the search for each backend's highest sustained rate, and the
//!   common-rate trials;
//! - [`report`]: the JSON record and the table;
//! - [`http_client`]: a minimal HTTP/1.1 client for `kvroute serve`'s API (soak, flood);
//! - [`machine`]: the CPU model, cores and huge-page mode every report records;
//! - [`memory`]: the counting allocator the `replay` binary wraps around mimalloc;
//! - [`synthetic_chain`]: stored chains for the criterion benches;
//! - [`trace_shapes`]: generated traces (a shared system prompt; long-context agents);
//! - [`quic_flood`]: half-open QUIC handshakes, for the router's hardening checks;
//! - [`soak`]: the soak test of a `kvroute serve` process (the `soak` binary).
//!
//! The `replay` binary (`src/bin/replay.rs`) is the command-line front end.

pub mod backend;
pub mod backends;
pub mod http_client;
pub mod machine;
pub mod memory;
pub mod model_fixture;
pub mod quic_flood;
pub mod replay;
pub mod report;
pub mod rng;
pub mod router_fleet;
pub mod schedule;
pub mod soak;
pub mod sweep;
pub mod synthetic_chain;
pub mod trace_shapes;
