//! The soak test of `kvroute serve` (issue 14 item 7): a real daemon process under hours
//! (or minutes) of churning publishers, routing load and bad traffic, sampled all along
//! and checked for exactness at the end. Run it with the `soak` binary; it is not a CI
//! test.
//!
//! ```text
//! soak (this process)                                   kvroute serve (child process)
//!   fleet: exact-mode engines, each a publisher --QUIC, mTLS-->  ingest --> index
//!     + reference model; churn restarts / crashes /
//!     parts them past the grace                                   (approximate-mode
//!   clients: /v1/route, prefill_done, finish --HTTP-------->  router   workers: never publish)
//!     a routed exact worker's engine serves the prompt
//!   bad traffic: HTTP garbage, slow headers, ...  --HTTP-------->
//!                random datagrams, bad certificates --UDP/QUIC-->
//!   sampler: VmRSS, /healthz (timed), /metrics, every --sample-secs
//!   end: settle, /v1/overlaps of every chain == reference; verdict
//! ```
//!
//! Phases of [`run`]: certificates (`kvroute certs`) and the daemon ([`daemon`]); every
//! publisher connected and its ranks dumped ([`fleet`], [`engine`]); then, for
//! `--minutes`, the tasks: route clients ([`load`], over [`api`] and [`crate::http_client`],
//! prompts from [`workload`]), churn ([`churn`]), bad traffic ([`bad_http`],
//! [`bad_quic`]) and the sampler ([`sampler`], parsing the page with `kvroute_core::metrics_page`); then load stops,
//! every engine is up, the ingest settles and the index is compared ([`exactness`]); the
//! daemon is stopped with SIGTERM, and [`verdict`] prints the summary and the failures.
//! [`tally`] holds the soak's own counts; its randomness is [`crate::rng`].

pub mod api;
pub mod bad_http;
pub mod bad_quic;
pub mod churn;
pub mod daemon;
pub mod engine;
pub mod exactness;
pub mod fleet;
pub mod load;
pub mod sampler;
pub mod tally;
pub mod verdict;
pub mod workload;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kvroute_core::metrics_page::MetricsPage;
use tokio::sync::watch;

use bad_http::BadHttpContext;
use bad_quic::{BadQuicContext, RogueCerts};
use churn::ChurnContext;
use daemon::{Daemon, DaemonSpec, Tls};
use fleet::{Fleet, FleetSpec};
use load::ClientContext;
use sampler::SamplerContext;
use tally::Tally;
use workload::Workload;

/// Largest request body the daemon accepts in the soak (the oversize requests go one over).
const MAX_BODY_BYTES: u64 = 256 << 10;
/// Longest wait for the daemon to start, the engines to switch to exact mode, the
/// ingest to settle, and the exactness check to pass.
const PATIENCE: Duration = Duration::from_secs(60);

/// Everything the soak is told (the `soak` binary's flags).
#[derive(Clone, Debug)]
pub struct SoakConfig {
    pub duration: Duration,
    pub kvroute: PathBuf,
    pub sample_every: Duration,
    pub warmup: Duration,
    pub rss_growth_mb: f64,
    pub rss_max_mb: f64,
    pub healthz_limit: Duration,
    pub max_healthz_misses: usize,
    pub exact_workers: u64,
    pub approx_workers: u64,
    pub dp_size: u32,
    pub block_size: u32,
    pub cache_blocks: usize,
    pub conversations: usize,
    pub distinct_checked: usize,
    pub clients: usize,
    pub routes_per_sec: f64,
    pub churn_every: Duration,
    pub publisher_grace: Duration,
    pub header_timeout: Duration,
    pub approx_ttl: Duration,
    pub approx_max_blocks: u64,
    pub bad_every: Duration,
    pub insecure: bool,
    pub seed: u64,
    pub daemon_args: Vec<String>,
}

