//! The daemon's options as given: [`ServeArgs`] (the `kvroute serve` command line) and
//! [`ServeOptions`], one struct that is both the clap flags and the TOML file schema.
//!
//! Every field is an `Option` so that the file and the flags can be layered: the flags
//! win ([`ServeOptions::layered_over`]), then [`ServeOptions::with_defaults`] fills what
//! neither gave, which is also what `--print-config` prints. Unknown TOML keys are errors
//! (`deny_unknown_fields`), so a typo never silently keeps a default. Checking and
//! converting to typed settings is [`super::config`]'s job.
//!
//! File layout: top-level keys for the daemon, `[tls]`, `[router]`, `[proxy]`, and `[[workers]]`
//! tables (see `docs/serve.toml`).

use std::net::SocketAddr;
use std::path::PathBuf;

use super::duration::HumanDuration;
use super::worker_registration::WorkerRegistration;

/// Default HTTP API address.
pub const DEFAULT_HTTP_LISTEN: &str = "127.0.0.1:8080";
/// Default QUIC ingest address.
pub const DEFAULT_INGEST_LISTEN: &str = "127.0.0.1:4433";
/// Default request body limit: 8 MiB.
pub const DEFAULT_MAX_BODY_BYTES: u64 = 8 << 20;
/// Default prompt length limit: 1 Mi tokens.
pub const DEFAULT_MAX_PROMPT_TOKENS: u64 = 1 << 20;
/// Default `output_tokens` limit: 256 Ki tokens (beyond every model's context).
pub const DEFAULT_MAX_OUTPUT_TOKENS: u64 = 1 << 18;
/// Default `http_request_timeout`.
pub const DEFAULT_REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
use super::http_server::{DEFAULT_HEADER_READ_TIMEOUT, DEFAULT_MAX_HTTP_CONNECTIONS};

/// Default cap on QUIC publisher connections: the ingest's own default.
pub const DEFAULT_MAX_PUBLISHER_CONNECTIONS: u32 = crate::transport::ingest::DEFAULT_MAX_CONNECTIONS as u32;
/// Default `max_publisher_handshakes`.
pub const DEFAULT_MAX_PUBLISHER_HANDSHAKES: u32 = crate::transport::ingest::DEFAULT_MAX_HANDSHAKES as u32;

/// `kvroute serve`: the routing daemon (HTTP/JSON API, QUIC KV event ingest, metrics).
#[derive(clap::Args, Clone, Debug, Default)]
#[command(after_help = "Every option can also be set in the --config TOML file (same name, with `_` for `-`; TLS \
options under [tls], router options under [router], workers as [[workers]] tables); a flag overrides the file. \
See docs/serve.toml for a commented example.")]
pub struct ServeArgs {
    /// TOML configuration file; flags given on the command line override its values.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print the effective configuration (file, flags and defaults) as TOML and exit.
    #[arg(long)]
    pub print_config: bool,
    /// Boxed: the options are large, and the binary's subcommand enum holds this.
    #[command(flatten)]
    pub options: Box<ServeOptions>,
}

/// How log lines are written.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// How prompts given as token ids are hashed into blocks.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HashSchemeName {
    /// kvroute's SIMD 64-bit hash (fastest; engines' events must carry the same hashes).
    Kv64,
    /// XXH3-64 with seed 1337, as Dynamo and the SGLang gateway hash blocks.
    Xxh3,
}

/// How a rank is picked among the scored candidates (`kvroute_core::route::Policy`, each
/// with its source's defaults).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PolicyName {
    /// Lowest cost: prefill work not covered by the cached prefix, plus decode load (Dynamo's).
    Cost,
    /// Smallest predicted time to first token (the default): queued prefill, this prompt's
    /// uncached part (counted 1.5 times: it delays everyone behind it) and 0.25 tokens of
    /// queue per KV token of running requests. With --engine-cache-tokens, also the price
    /// of evicting from a full cache (up to 5 times more), and running requests counted up
    /// to a full cache.
    PredictedTtft,
    /// The SGLang gateway's cache_aware (cache threshold 0.3, balance 64 / 1.5).
    CacheAware,
    /// llm-d's weighted scorers (prefix 3, queue 2, KV use 2).
    Weighted,
    /// The longest cached prefix, ties to the fewest active requests.
    LargestOverlap,
    /// The fewest active requests.
    LeastLoaded,
    RoundRobin,
    Random,
}

