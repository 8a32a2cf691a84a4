//! `restart`: how long a router takes to come back from a snapshot.
//!
//! ```text
//! cargo run --release -p kvroute-bench --bin restart -- [--workers 64 --dp-size 4]
//!     [--entries 10000000] [--trials 3] [--dir DIR] [--backend auto|io-uring|std] [--json]
//! ```
//!
//! Builds a router whose device index holds `--entries` (block, rank) pairs: every rank
//! holds a few shared "system prompt" prefixes plus its own conversation chains hanging
//! off them, with a few evicted blocks inside chains (holes, stored as placeholders). It
//! then encodes a snapshot (export + encode), writes it (`write_snapshot_file`), and times
//! restarts, each in a fresh process of this binary (nothing mapped, no heap to reuse, as
//! after a real restart): a fresh `Router`, `read_snapshot_file` (map + verify: checksum
//! and structure) and `Router::restore_snapshot` (zero-copy). Each trial runs three
//! children: default allocator settings, mimalloc on transparent huge pages
//! (`MIMALLOC_ALLOW_LARGE_OS_PAGES=1`), and the owned path (`MappedSnapshot::decode` +
//! `Router::restore_ranks`). Breakdowns measured apart: the pre-faulted map, the XXH3
//! checksum (and a table-driven CRC32C for comparison), `verify_snapshot`, the owned
//! decode. Finally a restore in this process must answer like the original router for
//! sampled prompts and hold as many pairs (else the exit status is 1).
//!
//! The page cache is warm (the file was just written): a restart right after a shutdown.
//! A cold cache adds the disk's read time for the file.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use kvroute_bench::synthetic_chain::stored_chain;
use kvroute_core::event::{KvEvent, KvEventData};
use kvroute_core::route::{Router, RouterConfig, StorageTier, WorkerSpec};
use kvroute_core::snapshot::{decode_snapshot, verify_snapshot, CursorState};
use kvroute_core::{BlockHash, RankKey, WorkerId};
use kvroute_net::snapshot_file::{read_snapshot_file, write_snapshot_file_with, WriteBackend};
use mimalloc::MiMalloc;

#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Backend {
    Auto,
    IoUring,
    Std,
}

/// Restart time of a router from a snapshot file.
#[derive(Parser, Debug)]
#[command(name = "restart", version)]
struct Args {
    #[arg(long, default_value_t = 64)]
    workers: u32,
    #[arg(long, default_value_t = 4)]
    dp_size: u32,
    /// (block, rank) pairs in the index.
    #[arg(long, default_value_t = 10_000_000)]
    entries: u64,
    /// Shared prefixes in the fleet, each `--prefix-blocks` long.
    #[arg(long, default_value_t = 32)]
    prefixes: u64,
    #[arg(long, default_value_t = 512)]
    prefix_blocks: u64,
    /// Shared prefixes each rank holds.
    #[arg(long, default_value_t = 4)]
    prefixes_per_rank: u64,
    /// Length of each rank's own chains (hung under its prefixes).
    #[arg(long, default_value_t = 256)]
    chain_blocks: u64,
    /// Evicted blocks per rank, each in the middle of one of its chains.
    #[arg(long, default_value_t = 16)]
    holes_per_rank: u64,
    /// Where to write the snapshot (default: a temporary directory).
    #[arg(long)]
    dir: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = Backend::Auto)]
    backend: Backend,
    /// Restart trials (each from the same file); the best and the median are printed.
    #[arg(long, default_value_t = 3)]
    trials: usize,
    /// Print the figures as one JSON object on the last line.
    #[arg(long)]
    json: bool,
    /// Internal: time one restart from this file in this (fresh) process and print it.
    #[arg(long, hide = true)]
    restore_from: Option<PathBuf>,
    /// Internal, with --restore-from: decode into owned values and restore those.
    #[arg(long, hide = true)]
    owned: bool,
}

