#!/usr/bin/env python3
"""Splits the event-apply samples of a call-graph profile into the index's parts.

Reads `perf script -F ip,sym` output (a profile recorded with call graphs) on stdin,
keeps the samples whose stack passes through `KvIndex::apply` (the replay's event lanes,
the daemon's ingest), and prints, as shares of those samples:

- the parts, inclusive (a sample counts in every part its stack passes through): the
  rank maps (`hashbrown`, the engine-hash -> position maps), the touch-ahead probes,
  stores and removals, the tree's own work (splits, holder bits, child tables, shapes),
  the allocator, page faults and reclamation;
- the leaf symbols where the samples landed.

    perf record -F 1500 --call-graph dwarf,32768 -o apply.data \\
        target/release/replay --backends kvroute --max-runs 0 -q
    perf script -i apply.data -F ip,sym | python3 bench/scripts/apply_profile.py
"""

import collections
import sys

# (label, substrings of a frame's symbol that put a sample in the part)
PARTS = [
    ("rank maps (hashbrown)", ["hashbrown::"]),
    ("touch-ahead probes", ["touch_ahead"]),
    ("store", ["WriterState::store"]),
    ("remove", ["WriterState::remove"]),
    ("resolve (stale positions)", ["WriterState::resolve"]),
    ("tree: split/isolate/prune/holders/children/shapes",
     ["WriterState::split", "WriterState::isolate", "WriterState::prune", "WriterState::drop_positions",
      "set_holder", "clear_holder", "insert_child", "swap_shape", "child_table::", "Shape::", "Node::"]),
    ("allocator (mimalloc)", ["mi_", "__rust_alloc", "__rust_dealloc", "__rust_realloc"]),
    ("page faults (kernel)", ["exc_page_fault"]),
    ("reclamation (seize)", ["reclaim::", "seize::", "membarrier"]),
]


def samples(lines):
    """Yields each sample's frames, leaf first."""
    stack = []
    for line in lines:
        line = line.strip()
        if not line:
            if stack:
                yield stack
            stack = []
            continue
        parts = line.split(" ", 1)
        stack.append(parts[1] if len(parts) > 1 else parts[0])
    if stack:
        yield stack


def main():
    total = 0
    apply = 0
    inclusive = collections.Counter()
    leaves = collections.Counter()
    for stack in samples(sys.stdin):
        total += 1
        if not any("KvIndex::apply" in frame for frame in stack):
            continue
        apply += 1
        leaves[stack[0]] += 1
        for label, keys in PARTS:
            if any(key in frame for frame in stack for key in keys):
                inclusive[label] += 1
    if apply == 0:
        sys.exit("no sample passes through KvIndex::apply (recorded without --call-graph?)")
    print(f"{total} samples, {apply} in KvIndex::apply ({100 * apply / total:.1f}%)")
    print("parts, inclusive, % of apply samples:")
    for label, _ in PARTS:
        print(f"  {100 * inclusive[label] / apply:5.1f}%  {label}")
    print("leaf symbols, % of apply samples:")
    for symbol, n in leaves.most_common(12):
        print(f"  {100 * n / apply:5.1f}%  {symbol[:100]}")


if __name__ == "__main__":
    main()
