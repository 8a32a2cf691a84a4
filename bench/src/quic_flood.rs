//! Half-open QUIC handshakes, for hardening checks of the router's ingest: a
//! [`HalfOpenFlood`] sends the first datagram of a fresh connection attempt (a client
//! Initial carrying a TLS ClientHello) and never answers what comes back, as a flood of
//! unauthenticated clients (or spoofed addresses) would.
//!
//! Shape: one UDP socket bound to loopback and one sans-IO `quinn_proto::Endpoint` that
//! only ever starts connections. [`HalfOpenFlood::send_attempt`] asks the endpoint for a
//! new connection, takes its first transmit and sends it; the connection is then dropped,
//! so the flood holds no state per attempt beyond the endpoint's connection-id table,
//! which is replaced every [`ATTEMPTS_PER_ENDPOINT`] attempts. Replies (Retry packets,
//! server handshakes) are never read: they pile up in the socket's receive buffer and are
//! dropped by the kernel.

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::Instant;

/// Attempts started from one `quinn_proto::Endpoint` before a fresh one replaces it.
pub const ATTEMPTS_PER_ENDPOINT: u64 = 4096;

/// Sends half-open connection attempts to one QUIC server on loopback.
pub struct HalfOpenFlood {
    socket: UdpSocket,
    target: SocketAddr,
    client: quinn::ClientConfig,
    endpoint: quinn_proto::Endpoint,
    buf: Vec<u8>,
    attempts: u64,
}

impl HalfOpenFlood {
    /// A flood aimed at `target` (a loopback address: the ClientHello uses the insecure
    /// loopback client configuration, which presents no client certificate).
    pub fn new(target: SocketAddr) -> Result<Self, String> {
        let client = kvroute_net::tls::insecure_loopback_client_config(target).map_err(|e| e.to_string())?;
        let socket = UdpSocket::bind(("127.0.0.1", 0)).map_err(|e| format!("bind: {e}"))?;
        Ok(HalfOpenFlood { socket, target, client, endpoint: fresh_endpoint(), buf: Vec::new(), attempts: 0 })
    }

    /// Sends one new connection attempt's first datagram; returns its size in bytes.
    pub fn send_attempt(&mut self) -> Result<usize, String> {
        if self.attempts > 0 && self.attempts % ATTEMPTS_PER_ENDPOINT == 0 {
            self.endpoint = fresh_endpoint();
        }
        self.attempts += 1;
        let now = Instant::now();
        let (_, mut conn) =
            self.endpoint.connect(now, self.client.clone(), self.target, "localhost").map_err(|e| e.to_string())?;
        self.buf.clear();
        let transmit = conn.poll_transmit(now, 1, &mut self.buf).ok_or("the connection had nothing to send")?;
        self.socket.send_to(&self.buf[..transmit.size], transmit.destination).map_err(|e| format!("send: {e}"))
    }

    /// Attempts sent so far.
    pub fn attempts(&self) -> u64 {
        self.attempts
    }
}

fn fresh_endpoint() -> quinn_proto::Endpoint {
    quinn_proto::Endpoint::new(Arc::new(quinn_proto::EndpointConfig::default()), None, false, None)
}
