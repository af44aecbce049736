#!/usr/bin/env python3
"""candle-mpi against PyTorch's CPU eager mode, side by side on this machine.

For each network, input size and thread count: one training step (forward,
cross-entropy, backward, SGD with momentum 0.9 and weight decay 1e-4),
10 classes, synthetic data, one process. Rounds alternate the two, so both
see the same host; each time is the median over rounds of each round's
median step (after warm-up steps), and each peak is the median over rounds
of the process's peak resident memory (VmHWM: PyTorch's includes its own
libraries, as a user's process would). Every PyTorch round runs in a fresh
process, so one round's peak is not another's.

Usage:
  python3 scripts/compare-pytorch.py [--threads 1,2] [--image-size 64,128]
      [--batch-size 16] [--rounds 3] [--steps 4] [--warmup 2] [--json OUT]
      [MODEL ...]
Needs torch and torchvision (a venv: python3 -m venv /tmp/tv &&
/tmp/tv/bin/pip install torch torchvision; run it with /tmp/tv/bin/python)
and target/release/candle-mpi.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

from arg_types import int_list, positive

EXE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "target", "release", "candle-mpi")
MODELS = ["alexnet", "vgg16", "resnet50", "googlenet"]


def peak_rss_mib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return 0.0


def torch_worker(model_name, threads, size, batch, steps, warmup):
    """Runs in its own process: prints {"step_s": ..., "peak_rss_mib": ...}."""
    import time

    import torch
    import torchvision

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    kwargs = {"num_classes": 10}
    if model_name == "googlenet":
        kwargs.update(aux_logits=False, init_weights=True)
    net = getattr(torchvision.models, model_name)(**kwargs)
    net.train()
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    x = torch.randn(batch, 3, size, size)
    y = torch.randint(0, 10, (batch,))
    times = []
    for i in range(warmup + steps):
        t = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
        if i >= warmup:
            times.append(time.perf_counter() - t)
    print(json.dumps({"step_s": statistics.median(times), "peak_rss_mib": peak_rss_mib(),
                      "torch": torch.__version__}))


def torch_round(model, threads, size, batch, steps, warmup):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--torch-worker", model, "--threads", str(threads),
                          "--image-size", str(size), "--batch-size", str(batch), "--steps", str(steps),
                          "--warmup", str(warmup)], env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def candle_round(model, threads, size, batch, steps, warmup):
    with tempfile.TemporaryDirectory() as out:
        subprocess.run([EXE, "--threads", str(threads), "train", "--model", model, "--image-size", str(size),
                        "--batch-size", str(batch), "--classes", "10", "--lr", "0.01", "--steps", str(warmup + steps),
                        "--warmup-steps", str(warmup), "--log-every", "1000", "--out", out, "--overwrite"],
                       check=True, capture_output=True)
        with open(os.path.join(out, "summary.json")) as f:
            s = json.load(f)
        return {"step_s": s["step_s_median"], "peak_rss_mib": s["peak_rss_mib"][0]}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int_list, default=[1], help="thread counts, e.g. 1,2 (default 1)")
    ap.add_argument("--image-size", type=int_list, default=[64], help="input sides in pixels, e.g. 64,128,224 (default 64)")
    ap.add_argument("--batch-size", type=positive, default=16, help="images per step (default 16)")
    ap.add_argument("--rounds", type=positive, default=3, help="alternating rounds per row (default 3)")
    ap.add_argument("--steps", type=positive, default=4, help="timed steps per round (default 4)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps before them (default 2)")
    ap.add_argument("--json", help="also write every round's figures to this file (refused if it exists)")
    ap.add_argument("--torch-worker", help=argparse.SUPPRESS)
    ap.add_argument("models", nargs="*", default=MODELS, help=f"networks (default: {' '.join(MODELS)})")
    a = ap.parse_args()
    if a.torch_worker:
        torch_worker(a.torch_worker, a.threads[0], a.image_size[0], a.batch_size, a.steps, a.warmup)
        return
    unknown = [m for m in a.models if m not in MODELS]
    if unknown:
        ap.error(f"unknown network(s) {' '.join(unknown)}: expected some of {' '.join(MODELS)}")
    if a.json and os.path.exists(a.json):
        ap.error(f"--json {a.json}: the file exists; choose another name (results are never overwritten)")
    if not os.path.exists(EXE):
        ap.error(f"{EXE} not found: build it first (cargo build --release)")
    print(f"batch {a.batch_size}; median of {a.rounds} alternating rounds of {a.steps} steps after {a.warmup} warm-up")
    print("| network | px | threads | PyTorch eager (s/step) | candle-mpi (s/step) | candle-mpi / PyTorch (time) "
          "| PyTorch peak (MiB) | candle-mpi peak (MiB) | rounds (PyTorch ; candle-mpi) |")
    print("|---|---|---|---|---|---|---|---|---|")
    rows = []
    for m in a.models:
        for size in a.image_size:
            for threads in a.threads:
                tt, cc = [], []
                for _ in range(a.rounds):
                    tt.append(torch_round(m, threads, size, a.batch_size, a.steps, a.warmup))
                    cc.append(candle_round(m, threads, size, a.batch_size, a.steps, a.warmup))
                med = lambda rs, k: statistics.median(r[k] for r in rs)
                t, c = med(tt, "step_s"), med(cc, "step_s")
                rounds = " ".join(f"{r['step_s']:.3f}" for r in tt) + " ; " + " ".join(f"{r['step_s']:.3f}" for r in cc)
                print(f"| {m} | {size} | {threads} | {t:.3f} | {c:.3f} | {c / t:.2f} | {med(tt, 'peak_rss_mib'):.0f} "
                      f"| {med(cc, 'peak_rss_mib'):.0f} | {rounds} |", flush=True)
                rows.append({"model": m, "image_size": size, "threads": threads, "batch_size": a.batch_size,
                             "torch": tt, "candle_mpi": cc, "torch_step_s": t, "candle_step_s": c})
    by = {(r["model"], r["image_size"], r["threads"]): r for r in rows}
    if 1 in a.threads and len(a.threads) > 1:
        print("\n| network | px | threads | PyTorch speed-up over 1 thread | candle-mpi speed-up over 1 thread |")
        print("|---|---|---|---|---|")
        for (m, size, threads), r in by.items():
            if threads != 1:
                one = by[(m, size, 1)]
                print(f"| {m} | {size} | {threads} | {one['torch_step_s'] / r['torch_step_s']:.2f}x "
                      f"| {one['candle_step_s'] / r['candle_step_s']:.2f}x |")
    if a.json:
        with open(a.json + ".tmp", "w") as f:
            json.dump(rows, f, indent=1)
        os.rename(a.json + ".tmp", a.json)


if __name__ == "__main__":
    main()
