//! Replay requests to an engine rank's replay ROUTER: the batches a subscriber missed.
//!
//! Shape: [`request_replay`]`(endpoint, from_seq, timeout, max_messages)` connects a fresh
//! DEALER socket (the replay ROUTER always binds, so the endpoint must be
//! [`EndpointMode::Connect`]), sends `[b"", from_seq as 8 bytes big-endian]` and returns a
//! [`Replay`]: a pull stream, [`Replay::next`] yielding the replies as they arrive (no
//! collecting; the socket's own buffers are the only ones, and a consumer that stops
//! pulling stops the reading):
//!
//! ```text
//! received                                     Replay::next
//! [b"", topic, seq, payload]  (vLLM >= 0.34) -> ReplayItem::Message([topic, seq, payload])
//! [b"", seq, payload]         (older)        -> ReplayItem::Message([seq, payload])
//! [b"", (b"",) ff*8, b""]     end marker     -> ReplayItem::End { messages }, then None
//! ```
//!
//! One leading empty delimiter frame is stripped, nothing else is touched: the consumer's
//! decoder tells the two shapes apart. The end marker is recognised in both shapes (last
//! frame empty, the one before it `ff*8`) and handed over as the distinct
//! [`ReplayItem::End`] (its frames are not). The engine answers every buffered batch with
//! `seq >= from_seq`: if the first seq is above `from_seq`, its buffer has rolled over and
//! the rest is lost.
//!
//! Bounds and errors (each ends the stream: the next call returns `None`):
//! [`ReplayError::Timeout`] when no reply comes within `timeout` of the request or of the
//! previous reply (also when nothing accepts the connection within `timeout`, as with
//! libzmq's asynchronous connect; an engine also stays silent on a request it cannot
//! parse), [`ReplayError::TooManyMessages`] past `max_messages` replies (default 20,000;
//! the engines buffer 10,000), [`ReplayError::Oversize`] for a reply over
//! `max_message_bytes` (default 16 MiB) or `max_frames`, socket errors typed. The socket
//! is closed at the end, on an error, or when the [`Replay`] is dropped.

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use zeromq::{DealerSocket, Socket, SocketOptions, SocketRecv, SocketSend, ZmqError, ZmqMessage};

use super::endpoint::{EndpointMode, EngineEndpoint};
use super::frames_len;
use super::subscriber::{DEFAULT_MAX_FRAMES, DEFAULT_MAX_MESSAGE_BYTES};

/// The seq frame of the end marker: -1 as a signed 8-byte big-endian integer.
pub const REPLAY_END_SEQ: [u8; 8] = [0xff; 8];
/// Default [`ReplayConfig::max_messages`].
pub const DEFAULT_MAX_REPLAY_MESSAGES: usize = 20_000;

/// Settings of one replay request. `ReplayConfig::default()`: 2 s timeout, 20,000
/// messages, 16 MiB and 16 frames per message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplayConfig {
    /// Longest wait for the connection, the first reply, and each reply after that.
    pub timeout: Duration,
    /// Most replies accepted before the end marker.
    pub max_messages: usize,
    /// Largest reply, frames summed (delimiter stripped).
    pub max_message_bytes: usize,
    /// Most frames in a reply (delimiter stripped).
    pub max_frames: usize,
}

impl Default for ReplayConfig {
    fn default() -> Self {
        ReplayConfig {
            timeout: Duration::from_secs(2),
            max_messages: DEFAULT_MAX_REPLAY_MESSAGES,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            max_frames: DEFAULT_MAX_FRAMES,
        }
    }
}

/// One item of a [`Replay`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplayItem {
    /// A replayed message's frames, delimiter stripped: `[topic, seq, payload]` or
    /// `[seq, payload]`.
    Message(Vec<Bytes>),
    /// The end marker: `messages` replies came before it. The stream ends here.
    End { messages: u64 },
}

/// Why a replay failed or ended early.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ReplayError {
    /// The endpoint is in bind mode: replay ROUTERs always bind, so the router connects.
    BindEndpoint,
    /// A setting is out of range; the message says which.
    InvalidConfig(String),
    /// The connection could not be made (not a timeout: e.g. the name does not resolve).
    Connect { endpoint: String, reason: String },
    /// The request could not be sent.
    Send { reason: String },
    /// A receive error on the socket after `received` replies.
    Recv { received: u64, reason: String },
    /// Nothing within `after` (of connecting, of the request, or of the last of the
    /// `received` replies).
    Timeout { after: Duration, received: u64 },
    /// More than `max` replies before the end marker.
    TooManyMessages { max: usize },
    /// A reply of `bytes` bytes in `frames` frames, over the configured bounds.
    Oversize { bytes: usize, frames: usize },
    /// A reply with no frame besides the delimiter.
    EmptyReply,
}

impl fmt::Display for ReplayError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReplayError::BindEndpoint => {
                write!(f, "replay endpoints are connected to (the engine's ROUTER binds), not bound")
            }
            ReplayError::InvalidConfig(reason) => write!(f, "invalid replay configuration: {reason}"),
            ReplayError::Connect { endpoint, reason } => write!(f, "cannot connect to replay {endpoint}: {reason}"),
            ReplayError::Send { reason } => write!(f, "cannot send the replay request: {reason}"),
            ReplayError::Recv { received, reason } => {
                write!(f, "replay receive error after {received} replies: {reason}")
            }
            ReplayError::Timeout { after, received } => {
                write!(f, "no replay reply within {after:?} (after {received} replies)")
            }
            ReplayError::TooManyMessages { max } => write!(f, "replay sent more than {max} messages"),
            ReplayError::Oversize { bytes, frames } => {
                write!(f, "replay reply of {bytes} bytes in {frames} frames exceeds the bounds")
            }
            ReplayError::EmptyReply => write!(f, "replay reply without frames"),
        }
    }
}

