//! A stand-in engine rank for tests, benches and the simulator: the PUB socket and replay
//! ROUTER of vLLM's / SGLang's `ZmqEventPublisher`, with fault injection.
//!
//! Shape: [`EnginePublisher::bind`]`(pub, replay, options)` (the engine binds its PUB: a
//! wildcard engine endpoint) or [`EnginePublisher::connect`] (the PUB connects out to a
//! router that binds); the replay ROUTER, when given, always binds. Port 0 binds a free
//! port: [`pub_address`](EnginePublisher::pub_address) and
//! [`replay_address`](EnginePublisher::replay_address) tell the bound ones, and
//! [`subscriber_endpoint`](EnginePublisher::subscriber_endpoint) /
//! [`replay_endpoint`](EnginePublisher::replay_endpoint) give the [`EngineEndpoint`]s a
//! router uses to reach them (a wildcard bind is reached on loopback). Async: call it from
//! a tokio runtime (tests, benches).
//!
//! - [`publish`](EnginePublisher::publish)`(topic, payload)` assigns the next seq (from 0),
//!   keeps `[topic, seq, payload]` in a ring of the last `buffer_steps` messages (default
//!   10,000) and sends `[topic, seq as 8 bytes BE, payload]` on the PUB. The PUB drops
//!   while no subscriber is connected or has sent its subscription (ZeroMQ's slow joiner),
//!   and past 100,000 messages queued for a slow subscriber, like libzmq's.
//! - Replay (a task owning the ROUTER): a request `[identity, b"", start_seq]` (start BE,
//!   at most 8 bytes) is answered with every buffered message with `seq >= start_seq`,
//!   then the end marker, in [`ReplayForm::Topic`] `[identity, b"", topic, seq, payload]`
//!   ... `[identity, b"", b"", ff*8, b""]` (vLLM >= 0.34, SGLang 0.5.23; the default) or
//!   [`ReplayForm::Legacy`] `[identity, b"", seq, payload]` ... `[identity, b"", ff*8, b""]`.
//!   Other requests get no answer (counted), as from the engines.
//! - Fault injection: [`publish_dropped`](EnginePublisher::publish_dropped) (numbered and
//!   buffered, not sent: a gap for the subscriber), [`send_raw`](EnginePublisher::send_raw)
//!   (any frames, not numbered), [`restart`](EnginePublisher::restart) (a new engine
//!   process: sockets closed and bound again on the same ports, seq back to 0, buffer
//!   cleared), [`set_replay_mode`](EnginePublisher::set_replay_mode)`(Silent)` (requests
//!   unanswered), [`forget_before`](EnginePublisher::forget_before) (a rolled-over buffer).
//!
//! Publishes are serialised by the PUB socket's lock, so seqs go out in order.

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, warn};
use zeromq::{PubSocket, RouterSocket, Socket, SocketOptions, SocketRecv, SocketSend, ZmqError, ZmqMessage};

use super::endpoint::{EndpointError, EndpointMode, EngineEndpoint, ZmqAddress};
use super::replay::REPLAY_END_SEQ;
use super::{remove_stale_ipc, resolved_address, stopped};

/// Default [`EnginePublisherOptions::buffer_steps`] (vLLM's `buffer_steps`).
pub const DEFAULT_BUFFER_STEPS: usize = 10_000;

/// How long a bind is retried while its port is still held (by the sockets a restart just
/// closed).
const BIND_RETRY: Duration = Duration::from_secs(3);

/// Longest time the replay task spends answering one request (a client that stopped
/// reading is abandoned after it).
const REPLY_TIMEOUT: Duration = Duration::from_secs(10);

/// The shape of replay replies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ReplayForm {
    /// `[b"", topic, seq, payload]`, end `[b"", b"", ff*8, b""]` (vLLM >= 0.34, SGLang
    /// 0.5.23).
    #[default]
    Topic,
    /// `[b"", seq, payload]`, end `[b"", ff*8, b""]` (vLLM 0.23, SGLang 0.5.19).
    Legacy,
}

