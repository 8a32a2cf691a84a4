//! [`ServeConfig`]: the daemon's checked, typed settings, resolved from [`ServeArgs`]
//! (config file, then flags, then defaults), and [`ConfigError`], which names the field at
//! fault.
//!
//! Resolution reads the file, layers the flags over it, fills defaults, then checks every
//! value: ranges, TLS mode (insecure mode only on a loopback ingest address), that the TLS
//! files exist, the HTTP bearer token (read here, once, from `http_token_file`), that the
//! log filter parses, and that the `[[workers]]` register cleanly (on a scratch router, so
//! a duplicate id or a prefill worker without a bootstrap host is a config error, not a
//! start-up failure later).

use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use kvroute_core::hashing::HashScheme;
use kvroute_core::index::MAX_SHARDS;
use kvroute_core::route::{CostWeights, Policy, Router, RouterConfig, WorkerSpec};

use super::auth::BearerToken;
use super::duration::HumanDuration;
use super::options::{
    HashSchemeName, LogFormat, PolicyName, RouterOptions, ServeArgs, ServeOptions, DEFAULT_MAX_PUBLISHER_CONNECTIONS,
    DEFAULT_MAX_PUBLISHER_HANDSHAKES,
};
use crate::engine_ingest::EngineSource;
use crate::proxy::{HealthPolicy, ProxyConfig, Upstream};
use crate::tls::insecure::is_loopback;
use crate::tls::TlsFiles;
use crate::tokenization::{PromptTokenizer, TokenizerSource};
pub use crate::transport::TlsMode;

/// Rooms seeds and other TOML integers must fit an `i64`; room seeds are below 2^62.
const ROOM_SEED_LIMIT: u64 = 1 << 62;
/// Smallest accepted `max_frame_len`.
const MIN_FRAME_LEN: u32 = 1024;
/// Smallest accepted `max_body_bytes`.
const MIN_BODY_BYTES: u64 = 1024;

/// A configuration that cannot be used; `kvroute serve` exits with code 2 on it.
#[derive(Debug)]
pub enum ConfigError {
    /// The config file could not be read.
    Read { path: PathBuf, error: std::io::Error },
    /// The config file is not valid TOML for the schema (the message has the line, column
    /// and key; unknown keys are reported here).
    Parse { path: PathBuf, message: String },
    /// A value is out of range or inconsistent with another.
    Invalid { field: String, reason: String },
}

impl ConfigError {
    fn invalid(field: impl Into<String>, reason: impl Into<String>) -> ConfigError {
        ConfigError::Invalid { field: field.into(), reason: reason.into() }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Read { path, error } => write!(f, "cannot read config file {}: {error}", path.display()),
            ConfigError::Parse { path, message } => {
                write!(f, "config file {}: {}", path.display(), message.trim_end())
            }
            ConfigError::Invalid { field, reason } => write!(f, "invalid configuration: {field}: {reason}"),
        }
    }
}

impl std::error::Error for ConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ConfigError::Read { error, .. } => Some(error),
            _ => None,
        }
    }
}

/// Limits on what the HTTP API accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ApiLimits {
    /// Largest request body, in bytes.
    pub max_body_bytes: usize,
    /// Longest prompt, in tokens.
    pub max_prompt_tokens: usize,
    /// Largest `output_tokens` of a route.
    pub max_output_tokens: u32,
    /// Longest time from a request's head to its answer (body upload included).
    pub request_timeout: Duration,
}

impl Default for ApiLimits {
    fn default() -> Self {
        ApiLimits {
            max_body_bytes: super::options::DEFAULT_MAX_BODY_BYTES as usize,
            max_prompt_tokens: super::options::DEFAULT_MAX_PROMPT_TOKENS as usize,
            max_output_tokens: super::options::DEFAULT_MAX_OUTPUT_TOKENS as u32,
            request_timeout: super::options::DEFAULT_REQUEST_TIMEOUT,
        }
    }
}

