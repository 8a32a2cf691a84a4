//! End-to-end tests live in tests/tests/; this library holds what several of them use.
//!
//! - [`http_client`]: an HTTP/1.1 client for the HTTP servers under test (JSON, whole
//!   replies, server-sent events, streams dropped part way).
//! - [`ports`]: runs of free loopback ports for per-rank sockets.
//! - [`sims`]: engine simulators with per-rank ports as engines bind them.

pub mod http_client;
pub mod ports;
pub mod sims;
