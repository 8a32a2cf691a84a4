//! The live half of one engine rank's KV-event stream: a SUB socket on a tokio task,
//! forwarding raw multipart messages to one consumer.
//!
//! Shape: [`spawn_subscriber`]`(`[`SubscriberConfig`]`)` -> [`SubscriberHandle`]. The
//! handle yields [`SubscriberEvent`]s from a bounded channel (`channel_capacity`, default
//! 1024 items): `Connected` whenever a connection to the publisher is (re)established,
//! `Message(frames)` for each message (`[topic, seq, payload]` from vLLM and SGLang,
//! handed over as received), `Disconnected` when one is lost. Messages published while no
//! connection was up, or before the publisher processed our subscription, are gone: after
//! `Connected` the consumer checks the next seq and replays the gap
//! ([`request_replay`](super::request_replay)).
//!
//! The task (one per rank):
//! - connect mode ([`EndpointMode::Connect`], the engine binds): a fresh SUB socket per
//!   connection; connect (each attempt bounded by `connect_timeout`), subscribe to the
//!   `topic` prefix (default empty: everything), then receive until the connection is lost
//!   or a socket error; then drop the socket and reconnect after `backoff` (exponential,
//!   back to `initial` after a connection), forever until shutdown.
//! - bind mode ([`EndpointMode::Bind`], the engine connects): bind once (retried with
//!   `backoff` while it fails, e.g. the port is in use) and receive from every engine that
//!   connects; `Connected` / `Disconnected` per engine connection.
//! - Backpressure: the task awaits channel capacity before it reads the next message, so a
//!   slow consumer stops the reading, TCP fills, and the engine's PUB drops at its
//!   high-water mark (a seq gap for the consumer, repaired by replay). Nothing here buffers
//!   more than the channel.
//! - A message over `max_message_bytes` (default 16 MiB, frames summed) or with more than
//!   `max_frames` frames (default 16) is dropped and counted (`oversize_dropped`), never
//!   forwarded. (The zeromq crate has received it whole by then; see the module notes.)
//! - Counters in [`SubscriberMetrics`] (relaxed atomics): messages and bytes forwarded,
//!   oversize dropped, connections, reconnects, socket errors, and the `connected` gauge.
//! - [`SubscriberHandle::shutdown`] (or dropping the handle) stops the task at its next
//!   await, which is at most one channel send or socket receive away: every await selects
//!   on the stop signal. A consumer that drops its receiver also stops the task.

use std::collections::HashSet;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};
use zeromq::util::PeerIdentity;
use zeromq::{Socket, SocketEvent, SocketOptions, SocketRecv, SubSocket, ZmqError};

use super::endpoint::{EndpointMode, EngineEndpoint, ZmqAddress};
use super::{frames_len, remove_stale_ipc, resolved_address, stopped};
use crate::transport::Backoff;

/// Default [`SubscriberConfig::channel_capacity`].
pub const DEFAULT_CHANNEL_CAPACITY: usize = 1024;
/// Default [`SubscriberConfig::max_message_bytes`]: 16 MiB.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 16 << 20;
/// Default [`SubscriberConfig::max_frames`].
pub const DEFAULT_MAX_FRAMES: usize = 16;

/// Settings of one rank's subscriber. `SubscriberConfig::new(endpoint)` gives the defaults.
#[derive(Clone, Debug)]
pub struct SubscriberConfig {
    /// The engine rank's PUB endpoint, and whether to connect to it or bind it.
    pub endpoint: EngineEndpoint,
    /// Subscription prefix matched against the first frame (the topic). Empty: everything.
    pub topic: String,
    /// Capacity of the channel to the consumer, in events (at least 1).
    pub channel_capacity: usize,
    /// Largest message forwarded, frames summed; larger ones are dropped and counted.
    pub max_message_bytes: usize,
    /// Most frames in a message forwarded; messages with more are dropped and counted.
    pub max_frames: usize,
    /// Pause before reconnecting (or rebinding) after a failure or a lost connection.
    pub backoff: Backoff,
    /// Bound on one connection attempt (TCP connect, retried by the crate while refused,
    /// and the ZMTP handshake).
    pub connect_timeout: Duration,
    /// Label for logs (e.g. `worker-3/rank-1`).
    pub name: String,
}

