//! `kvroute.Router`: the core [`Router`] for Python. Each method converts its arguments,
//! releases the GIL around the router's work (hashing, lookup, event mapping), and
//! converts the answer back; the router is `Sync`, so Python threads share one.
//!
//! Request ids: a charging decision is recorded under the caller's `request_id` (a
//! `str`, see `request_keys`) or, without one, under the router's own id (an `int`),
//! and `prefill_done` / `finish` take either. Events: `apply_events` decodes a batch
//! (bytes, or the engines' objects through `event_objects`) with one core
//! `EngineRankStream` per rank, so page re-chunking and block identity work exactly as
//! for the ZeroMQ ingest; subscriptions and QUIC listeners run in `background`.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use kvroute_core::engine_events::block_mapper::MapperConfig;
use kvroute_core::engine_events::decode::DecodeLimits;
use kvroute_core::engine_events::rank_stream::{EngineRankStream, RankStreamConfig};
use kvroute_core::engine_events::sequence::TrackerConfig;
use kvroute_core::hashing::{BlockHasher, BlockIdentity, HashScheme};
use kvroute_core::ingest::IngestSink;
use kvroute_core::route::{
    BootstrapEndpoint, Clock, CostWeights, PdOptions, Policy, Prompt, RequestId, Role, RouteOptions, Router,
    RouterConfig, StorageTier, WorkerSpec,
};
use kvroute_core::{DpRank, RankKey, WorkerId};
use kvroute_net::engine_ingest::{EngineKind, EngineSource};
use kvroute_net::engine_zmq::EngineEndpoint;
use kvroute_net::tls::TlsFiles;
use kvroute_net::transport::TlsMode;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyInt, PyString};

use crate::background::Background;
use crate::decision::{Decision, PdDecision};
use crate::error::refused;
use crate::event_objects::encode_object;
use crate::request_keys::RequestKeys;
use crate::token_ids::TokenIds;

/// A KV-cache-aware router over (worker, DP rank); see the package docs.
#[pyclass(module = "kvroute", name = "Router", frozen)]
pub struct PyRouter {
    router: Arc<Router>,
    clock: Arc<dyn Clock>,
    keys: Arc<RequestKeys>,
    mapper: MapperConfig,
    /// Per rank, the mapping state of batches handed to `apply_events`.
    streams: Mutex<HashMap<RankKey, EngineRankStream>>,
    background: Background,
}

/// A request id from Python: the caller's string or the router's integer.
enum RequestKey {
    Caller(String),
    Router(RequestId),
}

impl RequestKey {
    fn extract(obj: &Bound<'_, PyAny>) -> PyResult<RequestKey> {
        if let Ok(s) = obj.cast::<PyString>() {
            return Ok(RequestKey::Caller(s.to_str()?.to_owned()));
        }
        if obj.cast::<PyInt>().is_ok() {
            let id: u64 = obj
                .extract()
                .map_err(|_| PyValueError::new_err(format!("request id {obj} is not one of the router's")))?;
            return Ok(RequestKey::Router(RequestId(id)));
        }
        Err(PyTypeError::new_err("request_id must be a str (the caller's) or an int (the router's)"))
    }
}

fn parse_role(role: &str) -> PyResult<Role> {
    match role {
        "both" => Ok(Role::Both),
        "prefill" => Ok(Role::Prefill),
        "decode" => Ok(Role::Decode),
        other => Err(PyValueError::new_err(format!("role must be 'both', 'prefill' or 'decode', not {other:?}"))),
    }
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Both => "both",
        Role::Prefill => "prefill",
        Role::Decode => "decode",
    }
}

fn parse_hashing(name: &str) -> PyResult<HashScheme> {
    match name {
        "kv64" => Ok(HashScheme::Kv64),
        "xxh3" => Ok(HashScheme::Xxh3Compat),
        other => Err(PyValueError::new_err(format!(
            "hashing must be 'kv64' (kvroute's) or 'xxh3' (Dynamo's and the SGLang gateway's), not {other:?}"
        ))),
    }
}

/// A policy by its short name, with its source's defaults (`Policy::ALL`).
fn parse_policy(name: &str) -> PyResult<Policy> {
    Policy::from_name(name).ok_or_else(|| {
        let names: Vec<&str> = Policy::ALL.iter().map(Policy::name).collect();
        PyValueError::new_err(format!("policy must be one of {}, not {name:?}", names.join(", ")))
    })
}