/// Where and how often the index snapshot is written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotSettings {
    pub path: PathBuf,
    pub interval: Duration,
}

/// Logging settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogSettings {
    pub format: LogFormat,
    /// An env-filter directive; `None`: `$RUST_LOG`, else `info`.
    pub filter: Option<String>,
}

/// The daemon's settings, checked.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    pub http_listen: SocketAddr,
    /// The token the HTTP API requires (read from `http_token_file`); `None`: open API.
    pub http_token: Option<BearerToken>,
    pub ingest_listen: SocketAddr,
    /// How the QUIC ingest authenticates publishers.
    pub tls: TlsMode,
    /// Longest accepted KV event frame, in bytes.
    pub max_frame_len: u32,
    /// How long in-flight HTTP requests may run after a shutdown signal.
    pub shutdown_grace: Duration,
    /// How long a disconnected publisher's ranks stay before removal.
    pub publisher_grace: Duration,
    /// Most QUIC publisher connections established at once.
    pub max_publisher_connections: usize,
    /// Most QUIC/TLS handshakes in progress at once.
    pub max_publisher_handshakes: usize,
    /// The HTTP server's connection cap and header-read timeout.
    pub http_server: super::http_server::HttpServerLimits,
    /// `None`: no snapshots.
    pub snapshot: Option<SnapshotSettings>,
    /// Time between snapshots (also set when there is no snapshot path).
    pub snapshot_interval: Duration,
    pub limits: ApiLimits,
    pub log: LogSettings,
    pub router: RouterConfig,
    /// Workers registered at start, in file-then-flag order.
    pub workers: Vec<WorkerSpec>,
    /// The engines' KV-event publishers to subscribe to at start (workers with an
    /// `endpoint`).
    pub engine_sources: Vec<EngineSource>,
    /// The routing proxy's upstreams at start (workers with a `url`).
    pub upstreams: Vec<Upstream>,
    pub proxy: ProxyConfig,
    /// The proxy's own tokenizer (`proxy.tokenizer`), loaded; `None`: the engines'.
    pub tokenizer: Option<Arc<PromptTokenizer>>,
    /// The effective options (defaults filled), as `--print-config` prints them.
    pub effective: ServeOptions,
}

impl ServeConfig {
    /// Reads `--config` (if given), layers the flags over it and resolves the result.
    pub fn load(args: &ServeArgs) -> Result<ServeConfig, ConfigError> {
        let file = match &args.config {
            Some(path) => read_config_file(path)?,
            None => ServeOptions::default(),
        };
        ServeConfig::resolve((*args.options).clone().layered_over(file))
    }

