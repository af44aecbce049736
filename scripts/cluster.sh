#!/usr/bin/env bash
# A virtual cluster on one machine: N hosts, each a network namespace of its
# own (and, for the processes started in it, a host name of its own), joined
# by veth links to a switch namespace, with bandwidth shaped by tc.
#
#   bash scripts/cluster.sh up 2 [--rate 1gbit] [--slots 2] [--name cmc]
#   bash scripts/cluster.sh run [--name cmc] -- mpirun -np 4 --hostfile "$(bash scripts/cluster.sh hostfile)" ...
#   bash scripts/cluster.sh down [--name cmc]
#
# Host i is namespace NAME-hI at 10.77.0.(i+1)/24; the switch is NAME-sw, a
# bridge with one port per host. No namespace has a default route and none
# is linked to the machine's own network: all traffic stays inside what this
# script made. `--rate` shapes both directions of every host's link with a
# token bucket (tc tbf); latency cannot be added here (netem is not in these
# machines' kernel), so the performance model carries it.
#
# `run` starts the command as host 0 (the launcher's host, as on a login
# node), with Open MPI told to reach the other hosts through a launch agent
# (NAME's dir/agent) that enters their namespace, as ssh would log into them,
# and to speak TCP on the cluster's links only. Ranks of one host share
# memory among themselves (Open MPI's vader), and talk TCP to other hosts.
# CLUSTER_HOSTFILE names the hostfile (one line per host, `slots=` each).
# `down` kills what runs in the namespaces and removes them; `up` on a name
# that exists first takes the old cluster down. Needs root, ip and tc.
# -E: the ERR trap that takes a half-made cluster down fires inside functions too.
set -Eeuo pipefail

NAME=cmc
RATE=
SLOTS=1
SUBNET=10.77.0

log() { echo "cluster: $*" >&2; }
die() {
  log "$*"
  exit 1
}

state_dir() { echo "${CANDLE_MPI_CLUSTER_DIR:-/tmp/candle-mpi-cluster}/$NAME"; }

# Bytes of a token bucket worth 10 ms at RATE (at least 64 KiB, a GSO packet).
burst_bytes() {
  local rate=$1 num unit per_s
  num=$(echo "$rate" | sed -E 's/^([0-9.]+).*/\1/')
  unit=$(echo "$rate" | sed -E 's/^[0-9.]+//' | tr 'A-Z' 'a-z')
  awk -v n="$num" 'BEGIN {exit !(n + 0 > 0)}' || die "--rate $rate: give a rate above 0, e.g. --rate 1gbit"
  case "$unit" in
    kbit) per_s=$(awk -v n="$num" 'BEGIN {print n * 1e3 / 8}') ;;
    mbit) per_s=$(awk -v n="$num" 'BEGIN {print n * 1e6 / 8}') ;;
    gbit) per_s=$(awk -v n="$num" 'BEGIN {print n * 1e9 / 8}') ;;
    *) die "--rate $rate: give a number and kbit, mbit or gbit (per second), e.g. --rate 1gbit" ;;
  esac
  awk -v b="$per_s" 'BEGIN {b = int(b / 100); if (b < 65536) b = 65536; print b}'
}

shape() { # namespace device
  [ -n "$RATE" ] || return 0
  ip netns exec "$1" tc qdisc replace dev "$2" root tbf rate "$RATE" burst "$(burst_bytes "$RATE")" latency 100ms
}

namespaces() { ip netns list | awk '{print $1}' | grep -E "^$NAME-(h[0-9]+|sw)\$" || true; }

down() {
  local ns
  for ns in $(namespaces); do
    ip netns pids "$ns" | xargs -r kill -9 2>/dev/null || true
  done
  for ns in $(namespaces); do
    ip netns del "$ns"
  done
  rm -rf "$(state_dir)"
}

