"""`best_worker` from Python beside the same decision in Rust, one process, one router.

A fleet of 64 workers x 4 DP ranks (block size 16) whose ranks hold prefixes of 32
2,048-token documents (each rank: one document's first 8 to 128 blocks, stored through
`apply_events`); each decision routes one of those documents (128 blocks, 256 ranks
scored). Prints p50 / p99 / mean in microseconds for:

- Python, list input: `router.best_worker(list_of_ints, dry_run=True)`;
- Python, NumPy uint32 input: the same with a NumPy array (read in place);
- Python, NumPy, charged: `router.route(array)` charging the rank, finished untimed;
- Rust: the same dry-run decision timed inside the extension (`Router._time_decisions`).

Each Python call is timed with `time.perf_counter_ns` around it (its own cost, ~0.1 us,
is included). Build the extension optimised first: `pip install ./py` or
`maturin develop --release -m py/Cargo.toml`.

    python bench/python/best_worker_latency.py [--iterations 20000] [--json]
"""

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import time

import numpy as np

import kvroute

WORKERS, DP, BLOCK, TOKENS, DOCUMENTS = 64, 4, 16, 2048, 32


def build_router(seed):
    rng = random.Random(seed)
    router = kvroute.Router(block_size=BLOCK, seed=seed)
    documents = [[rng.randrange(1, 150_000) for _ in range(TOKENS)] for _ in range(DOCUMENTS)]
    next_hash = 1
    for worker in range(WORKERS):
        router.add_worker(worker, dp_size=DP)
        for rank in range(DP):
            document = documents[rng.randrange(DOCUMENTS)]
            blocks = rng.randrange(8, TOKENS // BLOCK + 1)
            hashes = list(range(next_hash, next_hash + blocks))
            next_hash += blocks
            event = ["BlockStored", hashes, None, document[: blocks * BLOCK], BLOCK, None, "GPU"]
            router.apply_events(worker, rank, [time.time(), [event], rank])
    return router, documents


def summary(nanoseconds):
    ordered = sorted(nanoseconds)
    return {
        "p50_us": ordered[len(ordered) // 2] / 1000,
        "p99_us": ordered[min(len(ordered) - 1, len(ordered) * 99 // 100)] / 1000,
        "mean_us": statistics.fmean(ordered) / 1000,
        "n": len(ordered),
    }


def time_python(call, prompts, iterations):
    times = []
    clock = time.perf_counter_ns
    for i in range(iterations):
        prompt = prompts[i % len(prompts)]
        start = clock()
        call(prompt)
        times.append(clock() - start)
    return times


def machine():
    try:
        model = next(line.split(":", 1)[1].strip() for line in subprocess.run(
            ["lscpu"], capture_output=True, text=True).stdout.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        model = platform.processor() or "unknown CPU"
    return f"{model}, {os.cpu_count()} CPUs, Python {platform.python_version()}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=20_000, help="timed decisions per variant")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args()

    router, documents = build_router(args.seed)
    as_lists = documents
    as_arrays = [np.array(d, dtype=np.uint32) for d in documents]
    results = {}
    # Each variant runs twice: a warm-up (caches, allocator), then the timed run.
    variants = [
        ("python_list", lambda: time_python(lambda p: router.best_worker(p, dry_run=True), as_lists, args.iterations)),
        ("python_numpy", lambda: time_python(lambda p: router.best_worker(p, dry_run=True), as_arrays, args.iterations)),
        ("rust", lambda: [t for i, a in enumerate(as_arrays) for t in
                          router._time_decisions(a, args.iterations // len(as_arrays), dry_run=True)]),
    ]
    for name, run in variants:
        run()
        results[name] = summary(run())
    # Charged: route and finish (finish untimed), so loads stay as they were.
    times = []
    clock = time.perf_counter_ns
    for i in range(args.iterations):
        prompt = as_arrays[i % len(as_arrays)]
        start = clock()
        decision = router.route(prompt)
        times.append(clock() - start)
        router.finish(decision.request_id)
    results["python_numpy_charged"] = summary(times)
    assert router.active_requests() == 0

    report = {
        "machine": machine(),
        "kvroute": kvroute.__version__,
        "fleet": f"{WORKERS} workers x {DP} ranks, {TOKENS}-token prompts, block {BLOCK}",
        "results": results,
        "python_numpy_over_rust_p50": results["python_numpy"]["p50_us"] / results["rust"]["p50_us"],
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"best_worker, {report['fleet']}; {report['machine']}")
    print(f"{'variant':<24}{'p50 us':>10}{'p99 us':>10}{'mean us':>10}{'n':>9}")
    for name, r in results.items():
        print(f"{name:<24}{r['p50_us']:>10.2f}{r['p99_us']:>10.2f}{r['mean_us']:>10.2f}{r['n']:>9}")
    print(f"Python (NumPy) / Rust, p50: {report['python_numpy_over_rust_p50']:.2f}x")


if __name__ == "__main__":
    main()
