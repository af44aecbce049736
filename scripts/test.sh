#!/usr/bin/env bash
# Runs every test of candle-mpi on a fresh machine: setup first, then the suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

# Open MPI refuses to run as root unless told it may (CI and containers run as root).
if [ "$(id -u)" -eq 0 ]; then
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi

# The guards that keep the tree as it is laid out: one format (rustfmt.toml),
# clippy with its line limit and SAFETY comments (clippy.toml, Cargo.toml's
# [lints]), and no module depending on another in a circle.
echo "test.sh: format, lints and module circles"
cargo fmt --check
cargo clippy --release --locked --all-targets -- -D warnings
python3 scripts/module-cycles.py

# Release profile: the tests share the dependencies setup.sh just built, and
# candle unoptimised is far too slow for the network tests.
cargo test --release --locked --all-targets

# The GPU path must at least compile: no GPU, driver or CUDA install exists on
# these machines, so assemble CUDA 13.0 from PyPI wheels (cached outside the
# clone) and build every target with the feature, under the same lints. Its
# kernels ran above, on the CPU (tests/kernels.rs); nothing else of it runs here.
echo "test.sh: compiling the GPU path (cargo build --release --features cuda --all-targets)"
eval "$(bash scripts/setup-cuda-toolkit.sh)"
CARGO_TARGET_DIR="$CANDLE_MPI_CUDA_TARGET" cargo build --release --locked --features cuda --all-targets
CARGO_TARGET_DIR="$CANDLE_MPI_CUDA_TARGET" cargo clippy --release --locked --features cuda --all-targets -- -D warnings
# The one-call GPU check (scripts/gpu-check.sh): what of it can run without a GPU.
echo "test.sh: the GPU check's pack and its run without a GPU (scripts/gpu-check.sh selftest)"
bash scripts/gpu-check.sh selftest
echo "test.sh: GPU path compiled; all CPU tests passed"
