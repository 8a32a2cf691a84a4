//! Certificate generation with rcgen, in memory: a CA, router (server) certificates and
//! publisher (client) certificates. Writing them to disk is `kvroute certs`
//! ([`super::run_certs`]).
//!
//! - CA: self-signed, `CA:TRUE` with path length 0 (it signs leaves only), key usages
//!   `keyCertSign` and `cRLSign`.
//! - Router: DNS / IP SANs for the names publishers connect to, extended key usage
//!   `serverAuth` only (so it cannot act as a publisher).
//! - Publisher: its [`WorkerGrant`] as URI SANs (see [`super::grant`]), extended key usage
//!   `clientAuth` only (so it cannot act as a router).
//!
//! Keys are ECDSA P-256, written as PKCS#8 PEM. Certificates are valid from one hour ago
//! (clock skew) for the given number of days.

use std::net::IpAddr;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

use rustls::pki_types::DnsName;

use super::error::TlsError;
use super::grant::WorkerGrant;
use super::pem::parse_certs;

/// The router names used when none are given: the loopback names of a one-host deployment.
pub const DEFAULT_ROUTER_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// A certificate and its private key, both PEM.
#[derive(Clone)]
pub struct PemPair {
    /// The certificate (`-----BEGIN CERTIFICATE-----`).
    pub cert_pem: String,
    /// Its PKCS#8 private key (`-----BEGIN PRIVATE KEY-----`): keep it secret.
    pub key_pem: String,
}

/// Key material is not printed.
impl std::fmt::Debug for PemPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PemPair").field("cert_pem", &self.cert_pem).field("key_pem", &"<redacted>").finish()
    }
}

/// A certificate authority that can issue router and publisher certificates.
pub struct CertAuthority {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
}

impl CertAuthority {
    /// A new self-signed CA named `common_name` followed by its key id (8 hex digits, so
    /// that two test CAs never share a name), valid for `days` days.
    pub fn generate(common_name: &str, days: u32) -> Result<Self, TlsError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let key_id: String = params.key_identifier(&key).iter().take(4).map(|b| format!("{b:02x}")).collect();
        params.distinguished_name = dn(&format!("{common_name} {key_id}"));
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        set_validity(&mut params, days);
        let cert_pem = params.self_signed(&key)?.pem();
        Ok(CertAuthority { issuer: Issuer::new(params, key), cert_pem })
    }

    /// An existing CA from its certificate and key (e.g. `ca.pem` / `ca.key` of an earlier
    /// `kvroute certs`). Checks that the certificate is a CA and that the key is its key.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, TlsError> {
        let what = "CA certificate";
        let bad = |detail: String| TlsError::BadCertificate { what: what.to_string(), detail };
        let der = parse_certs(what, cert_pem.as_bytes())?.swap_remove(0);
        let key = KeyPair::from_pem(key_pem)
            .map_err(|error| TlsError::BadCertificate { what: "CA key".into(), detail: error.to_string() })?;
        let (_, cert) = x509_parser::parse_x509_certificate(&der).map_err(|error| bad(error.to_string()))?;
        let is_ca = cert.basic_constraints().ok().flatten().is_some_and(|bc| bc.value.ca);
        if !is_ca {
            return Err(bad("not a CA certificate (no basicConstraints CA:TRUE)".into()));
        }
        if cert.public_key().subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(bad("the CA key does not belong to this certificate".into()));
        }
        let issuer = Issuer::from_ca_cert_der(&der, key)?;
        Ok(CertAuthority { issuer, cert_pem: cert_pem.to_string() })
    }

    /// The CA certificate, PEM: what routers and publishers trust (`ca.pem`).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA's private key, PKCS#8 PEM (`ca.key`): needed only to issue more certificates.
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// A router certificate for `names` (DNS names or IP addresses; at least one).
    pub fn issue_router(&self, names: &[String], days: u32) -> Result<PemPair, TlsError> {
        if names.is_empty() {
            return Err(TlsError::BadRouterName { name: String::new(), detail: "no router name given".into() });
        }
        let mut sans = Vec::with_capacity(names.len());
        for name in names {
            let bad = |detail: String| TlsError::BadRouterName { name: name.clone(), detail };
            let san = match name.parse::<IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => {
                    // The syntax rustls will match server names against.
                    DnsName::try_from(name.as_str()).map_err(|error| bad(error.to_string()))?;
                    SanType::DnsName(name.clone().try_into().map_err(|error: rcgen::Error| bad(error.to_string()))?)
                }
            };
            sans.push(san);
        }
        let mut params = CertificateParams::default();
        params.distinguished_name = dn("kvroute router");
        params.subject_alt_names = sans;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue_leaf(params, days)
    }

    /// A publisher certificate allowing exactly the workers of `grant` (not empty).
    pub fn issue_publisher(&self, grant: &WorkerGrant, days: u32) -> Result<PemPair, TlsError> {
        if grant.is_empty() {
            return Err(TlsError::EmptyWorkerSet);
        }
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(&format!("kvroute publisher for workers {grant}"));
        params.subject_alt_names = grant
            .to_san_uris()
            .into_iter()
            .map(|uri| Ok(SanType::URI(uri.try_into()?)))
            .collect::<Result<_, rcgen::Error>>()?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue_leaf(params, days)
    }

    fn issue_leaf(&self, mut params: CertificateParams, days: u32) -> Result<PemPair, TlsError> {
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        set_validity(&mut params, days);
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(PemPair { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }
}

/// A self-signed, non-CA certificate for `names`, for insecure loopback mode.
pub(crate) fn self_signed(names: Vec<String>) -> Result<PemPair, TlsError> {
    let rcgen::CertifiedKey { cert, signing_key } = rcgen::generate_simple_self_signed(names)?;
    Ok(PemPair { cert_pem: cert.pem(), key_pem: signing_key.serialize_pem() })
}

fn dn(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "kvroute");
    dn.push(DnType::CommonName, common_name);
    dn
}

