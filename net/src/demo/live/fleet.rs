//! The live demo's fleet: engine simulators on loopback and, for kvroute's run, a
//! `kvroute serve` daemon (in this process) subscribed to their KV events with each engine
//! as an upstream of its proxy.
//!
//! Engines bind their per-rank ZeroMQ ports as real ones do ([`SimFleet`]).

use std::time::{Duration, Instant};

use kvroute_core::sim::{EngineModelConfig, EngineTiming};
use kvroute_net::engine_sim::{EngineKind, EngineSimConfig, SimFleet};
use kvroute_net::serve::{RunningDaemon, ServeConfig, ServeOptions};

use super::super::{DemoArgs, DemoError};
use kvroute_net::http_client::HttpClient;

/// The live demo's settings, checked.
#[derive(Clone, Debug)]
pub struct LiveSettings {
    pub workers: u32,
    pub dp_size: u32,
    pub block_size: u32,
    pub capacity_blocks: usize,
    pub requests: usize,
    pub speedup: f64,
    pub max_output_tokens: u32,
    pub prefill_us_per_token: u64,
    pub decode_ms_per_token: u64,
}

impl LiveSettings {
    pub fn from_args(args: &DemoArgs) -> Result<LiveSettings, DemoError> {
        let settings = LiveSettings {
            workers: args.workers.unwrap_or(4),
            dp_size: args.dp_size.unwrap_or(4),
            block_size: args.block_size,
            capacity_blocks: (args.capacity_tokens / u64::from(args.block_size)) as usize,
            requests: args.requests.unwrap_or(600),
            speedup: args.speedup,
            max_output_tokens: args.max_output_tokens,
            prefill_us_per_token: args.prefill_us_per_token,
            decode_ms_per_token: args.decode_ms_per_token,
        };
        if settings.workers == 0 || settings.dp_size == 0 || settings.workers * settings.dp_size > 256 {
            return Err(DemoError::Config("--live runs 1 to 256 ranks (--workers x --dp-size)".into()));
        }
        if !(settings.speedup.is_finite() && settings.speedup > 0.0) {
            return Err(DemoError::Config("--speedup must be above 0".into()));
        }
        if settings.max_output_tokens == 0 {
            return Err(DemoError::Config("--max-output-tokens must be at least 1".into()));
        }
        Ok(settings)
    }
}

/// A running fleet.
pub struct LiveFleet {
    engines: SimFleet,
    daemon: Option<RunningDaemon>,
}

/// First ZeroMQ base port tried; each engine takes `2 x dp_size` ports from its base.
const FIRST_BASE_PORT: u32 = 21_000;

impl LiveFleet {
    /// Starts the engines and, with `router`, the daemon (waiting for its subscriptions).
    pub async fn start(settings: &LiveSettings, router: bool) -> Result<LiveFleet, DemoError> {
        let mut template = EngineSimConfig::new(EngineKind::Vllm, "127.0.0.1:0".parse().expect("address"));
        template.model = EngineModelConfig {
            dp_size: settings.dp_size,
            block_size: settings.block_size,
            capacity_blocks: settings.capacity_blocks,
            max_prompt_tokens: 1 << 20,
            timing: EngineTiming {
                prefill_overhead: Duration::from_millis(2),
                prefill_per_token: Duration::from_micros(settings.prefill_us_per_token),
                decode_per_token: Duration::from_millis(settings.decode_ms_per_token),
            },
        };
        let engines = SimFleet::start(&template, settings.workers, FIRST_BASE_PORT)
            .await
            .map_err(|e| DemoError::Config(format!("the simulated engines: {e}")))?;
        let mut fleet = LiveFleet { engines, daemon: None };
        if router {
            fleet.daemon = Some(start_daemon(settings, &fleet.engines).await?);
            fleet.wait_subscribed(settings).await?;
        }
        Ok(fleet)
    }

    /// The proxy's base URL (kvroute's run).
    pub fn proxy_url(&self) -> Option<String> {
        self.daemon.as_ref().map(|daemon| format!("http://{}", daemon.http_address))
    }

    /// Requests each rank served, worker-major.
    pub fn requests_per_rank(&self) -> Vec<u64> {
        self.engines.requests_per_rank()
    }

    /// Every engine's base URL, by worker id.
    pub fn engine_urls(&self) -> Vec<String> {
        self.engines.urls()
    }
    async fn wait_subscribed(&self, settings: &LiveSettings) -> Result<(), DemoError> {
        let Some(daemon) = &self.daemon else { return Ok(()) };
        daemon
            .wait_subscribed(settings.workers * settings.dp_size, Duration::from_secs(15))
            .await
            .map_err(DemoError::Check)
    }

    /// After kvroute's run: every rank's load in the router is back to zero.
    pub async fn check_router_idle(&self) -> Result<(), DemoError> {
        let Some(url) = self.proxy_url() else { return Ok(()) };
        let client = HttpClient::new(Duration::from_secs(2));
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let (_, body) =
                client.get(&format!("{url}/v1/workers"), Duration::from_secs(2)).await.map_err(DemoError::Check)?;
            let workers: serde_json::Value =
                serde_json::from_slice(&body).map_err(|e| DemoError::Check(e.to_string()))?;
            let active = workers["active_requests"].as_u64().unwrap_or(u64::MAX);
            if active == 0 {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(DemoError::Check(format!("{active} requests still charged to ranks after the run")));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn shutdown(self) {
        if let Some(daemon) = self.daemon {
            if let Err(error) = daemon.shutdown(Duration::from_secs(10)).await {
                eprintln!("kvroute demo: the router did not shut down cleanly: {error}");
            }
        }
        self.engines.shutdown().await;
    }
}

async fn start_daemon(settings: &LiveSettings, engines: &SimFleet) -> Result<RunningDaemon, DemoError> {
    let config_error = |e: String| DemoError::Config(format!("the router: {e}"));
    let udp = std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map_err(|e| config_error(e.to_string()))?;
    let mut options = ServeOptions::from_toml(&format!(
        "ingest_listen = \"{udp}\"\nmax_body_bytes = 67108864\n[tls]\ninsecure_loopback = true\n[router]\nblock_size = {}\n",
        settings.block_size
    ))
    .map_err(|e| config_error(e.to_string()))?;
    options.workers = engines.worker_registrations().map_err(config_error)?;
    let config = ServeConfig::resolve(options).map_err(|e| config_error(e.to_string()))?;
    RunningDaemon::start(config).await.map_err(|e| config_error(e.to_string()))
}
