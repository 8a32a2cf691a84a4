//! Insecure mode for demos on one host: QUIC without certificates to manage, refused on any
//! address that is not loopback.
//!
//! - [`insecure_loopback_server_config`]: a fresh self-signed certificate generated in
//!   memory, and no client authentication. Pair it with [`WorkerGrant::all`]: there is no
//!   client certificate to read a grant from.
//! - [`insecure_loopback_client_config`]: does not verify the router's certificate chain
//!   (it cannot know the router's throw-away certificate). It still checks the handshake
//!   signature, and accepts only the server names `localhost` or a loopback IP, so the
//!   configuration is useless for reaching another host by name.
//!
//! Loopback traffic never leaves the host, so what is lost is protection against other
//! local users and processes; do not use it on shared machines where that matters.
//!
//! [`WorkerGrant::all`]: super::WorkerGrant::all

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use super::error::TlsError;
use super::generate::self_signed;
use super::pem::{parse_certs, parse_key};
use super::quic::{crypto_provider, rustls_error, ALPN_EVENTS};

/// The server name an insecure client should pass to `Endpoint::connect`.
pub const INSECURE_SERVER_NAME: &str = "localhost";

/// Whether `ip` is a loopback address (`127.0.0.0/8`, `::1`, or `::ffff:127.x.y.z`).
/// The unspecified addresses `0.0.0.0` and `::` are not.
pub fn is_loopback(ip: IpAddr) -> bool {
    ip.to_canonical().is_loopback()
}

fn require_loopback(addr: SocketAddr) -> Result<(), TlsError> {
    if is_loopback(addr.ip()) {
        Ok(())
    } else {
        Err(TlsError::InsecureNotLoopback { addr })
    }
}

/// A router configuration without certificates, for binding `addr`, which must be loopback.
pub fn insecure_loopback_server_config(addr: SocketAddr) -> Result<quinn::ServerConfig, TlsError> {
    require_loopback(addr)?;
    let pair = self_signed(vec![INSECURE_SERVER_NAME.to_string(), addr.ip().to_string()])?;
    let chain = parse_certs("in-memory certificate", pair.cert_pem.as_bytes())?;
    let key = parse_key("in-memory key", pair.key_pem.as_bytes())?;
    let mut tls = rustls::ServerConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|error| rustls_error("TLS 1.3 with the ring provider", error))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|error| rustls_error("in-memory certificate", error))?;
    tls.alpn_protocols = vec![ALPN_EVENTS.to_vec()];
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(tls)?;
    Ok(quinn::ServerConfig::with_crypto(Arc::new(quic)))
}

/// A publisher configuration without certificates, for connecting to `addr`, which must be
/// loopback. Connect with the server name [`INSECURE_SERVER_NAME`] (or the loopback IP).
pub fn insecure_loopback_client_config(addr: SocketAddr) -> Result<quinn::ClientConfig, TlsError> {
    require_loopback(addr)?;
    let provider = crypto_provider();
    let mut tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|error| rustls_error("TLS 1.3 with the ring provider", error))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(LoopbackServerVerifier { provider }))
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN_EVENTS.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
    Ok(quinn::ClientConfig::new(Arc::new(quic)))
}

/// Accepts any server certificate for a loopback server name; verifies handshake signatures.
#[derive(Debug)]
struct LoopbackServerVerifier {
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for LoopbackServerVerifier {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let loopback = match server_name {
            ServerName::DnsName(name) => name.as_ref().eq_ignore_ascii_case(INSECURE_SERVER_NAME),
            ServerName::IpAddress(ip) => is_loopback(IpAddr::from(*ip)),
            _ => false,
        };
        if loopback {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "insecure mode connects only to `{INSECURE_SERVER_NAME}` or a loopback IP, not {server_name:?}"
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // The configuration is TLS 1.3 only (QUIC); a TLS 1.2 signature is never expected.
        Err(rustls::Error::PeerIncompatible(rustls::PeerIncompatible::Tls12NotOffered))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}