/// Whether the replay ROUTER answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ReplayMode {
    /// Answer every valid request.
    #[default]
    Answer,
    /// Receive requests and answer none (the client times out).
    Silent,
}

/// Settings of an [`EnginePublisher`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EnginePublisherOptions {
    /// Messages kept for replay (the newest). 0 keeps none.
    pub buffer_steps: usize,
    /// Shape of replay replies.
    pub replay_form: ReplayForm,
    /// Bound on connecting the PUB out ([`EnginePublisher::connect`]).
    pub connect_timeout: Duration,
}

impl Default for EnginePublisherOptions {
    fn default() -> Self {
        EnginePublisherOptions {
            buffer_steps: DEFAULT_BUFFER_STEPS,
            replay_form: ReplayForm::Topic,
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// An [`EnginePublisher`] could not start or restart.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum EnginePublisherError {
    /// An endpoint string does not parse.
    Endpoint(EndpointError),
    /// Not called inside a tokio runtime.
    NoRuntime,
    /// A socket could not be bound.
    Bind { address: String, reason: String },
    /// The PUB could not connect out.
    Connect { address: String, reason: String },
}

impl fmt::Display for EnginePublisherError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EnginePublisherError::Endpoint(error) => write!(f, "engine publisher endpoint: {error}"),
            EnginePublisherError::NoRuntime => write!(f, "the engine publisher must run inside a tokio runtime"),
            EnginePublisherError::Bind { address, reason } => write!(f, "cannot bind {address}: {reason}"),
            EnginePublisherError::Connect { address, reason } => write!(f, "cannot connect to {address}: {reason}"),
        }
    }
}

impl std::error::Error for EnginePublisherError {}

impl From<EndpointError> for EnginePublisherError {
    fn from(error: EndpointError) -> Self {
        EnginePublisherError::Endpoint(error)
    }
}

/// Counters of an [`EnginePublisher`] at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EnginePublisherStats {
    /// Messages numbered (sent or dropped on purpose), since the start (not reset by
    /// restarts).
    pub published: u64,
    /// Of those, not sent live ([`EnginePublisher::publish_dropped`]).
    pub dropped_live: u64,
    /// Sends the PUB socket refused.
    pub send_errors: u64,
    /// Valid replay requests received.
    pub replay_requests: u64,
    /// Replay requests ignored as malformed.
    pub invalid_replay_requests: u64,
    /// Messages sent in replay replies (end markers not counted).
    pub replayed_messages: u64,
}

#[derive(Default)]
struct Counters {
    published: AtomicU64,
    dropped_live: AtomicU64,
    send_errors: AtomicU64,
    replay_requests: AtomicU64,
    invalid_replay_requests: AtomicU64,
    replayed_messages: AtomicU64,
}

#[derive(Clone)]
struct Buffered {
    topic: Bytes,
    seq: u64,
    payload: Bytes,
}

struct State {
    next_seq: u64,
    buffer: VecDeque<Buffered>,
    replay_mode: ReplayMode,
}

struct Shared {
    state: Mutex<State>,
    counters: Counters,
    options: EnginePublisherOptions,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The replay task and how to stop it.
struct ReplayServer {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl ReplayServer {
    /// Stops the task; its socket is closed (the port free) when this returns.
    async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// One stand-in engine rank. See the module documentation.
pub struct EnginePublisher {
    shared: Arc<Shared>,
    /// The PUB socket; its lock also orders publishes.
    socket: tokio::sync::Mutex<PubSocket>,
    /// Bound address (bind) or the address connected to (connect).
    pub_address: ZmqAddress,
    /// `Bind`: this publisher binds its PUB; `Connect`: it connects out.
    pub_mode: EndpointMode,
    replay_address: Option<ZmqAddress>,
    replay: tokio::sync::Mutex<Option<ReplayServer>>,
}

impl EnginePublisher {
    /// Binds the PUB at `pub_endpoint` (`tcp://127.0.0.1:0`, `tcp://*:5557`, `ipc://...`)
    /// and, when given, the replay ROUTER at `replay_endpoint`.
    pub async fn bind(
        pub_endpoint: &str,
        replay_endpoint: Option<&str>,
        options: EnginePublisherOptions,
    ) -> Result<EnginePublisher, EnginePublisherError> {
        EnginePublisher::start(pub_endpoint, EndpointMode::Bind, replay_endpoint, options).await
    }

