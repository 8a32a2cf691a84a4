//! The router's view of a connected publisher: which workers its certificate lets it
//! publish for ([`peer_worker_grant`]).
//!
//! Only call this on connections accepted with [`super::server_config`], whose handshake
//! has already verified the certificate chain against the CA; the certificate's content is
//! still treated as untrusted input (parsed without panicking, bad grants are errors).

use rustls::pki_types::CertificateDer;
use x509_parser::extensions::GeneralName;

use super::error::TlsError;
use super::grant::WorkerGrant;

/// The worker grant of the peer's leaf certificate: the union of its
/// `urn:kvroute:worker(s):` URI SANs; [`WorkerGrant::none`] if it has none.
///
/// Errors: [`TlsError::NoPeerCertificate`] when the peer presented no certificate (insecure
/// loopback mode: use [`WorkerGrant::all`] there), [`TlsError::BadPeerCertificate`] or
/// [`TlsError::BadWorkerSan`] when the certificate cannot be read as a grant.
pub fn peer_worker_grant(conn: &quinn::Connection) -> Result<WorkerGrant, TlsError> {
    let identity = conn.peer_identity().ok_or(TlsError::NoPeerCertificate)?;
    let chain = identity.downcast::<Vec<CertificateDer<'static>>>().map_err(|_| TlsError::BadPeerCertificate {
        detail: "the connection's peer identity is not an X.509 certificate chain".into(),
    })?;
    let leaf = chain.first().ok_or(TlsError::NoPeerCertificate)?;
    worker_grant_from_cert(leaf)
}

/// The worker grant named by the URI SANs of one DER certificate (no chain verification).
pub fn worker_grant_from_cert(der: &[u8]) -> Result<WorkerGrant, TlsError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|error| TlsError::BadPeerCertificate { detail: error.to_string() })?;
    let sans = cert
        .subject_alternative_name()
        .map_err(|error| TlsError::BadPeerCertificate { detail: format!("subject alternative names: {error}") })?;
    let uris = sans.iter().flat_map(|ext| ext.value.general_names.iter()).filter_map(|name| match name {
        GeneralName::URI(uri) => Some(*uri),
        _ => None,
    });
    WorkerGrant::from_san_uris(uris)
}