impl SubscriberConfig {
    /// The defaults: topic empty, 1024 events, 16 MiB, 16 frames, backoff 100 ms doubling
    /// up to 5 s, connect timeout 5 s, named after the endpoint.
    pub fn new(endpoint: EngineEndpoint) -> SubscriberConfig {
        SubscriberConfig {
            name: endpoint.to_string(),
            endpoint,
            topic: String::new(),
            channel_capacity: DEFAULT_CHANNEL_CAPACITY,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            max_frames: DEFAULT_MAX_FRAMES,
            backoff: Backoff { initial: Duration::from_millis(100), max: Duration::from_secs(5) },
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// What the subscriber hands its consumer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SubscriberEvent {
    /// A connection to a publisher is up: ours (connect mode) or an engine's (bind mode).
    /// Messages before it may have been missed: check the next seq, resync by replay.
    Connected,
    /// One message's frames, as received (`[topic, seq, payload]` from the engines).
    Message(Vec<Bytes>),
    /// A connection was lost (connect mode: the subscriber reconnects after its backoff).
    Disconnected,
}

/// A subscriber could not be started.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SubscriberError {
    /// [`spawn_subscriber`] was called outside a tokio runtime.
    NoRuntime,
    /// A setting is out of range; the message says which.
    InvalidConfig(String),
}

impl fmt::Display for SubscriberError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SubscriberError::NoRuntime => write!(f, "the subscriber must be spawned inside a tokio runtime"),
            SubscriberError::InvalidConfig(reason) => write!(f, "invalid subscriber configuration: {reason}"),
        }
    }
}

impl std::error::Error for SubscriberError {}

