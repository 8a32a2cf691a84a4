//! ZeroMQ I/O for the engines' own KV-event streams (vLLM's and SGLang's
//! `ZmqEventPublisher`): raw multipart frames in, raw frames out; decoding the msgpack
//! payloads is the core crate's job.
//!
//! # Wire (see `shared/engine-events/README.md`)
//!
//! ```text
//! engine rank r                                   router
//!   PUB  base_port + r    [topic, seq u64 BE, payload]  ->  SUB (spawn_subscriber)
//!   ROUTER replay_port + r  <- [b"", start_seq u64 BE]      DEALER (request_replay)
//!                           -> [b"", topic, seq, payload]... (vLLM >= 0.34, SGLang 0.5.23)
//!                              or [b"", seq, payload]...     (older)
//!                           -> end: seq ff*8, empty payload
//! ```
//!
//! # Modules
//! - [`endpoint`]: [`EngineEndpoint`], one rank's address and whether the router binds or
//!   connects (a wildcard engine endpoint means the engine binds), per-rank ports.
//! - [`subscriber`]: [`spawn_subscriber`] -> [`SubscriberHandle`]: one tokio task per rank
//!   holding a SUB socket, forwarding [`SubscriberEvent`]s (`Connected`, `Message(frames)`,
//!   `Disconnected`) on a bounded channel, awaiting capacity (backpressure: the engine's
//!   PUB then drops past its high-water mark, which the consumer sees as a seq gap and
//!   repairs by replay); oversize messages dropped and counted; reconnects with
//!   [`Backoff`](crate::transport::Backoff) forever until shutdown; [`SubscriberMetrics`].
//! - [`replay`]: [`request_replay`] -> [`Replay`], a pull stream of the replies to one
//!   replay request (DEALER socket), each [`ReplayItem::Message`] with its delimiter
//!   stripped, then [`ReplayItem::End`]; a timeout between replies, a message count bound.
//! - [`engine_publisher`]: [`EnginePublisher`], a stand-in engine rank for tests, benches
//!   and the simulator (PUB + replay ROUTER answering the vLLM way, fault injection).
//!
//! # Library
//! The pure-Rust `zeromq` crate (ZMTP 3, tokio runtime; interoperates with libzmq's PUB,
//! SUB, ROUTER and DEALER). What it does not do, and what this module does about it:
//! - no receive size limit: it reassembles a whole message before handing it over, so
//!   `max_message_bytes` drops a message only after it was received (a peer announcing a
//!   huge frame makes the crate try to reserve that much memory: only connect to, or bind
//!   for, engines you trust);
//! - no ZMTP heartbeats or TCP keep-alive: a peer that vanishes without closing its TCP
//!   connection is not noticed until the kernel gives up on the connection;
//! - `*` is not a host to it: bound wildcards are written `0.0.0.0` ([`ZmqAddress`] does it);
//! - ipc sockets: no abstract (`@name`) sockets, and it does not remove a stale socket
//!   file before binding, so the binding side here removes one (as libzmq does).

pub mod endpoint;
pub mod engine_publisher;
pub mod replay;
pub mod subscriber;

pub use endpoint::{EndpointError, EndpointMode, EngineEndpoint, ZmqAddress};
pub use engine_publisher::{
    EnginePublisher, EnginePublisherError, EnginePublisherOptions, EnginePublisherStats, ReplayForm, ReplayMode,
};
pub use replay::{request_replay, request_replay_with, Replay, ReplayConfig, ReplayError, ReplayItem, REPLAY_END_SEQ};
pub use subscriber::{
    spawn_subscriber, SubscriberConfig, SubscriberError, SubscriberEvent, SubscriberHandle, SubscriberMetrics,
    SubscriberMetricsSnapshot,
};

use bytes::Bytes;
use tokio::sync::watch;

/// Returns once `stop` holds `true` or its sender is gone.
pub(crate) async fn stopped(stop: &mut watch::Receiver<bool>) {
    loop {
        if *stop.borrow_and_update() {
            return;
        }
        if stop.changed().await.is_err() {
            return;
        }
    }
}

/// Total payload bytes of a multipart message (saturating).
pub(crate) fn frames_len(frames: &[Bytes]) -> usize {
    frames.iter().fold(0usize, |total, frame| total.saturating_add(frame.len()))
}

/// Removes a stale Unix socket file at an ipc address before binding it, as libzmq does
/// (the `zeromq` crate does not, and a leftover file makes the bind fail). Only a socket
/// file is removed; anything else at that path is left for the bind to report.
pub(crate) fn remove_stale_ipc(address: &ZmqAddress) {
    #[cfg(unix)]
    if let ZmqAddress::Ipc { path } = address {
        use std::os::unix::fs::FileTypeExt;
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            if meta.file_type().is_socket() {
                if let Err(error) = std::fs::remove_file(path) {
                    tracing::debug!(path = %path.display(), %error, "cannot remove stale ipc socket file");
                }
            }
        }
    }
    #[cfg(not(unix))]
    let _ = address;
}

/// The address a zeromq crate `bind` resolved to, as a [`ZmqAddress`] (the bound port of
/// a port-0 bind). `fallback` when it does not parse (an unnamed ipc socket).
pub(crate) fn resolved_address(endpoint: &zeromq::Endpoint, fallback: &ZmqAddress) -> ZmqAddress {
    ZmqAddress::parse(&endpoint.to_string()).unwrap_or_else(|_| fallback.clone())
}