    /// Connects the PUB out to `pub_endpoint` (a router's bound SUB) and binds the replay
    /// ROUTER, when given, at `replay_endpoint`. Waits for the connection up to
    /// `options.connect_timeout` (the router must be bound first).
    pub async fn connect(
        pub_endpoint: &str,
        replay_endpoint: Option<&str>,
        options: EnginePublisherOptions,
    ) -> Result<EnginePublisher, EnginePublisherError> {
        EnginePublisher::start(pub_endpoint, EndpointMode::Connect, replay_endpoint, options).await
    }

    async fn start(
        pub_endpoint: &str,
        pub_mode: EndpointMode,
        replay_endpoint: Option<&str>,
        options: EnginePublisherOptions,
    ) -> Result<EnginePublisher, EnginePublisherError> {
        tokio::runtime::Handle::try_current().map_err(|_| EnginePublisherError::NoRuntime)?;
        let pub_address = EngineEndpoint::new(ZmqAddress::parse(pub_endpoint)?, pub_mode)?.address().clone();
        let replay_address = replay_endpoint.map(ZmqAddress::parse).transpose()?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State { next_seq: 0, buffer: VecDeque::new(), replay_mode: ReplayMode::Answer }),
            counters: Counters::default(),
            options,
        });
        let (socket, pub_address) = open_pub(&pub_address, pub_mode, &options, Duration::ZERO).await?;
        let (replay, replay_address) = match replay_address {
            Some(address) => {
                let (server, address) = start_replay(&address, &shared, Duration::ZERO).await?;
                (Some(server), Some(address))
            }
            None => (None, None),
        };
        debug!(pub_address = %pub_address, replay_address = ?replay_address.as_ref().map(ToString::to_string), "engine publisher up");
        Ok(EnginePublisher {
            shared,
            socket: tokio::sync::Mutex::new(socket),
            pub_address,
            pub_mode,
            replay_address,
            replay: tokio::sync::Mutex::new(replay),
        })
    }

    /// The PUB's address: the one bound (port resolved), or the one connected to.
    pub fn pub_address(&self) -> &ZmqAddress {
        &self.pub_address
    }

    /// The replay ROUTER's bound address, if there is one.
    pub fn replay_address(&self) -> Option<&ZmqAddress> {
        self.replay_address.as_ref()
    }

    /// The endpoint a router's subscriber uses for this PUB: connect to it (a wildcard
    /// bind is reached on loopback), or, when this publisher connects out, bind it.
    pub fn subscriber_endpoint(&self) -> EngineEndpoint {
        match self.pub_mode {
            EndpointMode::Bind => reachable(&self.pub_address),
            EndpointMode::Connect => EngineEndpoint::from_parts(self.pub_address.clone(), EndpointMode::Bind),
        }
    }

    /// The endpoint a router's replay client connects to (loopback for a wildcard bind).
    pub fn replay_endpoint(&self) -> Option<EngineEndpoint> {
        self.replay_address.as_ref().map(reachable)
    }

    /// Numbers `payload` with the next seq, buffers it for replay and sends
    /// `[topic, seq BE, payload]`. Returns the seq.
    pub async fn publish(&self, topic: impl Into<Bytes>, payload: impl Into<Bytes>) -> u64 {
        self.publish_inner(topic.into(), payload.into(), true).await
    }

