//! Snapshot files through the real file functions: a router written and restored (io_uring
//! and std::fs paths), files that must be ignored (truncated, bit-flipped, empty, foreign,
//! missing), and a write that fails midway never replacing the target.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use kvroute_core::event::{KvEvent, KvEventData, StoredBlock};
use kvroute_core::route::{Router, RouterConfig, StorageTier, WorkerSpec};
use kvroute_core::snapshot::CursorState;
use kvroute_core::{BlockHash, EngineHash, RankKey, WorkerId};
use kvroute_net::snapshot_file::{
    read_snapshot_file, write_snapshot_file, write_snapshot_file_with, WriteBackend, Written,
};

fn router() -> Router {
    Router::new(RouterConfig::default(), Arc::new(|| 0u64)).unwrap()
}

/// Two workers of 2 ranks, each rank holding a 64-block chain with a hole; `extra` more
/// blocks make a bigger file.
fn populated(extra: u64) -> Router {
    let r = router();
    for w in [1, 2] {
        r.add_worker(WorkerSpec::new(WorkerId(w), 2, 16)).unwrap();
    }
    let mut id = 0;
    for w in [1u64, 2] {
        for dp in 0..2u32 {
            let rank = RankKey::new(w, dp);
            let blocks = (0..64 + extra)
                .map(|i| StoredBlock {
                    engine_hash: EngineHash(w << 40 | u64::from(dp) << 32 | i),
                    content_hash: BlockHash(i),
                })
                .collect();
            id += 1;
            r.apply_event(&KvEvent { rank, event_id: id, data: KvEventData::Stored { parent: None, blocks } });
            id += 1;
            let hole = vec![EngineHash(w << 40 | u64::from(dp) << 32 | 10)];
            r.apply_event(&KvEvent { rank, event_id: id, data: KvEventData::Removed { blocks: hole } });
        }
    }
    r
}

fn snapshot_bytes(r: &Router) -> Vec<u8> {
    let mut bytes = Vec::new();
    r.encode_snapshot(42, |rank| Some(CursorState::exact(1, u64::from(rank.dp_rank.0))), &mut bytes);
    bytes
}

fn overlaps(r: &Router) -> Vec<(RankKey, u32)> {
    let q: Vec<BlockHash> = (0..64).map(BlockHash).collect();
    r.tier_index(StorageTier::Device).find_matches(&q).sorted()
}

fn uring_available() -> bool {
    let dir = tempfile::tempdir().unwrap();
    write_snapshot_file_with(&dir.path().join("probe"), vec![0], WriteBackend::IoUring).is_ok()
}

fn only_entry(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect()
}

#[test]
fn written_snapshots_restore_the_router() {
    let original = populated(0);
    let bytes = snapshot_bytes(&original);
    let dir = tempfile::tempdir().unwrap();
    let mut backends = vec![WriteBackend::Std, WriteBackend::Auto];
    if uring_available() {
        backends.push(WriteBackend::IoUring);
    } else {
        eprintln!("io_uring unavailable here: its path is not tested (the fallback is)");
    }
    for backend in backends {
        let path = dir.path().join("router.snapshot");
        let used = write_snapshot_file_with(&path, bytes.clone(), backend).unwrap();
        match backend {
            WriteBackend::Std => assert_eq!(used, Written::Std),
            WriteBackend::IoUring => assert_eq!(used, Written::IoUring),
            WriteBackend::Auto => {}
        }
        assert_eq!(std::fs::read(&path).unwrap(), bytes, "{backend:?}");
        assert_eq!(only_entry(dir.path()), vec!["router.snapshot"], "no temporary file left");

        let mapped = read_snapshot_file(&path).unwrap().expect("a valid snapshot");
        assert_eq!(mapped.len(), bytes.len());
        assert_eq!(mapped.layout().meta().taken_at_ms, 42);
        let restored = router();
        let report = restored.restore_snapshot(&mapped.view()).unwrap();
        assert_eq!(report.workers_added, 2);
        assert_eq!(report.sections_restored, 4);
        assert_eq!(report.blocks_restored, 4 * 63);
        assert_eq!(report.cursors.len(), 4);
        assert_eq!(overlaps(&restored), overlaps(&original));
        assert_eq!(
            overlaps(&restored),
            vec![
                (RankKey::new(1, 0), 10),
                (RankKey::new(1, 1), 10),
                (RankKey::new(2, 0), 10),
                (RankKey::new(2, 1), 10)
            ]
        );
        assert_eq!(mapped.decode(), kvroute_core::snapshot::decode_snapshot(&bytes).unwrap());
    }
    // Overwriting an existing snapshot replaces it.
    let path = dir.path().join("router.snapshot");
    let bigger = snapshot_bytes(&populated(100));
    write_snapshot_file(&path, bigger.clone()).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), bigger);
}