fn seconds_to_ms(name: &str, seconds: f64) -> PyResult<u64> {
    if !seconds.is_finite() || seconds <= 0.0 || seconds > 1e9 {
        return Err(PyValueError::new_err(format!("{name} must be a positive number of seconds, got {seconds}")));
    }
    Ok((seconds * 1000.0).ceil() as u64)
}

/// A seed that differs between router lifetimes (rooms must not repeat across restarts).
fn random_seed() -> u64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher
        .write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos());
    hasher.finish()
}

/// The options of one decision, from Python's keyword arguments.
struct DecisionArgs {
    tokens: TokenIds,
    lora_name: Option<String>,
    workers: Option<Vec<WorkerId>>,
}

impl DecisionArgs {
    fn prompt(&self) -> Prompt<'_> {
        match &self.lora_name {
            Some(lora) if !lora.is_empty() => Prompt::TokensWith(
                self.tokens.as_slice(),
                BlockIdentity { lora_name: Some(lora), ..Default::default() },
            ),
            _ => Prompt::Tokens(self.tokens.as_slice()),
        }
    }
}

fn worker_ids(workers: Option<Vec<u64>>) -> Option<Vec<WorkerId>> {
    workers.map(|ids| ids.into_iter().map(WorkerId).collect())
}

impl PyRouter {
    /// Fails early if a caller id is already in flight (before anything is charged).
    fn check_new_key(&self, request_id: &Option<String>) -> PyResult<()> {
        match request_id {
            Some(key) if self.keys.contains(key) => Err(refused(format!("request_id {key:?} is already in flight"))),
            _ => Ok(()),
        }
    }

    /// Records a charged request under the caller's id (or reports the router's id);
    /// `None` for a dry run. A key that raced in meanwhile releases the new charge.
    fn record(&self, py: Python<'_>, id: Option<RequestId>, request_id: Option<String>) -> PyResult<Py<PyAny>> {
        let Some(id) = id else { return Ok(py.None()) };
        match request_id {
            None => Ok(id.0.into_pyobject(py)?.into_any().unbind()),
            Some(key) => {
                if !self.keys.try_insert(key.clone(), id, self.clock.now_ms()) {
                    self.router.finish(id);
                    return Err(refused(format!("request_id {key:?} is already in flight")));
                }
                Ok(PyString::new(py, &key).into_any().unbind())
            }
        }
    }

    fn resolve(&self, key: &RequestKey) -> Option<RequestId> {
        match key {
            RequestKey::Caller(key) => self.keys.get(key),
            RequestKey::Router(id) => Some(*id),
        }
    }

    fn decide(
        &self,
        py: Python<'_>,
        args: &DecisionArgs,
        dry_run: bool,
        dp_rank: Option<(u64, u32)>,
        output_tokens: u32,
    ) -> PyResult<kvroute_core::route::Decision> {
        let rank = dp_rank.map(|(worker, rank)| RankKey { worker: WorkerId(worker), dp_rank: DpRank(rank) });
        let options = RouteOptions { workers: args.workers.as_deref(), rank, excluded: &[], dry_run, output_tokens };
        let router = &self.router;
        let prompt = args.prompt();
        py.detach(|| router.best_worker(prompt, &options)).map_err(refused)
    }

    /// `dp_rank` pins the rank: with one candidate worker it names that worker's rank.
    fn pinned_rank(workers: &Option<Vec<WorkerId>>, dp_rank: Option<u32>) -> PyResult<Option<(u64, u32)>> {
        match (dp_rank, workers.as_deref()) {
            (None, _) => Ok(None),
            (Some(rank), Some([worker])) => Ok(Some((worker.0, rank))),
            (Some(_), _) => Err(PyValueError::new_err(
                "dp_rank pins one worker's rank: pass workers=[worker_id] with exactly one worker",
            )),
        }
    }

    fn spec(&self, worker: WorkerId) -> PyResult<WorkerSpec> {
        self.router
            .workers()
            .into_iter()
            .find(|spec| spec.worker == worker)
            .ok_or_else(|| refused(format!("unknown worker {}", worker.0)))
    }
}