impl PolicyName {
    pub fn policy(self) -> kvroute_core::route::Policy {
        use kvroute_core::route::{CacheAwareThresholds, Policy, ScorerWeights, TtftWeights};
        match self {
            PolicyName::Cost => Policy::Cost,
            PolicyName::PredictedTtft => Policy::PredictedTtft(TtftWeights::default()),
            PolicyName::CacheAware => Policy::CacheAware(CacheAwareThresholds::default()),
            PolicyName::Weighted => Policy::Weighted(ScorerWeights::default()),
            PolicyName::LargestOverlap => Policy::LargestOverlap,
            PolicyName::LeastLoaded => Policy::LeastLoaded,
            PolicyName::RoundRobin => Policy::RoundRobin,
            PolicyName::Random => Policy::Random,
        }
    }
}

/// Every daemon option (file schema and flags). `None` means "not given here".
#[derive(clap::Args, Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeOptions {
    /// Address of the HTTP/JSON API and /metrics [default: 127.0.0.1:8080].
    #[arg(long, value_name = "ADDR")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_listen: Option<SocketAddr>,
    /// File holding the bearer token the HTTP API requires (`Authorization: Bearer
    /// <token>`) on every endpoint but GET /healthz; read once at start, surrounding
    /// whitespace trimmed. A file, not the token itself, so that it shows in no process
    /// listing [default: none, the API is open].
    #[arg(long, value_name = "FILE")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_token_file: Option<PathBuf>,
    /// Address (UDP) the QUIC KV event ingest listens on [default: 127.0.0.1:4433].
    #[arg(long, value_name = "ADDR")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingest_listen: Option<SocketAddr>,
    /// Longest accepted KV event frame, in bytes [default: 1048576 (1 MiB)].
    #[arg(long, value_name = "BYTES")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_frame_len: Option<u32>,
    /// On SIGINT/SIGTERM, how long in-flight HTTP requests may take before the daemon
    /// exits anyway, e.g. "30s", "500ms" [default: 30s].
    #[arg(long, value_name = "DURATION")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shutdown_grace: Option<HumanDuration>,
    /// How long a disconnected publisher's ranks stay in the index before they are
    /// removed; a publisher back within it resumes where it left off [default: 30s].
    #[arg(long, value_name = "DURATION")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publisher_grace: Option<HumanDuration>,
    /// Most QUIC publisher connections established at once; further connection attempts
    /// are refused (kvroute_ingest_connections_refused_total) until one ends [default: 1024].
    #[arg(long, value_name = "N")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_publisher_connections: Option<u32>,
    /// Most QUIC/TLS handshakes in progress at once (each must finish within 3 s), apart
    /// from established connections. Past half of them, attempts from unvalidated addresses
    /// get a stateless QUIC Retry (kvroute_ingest_handshakes_retried_total); at the cap they
    /// are refused (kvroute_ingest_handshakes_refused_total). A flood of half-open
    /// handshakes so holds no more than this, and real publishers still get in [default: 64].
    #[arg(long, value_name = "N")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_publisher_handshakes: Option<u32>,
    /// Most HTTP connections open at once; one more is closed at once and counted
    /// (kvroute_http_connections_refused_total) [default: 4096].
    #[arg(long, value_name = "N")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_http_connections: Option<u32>,
    /// Longest wait for an HTTP request's head; an HTTP keep-alive connection idle this
    /// long is closed too [default: 10s].
    #[arg(long, value_name = "DURATION")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_header_timeout: Option<HumanDuration>,
    /// Longest time from a request's head to its answer, the body's upload included: a
    /// slower request is answered 408 and its connection closed
    /// (kvroute_http_requests_timed_out_total) [default: 30s].
    #[arg(long, value_name = "DURATION")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_request_timeout: Option<HumanDuration>,
    /// File the index snapshot is written to (periodically and at shutdown) and restored
    /// from at start [default: none, no snapshots].
    #[arg(long, value_name = "FILE")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_path: Option<PathBuf>,
    /// Time between periodic snapshots [default: 60s].
    #[arg(long, value_name = "DURATION")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_interval: Option<HumanDuration>,
    /// Largest accepted HTTP request body, in bytes [default: 8388608 (8 MiB)].
    #[arg(long, value_name = "BYTES")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_body_bytes: Option<u64>,
    /// Longest accepted prompt, in tokens (block hashes: this divided by the block size,
    /// rounded up) [default: 1048576].
    #[arg(long, value_name = "TOKENS")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_prompt_tokens: Option<u64>,
    /// Largest accepted `output_tokens` of a route (its decode blocks are charged to a
    /// rank until the request finishes or expires) [default: 262144].
    #[arg(long, value_name = "TOKENS")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_output_tokens: Option<u64>,
    /// Log line format [default: text].
    #[arg(long, value_enum, value_name = "FORMAT")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_format: Option<LogFormat>,
    /// Log filter in tracing's env-filter syntax, e.g. "info" or "info,kvroute_net=debug"
    /// [default: $RUST_LOG, else info].
    #[arg(long, value_name = "FILTER")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_filter: Option<String>,
    #[command(flatten, next_help_heading = "TLS for the QUIC ingest ([tls] in the file)")]
    #[serde(default)]
    pub tls: TlsOptions,
    #[command(flatten, next_help_heading = "Router ([router] in the file)")]
    #[serde(default)]
    pub router: RouterOptions,
    #[command(flatten, next_help_heading = "Routing proxy ([proxy] in the file)")]
    #[serde(default)]
    pub proxy: ProxyOptions,
    /// Register a worker at start (repeatable): key=value pairs with the keys of a
    /// `[[workers]]` table, e.g. "worker_id=1,dp_size=4,role=prefill,bootstrap_host=10.0.0.1,bootstrap_port=8998";
    /// with url=http://HOST:PORT the routing proxy forwards requests to it.
    /// A worker given here replaces a file entry with the same worker_id.
    #[arg(long = "worker", value_name = "SPEC", value_parser = WorkerRegistration::parse_flag, help_heading = "Workers ([[workers]] in the file)")]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub workers: Vec<WorkerRegistration>,
    /// Subscribe to an engine's own KV events over ZeroMQ (repeatable; vLLM or SGLang
    /// `--kv-events-config` publishers): `--worker`'s keys with `endpoint` required and
    /// dp_size 1 by default, e.g.
    /// "worker_id=3,endpoint=tcp://10.0.0.5:5557,replay=tcp://10.0.0.5:5600,dp_size=4"
    /// (rank i of the worker on port + i for both). Registers the worker, or adds the
    /// subscription to a --worker / [[workers]] entry with the same worker_id. In the file:
    /// `endpoint = ...` (and `replay`, `engine`, `engine_block_size`, `topic`, `bind`) in
    /// the worker's [[workers]] table.
    #[arg(long = "engine-events", value_name = "SPEC", value_parser = WorkerRegistration::parse_engine_flag, help_heading = "Workers ([[workers]] in the file)")]
    #[serde(skip)]
    pub engine_events: Vec<WorkerRegistration>,
}