    /// Fills defaults into `options` and checks every value.
    pub fn resolve(options: ServeOptions) -> Result<ServeConfig, ConfigError> {
        let effective = options.with_defaults();
        let o = &effective;
        // with_defaults fills these; the fallbacks only keep this function total.
        let http_listen = o.http_listen.ok_or_else(|| ConfigError::invalid("http_listen", "missing"))?;
        let ingest_listen = o.ingest_listen.ok_or_else(|| ConfigError::invalid("ingest_listen", "missing"))?;
        let http_token = match &o.http_token_file {
            Some(path) => Some(
                BearerToken::from_file(path)
                    .map_err(|error| ConfigError::invalid("http_token_file", error.to_string()))?,
            ),
            None => None,
        };
        let tls = resolve_tls(o, ingest_listen)?;
        let max_publisher_connections = resolve_count(
            "max_publisher_connections",
            o.max_publisher_connections.unwrap_or(DEFAULT_MAX_PUBLISHER_CONNECTIONS),
        )?;
        let max_publisher_handshakes = resolve_count(
            "max_publisher_handshakes",
            o.max_publisher_handshakes.unwrap_or(DEFAULT_MAX_PUBLISHER_HANDSHAKES),
        )?;
        let http_server = resolve_http_server(o)?;
        let max_frame_len = o.max_frame_len.unwrap_or(kvroute_core::wire::DEFAULT_MAX_FRAME_LEN);
        if max_frame_len < MIN_FRAME_LEN {
            return Err(ConfigError::invalid("max_frame_len", format!("must be at least {MIN_FRAME_LEN} bytes")));
        }
        let snapshot_interval = o.snapshot_interval.map_or(Duration::from_secs(60), |d| d.0);
        if snapshot_interval.is_zero() {
            return Err(ConfigError::invalid("snapshot_interval", "must be above 0"));
        }
        let snapshot = o.snapshot_path.clone().map(|path| SnapshotSettings { path, interval: snapshot_interval });
        let limits = resolve_limits(o)?;
        let log = LogSettings { format: o.log_format.unwrap_or(LogFormat::Text), filter: o.log_filter.clone() };
        if let Some(filter) = &log.filter {
            tracing_subscriber::EnvFilter::try_new(filter)
                .map_err(|error| ConfigError::invalid("log_filter", format!("{filter:?}: {error}")))?;
        }
        let router = resolve_router(o)?;
        let workers = resolve_workers(o, &router)?;
        let engine_sources = resolve_engine_sources(o)?;
        let upstreams = resolve_upstreams(o)?;
        let proxy = resolve_proxy(o)?;
        let tokenizer = resolve_tokenizer(o)?;
        Ok(ServeConfig {
            http_listen,
            http_token,
            ingest_listen,
            tls,
            max_frame_len,
            shutdown_grace: o.shutdown_grace.map_or(Duration::from_secs(30), |d| d.0),
            publisher_grace: o.publisher_grace.map_or(Duration::from_secs(30), |d| d.0),
            max_publisher_connections,
            max_publisher_handshakes,
            http_server,
            snapshot,
            snapshot_interval,
            limits,
            log,
            router,
            workers,
            engine_sources,
            upstreams,
            proxy,
            tokenizer,
            effective,
        })
    }
}

/// Reads and parses a config file.
pub fn read_config_file(path: &Path) -> Result<ServeOptions, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read { path: path.to_owned(), error })?;
    ServeOptions::from_toml(&text)
        .map_err(|error| ConfigError::Parse { path: path.to_owned(), message: error.to_string() })
}

fn resolve_tls(o: &ServeOptions, ingest_listen: SocketAddr) -> Result<TlsMode, ConfigError> {
    let tls = &o.tls;
    if tls.insecure_loopback.unwrap_or(false) {
        if tls.ca.is_some() || tls.cert.is_some() || tls.key.is_some() {
            return Err(ConfigError::invalid(
                "tls.insecure_loopback",
                "cannot be combined with tls.ca, tls.cert or tls.key",
            ));
        }
        if !is_loopback(ingest_listen.ip()) {
            return Err(ConfigError::invalid(
                "tls.insecure_loopback",
                format!(
                    "refused: ingest_listen {ingest_listen} is not a loopback address (publishers would be \
                     unauthenticated); give tls.ca, tls.cert and tls.key instead"
                ),
            ));
        }
        return Ok(TlsMode::InsecureLoopback);
    }
    match (&tls.ca, &tls.cert, &tls.key) {
        (Some(ca), Some(cert), Some(key)) => {
            for (field, path) in [("tls.ca", ca), ("tls.cert", cert), ("tls.key", key)] {
                if !path.is_file() {
                    return Err(ConfigError::invalid(field, format!("{} is not a readable file", path.display())));
                }
            }
            Ok(TlsMode::Mutual(TlsFiles { ca: ca.clone(), cert: cert.clone(), key: key.clone() }))
        }
        _ => {
            let missing: Vec<&str> =
                [("ca", tls.ca.is_none()), ("cert", tls.cert.is_none()), ("key", tls.key.is_none())]
                    .into_iter()
                    .filter_map(|(name, is_missing)| is_missing.then_some(name))
                    .collect();
            Err(ConfigError::invalid(
                "tls",
                format!(
                    "the QUIC ingest needs tls.ca, tls.cert and tls.key (--ca, --cert, --key; `kvroute certs` makes \
                     them), or tls.insecure_loopback = true (--insecure-loopback) on a loopback ingest_listen; \
                     missing: {}",
                    missing.join(", ")
                ),
            ))
        }
    }
}

