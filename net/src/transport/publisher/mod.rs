//! The publisher side: a library a worker-side process links to publish its ranks' KV
//! events to one or more routers.
//!
//! Shape: [`Publisher::start`] returns a [`PublisherHandle`]; `publish(rank, tier, data)`
//! is a plain (non-async) call for the engine's thread: it takes the rank's mutex, numbers
//! the event in the rank's [`RankPublisher`](kvroute_core::publish::RankPublisher) and
//! queues it for each live subscriber (see `hub`). Behind it, on the tokio runtime
//! `start` was called in, one link task per router (see `link`) keeps a connection up
//! and serves the rank streams the router opens, one writer task each (see
//! `subscription`): the dump or resumed deltas first, then live deltas in batches
//! ([`BatchConfig`]), heartbeats when idle.
//!
//! Modules: `config` (settings), `hub` (per-rank state and fan-out), `link` (one
//! router connection), `subscription` (one rank stream), `deltas` (frame cutting),
//! `fault` (the fault-injection test hook), `metrics`.

mod config;
mod deltas;
mod fault;
mod hub;
mod link;
mod metrics;
mod subscription;

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kvroute_core::event::KvEventData;
use kvroute_core::route::StorageTier;
use kvroute_core::RankKey;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use config::{BatchConfig, FaultInjection, PublisherConfig, RouterTarget};
use hub::RankHub;
use link::LinkState;
pub use metrics::{PublisherMetrics, PublisherMetricsSnapshot};

use super::error::{PublishError, TransportError};
use super::quic;

/// How long `shutdown` waits for the links to say goodbye.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(3);

/// How long `shutdown` lets the endpoint run after closing it, so that the close frames
/// it queued go out. Not until it is idle: a closed connection stays in the endpoint for
/// three probe timeouts of draining, and for a handshake no router ever answered (one
/// still in flight after an outage) that is about 3 s with quinn's initial RTT estimate,
/// time in which nothing more is sent. Connections that said goodbye are closed by then.
const CLOSE_FLUSH: Duration = Duration::from_millis(200);

/// State shared by the handle and the tasks.
pub(crate) struct Shared {
    pub(crate) config: PublisherConfig,
    pub(crate) incarnation: u64,
    pub(crate) hubs: HashMap<RankKey, RankHub>,
    pub(crate) metrics: PublisherMetrics,
    streams: AtomicU64,
}

impl Shared {
    /// A number per served stream (seeds the fault dice).
    pub(crate) fn next_stream_number(&self) -> u64 {
        self.streams.fetch_add(1, Ordering::Relaxed)
    }
}

/// Entry point of the publisher side: [`Publisher::start`].
pub struct Publisher;

impl Publisher {
    /// Starts publishing `config.ranks` to `config.routers`. Must be called inside a tokio
    /// runtime (the links run on it). Connections are made in the background, and re-made
    /// whenever they drop; events published meanwhile are kept in each rank's ring (or
    /// reflected in its next dump).
    pub fn start(config: PublisherConfig) -> Result<PublisherHandle, TransportError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| TransportError::NoRuntime)?;
        config.validate()?;
        let bind = config.bind.unwrap_or_else(|| match config.routers.first().map(|r| r.addr) {
            Some(SocketAddr::V6(_)) => SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)),
            _ => SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
        });
        let rank_streams = u32::try_from(config.ranks.len().saturating_mul(2).saturating_add(8)).unwrap_or(u32::MAX);
        let clients = config
            .routers
            .iter()
            .map(|target| quic::client_config(target.addr, &config.tls, &config.quic, rank_streams))
            .collect::<Result<Vec<_>, _>>()?;
        let endpoint = {
            let _guard = runtime.enter();
            quic::client_endpoint(bind)?
        };
        let hubs = config.ranks.iter().map(|&rank| (rank, RankHub::new(rank, config.rank_state))).collect();
        let shared = Arc::new(Shared {
            incarnation: config.incarnation.unwrap_or_else(random_incarnation),
            hubs,
            metrics: PublisherMetrics::default(),
            streams: AtomicU64::new(0),
            config,
        });
        let (state, state_rx) = watch::channel(LinkState::Online);
        let links = shared
            .config
            .routers
            .iter()
            .zip(clients)
            .map(|(target, client)| {
                let task = link::run(shared.clone(), target.clone(), endpoint.clone(), client, state_rx.clone());
                runtime.spawn(task)
            })
            .collect();
        Ok(PublisherHandle { inner: Arc::new(Inner { shared, state, endpoint, links: Mutex::new(links) }) })
    }
}

