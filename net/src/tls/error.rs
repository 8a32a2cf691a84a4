//! [`TlsError`]: everything that can go wrong loading, generating or checking certificates
//! and building the QUIC TLS configurations. Each message names the file or input at fault
//! and, where there is one, the fix.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;

/// An error from [`crate::tls`].
#[derive(Debug)]
#[non_exhaustive]
pub enum TlsError {
    /// A file or directory operation failed; `action` is e.g. "read", "create".
    Io { action: &'static str, path: PathBuf, error: io::Error },
    /// `kvroute certs` would replace an existing file and `--force` was not given.
    WouldOverwrite { path: PathBuf },
    /// The input (`what`: a path or a role such as "CA certificate") is not well-formed PEM.
    BadPem { what: String, detail: String },
    /// The input holds no `CERTIFICATE` block.
    NoCertificate { what: String },
    /// The input holds no private key block.
    NoPrivateKey { what: String },
    /// A certificate parsed as PEM but cannot be used: not a CA, key does not match, ...
    BadCertificate { what: String, detail: String },
    /// Insecure (no-certificate) mode was asked for on an address that is not loopback.
    InsecureNotLoopback { addr: SocketAddr },
    /// The QUIC peer completed the handshake without a certificate (insecure mode).
    NoPeerCertificate,
    /// The peer's leaf certificate could not be parsed (it passed TLS verification, so
    /// this means it is malformed in a way webpki tolerates and x509-parser does not).
    BadPeerCertificate { detail: String },
    /// A certificate carries a `urn:kvroute:worker(s):` URI that is not a valid grant.
    BadWorkerSan { san: String },
    /// A worker id set such as `0-3,7` does not parse.
    BadWorkerSpec { spec: String, reason: String },
    /// A publisher certificate was asked for with no worker ids.
    EmptyWorkerSet,
    /// `--workers` would write more per-worker certificates than the limit.
    TooManyCertificates { count: u128, max: u64 },
    /// An option value is out of range.
    BadOption { detail: String },
    /// A router name is neither a DNS name nor an IP address.
    BadRouterName { name: String, detail: String },
    /// rustls refused a configuration (`context` says which one).
    Rustls { context: String, error: rustls::Error },
    /// The client certificate verifier could not be built (e.g. no usable CA).
    Verifier { error: rustls::server::VerifierBuilderError },
    /// The TLS configuration lacks the cipher suite QUIC needs for its initial packets.
    Quic { error: quinn::crypto::rustls::NoInitialCipherSuite },
    /// rcgen failed to build or sign a certificate.
    Generate { error: rcgen::Error },
}

impl TlsError {
    pub(crate) fn io(action: &'static str, path: impl Into<PathBuf>, error: io::Error) -> Self {
        TlsError::Io { action, path: path.into(), error }
    }
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsError::Io { action, path, error } => write!(f, "cannot {action} {}: {error}", path.display()),
            TlsError::WouldOverwrite { path } => {
                write!(f, "{} already exists; pass --force to overwrite it", path.display())
            }
            TlsError::BadPem { what, detail } => write!(f, "{what}: not valid PEM ({detail})"),
            TlsError::NoCertificate { what } => {
                write!(f, "{what}: no certificate found (expected a -----BEGIN CERTIFICATE----- block)")
            }
            TlsError::NoPrivateKey { what } => write!(
                f,
                "{what}: no private key found (expected a -----BEGIN PRIVATE KEY----- block, \
                 or an EC / RSA PRIVATE KEY block)"
            ),
            TlsError::BadCertificate { what, detail } => write!(f, "{what}: {detail}"),
            TlsError::InsecureNotLoopback { addr } => write!(
                f,
                "insecure mode (no certificates) is loopback-only, and {addr} is not a loopback address; \
                 use 127.0.0.1 or ::1, or make certificates with `kvroute certs` and use mutual TLS"
            ),
            TlsError::NoPeerCertificate => {
                write!(f, "the peer presented no certificate, so it is not allowed to publish for any worker")
            }
            TlsError::BadPeerCertificate { detail } => write!(f, "cannot parse the peer's certificate: {detail}"),
            TlsError::BadWorkerSan { san } => write!(
                f,
                "certificate names `{san}`, which is not a valid worker grant (expected \
                 urn:kvroute:worker:<id> or urn:kvroute:workers:<first>-<last> with first <= last); \
                 reissue the certificate with `kvroute certs`"
            ),
            TlsError::BadWorkerSpec { spec, reason } => {
                write!(f, "invalid worker id set `{spec}`: {reason} (expected ids and ranges such as 0-3,7)")
            }
            TlsError::EmptyWorkerSet => write!(f, "a publisher certificate needs at least one worker id"),
            TlsError::TooManyCertificates { count, max } => write!(
                f,
                "--workers asks for {count} per-worker certificates, more than the limit of {max}; \
                 use --group to issue one certificate for a whole range"
            ),
            TlsError::BadOption { detail } => write!(f, "invalid option: {detail}"),
            TlsError::BadRouterName { name, detail } => {
                write!(f, "router name `{name}` is neither a DNS name nor an IP address: {detail}")
            }
            TlsError::Rustls { context, error } => write!(f, "{context}: {error}"),
            TlsError::Verifier { error } => write!(f, "cannot build the client certificate verifier: {error}"),
            TlsError::Quic { error } => write!(f, "TLS configuration unusable for QUIC: {error}"),
            TlsError::Generate { error } => write!(f, "certificate generation failed: {error}"),
        }
    }
}

/// The underlying error is part of the message (the CLI prints only `Display`), so there is
/// no `source()` chain to print it twice.
impl std::error::Error for TlsError {}

impl From<rcgen::Error> for TlsError {
    fn from(error: rcgen::Error) -> Self {
        TlsError::Generate { error }
    }
}

impl From<rustls::server::VerifierBuilderError> for TlsError {
    fn from(error: rustls::server::VerifierBuilderError) -> Self {
        TlsError::Verifier { error }
    }
}

impl From<quinn::crypto::rustls::NoInitialCipherSuite> for TlsError {
    fn from(error: quinn::crypto::rustls::NoInitialCipherSuite) -> Self {
        TlsError::Quic { error }
    }
}
