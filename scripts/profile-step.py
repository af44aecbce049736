#!/usr/bin/env python3
"""Where a training step's time goes on the CPU, by kind of operation.

Runs `candle-mpi --threads 1 train` under `perf record --call-graph dwarf`
(1 thread, 64-pixel input, batch 16, synthetic data), then reads perf's
inclusive share of samples for the entry point of each operation. Only the
steady state is sampled: perf starts after the time a 3-step run of the same
command takes (the shorter of two; network construction and the first steps'
heap growth), and
the run goes on for 8 more steps. The loader thread is included.

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

from profile_common import startup_delay_ms

# How each operation is recognised in perf's report. "incl": the largest
# inclusive share of a matching symbol (its work, wherever it calls into);
# "self": the sum of the self shares of matching symbols (work done right
# there, over all their instances). Operations run on rayon's worker thread,
# so they are found by their own names, not under forward or backward.
OPS = [
    ("GEMM (gemm crate: convolutions and linear layers; self)", "self", r"^gemm_f32::|^gemm_common::"),
    ("im2col (ours: forward, and backward where forward did not keep cols)", "incl", r"candle_mpi::ops::conv::im2col$"),
    ("col2im (ours)", "incl", r"candle_mpi::ops::conv::col2im$"),
    ("candle conv2d (CANDLE_MPI_CONV=candle)", "incl", r"cpu_backend::conv2d::|Conv2D as"),
    ("candle conv_transpose2d (its input gradient)", "incl", r"ConvTranspose2D as|conv_transpose2d"),
    ("batch norm + ReLU forward (ours)", "incl", r"ops::batch_norm::BatchNormTrain as candle_core::custom_op::CustomOp3>::cpu_fwd$"),
    ("batch norm + ReLU backward (ours)", "incl", r"ops::batch_norm::BatchNormGrad as candle_core::custom_op::CustomOp3>::cpu_fwd$"),
    ("residual add + ReLU, and the fused ReLU's gradient (ours)", "incl", r"ops::(add_relu|relu_mask)::"),
    ("pooling, forward and backward", "incl", r"candle_mpi::ops::pool::PoolOp::(forward|backward)$"),
    ("elementwise: candle's ReLU, residual adds, gradient accumulation (self)", "self", r"binary_map|unary_map|affine|Affine|cmp_|where_cond|vec_sum|vec_dot"),
    ("reductions (self)", "self", r"ReduceIndex|ReduceSum|reduce_dim|fast_sum|fast_max"),
    ("copies and fills (self)", "self", r"copy_strided|copy2d|memmove|memcpy|memset"),
    ("SGD update", "incl", r"candle_mpi::optim::Sgd::step$"),
    ("gradient exchange (f16 pack/unpack; 1 rank)", "incl", r"candle_mpi::exchange::GradExchange::exchange$"),
    ("synthetic data (loader thread)", "incl", r"candle_mpi::data::loader"),
    ("page faults (kernel)", "incl", r"exc_page_fault$"),
]


def train_cmd(exe, model, steps):
    return [exe, "--threads", "1", "train", "--model", model, "--image-size", "64", "--batch-size", "16",
            "--steps", str(steps), "--log-every", "1000"]


def profile(model):
    exe = os.path.join(os.path.dirname(__file__), "..", "target", "release", "candle-mpi")
    skip_ms = startup_delay_ms(train_cmd(exe, model, 3))
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "perf.data")
        cmd = ["perf", "record", "--call-graph", "dwarf,65528", "-F", "499", "--delay", str(skip_ms), "-o", data]
        run = subprocess.run(cmd + train_cmd(exe, model, 11), capture_output=True, text=True, check=True)
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
        symbol = re.sub(r"\s+\(inlined\)$", "", symbol)
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