/// Mutual TLS files of the QUIC ingest (as written by `kvroute certs`), or insecure mode.
#[derive(clap::Args, Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsOptions {
    /// CA certificate(s) that sign the publishers' certificates (ca.pem).
    #[arg(long, value_name = "FILE")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    /// The router's certificate chain, leaf first (router.pem).
    #[arg(long, value_name = "FILE")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    /// The router's private key (router.key).
    #[arg(long, value_name = "FILE")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    /// No certificates: a throwaway self-signed one, publishers not authenticated. Only
    /// allowed when the ingest listens on a loopback address; excludes --ca/--cert/--key
    /// [default: false].
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub insecure_loopback: Option<bool>,
}

/// The OpenAI-compatible routing proxy (`/v1/completions`, `/v1/chat/completions` forwarded
/// to workers registered with a `url`).
#[derive(clap::Args, Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxyOptions {
    /// Most ranks one request is tried on: a refused connection, a timeout or a 5xx
    /// before the first byte moves it to the next-best rank [default: 3].
    #[arg(long = "proxy-max-attempts", value_name = "N")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// Longest wait for a TCP connection to a worker [default: 2s].
    #[arg(long = "proxy-connect-timeout", value_name = "DURATION")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_timeout: Option<HumanDuration>,
    /// Longest wait for a worker's response head (streams: at once; whole answers: when
    /// generation ends) [default: 300s].
    #[arg(long = "proxy-first-byte-timeout", value_name = "DURATION")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_byte_timeout: Option<HumanDuration>,
    /// Consecutive failures that take a worker out of decisions until its GET /health
    /// answers [default: 3].
    #[arg(long = "proxy-failures-before-down", value_name = "N")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failures_before_down: Option<u32>,
    /// Wait before the first health probe of a worker taken out; doubled after each failed
    /// probe [default: 500ms].
    #[arg(long = "proxy-probe-backoff", value_name = "DURATION")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe_backoff: Option<HumanDuration>,
    /// Longest wait between health probes [default: 30s].
    #[arg(long = "proxy-probe-max-backoff", value_name = "DURATION")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe_max_backoff: Option<HumanDuration>,
    /// Scrape every worker's own /metrics (vLLM, SGLang) this often for its running and
    /// waiting requests per rank, counted as load other router replicas sent (until
    /// --load-report-ttl) [default: never].
    #[arg(long = "proxy-engine-load-interval", value_name = "DURATION")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine_load_interval: Option<HumanDuration>,
    /// Tokenize text prompts and chat messages in the router: a model's tokenizer.json or
    /// model directory (chat template from its chat_template.jinja or
    /// tokenizer_config.json), or `bytes` (the engine simulator's). Unset: each request's
    /// text is tokenized by a worker's POST /tokenize (one more round trip).
    #[arg(long = "tokenizer", value_name = "PATH|bytes")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokenizer: Option<String>,
    /// The chat template for --tokenizer: Jinja source, or a tokenizer_config.json
    /// [default: the model's].
    #[arg(long = "chat-template", value_name = "FILE")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chat_template: Option<std::path::PathBuf>,
}

