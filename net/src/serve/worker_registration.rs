//! [`WorkerRegistration`]: one worker as an operator writes it — a `[[workers]]` table in
//! the config file, a `--worker key=value,...` flag, or the body of `POST /v1/workers` —
//! and its conversion to the core's [`WorkerSpec`].
//!
//! The fields are flat (`bootstrap_host`, `bootstrap_port`) so that the same names work in
//! all three places; `block_size` may be left out and defaults to the router's.
//!
//! A worker whose engine publishes its own KV events (vLLM, SGLang) names its ZeroMQ
//! `endpoint` (and optionally `replay`, `engine`, `engine_block_size`, `topic`, `bind`):
//! the router then subscribes to every DP rank ([`crate::engine_ingest`]); see
//! [`WorkerRegistration::engine_source`]. `--engine-events` is `--worker` with `endpoint`
//! required. A worker with a `url` is an upstream of the routing proxy
//! ([`WorkerRegistration::upstream`]).

use kvroute_core::route::{BootstrapEndpoint, Role, WorkerSpec};
use kvroute_core::WorkerId;

use crate::engine_ingest::{EngineKind, EngineSource};
use crate::engine_zmq::EngineEndpoint;
use crate::proxy::Upstream;

/// A worker to register: its id, the DP ranks it owns, its role and, for prefill workers,
/// where the decode side fetches the KV (SGLang's bootstrap server).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerRegistration {
    /// The worker's id (the id its KV events and certificate carry).
    pub worker_id: u64,
    /// First DP rank this worker owns (a multi-node DP server splits its ranks). Default 0.
    #[serde(default)]
    pub dp_start: u32,
    /// Number of DP ranks it owns: `dp_start..dp_start + dp_size`.
    pub dp_size: u32,
    /// DP size of the whole server (the modulus of SGLang's `room % dp_size`); default
    /// `dp_start + dp_size`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dp_world_size: Option<u32>,
    /// `prefill`, `decode` or `both` (aggregated serving). Default `both`.
    #[serde(default = "default_role")]
    pub role: Role,
    /// Host of the prefill worker's bootstrap server (required for `prefill`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootstrap_host: Option<String>,
    /// Port of the bootstrap server (omitted: sent as null, as SGLang allows).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootstrap_port: Option<u16>,
    /// Tokens per KV block; must equal the router's. Default: the router's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_size: Option<u32>,
    /// The engine's ZeroMQ KV-event PUB endpoint of the worker's first DP rank, e.g.
    /// `tcp://10.0.0.5:5557`; rank `dp_start + i` publishes on port + i, as the engines do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// The engine's replay endpoint of the first rank (likewise offset per rank), e.g.
    /// `tcp://10.0.0.5:5600`. Without it, lost batches cannot be recovered: the rank is
    /// cleared instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay: Option<String>,
    /// `vllm` or `sglang` (logs and metrics; both wire formats are read either way).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine: Option<EngineKind>,
    /// The block (page) size in the engine's events when it is not the router's: SGLang's
    /// default page size is 1. Must divide the router's block size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine_block_size: Option<u32>,
    /// Subscribe to this topic prefix only (the engines' default topic is empty).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// Bind `endpoint` instead of connecting to it (the engine connects out: its endpoint
    /// names a host, not `*`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bind: Option<bool>,
    /// The worker's HTTP server, e.g. `http://10.0.0.5:8000`: the routing proxy
    /// (`/v1/completions`, `/v1/chat/completions`) forwards the requests it routes to the
    /// worker there, the DP rank in `X-data-parallel-rank`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

fn default_role() -> Role {
    Role::Both
}

/// The syntax of `--worker`, for error messages and help.
pub const WORKER_FLAG_SYNTAX: &str = "worker_id=N,dp_size=N[,dp_start=N][,dp_world_size=N][,role=prefill|decode|both]\
[,bootstrap_host=HOST][,bootstrap_port=PORT][,block_size=N][,endpoint=tcp://HOST:PORT][,replay=tcp://HOST:PORT]\
[,engine=vllm|sglang][,engine_block_size=N][,topic=T][,bind=true|false][,url=http://HOST:PORT]";

/// The syntax of `--engine-events`.
pub const ENGINE_EVENTS_FLAG_SYNTAX: &str = "worker_id=N,endpoint=tcp://HOST:PORT[,replay=tcp://HOST:PORT][,dp_size=N]\
[,dp_start=N][,engine=vllm|sglang][,engine_block_size=N][,topic=T][,bind=true|false][,role=..]";

impl WorkerRegistration {
    /// The core registration, with `router_block_size` where none was given.
    pub fn to_spec(&self, router_block_size: u32) -> Result<WorkerSpec, String> {
        let bootstrap = match (&self.bootstrap_host, self.bootstrap_port) {
            (Some(host), port) => Some(BootstrapEndpoint { host: host.clone(), port }),
            (None, Some(_)) => return Err("bootstrap_port is set but bootstrap_host is not".to_owned()),
            (None, None) => None,
        };
        Ok(WorkerSpec {
            worker: WorkerId(self.worker_id),
            dp_start: self.dp_start,
            dp_size: self.dp_size,
            dp_world_size: self.dp_world_size,
            block_size: self.block_size.unwrap_or(router_block_size),
            role: self.role,
            bootstrap,
        })
    }

