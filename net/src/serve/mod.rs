//! `kvroute serve`: the routing daemon. A [`kvroute_core::route::Router`] behind an
//! HTTP/JSON API, fed by the QUIC KV event ingest, with Prometheus metrics, a TOML
//! configuration and graceful shutdown.
//!
//! # Shape
//! - Configuration: [`options`] is what the operator gives ([`ServeArgs`], the flags,
//!   and [`ServeOptions`], which is also the TOML schema; flags over file over defaults),
//!   [`config`] checks and types it into a [`ServeConfig`] (or a [`ConfigError`] naming the
//!   field). [`duration`] parses `"30s"`-style durations; [`worker_registration`] is one
//!   worker as written in the file, a `--worker` flag or `POST /v1/workers`.
//! - HTTP: [`http::app`] builds the axum router over an [`AppState`] ([`state`]). The
//!   handlers live in [`route_api`] (route, route disaggregated), [`request_api`]
//!   (prefill_done, finish), [`worker_api`] (register, remove, list) and
//!   [`load_report_api`] (engine-reported load); [`json_body`] and
//!   [`path_id`] are the extractors and [`api_error`] the `{"error", "kind"}` answers;
//!   [`auth`] is the optional bearer-token check (`http_token_file`).
//! - Metrics: [`metrics`] holds the daemon's counters and the ingest's counter seam,
//!   [`exposition`] renders `/metrics` in the Prometheus text format.
//! - Life: [`daemon`] starts everything, waits for SIGINT/SIGTERM and shuts down
//!   gracefully; [`logging`] installs `tracing`; [`ingest`] starts the QUIC ingest
//!   ([`crate::transport`]) and exposes its counters; [`snapshots`] is the seam where the
//!   snapshot files plug in (restore, periodic, final); [`error`] is [`ServeError`].
//!
//! # API
//! | method | path | body | response |
//! |---|---|---|---|
//! | POST | `/v1/route` | `{"tokens": [..]}` (optional `lora_name`, `cache_salt`, `extra_keys`) or `{"block_hashes": [..]}`, optional `workers`, `worker_id` + `dp_rank`, `dry_run`, `output_tokens` | the decision: `worker_id`, `dp_rank`, `overlap_blocks`, `best_overlap_blocks`, `shortfall`, `cost`, `request_id` |
//! | POST | `/v1/route/disaggregated` | the prompt, optional `prefill_workers`, `decode_workers`, `same_rank`, `dry_run`, `output_tokens` | `prefill`, `decode`, `bootstrap`, `request_id`, `prefill_request`, `decode_request` |
//! | POST | `/v1/overlaps` | the prompt (as for `/v1/route`) | `blocks`, `overlaps`: every `worker_id`, `dp_rank`, `tier` with its `overlap_blocks` > 0 |
//! | POST | `/v1/requests/{id}/prefill_done` | none | `{"request_id", "event"}`; 404 if not active |
//! | POST | `/v1/requests/{id}/finish` | none | `{"request_id", "event"}`; 404 if not active |
//! | POST | `/v1/workers` | a [`WorkerRegistration`] | 201, the worker's listing; 409 if it exists |
//! | DELETE | `/v1/workers/{id}` | none | 204; 404 if unknown |
//! | POST | `/v1/workers/{id}/load` | `{"ranks": [{"dp_rank", "prefill_tokens"?, "decode_blocks"?, "requests"?}]}`: the engine's own load | 204; 404 if unknown, 400 for a rank outside it |
//! | GET | `/v1/workers` | none | `{"workers": [..], "active_requests"}` |
//! | GET | `/metrics` | none | Prometheus text format 0.0.4 |
//! | GET | `/healthz` | none | `ok`; 503 while shutting down |
//!
//! Errors are `{"error": "<message>", "kind": "<kind>"}` ([`api_error::ErrorKind`]).
//! With `http_token_file` set, every request but `GET /healthz` needs
//! `Authorization: Bearer <token>`; without it, 401 `unauthorized`.

pub mod api_error;
pub mod auth;
pub mod config;
pub mod daemon;
pub mod duration;
pub mod error;
pub mod expiry;
pub mod exposition;
pub mod fd_limit;
pub mod http;
pub mod http_server;
pub mod ingest;
pub mod json_body;
pub mod load_report_api;
pub mod logging;
pub mod metrics;
pub mod options;
pub mod overlaps_api;
pub mod path_id;
pub mod proxy_api;
pub mod request_api;
pub mod route_api;
pub mod snapshots;
pub mod state;
pub mod worker_api;
pub mod worker_registration;

pub use api_error::{ApiError, ErrorKind};
pub use auth::BearerToken;
pub use config::{ApiLimits, ConfigError, ServeConfig, TlsMode};
pub use daemon::{run, serve_on, serve_until, shutdown_signal, RunningDaemon};
pub use error::ServeError;
pub use metrics::{IngestCounterSource, MetricKind, MetricSample, ServeMetrics};
pub use options::{ServeArgs, ServeOptions};
pub use state::AppState;
pub use worker_registration::WorkerRegistration;