impl ProxyOptions {
    fn layered_over(self, file: ProxyOptions) -> ProxyOptions {
        ProxyOptions {
            max_attempts: self.max_attempts.or(file.max_attempts),
            connect_timeout: self.connect_timeout.or(file.connect_timeout),
            first_byte_timeout: self.first_byte_timeout.or(file.first_byte_timeout),
            failures_before_down: self.failures_before_down.or(file.failures_before_down),
            probe_backoff: self.probe_backoff.or(file.probe_backoff),
            probe_max_backoff: self.probe_max_backoff.or(file.probe_max_backoff),
            engine_load_interval: self.engine_load_interval.or(file.engine_load_interval),
            tokenizer: self.tokenizer.or(file.tokenizer),
            chat_template: self.chat_template.or(file.chat_template),
        }
    }

    fn with_defaults(self) -> ProxyOptions {
        let core = crate::proxy::ProxyConfig::default();
        ProxyOptions {
            max_attempts: self.max_attempts.or(Some(core.max_attempts)),
            connect_timeout: self.connect_timeout.or(Some(HumanDuration(core.connect_timeout))),
            first_byte_timeout: self.first_byte_timeout.or(Some(HumanDuration(core.first_byte_timeout))),
            failures_before_down: self.failures_before_down.or(Some(core.health.failures_before_down)),
            probe_backoff: self.probe_backoff.or(Some(HumanDuration(core.health.first_backoff))),
            probe_max_backoff: self.probe_max_backoff.or(Some(HumanDuration(core.health.max_backoff))),
            engine_load_interval: self.engine_load_interval,
            tokenizer: self.tokenizer,
            chat_template: self.chat_template,
        }
    }
}

