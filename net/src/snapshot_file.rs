//! Router snapshot files: written atomically and durably, read through a read-only
//! memory map, and never trusted unless they verify.
//!
//! # Writing ([`write_snapshot_file`])
//! The bytes (from `Router::encode_snapshot`) go to a temporary file in the target's
//! directory, which is fsynced and closed, then renamed over the target, then the
//! directory is fsynced: a crash leaves either the old snapshot or the new one, never a
//! mix, and a failed write leaves the old one in place (the temporary file is removed).
//! With io_uring (Linux) a tokio-uring runtime on a short-lived thread of its own does
//! the open, write, fsync, close, rename and directory fsync, so the call is safe from
//! any thread, including a tokio `spawn_blocking` one. Where the uring runtime cannot
//! start (no io_uring in the kernel, or forbidden, as in many containers) the same steps
//! run with `std::fs`, once with a warning; later calls go straight to `std::fs`.
//! Blocking: run it off the async executor.
//!
//! # Reading ([`read_snapshot_file`])
//! The file is mapped read-only (pre-faulted: one syscall instead of a page fault per
//! 4 KiB) and verified whole (`kvroute_core::snapshot::verify_snapshot`: checksum, then
//! every count and offset). A missing file is `Ok(None)`; an empty, truncated, corrupt
//! or foreign one is logged (`tracing::warn`) and also `Ok(None)`: the router starts
//! empty and the publishers send dumps. [`MappedSnapshot::view`] reads the blocks straight
//! from the map (`Router::restore_snapshot`).

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use kvroute_core::snapshot::{verify_snapshot, Snapshot, SnapshotLayout, SnapshotView};
use memmap2::{Mmap, MmapOptions};

/// How to write a snapshot file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteBackend {
    /// io_uring when its runtime starts, else `std::fs` (with a warning, once).
    Auto,
    /// io_uring only: an error if its runtime cannot start.
    IoUring,
    /// `std::fs` only.
    Std,
}

/// Which way a snapshot file was written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Written {
    IoUring,
    Std,
}

/// Set once the io_uring runtime failed to start: `Auto` then skips it.
static URING_UNAVAILABLE: AtomicBool = AtomicBool::new(false);
/// Distinguishes temporary files of concurrent writers in one process.
static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Writes `bytes` to `path` atomically and durably ([`WriteBackend::Auto`]); see the
/// module docs.
pub fn write_snapshot_file(path: &Path, bytes: Vec<u8>) -> io::Result<Written> {
    write_snapshot_file_with(path, bytes, WriteBackend::Auto)
}

/// [`write_snapshot_file`] with a chosen backend.
pub fn write_snapshot_file_with(path: &Path, bytes: Vec<u8>, backend: WriteBackend) -> io::Result<Written> {
    write_with(path, bytes, backend, URING_ENTRIES)
}

/// Submission queue size of the uring runtime: the write is a handful of operations.
const URING_ENTRIES: u32 = 8;

fn write_with(path: &Path, bytes: Vec<u8>, backend: WriteBackend, entries: u32) -> io::Result<Written> {
    let name = path.file_name().ok_or_else(|| io::Error::other("snapshot path has no file name"))?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".{}-{n}.tmp", std::process::id()));
    let tmp = dir.join(tmp_name);
    let files = Files { target: path, tmp: &tmp, dir: &dir };

    let try_uring = match backend {
        WriteBackend::Std => false,
        WriteBackend::IoUring => true,
        WriteBackend::Auto => !URING_UNAVAILABLE.load(Ordering::Relaxed),
    };
    let bytes = if try_uring {
        match uring::write(&files, bytes, entries) {
            Ok(result) => {
                return finish(result, &files, Written::IoUring);
            }
            Err((error, bytes)) => {
                if backend == WriteBackend::IoUring {
                    return Err(error);
                }
                if !URING_UNAVAILABLE.swap(true, Ordering::Relaxed) {
                    tracing::warn!(%error, "io_uring is unavailable: writing snapshot files with std::fs");
                }
                bytes
            }
        }
    } else {
        bytes
    };
    finish(write_std(&files, &bytes), &files, Written::Std)
}

/// The three paths one write touches.
struct Files<'a> {
    target: &'a Path,
    tmp: &'a Path,
    dir: &'a Path,
}

fn finish(result: io::Result<()>, files: &Files<'_>, used: Written) -> io::Result<Written> {
    match result {
        Ok(()) => {
            tracing::debug!(path = %files.target.display(), backend = ?used, "snapshot file written");
            Ok(used)
        }
        Err(error) => {
            // The target is untouched (the rename comes last); drop the partial file.
            let _ = std::fs::remove_file(files.tmp);
            Err(error)
        }
    }
}

fn write_std(files: &Files<'_>, bytes: &[u8]) -> io::Result<()> {
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).open(files.tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(files.tmp, files.target)?;
    File::open(files.dir)?.sync_all()
}

