//! PEM input: certificate chains, private keys and CA bundles, from bytes or files, with
//! errors that say which input was at fault.
//!
//! [`TlsFiles`] names the three files a router or a publisher needs (as written by
//! `kvroute certs`) and builds its QUIC configuration from them.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::RootCertStore;

use super::error::TlsError;

/// Reads a whole PEM file.
pub fn read_pem_file(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|error| TlsError::io("read", path, error))
}

/// Every `CERTIFICATE` block of `pem` (a leaf followed by any intermediates); at least one.
pub(crate) fn parse_certs(what: &str, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| TlsError::BadPem { what: what.to_string(), detail: error.to_string() })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate { what: what.to_string() });
    }
    Ok(certs)
}

/// The first private key (PKCS#8, SEC1 or PKCS#1) in `pem`.
pub(crate) fn parse_key(what: &str, pem: &[u8]) -> Result<PrivateKeyDer<'static>, TlsError> {
    match PrivateKeyDer::from_pem_slice(pem) {
        Ok(key) => Ok(key),
        Err(rustls::pki_types::pem::Error::NoItemsFound) => Err(TlsError::NoPrivateKey { what: what.to_string() }),
        Err(error) => Err(TlsError::BadPem { what: what.to_string(), detail: error.to_string() }),
    }
}

/// A root store holding every certificate of the CA bundle `pem`.
pub(crate) fn parse_roots(what: &str, pem: &[u8]) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in parse_certs(what, pem)? {
        roots
            .add(cert)
            .map_err(|error| TlsError::BadCertificate { what: what.to_string(), detail: error.to_string() })?;
    }
    Ok(Arc::new(roots))
}

/// The PEM files of one endpoint: the CA it trusts, its certificate (chain) and its key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// CA certificate(s) that sign the peers' certificates (`ca.pem`).
    pub ca: PathBuf,
    /// This endpoint's certificate, leaf first (`router.pem`, `publisher-7.pem`).
    pub cert: PathBuf,
    /// This endpoint's private key (`router.key`, `publisher-7.key`).
    pub key: PathBuf,
}

impl TlsFiles {
    /// `ca.pem` plus `<name>.pem` / `<name>.key` in `dir`: the layout `kvroute certs` writes.
    pub fn in_dir(dir: &Path, name: &str) -> Self {
        TlsFiles { ca: dir.join("ca.pem"), cert: dir.join(format!("{name}.pem")), key: dir.join(format!("{name}.key")) }
    }

    /// [`super::server_config`] from these files (a router).
    pub fn server_config(&self) -> Result<quinn::ServerConfig, TlsError> {
        let [ca, cert, key] = self.read()?;
        super::quic::server_config_named(&self.names(), &ca, &cert, &key)
    }

    /// [`super::client_config`] from these files (a publisher).
    pub fn client_config(&self) -> Result<quinn::ClientConfig, TlsError> {
        let [ca, cert, key] = self.read()?;
        super::quic::client_config_named(&self.names(), &ca, &cert, &key)
    }

    fn read(&self) -> Result<[Vec<u8>; 3], TlsError> {
        Ok([read_pem_file(&self.ca)?, read_pem_file(&self.cert)?, read_pem_file(&self.key)?])
    }

    fn names(&self) -> [String; 3] {
        [self.ca.display().to_string(), self.cert.display().to_string(), self.key.display().to_string()]
    }
}