fn resolve_limits(o: &ServeOptions) -> Result<ApiLimits, ConfigError> {
    let defaults = ApiLimits::default();
    let max_body_bytes = o.max_body_bytes.unwrap_or(defaults.max_body_bytes as u64);
    if max_body_bytes < MIN_BODY_BYTES {
        return Err(ConfigError::invalid("max_body_bytes", format!("must be at least {MIN_BODY_BYTES}")));
    }
    let max_prompt_tokens = o.max_prompt_tokens.unwrap_or(defaults.max_prompt_tokens as u64);
    if max_prompt_tokens == 0 {
        return Err(ConfigError::invalid("max_prompt_tokens", "must be at least 1"));
    }
    let max_output_tokens = o.max_output_tokens.unwrap_or(u64::from(defaults.max_output_tokens));
    let max_output_tokens = u32::try_from(max_output_tokens)
        .map_err(|_| ConfigError::invalid("max_output_tokens", format!("must be at most {}", u32::MAX)))?;
    let request_timeout = o.http_request_timeout.map_or(defaults.request_timeout, |d| d.0);
    if request_timeout.is_zero() {
        return Err(ConfigError::invalid("http_request_timeout", "must be above 0"));
    }
    let too_large = |field: &str| ConfigError::invalid(field, "too large for this platform");
    Ok(ApiLimits {
        max_body_bytes: usize::try_from(max_body_bytes).map_err(|_| too_large("max_body_bytes"))?,
        max_prompt_tokens: usize::try_from(max_prompt_tokens).map_err(|_| too_large("max_prompt_tokens"))?,
        max_output_tokens,
        request_timeout,
    })
}

/// A count option that must be at least 1 (`field` names it in the error).
fn resolve_count(field: &'static str, value: u32) -> Result<usize, ConfigError> {
    if value == 0 {
        return Err(ConfigError::invalid(field, "must be at least 1"));
    }
    usize::try_from(value).map_err(|_| ConfigError::invalid(field, "too large for this platform"))
}

fn resolve_http_server(o: &ServeOptions) -> Result<super::http_server::HttpServerLimits, ConfigError> {
    let defaults = super::http_server::HttpServerLimits::default();
    let max_connections = match o.max_http_connections {
        Some(n) => resolve_count("max_http_connections", n)?,
        None => defaults.max_connections,
    };
    let header_read_timeout = o.http_header_timeout.map_or(defaults.header_read_timeout, |d| d.0);
    if header_read_timeout.is_zero() {
        return Err(ConfigError::invalid("http_header_timeout", "must be above 0"));
    }
    Ok(super::http_server::HttpServerLimits { max_connections, header_read_timeout })
}

