#!/usr/bin/env python3
"""What this host gives a second thread: the ceiling of any 2-thread speed-up.

For each network and input size, rounds alternate three runs of the same
training step (synthetic data, batch 16, one process each unless said):

  one      one process, 1 thread
  pair     two processes of 1 thread each, started together
  threads  one process, 2 threads

The pair shares nothing but the machine (cores, caches, memory bandwidth,
the hypervisor's other tenants), so its throughput over `one`'s,
2 * one / pair, is what the second core adds with no synchronisation, no
waiting and no work split: the most a 2-thread process could get here. The
table gives it beside the 2-thread process's speed-up (one / threads) and
their ratio, the share of the ceiling the threads reach. `--pytorch` runs
PyTorch eager's step (scripts/compare-pytorch.py's) the same three ways in
the same rounds. Each figure is the median over rounds of each run's median
step time.

Usage: python3 scripts/thread-ceiling.py [--image-size 64,128] [--batch-size 16]
           [--rounds 3] [--steps 6] [--warmup 2] [--pytorch] [MODEL ...]
Needs target/release/candle-mpi; with --pytorch, run it with a Python that
has torch and torchvision (e.g. /tmp/tv/bin/python, see compare-pytorch.py).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

from arg_types import int_list, positive

HERE = os.path.dirname(os.path.abspath(__file__))
EXE = os.path.join(HERE, "..", "target", "release", "candle-mpi")
COMPARE = os.path.join(HERE, "compare-pytorch.py")
MODELS = ["alexnet", "vgg16", "resnet50", "googlenet"]


def candle_start(model, threads, size, a, out):
    cmd = [EXE, "--threads", str(threads), "train", "--model", model, "--image-size", str(size),
           "--batch-size", str(a.batch_size), "--classes", "10", "--steps", str(a.warmup + a.steps),
           "--warmup-steps", str(a.warmup), "--log-every", "1000", "--out", out, "--overwrite"]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def candle_finish(proc, out):
    _, err = proc.communicate()
    if proc.returncode != 0:
        sys.exit(f"candle-mpi failed ({proc.returncode}): {err.strip()[-2000:]}")
    with open(os.path.join(out, "summary.json")) as f:
        return json.load(f)["step_s_median"]


def torch_start(model, threads, size, a, _out):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    cmd = [sys.executable, COMPARE, "--torch-worker", model, "--threads", str(threads), "--image-size", str(size),
           "--batch-size", str(a.batch_size), "--steps", str(a.steps), "--warmup", str(a.warmup)]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def torch_finish(proc, _out):
    out, err = proc.communicate()
    if proc.returncode != 0:
        sys.exit(f"PyTorch failed ({proc.returncode}): {err.strip()[-2000:]}")
    return json.loads(out.strip().splitlines()[-1])["step_s"]


def run(start, finish, model, size, a, threads, copies):
    """The median step time of each of `copies` processes started together."""
    with tempfile.TemporaryDirectory() as tmp:
        outs = [os.path.join(tmp, str(i)) for i in range(copies)]
        procs = [start(model, threads, size, a, out) for out in outs]
        return [finish(p, out) for p, out in zip(procs, outs)]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--image-size", type=int_list, default=[64], help="input sides in pixels, e.g. 64,128 (default 64)")
    ap.add_argument("--batch-size", type=positive, default=16, help="images per step and process (default 16)")
    ap.add_argument("--rounds", type=positive, default=3, help="alternating rounds (default 3)")
    ap.add_argument("--steps", type=positive, default=6, help="timed steps per run (default 6)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps before them (default 2)")
    ap.add_argument("--pytorch", action="store_true", help="also run PyTorch eager's step the same three ways")
    ap.add_argument("models", nargs="*", default=["resnet50", "googlenet"],
                    help="networks (default: resnet50 googlenet)")
    a = ap.parse_args()
    unknown = [m for m in a.models if m not in MODELS]
    if unknown:
        ap.error(f"unknown network(s) {' '.join(unknown)}: expected some of {' '.join(MODELS)}")
    if a.warmup < 0:
        ap.error(f"--warmup {a.warmup}: expected 0 or more steps")
    if not os.path.exists(EXE):
        ap.error(f"{EXE} not found: build it first (cargo build --release)")
    if os.cpu_count() != 2:
        print(f"note: this host has {os.cpu_count()} cores; the pair and the threads assume 2", file=sys.stderr)
    tools = [("candle-mpi", candle_start, candle_finish)]
    if a.pytorch:
        tools.append(("PyTorch", torch_start, torch_finish))
    print(f"batch {a.batch_size} per process; medians of {a.rounds} alternating rounds of {a.steps} steps "
          f"after {a.warmup} warm-up")
    print("| tool | network | px | one: 1 thread (s/step) | pair: 2 x 1 thread (s/step) | threads: 2 threads (s/step) "
          "| ceiling 2 x one / pair | 2-thread speed-up one / threads | share of the ceiling |")
    print("|---|---|---|---|---|---|---|---|---|")
    for model in a.models:
        for size in a.image_size:
            times = {(name, kind): [] for name, _, _ in tools for kind in ("one", "pair", "threads")}
            for _ in range(a.rounds):
                for name, start, finish in tools:
                    times[(name, "one")] += run(start, finish, model, size, a, 1, 1)
                    pair = run(start, finish, model, size, a, 1, 2)
                    times[(name, "pair")].append(statistics.mean(pair))
                    times[(name, "threads")] += run(start, finish, model, size, a, 2, 1)
            for name, _, _ in tools:
                one, pair, threads = (statistics.median(times[(name, k)]) for k in ("one", "pair", "threads"))
                ceiling, speedup = 2 * one / pair, one / threads
                print(f"| {name} | {model} | {size} | {one:.3f} | {pair:.3f} | {threads:.3f} | {ceiling:.2f}x "
                      f"| {speedup:.2f}x | {speedup / ceiling:.0%} |", flush=True)


if __name__ == "__main__":
    main()
