//! Typed errors of the transport: starting an endpoint ([`TransportError`]), publishing
//! ([`PublishError`]), and why one stream was closed ([`StreamError`], for logs and
//! counters: a stream error never stops anything but its own stream).

use std::fmt;
use std::io;
use std::net::SocketAddr;

use kvroute_core::ingest::FrameError;
use kvroute_core::wire::WireError;
use kvroute_core::RankKey;

use crate::tls::TlsError;

/// A publisher or ingest server could not start.
#[derive(Debug)]
#[non_exhaustive]
pub enum TransportError {
    /// Building the TLS configuration failed (unreadable or bad certificate files, insecure
    /// mode off loopback, ...).
    Tls(TlsError),
    /// The UDP socket could not be bound.
    Bind { addr: SocketAddr, error: io::Error },
    /// A setting is out of range; the message says which and why.
    InvalidConfig(String),
    /// `start` was called outside a tokio runtime.
    NoRuntime,
}

impl fmt::Display for TransportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TransportError::Tls(error) => write!(f, "TLS: {error}"),
            TransportError::Bind { addr, error } => write!(f, "cannot bind UDP {addr}: {error}"),
            TransportError::InvalidConfig(reason) => write!(f, "invalid transport configuration: {reason}"),
            TransportError::NoRuntime => write!(f, "the transport must be started inside a tokio runtime"),
        }
    }
}

impl std::error::Error for TransportError {}

impl From<TlsError> for TransportError {
    fn from(error: TlsError) -> Self {
        TransportError::Tls(error)
    }
}

/// An event could not be published.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PublishError {
    /// The rank is not one of the publisher's configured ranks.
    UnknownRank(RankKey),
}

impl fmt::Display for PublishError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PublishError::UnknownRank(rank) => write!(f, "rank {rank} is not published by this publisher"),
        }
    }
}

impl std::error::Error for PublishError {}

/// Why the router closed one rank's stream (or a stray stream). Each maps to a counter of
/// [`super::IngestMetrics`] and, except [`Superseded`](Self::Superseded) and
/// [`ConnectionLost`](Self::ConnectionLost), to a new subscription.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StreamError {
    /// Bytes that do not decode (`rejected_frames`).
    Wire(WireError),
    /// The rank's session refused a frame (core's [`FrameError`]): a gap (`gaps`), a
    /// frame for a worker the certificate does not allow (`rejected_unauthorized`), a
    /// protocol violation (`rejected_frames`) or the publisher's `Goodbye`.
    Frame(FrameError),
    /// The publisher reset the stream (it cuts subscribers that fall behind).
    Reset(u64),
    /// The publisher finished the stream without a `Goodbye`.
    Finished,
    /// Another subscription (a newer connection of the publisher) owns the rank now.
    Superseded,
    /// The connection is gone.
    ConnectionLost(String),
    /// No first frame in time on a stray or control stream.
    Timeout,
}

impl StreamError {
    /// Whether the error is the peer's fault in a way `rejected_frames` counts.
    pub fn is_rejected_frame(&self) -> bool {
        match self {
            StreamError::Wire(_) => true,
            StreamError::Frame(error) => error.is_protocol_violation(),
            _ => false,
        }
    }

    /// Whether events were lost (`gaps`): the router subscribes again from what it applied.
    pub fn is_gap(&self) -> bool {
        matches!(self, StreamError::Frame(error) if error.is_gap())
    }
}

impl From<FrameError> for StreamError {
    fn from(error: FrameError) -> Self {
        StreamError::Frame(error)
    }
}

impl fmt::Display for StreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StreamError::Wire(error) => write!(f, "undecodable frame: {error}"),
            StreamError::Frame(error) => error.fmt(f),
            StreamError::Reset(code) => write!(f, "stream reset by the publisher (code {code})"),
            StreamError::Finished => write!(f, "stream finished by the publisher"),
            StreamError::Superseded => write!(f, "rank taken over by a newer subscription"),
            StreamError::ConnectionLost(reason) => write!(f, "connection lost: {reason}"),
            StreamError::Timeout => write!(f, "no frame in time"),
        }
    }
}

impl std::error::Error for StreamError {}