    /// The worker's engine subscription, if it names an `endpoint`; an error says what is
    /// wrong with the endpoints.
    pub fn engine_source(&self) -> Result<Option<EngineSource>, String> {
        let Some(endpoint) = &self.endpoint else {
            if self.replay.is_some() || self.topic.is_some() || self.bind.is_some() || self.engine_block_size.is_some()
            {
                return Err("replay, topic, bind and engine_block_size need an endpoint".to_owned());
            }
            return Ok(None);
        };
        let endpoint =
            if self.bind.unwrap_or(false) { EngineEndpoint::bind(endpoint) } else { EngineEndpoint::connect(endpoint) }
                .map_err(|error| format!("endpoint {endpoint}: {error}"))?;
        let replay = match &self.replay {
            Some(replay) => Some(EngineEndpoint::connect(replay).map_err(|error| format!("replay {replay}: {error}"))?),
            None => None,
        };
        if self.engine_block_size == Some(0) {
            return Err("engine_block_size must be at least 1".to_owned());
        }
        let end = self.dp_start.checked_add(self.dp_size).ok_or("dp_start + dp_size overflows")?;
        Ok(Some(EngineSource {
            worker: WorkerId(self.worker_id),
            ranks: self.dp_start..end,
            endpoint,
            replay,
            topic: self.topic.clone().unwrap_or_default(),
            engine: self.engine.unwrap_or_default(),
            page_size: self.engine_block_size,
        }))
    }

    /// The worker's upstream for the routing proxy, if it names a `url`.
    pub fn upstream(&self) -> Result<Option<Upstream>, String> {
        self.url
            .as_deref()
            .map(|url| Upstream::new(WorkerId(self.worker_id), url, self.engine.unwrap_or_default()))
            .transpose()
    }

    /// Parses the `--engine-events` flag: `--worker`'s keys, `endpoint` required,
    /// `dp_size` 1 by default.
    pub fn parse_engine_flag(text: &str) -> Result<WorkerRegistration, String> {
        let with_size = if text.split(',').any(|pair| pair.trim().starts_with("dp_size=")) {
            text.to_owned()
        } else {
            format!("{text},dp_size=1")
        };
        let registration = Self::parse_flag(&with_size)?;
        if registration.endpoint.is_none() {
            return Err(format!("endpoint is missing; expected {ENGINE_EVENTS_FLAG_SYNTAX}"));
        }
        registration.engine_source()?;
        Ok(registration)
    }

    /// Parses the `--worker` flag: comma-separated `key=value` pairs with the TOML keys.
    pub fn parse_flag(text: &str) -> Result<WorkerRegistration, String> {
        let mut worker_id = None;
        let mut dp_size = None;
        let mut registration = WorkerRegistration {
            worker_id: 0,
            dp_start: 0,
            dp_size: 0,
            dp_world_size: None,
            role: Role::Both,
            bootstrap_host: None,
            bootstrap_port: None,
            block_size: None,
            endpoint: None,
            replay: None,
            engine: None,
            engine_block_size: None,
            topic: None,
            bind: None,
            url: None,
        };
        for pair in text.split(',').map(str::trim).filter(|pair| !pair.is_empty()) {
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| format!("`{pair}` is not key=value; expected {WORKER_FLAG_SYNTAX}"))?;
            let (key, value) = (key.trim(), value.trim());
            match key {
                "worker_id" => worker_id = Some(parse_number(key, value)?),
                "dp_size" => dp_size = Some(parse_number(key, value)?),
                "dp_start" => registration.dp_start = parse_number(key, value)?,
                "dp_world_size" => registration.dp_world_size = Some(parse_number(key, value)?),
                "block_size" => registration.block_size = Some(parse_number(key, value)?),
                "bootstrap_port" => registration.bootstrap_port = Some(parse_number(key, value)?),
                "bootstrap_host" => registration.bootstrap_host = Some(value.to_owned()),
                "endpoint" => registration.endpoint = Some(value.to_owned()),
                "replay" => registration.replay = Some(value.to_owned()),
                "topic" => registration.topic = Some(value.to_owned()),
                "url" => registration.url = Some(value.to_owned()),
                "engine_block_size" => registration.engine_block_size = Some(parse_number(key, value)?),
                "bind" => registration.bind = Some(parse_number(key, value)?),
                "engine" => {
                    registration.engine = Some(match value {
                        "vllm" => EngineKind::Vllm,
                        "sglang" => EngineKind::Sglang,
                        _ => return Err(format!("engine `{value}` is not one of vllm, sglang")),
                    })
                }
                "role" => {
                    registration.role = match value {
                        "prefill" => Role::Prefill,
                        "decode" => Role::Decode,
                        "both" => Role::Both,
                        _ => return Err(format!("role `{value}` is not one of prefill, decode, both")),
                    }
                }
                _ => return Err(format!("unknown key `{key}`; expected {WORKER_FLAG_SYNTAX}")),
            }
        }
        registration.worker_id =
            worker_id.ok_or_else(|| format!("worker_id is missing; expected {WORKER_FLAG_SYNTAX}"))?;
        registration.dp_size = dp_size.ok_or_else(|| format!("dp_size is missing; expected {WORKER_FLAG_SYNTAX}"))?;
        Ok(registration)
    }
}

fn parse_number<T: std::str::FromStr>(key: &str, value: &str) -> Result<T, String>
where
    T::Err: std::fmt::Display,
{
    value.parse().map_err(|error| format!("{key}={value}: {error}"))
}
