//! Bad QUIC traffic against the daemon's ingest, mixed into the run at a modest rate:
//! [`run_bad_quic`] sends a burst of random UDP datagrams every `interval`, and every
//! fourth interval one misbehaving QUIC peer, cycling through [`Peer`]s:
//!
//! | peer | does | expected |
//! |---|---|---|
//! | no certificate | handshakes without a client certificate | refused (handshake fails or the connection is closed) |
//! | foreign CA | presents a publisher certificate of another CA | refused likewise |
//! | wrong worker | a valid certificate for a rogue worker id, `Hello` for a real worker's ranks | ranks refused (`kvroute_ingest_rejected_unauthorized_total`) |
//! | garbage | a valid certificate, random bytes instead of a `Hello` | refused (`kvroute_ingest_rejected_frames_total`) |
//!
//! With `--insecure` only the datagrams and the garbage peer run (there are no
//! certificates to reject, and every peer may publish for every worker). Each peer has
//! its own quinn client endpoint and is closed within about a second. A peer that the
//! daemon lets through where it must not (a connection without a valid certificate still
//! open after [`REFUSAL_LIMIT`]) is a failure ([`Tally::fail`]); the counters are
//! compared with the daemon's at the end.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use kvroute_core::wire::{encode, Frame, Hello, VERSION};
use kvroute_core::RankKey;
use kvroute_net::tls::{self, TlsFiles, ALPN_EVENTS};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use tokio::net::UdpSocket;
use tokio::sync::watch;

use super::tally::Tally;
use crate::rng::Rng;

/// How long a peer that must be refused may stay connected.
const REFUSAL_LIMIT: Duration = Duration::from_secs(3);
/// Datagrams per burst.
const BURST: usize = 8;

/// Certificates for the misbehaving peers (mutual TLS only).
#[derive(Clone, Debug)]
pub struct RogueCerts {
    /// The daemon's `kvroute certs` directory (its `ca.pem`, and `publisher-<rogue>`).
    pub dir: PathBuf,
    /// A worker id the certificates allow but the daemon does not know.
    pub rogue_worker: u64,
    /// Another CA's directory with a `publisher-<victim>` certificate.
    pub foreign_dir: PathBuf,
}

/// What the bad QUIC traffic needs to know.
#[derive(Clone)]
pub struct BadQuicContext {
    pub ingest: SocketAddr,
    pub tally: Arc<Tally>,
    /// `None` with `--insecure`.
    pub certs: Option<RogueCerts>,
    /// The real worker whose ranks the wrong-worker peer claims.
    pub victim: u64,
    pub dp_size: u32,
    pub seed: u64,
}

#[derive(Clone, Copy, Debug)]
enum Peer {
    NoCertificate,
    ForeignCa,
    WrongWorker,
    Garbage,
}

/// Runs the traffic of the module docs every `interval` until `stop`.
pub async fn run_bad_quic(context: BadQuicContext, interval: Duration, mut stop: watch::Receiver<bool>) {
    let mut rng = Rng::new(context.seed, 5);
    let socket = match UdpSocket::bind(("127.0.0.1", 0)).await {
        Ok(socket) => socket,
        Err(error) => return context.tally.fail(format!("bad QUIC: UDP socket: {error}")),
    };
    let peers: &[Peer] = match context.certs {
        Some(_) => &[Peer::NoCertificate, Peer::WrongWorker, Peer::ForeignCa, Peer::Garbage],
        None => &[Peer::Garbage],
    };
    for i in 0.. {
        if !super::tick_or_stop(interval, &mut stop).await {
            break;
        }
        for _ in 0..BURST {
            let len = rng.between(1, 1400) as usize;
            let mut datagram = rng.bytes(len);
            if rng.percent(50) {
                datagram[0] |= 0xC0; // a long header, as a handshake's first packet has
            }
            if socket.send_to(&datagram, context.ingest).await.is_ok() {
                Tally::bump(&context.tally.bad_datagrams);
            }
        }
        if i % 4 == 3 {
            let peer = peers[(i / 4) % peers.len()];
            if let Err(error) = misbehave(&context, &mut rng, peer).await {
                context.tally.fail(format!("bad QUIC {peer:?}: {error}"));
            }
        }
    }
}

/// A client configuration that trusts the daemon's CA and presents no certificate.
fn no_certificate_config(dir: &std::path::Path) -> Result<quinn::ClientConfig, String> {
    let ca = dir.join("ca.pem");
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&ca).map_err(|e| format!("{}: {e}", ca.display()))? {
        roots.add(cert.map_err(|e| format!("{}: {e}", ca.display()))?).map_err(|e| e.to_string())?;
    }
    let mut config = rustls::ClientConfig::builder_with_provider(tls::crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN_EVENTS.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(config).map_err(|e| e.to_string())?;
    Ok(quinn::ClientConfig::new(Arc::new(quic)))
}

