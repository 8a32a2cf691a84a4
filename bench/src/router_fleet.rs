//! Routers in front of a simulated fleet ([`SimFleet`]), for the benches that compare
//! them: kvroute's proxy (a `kvroute serve` daemon in this process, subscribed to every
//! rank's KV events) and the peers' routers as child processes from their PyPI packages
//! (`pip install vllm-router==0.1.17 smg==1.13.0`):
//! - `vllm-router --policy kv_aware`, fed every rank's KV events and replay sockets
//!   (`--kv-event-source URL=ENDPOINT,...` per engine, one endpoint per rank);
//! - `smg launch --policy cache_aware --dp-aware` (engines of the SGLang kind, whose
//!   `/get_server_info` gives it `dp_size`).
//!
//! Both peers are started with API key `x` ([`PEER_API_KEY`]) and their Prometheus
//! exporter on a free port; a peer is killed when its [`PeerRouter`] is dropped.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kvroute_net::engine_sim::SimFleet;
use kvroute_net::engine_zmq::EngineEndpoint;
use kvroute_net::http_client::HttpClient;
use kvroute_net::serve::{RunningDaemon, ServeConfig, ServeOptions};

/// The bearer token the peers are started with.
pub const PEER_API_KEY: &str = "x";

/// A peer's router.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerKind {
    VllmRouter,
    Smg,
}

/// Where the peers' executables are (`--vllm-router PATH`, `--smg PATH`): each peer is
/// measured when given.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct PeerExecutables {
    /// The vllm-router executable (measured when given).
    #[arg(long)]
    pub vllm_router: Option<std::path::PathBuf>,
    /// The smg executable (measured when given).
    #[arg(long)]
    pub smg: Option<std::path::PathBuf>,
}

impl PeerExecutables {
    /// Starts peer `kind` in front of `fleet`; an error when its executable was not given.
    pub async fn start(&self, kind: PeerKind, fleet: &SimFleet, dp_size: u32) -> Result<PeerRouter, String> {
        let exe = match kind {
            PeerKind::VllmRouter => self.vllm_router.as_deref().ok_or("no --vllm-router given")?,
            PeerKind::Smg => self.smg.as_deref().ok_or("no --smg given")?,
        };
        start_peer(kind, exe, fleet, dp_size).await
    }
}

/// A peer router running as a child process, killed when dropped.
pub struct PeerRouter {
    child: Child,
    pub url: String,
}

impl Drop for PeerRouter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free loopback TCP port (0 if none could be had).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map_or(0, |a| a.port())
}

/// `tcp://127.0.0.1:{port + r}` for every rank `r` of an engine whose rank 0 is `endpoint`.
fn rank_endpoints(endpoint: &EngineEndpoint, dp_size: u32) -> String {
    let port = u32::from(endpoint.address().port().unwrap_or(0));
    (0..dp_size).map(|r| format!("tcp://127.0.0.1:{}", port + r)).collect::<Vec<_>>().join(",")
}

/// Starts `kind` (the executable `exe`) in front of `fleet` and waits until it is ready.
pub async fn start_peer(kind: PeerKind, exe: &Path, fleet: &SimFleet, dp_size: u32) -> Result<PeerRouter, String> {
    let port = free_port();
    let mut command = Command::new(exe);
    match kind {
        PeerKind::Smg => {
            command.args(["launch", "--policy", "cache_aware", "--dp-aware"]);
        }
        PeerKind::VllmRouter => {
            command.args([
                "--policy",
                "kv_aware",
                "--intra-node-data-parallel-size",
                &dp_size.to_string(),
                "--kv-event-model",
                "kvroute-sim",
            ]);
            for engine in fleet.engines() {
                let url = format!("http://{}", engine.http_address());
                if let Some(events) = engine.subscriber_endpoint(0) {
                    command.args(["--kv-event-source", &format!("{url}={}", rank_endpoints(&events, dp_size))]);
                }
                if let Some(replay) = engine.replay_endpoint(0) {
                    command.args(["--kv-event-replay-source", &format!("{url}={}", rank_endpoints(&replay, dp_size))]);
                }
            }
        }
    }
    command.args([
        "--port",
        &port.to_string(),
        "--api-key",
        PEER_API_KEY,
        "--prometheus-port",
        &free_port().to_string(),
    ]);
    command.arg("--worker-urls").args(fleet.urls());
    command.stdout(Stdio::null()).stderr(Stdio::null());
    let child = command.spawn().map_err(|e| format!("cannot start {}: {e}", exe.display()))?;
    let peer = PeerRouter { child, url: format!("http://127.0.0.1:{port}") };
    wait_ready(&peer.url).await?;
    Ok(peer)
}

/// Waits until a peer router answers `/health` (its workers discovered), then a moment.
async fn wait_ready(base: &str) -> Result<(), String> {
    let client = HttpClient::new(Duration::from_secs(2));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok((status, _)) = client.get(&format!("{base}/health"), Duration::from_secs(2)).await {
            if status.is_success() {
                tokio::time::sleep(Duration::from_secs(3)).await;
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            return Err("the peer router did not come up within 60 s".to_owned());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A `kvroute serve` daemon with every engine of `fleet` as a worker (events and proxy
/// upstream), `extra` TOML lines added; returns once it is subscribed to every rank.
pub async fn start_kvroute(fleet: &SimFleet, extra: &str) -> Result<RunningDaemon, String> {
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").and_then(|s| s.local_addr()).map_err(|e| e.to_string())?;
    let mut options = ServeOptions::from_toml(&format!(
        "ingest_listen = \"{udp}\"\nmax_body_bytes = 67108864\nlog_filter = \"warn\"\n{extra}\n[tls]\ninsecure_loopback = true\n"
    ))
    .map_err(|e| e.to_string())?;
    options.workers = fleet.worker_registrations()?;
    let ranks: u32 = fleet.engines().iter().map(|engine| engine.dp_size()).sum();
    let config = ServeConfig::resolve(options).map_err(|e| e.to_string())?;
    let daemon = RunningDaemon::start(config).await.map_err(|e| e.to_string())?;
    daemon.wait_subscribed(ranks, Duration::from_secs(20)).await?;
    Ok(daemon)
}

/// The `p` quantile of `values` (nearest rank; 0 for none), as the router benches report
/// their latencies.
pub fn quantile(values: &[u64], p: f64) -> u64 {
    if values.is_empty() {
        return 0;
    }
    let mut sorted = values.to_vec();
    sorted.sort_unstable();
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}
