#!/usr/bin/env python3
"""The per-layer table of docs/performance.md from the last `cargo bench --bench conv`.

Reads criterion's records under target/criterion (median time of each
benchmark, and the floating-point operations it was given as throughput) and
prints GFLOP/s for candle's conv2d and ours (forward + backward), ours as a
share of the GEMM ceiling measured in the same bench run, and our backward
alone (forward + backward minus forward; two thirds of the operations), at
1 thread, then ours at 2 threads and its speed-up over 1.

Usage: cargo bench --bench conv && python3 scripts/conv-table.py
"""
import json
import os

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "target", "criterion")


def record(group, bench):
    """(floating-point operations, median ns) of one benchmark."""
    d = os.path.join(ROOT, group, bench, "new")
    with open(os.path.join(d, "benchmark.json")) as f:
        flops = json.load(f)["throughput"]["Elements"]
    with open(os.path.join(d, "estimates.json")) as f:
        ns = json.load(f)["median"]["point_estimate"]
    return flops, ns


def gflops(group, bench):
    flops, ns = record(group, bench)
    return flops / ns


def backward_gflops(group, threads):
    """The backward alone: forward + backward minus forward, doing two of the
    three GEMM-sized passes (input and weight gradients)."""
    flops, both = record(group, f"ours_fwd_bwd_{threads}t")
    _, fwd = record(group, f"ours_fwd_{threads}t")
    return (2 * flops / 3) / (both - fwd)


def main():
    ceiling = gflops("gemm_ceiling", "matmul_512x576x4096")
    print(f"GEMM ceiling (candle's single-thread f32 matmul 512x576x4096): {ceiling:.1f} GFLOP/s")
    print("| layer | candle conv2d, fwd + bwd (GFLOP/s) | ours, fwd + bwd (GFLOP/s) | ours / ceiling | ours, backward alone (GFLOP/s) | backward / ceiling | ours at 2 threads, fwd + bwd (GFLOP/s) | speed-up, fwd + bwd | speed-up, backward |")
    print("|---|---|---|---|---|---|---|---|---|")
    for group in sorted(os.listdir(ROOT)):
        if group in ("gemm_ceiling", "report") or not os.path.isdir(os.path.join(ROOT, group, "ours_fwd_1t")):
            continue
        theirs, ours, bwd = gflops(group, "candle_fwd_bwd"), gflops(group, "ours_fwd_bwd_1t"), backward_gflops(group, 1)
        two, bwd2 = gflops(group, "ours_fwd_bwd_2t"), backward_gflops(group, 2)
        print(f"| {group} | {theirs:.1f} | {ours:.1f} | {100 * ours / ceiling:.0f}% | {bwd:.1f} | {100 * bwd / ceiling:.0f}% "
              f"| {two:.1f} | {two / ours:.2f}x | {bwd2 / bwd:.2f}x |")


if __name__ == "__main__":
    main()