/// The client configuration `peer` connects with.
fn client_config(context: &BadQuicContext, peer: Peer) -> Result<quinn::ClientConfig, String> {
    let Some(certs) = &context.certs else {
        return tls::insecure_loopback_client_config(context.ingest).map_err(|e| e.to_string());
    };
    let rogue = TlsFiles::in_dir(&certs.dir, &format!("publisher-{}", certs.rogue_worker));
    match peer {
        Peer::NoCertificate => no_certificate_config(&certs.dir),
        Peer::ForeignCa => {
            let foreign = TlsFiles::in_dir(&certs.foreign_dir, &format!("publisher-{}", context.victim));
            let read = |path: &std::path::Path| tls::read_pem_file(path).map_err(|e| e.to_string());
            tls::client_config(&read(&rogue.ca)?, &read(&foreign.cert)?, &read(&foreign.key)?)
                .map_err(|e| e.to_string())
        }
        Peer::WrongWorker | Peer::Garbage => rogue.client_config().map_err(|e| e.to_string()),
    }
}

/// One misbehaving peer (see the module docs' table).
async fn misbehave(context: &BadQuicContext, rng: &mut Rng, peer: Peer) -> Result<(), String> {
    let config = client_config(context, peer)?;
    let endpoint = quinn::Endpoint::client(([127, 0, 0, 1], 0).into()).map_err(|e| format!("endpoint: {e}"))?;
    let result = drive(context, rng, peer, &endpoint, config).await;
    endpoint.close(0u32.into(), b"bye");
    result
}

async fn drive(
    context: &BadQuicContext,
    rng: &mut Rng,
    peer: Peer,
    endpoint: &quinn::Endpoint,
    config: quinn::ClientConfig,
) -> Result<(), String> {
    let connecting = endpoint.connect_with(config, context.ingest, "localhost").map_err(|e| format!("connect: {e}"))?;
    let connected = tokio::time::timeout(REFUSAL_LIMIT, connecting).await;
    let tally = &context.tally;
    match peer {
        Peer::NoCertificate | Peer::ForeignCa => {
            let conn = match connected {
                Ok(Err(_)) => {
                    Tally::bump(&tally.quic_certs_refused);
                    return Ok(());
                }
                Err(_) => return Err("the handshake neither completed nor failed".into()),
                Ok(Ok(conn)) => conn,
            };
            // TLS 1.3: the client may finish its side before the server checks its
            // certificate; the refusal then comes as a close.
            match tokio::time::timeout(REFUSAL_LIMIT, conn.closed()).await {
                Ok(_) => {
                    Tally::bump(&tally.quic_certs_refused);
                    Ok(())
                }
                Err(_) => Err(format!("connection still open after {REFUSAL_LIMIT:?}")),
            }
        }
        Peer::WrongWorker | Peer::Garbage => {
            let conn = match connected {
                Ok(Ok(conn)) => conn,
                Ok(Err(error)) => return Err(format!("handshake with a valid certificate failed: {error}")),
                Err(_) => return Err("handshake with a valid certificate timed out".into()),
            };
            let mut control = conn.open_uni().await.map_err(|e| format!("open stream: {e}"))?;
            let bytes = match peer {
                Peer::WrongWorker => {
                    let ranks = (0..context.dp_size).map(|r| RankKey::new(context.victim, r)).collect();
                    let hello = Hello {
                        max_version: VERSION,
                        incarnation: rng.next_u64(),
                        publisher_name: "rogue".into(),
                        ranks,
                    };
                    let mut bytes = Vec::new();
                    encode(&Frame::Hello(hello), &mut bytes).map_err(|e| e.to_string())?;
                    bytes
                }
                _ => {
                    let len = rng.between(16, 512) as usize;
                    let mut bytes = rng.bytes(len);
                    bytes[0] = b'X'; // not the frame magic
                    bytes
                }
            };
            control.write_all(&bytes).await.map_err(|e| format!("write: {e}"))?;
            // Give the daemon time to read and judge it, then leave.
            let _ = tokio::time::timeout(Duration::from_millis(500), conn.closed()).await;
            conn.close(0u32.into(), b"bye");
            Tally::bump(if matches!(peer, Peer::WrongWorker) { &tally.quic_wrong_worker } else { &tally.quic_garbage });
            Ok(())
        }
    }
}
