//! Typed errors of the transport: starting an endpoint ([`TransportError`]), publishing
//! ([`PublishError`]), and why one stream was closed ([`StreamError`], for logs and
//! counters: a stream error never stops anything but its own stream).

use std::fmt;
use std::io;
use std::net::SocketAddr;

use kvroute_core::ingest::CursorError;
use kvroute_core::wire::{FrameType, GoodbyeCode, WireError};
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
    /// A frame out of the protocol's order (`rejected_frames`).
    Order(CursorError),
    /// A frame type that has no place on this stream (`rejected_frames`).
    UnexpectedFrame(FrameType),
    /// A frame for another rank of a worker the publisher may publish for
    /// (`rejected_frames`).
    WrongRank { expected: RankKey, got: RankKey },
    /// A frame for a worker the publisher's certificate does not allow
    /// (`rejected_unauthorized`).
    Unauthorized(RankKey),
    /// A dump larger than `IngestConfig::max_dump_blocks` (`rejected_frames`).
    DumpTooLarge { max: u64 },
    /// Events are missing: the next batch starts after `expected` (`gaps`); the router
    /// subscribes again from what it applied.
    Gap { expected: u64, got: u64 },
    /// A heartbeat says the publisher sent up to `last_seq`, the router applied only
    /// `applied`: the last batch was lost (`gaps`).
    BehindHeartbeat { applied: u64, last_seq: u64 },
    /// A heartbeat names fewer events than the router applied (`rejected_frames`).
    HeartbeatBehindCursor { applied: u64, last_seq: u64 },
    /// The publisher said `Goodbye` on the stream.
    Goodbye(GoodbyeCode),
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
        matches!(
            self,
            StreamError::Wire(_)
                | StreamError::Order(_)
                | StreamError::UnexpectedFrame(_)
                | StreamError::WrongRank { .. }
                | StreamError::DumpTooLarge { .. }
                | StreamError::HeartbeatBehindCursor { .. }
        )
    }
}

impl fmt::Display for StreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StreamError::Wire(error) => write!(f, "undecodable frame: {error}"),
            StreamError::Order(error) => write!(f, "frame out of order: {error}"),
            StreamError::UnexpectedFrame(frame_type) => write!(f, "unexpected {frame_type:?} frame"),
            StreamError::WrongRank { expected, got } => {
                write!(f, "frame for rank {got} on the stream of rank {expected}")
            }
            StreamError::Unauthorized(rank) => {
                write!(f, "frame for rank {rank}, whose worker the publisher's certificate does not allow")
            }
            StreamError::DumpTooLarge { max } => write!(f, "dump of more than {max} blocks"),
            StreamError::Gap { expected, got } => write!(f, "sequence gap: expected {expected}, got {got}"),
            StreamError::BehindHeartbeat { applied, last_seq } => {
                write!(f, "heartbeat at seq {last_seq} but only {applied} applied: a batch was lost")
            }
            StreamError::HeartbeatBehindCursor { applied, last_seq } => {
                write!(f, "heartbeat at seq {last_seq} behind the {applied} events applied")
            }
            StreamError::Goodbye(code) => write!(f, "publisher said goodbye (code {})", code.0),
            StreamError::Reset(code) => write!(f, "stream reset by the publisher (code {code})"),
            StreamError::Finished => write!(f, "stream finished by the publisher"),
            StreamError::Superseded => write!(f, "rank taken over by a newer subscription"),
            StreamError::ConnectionLost(reason) => write!(f, "connection lost: {reason}"),
            StreamError::Timeout => write!(f, "no frame in time"),
        }
    }
}

impl std::error::Error for StreamError {}
