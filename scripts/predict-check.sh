#!/usr/bin/env bash
# The performance model against this machine: for each network, a 1-worker
# training and an `allreduce --json` run feed `candle-mpi predict`, and real
# 2-worker runs measure what it predicts, in the same script: 2 ranks on one
# host, and (as root, on the virtual cluster of scripts/cluster.sh) 2 hosts of
# 1 rank on links of --rate, with the exchange after backward and overlapped.
# Prints one table row per case: predicted and measured step, and their ratio.
#
#   bash scripts/predict-check.sh [--models resnet50,alexnet] [--rate 1gbit] [--steps 8] [--no-cluster]
set -euo pipefail
cd "$(dirname "$0")/.."
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
models=resnet50,alexnet rate=1gbit steps=8 cluster=1
while [ $# -gt 0 ]; do
  case $1 in
    --models) models=$2; shift 2 ;;
    --rate) rate=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    --no-cluster) cluster=0; shift ;;
    *) echo "predict-check: unknown flag $1 (accepted: --models, --rate, --steps, --no-cluster)" >&2; exit 2 ;;
  esac
done
bin=target/release/candle-mpi
[ -x $bin ] || { echo "predict-check: build first (cargo build --release)" >&2; exit 1; }
work=$(mktemp -d /tmp/candle-mpi-predict-check.XXXXXX)
name=pchk
cleanup() { [ $cluster = 1 ] && bash scripts/cluster.sh down --name $name >/dev/null 2>&1 || true; rm -rf "$work"; }
trap cleanup EXIT
train=(--threads 1 train --image-size 64 --batch-size 16 --classes 10 --steps "$steps" --warmup-steps 2 --log-every 1000)
field() { python3 -c "import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])" "$1" "$2"; }
predicted() { python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['rows'][0]['step_s'])" "$1"; }
row() { # case, model, predicted json, measured summary
  local p m; p=$(predicted "$3"); m=$(field "$4" step_s_median)
  python3 -c "import sys; p,m=float(sys.argv[3]),float(sys.argv[4]); print(f'| {sys.argv[1]} | {sys.argv[2]} | {p:.3f} | {m:.3f} | {m/p:.2f} |')" "$1" "$2" "$p" "$m"
}
echo "| case | network | predicted step s | measured step s | measured / predicted |"
echo "|---|---|---|---|---|"
mpirun -np 2 $bin allreduce --min-bytes 1M --max-bytes 64M --iters 10 --json "$work/ar-host.json" >/dev/null
if [ $cluster = 1 ]; then
  bash scripts/cluster.sh up 2 --slots 1 --rate "$rate" --name $name >/dev/null
  hf=$(bash scripts/cluster.sh hostfile --name $name)
  bash scripts/cluster.sh run --name $name -- mpirun -np 2 --hostfile "$hf" $bin allreduce --min-bytes 1M \
    --max-bytes 64M --iters 5 --json "$work/ar-cluster.json" >/dev/null
fi
for m in ${models//,/ }; do
  $bin "${train[@]}" --model $m --out "$work/$m-1" >/dev/null
  mpirun -np 2 $bin "${train[@]}" --model $m --out "$work/$m-2" >/dev/null
  $bin predict --model $m --image-size 64 --classes 10 --from "$work/$m-1" --link-from "$work/ar-host.json" \
    --gpus-per-host 2 --workers 2 --json "$work/$m-p2.json" >/dev/null
  row "1 host x 2 ranks" $m "$work/$m-p2.json" "$work/$m-2/summary.json"
  if [ $cluster = 1 ]; then
    for ov in off on; do
      bash scripts/cluster.sh run --name $name -- mpirun -np 2 --hostfile "$hf" $bin "${train[@]}" --model $m \
        --overlap $ov --out "$work/$m-c-$ov" >/dev/null
      flag=(); [ $ov = on ] && flag=(--overlap)
      $bin predict --model $m --image-size 64 --classes 10 --from "$work/$m-1" --link-from "$work/ar-cluster.json" \
        --gpus-per-host 1 --workers 2 "${flag[@]}" --json "$work/$m-pc-$ov.json" >/dev/null
      row "2 hosts x 1 rank, $rate, overlap $ov" $m "$work/$m-pc-$ov.json" "$work/$m-c-$ov/summary.json"
    done
  fi
done
