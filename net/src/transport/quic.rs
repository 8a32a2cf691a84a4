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
    quinn::Endpoint::server(config, listen).map_err(|error| TransportError::Bind { addr: listen, error })
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
