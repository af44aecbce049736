#!/usr/bin/env python3
"""Converts the UCI optical handwritten digits, as bundled with scikit-learn
(sklearn/datasets/data/digits.csv.gz: 1,797 rows of 64 pixels in 0..16 and a
label), to MNIST's IDX files under tests/data/digits/.

Every fifth digit (index % 5 == 4) goes to the test split (t10k-*), the rest to
train-*; pixels are scaled to 0..255 (round(v * 255 / 16)) as MNIST's are.

    python3 -m pip download --no-deps --only-binary=:all: scikit-learn -d /tmp/skl
    unzip -o /tmp/skl/scikit_learn-*.whl 'sklearn/datasets/data/digits.csv.gz' -d /tmp/skl
    python3 scripts/convert-digits.py /tmp/skl/sklearn/datasets/data/digits.csv.gz tests/data/digits
"""
import gzip
import struct
import sys
from pathlib import Path


def write_idx(path: Path, dims: list[int], data: bytes) -> None:
    # Magic: two zero bytes, type 0x08 (unsigned byte), number of dimensions.
    header = struct.pack(">BBBB", 0, 0, 0x08, len(dims)) + b"".join(struct.pack(">I", d) for d in dims)
    path.write_bytes(header + data)


def main() -> None:
    src, out = Path(sys.argv[1]), Path(sys.argv[2])
    rows = [list(map(float, line.split(","))) for line in gzip.open(src, "rt") if line.strip()]
    assert len(rows) == 1797 and all(len(r) == 65 for r in rows), "unexpected digits.csv layout"
    splits = {"train": [r for i, r in enumerate(rows) if i % 5 != 4], "t10k": [r for i, r in enumerate(rows) if i % 5 == 4]}
    out.mkdir(parents=True, exist_ok=True)
    for name, part in splits.items():
        pixels = bytes(round(v * 255 / 16) for r in part for v in r[:64])
        labels = bytes(int(r[64]) for r in part)
        write_idx(out / f"{name}-images-idx3-ubyte", [len(part), 8, 8], pixels)
        write_idx(out / f"{name}-labels-idx1-ubyte", [len(part)], labels)
        print(f"{name}: {len(part)} digits")


if __name__ == "__main__":
    main()