up() {
  local n=$1
  [[ "$n" =~ ^[0-9]+$ ]] && [ "$n" -ge 1 ] && [ "$n" -le 64 ] || die "up $n: give the number of hosts, 1 to 64"
  [[ "$SLOTS" =~ ^[0-9]+$ ]] && [ "$SLOTS" -ge 1 ] || die "--slots $SLOTS: give the ranks per host, 1 or more"
  [ -n "$RATE" ] && burst_bytes "$RATE" >/dev/null
  [ "$(id -u)" -eq 0 ] || die "up needs root (network namespaces)"
  command -v ip >/dev/null && command -v tc >/dev/null || die "up needs ip and tc (apt-get install iproute2)"
  [ -z "$(namespaces)" ] || down
  local dir
  dir=$(state_dir)
  mkdir -p "$dir"
  # Whatever fails on the way up leaves nothing behind.
  trap 'down' ERR
  ip netns add "$NAME-sw"
  ip netns exec "$NAME-sw" ip link add br0 type bridge
  ip netns exec "$NAME-sw" ip link set br0 up
  : >"$dir/hosts"
  : >"$dir/hostfile"
  local i ns addr
  for ((i = 0; i < n; i++)); do
    ns=$NAME-h$i
    addr=$SUBNET.$((i + 1))
    ip netns add "$ns"
    ip netns exec "$ns" ip link set lo up
    ip link add "$NAME-v$i" netns "$ns" type veth peer name "h$i" netns "$NAME-sw"
    ip netns exec "$ns" ip link set "$NAME-v$i" name eth0
    ip netns exec "$ns" ip addr add "$addr/24" dev eth0
    ip netns exec "$ns" ip link set eth0 up
    ip netns exec "$NAME-sw" ip link set "h$i" master br0 up
    shape "$ns" eth0
    shape "$NAME-sw" "h$i"
    echo "$addr $ns" >>"$dir/hosts"
    echo "$addr slots=$SLOTS" >>"$dir/hostfile"
  done
  # The launch agent: `agent HOST COMMAND...`, as Open MPI calls ssh.
  cat >"$dir/agent" <<EOF
#!/bin/sh
host=\$1
shift
ns=\$(awk -v h="\$host" '\$1 == h {print \$2}' "$dir/hosts")
[ -n "\$ns" ] || { echo "cluster agent: no host \$host in $dir/hosts" >&2; exit 1; }
exec ip netns exec "\$ns" unshare --uts sh -c 'hostname "\$0" && exec sh -c "\$1"' "\$ns" "\$*"
EOF
  chmod +x "$dir/agent"
  echo "${RATE:-unshaped}" >"$dir/rate"
  trap - ERR
  log "up: $n host(s) of $SLOTS slot(s), links ${RATE:-unshaped}; hostfile $dir/hostfile"
}

run() {
  local dir
  dir=$(state_dir)
  [ -f "$dir/hostfile" ] || die "run: no cluster '$NAME' (bash scripts/cluster.sh up N first)"
  [ $# -ge 1 ] || die "run: give the command after --"
  export CLUSTER_HOSTFILE=$dir/hostfile
  export OMPI_MCA_plm_rsh_agent=$dir/agent
  export OMPI_MCA_btl_tcp_if_include=$SUBNET.0/24 OMPI_MCA_oob_tcp_if_include=$SUBNET.0/24
  # Shared memory inside a host, TCP on the shaped links between hosts, nothing else.
  export OMPI_MCA_pml=ob1 OMPI_MCA_btl=self,vader,tcp
  # The hosts share this machine's cores, and each host's daemon would bind
  # its first rank to core 0: every host's ranks on one core. Leave placement
  # to the kernel, as `candle-mpi --threads` leaves it on one host.
  export OMPI_MCA_hwloc_base_binding_policy=none
  exec ip netns exec "$NAME-h0" unshare --uts sh -c 'hostname "$0" && exec "$@"' "$NAME-h0" "$@"
}

verb=${1:-}
[ $# -ge 1 ] && shift
args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --name | --rate | --slots)
      [ $# -ge 2 ] || die "$1: give a value"
      case "$1" in
        --name) NAME=$2 ;;
        --rate) RATE=$2 ;;
        --slots) SLOTS=$2 ;;
      esac
      shift 2
      ;;
    --) shift; break ;;
    *) args+=("$1"); shift ;;
  esac
done
[[ "$NAME" =~ ^[a-z][a-z0-9]{0,7}$ ]] || die "--name $NAME: give 1 to 8 lower-case letters and digits, a letter first"

case "$verb" in
  up) [ ${#args[@]} -eq 1 ] || die "usage: up N [--rate R] [--slots K] [--name NAME]"; up "${args[0]}" ;;
  down) down; log "down: cluster '$NAME' removed" ;;
  run)
    [ ${#args[@]} -eq 0 ] || die "run: '${args[*]}' before --: give the command after --"
    run "$@"
    ;;
  hostfile) [ -f "$(state_dir)/hostfile" ] || die "hostfile: no cluster '$NAME'"; echo "$(state_dir)/hostfile" ;;
  *)
    echo "usage: bash scripts/cluster.sh up N [--rate 1gbit] [--slots K] | run -- COMMAND... | hostfile | down   [--name NAME]" >&2
    exit 2
    ;;
esac
