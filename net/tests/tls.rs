//! Mutual TLS over real loopback QUIC: certificates from `generate_certs`, a quinn router
//! endpoint with `server_config`, publishers with `client_config` (and broken variants).

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use kvroute_core::ids::WorkerId;
use kvroute_net::tls::{
    client_config, generate_certs, insecure_loopback_client_config, insecure_loopback_server_config, peer_worker_grant,
    read_pem_file, run_certs, server_config, CertsArgs, CertsOptions, TlsError, TlsFiles, WorkerGrant, ALPN_EVENTS,
    INSECURE_SERVER_NAME,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

const TIMEOUT: Duration = Duration::from_secs(10);

/// A test deployment: CA, router certificate, and one publisher certificate per id of `workers`.
fn deployment(dir: &Path, workers: &str) -> Vec<std::path::PathBuf> {
    let mut options = CertsOptions::new(dir);
    options.workers = workers.parse().unwrap();
    generate_certs(&options).unwrap()
}

/// What the router saw of one connection attempt: the peer's grant and the bytes it sent.
type ServerSide = Result<(WorkerGrant, Vec<u8>), String>;

/// Starts a router on 127.0.0.1 that accepts one connection, reads one bidirectional stream,
/// answers with the peer's grant and waits for the client to close.
fn start_router(config: quinn::ServerConfig, grant_of: fn(&quinn::Connection) -> WorkerGrant) -> Router {
    let endpoint = quinn::Endpoint::server(config, "127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = endpoint.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let served = async {
            let incoming = endpoint.accept().await.ok_or("endpoint closed")?;
            let conn = incoming.await.map_err(|e| format!("handshake: {e}"))?;
            let grant = grant_of(&conn);
            let (mut send, mut recv) = conn.accept_bi().await.map_err(|e| format!("accept_bi: {e}"))?;
            let received = recv.read_to_end(1024).await.map_err(|e| format!("read: {e}"))?;
            send.write_all(grant.to_string().as_bytes()).await.map_err(|e| format!("write: {e}"))?;
            send.finish().map_err(|e| format!("finish: {e}"))?;
            conn.closed().await;
            Ok::<_, String>((grant, received))
        };
        let result = tokio::time::timeout(TIMEOUT, served).await.unwrap_or_else(|_| Err("router timed out".into()));
        endpoint.close(0u32.into(), b"test over");
        result
    });
    Router { addr, task }
}

struct Router {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<ServerSide>,
}

fn mtls_grant(conn: &quinn::Connection) -> WorkerGrant {
    peer_worker_grant(conn).unwrap()
}

/// Connects with `config` to `addr` as `server_name`, sends `hello` on a bidirectional stream
/// and returns the router's answer (the grant it read from our certificate).
async fn publish(config: quinn::ClientConfig, addr: SocketAddr, server_name: &str) -> Result<String, String> {
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(config);
    let attempt = async {
        let conn = endpoint.connect(addr, server_name).map_err(|e| format!("connect: {e}"))?.await;
        let conn = conn.map_err(|e| format!("handshake: {e}"))?;
        let alpn = conn
            .handshake_data()
            .and_then(|data| data.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
            .and_then(|data| data.protocol);
        assert_eq!(alpn.as_deref(), Some(ALPN_EVENTS));
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| format!("open_bi: {e}"))?;
        send.write_all(b"hello").await.map_err(|e| format!("write: {e}"))?;
        send.finish().map_err(|e| format!("finish: {e}"))?;
        let answer = recv.read_to_end(1024).await.map_err(|e| format!("read: {e}"))?;
        conn.close(0u32.into(), b"done");
        Ok(String::from_utf8_lossy(&answer).into_owned())
    };
    let result = tokio::time::timeout(TIMEOUT, attempt).await.unwrap_or_else(|_| Err("publisher timed out".into()));
    endpoint.wait_idle().await;
    result
}

fn pem(path: &Path) -> Vec<u8> {
    read_pem_file(path).unwrap()
}

fn router_config(dir: &Path) -> quinn::ServerConfig {
    TlsFiles::in_dir(dir, "router").server_config().unwrap()
}

#[tokio::test]
async fn publisher_with_certificate_connects_and_gets_its_grant() {
    let dir = tempfile::tempdir().unwrap();
    deployment(dir.path(), "7");
    let router = start_router(router_config(dir.path()), mtls_grant);
    let d = dir.path();
    let config =
        client_config(&pem(&d.join("ca.pem")), &pem(&d.join("publisher-7.pem")), &pem(&d.join("publisher-7.key")))
            .unwrap();

    let answer = publish(config, router.addr, "localhost").await.unwrap();
    assert_eq!(answer, "7");
    let (grant, received) = router.task.await.unwrap().unwrap();
    assert_eq!(received, b"hello");
    assert!(grant.allows(WorkerId(7)));
    assert!(!grant.allows(WorkerId(8)));
    assert!(!grant.allows(WorkerId(6)));
}

