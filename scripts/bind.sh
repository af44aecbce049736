#!/usr/bin/env bash
# Runs a command bound to this rank's share of the host, for launch lines
# written by hand:
#   mpirun -np 8 scripts/bind.sh numa -- candle-mpi train --device cuda ...
#   mpirun -np 2 scripts/bind.sh core -- candle-mpi train ...
# MODE is none, core or numa (see `candle-mpi bind --help`); the local rank
# comes from the launcher's environment (Open MPI, MPICH, Slurm). Each rank
# prints on stderr what it was bound to. `candle-mpi bench --bind MODE` does
# the same for every run of a sweep.
set -euo pipefail
if [ $# -lt 3 ] || [ "$2" != "--" ]; then
  echo "usage: $0 none|core|numa -- COMMAND [ARGS...]" >&2
  exit 2
fi
mode="$1"
shift 2
here="$(cd "$(dirname "$0")/.." && pwd)"
exe="${CANDLE_MPI:-}"
if [ -z "$exe" ]; then
  if [ -x "$here/target/release/candle-mpi" ]; then exe="$here/target/release/candle-mpi"; else exe="candle-mpi"; fi
fi
exec "$exe" bind --mode "$mode" -- "$@"
