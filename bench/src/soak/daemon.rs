//! The daemon under test: `kvroute serve` as a child process ([`Daemon`]), its
//! certificates ([`make_certs`], by `kvroute certs`), its memory ([`rss_kib`]) and its
//! orderly stop.
//!
//! Shape: [`Daemon::spawn`] picks free loopback ports (an HTTP TCP port, an ingest UDP
//! port), starts `kvroute serve` with the soak's settings ([`DaemonSpec`]: registered
//! workers, short publisher grace and header timeout, bounded approximate mode, an index
//! snapshot written every [`SNAPSHOT_INTERVAL`] to `index.snapshot`) and its
//! stdout and stderr appended to `daemon.log` in the run's directory, then
//! [`Daemon::wait_healthy`] polls `GET /healthz`. [`Daemon::exit_status`] tells whether
//! it died; [`Daemon::stop`] sends SIGTERM (through `kill(1)`: no `unsafe` here) and
//! waits for a clean exit.
//!
//! TLS: with [`Tls::Mutual`] the daemon gets `--ca/--cert/--key` from a directory written
//! by `kvroute certs --workers ...` (one publisher certificate per worker, so each
//! publisher may publish only its own worker's ranks); with [`Tls::InsecureLoopback`] it
//! runs with `--insecure-loopback`.

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::http_client::HttpClient;

/// How often the daemon writes its index snapshot during the run (exercising the export
/// beside the churn; `verdict` checks the writes happened and none failed).
pub const SNAPSHOT_INTERVAL: &str = "5s";

/// How the ingest authenticates publishers.
#[derive(Clone, Debug)]
pub enum Tls {
    /// Mutual TLS with the files of `kvroute certs` in this directory.
    Mutual(PathBuf),
    /// `--insecure-loopback`: no certificates.
    InsecureLoopback,
}

/// The daemon's settings, beyond its ports.
#[derive(Clone, Debug)]
pub struct DaemonSpec {
    /// The `kvroute` binary.
    pub kvroute: PathBuf,
    /// Where `daemon.log` goes.
    pub dir: PathBuf,
    pub tls: Tls,
    /// `(worker_id, dp_size)` registered at start.
    pub workers: Vec<(u64, u32)>,
    pub block_size: u32,
    pub publisher_grace: Duration,
    pub header_timeout: Duration,
    pub max_body_bytes: u64,
    pub approx_ttl: Duration,
    pub approx_max_blocks: u64,
    pub request_ttl: Duration,
    /// More `kvroute serve` arguments, passed as given.
    pub extra_args: Vec<String>,
}

/// A running `kvroute serve`; see the module docs.
pub struct Daemon {
    child: Child,
    pub pid: u32,
    pub http: SocketAddr,
    pub ingest: SocketAddr,
    pub log_path: PathBuf,
    /// The command line, for the report.
    pub command: String,
}