/// Router settings: block hashing, cost weights, expiry.
#[derive(clap::Args, Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouterOptions {
    /// Tokens per KV block; every worker must use the same [default: 16].
    #[arg(long, value_name = "TOKENS")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_size: Option<u32>,
    /// How prompts given as token ids are hashed: kv64 or xxh3 (Dynamo / SGLang gateway
    /// compatible) [default: kv64].
    #[arg(long, value_enum, value_name = "SCHEME")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_scheme: Option<HashSchemeName>,
    /// How a rank is picked among the scored candidates [default: predicted-ttft].
    #[arg(long, value_enum, value_name = "POLICY")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<PolicyName>,
    /// Cost weight of prefill blocks (queued plus uncached prompt) [default: 1.0].
    #[arg(long, value_name = "WEIGHT", allow_negative_numbers = true)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefill_scale: Option<f64>,
    /// Cost weight of decode blocks (KV held for running requests) [default: 1.0].
    #[arg(long, value_name = "WEIGHT", allow_negative_numbers = true)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decode_weight: Option<f64>,
    /// Cost weight of the rank's active request count [default: 0.0].
    #[arg(long, value_name = "WEIGHT", allow_negative_numbers = true)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_weight: Option<f64>,
    /// Worth of a block cached in host memory, relative to device memory, 0..=1
    /// [default: 0.75].
    #[arg(long, value_name = "WEIGHT", allow_negative_numbers = true)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_tier_weight: Option<f64>,
    /// Worth of a block cached on disk, relative to device memory, 0..=1 [default: 0.25].
    #[arg(long, value_name = "WEIGHT", allow_negative_numbers = true)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_tier_weight: Option<f64>,
    /// With `--policy cost` or `predicted_ttft`: 0 picks the cheapest rank (random among
    /// ties); above 0, softmax sampling over the normalised costs (predicted TTFTs) at
    /// this temperature. Router replicas that split the traffic want a small one (0.05:
    /// otherwise they pile a burst onto the same emptiest ranks) [default: 0.0].
    #[arg(long, value_name = "T", allow_negative_numbers = true)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// KV-cache tokens one engine DP rank holds (vLLM logs it at start as "GPU KV cache
    /// size: N tokens", SGLang as max_total_num_tokens). With it, --policy predicted-ttft
    /// prices a prompt's new blocks by how full each rank's cache is (they evict other
    /// prefixes) and counts a rank's running requests up to a full cache of KV (an engine
    /// holds no more) [default: unknown, both off].
    #[arg(long, value_name = "TOKENS")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine_cache_tokens: Option<u64>,
    /// A routed request never finished is released after this long [default: 300s].
    #[arg(long, value_name = "DURATION")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_ttl: Option<HumanDuration>,
    /// A worker's engine-reported load (scraped, --proxy-engine-load-interval, or pushed,
    /// `POST /v1/workers/{id}/load`) counts this long; then the router goes by its own
    /// requests alone again [default: 10s].
    #[arg(long, value_name = "DURATION")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_report_ttl: Option<HumanDuration>,
    /// Blocks recorded for a worker in approximate mode (no KV events yet) are forgotten
    /// this long after last routed [default: 120s].
    #[arg(long, value_name = "DURATION")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approx_ttl: Option<HumanDuration>,
    /// Most blocks approximate mode credits one rank with; past it the least recently
    /// routed are forgotten, as a full KV cache evicts [default: 262144].
    #[arg(long, value_name = "BLOCKS")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approx_max_blocks: Option<u64>,
    /// Index shards, 1 to 64: ranks are spread over that many trees, each with its own
    /// writer lock, so events of ranks in different shards apply in parallel; a lookup
    /// walks every shard, and prefixes shared across shards are stored once per shard.
    /// More than 1 only where event apply is the bound and there are cores for it
    /// [default: 1].
    #[arg(long, value_name = "N")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index_shards: Option<usize>,
    /// Start of the bootstrap-room counter, 0..2^62; fix it only for reproducible tests
    /// [default: random at each start].
    #[arg(long, value_name = "SEED")]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room_seed: Option<u64>,
}

