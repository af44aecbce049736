#!/usr/bin/env python3
"""Where a training step's time goes on the CPU, by kind of operation.

Runs `candle-mpi --threads 1 train` under `perf record --call-graph dwarf`
(1 thread, 64-pixel input, batch 16, synthetic data), then reads perf's
inclusive share of samples for the entry point of each operation. The whole
process is sampled, network construction and the loader thread included;
--steps 8 keeps construction's share small.

Usage: python3 scripts/profile-step.py [MODEL ...]  (default: the four networks)
Needs perf (linux-perf) and target/release/candle-mpi.
Set CANDLE_MPI_CONV=candle to profile candle's own convolution instead of ours.
"""
import collections
import os
import re
import subprocess
import sys
import tempfile

# How each operation is recognised in perf's report. "incl": the largest
# inclusive share of a matching symbol (its work, wherever it calls into);
# "self": the sum of the self shares of matching symbols (work done right
# there, over all their instances). Operations run on rayon's worker thread,
# so they are found by their own names, not under forward or backward.
OPS = [
    ("network construction (once per run)", "incl", r"candle_mpi::models::ModelKind::build$"),
    ("GEMM (gemm crate: convolutions and linear layers)", "incl", r"gemm_f32::gemm::f32::\w+::gemm_basic$"),
    ("im2col (ours)", "incl", r"candle_mpi::models::conv::Im2Col"),
    ("col2im (ours)", "incl", r"candle_mpi::models::conv::Col2Im"),
    ("candle conv2d (CANDLE_MPI_CONV=candle)", "incl", r"cpu_backend::conv2d::|Conv2D as"),
    ("candle conv_transpose2d (its input gradient)", "incl", r"ConvTranspose2D as|conv_transpose2d"),
    ("pooling, forward and backward", "incl", r"candle_mpi::models::pool::"),
    ("elementwise: batch norm, ReLU, adds (self)", "self", r"binary_map|unary_map|affine|Affine|cmp_|where_cond|vec_sum|vec_dot"),
    ("reductions (self)", "self", r"ReduceIndex|ReduceSum|reduce_dim|fast_sum|fast_max"),
    ("copies and fills (self)", "self", r"copy_strided|copy2d|memmove|memcpy|memset"),
    ("SGD update", "incl", r"candle_mpi::sgd_cpu"),
    ("gradient exchange", "incl", r"candle_mpi::exchange::GradExchange::exchange$"),
    ("synthetic data (loader thread)", "incl", r"candle_mpi::data::loader"),
    ("page faults (kernel)", "incl", r"exc_page_fault$"),
]


def profile(model):
    exe = os.path.join(os.path.dirname(__file__), "..", "target", "release", "candle-mpi")
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "perf.data")
        cmd = ["perf", "record", "--call-graph", "dwarf,16384", "-F", "149", "-o", data, exe, "--threads", "1", "train",
               "--model", model, "--image-size", "64", "--batch-size", "16", "--steps", "8", "--log-every", "1000"]
        run = subprocess.run(cmd, capture_output=True, text=True, check=True)
        done = [l for l in run.stdout.splitlines() if l.startswith("done:")]
        report = subprocess.run(["perf", "report", "-i", data, "--children", "--sort", "symbol", "--stdio", "-g", "none"],
                                capture_output=True, text=True, check=True).stdout
    shares = collections.OrderedDict((name, 0.0) for name, _, _ in OPS)
    for line in report.splitlines():
        m = re.match(r"\s+([\d.]+)%\s+([\d.]+)%\s+\[[.k]\]\s+(.*?)\s*$", line)
        if not m:
            continue
        incl, own = float(m.group(1)), float(m.group(2))
        symbol = re.sub(r"(\s+-)+\s*$", "", m.group(3))  # perf pads with empty columns
        for name, how, pat in OPS:
            if re.search(pat, symbol):
                shares[name] = max(shares[name], incl) if how == "incl" else shares[name] + own
    return done[0] if done else "", shares


def main():
    models = sys.argv[1:] or ["alexnet", "vgg16", "resnet50", "googlenet"]
    for model in models:
        done, shares = profile(model)
        print(f"\n### {model}\n\n{done}\n\n| operation | share of samples |\n|---|---|")
        for name, pct in shares.items():
            if pct > 0:
                print(f"| {name} | {pct:.1f}% |")


if __name__ == "__main__":
    main()