#[test]
fn bad_files_are_ignored() {
    let bytes = snapshot_bytes(&populated(0));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("snap");
    assert!(read_snapshot_file(&path).unwrap().is_none(), "missing");
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    assert!(read_snapshot_file(&path).unwrap().is_none(), "truncated");
    std::fs::write(&path, &bytes[..bytes.len() - 1]).unwrap();
    assert!(read_snapshot_file(&path).unwrap().is_none(), "one byte short");
    let mut flipped = bytes.clone();
    flipped[bytes.len() * 2 / 3] ^= 0x10;
    std::fs::write(&path, &flipped).unwrap();
    assert!(read_snapshot_file(&path).unwrap().is_none(), "bit flipped");
    std::fs::write(&path, b"").unwrap();
    assert!(read_snapshot_file(&path).unwrap().is_none(), "empty");
    std::fs::write(&path, b"{\"not\": \"a snapshot\"}").unwrap();
    assert!(read_snapshot_file(&path).unwrap().is_none(), "foreign");
    std::fs::write(&path, &bytes).unwrap();
    assert!(read_snapshot_file(&path).unwrap().is_some(), "intact");
}

/// Environment variable that makes `a_failed_write_keeps_the_old_snapshot` run as the
/// file-size-limited child: its value is the directory to write into.
const CHILD_DIR: &str = "KVROUTE_SNAPSHOT_TEST_CHILD_DIR";
/// The child's file size limit: the old snapshot fits, the new one does not.
const FSIZE_LIMIT: u64 = 64 * 1024;

#[test]
fn a_failed_write_keeps_the_old_snapshot() {
    let old = snapshot_bytes(&populated(0));
    let new = snapshot_bytes(&populated(4096)); // ~270 KiB: past the child's limit
    assert!((old.len() as u64) < FSIZE_LIMIT && new.len() as u64 > FSIZE_LIMIT);
    if let Ok(dir) = std::env::var(CHILD_DIR) {
        // The child: every write of `new` fails midway (EFBIG past RLIMIT_FSIZE).
        let path = Path::new(&dir).join("snap");
        for backend in [WriteBackend::Std, WriteBackend::IoUring] {
            if backend == WriteBackend::IoUring && !uring_available() {
                continue;
            }
            let result = write_snapshot_file_with(&path, new.clone(), backend);
            assert!(result.is_err(), "{backend:?}: a write past the file size limit succeeded");
            assert_eq!(std::fs::read(&path).unwrap(), old, "{backend:?}: target replaced");
            assert_eq!(only_entry(Path::new(&dir)), vec!["snap"], "{backend:?}: temporary file left");
        }
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("snap");
    write_snapshot_file(&path, old.clone()).unwrap();

    // Midway: the same test in a child process whose files cannot grow past 64 KiB
    // (works as root too). SIGXFSZ is ignored so the write fails with EFBIG instead.
    let exe = std::env::current_exe().unwrap();
    let limited = Command::new("sh")
        .arg("-c")
        .arg(format!("trap '' XFSZ; exec prlimit --fsize={FSIZE_LIMIT} \"$0\" \"$@\""))
        .arg(&exe)
        .args(["--exact", "a_failed_write_keeps_the_old_snapshot", "--test-threads=1", "--nocapture"])
        .env(CHILD_DIR, dir.path())
        .output();
    match limited {
        Ok(out) if out.status.success() && String::from_utf8_lossy(&out.stdout).contains("1 passed") => {}
        Ok(out) if !Path::new("/usr/bin/prlimit").exists() && !Path::new("/bin/prlimit").exists() => {
            eprintln!("prlimit not found ({}): the midway failure is not tested", out.status);
        }
        Ok(out) => panic!(
            "size-limited child failed: {}\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) => eprintln!("cannot run sh ({e}): the midway failure is not tested"),
    }
    assert_eq!(std::fs::read(&path).unwrap(), old);

    // At the start: a directory the writer may not create files in (non-root only).
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let is_root = Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0"));
        if is_root {
            eprintln!("running as root: a read-only directory does not stop writes; that case is skipped");
        } else {
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o555)).unwrap();
            for backend in [WriteBackend::Std, WriteBackend::Auto] {
                assert!(write_snapshot_file_with(&path, new.clone(), backend).is_err());
                assert_eq!(std::fs::read(&path).unwrap(), old);
            }
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
            assert_eq!(only_entry(dir.path()), vec!["snap"]);
        }
    }
}