impl ServeOptions {
    /// These options (the flags) over `file`: each value given here wins. Workers are
    /// merged by id: one given here replaces the file's entry with the same id.
    pub fn layered_over(self, file: ServeOptions) -> ServeOptions {
        let mut workers = file.workers;
        for flag_worker in self.workers {
            match workers.iter_mut().find(|w| w.worker_id == flag_worker.worker_id) {
                Some(existing) => *existing = flag_worker,
                None => workers.push(flag_worker),
            }
        }
        for subscription in self.engine_events {
            match workers.iter_mut().find(|w| w.worker_id == subscription.worker_id) {
                Some(existing) => {
                    existing.endpoint = subscription.endpoint;
                    existing.replay = subscription.replay;
                    existing.engine = subscription.engine;
                    existing.engine_block_size = subscription.engine_block_size;
                    existing.topic = subscription.topic;
                    existing.bind = subscription.bind;
                    existing.url = subscription.url.or(existing.url.take());
                }
                None => workers.push(subscription),
            }
        }
        ServeOptions {
            http_listen: self.http_listen.or(file.http_listen),
            http_token_file: self.http_token_file.or(file.http_token_file),
            ingest_listen: self.ingest_listen.or(file.ingest_listen),
            max_frame_len: self.max_frame_len.or(file.max_frame_len),
            shutdown_grace: self.shutdown_grace.or(file.shutdown_grace),
            publisher_grace: self.publisher_grace.or(file.publisher_grace),
            max_publisher_connections: self.max_publisher_connections.or(file.max_publisher_connections),
            max_publisher_handshakes: self.max_publisher_handshakes.or(file.max_publisher_handshakes),
            max_http_connections: self.max_http_connections.or(file.max_http_connections),
            http_header_timeout: self.http_header_timeout.or(file.http_header_timeout),
            http_request_timeout: self.http_request_timeout.or(file.http_request_timeout),
            snapshot_path: self.snapshot_path.or(file.snapshot_path),
            snapshot_interval: self.snapshot_interval.or(file.snapshot_interval),
            max_body_bytes: self.max_body_bytes.or(file.max_body_bytes),
            max_prompt_tokens: self.max_prompt_tokens.or(file.max_prompt_tokens),
            max_output_tokens: self.max_output_tokens.or(file.max_output_tokens),
            log_format: self.log_format.or(file.log_format),
            log_filter: self.log_filter.or(file.log_filter),
            tls: TlsOptions {
                ca: self.tls.ca.or(file.tls.ca),
                cert: self.tls.cert.or(file.tls.cert),
                key: self.tls.key.or(file.tls.key),
                insecure_loopback: self.tls.insecure_loopback.or(file.tls.insecure_loopback),
            },
            router: self.router.layered_over(file.router),
            proxy: self.proxy.layered_over(file.proxy),
            workers,
            engine_events: Vec::new(),
        }
    }

    /// Every option that has a default filled with it (the effective configuration).
    /// Left unset: http_token_file, snapshot_path, log_filter, the TLS files and room_seed,
    /// whose absence means something (an open API, no snapshots, $RUST_LOG, insecure mode or
    /// an error, a random seed).
    pub fn with_defaults(self) -> ServeOptions {
        let default_addr = |text: &str| text.parse::<SocketAddr>().ok();
        ServeOptions {
            http_listen: self.http_listen.or_else(|| default_addr(DEFAULT_HTTP_LISTEN)),
            ingest_listen: self.ingest_listen.or_else(|| default_addr(DEFAULT_INGEST_LISTEN)),
            max_frame_len: self.max_frame_len.or(Some(kvroute_core::wire::DEFAULT_MAX_FRAME_LEN)),
            shutdown_grace: self.shutdown_grace.or(Some(HumanDuration::from_secs(30))),
            publisher_grace: self.publisher_grace.or(Some(HumanDuration::from_secs(30))),
            max_publisher_connections: self.max_publisher_connections.or(Some(DEFAULT_MAX_PUBLISHER_CONNECTIONS)),
            max_publisher_handshakes: self.max_publisher_handshakes.or(Some(DEFAULT_MAX_PUBLISHER_HANDSHAKES)),
            max_http_connections: self.max_http_connections.or(Some(DEFAULT_MAX_HTTP_CONNECTIONS as u32)),
            http_header_timeout: self.http_header_timeout.or(Some(HumanDuration(DEFAULT_HEADER_READ_TIMEOUT))),
            http_request_timeout: self.http_request_timeout.or(Some(HumanDuration(DEFAULT_REQUEST_TIMEOUT))),
            snapshot_interval: self.snapshot_interval.or(Some(HumanDuration::from_secs(60))),
            max_body_bytes: self.max_body_bytes.or(Some(DEFAULT_MAX_BODY_BYTES)),
            max_prompt_tokens: self.max_prompt_tokens.or(Some(DEFAULT_MAX_PROMPT_TOKENS)),
            max_output_tokens: self.max_output_tokens.or(Some(DEFAULT_MAX_OUTPUT_TOKENS)),
            log_format: self.log_format.or(Some(LogFormat::Text)),
            tls: TlsOptions { insecure_loopback: self.tls.insecure_loopback.or(Some(false)), ..self.tls },
            router: self.router.with_defaults(),
            proxy: self.proxy.with_defaults(),
            ..self
        }
    }

