//! Settings shared by both ends of the transport: how to authenticate ([`TlsMode`]), QUIC
//! liveness ([`QuicTuning`]) and retry pacing ([`Backoff`]).

use std::time::Duration;

use crate::tls::TlsFiles;

/// How an endpoint authenticates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TlsMode {
    /// Mutual TLS with the files `kvroute certs` writes: the router's files on the router
    /// (`router.pem`), a publisher's on a publisher (`publisher-7.pem`). The router reads
    /// which workers a publisher may publish for from its certificate.
    Mutual(TlsFiles),
    /// No certificates, loopback addresses only (see [`crate::tls::insecure`]): every
    /// publisher may publish for every worker.
    InsecureLoopback,
}

/// QUIC connection liveness. `QuicTuning::default()`: keep-alive every second, a peer
/// silent for 10 s is gone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuicTuning {
    /// Interval of QUIC keep-alive packets on an otherwise idle connection.
    pub keep_alive: Duration,
    /// A connection with nothing received for this long is closed (a crashed peer, a cut
    /// network). Must exceed `keep_alive`.
    pub idle_timeout: Duration,
    /// Receive buffer the router asks the kernel for on its UDP socket, bytes (0: the
    /// system default). Publishers burst: a delta of a long prompt is hundreds of
    /// datagrams, and a datagram the kernel drops for want of buffer while the router is
    /// applying costs a QUIC loss recovery (milliseconds) on that connection. Linux caps
    /// the request at `net.core.rmem_max` (the router logs what it got).
    pub udp_receive_buffer: usize,
}

/// Default [`QuicTuning::udp_receive_buffer`]: 8 MiB, about 80 ms of deltas at 100 MB/s.
pub const DEFAULT_UDP_RECEIVE_BUFFER: usize = 8 << 20;

impl Default for QuicTuning {
    fn default() -> Self {
        QuicTuning {
            keep_alive: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(10),
            udp_receive_buffer: DEFAULT_UDP_RECEIVE_BUFFER,
        }
    }
}

/// Exponential retry delay: `initial`, doubled after each failure up to `max`, back to
/// `initial` after a success.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl Backoff {
    /// The delay after `delay`: twice as long, at most `max`, at least `initial`.
    pub(crate) fn next(&self, delay: Duration) -> Duration {
        delay.saturating_mul(2).clamp(self.initial, self.max.max(self.initial))
    }
}