    /// Numbers and buffers like [`publish`](Self::publish) but does not send: the
    /// subscriber sees a gap, which replay repairs.
    pub async fn publish_dropped(&self, topic: impl Into<Bytes>, payload: impl Into<Bytes>) -> u64 {
        self.publish_inner(topic.into(), payload.into(), false).await
    }

    async fn publish_inner(&self, topic: Bytes, payload: Bytes, live: bool) -> u64 {
        let mut socket = self.socket.lock().await;
        let seq = {
            let mut state = self.shared.state();
            let seq = state.next_seq;
            state.next_seq = seq.wrapping_add(1);
            let keep = self.shared.options.buffer_steps;
            if keep > 0 {
                if state.buffer.len() >= keep {
                    state.buffer.pop_front();
                }
                state.buffer.push_back(Buffered { topic: topic.clone(), seq, payload: payload.clone() });
            }
            seq
        };
        self.shared.counters.published.fetch_add(1, Ordering::Relaxed);
        if live {
            let frames = vec![topic, Bytes::copy_from_slice(&seq.to_be_bytes()), payload];
            self.send_frames(&mut socket, frames).await;
        } else {
            self.shared.counters.dropped_live.fetch_add(1, Ordering::Relaxed);
        }
        seq
    }

    /// Sends `frames` as one message on the PUB as they are (not numbered, not buffered):
    /// malformed or oversize messages for tests. An empty `frames` sends nothing.
    pub async fn send_raw(&self, frames: Vec<Bytes>) {
        let mut socket = self.socket.lock().await;
        self.send_frames(&mut socket, frames).await;
    }

    async fn send_frames(&self, socket: &mut PubSocket, frames: Vec<Bytes>) {
        let Ok(message) = ZmqMessage::try_from(frames) else { return };
        if let Err(error) = socket.send(message).await {
            self.shared.counters.send_errors.fetch_add(1, Ordering::Relaxed);
            warn!(address = %self.pub_address, %error, "engine publisher send failed");
        }
    }

    /// A new engine process: closes the PUB and replay sockets (subscribers see the
    /// connection drop), clears the replay buffer, sets the seq back to 0 and binds (or
    /// connects) again on the same addresses and ports.
    pub async fn restart(&self) -> Result<(), EnginePublisherError> {
        let mut socket = self.socket.lock().await;
        let mut replay = self.replay.lock().await;
        if let Some(server) = replay.take() {
            server.stop().await;
        }
        let old = std::mem::replace(&mut *socket, PubSocket::new());
        let _ = old.close().await;
        {
            let mut state = self.shared.state();
            state.next_seq = 0;
            state.buffer.clear();
        }
        let options = self.shared.options;
        let (new_socket, _) = open_pub(&self.pub_address, self.pub_mode, &options, BIND_RETRY).await?;
        *socket = new_socket;
        if let Some(address) = &self.replay_address {
            let (server, _) = start_replay(address, &self.shared, BIND_RETRY).await?;
            *replay = Some(server);
        }
        debug!(address = %self.pub_address, "engine publisher restarted");
        Ok(())
    }

    /// Answer replay requests or stay silent.
    pub fn set_replay_mode(&self, mode: ReplayMode) {
        self.shared.state().replay_mode = mode;
    }

    /// Drops buffered messages with seq below `seq`: replays then start above what they
    /// ask for, as from an engine whose buffer rolled over.
    pub fn forget_before(&self, seq: u64) {
        let mut state = self.shared.state();
        while state.buffer.front().is_some_and(|entry| entry.seq < seq) {
            state.buffer.pop_front();
        }
    }

    /// The seq the next publish gets.
    pub fn next_seq(&self) -> u64 {
        self.shared.state().next_seq
    }

