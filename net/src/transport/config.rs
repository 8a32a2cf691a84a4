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
}

impl Default for QuicTuning {
    fn default() -> Self {
        QuicTuning { keep_alive: Duration::from_secs(1), idle_timeout: Duration::from_secs(10) }
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
