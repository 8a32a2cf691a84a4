//! `vcpu_stalls`: how often this machine stops a running thread for a long time, whatever
//! the thread does. Context for the latency tails of the other benches.
//!
//! ```text
//! cargo run --release -p kvroute-bench --bin vcpu_stalls -- [--threads N] [--seconds 10]
//! ```
//!
//! Method. `--threads` threads (default: one per core) each read the monotonic clock in a
//! tight loop for `--seconds` and count the gaps between two consecutive readings. A thread
//! that only reads the clock has nothing to wait for, so a gap is time in which its core
//! ran something else: an interrupt, a kernel thread, another thread of this machine, or,
//! on a virtual machine, the host running something else instead of this virtual CPU.
//! Nothing else of this program runs meanwhile; run it on an otherwise idle machine, with
//! one thread per core to load every core (as the transport bench's latency runs nearly
//! do) and with `--threads 1` to see the idle-neighbour case.
//!
//! Printed per thread: the gaps over 0.1, 0.5, 1, 2 and 4 ms, the longest, and the share
//! of the run lost in gaps over 0.1 ms.

use std::time::{Duration, Instant};

use clap::Parser;
use mimalloc::MiMalloc;

#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

/// Gap thresholds, microseconds.
const THRESHOLDS_US: [u64; 5] = [100, 500, 1_000, 2_000, 4_000];

/// Counts how long and how often running threads are stopped (see the module docs).
#[derive(Parser, Debug)]
#[command(name = "vcpu_stalls", version)]
struct Args {
    /// Spinning threads. Default: one per core.
    #[arg(long)]
    threads: Option<usize>,
    /// Length of the run, seconds.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
}

#[derive(Debug, Default)]
struct Gaps {
    over: [u64; THRESHOLDS_US.len()],
    longest: Duration,
    /// Sum of the gaps over the smallest threshold.
    lost: Duration,
    elapsed: Duration,
}

fn spin(length: Duration) -> Gaps {
    let mut gaps = Gaps::default();
    let start = Instant::now();
    let mut previous = start;
    loop {
        let now = Instant::now();
        let gap = now - previous;
        previous = now;
        if gap >= Duration::from_micros(THRESHOLDS_US[0]) {
            for (count, &threshold) in gaps.over.iter_mut().zip(&THRESHOLDS_US) {
                *count += u64::from(gap >= Duration::from_micros(threshold));
            }
            gaps.longest = gaps.longest.max(gap);
            gaps.lost += gap;
        }
        if now - start >= length {
            gaps.elapsed = now - start;
            return gaps;
        }
    }
}

fn main() -> Result<(), String> {
    let args = Args::parse();
    if !(args.seconds > 0.0 && args.seconds.is_finite()) {
        return Err(format!("--seconds must be a positive number, not {}", args.seconds));
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = args.threads.unwrap_or(cores).max(1);
    let length = Duration::from_secs_f64(args.seconds);
    println!("machine: {}", kvroute_bench::machine::Machine::this().line());
    println!("vcpu_stalls: {threads} spinning threads on {cores} cores for {:.1} s", args.seconds);
    let results: Vec<Gaps> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads).map(|_| scope.spawn(move || spin(length))).collect();
        handles.into_iter().map(|h| h.join().unwrap_or_default()).collect()
    });
    for (thread, gaps) in results.iter().enumerate() {
        let counts: Vec<String> = THRESHOLDS_US
            .iter()
            .zip(&gaps.over)
            .map(|(&us, &count)| {
                let label = if us < 1_000 { format!("{us} us") } else { format!("{} ms", us / 1_000) };
                format!(">{label}: {count}")
            })
            .collect();
        println!(
            "thread {thread}: gaps {}; longest {:.2} ms; lost in gaps over 0.1 ms: {:.2}% of {:.1} s",
            counts.join(", "),
            gaps.longest.as_secs_f64() * 1e3,
            100.0 * gaps.lost.as_secs_f64() / gaps.elapsed.as_secs_f64().max(1e-9),
            gaps.elapsed.as_secs_f64(),
        );
    }
    Ok(())
}
