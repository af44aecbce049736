#!/usr/bin/env python3
"""Every per-operation bench at 1 and 2 threads, from the last `cargo bench` runs.

Reads criterion's records under target/criterion and, for each benchmark
named `..._1t` that has a `..._2t` beside it (benches/conv.rs, batch_norm.rs,
pooling.rs, sgd.rs, exchange.rs), prints the median time of each and the
speed-up from 1 to 2 threads. Groups given on the command line narrow the
table to those whose name contains one of them.

Usage: cargo bench --bench batch_norm && python3 scripts/threads-table.py [GROUP ...]
"""
import json
import os
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "target", "criterion")


def median_ns(group, bench):
    with open(os.path.join(ROOT, group, bench, "new", "estimates.json")) as f:
        return json.load(f)["median"]["point_estimate"]


def readable(ns):
    for unit, size in (("s", 1e9), ("ms", 1e6), ("us", 1e3)):
        if ns >= size:
            return f"{ns / size:.3g} {unit}"
    return f"{ns:.3g} ns"


def rows(wanted):
    """(group, bench without its thread suffix, ns at 1 thread, ns at 2 threads)."""
    if not os.path.isdir(ROOT):
        sys.exit(f"no criterion records under {ROOT}: run `cargo bench` first")
    for group in sorted(os.listdir(ROOT)):
        if wanted and not any(w in group for w in wanted):
            continue
        benches = set(os.listdir(os.path.join(ROOT, group)))
        for one in sorted(b for b in benches if b.endswith("_1t")):
            two = one[:-3] + "_2t"
            if two in benches:
                yield group, one[:-3], median_ns(group, one), median_ns(group, two)


def main():
    found = list(rows(sys.argv[1:]))
    if not found:
        sys.exit("no benchmark has both a _1t and a _2t record" + (f" in groups matching {sys.argv[1:]}" if sys.argv[1:] else ""))
    print("| group | benchmark | 1 thread | 2 threads | speed-up |")
    print("|---|---|---|---|---|")
    for group, bench, one, two in found:
        print(f"| {group} | {bench} | {readable(one)} | {readable(two)} | {one / two:.2f}x |")


if __name__ == "__main__":
    main()