fn set_validity(params: &mut CertificateParams, days: u32) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(i64::from(days));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::peer::worker_grant_from_cert;

    fn leaf_der(pair: &PemPair) -> Vec<u8> {
        parse_certs("test", pair.cert_pem.as_bytes()).unwrap().swap_remove(0).to_vec()
    }

    #[test]
    fn issued_certificates_carry_their_grant() {
        let ca = CertAuthority::generate("test CA", 1).unwrap();
        let grant: WorkerGrant = "0-63,70".parse().unwrap();
        let publisher = ca.issue_publisher(&grant, 1).unwrap();
        assert_eq!(worker_grant_from_cert(&leaf_der(&publisher)).unwrap(), grant);
        let router = ca.issue_router(&["localhost".into(), "10.1.2.3".into()], 1).unwrap();
        assert!(worker_grant_from_cert(&leaf_der(&router)).unwrap().is_empty());
        assert!(matches!(ca.issue_publisher(&WorkerGrant::none(), 1), Err(TlsError::EmptyWorkerSet)));
        assert!(matches!(ca.issue_router(&[], 1), Err(TlsError::BadRouterName { .. })));
        assert!(matches!(ca.issue_router(&["bad name\n".into()], 1), Err(TlsError::BadRouterName { .. })));
        // Untrusted bytes never panic.
        assert!(worker_grant_from_cert(b"not a certificate").is_err());
        assert!(worker_grant_from_cert(&leaf_der(&publisher)[..100]).is_err());
    }

    #[test]
    fn existing_ca_is_checked() {
        let ca = CertAuthority::generate("test CA", 1).unwrap();
        let other = CertAuthority::generate("test CA", 1).unwrap();
        let reloaded = CertAuthority::from_pem(ca.cert_pem(), &ca.key_pem()).unwrap();
        assert!(reloaded.issue_publisher(&"1".parse().unwrap(), 1).is_ok());
        let mismatch = CertAuthority::from_pem(ca.cert_pem(), &other.key_pem()).err().unwrap();
        assert!(mismatch.to_string().contains("does not belong"), "{mismatch}");
        let leaf = ca.issue_router(&["localhost".into()], 1).unwrap();
        let not_ca = CertAuthority::from_pem(&leaf.cert_pem, &leaf.key_pem).err().unwrap();
        assert!(not_ca.to_string().contains("not a CA"), "{not_ca}");
        assert_ne!(ca.cert_pem(), other.cert_pem());
    }
}
