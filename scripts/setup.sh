#!/usr/bin/env bash
# Prepares a fresh Debian machine for candle-mpi and builds the release binary.
# Idempotent: installs only the system packages that are missing, then builds.
# Works as root or as a user with sudo (or with the packages already present).
set -euo pipefail
cd "$(dirname "$0")/.."

# What the build and the runs need:
#   openmpi-bin, libopenmpi-dev  MPI runtime (mpirun) and headers for rsmpi
#   libclang-dev, clang          bindgen, which rsmpi uses to read mpi.h
#   libffi-dev                   rsmpi's user-defined reduction operations
#   pkg-config                   how rsmpi finds MPI
#   numactl, hwloc               rank binding (scripts/bind.sh) and topology
#   libfontconfig1-dev, libfreetype-dev, fonts-dejavu-core
#                                the report's figures: plotters finds and draws a font through them
#   g++                          tests/kernels.rs compiles the CUDA kernels as host C++
#   iproute2                     ip and tc: the virtual cluster's hosts and links (scripts/cluster.sh)
#   xz-utils                     the GPU check's archive (scripts/gpu-check.sh pack)
PACKAGES=(openmpi-bin libopenmpi-dev libclang-dev clang libffi-dev pkg-config numactl hwloc
          libfontconfig1-dev libfreetype-dev fonts-dejavu-core g++ iproute2 xz-utils)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "setup: need root or sudo to install: ${missing[*]}" >&2; exit 1; }
    SUDO="sudo"
  fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  echo "setup: system packages present"
fi

command -v cargo >/dev/null || { echo "setup: cargo not found; install Rust (rustup) first" >&2; exit 1; }
# scripts/test.sh checks the format and the lints: rustfmt and clippy come
# with rustup's default profile; add them where a minimal one left them out.
for tool in fmt clippy; do
  if ! cargo "$tool" --version >/dev/null 2>&1; then
    component=$([ "$tool" = fmt ] && echo rustfmt || echo clippy)
    command -v rustup >/dev/null && rustup component add "$component" \
      || { echo "setup: cargo $tool is missing and rustup cannot add $component" >&2; exit 1; }
  fi
done
# The module-circle check of scripts/test.sh (and the figures' helper scripts) run on python3.
if ! command -v python3 >/dev/null; then
  echo "setup: installing python3"
  SUDO=$([ "$(id -u)" -eq 0 ] || echo sudo)
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends python3
fi
echo "setup: building the release binary (target/release/candle-mpi)"
cargo build --release --locked
echo "setup: done"