    /// Lowest and highest buffered seq, if any.
    pub fn buffered_range(&self) -> Option<(u64, u64)> {
        let state = self.shared.state();
        Some((state.buffer.front()?.seq, state.buffer.back()?.seq))
    }

    /// The counters.
    pub fn stats(&self) -> EnginePublisherStats {
        let c = &self.shared.counters;
        EnginePublisherStats {
            published: c.published.load(Ordering::Relaxed),
            dropped_live: c.dropped_live.load(Ordering::Relaxed),
            send_errors: c.send_errors.load(Ordering::Relaxed),
            replay_requests: c.replay_requests.load(Ordering::Relaxed),
            invalid_replay_requests: c.invalid_replay_requests.load(Ordering::Relaxed),
            replayed_messages: c.replayed_messages.load(Ordering::Relaxed),
        }
    }

    /// Closes both sockets and waits until their ports are free.
    pub async fn shutdown(self) {
        if let Some(server) = self.replay.into_inner() {
            server.stop().await;
        }
        let _ = self.socket.into_inner().close().await;
    }
}

impl fmt::Debug for EnginePublisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnginePublisher")
            .field("pub_address", &self.pub_address)
            .field("pub_mode", &self.pub_mode)
            .field("replay_address", &self.replay_address)
            .finish_non_exhaustive()
    }
}

/// A connect endpoint for `address`, with a wildcard host replaced by loopback (a bound
/// port is never 0, so nothing else would make `connect` refuse it).
fn reachable(address: &ZmqAddress) -> EngineEndpoint {
    let address = match address {
        ZmqAddress::Tcp { host, port } if address.is_wildcard() => {
            let loopback = if host.contains(':') { "::1" } else { "127.0.0.1" };
            ZmqAddress::Tcp { host: loopback.to_string(), port: *port }
        }
        other => other.clone(),
    };
    EngineEndpoint::from_parts(address, EndpointMode::Connect)
}

