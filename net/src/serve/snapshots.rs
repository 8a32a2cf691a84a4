//! The seam between the daemon and index snapshot files: restore at start, write
//! periodically, write a final one at shutdown. Everything here is a no-op unless
//! `snapshot_path` is set.
//!
//! A snapshot holds the worker registry, every exact rank's blocks per tier and the
//! rank's ingest cursor (publisher incarnation, last applied sequence number). A rank's
//! cursor is read before its blocks are exported and again after, so the blocks hold
//! every event up to the first and none past the second: after a restart the publishers
//! resume after the first, and the events up to the second, which the blocks may hold
//! already, are applied as replays (idempotent, counted in the index's
//! `snapshot_replays`, not as duplicate stores or unknown removals). A publisher whose
//! ring no longer covers the cursor sends a dump instead. Corrupt, truncated or
//! foreign files are ignored with a warning (`read_snapshot_file`), never trusted.
//!
//! [`SnapshotStatus`] keeps the last snapshot's size and time (restored or written) and
//! the write counts, for `/metrics`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use kvroute_core::route::Router;
use kvroute_core::snapshot::CursorState;
use kvroute_core::RankKey;
use tokio::task::JoinHandle;

use super::config::ServeConfig;
use super::error::ServeError;
use crate::snapshot_file::{read_snapshot_file, write_snapshot_file};
use crate::transport::RankCursorState;

/// Reads one rank's ingest cursor now; a snapshot reads each rank's before and after
/// exporting it.
pub type CursorSource = Arc<dyn Fn(RankKey) -> Option<RankCursorState> + Send + Sync>;

/// The last snapshot (restored or written) and the writes so far; Relaxed by design
/// (independent gauges and counts, read for `/metrics` only).
#[derive(Debug, Default)]
pub struct SnapshotStatus {
    /// Size of the last snapshot file, in bytes (0: none yet).
    pub bytes: AtomicU64,
    /// When the last snapshot was taken, in ms since the Unix epoch (0: none yet).
    pub taken_at_ms: AtomicU64,
    /// Snapshots written.
    pub writes: AtomicU64,
    /// Snapshot writes that failed.
    pub failures: AtomicU64,
}

impl SnapshotStatus {
    fn note(&self, bytes: usize, taken_at_ms: u64) {
        self.bytes.store(bytes as u64, Ordering::Relaxed);
        self.taken_at_ms.store(taken_at_ms, Ordering::Relaxed);
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or(Duration::ZERO).as_millis() as u64
}

/// Restores the router's index from `config.snapshot`'s file, if one is configured and
/// exists and is sound; returns the restored ranks' cursors for the ingest to resume
/// from. Called after the configured workers are registered. A bad file is logged and
/// ignored: the router starts empty and publishers send dumps.
pub fn restore(
    config: &ServeConfig,
    router: &Router,
    status: &SnapshotStatus,
) -> Result<Vec<RankCursorState>, ServeError> {
    let Some(settings) = &config.snapshot else { return Ok(Vec::new()) };
    let started = std::time::Instant::now();
    let mapped = match read_snapshot_file(&settings.path) {
        Ok(Some(mapped)) => mapped,
        Ok(None) => {
            tracing::info!(path = %settings.path.display(), "no usable snapshot: starting empty");
            return Ok(Vec::new());
        }
        Err(error) => {
            tracing::warn!(path = %settings.path.display(), %error, "cannot read the snapshot: starting empty");
            return Ok(Vec::new());
        }
    };
    match router.restore_snapshot(&mapped.view()) {
        Ok(report) => {
            status.note(mapped.len(), mapped.view().meta().taken_at_ms);
            tracing::info!(
                path = %settings.path.display(),
                bytes = mapped.len(),
                workers_added = report.workers_added,
                sections = report.sections_restored,
                blocks = report.blocks_restored,
                skipped = report.skipped.len(),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "snapshot restored"
            );
            Ok(report
                .cursors
                .into_iter()
                .map(|(rank, c)| RankCursorState {
                    rank,
                    incarnation: c.incarnation,
                    applied_seq: c.applied_seq,
                    settled_seq: c.settled_seq,
                })
                .collect())
        }
        Err(error) => {
            tracing::warn!(path = %settings.path.display(), %error, "snapshot not restored: starting empty");
            Ok(Vec::new())
        }
    }
}

/// Starts writing snapshots every `config.snapshot_interval`; `None` when not configured.
pub fn start_periodic(
    config: &ServeConfig,
    router: Arc<Router>,
    cursors: CursorSource,
    status: Arc<SnapshotStatus>,
) -> Option<JoinHandle<()>> {
    let settings = config.snapshot.clone()?;
    Some(tokio::spawn(async move {
        let mut ticks = tokio::time::interval(settings.interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await; // the first tick is immediate; the index was just restored
        loop {
            ticks.tick().await;
            let written = write_now(&settings.path, Arc::clone(&router), Arc::clone(&cursors), &status).await;
            if let Err(error) = written {
                tracing::warn!(path = %settings.path.display(), %error, "periodic snapshot failed");
            }
        }
    }))
}

/// Writes the final snapshot at shutdown (after the HTTP server and the ingest stopped),
/// with the cursors read just before the ingest stopped.
pub async fn write_final(
    config: &ServeConfig,
    router: Arc<Router>,
    cursors: CursorSource,
    status: &SnapshotStatus,
) -> Result<(), ServeError> {
    let Some(settings) = &config.snapshot else { return Ok(()) };
    write_now(&settings.path, router, cursors, status)
        .await
        .map_err(|error| ServeError::Io { action: "write the final snapshot", error })
}

/// Encodes and writes a snapshot on a blocking thread (export takes the index's writer
/// lock per rank; the file write fsyncs), and notes it in `status`.
async fn write_now(
    path: &std::path::Path,
    router: Arc<Router>,
    cursors: CursorSource,
    status: &SnapshotStatus,
) -> std::io::Result<()> {
    let path = path.to_path_buf();
    let task = tokio::task::spawn_blocking(move || {
        let started = std::time::Instant::now();
        let taken_at_ms = now_ms();
        let mut bytes = Vec::new();
        // Asked before and after each rank's export (see `Router::encode_snapshot`).
        let cursor_of = |rank| cursors(rank).map(|c| CursorState::exact(c.incarnation, c.applied_seq));
        router.encode_snapshot(taken_at_ms, cursor_of, &mut bytes);
        let len = bytes.len();
        let written = write_snapshot_file(&path, bytes)?;
        tracing::info!(
            path = %path.display(),
            bytes = len,
            backend = ?written,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "snapshot written"
        );
        Ok((len, taken_at_ms))
    });
    let written = task.await.map_err(|join| std::io::Error::other(join.to_string())).and_then(|r| r);
    match written {
        Ok((len, taken_at_ms)) => {
            status.note(len, taken_at_ms);
            status.writes.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
        Err(error) => {
            status.failures.fetch_add(1, Ordering::Relaxed);
            Err(error)
        }
    }
}

/// Age of the last snapshot now, in seconds; `None` before any.
pub fn snapshot_age_seconds(status: &SnapshotStatus) -> Option<f64> {
    let taken_at = status.taken_at_ms.load(Ordering::Relaxed);
    (taken_at > 0).then(|| now_ms().saturating_sub(taken_at) as f64 / 1000.0)
}