impl std::error::Error for ReplayError {}

/// Sends a replay request for every batch from `from_seq` on and returns the stream of
/// replies. [`ReplayConfig::default`] for the rest.
pub async fn request_replay(
    endpoint: &EngineEndpoint,
    from_seq: u64,
    timeout: Duration,
    max_messages: usize,
) -> Result<Replay, ReplayError> {
    request_replay_with(endpoint, from_seq, ReplayConfig { timeout, max_messages, ..ReplayConfig::default() }).await
}

/// [`request_replay`] with every setting.
pub async fn request_replay_with(
    endpoint: &EngineEndpoint,
    from_seq: u64,
    config: ReplayConfig,
) -> Result<Replay, ReplayError> {
    if endpoint.mode() == EndpointMode::Bind {
        return Err(ReplayError::BindEndpoint);
    }
    if config.timeout.is_zero() {
        return Err(ReplayError::InvalidConfig("timeout must be positive".into()));
    }
    let address = endpoint.address().to_string();
    let mut options = SocketOptions::default();
    options.connect_timeout(config.timeout);
    let mut socket = DealerSocket::with_options(options);
    let timeout = |_| ReplayError::Timeout { after: config.timeout, received: 0 };
    match tokio::time::timeout(config.timeout, socket.connect(&address)).await.map_err(timeout)? {
        Ok(()) => {}
        Err(ZmqError::ConnectTimeout(_)) => return Err(ReplayError::Timeout { after: config.timeout, received: 0 }),
        Err(error) => return Err(ReplayError::Connect { endpoint: address, reason: error.to_string() }),
    }
    let request = vec![Bytes::new(), Bytes::copy_from_slice(&from_seq.to_be_bytes())];
    let request = ZmqMessage::try_from(request).map_err(|error| ReplayError::Send { reason: error.to_string() })?;
    match tokio::time::timeout(config.timeout, socket.send(request)).await.map_err(timeout)? {
        Ok(()) => {}
        Err(error) => return Err(ReplayError::Send { reason: error.to_string() }),
    }
    tracing::debug!(%address, from_seq, "replay requested");
    Ok(Replay { socket: Some(socket), config, received: 0 })
}

/// The replies to one replay request, pulled with [`next`](Self::next).
pub struct Replay {
    /// `None` once the stream ended.
    socket: Option<DealerSocket>,
    config: ReplayConfig,
    received: u64,
}

impl Replay {
    /// The next reply, [`ReplayItem::End`] at the end marker, an error, then `None`.
    /// Cancel safe: a reply is not lost when the future is dropped before it completes.
    pub async fn next(&mut self) -> Option<Result<ReplayItem, ReplayError>> {
        let socket = self.socket.as_mut()?;
        let item = match tokio::time::timeout(self.config.timeout, socket.recv()).await {
            Err(_) => Err(ReplayError::Timeout { after: self.config.timeout, received: self.received }),
            Ok(Err(error)) => Err(ReplayError::Recv { received: self.received, reason: error.to_string() }),
            Ok(Ok(message)) => self.classify(message.into_vec()),
        };
        if !matches!(item, Ok(ReplayItem::Message(_))) {
            self.socket = None;
        }
        Some(item)
    }

    /// Replies received so far (the end marker not counted).
    pub fn received(&self) -> u64 {
        self.received
    }

    fn classify(&mut self, mut frames: Vec<Bytes>) -> Result<ReplayItem, ReplayError> {
        if frames.first().is_some_and(|frame| frame.is_empty()) {
            frames.remove(0);
        }
        if frames.is_empty() {
            return Err(ReplayError::EmptyReply);
        }
        let bytes = frames_len(&frames);
        if bytes > self.config.max_message_bytes || frames.len() > self.config.max_frames {
            return Err(ReplayError::Oversize { bytes, frames: frames.len() });
        }
        if is_end_marker(&frames) {
            return Ok(ReplayItem::End { messages: self.received });
        }
        if self.received >= self.config.max_messages as u64 {
            return Err(ReplayError::TooManyMessages { max: self.config.max_messages });
        }
        self.received += 1;
        Ok(ReplayItem::Message(frames))
    }
}

impl fmt::Debug for Replay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Replay").field("open", &self.socket.is_some()).field("received", &self.received).finish()
    }
}

/// `[.., ff*8, b""]`: the end marker in either shape (delimiter stripped).
fn is_end_marker(frames: &[Bytes]) -> bool {
    match frames {
        [.., seq, payload] => payload.is_empty() && seq.as_ref() == REPLAY_END_SEQ,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn end_marker_in_both_shapes() {
        let ff = Bytes::from_static(&REPLAY_END_SEQ);
        assert!(is_end_marker(&[Bytes::new(), ff.clone(), Bytes::new()]));
        assert!(is_end_marker(&[ff.clone(), Bytes::new()]));
        assert!(!is_end_marker(&[ff.clone(), Bytes::from_static(b"x")]));
        assert!(!is_end_marker(&[Bytes::from_static(&[0; 8]), Bytes::new()]));
        assert!(!is_end_marker(&[Bytes::new()]));
    }
}