/// Waits until every publisher is connected and each of its ranks took its first dump
/// (a worker switches to exact mode only at its first event or non-empty dump).
async fn wait_connected(http: std::net::SocketAddr, publishers: u64, ranks: u64) -> Result<(), String> {
    let deadline = Instant::now() + PATIENCE;
    let mut client = crate::http_client::HttpClient::new(http);
    loop {
        let x = api::metrics(&mut client).await?;
        let open = x.value("kvroute_ingest_connections_open", &[]);
        let dumps = x.value("kvroute_ingest_dumps_total", &[]);
        if open >= publishers && dumps >= ranks {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "after {PATIENCE:?}: {open} of {publishers} publishers connected, {dumps} of {ranks} rank dumps taken"
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs the soak; `Ok(true)` is a PASS. `Err` is a failure to set the run up.
pub async fn run(config: SoakConfig) -> Result<bool, String> {
    let dir = tempfile::Builder::new().prefix("kvroute-soak-").tempdir().map_err(|e| e.to_string())?.keep();
    let exact: Vec<u64> = (0..config.exact_workers).collect();
    let approx: Vec<u64> = (config.exact_workers..config.exact_workers + config.approx_workers).collect();
    let victim = *exact.first().ok_or("--exact-workers must be at least 1")?;
    let rogue_worker = 1000 + config.exact_workers + config.approx_workers;
    let (tls, rogue) = if config.insecure {
        (Tls::InsecureLoopback, None)
    } else {
        let certs = dir.join("certs");
        let foreign = dir.join("foreign-ca");
        daemon::make_certs(&config.kvroute, &certs, &format!("0-{},{rogue_worker}", config.exact_workers - 1), &[])?;
        daemon::make_certs(&config.kvroute, &foreign, &victim.to_string(), &["--no-router"])?;
        (Tls::Mutual(certs.clone()), Some(RogueCerts { dir: certs, rogue_worker, foreign_dir: foreign }))
    };
    let spec = DaemonSpec {
        kvroute: config.kvroute.clone(),
        dir: dir.clone(),
        tls: tls.clone(),
        workers: exact.iter().chain(&approx).map(|&w| (w, config.dp_size)).collect(),
        block_size: config.block_size,
        publisher_grace: config.publisher_grace,
        header_timeout: config.header_timeout,
        max_body_bytes: MAX_BODY_BYTES,
        approx_ttl: config.approx_ttl,
        approx_max_blocks: config.approx_max_blocks,
        request_ttl: Duration::from_secs(60),
        extra_args: config.daemon_args.clone(),
    };
    let mut daemon = Daemon::spawn(&spec)?;
    println!("run directory  {}", dir.display());
    println!("daemon log     {}", daemon.log_path.display());
    println!("daemon         {}", daemon.command);
    if config.insecure {
        println!("note           --insecure: the daemon runs with --insecure-loopback; certificate rejection is NOT exercised");
    }
    daemon.wait_healthy(PATIENCE).await?;
    let (http, ingest) = (daemon.http, daemon.ingest);

    let workload =
        Arc::new(Workload::new(config.block_size, config.conversations, config.seed, config.distinct_checked)?);
    let fleet_spec = FleetSpec {
        ingest,
        tls,
        exact: exact.clone(),
        approx: approx.clone(),
        dp_size: config.dp_size,
        capacity_blocks: config.cache_blocks,
    };
    let fleet = Arc::new(Fleet::new(fleet_spec));
    for &worker in &exact {
        fleet.bring_up(worker)?;
    }
    wait_connected(http, config.exact_workers, config.exact_workers * u64::from(config.dp_size)).await?;
    println!(
        "fleet          {} exact-mode workers (publishers), {} approximate-mode, dp_size {}; {} clients at {} routes/s; \
         churn every {:?}, grace {:?}",
        exact.len(),
        approx.len(),
        config.dp_size,
        config.clients,
        config.routes_per_sec,
        config.churn_every,
        config.publisher_grace
    );

    let tally = Arc::new(Tally::default());
    let (stop_tx, stop) = watch::channel(false);
    let started = Instant::now();
    let sampler_context = SamplerContext { http, pid: daemon.pid, healthz_limit: config.healthz_limit, started };
    let sampler = tokio::spawn(sampler::run_sampler(sampler_context.clone(), config.sample_every, stop.clone()));
    let mut tasks = tokio::task::JoinSet::new();
    let client = ClientContext {
        http,
        workload: workload.clone(),
        fleet: fleet.clone(),
        tally: tally.clone(),
        seed: config.seed,
    };
    let rate = config.routes_per_sec / config.clients.max(1) as f64;
    for i in 0..config.clients as u64 {
        tasks.spawn(load::run_client(client.clone(), i, rate, stop.clone()));
    }
    let churn = ChurnContext {
        http,
        fleet: fleet.clone(),
        workload: workload.clone(),
        tally: tally.clone(),
        grace: config.publisher_grace,
        seed: config.seed,
    };
    tasks.spawn(churn::run_churn(churn, config.churn_every, stop.clone()));
    let bad_http = BadHttpContext {
        http,
        tally: tally.clone(),
        max_body_bytes: MAX_BODY_BYTES,
        header_timeout: config.header_timeout,
        seed: config.seed,
    };
    tasks.spawn(bad_http::run_bad_http(bad_http, config.bad_every, stop.clone()));
    let bad_quic = BadQuicContext {
        ingest,
        tally: tally.clone(),
        certs: rogue,
        victim,
        dp_size: config.dp_size,
        seed: config.seed,
    };
    tasks.spawn(bad_quic::run_bad_quic(bad_quic, config.bad_every, stop.clone()));

    let mut died = None;
    while started.elapsed() < config.duration {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if let Some(status) = daemon.exit_status() {
            println!("the daemon exited: {status}");
            died = Some(status);
            break;
        }
    }
    let duration = started.elapsed();
    println!("stopping the load (churn completes its current action)");
    let _ = stop_tx.send(true);
    while tasks.join_next().await.is_some() {}
    let (mut rows, scrape_errors) = sampler.await.map_err(|e| e.to_string())?;

    let mut exactness = exactness::Exactness::default();
    let mut last = MetricsPage::default();
    if died.is_none() {
        for engine in fleet.engines() {
            if !engine.is_up() {
                fleet.bring_up(engine.worker)?;
            }
        }
        match exactness::settle(http, PATIENCE).await {
            Ok(took) => println!("ingest settled in {:.1} s", took.as_secs_f64()),
            Err(error) => tally.fail(error),
        }
        let mut chains: Vec<Vec<kvroute_core::BlockHash>> = workload.every_turn().map(<[_]>::to_vec).collect();
        chains.extend(workload.recent_distinct());
        exactness = exactness::check(http, &fleet, chains, PATIENCE).await;
        let mut client = crate::http_client::HttpClient::new(http);
        match sampler::sample(&sampler_context, &mut client).await {
            Ok(row) => rows.push(row),
            Err(error) => tally.fail(format!("final sample: {error}")),
        }
        last = api::metrics(&mut client).await.unwrap_or_else(|error| {
            tally.fail(format!("final scrape: {error}"));
            MetricsPage::default()
        });
        died = daemon.exit_status();
    }
    let reference_held = fleet.engines().iter().map(|e| e.held_pairs()).sum();
    let reference_anomalies = fleet.engines().iter().map(|e| e.reference_anomalies()).sum();
    fleet.shutdown().await;
    let log_path = daemon.log_path.display().to_string();
    let stopped = daemon.stop(Duration::from_secs(15)).await;

    let evidence = verdict::Evidence {
        duration,
        warmup: config.warmup,
        rss_growth_mb: config.rss_growth_mb,
        rss_max_mb: config.rss_max_mb,
        max_healthz_misses: config.max_healthz_misses,
        approx_max_blocks: config.approx_max_blocks,
        approx_ranks: config.approx_workers * u64::from(config.dp_size),
        dp_size: config.dp_size,
        insecure: config.insecure,
        rows: &rows,
        scrape_errors: &scrape_errors,
        last: &last,
        tally: &tally,
        exactness: &exactness,
        reference_held,
        reference_anomalies,
        died,
        stopped,
        log_path,
    };
    let failures = verdict::judge(&evidence);
    if failures.is_empty() {
        println!("\nPASS");
    } else {
        println!("\nFAIL");
        for failure in &failures {
            println!("  - {failure}");
        }
    }
    Ok(failures.is_empty())
}

/// Waits `interval`, or until the run stops: `false` once it has (the periodic tasks' loop
/// condition).
pub(crate) async fn tick_or_stop(interval: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(interval) => {}
        _ = stop.changed() => return false,
    }
    !*stop.borrow()
}