#[tokio::test]
async fn group_certificate_signed_by_existing_ca() {
    let dir = tempfile::tempdir().unwrap();
    deployment(dir.path(), "7");
    // Later: one more certificate for a group of workers, signed by the same CA.
    let mut more = CertsOptions::new(dir.path());
    more.use_existing_ca = true;
    more.router = false;
    more.groups = vec!["0-63,100".parse().unwrap()];
    let written = generate_certs(&more).unwrap();
    let names: Vec<_> = written.iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect();
    assert_eq!(names, ["publisher-0-63_100.pem", "publisher-0-63_100.key"]);

    let router = start_router(router_config(dir.path()), mtls_grant);
    let config = TlsFiles::in_dir(dir.path(), "publisher-0-63_100").client_config().unwrap();
    // Dialled by IP: the router certificate's 127.0.0.1 SAN.
    assert_eq!(publish(config, router.addr, "127.0.0.1").await.unwrap(), "0-63,100");
    let (grant, _) = router.task.await.unwrap().unwrap();
    assert!(grant.allows(WorkerId(0)) && grant.allows(WorkerId(63)) && grant.allows(WorkerId(100)));
    assert!(!grant.allows(WorkerId(64)) && !grant.allows(WorkerId(99)));
}

#[tokio::test]
async fn client_without_certificate_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    deployment(dir.path(), "7");
    let router = start_router(router_config(dir.path()), mtls_grant);

    // Trusts the CA (so the router's certificate verifies) but presents no certificate.
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem(&dir.path().join("ca.pem"))) {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut tls = rustls::ClientConfig::builder_with_provider(kvroute_net::tls::crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN_EVENTS.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let config = quinn::ClientConfig::new(Arc::new(quic));

    let error = publish(config, router.addr, "localhost").await.unwrap_err();
    assert!(!error.contains("timed out"), "{error}");
    let server = router.task.await.unwrap().unwrap_err();
    assert!(server.starts_with("handshake") && server.contains("certificate"), "{server}");
}

#[tokio::test]
async fn certificate_from_another_ca_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let other = tempfile::tempdir().unwrap();
    deployment(dir.path(), "7");
    deployment(other.path(), "7");
    let router = start_router(router_config(dir.path()), mtls_grant);

    // Trusts the router's CA, but its publisher certificate is signed by another CA.
    let (d, o) = (dir.path(), other.path());
    let config =
        client_config(&pem(&d.join("ca.pem")), &pem(&o.join("publisher-7.pem")), &pem(&o.join("publisher-7.key")))
            .unwrap();
    let error = publish(config, router.addr, "localhost").await.unwrap_err();
    assert!(!error.contains("timed out"), "{error}");
    let server = router.task.await.unwrap().unwrap_err();
    assert!(server.starts_with("handshake") && server.contains("certificate"), "{server}");
}

#[tokio::test]
async fn router_certificate_cannot_be_used_as_a_publisher() {
    let dir = tempfile::tempdir().unwrap();
    deployment(dir.path(), "7");
    let router = start_router(router_config(dir.path()), mtls_grant);
    // Signed by the right CA, but its extended key usage is serverAuth only.
    let config = TlsFiles::in_dir(dir.path(), "router").client_config().unwrap();
    assert!(publish(config, router.addr, "localhost").await.is_err());
    let server = router.task.await.unwrap().unwrap_err();
    assert!(server.starts_with("handshake") && server.contains("certificate"), "{server}");
}

#[tokio::test]
async fn publisher_refuses_router_with_wrong_name_or_ca() {
    let dir = tempfile::tempdir().unwrap();
    let other = tempfile::tempdir().unwrap();
    deployment(dir.path(), "7");
    deployment(other.path(), "7");
    let config = || TlsFiles::in_dir(dir.path(), "publisher-7").client_config().unwrap();

    // The router certificate names localhost / 127.0.0.1 / ::1, not this name.
    let router = start_router(router_config(dir.path()), mtls_grant);
    let error = publish(config(), router.addr, "router.example").await.unwrap_err();
    assert!(error.starts_with("handshake"), "{error}");
    assert!(router.task.await.unwrap().is_err());

    // A router whose certificate comes from another CA.
    let router = start_router(router_config(other.path()), mtls_grant);
    let error = publish(config(), router.addr, "localhost").await.unwrap_err();
    assert!(error.starts_with("handshake"), "{error}");
    assert!(router.task.await.unwrap().is_err());
}

