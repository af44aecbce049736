#!/usr/bin/env bash
# The one-call GPU check, in two halves.
#
#   bash scripts/gpu-check.sh pack   # here, on a machine without a GPU
#   bash scripts/gpu-check.sh run    # there, on the GPU host, in one call
#
# `pack` builds the CUDA binaries (candle-mpi and the GPU test suite) with the
# CUDA 13 wheels of scripts/setup-cuda-toolkit.sh, strips them, and lays out
# what a GPU host with CUDA, NCCL and PyTorch as Python packages may still
# lack: Open MPI's libraries, plugins and help files (the binary links
# libmpi), and the other libraries ldd resolves here, except the C runtime
# and the CUDA libraries the host has. All of it goes into gpu-pack/ (ignored
# by git) as one compressed archive of at most 48 MiB.
#
# `run` unpacks it, finds the host's CUDA libraries, and runs the checks of
# scripts/gpu_check.py: nvidia-smi, the library resolution (ldd), the GPU
# test suite, one training run of each network on one GPU at 224 px with
# images/s and memory, `allreduce --backend nccl` on one GPU, and PyTorch's
# images/s for the same networks and batches on the same GPU. It prints as it
# goes and writes results.json and results.md to $OUT (or gpu-check-out/).
# Without a CUDA driver or device it says so and exits 3.
#
# Device tool: run(command="bash scripts/gpu-check.sh run", carry=["gpu-pack"]).
set -euo pipefail
cd "$(dirname "$0")/.."

PACK=gpu-pack
LIMIT_MIB=48
log() { echo "gpu-check: $*" >&2; }

# Libraries the GPU host brings itself: the C runtime and the CUDA/NCCL family.
host_owned() {
  case "$(basename "$1")" in
    linux-vdso* | ld-linux* | libc.so* | libm.so* | libdl.so* | libpthread.so* | librt.so* | libresolv.so* | \
    libgcc_s.so* | libstdc++.so* | libcuda.so* | libnccl.so* | libcudart.so* | libcublas* | libcurand.so* | \
    libnvrtc* | libnvidia-*) return 0 ;;
  esac
  return 1
}

# Every library that the ELF files named on stdin resolve to here, once each.
resolved_libs() {
  while read -r elf; do
    ldd "$elf" 2>/dev/null | awk '/=> \// {print $3}'
  done | sort -u
}

