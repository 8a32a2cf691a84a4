//! [`AppState`]: what every HTTP handler shares — the [`Router`], the daemon's
//! [`ServeMetrics`], the API limits, the routing [`Proxy`], the shutting-down flag that `/healthz` reports, and
//! optionally the QUIC ingest's counters, the engines' ZeroMQ ingest and the bearer token
//! the API requires. Cloning it
//! clones `Arc`s.
//!
//! [`monotonic_clock`] is the router's clock in the daemon (milliseconds since start).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use kvroute_core::route::{Clock, RouteError, Router, RouterConfig};

use super::auth::BearerToken;
use super::config::ApiLimits;
use super::metrics::{IngestCounterSource, ServeMetrics};
use crate::engine_ingest::EngineIngest;
use crate::proxy::{Proxy, ProxyConfig};

/// State shared by the HTTP handlers.
#[derive(Clone)]
pub struct AppState {
    pub router: Arc<Router>,
    pub metrics: Arc<ServeMetrics>,
    pub limits: ApiLimits,
    /// The HTTP server's connection counters.
    pub http_connections: Arc<super::http_server::HttpConnectionMetrics>,
    /// The last index snapshot and the snapshot writes.
    pub snapshots: Arc<super::snapshots::SnapshotStatus>,
    /// The routing proxy (its upstreams are the workers registered with a `url`).
    pub proxy: Arc<Proxy>,
    shutting_down: Arc<AtomicBool>,
    ingest: Option<Arc<dyn IngestCounterSource>>,
    engine_ingest: Option<Arc<EngineIngest>>,
    http_token: Option<BearerToken>,
}

impl AppState {
    /// State around an existing router.
    pub fn new(router: Arc<Router>, limits: ApiLimits) -> AppState {
        AppState {
            router,
            metrics: Arc::new(ServeMetrics::default()),
            limits,
            http_connections: Arc::default(),
            snapshots: Arc::default(),
            proxy: Arc::new(Proxy::new(ProxyConfig::default())),
            shutting_down: Arc::new(AtomicBool::new(false)),
            ingest: None,
            engine_ingest: None,
            http_token: None,
        }
    }

    /// State around a new router with `config` and a [`monotonic_clock`].
    pub fn with_router_config(config: RouterConfig, limits: ApiLimits) -> Result<AppState, RouteError> {
        Ok(AppState::new(Arc::new(Router::new(config, monotonic_clock())?), limits))
    }

    /// The routing proxy with these settings (replacing the default one, upstreams and all).
    pub fn with_proxy(mut self, proxy: Arc<Proxy>) -> AppState {
        self.proxy = proxy;
        self
    }

    /// Exposes the ingest's counters on `/metrics`.
    pub fn with_ingest_counters(mut self, source: Arc<dyn IngestCounterSource>) -> AppState {
        self.ingest = Some(source);
        self
    }

    pub fn ingest_counters(&self) -> Option<&dyn IngestCounterSource> {
        self.ingest.as_deref()
    }

    /// Subscribes to the engines' ZeroMQ KV events through `ingest` (workers registered
    /// with an `endpoint`, at start or by `POST /v1/workers`), with its counters on
    /// `/metrics`.
    pub fn with_engine_ingest(mut self, ingest: Arc<EngineIngest>) -> AppState {
        self.engine_ingest = Some(ingest);
        self
    }

    pub fn engine_ingest(&self) -> Option<&Arc<EngineIngest>> {
        self.engine_ingest.as_ref()
    }

    /// Requires `Authorization: Bearer <token>` on every endpoint but `GET /healthz`
    /// (see [`super::auth`]); [`super::http::app`] reads it when it builds the app.
    pub fn with_http_token(mut self, token: BearerToken) -> AppState {
        self.http_token = Some(token);
        self
    }

    pub fn http_token(&self) -> Option<&BearerToken> {
        self.http_token.as_ref()
    }

    /// From now on `/healthz` answers 503.
    pub fn begin_shutdown(&self) {
        // Relaxed by design: a flag read by health checks, ordering nothing else.
        self.shutting_down.store(true, Ordering::Relaxed);
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Relaxed)
    }
}

/// Milliseconds since this call, from a monotonic clock.
pub fn monotonic_clock() -> Arc<dyn Clock> {
    let start = Instant::now();
    Arc::new(move || u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX))
}