#[pymethods]
impl PyRouter {
    #[new]
    #[pyo3(signature = (
        block_size = 16, *, hashing = "kv64", policy = "predicted_ttft", temperature = 0.0, prefill_scale = 1.0,
        decode_weight = 1.0, request_weight = 0.0, host_tier_weight = 0.75,
        disk_tier_weight = 0.25, request_ttl_s = 300.0, approx_ttl_s = 120.0,
        index_shards = 1, engine_cache_tokens = None, seed = None,
    ))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        block_size: u32,
        hashing: &str,
        policy: &str,
        temperature: f64,
        prefill_scale: f64,
        decode_weight: f64,
        request_weight: f64,
        host_tier_weight: f64,
        disk_tier_weight: f64,
        request_ttl_s: f64,
        approx_ttl_s: f64,
        index_shards: usize,
        engine_cache_tokens: Option<u64>,
        seed: Option<u64>,
    ) -> PyResult<PyRouter> {
        let seed = seed.unwrap_or_else(random_seed);
        let mut policy = parse_policy(policy)?;
        if let Some(tokens) = engine_cache_tokens {
            policy = policy
                .with_engine_cache_tokens(tokens, block_size)
                .map_err(|reason| PyValueError::new_err(format!("engine_cache_tokens {reason}")))?;
        }
        let config = RouterConfig {
            block_size,
            hash_scheme: parse_hashing(hashing)?,
            weights: CostWeights {
                prefill_scale,
                decode_weight,
                request_weight,
                host_tier_weight,
                disk_tier_weight,
                temperature,
            },
            request_ttl_ms: seconds_to_ms("request_ttl_s", request_ttl_s)?,
            approx_ttl_ms: seconds_to_ms("approx_ttl_s", approx_ttl_s)?,
            index_shards,
            room_seed: seed,
            rng_seed: seed.rotate_left(17) ^ 0x9e37_79b9_7f4a_7c15,
            policy,
            ..RouterConfig::default()
        };
        let hasher = BlockHasher::with_scheme(block_size as usize, config.hash_scheme).map_err(refused)?;
        let start = Instant::now();
        let clock: Arc<dyn Clock> = Arc::new(move || u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX));
        let router = Arc::new(Router::new(config, Arc::clone(&clock)).map_err(refused)?);
        let keys = Arc::new(RequestKeys::default());
        let mapper = MapperConfig::new(hasher);
        let background = Background::start(Arc::clone(&router), Arc::clone(&clock), Arc::clone(&keys), mapper)
            .map_err(|error| refused(format!("could not start the router's I/O threads: {error}")))?;
        Ok(PyRouter { router, clock, keys, mapper, streams: Mutex::new(HashMap::new()), background })
    }

    /// Tokens per KV block.
    #[getter]
    fn block_size(&self) -> u32 {
        self.router.config().block_size
    }

    /// Registers a worker owning DP ranks `start_rank..start_rank + dp_size`.
    #[pyo3(signature = (worker_id, dp_size, *, start_rank = 0, role = "both", bootstrap_host = None, bootstrap_port = None, dp_world_size = None))]
    #[allow(clippy::too_many_arguments)]
    fn add_worker(
        &self,
        worker_id: u64,
        dp_size: u32,
        start_rank: u32,
        role: &str,
        bootstrap_host: Option<String>,
        bootstrap_port: Option<u16>,
        dp_world_size: Option<u32>,
    ) -> PyResult<()> {
        let role = parse_role(role)?;
        if bootstrap_host.is_none() && bootstrap_port.is_some() {
            return Err(PyValueError::new_err("bootstrap_port without bootstrap_host"));
        }
        let spec = WorkerSpec {
            worker: WorkerId(worker_id),
            dp_start: start_rank,
            dp_size,
            dp_world_size,
            block_size: self.router.config().block_size,
            role,
            bootstrap: bootstrap_host.map(|host| BootstrapEndpoint { host, port: bootstrap_port }),
        };
        self.router.add_worker(spec).map_err(refused)
    }

    /// Unregisters a worker: its ranks leave every later decision, its subscription
    /// stops and what the index held of it is dropped.
    fn remove_worker(&self, worker_id: u64) -> PyResult<()> {
        let worker = WorkerId(worker_id);
        self.router.remove_worker(worker).map_err(refused)?;
        self.background.unsubscribe(worker);
        self.streams.lock().unwrap_or_else(|e| e.into_inner()).retain(|rank, _| rank.worker != worker);
        Ok(())
    }

    /// The registered workers, as dicts (`worker_id`, `dp_size`, `start_rank`,
    /// `dp_world_size`, `role`, `bootstrap_host`, `bootstrap_port`, `exact`).
    fn workers<'py>(&self, py: Python<'py>) -> PyResult<Vec<Bound<'py, PyDict>>> {
        let mut specs = self.router.workers();
        specs.sort_by_key(|spec| spec.worker);
        specs
            .into_iter()
            .map(|spec| {
                let dict = PyDict::new(py);
                dict.set_item("worker_id", spec.worker.0)?;
                dict.set_item("dp_size", spec.dp_size)?;
                dict.set_item("start_rank", spec.dp_start)?;
                dict.set_item("dp_world_size", spec.dp_world())?;
                dict.set_item("role", role_name(spec.role))?;
                dict.set_item("bootstrap_host", spec.bootstrap.as_ref().map(|b| b.host.clone()))?;
                dict.set_item("bootstrap_port", spec.bootstrap.as_ref().and_then(|b| b.port))?;
                dict.set_item("exact", self.router.is_exact(spec.worker).unwrap_or(false))?;
                Ok(dict)
            })
            .collect()
    }

    /// `(worker_id, dp_rank, overlap_blocks)` for a prompt; see `route` for the options.
    #[pyo3(signature = (token_ids, *, dry_run = false, workers = None, dp_rank = None, lora_name = None, request_id = None, output_tokens = 0))]
    #[allow(clippy::too_many_arguments)]
    fn best_worker(
        &self,
        py: Python<'_>,
        token_ids: &Bound<'_, PyAny>,
        dry_run: bool,
        workers: Option<Vec<u64>>,
        dp_rank: Option<u32>,
        lora_name: Option<String>,
        request_id: Option<String>,
        output_tokens: u32,
    ) -> PyResult<(u64, u32, u32)> {
        let decision = self.route(py, token_ids, dry_run, workers, dp_rank, lora_name, request_id, output_tokens)?;
        Ok((decision.inner.worker.0, decision.inner.dp_rank.0, decision.inner.overlap_blocks))
    }

    /// The full decision for a prompt (token ids: list, `array('I')` or NumPy array).
    /// Unless `dry_run`, the chosen rank is charged until `finish(request_id)` (or the
    /// router's `request_ttl_s`): under the caller's `request_id` if given, else under
    /// the router's id, `Decision.request_id`.
    #[pyo3(signature = (token_ids, *, dry_run = false, workers = None, dp_rank = None, lora_name = None, request_id = None, output_tokens = 0))]
    #[allow(clippy::too_many_arguments)]
    fn route(
        &self,
        py: Python<'_>,
        token_ids: &Bound<'_, PyAny>,
        dry_run: bool,
        workers: Option<Vec<u64>>,
        dp_rank: Option<u32>,
        lora_name: Option<String>,
        request_id: Option<String>,
        output_tokens: u32,
    ) -> PyResult<Decision> {
        let args = DecisionArgs { tokens: TokenIds::extract(token_ids)?, lora_name, workers: worker_ids(workers) };
        let pinned = PyRouter::pinned_rank(&args.workers, dp_rank)?;
        if !dry_run {
            self.check_new_key(&request_id)?;
        }
        let decision = self.decide(py, &args, dry_run, pinned, output_tokens)?;
        let request_id = self.record(py, decision.request, request_id)?;
        Ok(Decision { inner: decision, request_id })
    }

    /// A prefill rank (by overlap and prefill load) and a decode rank (by decode load)
    /// with a bootstrap room naming the prefill rank (`room % prefill_dp_size == rank`).
    #[pyo3(signature = (token_ids, *, dry_run = false, prefill_workers = None, decode_workers = None, same_rank = false, lora_name = None, request_id = None, output_tokens = 0))]
    #[allow(clippy::too_many_arguments)]
    fn route_disaggregated(
        &self,
        py: Python<'_>,
        token_ids: &Bound<'_, PyAny>,
        dry_run: bool,
        prefill_workers: Option<Vec<u64>>,
        decode_workers: Option<Vec<u64>>,
        same_rank: bool,
        lora_name: Option<String>,
        request_id: Option<String>,
        output_tokens: u32,
    ) -> PyResult<PdDecision> {
        let args =
            DecisionArgs { tokens: TokenIds::extract(token_ids)?, lora_name, workers: worker_ids(prefill_workers) };
        let decode_workers = worker_ids(decode_workers);
        if !dry_run {
            self.check_new_key(&request_id)?;
        }
        let options = PdOptions {
            prefill_workers: args.workers.as_deref(),
            decode_workers: decode_workers.as_deref(),
            same_rank,
            dry_run,
            output_tokens,
            excluded: &[],
        };
        let router = &self.router;
        let prompt = args.prompt();
        let decision = py.detach(|| router.route_disaggregated(prompt, &options)).map_err(refused)?;
        let request_id = self.record(py, decision.request(), request_id)?;
        Ok(PdDecision { inner: decision, request_id })
    }

    /// The request's prefill is done (first token out): its prompt no longer counts as
    /// queued prefill. False if the id is not in flight.
    fn prefill_done(&self, request_id: &Bound<'_, PyAny>) -> PyResult<bool> {
        let key = RequestKey::extract(request_id)?;
        Ok(self.resolve(&key).is_some_and(|id| self.router.prefill_done(id)))
    }

    /// The request is done or cancelled: its load is released. False if the id is not
    /// in flight (finished already, expired, or never charged).
    fn finish(&self, request_id: &Bound<'_, PyAny>) -> PyResult<bool> {
        let key = RequestKey::extract(request_id)?;
        let id = match &key {
            RequestKey::Caller(key) => self.keys.remove(key),
            RequestKey::Router(id) => Some(*id),
        };
        Ok(id.is_some_and(|id| self.router.finish(id)))
    }

    /// Requests charged and not finished.
    fn active_requests(&self) -> usize {
        self.router.active_requests()
    }

    /// Per `(worker_id, dp_rank)`: `{"prefill_tokens", "decode_blocks", "requests"}`.
    fn loads<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let out = PyDict::new(py);
        for (rank, load) in self.router.rank_loads() {
            let dict = PyDict::new(py);
            dict.set_item("prefill_tokens", load.prefill_tokens)?;
            dict.set_item("decode_blocks", load.decode_blocks)?;
            dict.set_item("requests", load.requests)?;
            out.set_item((rank.worker.0, rank.dp_rank.0), dict)?;
        }
        Ok(out)
    }

    /// Per `(worker_id, dp_rank)` with any, the leading blocks of the prompt it holds in
    /// device memory (`tier="host"` / `"disk"` for the lower tiers).
    #[pyo3(signature = (token_ids, *, lora_name = None, tier = "device"))]
    fn overlaps<'py>(
        &self,
        py: Python<'py>,
        token_ids: &Bound<'py, PyAny>,
        lora_name: Option<String>,
        tier: &str,
    ) -> PyResult<Bound<'py, PyDict>> {
        let tier = match tier {
            "device" => StorageTier::Device,
            "host" => StorageTier::Host,
            "disk" => StorageTier::Disk,
            other => {
                return Err(PyValueError::new_err(format!("tier must be 'device', 'host' or 'disk', not {other:?}")))
            }
        };
        let args = DecisionArgs { tokens: TokenIds::extract(token_ids)?, lora_name, workers: None };
        let router = &self.router;
        let prompt = args.prompt();
        let (hits, _) = py.detach(|| router.overlaps(prompt)).map_err(refused)?;
        let out = PyDict::new(py);
        for (hit_tier, rank, blocks) in hits {
            if hit_tier == tier {
                out.set_item((rank.worker.0, rank.dp_rank.0), blocks)?;
            }
        }
        Ok(out)
    }

    /// Applies one engine `EventBatch` of `(worker_id, dp_rank)`: its msgpack payload
    /// (`bytes`, as the engine publishes it) or the engine's event objects / plain lists
    /// and dicts of the same shape. Applied before this returns; the next decision sees it.
    fn apply_events(&self, py: Python<'_>, worker_id: u64, dp_rank: u32, batch: &Bound<'_, PyAny>) -> PyResult<()> {
        let spec = self.spec(WorkerId(worker_id))?;
        if !spec.owns(DpRank(dp_rank)) {
            return Err(refused(format!(
                "dp rank {dp_rank} is outside worker {worker_id}'s ranks {}..{}",
                spec.dp_start,
                u64::from(spec.dp_start) + u64::from(spec.dp_size)
            )));
        }
        let encoded;
        let payload: &[u8] = match batch.cast::<PyBytes>() {
            Ok(bytes) => bytes.as_bytes(),
            Err(_) => {
                let mut out = Vec::new();
                encode_object(batch, &mut out)?;
                encoded = out;
                &encoded
            }
        };
        let rank = RankKey { worker: WorkerId(worker_id), dp_rank: DpRank(dp_rank) };
        let sink: &dyn IngestSink = self.router.as_ref();
        let mapper = self.mapper;
        let streams = &self.streams;
        py.detach(|| {
            let mut streams = streams.lock().unwrap_or_else(|e| e.into_inner());
            let stream = streams.entry(rank).or_insert_with(|| {
                EngineRankStream::new(RankStreamConfig {
                    rank,
                    worker_ranks: spec.dp_start..spec.dp_start.saturating_add(spec.dp_size),
                    mapper,
                    limits: DecodeLimits::default(),
                    tracker: TrackerConfig::without_replay(),
                })
            });
            stream.apply_payload(payload, sink)
        })
        .map_err(refused)
    }

    /// Subscribes to a worker's ZeroMQ KV-event publishers (vLLM's or SGLang's
    /// `--kv-events-config` endpoint; rank `r` of the worker at port + r), decoded on the
    /// router's I/O threads. `replay` is the engine's replay endpoint, if it has one.
    #[pyo3(signature = (worker_id, endpoint, *, replay = None, dp_size = None, bind = false, topic = "", engine = "vllm", page_size = None))]
    #[allow(clippy::too_many_arguments)]
    fn subscribe_engine_events(
        &self,
        worker_id: u64,
        endpoint: &str,
        replay: Option<&str>,
        dp_size: Option<u32>,
        bind: bool,
        topic: &str,
        engine: &str,
        page_size: Option<u32>,
    ) -> PyResult<()> {
        let spec = self.spec(WorkerId(worker_id))?;
        let dp_size = dp_size.unwrap_or(spec.dp_size);
        if dp_size == 0 || dp_size > spec.dp_size {
            return Err(refused(format!("dp_size {dp_size}: worker {worker_id} has {} ranks", spec.dp_size)));
        }
        let endpoint = if bind { EngineEndpoint::bind(endpoint) } else { EngineEndpoint::connect(endpoint) }
            .map_err(|error| refused(format!("endpoint {endpoint:?}: {error}")))?;
        let replay = replay
            .map(|r| EngineEndpoint::connect(r).map_err(|error| refused(format!("replay endpoint {r:?}: {error}"))))
            .transpose()?;
        let engine = match engine {
            "vllm" => EngineKind::Vllm,
            "sglang" => EngineKind::Sglang,
            other => return Err(PyValueError::new_err(format!("engine must be 'vllm' or 'sglang', not {other:?}"))),
        };
        let source = EngineSource {
            worker: WorkerId(worker_id),
            ranks: spec.dp_start..spec.dp_start + dp_size,
            endpoint,
            replay,
            topic: topic.to_owned(),
            engine,
            page_size,
        };
        self.background.subscribe(source).map_err(refused)
    }

    /// Stops a worker's engine subscription (what it applied stays). False if none.
    fn unsubscribe_engine_events(&self, worker_id: u64) -> bool {
        self.background.unsubscribe(WorkerId(worker_id))
    }

    /// Listens for QUIC KV-event publishers (`kvroute bridge`, `kvroute publish`) on
    /// `address`, with mutual TLS from the files `kvroute certs` writes (`ca`, `cert`,
    /// `key`: the router's), or, with none of them, insecurely on a loopback address
    /// only. Returns the bound address (`port 0` picks a free one).
    #[pyo3(signature = (address = "127.0.0.1:0", *, ca = None, cert = None, key = None))]
    fn listen_events(
        &self,
        address: &str,
        ca: Option<std::path::PathBuf>,
        cert: Option<std::path::PathBuf>,
        key: Option<std::path::PathBuf>,
    ) -> PyResult<String> {
        let listen: SocketAddr =
            address.parse().map_err(|error| PyValueError::new_err(format!("address {address:?}: {error}")))?;
        let tls = match (ca, cert, key) {
            (None, None, None) => TlsMode::InsecureLoopback,
            (Some(ca), Some(cert), Some(key)) => TlsMode::Mutual(TlsFiles { ca, cert, key }),
            _ => return Err(PyValueError::new_err("mutual TLS needs all of ca, cert and key (or none, on loopback)")),
        };
        let sink: Arc<dyn IngestSink> = Arc::clone(&self.router) as Arc<dyn IngestSink>;
        self.background.listen(listen, tls, sink).map(|addr| addr.to_string()).map_err(refused)
    }

    /// Counters of the event paths: `apply_events` batches, engine subscriptions (per
    /// rank: connected, last seq) and QUIC listeners.
    fn ingest_stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let out = PyDict::new(py);
        let applied = PyDict::new(py);
        {
            let streams = self.streams.lock().unwrap_or_else(|e| e.into_inner());
            let mut batches = 0;
            let mut dropped = 0;
            let mut events = 0;
            for stream in streams.values() {
                let counters = stream.counters();
                batches += counters.batches_applied;
                events += counters.events_applied;
                dropped += counters.dropped.iter().map(|(_, n)| n).sum::<u64>();
            }
            applied.set_item("batches", batches)?;
            applied.set_item("events", events)?;
            applied.set_item("dropped", dropped)?;
        }
        out.set_item("apply_events", applied)?;
        let snapshot = self.background.engine_snapshot();
        let engine = PyDict::new(py);
        engine.set_item("messages", snapshot.stream.messages)?;
        engine.set_item("batches", snapshot.stream.batches_applied)?;
        engine.set_item("events", snapshot.stream.events_applied)?;
        engine.set_item("dropped", snapshot.stream.dropped.iter().map(|(_, n)| n).sum::<u64>())?;
        engine.set_item("gaps", snapshot.seq.gaps)?;
        let ranks = snapshot
            .ranks
            .iter()
            .map(|rank| {
                let dict = PyDict::new(py);
                dict.set_item("worker_id", rank.rank.worker.0)?;
                dict.set_item("dp_rank", rank.rank.dp_rank.0)?;
                dict.set_item("connected", rank.connected)?;
                dict.set_item("last_seq", rank.last_seq)?;
                Ok(dict)
            })
            .collect::<PyResult<Vec<_>>>()?;
        engine.set_item("ranks", ranks)?;
        out.set_item("engine", engine)?;
        let quic = PyDict::new(py);
        for (name, value) in self.background.quic_counters() {
            quic.set_item(name, value)?;
        }
        out.set_item("quic", quic)?;
        Ok(out)
    }

    /// Benchmark aid (bench/python/best_worker_latency.py): times `iterations` of the
    /// same decision as `best_worker(token_ids, dry_run=dry_run)` in Rust, with no Python
    /// in the loop, and returns each one's nanoseconds. Charged decisions are finished
    /// after their timing, so every one starts from the same loads.
    #[pyo3(signature = (token_ids, iterations, *, dry_run = true))]
    fn _time_decisions(
        &self,
        py: Python<'_>,
        token_ids: &Bound<'_, PyAny>,
        iterations: usize,
        dry_run: bool,
    ) -> PyResult<Vec<u64>> {
        let args = DecisionArgs { tokens: TokenIds::extract(token_ids)?, lora_name: None, workers: None };
        let router = &self.router;
        let prompt = args.prompt();
        let options = RouteOptions { dry_run, ..RouteOptions::default() };
        py.detach(|| {
            let mut times = Vec::with_capacity(iterations);
            for _ in 0..iterations {
                let start = Instant::now();
                let decision = router.best_worker(prompt, &options);
                times.push(u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX));
                if let Some(id) = decision.map_err(refused)?.request {
                    router.finish(id);
                }
            }
            Ok(times)
        })
    }

    fn __repr__(&self) -> String {
        let config = self.router.config();
        format!("Router(block_size={}, workers={})", config.block_size, self.router.workers().len())
    }
}