#[cfg(target_os = "linux")]
mod uring {
    use std::io;

    use super::Files;

    /// Runs the write on a tokio-uring runtime on a thread of its own. `Err` (with the
    /// bytes back) when the runtime cannot start; `Ok(result)` otherwise.
    pub(super) fn write(
        files: &Files<'_>,
        bytes: Vec<u8>,
        entries: u32,
    ) -> Result<io::Result<()>, (io::Error, Vec<u8>)> {
        std::thread::scope(|scope| {
            let worker = scope.spawn(move || {
                let runtime = match tokio_uring::Runtime::new(tokio_uring::builder().entries(entries)) {
                    Ok(runtime) => runtime,
                    Err(error) => return Err((error, bytes)),
                };
                Ok(runtime.block_on(write_all(files, bytes)))
            });
            worker.join().unwrap_or_else(|_| Ok(Err(io::Error::other("snapshot writer thread panicked"))))
        })
    }

    async fn write_all(files: &Files<'_>, bytes: Vec<u8>) -> io::Result<()> {
        let file = tokio_uring::fs::OpenOptions::new().write(true).create(true).truncate(true).open(files.tmp).await?;
        let (written, _) = file.write_all_at(bytes, 0).await;
        let synced = match written {
            Ok(()) => file.sync_all().await,
            Err(e) => Err(e),
        };
        let closed = file.close().await;
        synced.and(closed)?;
        tokio_uring::fs::rename(files.tmp, files.target).await?;
        let dir = tokio_uring::fs::File::open(files.dir).await?;
        let synced = dir.sync_all().await;
        dir.close().await?;
        synced
    }
}

#[cfg(not(target_os = "linux"))]
mod uring {
    use std::io;

    use super::Files;

    pub(super) fn write(_: &Files<'_>, bytes: Vec<u8>, _: u32) -> Result<io::Result<()>, (io::Error, Vec<u8>)> {
        Err((io::Error::new(io::ErrorKind::Unsupported, "io_uring is Linux-only"), bytes))
    }
}

/// A verified snapshot file, mapped read-only.
pub struct MappedSnapshot {
    map: Mmap,
    layout: SnapshotLayout,
}

impl MappedSnapshot {
    /// Zero-copy view over the map (for `Router::restore_snapshot`).
    pub fn view(&self) -> SnapshotView<'_> {
        // The layout was verified from this very map, which is private and read-only, so
        // the pairing guard (same length, same stored checksum) holds.
        self.layout.view(&self.map).expect("a snapshot layout pairs with the map it was verified from")
    }

    pub fn layout(&self) -> &SnapshotLayout {
        &self.layout
    }

    /// The file's length in bytes.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Owned values of the whole snapshot.
    pub fn decode(&self) -> Snapshot {
        self.view().to_snapshot()
    }
}

/// Maps and verifies the snapshot at `path`; see the module docs. `Err` only for I/O
/// errors other than a missing file (permissions, say).
pub fn read_snapshot_file(path: &Path) -> io::Result<Option<MappedSnapshot>> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    if file.metadata()?.len() == 0 {
        tracing::warn!(path = %path.display(), "snapshot file is empty: ignored");
        return Ok(None);
    }
    // SAFETY: the map is read-only and private to the returned value, and the file is
    // never modified in place: snapshot writers (`write_snapshot_file`) create a new file
    // and rename it over the old name, which leaves the mapped inode intact. A map of a
    // file that another process truncates or rewrites in place would be undefined
    // behaviour (and SIGBUS on truncation); the snapshot path belongs to this router.
    let map = unsafe { MmapOptions::new().populate().map(&file)? };
    match verify_snapshot(&map) {
        Ok(layout) => Ok(Some(MappedSnapshot { map, layout })),
        Err(error) => {
            tracing::warn!(path = %path.display(), %error, "snapshot file ignored: it does not verify");
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ring of 0 entries cannot be created: `Auto` falls back to `std::fs` (and
    /// `IoUring` reports the error), leaving a complete file either way.
    #[test]
    fn a_uring_runtime_that_cannot_start_falls_back_to_std() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("snap");
        let used = write_with(&path, b"auto".to_vec(), WriteBackend::Auto, 0).unwrap();
        assert_eq!(used, Written::Std);
        assert_eq!(std::fs::read(&path).unwrap(), b"auto");
        assert!(write_with(&path, b"uring".to_vec(), WriteBackend::IoUring, 0).is_err());
        assert_eq!(std::fs::read(&path).unwrap(), b"auto");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1, "no temporary file left");
        // This process is now marked: Auto goes straight to std::fs.
        assert_eq!(write_snapshot_file(&path, b"again".to_vec()).unwrap(), Written::Std);
        assert_eq!(std::fs::read(&path).unwrap(), b"again");
    }
}
