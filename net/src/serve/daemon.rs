//! The daemon's life: [`run`] (the `kvroute serve` command) resolves the configuration,
//! installs logging and a Tokio runtime, and calls [`serve_until`] with the SIGINT/SIGTERM
//! future.
//!
//! Start: build the [`Router`], register the configured workers (and the proxy's
//! upstreams), restore the snapshot, start the QUIC ingest, bind the HTTP listener, start
//! periodic snapshots and the proxy's health probes. Shutdown (the
//! signal future resolves): `/healthz` turns 503, the HTTP server stops accepting and
//! in-flight requests get `shutdown_grace` to finish, then the ingest stops and the final
//! snapshot is written. [`serve_on`] takes an already bound listener (tests bind port 0).

use std::future::Future;
use std::sync::Arc;

use kvroute_core::engine_events::block_mapper::MapperConfig;
use kvroute_core::hashing::BlockHasher;
use kvroute_core::ingest::IngestSink;
use kvroute_core::route::Router;
use tokio::net::TcpListener;

use super::config::ServeConfig;
use super::error::ServeError;
use super::ingest::start_ingest;
use super::logging::init_logging;
use super::options::ServeArgs;
use super::state::{monotonic_clock, AppState};
use super::{expiry, fd_limit, http, http_server, snapshots};
use crate::engine_ingest::{EngineIngest, EngineIngestConfig};
use crate::proxy::Proxy;
use crate::tls::insecure::is_loopback;

/// `kvroute serve`.
pub fn run(args: &ServeArgs) -> Result<(), ServeError> {
    let config = ServeConfig::load(args)?;
    if args.print_config {
        print!("{}", config.effective.to_toml().map_err(ServeError::PrintConfig)?);
        return Ok(());
    }
    init_logging(&config.log)?;
    if let Some(path) = config.effective.http_token_file.as_deref().filter(|p| super::auth::readable_by_others(p)) {
        tracing::warn!(
            path = %path.display(),
            "the HTTP token file is readable by other users, who can then call the API: chmod 600 it"
        );
    }
    match crate::huge_pages::disable_transparent_huge_pages() {
        Ok(true) => tracing::debug!("transparent huge pages off for this process"),
        Ok(false) => {}
        Err(error) => tracing::warn!(%error, "could not turn transparent huge pages off; expect write stalls"),
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|error| ServeError::Io { action: "start the async runtime", error })?;
    runtime.block_on(serve_until(config, shutdown_signal()))
}

/// How long shutdown waits for the engine subscriptions' tasks.
const ENGINE_INGEST_SHUTDOWN: std::time::Duration = std::time::Duration::from_secs(3);

/// The engines' ZeroMQ ingest into `router`, subscribed to every configured source.
fn start_engine_ingest(config: &ServeConfig, router: Arc<Router>) -> Result<Arc<EngineIngest>, ServeError> {
    let hasher = BlockHasher::with_scheme(config.router.block_size as usize, config.router.hash_scheme)
        .map_err(|error| ServeError::EngineIngest(error.to_string()))?;
    let sink: Arc<dyn IngestSink> = router;
    let ingest = EngineIngest::new(EngineIngestConfig::new(MapperConfig::new(hasher)), sink);
    for source in &config.engine_sources {
        ingest.add(source.clone()).map_err(|error| ServeError::EngineIngest(error.to_string()))?;
    }
    Ok(ingest)
}

/// Binds `config.http_listen` and serves until `shutdown` resolves.
pub async fn serve_until(config: ServeConfig, shutdown: impl Future<Output = ()>) -> Result<(), ServeError> {
    let listener = TcpListener::bind(config.http_listen)
        .await
        .map_err(|error| ServeError::Bind { addr: config.http_listen, error })?;
    serve_on(config, listener, shutdown).await
}