fn resolve_router(o: &ServeOptions) -> Result<RouterConfig, ConfigError> {
    let r = &o.router;
    let defaults = RouterConfig::default();
    let block_size = r.block_size.unwrap_or(defaults.block_size);
    if block_size == 0 {
        return Err(ConfigError::invalid("router.block_size", "must be at least 1"));
    }
    let weights = CostWeights {
        prefill_scale: r.prefill_scale.unwrap_or(defaults.weights.prefill_scale),
        decode_weight: r.decode_weight.unwrap_or(defaults.weights.decode_weight),
        request_weight: r.request_weight.unwrap_or(defaults.weights.request_weight),
        host_tier_weight: r.host_tier_weight.unwrap_or(defaults.weights.host_tier_weight),
        disk_tier_weight: r.disk_tier_weight.unwrap_or(defaults.weights.disk_tier_weight),
        temperature: r.temperature.unwrap_or(defaults.weights.temperature),
    };
    // The message starts with the weight's name.
    weights.validate().map_err(|error| ConfigError::invalid("router", strip_invalid_prefix(&error.to_string())))?;
    let ttl_ms = |field: &str, value: Option<super::duration::HumanDuration>, default_ms: u64| {
        let ms = value.map_or(default_ms, |d| d.as_millis_u64());
        if ms == 0 {
            return Err(ConfigError::invalid(field, "must be at least 1ms"));
        }
        Ok(ms)
    };
    let request_ttl_ms = ttl_ms("router.request_ttl", r.request_ttl, defaults.request_ttl_ms)?;
    let approx_ttl_ms = ttl_ms("router.approx_ttl", r.approx_ttl, defaults.approx_ttl_ms)?;
    let load_report_ttl_ms = ttl_ms("router.load_report_ttl", r.load_report_ttl, defaults.load_report_ttl_ms)?;
    let approx_max_blocks_per_rank = match r.approx_max_blocks {
        Some(0) => return Err(ConfigError::invalid("router.approx_max_blocks", "must be at least 1")),
        Some(blocks) => blocks,
        None => defaults.approx_max_blocks_per_rank,
    };
    let index_shards = match r.index_shards {
        Some(n) if !(1..=MAX_SHARDS).contains(&n) => {
            return Err(ConfigError::invalid("router.index_shards", format!("must be 1 to {MAX_SHARDS}, got {n}")));
        }
        Some(n) => n,
        None => defaults.index_shards,
    };
    let room_seed = match r.room_seed {
        Some(seed) if seed >= ROOM_SEED_LIMIT => {
            return Err(ConfigError::invalid("router.room_seed", format!("must be below 2^62, got {seed}")));
        }
        Some(seed) => seed,
        None => random_u64() % ROOM_SEED_LIMIT,
    };
    let policy = resolve_policy(r, block_size)?;
    Ok(RouterConfig {
        block_size,
        hash_scheme: match r.hash_scheme.unwrap_or(HashSchemeName::Kv64) {
            HashSchemeName::Kv64 => HashScheme::Kv64,
            HashSchemeName::Xxh3 => HashScheme::Xxh3Compat,
        },
        weights,
        request_ttl_ms,
        approx_ttl_ms,
        approx_max_blocks_per_rank,
        index_shards,
        room_seed,
        rng_seed: random_u64(),
        policy,
        load_report_ttl_ms,
    })
}

/// The policy `r` names, told the engines' cache size where it uses one.
fn resolve_policy(r: &RouterOptions, block_size: u32) -> Result<Policy, ConfigError> {
    let policy = r.policy.map_or(RouterConfig::default().policy, PolicyName::policy);
    match r.engine_cache_tokens {
        None => Ok(policy),
        Some(tokens) => policy
            .with_engine_cache_tokens(tokens, block_size)
            .map_err(|reason| ConfigError::invalid("router.engine_cache_tokens", reason)),
    }
}

fn strip_invalid_prefix(message: &str) -> String {
    message.strip_prefix("invalid configuration: ").unwrap_or(message).to_owned()
}

/// Checks the workers by registering them on a scratch router.
fn resolve_workers(o: &ServeOptions, router: &RouterConfig) -> Result<Vec<WorkerSpec>, ConfigError> {
    let scratch = Router::new(router.clone(), Arc::new(|| 0u64))
        .map_err(|error| ConfigError::invalid("router", strip_invalid_prefix(&error.to_string())))?;
    let mut specs = Vec::with_capacity(o.workers.len());
    for (i, registration) in o.workers.iter().enumerate() {
        let field = format!("workers[{i}] (worker_id {})", registration.worker_id);
        let spec = registration.to_spec(router.block_size).map_err(|reason| ConfigError::invalid(&field, reason))?;
        scratch.add_worker(spec.clone()).map_err(|error| ConfigError::invalid(&field, error.to_string()))?;
        specs.push(spec);
    }
    Ok(specs)
}

