#!/usr/bin/env python3
"""Makes the fixtures tests/torchvision.rs holds candle-mpi's networks to:
candle-mpi's own seeded initial weights and input batch (written by
`candle-mpi export --model M --seed S --batch N`) run through torchvision's
network forward and backward, in f64 (the reference) and in f32 (how far an
f32 computation of the same network strays from it: the spread). Each
fixture keeps the logits, the loss, and per parameter its gradient's L2
norm, sum and a fixed sample of elements, each with its f32 spread:
kilobytes, not weights. (Batch norm over few values makes ResNet50's
training-mode gradients ill-conditioned: torchvision's own f32 gradient
norms move by up to 0.6% from f64 there, so a fixed f32 tolerance would test
the reference's rounding, not the network.) Run once by a developer with torch
installed (python3 -m venv /tmp/tv && /tmp/tv/bin/pip install torch
torchvision safetensors); the tests need no torch.

  /tmp/tv/bin/python scripts/torchvision-fixtures.py [target/release/candle-mpi]
"""
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from importlib import import_module

network = import_module("torchvision-export").network

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "data" / "torchvision"
CLASSES, SEED, BATCH, SAMPLES = 10, 7, 2, 8
# AlexNet at 64 px: torchvision's unpadded pools need 63 or more (candle-mpi pads below).
CASES = [("alexnet", 64, "train"), ("vgg16", 32, "train"), ("resnet50", 64, "train"), ("googlenet", 32, "train"), ("resnet50", 64, "eval")]


def run(model, weights, batch, mode, dtype):
    """torchvision's MODEL in `dtype`: logits, loss, gradients by name."""
    net = network(model, CLASSES)
    net.load_state_dict(load_file(weights), strict=True)
    net = net.to(dtype)
    for m in net.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    net.train(mode == "train")
    b = load_file(batch)
    logits = net(b["images"].to(dtype))
    loss = torch.nn.functional.cross_entropy(logits, b["labels"])
    loss.backward()
    grads = {n: p.grad.detach().flatten().double() for n, p in net.named_parameters()}
    return logits.detach().double(), loss.item(), grads


def fixture(binary, model, size, mode, tmp):
    weights, batch = tmp / f"{model}-w.safetensors", tmp / f"{model}-{mode}-b.safetensors"
    for f in (weights, batch):
        f.unlink(missing_ok=True)
    subprocess.run(
        [binary, "export", "--model", model, "--classes", str(CLASSES), "--image-size", str(size), "--seed", str(SEED),
         "--batch", str(BATCH), "--batch-out", str(batch), str(weights)],
        check=True, stdout=subprocess.DEVNULL)
    logits, loss, grads = run(model, weights, batch, mode, torch.float64)
    logits32, loss32, grads32 = run(model, weights, batch, mode, torch.float32)
    out = {}
    for name, g in grads.items():
        g32 = grads32[name]
        at = [i * g.numel() // SAMPLES for i in range(SAMPLES)]
        out[name] = {
            "l2": g.norm().item(), "l2_spread": abs(g32.norm().item() - g.norm().item()),
            "sum": g.sum().item(), "sum_spread": abs(g32.sum().item() - g.sum().item()),
            "sample": [[i, g[i].item(), abs(g32[i].item() - g[i].item())] for i in at],
        }
    return {
        "source": f"torchvision {__import__('torchvision').__version__}, torch {torch.__version__}, f64 on the CPU "
                  "(spreads: its f32 run's distance from it)",
        "model": model, "image_size": size, "classes": CLASSES, "seed": SEED, "batch": BATCH, "mode": mode,
        "logits": logits.tolist(), "logits_spread": (logits32 - logits).abs().max().item(),
        "loss": loss, "loss_spread": abs(loss32 - loss), "grads": out,
    }


def main():
    binary = sys.argv[1] if len(sys.argv) > 1 else str(ROOT / "target" / "release" / "candle-mpi")
    torch.set_num_threads(1)
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as d:
        for model, size, mode in CASES:
            f = fixture(binary, model, size, mode, Path(d))
            path = OUT / f"{model}-{mode}.json"
            path.write_text(json.dumps(f) + "\n")
            print(f"{path.relative_to(ROOT)}: loss {f['loss']:.6f}, {len(f['grads'])} gradients")


if __name__ == "__main__":
    main()
