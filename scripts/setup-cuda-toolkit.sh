#!/usr/bin/env bash
# Assembles a CUDA 13.0 toolkit from PyPI wheels, enough to *compile* the `cuda`
# feature on a machine without a GPU or a CUDA install, and prints the
# environment to build with. Idempotent; everything goes to a cache folder
# outside the clone ($CANDLE_MPI_CACHE, default ~/.cache/candle-mpi).
#
#   eval "$(bash scripts/setup-cuda-toolkit.sh)"
#   cargo build --release --features cuda --all-targets
#
# The CUDA libraries a cuda build links against (libcuda, libnccl, libnvrtc,
# libcurand, libcublas, libcublasLt) are not in these wheels; no wheel ships
# libcuda. We link against *stubs*: shared libraries with the real sonames that
# define every symbol cudarc declares, as empty functions. A binary linked so
# runs only where the real libraries are installed (a GPU machine with the
# NVIDIA driver, NCCL and the CUDA 13 runtime libraries): there the loader
# takes the real ones by soname. Nothing of such a build is run here.
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE=${CANDLE_MPI_CACHE:-$HOME/.cache/candle-mpi}
ROOT=$CACHE/cuda-13.0
PREFIX=$ROOT/nvidia/cu13
log() { echo "setup-cuda-toolkit: $*" >&2; }

if [ ! -f "$ROOT/.complete" ]; then
  mkdir -p "$ROOT/wheels"
  log "downloading the CUDA 13.0 compiler wheels from PyPI (about 105 MB)"
  python3 -m pip download -q --no-deps --only-binary=:all: \
    --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --python-version 3.11 -d "$ROOT/wheels" \
    nvidia-cuda-nvcc==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-crt==13.0.88 \
    nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85 >&2
  for w in "$ROOT"/wheels/*.whl; do
    python3 -m zipfile -e "$w" "$ROOT" >&2
  done
  # zipfile drops the executable bits.
  chmod +x "$PREFIX"/bin/* "$PREFIX"/nvvm/bin/* 2>/dev/null || true
  [ -x "$PREFIX/bin/nvcc" ] || { log "nvcc missing after unpacking: $PREFIX/bin/nvcc" ; exit 1; }
  # nvcc's profile looks under targets/x86_64-linux; candle-kernels links -lcudart.
  mkdir -p "$PREFIX/targets/x86_64-linux"
  ln -sfn ../../include "$PREFIX/targets/x86_64-linux/include"
  ln -sfn ../../lib "$PREFIX/targets/x86_64-linux/lib"
  [ -e "$PREFIX/lib/libcudart.so" ] || ln -s libcudart.so.13 "$PREFIX/lib/libcudart.so"
  touch "$ROOT/.complete"
fi

# Link-time stubs, made from the symbols cudarc declares (needs cudarc's sources
# in cargo's registry: `cargo fetch` puts them there).
STUBS=$PREFIX/lib/stubs
if [ ! -f "$STUBS/.complete" ]; then
  cargo fetch --locked >&2
  CUDARC=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-0.19.10 2>/dev/null | head -1)
  [ -d "$CUDARC" ] || { log "cudarc 0.19.10 sources not found in cargo's registry"; exit 1; }
  mkdir -p "$STUBS"
  # module : library name : soname
  for spec in driver:cuda:libcuda.so.1 nccl:nccl:libnccl.so.2 nvrtc:nvrtc:libnvrtc.so.13 \
              curand:curand:libcurand.so.10 cublas:cublas:libcublas.so.13 cublaslt:cublasLt:libcublasLt.so.13; do
    IFS=: read -r module lib soname <<<"$spec"
    src=$STUBS/$lib.c
    grep -oE 'pub unsafe fn [A-Za-z_0-9]+\(' "$CUDARC/src/$module/sys/mod.rs" | sed -E 's/pub unsafe fn ([A-Za-z_0-9]+)\(/\1/' | sort -u \
      | awk '{ printf "void %s(void) {}\n", $1 }' > "$src"
    cc -shared -fPIC -Wl,-soname,"$soname" -o "$STUBS/lib$lib.so" "$src"
    log "stub lib$lib.so ($soname): $(wc -l < "$src") symbols"
  done
  touch "$STUBS/.complete"
fi

cat <<ENV
export CUDA_HOME=$PREFIX
export CUDA_PATH=$PREFIX
export PATH=$PREFIX/bin:\$PATH
export CUDA_COMPUTE_CAP=\${CUDA_COMPUTE_CAP:-90}
export CANDLE_MPI_CUDA_TARGET=$CACHE/target-cuda
ENV
