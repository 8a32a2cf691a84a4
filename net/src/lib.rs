//! kvroute-net: kvroute's I/O layer (the `kvroute` binary is built on it).
//!
//! - [`huge_pages`]: transparent huge pages off for the latency-critical commands.
//! - [`tls`]: mutual TLS for the QUIC KV event transport: certificate generation
//!   (`kvroute certs`), router / publisher QUIC configurations, the worker ids a
//!   publisher's certificate allows, and an insecure loopback-only mode for demos.
//! - [`serve`]: `kvroute serve`, the routing daemon: HTTP/JSON API, Prometheus metrics,
//!   TOML configuration, graceful shutdown.
//! - [`snapshot_file`]: router snapshot files: atomic, fsynced writes with io_uring
//!   (`std::fs` where it is unavailable), verified read-only maps on start.
//! - [`transport`]: the QUIC KV event transport: the publisher library (next to an
//!   engine) and the router's ingest server feeding the index.

pub mod huge_pages;
pub mod serve;
pub mod snapshot_file;
pub mod tls;
pub mod transport;