/// A fresh random incarnation: std's per-process random hash keys over the clock.
fn random_incarnation() -> u64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    RandomState::new().hash_one((now.as_nanos(), std::process::id()))
}

struct Inner {
    shared: Arc<Shared>,
    state: watch::Sender<LinkState>,
    endpoint: quinn::Endpoint,
    links: Mutex<Vec<JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The last handle is gone without a shutdown: stop the streams and the links.
        for hub in self.shared.hubs.values() {
            hub.close_subscribers();
        }
        self.state.send_replace(LinkState::Shutdown);
    }
}

/// A running publisher; cheap to clone. See [`Publisher::start`].
#[derive(Clone)]
pub struct PublisherHandle {
    inner: Arc<Inner>,
}

impl PublisherHandle {
    /// Publishes an event of `rank` in `tier` and returns its sequence number (the last
    /// one, when a long event is split). Never blocks on the network.
    pub fn publish(&self, rank: RankKey, tier: StorageTier, data: KvEventData) -> Result<u64, PublishError> {
        let shared = &self.inner.shared;
        let hub = shared.hubs.get(&rank).ok_or(PublishError::UnknownRank(rank))?;
        Ok(hub.publish(tier, data, &shared.metrics))
    }

    /// The incarnation announced to routers.
    pub fn incarnation(&self) -> u64 {
        self.inner.shared.incarnation
    }

    /// The ranks published.
    pub fn ranks(&self) -> &[RankKey] {
        &self.inner.shared.config.ranks
    }

    /// Sequence number of the rank's last event (0 before the first); `None` for a rank
    /// not published here.
    pub fn last_seq(&self, rank: RankKey) -> Option<u64> {
        self.inner.shared.hubs.get(&rank).map(RankHub::last_seq)
    }

    pub fn metrics(&self) -> PublisherMetricsSnapshot {
        self.inner.shared.metrics.snapshot()
    }

    /// Orderly stop: every rank stream and every connection says `Goodbye`, then the
    /// connections close. Routers keep the ranks for their grace period.
    pub async fn shutdown(&self) {
        for hub in self.inner.shared.hubs.values() {
            hub.close_subscribers();
        }
        self.inner.state.send_replace(LinkState::Shutdown);
        let links: Vec<JoinHandle<()>> = std::mem::take(&mut *self.lock_links());
        let _ = tokio::time::timeout(SHUTDOWN_TIMEOUT, async {
            for link in links {
                let _ = link.await;
            }
        })
        .await;
        self.inner.endpoint.close(0u32.into(), b"shutdown");
        let _ = tokio::time::timeout(CLOSE_FLUSH, self.inner.endpoint.wait_idle()).await;
    }

    /// Test hook: stops everything at once, as a crash would (no goodbye; the endpoint is
    /// closed so that the router notices promptly).
    #[doc(hidden)]
    pub fn kill(&self) {
        for link in self.lock_links().drain(..) {
            link.abort();
        }
        self.inner.state.send_replace(LinkState::Shutdown);
        self.inner.endpoint.close(0u32.into(), b"killed");
    }

    /// Test hook: `true` drops every router connection and keeps them down until called
    /// with `false`.
    #[doc(hidden)]
    pub fn set_offline(&self, offline: bool) {
        self.inner.state.send_replace(if offline { LinkState::Offline } else { LinkState::Online });
    }

    fn lock_links(&self) -> std::sync::MutexGuard<'_, Vec<JoinHandle<()>>> {
        self.inner.links.lock().unwrap_or_else(|e| e.into_inner())
    }
}
