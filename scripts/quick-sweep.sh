#!/usr/bin/env bash
# The main job on a fresh machine: a short CPU speed-up sweep and its report.
# AlexNet, ResNet50 and GoogLeNet at 32 px on synthetic data, 1, 2, 4 and 8
# workers (4 and 8 are oversubscribed on a 2-core host and marked so), one repeat,
# plus the host's ceiling. About 2 to 4 minutes on a 2-core VM.
# Usage: bash scripts/quick-sweep.sh [OUT_DIR]   (default runs/quick-sweep)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-runs/quick-sweep}"
# Open MPI refuses to run as root without these; harmless otherwise.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
exe=target/release/candle-mpi
[ -x "$exe" ] || { echo "quick-sweep: $exe is missing; run scripts/setup.sh first" >&2; exit 1; }
"$exe" bench --models alexnet,resnet50,googlenet --workers 1,2,4,8 --image-size 32 --classes 10 \
    --batch-size 16 --steps 4 --warmup 1 --repeat 1 --out "$out"
"$exe" report "$out" --reference theano-mpi
echo "quick-sweep: open $out/report.md (figures: $out/speedup.png, breakdown.png, efficiency.png)"
