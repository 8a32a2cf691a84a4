//! kvroute-net: kvroute's I/O layer (the `kvroute` binary is built on it).
//!
//! - [`atomic_histogram`]: lock-free fixed-bucket histograms (`/metrics`).
//! - [`bridge`]: `kvroute bridge`, next to an engine: its ZeroMQ KV events in, the QUIC
//!   transport out (mutual TLS, resume, dumps for routers that join late).
//! - [`decision_quality`]: overlap taken against overlap available, per routing path, and
//!   why decisions took less (`/metrics`).
//! - [`engine_sim`]: `kvroute engine-sim`, a simulated vLLM / SGLang server (OpenAI and
//!   SGLang HTTP APIs, DP ranks, prefix caches, GPU-like timing) publishing its KV events
//!   over ZeroMQ in the engines' wire format.
//! - [`engine_zmq`]: ZeroMQ I/O for the engines' own KV-event streams (vLLM, SGLang):
//!   per-rank SUB sockets, replay requests, and a stand-in engine publisher.
//! - [`engine_ingest`]: subscriptions to those streams, one task per rank, applying what
//!   the core `engine_events` makes of them to a sink (the router's index, or the QUIC
//!   publisher in `kvroute bridge`).
//! - [`http_client`]: the crate's one HTTP/1.1 client (proxy upstreams, simulator
//!   bootstrap lookups, the live demo's load generator).
//! - [`huge_pages`]: transparent huge pages off for the latency-critical commands.
//! - [`tls`]: mutual TLS for the QUIC KV event transport: certificate generation
//!   (`kvroute certs`), router / publisher QUIC configurations, the worker ids a
//!   publisher's certificate allows, and an insecure loopback-only mode for demos.
//! - [`openai_error`]: errors in the OpenAI API's JSON shape (engine simulator, proxy).
//! - [`proxy`]: the OpenAI-compatible routing proxy of `kvroute serve` (forwarding to the
//!   chosen rank, retries, worker health, load bookkeeping from the stream).
//! - [`serve`]: `kvroute serve`, the routing daemon: HTTP/JSON API, Prometheus metrics,
//!   TOML configuration, graceful shutdown.
//! - [`snapshot_file`]: router snapshot files: atomic, fsynced writes with io_uring
//!   (`std::fs` where it is unavailable), verified read-only maps on start.
//! - [`token_id_list`]: a JSON list of token ids read fast (the proxy's and the
//!   simulator's prompt bodies).
//! - [`tokenization`]: prompts to token ids as the engine tokenizes them (a model's
//!   `tokenizer.json` and chat template, or the simulator's byte tokenizer), for the proxy
//!   and the simulator.
//! - [`trace_load`]: an open-loop HTTP load generator replaying the trace (live demo,
//!   router benches).
//! - [`transport`]: the QUIC KV event transport: the publisher library (next to an
//!   engine) and the router's ingest server feeding the index.

pub mod atomic_histogram;
pub mod bridge;
pub mod decision_quality;
pub mod engine_ingest;
pub mod engine_sim;
pub mod engine_zmq;
pub mod http_client;
pub mod huge_pages;
pub mod openai_error;
pub mod proxy;
pub mod serve;
pub mod snapshot_file;
pub mod tls;
pub mod token_id_list;
pub mod tokenization;
pub mod trace_load;
pub mod transport;