pack() {
  command -v ldd >/dev/null && command -v xz >/dev/null || { log "pack needs ldd and xz"; exit 1; }
  # The H200 is compute capability 9.0 (candle-kernels builds sm_90a for it).
  export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
  eval "$(bash scripts/setup-cuda-toolkit.sh)"
  local target=$CANDLE_MPI_CUDA_TARGET
  log "building candle-mpi and tests/gpu.rs with --features cuda for compute capability $CUDA_COMPUTE_CAP"
  CARGO_TARGET_DIR=$target cargo build --release --locked --features cuda --bin candle-mpi --test gpu >&2
  local suite
  suite=$(CARGO_TARGET_DIR=$target cargo test --release --locked --features cuda --test gpu --no-run \
    --message-format=json 2>/dev/null | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "gpu" and m.get("executable"):
        print(m["executable"])')
  [ -x "$suite" ] || { log "cannot find the built GPU test suite"; exit 1; }

  stage=$(mktemp -d)
  trap 'rm -rf "$stage"' EXIT
  mkdir -p "$stage/bin" "$stage/lib"
  strip -o "$stage/bin/candle-mpi" "$target/release/candle-mpi"
  strip -o "$stage/bin/gpu-suite" "$suite"

  # Open MPI as the GPU host lacks it, relocatable through OPAL_PREFIX: its
  # plugins and help files under the same paths below the prefix as here.
  local ompi_lib ompi_plugins ompi_data
  ompi_lib=$(ompi_info --path libdir --parsable 2>/dev/null | sed -n 's/^path:libdir://p')
  ompi_plugins=$(ompi_info --path pkglibdir --parsable 2>/dev/null | sed -n 's/^path:pkglibdir://p')
  ompi_data=$(ompi_info --path pkgdatadir --parsable 2>/dev/null | sed -n 's/^path:pkgdatadir://p')
  [ -d "$ompi_plugins" ] || { log "ompi_info names no plugin folder (is Open MPI installed? scripts/setup.sh)"; exit 1; }
  local prefix=/usr
  mkdir -p "$stage/ompi${ompi_plugins#$prefix}" "$stage/ompi${ompi_data#$prefix}"
  cp -a "$ompi_plugins"/. "$stage/ompi${ompi_plugins#$prefix}/"
  cp -a "$ompi_data"/. "$stage/ompi${ompi_data#$prefix}/"
  printf '%s\n' "${ompi_lib#$prefix}" "${ompi_plugins#$prefix}" >"$stage/ompi/PATHS"

  # The libraries all of it needs, but those the host brings.
  local lib
  { echo "$stage/bin/candle-mpi"; echo "$stage/bin/gpu-suite"; find "$stage/ompi" -name '*.so'; } | resolved_libs |
    while read -r lib; do
      host_owned "$lib" || cp -L "$lib" "$stage/lib/"
    done
  # Their own needs, once more (libraries that only plugins pull in).
  find "$stage/lib" -name '*.so*' | resolved_libs | while read -r lib; do
    host_owned "$lib" || [ -e "$stage/lib/$(basename "$lib")" ] || cp -L "$lib" "$stage/lib/"
  done

  {
    echo "candle-mpi GPU pack, made $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname)"
    echo "commit $(git rev-parse HEAD)$(git diff --quiet HEAD -- || echo ' (with uncommitted changes)')"
    echo "CUDA_COMPUTE_CAP $CUDA_COMPUTE_CAP; nvcc $(nvcc --version | tail -1)"
    echo "Open MPI $(ompi_info --version 2>/dev/null | head -1)"
    (cd "$stage" && find . -type f | sort | xargs du -b | awk '{printf "%10d %s\n", $1, $2}')
  } >"$stage/MANIFEST"

  rm -rf "$PACK"
  mkdir -p "$PACK"
  log "compressing $(du -sh "$stage" | cut -f1) into $PACK/payload.tar.xz"
  tar -C "$stage" -cf - . | xz -T2 -6 >"$PACK/payload.tar.xz"
  cp "$stage/MANIFEST" "$PACK/MANIFEST"
  local size
  size=$(du -b "$PACK/payload.tar.xz" | cut -f1)
  if [ "$size" -gt $((LIMIT_MIB * 1024 * 1024)) ]; then
    log "the pack is $((size / 1024 / 1024)) MiB, over its $LIMIT_MIB MiB"
    exit 1
  fi
  rm -rf "$stage"
  trap - EXIT
  log "packed: $PACK/payload.tar.xz, $((size / 1024 / 1024)) MiB of at most $LIMIT_MIB; $PACK/MANIFEST lists it"
}

# The pack unpacked into $1 by Python's tarfile, as tar would (the pack is
# our own): the GPU machine may lack xz.
unpack_payload() {
  python3 - "$PACK/payload.tar.xz" "$1" <<'PY'
import sys, tarfile
trusted = {"filter": "fully_trusted"} if hasattr(tarfile, "fully_trusted_filter") else {}
with tarfile.open(sys.argv[1], "r:xz") as pack:
    pack.extractall(sys.argv[2], **trusted)
PY
}

run() {
  [ -f "$PACK/payload.tar.xz" ] || { log "no $PACK/payload.tar.xz: run 'bash scripts/gpu-check.sh pack' first, then carry $PACK"; exit 1; }
  local root=${CANDLE_MPI_GPU_ROOT:-/tmp/candle-mpi-gpu}
  rm -rf "$root"
  mkdir -p "$root"
  unpack_payload "$root"
  local out=${OUT:-gpu-check-out}
  mkdir -p "$out"
  exec python3 scripts/gpu_check.py --root "$root" --out "$out" --budget-s "${CANDLE_MPI_GPU_BUDGET_S:-450}"
}

# What can be checked of both halves without a GPU (scripts/test.sh runs it):
# the pack is made and within its limit; `run` ends with "no CUDA device"
# where there is no nvidia-smi, and with "no CUDA driver" where an nvidia-smi
# answers but libcuda.so.1 is missing; and the packed Open MPI carries a
# singleton on its own: with the system's Open MPI hidden in a mount
# namespace (root only) and link stubs standing in for the CUDA libraries,
# the packed CUDA binary runs `allreduce` and a CPU training run.
selftest() {
  pack
  local tmp
  tmp=$(mktemp -d)
  trap "rm -rf '$tmp'" EXIT
  local rc=0
  OUT=$tmp/no-device PATH=$(no_nvidia_smi_path) CANDLE_MPI_GPU_ROOT=$tmp/unpacked bash scripts/gpu-check.sh run >"$tmp/log" 2>&1 || rc=$?
  [ "$rc" -eq 3 ] && grep -q "no CUDA device" "$tmp/log" || { cat "$tmp/log"; log "selftest: run without a GPU: exit $rc"; exit 1; }
  mkdir -p "$tmp/fake"
  printf '#!/bin/sh
echo "NVIDIA H200, 580.159.04, 143771 MiB, 9.0, 00000000:18:00.0"
' >"$tmp/fake/nvidia-smi"
  chmod +x "$tmp/fake/nvidia-smi"
  rc=0
  OUT=$tmp/no-driver PATH=$tmp/fake:$(no_nvidia_smi_path) CANDLE_MPI_GPU_ROOT=$tmp/unpacked bash scripts/gpu-check.sh run >"$tmp/log" 2>&1 || rc=$?
  [ "$rc" -eq 3 ] && grep -q "no CUDA driver" "$tmp/log" || { cat "$tmp/log"; log "selftest: run without a driver: exit $rc"; exit 1; }
  log "selftest: run says 'no CUDA device' and 'no CUDA driver' (exit 3) where they are missing"

  if [ "$(id -u)" -ne 0 ] || ! command -v unshare >/dev/null; then
    log "selftest: the packed Open MPI is not tried (needs root and unshare for a mount namespace)"
    return
  fi
  mkdir -p "$tmp/stubs" "$tmp/root"
  unpack_payload "$tmp/root"
  eval "$(bash scripts/setup-cuda-toolkit.sh)"
  local cuda_lib
  cuda_lib=$(dirname "$(command -v nvcc)")/../lib
  for spec in cuda:1 nccl:2 curand:10 cublas:13 cublasLt:13 nvrtc:13; do
    ln -s "$cuda_lib/stubs/lib${spec%%:*}.so" "$tmp/stubs/lib${spec%%:*}.so.${spec##*:}"
  done
  local ompi_lib
  ompi_lib=$(ompi_info --path libdir --parsable | sed -n 's/^path:libdir://p')
  ROOT=$tmp/root STUBS=$tmp/stubs CUDA_LIB=$cuda_lib OMPI_LIB=$ompi_lib unshare -m bash -euo pipefail -c '
    # The system Open MPI out of sight: its plugins, help files, libraries and daemons.
    for d in "$OMPI_LIB" /usr/lib/x86_64-linux-gnu/pmix2 /usr/share/openmpi /etc/openmpi; do
      [ -d "$d" ] && mount -t tmpfs none "$d"
    done
    for f in /usr/lib/x86_64-linux-gnu/lib{mpi,open-rte,open-pal,pmix}.so.* /usr/bin/orted /usr/bin/orterun; do
      if [ -f "$f" ]; then mount --bind /dev/null "$f"; fi
    done
    export LD_LIBRARY_PATH=$ROOT/lib:$STUBS:$CUDA_LIB OPAL_PREFIX=$ROOT/ompi OMPI_MCA_ess_singleton_isolated=1
    ! ldd "$ROOT/bin/candle-mpi" | grep "not found"
    "$ROOT/bin/candle-mpi" allreduce --max-bytes 64K --iters 2 --warmup 1 | grep -q "Out of bounds values : 0"
    "$ROOT/bin/candle-mpi" train --model small --image-size 16 --steps 2 | grep -q "done: 2 steps"
  ' || { log "selftest: the packed Open MPI did not carry a singleton with the system one hidden"; exit 1; }
  log "selftest: with the system Open MPI hidden, the packed one ran allreduce and a training run"
}

# PATH without any folder that holds an nvidia-smi.
no_nvidia_smi_path() {
  local d kept=()
  IFS=: read -ra dirs <<<"$PATH"
  for d in "${dirs[@]}"; do
    [ -x "$d/nvidia-smi" ] || kept+=("$d")
  done
  (IFS=:; echo "${kept[*]}")
}

case "${1:-}" in
  pack) pack ;;
  run) run ;;
  selftest) selftest ;;
  *)
    echo "usage: bash scripts/gpu-check.sh pack|run|selftest" >&2
    exit 2
    ;;
esac
