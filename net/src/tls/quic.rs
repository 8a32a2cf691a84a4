//! Mutual-TLS QUIC configurations for the event transport.
//!
//! - [`server_config`] (the router): presents the router certificate and **requires** a
//!   client certificate that chains to the CA (rustls `WebPkiClientVerifier`, which also
//!   requires the `clientAuth` extended key usage). A client without one fails the handshake.
//! - [`client_config`] (a publisher): presents its publisher certificate and verifies the
//!   router's certificate against the CA and the server name given to `connect`.
//!
//! Both speak TLS 1.3 only (QUIC requires it), use the *ring* crypto provider explicitly
//! (never a process-wide default) and offer the single ALPN protocol [`ALPN_EVENTS`].

use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;

use super::error::TlsError;
use super::pem::{parse_certs, parse_key, parse_roots};

/// The ALPN protocol of the KV event stream; both ends offer only this one.
pub const ALPN_EVENTS: &[u8] = b"kvroute-events/1";

/// The *ring* crypto provider every configuration here is built with.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The router's QUIC server configuration: `cert_pem` (leaf first, then any intermediates)
/// and `key_pem` identify the router; every client must present a certificate signed by a
/// CA in `ca_pem`. Read the client's worker grant with [`super::peer_worker_grant`].
pub fn server_config(ca_pem: &[u8], cert_pem: &[u8], key_pem: &[u8]) -> Result<quinn::ServerConfig, TlsError> {
    let names = ["CA certificate".to_string(), "router certificate".to_string(), "router key".to_string()];
    server_config_named(&names, ca_pem, cert_pem, key_pem)
}

/// A publisher's QUIC client configuration: presents `cert_pem` / `key_pem` and trusts
/// routers whose certificate chains to a CA in `ca_pem` and names the server name passed
/// to `Endpoint::connect` (e.g. `localhost`, or a `--router-name` of `kvroute certs`).
pub fn client_config(ca_pem: &[u8], cert_pem: &[u8], key_pem: &[u8]) -> Result<quinn::ClientConfig, TlsError> {
    let names = ["CA certificate".to_string(), "publisher certificate".to_string(), "publisher key".to_string()];
    client_config_named(&names, ca_pem, cert_pem, key_pem)
}

/// [`server_config`], with `names` = what to call the CA, certificate and key in errors.
pub(crate) fn server_config_named(
    [ca_name, cert_name, key_name]: &[String; 3],
    ca_pem: &[u8],
    cert_pem: &[u8],
    key_pem: &[u8],
) -> Result<quinn::ServerConfig, TlsError> {
    let roots = parse_roots(ca_name, ca_pem)?;
    let chain = parse_certs(cert_name, cert_pem)?;
    let key = parse_key(key_name, key_pem)?;
    let provider = crypto_provider();
    // Mandatory client authentication: `allow_unauthenticated` is deliberately not called.
    let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider.clone()).build()?;
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|error| rustls_error("TLS 1.3 with the ring provider", error))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|error| rustls_error(&format!("{cert_name} and {key_name}"), error))?;
    tls.alpn_protocols = vec![ALPN_EVENTS.to_vec()];
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(tls)?;
    Ok(quinn::ServerConfig::with_crypto(Arc::new(quic)))
}

/// [`client_config`], with `names` = what to call the CA, certificate and key in errors.
pub(crate) fn client_config_named(
    [ca_name, cert_name, key_name]: &[String; 3],
    ca_pem: &[u8],
    cert_pem: &[u8],
    key_pem: &[u8],
) -> Result<quinn::ClientConfig, TlsError> {
    let roots = parse_roots(ca_name, ca_pem)?;
    let chain = parse_certs(cert_name, cert_pem)?;
    let key = parse_key(key_name, key_pem)?;
    let mut tls = rustls::ClientConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|error| rustls_error("TLS 1.3 with the ring provider", error))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|error| rustls_error(&format!("{cert_name} and {key_name}"), error))?;
    tls.alpn_protocols = vec![ALPN_EVENTS.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
    Ok(quinn::ClientConfig::new(Arc::new(quic)))
}

pub(crate) fn rustls_error(context: &str, error: rustls::Error) -> TlsError {
    TlsError::Rustls { context: context.to_string(), error }
}