/// Runs `kvroute certs --out <dir> --workers <workers>` (plus `extra`), e.g. `--no-router`.
pub fn make_certs(kvroute: &Path, dir: &Path, workers: &str, extra: &[&str]) -> Result<(), String> {
    let output = Command::new(kvroute)
        .args(["certs", "--out"])
        .arg(dir)
        .args(["--workers", workers])
        .args(extra)
        .output()
        .map_err(|e| format!("running {} certs: {e}", kvroute.display()))?;
    if !output.status.success() {
        return Err(format!(
            "{} certs failed ({}): {}",
            kvroute.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    Ok(())
}

/// A duration as `kvroute serve` reads it.
fn human(duration: Duration) -> String {
    format!("{}ms", duration.as_millis())
}

/// A loopback address with a TCP (or UDP) port free a moment ago.
fn free_port(udp: bool) -> Result<SocketAddr, String> {
    let any: SocketAddr = ([127, 0, 0, 1], 0).into();
    let addr = if udp {
        UdpSocket::bind(any).and_then(|s| s.local_addr())
    } else {
        TcpListener::bind(any).and_then(|s| s.local_addr())
    };
    addr.map_err(|e| format!("finding a free port: {e}"))
}

impl Daemon {
    /// Starts `kvroute serve` (see the module docs). Does not wait for it to listen.
    pub fn spawn(spec: &DaemonSpec) -> Result<Daemon, String> {
        if !spec.kvroute.is_file() {
            return Err(format!(
                "no kvroute binary at {}: build it first with `cargo build --release -p kvroute-net --bin kvroute` \
                 (or give --kvroute PATH)",
                spec.kvroute.display()
            ));
        }
        let http = free_port(false)?;
        let ingest = free_port(true)?;
        let mut args: Vec<String> = vec![
            "serve".into(),
            format!("--http-listen={http}"),
            format!("--ingest-listen={ingest}"),
            format!("--publisher-grace={}", human(spec.publisher_grace)),
            format!("--http-header-timeout={}", human(spec.header_timeout)),
            format!("--max-body-bytes={}", spec.max_body_bytes),
            format!("--block-size={}", spec.block_size),
            format!("--approx-ttl={}", human(spec.approx_ttl)),
            format!("--approx-max-blocks={}", spec.approx_max_blocks),
            format!("--request-ttl={}", human(spec.request_ttl)),
            format!("--snapshot-path={}", spec.dir.join("index.snapshot").display()),
            format!("--snapshot-interval={SNAPSHOT_INTERVAL}"),
            "--shutdown-grace=5s".into(),
            "--log-filter=info".into(),
        ];
        match &spec.tls {
            Tls::Mutual(dir) => {
                for (flag, file) in [("ca", "ca.pem"), ("cert", "router.pem"), ("key", "router.key")] {
                    args.push(format!("--{flag}={}", dir.join(file).display()));
                }
            }
            Tls::InsecureLoopback => args.push("--insecure-loopback".into()),
        }
        for &(worker, dp_size) in &spec.workers {
            args.push(format!("--worker=worker_id={worker},dp_size={dp_size}"));
        }
        args.extend(spec.extra_args.iter().cloned());
        let log_path = spec.dir.join("daemon.log");
        let log = std::fs::File::create(&log_path).map_err(|e| format!("{}: {e}", log_path.display()))?;
        let log_err = log.try_clone().map_err(|e| format!("{}: {e}", log_path.display()))?;
        let child = Command::new(&spec.kvroute)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(|e| format!("starting {}: {e}", spec.kvroute.display()))?;
        let command = format!("{} {}", spec.kvroute.display(), args.join(" "));
        Ok(Daemon { pid: child.id(), child, http, ingest, log_path, command })
    }

    /// Waits until `GET /healthz` answers 200, at most `limit`.
    pub async fn wait_healthy(&mut self, limit: Duration) -> Result<(), String> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.exit_status() {
                return Err(format!("kvroute serve exited at start ({status}); see {}", self.log_path.display()));
            }
            let last = match HttpClient::new(self.http).get("/healthz").await {
                Ok(response) if response.status == 200 => return Ok(()),
                Ok(response) => format!("status {}", response.status),
                Err(error) => error,
            };
            if Instant::now() > deadline {
                return Err(format!("kvroute serve not healthy after {limit:?}: {last}"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `Some` once the process has exited.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// SIGTERM, then waits up to `limit` for the exit (SIGKILL after that).
    pub async fn stop(mut self, limit: Duration) -> Result<ExitStatus, String> {
        if let Some(status) = self.exit_status() {
            return Ok(status);
        }
        let sent = Command::new("kill").args(["-TERM", &self.pid.to_string()]).status();
        if !sent.as_ref().is_ok_and(|s| s.success()) {
            let _ = self.child.kill();
            return Err(format!("could not send SIGTERM to {} ({sent:?}); killed it", self.pid));
        }
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.exit_status() {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return Err(format!("kvroute serve did not exit within {limit:?} of SIGTERM; killed it"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // A soak that fails half-way must not leave the daemon running.
        if self.exit_status().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Resident memory of process `pid` in KiB (`VmRSS` of `/proc/<pid>/status`).
pub fn rss_kib(pid: u32) -> Result<u64, String> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .ok_or_else(|| format!("{path} has no VmRSS line"))
}