/// The engine subscriptions of the workers that name an endpoint.
fn resolve_engine_sources(o: &ServeOptions) -> Result<Vec<EngineSource>, ConfigError> {
    let mut sources = Vec::new();
    for (i, registration) in o.workers.iter().enumerate() {
        let field = format!("workers[{i}] (worker_id {})", registration.worker_id);
        if let Some(source) = registration.engine_source().map_err(|reason| ConfigError::invalid(&field, reason))? {
            sources.push(source);
        }
    }
    Ok(sources)
}

/// The proxy upstreams of the workers that name a `url`.
fn resolve_upstreams(o: &ServeOptions) -> Result<Vec<Upstream>, ConfigError> {
    let mut upstreams = Vec::new();
    for (i, registration) in o.workers.iter().enumerate() {
        let field = format!("workers[{i}] (worker_id {})", registration.worker_id);
        if let Some(upstream) = registration.upstream().map_err(|reason| ConfigError::invalid(&field, reason))? {
            upstreams.push(upstream);
        }
    }
    Ok(upstreams)
}

fn resolve_proxy(o: &ServeOptions) -> Result<ProxyConfig, ConfigError> {
    let p = &o.proxy;
    let defaults = ProxyConfig::default();
    let max_attempts = p.max_attempts.unwrap_or(defaults.max_attempts);
    if max_attempts == 0 {
        return Err(ConfigError::invalid("proxy.max_attempts", "must be at least 1"));
    }
    let failures_before_down = p.failures_before_down.unwrap_or(defaults.health.failures_before_down);
    if failures_before_down == 0 {
        return Err(ConfigError::invalid("proxy.failures_before_down", "must be at least 1"));
    }
    let duration = |field: &str, value: Option<HumanDuration>, default: Duration| {
        let value = value.map_or(default, |d| d.0);
        if value.is_zero() {
            return Err(ConfigError::invalid(field, "must be above 0"));
        }
        Ok(value)
    };
    let first_backoff = duration("proxy.probe_backoff", p.probe_backoff, defaults.health.first_backoff)?;
    let max_backoff = duration("proxy.probe_max_backoff", p.probe_max_backoff, defaults.health.max_backoff)?;
    if max_backoff < first_backoff {
        return Err(ConfigError::invalid("proxy.probe_max_backoff", "must be at least proxy.probe_backoff"));
    }
    Ok(ProxyConfig {
        max_attempts,
        connect_timeout: duration("proxy.connect_timeout", p.connect_timeout, defaults.connect_timeout)?,
        first_byte_timeout: duration("proxy.first_byte_timeout", p.first_byte_timeout, defaults.first_byte_timeout)?,
        probe_timeout: defaults.probe_timeout,
        health: HealthPolicy { failures_before_down, first_backoff, max_backoff },
        engine_load_interval: match p.engine_load_interval {
            Some(d) if d.0.is_zero() => {
                return Err(ConfigError::invalid("proxy.engine_load_interval", "must be above 0"));
            }
            d => d.map(|d| d.0),
        },
    })
}

fn resolve_tokenizer(o: &ServeOptions) -> Result<Option<Arc<PromptTokenizer>>, ConfigError> {
    let p = &o.proxy;
    let Some(name) = &p.tokenizer else {
        if p.chat_template.is_some() {
            return Err(ConfigError::invalid("proxy.chat_template", "needs proxy.tokenizer (--tokenizer)"));
        }
        return Ok(None);
    };
    let source: TokenizerSource =
        name.parse().map_err(|reason: String| ConfigError::invalid("proxy.tokenizer", reason))?;
    let tokenizer = PromptTokenizer::load(&source, p.chat_template.as_deref())
        .map_err(|reason| ConfigError::invalid("proxy.tokenizer", reason))?;
    Ok(Some(Arc::new(tokenizer)))
}

/// A random `u64` from the standard library's per-process random hash keys and the time.
pub(crate) fn random_u64() -> u64 {
    let mut hasher = RandomState::new().build_hasher();
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    hasher.write_u128(nanos);
    hasher.finish()
}
