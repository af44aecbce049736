#!/usr/bin/env python3
"""torchvision's weights in and out of candle-mpi, with torch and torchvision
from PyPI (python3 -m venv /tmp/tv && /tmp/tv/bin/pip install torch torchvision
safetensors). Nothing is downloaded at run time.

  torchvision-export.py MODEL OUT.safetensors [--classes K] [--seed N] [--pretrained FILE]
      torchvision's MODEL (alexnet, vgg16, resnet50, googlenet), randomly
      initialised from --seed or loaded from a local state-dict FILE (.pth
      or .safetensors, e.g. torchvision's pretrained weights you already
      have), written as a safetensors state dict: `candle-mpi train
      --init-from OUT` and `candle-mpi eval --init-from OUT` read it.

  torchvision-export.py --check MODEL FILE.safetensors [--classes K]
      loads FILE (written by `candle-mpi export`) into torchvision's MODEL
      with load_state_dict(strict=True) and prints what it holds.
"""
import argparse
import sys

import torch
import torchvision
from safetensors.torch import load_file, save_file


def network(name, classes):
    """torchvision's definition, as candle-mpi builds it (GoogLeNet without
    its auxiliary heads and without the input transform)."""
    if name == "googlenet":
        return torchvision.models.googlenet(weights=None, num_classes=classes, aux_logits=False, init_weights=True)
    return getattr(torchvision.models, name)(weights=None, num_classes=classes)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", choices=["alexnet", "vgg16", "resnet50", "googlenet"])
    p.add_argument("file")
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pretrained", help="a local state dict to export instead of random weights")
    p.add_argument("--check", action="store_true", help="load FILE into torchvision's network instead")
    a = p.parse_args()
    net = network(a.model, a.classes)
    if a.check:
        state = load_file(a.file)
        net.load_state_dict(state, strict=True)
        params = sum(t.numel() for n, t in net.named_parameters())
        print(f"{a.file}: loads into torchvision's {a.model} with load_state_dict(strict=True): {len(state)} tensors, {params:,} parameters")
        return
    torch.manual_seed(a.seed)
    net = network(a.model, a.classes)
    if a.pretrained:
        state = load_file(a.pretrained) if a.pretrained.endswith(".safetensors") else torch.load(a.pretrained, map_location="cpu")
        # A pretrained GoogLeNet carries its auxiliary heads; candle-mpi's does not build them.
        state = {k: v for k, v in state.items() if not k.startswith(("aux1.", "aux2."))}
        net.load_state_dict(state, strict=True)
    state = {k: v.contiguous() for k, v in net.state_dict().items()}
    save_file(state, a.file)
    print(f"torchvision {a.model} ({'from ' + a.pretrained if a.pretrained else f'seed {a.seed}'}): {len(state)} tensors written to {a.file}")


if __name__ == "__main__":
    sys.exit(main())
