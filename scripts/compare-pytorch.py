#!/usr/bin/env python3
"""candle-mpi against PyTorch's CPU eager mode, side by side on this machine.

For each network: one training step (forward, cross-entropy, backward, SGD
with momentum 0.9 and weight decay 1e-4) at a 64-pixel input, batch 16,
10 classes, 1 thread, synthetic data. Rounds alternate the two, so both see
the same host; each figure is the median over rounds of each round's median
step (after warm-up steps).

Usage: python3 scripts/compare-pytorch.py [--rounds 3] [--steps 6] [MODEL ...]
Needs torch and torchvision (a venv: python3 -m venv /tmp/tv &&
/tmp/tv/bin/pip install torch torchvision; run it with /tmp/tv/bin/python)
and target/release/candle-mpi.
"""
import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time

import torch
import torchvision

EXE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "target", "release", "candle-mpi")


def torch_step_time(model_name, steps, warmup):
    torch.set_num_threads(1)
    torch.manual_seed(0)
    kwargs = {"num_classes": 10}
    if model_name == "googlenet":
        kwargs.update(aux_logits=False, init_weights=True)
    net = getattr(torchvision.models, model_name)(**kwargs)
    net.train()
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    x = torch.randn(16, 3, 64, 64)
    y = torch.randint(0, 10, (16,))
    times = []
    for i in range(warmup + steps):
        t = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
        if i >= warmup:
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def candle_step_time(model_name, steps, warmup):
    with tempfile.TemporaryDirectory() as out:
        subprocess.run([EXE, "--threads", "1", "train", "--model", model_name, "--image-size", "64", "--batch-size", "16",
                        "--classes", "10", "--lr", "0.01", "--steps", str(warmup + steps), "--warmup-steps", str(warmup),
                        "--log-every", "1000", "--out", out, "--overwrite"], check=True, capture_output=True)
        with open(os.path.join(out, "summary.json")) as f:
            return json.load(f)["step_s_median"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("models", nargs="*", default=["alexnet", "vgg16", "resnet50", "googlenet"])
    a = ap.parse_args()
    print(f"torch {torch.__version__}, 1 thread, 64 px, batch 16; median of {a.rounds} rounds of {a.steps} steps")
    print("| network | PyTorch eager (s/step) | candle-mpi (s/step) | candle-mpi / PyTorch (time) | rounds (PyTorch ; candle-mpi) |")
    print("|---|---|---|---|---|")
    for m in a.models:
        tt, cc = [], []
        for _ in range(a.rounds):
            tt.append(torch_step_time(m, a.steps, a.warmup))
            cc.append(candle_step_time(m, a.steps, a.warmup))
        t, c = statistics.median(tt), statistics.median(cc)
        rounds = " ".join(f"{v:.3f}" for v in tt) + " ; " + " ".join(f"{v:.3f}" for v in cc)
        print(f"| {m} | {t:.3f} | {c:.3f} | {c / t:.2f} | {rounds} |", flush=True)


if __name__ == "__main__":
    main()
