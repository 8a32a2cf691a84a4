//! Mutual TLS for the QUIC event transport between publishers (GPU workers) and routers.
//!
//! The trust model: the router and every publisher trust one CA. The router presents a
//! certificate for the names publishers dial; every publisher must present a certificate
//! signed by the CA (a client without one cannot connect), and that certificate names the
//! worker ids it may publish KV events for, as URI SANs (`urn:kvroute:worker:7`,
//! `urn:kvroute:workers:0-63`). The router reads them with [`peer_worker_grant`] and drops
//! events for any other worker.
//!
//! - [`grant`] — [`WorkerGrant`] and its SAN encoding.
//! - [`generate`] — rcgen certificates in memory ([`CertAuthority`]).
//! - [`certs_cmd`] — `kvroute certs`, writing a test deployment's files ([`run_certs`]).
//! - [`pem`] — reading PEM certificates and keys ([`TlsFiles`]).
//! - [`quic`] — [`server_config`] / [`client_config`] (ALPN [`ALPN_EVENTS`], ring provider).
//! - [`peer`] — [`peer_worker_grant`] on an accepted connection.
//! - [`insecure`] — certificate-free configurations, refused off loopback.
//! - [`error`] — [`TlsError`].

pub mod certs_cmd;
pub mod error;
pub mod generate;
pub mod grant;
pub mod insecure;
pub mod peer;
pub mod pem;
pub mod quic;

pub use certs_cmd::{generate_certs, run_certs, CertsArgs, CertsOptions};
pub use error::TlsError;
pub use generate::{CertAuthority, PemPair, DEFAULT_ROUTER_NAMES};
pub use grant::WorkerGrant;
pub use insecure::{insecure_loopback_client_config, insecure_loopback_server_config, INSECURE_SERVER_NAME};
pub use peer::{peer_worker_grant, worker_grant_from_cert};
pub use pem::{read_pem_file, TlsFiles};
pub use quic::{client_config, crypto_provider, server_config, ALPN_EVENTS};
