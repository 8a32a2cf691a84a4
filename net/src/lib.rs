//! kvroute-net: kvroute's I/O layer (the `kvroute` binary is built on it).
//!
//! - [`tls`]: mutual TLS for the QUIC KV event transport: certificate generation
//!   (`kvroute certs`), router / publisher QUIC configurations, the worker ids a
//!   publisher's certificate allows, and an insecure loopback-only mode for demos.

pub mod tls;