    /// The options as a TOML document (`--print-config`).
    pub fn to_toml(&self) -> Result<String, toml::ser::Error> {
        toml::to_string(self)
    }

    /// Options from a TOML document; unknown keys and wrong types are errors.
    pub fn from_toml(text: &str) -> Result<ServeOptions, toml::de::Error> {
        toml::from_str(text)
    }
}

impl RouterOptions {
    fn layered_over(self, file: RouterOptions) -> RouterOptions {
        RouterOptions {
            block_size: self.block_size.or(file.block_size),
            hash_scheme: self.hash_scheme.or(file.hash_scheme),
            policy: self.policy.or(file.policy),
            prefill_scale: self.prefill_scale.or(file.prefill_scale),
            decode_weight: self.decode_weight.or(file.decode_weight),
            request_weight: self.request_weight.or(file.request_weight),
            host_tier_weight: self.host_tier_weight.or(file.host_tier_weight),
            disk_tier_weight: self.disk_tier_weight.or(file.disk_tier_weight),
            temperature: self.temperature.or(file.temperature),
            engine_cache_tokens: self.engine_cache_tokens.or(file.engine_cache_tokens),
            request_ttl: self.request_ttl.or(file.request_ttl),
            load_report_ttl: self.load_report_ttl.or(file.load_report_ttl),
            approx_ttl: self.approx_ttl.or(file.approx_ttl),
            approx_max_blocks: self.approx_max_blocks.or(file.approx_max_blocks),
            index_shards: self.index_shards.or(file.index_shards),
            room_seed: self.room_seed.or(file.room_seed),
        }
    }

    fn with_defaults(self) -> RouterOptions {
        let core = kvroute_core::route::RouterConfig::default();
        let weights = &core.weights;
        RouterOptions {
            block_size: self.block_size.or(Some(core.block_size)),
            hash_scheme: self.hash_scheme.or(Some(HashSchemeName::Kv64)),
            policy: self.policy.or(Some(PolicyName::PredictedTtft)),
            prefill_scale: self.prefill_scale.or(Some(weights.prefill_scale)),
            decode_weight: self.decode_weight.or(Some(weights.decode_weight)),
            request_weight: self.request_weight.or(Some(weights.request_weight)),
            host_tier_weight: self.host_tier_weight.or(Some(weights.host_tier_weight)),
            disk_tier_weight: self.disk_tier_weight.or(Some(weights.disk_tier_weight)),
            temperature: self.temperature.or(Some(weights.temperature)),
            engine_cache_tokens: self.engine_cache_tokens,
            request_ttl: self.request_ttl.or(Some(HumanDuration::from_secs(core.request_ttl_ms / 1000))),
            load_report_ttl: self.load_report_ttl.or(Some(HumanDuration::from_secs(core.load_report_ttl_ms / 1000))),
            approx_ttl: self.approx_ttl.or(Some(HumanDuration::from_secs(core.approx_ttl_ms / 1000))),
            approx_max_blocks: self.approx_max_blocks.or(Some(core.approx_max_blocks_per_rank)),
            index_shards: self.index_shards.or(Some(core.index_shards)),
            room_seed: self.room_seed,
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::ValueEnum;
    use kvroute_core::route::TtftWeights;

    use super::PolicyName;

    /// The help text states the default weights; it must follow them when they change.
    #[test]
    fn predicted_ttft_help_gives_the_default_weights() {
        let value = PolicyName::PredictedTtft.to_possible_value().expect("listed");
        let help = value.get_help().expect("documented").to_string();
        let w = TtftWeights::DEFAULT;
        for (name, weight, phrase) in [
            ("recompute", w.recompute, format!("counted {} times", w.recompute)),
            ("decode", w.decode, format!("{} tokens of queue per KV token", w.decode)),
            ("pressure", w.pressure, format!("up to {} times more", w.pressure)),
        ] {
            assert!(help.contains(&phrase), "{name} = {weight}: {help:?} lacks {phrase:?}");
        }
    }
}
