#!/usr/bin/env bash
# Runs every test of candle-mpi on a fresh machine: setup first, then the suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

# Open MPI refuses to run as root unless told it may (CI and containers run as root).
if [ "$(id -u)" -eq 0 ]; then
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi

# Release profile: the tests share the dependencies setup.sh just built, and
# candle unoptimised is far too slow for the network tests.
cargo test --release --locked --all-targets