/// Serves the daemon on `listener` until `shutdown` resolves, then shuts down gracefully.
pub async fn serve_on(
    config: ServeConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ServeError> {
    let router = Arc::new(Router::new(config.router.clone(), monotonic_clock())?);
    for spec in &config.workers {
        router.add_worker(spec.clone())?;
    }
    let proxy = Arc::new(Proxy::new(config.proxy).with_tokenizer(config.tokenizer.clone()));
    for upstream in &config.upstreams {
        proxy.upstreams.insert(upstream.clone());
    }
    let mut state = AppState::new(Arc::clone(&router), config.limits).with_proxy(Arc::clone(&proxy));
    let restored_cursors = snapshots::restore(&config, &router, &state.snapshots)?;
    let ingest = start_ingest(&config, Arc::clone(&router), restored_cursors).await?;
    if let Some(ingest) = &ingest {
        state = state.with_ingest_counters(Arc::clone(&ingest.counters));
    }
    let engine_ingest = start_engine_ingest(&config, Arc::clone(&router))?;
    state = state.with_engine_ingest(Arc::clone(&engine_ingest));
    let http_addr =
        listener.local_addr().map_err(|error| ServeError::Io { action: "read the listen address", error })?;
    match &config.http_token {
        Some(token) => {
            state = state.with_http_token(token.clone());
            tracing::info!("the HTTP API requires a bearer token (http_token_file), except GET /healthz");
        }
        None if !is_loopback(http_addr.ip()) => tracing::warn!(
            addr = %http_addr,
            "the HTTP API listens on a non-loopback address without authentication: set http_token_file \
             (--http-token-file) or expose it to trusted networks only"
        ),
        None => {}
    }
    let cursors: snapshots::CursorSource = match &ingest {
        Some(ingest) => Arc::clone(&ingest.cursors),
        None => Arc::new(|_| None),
    };
    let periodic_snapshots =
        snapshots::start_periodic(&config, Arc::clone(&router), Arc::clone(&cursors), Arc::clone(&state.snapshots));
    let expiry_timer = expiry::start(Arc::clone(&router));

    // Two sockets per engine rank at most (live and replay).
    let engine_sockets: u64 = config.engine_sources.iter().map(|s| 2 * s.ranks.len() as u64).sum();
    let mut http_limits = config.http_server;
    http_limits.max_connections =
        fd_limit::fit_http_connections(http_limits.max_connections, fd_limit::RESERVED_DESCRIPTORS + engine_sockets);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let probes = tokio::spawn(Arc::clone(&proxy).run_probes(stop_rx.clone()));
    let load_scrapes = proxy.config.engine_load_interval.map(|interval| {
        tokio::spawn(Arc::clone(&proxy).run_load_scrapes(Arc::clone(&router), interval, stop_rx.clone()))
    });
    let server = http_server::serve(
        listener,
        http::app(state.clone()),
        http_limits,
        Arc::clone(&state.http_connections),
        stop_rx,
    );
    let mut server = tokio::spawn(server);
    tracing::info!(
        http = %http_addr,
        ingest = %config.ingest_listen,
        workers = config.workers.len(),
        upstreams = config.upstreams.len(),
        block_size = config.router.block_size,
        "kvroute serving"
    );

    tokio::select! {
        () = shutdown => {}
        result = &mut server => {
            // The server ended on its own: an accept loop error.
            let error = match result {
                Ok(Ok(())) => std::io::Error::other("the HTTP server stopped unexpectedly"),
                Ok(Err(error)) => error,
                Err(join) => std::io::Error::other(join.to_string()),
            };
            return Err(ServeError::Io { action: "serve HTTP", error });
        }
    }

    tracing::info!(shutdown_grace = ?config.shutdown_grace, "shutting down: no new connections, draining requests");
    state.begin_shutdown();
    let _ = stop_tx.send(true);
    match tokio::time::timeout(config.shutdown_grace, &mut server).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(error))) => tracing::warn!(%error, "HTTP server error while draining"),
        Ok(Err(join)) => tracing::warn!(error = %join, "HTTP server task failed while draining"),
        Err(_) => {
            tracing::warn!("grace period over: dropping the requests still in flight");
            server.abort();
        }
    }
    if let Some(task) = periodic_snapshots {
        task.abort();
    }
    expiry_timer.abort();
    probes.abort();
    if let Some(scrapes) = load_scrapes {
        scrapes.abort();
    }
    engine_ingest.shutdown(ENGINE_INGEST_SHUTDOWN).await;
    if let Some(ingest) = ingest {
        (ingest.stop)().await;
    }
    // The stopped ingest's positions stay readable and no longer move.
    snapshots::write_final(&config, Arc::clone(&router), cursors, &state.snapshots).await?;
    tracing::info!("kvroute stopped");
    Ok(())
}

/// A daemon serving in this process (the live demo, benchmarks, tests).
pub struct RunningDaemon {
    /// Where its HTTP API and proxy listen.
    pub http_address: std::net::SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), ServeError>>,
}

impl RunningDaemon {
    /// Starts a daemon with `config` on a free loopback HTTP port.
    pub async fn start(config: ServeConfig) -> Result<RunningDaemon, ServeError> {
        let listen: std::net::SocketAddr = ([127, 0, 0, 1], 0).into();
        let listener = TcpListener::bind(listen).await.map_err(|error| ServeError::Bind { addr: listen, error })?;
        let http_address =
            listener.local_addr().map_err(|error| ServeError::Io { action: "read the listen address", error })?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(serve_on(config, listener, async move {
            let _ = stopped.await;
        }));
        Ok(RunningDaemon { http_address, stop, task })
    }

    /// Waits until the daemon's subscriptions to `ranks` engine ranks are connected (its
    /// `kvroute_engine_rank_connected` gauges), then a moment for their subscription
    /// messages to follow; an error after `limit`.
    pub async fn wait_subscribed(&self, ranks: u32, limit: std::time::Duration) -> Result<(), String> {
        let client = crate::http_client::HttpClient::new(std::time::Duration::from_secs(2));
        let url = format!("http://{}/metrics", self.http_address);
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let metrics = client
                .get(&url, std::time::Duration::from_secs(2))
                .await
                .map_or_else(|_| String::new(), |(_, body)| String::from_utf8_lossy(&body).into_owned());
            let connected: f64 = metrics
                .lines()
                .filter(|line| line.starts_with("kvroute_engine_rank_connected{"))
                .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
                .sum();
            if connected >= f64::from(ranks) {
                tokio::time::sleep(std::time::Duration::from_millis(300)).await;
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                return Err(format!("the router subscribed to {connected} of {ranks} engine ranks"));
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// Shuts it down as a signal would, waiting at most `limit`.
    pub async fn shutdown(self, limit: std::time::Duration) -> Result<(), ServeError> {
        let _ = self.stop.send(());
        match tokio::time::timeout(limit, self.task).await {
            Ok(Ok(result)) => result,
            Ok(Err(join)) => {
                Err(ServeError::Io { action: "join the daemon", error: std::io::Error::other(join.to_string()) })
            }
            Err(_) => Err(ServeError::Io { action: "shut down", error: std::io::Error::other("timed out") }),
        }
    }
}

/// Resolves at the first SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::warn!(%error, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
        tracing::info!("SIGINT received");
    };
    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut stream) => {
                stream.recv().await;
                tracing::info!("SIGTERM received");
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
}