fn mix(a: u64, b: u64) -> u64 {
    let x = (a ^ b.rotate_left(23)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x ^ (x >> 31)
}

fn new_router() -> Router {
    let start = Instant::now();
    Router::new(RouterConfig::default(), Arc::new(move || start.elapsed().as_millis() as u64)).expect("default config")
}

/// Content hashes of shared prefix `p`.
fn prefix(p: u64, blocks: u64) -> Vec<BlockHash> {
    (0..blocks).map(|i| BlockHash(mix(0x5157_0000 + p, i))).collect()
}

/// Content hashes of chain `c` of rank `r`.
fn own_chain(r: u64, c: u64, blocks: u64) -> Vec<BlockHash> {
    (0..blocks).map(|i| BlockHash(mix(r << 32 | c, i ^ 0xC4A1_0000_0000))).collect()
}

/// Which shared prefixes rank number `r` holds.
fn prefixes_of(args: &Args, r: u64) -> Vec<u64> {
    (0..args.prefixes_per_rank.min(args.prefixes)).map(|j| (r * 7 + j * 13) % args.prefixes).collect()
}

/// Fills the router; returns the (rank, request) probes to compare restored answers with.
fn populate(router: &Router, args: &Args) -> Vec<Vec<BlockHash>> {
    let ranks = u64::from(args.workers) * u64::from(args.dp_size);
    let per_rank = args.entries / ranks;
    let mut probes = Vec::new();
    for w in 0..args.workers {
        router.add_worker(WorkerSpec::new(WorkerId(u64::from(w)), args.dp_size, 16)).expect("worker");
    }
    for r in 0..ranks {
        let rank = RankKey::new(r / u64::from(args.dp_size), (r % u64::from(args.dp_size)) as u32);
        let mut event_id = 0;
        let mut send = |data| {
            event_id += 1;
            router.apply_event(&KvEvent { rank, event_id, data });
        };
        let mut tails = Vec::new();
        let mut held = 0;
        for p in prefixes_of(args, r) {
            let blocks = stored_chain(&prefix(p, args.prefix_blocks), p);
            tails.push((p, blocks.last().map(|b| b.engine_hash)));
            held += blocks.len() as u64;
            send(KvEventData::Stored { parent: None, blocks });
        }
        let mut c = 0;
        while held < per_rank {
            let len = args.chain_blocks.min(per_rank - held);
            let (p, parent) = tails[(c % tails.len() as u64) as usize];
            let contents = own_chain(r, c, len);
            let blocks = stored_chain(&contents, mix(r, c));
            if c < args.holes_per_rank && len > 2 {
                let hole = blocks[len as usize / 2].engine_hash;
                send(KvEventData::Stored { parent, blocks });
                send(KvEventData::Removed { blocks: vec![hole] });
                held -= 1;
            } else {
                send(KvEventData::Stored { parent, blocks });
            }
            if c % 16 == 0 {
                let mut q = prefix(p, args.prefix_blocks);
                q.extend_from_slice(&contents[..(len as usize * 3 / 4).max(1)]);
                probes.push(q);
            }
            held += len;
            c += 1;
        }
    }
    probes
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// One restart: a fresh router, the file read (map + verify), the restore.
#[derive(Clone, Copy, Debug)]
struct Trial {
    new_router: Duration,
    read_verify: Duration,
    restore: Duration,
    total: Duration,
}

impl Trial {
    fn line(&self) -> String {
        format!(
            "new router {:.1} ms, read+map+verify {:.0} ms, restore {:.0} ms = {:.0} ms",
            ms(self.new_router),
            ms(self.read_verify),
            ms(self.restore),
            ms(self.total)
        )
    }
}

/// `owned`: decode the map into owned values (`MappedSnapshot::decode`) and restore those
/// (`Router::restore_ranks`) instead of restoring zero-copy; the decode counts as reading.
fn restart(path: &Path, owned: bool) -> Result<(Trial, Router), String> {
    let t0 = Instant::now();
    let router = new_router();
    let t1 = Instant::now();
    let mapped = match read_snapshot_file(path) {
        Ok(Some(m)) => m,
        Ok(None) => return Err(format!("{}: missing or ignored", path.display())),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let decoded = owned.then(|| mapped.decode());
    let t2 = Instant::now();
    let report = match &decoded {
        Some(snapshot) => router.restore_ranks(snapshot),
        None => router.restore_snapshot(&mapped.view()),
    }
    .map_err(|e| e.to_string())?;
    let t3 = Instant::now();
    if !report.skipped.is_empty() {
        return Err(format!("skipped sections: {:?}", report.skipped));
    }
    Ok((Trial { new_router: t1 - t0, read_verify: t2 - t1, restore: t3 - t2, total: t3 - t0 }, router))
}

/// A restart in a fresh process of this binary (as after a real restart: nothing mapped,
/// no heap to reuse); the child prints its figures in milliseconds on one line.
fn restart_in_child(path: &Path, owned: bool, env: &[(&str, &str)]) -> Result<Trial, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let out = std::process::Command::new(exe)
        .arg("--restore-from")
        .arg(path)
        .args(owned.then_some("--owned"))
        .envs(env.iter().copied())
        .output()
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out.stdout);
    let figures: Vec<f64> = text
        .lines()
        .find_map(|l| l.strip_prefix("TRIAL "))
        .ok_or_else(|| format!("child failed: {}", String::from_utf8_lossy(&out.stderr)))?
        .split_whitespace()
        .filter_map(|f| f.parse().ok())
        .collect();
    let [a, b, c, d] = figures[..] else { return Err(format!("child printed {text}")) };
    let d_ms = |v: f64| Duration::from_secs_f64(v / 1e3);
    Ok(Trial { new_router: d_ms(a), read_verify: d_ms(b), restore: d_ms(c), total: d_ms(d) })
}

/// Best and median of trials, by total.
fn best_and_median(trials: &[Trial]) -> (Trial, Trial) {
    let mut sorted = trials.to_vec();
    sorted.sort_by_key(|t| t.total);
    (sorted[0], sorted[sorted.len() / 2])
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(path) = &args.restore_from {
        return match restart(path, args.owned) {
            Ok((t, _)) => {
                println!("TRIAL {} {} {} {}", ms(t.new_router), ms(t.read_verify), ms(t.restore), ms(t.total));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        };
    }
    let backend = match args.backend {
        Backend::Auto => WriteBackend::Auto,
        Backend::IoUring => WriteBackend::IoUring,
        Backend::Std => WriteBackend::Std,
    };
    let tmp = tempdir_in(args.dir.clone());
    let path = tmp.join("router.snapshot");

    // Build.
    let t = Instant::now();
    let original = new_router();
    let probes = populate(&original, &args);
    let device = original.tier_index(StorageTier::Device).stats();
    eprintln!(
        "built: {} (block, rank) pairs, {} distinct blocks, {} nodes, {} ranks in {:.0} ms",
        device.held_pairs,
        device.distinct_blocks,
        device.nodes,
        device.ranks,
        ms(t.elapsed())
    );

    // Export alone: each call holds the device index's writer lock (events wait).
    let (mut export_total, mut export_max) = (Duration::ZERO, Duration::ZERO);
    for rank in original.rank_loads().into_iter().map(|(rank, _)| rank) {
        let t = Instant::now();
        let dump = original.tier_index(StorageTier::Device).export_rank(rank);
        let took = t.elapsed();
        drop(dump);
        export_total += took;
        export_max = export_max.max(took);
    }
    eprintln!(
        "export alone: {:.0} ms for all ranks, writer lock held at most {:.1} ms (one rank)",
        ms(export_total),
        ms(export_max)
    );

    // Snapshot: export + encode, then write.
    let t = Instant::now();
    let mut bytes = Vec::new();
    original.encode_snapshot(0, |_| Some(CursorState::exact(1, 1_000)), &mut bytes);
    let encode = t.elapsed();
    let file_len = bytes.len();
    let t = Instant::now();
    let written = match write_snapshot_file_with(&path, bytes, backend) {
        Ok(w) => w,
        Err(e) => {
            eprintln!("writing {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    };
    let write = t.elapsed();
    eprintln!(
        "snapshot: {:.1} MB ({:.1} bytes per pair); export+encode {:.0} ms, write ({written:?}, fsync, rename) {:.0} ms",
        file_len as f64 / 1e6,
        file_len as f64 / device.held_pairs as f64,
        ms(encode),
        ms(write)
    );

    // Restarts in fresh processes: the default allocator settings, then mimalloc on
    // transparent huge pages (fewer page faults while the index is rebuilt).
    let (mut fresh, mut huge, mut owned) = (Vec::new(), Vec::new(), Vec::new());
    const HUGE: &[(&str, &str)] = &[("MIMALLOC_ALLOW_LARGE_OS_PAGES", "1")];
    for i in 0..args.trials.max(1) {
        for (label, is_owned, env, out) in [
            ("fresh process", false, &[][..], &mut fresh),
            ("fresh process, MIMALLOC_ALLOW_LARGE_OS_PAGES=1", false, HUGE, &mut huge),
            ("fresh process, owned decode + restore_ranks", true, &[][..], &mut owned),
        ] {
            match restart_in_child(&path, is_owned, env) {
                Ok(t) => {
                    eprintln!("restart {i} ({label}): {}", t.line());
                    out.push(t);
                }
                Err(e) => {
                    eprintln!("restart {i} ({label}): {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
    }

    // In this process: the restored router is checked against the original below.
    let restored = match restart(&path, false) {
        Ok((t, router)) => {
            eprintln!("restart in the building process (heap warm): {}", t.line());
            router
        }
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };

    // Breakdowns, measured apart.
    let file = std::fs::File::open(&path).expect("snapshot file");
    let t = Instant::now();
    // SAFETY: a read-only map of the file this process just wrote; nothing modifies it.
    let map = unsafe { memmap2::MmapOptions::new().populate().map(&file) }.expect("map");
    let map_time = t.elapsed();
    let t = Instant::now();
    let sum = xxhash_rust::xxh3::xxh3_64(&map[24..]);
    let xxh3_time = t.elapsed();
    let t = Instant::now();
    let crc = kvroute_core::wire::crc32c(&map[24..]);
    let crc_time = t.elapsed();
    let t = Instant::now();
    let verified = verify_snapshot(&map).is_ok();
    let verify_time = t.elapsed();
    let t = Instant::now();
    let decoded = decode_snapshot(&map).map(|s| s.ranks.len());
    let decode_time = t.elapsed();
    eprintln!(
        "apart: map (populate) {:.1} ms; checksum XXH3 {:.0} ms ({:.1} GB/s) vs CRC32C (crc32c crate) {:.0} ms ({:.2} GB/s) \
         [{sum:x} {crc:x}]; verify (checksum + structure) {:.0} ms ({verified}); owned decode {:.0} ms ({} sections)",
        ms(map_time),
        ms(xxh3_time),
        file_len as f64 / xxh3_time.as_secs_f64() / 1e9,
        ms(crc_time),
        file_len as f64 / crc_time.as_secs_f64() / 1e9,
        ms(verify_time),
        ms(decode_time),
        decoded.unwrap_or(0)
    );

    // The restored router answers like the original.
    let (a, b) = (original.tier_index(StorageTier::Device), restored.tier_index(StorageTier::Device));
    let mismatches = probes.iter().filter(|q| a.find_matches(q).sorted() != b.find_matches(q).sorted()).count();
    let restored_pairs = b.stats().held_pairs;
    eprintln!(
        "check: {} probes, {mismatches} mismatches; held pairs {} original, {} restored",
        probes.len(),
        device.held_pairs,
        restored_pairs
    );

    let (best, median) = best_and_median(&fresh);
    let (huge_best, huge_median) = best_and_median(&huge);
    println!("machine: {}", kvroute_bench::machine::Machine::this().line());
    let (owned_best, owned_median) = best_and_median(&owned);
    println!(
        "restart from {:.1} MB, {} pairs, fresh process: best {}; median {:.0} ms; with huge pages: best {:.0} ms, \
         median {:.0} ms; owned decode path: best {:.0} ms, median {:.0} ms",
        file_len as f64 / 1e6,
        device.held_pairs,
        best.line(),
        ms(median.total),
        ms(huge_best.total),
        ms(huge_median.total),
        ms(owned_best.total),
        ms(owned_median.total)
    );
    if args.json {
        let record = serde_json::json!({
            "pairs": device.held_pairs,
            "distinct_blocks": device.distinct_blocks,
            "file_bytes": file_len,
            "export_encode_ms": ms(encode),
            "export_ms": ms(export_total),
            "export_max_lock_ms": ms(export_max),
            "write_ms": ms(write),
            "write_backend": format!("{written:?}"),
            "restart_best_ms": ms(best.total),
            "restart_median_ms": ms(median.total),
            "read_map_verify_ms": ms(best.read_verify),
            "restore_ms": ms(best.restore),
            "restart_huge_pages_best_ms": ms(huge_best.total),
            "restart_huge_pages_median_ms": ms(huge_median.total),
            "map_ms": ms(map_time),
            "xxh3_ms": ms(xxh3_time),
            "crc32c_ms": ms(crc_time),
            "verify_ms": ms(verify_time),
            "owned_decode_ms": ms(decode_time),
            "restart_owned_best_ms": ms(owned_best.total),
            "restart_owned_median_ms": ms(owned_median.total),
            "mismatches": mismatches,
        });
        println!("{record}");
    }
    if args.dir.is_none() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    if mismatches > 0 || restored_pairs != device.held_pairs {
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// `dir` (created if missing), or a fresh directory under the system's temporary one.
fn tempdir_in(dir: Option<PathBuf>) -> PathBuf {
    let dir = dir.unwrap_or_else(|| std::env::temp_dir().join(format!("kvroute-restart-{}", std::process::id())));
    std::fs::create_dir_all(&dir).expect("snapshot directory");
    dir
}