#[tokio::test]
async fn insecure_mode_is_loopback_only() {
    for addr in ["0.0.0.0:4433", "[::]:4433", "192.168.1.10:4433", "10.0.0.1:1", "[2001:db8::1]:4433"] {
        let addr: SocketAddr = addr.parse().unwrap();
        assert!(matches!(insecure_loopback_server_config(addr), Err(TlsError::InsecureNotLoopback { .. })), "{addr}");
        assert!(matches!(insecure_loopback_client_config(addr), Err(TlsError::InsecureNotLoopback { .. })), "{addr}");
        let message = insecure_loopback_server_config(addr).err().unwrap().to_string();
        assert!(message.contains("loopback") && message.contains(&addr.to_string()), "{message}");
    }
    let bind: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let router = start_router(insecure_loopback_server_config(bind).unwrap(), |conn| {
        assert!(matches!(peer_worker_grant(conn), Err(TlsError::NoPeerCertificate)));
        WorkerGrant::all()
    });
    let config = insecure_loopback_client_config(router.addr).unwrap();
    assert_eq!(publish(config, router.addr, INSECURE_SERVER_NAME).await.unwrap(), "all");
    let (grant, received) = router.task.await.unwrap().unwrap();
    assert!(grant.allows(WorkerId(12345)));
    assert_eq!(received, b"hello");

    // The insecure client will not vouch for a non-loopback server name.
    let router = start_router(insecure_loopback_server_config(bind).unwrap(), |_| WorkerGrant::all());
    let config = insecure_loopback_client_config(router.addr).unwrap();
    assert!(publish(config, router.addr, "router.example").await.is_err());
    assert!(router.task.await.unwrap().is_err());
}

fn certs_args(dir: &Path, force: bool) -> CertsArgs {
    CertsArgs {
        out: dir.to_path_buf(),
        workers: Some("0-1".parse().unwrap()),
        groups: Vec::new(),
        router_names: Vec::new(),
        no_router: false,
        use_existing_ca: false,
        days: 30,
        ca_days: 60,
        force,
    }
}

#[test]
fn run_certs_refuses_to_overwrite_without_force() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("certs");
    run_certs(&certs_args(&out, false)).unwrap();
    let mut names: Vec<String> =
        std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    let expected = [
        "ca.key",
        "ca.pem",
        "publisher-0.key",
        "publisher-0.pem",
        "publisher-1.key",
        "publisher-1.pem",
        "router.key",
        "router.pem",
    ];
    assert_eq!(names, expected);
    #[cfg(unix)]
    for name in expected {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(out.join(name)).unwrap().permissions().mode() & 0o777;
        if name.ends_with(".key") {
            assert_eq!(mode, 0o600, "{name}");
        } else {
            assert_eq!(mode & 0o077, mode & 0o044, "{name} is group/world writable or executable");
        }
    }

    let ca_before = std::fs::read(out.join("ca.pem")).unwrap();
    let error = run_certs(&certs_args(&out, false)).unwrap_err();
    assert!(matches!(&error, TlsError::WouldOverwrite { path } if path.ends_with("ca.pem")), "{error}");
    assert!(error.to_string().contains("--force"), "{error}");
    assert_eq!(std::fs::read(out.join("ca.pem")).unwrap(), ca_before, "refused run changed a file");

    // Only one file in the way is enough to refuse, and nothing else is written.
    let lone = dir.path().join("lone");
    std::fs::create_dir(&lone).unwrap();
    std::fs::write(lone.join("publisher-1.key"), b"keep me").unwrap();
    assert!(matches!(run_certs(&certs_args(&lone, false)), Err(TlsError::WouldOverwrite { .. })));
    assert_eq!(std::fs::read_dir(&lone).unwrap().count(), 1);

    run_certs(&certs_args(&out, true)).unwrap();
    assert_ne!(std::fs::read(out.join("ca.pem")).unwrap(), ca_before, "--force did not replace the CA");
}

#[test]
fn config_errors_name_the_input() {
    let dir = tempfile::tempdir().unwrap();
    deployment(dir.path(), "7");
    let d = dir.path();
    let (ca, cert, key) = (pem(&d.join("ca.pem")), pem(&d.join("router.pem")), pem(&d.join("router.key")));
    let other_key = pem(&d.join("publisher-7.key"));

    let error = server_config(b"garbage", &cert, &key).err().unwrap();
    assert!(matches!(error, TlsError::NoCertificate { .. }), "{error}");
    assert!(error.to_string().contains("CA certificate"), "{error}");
    let error = server_config(&ca, &cert, &cert).err().unwrap();
    assert!(matches!(error, TlsError::NoPrivateKey { .. }), "{error}");
    let error = server_config(&ca, &cert, &other_key).err().unwrap();
    assert!(matches!(error, TlsError::Rustls { .. }), "{error}");
    let broken = b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n";
    assert!(matches!(server_config(broken, &cert, &key), Err(TlsError::BadPem { .. })));

    let missing = TlsFiles::in_dir(&d.join("nowhere"), "router");
    let error = missing.server_config().err().unwrap();
    assert!(matches!(&error, TlsError::Io { path, .. } if path.ends_with("ca.pem")), "{error}");
    assert!(error.to_string().contains("nowhere"), "{error}");
}