/// Binds `address`, retrying for up to `retry` while it fails (a port just released).
async fn bind_with_retry<S: Socket>(
    socket: &mut S,
    address: &ZmqAddress,
    retry: Duration,
) -> Result<ZmqAddress, EnginePublisherError> {
    let deadline = Instant::now() + retry;
    loop {
        remove_stale_ipc(address);
        match socket.bind(&address.to_string()).await {
            Ok(endpoint) => return Ok(resolved_address(&endpoint, address)),
            Err(error) if Instant::now() >= deadline => {
                return Err(EnginePublisherError::Bind { address: address.to_string(), reason: error.to_string() })
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

async fn open_pub(
    address: &ZmqAddress,
    mode: EndpointMode,
    options: &EnginePublisherOptions,
    retry: Duration,
) -> Result<(PubSocket, ZmqAddress), EnginePublisherError> {
    match mode {
        EndpointMode::Bind => {
            let mut socket = PubSocket::new();
            let bound = bind_with_retry(&mut socket, address, retry).await?;
            Ok((socket, bound))
        }
        EndpointMode::Connect => {
            let mut socket_options = SocketOptions::default();
            socket_options.connect_timeout(options.connect_timeout);
            let mut socket = PubSocket::with_options(socket_options);
            socket.connect(&address.to_string()).await.map_err(|error| EnginePublisherError::Connect {
                address: address.to_string(),
                reason: error.to_string(),
            })?;
            Ok((socket, address.clone()))
        }
    }
}

async fn start_replay(
    address: &ZmqAddress,
    shared: &Arc<Shared>,
    retry: Duration,
) -> Result<(ReplayServer, ZmqAddress), EnginePublisherError> {
    let mut socket = RouterSocket::new();
    let bound = bind_with_retry(&mut socket, address, retry).await?;
    let (stop, stop_rx) = watch::channel(false);
    let task = tokio::spawn(serve_replay(socket, shared.clone(), stop_rx));
    Ok((ReplayServer { stop, task }, bound))
}

/// The replay loop: one request at a time, answered from a copy of the matching part of
/// the buffer (taken under the state lock, sent without it).
async fn serve_replay(mut socket: RouterSocket, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let form = shared.options.replay_form;
    loop {
        let request = tokio::select! {
            biased;
            _ = stopped(&mut stop) => break,
            request = socket.recv() => request,
        };
        let frames = match request {
            Ok(message) => message.into_vec(),
            Err(ZmqError::NoMessage) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
            Err(error) => {
                debug!(%error, "replay receive error");
                continue;
            }
        };
        let Some((identity, start)) = parse_request(&frames) else {
            shared.counters.invalid_replay_requests.fetch_add(1, Ordering::Relaxed);
            warn!(frames = frames.len(), "invalid replay request ignored");
            continue;
        };
        shared.counters.replay_requests.fetch_add(1, Ordering::Relaxed);
        let replies: Vec<Buffered> = {
            let state = shared.state();
            if state.replay_mode == ReplayMode::Silent {
                continue;
            }
            state.buffer.iter().filter(|entry| entry.seq >= start).cloned().collect()
        };
        let answer = async {
            for entry in replies {
                let seq = Bytes::copy_from_slice(&entry.seq.to_be_bytes());
                let frames = match form {
                    ReplayForm::Topic => vec![identity.clone(), Bytes::new(), entry.topic, seq, entry.payload],
                    ReplayForm::Legacy => vec![identity.clone(), Bytes::new(), seq, entry.payload],
                };
                send(&mut socket, frames).await?;
                shared.counters.replayed_messages.fetch_add(1, Ordering::Relaxed);
            }
            let end = Bytes::from_static(&REPLAY_END_SEQ);
            let frames = match form {
                ReplayForm::Topic => vec![identity.clone(), Bytes::new(), Bytes::new(), end, Bytes::new()],
                ReplayForm::Legacy => vec![identity.clone(), Bytes::new(), end, Bytes::new()],
            };
            send(&mut socket, frames).await
        };
        let answered = tokio::select! {
            biased;
            _ = stopped(&mut stop) => break,
            answered = tokio::time::timeout(REPLY_TIMEOUT, answer) => answered,
        };
        match answered {
            Ok(Ok(())) => debug!(start, "replay answered"),
            Ok(Err(error)) => debug!(%error, "replay answer abandoned"),
            Err(_) => debug!("replay answer abandoned: client not reading"),
        }
    }
    let _ = socket.close().await;
}

async fn send(socket: &mut RouterSocket, frames: Vec<Bytes>) -> Result<(), ZmqError> {
    let message = ZmqMessage::try_from(frames).map_err(|_| ZmqError::Other("empty message"))?;
    socket.send(message).await
}

/// `[identity, b"", start_seq]`, start big-endian in at most 8 bytes (vLLM reads any
/// length as a big-endian integer; longer than 8 bytes cannot be a u64 seq).
fn parse_request(frames: &[Bytes]) -> Option<(Bytes, u64)> {
    match frames {
        [identity, delimiter, start] if delimiter.is_empty() && start.len() <= 8 => {
            let start = start.iter().fold(0u64, |value, &byte| (value << 8) | u64::from(byte));
            Some((identity.clone(), start))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_requests() {
        let id = Bytes::from_static(b"id");
        let req = |start: &'static [u8]| vec![id.clone(), Bytes::new(), Bytes::from_static(start)];
        assert_eq!(parse_request(&req(&[0, 0, 0, 0, 0, 0, 1, 2])), Some((id.clone(), 258)));
        assert_eq!(parse_request(&req(&[])), Some((id.clone(), 0)));
        assert_eq!(parse_request(&req(&[0; 9])), None);
        assert_eq!(parse_request(&[id.clone(), Bytes::from_static(b"x"), Bytes::new()]), None);
        assert_eq!(parse_request(&[id]), None);
    }
}
