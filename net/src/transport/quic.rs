//! quinn endpoints for both ends: TLS from a [`TlsMode`], stream limits and liveness from
//! a [`QuicTuning`]; on the router, bounds on the connection attempts quinn queues before
//! the accept loop takes them (which bounds the connections it keeps, see
//! [`IngestConfig::max_connections`](super::IngestConfig::max_connections)).
//!
//! Stream limits are the protocol's shape: the router accepts unidirectional streams only
//! (the control stream, plus a few the publisher might open in error, each rejected) and
//! no bidirectional ones; the publisher accepts the router's bidirectional rank streams
//! and no unidirectional ones.

use std::net::SocketAddr;
use std::sync::Arc;

use quinn::{IdleTimeout, TransportConfig, VarInt};

use super::config::{QuicTuning, TlsMode};
use super::error::TransportError;
use crate::tls::{insecure_loopback_client_config, insecure_loopback_server_config};

/// Unidirectional streams a publisher may have open towards a router at once.
const ROUTER_MAX_UNI_STREAMS: u32 = 4;
/// Connection attempts quinn queues for the router's accept loop (which takes each at once,
/// refusing it past `max_connections`); beyond, quinn refuses them itself. quinn's default
/// is 65536.
const ROUTER_MAX_INCOMING: usize = 1024;
/// Bytes quinn buffers per queued attempt after its first packet (the rest of a
/// ClientHello; publishers send no 0-RTT data), and for all of them together. quinn's
/// defaults are 10 MiB and 100 MiB.
const ROUTER_INCOMING_BUFFER: u64 = 64 << 10;
const ROUTER_INCOMING_BUFFER_TOTAL: u64 = 16 << 20;

fn transport(tuning: &QuicTuning, bidi: u32, uni: u32) -> Result<Arc<TransportConfig>, TransportError> {
    if tuning.keep_alive.is_zero() || tuning.keep_alive >= tuning.idle_timeout {
        return Err(TransportError::InvalidConfig(format!(
            "QUIC keep-alive ({:?}) must be above zero and below the idle timeout ({:?})",
            tuning.keep_alive, tuning.idle_timeout
        )));
    }
    let idle = IdleTimeout::try_from(tuning.idle_timeout)
        .map_err(|_| TransportError::InvalidConfig(format!("idle timeout {:?} is too long", tuning.idle_timeout)))?;
    let mut config = TransportConfig::default();
    config
        .max_idle_timeout(Some(idle))
        .keep_alive_interval(Some(tuning.keep_alive))
        .max_concurrent_bidi_streams(VarInt::from_u32(bidi))
        .max_concurrent_uni_streams(VarInt::from_u32(uni));
    Ok(Arc::new(config))
}

/// The router's endpoint, bound to `listen`.
pub(crate) fn server_endpoint(
    listen: SocketAddr,
    tls: &TlsMode,
    tuning: &QuicTuning,
) -> Result<quinn::Endpoint, TransportError> {
    let mut config = match tls {
        TlsMode::Mutual(files) => files.server_config()?,
        TlsMode::InsecureLoopback => insecure_loopback_server_config(listen)?,
    };
    config
        .transport_config(transport(tuning, 0, ROUTER_MAX_UNI_STREAMS)?)
        .max_incoming(ROUTER_MAX_INCOMING)
        .incoming_buffer_size(ROUTER_INCOMING_BUFFER)
        .incoming_buffer_size_total(ROUTER_INCOMING_BUFFER_TOTAL);
    let bind = |error| TransportError::Bind { addr: listen, error };
    let socket = std::net::UdpSocket::bind(listen).map_err(bind)?;
    if tuning.udp_receive_buffer > 0 {
        request_receive_buffer(&socket, tuning.udp_receive_buffer);
    }
    let runtime = quinn::default_runtime().ok_or_else(|| bind(std::io::Error::other("no tokio runtime")))?;
    quinn::Endpoint::new(quinn::EndpointConfig::default(), Some(config), socket, runtime).map_err(bind)
}

/// Asks for a `bytes` receive buffer on `socket` and logs what the kernel granted; a
/// refusal only costs burst tolerance, so it is logged, never fatal.
fn request_receive_buffer(socket: &std::net::UdpSocket, bytes: usize) {
    let state = match quinn::udp::UdpSocketState::new(socket.into()) {
        Ok(state) => state,
        Err(error) => {
            tracing::warn!(%error, "cannot inspect the UDP socket; keeping its receive buffer");
            return;
        }
    };
    if let Err(error) = state.set_recv_buffer_size(socket.into(), bytes) {
        tracing::warn!(%error, bytes, "the kernel refused the UDP receive buffer size");
    }
    match state.recv_buffer_size(socket.into()) {
        // Linux reports twice what it grants (bookkeeping included) and caps the request
        // at net.core.rmem_max.
        Ok(granted) if granted < bytes => tracing::warn!(
            requested = bytes,
            granted,
            "UDP receive buffer smaller than requested (raise net.core.rmem_max); bursts may be dropped and recovered"
        ),
        Ok(granted) => tracing::debug!(requested = bytes, granted, "UDP receive buffer"),
        Err(error) => tracing::debug!(%error, "cannot read the UDP receive buffer size"),
    }
}

/// A publisher's client configuration for the router at `addr`, accepting up to
/// `rank_streams` concurrent rank streams.
pub(crate) fn client_config(
    addr: SocketAddr,
    tls: &TlsMode,
    tuning: &QuicTuning,
    rank_streams: u32,
) -> Result<quinn::ClientConfig, TransportError> {
    let mut config = match tls {
        TlsMode::Mutual(files) => files.client_config()?,
        TlsMode::InsecureLoopback => insecure_loopback_client_config(addr)?,
    };
    config.transport_config(transport(tuning, rank_streams, 0)?);
    Ok(config)
}

/// A client endpoint bound to `bind`.
pub(crate) fn client_endpoint(bind: SocketAddr) -> Result<quinn::Endpoint, TransportError> {
    quinn::Endpoint::client(bind).map_err(|error| TransportError::Bind { addr: bind, error })
}