macro_rules! subscriber_metrics {
    ($($(#[doc = $doc:literal])* $name:ident),* $(,)?) => {
        /// Counters of one subscriber (relaxed atomics). Read them with
        /// [`snapshot`](Self::snapshot).
        #[derive(Debug, Default)]
        pub struct SubscriberMetrics {
            $($(#[doc = $doc])* pub $name: AtomicU64,)*
        }

        /// A copy of [`SubscriberMetrics`] at one moment (each counter read separately).
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        pub struct SubscriberMetricsSnapshot {
            $($(#[doc = $doc])* pub $name: u64,)*
        }

        impl SubscriberMetrics {
            /// Reads every counter.
            pub fn snapshot(&self) -> SubscriberMetricsSnapshot {
                SubscriberMetricsSnapshot { $($name: self.$name.load(Ordering::Relaxed),)* }
            }
        }

        impl SubscriberMetricsSnapshot {
            /// Every counter with its name, in declaration order.
            pub fn fields(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($name), self.$name),)*]
            }
        }
    };
}

subscriber_metrics! {
    /// Messages forwarded to the consumer.
    messages,
    /// Bytes of those messages (frames summed).
    bytes,
    /// Messages dropped for exceeding `max_message_bytes` or `max_frames`.
    oversize_dropped,
    /// Connections established (connect mode) or accepted (bind mode).
    connections,
    /// Connections established after the first one.
    reconnects,
    /// Socket errors: failed connects or binds, receive errors, failed accepts.
    socket_errors,
    /// Gauge: connections up now (connect mode 0 or 1; bind mode engines connected).
    connected,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// The running subscriber: events, counters, shutdown. Dropping it stops the task too.
pub struct SubscriberHandle {
    events: Option<mpsc::Receiver<SubscriberEvent>>,
    metrics: Arc<SubscriberMetrics>,
    bound: Arc<Mutex<Option<ZmqAddress>>>,
    endpoint: EngineEndpoint,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl SubscriberHandle {
    /// The next event; `None` once the task has stopped (or the receiver was taken).
    pub async fn recv(&mut self) -> Option<SubscriberEvent> {
        match self.events.as_mut() {
            Some(events) => events.recv().await,
            None => None,
        }
    }

    /// Waits for the next event, then moves it and every other one queued (up to `limit`
    /// in all) to the end of `events`; returns how many, 0 once the task has stopped.
    pub async fn recv_many(&mut self, events: &mut Vec<SubscriberEvent>, limit: usize) -> usize {
        match self.events.as_mut() {
            Some(receiver) => receiver.recv_many(events, limit).await,
            None => 0,
        }
    }

    /// The next event if one is queued.
    pub fn try_recv(&mut self) -> Option<SubscriberEvent> {
        self.events.as_mut().and_then(|events| events.try_recv().ok())
    }

    /// Takes the event receiver (to hand it to another task); [`recv`](Self::recv) then
    /// returns `None`. The subscriber keeps running until shutdown or until the receiver
    /// is dropped.
    pub fn take_events(&mut self) -> Option<mpsc::Receiver<SubscriberEvent>> {
        self.events.take()
    }

    /// The counters.
    pub fn metrics(&self) -> &Arc<SubscriberMetrics> {
        &self.metrics
    }

    /// The endpoint this subscriber serves.
    pub fn endpoint(&self) -> &EngineEndpoint {
        &self.endpoint
    }

    /// Bind mode: the address actually bound (the port of a port-0 bind), once bound;
    /// `None` before that and in connect mode.
    pub fn bound_address(&self) -> Option<ZmqAddress> {
        self.bound.lock().map(|bound| bound.clone()).unwrap_or(None)
    }

    /// Stops the task and waits for it (its socket is closed when this returns).
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        if let Some(task) = self.task.take() {
            if let Err(error) = task.await {
                if error.is_panic() {
                    warn!(name = %self.endpoint, "subscriber task panicked");
                }
            }
        }
    }
}

impl Drop for SubscriberHandle {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
    }
}

impl fmt::Debug for SubscriberHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SubscriberHandle").field("endpoint", &self.endpoint).finish_non_exhaustive()
    }
}

/// Starts the subscriber task for one rank on the current tokio runtime.
pub fn spawn_subscriber(config: SubscriberConfig) -> Result<SubscriberHandle, SubscriberError> {
    let runtime = tokio::runtime::Handle::try_current().map_err(|_| SubscriberError::NoRuntime)?;
    if config.max_frames == 0 {
        return Err(SubscriberError::InvalidConfig("max_frames must be at least 1".into()));
    }
    if config.connect_timeout.is_zero() {
        return Err(SubscriberError::InvalidConfig("connect_timeout must be positive".into()));
    }
    let (tx, rx) = mpsc::channel(config.channel_capacity.max(1));
    let (stop, stop_rx) = watch::channel(false);
    let metrics = Arc::new(SubscriberMetrics::default());
    let bound = Arc::new(Mutex::new(None));
    let endpoint = config.endpoint.clone();
    let task = Task { config, tx, stop: stop_rx, metrics: metrics.clone(), bound: bound.clone() };
    let task = runtime.spawn(task.run());
    Ok(SubscriberHandle { events: Some(rx), metrics, bound, endpoint, stop, task: Some(task) })
}

/// The task ends: shutdown asked for, or the consumer went away.
struct Stop;

/// How a connect-mode connection ended.
enum SessionEnd {
    Lost,
    Error(ZmqError),
}

struct Task {
    config: SubscriberConfig,
    tx: mpsc::Sender<SubscriberEvent>,
    stop: watch::Receiver<bool>,
    metrics: Arc<SubscriberMetrics>,
    bound: Arc<Mutex<Option<ZmqAddress>>>,
}

impl Task {
    async fn run(mut self) {
        let result = match self.config.endpoint.mode() {
            EndpointMode::Connect => self.run_connect().await,
            EndpointMode::Bind => self.run_bind().await,
        };
        let Err(Stop) = result;
        self.metrics.connected.store(0, Ordering::Relaxed);
        debug!(name = %self.config.name, "subscriber stopped");
    }

    fn new_socket(&self) -> SubSocket {
        let mut options = SocketOptions::default();
        options.connect_timeout(self.config.connect_timeout);
        SubSocket::with_options(options)
    }

    /// Connect mode: one socket per connection, reconnect after `backoff` forever.
    async fn run_connect(&mut self) -> Result<std::convert::Infallible, Stop> {
        let address = self.config.endpoint.address().to_string();
        let mut delay = self.config.backoff.initial;
        loop {
            let mut socket = self.new_socket();
            let mut monitor = socket.monitor();
            // Remembered by the socket and sent on the connection's handshake.
            let subscribed = until_stop(&mut self.stop, socket.subscribe(&self.config.topic)).await?;
            let connected = match subscribed {
                Ok(()) => until_stop(&mut self.stop, socket.connect(&address)).await?,
                Err(error) => Err(error),
            };
            if let Err(error) = connected {
                bump(&self.metrics.socket_errors);
                warn!(name = %self.config.name, %address, %error, retry_in = ?delay, "cannot connect to engine PUB");
                drop(socket);
                self.sleep(delay).await?;
                delay = self.config.backoff.next(delay);
                continue;
            }
            self.connection_up();
            info!(name = %self.config.name, %address, "connected to engine PUB");
            self.send(SubscriberEvent::Connected).await?;
            delay = self.config.backoff.initial;

            let end = loop {
                tokio::select! {
                    biased;
                    _ = stopped(&mut self.stop) => return Err(Stop),
                    event = monitor.next() => match event {
                        Some(SocketEvent::Disconnected(_)) | None => break SessionEnd::Lost,
                        Some(_) => {}
                    },
                    message = socket.recv() => match message {
                        Ok(message) => self.forward(message.into_vec()).await?,
                        Err(error) => break SessionEnd::Error(error),
                    },
                }
            };
            drop(socket);
            self.metrics.connected.store(0, Ordering::Relaxed);
            match end {
                SessionEnd::Lost => {
                    info!(name = %self.config.name, %address, retry_in = ?delay, "engine PUB connection lost")
                }
                SessionEnd::Error(error) => {
                    bump(&self.metrics.socket_errors);
                    warn!(name = %self.config.name, %address, %error, retry_in = ?delay, "engine PUB socket error");
                }
            }
            self.send(SubscriberEvent::Disconnected).await?;
            self.sleep(delay).await?;
        }
    }

    /// Bind mode: bind (retried), then receive from every engine that connects.
    async fn run_bind(&mut self) -> Result<std::convert::Infallible, Stop> {
        let address = self.config.endpoint.address().clone();
        let mut delay = self.config.backoff.initial;
        loop {
            let mut socket = self.new_socket();
            let mut monitor = socket.monitor();
            let subscribed = until_stop(&mut self.stop, socket.subscribe(&self.config.topic)).await?;
            remove_stale_ipc(&address);
            let bound = match subscribed {
                Ok(()) => until_stop(&mut self.stop, socket.bind(&address.to_string())).await?,
                Err(error) => Err(error),
            };
            let bound = match bound {
                Ok(endpoint) => resolved_address(&endpoint, &address),
                Err(error) => {
                    bump(&self.metrics.socket_errors);
                    warn!(name = %self.config.name, %address, %error, retry_in = ?delay, "cannot bind SUB");
                    drop(socket);
                    self.sleep(delay).await?;
                    delay = self.config.backoff.next(delay);
                    continue;
                }
            };
            info!(name = %self.config.name, address = %bound, "SUB bound, waiting for engines");
            if let Ok(mut slot) = self.bound.lock() {
                *slot = Some(bound);
            }
            delay = self.config.backoff.initial;

            let mut peers: HashSet<PeerIdentity> = HashSet::new();
            loop {
                tokio::select! {
                    biased;
                    _ = stopped(&mut self.stop) => return Err(Stop),
                    event = monitor.next() => match event {
                        Some(SocketEvent::Accepted(from, peer)) => {
                            if peers.insert(peer) {
                                self.connection_up();
                                self.metrics.connected.store(peers.len() as u64, Ordering::Relaxed);
                                info!(name = %self.config.name, %from, "engine connected");
                                self.send(SubscriberEvent::Connected).await?;
                            }
                        }
                        Some(SocketEvent::Disconnected(peer)) => {
                            if peers.remove(&peer) {
                                self.metrics.connected.store(peers.len() as u64, Ordering::Relaxed);
                                info!(name = %self.config.name, "engine disconnected");
                                self.send(SubscriberEvent::Disconnected).await?;
                            }
                        }
                        Some(SocketEvent::AcceptFailed(error)) => {
                            bump(&self.metrics.socket_errors);
                            debug!(name = %self.config.name, %error, "engine connection failed its handshake");
                        }
                        Some(_) => {}
                        None => break,
                    },
                    message = socket.recv() => match message {
                        Ok(message) => self.forward(message.into_vec()).await?,
                        // The crate has dropped that engine's connection; others go on.
                        Err(ZmqError::NoMessage) => break,
                        Err(error) => {
                            bump(&self.metrics.socket_errors);
                            warn!(name = %self.config.name, %error, "receive error on an engine connection");
                        }
                    },
                }
            }
            // Not expected: the socket lost its monitor or its receive queue. Start over.
            warn!(name = %self.config.name, retry_in = ?delay, "SUB socket stopped delivering; rebinding");
            drop(socket);
            if let Ok(mut slot) = self.bound.lock() {
                *slot = None;
            }
            self.metrics.connected.store(0, Ordering::Relaxed);
            if !peers.is_empty() {
                self.send(SubscriberEvent::Disconnected).await?;
            }
            self.sleep(delay).await?;
            delay = self.config.backoff.next(delay);
        }
    }

    fn connection_up(&self) {
        if self.metrics.connections.fetch_add(1, Ordering::Relaxed) > 0 {
            bump(&self.metrics.reconnects);
        }
        self.metrics.connected.store(1, Ordering::Relaxed);
    }

    /// Checks a message's bounds and forwards it, awaiting channel capacity.
    async fn forward(&mut self, frames: Vec<Bytes>) -> Result<(), Stop> {
        let bytes = frames_len(&frames);
        if bytes > self.config.max_message_bytes || frames.len() > self.config.max_frames {
            let dropped = self.metrics.oversize_dropped.fetch_add(1, Ordering::Relaxed) + 1;
            // Logged at 1, 2, 4, 8, ... drops: a flood of them cannot flood the log.
            if dropped.is_power_of_two() {
                warn!(
                    name = %self.config.name,
                    bytes,
                    frames = frames.len(),
                    max_bytes = self.config.max_message_bytes,
                    max_frames = self.config.max_frames,
                    dropped,
                    "oversize message dropped"
                );
            }
            return Ok(());
        }
        self.send(SubscriberEvent::Message(frames)).await?;
        bump(&self.metrics.messages);
        self.metrics.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Sends one event, awaiting capacity; `Stop` on shutdown or when the consumer is gone.
    async fn send(&mut self, event: SubscriberEvent) -> Result<(), Stop> {
        tokio::select! {
            biased;
            _ = stopped(&mut self.stop) => Err(Stop),
            sent = self.tx.send(event) => sent.map_err(|_| {
                debug!(name = %self.config.name, "consumer dropped its receiver");
                Stop
            }),
        }
    }

    async fn sleep(&mut self, delay: Duration) -> Result<(), Stop> {
        tokio::select! {
            biased;
            _ = stopped(&mut self.stop) => Err(Stop),
            _ = tokio::time::sleep(delay) => Ok(()),
        }
    }
}

/// Runs `future` unless shutdown comes first.
async fn until_stop<T>(
    stop: &mut watch::Receiver<bool>,
    future: impl std::future::Future<Output = T>,
) -> Result<T, Stop> {
    tokio::select! {
        biased;
        _ = stopped(stop) => Err(Stop),
        value = future => Ok(value),
    }
}
